//! IPv6 packet tests of the data path (`lb_ingress`'s IPv6 dispatch and the
//! programs it tail-calls: `lb_ingress6`, `lb_service6`, `lb_nat6`), beside the IPv4 ones in `datapath.rs`: Neighbor
//! Discovery for VIPs, ICMPv6 echo, and the written policy for IPv6
//! packets to a VIP (martian sources, extension headers, malformed
//! frames). Same harness: the product object in a namespace of its own,
//! frames through `BPF_PROG_TEST_RUN`, exact bytes and counters asserted;
//! checksums are checked with this file's own sums. Needs root.

mod support;

use aya::maps::{HashMap, MapData, ProgramArray, lpm_trie::Key};
use lb_common::{
    AnnounceState, ArpStats, BackendValue6, ConntrackValue, Counter as C, DropReason as D, FlowKey,
    HostKey, Ipv6Key, LearnedMac, ServiceKey6, ServiceValue, SourceRangeData6, VipValue,
    backend_flags, config_flags,
    flow::{
        Front, LocalEndpointKey, LocalFronts, front_state,
        table::{key_hash, legacy_tag},
        tcp_state,
    },
    maps as m, proto, service_flags, vip_flags,
};
use lb_userspace::dataplane::flows;
use onehop_testrun::frame6::{Frame6, icmp6, l4_checksum6, l4_verifies6, pseudo_sum6, tcp6, udp6};
use support::{packet::Rng, *};

const VIP6: [u8; 16] = [
    0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
];
/// A VIP another node announces.
const VIP6_OTHER: [u8; 16] = [
    0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x20,
];
/// The node's own address (`NODE` only: the kernel's to answer).
const NODE6: [u8; 16] = [
    0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01,
];
const NOT_VIP6: [u8; 16] = [
    0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x99,
];
const CLIENT6: [u8; 16] = [
    0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x50,
];
const UNSPECIFIED: [u8; 16] = [0; 16];
const ALL_NODES: [u8; 16] = [0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
const ALL_NODES_MAC: [u8; 6] = [0x33, 0x33, 0, 0, 0, 1];
const OTHER_HOST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x77];
const SERVICE_ID: u32 = 900;
/// A pod on this node, and one on another node.
const POD6: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x0a];
const POD6_REMOTE: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x0b];
const POD_PORT: u16 = 8080;
const LOCAL_ID: u32 = 50;
const REMOTE_ID: u32 = 51;
/// Where the IPv6 services' Maglev tables sit in `maglev` (past what the
/// planner gives the IPv4 scenario).
const TABLE_AT: u32 = 60_000;
const TABLE_LEN: u32 = 7;
/// `[VIP6]:81/TCP` has only the remote pod.
const REMOTE_TABLE_AT: u32 = 60_100;
/// `[VIP6]:84/TCP` has only `POD6_DIRECT`, on the peer node (direct return);
/// `[VIP6]:85/TCP` only pods on nodes direct return cannot reach.
const DIRECT_TABLE_AT: u32 = 60_200;
const UNREACHABLE_TABLE_AT: u32 = 60_300;
const POD6_DIRECT: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x0c];
const DIRECT_ID: u32 = 52;
/// Pods on a node beyond a router (`2001:db8:ffff::9`) and on one with no
/// neighbour entry (`2001:db8::77`).
const ROUTED_ID: u32 = 53;
const NO_NEIGH_ID: u32 = 54;
const ICMPV6: u8 = proto::ICMPV6;

// ------------------------------------------------------------ frames

/// A TCP segment from the client to `[VIP6]:dport`, as it arrives.
fn tcp_to_vip(sport: u16, dport: u16, flags: u8, data: &[u8]) -> Vec<u8> {
    frame6(
        CLIENT6,
        VIP6,
        proto::TCP,
        tcp6(CLIENT6, sport, VIP6, dport, flags, data),
    )
    .build()
}

/// A frame from the client to the node's MAC.
fn frame6(src: [u8; 16], dst: [u8; 16], next: u8, l4: Vec<u8>) -> Frame6 {
    Frame6::new((CLIENT_MAC, NODE_MAC), src, dst, next, l4)
}

fn solicited_node(a: &[u8; 16]) -> [u8; 16] {
    let mut s = [0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xff, 0, 0, 0];
    s[13..].copy_from_slice(&a[13..]);
    s
}

fn solicited_node_mac(a: &[u8; 16]) -> [u8; 6] {
    [0x33, 0x33, 0xff, a[13], a[14], a[15]]
}

/// A Neighbor Solicitation for `target` with `options` (whole options).
fn ns(src: [u8; 16], dst: [u8; 16], target: &[u8; 16], options: &[u8]) -> Frame6 {
    let mut body = vec![0; 4];
    body.extend_from_slice(target);
    body.extend_from_slice(options);
    let mut f = frame6(src, dst, ICMPV6, icmp6(&src, &dst, 135, 0, &body));
    f.hop_limit = 255;
    f.eth_dst = if dst[0] == 0xff {
        solicited_node_mac(target)
    } else {
        NODE_MAC
    };
    f
}

fn source_ll(mac: [u8; 6]) -> Vec<u8> {
    let mut o = vec![1, 1];
    o.extend_from_slice(&mac);
    o
}

/// The address-resolution solicitation a client sends for `target`.
fn resolve(target: &[u8; 16]) -> Frame6 {
    ns(
        CLIENT6,
        solicited_node(target),
        target,
        &source_ll(CLIENT_MAC),
    )
}

/// The advertisement we expect for `target` to `to`/`to_mac`.
fn advert(target: &[u8; 16], to: [u8; 16], to_mac: [u8; 6], flags: u8) -> Vec<u8> {
    let mut body = vec![flags, 0, 0, 0];
    body.extend_from_slice(target);
    body.extend_from_slice(&[2, 1]);
    body.extend_from_slice(&NODE_MAC);
    let mut f = frame6(*target, to, ICMPV6, icmp6(target, &to, 136, 0, &body));
    f.hop_limit = 255;
    f.eth_dst = to_mac;
    f.eth_src = NODE_MAC;
    f.build()
}

fn echo_request(src: [u8; 16], dst: [u8; 16], payload: &[u8]) -> Frame6 {
    let mut body = vec![0x12, 0x34, 0, 1];
    body.extend_from_slice(payload);
    frame6(src, dst, ICMPV6, icmp6(&src, &dst, 128, 0, &body))
}

fn tcp(src: [u8; 16], dst: [u8; 16], dport: u16) -> Vec<u8> {
    tcp6(src, 40000, dst, dport, 0x02, b"")
}

/// The addresses of an IPv6 frame.
fn addrs(f: &[u8]) -> ([u8; 16], [u8; 16]) {
    (
        f[22..38].try_into().expect("source"),
        f[38..54].try_into().expect("destination"),
    )
}

/// An extension header of type-agnostic layout: `next`, then eight bytes
/// in all (`data` its six bytes after the length).
fn ext(next: u8, data: [u8; 6]) -> Vec<u8> {
    let mut e = vec![next, 0];
    e.extend_from_slice(&data);
    e
}

// ------------------------------------------------------------ maps

fn hash<'a, K: aya::Pod, V: aya::Pod>(
    lb: &'a mut Lb,
    name: &str,
) -> HashMap<&'a mut MapData, K, V> {
    HashMap::try_from(
        lb.h.ebpf_mut()
            .map_mut(name)
            .unwrap_or_else(|| panic!("{name} in the object")),
    )
    .unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// The IPv6 addresses as the agent writes them: `VIP6` announced here,
/// `VIP6_OTHER` announced elsewhere, `NODE6` the node's; an `ndp_stats`
/// entry per VIP; one service `[VIP6]:80/TCP` (no backend written).
fn provision(lb: &mut Lb) {
    let vips = &mut lb.h.maps_mut().vips6;
    for (a, f) in [
        (VIP6, vip_flags::SERVICE | vip_flags::ANNOUNCE),
        (VIP6_OTHER, vip_flags::SERVICE),
        (NODE6, vip_flags::NODE),
    ] {
        vips.insert(Ipv6Key::new(a), VipValue::new(f), 0)
            .expect("vips6");
    }
    let stats = &mut lb.h.maps_mut().ndp_stats;
    for a in [VIP6, VIP6_OTHER] {
        stats
            .insert(Ipv6Key::new(a), ArpStats::default(), 0)
            .expect("ndp_stats");
    }
    let backends = &mut lb.h.maps_mut().backends6;
    let valid = backend_flags::VALID;
    let node6 = |a: &str| a.parse::<std::net::Ipv6Addr>().expect("address").octets();
    for (id, ip, node, flags) in [
        (LOCAL_ID, POD6, [0; 16], valid | backend_flags::LOCAL),
        (REMOTE_ID, POD6_REMOTE, node6(PEER_NODE6_ADDR), valid),
    ] {
        backends
            .set(id, BackendValue6::new(ip, node, POD_PORT, flags), 0)
            .expect("backends6");
    }
    let direct = valid | backend_flags::DIRECT;
    for (id, ip, node, flags) in [
        (DIRECT_ID, POD6_DIRECT, node6(PEER_NODE6_ADDR), direct),
        (ROUTED_ID, POD6_REMOTE, node6("2001:db8:ffff::9"), direct),
        (NO_NEIGH_ID, POD6_REMOTE, node6("2001:db8::77"), direct),
    ] {
        backends
            .set(id, BackendValue6::new(ip, node, POD_PORT, flags), 0)
            .expect("backends6");
    }
    for (at, id) in [
        (TABLE_AT, LOCAL_ID),
        (REMOTE_TABLE_AT, REMOTE_ID),
        (DIRECT_TABLE_AT, DIRECT_ID),
    ] {
        for slot in at..at + TABLE_LEN {
            lb.h.maps_mut().maglev.set(slot, id, 0).expect("maglev");
        }
    }
    // Half and half: which of the two a flow meets depends on its hash.
    for slot in UNREACHABLE_TABLE_AT..UNREACHABLE_TABLE_AT + TABLE_LEN {
        let id = if slot % 2 == 0 {
            ROUTED_ID
        } else {
            NO_NEIGH_ID
        };
        lb.h.maps_mut().maglev.set(slot, id, 0).expect("maglev");
    }
    let services = &mut lb.h.maps_mut().services6;
    for (port, p, at, id) in [
        (80, proto::TCP, TABLE_AT, SERVICE_ID),
        (80, proto::UDP, TABLE_AT, SERVICE_ID + 1),
        (81, proto::TCP, REMOTE_TABLE_AT, SERVICE_ID + 2),
        (81, proto::UDP, REMOTE_TABLE_AT, SERVICE_ID + 5),
        (84, proto::TCP, DIRECT_TABLE_AT, SERVICE_ID + 3),
        (85, proto::TCP, UNREACHABLE_TABLE_AT, SERVICE_ID + 4),
    ] {
        services
            .insert(
                ServiceKey6::new(VIP6, port, p),
                ServiceValue::new(id, at, TABLE_LEN, 0, 0),
                0,
            )
            .expect("services6");
    }
}

fn ndp_stats(lb: &mut Lb, a: [u8; 16]) -> ArpStats {
    lb.h.maps()
        .ndp_stats
        .get(&Ipv6Key::new(a), 0)
        .expect("ndp_stats entry")
}

fn with_lb6(f: impl FnOnce(&mut Lb) + Send) {
    with_lb(|lb| {
        provision(lb);
        f(lb);
    });
}

// ------------------------------------------------------------ NDP

