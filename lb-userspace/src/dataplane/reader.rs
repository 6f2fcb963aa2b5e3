//! Reads the desired-state model back out of the pinned maps: after a
//! restart the agent plans against what the kernel really holds, so ids and
//! Maglev regions stay put and only real differences are written.

use std::collections::BTreeSet;

use anyhow::{Context as _, Result};
use lb_common::backend_flags;

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
    let mut backend_ids = BTreeSet::new();
    for item in &maps.services {
        let (key, value) = item.context("reading services")?;
        if value.maglev_len > 0 {
            let mut table = Vec::with_capacity(value.maglev_len as usize);
            for slot in value.maglev_offset..value.maglev_offset.saturating_add(value.maglev_len) {
                let id = maps
                    .maglev
                    .get(&slot, 0)
                    .with_context(|| format!("reading maglev[{slot}]"))?;
                backend_ids.insert(id);
                table.push(id);
            }
            state.maglev.insert(value.maglev_offset, table.into());
        }
        state.services.insert(key, value);
    }
    for id in backend_ids {
        let value = maps
            .backends
            .get(&id, 0)
            .with_context(|| format!("reading backends[{id}]"))?;
        if value.flags & backend_flags::VALID != 0 {
            state.backends.insert(id, value);
        }
    }
    for item in &maps.src_ranges {
        let (key, _) = item.context("reading src_ranges")?;
        state.src_ranges.insert(SrcRangeKey {
            prefixlen: key.prefix_len(),
            data: key.data(),
        });
    }
    Ok(state)
}
