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
