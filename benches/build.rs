//! Points `include_bytes!` at the bench eBPF object that lb-userspace's
//! build script builds (with the product object, in one run) and announces
//! through its `links` metadata. The agent's binary embeds only the product
//! object; the benchmarks embed this one.

use anyhow::Context as _;

fn main() -> anyhow::Result<()> {
    let object = std::env::var("DEP_ONEHOP_EBPF_BENCH_OBJECT")
        .context("lb-userspace's build script did not announce the bench object")?;
    println!("cargo:rerun-if-changed={object}");
    println!("cargo:rustc-env=ONEHOP_BENCH_OBJECT={object}");
    Ok(())
}
