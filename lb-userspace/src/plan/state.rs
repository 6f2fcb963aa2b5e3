//! The desired contents of the BPF maps, computed from the services file
//! and the previous contents ([`plan`]), and the checks that let the agent
//! adopt contents it read back from pinned maps after a restart
//! ([`DataplaneState::allocators`]).
//!
//! `plan` is stable: identities keep their ids and unchanged Maglev tables
//! keep their region, so planning the same file over its own result (or
//! over maps read back after a restart) changes nothing. It also never
//! reuses, within one plan, an id or a `maglev` slot that the previous
//! contents still use: the map writer can then apply the difference in an
//! order where no packet sees a half-written table or a backend id that
//! means something else (see [`crate::diff`]).
//!
//! Graceful drain: a backend slot lives on after its endpoint stops taking
//! new flows, so the flows already on it keep going.
//! - A draining backend of the model (a terminating endpoint) keeps its slot
//!   flagged `DRAINING` and is in no Maglev table.
//! - A backend that leaves the model altogether is *retired*: its slot stays
//!   with `DRAINING | GONE` (node address and locality as they were), its id
//!   is not reused, and it is dropped only when the caller lists it in
//!   [`PlanOptions::release`] (the agent does once no live flow names it,
//!   or after a maximum drain time).
//! - An identity that comes back (the same pod address and target port)
//!   takes its old slot again, serving.
//!
//! IPv6: `vips6`, `services6`, `backends6` and `src_ranges6` are planned as
//! their IPv4 twins. Service ids, backend ids and `maglev` slots are one
//! space for both families: an id is in `backends` or in `backends6`, never
//! both (the data path reads an IPv6 service's ids in `backends6` only, and
//! the plan never gives an id the current contents still use to anything
//! else, so an id changes family only after the writer has cleared it).

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use lb_common::{
    BackendValue, BackendValue6, DatapathConfig, HalfOpenGuard, ServiceKey, ServiceKey6,
    ServiceValue, SourceRangeData, SourceRangeData6, backend_flags, config_flags, service_flags,
    source_range_prefixlen, vip_flags,
};

use crate::plan::ids::{IdAllocator, IdError};
use crate::plan::maglev;
use crate::plan::model::{
    Backend, Cidr, DirectReturn, Frontend, FrontendKey, Limits, NodeServices, Service, ServicePort,
    SessionAffinity,
};
use crate::plan::slots::{Region, SlotAllocator, SlotError};

/// What the agent knows about the interface it serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Node {
    pub ip: Ipv4Addr,
    /// The node's IPv6 address, if it has one: `node_ip` of its IPv6
    /// backends (which are local when their node is named by it), and a
    /// `NODE` entry of `vips6`.
    pub ip6: Option<Ipv6Addr>,
    pub ifindex: u32,
    pub mac: [u8; 6],
    /// Seed of the data path's flow hash: the cluster's secret, the same on
    /// every node (`lb_common::hash`).
    pub hash_seed: u32,
    /// The interface's subnet: with `NodeServices::direct_return`, backends
    /// on nodes in it may be reached by direct server return. `None` (no
    /// address on the interface, or a /32): none is.
    pub segment: Option<Cidr>,
    /// The same for IPv6: the prefix of the interface's first global IPv6
    /// address (`None`: no IPv6 pod on another node is reached by direct
    /// return; full NAT takes them).
    pub segment6: Option<Cidr>,
}

/// Key of the `src_ranges` LPM trie, ordered by service id, address, then
/// prefix length (`SourceRangeData` itself has no order).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SrcRangeKey {
    /// `32 + CIDR prefix length`.
    pub prefixlen: u32,
    pub data: SourceRangeData,
}

impl SrcRangeKey {
    /// The key of an IPv4 `cidr`; `None` for an IPv6 one (see [`SrcRangeKey6`]).
    pub fn new(service_id: u32, cidr: Cidr) -> Option<Self> {
        let IpAddr::V4(addr) = cidr.addr else {
            return None;
        };
        Some(Self {
            prefixlen: source_range_prefixlen(cidr.prefix_len),
            data: SourceRangeData::new(service_id, addr.octets()),
        })
    }

    pub fn service_id(&self) -> u32 {
        u32::from_be_bytes(self.data.service_id)
    }

    /// The CIDR, if the key is well-formed (prefix 32..=64, no host bits).
    pub fn cidr(&self) -> Option<Cidr> {
        let len = u8::try_from(self.prefixlen.checked_sub(32)?).ok()?;
        if len > 32 {
            return None;
        }
        let addr = Ipv4Addr::from(self.data.addr);
        (u32::from(addr) & Cidr::mask(len) == u32::from(addr)).then_some(Cidr {
            addr: IpAddr::V4(addr),
            prefix_len: len,
        })
    }

    fn sort_key(&self) -> (u32, [u8; 4], u32) {
        (self.service_id(), self.data.addr, self.prefixlen)
    }
}

/// Key of the `src_ranges6` LPM trie: [`SrcRangeKey`] for IPv6 ranges.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SrcRangeKey6 {
    /// `32 + CIDR prefix length`.
    pub prefixlen: u32,
    pub data: SourceRangeData6,
}

