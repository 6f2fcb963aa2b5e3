//! `bench-xdp`: ns/packet of onehop's XDP data path, as the kernel measures
//! it in `BPF_PROG_TEST_RUN`, per packet path and service count. See
//! benches/README.md for the method; `cargo xtask bench xdp` runs it.

mod batch;
mod lb;

use std::{
    fmt::Write as _,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use clap::Parser;
use lb_common::{Counter, DropReason, bench as b, maps as m};
use onehop_testkit::{Netns, in_netns, unique_prefix};

use crate::lb::{Lb, NatSim, SEQ_PORTS, Sizes, TCP_ACK, TCP_SYN, XDP_DROP, XDP_PASS, XDP_TX};

#[derive(Parser, Debug)]
#[command(about = "ns/packet of onehop's XDP data path (BPF_PROG_TEST_RUN)")]
struct Args {
    /// Runs per case and service count (the median is reported). 11 rather
    /// than 7: on a 2-core machine shared with compilers, single runs are
    /// off by up to 2x now and then.
    #[arg(long, default_value_t = 11)]
    runs: usize,
    /// Iterations per run for every case except the new-flow ones.
    #[arg(long, default_value_t = 1_000_000)]
    repeat: u32,
    /// Iterations per run of the new-flow cases: at most 64,512, so every
    /// iteration of a run is a 5-tuple the flow maps have never seen.
    #[arg(long, default_value_t = 64_000)]
    repeat_new: u32,
    /// Service counts to measure, ascending; at least 5 (the five target
    /// services: local backends, remote by full NAT, remote by direct
    /// return, and local backends and direct return over IPv6).
    #[arg(long, value_delimiter = ',', default_value = "6,1000,100000")]
    services: Vec<u32>,
    /// Measure only these cases (by name, comma-separated; the floor and the
    /// restore overhead always): for A/B runs and profiles of one path.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// CPU to pin to (default: the highest CPU this process may use).
    #[arg(long)]
    cpu: Option<usize>,
    /// Measure this eBPF object instead of the embedded one (A/B
    /// experiments with scratch builds of lb-ebpf).
    #[arg(long)]
    object: Option<PathBuf>,
    /// Where to write the report (overwritten).
    #[arg(long, default_value_os_t = default_out())]
    out: PathBuf,
}

fn default_out() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("results/xdp-latest.txt")
}

/// The case that writes one flow entry and nothing else (see lb-ebpf's
/// bench `floor`): the new-flow cases are reported against it.
const FLOW_FLOOR: &str = "flow_write_floor";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// `xdp_pass`: the floor (reported, never subtracted).
    Floor,
    /// `bench_restore_only`: subtracted from every wrapper case.
    Restore,
    /// A data-path case run through `lb_ingress_bench`.
    Wrapped,
    /// A data-path case run through `lb_ingress` itself (frame untouched).
    Direct,
}

struct Case {
    name: &'static str,
    kind: Kind,
    prog: &'static str,
    frame: Vec<u8>,
    action: u32,
    want: Want,
    /// Run with `bench_config = NEW_FLOW` after emptying the flow maps.
    new_flow: bool,
    /// What the maps hold before the run.
    setup: Setup,
    repeat: u32,
}

/// What every iteration of a case must count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Want {
    Counter(Counter),
    Drop(DropReason),
    Nothing,
    /// No counter moves, and the flow table holds one flow more per
    /// iteration (`flow_write_floor`).
    FlowEntries,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Setup {
    /// The flow maps as the previous case left them (emptied for new flows).
    Plain,
    /// `conntrack` full of half-open flows: every new flow replaces one.
    FullTable,
    /// The new-flow guard's bucket empty: a SYN flood has drained it.
    GuardEmpty,
}

