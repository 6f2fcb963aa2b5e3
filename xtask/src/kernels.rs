//! `cargo xtask kernels`: the data path on another kernel than the machine's, in a VM.
//!
//! Boots a distribution kernel package (Debian's `linux-image-amd64` of the suite apt
//! sees, or `.deb` files given with `--deb`) under qemu, with KVM when `/dev/kvm` opens,
//! else software emulation. The root file system is an initramfs written here: busybox
//! as the shell of a small `/init`, iproute2, bpftool and ethtool, the host-built test
//! binaries and the agent (debug info stripped) with the shared libraries `ldd` names,
//! and the kernel modules the tests need. The VM has no network device (`-nic none`);
//! its serial console is the log, and it is killed when the time is up.
//!
//! `test` mode loads the programs (the verifier's verdict) and runs the packet tests
//! (`datapath`, `datapath6`), the loader's attach → adopt → cleanup test (`edges`), and the real
//! agent on a veth pair: start, restart (adopting the pins), cleanup. `maps` mode
//! starts the agent with its default map sizes inside a memory cgroup and reports what
//! each map is charged (bpftool's `memlock`) and what the cgroup holds, to size maps
//! against the vCPU count. Its cgroup's `memory.max` is the agent `DaemonSet`'s memory
//! limit (read from `manifests/agent-daemonset.yaml`), so the run shows the agent starting
//! under the limit it has on a node of that many CPUs.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    fs,
    io::{BufRead as _, BufReader, BufWriter, Write as _},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};

use crate::{run_cmd, workspace_root};

/// What the VM does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// Verifier, packet tests, loader lifecycle, the agent on a veth pair.
    Test,
    /// Memory charged for the agent's maps at their default sizes.
    Maps,
}

#[derive(Debug, clap::Args)]
pub struct Options {
    #[arg(long, value_enum, default_value = "test")]
    pub mode: Mode,
    /// vCPUs of the VM (per-CPU maps grow with them).
    #[arg(long, default_value_t = 2)]
    pub cpus: u32,
    /// Memory of the VM in MiB.
    #[arg(long, default_value_t = 2048)]
    pub memory_mib: u32,
    /// Kill the VM after this many seconds.
    #[arg(long, default_value_t = 600)]
    pub timeout_secs: u64,
    /// Kernel package(s) to boot instead of Debian's `linux-image-amd64`: the image
    /// package and, where the distribution splits them (Ubuntu), its modules package.
    #[arg(long)]
    pub deb: Vec<PathBuf>,
    /// Software emulation even when KVM is available.
    #[arg(long)]
    pub no_kvm: bool,
    /// Run only these steps of `test` mode (`datapath`, `datapath6`, `edges`, `agent`); all
    /// by default.
    #[arg(long)]
    pub step: Vec<String>,
    /// Run only the tests whose names contain this (libtest filter; with `--step`).
    #[arg(long)]
    pub filter: Option<String>,
    /// `memory.max` of the agent's cgroup in `maps` mode, MiB (default: the agent
    /// `DaemonSet`'s memory limit).
    #[arg(long)]
    pub memory_max_mib: Option<u64>,
}

/// The agent `DaemonSet`'s memory limit in MiB, from the manifest the bundle is built from.
fn daemonset_memory_limit_mib() -> Result<u64> {
    let path = workspace_root().join("manifests/agent-daemonset.yaml");
    let text = fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let mut in_limits = false;
    for line in text.lines() {
        let t = line.trim();
        if t == "limits:" {
            in_limits = true;
        } else if in_limits && let Some(v) = t.strip_prefix("memory:") {
            let v = v.trim();
            return v
                .strip_suffix("Mi")
                .and_then(|n| n.parse().ok())
                .or_else(|| {
                    v.strip_suffix("Gi")
                        .and_then(|n| n.parse::<u64>().ok())
                        .map(|g| g * 1024)
                })
                .with_context(|| {
                    format!(
                        "memory limit {v:?} in {}: expected Mi or Gi",
                        path.display()
                    )
                });
        } else if in_limits && !t.starts_with("cpu:") {
            in_limits = false;
        }
    }
    bail!("no memory limit in {}", path.display())
}

/// Debian packages this needs, and a command of each.
const PACKAGES: &[(&str, &str)] = &[
    ("qemu-system-x86", "qemu-system-x86_64"),
    ("busybox-static", "busybox"),
    ("binutils", "objcopy"),
];

