//! Flow state writes: conntrack entries, reverse-NAT entries, their TCP
//! state (see `lb_common::flow`) and NAT source ports. A busy flow refreshes
//! its timestamps at most once a second, or when its state changes, so it
//! costs no map write per packet; a remote flow's cached next hop is renewed
//! with them.

use core::intrinsics::{AtomicOrdering, atomic_cxchg};

use aya_ebpf::bindings::{BPF_ANY, BPF_NOEXIST};
use lb_common::{
    BackendValue, ConntrackValue, Counter, DatapathConfig, FlowKey, FlowScratch, RevNatValue,
    flow::{self, NS_PER_SEC, Side, TOMBSTONE_NS, addr_v4, family},
    flow_flags,
    hash::{NAT_PROBES, nat_probe},
};

use crate::{
    family::{Family, V4},
    flowtable,
    forward::NextHop,
    local,
    maps::{CONFIG, FLOW_SCRATCH, REV_NAT},
    stats,
};

#[inline(always)]
pub fn remove_flow(key: &FlowKey) {
    flowtable::remove::<V4>(key);
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

/// The next hop a value holds, whatever its age: a flow entry's (see
/// [`cached_hop`]), or the one a program staged in the scratch slot's
/// `ctv` for the next (`lb_service6` for `lb_nat6` and `onehop_direct6`).
#[inline(always)]
pub fn stored_hop(ct: *const ConntrackValue) -> NextHop {
    // SAFETY: `ct` is a conntrack or scratch value pointer obtained in this
    // run; fields are read by value.
    unsafe {
        NextHop {
            ifindex: (*ct).hop_ifindex,
            dmac: (*ct).hop_dmac,
            smac: (*ct).hop_smac,
        }
    }
}

/// Stores a freshly looked-up next hop in a remote flow's entry, or one
/// for the next program in the scratch slot's `ctv` (see [`stored_hop`]).
#[inline(always)]
pub fn store_hop(ct: *mut ConntrackValue, hop: &NextHop) {
    // SAFETY: as in `cached_hop`; see there for concurrent writers.
    unsafe {
        (*ct).hop_ifindex = hop.ifindex;
        (*ct).hop_dmac = hop.dmac;
        (*ct).hop_smac = hop.smac;
    }
}

/// The key under which a flow's reverse entry is stored: the backend's
/// reply as it reaches us, `backend → peer` (`peer` the client for a local
/// flow, our address and NAT port for a remote one).
/// The addresses by reference: an IPv6 key's two 16-byte addresses by
/// value would be spilled to the packet path's stack.
#[derive(Clone, Copy)]
pub struct ReplyKey<'a, F: Family> {
    pub backend: &'a F::Addr,
    pub backend_port: u16,
    pub peer: &'a F::Addr,
    pub peer_port: u16,
}

/// Writes an IPv6 flow key into `k` (a scratch slot's) field by field,
/// the addresses straight from where they are: a `FlowKey` built first
/// would be a 40-byte temporary on the caller's stack.
#[inline(always)]
pub fn write_key6(
    k: *mut FlowKey,
    src: &[u8; 16],
    dst: &[u8; 16],
    sport: u16,
    dport: u16,
    proto: u8,
) {
    // SAFETY: the caller's slot, valid and ours for this run; the
    // addresses are 16 bytes each and not inside the key.
    unsafe {
        store_words(&raw mut (*k).src, src);
        store_words(&raw mut (*k).dst, dst);
        (*k).sport = sport;
        (*k).dport = dport;
        (*k).proto = proto;
        (*k).family = family::V6;
        (*k)._pad = [0; 2];
    }
}

/// Zeroes a byte array of a value being staged, one store a byte (as
/// `forward::zero` does the lookup's parameters a word at a time). LLVM
/// turns a plain (or volatile) store of a small zeroed array into a call
/// of the `memset` subprogram, a BPF-to-BPF call and a loop, which costs
/// more than the few stores on a path every packet of a flow takes.
///
/// # Safety
/// `p` is valid for writes and ours for this run.
#[inline(always)]
pub unsafe fn zero<const N: usize>(p: *mut [u8; N]) {
    let b = p.cast::<u8>();
    let mut i = 0;
    while i < N {
        // SAFETY: byte `i` of the array (the caller's promise).
        unsafe { b.add(i).write_volatile(0) };
        i += 1;
    }
}

