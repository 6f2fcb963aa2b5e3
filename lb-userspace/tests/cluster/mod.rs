//! The namespace world the end-to-end suites share: the test kit's nodes-with-agents
//! fixture (`onehop_testkit::cluster`) with HTTP and UDP servers in every pod, the
//! pass-through XDP program on the LAN-side veth peers and `onehop agent` processes (small
//! maps unless a test asks for others), plus what only this crate can do: read a node's
//! pinned maps.
#![allow(dead_code, reason = "each test binary uses a different subset")]

use std::{
    collections::BTreeSet,
    ffi::OsStr,
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::{Duration, Instant},
};

pub mod swarm;

use lb_userspace::{
    dataplane::maps::{Maps, PinDir},
    dataplane::peer,
    dataplane::status::Snapshot,
};
use onehop_testkit::{
    cluster::{self, Agent, NODE_INTERFACE, Source},
    netns::command_in,
    topology::{Topology, TopologyBuilder},
};

pub const TARGET_PORT: u16 = 8080;
pub const UDP_TARGET_PORT: u16 = 5353;

/// Map sizes for tests that run many agents at once.
const SMALL_MAPS: [&str; 8] = [
    "--maglev-slots",
    "65536",
    "--conntrack-size",
    "16384",
    "--rev-nat-size",
    "16384",
    "--affinity-size",
    "1024",
];

pub struct Cluster(cluster::Cluster);

impl std::ops::Deref for Cluster {
    type Target = cluster::Cluster;
    fn deref(&self) -> &cluster::Cluster {
        &self.0
    }
}

impl Cluster {
    /// Agents with small maps: many tests run at once.
    pub fn new(nodes: u8, pods_per_node: u8, clients: u8) -> Self {
        Self::with_agent_args(nodes, pods_per_node, clients, &SMALL_MAPS)
    }

    /// Agents with `args` (map sizes and the like) on every node.
    pub fn with_agent_args(nodes: u8, pods_per_node: u8, clients: u8, args: &[&str]) -> Self {
        Self::build(
            Topology::builder()
                .nodes(nodes)
                .pods_per_node(pods_per_node)
                .clients(clients),
            args,
        )
    }

    /// Small-map agents on the topology `topo` builds.
    pub fn with_topology(topo: TopologyBuilder) -> Self {
        Self::build(topo, &SMALL_MAPS)
    }

    fn build(topo: TopologyBuilder, args: &[&str]) -> Self {
        let topo = topo.build().expect("topology");
        let agent = Agent::new(env!("CARGO_BIN_EXE_onehop")).args(args).env(
            "RUST_LOG",
            std::env::var("ONEHOP_TEST_LOG").unwrap_or_else(|_| "info".into()),
        );
        let c = cluster::Cluster::new(topo, agent).expect("cluster");
        c.serve_http(TARGET_PORT).expect("servers");
        c.serve_udp(UDP_TARGET_PORT).expect("udp servers");
        c.on_lan_peers(peer::attach).expect("pass-through programs");
        Self(c)
    }

    /// Starts `onehop agent` on a node with small maps, plus `source` (the
    /// arguments that pick and configure the services source) and `env`
    /// (extra environment variables, e.g. `KUBECONFIG`).
    pub fn spawn_agent<S: AsRef<OsStr>>(&self, node: u8, source: &[S], env: &[(&str, &OsStr)]) {
        let source = env
            .iter()
            .fold(Source::default().args(source), |s, (k, v)| s.env(k, v));
        self.0.spawn_agent(node, &source).expect("spawn agent");
    }

    /// SIGKILL: no chance to clean up, like an OOM kill or a node crash.
    pub fn kill_agent(&self, node: u8) {
        self.0.kill_agent(node).expect("kill agent");
    }

    pub fn snapshot(&self, node: u8) -> anyhow::Result<Snapshot> {
        let maps = Maps::open(&PinDir::new(self.pin_root(node), NODE_INTERFACE))?;
        Snapshot::read(&maps)
    }

