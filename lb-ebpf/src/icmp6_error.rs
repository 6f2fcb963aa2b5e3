//! ICMPv6 errors about translated IPv6 flows: destination unreachable,
//! Packet Too Big (with its MTU), time exceeded and parameter problem, so
//! that path-MTU discovery (which IPv6 relies on: routers never fragment)
//! and error reporting work through an IPv6 VIP as they would without us.
//! The IPv4 design (`icmp_error`) is the model; what differs is IPv6's.
//!
//! An error quotes as much of the packet it is about as fits in the
//! minimum MTU (RFC 4443 2.4 (c)): its IPv6 header and, with no extension
//! header between, the transport header's ports. We translate the quote
//! back into what the error's receiver sent, and re-address the outer
//! header as the flow's own packets are (as RFC 5508 section 4 asks of a
//! NAT for ICMP):
//!
//! | arrives | quotes | becomes (outer; quote) | counter |
//! | --- | --- | --- | --- |
//! | uplink, to the VIP, local flow | `[VIP]:port → client` | `src → pod`; `[pod]:tport → client` | `icmp_error_to_backend` |
//! | uplink, to the VIP, direct-return flow | `[VIP]:port → client` | unchanged, sent to the pod's node (which translates it as a local flow's) | `icmp_error_to_backend` |
//! | uplink, to the VIP, full-NAT flow (`nat6`) | `[VIP]:port → client` | `node → pod`, sent to the pod's node; `[pod]:tport → [node]:nat_port` | `icmp_error_to_backend` |
//! | uplink, to the node's IPv6 address, full-NAT flow | `[node]:nat_port → [pod]:tport` | `VIP → client`, sent to the client; `client → [VIP]:port` | `icmp_error_to_client` |
//! | `lb_egress6`, local flow | `client → [pod]:tport` | `VIP → client`; `client → [VIP]:port` | `egress_icmp_error` |
//!
//! An error sent on by XDP (to another node, or to the client) has its
//! hop limit decremented, as the flow's packets; one whose hop limit is
//! spent is dropped (`ttl_exceeded`). An error to the client whose next hop
//! the kernel has not resolved is translated and handed to the kernel, as
//! a reply would be (`fib_pass_to_kernel`).
//!
//! The outer source of an error to a client is the VIP: the pod network's
//! addresses mean nothing on the client's side, and a Packet Too Big from
//! any other source would make the client file the MTU under that source's
//! path, never the VIP's. An error toward a local backend keeps its source
//! (plain DNAT, as the flow's packets). Type, code and the rest of the
//! ICMPv6 header (a Packet Too Big's MTU, a parameter problem's pointer)
//! are kept: neither translation changes a packet's size or layout. A
//! parameter problem's pointer counts bytes from the quote's start, where
//! nothing moves.
//!
//! Checksums, all updated incrementally (RFC 1624, see `csum`): the ICMPv6
//! checksum covers the IPv6 pseudo-header (the outer addresses) and the
//! whole message, so it takes the outer address change and every quoted
//! word we change; the quoted transport checksum takes the quoted address
//! and port change — always for UDP (a zero UDP checksum, invalid over
//! IPv6, stays zero: we do not vouch for what we did not check), for TCP
//! only when at least 18 bytes of its header are quoted (a shorter quote
//! gets its address and ports translated only, as in `icmp_error`). There is
//! no IPv6 header checksum. As with IPv4 we do not verify the ICMPv6
//! checksum first: an incremental update keeps a wrong checksum exactly as
//! wrong, and the receiver drops it. An error never refreshes, closes or
//! otherwise changes the flow it is about.
//!
//! Extension headers: the outer error must carry none (`lb_ingress6` drops
//! ICMPv6 behind extension headers, `ipv6_ext_header`; `lb_egress6` leaves
//! such a packet alone). A quote whose IPv6 header is followed by anything
//! but TCP or UDP — any extension header, a fragment header included, or
//! another protocol — matches no flow: our flows' packets never carry
//! extension headers on the way out (a pod's reply), and those we
//! translate on the way in are matched by the ports right after the fixed
//! header.
//!
//! Policy for errors that match nothing, to a VIP: dropped, as the kernel
//! has nothing to do with a VIP — `icmp_error_no_flow` (a quote of another
//! protocol, with extension headers, not from the VIP the error is sent
//! to, of no live flow, or of a flow whose backend slot now holds another
//! pod) or `icmp_error_malformed` (too short for an IPv6 header and eight
//! bytes, or no IPv6 header in the quote). To the node's address: passed
//! untouched, as it may be about the node's own traffic
//! (`pass_icmp_error_no_flow`; malformed: `pass_malformed`; from a martian
//! source — `::`, `::1`, multicast, IPv4-mapped, the node's own address —
//! whatever it quotes: `pass_node_traffic`, the kernel drops it). On egress:
//! left alone. Nothing is changed before an error is known to match a live
//! flow.
//!
//! The uplink path is a *global* BPF function ([`onehop_icmp6_error`],
//! exported by lb-ebpf's build script), as `ingress6::onehop_icmp6_echo`:
//! verified once rather than for every way `lb_ingress6` reaches it, and
//! with a frame of its own; its lookup key, FIB parameters and the
//! addresses it carries across helper calls lie in this CPU's
//! `flow_scratch` slot (see [`Scratch`]), an error creating no flow. The
//! egress path is inlined into `lb_egress6` ([`egress`]): its frame (344
//! bytes, most of it `local::reply`'s) as a call's would add to
//! `lb_egress6`'s own (280), past the 512 bytes; inlined, the two paths
//! share one frame (384). Its two passes over the packet (copy out, look
//! up, parse again and rewrite) keep packet pointers from being spilled
//! across the lookups.

