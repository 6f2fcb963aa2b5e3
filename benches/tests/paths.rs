//! Privileged: every data path of `bench-e2e`, installed for 10 services, really balances
//! the test service: HTTP through the VIP reaches pods on node1 (local) and node2 (remote),
//! the UDP generator's new flows arrive at the pods, and the short-TCP-connection
//! generator's handshakes complete at the pods (counted there as the client counts them),
//! also on both nodes. So the baselines are proven to work, not just loaded, and both
//! generators are proven to count what really arrives.

use std::{collections::BTreeSet, path::PathBuf, time::Duration};

use onehop_benches::e2e::{
    http,
    load::{self, Flows},
    paths::{self, World},
    tcp,
};

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
        world.flush_conntrack();
        let before = load::pod_rx(&world.topo).expect("rx");
        let sent = load::send(
            &world.topo,
            &inst.udp,
            Flows::New,
            Some(4000),
            Duration::from_millis(500),
        )
        .expect("send");
        std::thread::sleep(Duration::from_millis(300));
        let after = load::pod_rx(&world.topo).expect("rx");
        let per_pod: Vec<u64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
        let delivered: u64 = per_pod.iter().sum();
        assert!(sent.frames >= 1000, "{name}: sent only {sent:?}");
        // A few ARP frames may be counted too; losses at 4 kpps would be a broken path.
        assert!(
            delivered >= sent.frames * 98 / 100 && delivered <= sent.frames + 50,
            "{name}: sent {} delivered {delivered} ({per_pod:?})",
            sent.frames
        );
        assert!(
            per_pod[..2].iter().sum::<u64>() > delivered / 5
                && per_pod[2..].iter().sum::<u64>() > delivered / 5,
            "{name}: UDP not spread over local and remote pods: {per_pod:?}"
        );
        check_short_tcp(&world, &inst, name);
        drop(inst);
    }
}

/// Short TCP connections through `inst` complete, at the pods as the client counts them,
/// spread over local and remote pods, without failures.
fn check_short_tcp(world: &World, inst: &paths::Installed, name: &str) {
    world.flush_conntrack();
    if let Some(reset) = &inst.reset_flows {
        reset().expect("reset flows");
    }
    let before = tcp::pod_passive_opens(&world.topo).expect("snmp");
    let d0 = tcp::pod_listen_drops(&world.topo).expect("netstat");
    let sent = tcp::short_connections(&world.topo, &inst.http, 16, Duration::from_millis(1500))
        .unwrap_or_else(|e| panic!("{name}: tcp generator: {e:#}"));
    std::thread::sleep(Duration::from_millis(300));
    let after = tcp::pod_passive_opens(&world.topo).expect("snmp");
    let d1 = tcp::pod_listen_drops(&world.topo).expect("netstat");
    let drops: Vec<u64> = d1.iter().zip(&d0).map(|(a, b)| a - b).collect();
    let per_pod: Vec<u64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
    let at_pods: u64 = per_pod.iter().sum();
    eprintln!("{name}: tcp {sent:?}, at the pods {per_pod:?}");
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
        "{name}: client completed {} handshakes, pods {at_pods} ({per_pod:?}), in flight at the end {}",
        sent.completed,
        sent.abandoned
    );
    assert!(
        per_pod[..2].iter().sum::<u64>() > at_pods / 5
            && per_pod[2..].iter().sum::<u64>() > at_pods / 5,
        "{name}: TCP not spread over local and remote pods: {per_pod:?}"
    );
}
