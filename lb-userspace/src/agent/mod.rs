//! `onehop agent`: keeps the pinned maps of one interface equal to what
//! this node should serve.
//!
//! [`MapOwner`] owns the data path (programs, pinned maps, ARP sender). Its
//! two sources of services, [`file`] (a services file) and [`kube`] (the
//! Kubernetes API, with the announcer [`election`]), each hand it a
//! [`NodeServices`] whenever their input changes. Applying is
//! level-triggered: plan the whole desired state against what the maps
//! hold, write only the difference, and re-read the maps if a write failed;
//! input that is rejected leaves the last good state in force.

pub mod advert;
pub mod announcer;
pub mod election;
pub mod file;
pub mod kube;
pub mod metrics;
pub mod renewer;
pub mod trim;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv6Addr},
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use lb_common::{ArpStats, Ipv4Key, Ipv6Key, backend_flags, vip_flags};
use tracing::{info, warn};

use crate::{
    dataplane::loader::{self, Sizes, XdpAttachMode},
    dataplane::maps::{Maps, PinDir},
    dataplane::memory,
    dataplane::reader,
    dataplane::sweep,
    dataplane::writer,
    net::ethtool,
    net::neigh,
    net::netdev::{self, Interface},
    net::{garp, ndp},
    plan::diff,
    plan::model::{Cidr, Limits, NodeServices},
    plan::state::{self, DataplaneState, Node},
};

/// How the data path is attached (shared by every source of services).
#[derive(Clone, Debug)]
pub struct Options {
    pub interface: String,
    pub bpffs_root: PathBuf,
    pub sizes: Sizes,
    pub xdp_mode: XdpAttachMode,
    /// The new-flow guard's size (`lb_common::HalfOpenGuard::max`).
    pub half_open_max: u32,
    /// Where to serve `/metrics` and the probes.
    pub listen: crate::http::Listen,
    /// How often the flow sweeper runs (`dataplane::sweep`).
    pub flow_sweep_interval: Duration,
    /// The longest a retired backend slot (an endpoint gone from its
    /// service) waits for its TCP flows to end before it is freed anyway.
    pub max_drain: Duration,
    /// The optional series of `/metrics`.
    pub series: metrics::Series,
    /// Seed of the data path's flow hash ([`hash_seed`]).
    pub hash_seed: u32,
}

/// The flow-hash seed from the cluster's secret in `file`, or the public
/// seed when there is no file (logged: flows can then be aimed at one
/// backend). Every node must derive the same seed, so an unreadable or
/// short secret is an error, never a fallback to another seed.
pub fn hash_seed(file: Option<&std::path::Path>) -> Result<u32> {
    let Some(path) = file else {
        warn!(
            "no --hash-seed-file: the flow hash uses the public seed, so anyone can compute \
             which flows land on one backend; give every node the same secret"
        );
        return Ok(lb_common::hash::PUBLIC_SEED);
    };
    let secret = std::fs::read(path)
        .with_context(|| format!("reading the hash seed file {}", path.display()))?;
    let seed = lb_common::hash::seed_of_secret(&secret).with_context(|| {
        format!(
            "the hash seed file {} holds {} bytes; a secret needs at least {}",
            path.display(),
            secret.len(),
            lb_common::hash::MIN_SECRET_LEN
        )
    })?;
    // The fingerprint lets operators compare nodes without showing the secret.
    info!(
        fingerprint = %format!("{:08x}", lb_common::hash::client_hash(seed, [0; 4])),
        "flow-hash seed read from {}",
        path.display()
    );
    Ok(seed)
}

/// The addresses of both VIP maps whose flags have `flag`.
fn vips_with(state: &DataplaneState, flag: u32) -> BTreeSet<IpAddr> {
    let v4 = state
        .vips
        .iter()
        .filter(|(_, flags)| *flags & flag != 0)
        .map(|(ip, _)| IpAddr::from(*ip));
    let v6 = state
        .vips6
        .iter()
        .filter(|(_, flags)| *flags & flag != 0)
        .map(|(ip, _)| IpAddr::from(*ip));
    v4.chain(v6).collect()
}

/// VIPs of both families flagged ANNOUNCE in a state.
fn announced(state: &DataplaneState) -> BTreeSet<IpAddr> {
    vips_with(state, vip_flags::ANNOUNCE)
}

