//! The data path under test: the embedded object loaded by the test-run
//! harness (`onehop_testrun`, shared with the packet tests; nothing attached,
//! nothing pinned) inside the bench's namespace, its maps provisioned
//! through the planner and the map writer from a services model of three
//! target services plus filler services, and the proof that every iteration
//! of a run took the intended path.

use std::{
    collections::HashSet,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::AsFd as _,
};

use anyhow::{Context as _, Result, bail, ensure};
use aya::maps::{Array, IterableMap as _, MapData, PerCpuArray, PerCpuValues};
use lb_common::{
    BackendValue, ConntrackValue, Counter, DropReason, FlowKey, FlowTimeouts, HalfOpenBudget,
    HalfOpenGuard, RevNatValue, bench as b,
    flow::{
        addr_v4,
        table::{self, FlowSet, FlowSlot},
        tcp_state,
    },
    hash::{NAT_PROBES, flow_hash, nat_probe},
    maps as m, proto,
};
use lb_userspace::dataplane::flows;
use lb_userspace::plan::{
    maglev::{MaglevSize, even_size, table_size},
    model::{
        Backend, Cidr, DirectReturn, NatPorts, NodeServices, Protocol, Service, ServicePort,
        SessionAffinity,
    },
    state::Node,
};
use onehop_testrun::{
    Counts, Harness, MapSizes,
    frame::{Arp, Pkt, padded},
    frame6::{Frame6, l4_verifies6, tcp6},
};

use crate::batch;

pub use onehop_testrun::{XDP_DROP, XDP_PASS, XDP_TX};

/// The new-flow guard during the runs: a new-flow run opens 64,000 flows
/// that never finish their handshake, more than the default guard lets
/// wait (an eighth of the table), so it is sized above a run and its
/// bucket refilled before each: every new flow still draws its token (the
/// cost is measured) and none is refused. `syn_flood_refused` measures the
/// refusal with an empty bucket.
pub const RUN_GUARD: HalfOpenGuard = HalfOpenGuard::with_max(1 << 20, FlowTimeouts::DEFAULT);

pub const NODE_IP: [u8; 4] = [10, 200, 0, 1];
pub const NODE_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
pub const CLIENT: [u8; 4] = [10, 200, 0, 50];
pub const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x50];
pub const PEER_NODE: [u8; 4] = [10, 200, 0, 2];
pub const PEER_NODE_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
/// A second peer node on the segment, the one node whose agent the model
/// vouches for (`DirectReturn::Nodes`): its backends are reached by direct
/// server return, the first peer's by full NAT, in the same run.
pub const DIRECT_NODE: [u8; 4] = [10, 200, 0, 3];
pub const DIRECT_NODE_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x03];
/// The node's segment (`v0`'s subnet): direct return only reaches nodes in it.
pub const SEGMENT: &str = "10.200.0.0/24";
/// Its IPv6 subnet (`NODE_IP6`'s, on `v0`).
pub const SEGMENT6: &str = "2001:db8::/64";
/// The target services' VIP (announced: ARP is answered for it).
pub const VIP: [u8; 4] = [192, 0, 2, 10];
/// Port of the target service whose backends all run on this node.
pub const LOCAL_PORT: u16 = 80;
/// Port of the target service whose backends all run on the peer node.
pub const REMOTE_PORT: u16 = 81;
/// Port of the target service whose backends all run on the direct-return
/// node.
pub const DIRECT_PORT: u16 = 82;
pub const NOT_VIP: [u8; 4] = [192, 0, 2, 99];
/// The node's, the client's and the IPv6 target service's addresses.
pub const NODE_IP6: [u8; 16] = v6(0x2001_0db8_0000_0000_0000_0000_0000_0001);
pub const CLIENT6: [u8; 16] = v6(0x2001_0db8_0000_0000_0000_0000_0000_0050);
pub const PEER_NODE6: [u8; 16] = v6(0x2001_0db8_0000_0000_0000_0000_0000_0002);
pub const VIP6: [u8; 16] = v6(0x2001_0db8_0000_0000_0000_0000_0000_0010);
/// Port of the IPv6 target service (`[VIP6]`) whose backends all run on
/// this node.
pub const LOCAL6_PORT: u16 = 80;
/// Port of the IPv6 target service whose pods all run on the peer node
/// (`PEER_NODE6`, reached by full NAT).
pub const REMOTE6_PORT: u16 = 81;
/// Port of the IPv6 target service whose pods all run on the direct-return
/// node (`DIRECT_NODE6`, the same node as `DIRECT_NODE`).
pub const DIRECT6_PORT: u16 = 82;
pub const DIRECT_NODE6: [u8; 16] = v6(0x2001_0db8_0000_0000_0000_0000_0000_0003);
pub const NOT_VIP6: [u8; 16] = v6(0x2001_0db8_0000_0000_0000_0000_0000_0099);
/// The pods of the IPv6 target: `fd00:244::11` and up.
const POD6_BASE: u128 = 0xfd00_0244_0000_0000_0000_0000_0000_0000;
/// Where the IPv6 fillers' VIPs start (`2001:db8:64::`).
const FILLER6_BASE: u128 = 0x2001_0db8_0064_0000_0000_0000_0000_0000;
/// Where the IPv6 fillers' pods start (`fd00:128::`).
const FILLER6_PODS: u128 = 0xfd00_0128_0000_0000_0000_0000_0000_0000;

