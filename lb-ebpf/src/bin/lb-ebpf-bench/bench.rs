//! Benchmark-only programs (never attached by the agent).
//!
//! `BPF_PROG_TEST_RUN` with `repeat > 1` runs a program again and again on
//! the SAME buffer, so after one iteration a NAT program would see its own
//! output and take another path. `lb_ingress_bench` therefore saves the
//! frame's first bytes (up to 128: every header we touch) to a per-CPU
//! scratch buffer, runs the real ingress logic (the same inlined function as
//! `lb_ingress`), and restores the bytes, so every iteration sees the
//! original frame. With the `NEW_FLOW` bit in `bench_config`, it first gives
//! the frame the next TCP/UDP source port of a per-CPU sequence (checksum
//! updated), so every iteration is a new flow (conntrack miss, Maglev pick,
//! NAT port claim). `bench_restore_only` does the save/restore alone: its
//! cost is measured and subtracted. Prove the intended path ran by reading
//! the per-CPU outcome counters, which grow by exactly the repeat count.
//! IPv6 packets leave the wrapper by tail calls and never come back to it:
//! with `RESTORE_FIRST` the restore comes before each iteration instead.
//! IPv6 frames leave `lb_ingress_bench` by tail calls; `lb_service6_bench`
//! (the bench object's `SERVICE6` slot) restores them.

use aya_ebpf::{
    EbpfContext as _,
    bindings::xdp_action::{XDP_ABORTED, XDP_PASS},
    helpers::generated::{bpf_xdp_load_bytes, bpf_xdp_store_bytes},
    programs::XdpContext,
};
use lb_common::{bench, proto};

use lb_ebpf::{
    csum::Delta,
    ingress,
    parse::{Cursor, ETH_P_IPV4, ETH_P_IPV6, EthHdr, Ipv4Hdr, Ipv6Hdr, TcpHdr, UdpHdr},
};

use crate::maps::{CONFIG as BENCH_CONFIG, SCRATCH as BENCH_SCRATCH, SEQ as BENCH_SEQ};

/// First port of the benchmark's source-port sequence.
const SEQ_PORT_BASE: u32 = 1024;

/// Bytes to save: `min(frame, 128)`, written so the verifier sees the
/// range 1..=128 the copy helpers need (frames are never empty).
#[inline(always)]
#[expect(
    clippy::cast_possible_truncation,
    reason = "every value cast is at most SCRATCH_LEN (128)"
)]
fn saved_len(ctx: &XdpContext) -> u32 {
    let n = ctx.data_end() - ctx.data();
    let m = if n > bench::SCRATCH_LEN {
        bench::SCRATCH_LEN as u32
    } else {
        n as u32
    };
    (m.wrapping_sub(1) & (bench::SCRATCH_LEN as u32 - 1)) + 1
}

#[inline(always)]
fn save(ctx: &XdpContext, len: u32) -> bool {
    let Some(buf) = BENCH_SCRATCH.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: buf is a 128-byte per-CPU map value, len is in 1..=128 and
    // within the frame.
    unsafe { bpf_xdp_load_bytes(ctx.as_ptr().cast(), 0, buf.cast(), len) == 0 }
}

#[inline(always)]
fn restore(ctx: &XdpContext, len: u32) {
    let Some(buf) = BENCH_SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: as in `save`; the frame length did not change in between.
    unsafe { bpf_xdp_store_bytes(ctx.as_ptr().cast(), 0, buf.cast(), len) };
}

/// Gives a TCP/UDP frame (IPv4, or IPv6 without extension headers) the next source port of the sequence.
#[inline(always)]
fn next_source_port(ctx: &XdpContext) {
    let Some(seq) = BENCH_SEQ.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: per-CPU slot; only this CPU touches it.
    let n = unsafe {
        *seq = (*seq).wrapping_add(1);
        *seq
    };
    #[expect(
        clippy::cast_possible_truncation,
        reason = "SEQ_PORT_BASE + (n mod (65536 - SEQ_PORT_BASE)) < 65536"
    )]
    let port = (SEQ_PORT_BASE + n % (65536 - SEQ_PORT_BASE)) as u16;
    // SAFETY: the only cursor over the packet; dropped before `ingress`
    // makes its own.
    let mut cur = unsafe { Cursor::new(ctx.data(), ctx.data_end()) };
    let Some(eth) = cur.take::<EthHdr>() else {
        return;
    };
    let next = match eth.proto() {
        ETH_P_IPV4 => match cur.take::<Ipv4Hdr>() {
            Some(ip) if ip.vihl == 0x45 => ip.proto,
            _ => return,
        },
        ETH_P_IPV6 => match cur.take::<Ipv6Hdr>() {
            Some(ip) => ip.next,
            None => return,
        },
        _ => return,
    };
    // A UDP checksum of zero means none over IPv4 only; the IPv6 frames
    // here always carry one, so the rule below never meets an IPv6 zero.
    let (sport, check, zero_is_none) = match next {
        proto::TCP => {
            let Some(t) = cur.take::<TcpHdr>() else {
                return;
            };
            (&mut t.sport, &mut t.check, false)
        }
        proto::UDP => {
            let Some(u) = cur.take::<UdpHdr>() else {
                return;
            };
            (&mut u.sport, &mut u.check, true)
        }
        _ => return,
    };
    let new = port.to_be_bytes();
    let mut d = Delta::default();
    d.bytes2(*sport, new);
    *sport = new;
    let old = u16::from_be_bytes(*check);
    if !(zero_is_none && old == 0) {
        let c = d.apply(old);
        *check = if zero_is_none && c == 0 {
            0xffff_u16
        } else {
            c
        }
        .to_be_bytes();
    }
}

#[inline(always)]
fn config() -> u32 {
    BENCH_CONFIG.get(0).copied().unwrap_or(0)
}

pub fn ingress(ctx: &XdpContext) -> u32 {
    let len = saved_len(ctx);
    let config = config();
    let first = config & bench::RESTORE_FIRST != 0;
    if first {
        restore(ctx, len);
    }
    if !save(ctx, len) {
        return XDP_ABORTED;
    }
    if config & bench::NEW_FLOW != 0 {
        next_source_port(ctx);
    }
    let action = ingress::process(ctx);
    if !first {
        restore(ctx, len);
    }
    action
}

pub fn restore_only(ctx: &XdpContext) -> u32 {
    let len = saved_len(ctx);
    if !save(ctx, len) {
        return XDP_ABORTED;
    }
    restore(ctx, len);
    XDP_PASS
}

/// `bench_flow_floor`'s wrapper: as [`ingress`] with `NEW_FLOW` (every
/// iteration a new source port, the frame restored after it), around
/// [`crate::floor::write`] instead of the data path.
pub fn flow_floor(ctx: &XdpContext) -> u32 {
    let len = saved_len(ctx);
    if !save(ctx, len) {
        return XDP_ABORTED;
    }
    next_source_port(ctx);
    let action = crate::floor::write(ctx);
    restore(ctx, len);
    action
}
