//! Self-tests of the kit against the real kernel (root). They fail, never skip, when
//! something is wrong: the end-to-end tests built on the kit are only as good as it is.

use std::{
    net::{Ipv4Addr, SocketAddr},
    panic::{AssertUnwindSafe, catch_unwind},
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use onehop_testkit::{
    Capture, HttpConn, MacAddr, Netns, Topology, command_in, http_get, in_netns,
    netns::{list_with_prefix, run_checked},
    spawn_in,
    topology::{self, node_ip, pod_ip},
    unique_prefix,
};

const HTTP_PORT: u16 = 8080;
const UDP_PORT: u16 = 5353;

fn two_by_two() -> Topology {
    Topology::builder()
        .nodes(2)
        .pods_per_node(2)
        .build()
        .expect("topology builds")
}

#[test]
fn layout_matches_the_documented_scheme() {
    let root_forward =
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").expect("root sysctl");
    let root_rp =
        std::fs::read_to_string("/proc/sys/net/ipv4/conf/all/rp_filter").expect("root sysctl");
    let topo = two_by_two();
    // Per-namespace sysctls were written from namespace threads, never to the root namespace.
    assert_eq!(
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").expect("root sysctl"),
        root_forward
    );
    assert_eq!(
        std::fs::read_to_string("/proc/sys/net/ipv4/conf/all/rp_filter").expect("root sysctl"),
        root_rp
    );
    assert!(
        topo.prefix()
            .starts_with(&format!("oh{}-", std::process::id()))
    );
    assert_eq!(topo.namespaces().len(), 1 + 1 + 2 + 4);
    for ns in topo.namespaces() {
        assert!(ns.starts_with(topo.prefix()), "{ns}");
    }
    let c = topo.client();
    assert_eq!(c.ip(), Ipv4Addr::new(192, 168, 50, 2));
    assert_eq!(
        c.mac(),
        "02:00:c0:a8:32:02".parse::<MacAddr>().expect("mac")
    );
    let n1 = topo.node(1);
    assert_eq!(n1.name(), "node1");
    assert_eq!(n1.ip(), Ipv4Addr::new(192, 168, 50, 11));
    assert_eq!(n1.mac().to_string(), "02:00:c0:a8:32:0b");
    assert_eq!(n1.lan_peer(), "vn1");
    assert_eq!(topo.node(2).pod(2).ip(), Ipv4Addr::new(10, 42, 2, 3));
    assert_eq!(topo.node(2).pod(2).name(), "node2-pod2");
    assert_eq!(topology::vip(0), Ipv4Addr::new(192, 168, 50, 200));

    // The interfaces really are there, with the MACs the accessors report.
    let link = |ns: &str, dev: &str| {
        run_checked(Command::new("ip").args(["-n", ns, "-o", "link", "show", "dev", dev]))
            .expect("ip link")
    };
    assert!(link(n1.ns().name(), "eth0").contains(&n1.mac().to_string()));
    assert!(link(n1.ns().name(), "cni0").contains(&n1.cni_mac().to_string()));
    assert!(link(topo.lan().name(), n1.lan_peer()).contains("master br0"));
    assert!(link(n1.ns().name(), topo.node(1).pod(1).host_peer()).contains("master cni0"));

    // Forwarding only on nodes; rp_filter relaxed everywhere.
    assert_eq!(
        n1.ns().read_sysctl("net/ipv4/ip_forward").expect("sysctl"),
        "1"
    );
    assert_eq!(
        c.ns().read_sysctl("net/ipv4/ip_forward").expect("sysctl"),
        "0"
    );
    assert_eq!(
        n1.ns()
            .read_sysctl("net/ipv4/conf/eth0/rp_filter")
            .expect("sysctl"),
        "0"
    );
    assert_eq!(
        n1.ns()
            .read_sysctl("net/ipv4/conf/all/rp_filter")
            .expect("sysctl"),
        "0"
    );

    // Wire-like offloads on the client and pods.
    for ns in [c.ns().name(), topo.node(1).pod(1).ns().name()] {
        let out = run_checked(command_in(ns, "ethtool").args(["-k", "eth0"])).expect("ethtool -k");
        for feature in [
            "tx-checksumming: off",
            "tcp-segmentation-offload: off",
            "generic-segmentation-offload: off",
        ] {
            assert!(out.contains(feature), "{ns}: {feature} missing in\n{out}");
        }
    }
}

#[test]
fn http_by_plain_routing_reaches_every_pod_with_the_client_ip() {
    let topo = two_by_two();
    let servers = topo.serve_http_all(HTTP_PORT).expect("servers");
    for pod in topo.pods() {
        let r = topo.client().http_get(pod.addr(HTTP_PORT)).expect("GET");
        assert_eq!(r.status, 200);
        assert_eq!(r.header("connection"), Some("close"));
        let a = r.answer().expect("answer");
        assert_eq!(a.pod, pod.name());
        // No NAT on the plain path: the pod sees exactly our socket's address.
        assert_eq!(a.client, r.local);
        assert_eq!(r.local.ip(), topo.client().ip());
    }
    for s in &servers {
        assert_eq!(s.requests(), 1);
        assert_eq!(s.connections(), 1);
    }
}

#[test]
fn pods_reach_pods_on_other_nodes_via_host_gw_routes() {
    let topo = two_by_two();
    let server = topo.node(2).pod(1).serve_http(HTTP_PORT).expect("server");
    let from = topo.node(1).pod(2);
    let r = http_get(from.ns(), server.local_addr()).expect("GET across nodes");
    let a = r.answer().expect("answer");
    assert_eq!(a.pod, "node2-pod1");
    assert_eq!(a.client.ip(), std::net::IpAddr::V4(from.ip()));
}

#[test]
fn keep_alive_carries_three_requests_on_one_connection() {
    let topo = two_by_two();
    let pod = topo.node(2).pod(1);
    let server = pod.serve_http(HTTP_PORT).expect("server");
    let mut conn: HttpConn = topo
        .client()
        .keep_alive(pod.addr(HTTP_PORT))
        .expect("connect");
    for i in 1..=3 {
        let r = conn.get(&format!("/req{i}")).expect("request");
        assert_eq!(r.status, 200);
        assert_eq!(r.header("connection"), Some("keep-alive"));
        let a = r.answer().expect("answer");
        assert_eq!(a.pod, pod.name());
        assert_eq!(
            a.client,
            conn.local_addr(),
            "request {i} came from another socket"
        );
    }
    assert_eq!(conn.requests(), 3);
    assert_eq!(server.connections(), 1);
    assert_eq!(server.requests(), 3);
}

#[test]
fn udp_request_gets_the_pod_and_client_back() {
    let topo = two_by_two();
    let _servers = topo.serve_udp_all(UDP_PORT).expect("udp servers");
    for pod in topo.pods() {
        let r = topo
            .client()
            .udp_request(pod.addr(UDP_PORT), b"ping-42")
            .expect("udp");
        assert_eq!(r.answer.pod, pod.name());
        assert_eq!(r.from, pod.addr(UDP_PORT));
        assert_eq!(
            r.answer.client.ip(),
            std::net::IpAddr::V4(topo.client().ip())
        );
        assert_eq!(r.answer.client.port(), r.local.port());
        assert_eq!(r.echo, b"ping-42");
    }
}

#[test]
fn udp_without_a_server_times_out_in_bounded_time() {
    let topo = Topology::builder()
        .nodes(1)
        .pods_per_node(1)
        .build()
        .expect("topology");
    let started = Instant::now();
    let err = onehop_testkit::udp_request_with(
        topo.client().ns(),
        topo.node(1).pod(1).addr(UDP_PORT),
        b"x",
        None,
        Duration::from_millis(300),
    )
    .expect_err("nobody listens");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
    assert!(format!("{err:#}").contains("no udp reply"), "{err:#}");
}

#[test]
fn drop_removes_every_namespace_of_the_run() {
    let topo = two_by_two();
    let prefix = topo.prefix().to_owned();
    assert_eq!(list_with_prefix(&prefix).expect("list").len(), 8);
    drop(topo);
    assert_eq!(
        list_with_prefix(&prefix).expect("list"),
        Vec::<String>::new()
    );
}

#[test]
fn a_panic_still_tears_everything_down() {
    let mut prefix = None;
    let caught = catch_unwind(AssertUnwindSafe(|| {
        let topo = two_by_two();
        prefix = Some(topo.prefix().to_owned());
        panic!("deliberate panic with a live topology");
    }));
    assert!(caught.is_err());
    let prefix = prefix.expect("topology was built before the panic");
    assert_eq!(
        list_with_prefix(&prefix).expect("list"),
        Vec::<String>::new()
    );
}

#[test]
fn a_failed_build_leaves_nothing_behind() {
    // Invalid counts fail before anything is created; a clash mid-build must clean up what
    // was made: pre-create the node1 namespace name the builder will want next.
    assert!(Topology::builder().nodes(0).build().is_err());
    let next = unique_prefix("ohclash");
    let blocker = Netns::create(&format!("{next}node1")).expect("blocker");
    let err = Topology::builder()
        .fixed_prefix(&next)
        .build()
        .expect_err("name clash");
    assert!(format!("{err:#}").contains("node1"), "{err:#}");
    drop(blocker);
    assert_eq!(list_with_prefix(&next).expect("list"), Vec::<String>::new());
}

#[test]
fn arp_probe_returns_the_node_mac_and_none_for_unowned_ips() {
    let topo = two_by_two();
    let n1 = topo.node(1);
    let mac = topo
        .client()
        .arp(n1.ip(), Duration::from_secs(2))
        .expect("probe");
    assert_eq!(mac, Some(n1.mac()));
    assert_eq!(mac, Some(MacAddr::for_ip(node_ip(1))));
    // A VIP nobody announces: no answer within the bound.
    let started = Instant::now();
    let none = topo
        .client()
        .arp(topology::vip(0), Duration::from_millis(300))
        .expect("probe");
    assert_eq!(none, None);
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[test]
fn in_netns_sockets_and_sysctls_belong_to_the_namespace() {
    let topo = Topology::builder()
        .nodes(1)
        .pods_per_node(1)
        .build()
        .expect("topology");
    let pod = topo.node(1).pod(1);
    // Binding the pod ip only works inside the pod namespace.
    let sock = in_netns(pod.ns(), || {
        std::net::UdpSocket::bind(SocketAddr::from((pod_ip(1, 1), 0)))
    })
    .expect("thread")
    .expect("bind in pod");
    assert_eq!(
        sock.local_addr().expect("addr").ip(),
        std::net::IpAddr::V4(pod.ip())
    );
    assert!(
        std::net::UdpSocket::bind(SocketAddr::from((pod_ip(1, 1), 0))).is_err(),
        "pod ip must not exist in root ns"
    );
    // /proc/thread-self/net/dev shows the namespace's interfaces.
    let dev = in_netns(pod.ns(), || {
        std::fs::read_to_string("/proc/thread-self/net/dev")
    })
    .expect("thread")
    .expect("read");
    let names: Vec<&str> = dev
        .lines()
        .skip(2)
        .filter_map(|l| l.split(':').next())
        .map(str::trim)
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
    assert!(
        names.contains(&"lo") && names.contains(&"eth0"),
        "{names:?}"
    );
    // Panics propagate with their payload.
    let p = catch_unwind(|| in_netns(pod.ns(), || panic!("inner {}", 7)));
    let payload = p.expect_err("panics");
    let msg = payload
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| payload.downcast_ref::<&str>().copied())
        .expect("string payload");
    assert_eq!(msg, "inner 7");
    // A missing namespace is an error, and the closure never runs.
    let ran = std::sync::atomic::AtomicBool::new(false);
    assert!(
        in_netns("ohno-such-netns", || ran
            .store(true, std::sync::atomic::Ordering::SeqCst))
        .is_err()
    );
    assert!(!ran.load(std::sync::atomic::Ordering::SeqCst));
}

fn ns_inode(path: &str) -> String {
    std::fs::read_link(path)
        .expect("readlink")
        .display()
        .to_string()
}

#[test]
fn command_in_enters_the_netns_but_keeps_the_host_mount_namespace() {
    let topo = Topology::builder()
        .nodes(1)
        .pods_per_node(0)
        .build()
        .expect("topology");
    let node = topo.node(1);
    let out = run_checked(command_in(node.ns(), "sh").args([
        "-c",
        "readlink /proc/self/ns/mnt; readlink /proc/self/ns/net; ip -o addr show dev eth0",
    ]))
    .expect("sh in node");
    let mut lines = out.lines();
    assert_eq!(
        lines.next(),
        Some(ns_inode("/proc/self/ns/mnt").as_str()),
        "mount ns must be the host's"
    );
    assert_ne!(
        lines.next(),
        Some(ns_inode("/proc/self/ns/net").as_str()),
        "net ns must not be the host's"
    );
    assert!(out.contains("192.168.50.11/24"), "{out}");
    if Path::new("/sys/fs/bpf").exists() {
        let st = run_checked(command_in(node.ns(), "stat").args(["-f", "-c", "%T", "/sys/fs/bpf"]))
            .expect("stat");
        let here = run_checked(Command::new("stat").args(["-f", "-c", "%T", "/sys/fs/bpf"]))
            .expect("stat");
        assert_eq!(st, here, "the child must see the host's /sys/fs/bpf");
    }
    assert!(run_checked(&mut command_in("ohno-such-netns", "true")).is_err());
}

#[test]
fn spawn_in_guard_kills_on_drop_and_kill_all_clears_leftovers() {
    let topo = Topology::builder()
        .nodes(1)
        .pods_per_node(0)
        .build()
        .expect("topology");
    let ns = topo.node(1).ns();
    let mut cmd = Command::new("sleep");
    cmd.arg("600");
    let guard = spawn_in(ns, cmd).expect("spawn");
    let pid = guard.id();
    assert_eq!(
        ns.pids().expect("pids"),
        vec![i32::try_from(pid).expect("pid")]
    );
    drop(guard);
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "child {pid} survived its guard"
    );
    assert!(ns.pids().expect("pids").is_empty());

    // A process started without a guard: the namespace-wide helper gets it.
    let mut stray = command_in(ns, "sleep")
        .arg("600")
        .spawn()
        .expect("spawn stray");
    assert_eq!(ns.kill_all(Duration::from_secs(2)).expect("kill_all"), 1);
    let st = stray.wait().expect("reap");
    assert!(!st.success());

    // stop(): SIGTERM then wait.
    let mut cmd = Command::new("sleep");
    cmd.arg("600");
    let st = spawn_in(ns, cmd)
        .expect("spawn")
        .stop(Duration::from_secs(2))
        .expect("stop");
    assert!(!st.success());
}

