use onehop_apiserver::json::merge;
use proptest::prelude::*;
use serde_json::{Value, json};

use super::*;

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

fn spec(v: Value) -> PoolSpec {
    serde_json::from_value(v).unwrap()
}

fn pools(list: &[(&str, Value)]) -> Vec<Pool> {
    let specs: Vec<(String, PoolSpec)> = list
        .iter()
        .map(|(n, v)| ((*n).to_owned(), spec(v.clone())))
        .collect();
    let (ok, bad) = validate_pools(&specs);
    assert!(bad.is_empty(), "{bad:?}");
    ok
}

fn svc(ns: &str, name: &str, extra: Value) -> Service {
    let mut v = json!({
        "metadata": { "namespace": ns, "name": name },
        "spec": { "type": "LoadBalancer", "ports": [{ "port": 80, "protocol": "TCP" }] }
    });
    merge(&mut v, extra);
    serde_json::from_value(v).unwrap()
}

fn req(ns: &str, name: &str, extra: Value) -> Request {
    Request::from_service(&svc(ns, name, extra), BTreeMap::new()).unwrap()
}

fn r(ns: &str, name: &str) -> ServiceRef {
    ServiceRef {
        namespace: ns.into(),
        name: name.into(),
    }
}

#[test]
fn cidrs_ranges_and_buggy_ips() {
    let p = Pool::parse(
        "p",
        &spec(
            json!({ "addresses": ["10.0.0.0/30", "10.0.1.254-10.0.2.1"], "avoidBuggyIPs": true }),
        ),
    )
    .unwrap();
    let all: Vec<String> = p.addresses().map(|a| a.to_string()).collect();
    assert_eq!(
        all,
        ["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.1.254", "10.0.2.1"]
    );
    assert!(
        p.contains(ip("10.0.2.0")),
        "buggy addresses are still in the pool, just never handed out"
    );
    for bad in [
        json!({ "addresses": [] }),
        json!({ "addresses": ["10.0.0.9-10.0.0.1"] }),
        json!({ "addresses": ["x/8"] }),
        json!({ "addresses": ["fd00::/64"] }),
        json!({ "addresses": ["10.0.0.0/24", "10.0.0.128/25"] }),
    ] {
        assert!(Pool::parse("p", &spec(bad.clone())).is_err(), "{bad}");
    }
}

#[test]
fn overlapping_pools_are_rejected_by_name_order() {
    let specs = vec![
        (
            "b".to_owned(),
            spec(json!({ "addresses": ["10.0.0.0/24"] })),
        ),
        (
            "a".to_owned(),
            spec(json!({ "addresses": ["10.0.0.100-10.0.1.5"] })),
        ),
        (
            "c".to_owned(),
            spec(json!({ "addresses": ["10.0.2.0/24"] })),
        ),
    ];
    let (ok, bad) = validate_pools(&specs);
    assert_eq!(
        ok.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(),
        ["a", "c"]
    );
    assert_eq!(bad, vec![("b".to_owned(), "overlaps pool a".to_owned())]);
}

#[test]
fn first_free_address_stable_and_released() {
    let mut a = Allocator::new(pools(&[(
        "p",
        json!({ "addresses": ["10.0.0.1-10.0.0.2"] }),
    )]));
    let x = req("d", "x", json!({}));
    let y = req("d", "y", json!({}));
    let z = req("d", "z", json!({}));
    assert_eq!(a.assign(&x).unwrap(), vec![ip("10.0.0.1")]);
    assert_eq!(
        a.assign(&x).unwrap(),
        vec![ip("10.0.0.1")],
        "re-assigning keeps the address"
    );
    assert_eq!(a.assign(&y).unwrap(), vec![ip("10.0.0.2")]);
    assert_eq!(
        a.assign(&z),
        Err(AllocError::PoolExhausted {
            pools: vec!["p".into()]
        })
    );
    a.release(&r("d", "x"));
    assert_eq!(a.assign(&z).unwrap(), vec![ip("10.0.0.1")]);
}

