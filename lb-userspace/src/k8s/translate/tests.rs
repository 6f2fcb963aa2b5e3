use onehop_apiserver::json::merge;
use serde_json::{Value, json};

use super::*;

fn from<T: serde::de::DeserializeOwned>(v: Value) -> T {
    serde_json::from_value(v).expect("valid object")
}

fn class() -> ClassFilter {
    ClassFilter {
        class: "onehop.io/l2".into(),
        unclassed: true,
    }
}

fn node(name: &str, ip: &str) -> Node {
    from(json!({
        "metadata": { "name": name },
        "status": {
            "addresses": [{ "type": "Hostname", "address": name }, { "type": "InternalIP", "address": ip }],
            "conditions": [{ "type": "Ready", "status": "True" }]
        }
    }))
}

fn nodes() -> Vec<Node> {
    vec![node("n1", "192.168.50.11"), node("n2", "192.168.50.12")]
}

fn service(name: &str, extra: Value) -> Service {
    let mut v = json!({
        "metadata": { "namespace": "default", "name": name },
        "spec": {
            "type": "LoadBalancer",
            "ports": [{ "name": "http", "port": 80, "protocol": "TCP", "targetPort": "web" }]
        },
        "status": { "loadBalancer": { "ingress": [{ "ip": "192.168.50.200" }] } }
    });
    merge(&mut v, extra);
    from(v)
}

fn ep(ip: &str, node: &str, ready: bool, serving: bool, terminating: bool) -> Value {
    json!({
        "addresses": [ip], "nodeName": node,
        "conditions": { "ready": ready, "serving": serving, "terminating": terminating }
    })
}

fn slice(svc: &str, name: &str, port: i32, endpoints: Vec<Value>) -> EndpointSlice {
    from(json!({
        "metadata": { "namespace": "default", "name": name, "labels": { SERVICE_NAME_LABEL: svc } },
        "addressType": "IPv4",
        "ports": [{ "name": "http", "port": port, "protocol": "TCP" }],
        "endpoints": Value::Array(endpoints)
    }))
}

/// Services as the watch cache holds them.
fn shared(services: &[Service]) -> Vec<std::sync::Arc<Service>> {
    services.iter().cloned().map(std::sync::Arc::new).collect()
}

fn run(
    services: &[Service],
    slices: &[EndpointSlice],
    node_name: &str,
    announce: &[&str],
) -> Translation {
    run_sized(services, slices, node_name, announce, MaglevSize::DEFAULT)
}

