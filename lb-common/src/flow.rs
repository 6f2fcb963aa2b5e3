//! Flow state: keys and values of the `conntrack`, `rev_nat` and `affinity`
//! maps, the TCP lifecycle kept in them, and when an idle entry is over.
//! The data path and the agent's sweeper both decide expiry with
//! [`expired`], so they never disagree about which flows are gone.
//!
//! Every address in these types is 16 bytes: an IPv4 address fills the first
//! four and the rest is zero (`bpftool` still shows it readably), and keys
//! carry a [`family`] byte, so IPv6 flows need no other layout.
//!
//! Lifecycle (TCP; [`tcp_state`] bits, one byte in both entries of a flow):
//! - a SYN without ACK opens a flow in `SYN_SENT`; a SYN again on a live
//!   entry is a retransmission (or a spoofed SYN): the flow keeps its
//!   backend and NAT port, nothing is written;
//! - the client's first packet without SYN makes it `ESTABLISHED` (a flow
//!   first seen mid-stream, after a restart or a failover, starts there);
//! - a FIN sets its side's bit; with both bits the flow is closing;
//! - an RST (either side) makes it closing at once; the backend's next
//!   packet without SYN, RST or FIN clears it again. The backend checks an
//!   RST's sequence number (RFC 5961) and we cannot, so a forged RST is
//!   answered by a backend that goes on talking, and the flow stays; after a
//!   real RST the backend has nothing left to say;
//! - a SYN on a closing or expired entry starts a fresh flow.
//!
//! An entry is expired when it has been idle longer than its state's
//! timeout ([`FlowTimeouts`], in the datapath config). Expired and closed
//! entries free their NAT ports without waiting for table pressure: a new
//! flow that meets one while claiming a port takes the port over.

#![expect(
    clippy::inline_always,
    reason = "BPF hot path: everything here is inlined into the programs"
)]

/// Address family byte of [`FlowKey`] and [`AffinityKey`].
pub mod family {
    pub const V4: u8 = 4;
    pub const V6: u8 = 6;
}

/// Flags of [`ConntrackValue::flags`] and [`RevNatValue::flags`].
pub mod flow_flags {
    /// The flow goes to a remote backend through full NAT.
    pub const REMOTE: u16 = 1 << 0;
    /// A local flow whose replies are found through a reverse entry of its
    /// own, because its endpoint's [`super::LocalFronts`] had no room (or
    /// could not be written). Other local flows have none: their replies
    /// are matched through the endpoint's fronts and the conntrack entry.
    pub const LOCAL_REVERSE: u16 = 1 << 1;
    /// Set with [`REMOTE`]: the flow goes to its backend's node by direct
    /// server return (the frame unchanged but for its MAC addresses). It
    /// has no reverse entry and no NAT port: the backend's node holds the
    /// flow too, and the replies leave from there.
    pub const DIRECT: u16 = 1 << 2;
}

/// TCP header flag bits (byte 13 of the header).
pub mod tcp_flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const ACK: u8 = 0x10;
}

/// `last_seen_ns` of a reverse entry the flow sweeper is deleting: set by
/// compare-and-swap from the dead flow's own stamp, so a new flow that took
/// the entry over meanwhile (and changed the stamp) keeps it, and never
/// taken over itself (it reads as live: a timestamp from the future).
pub const TOMBSTONE_NS: u64 = u64::MAX;

/// What the flow sweeper hands `flow_sweep` (the packet data of one
/// `BPF_PROG_TEST_RUN`): the reverse entry to delete and the stamp it had
/// when the sweeper found it dead.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SweepRequest {
    pub key: FlowKey,
    pub last_seen_ns: u64,
}

/// `flow_sweep`'s verdicts (its XDP return value).
pub mod sweep_verdict {
    /// The request was shorter than a [`super::SweepRequest`].
    pub const MALFORMED: u32 = 0;
    /// Not deleted: gone already, or its stamp is no longer the dead one.
    pub const KEPT: u32 = 1;
    /// Deleted.
    pub const DELETED: u32 = 2;
}

