//! The agent's Kubernetes source: watches Services, EndpointSlices, Nodes
//! and the per-node Leases, elects which VIPs this node announces, and
//! feeds the result through the same plan → diff → write path as a
//! services file.
//!
//! Liveness: every agent renews one Lease (`onehop-node-<node>`) every
//! `renew_interval`; API writes therefore grow with nodes, not services.
//! The renewals run on a thread of their own ([`super::renewer`]), so a long
//! pass of this loop (a large initial sync) never delays them. A
//! node is live while its Lease was seen changing within `lease_duration`
//! — measured on this agent's own clock when the change was *observed*, so
//! clock skew between nodes does not matter (client-go's leader election
//! works the same way).
//!
//! API outages: the reflectors keep their last state and resume with
//! backoff. While this agent cannot renew its own Lease it cannot tell a
//! dead peer from a dead API server, so it holds the last applied state
//! (traffic keeps flowing) instead of re-electing on stale information.
//!
//! Crash safety: once its first election has run, the agent renews the
//! data path's heartbeat on every turn of its loop (holding included: an
//! API outage must not silence every node). Its hold is the Lease duration
//! less one renew interval, so a dead agent's data path stops answering ARP
//! no later than its peers can declare it dead and take over.
//!
//! Link state: while the served interface is down or without carrier the
//! node is ineligible. Its Lease says so ([`LINK_ANNOTATION`], written at
//! once on a change), peers leave it out of the election, and it withdraws
//! its own announcements, also while holding (giving up is always safe).

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use k8s_openapi::api::{
    coordination::v1::Lease,
    core::v1::{Node, Service},
    discovery::v1::EndpointSlice,
};
use kube::{
    Api, Client, Resource as _, ResourceExt as _,
    api::{Patch, PatchParams},
    runtime::{
        events::{Event, EventType, Reporter},
        reflector::Store,
    },
};
use tokio::sync::Notify;
use tracing::{info, warn};

use super::{
    advert::{self, INTERFACE_ANNOTATION},
    announcer::{self, Change},
    election::{self, Candidate},
    renewer::{LeaseWriter, Renewer},
    trim,
};
use crate::k8s::{
    crd::{IPAddressPool, L2Advertisement},
    events::Recorder,
    lease,
    slice::Slice,
    translate::{self, ClassFilter, Inputs, ServiceRef, Warning},
    watch,
};
use crate::{
    agent::{self, MapOwner},
    plan::{
        model::{DirectReturn, FlowTimeouts, MaglevSize, NatPorts},
        slots::SlotError,
        state::PlanError,
    },
};

/// Label on the per-node Leases.
pub const LEASE_LABEL: &str = "onehop.io/node-lease";

/// Annotation on a node's Lease: `down` while its served interface is down
/// or without carrier (the node may not announce), `up` otherwise. A Lease
/// without it (an older agent) counts as `up`.
pub const LINK_ANNOTATION: &str = "onehop.io/link";

/// How often the loop checks the link, renews the heartbeat and sends due
/// gratuitous ARP.
const TICK: Duration = Duration::from_millis(100);

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
    pub flow_timeouts: FlowTimeouts,
    /// Maglev table size of the Services without the
    /// `onehop.io/maglev-table-size` annotation.
    pub maglev_table_size: MaglevSize,
    /// `--direct-return`: direct server return to backends on live nodes of
    /// the segment (see `DirectReturn`).
    pub direct_return: bool,
    /// How often this agent renews its Lease.
    pub renew_interval: Duration,
    /// How long a Lease may go unrenewed before its node counts as dead.
    pub lease_duration: Duration,
}

pub fn lease_name(node: &str) -> String {
    format!("onehop-node-{node}")
}

