//! `lb_ingress`: everything that arrives on the uplink.
//!
//! Order: Ethernet (VLAN-tagged frames pass untouched), ARP (see `arp`),
//! then IPv4 with ONE `vips` lookup on the destination — a miss is the hot
//! non-VIP path and passes at once. A hit in a frame addressed to another
//! host's MAC passes untouched (`pass_other_host`). VIP traffic takes the service path,
//! replies to our NAT ports the node path.
//!
//! Service-path policy for packets to a VIP (all dropped and counted, never
//! passed: the kernel has nothing to do with a VIP):
//! - version != 4, IHL < 5, total length < 20: `bad_ip_header`; total length
//!   beyond the frame: `truncated`;
//! - IP options (IHL > 5): `ip_options` — not parsed, by policy;
//! - fragments (MF or offset): `fragment` — ports are only in the first one;
//! - wrong header checksum: `bad_ip_header`;
//! - a martian source (0/8, 127/8, 224/4, 240/4, the node's address):
//!   `martian_source`, before any flow state;
//! - ICMP echo request is answered (see `icmp`; wrong ICMP checksum:
//!   `bad_icmp_checksum`); ICMP errors (destination unreachable, time
//!   exceeded, parameter problem) about a reply we sent are forwarded to
//!   the flow's backend (see `icmp_error`; none: `icmp_error_no_flow`,
//!   `icmp_error_malformed`); other ICMP and protocols other than TCP/UDP:
//!   `unsupported_protocol`;
//! - TTL <= 1 on a packet we would forward: `ttl_exceeded` (an echo request
//!   is answered whatever its TTL: we are its destination);
//! - transport header beyond the IP total length or TCP data offset < 5:
//!   `truncated`;
//! - no live flow, and no service on its `VIP:port`: `no_service` (a live
//!   flow's packet is not looked up: see `service`).
//!
//! A packet of a remote flow (either way) whose transport checksum is
//! partial, as a veth delivers it from a sender that offloads TX checksums,
//! is finished before it is translated and sent on (see `partial`).
//!
//! Direct server return (backends flagged `DIRECT`): see `to_direct`. With
//! it on (`config_flags::DIRECT_RETURN`), only the node that announces a
//! VIP sends its frames on to other nodes: elsewhere a new flow is served
//! by a local backend — the one Maglev picks, or, when it picks another
//! node's, the service's local fallback (`direct_local_fallback`) — or
//! dropped when the node has none (`not_announcer`), and so is a packet of
//! a direct-return flow this node started while it announced the VIP. A
//! frame another node sent us is thus never sent on to a third node, and
//! tables that differ between nodes during an update cannot make one loop.
//! (Two nodes that both take themselves for the announcer, one with a
//! stopped agent, are caught by the next hop: `direct_loop`.)
//!
//! Node path: only a well-formed TCP/UDP packet to a NAT port whose reply
//! 5-tuple is in `rev_nat`, an ICMP error about a packet we sent to a
//! remote backend (see `icmp_error`: sent on to the client) and the first
//! fragment of a remote backend's fragmented reply (dropped, see below)
//! are touched; everything else to the node's address passes untouched
//! (`pass_node_traffic`, `pass_icmp_error_no_flow`, `pass_node_fragment`).
//!
//! Fragment policy. No fragment is translated: only the first carries the
//! ports, and matching the others to it would take a table of datagrams in
//! flight, filled in arrival order, which we do not keep. So:
//! - a fragment to a VIP is dropped (`fragment`); clients learn the path MTU
//!   from the ICMP errors we translate (`icmp_error`) and stop fragmenting;
//! - a remote backend's fragmented reply: its first fragment is dropped
//!   (`fragmented_reply`, see `fragment`), the others pass to the kernel,
//!   which never completes the datagram and so never answers the pod with a
//!   port unreachable;
//! - a local backend's fragmented reply (`lb_egress`): its first fragment
//!   is translated as any reply (`egress_fragmented_reply`), the others
//!   leave with the pod's address and the client never completes the
//!   datagram;
//! - an ICMP error quoting a non-first fragment matches no flow.
//!
//! Either way a reply larger than the path MTU is lost, and counted; what
//! the fragments of a local one leave untranslated is the pod's address.

