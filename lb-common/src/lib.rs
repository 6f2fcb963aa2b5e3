//! The one definition of the interface between onehop's XDP/TC programs and
//! its userspace: map names, sizes, `#[repr(C)]` key/value types, flag bits,
//! counter and drop-reason numbering, and the flow hash both sides agree on.
//! The benchmark programs' interface is apart, in [`bench`].
//!
//! Conventions for every map type here:
//! - IPv4 addresses are `[u8; 4]` in wire order (so `bpftool` prints
//!   `[192,168,50,100]`), ports are `u16` in host order (prints `80`).
//! - Only integers and byte arrays, explicit `_pad` fields, and a size
//!   assertion per type: the kernel and userspace must see the same bytes.
//!   Every type has a `const fn new` next to it, so no caller spells the
//!   padding.
//! - Enums are never stored; the integer is, and userspace `TryFrom`s it.
#![no_std]
#![expect(
    clippy::pub_underscore_fields,
    reason = "explicit ABI padding must be public so the types can be built with struct literals"
)]

pub mod bench;
pub mod counters;
pub mod flow;
pub mod hash;
pub mod maps;

pub use counters::{Counter, DropReason};
pub use flow::{
    AffinityKey, AffinityValue, ConntrackValue, FlowKey, FlowScratch, FlowTimeouts, Front,
    LocalEndpointKey, LocalFronts, RevNatValue, family, flow_flags, front_state, tcp_state,
};

/// `IPPROTO_*` numbers as they appear in the IPv4 header.
pub mod proto {
    pub const ICMP: u8 = 1;
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
    /// ICMPv6 (next header 58).
    pub const ICMPV6: u8 = 58;
}

/// Flags of [`VipValue::flags`].
pub mod vip_flags {
    /// Some service uses this address: traffic to it is load-balanced.
    pub const SERVICE: u32 = 1 << 0;
    /// This node currently owns the address: answer ARP for it. A SERVICE
    /// address without this flag belongs to another node, and ARP requests
    /// for it are dropped so no local kernel answers them.
    pub const ANNOUNCE: u32 = 1 << 1;
    /// The node's own address: replies from remote backends to our NAT
    /// ports arrive here. ARP for it passes to the kernel.
    pub const NODE: u32 = 1 << 2;
}

/// Flags of [`ServiceValue::flags`].
pub mod service_flags {
    /// `sessionAffinity: ClientIP`: the `affinity` map pins a client to a backend.
    pub const AFFINITY: u32 = 1 << 0;
    /// loadBalancerSourceRanges set: sources not in `src_ranges` are dropped.
    pub const SOURCE_RANGES: u32 = 1 << 1;
}

/// Flags of [`BackendValue::flags`].
pub mod backend_flags {
    /// The slot holds a backend (array slots of removed backends are zeroed).
    pub const VALID: u16 = 1 << 0;
    /// The pod runs on this node: DNAT and pass to the kernel, keep the
    /// client's source address.
    pub const LOCAL: u16 = 1 << 1;
    /// The endpoint is terminating, or gone from the service: flows already
    /// on it keep it, but no new flow and no sessionAffinity entry chooses
    /// it (graceful drain, as kube-proxy and Cilium do). The planner keeps
    /// such a slot out of every Maglev table.
    pub const DRAINING: u16 = 1 << 2;
    /// Set with [`DRAINING`] once the endpoint has left the service
    /// altogether. Its pod may be gone and its address handed to another
    /// pod, which a UDP flow could not tell (TCP gets a reset): UDP flows
    /// on it are given a new backend, as kube-proxy clears their conntrack
    /// entries; TCP flows stay until they close or time out. The agent frees
    /// the slot once no live TCP flow names it.
    pub const GONE: u16 = 1 << 3;
    /// The pod runs on another node of this node's L2 segment, and direct
    /// server return is on: a new flow's frame goes to that node unchanged
    /// but for its Ethernet addresses, and that node's own `lb_ingress`
    /// delivers it to the pod (the client's address kept; the reply leaves
    /// from there). Without it a remote backend is reached by full NAT.
    pub const DIRECT: u16 = 1 << 4;
}

