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
