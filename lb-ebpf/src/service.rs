//! Backend choice for a packet to a served `VIP:port`.
//!
//! 1. Conntrack (client 5-tuple) keeps an established flow on its backend
//!    while the backend slot still holds the same pod address. A TCP SYN
//!    without ACK skips the lookup: a new connection always gets the
//!    current choice, even if an old flow with the same tuple is remembered.
//! 2. Otherwise the flow is new. loadBalancerSourceRanges are checked here,
//!    after the conntrack hit, as kube-proxy does: they decide whether a
//!    connection may start, an established one keeps going when the list
//!    changes, and established packets skip the LPM lookup. A denied flow
//!    leaves no state (no affinity entry either).
//! 3. With sessionAffinity a live affinity entry
//!    wins; else the service's Maglev slice is indexed by the flow hash (or,
//!    with affinity, by the client hash, so the first choice is already
//!    stable per client).

use aya_ebpf::{bindings::BPF_ANY, btf_maps::lpm_trie::Key};
use lb_common::{
    AffinityKey, AffinityValue, BackendValue, ConntrackValue, Counter, DropReason, FlowKey,
    ServiceValue, SourceRangeData, backend_flags, flow_flags,
    hash::{client_hash, flow_hash},
    service_flags,
};

use crate::{
    maps::{AFFINITY, BACKENDS, CONNTRACK, MAGLEV, SRC_RANGES},
    stats,
};

pub const NS_PER_SEC: u64 = 1_000_000_000;

pub enum Choice {
    /// Conntrack hit on a live backend; the pointer is the conntrack value.
    Established {
        backend_id: u32,
        backend: BackendValue,
        ct: *mut ConntrackValue,
    },
    New {
        backend_id: u32,
        backend: BackendValue,
    },
}

#[inline(always)]
pub fn flow_key(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, proto: u8) -> FlowKey {
    FlowKey::new(src, dst, sport, dport, proto)
}

#[inline(always)]
fn backend(id: u32) -> Option<BackendValue> {
    let b = BACKENDS.get_ptr(id)?;
    // SAFETY: array value pointer from the map; copied out by value.
    let b = unsafe { *b };
    (b.flags & backend_flags::VALID != 0).then_some(b)
}

#[inline(always)]
pub fn choose(
    key: &FlowKey,
    svc: &ServiceValue,
    syn_only: bool,
    now: u64,
) -> Result<Choice, DropReason> {
    if !syn_only && let Some(ct) = CONNTRACK.get_ptr_mut(key) {
        // SAFETY: value pointer the map just returned; fields read by value.
        let (id, ip, remote) = unsafe {
            (
                (*ct).backend_id,
                (*ct).backend_ip,
                (*ct).flags & flow_flags::REMOTE != 0,
            )
        };
        match backend(id) {
            Some(b) if b.ip == ip && (b.flags & backend_flags::LOCAL == 0) == remote => {
                return Ok(Choice::Established {
                    backend_id: id,
                    backend: b,
                    ct,
                });
            }
            _ => stats::count(Counter::FlowRepicked),
        }
    }
    if svc.flags & service_flags::SOURCE_RANGES != 0 {
        // The planner sets the flag with no entries when the service allows
        // no IPv4 range at all: the lookup misses and every client is denied.
        let k = Key::new(
            64,
            SourceRangeData {
                service_id: svc.id.to_be_bytes(),
                addr: key.src,
            },
        );
        if SRC_RANGES.get(&k).is_none() {
            return Err(DropReason::SourceRange);
        }
    }
    if svc.maglev_len == 0 {
        return Err(DropReason::NoBackend);
    }
    let client = key.src;
    let hash = if svc.flags & service_flags::AFFINITY != 0 {
        let akey = AffinityKey {
            service_id: svc.id,
            client,
        };
        if let Some(a) = AFFINITY.get_ptr_mut(akey) {
            // SAFETY: value pointer the map just returned.
            let a_val = unsafe { *a };
            let live = now.wrapping_sub(a_val.last_seen_ns)
                < u64::from(svc.affinity_timeout_s) * NS_PER_SEC;
            if live
                && let Some(b) = backend(a_val.backend_id)
                && b.ip == a_val.backend_ip
            {
                // SAFETY: same pointer; a racing writer can only store another
                // timestamp, which is as good as ours.
                unsafe { (*a).last_seen_ns = now };
                stats::count(Counter::AffinityHit);
                return Ok(Choice::New {
                    backend_id: a_val.backend_id,
                    backend: b,
                });
            }
        }
        client_hash(client)
    } else {
        flow_hash(key.src, key.dst, key.sport, key.dport, key.proto)
    };
    let slot = svc.maglev_offset.wrapping_add(hash % svc.maglev_len);
    let Some(id) = MAGLEV.get_ptr(slot) else {
        return Err(DropReason::NoBackend);
    };
    // SAFETY: array value pointer from the map; read by value.
    let id = unsafe { *id };
    let Some(b) = backend(id) else {
        return Err(DropReason::NoBackend);
    };
    if svc.flags & service_flags::AFFINITY != 0 {
        let akey = AffinityKey {
            service_id: svc.id,
            client,
        };
        let aval = AffinityValue {
            backend_id: id,
            backend_ip: b.ip,
            last_seen_ns: now,
        };
        // Best effort: without the entry the next flow hashes to the same
        // backend anyway (client hash), unless the table changed.
        let _ = AFFINITY.insert(akey, aval, u64::from(BPF_ANY));
    }
    Ok(Choice::New {
        backend_id: id,
        backend: b,
    })
}
