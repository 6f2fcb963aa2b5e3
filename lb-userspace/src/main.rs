//! `onehop`: the node agent of the onehop XDP load balancer and its
//! operator commands.

use std::{path::PathBuf, process::ExitCode, time::Duration};

use anyhow::{Context as _, Result};
use clap::{Args, Parser, Subcommand};
use lb_userspace::{
    agent,
    dataplane::loader::{Sizes, XdpAttachMode},
    dataplane::maps::{Maps, PinDir},
    dataplane::memory,
    dataplane::status,
    dataplane::uninstall,
    http, k8s,
    plan::{
        model::{FlowTimeouts, Limits, MaglevSize},
        services_file,
    },
};
use tracing_subscriber::EnvFilter;

/// Default bpffs directory; each interface gets a subdirectory.
const DEFAULT_BPFFS_ROOT: &str = "/sys/fs/bpf/onehop";

#[derive(Parser)]
#[command(
    name = "onehop",
    version,
    about = "XDP load balancer for bare-metal Kubernetes: ARP for external IPs, one hop to the pod",
    long_about = None,
)]
struct Cli {
    /// Log lines as text, or as JSON objects one a line (on stderr).
    #[arg(
        long,
        global = true,
        value_enum,
        default_value_t,
        env = "ONEHOP_LOG_FORMAT"
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Default, clap::ValueEnum)]
enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Clone, Copy, Default, clap::ValueEnum)]
enum OutputFormat {
    #[default]
    Text,
    /// One JSON object with stable fields (see `onehop status --help`).
    Json,
}

#[derive(Args, Clone)]
struct Pins {
    /// Interface the data path is attached to.
    #[arg(short, long, env = "ONEHOP_INTERFACE")]
    interface: String,
    /// bpffs directory holding one subdirectory of pinned maps and links per
    /// interface.
    #[arg(long, env = "ONEHOP_BPFFS_ROOT", default_value = DEFAULT_BPFFS_ROOT)]
    bpffs_root: PathBuf,
}

/// The flags saying where `/metrics` and the probes are served: the same names for the
/// agent and the controller, with each program's defaults.
macro_rules! listen_args {
    ($name:ident, $metrics:expr, $health:expr) => {
        #[derive(Args, Clone)]
        struct $name {
            /// Address for /metrics (Prometheus). Loopback by default: the metrics name
            /// Services, pods and node addresses. To scrape from another host, set a
            /// reachable address on purpose, or put kube-rbac-proxy in front.
            #[arg(long, env = "ONEHOP_METRICS_ADDR", default_value = $metrics)]
            metrics_addr: std::net::SocketAddr,
            /// Do not serve /metrics.
            #[arg(long)]
            no_metrics: bool,
            /// Address for the probes /healthz and /readyz, which serves nothing else
            /// (the kubelet probes a host-network pod on the node's address).
            #[arg(long, env = "ONEHOP_HEALTH_ADDR", default_value = $health)]
            health_addr: std::net::SocketAddr,
            /// Do not serve /healthz and /readyz.
            #[arg(long)]
            no_health: bool,
        }

        impl $name {
            fn listen(&self) -> http::Listen {
                http::Listen {
                    metrics: (!self.no_metrics).then_some(self.metrics_addr),
                    health: (!self.no_health).then_some(self.health_addr),
                }
            }
        }
    };
}

listen_args!(
    AgentListen,
    http::AGENT_METRICS_ADDR,
    http::AGENT_HEALTH_ADDR
);
listen_args!(
    ControllerListen,
    http::CONTROLLER_METRICS_ADDR,
    http::CONTROLLER_HEALTH_ADDR
);

