//! The Kubernetes side of a test, against the in-repo test API server or a real cluster.
//!
//! Kubernetes-facing tests seed, read and delete objects through the API with `kube::Api`,
//! never through the test server's store, so the same test code runs against both backends:
//!
//! - **Test server** (the default, and always what `cargo xtask test` and CI use): an
//!   [`ApiServer`] on loopback, one per test.
//! - **Real cluster**, opted into with `ONEHOP_TEST_CLUSTER=kubeconfig` (set by
//!   `cargo xtask test-cluster`): the current context of the kubeconfig named by
//!   `KUBECONFIG`. Nothing reads a kubeconfig unless that variable says so, so a developer's
//!   `KUBECONFIG` pointing at production is never used by a plain test run.
//!
//! Isolation, so a shared (disposable) cluster survives the tests:
//! - each test gets a namespace `onehop-t-<pid>-<n>` (plus `-<suffix>` ones it asks for),
//!   created at the start and deleted on drop, panics included: its Services, EndpointSlices,
//!   pools, advertisements, Leases and Events go with it;
//! - cluster-scoped objects a test creates (Nodes) are deleted on drop;
//! - on a real cluster, a test's Services get a `loadBalancerClass` of their own
//!   (`onehop.io/t-<pid>-<n>`) and the controller and agents serve only that class, so the
//!   cluster's own `LoadBalancer` Services are never touched;
//! - the onehop CRDs are created when missing (and then left installed: other onehop
//!   installations may use them).
//!
//! Processes in the topology's network namespaces reach the API through a [`Forwarder`]
//! whose listener sits inside the topology and which connects out from the root namespace;
//! [`TestCluster::kubeconfig`] is a kubeconfig for them (server: the forwarder; for HTTPS
//! `tls-server-name` set to the real server's host, so certificate checks still pass).
//!
//! Test-server-only controls (outages, the request log) are behind
//! [`TestCluster::test_server`]; tests that cannot do without them call
//! [`skip_on_real_cluster`].

