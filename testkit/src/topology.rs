//! A small bare-metal cluster in network namespaces: one LAN, a client or few, N nodes with
//! pods behind a per-node bridge.
//!
//! ```text
//!                         netns <p>lan: bridge br0 (no address)
//!        ┌──── vc1 ───────────┬──────── vn1 ───────────┬──────── vn2 ─── …
//!        │                    │                        │
//!  <p>client1            <p>node1                  <p>node2
//!   eth0 192.168.50.2     eth0 192.168.50.11        eth0 192.168.50.12
//!                         cni0 10.42.1.1/24         cni0 10.42.2.1/24
//!                          ├ vp1 ── <p>node1-pod1 eth0 10.42.1.2
//!                          └ vp2 ── <p>node1-pod2 eth0 10.42.1.3
//! ```
//!
//! Addressing (all constants below, so tests never hard-code them):
//! - LAN `192.168.50.0/24`: client `c` (1-based) is `.1+c` (`.2`–`.9`), node `i` is `.10+i`
//!   (`.11`–`.109`; ".1{i}" for single-digit i). `.200`–`.250` are never assigned: they are
//!   for load-balancer VIPs ([`vip`]), which live in the LAN subnet like `MetalLB` L2 VIPs.
//! - Pods `10.42.0.0/16`: node `i` owns `10.42.i.0/24`, its `cni0` is `10.42.i.1`, pod `j`
//!   (1-based) is `10.42.i.(1+j)`; pods default-route via `cni0`.
//! - Every interface with an address has MAC `02:00:<its IPv4 bytes>` (locally administered,
//!   unicast), e.g. node1's eth0 is `02:00:c0:a8:32:0b`. Deterministic, so an ARP or
//!   fib-lookup expectation can be written down; identical across runs is fine because every
//!   topology is its own L2 world.
//! - IPv6 is off unless a test turns it on ([`Topology::ipv6_lan`],
//!   [`Topology::ipv6_lan_all_nodes`]): LAN `fd00:60::/64` (client `::50`, node `i` `::i`,
//!   VIPs from `::200`), node `i`'s pods `fd00:42:<i-1>::/64` (`cni0` `::1`, pod `j` `::1+j`),
//!   no routes between nodes' pod networks.
//! - Routing is host-gw style: each node routes the other nodes' pod CIDRs via their LAN ips;
//!   the client routes every pod CIDR via the owning node (the "plain routing" baseline).
//!
//! Names: every namespace is `<prefix><role>` with `<prefix>` from [`unique_prefix`]
//! (`oh<pid>-<n>-` by default); roles are `lan`, `client1`, `node1`, `node1-pod1`.
//! Interface names are fixed per namespace (`eth0`, `cni0`, `br0`, `vn<i>`, `vc<c>`, `vp<j>`).

use std::{
    fmt,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4},
    str::FromStr,
    time::Duration,
};

use anyhow::{Context as _, Result, ensure};

use crate::{
    arp,
    netns::{Netns, NsName, command_in, run_checked, unique_prefix},
    server::{HttpServer, UdpServer},
    traffic::{self, HttpConn, Response, UdpReply},
};

/// The LAN subnet's network address.
pub const LAN_NET: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 0);
/// The LAN subnet's prefix length.
pub const LAN_PREFIX_LEN: u8 = 24;
/// The cluster pod network (each node owns one /24 of it).
pub const POD_NET: Ipv4Addr = Ipv4Addr::new(10, 42, 0, 0);
/// The pod network's prefix length.
pub const POD_PREFIX_LEN: u8 = 16;
/// Prefix length of one node's pod CIDR.
pub const NODE_POD_PREFIX_LEN: u8 = 24;
/// Highest node count (node ips `.11`–`.109` stay below the VIP range).
pub const MAX_NODES: u8 = 99;
/// Highest client count (client ips `.2`–`.9`).
pub const MAX_CLIENTS: u8 = 8;
/// Highest pod count per node (`.2`–`.201`).
pub const MAX_PODS_PER_NODE: u8 = 200;
/// Number of VIPs reserved in the LAN (`.200`–`.250`).
pub const VIP_COUNT: u8 = 51;
/// Default namespace-name base (`oh<pid>-<n>-`).
pub const DEFAULT_BASE: &str = "oh";

