//! `onehop controller` against the test API server (or, with
//! `cargo xtask test-cluster`, a real cluster): the production `kube::Client`,
//! watchers, Lease election and Event recorder over HTTP. Objects are seeded and
//! read through the API (see `onehop_apiserver::k8s`); what only the test server
//! can do (outages, its request log) is skipped on a real cluster.

#![expect(
    clippy::unwrap_used,
    reason = "test helpers outside #[test] functions fail the test on purpose"
)]

use std::{
    collections::BTreeMap,
    future::Future,
    sync::Arc,
    time::{Duration, Instant},
};

use k8s_openapi::{
    api::{
        coordination::v1::Lease,
        core::v1::{
            LoadBalancerIngress, LoadBalancerStatus, Namespace, Node, Service, ServicePort,
            ServiceSpec, ServiceStatus,
        },
        events::v1::Event,
    },
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use lb_userspace::{
    controller::metrics::ControllerMetrics,
    controller::{self, Options, Timing},
    k8s::{
        crd::{self, IPAddressPool, PoolSpec},
        lease,
        translate::{ClassFilter, ingress_ips},
    },
};
use onehop_apiserver::{
    ApiServer,
    k8s::{ProofRun, TestCluster, skip_on_real_cluster},
};
use tokio::{sync::oneshot, task::JoinHandle};

/// The controller's namespace in the manifests (the RBAC test maps the test's own to it).
const NS: &str = "onehop-system";
const T: Duration = Duration::from_secs(10);

/// Fast election timing for tests: a crashed leader is replaced within
/// `lease_duration + 2 * retry_period` = 1.4 s.
fn timing() -> Timing {
    Timing {
        lease_duration: Duration::from_secs(1),
        renew_deadline: Duration::from_millis(700),
        retry_period: Duration::from_millis(200),
        debounce: Duration::from_millis(20),
        resync: Duration::from_secs(30),
    }
}

struct Ctl {
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<anyhow::Result<()>>,
    /// What the replica serves on `/metrics`.
    metrics: Arc<ControllerMetrics>,
}

impl Ctl {
    fn start(k: &Env, identity: &str) -> Self {
        Self::start_in(k, identity, k.sys())
    }

    /// A controller whose Lease and pools are in `namespace`.
    fn start_in(k: &Env, identity: &str, namespace: &str) -> Self {
        let opts = Options {
            namespace: namespace.into(),
            lease_name: "onehop-controller".into(),
            identity: identity.into(),
            class: ClassFilter {
                class: k.b.class().into(),
                unclassed: k.b.serves_unclassed(),
            },
            timing: timing(),
        };
        let (tx, rx) = oneshot::channel::<()>();
        let metrics = Arc::new(ControllerMetrics::default());
        let task = tokio::spawn(controller::run_with_metrics(
            k.b.client(),
            opts,
            Arc::clone(&metrics),
            async move {
                let _ = rx.await;
            },
        ));
        Self {
            stop: Some(tx),
            task,
            metrics,
        }
    }

    /// Whether the replica says it leads, as its `/metrics` reports it.
    fn leads(&self) -> bool {
        let text = self.metrics.render().expect("metrics render");
        let value = text
            .lines()
            .find_map(|l| l.strip_prefix("onehop_controller_leader "))
            .unwrap_or_else(|| panic!("no leader gauge in {text}"));
        match value.trim() {
            "1" => true,
            "0" => false,
            other => panic!("leader gauge {other:?}"),
        }
    }

    /// Clean shutdown (releases the Lease).
    async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        tokio::time::timeout(T, &mut self.task)
            .await
            .expect("controller stops")
            .expect("not panicked")
            .expect("no error");
    }

    /// A crash: nothing released.
    fn kill(self) {
        self.task.abort();
    }
}

impl Drop for Ctl {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One test's cluster: the controller's namespace (`sys`: its Lease and the pools) and
/// one for the Services (`apps`), both unique to the test and deleted after it.
struct Env {
    b: TestCluster,
    apps: String,
}

impl Env {
    fn sys(&self) -> &str {
        self.b.namespace()
    }