use aya_ebpf::{
    bindings::{__sk_buff, TC_ACT_UNSPEC, bpf_fib_lookup, xdp_md},
    programs::{TcContext, XdpContext},
};
use lb_common::{
    Counter, DropReason, FlowKey, FlowScratch,
    flow::{flow_flags, same_addr},
    proto,
};

use crate::{
    conntrack,
    csum::Delta,
    family::{Family as _, V6},
    flowtable,
    forward::{self, Route},
    ingress6, local,
    maps::{BACKENDS6, CONFIG, REV_NAT},
    parse::{Cursor, ETH_LEN, EthHdr, IPV6_LEN, IcmpHdr, Ipv6Hdr},
    quote::{self, ICMP_LEN, Parsed, Quote, QuotedIp as _},
    stats,
    verdict::Outcome,
};

/// ICMPv6 error types (RFC 4443 3.1 to 3.4).
pub const DEST_UNREACH: u8 = 1;
pub const PACKET_TOO_BIG: u8 = 2;
pub const TIME_EXCEEDED: u8 = 3;
pub const PARAM_PROBLEM: u8 = 4;

/// What `lb_egress6` makes linear for an error: every header we may rewrite.
const EGRESS_NEED: usize = ETH_LEN + IPV6_LEN + ICMP_LEN + Ipv6Hdr::TCP_CHECK_QUOTE;

/// ICMPv6 types whose message quotes the packet it is about and that we
/// translate (every error type RFC 4443 defines).
#[inline(always)]
pub fn is_error(ty: u8) -> bool {
    matches!(
        ty,
        DEST_UNREACH | PACKET_TOO_BIG | TIME_EXCEEDED | PARAM_PROBLEM
    )
}

/// Adds the change of a 16-byte address to `d`.
#[inline(always)]
fn addr16(d: &mut Delta, old: &[u8; 16], new: &[u8; 16]) {
    let mut i = 0;
    while i < 16 {
        d.bytes2([old[i], old[i + 1]], [new[i], new[i + 1]]);
        i += 2;
    }
}

/// One quoted endpoint and the outer address that change together.
struct Endpoint<'a> {
    /// The quoted address and port (the quote's source or destination).
    addr: &'a mut [u8; 16],
    port: &'a mut [u8; 2],
    /// The outer header's address that becomes the same `new` address.
    outer: &'a mut [u8; 16],
}

