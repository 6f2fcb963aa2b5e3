//! `onehop controller`: assigns external IPs to `LoadBalancer` Services from
//! `IPAddressPool`s, writes `status.loadBalancer.ingress`, and says what it
//! did in Events as MetalLB does (`IPAllocated`, `AllocationFailed`).
//!
//! One replica allocates at a time: replicas compete for a
//! `coordination.k8s.io` Lease with optimistic concurrency (every write is a
//! replace carrying the resourceVersion that was read, so of two candidates
//! exactly one wins). A candidate takes the Lease when it is free or when
//! its record has not changed for `lease_duration` *as observed locally*
//! (client-go's rule: no trust in other machines' clocks). The leader renews
//! every `retry_period` and steps down when it could not renew for
//! `renew_deadline`, which is shorter than `lease_duration`, so an old
//! leader stops writing before anyone may take over. A leader that shuts
//! down releases the Lease so a standby takes over at its next attempt.
//!
//! Timing defaults ([`Timing::default`], client-go's): lease 15 s, renew
//! deadline 10 s, retry 2 s. A standby takes over within
//! `lease_duration + 2 * retry_period` (19 s) of a leader's crash (it sees
//! the last renewal up to one retry late, and checks once per retry), and
//! within `retry_period` (2 s) of a clean shutdown. Assignment itself is
//! debounced by 100 ms. Nothing is lost in the gap: Services wait with a
//! `<pending>` address, and existing addresses keep working (the agents
//! serve what the statuses say).
//!
//! Every replica keeps its caches warm (reflectors on Services, Namespaces, Nodes
//! and the `IPAddressPools` of its namespace, with kube's default backoff:
//! a watch error or an API outage keeps the last state). Each time a
//! replica becomes leader it rebuilds the allocations from the statuses the
//! Services already show ([`Allocator::adopt`], oldest Service first) before
//! assigning anything, so an address is never handed out twice across
//! restarts or failovers; a Service whose status clashes with an older one
//! gets a Warning Event and a new address.
//!
//! A pool containing any Node's `InternalIP` or `ExternalIP` is refused as a whole
//! (`Valid=False`, reason `NodeAddress`, and a Warning Event), like a malformed one: the
//! node announcing such an address would answer ARP for another node's address.
//! Likewise a pool containing a node's gateway (reason `GatewayAddress`): the controller
//! cannot see the nodes' routes, so each agent reports its gateways on its per-node Lease
//! ([`lease::GATEWAYS_ANNOTATION`]), and still withholds them itself (`net::route`, a
//! `GatewayAddress` Event on the Service) should a pool be accepted before its report.
//!
//! Pools may hold IPv4 and IPv6 ranges; a Service gets one address per family
//! its `ipFamilyPolicy` and `ipFamilies` ask for, all from one pool
//! ([`alloc`]), written to its status in `ipFamilies` order. Pool statuses
//! and metrics count each family apart.
//!
//! Reconciling is level-triggered and idempotent: any change (or a periodic
//! resync, or a retry after a failed write) recomputes everything from the
//! caches and writes only differences.

pub mod alloc;
pub mod metrics;

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Debug,
    future::Future,
    net::IpAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Result;
use futures::future;
use k8s_openapi::{
    api::{
        coordination::v1::{Lease, LeaseSpec},
        core::v1::{Namespace, Node, ObjectReference, Service},
    },
    apimachinery::pkg::apis::meta::v1::{Condition, MicroTime, Time},
    jiff::Timestamp,
};
use kube::{
    Api, Client, Resource, ResourceExt as _,
    api::{Patch, PatchParams, PostParams},
    runtime::{
        events::{Event, EventType, Reporter},
        reflector::{self, Store},
    },
};
use serde_json::json;
use tokio::sync::Notify;

use self::{
    alloc::{Allocator, Family, PoolSpec, Rejected, Request, Usage, validate_pools_reserved},
    metrics::{ControllerMetrics, PoolFigures, failure_reason},
};
use crate::k8s::{
    crd::{IPAddressPool, IPAddressPoolStatus},
    events::Recorder,
    lease::{self, api_code},
    translate::{ClassFilter, ServiceRef, ingress_ips, is_ours, node_ips_all, reference},
    watch,
};

/// The Events' reporting controller and the status patches' field manager.
pub const CONTROLLER_NAME: &str = "onehop-controller";

