//! IP address allocation for `LoadBalancer` Services, pure and
//! deterministic, with MetalLB's semantics so its pools and annotations work
//! unchanged:
//!
//! - Pools hold IPv4 and IPv6 CIDRs (`192.168.10.0/24`, `fc00::/120`) and
//!   ranges (`192.168.10.10-192.168.10.20`, `fc00::10-fc00::20`), either
//!   family or both; `avoidBuggyIPs` skips IPv4's `.0` and `.255`;
//!   `autoAssign: false` pools are used only when asked for by IP or name;
//!   `serviceAllocation` restricts a pool to namespaces / namespace labels /
//!   service labels and orders pools by `priority` (lower first, pools
//!   without one last, then by name). Overlapping pools are rejected.
//! - A Service asks for addresses with `spec.loadBalancerIP` or the
//!   `loadBalancerIPs` annotation, for a pool with `address-pool`, and for
//!   sharing with `allow-shared-ip`; annotations are read under `onehop.io/`,
//!   `metallb.io/` and the older `metallb.universe.tf/`, first found wins.
//! - Services share an address only with the same sharing key, disjoint
//!   ports (per protocol) and the same `externalTrafficPolicy`.
//! - Families follow `spec.ipFamilies` and `spec.ipFamilyPolicy`:
//!   `SingleStack` gets one address of the first family (IPv4 when none is
//!   listed); `PreferDualStack` one of each listed family the chosen pool can
//!   give (at least one); `RequireDualStack` one of each family from one
//!   pool, or nothing. The addresses come in `ipFamilies` order. A pool is
//!   chosen whole: a dual-stack Service's addresses come from one pool.
//! - After a restart the controller adopts the addresses Services already
//!   show in their status before assigning anything, so an address is never
//!   handed out twice (MetalLB #2479).

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::IpAddr,
};

use k8s_openapi::api::core::v1::Service;

pub use crate::k8s::{
    crd::{PoolSpec, ServiceAllocation},
    pool::{
        Family, Pool, Rejected, validate_pools, validate_pools_against, validate_pools_reserved,
    },
};
use crate::k8s::{selector, translate::ServiceRef};
use crate::plan::model::Protocol;

/// Annotation prefixes, in the order they are looked up.
pub const ANNOTATION_PREFIXES: [&str; 3] = ["onehop.io/", "metallb.io/", "metallb.universe.tf/"];

/// `spec.ipFamilyPolicy`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FamilyPolicy {
    #[default]
    SingleStack,
    PreferDualStack,
    RequireDualStack,
}

/// What a Service asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub service: ServiceRef,
    pub labels: BTreeMap<String, String>,
    pub namespace_labels: BTreeMap<String, String>,
    /// The families wanted, in `ipFamilies` order (one for `SingleStack`).
    pub families: Vec<Family>,
    pub policy: FamilyPolicy,
    /// Requested addresses, at most one per family, in `families` order.
    pub requested: Vec<IpAddr>,
    pub pool: Option<String>,
    pub sharing_key: Option<String>,
    pub ports: BTreeSet<(u16, Protocol)>,
    pub local: bool,
}

/// Whether `pool`'s `serviceAllocation` admits the Service of `req`.
fn serves(pool: &Pool, req: &Request) -> Result<bool, String> {
    let al = &pool.allocation;
    if !al.namespaces.is_empty() && !al.namespaces.contains(&req.service.namespace) {
        return Ok(false);
    }
    Ok(
        selector::any_matches(&al.namespace_selectors, &req.namespace_labels)?
            && selector::any_matches(&al.service_selectors, &req.labels)?,
    )
}

fn annotation<'a>(svc: &'a Service, name: &str) -> Option<&'a str> {
    let a = svc.metadata.annotations.as_ref()?;
    ANNOTATION_PREFIXES
        .iter()
        .find_map(|p| a.get(&format!("{p}{name}")).map(String::as_str))
}

