//! The product's maps: the one table of their names (also their file names
//! under the pin directory), kinds, key and value types and sizes.
//!
//! [`product_maps!`](crate::product_maps) is that table. The eBPF crate
//! expands it into its map declarations, this module into [`TABLE`] and a
//! name constant per map; the agent pins every map of the table under
//! `<bpffs root>/<ifname>/` and may override the sizes of the rows marked
//! `load_time` before the maps are created. A test parses the built object
//! and compares it with [`TABLE`], so the object cannot drift from it.

/// The kernel's `BPF_MAP_TYPE_*` number of each kind of map the programs use.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapKind {
    Hash = 1,
    Array = 2,
    PerCpuHash = 5,
    PerCpuArray = 6,
    LruHash = 9,
    ProgArray = 3,
    LpmTrie = 11,
    DevMap = 14,
}

/// `BPF_F_NO_PREALLOC` (linux/bpf.h): entries allocated as they are inserted.
pub const BPF_F_NO_PREALLOC: u32 = 1;
/// `BPF_F_MMAPABLE` (linux/bpf.h, 5.5): an array user space may `mmap`.
pub const BPF_F_MMAPABLE: u32 = 1 << 10;

/// One row of a map table, as the kernel sees the map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapSpec {
    pub name: &'static str,
    pub kind: MapKind,
    /// Bytes of a key (arrays: the `u32` index; LPM tries: the `u32`
    /// prefix length, then the data).
    pub key_size: u32,
    pub value_size: u32,
    /// Entries the object declares.
    pub max_entries: u32,
    /// `map_flags` the object declares.
    pub flags: u32,
    /// The loader may choose another size when it creates the map.
    pub load_time: bool,
}

impl MapSpec {
    /// The row of `name` in `table`.
    pub fn find(table: &[Self], name: &str) -> Option<Self> {
        table.iter().copied().find(|s| s.name == name)
    }
}

/// `size_of` as the kernel's `u32` sizes.
#[doc(hidden)]
pub const fn size_u32(bytes: usize) -> u32 {
    assert!(bytes <= u32::MAX as usize, "map key or value too large");
    #[expect(clippy::cast_possible_truncation, reason = "checked just above")]
    let n = bytes as u32;
    n
}