#[expect(clippy::too_many_lines, reason = "a table of cases, one call each")]
fn cases(args: &Args) -> Vec<Case> {
    let syn = lb::frame_tcp(lb::LOCAL_PORT, 40_000, TCP_SYN);
    let syn_remote = lb::frame_tcp(lb::REMOTE_PORT, 40_000, TCP_SYN);
    let syn_direct = lb::frame_tcp(lb::DIRECT_PORT, 40_000, TCP_SYN);
    let case = |name, kind, prog, frame: &Vec<u8>, action, want, new_flow, setup| Case {
        name,
        kind,
        prog,
        frame: frame.clone(),
        action,
        want,
        new_flow,
        setup,
        repeat: if new_flow {
            args.repeat_new
        } else {
            args.repeat
        },
    };
    let bench = b::programs::INGRESS;
    let non_vip = lb::frame_to(lb::NOT_VIP, 80, 40_000, TCP_SYN);
    let arp = lb::frame_arp();
    let est_local = lb::frame_tcp(lb::LOCAL_PORT, lb::EST_LOCAL_PORT, TCP_ACK);
    let est_remote = lb::frame_tcp(lb::REMOTE_PORT, lb::EST_REMOTE_PORT, TCP_ACK);
    let est_direct = lb::frame_tcp(lb::DIRECT_PORT, lb::EST_DIRECT_PORT, TCP_ACK);
    let syn6 = lb::frame_tcp6(lb::LOCAL6_PORT, 40_000, TCP_SYN);
    let syn_direct6 = lb::frame_tcp6(lb::DIRECT6_PORT, 40_000, TCP_SYN);
    let est_local6 = lb::frame_tcp6(lb::LOCAL6_PORT, lb::EST_LOCAL6_PORT, TCP_ACK);
    let est_direct6 = lb::frame_tcp6(lb::DIRECT6_PORT, lb::EST_DIRECT6_PORT, TCP_ACK);
    let syn_remote6 = lb::frame_tcp6(lb::REMOTE6_PORT, 40_000, TCP_SYN);
    let est_remote6 = lb::frame_tcp6(lb::REMOTE6_PORT, lb::EST_REMOTE6_PORT, TCP_ACK);
    let non_vip6 = lb::frame_to6(lb::NOT_VIP6, TCP_SYN);
    let c = Want::Counter;
    let (plain, full, empty) = (Setup::Plain, Setup::FullTable, Setup::GuardEmpty);
    vec![
        case(
            "floor_xdp_pass",
            Kind::Floor,
            m::programs::PASS,
            &syn,
            XDP_PASS,
            Want::Nothing,
            false,
            plain,
        ),
        case(
            "restore_only",
            Kind::Restore,
            b::programs::RESTORE_ONLY,
            &syn,
            XDP_PASS,
            Want::Nothing,
            false,
            plain,
        ),
        case(
            "non_vip_pass",
            Kind::Direct,
            m::programs::INGRESS,
            &non_vip,
            XDP_PASS,
            c(Counter::PassNotVip),
            false,
            plain,
        ),
        case(
            "arp_reply",
            Kind::Wrapped,
            bench,
            &arp,
            XDP_TX,
            c(Counter::ArpReply),
            false,
            plain,
        ),
        case(
            "new_flow_local",
            Kind::Wrapped,
            bench,
            &syn,
            XDP_PASS,
            c(Counter::LocalNewFlow),
            true,
            plain,
        ),
        case(
            "new_flow_remote",
            Kind::Wrapped,
            bench,
            &syn_remote,
            XDP_TX,
            c(Counter::RemoteNewFlow),
            true,
            plain,
        ),
        case(
            "new_flow_direct",
            Kind::Wrapped,
            bench,
            &syn_direct,
            XDP_TX,
            c(Counter::DirectNewFlow),
            true,
            plain,
        ),
        case(
            "new_flow_local_full_table",
            Kind::Wrapped,
            bench,
            &syn,
            XDP_PASS,
            c(Counter::LocalNewFlow),
            true,
            full,
        ),
        case(
            "syn_flood_refused",
            Kind::Wrapped,
            bench,
            &syn,
            XDP_DROP,
            Want::Drop(DropReason::HalfOpenLimit),
            true,
            empty,
        ),
        case(
            FLOW_FLOOR,
            Kind::Wrapped,
            b::programs::FLOW_FLOOR,
            &syn,
            XDP_PASS,
            Want::FlowEntries,
            true,
            plain,
        ),
        case(
            "established_local",
            Kind::Wrapped,
            bench,
            &est_local,
            XDP_PASS,
            c(Counter::LocalEstablished),
            false,
            plain,
        ),
        case(
            "established_remote",
            Kind::Wrapped,
            bench,
            &est_remote,
            XDP_TX,
            c(Counter::RemoteEstablished),
            false,
            plain,
        ),
        case(
            "established_direct",
            Kind::Wrapped,
            bench,
            &est_direct,
            XDP_TX,
            c(Counter::DirectEstablished),
            false,
            plain,
        ),
        case(
            "non_vip6_pass",
            Kind::Direct,
            m::programs::INGRESS,
            &non_vip6,
            XDP_PASS,
            c(Counter::PassNotVip),
            false,
            plain,
        ),
        case(
            "new_flow_local6",
            Kind::Wrapped,
            bench,
            &syn6,
            XDP_PASS,
            c(Counter::LocalNewFlow),
            true,
            plain,
        ),
        case(
            "established_local6",
            Kind::Wrapped,
            bench,
            &est_local6,
            XDP_PASS,
            c(Counter::LocalEstablished),
            false,
            plain,
        ),
        case(
            "new_flow_direct6",
            Kind::Wrapped,
            bench,
            &syn_direct6,
            XDP_TX,
            c(Counter::DirectNewFlow),
            true,
            plain,
        ),
        case(
            "established_direct6",
            Kind::Wrapped,
            bench,
            &est_direct6,
            XDP_TX,
            c(Counter::DirectEstablished),
            false,
            plain,
        ),
        case(
            "new_flow_remote6",
            Kind::Wrapped,
            bench,
            &syn_remote6,
            XDP_TX,
            c(Counter::RemoteNewFlow),
            true,
            plain,
        ),
        case(
            "established_remote6",
            Kind::Wrapped,
            bench,
            &est_remote6,
            XDP_TX,
            c(Counter::RemoteEstablished),
            false,
            plain,
        ),
    ]
}

