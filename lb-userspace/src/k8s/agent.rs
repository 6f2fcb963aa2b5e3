//! The agent's Kubernetes source: watches Services, EndpointSlices, Nodes
//! and the per-node Leases, elects which VIPs this node announces, and
//! feeds the result through the same plan → diff → write path as a
//! services file.
//!
//! Liveness: every agent renews one Lease (`onehop-node-<node>`) every
//! `renew_interval`; API writes therefore grow with nodes, not services. A
//! node is live while its Lease was seen changing within `lease_duration`
//! — measured on this agent's own clock when the change was *observed*, so
//! clock skew between nodes does not matter (client-go's leader election
//! works the same way).
//!
//! API outages: the reflectors keep their last state and resume with
//! backoff. While this agent cannot renew its own Lease it cannot tell a
//! dead peer from a dead API server, so it holds the last applied state
//! (traffic keeps flowing) instead of re-electing on stale information.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use futures::TryStreamExt as _;
use k8s_openapi::{
    api::{
        coordination::v1::{Lease, LeaseSpec},
        core::v1::{Node, Service},
        discovery::v1::EndpointSlice,
    },
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
    jiff::Timestamp,
};
use kube::{
    Api, Client, Resource as _, ResourceExt as _,
    api::{Patch, PatchParams, PostParams},
    runtime::{
        WatchStreamExt as _,
        events::{Event, EventType, Recorder, Reporter},
        reflector::{self, Store},
        watcher,
    },
};
use tokio::sync::Notify;
use tracing::{info, warn};

use super::{
    election::{self, Candidate},
    translate::{self, ClassFilter, Inputs, ServiceRef, Warning},
};
use crate::{
    agent::{self, Agent},
    config::NatPorts,
};

/// Label on the per-node Leases.
pub const LEASE_LABEL: &str = "onehop.io/node-lease";

/// Kubernetes-source settings.
#[derive(Clone, Debug)]
pub struct Options {
    /// This node's name (`spec.nodeName` of its pods; the downward API's
    /// `spec.nodeName`).
    pub node_name: String,
    /// Namespace of the per-node Leases.
    pub namespace: String,
    pub class: ClassFilter,
    pub nat_ports: NatPorts,
    /// How often this agent renews its Lease.
    pub renew_interval: Duration,
    /// How long a Lease may go unrenewed before its node counts as dead.
    pub lease_duration: Duration,
}

pub fn lease_name(node: &str) -> String {
    format!("onehop-node-{node}")
}

/// Keeps a reflector store fed; pokes `changed` on every event.
fn spawn_reflector<K>(api: Api<K>, config: watcher::Config, changed: Arc<Notify>) -> Store<K>
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let (reader, writer) = reflector::store();
    let stream = reflector::reflector(writer, watcher(api, config))
        .default_backoff()
        .touched_objects();
    tokio::spawn(async move {
        futures::pin_mut!(stream);
        loop {
            match stream.try_next().await {
                Ok(Some(_)) => changed.notify_one(),
                Ok(None) => break,
                // Backoff is applied by the stream; keep the last state.
                Err(e) => warn!(error = %e, "watch error; keeping the last state and retrying"),
            }
        }
    });
    reader
}

/// When each node's Lease was last seen changing, on our clock.
#[derive(Default)]
struct Liveness {
    seen: BTreeMap<String, (String, Instant)>,
}

impl Liveness {
    fn observe(&mut self, leases: &[Arc<Lease>], now: Instant) {
        for l in leases {
            let Some(holder) = l.spec.as_ref().and_then(|s| s.holder_identity.clone()) else {
                continue;
            };
            let rv = l.resource_version().unwrap_or_default();
            match self.seen.get(&holder) {
                Some((old, _)) if *old == rv => {}
                _ => {
                    self.seen.insert(holder, (rv, now));
                }
            }
        }
    }

    fn live(&self, now: Instant, within: Duration) -> BTreeSet<String> {
        self.seen
            .iter()
            .filter(|(_, (_, at))| now.duration_since(*at) < within)
            .map(|(n, _)| n.clone())
            .collect()
    }
}

struct Stores {
    services: Store<Service>,
    slices: Store<EndpointSlice>,
    nodes: Store<Node>,
    leases: Store<Lease>,
}

fn owned<K: Clone>(v: Vec<Arc<K>>) -> Vec<K> {
    v.into_iter().map(|a| (*a).clone()).collect()
}

struct KubeAgent {
    opts: Options,
    client: Client,
    recorder: Recorder,
    stores: Stores,
    liveness: Liveness,
    last_renewed: Option<Instant>,
    holding: bool,
    warned: BTreeSet<Warning>,
}

