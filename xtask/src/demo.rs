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
    run_cmd(Command::new("cargo").current_dir(&root).args([
        "build",
        "--release",
        "-p",
        "lb-userspace",
        "--bin",
        "onehop",
    ]))?;
    Ok(root.join("target/release/onehop"))
}

fn wait_ready(onehop: &Path, pins: &Path, log: &Path) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = Command::new(onehop)
            .args(["status", "--interface", "eth0", "--bpffs-root"])
            .arg(pins)
            .output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        if out.status.success() && !text.contains("NOT CONFIGURED") && text.contains("SERVICES (1)")
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "the agent did not get ready; its log:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The demo's world; dropping it stops the agents and removes everything.
struct Demo {
    agents: Vec<ChildGuard>,
    _passes: Vec<lb_userspace::dataplane::peer::PassThrough>,
    _servers: Vec<onehop_testkit::server::HttpServer>,
    scratch: Scratch,
    topo: Topology,
    onehop: PathBuf,
}

impl Demo {
    fn build(onehop: PathBuf) -> Result<Self> {
        println!("== building the demo network (namespaces only)");
        let topo = Topology::builder()
            .nodes(2)
            .pods_per_node(2)
            .base("ohdemo")
            .build()?;
        let servers = topo.serve_http_all(8080)?;
        let name = topo.prefix().trim_end_matches('-').to_owned();
        let scratch = Scratch {
            pins: PathBuf::from(format!("/sys/fs/bpf/{name}")),
            dir: std::env::temp_dir().join(&name),
        };
        std::fs::create_dir_all(&scratch.dir)?;
        // veths deliver XDP_TX frames only when the peer runs an XDP program.
        let peers: Vec<String> = topo
            .nodes()
            .iter()
            .map(|n| n.lan_peer().to_owned())
            .collect();
        let passes = in_netns(topo.lan(), || {
            peers
                .iter()
                .map(|p| lb_userspace::dataplane::peer::attach(p))
                .collect::<Result<Vec<_>>>()
        })??;
        for n in topo.nodes() {
            let pods: Vec<String> = (1..=2).map(|j| n.pod(j).ip().to_string()).collect();
            println!(
                "   node{} eth0 {:<15} {}   pods {}",
                n.index(),
                n.ip(),
                n.mac(),
                pods.join(", ")
            );
        }
        println!(
            "   client eth0 {:<15} {}",
            topo.client().ip(),
            topo.client().mac()
        );
        Ok(Self {
            agents: Vec::new(),
            _passes: passes,
            _servers: servers,
            scratch,
            topo,
            onehop,
        })
    }

    fn pins(&self, node: u8) -> PathBuf {
        self.scratch.pins.join(format!("node{node}"))
    }

    /// node1 announces the VIP; node2 serves it but drops ARP for it.
    fn start_agents(&mut self) -> Result<()> {
        for node in [1u8, 2] {
            let config = self.scratch.dir.join(format!("node{node}.yaml"));
            let text = if node == 1 {
                SERVICES.to_owned()
            } else {
                SERVICES
                    .replace("node: { ip: 192.168.50.11 }", "node: { ip: 192.168.50.12 }")
                    .replace("announce: [192.168.50.200]", "announce: []")
            };
            std::fs::write(&config, text)?;
            let log = self.scratch.dir.join(format!("node{node}.log"));
            let mut cmd = command_in(self.topo.node(node).ns(), &self.onehop);
            cmd.args([
                "agent",
                "--interface",
                "eth0",
                "--poll-interval-ms",
                "200",
                "--maglev-slots",
                "65536",
            ])
            .arg("--config")
            .arg(&config)
            .arg("--bpffs-root")
            .arg(self.pins(node))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?);
            self.agents.push(spawn_in(self.topo.node(node).ns(), cmd)?);
            wait_ready(&self.onehop, &self.pins(node), &log)?;
        }
        println!("\n== services file (embedded)\n{SERVICES}");
        Ok(())
    }

    fn show_arp(&self) -> Result<()> {
        println!("== ARP from the client: who has {VIP}?");
        let mac = self
            .topo
            .client()
            .arp(VIP, Duration::from_secs(2))?
            .context("nobody answered ARP for the VIP")?;
        println!(
            "   {VIP} is-at {mac}: node1's eth0, answered by XDP (no address is configured for the VIP)"
        );
        Ok(())
    }

    fn show_requests(&self) -> Result<()> {
        println!("\n== {REQUESTS} HTTP requests to http://{VIP}/ (a new connection each)");
        let addr = SocketAddr::V4(SocketAddrV4::new(VIP, 80));
        let mut seen: BTreeMap<String, (usize, std::net::IpAddr)> = BTreeMap::new();
        for _ in 0..REQUESTS {
            let a = self.topo.client().http_get(addr)?.answer()?;
            let e = seen.entry(a.pod).or_insert((0, a.client.ip()));
            e.0 += 1;
            e.1 = a.client.ip();
        }
        println!("   pod          requests   source address the pod saw");
        for (pod, (n, src)) in &seen {
            let why = if *src == self.topo.client().ip() {
                "the client itself (local backend: DNAT only)"
            } else {
                "node1 (remote backend: full NAT)"
            };
            println!("   {pod:<12} {n:>8}   {src} = {why}");
        }
        Ok(())
    }

    fn show_ping(&self) -> Result<()> {
        println!("\n== ping {VIP} (answered from XDP)");
        let ping = command_in(self.topo.client().ns(), "ping")
            .args(["-c", "3", "-i", "0.2", "-W", "1", &VIP.to_string()])
            .output()?;
        for line in String::from_utf8_lossy(&ping.stdout).lines() {
            if line.contains("bytes from") || line.contains("transmitted") {
                println!("   {line}");
            }
        }
        Ok(())
    }

    fn status(&self, node: u8) -> Result<String> {
        let out = Command::new(&self.onehop)
            .args(["status", "--interface", "eth0", "--bpffs-root"])
            .arg(self.pins(node))
            .output()?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

pub fn run() -> Result<()> {
    let mut demo = Demo::build(onehop_binary()?)?;
    demo.start_agents()?;
    demo.show_arp()?;
    demo.show_requests()?;
    demo.show_ping()?;
    println!("\n== onehop status on node1 (read from the pinned maps)");
    print!("{}", demo.status(1)?);
    println!(
        "\n== onehop status on node2: it dropped the client's ARP request for the VIP it does not own"
    );
    let text = demo.status(2)?;
    print!(
        "{}",
        text.split("\nDROPS")
            .nth(1)
            .map(|d| format!("DROPS{d}"))
            .unwrap_or_default()
    );
    println!("\n== cleaning up");
    drop(demo.agents.drain(..));
    Ok(())
}