#[test]
fn a_solicitation_for_an_announced_vip_is_answered_with_the_owners_advertisement() {
    with_lb6(|lb| {
        let out = lb.expect(
            "address resolution",
            &resolve(&VIP6).build(),
            XDP_TX,
            Want::C(C::NdpAdvert),
        );
        assert_eq!(
            out,
            advert(&VIP6, CLIENT6, CLIENT_MAC, 0x60),
            "solicited, override"
        );
        assert!(
            l4_verifies6(&VIP6, &CLIENT6, ICMPV6, &out[54..]),
            "checksum"
        );
        assert_eq!(ndp_stats(lb, VIP6), ArpStats::new(1, 1));
        let learned = hash::<HostKey, LearnedMac>(lb, m::LEARNED_MACS)
            .get(&HostKey::v6(CLIENT6), 0)
            .expect("the client's MAC learned");
        assert_eq!((learned.mac, learned.ifindex), (CLIENT_MAC, lb.ifindex));

        // Reachability confirmation: unicast, no options (64 bytes of
        // frame grow to the advertisement's 86).
        let nud = ns(CLIENT6, VIP6, &VIP6, &[]);
        let out = lb.expect("unicast probe", &nud.build(), XDP_TX, Want::C(C::NdpAdvert));
        assert_eq!(out, advert(&VIP6, CLIENT6, CLIENT_MAC, 0x60));

        // Duplicate address detection of our VIP: to all nodes, not solicited.
        let dad = ns(UNSPECIFIED, solicited_node(&VIP6), &VIP6, &[]);
        let out = lb.expect("DAD probe", &dad.build(), XDP_TX, Want::C(C::NdpAdvert));
        assert_eq!(out, advert(&VIP6, ALL_NODES, ALL_NODES_MAC, 0x20));
        assert!(l4_verifies6(&VIP6, &ALL_NODES, ICMPV6, &out[54..]));

        // Longer: a nonce option before the source address (shrinks to 86).
        let mut opts = vec![14, 1, 1, 2, 3, 4, 5, 6];
        opts.extend(source_ll(CLIENT_MAC));
        let long = ns(CLIENT6, solicited_node(&VIP6), &VIP6, &opts);
        let out = lb.expect("with a nonce", &long.build(), XDP_TX, Want::C(C::NdpAdvert));
        assert_eq!(out, advert(&VIP6, CLIENT6, CLIENT_MAC, 0x60));
        assert_eq!(ndp_stats(lb, VIP6), ArpStats::new(4, 4));
    });
}

#[test]
fn only_the_owner_answers_and_other_solicitations_are_the_kernels() {
    with_lb6(|lb| {
        lb.expect_untouched(
            "a VIP another node announces",
            &resolve(&VIP6_OTHER).build(),
            XDP_DROP,
            Want::D(D::NdpNotOwned),
        );
        assert_eq!(ndp_stats(lb, VIP6_OTHER), ArpStats::new(1, 0));
        lb.expect_untouched(
            "the node's own address",
            &resolve(&NODE6).build(),
            XDP_PASS,
            Want::C(C::NdpPass),
        );
        lb.expect_untouched(
            "an address that is not ours",
            &resolve(&NOT_VIP6).build(),
            XDP_PASS,
            Want::C(C::NdpPass),
        );
        let mut other_host = ns(CLIENT6, VIP6, &VIP6, &source_ll(CLIENT_MAC));
        other_host.eth_dst = OTHER_HOST_MAC;
        lb.expect_untouched(
            "unicast to another host's MAC",
            &other_host.build(),
            XDP_PASS,
            Want::C(C::PassOtherHost),
        );
        let mut truncated = resolve(&VIP6).build();
        truncated.truncate(14 + 40 + 8 + 10);
        lb.expect_untouched(
            "cut inside the target",
            &truncated,
            XDP_PASS,
            Want::C(C::NdpPass),
        );
        assert_eq!(
            ndp_stats(lb, VIP6),
            ArpStats::new(0, 0),
            "none reached a check"
        );

        // The agent's heartbeat ran out: the address is no longer claimed.
        let stale = AnnounceState::new(ktime_ns() - 2_000_000_000, 1_200_000_000);
        lb.h.maps_mut().announce.set(0, stale, 0).expect("announce");
        lb.expect_untouched(
            "stale heartbeat",
            &resolve(&VIP6).build(),
            XDP_DROP,
            Want::D(D::NdpStale),
        );
        lb.h.maps_mut()
            .heartbeat(std::time::Duration::from_mins(1))
            .expect("heartbeat");
        lb.expect(
            "fresh heartbeat",
            &resolve(&VIP6).build(),
            XDP_TX,
            Want::C(C::NdpAdvert),
        );
    });
}

#[test]
fn solicitations_that_fail_rfc_4861s_checks_are_never_answered() {
    with_lb6(|lb| {
        let good = resolve(&VIP6);
        let mut hop = good.clone();
        hop.hop_limit = 254;
        let mut code = good.clone();
        code.l4[1] = 1;
        let c = l4_checksum6(&code.src, &code.dst, ICMPV6, &{
            let mut m = code.l4.clone();
            m[2..4].copy_from_slice(&[0, 0]);
            m
        });
        code.l4[2..4].copy_from_slice(&c.to_be_bytes());
        let mut bad_sum = good.clone();
        bad_sum.l4[2] ^= 0x40;
        let mut short = good.clone();
        short.payload_len = Some(20);
        let zero_len_option = ns(
            CLIENT6,
            solicited_node(&VIP6),
            &VIP6,
            &[1, 0, 0, 0, 0, 0, 0, 0],
        );
        let dad_with_source = ns(
            UNSPECIFIED,
            solicited_node(&VIP6),
            &VIP6,
            &source_ll(CLIENT_MAC),
        );
        let dad_unicast = ns(UNSPECIFIED, VIP6, &VIP6, &[]);
        let elsewhere = ns(CLIENT6, NOT_VIP6, &VIP6, &source_ll(CLIENT_MAC));
        let mut beyond = good.clone();
        beyond.payload_len = Some(200);
        let mut not_v6 = good.clone();
        not_v6.version = 9;
        for (what, f) in [
            ("hop limit 254", hop),
            ("code 1", code),
            ("wrong checksum", bad_sum),
            ("payload length 20", short),
            ("an option of length 0", zero_len_option),
            ("DAD with a source address option", dad_with_source),
            ("DAD to the unicast target", dad_unicast),
            ("to an address neither the target nor its group", elsewhere),
            ("payload length beyond the frame", beyond),
            ("IP version 9", not_v6),
        ] {
            lb.expect_untouched(what, &f.build(), XDP_DROP, Want::D(D::NdpInvalid));
        }
        assert_eq!(ndp_stats(lb, VIP6), ArpStats::new(10, 0));
    });
}

// ------------------------------------------------------------ echo

#[test]
fn icmpv6_echo_to_a_vip_is_answered_and_a_bad_checksum_is_not() {
    with_lb6(|lb| {
        let payload: Vec<u8> = (0..=255u8).cycle().take(1200).collect();
        let req = echo_request(CLIENT6, VIP6, &payload);
        let out = lb.expect("ping", &req.build(), XDP_TX, Want::C(C::IcmpEchoReply));
        let mut body = vec![0x12, 0x34, 0, 1];
        body.extend_from_slice(&payload);
        let mut want = frame6(VIP6, CLIENT6, ICMPV6, icmp6(&VIP6, &CLIENT6, 129, 0, &body));
        want.eth_dst = CLIENT_MAC;
        want.eth_src = NODE_MAC;
        assert_eq!(out, want.build(), "reply");
        assert!(l4_verifies6(&VIP6, &CLIENT6, ICMPV6, &out[54..]));

        // Behind a destination options header: not answered (policy).
        let mut with_ext = echo_request(CLIENT6, VIP6, b"abc");
        with_ext.ext = ext(ICMPV6, [1, 4, 0, 0, 0, 0]);
        with_ext.next = 60;
        lb.expect_untouched(
            "ping behind options",
            &with_ext.build(),
            XDP_DROP,
            Want::D(D::Ipv6ExtHeader),
        );
        // An odd length: the last byte is summed alone.
        let odd = echo_request(CLIENT6, VIP6, b"abcde");
        let out = lb.expect("odd ping", &odd.build(), XDP_TX, Want::C(C::IcmpEchoReply));
        assert!(l4_verifies6(&VIP6, &CLIENT6, ICMPV6, &out[54..]));

        let mut bad = echo_request(CLIENT6, VIP6, b"abcd");
        bad.l4[3] ^= 1;
        lb.expect_untouched(
            "bad checksum",
            &bad.build(),
            XDP_DROP,
            Want::D(D::BadIcmpChecksum),
        );
        lb.expect_untouched(
            "ping to an address that is not a VIP",
            &echo_request(CLIENT6, NOT_VIP6, b"x").build(),
            XDP_PASS,
            Want::C(C::PassNotVip),
        );
        lb.expect_untouched(
            "ping to the node",
            &echo_request(CLIENT6, NODE6, b"x").build(),
            XDP_PASS,
            Want::C(C::PassNodeTraffic),
        );
        // Neither an echo request nor an error (see `icmpv6_errors_*`).
        let echo_reply = frame6(
            CLIENT6,
            VIP6,
            ICMPV6,
            icmp6(&CLIENT6, &VIP6, 129, 0, &[0x12, 0x34, 0, 1]),
        );
        lb.expect_untouched(
            "an echo reply to a VIP",
            &echo_reply.build(),
            XDP_DROP,
            Want::D(D::UnsupportedProtocol),
        );
    });
}

// ------------------------------------------------------------ policy

#[test]
fn ipv6_packets_to_a_vip_outside_the_written_policy_are_dropped_and_counted() {
    with_lb6(|lb| {
        let config = lb.config().with_node_ip6(NODE6);
        lb_userspace::dataplane::writer::set_config(lb.h.maps_mut(), config).expect("config");
        let to_vip = |src: [u8; 16]| frame6(src, VIP6, proto::TCP, tcp(src, VIP6, 80));
        let mut mapped = [0u8; 16];
        mapped[10..12].copy_from_slice(&[0xff, 0xff]);
        mapped[12..].copy_from_slice(&CLIENT);
        let mut loopback = [0u8; 16];
        loopback[15] = 1;
        for (what, src) in [
            ("unspecified source", UNSPECIFIED),
            ("loopback source", loopback),
            ("multicast source", ALL_NODES),
            ("IPv4-mapped source", mapped),
            ("the node's own address", NODE6),
        ] {
            lb.expect_untouched(
                what,
                &to_vip(src).build(),
                XDP_DROP,
                Want::D(D::MartianSource),
            );
        }
        let with = |next: u8, headers: Vec<u8>| {
            let mut f = to_vip(CLIENT6);
            f.next = next;
            f.ext = headers;
            f
        };
        let fragment = with(44, ext(proto::TCP, [0, 1, 0, 0, 0, 1]));
        let routing_left = with(43, ext(proto::TCP, [0, 1, 0, 0, 0, 0]));
        let five: Vec<u8> = (0..5)
            .flat_map(|i| ext(if i == 4 { proto::TCP } else { 60 }, [1, 4, 0, 0, 0, 0]))
            .collect();
        let too_many = with(60, five);
        let hop_by_hop_second = with(
            60,
            [
                ext(0, [1, 4, 0, 0, 0, 0]),
                ext(proto::TCP, [1, 4, 0, 0, 0, 0]),
            ]
            .concat(),
        );
        let esp = with(50, vec![0; 16]);
        let mut v4_inside = to_vip(CLIENT6);
        v4_inside.version = 4;
        let mut beyond = to_vip(CLIENT6);
        beyond.payload_len = Some(400);
        let mut last_hop = to_vip(CLIENT6);
        last_hop.hop_limit = 1;
        let no_service = frame6(CLIENT6, VIP6, proto::TCP, tcp(CLIENT6, VIP6, 82));
        for (what, f, r) in [
            ("fragment header", fragment, D::Fragment),
            (
                "routing header with segments left",
                routing_left,
                D::Ipv6ExtHeader,
            ),
            ("five extension headers", too_many, D::Ipv6ExtHeader),
            ("hop-by-hop not first", hop_by_hop_second, D::Ipv6ExtHeader),
            ("ESP", esp, D::UnsupportedProtocol),
            ("version 4 in an IPv6 frame", v4_inside, D::BadIpHeader),
            ("payload length beyond the frame", beyond, D::Truncated),
            ("hop limit 1", last_hop, D::TtlExceeded),
            ("a port no service serves", no_service, D::NoService),
        ] {
            lb.expect_untouched(what, &f.build(), XDP_DROP, Want::D(r));
        }
        let mut cut = to_vip(CLIENT6).build();
        cut.truncate(14 + 40 + 12);
        lb.expect_untouched(
            "TCP header cut short",
            &cut,
            XDP_DROP,
            Want::D(D::Truncated),
        );
        let mut hbh_dst = with(0, ext(60, [1, 4, 0, 0, 0, 0]));
        hbh_dst.ext.extend(ext(proto::TCP, [1, 4, 0, 0, 0, 0]));
        hbh_dst.l4 = tcp(CLIENT6, VIP6, 82);
        lb.expect_untouched(
            "hop-by-hop then options: stepped over",
            &hbh_dst.build(),
            XDP_DROP,
            Want::D(D::NoService),
        );
    });
}

