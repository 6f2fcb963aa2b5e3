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

use std::{
    collections::BTreeSet,
    net::Ipv4Addr,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use lb_common::{backend_flags, vip_flags};
use tracing::{info, warn};

use crate::{
    dataplane::loader::{self, Sizes, XdpAttachMode},
    dataplane::maps::{Maps, PinDir},
    dataplane::memory,
    dataplane::reader,
    dataplane::writer,
    net::garp,
    net::neigh,
    net::netdev::Interface,
    plan::diff,
    plan::model::{Limits, NodeServices},
    plan::state::{self, DataplaneState, Node},
};

/// How the data path is attached (shared by every source of services).
#[derive(Clone, Debug)]
pub struct Options {
    pub interface: String,
    pub bpffs_root: PathBuf,
    pub sizes: Sizes,
    pub xdp_mode: XdpAttachMode,
    /// Where to serve `/metrics` and the probes.
    pub listen: crate::http::Listen,
}

/// VIPs flagged ANNOUNCE in a state.
fn announced(state: &DataplaneState) -> BTreeSet<Ipv4Addr> {
    state
        .vips
        .iter()
        .filter(|(_, flags)| *flags & vip_flags::ANNOUNCE != 0)
        .map(|(ip, _)| Ipv4Addr::from(*ip))
        .collect()
}

/// Node addresses of remote backends: the next hops XDP needs MACs for.
fn remote_nodes(state: &DataplaneState) -> BTreeSet<Ipv4Addr> {
    state
        .backends
        .values()
        .filter(|b| b.flags & backend_flags::VALID != 0 && b.flags & backend_flags::LOCAL == 0)
        .map(|b| Ipv4Addr::from(b.node_ip))
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
    /// (when, VIP) gratuitous ARPs still to send.
    garp_due: Vec<(Instant, Ipv4Addr)>,
    neighbours: BTreeSet<Ipv4Addr>,
    pub health: Arc<metrics::Health>,
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
            ifindex: self.iface.index,
            mac: self.iface.mac,
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

    fn apply_inner(&mut self, file: &NodeServices) -> Result<()> {
        if self.applied.as_ref() == Some(file) {
            return Ok(());
        }
        self.applied = None;
        let node = self.node(file)?;
        let desired = if self.current_planned {
            state::replan(&self.current, file, &node, &self.limits)?
        } else {
            state::plan(&self.current, file, &node, &self.limits)?
        };
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
            }
            Err(e) => {
                // A partial write: believe the kernel, not the plan.
                self.current_planned = false;
                self.current = Arc::new(reader::read(&self.maps).context("re-reading the maps")?);
                return Err(e);
            }
        }
        info!(
            writes = ops.len(),
            services = self.current.services.len(),
            backends = self.current.backends.len(),
            "applied the services file"
        );
        let now = Instant::now();
        for vip in announced(&self.current).difference(&before) {
            info!(%vip, "now announcing");
            self.schedule_garp(*vip, now);
        }
        self.sync_neighbours();
        self.applied = Some(file.clone());
        Ok(())
    }

    fn schedule_garp(&mut self, vip: Ipv4Addr, from: Instant) {
        for ms in garp::BURST_OFFSETS_MS {
            self.garp_due.push((from + Duration::from_millis(ms), vip));
        }
    }

    /// Sends the gratuitous ARPs that are due.
    pub fn send_due_garps(&mut self) {
        let now = Instant::now();
        let still_announced = announced(&self.current);
        let (due, later): (Vec<_>, Vec<_>) = self.garp_due.drain(..).partition(|(t, _)| *t <= now);
        self.garp_due = later;
        for (_, vip) in due {
            if !still_announced.contains(&vip) {
                continue;
            }
            if let Err(e) = self.arp.announce(self.iface.mac, vip) {
                warn!(error = %format!("{e:#}"), "gratuitous ARP failed");
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

impl MapOwner {
    /// Attaches (or adopts) the data path and gets ready to apply.
    pub fn start(opts: &Options) -> Result<Self> {
        let iface = Interface::lookup(&opts.interface)?;
        let dataplane = loader::attach(&iface, &opts.bpffs_root, opts.sizes, opts.xdp_mode)?;
        let maps = Maps::open(&dataplane.pins)?;
        log_map_memory(&dataplane.pins, dataplane.adopted);
        let current = if dataplane.adopted {
            let state = reader::read(&maps).context("reading the pinned state")?;
            info!(
                services = state.services.len(),
                backends = state.backends.len(),
                "adopted pinned maps and links; established connections keep their backends"
            );
            state
        } else {
            DataplaneState::default()
        };
        let arp = garp::ArpSender::new(iface.index)?;
        let limits = Limits {
            maglev_slots: maps.maglev.len(),
            ..Limits::default()
        };
        let health = Arc::new(metrics::Health::default());
        metrics::serve(opts.listen, dataplane.pins.clone(), &health)?;
        let mut agent = Self {
            health,
            iface,
            limits,
            maps,
            current: Arc::new(current),
            current_planned: false,
            applied: None,
            arp,
            garp_due: Vec::new(),
            neighbours: BTreeSet::new(),
        };
        agent.health.set_state(&agent.current);
        // A restart re-confirms ownership: tell the LAN again (stale caches
        // after partitions are a classic L2-announcer failure).
        let now = Instant::now();
        for vip in announced(&agent.current) {
            agent.schedule_garp(vip, now);
        }
        agent.sync_neighbours();
        Ok(agent)
    }

    /// The VIPs the maps currently announce.
    pub fn announced(&self) -> BTreeSet<Ipv4Addr> {
        announced(&self.current)
    }
}
