//! `bench-e2e`: onehop against kube-proxy (iptables and nftables modes) and plain routing, on
//! one namespace topology, for N services. See benches/README.md for the method.
//!
//! Order of work: for each N, for each path: install, then `runs` rounds of every workload,
//! then uninstall (RAII). Run i of every path at one N is compared pair by pair.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use clap::Parser;
use lb_common::{Counter, DropReason};
use lb_userspace::dataplane::{
    maps::{Maps, PinDir},
    status::Snapshot,
};
use onehop_benches::e2e::{
    control,
    control_k8s::{self, KubeControlPlane},
    http, kubeproxy,
    load::{self, Flows},
    paths::{self, Installed, Target, World},
    pinned::{self, Locality},
    plot,
    report::{self, Samples},
    tcp,
    xdpgen::Generator,
    xdpstats,
};
use onehop_testkit::cluster::NODE_INTERFACE;

#[derive(Parser, Debug)]
#[command(about = "End-to-end benchmark: onehop vs kube-proxy iptables/nftables vs routing")]
struct Args {
    /// Fewer, shorter runs (about 3 minutes on 2 cores), without the steady-state run.
    #[arg(long)]
    quick: bool,
    /// Runs per (path, N) and workload (at least 3 for the tables).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Service counts, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "1,1000,10000")]
    services: Vec<u32>,
    /// Paths, comma separated (onehop: full NAT to remote backends; onehop-direct: direct
    /// server return to them; iptables, nftables, routing; also routing-xdp: routing with a
    /// pass-through XDP program on the nodes, to isolate veth's XDP cost).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "onehop,onehop-direct,iptables,nftables,routing"
    )]
    paths: Vec<String>,
    /// UDP generator: `xdp` (frames reach the nodes as XDP frames, as from a NIC) or
    /// `socket` (`sendmmsg` on a packet socket; frames arrive as socket buffers). See
    /// benches/README.md.
    #[arg(long, default_value = "xdp")]
    generator: Generator,
    /// Seconds per measurement.
    #[arg(long, default_value_t = 2)]
    secs: u32,
    /// Offered rate of the new-flows workload, flows/s.
    #[arg(long, default_value_t = 150_000)]
    flow_rate: u64,
    /// Offered rate of the CPU workload (new flows), packets/s.
    #[arg(long, default_value_t = 20_000)]
    cpu_rate: u64,
    /// Workloads, comma separated (new, established, cpu, http, tcp, remote, steady); tables
    /// of the others stay empty.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "new,established,cpu,http,tcp,remote,steady"
    )]
    workloads: Vec<Workload>,
    /// Offered rate of the steady-state workload, new flows/s.
    #[arg(long, default_value_t = 4_000)]
    steady_rate: u64,
    /// Length of the steady-state workload, seconds (measured in windows of `--secs`). Longer
    /// than the UDP flow timeout (30 s), so flows expire and their state (onehop: NAT ports)
    /// is taken again while it runs.
    #[arg(long, default_value_t = 40)]
    steady_secs: u32,
    /// Concurrent wrk connections. 1: every request waits for nothing but the path (with
    /// more, the latency is mostly queueing behind the other connections, and a path that
    /// completes more requests per second shows the longer queue).
    #[arg(long, default_value_t = 1)]
    wrk_conns: u32,
    /// Short TCP connections kept in flight by the connection generator (see e2e/tcp.rs).
    #[arg(long, default_value_t = 128)]
    tcp_conns: usize,
    /// Longest a baseline may take to load its rules, seconds (longer: reported as n/a).
    #[arg(long, default_value_t = 120)]
    install_limit_s: u64,
    /// Services for the control-plane measurement (0 skips it).
    #[arg(long, default_value_t = 10_000)]
    cp_services: u32,
    /// Backends per service for the control-plane measurement.
    #[arg(long, default_value_t = 10)]
    cp_backends: u32,
    /// Sources of the control-plane measurement, comma separated: `file` (services file
    /// replaced on a running agent), `kubernetes` (agent started against the test API server
    /// seeded with the same services and EndpointSlices).
    #[arg(long, value_delimiter = ',', default_value = "file,kubernetes")]
    cp_sources: Vec<String>,
    /// Another onehop binary (an earlier build) to measure the Kubernetes-source control
    /// plane with too, just before this build, in the same run: before/after figures taken
    /// side by side on the same machine load (`baseline` lines in runs.log).
    #[arg(long)]
    cp_baseline: Option<PathBuf>,
    /// Write the generated kube-proxy rules for every --services count to this directory
    /// and exit (what the baselines load, for inspection).
    #[arg(long)]
    dump_rules: Option<PathBuf>,
    /// Re-render the tables and plots of an earlier run from its `runs.log` (in this
    /// directory, written back there) instead of measuring. `--services`, `--paths`,
    /// `--runs` and the rates should match that run (they label the tables).
    #[arg(long)]
    replot: Option<PathBuf>,
    /// The onehop binary (default: next to this one).
    #[arg(long)]
    onehop: Option<PathBuf>,
    /// Output directory (default benches/results/<date>-<short commit>).
    #[arg(long)]
    out: Option<PathBuf>,
}

/// A workload of `run_path` (benches/README.md, "Workloads").
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Workload {
    /// New UDP flows per second.
    New,
    /// Established-flow packets per second, local and remote backend.
    Established,
    /// CPU per forwarded packet at a fixed rate of new flows.
    Cpu,
    /// HTTP latency with wrk.
    Http,
    /// Short TCP connections per second.
    Tcp,
    /// New flows/s, CPU per new flow, HTTP latency and short TCP connections/s to the remote
    /// test service (every endpoint on node2).
    Remote,
    /// New UDP flows per second over a longer run, flow tables never emptied.
    Steady,
}

#[derive(Default)]
struct Results {
    new_flows: Samples,
    established_local: Samples,
    established_remote: Samples,
    cpu: Samples,
    cpu_thread: Samples,
    http_p50: Samples,
    http_p99: Samples,
    http_rps: Samples,
    tcp_pods: Samples,
    tcp_client: Samples,
    tcp_failures: Samples,
    tcp_cpu: Samples,
    tcp_cpu_thread: Samples,
    steady_last: Samples,
    steady_min: Samples,
    remote_new: Samples,
    remote_cpu: Samples,
    remote_cpu_thread: Samples,
    /// onehop's `lb_ingress` ns per packet on node1 (the announcer) and node2, from the
    /// kernel's program statistics, in the remote CPU runs.
    remote_xdp_node1: Samples,
    remote_xdp_node2: Samples,
    remote_http_p50: Samples,
    remote_http_p99: Samples,
    remote_http_rps: Samples,
    remote_tcp_pods: Samples,
    remote_tcp_cpu_thread: Samples,
    install: Samples,
    agent_start: Samples,
    notes: BTreeMap<(String, u32), String>,
    /// The UDP generator, from the `generator:` line of `runs.log` when replotting.
    generator: Option<String>,
    control: Option<control::ControlPlane>,
    control_k8s: Option<KubeControlPlane>,
    log: String,
}