#[test]
fn ipv6_that_is_not_for_a_vip_here_passes_untouched() {
    with_lb6(|lb| {
        let to_vip = |src: [u8; 16]| frame6(src, VIP6, proto::TCP, tcp(src, VIP6, 80));
        lb.expect_untouched(
            "not a VIP",
            &frame6(CLIENT6, NOT_VIP6, proto::TCP, tcp(CLIENT6, NOT_VIP6, 80)).build(),
            XDP_PASS,
            Want::C(C::PassNotVip),
        );
        let mut other_host = to_vip(CLIENT6);
        other_host.eth_dst = OTHER_HOST_MAC;
        lb.expect_untouched(
            "a VIP in a frame for another host",
            &other_host.build(),
            XDP_PASS,
            Want::C(C::PassOtherHost),
        );
        let mut header_only = to_vip(CLIENT6).build();
        header_only.truncate(14 + 39);
        lb.expect_untouched(
            "IPv6 header cut short",
            &header_only,
            XDP_PASS,
            Want::C(C::PassMalformed),
        );
        // Tagged for VLAN 100 in the frame, as IPv4 and ARP: the kernel's
        // (its VLAN device's), a solicitation for the VIP included.
        let tagged = |f: Vec<u8>| [&f[..12], &[0x81, 0, 0, 100], &f[12..]].concat();
        for (what, f) in [
            ("tagged TCP to the VIP", to_vip(CLIENT6).build()),
            ("tagged solicitation for the VIP", resolve(&VIP6).build()),
        ] {
            lb.expect_untouched(what, &tagged(f), XDP_PASS, Want::C(C::PassVlan));
        }
    });
}

#[test]
fn with_its_slot_empty_ipv6_is_passed_or_dropped_untouched() {
    with_lb6(|lb| {
        let mut slots = ProgramArray::try_from(
            lb.h.ebpf_mut()
                .map_mut(m::XDP_PROGRAMS)
                .expect("xdp_programs"),
        )
        .expect("a program array");
        slots
            .clear_index(&lb_common::maps::xdp_slot::INGRESS6)
            .expect("emptying the slot");
        slots
            .clear_index(&lb_common::maps::xdp_slot::SERVICE6)
            .expect("emptying the slot");
        // ICMPv6 is `lb_ingress6`'s: the kernel's while it is not loaded.
        for f in [resolve(&VIP6), echo_request(CLIENT6, VIP6, b"x")] {
            lb.expect_untouched(
                "ICMPv6 with an empty slot",
                &f.build(),
                XDP_PASS,
                Want::C(C::PassIpv6Unserved),
            );
        }
        // A service's packet is never the kernel's; another address's is,
        // without any slot.
        let syn = frame6(
            CLIENT6,
            VIP6,
            proto::TCP,
            tcp6(CLIENT6, 40000, VIP6, 80, 0x02, b""),
        );
        lb.expect_untouched(
            "TCP to a service with an empty slot",
            &syn.build(),
            XDP_DROP,
            Want::D(D::Ipv6Unserved),
        );
        lb.expect_untouched(
            "TCP to no VIP",
            &frame6(
                CLIENT6,
                NOT_VIP6,
                proto::TCP,
                tcp6(CLIENT6, 40000, NOT_VIP6, 80, 0x02, b""),
            )
            .build(),
            XDP_PASS,
            Want::C(C::PassNotVip),
        );
    });
}

// ------------------------------------------------------------ flows

#[test]
fn an_ipv6_flow_to_a_local_pod_is_dnated_kept_and_its_replies_come_from_the_vip() {
    with_lb6(|lb| {
        let syn = frame6(
            CLIENT6,
            VIP6,
            proto::TCP,
            tcp6(CLIENT6, 40000, VIP6, 80, 0x02, b""),
        );
        let out = lb.expect("SYN", &syn.build(), XDP_PASS, Want::C(C::LocalNewFlow));
        assert_eq!(addrs(&out), (CLIENT6, POD6), "DNAT to the pod, client kept");
        assert_eq!(&out[56..58], &POD_PORT.to_be_bytes(), "target port");
        assert!(
            l4_verifies6(&CLIENT6, &POD6, proto::TCP, &out[54..]),
            "TCP checksum"
        );
        let key = FlowKey::v6(CLIENT6, VIP6, 40000, 80, proto::TCP);
        let ct = lb.conntrack(&key).expect("the flow's entry");
        assert_eq!((ct.backend_id, ct.backend_ip), (LOCAL_ID, POD6));
        assert_eq!(ct.state, tcp_state::SYN_SENT);

        // The pod's SYN-ACK leaves from the VIP.
        let synack = frame6(
            POD6,
            CLIENT6,
            proto::TCP,
            tcp6(POD6, POD_PORT, CLIENT6, 40000, 0x12, b""),
        );
        let before = lb.counts();
        let r = lb.run_egress(&synack.build());
        let d = lb.counts().minus(&before);
        assert_eq!(r.action, TC_NEXT);
        assert_eq!(d.c(C::EgressReply), 1, "{d:?}");
        assert_eq!(addrs(&r.out), (VIP6, CLIENT6), "from the VIP");
        assert_eq!(
            &r.out[54..56],
            &80u16.to_be_bytes(),
            "from the service port"
        );
        assert!(
            l4_verifies6(&VIP6, &CLIENT6, proto::TCP, &r.out[54..]),
            "reply checksum"
        );

        let ack = frame6(
            CLIENT6,
            VIP6,
            proto::TCP,
            tcp6(CLIENT6, 40000, VIP6, 80, 0x10, b"GET / HTTP/1.1\r\n\r\n"),
        );
        let out = lb.expect("ACK", &ack.build(), XDP_PASS, Want::C(C::LocalEstablished));
        assert!(l4_verifies6(&CLIENT6, &POD6, proto::TCP, &out[54..]));
        let ct = lb.conntrack(&key).expect("the flow's entry");
        assert_ne!(ct.state & tcp_state::ESTABLISHED, 0, "{:#x}", ct.state);

        // A reply to another client port is no flow's: it leaves untouched.
        let stray = frame6(
            POD6,
            CLIENT6,
            proto::TCP,
            tcp6(POD6, POD_PORT, CLIENT6, 40001, 0x10, b""),
        )
        .build();
        let r = lb.run_egress(&stray);
        assert_eq!((r.action, &r.out), (TC_NEXT, &stray));

        // UDP too, and each flow keeps its own entry.
        let q = frame6(
            CLIENT6,
            VIP6,
            proto::UDP,
            udp6(CLIENT6, 5353, VIP6, 80, b"query"),
        );
        let out = lb.expect("UDP", &q.build(), XDP_PASS, Want::C(C::LocalNewFlow));
        assert_eq!(addrs(&out), (CLIENT6, POD6));
        assert!(l4_verifies6(&CLIENT6, &POD6, proto::UDP, &out[54..]));
        let a = frame6(
            POD6,
            CLIENT6,
            proto::UDP,
            udp6(POD6, POD_PORT, CLIENT6, 5353, b"answer"),
        );
        let r = lb.run_egress(&a.build());
        assert_eq!(addrs(&r.out), (VIP6, CLIENT6));
        assert!(l4_verifies6(&VIP6, &CLIENT6, proto::UDP, &r.out[54..]));
        assert_eq!(lb.traffic(m::SERVICE_STATS, SERVICE_ID).0, 2, "SYN and ACK");
        assert_eq!(
            lb.traffic(m::SERVICE_STATS, SERVICE_ID + 1).0,
            1,
            "the query"
        );
        assert_eq!(lb.traffic(m::BACKEND_STATS, LOCAL_ID).0, 3);
    });
}

/// A deleted service takes no new flow, while its established TCP flows
/// drain on their pod, counted to the service they started under; its UDP
/// flows, whose backend is gone with it, are dropped (as for IPv4: the flow
/// is found before the service's lookup).
#[test]
fn a_deleted_ipv6_services_tcp_flows_drain_and_it_takes_no_new_flow() {
    with_lb6(|lb| {
        let tcp = |sport: u16, flags: u8| {
            frame6(
                CLIENT6,
                VIP6,
                proto::TCP,
                tcp6(CLIENT6, sport, VIP6, 80, flags, b""),
            )
            .build()
        };
        let udp = frame6(
            CLIENT6,
            VIP6,
            proto::UDP,
            udp6(CLIENT6, 5400, VIP6, 80, b"q"),
        )
        .build();
        lb.expect("SYN", &tcp(40100, 0x02), XDP_PASS, Want::C(C::LocalNewFlow));
        lb.expect(
            "ACK",
            &tcp(40100, 0x10),
            XDP_PASS,
            Want::C(C::LocalEstablished),
        );
        lb.expect("UDP", &udp, XDP_PASS, Want::C(C::LocalNewFlow));

        // What the planner writes when the service goes: its frontends
        // leave `services6`, its pod's slot is retired.
        for p in [proto::TCP, proto::UDP] {
            lb.h.maps_mut()
                .services6
                .remove(&ServiceKey6::new(VIP6, 80, p))
                .expect("services6");
        }
        let retired = backend_flags::VALID
            | backend_flags::LOCAL
            | backend_flags::DRAINING
            | backend_flags::GONE;
        lb.h.maps_mut()
            .backends6
            .set(
                LOCAL_ID,
                BackendValue6::new(POD6, [0; 16], POD_PORT, retired),
                0,
            )
            .expect("backends6");

        let counted = lb.traffic(m::SERVICE_STATS, SERVICE_ID).0;
        for _ in 0..3 {
            let out = lb.expect(
                "the deleted service's established flow",
                &tcp(40100, 0x18),
                XDP_PASS,
                Want::C(C::LocalEstablished),
            );
            assert_eq!(addrs(&out), (CLIENT6, POD6));
            assert!(l4_verifies6(&CLIENT6, &POD6, proto::TCP, &out[54..]));
        }
        assert_eq!(
            lb.traffic(m::SERVICE_STATS, SERVICE_ID).0,
            counted + 3,
            "counted to the service it started under"
        );
        lb.expect_no_service_for_new_flows(&tcp(40101, 0x02), &udp);
    });
}

/// Records `[VIP6]:80` as a front of `pod`'s TCP endpoint, as its flows'
/// first packet did (`local_fronts`): replies from the pod are looked for
/// through it.
fn recorded_front(lb: &mut Lb, pod: [u8; 16]) {
    let mut fronts = LocalFronts::default();
    fronts.fronts[0] = Front {
        state: front_state::READY,
        vip: VIP6,
        port: 80,
        _pad: [0; 6],
    };
    lb.h.maps_mut()
        .local_fronts
        .insert(LocalEndpointKey::v6(pod, POD_PORT, proto::TCP), fronts, 0)
        .expect("local_fronts");
}