/// LAN ip of client `c` (1-based).
pub fn client_ip(c: u8) -> Ipv4Addr {
    Ipv4Addr::new(192, 168, 50, 1 + c)
}

/// LAN ip of node `i` (1-based).
pub fn node_ip(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(192, 168, 50, 10 + i)
}

/// Load-balancer VIP number `k` (0-based, `k < VIP_COUNT`): `192.168.50.(200+k)`, never
/// assigned to any interface by the topology.
pub fn vip(k: u8) -> Ipv4Addr {
    assert!(k < VIP_COUNT, "vip index {k} out of range");
    Ipv4Addr::new(192, 168, 50, 200 + k)
}

/// Pod CIDR network address of node `i`: `10.42.i.0` (/24).
pub fn pod_cidr(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 42, i, 0)
}

/// `cni0` address of node `i`: `10.42.i.1`, the pods' gateway.
pub fn cni_ip(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 42, i, 1)
}

/// Ip of pod `j` (1-based) on node `i`: `10.42.i.(1+j)`.
pub fn pod_ip(i: u8, j: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 42, i, 1 + j)
}

/// The client's IPv6 address on the LAN ([`Topology::ipv6_lan`]): `fd00:60::50`.
pub const CLIENT_IP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x60, 0, 0, 0, 0, 0, 0x50);

/// LAN IPv6 address of node `i` ([`Topology::ipv6_node`]): `fd00:60::<i>`
/// (`fd00:60::/64`; VIPs from `fd00:60::200` on are never assigned).
pub fn node_ip6(i: u8) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 0x60, 0, 0, 0, 0, 0, u16::from(i))
}

/// `cni0` IPv6 address of node `i`: `::1` of its pod network
/// `fd00:42:<i-1>::/64` (node 1's is `fd00:42::/64`).
pub fn cni_ip6(i: u8) -> Ipv6Addr {
    pod_ip6(i, 0)
}

/// IPv6 address of pod `j` (1-based) on node `i`: `fd00:42:<i-1>::<1+j>`
/// (node 1's first pod is `fd00:42::2`).
pub fn pod_ip6(i: u8, j: u8) -> Ipv6Addr {
    Ipv6Addr::new(
        0xfd00,
        0x42,
        u16::from(i.saturating_sub(1)),
        0,
        0,
        0,
        0,
        1 + u16::from(j),
    )
}

/// An Ethernet address.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// Broadcast `ff:ff:ff:ff:ff:ff`.
    pub const BROADCAST: Self = Self([0xff; 6]);

    /// The topology's deterministic MAC for an interface holding `ip`: `02:00:<ip bytes>`.
    pub fn for_ip(ip: Ipv4Addr) -> Self {
        let o = ip.octets();
        Self([0x02, 0x00, o[0], o[1], o[2], o[3]])
    }

    /// The six bytes.
    pub fn octets(self) -> [u8; 6] {
        self.0
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for MacAddr {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        let mut out = [0u8; 6];
        let mut parts = s.trim().split(':');
        for b in &mut out {
            let p = parts.next().with_context(|| format!("short MAC {s:?}"))?;
            *b = u8::from_str_radix(p, 16).with_context(|| format!("bad MAC {s:?}"))?;
        }
        ensure!(parts.next().is_none(), "long MAC {s:?}");
        Ok(Self(out))
    }
}

/// Builder for a [`Topology`]; see the module docs for the layout.
#[derive(Debug, Clone)]
pub struct TopologyBuilder {
    base: String,
    fixed_prefix: Option<String>,
    nodes: u8,
    pods_per_node: u8,
    clients: u8,
    offloads: Offloads,
}

impl Default for TopologyBuilder {
    fn default() -> Self {
        Self {
            base: DEFAULT_BASE.to_owned(),
            fixed_prefix: None,
            nodes: 2,
            pods_per_node: 2,
            clients: 1,
            offloads: Offloads::WireLike,
        }
    }
}

