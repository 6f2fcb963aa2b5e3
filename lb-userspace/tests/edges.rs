//! Integration tests of the agent's kernel edges, each in its own network
//! namespaces (never the host's interfaces): loader attach → adopt →
//! cleanup with pinned maps and links, BTF visible to bpftool, managed
//! neighbour entries, gratuitous ARP on the wire, the capabilities the agent
//! needs. Root and a real kernel.

use std::{
    collections::BTreeSet,
    net::Ipv4Addr,
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use lb_common::maps;
use lb_userspace::{
    dataplane::loader,
    dataplane::maps::{Maps, PinDir},
    net::garp,
    net::ndp,
    net::neigh,
    net::netdev::Interface,
};
use onehop_testkit::{
    bpffs::PinRoot,
    netns::in_netns,
    topology::{Topology, node_ip6, pod_ip6},
};

/// One node and no pods: where most of these tests attach.
fn one_node() -> Topology {
    Topology::builder()
        .nodes(1)
        .pods_per_node(0)
        .build()
        .expect("topology")
}

fn small_sizes() -> loader::Sizes {
    loader::Sizes {
        maglev_slots: 65_536,
        conntrack: 4096,
        rev_nat: 4096,
        affinity: 1024,
        ..loader::Sizes::default()
    }
}

fn output(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Program id of the program inside a pinned link (`bpftool link show`).
fn link_prog_id(link: &Path) -> u64 {
    let text = output(
        Command::new("bpftool")
            .args(["link", "show", "pinned"])
            .arg(link),
    );
    let id = text
        .split_whitespace()
        .skip_while(|w| *w != "prog")
        .nth(1)
        .unwrap_or_else(|| panic!("no prog id in {text:?}"));
    id.parse().unwrap_or_else(|e| panic!("prog id {id:?}: {e}"))
}

fn attach_in(ns: &onehop_testkit::netns::Netns, root: &Path) -> anyhow::Result<bool> {
    attach_egress_in(ns, root).map(|(adopted, _)| adopted)
}

/// [`attach_in`], also saying how the egress program was attached (TCX, or netlink on
/// kernels without TCX).
fn attach_egress_in(
    ns: &onehop_testkit::netns::Netns,
    root: &Path,
) -> anyhow::Result<(bool, loader::EgressAttachment)> {
    in_netns(ns, || {
        let iface = Interface::lookup("eth0")?;
        loader::attach(&iface, root, small_sizes(), loader::XdpAttachMode::Auto)
            .map(|dp| (dp.adopted, dp.egress))
    })?
}

/// Id of the program in the onehop egress filter of `eth0` (`tc filter show`), if any.
fn egress_filter_prog_id(ns: &onehop_testkit::netns::Netns) -> Option<u64> {
    let text = output(Command::new("tc").args([
        "-n",
        ns.name(),
        "filter",
        "show",
        "dev",
        "eth0",
        "egress",
    ]));
    let line = text.lines().find(|l| l.contains("lb_egress"))?;
    let id = line
        .split_whitespace()
        .skip_while(|w| *w != "id")
        .nth(1)
        .unwrap_or_else(|| panic!("no program id in {line:?}"));
    Some(id.parse().unwrap_or_else(|e| panic!("prog id {id:?}: {e}")))
}

/// Id of the program of the egress attachment: the TCX link's, or the netlink filter's
/// (whose pinned program must be that same one).
fn egress_prog_id(
    ns: &onehop_testkit::netns::Netns,
    pins: &PinDir,
    egress: loader::EgressAttachment,
) -> u64 {
    match egress {
        loader::EgressAttachment::Tcx => link_prog_id(&pins.entry(maps::programs::EGRESS_LINK)),
        loader::EgressAttachment::Netlink => {
            let id = egress_filter_prog_id(ns).expect("no lb_egress filter on eth0");
            let pinned = output(
                Command::new("bpftool")
                    .args(["prog", "show", "pinned"])
                    .arg(pins.entry(maps::programs::EGRESS_TC_PROG)),
            );
            assert!(
                pinned.starts_with(&format!("{id}:")),
                "the pinned egress program is not the filter's (id {id}):\n{pinned}"
            );
            id
        }
    }
}

/// The interface's first global IPv6 address comes with its prefix length:
/// the agent's IPv6 segment (which pods on other nodes direct return may
/// reach, the rest going by full NAT).
#[test]
fn the_interface_lookup_reads_the_ipv6_address_with_its_prefix() {
    let topo = Topology::builder()
        .nodes(1)
        .pods_per_node(1)
        .build()
        .expect("topology");
    let node = topo.node(1);
    let before = in_netns(node.ns(), || Interface::lookup("eth0"))
        .expect("netns")
        .expect("eth0");
    assert_eq!((before.ipv6, before.ipv6_prefix_len), (None, None));
    topo.ipv6_node(1).expect("IPv6 on node 1");
    let iface = in_netns(node.ns(), || Interface::lookup("eth0"))
        .expect("netns")
        .expect("eth0");
    assert_eq!(
        (iface.ipv6, iface.ipv6_prefix_len),
        (Some(node_ip6(1)), Some(64))
    );
}

#[test]
fn attach_then_restart_adopts_pins_and_swaps_programs_then_cleanup_detaches() {
    let topo = Topology::builder()
        .nodes(1)
        .pods_per_node(1)
        .build()
        .expect("topology");
    let node = topo.node(1);
    let root = PinRoot::unique("lifecycle").expect("pin root");
    let pins = PinDir::new(root.path(), "eth0");

    let iface = in_netns(node.ns(), || Interface::lookup("eth0"))
        .expect("netns")
        .expect("eth0");
    assert_eq!(iface.ipv4, Some(node.ip()));
    assert_eq!(iface.mac, node.mac().octets());

    let (adopted, egress) = attach_egress_in(node.ns(), root.path()).expect("first attach");
    assert!(!adopted, "nothing was pinned before");
    // Kernels without TCX get a netlink filter, whose program is pinned instead of a link.
    let egress_pin = match egress {
        loader::EgressAttachment::Tcx => maps::programs::EGRESS_LINK,
        loader::EgressAttachment::Netlink => maps::programs::EGRESS_TC_PROG,
    };
    for name in maps::ALL
        .iter()
        .chain(&[maps::programs::INGRESS_LINK, egress_pin])
    {
        assert!(pins.entry(name).exists(), "{name} is not pinned");
    }
    // The loader (its Dataplane) is gone; the programs stay attached.
    let links = output(Command::new("ip").args(["-n", node.ns().name(), "link", "show", "eth0"]));
    assert!(
        links.contains("xdp"),
        "XDP detached after the loader dropped:\n{links}"
    );
    let xdp_link = pins.entry(maps::programs::INGRESS_LINK);
    let (xdp_before, tc_before) = (
        link_prog_id(&xdp_link),
        egress_prog_id(node.ns(), &pins, egress),
    );

    // Something in the maps that a restart must keep.
    let vip = lb_common::Ipv4Key {
        addr: [192, 168, 50, 200],
    };
    Maps::open(&pins)
        .expect("open maps")
        .vips
        .insert(vip, lb_common::VipValue { flags: 1 }, 0)
        .expect("insert vip");

    let (adopted, egress_again) = attach_egress_in(node.ns(), root.path()).expect("second attach");
    assert!(adopted, "the restart must adopt the pins");
    assert_eq!(
        egress_again, egress,
        "the restart attached egress another way"
    );
    let (xdp_after, tc_after) = (
        link_prog_id(&xdp_link),
        egress_prog_id(node.ns(), &pins, egress),
    );
    assert_ne!(
        xdp_before, xdp_after,
        "the new XDP program was not swapped into the link"
    );
    assert_ne!(
        tc_before, tc_after,
        "the new TC program was not swapped into the link"
    );
    let m = Maps::open(&pins).expect("open maps");
    assert!(
        m.vips.get(&vip, 0).is_ok(),
        "map contents lost across the restart"
    );
    drop(m);

    // bpftool pretty-prints with field names thanks to BTF.
    let dump = output(
        Command::new("bpftool")
            .args(["map", "dump", "pinned"])
            .arg(pins.entry(maps::CONFIG)),
    );
    for field in ["node_ip", "nat_port_min", "ready"] {
        assert!(dump.contains(field), "bpftool shows no {field}:\n{dump}");
    }

    cleanup_detaches_everything(node.ns(), root.path(), &pins);
    assert!(
        !loader::cleanup(root.path(), "eth0").expect("second cleanup"),
        "nothing left to clean"
    );
}

/// `loader::cleanup` removes the pins and detaches XDP and the egress filter.
fn cleanup_detaches_everything(ns: &onehop_testkit::netns::Netns, root: &Path, pins: &PinDir) {
    // In the interface's namespace, as `onehop cleanup` runs: a netlink filter is found
    // through the interface.
    assert!(
        in_netns(ns, || loader::cleanup(root, "eth0"))
            .expect("netns")
            .expect("cleanup")
    );
    assert!(!pins.path().exists());
    // Links are released asynchronously once their last reference is gone.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let links = output(Command::new("ip").args(["-n", ns.name(), "link", "show", "eth0"]));
        if !links.contains("xdp") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "XDP still attached after cleanup:\n{links}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        egress_filter_prog_id(ns),
        None,
        "the egress filter outlived cleanup"
    );
}

#[test]
fn adopting_maps_with_another_layout_is_refused_with_advice() {
    let topo = one_node();
    let root = PinRoot::unique("layout").expect("pin root");
    let pins = PinDir::new(root.path(), "eth0");
    std::fs::create_dir_all(pins.path()).expect("mkdir");
    // A `vips` map as an older, incompatible build might have left it.
    output(
        Command::new("bpftool")
            .args(["map", "create"])
            .arg(pins.entry(maps::VIPS))
            .args([
                "type", "hash", "key", "4", "value", "8", "entries", "16", "name", "vips",
            ]),
    );
    let err = attach_in(topo.node(1).ns(), root.path()).expect_err("attach must fail");
    let msg = format!("{err:#}");
    assert!(msg.contains("onehop cleanup"), "{msg}");
}

/// An agent upgraded from a release whose `arp_stats` was a per-CPU hash of
/// 4,096 addresses (same key and value sizes, another kind) creates it anew
/// with room for every VIP, instead of failing to open it or keeping it small.
#[test]
fn an_earlier_releases_arp_counters_are_created_anew() {
    let topo = one_node();
    let root = PinRoot::unique("arpstats").expect("pin root");
    let pins = PinDir::new(root.path(), "eth0");
    assert!(!attach_in(topo.node(1).ns(), root.path()).expect("first attach"));
    std::fs::remove_file(pins.entry(maps::ARP_STATS)).expect("unpin arp_stats");
    output(
        Command::new("bpftool")
            .args(["map", "create"])
            .arg(pins.entry(maps::ARP_STATS))
            .args([
                "type",
                "percpu_hash",
                "key",
                "4",
                "value",
                "16",
                "entries",
                "4096",
                "name",
                "arp_stats",
                "flags",
                "1",
            ]),
    );
    assert!(attach_in(topo.node(1).ns(), root.path()).expect("upgrade attach"));
    Maps::open(&pins).expect("the upgraded agent opens every map");
    let info = aya::maps::MapData::from_pin(pins.entry(maps::ARP_STATS))
        .and_then(|m| m.info())
        .expect("arp_stats info");
    assert_eq!(
        (info.max_entries(), info.map_flags()),
        (maps::MAX_VIPS, maps::BPF_F_NO_PREALLOC)
    );
}

/// Pins at `at` a map of `backends6`'s key and value sizes, of `kind`
/// (`bpftool`'s name; a hash is allocated as inserted, as the version before
/// the array made it), holding `backends`.
fn create_backends6(at: &Path, kind: &str, backends: &[(u32, lb_common::BackendValue6)]) {
    use aya::maps::{HashMap, Map, MapData};
    let flags = if kind == "hash" { "1" } else { "0" };
    output(
        Command::new("bpftool")
            .args(["map", "create"])
            .arg(at)
            .args(["type", kind, "key", "4", "value", "40", "entries", "262144"])
            .args(["name", "backends6", "flags", flags]),
    );
    if backends.is_empty() {
        return;
    }
    let data = MapData::from_pin(at).expect("the earlier map");
    let mut earlier: HashMap<MapData, u32, lb_common::BackendValue6> =
        HashMap::try_from(Map::from_map_data(data).expect("map")).expect("a hash");
    for (id, b) in backends {
        earlier.insert(id, b, 0).expect("the earlier hash's entry");
    }
}

/// An agent upgraded from a version whose `backends6` was a hash keyed by
/// backend id (same key and value sizes, another kind) carries its entries
/// into the new array before any program reads it, so the IPv6 backends
/// keep their ids, which their flows name: from the hash at its pin, and
/// from one an earlier start set aside and died before it had copied (with
/// or without the new array it had created, empty).
#[test]
fn an_earlier_versions_ipv6_backends_are_carried_into_the_array() {
    use aya::maps::{Array, Map, MapData};
    use lb_common::{BackendValue6, backend_flags};
    use lb_userspace::dataplane::reader;
    let topo = one_node();
    let ns = topo.node(1).ns();
    let root = PinRoot::unique("backends6").expect("pin root");
    let pins = PinDir::new(root.path(), "eth0");
    let aside = pins.entry("backends6_earlier");
    assert!(!attach_in(ns, root.path()).expect("first attach"));
    let valid = backend_flags::VALID;
    let backends: Vec<(u32, BackendValue6)> = [
        (3, 0x0a, valid | backend_flags::LOCAL),
        (7, 0x0b, valid | backend_flags::DIRECT),
        (200_000, 0x0c, valid | backend_flags::DRAINING),
    ]
    .into_iter()
    .map(|(id, last, flags)| {
        let mut pod = [0xfd, 0, 0, 0x42, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        pod[15] = last;
        let node = [0xfd, 0, 0, 0x50, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x12];
        (id, BackendValue6::new(pod, node, 8080, flags))
    })
    .collect();
    let mut maps = Maps::open(&pins).expect("maps");
    for (id, b) in &backends {
        maps.backends6.set(*id, *b, 0).expect("backends6");
    }
    let before = reader::read(&maps).expect("read");
    assert_eq!(
        before
            .backends6
            .iter()
            .map(|(k, v)| (*k, *v))
            .collect::<Vec<_>>(),
        backends
    );
    drop(maps);
    for (at, beside_an_empty_array) in [
        (pins.entry(maps::BACKENDS6), false),
        (aside.clone(), false),
        (aside.clone(), true),
    ] {
        let what = format!(
            "{} (beside an empty array: {beside_an_empty_array})",
            at.display()
        );
        // The programs still attached keep the array they were loaded with.
        std::fs::remove_file(pins.entry(maps::BACKENDS6)).expect("unpin backends6");
        if beside_an_empty_array {
            create_backends6(&pins.entry(maps::BACKENDS6), "array", &[]);
        }
        create_backends6(&at, "hash", &backends);
        assert!(
            attach_in(ns, root.path()).expect("upgrade attach"),
            "{what}"
        );
        assert!(!aside.exists(), "{what}: the earlier hash is still pinned");
        let data = MapData::from_pin(pins.entry(maps::BACKENDS6)).expect("backends6");
        let _: Array<MapData, BackendValue6> =
            Array::try_from(Map::from_map_data(data).expect("map")).expect("an array");
        let maps = Maps::open(&pins).expect("the upgraded agent opens every map");
        assert_eq!(
            reader::read(&maps).expect("read").backends6,
            before.backends6,
            "{what}"
        );
    }
}

#[test]
fn managed_neighbour_gets_resolved_by_the_kernel_and_removed() {
    let topo = Topology::builder()
        .nodes(2)
        .pods_per_node(0)
        .build()
        .expect("topology");
    let (n1, n2) = (topo.node(1), topo.node(2));
    let show = || {
        output(Command::new("ip").args([
            "-n",
            n1.ns().name(),
            "neigh",
            "show",
            &n2.ip().to_string(),
        ]))
    };
    in_netns(n1.ns(), || {
        let iface = Interface::lookup("eth0").expect("eth0");
        neigh::ensure_managed(iface.index, n2.ip()).expect("add");
        neigh::ensure_managed(iface.index, n2.ip()).expect("adding twice is idempotent");
    })
    .expect("netns");
    let want = n2.mac().to_string();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = show();
        if text.contains("managed") && text.contains(&want) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "kernel did not resolve the managed entry: {text:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    in_netns(n1.ns(), || {
        let iface = Interface::lookup("eth0").expect("eth0");
        neigh::remove(iface.index, n2.ip()).expect("remove");
        neigh::remove(iface.index, n2.ip()).expect("removing a missing entry is fine");
    })
    .expect("netns");
    assert!(!show().contains("managed"), "entry still there: {}", show());
}

