//! `lb_nat6`: full NAT over IPv6, both ways, in a program of its own (slot
//! `xdp_slot::NAT6` of `xdp_programs`): `lb_service6`, whose stack is full
//! with a flow's 16-byte addresses, tail-calls it for a flow to a backend on
//! another node that direct return cannot reach, but for an established
//! flow with nothing due, which it translates and sends itself with this
//! module's [`translate_and_send`]; `lb_ingress` for a packet
//! to the node's IPv6 address on one of the NAT ports (a reply of such a
//! flow) or for an IPv6 fragment to the node. Which way a packet goes is in
//! this CPU's `flow_scratch` slot: the VIP's flags the tail-calling program
//! left there (`SERVICE` for a flow's packet, `NODE` alone for a reply).
//!
//! As IPv4's `ingress::to_remote` and `ingress::node_path`:
//! - **To the backend:** the source becomes the node's IPv6 address
//!   (`DatapathConfig::node_ip6`; a node without one drops the flow,
//!   `no_route`) and a NAT port, the destination the pod's
//!   `[address]:targetPort`; the hop limit is decremented (we forward,
//!   not the kernel) and the frame leaves for the next hop towards the
//!   backend's node — through a router too, unlike direct return: the reply
//!   comes back to us whatever the way. A new flow's next hop is found
//!   before its entries are written (a flow we cannot send claims no NAT
//!   port) and is cached in its entry, renewed once a second with the
//!   timestamps. An established flow whose reverse entry (its NAT port) went
//!   to another flow starts again as a new one (`nat_port_lost`).
//! - **Back to the client:** the reverse entry of `[pod]:port →
//!   [node]:nat_port` gives `[VIP]:port → client`; the frame goes to the
//!   client's next hop, or, when the kernel has not resolved it (we answered
//!   its Neighbor Solicitation, so the kernel never heard from it), to the
//!   MAC address that solicitation came from (`learned_macs`); with neither,
//!   to the kernel (`fib_pass_to_kernel`).
//! - A partial transport checksum (a veth uplink, see `partial`) is finished
//!   before the frame leaves by `XDP_TX` or `XDP_REDIRECT`.
//! - Fragments to the node: as IPv4's (`fragment`): the first fragment of a
//!   remote backend's reply is dropped (`fragmented_reply`), since nothing
//!   could deliver the datagram; other fragments pass (`pass_node_fragment`).
//!
//! ICMPv6 errors about these flows, both ways, are `icmp6_error`'s.

use core::ptr::NonNull;

use aya_ebpf::{
    bindings::{bpf_fib_lookup, xdp_action::XDP_PASS, xdp_md},
    helpers::bpf_ktime_get_ns,
    programs::XdpContext,
};
use lb_common::{
    BackendValue6, ConntrackValue, Counter, DatapathConfig, DropReason, FlowKey, FlowScratch,
    HostKey,
    flow::{self, flow_flags, same_addr},
    proto, vip_flags,
};

use crate::{
    conntrack::{self, ReplyKey},
    csum,
    family::V6,
    flowtable,
    forward::{self, NextHop, Route},
    guard,
    ingress::transport,
    ingress6::{FRAGMENT, skip_extensions},
    maps::{BACKEND_STATS, BACKENDS6, CONFIG, LEARNED_MACS, REV_NAT},
    nat::{self, L4},
    ndp::pseudo_sum,
    parse::{Cursor, EthHdr, IPV6_LEN, Ipv6Ext, Ipv6Hdr, L4Head},
    stats,
    verdict::Outcome,
};

/// What `lb_service6` tells `lb_nat6` of a flow (`FlowScratch::established`):
/// a new one, or an established one whose entry is due for a refresh or
/// has no next hop cached (found again here). An established flow with
/// nothing due never comes here: `lb_service6` sends it itself
/// ([`translate_and_send`]).
pub const NEW: u16 = 0;
pub const LOOK_UP: u16 = 1;

