//! The bench object (never loaded by the agent): the product's XDP programs
//! built from the same library code, so `bench-xdp` can measure them as they
//! are, plus the programs that exist only to measure them: bench-xdp's
//! wrappers ([`bench`]) and bench-e2e's frame generator ([`xdpgen`]). Its
//! own maps come from `lb_common::bench_maps!`, the product's from the
//! library.
#![no_std]
#![no_main]
#![expect(
    clippy::inline_always,
    reason = "as in lb-ebpf: the wrappers inline the packet path they measure"
)]
#![expect(
    clippy::needless_pass_by_value,
    reason = "aya's entry-point macros hand each program its context by value"
)]

mod bench;
mod floor;
mod maps;
mod xdpgen;

use aya_ebpf::{macros::xdp, programs::XdpContext};

lb_ebpf::object_common!();

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

#[xdp]
pub fn bench_flow_floor(ctx: XdpContext) -> u32 {
    bench::flow_floor(&ctx)
}
