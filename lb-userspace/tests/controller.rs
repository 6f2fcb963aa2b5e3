//! `onehop controller` against the test API server: the production
//! `kube::Client`, watchers, Lease election and Event recorder over HTTP.

#![expect(
    clippy::unwrap_used,
    reason = "test helpers outside #[test] functions fail the test on purpose"
)]

use std::{
    collections::BTreeMap,
    future::Future,
    time::{Duration, Instant},
};

use k8s_openapi::{
    api::{
        coordination::v1::Lease,
        core::v1::{
            LoadBalancerIngress, LoadBalancerStatus, Namespace, Service, ServicePort, ServiceSpec,
            ServiceStatus,
        },
        events::v1::Event,
    },
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use kube::{Api, CustomResourceExt as _, api::PostParams};
use lb_userspace::k8s::{
    controller::{self, Options, Timing},
    crd::{IPAddressPool, L2AdvertisementCrd, PoolSpec},
    translate::{ClassFilter, ingress_ips},
};
use onehop_testkit::apiserver::ApiServer;
use tokio::{sync::oneshot, task::JoinHandle};

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
}

impl Ctl {
    fn start(server: &ApiServer, identity: &str) -> Self {
        let client = server.client().expect("client");
        let opts = Options {
            namespace: NS.into(),
            lease_name: "onehop-controller".into(),
            identity: identity.into(),
            class: ClassFilter {
                class: "onehop.io/l2".into(),
                unclassed: true,
            },
            timing: timing(),
        };
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(controller::run(client, opts, async move {
            let _ = rx.await;
        }));
        Self {
            stop: Some(tx),
            task,
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

async fn setup() -> ApiServer {
    let server = ApiServer::start_local().expect("server");
    let client = server.client().expect("client");
    let crds: Api<CustomResourceDefinition> = Api::all(client);
    for crd in [IPAddressPool::crd(), L2AdvertisementCrd::crd()] {
        crds.create(&PostParams::default(), &crd).await.unwrap();
    }
    server
}

fn pool(server: &ApiServer, name: &str, addresses: &[&str]) {
    pool_with(server, name, addresses, |_| {});
}

fn pool_with(server: &ApiServer, name: &str, addresses: &[&str], f: impl FnOnce(&mut PoolSpec)) {
    let mut spec = PoolSpec {
        addresses: addresses.iter().map(|a| (*a).to_owned()).collect(),
        ..PoolSpec::default()
    };
    f(&mut spec);
    let mut p = IPAddressPool::new(name, spec);
    p.metadata.namespace = Some(NS.into());
    server.store().put(&p).unwrap();
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

fn put(server: &ApiServer, s: &Service) {
    server.store().put(s).unwrap();
}

fn ips_of(server: &ApiServer, ns: &str, name: &str) -> Vec<String> {
    server
        .store()
        .get::<Service>(ns, name)
        .map(|s| ingress_ips(&s).iter().map(ToString::to_string).collect())
        .unwrap_or_default()
}

async fn wait_for<F: FnMut() -> bool>(what: &str, mut f: F) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < T, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn wait_ips(server: &ApiServer, ns: &str, name: &str, want: &[&str]) {
    wait_for(&format!("{ns}/{name} to show {want:?}"), || {
        ips_of(server, ns, name) == want
    })
    .await;
}

/// `(type, reason, note)` of the Events about an object.
fn events(server: &ApiServer, kind: &str, name: &str) -> Vec<(String, String, String)> {
    server
        .store()
        .list::<Event>()
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

async fn wait_event(server: &ApiServer, kind: &str, name: &str, reason: &str, note: &str) {
    wait_for(
        &format!("{reason} on {kind} {name} saying {note:?}"),
        || {
            events(server, kind, name)
                .iter()
                .any(|(_, r, n)| r == reason && n.contains(note))
        },
    )
    .await;
}

/// Bounds a whole test.
async fn bounded(f: impl Future<Output = ()>) {
    tokio::time::timeout(Duration::from_secs(30), f)
        .await
        .expect("test took too long");
}

#[tokio::test]
async fn assigns_from_the_pool_writes_status_and_event() {
    bounded(async {
        let server = setup().await;
        pool(&server, "main", &["192.0.2.10-192.0.2.11"]);
        put(&server, &svc("default", "web", &[]));
        let ctl = Ctl::start(&server, "c-1");
        wait_ips(&server, "default", "web", &["192.0.2.10"]).await;
        wait_event(
            &server,
            "Service",
            "web",
            "IPAllocated",
            "Assigned IP [\"192.0.2.10\"]",
        )
        .await;
        let ev = &events(&server, "Service", "web")[0];
        assert_eq!(ev.0, "Normal");
        // A second Service gets the next address; a third finds the pool full.
        put(&server, &svc("default", "api", &[]));
        wait_ips(&server, "default", "api", &["192.0.2.11"]).await;
        put(&server, &svc("default", "full", &[]));
        wait_event(
            &server,
            "Service",
            "full",
            "AllocationFailed",
            "no available IP in pool(s) main",
        )
        .await;
        assert_eq!(events(&server, "Service", "full")[0].0, "Warning");
        assert!(ips_of(&server, "default", "full").is_empty());
        // The pool status counts.
        wait_for("pool status", || {
            server
                .store()
                .get::<IPAddressPool>(NS, "main")
                .and_then(|p| p.status)
                .is_some_and(|s| s.assigned_ipv4 == 2 && s.available_ipv4 == 0)
        })
        .await;
        // Not ours: another class, or not a LoadBalancer.
        let mut other = svc("default", "other", &[]);
        other.spec.as_mut().unwrap().load_balancer_class = Some("example.com/lb".into());
        put(&server, &other);
        let mut cluster_ip = svc("default", "cip", &[]);
        cluster_ip.spec.as_mut().unwrap().type_ = Some("ClusterIP".into());
        put(&server, &cluster_ip);
        // Deleting a Service frees its address for the waiting one.
        server.store().delete::<Service>("default", "web").unwrap();
        wait_ips(&server, "default", "full", &["192.0.2.10"]).await;
        assert!(ips_of(&server, "default", "other").is_empty());
        assert!(ips_of(&server, "default", "cip").is_empty());
        assert!(events(&server, "Service", "other").is_empty());
        // Idempotent: nothing more is written once settled.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let before = server.writes().len();
        tokio::time::sleep(Duration::from_millis(500)).await;
        let extra: Vec<_> = server.writes()[before..]
            .iter()
            .filter(|w| !w.resource.starts_with("leases"))
            .cloned()
            .collect();
        assert!(extra.is_empty(), "writes while idle: {extra:?}");
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
        let server = setup().await;
        pool(&server, "a", &["192.0.2.0/28"]);
        pool_with(&server, "b", &["198.51.100.0/28"], |s| {
            s.auto_assign = Some(false);
        });
        let mut by_spec = svc("default", "spec", &[]);
        by_spec.spec.as_mut().unwrap().load_balancer_ip = Some("192.0.2.5".into());
        put(&server, &by_spec);
        put(
            &server,
            &svc(
                "default",
                "ours",
                &[("onehop.io/loadBalancerIPs", "192.0.2.6")],
            ),
        );
        put(
            &server,
            &svc(
                "default",
                "new",
                &[("metallb.io/loadBalancerIPs", "192.0.2.7")],
            ),
        );
        put(
            &server,
            &svc(
                "default",
                "old",
                &[("metallb.universe.tf/loadBalancerIPs", "198.51.100.3")],
            ),
        );
        put(
            &server,
            &svc("default", "named", &[("metallb.io/address-pool", "b")]),
        );
        put(
            &server,
            &svc(
                "default",
                "nopool",
                &[("metallb.io/loadBalancerIPs", "203.0.113.1")],
            ),
        );
        put(
            &server,
            &svc("default", "unknown", &[("metallb.io/address-pool", "zz")]),
        );
        put(
            &server,
            &svc(
                "default",
                "bad",
                &[("metallb.io/loadBalancerIPs", "192.0.2.x")],
            ),
        );
        put(
            &server,
            &svc(
                "default",
                "taken",
                &[("onehop.io/loadBalancerIPs", "192.0.2.5")],
            ),
        );
        let ctl = Ctl::start(&server, "c-1");
        wait_ips(&server, "default", "spec", &["192.0.2.5"]).await;
        wait_ips(&server, "default", "ours", &["192.0.2.6"]).await;
        wait_ips(&server, "default", "new", &["192.0.2.7"]).await;
        wait_ips(&server, "default", "old", &["198.51.100.3"]).await;
        wait_ips(&server, "default", "named", &["198.51.100.0"]).await;
        wait_event(
            &server,
            "Service",
            "nopool",
            "AllocationFailed",
            "203.0.113.1 is not in any IPAddressPool",
        )
        .await;
        wait_event(
            &server,
            "Service",
            "unknown",
            "AllocationFailed",
            "unknown or invalid IPAddressPool \"zz\"",
        )
        .await;
        wait_event(
            &server,
            "Service",
            "bad",
            "AllocationFailed",
            "\"192.0.2.x\" in loadBalancerIPs is not an IP address",
        )
        .await;
        wait_event(
            &server,
            "Service",
            "taken",
            "AllocationFailed",
            "192.0.2.5 is already in use by default/spec",
        )
        .await;
        for name in ["nopool", "unknown", "bad", "taken"] {
            assert!(ips_of(&server, "default", name).is_empty(), "{name}");
        }
        ctl.stop().await;
    })
    .await;
}

#[tokio::test]
async fn sharing_key_lets_services_share_an_address() {
    bounded(async {
        let server = setup().await;
        pool(&server, "a", &["192.0.2.0/30"]);
        let key = [("metallb.io/allow-shared-ip", "k1")];
        let mut dns_udp = svc("default", "dns-udp", &key);
        dns_udp.spec.as_mut().unwrap().ports = Some(vec![ServicePort {
            port: 53,
            protocol: Some("UDP".into()),
            ..ServicePort::default()
        }]);
        let mut dns_tcp = svc("default", "dns-tcp", &key);
        dns_tcp.spec.as_mut().unwrap().ports = Some(vec![ServicePort {
            port: 53,
            ..ServicePort::default()
        }]);
        put(&server, &dns_udp);
        let ctl = Ctl::start(&server, "c-1");
        wait_ips(&server, "default", "dns-udp", &["192.0.2.0"]).await;
        put(&server, &dns_tcp);
        wait_ips(&server, "default", "dns-tcp", &["192.0.2.0"]).await;
        // Same port under the same key: a different address.
        put(&server, &svc("default", "web1", &key));
        put(
            &server,
            &svc("default", "web2", &[("metallb.io/allow-shared-ip", "k2")]),
        );
        wait_ips(&server, "default", "web1", &["192.0.2.0"]).await;
        wait_ips(&server, "default", "web2", &["192.0.2.1"]).await;
        ctl.stop().await;
    })
    .await;
}

#[tokio::test]
async fn bad_pools_get_a_warning_and_the_others_keep_working() {
    bounded(async {
        let server = setup().await;
        pool(&server, "a", &["192.0.2.0/29"]);
        pool(&server, "b-overlaps", &["192.0.2.4-192.0.2.20"]);
        pool(&server, "c-invalid", &["not-an-address"]);
        let mut ns = Namespace::default();
        ns.metadata.name = Some("team".into());
        ns.metadata.labels = Some(BTreeMap::from([("tier".into(), "gold".into())]));
        server.store().put(&ns).unwrap();
        pool_with(&server, "d-gold", &["198.51.100.0/30"], |s| {
            s.service_allocation = Some(
                serde_json::from_value(serde_json::json!({
                    "priority": 1,
                    "namespaceSelectors": [{"matchLabels": {"tier": "gold"}}]
                }))
                .unwrap(),
            );
        });
        let ctl = Ctl::start(&server, "c-1");
        put(&server, &svc("default", "web", &[]));
        put(&server, &svc("team", "web", &[]));
        wait_ips(&server, "default", "web", &["192.0.2.0"]).await;
        wait_ips(&server, "team", "web", &["198.51.100.0"]).await;
        wait_event(
            &server,
            "IPAddressPool",
            "b-overlaps",
            "InvalidPool",
            "overlaps pool a",
        )
        .await;
        wait_event(
            &server,
            "IPAddressPool",
            "c-invalid",
            "InvalidPool",
            "not-an-address",
        )
        .await;
        assert_eq!(
            events(&server, "IPAddressPool", "b-overlaps")[0].0,
            "Warning"
        );
        wait_for("overlap condition", || {
            server
                .store()
                .get::<IPAddressPool>(NS, "b-overlaps")
                .and_then(|p| p.status)
                .is_some_and(|s| {
                    s.conditions
                        .iter()
                        .any(|c| c.status == "False" && c.reason == "OverlappingPool")
                })
        })
        .await;
        assert!(events(&server, "IPAddressPool", "a").is_empty());
        ctl.stop().await;
    })
    .await;
}

#[tokio::test]
async fn type_or_class_change_releases_the_address() {
    bounded(async {
        let server = setup().await;
        pool(&server, "a", &["192.0.2.1/32"]);
        put(&server, &svc("default", "first", &[]));
        let ctl = Ctl::start(&server, "c-1");
        wait_ips(&server, "default", "first", &["192.0.2.1"]).await;
        put(&server, &svc("default", "second", &[]));
        wait_event(
            &server,
            "Service",
            "second",
            "AllocationFailed",
            "no available IP",
        )
        .await;
        let mut s = server.store().get::<Service>("default", "first").unwrap();
        s.spec.as_mut().unwrap().type_ = Some("ClusterIP".into());
        put(&server, &s);
        wait_ips(&server, "default", "first", &[]).await;
        wait_ips(&server, "default", "second", &["192.0.2.1"]).await;
        // Another class (only possible by re-creating it in a real cluster;
        // the class is immutable there).
        put(&server, &svc("default", "third", &[]));
        wait_event(
            &server,
            "Service",
            "third",
            "AllocationFailed",
            "no available IP",
        )
        .await;
        let mut s = server.store().get::<Service>("default", "second").unwrap();
        s.spec.as_mut().unwrap().load_balancer_class = Some("example.com/other".into());
        put(&server, &s);
        wait_ips(&server, "default", "second", &[]).await;
        wait_ips(&server, "default", "third", &["192.0.2.1"]).await;
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
        let server = setup().await;
        pool(&server, "a", &["192.0.2.0/30"]);
        // Statuses written by an earlier run: .2 and .0 are taken; "late"
        // (younger) claims .2 too and must move.
        put(&server, &with_status(svc("default", "x", &[]), "192.0.2.2"));
        tokio::time::sleep(Duration::from_millis(1100)).await; // distinct creation times
        put(&server, &with_status(svc("default", "y", &[]), "192.0.2.0"));
        put(
            &server,
            &with_status(svc("default", "late", &[]), "192.0.2.2"),
        );
        put(&server, &svc("default", "fresh", &[]));
        let ctl = Ctl::start(&server, "c-1");
        wait_event(
            &server,
            "Service",
            "late",
            "IPConflict",
            "192.0.2.2 is already in use by default/x",
        )
        .await;
        wait_for("everyone placed", || {
            ["x", "y", "late", "fresh"]
                .iter()
                .all(|n| ips_of(&server, "default", n).len() == 1)
        })
        .await;
        assert_eq!(ips_of(&server, "default", "x"), ["192.0.2.2"]);
        assert_eq!(ips_of(&server, "default", "y"), ["192.0.2.0"]);
        let mut all: Vec<String> = ["x", "y", "late", "fresh"]
            .iter()
            .flat_map(|n| ips_of(&server, "default", n))
            .collect();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 4, "an address was handed out twice: {all:?}");
        ctl.stop().await;

        // A restart adopts everything and changes nothing.
        server.reset_stats();
        let ctl = Ctl::start(&server, "c-1");
        put(&server, &svc("default", "more", &[]));
        wait_event(
            &server,
            "Service",
            "more",
            "AllocationFailed",
            "no available IP",
        )
        .await;
        let status_writes = server
            .writes()
            .iter()
            .filter(|w| w.resource == "services/status" && w.name.as_deref() != Some("more"))
            .count();
        assert_eq!(status_writes, 0);
        ctl.stop().await;
    })
    .await;
}

fn holder(server: &ApiServer) -> Option<String> {
    server
        .store()
        .get::<Lease>(NS, "onehop-controller")
        .and_then(|l| l.spec?.holder_identity)
}

#[tokio::test]
async fn one_leader_allocates_and_a_standby_takes_over() {
    bounded(async {
        let server = setup().await;
        pool(&server, "a", &["192.0.2.0/28"]);
        let a = Ctl::start(&server, "a");
        wait_for("a leads", || holder(&server).as_deref() == Some("a")).await;
        let b = Ctl::start(&server, "b");
        put(&server, &svc("default", "s1", &[]));
        wait_ips(&server, "default", "s1", &["192.0.2.0"]).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(holder(&server).as_deref(), Some("a"));
        let reporters: Vec<String> = server
            .store()
            .list::<Event>()
            .unwrap()
            .into_iter()
            .filter_map(|e| e.reporting_instance)
            .collect();
        assert_eq!(reporters, ["a"], "only the leader writes Events");

        // A crash: b takes over once the Lease expires (lease + 2 retries).
        let t0 = Instant::now();
        a.kill();
        wait_for("b leads", || holder(&server).as_deref() == Some("b")).await;
        let took = t0.elapsed();
        // The standby sees the last renewal up to a retry period late and
        // checks once per retry period: lease + 2 retry periods, plus slack
        // for request latency on a loaded machine.
        let t = timing();
        let bound = t.lease_duration + t.retry_period * 2 + Duration::from_millis(300);
        eprintln!("takeover after a crash: {took:?} (bound {bound:?})");
        assert!(took < bound, "takeover took {took:?}");
        put(&server, &svc("default", "s2", &[]));
        wait_ips(&server, "default", "s2", &["192.0.2.1"]).await;
        assert_eq!(ips_of(&server, "default", "s1"), ["192.0.2.0"]);

        // A clean stop releases the Lease: c takes over within a retry period.
        let c = Ctl::start(&server, "c");
        tokio::time::sleep(Duration::from_millis(300)).await;
        let t0 = Instant::now();
        b.stop().await;
        wait_for("c leads", || holder(&server).as_deref() == Some("c")).await;
        let took = t0.elapsed();
        // Released: the next attempt (within a retry period) wins.
        let bound = t.retry_period + Duration::from_millis(300);
        eprintln!("takeover after a clean stop: {took:?} (bound {bound:?})");
        assert!(took < bound, "takeover took {took:?}");
        put(&server, &svc("default", "s3", &[]));
        wait_ips(&server, "default", "s3", &["192.0.2.2"]).await;
        c.stop().await;
    })
    .await;
}

#[tokio::test]
async fn keeps_going_after_an_api_outage() {
    bounded(async {
        let server = setup().await;
        pool(&server, "a", &["192.0.2.0/28"]);
        put(&server, &svc("default", "s1", &[]));
        let ctl = Ctl::start(&server, "c-1");
        wait_ips(&server, "default", "s1", &["192.0.2.0"]).await;
        server.set_available(false);
        // Longer than the renew deadline: the controller steps down.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        put(&server, &svc("default", "s2", &[]));
        server.store().delete::<Service>("default", "s1").unwrap();
        server.set_available(true);
        wait_ips(&server, "default", "s2", &["192.0.2.0"]).await;
        wait_event(&server, "Service", "s2", "IPAllocated", "192.0.2.0").await;
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

fn verb_name(v: onehop_testkit::apiserver::Verb) -> &'static str {
    use onehop_testkit::apiserver::Verb;
    match v {
        Verb::Get => "get",
        Verb::List => "list",
        Verb::Watch => "watch",
        Verb::Create => "create",
        Verb::Update => "update",
        Verb::Patch => "patch",
        Verb::Delete => "delete",
        Verb::DeleteCollection => "deletecollection",
    }
}

/// `services/status` → ("", "services/status"); `leases.coordination.k8s.io`
/// → ("coordination.k8s.io", "leases").
fn split_resource(r: &str) -> (String, String) {
    let (base, sub) = r.split_once('/').map_or((r, None), |(b, s)| (b, Some(s)));
    let (plural, group) = base.split_once('.').unwrap_or((base, ""));
    let resource = sub.map_or_else(|| plural.to_owned(), |s| format!("{plural}/{s}"));
    (group.to_owned(), resource)
}

/// Every API call the controller makes is allowed by the manifests' RBAC,
/// and every rule there is used (least privilege).
#[tokio::test]
async fn rbac_covers_exactly_the_controllers_calls() {
    bounded(async {
        let docs = manifests();
        let rules = controller_rules(&docs);
        assert!(!rules.is_empty());
        let server = setup().await;
        server.reset_stats();
        pool(&server, "a", &["192.0.2.1/32"]);
        pool(&server, "bad", &["192.0.2.1/32"]);
        put(&server, &svc("default", "web", &[]));
        put(&server, &svc("other", "full", &[]));
        let ctl = Ctl::start(&server, "c-1");
        wait_ips(&server, "default", "web", &["192.0.2.1"]).await;
        wait_event(
            &server,
            "Service",
            "full",
            "AllocationFailed",
            "no available",
        )
        .await;
        wait_event(&server, "IPAddressPool", "bad", "InvalidPool", "overlaps").await;
        tokio::time::sleep(timing().retry_period * 2).await; // a renewal
        ctl.stop().await;

        let mut used = std::collections::BTreeSet::new();
        for (verb, resource) in server.request_counts().keys() {
            let (group, res) = split_resource(resource);
            let verb = verb_name(*verb);
            // Which namespaces the call went to.
            let namespaces: std::collections::BTreeSet<Option<String>> = server
                .writes()
                .iter()
                .filter(|w| w.resource == *resource && verb_name(w.verb) == verb)
                .map(|w| w.namespace.clone())
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
                    "leases" | "ipaddresspools" | "ipaddresspools/status"
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

/// The `onehop controller` binary: flags, `--api-server`, SIGTERM releases
/// the Lease.
#[tokio::test]
async fn the_binary_assigns_and_releases_its_lease_on_sigterm() {
    bounded(async {
        let server = setup().await;
        pool(&server, "a", &["192.0.2.7/32"]);
        let mut classed = svc("default", "web", &[]);
        classed.spec.as_mut().unwrap().load_balancer_class = Some("example.com/x".into());
        put(&server, &classed);
        put(&server, &svc("default", "unclassed", &[]));
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_onehop"))
            .args([
                "controller",
                "--api-server",
                server.url(),
                "--namespace",
                NS,
                "--class",
                "example.com/x",
                "--unclassed",
                "false",
                "--lease-duration-secs",
                "1",
                "--renew-deadline-ms",
                "700",
                "--retry-period-ms",
                "200",
            ])
            .env("POD_NAME", "pod-1")
            .env("RUST_LOG", "warn")
            .spawn()
            .unwrap();
        let mut child = KillOnDrop(child);
        wait_ips(&server, "default", "web", &["192.0.2.7"]).await;
        assert_eq!(holder(&server).as_deref(), Some("pod-1"));
        assert!(ips_of(&server, "default", "unclassed").is_empty());
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
        assert_eq!(holder(&server), None, "the Lease is released");
    })
    .await;
}

/// A Service whose request turns invalid loses its address (MetalLB does
/// the same), which then goes to a waiting Service.
#[tokio::test]
async fn an_invalid_request_releases_the_address() {
    bounded(async {
        let server = setup().await;
        pool(&server, "a", &["192.0.2.1/32"]);
        put(&server, &svc("default", "x", &[]));
        let ctl = Ctl::start(&server, "c-1");
        wait_ips(&server, "default", "x", &["192.0.2.1"]).await;
        put(&server, &svc("default", "y", &[]));
        wait_event(
            &server,
            "Service",
            "y",
            "AllocationFailed",
            "no available IP",
        )
        .await;
        let mut x = server.store().get::<Service>("default", "x").unwrap();
        x.metadata.annotations = Some(BTreeMap::from([(
            "metallb.universe.tf/loadBalancerIPs".to_owned(),
            "nope".to_owned(),
        )]));
        put(&server, &x);
        wait_event(&server, "Service", "x", "AllocationFailed", "\"nope\"").await;
        wait_ips(&server, "default", "x", &[]).await;
        wait_ips(&server, "default", "y", &["192.0.2.1"]).await;
        ctl.stop().await;
    })
    .await;
}

/// Deleting a pool takes its addresses away: its Services move to another
/// pool that may serve them, or are told why not.
#[tokio::test]
async fn deleting_a_pool_moves_or_fails_its_services() {
    bounded(async {
        let server = setup().await;
        pool_with(&server, "first", &["192.0.2.1/32"], |s| {
            s.service_allocation =
                Some(serde_json::from_value(serde_json::json!({"priority": 1})).unwrap());
        });
        pool(&server, "second", &["198.51.100.1/32"]);
        put(&server, &svc("default", "a", &[]));
        let ctl = Ctl::start(&server, "c-1");
        wait_ips(&server, "default", "a", &["192.0.2.1"]).await;
        put(&server, &svc("default", "b", &[]));
        wait_ips(&server, "default", "b", &["198.51.100.1"]).await;
        server.store().delete::<IPAddressPool>(NS, "first").unwrap();
        wait_event(
            &server,
            "Service",
            "a",
            "AllocationFailed",
            "no available IP in pool(s) second",
        )
        .await;
        wait_ips(&server, "default", "a", &[]).await;
        assert_eq!(ips_of(&server, "default", "b"), ["198.51.100.1"]);
        pool(&server, "third", &["203.0.113.9/32"]);
        wait_ips(&server, "default", "a", &["203.0.113.9"]).await;
        ctl.stop().await;
    })
    .await;
}
