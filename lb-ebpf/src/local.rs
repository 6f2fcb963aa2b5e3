//! Replies of local flows without a reverse entry per flow.
//!
//! A local flow is plain DNAT: its reply `pod:port → client:cport` lacks
//! only the front (`vip:port`) the client used. Every front a flow reached
//! an endpoint through is recorded once in the endpoint's `local_fronts`
//! entry, by the first flow through it; `lb_egress` tries those fronts, and a
//! front is the reply's only when the flow `client:cport → vip:port` is in
//! `conntrack` with this endpoint as its backend. So the conntrack entry is
//! a local flow's only per-flow write, and nothing in `local_fronts` can
//! make a packet that belongs to no flow look like a reply.
//!
//! An endpoint behind more than [`FRONTS_PER_ENDPOINT`] fronts (or whose
//! entry cannot be written) gives its further flows a reverse entry each, as
//! remote flows have ([`flow_flags::LOCAL_REVERSE`]).

use core::intrinsics::{AtomicOrdering, atomic_cxchg};

use aya_ebpf::{bindings::BPF_NOEXIST, helpers::bpf_ktime_get_ns};
use lb_common::{
    ConntrackValue, Front, LocalEndpointKey, LocalFronts, RevNatValue,
    flow::{FRONTS_PER_ENDPOINT, family, same_addr},
    flow_flags, front_state,
};

use crate::{
    conntrack::{self, scratch},
    family::Family,
    flowtable,
    maps::{LOCAL_FRONTS, REV_NAT},
};

/// Puts `endpoint` and the front `vip:port` in this CPU's scratch slot for
/// [`onehop_remember_front`]: the front as the first of the entry's fronts,
/// where the rest of an entry is filled only if the endpoint has none yet
/// (most flows go through a front the entry holds: writing a whole entry
/// for each of them cost a fifth of a new local flow).
///
/// # Safety
/// `s` is this CPU's scratch slot (from [`scratch`]), ours for this run.
#[inline(always)]
pub unsafe fn stage<F: Family>(
    s: *mut lb_common::FlowScratch,
    endpoint: LocalEndpointKey,
    vip: F::Addr,
    port: u16,
) {
    // SAFETY: the caller's promise; field by field (a struct assignment
    // between map values is a `memmove` call in BPF).
    unsafe {
        (*s).endpoint = endpoint;
        let f = &raw mut (*s).fronts.fronts[0];
        (*f).state = front_state::READY;
        (*f).vip = F::wide(&vip);
        (*f).port = port;
        (*f)._pad = [0; 6];
    }
}

/// Makes the staged front (see [`stage`]) the whole entry: the other
/// fronts free, no overflow.
#[inline(always)]
fn complete_entry(s: &mut lb_common::FlowScratch) {
    s.fronts.overflow = 0;
    let mut i = 1;
    while i < FRONTS_PER_ENDPOINT {
        let f = &mut s.fronts.fronts[i];
        f.state = front_state::FREE;
        f.vip = [0; 16];
        f.port = 0;
        f._pad = [0; 6];
        i += 1;
    }
}

/// Records the front staged in this CPU's scratch slot (see [`stage`]) in
/// its endpoint's entry, unless it is there already: 1 once it is there,
/// 0 when the entry has no room for it, which the entry then says
/// (`overflow`), or could not be written at all (the LRU found no element:
/// the flow's next refresh tries again).
///
/// A *global* BPF function (exported by the linker, see the build script):
/// verified once, and called both by a new flow and, once a second, by an
/// established one (its endpoint's entry may have been evicted meanwhile).
/// No arguments: kernels before 6.2 refuse a global function's pointer
/// argument as a map key (see `conntrack::onehop_flow_create`).
#[expect(
    clippy::needless_borrows_for_generic_args,
    reason = "the key and value live in the scratch map: by value they would be copied to the stack"
)]
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn onehop_remember_front() -> u32 {
    let Some(s) = scratch() else {
        return 0;
    };
    // SAFETY: this CPU's slot of the per-CPU scratch array, filled by the
    // caller (`stage`), used only within this run.
    let s = unsafe { &mut *s };
    if let Some(v) = LOCAL_FRONTS.get_ptr_mut(&s.endpoint) {
        return u32::from(add(v, &s.fronts.fronts[0]));
    }
    // The endpoint's first flow: its front is the entry's first.
    complete_entry(s);
    if LOCAL_FRONTS
        .insert(&s.endpoint, &s.fronts, u64::from(BPF_NOEXIST))
        .is_ok()
    {
        return 1;
    }
    // Another CPU inserted it in between.
    match LOCAL_FRONTS.get_ptr_mut(&s.endpoint) {
        Some(v) => u32::from(add(v, &s.fronts.fronts[0])),
        None => 0,
    }
}