/// The whole program.
#[inline(always)]
pub fn process(ctx: &XdpContext) -> u32 {
    let (Some(cfg), Some(s)) = (CONFIG.get(0), conntrack::scratch()) else {
        return XDP_PASS;
    };
    let frame_len = ctx.data_end() - ctx.data();
    // SAFETY: the only cursor over this packet during this run.
    let mut cur = unsafe { Cursor::new(ctx.data(), ctx.data_end()) };
    let (Some(eth), Some(ip)) = (cur.take::<EthHdr>(), cur.take::<Ipv6Hdr>()) else {
        return Outcome::Drop(DropReason::Truncated).finish();
    };
    // SAFETY: this CPU's scratch slot, ours for this run, tail calls
    // included; the calling program wrote the flags.
    let flags = unsafe { (*s).vip_flags };
    if flags & vip_flags::SERVICE != 0 {
        to_backend(ctx, &mut cur, eth, ip, cfg, frame_len).finish()
    } else {
        to_client(ctx, &mut cur, eth, ip, cfg).finish()
    }
}

/// A flow's packet, `lb_service6` having chosen its backend: the flow's
/// key, its entry as it would be created (backend, service, state, time)
/// and what it knows of the flow's entry (`established`: [`NEW`],
/// [`LOOK_UP`]) are in the scratch slot.
#[inline(always)]
fn to_backend(
    ctx: &XdpContext,
    cur: &mut Cursor<'_>,
    eth: &mut EthHdr,
    ip: &mut Ipv6Hdr,
    cfg: &DatapathConfig,
    frame_len: usize,
) -> Outcome {
    let Some(s) = conntrack::scratch() else {
        return Outcome::Drop(DropReason::MapUpdate);
    };
    // SAFETY: this CPU's scratch slot, ours for this run.
    let (backend_id, mode, proto) =
        unsafe { ((*s).ctv.backend_id, (*s).established, (*s).key.proto) };
    let out = forward_nat(ctx, cur, eth, ip, cfg, backend_id, mode);
    match out {
        Outcome::Drop(_) => {
            if mode == NEW && proto == proto::TCP {
                // The token `lb_service6` drew for this flow (see `guard`).
                guard::refund();
            }
        }
        _ => stats::traffic(&BACKEND_STATS, backend_id, frame_len),
    }
    out
}

