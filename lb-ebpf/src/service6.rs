//! `lb_service6`: the flow of an IPv6 packet to a served `[VIP]:port`.
//! `lb_ingress6` checks the packet against the written policy and finds
//! the service, then tail-calls this program (slot `xdp_slot::SERVICE6`
//! of `xdp_programs`): a flow's 16-byte addresses take more stack than
//! `lb_ingress6` has left beside its Neighbor Discovery chain.
//!
//! As IPv4's service path (`ingress`), with the same code for the choice
//! of a backend (`service`, through `family::V6`: `backends6`,
//! `src_ranges6`, the affinity and flow keys of family 6) and the same flow
//! table. A local backend gets the packet by DNAT (`XDP_PASS`); its reply
//! goes back through `lb_egress6`.
//!
//! Not built yet (issue 14): other nodes' IPv6 backends (direct return,
//! full NAT): a flow Maglev gives one of them is dropped (`no_route`).

use aya_ebpf::{bindings::xdp_action::XDP_PASS, helpers::bpf_ktime_get_ns, programs::XdpContext};
use lb_common::{
    BackendValue, ConntrackValue, Counter, DatapathConfig, DropReason, FlowKey, ServiceKey6,
    backend_flags, config_flags,
    flow::{self, Side, tcp_flags},
    proto, vip_flags,
};

use crate::{
    conntrack::{self, ReplyKey},
    family::{Backend6, Family as _, V6},
    guard,
    ingress::transport,
    ingress6::skip_extensions,
    maps::{BACKEND_STATS, CONFIG, SERVICE_STATS, SERVICES6},
    nat::{self, L4},
    parse::{Cursor, ETH_LEN, EthHdr, IPV6_LEN, Ipv6Hdr},
    service::{self, Choice},
    stats,
    verdict::Outcome,
};

/// The whole program (`lb_ingress6` checked the packet).
#[inline(always)]
pub fn process(ctx: &XdpContext) -> u32 {
    let Some(cfg) = CONFIG.get(0) else {
        return XDP_PASS;
    };
    let frame_len = ctx.data_end() - ctx.data();
    // SAFETY: the only cursor over this packet during this run.
    let mut cur = unsafe { Cursor::new(ctx.data(), ctx.data_end()) };
    flow_path(&mut cur, cfg, frame_len).finish()
}