/// Adds `front` to the entry `v` unless it holds it: a free front is
/// claimed by compare-and-swap, written, then published. Two CPUs adding
/// the same front at once may both add it, which costs a front, nothing
/// else.
#[inline(always)]
fn add(v: *mut LocalFronts, front: &Front) -> bool {
    let mut i = 0;
    while i < FRONTS_PER_ENDPOINT {
        // SAFETY: `v` is a value pointer the map returned in this run (RCU
        // keeps it valid); fields are read by value.
        let f = unsafe { &raw mut (*v).fronts[i] };
        // SAFETY: as above.
        let (state, port) = unsafe { ((*f).state, (*f).port) };
        // SAFETY: as above.
        if state == front_state::READY
            && port == front.port
            && same_addr(unsafe { &(*f).vip }, &front.vip)
        {
            return true;
        }
        i += 1;
    }
    let mut i = 0;
    while i < FRONTS_PER_ENDPOINT {
        // SAFETY: as above.
        let f = unsafe { &raw mut (*v).fronts[i] };
        if cas(f, front_state::FREE, front_state::WRITING) {
            // SAFETY: the front is ours until published.
            unsafe {
                core::ptr::copy_nonoverlapping(&raw const front.vip, &raw mut (*f).vip, 1);
                (*f).port = front.port;
            }
            // The swap orders the writes before it for every reader.
            return cas(f, front_state::WRITING, front_state::READY);
        }
        i += 1;
    }
    // SAFETY: as above; any CPU may set it, it is only ever set.
    unsafe { (*v).overflow = 1 };
    false
}

#[inline(always)]
fn cas(f: *mut Front, old: u64, new: u64) -> bool {
    // SAFETY: `f` points into a map value (an 8-byte aligned u64 field)
    // valid for this run; see `conntrack::take_over` on BPF's 64-bit
    // compare-and-swap.
    let (_, won) = unsafe {
        atomic_cxchg::<u64, { AtomicOrdering::SeqCst }, { AtomicOrdering::SeqCst }>(
            &raw mut (*f).state,
            old,
            new,
        )
    };
    won
}

/// What a local endpoint's packet to a client is.
pub enum Reply<F: Family> {
    /// The reply of this live local flow (its conntrack entry), which came
    /// through `vip:port`.
    Flow {
        ct: *mut ConntrackValue,
        vip: F::Addr,
        port: u16,
    },
    /// The reply of a local flow with a reverse entry of its own
    /// ([`flow_flags::LOCAL_REVERSE`]), which came through `vip:port`.
    Reversed {
        r: *mut RevNatValue,
        vip: F::Addr,
        port: u16,
    },
    /// No local flow's reply.
    None,
}

/// [`reply`], and the reply recorded in its flow's state (a TCP reply's
/// `tcp_flags` move the flow's state as a backend's packet): the front
/// (`vip`, `port`) the reply leaves from, or `None` when it is no local
/// flow's.
#[inline(always)]
pub fn record_reply<F: Family>(
    (pod, pod_port): (F::Addr, u16),
    (client, client_port): (F::Addr, u16),
    proto: u8,
    tcp_flags: u8,
) -> Option<(F::Addr, u16)> {
    match reply::<F>(pod, pod_port, client, client_port, proto) {
        Reply::Flow { ct, vip, port } => {
            // SAFETY: plain helper call.
            let now = unsafe { bpf_ktime_get_ns() };
            conntrack::local_backend_packet(ct, proto, tcp_flags, now);
            Some((vip, port))
        }
        Reply::Reversed { r, vip, port } => {
            // SAFETY: plain helper call.
            let now = unsafe { bpf_ktime_get_ns() };
            conntrack::backend_packet::<F>(r, proto, tcp_flags, now);
            Some((vip, port))
        }
        Reply::None => None,
    }
}

