//! The data path under test: the embedded bench object loaded (nothing attached,
//! nothing pinned) inside the bench's namespace, its maps filled with one
//! target service plus filler services, and the helpers to run a program
//! and read the outcome counters of one CPU.

use std::os::fd::AsFd as _;

use anyhow::{Context as _, Result, bail, ensure};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, IterableMap as _, Map, MapData, PerCpuArray},
    programs::{TestRun as _, TestRunOptions, Xdp},
};
use lb_common::{
    BackendValue, Config, ConntrackValue, Counter, DropReason, FlowKey, Ipv4Key, RevNatValue,
    ServiceKey, ServiceValue, VipValue, backend_flags, bench as b,
    counters::{COUNTER_COUNT, DROP_REASON_COUNT},
    hash::{NAT_PROBES, flow_hash, nat_probe},
    maps as m, proto, vip_flags,
};

use crate::{
    batch,
    frames::{self, TCP_SYN},
    maglev::{self, Member},
};

pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;

pub const NODE_IP: [u8; 4] = [10, 200, 0, 1];
pub const NODE_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
pub const CLIENT: [u8; 4] = [10, 200, 0, 50];
pub const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x50];
pub const PEER_NODE: [u8; 4] = [10, 200, 0, 2];
pub const PEER_NODE_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
/// The target service's VIP (announced: ARP is answered for it).
pub const VIP: [u8; 4] = [192, 0, 2, 10];
pub const VIP_PORT: u16 = 80;
pub const NOT_VIP: [u8; 4] = [192, 0, 2, 99];
/// Client ports of the two pre-established flows: below the bench's
/// source-port sequence (1024..=65535), so new-flow runs never reuse them.
pub const EST_LOCAL_PORT: u16 = 900;
pub const EST_REMOTE_PORT: u16 = 901;
/// NAT source ports for remote flows: as wide as possible (see README).
pub const NAT_MIN: u16 = 1024;
pub const NAT_MAX: u16 = 65535;

/// Backends per filler service, and per table of the target service. The
/// target has more so that 64,000 new remote flows per run spread over
/// enough (backend, NAT port) pairs: at most ~6% of each backend's ports are
/// taken by the end of a run (see `simulate_nat` and the README).
pub const FILLER_BACKENDS: u32 = 3;
pub const TARGET_BACKENDS: u32 = 16;
/// Backend ids: the target's local, then its remote backends, then the
/// fillers' (id 0 stays empty).
const LOCAL_IDS: u32 = 1;
const REMOTE_IDS: u32 = LOCAL_IDS + TARGET_BACKENDS;
const FILLER_IDS: u32 = REMOTE_IDS + TARGET_BACKENDS;

/// Source ports of the wrapper's new-flow sequence (1024..=65535; lb-ebpf
/// `src/bin/lb-ebpf-bench/bench.rs`).
pub const SEQ_PORTS: u32 = 65536 - 1024;

/// Result of [`Lb::simulate_nat`].
#[derive(Clone, Copy, Debug, Default)]
pub struct NatSim {
    pub flows: u64,
    pub probes: u64,
    pub max_probes: u32,
    pub exhausted: u32,
}

/// Which Maglev table the target service (id 0) points at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Table {
    /// Four backends on this node: DNAT and pass.
    Local,
    /// Four backends on the peer node: full NAT and `XDP_TX`.
    Remote,
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
    pub fn for_services(max_services: u32) -> Self {
        let table_target = maglev::table_size(TARGET_BACKENDS as usize);
        let table_filler = maglev::table_size(FILLER_BACKENDS as usize);
        let fillers = max_services.saturating_sub(1);
        Self {
            max_services,
            maglev_slots: 2 * table_target + fillers * table_filler,
            backends: FILLER_IDS + fillers * FILLER_BACKENDS,
            table_target,
            table_filler,
        }
    }
}