use std::{
    collections::BTreeMap,
    io::Write as _,
    net::{SocketAddr, ToSocketAddrs as _},
    path::{Path, PathBuf},
    sync::{
        Mutex, Once, PoisonError,
        atomic::{AtomicU32, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail, ensure};
use k8s_openapi::{
    api::core::v1::Namespace,
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
};
use kube::{
    Api, Client, Resource,
    api::{ApiResource, DeleteParams, DynamicObject, ListParams, PostParams},
    config::{
        AuthInfo, Cluster, Context, KubeConfigOptions, Kubeconfig, NamedAuthInfo, NamedCluster,
        NamedContext,
    },
};
use serde::{Serialize, de::DeserializeOwned};
use serde_json::{Value, json};

use crate::{ApiServer, forward::Forwarder};

/// The opt-in switch: `kubeconfig` runs against the cluster `KUBECONFIG` names.
pub const TARGET_ENV: &str = "ONEHOP_TEST_CLUSTER";

/// The label that keeps the EndpointSlice controllers away from slices a test writes.
pub const MANAGED_BY: (&str, &str) = ("endpointslice.kubernetes.io/managed-by", "onehop-tests");

/// The `loadBalancerClass` the test server runs use (the default one, and unclassed
/// Services are served too).
pub const DEFAULT_CLASS: &str = "onehop.io/l2";

/// Where the Kubernetes-facing tests run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    TestServer,
    Kubeconfig,
}

impl Target {
    /// From [`TARGET_ENV`]: unset or empty for the test server, `kubeconfig` for a real
    /// cluster; anything else is an error (a typo must not silently pick a backend).
    pub fn from_env() -> Result<Self> {
        match std::env::var(TARGET_ENV) {
            Err(std::env::VarError::NotPresent) => Ok(Self::TestServer),
            Ok(v) if v.is_empty() => Ok(Self::TestServer),
            Ok(v) if v == "kubeconfig" => Ok(Self::Kubeconfig),
            other => bail!("{TARGET_ENV}={other:?}: expected it unset or `kubeconfig`"),
        }
    }
}

/// Whether this run targets a real cluster (panics on a bad [`TARGET_ENV`]).
pub fn real_cluster() -> bool {
    Target::from_env().expect(TARGET_ENV) == Target::Kubeconfig
}

/// Writes a line to the process's stderr, past the test harness's output capture (it
/// captures `eprintln!`, not the stream), so it shows for passing tests too.
fn say(line: &str) {
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

/// On a real cluster, prints `skipped on a real cluster: <why>` (with the test's name) and
/// returns true: the caller skips what needs the test server. Returns false otherwise.
pub fn skip_on_real_cluster(why: &str) -> bool {
    if !real_cluster() {
        return false;
    }
    let test = std::thread::current()
        .name()
        .filter(|n| *n != "main")
        .map(|n| format!("{n}: "))
        .unwrap_or_default();
    say(&format!("{test}skipped on a real cluster: {why}"));
    true
}

/// The user's cluster, as the current context of `KUBECONFIG` describes it.
#[derive(Clone)]
struct Upstream {
    kubeconfig: Kubeconfig,
    context: String,
    cluster: Cluster,
    auth: AuthInfo,
}

impl Upstream {
    fn load() -> Result<Self> {
        let path = std::env::var_os("KUBECONFIG")
            .filter(|p| !p.is_empty())
            .with_context(|| format!("{TARGET_ENV}=kubeconfig needs KUBECONFIG set"))?;
        let kubeconfig = Kubeconfig::read()
            .with_context(|| format!("reading KUBECONFIG={}", path.to_string_lossy()))?;
        let context = kubeconfig
            .current_context
            .clone()
            .context("the kubeconfig has no current-context")?;
        let ctx = kubeconfig
            .contexts
            .iter()
            .find(|c| c.name == context)
            .and_then(|c| c.context.clone())
            .with_context(|| format!("context {context:?} is not in the kubeconfig"))?;
        let cluster = kubeconfig
            .clusters
            .iter()
            .find(|c| c.name == ctx.cluster)
            .and_then(|c| c.cluster.clone())
            .with_context(|| format!("cluster {:?} is not in the kubeconfig", ctx.cluster))?;
        ensure!(
            cluster.proxy_url.is_none(),
            "cluster {:?} uses a proxy-url, which the tests do not support",
            ctx.cluster
        );
        let auth = match &ctx.user {
            Some(user) => kubeconfig
                .auth_infos
                .iter()
                .find(|a| a.name == *user)
                .and_then(|a| a.auth_info.clone())
                .with_context(|| format!("user {user:?} is not in the kubeconfig"))?,
            None => AuthInfo::default(),
        };
        Ok(Self {
            kubeconfig,
            context,
            cluster,
            auth,
        })
    }

    fn server(&self) -> Result<&str> {
        self.cluster
            .server
            .as_deref()
            .context("the kubeconfig's cluster has no server")
    }
}

/// `context "<name>", server <url>` of the current context of `KUBECONFIG` (which must be
/// set): what a real-cluster run will use.
pub fn describe_kubeconfig() -> Result<String> {
    let u = Upstream::load()?;
    Ok(format!("context {:?}, server {}", u.context, u.server()?))
}

/// `(scheme, host, port)` of an API server URL.
fn split_server(url: &str) -> Result<(String, String, u16)> {
    let uri: hyper::Uri = url
        .parse()
        .with_context(|| format!("server {url:?} is not a URL"))?;
    let scheme = uri.scheme_str().unwrap_or("https").to_owned();
    let host = uri
        .host()
        .with_context(|| format!("server {url:?} has no host"))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = uri
        .port_u16()
        .unwrap_or(if scheme == "http" { 80 } else { 443 });
    Ok((scheme, host, port))
}

/// Namespaces and cluster-scoped objects a test created: deleted on drop.
#[derive(Default)]
struct Created {
    namespaces: Vec<String>,
    cluster_scoped: Vec<(ApiResource, String)>,
}

static SEQ: AtomicU32 = AtomicU32::new(0);
static BANNER: Once = Once::new();

/// One test's view of Kubernetes; cleans up after itself on drop.
pub struct TestCluster {
    target: Target,
    client: Client,
    config: kube::Config,
    namespace: String,
    class: String,
    created: Mutex<Created>,
    dir: PathBuf,
    kubeconfig: PathBuf,
    forwarder: Option<Forwarder>,
    // Last: the cleanup in `drop` still talks to it.
    server: Option<ApiServer>,
}

impl std::fmt::Debug for TestCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCluster")
            .field("target", &self.target)
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

impl TestCluster {
    /// Starts a test against the backend [`Target::from_env`] picks. With `listener` (bound
    /// inside a topology namespace), processes there reach the API through a forwarder on
    /// it, and [`TestCluster::kubeconfig`] points at it; without, the kubeconfig is for the
    /// root namespace. Call from the root namespace, within a Tokio runtime.
    pub async fn start(listener: Option<std::net::TcpListener>) -> Result<Self> {
        let target = Target::from_env()?;
        let (server, upstream) = match target {
            Target::TestServer => {
                let server = ApiServer::start_local()?;
                let upstream = Upstream {
                    kubeconfig: Kubeconfig::default(),
                    context: "test-server".into(),
                    cluster: Cluster {
                        server: Some(server.url().to_owned()),
                        ..Cluster::default()
                    },
                    auth: AuthInfo::default(),
                };
                (Some(server), upstream)
            }
            Target::Kubeconfig => {
                let upstream = Upstream::load()?;
                let server = upstream.server()?.to_owned();
                let context = upstream.context.clone();
                BANNER.call_once(|| {
                    say(&format!(
                        "onehop tests: real cluster: context {context:?}, server {server} \
                         (KUBECONFIG={})",
                        std::env::var("KUBECONFIG").unwrap_or_default()
                    ));
                });
                (None, upstream)
            }
        };
        let config = match &server {
            Some(s) => s.kube_config()?,
            None => kube::Config::from_custom_kubeconfig(
                upstream.kubeconfig.clone(),
                &KubeConfigOptions {
                    context: Some(upstream.context.clone()),
                    ..KubeConfigOptions::default()
                },
            )
            .await
            .context("loading the kubeconfig's current context")?,
        };
        let client = Client::try_from(config.clone()).context("building the kube client")?;

        let (scheme, host, port) = split_server(upstream.server()?)?;
        let forwarder = match listener {
            Some(l) => {
                let addr: SocketAddr = (host.as_str(), port)
                    .to_socket_addrs()
                    .with_context(|| format!("resolving {host}:{port}"))?
                    .next()
                    .with_context(|| format!("{host}:{port} resolves to nothing"))?;
                Some(Forwarder::start(l, addr)?)
            }
            None => None,
        };
        let mut cluster = upstream.cluster.clone();
        if let Some(f) = &forwarder {
            let a = f.addr();
            cluster.server = Some(format!("{scheme}://{}:{}", a.ip(), a.port()));
            // The certificate names the real server, not the forwarder: verify against that
            // (kube's rustls connector uses it for SNI and verification).
            if scheme == "https" && cluster.tls_server_name.is_none() {
                cluster.tls_server_name = Some(host.clone());
            }
        }

        let (namespace, n) = create_unique_namespace(&client).await?;
        let pid = std::process::id();
        let class = match target {
            Target::TestServer => DEFAULT_CLASS.to_owned(),
            Target::Kubeconfig => format!("onehop.io/t-{pid}-{n}"),
        };
        let dir = std::env::temp_dir().join(format!("{namespace}-kube"));
        let kubeconfig = dir.join("kubeconfig");
        let this = Self {
            target,
            client,
            config,
            namespace: namespace.clone(),
            class,
            created: Mutex::new(Created {
                namespaces: vec![namespace.clone()],
                ..Created::default()
            }),
            dir,
            kubeconfig,
            forwarder,
            server,
        };
        write_kubeconfig(
            &this.dir,
            &this.kubeconfig,
            "onehop-test",
            cluster,
            upstream.auth,
            &namespace,
        )?;
        Ok(this)
    }

    pub fn target(&self) -> Target {
        self.target
    }

    /// The in-repo server, when that is the backend: outages, request log, counters.
    pub fn test_server(&self) -> Option<&ApiServer> {
        self.server.as_ref()
    }

    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// This test's namespace (`onehop-t-<pid>-<n>`).
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The `loadBalancerClass` this test's controller and agents serve.
    pub fn class(&self) -> &str {
        &self.class
    }

    /// Whether this test's controller and agents also serve Services without a class: on
    /// the test server, yes (the default); on a real cluster, never (those are the
    /// cluster's).
    pub fn serves_unclassed(&self) -> bool {
        self.target == Target::TestServer
    }

    /// Gives a `LoadBalancer` Service without a class this test's class when unclassed
    /// Services are not served (a real cluster), so it is served all the same; takes it
    /// away again from a Service that is no longer a `LoadBalancer` (the API server allows
    /// a class on those only).
    pub fn classify(&self, svc: &mut k8s_openapi::api::core::v1::Service) {
        if self.serves_unclassed() {
            return;
        }
        if let Some(spec) = svc.spec.as_mut() {
            let lb = spec.type_.as_deref() == Some("LoadBalancer");
            if lb && spec.load_balancer_class.is_none() {
                spec.load_balancer_class = Some(self.class.clone());
            } else if !lb && spec.load_balancer_class.as_deref() == Some(&self.class) {
                spec.load_balancer_class = None;
            }
        }
    }

    /// `onehop controller` election timing for tests: a lost leader is replaced within
    /// about a second.
    pub const CONTROLLER_FAST_ELECTION: [&str; 6] = [
        "--lease-duration-ms",
        "1000",
        "--renew-deadline-ms",
        "700",
        "--retry-period-ms",
        "200",
    ];

    /// `--load-balancer-class` (and `--ignore-unclassed`): the same flags for `onehop
    /// agent` and `onehop controller`.
    pub fn class_args(&self) -> Vec<String> {
        let mut args = vec!["--load-balancer-class".into(), self.class.clone()];
        if !self.serves_unclassed() {
            args.push("--ignore-unclassed".into());
        }
        args
    }

    /// A kubeconfig (context namespace: [`TestCluster::namespace`]) for the processes a
    /// test spawns: through the forwarder when the test has one, else as the test itself
    /// reaches the API. Pass it as `KUBECONFIG`.
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// The forwarder, when the test has one.
    pub fn forwarder(&self) -> Option<&Forwarder> {
        self.forwarder.as_ref()
    }

    /// Creates namespace `<namespace>-<suffix>` with `labels`; deleted on drop.
    pub async fn create_namespace(&self, suffix: &str, labels: &[(&str, &str)]) -> Result<String> {
        let name = format!("{}-{suffix}", self.namespace);
        let mut ns = Namespace::default();
        ns.metadata.name = Some(name.clone());
        ns.metadata.labels = Some(
            labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        );
        Api::<Namespace>::all(self.client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .with_context(|| format!("creating namespace {name}"))?;
        self.created().namespaces.push(name.clone());
        Ok(name)
    }

    /// Creates each CRD that does not exist yet (and leaves them installed), then waits
    /// until its resources can be listed.
    pub async fn ensure_crds(&self, crds: &[CustomResourceDefinition]) -> Result<()> {
        let api: Api<CustomResourceDefinition> = Api::all(self.client.clone());
        for crd in crds {
            let name = crd.metadata.name.clone().context("a CRD without a name")?;
            if api.get_opt(&name).await?.is_some() {
                continue;
            }
            if self.target == Target::Kubeconfig {
                say(&format!(
                    "onehop tests: creating CustomResourceDefinition {name} (left installed)"
                ));
            }
            match api.create(&PostParams::default(), crd).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 409 => {}
                Err(e) => return Err(e).with_context(|| format!("creating CRD {name}")),
            }
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        for crd in crds {
            let spec = &crd.spec;
            let version = spec
                .versions
                .iter()
                .find(|v| v.served)
                .context("a CRD without a served version")?;
            let ar = ApiResource {
                group: spec.group.clone(),
                version: version.name.clone(),
                api_version: format!("{}/{}", spec.group, version.name),
                kind: spec.names.kind.clone(),
                plural: spec.names.plural.clone(),
            };
            let api: Api<DynamicObject> =
                Api::namespaced_with(self.client.clone(), &self.namespace, &ar);
            loop {
                match api.list(&ListParams::default().limit(1)).await {
                    Ok(_) => break,
                    Err(e) if Instant::now() < deadline => {
                        tracing::debug!(error = %e, "waiting for {} to be served", ar.plural);
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    Err(e) => {
                        return Err(e).with_context(|| format!("{} is not served", ar.plural));
                    }
                }
            }
        }
        Ok(())
    }

    fn created(&self) -> std::sync::MutexGuard<'_, Created> {
        self.created.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn api_of<K: Resource<DynamicType = ()>>(&self, ns: &str) -> (Api<DynamicObject>, ApiResource) {
        let ar = ApiResource::erase::<K>(&());
        let api = if ns.is_empty() {
            Api::all_with(self.client.clone(), &ar)
        } else {
            Api::namespaced_with(self.client.clone(), ns, &ar)
        };
        (api, ar)
    }

    /// Creates or replaces an object (namespaced when its metadata has a namespace), then,
    /// if it has a `status` that differs from the stored one, writes that through the status
    /// subresource, as a controller would. Server-managed metadata is dropped first, so an
    /// object read with [`TestCluster::get`] and changed can be put back. Cluster-scoped
    /// objects this creates are deleted on drop.
    pub async fn put<K>(&self, obj: &K) -> Result<K>
    where
        K: Resource<DynamicType = ()> + Serialize + DeserializeOwned,
    {
        let ns = obj.meta().namespace.clone().unwrap_or_default();
        let name = obj.meta().name.clone().context("put needs metadata.name")?;
        let (api, ar) = self.api_of::<K>(&ns);
        let mut body = serde_json::to_value(obj).context("serializing")?;
        let fields = body.as_object_mut().context("an object")?;
        let status = fields.remove("status").filter(|s| !s.is_null());
        fields.insert("apiVersion".into(), ar.api_version.clone().into());
        fields.insert("kind".into(), ar.kind.clone().into());
        if let Some(meta) = fields.get_mut("metadata").and_then(Value::as_object_mut) {
            for k in [
                "resourceVersion",
                "uid",
                "creationTimestamp",
                "deletionTimestamp",
                "managedFields",
                "generation",
                "selfLink",
            ] {
                meta.remove(k);
            }
        }
        let what = format!("{} {ns}/{name}", ar.kind);
        let mut stored = None;
        for _ in 0..10 {
            let mut attempt: DynamicObject =
                serde_json::from_value(body.clone()).context("an object")?;
            let r = match api.get_opt(&name).await? {
                None => api.create(&PostParams::default(), &attempt).await,
                Some(cur) => {
                    attempt.metadata.resource_version = cur.metadata.resource_version;
                    api.replace(&name, &PostParams::default(), &attempt).await
                }
            };
            match r {
                Ok(o) => {
                    stored = Some(o);
                    break;
                }
                // Someone (a controller) wrote in between, or created it first: again.
                Err(kube::Error::Api(s)) if s.code == 409 => {}
                Err(e) => return Err(e).with_context(|| format!("writing {what}")),
            }
        }
        let mut stored = stored.with_context(|| format!("{what}: conflicts, 10 times"))?;
        if ns.is_empty() {
            let mut created = self.created();
            if !created
                .cluster_scoped
                .iter()
                .any(|(r, n)| *r == ar && *n == name)
            {
                created.cluster_scoped.push((ar.clone(), name.clone()));
            }
        }
        if let Some(status) = status {
            for attempt in 0.. {
                if stored.data.get("status") == Some(&status) {
                    break;
                }
                ensure!(attempt < 10, "{what}: status conflicts, 10 times");
                let patch = json!({
                    "apiVersion": ar.api_version,
                    "kind": ar.kind,
                    "metadata": {
                        "name": name,
                        "namespace": (!ns.is_empty()).then_some(&ns),
                        "resourceVersion": stored.metadata.resource_version,
                    },
                    "status": status,
                });
                let body: DynamicObject = serde_json::from_value(patch).context("a status")?;
                match api
                    .replace_status(&name, &PostParams::default(), &body)
                    .await
                {
                    Ok(o) => stored = o,
                    Err(kube::Error::Api(s)) if s.code == 409 => {
                        stored = api
                            .get(&name)
                            .await
                            .with_context(|| format!("reading {what}"))?;
                    }
                    Err(e) => return Err(e).with_context(|| format!("writing {what} status")),
                }
            }
        }
        from_dynamic(stored)
    }

    /// An object (`ns` empty for cluster-scoped ones), if it exists.
    pub async fn get<K>(&self, ns: &str, name: &str) -> Result<Option<K>>
    where
        K: Resource<DynamicType = ()> + DeserializeOwned,
    {
        let (api, _) = self.api_of::<K>(ns);
        api.get_opt(name)
            .await
            .with_context(|| format!("reading {ns}/{name}"))?
            .map(from_dynamic)
            .transpose()
    }

    /// Objects of a namespaced kind in every namespace this test created.
    pub async fn list<K>(&self) -> Result<Vec<K>>
    where
        K: Resource<DynamicType = ()> + DeserializeOwned,
    {
        let namespaces = self.created().namespaces.clone();
        let mut out = Vec::new();
        for ns in namespaces {
            let (api, ar) = self.api_of::<K>(&ns);
            let list = api
                .list(&ListParams::default())
                .await
                .with_context(|| format!("listing {} in {ns}", ar.plural))?;
            for o in list.items {
                out.push(from_dynamic(o)?);
            }
        }
        Ok(out)
    }

    /// Deletes an object; whether it existed.
    pub async fn delete<K>(&self, ns: &str, name: &str) -> Result<bool>
    where
        K: Resource<DynamicType = ()>,
    {
        let (api, _) = self.api_of::<K>(ns);
        match api.delete(name, &DeleteParams::default()).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(false),
            Err(e) => Err(e).with_context(|| format!("deleting {ns}/{name}")),
        }
    }
}

fn from_dynamic<K: DeserializeOwned>(o: DynamicObject) -> Result<K> {
    serde_json::from_value(serde_json::to_value(o).context("serializing")?)
        .context("deserializing an API object")
}

/// Creates `onehop-t-<pid>-<n>` for the next free `n`: `(name, n)`.
async fn create_unique_namespace(client: &Client) -> Result<(String, u32)> {
    let api: Api<Namespace> = Api::all(client.clone());
    for _ in 0..20 {
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let name = format!("onehop-t-{}-{n}", std::process::id());
        let mut ns = Namespace::default();
        ns.metadata.name = Some(name.clone());
        ns.metadata.labels = Some(BTreeMap::from([(
            "app.kubernetes.io/created-by".to_owned(),
            "onehop-tests".to_owned(),
        )]));
        match api.create(&PostParams::default(), &ns).await {
            Ok(_) => return Ok((name, n)),
            // Left from an earlier run with the same pid (maybe still terminating).
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => return Err(e).with_context(|| format!("creating namespace {name}")),
        }
    }
    Err(anyhow!("no free test namespace name after 20 tries"))
}

/// Writes a one-context kubeconfig (mode 0600: it may hold credentials).
pub(crate) fn write_kubeconfig(
    dir: &Path,
    path: &Path,
    name: &str,
    cluster: Cluster,
    auth: AuthInfo,
    namespace: &str,
) -> Result<()> {
    use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
    let kc = Kubeconfig {
        clusters: vec![NamedCluster {
            name: name.into(),
            cluster: Some(cluster),
            ..NamedCluster::default()
        }],
        auth_infos: vec![NamedAuthInfo {
            name: name.into(),
            auth_info: Some(auth),
            ..NamedAuthInfo::default()
        }],
        contexts: vec![NamedContext {
            name: name.into(),
            context: Some(Context {
                cluster: name.into(),
                user: Some(name.into()),
                namespace: Some(namespace.into()),
                ..Context::default()
            }),
            ..NamedContext::default()
        }],
        current_context: Some(name.into()),
        api_version: Some("v1".into()),
        kind: Some("Config".into()),
        ..Kubeconfig::default()
    };
    // JSON is YAML: every kubeconfig reader takes it.
    let text = serde_json::to_vec_pretty(&kc).context("serializing the kubeconfig")?;
    std::fs::DirBuilder::new()
        .mode(0o700)
        .recursive(true)
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(&text)
        .with_context(|| format!("writing {}", path.display()))
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
        let created = std::mem::take(&mut *self.created());
        if self.server.as_ref().is_some_and(|s| !s.is_available()) {
            // An outage left on by a failing test: nothing to reach, and the server goes.
            return;
        }
        let config = self.config.clone();
        // Drop may run inside the test's runtime (which must not be blocked on itself) or
        // outside any: a thread with its own runtime and client works in both.
        let cleanup = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async move {
                let client = Client::try_from(config)?;
                let work = async {
                    for (ar, name) in created.cluster_scoped.iter().rev() {
                        let api: Api<DynamicObject> = Api::all_with(client.clone(), ar);
                        match api.delete(name, &DeleteParams::default()).await {
                            Ok(_) => {}
                            Err(kube::Error::Api(s)) if s.code == 404 => {}
                            Err(e) => say(&format!("onehop tests: deleting {name}: {e}")),
                        }
                    }
                    // Deleting a namespace deletes everything in it.
                    let api: Api<Namespace> = Api::all(client.clone());
                    for name in created.namespaces.iter().rev() {
                        match api.delete(name, &DeleteParams::default()).await {
                            Ok(_) => {}
                            Err(kube::Error::Api(s)) if s.code == 404 => {}
                            Err(e) => say(&format!("onehop tests: deleting namespace {name}: {e}")),
                        }
                    }
                };
                if tokio::time::timeout(Duration::from_secs(20), work)
                    .await
                    .is_err()
                {
                    say(
                        "onehop tests: cleanup timed out; delete the onehop-t-* namespaces by hand",
                    );
                }
                anyhow::Ok(())
            })
        });
        match cleanup.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => say(&format!("onehop tests: cleanup failed: {e:#}")),
            Err(_) => say("onehop tests: cleanup panicked"),
        }
    }
}

