//! Developer commands:
//! `cargo xtask <setup|build-ebpf|test|test-cluster|kernels|demo|crdgen|bundle|image|bench>`.
//!
//! Every command that needs the toolchain runs `setup` first; setup is
//! idempotent and cheap when everything is already installed.

mod bench;
mod build_ebpf;
mod demo;
mod image;
mod kernels;
use lb_ebpf_embed::toolchain as ebpf_toolchain;
mod setup;
mod test;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "onehop developer tasks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install what building and testing need (Debian packages, rust-src,
    /// bpf-linker against rustc's own LLVM) and mount bpffs. Idempotent.
    Setup,
    /// Build the eBPF object and show its sections and, when run as root,
    /// what the verifier says about each program.
    BuildEbpf,
    /// Run the demo: the agent in network namespaces on an embedded services
    /// file (ARP answered by XDP, requests spread over pods, status).
    Demo,
    /// Run every check CI runs: fmt, clippy (warnings denied), all tests
    /// (unit, packet tests run by the kernel, namespace end-to-end). The
    /// Kubernetes-facing tests always use the in-repo test API server, even
    /// when KUBECONFIG is set.
    Test {
        /// Extra arguments for `cargo test` (e.g. a test name filter).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Run the Kubernetes-facing tests (`controller`, `k8s_e2e`) against the
    /// REAL cluster of KUBECONFIG's current context, one test at a time.
    ///
    /// Use a disposable cluster with no other LoadBalancer implementation,
    /// e.g. `k3s server --disable servicelb`, then
    /// `KUBECONFIG=/etc/rancher/k3s/k3s.yaml cargo xtask test-cluster`
    /// (as root: the end-to-end tests build network namespaces). Refuses to
    /// run without KUBECONFIG. Each test works in its own namespace
    /// `onehop-t-<pid>-<n>` with its own loadBalancerClass, creates Node
    /// objects named after it, and deletes them and its namespaces at the
    /// end; the onehop CRDs are created if missing and left installed.
    /// Skipped there (they need the test server): the API-outage tests, the
    /// controller's RBAC call log, the write-count checks, a class change
    /// and an invalid source range (a real API server refuses both). See
    /// README.md, "Tests without a cluster, and with one".
    TestCluster {
        /// Extra arguments for the test binaries (e.g. a test name filter).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Regenerate `manifests/crds.yaml` from the Rust types of the custom
    /// resources, and the install bundle that contains it (a test fails when
    /// either is stale).
    Crdgen,
    /// Regenerate the install bundle from `manifests/`: `deploy/onehop.yaml`
    /// (every manifest in apply order, one file) and `kustomization.yaml` (the
    /// same files, the image as its `images:` setting). A test fails when
    /// either is stale.
    Bundle,
    /// Build the image the manifests name (`localhost/onehop:<version>`) with
    /// docker from the repository's Dockerfile, for this machine's platform.
    Image {
        /// Also write the image to this tar file, to copy to each node and
        /// import there: `sudo k3s ctr images import FILE`.
        #[arg(long, value_name = "FILE")]
        save: Option<std::path::PathBuf>,
        /// Also import the image into this machine's k3s containerd
        /// (`docker save | k3s ctr images import -`; as root).
        #[arg(long)]
        import: bool,
    },
    /// Boot a distribution kernel (Debian's `linux-image-amd64`, or `--deb`) under qemu
    /// and run the verifier, the packet tests and the agent's attach/restart/cleanup in
    /// it (`--mode test`), or report the memory of the agent's maps (`--mode maps`). See
    /// README.md, "Kernels".
    Kernels(kernels::Options),
    /// Run a benchmark in release mode: `xdp` (ns/packet of the XDP data
    /// path via `BPF_PROG_TEST_RUN`) or `e2e` (onehop vs kube-proxy iptables
    /// and nftables vs routing, in namespaces); both need root. See
    /// benches/README.md.
    Bench {
        /// Which benchmark.
        which: String,
        /// Extra arguments for the benchmark binary (after `--`).
        #[arg(last = true)]
        args: Vec<String>,
    },
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Setup => setup::run(),
        Command::BuildEbpf => {
            setup::run()?;
            build_ebpf::run()
        }
        Command::Demo => {
            setup::run()?;
            if lb_userspace::dataplane::object::object().is_err() {
                return reexec_after_setup();
            }
            demo::run()
        }
        Command::Test { args } => {
            setup::run()?;
            test::run(&args)
        }
        Command::TestCluster { args } => {
            setup::run()?;
            test::run_cluster(&args)
        }
        Command::Crdgen => {
            use anyhow::Context as _;
            let path = workspace_root().join("manifests/crds.yaml");
            std::fs::write(&path, lb_userspace::k8s::crd::crds_yaml()?)
                .with_context(|| format!("writing {}", path.display()))?;
            println!("wrote {}", path.display());
            image::write_bundle()
        }
        Command::Bundle => image::write_bundle(),
        Command::Image { save, import } => image::build(save.as_deref(), import),
        Command::Kernels(options) => {
            setup::run()?;
            kernels::run(&options)
        }
        Command::Bench { which, args } => {
            setup::run()?;
            bench::run(&which, &args)
        }
    }
}

/// Runs a command, failing with its command line when it fails.
pub(crate) fn run_cmd(cmd: &mut std::process::Command) -> Result<()> {
    use anyhow::Context as _;
    let status = cmd.status().with_context(|| format!("starting {cmd:?}"))?;
    anyhow::ensure!(status.success(), "{cmd:?} failed: {status}");
    Ok(())
}

/// The workspace root (xtask lives one level below it).
pub(crate) fn workspace_root() -> std::path::PathBuf {
    let manifest = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

pub(crate) fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// On a fresh machine xtask is compiled before `setup` has installed
/// bpf-linker, so the eBPF object it embeds is the empty stub. Once setup
/// has run, start again through cargo, which rebuilds with the real object.
fn reexec_after_setup() -> Result<()> {
    const GUARD: &str = "ONEHOP_XTASK_REEXEC";
    anyhow::ensure!(
        std::env::var_os(GUARD).is_none(),
        "the eBPF object is still missing after setup; see the build warnings"
    );
    let args: Vec<_> = std::env::args_os().skip(1).collect();
    let mut cmd = std::process::Command::new("cargo");
    cmd.current_dir(workspace_root())
        .arg("xtask")
        .args(&args)
        .env(GUARD, "1");
    run_cmd(&mut cmd)
}
