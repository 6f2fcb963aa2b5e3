//! Sending a rewritten frame on: `bpf_fib_lookup` gives the egress device
//! and both MAC addresses for the next hop; the frame leaves with `XDP_TX`
//! when that is the device it came in on, else with `bpf_redirect`.

use aya_ebpf::{
    EbpfContext as _,
    bindings::{BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS, bpf_fib_lookup},
    helpers::generated::{bpf_fib_lookup as fib_lookup_helper, bpf_redirect},
    programs::XdpContext,
};
use lb_common::Counter;

use crate::{parse::EthHdr, verdict::Outcome};

const AF_INET: u8 = 2;

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
    #[expect(
        clippy::cast_possible_truncation,
        reason = "the kernel's ifindex is a u32 that aya hands out as usize"
    )]
    let ifindex = ctx.ingress_ifindex() as u32;
    p.ifindex = ifindex;
    p.__bindgen_anon_3.ipv4_src = u32::from_ne_bytes(src);
    p.__bindgen_anon_4.ipv4_dst = u32::from_ne_bytes(dst);
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
    #[expect(
        clippy::cast_possible_truncation,
        reason = "the kernel's ifindex is a u32 that aya hands out as usize"
    )]
    let ingress = ctx.ingress_ifindex() as u32;
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
