//! The data paths under comparison, behind one trait, and the topology they run on.
//!
//! A [`DataPath`] installs itself on a [`World`] for a list of services and returns an
//! [`Installed`] guard: the addresses a client uses for the test service, and an undo that
//! runs on drop (panics included). Every path sees the same topology:
//!
//! ```text
//!  client1 192.168.50.2 ── br0 (lan) ──┬── node1 eth0 192.168.50.11 ── cni0 ── pod1 10.42.1.2, pod2 10.42.1.3
//!                                      └── node2 eth0 192.168.50.12 ── cni0 ── pod1 10.42.2.2, pod2 10.42.2.3
//! ```
//!
//! The LAN-side veth peers of both nodes carry a pass-through XDP program for every path
//! (onehop's `XDP_TX` on a veth needs it; keeping it for all paths keeps the topology equal).

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    io::Write as _,
    net::{Ipv4Addr, SocketAddrV4},
    path::Path,
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use lb_userspace::{
    dataplane::maps::{Maps, PinDir},
    dataplane::peer,
    dataplane::status::Snapshot,
};
use onehop_testkit::{
    MacAddr, Topology,
    cluster::{Agent, Agents, Cluster, NODE_INTERFACE},
    netns::{command_in, in_netns, run_checked},
    topology::node_ip,
};

use super::kubeproxy::{self, Port, Proto, Service};

/// The test service's LoadBalancer IP.
pub const VIP: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 200);
/// Its cluster IP (kube-proxy baselines only).
pub const CLUSTER_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
/// The remote test service's LoadBalancer IP: its endpoints are node2's pods only, so every
/// flow to it crosses the LAN a second time (full NAT, kube-proxy) or is handed to node2
/// (direct return).
pub const REMOTE_VIP: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 201);
/// Its cluster IP (kube-proxy baselines only).
pub const REMOTE_CLUSTER_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 11);
/// HTTP port on the VIP and in the pods.
pub const HTTP_PORT: u16 = 80;
pub const HTTP_TARGET_PORT: u16 = 8080;
/// UDP port on the VIP and in the pods.
pub const UDP_PORT: u16 = 9000;
pub const UDP_TARGET_PORT: u16 = 9000;
/// kube-proxy's `--cluster-cidr`.
pub const POD_CIDR: &str = "10.42.0.0/16";

/// An address a client sends to, with the MAC its frames go to (for the raw generator).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target {
    pub addr: SocketAddrV4,
    pub mac: MacAddr,
}

/// The bench topology: 1 client, 2 nodes with 2 pods each, pass-through XDP on the LAN side;
/// the test kit's nodes-with-agents fixture, which the onehop path starts its agents on.
pub struct World {
    // Field order is drop order: the generator, then the cluster (agents, programs on the
    // peers, pins, files, namespaces).
    /// The XDP generator, when `bench-e2e` runs with `--generator xdp`.
    xdp_gen: Option<super::xdpgen::XdpGen>,
    cluster: Cluster,
    /// Longest a baseline may take to load its rules (default 2 minutes).
    pub install_limit: Duration,
}

/// The world is its cluster plus the bench's generator: `world.topo`, `world.scratch()`,
/// `world.pin_root(i)` are the cluster's.
impl std::ops::Deref for World {
    type Target = Cluster;
    fn deref(&self) -> &Cluster {
        &self.cluster
    }
}

impl World {
    /// Builds the topology; `onehop` is the agent binary.
    pub fn build(onehop: &Path) -> Result<Self> {
        ensure!(
            onehop.is_file(),
            "onehop binary {} missing (cargo build --release -p lb-userspace --bin onehop)",
            onehop.display()
        );
        let topo = Topology::builder()
            .nodes(2)
            .pods_per_node(2)
            .base("ohb")
            .build()?;
        let cluster = Cluster::new(topo, Agent::new(onehop).env("RUST_LOG", "warn"))?;
        cluster.on_lan_peers(peer::attach)?;
        Ok(Self {
            xdp_gen: None,
            cluster,
            install_limit: Duration::from_mins(2),
        })
    }