/// Keeps a reflector store fed; pokes `changed` on every event.
/// Which nodes are alive, judged from Lease changes as this agent observes
/// them through its watch.
///
/// A peer is dead when *our own* renewals kept arriving through the watch
/// for a full lease duration after the peer's last change. Our echoes prove
/// the watch was delivering (a watch delivers in resourceVersion order), so
/// a stalled watch or an API outage never makes a healthy peer look dead,
/// and clock skew between nodes plays no part.
struct Liveness {
    me: String,
    seen: BTreeMap<String, (String, Instant)>,
    /// When our own latest renewal came back through the watch.
    own_echo: Option<Instant>,
}

impl Liveness {
    fn new(me: &str) -> Self {
        Self {
            me: me.to_owned(),
            seen: BTreeMap::new(),
            own_echo: None,
        }
    }

    fn observe(&mut self, leases: &[Arc<Lease>], now: Instant, within: Duration) {
        for l in leases {
            let Some(holder) = l.spec.as_ref().and_then(|s| s.holder_identity.clone()) else {
                continue;
            };
            let rv = l.resource_version().unwrap_or_default();
            if self.seen.get(&holder).is_some_and(|(old, _)| *old == rv) {
                continue;
            }
            if holder == self.me {
                if self
                    .own_echo
                    .is_some_and(|e| now.duration_since(e) > within)
                {
                    // Our watch had stalled: nobody's renewals were visible,
                    // so give every peer a fresh start.
                    for (_, at) in self.seen.values_mut() {
                        *at = now;
                    }
                }
                self.own_echo = Some(now);
            }
            self.seen.insert(holder, (rv, now));
        }
    }

    fn live(&self, within: Duration) -> BTreeSet<String> {
        let mut live: BTreeSet<String> = self
            .seen
            .iter()
            .filter(|(_, (_, at))| self.own_echo.is_none_or(|echo| echo <= *at + within))
            .map(|(n, _)| n.clone())
            .collect();
        live.insert(self.me.clone());
        live
    }
}

/// Nodes whose Lease says their interface cannot carry traffic.
fn link_down_nodes(leases: &[Arc<Lease>]) -> BTreeSet<String> {
    leases
        .iter()
        .filter(|l| l.annotations().get(LINK_ANNOTATION).map(String::as_str) == Some("down"))
        .filter_map(|l| l.spec.as_ref()?.holder_identity.clone())
        .collect()
}

/// With `on`, direct return to the backends on the nodes whose agent is live
/// (its Lease fresh, the node Ready, its link up): their XDP program
/// delivers a frame for a VIP to their pod. A node whose agent never ran, or
/// stopped, gets full NAT for new flows (its flows keep the way they
/// started).
fn direct_peers(on: bool, nodes: &[Node], live: &BTreeSet<String>) -> DirectReturn {
    if !on {
        return DirectReturn::Off;
    }
    let v4 = translate::node_addresses(nodes)
        .into_iter()
        .map(|(name, ip)| (name, IpAddr::V4(ip)));
    let v6 = translate::node_addresses6(nodes)
        .into_iter()
        .map(|(name, ip)| (name, IpAddr::V6(ip)));
    DirectReturn::Nodes(
        v4.chain(v6)
            .filter(|(name, _)| live.contains(name))
            .map(|(_, ip)| ip)
            .collect(),
    )
}

/// The election's candidates of one Service: one per address family it has
/// addresses of, each with the nodes its advertisement allows for the
/// family's first address (`reach`) and, for `externalTrafficPolicy:
/// Local`, the nodes running a usable endpoint of that family: a dual-stack
/// Service's addresses are elected apart, each by the pods that serve it.
fn candidates_of(
    svc: &Service,
    slices: &translate::SliceIndex,
    reach: impl Fn(IpAddr) -> advert::Reach,
) -> Vec<Candidate> {
    let all = translate::ingress_addrs(svc);
    let r = translate::reference(svc);
    let mut out = Vec::new();
    for v6 in [false, true] {
        let vips: Vec<IpAddr> = all.iter().copied().filter(|v| v.is_ipv6() == v6).collect();
        let Some(first) = vips.first() else {
            continue;
        };
        let reach = reach(*first);
        out.push(Candidate {
            allowed_nodes: reach.allowed,
            preferred_nodes: reach.preferred,
            vips,
            local_only: translate::local_policy(svc),
            endpoint_nodes: translate::endpoint_nodes_of(&r, slices, v6),
        });
    }
    out
}

