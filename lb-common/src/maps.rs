//! Map names (also their file names under the pin directory) and sizes.
//!
//! The eBPF crate declares each map with exactly these names and sizes; the
//! agent pins every name in [`ALL`] under `<bpffs root>/<ifname>/` and may
//! override the sizes marked "load-time" before the maps are created.

/// VIP / node address → [`crate::VipValue`] (hash). The first and, for
/// non-VIP traffic, the only lookup on the ingress path.
pub const VIPS: &str = "vips";
/// [`crate::ServiceKey`] → [`crate::ServiceValue`] (hash).
pub const SERVICES: &str = "services";
/// Slot → backend id (`u32`, array). Holds every service's Maglev table,
/// each at `[maglev_offset, maglev_offset + maglev_len)`. A new table is
/// written to free slots and the service entry is switched to it in one
/// update, so a packet never sees a half-written table.
pub const MAGLEV: &str = "maglev";
/// Backend id → [`crate::BackendValue`] (array).
pub const BACKENDS: &str = "backends";
/// Client 5-tuple → [`crate::ConntrackValue`] (LRU hash).
pub const CONNTRACK: &str = "conntrack";
/// Reply 5-tuple → [`crate::RevNatValue`] (LRU hash).
pub const REV_NAT: &str = "rev_nat";
/// [`crate::AffinityKey`] → [`crate::AffinityValue`] (LRU hash).
pub const AFFINITY: &str = "affinity";
/// LPM trie: `{32 + prefix, SourceRangeData}` → `u32` (1 = allowed).
pub const SRC_RANGES: &str = "src_ranges";
/// Service id → [`crate::TrafficCounter`] (per-CPU array).
pub const SERVICE_STATS: &str = "service_stats";
/// Backend id → [`crate::TrafficCounter`] (per-CPU array).
pub const BACKEND_STATS: &str = "backend_stats";
/// [`crate::Counter`] → packets (`u64`, per-CPU array).
pub const COUNTERS: &str = "counters";
/// [`crate::DropReason`] → packets (`u64`, per-CPU array).
pub const DROPS: &str = "drops";
/// Index 0 → [`crate::Config`] (array of one).
pub const CONFIG: &str = "config";

/// Every map the programs use, in a stable order (pinning, status, cleanup).
pub const ALL: [&str; 13] = [
    VIPS,
    SERVICES,
    MAGLEV,
    BACKENDS,
    CONNTRACK,
    REV_NAT,
    AFFINITY,
    SRC_RANGES,
    SERVICE_STATS,
    BACKEND_STATS,
    COUNTERS,
    DROPS,
    CONFIG,
];

/// Program names in the object and their pinned link files.
pub mod programs {
    /// XDP on the uplink: ARP, ICMP echo, service forwarding, reverse NAT of
    /// remote replies.
    pub const INGRESS: &str = "lb_ingress";
    /// TC egress on the uplink: reverse NAT of replies from local pods.
    pub const EGRESS: &str = "lb_egress";
    /// XDP program that only returns `XDP_PASS`: the benchmark floor, and
    /// the program namespace tests put on veth peers so `XDP_TX` delivers.
    pub const PASS: &str = "xdp_pass";
    /// Pinned link of [`INGRESS`] in the pin directory.
    pub const INGRESS_LINK: &str = "link_lb_ingress";
    /// Pinned link of [`EGRESS`] in the pin directory.
    pub const EGRESS_LINK: &str = "link_lb_egress";
}

pub const MAX_VIPS: u32 = 131_072;
pub const MAX_SERVICES: u32 = 131_072;
pub const MAX_BACKENDS: u32 = 262_144;
/// Default slots of the `maglev` array (load-time; 16 MiB of `u32`).
pub const MAGLEV_SLOTS: u32 = 1 << 22;
/// Default `conntrack` size (load-time).
pub const CONNTRACK_MAX: u32 = 262_144;
/// Default `rev_nat` size (load-time).
pub const REV_NAT_MAX: u32 = 262_144;
/// Default `affinity` size (load-time).
pub const AFFINITY_MAX: u32 = 65_536;
/// Source ranges over all services.
pub const SRC_RANGES_MAX: u32 = 65_536;

