use std::collections::{BTreeMap, BTreeSet};

use super::*;
use std::net::IpAddr;

use crate::plan::state::{
    AnyServiceKey, BackendSlot, DataplaneState, PlanOptions, SrcRangeKey, SrcRangeKey6, plan,
    plan_with_options, replan,
};
use crate::plan::testing::{NODE, limits, parse};
use crate::plan::{
    model::{Cidr, NodeServices, ServicePort},
    services_file,
};
use lb_common::{backend_flags, service_flags, vip_flags};
use proptest::prelude::*;

/// The kernel maps as the data path sees them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Maps {
    config: DatapathConfig,
    vips: BTreeMap<[u8; 4], u32>,
    services: BTreeMap<ServiceKey, ServiceValue>,
    /// Array: absent = zeroed slot.
    backends: BTreeMap<u32, BackendValue>,
    /// Array slots ever written.
    maglev: BTreeMap<u32, u32>,
    src_ranges: BTreeSet<SrcRangeKey>,
    vips6: BTreeMap<[u8; 16], u32>,
    services6: BTreeMap<ServiceKey6, ServiceValue>,
    /// Hash: absent = no entry.
    backends6: BTreeMap<u32, BackendValue6>,
    src_ranges6: BTreeSet<SrcRangeKey6>,
}

impl Maps {
    fn of(s: &DataplaneState) -> Self {
        let mut m = Maps::default();
        for op in diff(&DataplaneState::default(), s) {
            m.apply(&op);
        }
        m
    }

    fn apply(&mut self, op: &MapOp) {
        match op {
            MapOp::PutConfig(c) => self.config = *c,
            MapOp::PutBackend(id, b) => {
                self.backends.insert(*id, *b);
            }
            MapOp::ClearBackend(id) => {
                self.backends.remove(id);
            }
            MapOp::PutMaglev { offset, table } => {
                for (slot, id) in (*offset..).zip(table.iter()) {
                    self.maglev.insert(slot, id);
                }
            }
            MapOp::PutService(k, v) => {
                self.services.insert(*k, *v);
            }
            MapOp::DelService(k) => {
                assert!(
                    self.services.remove(k).is_some(),
                    "deleting a missing service"
                );
            }
            MapOp::PutSrcRange(prefixlen, data) => {
                self.src_ranges.insert(SrcRangeKey {
                    prefixlen: *prefixlen,
                    data: *data,
                });
            }
            MapOp::DelSrcRange(prefixlen, data) => {
                assert!(
                    self.src_ranges.remove(&SrcRangeKey {
                        prefixlen: *prefixlen,
                        data: *data
                    }),
                    "deleting a missing source range"
                );
            }
            MapOp::PutVip(a, f) => {
                self.vips.insert(*a, *f);
            }
            MapOp::DelVip(a) => {
                assert!(self.vips.remove(a).is_some(), "deleting a missing vip");
            }
            MapOp::PutBackend6(id, b) => {
                self.backends6.insert(*id, *b);
            }
            MapOp::ClearBackend6(id) => {
                assert!(
                    self.backends6.remove(id).is_some(),
                    "deleting a missing backends6 entry"
                );
            }
            MapOp::PutService6(k, v) => {
                self.services6.insert(*k, *v);
            }
            MapOp::DelService6(k) => {
                assert!(
                    self.services6.remove(k).is_some(),
                    "deleting a missing service6"
                );
            }
            MapOp::PutSrcRange6(prefixlen, data) => {
                self.src_ranges6.insert(SrcRangeKey6 {
                    prefixlen: *prefixlen,
                    data: *data,
                });
            }
            MapOp::DelSrcRange6(prefixlen, data) => {
                assert!(
                    self.src_ranges6.remove(&SrcRangeKey6 {
                        prefixlen: *prefixlen,
                        data: *data
                    }),
                    "deleting a missing IPv6 source range"
                );
            }
            MapOp::PutVip6(a, f) => {
                self.vips6.insert(*a, *f);
            }
            MapOp::DelVip6(a) => {
                assert!(self.vips6.remove(a).is_some(), "deleting a missing vip6");
            }
        }
    }