/// Kernel modules the tests need when the kernel has them as modules: veth pairs, the
/// `clsact` qdisc (in `sch_ingress`) and the `bpf` classifier for the netlink egress
/// filter, bridges for the namespace topology.
const MODULES: &[&str] = &["veth", "sch_ingress", "cls_bpf", "bridge"];

/// Host tools the guest runs, by the path the tests look them up under.
const TOOLS: &[&str] = &[
    "/usr/sbin/ip",
    "/usr/sbin/tc",
    "/usr/sbin/bpftool",
    "/usr/sbin/ethtool",
];

/// The test binaries the guest runs, and the tests of each (empty: all).
const TESTS: &[(&str, &[&str])] = &[
    ("datapath", &[]),
    ("datapath6", &[]),
    (
        "edges",
        &["attach_then_restart_adopts_pins_and_swaps_programs_then_cleanup_detaches"],
    ),
];

pub fn run(o: &Options) -> Result<()> {
    crate::setup::install_commands(PACKAGES)?;
    let cache = workspace_root().join("target/kernels");
    let kernel = if o.deb.is_empty() {
        debian_kernel(&cache)?
    } else {
        Kernel::from_debs(&cache, &o.deb)?
    };
    println!("kernels: {} ({})", kernel.release, kernel.vmlinuz.display());
    let bins = build_binaries(&cache.join("bin"))?;
    let initrd = cache.join(format!("initramfs-{}.cpio", kernel.release));
    for step in &o.step {
        ensure!(
            TESTS.iter().any(|(n, _)| n == step) || step == "agent",
            "unknown step {step:?}: datapath, datapath6, edges or agent"
        );
    }
    let wanted = |step: &str| o.step.is_empty() || o.step.iter().any(|s| s == step);
    let memory_max_mib = match o.memory_max_mib {
        Some(m) => m,
        None => daemonset_memory_limit_mib()?,
    };
    if o.mode == Mode::Maps {
        println!("kernels: the agent's cgroup memory.max = {memory_max_mib} MiB");
    }
    write_initramfs(
        &initrd,
        &kernel,
        &bins,
        o.mode,
        &wanted,
        o.filter.as_deref(),
        memory_max_mib,
    )?;
    let log = cache.join(format!(
        "{}-{}-{}cpu.log",
        kernel.release,
        match o.mode {
            Mode::Test => "test",
            Mode::Maps => "maps",
        },
        o.cpus
    ));
    let started = Instant::now();
    let lines = boot(o, &kernel, &initrd, &log)?;
    let took = started.elapsed();
    println!(
        "kernels: the VM ran {:.0} s; serial log {}",
        took.as_secs_f64(),
        log.display()
    );
    match o.mode {
        Mode::Test => check_results(&lines),
        Mode::Maps => {
            check_results(&lines)?;
            report_maps(&lines, o.cpus)
        }
    }
}

/// A kernel image with its modules, unpacked.
struct Kernel {
    release: String,
    vmlinuz: PathBuf,
    modules: PathBuf,
}

impl Kernel {
    /// Finds the image and modules in an unpacked package tree.
    fn find(root: &Path) -> Result<Self> {
        let boot = root.join("boot");
        let vmlinuz = fs::read_dir(&boot)
            .with_context(|| format!("reading {}", boot.display()))?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
            })
            .with_context(|| format!("no vmlinuz-* in {}", boot.display()))?;
        let release = vmlinuz
            .file_name()
            .map(|n| {
                n.to_string_lossy()
                    .trim_start_matches("vmlinuz-")
                    .to_owned()
            })
            .unwrap_or_default();
        let modules = ["lib/modules", "usr/lib/modules"]
            .iter()
            .map(|d| root.join(d).join(&release))
            .find(|d| d.join("kernel").is_dir())
            .with_context(|| format!("no modules of {release} under {}", root.display()))?;
        Ok(Self {
            release,
            vmlinuz,
            modules,
        })
    }

    /// Unpacks `debs` (once; kept under `cache`) and finds the kernel in them.
    fn from_debs(cache: &Path, debs: &[PathBuf]) -> Result<Self> {
        let stem = debs[0]
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .context("--deb names no file")?;
        let root = cache.join(stem).join("root");
        if !root.exists() {
            unpack(debs, &root)?;
        }
        Self::find(&root)
    }
}

/// Unpacks `debs` into `root`, through a temporary directory so that an interrupted
/// unpack is never taken for a complete one.
fn unpack(debs: &[PathBuf], root: &Path) -> Result<()> {
    let tmp = root.with_extension("tmp");
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    for deb in debs {
        run_cmd(Command::new("dpkg-deb").arg("-x").arg(deb).arg(&tmp))?;
    }
    fs::rename(&tmp, root).with_context(|| format!("renaming {}", tmp.display()))
}