use core::ptr::NonNull;

use aya_ebpf::{bindings::xdp_action::XDP_PASS, helpers::bpf_ktime_get_ns, programs::XdpContext};
use lb_common::{
    BackendValue, ConntrackValue, Counter, DatapathConfig, DropReason, FlowKey, Ipv4Key,
    ServiceKey, backend_flags, config_flags,
    flow::{self, tcp_flags},
    flow_flags,
    hash::flow_hash,
    proto, vip_flags,
};

use crate::{
    arp,
    conntrack::{self, ReplyKey},
    csum,
    family::V4,
    forward::{self, Route},
    fragment, guard, icmp, icmp_error, ingress6,
    maps::{BACKEND_STATS, CONFIG, SERVICE_STATS, SERVICES, VIPS},
    nat::{self, Endpoint, L4},
    parse::{
        Cursor, ETH_LEN, ETH_P_8021AD, ETH_P_8021Q, ETH_P_ARP, ETH_P_IPV4, ETH_P_IPV6, EthHdr,
        IPV4_LEN, IcmpHdr, Ipv4Hdr, TcpHdr, UdpHdr,
    },
    partial, service, stats,
    verdict::Outcome,
};

/// The whole ingress program; shared by `lb_ingress` and the benchmark.
#[inline(always)]
pub fn process(ctx: &XdpContext) -> u32 {
    stats::count(Counter::IngressPackets);
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
    let Some(eth) = cur.take::<EthHdr>() else {
        return Outcome::Pass(Counter::PassMalformed);
    };
    match eth.proto() {
        ETH_P_IPV4 => {}
        ETH_P_IPV6 => return ingress6::dispatch(ctx, cur, eth, cfg, frame_len),
        ETH_P_ARP => {
            let ifindex = forward::ingress_ifindex(ctx);
            return arp::handle(cur, eth, cfg, ifindex);
        }
        ETH_P_8021Q | ETH_P_8021AD => return Outcome::Pass(Counter::PassVlan),
        _ => return Outcome::Pass(Counter::PassNotIpv4),
    }
    let Some(ip) = cur.take::<Ipv4Hdr>() else {
        return Outcome::Pass(Counter::PassMalformed);
    };
    let Some(vip) = VIPS.get_ptr(Ipv4Key { addr: ip.dst }) else {
        return Outcome::Pass(Counter::PassNotVip);
    };
    // A unicast frame for another host's MAC reaches XDP whenever the NIC
    // does not filter (veth, promiscuous Wi-Fi, a flooding switch after a
    // failover). Only the addressee may act on it: pass it untouched and
    // the kernel drops it as PACKET_OTHERHOST.
    if eth.dst != cfg.mac {
        return Outcome::Pass(Counter::PassOtherHost);
    }
    // SAFETY: value pointer the map just returned; read by value.
    let flags = unsafe { (*vip).flags };
    if flags & vip_flags::SERVICE != 0 {
        service_path(ctx, cur, eth, ip, cfg, frame_len, flags)
    } else if flags & vip_flags::NODE != 0 {
        node_path(ctx, cur, eth, ip, cfg, frame_len)
    } else {
        Outcome::Pass(Counter::PassNotVip)
    }
}

/// A source no host may send from (RFC 1122 3.2.1.3, RFC 5735): this
/// network (0/8), loopback (127/8), multicast (224/4), reserved and limited
/// broadcast (240/4); or our own address. The kernel drops these as martians;
/// a packet we translate never meets its checks, so we drop them ourselves
/// (full NAT would otherwise carry them to a pod under our address).
#[inline(always)]
fn is_martian(src: [u8; 4], cfg: &DatapathConfig) -> bool {
    src[0] == 0 || src[0] == 127 || src[0] >= 224 || src == cfg.node_ip
}