/// The heartbeat hold for a Lease of `lease_duration` renewed every
/// `renew_interval`: a peer declares this node dead a full Lease duration
/// after the last renewal it saw, which is at most one renew interval
/// before the agent's last heartbeat. At least two loop ticks.
fn heartbeat_hold(lease_duration: Duration, renew_interval: Duration) -> Duration {
    lease_duration.saturating_sub(renew_interval).max(TICK * 2)
}

/// Node name → the interface its agent serves, from the per-node Leases.
fn lease_interfaces(leases: &[Arc<Lease>]) -> BTreeMap<String, String> {
    leases
        .iter()
        .filter_map(|l| {
            let node = l.spec.as_ref()?.holder_identity.clone()?;
            let interface = l.annotations().get(INTERFACE_ANNOTATION)?.clone();
            Some((node, interface))
        })
        .collect()
}

struct Stores {
    services: Store<Service>,
    /// What the translation reads of each slice, not the objects (most of what a large
    /// cluster's agent would otherwise hold).
    slices: watch::Cache<Slice>,
    nodes: Store<Node>,
    leases: Store<Lease>,
    pools: Store<IPAddressPool>,
    ads: Store<L2Advertisement>,
}

impl Stores {
    /// Starts one reflector per watched kind; each pokes `changed`.
    fn spawn(client: &Client, namespace: &str, changed: &Arc<Notify>) -> Self {
        Self {
            services: watch::spawn(
                Api::<Service>::all(client.clone()),
                watch::config(),
                changed,
                trim::service,
            ),
            slices: watch::spawn_read(
                Api::<EndpointSlice>::all(client.clone()),
                watch::config().labels(translate::SERVICE_NAME_LABEL),
                changed,
                Slice::read,
            ),
            nodes: watch::spawn(
                Api::<Node>::all(client.clone()),
                watch::config(),
                changed,
                trim::node,
            ),
            leases: watch::spawn(
                Api::<Lease>::namespaced(client.clone(), namespace),
                watch::config().labels(LEASE_LABEL),
                changed,
                trim::lease,
            ),
            pools: watch::spawn(
                Api::<IPAddressPool>::namespaced(client.clone(), namespace),
                watch::config(),
                changed,
                |_| {},
            ),
            ads: watch::spawn(
                Api::<L2Advertisement>::namespaced(client.clone(), namespace),
                watch::config(),
                changed,
                |_| {},
            ),
        }
    }
}

fn owned<K: Clone>(v: Vec<Arc<K>>) -> Vec<K> {
    v.into_iter().map(|a| (*a).clone()).collect()
}

struct KubeSource {
    opts: Options,
    client: Client,
    recorder: Recorder,
    stores: Stores,
    liveness: Liveness,
    /// Renews this node's Lease on a thread of its own.
    renewer: Renewer,
    holding: bool,
    /// The interface could carry traffic at the last check.
    link_up: bool,
    /// An election has run: from then on the maps say what this node should
    /// announce (or are about to), and the heartbeat may vouch for them.
    confirmed: bool,
    warned: BTreeSet<Warning>,
    /// Announcer annotations written and not yet seen back through the
    /// watch, by Service (namespace, name, uid): not written twice.
    annotated: BTreeMap<(String, String, String), Change>,
}

/// At most this many annotation writes per pass, so a node that takes over
/// thousands of addresses keeps its loop (and the data path's updates)
/// responsive; the rest follow on the next passes.
const ANNOTATIONS_PER_PASS: usize = 64;

