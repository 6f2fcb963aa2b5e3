//! Per-CPU counter helpers: one array lookup and one add, no atomics (each
//! CPU owns its slot), inlined into the hot path.

use aya_ebpf::btf_maps::PerCpuArray;
use lb_common::{Counter, DropReason, TrafficCounter};

use crate::maps::{COUNTERS, DROPS};

#[inline(always)]
pub fn count(c: Counter) {
    if let Some(p) = COUNTERS.get_ptr_mut(c as u32) {
        // SAFETY: per-CPU slot; only this CPU touches it, and BPF programs
        // are not preempted on it mid-run.
        unsafe { *p += 1 };
    }
}

#[inline(always)]
pub fn count_drop(r: DropReason) {
    if let Some(p) = DROPS.get_ptr_mut(r as u32) {
        // SAFETY: as in `count`.
        unsafe { *p += 1 };
    }
}

/// Adds one packet of `bytes` to slot `id` of a per-service/per-backend map.
#[inline(always)]
pub fn traffic<const N: usize>(map: &PerCpuArray<TrafficCounter, N>, id: u32, bytes: usize) {
    if let Some(p) = map.get_ptr_mut(id) {
        // SAFETY: as in `count`.
        unsafe {
            (*p).packets += 1;
            (*p).bytes += bytes as u64;
        }
    }
}
