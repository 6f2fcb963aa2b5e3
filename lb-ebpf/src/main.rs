//! onehop's data path: `lb_ingress` (XDP on the uplink), `lb_egress` (TC
//! egress on the uplink), `xdp_pass`, and the benchmark-only programs
//! (bench-xdp's wrappers, bench-e2e's frame generator `bench_xdpgen`). The
//! entry points are thin: the logic lives in modules named after what they
//! do, and every packet ends in exactly one counted outcome.
#![no_std]
#![no_main]

mod arp;
mod bench;
mod conntrack;
mod csum;
mod egress;
mod forward;
mod icmp;
mod ingress;
mod maps;
mod nat;
mod parse;
mod service;
mod stats;
mod verdict;
mod xdpgen;

use aya_ebpf::{
    bindings::xdp_action,
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};

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

#[xdp]
pub fn lb_ingress_bench(ctx: XdpContext) -> u32 {
    bench::ingress(&ctx)
}

#[xdp]
pub fn bench_restore_only(ctx: XdpContext) -> u32 {
    bench::restore_only(&ctx)
}

#[xdp]
pub fn bench_xdpgen(ctx: XdpContext) -> u32 {
    xdpgen::generate(&ctx)
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
