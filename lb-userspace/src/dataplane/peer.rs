//! XDP pass-through for the far end of a veth.
//!
//! A veth only delivers frames that an XDP program sends back with
//! `XDP_TX` (or redirects) when the *peer* veth also has an XDP program
//! attached — any program, even one that passes everything. Namespace
//! tests, the demo, and anyone running onehop on a veth (containers, some
//! VM setups) attach this to the peer. Real NICs do not need it.

use anyhow::{Context as _, Result};
use aya::{
    Ebpf,
    programs::{Xdp, XdpMode},
};
use lb_common::maps::programs;

use crate::dataplane::object;

/// Keeps `xdp_pass` attached to one interface; detaches on drop.
pub struct PassThrough {
    _ebpf: Ebpf,
}

/// Attaches `xdp_pass` to `ifname` in the calling thread's network namespace.
pub fn attach(ifname: &str) -> Result<PassThrough> {
    let mut ebpf = Ebpf::load(object::object()?).context("loading the eBPF object")?;
    let prog: &mut Xdp = ebpf
        .program_mut(programs::PASS)
        .context("xdp_pass missing from the object")?
        .try_into()?;
    super::loader::verify(|| prog.load()).context("verifying xdp_pass")?;
    prog.attach(ifname, XdpMode::default())
        .with_context(|| format!("attaching xdp_pass to {ifname}"))?;
    Ok(PassThrough { _ebpf: ebpf })
}
