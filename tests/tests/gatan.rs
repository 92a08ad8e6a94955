//! Gatan's raw K2 IS layout, end to end: `ringdaq record --format gatan` against a running pipeline, read back by
//! LiberTEM's `K2ISDataSet` and ncempy (python3, as users read such recordings), and `ringdaq sim --replay` of
//! the recording into a fresh pipeline; each compared pixel for pixel with the pipeline's own `.npy` files.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use detector::k2;
use ringdaq_tests::pipeline::{Acquired, Pipeline, SMALL_RINGS, verify_large_acquisition};
use ringdaq_tests::{ChildGuard, TempDir, bin_path, wait_for};
use shm_protocol::messages::SyncMode;

/// Frames per second sent to a recording pipeline.
const RATE: f64 = 50.0;

/// The recorder is a lossy reader of the block ring: a ring of 96 slots spans at least 480 ms of stream (slots
/// fill for up to 5 ms), so a recorder held up that long on a busy machine still misses nothing (32 slots, the
/// tests' usual ring, span 160 ms).
const RECORDING_RINGS: &str =
    "[rings]\nblock_slots = 96\ndatagrams_per_slot = 64\nframe_slots = 8\n[assembler]\ntimeout_ms = 500\n";

/// `ringdaq record --format gatan --out DIR/NAME ARGS` against `p`, its output in `DIR/NAME.log`; returns once
/// the recorder has opened its files (it reads the block ring from there on).
fn start_gatan_recording(p: &Pipeline, dir: &Path, name: &str, args: &[&str]) -> (ChildGuard, PathBuf) {
    let log = dir.join(format!("{name}.log"));
    let out = std::fs::File::create(&log).expect("recorder log");
    let recorder = ChildGuard::spawn(
        Command::new(bin_path("ringdaq"))
            .arg("--runtime-dir")
            .arg(p.runtime_dir())
            .args(["record", "--format", "gatan", "--seconds", "60", "--out"])
            .arg(dir.join(name))
            .args(args)
            .stdout(Stdio::from(out.try_clone().expect("log fd")))
            .stderr(Stdio::from(out)),
    )
    .expect("ringdaq record");
    let gtg = dir.join(format!("{name}.gtg"));
    assert!(wait_for(Duration::from_secs(10), || gtg.exists().then_some(())).is_some(), "the recorder started");
    (recorder, log)
}

/// Waits for the recorder to end; (whether it exited 0, what it printed).
fn finish_recording(mut recorder: ChildGuard, log: &Path) -> (bool, String) {
    let st = recorder.wait_timeout(Duration::from_secs(60)).expect("wait").expect("the recorder stops at its frames");
    (st.success(), std::fs::read_to_string(log).unwrap_or_default())
}