/// Bits of [`ConntrackValue::state`] and [`RevNatValue::state`] (TCP only;
/// UDP entries keep 0).
pub mod tcp_state {
    /// Opened by a SYN; the client has sent nothing else yet.
    pub const SYN_SENT: u8 = 1 << 0;
    /// The client sent a packet without SYN.
    pub const ESTABLISHED: u8 = 1 << 1;
    pub const CLIENT_FIN: u8 = 1 << 2;
    pub const BACKEND_FIN: u8 = 1 << 3;
    /// An RST was seen and no backend packet since.
    pub const RST: u8 = 1 << 4;
    /// Both FIN bits.
    pub const BOTH_FIN: u8 = CLIENT_FIN | BACKEND_FIN;
}

/// Which side of a flow a packet comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Client,
    Backend,
}

/// An IPv4 address in the 16-byte form of the flow types.
#[inline(always)]
pub const fn addr_v4(a: [u8; 4]) -> [u8; 16] {
    // Through integers, not byte by byte: the data path then builds a key
    // with two 8-byte stores per address instead of sixteen byte moves
    // (which took the BPF program past its stack limit in spills).
    (u32::from_le_bytes(a) as u128).to_le_bytes()
}

/// The IPv4 address in the first four bytes of a 16-byte address.
#[inline(always)]
pub const fn v4_of(a: &[u8; 16]) -> [u8; 4] {
    [a[0], a[1], a[2], a[3]]
}

/// Two 16-byte addresses compared as two words each: `==` on byte arrays
/// becomes a `bcmp` call, a loop in BPF.
#[inline(always)]
pub fn same_addr(a: &[u8; 16], b: &[u8; 16]) -> bool {
    u128::from_ne_bytes(*a) == u128::from_ne_bytes(*b)
}

/// A 5-tuple as it appears in one packet; key of `conntrack` and `rev_nat`.
/// Aligned to 8 so the data path copies and compares it in 8-byte words
/// (the kernel's hash map keys are 8-aligned too).
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    /// Host byte order.
    pub sport: u16,
    /// Host byte order.
    pub dport: u16,
    pub proto: u8,
    /// [`family`] of both addresses.
    pub family: u8,
    pub _pad: [u8; 2],
}

impl FlowKey {
    /// An IPv4 5-tuple: ports in host order, `proto` an `IPPROTO_*` number.
    #[inline(always)]
    pub const fn v4(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, proto: u8) -> Self {
        Self {
            src: addr_v4(src),
            dst: addr_v4(dst),
            sport,
            dport,
            proto,
            family: family::V4,
            _pad: [0; 2],
        }
    }

    /// An IPv6 5-tuple, as [`Self::v4`].
    #[inline(always)]
    pub const fn v6(src: [u8; 16], dst: [u8; 16], sport: u16, dport: u16, proto: u8) -> Self {
        Self {
            src,
            dst,
            sport,
            dport,
            proto,
            family: family::V6,
            _pad: [0; 2],
        }
    }
}

/// Value of the `conntrack` LRU map, keyed by the client's packet 5-tuple
/// (client → VIP). Keeps a flow on its backend (and NAT port).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConntrackValue {
    pub backend_id: u32,
    pub service_id: u32,
    /// Copy of the backend's pod address: a reused backend id with another
    /// address means the original backend is gone and the flow is re-picked.
    pub backend_ip: [u8; 16],
    /// Source port used towards a remote backend (host order), else 0.
    pub nat_port: u16,
    /// [`flow_flags`] bits.
    pub flags: u16,
    /// [`tcp_state`] bits (0 for UDP).
    pub state: u8,
    pub _pad: [u8; 3],
    /// `bpf_ktime_get_ns()` of the last packet (refreshed at most once a
    /// second, or on a state change).
    pub last_seen_ns: u64,
    /// Remote flows: the next hop towards the backend's node as the last
    /// `bpf_fib_lookup` gave it, renewed with `last_seen_ns`: egress
    /// interface (0 = nothing cached, look it up), destination MAC (the next
    /// hop's) and source MAC (the egress interface's). Zero for local flows.
    pub hop_ifindex: u32,
    pub hop_dmac: [u8; 6],
    pub hop_smac: [u8; 6],
}

