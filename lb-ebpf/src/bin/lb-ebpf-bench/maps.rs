//! The bench object's own maps, declared from `lb_common::bench_maps!`.

use aya_ebpf::btf_maps::{Array, DevMap, PerCpuArray};

lb_common::bench_maps!(lb_ebpf::declare_maps);
