//! ICMP errors about translated flows: destination unreachable (with
//! fragmentation needed and its next-hop MTU), time exceeded and parameter
//! problem, in both directions, so that path-MTU discovery and error
//! reporting work through the VIP as they would without us. ICMPv6 errors
//! about IPv6 flows: `icmp6_error`, which mirrors this design.
//!
//! An error quotes the start of the packet it is about (RFC 792: its IP
//! header and at least eight bytes after it, the ports). We translate the
//! quote back into what the error's receiver sent, and re-address the outer
//! header as the flow's own packets are (RFC 5508, section 4):
//!
//! | arrives | quotes | becomes (outer; quote) | counter |
//! | --- | --- | --- | --- |
//! | uplink, to the VIP, local flow | `VIP:port → client` | `src → pod`; `pod:tport → client` | `icmp_error_to_backend` |
//! | uplink, to the VIP, direct-return flow | `VIP:port → client` | unchanged, sent to the pod's node (which translates it as a local flow's) | `icmp_error_to_backend` |
//! | uplink, to the VIP, remote flow | `VIP:port → client` | `node → pod`, sent to the pod's node; `pod:tport → node:nat_port` | `icmp_error_to_backend` |
//! | uplink, to the node, remote flow | `node:nat_port → pod:tport` | `VIP → client`, sent to the client; `client → VIP:port` | `icmp_error_to_client` |
//! | `lb_egress`, local flow | `client → pod:tport` | `VIP → client`; `client → VIP:port` | `egress_icmp_error` |
//!
//! The outer source of an error to a client is the VIP (RFC 5508 has a NAT
//! put its own public address there): the pod network's addresses mean
//! nothing on the client's side and may be filtered there. An error toward a
//! local backend keeps its source (plain DNAT, as the flow's packets); one
//! toward a remote backend comes from the node (full NAT, as the flow's
//! packets). Type, code and the rest of the ICMP header (the next-hop MTU of
//! a fragmentation-needed error, a parameter problem's pointer) are kept:
//! neither translation changes a packet's size or header layout.
//!
//! Checksums, all updated incrementally (RFC 1624, see `csum`): the outer
//! IPv4 header's, the quoted IPv4 header's, the quoted transport checksum
//! where the quote holds it — always for UDP (a zero UDP checksum stays
//! zero), for TCP only when at least 18 bytes of its header are quoted —
//! and the ICMP checksum over every quoted word we changed. A quoted TCP
//! header too short to hold its checksum gets its ports translated only,
//! as the Linux NAT does: RFC 5508 leaves the embedded transport checksum
//! to the translator, since the quote may be cut anywhere, and receivers
//! match errors to sockets by addresses and ports, never by that checksum.
//! We do not verify the ICMP checksum first (RFC 5508 says a NAT SHOULD
//! drop an error whose checksum fails): an incremental update keeps a wrong
//! checksum exactly as wrong, so the receiver still drops it, and a loop
//! over the whole message would cost verifier budget on Linux 6.1 in every
//! program that calls this. An error never refreshes, closes or otherwise
//! changes the flow it is about (RFC 5508 asks the same).
//!
//! Policy for errors that match nothing: to a VIP, dropped
//! (`icmp_error_no_flow`; a quote too short for an IPv4 header and eight
//! bytes, or no IPv4 header: `icmp_error_malformed`), as the kernel has
//! nothing to do with a VIP; to the node, passed untouched
//! (`pass_icmp_error_no_flow`; malformed: `pass_malformed`), as it may be
//! about the node's own traffic; on egress, left alone. A quote with IP
//! options, of a non-first fragment, or of a protocol other than TCP or UDP
//! matches no flow (flows never carry options or fragments). Nothing is
//! changed before an error is known to match a live flow.
//!
//! The data path generates no ICMP: it only translates errors that others
//! (routers, the nodes' kernels, which rate-limit their own) sent, so it
//! has nothing to rate-limit. Where it drops a packet it would otherwise
//! forward (`ttl_exceeded`, `no_route`), it sends no error either.
//!
//! Everything here runs out of line (`#[inline(never)]` BPF-to-BPF calls,
//! one per program entry) and only once a packet is known to be an ICMP
//! error: the flow paths keep their instructions and stack. The XDP
//! functions keep their lookup key, FIB parameters and everything they
//! carry across a helper call in this CPU's `flow_scratch` slot (see
//! `Scratch`), so their own frames stay at 88 bytes: on Linux 6.1, which
//! rounds every frame up to 32 bytes, `lb_ingress` (344 → 352) + one of them
//! (88 → 96) + the `memset` they call (0 → 32) is 480 of the 512 bytes, and
//! they are never on a call chain with a new flow's `conntrack::onehop_flow_create`. A
//! tail call would give this path a stack of its own, but needs a program
//! array that the agent fills and every test harness loads; a call needs
//! neither.

