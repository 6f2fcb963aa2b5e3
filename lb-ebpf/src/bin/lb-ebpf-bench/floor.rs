//! `bench_flow_floor`: what writing one new flow's entry costs here,
//! whatever the logic around it. Per frame it hashes the flow, stages its
//! key and a value in the product's scratch slot and calls the product's
//! own claim (`flowtable::insert`: the two sets' words read, a slot
//! claimed by compare-and-swap, key and value copied in, the slot
//! published), and nothing else: no lookup first, no service, no Maglev,
//! no guard, no counters. `bench-xdp` reports the new-flow cases against it
//! (`flow_write_floor`), so what a new flow costs beyond its one entry is
//! measured in the same run, on the same table.

use aya_ebpf::{
    bindings::xdp_action::{XDP_ABORTED, XDP_DROP, XDP_PASS},
    programs::XdpContext,
};
use lb_common::{
    ConntrackValue, FlowKey,
    flow::{addr_v4, table::key_hash, tcp_state},
    proto,
};
use lb_ebpf::{
    flowtable::{INSERTED, insert},
    maps::{CONFIG, FLOW_SCRATCH},
    parse::{Cursor, EthHdr, Ipv4Hdr, TcpHdr},
};

/// Writes the IPv4 TCP frame's flow into the flow table: `XDP_PASS` once
/// written, `XDP_DROP` when the claim found no slot (the bench's table is
/// at most a quarter full, and it proves every write by the table's
/// count), `XDP_ABORTED` for a frame it cannot read.
#[inline(always)]
pub fn write(ctx: &XdpContext) -> u32 {
    // SAFETY: the only cursor over the packet during this call.
    let mut cur = unsafe { Cursor::new(ctx.data(), ctx.data_end()) };
    let (Some(_), Some(ip), Some(tcp)) = (
        cur.take::<EthHdr>(),
        cur.take::<Ipv4Hdr>(),
        cur.take::<TcpHdr>(),
    ) else {
        return XDP_ABORTED;
    };
    let (Some(cfg), Some(s)) = (CONFIG.get(0), FLOW_SCRATCH.get_ptr_mut(0)) else {
        return XDP_ABORTED;
    };
    // SAFETY: this CPU's scratch slot, ours for this run.
    let s = unsafe { &mut *s };
    s.key = FlowKey::v4(
        ip.src,
        ip.dst,
        u16::from_be_bytes(tcp.sport),
        u16::from_be_bytes(tcp.dport),
        proto::TCP,
    );
    s.hash = key_hash(cfg.hash_seed, &s.key);
    s.ctv = ConntrackValue::new(0, addr_v4(ip.dst), 0, 0, 0, tcp_state::SYN_SENT, 0);
    if insert(s, cfg.flow_sets, &cfg.timeouts) == INSERTED {
        XDP_PASS
    } else {
        XDP_DROP
    }
}