impl SrcRangeKey6 {
    /// The key of an IPv6 `cidr`; `None` for an IPv4 one (see [`SrcRangeKey`]).
    pub fn new(service_id: u32, cidr: Cidr) -> Option<Self> {
        let IpAddr::V6(addr) = cidr.addr else {
            return None;
        };
        Some(Self {
            prefixlen: source_range_prefixlen(cidr.prefix_len),
            data: SourceRangeData6::new(service_id, addr.octets()),
        })
    }

    pub fn service_id(&self) -> u32 {
        u32::from_be_bytes(self.data.service_id)
    }

    /// The CIDR, if the key is well-formed (prefix 32..=160, no host bits).
    pub fn cidr(&self) -> Option<Cidr> {
        let len = u8::try_from(self.prefixlen.checked_sub(32)?).ok()?;
        if len > 128 {
            return None;
        }
        let addr = Ipv6Addr::from(self.data.addr);
        (u128::from(addr) & Cidr::mask6(len) == u128::from(addr)).then_some(Cidr {
            addr: IpAddr::V6(addr),
            prefix_len: len,
        })
    }

    fn sort_key(&self) -> (u32, [u8; 16], u32) {
        (self.service_id(), self.data.addr, self.prefixlen)
    }
}

macro_rules! order_by_sort_key {
    ($($t:ty),*) => {$(
        impl Ord for $t {
            fn cmp(&self, other: &Self) -> Ordering {
                self.sort_key().cmp(&other.sort_key())
            }
        }

        impl PartialOrd for $t {
            fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
                Some(self.cmp(other))
            }
        }
    )*};
}

order_by_sort_key!(SrcRangeKey, SrcRangeKey6);

/// A `services` or `services6` key: one frontend of either family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AnyServiceKey {
    V4(ServiceKey),
    V6(ServiceKey6),
}

impl AnyServiceKey {
    /// The key of `vip:port/proto` in its family's map.
    pub fn new(vip: IpAddr, port: u16, proto: u8) -> Self {
        match vip {
            IpAddr::V4(a) => Self::V4(ServiceKey::new(a.octets(), port, proto)),
            IpAddr::V6(a) => Self::V6(ServiceKey6::new(a.octets(), port, proto)),
        }
    }
}

impl AnyServiceKey {
    /// The VIP, of either family.
    pub fn vip(&self) -> IpAddr {
        match self {
            Self::V4(k) => IpAddr::from(k.vip),
            Self::V6(k) => IpAddr::from(k.vip),
        }
    }

    /// Host order.
    pub fn port(&self) -> u16 {
        match self {
            Self::V4(k) => k.port,
            Self::V6(k) => k.port,
        }
    }

    /// A `lb_common::proto` number.
    pub fn proto(&self) -> u8 {
        match self {
            Self::V4(k) => k.proto,
            Self::V6(k) => k.proto,
        }
    }
}

impl FrontendKey for AnyServiceKey {
    fn vip(&self) -> IpAddr {
        Self::vip(self)
    }
    fn port(&self) -> u16 {
        Self::port(self)
    }
    fn proto(&self) -> u8 {
        Self::proto(self)
    }
}

/// A backend slot of either family: the `backends` or the `backends6`
/// entry of an id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendSlot {
    V4(BackendValue),
    V6(BackendValue6),
}

impl BackendSlot {
    /// [`backend_flags`] bits.
    pub fn flags(&self) -> u16 {
        match self {
            Self::V4(b) => b.flags,
            Self::V6(b) => b.flags,
        }
    }

    fn set_flags(&mut self, flags: u16) {
        match self {
            Self::V4(b) => b.flags = flags,
            Self::V6(b) => b.flags = flags,
        }
    }

    /// Pod address.
    pub fn ip(&self) -> IpAddr {
        match self {
            Self::V4(b) => IpAddr::from(b.ip),
            Self::V6(b) => IpAddr::from(b.ip),
        }
    }

    /// Target port.
    pub fn port(&self) -> u16 {
        match self {
            Self::V4(b) => b.port,
            Self::V6(b) => b.port,
        }
    }

    /// The node's address (unspecified when unknown).
    pub fn node_ip(&self) -> IpAddr {
        match self {
            Self::V4(b) => IpAddr::from(b.node_ip),
            Self::V6(b) => IpAddr::from(b.node_ip),
        }
    }

    /// (pod address, target port): what the id stands for.
    pub fn identity(&self) -> (IpAddr, u16) {
        (self.ip(), self.port())
    }
}

pub use crate::plan::table::Table;

/// Exactly what the BPF maps should contain.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DataplaneState {
    /// The single `config` element.
    pub config: DatapathConfig,
    /// `vips`: address -> [`vip_flags`].
    pub vips: BTreeMap<[u8; 4], u32>,
    /// `services`.
    pub services: BTreeMap<ServiceKey, ServiceValue>,
    /// `backends`: the valid slots only (others are zero).
    pub backends: BTreeMap<u32, BackendValue>,
    /// `maglev`: the table of every service (of either family) with
    /// backends, by offset.
    pub maglev: BTreeMap<u32, Table>,
    /// `src_ranges` keys (the value is always 1).
    pub src_ranges: BTreeSet<SrcRangeKey>,
    /// `vips6`: IPv6 address -> [`vip_flags`].
    pub vips6: BTreeMap<[u8; 16], u32>,
    /// `services6`: IPv6 frontends, with ids and tables of the shared spaces.
    pub services6: BTreeMap<ServiceKey6, ServiceValue>,
    /// `backends6`: IPv6 backends, by ids none of which is in `backends`.
    pub backends6: BTreeMap<u32, BackendValue6>,
    /// `src_ranges6` keys (the value is always 1).
    pub src_ranges6: BTreeSet<SrcRangeKey6>,
}