/// The IPv6 VIPs a state announces: the solicited-node groups the
/// interface must receive.
fn announced6(state: &DataplaneState) -> BTreeSet<Ipv6Addr> {
    state
        .vips6
        .iter()
        .filter(|(_, flags)| *flags & vip_flags::ANNOUNCE != 0)
        .map(|(ip, _)| Ipv6Addr::from(*ip))
        .collect()
}

/// `BPF_NOEXIST` (linux/bpf.h): create the entry only if it is missing.
const BPF_NOEXIST: u64 = 1;

/// Service VIPs of a state, of both families: the addresses ARP and NDP
/// are about.
fn service_vips(state: &DataplaneState) -> BTreeSet<IpAddr> {
    vips_with(state, vip_flags::SERVICE)
}

/// Creates the zeroed `arp_stats` (IPv4) or `ndp_stats` (IPv6) entry of `ip`,
/// unless it exists.
fn insert_stats(maps: &mut Maps, ip: IpAddr) -> Result<(), aya::maps::MapError> {
    match ip {
        IpAddr::V4(a) => {
            maps.arp_stats
                .insert(Ipv4Key::new(a.octets()), ArpStats::default(), BPF_NOEXIST)
        }
        IpAddr::V6(a) => {
            maps.ndp_stats
                .insert(Ipv6Key::new(a.octets()), ArpStats::default(), BPF_NOEXIST)
        }
    }
}

/// Removes the `arp_stats` or `ndp_stats` entry of `ip`.
fn remove_stats(maps: &mut Maps, ip: IpAddr) -> Result<(), aya::maps::MapError> {
    match ip {
        IpAddr::V4(a) => maps.arp_stats.remove(&Ipv4Key::new(a.octets())),
        IpAddr::V6(a) => maps.ndp_stats.remove(&Ipv6Key::new(a.octets())),
    }
}

/// Every address with an `arp_stats` or `ndp_stats` entry.
fn stats_keys(maps: &Maps) -> BTreeSet<IpAddr> {
    let v4 = maps
        .arp_stats
        .keys()
        .filter_map(Result::ok)
        .map(|k| IpAddr::from(k.addr));
    let v6 = maps
        .ndp_stats
        .keys()
        .filter_map(Result::ok)
        .map(|k| IpAddr::from(k.addr));
    v4.chain(v6).collect()
}

/// Node addresses of remote backends of both families: the next hops XDP
/// needs MACs for (an IPv6 backend without a node address has none).
fn remote_nodes(state: &DataplaneState) -> BTreeSet<IpAddr> {
    state
        .all_backends()
        .map(|(_, b)| b)
        .filter(|b| b.flags() & backend_flags::VALID != 0 && b.flags() & backend_flags::LOCAL == 0)
        .map(|b| b.node_ip())
        .filter(|ip| !ip.is_unspecified())
        .collect()
}

/// The data path of one interface and what the agent knows about it.
pub struct MapOwner {
    pub iface: Interface,
    maps: Maps,
    /// Capacities of the maps actually pinned (a restart keeps the sizes
    /// they were created with, whatever the flags say now).
    limits: Limits,
    current: Arc<DataplaneState>,
    /// `current` is this agent's own plan (not contents read back from the maps), so the
    /// next plan may take its unchanged Maglev tables (`state::replan`).
    current_planned: bool,
    /// The input that produced `current`, while the maps are known to hold
    /// it: the same input again needs no planning (planning 10,000 services
    /// takes hundreds of milliseconds; the Kubernetes source re-derives its input
    /// on every Lease renewal in the cluster).
    applied: Option<NodeServices>,
    arp: garp::ArpSender,
    ndp: ndp::NdpSender,
    /// (when, VIP) gratuitous ARPs (IPv4) and unsolicited Neighbor
    /// Advertisements (IPv6) still to send.
    garp_due: Vec<(Instant, IpAddr)>,
    /// The announced IPv6 VIPs whose solicited-node groups the interface
    /// was last made to receive (`None`: to be reconciled, at start or after
    /// a failure).
    multicast: Option<BTreeSet<Ipv6Addr>>,
    neighbours: BTreeSet<IpAddr>,
    /// VIPs with an `arp_stats` (IPv4) or `ndp_stats` (IPv6) entry.
    arp_stats: BTreeSet<IpAddr>,
    /// The `arp_stats` and `ndp_stats` maps were scanned for entries a
    /// previous agent left.
    arp_stats_scanned: bool,
    /// Service VIPs the last pass could not give an `arp_stats` entry.
    arp_uncounted: Uncounted,
    /// When the heartbeat was last written, and the hold it was written with.
    heartbeat: Option<(Instant, Duration)>,
    /// The heartbeat write failed last time (logged once per failure run).
    heartbeat_failing: bool,
    /// What the last link check found (`None`: not checked yet).
    link_usable: Option<bool>,
    /// Map writes since the heap was last trimmed ([`MapOwner::release_memory`]).
    writes_since_trim: usize,
    /// The sweeper's last word on which backend slots live flows name.
    flows: sweep::Reports,
    /// Retired backend slots of `current`, each with when this agent first
    /// saw it retired (after a restart: when it adopted the maps).
    retired_since: BTreeMap<u32, Instant>,
    max_drain: Duration,
    hash_seed: u32,
    pub health: Arc<metrics::Health>,
}