/// How the kit sets the offloads of the interfaces that send into the LAN and the pods.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Offloads {
    /// Clients and pods send wire-like frames: TX checksum offload, TSO and GSO off on their
    /// `eth0` (see [`wire_like_offloads`]). Nodes keep the kernel's defaults.
    #[default]
    WireLike,
    /// As a real node has them, and as the veths of a kind or k3d node do: TX checksum
    /// offload, TSO, GSO and GRO on for every client, node and pod `eth0` and every pod's
    /// node-side peer (see [`node_offloads`]). Frames then cross the veths as the sending
    /// stack left them: `CHECKSUM_PARTIAL` transport checksums (only the pseudo-header sum in
    /// the field) included.
    Node,
}

impl TopologyBuilder {
    /// Number of nodes (1..=[`MAX_NODES`], default 2).
    #[must_use]
    pub fn nodes(mut self, n: u8) -> Self {
        self.nodes = n;
        self
    }

    /// Pods on every node (0..=[`MAX_PODS_PER_NODE`], default 2).
    #[must_use]
    pub fn pods_per_node(mut self, n: u8) -> Self {
        self.pods_per_node = n;
        self
    }

    /// Number of client namespaces on the LAN (1..=[`MAX_CLIENTS`], default 1).
    #[must_use]
    pub fn clients(mut self, n: u8) -> Self {
        self.clients = n;
        self
    }

    /// How the clients', nodes' and pods' interfaces offload (default [`Offloads::WireLike`]).
    #[must_use]
    pub fn offloads(mut self, o: Offloads) -> Self {
        self.offloads = o;
        self
    }

    /// Base of the namespace names (default [`DEFAULT_BASE`]); the run prefix is
    /// `<base><pid>-<n>-`. Keep it short and free of `/`.
    #[must_use]
    pub fn base(mut self, base: &str) -> Self {
        base.clone_into(&mut self.base);
        self
    }

    /// Uses `prefix` as is instead of a unique one: for a demo whose namespaces a human
    /// wants to type (`ip netns exec demo-node1 …`). Building fails if a name is taken, so
    /// two users of one fixed prefix cannot share namespaces by accident.
    #[must_use]
    pub fn fixed_prefix(mut self, prefix: &str) -> Self {
        self.fixed_prefix = Some(prefix.to_owned());
        self
    }

    /// Creates everything. On error (or panic) whatever was created so far is torn down:
    /// every namespace is owned by a guard from the moment it exists.
    pub fn build(self) -> Result<Topology> {
        ensure!(
            (1..=MAX_NODES).contains(&self.nodes),
            "nodes must be 1..={MAX_NODES}"
        );
        ensure!(
            (1..=MAX_CLIENTS).contains(&self.clients),
            "clients must be 1..={MAX_CLIENTS}"
        );
        ensure!(
            self.pods_per_node <= MAX_PODS_PER_NODE,
            "pods_per_node must be <= {MAX_PODS_PER_NODE}"
        );
        let prefix = self
            .fixed_prefix
            .clone()
            .unwrap_or_else(|| unique_prefix(&self.base));
        // Fields are filled one by one so a failure drops (= deletes) exactly what exists.
        let mut topo = Topology {
            nodes: Vec::new(),
            clients: Vec::new(),
            lan: Netns::create(&format!("{prefix}lan"))?,
            prefix,
        };
        base_sysctls(&topo.lan, false)?;
        let lan = topo.lan.name().to_owned();
        topo.lan.ip(&["link", "add", "br0", "type", "bridge"])?;
        topo.lan.ip(&["link", "set", "br0", "up"])?;

        for c in 1..=self.clients {
            let client = build_client(&topo.prefix, &lan, c, self.nodes, self.offloads)?;
            topo.clients.push(client);
        }
        for i in 1..=self.nodes {
            let node = build_node(
                &topo.prefix,
                &lan,
                i,
                self.nodes,
                self.pods_per_node,
                self.offloads,
            )?;
            topo.nodes.push(node);
        }
        tracing::debug!(prefix = %topo.prefix, nodes = self.nodes, pods = self.pods_per_node, "topology up");
        Ok(topo)
    }
}

