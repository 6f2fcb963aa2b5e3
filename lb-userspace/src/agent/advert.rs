//! `L2Advertisement`s (MetalLB semantics): which addresses are announced at
//! all, and from which nodes. Pure; feeds [`super::election::Candidate`].
//!
//! - No `L2Advertisement` in the cluster: every address may be announced
//!   from any eligible node (a simple install needs no advertisement).
//! - Otherwise an address is announced only if an advertisement selects its
//!   pool (`ipAddressPools` by name, `ipAddressPoolSelectors` by labels, or
//!   neither = every pool), and only from nodes matching that
//!   advertisement's `nodeSelectors` (none = every node); several selecting
//!   advertisements add up. An address in no pool is not announced.
//! - `serviceSelectors` (none = every Service) limits an advertisement to
//!   the Services whose labels match one of them.
//! - `preferredNodeSelectors` (none = no preference): among the nodes an
//!   advertisement allows, those matching one of them are preferred; the
//!   election picks among preferred nodes when any is eligible, and among
//!   all allowed nodes otherwise. Every agent computes the same sets.
//! - `interfaces` (none = any) limits an advertisement to nodes whose agent
//!   serves one of the listed interfaces. An agent serves the one interface
//!   it was started on and publishes its name on its Lease
//!   ([`INTERFACE_ANNOTATION`]); a node whose interface is unknown (an agent
//!   that has not renewed yet) does not match a list (fail closed: never two
//!   announcers, at worst none until the Lease arrives).

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use k8s_openapi::api::core::v1::Node;
use kube::ResourceExt as _;

use crate::k8s::{
    crd::{IPAddressPool, L2Advertisement},
    pool::Pool,
    selector,
};

/// Annotation on a node's Lease naming the interface its agent serves.
pub const INTERFACE_ANNOTATION: &str = "onehop.io/interface";

/// The valid pools with their parsed address ranges, parsed once per pass
/// (not once per Service).
pub fn parse_pools(pools: &[IPAddressPool]) -> Vec<(&IPAddressPool, Pool)> {
    pools
        .iter()
        .filter_map(|p| Pool::parse(&p.name_any(), &p.spec).ok().map(|q| (p, q)))
        .collect()
}

/// Where a Service's address may be announced from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reach {
    /// Nodes that may announce; `None` means any node.
    pub allowed: Option<BTreeSet<String>>,
    /// Allowed nodes an advertisement prefers (empty: no preference).
    pub preferred: BTreeSet<String>,
}

