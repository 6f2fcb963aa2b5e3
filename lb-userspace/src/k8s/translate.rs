//! Kubernetes objects → the same validated model a services file gives
//! ([`NodeServices`]), so planning, diffing and map writing are shared by
//! both sources. Pure: the watchers hand in snapshots of their stores.
//!
//! Rules (kube-proxy's, where it has one):
//! - Services of type `LoadBalancer` whose `loadBalancerClass` is ours, or
//!   unset when [`ClassFilter::unclassed`] says so. Their VIPs are the IPv4
//!   and IPv6 addresses in `status.loadBalancer.ingress` (assigned by the
//!   controller); a dual-stack Service has one of each, and each becomes a
//!   service of the model with the endpoints of its own family.
//! - Ports: TCP and UDP; anything else gets a warning and is ignored. The
//!   target port of an endpoint comes from its own `EndpointSlice` (which
//!   names each port after the Service port and carries the number that
//!   slice's pods resolved; pods of one Service may differ), else from an
//!   integer `targetPort`. An endpoint whose slice cannot resolve a named
//!   `targetPort` does not serve that port.
//! - Endpoints: the `EndpointSlices` labelled `kubernetes.io/service-name`
//!   (`addressType` `IPv4` or `IPv6`), first address of each endpoint. New
//!   flows go to the ready ones; when none is ready, to the ones that are
//!   serving while terminating. Every other endpoint (terminating, or not
//!   ready) drains: flows already on it stay, none starts. Their node's
//!   `InternalIP` of the endpoint's family is the next hop for remote ones;
//!   an IPv6 endpoint whose node has no IPv6 `InternalIP` is named by the
//!   IPv4 one (local there, not reachable from other nodes).
//! - `externalTrafficPolicy: Local`: only endpoints on this node, and the
//!   fallback to serving-terminating ones is decided from this node's
//!   endpoints alone (as kube-proxy does): a node whose local endpoints are
//!   all terminating uses them, whatever other nodes have.
//! - `sessionAffinity: ClientIP` with its timeout (default 10800 s).
//! - `loadBalancerSourceRanges`: enforced; an unparsable one makes the whole
//!   service be skipped (fail closed) with a warning.
//! - An ingress address that is any Node's `InternalIP` or `ExternalIP` is
//!   neither served nor announced (a `NodeAddress` warning): XDP would answer
//!   ARP for it, or drop the ARP requests for it on every other node, and cut
//!   that node off. The controller never hands one out; this guards against a
//!   status written by hand or by another controller.
//! - Likewise an address that is one of this node's gateways ([`Inputs::gateways`], from
//!   its routes): a `GatewayAddress` warning. The controller cannot see the nodes' routes;
//!   every agent checks its own.
//! - Two Services may share a VIP (allow-shared-ip) on distinct ports; a
//!   later one (by namespace/name) that claims a taken VIP:port/protocol is
//!   skipped with a warning.
//! - Maglev table size: the annotation [`MAGLEV_TABLE_SIZE_ANNOTATION`] on
//!   the Service, else the agent's `--maglev-table-size`
//!   ([`Inputs::maglev_table_size`]). A value that is not an allowed size
//!   is an `InvalidMaglevTableSize` warning and the default applies (not the
//!   last good value: a node that restarts must still build the table its
//!   peers build). A Service whose backends would get fewer than 10 slots
//!   each has a bigger table (`plan::maglev::table_size`) and a
//!   `MaglevTableGrown` warning.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::Arc,
};

use k8s_openapi::{
    api::{
        core::v1::{Node, Service, ServicePort as K8sServicePort},
        discovery::v1::EndpointSlice,
    },
    apimachinery::pkg::util::intstr::IntOrString,
};

use super::slice::{Slice, Use};
use crate::plan::model::{
    Backend, Cidr, DEFAULT_AFFINITY_TIMEOUT_S, DirectReturn, FlowTimeouts, MaglevSize, NatPorts,
    NodeServices, Protocol, Service as LbService, ServicePort, SessionAffinity,
};
use crate::plan::state::AnyServiceKey;