/// Settings every namespace gets explicitly. IPv4 `conf/{all,default}` of a new namespace
/// are copied from the ROOT namespace (`net.core.devconf_inherit_init_net` = 0), so without
/// this the host's `rp_filter` or forwarding would leak into tests. Set before any interface
/// exists so `default` applies to them.
fn base_sysctls(ns: &Netns, forward: bool) -> Result<()> {
    // Forwarding packets with a client's source out of another interface (and an LB NATing
    // across nodes) must not be dropped by reverse-path checks. Effective value is
    // max(all, dev), hence both.
    for scope in ["all", "default"] {
        ns.sysctl(&format!("net/ipv4/conf/{scope}/rp_filter"), "0")?;
        // Kernel defaults, restated because they too are inherited from the host.
        ns.sysctl(&format!("net/ipv4/conf/{scope}/arp_ignore"), "0")?;
        ns.sysctl(&format!("net/ipv4/conf/{scope}/arp_announce"), "0")?;
        // A node routing client→VIP→other node back out of eth0 would otherwise send ICMP
        // redirects, which muddle tests and benchmarks.
        ns.sysctl(&format!("net/ipv4/conf/{scope}/send_redirects"), "0")?;
    }
    ns.sysctl("net/ipv4/ip_forward", if forward { "1" } else { "0" })?;
    // No IPv6: link-local addresses, DAD, MLD and router solicitations would put background
    // frames on the LAN that XDP programs and packet counters then see.
    if ns.run(|| std::path::Path::new("/proc/sys/net/ipv6").exists())? {
        ns.sysctl("net/ipv6/conf/all/disable_ipv6", "1")?;
        ns.sysctl("net/ipv6/conf/default/disable_ipv6", "1")?;
    }
    Ok(())
}

/// Turns TX checksum offload, TSO and GSO off on `dev` in `ns`.
///
/// Why: a veth carries what a local socket hands it, and that is often `CHECKSUM_PARTIAL`
/// (the L4 checksum field only holds the pseudo-header sum, to be "completed by the NIC")
/// and possibly a 64 KiB GSO super-packet. A real wire only ever carries complete, MTU-sized
/// frames with finished checksums; an XDP program on the receiving side would otherwise see
/// (and NAT) frames no NIC ever delivers. With these off the stack finishes checksums and
/// segments in software, so the veth carries wire-like frames.
pub fn wire_like_offloads(ns: &impl NsName, dev: &str) -> Result<()> {
    let mut cmd = command_in(ns, "ethtool");
    cmd.args(["-K", dev, "tx", "off", "tso", "off", "gso", "off"]);
    run_checked(&mut cmd).with_context(|| {
        format!(
            "ethtool -K {dev} in netns {} (ethtool is the Debian package `ethtool`: apt-get install -y ethtool)",
            ns.ns_name()
        )
    })?;
    Ok(())
}

/// Turns TX checksum offload, TSO, GSO and GRO on on `dev` in `ns`: what a node's NIC does by
/// default (veths start with GRO off). A veth whose peer has an XDP program loses GSO whatever
/// is asked here (the kernel clears it: that XDP program sees one page per frame).
pub fn node_offloads(ns: &impl NsName, dev: &str) -> Result<()> {
    let mut cmd = command_in(ns, "ethtool");
    cmd.args(["-K", dev, "tx", "on", "tso", "on", "gso", "on", "gro", "on"]);
    run_checked(&mut cmd).with_context(|| {
        format!(
            "ethtool -K {dev} in netns {} (ethtool is the Debian package `ethtool`: apt-get install -y ethtool)",
            ns.ns_name()
        )
    })?;
    Ok(())
}

/// Applies `o` to an interface that sends into the LAN or a pod.
fn set_offloads(ns: &impl NsName, dev: &str, o: Offloads) -> Result<()> {
    match o {
        Offloads::WireLike => wire_like_offloads(ns, dev),
        Offloads::Node => node_offloads(ns, dev),
    }
}

fn cidr(ip: Ipv4Addr, len: u8) -> String {
    format!("{ip}/{len}")
}

