//! The product eBPF object (lb-ebpf's `lb-ebpf` binary: only the programs
//! and maps the agent loads), compiled by build.rs and embedded in the
//! binary. The bench object sits beside it in `OUT_DIR` and is not embedded.

/// 8-byte aligned wrapper so the ELF parser can read the object in place.
#[repr(C, align(8))]
struct Aligned<T: ?Sized>(T);

static OBJECT: &Aligned<[u8]> = &Aligned(*include_bytes!(concat!(env!("OUT_DIR"), "/lb-ebpf")));

/// The embedded product object.
///
/// # Errors
/// When the crate was built without bpf-linker (`AYA_BUILD_SKIP=1` or the
/// linker missing), the object is empty and this says how to fix it.
pub fn object() -> anyhow::Result<&'static [u8]> {
    if OBJECT.0.is_empty() {
        anyhow::bail!(
            "this onehop binary was built without its eBPF object (bpf-linker missing or \
             AYA_BUILD_SKIP set); run `cargo xtask setup` and rebuild"
        );
    }
    Ok(&OBJECT.0)
}
