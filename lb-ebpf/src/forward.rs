//! Sending a rewritten frame on: `bpf_fib_lookup` gives the egress device
//! and both MAC addresses for the next hop; the frame leaves with `XDP_TX`
//! when that is the device it came in on, else with `bpf_redirect`.

use aya_ebpf::{
    EbpfContext as _,
    bindings::{BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS, bpf_fib_lookup},
    helpers::generated::{bpf_fib_lookup as fib_lookup_helper, bpf_redirect},
    programs::XdpContext,
};
use lb_common::{Counter, FlowScratch, HostKey};

use crate::{
    maps::LEARNED_MACS,
    parse::{Cursor, EthHdr},
    verdict::Outcome,
};

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

/// The interface the packet came in on.
#[inline(always)]
pub fn ingress_ifindex(ctx: &XdpContext) -> u32 {
    #[expect(
        clippy::cast_possible_truncation,
        reason = "the kernel's ifindex is a u32 that aya hands out as usize"
    )]
    let ifindex = ctx.ingress_ifindex() as u32;
    ifindex
}

#[derive(Clone, Copy)]
pub struct NextHop {
    pub ifindex: u32,
    pub smac: [u8; 6],
    pub dmac: [u8; 6],
}

pub enum Route {
    Hop(NextHop),
    /// Routable, but the kernel has no neighbour entry for the next hop yet.
    NoNeighbour,
    /// Anything else: unreachable, blackhole, forwarding disabled, MTU.
    Fail,
}

/// Where a packet from `src` to `dst` goes, as the kernel's FIB sees it when
/// it arrives on the program's interface.
#[inline(always)]
pub fn route(ctx: &XdpContext, src: [u8; 4], dst: [u8; 4], proto: u8, tot_len: u16) -> Route {
    // SAFETY: bpf_fib_lookup is plain old data; all-zero is its "unset"
    // state, which the helper expects for fields we do not fill.
    let mut p: bpf_fib_lookup = unsafe { core::mem::zeroed() };
    route_with(ctx, &mut p, src, dst, proto, tot_len)
}

/// [`route`] to another node; with `on_link`, only when the node itself is
/// the next hop (direct server return): a frame for a VIP handed to a
/// router would come back to whoever announces the VIP.
#[inline(always)]
pub fn route_to_node(
    ctx: &XdpContext,
    src: [u8; 4],
    node: [u8; 4],
    proto: u8,
    tot_len: u16,
    on_link: bool,
) -> Route {
    // SAFETY: as in `route`.
    let mut p: bpf_fib_lookup = unsafe { core::mem::zeroed() };
    let r = route_with(ctx, &mut p, src, node, proto, tot_len);
    // The kernel leaves the next hop's address (the gateway, or the
    // destination itself) in the destination field.
    // SAFETY: plain integers of the struct the helper just wrote.
    let via = unsafe { p.__bindgen_anon_4.ipv4_dst };
    match r {
        Route::Hop(_) if on_link && via != u32::from_ne_bytes(node) => Route::Fail,
        other => other,
    }
}

/// Zeroes `p` word by word (volatile: LLVM would make a loop of plain
/// stores a `memset` call, one more frame on the chain).
#[inline(always)]
pub fn zero(p: &mut bpf_fib_lookup) {
    let words = (&raw mut *p).cast::<u32>();
    for i in 0..core::mem::size_of::<bpf_fib_lookup>() / 4 {
        // SAFETY: within `*p`, which is 4-byte aligned.
        unsafe { core::ptr::write_volatile(words.add(i), 0) };
    }
}

/// The lookup's parameters laid over this CPU's `flow_scratch` slot, zeroed,
/// for a caller whose stack has no 64 bytes to spare and whose flow, if
/// any, is already created (the slot's first 64 bytes are gone; what lies
/// past them stays).
#[inline(always)]
pub fn scratch_params() -> Option<&'static mut bpf_fib_lookup> {
    let s = crate::conntrack::scratch()?;
    // SAFETY: this CPU's scratch slot, used only within this run;
    // `bpf_fib_lookup` is plain old data no larger or more aligned than the
    // slot's type (asserted with `LearnScratch`).
    let p = unsafe { &mut *s.cast::<bpf_fib_lookup>() };
    zero(p);
    Some(p)
}