/// Contents that no sequence of plans and partial applications produces.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    #[error("ids: {0}")]
    Ids(#[source] IdError),
    #[error("backend id {id} is out of range (the backends array has {max} slots)")]
    BackendIdOutOfRange { id: u32, max: u32 },
    #[error("backend slot {id} is listed but not marked valid")]
    BackendNotValid { id: u32 },
    #[error("backend id {id} is both in backends and in backends6")]
    BackendInBothFamilies { id: u32 },
    #[error("backends {a} and {b} are both {identity}")]
    DuplicateBackend { a: u32, b: u32, identity: String },
    #[error("service {key} has id {id}, out of range (ids are < {max})")]
    ServiceIdOutOfRange { key: String, id: u32, max: u32 },
    #[error("services {a} and {b} share id {id}")]
    DuplicateServiceId { a: String, b: String, id: u32 },
    #[error("service {key} points at maglev offset {offset} where no table is")]
    MissingTable { key: String, offset: u32 },
    #[error("service {key} has maglev_len {expected} but its table has {found} slots")]
    TableLength {
        key: String,
        expected: u32,
        found: usize,
    },
    #[error("the maglev table of service {key} names backend {id}, which is not valid")]
    DanglingBackend { key: String, id: u32 },
    #[error("the maglev table at offset {offset} belongs to no service")]
    UnreferencedTable { offset: u32 },
    #[error("maglev regions: {0}")]
    Regions(#[source] SlotError),
    #[error("malformed src_ranges key (prefixlen {prefixlen}, address {addr})")]
    BadSrcRange { prefixlen: u32, addr: IpAddr },
}

/// Why no state could be planned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("the current map contents are inconsistent: {0}")]
    Inconsistent(#[from] StateError),
    #[error("the interface address {node} is not node.ip {file} of the services file")]
    NodeIpMismatch { node: Ipv4Addr, file: Ipv4Addr },
    #[error("the node's IPv6 address {node} is not node.ip6 {file} of the services file")]
    NodeIp6Mismatch { node: Ipv6Addr, file: Ipv6Addr },
    #[error("service {service}: its VIP {vip} is this node's own address")]
    VipIsNodeIp { service: String, vip: IpAddr },
    #[error("{frontend} is served by both {a} and {b}")]
    DuplicateFrontend {
        frontend: String,
        a: String,
        b: String,
    },
    #[error("pod {pod} is listed on node {a} and on node {b}")]
    ConflictingBackendNode { pod: IpAddr, a: IpAddr, b: IpAddr },
    #[error(
        "service {service}: backend {backend} is not of the family of its VIP {vip} \
         (a dual-stack service is two services, one per family)"
    )]
    MixedFamilies {
        service: String,
        vip: IpAddr,
        backend: IpAddr,
    },
    /// Ids still used by the current contents count too: they are freed
    /// only once the new contents are written.
    #[error("out of backend ids: {0}")]
    BackendIds(#[source] IdError),
    #[error("out of service ids: {0}")]
    ServiceIds(#[source] IdError),
    /// The current tables stay in place while new ones are written.
    #[error(
        "maglev array: {0}; the maps keep their last state until tables fit \
         (start the agent with a larger --maglev-slots after `onehop cleanup`, or give \
         services smaller Maglev table sizes: README, Maglev table sizes)"
    )]
    Maglev(#[source] SlotError),
    /// Counted over the current and new entries: both exist for a moment.
    #[error("{what}: {count} entries during the update, more than the {max} the map holds")]
    MapFull {
        what: &'static str,
        count: usize,
        max: u32,
    },
}

/// Allocators rebuilt from a state: what is in use in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allocators {
    pub backend_ids: IdAllocator,
    /// Ids of services, and of `src_ranges` keys whose service is gone (a
    /// partially applied update); a new service must not inherit them.
    pub service_ids: IdAllocator,
    pub slots: SlotAllocator,
}

/// `TCP 192.168.50.100:80`, as plan errors name a frontend.
pub fn frontend_name<K: FrontendKey>(key: &K) -> String {
    format!("{:#}", Frontend(key))
}

