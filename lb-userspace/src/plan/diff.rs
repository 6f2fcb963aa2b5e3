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
//! Each step covers both families: `backends`/`backends6`, `src_ranges`/
//! `src_ranges6`, `services`/`services6`, `vips`/`vips6`. Backend ids are
//! one space: an id that goes from one family to the other (which `plan`
//! only does once the writer has cleared it, but contents read back after an
//! interrupted update are not ours to assume) loses its entry in the old
//! family's map before it gets one in the new, so the data path never finds
//! a valid entry of the other family under an id.
//!
//! This relies on [`crate::plan::state::plan`]'s guarantees (no id or slot of
//! the current contents reused by a new identity or table). An interrupted
//! update leaves maps that [`crate::plan::state::DataplaneState::allocators`]
//! accepts, and the next plan finishes the job.

use lb_common::{
    BackendValue, BackendValue6, DatapathConfig, ServiceKey, ServiceKey6, ServiceValue,
    SourceRangeData, SourceRangeData6, backend_flags,
};

use crate::plan::state::{BackendSlot, DataplaneState, Table};

/// One map update.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MapOp {
    PutConfig(DatapathConfig),
    PutBackend(u32, BackendValue),
    /// Zero the array slot.
    ClearBackend(u32),
    PutBackend6(u32, BackendValue6),
    /// Zero the `backends6` slot.
    ClearBackend6(u32),
    /// Write `table` to `maglev[offset..offset + table.len()]`.
    PutMaglev {
        offset: u32,
        table: Table,
    },
    PutService(ServiceKey, ServiceValue),
    DelService(ServiceKey),
    PutService6(ServiceKey6, ServiceValue),
    DelService6(ServiceKey6),
    /// `src_ranges` key `{prefixlen, data}`, value 1.
    PutSrcRange(u32, SourceRangeData),
    DelSrcRange(u32, SourceRangeData),
    /// `src_ranges6` key `{prefixlen, data}`, value 1.
    PutSrcRange6(u32, SourceRangeData6),
    DelSrcRange6(u32, SourceRangeData6),
    PutVip([u8; 4], u32),
    DelVip([u8; 4]),
    PutVip6([u8; 16], u32),
    DelVip6([u8; 16]),
}

/// The op that writes backend slot `id`.
fn put_backend(id: u32, b: BackendSlot) -> MapOp {
    match b {
        BackendSlot::V4(b) => MapOp::PutBackend(id, b),
        BackendSlot::V6(b) => MapOp::PutBackend6(id, b),
    }
}

/// The op that removes backend slot `id` from its family's map.
fn clear_backend(id: u32, b: BackendSlot) -> MapOp {
    match b {
        BackendSlot::V4(_) => MapOp::ClearBackend(id),
        BackendSlot::V6(_) => MapOp::ClearBackend6(id),
    }
}

/// Whether two slots are of one family.
fn same_family(a: BackendSlot, b: BackendSlot) -> bool {
    matches!(
        (a, b),
        (BackendSlot::V4(_), BackendSlot::V4(_)) | (BackendSlot::V6(_), BackendSlot::V6(_))
    )
}

/// The updates from `old` to `new`, only what differs, safely ordered.
pub fn diff(old: &DataplaneState, new: &DataplaneState) -> Vec<MapOp> {
    let mut ops = Vec::new();
    if old.config != new.config {
        ops.push(MapOp::PutConfig(new.config));
    }
    let starts_draining = |id: u32, b: BackendSlot| {
        b.flags() & backend_flags::DRAINING != 0
            && old
                .backend(id)
                .is_some_and(|o| same_family(o, b) && o.flags() & backend_flags::DRAINING == 0)
    };
    // An id whose entry moves to the other family's map is cleared in the
    // old one first.
    for (id, b) in new.all_backends() {
        if old.backend(id) != Some(b) && !starts_draining(id, b) {
            if let Some(o) = old.backend(id)
                && !same_family(o, b)
            {
                ops.push(clear_backend(id, o));
            }
            ops.push(put_backend(id, b));
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
    for r in new.src_ranges6.difference(&old.src_ranges6) {
        ops.push(MapOp::PutSrcRange6(r.prefixlen, r.data));
    }
    for (key, v) in &new.services {
        if old.services.get(key) != Some(v) {
            ops.push(MapOp::PutService(*key, *v));
        }
    }
    for (key, v) in &new.services6 {
        if old.services6.get(key) != Some(v) {
            ops.push(MapOp::PutService6(*key, *v));
        }
    }
    for (addr, flags) in &new.vips {
        if old.vips.get(addr) != Some(flags) {
            ops.push(MapOp::PutVip(*addr, *flags));
        }
    }
    for (addr, flags) in &new.vips6 {
        if old.vips6.get(addr) != Some(flags) {
            ops.push(MapOp::PutVip6(*addr, *flags));
        }
    }
    for addr in old.vips.keys() {
        if !new.vips.contains_key(addr) {
            ops.push(MapOp::DelVip(*addr));
        }
    }
    for addr in old.vips6.keys() {
        if !new.vips6.contains_key(addr) {
            ops.push(MapOp::DelVip6(*addr));
        }
    }
    for key in old.services.keys() {
        if !new.services.contains_key(key) {
            ops.push(MapOp::DelService(*key));
        }
    }
    for key in old.services6.keys() {
        if !new.services6.contains_key(key) {
            ops.push(MapOp::DelService6(*key));
        }
    }
    for r in old.src_ranges.difference(&new.src_ranges) {
        ops.push(MapOp::DelSrcRange(r.prefixlen, r.data));
    }
    for r in old.src_ranges6.difference(&new.src_ranges6) {
        ops.push(MapOp::DelSrcRange6(r.prefixlen, r.data));
    }
    for (id, b) in new.all_backends() {
        if starts_draining(id, b) {
            ops.push(put_backend(id, b));
        }
    }
    for (id, o) in old.all_backends() {
        if new.backend(id).is_none() {
            ops.push(clear_backend(id, o));
        }
    }
    ops
}

#[cfg(test)]
mod tests;