/// Copies an address from the packet (read byte by byte: nothing promises
/// its alignment) into a key's 4-aligned field as four 4-byte words, the
/// width the hash, the service key and the checksum read back: a word
/// read over bytes just stored one by one waits for them to reach the
/// cache (no store forwarding).
///
/// # Safety
/// `to` is a `FlowKey`'s `src` or `dst`, valid and ours for this run.
#[expect(
    clippy::cast_ptr_alignment,
    reason = "a FlowKey's addresses are 4-aligned (ADDRS_WORD_ALIGNED)"
)]
#[inline(always)]
unsafe fn store_words(to: *mut [u8; 16], from: &[u8; 16]) {
    let () = lb_common::flow::ADDRS_WORD_ALIGNED;
    let w = to.cast::<u32>();
    let mut i = 0;
    while i < 4 {
        let b = 4 * i;
        // SAFETY: word `i` of the field (the caller's promise, above).
        unsafe {
            w.add(i).write(u32::from_ne_bytes([
                from[b],
                from[b + 1],
                from[b + 2],
                from[b + 3],
            ]));
        }
        i += 1;
    }
}

/// Refreshes an established flow after a client packet that moves it to
/// `state`: the timestamps if the last refresh is more than a second old or
/// the state changed, and with them a local flow's endpoint entry (see
/// `local`) and the reverse entry of a flow that has one (under `reply`; put
/// back if the LRU evicted it, never over another flow's entry).
///
/// Returns false when the flow's reverse entry now belongs to another flow:
/// a remote flow's NAT port can be lost that way (the LRU evicted the entry
/// and another flow claimed the port); the flow cannot go on with it.
///
/// The reverse key is built in the scratch map, and only when the entry is
/// due: a 40-byte key on the packet path's stack would be paid by every
/// packet's frame (the call chain has 512 bytes in all).
#[inline(always)]
pub fn refresh<F: Family>(
    ct: *mut ConntrackValue,
    client: &FlowKey,
    reply: ReplyKey<'_, F>,
    state: u8,
    now: u64,
) -> bool {
    // SAFETY: `ct` is a conntrack value pointer obtained in this run; a
    // concurrent writer on another CPU can only store another timestamp or
    // the state of a packet of the same flow.
    let (last, old) = unsafe { ((*ct).last_seen_ns, (*ct).state) };
    if old == state && now.wrapping_sub(last) < NS_PER_SEC {
        return true;
    }
    // SAFETY: as above.
    let (service_id, mut flags) = unsafe {
        (*ct).last_seen_ns = now;
        (*ct).state = state;
        ((*ct).service_id, (*ct).flags)
    };
    let Some(s) = scratch() else {
        return true;
    };
    if flags & flow_flags::REMOTE == 0 {
        // A local flow's replies are found through its endpoint's entry:
        // make sure it is there (the LRU may have evicted it) and holds the
        // flow's front, or says `overflow` for a flow with a reverse entry.
        // Without room for the front, the flow takes a reverse entry.
        // SAFETY: this CPU's scratch slot, ours for this run.
        unsafe {
            local::stage::<F>(
                s,
                F::endpoint_key(reply.backend, reply.backend_port, client.proto),
                F::narrow(&client.dst),
                client.dport,
            );
        }
        let recorded = local::onehop_remember_front() == 1;
        if flags & flow_flags::LOCAL_REVERSE == 0 {
            if recorded {
                return true;
            }
            flags |= flow_flags::LOCAL_REVERSE;
            // SAFETY: as for the fields above.
            unsafe { (*ct).flags = flags };
        }
    }
    // SAFETY: this CPU's scratch slot, ours for this run.
    let rkey = unsafe {
        (*s).rkey = F::flow_key(
            reply.backend,
            reply.peer,
            reply.backend_port,
            reply.peer_port,
            client.proto,
        );
        &(*s).rkey
    };
    match REV_NAT.get_ptr_mut(rkey) {
        Some(r) => {
            // SAFETY: value pointer the map just returned.
            if !unsafe { (*r).belongs_to(client) } {
                return false;
            }
            // SAFETY: as above.
            unsafe {
                (*r).last_seen_ns = now;
                (*r).state = state;
            }
            true
        }
        None => put_back_rev(
            client,
            rkey,
            u64::from(service_id) << 32 | u64::from(flags) << 16 | u64::from(state),
            now,
        ),
    }
}

