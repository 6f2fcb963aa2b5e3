//! Applies a diff to the pinned maps, in the order the diff gives (which
//! is what keeps every intermediate state consistent for packets).

use anyhow::{Context as _, Result};
use aya::maps::lpm_trie::Key;
use lb_common::{BackendValue, DatapathConfig, Ipv4Key, VipValue};

use crate::{dataplane::maps::Maps, plan::diff::MapOp};

/// Writes `ops` one by one; stops at the first failure, naming the op.
/// The caller re-reads the maps afterwards, so a partial apply is never
/// mistaken for the desired state.
pub fn apply(maps: &mut Maps, ops: &[MapOp]) -> Result<()> {
    for op in ops {
        apply_one(maps, op).with_context(|| format!("applying {op:?}"))?;
    }
    Ok(())
}

fn apply_one(maps: &mut Maps, op: &MapOp) -> Result<()> {
    match op {
        MapOp::PutConfig(config) => maps.config.set(0, *config, 0)?,
        MapOp::PutBackend(id, value) => maps.backends.set(*id, *value, 0)?,
        MapOp::ClearBackend(id) => maps.backends.set(*id, BackendValue::default(), 0)?,
        MapOp::PutMaglev { offset, table } => {
            for (slot, backend) in (*offset..).zip(table) {
                maps.maglev.set(slot, *backend, 0)?;
            }
        }
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
    }
    Ok(())
}

/// Marks the data path unconfigured (it then passes every packet) without
/// touching anything else.
pub fn set_config(maps: &mut Maps, config: DatapathConfig) -> Result<()> {
    maps.config.set(0, config, 0).context("writing config")
}