/// Gives the heap's free pages back to the kernel. Planning 10,000 services allocates and
/// frees tens of MiB (the translation, the plan, the diff), in small blocks between ones
/// that stay; glibc keeps such freed memory resident, and the agent's memory limit counts
/// it. Measured with `bench e2e` (README, "Memory").
fn trim_heap() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only walks and releases the allocator's own free memory; it
    // takes the allocator's locks like any malloc call.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// How often a lasting shortfall of ARP counters is said again.
const UNCOUNTED_REMINDER: Duration = Duration::from_hours(1);

/// Service addresses without ARP counters, as one condition: said when it
/// starts (or grows), again at most every [`UNCOUNTED_REMINDER`] while it
/// lasts, and when it ends; the agent reconciles on every Lease renewal, and
/// thousands of addresses would otherwise make a warning each pass.
#[derive(Debug, Default)]
struct Uncounted {
    /// Addresses without counters after the last pass.
    count: usize,
    /// When the condition was last said, and with what count.
    said: Option<(Instant, usize)>,
}

/// What [`Uncounted::update`] asks the caller to log.
#[derive(Debug, PartialEq, Eq)]
enum Report {
    Quiet,
    Warn,
    Cleared,
}

impl Uncounted {
    fn update(&mut self, count: usize, now: Instant) -> Report {
        let was = std::mem::replace(&mut self.count, count);
        if count == 0 {
            self.said = None;
            return if was > 0 {
                Report::Cleared
            } else {
                Report::Quiet
            };
        }
        let due = self.said.is_none_or(|(at, said)| {
            count > said || now.saturating_duration_since(at) >= UNCOUNTED_REMINDER
        });
        if due {
            self.said = Some((now, count));
            Report::Warn
        } else {
            Report::Quiet
        }
    }
}

/// How long after a slot is retired a sweep must have started for its
/// report to count: a packet that read the old Maglev table just before
/// the slot left it may still be creating its flow entry.
const RETIRE_SETTLE: Duration = Duration::from_secs(1);

/// The retired slots that may go at `now`: no live TCP flow named them in a
/// sweep that started once they had settled, or they have drained for
/// `max_drain` (a flow that never ends must not pin a slot forever).
fn releasable(
    retired_since: &BTreeMap<u32, Instant>,
    report: Option<&sweep::FlowReport>,
    now: Instant,
    max_drain: Duration,
) -> BTreeSet<u32> {
    retired_since
        .iter()
        .filter(|&(id, &since)| {
            now.saturating_duration_since(since) >= max_drain
                || report.is_some_and(|r| {
                    r.started >= since + RETIRE_SETTLE && !r.tcp_backends.contains(id)
                })
        })
        .map(|(&id, _)| id)
        .collect()
}

/// Whether the sweeper's last report shows the adopted flow table without
/// a live IPv6 flow of an earlier version's tag (none yet: not known).
/// Every report is of a sweep after this agent's programs took over, so
/// no such flow is written after it.
fn legacy_tags_over(report: Option<&sweep::FlowReport>) -> bool {
    report.is_some_and(|r| !r.legacy_tags6)
}

impl MapOwner {
    fn node(&self, file: &NodeServices) -> Result<Node> {
        let ip = file.node_ip.or(self.iface.ipv4).with_context(|| {
            format!(
                "no node ip: set node.ip in the file or give {} an IPv4 address",
                self.iface.name
            )
        })?;
        Ok(Node {
            ip,
            ip6: file.node_ip6.or(self.iface.ipv6),
            ifindex: self.iface.index,
            mac: self.iface.mac,
            hash_seed: self.hash_seed,
            segment: self
                .iface
                .ipv4
                .zip(self.iface.ipv4_prefix_len)
                .map(|(addr, prefix_len)| Cidr::v4(addr, prefix_len)),
            segment6: self
                .iface
                .ipv6
                .zip(self.iface.ipv6_prefix_len)
                .map(|(addr, prefix_len)| Cidr::v6(addr, prefix_len)),
        })
    }