/// A run of test functions of the current test binary in real-cluster mode, against a
/// test API server that the run sees only as an external cluster: a separate process
/// given nothing but `ONEHOP_TEST_CLUSTER=kubeconfig` and a `KUBECONFIG` naming this
/// server. CI has no cluster; this is how it proves the real-cluster path (opt-in switch,
/// kubeconfig loading, forwarder, namespaces and cleanup) still works.
pub struct ProofRun {
    /// The "cluster": inspect what the run left behind.
    pub server: ApiServer,
    pub status: std::process::ExitStatus,
    pub stdout: String,
    pub stderr: String,
    /// The child's pid: its namespaces are `onehop-t-<pid>-<n>`.
    pub pid: u32,
}

/// The context name of the proof's kubeconfig (the run's banner must show it).
pub const PROOF_CONTEXT: &str = "onehop-proof";

impl ProofRun {
    /// Runs this test binary with the test harness arguments `args` (filters, `--exact`,
    /// `--skip`) and `--test-threads=1`, bounded by `limit`.
    pub fn run(args: &[&str], limit: Duration) -> Result<Self> {
        let server = ApiServer::start_local()?;
        let dir = std::env::temp_dir().join(format!(
            "onehop-proof-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let kubeconfig = dir.join("kubeconfig");
        write_kubeconfig(
            &dir,
            &kubeconfig,
            PROOF_CONTEXT,
            Cluster {
                server: Some(server.url().to_owned()),
                ..Cluster::default()
            },
            AuthInfo::default(),
            "default",
        )?;
        let (out, err) = (dir.join("stdout"), dir.join("stderr"));
        let exe = std::env::current_exe().context("this test binary")?;
        let mut child = std::process::Command::new(exe)
            .args(args)
            .arg("--test-threads=1")
            .env(TARGET_ENV, "kubeconfig")
            .env("KUBECONFIG", &kubeconfig)
            .stdin(std::process::Stdio::null())
            .stdout(std::fs::File::create(&out)?)
            .stderr(std::fs::File::create(&err)?)
            .spawn()
            .context("starting the real-cluster-mode run")?;
        let pid = child.id();
        let deadline = Instant::now() + limit;
        let status = loop {
            if let Some(st) = child.try_wait()? {
                break st;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("the real-cluster-mode run took longer than {limit:?}");
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let stdout = std::fs::read_to_string(&out).unwrap_or_default();
        let stderr = std::fs::read_to_string(&err).unwrap_or_default();
        let _ = std::fs::remove_dir_all(&dir);
        Ok(Self {
            server,
            status,
            stdout,
            stderr,
            pid,
        })
    }

    /// What every proof checks: the run passed (at least `min_passed` tests) in
    /// real-cluster mode, worked in namespaces of its own, created the CRDs it needed, and
    /// deleted what it created.
    pub fn check(&self, min_passed: usize) -> Result<()> {
        let show = || format!("stdout:\n{}\nstderr:\n{}", self.stdout, self.stderr);
        ensure!(
            self.status.success(),
            "the run failed: {}\n{}",
            self.status,
            show()
        );
        let passed: usize = self
            .stdout
            .split_once("test result: ok. ")
            .and_then(|(_, rest)| rest.split_once(" passed; 0 failed"))
            .and_then(|(n, _)| n.parse().ok())
            .with_context(|| format!("no test summary\n{}", show()))?;
        ensure!(
            passed >= min_passed,
            "{passed} tests passed, want at least {min_passed}\n{}",
            show()
        );
        ensure!(
            self.stderr
                .contains(&format!("real cluster: context \"{PROOF_CONTEXT}\"")),
            "the run did not say it targets the kubeconfig's cluster\n{}",
            show()
        );
        let prefix = format!("onehop-t-{}-", self.pid);
        let writes = self.server.writes();
        ensure!(
            writes.iter().any(|w| w.resource == "namespaces"
                && w.name.as_deref().is_some_and(|n| n.starts_with(&prefix))),
            "no test namespace {prefix}* was created"
        );
        // Namespaced writes in the run's namespaces, cluster-scoped ones to objects named
        // after them; the CRDs are the one exception. (The log has no name for a create;
        // such an object is either left over, which is checked below, or was deleted by
        // name, which is checked here.)
        let outside: Vec<_> = writes
            .iter()
            .filter(|w| w.resource != "customresourcedefinitions.apiextensions.k8s.io")
            .filter(|w| {
                let ours =
                    |n: &Option<String>| n.as_deref().is_some_and(|n| n.starts_with(&prefix));
                let cluster_scoped = w.namespace.is_none();
                let unnamed_create = w.verb == crate::Verb::Create && w.name.is_none();
                !(ours(&w.namespace) || cluster_scoped && (ours(&w.name) || unnamed_create))
            })
            .collect();
        ensure!(
            outside.is_empty(),
            "writes outside the test namespaces: {outside:?}"
        );
        for crd in ["ipaddresspools.onehop.io", "l2advertisements.onehop.io"] {
            ensure!(
                self.server.store().resource(crd).is_some(),
                "CRD {crd} was not created"
            );
        }
        let store = self.server.store();
        let left: Vec<String> = store
            .list::<Namespace>()?
            .into_iter()
            .filter_map(|n| n.metadata.name)
            .filter(|n| n.starts_with(&prefix))
            .collect();
        ensure!(left.is_empty(), "namespaces left behind: {left:?}");
        let nodes = store.list::<k8s_openapi::api::core::v1::Node>()?;
        ensure!(nodes.is_empty(), "{} Node objects left behind", nodes.len());
        Ok(())
    }
}
