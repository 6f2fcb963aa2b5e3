//! This node's Lease renewals, on a thread of their own.
//!
//! The agent's loop also plans and writes the maps (seconds of CPU for the
//! initial sync of 10,000 Services on a busy node, during which a
//! single-threaded runtime runs nothing else) and publishes Events and
//! annotations one API call at a time (10,000 `nodeAssigned` Events on that
//! sync). Renewed from that loop, the Lease waited behind them: past the
//! Lease duration the peers count the node dead and take its addresses,
//! only to hand them back once it renews again. This thread renews on a
//! runtime and a client of its own, every renew interval and at once when
//! the link changes, whatever the loop is doing.
//!
//! It renews only for a loop that still turns: past [`LOOP_STALL_LIMIT`]
//! without a sign of life ([`Renewer::alive`]: on every turn and after each
//! API call of a long pass) it lets the Lease lapse, so the peers take over
//! as they do from a crashed agent. The data path's heartbeat, which the
//! loop writes with each sign of life, silences ARP long before that.

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use k8s_openapi::{
    api::coordination::v1::Lease, apimachinery::pkg::apis::meta::v1::MicroTime, jiff::Timestamp,
};
use kube::{
    Api, Client,
    api::{Patch, PatchParams, PostParams},
};
use tokio::sync::{Notify, watch};
use tracing::{info, warn};

use super::advert::INTERFACE_ANNOTATION;
use super::kube::{LEASE_LABEL, LINK_ANNOTATION, lease_name};
use crate::k8s::{client, lease};

/// How long the agent's loop may show no sign of life before its Lease is
/// let lapse. Far above the longest pass seen (the initial sync of 10,000
/// Services: a few seconds on a loaded 2-core machine).
pub const LOOP_STALL_LIMIT: Duration = Duration::from_secs(30);

/// The last successful renewal.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Renewal {
    /// When it succeeded, on this process's clock.
    pub at: Option<Instant>,
    /// The `renewTime` it wrote, at the microsecond precision the API
    /// keeps, so the echo through the Lease watch can be recognised.
    pub stamp: Option<Timestamp>,
}

/// What this node's Lease says, besides the renewal time.
#[derive(Clone, Debug)]
pub struct LeaseWriter {
    pub namespace: String,
    pub node_name: String,
    /// The interface this agent serves.
    pub interface: String,
    pub lease_duration: Duration,
    pub renew_interval: Duration,
    /// How long the loop may show no sign of life before the Lease is let
    /// lapse ([`LOOP_STALL_LIMIT`] in the agent).
    pub stall_limit: Duration,
}

impl LeaseWriter {
    /// Writes this node's Lease (creating it the first time).
    async fn write(
        &self,
        client: &Client,
        stamp: Timestamp,
        link_up: bool,
    ) -> Result<(), kube::Error> {
        let leases: Api<Lease> = Api::namespaced(client.clone(), &self.namespace);
        let name = lease_name(&self.node_name);
        let now = MicroTime(stamp);
        let secs = lease::seconds(self.lease_duration);
        let link = if link_up { "up" } else { "down" };
        let mut annotations = BTreeMap::from([
            (INTERFACE_ANNOTATION.to_owned(), self.interface.clone()),
            (LINK_ANNOTATION.to_owned(), link.to_owned()),
        ]);
        // For the controller, which refuses pools containing a node's gateway but cannot
        // read the nodes' routes. Unreadable routes: the last report stands.
        match crate::net::route::gateways() {
            Ok(gw) => {
                annotations.insert(
                    lease::GATEWAYS_ANNOTATION.to_owned(),
                    lease::format_gateways(gw.keys()),
                );
            }
            Err(e) => {
                warn!(error = %format!("{e:#}"), "cannot read this node's routes to report its gateways");
            }
        }
        // Every renewal restates the interface, so a restart on another
        // interface is picked up without a separate write.
        let patch = serde_json::json!({
            "metadata": { "annotations": annotations },
            "spec": { "renewTime": now, "holderIdentity": self.node_name, "leaseDurationSeconds": secs }
        });
        match leases
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Err(kube::Error::Api(e)) if e.code == 404 => {
                let mut lease = lease::acquired(
                    &name,
                    &self.node_name,
                    self.lease_duration,
                    &now,
                    BTreeMap::from([(LEASE_LABEL.to_owned(), "true".to_owned())]),
                    annotations,
                );
                lease.metadata.namespace = Some(self.namespace.clone());
                leases
                    .create(&PostParams::default(), &lease)
                    .await
                    .map(|_| ())
            }
            r => r.map(|_| ()),
        }
    }

    /// Renews once, within one renew interval (a hung connection must not
    /// hold up the next renewal); the renewal, if it succeeded.
    async fn renew(&self, client: &Client, link_up: bool) -> Option<Renewal> {
        let now = Timestamp::now();
        let stamp = Timestamp::from_microsecond(now.as_microsecond()).unwrap_or(now);
        let result =
            tokio::time::timeout(self.renew_interval, self.write(client, stamp, link_up)).await;
        let name = lease_name(&self.node_name);
        match result {
            Ok(Ok(())) => Some(Renewal {
                at: Some(Instant::now()),
                stamp: Some(stamp),
            }),
            Ok(Err(e)) => {
                warn!(error = %e, lease = %name, "could not renew this node's lease");
                None
            }
            Err(_) => {
                warn!(lease = %name, "renewing this node's lease timed out");
                None
            }
        }
    }
}