impl KubeSource {
    /// Whether we can trust our view of the cluster right now.
    fn api_reachable(&self, now: Instant) -> bool {
        self.renewer
            .last()
            .at
            .is_some_and(|t| now.saturating_duration_since(t) < self.opts.lease_duration)
    }

    /// Whether the lease watch has delivered our own latest renewal: proof
    /// that the store is as current as our last write.
    fn own_renewal_seen(&self) -> bool {
        let Some(want) = self.renewer.last().stamp else {
            return false;
        };
        self.stores.leases.state().iter().any(|l| {
            l.spec.as_ref().is_some_and(|s| {
                s.holder_identity.as_deref() == Some(self.opts.node_name.as_str())
                    && s.renew_time.as_ref().is_some_and(|t| t.0 >= want)
            })
        })
    }

    /// Checks the link; on a change, tells the peers at once (the renewer
    /// writes the Lease) and re-elects. Called every tick.
    async fn check_link(&mut self, agent: &mut MapOwner) {
        let up = agent.link_usable();
        if up != self.link_up {
            self.link_up = up;
            self.renewer.set_link(up);
            self.reconcile(agent).await;
        }
    }

    /// The loop's sign of life, given on every turn and after each API call
    /// of a long pass: the Lease is renewed while it comes, and the data
    /// path's heartbeat (once an election has run) keeps ARP answered.
    fn heartbeat(&self, agent: &mut MapOwner) {
        self.renewer.alive();
        if self.confirmed {
            agent.heartbeat(heartbeat_hold(
                self.opts.lease_duration,
                self.opts.renew_interval,
            ));
        }
    }

    /// The nodes that may announce: Lease live, Node Ready, link up.
    fn live_nodes(&mut self, nodes: &[Node], now: Instant) -> BTreeSet<String> {
        self.liveness
            .observe(&self.stores.leases.state(), now, self.opts.lease_duration);
        let ready: BTreeSet<String> = nodes
            .iter()
            .filter(|n| translate::node_ready(n))
            .map(kube::ResourceExt::name_any)
            .collect();
        let link_down = link_down_nodes(&self.stores.leases.state());
        let mut live: BTreeSet<String> = self
            .liveness
            .live(self.opts.lease_duration)
            .intersection(&ready)
            .filter(|n| !link_down.contains(*n))
            .cloned()
            .collect();
        if !self.link_up {
            // Before our own Lease update comes back through the watch.
            live.remove(&self.opts.node_name);
        }
        live
    }

    async fn reconcile(&mut self, agent: &mut MapOwner) {
        self.reconcile_pass(agent).await;
        // After the pass has dropped its copies of the cluster state.
        agent.release_memory();
    }

