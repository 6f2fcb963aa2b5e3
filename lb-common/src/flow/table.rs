//! The `conntrack` flow table: a preallocated array of [`FlowSet`]s, each
//! [`WAYS`] slots of a client key and its [`ConntrackValue`]. A flow may
//! live in either of two sets ([`crate::hash::flow_set`] of its hash,
//! choices 0 and 1), so one crowded set does not refuse flows while the
//! table has room. A new flow costs one map write, its slot, made without
//! the kernel's bucket locks, free lists or LRU lists: the slot is claimed
//! by a compare-and-swap on its word.
//!
//! Each slot has a word in the set's [`FlowSet::words`], all in the set's
//! first cache line, so a lookup that misses reads one line per set:
//! `tag << 32 | generation << 2 | state`, with the tag the flow's hash
//! ([`key_hash`]) and the state one of [`slot_state`]. The protocol:
//! - a writer claims a slot by swapping the word it read (`EMPTY`, or
//!   `READY` of a flow it may replace, see [`victim_class`]) for
//!   `WRITING` with its own tag and the next generation; of two writers
//!   exactly one wins. It then writes key and value and publishes the slot
//!   with a second swap, `WRITING` → `READY` (BPF atomics are full
//!   barriers: the key and value are visible before the word says so);
//! - a reader takes a slot only when its word is `READY` with the flow's
//!   tag, the key in it is the flow's, and the word is unchanged after the
//!   key was compared (a writer that claimed the slot in between changed
//!   the generation). A slot being written is therefore never matched;
//!   a reader holding a value pointer while the slot is taken over may
//!   still store into it, as with a preallocated kernel hash map whose
//!   elements are reused at once, but a slot is only taken from a flow
//!   that is over or unproven;
//! - nothing deletes: an expired slot stays `READY` until a new flow
//!   claims it. User space (the sweeper, `onehop status`, tests) reads
//!   whole sets and decides expiry with [`super::expired`] as the data
//!   path does.
//!
//! Replacement order when a new flow finds no empty slot in its two sets:
//! a slot whose flow is over (expired or closing), then the oldest unproven
//! flow (a TCP flow not `ESTABLISHED`, a UDP flow idle past
//! `udp_reclaim_s`), never a live established flow: the new flow is refused
//! instead (`flow_table_full`). A flood of new flows can then only replace
//! other unproven flows.

#![expect(
    clippy::inline_always,
    reason = "BPF hot path: everything here is inlined into the programs"
)]

use super::{ConntrackValue, FlowKey, FlowTimeouts, NS_PER_SEC, closing, expired, tcp_state};

/// Slots per set.
pub const WAYS: usize = 4;
const WAYS_U32: u32 = 4;
const _: () = assert!(WAYS_U32 as usize == WAYS);
/// Sets a flow may live in.
pub const CHOICES: u32 = 2;

/// The low two bits of a slot's word.
pub mod slot_state {
    /// Never written, or given up.
    pub const EMPTY: u64 = 0;
    /// Claimed: key and value are being written.
    pub const WRITING: u64 = 1;
    /// Holds a flow (live or over: see [`super::victim_class`]).
    pub const READY: u64 = 2;
}

const STATE_MASK: u64 = 3;
const GEN_MASK: u64 = 0xffff_fffc;
const GEN_ONE: u64 = 4;

/// A slot's word: `tag << 32 | generation bits | state`.
#[inline(always)]
pub const fn word(tag: u32, generation: u64, state: u64) -> u64 {
    (tag as u64) << 32 | (generation & GEN_MASK) | state
}

/// The state of a word ([`slot_state`]).
#[inline(always)]
pub const fn state_of(w: u64) -> u64 {
    w & STATE_MASK
}

/// The tag of a word.
#[inline(always)]
pub const fn tag_of(w: u64) -> u32 {
    (w >> 32) as u32
}

/// The generation bits a new claim of the slot whose word is `w` takes.
#[inline(always)]
pub const fn next_generation(w: u64) -> u64 {
    (w & GEN_MASK).wrapping_add(GEN_ONE) & GEN_MASK
}

/// Whether `w` is a published slot tagged `tag`.
#[inline(always)]
pub const fn ready_with(w: u64, tag: u32) -> bool {
    state_of(w) == slot_state::READY && tag_of(w) == tag
}

/// A flow's tag: in its slot's word, and (through
/// [`crate::hash::flow_set`]) its two sets. An IPv4 flow's is its Maglev
/// hash ([`maglev_hash`]), so a new flow computes one hash. An IPv6 flow's
/// is [`crate::hash::flow_tag6`], a hash several times cheaper than its
/// Maglev hash, which only a flow the table does not hold needs.
#[inline(always)]
pub const fn key_hash(seed: u32, k: &FlowKey) -> u32 {
    if k.family == super::family::V6 {
        return crate::hash::flow_tag6(seed, &k.src, &k.dst, k.sport, k.dport, k.proto);
    }
    maglev_hash(seed, k)
}

