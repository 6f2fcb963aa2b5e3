//! The XDP frame generator of `bench-e2e` (`--generator xdp`): frames that reach the nodes'
//! `eth0` the way a NIC hands them to its driver, as `xdp_frame`s with no socket buffer.
//!
//! Why: with the socket generator a frame crosses the client's veth and the LAN bridge as a
//! socket buffer (skb), and a veth whose XDP program receives an skb must first turn it into
//! an XDP buffer (copying it into a page-pool page when the skb lacks 256 bytes of headroom)
//! and, on `XDP_PASS`, build a new skb. A NIC driver never pays that: it runs XDP on the DMA
//! buffer before any skb exists. So the socket generator charges onehop (and `routing-xdp`)
//! a cost no NIC has.
//!
//! How: lb-ebpf's `bench_xdpgen` program runs through `BPF_PROG_TEST_RUN` in live-frames
//! mode (`BPF_F_TEST_XDP_LIVE_FRAMES`, kernel 5.18+). Each run rewrites its frame from the
//! target's template (new flows: next source port, and source address beyond one port range,
//! both checksums updated) and redirects it through a devmap to the LAN-side veth of the
//! node the frame is addressed to. That veth's `ndo_xdp_xmit` puts the frame straight on the
//! node's `eth0` receive ring; the node's NAPI poll runs its XDP program (or, with none,
//! builds the skb) like a NIC driver does. The frames skip the client's veth and the bridge:
//! the wire and the switch cost a real LB node nothing either.
//!
//! veth's `ndo_xdp_xmit` only accepts frames when the receiving veth has NAPI enabled, which
//! it has with an XDP program attached (onehop, `routing-xdp`) or with GRO on (since Linux
//! 5.13). [`XdpGen::new`] therefore turns GRO on on every node's `eth0` (and back off on
//! drop), for every path alike; NIC drivers have GRO on by default too.
//!
//! CPU: the program, the redirect's flush and the receiving veth's NAPI poll (the node's whole
//! receive path) run in the calling thread — the test run processes a batch with bottom
//! halves disabled and the pending `NET_RX` softirq runs when it enables them again — so the
//! thread's CPU time holds the path's cost as with the socket generator.
//!
//! Rate: a test run processes `repeat` frames in batches of 64 (one NAPI budget, well below
//! the veth ring's 256 slots, so nothing overflows: each batch's frames are through the node
//! before the next batch starts). Every test run has a fixed cost (see [`RUN_WALL`]), so a
//! fixed rate is offered as long runs (200 ms worth of frames) with sleeps in between: bursts
//! at the path's own speed, the right count per window.

use std::{
    fmt::{self, Write as _},
    net::Ipv4Addr,
    str::FromStr,
    sync::{Mutex, atomic::Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, DevMap, MapData},
    programs::{TestRun as _, TestRunAttrs, TestRunOptions, Xdp},
};
use lb_common::{bench as b, maps as m};
use onehop_testkit::{
    MacAddr, Topology,
    netns::{command_in, ifindex, in_netns, run_checked},
};

use super::{
    load::{self, FRAME_LEN, Flows, Sent},
    paths::Target,
};

const _: () = assert!(FRAME_LEN == b::XDPGEN_FRAME_LEN);

/// Frames per batch of a test run: one NAPI budget (`NAPI_POLL_WEIGHT`).
const BATCH: u32 = 64;
/// Frames per test run at most.
const MAX_RUN: u32 = 1 << 20;
/// Frames of the first unpaced test run.
const FIRST_UNPACED_RUN: u32 = 16_384;
/// Wall time each test run aims at. Every run also sets up and tears down a page pool:
/// about 0.25 ms of CPU and, on this 6.18 kernel, ~24 ms of sleeping (measured; likely a
/// grace period in the teardown), whatever the run's size. Long runs keep the CPU overhead
/// per frame small (~60 ns at 20,000 frames/s) and the wait a small share of an unpaced run.
const RUN_WALL: Duration = Duration::from_millis(200);

