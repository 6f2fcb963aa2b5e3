use onehop_apiserver::json::merge;
use proptest::prelude::*;
use serde_json::{Value, json};

use super::*;

fn ip(s: &str) -> IpAddr {
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
        json!({ "addresses": ["10.0.0.1-fd00::1"] }),
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
            pools: vec!["p".into()],
            families: vec![Family::V4],
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
            let held: Vec<(&Request, IpAddr)> =
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
    assert_eq!(p.size(), p.addresses().count() as u128);
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

/// A Service of `policy` listing `families` (`ipFamilies`), with `extra`.
fn fam(name: &str, policy: &str, families: &[&str], extra: Value) -> Request {
    let mut v = json!({ "spec": { "ipFamilyPolicy": policy, "ipFamilies": families } });
    merge(&mut v, extra);
    req("d", name, v)
}

fn ips(list: &[&str]) -> Vec<IpAddr> {
    list.iter().map(|s| ip(s)).collect()
}

#[test]
fn ipv6_ranges_hand_out_the_lowest_free_address_and_run_out() {
    // A /126 holds four addresses, all usable: avoidBuggyIPs is IPv4's.
    let mut a = Allocator::new(pools(&[(
        "v6",
        json!({ "addresses": ["fd00::/126"], "avoidBuggyIPs": true }),
    )]));
    let six = |n: &str| fam(n, "SingleStack", &["IPv6"], json!({}));
    for (i, want) in ["fd00::", "fd00::1", "fd00::2", "fd00::3"]
        .iter()
        .enumerate()
    {
        assert_eq!(
            a.assign(&six(&format!("s{i}"))).unwrap(),
            ips(&[want]),
            "s{i}"
        );
    }
    assert_eq!(
        a.assign(&six("s4")),
        Err(AllocError::PoolExhausted {
            pools: vec!["v6".into()],
            families: vec![Family::V6],
        })
    );
    let u = a.pool_usage()["v6"];
    assert_eq!((u.assigned, u.available), ([0, 4], [0, 0]));
    a.release(&r("d", "s1"));
    assert_eq!(a.assign(&six("s4")).unwrap(), ips(&["fd00::1"]));
    // An IPv4 Service finds no family it can use in an IPv6-only pool.
    assert_eq!(
        a.assign(&req("d", "v4", json!({}))),
        Err(AllocError::NoPoolForFamilies {
            policy: FamilyPolicy::SingleStack,
            families: vec![Family::V4],
        })
    );
}

#[test]
fn huge_ipv6_ranges_are_never_enumerated() {
    // ::/0 and a /64: counting and allocating must not walk 2^64 or 2^128
    // addresses (this would never finish if they did).
    let mut a = Allocator::new(pools(&[
        ("all", json!({ "addresses": ["::/1"] })),
        (
            "lan",
            json!({ "addresses": ["fd00:1::/64", "fd00:2::ffff-fd00:3::"] }),
        ),
    ]));
    let u = a.pool_usage();
    assert_eq!(u["all"].available[1], 1 << 127);
    assert_eq!(u["lan"].available[1], (1 << 64) + (1 << 96) - 0xffff + 1);
    let lan = |n: &str| {
        fam(
            n,
            "SingleStack",
            &["IPv6"],
            json!({ "metadata": { "annotations": { "metallb.io/address-pool": "lan" } } }),
        )
    };
    let started = std::time::Instant::now();
    for i in 0..300u32 {
        let got = a.assign(&lan(&format!("s{i}"))).unwrap();
        assert_eq!(
            got,
            vec![IpAddr::V6(std::net::Ipv6Addr::from(
                (0xfd00_0001_u128 << 96) | u128::from(i)
            ))]
        );
    }
    assert!(started.elapsed() < std::time::Duration::from_secs(20));
    assert_eq!(a.pool_usage()["lan"].assigned, [0, 300]);
    // A hole is filled first; the end of a huge pool is reachable by request.
    a.release(&r("d", "s7"));
    assert_eq!(a.assign(&lan("new")).unwrap(), ips(&["fd00:1::7"]));
    let last = fam(
        "last",
        "SingleStack",
        &["IPv6"],
        json!({ "spec": { "loadBalancerIP": "7fff:ffff:ffff:ffff:ffff:ffff:ffff:ffff" } }),
    );
    assert_eq!(
        a.assign(&last).unwrap(),
        ips(&["7fff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"])
    );
    assert_eq!(a.pool_of(ip("7fff::1")), Some("all"));
    assert_eq!(a.pool_of(ip("8000::")), None);
}

#[test]
fn families_and_policies() {
    let dual = || {
        pools(&[(
            "dual",
            json!({ "addresses": ["10.0.0.0/30", "fd00::/126"] }),
        )])
    };
    let mut a = Allocator::new(dual());
    // No ipFamilies: IPv4 (an IPv4-primary cluster); SingleStack IPv6.
    assert_eq!(
        a.assign(&req("d", "plain", json!({}))).unwrap(),
        ips(&["10.0.0.0"])
    );
    assert_eq!(
        a.assign(&fam("v6", "SingleStack", &["IPv6"], json!({})))
            .unwrap(),
        ips(&["fd00::"])
    );
    // Dual-stack: one per family, in ipFamilies order.
    assert_eq!(
        a.assign(&fam(
            "pref",
            "PreferDualStack",
            &["IPv6", "IPv4"],
            json!({})
        ))
        .unwrap(),
        ips(&["fd00::1", "10.0.0.1"])
    );
    assert_eq!(
        a.assign(&fam(
            "req",
            "RequireDualStack",
            &["IPv4", "IPv6"],
            json!({})
        ))
        .unwrap(),
        ips(&["10.0.0.2", "fd00::2"])
    );
    // PreferDualStack on a single-stack cluster lists one family.
    assert_eq!(
        a.assign(&fam("pref1", "PreferDualStack", &["IPv6"], json!({})))
            .unwrap(),
        ips(&["fd00::3"])
    );
    // The IPv6 range is full: RequireDualStack gets nothing (and takes no
    // IPv4 address), PreferDualStack gets what the pool can give.
    let before = a.pool_usage()["dual"];
    let all_or_nothing = fam("req2", "RequireDualStack", &["IPv4", "IPv6"], json!({}));
    assert_eq!(
        a.assign(&all_or_nothing),
        Err(AllocError::PoolExhausted {
            pools: vec!["dual".into()],
            families: vec![Family::V6],
        })
    );
    assert!(a.addresses_of(&r("d", "req2")).is_empty());
    assert_eq!(a.pool_usage()["dual"], before, "nothing taken");
    let prefer = fam("pref2", "PreferDualStack", &["IPv6", "IPv4"], json!({}));
    assert_eq!(a.assign(&prefer).unwrap(), ips(&["10.0.0.3"]));
    // Once an IPv6 address is free the PreferDualStack Service gains it,
    // keeping its IPv4 address, and RequireDualStack still finds no IPv4.
    a.release(&r("d", "v6"));
    assert_eq!(a.assign(&prefer).unwrap(), ips(&["fd00::", "10.0.0.3"]));
    assert!(a.assign(&all_or_nothing).is_err());
    // Policy changes: SingleStack keeps the first family's address only.
    let single = fam("pref2", "SingleStack", &["IPv6"], json!({}));
    assert_eq!(a.assign(&single).unwrap(), ips(&["fd00::"]));
    assert_eq!(a.pool_of(ip("10.0.0.3")), Some("dual"));
    assert_eq!(a.pool_usage()["dual"].assigned, [3, 4], "10.0.0.3 is free");
    let e = a.assign(&all_or_nothing).unwrap_err().to_string();
    assert!(e.contains("(IPv6 exhausted)"), "{e}");
    // Unknown names are malformed requests.
    for bad in [
        json!({ "spec": { "ipFamilyPolicy": "Both" } }),
        json!({ "spec": { "ipFamilies": ["IPv5"] } }),
    ] {
        assert!(
            matches!(
                Request::from_service(&svc("d", "x", bad.clone()), BTreeMap::new()),
                Err(AllocError::InvalidRequest(_))
            ),
            "{bad}"
        );
    }
}

#[test]
fn dual_stack_services_take_both_families_from_one_pool() {
    let mut a = Allocator::new(pools(&[
        (
            "a-v4",
            json!({ "addresses": ["10.0.0.0/30"], "serviceAllocation": { "priority": 1 } }),
        ),
        (
            "b-v6",
            json!({ "addresses": ["fd00::/126"], "serviceAllocation": { "priority": 2 } }),
        ),
        (
            "c-dual",
            json!({ "addresses": ["10.0.1.0/30", "fd01::/126"] }),
        ),
    ]));
    // RequireDualStack skips the single-family pools, whatever their priority.
    assert_eq!(
        a.assign(&fam(
            "req",
            "RequireDualStack",
            &["IPv4", "IPv6"],
            json!({})
        ))
        .unwrap(),
        ips(&["10.0.1.0", "fd01::"])
    );
    // PreferDualStack takes the first pool that serves it, IPv4-only here.
    assert_eq!(
        a.assign(&fam(
            "pref",
            "PreferDualStack",
            &["IPv4", "IPv6"],
            json!({})
        ))
        .unwrap(),
        ips(&["10.0.0.0"])
    );
    assert_eq!(
        a.assign(&fam(
            "pref6",
            "PreferDualStack",
            &["IPv6", "IPv4"],
            json!({})
        ))
        .unwrap(),
        ips(&["10.0.0.1"]),
        "the pool comes first, then the families it can give"
    );
    // No dual-stack pool at all: a clear reason.
    let mut b = Allocator::new(pools(&[
        ("a-v4", json!({ "addresses": ["10.0.0.0/30"] })),
        ("b-v6", json!({ "addresses": ["fd00::/126"] })),
    ]));
    let e = b
        .assign(&fam(
            "req",
            "RequireDualStack",
            &["IPv6", "IPv4"],
            json!({}),
        ))
        .unwrap_err();
    assert_eq!(
        e,
        AllocError::NoPoolForFamilies {
            policy: FamilyPolicy::RequireDualStack,
            families: vec![Family::V6, Family::V4],
        }
    );
    assert!(
        e.to_string().contains("RequireDualStack") && e.to_string().contains("IPv6 and IPv4"),
        "{e}"
    );
}

#[test]
fn requested_addresses_of_both_families() {
    let mut a = Allocator::new(pools(&[
        (
            "dual",
            json!({ "addresses": ["10.0.0.0/29", "fd00::/120"] }),
        ),
        ("other", json!({ "addresses": ["fd01::/120"] })),
    ]));
    let both = "fd00::9, 10.0.0.5";
    let dual = |name: &str, policy: &str, list: &str| {
        fam(
            name,
            policy,
            &["IPv4", "IPv6"],
            json!({ "metadata": { "annotations": { "metallb.universe.tf/loadBalancerIPs": list } } }),
        )
    };
    // Listed in any order, handed out in ipFamilies order.
    assert_eq!(
        a.assign(&dual("a", "RequireDualStack", both)).unwrap(),
        ips(&["10.0.0.5", "fd00::9"])
    );
    assert_eq!(
        a.assign(&dual("b", "PreferDualStack", "fd00::10")).unwrap(),
        ips(&["fd00::10"])
    );
    let six = fam(
        "c",
        "SingleStack",
        &["IPv6"],
        json!({ "spec": { "loadBalancerIP": "fd00::11" } }),
    );
    assert_eq!(a.assign(&six).unwrap(), ips(&["fd00::11"]));
    assert_eq!(
        a.assign(&dual("d", "RequireDualStack", "10.0.0.6,fd00::9")),
        Err(AllocError::InUse {
            ip: ip("fd00::9"),
            by: r("d", "a")
        })
    );
    assert_eq!(
        a.assign(&dual("e", "PreferDualStack", "fd02::1")),
        Err(AllocError::NotInAnyPool(ip("fd02::1")))
    );
    assert!(matches!(
        a.assign(&dual("f", "RequireDualStack", "10.0.0.6,fd01::1")),
        Err(AllocError::InvalidRequest(m)) if m.contains("different pools")
    ));
    // Malformed: a family the Service does not have, two of one family,
    // RequireDualStack with one address.
    for (policy, families, list, want) in [
        ("SingleStack", &["IPv4"][..], "fd00::20", "is IPv6"),
        ("SingleStack", &["IPv6"][..], "10.0.0.1", "is IPv4"),
        ("SingleStack", &[][..], "10.0.0.1,fd00::20", "is IPv6"),
        (
            "PreferDualStack",
            &["IPv4", "IPv6"][..],
            "10.0.0.1,10.0.0.2",
            "more than one IPv4",
        ),
        (
            "RequireDualStack",
            &["IPv4", "IPv6"][..],
            "fd00::20",
            "needs one IPv4 and one IPv6",
        ),
    ] {
        let s = svc(
            "d",
            "bad",
            json!({
                "metadata": { "annotations": { "metallb.io/loadBalancerIPs": list } },
                "spec": { "ipFamilyPolicy": policy, "ipFamilies": families }
            }),
        );
        match Request::from_service(&s, BTreeMap::new()) {
            Err(AllocError::InvalidRequest(m)) => assert!(m.contains(want), "{list}: {m}"),
            other => panic!("{policy} {list}: {other:?}"),
        }
    }
}

#[test]
fn dual_stack_services_share_both_addresses_under_one_key() {
    let mut a = Allocator::new(pools(&[(
        "dual",
        json!({ "addresses": ["10.0.0.0/30", "fd00::/126"] }),
    )]));
    let keyed = |name: &str, port: u16| {
        fam(
            name,
            "RequireDualStack",
            &["IPv4", "IPv6"],
            json!({
                "metadata": { "annotations": { "metallb.io/allow-shared-ip": "k" } },
                "spec": { "ports": [{ "port": port, "protocol": "TCP" }] }
            }),
        )
    };
    let web = a.assign(&keyed("web", 80)).unwrap();
    assert_eq!(web, ips(&["10.0.0.0", "fd00::"]));
    assert_eq!(
        a.assign(&keyed("tls", 443)).unwrap(),
        web,
        "shared per address"
    );
    assert_ne!(
        a.assign(&keyed("web2", 80)).unwrap(),
        web,
        "same port: not shared"
    );
    // A single-stack Service under the key shares its family's address.
    let six = fam(
        "dns",
        "SingleStack",
        &["IPv6"],
        json!({
            "metadata": { "annotations": { "metallb.io/allow-shared-ip": "k" } },
            "spec": { "ports": [{ "port": 53, "protocol": "UDP" }] }
        }),
    );
    assert_eq!(a.assign(&six).unwrap(), ips(&["fd00::"]));
}

#[derive(Clone, Debug)]
enum DualOp {
    Assign {
        svc: u8,
        policy: u8,
        v6_first: bool,
        key: bool,
        port: u16,
    },
    Release(u8),
}

fn dual_op() -> impl Strategy<Value = DualOp> {
    prop_oneof![
        (0u8..10, 0u8..4, any::<bool>(), any::<bool>(), 1u16..3).prop_map(
            |(svc, policy, v6_first, key, port)| DualOp::Assign {
                svc,
                policy,
                v6_first,
                key,
                port
            }
        ),
        (0u8..10).prop_map(DualOp::Release),
    ]
}

proptest! {
    /// Over small dual-stack and single-family pools and every policy: each
    /// Service holds at most one address per family, of its families, in its
    /// order, all from one pool; RequireDualStack holds both or nothing;
    /// SingleStack exactly its family; no address is held by Services that
    /// may not share it; a failed assignment leaves the Service nothing.
    #[test]
    fn dual_stack_invariants(ops in proptest::collection::vec(dual_op(), 1..60)) {
        let mut a = Allocator::new(pools(&[
            ("a-dual", json!({ "addresses": ["10.0.0.0/31", "fd00::/127"] })),
            ("b-v4", json!({ "addresses": ["10.0.1.0/32"] })),
            ("c-v6", json!({ "addresses": ["fd01::/127"] })),
        ]));
        let mut reqs: BTreeMap<u8, Request> = BTreeMap::new();
        for o in ops {
            match o {
                DualOp::Assign { svc, policy, v6_first, key, port } => {
                    let policy = ["SingleStack", "PreferDualStack", "RequireDualStack", "SingleStack"][usize::from(policy)];
                    let families = if v6_first { ["IPv6", "IPv4"] } else { ["IPv4", "IPv6"] };
                    let mut extra = json!({ "spec": { "ports": [{ "port": port }] } });
                    if key {
                        merge(&mut extra, json!({ "metadata": { "annotations": { "metallb.io/allow-shared-ip": "k" } } }));
                    }
                    let q = fam(&format!("s{svc}"), policy, &families, extra);
                    if let Ok(got) = a.assign(&q) {
                        prop_assert_eq!(a.addresses_of(&q.service), got.as_slice());
                        reqs.insert(svc, q);
                    } else {
                        prop_assert!(a.addresses_of(&q.service).is_empty());
                        reqs.remove(&svc);
                    }
                }
                DualOp::Release(svc) => {
                    a.release(&r("d", &format!("s{svc}")));
                    reqs.remove(&svc);
                }
            }
            for q in reqs.values() {
                let held = a.addresses_of(&q.service);
                let fams: Vec<Family> = held.iter().map(|ip| Family::of(*ip)).collect();
                let order: Vec<Family> = q.families.iter().copied().filter(|f| fams.contains(f)).collect();
                prop_assert_eq!(&fams, &order, "{:?}: ipFamilies order, one each", q.service);
                let pools: BTreeSet<&str> = held.iter().filter_map(|ip| a.pool_of(*ip)).collect();
                prop_assert_eq!(pools.len(), 1, "{:?}: one pool: {:?}", q.service, held);
                match q.policy {
                    FamilyPolicy::SingleStack => prop_assert_eq!(&fams, &q.families[..1]),
                    FamilyPolicy::RequireDualStack => prop_assert_eq!(fams.len(), 2),
                    FamilyPolicy::PreferDualStack => prop_assert!(!fams.is_empty()),
                }
                for other in reqs.values() {
                    if other.service != q.service
                        && held.iter().any(|ip| a.addresses_of(&other.service).contains(ip))
                    {
                        prop_assert!(Holder::of(q).can_share_with(other));
                    }
                }
            }
        }
    }
}

#[test]
fn a_failed_upgrade_to_require_dual_stack_keeps_the_last_good_addresses() {
    let mut a = Allocator::new(pools(&[(
        "dual",
        json!({ "addresses": ["10.0.0.0/31", "fd00::/128"] }),
    )]));
    let six = fam("six", "SingleStack", &["IPv6"], json!({}));
    assert_eq!(a.assign(&six).unwrap(), ips(&["fd00::"]));
    let web = req("d", "web", json!({}));
    assert_eq!(a.assign(&web).unwrap(), ips(&["10.0.0.0"]));
    let upgraded = fam("web", "RequireDualStack", &["IPv4", "IPv6"], json!({}));
    let e = a.assign(&upgraded).unwrap_err();
    assert_eq!(
        e,
        AllocError::PoolExhausted {
            pools: vec!["dual".into()],
            families: vec![Family::V6],
        }
    );
    assert!(a.addresses_of(&r("d", "web")).is_empty(), "assign released");
    assert!(a.keep_last(&upgraded, &ips(&["10.0.0.0"])));
    assert_eq!(a.addresses_of(&r("d", "web")), ips(&["10.0.0.0"]));
    assert_eq!(
        a.assign(&req("d", "other", json!({}))).unwrap(),
        ips(&["10.0.0.1"]),
        "a kept address is not handed out again"
    );
    // Nothing to keep when the address left the pools or is someone else's.
    assert!(!a.keep_last(&upgraded, &ips(&["10.9.9.9"])));
    assert!(!a.keep_last(&upgraded, &ips(&["10.0.0.1"])));
    assert!(!a.keep_last(&upgraded, &[]));
    // Once an IPv6 address is free the upgrade goes through, keeping IPv4.
    a.release(&r("d", "six"));
    assert_eq!(a.assign(&upgraded).unwrap(), ips(&["10.0.0.0", "fd00::"]));
}

/// A small pool of one family from random bounds: `(entries, is IPv6, avoidBuggyIPs)`.
fn small_pool() -> impl Strategy<Value = (Vec<String>, bool, bool)> {
    (
        any::<bool>(),
        any::<bool>(),
        proptest::collection::vec((0u32..600, 0u32..40), 1..4),
    )
        .prop_map(|(v6, buggy, spans)| {
            // Disjoint ranges: each starts past the previous one's end.
            let mut at = 0u32;
            let mut entries = Vec::new();
            for (gap, len) in spans {
                let (first, last) = (at + gap, at + gap + len);
                at = last + 1;
                let name = |n: u32| {
                    if v6 {
                        format!("fd00::{n:x}")
                    } else {
                        std::net::Ipv4Addr::from(0x0a00_0000 + n).to_string()
                    }
                };
                entries.push(format!("{}-{}", name(first), name(last)));
            }
            (entries, v6, buggy)
        })
}

proptest! {
    /// The bounds arithmetic agrees with walking the addresses one by one:
    /// the count (with avoidBuggyIPs, which spares IPv6) and the lowest free
    /// address whatever is taken.
    #[test]
    fn bounds_arithmetic_matches_enumeration(
        (entries, v6, buggy) in small_pool(),
        taken_bits in proptest::collection::vec(any::<bool>(), 0..700),
    ) {
        let p = Pool::parse(
            "p",
            &spec(json!({ "addresses": entries, "avoidBuggyIPs": buggy })),
        )
        .unwrap();
        let all: Vec<IpAddr> = p.addresses().collect();
        let family = if v6 { Family::V6 } else { Family::V4 };
        prop_assert_eq!(p.size_of(family), all.len() as u128);
        prop_assert_eq!(p.size(), all.len() as u128);
        let taken: BTreeSet<IpAddr> = all
            .iter()
            .zip(&taken_bits)
            .filter(|(_, t)| **t)
            .map(|(ip, _)| *ip)
            .collect();
        let naive = all.iter().copied().find(|ip| !taken.contains(ip));
        prop_assert_eq!(p.first_free(family, |ip| taken.contains(&ip)), naive);
        let other = if v6 { Family::V4 } else { Family::V6 };
        prop_assert_eq!(p.first_free(other, |_| false), None);
        for ip in &all {
            prop_assert!(p.contains(*ip));
        }
    }
}
