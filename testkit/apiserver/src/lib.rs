//! onehop's test Kubernetes API server, apart from the network-namespace kit
//! (`onehop-testkit`) so a user of namespaces, topologies and traffic does not build
//! hyper, kube and k8s-openapi too. Also here: [`k8s`] (a test's Kubernetes backend: this
//! server, or on request a real cluster, with its own namespaces and cleanup), [`forward`]
//! (a TCP forwarder out of a topology's namespaces to the API server) and [`json`].
//!
//! A test Kubernetes API server speaking the real REST + watch wire protocol over plain
//! HTTP, so the production `kube::Client` and `kube_runtime::watcher` run unchanged against
//! it.
//!
//! No cluster can run on the test machines, and kube's fake clients have no watch; this is
//! the smallest server that gives the agent and controller their real Kubernetes behaviour:
//!
//! - any registered resource, core (`/api/v1/...`) or grouped (`/apis/{group}/{version}/...`),
//!   namespaced or cluster-scoped, plus cluster-wide lists/watches of namespaced ones;
//! - GET, LIST, WATCH, POST, PUT, PATCH (merge, JSON, strategic merge, server-side apply),
//!   DELETE, DELETE collection, and the `/status` subresource;
//! - metadata: uid, creationTimestamp, one global resourceVersion counter, generation,
//!   generateName, deletionTimestamp + finalizers;
//! - watches with resourceVersion semantics, 410 Expired, BOOKMARKs, streaming lists
//!   (`sendInitialEvents`), `timeoutSeconds`;
//! - paged lists (`limit`, `continue`, `remainingItemCount`) whose pages all read the first
//!   page's resourceVersion, and lists at an exact past resourceVersion, both rebuilt from
//!   the watch history as etcd serves them from its revisions (410 Expired once the history
//!   no longer reaches back; lists of Events come whole);
//! - errors as `metav1.Status` with the right code and reason;
//! - admission as a real server does it for onehop's objects: custom resources against their
//!   CRD's structural schema (pruning, defaults, validation; see the `schema` module),
//!   built-in kinds decoded through their Kubernetes types, `fieldValidation`
//!   (`Strict`/`Warn`/`Ignore`), Service and EndpointSlice port defaults;
//! - what `kubectl` needs with validation on: `/openapi/v3`, Table responses (CRD printer
//!   columns, the built-in printers of the kinds onehop uses), short names and categories,
//!   strategic merge patch by patch merge key, and `events.k8s.io` Events listed as `core/v1`
//!   ones (`kubectl describe`); [`kubectl`] runs a real one against the server.
//!
//! Test controls: start on a pre-bound listener (bind it inside a network namespace with
//! `onehop_testkit::in_netns` so agents in node namespaces reach it) or on loopback; an outage
//! switch; request counters and a log of writes with timestamps; direct store access (direct
//! writes skip admission: objects are stored as given).
//!
//! Not implemented (each fails clearly or is documented where it matters): authentication
//! and authorization, admission webhooks, CEL validation rules and the schema keywords the
//! `schema` module lists, validation of built-in kinds beyond decoding and names, cluster
//! IP and node port allocation, protobuf (request or response), `OpenAPI` v2, aggregated
//! discovery (`/api` and `/apis` answer in the legacy format), the inconsistent continue
//! token a real server offers with an expired one, `dryRun` (400), garbage collection (ownerReferences and propagation policies are
//! ignored), namespace lifecycle (objects can be created in namespaces that do not exist),
//! `managedFields`, and subresources other than `status`.
//! See [`patch`] for how far strategic merge and server-side apply go.
//!
//! ```no_run
//! # async fn f() -> anyhow::Result<()> {
//! use onehop_apiserver::ApiServer;
//! let server = ApiServer::start_local()?;
//! let client = server.client()?; // inside a Tokio runtime
//! # Ok(()) }
//! ```

pub mod acceptor;
mod events;
pub mod forward;
mod http;
pub mod json;
pub mod k8s;
pub mod kubectl;
mod openapi;
pub mod patch;
mod schema;
pub mod selector;
mod store;
mod table;
mod typed;

use std::{
    collections::{BTreeMap, BTreeSet, VecDeque},
    convert::Infallible,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow};