#[inline(always)]
fn forward_nat(
    ctx: &XdpContext,
    cur: &mut Cursor<'_>,
    eth: &mut EthHdr,
    ip: &mut Ipv6Hdr,
    cfg: &DatapathConfig,
    backend_id: u32,
    mode: u16,
) -> Outcome {
    if cfg.node_ip6 == [0; 16] {
        // The node has no IPv6 address to translate from.
        return Outcome::Drop(DropReason::NoRoute);
    }
    let payload = usize::from(ip.payload_len());
    let (proto, ext) = match skip_extensions(cur, ip.next) {
        Ok(t) => t,
        Err(r) => return Outcome::Drop(r),
    };
    let Some(l4_len) = payload.checked_sub(ext) else {
        return Outcome::Drop(DropReason::Truncated);
    };
    let (mut l4, _) = match transport(cur, proto, l4_len) {
        Ok(t) => t,
        Err(r) => return Outcome::Drop(r),
    };
    let Some(b) = BACKENDS6.get_ptr(backend_id) else {
        return Outcome::Drop(DropReason::NoBackend);
    };
    // SAFETY: a value pointer `backends6` returned in this run, read in
    // place (see `family::Backend6`).
    let b = unsafe { &*b };
    let Some(s) = conntrack::scratch() else {
        return Outcome::Drop(DropReason::MapUpdate);
    };
    let Known { mut port, ct } = known(s, b, cfg, mode);
    // SAFETY: this CPU's scratch slot, ours for this run: the time
    // `lb_service6` staged.
    let now = unsafe { (*s).ctv.last_seen_ns };
    // A found entry was refreshed: its hop is as fresh as its timestamps.
    let hop = if let Some(h) = ct.and_then(|c| conntrack::cached_hop(c.as_ptr(), now)) {
        h
    } else {
        // Over the slot's reverse entry, which the flow's creation below
        // writes afresh (the key and the staged entry lie past it).
        let Some(p) = forward::scratch_params() else {
            return Outcome::Drop(DropReason::MapUpdate);
        };
        let len = ip
            .payload_len()
            .saturating_add(u16::try_from(IPV6_LEN).unwrap_or(u16::MAX));
        match forward::route6(ctx, p, &cfg.node_ip6, &b.node_ip, len) {
            Route::Hop(h) => {
                if let Some(c) = ct {
                    conntrack::store_hop(c.as_ptr(), &h);
                }
                h
            }
            Route::NoNeighbour => return Outcome::Drop(DropReason::NoNeighbour),
            Route::Fail => return Outcome::Drop(DropReason::NoRoute),
        }
    };
    let counter = if port != 0 {
        Counter::RemoteEstablished
    } else {
        // SAFETY: this CPU's scratch slot, ours for this run.
        unsafe {
            (*s).ctv.nat_port = 0;
            conntrack::store_hop(&raw mut (*s).ctv, &hop);
        }
        port = match conntrack::onehop_flow_create() {
            0 => return Outcome::Drop(DropReason::NatExhausted),
            conntrack::CREATE_TABLE_FULL => return Outcome::Drop(DropReason::FlowTableFull),
            p => match u16::try_from(p) {
                Ok(p) => p,
                Err(_) => return Outcome::Drop(DropReason::MapUpdate),
            },
        };
        Counter::RemoteNewFlow
    };
    // SAFETY: this CPU's scratch slot: the flow's key, which `lb_service6`
    // wrote from this packet's addresses.
    let key = unsafe { &(*s).key };
    let to = Translation {
        key,
        node: &cfg.node_ip6,
        port,
        backend: b,
    };
    translate_and_send(
        ctx,
        eth,
        ip,
        &mut l4,
        (proto, l4_len, ext),
        &to,
        &hop,
        counter,
    )
}

/// A full-NAT flow's translation: its client key, the node's address and
/// NAT port it leaves from, and its backend.
pub struct Translation<'a> {
    pub key: &'a FlowKey,
    pub node: &'a [u8; 16],
    pub port: u16,
    pub backend: &'a BackendValue6,
}

/// The last steps of a full-NAT flow's packet to its backend: a partial
/// checksum finished (`shape`: the transport protocol, its length, and the
/// extension headers' before it), both addresses and ports rewritten as
/// `to` says, the hop limit decremented, the frame sent to `hop` and
/// `counter` counted. `lb_nat6`'s, and `lb_service6`'s for an established
/// flow with nothing due (its NAT port and next hop are in its entry):
/// that one takes no tail call and stages nothing.
#[expect(
    clippy::too_many_arguments,
    reason = "inlined into both callers, whose registers these are"
)]
#[inline(always)]
pub fn translate_and_send(
    ctx: &XdpContext,
    eth: &mut EthHdr,
    ip: &mut Ipv6Hdr,
    l4: &mut L4<'_>,
    (proto, l4_len, ext): (u8, usize, usize),
    to: &Translation<'_>,
    hop: &NextHop,
    counter: Counter,
) -> Outcome {
    if !finish_before_tx(ctx, ip, l4, proto, l4_len, ext) {
        return Outcome::Drop(DropReason::PartialChecksum);
    }
    let () = flow::ADDRS_WORD_ALIGNED;
    let src = nat::Change6 {
        old: &to.key.src,
        new: to.node,
        port: to.port,
    };
    let dst = nat::Change6 {
        old: &to.key.dst,
        new: &to.backend.ip,
        port: to.backend.port,
    };
    // SAFETY: 4-aligned fields (`ADDRS_WORD_ALIGNED`): a flow key's, the
    // config's and a `backends6` value's addresses.
    unsafe { nat::rewrite6(ip, l4, Some(src), Some(dst)) };
    ip.hop_limit -= 1;
    forward::send(ctx, eth, hop, counter)
}

