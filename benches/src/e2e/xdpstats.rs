//! The kernel's own run time of each node's `lb_ingress` (`BPF_ENABLE_STATS`): what the XDP
//! program costs on the announcer apart from the backend's node. On veth every node's receive
//! path runs in the sender's context, so the generator thread's CPU time holds both nodes and
//! cannot tell them apart; the program's run time can.

use std::{os::fd::OwnedFd, path::Path};

use anyhow::{Context as _, Result};
use aya::programs::links::{FdLink, PinnedLink};
use lb_common::maps::programs;
use lb_userspace::dataplane::maps::PinDir;
use onehop_testkit::cluster::NODE_INTERFACE;

/// Run count and accumulated run time of one program.
#[derive(Debug, Clone, Copy, Default)]
pub struct RunStats {
    pub count: u64,
    pub ns: u64,
}

impl RunStats {
    /// ns per run between `before` and `self` (`None` when it did not run).
    pub fn ns_per_run_since(&self, before: &Self) -> Option<f64> {
        let runs = self.count.checked_sub(before.count).filter(|&r| r > 0)?;
        #[expect(clippy::cast_precision_loss, reason = "counts far below 2^52")]
        Some(self.ns.saturating_sub(before.ns) as f64 / runs as f64)
    }
}

/// Turns the kernel's program run-time accounting on while the returned descriptor lives
/// (reference counted by the kernel: it does not turn off someone else's). Every BPF program
/// of the machine then pays two clock reads per run, so it is held only around the windows
/// that read it.
pub fn enable() -> Result<OwnedFd> {
    aya::sys::enable_stats(aya::sys::Stats::RunTime).context("BPF_ENABLE_STATS (run time)")
}

/// The run statistics of the `lb_ingress` program attached through the XDP link pinned under
/// `pin_root` (an agent's pin root).
pub fn ingress(pin_root: &Path) -> Result<RunStats> {
    let pins = PinDir::new(pin_root, NODE_INTERFACE);
    let path = pins.entry(programs::INGRESS_LINK);
    let link = PinnedLink::from_pin(&path)
        .with_context(|| format!("opening the pinned link {}", path.display()))?;
    let link: FdLink = link.into();
    let id = link
        .info()
        .with_context(|| format!("link info of {}", path.display()))?
        .program_id();
    let info = aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .find(|p| p.id() == id)
        .with_context(|| format!("program {id} of {} not loaded", path.display()))?;
    Ok(RunStats {
        count: info.run_count(),
        ns: u64::try_from(info.run_time().as_nanos()).unwrap_or(u64::MAX),
    })
}