use aya_ebpf::{
    bindings::{__sk_buff, TC_ACT_UNSPEC, bpf_fib_lookup, xdp_md},
    programs::{TcContext, XdpContext},
};
use lb_common::{
    Counter, DatapathConfig, DropReason, FlowKey, FlowScratch, flow::v4_of, flow_flags, proto,
};

use crate::{
    conntrack,
    csum::Delta,
    family::V4,
    flowtable,
    forward::{self, NextHop, Route},
    local,
    maps::{BACKENDS, REV_NAT},
    parse::{Cursor, ETH_LEN, ETH_P_IPV4, EthHdr, IPV4_LEN, IcmpHdr, Ipv4Hdr},
    quote::{self, ICMP_LEN, Parsed, Quote, QuotedIp as _},
    stats,
    verdict::Outcome,
};

pub const DEST_UNREACH: u8 = 3;
pub const TIME_EXCEEDED: u8 = 11;
pub const PARAM_PROBLEM: u8 = 12;

/// What `lb_egress` makes linear for an error: every header we may rewrite.
const EGRESS_NEED: usize = ETH_LEN + IPV4_LEN + ICMP_LEN + Ipv4Hdr::TCP_CHECK_QUOTE;

/// ICMP types whose message quotes the packet they are about and that we
/// translate.
#[inline(always)]
pub fn is_error(ty: u8) -> bool {
    ty == DEST_UNREACH || ty == TIME_EXCEEDED || ty == PARAM_PROBLEM
}

/// A new endpoint: address as `u32::from_ne_bytes`, port in host order.
#[repr(C)]
#[derive(Clone, Copy)]
struct To {
    addr: u32,
    port: u16,
    _pad: u16,
}

/// Rewrites the quoted packet's endpoints (`old` is what it holds now,
/// copied out before) with the checksums that cover them: its IPv4
/// header's, its transport checksum (if quoted) and the ICMP checksum.
///
/// The deltas come from the copied-out values, not from the packet: read
/// back byte by byte beside the writes, each byte took a stack slot of
/// its own.
#[inline(always)]
fn translate(
    icmp: &mut IcmpHdr,
    q: &mut Quote<'_, Ipv4Hdr>,
    old: &Tuple,
    src: Option<To>,
    dst: Option<To>,
) {
    let mut addrs = Delta::default();
    let mut ports = Delta::default();
    if let Some(s) = src {
        addrs.addr32(old.src, s.addr);
        ports.word(old.sport, s.port);
        q.ip.src = s.addr.to_ne_bytes();
        *q.sport = s.port.to_be_bytes();
    }
    if let Some(d) = dst {
        addrs.addr32(old.dst, d.addr);
        ports.word(old.dport, d.port);
        q.ip.dst = d.addr.to_ne_bytes();
        *q.dport = d.port.to_be_bytes();
    }
    let transport = addrs.plus(ports);
    let mut icmp_d = transport;
    let ip_old = q.ip.check();
    let ip_new = addrs.apply(ip_old);
    q.ip.set_check(ip_new);
    icmp_d.word(ip_old, ip_new);
    quote::follow_transport(q.check.as_deref_mut(), q.udp, transport, &mut icmp_d);
    icmp.check = icmp_d.apply(u16::from_be_bytes(icmp.check)).to_be_bytes();
}

/// Rewrites the outer addresses (`old_src`, `old_dst`: what they are now,
/// copied out before) and the TTL when we forward the error ourselves,
/// with the header checksum.
#[inline(always)]
fn readdress(
    ip: &mut Ipv4Hdr,
    (old_src, old_dst): (u32, u32),
    src: Option<u32>,
    dst: Option<u32>,
    dec_ttl: bool,
) {
    let mut d = Delta::default();
    if let Some(s) = src {
        d.addr32(old_src, s);
        ip.src = s.to_ne_bytes();
    }
    if let Some(t) = dst {
        d.addr32(old_dst, t);
        ip.dst = t.to_ne_bytes();
    }
    if dec_ttl {
        let old = ip.ttl_proto_word();
        ip.ttl -= 1;
        d.word(old, ip.ttl_proto_word());
    }
    ip.set_check(d.apply(ip.check()));
}

