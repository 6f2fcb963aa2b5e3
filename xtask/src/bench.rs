//! `cargo xtask bench <which> [-- args]`: benchmarks, built in release mode.

use std::process::Command;

use anyhow::{Result, bail};

use crate::{run_cmd, workspace_root};

pub fn run(which: &str, extra: &[String]) -> Result<()> {
    let bin = match which {
        // XDP data path, ns/packet via BPF_PROG_TEST_RUN (benches/README.md).
        "xdp" => "bench-xdp",
        other => bail!("unknown benchmark {other:?} (known: xdp)"),
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