fn build_client(prefix: &str, lan: &str, c: u8, nodes: u8, offloads: Offloads) -> Result<Client> {
    let ns = Netns::create(&format!("{prefix}client{c}"))?;
    base_sysctls(&ns, false)?;
    let ip = client_ip(c);
    let mac = MacAddr::for_ip(ip);
    let lan_peer = format!("vc{c}");
    // Created directly with one end in each namespace: nothing ever exists in the root one.
    ns.ip(&[
        "link", "add", "eth0", "type", "veth", "peer", "name", &lan_peer, "netns", lan,
    ])?;
    ns.ip(&["link", "set", "eth0", "address", &mac.to_string()])?;
    ns.ip(&["addr", "add", &cidr(ip, LAN_PREFIX_LEN), "dev", "eth0"])?;
    set_offloads(&ns, "eth0", offloads)?;
    ns.ip(&["link", "set", "eth0", "up"])?;
    crate::netns::ip_in(lan, &["link", "set", &lan_peer, "master", "br0", "up"])?;
    for i in 1..=nodes {
        let via = node_ip(i).to_string();
        ns.ip(&[
            "route",
            "add",
            &cidr(pod_cidr(i), NODE_POD_PREFIX_LEN),
            "via",
            &via,
        ])?;
    }
    Ok(Client {
        index: c,
        name: format!("client{c}"),
        ip,
        mac,
        lan_peer,
        ns,
    })
}

fn build_node(
    prefix: &str,
    lan: &str,
    i: u8,
    nodes: u8,
    pods: u8,
    offloads: Offloads,
) -> Result<Node> {
    let name = format!("node{i}");
    let ns = Netns::create(&format!("{prefix}{name}"))?;
    let mut node = Node {
        index: i,
        pods: Vec::new(),
        ip: node_ip(i),
        mac: MacAddr::for_ip(node_ip(i)),
        lan_peer: format!("vn{i}"),
        cni_mac: MacAddr::for_ip(cni_ip(i)),
        name,
        ns,
    };
    base_sysctls(&node.ns, true)?;
    let ns = &node.ns;
    ns.ip(&[
        "link",
        "add",
        "eth0",
        "type",
        "veth",
        "peer",
        "name",
        &node.lan_peer,
        "netns",
        lan,
    ])?;
    ns.ip(&["link", "set", "eth0", "address", &node.mac.to_string()])?;
    ns.ip(&["addr", "add", &cidr(node.ip, LAN_PREFIX_LEN), "dev", "eth0"])?;
    if offloads == Offloads::Node {
        node_offloads(ns, "eth0")?;
    }
    ns.ip(&["link", "set", "eth0", "up"])?;
    crate::netns::ip_in(lan, &["link", "set", &node.lan_peer, "master", "br0", "up"])?;

    // The bridge's MAC is pinned: otherwise it follows the lowest port MAC and changes as
    // pods come and go.
    ns.ip(&["link", "add", "cni0", "type", "bridge"])?;
    ns.ip(&["link", "set", "cni0", "address", &node.cni_mac.to_string()])?;
    ns.ip(&[
        "addr",
        "add",
        &cidr(cni_ip(i), NODE_POD_PREFIX_LEN),
        "dev",
        "cni0",
    ])?;
    ns.ip(&["link", "set", "cni0", "up"])?;
    for k in (1..=nodes).filter(|&k| k != i) {
        let via = node_ip(k).to_string();
        ns.ip(&[
            "route",
            "add",
            &cidr(pod_cidr(k), NODE_POD_PREFIX_LEN),
            "via",
            &via,
        ])?;
    }
    for j in 1..=pods {
        let pod = build_pod(prefix, &node, j, offloads)?;
        node.pods.push(pod);
    }
    Ok(node)
}

fn build_pod(prefix: &str, node: &Node, j: u8, offloads: Offloads) -> Result<Pod> {
    let name = format!("{}-pod{j}", node.name);
    let ns = Netns::create(&format!("{prefix}{name}"))?;
    base_sysctls(&ns, false)?;
    let ip = pod_ip(node.index, j);
    let mac = MacAddr::for_ip(ip);
    let host_peer = format!("vp{j}");
    node.ns.ip(&[
        "link",
        "add",
        &host_peer,
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        ns.name(),
    ])?;
    node.ns
        .ip(&["link", "set", &host_peer, "master", "cni0", "up"])?;
    if offloads == Offloads::Node {
        node_offloads(&node.ns, &host_peer)?;
    }
    ns.ip(&["link", "set", "eth0", "address", &mac.to_string()])?;
    ns.ip(&["addr", "add", &cidr(ip, NODE_POD_PREFIX_LEN), "dev", "eth0"])?;
    set_offloads(&ns, "eth0", offloads)?;
    ns.ip(&["link", "set", "eth0", "up"])?;
    ns.ip(&[
        "route",
        "add",
        "default",
        "via",
        &cni_ip(node.index).to_string(),
    ])?;
    Ok(Pod {
        node: node.index,
        index: j,
        name,
        ip,
        mac,
        host_peer,
        ns,
    })
}

