//! `lb_service6`: the flow of an IPv6 packet to a served `[VIP]:port`.
//! `lb_ingress` finds the VIP and checks the IPv6 header (see `ingress6`),
//! then tail-calls this program (slot `xdp_slot::SERVICE6` of
//! `xdp_programs`) with the VIP's flags in this CPU's scratch slot: a
//! flow's 16-byte addresses take more stack than `lb_ingress` has left
//! beside IPv4's path. This program checks the rest of the written policy
//! (extension headers, protocol, hop limit, transport header), finds the
//! packet's flow and, for a new one, looks the service up (see `service`).
//!
//! The flow's work is IPv4's (`ingress`), with the same code for the
//! choice of a backend (`service`, through `family::V6`: `backends6`,
//! `src_ranges6`, the affinity and flow keys of family 6) and the same flow
//! table. A local backend gets the packet by DNAT (`XDP_PASS`); its reply
//! goes back through `lb_egress6`.
//!
//! A backend on another node is reached by direct server return when its
//! node runs the agent and is on our segment (`to_direct`: the frame goes
//! to that node unchanged but for its Ethernet addresses); any other
//! remote backend by full NAT, in a program of its own (`lb_nat6`, see
//! `nat6`).

use aya_ebpf::{
    bindings::{
        xdp_action::{XDP_DROP, XDP_PASS},
        xdp_md,
    },
    helpers::bpf_ktime_get_ns,
    programs::XdpContext,
};
use lb_common::{
    BackendValue, ConntrackValue, Counter, DatapathConfig, DropReason, FlowKey, FlowScratch,
    ServiceKey6, backend_flags, config_flags,
    flow::{self, flow_flags, tcp_flags},
    maps::xdp_slot,
    proto, vip_flags,
};

use crate::{
    conntrack::{self, ReplyKey},
    family::{self, Backend6, Family as _, V6},
    flowtable, forward, guard,
    ingress::transport,
    ingress6::skip_extensions,
    maps::{BACKEND_STATS, BACKENDS6, CONFIG, SERVICE_STATS, SERVICES6, XDP_PROGRAMS},
    nat::{self, L4},
    nat6,
    parse::{Cursor, ETH_LEN, EthHdr, IPV6_LEN, Ipv6Hdr},
    service, stats,
    verdict::Outcome,
};

/// The whole program (`lb_ingress` counted the frame already).
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
    flow_path(ctx, &mut cur, cfg, frame_len).finish()
}

