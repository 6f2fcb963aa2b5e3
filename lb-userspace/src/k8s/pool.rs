//! MetalLB-format address pools (`IPAddressPool` specs) parsed and
//! validated: the controller allocates from them, and the agent's election
//! reads them to find which advertisements cover an address.

use std::{collections::BTreeMap, net::Ipv4Addr};

use crate::{
    k8s::crd::{PoolSpec, ServiceAllocation},
    plan::model::Cidr,
};

/// A validated pool.
#[derive(Clone, Debug, PartialEq)]
pub struct Pool {
    pub name: String,
    /// Inclusive `[first, last]` ranges, sorted, as integers.
    pub(crate) ranges: Vec<(u32, u32)>,
    pub(crate) auto_assign: bool,
    pub(crate) avoid_buggy: bool,
    pub(crate) allocation: ServiceAllocation,
    /// Entries left out because they are IPv6 (not served yet): MetalLB's
    /// dual-stack pools still serve their IPv4 part, with a warning.
    pub ipv6_ignored: Vec<String>,
}

fn parse_range(raw: &str) -> Result<(u32, u32), String> {
    let raw = raw.trim();
    if let Some((a, b)) = raw.split_once('-') {
        let a: Ipv4Addr = a
            .trim()
            .parse()
            .map_err(|_| format!("{raw:?}: {a:?} is not an IPv4 address"))?;
        let b: Ipv4Addr = b
            .trim()
            .parse()
            .map_err(|_| format!("{raw:?}: {b:?} is not an IPv4 address"))?;
        let (a, b) = (u32::from(a), u32::from(b));
        if a > b {
            return Err(format!("{raw:?}: the range is backwards"));
        }
        return Ok((a, b));
    }
    if !raw.contains('/') {
        return Err(format!("{raw:?} is neither a CIDR nor a range"));
    }
    Ok(Cidr::parse_masked(raw)?.bounds())
}

impl Pool {
    pub fn parse(name: &str, spec: &PoolSpec) -> Result<Self, String> {
        if spec.addresses.is_empty() {
            return Err("no addresses".into());
        }
        let mut ranges = Vec::new();
        let mut ipv6_ignored = Vec::new();
        for a in &spec.addresses {
            if a.contains(':') {
                ipv6_ignored.push(a.trim().to_owned());
                continue;
            }
            ranges.push(parse_range(a)?);
        }
        if ranges.is_empty() {
            return Err(format!(
                "no IPv4 addresses (IPv6 is not supported yet: {})",
                ipv6_ignored.join(", ")
            ));
        }
        ranges.sort_unstable();
        for w in ranges.windows(2) {
            if w[1].0 <= w[0].1 {
                return Err("addresses overlap within the pool".into());
            }
        }
        Ok(Self {
            name: name.to_owned(),
            ranges,
            auto_assign: spec.auto_assign.unwrap_or(true),
            avoid_buggy: spec.avoid_buggy_ips.unwrap_or(false),
            allocation: spec.service_allocation.clone().unwrap_or_default(),
            ipv6_ignored,
        })
    }

    /// What to warn about a pool that is served only in part (`None`:
    /// served whole).
    pub fn partial_warning(&self) -> Option<String> {
        (!self.ipv6_ignored.is_empty()).then(|| {
            format!(
                "IPv6 is not supported yet: serving the IPv4 addresses only, ignoring {}",
                self.ipv6_ignored.join(", ")
            )
        })
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let ip = u32::from(ip);
        self.ranges.iter().any(|(a, b)| (*a..=*b).contains(&ip))
    }

    pub(crate) fn usable(&self, ip: u32) -> bool {
        !(self.avoid_buggy && matches!(ip & 0xff, 0 | 255))
    }

