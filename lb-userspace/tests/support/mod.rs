//! Shared fixture for the data-path tests: a network namespace with veths
//! and permanent neighbours (so `bpf_fib_lookup` succeeds inside
//! `BPF_PROG_TEST_RUN`), the embedded eBPF object loaded by the test-run
//! harness (`onehop_testrun`, shared with `bench xdp`), the standard set of
//! VIPs/services/backends provisioned through the planner and the map
//! writer, and helpers to run frames and read counters and flow state.
#![allow(dead_code, reason = "each test binary uses a different subset")]

pub mod check;
pub mod packet;

use std::net::Ipv4Addr;

use aya::maps::{Array, MapData};
use lb_common::{
    AffinityKey, AffinityValue, BackendValue, ConntrackValue, Counter, DatapathConfig, FlowKey,
    LocalEndpointKey, LocalFronts, RevNatValue, ServiceKey, backend_flags, maps as m, proto,
    service_flags,
};
use lb_userspace::{
    dataplane::{flows, maps::sum_traffic, writer},
    plan::{
        model::{
            Backend, Cidr, DirectReturn, NatPorts, NodeServices, Protocol, Service, ServicePort,
            SessionAffinity,
        },
        state::Node,
    },
};
#[allow(unused_imports, reason = "each test binary uses a different subset")]
pub use onehop_testrun::{Counts, Run, TC_NEXT, XDP_DROP, XDP_PASS, XDP_REDIRECT, XDP_TX};
use onehop_testrun::{Harness, MapSizes};

use onehop_testkit::netns::{Netns, ifindex, unique_prefix};

pub const NODE_IP: [u8; 4] = [10, 200, 0, 1];
pub const NODE_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
/// The flow-hash seed of the harness: not the public one, so a data path that
/// ignored the configured seed would pick other backends than tests expect.
pub const HASH_SEED: u32 = 0x5ec2_e7a1;
/// Second uplink of the namespace (a redirect target).
pub const NODE2_MAC: [u8; 6] = [0x02, 0, 0, 0, 1, 0x01];
pub const CLIENT: [u8; 4] = [10, 200, 0, 50];
pub const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x50];
/// A client the namespace has no neighbour entry for.
pub const CLIENT_NO_NEIGH: [u8; 4] = [10, 200, 0, 60];
/// A client outside `10.200.0.0/26` (the source range of service 7).
pub const CLIENT_FAR: [u8; 4] = [10, 200, 0, 100];
pub const PEER_NODE: [u8; 4] = [10, 200, 0, 2];
pub const PEER_NODE_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
pub const FAR_NODE: [u8; 4] = [10, 201, 0, 2];
pub const FAR_NODE_MAC: [u8; 6] = [0x02, 0, 0, 0, 1, 0x02];
pub const NO_NEIGH_NODE: [u8; 4] = [10, 200, 0, 3];
/// A third node on the segment, with a neighbour entry (direct return).
pub const THIRD_NODE: [u8; 4] = [10, 200, 0, 4];
pub const THIRD_NODE_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x04];
/// The subnet of `v0`: the node's segment (`PEER_NODE` and `NO_NEIGH_NODE`
/// are on it, `FAR_NODE` is not).
pub const SEGMENT: Cidr = Cidr {
    addr: std::net::IpAddr::V4(Ipv4Addr::new(10, 200, 0, 0)),
    prefix_len: 24,
};
/// Owned (SERVICE | ANNOUNCE).
pub const VIP: [u8; 4] = [192, 0, 2, 10];
/// Served but announced by another node (SERVICE only).
pub const VIP_OTHER: [u8; 4] = [192, 0, 2, 20];
pub const NOT_VIP: [u8; 4] = [192, 0, 2, 99];
pub const NAT_MIN: u16 = 61000;
pub const NAT_MAX: u16 = 61999;

/// Backend ids: the ones the planner hands out when the scenario's services
/// arrive one by one (the `VIP_OTHER` service first, then `SERVICES` in
/// order); `Lb::scenario` checks them.
pub const LOCAL_A: u32 = 0;
pub const REMOTE_PEER: u32 = 1;
pub const REMOTE_FAR: u32 = 2;
pub const REMOTE_NO_NEIGH: u32 = 3;
pub const LOCAL_B: u32 = 4;
pub const BACKENDS: [u32; 5] = [LOCAL_A, REMOTE_PEER, REMOTE_FAR, REMOTE_NO_NEIGH, LOCAL_B];