/// One measurement.
struct Measured {
    /// Delivered packets per second (at the pods).
    per_s: f64,
    /// Machine-wide system + irq + softirq ns per delivered packet, less the same window's
    /// share measured idle just before.
    cpu_ns: f64,
    /// The sending thread's CPU ns per delivered packet.
    thread_ns: f64,
    sent: load::Sent,
}

/// A fresh start for one measurement: empty flow tables (kernel conntrack, onehop's maps), then
/// a short warm-up so neighbour entries exist on the nodes and pods.
fn fresh(world: &World, inst: &Installed, targets: &[Target]) -> Result<()> {
    inst.forget_flows(world)?;
    world.send(targets, Flows::New, Some(2000), Duration::from_millis(200))?;
    std::thread::sleep(Duration::from_millis(200));
    Ok(())
}

/// One window of `flows` to `targets` at `rate`, after `fresh` (or `pinned::find`).
fn window(
    world: &World,
    targets: &[Target],
    flows: Flows,
    rate: Option<u64>,
    secs: u32,
    idle_baseline: bool,
) -> Result<Measured> {
    let window = Duration::from_secs(secs.into());
    let idle_ticks = if idle_baseline {
        // What the rest of the machine (other processes) costs in system time meanwhile.
        let (i0, _) = load::cpu_ticks()?;
        std::thread::sleep(window);
        let (i1, _) = load::cpu_ticks()?;
        i1 - i0
    } else {
        0
    };
    let rx0 = load::pod_rx(&world.topo)?;
    let (c0, _) = load::cpu_ticks()?;
    let sent = world.send(targets, flows, rate, window)?;
    // Frames still in flight through the namespaces.
    std::thread::sleep(Duration::from_millis(100));
    let (c1, _) = load::cpu_ticks()?;
    let delivered: u64 = load::pod_rx_since(&world.topo, &rx0)?.iter().sum();
    #[expect(clippy::cast_precision_loss, reason = "counts far below 2^52")]
    let m = Measured {
        per_s: delivered as f64 / sent.secs,
        cpu_ns: (c1 - c0).saturating_sub(idle_ticks) as f64 * load::ns_per_tick()
            / delivered.max(1) as f64,
        thread_ns: sent.thread_cpu_ns as f64 / delivered.max(1) as f64,
        sent,
    };
    Ok(m)
}

/// Established-flow saturation on a flow whose backend is `locality` (see `pinned`); returns
/// the measurement and the pod that received it.
fn established(
    world: &World,
    inst: &Installed,
    locality: Locality,
    secs: u32,
) -> Result<(Measured, usize)> {
    fresh(world, inst, &inst.udp)?;
    let flow = pinned::find(world, &inst.udp, locality)?;
    let m = window(world, &[flow.target], flow.flows(), None, secs, false)?;
    Ok((m, flow.pod))
}

/// Sends bursts of new flows until every pod has received some; returns the seconds taken.
fn wait_serving(world: &World, targets: &[Target], timeout: Duration) -> Result<f64> {
    let start = Instant::now();
    loop {
        let before = load::pod_rx(&world.topo)?;
        world.send(targets, Flows::New, Some(5000), Duration::from_millis(100))?;
        std::thread::sleep(Duration::from_millis(100));
        let got = load::pod_rx_since(&world.topo, &before)?;
        if got.iter().all(|&n| n > 0) {
            return Ok(start.elapsed().as_secs_f64());
        }
        anyhow::ensure!(
            start.elapsed() < timeout,
            "not every pod receives new flows after {timeout:?}: {got:?}"
        );
    }
}

fn run_path(
    args: &Args,
    world: &World,
    path: &dyn paths::DataPath,
    n: u32,
    services: &[onehop_benches::e2e::kubeproxy::Service],
    res: &mut Results,
) -> Result<()> {
    let name = path.name();
    let t = Instant::now();
    let inst: Installed = path.install(world, services)?;
    let install_s = t.elapsed().as_secs_f64();
    res.install.push(name, n, inst.install_s);
    if let Some(s) = inst.agent_start_s {
        res.agent_start.push(name, n, s);
    }
    // "Installed" is each path's own signal; measure only once every pod, local and
    // remote, really receives new flows through it.
    let serving_s = wait_serving(world, &inst.udp, Duration::from_mins(3))?;
    let _ = writeln!(
        res.log,
        "{name} N={n}: every pod receiving {serving_s:.2}s after the install"
    );
    let _ = writeln!(
        res.log,
        "{name} N={n}: installed in {install_s:.2}s (path ready {:.2}s){}",
        inst.install_s,
        inst.agent_start_s
            .map(|s| format!(" agent_start={s:.3}s"))
            .unwrap_or_default()
    );
    println!("  {name}: installed in {install_s:.2}s");
    let on = |w: Workload| args.workloads.contains(&w);
    for r in 0..args.runs {
        let t = &inst.udp;
        // The runs.log line of this run: `key=value` pairs that `parse_log` reads back.
        let mut line = format!("{name} N={n} run={r}:");
        if on(Workload::New) {
            fresh(world, &inst, t)?;
            let new = window(world, t, Flows::New, Some(args.flow_rate), args.secs, false)?;
            res.new_flows.push(name, n, new.per_s);
            #[expect(clippy::cast_precision_loss, reason = "counts")]
            let offered = new.sent.frames as f64 / new.sent.secs;
            let _ = write!(line, " new_flows/s={:.0} (offered {offered:.0})", new.per_s);
        }
        if on(Workload::Established) {
            for locality in [Locality::Local, Locality::Remote] {
                let (est, pod) = established(world, &inst, locality, args.secs)?;
                let samples = match locality {
                    Locality::Local => &mut res.established_local,
                    Locality::Remote => &mut res.established_remote,
                };
                samples.push(name, n, est.per_s);
                #[expect(clippy::cast_precision_loss, reason = "counts")]
                let sent = est.sent.frames as f64 / est.sent.secs;
                let _ = write!(
                    line,
                    " established_{}_pps={:.0} (sent {sent:.0}/s, pod {pod})",
                    locality.name(),
                    est.per_s
                );
            }
        }
        if on(Workload::Cpu) {
            fresh(world, &inst, t)?;
            let cpu = window(world, t, Flows::New, Some(args.cpu_rate), args.secs, true)?;
            res.cpu.push(name, n, cpu.cpu_ns);
            res.cpu_thread.push(name, n, cpu.thread_ns);
            let _ = write!(
                line,
                " cpu_ns_per_pkt={:.0} sender_ns_per_pkt={:.0} (delivered {:.0}/s)",
                cpu.cpu_ns, cpu.thread_ns, cpu.per_s
            );
        }
        if on(Workload::Http) {
            fresh(world, &inst, t)?;
            let h0 = tcp::Handshakes::start(&world.topo)?;
            let w = http::wrk(&world.topo, inst.http[0].addr, args.secs, args.wrk_conns)?;
            let handshakes = h0.since(&world.topo)?;
            res.http_p50.push(name, n, w.p50_us);
            res.http_p99.push(name, n, w.p99_us);
            res.http_rps.push(name, n, w.requests_per_s);
            let _ = write!(
                line,
                " http p50={:.0}us p99={:.0}us rps={:.0} errors={} {}",
                w.p50_us,
                w.p99_us,
                w.requests_per_s,
                w.errors,
                handshakes.fields()
            );
        }
        if on(Workload::Remote) {
            remote_udp(world, &inst, name, n, args, res, &mut line)?;
        }
        record(res, &line);
        tcp_runs(args, world, &inst, name, n, r, res)?;
    }
    if on(Workload::Steady) {
        let line = steady(args, world, &inst, name, n, res)?;
        record(res, &line);
    }
    drop(inst);
    Ok(())
}

