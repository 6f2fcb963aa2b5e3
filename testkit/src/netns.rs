//! Named network namespaces as RAII guards, and ways to run code in them.
//!
//! Three ways in, for three needs:
//! - [`in_netns`]: a closure on a fresh thread that called `setns(CLONE_NEWNET)`. Sockets it
//!   creates belong to the namespace and keep belonging to it when handed back to other
//!   threads, so a listener or connection can be opened here and used anywhere.
//! - [`command_in`] / [`spawn_in`]: a child process that enters the namespace in `pre_exec`.
//!   Unlike `ip netns exec`, the child keeps the host's mount namespace: `ip netns exec`
//!   remounts `/sys`, which hides the host bpffs at `/sys/fs/bpf` (pins made by the agent
//!   would land in a private bpffs nobody else sees).
//! - `ip -n <ns> …` for configuration ([`ip`]), which is what iproute2 does best.
//!
//! Nothing here ever changes the calling thread's namespace: the root namespace stays
//! untouched whatever a closure does.

use std::{
    ffi::CString,
    fs::File,
    io,
    os::{fd::AsRawFd as _, unix::process::CommandExt as _},
    path::PathBuf,
    process::{Child, Command, ExitStatus, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};

/// Directory where `ip netns add` keeps the bind mounts that name namespaces.
pub const NETNS_RUN_DIR: &str = "/run/netns";

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A fresh prefix for one run's namespace names: `<base><pid>-<counter>-`.
///
/// The pid keeps parallel test binaries apart, the counter keeps tests of one binary apart,
/// and the trailing `-` makes the prefix of run 1 not a prefix of run 10's names. Netns
/// names are free-form file names; interface names inside them are per-namespace, so only
/// namespace names need to be unique.
pub fn unique_prefix(base: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{base}{}-{n}-", std::process::id())
}

/// Runs `ip` with `args`, failing with its stderr as context.
pub fn ip(args: &[&str]) -> Result<()> {
    run_checked(Command::new("ip").args(args)).map(drop)
}

/// Runs `ip -n <ns> <args>`: configure something inside `ns` without entering it.
pub fn ip_in(ns: &str, args: &[&str]) -> Result<()> {
    let mut all = vec!["-n", ns];
    all.extend_from_slice(args);
    ip(&all)
}

/// Runs a command to completion; fails (with stdout/stderr as context) unless it exits 0.
/// Returns stdout.
pub fn run_checked(cmd: &mut Command) -> Result<String> {
    let shown = format!("{cmd:?}");
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("spawning {shown}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!(
            "{shown} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            if stdout.trim().is_empty() {
                String::new()
            } else {
                format!(" / stdout: {}", stdout.trim())
            }
        );
    }
    Ok(stdout)
}

