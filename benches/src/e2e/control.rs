//! Control plane: how long a running agent takes from a new services file with 10,000
//! services (100,000 backends) until the data path serves the last one, and its memory.
//!
//! The agent runs on node1 with an empty services file; the bench then replaces the file
//! (atomic rename, like a `ConfigMap` update) with `services` UDP services of `backends`
//! backends each: the first backend of every service is node1-pod1, the others distinct
//! addresses in 10.43.0.0/16 on node2 (never reached: only the map sizes matter). Timed:
//! rename → every service entry in node1's `services` map (written last, after backends and
//! Maglev tables), then → the first datagram to the LAST service's VIP arriving at node1-pod1.

use std::{
    fmt::Write as _,
    net::{Ipv4Addr, SocketAddrV4},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use lb_userspace::dataplane::maps::{Maps, PinDir};
use onehop_testkit::{
    cluster::{NODE_INTERFACE, Source},
    topology::node_ip,
};

use super::{
    load::{self, Flows},
    paths::{Target, World},
};

/// Result of the control-plane measurement.
#[derive(Debug, Clone, Copy)]
pub struct ControlPlane {
    pub services: u32,
    pub backends: u32,
    /// File replaced → every service in the map.
    pub maps_s: f64,
    /// File replaced → first datagram to the last service delivered.
    pub serving_s: f64,
    /// Agent resident set after loading, KiB.
    pub rss_kib: u64,
    /// Agent peak resident set, KiB.
    pub hwm_kib: u64,
}

pub(super) fn proc_status_kib(pid: u32, field: &str) -> Result<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    text.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .context("field missing")?
        .parse()
        .context("parsing /proc/pid/status")
}

pub(super) fn last_vip(services: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(172, 20, 0, 1)) + services - 1)
}

fn file(services: u32, backends: u32, pod: Ipv4Addr) -> String {
    // An empty list must be explicit: the agent rejects a file without one.
    let list = if services == 0 { " []" } else { "" };
    let mut y = format!(
        "node: {{ ip: {} }}\nnat_ports: {{ min: 1024, max: 65535 }}\nannounce: []\nservices:{list}\n",
        node_ip(1)
    );
    let fake = u32::from(Ipv4Addr::new(10, 43, 0, 1));
    for i in 0..services {
        let _ = write!(
            y,
            "  - name: cp-{i}\n    vip: {}\n    ports: [{{ port: 9000, protocol: UDP }}]\n    backends: [{{ ip: {pod}, node_ip: {} }}",
            Ipv4Addr::from(u32::from(Ipv4Addr::new(172, 20, 0, 1)) + i),
            node_ip(1)
        );
        for k in 1..backends {
            let ip = Ipv4Addr::from(fake + i * (backends - 1) + (k - 1));
            let _ = write!(y, ", {{ ip: {ip}, node_ip: {} }}", node_ip(2));
        }
        y.push_str("]\n");
    }
    y
}

/// Node1's agent for one measurement, started with `slots` Maglev slots and `source`: on
/// drop it is killed, then its pins are removed (detaching its programs), so the next
/// measurement or path starts from a clean node.
pub(super) struct MeasuredAgent<'a>(&'a World);

impl<'a> MeasuredAgent<'a> {
    pub(super) fn start(world: &'a World, slots: u64, source: Source) -> Result<Self> {
        world.spawn_agent(
            1,
            &source.args(["--maglev-slots".to_owned(), slots.to_string()]),
        )?;
        Ok(Self(world))
    }

    pub(super) fn pid(&self) -> Result<u32> {
        self.0.agent_pid(1).context("node1's agent is gone")
    }
}

impl Drop for MeasuredAgent<'_> {
    fn drop(&mut self) {
        // The agent first: it would re-pin what the cleanup removes.
        let _ = self.0.kill_agent(1);
        let root = self.0.pin_root(1);
        if let Err(e) = lb_userspace::dataplane::loader::cleanup(root, NODE_INTERFACE) {
            eprintln!("bench-e2e: cleanup of {}: {e:#}", root.display());
        }
    }
}

/// Runs the measurement on `world` (no other path may be installed).
pub fn measure(world: &World, services: u32, backends: u32) -> Result<ControlPlane> {
    let dir = world.scratch();
    let cfg = dir.join("cp.yaml");
    std::fs::write(&cfg, "services: []\n")?;
    let slots = u64::from(lb_userspace::plan::maglev::table_size(
        lb_userspace::plan::maglev::MaglevSize::DEFAULT,
        backends as usize,
    )) * u64::from(services)
        + 1024;
    let agent = MeasuredAgent::start(
        world,
        slots,
        Source::file(&cfg).args(["--poll-interval-ms", "100"]),
    )?;
    let pins = PinDir::new(world.pin_root(1), NODE_INTERFACE);
    world
        .wait_agent(1, "ready data path", Duration::from_secs(30), || {
            Maps::open(&pins)
                .and_then(|m| m.config())
                .is_ok_and(|c| c.ready != 0)
        })
        .context("agent did not start")?;
    let pod = world.topo.node(1).pod(1);
    let text = file(services, backends, pod.ip());
    let tmp = dir.join("cp.yaml.tmp");
    std::fs::write(&tmp, &text)?;
    let before = load::pod_rx(&world.topo)?[0];
    let start = Instant::now();
    std::fs::rename(&tmp, &cfg)?;
    let maps = loop {
        if let Ok(m) = Maps::open(&pins)
            && m.services.keys().flatten().count() >= services as usize
        {
            break start.elapsed().as_secs_f64();
        }
        if start.elapsed() > Duration::from_mins(5) {
            bail!("services not loaded after 5 minutes: {}", world.log(1));
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let serving =
        wait_last_serving(world, services, before, start).with_context(|| world.log(1))?;
    let pid = agent.pid()?;
    let rss = proc_status_kib(pid, "VmRSS:")?;
    let hwm = proc_status_kib(pid, "VmHWM:")?;
    drop(agent);
    Ok(ControlPlane {
        services,
        backends: services * backends,
        maps_s: maps,
        serving_s: serving,
        rss_kib: rss,
        hwm_kib: hwm,
    })
}

/// Sends probes to the LAST service's VIP until one arrives at node1-pod1 (whose received
/// packets were `before`); returns the seconds since `start`.
pub(super) fn wait_last_serving(
    world: &World,
    services: u32,
    before: u64,
    start: Instant,
) -> Result<f64> {
    // Probes: 64 new flows per round to the last VIP; Maglev sends ~1 in `backends` to
    // node1-pod1, the only real backend.
    let target = Target {
        addr: SocketAddrV4::new(last_vip(services), 9000),
        mac: world.topo.node(1).mac(),
    };
    loop {
        load::send(
            &world.topo,
            &[target],
            Flows::New,
            None,
            Duration::from_millis(1),
        )?;
        std::thread::sleep(Duration::from_millis(10));
        if load::pod_rx(&world.topo)?[0] > before {
            return Ok(start.elapsed().as_secs_f64());
        }
        if start.elapsed() > Duration::from_secs(320) {
            bail!("the last service never delivered");
        }
    }
}
