//! Shared fixture for the data-path tests: a network namespace with veths
//! and permanent neighbours (so `bpf_fib_lookup` succeeds inside
//! `BPF_PROG_TEST_RUN`), the embedded eBPF object loaded without pinning, a
//! standard set of VIPs/services/backends, and helpers to run frames and read
//! counters.
#![allow(dead_code, reason = "each test binary uses a different subset")]

pub mod check;
pub mod netns;
pub mod packet;

use std::collections::BTreeMap;

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, LpmTrie, MapData, PerCpuArray, lpm_trie::Key},
    programs::{SchedClassifier, TestRun as _, TestRunOptions, Xdp},
};
use lb_common::{
    AffinityKey, AffinityValue, BackendValue, Config, ConntrackValue, Counter, DropReason, FlowKey,
    Ipv4Key, RevNatValue, ServiceKey, ServiceValue, SourceRangeData, VipValue, backend_flags,
    bench, maps as m, proto, service_flags, vip_flags,
};

use self::netns::NetNs;

pub const XDP_ABORTED: u32 = 0;
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;
pub const XDP_REDIRECT: u32 = 4;
/// `TC_ACT_UNSPEC` (-1) as the u32 `BPF_PROG_TEST_RUN` reports.
pub const TC_NEXT: u32 = u32::MAX;

pub const NODE_IP: [u8; 4] = [10, 200, 0, 1];
pub const NODE_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
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
/// Owned (SERVICE | ANNOUNCE).
pub const VIP: [u8; 4] = [192, 0, 2, 10];
/// Served but announced by another node (SERVICE only).
pub const VIP_OTHER: [u8; 4] = [192, 0, 2, 20];
pub const NOT_VIP: [u8; 4] = [192, 0, 2, 99];
pub const NAT_MIN: u16 = 61000;
pub const NAT_MAX: u16 = 61999;

pub const LOCAL_A: u32 = 1;
pub const REMOTE_PEER: u32 = 2;
pub const REMOTE_FAR: u32 = 3;
pub const REMOTE_NO_NEIGH: u32 = 4;
pub const LOCAL_B: u32 = 5;

pub const MAGLEV_LEN: u32 = 7;

pub fn backend_value(id: u32) -> BackendValue {
    let (ip, node_ip, port, local) = match id {
        LOCAL_A => ([10, 244, 0, 11], NODE_IP, 8080, true),
        REMOTE_PEER => ([10, 244, 1, 12], PEER_NODE, 8080, false),
        REMOTE_FAR => ([10, 244, 2, 13], FAR_NODE, 9090, false),
        REMOTE_NO_NEIGH => ([10, 244, 3, 14], NO_NEIGH_NODE, 8080, false),
        LOCAL_B => ([10, 244, 0, 15], NODE_IP, 8081, true),
        _ => panic!("no backend {id}"),
    };
    let flags = backend_flags::VALID | if local { backend_flags::LOCAL } else { 0 };
    BackendValue {
        ip,
        node_ip,
        port,
        flags,
        _pad: 0,
    }
}

/// The standard services: (id, port, proto, backends, flags).
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
pub const AFFINITY_TIMEOUT_S: u32 = 10;