/// Leader election and reconcile timing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Timing {
    /// How long a Lease record stays valid without a renewal (written to
    /// the Lease in whole seconds, at least 1).
    pub lease_duration: Duration,
    /// The leader steps down when it could not renew for this long.
    pub renew_deadline: Duration,
    /// How often the leader renews and candidates try to acquire.
    pub retry_period: Duration,
    /// Changes arriving within this window are handled in one pass.
    pub debounce: Duration,
    /// Recompute everything this often even without changes.
    pub resync: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
            debounce: Duration::from_millis(100),
            resync: Duration::from_mins(1),
        }
    }
}

/// What `onehop controller` is configured with.
#[derive(Clone, Debug)]
pub struct Options {
    /// Where the Lease and the `IPAddressPool`s live.
    pub namespace: String,
    pub lease_name: String,
    /// Unique per replica (the pod name).
    pub identity: String,
    pub class: ClassFilter,
    pub timing: Timing,
}

/// Runs the controller until `shutdown` completes (then releases the Lease
/// if held). Returns an error only for a setup problem: API errors are
/// logged and retried.
pub async fn run(client: Client, opts: Options, shutdown: impl Future<Output = ()>) -> Result<()> {
    run_with_metrics(client, opts, Arc::default(), shutdown).await
}

/// [`run`], reporting into `metrics` (served by the caller).
pub async fn run_with_metrics(
    client: Client,
    opts: Options,
    metrics: Arc<ControllerMetrics>,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    anyhow::ensure!(
        opts.timing.renew_deadline < opts.timing.lease_duration,
        "the renew deadline must be shorter than the lease duration"
    );
    anyhow::ensure!(!opts.identity.is_empty(), "the identity must not be empty");
    // Not behind the election: the agents wait for the Secret, and either
    // replica may create it (the second finds it there).
    tokio::spawn(crate::k8s::hash_secret::ensure_until_done(
        client.clone(),
        opts.namespace.clone(),
        opts.timing.retry_period,
    ));
    let notify = Arc::new(Notify::new());
    let (services, w1) = watch::reflect(
        Api::<Service>::all(client.clone()),
        watch::config(),
        &notify,
    );
    let (namespaces, w2) = watch::reflect(
        Api::<Namespace>::all(client.clone()),
        watch::config(),
        &notify,
    );
    let (pools, w3) = watch::reflect(
        Api::<IPAddressPool>::namespaced(client.clone(), &opts.namespace),
        watch::config(),
        &notify,
    );
    // Nodes: a pool holding a node's address is refused.
    let (nodes, w4) = watch::reflect(Api::<Node>::all(client.clone()), watch::config(), &notify);
    // The agents' per-node Leases: a pool holding a node's gateway is refused.
    let (leases, w5) = watch::reflect(
        Api::<Lease>::namespaced(client.clone(), &opts.namespace),
        watch::config().labels(crate::agent::kube::LEASE_LABEL),
        &notify,
    );
    let watchers = future::join(future::join4(w1, w2, w3, w4), w5);
    tokio::pin!(watchers, shutdown);
    let mut elector = Elector::new(
        Api::namespaced(client.clone(), &opts.namespace),
        &opts.lease_name,
        &opts.identity,
        opts.timing.clone(),
    );
    let caches = Caches {
        services,
        namespaces,
        pools,
        nodes,
        leases,
    };
    loop {
        tokio::select! {
            _ = &mut watchers => anyhow::bail!("the watchers ended"),
            () = &mut shutdown => return Ok(()),
            () = elector.acquire() => {}
        }
        tracing::info!(identity = %opts.identity, lease = %opts.lease_name, "became the leader");
        metrics.set_leader(true);
        let mut leader = Leader::new(client.clone(), caches.clone(), &opts, metrics.clone());
        let end = tokio::select! {
            _ = &mut watchers => anyhow::bail!("the watchers ended"),
            () = &mut shutdown => End::Shutdown,
            () = elector.hold() => End::Lost,
            () = leader.run(&notify) => End::Lost,
        };
        metrics.set_leader(false);
        match end {
            End::Lost => tracing::warn!("lost the leadership; standing by"),
            End::Shutdown => {
                elector.release().await;
                return Ok(());
            }
        }
    }
}

/// Why a term as leader ended.
enum End {
    Lost,
    Shutdown,
}

/// A reflector whose every change wakes the reconciler.
#[derive(Clone)]
struct Caches {
    services: Store<Service>,
    namespaces: Store<Namespace>,
    pools: Store<IPAddressPool>,
    nodes: Store<Node>,
    leases: Store<Lease>,
}

