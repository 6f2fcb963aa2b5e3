//! onehop's network-namespace test kit.
//!
//! Builds a small bare-metal "cluster" out of network namespaces — a LAN bridge, clients,
//! nodes with pod bridges, pods — runs servers in pods and traffic from clients, and tears it
//! all down on drop, panics included; [`cluster`] adds an `onehop agent` per node. Used by lb-userspace's end-to-end tests (the agent as a
//! real process in a node namespace, XDP on the node's `eth0`), `cargo xtask demo` and
//! `cargo xtask bench e2e`. The Kubernetes-facing pieces (a test API server, a test's
//! Kubernetes backend, a TCP forwarder out of the namespaces to it) are the crate
//! `onehop-apiserver`, so a user of namespaces alone does not build hyper, kube and
//! k8s-openapi.
//!
//! Ground rules, all enforced here so callers cannot get them wrong:
//! - Nothing is created in the root network namespace: namespaces come from `ip netns add`,
//!   veth pairs are created with each end directly in its namespace, addresses and bridges
//!   exist only inside namespaces. The machine's own interfaces are never touched.
//! - Every namespace is owned by an RAII guard ([`Netns`]) from the moment it exists, and
//!   every pin directory on the host bpffs by one ([`PinRoot`]).
//! - Names are unique per run (`oh<pid>-<counter>-<role>`), so parallel tests never collide.
//! - Every network wait is bounded by a timeout, every loop by a count.
//!
//! Requires root, iproute2 and `ethtool` (Debian package `ethtool`).
//!
//! ```no_run
//! use onehop_testkit::Topology;
//! let topo = Topology::builder().nodes(2).pods_per_node(2).build()?;
//! let _servers = topo.serve_http_all(8080)?;
//! for pod in topo.pods() {
//!     let r = topo.client().http_get(pod.addr(8080))?;
//!     assert_eq!(r.answer()?.pod, pod.name());
//! }
//! # anyhow::Ok(())
//! ```

pub mod arp;
pub mod bpffs;
pub mod capture;
pub mod cluster;
pub mod flood;
pub mod http;
pub mod netns;
pub mod server;
pub mod topology;
pub mod traffic;

pub use arp::{ArpFrame, ArpReply, arp_probe, arp_probe_from};
pub use bpffs::PinRoot;
pub use capture::{Capture, Frame};
pub use cluster::Cluster;
pub use netns::{
    ChildGuard, Netns, NsName, command_in, ifindex, in_netns, spawn_in, spawn_thread_in,
    unique_prefix,
};
pub use server::{Answer, HttpServer, UdpServer};
pub use topology::{Client, MacAddr, Node, Pod, Topology, TopologyBuilder};
pub use traffic::{
    HttpConn, Response, Timeouts, UdpReply, http_get, http_get_here, http_get_with, udp_request,
    udp_request_here, udp_request_with,
};