const fn v6(a: u128) -> [u8; 16] {
    a.to_be_bytes()
}
/// Client ports of the three pre-established flows: below the bench's
/// source-port sequence (1024..=65535), so new-flow runs never reuse them.
pub const EST_LOCAL_PORT: u16 = 900;
pub const EST_REMOTE_PORT: u16 = 901;
pub const EST_DIRECT_PORT: u16 = 902;
pub const EST_LOCAL6_PORT: u16 = 903;
pub const EST_DIRECT6_PORT: u16 = 904;
pub const EST_REMOTE6_PORT: u16 = 905;
/// NAT source ports for remote flows: as wide as possible (see README).
pub const NAT_MIN: u16 = 1024;
pub const NAT_MAX: u16 = 65535;
/// Every frame is padded to the Ethernet minimum, as from a wire: one
/// `bench_restore_only` measurement is then the restore cost of all.
pub const FRAME_LEN: usize = 60;

/// Backends per filler service, and per target service. The targets have
/// more so that 64,000 new remote flows per run spread over enough
/// (backend, NAT port) pairs: at most ~6% of each backend's ports are taken
/// by the end of a run (see `simulate_nat` and the README).
pub const FILLER_BACKENDS: u32 = 3;
pub const TARGET_BACKENDS: u32 = 16;
/// The six target services (local, remote by full NAT, remote by direct
/// return; the same three over IPv6).
pub const TARGETS: u32 = 6;

/// Source ports of the wrapper's new-flow sequence (1024..=65535; lb-ebpf
/// `bench.rs`).
pub const SEQ_PORTS: u32 = 65536 - 1024;

/// Result of [`Lb::simulate_nat`].
#[derive(Clone, Copy, Debug, Default)]
pub struct NatSim {
    pub flows: u64,
    pub probes: u64,
    pub max_probes: u32,
    pub exhausted: u32,
}

/// Map sizes chosen at load time (reported in the output).
#[derive(Clone, Copy, Debug)]
pub struct Sizes {
    pub max_services: u32,
    pub maglev_slots: u32,
    pub backends: u32,
    pub table_target: u32,
    pub table_filler: u32,
}

impl Sizes {
    /// Exactly what the planner needs for `max_services` services (the
    /// targets included).
    pub fn for_services(max_services: u32) -> Self {
        let table_target = table_size(bench_size(TARGET_BACKENDS), TARGET_BACKENDS as usize);
        let table_filler = table_size(bench_size(FILLER_BACKENDS), FILLER_BACKENDS as usize);
        let fillers = max_services.saturating_sub(TARGETS);
        Self {
            max_services,
            maglev_slots: TARGETS * table_target + fillers * table_filler,
            backends: TARGETS * TARGET_BACKENDS + fillers * FILLER_BACKENDS,
            table_target,
            table_filler,
        }
    }
}

/// The table size of a service of `backends` backends here: the size that
/// followed the backend count before services had a fixed default, so that
/// the figures stay comparable with earlier runs (and 100,000 services fit
/// in 51 million slots, not 102 million).
fn bench_size(backends: u32) -> MaglevSize {
    MaglevSize::new(even_size(backends as usize)).unwrap_or_default()
}

