//! onehop's one `BPF_PROG_TEST_RUN` harness, shared by the packet tests
//! (lb-userspace `tests/datapath.rs`) and `bench xdp`.
//!
//! [`Harness::load`] loads an eBPF object without attaching or pinning
//! anything and verifies every program in it; [`Harness::apply`] provisions
//! the maps the way the agent does — `plan` the services model against what
//! the maps hold, `diff`, and the map writer's `apply` — so what a test or
//! benchmark runs against is what the agent would have written;
//! [`Harness::run_xdp`] and [`Harness::run_tc`] run one frame (or `repeat`
//! iterations) through a program; [`Harness::counts`] reads the outcome
//! counters per CPU. [`frame`] builds the frames.
//!
//! `bpf_fib_lookup` answers from the calling thread's network namespace:
//! callers run the harness on a thread inside a namespace of their own.
//!
//! Its own crate rather than a module of `onehop-testkit`: it needs
//! lb-userspace (planner, writer, the embedded object) and aya, which the
//! namespace kit (also used by xtask and the end-to-end tests) has no use
//! for; and lb-userspace's tests can depend on it as a dev-dependency.

pub mod frame;
pub mod frame6;

use std::{collections::BTreeMap, fmt, net::Ipv4Addr};

use anyhow::{Context as _, Result, bail, ensure};
use aya::{
    Ebpf, EbpfLoader,
    maps::{MapData, PerCpuArray},
    programs::{Program, SchedClassifier, TestRun as _, TestRunOptions, Xdp},
};
use lb_common::{Counter, DropReason, ServiceKey, ServiceValue, maps as m};
use lb_userspace::{
    dataplane::{loader::verify, maps::Maps, writer},
    plan::{
        diff::diff,
        model::{Limits, NodeServices},
        state::{DataplaneState, Node, plan},
    },
};

pub const XDP_ABORTED: u32 = 0;
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;
pub const XDP_REDIRECT: u32 = 4;
/// `TC_ACT_UNSPEC` (-1) as the u32 `BPF_PROG_TEST_RUN` reports.
pub const TC_NEXT: u32 = u32::MAX;

/// Room for what a program may add to a frame.
const OUT_SLACK: usize = 512;

/// Sizes of the maps the programs' state lives in, chosen at load time;
/// the planner is held to the same limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapSizes {
    pub vips: u32,
    /// `services` and `service_stats`.
    pub services: u32,
    /// `backends`, `backends6` (the same ids) and `backend_stats`.
    pub backends: u32,
    pub maglev_slots: u32,
    pub conntrack: u32,
    pub rev_nat: u32,
    pub affinity: u32,
    pub src_ranges: u32,
}

impl Default for MapSizes {
    /// The sizes the agent creates the maps with.
    fn default() -> Self {
        Self {
            vips: m::MAX_VIPS,
            services: m::MAX_SERVICES,
            backends: m::MAX_BACKENDS,
            maglev_slots: m::MAGLEV_SLOTS,
            conntrack: m::CONNTRACK_MAX,
            rev_nat: m::REV_NAT_MAX,
            affinity: m::AFFINITY_MAX,
            src_ranges: m::SRC_RANGES_MAX,
        }
    }
}

impl MapSizes {
    /// What the planner may use of these maps.
    pub fn limits(&self) -> Limits {
        Limits {
            max_vips: self.vips,
            max_services: self.services,
            max_backends: self.backends,
            max_src_ranges: self.src_ranges,
            maglev_slots: self.maglev_slots,
            half_open_max: lb_common::HalfOpenGuard::for_table(
                self.conntrack,
                lb_common::FlowTimeouts::DEFAULT,
            )
            .max,
            flow_sets: lb_common::flow::table::sets_for(self.conntrack),
            legacy_tags6: false,
        }
    }
}

/// One `BPF_PROG_TEST_RUN`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Run {
    /// The program's return value (an XDP action, a TC verdict).
    pub action: u32,
    /// The frame after the last iteration.
    pub out: Vec<u8>,
    /// The kernel's mean time per iteration.
    pub ns: u64,
}