/// Refreshes a direct-return flow after a client packet that moves it to
/// `state`: its timestamps once a second or on a state change. It has no
/// reverse entry; its backend's node keeps the flow's other half.
#[inline(always)]
pub fn refresh_direct(ct: *mut ConntrackValue, state: u8, now: u64) {
    // SAFETY: conntrack value pointer obtained in this run; a racing writer
    // can only store another packet's values of the same flow.
    let (last, old) = unsafe { ((*ct).last_seen_ns, (*ct).state) };
    if old != state || now.wrapping_sub(last) >= NS_PER_SEC {
        // SAFETY: as above.
        unsafe {
            (*ct).last_seen_ns = now;
            (*ct).state = state;
        }
    }
}

/// Re-inserts an evicted reverse entry. Out of line: rare, and its value
/// would otherwise take stack space on every established packet. `meta` is
/// `service_id << 32 | flags << 16 | state` (BPF calls take five arguments).
#[inline(never)]
fn put_back_rev(client: &FlowKey, rkey: &FlowKey, meta: u64, now: u64) -> bool {
    #[expect(
        clippy::cast_possible_truncation,
        reason = "unpacking the fields packed by the caller"
    )]
    let (service_id, flags, state) = ((meta >> 32) as u32, (meta >> 16) as u16, meta as u8);
    let rval = RevNatValue::reverse_of(client, service_id, flags, state, now);
    REV_NAT.insert(rkey, rval, u64::from(BPF_NOEXIST)).is_ok()
}

/// The state of a flow in `old` after a packet of its backend.
#[inline(always)]
fn after_backend_packet(old: u8, proto: u8, tcp_flags: u8) -> u8 {
    if proto == lb_common::proto::TCP {
        flow::next_state(old, tcp_flags, Side::Backend)
    } else {
        old
    }
}

/// A local backend's reply of a flow without a reverse entry (see
/// `local`): refreshes the conntrack entry once a second, or with a state
/// change (FIN, RST, or the backend talking after an RST).
#[inline(always)]
pub fn local_backend_packet(ct: *mut ConntrackValue, proto: u8, tcp_flags: u8, now: u64) {
    // SAFETY: conntrack value pointer obtained in this run; the fields are
    // plain integers a racing writer can only set to another packet's
    // values.
    let (last, old) = unsafe { ((*ct).last_seen_ns, (*ct).state) };
    let state = after_backend_packet(old, proto, tcp_flags);
    if state != old || now.wrapping_sub(last) >= NS_PER_SEC {
        // SAFETY: as above.
        unsafe {
            (*ct).state = state;
            (*ct).last_seen_ns = now;
        }
    }
}

/// A backend's packet of a flow with a reverse entry (remote reply on
/// ingress, local reply on egress): refreshes the reverse entry once a
/// second, and on a state change (FIN, RST, or the backend talking after an
/// RST) both entries. `tcp_flags` is 0 for UDP.
#[inline(always)]
pub fn backend_packet<F: Family>(r: *mut RevNatValue, proto: u8, tcp_flags: u8, now: u64) {
    // SAFETY: value pointer of the reverse entry obtained in this run; the
    // fields are plain integers a racing writer can only set to another
    // packet's values.
    let (last, old) = unsafe { ((*r).last_seen_ns, (*r).state) };
    let state = after_backend_packet(old, proto, tcp_flags);
    if state == old {
        if now.wrapping_sub(last) >= NS_PER_SEC {
            // SAFETY: as above.
            unsafe { (*r).last_seen_ns = now };
        }
        return;
    }
    // SAFETY: as above.
    let client = unsafe {
        (*r).state = state;
        (*r).last_seen_ns = now;
        (*r).client_key(proto, F::FAMILY)
    };
    if let Some(ct) = flowtable::lookup::<F>(&client) {
        // SAFETY: value pointer the map just returned.
        unsafe {
            (*ct).state = state;
            (*ct).last_seen_ns = now;
        }
    }
}