impl ConntrackValue {
    /// An entry with no cached next hop (see [`Self::with_hop`]).
    #[expect(
        clippy::similar_names,
        reason = "parameters are named after the ABI fields they fill"
    )]
    #[inline(always)]
    pub const fn new(
        backend_id: u32,
        backend_ip: [u8; 16],
        service_id: u32,
        nat_port: u16,
        flags: u16,
        state: u8,
        last_seen_ns: u64,
    ) -> Self {
        Self {
            backend_id,
            service_id,
            backend_ip,
            nat_port,
            flags,
            state,
            _pad: [0; 3],
            last_seen_ns,
            hop_ifindex: 0,
            hop_dmac: [0; 6],
            hop_smac: [0; 6],
        }
    }

    /// The same entry with the next hop towards a remote backend cached.
    #[must_use]
    #[inline(always)]
    pub const fn with_hop(self, ifindex: u32, dmac: [u8; 6], smac: [u8; 6]) -> Self {
        Self {
            hop_ifindex: ifindex,
            hop_dmac: dmac,
            hop_smac: smac,
            ..self
        }
    }
}

/// Value of the `rev_nat` LRU map, keyed by the 5-tuple of a backend's reply
/// as it leaves the pod: the rewrite that turns it back into VIP → client.
/// For a remote flow, this entry is what holds its NAT port.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RevNatValue {
    pub new_src: [u8; 16],
    pub new_dst: [u8; 16],
    /// Host byte order.
    pub new_sport: u16,
    /// Host byte order.
    pub new_dport: u16,
    pub service_id: u32,
    /// [`flow_flags`] bits.
    pub flags: u16,
    /// [`tcp_state`] bits, as in the flow's conntrack entry.
    pub state: u8,
    // Two fields, not `[u8; 5]`: zeroing an odd-sized array is a `memset`
    // call in BPF, one more frame on the NAT port claim's call chain.
    pub _pad: u8,
    pub _pad1: u32,
    pub last_seen_ns: u64,
}

impl RevNatValue {
    /// The reverse of `client` (the client's packet key): replies are
    /// rewritten to come from `client.dst:dport` and go to
    /// `client.src:sport`. `flags` [`flow_flags`], `state` [`tcp_state`].
    #[inline(always)]
    pub const fn reverse_of(
        client: &FlowKey,
        service_id: u32,
        flags: u16,
        state: u8,
        last_seen_ns: u64,
    ) -> Self {
        Self {
            new_src: client.dst,
            new_dst: client.src,
            new_sport: client.dport,
            new_dport: client.sport,
            service_id,
            flags,
            state,
            _pad: 0,
            _pad1: 0,
            last_seen_ns,
        }
    }

    /// [`Self::reverse_of`] written in place, for the data path: there a
    /// struct built from another pointer's arrays is copied with a
    /// `memmove` call, one more frame on a call chain that has 512 bytes of
    /// stack in all; `copy_nonoverlapping` (which the two distinct borrows
    /// guarantee) is expanded inline.
    #[expect(
        clippy::used_underscore_binding,
        reason = "the padding is zeroed here, where it is defined"
    )]
    #[inline(always)]
    pub fn set_reverse_of(
        &mut self,
        client: &FlowKey,
        service_id: u32,
        flags: u16,
        state: u8,
        last_seen_ns: u64,
    ) {
        // SAFETY: `self` and `client` are distinct borrows, so the arrays
        // cannot overlap; both are valid for 16 bytes.
        unsafe {
            core::ptr::copy_nonoverlapping(&raw const client.dst, &raw mut self.new_src, 1);
            core::ptr::copy_nonoverlapping(&raw const client.src, &raw mut self.new_dst, 1);
        }
        self.new_sport = client.dport;
        self.new_dport = client.sport;
        self.service_id = service_id;
        self.flags = flags;
        self.state = state;
        self._pad = 0;
        self._pad1 = 0;
        self.last_seen_ns = last_seen_ns;
    }

    /// The client's key of the flow this entry translates back to (the key
    /// of its conntrack entry).
    #[inline(always)]
    pub const fn client_key(&self, proto: u8, family: u8) -> FlowKey {
        FlowKey {
            src: self.new_dst,
            dst: self.new_src,
            sport: self.new_dport,
            dport: self.new_sport,
            proto,
            family,
            _pad: [0; 2],
        }
    }

    /// Whether both entries translate replies back to the same flow.
    #[inline(always)]
    pub fn same_flow(&self, other: &Self) -> bool {
        same_addr(&self.new_dst, &other.new_dst)
            && same_addr(&self.new_src, &other.new_src)
            && self.new_dport == other.new_dport
            && self.new_sport == other.new_sport
    }

    /// Whether this entry translates replies of the flow `client`.
    #[inline(always)]
    pub fn belongs_to(&self, client: &FlowKey) -> bool {
        same_addr(&self.new_dst, &client.src)
            && same_addr(&self.new_src, &client.dst)
            && self.new_dport == client.sport
            && self.new_sport == client.dport
    }
}