/// The remote workloads over UDP and HTTP, to the remote test service (every endpoint on
/// node2): new flows/s at `--flow-rate` (onehop's counters say how many found no NAT port:
/// 2 s at 150,000/s is 150,000 new flows per remote backend, more than the 64,512 NAT ports
/// full NAT has for each), CPU per new flow at `--cpu-rate` (the generator thread, which holds
/// both nodes' receive paths, and for onehop its `lb_ingress` on each node from the kernel's
/// program statistics), and HTTP latency. Appends to `line`.
fn remote_udp(
    world: &World,
    inst: &Installed,
    name: &str,
    n: u32,
    args: &Args,
    res: &mut Results,
    line: &mut String,
) -> Result<()> {
    let t = &inst.remote_udp;
    fresh(world, inst, t)?;
    let before = flow_counters(world, name)?;
    let new = window(world, t, Flows::New, Some(args.flow_rate), args.secs, false)?;
    res.remote_new.push(name, n, new.per_s);
    #[expect(clippy::cast_precision_loss, reason = "counts")]
    let offered = new.sent.frames as f64 / new.sent.secs;
    let _ = write!(
        line,
        " remote_new_flows/s={:.0} (offered {offered:.0})",
        new.per_s
    );
    if let (Some(b), Some(a)) = (before, flow_counters(world, name)?) {
        let _ = write!(
            line,
            " (node1: remote_new_flow={} direct_new_flow={} nat_exhausted={} flow_table_full={} drops={})",
            a.counter(Counter::RemoteNewFlow) - b.counter(Counter::RemoteNewFlow),
            a.counter(Counter::DirectNewFlow) - b.counter(Counter::DirectNewFlow),
            a.drop_count(DropReason::NatExhausted) - b.drop_count(DropReason::NatExhausted),
            a.drop_count(DropReason::FlowTableFull) - b.drop_count(DropReason::FlowTableFull),
            DropReason::ALL
                .iter()
                .map(|&r| a.drop_count(r) - b.drop_count(r))
                .sum::<u64>(),
        );
    }
    fresh(world, inst, t)?;
    let onehop = report::is_onehop(name);
    // Held only around this window: it makes every BPF program on the machine slower.
    let stats = onehop
        .then(onehop_benches::e2e::xdpstats::enable)
        .transpose()?;
    let x0 = if onehop { Some(xdp_runs(world)?) } else { None };
    let cpu = window(world, t, Flows::New, Some(args.cpu_rate), args.secs, true)?;
    let x1 = if onehop { Some(xdp_runs(world)?) } else { None };
    drop(stats);
    res.remote_cpu.push(name, n, cpu.cpu_ns);
    res.remote_cpu_thread.push(name, n, cpu.thread_ns);
    let _ = write!(
        line,
        " remote_cpu_ns_per_pkt={:.0} remote_sender_ns_per_pkt={:.0} (delivered {:.0}/s)",
        cpu.cpu_ns, cpu.thread_ns, cpu.per_s
    );
    if let (Some([a1, a2]), Some([b1, b2])) = (x0, x1) {
        let per = |b: &xdpstats::RunStats, a: &xdpstats::RunStats| {
            b.ns_per_run_since(a).unwrap_or(f64::NAN)
        };
        let (n1, n2) = (per(&b1, &a1), per(&b2, &a2));
        res.remote_xdp_node1.push(name, n, n1);
        res.remote_xdp_node2.push(name, n, n2);
        let _ = write!(
            line,
            " remote_xdp_node1_ns={n1:.0} remote_xdp_node2_ns={n2:.0} (runs {} / {})",
            b1.count - a1.count,
            b2.count - a2.count
        );
    }
    fresh(world, inst, t)?;
    let h0 = tcp::Handshakes::start(&world.topo)?;
    let w = http::wrk(
        &world.topo,
        inst.remote_http[0].addr,
        args.secs,
        args.wrk_conns,
    )?;
    let handshakes = h0.since(&world.topo)?;
    res.remote_http_p50.push(name, n, w.p50_us);
    res.remote_http_p99.push(name, n, w.p99_us);
    res.remote_http_rps.push(name, n, w.requests_per_s);
    let _ = write!(
        line,
        " remote_http remote_p50={:.0}us remote_p99={:.0}us remote_rps={:.0} errors={} {}",
        w.p50_us,
        w.p99_us,
        w.requests_per_s,
        w.errors,
        handshakes.fields()
    );
    Ok(())
}

/// Run statistics of node1's and node2's `lb_ingress`.
fn xdp_runs(world: &World) -> Result<[xdpstats::RunStats; 2]> {
    Ok([
        xdpstats::ingress(world.pin_root(1))?,
        xdpstats::ingress(world.pin_root(2))?,
    ])
}

/// Run `r`'s short-TCP workloads (`tcp`, and `remote`'s to the remote test service), each
/// its own `runs.log` line.
fn tcp_runs(
    args: &Args,
    world: &World,
    inst: &Installed,
    name: &str,
    n: u32,
    r: usize,
    res: &mut Results,
) -> Result<()> {
    if args.workloads.contains(&Workload::Tcp) {
        let tcp = tcp::measure(world, inst, args.tcp_conns, args.secs)?;
        res.tcp_pods.push(name, n, tcp.pods_per_s);
        res.tcp_client.push(name, n, tcp.client_per_s);
        #[expect(clippy::cast_precision_loss, reason = "counts")]
        res.tcp_failures
            .push(name, n, tcp.sent.failures() as f64 / tcp.sent.secs);
        res.tcp_cpu.push(name, n, tcp.cpu_ns);
        res.tcp_cpu_thread.push(name, n, tcp.thread_ns);
        record(res, &tcp_line(name, n, r, "tcp", &tcp));
    }
    if args.workloads.contains(&Workload::Remote) {
        let tcp = tcp::measure_to(world, inst, &inst.remote_http, args.tcp_conns, args.secs)?;
        res.remote_tcp_pods.push(name, n, tcp.pods_per_s);
        res.remote_tcp_cpu_thread.push(name, n, tcp.thread_ns);
        record(res, &tcp_line(name, n, r, "tcp_remote", &tcp));
    }
    Ok(())
}

/// Shows a `runs.log` line and keeps it.
fn record(res: &mut Results, line: &str) {
    println!("    {line}");
    let _ = writeln!(res.log, "{line}");
}