use hyper_util::rt::TokioIo;
use serde::{Serialize, de::DeserializeOwned};
use serde_json::Value;
use tokio::sync::watch;

use self::store::{Admission, Deleted, State, Sub};
pub use self::{
    schema::FieldError,
    store::{ApiError, EventType, ResourceDef},
};
use crate::acceptor::Acceptor;
pub use crate::{
    forward::Forwarder,
    k8s::{TestCluster, skip_on_real_cluster},
};

/// Tunables of a server.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Changes kept for watch resumption; a watch from an older resourceVersion gets 410.
    pub history_limit: usize,
    /// Silence after which a watch that allows bookmarks gets one (real servers: ~1 min).
    pub bookmark_interval: Duration,
    /// Write requests kept in the log ([`ApiServer::writes`]); older ones are dropped.
    pub write_log_limit: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            history_limit: 10_000,
            bookmark_interval: Duration::from_secs(5),
            write_log_limit: 100_000,
        }
    }
}

/// Kubernetes API verbs, as audit logs and RBAC name them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Verb {
    Get,
    List,
    Watch,
    Create,
    Update,
    Patch,
    Delete,
    DeleteCollection,
}

impl Verb {
    /// Whether the verb changes (or may change) stored objects.
    pub fn is_write(self) -> bool {
        matches!(
            self,
            Self::Create | Self::Update | Self::Patch | Self::Delete | Self::DeleteCollection
        )
    }

    /// The name RBAC rules use.
    pub fn rbac_name(self) -> &'static str {
        match self {
            Self::Get => "get",
            Self::List => "list",
            Self::Watch => "watch",
            Self::Create => "create",
            Self::Update => "update",
            Self::Patch => "patch",
            Self::Delete => "delete",
            Self::DeleteCollection => "deletecollection",
        }
    }
}

/// `(API group, resource)` as RBAC rules name them, of a resource named as in
/// [`RequestRecord::resource`]: `leases.coordination.k8s.io` →
/// `("coordination.k8s.io", "leases")`, `services/status` → `("", "services/status")`.
pub fn rbac_resource(resource: &str) -> (String, String) {
    let (base, sub) = resource
        .split_once('/')
        .map_or((resource, None), |(b, s)| (b, Some(s)));
    let (plural, group) = base.split_once('.').unwrap_or((base, ""));
    let resource = sub.map_or_else(|| plural.to_owned(), |s| format!("{plural}/{s}"));
    (group.to_owned(), resource)
}

/// One API request, as the server counted it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestRecord {
    /// When the response was ready (for a watch: when it started).
    pub at: Instant,
    pub verb: Verb,
    /// `plural` for the core group, `plural.group` otherwise, `/status` appended for the
    /// subresource: `services`, `services/status`, `leases.coordination.k8s.io`.
    pub resource: String,
    pub namespace: Option<String>,
    pub name: Option<String>,
    /// The HTTP status code of the response.
    pub code: u16,
}

/// `plural` or `plural.group`: how counters and [`Store::resource`] name resources.
pub fn resource_name(rd: &ResourceDef) -> String {
    if rd.group.is_empty() {
        rd.plural.clone()
    } else {
        format!("{}.{}", rd.plural, rd.group)
    }
}

#[derive(Debug, Default)]
struct Stats {
    counts: BTreeMap<(Verb, String), u64>,
    /// Every (verb, resource, namespace) served, reads included: what RBAC
    /// must allow.
    scopes: BTreeSet<(Verb, String, Option<String>)>,
    writes: VecDeque<RequestRecord>,
}

pub(crate) struct Inner {
    state: Mutex<State>,
    /// The latest resourceVersion: watches wait on it.
    rv_tx: watch::Sender<u64>,
    stats: Mutex<Stats>,
    available: watch::Sender<bool>,
    config: ServerConfig,
    /// Time each write to a resource (named as in [`RequestRecord::resource`])
    /// takes before it is served: a loaded or throttling API server.
    write_latency: Mutex<BTreeMap<String, Duration>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicking test thread must not take the server down with it.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Inner {
    fn lock_state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// Runs `f` on the state and wakes watches if it changed anything.
    fn with_state<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        let (r, rv) = {
            let mut s = self.lock_state();
            let r = f(&mut s);
            (r, s.rv)
        };
        self.rv_tx.send_if_modified(|cur| {
            let changed = *cur != rv;
            *cur = rv;
            changed
        });
        r
    }