    /// Makes the maps hold `file`: plans against what they hold now, writes
    /// only the difference, re-reads them, and announces new VIPs.
    pub fn apply(&mut self, file: &NodeServices) -> Result<()> {
        // The same input again is a no-op (every Lease renewal re-derives
        // it); timing those would bury the real syncs under zeros.
        let unchanged = self.applied.as_ref() == Some(file);
        let started = Instant::now();
        let result = self.apply_inner(file);
        if !unchanged {
            self.health
                .sync_duration
                .observe(started.elapsed().as_secs_f64());
        }
        self.health.record(result.is_ok());
        self.health.set_state(&self.current);
        result
    }

    /// Retired backend slots this agent may free now.
    fn releasable(&self) -> BTreeSet<u32> {
        if self.retired_since.is_empty() {
            return BTreeSet::new();
        }
        // Decided under the lock: the report can hold an id per backend.
        let report = match self.flows.lock() {
            Ok(r) => r,
            Err(e) => e.into_inner(),
        };
        releasable(
            &self.retired_since,
            report.as_ref(),
            Instant::now(),
            self.max_drain,
        )
    }

    /// Frees the retired backend slots whose flows are over (or that have
    /// drained for the maximum time), and ends the data path's second look
    /// for IPv6 flows of an earlier version's tag once none is left, by
    /// applying the last input again. Call it now and then: nothing else
    /// does either while the input stays.
    pub fn release_drained(&mut self) {
        let Some(file) = self.applied.clone() else {
            return;
        };
        let legacy_over = self.limits.legacy_tags6 && {
            let report = match self.flows.lock() {
                Ok(r) => r,
                Err(e) => e.into_inner(),
            };
            legacy_tags_over(report.as_ref())
        };
        if legacy_over {
            info!(
                "no live IPv6 flow of an earlier version's tag is left in the flow table: \
                 new IPv6 flows no longer look for one"
            );
            self.limits.legacy_tags6 = false;
            // The same input plans another config now.
            self.applied = None;
        } else if self.releasable().is_empty() {
            return;
        }
        if let Err(e) = self.apply(&file) {
            warn!(error = %format!("{e:#}"), "freeing drained backend slots failed");
        }
    }

    /// Notes when each retired slot of `current` was first seen retired.
    fn track_retired(&mut self) {
        let now = Instant::now();
        let retired: BTreeSet<u32> = state::retired(&self.current).collect();
        self.retired_since.retain(|id, _| retired.contains(id));
        for id in retired {
            self.retired_since.entry(id).or_insert(now);
        }
    }

    fn apply_inner(&mut self, file: &NodeServices) -> Result<()> {
        let release = self.releasable();
        if self.applied.as_ref() == Some(file) && release.is_empty() {
            return Ok(());
        }
        self.applied = None;
        let node = self.node(file)?;
        let desired = state::plan_with_options(
            &self.current,
            file,
            &node,
            &self.limits,
            state::PlanOptions {
                reuse_tables: self.current_planned,
                release: &release,
            },
        )?;
        if !release.is_empty() {
            info!(slots = ?release, "freeing backend slots whose flows are over");
        }
        let ops = diff::diff(&self.current, &desired);
        if ops.is_empty() {
            info!("services file unchanged in effect; nothing to write");
            self.applied = Some(file.clone());
            return Ok(());
        }
        let before = announced(&self.current);
        match writer::apply(&mut self.maps, &ops) {
            // Every write landed: the maps hold exactly the plan. (Reading
            // them back would cost a syscall per Maglev slot.)
            Ok(()) => {
                self.current = Arc::new(desired);
                self.current_planned = true;
                self.track_retired();
            }
            Err(e) => {
                // A partial write: believe the kernel, not the plan.
                self.current_planned = false;
                self.current = Arc::new(reader::read(&self.maps).context("re-reading the maps")?);
                self.track_retired();
                return Err(e);
            }
        }
        self.writes_since_trim += ops.len();
        info!(
            writes = ops.len(),
            services = self.current.services.len() + self.current.services6.len(),
            backends = self.current.backends.len() + self.current.backends6.len(),
            "applied the services file"
        );
        let now = Instant::now();
        let after = announced(&self.current);
        for vip in after.difference(&before) {
            info!(%vip, "now announcing");
            self.schedule_garp(*vip, now);
        }
        for vip in before.difference(&after) {
            info!(%vip, "no longer announcing");
        }
        self.health
            .count_ownership_changes(before.symmetric_difference(&after));
        self.sync_neighbours();
        self.sync_arp_stats();
        self.sync_multicast();
        self.applied = Some(file.clone());
        Ok(())
    }