/// [`route`] for IPv6: where an IPv6 packet of `len` bytes from `src` to
/// `dst` goes. `p` all zero on entry, as [`route_with`]'s; the kernel
/// leaves the egress interface and the next hop's address in it (on
/// success, and when the neighbour is unresolved).
#[inline(always)]
pub fn route6(
    ctx: &XdpContext,
    p: &mut bpf_fib_lookup,
    src: &[u8; 16],
    dst: &[u8; 16],
    len: u16,
) -> Route {
    p.family = AF_INET6;
    p.__bindgen_anon_1.tot_len = len;
    let ifindex = ingress_ifindex(ctx);
    p.ifindex = ifindex;
    // The kernel's words are the addresses' bytes in order.
    p.__bindgen_anon_3.ipv6_src = words(src);
    p.__bindgen_anon_4.ipv6_dst = words(dst);
    lookup(ctx, p)
}

/// [`route_to_node`] for IPv6, always on-link: the next hop towards `node`
/// (an IPv6 packet of `len` bytes from `src`) when it is `node` itself.
/// `p` all zero on entry, as [`route_with`]'s.
#[inline(always)]
pub fn route6_to_node(
    ctx: &XdpContext,
    p: &mut bpf_fib_lookup,
    src: &[u8; 16],
    node: &[u8; 16],
    len: u16,
) -> Route {
    let r = route6(ctx, p, src, node, len);
    // SAFETY: plain integers of the struct the helper just wrote: the next
    // hop's address (the gateway, or the destination itself).
    let via = unsafe { p.__bindgen_anon_4.ipv6_dst };
    match r {
        Route::Hop(_) if via != words(node) => Route::Fail,
        other => other,
    }
}

/// The next hop's IPv6 address (the gateway, or the destination itself)
/// that a lookup of [`route6`] left in `p`.
#[inline(always)]
pub fn via6(p: &bpf_fib_lookup) -> [u8; 16] {
    // SAFETY: plain integers of the struct the helper wrote.
    let w = unsafe { p.__bindgen_anon_4.ipv6_dst };
    let mut a = [0u8; 16];
    let mut i = 0;
    while i < 4 {
        a[i * 4..i * 4 + 4].copy_from_slice(&w[i].to_ne_bytes());
        i += 1;
    }
    a
}

#[inline(always)]
fn words(a: &[u8; 16]) -> [u32; 4] {
    [
        u32::from_ne_bytes([a[0], a[1], a[2], a[3]]),
        u32::from_ne_bytes([a[4], a[5], a[6], a[7]]),
        u32::from_ne_bytes([a[8], a[9], a[10], a[11]]),
        u32::from_ne_bytes([a[12], a[13], a[14], a[15]]),
    ]
}

/// [`route`] with the lookup's parameters in `p`, all zero on entry
/// (memory the caller owns, e.g. a scratch map's, when its stack has no 64
/// bytes to spare).
#[inline(always)]
pub fn route_with(
    ctx: &XdpContext,
    p: &mut bpf_fib_lookup,
    src: [u8; 4],
    dst: [u8; 4],
    proto: u8,
    tot_len: u16,
) -> Route {
    p.family = AF_INET;
    p.l4_protocol = proto;
    p.__bindgen_anon_1.tot_len = tot_len;
    let ifindex = ingress_ifindex(ctx);
    p.ifindex = ifindex;
    p.__bindgen_anon_3.ipv4_src = u32::from_ne_bytes(src);
    p.__bindgen_anon_4.ipv4_dst = u32::from_ne_bytes(dst);
    lookup(ctx, p)
}

/// The FIB lookup of the parameters in `p` (either family).
#[inline(always)]
fn lookup(ctx: &XdpContext, p: &mut bpf_fib_lookup) -> Route {
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_possible_wrap,
        reason = "struct bpf_fib_lookup is 64 bytes"
    )]
    let len = core::mem::size_of::<bpf_fib_lookup>() as i32;
    // SAFETY: ctx is this program's context and p a stack struct of the
    // size we pass.
    let rc = unsafe { fib_lookup_helper(ctx.as_ptr(), &raw mut *p, len, 0) };
    if rc == i64::from(BPF_FIB_LKUP_RET_SUCCESS) {
        Route::Hop(NextHop {
            ifindex: p.ifindex,
            smac: p.smac,
            dmac: p.dmac,
        })
    } else if rc == i64::from(BPF_FIB_LKUP_RET_NO_NEIGH) {
        Route::NoNeighbour
    } else {
        Route::Fail
    }
}

