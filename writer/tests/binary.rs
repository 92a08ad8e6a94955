//! The `ringdaq-writer` binary: without a supervisor to attach to, it fails at once with a clear message
//! (and, because this file exists, `cargo test --workspace` builds the binary the pipeline tests run).

use std::process::Command;

#[test]
fn without_a_supervisor_it_exits_with_a_clear_error() {
    let sock = std::env::temp_dir().join(format!("ringdaq-no-supervisor-{}.sock", std::process::id()));
    let out = Command::new(env!("CARGO_BIN_EXE_ringdaq-writer")).arg("--control").arg(&sock).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("attaching to the pipeline at") && err.contains(&sock.display().to_string()), "{err}");
}