impl Request {
    /// Reads a Service's request; a malformed one is an `InvalidRequest`.
    pub fn from_service(
        svc: &Service,
        namespace_labels: BTreeMap<String, String>,
    ) -> Result<Self, AllocError> {
        let service = ServiceRef {
            namespace: svc.metadata.namespace.clone().unwrap_or_default(),
            name: svc.metadata.name.clone().unwrap_or_default(),
        };
        let spec = svc.spec.clone().unwrap_or_default();
        let (families, policy) = families(&spec)?;
        let raw_ips = annotation(svc, "loadBalancerIPs")
            .map(str::to_owned)
            .or(spec.load_balancer_ip.clone());
        let mut requested: Vec<IpAddr> = Vec::new();
        for raw in raw_ips
            .iter()
            .flat_map(|s| s.split(','))
            .map(str::trim)
            .filter(|s| !s.is_empty())
        {
            let ip: IpAddr = raw.parse().map_err(|_| {
                AllocError::InvalidRequest(format!(
                    "{raw:?} in loadBalancerIPs is not an IP address"
                ))
            })?;
            let family = Family::of(ip);
            if !families.contains(&family) {
                return Err(AllocError::InvalidRequest(format!(
                    "loadBalancerIPs: {ip} is {family}, but the service's families are {} ({policy:?})",
                    list(&families)
                )));
            }
            if requested.iter().any(|r| Family::of(*r) == family) {
                return Err(AllocError::InvalidRequest(format!(
                    "loadBalancerIPs: more than one {family} address"
                )));
            }
            requested.push(ip);
        }
        if policy == FamilyPolicy::RequireDualStack && requested.len() == 1 {
            return Err(AllocError::InvalidRequest(
                "loadBalancerIPs: RequireDualStack needs one IPv4 and one IPv6 address".into(),
            ));
        }
        // `ipFamilies` order, as the status will list them.
        requested.sort_by_key(|ip| families.iter().position(|f| *f == Family::of(*ip)));
        let ports = spec
            .ports
            .iter()
            .flatten()
            .filter_map(|p| {
                let proto = Protocol::of_k8s_port(p.protocol.as_deref())?;
                Some((u16::try_from(p.port).ok()?, proto))
            })
            .collect();
        Ok(Self {
            service,
            labels: svc.metadata.labels.clone().unwrap_or_default(),
            namespace_labels,
            families,
            policy,
            requested,
            pool: annotation(svc, "address-pool").map(str::to_owned),
            sharing_key: annotation(svc, "allow-shared-ip").map(str::to_owned),
            ports,
            local: spec.external_traffic_policy.as_deref() == Some("Local"),
        })
    }
}

/// `IPv4, IPv6`.
fn list(families: &[Family]) -> String {
    let names: Vec<String> = families.iter().map(ToString::to_string).collect();
    names.join(", ")
}

/// The families a Service wants, in order, and its policy. Kubernetes fills
/// `ipFamilies` in; where it is absent (an older or test API server), the
/// cluster is taken to be IPv4-primary: `[IPv4]`, or `[IPv4, IPv6]` for a
/// dual-stack policy.
fn families(
    spec: &k8s_openapi::api::core::v1::ServiceSpec,
) -> Result<(Vec<Family>, FamilyPolicy), AllocError> {
    let policy = match spec.ip_family_policy.as_deref() {
        None | Some("SingleStack") => FamilyPolicy::SingleStack,
        Some("PreferDualStack") => FamilyPolicy::PreferDualStack,
        Some("RequireDualStack") => FamilyPolicy::RequireDualStack,
        Some(other) => {
            return Err(AllocError::InvalidRequest(format!(
                "unknown ipFamilyPolicy {other:?}"
            )));
        }
    };
    let mut families = Vec::new();
    for raw in spec.ip_families.iter().flatten() {
        let f = Family::parse(raw).ok_or_else(|| {
            AllocError::InvalidRequest(format!("unknown IP family {raw:?} in ipFamilies"))
        })?;
        if !families.contains(&f) {
            families.push(f);
        }
    }
    let dual = match policy {
        FamilyPolicy::SingleStack => false,
        // A single-stack cluster lists one family for PreferDualStack.
        FamilyPolicy::PreferDualStack => families.is_empty(),
        // Both, whatever the list says (the API server demands both).
        FamilyPolicy::RequireDualStack => true,
    };
    let defaults: &[Family] = if dual {
        &[Family::V4, Family::V6]
    } else {
        &[Family::V4]
    };
    for f in defaults {
        if !families.contains(f) && (dual || families.is_empty()) {
            families.push(*f);
        }
    }
    if policy == FamilyPolicy::SingleStack {
        families.truncate(1);
    }
    Ok((families, policy))
}

/// Why a Service got no address (the `AllocationFailed` Event message).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AllocError {
    /// Every candidate address of `families` is taken.
    PoolExhausted {
        pools: Vec<String>,
        families: Vec<Family>,
    },
    /// No pool the Service may use holds the families it needs.
    NoPoolForFamilies {
        policy: FamilyPolicy,
        families: Vec<Family>,
    },
    /// A requested address is in no pool.
    NotInAnyPool(IpAddr),
    /// A requested address is used by a Service it may not share with.
    InUse { ip: IpAddr, by: ServiceRef },
    /// The `address-pool` annotation names no (valid) pool.
    UnknownPool(String),
    /// No pool may serve this Service (autoAssign / serviceAllocation).
    NoPool,
    /// The request itself is malformed.
    InvalidRequest(String),
}