    /// Addresses in order (lazily: pools can be large).
    pub(crate) fn addresses(&self) -> impl Iterator<Item = Ipv4Addr> + '_ {
        self.ranges
            .iter()
            .flat_map(|(a, b)| *a..=*b)
            .filter(|ip| self.usable(*ip))
            .map(Ipv4Addr::from)
    }

    /// Usable addresses, counted without walking them (pools can be /8s).
    pub fn size(&self) -> u64 {
        // Addresses in [0, n] ending in .0 or .255.
        let buggy_upto = |n: u64| (n / 256) * 2 + 1 + u64::from(n % 256 == 255);
        self.ranges
            .iter()
            .map(|(a, b)| {
                let (a, b) = (u64::from(*a), u64::from(*b));
                let all = b - a + 1;
                if !self.avoid_buggy {
                    return all;
                }
                let below = if a == 0 { 0 } else { buggy_upto(a - 1) };
                all - (buggy_upto(b) - below)
            })
            .sum()
    }

    pub(crate) fn overlaps(&self, other: &Pool) -> bool {
        self.ranges
            .iter()
            .any(|(a, b)| other.ranges.iter().any(|(c, d)| a <= d && c <= b))
    }
}

/// Validates pools; a pool overlapping an earlier one (by name) is
/// rejected. Returns the usable pools and `(pool, problem)` for the others.
pub fn validate_pools(specs: &[(String, PoolSpec)]) -> (Vec<Pool>, Vec<(String, String)>) {
    let (ok, bad) = validate_pools_against(specs, &BTreeMap::new());
    (ok, bad.into_iter().map(|r| (r.pool, r.message)).collect())
}

/// A pool that cannot be used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejected {
    pub pool: String,
    /// The reason of its `Valid=False` condition.
    pub reason: &'static str,
    pub message: String,
}

/// [`validate_pools`], also rejecting a pool that contains an address of a node (`node_ips`:
/// address → node name). Handing one out would make the announcing node answer ARP for
/// another node's address (or the ARP requests for it be dropped) and cut that node off.
/// A rejected pool's addresses are free for another pool to claim.
pub fn validate_pools_against(
    specs: &[(String, PoolSpec)],
    node_ips: &BTreeMap<Ipv4Addr, String>,
) -> (Vec<Pool>, Vec<Rejected>) {
    validate_pools_reserved(specs, node_ips, &BTreeMap::new())
}