impl DataplaneState {
    /// Every frontend of both families with its entry.
    pub fn all_services(&self) -> impl Iterator<Item = (AnyServiceKey, &ServiceValue)> + '_ {
        let v4 = self
            .services
            .iter()
            .map(|(k, v)| (AnyServiceKey::V4(*k), v));
        v4.chain(
            self.services6
                .iter()
                .map(|(k, v)| (AnyServiceKey::V6(*k), v)),
        )
    }

    /// The entry of a frontend of either family.
    pub fn service(&self, key: &AnyServiceKey) -> Option<&ServiceValue> {
        match key {
            AnyServiceKey::V4(k) => self.services.get(k),
            AnyServiceKey::V6(k) => self.services6.get(k),
        }
    }

    fn insert_service(&mut self, key: AnyServiceKey, value: ServiceValue) {
        match key {
            AnyServiceKey::V4(k) => self.services.insert(k, value),
            AnyServiceKey::V6(k) => self.services6.insert(k, value),
        };
    }

    /// Every backend slot of both families, by id.
    pub fn all_backends(&self) -> impl Iterator<Item = (u32, BackendSlot)> + '_ {
        let v4 = self
            .backends
            .iter()
            .map(|(&id, b)| (id, BackendSlot::V4(*b)));
        v4.chain(
            self.backends6
                .iter()
                .map(|(&id, b)| (id, BackendSlot::V6(*b))),
        )
    }

    /// The slot of backend `id`, in whichever family's map holds it.
    pub fn backend(&self, id: u32) -> Option<BackendSlot> {
        self.backends
            .get(&id)
            .map(|b| BackendSlot::V4(*b))
            .or_else(|| self.backends6.get(&id).map(|b| BackendSlot::V6(*b)))
    }

    /// The service ids the source ranges of both families name (below the
    /// limit: a stale key of an id beyond it cannot collide with a new
    /// service, so it needs no reserving); an error for a malformed key.
    fn range_service_ids(&self, limits: &Limits) -> Result<BTreeSet<u32>, StateError> {
        let ranges4 = self.src_ranges.iter().map(|r| {
            let addr = IpAddr::from(r.data.addr);
            (r.cidr(), r.prefixlen, addr, r.service_id())
        });
        let ranges6 = self.src_ranges6.iter().map(|r| {
            let addr = IpAddr::from(r.data.addr);
            (r.cidr(), r.prefixlen, addr, r.service_id())
        });
        let mut ids = BTreeSet::new();
        for (cidr, prefixlen, addr, service_id) in ranges4.chain(ranges6) {
            if cidr.is_none() {
                return Err(StateError::BadSrcRange { prefixlen, addr });
            }
            if service_id < limits.max_services {
                ids.insert(service_id);
            }
        }
        Ok(ids)
    }

    /// The `maglev` regions the services of both families point at.
    pub fn regions(&self) -> impl Iterator<Item = (AnyServiceKey, Region)> + '_ {
        self.all_services()
            .filter(|(_, v)| v.maglev_len > 0)
            .map(|(k, v)| (k, Region::new(v.maglev_offset, v.maglev_len)))
    }

    /// Checks that the contents are consistent (every reference resolves,
    /// ids and regions within limits and unique) and rebuilds the
    /// allocators from them. Use it on contents read back from the maps.
    ///
    /// Tolerated, because an interrupted update leaves them: backends no
    /// table uses, VIPs without services and the reverse, source ranges of
    /// services that do not exist or have no `SOURCE_RANGES` flag.
    pub fn allocators(&self, limits: &Limits) -> Result<Allocators, StateError> {
        let mut identities = HashMap::new();
        if let Some(&id) = self
            .backends6
            .keys()
            .find(|id| self.backends.contains_key(id))
        {
            return Err(StateError::BackendInBothFamilies { id });
        }
        for (id, b) in self.all_backends() {
            if id >= limits.max_backends {
                return Err(StateError::BackendIdOutOfRange {
                    id,
                    max: limits.max_backends,
                });
            }
            if b.flags() & backend_flags::VALID == 0 {
                return Err(StateError::BackendNotValid { id });
            }
            let (ip, port) = b.identity();
            if let Some(a) = identities.insert((ip, port), id) {
                return Err(StateError::DuplicateBackend {
                    a,
                    b: id,
                    identity: maglev::identity(ip, port),
                });
            }
        }
        let mut service_ids: BTreeMap<u32, AnyServiceKey> = BTreeMap::new();
        for (key, v) in self.all_services() {
            if v.id >= limits.max_services {
                return Err(StateError::ServiceIdOutOfRange {
                    key: frontend_name(&key),
                    id: v.id,
                    max: limits.max_services,
                });
            }
            if let Some(a) = service_ids.insert(v.id, key) {
                return Err(StateError::DuplicateServiceId {
                    a: frontend_name(&a),
                    b: frontend_name(&key),
                    id: v.id,
                });
            }
        }
        // Every slot of every table is checked (10 million at 10,000 services with 10
        // backends each): an array indexed by id, not a map lookup per slot. Ids were
        // checked against the limit above.
        let mut present = vec![false; limits.max_backends as usize];
        for (id, _) in self.all_backends() {
            present[id as usize] = true;
        }
        for (key, region) in self.regions() {
            let table =
                self.maglev
                    .get(&region.offset)
                    .ok_or_else(|| StateError::MissingTable {
                        key: frontend_name(&key),
                        offset: region.offset,
                    })?;
            if table.len() != region.len as usize {
                return Err(StateError::TableLength {
                    key: frontend_name(&key),
                    expected: region.len,
                    found: table.len(),
                });
            }
            if let Some(&id) = table
                .ids()
                .iter()
                .find(|&&id| !present.get(id as usize).copied().unwrap_or(false))
            {
                return Err(StateError::DanglingBackend {
                    key: frontend_name(&key),
                    id,
                });
            }
        }
        let slots = SlotAllocator::rebuild(limits.maglev_slots, self.regions().map(|(_, r)| r))
            .map_err(StateError::Regions)?;
        let referenced: BTreeSet<u32> = slots.regions().map(|r| r.offset).collect();
        if let Some(&offset) = self.maglev.keys().find(|o| !referenced.contains(o)) {
            return Err(StateError::UnreferencedTable { offset });
        }
        let mut ids: BTreeSet<u32> = service_ids.keys().copied().collect();
        ids.extend(self.range_service_ids(limits)?);
        // Checked against the limits above, so these should not fail; the
        // contents come from kernel maps, so report rather than assume.
        let backend_ids =
            IdAllocator::rebuild(limits.max_backends, self.all_backends().map(|(id, _)| id))
                .map_err(StateError::Ids)?;
        let service_ids =
            IdAllocator::rebuild(limits.max_services, ids).map_err(StateError::Ids)?;
        Ok(Allocators {
            backend_ids,
            service_ids,
            slots,
        })
    }
}

