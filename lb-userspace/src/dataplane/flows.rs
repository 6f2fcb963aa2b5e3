//! User space's side of the `conntrack` flow table (layout and protocol:
//! `lb_common::flow::table`): finding a flow's slot as the data path does,
//! reading the whole table, and — for tests and the benches only — writing
//! slots. The agent never writes the table: a slot is claimed by the data
//! path's compare-and-swap, which a map update from here (a plain copy of
//! the set) could interleave with; dead flows stay until a new flow reuses
//! their slot.

use std::os::fd::{AsFd as _, AsRawFd as _};

use anyhow::{Context as _, Result, bail};
use aya::maps::{Array, IterableMap as _, MapData};
use lb_common::{
    ConntrackValue, FlowKey,
    flow::table::{
        CHOICES, FlowSet, FlowSlot, WAYS, is_legacy, key_hash, legacy_tag, next_generation,
        slot_state, state_of, tag_of, word,
    },
    hash::flow_set,
};

use super::{batch, maps::Maps};

/// Sets read per `BPF_MAP_LOOKUP_BATCH` call (416 bytes each).
const CHUNK: u32 = 4096;

/// The table with the hash seed the data path uses (from `config`).
pub struct Flows<'m> {
    table: &'m Array<MapData, FlowSet>,
    seed: u32,
}

impl Maps {
    /// The flow table, keyed with the configured hash seed.
    pub fn flows(&self) -> Result<Flows<'_>> {
        Ok(Flows {
            table: &self.conntrack,
            seed: self.config()?.hash_seed,
        })
    }

    /// The number of sets of the flow table (`DatapathConfig::flow_sets`).
    pub fn flow_sets(&self) -> u32 {
        self.conntrack.len()
    }
}

impl Flows<'_> {
    /// The two sets `key` may live in.
    pub fn sets_of(&self, key: &FlowKey) -> [u32; 2] {
        self.sets_of_tag(key_hash(self.seed, key))
    }

    /// The two sets of a flow tagged `tag`.
    fn sets_of_tag(&self, tag: u32) -> [u32; 2] {
        let n = self.table.len();
        [flow_set(tag, 0, n), flow_set(tag, 1, n)]
    }

    /// The tags `key`'s slot may have, in the order the data path looks:
    /// its own, then the one an earlier version gave it
    /// (`flow::table::legacy_tag`; the data path looks there only while
    /// `config_flags::LEGACY_TAGS6` is on).
    fn tags(&self, key: &FlowKey) -> impl Iterator<Item = u32> {
        core::iter::once(key_hash(self.seed, key)).chain(legacy_tag(self.seed, key))
    }

    /// The flow of `key`, as the data path would find it (over or not).
    pub fn get(&self, key: &FlowKey) -> Result<Option<ConntrackValue>> {
        for tag in self.tags(key) {
            for set in self.sets_of_tag(tag) {
                let s = self
                    .table
                    .get(&set, 0)
                    .with_context(|| format!("reading flow set {set}"))?;
                if let Some(i) = s.find(key, tag) {
                    return Ok(Some(s.slots[i].value));
                }
            }
        }
        Ok(None)
    }

    /// Every published slot (live or over), read set by set: a flow
    /// claimed during the walk may be missed, as with any map walk.
    pub fn all(&self) -> Result<Vec<FlowSlot>> {
        let mut out = Vec::new();
        self.each_set(|_, s| out.extend(s.flows().copied()))?;
        Ok(out)
    }

    /// [`Self::all`], each slot with whether an earlier version wrote it
    /// under another tag (`flow::table::is_legacy`).
    pub fn all_marked(&self) -> Result<Vec<(FlowSlot, bool)>> {
        let mut out = Vec::new();
        self.each_set(|_, s| {
            out.extend(
                (0..WAYS)
                    .filter(|&i| state_of(s.words[i]) == slot_state::READY)
                    .map(|i| {
                        let tag = tag_of(s.words[i]);
                        (s.slots[i], is_legacy(self.seed, tag, &s.slots[i].key))
                    }),
            );
        })?;
        Ok(out)
    }

    /// The number of published slots (live or over).
    pub fn count(&self) -> Result<usize> {
        let mut n = 0;
        self.each_set(|_, s| n += s.flows().count())?;
        Ok(n)
    }

    /// Calls `visit` with every set and its index, read in batches (one
    /// syscall per set would take a good part of a second on a large
    /// table).
    fn each_set(&self, visit: impl FnMut(u32, &FlowSet)) -> Result<()> {
        batch::each_in_array(self.table, CHUNK, "conntrack", visit)
    }
}