/// Key of the `affinity` LRU map (`sessionAffinity: ClientIP`).
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AffinityKey {
    pub service_id: u32,
    /// [`family`] of `client`.
    pub family: u8,
    pub _pad: [u8; 3],
    pub client: [u8; 16],
}

impl AffinityKey {
    #[inline(always)]
    pub const fn v4(service_id: u32, client: [u8; 4]) -> Self {
        Self {
            service_id,
            family: family::V4,
            _pad: [0; 3],
            client: addr_v4(client),
        }
    }

    #[inline(always)]
    pub const fn v6(service_id: u32, client: [u8; 16]) -> Self {
        Self {
            service_id,
            family: family::V6,
            _pad: [0; 3],
            client,
        }
    }
}

/// The 16-byte address fields the data path reads and writes as 4-byte
/// words lie 4-aligned in their types: flow keys' addresses, flow and
/// affinity entries' records of the pod address, an IPv6 backend's
/// address, a reverse entry's addresses, the node's IPv6 address. The data
/// path's word accesses rest on this (they name it).
pub const ADDRS_WORD_ALIGNED: () = assert!(
    core::mem::align_of::<FlowKey>() >= 4
        && core::mem::offset_of!(FlowKey, src) % 4 == 0
        && core::mem::offset_of!(FlowKey, dst) % 4 == 0
        && core::mem::align_of::<ConntrackValue>() >= 4
        && core::mem::offset_of!(ConntrackValue, backend_ip) % 4 == 0
        && core::mem::align_of::<AffinityValue>() >= 4
        && core::mem::offset_of!(AffinityValue, backend_ip) % 4 == 0
        && core::mem::align_of::<crate::BackendValue6>() >= 4
        && core::mem::offset_of!(crate::BackendValue6, ip) % 4 == 0
        && core::mem::align_of::<RevNatValue>() >= 4
        && core::mem::offset_of!(RevNatValue, new_src) % 4 == 0
        && core::mem::offset_of!(RevNatValue, new_dst) % 4 == 0
        && core::mem::align_of::<crate::DatapathConfig>() >= 4
        && core::mem::offset_of!(crate::DatapathConfig, node_ip6) % 4 == 0
);

/// Value of the `affinity` LRU map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AffinityValue {
    pub last_seen_ns: u64,
    pub backend_id: u32,
    /// Same role as [`ConntrackValue::backend_ip`].
    pub backend_ip: [u8; 16],
    pub _pad: u32,
}

impl AffinityValue {
    #[expect(
        clippy::similar_names,
        reason = "parameters are named after the ABI fields they fill"
    )]
    #[inline(always)]
    pub const fn new(backend_id: u32, backend_ip: [u8; 16], last_seen_ns: u64) -> Self {
        Self {
            last_seen_ns,
            backend_id,
            backend_ip,
            _pad: 0,
        }
    }
}

/// Key of the `local_fronts` map: a local backend as its replies carry it
/// (`pod:port`, the transport protocol).
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct LocalEndpointKey {
    pub addr: [u8; 16],
    /// Host byte order.
    pub port: u16,
    pub proto: u8,
    /// [`family`] of `addr`.
    pub family: u8,
}

impl LocalEndpointKey {
    #[inline(always)]
    pub const fn v4(addr: [u8; 4], port: u16, proto: u8) -> Self {
        Self {
            addr: addr_v4(addr),
            port,
            proto,
            family: family::V4,
        }
    }

    #[inline(always)]
    pub const fn v6(addr: [u8; 16], port: u16, proto: u8) -> Self {
        Self {
            addr,
            port,
            proto,
            family: family::V6,
        }
    }
}

/// How many service fronts one local endpoint records (see
/// [`LocalFronts`]). Endpoints behind more services than this give their
/// further flows a reverse entry each ([`flow_flags::LOCAL_REVERSE`]).
pub const FRONTS_PER_ENDPOINT: usize = 4;

