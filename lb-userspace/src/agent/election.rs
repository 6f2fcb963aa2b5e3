//! Who answers ARP for each VIP: exactly one eligible node, chosen by
//! rendezvous (highest-random-weight) hashing of `node # vip` over the
//! eligible nodes. Every agent computes the same answer from the same view,
//! no per-service coordination is needed, and when a node goes away only
//! the VIPs it owned move. Liveness comes from one Lease per node, so API
//! writes grow with nodes, not with services.
//!
//! A node is eligible for a VIP when it is live (its Lease is fresh), its
//! Node is Ready, it matches the advertisement's node selector, and — for
//! `externalTrafficPolicy: Local` — it runs a ready endpoint of every Local
//! service on that VIP (if no node runs one for all of them, any node with
//! one of them will do, so the VIP still answers).
//!
//! IPv4 and IPv6 VIPs are elected alike (`node # vip` with the address as
//! written, so an IPv4 VIP's owner is what it always was); a dual-stack
//! Service's two VIPs are two elections and may land on different nodes.
//!
//! When an advertisement prefers some of the eligible nodes
//! (`preferredNodeSelectors`), the hash runs over those alone; the others
//! take over only when no preferred node is eligible.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use crate::plan::maglev::stable_hash;

/// Seed of the election hash (any fixed value; all agents must agree).
const SEED: u64 = 0x6f6e_6568_6f70_4c32; // "onehopL2"

/// The weight of `node` for `vip`; the highest wins.
pub fn score(node: &str, vip: impl Into<IpAddr>) -> u64 {
    let vip: IpAddr = vip.into();
    stable_hash(SEED, format!("{node}#{vip}").as_bytes())
}

/// The winner among `eligible` (ties, astronomically unlikely, go to the
/// smaller name so the answer stays deterministic).
pub fn owner<'a>(
    vip: impl Into<IpAddr>,
    eligible: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let vip: IpAddr = vip.into();
    eligible
        .into_iter()
        .max_by(|a, b| score(a, vip).cmp(&score(b, vip)).then_with(|| b.cmp(a)))
}

/// What the election needs to know about one Service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    pub vips: Vec<IpAddr>,
    /// `externalTrafficPolicy: Local`.
    pub local_only: bool,
    /// Nodes running a usable endpoint of the service.
    pub endpoint_nodes: BTreeSet<String>,
    /// Nodes the service's advertisement allows (`None`: all).
    pub allowed_nodes: Option<BTreeSet<String>>,
    /// Nodes the service's advertisement prefers (empty: no preference).
    pub preferred_nodes: BTreeSet<String>,
}

/// The owner of every VIP, given the nodes that are live and ready.
pub fn owners(live: &BTreeSet<String>, services: &[Candidate]) -> BTreeMap<IpAddr, String> {
    let mut per_vip: BTreeMap<IpAddr, Vec<&Candidate>> = BTreeMap::new();
    for c in services {
        for vip in &c.vips {
            per_vip.entry(*vip).or_default().push(c);
        }
    }
    let mut out = BTreeMap::new();
    for (vip, cands) in per_vip {
        let mut pool: BTreeSet<&str> = live.iter().map(String::as_str).collect();
        for c in &cands {
            if let Some(allowed) = &c.allowed_nodes {
                pool.retain(|n| allowed.contains(*n));
            }
        }
        let local: Vec<&&Candidate> = cands.iter().filter(|c| c.local_only).collect();
        if !local.is_empty() {
            let all: BTreeSet<&str> = pool
                .iter()
                .copied()
                .filter(|n| local.iter().all(|c| c.endpoint_nodes.contains(*n)))
                .collect();
            pool = if all.is_empty() {
                pool.iter()
                    .copied()
                    .filter(|n| local.iter().any(|c| c.endpoint_nodes.contains(*n)))
                    .collect()
            } else {
                all
            };
        }
        let preferred: BTreeSet<&str> = pool
            .iter()
            .copied()
            .filter(|n| cands.iter().any(|c| c.preferred_nodes.contains(*n)))
            .collect();
        if !preferred.is_empty() {
            pool = preferred;
        }
        if let Some(winner) = owner(vip, pool) {
            out.insert(vip, winner.to_owned());
        }
    }
    out
}