/// Takes over a reverse entry another flow held: only while it is still
/// `last` (the expired stamp we read), so that of two CPUs reclaiming the
/// same port exactly one wins. The stamp is swapped first; a reader that
/// meets the entry in between sees a live entry of either flow.
#[inline(always)]
fn take_over(r: *mut RevNatValue, last: u64, rval: &RevNatValue) -> bool {
    // SAFETY: `r` points into a map value (8-byte aligned u64 field) that
    // stays valid for this run (RCU); BPF's atomic compare-exchange is the
    // only safe way for two CPUs to race on it. (The target spec says "no
    // CAS" for lack of a 32-bit one; the 64-bit `BPF_CMPXCHG` exists since
    // Linux 5.12, and `core::sync::atomic` hides it behind that flag.)
    let (_, won) = unsafe {
        atomic_cxchg::<u64, { AtomicOrdering::SeqCst }, { AtomicOrdering::SeqCst }>(
            &raw mut (*r).last_seen_ns,
            last,
            rval.last_seen_ns,
        )
    };
    if !won {
        return false;
    }
    // SAFETY: the entry is ours now; written field by field, the stamp
    // already is.
    // (The addresses by `copy_nonoverlapping`: a plain assignment between
    // two map values is a `memmove` call in BPF, one more frame on the
    // call chain's 512 bytes of stack.)
    unsafe {
        core::ptr::copy_nonoverlapping(&raw const rval.new_src, &raw mut (*r).new_src, 1);
        core::ptr::copy_nonoverlapping(&raw const rval.new_dst, &raw mut (*r).new_dst, 1);
        (*r).new_sport = rval.new_sport;
        (*r).new_dport = rval.new_dport;
        (*r).service_id = rval.service_id;
        (*r).flags = rval.flags;
        (*r).state = rval.state;
    }
    true
}

/// `onehop_flow_create` failed to write an entry (a map that is full and not LRU).
pub const CREATE_MAP_FAILED: u32 = 1 << 16;
/// `onehop_flow_create` found no flow-table slot it may take (`flow_table_full`).
pub const CREATE_TABLE_FULL: u32 = 2 << 16;

/// This CPU's scratch space for a new flow (see `onehop_flow_create`).
#[inline(always)]
pub fn scratch() -> Option<*mut FlowScratch> {
    FLOW_SCRATCH.get_ptr_mut(0)
}

/// Records the front of a new local flow (`key`; in this CPU's scratch
/// slot `s`, `s.backend` its backend and `s.ctv` its value) in
/// its endpoint's `local_fronts` entry, or marks the flow
/// `LOCAL_REVERSE` when the entry has no room. Called by the packet path
/// before [`onehop_flow_create`], not by it: a call from there would add a
/// frame to the new flow's call chain, which has no stack to spare.
#[inline(always)]
pub fn remember_front<F: Family>(key: &FlowKey, s: *mut FlowScratch, backend: F::Addr) {
    // SAFETY: this CPU's scratch slot, ours for this run; fields by value.
    let backend_port = unsafe { (*s).backend.port };
    let (proto, vip, vport) = (key.proto, F::narrow(&key.dst), key.dport);
    // SAFETY: as above.
    unsafe {
        local::stage::<F>(
            s,
            F::endpoint_key(&backend, backend_port, proto),
            vip,
            vport,
        );
    }
    if local::onehop_remember_front() != 1 {
        // SAFETY: as above.
        unsafe { (*s).ctv.flags |= flow_flags::LOCAL_REVERSE };
    }
}