/// One timed run of `c`, with its proof; returns the kernel's ns/iteration.
fn measure(lb: &mut Lb, c: &Case, nat: &mut NatSim) -> Result<u64> {
    if c.new_flow {
        // The flows it re-creates need the guard's tokens, which the case
        // before may have drained (`syn_flood_refused`).
        lb.set_bucket(None)?;
        lb.reset_flows()?;
    }
    match c.setup {
        Setup::Plain => lb.set_bucket(None)?,
        Setup::FullTable => {
            lb.fill_flows()?;
            lb.set_bucket(None)?;
        }
        Setup::GuardEmpty => lb.set_bucket(Some(0))?,
    }
    let ipv6 = c.frame.get(12..14) == Some(&[0x86, 0xdd]);
    // The replay knows IPv4's keys only; IPv6's remote target has as many
    // backends, so its claims spread as widely.
    if c.new_flow && c.want == Want::Counter(Counter::RemoteNewFlow) && !ipv6 {
        let sim = lb.simulate_nat(c.repeat)?;
        ensure!(
            sim.exhausted == 0,
            "case {}: {} of the {} new remote flows would find their NAT probes taken; \
             widen the NAT range or lower --repeat-new",
            c.name,
            sim.exhausted,
            c.repeat
        );
        nat.flows += sim.flows;
        nat.probes += sim.probes;
        nat.max_probes = nat.max_probes.max(sim.max_probes);
    }
    // An IPv6 packet leaves the wrapper by tail calls: see `RESTORE_FIRST`.
    let first = c.kind == Kind::Wrapped && ipv6;
    if first {
        lb.set_scratch(&c.frame)?;
    }
    let new_flow = if c.new_flow { b::NEW_FLOW } else { 0 };
    lb.set_bench_config(new_flow | if first { b::RESTORE_FIRST } else { 0 })?;
    let flows_before = match c.want {
        Want::FlowEntries => lb.flow_count()?,
        _ => 0,
    };
    let before = lb.counts()?;
    let r = lb.run(c.prog, &c.frame, c.repeat)?;
    let d = lb.counts()?.minus(&before);
    let (counter, drop) = match c.want {
        Want::Counter(w) => (Some(w), None),
        Want::Drop(r) => (None, Some(r)),
        Want::Nothing | Want::FlowEntries => (None, None),
    };
    if c.want == Want::FlowEntries {
        let added = lb.flow_count()?.saturating_sub(flows_before);
        ensure!(
            added == c.repeat as usize,
            "case {}: {added} flows written for {} iterations",
            c.name,
            c.repeat
        );
    }
    // Every new flow into a full table replaces a half-open one.
    let also = (c.setup == Setup::FullTable).then_some(Counter::FlowEvicted);
    lb::check(&d, lb.cpu(), counter, drop, also, c.repeat)
        .with_context(|| format!("case {}", c.name))?;
    ensure!(
        r.action == c.action,
        "case {}: XDP action {} instead of {}",
        c.name,
        r.action,
        c.action
    );
    if first {
        let Want::Counter(want) = c.want else {
            bail!("case {}: an IPv6 case proves its path by a counter", c.name);
        };
        lb::check_out6(&r.out, &c.frame, want)
            .with_context(|| format!("case {}: the last iteration's output", c.name))?;
    } else {
        ensure!(
            r.out == c.frame,
            "case {}: the frame after the last iteration differs from the input \
             (a later iteration would not have seen the original packet)",
            c.name
        );
    }
    Ok(r.ns)
}