/// onehop's counters that tell what its flow state did, from node1's pinned maps: `None` for
/// the other paths.
fn flow_counters(world: &World, name: &str) -> Result<Option<Snapshot>> {
    if !report::is_onehop(name) {
        return Ok(None);
    }
    let maps = Maps::open(&PinDir::new(world.pin_root(1), NODE_INTERFACE))?;
    Ok(Some(Snapshot::read(&maps)?))
}

/// The steady-state workload, once per (path, N) after the runs: new UDP flows at
/// `--steady-rate` for `--steady-secs`, in windows of `--secs`, with the flow tables as the
/// runs left them — emptied neither before nor during, so flows expire and their state is
/// reclaimed while it runs (every other workload starts from empty tables). Returns the
/// `runs.log` line.
fn steady(
    args: &Args,
    world: &World,
    inst: &Installed,
    name: &str,
    n: u32,
    res: &mut Results,
) -> Result<String> {
    let before = flow_counters(world, name)?;
    let windows = (args.steady_secs / args.secs).max(1);
    let mut per_s = Vec::new();
    let (mut frames, mut secs) = (0, 0.0);
    for _ in 0..windows {
        let m = window(
            world,
            &inst.udp,
            Flows::New,
            Some(args.steady_rate),
            args.secs,
            false,
        )?;
        per_s.push(m.per_s);
        frames += m.sent.frames;
        secs += m.sent.secs;
    }
    let last = per_s.last().copied().unwrap_or_default();
    let min = per_s.iter().copied().fold(f64::INFINITY, f64::min);
    res.steady_last.push(name, n, last);
    res.steady_min.push(name, n, min);
    #[expect(clippy::cast_precision_loss, reason = "counts")]
    let offered = frames as f64 / secs;
    let mut line = format!(
        "{name} N={n} steady: steady_last/s={last:.0} steady_min/s={min:.0} (offered {offered:.0}/s for {secs:.0}s, per window {:?})",
        per_s.iter().map(|v| v.round()).collect::<Vec<_>>()
    );
    if let (Some(b), Some(a)) = (before, flow_counters(world, name)?) {
        let _ = write!(
            line,
            " nat_exhausted={} nat_port_reclaimed={} flow_expired={} remote_new_flow={} direct_new_flow={} conntrack_entries={} rev_nat_entries={}",
            a.drop_count(DropReason::NatExhausted) - b.drop_count(DropReason::NatExhausted),
            a.counter(Counter::NatPortReclaimed) - b.counter(Counter::NatPortReclaimed),
            a.counter(Counter::FlowExpired) - b.counter(Counter::FlowExpired),
            a.counter(Counter::RemoteNewFlow) - b.counter(Counter::RemoteNewFlow),
            a.counter(Counter::DirectNewFlow) - b.counter(Counter::DirectNewFlow),
            a.conntrack_entries,
            a.rev_nat_entries,
        );
    }
    Ok(line)
}

/// The runs.log line of one short-TCP run (parsed back by `parse_log`); `what` is `tcp` or
/// `tcp_remote`.
fn tcp_line(name: &str, n: u32, r: usize, what: &str, t: &tcp::TcpMeasured) -> String {
    #[expect(clippy::cast_precision_loss, reason = "counts")]
    let failures_per_s = t.sent.failures() as f64 / t.sent.secs;
    format!(
        "{name} N={n} run={r} {what}: conns/s_pods={:.0} conns/s_client={:.0} failures/s={failures_per_s:.1} (timeouts {} errors [{}] in flight at the end {}) cpu_ns_per_conn={:.0} sender_ns_per_conn={:.0} per_pod={:?} listen_drops={} {}",
        t.pods_per_s,
        t.client_per_s,
        t.sent.timeouts,
        t.sent.error_text(),
        t.sent.abandoned,
        t.cpu_ns,
        t.thread_ns,
        t.per_pod,
        t.listen_drops,
        t.handshakes.fields()
    )
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_owned())
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, std::num::NonZero::get);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| m.lines().next().map(str::to_owned))
        .unwrap_or_default();
    let iptables = std::process::Command::new("iptables")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let nft = std::process::Command::new("nft")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    format!(
        "cpu: {cpu}\ncores: {cores}\nkernel: {}\n{mem}\n{iptables}\n{nft}\n",
        kernel.trim()
    )
}

fn default_out() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let commit = std::process::Command::new("git")
        .current_dir(root)
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .map_or_else(
            |_| "unknown".into(),
            |o| String::from_utf8_lossy(&o.stdout).trim().to_owned(),
        );
    let date = std::process::Command::new("date")
        .arg("+%F")
        .output()
        .map_or_else(
            |_| "undated".into(),
            |o| String::from_utf8_lossy(&o.stdout).trim().to_owned(),
        );
    root.join("results").join(format!("{date}-{commit}"))
}

