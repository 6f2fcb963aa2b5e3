//! Fragments addressed to the node (the fragment policy as a whole is in
//! the README, "What the data path does with odd packets").
//!
//! Only a datagram's first fragment carries its ports, so only it can be
//! matched to a flow without keeping state per datagram. Translating the
//! others would need a table of datagrams in flight (source, destination,
//! protocol, IP id → flow) filled by the first fragment, which must then
//! arrive first; we keep none. A remote backend's fragmented reply is
//! therefore never delivered: passed on, the node's kernel would reassemble
//! it, find no socket on the NAT port and answer the pod with a port
//! unreachable. Its first fragment is dropped instead (`fragmented_reply`):
//! the kernel never completes the datagram, and without a first fragment it
//! sends no ICMP error about it either (Linux sends "reassembly time
//! exceeded" only when the first fragment arrived). Other fragments to the
//! node pass (`pass_node_fragment`) and expire in its reassembly queue, or
//! are the node's own. Backends fragment only a datagram larger than the
//! path MTU (which the ICMP errors of `icmp_error` let them learn): a UDP
//! answer larger than any MTU.
//!
//! Out of line, as `icmp_error`: called only for a packet already known to
//! be a fragment.

use aya_ebpf::bindings::xdp_md;
use lb_common::{Counter, DatapathConfig, DropReason, FlowKey, flow_flags, proto};

use crate::{
    maps::REV_NAT,
    parse::{Cursor, EthHdr, Ipv4Hdr, L4Head},
    verdict::Outcome,
};

/// The reply key of a first fragment, if it is one and holds its ports.
#[inline(always)]
fn first_fragment_key(cur: &mut Cursor<'_>, ip: &Ipv4Hdr) -> Option<FlowKey> {
    if ip.vihl != 0x45 || ip.is_later_fragment() {
        return None;
    }
    if ip.proto != proto::TCP && ip.proto != proto::UDP {
        return None;
    }
    let h = cur.take::<L4Head>()?;
    Some(FlowKey::v4(
        ip.src,
        ip.dst,
        u16::from_be_bytes(h.sport),
        u16::from_be_bytes(h.dport),
        ip.proto,
    ))
}

/// `lb_ingress`, an IPv4 fragment to the node's address. Returns the XDP
/// action, the outcome counted.
#[inline(never)]
pub fn to_node(ctx: *mut xdp_md, cfg: &DatapathConfig) -> u32 {
    // Read through volatile loads: with plain ones LLVM hands this
    // function the two loaded values instead of the context (argument
    // promotion), and the verifier rejects a call whose BTF says "context"
    // but whose register holds a packet pointer.
    // SAFETY: `ctx` is the program's context, valid for the whole run.
    let (data, end) = unsafe {
        (
            core::ptr::read_volatile(&raw const (*ctx).data),
            core::ptr::read_volatile(&raw const (*ctx).data_end),
        )
    };
    // SAFETY: the only cursor over this packet during this call; the
    // caller's references are not used after it.
    let mut cur = unsafe { Cursor::new(data as usize, end as usize) };
    let out = match (cur.take::<EthHdr>(), cur.take::<Ipv4Hdr>()) {
        (Some(_), Some(ip)) => match first_fragment_key(&mut cur, ip) {
            Some(k)
                if k.dport >= cfg.nat_port_min
                    && k.dport <= cfg.nat_port_max
                    && is_remote_reply(&k) =>
            {
                Outcome::Drop(DropReason::FragmentedReply)
            }
            _ => Outcome::Pass(Counter::PassNodeFragment),
        },
        _ => Outcome::Pass(Counter::PassNodeFragment),
    };
    out.finish()
}

/// Whether `k` is the reply key of a live remote flow.
#[inline(always)]
fn is_remote_reply(k: &FlowKey) -> bool {
    match REV_NAT.get_ptr(k) {
        // SAFETY: value pointer the map just returned; read by value.
        Some(r) => (unsafe { (*r).flags } & flow_flags::REMOTE) != 0,
        None => false,
    }
}