/// The kernel package `linux-image-amd64` depends on in the suite apt sees (Debian 12:
/// 6.1), downloaded with `apt-get download` and unpacked under `cache` once.
fn debian_kernel(cache: &Path) -> Result<Kernel> {
    let out = Command::new("apt-cache")
        .args(["depends", "linux-image-amd64"])
        .output()
        .context("running apt-cache")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let package = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Depends: "))
        .find(|p| p.starts_with("linux-image-"))
        .with_context(|| {
            format!(
                "apt knows no linux-image-amd64 ({}): run `apt-get update`, or pass the \
                 kernel package with --deb",
                String::from_utf8_lossy(&out.stderr).trim()
            )
        })?
        .to_owned();
    let dir = cache.join(&package);
    let root = dir.join("root");
    if !root.exists() {
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        println!("kernels: downloading {package}");
        run_cmd(
            Command::new("apt-get")
                .args(["download", &package])
                .current_dir(&dir),
        )?;
        let debs: Vec<PathBuf> = fs::read_dir(&dir)?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "deb"))
            .collect();
        ensure!(
            debs.len() == 1,
            "expected one .deb in {}, found {debs:?}",
            dir.display()
        );
        unpack(&debs, &root)?;
    }
    Kernel::find(&root)
}

/// Builds the agent and the test binaries on the host and copies them, debug info
/// stripped (a tenth of the size), under `dir`. Returns (name in the guest, path).
fn build_binaries(dir: &Path) -> Result<Vec<(String, PathBuf)>> {
    // One build: the integration tests make cargo build the `onehop` binary too, with
    // the same features (a separate `cargo build` would rebuild half the tree).
    let mut cmd = Command::new("cargo");
    cmd.current_dir(workspace_root()).args([
        "test",
        "-p",
        "lb-userspace",
        "--no-run",
        "--message-format=json-render-diagnostics",
    ]);
    for (name, _) in TESTS {
        cmd.args(["--test", name]);
    }
    let out = cmd
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running {cmd:?}"))?;
    ensure!(out.status.success(), "{cmd:?} failed: {}", out.status);
    let mut found = BTreeMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let kind = msg["target"]["kind"][0].as_str();
        let wanted = match kind {
            Some("test") => true,
            // The binary itself, not its unit-test harness.
            Some("bin") => msg["profile"]["test"] == false,
            _ => false,
        };
        if let (true, Some(name), Some(exe)) = (
            wanted,
            msg["target"]["name"].as_str(),
            msg["executable"].as_str(),
        ) {
            found.insert(name.to_owned(), PathBuf::from(exe));
        }
    }
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut bins = Vec::new();
    for name in TESTS.iter().map(|(n, _)| *n).chain(["onehop"]) {
        let exe = found
            .get(name)
            .with_context(|| format!("cargo reported no executable for {name}"))?;
        let stripped = dir.join(name);
        run_cmd(
            Command::new("objcopy")
                .arg("--strip-debug")
                .arg(exe)
                .arg(&stripped),
        )?;
        bins.push((name.to_owned(), stripped));
    }
    Ok(bins)
}

/// One entry of the initramfs.
enum Entry {
    Dir,
    File { src: PathBuf, mode: u32 },
    Data { data: Vec<u8>, mode: u32 },
}

/// The initramfs's contents by guest path; parents are added as directories.
#[derive(Default)]
struct Tree(BTreeMap<String, Entry>);

impl Tree {
    fn add(&mut self, path: &str, entry: Entry) {
        let mut parent = Path::new(path).parent();
        while let Some(p) = parent.filter(|p| p != &Path::new("/")) {
            self.0
                .entry(p.to_string_lossy().into_owned())
                .or_insert(Entry::Dir);
            parent = p.parent();
        }
        self.0.insert(path.to_owned(), entry);
    }

