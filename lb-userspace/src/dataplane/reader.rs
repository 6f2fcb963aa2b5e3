//! Reads the desired-state model back out of the pinned maps: after a
//! restart the agent plans against what the kernel really holds, so ids and
//! Maglev regions stay put and only real differences are written.

use std::collections::BTreeMap;

use anyhow::{Context as _, Result};
use aya::{
    Pod,
    maps::{Array, MapData},
};
use lb_common::backend_flags;

use super::batch;
use crate::{
    dataplane::maps::Maps,
    plan::state::{DataplaneState, SrcRangeKey, SrcRangeKey6},
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
    for item in &maps.vips6 {
        let (k, v) = item.context("reading vips6")?;
        state.vips6.insert(k.addr, v.flags);
    }
    for item in &maps.services {
        let (key, value) = item.context("reading services")?;
        read_table(maps, &value, &mut state)?;
        state.services.insert(key, value);
    }
    for item in &maps.services6 {
        let (key, value) = item.context("reading services6")?;
        read_table(maps, &value, &mut state)?;
        state.services6.insert(key, value);
    }
    // Every slot that holds a backend, not only those the tables name: a
    // draining or retired one is in no table, and forgetting it would let
    // the next plan give its id to another backend under its flows.
    state.backends = read_slots(&maps.backends, "backends", |b| b.flags)?;
    state.backends6 = read_slots(&maps.backends6, "backends6", |b| b.flags)?;
    for item in &maps.src_ranges {
        let (key, _) = item.context("reading src_ranges")?;
        state.src_ranges.insert(SrcRangeKey {
            prefixlen: key.prefix_len(),
            data: key.data(),
        });
    }
    for item in &maps.src_ranges6 {
        let (key, _) = item.context("reading src_ranges6")?;
        state.src_ranges6.insert(SrcRangeKey6 {
            prefixlen: key.prefix_len(),
            data: key.data(),
        });
    }
    Ok(state)
}

/// Reads the Maglev table a service entry points at into `state.maglev`.
fn read_table(
    maps: &Maps,
    value: &lb_common::ServiceValue,
    state: &mut DataplaneState,
) -> Result<()> {
    if value.maglev_len == 0 {
        return Ok(());
    }
    let mut table = Vec::with_capacity(value.maglev_len as usize);
    for slot in value.maglev_offset..value.maglev_offset.saturating_add(value.maglev_len) {
        let id = maps
            .maglev
            .get(&slot, 0)
            .with_context(|| format!("reading maglev[{slot}]"))?;
        table.push(id);
    }
    state.maglev.insert(value.maglev_offset, table.into());
    Ok(())
}

/// Slots per batch: 4,096 values are 64 KiB.
const BATCH: u32 = 4096;

/// The slots of a backend array (`backends`, `backends6`) that hold a
/// backend (`flags` has [`backend_flags::VALID`]), by id: 262,144 slots,
/// read in batches (see `batch::each_in_array`).
fn read_slots<V: Pod + Default>(
    array: &Array<MapData, V>,
    what: &str,
    flags: impl Fn(&V) -> u16,
) -> Result<BTreeMap<u32, V>> {
    let mut out = BTreeMap::new();
    batch::each_in_array(array, BATCH, what, |k, v| {
        if flags(v) & backend_flags::VALID != 0 {
            out.insert(k, *v);
        }
    })?;
    Ok(out)
}
