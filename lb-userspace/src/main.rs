//! `onehop`: the node agent of the onehop XDP load balancer and its
//! operator commands.

use std::{path::PathBuf, process::ExitCode, time::Duration};

use anyhow::{Context as _, Result};
use clap::{Args, Parser, Subcommand};
use lb_userspace::{
    agent,
    bpfmaps::{Maps, PinDir},
    config::{self, Limits},
    loader::{self, Sizes, XdpAttachMode},
    status,
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
    #[command(subcommand)]
    command: Command,
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

#[derive(Subcommand)]
enum Command {
    /// Attach the data path to an interface (or adopt the one already
    /// attached) and keep its maps in sync with a services file. Stopping or
    /// killing the agent leaves traffic flowing; `cleanup` detaches.
    Agent {
        #[command(flatten)]
        pins: Pins,
        /// Services file (YAML). Re-read whenever it changes; a bad file is
        /// rejected and the last good state stays in force.
        #[arg(short, long, env = "ONEHOP_CONFIG")]
        config: PathBuf,
        /// XDP attach mode.
        #[arg(long, value_enum, default_value_t)]
        xdp_mode: XdpAttachMode,
        /// How often the services file is checked for changes.
        #[arg(long, default_value_t = 500)]
        poll_interval_ms: u64,
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
    },
    /// Print services, backends, announced VIPs and counters from the pinned
    /// maps (works with or without a running agent).
    Status {
        #[command(flatten)]
        pins: Pins,
    },
    /// Detach the data path from the interface and remove its pinned maps
    /// (the connection table is lost).
    Cleanup {
        #[command(flatten)]
        pins: Pins,
    },
    /// Validate a services file and exit (non-zero with every problem listed).
    CheckConfig {
        /// Services file (YAML).
        file: PathBuf,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Agent {
            pins,
            config,
            xdp_mode,
            poll_interval_ms,
            maglev_slots,
            conntrack_size,
            rev_nat_size,
            affinity_size,
        } => {
            let opts = agent::Options {
                interface: pins.interface,
                bpffs_root: pins.bpffs_root,
                sizes: Sizes {
                    maglev_slots,
                    conntrack: conntrack_size,
                    rev_nat: rev_nat_size,
                    affinity: affinity_size,
                },
                xdp_mode,
            };
            let poll = Duration::from_millis(poll_interval_ms.max(10));
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting the runtime")?
                .block_on(agent::run_file(opts, config, poll))
        }
        Command::Status { pins } => {
            let dir = PinDir::new(&pins.bpffs_root, &pins.interface);
            let maps = Maps::open(&dir)?;
            let snapshot = status::Snapshot::read(&maps)?;
            print!("{}", status::render(&pins.interface, &snapshot));
            Ok(())
        }
        Command::Cleanup { pins } => {
            if loader::cleanup(&pins.bpffs_root, &pins.interface)? {
                println!("removed the onehop data path from {}", pins.interface);
            } else {
                println!(
                    "nothing pinned for {} under {}",
                    pins.interface,
                    pins.bpffs_root.display()
                );
            }
            Ok(())
        }
        Command::CheckConfig { file } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            let parsed = config::parse(&text, &Limits::default())
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
