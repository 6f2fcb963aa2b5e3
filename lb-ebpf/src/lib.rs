//! onehop's data path as a library: one module per concern, shared by the
//! crate's two objects (one binary each), the product object
//! (`src/bin/lb-ebpf.rs`: exactly what the agent loads) and the bench object
//! (`src/bin/lb-ebpf-bench/`: the benchmark wrappers and frame generator,
//! with the product's XDP programs they measure). The product's maps are
//! declared once, in [`maps`], from lb-common's table.
//!
//! Public are the entry points' logic ([`ingress`], [`egress`]), the packet
//! cursor and headers ([`parse`]), checksum deltas ([`csum`]), the flow
//! table ([`flowtable`]) and the maps: what the bench object builds on. The rest stays inside the crate.
#![no_std]
#![feature(core_intrinsics)]
#![expect(
    internal_features,
    reason = "64-bit compare-and-swap on map values (conntrack::take_over): \
              core::sync::atomic offers none on this target"
)]
#![expect(
    clippy::inline_always,
    reason = "BPF-to-BPF calls cost instructions and the verifier follows packet \
              pointers poorly across them: every step of the packet path is inlined on purpose"
)]

mod arp;
mod conntrack;
pub mod csum;
pub mod egress;
pub mod egress6;
mod family;
pub mod flowtable;
mod forward;
mod fragment;
mod guard;
mod icmp;
mod icmp6_error;
mod icmp_error;
pub mod ingress;
pub mod ingress6;
mod local;
pub mod maps;
mod nat;
pub mod nat6;
mod ndp;
pub mod parse;
mod partial;
mod quote;
mod service;
pub mod service6;
mod stats;
pub mod sweep;
mod verdict;

/// What both objects of this crate carry: the XDP programs they share
/// (`xdp_pass`, the pass-through that lets `XDP_TX` deliver on a veth peer,
/// `lb_ingress`, `lb_ingress6`, `lb_service6` and `lb_nat6`), the licence,
/// and the panic handler. Invoke it once at the root of each binary.
#[macro_export]
macro_rules! object_common {
    () => {
        #[aya_ebpf::macros::xdp]
        pub fn xdp_pass(_ctx: aya_ebpf::programs::XdpContext) -> u32 {
            aya_ebpf::bindings::xdp_action::XDP_PASS
        }

        #[aya_ebpf::macros::xdp]
        pub fn lb_ingress(ctx: aya_ebpf::programs::XdpContext) -> u32 {
            $crate::ingress::process(&ctx)
        }

        /// Tail-called by `lb_ingress` for IPv6 frames whose next header is
        /// ICMPv6 (never attached).
        #[aya_ebpf::macros::xdp]
        pub fn lb_ingress6(ctx: aya_ebpf::programs::XdpContext) -> u32 {
            $crate::ingress6::process(&ctx)
        }

        /// Tail-called by `lb_ingress` for a packet to an IPv6 service
        /// (never attached).
        #[aya_ebpf::macros::xdp]
        pub fn lb_service6(ctx: aya_ebpf::programs::XdpContext) -> u32 {
            $crate::service6::process(&ctx)
        }

        /// Tail-called by `lb_service6` and `lb_ingress` for full NAT over
        /// IPv6 (never attached).
        #[aya_ebpf::macros::xdp]
        pub fn lb_nat6(ctx: aya_ebpf::programs::XdpContext) -> u32 {
            $crate::nat6::process(&ctx)
        }

        /// The kernel only lets GPL-compatible programs call
        /// `bpf_fib_lookup` (and other helpers we use); the eBPF objects are
        /// therefore offered under MIT or GPL, which stays compatible with
        /// the project's MIT option.
        #[unsafe(link_section = "license")]
        #[unsafe(no_mangle)]
        static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

        #[cfg(not(test))]
        #[panic_handler]
        fn panic(_info: &core::panic::PanicInfo) -> ! {
            loop {}
        }
    };
}