/// Scratch memory of the XDP error paths, laid over this CPU's
/// `flow_scratch` slot (which the service path uses for its flow's key and
/// a new flow's entries; an error takes another path and creates no flow). `lb_ingress`'s own frame leaves a
/// call about 150 bytes of stack; the lookup key and the FIB lookup's
/// parameters alone would take 104. Everything read before a helper call
/// and needed after it is kept here too: LLVM keeps each byte of an
/// address read from the packet apart until its use, and across a call each
/// takes a stack slot of its own.
#[repr(C)]
struct Scratch {
    key: FlowKey,
    fib: bpf_fib_lookup,
    /// The quote as it arrived.
    old: Tuple,
    /// The outer addresses as they arrived.
    outer: (u32, u32),
    /// The quote's new source and destination.
    src: To,
    dst: To,
    /// The outer header's new source (0: unchanged) and destination.
    out_src: u32,
    out_dst: u32,
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

/// The packet's bounds, read with volatile loads: with plain ones LLVM may
/// hand an out-of-line function the loaded values instead of the context
/// (argument promotion), and the verifier rejects a call whose BTF says
/// "context" where the register holds a packet pointer.
#[inline(always)]
fn xdp_bounds(ctx: *mut xdp_md) -> (usize, usize) {
    // SAFETY: `ctx` is the program's context, valid for the whole run.
    unsafe {
        (
            core::ptr::read_volatile(&raw const (*ctx).data) as usize,
            core::ptr::read_volatile(&raw const (*ctx).data_end) as usize,
        )
    }
}

/// An error message's headers, outer and quoted.
struct Message<'a> {
    eth: &'a mut EthHdr,
    ip: &'a mut Ipv4Hdr,
    icmp: &'a mut IcmpHdr,
    q: Quote<'a, Ipv4Hdr>,
}

/// Parses an Ethernet frame holding an ICMP error whose outer IPv4 header
/// the caller validated.
///
/// The XDP paths parse twice: once to copy out what the lookups need, and
/// again after them to rewrite. Packet pointers kept live across the map and
/// FIB helper calls would be spilled to the stack, a slot each.
#[inline(always)]
fn message<'a>(data: usize, end: usize) -> Parsed<Message<'a>> {
    // SAFETY: the only cursor over this packet while its references live;
    // the caller's references are not used after the call that got here.
    let mut cur = unsafe { Cursor::new(data, end) };
    let (Some(eth), Some(ip)) = (cur.take::<EthHdr>(), cur.take::<Ipv4Hdr>()) else {
        return Parsed::Malformed;
    };
    let l4_len = usize::from(ip.tot_len()).saturating_sub(IPV4_LEN);
    quote::parse(&mut cur, l4_len, is_error).map(|(icmp, q)| Message { eth, ip, icmp, q })
}

/// The addresses (as `u32::from_ne_bytes`) and ports (host order) of a
/// quote, copied out.
#[repr(C)]
#[derive(Clone, Copy)]
struct Tuple {
    src: u32,
    dst: u32,
    sport: u16,
    dport: u16,
    proto: u8,
    _pad: [u8; 3],
}

impl Tuple {
    #[inline(always)]
    fn of(q: &Quote<'_, Ipv4Hdr>) -> Self {
        Self {
            src: n(q.ip.src),
            dst: n(q.ip.dst),
            sport: q.sport(),
            dport: q.dport(),
            proto: q.ip.proto,
            _pad: [0; 3],
        }
    }
}

#[inline(always)]
fn a(v: u32) -> [u8; 4] {
    v.to_ne_bytes()
}

#[inline(always)]
fn n(v: [u8; 4]) -> u32 {
    u32::from_ne_bytes(v)
}