/// Rewrites one endpoint of the quote and the outer address `e.outer` to
/// `new`:`port`, with the checksums that cover them: the quoted transport
/// checksum (if quoted and not a zero UDP checksum) and the ICMPv6
/// checksum (pseudo-header and message).
#[inline(always)]
fn translate(
    icmp: &mut IcmpHdr,
    (check, udp): (Option<&mut [u8; 2]>, bool),
    e: &mut Endpoint<'_>,
    new: &[u8; 16],
    port: u16,
) {
    let port = port.to_be_bytes();
    let mut transport = Delta::default();
    addr16(&mut transport, e.addr, new);
    transport.bytes2(*e.port, port);
    let mut icmp_d = transport;
    addr16(&mut icmp_d, e.outer, new);
    quote::follow_transport(check, udp, transport, &mut icmp_d);
    *e.addr = *new;
    *e.port = port;
    *e.outer = *new;
    icmp.check = icmp_d.apply(u16::from_be_bytes(icmp.check)).to_be_bytes();
}

/// Scratch memory of [`onehop_icmp6_error`], laid over this CPU's
/// `flow_scratch` slot (which the flow path uses for its key and a new
/// flow's entries; an error takes another path and creates no flow). The
/// lookup key and the FIB lookup's parameters alone would take 104 bytes
/// of a stack `lb_ingress6` leaves little of; the addresses read before a
/// helper call and needed after it are kept here too (LLVM keeps each byte
/// of an address read from the packet apart until its use, and across a
/// call each would take a stack slot of its own).
#[repr(C)]
struct Scratch {
    fib: bpf_fib_lookup,
    key: FlowKey,
    /// The outer source as it arrived (the direct-return lookup's source).
    outer_src: [u8; 16],
    /// The flow's backend: its pod and target port, its node.
    pod: [u8; 16],
    node: [u8; 16],
    pod_port: u16,
    /// A full-NAT flow's NAT port.
    nat_port: u16,
}

const _: () = assert!(core::mem::size_of::<Scratch>() <= core::mem::size_of::<FlowScratch>());
const _: () = assert!(core::mem::align_of::<Scratch>() <= core::mem::align_of::<FlowScratch>());

#[inline(always)]
fn scratch<'a>() -> Option<&'a mut Scratch> {
    // SAFETY: this CPU's slot of the per-CPU scratch array, used only
    // within this run (BPF programs are not preempted mid-run on their
    // CPU); `Scratch` is plain old data no larger or more aligned than the
    // slot's type, and every field is written before it is read.
    conntrack::scratch().map(|s| unsafe { &mut *s.cast::<Scratch>() })
}

/// An error message's headers, outer and quoted.
struct Message<'a> {
    eth: &'a mut EthHdr,
    ip: &'a mut Ipv6Hdr,
    icmp: &'a mut IcmpHdr,
    q: Quote<'a, Ipv6Hdr>,
}

/// Parses the frame of `ctx`: Ethernet, IPv6, an ICMPv6 error of `l4_len`
/// bytes right after it (the caller checked the outer header).
///
/// Parsed twice: once to copy out what the lookups need, and again after
/// them to rewrite. Packet pointers kept live across the map and FIB
/// helper calls would be spilled to the stack, a slot each.
#[inline(always)]
fn message<'a>(ctx: *mut xdp_md, l4_len: usize) -> Parsed<Message<'a>> {
    // Volatile loads keep the context itself the argument (see
    // `partial::onehop_finish_checksum`).
    // SAFETY: `ctx` is the program's context, valid for the whole run.
    let (data, end) = unsafe {
        (
            core::ptr::read_volatile(&raw const (*ctx).data) as usize,
            core::ptr::read_volatile(&raw const (*ctx).data_end) as usize,
        )
    };
    // SAFETY: the only cursor over this packet while its references live;
    // the caller's references are not used after the call that got here.
    let mut cur = unsafe { Cursor::new(data, end) };
    let (Some(eth), Some(ip)) = (cur.take::<EthHdr>(), cur.take::<Ipv6Hdr>()) else {
        return Parsed::Malformed;
    };
    quote::parse(&mut cur, l4_len, is_error).map(|(icmp, q)| Message { eth, ip, icmp, q })
}

