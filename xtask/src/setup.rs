//! Idempotent installation of the build and test prerequisites.
//!
//! Facts this relies on (see shared/notes/toolchain.md): the nightly
//! toolchain is present but ships without rust-src; bpf-linker 0.13 must be
//! linked against the same LLVM major version as rustc, and the only LLVM 22
//! on Debian 12 is the one inside the nightly sysroot. The nightly is the
//! one `rust-toolchain-ebpf` pins ([`ebpf_toolchain`]).

use std::{
    env, fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};

use crate::{ebpf_toolchain, is_root, run_cmd, workspace_root};

/// Debian packages and the command each provides.
const PACKAGES: &[(&str, &str)] = &[
    ("iproute2", "ip"),
    ("bpftool", "bpftool"),
    ("ethtool", "ethtool"),
    ("iputils-arping", "arping"),
    ("iputils-ping", "ping"),
    // The IPv6 end-to-end test's client: neighbour discovery as a host does it.
    ("ndisc6", "ndisc6"),
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
    let toolchain = ebpf_nightly()?;
    install_rust_src(&toolchain)?;
    install_bpf_linker(&toolchain)?;
    mount_bpffs()?;
    Ok(())
}

/// The name of the pinned eBPF nightly on this machine, or an error saying
/// what is installed, what is wanted and how to get it.
pub fn ebpf_nightly() -> Result<String> {
    let pin = ebpf_toolchain::read(&workspace_root()).map_err(anyhow::Error::msg)?;
    ebpf_toolchain::resolve(&pin).map_err(anyhow::Error::msg)
}

fn have(cmd: &str) -> bool {
    let dirs = env::var_os("PATH").unwrap_or_default();
    env::split_paths(&dirs)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .any(|d| d.join(cmd).is_file())
}

/// Installs those of `packages` (Debian package, command it provides) whose command is
/// missing.
pub fn install_commands(packages: &[(&str, &str)]) -> Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .filter(|(_, cmd)| !have(cmd))
        .map(|(pkg, _)| *pkg)
        .collect();
    apt_install(&missing)
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
    apt_install(&missing)
}

fn apt_install(missing: &[&str]) -> Result<()> {
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
            .args(missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

fn install_rust_src(toolchain: &str) -> Result<()> {
    let out = Command::new("rustup")
        .args(["component", "list", "--toolchain", toolchain, "--installed"])
        .output()
        .with_context(|| format!("running rustup (is {toolchain} installed?)"))?;
    if String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l.starts_with("rust-src"))
    {
        return Ok(());
    }
    eprintln!("setup: adding rust-src to {toolchain}");
    run_cmd(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", toolchain]))
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

fn install_bpf_linker(toolchain: &str) -> Result<()> {
    if bpf_linker_works() {
        return Ok(());
    }
    let out = Command::new("rustc")
        .arg(format!("+{toolchain}"))
        .args(["--print", "sysroot"])
        .output()
        .with_context(|| format!("asking {toolchain}'s rustc for its sysroot"))?;
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
        .with_context(|| format!("no libLLVM.so.* in the sysroot of {toolchain}"))?;
    let llvm_major = ebpf_toolchain::llvm_major(toolchain)
        .with_context(|| format!("no LLVM version in `rustc +{toolchain} -vV`"))?;
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
                &format!("llvm-{llvm_major}"),
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The image build reads the same pin, with its own shell parsing of
    /// the file: run that parsing and compare it with the xtask's.
    #[test]
    fn the_dockerfile_builds_with_the_pinned_nightly() {
        let root = workspace_root();
        let dockerfile = fs::read_to_string(root.join("Dockerfile")).expect("Dockerfile");
        assert!(
            dockerfile.contains("COPY rust-toolchain-ebpf /rust-toolchain-ebpf"),
            "the Dockerfile does not copy the pin"
        );
        let start = dockerfile
            .find("EBPF_NIGHTLY=\"$(")
            .expect("the Dockerfile sets EBPF_NIGHTLY")
            + "EBPF_NIGHTLY=\"".len();
        let end = start + dockerfile[start..].find(")\"").expect("end of $(...)") + 1;
        let script = dockerfile[start..end].replace(
            "/rust-toolchain-ebpf",
            &root.join(ebpf_toolchain::FILE).display().to_string(),
        );
        let out = Command::new("sh")
            .args(["-c", &format!("echo {script}")])
            .output()
            .expect("sh");
        let pin = ebpf_toolchain::read(&root).expect("the pin");
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), pin.toolchain);
        for line in dockerfile.lines() {
            assert!(
                !line.contains("+nightly ") && !line.contains("install nightly "),
                "an unpinned nightly in the Dockerfile: {line}"
            );
        }
        assert!(dockerfile.contains("rustup toolchain install \"$EBPF_NIGHTLY\""));
        assert!(dockerfile.contains("--features \"llvm-$LLVM_MAJOR\""));
    }
}