#[test]
fn gratuitous_arp_leaves_the_interface_with_vip_as_sender_and_target() {
    let topo = one_node();
    let node = topo.node(1);
    let vip = Ipv4Addr::new(192, 168, 50, 210);
    let cap = onehop_testkit::capture::Capture::open(topo.lan(), node.lan_peer()).expect("capture");
    in_netns(node.ns(), || {
        let iface = Interface::lookup("eth0").expect("eth0");
        garp::ArpSender::new(iface.index)
            .expect("socket")
            .announce(iface.mac, vip)
            .expect("send");
    })
    .expect("netns");
    let frame = cap
        .next_matching(Duration::from_secs(2), |f| {
            f.data.len() >= 42 && f.data[12..14] == [0x08, 0x06]
        })
        .expect("capture")
        .expect("no ARP frame seen on the LAN");
    assert_eq!(
        frame.data[..42],
        garp::frame(node.mac().octets(), vip),
        "unexpected frame on the wire"
    );
    // The same frame read by an independent decoder, field by field
    // (`garp::frame` is the code under test, not a reference).
    let p = etherparse::SlicedPacket::from_ethernet(&frame.data).expect("parses as Ethernet");
    let Some(etherparse::LinkSlice::Ethernet2(eth)) = &p.link else {
        panic!("no Ethernet II header: {:?}", p.link);
    };
    assert_eq!(eth.destination(), [0xff; 6], "broadcast");
    assert_eq!(eth.source(), node.mac().octets(), "from the node's own MAC");
    assert_eq!(eth.ether_type(), etherparse::EtherType::ARP);
    let Some(etherparse::NetSlice::Arp(arp)) = &p.net else {
        panic!("no ARP payload: {:?}", p.net);
    };
    assert_eq!(arp.hw_addr_type(), etherparse::ArpHardwareId::ETHERNET);
    assert_eq!(arp.proto_addr_type(), etherparse::EtherType::IPV4);
    assert_eq!(arp.operation(), etherparse::ArpOperation::REQUEST);
    assert_eq!(arp.sender_hw_addr(), node.mac().octets());
    assert_eq!(arp.sender_protocol_addr(), vip.octets());
    assert_eq!(arp.target_hw_addr(), [0; 6]);
    assert_eq!(arp.target_protocol_addr(), vip.octets());
}

