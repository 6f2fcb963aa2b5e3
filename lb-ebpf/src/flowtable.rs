//! The `conntrack` flow table's data-path side: lookups, a new flow's
//! claim of a slot, and giving one up. The layout, the word protocol and
//! the replacement order are `lb_common::flow::table`'s.

use core::intrinsics::{AtomicOrdering, atomic_cxchg};

use lb_common::{
    ConntrackValue, Counter, DatapathConfig, FlowKey, FlowScratch, FlowTimeouts, config_flags,
    flow::table::{
        CHOICES, FlowSet, WAYS, next_generation, ready_with, slot_state, state_of, victim,
        victim_class, word,
    },
    hash::flow_set,
};

use crate::family::Family;
use crate::{
    maps::{CONFIG, CONNTRACK},
    stats,
};

#[expect(clippy::cast_possible_truncation, reason = "WAYS is 4")]
const WAYS_U32: u32 = WAYS as u32;

/// Whether two keys are equal, compared as five 8-byte words (`==` on the
/// struct would compare field by field, byte arrays through `bcmp`), with
/// one branch rather than five: every branch in the slot loops is a state
/// more for the verifier, at each of the loops' eight iterations.
#[inline(always)]
fn same_key(a: *const FlowKey, b: &FlowKey) -> bool {
    let (a, b) = (
        a.cast::<[u64; 5]>(),
        core::ptr::from_ref(b).cast::<[u64; 5]>(),
    );
    // SAFETY: `FlowKey` is 40 bytes aligned to 8; `a` points into a map
    // value valid for this run, `b` is a reference.
    unsafe {
        ((*a)[0] ^ (*b)[0])
            | ((*a)[1] ^ (*b)[1])
            | ((*a)[2] ^ (*b)[2])
            | ((*a)[3] ^ (*b)[3])
            | ((*a)[4] ^ (*b)[4])
            == 0
    }
}

#[inline(always)]
fn read_word(set: *mut FlowSet, i: usize) -> u64 {
    // SAFETY: `set` is a value pointer of the array, valid for this run;
    // volatile so that a re-read is a real load.
    unsafe { core::ptr::read_volatile(&raw const (*set).words[i]) }
}

#[inline(always)]
fn swap_word(set: *mut FlowSet, i: usize, old: u64, new: u64) -> bool {
    // SAFETY: an 8-byte aligned u64 in a map value valid for this run (see
    // `conntrack::take_over` on BPF's 64-bit compare-and-swap).
    let (_, won) = unsafe {
        atomic_cxchg::<u64, { AtomicOrdering::SeqCst }, { AtomicOrdering::SeqCst }>(
            &raw mut (*set).words[i],
            old,
            new,
        )
    };
    won
}

/// The live slot of `key` (hashed `h`) in a table of `sets` sets: its
/// value. A slot being written is never returned: its word is not `READY`,
/// or changed while the key was compared.
#[inline(always)]
pub fn find(key: &FlowKey, h: u32, sets: u32) -> Option<*mut ConntrackValue> {
    let ct = find_slot(key, h, sets);
    (!ct.is_null()).then_some(ct)
}

/// [`find`]'s body, out of line: a BPF subprogram with a frame of its own
/// (its loop state would otherwise sit in the packet path's frame, which
/// the new flow's call chain adds to), returning the value pointer or null.
#[inline(never)]
fn find_slot(key: &FlowKey, h: u32, sets: u32) -> *mut ConntrackValue {
    let mut c = 0;
    while c < CHOICES {
        if let Some(set) = CONNTRACK.get_ptr_mut(flow_set(h, c, sets)) {
            let mut i = 0;
            while i < WAYS {
                let w = read_word(set, i);
                // SAFETY: as in `read_word`; the slot is only read.
                if ready_with(w, h)
                    && same_key(unsafe { &raw const (*set).slots[i].key }, key)
                    && read_word(set, i) == w
                {
                    // SAFETY: as above.
                    return unsafe { &raw mut (*set).slots[i].value };
                }
                i += 1;
            }
        }
        c += 1;
    }
    core::ptr::null_mut()
}

/// Whether a slot of `F` may still carry the tag an earlier version gave
/// its flow (`config_flags::LEGACY_TAGS6`).
#[inline(always)]
fn legacy<F: Family>(cfg: &DatapathConfig) -> bool {
    F::LEGACY_TAGS && cfg.flags & config_flags::LEGACY_TAGS6 != 0
}

/// The live slot of `key`, tagged `tag` (`F::key_hash`), or, while the
/// table may hold them, under the tag an earlier version gave it.
#[inline(always)]
pub fn find_any<F: Family>(
    key: &FlowKey,
    tag: u32,
    cfg: &DatapathConfig,
) -> Option<*mut ConntrackValue> {
    if let Some(ct) = find(key, tag, cfg.flow_sets) {
        return Some(ct);
    }
    if !legacy::<F>(cfg) {
        return None;
    }
    let ct = find_legacy::<F>(key, tag, cfg.hash_seed, cfg.flow_sets);
    (!ct.is_null()).then_some(ct)
}

