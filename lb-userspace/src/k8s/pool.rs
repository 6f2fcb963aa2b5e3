//! MetalLB-format address pools (`IPAddressPool` specs) parsed and
//! validated: the controller allocates from them, and the agent's election
//! reads them to find which advertisements cover an address. A pool may hold
//! IPv4 and IPv6 entries (a dual-stack pool, as MetalLB's).

use std::{
    collections::BTreeMap,
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use crate::{
    k8s::crd::{PoolSpec, ServiceAllocation},
    plan::model::Cidr,
};

/// An address family, as `spec.ipFamilies` names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub const fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(_) => Self::V4,
            IpAddr::V6(_) => Self::V6,
        }
    }

    /// `IPv4` / `IPv6` in `spec.ipFamilies`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "IPv4" => Some(Self::V4),
            "IPv6" => Some(Self::V6),
            _ => None,
        }
    }

    /// The metrics' `family` label.
    pub const fn label(self) -> &'static str {
        match self {
            Self::V4 => "ipv4",
            Self::V6 => "ipv6",
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::V4 => "IPv4",
            Self::V6 => "IPv6",
        })
    }
}

/// An address as its family and an integer (IPv4 in the low 32 bits), so
/// that both families share one range arithmetic.
fn bits(ip: IpAddr) -> (Family, u128) {
    match ip {
        IpAddr::V4(a) => (Family::V4, u128::from(u32::from(a))),
        IpAddr::V6(a) => (Family::V6, u128::from(a)),
    }
}

/// The inverse of [`bits`] (`n` fits the family: it comes from a range of it).
fn addr(family: Family, n: u128) -> IpAddr {
    match family {
        Family::V4 => IpAddr::V4(Ipv4Addr::from(u32::try_from(n).unwrap_or(u32::MAX))),
        Family::V6 => IpAddr::V6(Ipv6Addr::from(n)),
    }
}

/// An inclusive range of one family. Bounds, not lists: an IPv6 /64 has 2^64
/// addresses, so nothing walks a range address by address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Range {
    pub(crate) family: Family,
    pub(crate) first: u128,
    pub(crate) last: u128,
}

impl Range {
    /// Addresses in the range, saturating (`::/0` has 2^128).
    fn len(self) -> u128 {
        (self.last - self.first).saturating_add(1)
    }
}

/// A validated pool.
#[derive(Clone, Debug, PartialEq)]
pub struct Pool {
    pub name: String,
    /// Inclusive ranges, sorted by family then address, disjoint.
    pub(crate) ranges: Vec<Range>,
    pub(crate) auto_assign: bool,
    pub(crate) avoid_buggy: bool,
    pub(crate) allocation: ServiceAllocation,
}

fn parse_range(raw: &str) -> Result<Range, String> {
    let raw = raw.trim();
    if let Some((a, b)) = raw.split_once('-') {
        let end = |s: &str| {
            s.trim()
                .parse::<IpAddr>()
                .map_err(|_| format!("{raw:?}: {:?} is not an IP address", s.trim()))
        };
        let ((fa, a), (fb, b)) = (bits(end(a)?), bits(end(b)?));
        // MetalLB refuses such a range too: it has no meaning.
        if fa != fb {
            return Err(format!(
                "{raw:?}: the range mixes an {fa} and an {fb} address"
            ));
        }
        if a > b {
            return Err(format!("{raw:?}: the range is backwards"));
        }
        return Ok(Range {
            family: fa,
            first: a,
            last: b,
        });
    }
    if !raw.contains('/') {
        return Err(format!("{raw:?} is neither a CIDR nor a range"));
    }
    let cidr = Cidr::parse_masked(raw)?;
    let (first, last) = cidr.bounds();
    Ok(Range {
        family: Family::of(cidr.addr),
        first,
        last,
    })
}

impl Pool {
    pub fn parse(name: &str, spec: &PoolSpec) -> Result<Self, String> {
        if spec.addresses.is_empty() {
            return Err("no addresses".into());
        }
        let mut ranges = spec
            .addresses
            .iter()
            .map(|a| parse_range(a))
            .collect::<Result<Vec<_>, _>>()?;
        ranges.sort_unstable();
        for w in ranges.windows(2) {
            if w[0].family == w[1].family && w[1].first <= w[0].last {
                return Err("addresses overlap within the pool".into());
            }
        }
        Ok(Self {
            name: name.to_owned(),
            ranges,
            auto_assign: spec.auto_assign.unwrap_or(true),
            avoid_buggy: spec.avoid_buggy_ips.unwrap_or(false),
            allocation: spec.service_allocation.clone().unwrap_or_default(),
        })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let (f, n) = bits(ip);
        self.ranges
            .iter()
            .any(|r| r.family == f && (r.first..=r.last).contains(&n))
    }