    async fn reconcile_pass(&mut self, agent: &mut MapOwner) {
        let now = Instant::now();
        if !self.link_up
            && let Err(e) = agent.withdraw_announcements()
        {
            warn!(error = %format!("{e:#}"), "withdrawing the announcements failed");
        }
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
            if !self.own_renewal_seen() {
                return; // the watches have not caught up yet
            }
            info!("the API answers again and the watches caught up; resuming");
            self.holding = false;
        }
        let services = self.stores.services.state();
        let slices = translate::SliceIndex::from_slices(self.stores.slices.state());
        let nodes = owned(self.stores.nodes.state());
        let pools = owned(self.stores.pools.state());
        let ads = owned(self.stores.ads.state());
        let live = self.live_nodes(&nodes, now);
        let interfaces = lease_interfaces(&self.stores.leases.state());
        let parsed_pools = advert::parse_pools(&pools);
        let mut candidates = Vec::new();
        for s in services
            .iter()
            .filter(|s| translate::is_ours(s, &self.opts.class))
        {
            let reach =
                |vip| advert::reach(vip, s.labels(), &parsed_pools, &ads, &nodes, &interfaces);
            candidates.extend(candidates_of(s, &slices, reach));
        }
        let owners = election::owners(&live, &candidates);
        let announce: BTreeSet<IpAddr> = owners
            .iter()
            .filter(|(_, n)| **n == self.opts.node_name)
            .map(|(vip, _)| *vip)
            .collect();
        let gateways = crate::net::route::all_gateways().unwrap_or_else(|e| {
            warn!(error = %format!("{e:#}"), "cannot read this node's routes; gateways are not withheld");
            BTreeMap::new()
        });
        let mut t = translate::translate(&Inputs {
            gateways: &gateways,
            services: &services,
            slices: &slices,
            nodes: &nodes,
            node_name: &self.opts.node_name,
            class: &self.opts.class,
            announce: &announce,
            nat_ports: self.opts.nat_ports,
            flow_timeouts: self.opts.flow_timeouts,
            maglev_table_size: self.opts.maglev_table_size,
        });
        t.file.direct_return = direct_peers(self.opts.direct_return, &nodes, &live);
        let before = agent.announced();
        // This agent stands by the election it just ran: vouch for it before
        // the maps announce it, so no ARP request finds the new address
        // without a current heartbeat.
        self.confirmed = true;
        self.heartbeat(agent);
        let applied = agent.apply(&t.file);
        let mut warnings = t.warnings.clone();
        if let Err(e) = &applied {
            warn!(error = %format!("{e:#}"), "applying the cluster state failed; the maps hold the last consistent state");
            if let Some(PlanError::Maglev(SlotError::Full { capacity, .. })) =
                e.downcast_ref::<PlanError>()
            {
                warnings.extend(translate::maglev_full_warnings(
                    &t,
                    &self.opts.node_name,
                    *capacity,
                    |key| agent.table_len(key),
                ));
                warnings.sort();
            }
        }
        let started: BTreeSet<IpAddr> = agent.announced().difference(&before).copied().collect();
        self.publish_events(agent, &services, &warnings, &started)
            .await;
        if applied.is_ok() {
            self.annotate(agent, &services, &owners).await;
        }
    }

    /// Names the announcing node on each Service this node now owns, or
    /// removes its own name where nobody announces ([`announcer`]).
    async fn annotate(
        &mut self,
        agent: &mut MapOwner,
        services: &[Arc<Service>],
        owners: &BTreeMap<IpAddr, String>,
    ) {
        let me = self.opts.node_name.clone();
        let mut present = BTreeSet::new();
        let mut writes = 0;
        for svc in services
            .iter()
            .filter(|s| translate::is_ours(s, &self.opts.class))
        {
            let Some(vip) = translate::ingress_addrs(svc).first().copied() else {
                continue;
            };
            let r = translate::reference(svc);
            let key = (
                r.namespace.clone(),
                r.name.clone(),
                svc.uid().unwrap_or_default(),
            );
            present.insert(key.clone());
            let current = svc
                .annotations()
                .get(announcer::ANNOTATION)
                .map(String::as_str);
            let Some(change) =
                announcer::change(&me, current, owners.get(&vip).map(String::as_str))
            else {
                self.annotated.remove(&key);
                continue;
            };
            if self.annotated.get(&key) == Some(&change) || writes >= ANNOTATIONS_PER_PASS {
                continue;
            }
            writes += 1;
            let value = match &change {
                Change::Set(node) => serde_json::Value::from(node.as_str()),
                Change::Remove => serde_json::Value::Null,
            };
            let body = serde_json::json!({ "metadata": { "annotations": { announcer::ANNOTATION: value } } });
            let api: Api<Service> = Api::namespaced(self.client.clone(), &r.namespace);
            let (pp, patch) = (PatchParams::default(), Patch::Merge(&body));
            let write = api.patch(&r.name, &pp, &patch);
            let written = tokio::time::timeout(Duration::from_secs(1), write).await;
            self.heartbeat(agent);
            match written {
                Ok(Ok(_)) => {
                    info!(service = %r, change = ?change, "announcer annotation written");
                    self.annotated.insert(key, change);
                }
                // Deleted meanwhile.
                Ok(Err(e)) if lease::api_code(&e) == Some(404) => {}
                // Retried on the next pass.
                Ok(Err(e)) => {
                    warn!(service = %r, error = %e, "writing the announcer annotation failed");
                }
                Err(_) => warn!(service = %r, "writing the announcer annotation timed out"),
            }
        }
        self.annotated.retain(|k, _| present.contains(k));
    }

    /// Publishes one Event, giving up after a second (Events are best
    /// effort; the data path must not wait for them).
    async fn publish(&self, ev: &Event, svc: &Service) -> Result<()> {
        tokio::time::timeout(
            Duration::from_secs(1),
            self.recorder.publish(ev, &svc.object_ref(&())),
        )
        .await
        .context("timed out")?
        .context("rejected")
    }

    async fn publish_events(
        &mut self,
        agent: &mut MapOwner,
        services: &[Arc<Service>],
        warnings: &[Warning],
        started: &BTreeSet<IpAddr>,
    ) {
        let by_ref: BTreeMap<ServiceRef, &Service> = services
            .iter()
            .map(|s| (translate::reference(s), &**s))
            .collect();
        let fresh: Vec<Warning> = warnings
            .iter()
            .filter(|w| !self.warned.contains(*w))
            .cloned()
            .collect();
        for w in fresh {
            warn!(service = %w.service, reason = w.reason, "{}", w.message);
            if let Some(svc) = by_ref.get(&w.service) {
                let ev = Event {
                    type_: EventType::Warning,
                    reason: w.reason.to_owned(),
                    note: Some(w.message.clone()),
                    action: "Translate".into(),
                    secondary: None,
                };
                let published = self.publish(&ev, svc).await;
                self.heartbeat(agent);
                if let Err(e) = published {
                    warn!(error = %e, service = %w.service, "could not publish an event");
                }
            }
            self.warned.insert(w);
        }
        // Forget warnings that no longer apply, so they are reported again
        // if they come back.
        self.warned.retain(|w| warnings.contains(w));
        for svc in services.iter().filter(|s| {
            translate::ingress_addrs(s)
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
            // One API call per Service: thousands on an initial sync.
            let published = self.publish(&ev, svc).await;
            self.heartbeat(agent);
            if let Err(e) = published {
                warn!(error = %e, "could not publish the nodeAssigned event");
            }
        }
    }
}