fn median(xs: &[f64]) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        f64::midpoint(v[n / 2 - 1], v[n / 2])
    }
}

fn min_max(xs: &[f64]) -> (f64, f64) {
    xs.iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &x| {
            (lo.min(x), hi.max(x))
        })
}

/// Raw samples (ns/iteration as the kernel reported them).
struct Samples {
    floor: Vec<f64>,
    restore: Vec<f64>,
    /// (case index, stage index) → samples.
    cases: Vec<Vec<Vec<f64>>>,
}

struct Outcome {
    samples: Samples,
    names: Vec<&'static str>,
    wrapped: Vec<bool>,
    sizes: Sizes,
    load_times: Vec<(u32, Duration)>,
    nat: NatSim,
    cpu_load: CpuLoad,
}

/// Where the bench CPU's time went while measuring (`/proc/stat`).
#[derive(Clone, Copy, Debug, Default)]
struct CpuLoad {
    steal_pct: f64,
    /// Non-idle time other than steal, minus what the bench itself used
    /// (its thread's CPU time): interrupts and other tasks.
    other_pct: f64,
}

/// (total, idle + iowait, steal) jiffies of `cpu` from /proc/stat.
fn cpu_jiffies(cpu: usize) -> Result<(u64, u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let tag = format!("cpu{cpu} ");
    let line = stat
        .lines()
        .find(|l| l.starts_with(&tag))
        .with_context(|| format!("no {tag}line in /proc/stat"))?;
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(str::parse)
        .collect::<Result<_, _>>()
        .context("parsing /proc/stat")?;
    ensure!(f.len() >= 8, "short /proc/stat line");
    Ok((f.iter().take(8).sum(), f[3] + f[4], f[7]))
}

/// CPU time (user + system) of the calling thread, in jiffies.
fn thread_jiffies() -> Result<u64> {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").context("thread stat")?;
    let rest = stat.rsplit_once(')').context("thread stat")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 of proc(5) are the 12th and 13th after the name.
    let user: u64 = f.get(11).context("utime")?.parse().context("utime")?;
    let sys: u64 = f.get(12).context("stime")?.parse().context("stime")?;
    Ok(user + sys)
}

