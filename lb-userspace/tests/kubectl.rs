//! What an operator sees with a real `kubectl` (validation on, kubectl's default) while
//! onehop runs: the install manifests and a MetalLB-shaped pool and advertisement applied
//! with kubectl, `onehop controller` and two `onehop agent`s in network namespaces against
//! the test API server; then `kubectl get ipaddresspools` with its columns, the Service's
//! address in `kubectl get svc`, the announcing node and `kubectl describe svc`'s Events.
//! Runs on the test server only (kubectl is pointed at it directly).

mod cluster;

use std::{
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener},
    path::PathBuf,
    time::{Duration, Instant},
};

use cluster::{Cluster, TARGET_PORT, pods_in_use};
use k8s_openapi::api::{core::v1::Node, discovery::v1::EndpointSlice};
use lb_common::vip_flags;
use lb_userspace::agent::{announcer, election};
use onehop_apiserver::{
    k8s::{MANAGED_BY, TestCluster, skip_on_real_cluster},
    kubectl::{Kubectl, parse_table},
};
use onehop_testkit::netns::{ChildGuard, command_in, in_netns, spawn_in};
use serde_json::{Value, json};

const ADDRESS: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 220);

fn from<T: serde::de::DeserializeOwned>(v: Value) -> T {
    serde_json::from_value(v).expect("valid object")
}

#[track_caller]
fn ok(kubectl: &Kubectl, args: &[&str]) -> String {
    kubectl.ok(args).unwrap_or_else(|e| panic!("{e:#}"))
}