/// States of [`Front::state`].
pub mod front_state {
    /// Unused.
    pub const FREE: u64 = 0;
    /// Claimed by a CPU (compare-and-swap from [`FREE`]) that is writing it.
    pub const WRITING: u64 = 1;
    /// Written: readers may use it.
    pub const READY: u64 = 2;
}

/// One service address a local endpoint was reached through: a reply from
/// the endpoint to a client may belong to a flow `client → vip:port`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Front {
    /// [`front_state`]; claimed and published by compare-and-swap.
    pub state: u64,
    pub vip: [u8; 16],
    /// Host byte order.
    pub port: u16,
    pub _pad: [u8; 6],
}

/// Value of the `local_fronts` map: the service addresses through which
/// flows reached a local endpoint. Written by the data path when a flow is
/// the first through a front (one write per endpoint and front, not per
/// flow), read by `lb_egress`, which then proves a reply belongs to a live
/// flow with that flow's own conntrack entry. So a local flow costs one
/// entry, its conntrack entry, instead of two.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LocalFronts {
    pub fronts: [Front; FRONTS_PER_ENDPOINT],
    /// Non-zero once a flow of this endpoint found no room among the fronts
    /// and took a reverse entry ([`flow_flags::LOCAL_REVERSE`]): replies
    /// that match no front are then looked up in `rev_nat` as well.
    pub overflow: u64,
}

/// Value of the per-CPU `flow_scratch` map: a new flow's entries while the
/// data path builds them (see the map's documentation).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowScratch {
    /// The reverse entry's key (a NAT port probe for remote flows).
    pub rkey: FlowKey,
    pub rval: RevNatValue,
    /// The conntrack entry: filled by the packet path but for the NAT port.
    pub ctv: ConntrackValue,
    /// The new flow's client key (its conntrack key).
    pub key: FlowKey,
    /// The new flow's backend.
    pub backend: crate::BackendValue,
    /// A local flow's endpoint (see [`LocalFronts`]).
    pub endpoint: LocalEndpointKey,
    /// The packet's VIP's [`vip_flags`](crate::vip_flags), as `lb_ingress`
    /// found them before its tail call to `lb_service6` or `lb_nat6` (one
    /// lookup of `vips6` fewer per IPv6 packet).
    pub vip_flags: u32,
    /// The endpoint's entry as a first flow writes it: `fronts[0]` holds the
    /// front the flow came through, which is also what a later flow adds to
    /// an existing entry.
    pub fronts: LocalFronts,
    /// `flow_hash` of the flow (picks the NAT port probes).
    pub hash: u32,
    /// While probing NAT ports: the first port held by a flow that may give
    /// it up under pressure (`reclaimable`; 0: none), and that flow's
    /// `last_seen_ns` (the compare-and-swap's expected value).
    pub spare_port: u16,
    /// `lb_service6` to `lb_nat6`: whether the flow has an entry, which
    /// `lb_nat6` then finds again (lb-ebpf's `nat6::NEW`, `LOOK_UP`).
    pub established: u16,
    pub spare_last: u64,
}

/// Idle timeouts by flow state, in seconds (part of the datapath config).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowTimeouts {
    /// TCP flow opened by a SYN, handshake not finished.
    pub tcp_syn_s: u32,
    /// TCP flow past its handshake (half-closed ones too, as in Cilium).
    pub tcp_established_s: u32,
    /// TCP flow after both FINs or an RST.
    pub tcp_closing_s: u32,
    /// UDP flow.
    pub udp_s: u32,
    /// UDP flow, when a new remote flow finds every NAT port it probes held:
    /// a UDP flow idle this long gives its port up to it (most UDP flows are
    /// one request and one reply, and the NAT range would otherwise bound new
    /// UDP flows to `range / udp_s` a second). The flow it was taken from
    /// goes on with a new port on its next datagram.
    pub udp_reclaim_s: u32,
    /// TCP flow closed by both FINs, when a new remote flow finds every NAT
    /// port it probes held: a flow closed this long gives its port up to it.
    /// Its backend socket may still be in `TIME_WAIT` (a minute on Linux,
    /// for which the port is otherwise held, see [`reverse_over`]): the
    /// backend takes the new SYN as the next incarnation (or answers with
    /// an ACK that the client resets and retries). Without this a closed
    /// flow holds its port for [`TIME_WAIT_S`], and the NAT range bounds new
    /// TCP flows to one backend at `range / 60` a second, with probes
    /// failing long before that.
    pub tcp_reclaim_s: u32,
}

