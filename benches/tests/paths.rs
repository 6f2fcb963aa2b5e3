//! Privileged: every data path of `bench-e2e`, installed for 10 services, really balances
//! the test service: HTTP through the VIP reaches pods on node1 (local) and node2 (remote),
//! and both UDP generators' new flows (the socket generator's and the XDP generator's, whose
//! frames arrive at the nodes as XDP frames) arrive at the pods, also on both nodes; the XDP
//! generator's one-flow workload is delivered too. So the baselines are proven to work, not
//! just loaded, with either generator.

use std::{collections::BTreeSet, path::PathBuf, time::Duration};

use onehop_benches::e2e::{
    load::{self, Flows, Sent},
    paths::{self, World},
    xdpgen::{self, XdpGen},
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
    let _http = world
        .topo
        .serve_http_all(paths::HTTP_TARGET_PORT)
        .expect("http servers");
    let _sinks = load::udp_sinks(&world.topo, paths::UDP_TARGET_PORT).expect("udp sinks");
    // GRO (so NAPI) on on the nodes' eth0 from here on: the socket generator works with it
    // too, and the XDP generator needs it for the paths without an XDP program.
    let xdp = XdpGen::new(&world.topo).expect("xdp generator");
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
            seen.insert(r.answer().expect("answer").pod);
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
        let per_pod = udp_delivered(&world, &format!("{name}, xdp generator"), || {
            xdp.send(&world.topo, &inst.udp, Flows::New, Some(4000), window)
        });
        assert_spread(name, "xdp", &per_pod);
        udp_delivered(&world, &format!("{name}, xdp generator, one flow"), || {
            xdp.send(&world.topo, &inst.udp, Flows::One, Some(4000), window)
        });
        drop(inst);
    }
}

/// Sends with `generate` (about 2,000 frames at 4 kpps) and checks that the pods received them;
/// returns what each pod received.
fn udp_delivered(
    world: &World,
    what: &str,
    generate: impl FnOnce() -> anyhow::Result<Sent>,
) -> Vec<u64> {
    world.flush_conntrack();
    let before = load::pod_rx(&world.topo).expect("rx");
    let sent = generate().unwrap_or_else(|e| panic!("{what}: send: {e:#}"));
    std::thread::sleep(Duration::from_millis(300));
    let after = load::pod_rx(&world.topo).expect("rx");
    let per_pod: Vec<u64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
    let delivered: u64 = per_pod.iter().sum();
    assert!(sent.frames >= 1000, "{what}: sent only {sent:?}");
    // A few ARP frames may be counted too; losses at 4 kpps would be a broken path.
    assert!(
        delivered >= sent.frames * 98 / 100 && delivered <= sent.frames + 50,
        "{what}: sent {} delivered {delivered} ({per_pod:?})\n{}",
        sent.frames,
        xdpgen::drop_report(&world.topo)
    );
    per_pod
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