#[derive(Args, Clone)]
struct DataplaneArgs {
    #[command(flatten)]
    listen: AgentListen,
    /// Also serve traffic per backend on /metrics (`onehop_backend_packets_total`,
    /// `onehop_backend_bytes_total`). Off by default: two series per backend on every
    /// node, 200,000 at 10,000 Services of 10 endpoints each.
    #[arg(long)]
    backend_metrics: bool,
    /// XDP attach mode.
    #[arg(long, value_enum, default_value_t)]
    xdp_mode: XdpAttachMode,
    /// Slots of the shared Maglev array (set when the maps are created; 8
    /// bytes of kernel memory each). Each service port's table takes its
    /// Maglev table size in slots, and a table being replaced takes them
    /// twice for a moment. Default: 12,288 tables of --maglev-table-size
    /// (12,546,048 slots, 96 MiB, at the default 1021).
    #[arg(long)]
    maglev_slots: Option<u32>,
    /// Connection-table entries (set when the maps are created).
    #[arg(long, default_value_t = Sizes::default().conntrack)]
    conntrack_size: u32,
    /// New-flow guard: most TCP flows at once that have not proven
    /// themselves (a SYN whose handshake has not finished, a packet met
    /// mid-stream); beyond it, such flows are dropped before they take
    /// state (`half_open_limit`), so a flood of forged SYNs cannot evict
    /// established flows. Refilled at this many over `tcp_syn` seconds a
    /// second. Default: an eighth of --conntrack-size; 0 turns it off.
    #[arg(long)]
    half_open_max: Option<u32>,
    /// Reverse-NAT entries (set when the maps are created).
    #[arg(long, default_value_t = Sizes::default().rev_nat)]
    rev_nat_size: u32,
    /// Session-affinity entries (set when the maps are created).
    #[arg(long, default_value_t = Sizes::default().affinity)]
    affinity_size: u32,
    /// Services with traffic counters (per-CPU, set when the maps are created;
    /// default: as many as fit 64 MiB over the possible CPUs, up to every one).
    #[arg(long)]
    service_stats_size: Option<u32>,
    /// Backends with traffic counters (as `--service-stats-size`).
    #[arg(long)]
    backend_stats_size: Option<u32>,
    /// Seconds between sweeps that delete expired flow entries (the data
    /// path never relies on them; they keep the tables free of dead flows)
    /// and tell when an adopted flow table holds no live IPv6 flow of an
    /// earlier version's tag.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    flow_sweep_interval_secs: u64,
    /// Longest time (seconds) a backend gone from its service keeps its slot
    /// for the TCP connections still on it; it is freed sooner once a sweep
    /// finds none. Bounds how long a connection that never ends (or a lost
    /// close) can hold one of the backend ids.
    #[arg(long, default_value_t = 3600, value_parser = clap::value_parser!(u64).range(1..=30 * 86_400))]
    max_drain_secs: u64,
    /// File holding the cluster's flow-hash secret (at least 16 bytes, read
    /// at start): every node must be given the same one, so that all pick
    /// the same backend for a flow. The install bundle mounts the Secret
    /// `onehop-hash-seed` here. Without it the agent uses a public seed,
    /// with which anyone can aim flows at one backend. A file that is
    /// missing or too short stops the agent.
    #[arg(long, env = "ONEHOP_HASH_SEED_FILE")]
    hash_seed_file: Option<PathBuf>,
}

/// Which Services onehop serves: the same flags for the agent and the controller
/// (an agent and a controller given different ones disagree about what to serve).
#[derive(Args, Clone)]
struct ClassArgs {
    /// The loadBalancerClass onehop serves.
    #[arg(long, alias = "class", default_value = "onehop.io/l2")]
    load_balancer_class: String,
    /// Leave Services without a loadBalancerClass to another implementation
    /// (by default onehop serves them too).
    #[arg(long)]
    ignore_unclassed: bool,
    /// The controller's former spelling: `--unclassed false` is
    /// `--ignore-unclassed`. Kept so that existing manifests keep working.
    #[arg(
        long,
        hide = true,
        value_name = "BOOL",
        action = clap::ArgAction::Set,
        conflicts_with = "ignore_unclassed"
    )]
    unclassed: Option<bool>,
}

