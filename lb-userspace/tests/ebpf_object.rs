//! The embedded product object checked against lb-common's map table and
//! program list. The object is parsed, never loaded: no root needed.

use std::collections::BTreeSet;

use aya_obj::{Object, generated::bpf_map_type};
use lb_common::maps::{self, MapKind, programs};

fn product() -> Object {
    let bytes = lb_userspace::ebpf::object().expect("the embedded product object");
    Object::parse(bytes).expect("parsing the product object")
}

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
        (MapKind::LpmTrie, bpf_map_type::BPF_MAP_TYPE_LPM_TRIE),
        (MapKind::DevMap, bpf_map_type::BPF_MAP_TYPE_DEVMAP),
    ] {
        assert_eq!(kind as u32, kernel as u32, "{kind:?}");
    }
}

#[test]
fn every_map_of_the_table_is_in_the_object_as_declared() {
    let obj = product();
    for spec in maps::TABLE {
        let map = obj
            .maps
            .get(spec.name)
            .unwrap_or_else(|| panic!("map {} is not in the product object", spec.name));
        let found = (
            map.map_type(),
            map.key_size(),
            map.value_size(),
            map.max_entries(),
        );
        let want = (
            spec.kind as u32,
            spec.key_size,
            spec.value_size,
            spec.max_entries,
        );
        assert_eq!(
            found, want,
            "{}: (type, key size, value size, max_entries) in the object vs the table",
            spec.name
        );
    }
}

#[test]
fn the_object_has_no_map_outside_the_table() {
    let obj = product();
    let table: BTreeSet<&str> = maps::TABLE.iter().map(|s| s.name).collect();
    let extra: Vec<&String> = obj
        .maps
        .keys()
        .filter(|name| !table.contains(name.as_str()))
        .collect();
    assert!(extra.is_empty(), "maps not in the table: {extra:?}");
    assert_eq!(table.len(), maps::TABLE.len(), "a name twice in the table");
}

#[test]
fn the_object_has_exactly_the_product_programs() {
    let obj = product();
    let found: BTreeSet<&str> = obj.programs.keys().map(String::as_str).collect();
    let want: BTreeSet<&str> = programs::ALL.into_iter().collect();
    assert_eq!(found, want);
}