/// `lb_ingress6`, an ICMPv6 error (types 1 to 4) to a VIP right after the
/// IPv6 header, `len` bytes long (the outer header checked by the caller:
/// payload within the frame, no martian source): from the client's side,
/// about a reply we sent. Sends it on to the flow's backend as the flow's
/// packets go (module docs); drops and counts what matches no flow.
/// Returns the XDP action, the outcome counted.
///
/// A *global* BPF function (exported by lb-ebpf's build script): see the
/// module docs.
#[unsafe(no_mangle)]
#[inline(never)]
pub(crate) extern "C" fn onehop_icmp6_error(ctx: *mut xdp_md, len: u32) -> u32 {
    to_backend(ctx, len as usize).finish()
}

#[inline(always)]
fn to_backend(ctx: *mut xdp_md, l4_len: usize) -> Outcome {
    let Some(s) = scratch() else {
        return Outcome::Drop(DropReason::MapUpdate);
    };
    match message(ctx, l4_len) {
        Parsed::Quote(m) => {
            // The quote is our reply: from this VIP to the client.
            if !same_addr(&m.q.ip.src, &m.ip.dst) {
                return Outcome::Drop(DropReason::IcmpErrorNoFlow);
            }
            // The client's key, client → [VIP]:port, field by field (a
            // `FlowKey` built first would be a 40-byte temporary).
            s.key.src = m.q.ip.dst;
            s.key.dst = m.q.ip.src;
            s.key.sport = u16::from_be_bytes(*m.q.dport);
            s.key.dport = u16::from_be_bytes(*m.q.sport);
            s.key.proto = m.q.ip.next;
            s.key.family = V6::FAMILY;
            s.key._pad = [0; 2];
            s.outer_src = m.ip.src;
        }
        Parsed::Malformed => return Outcome::Drop(DropReason::IcmpErrorMalformed),
        Parsed::NoFlow => return Outcome::Drop(DropReason::IcmpErrorNoFlow),
    }
    let Some(ct) = flowtable::lookup::<V6>(&s.key) else {
        return Outcome::Drop(DropReason::IcmpErrorNoFlow);
    };
    // SAFETY: value pointer the flow table just returned; read by value.
    let (backend_id, flags) = unsafe { ((*ct).backend_id, (*ct).flags) };
    let direct = flags & flow_flags::DIRECT != 0;
    let nat = flags & flow_flags::REMOTE != 0 && !direct;
    // SAFETY: as above.
    s.nat_port = unsafe { (*ct).nat_port };
    let Some(b) = BACKENDS6.get_ptr(backend_id) else {
        return Outcome::Drop(DropReason::IcmpErrorNoFlow);
    };
    // SAFETY: value pointers the maps returned in this run; the fields are
    // copied into the scratch slot (see `Scratch`).
    let same_pod = unsafe {
        s.pod = (*b).ip;
        s.node = (*b).node_ip;
        s.pod_port = (*b).port;
        same_addr(&(*ct).backend_ip, &s.pod)
    };
    if !same_pod {
        return Outcome::Drop(DropReason::IcmpErrorNoFlow);
    }
    if direct {
        return to_direct_node(ctx, s, l4_len);
    }
    if nat {
        return to_nat_node(ctx, s, l4_len);
    }
    // A local flow: DNAT to the pod, the kernel routes the error there (and
    // decrements the hop limit), as the flow's packets.
    let Parsed::Quote(m) = message(ctx, l4_len) else {
        return Outcome::Drop(DropReason::IcmpErrorMalformed);
    };
    translate(
        m.icmp,
        (m.q.check, m.q.udp),
        &mut Endpoint {
            addr: &mut m.q.ip.src,
            port: m.q.sport,
            outer: &mut m.ip.dst,
        },
        &s.pod,
        s.pod_port,
    );
    Outcome::Pass(Counter::IcmpErrorToBackend)
}