/// Checks an IPv4 header we might act on; returns the number of bytes the
/// header says follow it.
#[inline(always)]
fn check_ipv4(ip: &Ipv4Hdr, frame_len: usize) -> Result<usize, DropReason> {
    if ip.version() != 4 || ip.ihl() < 5 {
        return Err(DropReason::BadIpHeader);
    }
    let tot_len = usize::from(ip.tot_len());
    if tot_len < IPV4_LEN {
        return Err(DropReason::BadIpHeader);
    }
    if tot_len > frame_len - ETH_LEN {
        return Err(DropReason::Truncated);
    }
    if ip.ihl() > 5 {
        return Err(DropReason::IpOptions);
    }
    if ip.is_fragment() {
        return Err(DropReason::Fragment);
    }
    if !csum::ipv4_header_ok(ip) {
        return Err(DropReason::BadIpHeader);
    }
    Ok(tot_len - IPV4_LEN)
}

/// The TCP or UDP header, if the IP payload holds all of it, and the TCP
/// header flags (0 for UDP).
#[inline(always)]
pub fn transport<'a>(
    cur: &mut Cursor<'a>,
    proto: u8,
    l4_len: usize,
) -> Result<(L4<'a>, u8), DropReason> {
    match proto {
        proto::TCP => {
            if l4_len < core::mem::size_of::<TcpHdr>() {
                return Err(DropReason::Truncated);
            }
            let t = cur.take::<TcpHdr>().ok_or(DropReason::Truncated)?;
            if t.doff >> 4 < 5 {
                return Err(DropReason::Truncated);
            }
            let flags = t.flags;
            Ok((L4::tcp(t), flags))
        }
        proto::UDP => {
            if l4_len < core::mem::size_of::<UdpHdr>() {
                return Err(DropReason::Truncated);
            }
            let u = cur.take::<UdpHdr>().ok_or(DropReason::Truncated)?;
            Ok((L4::udp(u), 0))
        }
        _ => Err(DropReason::UnsupportedProtocol),
    }
}

#[inline(always)]
fn service_path(
    ctx: &XdpContext,
    cur: &mut Cursor<'_>,
    eth: &mut EthHdr,
    ip: &mut Ipv4Hdr,
    cfg: &DatapathConfig,
    frame_len: usize,
    vip: u32,
) -> Outcome {
    let l4_len = match check_ipv4(ip, frame_len) {
        Ok(l) => l,
        Err(r) => return Outcome::Drop(r),
    };
    if is_martian(ip.src, cfg) {
        return Outcome::Drop(DropReason::MartianSource);
    }
    let proto = ip.proto;
    if proto == proto::ICMP {
        return match icmp::is_error(cur, l4_len) {
            Ok(true) => Outcome::Counted(icmp_error::to_backend(ctx.ctx, cfg)),
            Ok(false) => Outcome::Counted(icmp::onehop_icmp_echo(ctx.ctx)),
            Err(r) => Outcome::Drop(r),
        };
    }
    if proto != proto::TCP && proto != proto::UDP {
        return Outcome::Drop(DropReason::UnsupportedProtocol);
    }
    if ip.ttl <= 1 {
        return Outcome::Drop(DropReason::TtlExceeded);
    }
    let (mut l4, tcp) = match transport(cur, proto, l4_len) {
        Ok(t) => t,
        Err(r) => return Outcome::Drop(r),
    };
    // The flow's key lives in this CPU's scratch slot, where a new flow's
    // entry is built from it: on the stack its 40 bytes would stay in the
    // packet path's frame across the whole call chain of a new flow.
    let Some(s) = conntrack::scratch() else {
        return Outcome::Drop(DropReason::MapUpdate);
    };
    // SAFETY: this CPU's scratch slot, ours for this run (nothing on the
    // service path uses its `key` but this flow).
    let key = unsafe {
        (*s).key = FlowKey::v4(ip.src, ip.dst, l4.sport(), l4.dport(), proto);
        &(*s).key
    };
    // SAFETY: plain helper call.
    let now = unsafe { bpf_ktime_get_ns() };
    let syn_only = tcp & (tcp_flags::SYN | tcp_flags::ACK) == tcp_flags::SYN;
    // `key_hash` of an IPv4 key, without its test of the family (the IPv6
    // hash's code would take registers, and stack, on this path).
    let hash = flow_hash(cfg.hash_seed, ip.src, ip.dst, l4.sport(), l4.dport(), proto);
    // The live flow first; only a new one looks its service up (see
    // `service`).
    let live = service::live::<V4>(key, syn_only, now, cfg, hash);
    service::stage_hash(s, hash);
    let (service_id, backend_id, b, established, state) = if let Some(l) = live {
        stats::traffic(&SERVICE_STATS, l.service_id, frame_len);
        let state = service::next_state(l.state, proto, tcp);
        (
            l.service_id,
            l.backend_id,
            l.backend,
            NonNull::new(l.ct),
            state,
        )
    } else {
        let skey = ServiceKey::new(ip.dst, l4.dport(), proto);
        let Some(svc) = SERVICES.get_ptr(skey) else {
            return Outcome::Drop(DropReason::NoService);
        };
        // SAFETY: value pointer the map just returned, valid for this run
        // (RCU); read in place, not copied (a copy would take 24 bytes of
        // the frame). A hash map update swaps in a new element, so every
        // field read here is of one version.
        let svc = unsafe { &*svc };
        stats::traffic(&SERVICE_STATS, svc.id, frame_len);
        let picked = match service::pick::<V4>(key, &ip.src, svc, now, cfg, hash, vip) {
            Ok(p) => p,
            Err(r) => return Outcome::Drop(r),
        };
        match service::admit((proto, tcp), now) {
            Ok(state) => (svc.id, picked.backend_id, picked.backend, None, state),
            Err(r) => return Outcome::Drop(r),
        }
    };
    let flow = Flow {
        key,
        service_id,
        backend_id,
        b,
        established,
        state,
        now,
    };
    let out = dispatch(ctx, eth, ip, &mut l4, cfg, &flow, vip);
    if !matches!(out, Outcome::Drop(_)) {
        stats::traffic(&BACKEND_STATS, backend_id, frame_len);
    } else if established.is_none() && proto == proto::TCP {
        // The new flow took no state after all (no route, no NAT port).
        guard::refund();
    }
    out
}

