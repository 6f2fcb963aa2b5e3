//! The flow sweeper: deletes reverse-NAT and affinity entries that are
//! over. The `conntrack` flow table it only reads: a dead flow's slot is
//! reused in place by a new flow (`lb_common::flow::table`), and a write
//! from here could race the data path's compare-and-swap claims.
//!
//! Each sweep also reports which backend slots live TCP flows still name
//! ([`FlowReport`], from a scan of the whole flow table): the agent frees a
//! retired (drained) backend slot only once none does (`plan::state`).
//!
//! Correctness never depends on it: the data path treats an expired entry
//! as absent and takes over the NAT port of an expired or closed flow when a
//! new flow meets it (see `lb_common::flow`). The sweep keeps the LRU tables
//! from filling with dead flows, so that when they are full the kernel's LRU
//! evicts what is dead rather than a live flow's entry, and it frees NAT
//! ports that no new flow happens to probe.
//!
//! It decides by the data path's own rules ([`flow::expired`] for flows,
//! [`flow::reverse_over`] for reverse entries, which keeps a port closed by
//! both FINs out of use while the backend may still be in `TIME_WAIT`) and
//! the timeouts the data path holds (the `config` map), and runs on its own
//! thread with its own map handles, so a sweep of a full table (hundreds of
//! thousands of entries, a syscall or two each) never delays the agent's
//! Lease renewals.

use std::{
    collections::{BTreeMap, BTreeSet},
    os::fd::{AsFd as _, AsRawFd as _, BorrowedFd, OwnedFd},
    sync::{Arc, Mutex, atomic::Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use aya::Pod;
use lb_common::{
    AffinityKey, AffinityValue, ConntrackValue, FlowKey, FlowTimeouts, RevNatValue, flow, proto,
};
use tracing::{debug, warn};

use super::maps::{Maps, PinDir};
use crate::agent::metrics::Health;

/// Entries deleted by one sweep (none of the flow table: its slots are
/// reused in place, see `lb_common::flow::table`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Swept {
    pub rev_nat: usize,
    pub affinity: usize,
}

impl Swept {
    pub fn total(&self) -> usize {
        self.rev_nat + self.affinity
    }
}

/// What one sweep saw of the flows that go on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlowReport {
    /// When the sweep began: an entry created before then is in it.
    pub started: Instant,
    /// Backend ids of the live TCP flows. UDP flows do not hold a retired
    /// slot: the data path moves them off it (`backend_flags::GONE`).
    pub tcp_backends: BTreeSet<u32>,
    /// Whether a live flow's slot carries an earlier version's tag
    /// (`flow::table::is_legacy`): while one does, the data path must look
    /// for flows under it too (`config_flags::LEGACY_TAGS6`).
    pub legacy_tags6: bool,
}

/// The last report of the sweeper thread, for the agent.
pub type Reports = Arc<Mutex<Option<FlowReport>>>;

/// `CLOCK_MONOTONIC` in nanoseconds: the clock `bpf_ktime_get_ns` reads.
pub fn now_ns() -> Result<u64> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec we own.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut ts) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context("clock_gettime(CLOCK_MONOTONIC)");
    }
    let secs = u64::try_from(ts.tv_sec).context("negative monotonic clock")?;
    let nanos = u64::try_from(ts.tv_nsec).context("negative monotonic clock")?;
    Ok(secs * 1_000_000_000 + nanos)
}

/// Whether a conntrack entry is over at `now`.
pub fn conntrack_over(k: &FlowKey, v: &ConntrackValue, now: u64, t: &FlowTimeouts) -> bool {
    flow::expired(k.proto, v.state, v.last_seen_ns, now, t)
}

/// Whether a reverse entry is over at `now`. A reverse key's protocol is
/// its flow's.
pub fn rev_nat_over(k: &FlowKey, v: &RevNatValue, now: u64, t: &FlowTimeouts) -> bool {
    flow::reverse_over(k.proto, v.state, v.last_seen_ns, now, t)
}