/// A flow that an earlier version wrote, in the table the agent adopted at
/// its upgrade: its slot carries the tag of then, the flow's Maglev hash
/// (`flow::table::legacy_tag`), in that tag's sets. While the config says
/// the table may hold such flows (`config_flags::LEGACY_TAGS6`, which the
/// agent sets on adoption), its packets find it and keep its pod, which
/// the service's Maglev table does not name; its replies leave from the
/// VIP; user space finds it; no second slot is written for it. A new flow
/// takes a slot under today's tag. Once the flag is off (the sweeper found
/// no such flow live), a slot of the old tag is no longer looked for.
#[test]
fn an_ipv6_flow_an_earlier_version_wrote_keeps_its_pod_after_the_upgrade() {
    const OLD_POD: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x0d];
    const OLD_ID: u32 = 55;
    with_lb6(|lb| {
        let local = backend_flags::VALID | backend_flags::LOCAL;
        lb.h.maps_mut()
            .backends6
            .set(
                OLD_ID,
                BackendValue6::new(OLD_POD, [0; 16], POD_PORT, local),
                0,
            )
            .expect("backends6");
        let key = FlowKey::v6(CLIENT6, VIP6, 40100, 80, proto::TCP);
        let config = lb.h.maps().config().expect("config");
        let seed = config.hash_seed;
        let legacy = |flags| config.with_flags(flags);
        lb.h.maps_mut()
            .put_config(legacy(config.flags | config_flags::LEGACY_TAGS6))
            .expect("config");
        let old_tag = legacy_tag(seed, &key).expect("an IPv6 flow had another tag");
        assert_ne!(old_tag, key_hash(seed, &key));
        // Seconds ago: the data path refreshes an entry's stamp at most
        // once a second.
        let then = ktime_ns().saturating_sub(3_000_000_000);
        let entry = ConntrackValue::new(
            OLD_ID,
            OLD_POD,
            SERVICE_ID,
            0,
            0,
            tcp_state::ESTABLISHED,
            then,
        );
        flows::put_tagged(lb.h.maps_mut(), &key, entry, old_tag).expect("the old slot");
        recorded_front(lb, OLD_POD);

        let ack = tcp_to_vip(40100, 80, 0x10, b"more");
        for _ in 0..2 {
            let out = lb.expect("ACK", &ack, XDP_PASS, Want::C(C::LocalEstablished));
            assert_eq!(addrs(&out), (CLIENT6, OLD_POD), "its own pod, not Maglev's");
            assert!(l4_verifies6(&CLIENT6, &OLD_POD, proto::TCP, &out[54..]));
        }
        let reply = frame6(
            OLD_POD,
            CLIENT6,
            proto::TCP,
            tcp6(OLD_POD, POD_PORT, CLIENT6, 40100, 0x10, b""),
        );
        let r = lb.run_egress(&reply.build());
        assert_eq!(
            addrs(&r.out),
            (VIP6, CLIENT6),
            "the reply leaves from the VIP"
        );
        assert!(l4_verifies6(&VIP6, &CLIENT6, proto::TCP, &r.out[54..]));

        let ct = lb.conntrack(&key).expect("found under its old tag");
        assert_eq!((ct.backend_id, ct.backend_ip), (OLD_ID, OLD_POD));
        assert!(ct.last_seen_ns > then, "the packets refreshed it");
        let slots = lb.conntrack_entries();
        assert_eq!(
            slots.iter().filter(|(k, _)| *k == key).count(),
            1,
            "one slot"
        );

        // A new flow of the same client: today's tag, Maglev's pod.
        let next = FlowKey::v6(CLIENT6, VIP6, 40101, 80, proto::TCP);
        let syn = tcp_to_vip(40101, 80, 0x02, b"");
        let out = lb.expect("SYN", &syn, XDP_PASS, Want::C(C::LocalNewFlow));
        assert_eq!(addrs(&out), (CLIENT6, POD6));
        let tags = lb.h.maps().flows().expect("flow table").sets_of(&next);
        let sets: Vec<_> = tags
            .iter()
            .map(|&set| lb.h.maps().conntrack.get(&set, 0).expect("a set"))
            .collect();
        assert!(
            sets.iter()
                .any(|s| s.find(&next, key_hash(seed, &next)).is_some()),
            "the new flow's slot carries today's tag"
        );

        // The flag off: another flow of the old tag is not found; its
        // packet is a flow the table does not hold, Maglev's pod's.
        lb.h.maps_mut()
            .put_config(legacy(config.flags & !config_flags::LEGACY_TAGS6))
            .expect("config");
        let gone = FlowKey::v6(CLIENT6, VIP6, 40102, 80, proto::TCP);
        let tag = legacy_tag(seed, &gone).expect("an IPv6 flow had another tag");
        flows::put_tagged(lb.h.maps_mut(), &gone, entry, tag).expect("the old slot");
        let syn = tcp_to_vip(40102, 80, 0x02, b"");
        let out = lb.expect("SYN", &syn, XDP_PASS, Want::C(C::LocalNewFlow));
        assert_eq!(addrs(&out), (CLIENT6, POD6), "not the old slot's pod");
    });
}

#[test]
fn ipv6_source_ranges_and_backends_on_other_nodes() {
    with_lb6(|lb| {
        // Restricted to the client's /128: others are refused before any state.
        lb.h.maps_mut()
            .src_ranges6
            .insert(
                &Key::new(32 + 128, SourceRangeData6::new(SERVICE_ID, CLIENT6)),
                1,
                0,
            )
            .expect("src_ranges6");
        let services = &mut lb.h.maps_mut().services6;
        services
            .insert(
                ServiceKey6::new(VIP6, 80, proto::TCP),
                ServiceValue::new(
                    SERVICE_ID,
                    TABLE_AT,
                    TABLE_LEN,
                    service_flags::SOURCE_RANGES,
                    0,
                ),
                0,
            )
            .expect("services6");
        let mut other = CLIENT6;
        other[15] = 0x51;
        lb.expect_untouched(
            "a client outside the ranges",
            &frame6(other, VIP6, proto::TCP, tcp(other, VIP6, 80)).build(),
            XDP_DROP,
            Want::D(D::SourceRange),
        );
        lb.expect(
            "the client in them",
            &frame6(CLIENT6, VIP6, proto::TCP, tcp(CLIENT6, VIP6, 80)).build(),
            XDP_PASS,
            Want::C(C::LocalNewFlow),
        );
        // Another node's pod where direct return cannot take it, on a node
        // without an IPv6 address of its own: full NAT has no source.
        lb.expect_untouched(
            "a remote IPv6 backend without direct return or node address",
            &frame6(CLIENT6, VIP6, proto::TCP, tcp(CLIENT6, VIP6, 81)).build(),
            XDP_DROP,
            Want::D(D::NoRoute),
        );
    });
}

/// The pseudo-header sum an IPv6 segment's checksum field holds while it is
/// partial (a local socket's, left for the NIC: see lb-ebpf's `partial`).
fn partial6(f: &mut [u8], next: u8, check_at: usize) {
    let (src, dst) = addrs(f);
    let sum = pseudo_sum6(&src, &dst, next, f.len() - 54);
    let folded = (sum & 0xffff) + (sum >> 16);
    let folded = u16::try_from((folded & 0xffff) + (folded >> 16)).expect("folded");
    f[54 + check_at..54 + check_at + 2].copy_from_slice(&folded.to_be_bytes());
}

/// Full NAT over IPv6 (`lb_nat6`): a flow to a pod on another node that
/// direct return cannot take leaves from the node's IPv6 address and a NAT
/// port for the pod, hop limit decremented, checksums right; its packets
/// keep the port; the pod's replies to that port come back from the VIP to
/// the client — through the kernel while the client is unresolved, to the
/// MAC its solicitation came from once it sent one, to its neighbour entry
/// once the kernel has one, a partial checksum finished on the way; a
/// reply's first fragment is dropped, other traffic to the node passes.
#[test]
fn an_ipv6_flow_to_a_pod_on_another_node_goes_by_full_nat_and_its_replies_come_back_from_the_vip() {
    with_lb6(|lb| {
        let config = lb.config().with_node_ip6(NODE6);
        lb_userspace::dataplane::writer::set_config(lb.h.maps_mut(), config).expect("config");
        let syn = tcp_to_vip(40000, 81, 0x02, b"");
        let out = lb.expect("SYN", &syn, XDP_TX, Want::C(C::RemoteNewFlow));
        assert_eq!(
            (&out[0..6], &out[6..12]),
            (&PEER_NODE_MAC[..], &NODE_MAC[..])
        );
        assert_eq!(
            addrs(&out),
            (NODE6, POD6_REMOTE),
            "from the node, to the pod"
        );
        assert_eq!(out[21], 63, "hop limit decremented");
        let nat_port = u16::from_be_bytes([out[54], out[55]]);
        assert!(
            (config.nat_port_min..=config.nat_port_max).contains(&nat_port),
            "{nat_port}"
        );
        assert_eq!(&out[56..58], &POD_PORT.to_be_bytes());
        assert!(l4_verifies6(&NODE6, &POD6_REMOTE, proto::TCP, &out[54..]));
        let key = FlowKey::v6(CLIENT6, VIP6, 40000, 81, proto::TCP);
        let ct = lb.conntrack(&key).expect("the flow's entry");
        assert_eq!((ct.backend_id, ct.nat_port), (REMOTE_ID, nat_port));
        assert_ne!(ct.flags & lb_common::flow::flow_flags::REMOTE, 0);
        let rkey = FlowKey::v6(POD6_REMOTE, NODE6, POD_PORT, nat_port, proto::TCP);
        let r = lb.rev_nat(&rkey).expect("the reverse entry holds the port");
        assert_eq!((r.new_src, r.new_dst), (VIP6, CLIENT6));
        assert_eq!((r.new_sport, r.new_dport), (81, 40000));

        // Retransmitted: same port, nothing new.
        let out = lb.expect("SYN again", &syn, XDP_TX, Want::C(C::RemoteEstablished));
        assert_eq!(u16::from_be_bytes([out[54], out[55]]), nat_port);

        // The pod's SYN-ACK, while the kernel has no neighbour entry for the
        // client: translated and handed to the kernel, hop limit left to it.
        let reply = |flags: u8, data: &[u8]| {
            let mut f = Frame6::new(
                (PEER_NODE_MAC, NODE_MAC),
                POD6_REMOTE,
                NODE6,
                proto::TCP,
                tcp6(POD6_REMOTE, POD_PORT, NODE6, nat_port, flags, data),
            );
            f.hop_limit = 64;
            f.build()
        };
        let check_reply = |out: &[u8]| {
            assert_eq!(addrs(out), (VIP6, CLIENT6));
            assert_eq!(&out[54..58], &[0, 81, 0x9c, 0x40], "VIP port 81 to 40000");
            assert!(l4_verifies6(&VIP6, &CLIENT6, proto::TCP, &out[54..]));
        };
        let out = lb.expect(
            "SYN-ACK, client unresolved",
            &reply(0x12, b""),
            XDP_PASS,
            Want::C(C::FibPassToKernel),
        );
        check_reply(&out);
        assert_eq!(out[21], 64);
        // The client resolves the VIP: its MAC is learned, and used.
        lb.expect(
            "the client's solicitation",
            &resolve(&VIP6).build(),
            XDP_TX,
            Want::C(C::NdpAdvert),
        );
        let out = lb.expect(
            "SYN-ACK, client learned",
            &reply(0x12, b""),
            XDP_TX,
            Want::C(C::ReplyToLearnedMac),
        );
        check_reply(&out);
        assert_eq!((&out[0..6], &out[6..12]), (&CLIENT_MAC[..], &NODE_MAC[..]));
        assert_eq!(out[21], 63);
        // Once the kernel knows the client, its entry is used; a partial
        // checksum (a veth uplink) is finished first.
        let mac = CLIENT_MAC.map(|b| format!("{b:02x}")).join(":");
        let client = std::net::Ipv6Addr::from(CLIENT6).to_string();
        let st = std::process::Command::new("ip")
            .args(["-6", "neigh", "replace", &client, "lladdr", &mac])
            .args(["dev", "v0", "nud", "permanent"])
            .status()
            .expect("ip neigh");
        assert!(st.success());
        let mut partial = reply(0x10, b"HTTP/1.1 200 OK\r\n\r\n");
        partial6(&mut partial, proto::TCP, 16);
        let before = lb.counts();
        let out = lb.expect(
            "data, partial checksum",
            &partial,
            XDP_TX,
            Want::C(C::RemoteReply),
        );
        check_reply(&out);
        assert_eq!(lb.counts().minus(&before).c(C::PartialChecksumCompleted), 1);
        assert_eq!(&out[0..6], &CLIENT_MAC);

        // The client's ACK keeps the flow's port and next hop.
        let ack = tcp_to_vip(40000, 81, 0x10, b"");
        let out = lb.expect("ACK", &ack, XDP_TX, Want::C(C::RemoteEstablished));
        assert_eq!(addrs(&out), (NODE6, POD6_REMOTE));
        assert_eq!(u16::from_be_bytes([out[54], out[55]]), nat_port);
        assert!(l4_verifies6(&NODE6, &POD6_REMOTE, proto::TCP, &out[54..]));

        let udp_port = udp_by_full_nat(lb);
        assert_eq!(lb.traffic(m::BACKEND_STATS, REMOTE_ID).0, 4);
        fragments_and_node_traffic(lb, udp_port);
    });
}

/// An IPv6 UDP flow whose NAT port went to another flow (idle past
/// `udp_reclaim` while the range was full) goes on with a new port, and its
/// entry is written again in its own flow-table sets: its next datagram
/// finds it and keeps the port (not the sets of the last new flow, whose
/// hash the CPU's scratch slot held).
#[test]
fn an_ipv6_flow_that_lost_its_nat_port_goes_on_with_a_new_one_and_keeps_it() {
    with_lb6(|lb| {
        lb.set_nat_ports(62000, 62001);
        let config = lb.config().with_node_ip6(NODE6);
        lb_userspace::dataplane::writer::set_config(lb.h.maps_mut(), config).expect("config");
        let query = |sport| {
            frame6(
                CLIENT6,
                VIP6,
                proto::UDP,
                udp6(CLIENT6, sport, VIP6, 81, b"query"),
            )
            .build()
        };
        let port_of = |out: &[u8]| u16::from_be_bytes([out[54], out[55]]);
        let mut held = std::collections::BTreeMap::new();
        for sport in [45000, 45001] {
            let out = lb.expect("UDP flow", &query(sport), XDP_TX, Want::C(C::RemoteNewFlow));
            held.insert(port_of(&out), sport);
        }
        lb.age_flows(6);
        let taken = port_of(&lb.expect(
            "a third flow, both ports idle 6 s",
            &query(45002),
            XDP_TX,
            Want::C(C::RemoteNewFlow),
        ));
        let old = held[&taken];
        let before = lb.counts();
        let r = lb.run(&query(old));
        let d = lb.counts().minus(&before);
        assert_eq!(r.action, XDP_TX, "{d:?}");
        assert_eq!(
            (d.c(C::NatPortLost), d.c(C::RemoteNewFlow)),
            (1, 1),
            "{d:?}"
        );
        let again = port_of(&r.out);
        assert_ne!(again, taken, "sent with another flow's port");
        let key = FlowKey::v6(CLIENT6, VIP6, old, 81, proto::UDP);
        assert_eq!(
            lb.conntrack(&key).map(|v| v.nat_port),
            Some(again),
            "the flow's entry, in its own sets"
        );
        let out = lb.expect(
            "the flow's next datagram",
            &query(old),
            XDP_TX,
            Want::C(C::RemoteEstablished),
        );
        assert_eq!(port_of(&out), again, "the flow keeps its new port");
    });
}