/// The checks `lb_ingress6` made, made again where they give what this
/// program needs (the headers, the service, the VIP's flags); a packet
/// that fails one here was changed under us, and is dropped.
#[inline(always)]
fn flow_path(cur: &mut Cursor<'_>, cfg: &DatapathConfig, frame_len: usize) -> Outcome {
    let (Some(_), Some(ip)) = (cur.take::<EthHdr>(), cur.take::<Ipv6Hdr>()) else {
        return Outcome::Drop(DropReason::Truncated);
    };
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
    let (mut l4, tcp) = match transport(cur, proto, l4_len) {
        Ok(t) => t,
        Err(r) => return Outcome::Drop(r),
    };
    // The service, looked up here only: `lb_ingress6` checked the rest.
    let Some(svc) = SERVICES6.get_ptr(ServiceKey6::new(ip.dst, l4.dport(), proto)) else {
        return Outcome::Drop(DropReason::NoService);
    };
    // SAFETY: value pointer the map just returned, valid for this run; read
    // in place (see `ingress::service_path`).
    let svc = unsafe { &*svc };
    stats::traffic(&SERVICE_STATS, svc.id, frame_len);
    let Some(s) = conntrack::scratch() else {
        return Outcome::Drop(DropReason::MapUpdate);
    };
    // SAFETY: this CPU's scratch slot, ours for this run; `lb_ingress6`
    // wrote the VIP's flags there before its tail call.
    let vip = unsafe { (*s).vip_flags };
    // SAFETY: as above.
    // Field by field, the addresses straight from the packet: a `FlowKey`
    // built first would be a 40-byte temporary on the stack.
    let key = unsafe {
        let k = &raw mut (*s).key;
        core::ptr::copy_nonoverlapping(&raw const ip.src, &raw mut (*k).src, 1);
        core::ptr::copy_nonoverlapping(&raw const ip.dst, &raw mut (*k).dst, 1);
        (*k).sport = l4.sport();
        (*k).dport = l4.dport();
        (*k).proto = proto;
        (*k).family = V6::FAMILY;
        (*k)._pad = [0; 2];
        &*k
    };
    // SAFETY: plain helper call.
    let now = unsafe { bpf_ktime_get_ns() };
    let syn_only = tcp & (tcp_flags::SYN | tcp_flags::ACK) == tcp_flags::SYN;
    let hash = V6::key_hash(cfg.hash_seed, key);
    // With direct return only the announcer sends new flows on to other
    // nodes (see `ingress`).
    let sends_on = cfg.flags & config_flags::DIRECT_RETURN == 0 || vip & vip_flags::ANNOUNCE != 0;
    let (backend_id, b, ct, state) =
        match service::choose::<V6>(key, ip.src, svc, syn_only, now, cfg, hash, sends_on) {
            Ok(Choice::Established {
                backend_id,
                backend,
                ct,
                state,
            }) => {
                let next = if proto == proto::TCP {
                    flow::next_state(state, tcp, Side::Client)
                } else {
                    state
                };
                if proto == proto::TCP && flow::proves(state, next) {
                    guard::refund();
                }
                (backend_id, backend, Some(ct), next)
            }
            Ok(Choice::New {
                backend_id,
                backend,
            }) => {
                // SAFETY: this CPU's scratch slot, ours for this run.
                unsafe { (*s).hash = hash };
                if proto == proto::TCP && !guard::admit(now) {
                    return Outcome::Drop(DropReason::HalfOpenLimit);
                }
                (backend_id, backend, None, flow::initial_state(proto, tcp))
            }
            Err(r) => return Outcome::Drop(r),
        };
    if V6::flags(&b) & backend_flags::LOCAL == 0 {
        // See the module docs: other nodes' IPv6 backends are not reached yet.
        if ct.is_none() && proto == proto::TCP {
            guard::refund();
        }
        return Outcome::Drop(DropReason::NoRoute);
    }
    let out = to_local(ip, &mut l4, key, svc.id, backend_id, &b, ct, state, now);
    if !matches!(out, Outcome::Drop(_)) {
        stats::traffic(&BACKEND_STATS, backend_id, frame_len);
    } else if ct.is_none() && proto == proto::TCP {
        guard::refund();
    }
    out
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
        // SAFETY: this CPU's scratch slot, ours for this run. An IPv6
        // flow's `backend` holds its port and flags only (the create path
        // reads the address from `ctv`).
        // Field by field: a whole value built first would be a 56-byte
        // temporary on the stack, which this path has none of to spare.
        unsafe {
            let v = &raw mut (*s).ctv;
            (*v).backend_id = backend_id;
            (*v).service_id = service_id;
            core::ptr::copy_nonoverlapping(b.ip(), &raw mut (*v).backend_ip, 1);
            (*v).nat_port = 0;
            (*v).flags = 0;
            (*v).state = state;
            (*v)._pad = [0; 3];
            (*v).last_seen_ns = now;
            (*v).hop_ifindex = 0;
            (*v).hop_dmac = [0; 6];
            (*v).hop_smac = [0; 6];
            (*s).backend = BackendValue::new([0; 4], [0; 4], V6::port(b), V6::flags(b));
        }
        conntrack::remember_front::<V6>(k, s, *b.ip());
        match conntrack::onehop_flow_create() {
            1 => {}
            conntrack::CREATE_TABLE_FULL => return Outcome::Drop(DropReason::FlowTableFull),
            _ => return Outcome::Drop(DropReason::MapUpdate),
        }
        Counter::LocalNewFlow
    };
    nat::rewrite_dst6(ip, l4, b.ip(), V6::port(b));
    Outcome::Pass(counter)
}
