//! Builds lb-ebpf and leaves its two objects in `$OUT_DIR` (empty stubs
//! without bpf-linker; see lb-ebpf-embed): `lb-ebpf`, the product object the
//! library embeds, and `lb-ebpf-bench`, which only the benchmarks and the
//! bench-program tests include. The benches find it through this package's
//! `links` metadata (`DEP_ONEHOP_EBPF_BENCH_OBJECT`), so one eBPF build serves
//! the workspace.

use std::{env, path::PathBuf};

use anyhow::Context as _;

fn main() -> anyhow::Result<()> {
    lb_ebpf_embed::build(lb_ebpf_embed::Package {
        name: "lb-ebpf",
        dir: "../lb-ebpf",
        watch: &["../lb-common"],
        objects: &["lb-ebpf", "lb-ebpf-bench"],
    })?;
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").context("OUT_DIR not set")?);
    println!(
        "cargo::metadata=bench_object={}",
        out_dir.join("lb-ebpf-bench").display()
    );
    Ok(())
}