/// [`find_any`]'s look under the earlier tag, out of line: the Maglev
/// hash's values stay out of the packet path's frame. A new flow then
/// computes that hash twice, only while an adopted table may hold such
/// flows.
#[inline(never)]
fn find_legacy<F: Family>(key: &FlowKey, tag: u32, seed: u32, sets: u32) -> *mut ConntrackValue {
    find_slot(key, F::maglev_hash(seed, key, tag), sets)
}

/// [`find_any`] with the config read here.
#[inline(always)]
pub fn lookup<F: Family>(key: &FlowKey) -> Option<*mut ConntrackValue> {
    let cfg = CONFIG.get(0)?;
    find_any::<F>(key, F::key_hash(cfg.hash_seed, key), cfg)
}

/// Gives up the slot of `key`: a flow that cannot go on (its NAT port is
/// lost) starts afresh with its next packet. Out of line: rare, and its
/// loop would otherwise take the packet path's stack. Only the slot under
/// the flow's own tag: a flow found under an earlier version's tag
/// (`find_any`) that starts afresh gets a slot under its own, which every
/// lookup tries first, so the old slot is never found again (a second loop
/// here doubled what the verifier walks in `lb_nat6`).
#[inline(never)]
pub fn remove<F: Family>(key: &FlowKey) {
    let Some(cfg) = CONFIG.get(0) else {
        return;
    };
    let h = F::key_hash(cfg.hash_seed, key);
    let mut c = 0;
    while c < CHOICES {
        if let Some(set) = CONNTRACK.get_ptr_mut(flow_set(h, c, cfg.flow_sets)) {
            let mut i = 0;
            while i < WAYS {
                let w = read_word(set, i);
                // SAFETY: as in `find`.
                if ready_with(w, h) && same_key(unsafe { &raw const (*set).slots[i].key }, key) {
                    swap_word(set, i, w, word(0, next_generation(w), slot_state::EMPTY));
                    return;
                }
                i += 1;
            }
        }
        c += 1;
    }
}

/// `insert` wrote the flow.
pub const INSERTED: u32 = 1;
/// `insert` found no slot it may take (`flow_table_full`).
pub const FULL: u32 = 2;

/// Writes the new flow of this CPU's scratch slot (`s.key`, hashed
/// `s.hash`, value `s.ctv`) into a slot of its two sets: the first empty
/// slot or slot of a flow that is over, else the oldest unproven flow's
/// (see `lb_common::flow::table`). Returns [`INSERTED`] or [`FULL`]. Of
/// two CPUs claiming one slot the loser scans again, once.
#[inline(always)]
pub fn insert(s: &FlowScratch, sets: u32, timeouts: &FlowTimeouts) -> u32 {
    let mut attempt = 0;
    while attempt < 2 {
        let r = claim(s, sets, timeouts);
        if r != LOST {
            return r;
        }
        attempt += 1;
    }
    FULL
}

/// `claim` lost a race for the slot it chose.
const LOST: u32 = 0;
/// No unproven flow seen (a position `claim` never records).
const NONE: u32 = u32::MAX;

/// One claim: [`INSERTED`] (the flow written), [`FULL`] or [`LOST`].
///
/// First the two sets' words only (one cache line each; a key is read
/// only behind a word with the flow's tag): a slot holding this flow's key
/// already (its entry over, closed or re-picked) is replaced in place;
/// otherwise the flow goes to an empty slot of the set with more of them (the first set on a tie), so
/// both fill evenly and a set is rarely full while the table has room.
/// Without an empty slot the slots' flows are read: the first that is over
/// is taken at once, else the oldest unproven one. The scans remember only
/// positions and a stamp (few live values: this runs in the new flow's
/// global function, whose frame the packet path's adds to); the chosen
/// slot is read again and taken only if it still is what the scan saw.
#[inline(always)]
fn claim(s: &FlowScratch, sets: u32, timeouts: &FlowTimeouts) -> u32 {
    let tag = s.hash;
    let mut pick = NONE;
    let mut most = 0;
    let mut choice = 0;
    while choice < CHOICES {
        if let Some(set) = CONNTRACK.get_ptr_mut(flow_set(tag, choice, sets)) {
            let (mut empty, mut first) = (0, NONE);
            let mut i = 0;
            while i < WAYS {
                let seen = read_word(set, i);
                // SAFETY: as in `find`; the key is only read.
                if ready_with(seen, tag)
                    && same_key(unsafe { &raw const (*set).slots[i].key }, &s.key)
                {
                    // This flow's own earlier entry, over or re-picked:
                    // replaced in place, so the key is never in two slots.
                    return take(set, i, seen, s);
                }
                if state_of(seen) == slot_state::EMPTY {
                    empty += 1;
                    if first == NONE {
                        first = position(choice, i);
                    }
                }
                i += 1;
            }
            if empty > most {
                most = empty;
                pick = first;
            }
        }
        choice += 1;
    }
    if pick != NONE {
        return retake(s, sets, pick, timeouts, victim::OVER, 0);
    }
    let now = s.ctv.last_seen_ns;
    let mut oldest_last = u64::MAX;
    let mut choice = 0;
    while choice < CHOICES {
        if let Some(set) = CONNTRACK.get_ptr_mut(flow_set(tag, choice, sets)) {
            let mut i = 0;
            while i < WAYS {
                let seen = read_word(set, i);
                let (class, last) = classify(set, i, seen, now, timeouts);
                if class == victim::OVER {
                    return take(set, i, seen, s);
                }
                if class == victim::UNPROVEN && last < oldest_last {
                    pick = position(choice, i);
                    oldest_last = last;
                }
                i += 1;
            }
        }
        choice += 1;
    }
    if pick == NONE {
        return FULL;
    }
    let r = retake(s, sets, pick, timeouts, victim::UNPROVEN, oldest_last);
    if r == INSERTED {
        stats::count(Counter::FlowEvicted);
    }
    r
}