fn pin(cpu: usize) -> Result<()> {
    // SAFETY: cpu_set_t is plain data; CPU_ZERO/CPU_SET only write into it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    ensure!(cpu < libc::CPU_SETSIZE as usize, "CPU {cpu} out of range");
    // SAFETY: `set` is a valid cpu_set_t and cpu < CPU_SETSIZE.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: pid 0 is the calling thread; `set` is valid for its size.
    let rc = unsafe { libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &raw const set) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("pinning to CPU {cpu}"));
    }
    // SAFETY: no preconditions.
    let now = unsafe { libc::sched_getcpu() };
    ensure!(
        usize::try_from(now).ok() == Some(cpu),
        "pinned to CPU {cpu} but running on {now}"
    );
    Ok(())
}

fn highest_allowed_cpu() -> Result<usize> {
    // SAFETY: as in `pin`.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: pid 0 is the calling thread; `set` is valid for its size.
    let rc = unsafe { libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &raw mut set) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context("sched_getaffinity");
    }
    (0..libc::CPU_SETSIZE as usize)
        .rev()
        // SAFETY: i < CPU_SETSIZE.
        .find(|&i| unsafe { libc::CPU_ISSET(i, &set) })
        .context("no CPU allowed")
}

/// The namespace `bpf_fib_lookup` answers from: `v0` is the uplink
/// (10.200.0.1/24 and `2001:db8::1/64`, the node's MAC) with permanent
/// neighbours for the client and the two peer nodes (the direct-return one
/// by both its addresses), forwarding on in both families (the helper
/// refuses without it).
fn namespace() -> Result<Netns> {
    let ns = Netns::create(&format!("{}xdp", unique_prefix("ohb")))?;
    let mac = |m: [u8; 6]| m.map(|b| format!("{b:02x}")).join(":");
    let ip = |a: [u8; 4]| a.map(|b| b.to_string()).join(".");
    ns.ip(&[
        "link",
        "add",
        "v0",
        "address",
        &mac(lb::NODE_MAC),
        "type",
        "veth",
        "peer",
        "name",
        "v1",
    ])?;
    for dev in ["v0", "v1"] {
        ns.ip(&["link", "set", dev, "up"])?;
    }
    ns.ip(&["addr", "add", "10.200.0.1/24", "dev", "v0"])?;
    ns.sysctl("net/ipv4/ip_forward", "1")?;
    let ip6 = |a: [u8; 16]| std::net::Ipv6Addr::from(a).to_string();
    ns.ip(&[
        "-6",
        "addr",
        "add",
        &format!("{}/64", ip6(lb::NODE_IP6)),
        "dev",
        "v0",
        "nodad",
    ])?;
    // Permanent neighbours for the peers of both families.
    for (addr, m) in [
        (ip(lb::PEER_NODE), lb::PEER_NODE_MAC),
        (ip(lb::DIRECT_NODE), lb::DIRECT_NODE_MAC),
        (ip(lb::CLIENT), lb::CLIENT_MAC),
        (ip6(lb::DIRECT_NODE6), lb::DIRECT_NODE_MAC),
        (ip6(lb::PEER_NODE6), lb::PEER_NODE_MAC),
    ] {
        ns.ip(&[
            "neigh",
            "add",
            &addr,
            "lladdr",
            &mac(m),
            "dev",
            "v0",
            "nud",
            "permanent",
        ])?;
    }
    ns.sysctl("net/ipv6/conf/all/forwarding", "1")?;
    Ok(ns)
}