pub fn backend_value(id: u32) -> BackendValue {
    let (ip, node_ip, port, local) = match id {
        LOCAL_A => ([10, 244, 0, 11], NODE_IP, 8080, true),
        REMOTE_PEER => ([10, 244, 1, 12], PEER_NODE, 8080, false),
        REMOTE_FAR => ([10, 244, 2, 13], FAR_NODE, 9090, false),
        REMOTE_NO_NEIGH => ([10, 244, 3, 14], NO_NEIGH_NODE, 8080, false),
        LOCAL_B => ([10, 244, 0, 15], NODE_IP, 8080, true),
        _ => panic!("no backend {id}"),
    };
    let flags = backend_flags::VALID | if local { backend_flags::LOCAL } else { 0 };
    BackendValue::new(ip, node_ip, port, flags)
}

/// The standard services on `VIP`: (id, port, proto, backends, flags).
/// Backends of one service share a target port (the model's rule).
pub const SERVICES: &[(u32, u16, u8, &[u32], u32)] = &[
    (1, 80, proto::TCP, &[LOCAL_A], 0),
    (2, 81, proto::TCP, &[REMOTE_PEER], 0),
    (3, 53, proto::UDP, &[LOCAL_A], 0),
    (4, 82, proto::TCP, &[REMOTE_FAR], 0),
    (5, 83, proto::TCP, &[REMOTE_NO_NEIGH], 0),
    (6, 84, proto::TCP, &[], 0),
    (7, 85, proto::TCP, &[LOCAL_A], service_flags::SOURCE_RANGES),
    (
        8,
        86,
        proto::TCP,
        &[LOCAL_A, LOCAL_B],
        service_flags::AFFINITY,
    ),
    (9, 87, proto::UDP, &[REMOTE_PEER], 0),
    (10, 88, proto::TCP, &[LOCAL_A, LOCAL_B], 0),
];
/// Service 0: `VIP_OTHER:80/TCP` (served here, announced elsewhere).
pub const OTHER_SERVICE: (u32, u16, u8, &[u32], u32) = (0, 80, proto::TCP, &[LOCAL_A], 0);
pub const AFFINITY_TIMEOUT_S: u32 = 10;
/// The allowed sources of `SOURCE_RANGES` services: not `CLIENT_FAR`.
pub const SOURCE_RANGE: (Ipv4Addr, u8) = (Ipv4Addr::new(10, 200, 0, 0), 26);

/// The model entry of one row of `SERVICES`.
fn service(vip: [u8; 4], row: (u32, u16, u8, &[u32], u32)) -> Service {
    let (id, port, p, backends, flags) = row;
    let protocol = if p == proto::UDP {
        Protocol::Udp
    } else {
        Protocol::Tcp
    };
    let target_port = backends.first().map_or(port, |&b| backend_value(b).port);
    Service {
        name: format!("svc-{id}"),
        vip: Ipv4Addr::from(vip).into(),
        ports: vec![ServicePort {
            port,
            protocol,
            target_port,
        }],
        session_affinity: if flags & service_flags::AFFINITY != 0 {
            SessionAffinity::ClientIp {
                timeout_s: AFFINITY_TIMEOUT_S,
            }
        } else {
            SessionAffinity::None
        },
        source_ranges: if flags & service_flags::SOURCE_RANGES != 0 {
            vec![Cidr::v4(SOURCE_RANGE.0, SOURCE_RANGE.1)]
        } else {
            Vec::new()
        },
        maglev_table_size: None,
        draining: Vec::new(),
        backend_ports: std::collections::BTreeMap::new(),
        backends: backends
            .iter()
            .map(|&b| {
                let v = backend_value(b);
                Backend {
                    ip: Ipv4Addr::from(v.ip).into(),
                    node_ip: Ipv4Addr::from(v.node_ip).into(),
                }
            })
            .collect(),
    }
}

