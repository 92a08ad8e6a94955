//! The benchmark harness (`target/release/perf`, see BENCHMARKS.md) runs and reports what it was asked for.
//! (An integration test of this package, so that `cargo test --workspace` builds `perf` on a clean checkout.)
//! Timing is not checked here: only that each measurement runs to the end on real processes and that its
//! correctness checks (the decoded frames equal the pattern) hold.

use std::process::{Command, Stdio};
use std::time::Duration;

use ringdaq_tests::{ChildGuard, TempDir};

#[test]
fn perf_harness_measures_decode_and_an_idle_pipeline() {
    let dir = TempDir::new("perf").expect("temp dir");
    let (out, err) = (dir.path().join("out.md"), dir.path().join("err.log"));
    let mut perf = ChildGuard::spawn(
        // Cargo builds this package's binaries for its integration tests; `perf` finds `ringdaq` beside itself
        // (built for the supervisor's own integration tests).
        Command::new(env!("CARGO_BIN_EXE_perf"))
            .args(["--quick", "--only", "decode,idle", "--out"])
            .arg(dir.path())
            .env("TMPDIR", dir.path())
            .stdout(Stdio::from(std::fs::File::create(&out).expect("out file")))
            .stderr(Stdio::from(std::fs::File::create(&err).expect("err file"))),
    )
    .expect("perf runs");
    let status = perf.wait_timeout(Duration::from_secs(180)).expect("wait").expect("perf finishes within 3 min");
    let stdout = std::fs::read_to_string(&out).unwrap_or_default();
    let stderr = std::fs::read_to_string(&err).unwrap_or_default();
    assert!(status.success(), "perf failed:\n{stdout}\n{stderr}");
    assert!(stdout.starts_with("machine: "), "{stdout}");
    for row in ["| decode: whole IS frames", "| idle: CPU of all 4 processes"] {
        assert!(stdout.contains(row), "no {row:?} row in:\n{stdout}");
    }
    assert!(stdout.contains("supervisor") && stdout.contains("receiver"), "per-process idle figures:\n{stdout}");
}