impl ClassArgs {
    fn filter(self) -> k8s::translate::ClassFilter {
        k8s::translate::ClassFilter {
            class: self.load_balancer_class,
            unclassed: self.unclassed.unwrap_or(!self.ignore_unclassed),
        }
    }
}

/// Where services come from: a file, or the Kubernetes API.
#[derive(Args, Clone)]
#[group(required = true, multiple = false)]
struct SourceArgs {
    /// Services file (YAML). Re-read whenever it changes; a bad file is
    /// rejected and the last good state stays in force. (`--config` is
    /// its former name and still accepted.)
    #[arg(
        short = 'f',
        long,
        visible_short_alias = 'c',
        alias = "config",
        env = "ONEHOP_SERVICES_FILE"
    )]
    services_file: Option<PathBuf>,
    /// Take services from the Kubernetes API (in-cluster config or
    /// KUBECONFIG): LoadBalancer Services, EndpointSlices, Nodes, Leases.
    #[arg(long)]
    kubernetes: bool,
}

#[derive(Args, Clone)]
struct KubeArgs {
    /// How often the services file is checked for changes.
    #[arg(long, default_value_t = 500)]
    poll_interval_ms: u64,
    /// This node's name (Kubernetes source; set it from the downward API).
    #[arg(long, env = "NODE_NAME")]
    node_name: Option<String>,
    /// Namespace of the per-node Leases.
    #[arg(long, env = "ONEHOP_NAMESPACE", default_value = "onehop-system")]
    namespace: String,
    #[command(flatten)]
    class: ClassArgs,
    /// Lowest NAT source port for remote backends (Kubernetes source).
    #[arg(long, default_value_t = lb_common::DEFAULT_NAT_PORT_MIN)]
    nat_port_min: u16,
    /// Highest NAT source port for remote backends (Kubernetes source).
    #[arg(long, default_value_t = lb_common::DEFAULT_NAT_PORT_MAX)]
    nat_port_max: u16,
    /// Seconds an idle TCP flow keeps its backend (and NAT port) before its
    /// handshake finished (Kubernetes source; the services file has
    /// `flow_timeouts`).
    #[arg(long, default_value_t = FlowTimeouts::DEFAULT.tcp_syn_s)]
    tcp_syn_timeout_secs: u32,
    /// ... once established (Kubernetes source).
    #[arg(long, default_value_t = FlowTimeouts::DEFAULT.tcp_established_s)]
    tcp_established_timeout_secs: u32,
    /// ... after both FINs or an RST: a closed remote flow's NAT port is
    /// free again this long after the close (Kubernetes source).
    #[arg(long, default_value_t = FlowTimeouts::DEFAULT.tcp_closing_s)]
    tcp_closing_timeout_secs: u32,
    /// Seconds an idle UDP flow keeps its backend and NAT port (Kubernetes
    /// source).
    #[arg(long, default_value_t = FlowTimeouts::DEFAULT.udp_s)]
    udp_timeout_secs: u32,
    /// When a new remote flow finds every NAT port it tries held, a UDP flow
    /// idle this many seconds gives its port up (Kubernetes source).
    #[arg(long, default_value_t = FlowTimeouts::DEFAULT.udp_reclaim_s)]
    udp_reclaim_secs: u32,
    /// When a new remote flow finds every NAT port it tries held, a TCP flow
    /// closed by both FINs this many seconds ago gives its port up
    /// (Kubernetes source).
    #[arg(long, default_value_t = FlowTimeouts::DEFAULT.tcp_reclaim_s)]
    tcp_reclaim_secs: u32,
    /// Maglev table size (slots) of every Service without the
    /// `onehop.io/maglev-table-size` annotation: one of 101, 251, 509, 1021,
    /// 2039, 4093, 8191, 16381, 32749, 65521. Fixed whatever the backend
    /// count, so one backend joining or leaving moves about 1/N of new
    /// flows; keep it well above the backend count of most Services (a
    /// Service whose backends would get fewer than 10 slots each gets a
    /// bigger table). Give every node the same (Kubernetes source; the
    /// services file has `maglev_table_size`).
    #[arg(long, default_value_t = MaglevSize::DEFAULT, conflicts_with = "services_file")]
    maglev_table_size: MaglevSize,
    /// Direct server return (on by default; `--direct-return=false` turns
    /// it off): new flows to a backend on another node of this node's
    /// segment (the interface's subnet) whose agent is live (its Lease) go
    /// to that node as they are, only the MAC addresses rewritten, and the
    /// backend sees the client's address; backends on other nodes get full
    /// NAT. Off: full NAT to every remote backend. Give every node the same
    /// (Kubernetes source; the services file has `direct_return`).
    #[arg(
        long,
        env = "ONEHOP_DIRECT_RETURN",
        value_name = "BOOL",
        num_args = 0..=1,
        default_value_t = true,
        default_missing_value = "true",
        action = clap::ArgAction::Set,
        conflicts_with = "services_file"
    )]
    direct_return: bool,
    /// How often this node renews its Lease (one API write each).
    #[arg(long, default_value_t = 400)]
    lease_renew_ms: u64,
    /// A node whose Lease was not renewed for this long is dead: another
    /// node takes over its VIPs. Keep it at least 3 renew intervals.
    #[arg(long, default_value_t = 1200)]
    lease_duration_ms: u64,
    /// Plain-HTTP API server URL instead of the cluster config (tests).
    #[arg(long, hide = true)]
    api_server: Option<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Attach the data path to an interface (or adopt the one already
    /// attached) and keep its maps in sync with a services file. Stopping or
    /// killing the agent leaves traffic flowing; `cleanup` detaches.
    Agent {
        #[command(flatten)]
        pins: Pins,
        #[command(flatten)]
        dataplane: DataplaneArgs,
        #[command(flatten)]
        source: SourceArgs,
        #[command(flatten)]
        kube: KubeArgs,
    },
    /// Print services, backends, announced VIPs and counters from the pinned
    /// maps (works with or without a running agent).
    ///
    /// `-o json` prints one JSON object whose fields are stable (new ones may
    /// be added; `formatVersion` changes before any is renamed or removed):
    /// formatVersion, interface, ifindex, configured, node {ip, mac},
    /// natPorts {min, max}, directReturn, vips[] {ip, service, announced,
    /// node}, services[] {frontend, vip, port, protocol, id, slots,
    /// backendIds, affinitySeconds, sourceRanges, packets, bytes, counted},
    /// backends[] {id, ip, port, node, location, direct, state, packets,
    /// bytes, counted}, flows {conntrack, revNat, affinity, localEndpoints},
    /// counters {label: n}, drops {label: n}, arp {answering, heartbeatAgeMs,
    /// holdMs, uncounted, addresses[]}, ndp {uncounted, addresses[]}. IPv6
    /// addresses appear in vips, services and backends beside IPv4 ones.
    Status {
        #[command(flatten)]
        pins: Pins,
        /// Output format.
        #[arg(short, long, value_enum, default_value_t)]
        output: OutputFormat,
    },
    /// Detach the data path from the interface and remove its pinned maps
    /// (the connection table is lost). `uninstall --interface` does the same.
    Cleanup {
        #[command(flatten)]
        pins: Pins,
    },
    /// Remove onehop from this node: detach XDP and TC from every interface
    /// that has a pin directory under the bpffs root (or only `--interface`),
    /// then remove the pinned links, maps and directories. Idempotent. Stop
    /// the agent for good first (delete its DaemonSet): a running agent
    /// attaches again when it restarts. On a cluster, `manifests/uninstall.yaml`
    /// runs it on every node.
    Uninstall {
        /// Only this interface (default: every one pinned under the root).
        #[arg(short, long, env = "ONEHOP_INTERFACE")]
        interface: Option<String>,
        /// bpffs directory holding one subdirectory per interface.
        #[arg(long, env = "ONEHOP_BPFFS_ROOT", default_value = DEFAULT_BPFFS_ROOT)]
        bpffs_root: PathBuf,
        /// After uninstalling, keep running until SIGTERM/SIGINT (the uninstall
        /// pod's container, so the pod reads Ready once its node is done).
        #[arg(long)]
        wait: bool,
    },
    /// Assign external IPs from IP address pools to `LoadBalancer` Services and
    /// write their status (one replica at a time, elected with a Lease).
    Controller(ControllerArgs),
    /// Validate a services file and exit (non-zero with every problem listed).
    CheckConfig {
        /// Services file (YAML).
        file: PathBuf,
    },
}