/// Sizes test runs: paced runs carry `RUN_WALL` worth of the offered rate (less when the
/// path cannot keep up, never beyond the window's total); unpaced runs grow or shrink so each
/// takes about `RUN_WALL`.
struct RunSizer {
    size: u32,
    cap: u32,
    /// Frames the whole window offers (paced only).
    total: Option<u64>,
}

impl RunSizer {
    fn new(rate: Option<u64>, duration: Duration) -> Self {
        let Some(r) = rate else {
            return Self {
                size: FIRST_UNPACED_RUN,
                cap: MAX_RUN,
                total: None,
            };
        };
        let worth = |d: Duration| u64::try_from(u128::from(r) * d.as_micros() / 1_000_000);
        let cap = worth(RUN_WALL)
            .ok()
            .and_then(|n| u32::try_from(n).ok())
            .unwrap_or(MAX_RUN)
            .clamp(BATCH, MAX_RUN);
        Self {
            size: cap,
            cap,
            total: worth(duration).ok(),
        }
    }

    /// Frames of the next run, after `offered` so far; `None`: the window is complete.
    fn next(&self, offered: u64) -> Option<u32> {
        let Some(total) = self.total else {
            return Some(self.size);
        };
        let left = total.checked_sub(offered).filter(|&l| l > 0)?;
        Some(u32::try_from(left).map_or(self.size, |l| l.min(self.size)))
    }

    /// Adapts the size to how long the last run took.
    fn took(&mut self, wall: Duration) {
        let scaled = u128::from(self.size) * RUN_WALL.as_micros() / wall.as_micros().max(1);
        self.size = u32::try_from(scaled)
            .unwrap_or(MAX_RUN)
            .clamp(BATCH, self.cap);
    }
}

/// Which generator `bench-e2e` sends UDP with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Generator {
    /// `sendmmsg` on a packet socket in the client: frames cross the client's veth and the
    /// LAN bridge as socket buffers.
    Socket,
    /// [`XdpGen`]: frames arrive at the nodes as XDP frames, as from a NIC.
    Xdp,
}

impl FromStr for Generator {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "socket" => Ok(Self::Socket),
            "xdp" => Ok(Self::Xdp),
            other => bail!("unknown generator {other:?} (socket or xdp)"),
        }
    }
}

impl fmt::Display for Generator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Socket => "socket",
            Self::Xdp => "xdp",
        })
    }
}

/// GRO (and with it NAPI) turned on on a node's `eth0`; restored on drop.
struct Gro {
    ns: String,
    was_on: bool,
}

impl Gro {
    fn on(ns: &str) -> Result<Self> {
        let shown = run_checked(command_in(ns, "ethtool").args(["-k", "eth0"]))
            .with_context(|| format!("ethtool -k eth0 in {ns}"))?;
        let was_on = shown
            .lines()
            .any(|l| l.trim() == "generic-receive-offload: on");
        if !was_on {
            run_checked(command_in(ns, "ethtool").args(["-K", "eth0", "gro", "on"]))
                .with_context(|| format!("ethtool -K eth0 gro on in {ns}"))?;
        }
        Ok(Self {
            ns: ns.to_owned(),
            was_on,
        })
    }
}

impl Drop for Gro {
    fn drop(&mut self) {
        if !self.was_on {
            // The namespace may be gone already (topology torn down first): nothing to undo.
            let _ = run_checked(command_in(&self.ns, "ethtool").args(["-K", "eth0", "gro", "off"]));
        }
    }
}

struct Maps {
    frames: Array<MapData, [u8; b::XDPGEN_SLOT]>,
    state: Array<MapData, u64>,
    _ports: DevMap<MapData>,
}

/// The loaded generator program and its maps, with GRO on on the nodes' `eth0`.
pub struct XdpGen {
    // Field order is drop order: the program and maps, then GRO back off.
    ebpf: Ebpf,
    /// Written before and read after each send (one send at a time).
    maps: Mutex<Maps>,
    /// Port key → the MAC of the node behind it.
    port_macs: Vec<MacAddr>,
    client_ns: String,
    _gro: Vec<Gro>,
}

