//! The product object: exactly the programs the agent loads, `lb_ingress`
//! (XDP on the uplink), `lb_egress` (TC egress on the uplink), `xdp_pass`
//! (the pass-through for veth peers) and `flow_sweep` (the sweeper's
//! conditional delete, never attached), and the maps they use. The
//! entry points are thin: the logic lives in the library's modules, and
//! every packet ends in exactly one counted outcome.
#![no_std]
#![no_main]
#![expect(
    clippy::needless_pass_by_value,
    reason = "aya's entry-point macros hand each program its context by value"
)]

use aya_ebpf::{
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};
use lb_ebpf::{egress, egress6, sweep};

lb_ebpf::object_common!();

#[classifier]
pub fn lb_egress(ctx: TcContext) -> i32 {
    egress::process(&ctx)
}

/// Tail-called by `lb_egress` for IPv6 packets (never attached).
#[classifier]
pub fn lb_egress6(ctx: TcContext) -> i32 {
    egress6::process(&ctx)
}

#[xdp]
pub fn flow_sweep(ctx: XdpContext) -> u32 {
    sweep::process(&ctx)
}