/// An unsolicited Neighbor Advertisement of an IPv6 VIP, as it leaves the
/// interface: every field, and the ICMPv6 checksum recomputed independently.
#[test]
fn unsolicited_na_leaves_the_interface_with_every_field() {
    let topo = one_node();
    let node = topo.node(1);
    let vip: std::net::Ipv6Addr = "fd00:60::1:210".parse().expect("an IPv6 address");
    let cap = onehop_testkit::capture::Capture::open(topo.lan(), node.lan_peer()).expect("capture");
    in_netns(node.ns(), || {
        let iface = Interface::lookup("eth0").expect("eth0");
        ndp::NdpSender::new(iface.index)
            .expect("socket")
            .advertise(iface.mac, vip)
            .expect("send");
    })
    .expect("netns");
    // The node's own IPv6 stack may send other ICMPv6 (router solicitations,
    // MLD reports): only an advertisement whose target is the VIP is ours.
    let frame = cap
        .next_matching(Duration::from_secs(2), |f| {
            f.data.len() >= ndp::NA_FRAME_LEN
                && f.data[12..14] == [0x86, 0xdd]
                && f.data[20] == 58
                && f.data[54] == 136
                && f.data[62..78] == vip.octets()
        })
        .expect("capture")
        .expect("no Neighbor Advertisement seen on the LAN");
    let mac = node.mac().octets();
    assert_eq!(
        frame.data[..ndp::NA_FRAME_LEN],
        ndp::na_frame(mac, vip),
        "unexpected frame on the wire"
    );
    let d = &frame.data;
    assert_eq!(&d[0..6], &[0x33, 0x33, 0, 0, 0, 1], "to all nodes");
    assert_eq!(&d[6..12], &mac, "from the node's own MAC");
    assert_eq!(d[14] >> 4, 6, "IPv6");
    assert_eq!(u16::from_be_bytes([d[18], d[19]]), 32, "payload length");
    assert_eq!(d[21], 255, "hop limit");
    assert_eq!(&d[22..38], &vip.octets(), "source: the VIP");
    assert_eq!(&d[38..54], &ndp::ALL_NODES.octets(), "destination ff02::1");
    assert_eq!((d[54], d[55]), (136, 0), "Neighbor Advertisement, code 0");
    assert_eq!(d[58], 0x20, "Override set, Solicited and Router clear");
    assert_eq!(&d[59..62], &[0, 0, 0], "reserved");
    assert_eq!(&d[62..78], &vip.octets(), "target: the VIP");
    assert_eq!(
        &d[78..80],
        &[2, 1],
        "Target Link-Layer Address option, 8 bytes"
    );
    assert_eq!(&d[80..86], &mac, "the interface's MAC");
    // The checksum, recomputed here from RFC 8200's pseudo-header.
    let mut sum: u32 = 0;
    let mut words = |b: &[u8]| {
        for w in b.chunks(2) {
            sum += u32::from(u16::from_be_bytes([w[0], w[1]]));
        }
    };
    words(&d[22..54]);
    words(&[0, 0, 0, 32, 0, 0, 0, 58]);
    words(&d[54..86]);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    assert_eq!(sum, 0xffff, "the ICMPv6 checksum does not verify");
    let p = etherparse::SlicedPacket::from_ethernet(d).expect("parses as Ethernet");
    let Some(etherparse::TransportSlice::Icmpv6(icmp)) = &p.transport else {
        panic!("no ICMPv6: {:?}", p.transport);
    };
    let etherparse::Icmpv6Type::NeighborAdvertisement(na) = icmp.icmp_type() else {
        panic!("not a Neighbor Advertisement: {:?}", icmp.icmp_type());
    };
    assert!(na.r#override && !na.solicited && !na.router);
}

/// `ip maddr` lists a VIP's solicited-node MAC while the VIP is announced,
/// once however often it is joined, and not after; the kernel's own
/// groups of the interface stay.
#[test]
fn solicited_node_membership_follows_the_announced_vips() {
    let topo = one_node();
    let node = topo.node(1);
    let vip: std::net::Ipv6Addr = "fd00:60::ab:cdef".parse().expect("an IPv6 address");
    let mac = "33:33:ff:ab:cd:ef";
    let maddr = || {
        output(Command::new("ip").args([
            "netns",
            "exec",
            node.ns().name(),
            "ip",
            "maddr",
            "show",
            "dev",
            "eth0",
        ]))
    };
    let before = maddr();
    assert!(!before.contains(mac), "{before}");
    let reconcile = |vips: &[std::net::Ipv6Addr]| {
        in_netns(node.ns(), || {
            let failed =
                ndp::reconcile("eth0", &vips.iter().copied().collect()).expect("reconcile");
            assert!(failed.is_empty(), "{failed:?}");
            ndp::joined("eth0").expect("joined")
        })
        .expect("netns")
    };
    let joined = reconcile(&[vip]);
    assert_eq!(joined, BTreeSet::from([ndp::solicited_node_mac(vip)]));
    let during = maddr();
    assert_eq!(during.matches(mac).count(), 1, "{during}");
    // Again, as a restarted agent would: still one membership.
    reconcile(&[vip]);
    assert_eq!(maddr().matches(mac).count(), 1, "{}", maddr());
    // The VIP goes: so does its group, and only it.
    assert!(reconcile(&[]).is_empty());
    let after = maddr();
    assert!(!after.contains(mac), "{after}");
    for line in before.lines().filter(|l| l.contains("link")) {
        assert!(after.contains(line.trim()), "lost {line:?}: {after}");
    }
}

/// The agent keeps the plan as its view of the maps after a successful write
/// (no read-back); this holds only if writing a diff and reading the maps
/// back gives exactly the plan — checked here on the real kernel, across a
/// replan that moves tables, frees regions and drops a service.
#[test]
fn written_plans_read_back_exactly() {
    let root = PinRoot::unique("readback").expect("pin root");
    let mappable = write_plans_and_read_back(&root, |_| {});
    assert!(mappable, "this build's maglev array is memory-mappable");
}

/// Maps pinned by a version whose `maglev` array was not memory-mappable keep working: the
/// writer falls back to batch updates.
#[test]
fn a_maglev_array_pinned_without_mmap_is_written_by_batch_updates() {
    let root = PinRoot::unique("readback-old").expect("pin root");
    let mappable = write_plans_and_read_back(&root, |pins| {
        std::fs::create_dir_all(pins.path()).expect("mkdir");
        output(
            Command::new("bpftool")
                .args(["map", "create"])
                .arg(pins.entry(maps::MAGLEV))
                .args([
                    "type", "array", "key", "4", "value", "4", "entries", "65536", "name", "maglev",
                ]),
        );
    });
    assert!(
        !mappable,
        "the pinned array was created without BPF_F_MMAPABLE"
    );
}

/// An IPv6 service of the read-back test with `pods`: its own maps, ids and
/// slots shared with IPv4.
fn six(pods: &str) -> String {
    format!(
        "  - name: web6
    vip: \"fd00:60::200\"
    ports: [{{ port: 80, target_port: 8080 }}]
    session_affinity: ClientIP
    source_ranges: [\"fd00:10::/32\", 10.0.0.0/8]
    backends: [{pods}]
"
    )
}

/// The read-back test's services file: two IPv4 services (`extra` backends
/// more for the first) and the IPv6 service `v6` (none when empty).
fn readback_file(node_ip: Ipv4Addr, extra: &str, v6: &str) -> String {
    format!(
        "announce: [192.168.50.200{a6}]
services:
  - name: web
    vip: 192.168.50.200
    ports: [{{ port: 80, target_port: 8080 }}, {{ port: 53, protocol: UDP }}]
    session_affinity: ClientIP
    source_ranges: [10.0.0.0/8]
    backends: [{{ ip: 10.42.1.2, node_ip: {node_ip} }}, {{ ip: 10.42.2.2, node_ip: 192.168.50.12 }}{extra}]
  - name: empty
    vip: 192.168.50.201
    ports: [{{ port: 443 }}]
{v6}",
        a6 = if v6.is_empty() { "" } else { ", \"fd00:60::200\"" },
    )
}

/// Attaches under `root` (after `prepare` has seen the pin directory), then writes three
/// successive plans, reading the maps back after each. Whether the `maglev` array could be
/// written through a mapping.
fn write_plans_and_read_back(root: &PinRoot, prepare: impl FnOnce(&PinDir)) -> bool {
    use aya::maps::IterableMap as _;
    use lb_userspace::{
        dataplane::mapped::Mapping,
        dataplane::reader,
        dataplane::writer,
        plan::diff,
        plan::state::{self, DataplaneState, Node, PlanOptions},
        plan::{model::Limits, services_file},
    };
    let topo = one_node();
    prepare(&PinDir::new(root.path(), "eth0"));
    assert!(!attach_in(topo.node(1).ns(), root.path()).expect("attach"));
    let mut maps = Maps::open(&PinDir::new(root.path(), "eth0")).expect("maps");
    let limits = Limits {
        maglev_slots: maps.maglev.len(),
        flow_sets: maps.flow_sets(),
        ..Limits::default()
    };
    let node = Node {
        ip: topo.node(1).ip(),
        ip6: Some("fd00:50::11".parse().expect("an IPv6 address")),
        ifindex: 2,
        mac: topo.node(1).mac().octets(),
        hash_seed: lb_common::hash::PUBLIC_SEED,
        segment: None,
        segment6: None,
    };
    let file = |extra: &str, v6: &str| {
        services_file::parse(&readback_file(topo.node(1).ip(), extra, v6), &limits)
            .expect("valid file")
    };
    let one6 = "{ ip: \"fd00:42::2\", node_ip: \"fd00:50::11\" }";
    let two6 = format!("{one6}, {{ ip: \"fd00:42::3\", node_ip: \"fd00:50::12\" }}");
    let more = ", { ip: 10.42.2.3, node_ip: 192.168.50.12 }";
    let even_more =
        ", { ip: 10.42.2.3, node_ip: 192.168.50.12 }, { ip: 10.42.2.4, node_ip: 192.168.50.12 }";
    let mut current = DataplaneState::default();
    let mut ever6 = std::collections::BTreeSet::new();
    // The IPv6 service goes (its backends retire), its ids are released, and
    // then taken by IPv4 backends: an id moves from backends6 to backends.
    for (extra, v6, release) in [
        ("", six(one6), false),
        (more, six(&two6), false),
        ("", six(&two6), false),
        ("", String::new(), false),
        ("", String::new(), true),
        (even_more, String::new(), false),
    ] {
        let release: std::collections::BTreeSet<u32> = if release {
            state::retired(&current).collect()
        } else {
            std::collections::BTreeSet::new()
        };
        let opts = PlanOptions {
            reuse_tables: false,
            release: &release,
        };
        let desired = state::plan_with_options(&current, &file(extra, &v6), &node, &limits, opts)
            .expect("plan");
        writer::apply(&mut maps, &diff::diff(&current, &desired)).expect("write");
        assert_eq!(
            reader::read(&maps).expect("read back"),
            desired,
            "the maps differ from the plan"
        );
        ever6.extend(desired.backends6.keys().copied());
        current = desired;
    }
    assert!(current.backends6.is_empty() && current.services6.is_empty());
    assert!(
        current.backends.keys().any(|id| ever6.contains(id)),
        "no released IPv6 id ({ever6:?}) taken by an IPv4 backend: {:?}",
        current.backends.keys()
    );
    Mapping::open(maps.maglev.map(), maps.maglev.len())
        .expect("maglev info")
        .is_some()
}

/// The capabilities `manifests/agent-daemonset.yaml` adds to the agent.
fn daemonset_capabilities() -> Vec<String> {
    use k8s_openapi::api::apps::v1::DaemonSet;
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../manifests/agent-daemonset.yaml"
    );
    let text = std::fs::read_to_string(path).expect("read the agent DaemonSet");
    let ds: DaemonSet = serde_saphyr::from_str(&text).expect("the agent DaemonSet parses");
    ds.spec
        .and_then(|s| s.template.spec)
        .and_then(|p| p.containers.into_iter().next())
        .and_then(|c| c.security_context?.capabilities?.add)
        .unwrap_or_default()
}

/// Runs the agent (file source, announcing a VIP) in `node`'s namespace as
/// uid 0 with `caps` as its whole capability bounding set, as the
/// `DaemonSet`'s container runs; returns whether it got as far as
/// announcing, and its log.
/// The agent's arguments for one small service on `node`, pins under
/// `root`, files in `dir`; its log goes to `dir/agent.log`.
fn agent_args(node: &onehop_testkit::topology::Node, root: &Path, dir: &Path) -> Vec<String> {
    std::fs::create_dir_all(dir).expect("temp dir");
    let services = dir.join("services.yaml");
    std::fs::write(
        &services,
        format!(
            "announce: [192.168.50.230]
services:
  - name: web
    vip: 192.168.50.230
    ports: [{{ port: 80, target_port: 8080 }}]
    backends: [{{ ip: 10.42.1.2, node_ip: {} }}]
",
            node.ip()
        ),
    )
    .expect("services file");
    [
        "agent",
        "--interface",
        "eth0",
        "--no-metrics",
        "--maglev-slots",
        "65536",
        "--conntrack-size",
        "4096",
        "--rev-nat-size",
        "4096",
        "--affinity-size",
        "1024",
        "--services-file",
    ]
    .into_iter()
    .map(str::to_owned)
    .chain([
        services.display().to_string(),
        "--bpffs-root".into(),
        root.display().to_string(),
    ])
    .collect()
}

/// Waits until the agent logging to `log_path` announces (true), or exits
/// or takes longer than 15 s (false).
fn announces(agent: &mut onehop_testkit::netns::ChildGuard, log_path: &Path) -> bool {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let text = std::fs::read_to_string(log_path).unwrap_or_default();
        if text.contains("now announcing") {
            return true;
        }
        if agent.try_wait().expect("wait").is_some() || Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn agent_starts_with(
    node: &onehop_testkit::topology::Node,
    caps: &[String],
    tag: &str,
) -> (bool, String) {
    let root = PinRoot::unique(tag).expect("pin root");
    let dir = std::env::temp_dir().join(format!("onehop-caps-{}-{tag}", std::process::id()));
    let args = agent_args(node, root.path(), &dir);
    let log_path = dir.join("agent.log");
    let log = std::fs::File::create(&log_path).expect("log file");
    let bounding: String = std::iter::once("-all".to_owned())
        .chain(caps.iter().map(|c| format!("+{}", c.to_lowercase())))
        .collect::<Vec<_>>()
        .join(",");
    let mut cmd = Command::new("setpriv");
    cmd.args(["--bounding-set", &bounding, "--inh-caps", "-all", "--"])
        .arg(env!("CARGO_BIN_EXE_onehop"))
        .args(args)
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(log);
    let mut agent = onehop_testkit::netns::spawn_in(node.ns(), cmd).expect("spawn the agent");
    let announced = announces(&mut agent, &log_path);
    drop(agent);
    // Detach with full privileges, so the next run loads afresh. A run that
    // failed before attaching left nothing to clean up, so its status is
    // not checked; removing the pins (PinRoot's drop) detaches in any case.
    let _ = onehop_testkit::netns::command_in(node.ns(), env!("CARGO_BIN_EXE_onehop"))
        .args(["cleanup", "--interface", "eth0", "--bpffs-root"])
        .arg(root.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
    let text = std::fs::read_to_string(&log_path).unwrap_or_default();
    let _ = std::fs::remove_dir_all(&dir);
    (announced, text)
}

/// The capabilities the agent `DaemonSet` adds are exactly the ones the
/// agent needs, as the kernel decides: with that set alone the agent
/// loads, attaches and announces; without any one of them it fails.
#[test]
fn agent_needs_exactly_the_daemonset_capabilities() {
    let caps = daemonset_capabilities();
    assert!(!caps.is_empty(), "the DaemonSet adds no capability");
    let topo = one_node();
    let node = topo.node(1);
    let (ok, log) = agent_starts_with(node, &caps, "caps-all");
    assert!(ok, "the agent does not start with {caps:?} alone:\n{log}");
    for (i, missing) in caps.iter().enumerate() {
        let fewer: Vec<String> = caps.iter().filter(|c| *c != missing).cloned().collect();
        let (ok, log) = agent_starts_with(node, &fewer, &format!("caps-{i}"));
        assert!(
            !ok,
            "the agent starts with {fewer:?}: the DaemonSet need not add {missing}\n{log}"
        );
        eprintln!(
            "without {missing}: {}",
            log.lines().last().unwrap_or_default()
        );
    }
}

/// Replaces `path` (atomically, as the agent wants it) with a services file
/// serving the IPv6 `vip` with a pod on the node `node_ip`, announced or not.
fn write_services6(path: &Path, vip: std::net::Ipv6Addr, node_ip: Ipv4Addr, announce: bool) {
    let text = format!(
        "announce: [{}]
services:
  - name: web6
    vip: \"{vip}\"
    ports: [{{ port: 80, target_port: 8080 }}]
    backends: [{{ ip: \"fd00:42::2\", node_ip: {node_ip} }}]
",
        if announce {
            format!("\"{vip}\"")
        } else {
            String::new()
        },
    );
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("services file");
    std::fs::rename(&tmp, path).expect("rename");
}

/// The agent on `node` serving `services`, its log in `dir/log`.
fn spawn_agent6(
    node: &onehop_testkit::topology::Node,
    root: &Path,
    dir: &Path,
    services: &Path,
    log: &str,
) -> onehop_testkit::netns::ChildGuard {
    let mut args = agent_args(node, root, dir);
    let i = args
        .iter()
        .position(|a| a == "--services-file")
        .expect("flag");
    args[i + 1] = services.display().to_string();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_onehop"));
    cmd.args(args)
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.join(log)).expect("log file"));
    onehop_testkit::netns::spawn_in(node.ns(), cmd).expect("spawn the agent")
}

/// `onehop status -o json` on `node` lists the IPv6 `vip` (announced), its
/// service and local backend, and the VIP's NDP counters.
fn status_lists_ipv6(node: &onehop_testkit::topology::Node, root: &Path, vip: std::net::Ipv6Addr) {
    let out = onehop_testkit::netns::command_in(node.ns(), env!("CARGO_BIN_EXE_onehop"))
        .args([
            "status",
            "--interface",
            "eth0",
            "-o",
            "json",
            "--bpffs-root",
        ])
        .arg(root)
        .output()
        .expect("status");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let vips = v["vips"].as_array().expect("vips");
    assert!(
        vips.iter()
            .any(|x| x["ip"] == vip.to_string() && x["announced"] == true),
        "{vips:?}"
    );
    assert_eq!(v["services"][0]["frontend"], format!("[{vip}]:80/TCP"));
    assert_eq!(v["backends"][0]["ip"], "fd00:42::2");
    assert_eq!(v["backends"][0]["location"], "local");
    assert_eq!(v["ndp"]["addresses"][0]["ip"], vip.to_string());
    assert_eq!(v["ndp"]["uncounted"], 0);
}

/// The agent announcing an IPv6 VIP from a services file: unsolicited
/// Neighbor Advertisements on the LAN, the solicited-node group joined
/// while it announces and left when it stops; a restart neither duplicates
/// nor loses the membership, and `onehop cleanup` leaves it.
#[test]
fn the_agent_announces_an_ipv6_vip_and_receives_its_solicitations() {
    let topo = one_node();
    let node = topo.node(1);
    let root = PinRoot::unique("ndp-agent").expect("pin root");
    let dir = std::env::temp_dir().join(format!("onehop-ndp-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    // Not `services.yaml`: `agent_args` writes its own IPv4 file there.
    let services = dir.join("services6.yaml");
    let vip: std::net::Ipv6Addr = "fd00:60::ab:cdef".parse().expect("an IPv6 address");
    write_services6(&services, vip, node.ip(), true);
    let mac = "33:33:ff:ab:cd:ef";
    let maddr = || {
        output(Command::new("ip").args(["-n", node.ns().name(), "maddr", "show", "dev", "eth0"]))
    };
    let wait = |what: &str, ok: &dyn Fn() -> bool| {
        let deadline = Instant::now() + Duration::from_secs(15);
        while !ok() {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}: {}",
                maddr()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let cap = onehop_testkit::capture::Capture::open(topo.lan(), node.lan_peer()).expect("capture");
    let agent = spawn_agent6(node, root.path(), &dir, &services, "agent1.log");
    wait("the solicited-node group", &|| maddr().contains(mac));
    let na = cap
        .next_matching(Duration::from_secs(10), |f| {
            f.data.len() >= ndp::NA_FRAME_LEN
                && f.data[12..14] == [0x86, 0xdd]
                && f.data[54] == 136
                && f.data[62..78] == vip.octets()
        })
        .expect("capture")
        .expect("no unsolicited Neighbor Advertisement for the VIP");
    assert_eq!(
        na.data[..ndp::NA_FRAME_LEN],
        ndp::na_frame(node.mac().octets(), vip)
    );
    // A restarted agent takes the membership over: still exactly one.
    drop(agent);
    let agent = spawn_agent6(node, root.path(), &dir, &services, "agent2.log");
    wait("the restarted agent", &|| {
        std::fs::read_to_string(dir.join("agent2.log"))
            .unwrap_or_default()
            .contains("agent running")
    });
    assert_eq!(maddr().matches(mac).count(), 1, "{}", maddr());
    status_lists_ipv6(node, root.path(), vip);
    // No longer announced: the group is left.
    write_services6(&services, vip, node.ip(), false);
    wait("the group to be left", &|| !maddr().contains(mac));
    // Announced again, then cleaned up: left by cleanup.
    write_services6(&services, vip, node.ip(), true);
    wait("the group joined again", &|| maddr().contains(mac));
    drop(agent);
    let out = onehop_testkit::netns::command_in(node.ns(), env!("CARGO_BIN_EXE_onehop"))
        .args(["cleanup", "--interface", "eth0", "--bpffs-root"])
        .arg(root.path())
        .output()
        .expect("cleanup");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !maddr().contains(mac),
        "cleanup left the group: {}",
        maddr()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The mode bits and owner of `p`.
fn mode_and_owner(p: &Path) -> (u32, u32) {
    use std::os::unix::fs::MetadataExt as _;
    let m = std::fs::symlink_metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    (m.mode() & 0o7777, m.uid())
}

fn xdp_attached(ns: &onehop_testkit::netns::Netns) -> bool {
    output(Command::new("ip").args(["-n", ns.name(), "link", "show", "eth0"])).contains("xdp")
}

/// The pin directories are created private, and one that another user owns or
/// may write is refused before anything is loaded or attached: whoever can
/// write there can delete the pins (the data path detaches once the agent
/// stops) or plant maps for the agent to adopt.
#[test]
fn pin_directory_is_created_private_and_foreign_or_open_ones_are_refused() {
    use std::os::unix::fs::PermissionsExt as _;
    let topo = one_node();
    let ns = topo.node(1).ns();
    let root = PinRoot::unique("private").expect("pin root");
    let pins = PinDir::new(root.path(), "eth0");
    let chmod = |p: &Path, mode: u32| {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).expect("chmod");
    };
    let chown =
        |p: &Path, uid: u32| std::os::unix::fs::chown(p, Some(uid), Some(uid)).expect("chown");
    let refused = |what: &str| -> String {
        let err = attach_in(ns, root.path()).expect_err(what);
        assert!(!xdp_attached(ns), "{what}: XDP attached anyway");
        format!("{err:#}")
    };

    // Pre-created by another user (what `nobody` can do on a 1777 bpffs).
    std::fs::create_dir(root.path()).expect("mkdir");
    chmod(root.path(), 0o700);
    chown(root.path(), 65534);
    let msg = refused("a root directory owned by uid 65534");
    for needle in [
        root.path().display().to_string(),
        "uid 65534".into(),
        "0700".into(),
        "refusing".into(),
    ] {
        assert!(msg.contains(&needle), "missing {needle:?} in: {msg}");
    }
    assert!(
        !pins.path().exists(),
        "nothing may be created inside a refused directory"
    );

    // Ours, but open to everyone.
    chown(root.path(), 0);
    chmod(root.path(), 0o777);
    let msg = refused("a world-writable root directory");
    assert!(
        msg.contains(&root.path().display().to_string()) && msg.contains("0777"),
        "{msg}"
    );
    chmod(root.path(), 0o770);
    let msg = refused("a group-writable root directory");
    assert!(msg.contains("0770"), "{msg}");

    // The interface's directory is held to the same rule.
    chmod(root.path(), 0o700);
    std::fs::create_dir(pins.path()).expect("mkdir eth0");
    chown(pins.path(), 65534);
    let msg = refused("an interface directory owned by uid 65534");
    assert!(
        msg.contains(&pins.path().display().to_string()) && msg.contains("uid 65534"),
        "{msg}"
    );
    std::fs::remove_dir(pins.path()).expect("rmdir eth0");
    std::fs::remove_dir(root.path()).expect("rmdir root");

    // Fresh: both created 0700 and owned by the agent.
    let first = attach_in(ns, root.path());
    assert!(!first.expect("fresh attach"), "nothing was pinned before");
    assert_eq!(mode_and_owner(root.path()), (0o700, 0), "root directory");
    assert_eq!(
        mode_and_owner(pins.path()),
        (0o700, 0),
        "interface directory"
    );

    // A restart adopts what the agent itself made.
    assert!(
        attach_in(ns, root.path()).expect("restart"),
        "the restart must adopt its own pins"
    );
    // An agent of an earlier version made them 0755: still ours, still adopted.
    chmod(root.path(), 0o755);
    chmod(pins.path(), 0o755);
    assert!(attach_in(ns, root.path()).expect("restart on 0755 directories"));
    assert!(loader::cleanup(root.path(), "eth0").expect("cleanup"));
}

/// The agent of [`agent_args`] with a flow sweep every second, logging to
/// `log`.
fn spawn_sweeping_agent(
    node: &onehop_testkit::topology::Node,
    root: &Path,
    dir: &Path,
    log: &Path,
) -> onehop_testkit::netns::ChildGuard {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_onehop"));
    cmd.args(agent_args(node, root, dir))
        .args(["--flow-sweep-interval-secs", "1"])
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(log).expect("log file"));
    onehop_testkit::netns::spawn_in(node.ns(), cmd).expect("spawn the agent")
}

/// The agent's flow sweeper deletes expired entries from the pinned maps
/// (by the same rules and timeouts as the data path) and leaves live ones,
/// and the reverse entry of a flow closed by both FINs while its backend
/// may still be in `TIME_WAIT`; flow-table slots it leaves to be reused in
/// place.
#[test]
fn flow_sweeper_deletes_expired_entries_and_keeps_live_ones() {
    use lb_common::{ConntrackValue, FlowKey, RevNatValue, flow::tcp_state, proto};
    let topo = one_node();
    let node = topo.node(1);
    let root = PinRoot::unique("sweep").expect("pin root");
    let dir = std::env::temp_dir().join(format!("onehop-sweep-{}", std::process::id()));
    let log_path = dir.join("agent.log");
    let mut agent = spawn_sweeping_agent(node, root.path(), &dir, &log_path);
    assert!(
        announces(&mut agent, &log_path),
        "{}",
        std::fs::read_to_string(&log_path).unwrap_or_default()
    );

    let mut maps = Maps::open(&PinDir::new(root.path(), "eth0")).expect("pinned maps");
    let s = 1_000_000_000;
    let clock = || lb_userspace::dataplane::sweep::now_ns().expect("clock");
    // The clock counts from boot, and a VM's tests may run sooner than the
    // oldest stamp below.
    while clock() < 71 * s {
        std::thread::sleep(Duration::from_millis(200));
    }
    let now = clock();
    let key = |sport| FlowKey::v4([10, 0, 0, 9], [192, 168, 50, 230], sport, 80, proto::TCP);
    let ct = |state, last| ConntrackValue::new(0, [0; 16], 0, 0, 0, state, last);
    let closed = tcp_state::ESTABLISHED | tcp_state::BOTH_FIN;
    // Closed 20 s ago (closing timeout 10 s): over. Closed 1 s ago and
    // established an hour ago (or at boot, on a machine up for less: the
    // clock counts from boot): live.
    let entries = [
        (key(1), ct(closed, now - 20 * s), true),
        (key(2), ct(closed, now - s), false),
        (
            key(3),
            ct(tcp_state::ESTABLISHED, now.saturating_sub(3600 * s).max(1)),
            false,
        ),
    ];
    for (k, v, _) in &entries {
        lb_userspace::dataplane::flows::put(&mut maps, k, *v).expect("conntrack insert");
    }
    // Reverse entries of flows closed by both FINs: 70 s ago, over; 20 s
    // ago, past the closing timeout but within the backend's TIME_WAIT
    // (60 s), kept.
    let rev_dead = FlowKey::v4([10, 42, 1, 2], [10, 0, 0, 9], 8080, 4000, proto::TCP);
    let rev_time_wait = FlowKey::v4([10, 42, 1, 2], [10, 0, 0, 9], 8080, 4001, proto::TCP);
    for (k, flow, closed_at) in [
        (rev_dead, key(1), now - 70 * s),
        (rev_time_wait, key(2), now - 20 * s),
    ] {
        maps.rev_nat
            .insert(
                k,
                RevNatValue::reverse_of(&flow, 0, 0, closed, closed_at),
                0,
            )
            .expect("rev_nat insert");
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while maps.rev_nat.get(&rev_dead, 0).is_ok() {
        assert!(
            Instant::now() < deadline,
            "the expired entries are still there after 10 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        maps.rev_nat.get(&rev_time_wait, 0).is_ok(),
        "swept within the backend's TIME_WAIT"
    );
    // Flow-table slots are not deleted (a new flow reuses an over one in
    // place, see `lb_common::flow::table`): the sweep leaves every flow,
    // and the data path's rule tells the over one from the live ones.
    let timeouts = maps.config().expect("config").timeouts;
    for (k, _, over) in &entries {
        let v = maps
            .flows()
            .and_then(|f| f.get(k))
            .expect("flow table")
            .unwrap_or_else(|| panic!("{k:?} left the flow table"));
        assert_eq!(
            lb_userspace::dataplane::sweep::conntrack_over(k, &v, now, &timeouts),
            *over,
            "{k:?}"
        );
    }
    drop(agent);
    let _ = onehop_testkit::netns::command_in(node.ns(), env!("CARGO_BIN_EXE_onehop"))
        .args(["cleanup", "--interface", "eth0", "--bpffs-root"])
        .arg(root.path())
        .status();
    let _ = std::fs::remove_dir_all(&dir);
}

/// An upgrade from a version before the IPv6 tag: the restarted agent
/// adopts a flow table holding a live IPv6 flow under its Maglev hash (as
/// that version wrote it), so it sets `config_flags::LEGACY_TAGS6`, and
/// keeps it while its sweeper finds the flow live; once the flow is over,
/// the flag goes. A first start, on no pins, never sets it.
#[test]
fn an_adopted_tables_earlier_ipv6_tags_are_looked_for_until_their_flows_are_over() {
    use lb_common::{
        ConntrackValue, FlowKey, config_flags,
        flow::{table::legacy_tag, tcp_state},
        proto,
    };
    let topo = one_node();
    let node = topo.node(1);
    let root = PinRoot::unique("tags").expect("pin root");
    let dir = std::env::temp_dir().join(format!("onehop-tags-{}", std::process::id()));
    let log_path = dir.join("agent.log");
    // Starts the agent and waits for `ready` in its log (15 s at most).
    let start = |log: &Path, ready: &str| {
        let agent = spawn_sweeping_agent(node, root.path(), &dir, log);
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            if text.contains(ready) {
                break;
            }
            assert!(Instant::now() < deadline, "no {ready:?} in 15 s:\n{text}");
            std::thread::sleep(Duration::from_millis(20));
        }
        agent
    };
    let pins = PinDir::new(root.path(), "eth0");
    let legacy =
        |maps: &Maps| maps.config().expect("config").flags & config_flags::LEGACY_TAGS6 != 0;
    // Polls `want` for up to 10 s.
    let within = |maps: &Maps, want: bool| {
        let deadline = Instant::now() + Duration::from_secs(10);
        while legacy(maps) != want && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        legacy(maps) == want
    };
    let agent = start(&log_path, "now announcing");
    let mut maps = Maps::open(&pins).expect("pinned maps");
    assert!(!legacy(&maps), "a first start adopted nothing");
    drop(agent);

    let s = 1_000_000_000;
    let clock = || lb_userspace::dataplane::sweep::now_ns().expect("clock");
    while clock() < 30 * s {
        std::thread::sleep(Duration::from_millis(200));
    }
    let mut a = [0u8; 16];
    a[..4].copy_from_slice(&[0x20, 1, 0xd, 0xb8]);
    a[15] = 9;
    let key = FlowKey::v6(a, [0xfd; 16], 40000, 80, proto::TCP);
    let seed = maps.config().expect("config").hash_seed;
    let tag = legacy_tag(seed, &key).expect("an IPv6 flow had another tag");
    let flow = |state, last| ConntrackValue::new(0, [0; 16], 0, 0, 0, state, last);
    lb_userspace::dataplane::flows::put_tagged(
        &mut maps,
        &key,
        flow(tcp_state::ESTABLISHED, clock()),
        tag,
    )
    .expect("the old slot");

    let restart_log = dir.join("agent-restarted.log");
    let agent = start(&restart_log, "adopted pinned maps");
    assert!(
        within(&maps, true),
        "the adopted table's old tags are not looked for"
    );
    // Sweeps every second find the flow live: the flag stays.
    std::thread::sleep(Duration::from_secs(3));
    assert!(legacy(&maps), "cleared while an old-tagged flow is live");
    // Closed by both FINs 20 s ago (closing timeout 10 s): over.
    let closed = tcp_state::ESTABLISHED | tcp_state::BOTH_FIN;
    lb_userspace::dataplane::flows::put_tagged(
        &mut maps,
        &key,
        flow(closed, clock() - 20 * s),
        tag,
    )
    .expect("the old slot, over");
    assert!(
        within(&maps, false),
        "still looked for after its last flow ended"
    );
    let text = std::fs::read_to_string(&restart_log).unwrap_or_default();
    assert!(
        text.contains("no live IPv6 flow of an earlier version's tag"),
        "{text}"
    );
    drop(agent);
    let _ = onehop_testkit::netns::command_in(node.ns(), env!("CARGO_BIN_EXE_onehop"))
        .args(["cleanup", "--interface", "eth0", "--bpffs-root"])
        .arg(root.path())
        .status();
    let _ = std::fs::remove_dir_all(&dir);
}

/// An IPv6 VIP served end to end from a services file, with real peers: the
/// client resolves it with `ndisc6` (answered by XDP with the node's MAC),
/// pings it with `ping -6`, and fetches from the pod behind it with
/// `curl -6`; the pod sees the client's own IPv6 address, and its replies
/// leave from the VIP (`curl` would not accept them otherwise).
#[test]
fn an_ipv6_vip_is_resolved_pinged_and_served_with_the_clients_address() {
    let topo = Topology::builder()
        .nodes(1)
        .pods_per_node(1)
        .clients(1)
        .build()
        .expect("topology");
    let node = topo.node(1);
    let pod = node.pod(1);
    let client = topo.client();
    topo.ipv6_lan().expect("IPv6 on the LAN");
    let server = onehop_testkit::server::HttpServer::start(
        pod.ns(),
        pod.name(),
        "[::]:8080".parse().expect("an address"),
    )
    .expect("the pod's HTTP server");

    // A veth delivers what XDP sends back only to a peer with an XDP
    // program of its own (see `dataplane::peer`).
    let _pass = in_netns(topo.lan(), || {
        lb_userspace::dataplane::peer::attach(node.lan_peer())
    })
    .expect("the LAN namespace")
    .expect("the pass-through program");
    let root = PinRoot::unique("v6-e2e").expect("pin root");
    let dir = std::env::temp_dir().join(format!("onehop-v6-e2e-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let services = dir.join("services6.yaml");
    let vip: std::net::Ipv6Addr = "fd00:60::ab:cdef".parse().expect("an IPv6 address");
    write_services6(&services, vip, node.ip(), true);
    let _agent = spawn_agent6(node, root.path(), &dir, &services, "agent.log");
    let run = |program: &str, args: &[&str]| {
        onehop_testkit::netns::command_in(client.ns(), program)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("{program}: {e}"))
    };
    // The agent is up once XDP answers for the VIP.
    let deadline = Instant::now() + Duration::from_secs(20);
    let resolved = loop {
        let out = run(
            "ndisc6",
            &["-q", "-r", "1", "-w", "500", &vip.to_string(), "eth0"],
        );
        if out.status.success() {
            break String::from_utf8_lossy(&out.stdout).trim().to_lowercase();
        }
        assert!(
            Instant::now() < deadline,
            "no Neighbor Advertisement for {vip}: {}\nagent log:\n{}",
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(dir.join("agent.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(
        resolved,
        node.mac().to_string().to_lowercase(),
        "the owner's MAC"
    );

    let status = || {
        let out = onehop_testkit::netns::command_in(node.ns(), env!("CARGO_BIN_EXE_onehop"))
            .args(["status", "--interface", "eth0", "--bpffs-root"])
            .arg(root.path())
            .output()
            .expect("status");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let ping = run(
        "ping",
        &["-6", "-c", "3", "-i", "0.2", "-W", "2", &vip.to_string()],
    );
    assert!(
        ping.status.success(),
        "ping -6: {}\n{}",
        String::from_utf8_lossy(&ping.stdout),
        status()
    );

    let url = format!("http://[{vip}]:80/");
    let curl = run("curl", &["-6", "-sS", "--max-time", "5", &url]);
    let body = String::from_utf8_lossy(&curl.stdout).into_owned();
    assert!(
        curl.status.success(),
        "curl -6 {url}: {}",
        String::from_utf8_lossy(&curl.stderr)
    );
    assert!(body.contains(&format!("pod={}", pod.name())), "{body}");
    assert!(
        body.contains("client=[fd00:60::50]:"),
        "the pod saw another address: {body}"
    );
    // Ten more, each a new flow: all served, none left behind untranslated.
    for i in 0..10 {
        let curl = run("curl", &["-6", "-sS", "--max-time", "5", &url]);
        assert!(
            curl.status.success(),
            "request {i}: {}",
            String::from_utf8_lossy(&curl.stderr)
        );
    }
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Path-MTU discovery through IPv6 VIPs, as
/// `e2e::path_mtu_discovery_through_the_vip_for_local_and_remote_backends`
/// for IPv4: a hop with MTU 1400 between each node and its pod (`cni0` and
/// the pod's veth, as a CNI with a smaller pod MTU sets them); the client
/// sends datagrams of 1,450 bytes of payload (1,498-byte packets: they fit
/// the LAN's 1500, not the pod's hop) with `IPV6_DONTFRAG` through a VIP.
/// - To node1's own pod: node1's kernel answers "Packet Too Big, MTU 1400"
///   about the translated packet (`client → [pod]`), out through
///   `lb_egress6`, which makes it come from the VIP and quote what the
///   client sent (`egress_icmp_error`).
/// - To node2's pod, by full NAT (node2 runs no agent): node2's kernel
///   answers node1's address about `[node1]:nat_port → [pod]`; node1's XDP
///   sends it to the client from the VIP, quoting `client → [VIP]:port`
///   (`icmp_error_to_client`).
///
/// The client must learn each VIP's path MTU: its socket gets `EMSGSIZE`,
/// `IPV6_MTU` says 1400 and its route cache holds `mtu 1400` for the VIP.
/// Untranslated, the errors named a pod or the node, and the client's
/// kernel matched them to no socket.
#[test]
fn path_mtu_discovery_through_ipv6_vips_to_local_and_remote_backends() {
    const SMALL_MTU: &str = "1400";
    const PAYLOAD: usize = 1450;
    const PORT: u16 = 53;
    const TARGET_PORT: u16 = 5353;
    let topo = Topology::builder()
        .nodes(2)
        .pods_per_node(1)
        .clients(1)
        .build()
        .expect("topology");
    let client = topo.client();
    topo.ipv6_lan_all_nodes()
        .expect("IPv6 on the LAN and the nodes");
    let servers: Vec<_> = topo
        .nodes()
        .iter()
        .map(|node| small_pod_hop6(node, SMALL_MTU, TARGET_PORT))
        .collect();
    let node = topo.node(1);
    // A veth delivers what XDP sends back only to a peer with an XDP
    // program of its own (see `dataplane::peer`): the VIP's advertisements,
    // and the frames to node2.
    let _pass = in_netns(topo.lan(), || {
        lb_userspace::dataplane::peer::attach(node.lan_peer())
    })
    .expect("the LAN namespace")
    .expect("the pass-through program");
    let root = PinRoot::unique("v6-pmtu").expect("pin root");
    let dir = std::env::temp_dir().join(format!("onehop-v6-pmtu-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    // Not `services.yaml`: `agent_args` writes its own IPv4 file there.
    let services = dir.join("services6.yaml");
    let vip_local: std::net::Ipv6Addr = "fd00:60::ab:cd01".parse().expect("an IPv6 address");
    let vip_remote: std::net::Ipv6Addr = "fd00:60::ab:cd02".parse().expect("an IPv6 address");
    let text = format!(
        "announce: [\"{vip_local}\", \"{vip_remote}\"]
services:
  - name: local6
    vip: \"{vip_local}\"
    ports: [{{ port: {PORT}, protocol: UDP, target_port: {TARGET_PORT} }}]
    backends: [{{ ip: \"{}\", node_ip: {} }}]
  - name: remote6
    vip: \"{vip_remote}\"
    ports: [{{ port: {PORT}, protocol: UDP, target_port: {TARGET_PORT} }}]
    backends: [{{ ip: \"{}\", node_ip: \"{}\" }}]
",
        pod_ip6(1, 1),
        node.ip(),
        pod_ip6(2, 1),
        node_ip6(2),
    );
    std::fs::write(&services, text).expect("services file");
    let _agent = spawn_agent6(node, root.path(), &dir, &services, "agent.log");
    let log = || std::fs::read_to_string(dir.join("agent.log")).unwrap_or_default();

    for (what, vip, pod, counter) in [
        ("local", vip_local, node.pod(1), "egress_icmp_error"),
        (
            "remote",
            vip_remote,
            topo.node(2).pod(1),
            "icmp_error_to_client",
        ),
    ] {
        let addr = std::net::SocketAddr::new(vip.into(), PORT);
        // Small datagrams go through once the agent serves: the pod answers.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match in_netns(client.ns(), || small_exchange6(addr)).expect("the client's namespace") {
                Ok(answer) if answer.contains(pod.name()) => break,
                other => assert!(
                    Instant::now() < deadline,
                    "{what}: no answer through {addr}: {other:?}\nagent log:\n{}",
                    log()
                ),
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let translated = || counter_of(node, root.path(), counter);
        let before = translated();

        let learned = in_netns(client.ns(), || pmtu_probe6(addr, PAYLOAD))
            .expect("the client's namespace")
            .unwrap_or_else(|e| panic!("{what}: {e:#}\nagent log:\n{}", log()));
        assert_eq!(
            learned,
            Some(1400),
            "{what}: the client never learned the path MTU of {vip}"
        );
        let route = output(Command::new("ip").args([
            "-n",
            client.ns().name(),
            "-6",
            "route",
            "get",
            &vip.to_string(),
        ]));
        assert!(
            route.contains("mtu 1400"),
            "{what}: the client's route cache for {vip}: {route}"
        );
        let after = translated();
        assert!(after > before, "{what}: {counter} {before} -> {after}");
    }
    drop(servers);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The MTU of the hop between `node` and its first pod (`cni0` and both
/// ends of the pod's veth) set to `mtu`, and a UDP server on the pod's
/// IPv6 address, port `port`.
fn small_pod_hop6(
    node: &onehop_testkit::topology::Node,
    mtu: &str,
    port: u16,
) -> onehop_testkit::server::UdpServer {
    let pod = node.pod(1);
    for (ns, dev, what) in [
        (node.ns(), "cni0", "cni0"),
        (node.ns(), pod.host_peer(), "pod veth, node side"),
        (pod.ns(), "eth0", "pod veth, pod side"),
    ] {
        ns.ip(&["link", "set", dev, "mtu", mtu])
            .unwrap_or_else(|e| panic!("{} {what} mtu: {e:#}", node.name()));
    }
    onehop_testkit::server::UdpServer::start(
        pod.ns(),
        pod.name(),
        std::net::SocketAddr::new(pod_ip6(node.index(), 1).into(), port),
    )
    .expect("a pod's UDP server")
}

/// The data path's counter `name` on `node`, from `onehop status -o json`.
fn counter_of(node: &onehop_testkit::topology::Node, root: &Path, name: &str) -> u64 {
    let out = onehop_testkit::netns::command_in(node.ns(), env!("CARGO_BIN_EXE_onehop"))
        .args([
            "status",
            "--interface",
            "eth0",
            "-o",
            "json",
            "--bpffs-root",
        ])
        .arg(root)
        .output()
        .expect("status");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("status JSON: {e}: {}", String::from_utf8_lossy(&out.stderr)));
    v["counters"][name]
        .as_u64()
        .unwrap_or_else(|| panic!("no counters.{name} in {v}"))
}

/// One small datagram to `addr` from a fresh socket and its answer (from
/// inside the client's namespace).
fn small_exchange6(addr: std::net::SocketAddr) -> std::io::Result<String> {
    let sock = std::net::UdpSocket::bind("[::]:0")?;
    sock.set_read_timeout(Some(Duration::from_millis(500)))?;
    sock.connect(addr)?;
    sock.send(b"small")?;
    let mut buf = [0u8; 512];
    let n = sock.recv(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// From inside the client's namespace: a UDP socket connected to `addr`,
/// path-MTU discovery on (`IPV6_PMTUDISC_DO` and `IPV6_DONTFRAG`: never
/// fragmented locally), sending `payload`-byte datagrams until the kernel
/// refuses one with `EMSGSIZE` (it learned a smaller path MTU from a Packet
/// Too Big about one of them); returns the socket's `IPV6_MTU` then, or
/// `None` if 100 sends 20 ms apart never met the error.
fn pmtu_probe6(addr: std::net::SocketAddr, payload: usize) -> anyhow::Result<Option<i32>> {
    use std::os::fd::AsRawFd as _;
    let sock = std::net::UdpSocket::bind("[::]:0")?;
    sock.connect(addr)?;
    let fd = sock.as_raw_fd();
    let int_len = libc::socklen_t::try_from(std::mem::size_of::<libc::c_int>())?;
    let setopt = |name: libc::c_int, v: libc::c_int| {
        // SAFETY: a valid socket and a c_int option value of its size.
        let rc = unsafe {
            libc::setsockopt(fd, libc::IPPROTO_IPV6, name, (&raw const v).cast(), int_len)
        };
        anyhow::ensure!(
            rc == 0,
            "setsockopt {name}: {}",
            std::io::Error::last_os_error()
        );
        Ok(())
    };
    setopt(libc::IPV6_MTU_DISCOVER, libc::IPV6_PMTUDISC_DO)?;
    setopt(libc::IPV6_DONTFRAG, 1)?;
    let data = vec![0x5a; payload];
    for _ in 0..100 {
        match sock.send(&data) {
            Ok(_) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) if e.raw_os_error() == Some(libc::EMSGSIZE) => {
                let mut mtu: libc::c_int = 0;
                let mut len = int_len;
                // SAFETY: a valid socket and an out value of the size given.
                let rc = unsafe {
                    libc::getsockopt(
                        fd,
                        libc::IPPROTO_IPV6,
                        libc::IPV6_MTU,
                        (&raw mut mtu).cast(),
                        &raw mut len,
                    )
                };
                anyhow::ensure!(rc == 0, "IPV6_MTU: {}", std::io::Error::last_os_error());
                return Ok(Some(mtu));
            }
            // The backend's port-unreachable or the like would show here.
            Err(e) => return Err(anyhow::Error::new(e).context("sending a large datagram")),
        }
    }
    Ok(None)
}