impl FlowTimeouts {
    /// Half-open a minute (the kernel's `SYN_SENT`/`SYN_RECV` are 120/60 s),
    /// established six hours (Cilium; the kernel keeps five days), closing
    /// ten seconds (Cilium's close timeout), UDP thirty seconds (the
    /// kernel's unreplied/replied UDP timeouts are 30/120 s), and five
    /// seconds before an idle UDP flow's port may go to a new flow when the
    /// range is full (a resolver's first retry comes after five seconds;
    /// it finds a new port then, not a dropped packet); two seconds before
    /// a closed TCP flow's port may (the kernel's `tcp_tw_reuse` takes a
    /// `TIME_WAIT` port after one; ours is the shortest timeout there is,
    /// [`Self::MIN_S`]).
    pub const DEFAULT: Self = Self {
        tcp_syn_s: 60,
        tcp_established_s: 6 * 3600,
        tcp_closing_s: 10,
        udp_s: 30,
        udp_reclaim_s: 5,
        tcp_reclaim_s: 2,
    };

    /// The shortest timeout accepted: flows refresh their timestamps once a
    /// second, so a shorter one could end a flow that is not idle.
    pub const MIN_S: u32 = 2;

    pub const fn new(
        tcp_syn_s: u32,
        tcp_established_s: u32,
        tcp_closing_s: u32,
        udp_s: u32,
        udp_reclaim_s: u32,
        tcp_reclaim_s: u32,
    ) -> Self {
        Self {
            tcp_syn_s,
            tcp_established_s,
            tcp_closing_s,
            udp_s,
            udp_reclaim_s,
            tcp_reclaim_s,
        }
    }
}

impl Default for FlowTimeouts {
    fn default() -> Self {
        Self::DEFAULT
    }
}

pub const NS_PER_SEC: u64 = 1_000_000_000;

/// A TCP flow that is closing: both FINs seen, or an RST.
#[inline(always)]
pub const fn closing(state: u8) -> bool {
    state & tcp_state::RST != 0 || state & tcp_state::BOTH_FIN == tcp_state::BOTH_FIN
}

/// The idle timeout of an entry of protocol `proto` in `state`, seconds.
#[inline(always)]
pub const fn timeout_s(proto: u8, state: u8, t: &FlowTimeouts) -> u32 {
    if proto != crate::proto::TCP {
        t.udp_s
    } else if closing(state) {
        t.tcp_closing_s
    } else if state & tcp_state::ESTABLISHED != 0 {
        t.tcp_established_s
    } else {
        t.tcp_syn_s
    }
}

/// Whether an entry last refreshed at `last_seen_ns` is over at `now_ns`
/// (both `CLOCK_MONOTONIC`, as `bpf_ktime_get_ns` reads it). A timestamp
/// from the future (another CPU refreshed it a moment ago) is live.
#[inline(always)]
pub const fn expired(
    proto: u8,
    state: u8,
    last_seen_ns: u64,
    now_ns: u64,
    t: &FlowTimeouts,
) -> bool {
    now_ns.saturating_sub(last_seen_ns) > timeout_s(proto, state, t) as u64 * NS_PER_SEC
}

/// How long the backend may keep a connection closed by both FINs in
/// `TIME_WAIT`, seconds: Linux's `TCP_TIMEWAIT_LEN`, which no sysctl changes
/// (FreeBSD's 2 MSL is as long). A NAT port is not handed out again within
/// it while others are free (see [`reverse_over`]).
pub const TIME_WAIT_S: u32 = 60;

/// Whether a reverse entry (and for a remote flow the NAT port it holds) is
/// over at `now_ns`: as [`expired`], but a TCP flow closed by both FINs
/// holds it for [`TIME_WAIT_S`] at least. Its backend may still hold the
/// connection in `TIME_WAIT` that long; a new flow on the same port then
/// meets it, and the new SYN is refused by PAWS about every other time
/// (timestamps are offset per connection), costing the client an RST and a
/// retry. A new flow that finds every port it probes held still takes such
/// a port, after `tcp_reclaim_s` (see [`reclaimable`]): under pressure a
/// retry is better than a drop. An RST leaves nothing in `TIME_WAIT`.
#[inline(always)]
pub const fn reverse_over(
    proto: u8,
    state: u8,
    last_seen_ns: u64,
    now_ns: u64,
    t: &FlowTimeouts,
) -> bool {
    expired(proto, state, last_seen_ns, now_ns, t)
        && !(proto == crate::proto::TCP
            && state & tcp_state::BOTH_FIN == tcp_state::BOTH_FIN
            && state & tcp_state::RST == 0
            && now_ns.saturating_sub(last_seen_ns) <= TIME_WAIT_S as u64 * NS_PER_SEC)
}