#[test]
fn requested_addresses_all_prefixes_and_errors() {
    let mut a = Allocator::new(pools(&[
        ("p", json!({ "addresses": ["10.0.0.0/28"] })),
        (
            "manual",
            json!({ "addresses": ["10.0.1.0/28"], "autoAssign": false }),
        ),
    ]));
    let by_spec = req(
        "d",
        "a",
        json!({ "spec": { "loadBalancerIP": "10.0.0.5" } }),
    );
    assert_eq!(a.assign(&by_spec).unwrap(), vec![ip("10.0.0.5")]);
    for prefix in ANNOTATION_PREFIXES {
        let name = format!("b{}", prefix.len());
        let want = format!("10.0.1.{}", prefix.len() % 14 + 1);
        let q = req(
            "d",
            &name,
            json!({ "metadata": { "annotations": { format!("{prefix}loadBalancerIPs"): want } } }),
        );
        assert_eq!(
            a.assign(&q).unwrap(),
            vec![ip(&want)],
            "{prefix}: a non-autoAssign pool serves explicit requests"
        );
    }
    let outside = req(
        "d",
        "c",
        json!({ "spec": { "loadBalancerIP": "10.9.9.9" } }),
    );
    assert_eq!(
        a.assign(&outside),
        Err(AllocError::NotInAnyPool(ip("10.9.9.9")))
    );
    let taken = req(
        "d",
        "e",
        json!({ "spec": { "loadBalancerIP": "10.0.0.5" } }),
    );
    assert_eq!(
        a.assign(&taken),
        Err(AllocError::InUse {
            ip: ip("10.0.0.5"),
            by: r("d", "a")
        })
    );
    let garbage = svc(
        "d",
        "f",
        json!({ "metadata": { "annotations": { "metallb.io/loadBalancerIPs": "10.0.0.300" } } }),
    );
    assert!(matches!(
        Request::from_service(&garbage, BTreeMap::new()),
        Err(AllocError::InvalidRequest(_))
    ));
    // onehop.io/ wins over metallb.io/ when both are set.
    let both = req(
        "d",
        "g",
        json!({ "metadata": { "annotations": { "onehop.io/address-pool": "manual", "metallb.io/address-pool": "p" } } }),
    );
    assert_eq!(both.pool.as_deref(), Some("manual"));
}

#[test]
fn pool_annotation_and_unknown_pool() {
    let mut a = Allocator::new(pools(&[
        ("p", json!({ "addresses": ["10.0.0.0/28"] })),
        (
            "q",
            json!({ "addresses": ["10.0.1.0/28"], "autoAssign": false }),
        ),
    ]));
    let in_q = req(
        "d",
        "a",
        json!({ "metadata": { "annotations": { "metallb.universe.tf/address-pool": "q" } } }),
    );
    assert_eq!(a.assign(&in_q).unwrap(), vec![ip("10.0.1.0")]);
    let nope = req(
        "d",
        "b",
        json!({ "metadata": { "annotations": { "metallb.io/address-pool": "zz" } } }),
    );
    assert_eq!(a.assign(&nope), Err(AllocError::UnknownPool("zz".into())));
    let wrong = req(
        "d",
        "c",
        json!({ "spec": { "loadBalancerIP": "10.0.0.3" }, "metadata": { "annotations": { "metallb.io/address-pool": "q" } } }),
    );
    assert!(matches!(
        a.assign(&wrong),
        Err(AllocError::InvalidRequest(_))
    ));
}

#[test]
fn priority_namespaces_and_selectors() {
    let mut a = Allocator::new(pools(&[
        ("low", json!({ "addresses": ["10.0.3.0/30"] })),
        (
            "high",
            json!({ "addresses": ["10.0.2.0/30"], "serviceAllocation": { "priority": 10 } }),
        ),
        (
            "higher",
            json!({ "addresses": ["10.0.1.0/30"], "serviceAllocation": { "priority": 5, "namespaces": ["prod"] } }),
        ),
        (
            "labelled",
            json!({ "addresses": ["10.0.4.0/30"], "serviceAllocation": { "priority": 1, "serviceSelectors": [{ "matchLabels": { "tier": "edge" } }] } }),
        ),
    ]));
    assert_eq!(
        a.assign(&req("prod", "a", json!({}))).unwrap(),
        vec![ip("10.0.1.0")]
    );
    assert_eq!(
        a.assign(&req("dev", "b", json!({}))).unwrap(),
        vec![ip("10.0.2.0")]
    );
    let edge = req(
        "dev",
        "c",
        json!({ "metadata": { "labels": { "tier": "edge" } } }),
    );
    assert_eq!(a.assign(&edge).unwrap(), vec![ip("10.0.4.0")]);
    let ns_sel = pools(&[(
        "team",
        json!({ "addresses": ["10.0.5.0/30"], "serviceAllocation": { "namespaceSelectors": [{ "matchLabels": { "team": "x" } }] } }),
    )]);
    let mut b = Allocator::new(ns_sel);
    let plain = req("any", "a", json!({}));
    assert_eq!(b.assign(&plain), Err(AllocError::NoPool));
    let teamed = Request::from_service(
        &svc("tx", "a", json!({})),
        BTreeMap::from([("team".to_owned(), "x".to_owned())]),
    )
    .unwrap();
    assert_eq!(b.assign(&teamed).unwrap(), vec![ip("10.0.5.0")]);
}

