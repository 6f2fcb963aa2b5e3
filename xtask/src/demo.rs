//! `cargo xtask demo`: onehop in network namespaces on an embedded config.
//!
//! Builds a LAN (bridge), a client, two nodes with two pods each (see
//! onehop-testkit), runs the agent on both nodes (node1 announces the VIP),
//! and shows ARP answered by XDP, requests spread over local and remote
//! pods, ping, and `onehop status`. Nothing touches the host's interfaces;
//! namespaces, pins and processes are removed on exit, also on failure.

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use onehop_testkit::{
    netns::{ChildGuard, command_in, in_netns, spawn_in},
    topology::Topology,
};

use crate::{run_cmd, workspace_root};

const SERVICES: &str = include_str!("demo-services.yaml");
const VIP: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 200);
const REQUESTS: usize = 200;

/// Removes the demo's bpffs pins and scratch files on drop.
struct Scratch {
    pins: PathBuf,
    dir: PathBuf,
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.pins);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn onehop_binary() -> Result<PathBuf> {
    let root = workspace_root();
    run_cmd(Command::new("cargo").current_dir(&root).args(["build", "--release", "-p", "lb-userspace", "--bin", "onehop"]))?;
    Ok(root.join("target/release/onehop"))
}

fn wait_ready(onehop: &Path, pins: &Path, node: u8, log: &Path) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = Command::new(onehop)
            .args(["status", "--interface", "eth0", "--bpffs-root"])
            .arg(pins.join(format!("node{node}")))
            .output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        if out.status.success() && !text.contains("NOT CONFIGURED") && text.contains("SERVICES (1)") {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("agent on node{node} did not get ready; its log:\n{}", std::fs::read_to_string(log).unwrap_or_default());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub fn run() -> Result<()> {
    let onehop = onehop_binary()?;
    println!("== building the demo network (namespaces only)");
    let topo = Topology::builder().nodes(2).pods_per_node(2).base("ohdemo").build()?;
    let _servers = topo.serve_http_all(8080)?;
    let scratch = Scratch {
        pins: PathBuf::from(format!("/sys/fs/bpf/{}", topo.prefix().trim_end_matches('-'))),
        dir: std::env::temp_dir().join(topo.prefix().trim_end_matches('-')),
    };
    std::fs::create_dir_all(&scratch.dir)?;
    // veths deliver XDP_TX frames only when the peer runs an XDP program.
    let peers: Vec<String> = topo.nodes().iter().map(|n| n.lan_peer().to_owned()).collect();
    let _passes = in_netns(topo.lan(), || peers.iter().map(|p| lb_userspace::peer::attach(p)).collect::<Result<Vec<_>>>())??;
    for n in topo.nodes() {
        println!("   {:<7} eth0 {:<15} {}   pods: {}", n.name().rsplit('-').next().unwrap_or(""), n.ip(), n.mac(),
            (1..=2).map(|j| n.pod(j).ip().to_string()).collect::<Vec<_>>().join(", "));
    }
    println!("   client  eth0 {:<15} {}", topo.client().ip(), topo.client().mac());

    let mut agents: Vec<ChildGuard> = Vec::new();
    for node in [1u8, 2] {
        let config = scratch.dir.join(format!("node{node}.yaml"));
        let text = if node == 1 {
            SERVICES.to_owned()
        } else {
            SERVICES.replace("node: { ip: 192.168.50.11 }", "node: { ip: 192.168.50.12 }").replace("announce: [192.168.50.200]", "announce: []")
        };
        std::fs::write(&config, text)?;
        let log = scratch.dir.join(format!("node{node}.log"));
        let mut cmd = command_in(topo.node(node).ns(), &onehop);
        cmd.args(["agent", "--interface", "eth0", "--poll-interval-ms", "200", "--maglev-slots", "65536"])
            .arg("--config")
            .arg(&config)
            .arg("--bpffs-root")
            .arg(scratch.pins.join(format!("node{node}")))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?);
        agents.push(spawn_in(topo.node(node).ns(), cmd)?);
        wait_ready(&onehop, &scratch.pins, node, &log)?;
    }
    println!("\n== services file (embedded)\n{SERVICES}");

    println!("== ARP from the client: who has {VIP}?");
    let mac = topo.client().arp(VIP, Duration::from_secs(2))?.context("nobody answered ARP for the VIP")?;
    println!("   {VIP} is-at {mac}  (node1's eth0 MAC, answered by XDP; no address is configured for the VIP)");

    println!("\n== {REQUESTS} HTTP requests to http://{VIP}/ (a new connection each)");
    let addr = SocketAddr::V4(SocketAddrV4::new(VIP, 80));
    let mut seen: BTreeMap<String, (usize, String)> = BTreeMap::new();
    for _ in 0..REQUESTS {
        let a = topo.client().http_get(addr)?.answer()?;
        let e = seen.entry(a.pod).or_insert((0, String::new()));
        e.0 += 1;
        e.1 = a.client.ip().to_string();
    }
    println!("   {:<12} {:>8}   {}", "pod", "requests", "source address the pod saw");
    for (pod, (n, src)) in &seen {
        let why = if src == &topo.client().ip().to_string() { "the client itself (local backend: DNAT only)" } else { "node1 (remote backend: full NAT)" };
        println!("   {pod:<12} {n:>8}   {src} = {why}");
    }

    println!("\n== ping {VIP} (answered from XDP)");
    let ping = command_in(topo.client().ns(), "ping").args(["-c", "3", "-i", "0.2", "-W", "1", &VIP.to_string()]).output()?;
    print!("{}", String::from_utf8_lossy(&ping.stdout).lines().filter(|l| l.contains("bytes from") || l.contains("transmitted")).map(|l| format!("   {l}\n")).collect::<String>());

    println!("\n== onehop status on node1 (read from the pinned maps)");
    let out = Command::new(&onehop).args(["status", "--interface", "eth0", "--bpffs-root"]).arg(scratch.pins.join("node1")).output()?;
    print!("{}", String::from_utf8_lossy(&out.stdout));
    println!("\n== onehop status on node2: it dropped the client's ARP request for the VIP it does not own");
    let out = Command::new(&onehop).args(["status", "--interface", "eth0", "--bpffs-root"]).arg(scratch.pins.join("node2")).output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    print!("{}", text.split("\nDROPS").nth(1).map(|d| format!("DROPS{d}")).unwrap_or_default());

    println!("\n== cleaning up");
    drop(agents);
    Ok(())
}
