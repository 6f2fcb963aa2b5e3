//! `flow_sweep`: the flow sweeper's delete of a dead reverse entry, done
//! where it can be made conditional. The agent's sweeper finds dead entries
//! by walking `rev_nat` from userspace, and a new flow may take one over
//! (a compare-and-swap on its timestamp, `conntrack::take_over`) between
//! the sweeper's last read and its delete: a plain delete from userspace
//! would then cut the new flow. Here the dead stamp is swapped for
//! `TOMBSTONE_NS` first, and only the winner of that swap deletes; a new
//! flow that took the entry over changed the stamp and keeps it, and one
//! that comes after never takes a tombstone.
//!
//! Run by `BPF_PROG_TEST_RUN` with a `SweepRequest` as the packet data;
//! never attached.

use core::intrinsics::{AtomicOrdering, atomic_cxchg};

use aya_ebpf::programs::XdpContext;
use lb_common::{
    FlowKey,
    flow::{TOMBSTONE_NS, sweep_verdict},
};

use crate::{
    maps::REV_NAT,
    parse::{Cursor, Header},
};

/// A `SweepRequest` as bytes (alignment 1, as the packet gives no more).
#[repr(C)]
struct Request {
    key: [u8; size_of::<FlowKey>()],
    last_seen_ns: [u8; 8],
}

// SAFETY: a #[repr(C)] struct of byte arrays only.
unsafe impl Header for Request {}

const _: () = assert!(size_of::<Request>() == size_of::<lb_common::flow::SweepRequest>());

#[inline(always)]
pub fn process(ctx: &XdpContext) -> u32 {
    // SAFETY: the program's own packet; this is its only cursor.
    let mut cur = unsafe { Cursor::new(ctx.data(), ctx.data_end()) };
    let Some(req) = cur.take::<Request>() else {
        return sweep_verdict::MALFORMED;
    };
    // SAFETY: `key` holds exactly a FlowKey's bytes, written by the agent
    // from a FlowKey (any bit pattern of its integer fields is valid);
    // read unaligned.
    let key: FlowKey = unsafe { core::ptr::read_unaligned(req.key.as_ptr().cast()) };
    let dead = u64::from_ne_bytes(req.last_seen_ns);
    let Some(r) = REV_NAT.get_ptr_mut(key) else {
        return sweep_verdict::KEPT;
    };
    // SAFETY: `r` points into a map value (8-byte aligned u64 field) valid
    // for this run; the data path changes the stamp only by plain stores of
    // the time or by compare-and-swap, never to the dead stamp again.
    let (_, won) = unsafe {
        atomic_cxchg::<u64, { AtomicOrdering::SeqCst }, { AtomicOrdering::SeqCst }>(
            &raw mut (*r).last_seen_ns,
            dead,
            TOMBSTONE_NS,
        )
    };
    if !won {
        return sweep_verdict::KEPT;
    }
    if REV_NAT.remove(key).is_ok() {
        sweep_verdict::DELETED
    } else {
        sweep_verdict::KEPT
    }
}
