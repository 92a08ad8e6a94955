//! Every registered output format passes the conformance suite (`writer::conformance`).

use writer::conformance::{self, TempDir};
use writer::format;

#[test]
fn every_format_conforms() {
    for &f in format::registry() {
        let dir = TempDir::new(&format!("conformance-{}", f.name())).expect("temp dir");
        if let Err(e) = conformance::check_all(f, dir.path()) {
            panic!("{e}");
        }
    }
}

/// Re-runs this test binary as the child that is SIGKILLed (see `conformance::kill_at_every_step`): nothing
/// comes before the call, so that the child does nothing else.
#[test]
fn every_format_survives_sigkill_between_any_two_steps() {
    for &f in format::registry() {
        if let Err(e) = conformance::kill_at_every_step(f, "every_format_survives_sigkill_between_any_two_steps") {
            panic!("{e}");
        }
    }
}

#[test]
fn an_unknown_extension_is_a_clear_error() {
    let err = writer::temp_files(std::path::Path::new("/data/run.tiff")).expect_err("no format writes .tiff");
    assert_eq!(
        err.to_string(),
        "/data/run.tiff: no output format for extension \"tiff\"; known: .npy, .h5, .hdf5, .nxs"
    );
}
