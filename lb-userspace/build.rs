//! Builds the product eBPF object (lb-ebpf: what the agent loads) and leaves
//! it at `$OUT_DIR/lb-ebpf` for `include_bytes!`; an empty stub without
//! bpf-linker (see lb-ebpf-embed). The bench object is benches' business.

fn main() -> anyhow::Result<()> {
    lb_ebpf_embed::build(lb_ebpf_embed::Object {
        package: "lb-ebpf",
        dir: "../lb-ebpf",
        watch: &["../lb-common"],
    })
}