/// Maglev table sizes: primes, each used for up to `size / 100` backends so
/// that every backend gets its share of slots within 1%.
pub const MAGLEV_TABLE_SIZES: [u32; 10] =
    [101, 251, 509, 1021, 2039, 4093, 8191, 16381, 32749, 65521];

/// Benchmark-only maps of the `lb_ingress_bench` / `bench_restore_only`
/// programs. Not part of [`ALL`]: the agent never pins or reads them.
pub mod bench {
    /// Per-CPU array of one 128-byte buffer: the frame's first bytes, saved
    /// before the ingress logic runs and restored after it.
    pub const SCRATCH: &str = "bench_scratch";
    /// Array of one `u32`: [`NEW_FLOW`] bit and friends, set by the bench.
    pub const CONFIG: &str = "bench_config";
    /// Per-CPU array of one `u32`: the source-port sequence.
    pub const SEQ: &str = "bench_seq";
    /// Bytes saved and restored per iteration (at most).
    pub const SCRATCH_LEN: usize = 128;
    /// `bench_config` bit: give every iteration a new TCP/UDP source port,
    /// so each one is a new flow (conntrack miss, Maglev pick, NAT port).
    pub const NEW_FLOW: u32 = 1 << 0;

    /// `bench_xdpgen`: bench-e2e's XDP frame generator, run with
    /// `BPF_PROG_TEST_RUN` in live-frames mode. Every frame is rewritten from
    /// a template and redirected to the port (a veth) its target sits behind.
    pub const XDPGEN_PROGRAM: &str = "bench_xdpgen";
    /// Target index → frame template (array of [`XDPGEN_SLOT`]-byte values):
    /// the frame's [`XDPGEN_FRAME_LEN`] bytes, then the `u32` (native order)
    /// key of its port in [`XDPGEN_PORTS`].
    pub const XDPGEN_FRAMES: &str = "xdpgen_frames";
    /// Port key → interface (devmap), filled from the namespace that owns
    /// the interfaces.
    pub const XDPGEN_PORTS: &str = "xdpgen_ports";
    /// Generator state, `u64` slots (array): [`XDPGEN_NEXT`],
    /// [`XDPGEN_TARGETS`], [`XDPGEN_FLAGS`].
    pub const XDPGEN_STATE: &str = "xdpgen_state";
    /// State slot: number of the next frame (the program increments it;
    /// frame `k` goes to target `k % targets` and, with
    /// [`XDPGEN_NEW_FLOWS`], is flow `k`). One generator thread at a time.
    pub const XDPGEN_NEXT: u32 = 0;
    /// State slot: number of templates in use (1..=[`XDPGEN_MAX_TARGETS`]).
    pub const XDPGEN_TARGETS: u32 = 1;
    /// State slot: flag bits ([`XDPGEN_NEW_FLOWS`]).
    pub const XDPGEN_FLAGS: u32 = 2;
    /// Slots of [`XDPGEN_STATE`].
    pub const XDPGEN_STATE_LEN: u32 = 4;
    /// [`XDPGEN_FLAGS`] bit: frame `k` gets source port
    /// `XDPGEN_PORT_BASE + k % XDPGEN_PORTS_PER_IP` and source address
    /// `XDPGEN_SRC_BASE + (k / XDPGEN_PORTS_PER_IP) % XDPGEN_SRC_COUNT`.
    pub const XDPGEN_NEW_FLOWS: u64 = 1 << 0;
    /// Templates (targets) at most.
    pub const XDPGEN_MAX_TARGETS: u32 = 16;
    /// Port keys at most.
    pub const XDPGEN_MAX_PORTS: u32 = 16;
    /// Bytes of one frame (Ethernet/IPv4/UDP, the Ethernet minimum).
    pub const XDPGEN_FRAME_LEN: usize = 60;
    /// Bytes of one template slot.
    pub const XDPGEN_SLOT: usize = 64;
    /// First source port of the new-flow sequence.
    pub const XDPGEN_PORT_BASE: u64 = 1024;
    /// Source ports per source address.
    pub const XDPGEN_PORTS_PER_IP: u64 = 60_000;
    /// First source address of the new-flow sequence: 198.18.0.0/15, RFC
    /// 2544's benchmarking range.
    pub const XDPGEN_SRC_BASE: [u8; 4] = [198, 18, 0, 0];
    /// Source addresses of the new-flow sequence.
    pub const XDPGEN_SRC_COUNT: u64 = 131_072;
}