/// [`validate_pools_against`], also rejecting a pool that contains a gateway of a node
/// (`gateways`: address → the nodes that route through it, as their agents report them on
/// their Leases). Announcing a gateway would take the LAN's router over, and every other
/// node would drop the ARP requests for its own gateway.
pub fn validate_pools_reserved(
    specs: &[(String, PoolSpec)],
    node_ips: &BTreeMap<Ipv4Addr, String>,
    gateways: &BTreeMap<Ipv4Addr, Vec<String>>,
) -> (Vec<Pool>, Vec<Rejected>) {
    let mut sorted: Vec<&(String, PoolSpec)> = specs.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    let mut ok: Vec<Pool> = Vec::new();
    let mut bad = Vec::new();
    let mut reject = |name: &str, reason, message| {
        bad.push(Rejected {
            pool: name.to_owned(),
            reason,
            message,
        });
    };
    for (name, spec) in sorted {
        let p = match Pool::parse(name, spec) {
            Ok(p) => p,
            Err(e) => {
                reject(name, "InvalidPool", e);
                continue;
            }
        };
        if let Some((ip, node)) = node_ips.iter().find(|(ip, _)| p.contains(**ip)) {
            reject(
                name,
                "NodeAddress",
                format!(
                    "contains {ip}, an address of node {node}: announcing it would take the \
                     node's address over; leave node addresses out of the pool"
                ),
            );
            continue;
        }
        if let Some((ip, nodes)) = gateways.iter().find(|(ip, _)| p.contains(**ip)) {
            reject(
                name,
                "GatewayAddress",
                format!(
                    "contains {ip}, a gateway of node {}: announcing it would take the \
                     router's address over; leave gateway addresses out of the pool",
                    nodes.join(", node ")
                ),
            );
            continue;
        }
        match ok.iter().find(|q| q.overlaps(&p)) {
            Some(q) => reject(name, "OverlappingPool", format!("overlaps pool {}", q.name)),
            None => ok.push(p),
        }
    }
    (ok, bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(addresses: &[&str]) -> PoolSpec {
        PoolSpec {
            addresses: addresses.iter().map(|a| (*a).to_owned()).collect(),
            ..PoolSpec::default()
        }
    }

    #[test]
    fn a_dual_stack_pool_serves_its_ipv4_part_and_says_so() {
        let p = Pool::parse(
            "dual",
            &spec(&[
                "192.168.10.0/30",
                "fc00:f853:ccd:e799::/124",
                "192.168.9.1-192.168.9.2",
            ]),
        )
        .expect("the IPv4 part is served");
        assert_eq!(p.size(), 6);
        assert!(p.contains("192.168.10.3".parse().unwrap()));
        assert!(p.contains("192.168.9.2".parse().unwrap()));
        assert_eq!(p.ipv6_ignored, ["fc00:f853:ccd:e799::/124"]);
        let warning = p.partial_warning().expect("a warning");
        assert!(warning.contains("fc00:f853:ccd:e799::/124"), "{warning}");
        let v4 = Pool::parse("v4", &spec(&["192.168.10.0/30"])).unwrap();
        assert_eq!(v4.partial_warning(), None);
    }

    #[test]
    fn a_pool_containing_a_gateway_is_rejected_and_frees_its_range() {
        let ip = |s: &str| s.parse::<Ipv4Addr>().unwrap();
        let specs = vec![
            ("a-lan".to_owned(), spec(&["192.168.1.0/24"])),
            ("b-end".to_owned(), spec(&["192.168.2.10-192.168.2.254"])),
            (
                "c-overlaps-a".to_owned(),
                spec(&["192.168.1.200-192.168.1.210"]),
            ),
            ("d-elsewhere".to_owned(), spec(&["192.168.3.0/28"])),
        ];
        let gateways = BTreeMap::from([
            (ip("192.168.1.1"), vec!["n1".to_owned(), "n2".to_owned()]),
            (ip("192.168.2.254"), vec!["n3".to_owned()]),
        ]);
        let (ok, bad) = validate_pools_reserved(&specs, &BTreeMap::new(), &gateways);
        let names: Vec<&str> = ok.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(
            names,
            ["c-overlaps-a", "d-elsewhere"],
            "a rejected pool must not block the pools it would overlap"
        );
        assert_eq!(bad.len(), 2, "{bad:?}");
        assert_eq!(bad[0].pool, "a-lan");
        assert_eq!(bad[0].reason, "GatewayAddress");
        assert!(
            bad[0].message.contains("192.168.1.1,") && bad[0].message.contains("node n1, node n2"),
            "{}",
            bad[0].message
        );
        assert_eq!(
            (bad[1].pool.as_str(), bad[1].reason),
            ("b-end", "GatewayAddress"),
            "the last address of a range counts"
        );
        // A node address is reported as such even when it is also a gateway.
        let nodes = BTreeMap::from([(ip("192.168.1.1"), "n1".to_owned())]);
        let (_, bad) = validate_pools_reserved(&specs[..1], &nodes, &gateways);
        assert_eq!(bad[0].reason, "NodeAddress");
        // Without gateways the same pools are valid.
        let (ok, bad) = validate_pools_reserved(&specs[1..], &BTreeMap::new(), &BTreeMap::new());
        assert!(bad.is_empty(), "{bad:?}");
        assert_eq!(ok.len(), 3);
    }

    #[test]
    fn an_ipv6_only_pool_is_invalid() {
        let err = Pool::parse("v6", &spec(&["fc00::/120", "fc01::1-fc01::9"])).unwrap_err();
        assert!(err.contains("no IPv4 addresses"), "{err}");
        assert!(err.contains("fc00::/120, fc01::1-fc01::9"), "{err}");
    }

    #[test]
    fn an_invalid_ipv4_entry_still_invalidates_a_dual_stack_pool() {
        let err = Pool::parse("bad", &spec(&["fc00::/120", "192.168.1.300/32"])).unwrap_err();
        assert!(err.contains("192.168.1.300"), "{err}");
    }
}