pub struct Lb {
    ebpf: Ebpf,
    ifindex: u32,
    cpu: usize,
    pub sizes: Sizes,
    services_loaded: u32,
    counters: PerCpuArray<MapData, u64>,
    drops: PerCpuArray<MapData, u64>,
    config: Array<MapData, Config>,
    bench_config: Array<MapData, u32>,
    bench_seq: PerCpuArray<MapData, u32>,
    /// The target's remote Maglev table and its backends (for `simulate_nat`).
    remote_table: Vec<u32>,
    remote_backends: std::collections::HashMap<u32, BackendValue>,
    vips: HashMap<MapData, Ipv4Key, VipValue>,
    services: HashMap<MapData, ServiceKey, ServiceValue>,
    maglev: Array<MapData, u32>,
    backends: Array<MapData, BackendValue>,
    conntrack: HashMap<MapData, FlowKey, ConntrackValue>,
    rev_nat: HashMap<MapData, FlowKey, RevNatValue>,
}

/// Counter and drop values of the bench CPU, plus their sums over all CPUs
/// (which must move exactly like the bench CPU's: nothing else runs them).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Counts {
    pub counters: Vec<(u64, u64)>,
    pub drops: Vec<(u64, u64)>,
}

pub struct Run {
    pub action: u32,
    pub out: Vec<u8>,
    pub ns: u64,
}

fn take<T: TryFrom<Map>>(ebpf: &mut Ebpf, name: &str) -> Result<T>
where
    T::Error: std::error::Error + Send + Sync + 'static,
{
    let map = ebpf
        .take_map(name)
        .with_context(|| format!("no map {name} in the object"))?;
    T::try_from(map).with_context(|| format!("map {name}: unexpected type"))
}

/// Interface index of `name` in the calling thread's namespace.
fn ifindex(name: &str) -> Result<u32> {
    let c = std::ffi::CString::new(name).context("interface name")?;
    // SAFETY: valid NUL-terminated string.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    ensure!(i != 0, "no interface {name} in the bench namespace");
    Ok(i)
}

pub const PROGRAMS: [&str; 4] = [
    m::programs::PASS,
    m::programs::INGRESS,
    b::programs::INGRESS,
    b::programs::RESTORE_ONLY,
];

impl Lb {
    /// Loads the object sized for `sizes` on a thread inside the namespace
    /// (interface `v0`), pinned to `cpu`.
    pub fn load(object: &[u8], sizes: Sizes, cpu: usize) -> Result<Self> {
        let mut ebpf = EbpfLoader::new()
            .map_max_entries(m::MAGLEV, sizes.maglev_slots)
            .map_max_entries(m::BACKENDS, sizes.backends)
            .map_max_entries(m::BACKEND_STATS, sizes.backends)
            .load(object)
            .context("loading the eBPF object")?;
        for name in PROGRAMS {
            let p: &mut Xdp = ebpf
                .program_mut(name)
                .with_context(|| format!("no program {name}"))?
                .try_into()
                .with_context(|| format!("{name} is not XDP"))?;
            p.load().with_context(|| format!("loading {name}"))?;
        }
        ensure!(
            sizes.max_services < m::MAX_SERVICES.min(m::MAX_VIPS),
            "{} services do not fit the services/vips maps",
            sizes.max_services
        );
        Ok(Self {
            ifindex: ifindex("v0")?,
            cpu,
            sizes,
            services_loaded: 0,
            counters: take(&mut ebpf, m::COUNTERS)?,
            drops: take(&mut ebpf, m::DROPS)?,
            config: take(&mut ebpf, m::CONFIG)?,
            bench_config: take(&mut ebpf, b::CONFIG)?,
            bench_seq: take(&mut ebpf, b::SEQ)?,
            remote_table: Vec::new(),
            remote_backends: std::collections::HashMap::new(),
            vips: take(&mut ebpf, m::VIPS)?,
            services: take(&mut ebpf, m::SERVICES)?,
            maglev: take(&mut ebpf, m::MAGLEV)?,
            backends: take(&mut ebpf, m::BACKENDS)?,
            conntrack: take(&mut ebpf, m::CONNTRACK)?,
            rev_nat: take(&mut ebpf, m::REV_NAT)?,
            ebpf,
        })
    }