/// Writes the new flow of this CPU's scratch slot `s`: its conntrack entry
/// (`s.key`, written by the packet path for every packet; `s.ctv`, filled
/// by the caller but for the NAT port; `s.hash` its flow hash; `s.backend`
/// its backend), and the reverse entry, which for a full-NAT flow claims
/// its NAT port (a direct-return flow has none). Returns the NAT port of a
/// full-NAT flow, 1 for a local or direct-return one, 0 when no NAT port is
/// free, [`CREATE_TABLE_FULL`] or [`CREATE_MAP_FAILED`].
///
/// The entries are built in the per-CPU `flow_scratch` map: with 16-byte
/// addresses a new flow's keys and values do not fit on the stack beside
/// the packet path's own state (512 bytes for the whole call chain).
///
/// A *global* BPF function (exported by the linker, see lb-ebpf's build
/// script): the verifier checks it once, on its own, instead of once for
/// every way the packet path reaches it — its NAT port claim loop was about
/// half of the program's verification.
///
/// It takes no arguments, everything is in this CPU's scratch slot, which
/// it looks up itself: the verifier types a global function's pointer
/// arguments as plain memory, and kernels before 6.2 or so (Debian 12's
/// 6.1: `R2 type=mem expected=fp, pkt, pkt_meta, map_key, map_value`)
/// refuse plain memory as a map key.
#[expect(
    clippy::needless_borrows_for_generic_args,
    reason = "keys and values are passed by reference into the scratch map: by value they would be copied to the stack"
)]
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn onehop_flow_create() -> u32 {
    let (Some(cfg), Some(s)) = (CONFIG.get(0), scratch()) else {
        return CREATE_MAP_FAILED;
    };
    // SAFETY: this CPU's slot of the per-CPU scratch array, used only
    // within this run (BPF programs are not preempted mid-run on their
    // CPU); the caller filled it.
    let s = unsafe { &mut *s };
    let remote = s.ctv.flags & flow_flags::REMOTE != 0;
    // The backend's fields one by one: a copy of it would take stack.
    let (backend, backend_port, proto) = (s.backend.ip, s.backend.port, s.key.proto);
    if (!remote && s.ctv.flags & flow_flags::LOCAL_REVERSE == 0)
        || s.ctv.flags & flow_flags::DIRECT != 0
    {
        // The flow's one write: a local flow's front is recorded
        // (`remember_front`), a direct-return flow has no reverse entry and
        // no NAT port.
        return if flowtable::insert(s, cfg.flow_sets, &cfg.timeouts) == flowtable::INSERTED {
            1
        } else {
            CREATE_TABLE_FULL
        };
    }
    let (service_id, flags, state, now) = (
        s.ctv.service_id,
        s.ctv.flags,
        s.ctv.state,
        s.ctv.last_seen_ns,
    );
    s.rval.set_reverse_of(&s.key, service_id, flags, state, now);
    if remote {
        if s.key.family == family::V6 {
            // The pod's reply to our IPv6 address, field by field (as the
            // local key below).
            // SAFETY: distinct fields of one scratch slot and the config,
            // 16 bytes each.
            unsafe {
                core::ptr::copy_nonoverlapping(&raw const s.ctv.backend_ip, &raw mut s.rkey.src, 1);
                core::ptr::copy_nonoverlapping(&raw const cfg.node_ip6, &raw mut s.rkey.dst, 1);
            }
            s.rkey.sport = backend_port;
            s.rkey.dport = 0;
            s.rkey.proto = proto;
            s.rkey.family = family::V6;
            s.rkey._pad = [0; 2];
        } else {
            s.rkey = FlowKey::v4(backend, cfg.node_ip, backend_port, 0, proto);
        }
        let port = claim_nat_port(cfg, proto, s);
        if port == 0 {
            return 0;
        }
        s.ctv.nat_port = port;
    } else {
        // A local flow's reverse key: the pod's reply to the client. From
        // the 16-byte fields, whatever the family (an IPv6 flow's
        // `s.backend` holds only its port and flags).
        // Field by field: a struct built from other map values' arrays is
        // a 40-byte temporary on the stack, which has none to spare.
        // SAFETY: distinct fields of one scratch slot, 16 bytes each.
        unsafe {
            core::ptr::copy_nonoverlapping(&raw const s.ctv.backend_ip, &raw mut s.rkey.src, 1);
            core::ptr::copy_nonoverlapping(&raw const s.key.src, &raw mut s.rkey.dst, 1);
        }
        s.rkey.sport = backend_port;
        s.rkey.dport = s.key.sport;
        s.rkey.proto = proto;
        s.rkey.family = s.key.family;
        s.rkey._pad = [0; 2];
        if REV_NAT
            .insert(&s.rkey, &s.rval, u64::from(BPF_ANY))
            .is_err()
        {
            return CREATE_MAP_FAILED;
        }
    }
    if flowtable::insert(s, cfg.flow_sets, &cfg.timeouts) != flowtable::INSERTED {
        let _ = REV_NAT.remove(&s.rkey);
        return CREATE_TABLE_FULL;
    }
    if remote { u32::from(s.ctv.nat_port) } else { 1 }
}