/// A built topology. Dropping it deletes every namespace (pods, nodes, clients, then the
/// LAN), which also destroys every veth and bridge in them; this happens on unwinding too.
///
/// Before deleting, processes still inside are killed with SIGKILL (best effort): a leftover process
/// would keep its namespace and veths alive after the name is gone.
#[derive(Debug)]
pub struct Topology {
    // Field order is drop order: pods (inside nodes) first, the LAN last.
    nodes: Vec<Node>,
    clients: Vec<Client>,
    lan: Netns,
    prefix: String,
}

impl Topology {
    /// A builder with the defaults (2 nodes, 2 pods each, 1 client).
    pub fn builder() -> TopologyBuilder {
        TopologyBuilder::default()
    }

    /// This run's namespace-name prefix (`oh<pid>-<n>-`); every namespace starts with it.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The LAN namespace (holds `br0` and the LAN-side veth peers `vc<c>`, `vn<i>`).
    pub fn lan(&self) -> &Netns {
        &self.lan
    }

    /// The first client.
    pub fn client(&self) -> &Client {
        &self.clients[0]
    }

    /// All clients, `client1` first.
    pub fn clients(&self) -> &[Client] {
        &self.clients
    }

    /// IPv6 on the LAN (`fd00:60::/64`: the client `::50`) and on node 1
    /// ([`Topology::ipv6_node`]: LAN `fd00:60::1`, pod network
    /// `fd00:42::/64`, its first pod `fd00:42::2`). The kit turns IPv6 off
    /// everywhere; a test that wants it calls this.
    pub fn ipv6_lan(&self) -> Result<()> {
        ipv6_on(self.client().ns(), "eth0", &format!("{CLIENT_IP6}/64"))?;
        self.ipv6_node(1)
    }

    /// [`Topology::ipv6_lan`] on every node: each serves IPv6 to its own pods.
    pub fn ipv6_lan_all_nodes(&self) -> Result<()> {
        self.ipv6_lan()?;
        for n in self.nodes.iter().skip(1) {
            self.ipv6_node(n.index)?;
        }
        Ok(())
    }

    /// IPv6 on node `i`: its LAN side ([`node_ip6`]), its pod network
    /// (`cni0` [`cni_ip6`], the pods [`pod_ip6`], default-routed via
    /// `cni0`), the node forwarding between them. No routes to other nodes'
    /// pod networks.
    pub fn ipv6_node(&self, i: u8) -> Result<()> {
        let node = self.node(i);
        ipv6_on(node.ns(), "eth0", &format!("{}/64", node_ip6(i)))?;
        ipv6_on(node.ns(), "cni0", &format!("{}/64", cni_ip6(i)))?;
        node.ns().sysctl("net/ipv6/conf/all/forwarding", "1")?;
        for pod in node.pods() {
            ipv6_on(pod.ns(), "eth0", &format!("{}/64", pod_ip6(i, pod.index())))?;
            pod.ns()
                .ip(&[
                    "-6",
                    "route",
                    "add",
                    "default",
                    "via",
                    &cni_ip6(i).to_string(),
                ])
                .with_context(|| format!("the IPv6 route of {}", pod.name()))?;
        }
        Ok(())
    }

    /// All nodes, `node1` first.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// Node `i`, 1-based like its name (`node(1)` is `node1`).
    pub fn node(&self, i: u8) -> &Node {
        &self.nodes[usize::from(i) - 1]
    }

    /// Every pod of every node, node by node.
    pub fn pods(&self) -> impl Iterator<Item = &Pod> {
        self.nodes.iter().flat_map(|n| n.pods.iter())
    }

