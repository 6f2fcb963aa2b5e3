//! The services model: what a node serves, whichever source it came from
//! (a services file, or Kubernetes objects), and the few value types every
//! layer names (protocols, CIDRs, frontends).
//!
//! Addresses are of either family (`IpAddr`): a service's VIP and its
//! backends are of one family, and a dual-stack Kubernetes Service becomes
//! two services, one per family.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use lb_common::maps;

/// Default `session_affinity_timeout_seconds` (Kubernetes' default).
pub const DEFAULT_AFFINITY_TIMEOUT_S: u32 = 10_800;
/// Largest `session_affinity_timeout_seconds` (Kubernetes' limit).
pub const MAX_AFFINITY_TIMEOUT_S: u32 = 86_400;
/// Lowest allowed `nat_ports.min`: keep clear of well-known ports.
pub const MIN_NAT_PORT: u16 = 1024;
/// Longest flow timeout accepted (30 days): beyond, a lost close would keep
/// a NAT port for longer than anyone would want to wait.
pub const MAX_FLOW_TIMEOUT_S: u32 = 30 * 86_400;

pub use crate::plan::maglev::MaglevSize;
pub use lb_common::FlowTimeouts;

/// Capacity of the maps the configuration must fit in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Entries of `vips` (service VIPs plus the node address).
    pub max_vips: u32,
    /// Entries of `services` (one per VIP, port and protocol) and service ids.
    pub max_services: u32,
    /// Backend ids (distinct pod address and target port).
    pub max_backends: u32,
    /// Entries of `src_ranges` (one per source range and service port).
    pub max_src_ranges: u32,
    /// Slots of the `maglev` array.
    pub maglev_slots: u32,
    /// The new-flow guard's size (`lb_common::HalfOpenGuard::max`; 0: off):
    /// a share of the conntrack table, which the agent sizes.
    pub half_open_max: u32,
    /// Sets of the `conntrack` flow table as the agent created (or adopted)
    /// it: the data path's modulus for a flow's set
    /// (`DatapathConfig::flow_sets`).
    pub flow_sets: u32,
    /// The adopted flow table may still hold live IPv6 flows of a version
    /// before the IPv6 tag (`config_flags::LEGACY_TAGS6`).
    pub legacy_tags6: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_vips: maps::MAX_VIPS,
            max_services: maps::MAX_SERVICES,
            max_backends: maps::MAX_BACKENDS,
            max_src_ranges: maps::SRC_RANGES_MAX,
            maglev_slots: maps::MAGLEV_SLOTS,
            half_open_max: lb_common::HalfOpenGuard::for_table(
                maps::CONNTRACK_MAX,
                FlowTimeouts::DEFAULT,
            )
            .max,
            flow_sets: lb_common::flow::table::sets_for(maps::CONNTRACK_MAX),
            legacy_tags6: false,
        }
    }
}

/// What one node serves: its services and the VIPs it announces, from
/// a services file or translated from Kubernetes objects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeServices {
    /// `node.ip`, when the file pins it.
    pub node_ip: Option<Ipv4Addr>,
    /// `node.ip6`, when the file pins it: the node's IPv6 address, the
    /// `node_ip` of its IPv6 backends.
    pub node_ip6: Option<Ipv6Addr>,
    pub nat_ports: NatPorts,
    /// Idle timeouts of the data path's flow entries, by state.
    pub flow_timeouts: FlowTimeouts,
    /// Maglev table size of the services that set none (cluster-wide: every
    /// node must be given the same).
    pub maglev_table_size: MaglevSize,
    /// Which remote backends are reached by direct server return (the
    /// others by full NAT).
    pub direct_return: DirectReturn,
    /// VIPs this node answers ARP (IPv4) or Neighbor Solicitations (IPv6) for.
    pub announce: BTreeSet<IpAddr>,
    /// In file order.
    pub services: Vec<Service>,
}

impl NodeServices {
    /// Takes every address of `reserved` out: its services and its announcement. Returns
    /// the ones that were there, each with why it is reserved. (For addresses the node's
    /// own environment reserves, such as its gateways, which no file validation can know.)
    pub fn withhold(
        &mut self,
        reserved: &std::collections::BTreeMap<IpAddr, String>,
    ) -> Vec<(IpAddr, String)> {
        let mut hit = BTreeSet::new();
        let mut keep = |vip: IpAddr| {
            let ok = !reserved.contains_key(&vip);
            if !ok {
                hit.insert(vip);
            }
            ok
        };
        self.services.retain(|s| keep(s.vip));
        self.announce.retain(|vip| keep(*vip));
        hit.into_iter()
            .filter_map(|vip| reserved.get(&vip).map(|why| (vip, why.clone())))
            .collect()
    }
}

