//! Privileged: every data path of `bench-e2e`, installed for 10 services, really balances
//! the test service: HTTP through the VIP reaches pods on node1 (local) and node2 (remote),
//! both UDP generators' new flows (the socket generator's and the XDP generator's, whose
//! frames arrive at the nodes as XDP frames) arrive at the pods, also on both nodes (the XDP
//! generator's one-flow workload too), the established-flow workload finds flows to a local
//! and a remote pod that stay there, and the short-TCP-connection generator's handshakes
//! complete at the pods (counted there as the client counts them). So the baselines are
//! proven to work, not just loaded, and the generators to count what really arrives.

use std::{collections::BTreeSet, path::PathBuf, time::Duration};

use onehop_benches::e2e::{
    http,
    load::{self, Flows, Sent},
    paths::{self, World},
    pinned::{self, Locality},
    tcp,
    xdpgen::{self, XdpGen},
};
use onehop_testkit::capture::Capture;

/// The `onehop` binary of this test's profile, (re)built so it is never stale (a no-op when
/// `cargo test` of the workspace has just built it).
fn onehop_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/<test> → target/<profile>/onehop
    let dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = std::process::Command::new(cargo);
    cmd.args(["build", "-q", "-p", "lb-userspace", "--bin", "onehop"]);
    if dir.ends_with("release") {
        cmd.arg("--release");
    }
    assert!(
        cmd.status().expect("cargo build").success(),
        "building onehop"
    );
    dir.join("onehop")
}

#[test]
fn every_path_balances_to_local_and_remote_pods() {
    let world = World::build(&onehop_binary()).expect("world");
    // The bench's own HTTP servers: nginx answers with the pod's name, and its accept loop
    // keeps up with the short-connection generator (a thread per connection would not: its
    // accept queue overflows and drops SYNs).
    let _http = http::start_nginx(&world.topo, paths::HTTP_TARGET_PORT, world.scratch())
        .expect("nginx in the pods (Debian package nginx-light)");
    let _sinks = load::udp_sinks(&world.topo, paths::UDP_TARGET_PORT).expect("udp sinks");
    // GRO (so NAPI) on on the nodes' eth0 from here on: the socket generator works with it
    // too, and the XDP generator needs it for the paths without an XDP program.
    let mut xdp = XdpGen::new(&world.topo).expect("xdp generator");
    // The socket generator and HTTP still check every path where the kernel refuses it.
    let refused = xdp.live_frames_refused();
    if let Some(why) = &refused {
        // Past the test harness's capture: the log of a passing run must say so too.
        use std::io::Write as _;
        let _ = writeln!(
            std::io::stderr(),
            "paths: the XDP generator's checks are skipped, this kernel refuses it: {why}"
        );
    }
    let xdp = refused.is_none().then_some(xdp);
    let services = paths::services(&world.topo, 10);
    assert_eq!(services.len(), 10);
    for path in paths::all() {
        let name = path.name();
        let inst = path
            .install(&world, &services)
            .unwrap_or_else(|e| panic!("{name}: install: {e:#}"));
        let mut seen = BTreeSet::new();
        for i in 0..60 {
            let t = inst.http[i % inst.http.len()];
            let r = world
                .topo
                .client()
                .http_get(t.addr.into())
                .unwrap_or_else(|e| panic!("{name}: GET {} #{i}: {e:#}", t.addr));
            seen.insert(r.text().trim().to_owned());
        }
        assert!(
            seen.iter().any(|p| p.starts_with("node1-"))
                && seen.iter().any(|p| p.starts_with("node2-")),
            "{name}: HTTP reached only {seen:?}"
        );
        let window = Duration::from_millis(500);
        let per_pod = udp_delivered(&world, &format!("{name}, socket generator"), || {
            load::send(&world.topo, &inst.udp, Flows::New, Some(4000), window)
        });
        assert_spread(name, "socket", &per_pod);
        if let Some(xdp) = &xdp {
            let per_pod = udp_delivered(&world, &format!("{name}, xdp generator"), || {
                xdp.send(&world.topo, &inst.udp, Flows::New, Some(4000), window)
            });
            assert_spread(name, "xdp", &per_pod);
            udp_delivered(&world, &format!("{name}, xdp generator, one flow"), || {
                xdp.send(
                    &world.topo,
                    &inst.udp,
                    Flows::One { sport: 40_000 },
                    Some(4000),
                    window,
                )
            });
            check_pinned(&world, xdp, &inst, name);
        }
        check_short_tcp(&world, &inst, name);
        if let Some(xdp) = &xdp {
            check_remote_service(&world, xdp, &inst, name);
        }
        drop(inst);
    }
}