fn bench(args: &Args, cpu: usize) -> Result<Outcome> {
    pin(cpu)?;
    let max = *args.services.last().context("no service count")?;
    // One loaded copy of the data path per service count, all measured in
    // the same rounds: a difference between service counts cannot come from
    // the machine getting busier or quieter between stages.
    let file = match &args.object {
        Some(p) => Some(std::fs::read(p).with_context(|| format!("reading {}", p.display()))?),
        None => None,
    };
    let object = match &file {
        Some(bytes) => bytes.as_slice(),
        None => onehop_benches::ebpf::object()?,
    };
    let mut lbs = Vec::new();
    let mut load_times = Vec::new();
    for &n in &args.services {
        let t = Instant::now();
        let mut lb = Lb::load(object, Sizes::for_services(n), cpu)?;
        lb.provision(n)?;
        lb.reset_flows()?;
        load_times.push((n, t.elapsed()));
        eprintln!("bench-xdp: {n} services loaded in {:.1?}", t.elapsed());
        lbs.push(lb);
    }
    let cases: Vec<Case> = cases(args)
        .into_iter()
        .filter(|c| {
            matches!(c.kind, Kind::Floor | Kind::Restore)
                || args.only.is_empty()
                || args.only.iter().any(|o| o == c.name)
        })
        .collect();
    if let Some(o) = args
        .only
        .iter()
        .find(|o| !cases.iter().any(|c| c.name == o.as_str()))
    {
        bail!("--only: no case named {o:?}");
    }
    let mut samples = Samples {
        floor: Vec::new(),
        restore: Vec::new(),
        cases: vec![vec![Vec::new(); args.services.len()]; cases.len()],
    };
    let mut nat = NatSim::default();
    // One untimed round (proofs still checked): warms the code paths, and
    // brings the LRU maps' free lists into the order they keep for the rest
    // of the run (a freshly created map hands out elements in allocation
    // order, which made the very first new-flow run ~35% cheaper).
    for lb in &mut lbs {
        for c in &cases {
            measure(lb, c, &mut NatSim::default())?;
        }
    }
    eprintln!("bench-xdp: measuring");
    let (t0, idle0, steal0) = cpu_jiffies(cpu)?;
    let own0 = thread_jiffies()?;
    let stages = lbs.len();
    let slots = cases.len() * stages;
    for round in 0..args.runs {
        // Round-robin over (case, service count): a case runs at every
        // service count back to back, and each round starts one step later,
        // so nothing always follows the same predecessor.
        for k in 0..slots {
            let j = (k + round) % slots;
            let (i, stage) = (j / stages, j % stages);
            let c = &cases[i];
            #[expect(clippy::cast_precision_loss, reason = "ns per packet")]
            let ns = measure(&mut lbs[stage], c, &mut nat)? as f64;
            match c.kind {
                Kind::Floor => samples.floor.push(ns),
                Kind::Restore => samples.restore.push(ns),
                Kind::Wrapped | Kind::Direct => samples.cases[i][stage].push(ns),
            }
        }
    }
    let (t1, idle1, steal1) = cpu_jiffies(cpu)?;
    let own1 = thread_jiffies()?;
    #[expect(clippy::cast_precision_loss, reason = "percentages")]
    let cpu_load = {
        let total = (t1 - t0).max(1) as f64;
        let busy = (t1 - t0) - (idle1 - idle0) - (steal1 - steal0);
        CpuLoad {
            steal_pct: 100.0 * (steal1 - steal0) as f64 / total,
            other_pct: 100.0 * busy.saturating_sub(own1 - own0) as f64 / total,
        }
    };
    Ok(Outcome {
        cpu_load,
        names: cases.iter().map(|c| c.name).collect(),
        wrapped: cases.iter().map(|c| c.kind == Kind::Wrapped).collect(),
        samples,
        sizes: Sizes::for_services(max),
        load_times,
        nat,
    })
}

