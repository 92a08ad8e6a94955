//! The `ringdaq` command line refuses bad settings with a clear message.

use std::process::Command;

const RINGDAQ: &str = env!("CARGO_BIN_EXE_ringdaq");

#[test]
fn sim_refuses_a_probability_out_of_range() {
    let out = Command::new(RINGDAQ).args(["sim", "--drop", "2", "--frames", "1"]).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--drop 2 is not a probability"), "{err}");
}

#[test]
fn sim_refuses_an_unknown_mode() {
    let out = Command::new(RINGDAQ).args(["sim", "--mode", "foo"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown mode"));
}