/// Flags of [`DatapathConfig::flags`].
pub mod config_flags {
    /// Direct server return is on in this cluster: other nodes may send
    /// this node frames for VIPs it does not announce. A new flow to such a
    /// VIP is then served only by a local backend, and nothing for it is
    /// sent on to another node (`not_announcer`), so a frame never goes
    /// announcer → node → third node, whatever the nodes' tables say.
    pub const DIRECT_RETURN: u16 = 1 << 0;
    /// The flow table may hold live IPv6 flows that a version before the
    /// IPv6 tag ([`crate::hash::flow_tag6`]) wrote: a table adopted at an
    /// upgrade. An IPv6 flow the table does not hold under its own tag is
    /// then looked for under the one of then
    /// ([`crate::flow::table::legacy_tag`]), so the connection keeps its
    /// backend. The agent sets it when it adopts a table and clears it once
    /// its flow sweeper finds no such flow live: the second look costs a
    /// new flow two more sets read.
    pub const LEGACY_TAGS6: u16 = 1 << 1;
}

/// Entry of the `vips` hash map, keyed by [`Ipv4Key`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VipValue {
    /// [`vip_flags`] bits.
    pub flags: u32,
}

impl VipValue {
    pub const fn new(flags: u32) -> Self {
        Self { flags }
    }
}

/// Key of maps indexed by one IPv4 address.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ipv4Key {
    pub addr: [u8; 4],
}

impl Ipv4Key {
    pub const fn new(addr: [u8; 4]) -> Self {
        Self { addr }
    }
}

/// Key of the `services` hash map: one frontend `VIP:port/protocol`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceKey {
    pub vip: [u8; 4],
    /// Host byte order.
    pub port: u16,
    /// [`proto`] number.
    pub proto: u8,
    pub _pad: u8,
}

impl ServiceKey {
    /// `port` in host order, `proto` a [`proto`] number.
    pub const fn new(vip: [u8; 4], port: u16, proto: u8) -> Self {
        Self {
            vip,
            port,
            proto,
            _pad: 0,
        }
    }
}

/// Key of maps indexed by one IPv6 address (`vips6`, `ndp_stats`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ipv6Key {
    pub addr: [u8; 16],
}

impl Ipv6Key {
    pub const fn new(addr: [u8; 16]) -> Self {
        Self { addr }
    }
}

/// Key of the `services6` hash map: one IPv6 frontend `[VIP]:port/protocol`.
/// Its value is a [`ServiceValue`] as for IPv4: service ids, Maglev tables
/// and backend ids are one space for both families.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceKey6 {
    pub vip: [u8; 16],
    /// Host byte order.
    pub port: u16,
    /// [`proto`] number.
    pub proto: u8,
    pub _pad: u8,
}

impl ServiceKey6 {
    /// `port` in host order, `proto` a [`proto`] number.
    pub const fn new(vip: [u8; 16], port: u16, proto: u8) -> Self {
        Self {
            vip,
            port,
            proto,
            _pad: 0,
        }
    }
}

/// Value of the `services` hash map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServiceValue {
    /// Stable id: index of `service_stats`, part of `affinity` and
    /// `src_ranges` keys. `< MAX_SERVICES`.
    pub id: u32,
    /// First slot of this service's Maglev table in the `maglev` array.
    pub maglev_offset: u32,
    /// Number of slots (a prime); 0 = no backend, packets are dropped.
    pub maglev_len: u32,
    /// [`service_flags`] bits.
    pub flags: u32,
    /// `sessionAffinity: ClientIP` timeout in seconds (0 when not set).
    pub affinity_timeout_s: u32,
    /// With direct return, one of this node's own backends of the service
    /// (serving if it has one, else one that is leaving it), as its id + 1
    /// (0: none): a node that does not announce the VIP serves with it a
    /// new flow that its Maglev table would send to another node (tables
    /// differ between nodes during an update; see
    /// [`Self::local_fallback`]). A pinned value of an older release (0)
    /// reads as none.
    pub local_fallback: u32,
}