#[test]
fn sharing_needs_same_key_disjoint_ports_same_policy() {
    let mut a = Allocator::new(pools(&[("p", json!({ "addresses": ["10.0.0.0/29"] }))]));
    let key = |name: &str, port: u16, proto: &str, extra: Value| {
        let mut v = json!({
            "metadata": { "annotations": { "metallb.io/allow-shared-ip": "k1" } },
            "spec": { "ports": [{ "port": port, "protocol": proto }] }
        });
        merge(&mut v, extra);
        req("d", name, v)
    };
    let web = a.assign(&key("web", 80, "TCP", json!({}))).unwrap();
    assert_eq!(
        a.assign(&key("dns", 53, "UDP", json!({}))).unwrap(),
        web,
        "same key, disjoint ports: shared"
    );
    assert_eq!(
        a.assign(&key("dns-tcp", 53, "TCP", json!({}))).unwrap(),
        web,
        "UDP 53 and TCP 53 are different ports"
    );
    assert_ne!(
        a.assign(&key("web2", 80, "TCP", json!({}))).unwrap(),
        web,
        "overlapping ports: not shared"
    );
    let local = key(
        "loc",
        8443,
        "TCP",
        json!({ "spec": { "externalTrafficPolicy": "Local" } }),
    );
    assert_ne!(
        a.assign(&local).unwrap(),
        web,
        "different traffic policy: not shared"
    );
    let other_key = req(
        "d",
        "o",
        json!({ "metadata": { "annotations": { "metallb.io/allow-shared-ip": "k2" } }, "spec": { "loadBalancerIP": web[0].to_string(), "ports": [{ "port": 9 }] } }),
    );
    assert!(matches!(
        a.assign(&other_key),
        Err(AllocError::InUse { .. })
    ));
    let unkeyed = req(
        "d",
        "u",
        json!({ "spec": { "loadBalancerIP": web[0].to_string(), "ports": [{ "port": 10 }] } }),
    );
    assert!(matches!(a.assign(&unkeyed), Err(AllocError::InUse { .. })));
}

#[test]
fn adopting_statuses_after_restart_prevents_double_assignment() {
    let p = pools(&[("p", json!({ "addresses": ["10.0.0.1-10.0.0.3"] }))]);
    let mut a = Allocator::new(p);
    // Before the restart x had .1 and y had .2; a new service arrives.
    a.adopt(&req("d", "x", json!({})), &[ip("10.0.0.1")])
        .unwrap();
    a.adopt(&req("d", "y", json!({})), &[ip("10.0.0.2")])
        .unwrap();
    assert_eq!(
        a.assign(&req("d", "new", json!({}))).unwrap(),
        vec![ip("10.0.0.3")]
    );
    assert_eq!(
        a.assign(&req("d", "x", json!({}))).unwrap(),
        vec![ip("10.0.0.1")],
        "x keeps its address"
    );
    let clash = a.adopt(&req("d", "dup", json!({})), &[ip("10.0.0.2")]);
    assert_eq!(
        clash,
        Err(AllocError::InUse {
            ip: ip("10.0.0.2"),
            by: r("d", "y")
        })
    );
}

#[test]
fn an_address_removed_from_the_pools_is_reassigned() {
    let mut a = Allocator::new(pools(&[("p", json!({ "addresses": ["10.0.0.0/30"] }))]));
    assert_eq!(
        a.assign(&req("d", "x", json!({}))).unwrap(),
        vec![ip("10.0.0.0")]
    );
    a.set_pools(pools(&[("p", json!({ "addresses": ["10.0.1.0/30"] }))]));
    assert_eq!(
        a.assign(&req("d", "x", json!({}))).unwrap(),
        vec![ip("10.0.1.0")]
    );
    assert!(a.pool_of(ip("10.0.0.0")).is_none());
}

#[derive(Clone, Debug)]
enum Op {
    Assign {
        svc: u8,
        key: Option<u8>,
        port: u16,
        local: bool,
    },
    Release(u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (
            0u8..12,
            proptest::option::of(0u8..2),
            1u16..4,
            any::<bool>()
        )
            .prop_map(|(svc, key, port, local)| Op::Assign {
                svc,
                key,
                port,
                local
            }),
        (0u8..12).prop_map(Op::Release),
    ]
}