/// A UDP datagram from the remote pod to the node's `port` (a full-NAT
/// reply when `port` is a flow's), as it arrives from the pod's node.
fn pod_udp_to_node(port: u16, data: &[u8]) -> Frame6 {
    Frame6::new(
        (PEER_NODE_MAC, NODE_MAC),
        POD6_REMOTE,
        NODE6,
        proto::UDP,
        udp6(POD6_REMOTE, POD_PORT, NODE6, port, data),
    )
}

/// UDP by full NAT over IPv6, both ways; returns the flow's NAT port.
fn udp_by_full_nat(lb: &mut Lb) -> u16 {
    let q = frame6(
        CLIENT6,
        VIP6,
        proto::UDP,
        udp6(CLIENT6, 5353, VIP6, 81, b"query"),
    );
    let out = lb.expect("UDP", &q.build(), XDP_TX, Want::C(C::RemoteNewFlow));
    assert_eq!(addrs(&out), (NODE6, POD6_REMOTE));
    let udp_port = u16::from_be_bytes([out[54], out[55]]);
    assert!(l4_verifies6(&NODE6, &POD6_REMOTE, proto::UDP, &out[54..]));
    let a = pod_udp_to_node(udp_port, b"answer");
    let out = lb.expect("UDP answer", &a.build(), XDP_TX, Want::C(C::RemoteReply));
    assert_eq!(addrs(&out), (VIP6, CLIENT6));
    assert_eq!(&out[54..58], &[0, 81, 0x14, 0xe9]);
    assert!(l4_verifies6(&VIP6, &CLIENT6, proto::UDP, &out[54..]));
    udp_port
}

/// For [`an_ipv6_flow_to_a_pod_on_another_node_goes_by_full_nat_and_its_replies_come_back_from_the_vip`],
/// with `udp_port` the NAT port of its UDP flow: a reply's first fragment
/// cannot be delivered, and is dropped; the other fragments, and traffic
/// to the node off the flows' NAT ports, are the node's.
fn fragments_and_node_traffic(lb: &mut Lb, udp_port: u16) {
    // A reply's first fragment cannot be delivered: dropped; the
    // others, and traffic to the node off the NAT ports, are the node's.
    let mut frag = pod_udp_to_node(udp_port, b"big answer");
    frag.next = 44;
    frag.ext = vec![proto::UDP, 0, 0, 1, 0, 0, 0, 7];
    lb.expect_untouched(
        "first fragment",
        &frag.build(),
        XDP_DROP,
        Want::D(D::FragmentedReply),
    );
    frag.ext = vec![proto::UDP, 0, 0, 0xb9, 0, 0, 0, 7];
    lb.expect_untouched(
        "later fragment",
        &frag.build(),
        XDP_PASS,
        Want::C(C::PassNodeFragment),
    );
    // A reply cut short (its payload length beyond the frame) or not IPv6
    // is the kernel's to drop, never translated.
    let reply = pod_udp_to_node(udp_port, b"an answer");
    let mut cut = reply.build();
    cut.truncate(cut.len() - 4);
    let mut not_v6 = reply.clone();
    not_v6.version = 4;
    for (what, f) in [
        ("reply cut short", cut),
        ("reply of IP version 4", not_v6.build()),
    ] {
        lb.expect_untouched(what, &f, XDP_PASS, Want::C(C::PassMalformed));
    }
    let ssh = Frame6::new(
        (CLIENT_MAC, NODE_MAC),
        CLIENT6,
        NODE6,
        proto::TCP,
        tcp6(CLIENT6, 40000, NODE6, 22, 0x02, b""),
    );
    lb.expect_untouched(
        "to the node",
        &ssh.build(),
        XDP_PASS,
        Want::C(C::PassNodeTraffic),
    );
    let stray = pod_udp_to_node(udp_port.wrapping_add(1), b"x");
    lb.expect_untouched(
        "no flow's port",
        &stray.build(),
        XDP_PASS,
        Want::C(C::PassNodeTraffic),
    );
}

/// Direct return over IPv6: a flow to a pod on the peer node leaves for
/// that node's MAC (found through its IPv6 address), the frame otherwise
/// as it came (addresses, ports, hop limit, checksums); its packets keep
/// the way, by a next hop kept in the flow's entry; a frame from that node itself is not sent back to it; a node
/// off the segment or unresolved gets nothing; and a node that does not
/// announce the VIP never sends such a flow on.
#[test]
fn an_ipv6_flow_to_a_pod_on_a_direct_return_node_goes_there_as_it_came() {
    with_lb6(|lb| {
        let syn = tcp_to_vip(40000, 84, 0x02, b"");
        let out = lb.expect("SYN", &syn, XDP_TX, Want::C(C::DirectNewFlow));
        assert_eq!(&out[0..6], &PEER_NODE_MAC, "to the peer node");
        assert_eq!(&out[6..12], &NODE_MAC, "from this node");
        assert_eq!(&out[12..], &syn[12..], "the rest as it came");
        let key = FlowKey::v6(CLIENT6, VIP6, 40000, 84, proto::TCP);
        let ct = lb.conntrack(&key).expect("the flow's entry");
        assert_eq!((ct.backend_id, ct.backend_ip), (DIRECT_ID, POD6_DIRECT));
        assert_ne!(
            ct.flags & lb_common::flow::flow_flags::DIRECT,
            0,
            "{:#x}",
            ct.flags
        );
        assert_eq!(lb.traffic(m::BACKEND_STATS, DIRECT_ID).0, 1);

        let ack = tcp_to_vip(40000, 84, 0x10, b"data");
        let out = lb.expect("ACK", &ack, XDP_TX, Want::C(C::DirectEstablished));
        assert_eq!((&out[0..6], &out[12..]), (&PEER_NODE_MAC[..], &ack[12..]));
        // The next hop is now kept in the flow's entry, and used: with the
        // node's neighbour entry gone, the flow's packets still find it.
        let ct = lb.conntrack(&key).expect("the flow's entry");
        assert_eq!((ct.hop_dmac, ct.hop_smac), (PEER_NODE_MAC, NODE_MAC));
        assert_ne!(ct.hop_ifindex, 0);
        let neigh = |verb: &str, extra: &[&str]| {
            let mut args = vec!["-6", "neigh", verb, PEER_NODE6_ADDR];
            args.extend_from_slice(extra);
            args.extend_from_slice(&["dev", "v0"]);
            let st = std::process::Command::new("ip")
                .args(&args)
                .status()
                .expect("ip neigh");
            assert!(st.success(), "ip {args:?}");
        };
        neigh("del", &[]);
        let out = lb.expect(
            "ACK, hop cached",
            &ack,
            XDP_TX,
            Want::C(C::DirectEstablished),
        );
        assert_eq!(&out[0..6], &PEER_NODE_MAC);
        let mac = PEER_NODE_MAC.map(|b| format!("{b:02x}")).join(":");
        neigh("add", &["lladdr", &mac, "nud", "permanent"]);

        // From the peer node's MAC: both of us would take ourselves for the
        // announcer, and the frame would bounce.
        let mut looped = frame6(
            CLIENT6,
            VIP6,
            proto::TCP,
            tcp6(CLIENT6, 40001, VIP6, 84, 0x02, b""),
        );
        looped.eth_src = PEER_NODE_MAC;
        lb.expect(
            "from the peer node",
            &looped.build(),
            XDP_DROP,
            Want::D(D::DirectLoop),
        );

        // Off the segment or unresolved: dropped, never sent to a router.
        for sport in 41000..41008 {
            let f = frame6(
                CLIENT6,
                VIP6,
                proto::TCP,
                tcp6(CLIENT6, sport, VIP6, 85, 0x02, b""),
            );
            lb.expect(
                "unreachable node",
                &f.build(),
                XDP_DROP,
                Want::D(D::NoRoute),
            );
        }
        for id in [ROUTED_ID, NO_NEIGH_ID] {
            assert_eq!(
                lb.traffic(m::BACKEND_STATS, id).0,
                0,
                "backend {id} counted traffic it never got"
            );
        }

        // This node no longer announces the VIP while direct return is on:
        // not even the established flow is sent on.
        let config = lb.config();
        let config = lb_common::DatapathConfig {
            flags: config.flags | lb_common::config_flags::DIRECT_RETURN,
            ..config
        };
        lb_userspace::dataplane::writer::set_config(lb.h.maps_mut(), config).expect("config");
        lb.h.maps_mut()
            .vips6
            .insert(Ipv6Key::new(VIP6), VipValue::new(vip_flags::SERVICE), 0)
            .expect("vips6");
        lb.expect_untouched(
            "not the announcer",
            &ack,
            XDP_DROP,
            Want::D(D::NotAnnouncer),
        );
    });
}

// ------------------------------------------------------------ ICMPv6 errors

/// A router on the client's side of the LAN, and one between the node and
/// the pods.
const CLIENT_ROUTER6: [u8; 16] = [
    0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xfe,
];
const POD_ROUTER6: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01];
/// Packet Too Big, MTU 1400 (type 2, code 0, the MTU in the 4 bytes after
/// the checksum).
const TOO_BIG: (u8, u8, [u8; 4]) = (2, 0, [0, 0, 0x05, 0x78]);
const PORT_UNREACH6: (u8, u8, [u8; 4]) = (1, 4, [0; 4]);
const HOP_LIMIT_EXCEEDED: (u8, u8, [u8; 4]) = (3, 0, [0; 4]);
/// Parameter problem, pointing at byte 7 of the quote (its hop limit).
const PARAM_PROBLEM6: (u8, u8, [u8; 4]) = (4, 0, [0, 0, 0, 7]);
const ERROR_KINDS: [(u8, u8, [u8; 4]); 4] =
    [TOO_BIG, PORT_UNREACH6, HOP_LIMIT_EXCEEDED, PARAM_PROBLEM6];

/// An ICMPv6 error from `src` to `dst` quoting `quote` (an IPv6 packet, or
/// the start of one), its checksum right.
fn icmp6_error(
    src: [u8; 16],
    dst: [u8; 16],
    (ty, code, rest): (u8, u8, [u8; 4]),
    quote: &[u8],
) -> Frame6 {
    let mut body = rest.to_vec();
    body.extend_from_slice(quote);
    frame6(src, dst, ICMPV6, icmp6(&src, &dst, ty, code, &body))
}

/// The IPv6 packet of a frame (what an error quotes), cut to `len` bytes.
fn ip6_bytes(frame: &[u8], len: usize) -> Vec<u8> {
    let ip = &frame[14..];
    ip[..len.min(ip.len())].to_vec()
}

/// The type, code, rest of header and quote of an ICMPv6 error frame, after
/// checking every checksum that can be checked, each recomputed over the
/// whole message: the ICMPv6 checksum (this file's sums and etherparse's),
/// and the quoted transport checksum when the whole quoted packet is there.
#[track_caller]
fn error_parts6(out: &[u8]) -> (u8, u8, [u8; 4], Vec<u8>) {
    let (src, dst) = addrs(out);
    assert_eq!(out[20], ICMPV6, "next header");
    let payload = usize::from(u16::from_be_bytes([out[18], out[19]]));
    assert_eq!(out.len(), 54 + payload, "payload length");
    let m = &out[54..];
    assert!(l4_verifies6(&src, &dst, ICMPV6, m), "ICMPv6 checksum");
    let p = etherparse::SlicedPacket::from_ethernet(out).expect("etherparse parses the error");
    let Some(etherparse::TransportSlice::Icmpv6(icmp)) = p.transport else {
        panic!("etherparse sees no ICMPv6: {:?}", p.transport);
    };
    let again = etherparse::Icmpv6Header::with_checksum(icmp.icmp_type(), src, dst, icmp.payload())
        .expect("etherparse computes the checksum");
    assert_eq!(
        again.checksum,
        icmp.checksum(),
        "etherparse's ICMPv6 checksum"
    );
    let quote = m[8..].to_vec();
    assert!(quote.len() >= 48, "quote of {} bytes", quote.len());
    let qlen = usize::from(u16::from_be_bytes([quote[4], quote[5]]));
    if quote.len() == 40 + qlen {
        let (qsrc, qdst): ([u8; 16], [u8; 16]) = (
            quote[8..24].try_into().expect("16 bytes"),
            quote[24..40].try_into().expect("16 bytes"),
        );
        assert!(
            l4_verifies6(&qsrc, &qdst, quote[6], &quote[40..]),
            "quoted transport checksum"
        );
    }
    (m[0], m[1], m[4..8].try_into().expect("4 bytes"), quote)
}

