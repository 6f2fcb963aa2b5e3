//! Outcome counters and drop reasons: stable numbers, never reused (they
//! are array indexes in the `counters`/`drops` maps and metric labels).

macro_rules! numbered {
    ($(#[$m:meta])* $name:ident, $count:ident { $($(#[$vm:meta])* $v:ident = $n:literal => $label:literal,)* }) => {
        $(#[$m])*
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name { $($(#[$vm])* $v = $n,)* }

        /// Number of entries (the size of the per-CPU array).
        #[expect(clippy::cast_possible_truncation, reason = "a handful of entries")]
        pub const $count: u32 = [$($n),*].len() as u32;

        impl $name {
            pub const ALL: [$name; $count as usize] = [$($name::$v),*];

            /// Stable `snake_case` name, used in `onehop status` and metrics.
            pub const fn label(self) -> &'static str {
                match self { $($name::$v => $label,)* }
            }
        }

        impl TryFrom<u32> for $name {
            type Error = u32;
            fn try_from(v: u32) -> Result<Self, u32> {
                match v { $($n => Ok($name::$v),)* other => Err(other) }
            }
        }
    };
}

numbered! {
    /// What happened to a packet (not drops; see [`DropReason`]).
    Counter, COUNTER_COUNT {
        /// Every frame `lb_ingress` saw.
        IngressPackets = 0 => "ingress_packets",
        /// Not IPv4, IPv6 or ARP (LLDP, …): passed untouched.
        PassNotIpv4 = 1 => "pass_not_ipv4",
        /// VLAN-tagged: passed untouched (VIPs on VLAN sub-interfaces are
        /// not served from the parent's program).
        PassVlan = 2 => "pass_vlan",
        /// IPv4 to an address that is no VIP and not the node: one lookup.
        PassNotVip = 3 => "pass_not_vip",
        /// To the node's address, not a reply to one of our NAT ports.
        PassNodeTraffic = 4 => "pass_node_traffic",
        /// IPv4 frame too short or malformed, not addressed to a VIP we
        /// could identify: left to the kernel, which drops it.
        PassMalformed = 5 => "pass_malformed",
        /// ARP request answered with `XDP_TX`.
        ArpReply = 6 => "arp_reply",
        /// ARP not about a VIP: passed to the kernel.
        ArpPass = 7 => "arp_pass",
        /// ICMP echo request to a VIP answered with `XDP_TX`.
        IcmpEchoReply = 8 => "icmp_echo_reply",
        /// First packet of a flow to a local backend (DNAT, `XDP_PASS`).
        LocalNewFlow = 9 => "local_new_flow",
        /// Further packets of a flow to a local backend.
        LocalEstablished = 10 => "local_established",
        /// First packet of a flow to a remote backend (full NAT, sent out).
        RemoteNewFlow = 11 => "remote_new_flow",
        /// Further packets of a flow to a remote backend.
        RemoteEstablished = 12 => "remote_established",
        /// Remote backend's reply translated back to VIP → client and sent.
        RemoteReply = 13 => "remote_reply",
        /// Backend chosen by a live sessionAffinity entry.
        AffinityHit = 14 => "affinity_hit",
        /// A flow's backend disappeared; the flow was given a new one.
        FlowRepicked = 15 => "flow_repicked",
        /// Remote backend's reply, translated to VIP → client, passed to the
        /// kernel because the client had no neighbour entry yet (the kernel
        /// resolves it and forwards; later replies go out with `XDP_TX`).
        FibPassToKernel = 16 => "fib_pass_to_kernel",
        /// Every packet `lb_egress` saw.
        EgressPackets = 17 => "egress_packets",
        /// Local backend's reply rewritten to come from the VIP.
        EgressReply = 18 => "egress_reply",
        /// To a VIP or the node, but in a unicast frame for another host's
        /// MAC (seen when the NIC does not filter: veth, promiscuous mode,
        /// switch flooding): passed untouched, the kernel drops it.
        PassOtherHost = 19 => "pass_other_host",
        /// A packet met its flow's entry idle past its state's timeout and
        /// started a fresh flow.
        FlowExpired = 20 => "flow_expired",
        /// A SYN on a closing flow (both FINs or an RST) started a fresh flow.
        FlowReopened = 21 => "flow_reopened",
        /// A SYN on a live flow (a retransmission, or forged): kept on its
        /// backend and NAT port, nothing written.
        SynOnLiveFlow = 22 => "syn_on_live_flow",
        /// A new remote flow took over the NAT port of an expired or closed
        /// flow.
        NatPortReclaimed = 23 => "nat_port_reclaimed",
        /// A remote flow found its NAT port held by another flow (its reverse
        /// entry was evicted, or it sat idle while the range was full and a
        /// new UDP flow took the port): it goes on with a new port rather
        /// than mixing two flows at the backend.
        NatPortLost = 24 => "nat_port_lost",
        /// An ICMP or ICMPv6 error from the client's side about a reply we
        /// sent (quoting `VIP:port → client`), translated to quote what the
        /// backend sent and forwarded to it (local: DNAT to the pod, passed
        /// to the kernel; remote: full NAT to the backend's node, sent out;
        /// direct return: sent unchanged to the backend's node).
        IcmpErrorToBackend = 25 => "icmp_error_to_backend",
        /// An ICMP error to the node about a packet we sent to a remote
        /// backend (quoting `node:nat_port → pod`), translated to quote
        /// `client → VIP:port` and sent to the client from the VIP.
        IcmpErrorToClient = 26 => "icmp_error_to_client",
        /// An ICMP error to the node's address whose quoted packet belongs
        /// to no translated flow: passed untouched (it may be about the
        /// node's own traffic).
        PassIcmpErrorNoFlow = 27 => "pass_icmp_error_no_flow",
        /// An IPv4 fragment to the node's address that is not the first
        /// fragment of a reply of ours (non-first fragments carry no ports
        /// and cannot be told apart): passed to the kernel.
        PassNodeFragment = 28 => "pass_node_fragment",
        /// An ICMP error leaving through `lb_egress` (an ICMPv6 error
        /// through `lb_egress6`) about a packet we forwarded to a local
        /// backend (quoting `client → pod`, sent by this node's kernel, a
        /// router on the pod's side or the pod), translated to quote
        /// `client → VIP:port` and to come from the VIP.
        EgressIcmpError = 29 => "egress_icmp_error",
        /// The first fragment of a local backend's fragmented reply,
        /// translated on egress as any reply (also counted in
        /// `egress_reply`). The later fragments carry no ports and leave
        /// untranslated, so the client never completes the datagram.
        EgressFragmentedReply = 30 => "egress_fragmented_reply",
        /// A remote backend's reply to a client the kernel has no neighbour
        /// entry for, sent to the MAC address the client's (or its router's)
        /// last ARP request for a VIP came from (`learned_macs`) instead of
        /// passed to the kernel, where netfilter may drop it (kube-proxy's
        /// `ctstate INVALID` rule: the kernel never saw the flow).
        ReplyToLearnedMac = 31 => "reply_to_learned_mac",
        /// A packet we forward out of the interface (remote flows both ways)
        /// arrived with a partial transport checksum (`CHECKSUM_PARTIAL`: the
        /// field holds only the pseudo-header sum, left for a NIC to finish).
        /// Frames from a veth whose sender offloads TX checksums carry these
        /// (kind, k3d); nothing finishes them after `XDP_TX`, so we computed
        /// the full checksum before translating.
        PartialChecksumCompleted = 32 => "partial_checksum_completed",
        /// A new flow found its two flow-table sets full and took the slot
        /// of the oldest unproven flow there (a TCP flow still in its
        /// handshake, or an idle UDP flow; see `lb_common::flow::table`).
        FlowEvicted = 33 => "flow_evicted",
        /// First packet of a flow sent to its backend's node by direct
        /// server return (only the MAC addresses rewritten, `XDP_TX`); that
        /// node delivers it to the pod.
        DirectNewFlow = 34 => "direct_new_flow",
        /// Further packets of a direct-return flow.
        DirectEstablished = 35 => "direct_established",
        /// With direct return, a new flow at a node that does not announce
        /// its VIP (sent here by a node whose tables differ from ours during
        /// an update) that our Maglev table would send to another node:
        /// served by this node's fallback backend of the service instead
        /// (`ServiceValue::local_fallback`), never sent on.
        DirectLocalFallback = 36 => "direct_local_fallback",
        /// ICMPv6 frame while `xdp_programs` holds no `lb_ingress6` (the
        /// agent has not loaded it yet): passed untouched.
        PassIpv6Unserved = 37 => "pass_ipv6_unserved",
        /// Neighbor Solicitation for an announced IPv6 VIP answered with a
        /// Neighbor Advertisement (`XDP_TX`).
        NdpAdvert = 38 => "ndp_advert",
        /// Neighbor Discovery not about a VIP (or not a solicitation):
        /// passed to the kernel.
        NdpPass = 39 => "ndp_pass",
    }
}

numbered! {
    /// Why a packet was dropped.
    DropReason, DROP_REASON_COUNT {
        /// ARP request for a VIP another node announces.
        ArpNotOwned = 0 => "arp_not_owned",
        /// To a VIP on a port/protocol no service serves.
        NoService = 1 => "no_service",
        /// The service has no backend.
        NoBackend = 2 => "no_backend",
        /// Source not in the service's loadBalancerSourceRanges.
        SourceRange = 3 => "source_range",
        /// IPv4 fragment to a VIP (ports are only in the first fragment).
        Fragment = 4 => "fragment",
        /// IPv4 options on a packet to a VIP (not parsed, by policy).
        IpOptions = 5 => "ip_options",
        /// Packet to a VIP shorter than its headers claim.
        Truncated = 6 => "truncated",
        /// Bad IPv4 header (version, length or header checksum) to a VIP.
        BadIpHeader = 7 => "bad_ip_header",
        /// No route to the backend's node (`bpf_fib_lookup` failed).
        NoRoute = 8 => "no_route",
        /// Every candidate NAT port for the flow was taken.
        NatExhausted = 9 => "nat_exhausted",
        /// To a VIP with a protocol other than TCP, UDP or ICMP echo.
        UnsupportedProtocol = 10 => "unsupported_protocol",
        /// TTL would reach zero when forwarding.
        TtlExceeded = 11 => "ttl_exceeded",
        /// The `conntrack`/`rev_nat` insert failed (map full and not LRU-able).
        MapUpdate = 12 => "map_update",
        /// The backend's node has no neighbour entry. A packet with our node
        /// address as source cannot be handed to the kernel (martian), so
        /// it is dropped; the agent keeps managed neighbour entries for all
        /// backend nodes so this only happens before the first resolution.
        NoNeighbour = 13 => "no_neighbour",
        /// ICMP echo request to a VIP whose ICMP checksum is wrong (or
        /// longer than the checksum loop covers, `parse::MAX_SUMMED` in lb-ebpf):
        /// answering would send a reply with a wrong checksum.
        BadIcmpChecksum = 14 => "bad_icmp_checksum",
        /// To a VIP from an address no host may send from (0/8, 127/8,
        /// 224/4 multicast, 240/4 incl. broadcast) or from the node's own
        /// address: dropped before any flow state, as the kernel would.
        MartianSource = 15 => "martian_source",
        /// ARP request for a VIP this node announces, while the agent's
        /// heartbeat in the `announce` map is older than its hold time:
        /// the agent died or hangs, its peers take the address over, and
        /// this node must stop claiming it. Flows keep forwarding.
        ArpStale = 16 => "arp_stale",
        /// ICMP or ICMPv6 error to a VIP whose quoted packet belongs to no
        /// live flow (or to a flow whose backend slot now holds another
        /// pod; for IPv6 also a quote with extension headers): the kernel
        /// has nothing to do with a VIP.
        IcmpErrorNoFlow = 17 => "icmp_error_no_flow",
        /// ICMP (ICMPv6) error to a VIP too short to quote an IPv4 (IPv6)
        /// header and eight bytes of its transport header, or quoting no
        /// such header: never translated.
        IcmpErrorMalformed = 18 => "icmp_error_malformed",
        /// First fragment of a remote backend's fragmented reply to one of
        /// our NAT ports. Fragments are not translated (README, fragment
        /// policy); passed on, the node's kernel would reassemble the reply,
        /// find no socket and answer the pod with a port unreachable.
        FragmentedReply = 19 => "fragmented_reply",
        /// New TCP flow (a SYN, or a packet met mid-stream) while the
        /// new-flow guard's bucket is empty: more flows are waiting for
        /// their handshake than `HalfOpenGuard` allows — a flood of forged
        /// SYNs. Dropped before it takes flow state, so the flood cannot
        /// evict established flows; a real client's SYN retransmission
        /// gets in as tokens come back.
        HalfOpenLimit = 20 => "half_open_limit",
        /// A packet we would forward out of the interface with a partial
        /// transport checksum (see the `partial_checksum_completed` counter)
        /// that we could not complete: its transport segment is longer than
        /// the checksum loop covers or than the frame holds.
        PartialChecksum = 21 => "partial_checksum",
        /// New flow refused: its two flow-table sets hold only live proven
        /// flows, which are never replaced (or another CPU claimed the
        /// last free slot first).
        FlowTableFull = 22 => "flow_table_full",
        /// Direct server return on: a packet to a VIP this node does not
        /// announce, of a flow that would leave the node (a new flow whose
        /// backend is on another node, or a direct-return flow of this
        /// node's). Such frames were sent here by the announcer with tables
        /// that differ from ours (during an update), or by a client whose
        /// ARP cache still names us after the address moved (its next
        /// attempt reaches the new announcer). Only the announcer sends VIP
        /// frames to other nodes, so none travels on to a third node.
        NotAnnouncer = 23 => "not_announcer",
        /// A direct-return flow's packet came from the MAC address it would
        /// be sent to: two nodes that both announce the VIP (one of them with
        /// a stopped agent, tables frozen) would bounce it between them.
        DirectLoop = 24 => "direct_loop",
        /// Neighbor Solicitation for an IPv6 VIP another node announces
        /// (as `arp_not_owned`).
        NdpNotOwned = 25 => "ndp_not_owned",
        /// Neighbor Solicitation for an IPv6 VIP this node announces, while
        /// the agent's heartbeat is stale (as `arp_stale`).
        NdpStale = 26 => "ndp_stale",
        /// Neighbor Solicitation for an IPv6 VIP that fails RFC 4861's
        /// checks (7.1.1: hop limit 255, code 0, length, ICMPv6 checksum,
        /// a unicast target, options of non-zero length, no source
        /// link-layer option from the unspecified address): never answered.
        NdpInvalid = 27 => "ndp_invalid",
        /// IPv6 packet to a VIP whose extension headers are outside the
        /// written policy (see `ingress6`: more than four, a routing header
        /// with segments left, or one we do not walk): not ours to serve.
        Ipv6ExtHeader = 28 => "ipv6_ext_header",
        /// A Neighbor Solicitation we would answer, but the frame could
        /// not be resized to the advertisement (`bpf_xdp_adjust_tail`).
        NdpNoRoom = 29 => "ndp_no_room",
        /// IPv6 packet to a service while `xdp_programs` holds no
        /// `lb_service6`, or one of a full-NAT flow while it holds no
        /// `lb_nat6` (never passed: the kernel has nothing to do with a
        /// VIP).
        Ipv6Unserved = 30 => "ipv6_unserved",
    }
}