/// [`run`] with `--maglev-table-size size`.
fn run_sized(
    services: &[Service],
    slices: &[EndpointSlice],
    node_name: &str,
    announce: &[&str],
    size: MaglevSize,
) -> Translation {
    let announce: BTreeSet<IpAddr> = announce.iter().map(|a| a.parse().expect("ip")).collect();
    let ns = nodes();
    translate(&Inputs {
        services: &shared(services),
        slices: &SliceIndex::new(slices),
        nodes: &ns,
        node_name,
        class: &class(),
        announce: &announce,
        nat_ports: NatPorts::default(),
        flow_timeouts: lb_common::FlowTimeouts::DEFAULT,
        maglev_table_size: size,
        gateways: &BTreeMap::new(),
    })
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

fn ip4(s: &str) -> Ipv4Addr {
    s.parse().expect("ip")
}

#[test]
fn ready_endpoints_named_target_port_and_node_ips() {
    let svcs = [service("web", json!({}))];
    let slices = [slice(
        "web",
        "web-a",
        8080,
        vec![
            ep("10.42.1.2", "n1", true, true, false),
            ep("10.42.2.2", "n2", true, true, false),
            ep("10.42.2.3", "n2", false, false, false),
        ],
    )];
    let t = run(&svcs, &slices, "n1", &["192.168.50.200"]);
    assert!(t.warnings.is_empty(), "{:?}", t.warnings);
    assert_eq!(t.file.node_ip, Some(ip4("192.168.50.11")));
    assert_eq!(t.file.announce, BTreeSet::from([ip("192.168.50.200")]));
    let s = &t.file.services[0];
    assert_eq!(s.vip, ip("192.168.50.200"));
    assert_eq!(
        s.ports,
        vec![ServicePort {
            port: 80,
            protocol: Protocol::Tcp,
            target_port: 8080
        }]
    );
    assert_eq!(
        s.backends,
        vec![
            Backend {
                ip: ip("10.42.1.2"),
                node_ip: ip("192.168.50.11")
            },
            Backend {
                ip: ip("10.42.2.2"),
                node_ip: ip("192.168.50.12")
            },
        ]
    );
    assert!(t.services[0].has_local_endpoint);
}

#[test]
fn terminating_serving_endpoints_only_when_none_is_ready() {
    let svcs = [service("web", json!({}))];
    let draining = vec![
        ep("10.42.1.2", "n1", false, true, true),
        ep("10.42.2.2", "n2", false, false, true),
    ];
    let t = run(
        &svcs,
        &[slice("web", "a", 8080, draining.clone())],
        "n1",
        &[],
    );
    assert_eq!(
        t.file.services[0]
            .backends
            .iter()
            .map(|b| b.ip)
            .collect::<Vec<_>>(),
        vec![ip("10.42.1.2")]
    );
    let mut with_ready = draining;
    with_ready.push(ep("10.42.2.9", "n2", true, true, false));
    let t = run(&svcs, &[slice("web", "a", 8080, with_ready)], "n1", &[]);
    assert_eq!(
        t.file.services[0]
            .backends
            .iter()
            .map(|b| b.ip)
            .collect::<Vec<_>>(),
        vec![ip("10.42.2.9")]
    );
}

#[test]
fn missing_conditions_mean_ready() {
    let svcs = [service("web", json!({}))];
    let s: EndpointSlice = from(json!({
        "metadata": { "namespace": "default", "name": "a", "labels": { SERVICE_NAME_LABEL: "web" } },
        "addressType": "IPv4",
        "ports": [{ "name": "http", "port": 8080 }],
        "endpoints": [{ "addresses": ["10.42.1.2"], "nodeName": "n1" }]
    }));
    let t = run(&svcs, &[s], "n1", &[]);
    assert_eq!(t.file.services[0].backends.len(), 1);
}

#[test]
fn local_policy_keeps_only_local_endpoints() {
    let svcs = [service(
        "web",
        json!({ "spec": { "externalTrafficPolicy": "Local" } }),
    )];
    let eps = vec![
        ep("10.42.1.2", "n1", true, true, false),
        ep("10.42.2.2", "n2", true, true, false),
    ];
    let slices = [slice("web", "a", 8080, eps)];
    let on_n2 = run(&svcs, &slices, "n2", &[]);
    assert_eq!(
        on_n2.file.services[0]
            .backends
            .iter()
            .map(|b| b.ip)
            .collect::<Vec<_>>(),
        vec![ip("10.42.2.2")]
    );
    assert!(on_n2.services[0].local_only && on_n2.services[0].has_local_endpoint);
    let only_n1 = [slice(
        "web",
        "a",
        8080,
        vec![ep("10.42.1.2", "n1", true, true, false)],
    )];
    let on_n2 = run(&svcs, &only_n1, "n2", &[]);
    assert!(on_n2.file.services[0].backends.is_empty());
    assert!(
        !on_n2.services[0].has_local_endpoint,
        "n2 must not be eligible to announce"
    );
}

#[test]
fn class_filter_and_type() {
    let ours = service(
        "a",
        json!({ "spec": { "loadBalancerClass": "onehop.io/l2" } }),
    );
    let other = service(
        "b",
        json!({ "spec": { "loadBalancerClass": "metallb.io/x" } }),
    );
    let unclassed = service(
        "c",
        json!({ "status": { "loadBalancer": { "ingress": [{ "ip": "192.168.50.201" }] } } }),
    );
    let cluster_ip = service("d", json!({ "spec": { "type": "ClusterIP" } }));
    let c = class();
    assert!(
        is_ours(&ours, &c)
            && !is_ours(&other, &c)
            && is_ours(&unclassed, &c)
            && !is_ours(&cluster_ip, &c)
    );
    let strict = ClassFilter {
        unclassed: false,
        ..class()
    };
    assert!(!is_ours(&unclassed, &strict));
}

#[test]
fn no_ingress_ip_yet_means_not_served() {
    let svc = service(
        "web",
        json!({ "status": { "loadBalancer": { "ingress": [] } } }),
    );
    let t = run(&[svc], &[], "n1", &["192.168.50.200"]);
    assert!(t.file.services.is_empty() && t.file.announce.is_empty());
}

#[test]
fn unsupported_protocols_warn_and_udp_works() {
    let svc = service(
        "dns",
        json!({ "spec": { "ports": [
            { "name": "dns", "port": 53, "protocol": "UDP", "targetPort": 5353 },
            { "name": "sctp", "port": 99, "protocol": "SCTP" }
        ] } }),
    );
    let t = run(&[svc], &[], "n1", &[]);
    assert_eq!(
        t.file.services[0].ports,
        vec![ServicePort {
            port: 53,
            protocol: Protocol::Udp,
            target_port: 5353
        }]
    );
    assert_eq!(t.warnings.len(), 1);
    assert_eq!(t.warnings[0].reason, "UnsupportedProtocol");
}

#[test]
fn affinity_and_source_ranges() {
    let svc = service(
        "web",
        json!({ "spec": {
            "sessionAffinity": "ClientIP",
            "sessionAffinityConfig": { "clientIP": { "timeoutSeconds": 60 } },
            "loadBalancerSourceRanges": ["10.0.0.0/8", "192.168.1.7/24", "fd00::/8"]
        } }),
    );
    let t = run(&[svc], &[], "n1", &[]);
    let s = &t.file.services[0];
    assert_eq!(
        s.session_affinity,
        SessionAffinity::ClientIp { timeout_s: 60 }
    );
    assert_eq!(
        s.source_ranges,
        vec![
            Cidr {
                addr: ip("10.0.0.0"),
                prefix_len: 8
            },
            Cidr {
                addr: ip("192.168.1.0"),
                prefix_len: 24
            },
            // Kept: it matches no IPv4 client, but a list of IPv6 ranges
            // only must still restrict (see `model::Service::source_ranges`).
            Cidr {
                addr: ip("fd00::"),
                prefix_len: 8
            }
        ]
    );
    let default_timeout = service("x", json!({ "spec": { "sessionAffinity": "ClientIP" } }));
    assert_eq!(
        run(&[default_timeout], &[], "n1", &[]).file.services[0].session_affinity,
        SessionAffinity::ClientIp {
            timeout_s: DEFAULT_AFFINITY_TIMEOUT_S
        }
    );
}

#[test]
fn bad_source_range_fails_closed() {
    let svc = service(
        "web",
        json!({ "spec": { "loadBalancerSourceRanges": ["10.0.0.0/33"] } }),
    );
    let t = run(&[svc], &[], "n1", &[]);
    assert!(
        t.file.services.is_empty(),
        "an unenforceable allow-list must not open the service"
    );
    assert_eq!(t.warnings[0].reason, "InvalidSourceRange");
}

#[test]
fn shared_vip_distinct_ports_and_conflicts() {
    let a = service(
        "a",
        json!({ "spec": { "ports": [{ "name": "http", "port": 80, "targetPort": 8080 }] } }),
    );
    let b = service(
        "b",
        json!({ "spec": { "ports": [{ "name": "dns", "port": 53, "protocol": "UDP" }] } }),
    );
    let c = service(
        "c",
        json!({ "spec": { "ports": [{ "name": "http", "port": 80, "targetPort": 9090 }] } }),
    );
    let t = run(&[c, b, a], &[], "n1", &[]);
    let served: Vec<_> = t
        .file
        .services
        .iter()
        .map(|s| (s.name.clone(), s.ports[0].port))
        .collect();
    assert_eq!(
        served,
        vec![
            ("default/a@192.168.50.200".to_owned(), 80),
            ("default/b@192.168.50.200".to_owned(), 53)
        ]
    );
    assert_eq!(t.warnings.len(), 1);
    assert_eq!(
        (t.warnings[0].reason, t.warnings[0].service.name.as_str()),
        ("PortConflict", "c")
    );
}

#[test]
fn endpoints_without_a_known_node_are_skipped_with_a_warning() {
    let svcs = [service("web", json!({}))];
    let slices = [slice(
        "web",
        "a",
        8080,
        vec![ep("10.42.9.9", "ghost", true, true, false)],
    )];
    let t = run(&svcs, &slices, "n1", &[]);
    assert!(t.file.services[0].backends.is_empty());
    assert_eq!(t.warnings[0].reason, "EndpointWithoutNode");
}

#[test]
fn named_port_resolves_per_slice() {
    let svcs = [service("web", json!({}))];
    let slices = [
        slice(
            "web",
            "a",
            8080,
            vec![
                ep("10.42.1.2", "n1", true, true, false),
                ep("10.42.1.3", "n1", true, true, false),
            ],
        ),
        slice(
            "web",
            "b",
            9090,
            vec![ep("10.42.2.2", "n2", true, true, false)],
        ),
    ];
    let t = run(&svcs, &slices, "n1", &[]);
    assert!(t.warnings.is_empty(), "{:?}", t.warnings);
    let s = &t.file.services[0];
    // The number most endpoints use is the port's; the others carry theirs.
    assert_eq!(s.ports[0].target_port, 8080);
    let port = |target_port| ServicePort {
        port: 80,
        protocol: Protocol::Tcp,
        target_port,
    };
    assert_eq!(
        s.backend_ports,
        BTreeMap::from([(ip("10.42.2.2"), vec![port(9090)])])
    );
    assert_eq!(s.target_port(ip("10.42.1.2"), &s.ports[0]), Some(8080));
    assert_eq!(s.target_port(ip("10.42.2.2"), &s.ports[0]), Some(9090));
    // And each backend slot gets its own slice's number.
    let node = crate::plan::state::Node {
        ip6: None,
        ip: ip4("192.168.50.11"),
        ifindex: 1,
        mac: [2, 0, 0, 0, 0, 1],
        hash_seed: lb_common::hash::PUBLIC_SEED,
        segment: None,
        segment6: None,
    };
    let state = crate::plan::state::plan(
        &crate::plan::state::DataplaneState::default(),
        &t.file,
        &node,
        &crate::plan::model::Limits::default(),
    )
    .expect("plan");
    let slots: BTreeSet<(IpAddr, u16)> = state
        .backends
        .values()
        .map(|b| (IpAddr::from(b.ip), b.port))
        .collect();
    assert_eq!(
        slots,
        BTreeSet::from([
            (ip("10.42.1.2"), 8080),
            (ip("10.42.1.3"), 8080),
            (ip("10.42.2.2"), 9090)
        ])
    );
}

#[test]
fn an_endpoint_whose_slice_lacks_a_named_port_does_not_serve_it() {
    let svcs = [service(
        "web",
        json!({ "spec": { "ports": [
            { "name": "http", "port": 80, "protocol": "TCP", "targetPort": "web" },
            { "name": "metrics", "port": 9100, "protocol": "TCP", "targetPort": "metrics" }
        ] } }),
    )];
    let mut both = slice(
        "web",
        "a",
        8080,
        vec![ep("10.42.1.2", "n1", true, true, false)],
    );
    both.ports = Some(from(json!([
        { "name": "http", "port": 8080, "protocol": "TCP" },
        { "name": "metrics", "port": 9100, "protocol": "TCP" }
    ])));
    let http_only = slice(
        "web",
        "b",
        8080,
        vec![ep("10.42.2.2", "n2", true, true, false)],
    );
    let t = run(&svcs, &[both, http_only], "n1", &[]);
    let s = &t.file.services[0];
    let (http, metrics) = (s.ports[0], s.ports[1]);
    assert_eq!((http.target_port, metrics.target_port), (8080, 9100));
    assert_eq!(s.target_port(ip("10.42.2.2"), &http), Some(8080));
    assert_eq!(s.target_port(ip("10.42.2.2"), &metrics), None);
    assert_eq!(s.target_port(ip("10.42.1.2"), &metrics), Some(9100));
}

#[test]
fn terminating_and_unready_endpoints_drain() {
    let svcs = [service("web", json!({}))];
    let eps = vec![
        ep("10.42.1.2", "n1", false, true, true),
        ep("10.42.1.3", "n1", false, false, true),
        ep("10.42.2.2", "n2", false, false, false),
        ep("10.42.2.9", "n2", true, true, false),
    ];
    let t = run(&svcs, &[slice("web", "a", 8080, eps)], "n1", &[]);
    let s = &t.file.services[0];
    let ips = |b: &[Backend]| b.iter().map(|b| b.ip).collect::<Vec<_>>();
    assert_eq!(ips(&s.backends), vec![ip("10.42.2.9")]);
    assert_eq!(
        ips(&s.draining),
        vec![ip("10.42.1.2"), ip("10.42.1.3"), ip("10.42.2.2")]
    );
    // All terminating: the serving ones take new flows, the rest drain.
    let eps = vec![
        ep("10.42.1.2", "n1", false, true, true),
        ep("10.42.1.3", "n1", false, false, true),
    ];
    let t = run(&svcs, &[slice("web", "a", 8080, eps)], "n1", &[]);
    let s = &t.file.services[0];
    assert_eq!(ips(&s.backends), vec![ip("10.42.1.2")]);
    assert_eq!(ips(&s.draining), vec![ip("10.42.1.3")]);
}

#[test]
fn local_policy_falls_back_per_node() {
    let local = json!({ "spec": { "externalTrafficPolicy": "Local" } });
    let eps = vec![
        // n1: terminating only (one serving); n2: one ready.
        ep("10.42.1.2", "n1", false, true, true),
        ep("10.42.1.3", "n1", false, false, true),
        ep("10.42.2.2", "n2", true, true, false),
    ];
    let slices = [slice("web", "a", 8080, eps)];
    let ips = |b: &[Backend]| b.iter().map(|b| b.ip).collect::<Vec<_>>();
    let svcs = [service("web", local)];
    let on_n1 = run(&svcs, &slices, "n1", &[]);
    let s = &on_n1.file.services[0];
    assert_eq!(
        ips(&s.backends),
        vec![ip("10.42.1.2")],
        "n1 falls back to its own serving-terminating endpoint"
    );
    assert_eq!(ips(&s.draining), vec![ip("10.42.1.3")]);
    assert!(on_n1.services[0].has_local_endpoint);
    let on_n2 = run(&svcs, &slices, "n2", &[]);
    let s = &on_n2.file.services[0];
    assert_eq!(ips(&s.backends), vec![ip("10.42.2.2")]);
    assert!(s.draining.is_empty());
    // Under Cluster the choice is the Service's: n2's ready one everywhere.
    let cluster = [service("web", json!({}))];
    let on_n1 = run(&cluster, &slices, "n1", &[]);
    let s = &on_n1.file.services[0];
    assert_eq!(ips(&s.backends), vec![ip("10.42.2.2")]);
    assert_eq!(ips(&s.draining), vec![ip("10.42.1.2"), ip("10.42.1.3")]);
}

#[test]
fn slices_of_other_services_namespaces_or_families_are_ignored() {
    let svcs = [service("web", json!({}))];
    let mut other_ns = slice(
        "web",
        "x",
        8080,
        vec![ep("10.42.1.5", "n1", true, true, false)],
    );
    other_ns.metadata.namespace = Some("kube-system".into());
    let mut v6 = slice(
        "web",
        "y",
        8080,
        vec![ep("10.42.1.6", "n1", true, true, false)],
    );
    v6.address_type = "IPv6".into();
    let other_svc = slice(
        "api",
        "z",
        8080,
        vec![ep("10.42.1.7", "n1", true, true, false)],
    );
    let t = run(&svcs, &[other_ns, v6, other_svc], "n1", &[]);
    assert!(t.file.services[0].backends.is_empty());
}

#[test]
fn announce_is_limited_to_served_vips() {
    let t = run(
        &[service("web", json!({}))],
        &[],
        "n1",
        &["192.168.50.200", "192.168.50.250"],
    );
    assert_eq!(t.file.announce, BTreeSet::from([ip("192.168.50.200")]));
}

#[test]
fn translation_plans_like_a_file() {
    use crate::plan::state::{DataplaneState, Node as LbNode, plan};
    let svcs = [service("web", json!({}))];
    let slices = [slice(
        "web",
        "a",
        8080,
        vec![
            ep("10.42.1.2", "n1", true, true, false),
            ep("10.42.2.2", "n2", true, true, false),
        ],
    )];
    let t = run(&svcs, &slices, "n1", &["192.168.50.200"]);
    let node = LbNode {
        ip6: None,
        ip: ip4("192.168.50.11"),
        ifindex: 2,
        mac: [2, 0, 0, 0, 0, 1],
        hash_seed: lb_common::hash::PUBLIC_SEED,
        segment: None,
        segment6: None,
    };
    let state = plan(
        &DataplaneState::default(),
        &t.file,
        &node,
        &crate::plan::model::Limits::default(),
    )
    .expect("plan");
    assert_eq!(state.services.len(), 1);
    assert_eq!(state.backends.len(), 2);
}

#[test]
fn node_ips_are_internal_and_external_addresses_of_both_families() {
    let n3: Node = from(json!({
        "metadata": { "name": "n3" },
        "status": { "addresses": [
            { "type": "Hostname", "address": "n3" },
            { "type": "InternalIP", "address": "192.168.50.13" },
            { "type": "InternalIP", "address": "fd00::13" },
            { "type": "ExternalIP", "address": "203.0.113.13" },
            { "type": "InternalDNS", "address": "n3.example" }
        ] }
    }));
    let got = node_ips_all(&[node("n1", "192.168.50.11"), n3]);
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    assert_eq!(
        got,
        BTreeMap::from([
            (ip("192.168.50.11"), "n1".to_owned()),
            (ip("192.168.50.13"), "n3".to_owned()),
            (ip("203.0.113.13"), "n3".to_owned()),
            (ip("fd00::13"), "n3".to_owned()),
        ])
    );
}

/// A status naming a node's own address (written by hand, or by another controller) must
/// never reach the maps: announced, XDP would answer ARP for the node's address; merely
/// served, every other node's XDP would drop the ARP requests for it. Either cuts the node
/// off. The Service's other addresses are still served.
#[test]
fn node_addresses_are_never_served_or_announced() {
    let mut ns = nodes();
    ns.push(from(json!({
        "metadata": { "name": "n3" },
        "status": {
            "addresses": [
                { "type": "InternalIP", "address": "192.168.50.13" },
                { "type": "ExternalIP", "address": "198.51.100.13" }
            ],
            "conditions": [{ "type": "Ready", "status": "True" }]
        }
    })));
    let svcs = [
        service(
            "web",
            json!({ "status": { "loadBalancer": { "ingress": [
                { "ip": "192.168.50.200" }, { "ip": "192.168.50.12" }
            ] } } }),
        ),
        service(
            "ext",
            json!({ "status": { "loadBalancer": { "ingress": [{ "ip": "198.51.100.13" }] } } }),
        ),
        service(
            "own",
            json!({ "status": { "loadBalancer": { "ingress": [{ "ip": "192.168.50.11" }] } } }),
        ),
    ];
    let slices = [
        slice(
            "web",
            "w",
            8080,
            vec![ep("10.42.1.2", "n1", true, true, false)],
        ),
        slice(
            "ext",
            "e",
            8080,
            vec![ep("10.42.1.3", "n1", true, true, false)],
        ),
        slice(
            "own",
            "o",
            8080,
            vec![ep("10.42.1.4", "n1", true, true, false)],
        ),
    ];
    // The election may have picked any of them for this node.
    let announce = BTreeSet::from(
        [
            "192.168.50.200",
            "192.168.50.12",
            "198.51.100.13",
            "192.168.50.11",
        ]
        .map(ip),
    );
    let t = translate(&Inputs {
        services: &shared(&svcs),
        slices: &SliceIndex::new(&slices),
        nodes: &ns,
        node_name: "n1",
        class: &class(),
        announce: &announce,
        nat_ports: NatPorts::default(),
        flow_timeouts: lb_common::FlowTimeouts::DEFAULT,
        maglev_table_size: MaglevSize::DEFAULT,
        gateways: &BTreeMap::new(),
    });
    let served: Vec<IpAddr> = t.file.services.iter().map(|s| s.vip).collect();
    assert_eq!(served, [ip("192.168.50.200")], "{:?}", t.file.services);
    assert_eq!(t.file.announce, BTreeSet::from([ip("192.168.50.200")]));
    let warned: Vec<(&str, &str, &str)> = t
        .warnings
        .iter()
        .map(|w| (w.service.name.as_str(), w.reason, w.message.as_str()))
        .collect();
    for (svc, addr, node) in [
        ("web", "192.168.50.12", "n2"),
        ("ext", "198.51.100.13", "n3"),
        ("own", "192.168.50.11", "n1"),
    ] {
        assert!(
            warned.iter().any(|(s, r, m)| *s == svc
                && *r == "NodeAddress"
                && m.contains(addr)
                && m.contains(&format!("node {node}"))),
            "no NodeAddress warning for {svc} ({addr}): {warned:?}"
        );
    }
    // And it plans: a node address among the VIPs would fail the whole apply.
    plan_of(&t);
}

#[test]
fn ipv6_only_source_ranges_deny_every_ipv4_client() {
    use crate::plan::state::{DataplaneState, Node as LbNode, plan};
    let cases = [
        ("v6only", json!(["fd00::/8", " 2001:db8::/32 "]), true),
        ("mixed", json!(["fd00::/8", "10.0.0.0/8"]), false),
        ("unset", json!(null), false),
        ("empty", json!([]), false),
    ];
    let node = LbNode {
        ip: ip4("192.168.50.11"),
        ip6: None,
        ifindex: 2,
        mac: [2, 0, 0, 0, 0, 1],
        hash_seed: lb_common::hash::PUBLIC_SEED,
        segment: None,
        segment6: None,
    };
    for (name, ranges, denied) in &cases {
        let svc = service(
            name,
            json!({ "spec": { "loadBalancerSourceRanges": ranges } }),
        );
        let slices = [slice(
            name,
            "a",
            8080,
            vec![ep("10.42.1.2", "n1", true, true, false)],
        )];
        let t = run(&[svc], &slices, "n1", &[]);
        let s = &t.file.services[0];
        // Every range is kept, of both families: only those of the VIP's
        // family match, but the others restrict.
        let v4_ranges = s.source_ranges.iter().filter(|c| c.addr.is_ipv4()).count();
        assert_eq!(
            *denied,
            !s.source_ranges.is_empty() && v4_ranges == 0,
            "{name}: model ranges {:?}",
            s.source_ranges
        );
        if *denied {
            assert!(
                s.source_ranges
                    .iter()
                    .all(|c| matches!(c.addr, IpAddr::V6(_))),
                "{name}: no IPv4 range"
            );
        }
        let state = plan(
            &DataplaneState::default(),
            &t.file,
            &node,
            &crate::plan::model::Limits::default(),
        )
        .expect("plan");
        let v = state.services.values().next().expect("one service");
        let restricted = v.flags & lb_common::service_flags::SOURCE_RANGES != 0;
        assert_eq!(
            restricted,
            !s.source_ranges.is_empty(),
            "{name}: SOURCE_RANGES flag"
        );
        if *denied {
            assert!(
                state.src_ranges.is_empty(),
                "{name}: the flag with no entries, so the lookup always misses"
            );
        }
    }
}

#[test]
fn this_nodes_gateways_are_never_served_or_announced() {
    let svcs = [
        service(
            "web",
            json!({ "status": { "loadBalancer": { "ingress": [
                { "ip": "192.168.50.200" }, { "ip": "192.168.50.1" }
            ] } } }),
        ),
        service(
            "router",
            json!({ "status": { "loadBalancer": { "ingress": [{ "ip": "192.168.50.1" }] } } }),
        ),
    ];
    let slices = [
        slice(
            "web",
            "w",
            8080,
            vec![ep("10.42.1.2", "n1", true, true, false)],
        ),
        slice(
            "router",
            "r",
            8080,
            vec![ep("10.42.1.3", "n1", true, true, false)],
        ),
    ];
    let announce = BTreeSet::from([ip("192.168.50.200"), ip("192.168.50.1")]);
    let gateways = BTreeMap::from([(
        ip("192.168.50.1"),
        "the gateway of this node's default route (via eth0)".to_owned(),
    )]);
    let ns = nodes();
    let t = translate(&Inputs {
        services: &shared(&svcs),
        slices: &SliceIndex::new(&slices),
        nodes: &ns,
        node_name: "n1",
        class: &class(),
        announce: &announce,
        nat_ports: NatPorts::default(),
        flow_timeouts: lb_common::FlowTimeouts::DEFAULT,
        maglev_table_size: MaglevSize::DEFAULT,
        gateways: &gateways,
    });
    let served: Vec<IpAddr> = t.file.services.iter().map(|s| s.vip).collect();
    assert_eq!(served, [ip("192.168.50.200")], "{:?}", t.file.services);
    assert_eq!(t.file.announce, BTreeSet::from([ip("192.168.50.200")]));
    for svc in ["web", "router"] {
        assert!(
            t.warnings.iter().any(|w| w.service.name == svc
                && w.reason == "GatewayAddress"
                && w.message
                    .contains("192.168.50.1 is the gateway of this node's default route")
                && w.message.contains("node n1")),
            "no GatewayAddress warning for {svc}: {:?}",
            t.warnings
        );
    }
}

/// A Service on its own VIP with `n` ready endpoints (10.42.{vip}.x on n2), its
/// annotations as given.
fn sized_service(
    name: &str,
    vip: u8,
    annotation: Option<&str>,
    n: u32,
) -> (Service, EndpointSlice) {
    let mut extra = json!({
        "status": { "loadBalancer": { "ingress": [{ "ip": format!("192.168.50.{vip}") }] } }
    });
    if let Some(a) = annotation {
        merge(
            &mut extra,
            json!({ "metadata": { "annotations": { MAGLEV_TABLE_SIZE_ANNOTATION: a } } }),
        );
    }
    let eps = (0..n)
        .map(|i| {
            let [_, _, hi, lo] = (i + 2).to_be_bytes();
            ep(&format!("10.{vip}.{hi}.{lo}"), "n2", true, true, false)
        })
        .collect();
    (service(name, extra), slice(name, name, 8080, eps))
}

fn plan_of(t: &Translation) -> crate::plan::state::DataplaneState {
    use crate::plan::state::{DataplaneState, Node as LbNode, plan};
    let node = LbNode {
        ip6: None,
        ip: ip4("192.168.50.11"),
        ifindex: 2,
        mac: [2, 0, 0, 0, 0, 1],
        hash_seed: lb_common::hash::PUBLIC_SEED,
        segment: None,
        segment6: None,
    };
    plan(
        &DataplaneState::default(),
        &t.file,
        &node,
        &crate::plan::model::Limits::default(),
    )
    .expect("plan")
}

/// The table length the plan gave the service on `vip`.
fn slots_of(state: &crate::plan::state::DataplaneState, vip: u8) -> u32 {
    state
        .services
        .iter()
        .find(|(k, _)| k.vip == [192, 168, 50, vip])
        .map(|(_, v)| v.maglev_len)
        .expect("the service is planned")
}

#[test]
fn maglev_table_size_from_the_annotation_or_the_flag() {
    let (own, own_slice) = sized_service("own", 201, Some("16381"), 3);
    let (bad, bad_slice) = sized_service("bad", 202, Some("1000"), 3);
    let (plain, plain_slice) = sized_service("plain", 203, None, 3);
    let (spaced, spaced_slice) = sized_service("spaced", 204, Some(" 251 "), 3);
    let svcs = [own, bad, plain, spaced];
    let slices = [own_slice, bad_slice, plain_slice, spaced_slice];
    let t = run(&svcs, &slices, "n1", &[]);
    assert_eq!(t.file.maglev_table_size, MaglevSize::DEFAULT);
    let by_vip = |vip: u8| {
        t.file
            .services
            .iter()
            .find(|s| s.vip == Ipv4Addr::new(192, 168, 50, vip))
            .expect("served")
            .maglev_table_size
            .map(MaglevSize::get)
    };
    assert_eq!(by_vip(201), Some(16381));
    assert_eq!(by_vip(202), None, "an invalid value is not used");
    assert_eq!(by_vip(203), None);
    assert_eq!(by_vip(204), Some(251));
    assert_eq!(
        t.warnings,
        vec![Warning {
            service: ServiceRef {
                namespace: "default".into(),
                name: "bad".into()
            },
            reason: "InvalidMaglevTableSize",
            message: "annotation onehop.io/maglev-table-size: 1000 is not a Maglev table \
                      size; use one of 101, 251, 509, 1021, 2039, 4093, 8191, 16381, 32749, \
                      65521; the default size 1021 is used"
                .into(),
        }]
    );
    let state = plan_of(&t);
    assert_eq!(
        [201, 202, 203, 204].map(|vip| slots_of(&state, vip)),
        [16381, 1021, 1021, 251]
    );
    // Another cluster-wide default: the services without a valid
    // annotation of their own take it.
    let t = run_sized(&svcs, &slices, "n1", &[], MaglevSize::new(4093).unwrap());
    assert_eq!(t.file.maglev_table_size.get(), 4093);
    assert!(
        t.warnings[0]
            .message
            .ends_with("the default size 4093 is used")
    );
    let state = plan_of(&t);
    assert_eq!(
        [201, 202, 203, 204].map(|vip| slots_of(&state, vip)),
        [16381, 4093, 4093, 251]
    );
}

#[test]
fn a_table_that_grows_past_its_configured_size_says_so() {
    // 103 backends would get 9 or 10 of 1021 slots: the table grows to 16381.
    let (big, big_slice) = sized_service("big", 201, None, 103);
    let (fits, fits_slice) = sized_service("fits", 202, None, 102);
    let (own, own_slice) = sized_service("own", 203, Some("2039"), 103);
    let (tiny, tiny_slice) = sized_service("tiny", 204, Some("101"), 11);
    let t = run(
        &[big, fits, own, tiny],
        &[big_slice, fits_slice, own_slice, tiny_slice],
        "n1",
        &[],
    );
    let grown: Vec<(&str, &str)> = t
        .warnings
        .iter()
        .map(|w| (w.service.name.as_str(), w.reason))
        .collect();
    assert_eq!(
        grown,
        [("big", "MaglevTableGrown"), ("tiny", "MaglevTableGrown")]
    );
    let big_warning = &t.warnings[0].message;
    for needle in [
        "more than 102 backends",
        "1021-slot Maglev table",
        "so the table has 16381 slots",
        "onehop.io/maglev-table-size: \"16381\"",
    ] {
        assert!(
            big_warning.contains(needle),
            "{needle:?} not in {big_warning}"
        );
    }
    assert!(
        t.warnings[1]
            .message
            .contains("so the table has 1021 slots")
    );
    let state = plan_of(&t);
    assert_eq!(
        [201, 202, 203, 204].map(|vip| slots_of(&state, vip)),
        [16381, 1021, 2039, 1021]
    );
    // The message names sizes only: another backend count past the step is
    // the same warning (no new Event for each endpoint that comes or goes).
    let (big, big_slice) = sized_service("big", 201, None, 150);
    let again = run(&[big], &[big_slice], "n1", &[]);
    assert_eq!(again.warnings, t.warnings[..1]);
}

#[test]
fn a_full_maglev_array_names_the_services_whose_tables_wait() {
    let (a, a_slice) = sized_service("a", 201, None, 2);
    let (b, b_slice) = sized_service("b", 202, None, 2);
    let t = run(&[a, b], &[a_slice, b_slice], "n1", &[]);
    let at = |vip: u8| move |k: &AnyServiceKey| k.vip() == IpAddr::from([192, 168, 50, vip]);
    // The maps hold a's table only; b not at all.
    let w = maglev_full_warnings(&t, "n1", 2048, |k| at(201)(k).then_some(1021));
    assert_eq!(w.len(), 1, "{w:?}");
    assert_eq!(w[0].service.name, "b");
    assert_eq!(w[0].reason, "MaglevArrayFull");
    assert!(
        w[0].message
            .contains("the Maglev array of node n1 (2048 slots) has no room"),
        "{}",
        w[0].message
    );
    // b is in the maps but without its table (its endpoints came after it).
    let w = maglev_full_warnings(&t, "n1", 2048, |k| Some(if at(201)(k) { 1021 } else { 0 }));
    assert_eq!(w.len(), 1, "{w:?}");
    assert_eq!(w[0].service.name, "b");
    assert!(maglev_full_warnings(&t, "n1", 2048, |_| Some(1021)).is_empty());
    assert_eq!(maglev_full_warnings(&t, "n1", 2048, |_| None).len(), 2);
}

/// `n1` with an IPv4 and an IPv6 `InternalIP`, `n2` with an IPv4 one only.
fn dual_stack_nodes() -> Vec<Node> {
    let n1 = from(json!({
        "metadata": { "name": "n1" },
        "status": {
            "addresses": [
                { "type": "InternalIP", "address": "192.168.50.11" },
                { "type": "InternalIP", "address": "fd00:50::11" }
            ],
            "conditions": [{ "type": "Ready", "status": "True" }]
        }
    }));
    vec![n1, node("n2", "192.168.50.12")]
}

fn slice6(svc: &str, name: &str, port: i32, endpoints: Vec<Value>) -> EndpointSlice {
    let mut s = slice(svc, name, port, endpoints);
    s.address_type = "IPv6".into();
    s
}

/// A dual-stack Service: one service of the model per family, each with the
/// endpoints of its family; an IPv6 endpoint's node is named by its IPv6
/// `InternalIP`, or by its IPv4 one where it has none.
/// The dual-stack Service `web` with endpoints of both families, on n1.
fn dual_stack_translation() -> Translation {
    let svc = service(
        "web",
        json!({ "status": { "loadBalancer": { "ingress": [
            { "ip": "fd00:60::200" }, { "ip": "192.168.50.200" }
        ] } } }),
    );
    let slices = [
        slice(
            "web",
            "web-v4",
            8080,
            vec![
                ep("10.42.1.2", "n1", true, true, false),
                ep("10.42.2.2", "n2", true, true, false),
            ],
        ),
        slice6(
            "web",
            "web-v6",
            8080,
            vec![
                ep("fd00:42:1::2", "n1", true, true, false),
                ep("fd00:42:2::2", "n2", true, true, false),
                ep("fd00:42:1::3", "n1", false, false, true),
            ],
        ),
    ];
    let ns = dual_stack_nodes();
    let announce = BTreeSet::from([ip("192.168.50.200"), ip("fd00:60::200")]);
    translate(&Inputs {
        services: &shared(&[svc]),
        slices: &SliceIndex::new(&slices),
        nodes: &ns,
        node_name: "n1",
        class: &class(),
        announce: &announce,
        nat_ports: NatPorts::default(),
        flow_timeouts: lb_common::FlowTimeouts::DEFAULT,
        maglev_table_size: MaglevSize::DEFAULT,
        gateways: &BTreeMap::new(),
    })
}

#[test]
fn a_dual_stack_service_gives_one_service_per_family() {
    let t = dual_stack_translation();
    let announce = BTreeSet::from([ip("192.168.50.200"), ip("fd00:60::200")]);
    assert!(t.warnings.is_empty(), "{:?}", t.warnings);
    assert_eq!(t.file.node_ip, Some(ip4("192.168.50.11")));
    assert_eq!(t.file.node_ip6, Some("fd00:50::11".parse().unwrap()));
    assert_eq!(t.file.announce, announce);
    assert_eq!(
        t.services[0].vips,
        [ip("192.168.50.200"), ip("fd00:60::200")],
        "IPv4 first"
    );
    let [v4, v6] = &t.file.services[..] else {
        panic!("two services: {:?}", t.file.services);
    };
    assert_eq!(v4.vip, ip("192.168.50.200"));
    assert_eq!(
        v4.backends,
        [
            Backend {
                ip: ip("10.42.1.2"),
                node_ip: ip("192.168.50.11")
            },
            Backend {
                ip: ip("10.42.2.2"),
                node_ip: ip("192.168.50.12")
            }
        ]
    );
    assert!(v4.draining.is_empty());
    assert_eq!(v6.vip, ip("fd00:60::200"));
    assert_eq!(
        v6.backends,
        [
            Backend {
                ip: ip("fd00:42:1::2"),
                node_ip: ip("fd00:50::11")
            },
            Backend {
                ip: ip("fd00:42:2::2"),
                node_ip: ip("192.168.50.12")
            }
        ]
    );
    assert_eq!(
        v6.draining,
        [Backend {
            ip: ip("fd00:42:1::3"),
            node_ip: ip("fd00:50::11")
        }]
    );
    assert_ne!(v4.name, v6.name);
}

/// Planned on n1: the IPv6 pod there is local, the one on n2 has no IPv6
/// next hop (all zero).
#[test]
fn a_dual_stack_service_plans_both_families() {
    let t = dual_stack_translation();
    let node = crate::plan::state::Node {
        ip: ip4("192.168.50.11"),
        ip6: t.file.node_ip6,
        ifindex: 2,
        mac: [2, 0, 0, 0, 0, 1],
        hash_seed: lb_common::hash::PUBLIC_SEED,
        segment: None,
        segment6: None,
    };
    let state = crate::plan::state::plan(
        &crate::plan::state::DataplaneState::default(),
        &t.file,
        &node,
        &crate::plan::model::Limits::default(),
    )
    .expect("plan");
    assert_eq!((state.services.len(), state.services6.len()), (1, 1));
    let local = |b: &lb_common::BackendValue6| b.flags & lb_common::backend_flags::LOCAL != 0;
    let by_ip = |a: &str| {
        let want: std::net::Ipv6Addr = a.parse().unwrap();
        *state
            .backends6
            .values()
            .find(|b| b.ip == want.octets())
            .expect("planned")
    };
    assert!(local(&by_ip("fd00:42:1::2")));
    assert!(!local(&by_ip("fd00:42:2::2")));
    assert_eq!(by_ip("fd00:42:2::2").node_ip, [0; 16]);
}

/// An IPv6 ingress address that is a node's IPv6 address is neither served
/// nor announced, as for IPv4.
#[test]
fn an_ipv6_node_address_is_never_a_vip() {
    let svc = service(
        "web",
        json!({ "status": { "loadBalancer": { "ingress": [{ "ip": "fd00:50::11" }] } } }),
    );
    let ns = dual_stack_nodes();
    let announce = BTreeSet::from([ip("fd00:50::11")]);
    let t = translate(&Inputs {
        services: &shared(&[svc]),
        slices: &SliceIndex::new(&[]),
        nodes: &ns,
        node_name: "n2",
        class: &class(),
        announce: &announce,
        nat_ports: NatPorts::default(),
        flow_timeouts: lb_common::FlowTimeouts::DEFAULT,
        maglev_table_size: MaglevSize::DEFAULT,
        gateways: &BTreeMap::new(),
    });
    assert!(t.file.services.is_empty() && t.file.announce.is_empty());
    assert!(
        t.warnings
            .iter()
            .any(|w| w.reason == "NodeAddress" && w.message.contains("fd00:50::11")),
        "{:?}",
        t.warnings
    );
}

/// Whether serving-terminating endpoints take new flows is decided per
/// family: the IPv6 address falls back on its terminating endpoint while
/// the IPv4 one has a ready endpoint of its own.
#[test]
fn the_fallback_to_terminating_endpoints_is_decided_per_family() {
    let svc = service(
        "web",
        json!({ "status": { "loadBalancer": { "ingress": [
            { "ip": "192.168.50.200" }, { "ip": "fd00:60::200" }
        ] } } }),
    );
    let slices = [
        slice(
            "web",
            "web-v4",
            8080,
            vec![ep("10.42.2.2", "n2", true, true, false)],
        ),
        slice6(
            "web",
            "web-v6",
            8080,
            vec![ep("fd00:42:1::2", "n1", false, true, true)],
        ),
    ];
    let ns = dual_stack_nodes();
    let t = translate(&Inputs {
        services: &shared(&[svc]),
        slices: &SliceIndex::new(&slices),
        nodes: &ns,
        node_name: "n1",
        class: &class(),
        announce: &BTreeSet::new(),
        nat_ports: NatPorts::default(),
        flow_timeouts: lb_common::FlowTimeouts::DEFAULT,
        maglev_table_size: MaglevSize::DEFAULT,
        gateways: &BTreeMap::new(),
    });
    let [v4, v6] = &t.file.services[..] else {
        panic!("two services: {:?}", t.file.services);
    };
    assert_eq!(v4.backends.len(), 1);
    assert_eq!(
        v6.backends,
        [Backend {
            ip: ip("fd00:42:1::2"),
            node_ip: ip("fd00:50::11")
        }],
        "no ready IPv6 endpoint: the serving-terminating one takes new flows"
    );
    assert!(v6.draining.is_empty());
    assert!(t.services[0].has_local_endpoint);
}
