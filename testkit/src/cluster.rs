//! Nodes with agents: a [`Topology`] with an `onehop agent` process on each node that asks
//! for one, each with its own pin root, services file (or Kubernetes source) and log.
//!
//! The one fixture behind the end-to-end tests, `cargo xtask demo` and `bench e2e`. What is
//! onehop-specific and needs the `lb-userspace` library (the pass-through XDP program on the
//! LAN-side peers, reading the pinned maps) stays with the caller: [`Cluster::on_lan_peers`]
//! runs the caller's attach in the LAN namespace and keeps what it returns alive, so the
//! test kit never builds the agent.
//!
//! Teardown on drop, panics included, in the order that leaves nothing behind: agents
//! (SIGKILL, reaped) first — a running agent would re-pin what is removed after it — then
//! whatever the caller handed over ([`Cluster::hold`]: programs on the peers, servers), the
//! pin roots, the scratch directory, and the namespaces last. Every name (namespaces, pin
//! roots, scratch directory) carries the topology's unique prefix.
//!
//! ```no_run
//! use onehop_testkit::{Topology, cluster::{Agent, Cluster, Source}};
//! let topo = Topology::builder().nodes(2).pods_per_node(2).build()?;
//! let agent = Agent::new("target/release/onehop").args(["--poll-interval-ms", "100"]);
//! let c = Cluster::new(topo, agent)?;
//! c.write_services(1, "services: []\n")?;
//! c.spawn_agent(1, &c.services_file(1))?;
//! # anyhow::Ok(())
//! ```

use std::{
    collections::BTreeMap,
    ffi::{OsStr, OsString},
    path::{Path, PathBuf},
    process::{Command, ExitStatus, Stdio},
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};

use crate::{
    bpffs::PinRoot,
    netns::{ChildGuard, command_in, in_netns, spawn_in},
    topology::Topology,
};

/// The node interface every agent serves (the topology names it so in every node).
pub const NODE_INTERFACE: &str = "eth0";

/// The `onehop agent` command line shared by every node: the binary, and arguments and
/// environment beyond the interface and pin root (which the cluster adds).
#[derive(Debug, Clone)]
pub struct Agent {
    binary: PathBuf,
    extra: Extra,
}

/// Arguments and environment added to an agent's command line.
#[derive(Debug, Clone, Default)]
struct Extra {
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
}

impl Extra {
    fn args<I, S>(&mut self, args: I)
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
    }

    fn env(&mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) {
        self.env
            .push((key.as_ref().to_owned(), value.as_ref().to_owned()));
    }

    fn apply(&self, cmd: &mut Command) {
        cmd.args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)));
    }
}

impl Agent {
    /// The `onehop` binary to run.
    pub fn new(binary: impl Into<PathBuf>) -> Self {
        Self {
            binary: binary.into(),
            extra: Extra::default(),
        }
    }

    /// More arguments for every agent (map sizes, poll interval, ...).
    #[must_use]
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.extra.args(args);
        self
    }

    /// An environment variable for every agent (`RUST_LOG`, say).
    #[must_use]
    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.extra.env(key, value);
        self
    }

    pub fn binary(&self) -> &Path {
        &self.binary
    }
}

/// Where one agent takes its services from, and anything else particular to that one start.
#[derive(Debug, Clone, Default)]
pub struct Source {
    extra: Extra,
    /// Another agent binary than the cluster's, for this start only.
    binary: Option<PathBuf>,
}

impl Source {
    /// `--services-file <path>` (see [`Cluster::services_file`]).
    pub fn file(path: impl AsRef<OsStr>) -> Self {
        Self::default().args([OsStr::new("--services-file"), path.as_ref()])
    }

    /// `--kubernetes --node-name <node_name>`: add the API (`kubeconfig` or an
    /// `--api-server` argument) and the namespace.
    pub fn kubernetes(node_name: &str) -> Self {
        Self::default().args(["--kubernetes", "--node-name", node_name])
    }

    /// `KUBECONFIG=<path>` for this agent.
    #[must_use]
    pub fn kubeconfig(self, path: impl AsRef<OsStr>) -> Self {
        self.env("KUBECONFIG", path)
    }