#[expect(clippy::too_many_lines, reason = "one table after another")]
fn write_report(args: &Args, res: &Results, out: &Path) -> Result<String> {
    let paths: Vec<&str> = args.paths.iter().map(String::as_str).collect();
    let ns = &args.services;
    let mut md = String::new();
    let machine_text = std::fs::read_to_string(out.join("machine.txt"))
        .ok()
        .filter(|_| args.replot.is_some())
        .unwrap_or_else(machine);
    // Runs logged before the generator was recorded used the socket generator.
    let generator = res.generator.clone().unwrap_or_else(|| {
        if args.replot.is_some() {
            "socket".to_owned()
        } else {
            args.generator.to_string()
        }
    });
    let _ = writeln!(
        md,
        "# bench-e2e results\n\nMedian of {} runs (min–max); ratios are onehop / baseline computed run by run.\n\
         Topology, method and caveats: benches/README.md. UDP generator: `{generator}` ({}). Machine:\n\n```text\n{}```\n",
        args.runs,
        generator_note(&generator),
        machine_text
    );
    let sections = [
        (
            "New flows per second (UDP, every packet a new 5-tuple)",
            &res.new_flows,
            "flows/s delivered",
            format!(
                "Offered {} flows/s for {} s; higher is better.",
                report::human(
                    #[expect(clippy::cast_precision_loss, reason = "rate")]
                    {
                        args.flow_rate as f64
                    }
                ),
                args.secs
            ),
        ),
        (
            "Established flow to a local backend, packets per second at saturation (UDP, one 5-tuple)",
            &res.established_local,
            "packets/s delivered",
            format!(
                "One flow that the path delivers to a pod on node1, the node receiving the VIP (found by probing, see benches/README.md); the generator sends as fast as it can for {} s; routing: straight to a node1 pod. Higher is better.",
                args.secs
            ),
        ),
        (
            "Established flow to a remote backend, packets per second at saturation (UDP, one 5-tuple)",
            &res.established_remote,
            "packets/s delivered",
            "Same, with the flow's pod on node2: the load balancers forward it over the LAN a second time; routing sends it straight to node2 (one hop, the floor a load balancer cannot reach here). Higher is better.".to_owned(),
        ),
        (
            "CPU time per forwarded packet (new flows at a fixed rate)",
            &res.cpu,
            "ns/packet",
            format!(
                "{} new flows/s for {} s; (system + irq + softirq) time of the whole machine from /proc/stat over delivered packets, less the same time measured over an idle window just before. All namespaces share one kernel, so this includes the generator's sending; lower is better.",
                args.cpu_rate, args.secs
            ),
        ),
        (
            "CPU time per forwarded packet in the sender's context (same runs)",
            &res.cpu_thread,
            "ns/packet",
            "CPU time of the generator thread (CLOCK_THREAD_CPUTIME_ID) over delivered packets. On veth the receiving side runs in the sender's softirq context and this kernel has no IRQ time accounting, so most of the path is charged here, and none of other processes' work; lower is better.".to_owned(),
        ),
        (
            "HTTP latency p50 (wrk, Connection: close, nginx in the pods)",
            &res.http_p50,
            "µs",
            format!("wrk -t1 -c{} -d{}s; lower is better.", args.wrk_conns, args.secs),
        ),
        (
            "HTTP latency p99",
            &res.http_p99,
            "µs",
            "Same runs; lower is better.".to_owned(),
        ),
        (
            "HTTP requests per second (each a new TCP connection)",
            &res.http_rps,
            "requests/s",
            "Same runs; higher is better.".to_owned(),
        ),
        (
            "Short TCP connections per second (completed at the pods)",
            &res.tcp_pods,
            "connections/s",
            format!(
                "{} connects in flight from one client thread for {} s, each closed with RST right after the handshake; handshakes completed at the pods (`Tcp: PassiveOpens` of their namespaces), HTTP port of the test service (nginx accepts); higher is better.",
                args.tcp_conns, args.secs
            ),
        ),
        (
            "Short TCP connections per second (completed as the client saw them)",
            &res.tcp_client,
            "connections/s",
            "Same runs; should equal the pods' figure (a handshake the pod did not complete shows up here only).".to_owned(),
        ),
        (
            "Short TCP connections: failed connects per second",
            &res.tcp_failures,
            "failures/s",
            format!(
                "Same runs; connect errors plus connects unanswered after {} ms (a lost SYN or SYN-ACK); lower is better (ratios are meaningless when the baseline has none).",
                tcp::CONNECT_TIMEOUT.as_millis()
            ),
        ),
        (
            "CPU time per short TCP connection (whole machine)",
            &res.tcp_cpu,
            "ns/connection",
            "Same runs; (system + irq + softirq) time of the whole machine over connections completed at the pods, less an idle window just before, as for UDP. Includes the client's and nginx's socket work; lower is better.".to_owned(),
        ),
        (
            "CPU time per short TCP connection in the sender's context",
            &res.tcp_cpu_thread,
            "ns/connection",
            "Same runs; CPU time of the generator thread over connections completed at the pods (most of the path runs in its softirq context, as for UDP; nginx's accept/close does not); lower is better.".to_owned(),
        ),
        (
            "Remote backends: new flows per second (UDP, the remote test service)",
            &res.remote_new,
            "flows/s delivered",
            format!(
                "The remote test service (VIP {}, every endpoint on node2): every packet a new 5-tuple, offered at {} flows/s for {} s, from empty flow tables: {} new flows per remote backend per run, more than the 64,512 NAT ports per backend onehop's full NAT has here (runs.log: `nat_exhausted`). onehop-direct hands each flow to node2 with no NAT port. Higher is better.",
                paths::REMOTE_VIP,
                args.flow_rate,
                args.secs,
                args.flow_rate * u64::from(args.secs) / 2
            ),
        ),
        (
            "Remote backends: CPU time per new flow in the sender's context",
            &res.remote_cpu_thread,
            "ns/packet",
            format!(
                "{} new flows/s for {} s to the remote test service; CPU time of the generator thread over delivered packets: both nodes' receive paths (the announcer's and node2's) run there on veth, so this is the whole path; lower is better.",
                args.cpu_rate, args.secs
            ),
        ),
        (
            "Remote backends: CPU time per new flow, whole machine",
            &res.remote_cpu,
            "ns/packet",
            "Same runs; (system + irq + softirq) of the whole machine less an idle window, 10 ms ticks; lower is better.".to_owned(),
        ),
        (
            "Remote backends: onehop's XDP program on the announcer (node1), per packet",
            &res.remote_xdp_node1,
            "ns/packet",
            "Same runs; run time per run of node1's `lb_ingress` from the kernel's program statistics (`BPF_ENABLE_STATS`, on during these windows only). Full NAT: the flow's NAT port and reverse entry, the rewrite, XDP_TX; direct return: the flow's entry, the MAC rewrite, XDP_TX. The XDP program alone, not veth's or the stack's work; onehop paths only.".to_owned(),
        ),
        (
            "Remote backends: onehop's XDP program on node2 (the backend's node), per packet",
            &res.remote_xdp_node2,
            "ns/packet",
            "Same runs; node2's `lb_ingress`: under full NAT it passes a frame addressed to the pod; under direct return it is the one that delivers the flow to its local pod (DNAT, the flow's entry).".to_owned(),
        ),
        (
            "Remote backends: HTTP latency p50",
            &res.remote_http_p50,
            "µs",
            format!(
                "wrk -t1 -c{} -d{}s to the remote test service; under direct return the reply leaves node2 straight to the client; lower is better.",
                args.wrk_conns, args.secs
            ),
        ),
        (
            "Remote backends: HTTP latency p99",
            &res.remote_http_p99,
            "µs",
            "Same runs; lower is better.".to_owned(),
        ),
        (
            "Remote backends: HTTP requests per second",
            &res.remote_http_rps,
            "requests/s",
            "Same runs; higher is better.".to_owned(),
        ),
        (
            "Remote backends: short TCP connections per second (completed at the pods)",
            &res.remote_tcp_pods,
            "connections/s",
            format!(
                "As the short-TCP workload, to the remote test service ({} in flight, {} s); runs.log `tcp_remote` lines have failures and drops; higher is better.",
                args.tcp_conns, args.secs
            ),
        ),
        (
            "Remote backends: CPU time per short TCP connection in the sender's context",
            &res.remote_tcp_cpu_thread,
            "ns/connection",
            "Same runs; lower is better.".to_owned(),
        ),
        (
            "Steady state: new flows per second, flow tables never emptied (last window)",
            &res.steady_last,
            "flows/s delivered",
            format!(
                "Once per (path, N), after the runs: new UDP flows offered at {}/s for {} s in windows of {} s, starting from the flow tables as the runs left them and never emptying them, so flows expire and their state (onehop: NAT ports) is taken again meanwhile; the last window's delivery. Every other workload starts from empty tables. Should equal the offered rate; higher is better.",
                args.steady_rate, args.steady_secs, args.secs
            ),
        ),
        (
            "Steady state: slowest window",
            &res.steady_min,
            "flows/s delivered",
            "Same run, its slowest window; runs.log has every window and onehop's counters (nat_exhausted, nat_port_reclaimed, flow_expired).".to_owned(),
        ),
        (
            "Install time (rules transaction / services file on a running agent)",
            &res.install,
            "s",
            "One install per (path, N); iptables-restore / nft -f transaction time; onehop: the services file replaced on running agents (started on an empty file) until node1's maps hold every service, including up to 100 ms until the agent's next poll of the file (`--poll-interval-ms 100`).".to_owned(),
        ),
    ];
    for (title, s, unit, note) in sections {
        let _ = writeln!(
            md,
            "## {title}\n\n{note}\n\n{}",
            report::table(s, &paths, ns, unit, &res.notes)
        );
    }
    let _ = writeln!(
        md,
        "## onehop agent cold start\n\nBefore each onehop install above: both agents started on an empty services file until node1's data path is ready (programs loaded and verified, maps created, XDP and TC attached, first apply); kube-proxy's own start is not timed. Seconds, lower is better.\n\n{}",
        report::table(&res.agent_start, &["onehop"], ns, "s", &res.notes)
    );
    if res.control.is_some() || res.control_k8s.is_some() {
        md.push_str(&control_md(
            args,
            res.control.as_ref(),
            res.control_k8s.as_ref(),
        ));
    }
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let _ = writeln!(md, "## Plots\n");
    match plots(&paths, ns, res, out) {
        Ok(files) => {
            for f in files {
                let _ = writeln!(md, "![{f}]({f})\n");
            }
        }
        Err(e) => {
            let _ = writeln!(md, "(no plots: {e:#})\n");
        }
    }
    std::fs::write(out.join("results.md"), &md)?;
    if args.replot.is_none() {
        std::fs::write(out.join("machine.txt"), machine())?;
        std::fs::write(out.join("runs.log"), &res.log)?;
    }
    Ok(md)
}