/// Runs a python3 script with arguments; its standard output (it must succeed).
fn python(script: &str, args: &[&Path]) -> String {
    let out = Command::new("python3").arg("-c").arg(script).args(args).output().expect("python3");
    assert!(out.status.success(), "python3 failed:\n{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Opens `gtg` with LiberTEM (inline executor) and compares its frames with the first frames of `npy`; prints
/// the dataset's shape, then `frame i equal` or `frame i differs` per frame, then ncempy's view of the tags.
const LIBERTEM_CHECK: &str = r#"
import sys, numpy as np
from libertem.api import Context
from libertem.executor.inline import InlineJobExecutor
from libertem.udf.raw import PickUDF
from ncempy.io import dm
gtg, npy = sys.argv[1], sys.argv[2]
ctx = Context(executor=InlineJobExecutor())
ds = ctx.load("k2is", path=gtg)
print("shape", tuple(int(x) for x in ds.shape))
n = int(np.prod(tuple(ds.shape.nav)))
res = ctx.run_udf(dataset=ds, udf=PickUDF(), roi=np.ones(tuple(ds.shape.nav), dtype=bool))
got = res["intensity"].raw_data.reshape(n, 1860, 2048)
want = np.load(npy, mmap_mode="r")
print("dtype", got.dtype)
for i in range(n):
    print("frame", i, "equal" if np.array_equal(got[i], want[i]) else "differs")
with dm.fileDM(gtg, on_memory=True) as f:
    for k in (".SI Dimensions.Size X", ".SI Dimensions.Size Y", ".ringdaq.Frames", ".ringdaq.Placeholder blocks"):
        v = f.allTags.get(k)
        print("tag", k, "=", None if v is None else int(v))
"#;

fn check_with_libertem(gtg: &Path, npy: &Path, frames: usize) -> String {
    let out = python(LIBERTEM_CHECK, &[gtg, npy]);
    assert!(out.contains("dtype uint16"), "{out}");
    for i in 0..frames {
        assert!(out.contains(&format!("frame {i} equal\n")), "frame {i}:\n{out}");
    }
    assert!(!out.contains(&format!("frame {frames} ")), "more frames than recorded:\n{out}");
    out
}

/// Replays the Gatan recording `gtg` into a fresh pipeline at 50 frames/s while it acquires `frames` frames;
/// returns the acquisition's file (in `keep`) and what the replay printed.
fn replay_into_fresh_pipeline(gtg: &Path, frames: u64, keep: &Path) -> (PathBuf, String) {
    let p = Pipeline::start("");
    let (id, path) = p.acquire(frames, "replayed.npy", SyncMode::Immediate);
    let out = p.replay_paced(gtg, &["--fps", "50"]);
    let st = p.wait(id, Duration::from_secs(60));
    assert_eq!(st.state, "done", "{st:?}");
    let kept = keep.join("replayed.npy");
    std::fs::copy(&path, &kept).expect("keep the file");
    std::fs::copy(writer::sidecar_path(&path), writer::sidecar_path(&kept)).expect("keep the sidecar");
    assert!(p.shutdown());
    (kept, out)
}

/// A 4×4 scan recorded in Gatan's layout reads in LiberTEM as a (4, 4, 1860, 2048) scan whose frames are the
/// pipeline's own, and replays into a fresh pipeline pixel-exact.
#[test]
fn a_scan_recorded_in_gatan_layout_reads_in_libertem_and_replays() {
    let _g = ringdaq_tests::serial();
    // The 16 frames of the scan and the one after it (LiberTEM reads the last scan frame only when one follows).
    const FRAMES: u64 = 17;
    let keep = TempDir::new("gatan-scan").expect("temp dir");
    let p = Pipeline::start_with_rings(RECORDING_RINGS);
    let (recorder, log) = start_gatan_recording(&p, keep.path(), "scan_", &["--scan", "4x4"]);
    let (id, npy) = p.acquire(FRAMES, "scan.npy", SyncMode::Immediate);
    let sent = p.simulate(p.sim_config(FRAMES, RATE));
    assert_eq!(sent.frames, FRAMES);
    let (ok, printed) = finish_recording(recorder, &log);
    assert!(ok, "{printed}");
    assert!(printed.contains("recorded 17 frames") && printed.contains(": 0 placeholder blocks"), "{printed}");
    assert_eq!(p.wait(id, Duration::from_secs(60)).state, "done");
    verify_large_acquisition(&npy, k2::IS, FRAMES, 0);

    let gtg = keep.path().join("scan_.gtg");
    for s in 1..=8 {
        let len = std::fs::metadata(keep.path().join(format!("scan_{s}.bin"))).expect("sector file").len();
        // 17 frames of 32 blocks; sector 1 starts with the lead-in block.
        assert_eq!(len, (17 * 32 + u64::from(s == 1)) * 0x5758, "sector {s}");
    }
    let out = check_with_libertem(&gtg, &npy, 16);
    assert!(out.contains("shape (4, 4, 1860, 2048)"), "{out}");
    for tag in ["Size X = 4", "Size Y = 4", "ringdaq.Frames = 17", "Placeholder blocks = 0"] {
        assert!(out.contains(tag), "{tag}:\n{out}");
    }
    assert!(p.shutdown());

    let (replayed, printed) = replay_into_fresh_pipeline(&keep.path().join("scan_3.bin"), FRAMES, keep.path());
    assert!(printed.contains("replayed 4352 datagrams (17 frames; 0 placeholder blocks not sent)"), "{printed}");
    verify_large_acquisition(&replayed, k2::IS, FRAMES, 0);
}

/// Blocks lost on the way are placeholders at their place, counted, and the recorder says the recording is
/// incomplete; LiberTEM reads the same pixels as the pipeline's file (missing blocks at the fill value), and a
/// replay does not send the placeholders, so a fresh pipeline gets the same frames again.
#[test]
fn lost_blocks_become_counted_placeholders() {
    let _g = ringdaq_tests::serial();
    const FRAMES: u64 = 12;
    let keep = TempDir::new("gatan-lossy").expect("temp dir");
    let p = Pipeline::start_with_rings(RECORDING_RINGS);
    let (recorder, log) = start_gatan_recording(&p, keep.path(), "lossy_", &["--frames", &FRAMES.to_string()]);
    let (id, npy) = p.acquire(FRAMES, "lossy.npy", SyncMode::Immediate);
    // A first frame whole (the recorder keeps a first frame only if whole: it may have started in its middle),
    // then frames that lose blocks.
    let first = p.simulate(p.sim_config(1, RATE));
    let lossy = p.simulate(detector::sim::SimConfig {
        first_frame_id: 1,
        drop: 0.004,
        seed: 7,
        ..p.sim_config(FRAMES - 1, RATE)
    });
    assert_eq!(first.dropped, 0);
    let lost: u64 = lossy.lossy_frames.values().map(|&(_, n)| u64::from(n)).sum();
    assert!(lost > 0 && lost == lossy.dropped, "{lossy:?}");
    let (ok, printed) = finish_recording(recorder, &log);
    assert!(!ok, "a recording with placeholders must not report success:\n{printed}");
    assert!(
        printed.contains(&format!(
            "recorded {FRAMES} frames to {}: {lost} placeholder blocks in {} frames",
            keep.path().join("lossy_.gtg").display(),
            lossy.lossy_frames.len()
        )),
        "{printed}"
    );
    assert!(printed.contains(&format!("the recording is incomplete: {lost} blocks did not arrive")), "{printed}");
    assert_eq!(p.wait(id, Duration::from_secs(60)).state, "done");
    let a = Acquired::read(&npy);
    assert_eq!(a.sidecar.complete_frames, FRAMES - lossy.lossy_frames.len() as u64);
    let gtg = keep.path().join("lossy_.gtg");
    let out = check_with_libertem(&gtg, &npy, FRAMES as usize);
    assert!(out.contains(&format!("shape ({FRAMES}, 1860, 2048)")), "a time series:\n{out}");
    assert!(out.contains(&format!("Placeholder blocks = {lost}")) && out.contains("Size X = None"), "{out}");
    assert!(p.shutdown());

    let (replayed, printed) = replay_into_fresh_pipeline(&gtg, FRAMES, keep.path());
    assert!(printed.contains(&format!("({FRAMES} frames; {lost} placeholder blocks not sent)")), "{printed}");
    let b = Acquired::read(&replayed);
    assert_eq!(b.shape, a.shape);
    for i in 0..FRAMES as usize {
        assert!(a.frame(i) == b.frame(i), "frame {i} differs after the replay");
    }
}

/// What cannot make a readable recording is refused before anything is written.
#[test]
fn unusable_names_are_refused() {
    let keep = TempDir::new("gatan-names").expect("temp dir");
    std::fs::write(keep.path().join("taken_1.bin"), b"").expect("a file in the way");
    for (name, why) in [("run7", "ends in a digit"), ("taken_", "exists already")] {
        let out = Command::new(bin_path("ringdaq"))
            .arg("--runtime-dir")
            .arg(keep.path().join("no-pipeline"))
            .args(["record", "--format", "gatan", "--frames", "1", "--out"])
            .arg(keep.path().join(name))
            .output()
            .expect("ringdaq record");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(why), "{name}: {err}");
    }
    assert!(!keep.path().join("run7.gtg").exists() && !keep.path().join("taken_.gtg").exists());
}

/// A detector whose stream is not a K2's is refused with a message that says why, and nothing is written.
#[test]
fn a_jungfrau_pipeline_is_refused() {
    let _g = ringdaq_tests::serial();
    let keep = TempDir::new("gatan-jf").expect("temp dir");
    let p = Pipeline::start_with_rings(&format!("detector = \"jungfrau\"\nmodules = 1\n{SMALL_RINGS}"));
    let (ok, _out, err) = p.cli(&[
        "record",
        "--format",
        "gatan",
        "--frames",
        "1",
        "--out",
        &keep.path().join("jf_").display().to_string(),
    ]);
    assert!(!ok && err.contains("the Gatan raw format holds K2 IS (and Summit) streams, not jungfrau-1"), "{err}");
    assert_eq!(std::fs::read_dir(keep.path()).expect("dir").count(), 0, "nothing written");
    assert!(p.shutdown());
}