    /// More arguments for this agent only.
    #[must_use]
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.extra.args(args);
        self
    }

    /// Another agent binary for this start (a benchmark comparing two builds side by side).
    #[must_use]
    pub fn binary(mut self, path: impl Into<PathBuf>) -> Self {
        self.binary = Some(path.into());
        self
    }

    /// An environment variable for this agent only (after the [`Agent`]'s, so it wins).
    #[must_use]
    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.extra.env(key, value);
        self
    }
}

/// The running agents of a cluster by node, shared with guards that outlive a borrow of the
/// cluster (a benchmark's installed path stops them when it is dropped).
#[derive(Debug, Clone, Default)]
pub struct Agents(Arc<Mutex<BTreeMap<u8, ChildGuard>>>);

impl Agents {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<u8, ChildGuard>> {
        // A panic while holding the lock cannot leave the map half-changed: every change is
        // one insert or remove.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// SIGKILLs and reaps every agent.
    pub fn kill_all(&self) {
        self.lock().clear();
    }
}

/// Removes a scratch directory on drop.
#[derive(Debug)]
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A topology with agents on its nodes; see the module docs.
pub struct Cluster {
    // Field order is drop order.
    agents: Agents,
    held: Mutex<Vec<Box<dyn Send>>>,
    pins: Vec<PinRoot>,
    scratch: Scratch,
    agent: Agent,
    pub topo: Topology,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Explicitly, not by field order alone: an [`Agents`] handle held elsewhere keeps the
        // map alive, and the agents must not outlive their namespaces and pins.
        self.agents.kill_all();
    }
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("prefix", &self.topo.prefix())
            .field("scratch", &self.scratch.0)
            .field("agent", &self.agent)
            .finish_non_exhaustive()
    }
}