/// First pass over an error: copies the quote and outer addresses into
/// `s`. Returns the outer TTL and total length, or how the parse failed.
#[inline(always)]
fn read(ctx: *mut xdp_md, s: &mut Scratch) -> Result<(u8, u16), Parsed<()>> {
    let (data, end) = xdp_bounds(ctx);
    match message(data, end) {
        Parsed::Quote(m) => {
            s.old = Tuple::of(&m.q);
            s.outer = (n(m.ip.src), n(m.ip.dst));
            Ok((m.ip.ttl, m.ip.tot_len()))
        }
        Parsed::Malformed => Err(Parsed::Malformed),
        Parsed::NoFlow => Err(Parsed::NoFlow),
    }
}

/// Second pass: rewrites the error as `s` says. `forward`: the FIB lookup
/// in `s` succeeded and we send the frame out ourselves (TTL decremented,
/// MAC addresses of the next hop); otherwise the kernel routes it.
#[inline(always)]
fn rewrite(ctx: *mut xdp_md, s: &Scratch, forward: bool, counter: Counter) -> Outcome {
    let (data, end) = xdp_bounds(ctx);
    let Parsed::Quote(mut m) = message(data, end) else {
        return Outcome::Pass(Counter::PassMalformed);
    };
    translate(m.icmp, &mut m.q, &s.old, Some(s.src), Some(s.dst));
    let out_src = (s.out_src != 0).then_some(s.out_src);
    readdress(m.ip, s.outer, out_src, Some(s.out_dst), forward);
    if forward {
        let hop = NextHop {
            ifindex: s.fib.ifindex,
            smac: s.fib.smac,
            dmac: s.fib.dmac,
        };
        forward::send(&XdpContext::new(ctx), m.eth, &hop, counter)
    } else {
        Outcome::Pass(counter)
    }
}

/// A FIB lookup into `s.fib`.
#[inline(always)]
fn route(ctx: *mut xdp_md, s: &mut Scratch, src: [u8; 4], dst: [u8; 4], tot_len: u16) -> Route {
    // SAFETY: bpf_fib_lookup is plain old data; all zero is what the
    // helper expects of the fields we do not fill.
    s.fib = unsafe { core::mem::zeroed() };
    forward::route_with(
        &XdpContext::new(ctx),
        &mut s.fib,
        src,
        dst,
        proto::ICMP,
        tot_len,
    )
}

/// `lb_ingress`, an ICMP error to a VIP (outer header validated by the
/// caller: no options, whole datagram, checksum right, not martian): from
/// the client's side, about a reply we sent. Forwards it to the flow's
/// backend; returns the XDP action, the outcome counted.
#[inline(never)]
pub fn to_backend(ctx: *mut xdp_md, cfg: &DatapathConfig) -> u32 {
    from_client_side(ctx, cfg).finish()
}

