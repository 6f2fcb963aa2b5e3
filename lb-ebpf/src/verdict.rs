//! What the ingress logic decided, with the counter that records it. The
//! entry point turns an [`Outcome`] into an XDP action and counts it, so
//! every packet is counted exactly once by its final outcome.

use aya_ebpf::bindings::xdp_action::{XDP_DROP, XDP_PASS, XDP_TX};
use lb_common::{Counter, DropReason};

use crate::stats;

pub enum Outcome {
    Pass(Counter),
    Tx(Counter),
    /// `bpf_redirect`'s return value (`XDP_REDIRECT` on success).
    Redirect(u32, Counter),
    Drop(DropReason),
    /// An XDP action whose outcome an out-of-line subprogram (the ICMP
    /// error and fragment paths) already counted.
    Counted(u32),
}

impl Outcome {
    #[inline(always)]
    pub fn finish(self) -> u32 {
        match self {
            Outcome::Pass(c) => {
                stats::count(c);
                XDP_PASS
            }
            Outcome::Tx(c) => {
                stats::count(c);
                XDP_TX
            }
            Outcome::Redirect(action, c) => {
                stats::count(c);
                action
            }
            Outcome::Drop(r) => {
                stats::count_drop(r);
                XDP_DROP
            }
            Outcome::Counted(action) => action,
        }
    }
}
