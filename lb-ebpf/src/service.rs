//! Backend choice for a packet to a served `VIP:port`.
//!
//! 1. Conntrack (client 5-tuple) keeps a live flow on its backend while the
//!    backend slot still holds the same pod address, draining or not
//!    (graceful drain: a terminating or removed endpoint keeps its flows;
//!    only a removed one's UDP flows move, see `backend_flags::GONE`).
//!    A SYN on a live entry
//!    (a retransmission, or forged) keeps it too: no packet from outside
//!    redirects a live flow. An expired entry, or a SYN on a closing one,
//!    starts a fresh flow (see `lb_common::flow`).
//! 2. Otherwise the flow is new. loadBalancerSourceRanges are checked here,
//!    after the conntrack hit, as kube-proxy does: they decide whether a
//!    connection may start, an established one keeps going when the list
//!    changes, and established packets skip the LPM lookup. A denied flow
//!    leaves no state (no affinity entry either).
//! 3. With sessionAffinity a live affinity entry
//!    wins unless its backend is draining; else the service's Maglev slice
//!    is indexed by the flow hash (or, with affinity, by the client hash, so
//!    the first choice is already stable per client). New flows never take
//!    a draining backend: the planner keeps them out of the tables, and a
//!    table slot naming one (only between two map writes of an update) is
//!    treated as empty.

use aya_ebpf::{bindings::BPF_ANY, btf_maps::lpm_trie::Key};
use lb_common::{
    AffinityKey, AffinityValue, BackendValue, ConntrackValue, Counter, DatapathConfig, DropReason,
    FlowKey, FlowTimeouts, ServiceValue, SourceRangeData, backend_flags,
    flow::{self, NS_PER_SEC, addr_v4},
    flow_flags,
    hash::client_hash,
    proto, service_flags,
};

use crate::{
    flowtable,
    maps::{AFFINITY, BACKENDS, MAGLEV, SRC_RANGES},
    stats,
};

pub enum Choice {
    /// Conntrack hit on a live flow and backend; the pointer is the
    /// conntrack value, `state` its TCP state before this packet.
    Established {
        backend_id: u32,
        backend: BackendValue,
        ct: *mut ConntrackValue,
        state: u8,
    },
    New {
        backend_id: u32,
        backend: BackendValue,
    },
}

#[inline(always)]
pub fn flow_key(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, proto: u8) -> FlowKey {
    FlowKey::v4(src, dst, sport, dport, proto)
}

/// The IPv4 address in a 16-byte address field of a map value, read as
/// one 4-byte load (byte by byte, its four bytes spill separately across
/// the backend's lookup). The fields it reads are 4-aligned in their
/// values (`ConntrackValue`, `AffinityValue`).
#[expect(
    clippy::cast_ptr_alignment,
    reason = "the fields read are 4-aligned in their values (see above)"
)]
#[inline(always)]
fn addr_word(a: *const [u8; 16]) -> [u8; 4] {
    // SAFETY: the caller's field pointer, valid for this run and 4-aligned.
    unsafe { a.cast::<u32>().read() }.to_ne_bytes()
}

#[inline(always)]
fn backend(id: u32) -> Option<BackendValue> {
    let b = BACKENDS.get_ptr(id)?;
    // SAFETY: array value pointer from the map; copied out by value.
    let b = unsafe { *b };
    (b.flags & backend_flags::VALID != 0).then_some(b)
}

/// The service's fallback backend on this node (see
/// `ServiceValue::local_fallback`), while it is local. The planner names a
/// draining one only when the node has no serving one: the node that sent
/// us the flow still counts it as the service's, and dropping is the only
/// other choice.
#[inline(always)]
fn local_fallback(svc: &ServiceValue) -> Option<(u32, BackendValue)> {
    let id = svc.local_fallback.checked_sub(1)?;
    let b = backend(id)?;
    if b.flags & backend_flags::LOCAL == 0 {
        return None;
    }
    stats::count(Counter::DirectLocalFallback);
    Some((id, b))
}

