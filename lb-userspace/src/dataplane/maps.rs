//! Typed handles on the pinned maps of one interface. The agent, `onehop
//! status` and the tests all reach the data path through this one type, so
//! the map types of lb-common are named in exactly one place in userspace.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail, ensure};
use aya::{
    Ebpf,
    maps::{Array, HashMap, LpmTrie, Map, MapData, PerCpuArray},
};
use lb_common::{
    AffinityKey, AffinityValue, AnnounceState, ArpStats, BackendValue, BackendValue6,
    DatapathConfig, FlowKey, Ipv4Key, Ipv6Key, LocalEndpointKey, LocalFronts, RevNatValue,
    ServiceKey, ServiceKey6, ServiceValue, SourceRangeData, SourceRangeData6, TrafficCounter,
    VipValue, flow::table::FlowSet, maps,
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
    pub conntrack: Array<MapData, FlowSet>,
    pub rev_nat: HashMap<MapData, FlowKey, RevNatValue>,
    pub local_fronts: HashMap<MapData, LocalEndpointKey, LocalFronts>,
    pub affinity: HashMap<MapData, AffinityKey, AffinityValue>,
    pub src_ranges: LpmTrie<MapData, SourceRangeData, u32>,
    pub service_stats: PerCpuArray<MapData, TrafficCounter>,
    pub backend_stats: PerCpuArray<MapData, TrafficCounter>,
    pub counters: PerCpuArray<MapData, u64>,
    pub drops: PerCpuArray<MapData, u64>,
    pub config: Array<MapData, DatapathConfig>,
    pub announce: Array<MapData, AnnounceState>,
    pub arp_stats: HashMap<MapData, Ipv4Key, ArpStats>,
    pub vips6: HashMap<MapData, Ipv6Key, VipValue>,
    pub services6: HashMap<MapData, ServiceKey6, ServiceValue>,
    pub backends6: Array<MapData, BackendValue6>,
    pub src_ranges6: LpmTrie<MapData, SourceRangeData6, u32>,
    pub ndp_stats: HashMap<MapData, Ipv6Key, ArpStats>,
}

fn typed<T>(map: Map, name: &str) -> Result<T>
where
    T: TryFrom<Map, Error = aya::maps::MapError>,
{
    T::try_from(map).with_context(|| format!("map {name} has an unexpected type or layout"))
}

fn open<T>(dir: &PinDir, name: &str) -> Result<T>
where
    T: TryFrom<Map, Error = aya::maps::MapError>,
{
    open_pinned(&dir.entry(name), name)
}

/// The map pinned at `path` (`name` for errors), checking its type and
/// key/value sizes.
pub(crate) fn open_pinned<T>(path: &Path, name: &str) -> Result<T>
where
    T: TryFrom<Map, Error = aya::maps::MapError>,
{
    let data = MapData::from_pin(path)
        .with_context(|| format!("opening pinned map {}", path.display()))?;
    let map = Map::from_map_data(data).with_context(|| format!("map {name}"))?;
    typed(map, name)
}

fn take<T>(ebpf: &mut Ebpf, name: &str) -> Result<T>
where
    T: TryFrom<Map, Error = aya::maps::MapError>,
{
    let map = ebpf
        .take_map(name)
        .with_context(|| format!("no map {name} in the loaded object"))?;
    typed(map, name)
}

