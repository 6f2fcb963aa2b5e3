//! Backend choice for a packet to a served `VIP:port`.
//!
//! 1. Conntrack (client 5-tuple) first, before the service's own lookup
//!    ([`live`]): it keeps a live flow on its backend while the backend
//!    slot still holds the same pod address, draining or not (graceful
//!    drain: a terminating or removed endpoint keeps its flows; only a
//!    removed one's UDP flows move, see `backend_flags::GONE`). So does a
//!    deleted Service, or a port taken out of one: it takes no new flow,
//!    and its established flows drain as a removed endpoint's do — as
//!    IPVS's connection table and the conntrack entries of kube-proxy's
//!    DNAT keep them. The flow's traffic counts to the service it started
//!    under (its entry's `service_id`). A SYN on a live entry
//!    (a retransmission, or forged) keeps it too: no packet from outside
//!    redirects a live flow. An expired entry, or a SYN on a closing one,
//!    starts a fresh flow (see `lb_common::flow`).
//! 2. Otherwise the flow is new ([`pick`]), and the caller looks its
//!    service up. loadBalancerSourceRanges are checked here,
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
//!
//! Looking the service up (the kernel's hash of the 8- or 20-byte
//! frontend key, a bucket walk and a compare) took about a fifth of an
//! established packet's time in `bench xdp`: that is why the flow is
//! looked for first.

use aya_ebpf::bindings::BPF_ANY;
use lb_common::{
    AffinityValue, ConntrackValue, Counter, DatapathConfig, DropReason, FlowKey, FlowScratch,
    FlowTimeouts, ServiceValue, backend_flags, config_flags,
    flow::{self, NS_PER_SEC, Side},
    flow_flags, proto, service_flags, vip_flags,
};

use crate::{
    family::Family,
    flowtable, guard,
    maps::{AFFINITY, MAGLEV},
    stats,
};

/// A live flow and its backend (see [`live`]).
pub struct Live<F: Family> {
    pub backend_id: u32,
    pub backend: F::Backend,
    /// The service the flow started under (its entry's `service_id`).
    pub service_id: u32,
    /// The flow's conntrack value.
    pub ct: *mut ConntrackValue,
    /// Its TCP state before this packet.
    pub state: u8,
}

/// The backend a new flow takes (see [`pick`]).
pub struct Picked<F: Family> {
    pub backend_id: u32,
    pub backend: F::Backend,
}

/// The service's fallback backend on this node (see
/// `ServiceValue::local_fallback`), while it is local. The planner names a
/// draining one only when the node has no serving one: the node that sent
/// us the flow still counts it as the service's, and dropping is the only
/// other choice.
#[inline(always)]
fn local_fallback<F: Family>(svc: &ServiceValue) -> Option<(u32, F::Backend)> {
    let id = svc.local_fallback.checked_sub(1)?;
    let b = F::backend(id)?;
    if F::flags(&b) & backend_flags::LOCAL == 0 {
        return None;
    }
    stats::count(Counter::DirectLocalFallback);
    Some((id, b))
}

/// The live flow of `key`, whose entry is `ct`, if it may keep its
/// backend: the slot still holds the same pod (draining or not), and a UDP
/// flow's endpoint has not left the service.
#[inline(always)]
fn established<F: Family>(
    key: &FlowKey,
    ct: *mut ConntrackValue,
    syn_only: bool,
    now: u64,
    timeouts: &FlowTimeouts,
) -> Option<Live<F>> {
    // SAFETY: value pointer the flow table just returned; fields read by
    // value, the address as one word (it is 4-aligned in the value). Only
    // what the backend check needs is read before the backend's lookup:
    // values live across a helper call are spilled into the packet path's
    // frame.
    let (id, ip) = unsafe { ((*ct).backend_id, F::save(&raw const (*ct).backend_ip)) };
    let b = F::backend(id);
    // SAFETY: as above.
    let (remote, state, last, service_id) = unsafe {
        (
            (*ct).flags & flow_flags::REMOTE != 0,
            (*ct).state,
            (*ct).last_seen_ns,
            (*ct).service_id,
        )
    };
    match b {
        Some(b)
            if F::is(&b, &ip)
                && (F::flags(&b) & backend_flags::LOCAL == 0) == remote
                && !(F::flags(&b) & backend_flags::GONE != 0 && key.proto == proto::UDP) =>
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
                return Some(Live {
                    backend_id: id,
                    backend: b,
                    service_id,
                    ct,
                    state,
                });
            }
        }
        _ => stats::count(Counter::FlowRepicked),
    }
    None
}

/// The live flow of `key`, if it has one that may go on (module docs, 1).
/// `syn_only` says the packet is a TCP SYN without ACK, `hash` is the
/// flow's tag (`flow::table::key_hash` of `key`: its flow-table sets).
#[inline(always)]
pub fn live<F: Family>(
    key: &FlowKey,
    syn_only: bool,
    now: u64,
    cfg: &DatapathConfig,
    hash: u32,
) -> Option<Live<F>> {
    let ct = flowtable::find_any::<F>(key, hash, cfg)?;
    established::<F>(key, ct, syn_only, now, &cfg.timeouts)
}