    /// The contents as a state (tables of the services found), as the agent
    /// reads them back.
    fn read_back(&self) -> DataplaneState {
        let mut s = DataplaneState {
            config: self.config,
            vips: self.vips.clone(),
            services: self.services.clone(),
            backends: self.backends.clone(),
            src_ranges: self.src_ranges.clone(),
            vips6: self.vips6.clone(),
            services6: self.services6.clone(),
            backends6: self.backends6.clone(),
            src_ranges6: self.src_ranges6.clone(),
            ..DataplaneState::default()
        };
        s.maglev = s
            .all_services()
            .filter(|(_, v)| v.maglev_len > 0)
            .map(|(_, v)| (v.maglev_offset, self.table(v).into()))
            .collect();
        s
    }

    fn table(&self, v: &ServiceValue) -> Vec<u32> {
        (v.maglev_offset..v.maglev_offset + v.maglev_len)
            .map(|slot| self.maglev.get(&slot).copied().unwrap_or(u32::MAX))
            .collect()
    }

    /// The maps hold exactly `s` (slots outside `s`'s tables are don't-care).
    fn holds(&self, s: &DataplaneState) -> Result<(), TestCaseError> {
        prop_assert_eq!(self.config, s.config);
        prop_assert_eq!(&self.vips, &s.vips);
        prop_assert_eq!(&self.services, &s.services);
        prop_assert_eq!(&self.backends, &s.backends);
        prop_assert_eq!(&self.src_ranges, &s.src_ranges);
        prop_assert_eq!(&self.vips6, &s.vips6);
        prop_assert_eq!(&self.services6, &s.services6);
        prop_assert_eq!(&self.backends6, &s.backends6);
        prop_assert_eq!(&self.src_ranges6, &s.src_ranges6);
        for (_, v) in s.all_services() {
            if v.maglev_len > 0 {
                prop_assert_eq!(self.table(v), s.maglev[&v.maglev_offset].to_vec());
            }
        }
        Ok(())
    }

    /// What a packet may observe mid-update: every service entry is old's or
    /// new's, its table fully written, every backend it names present in its
    /// family's map with the identity that state gave it, its allow-list
    /// complete; a VIP newly flagged has its services in place; no id is
    /// valid in both families' maps.
    fn safe_between(
        &self,
        old: &DataplaneState,
        new: &DataplaneState,
    ) -> Result<(), TestCaseError> {
        for id in self.backends6.keys() {
            prop_assert!(
                self.backends
                    .get(id)
                    .is_none_or(|b| b.flags & backend_flags::VALID == 0),
                "id {} is valid in backends and backends6",
                id
            );
        }
        let services = self
            .services
            .iter()
            .map(|(k, v)| (AnyServiceKey::V4(*k), *v));
        let services6 = self
            .services6
            .iter()
            .map(|(k, v)| (AnyServiceKey::V6(*k), *v));
        for (k, v) in services.chain(services6) {
            let k = &k;
            let v = &v;
            let from = if new.service(k) == Some(v) {
                new
            } else if old.service(k) == Some(v) {
                old
            } else {
                return Err(TestCaseError::fail(format!(
                    "service {k:?} = {v:?} is in neither state"
                )));
            };
            if v.maglev_len > 0 {
                let table = self.table(v);
                prop_assert_eq!(
                    &table,
                    &from.maglev[&v.maglev_offset].to_vec(),
                    "half-written table"
                );
                for id in table {
                    // The data path reads an id in its service's family's map.
                    let found = match k {
                        AnyServiceKey::V4(_) => self.backends.get(&id).map(|b| BackendSlot::V4(*b)),
                        AnyServiceKey::V6(_) => {
                            self.backends6.get(&id).map(|b| BackendSlot::V6(*b))
                        }
                    };
                    let Some(b) = found else {
                        return Err(TestCaseError::fail(format!(
                            "table of {k:?} names missing backend {id}"
                        )));
                    };
                    prop_assert!(b.flags() & backend_flags::VALID != 0);
                    prop_assert!(
                        b.flags() & backend_flags::DRAINING == 0,
                        "a table names draining backend {}",
                        id
                    );
                    let meant = from.backend(id).map(|b| b.identity());
                    prop_assert_eq!(Some(b.identity()), meant, "backend id reused");
                }
            }
            if v.flags & service_flags::SOURCE_RANGES != 0 {
                for r in from.src_ranges.iter().filter(|r| r.service_id() == v.id) {
                    prop_assert!(self.src_ranges.contains(r), "allow-list incomplete");
                }
                for r in from.src_ranges6.iter().filter(|r| r.service_id() == v.id) {
                    prop_assert!(self.src_ranges6.contains(r), "IPv6 allow-list incomplete");
                }
            }
        }
        let vips = self.vips.iter().map(|(a, f)| (IpAddr::from(*a), *f));
        let vips6 = self.vips6.iter().map(|(a, f)| (IpAddr::from(*a), *f));
        let flags_of = |s: &DataplaneState, a: IpAddr| match a {
            IpAddr::V4(a) => s.vips.get(&a.octets()).copied(),
            IpAddr::V6(a) => s.vips6.get(&a.octets()).copied(),
        };
        for (a, f) in vips.chain(vips6) {
            if flags_of(new, a) == Some(f)
                && flags_of(old, a) != Some(f)
                && f & vip_flags::SERVICE != 0
            {
                for (k, v) in new.all_services().filter(|(k, _)| k.vip() == a) {
                    let have = match k {
                        AnyServiceKey::V4(k) => self.services.get(&k),
                        AnyServiceKey::V6(k) => self.services6.get(&k),
                    };
                    prop_assert_eq!(have, Some(v), "vip before its services");
                }
            }
        }
        Ok(())
    }
}