#[derive(Args)]
struct ControllerArgs {
    /// Namespace of the leader Lease and of the IP address pools.
    #[arg(long, env = "ONEHOP_NAMESPACE", default_value = "onehop-system")]
    namespace: String,
    /// Name of the leader-election Lease.
    #[arg(long, default_value = "onehop-controller")]
    lease_name: String,
    /// This replica's identity in the Lease (unique per replica); the host
    /// name when unset.
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    #[command(flatten)]
    class: ClassArgs,
    /// How long a leader Lease stays valid without renewal.
    #[arg(long, default_value_t = 15_000)]
    lease_duration_ms: u64,
    /// The former spelling of `--lease-duration-ms`, in seconds.
    #[arg(long, hide = true, conflicts_with = "lease_duration_ms")]
    lease_duration_secs: Option<u64>,
    /// The leader steps down after failing to renew for this long.
    #[arg(long, default_value_t = 10_000)]
    renew_deadline_ms: u64,
    /// How often the leader renews and standbys try to acquire.
    #[arg(long, default_value_t = 2_000)]
    retry_period_ms: u64,
    #[command(flatten)]
    listen: ControllerListen,
    /// Plain-HTTP API server URL instead of the kubeconfig / in-cluster
    /// config (tests).
    #[arg(long, hide = true)]
    api_server: Option<String>,
}