/// Where a flow's packet goes: to a local pod, to a remote one's node by
/// direct return or by full NAT, or nowhere (`not_announcer`). `vip` is the
/// destination's `vip_flags`.
#[inline(always)]
fn dispatch(
    ctx: &XdpContext,
    eth: &mut EthHdr,
    ip: &mut Ipv4Hdr,
    l4: &mut L4<'_>,
    cfg: &DatapathConfig,
    f: &Flow<'_>,
    vip: u32,
) -> Outcome {
    let local = f.b.flags & backend_flags::LOCAL != 0;
    // A flow keeps the way it started (its entry says which); a new one
    // takes its backend's.
    let direct = !local
        && match f.ct() {
            Some(ct) => {
                // SAFETY: conntrack value pointer from this run; read by value.
                let flags = unsafe { (*ct).flags };
                flags & flow_flags::DIRECT != 0
            }
            None => f.b.flags & backend_flags::DIRECT != 0,
        };
    if local {
        return to_local(ip, l4, f);
    }
    if cfg.flags & config_flags::DIRECT_RETURN != 0
        && vip & vip_flags::ANNOUNCE == 0
        && (direct || f.established.is_none())
    {
        // Another node may have sent this frame here (see `not_announcer`).
        return Outcome::Drop(DropReason::NotAnnouncer);
    }
    // After `XDP_TX` nothing would finish a partial checksum (see `partial`).
    if !partial::finish_before_tx(ctx, ip, l4) {
        return Outcome::Drop(DropReason::PartialChecksum);
    }
    // One lookup for both ways out (each its own would take its own stack).
    let hop = match next_hop(ctx, ip.tot_len(), cfg, f, direct) {
        Ok(h) => h,
        Err(r) => return Outcome::Drop(r),
    };
    if direct {
        to_direct(ctx, eth, f, &hop)
    } else {
        to_remote(ctx, eth, ip, l4, cfg, f, &hop)
    }
}