/// Computes the map contents for `file` on `node`, keeping everything of
/// `prev` (the current contents) that still applies, retired backends
/// included (none is released).
pub fn plan(
    prev: &DataplaneState,
    file: &NodeServices,
    node: &Node,
    limits: &Limits,
) -> Result<DataplaneState, PlanError> {
    plan_with(prev, file, node, limits, Tables::Build, &BTreeSet::new())
}

/// How [`plan_with_options`] plans.
#[derive(Debug, Clone, Copy)]
pub struct PlanOptions<'a> {
    /// `prev` is a plan of ours: take unchanged Maglev tables from it (see [`replan`]).
    pub reuse_tables: bool,
    /// Retired backend slots (`DRAINING | GONE` in `prev`) to drop. Ids of
    /// anything else are ignored: a slot still in use is never released.
    pub release: &'a BTreeSet<u32>,
}

/// [`plan`] or [`replan`] that also releases retired backend slots.
pub fn plan_with_options(
    prev: &DataplaneState,
    file: &NodeServices,
    node: &Node,
    limits: &Limits,
    opts: PlanOptions<'_>,
) -> Result<DataplaneState, PlanError> {
    let tables = if opts.reuse_tables {
        Tables::ReuseUnchanged
    } else {
        Tables::Build
    };
    plan_with(prev, file, node, limits, tables, opts.release)
}

/// The flags of a retired backend slot.
const RETIRED: u16 = backend_flags::DRAINING | backend_flags::GONE;

/// The retired backend slots of a state: draining and gone.
pub fn retired(state: &DataplaneState) -> impl Iterator<Item = u32> + '_ {
    state
        .all_backends()
        .filter(|(_, b)| b.flags() & RETIRED == RETIRED)
        .map(|(id, _)| id)
}

/// [`plan`] for a `prev` that [`plan`] or [`replan`] computed: a Maglev table whose
/// backends are unchanged is taken from `prev` instead of being built again, which gives
/// the same table. Not for contents read back from the maps: an older version (or anything
/// else) may have written a table in another order there, and every node must build the
/// same table for a service.
pub fn replan(
    prev: &DataplaneState,
    file: &NodeServices,
    node: &Node,
    limits: &Limits,
) -> Result<DataplaneState, PlanError> {
    plan_with(
        prev,
        file,
        node,
        limits,
        Tables::ReuseUnchanged,
        &BTreeSet::new(),
    )
}

/// Where a plan's Maglev tables come from.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Tables {
    /// All built from the backends.
    Build,
    /// Taken from `prev` when their backends did not change (see `replan`).
    ReuseUnchanged,
}

/// The data path's [`config_flags`] for `file` on a node with `limits`.
fn config_flags_of(file: &NodeServices, limits: &Limits) -> u16 {
    let mut flags = 0;
    if file.direct_return.on() {
        flags |= config_flags::DIRECT_RETURN;
    }
    if limits.legacy_tags6 {
        flags |= config_flags::LEGACY_TAGS6;
    }
    flags
}

fn plan_with(
    prev: &DataplaneState,
    file: &NodeServices,
    node: &Node,
    limits: &Limits,
    tables: Tables,
    release: &BTreeSet<u32>,
) -> Result<DataplaneState, PlanError> {
    let mut alloc = prev.allocators(limits)?;
    if let Some(file_ip) = file.node_ip
        && file_ip != node.ip
    {
        return Err(PlanError::NodeIpMismatch {
            node: node.ip,
            file: file_ip,
        });
    }
    if let (Some(file_ip), Some(node_ip)) = (file.node_ip6, node.ip6)
        && file_ip != node_ip
    {
        return Err(PlanError::NodeIp6Mismatch {
            node: node_ip,
            file: file_ip,
        });
    }
    let (frontends, pods) = frontends(file, node)?;
    let (backends, backend_ids) = plan_backends(
        prev,
        &frontends,
        &pods,
        node,
        &file.direct_return,
        release,
        &mut alloc,
    )?;
    let mut state = DataplaneState {
        config: DatapathConfig::new(
            node.ip.octets(),
            node.ifindex,
            node.mac,
            file.nat_ports.min,
            file.nat_ports.max,
            true,
        )
        .with_timeouts(file.flow_timeouts)
        .with_half_open(HalfOpenGuard::with_max(
            limits.half_open_max,
            file.flow_timeouts,
        ))
        .with_hash_seed(node.hash_seed)
        .with_flow_sets(limits.flow_sets)
        .with_node_ip6(node.ip6.map_or([0; 16], |a| a.octets()))
        .with_flags(config_flags_of(file, limits)),
        ..DataplaneState::default()
    };
    (state.vips, state.vips6) = plan_vips(file, node);
    for (id, b) in backends {
        match b {
            BackendSlot::V4(b) => {
                state.backends.insert(id, b);
            }
            BackendSlot::V6(b) => {
                state.backends6.insert(id, b);
            }
        }
    }
    for (key, (s, p)) in frontends {
        plan_service(
            prev,
            tables,
            &mut state,
            &mut alloc,
            &backend_ids,
            &pods,
            key,
            s,
            *p,
            s.table_size(file.maglev_table_size),
        )?;
    }
    peak_fits("vips", prev.vips.keys(), state.vips.keys(), limits.max_vips)?;
    peak_fits(
        "vips6",
        prev.vips6.keys(),
        state.vips6.keys(),
        limits.max_vips,
    )?;
    peak_fits(
        "src_ranges",
        prev.src_ranges.iter(),
        state.src_ranges.iter(),
        limits.max_src_ranges,
    )?;
    peak_fits(
        "src_ranges6",
        prev.src_ranges6.iter(),
        state.src_ranges6.iter(),
        limits.max_src_ranges,
    )?;
    Ok(state)
}