impl fmt::Display for AllocError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::PoolExhausted { pools, families } => {
                write!(
                    f,
                    "no available IP in pool(s) {} ({} exhausted)",
                    pools.join(", "),
                    list(families)
                )
            }
            Self::NoPoolForFamilies { policy, families } => {
                let names: Vec<String> = families.iter().map(ToString::to_string).collect();
                let join = if *policy == FamilyPolicy::RequireDualStack {
                    " and "
                } else {
                    " or "
                };
                write!(
                    f,
                    "{policy:?}: no IPAddressPool this service may use holds {} addresses",
                    names.join(join)
                )
            }
            Self::NotInAnyPool(ip) => write!(f, "{ip} is not in any IPAddressPool"),
            Self::InUse { ip, by } => write!(
                f,
                "{ip} is already in use by {by} and cannot be shared with it"
            ),
            Self::UnknownPool(p) => write!(f, "unknown or invalid IPAddressPool {p:?}"),
            Self::NoPool => f.write_str("no IPAddressPool may assign an IP to this service"),
            Self::InvalidRequest(m) => f.write_str(m),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Holder {
    service: ServiceRef,
    sharing_key: Option<String>,
    ports: BTreeSet<(u16, Protocol)>,
    local: bool,
}

impl Holder {
    fn of(req: &Request) -> Self {
        Self {
            service: req.service.clone(),
            sharing_key: req.sharing_key.clone(),
            ports: req.ports.clone(),
            local: req.local,
        }
    }

    fn can_share_with(&self, req: &Request) -> bool {
        self.service == req.service
            || (self.sharing_key.is_some()
                && self.sharing_key == req.sharing_key
                && self.local == req.local
                && self.ports.is_disjoint(&req.ports))
    }
}

/// Per-family figures of one pool: index 0 IPv4, 1 IPv6.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// Whether the pool holds addresses of the family at all.
    pub holds: [bool; 2],
    /// Addresses of the pool held by Services.
    pub assigned: [u64; 2],
    /// Usable addresses still free (saturating: an IPv6 pool can hold 2^128).
    pub available: [u128; 2],
}

impl Usage {
    pub const fn index(family: Family) -> usize {
        match family {
            Family::V4 => 0,
            Family::V6 => 1,
        }
    }
}

/// What one pool can give a Service.
enum Offer {
    /// The addresses, in the Service's family order.
    Got(Vec<IpAddr>),
    /// The pool holds none of the families needed.
    Unsuited,
    /// It holds them, but these ran out.
    Exhausted(Vec<Family>),
}

/// The allocation state of the whole cluster.
#[derive(Clone, Debug, Default)]
pub struct Allocator {
    pools: Vec<Pool>,
    holders: BTreeMap<IpAddr, Vec<Holder>>,
    by_service: BTreeMap<ServiceRef, Vec<IpAddr>>,
}

impl Allocator {
    pub fn new(pools: Vec<Pool>) -> Self {
        Self {
            pools,
            ..Self::default()
        }
    }

    /// Replaces the pools; allocations stay (an address outside every pool
    /// is reported by [`Allocator::assign`] when its Service is next seen).
    pub fn set_pools(&mut self, pools: Vec<Pool>) {
        self.pools = pools;
    }

    fn pool_holding(&self, ip: IpAddr) -> Option<&Pool> {
        self.pools.iter().find(|p| p.contains(ip))
    }

    pub fn pool_of(&self, ip: IpAddr) -> Option<&str> {
        self.pool_holding(ip).map(|p| p.name.as_str())
    }

    /// Every Service holding addresses.
    pub fn services(&self) -> impl Iterator<Item = &ServiceRef> {
        self.by_service.keys()
    }

    /// Assigned and available addresses of every pool per family, by name.
    pub fn pool_usage(&self) -> BTreeMap<String, Usage> {
        self.pools
            .iter()
            .map(|p| {
                let mut u = Usage::default();
                for ip in self.holders.keys().filter(|ip| p.contains(**ip)) {
                    u.assigned[Usage::index(Family::of(*ip))] += 1;
                }
                for f in [Family::V4, Family::V6] {
                    let i = Usage::index(f);
                    u.holds[i] = p.has(f);
                    u.available[i] = p.size_of(f).saturating_sub(u128::from(u.assigned[i]));
                }
                (p.name.clone(), u)
            })
            .collect()
    }