/// The next hop towards a remote backend's node: the one its flow's entry
/// caches (renewed once a second with the timestamps), else the FIB's
/// (then cached). Direct return needs the node itself as the next hop.
#[inline(always)]
fn next_hop(
    ctx: &XdpContext,
    tot_len: u16,
    cfg: &DatapathConfig,
    f: &Flow<'_>,
    direct: bool,
) -> Result<forward::NextHop, DropReason> {
    if let Some(h) = f.ct().and_then(|ct| conntrack::cached_hop(ct, f.now)) {
        return Ok(h);
    }
    match forward::route_to_node(ctx, cfg.node_ip, f.b.node_ip, f.key.proto, tot_len, direct) {
        Route::Hop(h) => {
            if let Some(ct) = f.ct() {
                conntrack::store_hop(ct, &h);
            }
            Ok(h)
        }
        Route::NoNeighbour => Err(DropReason::NoNeighbour),
        Route::Fail => Err(DropReason::NoRoute),
    }
}

struct Flow<'k> {
    key: &'k FlowKey,
    service_id: u32,
    backend_id: u32,
    b: BackendValue,
    /// The flow's conntrack value, when it has one (a pointer with no niche
    /// would make this 16 bytes of the packet path's frame: see [`Self::ct`]).
    established: Option<NonNull<ConntrackValue>>,
    /// The flow's TCP state after this packet.
    state: u8,
    now: u64,
}

impl Flow<'_> {
    /// The flow's conntrack value, when it has one.
    #[inline(always)]
    fn ct(&self) -> Option<*mut ConntrackValue> {
        self.established.map(NonNull::as_ptr)
    }
}

/// Local backend: DNAT to the pod and let the kernel route it (it also
/// decrements the TTL). The client address is kept; `lb_egress` undoes the
/// DNAT on the pod's reply.
#[inline(always)]
fn to_local(ip: &mut Ipv4Hdr, l4: &mut L4<'_>, f: &Flow<'_>) -> Outcome {
    let k = f.key;
    let counter = if let Some(ct) = f.ct() {
        // A local flow's reverse key holds the client's own tuple: no other
        // flow can hold it, so the entry is always ours to put back.
        let reply = ReplyKey::<V4> {
            backend: &f.b.ip,
            backend_port: f.b.port,
            peer: &ip.src,
            peer_port: k.sport,
        };
        conntrack::refresh(ct, k, reply, f.state, f.now);
        Counter::LocalEstablished
    } else {
        let Some(s) = conntrack::scratch() else {
            return Outcome::Drop(DropReason::MapUpdate);
        };
        // SAFETY: this CPU's scratch slot, ours for this run.
        unsafe {
            (*s).ctv = ConntrackValue::new(
                f.backend_id,
                conntrack::backend_addr(&f.b),
                f.service_id,
                0,
                0,
                f.state,
                f.now,
            );
            (*s).backend = f.b;
        }
        conntrack::remember_front::<V4>(k, s, f.b.ip);
        match conntrack::onehop_flow_create() {
            1 => {}
            conntrack::CREATE_TABLE_FULL => return Outcome::Drop(DropReason::FlowTableFull),
            _ => return Outcome::Drop(DropReason::MapUpdate),
        }
        Counter::LocalNewFlow
    };
    nat::rewrite(
        ip,
        l4,
        None,
        Some(Endpoint {
            addr: f.b.ip,
            port: f.b.port,
        }),
        false,
    );
    Outcome::Pass(counter)
}