/// Builds the namespace every test runs in:
/// `v0` (10.200.0.1/24 and `2001:db8::1/64`, `NODE_MAC`) with permanent neighbours for the
/// peer (both families) and third nodes and the client, `v2` (10.201.0.1/24) with one for
/// the far node, forwarding on in both families (`bpf_fib_lookup` refuses to answer
/// without it).
pub fn namespace() -> Netns {
    let ns = Netns::create(&format!("{}dp", unique_prefix("ohdp"))).expect("netns");
    let ip_in = |args: &[&str]| ns.ip(args).unwrap_or_else(|e| panic!("{e:#}"));
    let mac = |m: [u8; 6]| m.map(|b| format!("{b:02x}")).join(":");
    let ip = |a: [u8; 4]| a.map(|b| b.to_string()).join(".");
    ip_in(&["link", "set", "lo", "up"]);
    ip_in(&[
        "link",
        "add",
        "v0",
        "address",
        &mac(NODE_MAC),
        "type",
        "veth",
        "peer",
        "name",
        "v1",
    ]);
    ip_in(&[
        "link",
        "add",
        "v2",
        "address",
        &mac(NODE2_MAC),
        "type",
        "veth",
        "peer",
        "name",
        "v3",
    ]);
    for dev in ["v0", "v1", "v2", "v3"] {
        ip_in(&["link", "set", dev, "up"]);
    }
    ip_in(&["addr", "add", "10.200.0.1/24", "dev", "v0"]);
    ip_in(&["addr", "add", "10.201.0.1/24", "dev", "v2"]);
    for (addr, m, dev) in [
        (PEER_NODE, PEER_NODE_MAC, "v0"),
        (THIRD_NODE, THIRD_NODE_MAC, "v0"),
        (CLIENT, CLIENT_MAC, "v0"),
        (FAR_NODE, FAR_NODE_MAC, "v2"),
    ] {
        ip_in(&[
            "neigh",
            "add",
            &ip(addr),
            "lladdr",
            &mac(m),
            "dev",
            dev,
            "nud",
            "permanent",
        ]);
    }
    ns.sysctl("net/ipv4/ip_forward", "1")
        .expect("forwarding on");
    // IPv6 (datapath6.rs): the node's address on the segment and the peer
    // node's, for direct return's lookup of its MAC.
    ip_in(&["-6", "addr", "add", NODE6_CIDR, "dev", "v0", "nodad"]);
    ip_in(&[
        "-6",
        "neigh",
        "add",
        PEER_NODE6_ADDR,
        "lladdr",
        &mac(PEER_NODE_MAC),
        "dev",
        "v0",
        "nud",
        "permanent",
    ]);
    ns.sysctl("net/ipv6/conf/all/forwarding", "1")
        .expect("IPv6 forwarding on");
    ns
}

/// `v0`'s IPv6 address and segment.
pub const NODE6_CIDR: &str = "2001:db8::1/64";
/// The peer node's IPv6 address (its MAC is `PEER_NODE_MAC`).
pub const PEER_NODE6_ADDR: &str = "2001:db8::2";

/// Runs `f` with a freshly loaded data path, configured with the standard
/// scenario, on a thread inside a fresh namespace.
pub fn with_lb(f: impl FnOnce(&mut Lb) + Send) {
    with_object_of(PRODUCT, f);
}

/// [`with_lb`] on the bench object (the benchmark programs around the same
/// ingress code) instead of the product object.
pub fn with_bench_lb(f: impl FnOnce(&mut Lb) + Send) {
    with_object_of(BENCH, f);
}

/// Which embedded object a test loads.
#[derive(Clone, Copy)]
enum Which {
    /// What the agent loads.
    Product,
    /// The benchmark wrappers; lb-userspace's build script builds it beside
    /// the product object, and only the tests and the benches embed it.
    Bench,
}
const PRODUCT: Which = Which::Product;
const BENCH: Which = Which::Bench;

static BENCH_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-ebpf-bench"));

fn with_object_of(which: Which, f: impl FnOnce(&mut Lb) + Send) {
    let ns = namespace();
    ns.run(|| {
        let mut lb = Lb::load(which);
        lb.scenario();
        f(&mut lb);
    })
    .expect("entering the test namespace");
}

pub struct Lb {
    pub h: Harness,
    pub ifindex: u32,
    /// The services model the maps were last provisioned from.
    pub model: NodeServices,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Want {
    C(lb_common::Counter),
    D(lb_common::DropReason),
    /// Only `IngressPackets` grows (config not ready).
    Nothing,
}

impl Lb {
    /// Loads the embedded object with small maps (tests run in parallel).
    fn load(which: Which) -> Self {
        Self::load_as(which, NODE_IP, NODE_MAC)
    }

    /// Another node of the same segment (`10.200.0.0/24`) in this namespace:
    /// the product object loaded again with maps of its own, for a node with
    /// address `ip` and MAC `mac` (frames for it arrive on `v0` as well),
    /// provisioned with the scenario's services as that node plans them
    /// (its own pods local), announcing nothing, direct return on.
    pub fn peer(ip: [u8; 4], mac: [u8; 6]) -> Self {
        let mut lb = Self::load_as(PRODUCT, ip, mac);
        lb.model.node_ip = Some(Ipv4Addr::from(ip));
        lb.model.direct_return = DirectReturn::Segment;
        lb.model.services.push(service(VIP_OTHER, OTHER_SERVICE));
        lb.model
            .services
            .extend(SERVICES.iter().map(|&row| service(VIP, row)));
        lb.apply();
        lb
    }

