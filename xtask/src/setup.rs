//! Idempotent installation of the build and test prerequisites.
//!
//! Facts this relies on (see shared/notes/toolchain.md): the nightly
//! toolchain is present but ships without rust-src; bpf-linker 0.13 must be
//! linked against the same LLVM major version as rustc, and the only LLVM 22
//! on Debian 12 is the one inside the nightly sysroot.

use std::{
    env, fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};

use crate::{is_root, run_cmd};

/// Debian packages and the command each provides.
const PACKAGES: &[(&str, &str)] = &[
    ("iproute2", "ip"),
    ("bpftool", "bpftool"),
    ("ethtool", "ethtool"),
    ("iputils-arping", "arping"),
    ("iputils-ping", "ping"),
    // bench-e2e: the kube-proxy baselines, flushing their connection tracking between
    // runs, and HTTP latency.
    ("iptables", "iptables-restore"),
    ("nftables", "nft"),
    ("conntrack", "conntrack"),
    ("wrk", "wrk"),
    ("nginx-light", "nginx"),
];

/// Debian packages without a command, and a file each provides: bench-e2e's plots
/// (plotters renders text through `font-kit`: fontconfig and `FreeType`, and a font).
const FILE_PACKAGES: &[(&str, &str)] = &[
    ("libfontconfig1-dev", "/usr/include/fontconfig/fontconfig.h"),
    ("libfreetype-dev", "/usr/include/freetype2/ft2build.h"),
    (
        "fonts-dejavu-core",
        "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    ),
];

pub fn run() -> Result<()> {
    install_packages()?;
    install_rust_src()?;
    install_bpf_linker()?;
    mount_bpffs()?;
    Ok(())
}

fn have(cmd: &str) -> bool {
    let dirs = env::var_os("PATH").unwrap_or_default();
    env::split_paths(&dirs)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .any(|d| d.join(cmd).is_file())
}

fn install_packages() -> Result<()> {
    let missing: Vec<&str> = PACKAGES
        .iter()
        .filter(|(_, cmd)| !have(cmd))
        .chain(
            FILE_PACKAGES
                .iter()
                .filter(|(_, file)| !Path::new(file).exists()),
        )
        .map(|(pkg, _)| *pkg)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !is_root() {
        bail!("missing Debian packages {missing:?}; run as root or install them");
    }
    eprintln!("setup: installing {missing:?}");
    run_cmd(Command::new("apt-get").arg("update").arg("-qq"))?;
    run_cmd(
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

fn install_rust_src() -> Result<()> {
    let out = Command::new("rustup")
        .args(["component", "list", "--toolchain", "nightly", "--installed"])
        .output()
        .context("running rustup (is the nightly toolchain installed?)")?;
    if String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l.starts_with("rust-src"))
    {
        return Ok(());
    }
    eprintln!("setup: adding rust-src to the nightly toolchain");
    run_cmd(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))
}

fn bpf_linker_works() -> bool {
    Command::new("bpf-linker")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Where the LLVM symlinks bpf-linker loads at run time live; must outlive
/// the install, so not a temporary directory.
fn llvm_prefix() -> Result<PathBuf> {
    let home = env::var_os("HOME").context("HOME is not set")?;
    Ok(Path::new(&home).join(".cache/onehop/llvm"))
}

fn install_bpf_linker() -> Result<()> {
    if bpf_linker_works() {
        return Ok(());
    }
    let out = Command::new("rustc")
        .args(["+nightly", "--print", "sysroot"])
        .output()
        .context("asking nightly rustc for its sysroot")?;
    let sysroot = PathBuf::from(String::from_utf8(out.stdout)?.trim());
    let llvm = fs::read_dir(sysroot.join("lib"))
        .context("listing the nightly sysroot")?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libLLVM.so."))
        })
        .context("no libLLVM.so.* in the nightly sysroot")?;
    let prefix = llvm_prefix()?;
    let lib = prefix.join("lib");
    fs::create_dir_all(&lib).with_context(|| format!("creating {}", lib.display()))?;
    let soname = llvm.file_name().context("LLVM path without a file name")?;
    // One link for the build (-lLLVM), one under the SONAME the binary
    // records, so `bpf-linker` also runs outside of rustc.
    for name in [Path::new("libLLVM.so"), Path::new(soname)] {
        let link = lib.join(name);
        let _ = fs::remove_file(&link);
        std::os::unix::fs::symlink(&llvm, &link)
            .with_context(|| format!("linking {}", link.display()))?;
    }
    eprintln!(
        "setup: building bpf-linker against {} (a minute or two)",
        llvm.display()
    );
    run_cmd(
        Command::new("cargo")
            .args([
                "install",
                "bpf-linker",
                "--locked",
                "--no-default-features",
                "--features",
                "llvm-22",
            ])
            .env("LLVM_PREFIX", &prefix),
    )?;
    anyhow::ensure!(bpf_linker_works(), "bpf-linker installed but does not run");
    Ok(())
}

fn mount_bpffs() -> Result<()> {
    let mounts = fs::read_to_string("/proc/mounts").context("reading /proc/mounts")?;
    if mounts
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some("/sys/fs/bpf"))
    {
        return Ok(());
    }
    if !is_root() {
        eprintln!("setup: bpffs is not mounted at /sys/fs/bpf (needs root)");
        return Ok(());
    }
    run_cmd(Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]))
}