#[expect(
    clippy::needless_borrows_for_generic_args,
    reason = "the key lives in the scratch map: by value it would be copied to the stack"
)]
#[inline(always)]
fn from_client_side(ctx: *mut xdp_md, cfg: &DatapathConfig) -> Outcome {
    let Some(s) = scratch() else {
        return Outcome::Drop(DropReason::MapUpdate);
    };
    let (ttl, tot_len) = match read(ctx, s) {
        Ok(v) => v,
        Err(Parsed::Malformed) => return Outcome::Drop(DropReason::IcmpErrorMalformed),
        Err(_) => return Outcome::Drop(DropReason::IcmpErrorNoFlow),
    };
    // The quote is our reply: from this VIP to the client.
    let t = s.old;
    if t.src != s.outer.1 {
        return Outcome::Drop(DropReason::IcmpErrorNoFlow);
    }
    s.key = FlowKey::v4(a(t.dst), a(t.src), t.dport, t.sport, t.proto);
    let Some(ct) = flowtable::lookup::<V4>(&s.key) else {
        return Outcome::Drop(DropReason::IcmpErrorNoFlow);
    };
    // SAFETY: value pointer the map just returned; read by value.
    let (backend_id, flags) = unsafe { ((*ct).backend_id, (*ct).flags) };
    // SAFETY: as above.
    s.dst.port = unsafe { (*ct).nat_port };
    // SAFETY: as above.
    s.out_dst = n(v4_of(unsafe { &(*ct).backend_ip }));
    let Some(b) = BACKENDS.get_ptr(backend_id) else {
        return Outcome::Drop(DropReason::IcmpErrorNoFlow);
    };
    // SAFETY: array value pointer; read by value.
    let (pod, pod_port, pod_node) = unsafe { (n((*b).ip), (*b).port, n((*b).node_ip)) };
    if pod != s.out_dst {
        return Outcome::Drop(DropReason::IcmpErrorNoFlow);
    }
    if flags & flow_flags::DIRECT != 0 {
        return to_direct_node(ctx, s, cfg, pod_node, tot_len);
    }
    s.src = To {
        addr: pod,
        port: pod_port,
        _pad: 0,
    };
    if flags & flow_flags::REMOTE == 0 {
        // A local flow: its conntrack entry, which names this pod as its
        // backend, is all there is of it (see `local`). The kernel routes
        // the error to the pod and decrements the TTL.
        s.dst = To {
            addr: t.dst,
            port: t.dport,
            _pad: 0,
        };
        s.out_src = 0;
        return rewrite(ctx, s, false, Counter::IcmpErrorToBackend);
    }
    // What the backend sent (after its node's NAT port as destination;
    // `s.dst.port` holds that port), and the reverse entry that translated
    // it: only a flow whose two entries agree is ours.
    s.dst.addr = n(cfg.node_ip);
    s.out_src = n(cfg.node_ip);
    s.key = FlowKey::v4(a(pod), a(s.dst.addr), pod_port, s.dst.port, t.proto);
    let Some(r) = REV_NAT.get_ptr(&s.key) else {
        return Outcome::Drop(DropReason::IcmpErrorNoFlow);
    };
    // SAFETY: value pointer the map just returned; read by value.
    let ours = unsafe {
        n(v4_of(&(*r).new_src)) == t.src
            && n(v4_of(&(*r).new_dst)) == t.dst
            && (*r).new_sport == t.sport
            && (*r).new_dport == t.dport
    };
    if !ours {
        return Outcome::Drop(DropReason::IcmpErrorNoFlow);
    }
    if ttl <= 1 {
        return Outcome::Drop(DropReason::TtlExceeded);
    }
    match route(ctx, s, cfg.node_ip, a(pod_node), tot_len) {
        Route::Hop(_) => rewrite(ctx, s, true, Counter::IcmpErrorToBackend),
        Route::NoNeighbour => Outcome::Drop(DropReason::NoNeighbour),
        Route::Fail => Outcome::Drop(DropReason::NoRoute),
    }
}

/// An error about a direct-return flow goes as the flow's packets do:
/// unchanged but for its MAC addresses, to the backend's node, which holds
/// the flow and translates the error for its pod (a local flow there).
#[inline(always)]
fn to_direct_node(
    ctx: *mut xdp_md,
    s: &mut Scratch,
    cfg: &DatapathConfig,
    node: u32,
    tot_len: u16,
) -> Outcome {
    match route(ctx, s, cfg.node_ip, a(node), tot_len) {
        // SAFETY: plain integers of the struct the helper just wrote; the
        // kernel leaves the next hop's address in the destination.
        Route::Hop(_) if unsafe { s.fib.__bindgen_anon_4.ipv4_dst } == node => {}
        Route::NoNeighbour => return Outcome::Drop(DropReason::NoNeighbour),
        _ => return Outcome::Drop(DropReason::NoRoute),
    }
    let (data, end) = xdp_bounds(ctx);
    let Parsed::Quote(m) = message(data, end) else {
        return Outcome::Drop(DropReason::IcmpErrorMalformed);
    };
    let hop = NextHop {
        ifindex: s.fib.ifindex,
        smac: s.fib.smac,
        dmac: s.fib.dmac,
    };
    if m.eth.src == hop.dmac {
        return Outcome::Drop(DropReason::DirectLoop);
    }
    forward::send(
        &XdpContext::new(ctx),
        m.eth,
        &hop,
        Counter::IcmpErrorToBackend,
    )
}

/// `lb_ingress`, an ICMP error to the node's address (outer header
/// validated by the caller): if it is about a packet we sent to a remote
/// backend, sends it on to the client. Returns the XDP action, the outcome
/// counted.
#[inline(never)]
pub fn to_client(ctx: *mut xdp_md, cfg: &DatapathConfig) -> u32 {
    from_backend_side(ctx, cfg).finish()
}