/// The agent loop's handle on the renewal thread. Dropping it stops the
/// thread after its current renewal.
pub struct Renewer {
    link: watch::Sender<bool>,
    last: watch::Receiver<Renewal>,
    renewed: Arc<Notify>,
    alive: Arc<Mutex<Instant>>,
    turns: Arc<Turns>,
}

/// What the thread decided so far.
#[derive(Debug, Default)]
struct Turns {
    /// Renewals it started or withheld.
    count: AtomicU64,
    /// It withholds them: the loop has shown no sign of life for too long.
    stalled: AtomicBool,
}

impl Renewer {
    /// Starts the thread: it renews at once, then every renew interval.
    pub fn spawn(config: kube::Config, writer: LeaseWriter, link_up: bool) -> Result<Self> {
        let (link_tx, link_rx) = watch::channel(link_up);
        let (last_tx, last_rx) = watch::channel(Renewal::default());
        let renewed = Arc::new(Notify::new());
        let alive = Arc::new(Mutex::new(Instant::now()));
        let turns = Arc::new(Turns::default());
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = Thread {
            writer,
            link: link_rx,
            last: last_tx,
            renewed: Arc::clone(&renewed),
            alive: Arc::clone(&alive),
            turns: Arc::clone(&turns),
        };
        std::thread::Builder::new()
            .name("lease-renewer".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .context("starting the lease renewer's runtime")
                {
                    Ok(r) => r,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                runtime.block_on(async move {
                    // The client's connections are driven by the runtime it is built on:
                    // this one, which nothing else keeps busy.
                    match client::from_config(config) {
                        Ok(c) => {
                            let _ = ready_tx.send(Ok(()));
                            thread.run(&c).await;
                        }
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                        }
                    }
                });
            })
            .context("starting the lease renewer")?;
        ready_rx
            .recv()
            .context("the lease renewer stopped before it started")??;
        Ok(Self {
            link: link_tx,
            last: last_rx,
            renewed,
            alive,
            turns,
        })
    }

    /// Renewals the thread started or withheld so far.
    pub fn turns(&self) -> u64 {
        self.turns.count.load(Ordering::Acquire)
    }

    /// Whether the thread withholds renewals because the loop stalled.
    pub fn stalled(&self) -> bool {
        self.turns.stalled.load(Ordering::Acquire)
    }

    /// The last successful renewal.
    pub fn last(&self) -> Renewal {
        *self.last.borrow()
    }

    /// Says whether the interface can carry traffic; a change is renewed
    /// at once (the peers leave a node whose link is down out of the
    /// election).
    pub fn set_link(&self, up: bool) {
        self.link
            .send_if_modified(|cur| std::mem::replace(cur, up) != up);
    }

    /// Returns after the next renewal attempt (or at once if one happened
    /// since the last call).
    pub async fn renewed(&self) {
        self.renewed.notified().await;
    }

    /// The loop's sign of life: the Lease is renewed only while it comes.
    pub fn alive(&self) {
        *self.alive.lock().unwrap_or_else(PoisonError::into_inner) = Instant::now();
    }
}

/// The renewal thread's side.
struct Thread {
    writer: LeaseWriter,
    link: watch::Receiver<bool>,
    last: watch::Sender<Renewal>,
    renewed: Arc<Notify>,
    alive: Arc<Mutex<Instant>>,
    turns: Arc<Turns>,
}

impl Thread {
    async fn run(mut self, client: &Client) {
        let mut interval = tokio::time::interval(self.writer.renew_interval);
        loop {
            tokio::select! {
                _ = interval.tick() => {}
                changed = self.link.changed() => {
                    if changed.is_err() {
                        return; // the agent's loop is gone
                    }
                }
            }
            let quiet = self
                .alive
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .elapsed();
            let stalled = quiet > self.writer.stall_limit;
            let was = self.turns.stalled.swap(stalled, Ordering::AcqRel);
            if stalled {
                if !was {
                    warn!(
                        quiet_ms = u64::try_from(quiet.as_millis()).unwrap_or(u64::MAX),
                        "the agent's loop has shown no sign of life: no longer renewing this node's lease, so peers take its addresses over"
                    );
                }
                self.turns.count.fetch_add(1, Ordering::AcqRel);
                continue;
            }
            if was {
                info!("the agent's loop turns again: renewing this node's lease");
            }
            let link_up = *self.link.borrow_and_update();
            let renewed = self.writer.renew(client, link_up).await;
            self.turns.count.fetch_add(1, Ordering::AcqRel);
            if let Some(r) = renewed
                && self.last.send(r).is_err()
            {
                return;
            }
            self.renewed.notify_one();
        }
    }
}