/// The Lease side of leader election.
struct Elector {
    api: Api<Lease>,
    name: String,
    identity: String,
    timing: Timing,
    /// The Lease's resourceVersion as last seen, and when it was first seen.
    observed: Option<(String, Instant)>,
    held: bool,
}

impl Elector {
    fn new(api: Api<Lease>, name: &str, identity: &str, timing: Timing) -> Self {
        Self {
            api,
            name: name.to_owned(),
            identity: identity.to_owned(),
            timing,
            observed: None,
            held: false,
        }
    }

    /// One attempt to take or renew the Lease: `Ok(true)` when held after
    /// it, `Ok(false)` when someone else validly holds it.
    async fn try_acquire_or_renew(&mut self) -> Result<bool, kube::Error> {
        let seen_at = Instant::now();
        let now = MicroTime(Timestamp::now());
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            let lease = lease::acquired(
                &self.name,
                &self.identity,
                self.timing.lease_duration,
                &now,
                BTreeMap::new(),
                BTreeMap::new(),
            );
            let created = self.api.create(&PostParams::default(), &lease).await?;
            self.observed = Some((created.resource_version().unwrap_or_default(), seen_at));
            return Ok(true);
        };
        let rv = lease.resource_version().unwrap_or_default();
        if self.observed.as_ref().is_none_or(|(r, _)| *r != rv) {
            self.observed = Some((rv, seen_at));
        }
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
        let mine = holder.as_deref() == Some(self.identity.as_str());
        if holder.is_some() && !mine {
            let valid_for = spec
                .lease_duration_seconds
                .and_then(|s| u64::try_from(s).ok())
                .map_or(self.timing.lease_duration, Duration::from_secs);
            let since = self.observed.as_ref().map_or(seen_at, |(_, t)| *t);
            if seen_at < since + valid_for {
                return Ok(false);
            }
            tracing::info!(holder = ?holder, "the Lease expired; taking it over");
        }
        if !mine {
            spec.acquire_time = Some(now.clone());
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0).saturating_add(1));
        }
        spec.holder_identity = Some(self.identity.clone());
        spec.lease_duration_seconds = Some(lease::seconds(self.timing.lease_duration));
        spec.renew_time = Some(now);
        // The read resourceVersion rides along: a concurrent writer makes
        // this fail with 409 instead of being overwritten.
        let written = self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await?;
        self.observed = Some((written.resource_version().unwrap_or_default(), seen_at));
        Ok(true)
    }

    /// Returns once this replica holds the Lease.
    async fn acquire(&mut self) {
        loop {
            let attempt =
                tokio::time::timeout(self.timing.retry_period, self.try_acquire_or_renew()).await;
            match attempt {
                Ok(Ok(true)) => {
                    self.held = true;
                    return;
                }
                Ok(Ok(false)) => {}
                Ok(Err(e)) if api_code(&e) == Some(409) => {
                    tracing::debug!("lost a race for the Lease");
                }
                Ok(Err(e)) => tracing::warn!(error = %e, "acquiring the Lease failed"),
                Err(_) => tracing::warn!("acquiring the Lease timed out"),
            }
            tokio::time::sleep(self.timing.retry_period).await;
        }
    }

    /// Renews the Lease until that fails for `renew_deadline` or someone
    /// else holds it; then returns (no longer leader).
    async fn hold(&mut self) {
        let mut renewed = Instant::now();
        loop {
            tokio::time::sleep(self.timing.retry_period).await;
            let started = Instant::now();
            let left = (renewed + self.timing.renew_deadline).saturating_duration_since(started);
            match tokio::time::timeout(left, self.try_acquire_or_renew()).await {
                Ok(Ok(true)) => renewed = started,
                Ok(Ok(false)) => {
                    tracing::warn!("another replica holds the Lease");
                    break;
                }
                Ok(Err(e)) => tracing::warn!(error = %e, "renewing the Lease failed"),
                Err(_) => tracing::warn!("renewing the Lease timed out"),
            }
            if Instant::now() >= renewed + self.timing.renew_deadline {
                tracing::warn!("could not renew the Lease within the renew deadline");
                break;
            }
        }
        self.held = false;
    }

    /// Gives the Lease up (on shutdown) so a standby need not wait for it
    /// to expire.
    async fn release(&mut self) {
        if !self.held {
            return;
        }
        self.held = false;
        let attempt = async {
            let mut lease = self.api.get(&self.name).await?;
            let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
            if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
                return Ok(());
            }
            spec.holder_identity = None;
            spec.lease_duration_seconds = Some(1);
            spec.renew_time = Some(MicroTime(Timestamp::now()));
            self.api
                .replace(&self.name, &PostParams::default(), &lease)
                .await
                .map(drop)
        };
        match tokio::time::timeout(self.timing.retry_period, attempt).await {
            Ok(Ok(())) => tracing::info!("released the Lease"),
            Ok(Err(e)) => tracing::warn!(error = %e, "releasing the Lease failed"),
            Err(_) => tracing::warn!("releasing the Lease timed out"),
        }
    }
}