/// The services model of `n` services: the three IPv4 targets on `VIP`
/// (ports [`LOCAL_PORT`], [`REMOTE_PORT`] and [`DIRECT_PORT`]) and the IPv6
/// one on `[VIP6]:LOCAL6_PORT`, then fillers, each on its own VIP
/// (announced) and port with three remote backends of its own (full NAT,
/// as the remote target's): one in two IPv4 (100.64.0.0/10 + i), the
/// others IPv6 (`2001:db8:64::` + i), so each family's maps hold about
/// half of the services. Direct
/// return is on for [`DIRECT_NODE`] only, as the Kubernetes source turns it
/// on for the nodes whose agent is live: the planner sets
/// `config_flags::DIRECT_RETURN`, and the data path then serves every case
/// as it would in such a cluster (the VIP is announced here, so the flag
/// changes no other case's path).
pub fn model(n: u32) -> NodeServices {
    let vip = Ipv4Addr::from(VIP);
    let service = |name: String, vip: IpAddr, port: u16, backends: Vec<Backend>| Service {
        name,
        vip,
        ports: vec![ServicePort {
            port,
            protocol: Protocol::Tcp,
            target_port: 8080,
        }],
        session_affinity: SessionAffinity::None,
        source_ranges: Vec::new(),
        maglev_table_size: Some(bench_size(
            u32::try_from(backends.len()).unwrap_or(u32::MAX),
        )),
        draining: Vec::new(),
        backend_ports: std::collections::BTreeMap::new(),
        backends,
    };
    let target = |third: u8, node: [u8; 4]| -> Vec<Backend> {
        (0..TARGET_BACKENDS)
            .map(|j| {
                let [.., last] = (11 + j).to_be_bytes();
                Backend {
                    ip: Ipv4Addr::new(10, 244, third, last).into(),
                    node_ip: Ipv4Addr::from(node).into(),
                }
            })
            .collect()
    };
    // The IPv6 targets' pods: `fd00:244:<n>::11` and up.
    let target6 = |n: u128, node: [u8; 16]| -> Vec<Backend> {
        (0..TARGET_BACKENDS)
            .map(|j| Backend {
                ip: Ipv6Addr::from(POD6_BASE + (n << 80) + 11 + u128::from(j)).into(),
                node_ip: Ipv6Addr::from(node).into(),
            })
            .collect()
    };
    let mut services = vec![
        service(
            "target-local".into(),
            vip.into(),
            LOCAL_PORT,
            target(0, NODE_IP),
        ),
        service(
            "target-remote".into(),
            vip.into(),
            REMOTE_PORT,
            target(1, PEER_NODE),
        ),
        service(
            "target-direct".into(),
            vip.into(),
            DIRECT_PORT,
            target(2, DIRECT_NODE),
        ),
        service(
            "target-local6".into(),
            Ipv6Addr::from(VIP6).into(),
            LOCAL6_PORT,
            target6(0, NODE_IP6),
        ),
        service(
            "target-direct6".into(),
            Ipv6Addr::from(VIP6).into(),
            DIRECT6_PORT,
            target6(1, DIRECT_NODE6),
        ),
        service(
            "target-remote6".into(),
            Ipv6Addr::from(VIP6).into(),
            REMOTE6_PORT,
            target6(2, PEER_NODE6),
        ),
    ];
    let mut announce = std::collections::BTreeSet::from([vip.into(), Ipv6Addr::from(VIP6).into()]);
    for i in TARGETS..n {
        let (filler_vip, port, backends) = filler(i);
        services.push(service(format!("filler-{i}"), filler_vip, port, backends));
        announce.insert(filler_vip);
    }
    NodeServices {
        node_ip: Some(Ipv4Addr::from(NODE_IP)),
        node_ip6: Some(Ipv6Addr::from(NODE_IP6)),
        nat_ports: NatPorts {
            min: NAT_MIN,
            max: NAT_MAX,
        },
        flow_timeouts: lb_common::FlowTimeouts::DEFAULT,
        maglev_table_size: lb_userspace::plan::model::MaglevSize::DEFAULT,
        direct_return: DirectReturn::Nodes(std::collections::BTreeSet::from([
            IpAddr::from(DIRECT_NODE),
            IpAddr::from(DIRECT_NODE6),
        ])),
        announce,
        services,
    }
}