const FILE: &str = "\
announce: [192.168.60.1]
services:
  - name: web
    vip: 192.168.60.1
    ports: [{ port: 80, target_port: 8080 }]
    source_ranges: [10.0.0.0/8]
    backends:
      - { ip: 10.42.0.5, node_ip: 192.168.50.10 }
      - { ip: 10.42.1.7, node_ip: 192.168.50.11 }
";

#[test]
fn same_state_no_ops() {
    let a = plan(&DataplaneState::default(), &parse(FILE), &NODE, &limits()).unwrap();
    assert!(diff(&a, &a).is_empty());
    assert!(diff(&DataplaneState::default(), &DataplaneState::default()).is_empty());
    // A restart that read `a` back and re-plans writes nothing.
    let again = plan(&a, &parse(FILE), &NODE, &limits()).unwrap();
    assert!(diff(&a, &again).is_empty());
}

#[test]
fn first_apply_order() {
    let a = plan(&DataplaneState::default(), &parse(FILE), &NODE, &limits()).unwrap();
    let kinds: Vec<&str> = diff(&DataplaneState::default(), &a)
        .iter()
        .map(|op| match op {
            MapOp::PutConfig(_) => "config",
            MapOp::PutBackend(..) => "backend",
            MapOp::PutMaglev { .. } => "maglev",
            MapOp::PutSrcRange(..) => "src_range",
            MapOp::PutService(..) => "service",
            MapOp::PutVip(..) => "vip",
            MapOp::PutVip6(..) => "vip6",
            _ => "removal",
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "config",
            "backend",
            "backend",
            "maglev",
            "src_range",
            "service",
            "vip",
            "vip",
            // The node's IPv6 address.
            "vip6"
        ]
    );
}

#[test]
fn backend_swap_order() {
    let a = plan(&DataplaneState::default(), &parse(FILE), &NODE, &limits()).unwrap();
    let text = FILE
        .replace("10.42.0.5", "10.42.0.6")
        .replace("10.0.0.0/8", "10.1.0.0/16");
    let b = plan(&a, &parse(&text), &NODE, &limits()).unwrap();
    let key = *a.services.keys().next().unwrap();
    let (old_v, new_v) = (a.services[&key], b.services[&key]);
    assert_ne!(old_v.maglev_offset, new_v.maglev_offset);
    let old_id = a
        .backends
        .iter()
        .find(|(_, v)| v.ip == [10, 42, 0, 5])
        .map(|(id, _)| *id)
        .unwrap();
    let new_id = b
        .backends
        .iter()
        .find(|(_, v)| v.ip == [10, 42, 0, 6])
        .map(|(id, _)| *id)
        .unwrap();
    let cidr = |s| SrcRangeKey::new(old_v.id, Cidr::parse(s).unwrap()).unwrap();
    let (old_r, new_r) = (cidr("10.0.0.0/8"), cidr("10.1.0.0/16"));
    assert_eq!(
        diff(&a, &b),
        vec![
            MapOp::PutBackend(new_id, b.backends[&new_id]),
            MapOp::PutMaglev {
                offset: new_v.maglev_offset,
                table: b.maglev[&new_v.maglev_offset].clone()
            },
            MapOp::PutSrcRange(new_r.prefixlen, new_r.data),
            MapOp::PutService(key, new_v),
            MapOp::DelSrcRange(old_r.prefixlen, old_r.data),
            // Retired, draining: only once no table names it.
            MapOp::PutBackend(old_id, b.backends[&old_id]),
        ]
    );
    let retired_flags = a.backends[&old_id].flags | backend_flags::DRAINING | backend_flags::GONE;
    assert_eq!(b.backends[&old_id].flags, retired_flags);
    // The reverse removes the service's VIP after its services... etc.;
    // the retired backend goes once released.
    let release = BTreeSet::from([old_id]);
    let releasing = PlanOptions {
        reuse_tables: false,
        release: &release,
    };
    let empty =
        plan_with_options(&b, &parse("services: []\n"), &NODE, &limits(), releasing).unwrap();
    let ops = diff(&b, &empty);
    let pos = |f: &dyn Fn(&MapOp) -> bool| ops.iter().position(f).unwrap();
    assert!(pos(&|o| matches!(o, MapOp::DelVip(_))) < pos(&|o| matches!(o, MapOp::DelService(_))));
    assert!(
        pos(&|o| matches!(o, MapOp::DelService(_))) < pos(&|o| matches!(o, MapOp::DelSrcRange(..)))
    );
    assert!(
        pos(&|o| matches!(o, MapOp::DelSrcRange(..)))
            < pos(&|o| matches!(o, MapOp::ClearBackend(_)))
    );
}