/// Identifies the object an Event was about, for de-duplication: kind,
/// namespace, name and uid (an object deleted and created again under the
/// same name is a new object and is told again).
type NoteKey = (String, String, String, String);

/// What validation said about the pools of one pass, by name.
struct PoolVerdicts {
    /// Ignored pools and why.
    bad: BTreeMap<String, Rejected>,
}

impl PoolVerdicts {
    /// `(status, reason, message)` of a pool's `Valid` condition.
    fn condition(&self, name: &str) -> (&'static str, &'static str, String) {
        if let Some(problem) = self.bad.get(name) {
            return ("False", problem.reason, problem.message.clone());
        }
        ("True", "Valid", "the pool is in use".to_owned())
    }
}

/// The allocating side, alive while this replica leads.
struct Leader {
    client: Client,
    caches: Caches,
    class: ClassFilter,
    namespace: String,
    timing: Timing,
    recorder: Recorder,
    alloc: Allocator,
    /// The last Event said about each object, so a level-triggered pass
    /// does not repeat itself.
    notes: BTreeMap<NoteKey, (String, String)>,
    /// Pool statuses as last written, by name and uid: a pool deleted and
    /// created again under the same name starts without a status and must
    /// get it written again.
    pool_status: BTreeMap<(String, String), ([i64; 4], String, String)>,
    metrics: Arc<ControllerMetrics>,
    /// Services left without an address in the current pass, by reason.
    failing: BTreeMap<&'static str, u64>,
}

fn note_key(r: &ObjectReference) -> NoteKey {
    (
        r.kind.clone().unwrap_or_default(),
        r.namespace.clone().unwrap_or_default(),
        r.name.clone().unwrap_or_default(),
        r.uid.clone().unwrap_or_default(),
    )
}

/// MetalLB's rendering of an address list (Go's `%q` of a slice).
fn quoted(ips: &[IpAddr]) -> String {
    let inner: Vec<String> = ips.iter().map(|ip| format!("\"{ip}\"")).collect();
    format!("[{}]", inner.join(" "))
}

/// Oldest first (they win address conflicts), then by name.
fn by_age(svcs: &mut [Arc<Service>]) {
    svcs.sort_by_key(|s| {
        (
            s.metadata.creation_timestamp.clone().map(|t| t.0),
            reference(s),
        )
    });
}