/// Whether an affinity entry is over at `now`, given each service's
/// affinity timeout (seconds) by service id: entries of services that no
/// longer have affinity (or no longer exist) are over at once.
pub fn affinity_over(
    k: &AffinityKey,
    v: &AffinityValue,
    now: u64,
    timeouts: &BTreeMap<u32, u32>,
) -> bool {
    timeouts
        .get(&k.service_id)
        .is_none_or(|&s| now.saturating_sub(v.last_seen_ns) > u64::from(s) * flow::NS_PER_SEC)
}

/// Deletes the entries of `map` that `over` says are over; returns how many
/// went. Keys are collected first (deleting while walking a hash map with
/// `get_next_key` restarts the walk), and each is read again right before
/// its delete.
fn sweep_map<K: Pod, V: Pod>(
    map: &mut aya::maps::HashMap<aya::maps::MapData, K, V>,
    mut over: impl FnMut(&K, &V) -> bool,
) -> usize {
    let dead = dead_keys(map, &mut over);
    delete_still_over(map, &dead, over)
}

/// The first half of a sweep: the keys of the entries over now.
pub fn dead_keys<K: Pod, V: Pod>(
    map: &aya::maps::HashMap<aya::maps::MapData, K, V>,
    mut over: impl FnMut(&K, &V) -> bool,
) -> Vec<K> {
    map.iter()
        .filter_map(Result::ok)
        .filter(|(k, v)| over(k, v))
        .map(|(k, _)| k)
        .collect()
}

/// The second half: deletes those of `keys` whose entries are still over
/// when read again; returns how many went.
pub fn delete_still_over<K: Pod, V: Pod>(
    map: &mut aya::maps::HashMap<aya::maps::MapData, K, V>,
    keys: &[K],
    mut over: impl FnMut(&K, &V) -> bool,
) -> usize {
    // An entry the data path deleted meanwhile is no error.
    keys.iter()
        .filter(|k| map.get(k, 0).is_ok_and(|v| over(k, &v)) && map.remove(k).is_ok())
        .count()
}

/// The second half for `rev_nat`, where a delete from here could cut a live
/// flow: a walk of a full table takes long enough that the data path
/// reclaims many of the dead entries it found (a new flow takes an expired
/// flow's NAT port by rewriting its reverse entry in place, by
/// compare-and-swap on its stamp), and deleting such an entry sends the new
/// flow's replies to the node's kernel, which resets the connection (the
/// soak caught two in 50,000). Each entry still over when read again is
/// deleted by the data path's own `flow_sweep` program, which swaps the
/// stamp read here for a tombstone first and deletes only if that swap won:
/// a flow that took the entry over after the read changed the stamp.
pub fn delete_rev_still_over(
    sweep: BorrowedFd<'_>,
    map: &aya::maps::HashMap<aya::maps::MapData, FlowKey, RevNatValue>,
    keys: &[FlowKey],
    mut over: impl FnMut(&FlowKey, &RevNatValue) -> bool,
) -> Result<usize> {
    let mut deleted = 0;
    for k in keys {
        let Ok(v) = map.get(k, 0) else { continue };
        if over(k, &v) && delete_rev_if_stamp(sweep, k, v.last_seen_ns)? {
            deleted += 1;
        }
    }
    Ok(deleted)
}

/// `BPF_PROG_TEST_RUN` (linux/bpf.h).
const PROG_TEST_RUN: libc::c_long = 10;

/// The `test` part of `union bpf_attr` this needs (the kernel accepts a
/// prefix).
#[repr(C)]
#[derive(Default)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
}