impl KubeAgent {
    async fn renew(&mut self) {
        let leases: Api<Lease> = Api::namespaced(self.client.clone(), &self.opts.namespace);
        let name = lease_name(&self.opts.node_name);
        let now = MicroTime(Timestamp::now());
        let secs = i32::try_from(self.opts.lease_duration.as_secs().max(1)).unwrap_or(i32::MAX);
        let patch = serde_json::json!({ "spec": { "renewTime": now, "holderIdentity": self.opts.node_name, "leaseDurationSeconds": secs } });
        let result = match leases
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Err(kube::Error::Api(e)) if e.code == 404 => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(name.clone()),
                        namespace: Some(self.opts.namespace.clone()),
                        labels: Some(BTreeMap::from([(
                            LEASE_LABEL.to_owned(),
                            "true".to_owned(),
                        )])),
                        ..ObjectMeta::default()
                    },
                    spec: Some(LeaseSpec {
                        holder_identity: Some(self.opts.node_name.clone()),
                        lease_duration_seconds: Some(secs),
                        acquire_time: Some(now.clone()),
                        renew_time: Some(now),
                        ..LeaseSpec::default()
                    }),
                };
                leases
                    .create(&PostParams::default(), &lease)
                    .await
                    .map(|_| ())
            }
            r => r.map(|_| ()),
        };
        match result {
            Ok(()) => self.last_renewed = Some(Instant::now()),
            Err(e) => warn!(error = %e, lease = %name, "could not renew this node's lease"),
        }
    }

    /// Whether we can trust our view of the cluster right now.
    fn api_reachable(&self, now: Instant) -> bool {
        self.last_renewed
            .is_some_and(|t| now.duration_since(t) < self.opts.lease_duration)
    }

    async fn reconcile(&mut self, agent: &mut Agent) {
        let now = Instant::now();
        if !self.api_reachable(now) {
            if !self.holding {
                warn!(
                    "cannot renew this node's lease: holding the last applied state until the API answers again"
                );
                self.holding = true;
            }
            return;
        }
        if self.holding {
            info!("the API answers again; resuming");
            self.holding = false;
        }
        let services = owned(self.stores.services.state());
        let slices = owned(self.stores.slices.state());
        let nodes = owned(self.stores.nodes.state());
        self.liveness.observe(&self.stores.leases.state(), now);
        let ready: BTreeSet<String> = nodes
            .iter()
            .filter(|n| translate::node_ready(n))
            .map(kube::ResourceExt::name_any)
            .collect();
        let live: BTreeSet<String> = self
            .liveness
            .live(now, self.opts.lease_duration)
            .intersection(&ready)
            .cloned()
            .collect();
        let candidates: Vec<Candidate> = services
            .iter()
            .filter(|s| translate::is_ours(s, &self.opts.class))
            .map(|s| Candidate {
                vips: translate::ingress_ips(s),
                local_only: translate::local_policy(s),
                endpoint_nodes: translate::endpoint_nodes(&translate::reference(s), &slices),
                allowed_nodes: None,
            })
            .collect();
        let announce = election::announced_by(&self.opts.node_name, &live, &candidates);
        let t = translate::translate(&Inputs {
            services: &services,
            slices: &slices,
            nodes: &nodes,
            node_name: &self.opts.node_name,
            class: &self.opts.class,
            announce: &announce,
            nat_ports: self.opts.nat_ports,
        });
        let before = agent.announced();
        if let Err(e) = agent.apply(&t.file) {
            warn!(error = %format!("{e:#}"), "applying the cluster state failed; the maps hold the last consistent state");
        }
        let started: BTreeSet<Ipv4Addr> = agent.announced().difference(&before).copied().collect();
        self.publish_events(&services, &t.warnings, &started).await;
    }

    async fn publish_events(
        &mut self,
        services: &[Service],
        warnings: &[Warning],
        started: &BTreeSet<Ipv4Addr>,
    ) {
        let by_ref: BTreeMap<ServiceRef, &Service> = services
            .iter()
            .map(|s| (translate::reference(s), s))
            .collect();
        let fresh: Vec<Warning> = warnings
            .iter()
            .filter(|w| !self.warned.contains(*w))
            .cloned()
            .collect();
        for w in fresh {
            if let Some(svc) = by_ref.get(&w.service) {
                let ev = Event {
                    type_: EventType::Warning,
                    reason: w.reason.to_owned(),
                    note: Some(w.message.clone()),
                    action: "Translate".into(),
                    secondary: None,
                };
                if let Err(e) = self.recorder.publish(&ev, &svc.object_ref(&())).await {
                    warn!(error = %e, service = %w.service, "could not publish an event");
                }
            }
            self.warned.insert(w);
        }
        // Forget warnings that no longer apply, so they are reported again
        // if they come back.
        self.warned.retain(|w| warnings.contains(w));
        for svc in services.iter().filter(|s| {
            translate::ingress_ips(s)
                .iter()
                .any(|ip| started.contains(ip))
        }) {
            let ev = Event {
                type_: EventType::Normal,
                reason: "nodeAssigned".into(),
                note: Some(format!(
                    "announcing from node \"{}\" with protocol \"layer2\"",
                    self.opts.node_name
                )),
                action: "Announce".into(),
                secondary: None,
            };
            if let Err(e) = self.recorder.publish(&ev, &svc.object_ref(&())).await {
                warn!(error = %e, "could not publish the nodeAssigned event");
            }
        }
    }
}

