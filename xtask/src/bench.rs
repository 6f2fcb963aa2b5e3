//! `cargo xtask bench <which> [-- args]`: benchmarks, built in release mode.

use std::process::Command;

use anyhow::{Result, bail};

use crate::{run_cmd, workspace_root};

pub fn run(which: &str, extra: &[String]) -> Result<()> {
    let bin = match which {
        // XDP data path, ns/packet via BPF_PROG_TEST_RUN (benches/README.md).
        "xdp" => "bench-xdp",
        // onehop vs kube-proxy (iptables, nftables) vs routing in namespaces (benches/README.md).
        "e2e" => {
            // bench-e2e runs the agent binary found next to itself.
            run_cmd(Command::new("cargo").current_dir(workspace_root()).args([
                "build",
                "--release",
                "-p",
                "lb-userspace",
                "--bin",
                "onehop",
            ]))?;
            "bench-e2e"
        }
        other => bail!("unknown benchmark {other:?} (known: xdp, e2e)"),
    };
    run_cmd(
        Command::new("cargo")
            .current_dir(workspace_root())
            .args([
                "run",
                "--release",
                "-p",
                "onehop-benches",
                "--bin",
                bin,
                "--",
            ])
            .args(extra),
    )
}