/// Counter and drop-reason values, per CPU.
#[derive(Clone, PartialEq, Eq)]
pub struct Counts {
    counters: BTreeMap<Counter, Vec<u64>>,
    drops: BTreeMap<DropReason, Vec<u64>>,
}

/// Counters that are not the final outcome of an ingress packet: steps on
/// the way, and the egress program's own.
const NOT_OUTCOMES: [Counter; 14] = [
    Counter::IngressPackets,
    Counter::AffinityHit,
    Counter::FlowRepicked,
    Counter::EgressPackets,
    Counter::EgressReply,
    Counter::FlowExpired,
    Counter::FlowReopened,
    Counter::SynOnLiveFlow,
    Counter::NatPortReclaimed,
    Counter::NatPortLost,
    Counter::EgressIcmpError,
    Counter::EgressFragmentedReply,
    Counter::PartialChecksumCompleted,
    Counter::FlowEvicted,
];

impl Counts {
    /// What grew since `before`, per CPU.
    #[must_use]
    pub fn minus(&self, before: &Counts) -> Counts {
        fn sub<K: Ord + Copy>(
            now: &BTreeMap<K, Vec<u64>>,
            before: &BTreeMap<K, Vec<u64>>,
        ) -> BTreeMap<K, Vec<u64>> {
            now.iter()
                .map(|(k, v)| {
                    let b = before.get(k).map_or(&[][..], Vec::as_slice);
                    let d = v
                        .iter()
                        .enumerate()
                        .map(|(i, x)| x.wrapping_sub(b.get(i).copied().unwrap_or(0)))
                        .collect();
                    (*k, d)
                })
                .collect()
        }
        Counts {
            counters: sub(&self.counters, &before.counters),
            drops: sub(&self.drops, &before.drops),
        }
    }

    /// Counter `c` summed over all CPUs.
    pub fn c(&self, c: Counter) -> u64 {
        self.counters.get(&c).map_or(0, |v| v.iter().sum())
    }

    /// Drop reason `d` summed over all CPUs.
    pub fn d(&self, d: DropReason) -> u64 {
        self.drops.get(&d).map_or(0, |v| v.iter().sum())
    }

    /// Counter `c` on one CPU.
    pub fn c_on(&self, c: Counter, cpu: usize) -> u64 {
        self.counters
            .get(&c)
            .and_then(|v| v.get(cpu))
            .copied()
            .unwrap_or(0)
    }

    /// Drop reason `d` on one CPU.
    pub fn d_on(&self, d: DropReason, cpu: usize) -> u64 {
        self.drops
            .get(&d)
            .and_then(|v| v.get(cpu))
            .copied()
            .unwrap_or(0)
    }

    /// Sum of the counters that are final outcomes of one ingress packet,
    /// plus all drops: equals `IngressPackets` once the config is ready.
    pub fn outcomes(&self) -> u64 {
        Counter::ALL
            .iter()
            .filter(|c| !NOT_OUTCOMES.contains(c))
            .map(|&c| self.c(c))
            .sum::<u64>()
            + DropReason::ALL.iter().map(|&d| self.d(d)).sum::<u64>()
    }
}

/// Only what is non-zero, summed over CPUs: a failing assertion shows the
/// outcome that moved, not 40 zeros per CPU.
impl fmt::Debug for Counts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let counters = Counter::ALL
            .iter()
            .map(|&c| (format!("{c:?}"), self.c(c)))
            .filter(|(_, v)| *v != 0);
        let drops = DropReason::ALL
            .iter()
            .map(|&d| (format!("drop {d:?}"), self.d(d)))
            .filter(|(_, v)| *v != 0);
        f.debug_map().entries(counters.chain(drops)).finish()
    }
}

/// Interface index of `name` in the calling thread's namespace.
pub fn ifindex(name: &str) -> Result<u32> {
    let c = std::ffi::CString::new(name).context("interface name")?;
    // SAFETY: `c` is a valid NUL-terminated string.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    ensure!(i != 0, "no interface {name} in this namespace");
    Ok(i)
}