/// Builds the namespace every test runs in:
/// `v0` (10.200.0.1/24, `NODE_MAC`) with permanent neighbours for the peer node
/// and the client, `v2` (10.201.0.1/24) with one for the far node,
/// forwarding on (`bpf_fib_lookup` refuses to answer without it).
pub fn namespace() -> NetNs {
    let ns = NetNs::new();
    let mac = |m: [u8; 6]| m.map(|b| format!("{b:02x}")).join(":");
    let ip = |a: [u8; 4]| a.map(|b| b.to_string()).join(".");
    ns.ip(&["link", "set", "lo", "up"]);
    ns.ip(&[
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
    ns.ip(&[
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
        ns.ip(&["link", "set", dev, "up"]);
    }
    ns.ip(&["addr", "add", "10.200.0.1/24", "dev", "v0"]);
    ns.ip(&["addr", "add", "10.201.0.1/24", "dev", "v2"]);
    for (addr, m, dev) in [
        (PEER_NODE, PEER_NODE_MAC, "v0"),
        (CLIENT, CLIENT_MAC, "v0"),
        (FAR_NODE, FAR_NODE_MAC, "v2"),
    ] {
        ns.ip(&[
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
    ns.sysctl("net/ipv4/ip_forward", "1");
    ns
}

/// Runs `f` with a freshly loaded data path, configured with the standard
/// scenario, on a thread inside a fresh namespace.
pub fn with_lb(f: impl FnOnce(&mut Lb) + Send) {
    let ns = namespace();
    ns.run(|| {
        let mut lb = Lb::load();
        lb.scenario();
        f(&mut lb);
    });
}

/// [`with_lb`] on the bench object (the benchmark programs around the same
/// ingress code) instead of the product object.
pub fn with_bench_lb(f: impl FnOnce(&mut Lb) + Send) {
    let ns = namespace();
    ns.run(|| {
        let mut lb = Lb::load_bench();
        lb.scenario();
        f(&mut lb);
    });
}

/// The bench object lb-userspace's build script builds beside the product
/// object; the agent's binary does not embed it, the tests include it here.
static BENCH_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-ebpf-bench"));

pub struct Lb {
    pub ebpf: Ebpf,
    pub ifindex: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Want {
    C(Counter),
    D(DropReason),
    /// Only `IngressPackets` grows (config not ready).
    Nothing,
}

/// Counter and drop totals over all CPUs.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Counts {
    pub counters: BTreeMap<Counter, u64>,
    pub drops: BTreeMap<DropReason, u64>,
}

impl Counts {
    pub fn minus(&self, before: &Counts) -> Counts {
        Counts {
            counters: self
                .counters
                .iter()
                .map(|(k, v)| (*k, v - before.counters[k]))
                .collect(),
            drops: self
                .drops
                .iter()
                .map(|(k, v)| (*k, v - before.drops[k]))
                .collect(),
        }
    }
    pub fn c(&self, c: Counter) -> u64 {
        self.counters[&c]
    }
    pub fn d(&self, d: DropReason) -> u64 {
        self.drops[&d]
    }
    /// Sum of the counters that are final outcomes of one ingress packet,
    /// plus all drops: equals `IngressPackets` once the config is ready.
    pub fn outcomes(&self) -> u64 {
        let extra = [
            Counter::IngressPackets,
            Counter::AffinityHit,
            Counter::FlowRepicked,
            Counter::EgressPackets,
            Counter::EgressReply,
        ];
        self.counters
            .iter()
            .filter(|(k, _)| !extra.contains(k))
            .map(|(_, v)| v)
            .sum::<u64>()
            + self.drops.values().sum::<u64>()
    }
}

pub struct Run {
    pub action: u32,
    pub out: Vec<u8>,
}

impl Lb {
    /// Loads the embedded product object with small maps (tests run in
    /// parallel).
    pub fn load() -> Self {
        let object = lb_userspace::ebpf::object().expect("embedded eBPF object");
        Self::load_object(
            object,
            &[m::programs::INGRESS, m::programs::PASS],
            Some(m::programs::EGRESS),
        )
    }

    /// Loads the bench object likewise (it has no TC program).
    pub fn load_bench() -> Self {
        assert!(
            !BENCH_OBJECT.is_empty(),
            "the bench eBPF object is an empty stub (bpf-linker missing?)"
        );
        Self::load_object(
            BENCH_OBJECT,
            &[
                m::programs::INGRESS,
                m::programs::PASS,
                bench::programs::INGRESS,
                bench::programs::RESTORE_ONLY,
            ],
            None,
        )
    }

    fn load_object(object: &[u8], xdp: &[&str], tc: Option<&str>) -> Self {
        let mut ebpf = EbpfLoader::new()
            .map_max_entries(m::MAGLEV, 1 << 16)
            .map_max_entries(m::BACKENDS, 1024)
            .map_max_entries(m::SERVICES, 1024)
            .map_max_entries(m::VIPS, 1024)
            .map_max_entries(m::CONNTRACK, 1 << 16)
            .map_max_entries(m::REV_NAT, 1 << 16)
            .map_max_entries(m::AFFINITY, 4096)
            .map_max_entries(m::SRC_RANGES, 1024)
            .map_max_entries(m::SERVICE_STATS, 1024)
            .map_max_entries(m::BACKEND_STATS, 1024)
            .load(object)
            .expect("load eBPF object");
        for &name in xdp {
            let p: &mut Xdp = ebpf.program_mut(name).expect(name).try_into().expect("xdp");
            p.load().unwrap_or_else(|e| panic!("load {name}: {e:?}"));
        }
        if let Some(name) = tc {
            let p: &mut SchedClassifier =
                ebpf.program_mut(name).expect(name).try_into().expect("tc");
            p.load().unwrap_or_else(|e| panic!("load {name}: {e:?}"));
        }
        Self {
            ebpf,
            ifindex: netns::ifindex("v0"),
        }
    }

    pub fn config(&mut self) -> Config {
        Config {
            node_ip: NODE_IP,
            ifindex: self.ifindex,
            mac: NODE_MAC,
            _pad0: [0; 2],
            nat_port_min: NAT_MIN,
            nat_port_max: NAT_MAX,
            ready: 1,
        }
    }

    pub fn set_config(&mut self, c: Config) {
        let mut a: Array<&mut MapData, Config> = self.map_mut(m::CONFIG);
        a.set(0, c, 0).expect("config");
    }

    fn map_mut<'a, T: TryFrom<&'a mut aya::maps::Map>>(&'a mut self, name: &str) -> T
    where
        T::Error: std::fmt::Debug,
    {
        let map = self
            .ebpf
            .map_mut(name)
            .unwrap_or_else(|| panic!("map {name}"));
        T::try_from(map).unwrap_or_else(|e| panic!("map {name}: {e:?}"))
    }

    pub fn scenario(&mut self) {
        let c = self.config();
        self.set_config(c);
        self.vip(VIP, vip_flags::SERVICE | vip_flags::ANNOUNCE);
        self.vip(VIP_OTHER, vip_flags::SERVICE);
        self.vip(NODE_IP, vip_flags::NODE);
        for id in [LOCAL_A, REMOTE_PEER, REMOTE_FAR, REMOTE_NO_NEIGH, LOCAL_B] {
            self.backend(id, backend_value(id));
        }
        for &(id, port, p, backends, flags) in SERVICES {
            self.service_with(VIP, port, p, id, backends, flags);
        }
        self.service_with(VIP_OTHER, 80, proto::TCP, 11, &[LOCAL_A], 0);
        self.src_range(7, [10, 200, 0, 0], 26);
    }

    /// Installs a service whose Maglev table cycles through `backends`.
    pub fn service_with(
        &mut self,
        vip: [u8; 4],
        port: u16,
        p: u8,
        id: u32,
        backends: &[u32],
        flags: u32,
    ) {
        let offset = id * 100;
        let len = if backends.is_empty() { 0 } else { MAGLEV_LEN };
        let table: Vec<u32> = (0..len as usize)
            .map(|i| backends[i % backends.len()])
            .collect();
        self.maglev(offset, &table);
        self.service(
            ServiceKey {
                vip,
                port,
                proto: p,
                _pad: 0,
            },
            ServiceValue {
                id,
                maglev_offset: offset,
                maglev_len: len,
                flags,
                affinity_timeout_s: if flags & service_flags::AFFINITY != 0 {
                    AFFINITY_TIMEOUT_S
                } else {
                    0
                },
                _pad: 0,
            },
        );
    }

    pub fn vip(&mut self, addr: [u8; 4], flags: u32) {
        let mut h: HashMap<&mut MapData, Ipv4Key, VipValue> = self.map_mut(m::VIPS);
        h.insert(Ipv4Key { addr }, VipValue { flags }, 0)
            .expect("vip");
    }

    pub fn service(&mut self, k: ServiceKey, v: ServiceValue) {
        let mut h: HashMap<&mut MapData, ServiceKey, ServiceValue> = self.map_mut(m::SERVICES);
        h.insert(k, v, 0).expect("service");
    }

    pub fn backend(&mut self, id: u32, v: BackendValue) {
        let mut a: Array<&mut MapData, BackendValue> = self.map_mut(m::BACKENDS);
        a.set(id, v, 0).expect("backend");
    }

    pub fn maglev(&mut self, offset: u32, table: &[u32]) {
        let mut a: Array<&mut MapData, u32> = self.map_mut(m::MAGLEV);
        for (i, id) in table.iter().enumerate() {
            a.set(offset + u32::try_from(i).expect("slot"), id, 0)
                .expect("maglev");
        }
    }

    pub fn src_range(&mut self, service_id: u32, addr: [u8; 4], prefix: u8) {
        let mut t: LpmTrie<&mut MapData, SourceRangeData, u32> = self.map_mut(m::SRC_RANGES);
        let key = Key::new(
            lb_common::source_range_prefixlen(prefix),
            SourceRangeData {
                service_id: service_id.to_be_bytes(),
                addr,
            },
        );
        t.insert(&key, 1, 0).expect("src range");
    }

    pub fn conntrack(&mut self, k: &FlowKey) -> Option<ConntrackValue> {
        let h: HashMap<&mut MapData, FlowKey, ConntrackValue> = self.map_mut(m::CONNTRACK);
        h.get(k, 0).ok()
    }

    pub fn conntrack_len(&mut self) -> usize {
        let h: HashMap<&mut MapData, FlowKey, ConntrackValue> = self.map_mut(m::CONNTRACK);
        h.keys().count()
    }

    pub fn set_conntrack(&mut self, k: FlowKey, v: ConntrackValue) {
        let mut h: HashMap<&mut MapData, FlowKey, ConntrackValue> = self.map_mut(m::CONNTRACK);
        h.insert(k, v, 0).expect("conntrack insert");
    }

    pub fn remove_rev_nat(&mut self, k: &FlowKey) {
        let mut h: HashMap<&mut MapData, FlowKey, RevNatValue> = self.map_mut(m::REV_NAT);
        h.remove(k).expect("rev_nat remove");
    }

    pub fn rev_nat(&mut self, k: &FlowKey) -> Option<RevNatValue> {
        let h: HashMap<&mut MapData, FlowKey, RevNatValue> = self.map_mut(m::REV_NAT);
        h.get(k, 0).ok()
    }

    pub fn rev_nat_entries(&mut self) -> Vec<(FlowKey, RevNatValue)> {
        let h: HashMap<&mut MapData, FlowKey, RevNatValue> = self.map_mut(m::REV_NAT);
        h.iter().map(|r| r.expect("rev_nat entry")).collect()
    }

    pub fn insert_rev_nat(&mut self, k: FlowKey, v: RevNatValue) {
        let mut h: HashMap<&mut MapData, FlowKey, RevNatValue> = self.map_mut(m::REV_NAT);
        h.insert(k, v, 0).expect("rev_nat insert");
    }

    pub fn affinity(&mut self, k: AffinityKey) -> Option<AffinityValue> {
        let h: HashMap<&mut MapData, AffinityKey, AffinityValue> = self.map_mut(m::AFFINITY);
        h.get(&k, 0).ok()
    }

    pub fn set_affinity(&mut self, k: AffinityKey, v: AffinityValue) {
        let mut h: HashMap<&mut MapData, AffinityKey, AffinityValue> = self.map_mut(m::AFFINITY);
        h.insert(k, v, 0).expect("affinity insert");
    }

    pub fn set_bench_config(&mut self, v: u32) {
        let mut a: Array<&mut MapData, u32> = self.map_mut(bench::CONFIG);
        a.set(0, v, 0).expect("bench config");
    }

    pub fn counts(&mut self) -> Counts {
        let c: PerCpuArray<&mut MapData, u64> = self.map_mut(m::COUNTERS);
        let counters = Counter::ALL
            .iter()
            .map(|&k| (k, c.get(&(k as u32), 0).expect("counter").iter().sum()))
            .collect();
        let d: PerCpuArray<&mut MapData, u64> = self.map_mut(m::DROPS);
        let drops = DropReason::ALL
            .iter()
            .map(|&k| (k, d.get(&(k as u32), 0).expect("drop").iter().sum()))
            .collect();
        Counts { counters, drops }
    }

    pub fn traffic(&mut self, map: &str, id: u32) -> (u64, u64) {
        let a: PerCpuArray<&mut MapData, lb_common::TrafficCounter> = self.map_mut(map);
        a.get(&id, 0)
            .expect("traffic")
            .iter()
            .fold((0, 0), |(p, b), t| (p + t.packets, b + t.bytes))
    }

    /// Runs an XDP program of the object on `frame`, arriving on `v0`.
    pub fn run_prog(&self, name: &str, frame: &[u8], repeat: u32) -> Run {
        let p: &Xdp = self
            .ebpf
            .program(name)
            .expect(name)
            .try_into()
            .expect("xdp");
        let len = u32::try_from(frame.len()).expect("frame length");
        // struct xdp_md: data, data_end, data_meta, ingress_ifindex,
        // rx_queue_index, egress_ifindex.
        let md: [u32; 6] = [0, len, 0, self.ifindex, 0, 0];
        let ctx: Vec<u8> = md.iter().flat_map(|w| w.to_ne_bytes()).collect();
        let mut out = vec![0u8; frame.len() + 512];
        let r = p
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                ctx_in: Some(&ctx),
                repeat,
                ..TestRunOptions::default()
            })
            .unwrap_or_else(|e| panic!("test_run {name}: {e:?}"));
        out.truncate(r.data_size_out as usize);
        Run {
            action: r.return_value,
            out,
        }
    }

    pub fn run(&self, frame: &[u8]) -> Run {
        self.run_prog(m::programs::INGRESS, frame, 1)
    }

    pub fn run_egress(&self, frame: &[u8]) -> Run {
        self.try_run_egress(frame).expect("test_run lb_egress")
    }

    pub fn try_run_egress(&self, frame: &[u8]) -> Result<Run, String> {
        let p: &SchedClassifier = self
            .ebpf
            .program(m::programs::EGRESS)
            .expect("egress")
            .try_into()
            .expect("tc");
        let mut out = vec![0u8; frame.len() + 512];
        let r = p
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                ..TestRunOptions::default()
            })
            .map_err(|e| format!("{e:?}"))?;
        out.truncate(r.data_size_out as usize);
        Ok(Run {
            action: r.return_value,
            out,
        })
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
    FlowKey {
        src,
        dst,
        sport,
        dport,
        proto: p,
        _pad: [0; 3],
    }
}
