//! `onehop agent`: keeps the pinned maps equal to the services file.
//!
//! The loop is deliberately level-triggered: every tick it compares the
//! file's bytes with the last ones it handled, and on a change it plans the
//! whole desired state from scratch against what the maps hold, writes only
//! the difference, and re-reads the maps if a write failed. A file that
//! does not parse or validate is logged with every problem it has, and the
//! maps keep the last good state.

use std::{
    collections::BTreeSet,
    net::Ipv4Addr,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use lb_common::{backend_flags, vip_flags};
use tokio::signal::unix::{SignalKind, signal};
use tracing::{error, info, warn};

use crate::{
    bpfmaps::Maps,
    config::{self, Limits, ServicesFile},
    diff, garp,
    loader::{self, Sizes, XdpAttachMode},
    neigh,
    netdev::Interface,
    reader,
    state::{self, DataplaneState, Node},
    writer,
};

#[derive(Clone, Debug)]
pub struct Options {
    pub interface: String,
    pub config: PathBuf,
    pub bpffs_root: PathBuf,
    pub sizes: Sizes,
    pub xdp_mode: XdpAttachMode,
    pub poll_interval: Duration,
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

struct Agent {
    iface: Interface,
    opts: Options,
    maps: Maps,
    /// Capacities of the maps actually pinned (a restart keeps the sizes
    /// they were created with, whatever the flags say now).
    limits: Limits,
    current: DataplaneState,
    last_input: Option<Vec<u8>>,
    arp: garp::ArpSender,
    /// (when, VIP) gratuitous ARPs still to send.
    garp_due: Vec<(Instant, Ipv4Addr)>,
    neighbours: BTreeSet<Ipv4Addr>,
}

impl Agent {
    fn node(&self, file: &ServicesFile) -> Result<Node> {
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

    /// One pass: read the file, and apply it if it changed.
    fn sync(&mut self) {
        let bytes = match std::fs::read(&self.opts.config) {
            Ok(b) => b,
            Err(e) => {
                if self.last_input.is_some() {
                    warn!(file = %self.opts.config.display(), error = %e, "cannot read the services file; keeping the current state");
                }
                return;
            }
        };
        if self.last_input.as_deref() == Some(bytes.as_slice()) {
            return;
        }
        self.last_input = Some(bytes.clone());
        let text = String::from_utf8_lossy(&bytes);
        let file = match config::parse(&text, &self.limits) {
            Ok(f) => f,
            Err(e) => {
                error!(file = %self.opts.config.display(), "rejected the services file; the last good state stays in force:\n{e}");
                return;
            }
        };
        if let Err(e) = self.apply(&file) {
            error!(error = %format!("{e:#}"), "applying the services file failed; the maps hold the last consistent state");
        }
    }

    fn apply(&mut self, file: &ServicesFile) -> Result<()> {
        let node = self.node(file)?;
        let desired = state::plan(&self.current, file, &node, &self.limits)?;
        let ops = diff::diff(&self.current, &desired);
        if ops.is_empty() {
            info!("services file unchanged in effect; nothing to write");
            return Ok(());
        }
        let result = writer::apply(&mut self.maps, &ops);
        let before = announced(&self.current);
        // Whatever happened, believe the kernel, not the plan.
        self.current = reader::read(&self.maps).context("re-reading the maps")?;
        result?;
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
        Ok(())
    }

    fn schedule_garp(&mut self, vip: Ipv4Addr, from: Instant) {
        for ms in garp::BURST_OFFSETS_MS {
            self.garp_due.push((from + Duration::from_millis(ms), vip));
        }
    }

    fn send_due_garps(&mut self) {
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

pub async fn run(opts: Options) -> Result<()> {
    let iface = Interface::lookup(&opts.interface)?;
    let dataplane = loader::attach(&iface, &opts.bpffs_root, opts.sizes, opts.xdp_mode)?;
    let maps = Maps::open(&dataplane.pins)?;
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
    let mut agent = Agent {
        iface,
        opts,
        limits,
        maps,
        current,
        last_input: None,
        arp,
        garp_due: Vec::new(),
        neighbours: BTreeSet::new(),
    };
    // A restart re-confirms ownership: tell the LAN again (stale caches
    // after partitions are a classic L2-announcer failure).
    let now = Instant::now();
    for vip in announced(&agent.current) {
        agent.schedule_garp(vip, now);
    }
    agent.sync_neighbours();

    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut tick = tokio::time::interval(agent.opts.poll_interval);
    info!(interface = %agent.iface.name, file = %agent.opts.config.display(), "agent running");
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = tick.tick() => {
                agent.sync();
                agent.send_due_garps();
            }
        }
    }
    info!(
        "stopping; the data path stays attached through its pinned links (`onehop cleanup` removes it)"
    );
    Ok(())
}