/// Filler `i`: its VIP, port and backends (see [`model`]).
fn filler(i: u32) -> (IpAddr, u16, Vec<Backend>) {
    let port = 80 + u16::try_from(i % 8).unwrap_or(0);
    let ipv6 = i % 2 == 1;
    let vip: IpAddr = if ipv6 {
        Ipv6Addr::from(FILLER6_BASE + u128::from(i)).into()
    } else {
        Ipv4Addr::from(u32::from(Ipv4Addr::new(100, 64, 0, 0)) + i).into()
    };
    let backends = (0..FILLER_BACKENDS)
        .map(|j| {
            let k = (i - TARGETS) * FILLER_BACKENDS + j;
            let [_, b1, b2, b3] = k.to_be_bytes();
            if ipv6 {
                Backend {
                    ip: Ipv6Addr::from(FILLER6_PODS + u128::from(k)).into(),
                    node_ip: Ipv6Addr::from(PEER_NODE6).into(),
                }
            } else {
                Backend {
                    ip: Ipv4Addr::new(10, 128 + b1, b2, b3).into(),
                    node_ip: Ipv4Addr::from(PEER_NODE).into(),
                }
            }
        })
        .collect();
    (vip, port, backends)
}

pub struct Lb {
    h: Harness,
    cpu: usize,
    pub sizes: Sizes,
    bench_config: Array<MapData, u32>,
    bench_seq: PerCpuArray<MapData, u32>,
    bench_scratch: PerCpuArray<MapData, [u8; b::SCRATCH_LEN]>,
}

pub const PROGRAMS: [&str; 5] = [
    m::programs::PASS,
    m::programs::INGRESS,
    b::programs::INGRESS,
    b::programs::RESTORE_ONLY,
    b::programs::FLOW_FLOOR,
];

impl Lb {
    /// Loads the object sized for `sizes` on a thread inside the namespace
    /// (interface `v0`), pinned to `cpu`.
    pub fn load(object: &[u8], sizes: Sizes, cpu: usize) -> Result<Self> {
        ensure!(
            sizes.max_services >= TARGETS,
            "at least {TARGETS} services: the target services"
        );
        ensure!(
            sizes.max_services < m::MAX_SERVICES.min(m::MAX_VIPS),
            "{} services do not fit the services/vips maps",
            sizes.max_services
        );
        let map_sizes = MapSizes {
            maglev_slots: sizes.maglev_slots,
            backends: sizes.backends,
            ..MapSizes::default()
        };
        let node = Node {
            ip: Ipv4Addr::from(NODE_IP),
            ip6: Some(Ipv6Addr::from(NODE_IP6)),
            ifindex: onehop_testrun::ifindex("v0")?,
            mac: NODE_MAC,
            hash_seed: lb_common::hash::PUBLIC_SEED,
            segment: Some(Cidr::parse(SEGMENT).map_err(anyhow::Error::msg)?),
            segment6: Some(Cidr::parse(SEGMENT6).map_err(anyhow::Error::msg)?),
        };
        let mut h = Harness::load(object, &map_sizes, node)?;
        for name in PROGRAMS {
            ensure!(
                h.ebpf_mut().program(name).is_some(),
                "no program {name} in the object"
            );
        }
        let mut take = |name: &str| {
            h.ebpf_mut()
                .take_map(name)
                .with_context(|| format!("no map {name} in the object"))
        };
        let bench_config = Array::try_from(take(b::CONFIG)?).context("bench_config")?;
        let bench_seq = PerCpuArray::try_from(take(b::SEQ)?).context("bench_seq")?;
        let bench_scratch = PerCpuArray::try_from(take(b::SCRATCH)?).context("bench_scratch")?;
        Ok(Self {
            h,
            cpu,
            sizes,
            bench_config,
            bench_seq,
            bench_scratch,
        })
    }

    /// Provisions `services` services ([`model`]) through the planner and
    /// the map writer, as the agent would write them.
    pub fn provision(&mut self, services: u32) -> Result<()> {
        ensure!(
            services <= self.sizes.max_services,
            "maps sized for fewer services"
        );
        self.h.apply(&model(services))?;
        let state = self.h.state();
        let planned = state.services.len() + state.services6.len();
        ensure!(
            planned == services as usize,
            "{planned} services planned, {services} wanted"
        );
        self.set_guard(RUN_GUARD)
    }

