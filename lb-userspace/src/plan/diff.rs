//! The map updates that turn the current contents into the planned ones,
//! in an order that is safe at every step for packets in flight:
//!
//! 1. `config`;
//! 2. new and changed backends (new ones take ids no current table uses),
//!    except those that start draining;
//! 3. new Maglev tables (in slots no current service points at);
//! 4. added source ranges (a service gains its allow-list before its
//!    `SOURCE_RANGES` flag);
//! 5. services, each switched to its new table in one update;
//! 6. VIPs (a new VIP appears once its services exist);
//! 7. then removals in reverse: VIPs, services, source ranges;
//! 8. backends that start draining, once no service's table names them (the
//!    data path refuses a draining backend to new flows, so flagging one a
//!    table still names would drop those flows rather than balance them);
//! 9. and cleared backends last, once no table names them.
//!
//! This relies on [`crate::plan::state::plan`]'s guarantees (no id or slot of
//! the current contents reused by a new identity or table). An interrupted
//! update leaves maps that [`crate::plan::state::DataplaneState::allocators`]
//! accepts, and the next plan finishes the job.

use lb_common::{
    BackendValue, DatapathConfig, ServiceKey, ServiceValue, SourceRangeData, backend_flags,
};

use crate::plan::state::{DataplaneState, Table};

/// One map update.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MapOp {
    PutConfig(DatapathConfig),
    PutBackend(u32, BackendValue),
    /// Zero the array slot.
    ClearBackend(u32),
    /// Write `table` to `maglev[offset..offset + table.len()]`.
    PutMaglev {
        offset: u32,
        table: Table,
    },
    PutService(ServiceKey, ServiceValue),
    DelService(ServiceKey),
    /// `src_ranges` key `{prefixlen, data}`, value 1.
    PutSrcRange(u32, SourceRangeData),
    DelSrcRange(u32, SourceRangeData),
    PutVip([u8; 4], u32),
    DelVip([u8; 4]),
}

/// The updates from `old` to `new`, only what differs, safely ordered.
pub fn diff(old: &DataplaneState, new: &DataplaneState) -> Vec<MapOp> {
    let mut ops = Vec::new();
    if old.config != new.config {
        ops.push(MapOp::PutConfig(new.config));
    }
    let starts_draining = |id: &u32, b: &BackendValue| {
        b.flags & backend_flags::DRAINING != 0
            && old
                .backends
                .get(id)
                .is_some_and(|o| o.flags & backend_flags::DRAINING == 0)
    };
    for (&id, b) in &new.backends {
        if old.backends.get(&id) != Some(b) && !starts_draining(&id, b) {
            ops.push(MapOp::PutBackend(id, *b));
        }
    }
    for (&offset, table) in &new.maglev {
        if old.maglev.get(&offset) != Some(table) {
            ops.push(MapOp::PutMaglev {
                offset,
                table: Table::clone(table),
            });
        }
    }
    for r in new.src_ranges.difference(&old.src_ranges) {
        ops.push(MapOp::PutSrcRange(r.prefixlen, r.data));
    }
    for (key, v) in &new.services {
        if old.services.get(key) != Some(v) {
            ops.push(MapOp::PutService(*key, *v));
        }
    }
    for (addr, flags) in &new.vips {
        if old.vips.get(addr) != Some(flags) {
            ops.push(MapOp::PutVip(*addr, *flags));
        }
    }
    for addr in old.vips.keys() {
        if !new.vips.contains_key(addr) {
            ops.push(MapOp::DelVip(*addr));
        }
    }
    for key in old.services.keys() {
        if !new.services.contains_key(key) {
            ops.push(MapOp::DelService(*key));
        }
    }
    for r in old.src_ranges.difference(&new.src_ranges) {
        ops.push(MapOp::DelSrcRange(r.prefixlen, r.data));
    }
    for (&id, b) in &new.backends {
        if starts_draining(&id, b) {
            ops.push(MapOp::PutBackend(id, *b));
        }
    }
    for id in old.backends.keys() {
        if !new.backends.contains_key(id) {
            ops.push(MapOp::ClearBackend(*id));
        }
    }
    ops
}

#[cfg(test)]
mod tests;
