//! `onehop status`: what the data path is doing, read from the pinned maps
//! only — it works the same with or without a running agent.

use std::{collections::BTreeSet, fmt::Write as _, net::Ipv4Addr};

use anyhow::Result;
use lb_common::{
    BackendValue, Config, Counter, DropReason, ServiceKey, ServiceValue, TrafficCounter,
    backend_flags, service_flags, vip_flags,
};

use crate::{
    dataplane::maps::{Maps, sum_traffic, sum_u64},
    dataplane::reader,
    net::netdev::fmt_mac,
    plan::{model::Frontend, state::DataplaneState},
};

/// Everything `status` prints, read in one pass.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub config: Config,
    pub vips: Vec<([u8; 4], u32)>,
    pub services: Vec<ServiceRow>,
    pub backends: Vec<BackendRow>,
    pub counters: Vec<(Counter, u64)>,
    pub drops: Vec<(DropReason, u64)>,
    pub conntrack_entries: usize,
    pub rev_nat_entries: usize,
    pub affinity_entries: usize,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceRow {
    pub key: ServiceKey,
    pub value: ServiceValue,
    /// Distinct backend ids in the service's Maglev table.
    pub backend_ids: Vec<u32>,
    pub traffic: TrafficCounter,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendRow {
    pub id: u32,
    pub value: BackendValue,
    pub traffic: TrafficCounter,
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
        let config = maps.config()?;
        let vips = state.vips.iter().map(|(ip, flags)| (*ip, *flags)).collect();
        let mut services = Vec::new();
        for (key, value) in &state.services {
            let ids: BTreeSet<u32> = if value.maglev_len == 0 {
                BTreeSet::new()
            } else {
                state
                    .maglev
                    .get(&value.maglev_offset)
                    .into_iter()
                    .flatten()
                    .copied()
                    .collect()
            };
            services.push(ServiceRow {
                key: *key,
                value: *value,
                backend_ids: ids.into_iter().collect(),
                traffic: sum_traffic(&maps.service_stats, value.id)?,
            });
        }
        let mut backends = Vec::new();
        for id in services
            .iter()
            .flat_map(|s| s.backend_ids.iter().copied())
            .collect::<BTreeSet<_>>()
        {
            backends.push(BackendRow {
                id,
                value: state.backends.get(&id).copied().unwrap_or_default(),
                traffic: sum_traffic(&maps.backend_stats, id)?,
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
        Ok(Self {
            config,
            vips,
            services,
            backends,
            counters,
            drops,
            conntrack_entries: maps.conntrack.keys().count(),
            rev_nat_entries: maps.rev_nat.keys().count(),
            affinity_entries: maps.affinity.keys().count(),
        })
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
}

/// `VIP:port/PROTO`, the name of a service frontend in output and metrics.
pub fn frontend(key: ServiceKey) -> String {
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
        names.push("(owned by another node: ARP dropped)");
    }
    names.join(",")
}

/// Renders a snapshot as the text `onehop status` prints.
pub fn render(ifname: &str, s: &Snapshot) -> String {
    let mut o = String::new();
    let c = &s.config;
    let _ = writeln!(
        o,
        "interface {ifname} (ifindex {}): node {} mac {} nat ports {}-{}{}",
        c.ifindex,
        Ipv4Addr::from(c.node_ip),
        fmt_mac(c.mac),
        c.nat_port_min,
        c.nat_port_max,
        if c.ready == 0 {
            "  [NOT CONFIGURED: passing all traffic]"
        } else {
            ""
        },
    );
    let _ = writeln!(o, "\nVIPS ({})", s.vips.len());
    for (ip, flags) in &s.vips {
        let _ = writeln!(
            o,
            "  {:<16} {}",
            Ipv4Addr::from(*ip).to_string(),
            vip_flag_names(*flags)
        );
    }
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
            row.traffic.packets,
            row.traffic.bytes,
        );
    }
    let _ = writeln!(o, "\nBACKENDS ({})", s.backends.len());
    let _ = writeln!(
        o,
        "  {:>6} {:<22} {:<16} {:<7} {:>12} {:>14}",
        "ID", "POD", "NODE", "WHERE", "PACKETS", "BYTES"
    );
    for b in &s.backends {
        let pod = format!("{}:{}", Ipv4Addr::from(b.value.ip), b.value.port);
        let place = if b.value.flags & backend_flags::VALID == 0 {
            "EMPTY"
        } else if b.value.flags & backend_flags::LOCAL != 0 {
            "local"
        } else {
            "remote"
        };
        let _ = writeln!(
            o,
            "  {:>6} {pod:<22} {:<16} {place:<7} {:>12} {:>14}",
            b.id,
            Ipv4Addr::from(b.value.node_ip).to_string(),
            b.traffic.packets,
            b.traffic.bytes,
        );
    }
    let _ = writeln!(
        o,
        "\nFLOWS  conntrack {}  rev_nat {}  affinity {}",
        s.conntrack_entries, s.rev_nat_entries, s.affinity_entries
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

#[cfg(test)]
mod tests {
    use super::*;
    use lb_common::proto;

    fn sample() -> Snapshot {
        Snapshot {
            config: Config {
                node_ip: [192, 168, 50, 11],
                ifindex: 4,
                mac: [2, 0, 0, 0, 0, 0x11],
                nat_port_min: 61000,
                nat_port_max: 65535,
                ready: 1,
                ..Config::default()
            },
            vips: vec![
                ([192, 168, 50, 11], vip_flags::NODE),
                (
                    [192, 168, 50, 100],
                    vip_flags::SERVICE | vip_flags::ANNOUNCE,
                ),
                ([192, 168, 50, 101], vip_flags::SERVICE),
            ],
            services: vec![ServiceRow {
                key: ServiceKey::new([192, 168, 50, 100], 80, proto::TCP),
                value: ServiceValue::new(3, 0, 251, service_flags::AFFINITY, 60),
                backend_ids: vec![0, 1],
                traffic: TrafficCounter {
                    packets: 10,
                    bytes: 1000,
                },
            }],
            backends: vec![BackendRow {
                id: 1,
                value: BackendValue::new(
                    [10, 42, 1, 2],
                    [192, 168, 50, 12],
                    8080,
                    backend_flags::VALID,
                ),
                traffic: TrafficCounter {
                    packets: 4,
                    bytes: 400,
                },
            }],
            counters: vec![(Counter::IngressPackets, 12), (Counter::ArpReply, 0)],
            drops: vec![(DropReason::NoService, 2)],
            conntrack_entries: 5,
            rev_nat_entries: 5,
            affinity_entries: 1,
        }
    }

    #[test]
    fn renders_every_section() {
        let text = render("eth0", &sample());
        for needle in [
            "node 192.168.50.11 mac 02:00:00:00:00:11 nat ports 61000-65535",
            "192.168.50.100   service,announced",
            "192.168.50.101   service,(owned by another node: ARP dropped)",
            "192.168.50.100:80/TCP",
            "affinity=60s",
            "10.42.1.2:8080",
            "remote",
            "conntrack 5  rev_nat 5  affinity 1",
            "ingress_packets",
            "no_service",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
        }
        assert!(
            !text.contains("arp_reply"),
            "zero counters are hidden:\n{text}"
        );
        assert!(!text.contains("NOT CONFIGURED"));
    }

    #[test]
    fn unconfigured_dataplane_says_so() {
        let mut s = sample();
        s.config.ready = 0;
        assert!(render("eth0", &s).contains("NOT CONFIGURED"));
    }
}
