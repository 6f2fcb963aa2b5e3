//! IPv6 on the uplink. `lb_ingress` reads the IPv6 header and sends the
//! frame on by ONE tail call (`dispatch`, inlined into it), so that each
//! program has a stack frame and a verifier budget of its own:
//! - next header ICMPv6: to `lb_ingress6`, this module's program (slot
//!   `xdp_slot::INGRESS6` of `xdp_programs`);
//! - anything else takes ONE `vips6` lookup on the destination — a miss
//!   passes at once (`pass_not_vip`); a hit in a frame for another host's
//!   MAC passes untouched (`pass_other_host`); a service address, its
//!   header checked (version, length, source: below), goes to
//!   `lb_service6`, which takes the flow (see `service6`); the node's own
//!   addresses pass (`pass_node_traffic`; not IPv6 or cut short:
//!   `pass_malformed`, never translated) but for what may belong to a
//!   full-NAT flow: TCP and UDP on a NAT port and fragments go to
//!   `lb_nat6`.
//!
//! An empty slot passes ICMPv6 untouched (`pass_ipv6_unserved`) and drops
//! service traffic (`ipv6_unserved`).
//!
//! `lb_ingress6`: a Neighbor Solicitation goes to `ndp` (its target, not
//! its destination, says whether it is about a VIP). Anything else takes
//! the `vips6` lookup: as above, but for the node's own addresses an
//! ICMPv6 error may be about a full-NAT flow's packet
//! (`icmp6_error::onehop_icmp6_error_to_client`); to a service address,
//! echo requests are answered and errors translated (below).
//!
//! The written policy for packets to a VIP, which `dispatch`,
//! `lb_ingress6` and `lb_service6` apply (all dropped and counted, never
//! passed: the kernel has nothing to do with a VIP):
//! - version != 6: `bad_ip_header`; payload length beyond the frame:
//!   `truncated`;
//! - a martian source (`::`, `::1`, multicast `ff00::/8`, IPv4-mapped
//!   `::ffff:0:0/96`, the node's own address), which the kernel drops as
//!   well: `martian_source`;
//! - extension headers: up to four are stepped over — a hop-by-hop header
//!   (first only), destination options, and routing headers with no
//!   segments left (the packet has reached its last destination). A
//!   fragment header: `fragment` (only the first fragment carries the
//!   ports, as with IPv4). More than four, a routing header with segments
//!   left, or a hop-by-hop header not first: `ipv6_ext_header`. AH, ESP and
//!   any other next header: `unsupported_protocol`;
//! - ICMPv6 echo request right after the IPv6 header: answered (see
//!   `onehop_icmp6_echo`; wrong checksum: `bad_icmp_checksum`); an ICMPv6
//!   error (types 1 to 4) right after it: translated for the flow it is
//!   about, or dropped (`icmp_error_no_flow`, `icmp_error_malformed`; see
//!   `icmp6_error`); either behind extension headers: `ipv6_ext_header`;
//!   other ICMPv6: `unsupported_protocol`; an ICMPv6 header cut short:
//!   `truncated`;
//! - hop limit <= 1 on a packet we would forward: `ttl_exceeded`;
//! - a transport header beyond the payload, or TCP data offset < 5:
//!   `truncated`;
//! - no live flow, and no service on its `[VIP]:port`: `no_service` (a
//!   live flow's packet is not looked up: see `service`).
//!
//! ICMPv6 errors are translated out of line, in
//! `icmp6_error::onehop_icmp6_error`.

use aya_ebpf::{
    bindings::{xdp_action::XDP_PASS, xdp_md},
    programs::XdpContext,
};
use lb_common::{
    Counter, DatapathConfig, DropReason, Ipv6Key, VipValue, flow::same_addr, maps::xdp_slot, proto,
    vip_flags,
};

use crate::{
    conntrack,
    csum::{self, Delta},
    icmp6_error,
    maps::{CONFIG, VIPS6, XDP_PROGRAMS},
    ndp::{self, pseudo_sum},
    parse::{Cursor, ETH_LEN, EthHdr, IPV6_LEN, IcmpHdr, Ipv6Ext, Ipv6Hdr, L4Head},
    verdict::Outcome,
};

const HOP_BY_HOP: u8 = 0;
const ROUTING: u8 = 43;
pub const FRAGMENT: u8 = 44;
const DEST_OPTIONS: u8 = 60;
/// Extension headers stepped over before the transport header.
const MAX_EXTENSIONS: usize = 4;
const ECHO_REQUEST: u8 = 128;
const ECHO_REPLY: u8 = 129;
const REPLY_HOP_LIMIT: u8 = 64;

