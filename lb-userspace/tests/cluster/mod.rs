//! The namespace world the end-to-end suites share: a testkit topology with
//! HTTP and UDP servers in every pod, the pass-through XDP program on the
//! LAN-side veth peers, one private bpffs root per node, and `onehop agent`
//! processes (logs captured) that the suites start with their own source
//! arguments. Everything is released on drop, agents first.

use std::{
    collections::{BTreeMap, BTreeSet},
    ffi::OsStr,
    path::PathBuf,
    process::Stdio,
    sync::{
        Mutex,
        atomic::{AtomicU32, Ordering},
    },
    time::{Duration, Instant},
};

use lb_userspace::{
    dataplane::maps::{Maps, PinDir},
    dataplane::peer,
    dataplane::status::Snapshot,
};
use onehop_testkit::{
    netns::{ChildGuard, command_in, in_netns, spawn_in},
    server::{HttpServer, UdpServer},
    topology::Topology,
};

pub const TARGET_PORT: u16 = 8080;
pub const UDP_TARGET_PORT: u16 = 5353;

pub struct Cluster {
    agents: Mutex<BTreeMap<u8, ChildGuard>>,
    _passes: Vec<peer::PassThrough>,
    _servers: Vec<HttpServer>,
    _udp_servers: Vec<UdpServer>,
    pub topo: Topology,
    pub dir: PathBuf,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.agents
            .lock()
            .map(|mut a| a.clear())
            .unwrap_or_default();
        let _ = std::fs::remove_dir_all(&self.dir);
        for i in 1..=u8::try_from(self.topo.nodes().len()).unwrap_or(0) {
            let _ = std::fs::remove_dir_all(self.pin_root(i));
        }
    }
}

static SEQ: AtomicU32 = AtomicU32::new(0);

impl Cluster {
    pub fn new(nodes: u8, pods_per_node: u8, clients: u8) -> Self {
        let topo = Topology::builder()
            .nodes(nodes)
            .pods_per_node(pods_per_node)
            .clients(clients)
            .build()
            .expect("topology");
        let servers = topo.serve_http_all(TARGET_PORT).expect("servers");
        let udp_servers = topo.serve_udp_all(UDP_TARGET_PORT).expect("udp servers");
        // XDP_TX on a veth only delivers if the peer has an XDP program.
        let lan_peers: Vec<String> = topo
            .nodes()
            .iter()
            .map(|n| n.lan_peer().to_owned())
            .collect();
        let passes = in_netns(topo.lan(), || {
            lan_peers
                .iter()
                .map(|p| peer::attach(p))
                .collect::<anyhow::Result<Vec<_>>>()
        })
        .expect("netns")
        .expect("pass-through programs");
        let dir = std::env::temp_dir().join(format!(
            "onehop-e2e-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("scratch dir");
        Self {
            agents: Mutex::new(BTreeMap::new()),
            _passes: passes,
            _servers: servers,
            _udp_servers: udp_servers,
            topo,
            dir,
        }
    }

    pub fn pin_root(&self, node: u8) -> PathBuf {
        PathBuf::from(format!("/sys/fs/bpf/{}node{node}", self.topo.prefix()))
    }

    pub fn log_path(&self, node: u8) -> PathBuf {
        self.dir.join(format!("node{node}.log"))
    }

    /// Starts `onehop agent` on a node with small maps, plus `source` (the
    /// arguments that pick and configure the services source) and `env`
    /// (extra environment variables, e.g. `KUBECONFIG`).
    pub fn spawn_agent<S: AsRef<OsStr>>(&self, node: u8, source: &[S], env: &[(&str, &OsStr)]) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(node))
            .expect("log file");
        let mut cmd = command_in(self.topo.node(node).ns(), env!("CARGO_BIN_EXE_onehop"));
        cmd.args(["agent", "--interface", "eth0", "--maglev-slots", "65536"])
            .args([
                "--conntrack-size",
                "16384",
                "--rev-nat-size",
                "16384",
                "--affinity-size",
                "1024",
            ])
            .arg("--bpffs-root")
            .arg(self.pin_root(node))
            .args(source)
            .env(
                "RUST_LOG",
                std::env::var("ONEHOP_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(log);
        let guard = spawn_in(self.topo.node(node).ns(), cmd).expect("spawn agent");
        self.agents.lock().expect("agents").insert(node, guard);
    }

    /// SIGKILL: no chance to clean up, like an OOM kill or a node crash.
    pub fn kill_agent(&self, node: u8) {
        let mut guard = self
            .agents
            .lock()
            .expect("agents")
            .remove(&node)
            .expect("agent running");
        let pid = i32::try_from(guard.id()).expect("pid");
        // SAFETY: plain kill(2) on our own child.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0, "kill failed");
        let _ = guard.child_mut().wait();
    }

    pub fn log(&self, node: u8) -> String {
        std::fs::read_to_string(self.log_path(node)).unwrap_or_default()
    }

    pub fn snapshot(&self, node: u8) -> anyhow::Result<Snapshot> {
        let maps = Maps::open(&PinDir::new(&self.pin_root(node), "eth0"))?;
        Snapshot::read(&maps)
    }

    /// Polls the node's maps until `pred` holds (bounded).
    pub fn wait_for(&self, node: u8, what: &str, pred: impl Fn(&Snapshot) -> bool) -> Snapshot {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(s) = self.snapshot(node)
                && s.config.ready != 0
                && pred(&s)
            {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "node{node}: timed out waiting for {what}; agent log:\n{}",
                self.log(node)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Pods in use (each pod is one backend per service port).
pub fn pods_in_use(s: &Snapshot) -> usize {
    s.backends
        .iter()
        .map(|b| b.value.ip)
        .collect::<BTreeSet<_>>()
        .len()
}
