//! The one build-script routine behind both embedded eBPF objects:
//! lb-userspace's build.rs builds the product object (lb-ebpf), benches'
//! build.rs the bench object (lb-ebpf-bench). Each is compiled for
//! bpfel-unknown-none (nightly, build-std, bpf-linker, BTF) by `aya_build`
//! and left at `$OUT_DIR/<bin name>` for `include_bytes!`.
//!
//! With `AYA_BUILD_SKIP=1`, or when bpf-linker is not installed, an empty
//! stub is written instead so `cargo check`/`clippy`/host unit tests work on
//! any machine; loading then fails with a clear message.
//! `cargo xtask setup` installs the toolchain pieces.

use std::{
    env, fs,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result};

/// One eBPF crate of the workspace to build and embed.
#[derive(Clone, Copy, Debug)]
pub struct Object<'a> {
    /// Package name; its binary of the same name is the object.
    pub package: &'a str,
    /// The package's directory, relative to the calling crate's manifest.
    pub dir: &'a str,
    /// Further directories whose changes must rebuild the object (the
    /// crates it links: lb-ebpf, lb-common), relative likewise.
    pub watch: &'a [&'a str],
}

/// Builds `object` into `$OUT_DIR/<package>`, or writes an empty stub there.
/// Call it from a build script.
pub fn build(object: Object<'_>) -> Result<()> {
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").context("OUT_DIR not set")?);
    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR not set")?);
    let target = out_dir.join(object.package);
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
    if skip || linker.is_none() {
        if !skip {
            println!(
                "cargo:warning=bpf-linker not found: embedding an empty {} object (run `cargo xtask setup`)",
                object.package
            );
        }
        fs::write(&target, []).with_context(|| format!("writing the {} stub", object.package))?;
        println!("cargo:rustc-cfg=onehop_ebpf_stub");
        return Ok(());
    }
    for dir in object.watch {
        println!(
            "cargo:rerun-if-changed={}",
            manifest_dir.join(dir).display()
        );
    }
    let root = manifest_dir.join(object.dir);
    aya_build::build_ebpf(
        [aya_build::Package {
            name: object.package,
            root_dir: utf8(&root)?,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )?;
    anyhow::ensure!(
        target.is_file(),
        "building {} left no object at {}",
        object.package,
        target.display()
    );
    Ok(())
}

fn utf8(path: &Path) -> Result<&str> {
    path.to_str()
        .with_context(|| format!("non-UTF-8 path {}", path.display()))
}