/// Each frontend with its service and port.
type Frontends<'a> = BTreeMap<AnyServiceKey, (&'a Service, &'a ServicePort)>;

/// Pod address -> the address of its node.
type Pods = BTreeMap<IpAddr, IpAddr>;

/// Backend identity (pod address, target port) -> id.
type BackendIds = HashMap<(IpAddr, u16), u32>;

/// The frontends, and the node of every pod; rejects what the validated
/// file cannot contain but a hand-built one could.
fn frontends<'a>(file: &'a NodeServices, node: &Node) -> Result<(Frontends<'a>, Pods), PlanError> {
    let mut frontends: Frontends<'a> = BTreeMap::new();
    let mut pods: Pods = BTreeMap::new();
    for s in &file.services {
        if s.vip == IpAddr::V4(node.ip) || node.ip6.map(IpAddr::V6) == Some(s.vip) {
            return Err(PlanError::VipIsNodeIp {
                service: s.name.clone(),
                vip: s.vip,
            });
        }
        if let Some(b) = s
            .backends
            .iter()
            .chain(&s.draining)
            .find(|b| b.ip.is_ipv6() != s.vip.is_ipv6())
        {
            return Err(PlanError::MixedFamilies {
                service: s.name.clone(),
                vip: s.vip,
                backend: b.ip,
            });
        }
        for p in &s.ports {
            let key = AnyServiceKey::new(s.vip, p.port, p.protocol.number());
            if let Some((other, _)) = frontends.insert(key, (s, p)) {
                return Err(PlanError::DuplicateFrontend {
                    frontend: frontend_name(&key),
                    a: other.name.clone(),
                    b: s.name.clone(),
                });
            }
        }
        for b in s.backends.iter().chain(&s.draining) {
            if let Some(&other) = pods.get(&b.ip)
                && other != b.node_ip
            {
                return Err(PlanError::ConflictingBackendNode {
                    pod: b.ip,
                    a: other,
                    b: b.node_ip,
                });
            }
            pods.insert(b.ip, b.node_ip);
        }
    }
    Ok((frontends, pods))
}

/// Backends: prev's id for a known identity, else the lowest id used
/// neither by prev nor by the new contents. Returns the `backends` entries
/// and the id of every identity the model names (serving or draining).
///
/// An identity is `DRAINING` when no frontend takes new flows to it. Slots
/// of prev whose identity is no longer wanted are retired, not dropped,
/// unless `release` names them (see the module documentation).
fn plan_backends(
    prev: &DataplaneState,
    frontends: &Frontends<'_>,
    pods: &Pods,
    node: &Node,
    file_direct: &DirectReturn,
    release: &BTreeSet<u32>,
    alloc: &mut Allocators,
) -> Result<(BTreeMap<u32, BackendSlot>, BackendIds), PlanError> {
    let prev_ids: BackendIds = prev
        .all_backends()
        .map(|(id, b)| (b.identity(), id))
        .collect();
    // Identity -> whether some frontend takes new flows to it.
    let mut wanted: BTreeMap<(IpAddr, u16), bool> = BTreeMap::new();
    for (s, p) in frontends.values() {
        let all = s.backends.iter().map(|b| (b, true));
        for (b, serving) in all.chain(s.draining.iter().map(|b| (b, false))) {
            if let Some(port) = s.target_port(b.ip, p) {
                *wanted.entry((b.ip, port)).or_default() |= serving;
            }
        }
    }
    let mut backends = BTreeMap::new();
    let mut ids = HashMap::new();
    for (&(ip, port), &serving) in &wanted {
        let id = match prev_ids.get(&(ip, port)) {
            Some(&id) => id,
            None => alloc
                .backend_ids
                .allocate()
                .map_err(PlanError::BackendIds)?,
        };
        let node_ip = pods.get(&ip).copied();
        let mut flags = backend_flags::VALID;
        let local = node_ip
            .is_some_and(|n| n == IpAddr::V4(node.ip) || Some(n) == node.ip6.map(IpAddr::V6));
        if local {
            flags |= backend_flags::LOCAL;
        } else if let Some(n) = node_ip
            && n.is_ipv4() == ip.is_ipv4()
            && direct_to(file_direct, node, n)
        {
            // The data path finds the other node's MAC through its address
            // of the pod's family (an IPv6 pod on a node known only by its
            // IPv4 address is reached from its own node only).
            flags |= backend_flags::DIRECT;
        }
        ids.insert((ip, port), id);
        if !serving {
            flags |= backend_flags::DRAINING;
        }
        let slot = match ip {
            IpAddr::V4(ip) => {
                let n = match node_ip {
                    Some(IpAddr::V4(n)) => n,
                    _ => Ipv4Addr::UNSPECIFIED,
                };
                BackendSlot::V4(BackendValue::new(ip.octets(), n.octets(), port, flags))
            }
            IpAddr::V6(ip) => {
                // A node named by its IPv4 address has no IPv6 next hop:
                // all zero, and the data path serves the pod only locally.
                let n = match node_ip {
                    Some(IpAddr::V6(n)) => n,
                    _ => Ipv6Addr::UNSPECIFIED,
                };
                BackendSlot::V6(BackendValue6::new(ip.octets(), n.octets(), port, flags))
            }
        };
        backends.insert(id, slot);
    }
    // Retired slots: what prev had and the model no longer names. Their node
    // and locality stay as they were: the flows on them go where they went.
    for (id, mut b) in prev.all_backends() {
        let was_retired = b.flags() & backend_flags::GONE != 0;
        if wanted.contains_key(&b.identity()) || (was_retired && release.contains(&id)) {
            continue;
        }
        b.set_flags(b.flags() | backend_flags::DRAINING | backend_flags::GONE);
        backends.insert(id, b);
    }
    Ok((backends, ids))
}

