//! The services file: which VIPs this node serves, on which ports, with
//! which backends. Parsed and validated here without I/O; the agent reads
//! the file and watches it.
//!
//! ```yaml
//! node:                      # optional; else the agent takes the interface's address
//!   ip: 192.168.50.11
//!   ip6: fd00:50::11         # optional: the node's IPv6 address
//! nat_ports: { min: 61000, max: 65535 }   # optional; source ports of full-NAT flows
//! flow_timeouts: { tcp_closing: 10 }      # optional; seconds, see below
//! maglev_table_size: 1021                 # optional; every node's file must say the same
//! direct_return: true                     # optional; every node's file must say the same
//! announce: [192.168.50.100]              # VIPs this node answers ARP for
//! services:
//!   - name: web                           # DNS label, unique
//!     vip: 192.168.50.100
//!     ports:
//!       - { port: 80, protocol: TCP, target_port: 8080 }
//!     session_affinity: ClientIP          # optional: None (default) | ClientIP
//!     session_affinity_timeout_seconds: 10800
//!     source_ranges: [10.0.0.0/8]         # optional allow-list of clients
//!     maglev_table_size: 16381            # optional; this service's own table size
//!     backends:
//!       - { ip: 10.42.0.5, node_ip: 192.168.50.11 }
//!       - { ip: 10.42.1.7, node_ip: 192.168.50.12 }
//! ```
//!
//! Fields:
//! - `node.ip`: this node's IPv4 address; no VIP may equal it.
//! - `node.ip6`: this node's IPv6 address (default: the interface's global
//!   IPv6 address, if any); no VIP may equal it. IPv6 backends whose
//!   `node_ip` is this address are local.
//!
//! Addresses may be IPv4 or IPv6 throughout (VIPs, `announce`, backends,
//! `source_ranges`). A service's VIP and its backends' `ip` are of one
//! family (a dual-stack service is two services, one per VIP). An IPv6
//! backend's `node_ip` is its node's IPv6 address, or, where the node has
//! none, its IPv4 address: such a backend is then served only by its own
//! node (the data path has no IPv6 address to reach it through).
//! - `nat_ports.min`/`max`: inclusive source-port range for flows to
//!   backends on other nodes; `1024 <= min <= max`. Keep it outside
//!   `net.ipv4.ip_local_port_range`. Default 61000–65535.
//! - `flow_timeouts`: how long an idle flow keeps its backend and NAT port,
//!   in seconds, by state: `tcp_syn` (handshake not finished, default 60),
//!   `tcp_established` (21600), `tcp_closing` (after both FINs or an RST,
//!   10), `udp` (30), and `udp_reclaim` (5): when a new remote flow finds
//!   every NAT port it tries held, a UDP flow idle this long gives its port
//!   up (and takes a new one with its next datagram), and `tcp_reclaim`
//!   (2): then a TCP flow closed by both FINs this long ago gives its port
//!   up; each optional, 2..=2592000. A closed flow's NAT port is free
//!   again `tcp_closing` seconds after the close, or `tcp_reclaim` seconds
//!   after it when a new flow needs it.
//! - `maglev_table_size`: slots of each service's Maglev table, one of 101,
//!   251, 509, 1021, 2039, 4093, 8191, 16381, 32749, 65521 (default 1021).
//!   The size does not follow the backend count, so a backend joining or
//!   leaving moves about `1/N` of new flows; a service whose backends would
//!   get fewer than 10 slots each gets the smallest size with 100 each
//!   instead (see `plan::maglev`). Every node must use the same sizes, or
//!   a VIP that fails over sends new flows elsewhere.
//! - `direct_return`: `true` sends new flows to backends on other nodes of
//!   this node's segment (the interface's subnet) by direct server return:
//!   the frame goes to that node as it is, and the backend sees the
//!   client's address. Every node the backends run on must run the agent.
//!   Default `false`: full NAT to every remote backend.
//! - `announce`: VIPs this node answers ARP (IPv4) or Neighbor Solicitations
//!   (IPv6) for; each must be a service VIP. Other service VIPs are still
//!   balanced here (traffic may arrive after a failover) but ARP requests
//!   and Neighbor Solicitations for them are dropped.
//! - `services[].ports[]`: `port` and `target_port` in 1..=65535
//!   (`target_port` defaults to `port`), `protocol` `TCP` (default) or
//!   `UDP`. A VIP, port and protocol is served by one service only.
//! - `session_affinity`: `ClientIP` keeps each client on one backend for
//!   `session_affinity_timeout_seconds` (1..=86400, default 10800) of
//!   inactivity, per port.
//! - `source_ranges`: CIDRs (network address, no host bits) of the clients
//!   allowed to reach the service; absent or empty allows everyone. Ranges
//!   of the other family than the VIP's match no client, but still restrict:
//!   a service whose ranges are all of the other family denies everyone.
//! - `services[].maglev_table_size`: this service's table size instead of
//!   the file's `maglev_table_size` (the same sizes allowed).
//! - `backends[]`: pod address and the address of the node that runs it;
//!   a pod whose `node_ip` is this node's is reached directly, others
//!   through their node. A backend serves every port of its service, on
//!   that port's `target_port`.
//!
//! The `services` key is required: an empty file, or one without a
//! `services` list (`services:` with nothing after it included), is
//! rejected rather than read as "no services", because that is what a file
//! truncated in place looks like while it is being rewritten (a shell
//! redirect, a non-atomic save). To serve nothing, write `services: []`.
//! Replace the file atomically (write a temporary file, then rename it) so a
//! reader never sees a half-written one.
//!
//! Unknown fields are errors. All problems of a file are reported at once,
//! each with its field path and line, e.g.
//! `services[1].ports[0].target_port (line 14): must be 1..=65535, not 0`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};

