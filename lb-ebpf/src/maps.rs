//! Every map of the data path, declared once with the names and sizes from
//! `lb_common::maps`. BTF map definitions, so `bpftool map dump` prints the
//! key and value field names.

use aya_ebpf::{
    btf_maps::{Array, DevMap, HashMap, LpmTrie, LruHashMap, PerCpuArray},
    macros::btf_map,
};
use lb_common::{
    AffinityKey, AffinityValue, BackendValue, Config, ConntrackValue, FlowKey, Ipv4Key,
    RevNatValue, ServiceKey, ServiceValue, SourceRangeData, TrafficCounter, VipValue,
    counters::{COUNTER_COUNT, DROP_REASON_COUNT},
    maps as m,
};

const fn n(v: u32) -> usize {
    v as usize
}

#[btf_map(name = "vips")]
pub static VIPS: HashMap<Ipv4Key, VipValue, { n(m::MAX_VIPS) }> = HashMap::new();

#[btf_map(name = "services")]
pub static SERVICES: HashMap<ServiceKey, ServiceValue, { n(m::MAX_SERVICES) }> = HashMap::new();

#[btf_map(name = "maglev")]
pub static MAGLEV: Array<u32, { n(m::MAGLEV_SLOTS) }> = Array::new();

#[btf_map(name = "backends")]
pub static BACKENDS: Array<BackendValue, { n(m::MAX_BACKENDS) }> = Array::new();

#[btf_map(name = "conntrack")]
pub static CONNTRACK: LruHashMap<FlowKey, ConntrackValue, { n(m::CONNTRACK_MAX) }> =
    LruHashMap::new();

#[btf_map(name = "rev_nat")]
pub static REV_NAT: LruHashMap<FlowKey, RevNatValue, { n(m::REV_NAT_MAX) }> = LruHashMap::new();

#[btf_map(name = "affinity")]
pub static AFFINITY: LruHashMap<AffinityKey, AffinityValue, { n(m::AFFINITY_MAX) }> =
    LruHashMap::new();

#[btf_map(name = "src_ranges")]
pub static SRC_RANGES: LpmTrie<SourceRangeData, u32, { n(m::SRC_RANGES_MAX) }> = LpmTrie::new();

#[btf_map(name = "service_stats")]
pub static SERVICE_STATS: PerCpuArray<TrafficCounter, { n(m::MAX_SERVICES) }> = PerCpuArray::new();

#[btf_map(name = "backend_stats")]
pub static BACKEND_STATS: PerCpuArray<TrafficCounter, { n(m::MAX_BACKENDS) }> = PerCpuArray::new();

#[btf_map(name = "counters")]
pub static COUNTERS: PerCpuArray<u64, { n(COUNTER_COUNT) }> = PerCpuArray::new();

#[btf_map(name = "drops")]
pub static DROPS: PerCpuArray<u64, { n(DROP_REASON_COUNT) }> = PerCpuArray::new();

#[btf_map(name = "config")]
pub static CONFIG: Array<Config, 1> = Array::new();

// Benchmark-only maps (lb_common::maps::bench); not pinned by the agent.

#[btf_map(name = "bench_scratch")]
pub static BENCH_SCRATCH: PerCpuArray<[u8; m::bench::SCRATCH_LEN], 1> = PerCpuArray::new();

#[btf_map(name = "bench_config")]
pub static BENCH_CONFIG: Array<u32, 1> = Array::new();

#[btf_map(name = "bench_seq")]
pub static BENCH_SEQ: PerCpuArray<u32, 1> = PerCpuArray::new();

// bench-e2e's XDP frame generator (lb_common::maps::bench::XDPGEN_*); not
// pinned by the agent.

#[btf_map(name = "xdpgen_frames")]
pub static XDPGEN_FRAMES: Array<[u8; m::bench::XDPGEN_SLOT], { n(m::bench::XDPGEN_MAX_TARGETS) }> =
    Array::new();

#[btf_map(name = "xdpgen_ports")]
pub static XDPGEN_PORTS: DevMap<{ n(m::bench::XDPGEN_MAX_PORTS) }> = DevMap::new();

#[btf_map(name = "xdpgen_state")]
pub static XDPGEN_STATE: Array<u64, { n(m::bench::XDPGEN_STATE_LEN) }> = Array::new();