/// Whether `frame` is IPv4/UDP to `dst` and its UDP checksum verifies (a zero checksum,
/// "none", does not count as verified).
fn udp_to(frame: &[u8], dst: Ipv4Addr) -> Option<bool> {
    if frame.len() < 14 + 20 || frame[12..14] != [0x08, 0x00] {
        return None;
    }
    let ip = &frame[14..];
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    if ip[9] != 17 || ip[16..20] != dst.octets() {
        return None;
    }
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    let udp = &ip[ihl..total];
    if udp[6..8] == [0, 0] {
        return Some(false);
    }
    let mut sum: u32 = 0;
    let mut add = |b: &[u8]| {
        for c in b.chunks(2) {
            sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
        }
    };
    add(&ip[12..20]);
    add(&[0, 17]);
    add(&u16::try_from(udp.len()).expect("len").to_be_bytes());
    add(udp);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    Some(sum == 0xffff)
}

#[test]
fn client_frames_carry_complete_checksums_like_a_wire() {
    let topo = Topology::builder()
        .nodes(1)
        .pods_per_node(1)
        .build()
        .expect("topology");
    let (client, node) = (topo.client(), topo.node(1));

    // Client (offloads off) -> node: the node's eth0 must receive a finished checksum.
    let cap = Capture::open(node.ns(), "eth0").expect("capture");
    let to = SocketAddr::from((node.ip(), 9));
    onehop_testkit::udp_request_with(client.ns(), to, b"csum", None, Duration::from_millis(50))
        .ok();
    let f = cap
        .next_matching(Duration::from_secs(2), |f| {
            !f.outgoing && udp_to(&f.data, node.ip()).is_some()
        })
        .expect("capture")
        .expect("the datagram reached node1");
    assert_eq!(
        udp_to(&f.data, node.ip()),
        Some(true),
        "client frame with an unfinished checksum"
    );

    // Control: the node's own eth0 keeps the default offloads, and the same check must see
    // its partial checksum (otherwise this test could not tell the difference).
    let cap = Capture::open(client.ns(), "eth0").expect("capture");
    onehop_testkit::udp_request_with(
        node.ns(),
        SocketAddr::from((client.ip(), 9)),
        b"csum",
        None,
        Duration::from_millis(50),
    )
    .ok();
    let f = cap
        .next_matching(Duration::from_secs(2), |f| {
            !f.outgoing && udp_to(&f.data, client.ip()).is_some()
        })
        .expect("capture")
        .expect("the datagram reached the client");
    assert_eq!(
        udp_to(&f.data, client.ip()),
        Some(false),
        "node frame unexpectedly complete"
    );
}

#[test]
fn reap_stale_deletes_names_of_dead_runs_only() {
    // pid_max is at most 2^22, so this pid cannot be alive.
    let dead = format!("ohstale{}-0-lan", 4_194_304 + 17);
    let alive = format!("ohstale{}-0-lan", std::process::id());
    let guard_alive = Netns::create(&alive).expect("live-run netns");
    let dead_ns = Netns::create(&dead).expect("dead-run netns");
    std::mem::forget(dead_ns); // as if its process had been SIGKILLed
    let reaped = onehop_testkit::netns::reap_stale("ohstale").expect("reap");
    assert_eq!(reaped, vec![dead.clone()]);
    assert_eq!(
        list_with_prefix("ohstale").expect("list"),
        vec![alive.clone()]
    );
    drop(guard_alive);
}