/// Remote backend: full NAT (node address and a NAT port as source, so the
/// reply comes back through us) and straight out to the backend's node.
/// `hop` is the next hop towards the backend's node, found first: a flow
/// we cannot send must not claim a NAT port.
#[inline(always)]
fn to_remote(
    ctx: &XdpContext,
    eth: &mut EthHdr,
    ip: &mut Ipv4Hdr,
    l4: &mut L4<'_>,
    cfg: &DatapathConfig,
    f: &Flow<'_>,
    hop: &forward::NextHop,
) -> Outcome {
    let k = f.key;
    let mut established = None;
    if let Some(ct) = f.ct() {
        // SAFETY: conntrack value pointer from this run; read by value.
        let port = unsafe { (*ct).nat_port };
        let reply = ReplyKey::<V4> {
            backend: &f.b.ip,
            backend_port: f.b.port,
            peer: &cfg.node_ip,
            peer_port: port,
        };
        if conntrack::refresh(ct, k, reply, f.state, f.now) {
            established = Some(port);
        } else {
            // The port went to another flow (our reverse entry was evicted,
            // or we sat idle while the range was full): sending on with it
            // would mix the two at the backend. Go on as a new flow.
            conntrack::remove_flow(k);
            stats::count(Counter::NatPortLost);
        }
    }
    let (nat_port, counter) = if let Some(port) = established {
        (port, Counter::RemoteEstablished)
    } else {
        let Some(s) = conntrack::scratch() else {
            return Outcome::Drop(DropReason::MapUpdate);
        };
        // SAFETY: this CPU's scratch slot, ours for this run.
        unsafe {
            (*s).ctv = ConntrackValue::new(
                f.backend_id,
                conntrack::backend_addr(&f.b),
                f.service_id,
                0,
                flow_flags::REMOTE,
                f.state,
                f.now,
            )
            .with_hop(hop.ifindex, hop.dmac, hop.smac);
            (*s).backend = f.b;
        }
        let port = match conntrack::onehop_flow_create() {
            0 => return Outcome::Drop(DropReason::NatExhausted),
            conntrack::CREATE_TABLE_FULL => return Outcome::Drop(DropReason::FlowTableFull),
            p => match u16::try_from(p) {
                Ok(p) => p,
                Err(_) => return Outcome::Drop(DropReason::MapUpdate),
            },
        };
        (port, Counter::RemoteNewFlow)
    };
    nat::rewrite(
        ip,
        l4,
        Some(Endpoint {
            addr: cfg.node_ip,
            port: nat_port,
        }),
        Some(Endpoint {
            addr: f.b.ip,
            port: f.b.port,
        }),
        true,
    );
    forward::send(ctx, eth, hop, counter)
}

/// Remote backend on our segment, direct server return: the frame goes to
/// the backend's node as it came but for its Ethernet addresses (no IP or
/// transport field changes, so no checksum work and no MTU cost); that
/// node's `lb_ingress` picks the same backend (same tables), local there,
/// and its `lb_egress` sends the pod's reply straight to the client. The
/// flow's one write is its conntrack entry.
#[inline(always)]
fn to_direct(ctx: &XdpContext, eth: &mut EthHdr, f: &Flow<'_>, hop: &forward::NextHop) -> Outcome {
    // The frame came from the node we would send it to: both of us take
    // ourselves for the announcer, and it would bounce between us.
    if eth.src == hop.dmac {
        return Outcome::Drop(DropReason::DirectLoop);
    }
    let state = flow::direct_state(f.state);
    let counter = if let Some(ct) = f.ct() {
        conntrack::refresh_direct(ct, state, f.now);
        Counter::DirectEstablished
    } else {
        let Some(s) = conntrack::scratch() else {
            return Outcome::Drop(DropReason::MapUpdate);
        };
        // SAFETY: this CPU's scratch slot, ours for this run.
        unsafe {
            (*s).ctv = ConntrackValue::new(
                f.backend_id,
                conntrack::backend_addr(&f.b),
                f.service_id,
                0,
                flow_flags::REMOTE | flow_flags::DIRECT,
                state,
                f.now,
            )
            .with_hop(hop.ifindex, hop.dmac, hop.smac);
            (*s).backend = f.b;
        }
        match conntrack::onehop_flow_create() {
            1 => {}
            conntrack::CREATE_TABLE_FULL => return Outcome::Drop(DropReason::FlowTableFull),
            _ => return Outcome::Drop(DropReason::MapUpdate),
        }
        Counter::DirectNewFlow
    };
    forward::send(ctx, eth, hop, counter)
}

