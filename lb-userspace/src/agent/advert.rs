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
//! - `interfaces` (none = any) limits an advertisement to nodes whose agent
//!   serves one of the listed interfaces. An agent serves the one interface
//!   it was started on and publishes its name on its Lease
//!   ([`INTERFACE_ANNOTATION`]); a node whose interface is unknown (an agent
//!   that has not renewed yet) does not match a list (fail closed: never two
//!   announcers, at worst none until the Lease arrives).

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
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

/// Nodes that may announce `vip`; `None` means any node. `pools` come from
/// [`parse_pools`]; `interfaces` maps node names to the interface their
/// agent serves.
pub fn allowed_nodes(
    vip: Ipv4Addr,
    pools: &[(&IPAddressPool, Pool)],
    ads: &[L2Advertisement],
    nodes: &[Node],
    interfaces: &BTreeMap<String, String>,
) -> Option<BTreeSet<String>> {
    if ads.is_empty() {
        return None;
    }
    let Some((pool, _)) = pools.iter().find(|(_, q)| q.contains(vip)) else {
        return Some(BTreeSet::new());
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
        if !selects {
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
                allowed.insert(name);
            }
        }
    }
    Some(allowed)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

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
        allowed_nodes(vip, &parse_pools(pools), ads, nodes, &ifs)
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
            allowed_nodes(vip, &parse_pools(&pools), &[ad(spec)], &nodes, &ifs)
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
}