    /// Whether the pool holds addresses of `family`.
    pub fn has(&self, family: Family) -> bool {
        self.ranges.iter().any(|r| r.family == family)
    }

    /// Whether `ip` may be handed out: `avoidBuggyIPs` is about IPv4's `.0`
    /// and `.255` (old clients' broadcast confusion); IPv6 has no such
    /// addresses, so MetalLB applies it to IPv4 only.
    pub(crate) fn usable(&self, ip: IpAddr) -> bool {
        match ip {
            IpAddr::V4(a) => !(self.avoid_buggy && matches!(a.octets()[3], 0 | 255)),
            IpAddr::V6(_) => true,
        }
    }

    /// The lowest usable address of `family` for which `taken` is false.
    /// Walks only past taken (and buggy) addresses, never a whole range:
    /// the cost is bounded by the addresses held, not by the pool's size.
    pub(crate) fn first_free(
        &self,
        family: Family,
        taken: impl Fn(IpAddr) -> bool,
    ) -> Option<IpAddr> {
        for r in self.ranges.iter().filter(|r| r.family == family) {
            let mut n = r.first;
            loop {
                let ip = addr(family, n);
                if self.usable(ip) && !taken(ip) {
                    return Some(ip);
                }
                if n == r.last {
                    break;
                }
                n += 1;
            }
        }
        None
    }

    /// Addresses in order (lazily; test use only: real pools can be huge).
    #[cfg(test)]
    pub(crate) fn addresses(&self) -> impl Iterator<Item = IpAddr> + '_ {
        self.ranges
            .iter()
            .flat_map(|r| (r.first..=r.last).map(move |n| addr(r.family, n)))
            .filter(|ip| self.usable(*ip))
    }

    /// Usable addresses of `family`, counted without walking them (pools
    /// can be /8s or /64s); saturates at `u128::MAX`.
    pub fn size_of(&self, family: Family) -> u128 {
        // Addresses in [0, n] ending in .0 or .255.
        let buggy_upto = |n: u128| (n / 256) * 2 + 1 + u128::from(n % 256 == 255);
        self.ranges
            .iter()
            .filter(|r| r.family == family)
            .map(|r| {
                if !self.avoid_buggy || family == Family::V6 {
                    return r.len();
                }
                let below = if r.first == 0 {
                    0
                } else {
                    buggy_upto(r.first - 1)
                };
                r.len() - (buggy_upto(r.last) - below)
            })
            .fold(0, u128::saturating_add)
    }

    /// Usable addresses of both families (saturating).
    pub fn size(&self) -> u128 {
        self.size_of(Family::V4)
            .saturating_add(self.size_of(Family::V6))
    }

    pub(crate) fn overlaps(&self, other: &Pool) -> bool {
        self.ranges.iter().any(|a| {
            other
                .ranges
                .iter()
                .any(|b| a.family == b.family && a.first <= b.last && b.first <= a.last)
        })
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
    node_ips: &BTreeMap<IpAddr, String>,
) -> (Vec<Pool>, Vec<Rejected>) {
    validate_pools_reserved(specs, node_ips, &BTreeMap::new())
}

