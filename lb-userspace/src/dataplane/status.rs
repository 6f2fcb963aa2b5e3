//! `onehop status`: what the data path is doing, read from the pinned maps
//! only — it works the same with or without a running agent.
//!
//! `onehop status -o json` prints one JSON object, for scripts and
//! monitoring. Its fields are stable: new fields may be added, none are
//! renamed, removed or change meaning without `formatVersion` changing.
//!
//! | field | meaning |
//! |---|---|
//! | `formatVersion` | `1` |
//! | `interface`, `ifindex` | the interface the data path is attached to |
//! | `configured` | `false`: the agent never configured it (all traffic passes) |
//! | `node.ip`, `node.ip6`, `node.mac` | this node's address, IPv6 address (`null`: none) and MAC as the data path uses them (the addresses are the sources of full NAT) |
//! | `natPorts.min`, `natPorts.max` | source ports for remote backends |
//! | `directReturn` | whether new flows to backends flagged `direct` leave by direct server return |
//! | `vips[]` | `ip` (IPv4 or IPv6), and booleans `service` (a service address), `announced` (this node answers ARP or, for IPv6, Neighbor Solicitations for it), `node` (the node's own address) |
//! | `services[]` | `frontend` (`VIP:port/PROTO`), `vip`, `port`, `protocol` (`TCP`/`UDP`), `id`, `slots` (Maglev table size), `slotsPerBackend` (`slots` over the backends, one decimal; `null`: none; under 100, backends' shares of new flows differ by more than 1%), `backendIds`, `affinitySeconds` (`null`: no session affinity), `sourceRanges` (boolean), `packets`, `bytes` |
//! | `backends[]` | `id`, `ip`, `port`, `node` (the node IP it runs on), `location` (`local`, `remote`, or `empty` for a slot without a backend), `direct` (a remote backend reached by direct server return: only the frame's MACs rewritten, the pod sees the client; otherwise full NAT), `state` (`serving`; `draining`: a terminating endpoint that keeps its flows and takes no new one; `gone`: an endpoint that left its service, kept until its TCP flows end), `packets`, `bytes` |
//! | `maglev` | `slots` (of the `maglev` array), `used` (by the services' tables), `unevenServices` (with `slotsPerBackend` under 100) |
//! | `flows` | entry counts: `conntrack` (live flows), `revNat`, `affinity`, `localEndpoints` |
//! | `counters`, `drops` | every data-path counter and drop reason by its metric label, zeros included |
//! | `arp.answering` | whether ARP for announced VIPs is answered now: the agent's heartbeat is within its hold time |
//! | `arp.heartbeatAgeMs`, `arp.holdMs` | how long ago the agent last renewed the heartbeat (`null`: never), and how long it holds |
//! | `arp.addresses[]` | `ip`, `requests` (ARP requests for it seen), `replies` (answered by this node) |
//! | `arp.uncounted` | IPv4 service addresses without ARP counters (`arp n/c` in the text): served and answered, not counted |
//! | `ndp.addresses[]` | `ip`, `requests` (Neighbor Solicitations for it seen), `replies` (answered by this node with a Neighbor Advertisement); answered while `arp.answering` (one heartbeat for both) |
//! | `ndp.uncounted` | IPv6 service addresses without NDP counters (`ndp n/c` in the text) |