    pub fn addresses_of(&self, svc: &ServiceRef) -> &[IpAddr] {
        self.by_service.get(svc).map_or(&[], Vec::as_slice)
    }

    /// The Service holding `ip` that `req` may not share it with, if any.
    fn conflict(&self, ip: IpAddr, req: &Request) -> Option<&ServiceRef> {
        self.holders
            .get(&ip)?
            .iter()
            .find(|h| !h.can_share_with(req))
            .map(|h| &h.service)
    }

    fn hold(&mut self, req: &Request, ips: &[IpAddr]) {
        for ip in ips {
            let hs = self.holders.entry(*ip).or_default();
            hs.retain(|h| h.service != req.service);
            hs.push(Holder::of(req));
        }
        self.by_service.insert(req.service.clone(), ips.to_vec());
    }

    /// Frees everything `svc` holds.
    pub fn release(&mut self, svc: &ServiceRef) {
        for ip in self.by_service.remove(svc).unwrap_or_default() {
            if let Some(hs) = self.holders.get_mut(&ip) {
                hs.retain(|h| &h.service != svc);
                if hs.is_empty() {
                    self.holders.remove(&ip);
                }
            }
        }
    }

    /// Takes over addresses a Service already shows in its status (startup).
    /// Fails if they clash with what was adopted before; the caller then
    /// assigns that Service anew.
    pub fn adopt(&mut self, req: &Request, ips: &[IpAddr]) -> Result<(), AllocError> {
        for ip in ips {
            if let Some(by) = self.conflict(*ip, req) {
                return Err(AllocError::InUse {
                    ip: *ip,
                    by: by.clone(),
                });
            }
        }
        self.hold(req, ips);
        Ok(())
    }

    /// After a failed [`Allocator::assign`] for lack of addresses: lets
    /// `req`'s Service keep `ips` (what its status shows, its last good
    /// state) when every one is still in a pool, usable and not taken by a
    /// Service it may not share with. Returns whether it did.
    pub fn keep_last(&mut self, req: &Request, ips: &[IpAddr]) -> bool {
        let valid = !ips.is_empty()
            && ips.iter().all(|ip| {
                self.pool_holding(*ip).is_some_and(|p| p.usable(*ip))
                    && self.conflict(*ip, req).is_none()
            });
        if valid {
            self.hold(req, ips);
        }
        valid
    }

    /// Whether `ip`, held by `req`'s Service, may stay its address.
    fn keeps(&self, req: &Request, ip: IpAddr) -> bool {
        req.families.contains(&Family::of(ip))
            && self.pool_holding(ip).is_some_and(|p| {
                req.pool.as_ref().is_none_or(|want| *want == p.name) && p.usable(ip)
            })
            && self.conflict(ip, req).is_none()
    }

    /// Assigns addresses to a Service (keeping the ones it has when they
    /// still fit its request), in its `ipFamilies` order.
    pub fn assign(&mut self, req: &Request) -> Result<Vec<IpAddr>, AllocError> {
        let current = self.addresses_of(&req.service).to_vec();
        let kept = if req.requested.is_empty() {
            self.kept(req, &current)
        } else if req.requested == current && current.iter().all(|ip| self.keeps(req, *ip)) {
            Some(current)
        } else {
            None
        };
        self.release(&req.service);
        let chosen = match kept {
            Some(ips) => ips,
            None => self.choose(req)?,
        };
        self.hold(req, &chosen);
        Ok(chosen)
    }

    /// What a Service keeps of `current` (automatic assignment): the
    /// addresses still valid, from the pool of the first of them, completed
    /// from that pool with the families it lacks (a `PreferDualStack`
    /// Service whose pool gained IPv6 gets its IPv6 address then).
    fn kept(&self, req: &Request, current: &[IpAddr]) -> Option<Vec<IpAddr>> {
        let valid: Vec<IpAddr> = current
            .iter()
            .copied()
            .filter(|ip| self.keeps(req, *ip))
            .collect();
        let pool = self.pool_holding(*valid.first()?)?;
        let keep: Vec<IpAddr> = valid.into_iter().filter(|ip| pool.contains(*ip)).collect();
        match self.offer(pool, req, &keep) {
            Offer::Got(ips) => Some(ips),
            Offer::Unsuited | Offer::Exhausted(_) => None,
        }
    }