    /// Sends UDP with the XDP generator from now on (see `xdpgen`).
    pub fn use_xdp_generator(&mut self) -> Result<()> {
        self.xdp_gen = Some(super::xdpgen::XdpGen::new(&self.topo)?);
        Ok(())
    }

    /// Sends UDP from the client with the chosen generator (see `load::send`).
    pub fn send(
        &self,
        targets: &[Target],
        flows: super::load::Flows,
        rate: Option<u64>,
        duration: Duration,
    ) -> Result<super::load::Sent> {
        match &self.xdp_gen {
            Some(g) => g.send(&self.topo, targets, flows, rate, duration),
            None => super::load::send(&self.topo, targets, flows, rate, duration),
        }
    }

    /// Runs `cmd args` in `ns`, feeding `stdin`; fails with its stderr.
    pub fn run_in(ns: &str, cmd: &str, args: &[&str], stdin: Option<&str>) -> Result<String> {
        let mut c = command_in(ns, cmd);
        c.args(args);
        let Some(input) = stdin else {
            return run_checked(&mut c);
        };
        c.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = c.spawn().with_context(|| format!("starting {cmd}"))?;
        let mut pipe = child.stdin.take().context("stdin pipe")?;
        // A writer thread: a chatty child could otherwise fill its stdout while we write.
        let text = input.to_owned();
        let writer = std::thread::spawn(move || pipe.write_all(text.as_bytes()));
        let out = child.wait_with_output().context("waiting")?;
        writer
            .join()
            .map_err(|_| anyhow::anyhow!("writer panicked"))?
            .with_context(|| format!("writing to {cmd}"))?;
        ensure!(
            out.status.success(),
            "{cmd} {args:?} in {ns} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Runs `cmd args` in `ns` with `text` on stdin, killing it after `limit`: a baseline
    /// whose rules take longer to load is reported as such instead of stalling the run.
    pub fn load_rules(
        ns: &str,
        cmd: &str,
        args: &[&str],
        text: &str,
        limit: Duration,
    ) -> Result<()> {
        let mut c = command_in(ns, cmd);
        c.args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = c.spawn().with_context(|| format!("starting {cmd}"))?;
        let mut pipe = child.stdin.take().context("stdin pipe")?;
        let input = text.to_owned();
        // Threads: the child may stop reading (or fill stderr) at any time.
        let writer = std::thread::spawn(move || pipe.write_all(input.as_bytes()));
        let mut err_pipe = child.stderr.take().context("stderr pipe")?;
        let reader = std::thread::spawn(move || {
            let mut e = String::new();
            let _ = std::io::Read::read_to_string(&mut err_pipe, &mut e);
            e
        });
        let start = Instant::now();
        let status = loop {
            if let Some(st) = child.try_wait().context("waiting")? {
                break st;
            }
            if start.elapsed() > limit {
                let _ = child.kill();
                let _ = child.wait();
                let _ = writer.join();
                bail!("{cmd} did not finish loading within {limit:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let stderr = reader.join().unwrap_or_default();
        writer
            .join()
            .map_err(|_| anyhow::anyhow!("writer panicked"))?
            .with_context(|| format!("writing to {cmd}"))?;
        ensure!(status.success(), "{cmd} {args:?} in {ns} failed: {stderr}");
        Ok(())
    }

    /// Flushes the kernel connection tracking tables of both nodes (between runs, so every
    /// run starts from an empty table: entries would otherwise pile up to
    /// `nf_conntrack_max`).
    pub fn flush_conntrack(&self) {
        for n in self.topo.nodes() {
            // Exit status 1 when the table is empty or conntrack is unused: fine.
            let _ = command_in(n.ns().name(), "conntrack")
                .arg("-F")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// The test service: HTTP and UDP ports, endpoints on every pod (two local to node1, two
/// remote).
pub fn test_service(topo: &Topology) -> Service {
    Service {
        namespace: "bench".into(),
        name: "web".into(),
        cluster_ip: CLUSTER_IP,
        lb_ip: VIP,
        ports: test_ports(),
        endpoints: topo.pods().map(onehop_testkit::Pod::ip).collect(),
    }
}

/// The remote test service: the same ports, endpoints on node2's pods only (the remote
/// workloads).
pub fn remote_service(topo: &Topology) -> Service {
    Service {
        namespace: "bench".into(),
        name: "web-remote".into(),
        cluster_ip: REMOTE_CLUSTER_IP,
        lb_ip: REMOTE_VIP,
        ports: test_ports(),
        endpoints: topo
            .node(2)
            .pods()
            .iter()
            .map(onehop_testkit::Pod::ip)
            .collect(),
    }
}

fn test_ports() -> Vec<Port> {
    vec![
        Port {
            name: "http".into(),
            proto: Proto::Tcp,
            port: HTTP_PORT,
            target_port: HTTP_TARGET_PORT,
        },
        Port {
            name: "udp".into(),
            proto: Proto::Udp,
            port: UDP_PORT,
            target_port: UDP_TARGET_PORT,
        },
    ]
}

/// `n` services: the test service and the remote test service in the middle of `n - 2`
/// fillers (kube-proxy writes services in Go map order, so on average a lookup walks half of
/// `KUBE-SERVICES`); at `n = 1` the two test services. Fillers have their own cluster IP
/// (`10.96.0.0/12`) and LB IP (`172.20.0.0/14`, never routed here), one TCP port and two
/// endpoints (one per node).
pub fn services(topo: &Topology, n: u32) -> Vec<Service> {
    assert!((1..=200_000).contains(&n), "n={n}");
    let mut out = Vec::with_capacity(n as usize + 1);
    let endpoints = vec![topo.node(1).pod(1).ip(), topo.node(2).pod(1).ip()];
    let fillers = n.saturating_sub(2);
    for i in 0..fillers {
        if i == fillers / 2 {
            out.push(test_service(topo));
            out.push(remote_service(topo));
        }
        out.push(Service {
            namespace: "bench".into(),
            name: format!("filler-{i}"),
            cluster_ip: Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 1, 0)) + i),
            lb_ip: Ipv4Addr::from(u32::from(Ipv4Addr::new(172, 20, 0, 1)) + i),
            ports: vec![Port {
                name: "http".into(),
                proto: Proto::Tcp,
                port: 80,
                target_port: HTTP_TARGET_PORT,
            }],
            endpoints: endpoints.clone(),
        });
    }
    if fillers == 0 {
        out.push(test_service(topo));
        out.push(remote_service(topo));
    }
    out
}

/// What an installed path offers the client, and its undo.
pub struct Installed {
    /// HTTP addresses of the test service (one VIP, or every pod for plain routing).
    pub http: Vec<Target>,
    /// UDP addresses of the test service.
    pub udp: Vec<Target>,
    /// HTTP addresses of the remote test service (routing: node2's pods).
    pub remote_http: Vec<Target>,
    /// UDP addresses of the remote test service.
    pub remote_udp: Vec<Target>,
    /// Seconds from the start of the install until the path served the test service: the
    /// rules' transaction for kube-proxy, the services file on a running agent for onehop.
    pub install_s: f64,
    /// onehop: seconds from starting the agents until node1's data path was ready with no
    /// services (programs loaded, verified, attached; maps created), before `install_s`.
    pub agent_start_s: Option<f64>,
    /// Forgets the path's own flow state (onehop's connection and reverse-NAT tables),
    /// run between runs like the kernel conntrack flush.
    reset_flows: Option<Box<dyn Fn() -> Result<()>>>,
    /// onehop: the nodes' pin roots, whose counters [`Installed::onehop_counters`] reads.
    pin_roots: Vec<std::path::PathBuf>,
    undo: Vec<Box<dyn FnOnce()>>,
    /// The world's agents, when this path started them.
    agents: Option<Agents>,
}

impl Installed {
    /// Empties every flow table on the way, so the next flows are new everywhere: kernel
    /// conntrack on the nodes and the path's own tables (onehop's connection and
    /// reverse-NAT maps).
    pub fn forget_flows(&self, world: &World) -> Result<()> {
        world.flush_conntrack();
        match &self.reset_flows {
            Some(reset) => reset(),
            None => Ok(()),
        }
    }

    /// onehop's counters and drop reasons, summed over its nodes by name (empty for the
    /// other paths): what a failed check prints to say where packets went.
    pub fn onehop_counters(&self) -> Result<BTreeMap<String, u64>> {
        let mut out = BTreeMap::new();
        for root in &self.pin_roots {
            let maps = Maps::open(&PinDir::new(root, NODE_INTERFACE))?;
            let snap = Snapshot::read(&maps)
                .with_context(|| format!("reading the counters under {}", root.display()))?;
            let counters = snap.counters.iter().map(|(c, v)| (c.label(), *v));
            for (name, v) in counters.chain(snap.drops.iter().map(|(d, v)| (d.label(), *v))) {
                *out.entry(name.to_owned()).or_default() += v;
            }
        }
        Ok(out)
    }
}

impl Drop for Installed {
    fn drop(&mut self) {
        // Agents first (they would re-create what the undo removes), then the undos.
        if let Some(agents) = &self.agents {
            agents.kill_all();
        }
        while let Some(f) = self.undo.pop() {
            f();
        }
    }
}

/// A data path that can be installed on the bench topology.
pub trait DataPath {
    /// Short name for tables (`onehop`, `onehop-direct`, `iptables`, `nftables`, `routing`).
    fn name(&self) -> &'static str;
    /// Installs for `services` (one of which is [`test_service`]).
    fn install(&self, world: &World, services: &[Service]) -> Result<Installed>;
}

/// Every path, in table order (`routing-xdp` only runs when asked for by name).
pub fn all() -> Vec<Box<dyn DataPath>> {
    vec![
        Box::new(Onehop { direct: false }),
        Box::new(Onehop { direct: true }),
        Box::new(Iptables),
        Box::new(Nftables),
        Box::new(Routing),
        Box::new(RoutingXdpPass),
    ]
}

/// The HTTP and UDP targets of the service on `vip`, reached through `mac`.
fn vip_targets(vip: Ipv4Addr, mac: MacAddr) -> (Vec<Target>, Vec<Target>) {
    (
        vec![Target {
            addr: SocketAddrV4::new(vip, HTTP_PORT),
            mac,
        }],
        vec![Target {
            addr: SocketAddrV4::new(vip, UDP_PORT),
            mac,
        }],
    )
}

/// Stands in for `MetalLB`'s ARP answer with the kube-proxy baselines: a permanent neighbour
/// entry VIP → node1's MAC in the client, for both test services. Returns its undo.
fn static_vip_neighbour(world: &World) -> Result<Box<dyn FnOnce()>> {
    let client = world.topo.client().ns().name().to_owned();
    let mac = world.topo.node(1).mac().to_string();
    let undo_client = client.clone();
    let undo: Box<dyn FnOnce()> = Box::new(move || {
        for vip in [VIP, REMOTE_VIP] {
            let _ = World::run_in(
                &undo_client,
                "ip",
                &["neigh", "del", &vip.to_string(), "dev", "eth0"],
                None,
            );
        }
    });
    for vip in [VIP, REMOTE_VIP] {
        World::run_in(
            &client,
            "ip",
            &[
                "neigh",
                "replace",
                &vip.to_string(),
                "lladdr",
                &mac,
                "dev",
                "eth0",
                "nud",
                "permanent",
            ],
            None,
        )?;
    }
    Ok(undo)
}

fn flush_ruleset(ns: String) -> Box<dyn FnOnce()> {
    Box::new(move || {
        // The whole ruleset of node1's namespace is ours; deleting the tables (not just
        // flushing chains) also unregisters the nat hooks, so later paths run without
        // connection tracking.
        if let Err(e) = World::run_in(&ns, "nft", &["flush", "ruleset"], None) {
            eprintln!("bench-e2e: flushing the ruleset of {ns}: {e:#}");
        }
        let _ = command_in(&ns, "conntrack")
            .arg("-F")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    })
}

/// kube-proxy iptables mode in node1's namespace, one `iptables-restore` transaction.
pub struct Iptables;

impl DataPath for Iptables {
    fn name(&self) -> &'static str {
        "iptables"
    }

    fn install(&self, world: &World, services: &[Service]) -> Result<Installed> {
        let text = kubeproxy::iptables_restore(services, POD_CIDR);
        install_kube_proxy(world, "iptables-restore", &["-w"], &text)
            .context("loading the kube-proxy iptables rules")
    }
}

/// Loads a kube-proxy ruleset into node1 in one transaction (`program args`
/// reading `text` on stdin), timed, plus the client's static VIP neighbour
/// standing in for MetalLB's ARP answer. Both are undone on drop.
fn install_kube_proxy(
    world: &World,
    program: &str,
    args: &[&str],
    text: &str,
) -> Result<Installed> {
    let ns = world.topo.node(1).ns().name().to_owned();
    let start = Instant::now();
    let mut undo = vec![flush_ruleset(ns.clone())];
    World::load_rules(&ns, program, args, text, world.install_limit)?;
    let install_s = start.elapsed().as_secs_f64();
    undo.push(static_vip_neighbour(world)?);
    let (http, udp) = vip_targets(VIP, world.topo.node(1).mac());
    let (remote_http, remote_udp) = vip_targets(REMOTE_VIP, world.topo.node(1).mac());
    Ok(Installed {
        http,
        udp,
        remote_http,
        remote_udp,
        install_s,
        agent_start_s: None,
        reset_flows: None,
        pin_roots: Vec::new(),
        undo,
        agents: None,
    })
}

/// kube-proxy nftables mode in node1's namespace, one `nft -f` transaction.
pub struct Nftables;

impl DataPath for Nftables {
    fn name(&self) -> &'static str {
        "nftables"
    }

    fn install(&self, world: &World, services: &[Service]) -> Result<Installed> {
        let text = kubeproxy::nft_ruleset(services, POD_CIDR);
        install_kube_proxy(world, "nft", &["-f", "-"], &text)
            .context("loading the kube-proxy nftables rules")
    }
}

/// No load balancer: the client sends to pod IPs, routed by the nodes (the floor).
pub struct Routing;

impl DataPath for Routing {
    fn name(&self) -> &'static str {
        "routing"
    }

    fn install(&self, world: &World, _services: &[Service]) -> Result<Installed> {
        let (mut http, mut udp) = (Vec::new(), Vec::new());
        let (mut remote_http, mut remote_udp) = (Vec::new(), Vec::new());
        for (i, n) in world.topo.nodes().iter().enumerate() {
            for p in n.pods() {
                let mac = n.mac();
                let h = Target {
                    addr: SocketAddrV4::new(p.ip(), HTTP_TARGET_PORT),
                    mac,
                };
                let u = Target {
                    addr: SocketAddrV4::new(p.ip(), UDP_TARGET_PORT),
                    mac,
                };
                http.push(h);
                udp.push(u);
                // The remote test service's endpoints: node2's pods, sent straight there.
                if i == 1 {
                    remote_http.push(h);
                    remote_udp.push(u);
                }
            }
        }
        Ok(Installed {
            http,
            udp,
            remote_http,
            remote_udp,
            install_s: 0.0,
            agent_start_s: None,
            reset_flows: None,
            pin_roots: Vec::new(),
            undo: Vec::new(),
            agents: None,
        })
    }
}

/// Plain routing with a pass-through XDP program (`xdp_pass`) on both nodes' `eth0`: not a
/// load balancer, an explanation. On a veth, any XDP program on the receiving device moves it
/// to the NAPI path, where each skb from the stack is converted to an XDP buffer (copied
/// when it lacks the 256-byte headroom), and `XDP_PASS` builds a new skb. This row shows
/// what that costs with no load-balancing work at all; a NIC driver runs XDP before any
/// skb exists, so there it is (nearly) free.
pub struct RoutingXdpPass;

impl DataPath for RoutingXdpPass {
    fn name(&self) -> &'static str {
        "routing-xdp"
    }

    fn install(&self, world: &World, services: &[Service]) -> Result<Installed> {
        let mut inst = Routing.install(world, services)?;
        for n in world.topo.nodes() {
            let pass = in_netns(n.ns(), || peer::attach("eth0"))??;
            inst.undo.push(Box::new(move || drop(pass)));
        }
        Ok(inst)
    }
}

/// onehop: the agent on node1 (announcing the VIPs) and node2 (not announcing), from a
/// generated services file; the client finds the VIPs by ARP, answered by XDP. `direct`:
/// both files say `direct_return: true`, so node1 hands every new flow to a node2 pod over
/// to node2 (`onehop-direct`); otherwise full NAT (`onehop`).
pub struct Onehop {
    pub direct: bool,
}

/// The services file of node `node` (1-based) for `services`.
pub fn services_yaml(services: &[Service], node: u8, announce: bool, direct: bool) -> String {
    let mut y = String::new();
    let _ = writeln!(y, "node: {{ ip: {} }}", node_ip(node));
    // Every port: a run of new flows claims one NAT port per remote flow, and the default
    // 61000–65535 (4,536 per remote backend) is fewer than one run offers.
    y.push_str("nat_ports: { min: 1024, max: 65535 }\n");
    if direct {
        // Every node of the bench runs the agent, which is what the setting vouches for.
        y.push_str("direct_return: true\n");
    }
    let _ = writeln!(
        y,
        "announce: [{}]",
        if announce {
            format!("{VIP}, {REMOTE_VIP}")
        } else {
            String::new()
        }
    );
    // An empty list must be said explicitly: the agent rejects a file without one (that is
    // what a file truncated mid-rewrite looks like).
    y.push_str(if services.is_empty() {
        "services: []\n"
    } else {
        "services:\n"
    });
    for s in services {
        let ports: Vec<String> = s
            .ports
            .iter()
            .map(|p| {
                format!(
                    "{{ port: {}, protocol: {}, target_port: {} }}",
                    p.port,
                    p.proto.upper(),
                    p.target_port
                )
            })
            .collect();
        let backends: Vec<String> = s
            .endpoints
            .iter()
            .map(|ip| format!("{{ ip: {ip}, node_ip: {} }}", node_ip(ip.octets()[2])))
            .collect();
        let _ = writeln!(
            y,
            "  - name: {}\n    vip: {}\n    ports: [{}]\n    backends: [{}]",
            s.name,
            s.lb_ip,
            ports.join(", "),
            backends.join(", ")
        );
    }
    y
}

/// Maglev slots the agent needs for `services` (each port gets its own table).
pub fn maglev_slots(services: &[Service]) -> u32 {
    let total: u64 = services
        .iter()
        .map(|s| {
            u64::from(lb_userspace::plan::maglev::table_size(
                lb_userspace::plan::maglev::MaglevSize::DEFAULT,
                s.endpoints.len(),
            )) * s.ports.len() as u64
        })
        .sum();
    u32::try_from(total + 1024).unwrap_or(u32::MAX)
}

impl Onehop {
    /// Replaces node `node`'s services file at once (rename), as an operator's tool would.
    fn write_config(&self, world: &World, node: u8, services: &[Service]) -> Result<()> {
        world.write_services(
            node,
            &services_yaml(
                services,
                node,
                node == 1 && !services.is_empty(),
                self.direct,
            ),
        )
    }