/// The data path loaded for test runs, and what the planner put in its maps.
pub struct Harness {
    ebpf: Ebpf,
    maps: Maps,
    node: Node,
    limits: Limits,
    state: DataplaneState,
}

impl Harness {
    /// Loads `object` with maps of `sizes` and verifies every XDP and TC
    /// program in it. `node` is the interface the frames arrive on (its
    /// `ifindex` is the ingress interface of every XDP run).
    pub fn load(object: &[u8], sizes: &MapSizes, node: Node) -> Result<Self> {
        let mut ebpf = EbpfLoader::new()
            .map_max_entries(m::VIPS, sizes.vips)
            .map_max_entries(m::SERVICES, sizes.services)
            .map_max_entries(m::SERVICE_STATS, sizes.services)
            .map_max_entries(m::BACKENDS, sizes.backends)
            .map_max_entries(m::BACKENDS6, sizes.backends)
            .map_max_entries(m::BACKEND_STATS, sizes.backends)
            .map_max_entries(m::MAGLEV, sizes.maglev_slots)
            .map_max_entries(
                m::CONNTRACK,
                lb_common::flow::table::sets_for(sizes.conntrack),
            )
            .map_max_entries(m::REV_NAT, sizes.rev_nat)
            .map_max_entries(m::AFFINITY, sizes.affinity)
            .map_max_entries(m::SRC_RANGES, sizes.src_ranges)
            .load(object)
            .context("loading the eBPF object")?;
        for (name, program) in ebpf.programs_mut() {
            match program {
                Program::Xdp(p) => verify(|| p.load()),
                Program::SchedClassifier(p) => verify(|| p.load()),
                _ => bail!("program {name}: neither XDP nor TC, the harness cannot run it"),
            }
            .with_context(|| format!("verifying {name}"))?;
        }
        lb_userspace::dataplane::loader::fill_program_arrays(&mut ebpf)?;
        let mut maps = Maps::take(&mut ebpf)?;
        // As a running agent keeps it: without a current heartbeat ARP goes
        // unanswered. An hour outlasts any test or benchmark run; tests of
        // the heartbeat itself overwrite it.
        maps.heartbeat(std::time::Duration::from_hours(1))
            .context("writing the agent's heartbeat")?;
        Ok(Self {
            ebpf,
            maps,
            node,
            limits: sizes.limits(),
            state: DataplaneState::default(),
        })
    }

    /// Makes the maps hold what the agent would write for `model`: plans
    /// it against the current contents, and writes the difference with the
    /// agent's writer in the writer's safe order. Returns the number of map
    /// updates.
    pub fn apply(&mut self, model: &NodeServices) -> Result<usize> {
        let next = plan(&self.state, model, &self.node, &self.limits)
            .context("planning the services model")?;
        let ops = diff(&self.state, &next);
        writer::apply(&mut self.maps, &ops)?;
        self.state = next;
        Ok(ops.len())
    }

    /// What the last [`Self::apply`] planned (the maps hold exactly this,
    /// unless a caller wrote to them directly since).
    pub fn state(&self) -> &DataplaneState {
        &self.state
    }

    /// The `services` entry of `vip:port/proto`.
    pub fn service(&self, vip: Ipv4Addr, port: u16, proto: u8) -> Option<ServiceValue> {
        self.state
            .services
            .get(&ServiceKey::new(vip.octets(), port, proto))
            .copied()
    }

    /// The Maglev table of `vip:port/proto` (empty without backends).
    pub fn table(&self, vip: Ipv4Addr, port: u16, proto: u8) -> Vec<u32> {
        self.service(vip, port, proto)
            .filter(|v| v.maglev_len > 0)
            .and_then(|v| self.state.maglev.get(&v.maglev_offset))
            .map(lb_userspace::plan::table::Table::to_vec)
            .unwrap_or_default()
    }

    pub fn node(&self) -> &Node {
        &self.node
    }