/// Builds [`Maps`] with `$get(name)` for every map.
macro_rules! all_maps {
    ($get:expr) => {
        Maps {
            vips: $get(maps::VIPS)?,
            services: $get(maps::SERVICES)?,
            maglev: $get(maps::MAGLEV)?,
            backends: $get(maps::BACKENDS)?,
            conntrack: $get(maps::CONNTRACK)?,
            rev_nat: $get(maps::REV_NAT)?,
            local_fronts: $get(maps::LOCAL_FRONTS)?,
            affinity: $get(maps::AFFINITY)?,
            src_ranges: $get(maps::SRC_RANGES)?,
            service_stats: $get(maps::SERVICE_STATS)?,
            backend_stats: $get(maps::BACKEND_STATS)?,
            counters: $get(maps::COUNTERS)?,
            drops: $get(maps::DROPS)?,
            config: $get(maps::CONFIG)?,
            announce: $get(maps::ANNOUNCE)?,
            arp_stats: $get(maps::ARP_STATS)?,
            vips6: $get(maps::VIPS6)?,
            services6: $get(maps::SERVICES6)?,
            backends6: $get(maps::BACKENDS6)?,
            src_ranges6: $get(maps::SRC_RANGES6)?,
            ndp_stats: $get(maps::NDP_STATS)?,
        }
    };
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
        Ok(all_maps!(|name| open(dir, name)))
    }

    /// Takes every map out of an object loaded without pinning (the packet
    /// tests and `bench xdp`, which run the programs with
    /// `BPF_PROG_TEST_RUN`), checking types and key/value sizes.
    pub fn take(ebpf: &mut Ebpf) -> Result<Self> {
        Ok(all_maps!(|name| take(ebpf, name)))
    }

    /// The configuration element (all zero before the agent's first write).
    pub fn config(&self) -> Result<DatapathConfig> {
        self.config.get(&0, 0).context("reading config[0]")
    }

    /// Writes the configuration element. Its `flow_sets` must be the flow
    /// table's size (the data path cannot read a map's size, and with
    /// another modulus it would look for every flow in the wrong sets).
    pub fn put_config(&mut self, config: DatapathConfig) -> Result<()> {
        let sets = self.flow_sets();
        ensure!(
            config.flow_sets == sets,
            "a configuration for a flow table of {} sets, but conntrack has {sets}",
            config.flow_sets
        );
        self.config.set(0, config, 0).context("writing config[0]")
    }

    /// The agent's heartbeat (all zero before an agent wrote one).
    pub fn announce_state(&self) -> Result<AnnounceState> {
        self.announce.get(&0, 0).context("reading announce[0]")
    }

    /// Renews the heartbeat: ARP for announced VIPs is answered until `hold`
    /// after now.
    pub fn heartbeat(&mut self, hold: std::time::Duration) -> Result<()> {
        let hold_ns = u64::try_from(hold.as_nanos()).unwrap_or(u64::MAX);
        let state = AnnounceState::new(monotonic_ns()?, hold_ns);
        self.announce
            .set(0, state, 0)
            .context("writing the heartbeat (announce[0])")
    }
}

/// Now on the clock of `bpf_ktime_get_ns()` (`CLOCK_MONOTONIC`).
pub fn monotonic_ns() -> Result<u64> {
    // SAFETY: timespec is plain data; zero is a valid value.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: `ts` is a valid out-pointer for clock_gettime.
    if unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut ts) } != 0 {
        return Err(std::io::Error::last_os_error()).context("clock_gettime(CLOCK_MONOTONIC)");
    }
    let secs = u64::try_from(ts.tv_sec).context("CLOCK_MONOTONIC seconds")?;
    let nanos = u64::try_from(ts.tv_nsec).context("CLOCK_MONOTONIC nanoseconds")?;
    Ok(secs * 1_000_000_000 + nanos)
}

/// Sums a per-CPU counter over all CPUs.
pub fn sum_u64(map: &PerCpuArray<MapData, u64>, index: u32) -> Result<u64> {
    let values = map
        .get(&index, 0)
        .with_context(|| format!("reading counter {index}"))?;
    Ok(values.iter().copied().fold(0u64, u64::wrapping_add))
}

/// Sums a per-CPU traffic counter over all CPUs; `None` for an index beyond the array
/// (the counters are sized by CPU count and may cover only the lowest ids).
pub fn sum_traffic(
    map: &PerCpuArray<MapData, TrafficCounter>,
    index: u32,
) -> Result<Option<TrafficCounter>> {
    if index >= map.len() {
        return Ok(None);
    }
    let values = map
        .get(&index, 0)
        .with_context(|| format!("reading traffic counter {index}"))?;
    Ok(Some(values.iter().fold(
        TrafficCounter::default(),
        |a, v| TrafficCounter {
            packets: a.packets.wrapping_add(v.packets),
            bytes: a.bytes.wrapping_add(v.bytes),
        },
    )))
}