impl ServiceValue {
    /// `flags` are [`service_flags`] bits; `affinity_timeout_s` 0 unless
    /// [`service_flags::AFFINITY`] is set.
    pub const fn new(
        id: u32,
        maglev_offset: u32,
        maglev_len: u32,
        flags: u32,
        affinity_timeout_s: u32,
    ) -> Self {
        Self {
            id,
            maglev_offset,
            maglev_len,
            flags,
            affinity_timeout_s,
            local_fallback: 0,
        }
    }

    /// Names `id` (a backend id) as the service's local fallback.
    #[must_use]
    pub const fn with_local_fallback(mut self, id: Option<u32>) -> Self {
        self.local_fallback = match id {
            Some(id) => id.wrapping_add(1),
            None => 0,
        };
        self
    }

    /// The backend id of the local fallback, if there is one.
    pub const fn local_fallback(&self) -> Option<u32> {
        self.local_fallback.checked_sub(1)
    }
}

/// Value of the `backends` array, indexed by backend id.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BackendValue {
    /// Pod address.
    pub ip: [u8; 4],
    /// Address of the node that runs the pod (next hop for remote backends).
    pub node_ip: [u8; 4],
    /// Target port, host byte order.
    pub port: u16,
    /// [`backend_flags`] bits.
    pub flags: u16,
    pub _pad: u32,
}

impl BackendValue {
    /// `port` in host order, `flags` [`backend_flags`] bits.
    pub const fn new(ip: [u8; 4], node_ip: [u8; 4], port: u16, flags: u16) -> Self {
        Self {
            ip,
            node_ip,
            port,
            flags,
            _pad: 0,
        }
    }
}

/// Value of the `backends6` array, indexed by backend id: an IPv6 backend
/// (a slot without [`backend_flags::VALID`] holds none). The ids are those
/// of [`BackendValue`] (one space for both families, so `backend_stats` and
/// the flow entries need no family); an IPv6 backend's id has no valid
/// entry in `backends`, nor an IPv4 backend's in `backends6`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BackendValue6 {
    /// Pod address.
    pub ip: [u8; 16],
    /// IPv6 address of the node that runs the pod (all zero when it has
    /// none: then the backend is only served where it is local).
    pub node_ip: [u8; 16],
    /// Target port, host byte order.
    pub port: u16,
    /// [`backend_flags`] bits.
    pub flags: u16,
    pub _pad: u32,
}

impl BackendValue6 {
    /// `port` in host order, `flags` [`backend_flags`] bits.
    pub const fn new(ip: [u8; 16], node_ip: [u8; 16], port: u16, flags: u16) -> Self {
        Self {
            ip,
            node_ip,
            port,
            flags,
            _pad: 0,
        }
    }
}

/// Data part of the `src_ranges6` LPM-trie key: as [`SourceRangeData`],
/// with an IPv6 address (`prefixlen = 32 + <CIDR prefix length>`, see
/// [`source_range_prefixlen`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SourceRangeData6 {
    /// Service id in big-endian bytes.
    pub service_id: [u8; 4],
    pub addr: [u8; 16],
}

impl SourceRangeData6 {
    pub const fn new(service_id: u32, addr: [u8; 16]) -> Self {
        Self {
            service_id: service_id.to_be_bytes(),
            addr,
        }
    }
}

/// Data part of the `src_ranges` LPM-trie key. The trie key is
/// `{ prefixlen: u32, data: SourceRangeData }` with
/// `prefixlen = 32 + <CIDR prefix length>`: the service id is always
/// matched in full, then the address prefix.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SourceRangeData {
    /// Service id in big-endian bytes (LPM matches bits from the first byte).
    pub service_id: [u8; 4],
    pub addr: [u8; 4],
}

impl SourceRangeData {
    /// Stores `service_id` big-endian, as the trie matches it.
    pub const fn new(service_id: u32, addr: [u8; 4]) -> Self {
        Self {
            service_id: service_id.to_be_bytes(),
            addr,
        }
    }
}

/// `prefixlen` of a `src_ranges` key for a CIDR of `prefix_len` bits.
pub const fn source_range_prefixlen(prefix_len: u8) -> u32 {
    32 + prefix_len as u32
}