use serde::Deserialize;
use serde_saphyr::{Location, Spanned};

use super::{
    maglev,
    model::{
        Backend, Cidr, DEFAULT_AFFINITY_TIMEOUT_S, DirectReturn, FlowTimeouts, Limits,
        MAX_AFFINITY_TIMEOUT_S, MAX_FLOW_TIMEOUT_S, MIN_NAT_PORT, MaglevSize, NatPorts,
        NodeServices, Protocol, Service, ServicePort, SessionAffinity,
    },
};

/// One problem in the services file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issue {
    /// Field path, e.g. `services[1].ports[0].target_port`.
    pub path: String,
    /// 1-based line, 0 when unknown.
    pub line: u64,
    pub message: String,
}

impl fmt::Display for Issue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.path, self.message)
        } else {
            write!(f, "{} (line {}): {}", self.path, self.line, self.message)
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Not YAML, or not the expected shape (unknown field, wrong type...).
    #[error("the services file does not parse: {0}")]
    Syntax(#[source] Box<serde_saphyr::Error>),
    /// No YAML document at all: zero bytes, whitespace or comments only.
    #[error(
        "the services file is empty (truncated, or still being written?); \
         to serve nothing, write `services: []`"
    )]
    Empty,
    /// Well-formed but invalid: every problem found.
    #[error("{}", issues_text(.0))]
    Invalid(Vec<Issue>),
}

impl ConfigError {
    /// The semantic problems (empty for a syntax error).
    pub fn issues(&self) -> &[Issue] {
        match self {
            ConfigError::Syntax(_) | ConfigError::Empty => &[],
            ConfigError::Invalid(issues) => issues,
        }
    }
}

fn issues_text(issues: &[Issue]) -> String {
    let mut s = format!(
        "the services file has {} error{}:",
        issues.len(),
        if issues.len() == 1 { "" } else { "s" }
    );
    for issue in issues {
        s.push_str("\n  ");
        s.push_str(&issue.to_string());
    }
    s
}

