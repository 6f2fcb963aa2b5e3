//! One UDP 5-tuple whose backend sits on a chosen node, for the established-flow workload.
//!
//! Every path keeps a flow on the backend it picked first (onehop's connection table, kernel
//! conntrack), but the pick itself is a hash (onehop's Maglev) or a die roll (kube-proxy's
//! `statistic --mode random`, nftables' `numgen random`). A backend on node1, the node that
//! receives the VIP, and one on node2 are different paths: the remote one crosses the LAN a
//! second time. "One flow" without saying which lands the baselines' runs on either at
//! random (the 2× swing of the first committed results). So the workload first finds a flow
//! (target, source port) that the path delivers to a pod of the wanted node, then saturates
//! exactly that flow, which the path keeps on that pod.

use std::time::Duration;

use anyhow::{Result, bail, ensure};

use super::{
    load::{self, Flows},
    paths::{Target, World},
};

/// Source ports probed per target.
const PROBES: u16 = 48;
/// First source port probed (the socket generator's new flows use 1024–61023 from other
/// source addresses; the client's own address is used only here).
const FIRST_PORT: u16 = 40_000;
/// Frames per probe: enough to tell a pod from stray traffic, few enough to be quick.
const PROBE_FRAMES: u64 = 20;
/// Frames other pods may receive during a probe (neighbour probes) without the flow
/// counting as split.
const NOISE: u64 = 2;

/// Where the backend of a flow is, seen from the node that receives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Locality {
    /// A pod on node1 (the VIP's node).
    Local,
    /// A pod on node2: one more hop over the LAN for a load balancer.
    Remote,
}

impl Locality {
    pub fn name(self) -> &'static str {
        match self {
            Self::Local => "local",
            Self::Remote => "remote",
        }
    }

    fn node(self) -> u8 {
        match self {
            Self::Local => 1,
            Self::Remote => 2,
        }
    }
}

/// A flow the path under test delivers to one pod.
#[derive(Debug, Clone, Copy)]
pub struct PinnedFlow {
    pub target: Target,
    pub sport: u16,
    /// Index of the pod in `topo.pods()` order.
    pub pod: usize,
}

impl PinnedFlow {
    pub fn flows(&self) -> Flows {
        Flows::One { sport: self.sport }
    }
}

/// Probes `targets` with one flow after another until the path delivers one to a pod on the
/// node `want` names. A flow whose frames reach more than one pod is an error: the path does
/// not keep flows on their backend.
pub fn find(world: &World, targets: &[Target], want: Locality) -> Result<PinnedFlow> {
    let node_of: Vec<u8> = world
        .topo
        .pods()
        .map(onehop_testkit::Pod::node_index)
        .collect();
    let mut seen = Vec::new();
    for &target in targets {
        for sport in FIRST_PORT..FIRST_PORT + PROBES {
            let flows = Flows::One { sport };
            // One frame first, alone: the frames of one receive batch pass conntrack's
            // PREROUTING together, before the first is confirmed, so a flow's first burst
            // can be spread over several backends (UDP clash resolution). From the second
            // frame on, a path keeps the flow where it put the first.
            world.send(&[target], flows, Some(1000), Duration::from_millis(1))?;
            std::thread::sleep(Duration::from_millis(10));
            let before = load::pod_rx(&world.topo)?;
            // Paced at 1 frame/ms: PROBE_FRAMES frames, then the time they need to arrive.
            world.send(
                &[target],
                flows,
                Some(1000),
                Duration::from_millis(PROBE_FRAMES),
            )?;
            std::thread::sleep(Duration::from_millis(30));
            let got = load::pod_rx_since(&world.topo, &before)?;
            let Some((pod, &most)) = got.iter().enumerate().max_by_key(|&(_, n)| *n) else {
                bail!("no pods");
            };
            // Pods also receive the odd neighbour probe; a flow split between backends
            // shows up as more than that.
            let elsewhere = got.iter().sum::<u64>() - most;
            ensure!(
                elsewhere <= NOISE,
                "one flow ({}, source port {sport}) reached several pods (frames per pod: \
                 {got:?})",
                target.addr
            );
            if most * 2 < PROBE_FRAMES {
                continue;
            }
            if node_of[pod] == want.node() {
                return Ok(PinnedFlow { target, sport, pod });
            }
            seen.push(pod);
        }
    }
    bail!(
        "no probed flow reached a {} pod (node{}); pods reached: {seen:?}",
        want.name(),
        want.node()
    )
}