/// An error about a full-NAT flow goes as the flow's packets do: from the
/// node's IPv6 address to the pod, quoting `[pod]:tport → [node]:nat_port`
/// (the reply the pod sent), to the next hop towards the pod's node.
#[inline(always)]
fn to_nat_node(ctx: *mut xdp_md, s: &mut Scratch, l4_len: usize) -> Outcome {
    let Some(cfg) = CONFIG.get(0) else {
        return Outcome::Drop(DropReason::MapUpdate);
    };
    if cfg.node_ip6 == [0; 16] {
        return Outcome::Drop(DropReason::NoRoute);
    }
    forward::zero(&mut s.fib);
    let len = u16::try_from(l4_len + IPV6_LEN).unwrap_or(u16::MAX);
    let xdp = XdpContext::new(ctx);
    let hop = match forward::route6(&xdp, &mut s.fib, &cfg.node_ip6, &s.node, len) {
        Route::Hop(h) => h,
        Route::NoNeighbour => return Outcome::Drop(DropReason::NoNeighbour),
        Route::Fail => return Outcome::Drop(DropReason::NoRoute),
    };
    let Parsed::Quote(m) = message(ctx, l4_len) else {
        return Outcome::Drop(DropReason::IcmpErrorMalformed);
    };
    if m.ip.hop_limit <= 1 {
        return Outcome::Drop(DropReason::TtlExceeded);
    }
    let m = readdress(m, (&s.pod, s.pod_port), (&cfg.node_ip6, s.nat_port));
    m.ip.hop_limit -= 1;
    forward::send(&xdp, m.eth, &hop, Counter::IcmpErrorToBackend)
}

/// Full NAT's rewrite of an error, both ends: the quote's source becomes
/// `src` (and the outer destination its address), the quote's destination
/// `dst` (and the outer source its address). Returns what is left to send
/// the error on: its Ethernet and IPv6 headers.
#[inline(always)]
fn readdress<'a>(m: Message<'a>, src: (&[u8; 16], u16), dst: (&[u8; 16], u16)) -> Sendable<'a> {
    let mut check = m.q.check;
    translate(
        m.icmp,
        (check.as_deref_mut(), m.q.udp),
        &mut Endpoint {
            addr: &mut m.q.ip.src,
            port: m.q.sport,
            outer: &mut m.ip.dst,
        },
        src.0,
        src.1,
    );
    translate(
        m.icmp,
        (check, m.q.udp),
        &mut Endpoint {
            addr: &mut m.q.ip.dst,
            port: m.q.dport,
            outer: &mut m.ip.src,
        },
        dst.0,
        dst.1,
    );
    Sendable {
        eth: m.eth,
        ip: m.ip,
    }
}

/// The outer headers of a rewritten error ([`readdress`]).
struct Sendable<'a> {
    eth: &'a mut EthHdr,
    ip: &'a mut Ipv6Hdr,
}

/// `lb_ingress6`, an ICMPv6 error (types 1 to 4) to the node's IPv6 address
/// right after the IPv6 header, `len` bytes long (within the frame, checked
/// by the caller): about a packet of a full-NAT flow we sent towards its
/// pod, it is translated back into what the client sent and sent to the
/// client from the VIP (module docs); anything else is the node's, passed
/// untouched. Returns the XDP action, the outcome counted.
///
/// A *global* BPF function (exported by lb-ebpf's build script), as
/// [`onehop_icmp6_error`].
#[unsafe(no_mangle)]
#[inline(never)]
pub(crate) extern "C" fn onehop_icmp6_error_to_client(ctx: *mut xdp_md, len: u32) -> u32 {
    to_client(ctx, len as usize).finish()
}