/// The VIPs `node` must announce.
pub fn announced_by(
    node: &str,
    live: &BTreeSet<String>,
    services: &[Candidate],
) -> BTreeSet<IpAddr> {
    owners(live, services)
        .into_iter()
        .filter(|(_, n)| n == node)
        .map(|(vip, _)| vip)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn names(n: usize) -> BTreeSet<String> {
        (1..=n).map(|i| format!("node{i}")).collect()
    }

    fn vip(i: u32) -> IpAddr {
        IpAddr::V4(Ipv4Addr::from(0xc0a8_3200 + i))
    }

    fn cluster(vips: u32) -> Vec<Candidate> {
        (0..vips)
            .map(|i| Candidate {
                vips: vec![vip(i)],
                local_only: false,
                endpoint_nodes: BTreeSet::new(),
                allowed_nodes: None,
                preferred_nodes: BTreeSet::new(),
            })
            .collect()
    }

    #[test]
    fn exactly_one_owner_per_vip_and_every_node_agrees() {
        let live = names(5);
        let svcs = cluster(200);
        let o = owners(&live, &svcs);
        assert_eq!(o.len(), 200);
        let mut union = BTreeSet::new();
        for n in &live {
            let mine = announced_by(n, &live, &svcs);
            assert!(union.is_disjoint(&mine), "two nodes announce the same VIP");
            union.extend(mine);
        }
        assert_eq!(union.len(), 200, "some VIP is announced by nobody");
    }

    #[test]
    fn losing_a_node_moves_only_its_vips() {
        let live = names(6);
        let svcs = cluster(600);
        let before = owners(&live, &svcs);
        let mut fewer = live.clone();
        fewer.remove("node3");
        let after = owners(&fewer, &svcs);
        for (v, n) in &before {
            if n == "node3" {
                assert_ne!(after[v], "node3");
            } else {
                assert_eq!(&after[v], n, "{v} moved although its owner stayed");
            }
        }
    }

    #[test]
    fn vips_spread_evenly() {
        let live = names(4);
        let o = owners(&live, &cluster(4000));
        let mut per: BTreeMap<&str, usize> = BTreeMap::new();
        for n in o.values() {
            *per.entry(n).or_default() += 1;
        }
        for (n, c) in per {
            assert!((850..=1150).contains(&c), "{n} owns {c} of 4000 VIPs");
        }
    }

    /// IPv6 VIPs are elected like IPv4 ones: one owner each, the same on
    /// every node, spread over the nodes; the two VIPs of a dual-stack
    /// Service are two elections.
    #[test]
    fn ipv6_vips_have_one_owner_each() {
        let live = names(3);
        let v6 = |i: u16| IpAddr::V6(std::net::Ipv6Addr::new(0xfd00, 0x60, 0, 0, 0, 0, 0, i));
        let dual: Vec<Candidate> = (0..300)
            .map(|i| Candidate {
                vips: vec![vip(u32::from(i)), v6(i)],
                ..cluster(1)[0].clone()
            })
            .collect();
        let o = owners(&live, &dual);
        assert_eq!(o.len(), 600);
        for i in 0..300 {
            assert_eq!(
                o[&v6(i)],
                owner(v6(i), live.iter().map(String::as_str)).unwrap()
            );
        }
        for n in &live {
            let c = (0..300).filter(|&i| o[&v6(i)] == *n).count();
            assert!((60..=140).contains(&c), "{n} owns {c} of 300 IPv6 VIPs");
        }
        // The IPv4 half is elected as it always was.
        let v4_only = owners(&live, &cluster(300));
        assert!(v4_only.iter().all(|(v, n)| o[v] == *n));
    }

    #[test]
    fn local_policy_only_nodes_with_endpoints() {
        let live = names(4);
        let svc = Candidate {
            vips: vec![vip(1)],
            local_only: true,
            endpoint_nodes: BTreeSet::from(["node2".to_owned(), "node4".to_owned()]),
            allowed_nodes: None,
            preferred_nodes: BTreeSet::new(),
        };
        for i in 0..50 {
            let mut s = svc.clone();
            s.vips = vec![vip(i)];
            let o = owners(&live, &[s]);
            assert!(["node2", "node4"].contains(&o[&vip(i)].as_str()));
        }
        let none = Candidate {
            endpoint_nodes: BTreeSet::new(),
            ..svc
        };
        assert!(
            owners(&live, &[none]).is_empty(),
            "no local endpoint anywhere: nobody announces"
        );
    }

    #[test]
    fn shared_vip_prefers_nodes_with_endpoints_of_every_local_service() {
        let live = names(3);
        let a = Candidate {
            vips: vec![vip(7)],
            local_only: true,
            endpoint_nodes: BTreeSet::from(["node1".to_owned(), "node2".to_owned()]),
            allowed_nodes: None,
            preferred_nodes: BTreeSet::new(),
        };
        let b = Candidate {
            endpoint_nodes: BTreeSet::from(["node2".to_owned(), "node3".to_owned()]),
            ..a.clone()
        };
        assert_eq!(owners(&live, &[a.clone(), b])[&vip(7)], "node2");
        let c = Candidate {
            endpoint_nodes: BTreeSet::from(["node3".to_owned()]),
            ..a.clone()
        };
        let o = owners(&live, &[a, c]);
        assert!(["node1", "node2", "node3"].contains(&o[&vip(7)].as_str()));
    }

    #[test]
    fn node_selector_and_dead_nodes_are_respected() {
        let mut live = names(3);
        let svc = Candidate {
            vips: vec![vip(9)],
            local_only: false,
            endpoint_nodes: BTreeSet::new(),
            allowed_nodes: Some(BTreeSet::from(["node3".to_owned()])),
            preferred_nodes: BTreeSet::new(),
        };
        assert_eq!(owners(&live, std::slice::from_ref(&svc))[&vip(9)], "node3");
        live.remove("node3");
        assert!(owners(&live, &[svc]).is_empty());
    }

    #[test]
    fn preferred_nodes_win_while_one_is_eligible() {
        let mut live = names(5);
        let preferred = BTreeSet::from(["node2".to_owned(), "node4".to_owned()]);
        let svcs: Vec<Candidate> = cluster(100)
            .into_iter()
            .map(|c| Candidate {
                preferred_nodes: preferred.clone(),
                ..c
            })
            .collect();
        let o = owners(&live, &svcs);
        assert_eq!(o.len(), 100);
        assert!(
            o.values().all(|n| preferred.contains(n)),
            "a non-preferred node won: {o:?}"
        );
        // Both preferred nodes get some: the hash still spreads among them.
        assert!(o.values().any(|n| n == "node2") && o.values().any(|n| n == "node4"));
        // The same answer from any order of the inputs (every node agrees).
        let mut reversed = svcs.clone();
        reversed.reverse();
        assert_eq!(owners(&live, &reversed), o);
        // The preferred nodes gone: the others take over, as without a preference.
        live.remove("node2");
        live.remove("node4");
        let plain = cluster(100);
        assert_eq!(owners(&live, &svcs), owners(&live, &plain));
        // A preference for a node the advertisement does not allow is no preference.
        let live = names(3);
        let odd = Candidate {
            allowed_nodes: Some(BTreeSet::from(["node1".to_owned(), "node3".to_owned()])),
            preferred_nodes: BTreeSet::from(["node2".to_owned()]),
            ..cluster(1).remove(0)
        };
        let winner = &owners(&live, &[odd])[&vip(0)];
        assert!(["node1", "node3"].contains(&winner.as_str()), "{winner}");
    }

    #[test]
    fn score_is_stable_across_processes() {
        // Pinned: every agent must compute the same weights, forever.
        assert_eq!(score("node1", vip(0)), score("node1", vip(0)));
        assert_ne!(score("node1", vip(0)), score("node2", vip(0)));
        let pinned = owner(vip(0), ["node1", "node2", "node3"]);
        assert_eq!(
            pinned,
            owner(vip(0), ["node3", "node1", "node2"]),
            "order must not matter"
        );
        // Concrete values, so that an agent version computing other weights
        // (a new seed, hash or key format) fails here instead of splitting
        // the announcements during a rolling upgrade. Derived apart from
        // this code by a Python one-off restating the hash: FNV-1a 64
        // (offset 0xcbf29ce484222325, prime 0x100000001b3) over the seed's
        // 8 little-endian bytes then b"<node>#<vip>", then MurmurHash3's
        // fmix64; the owner is the node with the highest value.
        assert_eq!(score("node1", vip(0)), 0x0687_d1bb_fce7_da8a);
        assert_eq!(score("node2", vip(0)), 0xc2f6_aeef_a76d_3705);
        assert_eq!(score("node3", vip(0)), 0xfb11_ae55_6370_722a);
        assert_eq!(pinned, Some("node3"));
        let three = ["node1", "node2", "node3"];
        let expected = [
            "node3", "node3", "node3", "node2", "node1", "node3", "node2", "node2", "node1",
            "node3", "node3", "node3",
        ];
        for (i, want) in (0..).zip(expected) {
            assert_eq!(owner(vip(i), three), Some(want), "owner of {}", vip(i));
        }
        let five = ["worker-a", "worker-b", "worker-c", "worker-d", "worker-e"];
        for (v, want) in [
            (Ipv4Addr::new(10, 0, 0, 1), "worker-c"),
            (Ipv4Addr::new(192, 0, 2, 10), "worker-b"),
            (Ipv4Addr::new(198, 51, 100, 7), "worker-a"),
            (Ipv4Addr::new(203, 0, 113, 200), "worker-c"),
        ] {
            assert_eq!(owner(v, five), Some(want), "owner of {v}");
        }
    }
}