/// Puts the next hop's addresses in the frame and picks the action.
#[inline(always)]
pub fn send(ctx: &XdpContext, eth: &mut EthHdr, hop: &NextHop, counter: Counter) -> Outcome {
    eth.dst = hop.dmac;
    eth.src = hop.smac;
    let ingress = ingress_ifindex(ctx);
    if hop.ifindex == ingress {
        Outcome::Tx(counter)
    } else {
        // SAFETY: plain helper call; it only records the target device.
        let action = unsafe { bpf_redirect(hop.ifindex, 0) };
        #[expect(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            reason = "bpf_redirect returns an XDP action: XDP_REDIRECT, or XDP_ABORTED on bad flags"
        )]
        let action = action as u32;
        Outcome::Redirect(action, counter)
    }
}

/// [`to_learned_mac`]'s memory, laid over this CPU's `flow_scratch` slot.
#[repr(C)]
struct LearnScratch {
    fib: bpf_fib_lookup,
    key: HostKey,
}

const _: () = assert!(core::mem::size_of::<LearnScratch>() <= core::mem::size_of::<FlowScratch>());
const _: () =
    assert!(core::mem::align_of::<LearnScratch>() <= core::mem::align_of::<FlowScratch>());

/// For a packet from `src` to `dst` that [`route`] found routable but
/// unresolved: addresses the frame to the MAC address the next hop's last
/// ARP request for one of our VIPs came from (see `arp`), from `smac`
/// (ours, the low six bytes, little-endian). Returns whether it did. Only
/// when the next hop is out of the interface the packet came in on, the
/// one the request came in on too (the frame goes back out of it,
/// `XDP_TX`).
///
/// Out of line, with a FIB lookup of its own and the frame's Ethernet
/// header found again from `ctx`: carrying the next hop out of [`route`],
/// or a MAC address back, grew the packet path's frame by 40 bytes (512
/// for the whole call chain); this runs only for unresolved destinations.
#[expect(
    clippy::needless_borrows_for_generic_args,
    reason = "the key is passed by reference into the scratch map: by value it would be copied to the stack"
)]
#[inline(never)]
pub fn to_learned_mac(ctx: &XdpContext, src: u32, dst: u32, smac: u64) -> bool {
    let Some(s) = crate::conntrack::scratch() else {
        return false;
    };
    // SAFETY: this CPU's scratch slot, used only within this run, which
    // creates no flow (a reply); `LearnScratch` is plain old data no larger
    // or more aligned than the slot's type (asserted above).
    let s = unsafe { &mut *s.cast::<LearnScratch>() };
    zero(&mut s.fib);
    if !matches!(
        route_with(ctx, &mut s.fib, src.to_ne_bytes(), dst.to_ne_bytes(), 0, 0),
        Route::NoNeighbour
    ) {
        return false;
    }
    let ingress = ingress_ifindex(ctx);
    if s.fib.ifindex != ingress {
        return false;
    }
    // The kernel fills in the egress interface and the next hop's address
    // (the gateway, or the destination itself) before it looks for the
    // neighbour.
    // SAFETY: plain integers of the struct the helper just wrote.
    let next_hop = unsafe { s.fib.__bindgen_anon_4.ipv4_dst };
    s.key = HostKey::v4(next_hop.to_ne_bytes());
    let Some(v) = LEARNED_MACS.get_ptr(&s.key) else {
        return false;
    };
    // SAFETY: a value pointer the map just returned; read by value.
    let (dmac, learned_on) = unsafe { ((*v).mac, (*v).ifindex) };
    if learned_on != ingress {
        return false;
    }
    // SAFETY: the only cursor over this packet in this function; the
    // caller holds no reference into the frame across the call.
    let mut cur = unsafe { Cursor::new(ctx.data(), ctx.data_end()) };
    let Some(eth) = cur.take::<EthHdr>() else {
        return false;
    };
    let m = smac.to_le_bytes();
    eth.dst = dmac;
    eth.src = [m[0], m[1], m[2], m[3], m[4], m[5]];
    true
}