    /// The new-flow guard in `config` (the planner's other fields kept).
    pub fn set_guard(&mut self, g: HalfOpenGuard) -> Result<()> {
        let config = self.h.state().config.with_half_open(g);
        lb_userspace::dataplane::writer::set_config(self.h.maps_mut(), config)
    }

    /// The guard's bucket: fresh (`None`: filled by the next draw) or
    /// holding `tokens` with no refill due.
    pub fn set_bucket(&mut self, tokens: Option<u64>) -> Result<()> {
        let bucket = match tokens {
            None => HalfOpenBudget::default(),
            Some(tokens) => HalfOpenBudget {
                tokens,
                refilled_ns: u64::MAX,
            },
        };
        let map = self
            .h
            .ebpf_mut()
            .map_mut("half_open")
            .context("no map half_open")?;
        let mut a: Array<&mut MapData, HalfOpenBudget> =
            Array::try_from(map).context("half_open")?;
        a.set(0, bucket, 0).context("half_open")
    }

    /// Fills every slot of the flow table with a half-open local flow of
    /// another client (10.201.0.0/16) seen just now, so that every new
    /// flow finds its two sets full, classifies all their slots and
    /// replaces the oldest unproven flow (`flow_evicted`): the most a new
    /// flow's claim can cost. The fillers are written set by set, not each
    /// into its own hash's sets (a full table cannot be reached that way):
    /// only their state and stamps matter to a claim, and no run looks
    /// them up. (A local flow has no `rev_nat` entry: see lb-ebpf's
    /// `local`.)
    pub fn fill_flows(&mut self) -> Result<()> {
        let maps = self.h.maps();
        let sets = maps.flow_sets();
        let seed = maps.config()?.hash_seed;
        let now = lb_userspace::dataplane::maps::monotonic_ns()?;
        let pod = addr_v4(NODE_IP);
        let ct = ConntrackValue::new(0, pod, 0, 0, 0, tcp_state::SYN_SENT, now);
        let mut all = Vec::with_capacity(sets as usize);
        let mut n = 0u32;
        for set in 0..sets {
            let mut s = FlowSet::default();
            for (word, slot) in s.words.iter_mut().zip(&mut s.slots) {
                let [_, _, a, b] = (n / 60_000).to_be_bytes();
                let port = u16::try_from(1024 + n % 60_000).context("port")?;
                let key = FlowKey::v4([10, 201, a, b], VIP, port, LOCAL_PORT, proto::TCP);
                *slot = FlowSlot { key, value: ct };
                *word = table::word(table::key_hash(seed, &key), 4, table::slot_state::READY);
                n += 1;
            }
            all.push((set, s));
        }
        batch::fill(maps.conntrack.map().fd().as_fd(), &all).context("filling conntrack")
    }

    /// The remote target's Maglev table and the backends it names.
    fn remote_target(&self) -> Result<(Vec<u32>, std::collections::HashMap<u32, BackendValue>)> {
        let table = self.h.table(Ipv4Addr::from(VIP), REMOTE_PORT, proto::TCP);
        ensure!(!table.is_empty(), "the remote target has no Maglev table");
        let backends = table
            .iter()
            .map(|id| {
                let b = self.h.state().backends.get(id).copied();
                b.map(|b| (*id, b))
                    .with_context(|| format!("backend {id} of the remote target"))
            })
            .collect::<Result<_>>()?;
        Ok((table, backends))
    }