impl XdpGen {
    /// Why this kernel will not run XDP programs on live frames
    /// (`BPF_F_TEST_XDP_LIVE_FRAMES`) for the generator, if it will not: some
    /// sandboxes refuse it even to root, with `EPERM` for a program that only
    /// returns `XDP_PASS`. Probed with the object's `xdp_pass` on one zeroed
    /// frame, in the client's namespace (the frame ends in its loopback's
    /// stack, which drops it).
    pub fn live_frames_refused(&mut self) -> Option<String> {
        let probe = (|| -> Result<()> {
            let prog: &mut Xdp = self
                .ebpf
                .program_mut("xdp_pass")
                .context("xdp_pass missing from the object")?
                .try_into()?;
            prog.load().context("loading xdp_pass")?;
            let prog: &Xdp = prog;
            let data = [0u8; FRAME_LEN];
            in_netns(&self.client_ns, || {
                prog.test_run(TestRunOptions {
                    data_in: Some(&data),
                    repeat: 1,
                    attrs: TestRunAttrs::new().xdp_live_frames(1),
                    ..TestRunOptions::default()
                })
                .context("BPF_PROG_TEST_RUN of xdp_pass on a live frame")
            })??;
            Ok(())
        })();
        probe.err().map(|e| format!("{e:#}"))
    }

    /// Loads `bench_xdpgen`, points one port per node at the node's LAN-side veth and turns
    /// GRO on on every node's `eth0`.
    pub fn new(topo: &Topology) -> Result<Self> {
        let gro = topo
            .nodes()
            .iter()
            .map(|n| Gro::on(n.ns().name()))
            .collect::<Result<Vec<_>>>()?;
        // The data path's big maps are created with the object but unused here: keep them small.
        let mut ebpf = EbpfLoader::new()
            .map_max_entries(m::MAGLEV, 1)
            .map_max_entries(m::CONNTRACK, 1)
            .map_max_entries(m::REV_NAT, 1)
            .map_max_entries(m::AFFINITY, 1)
            .load(crate::ebpf::object()?)
            .context("loading the eBPF object")?;
        let prog: &mut Xdp = ebpf
            .program_mut(b::programs::XDPGEN)
            .with_context(|| format!("{} missing from the object", b::programs::XDPGEN))?
            .try_into()?;
        lb_userspace::dataplane::loader::verify(|| prog.load())
            .with_context(|| format!("verifying {}", b::programs::XDPGEN))?;
        let take = |ebpf: &mut Ebpf, name: &str| {
            ebpf.take_map(name)
                .with_context(|| format!("map {name} missing from the object"))
        };
        let frames = Array::try_from(take(&mut ebpf, b::XDPGEN_FRAMES)?)?;
        let state = Array::try_from(take(&mut ebpf, b::XDPGEN_STATE)?)?;
        let mut ports = DevMap::try_from(take(&mut ebpf, b::XDPGEN_PORTS)?)?;
        ensure!(
            topo.nodes().len() <= b::XDPGEN_MAX_PORTS as usize,
            "more nodes than generator ports"
        );
        let peers: Vec<String> = topo
            .nodes()
            .iter()
            .map(|n| n.lan_peer().to_owned())
            .collect();
        // A devmap resolves an ifindex in the namespace of the thread that writes the entry.
        in_netns(topo.lan(), || -> Result<()> {
            for (key, peer) in (0u32..).zip(&peers) {
                let ifindex = ifindex(peer)?;
                ports
                    .set(key, ifindex, None, 0)
                    .with_context(|| format!("devmap entry for {peer}"))?;
            }
            Ok(())
        })??;
        Ok(Self {
            ebpf,
            maps: Mutex::new(Maps {
                frames,
                state,
                _ports: ports,
            }),
            port_macs: topo.nodes().iter().map(onehop_testkit::Node::mac).collect(),
            client_ns: topo.client().ns().name().to_owned(),
            _gro: gro,
        })
    }

    fn port_of(&self, mac: MacAddr) -> Result<u32> {
        let i = self
            .port_macs
            .iter()
            .position(|&m| m == mac)
            .with_context(|| {
                format!("no node has MAC {mac}: the XDP generator only sends to nodes")
            })?;
        u32::try_from(i).context("port key")
    }

