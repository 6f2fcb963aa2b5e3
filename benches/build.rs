//! Builds the bench eBPF object (lb-ebpf-bench) and leaves it at
//! `$OUT_DIR/lb-ebpf-bench` for `include_bytes!`, so the benchmarks carry
//! their programs and the agent's binary does not; an empty stub without
//! bpf-linker (see lb-ebpf-embed).

fn main() -> anyhow::Result<()> {
    lb_ebpf_embed::build(lb_ebpf_embed::Object {
        package: "lb-ebpf-bench",
        dir: "ebpf",
        watch: &["../lb-ebpf", "../lb-common"],
    })
}