/// Whether a backend on the node `node_ip` (not this one) is reached by
/// direct server return: only on this node's segment of that family, where
/// the frame can be addressed to that node's MAC; beyond a router it would
/// come back to the announcer, and full NAT takes it. The data path checks
/// the FIB's next hop again.
fn direct_to(direct_return: &DirectReturn, node: &Node, node_ip: IpAddr) -> bool {
    let segment = match node_ip {
        IpAddr::V4(_) => node.segment,
        IpAddr::V6(_) => node.segment6,
    };
    let on_segment = segment.is_some_and(|s| s.contains(node_ip));
    !node_ip.is_unspecified() && on_segment && direct_return.allows(node_ip)
}

/// The frontend's table in `prev` when building it again would give the same table (for a
/// `prev` that `plan` built): it holds exactly the ids of `members` (backend (address,
/// target port) and id), and each of those ids stood for the same backend in `prev`, so
/// the same identities. Rebuilding
/// every table on every pass was a fifth of a pass at 10,000 services (profiled on the
/// agent while one endpoint changed).
fn unchanged_table<'a>(
    prev: &'a DataplaneState,
    old: Option<&ServiceValue>,
    members: &[((IpAddr, u16), u32)],
    size: maglev::MaglevSize,
) -> Option<&'a Table> {
    let old = old.filter(|v| v.maglev_len > 0)?;
    let table = prev.maglev.get(&old.maglev_offset)?;
    for &(key, id) in members {
        if prev.backend(id).map(|b| b.identity()) != Some(key) {
            return None;
        }
    }
    let mut ids: Vec<u32> = members.iter().map(|&(_, id)| id).collect();
    ids.sort_unstable();
    ids.dedup();
    if table.len() != maglev::table_size(size, ids.len()) as usize {
        return None;
    }
    let mut seen = vec![false; ids.len()];
    for id in table.ids() {
        seen[ids.binary_search(id).ok()?] = true;
    }
    seen.iter().all(|&s| s).then_some(table)
}

/// Adds one frontend's `services` entry, Maglev table and source ranges.
#[expect(
    clippy::too_many_arguments,
    reason = "one call site, all of plan's state"
)]
fn plan_service(
    prev: &DataplaneState,
    tables: Tables,
    state: &mut DataplaneState,
    alloc: &mut Allocators,
    backend_ids: &BackendIds,
    pods: &Pods,
    key: AnyServiceKey,
    s: &Service,
    p: ServicePort,
    size: maglev::MaglevSize,
) -> Result<(), PlanError> {
    let old = prev.service(&key);
    let id = match old {
        Some(v) => v.id,
        None => alloc
            .service_ids
            .allocate()
            .map_err(PlanError::ServiceIds)?,
    };
    let ids_of = |backends: &'_ [Backend]| -> Vec<((IpAddr, u16), u32)> {
        backends
            .iter()
            .filter_map(|b| {
                let key = (b.ip, s.target_port(b.ip, &p)?);
                Some((key, *backend_ids.get(&key)?))
            })
            .collect()
    };
    // The serving endpoints (every identity a frontend serves is planned
    // without `DRAINING`).
    let members = ids_of(&s.backends);
    let reused = match tables {
        Tables::ReuseUnchanged => unchanged_table(prev, old, &members, size),
        Tables::Build => None,
    };
    let table: Table = reused.map_or_else(
        || {
            let named: Vec<(String, u32)> = members
                .iter()
                .map(|&((ip, port), id)| (maglev::identity(ip, port), id))
                .collect();
            maglev::build(&named, size).into()
        },
        Table::clone,
    );
    // At most the largest table size.
    let len = u32::try_from(table.len()).unwrap_or(u32::MAX);
    let offset = if table.is_empty() {
        0
    } else if let Some(v) = old
        // A service without backends has offset 0 and no region of its own:
        // the table there (if any) is another service's.
        && v.maglev_len > 0
        && prev.maglev.get(&v.maglev_offset) == Some(&table)
    {
        v.maglev_offset
    } else {
        // Never a slot prev uses: the allocator still holds all of them.
        alloc.slots.allocate(len).map_err(PlanError::Maglev)?.offset
    };
    if !table.is_empty() {
        state.maglev.insert(offset, table);
    }
    let mut flags = 0;
    let mut affinity_timeout_s = 0;
    if let SessionAffinity::ClientIp { timeout_s } = s.session_affinity {
        flags |= service_flags::AFFINITY;
        affinity_timeout_s = timeout_s;
    }
    // Only the ranges of the VIP's family go to its trie; restricted to
    // ranges of the other family only, the flag stands without entries, so
    // the data path's lookup misses for every client (fail closed).
    if s.restricted() {
        flags |= service_flags::SOURCE_RANGES;
        for c in s.own_family_ranges() {
            match key {
                AnyServiceKey::V4(_) => state.src_ranges.extend(SrcRangeKey::new(id, c)),
                AnyServiceKey::V6(_) => state.src_ranges6.extend(SrcRangeKey6::new(id, c)),
            }
        }
    }
    let local_fallback = if state.config.flags & config_flags::DIRECT_RETURN != 0 {
        let leaving = Leaving {
            terminating: &ids_of(&s.draining),
            previous: old.and_then(ServiceValue::local_fallback),
            pods,
        };
        local_fallback(state, &members, &leaving, id)
    } else {
        None
    };
    state.insert_service(
        key,
        ServiceValue::new(id, offset, len, flags, affinity_timeout_s)
            .with_local_fallback(local_fallback),
    );
    Ok(())
}

