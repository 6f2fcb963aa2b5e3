//! Privileged: `bench-xdp` runs end to end on a small scale, so every case's
//! proof of path (counters, action, output frame) holds on every run of the
//! suite, not only when someone benchmarks: a data-path change that sends a
//! case down another path, or a wrapper that stops restoring the frame,
//! fails here. The figures of so short a run mean nothing and are not read.

use std::process::Command;

#[test]
fn every_bench_xdp_case_takes_its_path_at_two_service_counts() {
    let out = std::env::temp_dir().join(format!("onehop-xdp-smoke-{}.txt", std::process::id()));
    let run = Command::new(env!("CARGO_BIN_EXE_bench-xdp"))
        .args(["--runs", "1", "--services", "6,200"])
        .args(["--repeat", "2000", "--repeat-new", "2000"])
        .arg("--out")
        .arg(&out)
        .output()
        .expect("running bench-xdp");
    let report = std::fs::read_to_string(&out).unwrap_or_default();
    let _ = std::fs::remove_file(&out);
    assert!(
        run.status.success(),
        "bench-xdp failed:\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    for case in [
        "non_vip_pass",
        "arp_reply",
        "new_flow_local",
        "new_flow_remote",
        "new_flow_direct",
        "new_flow_local_full_table",
        "syn_flood_refused",
        "flow_write_floor",
        "established_local",
        "established_remote",
        "established_direct",
        "non_vip6_pass",
        "new_flow_local6",
        "established_local6",
        "new_flow_direct6",
        "established_direct6",
        "new_flow_remote6",
        "established_remote6",
    ] {
        for n in [6, 200] {
            let line = format!("case={case} services={n} ns_per_pkt=");
            assert!(report.contains(&line), "no {line} in the report:\n{report}");
        }
    }
    assert!(
        report.contains("new_flow_local") && report.contains("/ flow_write_floor"),
        "no new-flow ratios to the entry-write floor in the report:\n{report}"
    );
}