use std::{
    collections::BTreeSet,
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use anyhow::{Context as _, Result};
use lb_common::{
    AnnounceState, ArpStats, BackendValue, Counter, DatapathConfig, DropReason, ServiceValue,
    TrafficCounter, backend_flags, config_flags, service_flags, vip_flags,
};
use serde_json::{Value, json};

use crate::{
    dataplane::maps::{Maps, monotonic_ns, sum_traffic, sum_u64},
    dataplane::reader,
    net::netdev::fmt_mac,
    plan::{
        maglev,
        model::{Frontend, ProtoName},
        state::{AnyServiceKey, BackendSlot, DataplaneState},
    },
};

/// Everything `status` prints, read in one pass.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub config: DatapathConfig,
    /// `vips` and `vips6`, IPv4 first.
    pub vips: Vec<(IpAddr, u32)>,
    pub services: Vec<ServiceRow>,
    pub backends: Vec<BackendRow>,
    pub counters: Vec<(Counter, u64)>,
    pub drops: Vec<(DropReason, u64)>,
    /// Flows in the flow table not over at `read_at_ns` (slots of flows
    /// that are over stay until a new flow reuses them).
    pub conntrack_entries: usize,
    pub rev_nat_entries: usize,
    pub affinity_entries: usize,
    /// Local endpoints whose fronts are recorded (`local_fronts`).
    pub local_endpoints: usize,
    /// The agent's heartbeat, and when (same clock) it was read.
    pub announce: AnnounceState,
    pub read_at_ns: u64,
    /// ARP (`arp_stats`, IPv4) and NDP (`ndp_stats`, IPv6) counts per VIP,
    /// sorted by address.
    pub arp: Vec<(IpAddr, ArpStats)>,
    /// Slots of the `maglev` array (its size when the maps were created).
    pub maglev_slots: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceRow {
    pub key: AnyServiceKey,
    pub value: ServiceValue,
    /// Distinct backend ids in the service's Maglev table.
    pub backend_ids: Vec<u32>,
    pub traffic: TrafficCounter,
    /// False when the id is beyond the per-CPU counters' size (sized by CPU count, see
    /// `dataplane::memory`): served, not counted.
    pub counted: bool,
}

impl ServiceRow {
    /// Slots per backend of its Maglev table (`None`: no backend).
    pub fn slots_per_backend(&self) -> Option<f64> {
        maglev::slots_per_backend(self.value.maglev_len, self.backend_ids.len())
    }

    /// Fewer than `MAGLEV_EVEN_SLOTS_PER_BACKEND` slots per backend.
    pub fn uneven(&self) -> bool {
        !maglev::is_even(self.value.maglev_len, self.backend_ids.len())
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendRow {
    pub id: u32,
    /// Its `backends` or `backends6` entry (an empty IPv4 one for a slot a
    /// table names but no map holds).
    pub value: BackendSlot,
    pub traffic: TrafficCounter,
    /// As [`ServiceRow::counted`].
    pub counted: bool,
}

impl Snapshot {
    /// Reads everything from the maps (works without an agent).
    pub fn read(maps: &Maps) -> Result<Self> {
        Self::read_with(maps, &reader::read(maps)?)
    }

    /// The same, but which VIPs, services, tables and backends exist comes
    /// from `state` (the agent's own view, equal to the maps after every
    /// successful write): only counters are read, not the Maglev array.
    pub fn read_with(maps: &Maps, state: &DataplaneState) -> Result<Self> {
        let read_at_ns = monotonic_ns()?;
        let config = maps.config()?;
        let v4 = state.vips.iter().map(|(ip, f)| (IpAddr::from(*ip), *f));
        let vips = v4
            .chain(state.vips6.iter().map(|(ip, f)| (IpAddr::from(*ip), *f)))
            .collect();
        let mut services = Vec::new();
        for (key, value) in state.all_services() {
            let ids: BTreeSet<u32> = if value.maglev_len == 0 {
                BTreeSet::new()
            } else {
                state
                    .maglev
                    .get(&value.maglev_offset)
                    .iter()
                    .flat_map(|t| t.ids().iter())
                    .copied()
                    .collect()
            };
            services.push(ServiceRow {
                key,
                value: *value,
                backend_ids: ids.into_iter().collect(),
                traffic: sum_traffic(&maps.service_stats, value.id)?.unwrap_or_default(),
                counted: value.id < maps.service_stats.len(),
            });
        }
        let mut backends = Vec::new();
        // Every slot a table names (an empty one shows as such), and every
        // slot that holds a backend: draining ones are in no table.
        for id in services
            .iter()
            .flat_map(|s| s.backend_ids.iter().copied())
            .chain(state.all_backends().map(|(id, _)| id))
            .collect::<BTreeSet<_>>()
        {
            backends.push(BackendRow {
                id,
                value: state
                    .backend(id)
                    .unwrap_or(BackendSlot::V4(BackendValue::default())),
                traffic: sum_traffic(&maps.backend_stats, id)?.unwrap_or_default(),
                counted: id < maps.backend_stats.len(),
            });
        }
        let mut counters = Vec::new();
        for c in Counter::ALL {
            counters.push((c, sum_u64(&maps.counters, c as u32)?));
        }
        let mut drops = Vec::new();
        for d in DropReason::ALL {
            drops.push((d, sum_u64(&maps.drops, d as u32)?));
        }
        let mut arp: Vec<(IpAddr, ArpStats)> = maps
            .arp_stats
            .iter()
            .map(|r| r.map(|(k, v)| (IpAddr::from(k.addr), v)))
            .collect::<Result<_, _>>()
            .context("reading arp_stats")?;
        for r in &maps.ndp_stats {
            let (k, v) = r.context("reading ndp_stats")?;
            arp.push((IpAddr::from(k.addr), v));
        }
        arp.sort_unstable_by_key(|(ip, _)| *ip);
        Ok(Self {
            announce: maps.announce_state()?,
            read_at_ns,
            arp,
            config,
            vips,
            services,
            backends,
            counters,
            drops,
            conntrack_entries: live_flows(maps, &config, read_at_ns)?,
            rev_nat_entries: maps.rev_nat.keys().count(),
            affinity_entries: maps.affinity.keys().count(),
            local_endpoints: maps.local_fronts.keys().count(),
            maglev_slots: maps.maglev.len(),
        })
    }

    /// Slots of the `maglev` array the services' tables take.
    pub fn maglev_slots_used(&self) -> u64 {
        self.services
            .iter()
            .map(|r| u64::from(r.value.maglev_len))
            .sum()
    }

    /// Services whose table gives its backends fewer than
    /// `MAGLEV_EVEN_SLOTS_PER_BACKEND` slots each: their backends' shares of
    /// new flows differ by more than 1%.
    pub fn uneven_services(&self) -> usize {
        self.services.iter().filter(|r| r.uneven()).count()
    }

    pub fn counter(&self, c: Counter) -> u64 {
        self.counters
            .iter()
            .find(|(k, _)| *k == c)
            .map_or(0, |(_, v)| *v)
    }

    pub fn drop_count(&self, d: DropReason) -> u64 {
        self.drops
            .iter()
            .find(|(k, _)| *k == d)
            .map_or(0, |(_, v)| *v)
    }

    /// How long before the read the agent renewed its heartbeat (`None`:
    /// never).
    pub fn heartbeat_age_ns(&self) -> Option<u64> {
        (self.announce.hold_ns != 0)
            .then(|| self.read_at_ns.saturating_sub(self.announce.heartbeat_ns))
    }

    /// Whether ARP for announced VIPs was being answered when read.
    pub fn answering_arp(&self) -> bool {
        self.announce.current(self.read_at_ns)
    }

    /// The ARP (or, for IPv6, NDP) counts of `vip` (zero when it has no entry).
    pub fn arp_stats(&self, vip: impl Into<IpAddr>) -> ArpStats {
        self.arp_entry(vip.into()).unwrap_or_default()
    }

    /// The ARP or NDP counts of `vip`, if it has counters (`arp` is sorted by
    /// address: thousands of VIPs are looked up one by one).
    pub fn arp_entry(&self, vip: IpAddr) -> Option<ArpStats> {
        self.arp
            .binary_search_by_key(&vip, |(ip, _)| *ip)
            .ok()
            .map(|i| self.arp[i].1)
    }

    /// Service addresses of one family (`v6`) without ARP/NDP counters.
    fn uncounted(&self, v6: bool) -> usize {
        self.vips
            .iter()
            .filter(|(ip, flags)| {
                ip.is_ipv6() == v6
                    && flags & vip_flags::SERVICE != 0
                    && self.arp_entry(*ip).is_none()
            })
            .count()
    }

    /// IPv4 service addresses without ARP counters (served and answered, not counted).
    pub fn arp_uncounted(&self) -> usize {
        self.uncounted(false)
    }

    /// IPv6 service addresses without NDP counters (served and answered, not counted).
    pub fn ndp_uncounted(&self) -> usize {
        self.uncounted(true)
    }

    /// The ARP (IPv4) or NDP (IPv6) entries.
    pub fn neighbour_stats(&self, v6: bool) -> impl Iterator<Item = &(IpAddr, ArpStats)> + '_ {
        self.arp.iter().filter(move |(ip, _)| ip.is_ipv6() == v6)
    }
}

/// `VIP:port/PROTO` (`[VIP]:port/PROTO` for IPv6), the name of a service
/// frontend in output and metrics.
pub fn frontend(key: AnyServiceKey) -> String {
    Frontend(&key).to_string()
}

fn vip_flag_names(flags: u32) -> String {
    let mut names = Vec::new();
    for (bit, name) in [
        (vip_flags::SERVICE, "service"),
        (vip_flags::ANNOUNCE, "announced"),
        (vip_flags::NODE, "node"),
    ] {
        if flags & bit != 0 {
            names.push(name);
        }
    }
    if flags & vip_flags::SERVICE != 0 && flags & vip_flags::ANNOUNCE == 0 {
        names.push("(owned by another node: ARP/NDP dropped)");
    }
    names.join(",")
}

/// The version of [`render_json`]'s document.
pub const JSON_FORMAT_VERSION: u32 = 1;

/// Whether a backend takes new flows, drains, or only waits for its flows to end.
fn drain_state(b: &BackendSlot) -> &'static str {
    if b.flags() & backend_flags::GONE != 0 {
        "gone"
    } else if b.flags() & backend_flags::DRAINING != 0 {
        "draining"
    } else {
        "serving"
    }
}

fn direct_return(c: &DatapathConfig) -> bool {
    c.flags & config_flags::DIRECT_RETURN != 0
}

/// A remote backend reached by direct server return.
fn direct(b: &BackendSlot) -> bool {
    b.flags() & backend_flags::DIRECT != 0
}

fn location(b: &BackendSlot) -> &'static str {
    if b.flags() & backend_flags::VALID == 0 {
        "empty"
    } else if b.flags() & backend_flags::LOCAL != 0 {
        "local"
    } else {
        "remote"
    }
}