    /// Writes one template per target and the state for a run from frame number `first`.
    fn prepare(
        &self,
        maps: &mut Maps,
        topo: &Topology,
        targets: &[Target],
        flows: Flows,
        first: u64,
    ) -> Result<()> {
        ensure!(!targets.is_empty(), "no targets");
        ensure!(
            targets.len() <= b::XDPGEN_MAX_TARGETS as usize,
            "at most {} targets",
            b::XDPGEN_MAX_TARGETS
        );
        let client = topo.client();
        // New flows: the template is flow 0; the program rewrites the source of every frame.
        let (src, sport) = match flows {
            Flows::New => (
                Ipv4Addr::from(b::XDPGEN_SRC_BASE),
                u16::try_from(b::XDPGEN_PORT_BASE).context("port base")?,
            ),
            Flows::One { sport } => (client.ip(), sport),
        };
        for (i, t) in (0u32..).zip(targets) {
            let mut slot = [0u8; b::XDPGEN_SLOT];
            slot[..FRAME_LEN].copy_from_slice(&load::udp_frame(
                client.mac(),
                t.mac,
                src,
                sport,
                t.addr,
            ));
            slot[FRAME_LEN..FRAME_LEN + 4].copy_from_slice(&self.port_of(t.mac)?.to_ne_bytes());
            maps.frames
                .set(i, slot, 0)
                .context("writing a frame template")?;
        }
        let flags = match flows {
            Flows::New => b::XDPGEN_NEW_FLOWS,
            Flows::One { .. } => 0,
        };
        for (slot, v) in [
            (b::XDPGEN_NEXT, first),
            (b::XDPGEN_TARGETS, targets.len() as u64),
            (b::XDPGEN_FLAGS, flags),
        ] {
            maps.state
                .set(slot, v, 0)
                .context("writing the generator state")?;
        }
        Ok(())
    }

    /// Sends for `duration` to `targets` (round robin) at `rate` frames per second (`None`:
    /// as fast as possible); the test runs happen on a thread in the client namespace.
    pub fn send(
        &self,
        topo: &Topology,
        targets: &[Target],
        flows: Flows,
        rate: Option<u64>,
        duration: Duration,
    ) -> Result<Sent> {
        // New flows continue the socket generator's process-wide flow numbers, so no 5-tuple
        // repeats within or across runs whichever generator sent it.
        let first = match flows {
            Flows::New => load::NEXT_FLOW.load(Ordering::Relaxed),
            Flows::One { .. } => 0,
        };
        let mut maps = self
            .maps
            .lock()
            .map_err(|_| anyhow::anyhow!("generator maps poisoned"))?;
        self.prepare(&mut maps, topo, targets, flows, first)?;
        let prog: &Xdp = self
            .ebpf
            .program(b::programs::XDPGEN)
            .context("generator program")?
            .try_into()?;
        // The program overwrites every byte it sends; the kernel only needs the length.
        let data = [0u8; FRAME_LEN];
        let (offered, secs, cpu) = in_netns(&self.client_ns, || -> Result<(u64, f64, u64)> {
            let start = Instant::now();
            let cpu0 = load::thread_cpu_ns();
            let mut runs = RunSizer::new(rate, duration);
            let mut offered = 0u64;
            while start.elapsed() < duration {
                if let Some(ahead) = load::ahead_of_rate(offered, rate, start) {
                    std::thread::sleep(ahead.min(Duration::from_millis(20)));
                    continue;
                }
                let Some(n) = runs.next(offered) else { break };
                let t = Instant::now();
                prog.test_run(TestRunOptions {
                    data_in: Some(&data),
                    repeat: n,
                    attrs: TestRunAttrs::new().xdp_live_frames(BATCH),
                    ..TestRunOptions::default()
                })
                .context("BPF_PROG_TEST_RUN of the generator (live frames)")?;
                runs.took(t.elapsed());
                offered += u64::from(n);
            }
            let elapsed = start.elapsed().as_secs_f64();
            // A paced run's frames stand for `offered / rate` seconds of traffic even when the
            // last test run ended early in its slot.
            #[expect(clippy::cast_precision_loss, reason = "counts far below 2^52")]
            let window = rate.map_or(elapsed, |r| elapsed.max(offered as f64 / r as f64));
            Ok((offered, window, load::thread_cpu_ns().saturating_sub(cpu0)))
        })??;
        let next = maps
            .state
            .get(&b::XDPGEN_NEXT, 0)
            .context("reading the generator state")?;
        if matches!(flows, Flows::New) {
            load::NEXT_FLOW.fetch_max(next, Ordering::Relaxed);
        }
        // The program counts every frame it ran on: proof that each test run ran `repeat` times.
        let frames = next.wrapping_sub(first);
        ensure!(
            frames == offered,
            "the generator program ran on {frames} frames, {offered} were asked for"
        );
        Ok(Sent {
            frames,
            secs,
            thread_cpu_ns: cpu,
        })
    }
}