/// The whole IPv6 program (`lb_ingress` counted the frame already).
#[inline(always)]
pub fn process(ctx: &XdpContext) -> u32 {
    let Some(cfg) = CONFIG.get(0) else {
        return XDP_PASS;
    };
    if cfg.ready == 0 {
        return XDP_PASS;
    }
    let frame_len = ctx.data_end() - ctx.data();
    // SAFETY: the only cursor over this packet during this run.
    let mut cur = unsafe { Cursor::new(ctx.data(), ctx.data_end()) };
    classify(ctx, &mut cur, cfg, frame_len).finish()
}

#[inline(always)]
fn classify(
    ctx: &XdpContext,
    cur: &mut Cursor<'_>,
    cfg: &DatapathConfig,
    frame_len: usize,
) -> Outcome {
    let (Some(eth), Some(ip)) = (cur.take::<EthHdr>(), cur.take::<Ipv6Hdr>()) else {
        return Outcome::Pass(Counter::PassMalformed);
    };
    // `lb_ingress` sends here only frames whose next header is ICMPv6; a
    // solicitation is told by the ICMPv6 header.
    let icmp = cur.take::<IcmpHdr>().map(|h| h.ty);
    if icmp == Some(ndp::SOLICITATION) {
        return Outcome::Counted(ndp::onehop_ndp_solicitation(ctx.ctx));
    }
    let Some(vip) = vip(ip) else {
        return Outcome::Pass(Counter::PassNotVip);
    };
    // See `ingress::classify`.
    if eth.dst != cfg.mac {
        return Outcome::Pass(Counter::PassOtherHost);
    }
    // SAFETY: value pointer the map just returned; read by value.
    let flags = unsafe { (*vip).flags };
    if flags & vip_flags::SERVICE != 0 {
        let payload = match service_payload(ip, cfg, frame_len) {
            Ok(p) => payload_u32(p),
            Err(r) => return Outcome::Drop(r),
        };
        // Out of line, each in a global function of its own (see them).
        match icmp {
            None => Outcome::Drop(DropReason::Truncated),
            Some(ty) if icmp6_error::is_error(ty) => {
                Outcome::Counted(icmp6_error::onehop_icmp6_error(ctx.ctx, payload))
            }
            Some(_) => Outcome::Counted(onehop_icmp6_echo(ctx.ctx, payload)),
        }
    } else if flags & vip_flags::NODE != 0 {
        // An ICMPv6 error may be about a full-NAT flow's packet; the rest
        // is the node's.
        let Some(payload) = node_payload(ip, frame_len) else {
            return Outcome::Pass(Counter::PassMalformed);
        };
        match icmp {
            Some(ty) if icmp6_error::is_error(ty) => Outcome::Counted(
                icmp6_error::onehop_icmp6_error_to_client(ctx.ctx, payload_u32(payload)),
            ),
            _ => Outcome::Pass(Counter::PassNodeTraffic),
        }
    } else {
        Outcome::Pass(Counter::PassNotVip)
    }
}

/// An IPv6 frame in `lb_ingress` (`eth` its Ethernet header, `cur` past
/// it): ICMPv6 right after the IPv6 header goes to `lb_ingress6` (this
/// module's program); anything else takes ONE `vips6` lookup on the
/// destination (module docs). A packet to a service address goes to
/// `lb_service6`, one to a NAT port of the node's address to `lb_nat6`, the
/// VIP's flags in this CPU's scratch slot: one tail call for a flow's
/// packet. The tail calls return only when their slot is empty.
#[inline(always)]
pub fn dispatch(
    ctx: &XdpContext,
    cur: &mut Cursor<'_>,
    eth: &EthHdr,
    cfg: &DatapathConfig,
    frame_len: usize,
) -> Outcome {
    let Some(ip) = cur.take::<Ipv6Hdr>() else {
        return Outcome::Pass(Counter::PassMalformed);
    };
    if ip.next == proto::ICMPV6 {
        // SAFETY: a tail call from the program itself (this function is
        // inlined into it), into an XDP program of this object.
        unsafe { XDP_PROGRAMS.tail_call(ctx, xdp_slot::INGRESS6) };
        return Outcome::Pass(Counter::PassIpv6Unserved);
    }
    let Some(vip) = vip(ip) else {
        return Outcome::Pass(Counter::PassNotVip);
    };
    // See `ingress::classify`.
    if eth.dst != cfg.mac {
        return Outcome::Pass(Counter::PassOtherHost);
    }
    // SAFETY: value pointer the map just returned; read by value.
    let flags = unsafe { (*vip).flags };
    let slot = if flags & vip_flags::SERVICE != 0 {
        if let Err(r) = service_payload(ip, cfg, frame_len) {
            return Outcome::Drop(r);
        }
        xdp_slot::SERVICE6
    } else if flags & vip_flags::NODE != 0 {
        // A TCP or UDP packet to a NAT port, or a fragment, may be a remote
        // backend's reply to a full-NAT flow, which `lb_nat6` translates;
        // the rest is the node's.
        if node_payload(ip, frame_len).is_none() {
            return Outcome::Pass(Counter::PassMalformed);
        }
        let nat = match ip.next {
            proto::TCP | proto::UDP => cur.take::<L4Head>().is_some_and(|h| {
                let port = u16::from_be_bytes(h.dport);
                port >= cfg.nat_port_min && port <= cfg.nat_port_max
            }),
            FRAGMENT => true,
            _ => false,
        };
        if !nat {
            return Outcome::Pass(Counter::PassNodeTraffic);
        }
        xdp_slot::NAT6
    } else {
        return Outcome::Pass(Counter::PassNotVip);
    };
    // Where the packet stays when `slot` cannot take it.
    let unserved = if slot == xdp_slot::NAT6 {
        Outcome::Pass(Counter::PassNodeTraffic)
    } else {
        Outcome::Drop(DropReason::Ipv6Unserved)
    };
    let Some(s) = conntrack::scratch() else {
        return unserved;
    };
    // SAFETY: this CPU's scratch slot, ours for this run, tail calls
    // included: `lb_service6` and `lb_nat6` read the flags back instead of
    // looking the VIP up again.
    unsafe { (*s).vip_flags = flags };
    // SAFETY: a tail call from the program itself (this function is
    // inlined into it), into an XDP program of this object.
    unsafe { XDP_PROGRAMS.tail_call(ctx, slot) };
    unserved
}