    /// Adds an executable and every shared library `ldd` says it loads.
    fn add_elf(&mut self, src: &Path, dest: &str) -> Result<()> {
        self.add(
            dest,
            Entry::File {
                src: src.to_owned(),
                mode: 0o755,
            },
        );
        let out = Command::new("ldd")
            .arg(src)
            .output()
            .with_context(|| format!("running ldd {}", src.display()))?;
        // "not a dynamic executable" (static busybox) exits non-zero: nothing to add.
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let lib = match line.split_once("=>") {
                Some((_, rest)) => rest.split_whitespace().next(),
                None => line.split_whitespace().next(),
            };
            if let Some(lib) = lib.filter(|l| l.starts_with('/')) {
                self.add(
                    lib,
                    Entry::File {
                        src: PathBuf::from(lib),
                        mode: 0o755,
                    },
                );
            }
        }
        Ok(())
    }

    /// Writes the tree as an uncompressed `newc` cpio archive, which the kernel unpacks
    /// into its root file system.
    fn write(&self, path: &Path) -> Result<()> {
        let file =
            fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
        let mut w = BufWriter::new(file);
        for (ino, (name, entry)) in (1..).zip(&self.0) {
            let (mode, data) = match entry {
                Entry::Dir => (0o040_755, Vec::new()),
                Entry::File { src, mode } => (
                    0o100_000 | mode,
                    fs::read(src).with_context(|| format!("reading {}", src.display()))?,
                ),
                Entry::Data { data, mode } => (0o100_000 | mode, data.clone()),
            };
            cpio_entry(&mut w, ino, name.trim_start_matches('/'), mode, &data)?;
        }
        cpio_entry(&mut w, 0, "TRAILER!!!", 0, &[])?;
        w.flush()
            .with_context(|| format!("writing {}", path.display()))
    }
}

fn cpio_entry(
    w: &mut impl std::io::Write,
    ino: u32,
    name: &str,
    mode: u32,
    data: &[u8],
) -> Result<()> {
    let size = u32::try_from(data.len()).context("file over 4 GiB")?;
    let namesize = u32::try_from(name.len() + 1).context("name too long")?;
    let nlink = if mode & 0o040_000 != 0 { 2 } else { 1 };
    // magic, then ino mode uid gid nlink mtime filesize devmajor devminor rdevmajor
    // rdevminor namesize check, each eight hex digits.
    let header = format!(
        "070701{ino:08x}{mode:08x}{:08x}{:08x}{nlink:08x}{:08x}{size:08x}{:08x}{:08x}{:08x}{:08x}{namesize:08x}{:08x}",
        0, 0, 0, 0, 0, 0, 0, 0
    );
    w.write_all(header.as_bytes())?;
    w.write_all(name.as_bytes())?;
    w.write_all(&[0])?;
    w.write_all(&[0; 3][..pad4(header.len() + name.len() + 1)])?;
    w.write_all(data)?;
    w.write_all(&[0; 3][..pad4(data.len())])?;
    Ok(())
}

fn pad4(n: usize) -> usize {
    (4 - n % 4) % 4
}

/// The `.modinfo` field listing a module's dependencies.
const DEPENDS_KEY: &[u8] = b"depends=";

/// `wanted` and what they depend on, dependencies first, from each module's own
/// `depends=` (the package ships no `modules.dep`: depmod writes it at install time); a
/// module built into the kernel is skipped.
fn module_closure(modules: &Path, wanted: &[&str]) -> Result<Vec<PathBuf>> {
    fn walk(dir: &Path, index: &mut BTreeMap<String, PathBuf>) -> Result<()> {
        for e in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
            let path = e?.path();
            if path.is_dir() {
                walk(&path, index)?;
            } else if let Some(name) = path.file_name().map(|n| n.to_string_lossy().into_owned()) {
                index.insert(module_name(&name), path);
            }
        }
        Ok(())
    }
    fn visit(
        name: &str,
        index: &BTreeMap<String, PathBuf>,
        builtin: &BTreeSet<String>,
        order: &mut Vec<PathBuf>,
        seen: &mut BTreeSet<String>,
    ) -> Result<()> {
        if !seen.insert(name.to_owned()) || builtin.contains(name) {
            return Ok(());
        }
        let path = index
            .get(name)
            .with_context(|| format!("kernel module {name} is neither a module nor built in"))?;
        ensure!(
            path.extension().is_some_and(|e| e == "ko"),
            "{} is compressed; the guest's insmod loads plain .ko files",
            path.display()
        );
        let bytes = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        if let Some(at) = bytes
            .windows(DEPENDS_KEY.len())
            .position(|w| w == DEPENDS_KEY)
        {
            let rest = &bytes[at + DEPENDS_KEY.len()..];
            let value = &rest[..rest.iter().position(|b| *b == 0).unwrap_or(rest.len())];
            for dep in String::from_utf8_lossy(value)
                .split(',')
                .filter(|d| !d.is_empty())
            {
                visit(dep, index, builtin, order, seen)?;
            }
        }
        order.push(path.clone());
        Ok(())
    }
    let mut index = BTreeMap::new();
    walk(&modules.join("kernel"), &mut index)?;
    let builtin: BTreeSet<String> = fs::read_to_string(modules.join("modules.builtin"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.rsplit('/').next())
        .map(module_name)
        .collect();
    let (mut order, mut seen) = (Vec::new(), BTreeSet::new());
    for name in wanted {
        visit(name, &index, &builtin, &mut order, &mut seen)?;
    }
    Ok(order)
}