/// A named network namespace (`ip netns add`), deleted (`ip netns del`) on drop.
///
/// Deleting the name does not kill what runs inside: a process or a socket still holding the
/// namespace keeps it alive, anonymously, until it goes. Stopping processes is the caller's
/// job ([`ChildGuard`], or [`Netns::kill_all`] as a last resort); the name is gone either way,
/// so a later run never trips over it.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates the namespace `name`; fails if it already exists.
    pub fn create(name: &str) -> Result<Self> {
        ensure!(
            !name.is_empty() && !name.contains('/') && name != "." && name != "..",
            "invalid netns name {name:?}"
        );
        ip(&["netns", "add", name]).with_context(|| format!("creating netns {name}"))?;
        let ns = Self {
            name: name.to_owned(),
        };
        // Loopback is down in a new namespace; servers bound to 0.0.0.0 and anything talking
        // to 127.0.0.1 (an agent's metrics, say) expect it up.
        ip_in(&ns.name, &["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// The namespace's name, as `ip netns list` shows it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The bind-mounted namespace file (`/run/netns/<name>`), for `setns` or `ip link … netns`.
    pub fn path(&self) -> PathBuf {
        PathBuf::from(NETNS_RUN_DIR).join(&self.name)
    }

    /// Runs `ip -n <self> <args>`.
    pub fn ip(&self, args: &[&str]) -> Result<()> {
        ip_in(&self.name, args)
    }

    /// Runs `f` on a thread inside this namespace; see [`in_netns`].
    pub fn run<T, F>(&self, f: F) -> Result<T>
    where
        F: FnOnce() -> T + Send,
        T: Send,
    {
        in_netns(self, f)
    }

    /// Writes a sysctl (`net/ipv4/ip_forward` style, relative to `/proc/sys`) inside this
    /// namespace. `/proc/sys/net` resolves against the *calling thread's* namespace, so this
    /// goes through [`in_netns`] and never touches the root namespace's settings.
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        let path = PathBuf::from("/proc/sys").join(key);
        self.run(|| std::fs::write(&path, value))?
            .with_context(|| format!("sysctl {key}={value} in netns {}", self.name))
    }

    /// Reads a sysctl inside this namespace (trimmed).
    pub fn read_sysctl(&self, key: &str) -> Result<String> {
        let path = PathBuf::from("/proc/sys").join(key);
        let v = self
            .run(|| std::fs::read_to_string(&path))?
            .with_context(|| format!("reading sysctl {key} in netns {}", self.name))?;
        Ok(v.trim().to_owned())
    }

    /// Pids of processes whose network namespace is this one (`ip netns pids`).
    ///
    /// Threads of this test process that sit in the namespace are not listed (the kernel
    /// reports per-process, by the main thread), and neither is this process.
    pub fn pids(&self) -> Result<Vec<i32>> {
        let out = run_checked(Command::new("ip").args(["netns", "pids", &self.name]))?;
        let me = i32::try_from(std::process::id()).context("pid out of range")?;
        Ok(out
            .split_whitespace()
            .filter_map(|p| p.parse::<i32>().ok())
            .filter(|&p| p != me)
            .collect())
    }

    /// SIGKILLs every process in the namespace and waits (up to `timeout`) until
    /// `ip netns pids` is empty. Returns how many were signalled.
    ///
    /// A last resort for leftovers: prefer [`ChildGuard`], which also reaps its child.
    /// (A killed child of this process stays a zombie until waited on, but a zombie has
    /// released its namespaces, so it no longer counts here.)
    pub fn kill_all(&self, timeout: Duration) -> Result<usize> {
        let pids = self.pids()?;
        for &pid in &pids {
            // SAFETY: kill(2) has no memory-safety preconditions; a stale pid yields ESRCH.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = self.pids()?;
            if left.is_empty() {
                return Ok(pids.len());
            }
            if Instant::now() >= deadline {
                bail!(
                    "processes {left:?} still in netns {} after SIGKILL",
                    self.name
                );
            }
            thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(e) = ip(&["netns", "del", &self.name]) {
            // Drop cannot fail; a leftover name is visible in `ip netns list` and is reaped
            // by `reap_stale` on a later run.
            tracing::warn!(netns = %self.name, error = %format!("{e:#}"), "deleting netns failed");
            eprintln!("onehop-testkit: deleting netns {} failed: {e:#}", self.name);
        }
    }
}

/// The index of interface `name` in the calling thread's namespace (call it inside
/// [`in_netns`] for a namespace's interface).
pub fn ifindex(name: &str) -> Result<u32> {
    let c = CString::new(name).context("interface name with NUL")?;
    // SAFETY: valid NUL-terminated string.
    let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if index == 0 {
        return Err(io::Error::last_os_error()).with_context(|| format!("no interface {name}"));
    }
    Ok(index)
}

/// Something naming a network namespace: a [`Netns`] guard or a plain name.
pub trait NsName {
    /// The namespace's name under `/run/netns`.
    fn ns_name(&self) -> &str;
}

impl NsName for Netns {
    fn ns_name(&self) -> &str {
        &self.name
    }
}

impl NsName for str {
    fn ns_name(&self) -> &str {
        self
    }
}

impl NsName for String {
    fn ns_name(&self) -> &str {
        self
    }
}

impl<T: NsName + ?Sized> NsName for &T {
    fn ns_name(&self) -> &str {
        (**self).ns_name()
    }
}

fn netns_path(ns: &str) -> PathBuf {
    PathBuf::from(NETNS_RUN_DIR).join(ns)
}

/// Moves the calling thread into `ns`. Only ever called on threads this module spawns.
fn enter(ns: &str) -> Result<()> {
    let file = File::open(netns_path(ns)).with_context(|| format!("opening netns {ns}"))?;
    // SAFETY: setns(2) on a valid fd; it only changes this thread's namespace.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        return Err(io::Error::last_os_error()).with_context(|| format!("setns into netns {ns}"));
    }
    Ok(())
}

/// Runs `f` on a fresh thread that entered `ns` with `setns(CLONE_NEWNET)`, and returns
/// its result.
///
/// Sockets created by `f` belong to `ns` for their whole life, wherever they are used
/// later. The thread is scoped, so `f` may borrow from the caller. A panic in `f` is
/// re-raised here with its original payload (tests keep their message). If entering the
/// namespace fails, `f` never runs: it cannot end up acting on the root namespace.
///
/// Note that `/proc/self/...` names the process (main thread); use `/proc/thread-self/...`
/// inside `f` for per-namespace views such as `/proc/thread-self/net/dev`.
pub fn in_netns<N, T, F>(ns: &N, f: F) -> Result<T>
where
    N: NsName + ?Sized,
    F: FnOnce() -> T + Send,
    T: Send,
{
    let name = ns.ns_name();
    let joined = thread::scope(|s| {
        thread::Builder::new()
            .name(format!("netns:{name}"))
            .spawn_scoped(s, || -> Result<T> {
                enter(name)?;
                Ok(f())
            })
            .map(thread::ScopedJoinHandle::join)
    });
    match joined.context("spawning a netns thread")? {
        Ok(r) => r,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// Spawns a long-lived (non-scoped) thread inside `ns`; for servers and background loads.
/// Entering the namespace happens before `f` runs; a failure is `f`'s thread result.
pub fn spawn_thread_in<N, T, F>(
    ns: &N,
    thread_name: &str,
    f: F,
) -> Result<thread::JoinHandle<Result<T>>>
where
    N: NsName + ?Sized,
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    let name = ns.ns_name().to_owned();
    thread::Builder::new()
        .name(thread_name.to_owned())
        .spawn(move || -> Result<T> {
            enter(&name)?;
            Ok(f())
        })
        .context("spawning a netns thread")
}

/// `nstat` counters of a namespace's kernel (absolute values, history
/// untouched), by name. Panics if `nstat` (iproute2) is missing or fails:
/// for tests.
pub fn nstat<N: NsName + ?Sized>(ns: &N) -> std::collections::BTreeMap<String, u64> {
    let out = command_in(ns, "nstat")
        .args(["-asz"])
        .output()
        .expect("nstat (Debian package iproute2)");
    assert!(out.status.success(), "nstat failed: {out:?}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            Some((f.next()?.to_owned(), f.next()?.parse().ok()?))
        })
        .collect()
}

/// A [`Command`] whose child enters `ns` (in `pre_exec`, after fork, before exec).
///
/// The child keeps the HOST mount namespace, so the host bpffs at `/sys/fs/bpf` and the
/// host `/sys` are what it sees (`ip netns exec` would remount `/sys`). Careful: `/sys/class/net`
/// therefore lists the root namespace's interfaces; use netlink (`ip`) for the namespace's.
///
/// The namespace file is opened in the child, so this cannot fail here: a missing namespace
/// shows up as an error from `spawn`/`output`.
pub fn command_in<N, S>(ns: &N, program: S) -> Command
where
    N: NsName + ?Sized,
    S: AsRef<std::ffi::OsStr>,
{
    let mut cmd = Command::new(program);
    enter_in_pre_exec(&mut cmd, ns.ns_name());
    cmd
}

fn enter_in_pre_exec(cmd: &mut Command, ns: &str) {
    // Built before fork: after fork only async-signal-safe calls are allowed (open, setns,
    // close qualify; allocating does not).
    let path = CString::new(netns_path(ns).into_os_string().into_encoded_bytes())
        .unwrap_or_else(|_| c"/nonexistent/netns-name-with-nul".to_owned());
    let enter = move || {
        // SAFETY: path is a valid NUL-terminated string owned by the closure.
        let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd was just opened; setns only changes this (child) process.
        let rc = unsafe { libc::setns(fd, libc::CLONE_NEWNET) };
        let err = io::Error::last_os_error();
        // SAFETY: closing the fd we opened.
        unsafe { libc::close(fd) };
        if rc != 0 {
            return Err(err);
        }
        Ok(())
    };
    // SAFETY: the closure only makes async-signal-safe syscalls on pre-built data.
    unsafe { cmd.pre_exec(enter) };
}

/// Spawns `cmd` inside `ns` (entering in `pre_exec`, host mount namespace kept) and returns
/// a guard that SIGKILLs and reaps it on drop.
///
/// The child also gets `PR_SET_PDEATHSIG(SIGKILL)`, so it dies if this process is killed
/// before the guard can run. That signal fires when the *spawning thread* exits: spawn from
/// a thread that outlives the child (a test's own thread, `main`), not from a short-lived
/// helper thread.
pub fn spawn_in<N: NsName + ?Sized>(ns: &N, mut cmd: Command) -> Result<ChildGuard> {
    enter_in_pre_exec(&mut cmd, ns.ns_name());
    let deathsig = || {
        // SAFETY: PR_SET_PDEATHSIG with a signal number; no memory involved.
        if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    };
    // SAFETY: prctl is async-signal-safe.
    unsafe { cmd.pre_exec(deathsig) };
    let shown = format!("{cmd:?}");
    let child = cmd
        .spawn()
        .with_context(|| format!("spawning {shown} in netns {}", ns.ns_name()))?;
    Ok(ChildGuard {
        child: Some(child),
        what: shown,
    })
}

/// A child process that is killed (SIGKILL) and reaped when the guard drops.
#[derive(Debug)]
pub struct ChildGuard {
    child: Option<Child>,
    what: String,
}

impl ChildGuard {
    /// The child's pid.
    pub fn id(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// The underlying child (take its stdout/stderr pipes, `try_wait`, …).
    pub fn child_mut(&mut self) -> &mut Child {
        self.child
            .as_mut()
            .expect("child is only taken by stop/drop")
    }

    /// `Some(status)` once the child has exited (reaping it), `None` while it runs.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        self.child_mut().try_wait().context("waiting for child")
    }

    /// Sends SIGTERM, waits up to `grace` for a clean exit (an agent detaching its programs,
    /// say), then SIGKILLs. Returns the exit status. (On an error return the guard's drop
    /// still kills and reaps.)
    pub fn stop(mut self, grace: Duration) -> Result<ExitStatus> {
        let pid = i32::try_from(self.id()).context("pid out of range")?;
        // SAFETY: signalling our own, not yet reaped, child.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Some(st) = self.try_wait()? {
                return Ok(st);
            }
            thread::sleep(Duration::from_millis(10));
        }
        tracing::warn!(what = %self.what, "no exit after SIGTERM; SIGKILL");
        let child = self.child_mut();
        child.kill().ok();
        child.wait().context("reaping child")
    }

    /// Waits for the child to exit by itself, for at most `timeout`; kills it on timeout.
    pub fn wait_timeout(mut self, timeout: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.try_wait()? {
                return Ok(st);
            }
            if Instant::now() >= deadline {
                // Drop kills and reaps.
                bail!("{} did not exit within {timeout:?}", self.what);
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits (bounded) and collects the rest of the child's piped stdout and stderr.
    pub fn wait_with_output(mut self, timeout: Duration) -> Result<(ExitStatus, String, String)> {
        let mut out = self.child_mut().stdout.take();
        let mut err = self.child_mut().stderr.take();
        // Readers on threads: a full pipe would otherwise block the child forever.
        let t_out = thread::spawn(move || read_all(out.as_mut()));
        let t_err = thread::spawn(move || read_all(err.as_mut()));
        let status = self.wait_timeout(timeout);
        let so = t_out.join().unwrap_or_default();
        let se = t_err.join().unwrap_or_default();
        Ok((status?, so, se))
    }
}

fn read_all<R: io::Read>(r: Option<&mut R>) -> String {
    let mut s = Vec::new();
    if let Some(r) = r {
        r.read_to_end(&mut s).ok();
    }
    String::from_utf8_lossy(&s).into_owned()
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().ok();
            child.wait().ok();
        }
    }
}