/// Uplink, local flow: errors from the client's side about the replies we
/// sent as `[VIP]:port` reach the pod, quoting the pod's own packet byte for
/// byte (so its socket matches them), addressed to the pod and passed to the
/// kernel (which routes them; hop limit untouched here). Every error type,
/// Packet Too Big's MTU kept, UDP and TCP, whole quotes and 48-byte ones
/// (and a TCP quote of 58 bytes, which holds the checksum); a quoted zero
/// UDP checksum stays zero. The flow is left as it was.
#[test]
fn icmpv6_errors_to_a_vip_about_a_local_flow_reach_the_pod_translated() {
    with_lb6(|lb| {
        let q = frame6(
            CLIENT6,
            VIP6,
            proto::UDP,
            udp6(CLIENT6, 5353, VIP6, 80, b"q"),
        );
        lb.expect("UDP query", &q.build(), XDP_PASS, Want::C(C::LocalNewFlow));
        let syn = tcp_to_vip(40100, 80, 0x02, b"");
        lb.expect("SYN", &syn, XDP_PASS, Want::C(C::LocalNewFlow));
        let udp_reply = frame6(
            POD6,
            CLIENT6,
            proto::UDP,
            udp6(POD6, POD_PORT, CLIENT6, 5353, &[0x5a; 1000]),
        )
        .build();
        let tcp_reply = frame6(
            POD6,
            CLIENT6,
            proto::TCP,
            tcp6(POD6, POD_PORT, CLIENT6, 40100, 0x12, &[0xa5; 100]),
        )
        .build();
        // A zero UDP checksum is invalid over IPv6, but stays as it is.
        let mut udp_zero = udp_reply.clone();
        udp_zero[54 + 6..54 + 8].copy_from_slice(&[0, 0]);
        let keys = [
            FlowKey::v6(CLIENT6, VIP6, 5353, 80, proto::UDP),
            FlowKey::v6(CLIENT6, VIP6, 40100, 80, proto::TCP),
        ];
        for (reply, cut) in [
            (&udp_reply, usize::MAX),
            (&udp_reply, 48),
            (&udp_zero, 48),
            (&tcp_reply, usize::MAX),
            (&tcp_reply, 48),
            (&tcp_reply, 58),
        ] {
            let sent = lb.run_egress(reply);
            assert_eq!(addrs(&sent.out).0, VIP6, "egress translated the reply");
            let flows: Vec<_> = keys.iter().map(|k| lb.conntrack(k)).collect();
            for (from, kind) in [
                (CLIENT_ROUTER6, TOO_BIG),
                (CLIENT6, PORT_UNREACH6),
                (CLIENT_ROUTER6, HOP_LIMIT_EXCEEDED),
                (CLIENT_ROUTER6, PARAM_PROBLEM6),
            ] {
                let what = format!("{kind:?}, quote cut at {cut}");
                let err = icmp6_error(from, VIP6, kind, &ip6_bytes(&sent.out, cut)).build();
                let out = lb.expect(&what, &err, XDP_PASS, Want::C(C::IcmpErrorToBackend));
                assert_eq!(out.len(), err.len(), "{what}: length");
                assert_eq!(
                    &out[..18],
                    &err[..18],
                    "{what}: Ethernet, version, class, label"
                );
                assert_eq!(
                    (&out[18..22], addrs(&out)),
                    (&err[18..22], (from, POD6)),
                    "{what}: DNAT to the pod, payload length, next header and hop limit kept"
                );
                let (ty, code, rest, quote) = error_parts6(&out);
                assert_eq!(
                    (ty, code, rest),
                    kind,
                    "{what}: type, code, MTU/pointer kept"
                );
                assert_eq!(
                    quote,
                    ip6_bytes(reply, cut),
                    "{what}: the quote is the pod's own packet"
                );
            }
            // Errors never refresh or change their flow.
            let after: Vec<_> = keys.iter().map(|k| lb.conntrack(k)).collect();
            assert_eq!(after, flows, "the flows, after their errors");
        }
    });
}

/// Full-NAT flows (`lb_nat6`), both ways. From the client's side, an error
/// about a reply we sent from `[VIP]:port` goes to the pod's node from the
/// node's address, quoting the pod's own reply to our NAT port; from the
/// pod's side, an error to the node's address about a packet we sent to
/// the pod goes to the client from the VIP, quoting the client's own
/// packet — handed to the kernel while the client is unresolved. Hop limits
/// are decremented where we send on; every checksum verifies; errors
/// quoting no NAT port of ours are the node's.
#[test]
fn icmpv6_errors_about_a_full_nat_flow_are_translated_both_ways() {
    with_lb6(|lb| {
        let config = lb.config().with_node_ip6(NODE6);
        lb_userspace::dataplane::writer::set_config(lb.h.maps_mut(), config).expect("config");
        let q = frame6(
            CLIENT6,
            VIP6,
            proto::UDP,
            udp6(CLIENT6, 5353, VIP6, 81, &[0x33; 600]),
        )
        .build();
        let sent = lb.expect("UDP query", &q, XDP_TX, Want::C(C::RemoteNewFlow));
        let nat_port = u16::from_be_bytes([sent[54], sent[55]]);
        let mut r = Frame6::new(
            (PEER_NODE_MAC, NODE_MAC),
            POD6_REMOTE,
            NODE6,
            proto::UDP,
            udp6(POD6_REMOTE, POD_PORT, NODE6, nat_port, &[0x44; 900]),
        );
        r.hop_limit = 64;
        let r = r.build();
        let same_but_hop_limit = |quote: &[u8], packet: &[u8], what: &str| {
            assert_eq!(quote.len(), packet.len(), "{what}: quote length");
            assert_eq!(
                (&quote[..7], &quote[8..]),
                (&packet[..7], &packet[8..]),
                "{what}"
            );
            assert_eq!(quote[7] + 1, packet[7], "{what}: the hop we were");
        };
        // From the pod's side, before the kernel knows the client: the
        // error goes to the kernel translated.
        let router = POD6; // any address on the pod's side
        for (kind, cut) in [(TOO_BIG, usize::MAX), (PORT_UNREACH6, 48)] {
            let what = format!("to the node, {kind:?}, cut at {cut}");
            let err = icmp6_error(router, NODE6, kind, &ip6_bytes(&sent, cut)).build();
            let out = lb.expect(&what, &err, XDP_PASS, Want::C(C::FibPassToKernel));
            assert_eq!(addrs(&out), (VIP6, CLIENT6), "{what}");
            let (ty, code, rest, quote) = error_parts6(&out);
            assert_eq!((ty, code, rest), kind, "{what}");
            same_but_hop_limit(&quote, &ip6_bytes(&q, cut), &what);
        }
        let mac = CLIENT_MAC.map(|b| format!("{b:02x}")).join(":");
        let client = std::net::Ipv6Addr::from(CLIENT6).to_string();
        let st = std::process::Command::new("ip")
            .args(["-6", "neigh", "replace", &client, "lladdr", &mac])
            .args(["dev", "v0", "nud", "permanent"])
            .status()
            .expect("ip neigh");
        assert!(st.success());
        let err = icmp6_error(router, NODE6, TOO_BIG, &ip6_bytes(&sent, usize::MAX)).build();
        let out = lb.expect("to the node", &err, XDP_TX, Want::C(C::IcmpErrorToClient));
        assert_eq!((&out[0..6], &out[6..12]), (&CLIENT_MAC[..], &NODE_MAC[..]));
        assert_eq!(out[21] + 1, err[21], "hop limit decremented");
        let (_, _, _, quote) = error_parts6(&out);
        same_but_hop_limit(&quote, &ip6_bytes(&q, usize::MAX), "to the node, resolved");

        // From the client's side, about the reply it got.
        let reply = lb.expect("the pod's reply", &r, XDP_TX, Want::C(C::RemoteReply));
        assert_eq!(addrs(&reply), (VIP6, CLIENT6));
        for (kind, cut) in [(TOO_BIG, usize::MAX), (PORT_UNREACH6, 48)] {
            let what = format!("to the VIP, {kind:?}, cut at {cut}");
            let err = icmp6_error(CLIENT_ROUTER6, VIP6, kind, &ip6_bytes(&reply, cut)).build();
            let out = lb.expect(&what, &err, XDP_TX, Want::C(C::IcmpErrorToBackend));
            assert_eq!(&out[0..6], &PEER_NODE_MAC, "{what}: to the pod's node");
            assert_eq!(addrs(&out), (NODE6, POD6_REMOTE), "{what}");
            assert_eq!(out[21] + 1, err[21], "{what}: hop limit decremented");
            let (ty, code, rest, quote) = error_parts6(&out);
            assert_eq!((ty, code, rest), kind, "{what}");
            same_but_hop_limit(&quote, &ip6_bytes(&r, cut), &what);
        }

        // From a source no host sends from: the kernel's to drop.
        for (what, from) in [("multicast", ALL_NODES), ("the node's own", NODE6)] {
            let err = icmp6_error(from, NODE6, TOO_BIG, &ip6_bytes(&sent, 48)).build();
            lb.expect_untouched(
                &format!("from a {what} source"),
                &err,
                XDP_PASS,
                Want::C(C::PassNodeTraffic),
            );
        }

        // Quoting no NAT port of ours: the node's.
        let mut stray = sent.clone();
        stray[54..56].copy_from_slice(&(nat_port ^ 1).to_be_bytes());
        let err = icmp6_error(router, NODE6, TOO_BIG, &ip6_bytes(&stray, 48)).build();
        lb.expect_untouched(
            "no flow's port",
            &err,
            XDP_PASS,
            Want::C(C::PassIcmpErrorNoFlow),
        );
    });
}

/// Uplink, direct-return flow: the error goes to the pod's node as the
/// flow's frames do, unchanged but for its Ethernet addresses (that node
/// holds the flow as a local one and translates it there); the flow's
/// entry is left as it was.
#[test]
fn icmpv6_errors_to_a_vip_about_a_direct_return_flow_go_to_the_pods_node_unchanged() {
    with_lb6(|lb| {
        let syn = tcp_to_vip(40000, 84, 0x02, b"");
        lb.expect("SYN", &syn, XDP_TX, Want::C(C::DirectNewFlow));
        let key = FlowKey::v6(CLIENT6, VIP6, 40000, 84, proto::TCP);
        let flow = lb.conntrack(&key).expect("the flow's entry");
        // The peer node's pod answered from the VIP (its `lb_egress6`).
        let reply = frame6(
            VIP6,
            CLIENT6,
            proto::TCP,
            tcp6(VIP6, 84, CLIENT6, 40000, 0x12, &[0x11; 64]),
        )
        .build();
        for kind in ERROR_KINDS {
            for cut in [usize::MAX, 48] {
                let what = format!("{kind:?}, quote cut at {cut}");
                let err = icmp6_error(CLIENT_ROUTER6, VIP6, kind, &ip6_bytes(&reply, cut)).build();
                let out = lb.expect(&what, &err, XDP_TX, Want::C(C::IcmpErrorToBackend));
                assert_eq!(&out[0..6], &PEER_NODE_MAC, "{what}: to the peer node");
                assert_eq!(&out[6..12], &NODE_MAC, "{what}: from this node");
                assert_eq!(&out[12..], &err[12..], "{what}: the rest as it came");
            }
        }
        assert_eq!(lb.conntrack(&key), Some(flow), "the flow, after its errors");
        // From the peer node itself: it would come back.
        let mut looped = icmp6_error(CLIENT_ROUTER6, VIP6, TOO_BIG, &ip6_bytes(&reply, 48));
        looped.eth_src = PEER_NODE_MAC;
        lb.expect_untouched(
            "from the peer node",
            &looped.build(),
            XDP_DROP,
            Want::D(D::DirectLoop),
        );
    });
}

