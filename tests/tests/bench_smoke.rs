//! The benchmark harness runs end to end on tiny counts, so it cannot rot.
use std::path::PathBuf;
use std::process::Command;

#[test]
fn the_benchmark_harness_runs_and_reports() {
    let bench = PathBuf::from(env!("CARGO_BIN_EXE_bench"));
    let aiproxy = bench.with_file_name("aiproxy");
    if !aiproxy.exists() {
        let status = Command::new(env!("CARGO"))
            .args(["build", "--bin", "aiproxy"])
            .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
            .status()
            .expect("cargo build");
        assert!(status.success());
    }
    let out = Command::new(&bench)
        .args(["--smoke", "--aiproxy"])
        .arg(&aiproxy)
        .output()
        .expect("run the benchmark");
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "bench failed:\n{report}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for table in [
        "### Latency at concurrency 1",
        "### Fixed request rates",
        "### Streaming",
        "### Memory of the relay process",
        "### Control plane",
    ] {
        assert!(report.contains(table), "missing {table}:\n{report}");
    }
    for arm in [
        "direct",
        "bare hyper proxy (floor)",
        "aiproxy all-in-one (memory)",
    ] {
        assert!(
            report.contains(&format!("| {arm} |")),
            "missing {arm}:\n{report}"
        );
    }
    assert!(
        !report.contains("| NO |"),
        "a stream was coalesced or cut:\n{report}"
    );
}