#[expect(
    clippy::needless_borrows_for_generic_args,
    reason = "the key lives in the scratch map: by value it would be copied to the stack"
)]
#[inline(always)]
fn from_backend_side(ctx: *mut xdp_md, cfg: &DatapathConfig) -> Outcome {
    let Some(s) = scratch() else {
        return Outcome::Pass(Counter::PassIcmpErrorNoFlow);
    };
    let (ttl, tot_len) = match read(ctx, s) {
        Ok(v) => v,
        Err(Parsed::Malformed) => return Outcome::Pass(Counter::PassMalformed),
        Err(_) => return Outcome::Pass(Counter::PassIcmpErrorNoFlow),
    };
    // The quote is our full-NATed packet: from node:nat_port to the pod.
    let t = s.old;
    if t.src != n(cfg.node_ip) || t.sport < cfg.nat_port_min || t.sport > cfg.nat_port_max {
        return Outcome::Pass(Counter::PassIcmpErrorNoFlow);
    }
    s.key = FlowKey::v4(a(t.dst), a(t.src), t.dport, t.sport, t.proto);
    let Some(r) = REV_NAT.get_ptr(&s.key) else {
        return Outcome::Pass(Counter::PassIcmpErrorNoFlow);
    };
    // SAFETY: value pointer the map just returned; read by value.
    let flags = unsafe { (*r).flags };
    if flags & flow_flags::REMOTE == 0 {
        return Outcome::Pass(Counter::PassIcmpErrorNoFlow);
    }
    // SAFETY: as above. The quote becomes client → VIP:port; the error
    // goes from the VIP to the client.
    unsafe {
        s.src = To {
            addr: n(v4_of(&(*r).new_dst)),
            port: (*r).new_dport,
            _pad: 0,
        };
        s.dst = To {
            addr: n(v4_of(&(*r).new_src)),
            port: (*r).new_sport,
            _pad: 0,
        };
    }
    s.out_src = s.dst.addr;
    s.out_dst = s.src.addr;
    match route(ctx, s, a(s.out_src), a(s.out_dst), tot_len) {
        Route::Hop(_) if ttl <= 1 => Outcome::Drop(DropReason::TtlExceeded),
        Route::Hop(_) => rewrite(ctx, s, true, Counter::IcmpErrorToClient),
        // As a reply would be: translated, and the kernel resolves the
        // client, forwards it and decrements the TTL.
        Route::NoNeighbour => rewrite(ctx, s, false, Counter::FibPassToKernel),
        Route::Fail => Outcome::Drop(DropReason::NoRoute),
    }
}

/// `lb_egress`, an IPv4 packet carrying an ICMP error: if it is about a
/// packet we sent on to a local pod (DNAT) (sent by this node's kernel when it
/// could not forward it, or by a router on the pod's side), makes it come
/// from the VIP and quote what the client sent. Never drops; returns
/// `TC_ACT_UNSPEC`.
#[inline(never)]
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

#[inline(always)]
fn egress_translate(ctx: &TcContext) -> bool {
    // SAFETY: the only cursor over this packet; no helper runs while its
    // references live (TC programs may write packet data directly).
    let mut cur = unsafe { Cursor::new(ctx.data(), ctx.data_end()) };
    let (Some(eth), Some(ip)) = (cur.take::<EthHdr>(), cur.take::<Ipv4Hdr>()) else {
        return false;
    };
    if eth.proto() != ETH_P_IPV4 || ip.vihl != 0x45 || ip.is_fragment() {
        return false;
    }
    let l4_len = usize::from(ip.tot_len()).saturating_sub(IPV4_LEN);
    let Parsed::Quote((icmp, mut q)) = quote::parse::<Ipv4Hdr>(&mut cur, l4_len, is_error) else {
        return false;
    };
    // The quote is the client's packet after our DNAT, and the error goes
    // back to that client.
    if q.ip.src != ip.dst {
        return false;
    }
    let t = Tuple::of(&q);
    let outer = (n(ip.src), n(ip.dst));
    let (vip, vport) = match local::reply::<V4>(q.ip.dst, t.dport, q.ip.src, t.sport, t.proto) {
        local::Reply::Flow { vip, port, .. } | local::Reply::Reversed { vip, port, .. } => {
            (n(vip), port)
        }
        local::Reply::None => return false,
    };
    translate(
        icmp,
        &mut q,
        &t,
        None,
        Some(To {
            addr: vip,
            port: vport,
            _pad: 0,
        }),
    );
    readdress(ip, outer, Some(vip), None, false);
    true
}
