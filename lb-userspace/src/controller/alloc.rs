//! IP address allocation for `LoadBalancer` Services, pure and
//! deterministic, with MetalLB's semantics so its pools and annotations work
//! unchanged:
//!
//! - Pools hold CIDRs (`192.168.10.0/24`) and ranges
//!   (`192.168.10.10-192.168.10.20`); `avoidBuggyIPs` skips `.0` and `.255`;
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
//! - After a restart the controller adopts the addresses Services already
//!   show in their status before assigning anything, so an address is never
//!   handed out twice (MetalLB #2479).

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::Ipv4Addr,
};

use k8s_openapi::api::core::v1::Service;

pub use crate::k8s::{
    crd::{PoolSpec, ServiceAllocation},
    pool::{Pool, Rejected, validate_pools, validate_pools_against, validate_pools_reserved},
};
use crate::k8s::{selector, translate::ServiceRef};
use crate::plan::model::Protocol;

/// Annotation prefixes, in the order they are looked up.
pub const ANNOTATION_PREFIXES: [&str; 3] = ["onehop.io/", "metallb.io/", "metallb.universe.tf/"];

/// What a Service asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub service: ServiceRef,
    pub labels: BTreeMap<String, String>,
    pub namespace_labels: BTreeMap<String, String>,
    pub requested: Vec<Ipv4Addr>,
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
        let mut requested = Vec::new();
        let raw_ips = annotation(svc, "loadBalancerIPs")
            .map(str::to_owned)
            .or(spec.load_balancer_ip.clone());
        for raw in raw_ips
            .iter()
            .flat_map(|s| s.split(','))
            .map(str::trim)
            .filter(|s| !s.is_empty())
        {
            if raw.contains(':') {
                continue; // IPv6 families are not served yet
            }
            let ip = raw.parse().map_err(|_| {
                AllocError::InvalidRequest(format!(
                    "{raw:?} in loadBalancerIPs is not an IP address"
                ))
            })?;
            requested.push(ip);
        }
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
            requested,
            pool: annotation(svc, "address-pool").map(str::to_owned),
            sharing_key: annotation(svc, "allow-shared-ip").map(str::to_owned),
            ports,
            local: spec.external_traffic_policy.as_deref() == Some("Local"),
        })
    }
}

/// Why a Service got no address (the `AllocationFailed` Event message).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AllocError {
    /// Every candidate address is taken.
    PoolExhausted { pools: Vec<String> },
    /// A requested address is in no pool.
    NotInAnyPool(Ipv4Addr),
    /// A requested address is used by a Service it may not share with.
    InUse { ip: Ipv4Addr, by: ServiceRef },
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
            Self::PoolExhausted { pools } => {
                write!(f, "no available IP in pool(s) {}", pools.join(", "))
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

/// The allocation state of the whole cluster.
#[derive(Clone, Debug, Default)]
pub struct Allocator {
    pools: Vec<Pool>,
    holders: BTreeMap<Ipv4Addr, Vec<Holder>>,
    by_service: BTreeMap<ServiceRef, Vec<Ipv4Addr>>,
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

    pub fn pool_of(&self, ip: Ipv4Addr) -> Option<&str> {
        self.pools
            .iter()
            .find(|p| p.contains(ip))
            .map(|p| p.name.as_str())
    }

    /// Every Service holding addresses.
    pub fn services(&self) -> impl Iterator<Item = &ServiceRef> {
        self.by_service.keys()
    }

    /// `(assigned, available)` addresses of every pool, by name.
    pub fn pool_usage(&self) -> BTreeMap<String, (u64, u64)> {
        self.pools
            .iter()
            .map(|p| {
                let assigned = self.holders.keys().filter(|ip| p.contains(**ip)).count() as u64;
                (
                    p.name.clone(),
                    (assigned, p.size().saturating_sub(assigned)),
                )
            })
            .collect()
    }

    pub fn addresses_of(&self, svc: &ServiceRef) -> &[Ipv4Addr] {
        self.by_service.get(svc).map_or(&[], Vec::as_slice)
    }

    /// The Service holding `ip` that `req` may not share it with, if any.
    fn conflict(&self, ip: Ipv4Addr, req: &Request) -> Option<&ServiceRef> {
        self.holders
            .get(&ip)?
            .iter()
            .find(|h| !h.can_share_with(req))
            .map(|h| &h.service)
    }

    fn hold(&mut self, req: &Request, ips: &[Ipv4Addr]) {
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
    pub fn adopt(&mut self, req: &Request, ips: &[Ipv4Addr]) -> Result<(), AllocError> {
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

    fn still_valid(&self, req: &Request, ips: &[Ipv4Addr]) -> bool {
        !ips.is_empty()
            && (req.requested.is_empty() || req.requested == ips)
            && ips.iter().all(|ip| {
                self.pools
                    .iter()
                    .find(|p| p.contains(*ip))
                    .is_some_and(|p| {
                        req.pool.as_ref().is_none_or(|want| *want == p.name)
                            && p.usable(u32::from(*ip))
                    })
                    && self.conflict(*ip, req).is_none()
            })
    }

    /// Assigns addresses to a Service (keeping the ones it has when they
    /// still fit its request).
    pub fn assign(&mut self, req: &Request) -> Result<Vec<Ipv4Addr>, AllocError> {
        let current = self.addresses_of(&req.service).to_vec();
        if self.still_valid(req, &current) {
            self.hold(req, &current);
            return Ok(current);
        }
        self.release(&req.service);
        let chosen = self.choose(req)?;
        self.hold(req, &chosen);
        Ok(chosen)
    }

    fn choose(&self, req: &Request) -> Result<Vec<Ipv4Addr>, AllocError> {
        if let Some(name) = &req.pool
            && !self.pools.iter().any(|p| &p.name == name)
        {
            return Err(AllocError::UnknownPool(name.clone()));
        }
        if !req.requested.is_empty() {
            for ip in &req.requested {
                let pool = self
                    .pools
                    .iter()
                    .find(|p| p.contains(*ip))
                    .ok_or(AllocError::NotInAnyPool(*ip))?;
                if req.pool.as_ref().is_some_and(|want| *want != pool.name) {
                    return Err(AllocError::InvalidRequest(format!(
                        "{ip} is not in pool {:?}",
                        req.pool.clone().unwrap_or_default()
                    )));
                }
                if let Some(by) = self.conflict(*ip, req) {
                    return Err(AllocError::InUse {
                        ip: *ip,
                        by: by.clone(),
                    });
                }
            }
            return Ok(req.requested.clone());
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
        // With a sharing key, join an address already shared under it.
        if req.sharing_key.is_some() {
            for p in &candidates {
                for (ip, hs) in self.holders.range(..) {
                    if p.contains(*ip)
                        && p.usable(u32::from(*ip))
                        && hs.iter().all(|h| h.can_share_with(req))
                    {
                        return Ok(vec![*ip]);
                    }
                }
            }
        }
        for p in &candidates {
            if let Some(ip) = p.addresses().find(|ip| !self.holders.contains_key(ip)) {
                return Ok(vec![ip]);
            }
        }
        Err(AllocError::PoolExhausted {
            pools: candidates.iter().map(|p| p.name.clone()).collect(),
        })
    }
}

#[cfg(test)]
mod tests;