/// Errors to a VIP that match no flow, and malformed ones: dropped and
/// counted, never changed. A quote with extension headers (a fragment
/// header too) matches no flow (policy in `icmp6_error`).
#[test]
fn icmpv6_errors_to_a_vip_that_match_no_flow_or_are_malformed_are_dropped_and_counted() {
    with_lb6(|lb| {
        let q = frame6(
            CLIENT6,
            VIP6,
            proto::UDP,
            udp6(CLIENT6, 5353, VIP6, 80, b"q"),
        );
        lb.expect("UDP query", &q.build(), XDP_PASS, Want::C(C::LocalNewFlow));
        let reply = |src: [u8; 16], sport: u16, dport: u16| {
            frame6(
                src,
                CLIENT6,
                proto::UDP,
                udp6(src, sport, CLIENT6, dport, b"answer"),
            )
        };
        let ours = reply(VIP6, 80, 5353);
        let to_vip = |quote: &[u8]| icmp6_error(CLIENT_ROUTER6, VIP6, TOO_BIG, quote).build();
        // The reply's own quote is translated: the cases below differ from
        // it in one thing each.
        lb.expect(
            "the flow's own",
            &to_vip(&ip6_bytes(&ours.build(), 48)),
            XDP_PASS,
            Want::C(C::IcmpErrorToBackend),
        );
        let with_ext = |next: u8, header: Vec<u8>| {
            let mut f = ours.clone();
            f.next = next;
            f.ext = header;
            ip6_bytes(&f.build(), usize::MAX)
        };
        let mut tcp_quote = ours.clone();
        tcp_quote.next = proto::TCP;
        tcp_quote.l4 = tcp6(VIP6, 80, CLIENT6, 5353, 0x12, b"");
        let mut icmp_quote = ours.clone();
        icmp_quote.next = ICMPV6;
        icmp_quote.l4 = icmp6(&VIP6, &CLIENT6, 129, 0, &[0; 8]);
        for (what, quote) in [
            (
                "another client port",
                ip6_bytes(&reply(VIP6, 80, 5354).build(), 48),
            ),
            (
                "another service port",
                ip6_bytes(&reply(VIP6, 81, 5353).build(), 48),
            ),
            ("another protocol's flow", ip6_bytes(&tcp_quote.build(), 48)),
            ("an ICMPv6 quote", ip6_bytes(&icmp_quote.build(), 48)),
            (
                "not from the VIP the error is sent to",
                ip6_bytes(&reply(VIP6_OTHER, 80, 5353).build(), 48),
            ),
            (
                "a fragment header in the quote",
                with_ext(44, ext(proto::UDP, [0, 1, 0, 0, 0, 1])),
            ),
            (
                "destination options in the quote",
                with_ext(60, ext(proto::UDP, [1, 4, 0, 0, 0, 0])),
            ),
        ] {
            lb.expect_untouched(what, &to_vip(&quote), XDP_DROP, Want::D(D::IcmpErrorNoFlow));
        }
        let mut v4 = ip6_bytes(&ours.build(), 48);
        v4[0] = 0x45;
        for (what, quote) in [
            ("a quote of 47 bytes", ip6_bytes(&ours.build(), 47)),
            ("an IPv6 header only", ip6_bytes(&ours.build(), 40)),
            ("no quote", Vec::new()),
            ("an IPv4 packet quoted", v4),
        ] {
            lb.expect_untouched(
                what,
                &to_vip(&quote),
                XDP_DROP,
                Want::D(D::IcmpErrorMalformed),
            );
        }
        // Cut short by the frame, not by its length fields.
        let mut cut = to_vip(&ip6_bytes(&ours.build(), usize::MAX));
        cut.truncate(54 + 8 + 44);
        lb.expect_untouched(
            "a frame cut in the quote",
            &cut,
            XDP_DROP,
            Want::D(D::Truncated),
        );
        // Behind an extension header of its own: policy (`ingress6`).
        let mut behind = icmp6_error(CLIENT_ROUTER6, VIP6, TOO_BIG, &ip6_bytes(&ours.build(), 48));
        behind.ext = ext(ICMPV6, [1, 4, 0, 0, 0, 0]);
        behind.next = 60;
        lb.expect_untouched(
            "behind options",
            &behind.build(),
            XDP_DROP,
            Want::D(D::Ipv6ExtHeader),
        );
        // The flow was never touched by any of them.
        let ct = lb
            .conntrack(&FlowKey::v6(CLIENT6, VIP6, 5353, 80, proto::UDP))
            .expect("the flow's entry");
        assert_eq!((ct.backend_id, ct.backend_ip), (LOCAL_ID, POD6));
    });
}

/// `lb_egress6`, local flow: the node's kernel (a Packet Too Big when the
/// pod's link has the smaller MTU), a router on the pod's side or the pod
/// itself answers a packet we sent on to the pod; the error leaves from
/// the VIP, quoting the client's own packet. Every error type, UDP and TCP,
/// whole quotes and cut ones. Errors about no flow leave untouched.
#[test]
fn icmpv6_errors_about_a_local_flow_leave_from_the_vip() {
    with_lb6(|lb| {
        let q = frame6(
            CLIENT6,
            VIP6,
            proto::UDP,
            udp6(CLIENT6, 5400, VIP6, 80, &[0x33; 1200]),
        )
        .build();
        let syn = tcp_to_vip(40120, 80, 0x02, &[0x44; 64]);
        for client_pkt in [q, syn] {
            let fwd = lb.expect("DNAT", &client_pkt, XDP_PASS, Want::C(C::LocalNewFlow));
            assert_eq!(addrs(&fwd).1, POD6);
            for (from, cut) in [
                (NODE6, usize::MAX),
                (NODE6, 48),
                (POD_ROUTER6, 58),
                (POD6, usize::MAX),
            ] {
                for kind in ERROR_KINDS {
                    let what =
                        format!("{kind:?} from {from:?}, next {}, cut {cut}", client_pkt[20]);
                    let mut err = icmp6_error(from, CLIENT6, kind, &ip6_bytes(&fwd, cut));
                    err.eth_src = NODE_MAC;
                    err.eth_dst = CLIENT_MAC;
                    let err = err.build();
                    let before = lb.counts();
                    let r = lb.run_egress(&err);
                    let d = lb.counts().minus(&before);
                    assert_eq!(r.action, TC_NEXT, "{what}");
                    assert_eq!(
                        (d.c(C::EgressIcmpError), d.c(C::EgressReply)),
                        (1, 0),
                        "{what}: {d:?}"
                    );
                    assert_eq!(r.out.len(), err.len(), "{what}: length");
                    assert_eq!(&r.out[..22], &err[..22], "{what}: all but the addresses");
                    assert_eq!(addrs(&r.out), (VIP6, CLIENT6), "{what}: from the VIP");
                    let (ty, code, rest, quote) = error_parts6(&r.out);
                    assert_eq!((ty, code, rest), kind, "{what}");
                    assert_eq!(quote, ip6_bytes(&client_pkt, cut), "{what}: quote");
                }
            }
        }
        // About no flow of ours (another client port), or not to the client
        // the quote is from: left as they are.
        let stray = frame6(
            CLIENT6,
            POD6,
            proto::UDP,
            udp6(CLIENT6, 5401, POD6, POD_PORT, b"x"),
        )
        .build();
        let fwd = lb.expect(
            "DNAT",
            &frame6(
                CLIENT6,
                VIP6,
                proto::UDP,
                udp6(CLIENT6, 5402, VIP6, 80, b"x"),
            )
            .build(),
            XDP_PASS,
            Want::C(C::LocalNewFlow),
        );
        for (what, err) in [
            (
                "no flow",
                icmp6_error(NODE6, CLIENT6, TOO_BIG, &ip6_bytes(&stray, 48)),
            ),
            (
                "to another host",
                icmp6_error(NODE6, CLIENT_ROUTER6, TOO_BIG, &ip6_bytes(&fwd, 48)),
            ),
            (
                "a quote of 47 bytes",
                icmp6_error(NODE6, CLIENT6, TOO_BIG, &ip6_bytes(&fwd, 47)),
            ),
        ] {
            let err = err.build();
            let before = lb.counts();
            let r = lb.run_egress(&err);
            let d = lb.counts().minus(&before);
            assert_eq!((r.action, &r.out), (TC_NEXT, &err), "{what}");
            assert_eq!(d.c(C::EgressIcmpError), 0, "{what}");
        }
    });
}

// ------------------------------------------------------------ random frames

const LOOPBACK6: [u8; 16] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];

/// Where the transport header of an IPv6 frame starts, its protocol and
/// where the payload ends, past the extension headers the generator writes
/// (hop-by-hop, routing, destination options); `None` for a fragment, a
/// header cut short or headers running past the payload.
fn transport6(f: &[u8]) -> Option<(usize, u8, usize)> {
    if f.len() < 54 || f[12..14] != [0x86, 0xdd] || f[14] >> 4 != 6 {
        return None;
    }
    let end = 54 + usize::from(u16::from_be_bytes([f[18], f[19]]));
    if end > f.len() {
        return None;
    }
    let (mut at, mut next) = (54, f[20]);
    for _ in 0..8 {
        match next {
            0 | 43 | 60 => {
                let h = f.get(at..at + 2)?;
                next = h[0];
                at += 8 + usize::from(h[1]) * 8;
                if at > end {
                    return None;
                }
            }
            44 => return None,
            _ => return Some((at, next, end)),
        }
    }
    None
}

/// Random field changes, lengths and broken checksums, as `datapath.rs`'s
/// `mangle` for IPv4.
fn mangle6(rng: &mut Rng, mut f: Frame6) -> Vec<u8> {
    let r = rng.u8();
    f.hop_limit = rng.pick(&[f.hop_limit, f.hop_limit, 64, 1, 0, r]);
    if rng.chance(3) {
        f.version = rng.u8() & 0xf;
    }
    if rng.chance(5) {
        f.payload_len = Some(rng.u16() % 200);
    }
    support::packet::damage(rng, f.build(), 40)
}

/// Extension headers before a transport header `last`: none to three of
/// the kinds the written policy steps over, refuses or does not know.
fn random_extensions(rng: &mut Rng, last: u8) -> (u8, Vec<u8>) {
    let kinds: Vec<u8> = (0..rng.below(4))
        .map(|_| rng.pick(&[0, 60, 60, 43, 44, 99]))
        .collect();
    let mut ext = Vec::new();
    for (i, _) in kinds.iter().enumerate() {
        let next = kinds.get(i + 1).copied().unwrap_or(last);
        let mut data = [0u8; 6];
        if kinds[i] == 43 {
            // Routing type 4, segments left 0 (passes) or 1 (refused).
            data[0] = 4;
            data[1] = rng.pick(&[0, 0, 1]);
        }
        ext.extend(self::ext(next, data));
    }
    (kinds.first().copied().unwrap_or(last), ext)
}

/// One random frame towards the node: garbage, solicitations, echo
/// requests, ICMPv6 errors, pods' replies to NAT ports (`replies`: the
/// IPv6 reverse entries) and TCP/UDP to VIPs, the node and others, with
/// extension headers.
fn random_frame6(rng: &mut Rng, replies: &[(FlowKey, lb_common::RevNatValue)]) -> Vec<u8> {
    let dests = [VIP6, VIP6, VIP6, VIP6_OTHER, NODE6, NOT_VIP6];
    match rng.below(10) {
        0 => {
            let len = 14 + rng.index(120);
            let mut f = rng.bytes(len);
            if rng.chance(80) {
                f[12..14].copy_from_slice(&[0x86, 0xdd]);
            }
            if rng.chance(50) && f.len() > 14 {
                f[14] = 0x60;
            }
            f
        }
        1 => random_solicitation(rng),
        2 => {
            let src = rng.pick(&[CLIENT6, CLIENT6, POD6_REMOTE, LOOPBACK6]);
            let f = echo_request(src, rng.pick(&dests), &rng.bytes_upto(64));
            mangle6(rng, f)
        }
        3 => {
            let quoted = if rng.chance(50) {
                frame6(
                    VIP6,
                    CLIENT6,
                    proto::UDP,
                    udp6(VIP6, 80, CLIENT6, rng.u16(), b"q"),
                )
                .build()
            } else {
                let nat = replies.first().map_or(62000, |(k, _)| k.dport);
                frame6(
                    NODE6,
                    POD6_REMOTE,
                    proto::TCP,
                    tcp6(NODE6, nat, POD6_REMOTE, POD_PORT, 0x10, b""),
                )
                .build()
            };
            let kind = rng.pick(&ERROR_KINDS);
            let cut = rng.pick(&[usize::MAX, 48, 58, 40, 20]);
            let src = rng.pick(&[CLIENT6, POD6_REMOTE, POD_ROUTER6, ALL_NODES]);
            let f = icmp6_error(
                src,
                rng.pick(&[VIP6, NODE6]),
                kind,
                &ip6_bytes(&quoted, cut),
            );
            mangle6(rng, f)
        }
        4 if !replies.is_empty() => {
            let (k, _) = replies[rng.index(replies.len())];
            let (src, dst) = (k.src, k.dst);
            let dport = if rng.chance(20) {
                k.dport.wrapping_add(1)
            } else {
                k.dport
            };
            let l4 = if k.proto == proto::TCP {
                tcp6(
                    src,
                    k.sport,
                    dst,
                    dport,
                    rng.pick(&[0x10, 0x12, 0x11, 0x04]),
                    &rng.bytes_upto(32),
                )
            } else {
                udp6(src, k.sport, dst, dport, &rng.bytes_upto(32))
            };
            let mut f = Frame6::new((PEER_NODE_MAC, NODE_MAC), src, dst, k.proto, l4);
            if rng.chance(10) {
                (f.next, f.ext) = random_extensions(rng, k.proto);
            }
            mangle6(rng, f)
        }
        _ => random_to_addresses(rng, &dests),
    }
}

