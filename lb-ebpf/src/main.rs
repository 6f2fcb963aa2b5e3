#![no_std]
#![no_main]

mod maps;

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};

#[xdp]
pub fn xdp_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

#[xdp]
pub fn lb_ingress(_ctx: XdpContext) -> u32 {
    if let Some(c) = maps::COUNTERS.get_ptr_mut(0) {
        // SAFETY: per-CPU slot, only this CPU writes it during this program.
        unsafe { *c += 1 };
    }
    xdp_action::XDP_PASS
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[aya_ebpf::macros::classifier]
pub fn lb_egress(_ctx: aya_ebpf::programs::TcContext) -> i32 {
    -1
}