/// A packet to a service address, which `lb_ingress` found: the written
/// policy (see `ingress6`), then its flow.
#[inline(always)]
fn flow_path(
    ctx: &XdpContext,
    cur: &mut Cursor<'_>,
    cfg: &DatapathConfig,
    frame_len: usize,
) -> Outcome {
    let (Some(eth), Some(ip)) = (cur.take::<EthHdr>(), cur.take::<Ipv6Hdr>()) else {
        return Outcome::Drop(DropReason::Truncated);
    };
    // `lb_ingress` checked the header against the policy; the length is
    // checked again, as this program steps through the payload.
    let payload = usize::from(ip.payload_len());
    if payload > frame_len - ETH_LEN - IPV6_LEN {
        return Outcome::Drop(DropReason::Truncated);
    }
    let (proto, ext) = match skip_extensions(cur, ip.next) {
        Ok(t) => t,
        Err(r) => return Outcome::Drop(r),
    };
    let Some(l4_len) = payload.checked_sub(ext) else {
        return Outcome::Drop(DropReason::Truncated);
    };
    if proto == proto::ICMPV6 {
        // Nothing we answer comes behind extension headers (see `ingress6`).
        return Outcome::Drop(DropReason::Ipv6ExtHeader);
    }
    if proto != proto::TCP && proto != proto::UDP {
        return Outcome::Drop(DropReason::UnsupportedProtocol);
    }
    if ip.hop_limit <= 1 {
        return Outcome::Drop(DropReason::TtlExceeded);
    }
    let (mut l4, tcp) = match transport(cur, proto, l4_len) {
        Ok(t) => t,
        Err(r) => return Outcome::Drop(r),
    };
    let Some(s) = conntrack::scratch() else {
        return Outcome::Drop(DropReason::MapUpdate);
    };
    // The flow's key first: what follows reads the addresses from it, in
    // words, not from the packet byte by byte.
    // SAFETY: this CPU's scratch slot, ours for this run.
    let key = unsafe {
        let k = &raw mut (*s).key;
        conntrack::write_key6(k, &ip.src, &ip.dst, l4.sport(), l4.dport(), proto);
        &*k
    };
    // SAFETY: this CPU's scratch slot, ours for this run; `lb_ingress`
    // wrote the VIP's flags there before its tail call.
    let vip = unsafe { (*s).vip_flags };
    // SAFETY: plain helper call.
    let now = unsafe { bpf_ktime_get_ns() };
    let syn_only = tcp & (tcp_flags::SYN | tcp_flags::ACK) == tcp_flags::SYN;
    let hash = V6::key_hash(cfg.hash_seed, key);
    // The live flow first; only a new one looks its service up (see
    // `service`).
    let live = service::live::<V6>(key, syn_only, now, cfg, hash);
    service::stage_hash(s, hash);
    let (service_id, backend_id, b, ct, state) = if let Some(l) = live {
        stats::traffic(&SERVICE_STATS, l.service_id, frame_len);
        let state = service::next_state(l.state, proto, tcp);
        (l.service_id, l.backend_id, l.backend, Some(l.ct), state)
    } else {
        let Some(svc) = SERVICES6.get_ptr(ServiceKey6::new(key.dst, key.dport, proto)) else {
            return Outcome::Drop(DropReason::NoService);
        };
        // SAFETY: value pointer the map just returned, valid for this run;
        // read in place (see `ingress::service_path`).
        let svc = unsafe { &*svc };
        stats::traffic(&SERVICE_STATS, svc.id, frame_len);
        let picked = match service::pick::<V6>(key, &key.src, svc, now, cfg, hash, vip) {
            Ok(p) => p,
            Err(r) => return Outcome::Drop(r),
        };
        match service::admit((proto, tcp), now) {
            Ok(state) => (svc.id, picked.backend_id, picked.backend, None, state),
            Err(r) => return Outcome::Drop(r),
        }
    };
    let out = if V6::flags(&b) & backend_flags::LOCAL != 0 {
        to_local(ip, &mut l4, key, service_id, backend_id, &b, ct, state, now)
    } else {
        // A flow keeps the way it started (its entry says which); a new one
        // takes its backend's.
        let direct = match ct {
            // SAFETY: conntrack value pointer from this run; read by value.
            Some(ct) => (unsafe { (*ct).flags }) & flow_flags::DIRECT != 0,
            None => V6::flags(&b) & backend_flags::DIRECT != 0,
        };
        if cfg.flags & config_flags::DIRECT_RETURN != 0
            && vip & vip_flags::ANNOUNCE == 0
            && (direct || ct.is_none())
        {
            // Another node may have sent this frame here (see `ingress`).
            Outcome::Drop(DropReason::NotAnnouncer)
        } else if direct {
            to_direct(ctx, service_id, backend_id, &b, ct, state, now)
        } else {
            to_nat(
                ctx,
                (eth, ip, &mut l4),
                (proto, l4_len, ext),
                cfg,
                key,
                (service_id, backend_id),
                &b,
                ct,
                state,
                now,
            )
        }
    };
    match out {
        Outcome::Drop(_) => {
            if ct.is_none() && proto == proto::TCP {
                guard::refund();
            }
        }
        // A direct-return frame that `onehop_direct6` did not send on (no
        // route, or a loop): its reason is counted, and its new flow keeps
        // its entry and token, as a half-open flow whose next packet looks
        // for the way again.
        Outcome::Counted(XDP_DROP) => {}
        _ => stats::traffic(&BACKEND_STATS, backend_id, frame_len),
    }
    out
}