    /// The test server, on which `what` depends; `None` (with a note on stderr) on a
    /// real cluster.
    fn test_server(&self, what: &str) -> Option<&ApiServer> {
        let s = self.b.test_server();
        if s.is_none() {
            skip_on_real_cluster(what);
        }
        s
    }
}

async fn setup() -> Env {
    let b = TestCluster::start(None).await.expect("test cluster");
    b.ensure_crds(&crd::crds()).await.unwrap();
    let apps = b.create_namespace("apps", &[]).await.unwrap();
    Env { b, apps }
}

async fn pool(k: &Env, name: &str, addresses: &[&str]) {
    pool_with(k, name, addresses, |_| {}).await;
}

async fn pool_with(k: &Env, name: &str, addresses: &[&str], f: impl FnOnce(&mut PoolSpec)) {
    let mut spec = PoolSpec {
        addresses: addresses.iter().map(|a| (*a).to_owned()).collect(),
        ..PoolSpec::default()
    };
    f(&mut spec);
    let mut p = IPAddressPool::new(name, spec);
    p.metadata.namespace = Some(k.sys().into());
    k.b.put(&p).await.unwrap();
}

fn svc(ns: &str, name: &str, annotations: &[(&str, &str)]) -> Service {
    Service {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(ns.into()),
            annotations: Some(
                annotations
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
            ),
            ..ObjectMeta::default()
        },
        spec: Some(ServiceSpec {
            type_: Some("LoadBalancer".into()),
            ports: Some(vec![ServicePort {
                port: 80,
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

/// Creates or replaces a Service (an unclassed one gets the test's class on a real
/// cluster, where unclassed Services are the cluster's).
async fn put(k: &Env, s: &Service) {
    let mut s = s.clone();
    k.b.classify(&mut s);
    k.b.put(&s).await.unwrap();
}

async fn get_svc(k: &Env, ns: &str, name: &str) -> Service {
    k.b.get::<Service>(ns, name)
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("{ns}/{name} exists"))
}

async fn ips_of(k: &Env, ns: &str, name: &str) -> Vec<String> {
    k.b.get::<Service>(ns, name)
        .await
        .unwrap()
        .map(|s| ingress_ips(&s).iter().map(ToString::to_string).collect())
        .unwrap_or_default()
}

async fn get_pool(k: &Env, name: &str) -> Option<IPAddressPool> {
    k.b.get::<IPAddressPool>(k.sys(), name).await.unwrap()
}

async fn wait_for(what: &str, mut f: impl AsyncFnMut() -> bool) {
    let start = Instant::now();
    while !f().await {
        assert!(start.elapsed() < T, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn wait_ips(k: &Env, ns: &str, name: &str, want: &[&str]) {
    wait_for(&format!("{ns}/{name} to show {want:?}"), async || {
        ips_of(k, ns, name).await == want
    })
    .await;
}

/// `(type, reason, note)` of the Events about an object.
async fn events(k: &Env, kind: &str, name: &str) -> Vec<(String, String, String)> {
    k.b.list::<Event>()
        .await
        .unwrap()
        .into_iter()
        .filter(|e| {
            e.regarding
                .as_ref()
                .is_some_and(|r| r.kind.as_deref() == Some(kind) && r.name.as_deref() == Some(name))
        })
        .map(|e| {
            (
                e.type_.unwrap_or_default(),
                e.reason.unwrap_or_default(),
                e.note.unwrap_or_default(),
            )
        })
        .collect()
}

async fn wait_event(k: &Env, kind: &str, name: &str, reason: &str, note: &str) {
    wait_for(
        &format!("{reason} on {kind} {name} saying {note:?}"),
        async || {
            events(k, kind, name)
                .await
                .iter()
                .any(|(_, r, n)| r == reason && n.contains(note))
        },
    )
    .await;
}

/// Bounds a whole test. (The test's future is boxed: with the API calls
/// it holds it is too large to move around on the stack.)
fn bounded(f: impl Future<Output = ()>) -> impl Future<Output = ()> {
    let f = Box::pin(f);
    async move {
        tokio::time::timeout(Duration::from_secs(30), f)
            .await
            .expect("test took too long");
    }
}

/// The controller creates the cluster's flow-hash Secret once, with a
/// secret long enough for `--hash-seed-file`, and never replaces it: a second
/// replica (or a restart) leaves the bytes every agent already hashes with.
#[tokio::test]
async fn creates_the_hash_seed_secret_once_and_keeps_it() {
    use k8s_openapi::api::core::v1::Secret;
    use lb_userspace::k8s::hash_secret;
    bounded(async {
        let k = setup().await;
        let secrets: kube::Api<Secret> = kube::Api::namespaced(k.b.client(), k.sys());
        let seed_of = async || {
            secrets
                .get_opt(hash_secret::NAME)
                .await
                .expect("reading the Secret")
                .and_then(|s| s.data)
                .and_then(|d| d.get(hash_secret::KEY).cloned())
                .map(|b| b.0)
        };
        let c1 = Ctl::start(&k, "c-1");
        let mut first = None;
        wait_for("the hash seed Secret", async || {
            first = seed_of().await;
            first.is_some()
        })
        .await;
        let first = first.expect("waited for it");
        assert!(
            lb_common::hash::seed_of_secret(&first).is_some(),
            "{} bytes is too short for a seed",
            first.len()
        );
        let c2 = Ctl::start(&k, "c-2");
        assert!(
            !hash_secret::ensure(k.b.client(), k.sys())
                .await
                .expect("ensure"),
            "an existing Secret is not created again"
        );
        c2.stop().await;
        c1.stop().await;
        assert_eq!(seed_of().await, Some(first), "the secret was replaced");
    })
    .await;
}

#[tokio::test]
async fn assigns_from_the_pool_writes_status_and_event() {
    bounded(async {
        let k = setup().await;
        pool(&k, "main", &["192.0.2.10-192.0.2.11"]).await;
        put(&k, &svc(&k.apps, "web", &[])).await;
        let ctl = Ctl::start(&k, "c-1");
        wait_ips(&k, &k.apps, "web", &["192.0.2.10"]).await;
        wait_event(
            &k,
            "Service",
            "web",
            "IPAllocated",
            "Assigned IP [\"192.0.2.10\"]",
        )
        .await;
        let ev = &events(&k, "Service", "web").await[0];
        assert_eq!(ev.0, "Normal");
        // A second Service gets the next address; a third finds the pool full.
        put(&k, &svc(&k.apps, "api", &[])).await;
        wait_ips(&k, &k.apps, "api", &["192.0.2.11"]).await;
        put(&k, &svc(&k.apps, "full", &[])).await;
        wait_event(
            &k,
            "Service",
            "full",
            "AllocationFailed",
            "no available IP in pool(s) main",
        )
        .await;
        assert_eq!(events(&k, "Service", "full").await[0].0, "Warning");
        assert!(ips_of(&k, &k.apps, "full").await.is_empty());
        // The pool status counts.
        wait_for("pool status", async || {
            get_pool(&k, "main")
                .await
                .and_then(|p| p.status)
                .is_some_and(|s| s.assigned_ipv4 == 2 && s.available_ipv4 == 0)
        })
        .await;
        // Not ours: another class, or not a LoadBalancer.
        let mut other = svc(&k.apps, "other", &[]);
        other.spec.as_mut().unwrap().load_balancer_class = Some("example.com/lb".into());
        put(&k, &other).await;
        let mut cluster_ip = svc(&k.apps, "cip", &[]);
        cluster_ip.spec.as_mut().unwrap().type_ = Some("ClusterIP".into());
        put(&k, &cluster_ip).await;
        // Deleting a Service frees its address for the waiting one.
        assert!(k.b.delete::<Service>(&k.apps, "web").await.unwrap());
        wait_ips(&k, &k.apps, "full", &["192.0.2.10"]).await;
        assert!(ips_of(&k, &k.apps, "other").await.is_empty());
        assert!(ips_of(&k, &k.apps, "cip").await.is_empty());
        assert!(events(&k, "Service", "other").await.is_empty());
        // Idempotent: nothing more is written once settled.
        if let Some(server) = k.test_server("the idle-writes check needs the write log") {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let before = server.writes().len();
            tokio::time::sleep(Duration::from_millis(500)).await;
            let extra: Vec<_> = server.writes()[before..]
                .iter()
                .filter(|w| !w.resource.starts_with("leases"))
                .cloned()
                .collect();
            assert!(extra.is_empty(), "writes while idle: {extra:?}");
        }
        ctl.stop().await;
    })
    .await;
}

#[tokio::test]
#[expect(
    clippy::too_many_lines,
    reason = "one scenario per annotation, read top to bottom"
)]
async fn requests_by_ip_annotation_and_pool() {
    bounded(async {
        let k = setup().await;
        pool(&k, "a", &["192.0.2.0/28"]).await;
        pool_with(&k, "b", &["198.51.100.0/28"], |s| {
            s.auto_assign = Some(false);
        })
        .await;
        let mut by_spec = svc(&k.apps, "spec", &[]);
        by_spec.spec.as_mut().unwrap().load_balancer_ip = Some("192.0.2.5".into());
        put(&k, &by_spec).await;
        put(
            &k,
            &svc(
                &k.apps,
                "ours",
                &[("onehop.io/loadBalancerIPs", "192.0.2.6")],
            ),
        )
        .await;
        put(
            &k,
            &svc(
                &k.apps,
                "new",
                &[("metallb.io/loadBalancerIPs", "192.0.2.7")],
            ),
        )
        .await;
        put(
            &k,
            &svc(
                &k.apps,
                "old",
                &[("metallb.universe.tf/loadBalancerIPs", "198.51.100.3")],
            ),
        )
        .await;
        put(
            &k,
            &svc(&k.apps, "named", &[("metallb.io/address-pool", "b")]),
        )
        .await;
        put(
            &k,
            &svc(
                &k.apps,
                "nopool",
                &[("metallb.io/loadBalancerIPs", "203.0.113.1")],
            ),
        )
        .await;
        put(
            &k,
            &svc(&k.apps, "unknown", &[("metallb.io/address-pool", "zz")]),
        )
        .await;
        put(
            &k,
            &svc(
                &k.apps,
                "bad",
                &[("metallb.io/loadBalancerIPs", "192.0.2.x")],
            ),
        )
        .await;
        put(
            &k,
            &svc(
                &k.apps,
                "taken",
                &[("onehop.io/loadBalancerIPs", "192.0.2.5")],
            ),
        )
        .await;
        let ctl = Ctl::start(&k, "c-1");
        wait_ips(&k, &k.apps, "spec", &["192.0.2.5"]).await;
        wait_ips(&k, &k.apps, "ours", &["192.0.2.6"]).await;
        wait_ips(&k, &k.apps, "new", &["192.0.2.7"]).await;
        wait_ips(&k, &k.apps, "old", &["198.51.100.3"]).await;
        wait_ips(&k, &k.apps, "named", &["198.51.100.0"]).await;
        wait_event(
            &k,
            "Service",
            "nopool",
            "AllocationFailed",
            "203.0.113.1 is not in any IPAddressPool",
        )
        .await;
        wait_event(
            &k,
            "Service",
            "unknown",
            "AllocationFailed",
            "unknown or invalid IPAddressPool \"zz\"",
        )
        .await;
        wait_event(
            &k,
            "Service",
            "bad",
            "AllocationFailed",
            "\"192.0.2.x\" in loadBalancerIPs is not an IP address",
        )
        .await;
        wait_event(
            &k,
            "Service",
            "taken",
            "AllocationFailed",
            &format!("192.0.2.5 is already in use by {}/spec", k.apps),
        )
        .await;
        for name in ["nopool", "unknown", "bad", "taken"] {
            assert!(ips_of(&k, &k.apps, name).await.is_empty(), "{name}");
        }
        ctl.stop().await;
    })
    .await;
}

#[tokio::test]
async fn sharing_key_lets_services_share_an_address() {
    bounded(async {
        let k = setup().await;
        pool(&k, "a", &["192.0.2.0/30"]).await;
        let key = [("metallb.io/allow-shared-ip", "k1")];
        let mut dns_udp = svc(&k.apps, "dns-udp", &key);
        dns_udp.spec.as_mut().unwrap().ports = Some(vec![ServicePort {
            port: 53,
            protocol: Some("UDP".into()),
            ..ServicePort::default()
        }]);
        let mut dns_tcp = svc(&k.apps, "dns-tcp", &key);
        dns_tcp.spec.as_mut().unwrap().ports = Some(vec![ServicePort {
            port: 53,
            ..ServicePort::default()
        }]);
        put(&k, &dns_udp).await;
        let ctl = Ctl::start(&k, "c-1");
        wait_ips(&k, &k.apps, "dns-udp", &["192.0.2.0"]).await;
        put(&k, &dns_tcp).await;
        wait_ips(&k, &k.apps, "dns-tcp", &["192.0.2.0"]).await;
        // Same port under the same key: a different address.
        put(&k, &svc(&k.apps, "web1", &key)).await;
        put(
            &k,
            &svc(&k.apps, "web2", &[("metallb.io/allow-shared-ip", "k2")]),
        )
        .await;
        wait_ips(&k, &k.apps, "web1", &["192.0.2.0"]).await;
        wait_ips(&k, &k.apps, "web2", &["192.0.2.1"]).await;
        ctl.stop().await;
    })
    .await;
}

#[tokio::test]
async fn bad_pools_get_a_warning_and_the_others_keep_working() {
    bounded(async {
        let k = setup().await;
        pool(&k, "a", &["192.0.2.0/29"]).await;
        pool(&k, "b-overlaps", &["192.0.2.4-192.0.2.20"]).await;
        pool(&k, "c-invalid", &["not-an-address"]).await;
        let team =
            k.b.create_namespace("team", &[("tier", "gold")])
                .await
                .unwrap();
        pool_with(&k, "d-gold", &["198.51.100.0/30"], |s| {
            s.service_allocation = Some(
                serde_json::from_value(serde_json::json!({
                    "priority": 1,
                    "namespaceSelectors": [{"matchLabels": {"tier": "gold"}}]
                }))
                .unwrap(),
            );
        })
        .await;
        let ctl = Ctl::start(&k, "c-1");
        put(&k, &svc(&k.apps, "web", &[])).await;
        put(&k, &svc(&team, "web", &[])).await;
        wait_ips(&k, &k.apps, "web", &["192.0.2.0"]).await;
        wait_ips(&k, &team, "web", &["198.51.100.0"]).await;
        wait_event(
            &k,
            "IPAddressPool",
            "b-overlaps",
            "InvalidPool",
            "overlaps pool a",
        )
        .await;
        wait_event(
            &k,
            "IPAddressPool",
            "c-invalid",
            "InvalidPool",
            "not-an-address",
        )
        .await;
        assert_eq!(
            events(&k, "IPAddressPool", "b-overlaps").await[0].0,
            "Warning"
        );
        wait_for("overlap condition", async || {
            get_pool(&k, "b-overlaps")
                .await
                .and_then(|p| p.status)
                .is_some_and(|s| {
                    s.conditions
                        .iter()
                        .any(|c| c.status == "False" && c.reason == "OverlappingPool")
                })
        })
        .await;
        assert!(events(&k, "IPAddressPool", "a").await.is_empty());
        ctl.stop().await;
    })
    .await;
}

/// A Node object with `InternalIP` `internal` (and `ExternalIP` `external`), named after
/// the test's namespace so that it is unique (Nodes are cluster-scoped).
fn fake_node(k: &Env, suffix: &str, internal: &str, external: Option<&str>) -> Node {
    let mut addresses = vec![serde_json::json!({ "type": "InternalIP", "address": internal })];
    if let Some(e) = external {
        addresses.push(serde_json::json!({ "type": "ExternalIP", "address": e }));
    }
    serde_json::from_value(serde_json::json!({
        "metadata": { "name": format!("{}-{suffix}", k.sys()) },
        "status": { "addresses": addresses }
    }))
    .unwrap()
}

/// The pool's `Valid` condition as `(status, reason, message)`.
async fn valid_condition(k: &Env, pool: &str) -> Option<(String, String, String)> {
    get_pool(k, pool)
        .await
        .and_then(|p| p.status)
        .and_then(|s| {
            s.conditions
                .into_iter()
                .find(|c| c.type_ == "Valid")
                .map(|c| (c.status, c.reason, c.message))
        })
}

/// A pool containing a node's address would have the announcing node answer ARP for
/// that node's address: the whole pool is refused (`Valid=False`, reason `NodeAddress`, a
/// Warning Event), no Service gets an address from it — not even one asking for the node's
/// address by annotation — and a node that appears later invalidates a pool in use.
/// An agent's per-node Lease reporting `gateways` (what `onehop agent` writes).
async fn node_lease(k: &Env, node: &str, gateways: &[&str]) {
    let now = k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(
        k8s_openapi::jiff::Timestamp::now(),
    );
    let mut l = lease::acquired(
        &lb_userspace::agent::kube::lease_name(node),
        node,
        Duration::from_secs(2),
        &now,
        BTreeMap::from([(
            lb_userspace::agent::kube::LEASE_LABEL.to_owned(),
            "true".to_owned(),
        )]),
        BTreeMap::from([(lease::GATEWAYS_ANNOTATION.to_owned(), gateways.join(","))]),
    );
    l.metadata.namespace = Some(k.sys().into());
    k.b.put(&l).await.unwrap();
}

/// A pool containing a gateway that an agent reported on its Lease would have the
/// announcing node take the router's address over: the whole pool is refused
/// (`Valid=False`, reason `GatewayAddress`, a Warning Event), no Service gets an address
/// from it, and a gateway reported later invalidates a pool in use.
#[tokio::test]
async fn pools_containing_a_gateway_are_refused() {
    bounded(async {
        let k = setup().await;
        node_lease(&k, "n1", &["192.0.2.1"]).await;
        pool(&k, "a-gateway", &["192.0.2.0/29"]).await;
        pool(&k, "b-ok", &["203.0.113.64/32"]).await;
        pool(&k, "c-later", &["203.0.113.128/30"]).await;
        let ctl = Ctl::start(&k, "c-1");
        put(&k, &svc(&k.apps, "web", &[])).await;
        wait_for("a-gateway refused", async || {
            valid_condition(&k, "a-gateway")
                .await
                .is_some_and(|(st, reason, msg)| {
                    st == "False"
                        && reason == "GatewayAddress"
                        && msg.contains("192.0.2.1")
                        && msg.contains("node n1")
                })
        })
        .await;
        wait_event(&k, "IPAddressPool", "a-gateway", "InvalidPool", "192.0.2.1").await;
        wait_ips(&k, &k.apps, "web", &["203.0.113.64"]).await;
        // c-later is in use, then another node reports a gateway in it.
        put(&k, &svc(&k.apps, "second", &[])).await;
        wait_ips(&k, &k.apps, "second", &["203.0.113.128"]).await;
        assert_eq!(
            valid_condition(&k, "c-later").await.map(|c| c.0).as_deref(),
            Some("True")
        );
        node_lease(&k, "n2", &["203.0.113.130", "198.51.100.1"]).await;
        wait_for("c-later refused once n2 reports its gateway", async || {
            valid_condition(&k, "c-later")
                .await
                .is_some_and(|(st, reason, msg)| {
                    st == "False" && reason == "GatewayAddress" && msg.contains("203.0.113.130")
                })
        })
        .await;
        for s in k.b.list::<Service>().await.unwrap() {
            let ips: Vec<String> = ingress_ips(&s).iter().map(ToString::to_string).collect();
            assert!(
                !ips.iter()
                    .any(|ip| ip == "192.0.2.1" || ip == "203.0.113.130"),
                "{:?} shows {ips:?}",
                s.metadata.name
            );
        }
        ctl.stop().await;
    })
    .await;
}

#[tokio::test]
async fn pools_containing_a_node_address_are_refused() {
    bounded(async {
        let k = setup().await;
        k.b.put(&fake_node(&k, "n1", "192.0.2.10", Some("198.51.100.7")))
            .await
            .unwrap();
        pool(&k, "a-node", &["192.0.2.8/30"]).await;
        pool(&k, "b-external", &["198.51.100.0-198.51.100.9"]).await;
        pool(&k, "c-ok", &["203.0.113.64/32"]).await;
        pool(&k, "d-later", &["203.0.113.128/30"]).await;
        let ctl = Ctl::start(&k, "c-1");
        put(&k, &svc(&k.apps, "web", &[])).await;
        put(
            &k,
            &svc(
                &k.apps,
                "pinned",
                &[("metallb.io/loadBalancerIPs", "192.0.2.10")],
            ),
        )
        .await;
        for (name, addr) in [("a-node", "192.0.2.10"), ("b-external", "198.51.100.7")] {
            wait_for(&format!("{name} refused"), async || {
                valid_condition(&k, name)
                    .await
                    .is_some_and(|(st, reason, msg)| {
                        st == "False" && reason == "NodeAddress" && msg.contains(addr)
                    })
            })
            .await;
            wait_event(&k, "IPAddressPool", name, "InvalidPool", addr).await;
            assert!(
                events(&k, "IPAddressPool", name)
                    .await
                    .iter()
                    .all(|(t, _, _)| t == "Warning"),
                "{name}"
            );
        }
        wait_ips(&k, &k.apps, "web", &["203.0.113.64"]).await;
        wait_event(&k, "Service", "pinned", "AllocationFailed", "192.0.2.10").await;
        assert!(ips_of(&k, &k.apps, "pinned").await.is_empty());
        // d-later is in use, then a node with an address in it appears.
        put(&k, &svc(&k.apps, "second", &[])).await;
        wait_ips(&k, &k.apps, "second", &["203.0.113.128"]).await;
        assert_eq!(
            valid_condition(&k, "d-later").await.map(|c| c.0).as_deref(),
            Some("True")
        );
        k.b.put(&fake_node(&k, "n2", "203.0.113.130", None))
            .await
            .unwrap();
        wait_for("d-later refused once the node appears", async || {
            valid_condition(&k, "d-later")
                .await
                .is_some_and(|(st, reason, msg)| {
                    st == "False" && reason == "NodeAddress" && msg.contains("203.0.113.130")
                })
        })
        .await;
        // No Service shows any node address, at any point checked.
        for s in k.b.list::<Service>().await.unwrap() {
            let ips: Vec<String> = ingress_ips(&s).iter().map(ToString::to_string).collect();
            for node_ip in ["192.0.2.10", "198.51.100.7", "203.0.113.130"] {
                assert!(
                    !ips.iter().any(|ip| ip == node_ip),
                    "{:?} shows {ips:?}",
                    s.metadata.name
                );
            }
        }
        ctl.stop().await;
    })
    .await;
}

#[tokio::test]
async fn type_or_class_change_releases_the_address() {
    bounded(async {
        let k = setup().await;
        pool(&k, "a", &["192.0.2.1/32"]).await;
        put(&k, &svc(&k.apps, "first", &[])).await;
        let ctl = Ctl::start(&k, "c-1");
        wait_ips(&k, &k.apps, "first", &["192.0.2.1"]).await;
        put(&k, &svc(&k.apps, "second", &[])).await;
        wait_event(
            &k,
            "Service",
            "second",
            "AllocationFailed",
            "no available IP",
        )
        .await;
        let mut s = get_svc(&k, &k.apps, "first").await;
        s.spec.as_mut().unwrap().type_ = Some("ClusterIP".into());
        put(&k, &s).await;
        wait_ips(&k, &k.apps, "first", &[]).await;
        wait_ips(&k, &k.apps, "second", &["192.0.2.1"]).await;
        // Another class (only possible by re-creating it in a real cluster;
        // the class is immutable there).
        put(&k, &svc(&k.apps, "third", &[])).await;
        wait_event(
            &k,
            "Service",
            "third",
            "AllocationFailed",
            "no available IP",
        )
        .await;
        if k.test_server("the class change: loadBalancerClass is immutable on a real API server")
            .is_some()
        {
            let mut s = get_svc(&k, &k.apps, "second").await;
            s.spec.as_mut().unwrap().load_balancer_class = Some("example.com/other".into());
            put(&k, &s).await;
            wait_ips(&k, &k.apps, "second", &[]).await;
            wait_ips(&k, &k.apps, "third", &["192.0.2.1"]).await;
        }
        ctl.stop().await;
    })
    .await;
}

fn with_status(mut s: Service, ip: &str) -> Service {
    s.status = Some(ServiceStatus {
        load_balancer: Some(LoadBalancerStatus {
            ingress: Some(vec![LoadBalancerIngress {
                ip: Some(ip.into()),
                ..LoadBalancerIngress::default()
            }]),
        }),
        ..ServiceStatus::default()
    });
    s
}

#[tokio::test]
async fn restart_rebuilds_from_statuses_and_never_duplicates() {
    bounded(async {
        let k = setup().await;
        pool(&k, "a", &["192.0.2.0/30"]).await;
        // Statuses written by an earlier run: .2 and .0 are taken; "late"
        // (younger) claims .2 too and must move.
        put(&k, &with_status(svc(&k.apps, "x", &[]), "192.0.2.2")).await;
        tokio::time::sleep(Duration::from_millis(1100)).await; // distinct creation times
        put(&k, &with_status(svc(&k.apps, "y", &[]), "192.0.2.0")).await;
        put(&k, &with_status(svc(&k.apps, "late", &[]), "192.0.2.2")).await;
        put(&k, &svc(&k.apps, "fresh", &[])).await;
        let ctl = Ctl::start(&k, "c-1");
        wait_event(
            &k,
            "Service",
            "late",
            "IPConflict",
            &format!("192.0.2.2 is already in use by {}/x", k.apps),
        )
        .await;
        wait_for("everyone placed", async || {
            for n in ["x", "y", "late", "fresh"] {
                if ips_of(&k, &k.apps, n).await.len() != 1 {
                    return false;
                }
            }
            true
        })
        .await;
        assert_eq!(ips_of(&k, &k.apps, "x").await, ["192.0.2.2"]);
        assert_eq!(ips_of(&k, &k.apps, "y").await, ["192.0.2.0"]);
        let mut all: Vec<String> = Vec::new();
        for n in ["x", "y", "late", "fresh"] {
            all.extend(ips_of(&k, &k.apps, n).await);
        }
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 4, "an address was handed out twice: {all:?}");
        ctl.stop().await;

        // A restart adopts everything and changes nothing.
        let server = k.test_server("the no-status-writes-after-restart check needs the write log");
        if let Some(server) = server {
            server.reset_stats();
        }
        let ctl = Ctl::start(&k, "c-1");
        put(&k, &svc(&k.apps, "more", &[])).await;
        wait_event(&k, "Service", "more", "AllocationFailed", "no available IP").await;
        if let Some(server) = server {
            let status_writes = server
                .writes()
                .iter()
                .filter(|w| w.resource == "services/status" && w.name.as_deref() != Some("more"))
                .count();
            assert_eq!(status_writes, 0);
        }
        ctl.stop().await;
    })
    .await;
}

async fn holder(k: &Env) -> Option<String> {
    k.b.get::<Lease>(k.sys(), "onehop-controller")
        .await
        .unwrap()
        .and_then(|l| l.spec?.holder_identity)
}

#[tokio::test]
async fn one_leader_allocates_and_a_standby_takes_over() {
    bounded(async {
        let k = setup().await;
        pool(&k, "a", &["192.0.2.0/28"]).await;
        let a = Ctl::start(&k, "a");
        wait_for("a leads", async || holder(&k).await.as_deref() == Some("a")).await;
        let b = Ctl::start(&k, "b");
        put(&k, &svc(&k.apps, "s1", &[])).await;
        wait_ips(&k, &k.apps, "s1", &["192.0.2.0"]).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(holder(&k).await.as_deref(), Some("a"));
        let reporters: Vec<String> =
            k.b.list::<Event>()
                .await
                .unwrap()
                .into_iter()
                .filter_map(|e| e.reporting_instance)
                .collect();
        assert_eq!(reporters, ["a"], "only the leader writes Events");

        // A crash: b takes over once the Lease expires (lease + 2 retries).
        let t0 = Instant::now();
        a.kill();
        wait_for("b leads", async || holder(&k).await.as_deref() == Some("b")).await;
        let took = t0.elapsed();
        // The standby sees the last renewal up to a retry period late and
        // checks once per retry period: lease + 2 retry periods, plus slack
        // for request latency on a loaded machine.
        let tm = timing();
        let bound = tm.lease_duration + tm.retry_period * 2 + Duration::from_millis(300);
        eprintln!("takeover after a crash: {took:?} (bound {bound:?})");
        assert!(took < bound, "takeover took {took:?}");
        put(&k, &svc(&k.apps, "s2", &[])).await;
        wait_ips(&k, &k.apps, "s2", &["192.0.2.1"]).await;
        assert_eq!(ips_of(&k, &k.apps, "s1").await, ["192.0.2.0"]);

        // A clean stop releases the Lease: c takes over within a retry period.
        let c = Ctl::start(&k, "c");
        tokio::time::sleep(Duration::from_millis(300)).await;
        let t0 = Instant::now();
        b.stop().await;
        wait_for("c leads", async || holder(&k).await.as_deref() == Some("c")).await;
        let took = t0.elapsed();
        // Released: the next attempt (within a retry period) wins.
        let bound = tm.retry_period + Duration::from_millis(300);
        eprintln!("takeover after a clean stop: {took:?} (bound {bound:?})");
        assert!(took < bound, "takeover took {took:?}");
        put(&k, &svc(&k.apps, "s3", &[])).await;
        wait_ips(&k, &k.apps, "s3", &["192.0.2.2"]).await;
        c.stop().await;
    })
    .await;
}

#[tokio::test]
async fn keeps_going_after_an_api_outage() {
    if skip_on_real_cluster("needs an API outage on demand (test server only)") {
        return;
    }
    bounded(async {
        let k = setup().await;
        let server = k.b.test_server().unwrap();
        pool(&k, "a", &["192.0.2.0/28"]).await;
        put(&k, &svc(&k.apps, "s1", &[])).await;
        let ctl = Ctl::start(&k, "c-1");
        wait_ips(&k, &k.apps, "s1", &["192.0.2.0"]).await;
        assert!(ctl.leads(), "the only replica leads once it allocated");
        let down = Instant::now();
        server.set_available(false);
        // Longer than the renew deadline: the controller steps down.
        let outage = Duration::from_millis(1500);
        let mut stepped_down = None;
        while down.elapsed() < outage {
            if stepped_down.is_none() && !ctl.leads() {
                stepped_down = Some(down.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let tm = timing();
        let stepped_down = stepped_down.unwrap_or_else(|| {
            panic!(
                "still leading after {outage:?} without the API (renew deadline {:?})",
                tm.renew_deadline
            )
        });
        eprintln!("stepped down {stepped_down:?} into the outage");
        // Not at the first failed renewal (due within a retry period of the
        // outage) but at the renew deadline, counted from the last renewal
        // (at most a retry period and a request before the outage).
        assert!(
            stepped_down >= tm.renew_deadline.saturating_sub(tm.retry_period * 2),
            "stepped down after {stepped_down:?}, well before the renew deadline"
        );
        assert!(!ctl.leads(), "leads again while the API is still down");
        // Changes made while the API is down for the controller (through the
        // store, since the API is down for this test too).
        server.store().put(&svc(&k.apps, "s2", &[])).unwrap();
        server.store().delete::<Service>(&k.apps, "s1").unwrap();
        server.set_available(true);
        wait_ips(&k, &k.apps, "s2", &["192.0.2.0"]).await;
        wait_event(&k, "Service", "s2", "IPAllocated", "192.0.2.0").await;
        // It allocated again because it took the Lease back.
        assert!(ctl.leads(), "leads again after the outage");
        assert_eq!(holder(&k).await.as_deref(), Some("c-1"));
        ctl.stop().await;
    })
    .await;
}

/// `manifests/*.yaml`, every document parsed into its k8s-openapi type.
fn manifests() -> Vec<serde_json::Value> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../manifests");
    let mut docs = Vec::new();
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    for path in files {
        let text = std::fs::read_to_string(&path).unwrap();
        let values: Vec<serde_json::Value> = serde_saphyr::from_str_multiple::<_, Vec<_>>(&text)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        for v in values.into_iter().filter(|v| !v.is_null()) {
            let kind = v["kind"].as_str().unwrap_or_default().to_owned();
            let ok = match kind.as_str() {
                "Namespace" => serde_json::from_value::<Namespace>(v.clone()).is_ok(),
                "ServiceAccount" => {
                    serde_json::from_value::<k8s_openapi::api::core::v1::ServiceAccount>(v.clone())
                        .is_ok()
                }
                "ClusterRole" | "Role" | "ClusterRoleBinding" | "RoleBinding" => {
                    rbac_parts(&v).is_some()
                }
                "Deployment" => {
                    serde_json::from_value::<k8s_openapi::api::apps::v1::Deployment>(v.clone())
                        .is_ok()
                }
                "CustomResourceDefinition" => {
                    serde_json::from_value::<CustomResourceDefinition>(v.clone()).is_ok()
                }
                // Other kinds (the agent's) are someone else's to check.
                _ => true,
            };
            assert!(ok, "{}: {kind} does not parse", path.display());
            docs.push(v);
        }
    }
    docs
}

/// `(subjects, roleRef)` of a binding or `rules` of a role, parsed with the
/// document's own type.
type RbacParts = (
    Vec<k8s_openapi::api::rbac::v1::Subject>,
    Option<k8s_openapi::api::rbac::v1::RoleRef>,
    Vec<PolicyRule>,
);

fn rbac_parts(v: &serde_json::Value) -> Option<RbacParts> {
    use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
    let v = v.clone();
    Some(match v["kind"].as_str()? {
        "ClusterRole" => {
            let r: ClusterRole = serde_json::from_value(v).ok()?;
            (vec![], None, r.rules.unwrap_or_default())
        }
        "Role" => {
            let r: Role = serde_json::from_value(v).ok()?;
            (vec![], None, r.rules.unwrap_or_default())
        }
        "ClusterRoleBinding" => {
            let b: ClusterRoleBinding = serde_json::from_value(v).ok()?;
            (b.subjects.unwrap_or_default(), Some(b.role_ref), vec![])
        }
        "RoleBinding" => {
            let b: RoleBinding = serde_json::from_value(v).ok()?;
            (b.subjects.unwrap_or_default(), Some(b.role_ref), vec![])
        }
        _ => return None,
    })
}

/// The rules bound to the controller's `ServiceAccount`: `(namespace or None
/// for cluster-wide, rule)`.
fn controller_rules(docs: &[serde_json::Value]) -> Vec<(Option<String>, PolicyRule)> {
    let mut out = Vec::new();
    for b in docs.iter().filter(|d| {
        matches!(
            d["kind"].as_str(),
            Some("ClusterRoleBinding" | "RoleBinding")
        )
    }) {
        let (subjects, role_ref, _) = rbac_parts(b).unwrap();
        let role_ref = role_ref.unwrap();
        let ours = subjects.iter().any(|s| {
            s.kind == "ServiceAccount"
                && s.name == "onehop-controller"
                && s.namespace.as_deref() == Some(NS)
        });
        if !ours {
            continue;
        }
        let scope = b["metadata"]["namespace"].as_str().map(str::to_owned);
        let role = docs
            .iter()
            .find(|d| {
                d["kind"].as_str() == Some(role_ref.kind.as_str())
                    && d["metadata"]["name"].as_str() == Some(role_ref.name.as_str())
                    && (role_ref.kind == "ClusterRole"
                        || d["metadata"]["namespace"].as_str() == scope.as_deref())
            })
            .unwrap_or_else(|| panic!("{role_ref:?} not found"));
        for rule in rbac_parts(role).unwrap().2 {
            out.push((scope.clone(), rule));
        }
    }
    out
}

use k8s_openapi::api::rbac::v1::PolicyRule;

/// Every API call the controller makes is allowed by the manifests' RBAC,
/// and every rule there is used (least privilege).
#[tokio::test]
async fn rbac_covers_exactly_the_controllers_calls() {
    if skip_on_real_cluster("needs the test server's log of the controller's API calls") {
        return;
    }
    bounded(async {
        let docs = manifests();
        let rules = controller_rules(&docs);
        assert!(!rules.is_empty());
        let k = setup().await;
        let server = k.b.test_server().unwrap();
        let other = k.b.create_namespace("other", &[]).await.unwrap();
        pool(&k, "a", &["192.0.2.1/32"]).await;
        pool(&k, "bad", &["192.0.2.1/32"]).await;
        put(&k, &svc(&k.apps, "web", &[])).await;
        put(&k, &svc(&other, "full", &[])).await;
        // From here on every API call is the controller's: the test reads the
        // store directly.
        server.reset_stats();
        let store = server.store();
        let ctl = Ctl::start(&k, "c-1");
        wait_for("web to get its address", async || {
            store.get::<Service>(&k.apps, "web").is_some_and(|s| {
                ingress_ips(&s)
                    .iter()
                    .any(|ip| ip.to_string() == "192.0.2.1")
            })
        })
        .await;
        let has_event = |name: &str, reason: &str, note: &str| {
            store.list::<Event>().unwrap().iter().any(|e| {
                e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name)
                    && e.reason.as_deref() == Some(reason)
                    && e.note.as_deref().unwrap_or_default().contains(note)
            })
        };
        wait_for("AllocationFailed on full", async || {
            has_event("full", "AllocationFailed", "no available")
        })
        .await;
        wait_for("InvalidPool on bad", async || {
            has_event("bad", "InvalidPool", "overlaps")
        })
        .await;
        tokio::time::sleep(timing().retry_period * 2).await; // a renewal
        ctl.stop().await;
        // The controller's namespace is this test's own; the manifests say
        // onehop-system.
        let scope_of = |ns: Option<String>| {
            if ns.as_deref() == Some(k.sys()) {
                Some(NS.to_owned())
            } else {
                ns
            }
        };

        let mut used = std::collections::BTreeSet::new();
        for (verb, resource) in server.request_counts().keys() {
            let (group, res) = onehop_apiserver::rbac_resource(resource);
            let verb = verb.rbac_name();
            // Which namespaces the call went to.
            let namespaces: std::collections::BTreeSet<Option<String>> = server
                .writes()
                .iter()
                .filter(|w| w.resource == *resource && w.verb.rbac_name() == verb)
                .map(|w| scope_of(w.namespace.clone()))
                .collect();
            let allowed = |ns: &Option<String>| {
                rules.iter().position(|(scope, r)| {
                    (scope.is_none() || scope == ns)
                        && r.api_groups.iter().flatten().any(|g| *g == group)
                        && r.resources.iter().flatten().any(|x| *x == res)
                        && r.verbs.iter().any(|v| v == verb)
                })
            };
            // Reads are not in the write log: a namespaced read is checked
            // against the controller's namespace, a cluster-wide one
            // (services, namespaces) against cluster scope.
            let scopes: Vec<Option<String>> = if namespaces.is_empty() {
                let namespaced_here = matches!(
                    res.as_str(),
                    "leases" | "ipaddresspools" | "ipaddresspools/status" | "secrets"
                );
                vec![namespaced_here.then(|| NS.to_owned())]
            } else {
                namespaces.into_iter().collect()
            };
            for ns in &scopes {
                let i = allowed(ns)
                    .unwrap_or_else(|| panic!("{verb} {resource} in {ns:?} is not allowed"));
                used.insert((i, verb.to_owned()));
            }
        }
        for (i, (scope, rule)) in rules.iter().enumerate() {
            for verb in &rule.verbs {
                // The recorder patches an Event only when the same one
                // repeats, which this short run does not provoke.
                let patch_events =
                    verb == "patch" && rule.resources.iter().flatten().any(|r| r == "events");
                assert!(
                    used.contains(&(i, verb.clone())) || patch_events,
                    "{verb} in rule {rule:?} ({scope:?}) is never used"
                );
            }
        }
    })
    .await;
}

struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The `onehop controller` binary: flags, the kubeconfig from `KUBECONFIG`,
/// SIGTERM releases the Lease.
#[tokio::test]
async fn the_binary_assigns_and_releases_its_lease_on_sigterm() {
    bounded(async {
        let k = setup().await;
        pool(&k, "a", &["192.0.2.7/32"]).await;
        // A class other than the default; on a real cluster, the test's own.
        let class = if k.b.serves_unclassed() {
            "example.com/x"
        } else {
            k.b.class()
        };
        let mut classed = svc(&k.apps, "web", &[]);
        classed.spec.as_mut().unwrap().load_balancer_class = Some(class.into());
        put(&k, &classed).await;
        // Unclassed on either backend (not through `put`, which would class it).
        k.b.put(&svc(&k.apps, "unclassed", &[])).await.unwrap();
        // Free ports for /metrics and the probes (this test may run twice at once: see
        // the real-cluster-mode proof).
        let free = || {
            std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
        };
        let (metrics, health) = (free(), free());
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_onehop"))
            .args([
                "controller",
                "--namespace",
                k.sys(),
                // The former spellings of --load-balancer-class and
                // --ignore-unclassed: manifests written for them keep working.
                "--class",
                class,
                "--unclassed",
                "false",
            ])
            .args(TestCluster::CONTROLLER_FAST_ELECTION)
            .env("KUBECONFIG", k.b.kubeconfig())
            .env("ONEHOP_METRICS_ADDR", metrics.to_string())
            .env("ONEHOP_HEALTH_ADDR", health.to_string())
            .env("POD_NAME", "pod-1")
            .env("RUST_LOG", "warn")
            .spawn()
            .unwrap();
        let mut child = KillOnDrop(child);
        wait_ips(&k, &k.apps, "web", &["192.0.2.7"]).await;
        assert_eq!(holder(&k).await.as_deref(), Some("pod-1"));
        assert!(ips_of(&k, &k.apps, "unclassed").await.is_empty());
        let get = |addr: std::net::SocketAddr, path: &'static str| async move {
            tokio::task::spawn_blocking(move || {
                onehop_testkit::traffic::http_get_here(
                    addr,
                    path,
                    onehop_testkit::traffic::Timeouts::default(),
                )
            })
            .await
            .unwrap()
            .map(|r| (r.status, String::from_utf8_lossy(&r.body).into_owned()))
        };
        let scrape = || get(metrics, "/metrics");
        let expected = [
            "onehop_controller_leader 1",
            "onehop_controller_pool_addresses_in_use{pool=\"a\",family=\"ipv4\"} 1",
            "onehop_controller_pool_addresses{pool=\"a\",family=\"ipv4\"} 1",
            "onehop_controller_pool_valid{pool=\"a\"} 1",
            "onehop_controller_services_assigned 1",
        ];
        // The figures are published after the pass that wrote the status.
        wait_for("the controller's metrics", || async {
            scrape().await.is_ok_and(|(code, text)| {
                code == 200 && expected.iter().all(|e| text.lines().any(|l| l == *e))
            })
        })
        .await;
        // The probe listener answers the probe and nothing that the metrics say.
        assert_eq!(get(health, "/healthz").await.unwrap().0, 200);
        let (code, body) = get(health, "/metrics").await.unwrap();
        assert_eq!(code, 404, "{body}");
        assert_eq!(get(metrics, "/healthz").await.unwrap().0, 404);
        let pid = i32::try_from(child.0.id()).unwrap();
        // SAFETY: signalling our own child process, which has not been reaped.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
        let start = Instant::now();
        let status = loop {
            if let Some(st) = child.0.try_wait().unwrap() {
                break st;
            }
            assert!(
                start.elapsed() < T,
                "the controller did not exit on SIGTERM"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert!(status.success(), "{status}");
        assert_eq!(holder(&k).await, None, "the Lease is released");
    })
    .await;
}

/// A Service whose request turns invalid loses its address (MetalLB does
/// the same), which then goes to a waiting Service.
#[tokio::test]
async fn an_invalid_request_releases_the_address() {
    bounded(async {
        let k = setup().await;
        pool(&k, "a", &["192.0.2.1/32"]).await;
        put(&k, &svc(&k.apps, "x", &[])).await;
        let ctl = Ctl::start(&k, "c-1");
        wait_ips(&k, &k.apps, "x", &["192.0.2.1"]).await;
        put(&k, &svc(&k.apps, "y", &[])).await;
        wait_event(&k, "Service", "y", "AllocationFailed", "no available IP").await;
        let mut x = get_svc(&k, &k.apps, "x").await;
        x.metadata.annotations = Some(BTreeMap::from([(
            "metallb.universe.tf/loadBalancerIPs".to_owned(),
            "nope".to_owned(),
        )]));
        put(&k, &x).await;
        wait_event(&k, "Service", "x", "AllocationFailed", "\"nope\"").await;
        wait_ips(&k, &k.apps, "x", &[]).await;
        wait_ips(&k, &k.apps, "y", &["192.0.2.1"]).await;
        ctl.stop().await;
    })
    .await;
}

/// Deleting a pool takes its addresses away: its Services move to another
/// pool that may serve them, or are told why not.
#[tokio::test]
async fn deleting_a_pool_moves_or_fails_its_services() {
    bounded(async {
        let k = setup().await;
        pool_with(&k, "first", &["192.0.2.1/32"], |s| {
            s.service_allocation =
                Some(serde_json::from_value(serde_json::json!({"priority": 1})).unwrap());
        })
        .await;
        pool(&k, "second", &["198.51.100.1/32"]).await;
        put(&k, &svc(&k.apps, "a", &[])).await;
        let ctl = Ctl::start(&k, "c-1");
        wait_ips(&k, &k.apps, "a", &["192.0.2.1"]).await;
        put(&k, &svc(&k.apps, "b", &[])).await;
        wait_ips(&k, &k.apps, "b", &["198.51.100.1"]).await;
        assert!(k.b.delete::<IPAddressPool>(k.sys(), "first").await.unwrap());
        wait_event(
            &k,
            "Service",
            "a",
            "AllocationFailed",
            "no available IP in pool(s) second",
        )
        .await;
        wait_ips(&k, &k.apps, "a", &[]).await;
        assert_eq!(ips_of(&k, &k.apps, "b").await, ["198.51.100.1"]);
        pool(&k, "third", &["203.0.113.9/32"]).await;
        wait_ips(&k, &k.apps, "a", &["203.0.113.9"]).await;
        ctl.stop().await;
    })
    .await;
}

/// A pool deleted and created again under the same name is a new object
/// without a status: it gets its figures and condition written again even
/// though they equal what the controller wrote for the old one.
#[tokio::test]
async fn a_pool_created_again_gets_its_status_back() {
    bounded(async {
        let k = setup().await;
        pool(&k, "idle", &["192.0.2.40/31"]).await;
        pool(&k, "busy", &["192.0.2.50/32"]).await;
        put(&k, &svc(&k.apps, "web", &[])).await;
        let ctl = Ctl::start(&k, "c-1");
        let shows = async |name: &str, assigned: i64, available: i64| {
            get_pool(&k, name)
                .await
                .and_then(|p| p.status)
                .is_some_and(|s| {
                    s.assigned_ipv4 == assigned
                        && s.available_ipv4 == available
                        && s.conditions
                            .iter()
                            .any(|c| c.type_ == "Valid" && c.status == "True")
                })
        };
        // Both statuses as they should be, wherever web got its address.
        let settled = async || {
            let web = ips_of(&k, &k.apps, "web").await;
            let on_busy = i64::from(web == ["192.0.2.50"]);
            let on_idle = i64::from(web == ["192.0.2.40"] || web == ["192.0.2.41"]);
            on_busy + on_idle == 1
                && shows("idle", on_idle, 2 - on_idle).await
                && shows("busy", on_busy, 1 - on_busy).await
        };
        wait_for("both statuses", settled).await;
        for round in 0..2 {
            for name in ["idle", "busy"] {
                let old = get_pool(&k, name).await.unwrap();
                assert!(k.b.delete::<IPAddressPool>(k.sys(), name).await.unwrap());
                wait_for(&format!("{name} gone (round {round})"), async || {
                    get_pool(&k, name).await.is_none()
                })
                .await;
                let addresses = old
                    .spec
                    .addresses
                    .iter()
                    .map(String::as_str)
                    .collect::<Vec<_>>();
                pool(&k, name, &addresses).await;
                let new = get_pool(&k, name).await.unwrap();
                assert_ne!(new.metadata.uid, old.metadata.uid, "a new object");
            }
            wait_for(&format!("both statuses again (round {round})"), settled).await;
        }
        ctl.stop().await;
    })
    .await;
}

/// The pools' statuses and metrics of
/// [`dual_stack_pools_serve_single_prefer_and_require_dual_stack_services`]
/// once its pools are full: counted per family, no series for a family a
/// pool lacks.
async fn check_per_family_figures(k: &Env, ctl: &Ctl) {
    wait_for("per-family pool statuses", async || {
        let st = |p: Option<IPAddressPool>| {
            p.and_then(|p| p.status).map(|s| {
                (
                    s.assigned_ipv4,
                    s.available_ipv4,
                    s.assigned_ipv6,
                    s.available_ipv6,
                )
            })
        };
        st(get_pool(k, "dual").await) == Some((2, 0, 2, 0))
            && st(get_pool(k, "v6only").await) == Some((0, 0, 1, 3))
            && valid_condition(k, "dual")
                .await
                .is_some_and(|(status, reason, _)| status == "True" && reason == "Valid")
    })
    .await;
    let text = ctl.metrics.render().unwrap();
    for line in [
        "onehop_controller_pool_addresses_in_use{pool=\"dual\",family=\"ipv6\"} 2",
        "onehop_controller_pool_addresses{pool=\"v6only\",family=\"ipv6\"} 4",
        "onehop_controller_pool_addresses_in_use{pool=\"dual\",family=\"ipv4\"} 2",
        "onehop_controller_services_unassigned{reason=\"pool_exhausted\"} 1",
    ] {
        assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
    }
    assert!(
        !text.contains("pool=\"v6only\",family=\"ipv4\""),
        "no series for a family the pool lacks:\n{text}"
    );
}

/// A Service of `policy` with `ipFamilies` `families`.
fn family_svc(
    ns: &str,
    name: &str,
    policy: &str,
    families: &[&str],
    annotations: &[(&str, &str)],
) -> Service {
    let mut s = svc(ns, name, annotations);
    let spec = s.spec.as_mut().unwrap();
    spec.ip_family_policy = Some(policy.into());
    spec.ip_families = Some(families.iter().map(|f| (*f).to_owned()).collect());
    s
}

/// MetalLB's dual-stack pools: a `SingleStack` IPv6 Service, a
/// `RequireDualStack` one (both families from one pool, in `ipFamilies`
/// order) and a `PreferDualStack` one get their addresses; `RequireDualStack`
/// gets nothing once a family runs out, and says why; pool statuses and
/// metrics count per family; a restarted controller adopts the IPv6
/// addresses the statuses show.
#[tokio::test]
async fn dual_stack_pools_serve_single_prefer_and_require_dual_stack_services() {
    bounded(async {
        let k = setup().await;
        pool(&k, "dual", &["fc00:f853:ccd:e799::/127", "192.0.2.60/31"]).await;
        pool_with(&k, "v6only", &["fc00:f853:ccd:e800::/126"], |s| {
            s.service_allocation = Some(crd::ServiceAllocation {
                priority: Some(1),
                ..crd::ServiceAllocation::default()
            });
        })
        .await;
        put(
            &k,
            &family_svc(&k.apps, "six", "SingleStack", &["IPv6"], &[]),
        )
        .await;
        let mut ctl = Ctl::start(&k, "c-1");
        wait_ips(&k, &k.apps, "six", &["fc00:f853:ccd:e800::"]).await;
        // RequireDualStack passes over the higher-priority IPv6-only pool.
        let both = family_svc(&k.apps, "both", "RequireDualStack", &["IPv6", "IPv4"], &[]);
        put(&k, &both).await;
        wait_ips(&k, &k.apps, "both", &["fc00:f853:ccd:e799::", "192.0.2.60"]).await;
        wait_event(
            &k,
            "Service",
            "both",
            "IPAllocated",
            "Assigned IP [\"fc00:f853:ccd:e799::\" \"192.0.2.60\"]",
        )
        .await;
        let pref = family_svc(
            &k.apps,
            "pref",
            "PreferDualStack",
            &["IPv4", "IPv6"],
            &[("metallb.io/address-pool", "dual")],
        );
        put(&k, &pref).await;
        wait_ips(
            &k,
            &k.apps,
            "pref",
            &["192.0.2.61", "fc00:f853:ccd:e799::1"],
        )
        .await;
        // The pool is full in both families: all or nothing.
        let late = family_svc(&k.apps, "late", "RequireDualStack", &["IPv4", "IPv6"], &[]);
        put(&k, &late).await;
        wait_event(
            &k,
            "Service",
            "late",
            "AllocationFailed",
            "no available IP in pool(s) dual (IPv4, IPv6 exhausted)",
        )
        .await;
        assert!(ips_of(&k, &k.apps, "late").await.is_empty());
        check_per_family_figures(&k, &ctl).await;
        // A freed pair goes to the waiting Service, whole.
        assert!(k.b.delete::<Service>(&k.apps, "both").await.unwrap());
        wait_ips(&k, &k.apps, "late", &["192.0.2.60", "fc00:f853:ccd:e799::"]).await;
        // A new leader adopts every address the statuses show, IPv6 too:
        // nothing is renumbered and no address is handed out twice.
        ctl.stop().await;
        ctl = Ctl::start(&k, "c-2");
        put(
            &k,
            &family_svc(&k.apps, "six2", "SingleStack", &["IPv6"], &[]),
        )
        .await;
        wait_ips(&k, &k.apps, "six2", &["fc00:f853:ccd:e800::1"]).await;
        wait_ips(&k, &k.apps, "six", &["fc00:f853:ccd:e800::"]).await;
        wait_ips(
            &k,
            &k.apps,
            "pref",
            &["192.0.2.61", "fc00:f853:ccd:e799::1"],
        )
        .await;
        wait_ips(&k, &k.apps, "late", &["192.0.2.60", "fc00:f853:ccd:e799::"]).await;
        // An address of a family the Service does not have is refused.
        let wrong = family_svc(
            &k.apps,
            "wrong",
            "SingleStack",
            &["IPv4"],
            &[("metallb.io/loadBalancerIPs", "fc00:f853:ccd:e800::3")],
        );
        put(&k, &wrong).await;
        wait_event(&k, "Service", "wrong", "AllocationFailed", "is IPv6").await;
        // Turning RequireDualStack with no pair free: the Service keeps the
        // address it has, and the Event says so.
        let upgraded = family_svc(&k.apps, "six", "RequireDualStack", &["IPv6", "IPv4"], &[]);
        put(&k, &upgraded).await;
        wait_event(
            &k,
            "Service",
            "six",
            "AllocationFailed",
            "(IPv4, IPv6 exhausted); keeping [\"fc00:f853:ccd:e800::\"]",
        )
        .await;
        assert_eq!(ips_of(&k, &k.apps, "six").await, ["fc00:f853:ccd:e800::"]);
        ctl.stop().await;
    })
    .await;
}

/// An IPv6-only pool is valid, and a pool mixing families in one range is
/// not (MetalLB refuses it too).
#[tokio::test]
async fn ipv6_only_pools_are_valid_and_mixed_ranges_are_not() {
    bounded(async {
        let k = setup().await;
        pool(&k, "v6", &["fc00:f853:ccd:e800::/124"]).await;
        pool(&k, "mixed", &["192.0.2.70-fc00:f853:ccd:e900::1"]).await;
        let ctl = Ctl::start(&k, "c-1");
        wait_for("v6's status", async || {
            valid_condition(&k, "v6")
                .await
                .is_some_and(|(status, _, _)| status == "True")
        })
        .await;
        wait_event(
            &k,
            "IPAddressPool",
            "mixed",
            "InvalidPool",
            "mixes an IPv4 and an IPv6 address",
        )
        .await;
        ctl.stop().await;
    })
    .await;
}

/// The real-cluster mode (`cargo xtask test-cluster`), proven without a
/// cluster: every other test of this file runs in a separate process that
/// knows the test server only through `KUBECONFIG`, as it would know a real
/// cluster — unique namespaces and class, CRDs created if missing, the
/// controller binary given a kubeconfig, everything deleted afterwards.
#[test]
fn real_cluster_mode_runs_against_a_kubeconfig_alone() {
    if skip_on_real_cluster("it proves the real-cluster mode against the test server") {
        return;
    }
    let me = "real_cluster_mode_runs_against_a_kubeconfig_alone";
    let run = ProofRun::run(&["--skip", me], Duration::from_mins(3)).expect("the run");
    run.check(12).expect("real-cluster mode");
    // The test's half that needs the write log said it was skipped.
    assert!(
        run.stderr
            .contains("skipped on a real cluster: the idle-writes check"),
        "{}",
        run.stderr
    );
    // The Services had the run's own class; only the one the test wants
    // unclassed had none. (The test server keeps objects of deleted
    // namespaces: it has no namespace lifecycle.)
    let own = format!("onehop.io/t-{}-", run.pid);
    let services = run.server.store().list::<Service>().unwrap();
    assert!(services.len() >= 5, "{services:?}");
    for s in &services {
        let spec = s.spec.clone().unwrap_or_default();
        let name = s.metadata.name.clone().unwrap_or_default();
        let class = spec.load_balancer_class.unwrap_or_default();
        if spec.type_.as_deref() != Some("LoadBalancer") {
            continue;
        }
        assert!(
            class.starts_with(&own) || class == "example.com/lb" || name == "unclassed",
            "{name} has class {class:?}"
        );
    }
}