/// Writes `value` as `key`'s flow (tests and benches; see the module
/// documentation): over its own slot, else into the first empty slot of
/// its two sets. Fails when both are full.
pub fn put(maps: &mut Maps, key: &FlowKey, value: ConntrackValue) -> Result<()> {
    let tag = key_hash(maps.config()?.hash_seed, key);
    put_tagged(maps, key, value, tag)
}

/// [`put`] with the slot tagged `tag` and in that tag's sets: tests write
/// a flow as an earlier version did (`flow::table::legacy_tag`).
pub fn put_tagged(maps: &mut Maps, key: &FlowKey, value: ConntrackValue, tag: u32) -> Result<()> {
    let sets = maps.flows()?.sets_of_tag(tag);
    let mut free = None;
    for set in sets {
        let s = maps.conntrack.get(&set, 0).context("reading a flow set")?;
        if let Some(i) = s.find(key, tag) {
            return write_slot(maps, set, s, i, key, value, tag);
        }
        if free.is_none()
            && let Some(i) = (0..WAYS).find(|&i| state_of(s.words[i]) == slot_state::EMPTY)
        {
            free = Some((set, s, i));
        }
    }
    match free {
        Some((set, s, i)) => write_slot(maps, set, s, i, key, value, tag),
        None => bail!("both flow sets of {key:?} ({sets:?}) are full"),
    }
}

/// Writes `key`'s flow into slot `way` of set `set`, whatever it held
/// (tests: sets filled slot by slot; see the module documentation).
pub fn put_at(
    maps: &mut Maps,
    set: u32,
    way: usize,
    key: &FlowKey,
    value: ConntrackValue,
) -> Result<()> {
    anyhow::ensure!(way < WAYS, "slot {way} of a {WAYS}-slot set");
    let tag = key_hash(maps.config()?.hash_seed, key);
    let s = maps.conntrack.get(&set, 0).context("reading a flow set")?;
    write_slot(maps, set, s, way, key, value, tag)
}

fn write_slot(
    maps: &mut Maps,
    set: u32,
    mut s: FlowSet,
    i: usize,
    key: &FlowKey,
    value: ConntrackValue,
    tag: u32,
) -> Result<()> {
    s.slots[i] = FlowSlot { key: *key, value };
    s.words[i] = word(tag, next_generation(s.words[i]), slot_state::READY);
    maps.conntrack
        .set(set, s, 0)
        .with_context(|| format!("writing flow set {set}"))
}

/// Empties `key`'s slot; false when it had none (tests and benches).
pub fn remove(maps: &mut Maps, key: &FlowKey) -> Result<bool> {
    let flows = maps.flows()?;
    let found = flows
        .tags(key)
        .flat_map(|tag| flows.sets_of_tag(tag).map(|set| (tag, set)));
    for (tag, set) in found.collect::<Vec<_>>() {
        let mut s = maps.conntrack.get(&set, 0).context("reading a flow set")?;
        if let Some(i) = s.find(key, tag) {
            s.words[i] = word(0, next_generation(s.words[i]), slot_state::EMPTY);
            maps.conntrack
                .set(set, s, 0)
                .with_context(|| format!("writing flow set {set}"))?;
            return Ok(true);
        }
    }
    Ok(false)
}

/// Empties the whole table (benches, between runs); returns how many
/// slots held a flow.
pub fn clear(maps: &mut Maps) -> Result<usize> {
    let mut dirty = Vec::new();
    let mut held = 0;
    maps.flows()?.each_set(|i, s| {
        if s.words.iter().any(|&w| w != 0) {
            dirty.push(i);
            held += s.flows().count();
        }
    })?;
    let fd = u32::try_from(maps.conntrack.map().fd().as_fd().as_raw_fd()).context("map fd")?;
    let zeros = vec![FlowSet::default(); CHUNK as usize];
    for keys in dirty.chunks(CHUNK as usize) {
        let mut a = batch::BatchAttr {
            keys: keys.as_ptr() as u64,
            values: zeros.as_ptr() as u64,
            count: u32::try_from(keys.len()).context("chunk")?,
            map_fd: fd,
            ..batch::BatchAttr::default()
        };
        // SAFETY: `keys` and `zeros` hold at least `count` keys and values
        // of the map's sizes and outlive the call; the kernel only reads them.
        match unsafe { batch::call(batch::UPDATE, &mut a) } {
            Ok(()) => {}
            Err(e) if batch::unsupported(&e) => {
                for &i in keys {
                    maps.conntrack
                        .set(i, FlowSet::default(), 0)
                        .with_context(|| format!("clearing flow set {i}"))?;
                }
            }
            Err(e) => return Err(e).context("BPF_MAP_UPDATE_BATCH on conntrack"),
        }
    }
    Ok(held)
}

/// `CHOICES` is two: [`Flows::sets_of`] returns both.
const _: () = assert!(CHOICES == 2);