/// Renders a snapshot as the JSON document `onehop status -o json` prints
/// (fields in the module documentation).
pub fn render_json(ifname: &str, s: &Snapshot) -> Value {
    let c = &s.config;
    let vips: Vec<Value> = s
        .vips
        .iter()
        .map(|(ip, flags)| {
            json!({
                "ip": ip.to_string(),
                "service": flags & vip_flags::SERVICE != 0,
                "announced": flags & vip_flags::ANNOUNCE != 0,
                "node": flags & vip_flags::NODE != 0,
            })
        })
        .collect();
    let services: Vec<Value> = s
        .services
        .iter()
        .map(|row| {
            let affinity = (row.value.flags & service_flags::AFFINITY != 0)
                .then_some(row.value.affinity_timeout_s);
            json!({
                "frontend": frontend(row.key),
                "vip": row.key.vip().to_string(),
                "port": row.key.port(),
                "protocol": ProtoName(row.key.proto()).to_string(),
                "id": row.value.id,
                "slots": row.value.maglev_len,
                "slotsPerBackend": row.slots_per_backend().map(|v| (v * 10.0).round() / 10.0),
                "backendIds": row.backend_ids,
                "affinitySeconds": affinity,
                "sourceRanges": row.value.flags & service_flags::SOURCE_RANGES != 0,
                "packets": row.traffic.packets,
                "bytes": row.traffic.bytes,
                "counted": row.counted,
            })
        })
        .collect();
    let backends: Vec<Value> = s
        .backends
        .iter()
        .map(|b| {
            json!({
                "id": b.id,
                "ip": b.value.ip().to_string(),
                "port": b.value.port(),
                "node": b.value.node_ip().to_string(),
                "location": location(&b.value),
                "direct": direct(&b.value),
                "state": drain_state(&b.value),
                "packets": b.traffic.packets,
                "bytes": b.traffic.bytes,
                "counted": b.counted,
            })
        })
        .collect();
    let counters: serde_json::Map<String, Value> = s
        .counters
        .iter()
        .map(|(k, v)| (k.label().to_owned(), json!(v)))
        .collect();
    let drops: serde_json::Map<String, Value> = s
        .drops
        .iter()
        .map(|(k, v)| (k.label().to_owned(), json!(v)))
        .collect();
    json!({
        "formatVersion": JSON_FORMAT_VERSION,
        "interface": ifname,
        "ifindex": c.ifindex,
        "configured": c.ready != 0,
        "node": node_json(c),
        "natPorts": { "min": c.nat_port_min, "max": c.nat_port_max },
        "directReturn": direct_return(c),
        "vips": vips,
        "services": services,
        "backends": backends,
        "maglev": {
            "slots": s.maglev_slots,
            "used": s.maglev_slots_used(),
            "unevenServices": s.uneven_services(),
        },
        "flows": {
            "conntrack": s.conntrack_entries,
            "revNat": s.rev_nat_entries,
            "affinity": s.affinity_entries,
            "localEndpoints": s.local_endpoints,
        },
        "counters": counters,
        "drops": drops,
        "arp": {
            "answering": s.answering_arp(),
            "heartbeatAgeMs": s.heartbeat_age_ns().map(|n| n / 1_000_000),
            "holdMs": s.announce.hold_ns / 1_000_000,
            "uncounted": s.arp_uncounted(),
            "addresses": addresses(s, false),
        },
        "ndp": {
            "uncounted": s.ndp_uncounted(),
            "addresses": addresses(s, true),
        },
    })
}

