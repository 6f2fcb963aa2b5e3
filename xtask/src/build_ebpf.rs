//! `cargo xtask build-ebpf`: the same build lb-userspace's build.rs does
//! (nightly, build-std=core, bpf-linker, BTF), run explicitly, then a report
//! of each object's sections and of what the verifier thinks of it.

use std::{fs, path::PathBuf, process::Command};

use anyhow::{Context as _, Result};

use crate::{is_root, run_cmd, workspace_root};

pub const TARGET: &str = "bpfel-unknown-none";

/// lb-ebpf's binaries: the product object (what the agent loads) and the
/// bench object (the benchmarks' programs around the same code).
const OBJECTS: [&str; 2] = ["lb-ebpf", "lb-ebpf-bench"];

/// Builds both objects and returns their paths.
pub fn build() -> Result<Vec<PathBuf>> {
    let root = workspace_root();
    let toolchain = crate::setup::ebpf_nightly()?;
    run_cmd(
        Command::new("cargo")
            .current_dir(&root)
            .arg(format!("+{toolchain}"))
            .args([
                "build",
                "--release",
                "--package",
                "lb-ebpf",
                "--target",
                TARGET,
            ])
            .args(["-Z", "build-std=core"])
            .env(
                "CARGO_ENCODED_RUSTFLAGS",
                "-Cdebuginfo=2\x1f-Clink-arg=--btf",
            )
            .env_remove("RUSTC")
            .env_remove("RUSTC_WORKSPACE_WRAPPER")
            .env_remove("RUSTUP_TOOLCHAIN"),
    )?;
    OBJECTS
        .iter()
        .map(|name| {
            let object = root.join("target").join(TARGET).join("release").join(name);
            anyhow::ensure!(object.is_file(), "{} was not produced", object.display());
            Ok(object)
        })
        .collect()
}

pub fn run() -> Result<()> {
    for object in build()? {
        let size = fs::metadata(&object).context("stat of the object")?.len();
        println!("object: {} ({size} bytes)", object.display());
        let _ = run_cmd(
            Command::new("llvm-objdump")
                .args(["--section-headers"])
                .arg(&object),
        )
        .or_else(|_| run_cmd(Command::new("readelf").args(["-S", "-W"]).arg(&object)));
        verifier_report(&object)?;
    }
    Ok(())
}

/// Loads every program with bpftool into a scratch pin directory and prints
/// its translated/JITed size and the number of instructions the verifier
/// processed; then removes the pins.
fn verifier_report(object: &std::path::Path) -> Result<()> {
    if !is_root() {
        println!("(not root: skipping the verifier report)");
        return Ok(());
    }
    let dir = PathBuf::from(format!("/sys/fs/bpf/onehop-xtask-{}", std::process::id()));
    let result = (|| -> Result<()> {
        run_cmd(
            Command::new("bpftool")
                .args(["prog", "loadall"])
                .arg(object)
                .arg(&dir),
        )?;
        for entry in fs::read_dir(&dir).context("listing loaded programs")? {
            let path = entry?.path();
            let out = Command::new("bpftool")
                .args(["prog", "show", "pinned"])
                .arg(&path)
                .output()
                .context("bpftool prog show")?;
            print!("{}", String::from_utf8_lossy(&out.stdout));
        }
        Ok(())
    })();
    let _ = fs::remove_dir_all(&dir);
    result
}