/// `sch_ingress` of `sch_ingress.ko` (or `.ko.xz`); the kernel treats `-` and `_` alike.
fn module_name(file: &str) -> String {
    file.split('.').next().unwrap_or_default().replace('-', "_")
}

fn which(cmd: &str) -> Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join(cmd))
        .find(|p| p.is_file())
        .with_context(|| format!("{cmd} not found"))
}

fn write_initramfs(
    path: &Path,
    kernel: &Kernel,
    bins: &[(String, PathBuf)],
    mode: Mode,
    wanted: &dyn Fn(&str) -> bool,
    filter: Option<&str>,
    memory_max_mib: u64,
) -> Result<()> {
    let mut tree = Tree::default();
    for dir in ["/dev", "/proc", "/sys", "/tmp", "/run", "/root"] {
        tree.add(dir, Entry::Dir);
    }
    tree.add_elf(&which("busybox")?, "/bin/busybox")?;
    for tool in TOOLS {
        tree.add_elf(Path::new(tool), tool)?;
    }
    for (name, src) in bins {
        tree.add_elf(src, &format!("/usr/bin/{name}"))?;
    }
    let mut insmods = String::new();
    for m in module_closure(&kernel.modules, MODULES)? {
        let file = m.file_name().unwrap_or_default().to_string_lossy();
        let dest = format!("/modules/{file}");
        writeln!(
            insmods,
            "insmod {dest} || echo \"ONEHOP-RESULT insmod-{file} 1\""
        )?;
        tree.add(
            &dest,
            Entry::File {
                src: m.clone(),
                mode: 0o644,
            },
        );
    }
    let steps = match mode {
        Mode::Test => {
            let mut s = String::new();
            for (name, tests) in TESTS.iter().filter(|(n, _)| wanted(n)) {
                // One test thread per vCPU at most: each packet test builds a namespace.
                writeln!(
                    s,
                    "step {name} /usr/bin/{name} --test-threads=2 {}",
                    filter.map_or_else(|| tests.join(" "), str::to_owned)
                )?;
            }
            if wanted("agent") {
                s.push_str("step agent agent_lifecycle\n");
            }
            s
        }
        Mode::Maps => "step maps maps_memory\n".to_owned(),
    };
    let init = INIT
        .replace("@MEMORY_MAX@", &(memory_max_mib << 20).to_string())
        .replace("@INSMODS@", &insmods)
        .replace("@STEPS@", &steps);
    tree.add(
        "/init",
        Entry::Data {
            data: init.into_bytes(),
            mode: 0o755,
        },
    );
    tree.write(path)?;
    let size = fs::metadata(path).map(|m| m.len()).unwrap_or_default();
    println!("kernels: initramfs {} ({} MiB)", path.display(), size >> 20);
    Ok(())
}

/// PID 1 of the VM. Every step prints `ONEHOP-RESULT <step> <exit code>`; the last
/// line is `ONEHOP-DONE`, after which the VM powers off.
const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox echo "ONEHOP-BOOT"
/bin/busybox --install -s /bin
# busybox's sh runs its own applets before anything on PATH: iproute2's `ip` and `tc`
# are called by their paths.
export PATH=/usr/sbin:/usr/bin:/bin HOME=/root RUST_BACKTRACE=1
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t tmpfs tmp /tmp
mount -t tmpfs run /run
mount -t bpf bpf /sys/fs/bpf
mount -t cgroup2 cgroup2 /sys/fs/cgroup
@INSMODS@
/usr/sbin/ip link set lo up
echo "ONEHOP-KERNEL $(uname -r) cpus=$(nproc)"

step() {
    name=$1
    shift
    echo "ONEHOP-STEP $name: $*"
    "$@"
    echo "ONEHOP-RESULT $name $?"
}

# Runs the condition in $1 every 100 ms until it holds, for at most $2 seconds.
wait_for() {
    i=0
    while ! sh -c "$1"; do
        i=$((i + 1))
        [ $i -ge $(($2 * 10)) ] && return 1
        sleep 0.1
    done
}