    /// Replays, in userspace, the NAT port claims the next `repeat` new
    /// remote flows will make (same source-port sequence, flow hash, Maglev
    /// table and probe rule as the data path, starting from the current
    /// `rev_nat` keys): how many probes they need and how many would find
    /// all probed ports taken.
    pub fn simulate_nat(&self, repeat: u32) -> Result<NatSim> {
        let seq = *self
            .bench_seq
            .get(&0, 0)
            .context("bench_seq")?
            .get(self.cpu)
            .context("bench_seq of the bench CPU")?;
        let mut taken: HashSet<FlowKey> = self
            .h
            .maps()
            .rev_nat
            .keys()
            .collect::<Result<_, _>>()
            .context("rev_nat keys")?;
        let (table, backends) = self.remote_target()?;
        let size = u32::from(NAT_MAX) - u32::from(NAT_MIN) + 1;
        let len = u32::try_from(table.len()).context("table")?;
        let mut sim = NatSim::default();
        for k in 1..=repeat {
            let n = seq.wrapping_add(k);
            let sport = u16::try_from(1024 + n % SEQ_PORTS).context("port")?;
            let h = flow_hash(
                lb_common::hash::PUBLIC_SEED,
                CLIENT,
                VIP,
                sport,
                REMOTE_PORT,
                proto::TCP,
            );
            let b = backends[&table[(h % len) as usize]];
            let claimed = (0..NAT_PROBES).find_map(|i| {
                let port = u16::try_from(u32::from(NAT_MIN) + nat_probe(h, i, size)).ok()?;
                let key = FlowKey::v4(b.ip, NODE_IP, b.port, port, proto::TCP);
                taken.insert(key).then_some(i + 1)
            });
            match claimed {
                Some(probes) => {
                    sim.flows += 1;
                    sim.probes += u64::from(probes);
                    sim.max_probes = sim.max_probes.max(probes);
                }
                None => sim.exhausted += 1,
            }
        }
        Ok(sim)
    }

    pub fn set_bench_config(&mut self, bits: u32) -> Result<()> {
        self.bench_config.set(0, bits, 0).context("bench_config")
    }

    /// Empties `conntrack` and `rev_nat`, then re-creates the three flows
    /// the established cases use. Returns the number of entries removed.
    pub fn reset_flows(&mut self) -> Result<usize> {
        let n = flows::clear(self.h.maps_mut()).context("emptying conntrack")?;
        let maps = self.h.maps();
        let n = n + batch::drain::<FlowKey, RevNatValue>(maps.rev_nat.map().fd().as_fd())
            .context("draining rev_nat")?;
        ensure!(
            maps.flows()?.count()? == 0 && maps.rev_nat.keys().next().is_none(),
            "flow maps not empty after draining"
        );
        for (dport, sport, action, want) in [
            (LOCAL_PORT, EST_LOCAL_PORT, XDP_PASS, Counter::LocalNewFlow),
            (REMOTE_PORT, EST_REMOTE_PORT, XDP_TX, Counter::RemoteNewFlow),
            (DIRECT_PORT, EST_DIRECT_PORT, XDP_TX, Counter::DirectNewFlow),
        ] {
            let key = FlowKey::v4(CLIENT, VIP, sport, dport, proto::TCP);
            self.establish(&frame_tcp(dport, sport, TCP_SYN), key, action, want)?;
        }
        for (dport, sport, action, want) in [
            (
                LOCAL6_PORT,
                EST_LOCAL6_PORT,
                XDP_PASS,
                Counter::LocalNewFlow,
            ),
            (
                DIRECT6_PORT,
                EST_DIRECT6_PORT,
                XDP_TX,
                Counter::DirectNewFlow,
            ),
            (
                REMOTE6_PORT,
                EST_REMOTE6_PORT,
                XDP_TX,
                Counter::RemoteNewFlow,
            ),
        ] {
            let key = FlowKey::v6(CLIENT6, VIP6, sport, dport, proto::TCP);
            self.establish(&frame_tcp6(dport, sport, TCP_SYN), key, action, want)?;
        }
        Ok(n)
    }

    fn establish(&mut self, syn: &[u8], key: FlowKey, action: u32, want: Counter) -> Result<()> {
        let before = self.counts()?;
        let r = self.run(m::programs::INGRESS, syn, 1)?;
        let d = self.counts()?.minus(&before);
        check(&d, self.cpu, Some(want), None, None, 1)
            .with_context(|| format!("establishing {want:?} to {key:?}"))?;
        ensure!(
            r.action == action,
            "establishing {want:?}: action {}",
            r.action
        );
        self.h
            .maps()
            .flows()?
            .get(&key)?
            .with_context(|| format!("no conntrack entry for the {want:?} flow {key:?}"))?;
        Ok(())
    }