/// Which backends on other nodes get direct server return: only ever those
/// whose node is on this node's segment (`state::Node::segment`), where a
/// frame can be addressed to the node's MAC, and whose node runs the agent
/// (a node without onehop's XDP program would route a frame for the VIP
/// back to the announcer until its TTL ran out).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum DirectReturn {
    /// Full NAT to every remote backend.
    #[default]
    Off,
    /// Every node on the segment: the services file, whose writer vouches
    /// that every node runs the agent.
    Segment,
    /// The nodes on the segment with these addresses: with Kubernetes, the
    /// nodes whose agent's Lease is live, by each of their addresses (IPv4,
    /// and IPv6 where they have one: an IPv6 pod's node is named by it).
    Nodes(BTreeSet<IpAddr>),
}

impl DirectReturn {
    /// Whether direct return is on at all (the data path's
    /// `config_flags::DIRECT_RETURN`).
    pub fn on(&self) -> bool {
        *self != Self::Off
    }

    /// Whether a backend on the node `node_ip`, on the segment, gets it.
    pub fn allows(&self, node_ip: IpAddr) -> bool {
        match self {
            Self::Off => false,
            Self::Segment => true,
            Self::Nodes(nodes) => nodes.contains(&node_ip),
        }
    }
}

/// Inclusive NAT source-port range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NatPorts {
    pub min: u16,
    pub max: u16,
}