/// The `addresses` of the JSON `arp` (IPv4) or `ndp` (IPv6) object.
fn addresses(s: &Snapshot, v6: bool) -> Vec<Value> {
    s.neighbour_stats(v6)
        .map(|(ip, a)| {
            json!({
                "ip": ip.to_string(),
                "requests": a.requests,
                "replies": a.replies,
            })
        })
        .collect()
}

/// Whether ARP (and NDP, by the same heartbeat) is answered, and the
/// heartbeat that decides it.
fn arp_line(s: &Snapshot) -> String {
    match s.heartbeat_age_ns() {
        None => "ARP not answered: no agent has written a heartbeat".to_owned(),
        Some(age) => format!(
            "ARP {}: agent heartbeat {} ms ago, held {} ms",
            if s.answering_arp() {
                "answered"
            } else {
                "NOT ANSWERED (agent gone or stuck)"
            },
            age / 1_000_000,
            s.announce.hold_ns / 1_000_000
        ),
    }
}

/// Renders a snapshot as the text `onehop status` prints.
/// A counter's figure, or `n/c` (not counted) for an id beyond the counters' size.
fn counted(counted: bool, n: u64) -> String {
    if counted {
        n.to_string()
    } else {
        "n/c".to_owned()
    }
}

/// The SERVICES section of [`render`].
fn services_section(o: &mut String, s: &Snapshot) {
    let _ = writeln!(o, "\nSERVICES ({})", s.services.len());
    let _ = writeln!(
        o,
        "  {:<24} {:>5} {:>8} {:>7} {:<22} {:>12} {:>14}",
        "FRONTEND", "ID", "BACKENDS", "SLOTS", "OPTIONS", "PACKETS", "BYTES"
    );
    for row in &s.services {
        let mut opts = Vec::new();
        if row.value.flags & service_flags::AFFINITY != 0 {
            opts.push(format!("affinity={}s", row.value.affinity_timeout_s));
        }
        if row.value.flags & service_flags::SOURCE_RANGES != 0 {
            opts.push("source-ranges".to_owned());
        }
        if row.uneven()
            && let Some(per) = row.slots_per_backend()
        {
            // Shares of new flows are floor or ceil of this many slots.
            opts.push(format!("uneven={per:.0}/backend"));
        }
        let frontend = frontend(row.key);
        let _ = writeln!(
            o,
            "  {frontend:<24} {:>5} {:>8} {:>7} {:<22} {:>12} {:>14}",
            row.value.id,
            row.backend_ids.len(),
            row.value.maglev_len,
            if opts.is_empty() {
                "-".to_owned()
            } else {
                opts.join(",")
            },
            counted(row.counted, row.traffic.packets),
            counted(row.counted, row.traffic.bytes),
        );
    }
}