/// The controller's options from its flags (the former spellings included).
fn controller_options(
    args: &ControllerArgs,
    identity: String,
) -> lb_userspace::controller::Options {
    use lb_userspace::controller;
    let lease_duration = match args.lease_duration_secs {
        Some(secs) => Duration::from_secs(secs),
        None => Duration::from_millis(args.lease_duration_ms),
    };
    controller::Options {
        namespace: args.namespace.clone(),
        lease_name: args.lease_name.clone(),
        identity,
        class: args.class.clone().filter(),
        timing: controller::Timing {
            lease_duration,
            renew_deadline: Duration::from_millis(args.renew_deadline_ms),
            retry_period: Duration::from_millis(args.retry_period_ms),
            ..controller::Timing::default()
        },
    }
}

fn run_controller(args: ControllerArgs) -> Result<()> {
    use hyper::StatusCode;
    use lb_userspace::{
        controller::{self, metrics::ControllerMetrics},
        shutdown,
    };
    let identity = match args.identity.clone() {
        Some(id) => id,
        None => std::fs::read_to_string("/proc/sys/kernel/hostname")
            .context("no --identity / POD_NAME, and reading the host name failed")?
            .trim()
            .to_owned(),
    };
    let opts = controller_options(&args, identity);
    // What it serves and how it elects, as the flags (old spellings or new) made it.
    tracing::info!(
        load_balancer_class = %opts.class.class,
        unclassed = opts.class.unclassed,
        lease_duration_ms = u64::try_from(opts.timing.lease_duration.as_millis()).unwrap_or(u64::MAX),
        "controller starting"
    );
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the runtime")?
        .block_on(async move {
            let client = k8s::client::client(args.api_server.as_deref()).await?;
            let shutdown = async {
                if let Err(e) = shutdown::signal().await {
                    tracing::warn!(error = %e, "no signal handler; stopping on Ctrl-C only");
                    let _ = tokio::signal::ctrl_c().await;
                }
            };
            let metrics = std::sync::Arc::new(ControllerMetrics::default());
            let m = metrics.clone();
            http::serve_endpoints(
                args.listen.listen(),
                std::sync::Arc::new(move |path: &str| {
                    (path == "/metrics").then(|| http::metrics_reply(m.render()))
                }),
                std::sync::Arc::new(|path: &str| {
                    (path == "/healthz").then(|| http::reply(StatusCode::OK, "ok\n".into()))
                }),
            )?;
            Box::pin(controller::run_with_metrics(
                client, opts, metrics, shutdown,
            ))
            .await
        })
}

fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => fmt
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        // Fields at the top level (`{"timestamp","level","message",...}`),
        // as log collectors index them.
        LogFormat::Json => fmt.json().flatten_event(true).init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The flow timeout flags, each checked against the range the services
/// file accepts.
fn flow_timeouts(kube: &KubeArgs) -> Result<FlowTimeouts> {
    let range = FlowTimeouts::MIN_S..=lb_userspace::plan::model::MAX_FLOW_TIMEOUT_S;
    for (flag, v) in [
        ("--tcp-syn-timeout-secs", kube.tcp_syn_timeout_secs),
        (
            "--tcp-established-timeout-secs",
            kube.tcp_established_timeout_secs,
        ),
        ("--tcp-closing-timeout-secs", kube.tcp_closing_timeout_secs),
        ("--udp-timeout-secs", kube.udp_timeout_secs),
        ("--udp-reclaim-secs", kube.udp_reclaim_secs),
        ("--tcp-reclaim-secs", kube.tcp_reclaim_secs),
    ] {
        anyhow::ensure!(
            range.contains(&v),
            "{flag} must be {}..={} seconds, not {v}",
            range.start(),
            range.end()
        );
    }
    Ok(FlowTimeouts::new(
        kube.tcp_syn_timeout_secs,
        kube.tcp_established_timeout_secs,
        kube.tcp_closing_timeout_secs,
        kube.udp_timeout_secs,
        kube.udp_reclaim_secs,
        kube.tcp_reclaim_secs,
    ))
}

/// The Kubernetes source's options from the agent's flags (the former spellings
/// included).
fn kube_options(kube: &KubeArgs) -> Result<agent::kube::Options> {
    let flow_timeouts = flow_timeouts(kube)?;
    let node_name = kube
        .node_name
        .clone()
        .context("--kubernetes needs --node-name (or NODE_NAME)")?;
    anyhow::ensure!(
        kube.nat_port_min <= kube.nat_port_max,
        "--nat-port-min is above --nat-port-max"
    );
    Ok(agent::kube::Options {
        node_name,
        namespace: kube.namespace.clone(),
        class: kube.class.clone().filter(),
        nat_ports: lb_userspace::plan::model::NatPorts {
            min: kube.nat_port_min,
            max: kube.nat_port_max,
        },
        flow_timeouts,
        maglev_table_size: kube.maglev_table_size,
        direct_return: kube.direct_return,
        renew_interval: Duration::from_millis(kube.lease_renew_ms.max(50)),
        lease_duration: Duration::from_millis(kube.lease_duration_ms.max(200)),
    })
}

/// `--maglev-slots`, or room for `MAGLEV_DEFAULT_TABLES` tables of the
/// default table size.
fn maglev_slots(dataplane: &DataplaneArgs, source: &SourceArgs, kube: &KubeArgs) -> u32 {
    dataplane.maglev_slots.unwrap_or_else(|| {
        // A services file's sizes are not known before it is read: its array
        // is sized for the built-in default.
        let size = if source.kubernetes {
            kube.maglev_table_size
        } else {
            MaglevSize::DEFAULT
        };
        lb_common::maps::MAGLEV_DEFAULT_TABLES.saturating_mul(size.get())
    })
}

