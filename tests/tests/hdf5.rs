//! `.h5` output end to end, through real processes, read back with h5py + hdf5plugin (`hdf5_check.py`):
//! the same stream as `.npy` and as `.h5` (both compressions) is pixel-equal, with its metadata; a file being
//! written is readable; the writer SIGKILLed again and again loses nothing; continuous `.h5` and `bslz4` for
//! `.npy` are refused when armed.
//!
//! The tests of this file share the machine's two cores with real pipelines, so they run one at a time.

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use ringdaq_tests::pipeline::Pipeline;
use ringdaq_tests::{XorShift, wait_for};
use shm_protocol::messages::{Compression, EndReason, SyncMode};

/// Runs `hdf5_check.py ARGS`; its stdout, or a panic with what it printed.
fn h5check(args: &[&str]) -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/hdf5_check.py");
    let out = Command::new("python3").arg(&script).args(args).output().expect("python3");
    assert!(
        out.status.success(),
        "hdf5_check.py {args:?} failed (h5py and hdf5plugin are installed by .ci/run):\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

#[test]
fn the_same_stream_as_npy_and_as_h5_is_pixel_equal_through_h5py() {
    let _g = ringdaq_tests::serial();
    let p = Pipeline::start("");
    let mut paths = Vec::new();
    for (name, c) in [("run.npy", Compression::None), ("none.h5", Compression::None), ("bslz4.h5", Compression::Bslz4)]
    {
        let (id, path) = p.acquire_compressed(24, name, SyncMode::Immediate, c);
        p.simulate(p.sim_config(30, 100.0));
        let st = p.wait(id, Duration::from_secs(60));
        assert_eq!(st.state, "done", "{name}: {st:?}\n{}", p.log());
        assert_eq!(st.written, 24);
        assert!(
            !writer::temp_files(&path).expect("known").iter().any(|t| t.exists()),
            "{name}: no temporary file left"
        );
        paths.push(path);
    }
    // The writer's own reader agrees with numpy's view of the .npy.
    let npy = writer::format::npy::Npy;
    let h5 = writer::format::hdf5::Hdf5;
    use writer::format::OutputFormat;
    let want = npy.read(&paths[0]).expect("npy");
    for path in &paths[1..] {
        assert_eq!(h5.read(path).expect("h5"), want, "{}", path.display());
    }
    h5check(&["compare", s(&paths[0]), s(&paths[1]), s(&paths[2])]);
    h5check(&["formula", s(&paths[2])]);
    let c = p.counters();
    assert!(c["writer.compressed_bytes"] > 0 && c["writer.compress_cpu_ns"] > 0, "{c:?}");
    // The simulator's random 12-bit pixels compress only a little (16 bits stored → about 12 and LZ4's share).
    assert!(c["writer.compressed_bytes"] < 24 * 1860 * 2048 * 2, "{c:?}");
    // Compression's CPU and output are in /metrics, as counters and as rates.
    let metrics = supervisor::metrics::render(&p.status());
    for m in ["ringdaq_writer_compress_cpu_ns_total", "ringdaq_writer_compressed_bytes_total", "ringdaq_compress_cores"]
    {
        assert!(metrics.contains(m), "{m} in /metrics:\n{metrics}");
    }
    assert!(p.shutdown());
}

#[test]
fn h5py_reads_the_frames_written_while_the_acquisition_runs() {
    let _g = ringdaq_tests::serial();
    let p = Pipeline::start("");
    let (id, path) = p.acquire(200, "live.h5", SyncMode::Immediate);
    let partial = writer::temp_files(&path).expect("known")[0].clone();
    let sending = AtomicBool::new(true);
    std::thread::scope(|sc| {
        let sim = sc.spawn(|| {
            let r = p.simulate(p.sim_config(210, 25.0));
            sending.store(false, Ordering::Relaxed);
            r
        });
        // Once some frames are written, h5py opens the file being written and reads them all.
        let some = wait_for(Duration::from_secs(30), || p.acquisition(id).filter(|st| st.written >= 10));
        assert!(some.is_some(), "10 frames written\n{}", p.log());
        let n: u64 = h5check(&["live", s(&partial), "10"]).trim().parse().expect("frames_written");
        let st = p.acquisition(id).expect("acquisition status");
        assert!(sending.load(Ordering::Relaxed) && st.state != "done", "read while written: {st:?}");
        assert!((10..200).contains(&n), "{n} frames read while written");
        sim.join().expect("simulator");
    });
    let st = p.wait(id, Duration::from_secs(60));
    assert_eq!(st.state, "done", "{st:?}");
    h5check(&["formula", s(&path)]);
    assert!(p.shutdown());
}

/// The writer SIGKILLed every 0.15 to 0.6 s during an `.h5` acquisition, for each compression: the finished
/// file is that of a run without kills (every frame complete, in order, equal to the simulator's formula) and
/// h5py opens it.
#[test]
fn writer_chaos_on_h5_loses_nothing() {
    let _g = ringdaq_tests::serial();
    let seed = XorShift::seed_from_env();
    eprintln!("chaos seed {seed} (RINGDAQ_TEST_SEED={seed} replays the schedule)");
    let mut rng = XorShift::new(seed);
    const FRAMES: u64 = 150;
    let p = Pipeline::start_with_rings(&format!(
        "recv_buffer_bytes = 268435456\n{}[supervisor]\nmax_restarts = 1000\n",
        ringdaq_tests::pipeline::SMALL_RINGS
    ));
    for (name, c) in [("chaos-none.h5", Compression::None), ("chaos-bslz4.h5", Compression::Bslz4)] {
        let (id, path) = p.acquire_compressed(FRAMES, name, SyncMode::Immediate, c);
        let sending = AtomicBool::new(true);
        let mut kills = 0;
        std::thread::scope(|sc| {
            let sim = sc.spawn(|| {
                let r = p.simulate(p.sim_config(FRAMES + 10, 40.0));
                sending.store(false, Ordering::Relaxed);
                r
            });
            std::thread::sleep(Duration::from_millis(200));
            while sending.load(Ordering::Relaxed) {
                if let Some(pid) = wait_for(Duration::from_secs(5), || Some(p.stage_pid("writer")).filter(|&p| p != 0))
                {
                    let pid = rustix::process::Pid::from_raw(pid as i32).expect("pid");
                    let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
                    kills += 1;
                }
                std::thread::sleep(Duration::from_millis(rng.range(150, 600)));
            }
            sim.join().expect("simulator");
        });
        eprintln!("{name}: writer killed {kills} times");
        assert!(kills >= 5, "only {kills} kills");
        let st = p.wait(id, Duration::from_secs(120));
        assert_eq!(st.state, "done", "{name}: {st:?}\n{}", p.log());
        assert_eq!(p.counters()["receiver.kernel_drops"], 0, "no datagram dropped by the kernel");
        h5check(&["formula", s(&path)]);
        assert!(
            !writer::temp_files(&path).expect("known").iter().any(|t| t.exists()),
            "{name}: no temporary file left"
        );
    }
    assert!(p.shutdown());
}

#[test]
fn continuous_h5_and_compressed_npy_are_refused_when_armed() {
    let _g = ringdaq_tests::serial();
    let p = Pipeline::start("");
    let (ok, _, err) = p.cli(&["acquire", "--out", s(&p.dir.path().join("c.h5"))]);
    assert!(!ok && err.contains("give --frames"), "{err}");
    let out = p.dir.path().join("c.npy");
    let (ok, _, err) = p.cli(&["acquire", "--frames", "5", "--compression", "bslz4", "--out", s(&out)]);
    assert!(!ok && err.contains("cannot be stored with compression bslz4"), "{err}");
    assert!(
        std::fs::read_dir(p.dir.path())
            .expect("dir")
            .flatten()
            .all(|e| !e.file_name().to_string_lossy().starts_with("c."))
    );
    assert!(p.shutdown());
}

/// A full disk fails an `.h5` acquisition as `disk_full`, not the pipeline, for each compression: without
/// compression the frames had their space reserved and are kept readable (h5py); with bslz4 the chunks that no
/// longer fit fail it.
#[test]
fn a_full_disk_fails_an_h5_acquisition_not_the_pipeline() {
    let _g = ringdaq_tests::serial();
    let small = ringdaq_tests::TempDir::new("smallfs-h5").expect("temp dir");
    let mnt = small.path().join("small");
    let Some(_fs) = ringdaq_tests::SmallFs::mount_or_skip(&mnt, "64m") else { return };
    let p = Pipeline::start("");
    for (name, c, frames, fps) in [("six.h5", Compression::None, 6, 4.0), ("three.h5", Compression::Bslz4, 3, 1.0)] {
        let path = mnt.join(name);
        // An absolute path: the pipeline's directory joined with it is the path.
        let (id, _) = p.acquire_compressed(frames, s(&path), SyncMode::Immediate, c);
        std::thread::scope(|sc| {
            let sim = sc.spawn(|| p.simulate(p.sim_config(frames + 10, fps)));
            // Once the writer has its files and a frame is written, another process takes what is left.
            let started = wait_for(Duration::from_secs(20), || p.acquisition(id).filter(|st| st.written >= 1));
            assert!(started.is_some(), "{name}: a frame written\n{}", p.log());
            ringdaq_tests::fill(&mnt);
            sim.join().expect("simulator");
        });
        let st = p.wait(id, Duration::from_secs(30));
        assert_eq!(st.state, "failed", "{name}: {st:?}");
        let err = st.error.clone().unwrap_or_default();
        assert!(err.contains("No space left on device"), "{name}: {err}");
        // Whether the disk filled before the last frame came or only at the finish, the acquisition did not end
        // complete: it ended for the full disk.
        assert_eq!(st.ended, Some(EndReason::DiskFull), "{st:?}");
        if c == Compression::None {
            assert!(err.contains("the first 6 frames are kept in") && err.contains("six.h5.partial"), "{err}");
            let kept = p.dir.path().join("kept.h5");
            std::fs::copy(writer::temp_files(&path).expect("known")[0].clone(), &kept).expect("copy out");
            assert_eq!(h5check(&["live", s(&kept), "6"]).trim(), "6", "the 6 frames kept, exact");
        }
        for f in std::fs::read_dir(&mnt).expect("dir").flatten() {
            let _ = std::fs::remove_file(f.path());
        }
    }
    // The pipeline goes on.
    let (id, path) = p.acquire(10, "after.h5", SyncMode::Immediate);
    p.simulate(p.sim_config(20, 100.0));
    assert_eq!(p.wait(id, Duration::from_secs(30)).state, "done");
    h5check(&["formula", s(&path)]);
    assert!(p.shutdown());
}