fn report(args: &Args, cpu: usize, o: &Outcome, elapsed: Duration) -> Result<String> {
    let restore = median(&o.samples.restore);
    let floor = median(&o.samples.floor);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut s = String::new();
    writeln!(
        s,
        "# onehop bench-xdp: kernel {}, CPU {cpu}, {} runs, repeat {} ({} for new flows)",
        kernel.trim(),
        args.runs,
        args.repeat,
        args.repeat_new
    )?;
    if let Some(p) = &args.object {
        writeln!(s, "# object: {} (not the embedded one)", p.display())?;
    }
    writeln!(
        s,
        "# maps: maglev {} slots (tables of {} / {} slots), backends {}, conntrack {}, rev_nat {}; \
         NAT ports {}-{}",
        o.sizes.maglev_slots,
        o.sizes.table_target,
        o.sizes.table_filler,
        o.sizes.backends,
        m::CONNTRACK_MAX,
        m::REV_NAT_MAX,
        lb::NAT_MIN,
        lb::NAT_MAX
    )?;
    #[expect(clippy::cast_precision_loss, reason = "a ratio for display")]
    let mean_probes = o.nat.probes as f64 / o.nat.flows.max(1) as f64;
    writeln!(
        s,
        "# new_flow_remote NAT port probes (exact userspace replay of every run): mean {mean_probes:.3}, \
         max {} of {}, exhausted {}",
        o.nat.max_probes,
        lb_common::hash::NAT_PROBES,
        o.nat.exhausted
    )?;
    writeln!(s, "case=floor_xdp_pass services=0 ns_per_pkt={floor:.1}")?;
    writeln!(s, "restore_overhead ns_per_pkt={restore:.1}")?;
    let net = |i: usize, stage: usize| -> Vec<f64> {
        let sub = if o.wrapped[i] { restore } else { 0.0 };
        o.samples.cases[i][stage].iter().map(|x| x - sub).collect()
    };
    let measured: Vec<usize> = (0..o.names.len())
        .filter(|&i| o.samples.cases[i].iter().any(|v| !v.is_empty()))
        .collect();
    for (stage, n) in args.services.iter().enumerate() {
        for &i in &measured {
            writeln!(
                s,
                "case={} services={n} ns_per_pkt={:.1}",
                o.names[i],
                median(&net(i, stage))
            )?;
        }
    }
    summary(&mut s, args, cpu, o, &measured, floor, restore)?;
    let loads: Vec<String> = o
        .load_times
        .iter()
        .map(|(n, t)| format!("{n}: {:.1}s", t.as_secs_f64()))
        .collect();
    writeln!(
        s,
        "# loading (object + services): {}; total {:.1}s",
        loads.join(", "),
        elapsed.as_secs_f64()
    )?;
    Ok(s)
}

fn main() -> Result<()> {
    let args = Args::parse();
    let started = Instant::now();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("bench-xdp needs root (BPF programs, network namespaces)");
    }
    ensure!(args.runs > 0, "--runs must be at least 1");
    ensure!(
        args.repeat_new > 0 && args.repeat_new <= SEQ_PORTS,
        "--repeat-new must be in 1..={SEQ_PORTS}: beyond that the new-flow \
         sequence wraps and iterations reuse 5-tuples"
    );
    ensure!(
        !args.services.is_empty()
            && args.services[0] >= lb::TARGETS
            && args.services.windows(2).all(|w| w[0] < w[1]),
        "--services must be ascending and start at {} or more",
        lb::TARGETS
    );
    let cpu = match args.cpu {
        Some(c) => c,
        None => highest_allowed_cpu()?,
    };
    // The whole process, so the namespace thread starts there too (it pins
    // itself again and checks where it runs).
    pin(cpu)?;
    let ns = namespace()?;
    let outcome = in_netns(&ns, || bench(&args, cpu))??;
    drop(ns);
    let text = report(&args, cpu, &outcome, started.elapsed())?;
    print!("{text}");
    if let Some(dir) = args.out.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(&args.out, &text).with_context(|| format!("writing {}", args.out.display()))?;
    eprintln!("bench-xdp: wrote {}", args.out.display());
    Ok(())
}