#[expect(
    clippy::needless_borrows_for_generic_args,
    reason = "the key is passed by reference into the scratch map: by value it would be copied to the stack"
)]
#[inline(always)]
fn to_client(ctx: *mut xdp_md, l4_len: usize) -> Outcome {
    let (Some(cfg), Some(s)) = (CONFIG.get(0), scratch()) else {
        return Outcome::Pass(Counter::PassIcmpErrorNoFlow);
    };
    match message(ctx, l4_len) {
        // An error names its flow in its quote, whatever its own source:
        // one from a source no host sends from is the kernel's to drop.
        Parsed::Quote(m) if ingress6::is_martian(&m.ip.src, cfg) => {
            return Outcome::Pass(Counter::PassNodeTraffic);
        }
        Parsed::Quote(m) => {
            // The quote is our full-NATed packet: from this node's address
            // and a NAT port to the pod.
            let sport = u16::from_be_bytes(*m.q.sport);
            if !same_addr(&m.q.ip.src, &m.ip.dst)
                || !same_addr(&m.ip.dst, &cfg.node_ip6)
                || sport < cfg.nat_port_min
                || sport > cfg.nat_port_max
            {
                return Outcome::Pass(Counter::PassIcmpErrorNoFlow);
            }
            // The pod's reply key, `[pod]:tport → [node]:nat_port`.
            s.key.src = m.q.ip.dst;
            s.key.dst = m.q.ip.src;
            s.key.sport = u16::from_be_bytes(*m.q.dport);
            s.key.dport = sport;
            s.key.proto = m.q.ip.next;
            s.key.family = V6::FAMILY;
            s.key._pad = [0; 2];
        }
        Parsed::Malformed => return Outcome::Pass(Counter::PassMalformed),
        Parsed::NoFlow => return Outcome::Pass(Counter::PassIcmpErrorNoFlow),
    }
    let Some(r) = REV_NAT.get_ptr(&s.key) else {
        return Outcome::Pass(Counter::PassIcmpErrorNoFlow);
    };
    // SAFETY: value pointer the map just returned; its fields are copied
    // into the scratch slot (see `Scratch`): the VIP and service port in
    // `pod`/`pod_port`, the client and its port in `node`/`nat_port`.
    unsafe {
        if (*r).flags & flow_flags::REMOTE == 0 {
            return Outcome::Pass(Counter::PassIcmpErrorNoFlow);
        }
        s.pod = (*r).new_src;
        s.pod_port = (*r).new_sport;
        s.node = (*r).new_dst;
        s.nat_port = (*r).new_dport;
    }
    forward::zero(&mut s.fib);
    let len = u16::try_from(l4_len + IPV6_LEN).unwrap_or(u16::MAX);
    let xdp = XdpContext::new(ctx);
    let (hop, counter) = match forward::route6(&xdp, &mut s.fib, &s.pod, &s.node, len) {
        Route::Hop(h) => (Some(h), Counter::IcmpErrorToClient),
        // As a reply would be: translated, and the kernel resolves the
        // client, forwards it and decrements the hop limit.
        Route::NoNeighbour => (None, Counter::FibPassToKernel),
        Route::Fail => return Outcome::Drop(DropReason::NoRoute),
    };
    let Parsed::Quote(m) = message(ctx, l4_len) else {
        return Outcome::Pass(Counter::PassMalformed);
    };
    if hop.is_some() && m.ip.hop_limit <= 1 {
        return Outcome::Drop(DropReason::TtlExceeded);
    }
    // The quote becomes `client → [VIP]:port`, the error `VIP → client`.
    let m = readdress(m, (&s.node, s.nat_port), (&s.pod, s.pod_port));
    match hop {
        Some(h) => {
            m.ip.hop_limit -= 1;
            forward::send(&xdp, m.eth, &h, counter)
        }
        None => Outcome::Pass(counter),
    }
}

/// An error about a direct-return flow goes as the flow's packets do:
/// unchanged but for its MAC addresses, to the backend's node (the next
/// hop must be that node itself, as `service6::onehop_direct6` has it),
/// which holds the flow as a local one and translates the error for its
/// pod. The next hop is looked up, not taken from the flow's entry: an
/// error leaves the flow as it is.
#[inline(always)]
fn to_direct_node(ctx: *mut xdp_md, s: &mut Scratch, l4_len: usize) -> Outcome {
    forward::zero(&mut s.fib);
    // The packet's whole length, as the lookup's MTU check wants it.
    let len = u16::try_from(l4_len + IPV6_LEN).unwrap_or(u16::MAX);
    let xdp = XdpContext::new(ctx);
    let hop = match forward::route6_to_node(&xdp, &mut s.fib, &s.outer_src, &s.node, len) {
        Route::Hop(h) => h,
        Route::NoNeighbour => return Outcome::Drop(DropReason::NoNeighbour),
        Route::Fail => return Outcome::Drop(DropReason::NoRoute),
    };
    let Parsed::Quote(m) = message(ctx, l4_len) else {
        return Outcome::Drop(DropReason::IcmpErrorMalformed);
    };
    if m.eth.src == hop.dmac {
        // From the backend's node itself: it would send it back.
        return Outcome::Drop(DropReason::DirectLoop);
    }
    forward::send(&xdp, m.eth, &hop, Counter::IcmpErrorToBackend)
}