/// A service's local pods that no longer take new flows, which its
/// fallback may still name (see [`local_fallback`]).
struct Leaving<'a> {
    /// Its terminating endpoints (the model's `draining`).
    terminating: &'a [((IpAddr, u16), u32)],
    /// The fallback the previous plan named.
    previous: Option<u32>,
    /// Every pod address the model names: a retired slot's address among them has
    /// gone to another pod, which must not get the flows of the one that left.
    pods: &'a Pods,
}

/// The backend of this node that a node not announcing the VIP gives a new
/// flow whose Maglev pick is elsewhere (`ServiceValue::local_fallback`).
/// Only tables that differ between nodes (an update under way) send such
/// flows here, and the announcer that sent this one believes the service
/// has a pod on this node. In order:
/// - one of the service's local serving pods, spread over them by service
///   id so that several services do not all fall back to one pod;
/// - else one of its local terminating pods: the announcer has not yet
///   seen it leave, and a terminating pod still serves for its grace period;
/// - else the previous fallback, once its endpoint has left the service
///   altogether, while its slot is retired but not yet released (the
///   announcer may still be catching up with the removal) and no pod the
///   model names has its address (a pod address can be handed out again).
///
/// Dropping is the only other choice, so a pod that has stopped serving
/// loses nothing by being picked.
fn local_fallback(
    state: &DataplaneState,
    members: &[((IpAddr, u16), u32)],
    leaving: &Leaving<'_>,
    service_id: u32,
) -> Option<u32> {
    let local = |b: &BackendSlot| b.flags() & backend_flags::LOCAL != 0;
    let serving = |b: &BackendSlot| local(b) && b.flags() & backend_flags::DRAINING == 0;
    let pick = |of: &[((IpAddr, u16), u32)], ok: &dyn Fn(&BackendSlot) -> bool| {
        let mut ids: Vec<u32> = of
            .iter()
            .map(|&(_, id)| id)
            .filter(|&id| state.backend(id).as_ref().is_some_and(ok))
            .collect();
        ids.sort_unstable();
        ids.dedup();
        let n = u32::try_from(ids.len()).ok().filter(|&n| n > 0)?;
        ids.get(usize::try_from(service_id % n).ok()?).copied()
    };
    pick(members, &serving)
        .or_else(|| pick(leaving.terminating, &local))
        .or_else(|| {
            leaving.previous.filter(|&id| {
                state.backend(id).is_some_and(|b| {
                    local(&b)
                        && b.flags() & RETIRED == RETIRED
                        && !leaving.pods.contains_key(&b.ip())
                })
            })
        })
}

/// `vips` and `vips6`.
type Vips = (BTreeMap<[u8; 4], u32>, BTreeMap<[u8; 16], u32>);

fn plan_vips(file: &NodeServices, node: &Node) -> Vips {
    let mut vips: Vips = Default::default();
    let mut add = |ip: IpAddr, flag: u32| match ip {
        IpAddr::V4(a) => *vips.0.entry(a.octets()).or_default() |= flag,
        IpAddr::V6(a) => *vips.1.entry(a.octets()).or_default() |= flag,
    };
    for s in &file.services {
        add(s.vip, vip_flags::SERVICE);
    }
    for a in &file.announce {
        add(*a, vip_flags::ANNOUNCE);
    }
    add(IpAddr::V4(node.ip), vip_flags::NODE);
    if let Some(ip6) = node.ip6 {
        add(IpAddr::V6(ip6), vip_flags::NODE);
    }
    vips
}

/// Entries are added before stale ones are deleted, so a hash map holds
/// the union of both for a moment.
fn peak_fits<'a, T: Ord + 'a>(
    what: &'static str,
    prev: impl Iterator<Item = &'a T>,
    new: impl Iterator<Item = &'a T>,
    max: u32,
) -> Result<(), PlanError> {
    let count = prev.chain(new).collect::<BTreeSet<_>>().len();
    if count > max as usize {
        return Err(PlanError::MapFull { what, count, max });
    }
    Ok(())
}

#[cfg(test)]
mod tests;
