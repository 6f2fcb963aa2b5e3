//! The embedded bench object checked against lb-common's tables: the
//! product's maps and the bench's own, and exactly the bench's programs.
//! Parsed, never loaded: no root needed.

use lb_common::{bench, maps};

#[test]
fn the_bench_object_is_the_product_and_bench_map_tables_and_the_bench_programs() {
    let object = onehop_benches::ebpf::object().expect("the embedded bench object");
    let diff = lb_ebpf_embed::differences(
        object,
        &[&maps::TABLE, &bench::TABLE],
        &bench::programs::ALL,
    )
    .expect("parsing the bench object");
    assert!(diff.is_empty(), "{diff:#?}");
}

/// The comparison notices what it is there to notice: maps outside the
/// tables, a size that differs, programs too many and missing.
#[test]
fn the_object_check_reports_every_kind_of_difference() {
    let object = onehop_benches::ebpf::object().expect("the embedded bench object");
    let mut config = maps::TABLE;
    let row = config
        .iter_mut()
        .find(|s| s.name == maps::CONFIG)
        .expect("config in the table");
    row.max_entries = 2;
    let diff = lb_ebpf_embed::differences(object, &[&config], &["no_such_program"])
        .expect("parsing the bench object");
    // The config map's value is the datapath configuration, whatever size it grows to.
    let value = size_of::<lb_common::DatapathConfig>();
    for want in [
        &format!(
            "map config: (type, key size, value size, max_entries, flags) is (2, 4, {value}, 1, 0) \
             in the object, (2, 4, {value}, 2, 0) in the table"
        ),
        "map bench_scratch is in the object but in no table",
        "map xdpgen_ports is in the object but in no table",
        "program bench_xdpgen is in the object but not expected",
        "program no_such_program is missing from the object",
    ] {
        assert!(diff.iter().any(|d| d == want), "{want:?} not in {diff:#?}");
    }
    assert_eq!(
        diff.len(),
        bench::TABLE.len() + 1 + bench::programs::ALL.len() + 1,
        "{diff:#?}"
    );
}