    /// The latency [`ApiServer::set_write_latency`] set for writes to `resource`.
    pub(crate) fn write_latency(&self, resource: &str) -> Duration {
        lock(&self.write_latency)
            .get(resource)
            .copied()
            .unwrap_or_default()
    }

    fn record(&self, r: RequestRecord) {
        let mut s = lock(&self.stats);
        *s.counts.entry((r.verb, r.resource.clone())).or_default() += 1;
        s.scopes
            .insert((r.verb, r.resource.clone(), r.namespace.clone()));
        if r.verb.is_write() {
            s.writes.push_back(r);
            while s.writes.len() > self.config.write_log_limit {
                s.writes.pop_front();
            }
        }
    }
}

/// Direct access to the server's objects, without HTTP (nothing here is counted as a
/// request). Writes go through the same code as API writes, so watches see them.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("resource_version", &self.resource_version())
            .finish_non_exhaustive()
    }
}

/// Namespace of a typed object for direct writes: its own, or `default`.
fn namespace_of<K: kube::Resource>(obj: &K) -> String {
    obj.meta()
        .namespace
        .clone()
        .unwrap_or_else(|| "default".to_owned())
}

impl Store {
    /// Adds (or replaces) a resource type, e.g. a custom resource. Creating a
    /// `CustomResourceDefinition` through the API registers its resource too.
    pub fn register(&self, rd: ResourceDef) {
        self.inner.with_state(|s| s.register(rd));
    }

    /// A registered resource by `plural` (core group) or `plural.group`.
    pub fn resource(&self, name: &str) -> Option<ResourceDef> {
        self.inner.lock_state().find(name).cloned()
    }

    /// The registered resource of a kube type.
    pub fn resource_of<K: kube::Resource<DynamicType = ()>>(&self) -> Result<ResourceDef> {
        let (g, v, p) = (K::group(&()), K::version(&()), K::plural(&()));
        self.inner
            .lock_state()
            .resolve(&g, &v, &p)
            .cloned()
            .ok_or_else(|| anyhow!("resource {p}.{g}/{v} is not registered"))
    }

    /// The current (latest handed out) resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.inner.lock_state().rv
    }

    /// Forgets the watch history: resuming a watch from any earlier resourceVersion gets
    /// 410 Expired, as after an etcd compaction.
    pub fn compact_history(&self) {
        self.inner.with_state(State::compact);
    }

    /// Creates or replaces (unconditionally, `.status` included) an object. Metadata is
    /// managed as for API writes (uid, resourceVersion, generation...).
    pub fn put_value(&self, rd: &ResourceDef, ns: &str, mut obj: Value) -> Result<Value, ApiError> {
        self.inner.with_state(|s| {
            let name = obj["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            if !name.is_empty() && s.get(rd, ns, &name).is_ok() {
                if let Some(m) = obj["metadata"].as_object_mut() {
                    m.remove("resourceVersion");
                }
                s.update(rd, ns, &name, obj, Sub::All, &mut Admission::off())
            } else {
                s.create(rd, ns, obj, true, &mut Admission::off())
            }
        })
    }

    pub fn get_value(&self, rd: &ResourceDef, ns: &str, name: &str) -> Option<Value> {
        self.inner.lock_state().get(rd, ns, name).ok()
    }

    /// Objects of `rd` in namespace `ns` (`None`: all), sorted by namespace and name.
    pub fn list_values(&self, rd: &ResourceDef, ns: Option<&str>) -> Vec<Value> {
        self.inner.lock_state().list(rd, ns).cloned().collect()
    }

    /// Deletes as an API DELETE does (finalizers delay it). Returns whether the object is
    /// gone.
    pub fn delete_value(&self, rd: &ResourceDef, ns: &str, name: &str) -> Result<bool, ApiError> {
        self.inner
            .with_state(|s| s.delete(rd, ns, name, None))
            .map(|d| matches!(d, Deleted::Gone(_)))
    }

    /// Typed [`Store::put_value`]; a namespaced object without namespace goes to `default`.
    pub fn put<K>(&self, obj: &K) -> Result<K>
    where
        K: kube::Resource<DynamicType = ()> + Serialize + DeserializeOwned,
    {
        let rd = self.resource_of::<K>()?;
        let v = serde_json::to_value(obj).context("serializing")?;
        let out = self.put_value(&rd, &namespace_of(obj), v)?;
        serde_json::from_value(out).context("deserializing the stored object")
    }

    /// Typed [`Store::get_value`] (`ns` is ignored for cluster-scoped resources).
    pub fn get<K>(&self, ns: &str, name: &str) -> Option<K>
    where
        K: kube::Resource<DynamicType = ()> + DeserializeOwned,
    {
        let rd = self.resource_of::<K>().ok()?;
        serde_json::from_value(self.get_value(&rd, ns, name)?).ok()
    }

    /// Typed [`Store::list_values`] over all namespaces.
    pub fn list<K>(&self) -> Result<Vec<K>>
    where
        K: kube::Resource<DynamicType = ()> + DeserializeOwned,
    {
        let rd = self.resource_of::<K>()?;
        self.list_values(&rd, None)
            .into_iter()
            .map(|v| serde_json::from_value(v).context("deserializing a stored object"))
            .collect()
    }

    /// Typed [`Store::delete_value`].
    pub fn delete<K>(&self, ns: &str, name: &str) -> Result<bool>
    where
        K: kube::Resource<DynamicType = ()>,
    {
        let rd = self.resource_of::<K>()?;
        Ok(self.delete_value(&rd, ns, name)?)
    }
}