    fn load_as(which: Which, node_ip: [u8; 4], node_mac: [u8; 6]) -> Self {
        let object = match which {
            Which::Product => {
                lb_userspace::dataplane::object::object().expect("embedded eBPF object")
            }
            Which::Bench => {
                assert!(
                    !BENCH_OBJECT.is_empty(),
                    "the bench eBPF object is an empty stub (bpf-linker missing?)"
                );
                BENCH_OBJECT
            }
        };
        let sizes = MapSizes {
            vips: 1024,
            services: 1024,
            backends: 1024,
            maglev_slots: 1 << 16,
            conntrack: 1 << 16,
            rev_nat: 1 << 16,
            affinity: 4096,
            src_ranges: 1024,
        };
        let ifindex = ifindex("v0").expect("v0 in the test namespace");
        let node = Node {
            ip: Ipv4Addr::from(node_ip),
            ip6: None,
            ifindex,
            mac: node_mac,
            hash_seed: HASH_SEED,
            segment: Some(SEGMENT),
            segment6: None,
        };
        let h = Harness::load(object, &sizes, node).unwrap_or_else(|e| {
            // A rejected program's verifier log runs to megabytes; its verdict
            // and statistics are at the end.
            let e = format!("{e:#}");
            let cut = e.len().saturating_sub(4000);
            let cut = (cut..e.len()).find(|&i| e.is_char_boundary(i)).unwrap_or(0);
            panic!("{}{}", if cut > 0 { "…" } else { "" }, &e[cut..])
        });
        let model = NodeServices {
            node_ip: Some(Ipv4Addr::from(node_ip)),
            node_ip6: None,
            nat_ports: NatPorts {
                min: NAT_MIN,
                max: NAT_MAX,
            },
            flow_timeouts: lb_common::FlowTimeouts::DEFAULT,
            maglev_table_size: lb_userspace::plan::model::MaglevSize::DEFAULT,
            direct_return: lb_userspace::plan::model::DirectReturn::Off,
            announce: std::collections::BTreeSet::new(),
            services: Vec::new(),
        };
        Self { h, ifindex, model }
    }

    /// Provisions the maps from `self.model` through the planner and writer.
    pub fn apply(&mut self) {
        self.h
            .apply(&self.model)
            .unwrap_or_else(|e| panic!("provisioning: {e:#}"));
    }

    /// The standard scenario. Services arrive one at a time, as they do in
    /// a cluster, so the planner's lowest-free-id rule gives them the ids of
    /// `SERVICES` and the backends the `LOCAL_A`.. constants; checked here.
    pub fn scenario(&mut self) {
        self.model.services.push(service(VIP_OTHER, OTHER_SERVICE));
        self.apply();
        self.model.announce.insert(Ipv4Addr::from(VIP).into());
        for &row in SERVICES {
            self.model.services.push(service(VIP, row));
            self.apply();
        }
        let state = self.h.state();
        for (vip, &(id, port, p, _, _)) in std::iter::once((VIP_OTHER, &OTHER_SERVICE))
            .chain(SERVICES.iter().map(|row| (VIP, row)))
        {
            let got = state
                .services
                .get(&ServiceKey::new(vip, port, p))
                .map(|v| v.id);
            assert_eq!(got, Some(id), "planned id of service {vip:?}:{port}/{p}");
        }
        for id in BACKENDS {
            assert_eq!(
                state.backends.get(&id),
                Some(&backend_value(id)),
                "planned backend {id}"
            );
        }
    }

    /// The planned config (what `config` holds).
    pub fn config(&self) -> DatapathConfig {
        self.h.state().config
    }

    /// Direct server return on or off, through the planner.
    pub fn set_direct_return(&mut self, on: bool) {
        self.model.direct_return = if on {
            DirectReturn::Segment
        } else {
            DirectReturn::Off
        };
        self.apply();
    }

    /// A service `VIP:port/TCP` (id `id` in the model's name) with
    /// `backends` given by pod address and node address, all on `target`
    /// port, through the planner.
    pub fn add_service(&mut self, port: u16, target: u16, backends: &[([u8; 4], [u8; 4])]) {
        self.model.services.push(Service {
            name: format!("svc-port-{port}"),
            ports: vec![ServicePort {
                port,
                protocol: Protocol::Tcp,
                target_port: target,
            }],
            backends: backends
                .iter()
                .map(|&(ip, node_ip)| Backend {
                    ip: Ipv4Addr::from(ip).into(),
                    node_ip: Ipv4Addr::from(node_ip).into(),
                })
                .collect(),
            ..service(VIP, (0, port, proto::TCP, &[], 0))
        });
        self.apply();
    }