fail() {
    echo "FAILED: $*"
    for f in /tmp/agent*.log; do echo "--- $f"; cat "$f"; done
    return 1
}

veth() {
    /usr/sbin/ip link add ohk0 type veth peer name ohk1 || return 1
    /usr/sbin/ip link set ohk0 up && /usr/sbin/ip link set ohk1 up && /usr/sbin/ip addr add 192.168.77.1/24 dev ohk0 || return 1
    cat > /tmp/services.yaml <<EOF
announce: [192.168.77.100]
services:
  - name: web
    vip: 192.168.77.100
    ports: [{ port: 80, protocol: TCP, target_port: 8080 }]
    backends: [{ ip: 10.42.0.5, node_ip: 192.168.77.1 }]
EOF
}

AGENT="onehop agent --interface ohk0 --services-file /tmp/services.yaml --no-metrics --no-health"

# The real agent on a veth pair: attach, stop (the data path stays), restart (the
# pins are adopted and the programs swapped), cleanup (everything detached).
agent_lifecycle() {
    veth || return 1
    $AGENT > /tmp/agent1.log 2>&1 &
    pid=$!
    wait_for "grep -q 'attached XDP' /tmp/agent1.log" 60 || fail "no XDP attach" || return 1
    grep -E 'egress|TCX' /tmp/agent1.log
    /usr/sbin/tc filter show dev ohk0 egress
    ls -l /sys/fs/bpf/onehop/ohk0
    # The maps are written after the programs are attached.
    wait_for "onehop status --interface ohk0 | grep -q 192.168.77.100" 60 || fail "status shows no VIP" || return 1
    kill -TERM $pid; wait $pid
    /usr/sbin/ip link show ohk0 | grep -q xdp || fail "XDP detached when the agent stopped" || return 1
    /usr/sbin/tc filter show dev ohk0 egress | grep -q lb_egress ||
        [ -e /sys/fs/bpf/onehop/ohk0/link_lb_egress ] || fail "egress detached when the agent stopped" || return 1
    $AGENT > /tmp/agent2.log 2>&1 &
    pid=$!
    wait_for "grep -q 'swapped the new XDP program' /tmp/agent2.log" 60 || fail "restart did not adopt XDP" || return 1
    grep -qE 'swapped the new (TCX egress )?program' /tmp/agent2.log || fail "restart did not adopt egress" || return 1
    grep -E 'swapped|egress' /tmp/agent2.log
    kill -TERM $pid; wait $pid
    onehop cleanup --interface ohk0 || fail "cleanup" || return 1
    wait_for "! /usr/sbin/ip link show ohk0 | grep -q xdp" 5 || fail "XDP still attached after cleanup" || return 1
    ! /usr/sbin/tc filter show dev ohk0 egress | grep -q lb_egress || fail "egress filter left after cleanup" || return 1
    /usr/sbin/ip link del ohk0
}

# The agent's maps at their default sizes, inside a memory cgroup of its own.
maps_memory() {
    veth || return 1
    echo +memory > /sys/fs/cgroup/cgroup.subtree_control
    mkdir /sys/fs/cgroup/onehop
    # The DaemonSet's limit: the agent must create its maps and start under it.
    echo @MEMORY_MAX@ > /sys/fs/cgroup/onehop/memory.max || fail "cannot set memory.max" || return 1
    echo "ONEHOP-MEMCG limit max=$(cat /sys/fs/cgroup/onehop/memory.max)"
    meminfo before
    sh -c "echo \$\$ > /sys/fs/cgroup/onehop/cgroup.procs; exec $AGENT" > /tmp/agent1.log 2>&1 &
    pid=$!
    wait_for "grep -q 'attached XDP' /tmp/agent1.log" 300 || fail "no XDP attach" || return 1
    # Started: its maps hold the services file and it serves the VIP.
    wait_for "onehop status --interface ohk0 | grep -q 192.168.77.100" 300 || fail "status shows no VIP" || return 1
    kill -0 $pid || fail "the agent exited" || return 1
    bpftool map show | sed 's/^/ONEHOP-MAP /'
    echo "ONEHOP-MEMCG running current=$(cat /sys/fs/cgroup/onehop/memory.current) peak=$(cat /sys/fs/cgroup/onehop/memory.peak 2>/dev/null)"
    grep -E '^(oom|oom_kill|max) ' /sys/fs/cgroup/onehop/memory.events | sed 's/^/ONEHOP-MEMEVENTS /'
    echo "ONEHOP-AGENT-RSS $(grep VmRSS /proc/$pid/status)"
    grep -E '^(anon|file|kernel|percpu|slab) ' /sys/fs/cgroup/onehop/memory.stat | sed 's/^/ONEHOP-MEMSTAT running /'
    kill -TERM $pid; wait $pid
    echo "ONEHOP-MEMCG stopped current=$(cat /sys/fs/cgroup/onehop/memory.current)"
    grep -E '^(anon|file|kernel|percpu|slab) ' /sys/fs/cgroup/onehop/memory.stat | sed 's/^/ONEHOP-MEMSTAT stopped /'
    meminfo after
}

