//! `bench_xdpgen`: bench-e2e's frame generator (never attached).
//!
//! Run with `BPF_PROG_TEST_RUN` in live-frames mode, so every frame it
//! returns `XDP_REDIRECT` for leaves as an `xdp_frame` through the target
//! port's `ndo_xdp_xmit` and reaches the veth peer the way a NIC hands a
//! frame to its driver: no socket buffer exists until the receiver's XDP
//! program passes it.
//!
//! Live frames come from a page pool whose pages are recycled with whatever
//! the last user (this program, the receiver, the stack) left in them, so the
//! program never trusts the frame's bytes: each run copies the whole frame
//! from its target's template first, then, for new flows, gives it the source
//! port and address of frame number `k` and updates both checksums
//! incrementally (the template's are right, so the result is right too).

use aya_ebpf::{
    EbpfContext as _, bindings::xdp_action::XDP_ABORTED, helpers::generated::bpf_xdp_store_bytes,
    programs::XdpContext,
};
use lb_common::bench as b;
use lb_ebpf::{
    csum::Delta,
    parse::{Cursor, EthHdr, Ipv4Hdr, UdpHdr},
};

use crate::maps::{XDPGEN_FRAMES, XDPGEN_PORTS, XDPGEN_STATE};

#[expect(clippy::cast_possible_truncation, reason = "60 bytes")]
const FRAME_LEN: u32 = b::XDPGEN_FRAME_LEN as u32;

#[inline(always)]
fn state(slot: u32) -> u64 {
    XDPGEN_STATE.get(slot).copied().unwrap_or(0)
}

/// Source address and port of flow `k` (the same sequence as bench-e2e's
/// socket generator).
#[inline(always)]
fn flow_source(k: u64) -> ([u8; 4], [u8; 2]) {
    let base = u32::from_be_bytes(b::XDPGEN_SRC_BASE);
    let ip = base + ((k / b::XDPGEN_PORTS_PER_IP) % b::XDPGEN_SRC_COUNT) as u32;
    #[expect(
        clippy::cast_possible_truncation,
        reason = "XDPGEN_PORT_BASE + XDPGEN_PORTS_PER_IP <= 65536"
    )]
    let port = (b::XDPGEN_PORT_BASE + k % b::XDPGEN_PORTS_PER_IP) as u16;
    (ip.to_be_bytes(), port.to_be_bytes())
}

/// Rewrites the UDP/IPv4 frame's source to flow `k`'s. Returns false when
/// the frame is not one (a broken template).
#[inline(always)]
fn set_source(ctx: &XdpContext, k: u64) -> bool {
    // SAFETY: the only cursor over the packet while it lives.
    let mut cur = unsafe { Cursor::new(ctx.data(), ctx.data_end()) };
    if cur.take::<EthHdr>().is_none() {
        return false;
    }
    let Some(ip) = cur.take::<Ipv4Hdr>() else {
        return false;
    };
    let Some(udp) = cur.take::<UdpHdr>() else {
        return false;
    };
    let (src, sport) = flow_source(k);
    let mut d = Delta::default();
    d.addr(ip.src, src);
    ip.set_check(d.apply(ip.check()));
    ip.src = src;
    // The UDP checksum covers the pseudo-header's source address too.
    d.bytes2(udp.sport, sport);
    udp.sport = sport;
    let old = u16::from_be_bytes(udp.check);
    if old != 0 {
        // 0 means "no checksum" for UDP over IPv4: a computed 0 is sent as
        // all ones.
        let c = match d.apply(old) {
            0 => 0xffff,
            c => c,
        };
        udp.check = c.to_be_bytes();
    }
    true
}

pub fn generate(ctx: &XdpContext) -> u32 {
    let targets = state(b::XDPGEN_TARGETS);
    if targets == 0 || targets > u64::from(b::XDPGEN_MAX_TARGETS) {
        return XDP_ABORTED;
    }
    let Some(next) = XDPGEN_STATE.get_ptr_mut(b::XDPGEN_NEXT) else {
        return XDP_ABORTED;
    };
    // SAFETY: an array slot; one generator thread runs at a time, so a plain
    // read-modify-write is enough.
    let k = unsafe {
        let k = *next;
        *next = k.wrapping_add(1);
        k
    };
    #[expect(
        clippy::cast_possible_truncation,
        reason = "targets <= XDPGEN_MAX_TARGETS (checked above)"
    )]
    let t = (k % targets) as u32;
    let Some(tpl) = XDPGEN_FRAMES.get_ptr(t) else {
        return XDP_ABORTED;
    };
    if ctx.data_end() - ctx.data() < b::XDPGEN_FRAME_LEN {
        return XDP_ABORTED;
    }
    // SAFETY: tpl is a XDPGEN_SLOT-byte map value, the frame holds at least
    // XDPGEN_FRAME_LEN bytes (checked above), XDPGEN_FRAME_LEN < XDPGEN_SLOT.
    let rc =
        unsafe { bpf_xdp_store_bytes(ctx.as_ptr().cast(), 0, tpl.cast_mut().cast(), FRAME_LEN) };
    if rc != 0 {
        return XDP_ABORTED;
    }
    if state(b::XDPGEN_FLAGS) & b::XDPGEN_NEW_FLOWS != 0 && !set_source(ctx, k) {
        return XDP_ABORTED;
    }
    // SAFETY: tpl is valid (above); the port key sits right after the frame.
    let port = unsafe {
        tpl.cast::<u8>()
            .add(b::XDPGEN_FRAME_LEN)
            .cast::<u32>()
            .read_unaligned()
    };
    match XDPGEN_PORTS.redirect(port, 0) {
        Ok(a) | Err(a) => a,
    }
}