/// A Neighbor Solicitation for a VIP, the node or another host, often
/// right, sometimes damaged.
fn random_solicitation(rng: &mut Rng) -> Vec<u8> {
    let target = rng.pick(&[VIP6, VIP6, VIP6_OTHER, NODE6, NOT_VIP6]);
    let src = rng.pick(&[CLIENT6, CLIENT6, UNSPECIFIED, VIP6, ALL_NODES]);
    let dst = rng.pick(&[solicited_node(&target), target, ALL_NODES, NODE6]);
    let options = match rng.below(5) {
        0 => Vec::new(),
        1 => {
            let mut o = vec![14, 1, 1, 2, 3, 4, 5, 6];
            o.extend(source_ll(CLIENT_MAC));
            o
        }
        2 => rng.bytes_upto(24),
        3 => vec![1, 0, 0, 0, 0, 0, 0, 0],
        _ => source_ll(CLIENT_MAC),
    };
    let mut f = ns(src, dst, &target, &options);
    if rng.chance(10) {
        f.l4[1] = rng.u8();
    }
    if rng.chance(70) {
        f.build()
    } else {
        mangle6(rng, f)
    }
}

/// TCP, UDP or SCTP from clients and others to `dests`, with extension
/// headers now and then, damaged or not.
fn random_to_addresses(rng: &mut Rng, dests: &[[u8; 16]]) -> Vec<u8> {
    let dst = rng.pick(dests);
    let src = rng.pick(&[CLIENT6, CLIENT6, CLIENT6, POD6_REMOTE, ALL_NODES]);
    let r = rng.u16();
    let dport = rng.pick(&[80, 80, 81, 81, 84, 85, 86, 22, r]);
    let sport = 1024 + rng.u16() % 2000;
    let p = rng.pick(&[proto::TCP, proto::TCP, proto::UDP, proto::UDP, 132]);
    let data = rng.bytes_upto(48);
    let l4 = match p {
        proto::TCP => {
            let r = rng.u8();
            tcp6(
                src,
                sport,
                dst,
                dport,
                rng.pick(&[0x02, 0x10, 0x12, 0x18, 0x11, 0x04, r]),
                &data,
            )
        }
        proto::UDP => udp6(src, sport, dst, dport, &data),
        _ => data,
    };
    let mut f = frame6(src, dst, p, l4);
    if rng.chance(25) {
        (f.next, f.ext) = random_extensions(rng, p);
    }
    mangle6(rng, f)
}

/// What may come of a frame `lb_ingress` changed: an advertisement of the
/// announced VIP (only for a solicitation that verifies), an echo reply
/// (only for a request that verifies), or the same frame translated, its
/// transport checksum as valid or invalid as it came, between addresses
/// the scenario has.
#[track_caller]
fn check_changed6(input: &[u8], out: &[u8], action: u32) {
    assert_ne!(action, XDP_DROP, "a dropped frame was modified");
    let icmp_type = |f: &[u8]| {
        transport6(f)
            .filter(|t| t.1 == ICMPV6)
            .and_then(|t| f.get(t.0).copied())
    };
    if icmp_type(out) == Some(136) {
        assert_eq!(action, XDP_TX);
        let (at, _, end) = transport6(input).expect("answered a whole packet");
        assert_eq!(at, 54, "a solicitation behind extension headers answered");
        assert_eq!(
            icmp_type(input),
            Some(135),
            "advertisement for what was no solicitation"
        );
        let (src, dst) = addrs(input);
        assert!(
            l4_verifies6(&src, &dst, ICMPV6, &input[54..end]),
            "answered a solicitation that does not verify"
        );
        assert_eq!(
            input[21], 255,
            "answered a solicitation that crossed a router"
        );
        assert_eq!(
            &input[62..78],
            &VIP6,
            "answered for an address not announced here"
        );
        let (osrc, odst) = addrs(out);
        assert_eq!(osrc, VIP6);
        assert_eq!(&out[6..12], &NODE_MAC);
        assert_eq!(&out[62..78], &VIP6);
        assert_eq!(out[21], 255);
        let (_, _, oend) = transport6(out).expect("a whole advertisement");
        assert_eq!(oend, out.len());
        assert!(
            l4_verifies6(&osrc, &odst, ICMPV6, &out[54..]),
            "advertisement checksum"
        );
        assert_eq!(&out[78..80], &[2, 1], "target link-layer option");
        assert_eq!(&out[80..86], &NODE_MAC);
        return;
    }
    assert_eq!(out.len(), input.len(), "length changed");
    let (Some((at, p, end)), Some(o)) = (transport6(input), transport6(out)) else {
        panic!("only whole, unfragmented IPv6 packets are rewritten");
    };
    assert_eq!((at, p, end), o, "headers moved");
    let (src, dst) = addrs(input);
    let (osrc, odst) = addrs(out);
    let valid_in = verifies6(&src, &dst, p, &input[at..end]);
    let valid_out = verifies6(&osrc, &odst, p, &out[at..end]);
    if icmp_type(out) == Some(129) {
        assert_eq!(icmp_type(input), Some(128));
        assert!(
            valid_in && valid_out,
            "echo reply to a request that does not verify, or broken"
        );
        assert_eq!((osrc, odst), (dst, src));
        assert!(
            [VIP6, VIP6_OTHER].contains(&dst),
            "echo answered for {dst:?}"
        );
        return;
    }
    assert_eq!(valid_out, valid_in, "transport checksum validity changed");
    assert!(!martian6(&src), "translated a packet from {src:?}");
    if dst == NODE6 {
        // A reply (or an error about a packet) of a full-NAT flow: back to
        // its client, from the VIP.
        assert_eq!(osrc, VIP6, "a reply's source");
        assert!(!martian6(&odst), "a reply to {odst:?}");
    } else {
        // To a VIP: to one of its pods, from the client or the node.
        assert!([NODE6, src].contains(&osrc), "source {osrc:?}");
        assert!(
            [POD6, POD6_REMOTE, POD6_DIRECT, dst].contains(&odst),
            "destination {odst:?}"
        );
    }
}

/// Whether a transport segment verifies; a zero UDP checksum never does
/// over IPv6 (RFC 8200 8.1: "none" is not allowed, receivers discard it),
/// whatever the sum of the rest happens to be.
fn verifies6(src: &[u8; 16], dst: &[u8; 16], next: u8, l4: &[u8]) -> bool {
    !(next == proto::UDP && l4.get(6..8) == Some(&[0, 0])) && l4_verifies6(src, dst, next, l4)
}

/// A source the data path must never translate: unspecified, loopback,
/// multicast, IPv4-mapped, the node's own.
fn martian6(a: &[u8; 16]) -> bool {
    let n = u128::from_be_bytes(*a);
    n <= 1 || a[0] == 0xff || n >> 32 == 0xffff || *a == NODE6
}

/// `random_frames` (datapath.rs) for IPv6: 60,000 random, damaged and
/// well-formed frames through `lb_ingress` (and on to `lb_ingress6`,
/// `lb_service6` or `lb_nat6`), flows piling up in the tables as they come
/// (nothing is reset between frames): each frame counted once, with one
/// outcome; whatever changed checked by `check_changed6`; then pods'
/// replies, damaged or not, through `lb_egress` (on to `lb_egress6`), whose
/// changes keep the checksums' validity and come from the VIP.
#[test]
fn random_ipv6_frames() {
    const FRAMES: u64 = 60_000;
    let seed = random_seed("random_ipv6_frames");
    with_lb6(|lb| {
        let config = lb.config().with_node_ip6(NODE6);
        lb_userspace::dataplane::writer::set_config(lb.h.maps_mut(), config).expect("config");
        let mut rng = Rng::new(seed);
        let d = random_frames_through(
            lb,
            (seed, FRAMES, lb_common::flow::family::V6),
            |replies| random_frame6(&mut rng, replies),
            check_changed6,
        );
        for c in [
            C::LocalNewFlow,
            C::LocalEstablished,
            C::RemoteNewFlow,
            C::ReplyToLearnedMac,
            C::DirectNewFlow,
            C::NdpAdvert,
            C::IcmpEchoReply,
        ] {
            assert!(d.c(c) > 0, "{c:?} never happened: {d:?}");
        }

        random_egress6(lb, &mut rng);
    });
}

/// Pods' replies of local flows and ICMPv6 errors about their packets,
/// damaged or not, through `lb_egress`: what it changes comes from the VIP
/// and keeps its checksum's validity.
fn random_egress6(lb: &mut Lb, rng: &mut Rng) {
    for sport in 42000..42020 {
        lb.run(&tcp_to_vip(sport, 80, 0x02, b""));
    }
    let before = lb.counts();
    for i in 0..10_000u32 {
        let sport = 42000 + u16::try_from(i % 24).expect("small");
        let l4 = if rng.chance(50) {
            tcp6(POD6, POD_PORT, CLIENT6, sport, 0x12, &rng.bytes_upto(32))
        } else {
            udp6(POD6, POD_PORT, CLIENT6, sport, &rng.bytes_upto(32))
        };
        let next = if l4.len() >= 20 && rng.chance(50) {
            proto::TCP
        } else {
            proto::UDP
        };
        let frame = if rng.chance(20) {
            // An error about a packet sent on to the pod, from the node,
            // a router on the pod's side or the pod.
            let sent = frame6(
                CLIENT6,
                POD6,
                proto::TCP,
                tcp6(CLIENT6, sport, POD6, POD_PORT, 0x10, b""),
            )
            .build();
            let cut = rng.pick(&[usize::MAX, 48, 58]);
            let from = rng.pick(&[NODE6, POD_ROUTER6, POD6]);
            let mut e = icmp6_error(
                from,
                CLIENT6,
                rng.pick(&ERROR_KINDS),
                &ip6_bytes(&sent, cut),
            );
            (e.eth_src, e.eth_dst) = (NODE_MAC, CLIENT_MAC);
            e
        } else {
            Frame6::new((NODE_MAC, CLIENT_MAC), POD6, CLIENT6, next, l4)
        };
        let mut f = mangle6(rng, frame);
        // BPF_PROG_TEST_RUN refuses skbs shorter than the IPv6 header.
        if f.len() < 54 {
            f.resize(54, 0);
        }
        let r = lb
            .try_run_egress(&f)
            .unwrap_or_else(|e| panic!("egress frame {i} {f:02x?}: {e}"));
        assert_eq!(r.action, TC_NEXT);
        if r.out != f {
            assert_eq!(r.out.len(), f.len(), "egress frame {i}: length");
            assert_eq!(
                (addrs(&r.out).0, &r.out[38..54], r.out[20]),
                (VIP6, &f[38..54], f[20]),
                "egress frame {i}: from the VIP, the rest of the header as it was"
            );
            let Some((at, p, end)) = transport6(&f) else {
                // Shorter than its payload length, as a non-linear
                // skb's linear part is: the ports and checksum are
                // rewritten (incrementally), nothing past them.
                // (An error's quote is translated too: not compared.)
                let header = match f[20] {
                    proto::TCP => 20,
                    ICMPV6 => f.len(),
                    _ => 8,
                };
                let l4_end = r.out.len().min(54 + header);
                assert_eq!(
                    &r.out[l4_end..],
                    &f[l4_end..],
                    "egress frame {i}: past the header"
                );
                continue;
            };
            let (src, dst) = addrs(&f);
            assert_eq!(
                verifies6(&VIP6, &dst, p, &r.out[at..end]),
                verifies6(&src, &dst, p, &f[at..end]),
                "egress frame {i}: checksum validity changed\n in: {f:02x?}\nout: {:02x?}",
                r.out
            );
        }
    }
    let d = lb.counts().minus(&before);
    assert!(
        d.c(C::EgressReply) > 0 && d.c(C::EgressIcmpError) > 0,
        "replies and errors translated: {d:?}"
    );
}