    /// Releases the memory a pass freed, after a pass that wrote the maps. The sources call
    /// it once their pass has dropped its own copies of the input.
    pub fn release_memory(&mut self) {
        if std::mem::take(&mut self.writes_since_trim) > 0 {
            trim_heap();
        }
    }

    /// Applies the last applied input without any announcement (nothing
    /// when nothing is announced): this node gives its addresses up.
    pub fn withdraw_announcements(&mut self) -> Result<()> {
        match self.applied.clone() {
            Some(mut input) if !input.announce.is_empty() => {
                input.announce.clear();
                self.apply(&input)
            }
            _ => Ok(()),
        }
    }

    /// Renews the heartbeat that keeps the data path answering ARP for the
    /// announced VIPs, for `hold` from now. Call it only while the maps say
    /// what this node should announce; after `hold` without a call, the
    /// data path goes quiet and gratuitous ARP stops.
    pub fn heartbeat(&mut self, hold: Duration) {
        match self.maps.heartbeat(hold) {
            Ok(()) => {
                if self.heartbeat_failing {
                    info!("the heartbeat is written again; ARP is answered");
                }
                self.heartbeat_failing = false;
                self.heartbeat = Some((Instant::now(), hold));
            }
            Err(e) => {
                if !self.heartbeat_failing {
                    warn!(error = %format!("{e:#}"), "could not renew the heartbeat; ARP stops being answered when it runs out");
                }
                self.heartbeat_failing = true;
            }
        }
    }

    /// Whether the heartbeat this agent last wrote still holds.
    fn heartbeat_current(&self) -> bool {
        self.heartbeat
            .is_some_and(|(at, hold)| at.elapsed() <= hold)
    }

    /// Whether the interface can carry traffic (up, with carrier); logs
    /// every change. An interface that cannot be read counts as unusable.
    pub fn link_usable(&mut self) -> bool {
        let usable = match netdev::usable(&self.iface.name) {
            Ok(u) => u,
            Err(e) => {
                if self.link_usable != Some(false) {
                    warn!(error = %format!("{e:#}"), "cannot read the interface's state; treating it as down");
                }
                false
            }
        };
        if self.link_usable != Some(usable) {
            if usable {
                info!(interface = %self.iface.name, "the interface is up with carrier: eligible to announce");
                // Losing carrier flushes the device's neighbour entries,
                // managed ones included: ask for every backend node again,
                // or full-NAT flows find no next hop (`no_neighbour`).
                if self.link_usable.is_some() {
                    self.neighbours.clear();
                    self.sync_neighbours();
                }
            } else {
                warn!(interface = %self.iface.name, "the interface is down or has no carrier: giving up every announced address");
            }
            self.link_usable = Some(usable);
            self.health.set_link_usable(usable);
        }
        usable
    }

    /// Makes the interface receive the solicited-node group of every
    /// announced IPv6 VIP, and no other that an agent joined: without it the
    /// NIC drops the Neighbor Solicitations for the VIP before XDP sees
    /// them. Reconciled against the interface's own list (so a restart
    /// neither leaks nor loses a membership), and only when the announced
    /// set changed or the last attempt failed.
    fn sync_multicast(&mut self) {
        let wanted = announced6(&self.current);
        if self.multicast.as_ref() == Some(&wanted) {
            return;
        }
        match ndp::reconcile(&self.iface.name, &wanted) {
            Ok(failed) if failed.is_empty() => self.multicast = Some(wanted),
            Ok(failed) => {
                warn!(interface = %self.iface.name, errors = ?failed, "could not update every solicited-node multicast membership; Neighbor Solicitations for some IPv6 VIPs may not reach XDP (retried on the next change)");
                self.multicast = None;
            }
            Err(e) => {
                warn!(interface = %self.iface.name, error = %format!("{e:#}"), "could not read the interface's multicast memberships; retried on the next change");
                self.multicast = None;
            }
        }
    }