/// Per-CPU packet/byte counters (`service_stats`, `backend_stats`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TrafficCounter {
    pub packets: u64,
    pub bytes: u64,
}

impl TrafficCounter {
    pub const fn new(packets: u64, bytes: u64) -> Self {
        Self { packets, bytes }
    }
}

/// The single element of the `config` array, written by the agent.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DatapathConfig {
    /// This node's address on the interface: source of full-NAT packets.
    pub node_ip: [u8; 4],
    /// Interface the programs are attached to.
    pub ifindex: u32,
    /// Its MAC: answered in ARP replies, source of frames sent with `XDP_TX`.
    pub mac: [u8; 6],
    /// [`config_flags`] bits.
    pub flags: u16,
    /// Inclusive NAT source-port range for remote backends (host order).
    /// Keep it outside `net.ipv4.ip_local_port_range` so local sockets never
    /// collide with it.
    pub nat_port_min: u16,
    pub nat_port_max: u16,
    /// Non-zero once the agent has written a complete configuration; until
    /// then the programs pass everything.
    pub ready: u32,
    /// How long idle flows live, by state.
    pub timeouts: FlowTimeouts,
    /// The new-flow guard (see [`HalfOpenGuard`]).
    pub half_open: HalfOpenGuard,
    /// Seed of [`hash::flow_hash`] and [`hash::client_hash`]: the cluster's
    /// secret, equal on every node (see [`hash`]).
    pub hash_seed: u32,
    /// Sets in the `conntrack` flow table (its `max_entries`; see
    /// [`flow::table`]): the data path's modulus for a flow's set, planned
    /// from the map's own size (a config for another size is refused when
    /// written: the data path would look for flows in the wrong sets).
    pub flow_sets: u32,
    /// This node's IPv6 address on the interface: source of IPv6 full-NAT
    /// packets. All zero: the node has none, and IPv6 flows to backends
    /// that direct return cannot reach are dropped (`no_route`).
    pub node_ip6: [u8; 16],
}

impl DatapathConfig {
    /// NAT ports in host order, inclusive. `ready: false` makes the
    /// programs pass everything. Flow timeouts are the defaults
    /// ([`FlowTimeouts::DEFAULT`]; see [`Self::with_timeouts`]).
    pub const fn new(
        node_ip: [u8; 4],
        ifindex: u32,
        mac: [u8; 6],
        nat_port_min: u16,
        nat_port_max: u16,
        ready: bool,
    ) -> Self {
        Self {
            node_ip,
            ifindex,
            mac,
            flags: 0,
            nat_port_min,
            nat_port_max,
            ready: ready as u32,
            timeouts: FlowTimeouts::DEFAULT,
            half_open: HalfOpenGuard::for_table(maps::CONNTRACK_MAX, FlowTimeouts::DEFAULT),
            hash_seed: hash::PUBLIC_SEED,
            flow_sets: flow::table::sets_for(maps::CONNTRACK_MAX),
            node_ip6: [0; 16],
        }
    }

    /// The same configuration with the node's IPv6 address.
    #[must_use]
    pub const fn with_node_ip6(self, node_ip6: [u8; 16]) -> Self {
        Self { node_ip6, ..self }
    }

    /// The same configuration with other flow timeouts.
    #[must_use]
    pub const fn with_timeouts(self, timeouts: FlowTimeouts) -> Self {
        Self { timeouts, ..self }
    }

    /// The same configuration with another flow-hash seed.
    #[must_use]
    pub const fn with_hash_seed(self, hash_seed: u32) -> Self {
        Self { hash_seed, ..self }
    }

    /// The same configuration with other [`config_flags`].
    #[must_use]
    pub const fn with_flags(self, flags: u16) -> Self {
        Self { flags, ..self }
    }

    /// The same configuration with another new-flow guard.
    #[must_use]
    pub const fn with_half_open(self, half_open: HalfOpenGuard) -> Self {
        Self { half_open, ..self }
    }

    /// The same configuration for a flow table of `flow_sets` sets.
    #[must_use]
    pub const fn with_flow_sets(self, flow_sets: u32) -> Self {
        Self { flow_sets, ..self }
    }
}