/// What [`forward_nat`] knows of a flow before it is sent: its NAT port (0:
/// none, it goes on as a new flow), and its entry when found again here
/// (which holds its cached next hop, or caches a freshly looked-up one).
/// Not an `Option` of a raw pointer: with no niche, its `None` leaves the
/// pointer undefined, and LLVM spills that register, which the verifier
/// refuses (`!read_ok`).
struct Known {
    port: u16,
    ct: Option<NonNull<ConntrackValue>>,
}

/// [`Known`] of the flow staged in the scratch slot `s`, to backend `b`:
/// from its entry, refreshed as IPv4's remote flows' are ([`LOOK_UP`]);
/// nothing for a new flow.
#[inline(always)]
fn known(s: *mut FlowScratch, b: &BackendValue6, cfg: &DatapathConfig, mode: u16) -> Known {
    // SAFETY: this CPU's scratch slot, ours for this run: the flow's key
    // and staged entry, which `lb_service6` wrote.
    let (key, state, now) = unsafe { (&(*s).key, (*s).ctv.state, (*s).ctv.last_seen_ns) };
    let none = Known { port: 0, ct: None };
    if mode != LOOK_UP {
        return none;
    }
    // The tag `lb_service6` took of this key and staged (`service::stage_hash`):
    // not computed again.
    // SAFETY: this CPU's scratch slot, ours for this run.
    let tag = unsafe { (*s).hash };
    let Some(c) = flowtable::find_any::<V6>(key, tag, cfg) else {
        return none;
    };
    // SAFETY: conntrack value pointer from this run; read by value.
    let p = unsafe { (*c).nat_port };
    let reply = ReplyKey::<V6> {
        backend: &b.ip,
        backend_port: b.port,
        peer: &cfg.node_ip6,
        peer_port: p,
    };
    if p != 0 && conntrack::refresh(c, key, reply, state, now) {
        Known {
            port: p,
            ct: NonNull::new(c),
        }
    } else {
        // The port went to another flow (see `ingress::to_remote`): go on
        // as a new flow.
        flowtable::remove::<V6>(key);
        stats::count(Counter::NatPortLost);
        none
    }
}

/// `to_client`'s reply key lies past the FIB lookup's parameters, which
/// `forward::scratch_params` lays over the scratch slot's start.
const REPLY_KEY_CLEAR: () =
    assert!(core::mem::offset_of!(FlowScratch, key) >= core::mem::size_of::<bpf_fib_lookup>());