    /// Keeps one `arp_stats` entry per service VIP (the data path only
    /// counts into existing ones); new entries start at zero, adopted ones
    /// keep their counts. The map holds every VIP the `vips` map can; should
    /// it be full anyway (maps pinned by an older agent, memory), announced
    /// VIPs get the room first and the shortfall is one condition
    /// ([`Uncounted`]), not a warning per pass.
    fn sync_arp_stats(&mut self) {
        let wanted = service_vips(&self.current);
        // Removals first: they make the room the insertions may need.
        // The first time, whatever a previous agent left; then only ours.
        let stale: Vec<IpAddr> = if self.arp_stats_scanned {
            self.arp_stats.difference(&wanted).copied().collect()
        } else {
            stats_keys(&self.maps)
                .difference(&wanted)
                .copied()
                .collect()
        };
        self.arp_stats_scanned = true;
        for ip in stale {
            match remove_stats(&mut self.maps, ip) {
                Ok(()) => {
                    self.arp_stats.remove(&ip);
                }
                Err(e) => warn!(%ip, error = %e, "could not remove the ARP counters of a VIP"),
            }
        }
        let announced = announced(&self.current);
        let (mut missing, others): (Vec<IpAddr>, Vec<IpAddr>) = wanted
            .difference(&self.arp_stats)
            .partition(|ip| announced.contains(*ip));
        missing.extend(others);
        let mut uncounted = 0;
        let mut first_error: Option<(IpAddr, aya::maps::MapError)> = None;
        for (i, ip) in missing.iter().enumerate() {
            match insert_stats(&mut self.maps, *ip) {
                Ok(()) => {}
                Err(aya::maps::MapError::SyscallError(e))
                    if e.io_error.raw_os_error() == Some(libc::EEXIST) => {}
                Err(aya::maps::MapError::SyscallError(e))
                    if e.io_error.raw_os_error() == Some(libc::E2BIG) =>
                {
                    // Full: every further insertion would fail alike.
                    uncounted += missing.len() - i;
                    first_error.get_or_insert((*ip, aya::maps::MapError::SyscallError(e)));
                    break;
                }
                Err(e) => {
                    uncounted += 1;
                    first_error.get_or_insert((*ip, e));
                    continue;
                }
            }
            self.arp_stats.insert(*ip);
        }
        match self.arp_uncounted.update(uncounted, Instant::now()) {
            Report::Quiet => {}
            Report::Warn => {
                let (first, error) = first_error.map_or_else(
                    || (String::new(), String::new()),
                    |(ip, e)| (ip.to_string(), e.to_string()),
                );
                warn!(vips = uncounted, %first, %error,
                    "some service addresses have no ARP counters: they are answered, only not counted (onehop status: \"without ARP counters\"); said again hourly while it lasts");
            }
            Report::Cleared => info!("every service address has its ARP counters again"),
        }
        self.health.retain_vips(&wanted);
    }

    fn schedule_garp(&mut self, vip: IpAddr, from: Instant) {
        for ms in garp::BURST_OFFSETS_MS {
            self.garp_due.push((from + Duration::from_millis(ms), vip));
        }
    }

    /// Sends the gratuitous ARPs that are due, while the heartbeat holds:
    /// without it the data path does not answer for the address, and the
    /// LAN must not be told otherwise. They wait for the next heartbeat.
    pub fn send_due_garps(&mut self) {
        let now = Instant::now();
        let still_announced = announced(&self.current);
        self.garp_due
            .retain(|(_, vip)| still_announced.contains(vip));
        if !self.heartbeat_current() {
            return;
        }
        let (due, later): (Vec<_>, Vec<_>) = self.garp_due.drain(..).partition(|(t, _)| *t <= now);
        self.garp_due = later;
        for (_, vip) in due {
            let sent = match vip {
                IpAddr::V4(v) => self.arp.announce(self.iface.mac, v),
                IpAddr::V6(v) => self.ndp.advertise(self.iface.mac, v),
            };
            match sent {
                Ok(()) => self.health.count_garp(vip),
                Err(e) => warn!(error = %format!("{e:#}"), "announcing {vip} to the LAN failed"),
            }
        }
    }