    /// Names of every namespace of this topology.
    pub fn namespaces(&self) -> Vec<&str> {
        let mut v = vec![self.lan.name()];
        v.extend(self.clients.iter().map(|c| c.ns.name()));
        for n in &self.nodes {
            v.push(n.ns.name());
            v.extend(n.pods.iter().map(|p| p.ns.name()));
        }
        v
    }

    /// Starts an HTTP server on `port` in every pod (bound to the pod ip).
    pub fn serve_http_all(&self, port: u16) -> Result<Vec<HttpServer>> {
        self.pods().map(|p| p.serve_http(port)).collect()
    }

    /// Starts a UDP server on `port` in every pod (bound to the pod ip).
    pub fn serve_udp_all(&self, port: u16) -> Result<Vec<UdpServer>> {
        self.pods().map(|p| p.serve_udp(port)).collect()
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        for name in self.namespaces() {
            let ns = name.to_owned();
            // Borrow-free kill: a temporary guard would delete the namespace on drop.
            if let Err(e) = kill_in(&ns) {
                eprintln!("onehop-testkit: killing leftovers in {ns}: {e:#}");
            }
        }
    }
}

fn kill_in(ns: &str) -> Result<()> {
    let out = run_checked(std::process::Command::new("ip").args(["netns", "pids", ns]))?;
    let me = std::process::id().to_string();
    for pid in out.split_whitespace().filter(|p| *p != me) {
        let Ok(pid) = pid.parse::<i32>() else {
            continue;
        };
        tracing::warn!(netns = ns, pid, "killing a process left in the namespace");
        // SAFETY: kill(2) has no memory-safety preconditions.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    Ok(())
}

/// A client namespace on the LAN, with the helpers tests use to send traffic from it.
#[derive(Debug)]
pub struct Client {
    index: u8,
    name: String,
    ip: Ipv4Addr,
    mac: MacAddr,
    lan_peer: String,
    ns: Netns,
}

impl Client {
    /// 1-based index.
    pub fn index(&self) -> u8 {
        self.index
    }
    /// Logical name (`client1`).
    pub fn name(&self) -> &str {
        &self.name
    }
    /// Its namespace.
    pub fn ns(&self) -> &Netns {
        &self.ns
    }
    /// LAN ip of its `eth0`.
    pub fn ip(&self) -> Ipv4Addr {
        self.ip
    }
    /// MAC of its `eth0`.
    pub fn mac(&self) -> MacAddr {
        self.mac
    }
    /// Its interface (always `eth0`).
    pub fn ifname(&self) -> &'static str {
        "eth0"
    }
    /// The veth peer of its `eth0`, inside the LAN namespace (`vc<c>`).
    pub fn lan_peer(&self) -> &str {
        &self.lan_peer
    }

    /// One HTTP GET of `/` with `Connection: close`; see [`traffic::http_get`].
    pub fn http_get(&self, addr: SocketAddr) -> Result<Response> {
        traffic::http_get(&self.ns, addr)
    }

    /// A keep-alive connection from this client; see [`HttpConn`].
    pub fn keep_alive(&self, addr: SocketAddr) -> Result<HttpConn> {
        HttpConn::connect(&self.ns, addr)
    }

    /// One UDP request/reply; see [`traffic::udp_request`].
    pub fn udp_request(&self, addr: SocketAddr, payload: &[u8]) -> Result<UdpReply> {
        traffic::udp_request(&self.ns, addr, payload)
    }

    /// ARP for `target` out of `eth0`: `Some(mac)` of the first reply within `timeout`,
    /// `None` if nobody answered.
    pub fn arp(&self, target: Ipv4Addr, timeout: Duration) -> Result<Option<MacAddr>> {
        Ok(arp::arp_probe(&self.ns, "eth0", target, timeout)?.map(|r| r.sender_mac))
    }
}

/// A node: `eth0` on the LAN (where onehop's XDP program goes), `cni0` bridging its pods.
#[derive(Debug)]
pub struct Node {
    index: u8,
    // Before `ns`: pods are deleted before their node.
    pods: Vec<Pod>,
    name: String,
    ip: Ipv4Addr,
    mac: MacAddr,
    lan_peer: String,
    cni_mac: MacAddr,
    ns: Netns,
}

