//! The new-flow guard (see `lb_common::HalfOpenGuard`): a TCP flow that has
//! not proven itself draws a token before it takes any flow state, and
//! gives it back when the client's next packet proves it.
//!
//! One bucket for every CPU, kept with atomics: a flow's SYN and its
//! proving ACK may be handled on different CPUs (RSS spreads by tuple, but
//! veth and RPS by sender), and per-CPU buckets would leak the tokens of
//! every flow that crossed. New flows are rarer than packets: the atomic on
//! a shared cache line is paid per new flow and per handshake, never per
//! established packet.
//!
//! Out of line, with scalar arguments: called from the packet path's frame,
//! whose call chain has 512 bytes of stack in all.

use core::intrinsics::{AtomicOrdering, atomic_cxchg, atomic_xadd};

use lb_common::{HalfOpenBudget, flow::NS_PER_SEC};

use crate::maps::{CONFIG, HALF_OPEN};

/// Refills no more often than this: the compare-and-swap that elects the
/// CPU which adds the tokens is then at most a hundred a second.
const REFILL_EVERY_NS: u64 = 10_000_000;
/// Time since the last refill counted at most (a bucket idle for hours
/// fills up, and `elapsed * rate` cannot overflow).
const MAX_ELAPSED_NS: u64 = 10 * NS_PER_SEC;

/// Takes a token for a new unproven flow. False when the bucket is empty:
/// the flow must take no state (the caller drops the packet,
/// `half_open_limit`).
#[inline(never)]
pub fn admit(now: u64) -> bool {
    let (Some(cfg), Some(b)) = (CONFIG.get(0), HALF_OPEN.get_ptr_mut(0)) else {
        return true;
    };
    let (max, rate) = (cfg.half_open.max, cfg.half_open.refill_per_s);
    if max == 0 {
        return true;
    }
    refill(b, u64::from(max), u64::from(rate), now);
    // A draw is a compare-and-swap of the count: the BPF target this crate
    // builds for (`--cpu generic`) has no atomic add that returns the old
    // value. After a few lost races the token is taken without looking:
    // the count may dip below zero for a moment, never for long, as every
    // draw that finds it there is refused.
    let mut i = 0;
    while i < DRAW_TRIES {
        // SAFETY: `b` points at the 8-byte aligned `tokens` of an array map
        // value, valid for this run; every CPU changes it only atomically.
        let tokens = unsafe { (*b).tokens };
        #[expect(
            clippy::cast_possible_wrap,
            reason = "a signed count kept in a u64 (see HalfOpenBudget)"
        )]
        if tokens as i64 <= 0 {
            return false;
        }
        // SAFETY: as above.
        let (_, won) = unsafe {
            atomic_cxchg::<u64, { AtomicOrdering::SeqCst }, { AtomicOrdering::SeqCst }>(
                &raw mut (*b).tokens,
                tokens,
                tokens - 1,
            )
        };
        if won {
            return true;
        }
        i += 1;
    }
    add(b, u64::MAX);
    true
}

/// Compare-and-swap attempts of a draw before it takes its token blindly.
const DRAW_TRIES: u32 = 4;

/// Adds `n` (wrapping: `u64::MAX` takes one) to the count, atomically.
#[inline(always)]
fn add(b: *mut HalfOpenBudget, n: u64) {
    // SAFETY: as in `admit`. The old value is not used, so this is BPF's
    // plain atomic add, which every target has.
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::SeqCst }>(&raw mut (*b).tokens, n) };
}

/// Gives a flow's token back: its handshake completed, or it took no state
/// after all (no NAT port, a full map).
#[inline(never)]
pub fn refund() {
    let (Some(cfg), Some(b)) = (CONFIG.get(0), HALF_OPEN.get_ptr_mut(0)) else {
        return;
    };
    if cfg.half_open.max != 0 {
        add(b, 1);
    }
}

/// Adds the tokens earned since the last refill, up to `max`. The CPU that
/// moves `refilled_ns` forward by compare-and-swap adds them, so two CPUs
/// never add the same interval. A bucket never refilled (a fresh map) is
/// filled at once.
#[inline(always)]
fn refill(b: *mut HalfOpenBudget, max: u64, rate: u64, now: u64) {
    // SAFETY: as in `admit`; the stamp is read by value, then raced for by
    // compare-and-swap only.
    let last = unsafe { (*b).refilled_ns };
    if last == 0 {
        // SAFETY: as above.
        let (_, won) = unsafe {
            atomic_cxchg::<u64, { AtomicOrdering::SeqCst }, { AtomicOrdering::SeqCst }>(
                &raw mut (*b).refilled_ns,
                0,
                now,
            )
        };
        if won {
            add(b, max);
        }
        return;
    }
    let elapsed = now.saturating_sub(last);
    if elapsed < REFILL_EVERY_NS {
        return;
    }
    let earned = elapsed.min(MAX_ELAPSED_NS) * rate / NS_PER_SEC;
    if earned == 0 {
        return;
    }
    // SAFETY: as above.
    let (_, won) = unsafe {
        atomic_cxchg::<u64, { AtomicOrdering::SeqCst }, { AtomicOrdering::SeqCst }>(
            &raw mut (*b).refilled_ns,
            last,
            now,
        )
    };
    if !won {
        return;
    }
    // SAFETY: as above. Read, then added to atomically: a draw in between
    // only leaves more room than we computed, never less.
    let tokens = unsafe { (*b).tokens };
    #[expect(
        clippy::cast_possible_wrap,
        clippy::cast_sign_loss,
        reason = "tokens are a signed count kept in a u64 (see HalfOpenBudget)"
    )]
    let room = (max as i64).saturating_sub(tokens as i64).max(0) as u64;
    let earned = earned.min(room);
    if earned != 0 {
        add(b, earned);
    }
}