/// A slot's position among the flow's two sets.
#[inline(always)]
fn position(choice: u32, i: usize) -> u32 {
    #[expect(clippy::cast_possible_truncation, reason = "i < WAYS")]
    let i = i as u32;
    choice * WAYS_U32 + i
}

/// Takes the slot at `pos` if it still is what the scan saw: of class
/// `class` (an empty slot counts as over), and for an unproven flow still
/// stamped `last`. [`LOST`] when it changed (proven, refreshed, claimed).
#[inline(always)]
fn retake(
    s: &FlowScratch,
    sets: u32,
    pos: u32,
    timeouts: &FlowTimeouts,
    class: u8,
    last: u64,
) -> u32 {
    let Some(set) = CONNTRACK.get_ptr_mut(flow_set(s.hash, pos / WAYS_U32, sets)) else {
        return FULL;
    };
    let i = (pos % WAYS_U32) as usize;
    if i >= WAYS {
        return FULL;
    }
    let seen = read_word(set, i);
    let (now_class, now_last) = classify(set, i, seen, s.ctv.last_seen_ns, timeouts);
    if now_class != class || (class == victim::UNPROVEN && now_last != last) {
        return LOST;
    }
    take(set, i, seen, s)
}

/// How a new flow at `now` may treat slot `i` whose word is `seen`
/// ([`victim`]; an empty slot is as good as an over one, a slot being
/// written is live), and the slot's stamp.
#[inline(always)]
fn classify(set: *mut FlowSet, i: usize, seen: u64, now: u64, t: &FlowTimeouts) -> (u8, u64) {
    match state_of(seen) {
        slot_state::EMPTY => (victim::OVER, 0),
        slot_state::READY => {
            // SAFETY: as in `find`; fields read by value.
            let (proto, state, last) = unsafe {
                let slot = &raw const (*set).slots[i];
                (
                    (*slot).key.proto,
                    (*slot).value.state,
                    (*slot).value.last_seen_ns,
                )
            };
            (victim_class(proto, state, last, now, t), last)
        }
        _ => (victim::LIVE, 0),
    }
}

/// Claims slot `i` of `set` from its word `seen` (`WRITING` with the new
/// flow's tag and the next generation), writes the flow of `s` into it
/// and publishes it: [`INSERTED`], or [`LOST`] when another CPU changed
/// the word first. The value's state was read before the swap; a flow that
/// proved itself in between (its client's ACK on another CPU) is replaced
/// all the same — the window is the few instructions from the read to the
/// swap, and the flow's next packet starts it afresh on the same backend.
#[inline(always)]
fn take(set: *mut FlowSet, i: usize, seen: u64, s: &FlowScratch) -> u32 {
    let mine = word(s.hash, next_generation(seen), slot_state::WRITING);
    if !swap_word(set, i, seen, mine) {
        return LOST;
    }
    // SAFETY: the slot is ours until published; copied, not assigned (an
    // assignment between map values is a `memmove` call in BPF).
    unsafe {
        core::ptr::copy_nonoverlapping(&raw const s.key, &raw mut (*set).slots[i].key, 1);
        core::ptr::copy_nonoverlapping(&raw const s.ctv, &raw mut (*set).slots[i].value, 1);
    }
    // Only this CPU changes a `WRITING` word: the swap cannot fail; it
    // orders the writes above before the word for every reader.
    swap_word(set, i, mine, word(s.hash, mine, slot_state::READY));
    INSERTED
}