    /// A service `VIP:port` for both TCP and UDP with one pod, `pod` on this
    /// node, on `target` port, through the planner.
    pub fn add_tcp_udp_service(&mut self, port: u16, target: u16, pod: [u8; 4]) {
        self.model.services.push(Service {
            name: format!("svc-both-{port}"),
            ports: [Protocol::Tcp, Protocol::Udp]
                .into_iter()
                .map(|protocol| ServicePort {
                    port,
                    protocol,
                    target_port: target,
                })
                .collect(),
            backends: vec![Backend {
                ip: Ipv4Addr::from(pod).into(),
                node_ip: Ipv4Addr::from(NODE_IP).into(),
            }],
            ..service(VIP, (0, port, proto::TCP, &[], 0))
        });
        self.apply();
    }

    /// What the frontend of a deleted service does with packets that have no
    /// live flow there: a new TCP flow (`syn`) is dropped, and so is the UDP
    /// flow `udp`, whose backend is gone, after it is re-picked.
    pub fn expect_no_service_for_new_flows(&mut self, syn: &[u8], udp: &[u8]) {
        let drop = Want::D(lb_common::DropReason::NoService);
        self.expect("a new flow to the deleted service", syn, XDP_DROP, drop);
        let before = self.counts();
        self.expect("the deleted service's UDP flow", udp, XDP_DROP, drop);
        assert_eq!(self.counts().minus(&before).c(Counter::FlowRepicked), 1);
    }

    /// Deletes every service on `VIP:port`, through the planner.
    pub fn remove_services_on(&mut self, port: u16) {
        let vip = std::net::IpAddr::from(VIP);
        let before = self.model.services.len();
        self.model
            .services
            .retain(|s| !(s.vip == vip && s.ports.iter().any(|p| p.port == port)));
        assert_ne!(
            self.model.services.len(),
            before,
            "no service on port {port}"
        );
        self.apply();
    }

    /// The VIP `VIP` announced here or not, through the planner.
    pub fn set_announced(&mut self, on: bool) {
        if on {
            self.model.announce.insert(Ipv4Addr::from(VIP).into());
        } else {
            self.model.announce.remove(&Ipv4Addr::from(VIP).into());
        }
        self.apply();
    }

    /// New NAT source-port range, through the planner.
    pub fn set_nat_ports(&mut self, min: u16, max: u16) {
        self.model.nat_ports = NatPorts { min, max };
        self.apply();
    }

    /// The data path unconfigured (it passes everything): the writer's
    /// own path for it, which the agent takes; the planner always plans a
    /// ready config.
    pub fn set_not_ready(&mut self) {
        let config = DatapathConfig {
            ready: 0,
            ..self.config()
        };
        writer::set_config(self.h.maps_mut(), config).expect("config");
    }

    /// `flow_sweep`'s fd (loaded by the harness, as every program).
    pub fn sweep_prog(&mut self) -> std::os::fd::OwnedFd {
        use std::os::fd::AsFd as _;
        let p: &aya::programs::Xdp = self
            .h
            .ebpf_mut()
            .program(lb_common::maps::programs::SWEEP)
            .expect("flow_sweep in the object")
            .try_into()
            .expect("an XDP program");
        p.fd()
            .expect("loaded")
            .as_fd()
            .try_clone_to_owned()
            .expect("dup")
    }

    /// Another new-flow guard, written straight into `config` (the planner
    /// derives the refill from the half-open timeout; tests pick both).
    pub fn set_half_open(&mut self, half_open: lb_common::HalfOpenGuard) {
        let config = self.config().with_half_open(half_open);
        writer::set_config(self.h.maps_mut(), config).expect("config");
    }

    /// The service on `VIP:port` now has `backends`, through the planner.
    pub fn set_backends(&mut self, port: u16, backends: &[u32]) {
        let vip = Ipv4Addr::from(VIP);
        let s = self
            .model
            .services
            .iter_mut()
            .find(|s| s.vip == vip && s.ports.iter().any(|p| p.port == port))
            .unwrap_or_else(|| panic!("no service on port {port}"));
        s.backends = service(VIP, (0, port, proto::TCP, backends, 0)).backends;
        self.apply();
    }

    /// Pod `id` is terminating: every service keeps its flows on it and
    /// sends new ones elsewhere (a pod's condition, so all its services
    /// agree). Through the planner.
    pub fn drain_pod(&mut self, id: u32) {
        let ip = Ipv4Addr::from(backend_value(id).ip);
        for s in &mut self.model.services {
            if let Some(at) = s.backends.iter().position(|b| b.ip == ip) {
                let b = s.backends.remove(at);
                s.draining.push(b);
            }
        }
        self.apply();
    }

