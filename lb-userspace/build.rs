//! Builds lb-ebpf for bpfel-unknown-none (nightly, build-std, bpf-linker,
//! BTF) and leaves the object at `$OUT_DIR/lb-ebpf` for `include_bytes!`.
//!
//! With `AYA_BUILD_SKIP=1`, or when bpf-linker is not installed, an empty
//! stub is written instead so `cargo check`/`clippy`/host unit tests work on
//! any machine; the agent then refuses to load with a clear message.
//! `cargo xtask setup` installs the toolchain pieces.

use std::{env, fs, path::PathBuf};

use anyhow::{Context as _, Result};

#[path = "build/ebpf_toolchain.rs"]
#[expect(dead_code, reason = "shared with the xtask, which uses all of it")]
mod ebpf_toolchain;

fn main() -> Result<()> {
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").context("OUT_DIR not set")?);
    let object = out_dir.join("lb-ebpf");
    println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");
    println!("cargo::rustc-check-cfg=cfg(onehop_ebpf_stub)");
    let skip = env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    let linker = which::which("bpf-linker").ok();
    // Rebuild once bpf-linker gets installed (cargo re-runs a build script
    // whose rerun-if-changed path is missing on every build until it exists).
    let watched = linker.clone().unwrap_or_else(|| {
        let cargo_home = env::var_os("CARGO_HOME")
            .map(PathBuf::from)
            .or_else(|| env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
            .unwrap_or_default();
        cargo_home.join("bin/bpf-linker")
    });
    println!("cargo:rerun-if-changed={}", watched.display());
    let have_linker = linker.is_some();
    if skip || !have_linker {
        if !skip {
            println!(
                "cargo:warning=bpf-linker not found: embedding an empty eBPF object (run `cargo xtask setup`)"
            );
        }
        fs::write(&object, []).context("writing the eBPF stub")?;
        println!("cargo:rustc-cfg=onehop_ebpf_stub");
        return Ok(());
    }
    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR")?);
    let root = manifest_dir.join("../lb-ebpf");
    let root = root.to_str().context("non-UTF-8 path to lb-ebpf")?;
    // lb-common is shared with the eBPF crate: rebuild when it changes too.
    println!(
        "cargo:rerun-if-changed={}",
        manifest_dir.join("../lb-common").display()
    );
    let workspace = manifest_dir.join("..");
    println!(
        "cargo:rerun-if-changed={}",
        ebpf_toolchain::pin_file(&workspace).display()
    );
    let pin = ebpf_toolchain::read(&workspace).map_err(anyhow::Error::msg)?;
    let toolchain = ebpf_toolchain::resolve(&pin).map_err(anyhow::Error::msg)?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "lb-ebpf",
            root_dir: root,
            ..Default::default()
        }],
        aya_build::Toolchain::Custom(&toolchain),
    )
}
