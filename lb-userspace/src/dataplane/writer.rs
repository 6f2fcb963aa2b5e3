//! Applies a diff to the pinned maps, in the order the diff gives (which
//! is what keeps every intermediate state consistent for packets).
//!
//! Maglev tables are copied in through a memory mapping of the array ([`mapped`]), or where
//! the pinned array is not mappable (created by an earlier version) with
//! `BPF_MAP_UPDATE_BATCH`: 10,000 services of 10 backends are 10 million slots, and one
//! syscall a slot was most of a cold start's time.

use std::{
    io,
    os::fd::{AsFd as _, AsRawFd as _},
};

use anyhow::{Context as _, Result};
use aya::maps::{IterableMap as _, MapData, lpm_trie::Key};
use lb_common::{BackendValue, BackendValue6, DatapathConfig, Ipv4Key, Ipv6Key, VipValue};

use crate::{
    dataplane::{
        batch::{self, BatchAttr},
        mapped::Mapping,
        maps::Maps,
    },
    plan::diff::MapOp,
};

/// Writes `ops` one by one; stops at the first failure, naming the op.
/// The caller re-reads the maps afterwards, so a partial apply is never
/// mistaken for the desired state.
pub fn apply(maps: &mut Maps, ops: &[MapOp]) -> Result<()> {
    let mut mapping = if ops.iter().any(|op| matches!(op, MapOp::PutMaglev { .. })) {
        Mapping::open(maps.maglev.map(), maps.maglev.len())
            .context("inspecting the maglev array")?
    } else {
        None
    };
    for op in ops {
        apply_one(maps, mapping.as_mut(), op).with_context(|| format!("applying {op:?}"))?;
    }
    Ok(())
}

fn apply_one(maps: &mut Maps, mapping: Option<&mut Mapping>, op: &MapOp) -> Result<()> {
    if let (MapOp::PutMaglev { offset, table }, Some(m)) = (op, mapping) {
        return m
            .write(*offset, table.len(), table.iter())
            .context("writing the maglev array through its mapping");
    }
    match op {
        MapOp::PutConfig(config) => maps.put_config(*config)?,
        MapOp::PutBackend(id, value) => maps.backends.set(*id, *value, 0)?,
        MapOp::ClearBackend(id) => maps.backends.set(*id, BackendValue::default(), 0)?,
        MapOp::PutMaglev { offset, table } => put_maglev(maps, *offset, &table.to_vec())?,
        MapOp::PutService(key, value) => maps.services.insert(key, value, 0)?,
        MapOp::DelService(key) => maps.services.remove(key)?,
        MapOp::PutSrcRange(prefixlen, data) => {
            maps.src_ranges.insert(&Key::new(*prefixlen, *data), 1, 0)?;
        }
        MapOp::DelSrcRange(prefixlen, data) => {
            maps.src_ranges.remove(&Key::new(*prefixlen, *data))?;
        }
        MapOp::PutVip(addr, flags) => {
            maps.vips
                .insert(Ipv4Key { addr: *addr }, VipValue { flags: *flags }, 0)?;
        }
        MapOp::DelVip(addr) => maps.vips.remove(&Ipv4Key { addr: *addr })?,
        MapOp::PutBackend6(id, value) => maps.backends6.set(*id, *value, 0)?,
        MapOp::ClearBackend6(id) => maps.backends6.set(*id, BackendValue6::default(), 0)?,
        MapOp::PutService6(key, value) => maps.services6.insert(key, value, 0)?,
        MapOp::DelService6(key) => maps.services6.remove(key)?,
        MapOp::PutSrcRange6(prefixlen, data) => {
            maps.src_ranges6
                .insert(&Key::new(*prefixlen, *data), 1, 0)?;
        }
        MapOp::DelSrcRange6(prefixlen, data) => {
            maps.src_ranges6.remove(&Key::new(*prefixlen, *data))?;
        }
        MapOp::PutVip6(addr, flags) => {
            maps.vips6
                .insert(Ipv6Key::new(*addr), VipValue::new(*flags), 0)?;
        }
        MapOp::DelVip6(addr) => maps.vips6.remove(&Ipv6Key::new(*addr))?,
    }
    Ok(())
}

/// Marks the data path unconfigured (it then passes every packet) without
/// touching anything else.
pub fn set_config(maps: &mut Maps, config: DatapathConfig) -> Result<()> {
    maps.put_config(config)
}

/// Slots per `BPF_MAP_UPDATE_BATCH` call: bounds the key buffer (and the time the kernel
/// spends in one call) whatever the table size.
const BATCH: usize = 1 << 16;

/// Writes `table` to `maglev[offset..]`, in batches; one update a slot where the kernel
/// has no batch operation for arrays.
fn put_maglev(maps: &mut Maps, offset: u32, table: &[u32]) -> Result<()> {
    let mut done = 0;
    while done < table.len() {
        let end = table.len().min(done + BATCH);
        let first = offset
            .checked_add(u32::try_from(done).context("Maglev table too long")?)
            .context("Maglev slot out of range")?;
        match update_batch(maps.maglev.map(), first, &table[done..end]) {
            Ok(()) => done = end,
            Err(e) if batch::unsupported(&e) => {
                for (slot, backend) in (first..).zip(&table[done..]) {
                    maps.maglev.set(slot, *backend, 0)?;
                }
                return Ok(());
            }
            Err(e) => return Err(e).context("BPF_MAP_UPDATE_BATCH on maglev"),
        }
    }
    Ok(())
}

/// `map[first + i] = values[i]` for every `i`, in one syscall.
fn update_batch(map: &MapData, first: u32, values: &[u32]) -> io::Result<()> {
    let last = u32::try_from(values.len())
        .ok()
        .and_then(|n| first.checked_add(n))
        .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
    let keys: Vec<u32> = (first..last).collect();
    let fd = map.fd().as_fd().as_raw_fd();
    let mut attr = BatchAttr {
        keys: keys.as_ptr() as u64,
        values: values.as_ptr() as u64,
        count: u32::try_from(values.len())
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?,
        map_fd: fd.unsigned_abs(),
        ..BatchAttr::default()
    };
    // SAFETY: `keys` and `values` hold `count` u32 elements each (the map's key and
    // value size) and outlive the call; the kernel only reads them.
    unsafe { batch::call(batch::UPDATE, &mut attr) }
}