/// The hash that picks a new flow's Maglev slot (without session
/// affinity): the same on every node and in every version.
#[inline(always)]
pub const fn maglev_hash(seed: u32, k: &FlowKey) -> u32 {
    if k.family == super::family::V6 {
        return crate::hash::flow_hash6(seed, &k.src, &k.dst, k.sport, k.dport, k.proto);
    }
    crate::hash::flow_hash(
        seed,
        super::v4_of(&k.src),
        super::v4_of(&k.dst),
        k.sport,
        k.dport,
        k.proto,
    )
}

/// The tag an earlier version gave the flow of `k`, when it differs from
/// [`key_hash`]'s: an IPv6 flow's Maglev hash (before the IPv6 tag was
/// [`crate::hash::flow_tag6`]). A flow written then, in a table the agent
/// adopted at its upgrade, is found under that tag: the data path and user
/// space look there when the flow's own tag finds nothing, so the
/// connection keeps its backend (and its NAT port) across the upgrade.
/// Such slots are never written again; they end as any flow does.
#[inline(always)]
pub const fn legacy_tag(seed: u32, k: &FlowKey) -> Option<u32> {
    if k.family == super::family::V6 {
        return Some(maglev_hash(seed, k));
    }
    None
}

/// Whether a slot tagged `tag` holding `k` was written by a version before
/// today's tag of its family (see [`legacy_tag`]).
pub const fn is_legacy(seed: u32, tag: u32, k: &FlowKey) -> bool {
    match legacy_tag(seed, k) {
        Some(old) => old == tag && tag != key_hash(seed, k),
        None => false,
    }
}

/// Sets of a table meant to hold `entries` flows.
pub const fn sets_for(entries: u32) -> u32 {
    let sets = entries / WAYS_U32;
    if sets == 0 { 1 } else { sets }
}

/// One slot: a flow's client key and its conntrack value.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowSlot {
    pub key: FlowKey,
    pub value: ConntrackValue,
}

/// Value of the `conntrack` array: one set of [`WAYS`] slots and their words.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowSet {
    pub words: [u64; WAYS],
    pub slots: [FlowSlot; WAYS],
}

impl FlowSet {
    /// The slot of `key` (hashed `tag`) published in this set (user space:
    /// a copy read whole, so no word can change under the comparison).
    pub fn find(&self, key: &FlowKey, tag: u32) -> Option<usize> {
        (0..WAYS).find(|&i| ready_with(self.words[i], tag) && self.slots[i].key == *key)
    }

    /// The published slots of this set.
    pub fn flows(&self) -> impl Iterator<Item = &FlowSlot> {
        (0..WAYS)
            .filter(|&i| state_of(self.words[i]) == slot_state::READY)
            .map(|i| &self.slots[i])
    }
}

/// How a new flow may treat a published slot (see [`victim_class`]).
pub mod victim {
    /// Over (expired or closing): reused first.
    pub const OVER: u8 = 0;
    /// Unproven: replaced, oldest first, when no slot is over.
    pub const UNPROVEN: u8 = 1;
    /// A live proven flow: never replaced.
    pub const LIVE: u8 = 2;
}