/// Where `vip` of a Service labelled `service_labels` may be announced
/// from. `pools` come from [`parse_pools`]; `interfaces` maps node names to
/// the interface their agent serves.
pub fn reach(
    vip: IpAddr,
    service_labels: &BTreeMap<String, String>,
    pools: &[(&IPAddressPool, Pool)],
    ads: &[L2Advertisement],
    nodes: &[Node],
    interfaces: &BTreeMap<String, String>,
) -> Reach {
    if ads.is_empty() {
        return Reach::default();
    }
    let mut out = Reach {
        allowed: Some(BTreeSet::new()),
        preferred: BTreeSet::new(),
    };
    // Pools hold ranges of both families; a range covers only addresses of
    // its own family (an IPv6 VIP is never "in" an IPv4 range).
    let Some((pool, _)) = pools.iter().find(|(_, q)| q.contains(vip)) else {
        return out;
    };
    let pool_name = pool.name_any();
    let pool_labels = pool.labels().clone();
    let mut allowed = BTreeSet::new();
    for ad in ads {
        let s = &ad.spec;
        let selects = (s.ip_address_pools.is_empty() && s.ip_address_pool_selectors.is_empty())
            || s.ip_address_pools.contains(&pool_name)
            || s.ip_address_pool_selectors
                .iter()
                .any(|sel| selector::matches(sel, &pool_labels).unwrap_or(false));
        // An invalid selector selects nothing (fail closed).
        let for_service = s.service_selectors.is_empty()
            || selector::any_matches(&s.service_selectors, service_labels).unwrap_or(false);
        if !selects || !for_service {
            continue;
        }
        for n in nodes {
            let name = n.name_any();
            let on_interface = s.interfaces.is_empty()
                || interfaces
                    .get(&name)
                    .is_some_and(|i| s.interfaces.contains(i));
            // An invalid selector selects nothing (fail closed).
            if on_interface && selector::any_matches(&s.node_selectors, n.labels()).unwrap_or(false)
            {
                let preferred = !s.preferred_node_selectors.is_empty()
                    && selector::any_matches(&s.preferred_node_selectors, n.labels())
                        .unwrap_or(false);
                if preferred {
                    out.preferred.insert(name.clone());
                }
                allowed.insert(name);
            }
        }
    }
    out.allowed = Some(allowed);
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use std::net::Ipv4Addr;

    fn pool(name: &str, addresses: &[&str], labels: &serde_json::Value) -> IPAddressPool {
        serde_json::from_value(json!({
            "apiVersion": "onehop.io/v1beta1", "kind": "IPAddressPool",
            "metadata": { "name": name, "namespace": "onehop-system", "labels": labels },
            "spec": { "addresses": addresses }
        }))
        .unwrap()
    }

    fn ad(spec: &serde_json::Value) -> L2Advertisement {
        serde_json::from_value(json!({
            "apiVersion": "onehop.io/v1beta1", "kind": "L2Advertisement",
            "metadata": { "name": "ad", "namespace": "onehop-system" },
            "spec": spec
        }))
        .unwrap()
    }

    fn node(name: &str, labels: &serde_json::Value) -> Node {
        serde_json::from_value(json!({ "metadata": { "name": name, "labels": labels } })).unwrap()
    }

    /// Every test node's agent serves `eth0`.
    fn on_eth0(
        vip: Ipv4Addr,
        pools: &[IPAddressPool],
        ads: &[L2Advertisement],
        nodes: &[Node],
    ) -> Option<BTreeSet<String>> {
        let ifs = nodes
            .iter()
            .map(|n| (n.name_any(), "eth0".to_owned()))
            .collect();
        reach(
            vip.into(),
            &BTreeMap::new(),
            &parse_pools(pools),
            ads,
            nodes,
            &ifs,
        )
        .allowed
    }

    fn names(v: &[&str]) -> BTreeSet<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn advertisement_rules() {
        let vip: Ipv4Addr = "192.168.50.200".parse().unwrap();
        let pools = [
            pool("lan", &["192.168.50.200/30"], &json!({ "tier": "edge" })),
            pool("other", &["10.9.0.0/24"], &json!({})),
        ];
        let nodes = [
            node("n1", &json!({ "zone": "a" })),
            node("n2", &json!({ "zone": "b" })),
            node("n3", &json!({})),
        ];
        assert_eq!(
            on_eth0(vip, &pools, &[], &nodes),
            None,
            "no advertisement: any node"
        );
        assert_eq!(
            on_eth0(vip, &pools, &[ad(&json!({}))], &nodes),
            Some(names(&["n1", "n2", "n3"])),
            "empty spec: all pools, all nodes"
        );
        let by_name = ad(
            &json!({ "ipAddressPools": ["lan"], "nodeSelectors": [{ "matchLabels": { "zone": "a" } }] }),
        );
        assert_eq!(
            on_eth0(vip, &pools, std::slice::from_ref(&by_name), &nodes),
            Some(names(&["n1"]))
        );
        let by_label = ad(
            &json!({ "ipAddressPoolSelectors": [{ "matchLabels": { "tier": "edge" } }], "nodeSelectors": [{ "matchLabels": { "zone": "b" } }] }),
        );
        assert_eq!(
            on_eth0(vip, &pools, &[by_name, by_label], &nodes),
            Some(names(&["n1", "n2"])),
            "advertisements add up"
        );
        let elsewhere = ad(&json!({ "ipAddressPools": ["other"] }));
        assert_eq!(
            on_eth0(vip, &pools, &[elsewhere], &nodes),
            Some(names(&[])),
            "pool not advertised: not announced"
        );
        let outside: Ipv4Addr = "172.16.0.1".parse().unwrap();
        assert_eq!(
            on_eth0(outside, &pools, &[ad(&json!({}))], &nodes),
            Some(names(&[])),
            "address in no pool"
        );
        let bad = ad(
            &json!({ "nodeSelectors": [{ "matchExpressions": [{ "key": "zone", "operator": "Bogus" }] }] }),
        );
        assert_eq!(
            on_eth0(vip, &pools, &[bad], &nodes),
            Some(names(&[])),
            "invalid selector selects nothing"
        );
    }

    #[test]
    fn interfaces_limit_the_nodes() {
        let vip: Ipv4Addr = "192.168.50.200".parse().unwrap();
        let pools = [pool("lan", &["192.168.50.200/30"], &json!({}))];
        let nodes = [
            node("n1", &json!({})),
            node("n2", &json!({})),
            node("n3", &json!({})),
        ];
        let ifs: BTreeMap<String, String> = [("n1", "eth0"), ("n2", "bond0")]
            .into_iter()
            .map(|(n, i)| (n.to_owned(), i.to_owned()))
            .collect();
        let allowed = |spec: &serde_json::Value| {
            reach(
                vip.into(),
                &BTreeMap::new(),
                &parse_pools(&pools),
                &[ad(spec)],
                &nodes,
                &ifs,
            )
            .allowed
        };
        assert_eq!(
            allowed(&json!({ "interfaces": ["bond0"] })),
            Some(names(&["n2"]))
        );
        assert_eq!(
            allowed(&json!({ "interfaces": ["eth0", "bond0"] })),
            Some(names(&["n1", "n2"])),
            "n3's interface is unknown: it never matches a list"
        );
        assert_eq!(
            allowed(&json!({ "interfaces": ["eth9"] })),
            Some(names(&[])),
            "no node serves the interface"
        );
        assert_eq!(
            allowed(&json!({})),
            Some(names(&["n1", "n2", "n3"])),
            "no list: any interface, even an unknown one"
        );
        assert_eq!(
            allowed(
                &json!({ "interfaces": ["eth0"], "nodeSelectors": [{ "matchLabels": { "zone": "a" } }] })
            ),
            Some(names(&[])),
            "interfaces and node selectors must both match"
        );
    }

    fn labels(v: &serde_json::Value) -> BTreeMap<String, String> {
        serde_json::from_value(v.clone()).unwrap()
    }

    #[test]
    fn service_selectors_limit_an_advertisement_to_matching_services() {
        let vip: Ipv4Addr = "192.168.50.200".parse().unwrap();
        let pools = [pool("lan", &["192.168.50.200/30"], &json!({}))];
        let nodes = [
            node("n1", &json!({ "zone": "a" })),
            node("n2", &json!({ "zone": "b" })),
        ];
        let ifs = nodes
            .iter()
            .map(|n| (n.name_any(), "eth0".to_owned()))
            .collect();
        let ads = [
            ad(&json!({
                "serviceSelectors": [{ "matchLabels": { "app": "web" } }],
                "nodeSelectors": [{ "matchLabels": { "zone": "a" } }]
            })),
            ad(&json!({
                "serviceSelectors": [{ "matchExpressions": [{ "key": "app", "operator": "In", "values": ["db"] }] }],
                "nodeSelectors": [{ "matchLabels": { "zone": "b" } }]
            })),
        ];
        let allowed = |svc: &serde_json::Value| {
            reach(
                vip.into(),
                &labels(svc),
                &parse_pools(&pools),
                &ads,
                &nodes,
                &ifs,
            )
            .allowed
        };
        assert_eq!(allowed(&json!({ "app": "web" })), Some(names(&["n1"])));
        assert_eq!(allowed(&json!({ "app": "db" })), Some(names(&["n2"])));
        assert_eq!(
            allowed(&json!({ "app": "cache" })),
            Some(names(&[])),
            "no advertisement applies to the Service: not announced"
        );
        let bad = [ad(
            &json!({ "serviceSelectors": [{ "matchExpressions": [{ "key": "app", "operator": "Bogus" }] }] }),
        )];
        assert_eq!(
            reach(
                vip.into(),
                &labels(&json!({ "app": "web" })),
                &parse_pools(&pools),
                &bad,
                &nodes,
                &ifs
            )
            .allowed,
            Some(names(&[])),
            "an invalid service selector selects nothing"
        );
    }

    #[test]
    fn preferred_node_selectors_mark_allowed_nodes_only() {
        let vip: Ipv4Addr = "192.168.50.200".parse().unwrap();
        let pools = [pool("lan", &["192.168.50.200/30"], &json!({}))];
        let nodes = [
            node("n1", &json!({ "zone": "a", "fast": "yes" })),
            node("n2", &json!({ "zone": "b", "fast": "yes" })),
            node("n3", &json!({ "zone": "a" })),
        ];
        let ifs = nodes
            .iter()
            .map(|n| (n.name_any(), "eth0".to_owned()))
            .collect();
        let ads = [ad(&json!({
            "nodeSelectors": [{ "matchLabels": { "zone": "a" } }],
            "preferredNodeSelectors": [{ "matchLabels": { "fast": "yes" } }]
        }))];
        let r = reach(
            vip.into(),
            &BTreeMap::new(),
            &parse_pools(&pools),
            &ads,
            &nodes,
            &ifs,
        );
        assert_eq!(r.allowed, Some(names(&["n1", "n3"])));
        assert_eq!(
            r.preferred,
            names(&["n1"]),
            "n2 matches the preference but is not allowed"
        );
        let plain = [ad(&json!({}))];
        let r = reach(
            vip.into(),
            &BTreeMap::new(),
            &parse_pools(&pools),
            &plain,
            &nodes,
            &ifs,
        );
        assert!(r.preferred.is_empty());
    }

    /// A dual-stack pool covers its IPv6 addresses too: an advertisement
    /// selecting it decides where they are announced; an IPv6 address in no
    /// pool (or only "in" an IPv4 range's numbers) is announced nowhere.
    #[test]
    fn ipv6_addresses_of_a_dual_stack_pool_follow_its_advertisement() {
        let pools = [
            pool(
                "dual",
                &["192.168.50.200/30", "fd00:60::200/126"],
                &json!({}),
            ),
            pool("v4", &["0.0.0.0/1"], &json!({})),
        ];
        let nodes = [node("n1", &json!({ "zone": "a" })), node("n2", &json!({}))];
        let ads = [ad(&json!({
            "ipAddressPools": ["dual"],
            "nodeSelectors": [{ "matchLabels": { "zone": "a" } }]
        }))];
        let allowed = |vip: &str| {
            reach(
                vip.parse().unwrap(),
                &BTreeMap::new(),
                &parse_pools(&pools),
                &ads,
                &nodes,
                &BTreeMap::new(),
            )
            .allowed
        };
        assert_eq!(allowed("fd00:60::203"), Some(names(&["n1"])));
        assert_eq!(allowed("192.168.50.201"), Some(names(&["n1"])));
        assert_eq!(allowed("fd00:60::204"), Some(names(&[])));
        assert_eq!(allowed("::1:2"), Some(names(&[])), "not in the IPv4 /1");
    }
}