/// The `vips6` entry of a packet's destination, looked up with the
/// address where the packet holds it: the key takes no stack (of which
/// `lb_service6` has none to spare) and no copy.
#[inline(always)]
pub fn vip(ip: &Ipv6Hdr) -> Option<*const VipValue> {
    const _: () =
        assert!(core::mem::size_of::<Ipv6Key>() == 16 && core::mem::align_of::<Ipv6Key>() == 1);
    // SAFETY: `Ipv6Key` is `repr(C)` around one `[u8; 16]`: the field's
    // layout and alignment (asserted above); the map only reads it, during
    // the call.
    let key = unsafe { &*(&raw const ip.dst).cast::<Ipv6Key>() };
    VIPS6.get_ptr(key)
}

/// The payload length of a packet to one of the node's addresses, or
/// `None` for one that is no IPv6 or is cut short: the kernel's to drop,
/// nothing of it translated (its transport header may even lie past the
/// frame).
#[inline(always)]
pub fn node_payload(ip: &Ipv6Hdr, frame_len: usize) -> Option<usize> {
    let payload = usize::from(ip.payload_len());
    (ip.version() == 6 && payload <= frame_len - ETH_LEN - IPV6_LEN).then_some(payload)
}

/// The payload length of a packet to a service address, after the
/// policy's checks of its IPv6 header (version, length, source).
#[inline(always)]
pub fn service_payload(
    ip: &Ipv6Hdr,
    cfg: &DatapathConfig,
    frame_len: usize,
) -> Result<usize, DropReason> {
    if ip.version() != 6 {
        return Err(DropReason::BadIpHeader);
    }
    let payload = usize::from(ip.payload_len());
    if payload > frame_len - ETH_LEN - IPV6_LEN {
        return Err(DropReason::Truncated);
    }
    if is_martian(&ip.src, cfg) {
        return Err(DropReason::MartianSource);
    }
    Ok(payload)
}

/// A source no host may send from (RFC 4291 2.5.2, 2.5.3, 2.7, 2.5.5.2):
/// unspecified, loopback, multicast, IPv4-mapped; or the node's own
/// address (`node_ip6`), as IPv4's `is_martian`. The kernel drops these
/// (`ip6_rcv_core`); a packet we translate never meets its checks, and full
/// NAT would carry one to a pod under the node's own address.
#[inline(always)]
pub fn is_martian(src: &[u8; 16], cfg: &DatapathConfig) -> bool {
    // The packet's bytes are read one at a time (nothing promises their
    // alignment): the common source, whose first byte is neither 0 nor
    // 0xff, is told by one of them and the node's address.
    match src[0] {
        0xff => true,
        0 => {
            let head = u128::from_be_bytes(*src);
            head <= 1 || head >> 32 == 0xffff || same_addr(src, &cfg.node_ip6)
        }
        _ => same_addr(src, &cfg.node_ip6),
    }
}