/// Runs the agent with the Kubernetes source until SIGTERM/SIGINT.
pub async fn run(dataplane: agent::Options, opts: Options, config: kube::Config) -> Result<()> {
    let client = crate::k8s::client::from_config(config.clone())?;
    let changed = Arc::new(Notify::new());
    // The first lists (seconds at 10,000 Services) are fetched and decoded while the
    // kernel verifies the programs, not after.
    let stores = Stores::spawn(&client, &opts.namespace, &changed);
    let mut agent = tokio::task::spawn_blocking(move || MapOwner::start(&dataplane))
        .await
        .context("attaching the data path")??;
    let reporter = Reporter {
        controller: "onehop-agent".into(),
        instance: Some(opts.node_name.clone()),
    };
    let liveness = Liveness::new(&opts.node_name);
    let link_up = agent.link_usable();
    // Renews at once, then every renew interval, whatever the loop below is doing.
    let renewer = Renewer::spawn(
        config,
        LeaseWriter {
            namespace: opts.namespace.clone(),
            node_name: opts.node_name.clone(),
            interface: agent.iface.name.clone(),
            lease_duration: opts.lease_duration,
            renew_interval: opts.renew_interval,
            stall_limit: super::renewer::LOOP_STALL_LIMIT,
        },
        link_up,
    )?;
    let mut ka = KubeSource {
        recorder: Recorder::new(client.clone(), reporter),
        client,
        opts,
        stores,
        liveness,
        renewer,
        holding: false,
        link_up,
        confirmed: false,
        warned: BTreeSet::new(),
        annotated: BTreeMap::new(),
    };
    // The first renewal before the first pass, as the lists take longer: a pass that found
    // none would hold (and warn) until the next one.
    ka.renewer.renewed().await;
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
    // The CRDs may not be installed (a minimal setup): give their watchers
    // a moment, then go on with what they have (no advertisement: any node).
    let crds_ready = async {
        let _ = ka.stores.pools.wait_until_ready().await;
        let _ = ka.stores.ads.wait_until_ready().await;
    };
    if tokio::time::timeout(Duration::from_secs(2), crds_ready)
        .await
        .is_err()
    {
        warn!(
            "IPAddressPool/L2Advertisement not readable yet; announcing without advertisements until they are"
        );
    }
    info!(node = %ka.opts.node_name, interface = %agent.iface.name, "agent running with the Kubernetes source");
    let shutdown = crate::shutdown::signal();
    tokio::pin!(shutdown);
    let mut tick = tokio::time::interval(TICK);
    loop {
        tokio::select! {
            r = &mut shutdown => { r.context("waiting for signals")?; break; }
            () = changed.notified() => {
                // Coalesce bursts (a list of thousands of objects).
                tokio::time::sleep(Duration::from_millis(20)).await;
                ka.reconcile(&mut agent).await;
            }
            // Re-elect on each renewal, as the peers' Leases are judged against ours.
            () = ka.renewer.renewed() => {
                ka.reconcile(&mut agent).await;
            }
            _ = tick.tick() => {
                ka.check_link(&mut agent).await;
                agent.release_drained();
                agent.send_due_garps();
            }
        }
        // After every turn: a slow one (many annotation writes) must not let
        // the heartbeat run out while the agent works.
        ka.heartbeat(&mut agent);
    }
    info!("stopping; the data path stays attached through its pinned links");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::coordination::v1::LeaseSpec;

    /// A dual-stack Service is two candidates, one per family, each with the
    /// nodes of its own family's endpoints and its own address's reach.
    #[test]
    fn a_dual_stack_service_is_one_candidate_per_family() {
        use k8s_openapi::api::discovery::v1::EndpointSlice;
        let svc: Service = serde_json::from_value(serde_json::json!({
            "metadata": { "namespace": "default", "name": "web" },
            "spec": { "type": "LoadBalancer", "externalTrafficPolicy": "Local" },
            "status": { "loadBalancer": { "ingress": [
                { "ip": "fd00:60::1" }, { "ip": "192.168.50.200" }
            ] } }
        }))
        .expect("a Service");
        let slice = |family: &str, ip: &str, node: &str| -> EndpointSlice {
            serde_json::from_value(serde_json::json!({
                "metadata": { "namespace": "default", "name": format!("web-{family}"),
                              "labels": { translate::SERVICE_NAME_LABEL: "web" } },
                "addressType": family,
                "endpoints": [{ "addresses": [ip], "nodeName": node }]
            }))
            .expect("an EndpointSlice")
        };
        let slices = translate::SliceIndex::new(&[
            slice("IPv4", "10.42.1.2", "n1"),
            slice("IPv6", "fd00:42::2", "n2"),
        ]);
        let asked = std::cell::RefCell::new(Vec::new());
        let c = candidates_of(&svc, &slices, |vip| {
            asked.borrow_mut().push(vip);
            advert::Reach::default()
        });
        let v4: IpAddr = "192.168.50.200".parse().unwrap();
        let v6: IpAddr = "fd00:60::1".parse().unwrap();
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].vips, [v4]);
        assert_eq!(c[0].endpoint_nodes, BTreeSet::from(["n1".to_owned()]));
        assert_eq!(c[1].vips, [v6]);
        assert_eq!(c[1].endpoint_nodes, BTreeSet::from(["n2".to_owned()]));
        assert!(c.iter().all(|c| c.local_only));
        assert_eq!(
            *asked.borrow(),
            [v4, v6],
            "each family's reach from its own address"
        );
    }

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
    fn interfaces_come_from_the_lease_annotation() {
        let mut with = (*lease("n1", "1")).clone();
        with.metadata.annotations = Some(BTreeMap::from([(
            INTERFACE_ANNOTATION.to_owned(),
            "bond0".to_owned(),
        )]));
        let got = lease_interfaces(&[Arc::new(with), lease("n2", "1")]);
        assert_eq!(
            got,
            BTreeMap::from([("n1".to_owned(), "bond0".to_owned())]),
            "a Lease without the annotation names no interface"
        );
    }

    #[test]
    fn a_peer_dies_only_while_our_own_renewals_keep_arriving() {
        let d = Duration::from_millis(1200);
        let mut l = Liveness::new("me");
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        l.observe(&[lease("me", "1"), lease("b", "1")], at(0), d);
        assert_eq!(l.live(d).len(), 2);
        // b goes silent; our renewals keep echoing.
        for (i, ms) in [400u64, 800, 1200].iter().enumerate() {
            l.observe(
                &[lease("me", &format!("{}", i + 2)), lease("b", "1")],
                at(*ms),
                d,
            );
            assert!(l.live(d).contains("b"), "b is within its lease at {ms} ms");
        }
        l.observe(&[lease("me", "9"), lease("b", "1")], at(1600), d);
        assert_eq!(
            l.live(d),
            BTreeSet::from(["me".to_owned()]),
            "b missed a whole lease of our echoes"
        );
        // b renews again: alive at once.
        l.observe(&[lease("me", "9"), lease("b", "2")], at(1700), d);
        assert!(l.live(d).contains("b"));
    }

    #[test]
    fn a_stalled_watch_declares_nobody_dead() {
        let d = Duration::from_millis(1200);
        let mut l = Liveness::new("me");
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        l.observe(&[lease("me", "1"), lease("b", "1")], at(0), d);
        // Nothing arrives for 5 s (API outage), then our echo comes first.
        l.observe(&[lease("me", "2"), lease("b", "1")], at(5000), d);
        assert!(
            l.live(d).contains("b"),
            "b must get a fresh lease after the stall"
        );
        l.observe(&[lease("me", "3"), lease("b", "1")], at(5400), d);
        assert!(l.live(d).contains("b"));
        l.observe(&[lease("me", "5"), lease("b", "1")], at(6300), d);
        assert!(!l.live(d).contains("b"), "silent after the resync: dead");
    }

    #[test]
    fn link_down_comes_from_the_lease_annotation() {
        let with = |node: &str, link: Option<&str>| {
            let mut l = (*lease(node, "1")).clone();
            l.metadata.annotations =
                link.map(|v| BTreeMap::from([(LINK_ANNOTATION.to_owned(), v.to_owned())]));
            Arc::new(l)
        };
        let got = link_down_nodes(&[
            with("n1", Some("down")),
            with("n2", Some("up")),
            with("n3", None),
        ]);
        assert_eq!(
            got,
            BTreeSet::from(["n1".to_owned()]),
            "only an explicit down makes a node ineligible (older agents say nothing)"
        );
    }

    #[test]
    fn the_heartbeat_runs_out_before_peers_can_take_over() {
        let lease = Duration::from_millis(1200);
        let renew = Duration::from_millis(400);
        // Peers act a full Lease after the last renewal they saw, which is at
        // most one renew interval before the dead agent's last heartbeat.
        let hold = heartbeat_hold(lease, renew);
        assert!(hold + renew <= lease, "{hold:?}");
        assert_eq!(hold, Duration::from_millis(800));
        // A Lease barely longer than the renewal still leaves two ticks.
        assert_eq!(
            heartbeat_hold(Duration::from_millis(250), Duration::from_millis(200)),
            TICK * 2
        );
    }

    #[test]
    fn lease_names() {
        assert_eq!(lease_name("worker-1"), "onehop-node-worker-1");
    }
}