/// Remote backend that direct return cannot reach: full NAT. An
/// established flow with nothing due (as `conntrack::refresh` decides: its
/// timestamps refreshed within the second, the state unchanged, its next
/// hop cached as fresh) is translated and sent from here
/// (`nat6::translate_and_send`); any other goes to `lb_nat6` (see `nat6`),
/// which this tail-calls with the flow staged in this CPU's scratch slot; it
/// counts the backend's traffic and refunds the token of a new flow it
/// drops. Returns only when that program's slot is empty.
#[expect(
    clippy::too_many_arguments,
    reason = "inlined into its one caller, whose registers these are"
)]
#[inline(always)]
fn to_nat(
    ctx: &XdpContext,
    (eth, ip, l4): (&mut EthHdr, &mut Ipv6Hdr, &mut L4<'_>),
    shape: (u8, usize, usize),
    cfg: &DatapathConfig,
    key: &FlowKey,
    (service_id, backend_id): (u32, u32),
    b: &Backend6,
    ct: Option<*mut ConntrackValue>,
    state: u8,
    now: u64,
) -> Outcome {
    if let Some(ct) = ct {
        // SAFETY: conntrack value pointer from this run; read by value.
        let (old, port) = unsafe { ((*ct).state, (*ct).nat_port) };
        if old == state
            && port != 0
            && cfg.node_ip6 != [0; 16]
            && let Some(hop) = conntrack::cached_hop(ct, now)
        {
            let to = nat6::Translation {
                key,
                node: &cfg.node_ip6,
                port,
                backend: b.value(),
            };
            return nat6::translate_and_send(
                ctx,
                eth,
                ip,
                l4,
                shape,
                &to,
                &hop,
                Counter::RemoteEstablished,
            );
        }
    }
    let Some(s) = conntrack::scratch() else {
        return Outcome::Drop(DropReason::MapUpdate);
    };
    stage(s, service_id, backend_id, b, flow_flags::REMOTE, state, now);
    let mode = if ct.is_some() {
        nat6::LOOK_UP
    } else {
        nat6::NEW
    };
    // SAFETY: this CPU's scratch slot, ours for this run, tail calls
    // included.
    unsafe { (*s).established = mode };
    // SAFETY: a tail call from the program itself (this function is
    // inlined into it), into an XDP program of this object.
    unsafe { XDP_PROGRAMS.tail_call(ctx, xdp_slot::NAT6) };
    Outcome::Drop(DropReason::Ipv6Unserved)
}

/// Remote backend whose node runs the agent, on our segment: direct server
/// return, as IPv4's `ingress::to_direct`. The frame goes to that node as it
/// came but for its Ethernet addresses; the node's `lb_service6` picks the
/// same backend, local there, and its `lb_egress6` answers the client from
/// the VIP. A new flow's one write is its flow-table entry, made before the
/// next hop is looked up (in `onehop_direct6`, out of line): a packet that
/// finds no route is dropped, and the flow's next packet looks again.
#[inline(always)]
fn to_direct(
    ctx: &XdpContext,
    service_id: u32,
    backend_id: u32,
    b: &Backend6,
    ct: Option<*mut ConntrackValue>,
    state: u8,
    now: u64,
) -> Outcome {
    let state = flow::direct_state(state);
    let mode = if let Some(ct) = ct {
        // Before the refresh: the cached hop is as fresh as the timestamps,
        // which the refresh renews once a second (as IPv4's `next_hop`).
        let cached = conntrack::cached_hop(ct, now);
        conntrack::refresh_direct(ct, state, now);
        match (cached, conntrack::scratch()) {
            (Some(h), Some(s)) => {
                // SAFETY: this CPU's scratch slot, ours for this run.
                conntrack::store_hop(unsafe { &raw mut (*s).ctv }, &h);
                DIRECT6_CACHED
            }
            _ => DIRECT6_LOOKUP,
        }
    } else {
        let Some(s) = conntrack::scratch() else {
            return Outcome::Drop(DropReason::MapUpdate);
        };
        let flags = flow_flags::REMOTE | flow_flags::DIRECT;
        stage(s, service_id, backend_id, b, flags, state, now);
        match conntrack::onehop_flow_create() {
            1 => {}
            conntrack::CREATE_TABLE_FULL => return Outcome::Drop(DropReason::FlowTableFull),
            _ => return Outcome::Drop(DropReason::MapUpdate),
        }
        DIRECT6_NEW
    };
    Outcome::Counted(onehop_direct6(ctx.ctx, backend_id, mode))
}

/// [`onehop_direct6`]'s modes: a new flow (its next packet caches the
/// hop); an established flow whose next hop is to be looked up and cached;
/// one whose cached hop the caller put in the scratch slot's `ctv`.
const DIRECT6_NEW: u32 = 1;
const DIRECT6_LOOKUP: u32 = 0;
const DIRECT6_CACHED: u32 = 2;

/// The hop in the scratch slot's `ctv` and the flow's key there must not be
/// where `onehop_direct6`'s lookup parameters lie over the slot.
const _: () = assert!(
    core::mem::offset_of!(FlowScratch, ctv)
        >= core::mem::size_of::<aya_ebpf::bindings::bpf_fib_lookup>()
        && core::mem::offset_of!(FlowScratch, key)
            >= core::mem::size_of::<aya_ebpf::bindings::bpf_fib_lookup>()
);

/// The direct-return frame of [`to_direct`] on its way: the next hop
/// towards the node of backend `backend_id` (which must be that node
/// itself: beyond a router the frame would come back to the announcer),
/// the frame addressed to it, and the outcome counted (`direct_new_flow`
/// for `DIRECT6_NEW`, else `direct_established`). With `DIRECT6_CACHED` the
/// hop is the one the caller put in the scratch slot's `ctv`; else it is
/// looked up in the FIB and, for `DIRECT6_LOOKUP`, cached in the flow's
/// entry. Returns the XDP action.
///
/// A *global* BPF function (exported by lb-ebpf's build script), so its
/// frame is not `lb_service6`'s (full); the lookup's 64-byte parameters are
/// laid over the scratch slot's start, the flow being created by then.
#[unsafe(no_mangle)]
#[inline(never)]
pub(crate) extern "C" fn onehop_direct6(ctx: *mut xdp_md, backend_id: u32, mode: u32) -> u32 {
    let counter = if mode == DIRECT6_NEW {
        Counter::DirectNewFlow
    } else {
        Counter::DirectEstablished
    };
    direct_hop(&XdpContext::new(ctx), backend_id, mode, counter).finish()
}

#[inline(always)]
fn direct_hop(ctx: &XdpContext, backend_id: u32, mode: u32, counter: Counter) -> Outcome {
    // Volatile loads keep the context itself the argument (see
    // `partial::onehop_finish_checksum`).
    // SAFETY: `ctx` is the program's context, valid for the whole run.
    let (data, end) = unsafe {
        (
            core::ptr::read_volatile(&raw const (*ctx.ctx).data),
            core::ptr::read_volatile(&raw const (*ctx.ctx).data_end),
        )
    };
    // SAFETY: the only cursor over the packet while this runs: the caller
    // holds none it uses after the call.
    let mut cur = unsafe { Cursor::new(data as usize, end as usize) };
    let (Some(eth), Some(ip)) = (cur.take::<EthHdr>(), cur.take::<Ipv6Hdr>()) else {
        return Outcome::Drop(DropReason::Truncated);
    };
    let Some(s) = conntrack::scratch() else {
        return Outcome::Drop(DropReason::MapUpdate);
    };
    let hop = if mode == DIRECT6_CACHED {
        // SAFETY: this CPU's scratch slot, where the caller put the hop.
        conntrack::stored_hop(unsafe { &raw const (*s).ctv })
    } else {
        let Some(b) = BACKENDS6.get_ptr(backend_id) else {
            return Outcome::Drop(DropReason::NoBackend);
        };
        let Some(p) = forward::scratch_params() else {
            return Outcome::Drop(DropReason::MapUpdate);
        };
        // SAFETY: a value pointer `backends6` returned in this run.
        let node = unsafe { &(*b).node_ip };
        // The packet's whole length, as the lookup's MTU check wants it.
        let len = ip
            .payload_len()
            .saturating_add(u16::try_from(IPV6_LEN).unwrap_or(u16::MAX));
        let forward::Route::Hop(hop) = forward::route6_to_node(ctx, p, &ip.src, node, len) else {
            return Outcome::Drop(DropReason::NoRoute);
        };
        if mode == DIRECT6_LOOKUP {
            // Cached in the flow's entry, found again by the key
            // `lb_service6` left in the slot (past the lookup's parameters,
            // asserted above): carried across this call, the entry's
            // pointer would take a stack slot the caller has none of.
            // SAFETY: this CPU's scratch slot, ours for this run.
            let key = unsafe { &(*s).key };
            if let Some(ct) = flowtable::lookup::<V6>(key) {
                conntrack::store_hop(ct, &hop);
            }
        }
        hop
    };
    if eth.src == hop.dmac {
        return Outcome::Drop(DropReason::DirectLoop);
    }
    forward::send(ctx, eth, &hop, counter)
}

/// Local backend: DNAT to the pod and let the kernel route it; the client's
/// address is kept, and `lb_egress6` undoes the DNAT on the pod's reply. A
/// new flow's one write is its flow-table slot (its front is recorded once
/// per endpoint, see `local`), as with IPv4.
#[expect(
    clippy::too_many_arguments,
    reason = "inlined into its one caller, whose registers these are"
)]
#[inline(always)]
fn to_local(
    ip: &mut Ipv6Hdr,
    l4: &mut L4<'_>,
    k: &FlowKey,
    service_id: u32,
    backend_id: u32,
    b: &Backend6,
    ct: Option<*mut ConntrackValue>,
    state: u8,
    now: u64,
) -> Outcome {
    let counter = if let Some(ct) = ct {
        let reply = ReplyKey::<V6> {
            backend: b.ip(),
            backend_port: V6::port(b),
            peer: &ip.src,
            peer_port: k.sport,
        };
        conntrack::refresh(ct, k, reply, state, now);
        Counter::LocalEstablished
    } else {
        let Some(s) = conntrack::scratch() else {
            return Outcome::Drop(DropReason::MapUpdate);
        };
        stage(s, service_id, backend_id, b, 0, state, now);
        conntrack::remember_front::<V6>(k, s, *b.ip());
        match conntrack::onehop_flow_create() {
            1 => {}
            conntrack::CREATE_TABLE_FULL => return Outcome::Drop(DropReason::FlowTableFull),
            _ => return Outcome::Drop(DropReason::MapUpdate),
        }
        Counter::LocalNewFlow
    };
    let () = flow::ADDRS_WORD_ALIGNED;
    let dst = nat::Change6 {
        old: &k.dst,
        new: b.ip(),
        port: V6::port(b),
    };
    // SAFETY: 4-aligned fields (`ADDRS_WORD_ALIGNED`): `k` is the scratch
    // slot's key, `b` a `backends6` value.
    unsafe { nat::rewrite6(ip, l4, None, Some(dst)) };
    Outcome::Pass(counter)
}