    /// The service on `VIP:port` now allows `ranges` (and, with
    /// `no_ipv4_range`, an IPv6 range too, which restricts it but matches no
    /// IPv4 client), through the planner.
    pub fn set_source_ranges(&mut self, port: u16, ranges: &[(Ipv4Addr, u8)], no_ipv4_range: bool) {
        let vip = std::net::IpAddr::from(VIP);
        let s = self
            .model
            .services
            .iter_mut()
            .find(|s| s.vip == vip && s.ports.iter().any(|p| p.port == port))
            .unwrap_or_else(|| panic!("no service on port {port}"));
        s.source_ranges = ranges
            .iter()
            .map(|&(addr, prefix_len)| Cidr::v4(addr, prefix_len))
            .collect();
        if no_ipv4_range {
            s.source_ranges
                .push(Cidr::parse("2001:db8::/32").expect("an IPv6 CIDR"));
        }
        self.apply();
    }

    /// Pod `id` is gone from every service, through the planner.
    pub fn remove_backend(&mut self, id: u32) {
        let ip = Ipv4Addr::from(backend_value(id).ip);
        for s in &mut self.model.services {
            s.backends.retain(|b| b.ip != ip);
            s.draining.retain(|b| b.ip != ip);
        }
        self.apply();
    }

    /// Writes `backends[id]` directly. Only for what the planner refuses:
    /// it never gives an id that the current maps use to another backend in
    /// one update (which one a later update reuses depends on allocation
    /// order), but a flow can outlive its backend and meet the id reused.
    pub fn write_backend(&mut self, id: u32, v: BackendValue) {
        self.h.maps_mut().backends.set(id, v, 0).expect("backend");
    }

    pub fn conntrack(&mut self, k: &FlowKey) -> Option<ConntrackValue> {
        self.h
            .maps()
            .flows()
            .expect("flow table")
            .get(k)
            .expect("reading the flow table")
    }

    /// Slots of the flow table holding a flow, live or over (the data
    /// path reuses an over flow's slot; nothing deletes it).
    pub fn conntrack_len(&mut self) -> usize {
        self.h
            .maps()
            .flows()
            .expect("flow table")
            .count()
            .expect("reading the flow table")
    }

    /// Every flow in the flow table, live or over.
    pub fn conntrack_entries(&mut self) -> Vec<(FlowKey, ConntrackValue)> {
        self.h
            .maps()
            .flows()
            .expect("flow table")
            .all()
            .expect("reading the flow table")
            .into_iter()
            .map(|s| (s.key, s.value))
            .collect()
    }

    // Flow state is the programs' own (nothing plans it): tests set it up
    // and inspect it directly.

    pub fn set_conntrack(&mut self, k: FlowKey, v: ConntrackValue) {
        flows::put(self.h.maps_mut(), &k, v).expect("conntrack insert");
    }

    pub fn remove_conntrack(&mut self, k: &FlowKey) {
        assert!(
            flows::remove(self.h.maps_mut(), k).expect("conntrack remove"),
            "no conntrack entry {k:?} to remove"
        );
    }

    /// The two flow-table sets `k` may live in.
    pub fn flow_sets_of(&mut self, k: &FlowKey) -> [u32; 2] {
        self.h.maps().flows().expect("flow table").sets_of(k)
    }

    /// Fills both flow-table sets of `k` with flows of other clients to the
    /// same front, `values[i]` the value of the i-th (set 0's four slots,
    /// then set 1's), each in a set its own hash names (so lookups find
    /// them). Returns their keys in the same order.
    pub fn fill_flow_sets(&mut self, k: &FlowKey, values: &[ConntrackValue; 8]) -> Vec<FlowKey> {
        use lb_common::{flow::table::key_hash, hash::flow_set};
        let seed = self.config().hash_seed;
        let n = self.h.maps().flow_sets();
        let sets = self.flow_sets_of(k);
        let mut keys = Vec::new();
        let mut candidates = (1..=254u8)
            .flat_map(|a| (1024..=65535u16).map(move |port| ([10, 9, a, 1], port)))
            .map(|(client, port)| {
                flow(
                    client,
                    lb_common::flow::v4_of(&k.dst),
                    port,
                    k.dport,
                    k.proto,
                )
            });
        for (i, set) in sets.iter().enumerate() {
            for way in 0..lb_common::flow::table::WAYS {
                let key = candidates
                    .by_ref()
                    .find(|c| {
                        let h = key_hash(seed, c);
                        c != k && (flow_set(h, 0, n) == *set || flow_set(h, 1, n) == *set)
                    })
                    .expect("a client key hashing to the set");
                flows::put_at(self.h.maps_mut(), *set, way, &key, values[i * 4 + way])
                    .expect("writing a flow slot");
                keys.push(key);
            }
        }
        keys
    }