    /// Config, the node address, and the target service (id 0) with its two
    /// tables (local, remote), pointing at the local one.
    pub fn base(&mut self) -> Result<()> {
        self.config
            .set(
                0,
                Config {
                    node_ip: NODE_IP,
                    ifindex: self.ifindex,
                    mac: NODE_MAC,
                    _pad0: [0; 2],
                    nat_port_min: NAT_MIN,
                    nat_port_max: NAT_MAX,
                    ready: 1,
                },
                0,
            )
            .context("config")?;
        self.vips
            .insert(
                Ipv4Key { addr: NODE_IP },
                VipValue {
                    flags: vip_flags::NODE,
                },
                0,
            )
            .context("node address")?;
        self.vips
            .insert(
                Ipv4Key { addr: VIP },
                VipValue {
                    flags: vip_flags::SERVICE | vip_flags::ANNOUNCE,
                },
                0,
            )
            .context("target VIP")?;
        let size = self.sizes.table_target;
        for (table, first_id) in [(Table::Local, LOCAL_IDS), (Table::Remote, REMOTE_IDS)] {
            let local = table == Table::Local;
            let members: Vec<Member> = (0..TARGET_BACKENDS)
                .map(|j| {
                    let [.., last] = (11 + j).to_be_bytes();
                    Member {
                        id: first_id + j,
                        ip: [10, 244, u8::from(!local), last],
                        port: 8080,
                    }
                })
                .collect();
            let ids: Vec<u32> = members.iter().map(|b| b.id).collect();
            let values: Vec<BackendValue> = members
                .iter()
                .map(|b| BackendValue {
                    ip: b.ip,
                    node_ip: if local { NODE_IP } else { PEER_NODE },
                    port: b.port,
                    flags: backend_flags::VALID | if local { backend_flags::LOCAL } else { 0 },
                    _pad: 0,
                })
                .collect();
            batch::update(self.backends.map().fd().as_fd(), &ids, &values)?;
            let table_ids = maglev::populate(&members, size);
            if !local {
                self.remote_table.clone_from(&table_ids);
                self.remote_backends = ids.iter().copied().zip(values.iter().copied()).collect();
            }
            let offset = Self::target_offset(table, size);
            let slots: Vec<u32> = (offset..offset + size).collect();
            batch::update(self.maglev.map().fd().as_fd(), &slots, &table_ids)?;
        }
        self.set_table(Table::Local)?;
        self.services_loaded = 1;
        Ok(())
    }

    fn target_offset(table: Table, size: u32) -> u32 {
        match table {
            Table::Local => 0,
            Table::Remote => size,
        }
    }

    fn target_key() -> ServiceKey {
        ServiceKey {
            vip: VIP,
            port: VIP_PORT,
            proto: proto::TCP,
            _pad: 0,
        }
    }

    /// Points the target service at one of its tables (one map update, as
    /// the agent switches tables).
    pub fn set_table(&mut self, table: Table) -> Result<()> {
        let size = self.sizes.table_target;
        self.services
            .insert(
                Self::target_key(),
                ServiceValue {
                    id: 0,
                    maglev_offset: Self::target_offset(table, size),
                    maglev_len: size,
                    flags: 0,
                    affinity_timeout_s: 0,
                    _pad: 0,
                },
                0,
            )
            .context("target service")
    }