/// The new-flow guard: a token bucket, shared by every CPU, that TCP flows
/// not yet proven draw from — a SYN's, or a packet's met mid-stream. A flow
/// gives its token back when the client's next packet proves it: the
/// handshake's ACK, which a client with a forged source never sends,
/// because the SYN-ACK went to the real owner of that address. Tokens of
/// flows that never prove themselves come back only at `refill_per_s`.
///
/// So a flood of forged SYNs (or forged mid-stream packets) holds at most
/// `max` entries at once plus `refill_per_s` a second, and once the bucket
/// is empty the rest are dropped (`half_open_limit`) before they take any
/// flow state: the LRU tables never fill with them, and never evict an
/// established flow for them, however idle it is. Connections that finish
/// their handshake take nothing from the bucket for long, so the rate of
/// real new connections is not bounded by it; during a flood, new clients
/// share the refill with the flood.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HalfOpenGuard {
    /// Tokens when full: unproven flows at once. 0 turns the guard off.
    pub max: u32,
    /// Tokens added a second.
    pub refill_per_s: u32,
}

impl HalfOpenGuard {
    /// No guard: every new flow takes state.
    pub const OFF: Self = Self {
        max: 0,
        refill_per_s: 0,
    };

    /// `max` unproven flows at once, refilled at `max / tcp_syn_s` a
    /// second: the flows of a flood that never prove themselves each live
    /// `tcp_syn_s` (then up to the agent's sweep interval until deleted),
    /// so in steady state they hold about `max * (2 + sweep / tcp_syn_s)`
    /// entries: 2.5 `max` with the defaults (60 s, 30 s).
    pub const fn with_max(max: u32, t: FlowTimeouts) -> Self {
        let syn = if t.tcp_syn_s == 0 { 1 } else { t.tcp_syn_s };
        let refill = max / syn;
        Self {
            max,
            refill_per_s: if refill == 0 && max != 0 { 1 } else { refill },
        }
    }

    /// The default for a flow table of `table` entries: an eighth of it,
    /// so a flood holds under a third of the table (see [`Self::with_max`])
    /// and the rest stays for the flows that proved themselves.
    pub const fn for_table(table: u32, t: FlowTimeouts) -> Self {
        Self::with_max(table / 8, t)
    }
}

/// The single element of the `half_open` array: the new-flow guard's
/// bucket (see [`HalfOpenGuard`]), updated by every CPU with atomics.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HalfOpenBudget {
    /// Tokens left; a draw that finds none puts its token back. Read as
    /// `i64`: two CPUs drawing the last token at once go below zero for an
    /// instant.
    pub tokens: u64,
    /// `bpf_ktime_get_ns()` of the last refill; 0 until the first new flow,
    /// which fills the bucket.
    pub refilled_ns: u64,
}

/// The single element of the `announce` array: the agent's heartbeat, which
/// keeps `lb_ingress` answering ARP. A crashed or wedged agent cannot give up
/// its addresses, and its peers take them over once its Lease lapses; the
/// data path must stop claiming them by then on its own, or two nodes answer.
/// Both times are `bpf_ktime_get_ns()` nanoseconds (`CLOCK_MONOTONIC`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AnnounceState {
    /// When the agent last confirmed it is alive and its ownership current.
    pub heartbeat_ns: u64,
    /// How long after `heartbeat_ns` ARP requests are still answered. All
    /// zero (no agent of this version ever wrote it) answers nothing.
    pub hold_ns: u64,
}

impl AnnounceState {
    pub const fn new(heartbeat_ns: u64, hold_ns: u64) -> Self {
        Self {
            heartbeat_ns,
            hold_ns,
        }
    }

    /// Whether ARP may be answered at `now_ns`. A heartbeat in the future
    /// (written a moment after `now_ns` was read) counts as current.
    pub const fn current(&self, now_ns: u64) -> bool {
        now_ns.saturating_sub(self.heartbeat_ns) <= self.hold_ns && self.hold_ns != 0
    }
}

