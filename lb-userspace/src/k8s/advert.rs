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
//! - `interfaces` is not applied yet: the agent serves the one interface it
//!   was started on.

use std::{collections::BTreeSet, net::Ipv4Addr};

use k8s_openapi::api::core::v1::Node;
use kube::ResourceExt as _;

use super::{
    alloc::Pool,
    crd::{IPAddressPool, L2Advertisement},
    selector,
};

/// Nodes that may announce `vip`; `None` means any node.
pub fn allowed_nodes(
    vip: Ipv4Addr,
    pools: &[IPAddressPool],
    ads: &[L2Advertisement],
    nodes: &[Node],
) -> Option<BTreeSet<String>> {
    if ads.is_empty() {
        return None;
    }
    let Some(pool) = pools
        .iter()
        .find(|p| Pool::parse(&p.name_any(), &p.spec).is_ok_and(|q| q.contains(vip)))
    else {
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
            // An invalid selector selects nothing (fail closed).
            if selector::any_matches(&s.node_selectors, n.labels()).unwrap_or(false) {
                allowed.insert(n.name_any());
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
            allowed_nodes(vip, &pools, &[], &nodes),
            None,
            "no advertisement: any node"
        );
        assert_eq!(
            allowed_nodes(vip, &pools, &[ad(&json!({}))], &nodes),
            Some(names(&["n1", "n2", "n3"])),
            "empty spec: all pools, all nodes"
        );
        let by_name = ad(
            &json!({ "ipAddressPools": ["lan"], "nodeSelectors": [{ "matchLabels": { "zone": "a" } }] }),
        );
        assert_eq!(
            allowed_nodes(vip, &pools, std::slice::from_ref(&by_name), &nodes),
            Some(names(&["n1"]))
        );
        let by_label = ad(
            &json!({ "ipAddressPoolSelectors": [{ "matchLabels": { "tier": "edge" } }], "nodeSelectors": [{ "matchLabels": { "zone": "b" } }] }),
        );
        assert_eq!(
            allowed_nodes(vip, &pools, &[by_name, by_label], &nodes),
            Some(names(&["n1", "n2"])),
            "advertisements add up"
        );
        let elsewhere = ad(&json!({ "ipAddressPools": ["other"] }));
        assert_eq!(
            allowed_nodes(vip, &pools, &[elsewhere], &nodes),
            Some(names(&[])),
            "pool not advertised: not announced"
        );
        let outside: Ipv4Addr = "172.16.0.1".parse().unwrap();
        assert_eq!(
            allowed_nodes(outside, &pools, &[ad(&json!({}))], &nodes),
            Some(names(&[])),
            "address in no pool"
        );
        let bad = ad(
            &json!({ "nodeSelectors": [{ "matchExpressions": [{ "key": "zone", "operator": "Bogus" }] }] }),
        );
        assert_eq!(
            allowed_nodes(vip, &pools, &[bad], &nodes),
            Some(names(&[])),
            "invalid selector selects nothing"
        );
    }
}