/// Where frames may have been lost on the way to the nodes (for failure messages): each node
/// `eth0`'s `ip -s link` (an attached XDP program shows as `prog/xdp`) and GRO state, and the
/// XDP counters of its LAN-side veth (`ethtool -S`). A veth whose peer has NAPI off refuses
/// `ndo_xdp_xmit` without counting it anywhere: then GRO is off and no program is attached.
pub fn drop_report(topo: &Topology) -> String {
    let mut out = String::new();
    for n in topo.nodes() {
        let ns = n.ns().name();
        let run = |ns: &str, cmd: &str, args: &[&str]| {
            run_checked(command_in(ns, cmd).args(args)).unwrap_or_else(|e| format!("{e:#}"))
        };
        let link = run(ns, "ip", &["-d", "-s", "link", "show", "eth0"]);
        let features = run(ns, "ethtool", &["-k", "eth0"]);
        let gro = features
            .lines()
            .find(|l| l.starts_with("generic-receive-offload"))
            .unwrap_or("generic-receive-offload: ?");
        let stats = run(topo.lan().name(), "ethtool", &["-S", n.lan_peer()]);
        let xdp: Vec<&str> = stats
            .lines()
            .map(str::trim)
            .filter(|l| l.contains("xdp") && !l.ends_with(": 0"))
            .collect();
        let _ = writeln!(
            out,
            "{} eth0 ({gro}):\n{link}{} (non-zero xdp counters): {}",
            n.name(),
            n.lan_peer(),
            xdp.join(", ")
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paced_runs_fill_the_window_exactly() {
        let mut r = RunSizer::new(Some(20_000), Duration::from_secs(2));
        assert_eq!(r.next(0), Some(4000));
        assert_eq!(r.next(38_000), Some(2000));
        assert_eq!(r.next(40_000), None);
        // A path that keeps up: never beyond RUN_WALL worth.
        r.took(Duration::from_millis(30));
        assert_eq!(r.next(0), Some(4000));
        // One that cannot: shorter runs, so the window is not overshot by much.
        r.took(Duration::from_millis(800));
        assert_eq!(r.next(0), Some(1000));
        let tiny = RunSizer::new(Some(2000), Duration::from_millis(200));
        assert_eq!(tiny.next(0), Some(400));
        assert_eq!(tiny.next(400), None);
        assert_eq!(
            RunSizer::new(Some(10), Duration::from_secs(1)).next(0),
            Some(10)
        );
    }

    #[test]
    fn unpaced_runs_aim_at_run_wall() {
        let mut r = RunSizer::new(None, Duration::from_secs(2));
        assert_eq!(r.next(u64::MAX), Some(FIRST_UNPACED_RUN));
        r.took(Duration::from_millis(50));
        assert_eq!(r.next(0), Some(FIRST_UNPACED_RUN * 4));
        r.took(Duration::from_secs(1000));
        assert_eq!(r.next(0), Some(BATCH));
    }

    #[test]
    fn generator_names_round_trip() {
        for g in [Generator::Socket, Generator::Xdp] {
            assert_eq!(g.to_string().parse::<Generator>().unwrap(), g);
        }
        assert!("pktgen".parse::<Generator>().is_err());
    }
}