/// Runs `flow_sweep` (its fd: `sweep`) on `key`: deletes the reverse entry
/// if its stamp is still `last_seen_ns`. True when it deleted it.
pub fn delete_rev_if_stamp(
    sweep: BorrowedFd<'_>,
    key: &FlowKey,
    last_seen_ns: u64,
) -> Result<bool> {
    let req = flow::SweepRequest {
        key: *key,
        last_seen_ns,
    };
    // SAFETY: a #[repr(C)] struct of integers without padding (lb-common's
    // size checks), read as its bytes while it lives.
    let data: &[u8] = unsafe {
        std::slice::from_raw_parts((&raw const req).cast(), size_of::<flow::SweepRequest>())
    };
    // XDP test runs take at least an Ethernet header's worth: a request is more.
    let mut out = [0u8; size_of::<flow::SweepRequest>()];
    let mut attr = TestRunAttr {
        prog_fd: u32::try_from(sweep.as_raw_fd()).context("program fd")?,
        data_size_in: u32::try_from(data.len()).context("request size")?,
        data_size_out: u32::try_from(out.len()).context("request size")?,
        data_in: data.as_ptr() as u64,
        data_out: out.as_mut_ptr() as u64,
        repeat: 1,
        ..TestRunAttr::default()
    };
    // SAFETY: `attr` is an initialised bpf_attr prefix of the size passed;
    // `data` and `out` outlive the call and are as long as it says.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            PROG_TEST_RUN,
            std::ptr::from_mut(&mut attr),
            size_of::<TestRunAttr>(),
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error()).context("BPF_PROG_TEST_RUN flow_sweep");
    }
    match attr.retval {
        flow::sweep_verdict::DELETED => Ok(true),
        flow::sweep_verdict::KEPT => Ok(false),
        other => anyhow::bail!("flow_sweep refused the request (verdict {other})"),
    }
}

/// One sweep of `conntrack`, `rev_nat` and `affinity` at `now`; fills
/// `report` with what the flows that go on need. `sweep` is the
/// `flow_sweep` program (see [`delete_rev_still_over`]).
pub fn sweep(
    maps: &mut Maps,
    sweep: BorrowedFd<'_>,
    now: u64,
    report: &mut FlowReport,
) -> Result<Swept> {
    let t = maps.config()?.timeouts;
    // Both families' services: their ids are one space, and an IPv6
    // service's affinity entries must not look like those of a service gone.
    let v4 = maps.services.iter().filter_map(Result::ok).map(|(_, v)| v);
    let v6 = maps.services6.iter().filter_map(Result::ok).map(|(_, v)| v);
    let affinity_timeouts: BTreeMap<u32, u32> = v4
        .chain(v6)
        .filter(|v| v.flags & lb_common::service_flags::AFFINITY != 0)
        .map(|v| (v.id, v.affinity_timeout_s))
        .collect();
    // The flow table keeps dead flows until new ones reuse their slots
    // (a write from here could race the data path's claims): only read.
    for (f, legacy) in maps
        .flows()?
        .all_marked()
        .context("reading the flow table")?
    {
        if conntrack_over(&f.key, &f.value, now, &t) {
            continue;
        }
        if f.key.proto == proto::TCP {
            report.tcp_backends.insert(f.value.backend_id);
        }
        report.legacy_tags6 |= legacy;
    }
    let rev_over = |k: &FlowKey, v: &RevNatValue| rev_nat_over(k, v, now, &t);
    let dead = dead_keys(&maps.rev_nat, rev_over);
    let rev_nat = delete_rev_still_over(sweep, &maps.rev_nat, &dead, rev_over)?;
    Ok(Swept {
        rev_nat,
        affinity: sweep_map(&mut maps.affinity, |k, v| {
            affinity_over(k, v, now, &affinity_timeouts)
        }),
    })
}