/// The remote workloads' service reaches node2's pods and only those, over HTTP and with the
/// XDP generator's new flows (every one delivered): what the remote figures measure is the way
/// to a backend on another node.
fn check_remote_service(world: &World, xdp: &XdpGen, inst: &paths::Installed, name: &str) {
    // Not from empty flow tables: right after the short-TCP check, thousands of client
    // ports went to the other VIP, half of them to node2's pods, and the GETs below reuse
    // some of them towards the same pods through this service's address. The pods' replies
    // must leave from this front, not the older flows' (`local::reply` in lb-ebpf; it took
    // the first recorded front once, and onehop-direct's GETs timed out here).
    let mut seen = BTreeSet::new();
    for i in 0..20 {
        let t = inst.remote_http[i % inst.remote_http.len()];
        let r = world
            .topo
            .client()
            .http_get(t.addr.into())
            .unwrap_or_else(|e| panic!("{name}: GET {} (remote service) #{i}: {e:#}", t.addr));
        seen.insert(r.text().trim().to_owned());
    }
    assert!(
        !seen.is_empty() && seen.iter().all(|p| p.starts_with("node2-")),
        "{name}: the remote service's HTTP reached {seen:?}"
    );
    let per_pod = udp_delivered(world, &format!("{name}, remote service"), || {
        xdp.send(
            &world.topo,
            &inst.remote_udp,
            Flows::New,
            Some(4000),
            Duration::from_millis(500),
        )
    });
    // The pods count every frame at eth0: a neighbour probe from node1 may be among them.
    let node1: u64 = per_pod[..2].iter().sum();
    assert!(
        node1 < 10,
        "{name}: remote service frames on node1's pods: {per_pod:?}"
    );
    assert!(
        per_pod[2..].iter().all(|&n| n > 0),
        "{name}: remote service frames not on both node2 pods: {per_pod:?}"
    );
}

/// The established-flow workload's probe finds a flow to a local and one to a remote pod, and
/// the path then keeps each flow on that pod (what the workload measures).
fn check_pinned(world: &World, xdp: &XdpGen, inst: &paths::Installed, name: &str) {
    inst.forget_flows(world).expect("forget flows");
    for locality in [Locality::Local, Locality::Remote] {
        let flow = pinned::find(world, &inst.udp, locality)
            .unwrap_or_else(|e| panic!("{name}: {} flow: {e:#}", locality.name()));
        let node = world.topo.pods().nth(flow.pod).expect("pod").node_index();
        assert_eq!(
            node,
            if locality == Locality::Local { 1 } else { 2 },
            "{name}: {} flow went to pod {}",
            locality.name(),
            flow.pod
        );
        let before = load::pod_rx(&world.topo).expect("rx");
        let sent = xdp
            .send(
                &world.topo,
                &[flow.target],
                flow.flows(),
                Some(4000),
                Duration::from_millis(300),
            )
            .expect("xdp generator");
        std::thread::sleep(Duration::from_millis(200));
        let per_pod = load::pod_rx_since(&world.topo, &before).expect("rx");
        let elsewhere: u64 = per_pod.iter().sum::<u64>() - per_pod[flow.pod];
        assert!(
            per_pod[flow.pod] >= sent.frames * 98 / 100 && elsewhere <= 5,
            "{name}: {} flow {flow:?}: sent {} frames, pods got {per_pod:?}",
            locality.name(),
            sent.frames
        );
    }
}

/// Short TCP connections through `inst` complete, at the pods as the client counts them,
/// spread over local and remote pods, without failures.
fn check_short_tcp(world: &World, inst: &paths::Installed, name: &str) {
    inst.forget_flows(world).expect("forget flows");
    let before = tcp::PASSIVE_OPENS.pods(&world.topo).expect("snmp");
    let d0 = tcp::LISTEN_DROPS.pods(&world.topo).expect("netstat");
    let c0 = inst.onehop_counters().expect("onehop counters");
    let e0 = tcp::EMBRYONIC_RSTS.pods(&world.topo).expect("netstat");
    let sent = tcp::short_connections(&world.topo, &inst.http, 16, Duration::from_millis(1500))
        .unwrap_or_else(|e| panic!("{name}: tcp generator: {e:#}"));
    std::thread::sleep(Duration::from_millis(300));
    let after = tcp::PASSIVE_OPENS.pods(&world.topo).expect("snmp");
    let d1 = tcp::LISTEN_DROPS.pods(&world.topo).expect("netstat");
    let drops: Vec<u64> = d1.iter().zip(&d0).map(|(a, b)| a - b).collect();
    let per_pod: Vec<u64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
    let at_pods: u64 = per_pod.iter().sum();
    let c1 = inst.onehop_counters().expect("onehop counters");
    let e1 = tcp::EMBRYONIC_RSTS.pods(&world.topo).expect("netstat");
    let embryonic: Vec<u64> = e1.iter().zip(&e0).map(|(a, b)| a - b).collect();
    let moved: Vec<String> = c1
        .iter()
        .filter_map(|(k, v)| {
            let d = v - c0.get(k).copied().unwrap_or(0);
            (d != 0).then(|| format!("{k} {d}"))
        })
        .collect();
    eprintln!(
        "{name}: tcp {sent:?}, at the pods {per_pod:?} (reset before the final ACK \
         {embryonic:?}), onehop counters [{}]",
        moved.join(", ")
    );
    assert!(
        sent.completed >= 300,
        "{name}: only {} short connections completed: {sent:?} ({per_pod:?})",
        sent.completed
    );
    // The run is longer than the connect timeout, so a lost handshake shows up here.
    assert_eq!(
        sent.failures(),
        0,
        "{name}: failed connects: timeouts {} errors {}",
        sent.timeouts,
        sent.error_text()
    );
    // A connect still in flight when the run ended may have completed at the pod only.
    assert!(
        drops.iter().all(|d| *d == 0),
        "{name}: the pods' listeners dropped handshakes: {drops:?}"
    );
    let slack = sent.abandoned + sent.completed / 100;
    assert!(
        at_pods + slack >= sent.completed && at_pods <= sent.completed + slack,
        "{name}: client completed {} handshakes, pods {at_pods} ({per_pod:?}, reset before \
         the final ACK {embryonic:?}), in flight at the end {}",
        sent.completed,
        sent.abandoned
    );
    assert!(
        per_pod[..2].iter().sum::<u64>() > at_pods / 5
            && per_pod[2..].iter().sum::<u64>() > at_pods / 5,
        "{name}: TCP not spread over local and remote pods: {per_pod:?}"
    );
}