/// A remote backend's reply to one of our NAT ports: translate it back to
/// `VIP:port → client` and send it to the client.
#[inline(always)]
fn node_path(
    ctx: &XdpContext,
    cur: &mut Cursor<'_>,
    eth: &mut EthHdr,
    ip: &mut Ipv4Hdr,
    cfg: &DatapathConfig,
    frame_len: usize,
) -> Outcome {
    let l4_len = match check_ipv4(ip, frame_len) {
        Ok(l) => l,
        Err(DropReason::Fragment) => {
            return Outcome::Counted(fragment::to_node(ctx.ctx, cfg));
        }
        Err(_) => return Outcome::Pass(Counter::PassNodeTraffic),
    };
    let proto = ip.proto;
    // Nothing from a martian source is translated (an ICMP error names its
    // flow in its quote, whatever its own source): the kernel's to drop.
    if is_martian(ip.src, cfg) {
        return Outcome::Pass(Counter::PassNodeTraffic);
    }
    if proto == proto::ICMP {
        return match cur.take::<IcmpHdr>() {
            Some(h) if l4_len >= core::mem::size_of::<IcmpHdr>() && icmp_error::is_error(h.ty) => {
                Outcome::Counted(icmp_error::to_client(ctx.ctx, cfg))
            }
            _ => Outcome::Pass(Counter::PassNodeTraffic),
        };
    }
    if proto != proto::TCP && proto != proto::UDP {
        return Outcome::Pass(Counter::PassNodeTraffic);
    }
    let Ok((mut l4, tcp)) = transport(cur, proto, l4_len) else {
        return Outcome::Pass(Counter::PassNodeTraffic);
    };
    let dport = l4.dport();
    if dport < cfg.nat_port_min || dport > cfg.nat_port_max {
        return Outcome::Pass(Counter::PassNodeTraffic);
    }
    let key = FlowKey::v4(ip.src, ip.dst, l4.sport(), dport, proto);
    let Some(rp) = crate::maps::REV_NAT.get_ptr_mut(key) else {
        return Outcome::Pass(Counter::PassNodeTraffic);
    };
    // SAFETY: value pointer the map just returned; the fields we need are
    // read by value.
    let (flags, src, sport, dst, dport) = unsafe {
        (
            (*rp).flags,
            flow::v4_of(&(*rp).new_src),
            (*rp).new_sport,
            flow::v4_of(&(*rp).new_dst),
            (*rp).new_dport,
        )
    };
    if flags & flow_flags::REMOTE == 0 {
        return Outcome::Pass(Counter::PassNodeTraffic);
    }
    if ip.ttl <= 1 {
        return Outcome::Drop(DropReason::TtlExceeded);
    }
    // SAFETY: plain helper call.
    let now = unsafe { bpf_ktime_get_ns() };
    conntrack::backend_packet::<V4>(rp, proto, tcp, now);
    let mut learned = false;
    let hop = match forward::route(ctx, src, dst, proto, ip.tot_len()) {
        Route::Hop(h) => Some(h),
        // The kernel has not resolved the client (or its router): we
        // answered its ARP, so the kernel never heard from it. Send to the
        // MAC that ARP came from; without one, the kernel resolves it and
        // forwards the translated packet (its source is the VIP, not ours,
        // so it is no martian) — unless netfilter drops it first, as
        // kube-proxy's `ctstate INVALID` rule does with a reply of a flow
        // the kernel never saw. The kernel decrements the TTL then, so we
        // do not.
        Route::NoNeighbour => {
            let mut mac = [0u8; 8];
            mac[..6].copy_from_slice(&cfg.mac);
            learned = forward::to_learned_mac(
                ctx,
                u32::from_ne_bytes(src),
                u32::from_ne_bytes(dst),
                u64::from_le_bytes(mac),
            );
            None
        }
        Route::Fail => return Outcome::Drop(DropReason::NoRoute),
    };
    if (hop.is_some() || learned) && !partial::finish_before_tx(ctx, ip, &mut l4) {
        return Outcome::Drop(DropReason::PartialChecksum);
    }
    nat::rewrite(
        ip,
        &mut l4,
        Some(Endpoint {
            addr: src,
            port: sport,
        }),
        Some(Endpoint {
            addr: dst,
            port: dport,
        }),
        hop.is_some() || learned,
    );
    match hop {
        Some(h) => forward::send(ctx, eth, &h, Counter::RemoteReply),
        // Addressed by `to_learned_mac`; back out of the interface it came in on.
        None if learned => Outcome::Tx(Counter::ReplyToLearnedMac),
        None => Outcome::Pass(Counter::FibPassToKernel),
    }
}