impl Default for NatPorts {
    fn default() -> Self {
        Self {
            min: lb_common::DEFAULT_NAT_PORT_MIN,
            max: lb_common::DEFAULT_NAT_PORT_MAX,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    pub name: String,
    /// IPv4 or IPv6; every backend is of its family.
    pub vip: IpAddr,
    /// Never empty.
    pub ports: Vec<ServicePort>,
    pub session_affinity: SessionAffinity,
    /// The clients allowed, of either family; empty: every client. Only the
    /// ranges of the VIP's family can match (its clients are of that
    /// family), but the others count: a service restricted to ranges of
    /// the other family only denies every client (fail closed), as
    /// Kubernetes `loadBalancerSourceRanges` means it. Dropping them would
    /// leave an empty list, which would allow everyone.
    pub source_ranges: Vec<Cidr>,
    /// The service's own Maglev table size, instead of
    /// [`NodeServices::maglev_table_size`].
    pub maglev_table_size: Option<MaglevSize>,
    /// Distinct pod addresses: the backends new flows go to.
    pub backends: Vec<Backend>,
    /// Terminating (or not ready) endpoints: flows already on them stay, no
    /// new flow goes to them (they are in no Maglev table). Distinct pod
    /// addresses, none of them in `backends`. A backend that leaves both
    /// lists drains too, until its flows are over (see `plan::state`).
    pub draining: Vec<Backend>,
    /// Backends (of either list) that do not serve every port at its
    /// `target_port`: the ports each one serves, each with its own target
    /// port. A named `targetPort` resolves per EndpointSlice, so pods of
    /// one Service may use different numbers for it.
    pub backend_ports: BTreeMap<IpAddr, Vec<ServicePort>>,
}

impl Service {
    /// The Maglev table size the service is configured with, `default`
    /// unless it sets its own.
    pub fn table_size(&self, default: MaglevSize) -> MaglevSize {
        self.maglev_table_size.unwrap_or(default)
    }

    /// When some port's backends would get fewer than 10 slots each of the
    /// configured size: that size, and the (larger) one the tables get
    /// (`plan::maglev::table_size`).
    pub fn grown_table(&self, default: MaglevSize) -> Option<(MaglevSize, u32)> {
        let configured = self.table_size(default);
        let most = self
            .ports
            .iter()
            .map(|p| {
                self.backends
                    .iter()
                    .filter(|b| self.target_port(b.ip, p).is_some())
                    .count()
            })
            .max()?;
        crate::plan::maglev::too_small(configured, most).then(|| {
            (
                configured,
                crate::plan::maglev::table_size(configured, most),
            )
        })
    }

    /// Whether the service restricts its clients (`source_ranges` of any
    /// family): the data path's `SOURCE_RANGES` flag.
    pub fn restricted(&self) -> bool {
        !self.source_ranges.is_empty()
    }

    /// The source ranges that can match a client of the VIP's family.
    pub fn own_family_ranges(&self) -> impl Iterator<Item = Cidr> + '_ {
        let v6 = self.vip.is_ipv6();
        self.source_ranges
            .iter()
            .copied()
            .filter(move |c| c.addr.is_ipv6() == v6)
    }

    /// The target port of `p` on backend `ip`, if that backend serves `p`.
    pub fn target_port(&self, ip: IpAddr, p: &ServicePort) -> Option<u16> {
        match self.backend_ports.get(&ip) {
            None => Some(p.target_port),
            Some(ports) => ports
                .iter()
                .find(|q| q.port == p.port && q.protocol == p.protocol)
                .map(|q| q.target_port),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServicePort {
    pub port: u16,
    pub protocol: Protocol,
    pub target_port: u16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    /// The IPv4 header's protocol number.
    pub const fn number(self) -> u8 {
        match self {
            Protocol::Tcp => lb_common::proto::TCP,
            Protocol::Udp => lb_common::proto::UDP,
        }
    }

    /// The protocol of an IPv4 header's protocol number, if served.
    pub const fn from_number(n: u8) -> Option<Self> {
        match n {
            lb_common::proto::TCP => Some(Protocol::Tcp),
            lb_common::proto::UDP => Some(Protocol::Udp),
            _ => None,
        }
    }

    /// Kubernetes' (and the services file's) spelling: `TCP`, `UDP`.
    pub const fn name(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
        }
    }

    /// The protocol Kubernetes names `name` (case-sensitive, as the API
    /// is); `None` for the ones onehop does not serve (`SCTP`).
    pub fn from_name(name: &str) -> Option<Self> {
        [Protocol::Tcp, Protocol::Udp]
            .into_iter()
            .find(|p| p.name() == name)
    }

    /// The protocol of a Kubernetes port's `protocol` field, which
    /// defaults to TCP when absent.
    pub fn of_k8s_port(field: Option<&str>) -> Option<Self> {
        Self::from_name(field.unwrap_or("TCP"))
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A protocol number as people read it: `TCP`, `UDP`, or `proto 132`.
pub struct ProtoName(pub u8);

impl fmt::Display for ProtoName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match Protocol::from_number(self.0) {
            Some(p) => f.write_str(p.name()),
            None => write!(f, "proto {}", self.0),
        }
    }
}

/// A service frontend (VIP, port, protocol) as people read it, of a
/// `services` ([`lb_common::ServiceKey`]) or `services6`
/// ([`lb_common::ServiceKey6`]) key. `{}` is the label form of status
/// output and metrics, `192.168.50.100:80/TCP` or `[fd00::100]:80/TCP`;
/// `{:#}` the form that reads in a sentence, `TCP 192.168.50.100:80`.
pub struct Frontend<'a, K = lb_common::ServiceKey>(pub &'a K);

/// A `services` or `services6` key: the frontend's parts, whatever its family.
pub trait FrontendKey {
    fn vip(&self) -> IpAddr;
    fn port(&self) -> u16;
    fn proto(&self) -> u8;
}

impl FrontendKey for lb_common::ServiceKey {
    fn vip(&self) -> IpAddr {
        IpAddr::from(self.vip)
    }
    fn port(&self) -> u16 {
        self.port
    }
    fn proto(&self) -> u8 {
        self.proto
    }
}

impl FrontendKey for lb_common::ServiceKey6 {
    fn vip(&self) -> IpAddr {
        IpAddr::from(self.vip)
    }
    fn port(&self) -> u16 {
        self.port
    }
    fn proto(&self) -> u8 {
        self.proto
    }
}

impl<K: FrontendKey> fmt::Display for Frontend<'_, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (port, proto) = (self.0.port(), ProtoName(self.0.proto()));
        // `SocketAddr` brackets an IPv6 address, so the port stays readable.
        let at = std::net::SocketAddr::new(self.0.vip(), port);
        if f.alternate() {
            write!(f, "{proto} {at}")
        } else {
            write!(f, "{at}/{proto}")
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SessionAffinity {
    #[default]
    None,
    /// Keep a client on its backend for `timeout_s` seconds of inactivity.
    ClientIp { timeout_s: u32 },
}

/// An IPv4 or IPv6 network: `addr` has no bit set beyond `prefix_len`
/// (at most 32 for IPv4, 128 for IPv6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix_len: u8,
}

/// Bits of an address of `addr`'s family.
const fn width(addr: IpAddr) -> u8 {
    match addr {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    }
}

/// The address with every bit beyond `len` cleared (`len` at most its width).
fn masked(addr: IpAddr, len: u8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from(u32::from(a) & Cidr::mask(len))),
        IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from(u128::from(a) & Cidr::mask6(len))),
    }
}