/// Claims a NAT source port for a new remote flow: up to `NAT_PROBES`
/// hash-chosen ports are tried (see `lb_common::hash::nat_probe`). A port is
/// ours once our reverse entry (`s.rval`) was inserted with `BPF_NOEXIST`
/// (so two CPUs can never claim the same one), or when the entry holding it
/// is this flow's own (a flow that starts again after its conntrack entry
/// expired keeps its port), or is over (`flow::reverse_over`: expired or
/// closed past its timeout, and past the backend's `TIME_WAIT` when closed
/// by both FINs), or, when every probe found its port held, idle or closed
/// for a shorter while (`flow::reclaimable`): then it is taken over by
/// compare-and-swap (`nat_port_reclaimed`), so closed flows give their
/// ports back without waiting for the LRU. `s.rkey` is the reply key with the port left 0 (the
/// backend's reply to us); leaves the claimed port in it. 0 when none was
/// free.
#[expect(
    clippy::needless_borrows_for_generic_args,
    reason = "keys and values are passed by reference into the scratch map: by value they would be copied to the stack"
)]
#[inline(always)]
fn claim_nat_port(cfg: &DatapathConfig, proto: u8, s: &mut FlowScratch) -> u16 {
    let min = u32::from(cfg.nat_port_min);
    let max = u32::from(cfg.nat_port_max);
    if max < min || min == 0 {
        return 0;
    }
    let size = max - min + 1;
    let h = s.hash;
    // A free port, or one of a flow that is over, wins at once. The port of
    // an idle UDP flow or a closed TCP one (`flow::reclaimable`) is only
    // remembered: it is taken after the loop, when every probe found its
    // port held.
    // (Kept in the scratch map: two more live values spill past the stack.)
    s.spare_port = 0;
    let mut i = 0;
    while i < NAT_PROBES {
        #[expect(
            clippy::cast_possible_truncation,
            reason = "nat_probe < size = max - min + 1, so min + probe <= max, a u16"
        )]
        let port = (min + nat_probe(h, i, size)) as u16;
        s.rkey.dport = port;
        if REV_NAT
            .insert(&s.rkey, &s.rval, u64::from(BPF_NOEXIST))
            .is_ok()
        {
            return port;
        }
        if let Some(r) = REV_NAT.get_ptr_mut(&s.rkey) {
            // SAFETY: value pointer the map just returned; fields read by
            // value.
            // (Compared with our own value in the scratch map, not with the
            // key: the compiler would keep the key's words live across the
            // loop, and their spills overflow the stack.)
            let (ours, state, last) =
                unsafe { ((*r).same_flow(&s.rval), (*r).state, (*r).last_seen_ns) };
            let now = s.rval.last_seen_ns;
            if last == TOMBSTONE_NS {
                // The sweeper is deleting it (see `sweep`): held until gone.
            } else if ours {
                if take_over(r, last, &s.rval) {
                    return port;
                }
            } else if flow::reverse_over(proto, state, last, now, &cfg.timeouts) {
                if take_over(r, last, &s.rval) {
                    stats::count(Counter::NatPortReclaimed);
                    return port;
                }
            } else if s.spare_port == 0 && flow::reclaimable(proto, state, last, now, &cfg.timeouts)
            {
                s.spare_port = port;
                s.spare_last = last;
            }
        }
        i += 1;
    }
    if s.spare_port != 0 {
        s.rkey.dport = s.spare_port;
        if let Some(r) = REV_NAT.get_ptr_mut(&s.rkey)
            && take_over(r, s.spare_last, &s.rval)
        {
            stats::count(Counter::NatPortReclaimed);
            return s.spare_port;
        }
    }
    0
}

/// The 16-byte form of a backend's pod address (flow entries store it).
#[inline(always)]
pub fn backend_addr(b: &BackendValue) -> [u8; 16] {
    addr_v4(b.ip)
}