/// A packet to the node's IPv6 address that `lb_ingress` found on a NAT
/// port, or a fragment: a remote backend's reply is translated back to
/// `[VIP]:port → client` and sent to the client; anything else is the
/// node's.
#[inline(always)]
fn to_client(
    ctx: &XdpContext,
    cur: &mut Cursor<'_>,
    eth: &mut EthHdr,
    ip: &mut Ipv6Hdr,
    cfg: &DatapathConfig,
) -> Outcome {
    if !same_addr(&ip.dst, &cfg.node_ip6) {
        return Outcome::Pass(Counter::PassNodeTraffic);
    }
    if ip.next == FRAGMENT {
        return fragment(cur, ip);
    }
    let proto = ip.next;
    let l4_len = usize::from(ip.payload_len());
    let Ok((mut l4, tcp)) = transport(cur, proto, l4_len) else {
        return Outcome::Pass(Counter::PassNodeTraffic);
    };
    let Some(s) = conntrack::scratch() else {
        return Outcome::Pass(Counter::PassNodeTraffic);
    };
    // SAFETY: this CPU's scratch slot, ours for this run (a reply creates
    // no flow). The slot's `key`, not its `rkey`: the rewrite below reads
    // the packet's addresses from it after the FIB lookup's parameters
    // were laid over the slot's start (`REPLY_KEY_CLEAR`).
    let key = unsafe {
        let k = &raw mut (*s).key;
        conntrack::write_key6(k, &ip.src, &ip.dst, l4.sport(), l4.dport(), proto);
        &*k
    };
    let Some(rp) = REV_NAT.get_ptr_mut(key) else {
        return Outcome::Pass(Counter::PassNodeTraffic);
    };
    // SAFETY: value pointer the map just returned, valid for this run; the
    // entry's fields are read in place.
    let r = unsafe { &*rp };
    if r.flags & flow_flags::REMOTE == 0 {
        return Outcome::Pass(Counter::PassNodeTraffic);
    }
    if ip.hop_limit <= 1 {
        return Outcome::Drop(DropReason::TtlExceeded);
    }
    // SAFETY: plain helper call.
    let now = unsafe { bpf_ktime_get_ns() };
    conntrack::backend_packet::<V6>(rp, proto, tcp, now);
    // Over the slot's start, clear of the key (`REPLY_KEY_CLEAR`).
    let () = REPLY_KEY_CLEAR;
    let Some(p) = forward::scratch_params() else {
        return Outcome::Drop(DropReason::MapUpdate);
    };
    let len = ip
        .payload_len()
        .saturating_add(u16::try_from(IPV6_LEN).unwrap_or(u16::MAX));
    let (hop, counter) = match forward::route6(ctx, p, &r.new_src, &r.new_dst, len) {
        Route::Hop(h) => (Some(h), Counter::RemoteReply),
        Route::NoNeighbour => match learned_hop(ctx, p, cfg) {
            Some(h) => (Some(h), Counter::ReplyToLearnedMac),
            // The kernel resolves the client and forwards the translated
            // packet (see `ingress::node_path` for what netfilter may do
            // with it); it decrements the hop limit then.
            None => (None, Counter::FibPassToKernel),
        },
        Route::Fail => return Outcome::Drop(DropReason::NoRoute),
    };
    if hop.is_some() && !finish_before_tx(ctx, ip, &mut l4, proto, l4_len, 0) {
        return Outcome::Drop(DropReason::PartialChecksum);
    }
    let () = flow::ADDRS_WORD_ALIGNED;
    let src = nat::Change6 {
        old: &key.src,
        new: &r.new_src,
        port: r.new_sport,
    };
    let dst = nat::Change6 {
        old: &key.dst,
        new: &r.new_dst,
        port: r.new_dport,
    };
    // SAFETY: 4-aligned fields (`ADDRS_WORD_ALIGNED`): the scratch slot's
    // reply key, written from this packet's addresses, and the reverse
    // entry's.
    unsafe { nat::rewrite6(ip, &mut l4, Some(src), Some(dst)) };
    match hop {
        Some(h) => {
            ip.hop_limit -= 1;
            forward::send(ctx, eth, &h, counter)
        }
        None => Outcome::Pass(counter),
    }
}

/// The next hop the kernel found unresolved (`p` as the lookup left it:
/// egress interface and the hop's address filled in), addressed to the MAC
/// its last Neighbor Solicitation for one of our VIPs came from, when it
/// came in on the interface the frame would leave by (see `ndp`).
#[inline(always)]
fn learned_hop(ctx: &XdpContext, p: &bpf_fib_lookup, cfg: &DatapathConfig) -> Option<NextHop> {
    let ingress = forward::ingress_ifindex(ctx);
    if p.ifindex != ingress {
        return None;
    }
    let v = LEARNED_MACS.get_ptr(HostKey::v6(forward::via6(p)))?;
    // SAFETY: a value pointer the map just returned; read by value.
    let (dmac, on) = unsafe { ((*v).mac, (*v).ifindex) };
    (on == ingress).then_some(NextHop {
        ifindex: ingress,
        smac: cfg.mac,
        dmac,
    })
}