/// Sends with `generate` (about 2,000 frames at 4 kpps) and checks that the pods received them;
/// returns what each pod received.
fn udp_delivered(
    world: &World,
    what: &str,
    generate: impl FnOnce() -> anyhow::Result<Sent>,
) -> Vec<u64> {
    world.flush_conntrack();
    // Pods count frames at eth0, before any checksum is verified: capture some at every pod
    // and verify both checksums of what arrived.
    let captures: Vec<Capture> = world
        .topo
        .pods()
        .map(|p| Capture::open(p.ns(), "eth0").expect("capture"))
        .collect();
    let before = load::pod_rx(&world.topo).expect("rx");
    let sent = generate().unwrap_or_else(|e| panic!("{what}: send: {e:#}"));
    std::thread::sleep(Duration::from_millis(300));
    let per_pod = load::pod_rx_since(&world.topo, &before).expect("rx");
    let delivered: u64 = per_pod.iter().sum();
    assert!(sent.frames >= 1000, "{what}: sent only {sent:?}");
    // A few ARP frames may be counted too; losses at 4 kpps would be a broken path.
    assert!(
        delivered >= sent.frames * 98 / 100 && delivered <= sent.frames + 50,
        "{what}: sent {} delivered {delivered} ({per_pod:?})\n{}",
        sent.frames,
        xdpgen::drop_report(&world.topo)
    );
    // One flow reaches one pod only: check what each capture got, 10 frames at most each.
    let mut checked = 0;
    for c in &captures {
        for _ in 0..10 {
            let Some(f) = c
                .next_matching(Duration::from_millis(200), |f| {
                    !f.outgoing && is_udp_to(&f.data, paths::UDP_TARGET_PORT)
                })
                .expect("capture")
            else {
                break;
            };
            assert!(
                checksums_ok(&f.data),
                "{what}: bad checksum at a pod: {:02x?}",
                f.data
            );
            checked += 1;
        }
    }
    assert!(
        checked >= 10,
        "{what}: only {checked} UDP frames captured at the pods"
    );
    per_pod
}

fn is_udp_to(f: &[u8], port: u16) -> bool {
    f.len() >= 42
        && f[12..14] == [8, 0]
        && f[14] == 0x45
        && f[23] == 17
        && f[36..38] == port.to_be_bytes()
}

fn sum16(data: &[u8]) -> u32 {
    data.chunks(2)
        .map(|c| u32::from(c[0]) << 8 | u32::from(c.get(1).copied().unwrap_or(0)))
        .sum()
}

fn folds_to_ones(mut s: u32) -> bool {
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    s == 0xffff
}

/// IPv4 header checksum and UDP checksum (present and right) of an Ethernet/IPv4/UDP frame.
fn checksums_ok(f: &[u8]) -> bool {
    let ip = &f[14..34];
    let udp_len = usize::from(u16::from_be_bytes([f[38], f[39]]));
    let Some(udp) = f.get(34..34 + udp_len) else {
        return false;
    };
    let pseudo = sum16(&ip[12..20]) + 17 + u32::try_from(udp_len).expect("len");
    folds_to_ones(sum16(ip)) && udp[6..8] != [0, 0] && folds_to_ones(pseudo + sum16(udp))
}

#[track_caller]
fn assert_spread(name: &str, generator: &str, per_pod: &[u64]) {
    let delivered: u64 = per_pod.iter().sum();
    assert!(
        per_pod[..2].iter().sum::<u64>() > delivered / 5
            && per_pod[2..].iter().sum::<u64>() > delivered / 5,
        "{name}, {generator} generator: UDP not spread over local and remote pods: {per_pod:?}"
    );
}