/// The live flow of `key`, if it has one and may keep its backend: the
/// slot still holds the same pod (draining or not), and a UDP flow's
/// endpoint has not left the service.
#[inline(always)]
fn established(
    key: &FlowKey,
    hash: u32,
    sets: u32,
    syn_only: bool,
    now: u64,
    timeouts: &FlowTimeouts,
) -> Option<Choice> {
    let ct = flowtable::find(key, hash, sets)?;
    // SAFETY: value pointer the flow table just returned; fields read by
    // value, the address as one word (it is 4-aligned in the value). Only
    // what the backend check needs is read before the backend's lookup:
    // values live across a helper call are spilled into the packet path's
    // frame.
    let (id, ip) = unsafe { ((*ct).backend_id, addr_word(&raw const (*ct).backend_ip)) };
    let b = backend(id);
    // SAFETY: as above.
    let (remote, state, last) = unsafe {
        (
            (*ct).flags & flow_flags::REMOTE != 0,
            (*ct).state,
            (*ct).last_seen_ns,
        )
    };
    match b {
        Some(b)
            if b.ip == ip
                && (b.flags & backend_flags::LOCAL == 0) == remote
                && !(b.flags & backend_flags::GONE != 0 && key.proto == proto::UDP) =>
        {
            // An entry refreshed within the second is live whatever its
            // state (timeouts are at least two seconds).
            let over = now.wrapping_sub(last) >= NS_PER_SEC
                && flow::expired(key.proto, state, last, now, timeouts);
            if over {
                stats::count(Counter::FlowExpired);
            } else if syn_only && flow::closing(state) {
                stats::count(Counter::FlowReopened);
            } else {
                if syn_only {
                    stats::count(Counter::SynOnLiveFlow);
                }
                return Some(Choice::Established {
                    backend_id: id,
                    backend: b,
                    ct,
                    state,
                });
            }
        }
        _ => stats::count(Counter::FlowRepicked),
    }
    None
}

/// `client` is the client's IPv4 address (`key.src`), `syn_only` says the
/// packet is a TCP SYN without ACK, `hash` is the flow's hash
/// (`flow::table::key_hash` of `key`: its flow-table sets, and its Maglev
/// slot without affinity), `sends_on` whether a new flow may go to another
/// node's backend (otherwise: `local_fallback`).
#[expect(
    clippy::too_many_arguments,
    reason = "inlined into its one caller, whose registers these are"
)]
#[inline(always)]
pub fn choose(
    key: &FlowKey,
    client: [u8; 4],
    svc: &ServiceValue,
    syn_only: bool,
    now: u64,
    cfg: &DatapathConfig,
    hash: u32,
    sends_on: bool,
) -> Result<Choice, DropReason> {
    if let Some(c) = established(key, hash, cfg.flow_sets, syn_only, now, &cfg.timeouts) {
        return Ok(c);
    }
    if svc.flags & service_flags::SOURCE_RANGES != 0 {
        // The planner sets the flag with no entries when the service allows
        // no IPv4 range at all: the lookup misses and every client is denied.
        let k = Key::new(
            64,
            SourceRangeData {
                service_id: svc.id.to_be_bytes(),
                addr: client,
            },
        );
        if SRC_RANGES.get(&k).is_none() {
            return Err(DropReason::SourceRange);
        }
    }
    if svc.maglev_len == 0 {
        return Err(DropReason::NoBackend);
    }
    let hash = if svc.flags & service_flags::AFFINITY != 0 {
        let akey = AffinityKey::v4(svc.id, client);
        if let Some(a) = AFFINITY.get_ptr_mut(akey) {
            // SAFETY: value pointer the map just returned; fields read by value.
            let (last, id, ip) = unsafe {
                (
                    (*a).last_seen_ns,
                    (*a).backend_id,
                    addr_word(&raw const (*a).backend_ip),
                )
            };
            let live = now.wrapping_sub(last) < u64::from(svc.affinity_timeout_s) * NS_PER_SEC;
            if live
                && let Some(b) = backend(id)
                && b.ip == ip
                && b.flags & backend_flags::DRAINING == 0
            {
                // SAFETY: same pointer; a racing writer can only store another
                // timestamp, which is as good as ours.
                unsafe { (*a).last_seen_ns = now };
                stats::count(Counter::AffinityHit);
                return Ok(Choice::New {
                    backend_id: id,
                    backend: b,
                });
            }
        }
        client_hash(cfg.hash_seed, client)
    } else {
        hash
    };
    let slot = svc.maglev_offset.wrapping_add(hash % svc.maglev_len);
    let Some(id) = MAGLEV.get_ptr(slot) else {
        return Err(DropReason::NoBackend);
    };
    // SAFETY: array value pointer from the map; read by value.
    let id = unsafe { *id };
    let Some(b) = backend(id).filter(|b| b.flags & backend_flags::DRAINING == 0) else {
        return Err(DropReason::NoBackend);
    };
    // A node that may not send a new flow on serves it with its own
    // fallback backend of the service when its table picks another node's.
    let (id, b) = if sends_on || b.flags & backend_flags::LOCAL != 0 {
        (id, b)
    } else {
        local_fallback(svc).ok_or(DropReason::NotAnnouncer)?
    };
    if svc.flags & service_flags::AFFINITY != 0 {
        let akey = AffinityKey::v4(svc.id, client);
        let aval = AffinityValue::new(id, addr_v4(b.ip), now);
        // Best effort: without the entry the next flow hashes to the same
        // backend anyway (client hash), unless the table changed.
        let _ = AFFINITY.insert(akey, aval, u64::from(BPF_ANY));
    }
    Ok(Choice::New {
        backend_id: id,
        backend: b,
    })
}