/// Annotation on a Service that sets its own Maglev table size (one of
/// `lb_common::maps::MAGLEV_TABLE_SIZES`).
pub const MAGLEV_TABLE_SIZE_ANNOTATION: &str = "onehop.io/maglev-table-size";

/// Warnings for the Services with a frontend whose table the maps lack
/// (`current` gives the table length the maps hold for a frontend, if they
/// hold it), after a plan failed for want of Maglev slots (`capacity` in
/// all): the whole update waits, so their changes are not applied on this
/// node, and a Service new to it is not served there.
pub fn maglev_full_warnings(
    t: &Translation,
    node_name: &str,
    capacity: u32,
    current: impl Fn(&AnyServiceKey) -> Option<u32>,
) -> Vec<Warning> {
    let owners: BTreeMap<String, &ServiceRef> = t
        .services
        .iter()
        .flat_map(|tr| {
            tr.vips
                .iter()
                .map(move |vip| (model_name(&tr.service, *vip), &tr.service))
        })
        .collect();
    let mut out: Vec<Warning> = t
        .file
        .services
        .iter()
        .filter(|s| {
            s.ports.iter().any(|p| {
                let members = s
                    .backends
                    .iter()
                    .filter(|b| s.target_port(b.ip, p).is_some())
                    .count();
                let wanted = crate::plan::maglev::table_size(
                    s.table_size(t.file.maglev_table_size),
                    members,
                );
                let key = AnyServiceKey::new(s.vip, p.port, p.protocol.number());
                current(&key) != Some(wanted)
            })
        })
        .filter_map(|s| owners.get(&s.name))
        .map(|r| Warning {
            service: (*r).clone(),
            reason: "MaglevArrayFull",
            message: format!(
                "the Maglev array of node {node_name} ({capacity} slots) has no room for this \
                 Service's tables: no change is applied on that node (and a Service new to it \
                 is not served there) until they fit. Give Services smaller \
                 {MAGLEV_TABLE_SIZE_ANNOTATION} sizes, or restart the agent with a larger \
                 --maglev-slots after onehop cleanup"
            ),
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Label `EndpointSlices` carry to name their Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// Which Services are ours.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClassFilter {
    /// Our `loadBalancerClass`.
    pub class: String,
    /// Also take Services without a `loadBalancerClass`.
    pub unclassed: bool,
}

/// A Service (namespace, name) the translation has something to say about.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ServiceRef {
    pub namespace: String,
    pub name: String,
}

impl std::fmt::Display for ServiceRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Something a user should see as a Warning Event on the Service.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Warning {
    pub service: ServiceRef,
    /// CamelCase, like Kubernetes event reasons.
    pub reason: &'static str,
    pub message: String,
}

/// The IPv4 and IPv6 EndpointSlices of each Service (by the
/// `kubernetes.io/service-name` label), grouped once per pass so looking up
/// one Service's slices does not scan every slice in the cluster. Within a
/// Service, slices keep the order they were given in (the first that lists
/// an address decides its endpoint).
#[derive(Debug, Default)]
pub struct SliceIndex {
    by_service: BTreeMap<ServiceRef, Vec<Arc<Slice>>>,
}

impl SliceIndex {
    /// From full objects (tests, and callers without a [`Slice`] cache).
    pub fn new<'a>(all: impl IntoIterator<Item = &'a EndpointSlice>) -> Self {
        Self::from_slices(all.into_iter().filter_map(Slice::read).map(Arc::new))
    }

    /// From slices as read ([`Slice::read`]), e.g. the agent's cache.
    pub fn from_slices(all: impl IntoIterator<Item = Arc<Slice>>) -> Self {
        let mut by_service: BTreeMap<ServiceRef, Vec<Arc<Slice>>> = BTreeMap::new();
        for s in all {
            if let Some(v) = by_service.get_mut(&s.service) {
                v.push(s);
            } else {
                by_service.insert(s.service.clone(), vec![s]);
            }
        }
        Self { by_service }
    }

    fn of(&self, svc: &ServiceRef) -> &[Arc<Slice>] {
        self.by_service.get(svc).map_or(&[], Vec::as_slice)
    }
}

