//! The product object: exactly the programs the agent loads, `lb_ingress`
//! (XDP on the uplink), `lb_egress` (TC egress on the uplink) and
//! `xdp_pass` (the pass-through for veth peers), and the maps they use. The
//! entry points are thin: the logic lives in the library's modules, and
//! every packet ends in exactly one counted outcome.
#![no_std]
#![no_main]
#![expect(
    clippy::needless_pass_by_value,
    reason = "aya's entry-point macros hand each program its context by value"
)]

use aya_ebpf::{
    bindings::xdp_action,
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};
use lb_ebpf::{egress, ingress};

#[xdp]
pub fn xdp_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

#[xdp]
pub fn lb_ingress(ctx: XdpContext) -> u32 {
    ingress::process(&ctx)
}

#[classifier]
pub fn lb_egress(ctx: TcContext) -> i32 {
    egress::process(&ctx)
}

/// The kernel only lets GPL-compatible programs call `bpf_fib_lookup` (and
/// other helpers we use); the eBPF object is therefore offered under MIT or
/// GPL, which stays compatible with the project's MIT option.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