/// The address and prefix length of `a.b.c.d/len` or `x::y/len`; `bare`
/// gives a bare address (no `/len`) its family's full length.
fn split_cidr(s: &str, bare: bool) -> Result<(IpAddr, u8), String> {
    let (addr, len) = match s.split_once('/') {
        Some(parts) => parts,
        None if bare => (s, ""),
        None => {
            return Err(format!("{s:?} is not a CIDR (expected e.g. 10.0.0.0/8)"));
        }
    };
    // The family is the address's; the messages name it, so that an IPv4
    // CIDR's problems read as they always have.
    let family = if addr.contains(':') { "IPv6" } else { "IPv4" };
    let addr: IpAddr = addr
        .parse()
        .map_err(|_| format!("{s:?} is not an {family} CIDR: bad address {addr:?}"))?;
    let max = width(addr);
    if len.is_empty() && bare {
        return Ok((addr, max));
    }
    match len.parse::<u8>() {
        Ok(l) if l <= max && !len.starts_with('+') => Ok((addr, l)),
        _ => Err(format!(
            "{s:?} is not an {family} CIDR: prefix length must be 0..={max}"
        )),
    }
}

impl Cidr {
    /// An IPv4 network (`prefix_len <= 32`), host bits cleared.
    pub fn v4(addr: Ipv4Addr, prefix_len: u8) -> Self {
        Self {
            addr: masked(IpAddr::V4(addr), prefix_len.min(32)),
            prefix_len: prefix_len.min(32),
        }
    }

    /// An IPv6 network (`prefix_len <= 128`), host bits cleared.
    pub fn v6(addr: Ipv6Addr, prefix_len: u8) -> Self {
        Self {
            addr: masked(IpAddr::V6(addr), prefix_len.min(128)),
            prefix_len: prefix_len.min(128),
        }
    }

    /// Parses `a.b.c.d/len` or `x::y/len`, rejecting host bits.
    pub fn parse(s: &str) -> Result<Self, String> {
        let (addr, prefix_len) = split_cidr(s, false)?;
        let network = masked(addr, prefix_len);
        if network != addr {
            return Err(format!(
                "{s:?} has host bits set (the network is {network}/{prefix_len})"
            ));
        }
        Ok(Self { addr, prefix_len })
    }

    /// Parses `a.b.c.d/len`, `x::y/len` or a bare address (`/32`, `/128`),
    /// clearing host bits as Kubernetes does for `loadBalancerSourceRanges`
    /// and MetalLB for pool CIDRs.
    pub fn parse_masked(s: &str) -> Result<Self, String> {
        let (addr, prefix_len) = split_cidr(s, true)?;
        Ok(Self {
            addr: masked(addr, prefix_len),
            prefix_len,
        })
    }

    /// The first and last address of the network as integers of its
    /// family's width (an IPv4 network's fit in the low 32 bits): the
    /// address pools' ranges (`k8s::pool`).
    pub const fn bounds(self) -> (u128, u128) {
        match self.addr {
            IpAddr::V4(a) => {
                let first = a.to_bits();
                (
                    first as u128,
                    (first | !Self::mask(self.prefix_len)) as u128,
                )
            }
            IpAddr::V6(a) => {
                let first = a.to_bits();
                (first, first | !Self::mask6(self.prefix_len))
            }
        }
    }

    /// IPv4 netmask of a prefix length (`len <= 32`).
    pub const fn mask(len: u8) -> u32 {
        if len == 0 { 0 } else { u32::MAX << (32 - len) }
    }

    /// IPv6 netmask of a prefix length (`len <= 128`).
    pub const fn mask6(len: u8) -> u128 {
        if len == 0 {
            0
        } else {
            u128::MAX << (128 - len)
        }
    }

    /// Whether `ip` is in the network (never for the other family).
    pub fn contains(self, ip: IpAddr) -> bool {
        ip.is_ipv6() == self.addr.is_ipv6() && masked(ip, self.prefix_len) == self.addr
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Backend {
    /// Pod address, of its service's family.
    pub ip: IpAddr,
    /// Address of the node that runs the pod: for an IPv4 pod the node's
    /// IPv4 address; for an IPv6 pod its IPv6 address, or its IPv4 address
    /// where it has no IPv6 one known (then the pod is reached only from
    /// its own node: the data path has no IPv6 next hop for it).
    pub node_ip: IpAddr,
}