async fn run_kubernetes(opts: agent::Options, kube: KubeArgs) -> Result<()> {
    let kopts = kube_options(&kube)?;
    // Logged before anything is attached, so a wrong class shows even when the start fails.
    tracing::info!(
        load_balancer_class = %kopts.class.class,
        unclassed = kopts.class.unclassed,
        lease_duration_ms = u64::try_from(kopts.lease_duration.as_millis()).unwrap_or(u64::MAX),
        "agent starting with the Kubernetes source"
    );
    let config = k8s::client::config(kube.api_server.as_deref()).await?;
    agent::kube::run(opts, kopts, config).await
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Agent {
            pins,
            dataplane,
            source,
            kube,
        } => {
            let auto_stats = memory::stats_entries(memory::possible_cpus(), memory::STATS_BUDGET);
            let opts = agent::Options {
                interface: pins.interface,
                bpffs_root: pins.bpffs_root,
                sizes: Sizes {
                    maglev_slots: maglev_slots(&dataplane, &source, &kube),
                    conntrack: dataplane.conntrack_size,
                    rev_nat: dataplane.rev_nat_size,
                    affinity: dataplane.affinity_size,
                    service_stats: dataplane.service_stats_size.unwrap_or(auto_stats.0),
                    backend_stats: dataplane.backend_stats_size.unwrap_or(auto_stats.1),
                },
                xdp_mode: dataplane.xdp_mode,
                half_open_max: dataplane
                    .half_open_max
                    .unwrap_or(dataplane.conntrack_size / 8),
                listen: dataplane.listen.listen(),
                flow_sweep_interval: Duration::from_secs(dataplane.flow_sweep_interval_secs),
                max_drain: Duration::from_secs(dataplane.max_drain_secs),
                hash_seed: agent::hash_seed(dataplane.hash_seed_file.as_deref())?,
                series: agent::metrics::Series {
                    per_backend: dataplane.backend_metrics,
                },
            };
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting the runtime")?;
            match source.services_file {
                Some(path) => {
                    let poll = Duration::from_millis(kube.poll_interval_ms.max(10));
                    runtime.block_on(agent::file::run(opts, path, poll))
                }
                None => runtime.block_on(run_kubernetes(opts, kube)),
            }
        }
        Command::Status { pins, output } => {
            let dir = PinDir::new(&pins.bpffs_root, &pins.interface);
            let maps = Maps::open(&dir)?;
            let snapshot = status::Snapshot::read(&maps)?;
            match output {
                OutputFormat::Text => print!("{}", status::render(&pins.interface, &snapshot)),
                OutputFormat::Json => println!(
                    "{}",
                    serde_json::to_string_pretty(&status::render_json(&pins.interface, &snapshot))
                        .context("rendering the status as JSON")?
                ),
            }
            Ok(())
        }
        Command::Cleanup { pins } => {
            print!(
                "{}",
                uninstall::uninstall(&pins.bpffs_root, Some(&pins.interface))?
            );
            Ok(())
        }
        Command::Uninstall {
            interface,
            bpffs_root,
            wait,
        } => {
            let report = uninstall::uninstall(&bpffs_root, interface.as_deref())?;
            print!("{report}");
            if wait {
                use std::io::Write as _;
                let _ = std::io::stdout().flush();
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .context("starting the runtime")?
                    .block_on(lb_userspace::shutdown::signal())?;
            }
            Ok(())
        }
        Command::Controller(args) => run_controller(args),
        Command::CheckConfig { file } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            let parsed = services_file::parse(&text, &Limits::default())
                .map_err(|e| anyhow::anyhow!("{}:\n{e}", file.display()))?;
            println!(
                "{}: OK ({} services)",
                file.display(),
                parsed.services.len()
            );
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Command {
        Cli::try_parse_from(std::iter::once("onehop").chain(args.iter().copied()))
            .unwrap_or_else(|e| panic!("{args:?}: {e}"))
            .command
    }

    fn controller(args: &[&str]) -> lb_userspace::controller::Options {
        let mut all = vec!["controller"];
        all.extend_from_slice(args);
        match parse(&all) {
            Command::Controller(a) => controller_options(&a, "id".into()),
            _ => panic!("not the controller"),
        }
    }

    fn agent(args: &[&str]) -> agent::kube::Options {
        let mut all = vec!["agent", "--interface", "eth9", "--kubernetes"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--node-name", "n1"]);
        match parse(&all) {
            Command::Agent { kube, .. } => kube_options(&kube).expect("options"),
            _ => panic!("not the agent"),
        }
    }

    /// One spelling per concept for both programs; the controller's former ones
    /// (`--class`, `--unclassed BOOL`, `--lease-duration-secs`) mean the same.
    #[test]
    fn old_and_new_flag_spellings_mean_the_same() {
        let new = controller(&[
            "--load-balancer-class",
            "example.com/x",
            "--ignore-unclassed",
            "--lease-duration-ms",
            "3000",
        ]);
        let old = controller(&[
            "--class",
            "example.com/x",
            "--unclassed",
            "false",
            "--lease-duration-secs",
            "3",
        ]);
        assert_eq!(new.class, old.class);
        assert_eq!(new.class.class, "example.com/x");
        assert!(!new.class.unclassed);
        assert_eq!(new.timing.lease_duration, Duration::from_secs(3));
        assert_eq!(old.timing.lease_duration, new.timing.lease_duration);

        let new = agent(&[
            "--load-balancer-class",
            "example.com/x",
            "--ignore-unclassed",
        ]);
        let old = agent(&["--class", "example.com/x", "--unclassed", "false"]);
        assert_eq!(new.class, old.class);
        assert_eq!(new.class.class, "example.com/x");
        assert!(!new.class.unclassed);
    }

    #[test]
    fn both_programs_serve_the_default_class_and_unclassed_services_by_default() {
        let c = controller(&[]);
        let a = agent(&[]);
        assert_eq!(c.class, a.class);
        assert_eq!(c.class.class, "onehop.io/l2");
        assert!(c.class.unclassed);
        assert_eq!(c.timing.lease_duration, Duration::from_secs(15));
        assert_eq!(a.lease_duration, Duration::from_millis(1200));
        assert!(controller(&["--unclassed", "true"]).class.unclassed);
    }

    /// The flow timeout flags reach the data path's config, each bounded as
    /// the services file's are.
    #[test]
    fn flow_timeout_flags_are_taken_and_bounded() {
        assert_eq!(agent(&[]).flow_timeouts, FlowTimeouts::DEFAULT);
        let t = agent(&["--tcp-reclaim-secs", "5", "--udp-reclaim-secs", "7"]).flow_timeouts;
        assert_eq!((t.tcp_reclaim_s, t.udp_reclaim_s), (5, 7));
        for flag in ["--tcp-reclaim-secs", "--tcp-closing-timeout-secs"] {
            let all = [
                "agent",
                "--interface",
                "eth9",
                "--kubernetes",
                "--node-name",
                "n1",
                flag,
                "1",
            ];
            let Command::Agent { kube, .. } = parse(&all) else {
                panic!("not the agent")
            };
            let e = kube_options(&kube).expect_err("1 s accepted");
            assert!(e.to_string().contains(flag), "{e}");
        }
    }

    #[test]
    fn an_old_and_a_new_spelling_together_are_refused() {
        for args in [
            ["controller", "--ignore-unclassed", "--unclassed", "true"].as_slice(),
            &[
                "controller",
                "--lease-duration-ms",
                "1000",
                "--lease-duration-secs",
                "1",
            ],
            &["controller", "--unclassed", "maybe"],
        ] {
            let all = std::iter::once("onehop").chain(args.iter().copied());
            assert!(Cli::try_parse_from(all).is_err(), "{args:?} was accepted");
        }
    }
}