    /// Adds filler services until `total` services are loaded: each on its
    /// own VIP (announced) and port, with three remote backends of its own
    /// and a Maglev table of its own.
    pub fn grow_to(&mut self, total: u32) -> Result<()> {
        ensure!(
            total <= self.sizes.max_services,
            "maps sized for fewer services"
        );
        let first = self.services_loaded;
        if total <= first {
            return Ok(());
        }
        let target_slots = 2 * self.sizes.table_target;
        let size = self.sizes.table_filler;
        let n = (total - first) as usize;
        let mut vip_keys = Vec::with_capacity(n);
        let mut svc_keys = Vec::with_capacity(n);
        let mut svc_values = Vec::with_capacity(n);
        let mut backend_ids = Vec::with_capacity(n * FILLER_BACKENDS as usize);
        let mut backend_values = Vec::with_capacity(n * FILLER_BACKENDS as usize);
        let mut slots = Vec::with_capacity(n * size as usize);
        let mut slot_ids = Vec::with_capacity(n * size as usize);
        for i in first..total {
            // 100.64.0.0/10 + i: distinct VIPs, never the target's.
            let vip = (u32::from_be_bytes([100, 64, 0, 0]) + i).to_be_bytes();
            let port = 80 + u16::try_from(i % 8).unwrap_or(0);
            vip_keys.push(Ipv4Key { addr: vip });
            let offset = target_slots + (i - 1) * size;
            svc_keys.push(ServiceKey {
                vip,
                port,
                proto: proto::TCP,
                _pad: 0,
            });
            svc_values.push(ServiceValue {
                id: i,
                maglev_offset: offset,
                maglev_len: size,
                flags: 0,
                affinity_timeout_s: 0,
                _pad: 0,
            });
            let members: Vec<Member> = (0..FILLER_BACKENDS)
                .map(|j| {
                    let k = (i - 1) * FILLER_BACKENDS + j;
                    let [_, b1, b2, b3] = k.to_be_bytes();
                    Member {
                        id: FILLER_IDS + k,
                        ip: [10, 128 + b1, b2, b3],
                        port: 8080,
                    }
                })
                .collect();
            for b in &members {
                backend_ids.push(b.id);
                backend_values.push(BackendValue {
                    ip: b.ip,
                    node_ip: PEER_NODE,
                    port: b.port,
                    flags: backend_flags::VALID,
                    _pad: 0,
                });
            }
            slots.extend(offset..offset + size);
            slot_ids.extend(maglev::populate(&members, size));
        }
        let vip_values = vec![
            VipValue {
                flags: vip_flags::SERVICE | vip_flags::ANNOUNCE,
            };
            n
        ];
        batch::update(
            self.backends.map().fd().as_fd(),
            &backend_ids,
            &backend_values,
        )
        .context("backends")?;
        batch::update(self.maglev.map().fd().as_fd(), &slots, &slot_ids).context("maglev")?;
        batch::update(self.services.map().fd().as_fd(), &svc_keys, &svc_values)
            .context("services")?;
        batch::update(self.vips.map().fd().as_fd(), &vip_keys, &vip_values).context("vips")?;
        self.services_loaded = total;
        // Spot check through the ordinary per-element path.
        let last = svc_keys.last().context("no service added")?;
        let v = self.services.get(last, 0).context("last filler service")?;
        ensure!(v.id == total - 1, "filler service has id {}", v.id);
        Ok(())
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
        let mut taken: std::collections::HashSet<FlowKey> = self
            .rev_nat
            .keys()
            .collect::<Result<_, _>>()
            .context("rev_nat keys")?;
        let size = u32::from(NAT_MAX) - u32::from(NAT_MIN) + 1;
        let len = u32::try_from(self.remote_table.len()).context("table")?;
        let mut sim = NatSim::default();
        for k in 1..=repeat {
            let n = seq.wrapping_add(k);
            let sport = u16::try_from(1024 + n % SEQ_PORTS).context("port")?;
            let h = flow_hash(CLIENT, VIP, sport, VIP_PORT, proto::TCP);
            let id = self.remote_table[(h % len) as usize];
            let b = self.remote_backends[&id];
            let claimed = (0..NAT_PROBES).find_map(|i| {
                let port = u16::try_from(u32::from(NAT_MIN) + nat_probe(h, i, size)).ok()?;
                let key = FlowKey {
                    src: b.ip,
                    dst: NODE_IP,
                    sport: b.port,
                    dport: port,
                    proto: proto::TCP,
                    _pad: [0; 3],
                };
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

    /// Empties `conntrack` and `rev_nat`, then re-creates the two flows the
    /// established cases use. Returns the number of entries removed.
    pub fn reset_flows(&mut self) -> Result<usize> {
        let n = batch::drain::<FlowKey, ConntrackValue>(self.conntrack.map().fd().as_fd())
            .context("draining conntrack")?
            + batch::drain::<FlowKey, RevNatValue>(self.rev_nat.map().fd().as_fd())
                .context("draining rev_nat")?;
        ensure!(
            self.conntrack.keys().next().is_none() && self.rev_nat.keys().next().is_none(),
            "flow maps not empty after draining"
        );
        self.establish(
            Table::Local,
            EST_LOCAL_PORT,
            XDP_PASS,
            Counter::LocalNewFlow,
        )?;
        self.establish(
            Table::Remote,
            EST_REMOTE_PORT,
            XDP_TX,
            Counter::RemoteNewFlow,
        )?;
        Ok(n)
    }

    fn establish(&mut self, table: Table, port: u16, action: u32, want: Counter) -> Result<()> {
        self.set_table(table)?;
        let syn = Self::frame_tcp(port, TCP_SYN);
        let before = self.counts()?;
        let r = self.run(m::programs::INGRESS, &syn, 1)?;
        let after = self.counts()?;
        check(&before, &after, Some(want), 1).with_context(|| format!("establishing {table:?}"))?;
        ensure!(
            r.action == action,
            "establishing {table:?}: action {}",
            r.action
        );
        let key = FlowKey {
            src: CLIENT,
            dst: VIP,
            sport: port,
            dport: VIP_PORT,
            proto: proto::TCP,
            _pad: [0; 3],
        };
        self.conntrack
            .get(&key, 0)
            .with_context(|| format!("no conntrack entry for the {table:?} flow"))?;
        Ok(())
    }

    /// A TCP frame from the client to the target service.
    pub fn frame_tcp(sport: u16, flags: u8) -> Vec<u8> {
        frames::tcp(CLIENT_MAC, NODE_MAC, CLIENT, sport, VIP, VIP_PORT, flags)
    }

    /// Runs program `name` on `frame` arriving on `v0`, `repeat` times.
    pub fn run(&self, name: &str, frame: &[u8], repeat: u32) -> Result<Run> {
        let p: &Xdp = self
            .ebpf
            .program(name)
            .with_context(|| format!("no program {name}"))?
            .try_into()
            .with_context(|| format!("{name} is not XDP"))?;
        let len = u32::try_from(frame.len()).context("frame length")?;
        // struct xdp_md: data, data_end, data_meta, ingress_ifindex,
        // rx_queue_index, egress_ifindex.
        let md: [u32; 6] = [0, len, 0, self.ifindex, 0, 0];
        let ctx: Vec<u8> = md.iter().flat_map(|w| w.to_ne_bytes()).collect();
        let mut out = vec![0u8; frame.len() + 256];
        let r = p
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                ctx_in: Some(&ctx),
                repeat,
                ..TestRunOptions::default()
            })
            .with_context(|| format!("BPF_PROG_TEST_RUN {name}"))?;
        out.truncate(r.data_size_out as usize);
        Ok(Run {
            action: r.return_value,
            out,
            ns: u64::try_from(r.duration.as_nanos()).context("duration")?,
        })
    }

    pub fn counts(&self) -> Result<Counts> {
        let read =
            |map: &PerCpuArray<MapData, u64>, n: u32, what: &str| -> Result<Vec<(u64, u64)>> {
                (0..n)
                    .map(|i| {
                        let v = map
                            .get(&i, 0)
                            .with_context(|| format!("reading {what}[{i}]"))?;
                        let here = *v
                            .get(self.cpu)
                            .with_context(|| format!("no CPU {} in {what}", self.cpu))?;
                        Ok((here, v.iter().sum()))
                    })
                    .collect()
            };
        Ok(Counts {
            counters: read(&self.counters, COUNTER_COUNT, "counters")?,
            drops: read(&self.drops, DROP_REASON_COUNT, "drops")?,
        })
    }
}

/// The proof that every iteration took the intended path: on the bench CPU
/// and over all CPUs, `ingress_packets` and `want` grew by exactly `repeat`,
/// every other counter and every drop reason by zero. `want: None` means
/// nothing may move (programs that do not run the data path).
pub fn check(before: &Counts, after: &Counts, want: Option<Counter>, repeat: u32) -> Result<()> {
    let mut wrong = Vec::new();
    for (i, (b, a)) in before.counters.iter().zip(&after.counters).enumerate() {
        let c = Counter::try_from(u32::try_from(i)?).map_err(|n| anyhow::anyhow!("counter {n}"))?;
        let expect = match want {
            Some(w) if c == w || c == Counter::IngressPackets => u64::from(repeat),
            _ => 0,
        };
        let (here, all) = (a.0 - b.0, a.1 - b.1);
        if here != expect || all != expect {
            wrong.push(format!(
                "{}: +{here} on the bench CPU, +{all} in all (want +{expect})",
                c.label()
            ));
        }
    }
    for (i, (b, a)) in before.drops.iter().zip(&after.drops).enumerate() {
        let d = DropReason::try_from(u32::try_from(i)?)
            .map_err(|n| anyhow::anyhow!("drop reason {n}"))?;
        let (here, all) = (a.0 - b.0, a.1 - b.1);
        if here != 0 || all != 0 {
            wrong.push(format!("drop {}: +{here} (+{all} in all)", d.label()));
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