impl Cluster {
    /// Takes over `topo`, with a pin root per node and a scratch directory (services files,
    /// logs) named after the topology's prefix. No agent runs yet.
    pub fn new(topo: Topology, agent: Agent) -> Result<Self> {
        let name = topo.prefix().trim_end_matches('-').to_owned();
        let pins = topo
            .nodes()
            .iter()
            .map(|n| PinRoot::new(&format!("{}node{}", topo.prefix(), n.index())))
            .collect::<Result<Vec<_>>>()?;
        let dir = std::env::temp_dir().join(name);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Self {
            agents: Agents::default(),
            held: Mutex::new(Vec::new()),
            pins,
            scratch: Scratch(dir),
            agent,
            topo,
        })
    }

    /// Keeps `guard` until the agents are gone (and before the namespaces go).
    pub fn hold<T: Send + 'static>(&self, guard: T) {
        self.held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Box::new(guard));
    }

    /// An HTTP server on `port` in every pod, held by the cluster.
    pub fn serve_http(&self, port: u16) -> Result<()> {
        let servers = self.topo.serve_http_all(port)?;
        self.hold(servers);
        Ok(())
    }

    /// A UDP echo server on `port` in every pod, held by the cluster.
    pub fn serve_udp(&self, port: u16) -> Result<()> {
        let servers = self.topo.serve_udp_all(port)?;
        self.hold(servers);
        Ok(())
    }

    /// Runs `attach` in the LAN namespace for the LAN-side peer of every node's `eth0` and
    /// holds what it returns. onehop needs an XDP program there: a veth delivers `XDP_TX`
    /// frames only when its peer runs one.
    pub fn on_lan_peers<T, F>(&self, attach: F) -> Result<()>
    where
        T: Send + 'static,
        F: Fn(&str) -> Result<T> + Sync,
    {
        let peers: Vec<&str> = self
            .topo
            .nodes()
            .iter()
            .map(crate::topology::Node::lan_peer)
            .collect();
        let guards = in_netns(self.topo.lan(), || {
            peers
                .iter()
                .map(|p| attach(p).with_context(|| format!("on the LAN peer {p}")))
                .collect::<Result<Vec<T>>>()
        })??;
        self.hold(guards);
        Ok(())
    }

    /// The directory for this cluster's files (removed on drop).
    pub fn scratch(&self) -> &Path {
        &self.scratch.0
    }

    /// The agent binary.
    pub fn binary(&self) -> &Path {
        self.agent.binary()
    }

    /// Node `node`'s pin root (`--bpffs-root`), removed on drop.
    pub fn pin_root(&self, node: u8) -> &Path {
        self.pins[usize::from(node) - 1].path()
    }

    /// Where node `node`'s agents log (stderr, appended across restarts).
    pub fn log_path(&self, node: u8) -> PathBuf {
        self.scratch().join(format!("node{node}.log"))
    }

    /// Node `node`'s agent log so far (empty if none).
    pub fn log(&self, node: u8) -> String {
        std::fs::read_to_string(self.log_path(node)).unwrap_or_default()
    }

    /// Node `node`'s services file.
    pub fn services_path(&self, node: u8) -> PathBuf {
        self.scratch().join(format!("node{node}.yaml"))
    }

    /// The source "node `node`'s services file".
    pub fn services_file(&self, node: u8) -> Source {
        Source::file(self.services_path(node))
    }

    /// Replaces node `node`'s services file at once (write, then rename), as a `ConfigMap`
    /// update or an operator's tool would: an agent never reads half a file.
    pub fn write_services(&self, node: u8, text: &str) -> Result<()> {
        let path = self.services_path(node);
        let tmp = path.with_extension("yaml.tmp");
        std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &path).with_context(|| format!("replacing {}", path.display()))
    }

    /// Starts `onehop agent` on node `node`'s `eth0` with its pin root, the [`Agent`]'s
    /// arguments and `source`; stderr goes to [`Cluster::log_path`], stdout nowhere.
    pub fn spawn_agent(&self, node: u8, source: &Source) -> Result<()> {
        ensure!(
            (1..=self.topo.nodes().len()).contains(&usize::from(node)),
            "no node{node} in this topology"
        );
        let mut agents = self.agents.lock();
        ensure!(
            !agents.contains_key(&node),
            "an agent already runs on node{node}"
        );
        let log_path = self.log_path(node);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("opening {}", log_path.display()))?;
        let ns = self.topo.node(node).ns();
        let mut cmd = command_in(ns, source.binary.as_ref().unwrap_or(&self.agent.binary));
        cmd.args(["agent", "--interface", NODE_INTERFACE, "--bpffs-root"])
            .arg(self.pin_root(node));
        // The node's own source after what every agent gets, so its variables win.
        self.agent.extra.apply(&mut cmd);
        source.extra.apply(&mut cmd);
        cmd.stdout(Stdio::null()).stderr(log);
        agents.insert(node, spawn_in(ns, cmd)?);
        Ok(())
    }

    /// SIGKILLs node `node`'s agent and reaps it: no chance to clean up, like an OOM kill or
    /// a node crash.
    pub fn kill_agent(&self, node: u8) -> Result<()> {
        let mut guard = self
            .agents
            .lock()
            .remove(&node)
            .with_context(|| format!("no agent runs on node{node}"))?;
        let child = guard.child_mut();
        child
            .kill()
            .with_context(|| format!("killing node{node}'s agent"))?;
        child
            .wait()
            .with_context(|| format!("reaping node{node}'s agent"))?;
        Ok(())
    }

    /// Stops node `node`'s agent with SIGTERM (SIGKILL after `grace`): the agent's own
    /// shutdown path.
    pub fn stop_agent(&self, node: u8, grace: Duration) -> Result<ExitStatus> {
        let guard = self
            .agents
            .lock()
            .remove(&node)
            .with_context(|| format!("no agent runs on node{node}"))?;
        guard.stop(grace)
    }

    /// The pid of node `node`'s agent, if one runs.
    pub fn agent_pid(&self, node: u8) -> Option<u32> {
        self.agents.lock().get(&node).map(ChildGuard::id)
    }

    /// The agents, for a guard that must stop them without borrowing the cluster.
    pub fn agents(&self) -> Agents {
        self.agents.clone()
    }

    /// Polls `ready` until it holds, for at most `timeout`. Fails at once if node `node`'s
    /// agent has exited, and on timeout; either error carries the agent's log.
    pub fn wait_agent(
        &self,
        node: u8,
        what: &str,
        timeout: Duration,
        mut ready: impl FnMut() -> bool,
    ) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if ready() {
                return Ok(());
            }
            let exited = match self.agents.lock().get_mut(&node) {
                Some(agent) => agent.try_wait()?,
                None => bail!("no agent runs on node{node}"),
            };
            if let Some(status) = exited {
                bail!(
                    "node{node}: the agent exited ({status}) before {what}; its log:\n{}",
                    self.log(node)
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "node{node}: no {what} after {timeout:?}; the agent's log:\n{}",
                    self.log(node)
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}