/// Expands a map table (the rows of [`product_maps!`](crate::product_maps)
/// or [`bench_maps!`](crate::bench_maps)) into a `pub const` per map name and
/// `TABLE: [MapSpec; N]`. The kinds are spelled as the eBPF crate's BTF map
/// types, which decide the key and value layout the kernel sees.
#[doc(hidden)]
#[macro_export]
macro_rules! map_specs {
    ($(
        $(#[$doc:meta])*
        $ident:ident = $name:literal: $kind:ident<$($ty:ty),*>[$max:expr] $($load:ident)?;
    )*) => {
        $($(#[$doc])* pub const $ident: &str = $name;)*

        /// Every map of this table, in a stable order.
        pub const TABLE: [$crate::maps::MapSpec; [$($name),*].len()] = [$(
            $crate::maps::MapSpec {
                name: $name,
                kind: $crate::map_specs!(@kind $kind),
                key_size: $crate::map_specs!(@key $kind<$($ty),*>),
                value_size: $crate::map_specs!(@value $kind<$($ty),*>),
                max_entries: $max,
                flags: $crate::map_specs!(@flags $kind),
                load_time: $crate::map_specs!(@load $($load)?),
            }
        ),*];
    };
    (@kind HashMap) => { $crate::maps::MapKind::Hash };
    (@kind LruHashMap) => { $crate::maps::MapKind::LruHash };
    (@kind Array) => { $crate::maps::MapKind::Array };
    (@kind MmapArray) => { $crate::maps::MapKind::Array };
    (@kind PerCpuArray) => { $crate::maps::MapKind::PerCpuArray };
    (@kind PerCpuHashNoPrealloc) => { $crate::maps::MapKind::PerCpuHash };
    (@kind HashNoPrealloc) => { $crate::maps::MapKind::Hash };
    (@kind LpmTrie) => { $crate::maps::MapKind::LpmTrie };
    (@kind DevMap) => { $crate::maps::MapKind::DevMap };
    (@kind ProgramArray) => { $crate::maps::MapKind::ProgArray };
    (@key LpmTrie<$k:ty, $v:ty>) => { 4 + $crate::maps::size_u32(core::mem::size_of::<$k>()) };
    (@key $kind:ident<$k:ty, $v:ty>) => { $crate::maps::size_u32(core::mem::size_of::<$k>()) };
    (@key $kind:ident<$($v:ty)?>) => { 4 };
    // `struct bpf_devmap_val`: the target's ifindex, then a program fd.
    (@value DevMap<>) => { 8 };
    // A program's file descriptor as user space writes it.
    (@value ProgramArray<>) => { 4 };
    (@value $kind:ident<$k:ty, $v:ty>) => { $crate::maps::size_u32(core::mem::size_of::<$v>()) };
    (@value $kind:ident<$v:ty>) => { $crate::maps::size_u32(core::mem::size_of::<$v>()) };
    (@flags MmapArray) => { $crate::maps::BPF_F_MMAPABLE };
    (@flags PerCpuHashNoPrealloc) => { $crate::maps::BPF_F_NO_PREALLOC };
    (@flags HashNoPrealloc) => { $crate::maps::BPF_F_NO_PREALLOC };
    (@flags LpmTrie) => { $crate::maps::BPF_F_NO_PREALLOC };
    (@flags $kind:ident) => { 0 };
    (@load load_time) => { true };
    (@load) => { false };
}

/// The product's map table: every map of the object the agent loads. Calls
/// `$then!` with the rows `NAME = "name": Kind<Key, Value>[max_entries]`,
/// optionally followed by `load_time`; `Kind` is the eBPF crate's BTF map
/// type (`aya_ebpf::btf_maps`).
#[macro_export]
macro_rules! product_maps {
    ($then:path) => {
        $then! {
            /// VIP / node address → [`crate::VipValue`] (hash). The first and,
            /// for non-VIP traffic, the only lookup on the ingress path.
            VIPS = "vips": HashMap<$crate::Ipv4Key, $crate::VipValue>[$crate::maps::MAX_VIPS];
            /// [`crate::ServiceKey`] → [`crate::ServiceValue`] (hash).
            SERVICES = "services":
                HashMap<$crate::ServiceKey, $crate::ServiceValue>[$crate::maps::MAX_SERVICES];
            /// Slot → backend id (`u32`, array). Holds every service's Maglev
            /// table, each at `[maglev_offset, maglev_offset + maglev_len)`. A
            /// new table is written to free slots and the service entry is
            /// switched to it in one update, so a packet never sees a
            /// half-written table. Memory-mappable: the agent writes a table
            /// as one copy instead of the kernel checking it slot by slot.
            MAGLEV = "maglev": MmapArray<u32>[$crate::maps::MAGLEV_SLOTS] load_time;
            /// Backend id → [`crate::BackendValue`] (array).
            BACKENDS = "backends": Array<$crate::BackendValue>[$crate::maps::MAX_BACKENDS];
            /// Set index → [`crate::flow::table::FlowSet`] (array): the flow
            /// table, client 5-tuple → [`crate::ConntrackValue`] in slots
            /// claimed by compare-and-swap (see [`crate::flow::table`]).
            /// Load-time: `max_entries` is its number of sets, which the
            /// data path reads from the config (`flow_sets`).
            CONNTRACK = "conntrack":
                Array<$crate::flow::table::FlowSet>[$crate::maps::CONNTRACK_SETS]
                load_time;
            /// Reply 5-tuple → [`crate::RevNatValue`] (LRU hash).
            REV_NAT = "rev_nat":
                LruHashMap<$crate::FlowKey, $crate::RevNatValue>[$crate::maps::REV_NAT_MAX]
                load_time;
            /// [`crate::AffinityKey`] → [`crate::AffinityValue`] (LRU hash).
            AFFINITY = "affinity":
                LruHashMap<$crate::AffinityKey, $crate::AffinityValue>[$crate::maps::AFFINITY_MAX]
                load_time;
            /// LPM trie: `{32 + prefix, SourceRangeData}` → `u32` (1 = allowed).
            SRC_RANGES = "src_ranges":
                LpmTrie<$crate::SourceRangeData, u32>[$crate::maps::SRC_RANGES_MAX];
            /// Service id → [`crate::TrafficCounter`] (per-CPU array). Load-time:
            /// the agent sizes it from the number of possible CPUs (one copy each).
            SERVICE_STATS = "service_stats":
                PerCpuArray<$crate::TrafficCounter>[$crate::maps::MAX_SERVICES] load_time;
            /// Backend id → [`crate::TrafficCounter`] (per-CPU array). Load-time,
            /// as `service_stats`.
            BACKEND_STATS = "backend_stats":
                PerCpuArray<$crate::TrafficCounter>[$crate::maps::MAX_BACKENDS] load_time;
            /// [`crate::Counter`] → packets (`u64`, per-CPU array).
            COUNTERS = "counters": PerCpuArray<u64>[$crate::counters::COUNTER_COUNT];
            /// [`crate::DropReason`] → packets (`u64`, per-CPU array).
            DROPS = "drops": PerCpuArray<u64>[$crate::counters::DROP_REASON_COUNT];
            /// Index 0 → [`crate::DatapathConfig`] (array of one).
            CONFIG = "config": Array<$crate::DatapathConfig>[1];
            /// Index 0 → [`crate::HalfOpenBudget`] (array of one): the
            /// new-flow guard's bucket, shared by every CPU.
            HALF_OPEN = "half_open": Array<$crate::HalfOpenBudget>[1];
            /// Index 0 → [`crate::FlowScratch`] (per-CPU array of one): where
            /// the data path builds a new flow's entries, because the BPF
            /// stack (512 bytes for the whole call chain) cannot hold them
            /// beside the packet path's own state. Holds nothing between
            /// packets.
            FLOW_SCRATCH = "flow_scratch": PerCpuArray<$crate::FlowScratch>[1];
            /// Index 0 → [`crate::AnnounceState`] (array of one): the agent's
            /// heartbeat, without which ARP goes unanswered.
            ANNOUNCE = "announce": Array<$crate::AnnounceState>[1];
            /// VIP → [`crate::ArpStats`] (hash, one value shared by every CPU,
            /// entries allocated as they are inserted). Sized for every VIP:
            /// ARP requests are rare next to packets, so the data path adds
            /// atomically into one copy instead of keeping one per CPU, which
            /// on a 128-CPU node would cost 2 KiB per address. The agent
            /// creates and removes the entries; the data path only counts.
            ARP_STATS = "arp_stats":
                HashNoPrealloc<$crate::Ipv4Key, $crate::ArpStats>[$crate::maps::MAX_ARP_STATS];
            /// Client (or router) address → [`crate::LearnedMac`] (LRU hash):
            /// learned from the ARP requests for owned VIPs that `lb_ingress`
            /// answers (the kernel never sees them, so it never learns these
            /// neighbours); used only when the kernel has no neighbour entry.
            LEARNED_MACS = "learned_macs":
                LruHashMap<$crate::HostKey, $crate::LearnedMac>[$crate::maps::MAX_LEARNED_MACS];
            /// Local endpoint → [`crate::LocalFronts`] (LRU hash): the
            /// service addresses flows reached it through, so that a local
            /// flow needs no reverse entry of its own. Written once per
            /// endpoint and front by the data path; an active endpoint is
            /// read by every reply, so the least recently used entries that
            /// go first are those of pods long gone.
            LOCAL_FRONTS = "local_fronts":
                LruHashMap<$crate::LocalEndpointKey, $crate::LocalFronts>[$crate::maps::MAX_LOCAL_ENDPOINTS];
            /// IPv6 VIP / node address → [`crate::VipValue`] (hash, entries
            /// allocated as they are inserted: an IPv4-only node pays
            /// nothing for it). As `vips`, for IPv6 destinations.
            VIPS6 = "vips6":
                HashNoPrealloc<$crate::Ipv6Key, $crate::VipValue>[$crate::maps::MAX_VIPS];
            /// [`crate::ServiceKey6`] → [`crate::ServiceValue`] (hash,
            /// allocated as inserted): the IPv6 frontends, whose ids, Maglev
            /// tables and backend ids share the IPv4 ones' spaces.
            SERVICES6 = "services6":
                HashNoPrealloc<$crate::ServiceKey6, $crate::ServiceValue>[$crate::maps::MAX_SERVICES];
            /// Backend id → [`crate::BackendValue6`] (array, as `backends`):
            /// IPv6 backends, by the ids of `backends`; a slot without
            /// [`crate::backend_flags::VALID`] holds none. An array, not a
            /// hash, though it costs every node its 10 MiB: every packet of
            /// an IPv6 flow reads it, and an index is cheaper than hashing
            /// the key and walking a bucket. An earlier version's hash is
            /// carried over into it when the agent starts (`dataplane::loader`).
            BACKENDS6 = "backends6":
                Array<$crate::BackendValue6>[$crate::maps::MAX_BACKENDS];
            /// LPM trie: `{32 + prefix, SourceRangeData6}` → `u32` (1 = allowed):
            /// `src_ranges` for IPv6 clients.
            SRC_RANGES6 = "src_ranges6":
                LpmTrie<$crate::SourceRangeData6, u32>[$crate::maps::SRC_RANGES_MAX];
            /// IPv6 VIP → [`crate::ArpStats`] (hash, allocated as inserted):
            /// `arp_stats` for Neighbor Solicitations (requests) and the
            /// Neighbor Advertisements that answered them (replies).
            NDP_STATS = "ndp_stats":
                HashNoPrealloc<$crate::Ipv6Key, $crate::ArpStats>[$crate::maps::MAX_ARP_STATS];
            /// [`crate::maps::xdp_slot`] → XDP program (program array):
            /// `lb_ingress` tail-calls `lb_ingress6` for ICMPv6, `lb_service6`
            /// for a packet to an IPv6 service and `lb_nat6` for one to a NAT
            /// port of the node's IPv6 address, so each has a stack frame
            /// (512 bytes) of its own. The agent fills it when it loads the
            /// programs; an empty slot passes ICMPv6 untouched
            /// (`pass_ipv6_unserved`) and drops service traffic
            /// (`ipv6_unserved`).
            XDP_PROGRAMS = "xdp_programs": ProgramArray<>[$crate::maps::xdp_slot::COUNT];
            /// [`crate::maps::tc_slot`] → TC program (program array): as
            /// `xdp_programs`, `lb_egress` → `lb_egress6`.
            TC_PROGRAMS = "tc_programs": ProgramArray<>[$crate::maps::tc_slot::COUNT];
        }
    };
}

crate::product_maps!(crate::map_specs);

/// Every map name of [`TABLE`], in its order (pinning, status, cleanup).
pub const ALL: [&str; TABLE.len()] = {
    let mut names = [""; TABLE.len()];
    let mut i = 0;
    while i < TABLE.len() {
        names[i] = TABLE[i].name;
        i += 1;
    }
    names
};

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
    /// XDP program never attached: the agent's flow sweeper runs it
    /// (`BPF_PROG_TEST_RUN`) on a [`crate::flow::SweepRequest`] to delete
    /// a dead reverse entry only if no new flow took it meanwhile.
    pub const SWEEP: &str = "flow_sweep";
    /// XDP program never attached: `lb_ingress` tail-calls it (slot
    /// [`super::xdp_slot::INGRESS6`] of `xdp_programs`) for IPv6 frames
    /// whose next header is ICMPv6 (Neighbor Discovery, echo, errors).
    pub const INGRESS6: &str = "lb_ingress6";
    /// XDP program never attached: `lb_ingress` tail-calls it (slot
    /// [`super::xdp_slot::SERVICE6`]) for a packet to an IPv6 service
    /// address, whose flow it takes.
    pub const SERVICE6: &str = "lb_service6";
    /// TC program never attached: `lb_egress` tail-calls it (slot
    /// [`super::tc_slot::EGRESS6`] of `tc_programs`) for IPv6 packets.
    pub const EGRESS6: &str = "lb_egress6";
    /// XDP program never attached: `lb_service6` tail-calls it (slot
    /// [`super::xdp_slot::NAT6`]) for a flow to a backend on another node
    /// reached by full NAT, and `lb_ingress` for a packet to one of the
    /// node's NAT ports (a reply of such a flow).
    pub const NAT6: &str = "lb_nat6";
    /// Every program of the product object.
    pub const ALL: [&str; 8] = [
        INGRESS, EGRESS, PASS, SWEEP, INGRESS6, SERVICE6, NAT6, EGRESS6,
    ];
    /// Pinned link of [`INGRESS`] in the pin directory.
    pub const INGRESS_LINK: &str = "link_lb_ingress";
    /// Pinned link of [`EGRESS`] in the pin directory.
    pub const EGRESS_LINK: &str = "link_lb_egress";
    /// On kernels without TCX (< 6.6) [`EGRESS`] is a netlink `cls_bpf` filter, which
    /// has no link to pin: the attached program is pinned here instead, recording how
    /// it is attached (bpffs holds no plain files).
    pub const EGRESS_TC_PROG: &str = "prog_lb_egress_tc";
}

/// Slots of `xdp_programs`.
pub mod xdp_slot {
    /// `lb_ingress6`.
    pub const INGRESS6: u32 = 0;
    /// `lb_service6`.
    pub const SERVICE6: u32 = 1;
    /// `lb_nat6`.
    pub const NAT6: u32 = 2;
    pub const COUNT: u32 = 3;
}

/// Slots of `tc_programs`.
pub mod tc_slot {
    /// `lb_egress6`.
    pub const EGRESS6: u32 = 0;
    pub const COUNT: u32 = 1;
}

pub const MAX_VIPS: u32 = 131_072;
pub const MAX_SERVICES: u32 = 131_072;
pub const MAX_BACKENDS: u32 = 262_144;
/// Addresses with ARP counters (`arp_stats`): every VIP the `vips` map can
/// hold, so every service address is counted. Not preallocated: the kernel
/// charges an entry (~72 bytes, whatever the CPU count) per address
/// configured, not for the whole table.
pub const MAX_ARP_STATS: u32 = MAX_VIPS;
/// Hosts whose ARP requests for our VIPs are remembered: clients on the
/// segment, and routers for the rest (least recently used go first).
pub const MAX_LEARNED_MACS: u32 = 16384;
/// Local endpoints (`pod:port`) whose fronts are remembered: far more than
/// one node runs at once (Kubernetes' default is 110 pods a node), so that
/// only endpoints of pods long gone are evicted.
pub const MAX_LOCAL_ENDPOINTS: u32 = 4096;
/// Default slots of the `maglev` array (load-time): room for
/// [`MAGLEV_DEFAULT_TABLES`] tables of [`MAGLEV_DEFAULT_TABLE_SIZE`] slots
/// (12,546,048 slots; 96 MiB of kernel memory, which keeps each 4-byte
/// value of an array in 8).
pub const MAGLEV_SLOTS: u32 = MAGLEV_DEFAULT_TABLES * MAGLEV_DEFAULT_TABLE_SIZE;
/// Tables (one per frontend: VIP, port, protocol) the default `maglev`
/// array holds at the default size: 10,000 frontends, plus a fifth for the
/// tables that are written next to the ones they replace during an update.
pub const MAGLEV_DEFAULT_TABLES: u32 = 12_288;
/// Default flows of `conntrack` (load-time).
pub const CONNTRACK_MAX: u32 = 262_144;
/// Sets of a default `conntrack` (its `max_entries`).
pub const CONNTRACK_SETS: u32 = crate::flow::table::sets_for(CONNTRACK_MAX);
/// Default `rev_nat` size (load-time).
pub const REV_NAT_MAX: u32 = 262_144;
/// Default `affinity` size (load-time).
pub const AFFINITY_MAX: u32 = 65_536;
/// Source ranges over all services.
pub const SRC_RANGES_MAX: u32 = 65_536;

/// The Maglev table sizes a service may have: primes (Maglev's permutations
/// need a prime), about doubling from one to the next.
pub const MAGLEV_TABLE_SIZES: [u32; 10] =
    [101, 251, 509, 1021, 2039, 4093, 8191, 16381, 32749, 65521];
/// Table size of a service that sets none: fixed, whatever its backend
/// count, so that a backend joining or leaving moves about `1/N` of the
/// hashes (a size that followed the count would remap nearly all of them
/// each time it changed).
pub const MAGLEV_DEFAULT_TABLE_SIZE: u32 = 1021;
/// Fewest slots a backend gets before the table grows past its configured
/// size: below it Maglev's shares (`floor` or `ceil` of `M / N` slots)
/// differ from the mean by more than 10%.
pub const MAGLEV_MIN_SLOTS_PER_BACKEND: u32 = 10;
/// Slots per backend from which every share is within 1% of the mean:
/// status and metrics count tables with fewer as uneven.
pub const MAGLEV_EVEN_SLOTS_PER_BACKEND: u32 = 100;