/// An IPv6 fragment to the node (see the module docs and `fragment`).
#[inline(always)]
fn fragment(cur: &mut Cursor<'_>, ip: &Ipv6Hdr) -> Outcome {
    let Some(f) = cur.take::<Ipv6Ext>() else {
        return Outcome::Pass(Counter::PassNodeFragment);
    };
    // Offset (13 bits) and the M flag share bytes 2 and 3; the first
    // fragment has offset 0.
    let first = u16::from_be_bytes([f.data[0], f.data[1]]) & 0xfff8 == 0;
    if !first || (f.next != proto::TCP && f.next != proto::UDP) {
        return Outcome::Pass(Counter::PassNodeFragment);
    }
    let Some(h) = cur.take::<L4Head>() else {
        return Outcome::Pass(Counter::PassNodeFragment);
    };
    let Some(s) = conntrack::scratch() else {
        return Outcome::Pass(Counter::PassNodeFragment);
    };
    // SAFETY: this CPU's scratch slot, ours for this run.
    let key = unsafe {
        let k = &raw mut (*s).rkey;
        let (sport, dport) = (u16::from_be_bytes(h.sport), u16::from_be_bytes(h.dport));
        conntrack::write_key6(k, &ip.src, &ip.dst, sport, dport, f.next);
        &*k
    };
    match REV_NAT.get_ptr(key) {
        // SAFETY: value pointer the map just returned; read by value.
        Some(r) if unsafe { (*r).flags } & flow_flags::REMOTE != 0 => {
            Outcome::Drop(DropReason::FragmentedReply)
        }
        _ => Outcome::Pass(Counter::PassNodeFragment),
    }
}

/// `partial::finish_before_tx` for IPv6: the transport header, `l4_len`
/// bytes long, comes after `ext` bytes of extension headers. A partial
/// checksum is finished only right after the IPv6 header, where a local
/// socket's segment has it (behind a variable run of extension headers the
/// verifier loses the loop's bounds); behind extension headers a checksum
/// that looks partial cannot be finished, and the packet is dropped rather
/// than sent on with a checksum that may be wrong.
#[inline(always)]
fn finish_before_tx(
    ctx: &XdpContext,
    ip: &Ipv6Hdr,
    l4: &mut L4<'_>,
    proto: u8,
    l4_len: usize,
    ext: usize,
) -> bool {
    if l4.check() != csum::fold(pseudo_sum(&ip.src, &ip.dst, proto, l4_len)) {
        return true;
    }
    let Ok(len) = u32::try_from(l4_len) else {
        return false;
    };
    ext == 0 && crate::partial::complete(l4, onehop_finish_checksum6(ctx.ctx, len))
}

/// `partial::onehop_finish_checksum` for IPv6: the full checksum of the
/// `len`-byte segment right after the IPv6 header whose field holds the
/// pseudo-header sum, with bit 16 set; 0 when the segment is not in the
/// frame or longer than the loop covers. Only reads the frame.
///
/// A *global* BPF function (exported by lb-ebpf's build script), for the
/// reason `onehop_finish_checksum` is one.
#[unsafe(no_mangle)]
#[inline(never)]
pub(crate) extern "C" fn onehop_finish_checksum6(ctx: *mut xdp_md, len: u32) -> u32 {
    // Volatile loads keep the context itself the argument (see
    // `partial::onehop_finish_checksum`).
    // SAFETY: `ctx` is the program's context, valid for the whole run.
    let (data, end) = unsafe {
        (
            core::ptr::read_volatile(&raw const (*ctx).data),
            core::ptr::read_volatile(&raw const (*ctx).data_end),
        )
    };
    // SAFETY: the only cursor this function makes; it only reads.
    let mut cur = unsafe { Cursor::new(data as usize, end as usize) };
    if cur.take::<EthHdr>().is_none() || cur.take::<Ipv6Hdr>().is_none() {
        return 0;
    }
    let Some(sum) = cur.sum_ahead(len as usize) else {
        return 0;
    };
    u32::from(!csum::fold(sum)) | 0x1_0000
}