# The machine-wide view, which also counts per-CPU map values (the memory cgroup of
# Linux 6.1 does not).
meminfo() {
    grep -E '^(MemAvailable|Percpu|Slab|VmallocUsed):' /proc/meminfo | sed "s/^/ONEHOP-MEMINFO $1 /"
}

@STEPS@
echo ONEHOP-DONE
poweroff -f
"#;

/// Whether KVM can run the VM: `/dev/kvm` opens and the CPU shows hardware
/// virtualization. A VM whose hypervisor offers `/dev/kvm` without `vmx`/`svm` (nested,
/// e.g. Firecracker) hangs early in boot instead of failing.
fn kvm_usable() -> bool {
    let opens = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    let flags = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    opens
        && flags
            .lines()
            .filter(|l| l.starts_with("flags"))
            .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"))
}

/// Boots the VM, echoing and logging its console, and returns the console's lines.
fn boot(o: &Options, kernel: &Kernel, initrd: &Path, log: &Path) -> Result<Vec<String>> {
    if !o.no_kvm && kvm_usable() {
        match boot_with(o, kernel, initrd, log, true)? {
            Some(lines) => return Ok(lines),
            None => println!(
                "kernels: no sign of life from the guest under KVM in {} s; again with TCG",
                KVM_LIFE.as_secs()
            ),
        }
    } else if !o.no_kvm {
        println!("kernels: KVM unusable here (no /dev/kvm, or no vmx/svm CPU flag): TCG");
    }
    boot_with(o, kernel, initrd, log, false)?.context("the guest never started")
}

/// How long a KVM guest may take to print its first line before TCG is tried instead.
const KVM_LIFE: Duration = Duration::from_secs(30);