/// Everything the translation needs; snapshots of the watchers' stores.
pub struct Inputs<'a> {
    /// Shared with the watch cache, not copied.
    pub services: &'a [Arc<Service>],
    pub slices: &'a SliceIndex,
    pub nodes: &'a [Node],
    /// This node's name (`spec.nodeName` of local endpoints).
    pub node_name: &'a str,
    pub class: &'a ClassFilter,
    /// VIPs this node has been elected to announce.
    pub announce: &'a BTreeSet<IpAddr>,
    pub nat_ports: NatPorts,
    pub flow_timeouts: FlowTimeouts,
    /// Table size of the Services that set none (`--maglev-table-size`).
    pub maglev_table_size: MaglevSize,
    /// This node's gateways of both families (`net::route`), each with what it is the
    /// gateway of.
    pub gateways: &'a BTreeMap<IpAddr, String>,
}

/// A Service this node should serve, before it becomes a [`LbService`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Translated {
    pub service: ServiceRef,
    pub vips: Vec<IpAddr>,
    /// `externalTrafficPolicy: Local`.
    pub local_only: bool,
    /// Whether an endpoint that takes new flows runs on this node (under
    /// `Local`, by this node's own fallback rule).
    pub has_local_endpoint: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Translation {
    pub file: NodeServices,
    pub services: Vec<Translated>,
    pub warnings: Vec<Warning>,
}

/// The first `InternalIP` of every node that parses as a `T` (`Ipv4Addr`
/// or `Ipv6Addr`).
fn internal_ips<T: std::str::FromStr>(nodes: &[Node]) -> BTreeMap<String, T> {
    nodes
        .iter()
        .filter_map(|n| {
            let name = n.metadata.name.clone()?;
            let ip = n
                .status
                .as_ref()?
                .addresses
                .as_ref()?
                .iter()
                .filter(|a| a.type_ == "InternalIP")
                .find_map(|a| a.address.parse::<T>().ok())?;
            Some((name, ip))
        })
        .collect()
}

/// The `InternalIP` (IPv4) of every node.
pub fn node_addresses(nodes: &[Node]) -> BTreeMap<String, Ipv4Addr> {
    internal_ips(nodes)
}

/// The IPv6 `InternalIP` of every node that has one (dual-stack or IPv6 clusters).
pub fn node_addresses6(nodes: &[Node]) -> BTreeMap<String, Ipv6Addr> {
    internal_ips(nodes)
}

/// Every `InternalIP` and `ExternalIP` of both families of every node, with
/// the node's name: addresses that must never become a VIP.
pub fn node_ips_all(nodes: &[Node]) -> BTreeMap<IpAddr, String> {
    let mut out = BTreeMap::new();
    for n in nodes {
        let name = n.metadata.name.clone().unwrap_or_default();
        let addresses = n.status.as_ref().and_then(|s| s.addresses.as_ref());
        for a in addresses.into_iter().flatten() {
            if a.type_ != "InternalIP" && a.type_ != "ExternalIP" {
                continue;
            }
            if let Ok(ip) = a.address.parse::<IpAddr>() {
                out.entry(ip).or_insert_with(|| name.clone());
            }
        }
    }
    out
}

/// True when the Node's `Ready` condition is `True`.
pub fn node_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn service_ref(svc: &Service) -> ServiceRef {
    ServiceRef {
        namespace: svc.metadata.namespace.clone().unwrap_or_default(),
        name: svc.metadata.name.clone().unwrap_or_default(),
    }
}

/// Whether `svc` is a `LoadBalancer` Service of ours.
pub fn is_ours(svc: &Service, class: &ClassFilter) -> bool {
    let Some(spec) = &svc.spec else { return false };
    if spec.type_.as_deref() != Some("LoadBalancer") {
        return false;
    }
    match &spec.load_balancer_class {
        Some(c) => *c == class.class,
        None => class.unclassed,
    }
}