/// Steps over the extension headers of the written policy (module docs)
/// from `next`; returns the transport protocol and the headers' bytes.
#[inline(always)]
pub fn skip_extensions(cur: &mut Cursor<'_>, mut next: u8) -> Result<(u8, usize), DropReason> {
    let mut len = 0usize;
    let mut i = 0;
    while i < MAX_EXTENSIONS {
        match next {
            HOP_BY_HOP if i == 0 => {}
            DEST_OPTIONS | ROUTING => {}
            FRAGMENT => return Err(DropReason::Fragment),
            HOP_BY_HOP => return Err(DropReason::Ipv6ExtHeader),
            _ => return Ok((next, len)),
        }
        let h = cur.take::<Ipv6Ext>().ok_or(DropReason::Truncated)?;
        if next == ROUTING && h.data[1] != 0 {
            // Segments left: the packet is on its way to another address.
            return Err(DropReason::Ipv6ExtHeader);
        }
        let rest = usize::from(h.len) * 8;
        cur.skip(rest).ok_or(DropReason::Truncated)?;
        len += 8 + rest;
        next = h.next;
        i += 1;
    }
    match next {
        HOP_BY_HOP | DEST_OPTIONS | ROUTING => Err(DropReason::Ipv6ExtHeader),
        FRAGMENT => Err(DropReason::Fragment),
        _ => Ok((next, len)),
    }
}

/// A length within one IPv6 payload (at most 65,535) as a BPF call's
/// argument.
#[inline(always)]
fn payload_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// An ICMPv6 message to a VIP right after the IPv6 header, `len` bytes
/// long: an echo request is answered in place, its checksum verified first
/// over the whole message (the reply's is the request's, updated);
/// anything else is dropped. Returns the XDP action, the outcome counted.
///
/// A *global* BPF function (exported by lb-ebpf's build script), as
/// `icmp::onehop_icmp_echo`: its checksum loop is verified once, not once
/// for every way `lb_ingress6` reaches it (which took the program past the
/// verifier's million instructions).
#[unsafe(no_mangle)]
#[inline(never)]
pub(crate) extern "C" fn onehop_icmp6_echo(ctx: *mut xdp_md, len: u32) -> u32 {
    // Volatile loads keep the context itself the argument (see
    // `partial::onehop_finish_checksum`).
    // SAFETY: `ctx` is the program's context, valid for the whole run.
    let (data, end) = unsafe {
        (
            core::ptr::read_volatile(&raw const (*ctx).data),
            core::ptr::read_volatile(&raw const (*ctx).data_end),
        )
    };
    // SAFETY: the only cursor over the packet while this runs: the caller
    // holds none it uses after the call.
    let mut cur = unsafe { Cursor::new(data as usize, end as usize) };
    let out = match (cur.take::<EthHdr>(), cur.take::<Ipv6Hdr>()) {
        (Some(eth), Some(ip)) => echo(&mut cur, eth, ip, len as usize),
        _ => Outcome::Drop(DropReason::Truncated),
    };
    out.finish()
}

#[inline(always)]
fn echo(cur: &mut Cursor<'_>, eth: &mut EthHdr, ip: &mut Ipv6Hdr, l4_len: usize) -> Outcome {
    let Some(rest_len) = l4_len.checked_sub(core::mem::size_of::<IcmpHdr>()) else {
        return Outcome::Drop(DropReason::Truncated);
    };
    let Some(h) = cur.take::<IcmpHdr>() else {
        return Outcome::Drop(DropReason::Truncated);
    };
    if h.ty != ECHO_REQUEST || h.code != 0 {
        return Outcome::Drop(DropReason::UnsupportedProtocol);
    }
    let w = |b: [u8; 2]| u32::from(u16::from_be_bytes(b));
    let header =
        w([h.ty, h.code]) + w(h.check) + w([h.rest[0], h.rest[1]]) + w([h.rest[2], h.rest[3]]);
    let Some(rest) = cur.sum_ahead(rest_len) else {
        return Outcome::Drop(DropReason::BadIcmpChecksum);
    };
    if !csum::sums_to_ones(pseudo_sum(&ip.src, &ip.dst, proto::ICMPV6, l4_len) + header + rest) {
        return Outcome::Drop(DropReason::BadIcmpChecksum);
    }
    // Swapping the addresses leaves the pseudo-header's sum as it was.
    let mut d = Delta::default();
    d.word(
        u16::from_be_bytes([ECHO_REQUEST, 0]),
        u16::from_be_bytes([ECHO_REPLY, 0]),
    );
    h.ty = ECHO_REPLY;
    h.check = d.apply(u16::from_be_bytes(h.check)).to_be_bytes();
    core::mem::swap(&mut ip.src, &mut ip.dst);
    ip.hop_limit = REPLY_HOP_LIMIT;
    core::mem::swap(&mut eth.src, &mut eth.dst);
    Outcome::Tx(Counter::IcmpEchoReply)
}