/// `node` of the JSON status.
fn node_json(c: &DatapathConfig) -> Value {
    json!({
        "ip": Ipv4Addr::from(c.node_ip).to_string(),
        "ip6": node_ip6(c).map(|a| a.to_string()),
        "mac": fmt_mac(c.mac),
    })
}

/// The node's IPv6 address, the source of IPv6 full NAT, if it has one.
fn node_ip6(c: &DatapathConfig) -> Option<Ipv6Addr> {
    (c.node_ip6 != [0; 16]).then(|| Ipv6Addr::from(c.node_ip6))
}

pub fn render(ifname: &str, s: &Snapshot) -> String {
    let mut o = String::new();
    let c = &s.config;
    let _ = writeln!(
        o,
        "interface {ifname} (ifindex {}): node {}{} mac {} nat ports {}-{}{}{}",
        c.ifindex,
        Ipv4Addr::from(c.node_ip),
        node_ip6(c).map_or(String::new(), |a| format!(" {a}")),
        fmt_mac(c.mac),
        c.nat_port_min,
        c.nat_port_max,
        if direct_return(c) {
            " direct return"
        } else {
            ""
        },
        if c.ready == 0 {
            "  [NOT CONFIGURED: passing all traffic]"
        } else {
            ""
        },
    );
    let _ = writeln!(o, "{}", arp_line(s));
    let _ = writeln!(o, "\nVIPS ({})", s.vips.len());
    for (ip, flags) in &s.vips {
        let what = if ip.is_ipv6() { "ndp" } else { "arp" };
        let counts = match s.arp_entry(*ip) {
            None if flags & vip_flags::SERVICE != 0 => format!("  {what} n/c"),
            Some(a) if a != ArpStats::default() => {
                format!("  {what} requests {} replies {}", a.requests, a.replies)
            }
            _ => String::new(),
        };
        let _ = writeln!(
            o,
            "  {:<16} {}{counts}",
            ip.to_string(),
            vip_flag_names(*flags)
        );
    }
    services_section(&mut o, s);
    let _ = writeln!(o, "\nBACKENDS ({})", s.backends.len());
    let _ = writeln!(
        o,
        "  {:>6} {:<22} {:<16} {:<7} {:>12} {:>14}",
        "ID", "POD", "NODE", "WHERE", "PACKETS", "BYTES"
    );
    for b in &s.backends {
        let pod = std::net::SocketAddr::new(b.value.ip(), b.value.port()).to_string();
        let place = match (location(&b.value), drain_state(&b.value)) {
            ("empty", _) => "EMPTY".to_owned(),
            ("remote", state) if direct(&b.value) => match state {
                "serving" => "direct".to_owned(),
                state => format!("direct {state}"),
            },
            (other, "serving") => other.to_owned(),
            (other, state) => format!("{other} {state}"),
        };
        let _ = writeln!(
            o,
            "  {:>6} {pod:<22} {:<16} {place:<7} {:>12} {:>14}",
            b.id,
            b.value.node_ip().to_string(),
            counted(b.counted, b.traffic.packets),
            counted(b.counted, b.traffic.bytes),
        );
    }
    let _ = writeln!(
        o,
        "\nMAGLEV  slots used {} of {}  services under {} slots a backend {}",
        s.maglev_slots_used(),
        s.maglev_slots,
        lb_common::maps::MAGLEV_EVEN_SLOTS_PER_BACKEND,
        s.uneven_services(),
    );
    let _ = writeln!(
        o,
        "\nFLOWS  conntrack {}  rev_nat {}  affinity {}  local endpoints {}",
        s.conntrack_entries, s.rev_nat_entries, s.affinity_entries, s.local_endpoints
    );
    let _ = writeln!(o, "\nCOUNTERS (non-zero)");
    for (k, v) in s.counters.iter().filter(|(_, v)| *v > 0) {
        let _ = writeln!(o, "  {:<22} {v:>14}", k.label());
    }
    let _ = writeln!(o, "\nDROPS (non-zero)");
    for (k, v) in s.drops.iter().filter(|(_, v)| *v > 0) {
        let _ = writeln!(o, "  {:<22} {v:>14}", k.label());
    }
    o
}