fn generator_note(generator: &str) -> &'static str {
    match generator {
        "xdp" => {
            "BPF_PROG_TEST_RUN live frames redirected into the nodes' LAN veths: frames reach the nodes as XDP frames, as from a NIC, with GRO (NAPI) on on the nodes' eth0"
        }
        "socket" => {
            "sendmmsg on a packet socket in the client: frames cross the client's veth and the LAN bridge and reach the nodes as socket buffers"
        }
        _ => "unknown",
    }
}

fn main() -> Result<()> {
    let mut args = Args::parse();
    if args.quick {
        args.secs = 1;
        args.services.retain(|&n| n <= 10_000);
        args.workloads.retain(|&w| w != Workload::Steady);
    }
    anyhow::ensure!(args.runs >= 1, "--runs must be at least 1");
    for s in &args.cp_sources {
        anyhow::ensure!(
            s == "file" || s == "kubernetes",
            "unknown control-plane source {s:?} (known: file, kubernetes)"
        );
    }
    if let Some(dir) = &args.dump_rules {
        return dump_rules(&args, dir);
    }
    if let Some(dir) = &args.replot {
        let log = std::fs::read_to_string(dir.join("runs.log"))
            .with_context(|| format!("reading {}/runs.log", dir.display()))?;
        let res = parse_log(&log)?;
        let md = write_report(&args, &res, dir)?;
        println!("{md}\nwritten to {}", dir.display());
        return Ok(());
    }
    let onehop = match &args.onehop {
        Some(p) => p.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("exe dir")?
            .join("onehop"),
    };
    let out = args.out.clone().unwrap_or_else(default_out);
    let mut world = World::build(&onehop)?;
    world.install_limit = Duration::from_secs(args.install_limit_s);
    if args.generator == Generator::Xdp {
        world.use_xdp_generator()?;
    }
    // Client: many short connections; keep ports from running out (namespace-local sysctls).
    let client = world.topo.client().ns();
    client.sysctl("net/ipv4/ip_local_port_range", "1024 65000")?;
    client.sysctl("net/ipv4/tcp_tw_reuse", "1")?;
    // Pods: no TIME_WAIT sockets. One client reuses its ports within seconds at these rates,
    // and a pod still holding the 4-tuple in TIME_WAIT rejects the new SYN when its
    // timestamp is older (PAWS; this kernel offsets timestamps per connection), costing the
    // client a 1 s SYN retransmit: an artifact of one client, on every path, routing too.
    // Counted in runs.log (`paws_rejected`), which should now stay 0.
    for pod in world.topo.pods() {
        pod.ns().sysctl("net/ipv4/tcp_max_tw_buckets", "0")?;
    }
    let _sinks = load::udp_sinks(&world.topo, paths::UDP_TARGET_PORT)?;
    let _nginx = http::start_nginx(&world.topo, paths::HTTP_TARGET_PORT, world.scratch())?;
    let all = paths::all();
    for p in &args.paths {
        anyhow::ensure!(
            all.iter().any(|a| a.name() == p),
            "unknown path {p:?} (known: onehop, onehop-direct, iptables, nftables, routing, routing-xdp)"
        );
    }
    let mut res = Results::default();
    let _ = writeln!(res.log, "generator: {}", args.generator);
    let started = Instant::now();
    for &n in &args.services {
        let services = paths::services(&world.topo, n);
        println!("== N = {n} services");
        for path in all
            .iter()
            .filter(|p| args.paths.iter().any(|a| a == p.name()))
        {
            if let Err(e) = run_path(&args, &world, path.as_ref(), n, &services, &mut res) {
                let msg = format!("{e:#}");
                eprintln!("  {}: N={n}: {msg}", path.name());
                let short: String = msg
                    .lines()
                    .next()
                    .unwrap_or_default()
                    .chars()
                    .take(80)
                    .collect();
                res.notes.insert((path.name().to_owned(), n), short);
                let _ = writeln!(res.log, "{} N={n}: FAILED: {msg}", path.name());
            }
        }
    }
    control_planes(&args, &world, &mut res);
    let _ = writeln!(res.log, "total {:.0}s", started.elapsed().as_secs_f64());
    let md = write_report(&args, &res, &out)?;
    println!("{md}\nwritten to {}", out.display());
    Ok(())
}

