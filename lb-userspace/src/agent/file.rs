//! The services-file source: the agent polls the file and applies it
//! whenever its bytes change; a file that does not parse or validate is
//! reported with every problem it has and the last good state stays.
//!
//! Every tick renews the heartbeat (the file is this node's own word on
//! what it announces, adopted state included) and checks the interface:
//! while it is down or without carrier, the file's `announce` list is
//! withheld, and restored when the link is back.

mod watch;

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::Result;
use tracing::{error, info, warn};

use self::watch::{Stamp, Watch};
use super::{MapOwner, Options};
use crate::{
    net::route,
    plan::{model::NodeServices, services_file},
};

/// The shortest heartbeat hold: the failover time of the Kubernetes source
/// (its Lease duration), so both sources give a dead agent's addresses up
/// as fast.
const MIN_HOLD: Duration = Duration::from_millis(1200);

/// How long the data path keeps answering ARP after a tick: several ticks,
/// so a slow tick does not silence it.
fn hold(poll_interval: Duration) -> Duration {
    (poll_interval * 3).max(MIN_HOLD)
}

/// The services-file source: re-reads `path` every `poll_interval` and
/// applies it when its bytes changed.
pub async fn run(opts: Options, path: PathBuf, poll_interval: Duration) -> Result<()> {
    let mut agent = MapOwner::start(&opts)?;
    let mut source = FileSource {
        path,
        last_input: None,
        last_file: None,
        fresh: false,
        applied_link: None,
        watch: Watch::default(),
    };
    let hold = hold(poll_interval);
    let mut tick = tokio::time::interval(poll_interval);
    let shutdown = crate::shutdown::signal();
    tokio::pin!(shutdown);
    info!(interface = %agent.iface.name, file = %source.path.display(), "agent running");
    loop {
        tokio::select! {
            r = &mut shutdown => { r?; break; }
            _ = tick.tick() => {
                // Before the sync: an address it announces must find the
                // heartbeat current as soon as it is in the maps.
                agent.heartbeat(hold);
                source.sync(&mut agent);
                agent.release_drained();
                agent.send_due_garps();
            }
        }
    }
    info!(
        "stopping; the data path stays attached through its pinned links (`onehop cleanup` removes it)"
    );
    Ok(())
}

struct FileSource {
    path: PathBuf,
    last_input: Option<Vec<u8>>,
    /// The last file that parsed (what the link state is applied to).
    last_file: Option<NodeServices>,
    /// `last_file` is new since the last apply.
    fresh: bool,
    /// The link state the last apply was for.
    applied_link: Option<bool>,
    watch: Watch,
}

impl FileSource {
    /// One pass: read the file if its metadata says it may have changed (see [`watch`]),
    /// and apply it if its bytes did or the link state changed.
    fn sync(&mut self, agent: &mut MapOwner) {
        self.read(agent);
        let usable = agent.link_usable();
        if !std::mem::take(&mut self.fresh) && self.applied_link == Some(usable) {
            return;
        }
        self.applied_link = Some(usable);
        let Some(file) = &self.last_file else {
            // Nothing parsed yet: what the maps hold (adopted) stays.
            return;
        };
        let mut effective = file.clone();
        if !usable {
            effective.announce.clear();
        }
        if let Err(e) = agent.apply(&effective) {
            error!(error = %format!("{e:#}"), "applying the services file failed; the maps hold the last consistent state");
        }
        drop(effective);
        agent.release_memory();
    }

    /// Reads the file if its metadata says it may have changed and keeps
    /// it in `last_file` if it is new and valid.
    fn read(&mut self, agent: &mut MapOwner) {
        let now = Instant::now();
        let stamp = std::fs::metadata(&self.path).ok().map(|m| Stamp::of(&m));
        if !self.watch.due(stamp, now) {
            return;
        }
        self.watch.read(stamp, now);
        let bytes = match std::fs::read(&self.path) {
            Ok(b) => b,
            Err(e) => {
                if self.last_input.is_some() {
                    warn!(file = %self.path.display(), error = %e, "cannot read the services file; keeping the current state");
                }
                return;
            }
        };
        if self.last_input.as_deref() == Some(bytes.as_slice()) {
            return;
        }
        self.last_input = Some(bytes.clone());
        let text = String::from_utf8_lossy(&bytes);
        let mut file = match services_file::parse(&text, &agent.limits) {
            Ok(f) => f,
            Err(e) => {
                error!(file = %self.path.display(), "rejected the services file; the last good state stays in force:\n{e}");
                agent.health.record(false);
                return;
            }
        };
        // Read when the file is, so a file that names the router is caught however the
        // routes were when it was written.
        match route::all_gateways() {
            Ok(gateways) => {
                for (vip, what) in file.withhold(&gateways) {
                    warn!(%vip, "{vip} is {what}; it is neither served nor announced (answering ARP for it would take the router's traffic)");
                }
            }
            Err(e) => {
                warn!(error = %format!("{e:#}"), "cannot read this node's routes; gateways are not withheld");
            }
        }
        for s in &file.services {
            if let Some((configured, grown)) = s.grown_table(file.maglev_table_size) {
                warn!(
                    service = %s.name,
                    configured = configured.get(),
                    slots = grown,
                    "more than {} backends would get fewer than 10 slots each of the {configured}-slot Maglev table, so it has {grown} slots; it changes size again when the backends cross {} (remapping most new flows): set the service's maglev_table_size to keep it fixed",
                    configured.get() / lb_common::maps::MAGLEV_MIN_SLOTS_PER_BACKEND,
                    configured.get() / lb_common::maps::MAGLEV_MIN_SLOTS_PER_BACKEND,
                );
            }
        }
        self.last_file = Some(file);
        self.fresh = true;
    }
}