/// Runs `kubectl <args>` until `pred` holds of its output (bounded); the last output.
#[track_caller]
fn wait_kubectl(
    kubectl: &Kubectl,
    args: &[&str],
    what: &str,
    pred: impl Fn(&str) -> bool,
) -> String {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let out = ok(kubectl, args);
        if pred(&out) {
            return out;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; kubectl {} says:\n{out}",
            args.join(" ")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The namespaces, the API, and kubectl.
struct World {
    c: Cluster,
    api: TestCluster,
    rt: tokio::runtime::Runtime,
    kubectl: Kubectl,
}

impl World {
    fn new() -> Self {
        let c = Cluster::new(2, 1, 2);
        let api_host = &c.topo.clients()[1];
        let ip = api_host.ip();
        let listener = in_netns(api_host.ns(), || TcpListener::bind((ip, 0)))
            .expect("netns")
            .expect("bind");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let api = rt
            .block_on(TestCluster::start(Some(listener)))
            .expect("test cluster");
        let server = api.test_server().expect("the test server");
        let kubectl = Kubectl::new(server, api.namespace()).expect("kubectl");
        Self {
            c,
            api,
            rt,
            kubectl,
        }
    }

    fn ns(&self) -> &str {
        self.api.namespace()
    }

    fn node_name(&self, i: u8) -> String {
        format!("{}-node{i}", self.ns())
    }

    /// The install bundle, as the README installs it (validation on: every object is
    /// accepted), then what kubelets and the EndpointSlice controller would write.
    fn install_and_seed(&self) {
        let bundle = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/onehop.yaml");
        let out = self
            .kubectl
            .run(&["apply", "-f", bundle.to_str().expect("UTF-8")])
            .expect("kubectl");
        assert!(
            out.success && !out.stderr.to_lowercase().contains("warning"),
            "{}{}",
            out.stdout,
            out.stderr
        );
        for n in self.c.topo.nodes() {
            let node: Node = from(json!({
                "metadata": { "name": self.node_name(n.index()) },
                "status": {
                    "addresses": [{ "type": "InternalIP", "address": n.ip().to_string() }],
                    "conditions": [{ "type": "Ready", "status": "True" }]
                }
            }));
            self.rt.block_on(self.api.put(&node)).expect("node");
        }
        let slice: EndpointSlice = from(json!({
            "metadata": {
                "namespace": self.ns(), "name": "web-abc",
                "labels": { "kubernetes.io/service-name": "web", MANAGED_BY.0: MANAGED_BY.1 }
            },
            "addressType": "IPv4",
            "ports": [{ "name": "http", "port": TARGET_PORT, "protocol": "TCP" }],
            "endpoints": (1..=2).map(|i| json!({
                "addresses": [self.c.topo.node(i).pod(1).ip().to_string()],
                "nodeName": self.node_name(i),
                "conditions": { "ready": true, "serving": true, "terminating": false }
            })).collect::<Vec<_>>()
        }));
        self.rt
            .block_on(self.api.put(&slice))
            .expect("endpoint slice");
    }

    /// Two agents and the controller; the controller's process handle.
    fn start_onehop(&self) -> ChildGuard {
        let kubeconfig = self.api.kubeconfig().as_os_str();
        for i in 1..=2 {
            let mut args = vec![
                "--kubernetes".to_owned(),
                "--node-name".to_owned(),
                self.node_name(i),
                "--namespace".to_owned(),
                self.ns().to_owned(),
            ];
            args.extend(self.api.class_args());
            self.c.spawn_agent(i, &args, &[("KUBECONFIG", kubeconfig)]);
        }
        let api_host = self.c.topo.clients()[1].ns();
        let mut cmd = command_in(api_host, env!("CARGO_BIN_EXE_onehop"));
        cmd.args(["controller", "--namespace", self.ns()])
            .args(self.api.class_args())
            .args(TestCluster::CONTROLLER_FAST_ELECTION)
            .env("KUBECONFIG", kubeconfig)
            .env("POD_NAME", "controller-0")
            .env("RUST_LOG", "warn");
        spawn_in(api_host, cmd).expect("controller")
    }

    /// The node elected to announce [`ADDRESS`], once both nodes serve it and only that
    /// one's datapath announces it (the agents' election has converged).
    fn announcer(&self) -> u8 {
        let names = [self.node_name(1), self.node_name(2)];
        let owner = election::owner(ADDRESS, names.iter().map(String::as_str)).expect("an owner");
        let owner = if owner == names[0] { 1 } else { 2 };
        for i in 1..=2 {
            self.c
                .wait_for(i, "the address served, the election converged", |s| {
                    let announced = s
                        .vips
                        .iter()
                        .any(|(ip, f)| *ip == ADDRESS && f & vip_flags::ANNOUNCE != 0);
                    s.services.iter().any(|r| r.key.vip() == ADDRESS)
                        && pods_in_use(s) == 2
                        && announced == (i == owner)
                });
        }
        owner
    }
}

#[test]
fn an_operator_sees_pools_addresses_announcers_and_events_in_kubectl() {
    if skip_on_real_cluster("kubectl is pointed at the test API server") {
        return;
    }
    let w = World::new();
    w.install_and_seed();
    // MetalLB's L2 quick start, with onehop's group, and a Service: by kubectl.
    let config = format!(
        "apiVersion: onehop.io/v1beta1\nkind: IPAddressPool\nmetadata: {{name: lan}}\n\
         spec:\n  addresses: [{ADDRESS}-192.168.50.221]\n---\n\
         apiVersion: onehop.io/v1beta1\nkind: L2Advertisement\nmetadata: {{name: lan}}\n---\n\
         apiVersion: v1\nkind: Service\nmetadata: {{name: web}}\n\
         spec:\n  type: LoadBalancer\n  ports: [{{name: http, port: 80}}]\n"
    );
    let out = w.kubectl.apply(&config, &[]).expect("kubectl");
    assert!(out.success && out.stderr.is_empty(), "{}", out.stderr);
    let _controller = w.start_onehop();
    let kubectl = &w.kubectl;

    // The Service's address, as `kubectl get svc` shows it.
    let svc = wait_kubectl(kubectl, &["get", "svc", "web"], "the address", |out| {
        parse_table(out)
            .get(1)
            .is_some_and(|r| r[3] == ADDRESS.to_string())
    });
    let t = parse_table(&svc);
    assert_eq!(
        t[0],
        [
            "NAME",
            "TYPE",
            "CLUSTER-IP",
            "EXTERNAL-IP",
            "PORT(S)",
            "AGE"
        ]
    );
    assert_eq!(t[1][1], "LoadBalancer");
    // The pool's columns, with the controller's counts.
    let pools = wait_kubectl(
        kubectl,
        &["get", "ipaddresspools"],
        "the pool's status",
        |out| parse_table(out).get(1).is_some_and(|r| r[4] == "1"),
    );
    let t = parse_table(&pools);
    assert_eq!(
        t[0],
        [
            "NAME",
            "AUTO ASSIGN",
            "AVOID BUGGY IPS",
            "ADDRESSES",
            "ASSIGNED",
            "AVAILABLE"
        ]
    );
    assert_eq!(
        t[1],
        [
            "lan",
            "true",
            "",
            "[\"192.168.50.220-192.168.50.221\"]",
            "1",
            "1"
        ]
    );

    // The announcing node: the one whose datapath announces the address.
    let announcer = w.announcer();
    let path = format!(
        "jsonpath={{.metadata.annotations.{}}}",
        announcer::ANNOTATION.replace('.', "\\.")
    );
    wait_kubectl(
        kubectl,
        &["get", "svc", "web", "-o", &path],
        "the announcing node",
        |out| out == w.node_name(announcer),
    );
    let a =
        w.c.topo
            .client()
            .http_get(SocketAddr::V4(SocketAddrV4::new(ADDRESS, 80)))
            .expect("a request through the address")
            .answer()
            .expect("answer");
    assert!(a.pod.ends_with("-pod1"), "{a:?}");

    check_describe(&w, announcer);
}

/// `kubectl describe svc`: the address, the announcer, and the controller's Event.
fn check_describe(w: &World, announcer: u8) {
    let kubectl = &w.kubectl;
    let described = wait_kubectl(kubectl, &["describe", "svc", "web"], "the Event", |out| {
        out.contains("IPAllocated")
    });
    let Some((head, events)) = described.split_once("Events:") else {
        panic!("no Events in:\n{described}");
    };
    assert!(
        head.lines()
            .any(|l| l.starts_with("LoadBalancer Ingress:") && l.ends_with(&ADDRESS.to_string())),
        "{described}"
    );
    assert!(
        head.contains(&format!(
            "{}: {}",
            announcer::ANNOTATION,
            w.node_name(announcer)
        )),
        "{described}"
    );
    let t = parse_table(events.trim_start_matches('\n'));
    assert_eq!(
        t[0],
        ["Type", "Reason", "Age", "From", "Message"],
        "{events}"
    );
    assert!(
        t.iter().any(|r| r[0] == "Normal"
            && r[1] == "IPAllocated"
            && r[4].contains(&ADDRESS.to_string())),
        "{events}"
    );
}