    /// The data path's maps. Flow state (`conntrack`, `rev_nat`,
    /// `affinity`) is the programs' own, so tests set it up here; writes to
    /// the maps the planner owns bypass it (see [`Self::state`]).
    pub fn maps(&self) -> &Maps {
        &self.maps
    }

    pub fn maps_mut(&mut self) -> &mut Maps {
        &mut self.maps
    }

    /// How many instructions the verifier processed for each loaded
    /// program (`bpf_prog_info.verified_insns`, Linux 5.16+; `None` before),
    /// by program name. The verifier gives up at one million: this is how
    /// close a program is to no longer loading.
    pub fn verified_insns(&self) -> Result<Vec<(String, Option<u32>)>> {
        self.ebpf
            .programs()
            .map(|(name, p)| {
                let info = p.info().with_context(|| format!("program {name}: info"))?;
                Ok((name.to_owned(), info.verified_instruction_count()))
            })
            .collect()
    }

    /// The loaded object, for maps outside [`Maps`] (the benchmark
    /// programs' own).
    pub fn ebpf_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }

    /// Runs XDP program `name` `repeat` times on `frame` arriving on the
    /// node's interface.
    pub fn run_xdp(&self, name: &str, frame: &[u8], repeat: u32) -> Result<Run> {
        let p: &Xdp = self
            .ebpf
            .program(name)
            .with_context(|| format!("no program {name}"))?
            .try_into()
            .with_context(|| format!("{name} is not XDP"))?;
        let len = u32::try_from(frame.len()).context("frame length")?;
        // struct xdp_md: data, data_end, data_meta, ingress_ifindex,
        // rx_queue_index, egress_ifindex.
        let md: [u32; 6] = [0, len, 0, self.node.ifindex, 0, 0];
        let ctx: Vec<u8> = md.iter().flat_map(|w| w.to_ne_bytes()).collect();
        let mut out = vec![0u8; frame.len() + OUT_SLACK];
        let r = p
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                ctx_in: Some(&ctx),
                repeat,
                ..TestRunOptions::default()
            })
            .with_context(|| format!("BPF_PROG_TEST_RUN {name}"))?;
        Self::finish(&r, out)
    }

    /// Runs TC program `name` once on `frame` (an skb).
    pub fn run_tc(&self, name: &str, frame: &[u8]) -> Result<Run> {
        let p: &SchedClassifier = self
            .ebpf
            .program(name)
            .with_context(|| format!("no program {name}"))?
            .try_into()
            .with_context(|| format!("{name} is not a TC classifier"))?;
        let mut out = vec![0u8; frame.len() + OUT_SLACK];
        let r = p
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                ..TestRunOptions::default()
            })
            .with_context(|| format!("BPF_PROG_TEST_RUN {name}"))?;
        Self::finish(&r, out)
    }

    fn finish(r: &aya::TestRunResult, mut out: Vec<u8>) -> Result<Run> {
        out.truncate(r.data_size_out as usize);
        Ok(Run {
            action: r.return_value,
            out,
            ns: u64::try_from(r.duration.as_nanos()).context("test run duration")?,
        })
    }

    /// Every counter and drop reason, per CPU.
    pub fn counts(&self) -> Result<Counts> {
        fn read<K: Ord + Copy>(
            map: &PerCpuArray<MapData, u64>,
            keys: &[K],
            index: impl Fn(K) -> u32,
            what: &str,
        ) -> Result<BTreeMap<K, Vec<u64>>> {
            keys.iter()
                .map(|&k| {
                    let i = index(k);
                    let v = map
                        .get(&i, 0)
                        .with_context(|| format!("reading {what}[{i}]"))?;
                    Ok((k, v.iter().copied().collect()))
                })
                .collect()
        }
        Ok(Counts {
            counters: read(
                &self.maps.counters,
                &Counter::ALL,
                |c| c as u32,
                m::COUNTERS,
            )?,
            drops: read(&self.maps.drops, &DropReason::ALL, |d| d as u32, m::DROPS)?,
        })
    }
}