    /// Puts `frame` in `bench_scratch` on every CPU: what a `RESTORE_FIRST`
    /// run restores before its first iteration.
    pub fn set_scratch(&mut self, frame: &[u8]) -> Result<()> {
        let mut buf = [0u8; b::SCRATCH_LEN];
        let n = frame.len().min(b::SCRATCH_LEN);
        buf[..n].copy_from_slice(&frame[..n]);
        let cpus = aya::util::nr_cpus()
            .map_err(|(_, e)| e)
            .context("counting CPUs")?;
        let values = PerCpuValues::try_from(vec![buf; cpus]).context("bench_scratch values")?;
        self.bench_scratch
            .set(0, values, 0)
            .context("bench_scratch")
    }

    /// Runs program `name` on `frame` arriving on `v0`, `repeat` times.
    pub fn run(&self, name: &str, frame: &[u8], repeat: u32) -> Result<onehop_testrun::Run> {
        self.h.run_xdp(name, frame, repeat)
    }

    /// Flows in `conntrack` (published slots).
    pub fn flow_count(&self) -> Result<usize> {
        self.h.maps().flows()?.count()
    }

    pub fn counts(&self) -> Result<Counts> {
        self.h.counts()
    }

    pub fn cpu(&self) -> usize {
        self.cpu
    }
}

pub const TCP_SYN: u8 = onehop_testrun::frame::SYN;
pub const TCP_ACK: u8 = onehop_testrun::frame::ACK;

/// A TCP frame (no payload) from the client to `dst:dport`.
pub fn frame_to(dst: [u8; 4], dport: u16, sport: u16, flags: u8) -> Vec<u8> {
    let mut p = Pkt::tcp(CLIENT, sport, dst, dport, flags);
    p.eth_src = CLIENT_MAC;
    p.eth_dst = NODE_MAC;
    p.payload.clear();
    padded(p.build(), FRAME_LEN)
}

/// A TCP frame from the client to the target service on `dport`.
pub fn frame_tcp(dport: u16, sport: u16, flags: u8) -> Vec<u8> {
    frame_to(VIP, dport, sport, flags)
}

/// A TCP frame (no payload) from the IPv6 client to `[VIP6]:dport`: 74
/// bytes, over the Ethernet minimum.
pub fn frame_tcp6(dport: u16, sport: u16, flags: u8) -> Vec<u8> {
    frame6(VIP6, dport, sport, flags)
}

/// A TCP frame (no payload) from the IPv6 client to port 80 of `dst`.
pub fn frame_to6(dst: [u8; 16], flags: u8) -> Vec<u8> {
    frame6(dst, LOCAL6_PORT, 40_000, flags)
}

fn frame6(dst: [u8; 16], dport: u16, sport: u16, flags: u8) -> Vec<u8> {
    let l4 = tcp6(CLIENT6, sport, dst, dport, flags, b"");
    Frame6::new((CLIENT_MAC, NODE_MAC), CLIENT6, dst, proto::TCP, l4).build()
}

const SRC6: std::ops::Range<usize> = 22..38;
const DST6: std::ops::Range<usize> = 38..54;
const PORTS6: std::ops::Range<usize> = 54..58;
const CHECK6: std::ops::Range<usize> = 70..72;

