//! The map-memory figures of `dataplane::memory` (logged by the agent, tabulated in the
//! README, the basis of the agent's memory limit) against the kernel's own accounting
//! of a real load on this machine: the `memlock` line of `/proc/self/fdinfo/<map fd>`,
//! which is the map's `map_mem_usage`.

use std::{
    fmt::Write as _,
    os::fd::{AsFd as _, AsRawFd as _},
};

mod cluster;

use aya::maps::MapData;
use lb_common::maps::{BPF_F_NO_PREALLOC, MapKind, TABLE};
use lb_userspace::{
    dataplane::{
        loader::{self, Sizes},
        maps::PinDir,
        memory,
    },
    net::netdev::Interface,
};
use onehop_testkit::{bpffs::PinRoot, netns::in_netns, topology::Topology};

fn memlock(map: &MapData) -> u64 {
    let fd = map.fd().as_fd().as_raw_fd();
    let text = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).expect("fdinfo");
    text.lines()
        .find_map(|l| l.strip_prefix("memlock:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no memlock in fdinfo:\n{text}"))
}

/// The default sizes the agent creates on this machine (counters sized by its CPU count),
/// loaded for real; every preallocated map's figure is the kernel's within the header
/// allowance, and the total is the kernel's total within 1%.
#[test]
fn map_memory_matches_the_kernels_accounting() {
    let cpus = memory::possible_cpus();
    let (service_stats, backend_stats) = memory::stats_entries(cpus, memory::STATS_BUDGET);
    let sizes = Sizes {
        service_stats,
        backend_stats,
        ..Sizes::default()
    };
    let topo = Topology::builder()
        .nodes(1)
        .pods_per_node(0)
        .build()
        .expect("topology");
    let root = PinRoot::unique("memory").expect("pin root");
    in_netns(topo.node(1).ns(), || -> anyhow::Result<()> {
        let iface = Interface::lookup("eth0")?;
        loader::attach(&iface, root.path(), sizes, loader::XdpAttachMode::Auto)?;
        Ok(())
    })
    .expect("netns")
    .expect("attach with the default sizes");
    let pins = PinDir::new(root.path(), "eth0");
    assert_eq!(memory::pinned_sizes(&pins).expect("pinned sizes"), sizes);

    let mut kernel_total = 0;
    let mut ours_total = 0;
    let mut table = String::new();
    for spec in TABLE {
        let map = MapData::from_pin(pins.entry(spec.name)).expect("pinned map");
        let entries = map.info().expect("info").max_entries();
        assert_eq!(entries, memory::entries(&spec, &sizes), "{}", spec.name);
        let kernel = memlock(&map);
        let ours = memory::map_bytes(&spec, entries, cpus);
        let _ = writeln!(
            table,
            "{:<14} {:>10} entries  kernel {:>11}  ours {:>11}",
            spec.name, entries, kernel, ours
        );
        if spec.kind == MapKind::LpmTrie || spec.flags & BPF_F_NO_PREALLOC != 0 {
            // Not preallocated (the trie; `arp_stats`, created without preallocation): the
            // kernel counts what is in use (nothing yet, but for the hash's buckets, 16
            // bytes each, and locks); ours is the map full, what the limit must allow for.
            assert!(
                kernel <= ours,
                "{}: kernel {kernel}, ours {ours}",
                spec.name
            );
            let buckets = if spec.kind == MapKind::LpmTrie {
                0
            } else {
                16 * u64::from(entries.next_power_of_two())
            };
            assert!(
                kernel <= buckets + 256 * 1024,
                "{}: {kernel} for an empty map",
                spec.name
            );
            continue;
        }
        assert!(
            ours >= kernel && ours - kernel <= 1024,
            "{}: kernel {kernel}, ours {ours}\n{table}",
            spec.name
        );
        kernel_total += kernel;
        ours_total += ours;
    }
    eprintln!("{cpus} possible CPUs\n{table}");
    eprintln!(
        "total without the trie and arp_stats: kernel {}, ours {}",
        memory::mib(kernel_total),
        memory::mib(ours_total)
    );
    assert!(ours_total - kernel_total <= kernel_total / 100, "{table}");
}

/// Counters smaller than the id space (what a many-CPU node gets): every backend still
/// serves, the ones beyond the counters are reported as not counted, never as zero.
#[test]
fn backends_beyond_the_counters_serve_and_are_reported_uncounted() {
    use std::{
        collections::BTreeSet,
        net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    };
    let c = cluster::Cluster::new(1, 4, 1);
    let vip = Ipv4Addr::new(192, 168, 50, 200);
    let node = c.topo.node(1);
    let mut backends = String::new();
    for p in 1..=4u8 {
        let _ = writeln!(
            backends,
            "      - {{ ip: {}, node_ip: {} }}",
            node.pod(p).ip(),
            node.ip()
        );
    }
    c.write_services(
        1,
        &format!(
            "node: {{ ip: {ip} }}\nannounce: [{vip}]\nservices:\n  - name: web\n    \
             vip: {vip}\n    ports: [{{ port: 80, target_port: {port} }}]\n    backends:\n{backends}",
            ip = node.ip(),
            port = cluster::TARGET_PORT,
        ),
    )
    .expect("services file");
    let source = c.services_path(1).to_string_lossy().into_owned();
    c.spawn_agent(
        1,
        &["--services-file", &source, "--backend-stats-size", "2"],
        &[],
    );
    c.wait_for(1, "4 backends", |s| cluster::pods_in_use(s) == 4);
    let addr = SocketAddr::V4(SocketAddrV4::new(vip, 80));
    let mut pods = BTreeSet::new();
    for i in 0..200 {
        let a = c
            .topo
            .client()
            .http_get(addr)
            .and_then(|r| r.answer())
            .unwrap_or_else(|e| panic!("request {i}: {e:#}\n{}", c.log(1)));
        pods.insert(a.pod);
    }
    assert_eq!(pods.len(), 4, "every backend serves: {pods:?}");
    let s = c.snapshot(1).expect("snapshot");
    let counted: Vec<_> = s.backends.iter().filter(|b| b.counted).collect();
    assert_eq!(counted.len(), 2, "{:?}", s.backends);
    assert!(counted.iter().all(|b| b.id < 2 && b.traffic.packets > 0));
    assert!(
        s.backends
            .iter()
            .filter(|b| !b.counted)
            .all(|b| b.traffic.packets == 0)
    );
    assert!(c.log(1).contains("counted_backends=2"), "{}", c.log(1));
    // `onehop status` reads the pinned maps, with or without an agent.
    c.kill_agent(1);
    let mut status = std::process::Command::new(c.binary());
    status
        .args(["status", "--interface", "eth0", "--bpffs-root"])
        .arg(c.pin_root(1));
    let text = onehop_testkit::netns::run_checked(&mut status).expect("status");
    assert_eq!(text.matches("n/c").count(), 4, "{text}");
}
