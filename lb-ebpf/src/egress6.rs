//! `lb_egress6` (TC, never attached): `lb_egress` tail-calls it (slot
//! `tc_slot::EGRESS6` of `tc_programs`) for IPv6 packets, so that a local
//! pod's reply `[pod]:port → client` leaves as `[VIP]:port → client`, as
//! `egress` does for IPv4 (its docs say why the helpers do the checksum
//! work: a local skb may carry a partial checksum).
//!
//! Only a TCP or UDP header right after the IPv6 header is looked at (a
//! pod's reply carries no extension headers). ICMPv6 errors about packets
//! we forwarded to a local pod (DNAT), right after the IPv6 header too,
//! are translated by `icmp6_error` (a Packet Too Big from this node's
//! kernel when the pod's link has the smaller MTU, the pod's own errors).
//! Never drops: anything it does not translate goes on as it is
//! (`TC_ACT_UNSPEC`).

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR, TC_ACT_UNSPEC},
    programs::TcContext,
};
use lb_common::{Counter, proto};

use crate::{
    egress::{self, Found, found},
    family::V6,
    icmp6_error, local,
    parse::{Cursor, ETH_LEN, EthHdr, IPV6_LEN, Ipv6Hdr, TcpHdr},
    stats,
};

const IP_SRC_OFF: usize = ETH_LEN + 8;
const L4_OFF: usize = ETH_LEN + IPV6_LEN;
const TCP_CHECK_OFF: usize = L4_OFF + 16;
const UDP_CHECK_OFF: usize = L4_OFF + 6;
/// Headers we read: Ethernet, IPv6, a full TCP header.
const NEED: usize = L4_OFF + core::mem::size_of::<TcpHdr>();

/// The whole program (`lb_egress` counted the packet).
pub fn process(ctx: &TcContext) -> i32 {
    egress::linearize(ctx, NEED);
    match found(reply(ctx)) {
        Found::Reply(rw) => apply(ctx, &rw),
        // Inlined (see `icmp6_error`): as a call, its frame would add to
        // this program's.
        Found::IcmpError => return icmp6_error::egress(ctx.skb.skb),
        Found::Other => {}
    }
    TC_ACT_UNSPEC
}

struct Rewrite {
    old_src: [u8; 16],
    new_src: [u8; 16],
    old_sport: [u8; 2],
    new_sport: [u8; 2],
    udp: bool,
}

/// Reads the headers (direct packet access), finds the local flow (see
/// `local`) and records the packet in the flow's state. Everything needed
/// later is copied out: the helpers that write the packet invalidate
/// packet pointers.
#[inline(always)]
fn reply(ctx: &TcContext) -> Result<Rewrite, Found<Rewrite>> {
    // SAFETY: the only cursor over this packet; dropped before any helper
    // writes to it.
    let mut cur = unsafe { Cursor::new(ctx.data(), ctx.data_end()) };
    let _ = cur.take::<EthHdr>().ok_or(Found::Other)?;
    let ip = cur.take::<Ipv6Hdr>().ok_or(Found::Other)?;
    if ip.version() != 6 {
        return Err(Found::Other);
    }
    let (sport, dport, tcp_flags, udp) =
        egress::transport(&mut cur, ip.next, proto::ICMPV6, icmp6_error::is_error)?;
    let (new_src, new_sport) = local::record_reply::<V6>(
        (ip.src, u16::from_be_bytes(sport)),
        (ip.dst, u16::from_be_bytes(dport)),
        ip.next,
        tcp_flags,
    )
    .ok_or(Found::Other)?;
    Ok(Rewrite {
        old_src: ip.src,
        new_src,
        old_sport: sport,
        new_sport: new_sport.to_be_bytes(),
        udp,
    })
}

#[inline(always)]
fn apply(ctx: &TcContext, rw: &Rewrite) {
    let (check_off, mangled) = if rw.udp {
        (UDP_CHECK_OFF, u64::from(BPF_F_MARK_MANGLED_0))
    } else {
        (TCP_CHECK_OFF, 0)
    };
    // The address word by word, as the helper takes at most four bytes (the
    // raw network-order bytes, zero-extended), part of the pseudo-header.
    let mut i = 0;
    while i < 16 {
        let w = |a: &[u8; 16]| u64::from(u32::from_ne_bytes([a[i], a[i + 1], a[i + 2], a[i + 3]]));
        if ctx
            .l4_csum_replace(
                check_off,
                w(&rw.old_src),
                w(&rw.new_src),
                u64::from(BPF_F_PSEUDO_HDR) | mangled | 4,
            )
            .is_err()
        {
            return;
        }
        i += 4;
    }
    let old_port = u64::from(u16::from_ne_bytes(rw.old_sport));
    let new_port = u64::from(u16::from_ne_bytes(rw.new_sport));
    if ctx
        .l4_csum_replace(check_off, old_port, new_port, mangled | 2)
        .is_err()
    {
        return;
    }
    // Checksums first, then the fields: if a write failed halfway, the
    // packet would leave with checksums for fields it does not carry, which
    // its receiver drops, rather than be delivered wrong.
    if ctx.store(IP_SRC_OFF, &rw.new_src, 0).is_err()
        || ctx.store(L4_OFF, &rw.new_sport, 0).is_err()
    {
        return;
    }
    stats::count(Counter::EgressReply);
}