proptest! {
    /// Whatever happens, no address is held by two services that may not share it,
    /// and every held address is in the pool.
    #[test]
    fn never_hands_an_address_to_incompatible_services(ops in proptest::collection::vec(op(), 1..80)) {
        let mut a = Allocator::new(pools(&[("p", json!({ "addresses": ["10.0.0.0/29"] }))]));
        let mut reqs: BTreeMap<u8, Request> = BTreeMap::new();
        for o in ops {
            match o {
                Op::Assign { svc, key, port, local } => {
                    let mut extra = json!({ "spec": { "ports": [{ "port": port }], "externalTrafficPolicy": if local { "Local" } else { "Cluster" } } });
                    if let Some(k) = key {
                        merge(&mut extra, json!({ "metadata": { "annotations": { "metallb.io/allow-shared-ip": format!("k{k}") } } }));
                    }
                    let q = req("d", &format!("s{svc}"), extra);
                    if a.assign(&q).is_ok() {
                        reqs.insert(svc, q);
                    } else {
                        reqs.remove(&svc);
                    }
                }
                Op::Release(svc) => {
                    a.release(&r("d", &format!("s{svc}")));
                    reqs.remove(&svc);
                }
            }
            let held: Vec<(&Request, Ipv4Addr)> =
                reqs.values().flat_map(|q| a.addresses_of(&q.service).iter().map(move |ip| (q, *ip))).collect();
            for (q1, ip1) in &held {
                prop_assert!(a.pool_of(*ip1).is_some());
                for (q2, ip2) in &held {
                    if ip1 == ip2 && q1.service != q2.service {
                        prop_assert!(Holder::of(q1).can_share_with(q2), "{:?} and {:?} share {ip1}", q1.service, q2.service);
                    }
                }
            }
        }
    }
}

#[test]
fn pool_size_counts_usable_addresses() {
    let spec = |addrs: &[&str], buggy: bool| PoolSpec {
        addresses: addrs.iter().map(|a| (*a).to_owned()).collect(),
        avoid_buggy_ips: Some(buggy),
        ..PoolSpec::default()
    };
    let size = |addrs: &[&str], buggy: bool| Pool::parse("p", &spec(addrs, buggy)).unwrap().size();
    assert_eq!(size(&["10.0.0.0/24"], false), 256);
    assert_eq!(size(&["10.0.0.0/24"], true), 254);
    assert_eq!(size(&["10.0.0.0/23"], true), 508);
    assert_eq!(
        size(&["10.0.0.10-10.0.0.20", "10.0.1.255-10.0.2.1"], true),
        11 + 1
    );
    assert_eq!(size(&["0.0.0.0/0"], false), 1 << 32);
    assert_eq!(size(&["0.0.0.0/31"], true), 1);
    // The count agrees with the addresses handed out.
    let p = Pool::parse("p", &spec(&["10.0.0.250-10.0.1.5"], true)).unwrap();
    assert_eq!(p.size(), p.addresses().count() as u64);
}

#[test]
fn pools_holding_a_node_address_are_rejected() {
    let specs = vec![
        (
            "a-lan".to_owned(),
            spec(json!({ "addresses": ["192.168.50.0/24"] })),
        ),
        (
            "b-range".to_owned(),
            spec(json!({ "addresses": ["198.51.100.10-198.51.100.20"] })),
        ),
        (
            "c-ok".to_owned(),
            spec(json!({ "addresses": ["192.168.50.200-192.168.50.210", "198.51.100.21/32"] })),
        ),
    ];
    let nodes = BTreeMap::from([
        (ip("192.168.50.11"), "n1".to_owned()),
        (ip("198.51.100.20"), "n2".to_owned()),
    ]);
    let (ok, bad) = validate_pools_against(&specs, &nodes);
    assert_eq!(
        ok.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(),
        ["c-ok"],
        "a rejected pool must not block the pools it would overlap"
    );
    assert_eq!(bad.len(), 2, "{bad:?}");
    for (r, addr, node) in [
        (&bad[0], "192.168.50.11", "n1"),
        (&bad[1], "198.51.100.20", "n2"),
    ] {
        assert_eq!(r.reason, "NodeAddress", "{r:?}");
        assert!(
            r.message.contains(addr) && r.message.contains(&format!("node {node}")),
            "{r:?}"
        );
    }
    assert_eq!(
        (bad[0].pool.as_str(), bad[1].pool.as_str()),
        ("a-lan", "b-range")
    );
    // The last address of a range counts, and so does a single-address pool.
    let single = vec![(
        "d".to_owned(),
        spec(json!({ "addresses": ["192.168.50.11/32"] })),
    )];
    assert_eq!(
        validate_pools_against(&single, &nodes).1[0].reason,
        "NodeAddress"
    );
    // Without nodes nothing changes: the other reasons are as before.
    let (_, bad) = validate_pools_against(
        &[
            (
                "x".to_owned(),
                spec(json!({ "addresses": ["10.0.0.0/24"] })),
            ),
            (
                "y".to_owned(),
                spec(json!({ "addresses": ["10.0.0.0/25"] })),
            ),
            ("z".to_owned(), spec(json!({ "addresses": ["nope"] }))),
        ],
        &BTreeMap::new(),
    );
    let reasons: Vec<&str> = bad.iter().map(|r| r.reason).collect();
    assert_eq!(reasons, ["OverlappingPool", "InvalidPool"]);
}