    fn sync_neighbours(&mut self) {
        let wanted = remote_nodes(&self.current);
        for ip in wanted.difference(&self.neighbours) {
            if let Err(e) = neigh::ensure_managed(self.iface.index, *ip) {
                warn!(%ip, error = %format!("{e:#}"), "could not add a managed neighbour; first packets to that node may be dropped");
            }
        }
        for ip in self.neighbours.difference(&wanted) {
            if let Err(e) = neigh::remove(self.iface.index, *ip) {
                warn!(%ip, error = %format!("{e:#}"), "could not remove a managed neighbour");
            }
        }
        self.neighbours = wanted;
    }
}

/// What the maps cost this node, by the kernel's accounting (charged to the memory cgroup
/// of the agent that created them), and which ids have traffic counters.
fn log_map_memory(pins: &PinDir, adopted: bool) {
    let cpus = memory::possible_cpus();
    match memory::pinned_sizes(pins) {
        Ok(sizes) => info!(
            possible_cpus = cpus,
            map_memory = %memory::mib(memory::total(&sizes, cpus)),
            counted_services = sizes.service_stats,
            counted_backends = sizes.backend_stats,
            charged_to = if adopted { "the agent that created them" } else { "this agent" },
            "map memory when full (see README: Memory)"
        ),
        Err(e) => warn!(error = %format!("{e:#}"), "could not size the pinned maps"),
    }
}

/// Turns RX VLAN offload off on the uplink before XDP is attached, so that
/// tagged frames reach `lb_ingress` tagged (passed untouched, `pass_vlan`)
/// instead of looking untagged; says what it could not do. Never fatal: a
/// node without VLANs loses nothing either way.
fn keep_vlan_tags(name: &str) {
    match ethtool::keep_vlan_tags(name) {
        Ok(t) => {
            if !t.turned_off.is_empty() {
                info!(interface = name, features = ?t.turned_off,
                    "turned RX VLAN offload off: VLAN-tagged frames reach XDP tagged and pass untouched");
            }
            if !t.stuck_on.is_empty() {
                warn!(interface = name, features = ?t.stuck_on,
                    "the driver keeps RX VLAN offload on: frames tagged for any VLAN reach XDP untagged and are served as if untagged (README: VLAN-tagged frames)");
            }
            // Info, not a warning: containers-as-nodes (kind, k3d) always
            // have a veth uplink and rarely VLANs; said once per start.
            if t.is_veth() {
                info!(
                    interface = name,
                    "a veth uplink: a VLAN tag its sender moved to metadata (the peer's TX VLAN offload, a bridge) reaches XDP untagged and is served as if untagged; turn TX VLAN offload off on the peer (ethtool -K <peer> txvlan off) where tagged frames must pass (README: VLAN-tagged frames)"
                );
            }
        }
        Err(e) => warn!(interface = name, error = %format!("{e:#}"),
            "could not read or change RX VLAN offload: frames tagged for any VLAN may reach XDP untagged (README: VLAN-tagged frames)"),
    }
}

impl MapOwner {
    /// Attaches (or adopts) the data path and gets ready to apply.
    pub fn start(opts: &Options) -> Result<Self> {
        let iface = Interface::lookup(&opts.interface)?;
        keep_vlan_tags(&iface.name);
        let dataplane = loader::attach(&iface, &opts.bpffs_root, opts.sizes, opts.xdp_mode)?;
        let maps = Maps::open(&dataplane.pins)?;
        log_map_memory(&dataplane.pins, dataplane.adopted);
        let current = if dataplane.adopted {
            let state = reader::read(&maps).context("reading the pinned state")?;
            info!(
                services = state.services.len() + state.services6.len(),
                backends = state.backends.len() + state.backends6.len(),
                "adopted pinned maps and links; established connections keep their backends"
            );
            state
        } else {
            DataplaneState::default()
        };
        let arp = garp::ArpSender::new(iface.index)?;
        let ndp = ndp::NdpSender::new(iface.index)?;
        let limits = Limits {
            maglev_slots: maps.maglev.len(),
            half_open_max: opts.half_open_max,
            flow_sets: maps.flow_sets(),
            // An adopted table may hold flows an earlier version tagged;
            // the sweeper tells when none is left (`release_drained`).
            legacy_tags6: dataplane.adopted,
            ..Limits::default()
        };
        let health = Arc::new(metrics::Health::default());
        metrics::serve(opts.listen, opts.series, dataplane.pins.clone(), &health)?;
        let flows = sweep::Reports::default();
        sweep::spawn(
            &dataplane.pins,
            dataplane
                .sweep_prog
                .try_clone()
                .context("duplicating flow_sweep's fd")?,
            opts.flow_sweep_interval,
            health.clone(),
            flows.clone(),
        )?;
        let mut agent = Self {
            health,
            iface,
            limits,
            maps,
            current: Arc::new(current),
            current_planned: false,
            applied: None,
            arp,
            ndp,
            garp_due: Vec::new(),
            multicast: None,
            neighbours: BTreeSet::new(),
            arp_stats: BTreeSet::new(),
            arp_stats_scanned: false,
            arp_uncounted: Uncounted::default(),
            heartbeat: None,
            heartbeat_failing: false,
            link_usable: None,
            writes_since_trim: 0,
            flows,
            retired_since: BTreeMap::new(),
            max_drain: opts.max_drain,
            hash_seed: opts.hash_seed,
        };
        agent.track_retired();
        agent.health.set_state(&agent.current);
        // A restart re-confirms ownership: tell the LAN again (stale caches
        // after partitions are a classic L2-announcer failure).
        let now = Instant::now();
        for vip in announced(&agent.current) {
            agent.schedule_garp(vip, now);
        }
        agent.sync_neighbours();
        agent.sync_arp_stats();
        agent.sync_multicast();
        agent.link_usable();
        Ok(agent)
    }

