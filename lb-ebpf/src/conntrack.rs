//! Flow state writes: conntrack entries, reverse-NAT entries and NAT source
//! ports. Established flows refresh their timestamps at most once a second,
//! so a busy flow costs no map write per packet; a remote flow's cached next
//! hop is renewed with them.

use aya_ebpf::bindings::{BPF_ANY, BPF_NOEXIST};
use lb_common::{
    BackendValue, ConntrackValue, DatapathConfig, FlowKey, RevNatValue,
    hash::{NAT_PROBES, flow_hash, nat_probe},
};

use crate::{
    forward::NextHop,
    maps::{CONNTRACK, REV_NAT},
    service::{NS_PER_SEC, flow_key},
};

/// Reverse entry: turn `reply` back into `VIP:port → client:port`.
#[inline(always)]
pub fn rev_value(client: &FlowKey, service_id: u32, flags: u16, now: u64) -> RevNatValue {
    RevNatValue::new(
        client.dst,
        client.src,
        client.dport,
        client.sport,
        service_id,
        flags,
        now,
    )
}

#[inline(always)]
pub fn insert_flow(key: &FlowKey, value: &ConntrackValue) -> Result<(), i32> {
    CONNTRACK.insert(key, value, u64::from(BPF_ANY))
}

#[inline(always)]
pub fn insert_rev(key: &FlowKey, value: &RevNatValue) -> Result<(), i32> {
    REV_NAT.insert(key, value, u64::from(BPF_ANY))
}

#[inline(always)]
pub fn remove_rev(key: &FlowKey) {
    let _ = REV_NAT.remove(key);
}

/// The next hop cached in a remote flow's conntrack entry, unless it is
/// missing or due for renewal (with the timestamps, see `refresh`).
///
/// Staleness trade-off: a route or neighbour change (say the backend node's
/// MAC) reaches a busy flow at most a second late, as with Katran's and
/// Cilium's next-hop caches; in exchange an established packet costs no
/// `bpf_fib_lookup`. Two CPUs storing the same flow's hop at once write the
/// same lookup result; a reader can only see a mix of an old and a new MAC
/// in the instant the neighbour's MAC itself changes.
#[inline(always)]
pub fn cached_hop(ct: *const ConntrackValue, now: u64) -> Option<NextHop> {
    // SAFETY: `ct` is a conntrack value pointer obtained in this run; fields
    // are read by value.
    let (last, ifindex, dmac, smac) = unsafe {
        (
            (*ct).last_seen_ns,
            (*ct).hop_ifindex,
            (*ct).hop_dmac,
            (*ct).hop_smac,
        )
    };
    (ifindex != 0 && now.wrapping_sub(last) < NS_PER_SEC).then_some(NextHop {
        ifindex,
        smac,
        dmac,
    })
}

/// Stores a freshly looked-up next hop in a remote flow's entry.
#[inline(always)]
pub fn store_hop(ct: *mut ConntrackValue, hop: &NextHop) {
    // SAFETY: as in `cached_hop`; see there for concurrent writers.
    unsafe {
        (*ct).hop_ifindex = hop.ifindex;
        (*ct).hop_dmac = hop.dmac;
        (*ct).hop_smac = hop.smac;
    }
}

/// Refreshes an established flow's timestamps if the last refresh is more
/// than a second old, and puts its reverse entry back if the LRU evicted it
/// (never over another flow's entry).
#[inline(always)]
pub fn refresh(ct: *mut ConntrackValue, rkey: &FlowKey, rval: &RevNatValue, now: u64) {
    // SAFETY: `ct` is a conntrack value pointer obtained in this run; a
    // concurrent writer on another CPU can only store another timestamp.
    let last = unsafe { (*ct).last_seen_ns };
    if now.wrapping_sub(last) < NS_PER_SEC {
        return;
    }
    // SAFETY: as above.
    unsafe { (*ct).last_seen_ns = now };
    match REV_NAT.get_ptr_mut(rkey) {
        // SAFETY: value pointer the map just returned.
        Some(r) => unsafe { (*r).last_seen_ns = now },
        None => {
            let _ = REV_NAT.insert(rkey, rval, u64::from(BPF_NOEXIST));
        }
    }
}

/// The reply key of a remote flow: what the backend's answer looks like
/// when it reaches this node.
#[inline(always)]
pub fn remote_reply_key(
    cfg: &DatapathConfig,
    b: &BackendValue,
    nat_port: u16,
    proto: u8,
) -> FlowKey {
    flow_key(b.ip, cfg.node_ip, b.port, nat_port, proto)
}

/// Claims a free NAT source port for a new remote flow: up to `NAT_PROBES`
/// hash-chosen ports are tried (see `lb_common::hash::nat_probe`), and a
/// port is ours once our reverse entry was inserted with `BPF_NOEXIST` (so
/// two CPUs can never claim the same one).
#[inline(always)]
pub fn claim_nat_port(
    cfg: &DatapathConfig,
    client: &FlowKey,
    b: &BackendValue,
    rval: &RevNatValue,
) -> Option<u16> {
    let min = u32::from(cfg.nat_port_min);
    let max = u32::from(cfg.nat_port_max);
    if max < min {
        return None;
    }
    let size = max - min + 1;
    let h = flow_hash(
        client.src,
        client.dst,
        client.sport,
        client.dport,
        client.proto,
    );
    let mut i = 0;
    while i < NAT_PROBES {
        #[expect(
            clippy::cast_possible_truncation,
            reason = "nat_probe < size = max - min + 1, so min + probe <= max, a u16"
        )]
        let port = (min + nat_probe(h, i, size)) as u16;
        let rkey = remote_reply_key(cfg, b, port, client.proto);
        if REV_NAT.insert(rkey, rval, u64::from(BPF_NOEXIST)).is_ok() {
            return Some(port);
        }
        i += 1;
    }
    None
}