impl Leader {
    fn new(
        client: Client,
        caches: Caches,
        opts: &Options,
        metrics: Arc<ControllerMetrics>,
    ) -> Self {
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: CONTROLLER_NAME.into(),
                instance: Some(opts.identity.clone()),
            },
        );
        Self {
            client,
            caches,
            class: opts.class.clone(),
            namespace: opts.namespace.clone(),
            timing: opts.timing.clone(),
            recorder,
            alloc: Allocator::default(),
            notes: BTreeMap::new(),
            pool_status: BTreeMap::new(),
            metrics,
            failing: BTreeMap::new(),
        }
    }

    async fn run(&mut self, notify: &Notify) {
        // An empty cache would look like "no Services": never allocate from it.
        let ready = future::join4(
            self.caches.services.wait_until_ready(),
            self.caches.namespaces.wait_until_ready(),
            self.caches.pools.wait_until_ready(),
            self.caches.nodes.wait_until_ready(),
        )
        .await;
        let leases_ready = self.caches.leases.wait_until_ready().await;
        if ready.0.is_err()
            || ready.1.is_err()
            || ready.2.is_err()
            || ready.3.is_err()
            || leases_ready.is_err()
        {
            tracing::error!("a cache writer is gone");
            return future::pending().await;
        }
        self.rebuild().await;
        loop {
            let ok = self.reconcile().await;
            let wait = if ok {
                self.timing.resync
            } else {
                self.timing.retry_period
            };
            tokio::select! {
                () = notify.notified() => {}
                () = tokio::time::sleep(wait) => {}
            }
            tokio::time::sleep(self.timing.debounce).await;
        }
    }

    fn namespace_labels(&self, ns: &str) -> BTreeMap<String, String> {
        self.caches
            .namespaces
            .get(&reflector::ObjectRef::new(ns))
            .and_then(|n| n.metadata.labels.clone())
            .unwrap_or_default()
    }

    fn request(&self, svc: &Service) -> Result<Request, alloc::AllocError> {
        let ns = svc.metadata.namespace.clone().unwrap_or_default();
        Request::from_service(svc, self.namespace_labels(&ns))
    }

    /// Valid pools into the allocator; Warning Events for the others.
    async fn load_pools(&mut self) -> PoolVerdicts {
        let pools = self.caches.pools.state();
        let specs: Vec<(String, PoolSpec)> = pools
            .iter()
            .map(|p| (p.name_any(), p.spec.clone()))
            .collect();
        let nodes: Vec<Node> = self
            .caches
            .nodes
            .state()
            .iter()
            .map(|n| (**n).clone())
            .collect();
        let leases = self.caches.leases.state();
        let gateways = lease::node_gateways(leases.iter().map(|l| &**l));
        // Node addresses of both families: a dual-stack pool must not hold
        // a node's IPv6 address either (its NDP would be taken over).
        let (ok, bad) = validate_pools_reserved(&specs, &node_ips_all(&nodes), &gateways);
        self.alloc.set_pools(ok);
        let verdicts = PoolVerdicts {
            bad: bad.into_iter().map(|r| (r.pool.clone(), r)).collect(),
        };
        for p in &pools {
            let r = p.object_ref(&());
            let name = p.name_any();
            if let Some(problem) = verdicts.bad.get(&name) {
                let msg = format!("{}; the pool is ignored", problem.message);
                self.note(&r, EventType::Warning, "InvalidPool", "Validate", &msg)
                    .await;
            } else {
                self.forget(&r);
            }
        }
        // Pools that are gone: a new pool of the same name is a new object.
        let uids: BTreeSet<String> = pools.iter().filter_map(|p| p.uid()).collect();
        self.pool_status
            .retain(|(_, uid), _| uid.is_empty() || uids.contains(uid));
        self.notes.retain(|(kind, _, _, uid), _| {
            kind != "IPAddressPool" || uid.is_empty() || uids.contains(uid)
        });
        verdicts
    }

    /// Adopts the addresses Services already show, oldest first.
    async fn rebuild(&mut self) {
        self.alloc = Allocator::default();
        self.load_pools().await;
        let mut svcs = self.caches.services.state();
        by_age(&mut svcs);
        let mut adopted = 0;
        let class = self.class.clone();
        for svc in svcs.iter().filter(|s| is_ours(s, &class)) {
            let ips = ingress_ips(svc);
            if ips.is_empty() {
                continue;
            }
            let Ok(req) = self.request(svc) else { continue };
            match self.alloc.adopt(&req, &ips) {
                Ok(()) => adopted += 1,
                Err(e) => {
                    let msg = format!("{e}; assigning another address");
                    let r = svc.object_ref(&());
                    self.note(&r, EventType::Warning, "IPConflict", "Allocate", &msg)
                        .await;
                }
            }
        }
        tracing::info!(adopted, "rebuilt the allocations from Service statuses");
    }

    /// One level-triggered pass; false when a write failed (retry soon).
    async fn reconcile(&mut self) -> bool {
        let verdicts = self.load_pools().await;
        self.failing.clear();
        let mut svcs = self.caches.services.state();
        by_age(&mut svcs);
        // Services showing addresses first: one that loses its address (a
        // bad annotation, say) has it cleared before the address can go to
        // a newcomer, so no two Services ever show it at once.
        svcs.sort_by_key(|s| ingress_ips(s).is_empty());
        let mut ok = true;
        // Releases first, so a freed address can go to another Service in
        // this same pass.
        let present: BTreeSet<ServiceRef> = svcs
            .iter()
            .filter(|s| is_ours(s, &self.class))
            .map(|s| reference(s))
            .collect();
        let released: BTreeSet<ServiceRef> = self
            .alloc
            .services()
            .filter(|s| !present.contains(s))
            .cloned()
            .collect();
        for gone in &released {
            tracing::info!(service = %gone, "releasing its addresses");
            self.alloc.release(gone);
            self.notes.retain(|(kind, ns, name, _), _| {
                !(kind == "Service" && *ns == gone.namespace && *name == gone.name)
            });
        }
        for svc in &svcs {
            if !is_ours(svc, &self.class) {
                let was_ours = released.contains(&reference(svc));
                ok &= self.clear_foreign(svc, was_ours).await;
                continue;
            }
            ok &= self.assign(svc).await;
        }
        self.record_metrics(&verdicts.bad);
        ok &= self.write_pool_statuses(&verdicts).await;
        ok
    }

    /// A Service that is not (or no longer) ours: drop a status we wrote.
    /// `was_ours`: it held addresses until this pass.
    async fn clear_foreign(&mut self, svc: &Service, was_ours: bool) -> bool {
        let ips = ingress_ips(svc);
        let is_lb = svc.spec.as_ref().and_then(|s| s.type_.as_deref()) == Some("LoadBalancer");
        // Another implementation's LoadBalancer Services are not ours to
        // touch unless we held them until now; a non-LoadBalancer Service
        // showing one of our addresses lost its type while we were not
        // looking.
        let shows_ours = ips.iter().any(|ip| self.alloc.pool_of(*ip).is_some());
        if ips.is_empty() || !shows_ours || (is_lb && !was_ours) {
            return true;
        }
        self.forget(&svc.object_ref(&()));
        self.write_ingress(svc, &[]).await
    }

    async fn assign(&mut self, svc: &Service) -> bool {
        let r = svc.object_ref(&());
        let current = ingress_ips(svc);
        let req = self.request(svc);
        let result = req.clone().and_then(|req| self.alloc.assign(&req));
        match result {
            Ok(ips) => {
                if current == ips {
                    return true;
                }
                if !self.write_ingress(svc, &ips).await {
                    return false;
                }
                let msg = format!("Assigned IP {}", quoted(&ips));
                self.note(&r, EventType::Normal, "IPAllocated", "Allocate", &msg)
                    .await;
                true
            }
            Err(e) => {
                *self.failing.entry(failure_reason(&e)).or_default() += 1;
                // Out of addresses for what the Service now asks (a policy
                // turned RequireDualStack, say): the addresses it shows keep
                // working rather than go, as long as they are still valid.
                let capacity = matches!(
                    e,
                    alloc::AllocError::PoolExhausted { .. }
                        | alloc::AllocError::NoPoolForFamilies { .. }
                );
                let kept = capacity
                    && req
                        .as_ref()
                        .is_ok_and(|req| self.alloc.keep_last(req, &current));
                if !kept {
                    self.alloc.release(&reference(svc));
                }
                let cleared = kept || current.is_empty() || self.write_ingress(svc, &[]).await;
                let msg = if kept {
                    format!("{e}; keeping {}", quoted(&current))
                } else {
                    e.to_string()
                };
                self.note(&r, EventType::Warning, "AllocationFailed", "Allocate", &msg)
                    .await;
                cleared
            }
        }
    }

    /// Writes `status.loadBalancer.ingress` (empty: removes it).
    async fn write_ingress(&self, svc: &Service, ips: &[IpAddr]) -> bool {
        let r = reference(svc);
        let api: Api<Service> = Api::namespaced(self.client.clone(), &r.namespace);
        let ingress: Vec<_> = ips
            .iter()
            .map(|ip| json!({ "ip": ip.to_string() }))
            .collect();
        let body = if ips.is_empty() {
            json!({ "status": { "loadBalancer": { "ingress": null } } })
        } else {
            json!({ "status": { "loadBalancer": { "ingress": ingress } } })
        };
        let pp = PatchParams::default();
        match api.patch_status(&r.name, &pp, &Patch::Merge(&body)).await {
            Ok(_) => {
                tracing::info!(service = %r, ips = ?ips, "wrote the ingress status");
                true
            }
            // Deleted meanwhile: the next pass releases it.
            Err(e) if api_code(&e) == Some(404) => true,
            Err(e) => {
                tracing::warn!(service = %r, error = %e, "writing the status failed");
                self.metrics.api_error();
                false
            }
        }
    }

    fn forget(&mut self, r: &ObjectReference) {
        self.notes.remove(&note_key(r));
    }

    /// Publishes an Event unless it is what was last said about `r`.
    async fn note(
        &mut self,
        r: &ObjectReference,
        type_: EventType,
        reason: &str,
        action: &str,
        msg: &str,
    ) {
        let key = note_key(r);
        let said = (reason.to_owned(), msg.to_owned());
        if self.notes.get(&key) == Some(&said) {
            return;
        }
        match type_ {
            EventType::Warning => tracing::warn!(object = ?key, reason, "{msg}"),
            EventType::Normal => tracing::info!(object = ?key, reason, "{msg}"),
        }
        let ev = Event {
            type_,
            reason: reason.to_owned(),
            note: Some(msg.to_owned()),
            action: action.to_owned(),
            secondary: None,
        };
        match self.recorder.publish(&ev, r).await {
            Ok(()) => {
                self.notes.insert(key, said);
            }
            // Not remembered: said again on the next pass.
            Err(e) => {
                tracing::warn!(error = %e, "publishing an Event failed");
                self.metrics.api_error();
            }
        }
    }

    /// Publishes this pass's figures to `/metrics`.
    fn record_metrics(&mut self, bad: &BTreeMap<String, Rejected>) {
        let usage = self.alloc.pool_usage();
        let figures = self
            .caches
            .pools
            .state()
            .iter()
            .map(|p| {
                let name = p.name_any();
                let u = usage.get(&name).copied().unwrap_or_default();
                let valid = !bad.contains_key(&name);
                // A family the pool does not hold has no series.
                let families = [Family::V4, Family::V6]
                    .into_iter()
                    .filter(|f| u.holds[Usage::index(*f)])
                    .map(|f| {
                        let i = Usage::index(f);
                        (f, (u.assigned[i], u.available[i]))
                    })
                    .collect();
                (name, PoolFigures { families, valid })
            })
            .collect();
        self.metrics.record_pass(
            figures,
            self.alloc.services().count() as u64,
            std::mem::take(&mut self.failing),
        );
    }

    /// Pool statuses: addresses assigned and available, and whether the
    /// pool is valid. Written only when they change.
    async fn write_pool_statuses(&mut self, verdicts: &PoolVerdicts) -> bool {
        let usage = self.alloc.pool_usage();
        let api: Api<IPAddressPool> = Api::namespaced(self.client.clone(), &self.namespace);
        let mut ok = true;
        for pool in self.caches.pools.state() {
            let name = pool.name_any();
            let key = (name.clone(), pool.uid().unwrap_or_default());
            let u = usage.get(&name).copied().unwrap_or_default();
            let (status, reason, message) = verdicts.condition(&name);
            // The status fields are int64 (MetalLB's): an IPv6 pool's free
            // addresses saturate there.
            let count = |n: u128| i64::try_from(n).unwrap_or(i64::MAX);
            let (v4, v6) = (Usage::index(Family::V4), Usage::index(Family::V6));
            let memo = (
                [
                    count(u128::from(u.assigned[v4])),
                    count(u.available[v4]),
                    count(u128::from(u.assigned[v6])),
                    count(u.available[v6]),
                ],
                status.to_owned(),
                message.clone(),
            );
            if self.pool_status.get(&key) == Some(&memo) {
                continue;
            }
            // The transition time changes only with the condition's status.
            let since = pool
                .status
                .iter()
                .flat_map(|s| &s.conditions)
                .find(|c| c.type_ == "Valid" && c.status == status)
                .map_or_else(
                    || Time(Timestamp::now()),
                    |c| c.last_transition_time.clone(),
                );
            let st = IPAddressPoolStatus {
                assigned_ipv4: memo.0[0],
                available_ipv4: memo.0[1],
                assigned_ipv6: memo.0[2],
                available_ipv6: memo.0[3],
                conditions: vec![Condition {
                    type_: "Valid".into(),
                    status: status.into(),
                    reason: reason.into(),
                    message,
                    last_transition_time: since,
                    observed_generation: pool.metadata.generation,
                }],
            };
            let body = json!({ "status": st });
            match api
                .patch_status(&name, &PatchParams::default(), &Patch::Merge(&body))
                .await
            {
                Ok(_) => {
                    self.pool_status.insert(key, memo);
                }
                Err(e) if api_code(&e) == Some(404) => {}
                Err(e) => {
                    tracing::warn!(pool = %name, error = %e, "writing the pool status failed");
                    self.metrics.api_error();
                    ok = false;
                }
            }
        }
        ok
    }
}