    /// Flow timeouts, through the planner.
    pub fn set_flow_timeouts(&mut self, t: lb_common::FlowTimeouts) {
        self.model.flow_timeouts = t;
        self.apply();
    }

    pub fn remove_rev_nat(&mut self, k: &FlowKey) {
        self.h.maps_mut().rev_nat.remove(k).expect("rev_nat remove");
    }

    pub fn rev_nat(&mut self, k: &FlowKey) -> Option<RevNatValue> {
        self.h.maps().rev_nat.get(k, 0).ok()
    }

    pub fn rev_nat_entries(&mut self) -> Vec<(FlowKey, RevNatValue)> {
        self.h
            .maps()
            .rev_nat
            .iter()
            .map(|r| r.expect("rev_nat entry"))
            .collect()
    }

    pub fn local_fronts(&mut self, k: &LocalEndpointKey) -> Option<LocalFronts> {
        self.h.maps().local_fronts.get(k, 0).ok()
    }

    pub fn set_local_fronts(&mut self, k: LocalEndpointKey, v: LocalFronts) {
        self.h
            .maps_mut()
            .local_fronts
            .insert(k, v, 0)
            .expect("local_fronts insert");
    }

    pub fn remove_local_fronts(&mut self, k: &LocalEndpointKey) {
        self.h
            .maps_mut()
            .local_fronts
            .remove(k)
            .expect("local_fronts remove");
    }

    pub fn insert_rev_nat(&mut self, k: FlowKey, v: RevNatValue) {
        self.h
            .maps_mut()
            .rev_nat
            .insert(k, v, 0)
            .expect("rev_nat insert");
    }