/// Runs the agent with the Kubernetes source until SIGTERM/SIGINT.
pub async fn run(dataplane: agent::Options, opts: Options, client: Client) -> Result<()> {
    let mut agent = Agent::start(&dataplane)?;
    let changed = Arc::new(Notify::new());
    let stores = Stores {
        services: spawn_reflector(
            Api::<Service>::all(client.clone()),
            watcher::Config::default(),
            changed.clone(),
        ),
        slices: spawn_reflector(
            Api::<EndpointSlice>::all(client.clone()),
            watcher::Config::default().labels(translate::SERVICE_NAME_LABEL),
            changed.clone(),
        ),
        nodes: spawn_reflector(
            Api::<Node>::all(client.clone()),
            watcher::Config::default(),
            changed.clone(),
        ),
        leases: spawn_reflector(
            Api::<Lease>::namespaced(client.clone(), &opts.namespace),
            watcher::Config::default().labels(LEASE_LABEL),
            changed.clone(),
        ),
    };
    let reporter = Reporter {
        controller: "onehop-agent".into(),
        instance: Some(opts.node_name.clone()),
    };
    let mut ka = KubeAgent {
        recorder: Recorder::new(client.clone(), reporter),
        client,
        opts,
        stores,
        liveness: Liveness::default(),
        last_renewed: None,
        holding: false,
        warned: BTreeSet::new(),
    };
    ka.renew().await;
    for (what, ready) in [
        (
            "services",
            ka.stores.services.wait_until_ready().await.is_ok(),
        ),
        (
            "endpointslices",
            ka.stores.slices.wait_until_ready().await.is_ok(),
        ),
        ("nodes", ka.stores.nodes.wait_until_ready().await.is_ok()),
        ("leases", ka.stores.leases.wait_until_ready().await.is_ok()),
    ] {
        anyhow::ensure!(ready, "the {what} watcher stopped before its first list");
    }
    info!(node = %ka.opts.node_name, interface = %agent.iface.name, "agent running with the Kubernetes source");
    let shutdown = agent::shutdown_signal();
    tokio::pin!(shutdown);
    let mut renew = tokio::time::interval(ka.opts.renew_interval);
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tokio::select! {
            r = &mut shutdown => { r.context("waiting for signals")?; break; }
            () = changed.notified() => {
                // Coalesce bursts (a list of thousands of objects).
                tokio::time::sleep(Duration::from_millis(20)).await;
                ka.reconcile(&mut agent).await;
            }
            _ = renew.tick() => {
                ka.renew().await;
                ka.reconcile(&mut agent).await;
            }
            _ = tick.tick() => agent.send_due_garps(),
        }
    }
    info!("stopping; the data path stays attached through its pinned links");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(holder: &str, rv: &str) -> Arc<Lease> {
        let mut l = Lease::default();
        l.metadata.resource_version = Some(rv.into());
        l.spec = Some(LeaseSpec {
            holder_identity: Some(holder.into()),
            ..LeaseSpec::default()
        });
        Arc::new(l)
    }

    #[test]
    fn liveness_follows_observed_changes_not_timestamps() {
        let mut l = Liveness::default();
        let t0 = Instant::now();
        let d = Duration::from_millis(1500);
        l.observe(&[lease("a", "1"), lease("b", "1")], t0);
        assert_eq!(l.live(t0, d).len(), 2);
        // a renews, b does not.
        let t1 = t0 + Duration::from_secs(1);
        l.observe(&[lease("a", "2"), lease("b", "1")], t1);
        let t2 = t0 + Duration::from_millis(1600);
        assert_eq!(l.live(t2, d), BTreeSet::from(["a".to_owned()]));
        // b comes back.
        l.observe(&[lease("a", "2"), lease("b", "7")], t2);
        assert_eq!(l.live(t2, d).len(), 2);
        assert!(l.live(t2 + d, d).is_empty());
    }

    #[test]
    fn lease_names() {
        assert_eq!(lease_name("worker-1"), "onehop-node-worker-1");
    }
}