    /// Polls the node's maps until `pred` holds: for 15 s once the agent's data path is
    /// ready, and up to a minute before for it to get ready. An agent that was just
    /// started verifies its programs first (seconds of CPU each), and a test that starts
    /// three of them while another test does the same on a 2-core CI machine can take more
    /// than 15 s to get there.
    pub fn wait_for(&self, node: u8, what: &str, pred: impl Fn(&Snapshot) -> bool) -> Snapshot {
        let started = Instant::now();
        let mut deadline = None;
        loop {
            match self.snapshot(node) {
                Ok(s) if s.config.ready != 0 => {
                    if pred(&s) {
                        return s;
                    }
                    let d =
                        *deadline.get_or_insert_with(|| Instant::now() + Duration::from_secs(15));
                    assert!(
                        Instant::now() < d,
                        "node{node}: timed out waiting for {what}; agent log:\n{}",
                        self.log(node)
                    );
                }
                _ => assert!(
                    started.elapsed() < Duration::from_mins(1),
                    "node{node}: the data path was not ready after a minute (waiting for \
                     {what}); agent log:\n{}",
                    self.log(node)
                ),
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Cluster {
    /// The MACs that answer `arping` from the (first) client for `ip` within
    /// a second, lower-case. Broadcast requests only (`-b`): after a first
    /// reply arping would unicast to it, and a second answerer would never
    /// hear the question.
    pub fn arping(&self, ip: Ipv4Addr) -> BTreeSet<String> {
        let out = command_in(self.topo.client().ns(), "arping")
            .args(["-b", "-w", "1", "-I", "eth0", &ip.to_string()])
            .output()
            .expect("running arping (Debian package iputils-arping)");
        // Exit status 1 is "no reply": an empty set, not an error.
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.contains("reply from"))
            .filter_map(|l| Some(l.split_once('[')?.1.split_once(']')?.0.to_lowercase()))
            .collect()
    }

    /// The MACs that answer `ndisc6` from the (first) client for `ip` within
    /// a second (one Neighbor Solicitation, to `ip`'s solicited-node group;
    /// every answer, `-m`), lower-case. The client needs IPv6
    /// ([`onehop_testkit::topology::Topology::ipv6_lan`]).
    pub fn ndisc(&self, ip: Ipv6Addr) -> BTreeSet<String> {
        let out = command_in(self.topo.client().ns(), "ndisc6")
            .args([
                "-q",
                "-m",
                "-n",
                "-r",
                "1",
                "-w",
                "1000",
                &ip.to_string(),
                "eth0",
            ])
            .output()
            .expect("running ndisc6 (Debian package ndisc6)");
        // Exit status 2 is "no reply": an empty set, not an error.
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| l.trim().to_lowercase())
            .filter(|l| !l.is_empty())
            .collect()
    }

    /// Who answers for `ip` on the LAN: [`Cluster::arping`] for IPv4,
    /// [`Cluster::ndisc`] for IPv6.
    pub fn neighbour_answers(&self, ip: IpAddr) -> BTreeSet<String> {
        match ip {
            IpAddr::V4(v4) => self.arping(v4),
            IpAddr::V6(v6) => self.ndisc(v6),
        }
    }

    /// Polls [`Cluster::neighbour_answers`] (ARP, or Neighbor Discovery for
    /// an IPv6 `ip`) until node `node`'s MAC is the only answer, within
    /// `within`, then checks that two more rounds see only it. Returns how
    /// long it took.
    pub fn wait_sole_arp_answer(
        &self,
        ip: impl Into<IpAddr>,
        node: u8,
        within: Duration,
    ) -> Duration {
        let ip = ip.into();
        let want = BTreeSet::from([mac_text(self.topo.node(node).mac().octets())]);
        let start = Instant::now();
        let mut seen = Vec::new();
        loop {
            let got = self.neighbour_answers(ip);
            if got == want {
                break;
            }
            seen.push(got);
            assert!(
                start.elapsed() < within,
                "{ip} never answered by node{node} ({want:?}) alone within {within:?}; \
                 rounds: {seen:?}\n{}",
                self.logs()
            );
        }
        let took = start.elapsed();
        for round in 0..2 {
            let got = self.neighbour_answers(ip);
            assert_eq!(
                got, want,
                "{ip}: round {round} after node{node} answered alone"
            );
        }
        took
    }

    /// Every node's agent log, for failure messages.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for i in 1..=u8::try_from(self.topo.nodes().len()).unwrap_or(u8::MAX) {
            let _ = write!(out, "--- node{i}\n{}", self.log(i));
        }
        out
    }
}

/// A MAC as `ip neigh` and arping print it (lower-cased).
pub fn mac_text(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Pods new flows may go to (each pod is one backend per service port;
/// draining and retired slots left out).
pub fn pods_in_use(s: &Snapshot) -> usize {
    s.backends
        .iter()
        .filter(|b| b.value.flags() & lb_common::backend_flags::DRAINING == 0)
        .map(|b| b.value.ip())
        .collect::<BTreeSet<_>>()
        .len()
}