/// Value of the `arp_stats` hash, keyed by [`Ipv4Key`] (and of `ndp_stats`,
/// keyed by [`Ipv6Key`], where a request is a Neighbor Solicitation and a
/// reply a Neighbor Advertisement): what ARP did for
/// one address, on every CPU together. The agent creates and removes the entries with the
/// address; the data path only counts into existing ones, so the map (and
/// the metric series) never grows past the addresses configured.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ArpStats {
    /// ARP requests for the address that reached `lb_ingress`.
    pub requests: u64,
    /// Of those, answered by this node.
    pub replies: u64,
}

impl ArpStats {
    pub const fn new(requests: u64, replies: u64) -> Self {
        Self { requests, replies }
    }
}

/// Key of maps indexed by one host address: 16 bytes and a family, as in
/// the flow keys (IPv4 in the first four bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HostKey {
    pub addr: [u8; 16],
    /// [`flow::family`] value.
    pub family: u8,
    pub _pad: [u8; 3],
}

impl HostKey {
    pub const fn v4(addr: [u8; 4]) -> Self {
        Self {
            addr: flow::addr_v4(addr),
            family: flow::family::V4,
            _pad: [0; 3],
        }
    }

    pub const fn v6(addr: [u8; 16]) -> Self {
        Self {
            addr,
            family: flow::family::V6,
            _pad: [0; 3],
        }
    }
}

/// Value of the `learned_macs` LRU hash: the link-layer address an ARP
/// request for one of our VIPs came from (a client on the segment, or the
/// router in front of it), for replies the kernel has no neighbour for.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LearnedMac {
    pub mac: [u8; 6],
    pub _pad: u16,
    /// Interface the request arrived on.
    pub ifindex: u32,
    pub _pad1: u32,
    /// `bpf_ktime_get_ns()` when last confirmed (refreshed at most once a
    /// second).
    pub last_seen_ns: u64,
}

impl LearnedMac {
    pub const fn new(mac: [u8; 6], ifindex: u32, last_seen_ns: u64) -> Self {
        Self {
            mac,
            _pad: 0,
            ifindex,
            _pad1: 0,
            last_seen_ns,
        }
    }
}

/// Default NAT port range: above Linux's default ephemeral range (32768–60999).
pub const DEFAULT_NAT_PORT_MIN: u16 = 61000;
pub const DEFAULT_NAT_PORT_MAX: u16 = 65535;

macro_rules! abi_types {
    ($($ty:ty = $size:expr),* $(,)?) => {
        $(const _: () = assert!(core::mem::size_of::<$ty>() == $size);)*
        #[cfg(feature = "user")]
        mod pod_impls {
            use super::*;
            // SAFETY: every type listed is #[repr(C)], built only from integers
            // and byte arrays, with explicit padding (checked by the size
            // assertions above), so any bit pattern is a valid value.
            $(unsafe impl aya::Pod for $ty {})*
        }
    };
}

abi_types! {
    VipValue = 4,
    Ipv4Key = 4,
    ServiceKey = 8,
    Ipv6Key = 16,
    ServiceKey6 = 20,
    ServiceValue = 24,
    BackendValue = 16,
    BackendValue6 = 40,
    SourceRangeData6 = 20,
    FlowKey = 40,
    ConntrackValue = 56,
    flow::table::FlowSlot = 96,
    flow::table::FlowSet = 416,
    RevNatValue = 56,
    AffinityKey = 24,
    AffinityValue = 32,
    FlowTimeouts = 24,
    FlowScratch = 384,
    LocalEndpointKey = 20,
    Front = 32,
    LocalFronts = 136,
    SourceRangeData = 8,
    TrafficCounter = 16,
    DatapathConfig = 80,
    HalfOpenGuard = 8,
    HalfOpenBudget = 16,
    flow::SweepRequest = 48,
    AnnounceState = 16,
    ArpStats = 16,
    HostKey = 20,
    LearnedMac = 24,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_heartbeat_holds_for_exactly_its_hold_time() {
        let a = AnnounceState::new(1_000, 500);
        assert!(a.current(1_000));
        assert!(a.current(1_500), "the last nanosecond of the hold");
        assert!(!a.current(1_501));
        assert!(a.current(900), "written just after `now` was read");
        assert!(
            !AnnounceState::default().current(0),
            "never written: nothing is answered"
        );
    }
}