/// The control-plane measurements of `--cp-sources` (a failure is logged, not fatal).
fn control_planes(args: &Args, world: &World, res: &mut Results) {
    let cp_source = |s: &str| args.cp_services > 0 && args.cp_sources.iter().any(|c| c == s);
    if cp_source("file") {
        println!(
            "== control plane: {} services x {} backends",
            args.cp_services, args.cp_backends
        );
        match control::measure(world, args.cp_services, args.cp_backends) {
            Ok(cp) => {
                let line = format!(
                    "control plane: {} services / {} backends: maps loaded {:.2}s, last service serving {:.2}s, agent RSS {} MiB (peak {} MiB)",
                    cp.services,
                    cp.backends,
                    cp.maps_s,
                    cp.serving_s,
                    cp.rss_kib / 1024,
                    cp.hwm_kib / 1024
                );
                println!("  {line}");
                let _ = writeln!(res.log, "{line}");
                res.control = Some(cp);
            }
            Err(e) => {
                eprintln!("  control plane: {e:#}");
                let _ = writeln!(res.log, "control plane: FAILED: {e:#}");
            }
        }
    }
    if cp_source("kubernetes")
        && let Some(baseline) = &args.cp_baseline
    {
        println!(
            "== control plane, Kubernetes source, baseline {}: {} services x {} endpoints",
            baseline.display(),
            args.cp_services,
            args.cp_backends
        );
        let measured = control_k8s::measure(
            world,
            args.cp_services,
            args.cp_backends,
            Some(baseline.as_path()),
        );
        // Not parsed back as this build's figures: the line starts with "baseline".
        let line = match measured {
            Ok(cp) => format!("baseline {}: {}", baseline.display(), cp.line()),
            Err(e) => format!("baseline {}: FAILED: {e:#}", baseline.display()),
        };
        println!("  {line}");
        let _ = writeln!(res.log, "{line}");
    }
    if cp_source("kubernetes") {
        println!(
            "== control plane, Kubernetes source: {} services x {} endpoints",
            args.cp_services, args.cp_backends
        );
        match control_k8s::measure(world, args.cp_services, args.cp_backends, None) {
            Ok(cp) => {
                let line = cp.line();
                println!("  {line}");
                let _ = writeln!(res.log, "{line}");
                res.control_k8s = Some(cp);
            }
            Err(e) => {
                eprintln!("  control plane (kubernetes): {e:#}");
                let _ = writeln!(res.log, "control plane kubernetes: FAILED: {e:#}");
            }
        }
    }
}

fn dump_rules(args: &Args, dir: &Path) -> Result<()> {
    // A throwaway topology only for the pod addresses the services use.
    let topo = onehop_testkit::Topology::builder()
        .nodes(2)
        .pods_per_node(2)
        .base("ohd")
        .build()?;
    std::fs::create_dir_all(dir)?;
    for &n in &args.services {
        let svcs = paths::services(&topo, n);
        std::fs::write(
            dir.join(format!("iptables-{n}.rules")),
            kubeproxy::iptables_restore(&svcs, paths::POD_CIDR),
        )?;
        std::fs::write(
            dir.join(format!("nftables-{n}.nft")),
            kubeproxy::nft_ruleset(&svcs, paths::POD_CIDR),
        )?;
        std::fs::write(
            dir.join(format!("onehop-{n}-node1.yaml")),
            paths::services_yaml(&svcs, 1, true, false),
        )?;
    }
    println!("written to {}", dir.display());
    Ok(())
}

/// Plots into `out`; returns the file names.
#[expect(clippy::too_many_lines, reason = "a table of charts")]
fn plots(paths: &[&str], ns: &[u32], res: &Results, out: &Path) -> Result<Vec<String>> {
    let mk = |samples: &Samples| -> Vec<(String, Samples, String)> {
        paths
            .iter()
            .map(|p| ((*p).to_owned(), samples.clone(), (*p).to_owned()))
            .collect()
    };
    let mut files = Vec::new();
    let charts: [(&str, &str, &str, &Samples, bool); 9] = [
        (
            "new_flows.png",
            "New UDP flows per second delivered vs services",
            "flows/s",
            &res.new_flows,
            true,
        ),
        (
            "cpu_sender.png",
            "CPU per forwarded new-flow packet (sender context) vs services",
            "ns/packet",
            &res.cpu_thread,
            true,
        ),
        (
            "tcp_conns.png",
            "Short TCP connections per second (at the pods) vs services",
            "connections/s",
            &res.tcp_pods,
            true,
        ),
        (
            "tcp_cpu_sender.png",
            "CPU per short TCP connection (sender context) vs services",
            "ns/connection",
            &res.tcp_cpu_thread,
            true,
        ),
        (
            "established_local.png",
            "Established flow, local backend: packets/s at saturation vs services",
            "packets/s",
            &res.established_local,
            false,
        ),
        (
            "established_remote.png",
            "Established flow, remote backend: packets/s at saturation vs services",
            "packets/s",
            &res.established_remote,
            false,
        ),
        (
            "remote_new_flows.png",
            "Remote backends: new UDP flows per second delivered vs services",
            "flows/s",
            &res.remote_new,
            true,
        ),
        (
            "remote_cpu_sender.png",
            "Remote backends: CPU per new-flow packet (sender context) vs services",
            "ns/packet",
            &res.remote_cpu_thread,
            true,
        ),
        (
            "install.png",
            "Install time vs services",
            "seconds",
            &res.install,
            true,
        ),
    ];
    for (file, title, unit, samples, log_y) in charts {
        let owned = mk(samples);
        let s: Vec<plot::Series<'_>> = owned
            .iter()
            .map(|(label, samples, path)| plot::Series {
                label: label.clone(),
                samples,
                path,
            })
            .collect();
        plot::vs_services(&out.join(file), title, unit, &s, ns, log_y)?;
        files.push(file.to_owned());
    }
    // Latency: p50 and p99 per path.
    let mut lat = Vec::new();
    for p in paths {
        lat.push((format!("{p} p50"), res.http_p50.clone(), (*p).to_owned()));
        lat.push((format!("{p} p99"), res.http_p99.clone(), (*p).to_owned()));
    }
    let s: Vec<plot::Series<'_>> = lat
        .iter()
        .map(|(label, samples, path)| plot::Series {
            label: label.clone(),
            samples,
            path,
        })
        .collect();
    plot::vs_services(
        &out.join("http_latency.png"),
        "HTTP latency percentiles (wrk, Connection: close) vs services",
        "µs",
        &s,
        ns,
        true,
    )?;
    files.push("http_latency.png".to_owned());
    Ok(files)
}