/// Sweeps the pinned maps of `pins` every `interval` on a thread of its own
/// for as long as the process lives; counts into `health` and leaves each
/// sweep's [`FlowReport`] in `reports`.
pub fn spawn(
    pins: &PinDir,
    sweep_prog: OwnedFd,
    interval: Duration,
    health: Arc<Health>,
    reports: Reports,
) -> Result<()> {
    let mut maps = Maps::open(pins).context("opening the pinned maps for the flow sweeper")?;
    std::thread::Builder::new()
        .name("flow-sweep".into())
        .spawn(move || {
            loop {
                std::thread::sleep(interval);
                let mut report = FlowReport {
                    started: Instant::now(),
                    tcp_backends: BTreeSet::new(),
                    legacy_tags6: false,
                };
                let result =
                    now_ns().and_then(|now| sweep(&mut maps, sweep_prog.as_fd(), now, &mut report));
                match result {
                    Ok(s) => {
                        match reports.lock() {
                            Ok(mut r) => *r = Some(report),
                            // The agent's side panicked holding it; no one reads it now.
                            Err(e) => *e.into_inner() = Some(report),
                        }
                        health
                            .flows_swept
                            .fetch_add(s.total() as u64, Ordering::Relaxed);
                        debug!(rev_nat = s.rev_nat, affinity = s.affinity, "flow sweep");
                    }
                    Err(e) => warn!(error = %format!("{e:#}"), "flow sweep failed"),
                }
            }
        })
        .context("starting the flow sweeper thread")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use lb_common::{flow::tcp_state, proto};

    use super::*;

    const S: u64 = flow::NS_PER_SEC;

    #[test]
    fn entries_are_over_by_their_own_state_and_protocol() {
        let t = FlowTimeouts::DEFAULT;
        let now = 100_000 * S;
        let tcp = FlowKey::v4([10, 0, 0, 1], [192, 0, 2, 1], 1000, 80, proto::TCP);
        let udp = FlowKey::v4([10, 0, 0, 1], [192, 0, 2, 1], 1000, 53, proto::UDP);
        let ct = |state, idle: u64| ConntrackValue::new(1, [0; 16], 1, 0, 0, state, now - idle * S);
        assert!(!conntrack_over(
            &tcp,
            &ct(tcp_state::ESTABLISHED, 3600),
            now,
            &t
        ));
        assert!(conntrack_over(
            &tcp,
            &ct(tcp_state::ESTABLISHED | tcp_state::BOTH_FIN, 11),
            now,
            &t
        ));
        assert!(!conntrack_over(
            &tcp,
            &ct(tcp_state::ESTABLISHED | tcp_state::BOTH_FIN, 9),
            now,
            &t
        ));
        assert!(conntrack_over(&tcp, &ct(tcp_state::SYN_SENT, 61), now, &t));
        assert!(conntrack_over(&udp, &ct(0, 31), now, &t));
        assert!(!conntrack_over(&udp, &ct(0, 29), now, &t));
        let rev = |state, idle: u64| RevNatValue::reverse_of(&tcp, 1, 0, state, now - idle * S);
        assert!(rev_nat_over(&tcp, &rev(tcp_state::RST, 11), now, &t));
        assert!(!rev_nat_over(
            &tcp,
            &rev(tcp_state::ESTABLISHED, 11),
            now,
            &t
        ));
    }

    #[test]
    fn affinity_entries_follow_their_service() {
        let now = 100_000 * S;
        let timeouts = BTreeMap::from([(7, 600)]);
        let v = |idle: u64| AffinityValue::new(1, [0; 16], now - idle * S);
        assert!(!affinity_over(
            &AffinityKey::v4(7, [10, 0, 0, 1]),
            &v(599),
            now,
            &timeouts
        ));
        assert!(affinity_over(
            &AffinityKey::v4(7, [10, 0, 0, 1]),
            &v(601),
            now,
            &timeouts
        ));
        assert!(
            affinity_over(&AffinityKey::v4(8, [10, 0, 0, 1]), &v(1), now, &timeouts),
            "a service without affinity keeps no entries"
        );
    }

    #[test]
    fn the_clock_is_the_monotonic_one() {
        let a = now_ns().expect("clock");
        let b = now_ns().expect("clock");
        assert!(b >= a);
        // CLOCK_MONOTONIC starts at boot: far below the realtime clock.
        let wall = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("wall clock")
            .as_nanos();
        assert!(u128::from(a) < wall / 2);
    }
}
