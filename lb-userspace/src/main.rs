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
    plan::{model::Limits, services_file},
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
    /// XDP attach mode.
    #[arg(long, value_enum, default_value_t)]
    xdp_mode: XdpAttachMode,
    /// Slots of the shared Maglev array (set when the maps are created;
    /// each service uses 101..65521 slots depending on its backends).
    #[arg(long, default_value_t = Sizes::default().maglev_slots)]
    maglev_slots: u32,
    /// Connection-table entries (set when the maps are created).
    #[arg(long, default_value_t = Sizes::default().conntrack)]
    conntrack_size: u32,
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
    /// The loadBalancerClass onehop serves.
    #[arg(long, default_value = "onehop.io/l2")]
    load_balancer_class: String,
    /// Leave Services without a loadBalancerClass to another implementation.
    #[arg(long)]
    ignore_unclassed: bool,
    /// Lowest NAT source port for remote backends (Kubernetes source).
    #[arg(long, default_value_t = lb_common::DEFAULT_NAT_PORT_MIN)]
    nat_port_min: u16,
    /// Highest NAT source port for remote backends (Kubernetes source).
    #[arg(long, default_value_t = lb_common::DEFAULT_NAT_PORT_MAX)]
    nat_port_max: u16,
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
    /// natPorts {min, max}, vips[] {ip, service, announced, node},
    /// services[] {frontend, vip, port, protocol, id, slots, backendIds,
    /// affinitySeconds, sourceRanges, packets, bytes, counted}, backends[] {id,
    /// ip, port, node, location, packets, bytes, counted}, flows {conntrack, revNat,
    /// affinity}, counters {label: n}, drops {label: n}.
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
    /// The loadBalancerClass onehop serves.
    #[arg(long, alias = "load-balancer-class", default_value = "onehop.io/l2")]
    class: String,
    /// Also serve Services without a loadBalancerClass.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    unclassed: bool,
    /// How long a leader Lease stays valid without renewal (seconds).
    #[arg(long, default_value_t = 15)]
    lease_duration_secs: u64,
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

fn run_controller(args: ControllerArgs) -> Result<()> {
    use hyper::StatusCode;
    use lb_userspace::{
        controller::{self, metrics::ControllerMetrics},
        k8s::translate::ClassFilter,
        shutdown,
    };
    let identity = match args.identity {
        Some(id) => id,
        None => std::fs::read_to_string("/proc/sys/kernel/hostname")
            .context("no --identity / POD_NAME, and reading the host name failed")?
            .trim()
            .to_owned(),
    };
    let opts = controller::Options {
        namespace: args.namespace,
        lease_name: args.lease_name,
        identity,
        class: ClassFilter {
            class: args.class,
            unclassed: args.unclassed,
        },
        timing: controller::Timing {
            lease_duration: Duration::from_secs(args.lease_duration_secs),
            renew_deadline: Duration::from_millis(args.renew_deadline_ms),
            retry_period: Duration::from_millis(args.retry_period_ms),
            ..controller::Timing::default()
        },
    };
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

async fn run_kubernetes(opts: agent::Options, kube: KubeArgs) -> Result<()> {
    let node_name = kube
        .node_name
        .context("--kubernetes needs --node-name (or NODE_NAME)")?;
    anyhow::ensure!(
        kube.nat_port_min <= kube.nat_port_max,
        "--nat-port-min is above --nat-port-max"
    );
    let client = k8s::client::client(kube.api_server.as_deref()).await?;
    let kopts = agent::kube::Options {
        node_name,
        namespace: kube.namespace,
        class: k8s::translate::ClassFilter {
            class: kube.load_balancer_class,
            unclassed: !kube.ignore_unclassed,
        },
        nat_ports: lb_userspace::plan::model::NatPorts {
            min: kube.nat_port_min,
            max: kube.nat_port_max,
        },
        renew_interval: Duration::from_millis(kube.lease_renew_ms.max(50)),
        lease_duration: Duration::from_millis(kube.lease_duration_ms.max(200)),
    };
    agent::kube::run(opts, kopts, client).await
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
                    maglev_slots: dataplane.maglev_slots,
                    conntrack: dataplane.conntrack_size,
                    rev_nat: dataplane.rev_nat_size,
                    affinity: dataplane.affinity_size,
                    service_stats: dataplane.service_stats_size.unwrap_or(auto_stats.0),
                    backend_stats: dataplane.backend_stats_size.unwrap_or(auto_stats.1),
                },
                xdp_mode: dataplane.xdp_mode,
                listen: dataplane.listen.listen(),
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