fn apply_checked(old: &DataplaneState, new: &DataplaneState) -> Result<Maps, TestCaseError> {
    let mut maps = Maps::of(old);
    maps.holds(old)?;
    maps.safe_between(old, new)?;
    for op in diff(old, new) {
        maps.apply(&op);
        maps.safe_between(old, new)?;
    }
    maps.holds(new)?;
    Ok(maps)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Over random sequences of files: applying each diff to the maps of the
    /// previous state yields the next, every step is safe, and a state
    /// diffed against itself is empty.
    #[test]
    fn diffs_apply_safely(files in proptest::collection::vec(services_file::tests::arb_file(), 1..6)) {
        let mut prev = DataplaneState::default();
        for file in &files {
            let next = plan(&prev, file, &NODE, &limits()).map_err(|e| TestCaseError::fail(e.to_string()))?;
            apply_checked(&prev, &next)?;
            prop_assert!(diff(&next, &next).is_empty());
            prop_assert!(diff(&next, &plan(&next, file, &NODE, &limits()).unwrap()).is_empty());
            // Taking unchanged tables from a planned state gives exactly the plan.
            let replanned = replan(&prev, file, &NODE, &limits()).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(&replanned, &next);
            prev = next;
        }
        // And back to nothing.
        let empty_file = NodeServices { services: vec![], announce: BTreeSet::new(), ..files[0].clone() };
        let empty = plan(&prev, &empty_file, &NODE, &limits()).unwrap();
        apply_checked(&prev, &empty)?;
    }

    /// An update interrupted at any step leaves maps the next agent can
    /// adopt and plan over, and finishing from there yields the target.
    #[test]
    fn interrupted_updates_recover(
        files in proptest::collection::vec(services_file::tests::arb_file(), 2..3),
        cut in any::<proptest::sample::Index>(),
    ) {
        let a = plan(&DataplaneState::default(), &files[0], &NODE, &limits()).unwrap();
        let b = plan(&a, &files[1], &NODE, &limits()).unwrap();
        let ops = diff(&a, &b);
        let mut maps = Maps::of(&a);
        for op in &ops[..cut.index(ops.len() + 1)] {
            maps.apply(op);
        }
        // What the agent reads back: tables of the services it finds.
        let read_back = maps.read_back();
        read_back.allocators(&limits()).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let c = plan(&read_back, &files[1], &NODE, &limits()).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let done = apply_checked(&read_back, &c)?;
        // Same service and backend entries as an uninterrupted update would
        // give, up to ids: compare by identity.
        let ident = |s: &DataplaneState| s.all_backends().map(|(_, v)| (v.identity(), v.node_ip(), v.flags())).collect::<BTreeSet<_>>();
        prop_assert_eq!(ident(&c), ident(&b));
        prop_assert_eq!(c.all_services().map(|(k, _)| k).collect::<Vec<_>>(), b.all_services().map(|(k, _)| k).collect::<Vec<_>>());
        prop_assert_eq!(&c.vips, &b.vips);
        prop_assert_eq!(&c.vips6, &b.vips6);
        done.holds(&c)?;
    }
}