    /// Starts node `node`'s agent on an empty services file; `services` only size its maps.
    fn start_agent(&self, world: &World, node: u8, services: &[Service]) -> Result<()> {
        self.write_config(world, node, &[])?;
        let source = world
            .services_file(node)
            .args(["--poll-interval-ms", "100", "--maglev-slots"])
            .args([maglev_slots(services).to_string()]);
        world.spawn_agent(node, &source)
    }

    /// Waits until node `node`'s maps hold `ports` service entries.
    fn wait_ready(world: &World, node: u8, ports: usize, timeout: Duration) -> Result<()> {
        let pins = PinDir::new(world.pin_root(node), NODE_INTERFACE);
        world.wait_agent(node, "ready data path", timeout, || {
            Maps::open(&pins).is_ok_and(|maps| {
                maps.config().is_ok_and(|c| c.ready != 0)
                    && maps.services.keys().flatten().count() >= ports
            })
        })
    }
}

impl DataPath for Onehop {
    fn name(&self) -> &'static str {
        if self.direct {
            "onehop-direct"
        } else {
            "onehop"
        }
    }

    fn install(&self, world: &World, services: &[Service]) -> Result<Installed> {
        let ports: usize = services.iter().map(|s| s.ports.len()).sum();
        let mut undo: Vec<Box<dyn FnOnce()>> = Vec::new();
        for node in [1u8, 2] {
            let root = world.pin_root(node).to_path_buf();
            undo.push(Box::new(move || {
                if let Err(e) = lb_userspace::dataplane::loader::cleanup(&root, "eth0") {
                    eprintln!("bench-e2e: onehop cleanup of {}: {e:#}", root.display());
                }
            }));
        }
        let start = Instant::now();
        let mut inst = Installed {
            http: Vec::new(),
            udp: Vec::new(),
            remote_http: Vec::new(),
            remote_udp: Vec::new(),
            install_s: 0.0,
            agent_start_s: None,
            reset_flows: None,
            pin_roots: Vec::new(),
            undo,
            agents: Some(world.agents()),
        };
        for node in [1u8, 2] {
            self.start_agent(world, node, services)?;
        }
        // Cold start on an empty file first, then the services on running agents: the
        // kube-proxy figures are a rules transaction on a running system, not a process
        // start, so the two are timed apart.
        let timeout = Duration::from_secs(30 + u64::try_from(ports / 1000).unwrap_or(0) * 2);
        for node in [1u8, 2] {
            Self::wait_ready(world, node, 0, timeout)?;
            if node == 1 {
                inst.agent_start_s = Some(start.elapsed().as_secs_f64());
            }
        }
        let start = Instant::now();
        for node in [1u8, 2] {
            self.write_config(world, node, services)?;
        }
        Self::wait_ready(world, 1, ports, timeout)?;
        inst.install_s = start.elapsed().as_secs_f64();
        Self::wait_ready(world, 2, ports, timeout)?;
        for vip in [VIP, REMOTE_VIP] {
            let mac = world
                .topo
                .client()
                .arp(vip, Duration::from_secs(2))?
                .with_context(|| format!("nobody answered ARP for {vip}"))?;
            ensure!(
                mac == world.topo.node(1).mac(),
                "ARP for {vip} answered with {mac}, not node1's MAC"
            );
        }
        let mac = world.topo.node(1).mac();
        (inst.http, inst.udp) = vip_targets(VIP, mac);
        (inst.remote_http, inst.remote_udp) = vip_targets(REMOTE_VIP, mac);
        let roots = [
            world.pin_root(1).to_path_buf(),
            world.pin_root(2).to_path_buf(),
        ];
        inst.pin_roots = roots.to_vec();
        inst.reset_flows = Some(Box::new(move || {
            for root in &roots {
                clear_flow_tables(root)?;
            }
            Ok(())
        }));
        Ok(inst)
    }
}

/// Deletes every entry of onehop's `conntrack` and `rev_nat` maps under `root`.
pub fn clear_flow_tables(root: &Path) -> Result<()> {
    let mut maps = Maps::open(&PinDir::new(root, NODE_INTERFACE))?;
    // Between runs, with no traffic: no claim of the data path to race.
    lb_userspace::dataplane::flows::clear(&mut maps).context("emptying conntrack")?;
    let keys: Vec<_> = maps.rev_nat.keys().filter_map(Result::ok).collect();
    for k in &keys {
        let _ = maps.rev_nat.remove(k);
    }
    Ok(())
}