/// The ingress addresses of both families in the status, in its order (the
/// controller's view: a dual-stack Service lists them in `ipFamilies`
/// order), each once. The agent serves [`ingress_addrs`].
pub fn ingress_ips(svc: &Service) -> Vec<IpAddr> {
    let mut ips: Vec<IpAddr> = Vec::new();
    for ip in svc
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|i| i.ip.as_deref()?.parse().ok())
    {
        if !ips.contains(&ip) {
            ips.push(ip);
        }
    }
    ips
}

/// Ingress addresses of both families the controller wrote into the
/// status, IPv4 first, each once.
pub fn ingress_addrs(svc: &Service) -> Vec<IpAddr> {
    let mut ips: Vec<IpAddr> = svc
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .map(|ing| {
            ing.iter()
                .filter_map(|i| i.ip.as_deref()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    ips.sort_unstable();
    ips.dedup();
    ips
}

struct Endpoints<'a> {
    slices: &'a [Arc<Slice>],
}

impl<'a> Endpoints<'a> {
    fn of(svc: &ServiceRef, index: &'a SliceIndex) -> Self {
        Self {
            slices: index.of(svc),
        }
    }

    /// Every endpoint once (the first slice that lists an address wins),
    /// by address.
    fn all(&self) -> BTreeMap<IpAddr, Ep<'a>> {
        let mut out = BTreeMap::new();
        for slice in self.slices {
            for ep in &slice.endpoints {
                out.entry(ep.ip).or_insert(Ep {
                    node: ep.node.as_deref(),
                    slice,
                    use_: ep.use_,
                });
            }
        }
        out
    }

    /// The endpoints new flows may go to (ready ones, or the
    /// serving-terminating ones when none is ready) and the ones that only
    /// drain, among those `keep` accepts: the fallback is decided over
    /// exactly that set (all of the Service's endpoints of one family, or
    /// one node's; each family's addresses are served by their own).
    fn split(&self, keep: impl Fn(&IpAddr, &Ep<'a>) -> bool) -> (Listed<'a>, Listed<'a>) {
        let eps: Vec<(IpAddr, Ep<'a>)> = self
            .all()
            .into_iter()
            .filter(|(ip, e)| keep(ip, e))
            .collect();
        let any_ready = eps.iter().any(|(_, e)| e.use_ == Use::Ready);
        eps.into_iter()
            .partition(|(_, e)| e.use_ == Use::Ready || (!any_ready && e.use_ == Use::Fallback))
    }

    /// (address, node name) of the endpoints of one family (`v6`) new flows
    /// may go to, decided over all of that family's.
    fn usable(&self, v6: bool) -> Vec<(IpAddr, Option<&'a str>)> {
        self.split(|ip, _| ip.is_ipv6() == v6)
            .0
            .into_iter()
            .map(|(ip, e)| (ip, e.node))
            .collect()
    }
}

/// Endpoints by address.
type Listed<'a> = Vec<(IpAddr, Ep<'a>)>;

#[derive(Clone, Copy, Debug)]
struct Ep<'a> {
    node: Option<&'a str>,
    /// The slice that lists it: its `ports` carry this endpoint's numbers.
    slice: &'a Slice,
    use_: Use,
}

impl Ep<'_> {
    /// The number this endpoint's slice gives for the Service port `name`.
    fn resolved_port(&self, name: &str) -> Option<u16> {
        self.slice.port(name)
    }
}

/// Nodes running an endpoint of one family (`v6`) that takes new flows,
/// decided over all of the Service's endpoints: the nodes that serve its
/// addresses of that family (the election needs them for
/// `externalTrafficPolicy: Local`; it prefers nodes with ready endpoints
/// while there are any, even though a node left with terminating ones only
/// still serves them).
pub fn endpoint_nodes_of(svc: &ServiceRef, slices: &SliceIndex, v6: bool) -> BTreeSet<String> {
    Endpoints::of(svc, slices)
        .usable(v6)
        .into_iter()
        .filter_map(|(_, node)| node.map(str::to_owned))
        .collect()
}