/// Puts a new flow's entry in this CPU's scratch slot `s` for
/// `conntrack::onehop_flow_create`. An IPv6 flow's `backend` holds its port
/// and flags only (the create path reads the address from `ctv`).
#[inline(always)]
fn stage(
    s: *mut FlowScratch,
    service_id: u32,
    backend_id: u32,
    b: &Backend6,
    flags: u16,
    state: u8,
    now: u64,
) {
    let () = flow::ADDRS_WORD_ALIGNED;
    // SAFETY: this CPU's scratch slot, ours for this run; the address is
    // copied between 4-aligned fields (`ADDRS_WORD_ALIGNED`).
    // Field by field: a whole value built first would be a 56-byte
    // temporary on the stack, which this path has none of to spare. Every
    // new flow comes here, and every packet of a full-NAT flow whose entry
    // is due: the byte arrays are zeroed with `conntrack::zero` (see
    // there), not by calls of `memset`.
    unsafe {
        let v = &raw mut (*s).ctv;
        (*v).backend_id = backend_id;
        (*v).service_id = service_id;
        family::put_words(&raw mut (*v).backend_ip, family::words(b.ip()));
        (*v).nat_port = 0;
        (*v).flags = flags;
        (*v).state = state;
        conntrack::zero(&raw mut (*v)._pad);
        (*v).last_seen_ns = now;
        (*v).hop_ifindex = 0;
        conntrack::zero(&raw mut (*v).hop_dmac);
        conntrack::zero(&raw mut (*v).hop_smac);
        (*s).backend = BackendValue::new([0; 4], [0; 4], V6::port(b), V6::flags(b));
    }
}
