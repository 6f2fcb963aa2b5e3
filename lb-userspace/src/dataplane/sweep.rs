//! The flow sweeper: deletes flow entries that are over.
//!
//! Each sweep also reports which backend slots live TCP flows still name
//! ([`FlowReport`]): the agent frees a retired (drained) backend slot only
//! once none does (`plan::state`).
//!
//! Correctness never depends on it: the data path treats an expired entry
//! as absent and takes over the NAT port of an expired or closed flow when a
//! new flow meets it (see `lb_common::flow`). The sweep keeps the LRU tables
//! from filling with dead flows, so that when they are full the kernel's LRU
//! evicts what is dead rather than a live flow's entry, and it frees NAT
//! ports that no new flow happens to probe.
//!
//! It decides with the same [`flow::expired`] as the data path and the
//! timeouts the data path holds (the `config` map), and runs on its own
//! thread with its own map handles, so a sweep of a full table (hundreds of
//! thousands of entries, a syscall or two each) never delays the agent's
//! Lease renewals.

use std::{
    collections::{BTreeMap, BTreeSet},
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

/// Entries deleted by one sweep.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Swept {
    pub conntrack: usize,
    pub rev_nat: usize,
    pub affinity: usize,
}

impl Swept {
    pub fn total(&self) -> usize {
        self.conntrack + self.rev_nat + self.affinity
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
    flow::expired(k.proto, v.state, v.last_seen_ns, now, t)
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
/// its delete: a walk of a full table takes long enough that the data path
/// reclaims many of the dead entries it found (a new flow takes an expired
/// flow's NAT port by rewriting its reverse entry in place), and deleting
/// such an entry cuts a live flow — the backend's replies then reach the
/// node's kernel, which resets the connection. Found by the soak: two
/// connections in 50,000 reset in some runs, with as many replies passed to
/// the kernel. What is left is the instant between the read and the delete.
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

/// One sweep of `conntrack`, `rev_nat` and `affinity` at `now`; fills
/// `tcp_backends` with the backend ids of the TCP flows that go on.
pub fn sweep(maps: &mut Maps, now: u64, tcp_backends: &mut BTreeSet<u32>) -> Result<Swept> {
    let t = maps.config()?.timeouts;
    let affinity_timeouts: BTreeMap<u32, u32> = maps
        .services
        .iter()
        .filter_map(Result::ok)
        .filter(|(_, v)| v.flags & lb_common::service_flags::AFFINITY != 0)
        .map(|(_, v)| (v.id, v.affinity_timeout_s))
        .collect();
    let conntrack = sweep_map(&mut maps.conntrack, |k, v| {
        let over = conntrack_over(k, v, now, &t);
        if !over && k.proto == proto::TCP {
            tcp_backends.insert(v.backend_id);
        }
        over
    });
    Ok(Swept {
        conntrack,
        rev_nat: sweep_map(&mut maps.rev_nat, |k, v| rev_nat_over(k, v, now, &t)),
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
                let started = Instant::now();
                let mut tcp_backends = BTreeSet::new();
                let result = now_ns().and_then(|now| sweep(&mut maps, now, &mut tcp_backends));
                match result {
                    Ok(s) => {
                        let report = FlowReport {
                            started,
                            tcp_backends,
                        };
                        match reports.lock() {
                            Ok(mut r) => *r = Some(report),
                            // The agent's side panicked holding it; no one reads it now.
                            Err(e) => *e.into_inner() = Some(report),
                        }
                        health
                            .flows_swept
                            .fetch_add(s.total() as u64, Ordering::Relaxed);
                        debug!(
                            conntrack = s.conntrack,
                            rev_nat = s.rev_nat,
                            affinity = s.affinity,
                            "flow sweep"
                        );
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