/// `lb_egress6`, an IPv6 packet carrying an ICMPv6 error: if it is about a
/// packet we sent on to a local pod (DNAT) — sent by this node's kernel
/// when it could not forward it (a Packet Too Big when the pod's link has
/// the smaller MTU), by a router on the pod's side, or by the pod itself —
/// makes it come from the VIP and quote what the client sent. Never drops;
/// returns `TC_ACT_UNSPEC`. Inlined into `lb_egress6` (module docs).
#[inline(always)]
pub fn egress(skb: *mut __sk_buff) -> i32 {
    let ctx = TcContext::new(skb);
    if ctx.data_end() - ctx.data() < EGRESS_NEED {
        let want = core::cmp::min(ctx.len() as usize, EGRESS_NEED);
        #[expect(
            clippy::cast_possible_truncation,
            reason = "want <= EGRESS_NEED, a few dozen bytes"
        )]
        let _ = ctx.pull_data(want as u32);
    }
    if egress_translate(&ctx) {
        stats::count(Counter::EgressIcmpError);
    }
    TC_ACT_UNSPEC
}

/// The quoted endpoints of an error on egress, copied out of the packet.
/// The addresses as integers: two registers (or stack slots) each, where
/// LLVM keeps the 16 bytes of an array apart, a slot each across a call.
struct Quoted {
    pod: u128,
    pod_port: u16,
    client: u128,
    client_port: u16,
    proto: u8,
}

/// Parses the error on the skb (direct packet access) after the Ethernet
/// header: the outer IPv6 header and the message.
#[inline(always)]
fn egress_message<'a>(
    ctx: &TcContext,
) -> Option<(&'a mut Ipv6Hdr, &'a mut IcmpHdr, Quote<'a, Ipv6Hdr>)> {
    // SAFETY: the only cursor over this packet while its references live;
    // no helper that changes the packet runs meanwhile (TC programs may
    // write packet data directly).
    let mut cur = unsafe { Cursor::new(ctx.data(), ctx.data_end()) };
    let (Some(_), Some(ip)) = (cur.take::<EthHdr>(), cur.take::<Ipv6Hdr>()) else {
        return None;
    };
    if ip.version() != 6 || ip.next != proto::ICMPV6 {
        return None;
    }
    match quote::parse::<Ipv6Hdr>(&mut cur, usize::from(ip.payload_len()), is_error) {
        // The quote is the client's packet after our DNAT, and the error
        // goes back to that client.
        Parsed::Quote((icmp, q)) if same_addr(&q.ip.src, &ip.dst) => Some((ip, icmp, q)),
        _ => None,
    }
}

#[inline(always)]
fn egress_translate(ctx: &TcContext) -> bool {
    // Two passes, as on ingress: packet pointers kept across the lookups
    // would each take a stack slot, and this frame adds to `lb_egress6`'s.
    let Some(t) = egress_message(ctx).map(|(_, _, q)| Quoted {
        pod: u128::from_ne_bytes(q.ip.dst),
        pod_port: u16::from_be_bytes(*q.dport),
        client: u128::from_ne_bytes(q.ip.src),
        client_port: u16::from_be_bytes(*q.sport),
        proto: q.ip.next,
    }) else {
        return false;
    };
    let (pod, client) = (t.pod.to_ne_bytes(), t.client.to_ne_bytes());
    let (vip, port) = match local::reply::<V6>(pod, t.pod_port, client, t.client_port, t.proto) {
        local::Reply::Flow { vip, port, .. } | local::Reply::Reversed { vip, port, .. } => {
            (vip, port)
        }
        local::Reply::None => return false,
    };
    let Some((ip, icmp, q)) = egress_message(ctx) else {
        return false;
    };
    translate(
        icmp,
        (q.check, q.udp),
        &mut Endpoint {
            addr: &mut q.ip.dst,
            port: q.dport,
            outer: &mut ip.src,
        },
        &vip,
        port,
    );
    true
}
