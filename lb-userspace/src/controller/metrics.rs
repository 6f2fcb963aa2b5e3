//! The controller's `/metrics` (and `/healthz`): whether this replica
//! leads, address usage per pool (like MetalLB's allocator gauges), the
//! Services left without an address by reason, and failed API writes.
//!
//! Only the leader knows the allocations; a standby reports `leader 0` and
//! no pool or Service figures, so summing over replicas never counts twice.

use std::{
    collections::BTreeMap,
    sync::{
        Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
};

use anyhow::{Context as _, Result};
use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

use super::alloc::{AllocError, Family as IpFamily};
use crate::http::i64_of;

/// One pool's figures as of the last reconcile pass.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PoolFigures {
    /// `(assigned, available)` per family the pool holds (none when the
    /// pool is invalid). Available IPv6 addresses can exceed any gauge: they
    /// saturate at `i64::MAX`.
    pub families: BTreeMap<IpFamily, (u64, u128)>,
    pub valid: bool,
}

#[derive(Debug, Default)]
struct Pass {
    pools: BTreeMap<String, PoolFigures>,
    assigned_services: u64,
    failing: BTreeMap<&'static str, u64>,
}

/// Shared between the controller loop and the HTTP server.
#[derive(Debug, Default)]
pub struct ControllerMetrics {
    leader: AtomicBool,
    api_errors: AtomicU64,
    pass: Mutex<Pass>,
}

/// The `reason` label of a Service without an address.
pub fn failure_reason(e: &AllocError) -> &'static str {
    match e {
        AllocError::PoolExhausted { .. } => "pool_exhausted",
        AllocError::NoPoolForFamilies { .. } => "no_pool_for_families",
        AllocError::NotInAnyPool(_) => "not_in_any_pool",
        AllocError::InUse { .. } => "in_use",
        AllocError::UnknownPool(_) => "unknown_pool",
        AllocError::NoPool => "no_pool",
        AllocError::InvalidRequest(_) => "invalid_request",
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PoolLabels {
    pool: String,
}

/// A pool's address figures come per family (`ipv4`, `ipv6`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PoolFamilyLabels {
    pool: String,
    family: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: String,
}

impl ControllerMetrics {
    /// Leadership gained or lost; losing it forgets the leader's figures.
    pub fn set_leader(&self, leader: bool) {
        self.leader.store(leader, Ordering::Relaxed);
        if !leader && let Ok(mut p) = self.pass.lock() {
            *p = Pass::default();
        }
    }

    pub fn api_error(&self) {
        self.api_errors.fetch_add(1, Ordering::Relaxed);
    }

    /// The outcome of one reconcile pass.
    pub fn record_pass(
        &self,
        pools: BTreeMap<String, PoolFigures>,
        assigned_services: u64,
        failing: BTreeMap<&'static str, u64>,
    ) {
        if let Ok(mut p) = self.pass.lock() {
            *p = Pass {
                pools,
                assigned_services,
                failing,
            };
        }
    }