    /// The families `req` needs from `pool` (those of them it holds), or
    /// `None` when the pool cannot serve the Service's policy at all.
    fn wanted(req: &Request, pool: &Pool) -> Option<Vec<Family>> {
        let wanted: Vec<Family> = req
            .families
            .iter()
            .copied()
            .filter(|f| pool.has(*f))
            .collect();
        let enough = match req.policy {
            FamilyPolicy::SingleStack | FamilyPolicy::PreferDualStack => !wanted.is_empty(),
            FamilyPolicy::RequireDualStack => wanted.len() == req.families.len(),
        };
        enough.then_some(wanted)
    }

    /// What `pool` can give `req`, keeping `keep` (addresses it holds there).
    fn offer(&self, pool: &Pool, req: &Request, keep: &[IpAddr]) -> Offer {
        let Some(wanted) = Self::wanted(req, pool) else {
            return Offer::Unsuited;
        };
        let mut got = Vec::new();
        let mut out = Vec::new();
        for f in wanted {
            if let Some(ip) = keep.iter().find(|ip| Family::of(**ip) == f) {
                got.push(*ip);
                continue;
            }
            // With a sharing key, join an address already shared under it.
            let shared = req.sharing_key.as_ref().and_then(|_| {
                self.holders
                    .iter()
                    .find(|(ip, hs)| {
                        Family::of(**ip) == f
                            && pool.contains(**ip)
                            && pool.usable(**ip)
                            && hs.iter().all(|h| h.can_share_with(req))
                    })
                    .map(|(ip, _)| *ip)
            });
            match shared.or_else(|| pool.first_free(f, |ip| self.holders.contains_key(&ip))) {
                Some(ip) => got.push(ip),
                None => out.push(f),
            }
        }
        let partial_ok = req.policy == FamilyPolicy::PreferDualStack && !got.is_empty();
        if out.is_empty() || partial_ok {
            Offer::Got(got)
        } else {
            Offer::Exhausted(out)
        }
    }

    /// Checks requested addresses: each in a pool (all in the same one, as
    /// MetalLB wants), the named pool if any, and free to share.
    fn check_requested(&self, req: &Request) -> Result<Vec<IpAddr>, AllocError> {
        let mut first_pool: Option<&str> = None;
        for ip in &req.requested {
            let pool = self
                .pool_holding(*ip)
                .ok_or(AllocError::NotInAnyPool(*ip))?;
            if req.pool.as_ref().is_some_and(|want| *want != pool.name) {
                return Err(AllocError::InvalidRequest(format!(
                    "{ip} is not in pool {:?}",
                    req.pool.clone().unwrap_or_default()
                )));
            }
            match first_pool {
                Some(name) if name != pool.name => {
                    return Err(AllocError::InvalidRequest(format!(
                        "the requested addresses are in different pools ({name}, {})",
                        pool.name
                    )));
                }
                _ => first_pool = Some(&pool.name),
            }
            if let Some(by) = self.conflict(*ip, req) {
                return Err(AllocError::InUse {
                    ip: *ip,
                    by: by.clone(),
                });
            }
        }
        Ok(req.requested.clone())
    }

    fn choose(&self, req: &Request) -> Result<Vec<IpAddr>, AllocError> {
        if let Some(name) = &req.pool
            && !self.pools.iter().any(|p| &p.name == name)
        {
            return Err(AllocError::UnknownPool(name.clone()));
        }
        if !req.requested.is_empty() {
            return self.check_requested(req);
        }
        let mut candidates: Vec<&Pool> = Vec::new();
        for p in &self.pools {
            let wanted = match &req.pool {
                Some(name) => &p.name == name,
                None => p.auto_assign && serves(p, req).map_err(AllocError::InvalidRequest)?,
            };
            if wanted {
                candidates.push(p);
            }
        }
        if candidates.is_empty() {
            return Err(AllocError::NoPool);
        }
        candidates.sort_by_key(|p| {
            (
                p.allocation.priority.is_none(),
                p.allocation.priority,
                p.name.clone(),
            )
        });
        let mut exhausted: Vec<String> = Vec::new();
        let mut ran_out: BTreeSet<Family> = BTreeSet::new();
        for p in &candidates {
            match self.offer(p, req, &[]) {
                Offer::Got(ips) => return Ok(ips),
                Offer::Unsuited => {}
                Offer::Exhausted(fs) => {
                    exhausted.push(p.name.clone());
                    ran_out.extend(fs);
                }
            }
        }
        if exhausted.is_empty() {
            return Err(AllocError::NoPoolForFamilies {
                policy: req.policy,
                families: req.families.clone(),
            });
        }
        Err(AllocError::PoolExhausted {
            pools: exhausted,
            families: ran_out.into_iter().collect(),
        })
    }
}

#[cfg(test)]
mod tests;