    /// The VIPs (of both families) the maps currently announce.
    pub fn announced(&self) -> BTreeSet<IpAddr> {
        announced(&self.current)
    }

    /// The Maglev table length the maps hold for the frontend `key`
    /// (0: no backend), if they hold it.
    pub fn table_len(&self, key: &crate::plan::state::AnyServiceKey) -> Option<u32> {
        self.current.service(key).map(|v| v.maglev_len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shortfall_of_arp_counters_is_one_condition_not_a_warning_per_pass() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut u = Uncounted::default();
        assert_eq!(u.update(0, at(0)), Report::Quiet);
        assert_eq!(u.update(5904, at(1)), Report::Warn, "it starts");
        // Every renewal reconciles: the same shortfall is not said again...
        for s in 2..600 {
            assert_eq!(u.update(5904, at(s)), Report::Quiet, "pass at {s} s");
        }
        // ...unless it grows,
        assert_eq!(u.update(6000, at(600)), Report::Warn);
        assert_eq!(
            u.update(5990, at(601)),
            Report::Quiet,
            "shrinking is no news"
        );
        // or lasts an hour.
        assert_eq!(u.update(5990, at(600 + 3600)), Report::Warn);
        assert_eq!(u.update(0, at(4300)), Report::Cleared, "it ends");
        assert_eq!(u.update(0, at(4301)), Report::Quiet);
        assert_eq!(u.update(3, at(4302)), Report::Warn, "it starts again");
    }

    #[test]
    fn the_look_for_earlier_tags_ends_with_a_sweep_that_found_none_live() {
        let report = |legacy_tags6| sweep::FlowReport {
            started: Instant::now(),
            tcp_backends: BTreeSet::new(),
            legacy_tags6,
        };
        assert!(!legacy_tags_over(None), "no sweep yet");
        assert!(!legacy_tags_over(Some(&report(true))));
        assert!(legacy_tags_over(Some(&report(false))));
    }

    #[test]
    fn retired_slots_go_once_a_settled_sweep_finds_no_flow_or_after_max_drain() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let max = s(3600);
        let retired = BTreeMap::from([(1, t0), (2, t0), (3, t0 + s(100))]);
        let report = |after: Duration, live: &[u32]| sweep::FlowReport {
            started: t0 + after,
            tcp_backends: live.iter().copied().collect(),
            legacy_tags6: false,
        };
        // No sweep yet: nothing goes before the maximum drain time.
        assert!(releasable(&retired, None, t0 + s(50), max).is_empty());
        // A sweep that began before the slots settled proves nothing.
        let early = report(Duration::from_millis(500), &[]);
        assert!(releasable(&retired, Some(&early), t0 + s(50), max).is_empty());
        // A settled sweep: slot 1 still has a flow, 2 none, 3 retired after it.
        let r = report(s(2), &[1]);
        assert_eq!(
            releasable(&retired, Some(&r), t0 + s(50), max),
            BTreeSet::from([2])
        );
        // The maximum drain time frees even a slot with a flow.
        assert_eq!(
            releasable(&retired, Some(&r), t0 + max, max),
            BTreeSet::from([1, 2])
        );
    }
}
