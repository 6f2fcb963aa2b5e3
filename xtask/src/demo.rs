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
    process::Command,
    time::Duration,
};

use anyhow::{Context as _, Result};
use lb_userspace::dataplane::peer;
use onehop_testkit::{
    cluster::{Agent, Cluster},
    netns::command_in,
    topology::Topology,
};

use crate::{run_cmd, workspace_root};

const SERVICES: &str = include_str!("demo-services.yaml");
const VIP: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 200);
const REQUESTS: usize = 200;

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

/// `onehop status` of the pins under `pins`.
fn status_at(onehop: &Path, pins: &Path) -> Result<std::process::Output> {
    Command::new(onehop)
        .args(["status", "--interface", "eth0", "--bpffs-root"])
        .arg(pins)
        .output()
        .context("running onehop status")
}

/// The demo's world (the test kit's nodes-with-agents fixture); dropping it stops the
/// agents and removes everything.
struct Demo {
    c: Cluster,
}

impl Demo {
    fn build(onehop: PathBuf) -> Result<Self> {
        println!("== building the demo network (namespaces only)");
        let topo = Topology::builder()
            .nodes(2)
            .pods_per_node(2)
            .base("ohdemo")
            .build()?;
        let agent =
            Agent::new(onehop).args(["--poll-interval-ms", "200", "--maglev-slots", "65536"]);
        let c = Cluster::new(topo, agent)?;
        c.serve_http(8080)?;
        // veths deliver XDP_TX frames only when the peer runs an XDP program.
        c.on_lan_peers(peer::attach)?;
        for n in c.topo.nodes() {
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
            c.topo.client().ip(),
            c.topo.client().mac()
        );
        Ok(Self { c })
    }

    /// node1 announces the VIP; node2 serves it but drops ARP for it.
    fn start_agents(&self) -> Result<()> {
        for node in [1u8, 2] {
            let text = if node == 1 {
                SERVICES.to_owned()
            } else {
                SERVICES
                    .replace("node: { ip: 192.168.50.11 }", "node: { ip: 192.168.50.12 }")
                    .replace("announce: [192.168.50.200]", "announce: []")
            };
            self.c.write_services(node, &text)?;
            self.c.spawn_agent(node, &self.c.services_file(node))?;
            self.c.wait_agent(
                node,
                "configured data path",
                Duration::from_secs(20),
                || {
                    status_at(self.c.binary(), self.c.pin_root(node)).is_ok_and(|out| {
                        let text = String::from_utf8_lossy(&out.stdout);
                        out.status.success()
                            && !text.contains("NOT CONFIGURED")
                            && text.contains("SERVICES (1)")
                    })
                },
            )?;
        }
        println!("\n== services file (embedded)\n{SERVICES}");
        Ok(())
    }

    fn show_arp(&self) -> Result<()> {
        println!("== ARP from the client: who has {VIP}?");
        let mac = self
            .c
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
            let a = self.c.topo.client().http_get(addr)?.answer()?;
            let e = seen.entry(a.pod).or_insert((0, a.client.ip()));
            e.0 += 1;
            e.1 = a.client.ip();
        }
        println!("   pod          requests   source address the pod saw");
        for (pod, (n, src)) in &seen {
            let why = if *src == self.c.topo.client().ip() {
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
        let ping = command_in(self.c.topo.client().ns(), "ping")
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
        let out = status_at(self.c.binary(), self.c.pin_root(node))?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

pub fn run() -> Result<()> {
    let demo = Demo::build(onehop_binary()?)?;
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
    demo.c.agents().kill_all();
    Ok(())
}