/// Connections served at once (each watch holds one); far above what a test opens.
const MAX_CONNECTIONS: usize = 1024;

/// A running test API server; stops (closing every connection) on drop.
pub struct ApiServer {
    url: String,
    addr: SocketAddr,
    inner: Arc<Inner>,
    _acceptor: Acceptor,
}

impl std::fmt::Debug for ApiServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiServer")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl ApiServer {
    /// Serves on a pre-bound listener, e.g. one bound inside a network namespace with
    /// `onehop_testkit::in_netns` (a socket stays in the namespace it was created in).
    pub fn start(listener: std::net::TcpListener) -> Result<Self> {
        Self::start_with(listener, ServerConfig::default())
    }

    /// Serves on `127.0.0.1:<ephemeral>`.
    pub fn start_local() -> Result<Self> {
        let l = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("binding")?;
        Self::start(l)
    }

    pub fn start_with(listener: std::net::TcpListener, config: ServerConfig) -> Result<Self> {
        let mut addr = listener.local_addr().context("listener address")?;
        let inner = Arc::new(Inner {
            state: Mutex::new(State::new(config.history_limit)),
            rv_tx: watch::Sender::new(0),
            stats: Mutex::default(),
            available: watch::Sender::new(true),
            config,
            write_latency: Mutex::default(),
        });
        let served = Arc::clone(&inner);
        let acceptor = Acceptor::start("test-apiserver", listener, MAX_CONNECTIONS, move |s| {
            connection(Arc::clone(&served), s)
        })?;
        if addr.ip().is_unspecified() {
            addr.set_ip(IpAddr::V4(Ipv4Addr::LOCALHOST));
        }
        Ok(Self {
            url: format!("http://{addr}"),
            addr,
            inner,
            _acceptor: acceptor,
        })
    }

    /// `http://<ip>:<port>` (a wildcard listener is shown as 127.0.0.1).
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn store(&self) -> Store {
        Store {
            inner: Arc::clone(&self.inner),
        }
    }

    /// Outage switch. Going unavailable drops every open connection (watch streams end
    /// mid-stream) and resets new ones as soon as they are accepted; going available
    /// again serves as before, with the store intact.
    pub fn set_available(&self, up: bool) {
        self.inner.available.send_replace(up);
    }

    /// Makes every later write to `resource` (named as in [`RequestRecord::resource`],
    /// e.g. `events.events.k8s.io`) wait `latency` before it is served, as on a loaded or
    /// throttling API server; `Duration::ZERO` serves them at once again.
    pub fn set_write_latency(&self, resource: &str, latency: Duration) {
        let mut l = lock(&self.inner.write_latency);
        if latency.is_zero() {
            l.remove(resource);
        } else {
            l.insert(resource.to_owned(), latency);
        }
    }

    pub fn is_available(&self) -> bool {
        *self.inner.available.borrow()
    }

    /// Requests served for `verb` on `resource` (named as in [`RequestRecord::resource`]).
    pub fn request_count(&self, verb: Verb, resource: &str) -> u64 {
        lock(&self.inner.stats)
            .counts
            .get(&(verb, resource.to_owned()))
            .copied()
            .unwrap_or(0)
    }

    /// Every counter.
    pub fn request_counts(&self) -> BTreeMap<(Verb, String), u64> {
        lock(&self.inner.stats).counts.clone()
    }

    /// Every distinct `(verb, resource, namespace)` served, reads included
    /// (`None`: a cluster-wide request); resources named as in
    /// [`RequestRecord::resource`].
    pub fn request_scopes(&self) -> BTreeSet<(Verb, String, Option<String>)> {
        lock(&self.inner.stats).scopes.clone()
    }

    /// The write requests (create, update, patch, delete), oldest first.
    pub fn writes(&self) -> Vec<RequestRecord> {
        lock(&self.inner.stats).writes.iter().cloned().collect()
    }

    /// The most writes seen within any `window` (a sliding window over the write log):
    /// with one second, the peak API writes per second.
    pub fn peak_writes(&self, window: Duration) -> usize {
        let stats = lock(&self.inner.stats);
        let times: Vec<Instant> = stats.writes.iter().map(|w| w.at).collect();
        let (mut best, mut start) = (0, 0);
        for end in 0..times.len() {
            while times[end].duration_since(times[start]) >= window {
                start += 1;
            }
            best = best.max(end - start + 1);
        }
        best
    }

    /// Clears counters and the write log.
    pub fn reset_stats(&self) {
        *lock(&self.inner.stats) = Stats::default();
    }

    /// A kube config for this server: plain HTTP, no credentials, namespace `default`.
    pub fn kube_config(&self) -> Result<kube::Config> {
        let uri = self.url.parse().context("server URL")?;
        Ok(kube::Config::new(uri))
    }

    /// Writes a kubeconfig for this server to `path` (its directory is created), for
    /// processes such as `kubectl`: one context, plain HTTP, no credentials, namespace
    /// `namespace`.
    pub fn write_kubeconfig(&self, path: &std::path::Path, namespace: &str) -> Result<()> {
        let dir = path
            .parent()
            .with_context(|| format!("{} has no directory", path.display()))?;
        k8s::write_kubeconfig(
            dir,
            path,
            "onehop-test-server",
            kube::config::Cluster {
                server: Some(self.url.clone()),
                ..kube::config::Cluster::default()
            },
            kube::config::AuthInfo::default(),
            namespace,
        )
    }

    /// A `kube::Client` for this server. Must be called within a Tokio runtime (the
    /// client spawns its request buffer there).
    pub fn client(&self) -> Result<kube::Client> {
        kube::Client::try_from(self.kube_config()?).context("building the kube client")
    }
}

/// One accepted connection: refused with an RST during an outage, else served over HTTP/1
/// until it closes or an outage begins.
fn connection(
    inner: Arc<Inner>,
    stream: tokio::net::TcpStream,
) -> Option<impl std::future::Future<Output = ()> + Send + 'static> {
    if !*inner.available.borrow() {
        // An RST, as from a server that is gone. Nothing was written, so a
        // zero linger loses no data.
        let _ = stream.set_zero_linger();
        drop(stream);
        return None;
    }
    let _ = stream.set_nodelay(true);
    let mut down = inner.available.subscribe();
    Some(async move {
        let svc = hyper::service::service_fn(move |req| {
            let inner = Arc::clone(&inner);
            async move { Ok::<_, Infallible>(http::handle(inner, req).await) }
        });
        let conn =
            hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc);
        tokio::select! {
            r = conn => {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "test API server connection");
                }
            }
            // Outage: dropping the connection closes it, mid-response or not.
            _ = down.wait_for(|up| !*up) => {}
        }
    })
}