    /// The Prometheus text format.
    pub fn render(&self) -> Result<String> {
        let mut reg = Registry::with_prefix("onehop_controller");
        let leader = Gauge::<i64>::default();
        leader.set(i64::from(self.leader.load(Ordering::Relaxed)));
        reg.register("leader", "1 while this replica allocates addresses", leader);
        let in_use = Family::<PoolFamilyLabels, Gauge>::default();
        let total = Family::<PoolFamilyLabels, Gauge>::default();
        let valid = Family::<PoolLabels, Gauge>::default();
        let assigned = Gauge::<i64>::default();
        let failing = Family::<ReasonLabels, Gauge>::default();
        if let Ok(p) = self.pass.lock() {
            for (name, f) in &p.pools {
                for (family, (assigned, available)) in &f.families {
                    let l = PoolFamilyLabels {
                        pool: name.clone(),
                        family: family.label().to_owned(),
                    };
                    in_use.get_or_create(&l).set(i64_of(*assigned));
                    let all = available.saturating_add(u128::from(*assigned));
                    total
                        .get_or_create(&l)
                        .set(i64::try_from(all).unwrap_or(i64::MAX));
                }
                let l = PoolLabels { pool: name.clone() };
                valid.get_or_create(&l).set(i64::from(f.valid));
            }
            assigned.set(i64_of(p.assigned_services));
            for (reason, n) in &p.failing {
                failing
                    .get_or_create(&ReasonLabels {
                        reason: (*reason).to_owned(),
                    })
                    .set(i64_of(*n));
            }
        }
        reg.register(
            "pool_addresses_in_use",
            "Addresses of the pool assigned to Services, per family",
            in_use,
        );
        reg.register(
            "pool_addresses",
            "Usable addresses in the pool, per family (at most 2^63-1)",
            total,
        );
        reg.register(
            "pool_valid",
            "1 if the pool is valid (0: malformed or overlapping; it is ignored)",
            valid,
        );
        reg.register(
            "services_assigned",
            "LoadBalancer Services served by onehop that hold an address",
            assigned,
        );
        reg.register(
            "services_unassigned",
            "LoadBalancer Services served by onehop left without an address, by reason",
            failing,
        );
        let errors = Counter::<u64>::default();
        errors.inc_by(self.api_errors.load(Ordering::Relaxed));
        reg.register(
            "api_errors",
            "Failed status writes and Event publications (retried)",
            errors,
        );
        let mut out = String::new();
        encode(&mut out, &reg).context("encoding metrics")?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leader_figures_render_and_vanish_on_losing_leadership() {
        let m = ControllerMetrics::default();
        m.set_leader(true);
        m.record_pass(
            BTreeMap::from([
                (
                    "lan".to_owned(),
                    PoolFigures {
                        families: BTreeMap::from([
                            (IpFamily::V4, (3, 5)),
                            (IpFamily::V6, (1, u128::MAX)),
                        ]),
                        valid: true,
                    },
                ),
                ("broken".to_owned(), PoolFigures::default()),
            ]),
            3,
            BTreeMap::from([("pool_exhausted", 2)]),
        );
        m.api_error();
        let text = m.render().unwrap();
        for line in [
            "onehop_controller_leader 1",
            "onehop_controller_pool_addresses_in_use{pool=\"lan\",family=\"ipv4\"} 3",
            "onehop_controller_pool_addresses{pool=\"lan\",family=\"ipv4\"} 8",
            "onehop_controller_pool_addresses_in_use{pool=\"lan\",family=\"ipv6\"} 1",
            "onehop_controller_pool_addresses{pool=\"lan\",family=\"ipv6\"} 9223372036854775807",
            "onehop_controller_pool_valid{pool=\"lan\"} 1",
            "onehop_controller_pool_valid{pool=\"broken\"} 0",
            "onehop_controller_services_assigned 3",
            "onehop_controller_services_unassigned{reason=\"pool_exhausted\"} 2",
            "onehop_controller_api_errors_total 1",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        m.set_leader(false);
        let text = m.render().unwrap();
        assert!(text.lines().any(|l| l == "onehop_controller_leader 0"));
        assert!(
            !text.contains("pool=\"lan\""),
            "a standby must not report the old leader's figures:\n{text}"
        );
        assert!(text.contains("onehop_controller_api_errors_total 1"));
    }

    #[test]
    fn every_allocation_error_has_its_own_reason() {
        let ip = std::net::Ipv4Addr::new(192, 168, 1, 1);
        let all = [
            AllocError::PoolExhausted {
                pools: vec![],
                families: vec![],
            },
            AllocError::NoPoolForFamilies {
                policy: super::super::alloc::FamilyPolicy::RequireDualStack,
                families: vec![],
            },
            AllocError::NotInAnyPool(ip.into()),
            AllocError::InUse {
                ip: ip.into(),
                by: crate::k8s::translate::ServiceRef {
                    namespace: "a".into(),
                    name: "b".into(),
                },
            },
            AllocError::UnknownPool("x".into()),
            AllocError::NoPool,
            AllocError::InvalidRequest("bad".into()),
        ];
        let reasons: std::collections::BTreeSet<_> = all.iter().map(failure_reason).collect();
        assert_eq!(reasons.len(), all.len());
    }
}
