//! Typed handles on the pinned maps of one interface. The agent, `onehop
//! status` and the tests all reach the data path through this one type, so
//! the map types of lb-common are named in exactly one place in userspace.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};
use aya::maps::{Array, HashMap, LpmTrie, Map, MapData, PerCpuArray};
use lb_common::{
    AffinityKey, AffinityValue, BackendValue, Config, ConntrackValue, FlowKey, Ipv4Key,
    RevNatValue, ServiceKey, ServiceValue, SourceRangeData, TrafficCounter, VipValue, maps,
};

/// Where one interface's maps and links are pinned: `<root>/<ifname>/`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PinDir(PathBuf);

impl PinDir {
    pub fn new(root: &Path, ifname: &str) -> Self {
        Self(root.join(ifname))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn entry(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    pub fn exists(&self) -> bool {
        self.entry(maps::CONFIG).exists()
    }
}

pub struct Maps {
    pub vips: HashMap<MapData, Ipv4Key, VipValue>,
    pub services: HashMap<MapData, ServiceKey, ServiceValue>,
    pub maglev: Array<MapData, u32>,
    pub backends: Array<MapData, BackendValue>,
    pub conntrack: HashMap<MapData, FlowKey, ConntrackValue>,
    pub rev_nat: HashMap<MapData, FlowKey, RevNatValue>,
    pub affinity: HashMap<MapData, AffinityKey, AffinityValue>,
    pub src_ranges: LpmTrie<MapData, SourceRangeData, u32>,
    pub service_stats: PerCpuArray<MapData, TrafficCounter>,
    pub backend_stats: PerCpuArray<MapData, TrafficCounter>,
    pub counters: PerCpuArray<MapData, u64>,
    pub drops: PerCpuArray<MapData, u64>,
    pub config: Array<MapData, Config>,
}

fn open<T>(dir: &PinDir, name: &str) -> Result<T>
where
    T: TryFrom<Map, Error = aya::maps::MapError>,
{
    let path = dir.entry(name);
    let data = MapData::from_pin(&path)
        .with_context(|| format!("opening pinned map {}", path.display()))?;
    let map = Map::from_map_data(data).with_context(|| format!("map {name}"))?;
    T::try_from(map).with_context(|| format!("map {name} has an unexpected type or layout"))
}

impl Maps {
    /// Opens every pinned map of `dir`, checking types and key/value sizes.
    pub fn open(dir: &PinDir) -> Result<Self> {
        if !dir.exists() {
            bail!(
                "no onehop maps pinned at {} (is the agent running on this interface?)",
                dir.path().display()
            );
        }
        Ok(Self {
            vips: open(dir, maps::VIPS)?,
            services: open(dir, maps::SERVICES)?,
            maglev: open(dir, maps::MAGLEV)?,
            backends: open(dir, maps::BACKENDS)?,
            conntrack: open(dir, maps::CONNTRACK)?,
            rev_nat: open(dir, maps::REV_NAT)?,
            affinity: open(dir, maps::AFFINITY)?,
            src_ranges: open(dir, maps::SRC_RANGES)?,
            service_stats: open(dir, maps::SERVICE_STATS)?,
            backend_stats: open(dir, maps::BACKEND_STATS)?,
            counters: open(dir, maps::COUNTERS)?,
            drops: open(dir, maps::DROPS)?,
            config: open(dir, maps::CONFIG)?,
        })
    }

    /// The configuration element (all zero before the agent's first write).
    pub fn config(&self) -> Result<Config> {
        self.config.get(&0, 0).context("reading config[0]")
    }
}

/// Sums a per-CPU counter over all CPUs.
pub fn sum_u64(map: &PerCpuArray<MapData, u64>, index: u32) -> Result<u64> {
    let values = map
        .get(&index, 0)
        .with_context(|| format!("reading counter {index}"))?;
    Ok(values.iter().copied().fold(0u64, u64::wrapping_add))
}

/// Sums a per-CPU traffic counter over all CPUs.
pub fn sum_traffic(
    map: &PerCpuArray<MapData, TrafficCounter>,
    index: u32,
) -> Result<TrafficCounter> {
    let values = map
        .get(&index, 0)
        .with_context(|| format!("reading traffic counter {index}"))?;
    Ok(values
        .iter()
        .fold(TrafficCounter::default(), |a, v| TrafficCounter {
            packets: a.packets.wrapping_add(v.packets),
            bytes: a.bytes.wrapping_add(v.bytes),
        }))
}