/// What a new flow at `now` may do with the slot of a `proto` flow in
/// `state`, last seen at `last_seen_ns` ([`victim`]). A UDP flow has no
/// handshake; it counts as unproven once idle for `udp_reclaim_s`, as when
/// a new flow wants its NAT port.
#[inline(always)]
pub const fn victim_class(
    proto: u8,
    state: u8,
    last_seen_ns: u64,
    now: u64,
    t: &FlowTimeouts,
) -> u8 {
    let tcp = proto == crate::proto::TCP;
    if expired(proto, state, last_seen_ns, now, t) || (tcp && closing(state)) {
        victim::OVER
    } else if (tcp && state & tcp_state::ESTABLISHED == 0)
        || (!tcp && now.saturating_sub(last_seen_ns) > t.udp_reclaim_s as u64 * NS_PER_SEC)
    {
        victim::UNPROVEN
    } else {
        victim::LIVE
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto;

    const T: FlowTimeouts = FlowTimeouts::new(60, 21_600, 10, 30, 5, 2);
    const NOW: u64 = 100_000 * NS_PER_SEC;

    /// An IPv4 flow's tag is its Maglev hash; an IPv6 flow's is not, and
    /// its earlier tag is its Maglev hash.
    #[test]
    fn tags_and_maglev_hashes_by_family() {
        let v4 = FlowKey::v4([10, 0, 0, 1], [192, 0, 2, 10], 40000, 80, proto::TCP);
        let mut a = [0u8; 16];
        a[0] = 0x20;
        a[15] = 1;
        let v6 = FlowKey::v6(a, [0x20; 16], 40000, 80, proto::TCP);
        for seed in [1, crate::hash::PUBLIC_SEED] {
            assert_eq!(key_hash(seed, &v4), maglev_hash(seed, &v4));
            assert_eq!(legacy_tag(seed, &v4), None);
            assert_ne!(key_hash(seed, &v6), maglev_hash(seed, &v6));
            assert_eq!(legacy_tag(seed, &v6), Some(maglev_hash(seed, &v6)));
            assert!(is_legacy(seed, maglev_hash(seed, &v6), &v6));
            assert!(!is_legacy(seed, key_hash(seed, &v6), &v6));
            assert!(!is_legacy(seed, key_hash(seed, &v4), &v4));
            assert_eq!(
                maglev_hash(seed, &v6),
                crate::hash::flow_hash6(seed, &v6.src, &v6.dst, 40000, 80, proto::TCP)
            );
        }
    }

    #[test]
    fn words_keep_tag_generation_and_state_apart() {
        let w = word(0xdead_beef, next_generation(0), slot_state::WRITING);
        assert_eq!(tag_of(w), 0xdead_beef);
        assert_eq!(state_of(w), slot_state::WRITING);
        assert_ne!(next_generation(w), w & GEN_MASK, "a claim changes the word");
        let last = word(1, GEN_MASK, slot_state::READY);
        assert_eq!(next_generation(last), 0, "the generation wraps in its bits");
        assert_eq!(tag_of(word(1, next_generation(last), slot_state::READY)), 1);
        assert!(ready_with(word(7, 8, slot_state::READY), 7));
        assert!(!ready_with(word(7, 8, slot_state::WRITING), 7));
        assert!(!ready_with(word(7, 8, slot_state::READY), 8));
    }

    #[test]
    fn victims_over_first_then_unproven_never_live() {
        let tcp = proto::TCP;
        let recent = NOW - NS_PER_SEC;
        assert_eq!(
            victim_class(tcp, tcp_state::ESTABLISHED, recent, NOW, &T),
            victim::LIVE
        );
        assert_eq!(
            victim_class(
                tcp,
                tcp_state::ESTABLISHED,
                NOW - 21_601 * NS_PER_SEC,
                NOW,
                &T
            ),
            victim::OVER
        );
        assert_eq!(
            victim_class(
                tcp,
                tcp_state::ESTABLISHED | tcp_state::RST,
                recent,
                NOW,
                &T
            ),
            victim::OVER
        );
        assert_eq!(
            victim_class(tcp, tcp_state::SYN_SENT, recent, NOW, &T),
            victim::UNPROVEN
        );
        assert_eq!(victim_class(tcp, 0, recent, NOW, &T), victim::UNPROVEN);
        assert_eq!(victim_class(proto::UDP, 0, recent, NOW, &T), victim::LIVE);
        assert_eq!(
            victim_class(proto::UDP, 0, NOW - 6 * NS_PER_SEC, NOW, &T),
            victim::UNPROVEN
        );
        assert_eq!(
            victim_class(proto::UDP, 0, NOW - 31 * NS_PER_SEC, NOW, &T),
            victim::OVER
        );
    }

    #[test]
    fn a_set_finds_only_published_slots_of_the_key() {
        let k = FlowKey::v4([10, 0, 0, 1], [10, 0, 0, 2], 1000, 80, proto::TCP);
        let tag = key_hash(crate::hash::PUBLIC_SEED, &k);
        let mut s = FlowSet::default();
        s.slots[2].key = k;
        assert_eq!(s.find(&k, tag), None, "empty");
        s.words[2] = word(tag, 4, slot_state::WRITING);
        assert_eq!(s.find(&k, tag), None, "being written");
        s.words[2] = word(tag, 4, slot_state::READY);
        assert_eq!(s.find(&k, tag), Some(2));
        assert_eq!(s.find(&k, tag ^ 1), None, "another tag");
        assert_eq!(s.flows().count(), 1);
    }

    #[test]
    fn two_sets_per_flow_spread_independently() {
        let sets = 1 << 14;
        let mut same = 0;
        for port in 1024..2024u16 {
            let h = crate::hash::flow_hash(1, [10, 0, 0, 1], [10, 0, 0, 2], port, 80, 6);
            let (a, b) = (
                crate::hash::flow_set(h, 0, sets),
                crate::hash::flow_set(h, 1, sets),
            );
            assert!(a < sets && b < sets);
            same += u32::from(a == b);
        }
        assert!(same <= 2, "{same} flows with one set twice");
        assert_eq!(crate::hash::flow_set(5, 1, 0), 0, "no table: no division");
    }
}