/// One boot. `None`: under KVM, the guest printed nothing in [`KVM_LIFE`].
fn boot_with(
    o: &Options,
    kernel: &Kernel,
    initrd: &Path,
    log: &Path,
    kvm: bool,
) -> Result<Option<Vec<String>>> {
    println!(
        "kernels: qemu with {}, {} vCPUs, {} MiB, timeout {} s",
        if kvm {
            "KVM"
        } else {
            "TCG (software emulation)"
        },
        o.cpus,
        o.memory_mib,
        o.timeout_secs
    );
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args(["-accel", if kvm { "kvm" } else { "tcg" }])
        .args(["-cpu", "max"])
        .args(["-smp", &o.cpus.to_string(), "-m", &o.memory_mib.to_string()])
        .arg("-kernel")
        .arg(&kernel.vmlinuz)
        .arg("-initrd")
        .arg(initrd)
        .args([
            "-append",
            "console=ttyS0 rdinit=/init panic=-1 oops=panic quiet",
            // Never a network device: the guest cannot reach the host's networks.
            "-nic",
            "none",
            "-display",
            "none",
            "-monitor",
            "none",
            "-serial",
            "stdio",
            "-no-reboot",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let mut child = cmd.spawn().with_context(|| format!("starting {cmd:?}"))?;
    let stdout = child.stdout.take().context("qemu's stdout")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut file = BufWriter::new(
        fs::File::create(log).with_context(|| format!("creating {}", log.display()))?,
    );
    let started = Instant::now();
    let deadline = started + Duration::from_secs(o.timeout_secs);
    let mut lines = Vec::new();
    loop {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(line) => {
                let line = line.trim_end_matches('\r').to_owned();
                println!("  | {line}");
                writeln!(file, "{line}")?;
                lines.push(line);
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
        let silent = kvm && lines.is_empty() && started.elapsed() > KVM_LIFE;
        if silent || Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            file.flush()?;
            if silent {
                return Ok(None);
            }
            bail!(
                "the VM did not finish within {} s (killed); serial log {}",
                o.timeout_secs,
                log.display()
            );
        }
    }
    file.flush()?;
    let status = child.wait().context("waiting for qemu")?;
    ensure!(
        status.success(),
        "qemu failed: {status}; serial log {}",
        log.display()
    );
    Ok(Some(lines))
}

/// Fails unless the guest finished and every step exited 0.
fn check_results(lines: &[String]) -> Result<()> {
    let results: Vec<(&str, &str)> = lines
        .iter()
        .filter_map(|l| l.strip_prefix("ONEHOP-RESULT "))
        .filter_map(|r| r.split_once(' '))
        .collect();
    for (step, rc) in &results {
        println!(
            "kernels: {step}: {}",
            if *rc == "0" {
                "ok".to_owned()
            } else {
                format!("FAILED (exit {rc})")
            }
        );
    }
    ensure!(
        lines.iter().any(|l| l == "ONEHOP-DONE"),
        "the guest stopped before its last step (kernel panic or crash?)"
    );
    let failed: Vec<_> = results
        .iter()
        .filter(|(_, rc)| *rc != "0")
        .map(|(s, _)| *s)
        .collect();
    ensure!(!results.is_empty(), "the guest ran no step");
    ensure!(failed.is_empty(), "failed in the VM: {failed:?}");
    Ok(())
}

/// Sums bpftool's `memlock` over the maps and prints the table and the cgroup's view.
fn report_maps(lines: &[String], cpus: u32) -> Result<()> {
    // bpftool prints two lines a map: "<id>: <type>  name <name>  flags …" and
    // "key <k>B  value <v>B  max_entries <n>  memlock <bytes>B".
    let mut rows = Vec::new();
    let mut head: Option<(String, String)> = None;
    for l in lines.iter().filter_map(|l| l.strip_prefix("ONEHOP-MAP ")) {
        let words: Vec<&str> = l.split_whitespace().collect();
        let after = |key: &str| {
            words
                .iter()
                .position(|w| *w == key)
                .and_then(|i| words.get(i + 1))
                .map(|w| w.trim_end_matches('B').to_owned())
        };
        if words.first().is_some_and(|w| w.ends_with(':')) {
            head = Some((
                after("name").unwrap_or_default(),
                words.get(1).map(|w| (*w).to_owned()).unwrap_or_default(),
            ));
        } else if let (Some((name, kind)), Some(memlock)) = (head.take(), after("memlock")) {
            let bytes: u64 = memlock
                .parse()
                .with_context(|| format!("memlock {memlock:?} of {name}"))?;
            rows.push((name, kind, after("max_entries").unwrap_or_default(), bytes));
        }
    }
    ensure!(!rows.is_empty(), "bpftool listed no map");
    rows.sort_by_key(|r| std::cmp::Reverse(r.3));
    println!("kernels: maps at {cpus} vCPUs (bpftool memlock):");
    for (name, kind, entries, bytes) in &rows {
        println!(
            "  {name:<16} {kind:<16} {entries:>10} entries {:>10.1} MiB",
            mib(*bytes)
        );
    }
    let total: u64 = rows.iter().map(|r| r.3).sum();
    println!("  total {:.1} MiB", mib(total));
    for l in lines.iter().filter(|l| {
        [
            "ONEHOP-MEMCG",
            "ONEHOP-MEMSTAT",
            "ONEHOP-MEMEVENTS",
            "ONEHOP-AGENT-RSS",
        ]
        .iter()
        .any(|p| l.starts_with(p))
    }) {
        println!("  {l}");
    }
    // /proc/meminfo before the agent started and after it stopped (the maps stay pinned).
    let meminfo = |when: &str, key: &str| -> Option<i64> {
        lines.iter().find_map(|l| {
            let rest = l.strip_prefix("ONEHOP-MEMINFO ")?.strip_prefix(when)?;
            let (k, v) = rest.trim().split_once(':')?;
            (k == key).then(|| v.split_whitespace().next()?.parse().ok())?
        })
    };
    for key in ["Percpu", "Slab", "VmallocUsed", "MemAvailable"] {
        if let (Some(before), Some(after)) = (meminfo("before", key), meminfo("after", key)) {
            let delta = after - before;
            #[expect(clippy::cast_precision_loss, reason = "a figure for people")]
            let delta_mib = delta as f64 / 1024.0;
            println!(
                "  /proc/meminfo {key}: {delta:+} kB ({delta_mib:+.1} MiB) with the maps pinned"
            );
        }
    }
    Ok(())
}

#[expect(clippy::cast_precision_loss, reason = "a figure for people")]
fn mib(bytes: u64) -> f64 {
    bytes as f64 / f64::from(1 << 20)
}