/// Whether a flow holding a NAT port may give it up to a new flow that
/// found every port it probed held (one that is over gives it up at once,
/// see [`reverse_over`]): a UDP flow idle for `udp_reclaim_s`, or a TCP flow
/// closed by both FINs `tcp_reclaim_s` ago. Not one closed by an RST
/// alone: one packet from outside can forge that, and the flow goes on if
/// the backend does.
#[inline(always)]
pub const fn reclaimable(
    proto: u8,
    state: u8,
    last_seen_ns: u64,
    now_ns: u64,
    t: &FlowTimeouts,
) -> bool {
    let idle = now_ns.saturating_sub(last_seen_ns);
    if proto == crate::proto::UDP {
        idle > t.udp_reclaim_s as u64 * NS_PER_SEC
    } else {
        proto == crate::proto::TCP
            && state & tcp_state::BOTH_FIN == tcp_state::BOTH_FIN
            && idle > t.tcp_reclaim_s as u64 * NS_PER_SEC
    }
}

/// The state after a TCP packet with header flags `flags` from `side`, on
/// a flow in `state` that the packet continues (a SYN that starts a fresh
/// flow is not a transition: the new entry starts in `SYN_SENT`).
#[inline(always)]
pub const fn next_state(state: u8, flags: u8, side: Side) -> u8 {
    if flags & tcp_flags::RST != 0 {
        return state | tcp_state::RST;
    }
    let mut s = state;
    if flags & tcp_flags::SYN == 0 {
        if matches!(side, Side::Client) {
            s |= tcp_state::ESTABLISHED;
        } else if flags & tcp_flags::FIN == 0 {
            s &= !tcp_state::RST;
        }
    }
    if flags & tcp_flags::FIN != 0 {
        s |= match side {
            Side::Client => tcp_state::CLIENT_FIN,
            Side::Backend => tcp_state::BACKEND_FIN,
        };
    }
    s
}

/// The state of a direct-return flow on the node that sends it on: the
/// backend's packets never pass this node, so the client's FIN closes it
/// here (its closing timeout, not the established one, then runs). The
/// backend's node keeps the flow's whole state; a packet that comes after
/// this entry is gone goes to the backend Maglev picks, that node.
#[inline(always)]
pub const fn direct_state(state: u8) -> u8 {
    if state & tcp_state::CLIENT_FIN != 0 {
        state | tcp_state::BACKEND_FIN
    } else {
        state
    }
}

/// The state a new flow starts in: `SYN_SENT` for a SYN without ACK, 0
/// for UDP, and for any other TCP packet (a flow met mid-stream: its entry
/// expired or was lost, or another node announced the address before) the
/// state that packet leaves, but not yet `ESTABLISHED`: one packet from an
/// address proves nothing (it may be forged), the client's next one does.
/// Until then the entry lives `tcp_syn_s`, and holds a token of the
/// new-flow guard (`HalfOpenGuard`).
#[inline(always)]
pub const fn initial_state(proto: u8, flags: u8) -> u8 {
    if proto != crate::proto::TCP {
        0
    } else if flags & (tcp_flags::SYN | tcp_flags::ACK) == tcp_flags::SYN {
        tcp_state::SYN_SENT
    } else {
        next_state(0, flags, Side::Client) & !tcp_state::ESTABLISHED
    }
}

/// Whether a client packet that moved a TCP flow from `before` to `after`
/// proved it: the handshake's ACK (or the second packet of a flow met
/// mid-stream). The flow gives its new-flow guard token back then.
#[inline(always)]
pub const fn proves(before: u8, after: u8) -> bool {
    before & tcp_state::ESTABLISHED == 0 && after & tcp_state::ESTABLISHED != 0
}

pub mod table;

#[cfg(test)]
mod tests;