/// Finds the local flow whose reply is `pod:pod_port → client:client_port`
/// (`proto`): a recorded front of the endpoint whose conntrack entry names
/// this endpoint as the flow's local backend — of several, the one seen
/// last — or, when the endpoint's entry says some of its flows have reverse
/// entries, the reply's reverse entry.
///
/// Several fronts match when the client used one port for flows through
/// two of them: after DNAT the pod sees them as one connection, so only
/// the newest can be live there, and the older one's entry (closed, or
/// idle) stays in the table until its slot is reused.
#[inline(always)]
pub fn reply<F: Family>(
    pod: F::Addr,
    pod_port: u16,
    client: F::Addr,
    client_port: u16,
    proto: u8,
) -> Reply<F> {
    let Some(v) = LOCAL_FRONTS.get_ptr(F::endpoint_key(&pod, pod_port, proto)) else {
        return Reply::None;
    };
    let pod16 = F::wide(&pod);
    // Plain initialised values, not an `Option`: the compiler reads an
    // `Option`'s payload before its tag, and kernels before 6.x refuse a
    // read of stack never written ("invalid read from stack", 5.15).
    // IPv6 keeps the newest front as its pointer into the entry, not as a
    // copy of its address: LLVM kept a copy's 16 bytes in 16 stack slots,
    // which `lb_egress6` (with `icmp6_error`'s egress path inlined) has
    // none of. IPv4 keeps its 4-byte copy: as a pointer, the verifier
    // walked twice the states in `lb_egress`.
    let by_pointer = F::FAMILY == family::V6;
    let (mut newest, mut newest_vip, mut newest_front, mut newest_port, mut newest_seen) = (
        core::ptr::null_mut::<ConntrackValue>(),
        F::narrow(&[0u8; 16]),
        core::ptr::null::<Front>(),
        0u16,
        0u64,
    );
    let mut i = 0;
    while i < FRONTS_PER_ENDPOINT {
        // SAFETY: value pointer the map returned in this run; read by value.
        let f = unsafe { &raw const (*v).fronts[i] };
        // SAFETY: as above.
        let (state, vip, port) = unsafe { ((*f).state, F::narrow(&(*f).vip), (*f).port) };
        if state == front_state::READY
            && let Some(ct) =
                flowtable::lookup::<F>(&F::flow_key(&client, &vip, client_port, port, proto))
            && ours::<F>(ct, &pod16, pod_port)
        {
            // SAFETY: value pointer the flow table returned; read by value.
            let last = unsafe { (*ct).last_seen_ns };
            if newest.is_null() || last > newest_seen {
                if by_pointer {
                    newest_front = f;
                } else {
                    newest_vip = vip;
                }
                (newest, newest_port, newest_seen) = (ct, port, last);
            }
        }
        i += 1;
    }
    if !newest.is_null() && (!by_pointer || !newest_front.is_null()) {
        let vip = if by_pointer {
            // SAFETY: a front of the entry, valid for this run; a front
            // once READY is never written again (fronts are only ever
            // added), so it still holds what the loop matched.
            F::narrow(unsafe { &(*newest_front).vip })
        } else {
            newest_vip
        };
        return Reply::Flow {
            ct: newest,
            vip,
            port: newest_port,
        };
    }
    // SAFETY: as above.
    if unsafe { (*v).overflow } == 0 {
        return Reply::None;
    }
    let Some(r) = REV_NAT.get_ptr_mut(F::flow_key(&pod, &client, pod_port, client_port, proto))
    else {
        return Reply::None;
    };
    // SAFETY: value pointer the map just returned; read by value.
    let (flags, vip, port) = unsafe { ((*r).flags, F::narrow(&(*r).new_src), (*r).new_sport) };
    if flags & flow_flags::REMOTE != 0 {
        return Reply::None;
    }
    Reply::Reversed { r, vip, port }
}

/// Whether the conntrack entry `ct` is a local flow to `pod:pod_port`.
#[inline(always)]
fn ours<F: Family>(ct: *const ConntrackValue, pod: &[u8; 16], pod_port: u16) -> bool {
    // SAFETY: value pointer the map returned in this run; read by value.
    let (flags, id, ip_ok) = unsafe {
        (
            (*ct).flags,
            (*ct).backend_id,
            same_addr(&(*ct).backend_ip, pod),
        )
    };
    if flags & flow_flags::REMOTE != 0 || !ip_ok {
        return false;
    }
    F::port_of(id) == Some(pod_port)
}
