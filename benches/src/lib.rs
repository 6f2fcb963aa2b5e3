//! onehop benchmarks. The library holds the end-to-end harness shared by the `bench-e2e`
//! binary and its privileged test; `bench-xdp` is self-contained.

pub mod e2e;