/// The reference of a Service, for Events and logs.
pub fn reference(svc: &Service) -> ServiceRef {
    service_ref(svc)
}

/// Whether the Service asks for `externalTrafficPolicy: Local`.
pub fn local_policy(svc: &Service) -> bool {
    svc.spec
        .as_ref()
        .and_then(|s| s.external_traffic_policy.as_deref())
        == Some("Local")
}

fn protocol(p: &K8sServicePort) -> Option<Protocol> {
    Protocol::of_k8s_port(p.protocol.as_deref())
}

/// A Service port as the endpoints resolve it.
struct PortSpec {
    port: ServicePort,
    /// The Service port's name, which the slices' ports carry.
    name: String,
    target: Option<IntOrString>,
}

impl PortSpec {
    /// The target port of this port on endpoint `ep`: its own slice's
    /// number, else an integer `targetPort` (or the port itself when none is
    /// given); `None` when a named `targetPort` is not resolved for it.
    fn target_on(&self, ep: &Ep<'_>) -> Option<u16> {
        if let Some(n) = ep.resolved_port(&self.name) {
            return Some(n);
        }
        match &self.target {
            Some(IntOrString::Int(n)) => u16::try_from(*n).ok().filter(|n| *n > 0),
            None => Some(self.port.port),
            Some(IntOrString::String(_)) => None,
        }
    }
}

/// The ports of `svc` we can serve, each with the target port most of its
/// endpoints use (the lowest when tied): backends that use another keep
/// their own in `Service::backend_ports`.
fn ports(
    svc: &Service,
    r: &ServiceRef,
    eps: &Endpoints<'_>,
    warnings: &mut Vec<Warning>,
) -> Vec<PortSpec> {
    let all = eps.all();
    let mut out = Vec::new();
    for p in svc.spec.iter().flat_map(|s| s.ports.iter().flatten()) {
        let name = p.name.clone().unwrap_or_default();
        let Some(protocol) = protocol(p) else {
            warnings.push(Warning {
                service: r.clone(),
                reason: "UnsupportedProtocol",
                message: format!(
                    "port {} uses protocol {}; onehop balances TCP and UDP only, the port is ignored",
                    p.port,
                    p.protocol.as_deref().unwrap_or("?")
                ),
            });
            continue;
        };
        let Ok(port) = u16::try_from(p.port) else {
            continue;
        };
        let mut spec = PortSpec {
            port: ServicePort {
                port,
                protocol,
                target_port: port,
            },
            name,
            target: p.target_port.clone(),
        };
        let mut used: BTreeMap<u16, usize> = BTreeMap::new();
        for ep in all.values() {
            if let Some(n) = spec.target_on(ep) {
                *used.entry(n).or_default() += 1;
            }
        }
        // Without any endpoint to resolve a named port (nothing to send to
        // anyway) the service port stands in, so the frontend exists and
        // drops as "no backend", not "no service".
        let most = used.values().copied().max().unwrap_or(0);
        spec.port.target_port = match used.iter().find(|(_, c)| **c == most) {
            Some((n, _)) => *n,
            None => match &p.target_port {
                Some(IntOrString::Int(n)) => u16::try_from(*n).unwrap_or(port),
                None | Some(IntOrString::String(_)) => port,
            },
        };
        out.push(spec);
    }
    out
}

fn affinity(svc: &Service) -> SessionAffinity {
    let Some(spec) = &svc.spec else {
        return SessionAffinity::None;
    };
    if spec.session_affinity.as_deref() != Some("ClientIP") {
        return SessionAffinity::None;
    }
    let timeout = spec
        .session_affinity_config
        .as_ref()
        .and_then(|c| c.client_ip.as_ref())
        .and_then(|c| c.timeout_seconds)
        .and_then(|t| u32::try_from(t).ok())
        .filter(|t| *t > 0)
        .unwrap_or(DEFAULT_AFFINITY_TIMEOUT_S);
    SessionAffinity::ClientIp { timeout_s: timeout }
}

