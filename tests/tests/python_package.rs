//! The Python package (`python/`), built and tested as users get it: its extension module is compiled the way
//! maturin compiles it (`PYO3_BUILD_EXTENSION_MODULE=1`, release), laid out next to `ringdaq/__init__.py`, and
//! its pytest suite runs against real pipelines of this build's binaries.
//!
//! Needs python3 with numpy and pytest, and LiberTEM and LiberTEM-live for `ringdaq.libertem`'s tests
//! (`.ci/run` installs them).

use std::path::{Path, PathBuf};
use std::process::Command;

use ringdaq_tests::{TempDir, bin_path};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("repository root").to_path_buf()
}

/// Copies the package's sources, subpackages (`ringdaq.libertem`) included; no bytecode caches.
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("package dir");
    for entry in std::fs::read_dir(from).expect("package sources") {
        let p = entry.expect("entry").path();
        let name = p.file_name().expect("name");
        if p.is_dir() && name != "__pycache__" {
            copy_tree(&p, &to.join(name));
        } else if p.is_file() {
            std::fs::copy(&p, to.join(name)).expect("copy");
        }
    }
}

#[test]
fn the_python_package_reads_live_frames_zero_copy() {
    let python = repo().join("python");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let build = Command::new(cargo)
        .args(["build", "--release", "--quiet", "--manifest-path"])
        .arg(python.join("Cargo.toml"))
        .env("PYO3_BUILD_EXTENSION_MODULE", "1")
        .env("PYO3_PYTHON", "python3")
        .output()
        .expect("running cargo");
    assert!(build.status.success(), "building the extension module:\n{}", String::from_utf8_lossy(&build.stderr));
    // The package as pip installs it: the Python sources plus the extension module inside.
    let site = TempDir::new("pyringdaq").expect("temp dir");
    let pkg = site.path().join("ringdaq");
    copy_tree(&python.join("ringdaq"), &pkg);
    std::fs::copy(python.join("target/release/lib_ringdaq.so"), pkg.join("_ringdaq.so")).expect("extension module");
    let bin_dir = bin_path("ringdaq").parent().expect("bin dir").to_path_buf();
    let out = Command::new("python3")
        .args(["-m", "pytest", "-q", "-p", "no:cacheprovider"])
        .arg(python.join("tests"))
        .env("PYTHONPATH", site.path())
        .env("RINGDAQ_BIN_DIR", &bin_dir)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .expect("running python3 -m pytest (is pytest installed?)");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    eprintln!("{text}");
    assert!(out.status.success(), "the Python tests failed:\n{text}");
    assert!(text.contains(" passed"), "pytest ran no test:\n{text}");
}