/// The summary table: per case and service count median [min-max], ratios.
fn summary(
    s: &mut String,
    args: &Args,
    cpu: usize,
    o: &Outcome,
    measured: &[usize],
    floor: f64,
    restore: f64,
) -> Result<()> {
    let net = |i: usize, stage: usize| -> Vec<f64> {
        let sub = if o.wrapped[i] { restore } else { 0.0 };
        o.samples.cases[i][stage].iter().map(|x| x - sub).collect()
    };
    writeln!(s)?;
    writeln!(
        s,
        "# summary: median [min-max over {} runs] ns/packet, restore overhead subtracted \
         for wrapper cases; floor {floor:.1} ns (not subtracted). Ratios: of the medians; \
         median of the per-round ratios (paired); of the minima.",
        args.runs
    )?;
    writeln!(
        s,
        "# CPU {cpu} during the measurement: {:.1}% steal (hypervisor), {:.1}% busy with other work",
        o.cpu_load.steal_pct, o.cpu_load.other_pct
    )?;
    let last = args.services.len() - 1;
    let (nl, n0) = (args.services[last], args.services[0]);
    write!(s, "{:<20}", "case")?;
    for n in &args.services {
        write!(s, " {:>20}", format!("{n} svc"))?;
    }
    writeln!(
        s,
        " {:>14} {:>12}",
        format!("{nl}/{n0} med"),
        "paired (min)"
    )?;
    for &i in measured {
        write!(s, "{:<20}", o.names[i])?;
        for stage in 0..args.services.len() {
            let v = net(i, stage);
            let (lo, hi) = min_max(&v);
            write!(s, " {:>20}", format!("{:.1} [{lo:.0}-{hi:.0}]", median(&v)))?;
        }
        let (a, b) = (net(i, last), net(i, 0));
        let ratio = median(&a) / median(&b);
        // Run r of every service count ran back to back (same round), so
        // their ratio is free of the machine's slower drifts.
        let paired: Vec<f64> = a.iter().zip(&b).map(|(x, y)| x / y).collect();
        let ratio_min = min_max(&a).0 / min_max(&b).0;
        writeln!(
            s,
            " {ratio:>14.2} {:>12}",
            format!("{:.2} ({ratio_min:.2})", median(&paired))
        )?;
    }
    above_floor(s, args, o, measured, &net)?;
    let (lo, hi) = min_max(&o.samples.floor);
    writeln!(s, "{:<20} {floor:.1} [{lo:.0}-{hi:.0}]", "floor_xdp_pass")?;
    let (lo, hi) = min_max(&o.samples.restore);
    writeln!(
        s,
        "{:<20} {restore:.1} [{lo:.0}-{hi:.0}]",
        "restore_overhead"
    )?;
    Ok(())
}

/// Each new-flow case against `flow_write_floor` at each service count:
/// the median of the per-round ratios (both ran in the same round), so the
/// machine's drift between rounds cancels out.
fn above_floor(
    s: &mut String,
    args: &Args,
    o: &Outcome,
    measured: &[usize],
    net: &dyn Fn(usize, usize) -> Vec<f64>,
) -> Result<()> {
    let Some(&f) = measured.iter().find(|&&i| o.names[i] == FLOW_FLOOR) else {
        return Ok(());
    };
    writeln!(
        s,
        "# new flows / {FLOW_FLOOR} (one entry written, nothing else): median of the per-round ratios"
    )?;
    for &i in measured {
        if i == f || !o.names[i].starts_with("new_flow") {
            continue;
        }
        write!(s, "{:<20}", o.names[i])?;
        for stage in 0..args.services.len() {
            let paired: Vec<f64> = net(i, stage)
                .iter()
                .zip(&net(f, stage))
                .map(|(x, y)| x / y)
                .collect();
            write!(s, " {:>20}", format!("{:.2}x", median(&paired)))?;
        }
        writeln!(s)?;
    }
    Ok(())
}