/// The ranges of `loadBalancerSourceRanges`, of both families: each VIP
/// matches its clients against its own family's, and a list of the other
/// family only denies every client of the VIP (`model::Service::source_ranges`).
fn source_ranges(svc: &Service) -> Result<Vec<Cidr>, String> {
    let mut out = Vec::new();
    for raw in svc
        .spec
        .iter()
        .flat_map(|s| s.load_balancer_source_ranges.iter().flatten())
    {
        // Kubernetes accepts host bits in these; match on the network.
        out.push(Cidr::parse_masked(raw.trim())?);
    }
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

/// The Service's own Maglev table size, if its annotation gives a valid one.
fn maglev_table_size(
    svc: &Service,
    r: &ServiceRef,
    default: MaglevSize,
    warnings: &mut Vec<Warning>,
) -> Option<MaglevSize> {
    let raw = svc
        .metadata
        .annotations
        .as_ref()?
        .get(MAGLEV_TABLE_SIZE_ANNOTATION)?;
    match MaglevSize::parse(raw) {
        Ok(size) => Some(size),
        Err(e) => {
            warnings.push(Warning {
                service: r.clone(),
                reason: "InvalidMaglevTableSize",
                message: format!(
                    "annotation {MAGLEV_TABLE_SIZE_ANNOTATION}: {e}; the default size {default} \
                     is used"
                ),
            });
            None
        }
    }
}

/// A warning when `s`'s table grows past its configured size. The message
/// names sizes only, so it does not change (and is not sent again) with
/// every backend that comes or goes.
fn grown_warning(r: &ServiceRef, s: &LbService, default: MaglevSize) -> Option<Warning> {
    let (configured, grown) = s.grown_table(default)?;
    Some(Warning {
        service: r.clone(),
        reason: "MaglevTableGrown",
        message: grown_message(configured, grown),
    })
}

/// Why a table has `grown` slots instead of its `configured` size, and what
/// to do about it.
fn grown_message(configured: MaglevSize, grown: u32) -> String {
    let limit = configured.get() / lb_common::maps::MAGLEV_MIN_SLOTS_PER_BACKEND;
    format!(
        "more than {limit} backends would get fewer than 10 slots each in a \
         {configured}-slot Maglev table (their shares of new flows more than 10% apart), \
         so the table has {grown} slots; the size changes again when the backends cross \
         {limit}, and that change remaps most new flows. Set the annotation \
         {MAGLEV_TABLE_SIZE_ANNOTATION}: \"{grown}\" to keep it fixed"
    )
}

/// A name for the model: unique, stable, readable in logs.
fn model_name(r: &ServiceRef, vip: IpAddr) -> String {
    format!("{}/{}@{vip}", r.namespace, r.name)
}

/// The endpoints of a service this node uses, of both families.
#[derive(Default)]
struct Backends {
    serving: Vec<Backend>,
    draining: Vec<Backend>,
    ports: BTreeMap<IpAddr, Vec<ServicePort>>,
    /// An endpoint that takes new flows runs on this node.
    has_local: bool,
}

impl Backends {
    /// The backends of `vip`'s family: what its service of the model gets.
    fn of_family(
        &self,
        vip: IpAddr,
    ) -> (
        Vec<Backend>,
        Vec<Backend>,
        BTreeMap<IpAddr, Vec<ServicePort>>,
    ) {
        let same = |b: &&Backend| b.ip.is_ipv6() == vip.is_ipv6();
        (
            self.serving.iter().filter(same).copied().collect(),
            self.draining.iter().filter(same).copied().collect(),
            self.ports
                .iter()
                .filter(|(ip, _)| ip.is_ipv6() == vip.is_ipv6())
                .map(|(ip, p)| (*ip, p.clone()))
                .collect(),
        )
    }
}

/// Node name -> its `InternalIP` of each family.
struct NodeIps {
    v4: BTreeMap<String, Ipv4Addr>,
    v6: BTreeMap<String, Ipv6Addr>,
}

impl NodeIps {
    fn of_nodes(nodes: &[Node]) -> Self {
        Self {
            v4: node_addresses(nodes),
            v6: node_addresses6(nodes),
        }
    }

    /// The address that names `node` as the node of an endpoint `ip`: its
    /// `InternalIP` of `ip`'s family; for an IPv6 endpoint on a node without
    /// an IPv6 one, its IPv4 one (see `model::Backend::node_ip`).
    fn of(&self, node: &str, ip: IpAddr) -> Option<IpAddr> {
        let v4 = self.v4.get(node).map(|a| IpAddr::V4(*a));
        match ip {
            IpAddr::V4(_) => v4,
            IpAddr::V6(_) => self.v6.get(node).map(|a| IpAddr::V6(*a)).or(v4),
        }
    }
}

/// The backends of a service on this node. Under `Local` only this node's
/// endpoints count, and whether it falls back to serving-terminating ones
/// is decided from them alone.
fn backends(
    r: &ServiceRef,
    eps: &Endpoints<'_>,
    ports: &[PortSpec],
    node_name: &str,
    local_only: bool,
    node_ips: &NodeIps,
    warnings: &mut Vec<Warning>,
) -> Backends {
    let mut out = Backends::default();
    let mut lists = Vec::new();
    for v6 in [false, true] {
        let (serving, draining) =
            eps.split(|ip, e| ip.is_ipv6() == v6 && (!local_only || e.node == Some(node_name)));
        out.has_local |= serving.iter().any(|(_, e)| e.node == Some(node_name));
        lists.extend([(serving, true), (draining, false)]);
    }
    for (list, takes_new) in lists {
        for (ip, ep) in list {
            let Some(node_ip) = ep.node.and_then(|n| node_ips.of(n, ip)) else {
                warnings.push(Warning {
                    service: r.clone(),
                    reason: "EndpointWithoutNode",
                    message: format!(
                        "endpoint {ip} has no node with an InternalIP; it is not used"
                    ),
                });
                continue;
            };
            let own: Vec<ServicePort> = ports
                .iter()
                .filter_map(|p| {
                    Some(ServicePort {
                        target_port: p.target_on(&ep)?,
                        ..p.port
                    })
                })
                .collect();
            if !own.iter().copied().eq(ports.iter().map(|p| p.port)) {
                out.ports.insert(ip, own);
            }
            let b = Backend { ip, node_ip };
            if takes_new {
                out.serving.push(b);
            } else {
                out.draining.push(b);
            }
        }
    }
    out
}

/// Removes the ports an earlier Service already serves on one of `vips`.
fn drop_taken_ports(
    r: &ServiceRef,
    vips: &[IpAddr],
    ports: &mut Vec<ServicePort>,
    taken: &BTreeMap<(IpAddr, u16, Protocol), ServiceRef>,
    warnings: &mut Vec<Warning>,
) {
    for vip in vips {
        ports.retain(|p| match taken.get(&(*vip, p.port, p.protocol)) {
            Some(owner) => {
                warnings.push(Warning {
                    service: r.clone(),
                    reason: "PortConflict",
                    message: format!(
                        "{}/{} is already served for {owner}; not serving it here",
                        std::net::SocketAddr::new(*vip, p.port),
                        p.protocol
                    ),
                });
                false
            }
            None => true,
        });
    }
}

/// Takes out of `vips` the addresses a VIP must never be: a node's address (`reserved`) or
/// one of this node's gateways, each with its warning.
fn withhold_reserved(
    r: &ServiceRef,
    vips: &mut Vec<IpAddr>,
    reserved: &BTreeMap<IpAddr, String>,
    inputs: &Inputs<'_>,
    warnings: &mut Vec<Warning>,
) {
    vips.retain(|vip| match reserved.get(vip) {
        Some(node) => {
            warnings.push(Warning {
                service: r.clone(),
                reason: "NodeAddress",
                message: format!(
                    "{vip} is an address of node {node}; it is neither served nor \
                     announced (answering ARP for it would cut that node off)"
                ),
            });
            false
        }
        None => match inputs.gateways.get(vip) {
            Some(what) => {
                warnings.push(Warning {
                    service: r.clone(),
                    reason: "GatewayAddress",
                    message: format!(
                        "{vip} is {what} on node {}; it is neither served nor announced \
                         (answering ARP for it would take the router's traffic)",
                        inputs.node_name
                    ),
                });
                false
            }
            None => true,
        },
    });
}

/// Translates the cluster state into this node's services model.
pub fn translate(inputs: &Inputs<'_>) -> Translation {
    let node_ips = NodeIps::of_nodes(inputs.nodes);
    let reserved = node_ips_all(inputs.nodes);
    let mut warnings = Vec::new();
    let mut services = Vec::new();
    let mut model = Vec::new();
    let mut taken: BTreeMap<(IpAddr, u16, Protocol), ServiceRef> = BTreeMap::new();

    let mut ours: Vec<&Service> = inputs
        .services
        .iter()
        .map(|s| &**s)
        .filter(|s| is_ours(s, inputs.class))
        .collect();
    ours.sort_by_key(|s| service_ref(s));
    for svc in ours {
        let r = service_ref(svc);
        let mut vips = ingress_addrs(svc);
        withhold_reserved(&r, &mut vips, &reserved, inputs, &mut warnings);
        if vips.is_empty() {
            continue; // no address assigned yet
        }
        let ranges = match source_ranges(svc) {
            Ok(r) => r,
            Err(e) => {
                warnings.push(Warning {
                    service: r.clone(),
                    reason: "InvalidSourceRange",
                    message: format!(
                        "loadBalancerSourceRanges: {e}; the service is not served until fixed"
                    ),
                });
                continue;
            }
        };
        let eps = Endpoints::of(&r, inputs.slices);
        let specs = ports(svc, &r, &eps, &mut warnings);
        let local_only = local_policy(svc);
        let backends = backends(
            &r,
            &eps,
            &specs,
            inputs.node_name,
            local_only,
            &node_ips,
            &mut warnings,
        );
        let mut ports: Vec<ServicePort> = specs.iter().map(|p| p.port).collect();
        drop_taken_ports(&r, &vips, &mut ports, &taken, &mut warnings);
        if ports.is_empty() {
            continue;
        }
        let table_size = maglev_table_size(svc, &r, inputs.maglev_table_size, &mut warnings);
        for vip in &vips {
            for p in &ports {
                taken.insert((*vip, p.port, p.protocol), r.clone());
            }
            // Each family's VIP gets its own family's endpoints.
            let (serving, draining, backend_ports) = backends.of_family(*vip);
            model.push(LbService {
                name: model_name(&r, *vip),
                vip: *vip,
                ports: ports.clone(),
                session_affinity: affinity(svc),
                source_ranges: ranges.clone(),
                maglev_table_size: table_size,
                backends: serving,
                draining,
                backend_ports,
            });
        }
        if let Some(w) = model
            .last()
            .and_then(|s| grown_warning(&r, s, inputs.maglev_table_size))
        {
            warnings.push(w);
        }
        services.push(Translated {
            service: r,
            vips,
            local_only,
            has_local_endpoint: backends.has_local,
        });
    }
    let vips: BTreeSet<IpAddr> = model.iter().map(|s| s.vip).collect();
    let file = NodeServices {
        node_ip: node_ips.v4.get(inputs.node_name).copied(),
        node_ip6: node_ips.v6.get(inputs.node_name).copied(),
        nat_ports: inputs.nat_ports,
        flow_timeouts: inputs.flow_timeouts,
        maglev_table_size: inputs.maglev_table_size,
        // The agent adds the nodes it sees live (`agent::kube`).
        direct_return: DirectReturn::Off,
        announce: inputs.announce.intersection(&vips).copied().collect(),
        services: model,
    };
    warnings.sort();
    warnings.dedup();
    Translation {
        file,
        services,
        warnings,
    }
}

#[cfg(test)]
mod tests;