/// Rebuilds the samples from the lines `run_path` and the control plane write to `runs.log`.
fn parse_log(log: &str) -> Result<Results> {
    let mut res = Results::default();
    for line in log.lines() {
        if let Some(g) = line.strip_prefix("generator: ") {
            res.generator = Some(g.trim().to_owned());
            continue;
        }
        if let Some(cp) = parse_control(line) {
            res.control = Some(cp);
            continue;
        }
        if let Some(cp) = KubeControlPlane::parse(line) {
            res.control_k8s = Some(cp);
            continue;
        }
        let Some((head, rest)) = line.split_once(": ") else {
            continue;
        };
        let mut h = head.split_whitespace();
        let (Some(path), Some(n)) = (h.next(), h.next().and_then(|n| n.strip_prefix("N="))) else {
            continue;
        };
        let Ok(n) = n.parse::<u32>() else { continue };
        let num = |key: &str| -> Option<f64> {
            rest.split_whitespace()
                .find_map(|t| t.strip_prefix(key))
                .map(|v| v.trim_end_matches("us").trim_end_matches('s'))
                .and_then(|v| v.parse().ok())
        };
        let third = h.next();
        let run = third.filter(|r| r.starts_with("run="));
        if third == Some("steady") {
            let get = |k: &str| num(k).with_context(|| format!("{k} missing in {line:?}"));
            res.steady_last.push(path, n, get("steady_last/s=")?);
            res.steady_min.push(path, n, get("steady_min/s=")?);
        } else if let (Some(_), Some(what @ ("tcp" | "tcp_remote"))) = (run, h.next()) {
            let get = |k: &str| num(k).with_context(|| format!("{k} missing in {line:?}"));
            if what == "tcp_remote" {
                res.remote_tcp_pods.push(path, n, get("conns/s_pods=")?);
                res.remote_tcp_cpu_thread
                    .push(path, n, get("sender_ns_per_conn=")?);
                continue;
            }
            res.tcp_pods.push(path, n, get("conns/s_pods=")?);
            res.tcp_client.push(path, n, get("conns/s_client=")?);
            res.tcp_failures.push(path, n, get("failures/s=")?);
            res.tcp_cpu.push(path, n, get("cpu_ns_per_conn=")?);
            res.tcp_cpu_thread
                .push(path, n, get("sender_ns_per_conn=")?);
        } else if run.is_some() {
            // Workloads left out by `--workloads` are absent from the line. Logs from before
            // the local/remote split have one `established_pps`, of whichever backend the
            // path picked: not comparable, so not read.
            for (key, samples) in [
                ("new_flows/s=", &mut res.new_flows),
                ("established_local_pps=", &mut res.established_local),
                ("established_remote_pps=", &mut res.established_remote),
                ("cpu_ns_per_pkt=", &mut res.cpu),
                ("sender_ns_per_pkt=", &mut res.cpu_thread),
                ("p50=", &mut res.http_p50),
                ("p99=", &mut res.http_p99),
                ("rps=", &mut res.http_rps),
                ("remote_new_flows/s=", &mut res.remote_new),
                ("remote_cpu_ns_per_pkt=", &mut res.remote_cpu),
                ("remote_sender_ns_per_pkt=", &mut res.remote_cpu_thread),
                ("remote_xdp_node1_ns=", &mut res.remote_xdp_node1),
                ("remote_xdp_node2_ns=", &mut res.remote_xdp_node2),
                ("remote_p50=", &mut res.remote_http_p50),
                ("remote_p99=", &mut res.remote_http_p99),
                ("remote_rps=", &mut res.remote_http_rps),
            ] {
                if let Some(v) = num(key) {
                    samples.push(path, n, v);
                }
            }
        } else if let Some(ready) = rest
            .split_once("(path ready ")
            .and_then(|(_, r)| r.split('s').next())
            .and_then(|v| v.parse().ok())
        {
            res.install.push(path, n, ready);
            if let Some(s) = num("agent_start=") {
                res.agent_start.push(path, n, s);
            }
        } else if rest.starts_with("FAILED") {
            let short: String = rest.chars().skip(8).take(80).collect();
            res.notes.insert((path.to_owned(), n), short);
        }
    }
    log.clone_into(&mut res.log);
    Ok(res)
}

fn control_md(
    args: &Args,
    file: Option<&control::ControlPlane>,
    k8s: Option<&KubeControlPlane>,
) -> String {
    let mut md = String::new();
    let (services, backends) = file
        .map(|c| (c.services, c.backends))
        .or(k8s.map(|c| (c.services, c.backends)))
        .unwrap_or_default();
    let f = |g: &dyn Fn(&control::ControlPlane) -> String| file.map_or_else(|| "–".to_owned(), g);
    let k = |g: &dyn Fn(&KubeControlPlane) -> String| k8s.map_or_else(|| "–".to_owned(), g);
    let _ = writeln!(
        md,
        "## Control plane\n\n\
         {} UDP services with {} backends each ({} backends), one measurement per source. \
         Services file: a running agent's file replaced (atomic rename). Kubernetes: the test \
         API server seeded with the Services, their EndpointSlices and the Nodes first, then \
         the agent started with `--kubernetes` (its initial LIST carries everything).\n\n\
         | figure | services file | Kubernetes source |\n|---|---|---|",
        report::thousands(services),
        args.cp_backends,
        report::thousands(backends),
    );
    let rows: [(&str, String, String); 10] = [
        (
            "clock starts at",
            f(&|_| "file replaced".into()),
            k(&|_| "agent start".into()),
        ),
        (
            "→ data path ready (first complete apply, `config.ready`)",
            f(&|_| "(already running)".into()),
            k(&|c| format!("{:.2} s", c.ready_s)),
        ),
        (
            "→ all services in the maps",
            f(&|c| format!("{:.2} s", c.maps_s)),
            k(&|c| format!("{:.2} s", c.maps_s)),
        ),
        (
            "  agent CPU time by then (user + system)",
            "–".into(),
            k(&|c| {
                c.maps_cpu_s
                    .map_or_else(|| "–".into(), |cpu| format!("{cpu:.2} s"))
            }),
        ),
        (
            "→ last service delivers",
            f(&|c| format!("{:.2} s", c.serving_s)),
            k(&|c| format!("{:.2} s", c.serving_s)),
        ),
        (
            "→ last Event of the initial sync written (API writes)",
            "–".into(),
            k(&|c| format!("{:.2} s ({} Events)", c.events_s, c.events)),
        ),
        (
            "then: one endpoint of one service replaced → in the maps (median, min–max)",
            "–".into(),
            k(&|c| {
                let ms: Vec<f64> = c.change_s.iter().map(|s| s * 1e3).collect();
                let lo = ms.iter().copied().fold(f64::INFINITY, f64::min);
                let hi = ms.iter().copied().fold(0.0, f64::max);
                format!(
                    "{} ms ({}–{}), {} changes",
                    report::human(report::median(&ms)),
                    report::human(lo),
                    report::human(hi),
                    ms.len()
                )
            }),
        ),
        (
            "test API server: LIST of every Service + EndpointSlice",
            "–".into(),
            k(&|c| format!("{:.2} s ({:.1} MB)", c.api_list_s, c.api_list_mb)),
        ),
        (
            "agent RSS after loading",
            f(&|c| format!("{} MiB", c.rss_kib / 1024)),
            k(&|c| format!("{} MiB", c.rss_kib / 1024)),
        ),
        (
            "agent peak RSS",
            f(&|c| format!("{} MiB", c.hwm_kib / 1024)),
            k(&|c| format!("{} MiB", c.hwm_kib / 1024)),
        ),
    ];
    for (name, a, b) in rows {
        let _ = writeln!(md, "| {name} | {a} | {b} |");
    }
    md.push('\n');
    md
}

/// `control plane: S services / B backends: maps loaded Xs, last service serving Ys, agent
/// RSS R MiB (peak P MiB)`.
fn parse_control(line: &str) -> Option<control::ControlPlane> {
    let rest = line.strip_prefix("control plane: ")?;
    let nums: Vec<f64> = rest
        .split(|c: char| !(c.is_ascii_digit() || c == '.'))
        .filter(|t| !t.is_empty() && *t != ".")
        .filter_map(|t| t.parse().ok())
        .collect();
    let [services, backends, maps_s, serving_s, rss, hwm] = nums[..] else {
        return None;
    };
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "integers printed by this program"
    )]
    Some(control::ControlPlane {
        services: services as u32,
        backends: backends as u32,
        maps_s,
        serving_s,
        rss_kib: rss as u64 * 1024,
        hwm_kib: hwm as u64 * 1024,
    })
}
