//! The embedded product object checked against lb-common's map table and
//! program list. The object is parsed, never loaded: no root needed.

use aya_obj::generated::bpf_map_type;
use lb_common::maps::{self, MapKind, programs};

#[test]
fn map_kinds_are_the_kernels_map_types() {
    for (kind, kernel) in [
        (MapKind::Hash, bpf_map_type::BPF_MAP_TYPE_HASH),
        (MapKind::Array, bpf_map_type::BPF_MAP_TYPE_ARRAY),
        (
            MapKind::PerCpuArray,
            bpf_map_type::BPF_MAP_TYPE_PERCPU_ARRAY,
        ),
        (MapKind::LruHash, bpf_map_type::BPF_MAP_TYPE_LRU_HASH),
        (MapKind::PerCpuHash, bpf_map_type::BPF_MAP_TYPE_PERCPU_HASH),
        (MapKind::LpmTrie, bpf_map_type::BPF_MAP_TYPE_LPM_TRIE),
        (MapKind::DevMap, bpf_map_type::BPF_MAP_TYPE_DEVMAP),
    ] {
        assert_eq!(kind as u32, kernel as u32, "{kind:?}");
    }
}

/// Every map of the table is in the object with its type, key and value
/// sizes and `max_entries`; no other map is; the programs are exactly the
/// product's.
#[test]
fn the_product_object_is_the_map_table_and_the_product_programs() {
    let object = lb_userspace::dataplane::object::object().expect("the embedded product object");
    let diff = lb_ebpf_embed::differences(object, &[&maps::TABLE], &programs::ALL)
        .expect("parsing the product object");
    assert!(diff.is_empty(), "{diff:#?}");
}

/// Every program's deepest BPF-to-BPF call chain fits the verifier's 512
/// bytes as the strictest kernels count it (each frame rounded up to 32
/// bytes, at least 32: Debian 12's 6.1). This machine's kernel counts 16-byte
/// steps and would load a program 6.1 refuses.
#[test]
fn every_call_chain_fits_the_stack_as_older_kernels_count_it() {
    use lb_ebpf_embed::stack::{self, MAX_STACK, Rounding};
    // The bench object too: the packet tests load it on every kernel.
    static BENCH: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-ebpf-bench"));
    let product = lb_userspace::dataplane::object::object().expect("the embedded product object");
    let mut programs = stack::programs(product).expect("reading the product object's functions");
    assert!(
        programs.iter().any(|p| p.name == "lb_ingress"),
        "{programs:?}"
    );
    assert!(
        !BENCH.is_empty(),
        "the bench object is an empty stub (bpf-linker missing?)"
    );
    programs.extend(stack::programs(BENCH).expect("reading the bench object's functions"));
    assert!(
        programs.iter().any(|p| p.name == "lb_ingress_bench"),
        "{programs:?}"
    );
    for p in &programs {
        for rounding in [Rounding::Interpreter, Rounding::Jit] {
            let (total, frames) = p.deepest(rounding);
            eprintln!(
                "{} ({rounding:?}): {total} bytes, frames {frames:?}",
                p.name
            );
            assert!(
                total <= MAX_STACK,
                "{}: a call chain of {total} stack bytes as {rounding:?} kernels count it (frames {frames:?})",
                p.name
            );
        }
    }
}
