//! `lb_egress` (TC, egress of the uplink): a local pod's reply
//! `pod:port → client` leaves as `VIP:port → client`.
//!
//! The rewrite goes through `bpf_l3_csum_replace`/`bpf_l4_csum_replace` with
//! `BPF_F_PSEUDO_HDR`, not through our own arithmetic: a locally generated
//! skb may be `CHECKSUM_PARTIAL` (its L4 field then holds only the
//! pseudo-header sum, finished by the NIC), and the helpers update the field
//! correctly for either state. `BPF_F_MARK_MANGLED_0` keeps a zero UDP
//! checksum ("none") zero. ICMP errors about packets we sent on to a local
//! pod (DNAT) are translated by `icmp_error`. Of a fragmented reply only the first
//! fragment carries the ports: it is translated as any reply
//! (`egress_fragmented_reply`); the later ones leave with the pod's address,
//! so the client never completes the datagram (the fragment policy is in
//! the README). IP options and anything else are left alone: this program
//! never drops, it answers "next" (`TC_ACT_UNSPEC`).

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR, TC_ACT_UNSPEC},
    programs::TcContext,
};
use lb_common::{Counter, maps::tc_slot, proto};

use crate::{
    family::V4,
    icmp_error, local,
    maps::TC_PROGRAMS,
    parse::{
        Cursor, ETH_LEN, ETH_P_IPV4, ETH_P_IPV6, EthHdr, IPV4_LEN, IcmpHdr, Ipv4Hdr, TcpHdr, UdpHdr,
    },
    stats,
};

const IP_CHECK_OFF: usize = ETH_LEN + 10;
const IP_SRC_OFF: usize = ETH_LEN + 12;
const L4_OFF: usize = ETH_LEN + IPV4_LEN;
const TCP_CHECK_OFF: usize = L4_OFF + 16;
const UDP_CHECK_OFF: usize = L4_OFF + 6;
/// Headers we read: Ethernet, IPv4 without options, a full TCP header.
const NEED: usize = L4_OFF + core::mem::size_of::<TcpHdr>();

#[inline(always)]
pub fn process(ctx: &TcContext) -> i32 {
    stats::count(Counter::EgressPackets);
    // SAFETY: the skb's protocol field, read by value.
    if unsafe { (*ctx.skb.skb).protocol } == u32::from(ETH_P_IPV6.to_be()) {
        // IPv6 in a program of its own (see `egress6`). Returns only when
        // the slot is empty.
        // SAFETY: a tail call from the program itself (this function is
        // inlined into it), into a TC program of this object.
        unsafe { TC_PROGRAMS.tail_call(ctx, tc_slot::EGRESS6) };
        return TC_ACT_UNSPEC;
    }
    linearize(ctx, NEED);
    match found(reply(ctx)) {
        Found::Reply(rw) => apply(ctx, &rw),
        // Out of line (see the modules): only these packets pay for them.
        Found::IcmpError => return icmp_error::egress(ctx.skb.skb),
        Found::Other => {}
    }
    TC_ACT_UNSPEC
}

/// Makes the first `need` bytes linear (all of the skb if it is shorter),
/// so the headers can be read directly.
#[inline(always)]
pub(crate) fn linearize(ctx: &TcContext, need: usize) {
    if ctx.data_end() - ctx.data() < need {
        let want = core::cmp::min(ctx.len() as usize, need);
        let _ = ctx.pull_data(u32::try_from(want).unwrap_or(u32::MAX));
    }
}

/// A reply's source and destination port (as on the wire), TCP's flags,
/// and whether it is UDP.
pub(crate) type Ports = ([u8; 2], [u8; 2], u8, bool);