/// `file` with some backends moved to `draining` and some given ports of
/// their own, as the bits of `drain` and `own_ports` say (bit i: the i-th
/// backend over all services).
fn with_drain_and_ports(mut file: NodeServices, drain: u64, own_ports: u64) -> NodeServices {
    let mut i = 0u32;
    for s in &mut file.services {
        let mut serving = Vec::new();
        for b in std::mem::take(&mut s.backends) {
            let bit = 1u64 << (i % 64);
            i += 1;
            if own_ports & bit != 0 {
                // Another target for every port but the last, which it lacks.
                let mut ports: Vec<_> = s
                    .ports
                    .iter()
                    .map(|p| ServicePort {
                        target_port: p.target_port.checked_add(1).unwrap_or(1),
                        ..*p
                    })
                    .collect();
                ports.pop();
                s.backend_ports.insert(b.ip, ports);
            }
            if drain & bit != 0 {
                s.draining.push(b);
            } else {
                serving.push(b);
            }
        }
        s.backends = serving;
    }
    file
}

/// The identities a file asks for: those that take new flows, and those
/// that only drain.
/// Backend identities: (pod address, target port).
type Identities = BTreeSet<(IpAddr, u16)>;

fn identities(file: &NodeServices) -> (Identities, Identities) {
    let (mut serving, mut draining) = (BTreeSet::new(), BTreeSet::new());
    for s in &file.services {
        for p in &s.ports {
            for b in &s.backends {
                if let Some(t) = s.target_port(b.ip, p) {
                    serving.insert((b.ip, t));
                }
            }
            for b in &s.draining {
                if let Some(t) = s.target_port(b.ip, p) {
                    draining.insert((b.ip, t));
                }
            }
        }
    }
    let draining = draining.difference(&serving).copied().collect();
    (serving, draining)
}

fn ident(b: &BackendSlot) -> (IpAddr, u16) {
    b.identity()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    /// The backend slot lifecycle over random sequences of files (with
    /// draining backends and per-backend ports) and random releases: serving
    /// identities are plain slots in their tables; draining ones keep a slot
    /// that no table names; a slot whose identity leaves is retired, keeps
    /// its id and identity, and goes only when released (a release of
    /// anything else is ignored); every update applies safely.
    #[test]
    fn backend_slots_drain_and_retire(
        steps in proptest::collection::vec(
            (services_file::tests::arb_file(), any::<u64>(), any::<u64>(), any::<u64>()),
            1..7,
        ),
    ) {
        const RETIRED: u16 = backend_flags::DRAINING | backend_flags::GONE;
        let mut prev = DataplaneState::default();
        for (file, drain, own_ports, release_bits) in steps {
            let file = with_drain_and_ports(file, drain, own_ports);
            // Any id of prev may be named; only retired ones may go.
            let release: BTreeSet<u32> = prev
                .all_backends()
                .enumerate()
                .filter(|(i, _)| release_bits & (1u64 << (i % 64)) != 0)
                .map(|(_, (id, _))| id)
                .collect();
            let opts = PlanOptions { reuse_tables: false, release: &release };
            let next = plan_with_options(&prev, &file, &NODE, &limits(), opts)
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            let (serving, draining) = identities(&file);
            for (id, b) in next.all_backends() {
                let who = ident(&b);
                let id = &id;
                // An IPv6 pod's slot is in backends6, an IPv4 pod's in backends.
                prop_assert_eq!(matches!(b, BackendSlot::V6(_)), who.0.is_ipv6());
                prop_assert!(b.flags() & backend_flags::VALID != 0);
                if serving.contains(&who) {
                    prop_assert_eq!(b.flags() & RETIRED, 0, "serving {:?} flagged", who);
                } else if draining.contains(&who) {
                    prop_assert_eq!(b.flags() & RETIRED, backend_flags::DRAINING, "draining {:?}", who);
                } else {
                    prop_assert_eq!(b.flags() & RETIRED, RETIRED, "{:?} left but is not retired", who);
                    let old = prev.backend(*id);
                    prop_assert_eq!(old.as_ref().map(ident), Some(who), "a retired slot is one prev had");
                    prop_assert!(
                        !(release.contains(id) && old.is_some_and(|o| o.flags() & backend_flags::GONE != 0)),
                        "released slot {} kept", id
                    );
                }
            }
            let present: Identities = next.all_backends().map(|(_, b)| ident(&b)).collect();
            prop_assert!(serving.is_subset(&present) && draining.is_subset(&present));
            for (id, old) in prev.all_backends() {
                match next.backend(id) {
                    Some(b) => prop_assert_eq!(ident(&b), ident(&old), "id {} changed identity", id),
                    None => prop_assert!(
                        old.flags() & backend_flags::GONE != 0 && release.contains(&id),
                        "slot {} dropped without being retired and released", id
                    ),
                }
            }
            // Each table holds exactly the serving backends of its frontend.
            for s in &file.services {
                for p in &s.ports {
                    let k = AnyServiceKey::new(s.vip, p.port, p.protocol.number());
                    let v = next.service(&k).copied().unwrap_or_default();
                    let want: Identities = s
                        .backends
                        .iter()
                        .filter_map(|b| Some((b.ip, s.target_port(b.ip, p)?)))
                        .collect();
                    let got: Identities = if v.maglev_len == 0 {
                        BTreeSet::new()
                    } else {
                        next.maglev[&v.maglev_offset].iter().filter_map(|id| next.backend(id).as_ref().map(ident)).collect()
                    };
                    prop_assert_eq!(got, want);
                }
            }
            next.allocators(&limits()).map_err(|e| TestCaseError::fail(e.to_string()))?;
            apply_checked(&prev, &next)?;
            prev = next;
        }
    }
}