/// [`validate_pools_against`], also rejecting a pool that contains a gateway of a node
/// (`gateways`: address → the nodes that route through it, as their agents report them on
/// their Leases). Announcing a gateway would take the LAN's router over, and every other
/// node would drop the ARP requests for its own gateway.
pub fn validate_pools_reserved(
    specs: &[(String, PoolSpec)],
    node_ips: &BTreeMap<IpAddr, String>,
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
        if let Some((ip, nodes)) = gateways.iter().find(|(ip, _)| p.contains(IpAddr::V4(**ip))) {
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
    fn a_dual_stack_pool_serves_both_families() {
        let p = Pool::parse(
            "dual",
            &spec(&[
                "192.168.10.0/30",
                "fc00:f853:ccd:e799::/124",
                "192.168.9.1-192.168.9.2",
                "fc00:1::10-fc00:1::1f",
            ]),
        )
        .expect("a dual-stack pool");
        assert_eq!(p.size_of(Family::V4), 6);
        assert_eq!(p.size_of(Family::V6), 32);
        assert_eq!(p.size(), 38);
        assert!(p.has(Family::V4) && p.has(Family::V6));
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(p.contains(ip("192.168.10.3")));
        assert!(p.contains(ip("192.168.9.2")));
        assert!(p.contains(ip("fc00:f853:ccd:e799::f")));
        assert!(!p.contains(ip("fc00:f853:ccd:e799::10")));
        assert!(p.contains(ip("fc00:1::1f")));
        // The IPv4-mapped form of a pool's IPv4 address is another family.
        assert!(!p.contains(ip("::ffff:192.168.10.3")));
        // IPv4 bounds in an IPv6 range's integers do not cover IPv6 addresses.
        let v4 = Pool::parse("v4", &spec(&["0.0.0.0/0"])).unwrap();
        assert!(!v4.contains(ip("::1")));
        assert!(!v4.has(Family::V6));
    }

    #[test]
    fn an_ipv6_only_pool_is_valid_and_huge_ranges_count_without_overflow() {
        let p = Pool::parse("v6", &spec(&["fc00::/120", "fc01::1-fc01::9"])).unwrap();
        assert_eq!(p.size(), 256 + 9);
        assert!(!p.has(Family::V4));
        let p = Pool::parse("big", &spec(&["fd00::/64"])).unwrap();
        assert_eq!(p.size_of(Family::V6), 1 << 64);
        let p = Pool::parse("all", &spec(&["::/0", "0.0.0.0/0"])).unwrap();
        assert_eq!(p.size_of(Family::V6), u128::MAX, "saturates");
        assert_eq!(p.size(), u128::MAX);
        assert_eq!(p.size_of(Family::V4), 1 << 32);
    }

    #[test]
    fn malformed_and_mixed_entries_are_rejected_with_the_reason() {
        for (entries, want) in [
            (&["fc00::/120", "192.168.1.300/32"][..], "192.168.1.300"),
            (&["192.168.1.1-fc00::9"][..], "mixes an IPv4 and an IPv6"),
            (&["fc00::9-fc00::1"][..], "backwards"),
            (&["fc00::/129"][..], "prefix length"),
            (&["fc00::1"][..], "neither a CIDR nor a range"),
            (&["fc00::/120", "fc00::80-fc00::100"][..], "overlap"),
        ] {
            let err = Pool::parse("bad", &spec(entries)).unwrap_err();
            assert!(err.contains(want), "{entries:?}: {err}");
        }
        // The same numbers in two families do not overlap.
        assert!(Pool::parse("ok", &spec(&["::/96", "0.0.0.0/0"])).is_ok());
    }

    #[test]
    fn a_pool_containing_a_gateway_is_rejected_and_frees_its_range() {
        let ip = |s: &str| s.parse::<Ipv4Addr>().unwrap();
        let ipa = |s: &str| IpAddr::V4(ip(s));
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
        // A node's IPv6 address in a dual-stack pool counts as much.
        let six = BTreeMap::from([("fd00:60::11".parse::<IpAddr>().unwrap(), "n6".to_owned())]);
        let dual = [(
            "dual".to_owned(),
            spec(&["192.168.9.0/24", "fd00:60::/120"]),
        )];
        let (_, bad) = validate_pools_reserved(&dual, &six, &BTreeMap::new());
        assert_eq!(bad[0].reason, "NodeAddress");
        assert!(bad[0].message.contains("fd00:60::11"), "{}", bad[0].message);
        // A node address is reported as such even when it is also a gateway.
        let nodes = BTreeMap::from([(ipa("192.168.1.1"), "n1".to_owned())]);
        let (_, bad) = validate_pools_reserved(&specs[..1], &nodes, &gateways);
        assert_eq!(bad[0].reason, "NodeAddress");
        // Without gateways the same pools are valid.
        let (ok, bad) = validate_pools_reserved(&specs[1..], &BTreeMap::new(), &BTreeMap::new());
        assert!(bad.is_empty(), "{bad:?}");
        assert_eq!(ok.len(), 3);
    }
}