impl Node {
    /// 1-based index.
    pub fn index(&self) -> u8 {
        self.index
    }
    /// Logical name (`node1`), what a Kubernetes Node would be called.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// Its namespace.
    pub fn ns(&self) -> &Netns {
        &self.ns
    }
    /// LAN ip of `eth0` (the Node's `InternalIP`).
    pub fn ip(&self) -> Ipv4Addr {
        self.ip
    }
    /// MAC of `eth0`.
    pub fn mac(&self) -> MacAddr {
        self.mac
    }
    /// The uplink interface (always `eth0`).
    pub fn ifname(&self) -> &'static str {
        "eth0"
    }
    /// The veth peer of `eth0` inside the LAN namespace (`vn<i>`). `XDP_TX`/`XDP_REDIRECT` out of a
    /// veth only delivers when this peer has an XDP program too (a pass-through one will do).
    pub fn lan_peer(&self) -> &str {
        &self.lan_peer
    }
    /// Pod CIDR network address (`10.42.i.0`, /24).
    pub fn pod_cidr(&self) -> Ipv4Addr {
        pod_cidr(self.index)
    }
    /// Address of `cni0` (`10.42.i.1`).
    pub fn cni_ip(&self) -> Ipv4Addr {
        cni_ip(self.index)
    }
    /// MAC of `cni0`.
    pub fn cni_mac(&self) -> MacAddr {
        self.cni_mac
    }
    /// Its pods, `pod1` first.
    pub fn pods(&self) -> &[Pod] {
        &self.pods
    }
    /// Pod `j`, 1-based like its name.
    pub fn pod(&self, j: u8) -> &Pod {
        &self.pods[usize::from(j) - 1]
    }
}

/// A pod: its own namespace, `eth0` bridged into its node's `cni0`.
#[derive(Debug)]
pub struct Pod {
    node: u8,
    index: u8,
    name: String,
    ip: Ipv4Addr,
    mac: MacAddr,
    host_peer: String,
    ns: Netns,
}

impl Pod {
    /// Index of its node (1-based).
    pub fn node_index(&self) -> u8 {
        self.node
    }
    /// 1-based index on its node.
    pub fn index(&self) -> u8 {
        self.index
    }
    /// Logical name (`node1-pod2`), which the servers report as `pod=`.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// Its namespace.
    pub fn ns(&self) -> &Netns {
        &self.ns
    }
    /// Pod ip.
    pub fn ip(&self) -> Ipv4Addr {
        self.ip
    }
    /// MAC of its `eth0`.
    pub fn mac(&self) -> MacAddr {
        self.mac
    }
    /// The node-side veth peer (`vp<j>`, a `cni0` port in the node namespace).
    pub fn host_peer(&self) -> &str {
        &self.host_peer
    }
    /// `ip:port` on this pod.
    pub fn addr(&self, port: u16) -> SocketAddr {
        SocketAddr::V4(SocketAddrV4::new(self.ip, port))
    }

    /// Starts the HTTP server on `ip:port` in this pod.
    pub fn serve_http(&self, port: u16) -> Result<HttpServer> {
        HttpServer::start(&self.ns, &self.name, self.addr(port))
    }

    /// Starts the UDP server on `ip:port` in this pod.
    pub fn serve_udp(&self, port: u16) -> Result<UdpServer> {
        UdpServer::start(&self.ns, &self.name, self.addr(port))
    }
}

/// Turns IPv6 on for `dev` in `ns` with no duplicate address detection or
/// router solicitations (they would delay or disturb the test's traffic),
/// and gives it `addr`.
pub fn ipv6_on(ns: &Netns, dev: &str, addr: &str) -> Result<()> {
    for (key, value) in [
        ("disable_ipv6", "0"),
        ("accept_dad", "0"),
        ("accept_ra", "0"),
        ("router_solicitations", "0"),
    ] {
        ns.sysctl(&format!("net/ipv6/conf/{dev}/{key}"), value)?;
    }
    ns.ip(&["-6", "addr", "add", addr, "dev", dev, "nodad"])
        .with_context(|| format!("{addr} on {dev}"))
}