// ---------------------------------------------------------------------------
// Raw shape: exactly what the YAML says, with locations. Numbers are i64 and
// addresses strings so that out-of-range values become located semantic
// issues (all reported together) rather than a first-error parse failure.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    node: Option<Spanned<RawNode>>,
    #[serde(default)]
    nat_ports: Option<Spanned<RawNatPorts>>,
    #[serde(default)]
    flow_timeouts: Option<Spanned<RawFlowTimeouts>>,
    #[serde(default)]
    maglev_table_size: Option<Spanned<i64>>,
    #[serde(default)]
    direct_return: Option<bool>,
    #[serde(default)]
    announce: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    services: Option<Spanned<Vec<Spanned<RawService>>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNode {
    #[serde(default)]
    ip: Option<Spanned<String>>,
    #[serde(default)]
    ip6: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNatPorts {
    min: Spanned<i64>,
    max: Spanned<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFlowTimeouts {
    #[serde(default)]
    tcp_syn: Option<Spanned<i64>>,
    #[serde(default)]
    tcp_established: Option<Spanned<i64>>,
    #[serde(default)]
    tcp_closing: Option<Spanned<i64>>,
    #[serde(default)]
    udp: Option<Spanned<i64>>,
    #[serde(default)]
    udp_reclaim: Option<Spanned<i64>>,
    #[serde(default)]
    tcp_reclaim: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    name: Spanned<String>,
    vip: Spanned<String>,
    ports: Spanned<Vec<Spanned<RawPort>>>,
    #[serde(default)]
    session_affinity: Option<Spanned<String>>,
    #[serde(default)]
    session_affinity_timeout_seconds: Option<Spanned<i64>>,
    #[serde(default)]
    source_ranges: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    maglev_table_size: Option<Spanned<i64>>,
    #[serde(default)]
    backends: Option<Vec<Spanned<RawBackend>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPort {
    port: Spanned<i64>,
    #[serde(default)]
    protocol: Option<Spanned<String>>,
    #[serde(default)]
    target_port: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBackend {
    ip: Spanned<String>,
    node_ip: Spanned<String>,
}

/// The YAML parser's resource budget, sized for the largest file the maps can hold.
/// serde-saphyr's default (250,000 nodes, 1,000,000 events) stops a services file at about
/// 10,000 services; its other limits (depth, anchors, aliases) stay at their defaults.
fn yaml_options(limits: &Limits) -> serde_saphyr::Options {
    // Generous per-entry node counts: a service is ~10 nodes plus 7 per port, a backend 5.
    let nodes = 64 * limits.max_services as usize + 8 * limits.max_backends as usize + 4096;
    serde_saphyr::options! {
        budget: serde_saphyr::budget! {
            max_nodes: nodes,
            max_events: 4 * nodes,
        },
    }
}

/// Parses and validates a services file against the map capacities.
pub fn parse(text: &str, limits: &Limits) -> Result<NodeServices, ConfigError> {
    // Withdrawing every service on an empty read would turn a file caught mid-rewrite into
    // an outage, so emptiness must be said explicitly (`services: []`).
    let raw: Option<RawFile> = serde_saphyr::from_str_with_options(text, yaml_options(limits))
        .map_err(|e| ConfigError::Syntax(Box::new(e)))?;
    let raw = raw.ok_or(ConfigError::Empty)?;
    let mut v = Validator::default();
    let file = v.file(&raw, limits);
    if v.issues.is_empty() {
        Ok(file)
    } else {
        Err(ConfigError::Invalid(v.issues))
    }
}

/// A service's valid parts and where they are, for cross-service checks.
/// Invalid parts are left out (their issue is already recorded) so that one
/// typo does not cascade into follow-up errors.
struct Located {
    index: usize,
    name: Location,
    vip: Location,
    /// `service.vip` is only meaningful when this is `Some`.
    vip_addr: Option<IpAddr>,
    ports: Vec<Location>,
    backends: Vec<Location>,
    service: Service,
}

#[derive(Default)]
struct Validator {
    issues: Vec<Issue>,
}

impl Validator {
    fn issue(&mut self, path: impl Into<String>, loc: Location, message: impl Into<String>) {
        self.issues.push(Issue {
            path: path.into(),
            line: loc.line(),
            message: message.into(),
        });
    }

    /// An address of either family usable as a unicast host address.
    fn host_ip(&mut self, path: &str, s: &Spanned<String>) -> Option<IpAddr> {
        let Ok(ip) = s.value.parse::<IpAddr>() else {
            // A colon says the writer meant IPv6.
            let family = if s.value.contains(':') {
                "IPv6"
            } else {
                "IPv4"
            };
            self.issue(
                path,
                s.referenced,
                format!("{:?} is not an {family} address", s.value),
            );
            return None;
        };
        let what = match ip {
            IpAddr::V4(ip) if ip.is_broadcast() => "the broadcast address",
            IpAddr::V6(ip) if ip.is_unicast_link_local() => {
                "a link-local address (it names no host beyond one link)"
            }
            IpAddr::V6(ip) if ip.to_ipv4_mapped().is_some() => {
                "an IPv4-mapped address (write the IPv4 address)"
            }
            _ if ip.is_unspecified() => "the unspecified address",
            _ if ip.is_loopback() => "a loopback address",
            _ if ip.is_multicast() => "a multicast address",
            _ => return Some(ip),
        };
        self.issue(path, s.referenced, format!("{ip} is {what}"));
        None
    }

    /// A host address of one family (`node.ip`, `node.ip6`).
    fn host_ip_of<T>(
        &mut self,
        path: &str,
        s: &Spanned<String>,
        pick: fn(IpAddr) -> Option<T>,
        other: &str,
    ) -> Option<T> {
        let ip = self.host_ip(path, s)?;
        let found = pick(ip);
        if found.is_none() {
            self.issue(path, s.referenced, format!("{ip} is {other}"));
        }
        found
    }

    fn maglev_size(&mut self, path: &str, v: &Spanned<i64>) -> Option<MaglevSize> {
        let size = u32::try_from(v.value)
            .map_err(|_| {
                format!(
                    "{} is not a Maglev table size; use one of {}",
                    v.value,
                    maglev::allowed_sizes()
                )
            })
            .and_then(MaglevSize::new);
        match size {
            Ok(s) => Some(s),
            Err(e) => {
                self.issue(path, v.referenced, e);
                None
            }
        }
    }

    fn port(&mut self, path: &str, p: &Spanned<i64>) -> Option<u16> {
        match u16::try_from(p.value) {
            Ok(port) if port > 0 => Some(port),
            _ => {
                self.issue(
                    path,
                    p.referenced,
                    format!("must be 1..=65535, not {}", p.value),
                );
                None
            }
        }
    }

    fn file(&mut self, raw: &RawFile, limits: &Limits) -> NodeServices {
        let node = raw.node.as_ref().map(|n| &n.value);
        let node_ip = node.and_then(|n| n.ip.as_ref()).and_then(|ip| {
            self.host_ip_of(
                "node.ip",
                ip,
                |ip| match ip {
                    IpAddr::V4(a) => Some(a),
                    IpAddr::V6(_) => None,
                },
                "an IPv6 address (node.ip6 takes the node's IPv6 address)",
            )
        });
        let node_ip6 = node.and_then(|n| n.ip6.as_ref()).and_then(|ip| {
            self.host_ip_of(
                "node.ip6",
                ip,
                |ip| match ip {
                    IpAddr::V6(a) => Some(a),
                    IpAddr::V4(_) => None,
                },
                "an IPv4 address (node.ip takes the node's IPv4 address)",
            )
        });
        let nat_ports = raw
            .nat_ports
            .as_ref()
            .map_or_else(NatPorts::default, |n| self.nat_ports(n));
        let flow_timeouts = raw
            .flow_timeouts
            .as_ref()
            .map_or_else(FlowTimeouts::default, |t| self.flow_timeouts(&t.value));
        let maglev_table_size = raw
            .maglev_table_size
            .as_ref()
            .and_then(|v| self.maglev_size("maglev_table_size", v))
            .unwrap_or_default();
        let services_loc = raw
            .services
            .as_ref()
            .map_or(Location::UNKNOWN, |s| s.referenced);
        if raw.services.is_none() {
            self.issue(
                "services",
                Location::UNKNOWN,
                "missing: the file lacks its `services` list (cut short, or still being \
                 written?); to serve nothing, write `services: []`",
            );
        }
        let mut services = Vec::new();
        for (i, s) in raw.services.iter().flat_map(|s| &s.value).enumerate() {
            services.push(self.service(i, s));
        }
        self.cross_service(
            &services,
            [node_ip.map(IpAddr::V4), node_ip6.map(IpAddr::V6)],
            limits,
            services_loc,
            maglev_table_size,
        );
        let vips: BTreeSet<IpAddr> = services.iter().filter_map(|l| l.vip_addr).collect();
        let mut announce = BTreeSet::new();
        for (i, a) in raw.announce.iter().flatten().enumerate() {
            let path = format!("announce[{i}]");
            let Some(ip) = self.host_ip(&path, a) else {
                continue;
            };
            if !announce.insert(ip) {
                self.issue(path, a.referenced, format!("{ip} is listed twice"));
            } else if !vips.contains(&ip) {
                self.issue(
                    path,
                    a.referenced,
                    format!("{ip} is not the vip of any service"),
                );
            }
        }
        NodeServices {
            node_ip,
            node_ip6,
            nat_ports,
            flow_timeouts,
            maglev_table_size,
            direct_return: if raw.direct_return.unwrap_or(false) {
                DirectReturn::Segment
            } else {
                DirectReturn::Off
            },
            announce,
            services: services.into_iter().map(|l| l.service).collect(),
        }
    }

    fn nat_ports(&mut self, n: &Spanned<RawNatPorts>) -> NatPorts {
        let min = self.port("nat_ports.min", &n.value.min);
        let max = self.port("nat_ports.max", &n.value.max);
        let (Some(min), Some(max)) = (min, max) else {
            return NatPorts::default();
        };
        if min < MIN_NAT_PORT {
            self.issue(
                "nat_ports.min",
                n.value.min.referenced,
                format!("must be at least {MIN_NAT_PORT}, not {min}"),
            );
        }
        if min > max {
            self.issue(
                "nat_ports",
                n.referenced,
                format!("min {min} is greater than max {max}"),
            );
        }
        NatPorts { min, max }
    }

    fn flow_timeouts(&mut self, raw: &RawFlowTimeouts) -> FlowTimeouts {
        let d = FlowTimeouts::DEFAULT;
        let mut one = |name: &str, v: &Option<Spanned<i64>>, default: u32| {
            let Some(v) = v else {
                return default;
            };
            match u32::try_from(v.value) {
                Ok(s) if (FlowTimeouts::MIN_S..=MAX_FLOW_TIMEOUT_S).contains(&s) => s,
                _ => {
                    self.issue(
                        format!("flow_timeouts.{name}"),
                        v.referenced,
                        format!(
                            "must be {}..={MAX_FLOW_TIMEOUT_S} seconds, not {}",
                            FlowTimeouts::MIN_S,
                            v.value
                        ),
                    );
                    default
                }
            }
        };
        FlowTimeouts::new(
            one("tcp_syn", &raw.tcp_syn, d.tcp_syn_s),
            one("tcp_established", &raw.tcp_established, d.tcp_established_s),
            one("tcp_closing", &raw.tcp_closing, d.tcp_closing_s),
            one("udp", &raw.udp, d.udp_s),
            one("udp_reclaim", &raw.udp_reclaim, d.udp_reclaim_s),
            one("tcp_reclaim", &raw.tcp_reclaim, d.tcp_reclaim_s),
        )
    }

    /// Checks one service on its own.
    fn service(&mut self, i: usize, raw: &Spanned<RawService>) -> Located {
        let s = &raw.value;
        let p = format!("services[{i}]");
        let name = s.name.value.clone();
        if !is_dns_label(&name) {
            self.issue(
                format!("{p}.name"),
                s.name.referenced,
                format!(
                    "{name:?} is not a DNS label (1-63 of a-z, 0-9 and '-', \
                     starting and ending with a letter or digit)"
                ),
            );
        }
        let vip = self.host_ip(&format!("{p}.vip"), &s.vip);
        let (ports, port_locs) = self.ports(&p, &s.ports);
        let session_affinity = self.affinity(&p, s);
        let source_ranges = self.source_ranges(&p, s.source_ranges.as_deref().unwrap_or(&[]));
        let maglev_table_size = s
            .maglev_table_size
            .as_ref()
            .and_then(|v| self.maglev_size(&format!("{p}.maglev_table_size"), v));
        let backends = self.backends(&p, &name, vip, s.backends.as_deref().unwrap_or(&[]));
        Located {
            index: i,
            name: s.name.referenced,
            vip: s.vip.referenced,
            vip_addr: vip,
            ports: port_locs,
            backends: s
                .backends
                .iter()
                .flatten()
                .map(|b| b.value.node_ip.referenced)
                .collect(),
            service: Service {
                name,
                vip: vip.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
                ports,
                session_affinity,
                source_ranges,
                maglev_table_size,
                backends,
                // A backend taken out of the file drains by itself (see
                // `plan::state`); the file names no terminating ones.
                draining: Vec::new(),
                backend_ports: BTreeMap::new(),
            },
        }
    }

    fn ports(
        &mut self,
        p: &str,
        raw: &Spanned<Vec<Spanned<RawPort>>>,
    ) -> (Vec<ServicePort>, Vec<Location>) {
        if raw.value.is_empty() {
            self.issue(
                format!("{p}.ports"),
                raw.referenced,
                "must list at least one port",
            );
        }
        let mut seen: BTreeMap<(u16, Protocol), usize> = BTreeMap::new();
        let mut ports = Vec::new();
        let mut locs = Vec::new();
        for (j, rp) in raw.value.iter().enumerate() {
            let pp = format!("{p}.ports[{j}]");
            let port = self.port(&format!("{pp}.port"), &rp.value.port);
            let target_port = match &rp.value.target_port {
                Some(t) => self.port(&format!("{pp}.target_port"), t),
                None => port,
            };
            let protocol = match &rp.value.protocol {
                None => Some(Protocol::Tcp),
                Some(s) => {
                    let p = Protocol::from_name(&s.value);
                    if p.is_none() {
                        self.issue(
                            format!("{pp}.protocol"),
                            s.referenced,
                            format!("must be TCP or UDP, not {:?}", s.value),
                        );
                    }
                    p
                }
            };
            let (Some(port), Some(target_port), Some(protocol)) = (port, target_port, protocol)
            else {
                continue;
            };
            if let Some(first) = seen.insert((port, protocol), j) {
                self.issue(
                    pp,
                    rp.referenced,
                    format!("{protocol} port {port} is already listed in {p}.ports[{first}]"),
                );
                continue;
            }
            ports.push(ServicePort {
                port,
                protocol,
                target_port,
            });
            locs.push(rp.referenced);
        }
        (ports, locs)
    }

    fn affinity(&mut self, p: &str, s: &RawService) -> SessionAffinity {
        let client_ip = match &s.session_affinity {
            None => false,
            Some(a) => match a.value.as_str() {
                "None" => false,
                "ClientIP" => true,
                other => {
                    self.issue(
                        format!("{p}.session_affinity"),
                        a.referenced,
                        format!("must be None or ClientIP, not {other:?}"),
                    );
                    return SessionAffinity::None;
                }
            },
        };
        let timeout = s.session_affinity_timeout_seconds.as_ref();
        let path = format!("{p}.session_affinity_timeout_seconds");
        match (client_ip, timeout) {
            (false, None) => SessionAffinity::None,
            (false, Some(t)) => {
                self.issue(
                    path,
                    t.referenced,
                    "only allowed with session_affinity: ClientIP",
                );
                SessionAffinity::None
            }
            (true, None) => SessionAffinity::ClientIp {
                timeout_s: DEFAULT_AFFINITY_TIMEOUT_S,
            },
            (true, Some(t)) => match u32::try_from(t.value) {
                Ok(timeout_s) if (1..=MAX_AFFINITY_TIMEOUT_S).contains(&timeout_s) => {
                    SessionAffinity::ClientIp { timeout_s }
                }
                _ => {
                    self.issue(
                        path,
                        t.referenced,
                        format!("must be 1..={MAX_AFFINITY_TIMEOUT_S}, not {}", t.value),
                    );
                    SessionAffinity::None
                }
            },
        }
    }

    fn source_ranges(&mut self, p: &str, raw: &[Spanned<String>]) -> Vec<Cidr> {
        let mut out = Vec::new();
        let mut seen = BTreeSet::new();
        for (k, r) in raw.iter().enumerate() {
            let path = format!("{p}.source_ranges[{k}]");
            match Cidr::parse(&r.value) {
                Ok(cidr) if !seen.insert(cidr) => {
                    self.issue(path, r.referenced, format!("{cidr} is listed twice"));
                }
                Ok(cidr) => out.push(cidr),
                Err(e) => self.issue(path, r.referenced, e),
            }
        }
        out
    }

    /// The backends of service `name` (path `p`) with VIP `vip` (if valid).
    fn backends(
        &mut self,
        p: &str,
        name: &str,
        vip: Option<IpAddr>,
        raw: &[Spanned<RawBackend>],
    ) -> Vec<Backend> {
        let mut out = Vec::new();
        let mut seen: BTreeMap<IpAddr, usize> = BTreeMap::new();
        for (k, b) in raw.iter().enumerate() {
            let bp = format!("{p}.backends[{k}]");
            let ip = self.host_ip(&format!("{bp}.ip"), &b.value.ip);
            let node_ip = self.host_ip(&format!("{bp}.node_ip"), &b.value.node_ip);
            let (Some(ip), Some(node_ip)) = (ip, node_ip) else {
                continue;
            };
            if let Some(vip) = vip
                && vip.is_ipv6() != ip.is_ipv6()
            {
                self.issue(
                    format!("{bp}.ip"),
                    b.value.ip.referenced,
                    format!(
                        "{ip} is {}, but the vip of service {name:?} is {} (a service's \
                         backends are of its VIP's family; list the other family's under \
                         a service of its own)",
                        family(ip),
                        family(vip)
                    ),
                );
                continue;
            }
            // An IPv4 pod is reached through its node's IPv4 address; an
            // IPv6 pod's node may be named by either (see the module docs).
            if ip.is_ipv4() && node_ip.is_ipv6() {
                self.issue(
                    format!("{bp}.node_ip"),
                    b.value.node_ip.referenced,
                    format!(
                        "{node_ip} is IPv6, but the IPv4 pod {ip} needs its node's IPv4 address"
                    ),
                );
                continue;
            }
            if let Some(first) = seen.insert(ip, k) {
                self.issue(
                    format!("{bp}.ip"),
                    b.value.ip.referenced,
                    format!("{ip} is already listed in {p}.backends[{first}]"),
                );
                continue;
            }
            out.push(Backend { ip, node_ip });
        }
        out
    }

    fn cross_service(
        &mut self,
        services: &[Located],
        node_ips_own: [Option<IpAddr>; 2],
        limits: &Limits,
        services_loc: Location,
        maglev_table_size: MaglevSize,
    ) {
        // Pod address -> (its node, where first seen); node address -> where first seen.
        let mut pods: BTreeMap<IpAddr, (IpAddr, String)> = BTreeMap::new();
        let mut node_ips: BTreeMap<IpAddr, String> = BTreeMap::new();
        for l in services {
            for (k, (b, loc)) in l.service.backends.iter().zip(&l.backends).enumerate() {
                let path = format!("services[{}].backends[{k}]", l.index);
                node_ips.entry(b.node_ip).or_insert_with(|| path.clone());
                match pods.get(&b.ip) {
                    Some((node, first)) if *node != b.node_ip => self.issue(
                        format!("{path}.node_ip"),
                        *loc,
                        format!(
                            "pod {} runs on {}, but {first} says it runs on {node}",
                            b.ip, b.node_ip
                        ),
                    ),
                    Some(_) => {}
                    None => {
                        pods.insert(b.ip, (b.node_ip, path));
                    }
                }
            }
        }
        let mut names: BTreeMap<&str, usize> = BTreeMap::new();
        let mut frontends: BTreeMap<(IpAddr, u16, Protocol), usize> = BTreeMap::new();
        for l in services {
            let (i, s) = (l.index, &l.service);
            let p = format!("services[{i}]");
            if let Some(first) = names.insert(&s.name, i) {
                self.issue(
                    format!("{p}.name"),
                    l.name,
                    format!("{:?} is already the name of services[{first}]", s.name),
                );
            }
            let vip_path = format!("{p}.vip");
            let Some(vip) = l.vip_addr else {
                continue;
            };
            if let Some(field) = ["node.ip", "node.ip6"]
                .into_iter()
                .zip(node_ips_own)
                .find_map(|(field, own)| (own == Some(vip)).then_some(field))
            {
                self.issue(
                    &vip_path,
                    l.vip,
                    format!("{vip} is the node's own address ({field})"),
                );
            }
            if let Some(first) = node_ips.get(&vip) {
                self.issue(
                    &vip_path,
                    l.vip,
                    format!("{vip} is a node address (node_ip of {first})"),
                );
            }
            if let Some((_, first)) = pods.get(&vip) {
                self.issue(
                    &vip_path,
                    l.vip,
                    format!("{vip} is a pod address (ip of {first})"),
                );
            }
            for (j, (port, loc)) in s.ports.iter().zip(&l.ports).enumerate() {
                if let Some(first) = frontends.insert((vip, port.port, port.protocol), i) {
                    self.issue(
                        format!("{p}.ports[{j}]"),
                        *loc,
                        format!(
                            "{} {} is already served by services[{first}]",
                            port.protocol,
                            std::net::SocketAddr::new(vip, port.port)
                        ),
                    );
                }
            }
        }
        self.limits(services, limits, services_loc, maglev_table_size);
    }

    fn limits(
        &mut self,
        services: &[Located],
        limits: &Limits,
        loc: Location,
        maglev_table_size: MaglevSize,
    ) {
        let services = || services.iter().map(|l| &l.service);
        let count = |n: usize| u64::try_from(n).unwrap_or(u64::MAX);
        // `services`/`services6`, `vips`/`vips6` and `src_ranges`/`src_ranges6`
        // are maps of their own, each as large as its IPv4 twin: the fuller
        // family counts. Service ids, backend ids and Maglev slots are one
        // space for both.
        let fuller = |f: &dyn Fn(bool) -> u64| f(false).max(f(true));
        let services_of = |v6: bool| services().filter(move |s| s.vip.is_ipv6() == v6);
        let entries: u64 = services().map(|s| count(s.ports.len())).sum();
        let vips = fuller(&|v6| {
            count(
                services_of(v6)
                    .map(|s| s.vip)
                    .collect::<BTreeSet<_>>()
                    .len(),
            ) + 1
        });
        let backends = count(
            services()
                .flat_map(|s| {
                    s.ports
                        .iter()
                        .flat_map(move |p| s.backends.iter().map(move |b| (b.ip, p.target_port)))
                })
                .collect::<BTreeSet<_>>()
                .len(),
        );
        let ranges = fuller(&|v6| {
            services_of(v6)
                .map(|s| count(s.ports.len()) * count(s.own_family_ranges().count()))
                .sum()
        });
        let slots: u64 = services()
            .map(|s| {
                let size = s.table_size(maglev_table_size);
                u64::from(maglev::table_size(size, s.backends.len())) * count(s.ports.len())
            })
            .sum();
        for (what, n, max) in [
            (
                "service ports (VIP, port, protocol)",
                entries,
                limits.max_services,
            ),
            (
                "addresses in the vips map (VIPs and the node)",
                vips,
                limits.max_vips,
            ),
            (
                "backends (pod address, target port)",
                backends,
                limits.max_backends,
            ),
            (
                "source-range entries (ranges x ports)",
                ranges,
                limits.max_src_ranges,
            ),
            ("Maglev table slots", slots, limits.maglev_slots),
        ] {
            if n > u64::from(max) {
                self.issue(
                    "services",
                    loc,
                    format!("{n} {what}, more than the {max} the maps hold"),
                );
            }
        }
    }
}

/// `IPv4` or `IPv6`, as messages name an address's family.
fn family(ip: IpAddr) -> &'static str {
    if ip.is_ipv6() { "IPv6" } else { "IPv4" }
}

/// RFC 1123 label, as Kubernetes requires of names.
fn is_dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    (1..=63).contains(&b.len())
        && b.iter()
            .all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

#[cfg(test)]
pub(crate) mod tests;