/// An id whose entry moves to the other family's map loses its old entry
/// first, even from contents the planner would not produce.
#[test]
fn an_id_changing_family_is_cleared_first() {
    use lb_common::BackendValue6;
    let valid = backend_flags::VALID;
    let mut old = DataplaneState::default();
    old.backends.insert(
        3,
        BackendValue::new([10, 42, 0, 5], [192, 168, 50, 11], 80, valid),
    );
    old.backends6
        .insert(4, BackendValue6::new([0xfd; 16], [0; 16], 80, valid));
    let mut new = DataplaneState::default();
    let b6 = BackendValue6::new([0xfe; 16], [0; 16], 80, valid);
    let b4 = BackendValue::new([10, 42, 0, 6], [192, 168, 50, 11], 80, valid);
    new.backends6.insert(3, b6);
    new.backends.insert(4, b4);
    assert_eq!(
        diff(&old, &new),
        vec![
            MapOp::ClearBackend6(4),
            MapOp::PutBackend(4, b4),
            MapOp::ClearBackend(3),
            MapOp::PutBackend6(3, b6),
        ]
    );
    let mut maps = Maps::of(&old);
    for op in diff(&old, &new) {
        maps.apply(&op);
        maps.safe_between(&old, &new).unwrap();
    }
    maps.holds(&new).unwrap();
}

/// A dual-stack update: the IPv6 entries follow the IPv4 order, step by step.
#[test]
fn ipv6_first_apply_order() {
    let text = "\
announce: [\"fd00:60::1\"]
services:
  - name: web6
    vip: fd00:60::1
    ports: [{ port: 80 }]
    source_ranges: [\"fd00:10::/32\"]
    backends: [{ ip: \"fd00:42::5\", node_ip: \"fd00:50::11\" }]
";
    let a = plan(&DataplaneState::default(), &parse(text), &NODE, &limits()).unwrap();
    let kinds: Vec<&str> = diff(&DataplaneState::default(), &a)
        .iter()
        .map(|op| match op {
            MapOp::PutConfig(_) => "config",
            MapOp::PutBackend6(..) => "backend6",
            MapOp::PutMaglev { .. } => "maglev",
            MapOp::PutSrcRange6(..) => "src_range6",
            MapOp::PutService6(..) => "service6",
            MapOp::PutVip(..) => "vip",
            MapOp::PutVip6(..) => "vip6",
            _ => "other",
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "config",
            "backend6",
            "maglev",
            "src_range6",
            "service6",
            "vip",
            "vip6",
            "vip6"
        ]
    );
    let empty = plan(&a, &parse("services: []\n"), &NODE, &limits()).unwrap();
    let ops = diff(&a, &empty);
    let pos = |f: &dyn Fn(&MapOp) -> bool| ops.iter().position(f).unwrap();
    assert!(
        pos(&|o| matches!(o, MapOp::DelVip6(_))) < pos(&|o| matches!(o, MapOp::DelService6(_)))
    );
    assert!(
        pos(&|o| matches!(o, MapOp::DelService6(_)))
            < pos(&|o| matches!(o, MapOp::DelSrcRange6(..)))
    );
    // Retired (draining, gone) after the service went; deleted once released.
    assert!(
        pos(&|o| matches!(o, MapOp::DelSrcRange6(..)))
            < pos(&|o| matches!(o, MapOp::PutBackend6(..)))
    );
    apply_checked(&a, &empty).unwrap();
}