    /// Makes every flow entry look at least `secs` seconds older (idle
    /// time passing without waiting for it). The stamps are
    /// `CLOCK_MONOTONIC`, which starts at boot: on a machine up for less
    /// than that (a VM of `cargo xtask kernels` runs its tests seconds
    /// after boot) this waits until the clock has got there, and a stamp
    /// younger than `secs` becomes 0, i.e. as old as the machine.
    pub fn age_flows(&mut self, secs: u64) {
        let by = secs * 1_000_000_000;
        while ktime_ns() <= by + 1_000_000_000 {
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        for (k, v) in self.conntrack_entries() {
            self.set_conntrack(
                k,
                ConntrackValue {
                    last_seen_ns: v.last_seen_ns.saturating_sub(by),
                    ..v
                },
            );
        }
        for (k, v) in self.rev_nat_entries() {
            self.insert_rev_nat(
                k,
                RevNatValue {
                    last_seen_ns: v.last_seen_ns.saturating_sub(by),
                    ..v
                },
            );
        }
    }

    pub fn affinity(&mut self, k: AffinityKey) -> Option<AffinityValue> {
        self.h.maps().affinity.get(&k, 0).ok()
    }

    pub fn set_affinity(&mut self, k: AffinityKey, v: AffinityValue) {
        self.h
            .maps_mut()
            .affinity
            .insert(k, v, 0)
            .expect("affinity insert");
    }

    pub fn set_bench_config(&mut self, v: u32) {
        let map = self
            .h
            .ebpf_mut()
            .map_mut(lb_common::bench::CONFIG)
            .expect("bench_config map");
        let mut a: Array<&mut MapData, u32> = Array::try_from(map).expect("bench_config type");
        a.set(0, v, 0).expect("bench config");
    }

    pub fn counts(&mut self) -> Counts {
        self.h.counts().unwrap_or_else(|e| panic!("{e:#}"))
    }

    pub fn traffic(&mut self, map: &str, id: u32) -> (u64, u64) {
        let maps = self.h.maps();
        let a = match map {
            m::SERVICE_STATS => &maps.service_stats,
            m::BACKEND_STATS => &maps.backend_stats,
            other => panic!("{other} holds no traffic counters"),
        };
        let t = sum_traffic(a, id)
            .expect("traffic")
            .unwrap_or_else(|| panic!("{map}: id {id} beyond the counters"));
        (t.packets, t.bytes)
    }

    /// Runs an XDP program of the object on `frame`, arriving on `v0`.
    pub fn run_prog(&self, name: &str, frame: &[u8], repeat: u32) -> Run {
        self.h
            .run_xdp(name, frame, repeat)
            .unwrap_or_else(|e| panic!("{e:#}"))
    }

    pub fn run(&self, frame: &[u8]) -> Run {
        self.run_prog(m::programs::INGRESS, frame, 1)
    }

    pub fn run_egress(&self, frame: &[u8]) -> Run {
        self.try_run_egress(frame).expect("test_run lb_egress")
    }

    pub fn try_run_egress(&self, frame: &[u8]) -> Result<Run, String> {
        self.h
            .run_tc(m::programs::EGRESS, frame)
            .map_err(|e| format!("{e:#}"))
    }

    /// Runs `frame` through `lb_ingress`, asserts the action and that exactly
    /// the wanted outcome was counted, and returns the output frame.
    #[track_caller]
    pub fn expect(&mut self, what: &str, frame: &[u8], action: u32, want: Want) -> Vec<u8> {
        let before = self.counts();
        let r = self.run(frame);
        let d = self.counts().minus(&before);
        assert_eq!(r.action, action, "{what}: action (counts {d:?})");
        assert_eq!(d.c(Counter::IngressPackets), 1, "{what}: ingress_packets");
        match want {
            Want::C(c) => assert_eq!(d.c(c), 1, "{what}: counter {c:?} in {d:?}"),
            Want::D(r) => assert_eq!(d.d(r), 1, "{what}: drop {r:?} in {d:?}"),
            Want::Nothing => {}
        }
        let expected_outcomes = u64::from(want != Want::Nothing);
        assert_eq!(
            d.outcomes(),
            expected_outcomes,
            "{what}: exactly one outcome, got {d:?}"
        );
        r.out
    }

    /// As `expect`, and the frame must come out byte-for-byte unchanged.
    #[track_caller]
    pub fn expect_untouched(&mut self, what: &str, frame: &[u8], action: u32, want: Want) {
        let out = self.expect(what, frame, action, want);
        assert_eq!(out, frame, "{what}: frame changed");
    }
}

/// The message of a caught panic (a random-frame test's failed check).
fn panic_text(e: &(dyn std::any::Any + Send)) -> &str {
    e.downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| e.downcast_ref::<&str>().copied())
        .unwrap_or("(no message)")
}

/// The seed of the random-frame test `test`: `ONEHOP_SEED` (to replay a
/// failure) or the clock; printed.
pub fn random_seed(test: &str) -> u64 {
    let seed = std::env::var("ONEHOP_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(ktime_ns);
    eprintln!("{test} seed {seed} (set ONEHOP_SEED to replay)");
    seed
}

/// A random-frame test's run: `frames` frames from `make` through
/// `lb_ingress`, flows piling up in the tables as they come (nothing is
/// reset between frames). `make` gets the NAT flows of `family` (their
/// reverse entries, up to 200, read again every 5,000 frames); `check`
/// judges every frame the program changed (input, output, action), its
/// failure reported with the seed and the frames. Every frame must end in
/// one of XDP's actions with exactly one outcome counted, and more than one
/// in twenty must have been changed. Returns the counters' change.
pub fn random_frames_through(
    lb: &mut Lb,
    (seed, frames, family): (u64, u64, u8),
    mut make: impl FnMut(&[(FlowKey, RevNatValue)]) -> Vec<u8>,
    check: impl Fn(&[u8], &[u8], u32),
) -> Counts {
    let before = lb.counts();
    let mut replies = Vec::new();
    let mut changed = 0u64;
    for i in 0..frames {
        if i % 5000 == 0 {
            replies = lb
                .rev_nat_entries()
                .into_iter()
                .filter(|(k, _)| k.family == family)
                .take(200)
                .collect();
        }
        let f = make(&replies);
        let r = lb.run(&f);
        assert!(
            [XDP_PASS, XDP_DROP, XDP_TX, XDP_REDIRECT].contains(&r.action),
            "frame {i}: action {}",
            r.action
        );
        if r.out != f {
            changed += 1;
            let judged = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                check(&f, &r.out, r.action);
            }));
            if let Err(e) = judged {
                panic!(
                    "seed {seed} frame {i}: {}\n in: {f:02x?}\nout: {:02x?}",
                    panic_text(&*e),
                    r.out
                );
            }
        }
    }
    let d = lb.counts().minus(&before);
    assert_eq!(d.c(Counter::IngressPackets), frames);
    assert_eq!(
        d.outcomes(),
        frames,
        "every frame exactly one outcome: {d:?}"
    );
    assert!(
        changed > frames / 20,
        "too few frames exercised a rewrite: {changed}"
    );
    d
}

/// `CLOCK_MONOTONIC` in ns: the clock `bpf_ktime_get_ns` reads.
pub fn ktime_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out pointer.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut ts) };
    assert_eq!(rc, 0);
    u64::try_from(ts.tv_sec).expect("time") * 1_000_000_000
        + u64::try_from(ts.tv_nsec).expect("time")
}

pub fn flow(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, p: u8) -> FlowKey {
    FlowKey::v4(src, dst, sport, dport, p)
}