/// Deletes namespaces left by earlier runs that died without dropping their guards
/// (SIGKILL, abort): names `<base><pid>-<n>-…` whose `<pid>` no longer exists.
/// Returns the deleted names. Names of live processes are never touched.
pub fn reap_stale(base: &str) -> Result<Vec<String>> {
    let list = run_checked(Command::new("ip").args(["netns", "list"]))?;
    let mut reaped = Vec::new();
    for name in list.lines().filter_map(|l| l.split_whitespace().next()) {
        let Some(rest) = name.strip_prefix(base) else {
            continue;
        };
        let Some((pid, tail)) = rest.split_once('-') else {
            continue;
        };
        let Ok(pid) = pid.parse::<u32>() else {
            continue;
        };
        // Only our own naming scheme: `<pid>-<counter>-…`.
        if tail
            .split_once('-')
            .is_none_or(|(n, _)| n.parse::<u32>().is_err())
        {
            continue;
        }
        if pid == std::process::id() || PathBuf::from(format!("/proc/{pid}")).exists() {
            continue;
        }
        ip(&["netns", "del", name])?;
        reaped.push(name.to_owned());
    }
    Ok(reaped)
}

/// Names of all namespaces in `ip netns list` that start with `prefix`.
pub fn list_with_prefix(prefix: &str) -> Result<Vec<String>> {
    let list = run_checked(Command::new("ip").args(["netns", "list"]))?;
    Ok(list
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(prefix))
        .map(str::to_owned)
        .collect())
}
