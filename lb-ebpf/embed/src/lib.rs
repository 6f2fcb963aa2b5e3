//! The build-script routine behind the embedded eBPF objects: lb-userspace's
//! build.rs builds lb-ebpf, whose binaries are the product object (lb-ebpf)
//! and the bench object (lb-ebpf-bench), for bpfel-unknown-none (nightly,
//! build-std, bpf-linker, BTF) with `aya_build`, and leaves each at
//! `$OUT_DIR/<bin name>` for `include_bytes!`.
//!
//! With `AYA_BUILD_SKIP=1`, or when bpf-linker is not installed, an empty
//! stub is written instead so `cargo check`/`clippy`/host unit tests work on
//! any machine; loading then fails with a clear message.
//! `cargo xtask setup` installs the toolchain pieces.
//!
//! [`differences`] compares a built object with lb-common's map tables; the
//! tests of both embedding crates use it.

use std::{
    collections::BTreeSet,
    env, fs,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result};
use lb_common::maps::MapSpec;

pub mod stack;
pub mod toolchain;

/// One eBPF crate of the workspace to build.
#[derive(Clone, Copy, Debug)]
pub struct Package<'a> {
    pub name: &'a str,
    /// The package's directory, relative to the calling crate's manifest.
    pub dir: &'a str,
    /// Further directories whose changes must rebuild the objects (crates
    /// the package links, e.g. lb-common), relative likewise.
    pub watch: &'a [&'a str],
    /// Its binaries: one object each.
    pub objects: &'a [&'a str],
}

/// Builds `package` and leaves each of its objects at `$OUT_DIR/<object>`,
/// or writes empty stubs there. Call it from a build script.
pub fn build(package: Package<'_>) -> Result<()> {
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").context("OUT_DIR not set")?);
    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR not set")?);
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
                "cargo:warning=bpf-linker not found: embedding empty eBPF objects (run `cargo xtask setup`)"
            );
        }
        for object in package.objects {
            fs::write(out_dir.join(object), [])
                .with_context(|| format!("writing the {object} stub"))?;
        }
        println!("cargo:rustc-cfg=onehop_ebpf_stub");
        return Ok(());
    }
    for dir in package.watch {
        println!(
            "cargo:rerun-if-changed={}",
            manifest_dir.join(dir).display()
        );
    }
    let root = manifest_dir.join(package.dir);
    // The eBPF crates sit one level below the workspace root, beside the
    // toolchain pin.
    let workspace = root.join("..");
    println!(
        "cargo:rerun-if-changed={}",
        toolchain::pin_file(&workspace).display()
    );
    let pin = toolchain::read(&workspace).map_err(anyhow::Error::msg)?;
    let nightly = toolchain::resolve(&pin).map_err(anyhow::Error::msg)?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: package.name,
            root_dir: utf8(&root)?,
            ..Default::default()
        }],
        aya_build::Toolchain::Custom(&nightly),
    )?;
    for object in package.objects {
        let path = out_dir.join(object);
        anyhow::ensure!(
            path.is_file(),
            "building {} left no object at {}",
            package.name,
            path.display()
        );
    }
    Ok(())
}

fn utf8(path: &Path) -> Result<&str> {
    path.to_str()
        .with_context(|| format!("non-UTF-8 path {}", path.display()))
}

/// What differs between a built object and the map tables and program list
/// it should hold exactly: one line per difference, empty when they agree.
/// The object is parsed with aya's own parser, not loaded (no root).
pub fn differences(object: &[u8], tables: &[&[MapSpec]], programs: &[&str]) -> Result<Vec<String>> {
    let obj = aya_obj::Object::parse(object).context("parsing the eBPF object")?;
    let mut out = Vec::new();
    let specs: Vec<MapSpec> = tables.iter().flat_map(|t| t.iter().copied()).collect();
    let mut names = BTreeSet::new();
    for spec in &specs {
        if !names.insert(spec.name) {
            out.push(format!("map {} is in the tables twice", spec.name));
        }
        let Some(map) = obj.maps.get(spec.name) else {
            out.push(format!("map {} is not in the object", spec.name));
            continue;
        };
        let found = (
            map.map_type(),
            map.key_size(),
            map.value_size(),
            map.max_entries(),
            map.map_flags(),
        );
        let want = (
            spec.kind as u32,
            spec.key_size,
            spec.value_size,
            spec.max_entries,
            spec.flags,
        );
        if found != want {
            out.push(format!(
                "map {}: (type, key size, value size, max_entries, flags) is {found:?} in the \
                 object, {want:?} in the table",
                spec.name
            ));
        }
    }
    for name in obj.maps.keys() {
        if !names.contains(name.as_str()) {
            out.push(format!("map {name} is in the object but in no table"));
        }
    }
    let found: BTreeSet<&str> = obj.programs.keys().map(String::as_str).collect();
    let want: BTreeSet<&str> = programs.iter().copied().collect();
    for p in found.difference(&want) {
        out.push(format!("program {p} is in the object but not expected"));
    }
    for p in want.difference(&found) {
        out.push(format!("program {p} is missing from the object"));
    }
    Ok(out)
}
