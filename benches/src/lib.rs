//! onehop benchmarks. The library holds the end-to-end harness shared by the `bench-e2e`
//! binary and its privileged test, and the bench eBPF object both binaries load; `bench-xdp`
//! is otherwise self-contained.

pub mod e2e;
pub mod ebpf;
