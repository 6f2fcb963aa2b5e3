//! The bench eBPF object (lb-ebpf's `lb-ebpf-bench` binary), built by
//! lb-userspace's build script and embedded here: the product's XDP programs
//! plus the benchmark wrappers and bench-e2e's frame generator
//! (`lb_common::bench`).

static OBJECT: &[u8] = aya::include_bytes_aligned!(env!("ONEHOP_BENCH_OBJECT"));

/// The embedded bench object.
///
/// # Errors
/// When the crate was built without bpf-linker (`AYA_BUILD_SKIP=1` or the
/// linker missing), the object is empty and this says how to fix it.
pub fn object() -> anyhow::Result<&'static [u8]> {
    if OBJECT.is_empty() {
        anyhow::bail!(
            "the benchmarks were built without their eBPF object (bpf-linker missing or \
             AYA_BUILD_SKIP set); run `cargo xtask setup` and rebuild"
        );
    }
    Ok(OBJECT)
}
