//! Reads the desired-state model back out of the pinned maps: after a
//! restart the agent plans against what the kernel really holds, so ids and
//! Maglev regions stay put and only real differences are written.

use std::collections::BTreeMap;
use std::os::fd::{AsFd as _, AsRawFd as _};

use anyhow::{Context as _, Result};
use aya::maps::{Array, IterableMap as _, MapData};
use lb_common::{BackendValue, backend_flags};

use super::batch::{self, BatchAttr};
use crate::{
    dataplane::maps::Maps,
    plan::state::{DataplaneState, SrcRangeKey},
};

pub fn read(maps: &Maps) -> Result<DataplaneState> {
    let mut state = DataplaneState {
        config: maps.config()?,
        ..DataplaneState::default()
    };
    for item in &maps.vips {
        let (k, v) = item.context("reading vips")?;
        state.vips.insert(k.addr, v.flags);
    }
    for item in &maps.services {
        let (key, value) = item.context("reading services")?;
        if value.maglev_len > 0 {
            let mut table = Vec::with_capacity(value.maglev_len as usize);
            for slot in value.maglev_offset..value.maglev_offset.saturating_add(value.maglev_len) {
                let id = maps
                    .maglev
                    .get(&slot, 0)
                    .with_context(|| format!("reading maglev[{slot}]"))?;
                table.push(id);
            }
            state.maglev.insert(value.maglev_offset, table.into());
        }
        state.services.insert(key, value);
    }
    // Every slot that holds a backend, not only those the tables name: a
    // draining or retired one is in no table, and forgetting it would let
    // the next plan give its id to another backend under its flows.
    state.backends = read_backends(&maps.backends)?;
    for item in &maps.src_ranges {
        let (key, _) = item.context("reading src_ranges")?;
        state.src_ranges.insert(SrcRangeKey {
            prefixlen: key.prefix_len(),
            data: key.data(),
        });
    }
    Ok(state)
}

/// Slots per batch: 4,096 values are 64 KiB.
const BATCH: u32 = 4096;

/// The valid slots of the `backends` array. One syscall per 4,096 slots (the
/// array has 262,144: one lookup each would take a good part of a second
/// on every read), or one per slot where the kernel has no batch lookup.
fn read_backends(array: &Array<MapData, BackendValue>) -> Result<BTreeMap<u32, BackendValue>> {
    let fd = array.map().fd().as_fd().as_raw_fd();
    let len = array.len();
    let mut out = BTreeMap::new();
    let mut keys = vec![0u32; BATCH as usize];
    let mut values = vec![BackendValue::default(); BATCH as usize];
    let mut next: u32 = 0;
    let mut first = true;
    loop {
        let mut attr = BatchAttr {
            in_batch: if first { 0 } else { (&raw const next) as u64 },
            out_batch: (&raw mut next) as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: BATCH,
            map_fd: u32::try_from(fd).context("map fd")?,
            ..BatchAttr::default()
        };
        // SAFETY: the attribute points at buffers of `count` keys and values
        // (BackendValue is the array's value type, `repr(C)`) and at `next`,
        // all alive for the call.
        let err = unsafe { batch::call(batch::LOOKUP, &mut attr) }.err();
        let done = match &err {
            None => false,
            Some(e) if e.raw_os_error() == Some(libc::ENOENT) => true,
            Some(e) if first && batch::unsupported(e) => {
                return read_backends_one_by_one(array, len);
            }
            Some(e) => {
                return Err(anyhow::anyhow!("{e}")).context("BPF_MAP_LOOKUP_BATCH on backends");
            }
        };
        first = false;
        let n = (attr.count as usize).min(keys.len());
        for (k, v) in keys[..n].iter().zip(&values[..n]) {
            if v.flags & backend_flags::VALID != 0 {
                out.insert(*k, *v);
            }
        }
        if done || n == 0 || next >= len {
            return Ok(out);
        }
    }
}

fn read_backends_one_by_one(
    array: &Array<MapData, BackendValue>,
    len: u32,
) -> Result<BTreeMap<u32, BackendValue>> {
    let mut out = BTreeMap::new();
    for id in 0..len {
        let v = array
            .get(&id, 0)
            .with_context(|| format!("reading backends[{id}]"))?;
        if v.flags & backend_flags::VALID != 0 {
            out.insert(id, v);
        }
    }
    Ok(out)
}