/// The backend of a new flow of `key` to the service `svc` (module docs,
/// 2 and 3). `client` is the client's address (`key.src`; IPv6 passes the
/// key's own field, not the packet's: a copy of its 16 bytes would sit in
/// 16 stack slots across the lookups), `hash` the flow's tag (as for
/// [`live`]; for IPv4 also its Maglev hash, which an IPv6 flow computes
/// from the key), `vip` the destination's `vip_flags`: with direct return
/// only the announcer sends new flows on to other nodes (see `ingress`,
/// `not_announcer`); any other node serves them with its service's
/// `local_fallback`.
#[inline(always)]
pub fn pick<F: Family>(
    key: &FlowKey,
    client: &F::Addr,
    svc: &ServiceValue,
    now: u64,
    cfg: &DatapathConfig,
    hash: u32,
    vip: u32,
) -> Result<Picked<F>, DropReason> {
    // The planner sets the flag with no entries when the service allows no
    // range of the client's family: the lookup misses, every client denied.
    if svc.flags & service_flags::SOURCE_RANGES != 0 && !F::source_allowed(svc.id, client) {
        return Err(DropReason::SourceRange);
    }
    if svc.maglev_len == 0 {
        return Err(DropReason::NoBackend);
    }
    let hash = if svc.flags & service_flags::AFFINITY != 0 {
        let akey = F::affinity_key(svc.id, client);
        if let Some(a) = AFFINITY.get_ptr_mut(akey) {
            // SAFETY: value pointer the map just returned; fields read by value.
            let (last, id, ip) = unsafe {
                (
                    (*a).last_seen_ns,
                    (*a).backend_id,
                    F::save(&raw const (*a).backend_ip),
                )
            };
            let live = now.wrapping_sub(last) < u64::from(svc.affinity_timeout_s) * NS_PER_SEC;
            if live
                && let Some(b) = F::backend(id)
                && F::is(&b, &ip)
                && F::flags(&b) & backend_flags::DRAINING == 0
            {
                // SAFETY: same pointer; a racing writer can only store another
                // timestamp, which is as good as ours.
                unsafe { (*a).last_seen_ns = now };
                stats::count(Counter::AffinityHit);
                return Ok(Picked {
                    backend_id: id,
                    backend: b,
                });
            }
        }
        F::client_hash(cfg.hash_seed, client)
    } else {
        F::maglev_hash(cfg.hash_seed, key, hash)
    };
    let slot = svc.maglev_offset.wrapping_add(hash % svc.maglev_len);
    let Some(id) = MAGLEV.get_ptr(slot) else {
        return Err(DropReason::NoBackend);
    };
    // SAFETY: array value pointer from the map; read by value.
    let id = unsafe { *id };
    let Some(b) = F::backend(id).filter(|b| F::flags(b) & backend_flags::DRAINING == 0) else {
        return Err(DropReason::NoBackend);
    };
    // A node that may not send a new flow on serves it with its own
    // fallback backend of the service when its table picks another node's.
    let sends_on = cfg.flags & config_flags::DIRECT_RETURN == 0 || vip & vip_flags::ANNOUNCE != 0;
    let (id, b) = if sends_on || F::flags(&b) & backend_flags::LOCAL != 0 {
        (id, b)
    } else {
        local_fallback::<F>(svc).ok_or(DropReason::NotAnnouncer)?
    };
    if svc.flags & service_flags::AFFINITY != 0 {
        let akey = F::affinity_key(svc.id, client);
        let aval = AffinityValue::new(id, F::wide(&F::addr(&b)), now);
        // Best effort: without the entry the next flow hashes to the same
        // backend anyway (client hash), unless the table changed.
        let _ = AFFINITY.insert(akey, aval, u64::from(BPF_ANY));
    }
    Ok(Picked {
        backend_id: id,
        backend: b,
    })
}

/// The state a client's packet of `proto` with TCP flags `tcp` leaves an
/// established flow in, now in `state`; a packet that proves a TCP flow
/// gives back its new-flow guard token.
#[inline(always)]
pub fn next_state(state: u8, proto: u8, tcp: u8) -> u8 {
    if proto != proto::TCP {
        return state;
    }
    let next = flow::next_state(state, tcp, Side::Client);
    if flow::proves(state, next) {
        guard::refund();
    }
    next
}

/// Leaves the flow's `hash` in this CPU's scratch slot `s`, where
/// `conntrack::onehop_flow_create` takes it (its flow-table sets and NAT
/// port probes), rather than keeping it live in the packet path's frame.
/// For every packet, not only a new flow's: an established remote flow
/// whose NAT port went to another flow is created again (`nat_port_lost`),
/// and with a stale hash from the slot its entry would land in another
/// flow's sets, where its next packet never finds it.
#[inline(always)]
pub fn stage_hash(s: *mut FlowScratch, hash: u32) {
    // SAFETY: this CPU's scratch slot, the caller's for this run.
    unsafe { (*s).hash = hash };
}

/// Admits a new flow of `proto` (TCP flags `tcp`): its initial state, or
/// `HalfOpenLimit` when the new-flow guard refuses an unproven TCP flow
/// (it must find room before it takes state, see `guard`; UDP has no
/// handshake to prove it by).
#[inline(always)]
pub fn admit((proto, tcp): (u8, u8), now: u64) -> Result<u8, DropReason> {
    if proto == proto::TCP && !guard::admit(now) {
        return Err(DropReason::HalfOpenLimit);
    }
    Ok(flow::initial_state(proto, tcp))
}