/// The proof that the last iteration of a `RESTORE_FIRST` run (whose
/// output is that iteration's, not the original frame) saw `frame`, by the
/// way its output left: for `local_*` counters, `frame` sent on to one of
/// the local IPv6 target's pods at its target port; for `direct_*`, `frame`
/// addressed to the direct-return node's MAC, its IP packet untouched (in
/// both, the source and everything else is kept, the source port aside,
/// which a new-flow run changes); for `remote_*`, `frame` translated by full
/// NAT: addressed to the peer node's MAC, from the node's IPv6 address to
/// one of the remote target's pods at its target port, hop limit one less.
/// The TCP checksum verifies in every case.
pub fn check_out6(out: &[u8], frame: &[u8], want: Counter) -> Result<()> {
    ensure!(
        out.len() == frame.len(),
        "length {} instead of {}",
        out.len(),
        frame.len()
    );
    let kept = |r: std::ops::Range<usize>| out[r.clone()] == frame[r];
    let dst: [u8; 16] = out[DST6].try_into().context("destination")?;
    if matches!(want, Counter::DirectNewFlow | Counter::DirectEstablished) {
        ensure!(
            out[0..6] == DIRECT_NODE_MAC && out[6..12] == NODE_MAC,
            "not addressed from this node to the direct-return node"
        );
        ensure!(
            kept(12..PORTS6.start)
                && kept(PORTS6.start + 2..CHECK6.start)
                && kept(CHECK6.end..out.len()),
            "direct return changed the IP packet"
        );
    } else if matches!(want, Counter::RemoteNewFlow | Counter::RemoteEstablished) {
        ensure!(
            out[0..6] == PEER_NODE_MAC && out[6..12] == NODE_MAC,
            "not addressed from this node to the peer node"
        );
        let pod = u128::from_be_bytes(dst);
        let base = POD6_BASE + (2 << 80) + 11;
        ensure!(
            (base..base + u128::from(TARGET_BACKENDS)).contains(&pod),
            "destination {} is none of the remote target's pods",
            Ipv6Addr::from(pod)
        );
        ensure!(
            out[SRC6] == NODE_IP6 && out[56..58] == 8080u16.to_be_bytes(),
            "not from this node's address to the pods' port"
        );
        ensure!(
            out[21] == frame[21] - 1 && kept(12..21),
            "hop limit not decremented, or the header's start changed"
        );
        ensure!(
            l4_verifies6(&NODE_IP6, &dst, proto::TCP, &out[PORTS6.start..]),
            "TCP checksum broken"
        );
        return Ok(());
    } else {
        let pod = u128::from_be_bytes(dst);
        let pods = POD6_BASE + 11..POD6_BASE + 11 + u128::from(TARGET_BACKENDS);
        ensure!(
            pods.contains(&pod),
            "destination {} is none of the target's pods",
            Ipv6Addr::from(pod)
        );
        ensure!(
            out[56..58] == 8080u16.to_be_bytes(),
            "destination port not the pods'"
        );
        ensure!(
            kept(0..DST6.start) && kept(CHECK6.end..out.len()) && kept(PORTS6.end..CHECK6.start),
            "bytes besides the destination, the ports and the checksum changed"
        );
    }
    ensure!(
        l4_verifies6(&CLIENT6, &dst, proto::TCP, &out[PORTS6.start..]),
        "TCP checksum broken"
    );
    Ok(())
}

/// Broadcast ARP request "who has the VIP", from the client.
pub fn frame_arp() -> Vec<u8> {
    padded(Arp::request(CLIENT_MAC, CLIENT, VIP).build(), FRAME_LEN)
}

/// The proof that every iteration took the intended path: in `d` (what a
/// run changed), on the bench CPU and over all CPUs, `ingress_packets` and
/// `want` grew by exactly `repeat`, every other counter and every drop
/// reason by zero. `want: None` means nothing may move (programs that do
/// not run the data path); `also` is a counter that must grow by `repeat`
/// besides `want` (a step on the way, such as `flow_evicted`).
pub fn check(
    d: &Counts,
    cpu: usize,
    want: Option<Counter>,
    drop: Option<DropReason>,
    also: Option<Counter>,
    repeat: u32,
) -> Result<()> {
    let mut wrong = Vec::new();
    let datapath = want.is_some() || drop.is_some();
    for c in Counter::ALL {
        let expect = match want {
            Some(w) if c == w => u64::from(repeat),
            _ if also == Some(c) => u64::from(repeat),
            _ if c == Counter::IngressPackets && datapath => u64::from(repeat),
            _ => 0,
        };
        let (here, all) = (d.c_on(c, cpu), d.c(c));
        if here != expect || all != expect {
            wrong.push(format!(
                "{}: +{here} on the bench CPU, +{all} in all (want +{expect})",
                c.label()
            ));
        }
    }
    for r in DropReason::ALL {
        let expect = if drop == Some(r) {
            u64::from(repeat)
        } else {
            0
        };
        let (here, all) = (d.d_on(r, cpu), d.d(r));
        if here != expect || all != expect {
            wrong.push(format!(
                "drop {}: +{here} (+{all} in all; want +{expect})",
                r.label()
            ));
        }
    }
    if !wrong.is_empty() {
        bail!(
            "not every iteration took the intended path ({}): {}",
            want.map_or("no data path", Counter::label),
            wrong.join("; ")
        );
    }
    Ok(())
}
