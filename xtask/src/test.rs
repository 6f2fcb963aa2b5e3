//! `cargo xtask test`: exactly what CI runs; `cargo xtask test-cluster`: the
//! Kubernetes-facing tests against a real cluster.

use std::process::Command;

use anyhow::{Result, bail};
use onehop_apiserver::k8s::{TARGET_ENV, describe_kubeconfig};

use crate::{is_root, run_cmd, workspace_root};

pub fn run(extra: &[String]) -> Result<()> {
    let root = workspace_root();
    let cargo = || {
        let mut c = Command::new("cargo");
        // Always the in-repo test API server, whatever KUBECONFIG says: a
        // developer's kubeconfig may point at production.
        c.current_dir(&root).env_remove(TARGET_ENV);
        c
    };
    run_cmd(cargo().args(["fmt", "--all", "--check"]))?;
    run_cmd(cargo().args(["clippy", "--all-targets", "--", "-D", "warnings"]))?;
    run_cmd(&mut clippy_ebpf(cargo()))?;
    // The default members are the host crates; privileged tests need root
    // and build their own namespaces. One test thread per core is plenty:
    // the namespace tests are I/O bound and isolated by unique names.
    run_cmd(cargo().arg("test").args(extra))?;
    Ok(())
}

/// Clippy on the eBPF crate (its library and both objects) for the BPF
/// target, warnings denied, as aya lints its own eBPF crates: the default
/// members are host crates only, so the plain clippy run never sees it.
fn clippy_ebpf(mut cargo: Command) -> Command {
    cargo
        .args(["+nightly", "clippy", "--package", "lb-ebpf", "--target"])
        .arg(crate::build_ebpf::TARGET)
        .args(["-Z", "build-std=core", "--", "-D", "warnings"])
        // rustup sets these for the stable toolchain xtask runs under; the
        // nightly cargo must pick its own rustc and clippy-driver.
        .env_remove("RUSTC")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("RUSTUP_TOOLCHAIN");
    cargo
}

/// The test binaries that talk to Kubernetes.
const KUBERNETES_TESTS: [&str; 2] = ["controller", "k8s_e2e"];

pub fn run_cluster(extra: &[String]) -> Result<()> {
    if std::env::var_os("KUBECONFIG").is_none_or(|v| v.is_empty()) {
        bail!(
            "refusing to run without KUBECONFIG: point it at a disposable cluster, e.g.\n  \
             KUBECONFIG=/etc/rancher/k3s/k3s.yaml cargo xtask test-cluster"
        );
    }
    let target = describe_kubeconfig()?;
    println!(
        "Kubernetes-facing tests against a REAL cluster: {target} (KUBECONFIG={})",
        std::env::var("KUBECONFIG").unwrap_or_default()
    );
    if !is_root() {
        println!("warning: not root: the namespace end-to-end tests (k8s_e2e) will fail");
    }
    let mut cmd = Command::new("cargo");
    cmd.current_dir(workspace_root())
        .env(TARGET_ENV, "kubeconfig")
        .args(["test", "-p", "lb-userspace"]);
    for t in KUBERNETES_TESTS {
        cmd.args(["--test", t]);
    }
    // One test at a time: a shared cluster, Node objects that turn NotReady
    // after ~40 s without a kubelet, and clear output.
    cmd.args(["--", "--test-threads=1"]).args(extra);
    run_cmd(&mut cmd)
}