/// The [`Ports`] of the TCP or UDP header of `next` (the IP header's
/// protocol) at `cur`; what else was found when there is none: an error of
/// the family's ICMP (`icmp`, whose error types `is_error` tells), or
/// anything else.
#[inline(always)]
pub(crate) fn transport<R>(
    cur: &mut Cursor<'_>,
    next: u8,
    icmp: u8,
    is_error: impl FnOnce(u8) -> bool,
) -> Result<Ports, Found<R>> {
    match next {
        proto::TCP => cur
            .take::<TcpHdr>()
            .map(|t| (t.sport, t.dport, t.flags, false))
            .ok_or(Found::Other),
        proto::UDP => cur
            .take::<UdpHdr>()
            .map(|u| (u.sport, u.dport, 0, true))
            .ok_or(Found::Other),
        p if p == icmp => match cur.take::<IcmpHdr>() {
            Some(h) if is_error(h.ty) => Err(Found::IcmpError),
            _ => Err(Found::Other),
        },
        _ => Err(Found::Other),
    }
}

/// What a packet on the uplink's egress is to us.
pub(crate) enum Found<R> {
    /// A local backend's reply, and its rewrite.
    Reply(R),
    /// An ICMP error (no IPv4 options; for IPv6 right after the header).
    IcmpError,
    Other,
}

/// The reply `r` found, or what was found instead. (Matched as one enum
/// rather than as the `Result`, `lb_egress6` verified in 184,000 steps
/// rather than 232,000.)
#[inline(always)]
pub(crate) fn found<R>(r: Result<R, Found<R>>) -> Found<R> {
    match r {
        Ok(rw) => Found::Reply(rw),
        Err(f) => f,
    }
}

struct Rewrite {
    /// The first fragment of a fragmented reply.
    fragment: bool,
    old_src: [u8; 4],
    new_src: [u8; 4],
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
    let eth = cur.take::<EthHdr>().ok_or(Found::Other)?;
    if eth.proto() != ETH_P_IPV4 {
        return Err(Found::Other);
    }
    let ip = cur.take::<Ipv4Hdr>().ok_or(Found::Other)?;
    if ip.vihl != 0x45 {
        return Err(Found::Other);
    }
    // A first fragment carries the ports and is translated as any reply
    // (its transport checksum covers the whole datagram, and changes by the
    // same amount); later ones cannot be told apart (module docs).
    let fragment = ip.is_fragment();
    if fragment && ip.is_later_fragment() {
        return Err(Found::Other);
    }
    let (sport, dport, tcp_flags, udp) =
        transport(&mut cur, ip.proto, proto::ICMP, icmp_error::is_error)?;
    let (new_src, new_sport) = local::record_reply::<V4>(
        (ip.src, u16::from_be_bytes(sport)),
        (ip.dst, u16::from_be_bytes(dport)),
        ip.proto,
        tcp_flags,
    )
    .ok_or(Found::Other)?;
    Ok(Rewrite {
        fragment,
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
    // The helpers take the old and new values as the raw (network order)
    // bytes, zero-extended.
    let old_ip = u64::from(u32::from_ne_bytes(rw.old_src));
    let new_ip = u64::from(u32::from_ne_bytes(rw.new_src));
    let old_port = u64::from(u16::from_ne_bytes(rw.old_sport));
    let new_port = u64::from(u16::from_ne_bytes(rw.new_sport));
    // Checksums first, then the fields. The offsets lie in the headers we
    // just read, which pull_data made linear, so none of these fail; if one
    // did, we stop before a field changes without its checksums.
    if ctx
        .l4_csum_replace(
            check_off,
            old_ip,
            new_ip,
            u64::from(BPF_F_PSEUDO_HDR) | mangled | 4,
        )
        .is_err()
    {
        return;
    }
    if ctx
        .l4_csum_replace(check_off, old_port, new_port, mangled | 2)
        .is_err()
    {
        return;
    }
    if ctx
        .l3_csum_replace(IP_CHECK_OFF, old_ip, new_ip, 4)
        .is_err()
    {
        return;
    }
    if ctx.store(IP_SRC_OFF, &rw.new_src, 0).is_err()
        || ctx.store(L4_OFF, &rw.new_sport, 0).is_err()
    {
        return;
    }
    stats::count(Counter::EgressReply);
    if rw.fragment {
        stats::count(Counter::EgressFragmentedReply);
    }
}