/// Flows of the flow table not over at `now`.
fn live_flows(maps: &Maps, config: &DatapathConfig, now: u64) -> Result<usize> {
    Ok(maps
        .flows()?
        .all()
        .context("reading the flow table")?
        .iter()
        .filter(|f| !super::sweep::conntrack_over(&f.key, &f.value, now, &config.timeouts))
        .count())
}

#[cfg(test)]
mod tests {
    use super::*;
    use lb_common::{BackendValue6, ServiceKey, ServiceKey6, proto};

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("an address")
    }

    fn sample() -> Snapshot {
        Snapshot {
            config: DatapathConfig {
                node_ip: [192, 168, 50, 11],
                ifindex: 4,
                mac: [2, 0, 0, 0, 0, 0x11],
                nat_port_min: 61000,
                nat_port_max: 65535,
                ready: 1,
                ..DatapathConfig::default()
            },
            vips: vec![
                (ip("192.168.50.11"), vip_flags::NODE),
                (
                    ip("192.168.50.100"),
                    vip_flags::SERVICE | vip_flags::ANNOUNCE,
                ),
                (ip("192.168.50.101"), vip_flags::SERVICE),
            ],
            services: vec![ServiceRow {
                key: AnyServiceKey::V4(ServiceKey::new([192, 168, 50, 100], 80, proto::TCP)),
                value: ServiceValue::new(3, 0, 251, service_flags::AFFINITY, 60),
                backend_ids: vec![0, 1],
                traffic: TrafficCounter {
                    packets: 10,
                    bytes: 1000,
                },
                counted: true,
            }],
            backends: vec![BackendRow {
                id: 1,
                value: BackendSlot::V4(BackendValue::new(
                    [10, 42, 1, 2],
                    [192, 168, 50, 12],
                    8080,
                    backend_flags::VALID,
                )),
                traffic: TrafficCounter {
                    packets: 4,
                    bytes: 400,
                },
                counted: true,
            }],
            counters: vec![(Counter::IngressPackets, 12), (Counter::ArpReply, 0)],
            drops: vec![(DropReason::NoService, 2)],
            conntrack_entries: 5,
            rev_nat_entries: 5,
            affinity_entries: 1,
            local_endpoints: 2,
            announce: AnnounceState::new(5_000_000_000, 1_200_000_000),
            read_at_ns: 5_300_000_000,
            arp: vec![(ip("192.168.50.100"), ArpStats::new(7, 6))],
            maglev_slots: 4096,
        }
    }

    /// Direct return shows in the header and on the backends it reaches.
    #[test]
    fn direct_return_shows_in_text_and_json() {
        let mut s = sample();
        assert_eq!(render_json("eth0", &s)["directReturn"], json!(false));
        s.config.flags |= config_flags::DIRECT_RETURN;
        let BackendSlot::V4(b) = &mut s.backends[0].value else {
            unreachable!("the sample's backend is IPv4")
        };
        b.flags |= backend_flags::DIRECT;
        let text = render("eth0", &s);
        assert!(
            text.contains("nat ports 61000-65535 direct return"),
            "{text}"
        );
        let row = text
            .lines()
            .find(|l| l.contains("10.42.1.2:8080"))
            .expect("the backend's row");
        assert!(row.contains(" direct "), "{row}");
        let v = render_json("eth0", &s);
        assert_eq!(v["directReturn"], json!(true));
        assert_eq!(v["backends"][0]["direct"], json!(true));
        assert_eq!(v["backends"][0]["location"], json!("remote"));
    }

    #[test]
    fn renders_every_section() {
        let text = render("eth0", &sample());
        for needle in [
            "node 192.168.50.11 mac 02:00:00:00:00:11 nat ports 61000-65535",
            "192.168.50.100   service,announced",
            "192.168.50.101   service,(owned by another node: ARP/NDP dropped)",
            "192.168.50.100:80/TCP",
            "affinity=60s",
            "10.42.1.2:8080",
            "remote",
            "conntrack 5  rev_nat 5  affinity 1  local endpoints 2",
            "ingress_packets",
            "no_service",
            "ARP answered: agent heartbeat 300 ms ago, held 1200 ms",
            "service,announced  arp requests 7 replies 6",
            // A service address without ARP counters says so; the node's own has none.
            "192.168.50.101   service,(owned by another node: ARP/NDP dropped)  arp n/c",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
        }
        assert!(
            !text.contains("arp_reply"),
            "zero counters are hidden:\n{text}"
        );
        assert!(!text.contains("NOT CONFIGURED"));
    }

    /// The documented fields, read back as a script would.
    #[test]
    fn json_has_the_documented_fields() {
        let text = serde_json::to_string(&render_json("eth0", &sample())).unwrap();
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["formatVersion"], 1);
        assert_eq!(v["interface"], "eth0");
        assert_eq!(v["ifindex"], 4);
        assert_eq!(v["configured"], true);
        assert_eq!(v["node"]["ip"], "192.168.50.11");
        assert_eq!(v["node"]["mac"], "02:00:00:00:00:11");
        assert_eq!(v["natPorts"], json!({ "min": 61000, "max": 65535 }));
        assert_eq!(
            v["vips"][1],
            json!({ "ip": "192.168.50.100", "service": true, "announced": true, "node": false })
        );
        assert_eq!(v["vips"][2]["announced"], false);
        assert_eq!(v["vips"][0]["node"], true);
        let svc = &v["services"][0];
        assert_eq!(svc["frontend"], "192.168.50.100:80/TCP");
        assert_eq!(svc["vip"], "192.168.50.100");
        assert_eq!(svc["port"], 80);
        assert_eq!(svc["protocol"], "TCP");
        assert_eq!(svc["id"], 3);
        assert_eq!(svc["slots"], 251);
        assert_eq!(svc["slotsPerBackend"], 125.5);
        assert_eq!(svc["backendIds"], json!([0, 1]));
        assert_eq!(svc["affinitySeconds"], 60);
        assert_eq!(svc["sourceRanges"], false);
        assert_eq!(
            (svc["packets"].as_u64(), svc["bytes"].as_u64()),
            (Some(10), Some(1000))
        );
        assert_eq!(svc["counted"], true);
        assert_eq!(
            v["backends"][0],
            json!({ "id": 1, "ip": "10.42.1.2", "port": 8080, "node": "192.168.50.12",
                    "location": "remote", "direct": false, "state": "serving", "packets": 4,
                    "bytes": 400, "counted": true })
        );
        assert_eq!(
            v["flows"],
            json!({ "conntrack": 5, "revNat": 5, "affinity": 1, "localEndpoints": 2 })
        );
        assert_eq!(
            v["maglev"],
            json!({ "slots": 4096, "used": 251, "unevenServices": 0 })
        );
        // Zeros too: a script need not guess whether a counter exists.
        assert_eq!(
            v["counters"],
            json!({ "ingress_packets": 12, "arp_reply": 0 })
        );
        assert_eq!(v["drops"], json!({ "no_service": 2 }));
        assert_eq!(
            v["arp"],
            json!({ "answering": true, "heartbeatAgeMs": 300, "holdMs": 1200, "uncounted": 1,
                    "addresses": [{ "ip": "192.168.50.100", "requests": 7, "replies": 6 }] })
        );
        let mut plain = sample();
        plain.services[0].value.flags = 0;
        plain.config.ready = 0;
        let v = render_json("eth0", &plain);
        assert_eq!(v["services"][0]["affinitySeconds"], Value::Null);
        assert_eq!(v["configured"], false);
    }

    /// A table with fewer than 100 slots a backend says so, in text and JSON.
    #[test]
    fn uneven_tables_are_flagged() {
        let mut s = sample();
        s.services[0].value.maglev_len = 1021;
        s.services[0].backend_ids = (0..20).collect();
        let text = render("eth0", &s);
        assert!(text.contains("uneven=51/backend"), "{text}");
        assert!(
            text.contains("MAGLEV  slots used 1021 of 4096  services under 100 slots a backend 1"),
            "{text}"
        );
        let v = render_json("eth0", &s);
        assert_eq!(v["services"][0]["slotsPerBackend"], 51.1);
        assert_eq!(v["maglev"]["unevenServices"], 1);
        s.services[0].backend_ids = (0..10).collect();
        assert!(!render("eth0", &s).contains("uneven"));
        assert_eq!(s.uneven_services(), 0);
        s.services[0].backend_ids.clear();
        assert_eq!(
            render_json("eth0", &s)["services"][0]["slotsPerBackend"],
            Value::Null
        );
    }

    /// An id beyond the per-CPU counters' size is shown as not counted, never as zero.
    #[test]
    fn uncounted_ids_say_so() {
        let mut s = sample();
        s.services[0].counted = false;
        s.backends[0].counted = false;
        let text = render("eth0", &s);
        let row = |needle: &str| {
            text.lines()
                .find(|l| l.contains(needle))
                .unwrap_or_else(|| panic!("no {needle} row in:\n{text}"))
                .to_owned()
        };
        for needle in ["192.168.50.100:80/TCP", "10.42.1.2:8080"] {
            let r = row(needle);
            assert_eq!(r.matches("n/c").count(), 2, "{r}");
        }
        let v = render_json("eth0", &s);
        assert_eq!(v["services"][0]["counted"], false);
        assert_eq!(v["backends"][0]["counted"], false);
    }

    #[test]
    fn a_stale_or_missing_heartbeat_says_arp_is_not_answered() {
        let mut s = sample();
        s.read_at_ns = s.announce.heartbeat_ns + s.announce.hold_ns + 1;
        assert!(render("eth0", &s).contains("ARP NOT ANSWERED"));
        assert_eq!(render_json("eth0", &s)["arp"]["answering"], false);
        s.announce = AnnounceState::default();
        assert!(render("eth0", &s).contains("no agent has written a heartbeat"));
        assert_eq!(
            render_json("eth0", &s)["arp"]["heartbeatAgeMs"],
            Value::Null
        );
    }

    /// IPv6 VIPs, services and backends are listed beside the IPv4 ones,
    /// with their NDP counts apart from the ARP ones.
    #[test]
    fn ipv6_entries_show_in_text_and_json() {
        let mut s = sample();
        let vip6: std::net::Ipv6Addr = "fd00:60::1".parse().unwrap();
        s.vips
            .push((IpAddr::V6(vip6), vip_flags::SERVICE | vip_flags::ANNOUNCE));
        s.vips.push((ip("fd00:60::2"), vip_flags::SERVICE));
        s.services.push(ServiceRow {
            key: AnyServiceKey::V6(ServiceKey6::new(vip6.octets(), 443, proto::TCP)),
            value: ServiceValue::new(4, 251, 251, service_flags::SOURCE_RANGES, 0),
            backend_ids: vec![2],
            traffic: TrafficCounter::default(),
            counted: true,
        });
        let pod: std::net::Ipv6Addr = "fd00:42::5".parse().unwrap();
        let node: std::net::Ipv6Addr = "fd00:50::12".parse().unwrap();
        s.backends.push(BackendRow {
            id: 2,
            value: BackendSlot::V6(BackendValue6::new(
                pod.octets(),
                node.octets(),
                8443,
                backend_flags::VALID,
            )),
            traffic: TrafficCounter::default(),
            counted: true,
        });
        s.arp.push((IpAddr::V6(vip6), ArpStats::new(3, 2)));
        let text = render("eth0", &s);
        for needle in [
            "fd00:60::1       service,announced  ndp requests 3 replies 2",
            "fd00:60::2       service,(owned by another node: ARP/NDP dropped)  ndp n/c",
            "[fd00:60::1]:443/TCP",
            "[fd00:42::5]:8443",
            "fd00:50::12",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
        }
        let v = render_json("eth0", &s);
        assert_eq!(v["vips"][3]["ip"], "fd00:60::1");
        assert_eq!(v["services"][1]["frontend"], "[fd00:60::1]:443/TCP");
        assert_eq!(v["services"][1]["vip"], "fd00:60::1");
        assert_eq!(v["backends"][1]["ip"], "fd00:42::5");
        assert_eq!(v["backends"][1]["node"], "fd00:50::12");
        assert_eq!(
            v["arp"]["addresses"],
            json!([{ "ip": "192.168.50.100", "requests": 7, "replies": 6 }]),
            "ARP lists IPv4 addresses only"
        );
        assert_eq!(
            v["ndp"],
            json!({ "uncounted": 1,
                    "addresses": [{ "ip": "fd00:60::1", "requests": 3, "replies": 2 }] })
        );
        assert_eq!(v["arp"]["uncounted"], 1);
    }

    #[test]
    fn unconfigured_dataplane_says_so() {
        let mut s = sample();
        s.config.ready = 0;
        assert!(render("eth0", &s).contains("NOT CONFIGURED"));
    }
}
