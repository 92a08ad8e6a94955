//! Scale-out: several pipelines share one detector, each taking some of its sectors (`--sectors`), on one port
//! base; each writes its part of every frame with the part's placement; the parts put side by side are the
//! frames the detector sent, and `ringdaq stitch` presents them as whole frames (an HDF5 virtual dataset) that
//! h5py reads (`stitch_check.py`).
//!
//! The tests of this file run real pipelines on the machine's two cores, so they run one at a time.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use detector::k2;
use ringdaq_tests::pipeline::{Acquired, Pipeline, expected_frames};
use ringdaq_tests::{bin_path, free_udp_port_base};
use shm_protocol::messages::{Compression, SyncMode};

/// Frames each part acquires.
const FRAMES: u64 = 12;
/// The simulator's first frame id, and the frame from which it sets the sync flag.
const FIRST_ID: u32 = 500;
const SYNC_AT: u64 = 4;

/// The columns `cols` of every row of `frame` (rows × `width` pixels).
fn columns(frame: &[u16], width: usize, cols: std::ops::Range<usize>) -> Vec<u16> {
    frame.chunks_exact(width).flat_map(|row| row[cols.clone()].iter().copied()).collect()
}

/// Two pipelines on one port base, sectors 0-3 and 4-7, one simulator stream to all 8 ports; both arm an
/// acquisition that starts at the sync flag, so both hold the same frames. Each part is its half of the columns
/// of the frames sent, complete, and its sidecar says where it lies.
#[test]
fn two_pipelines_take_half_a_k2_each() {
    let _g = ringdaq_tests::serial();
    let port_base = free_udp_port_base(8);
    let left = Pipeline::start_on_ports(port_base, "sectors = \"0-3\"\n");
    let right = Pipeline::start_on_ports(port_base, "sectors = [4, 5, 6, 7]\n");
    let (id_l, path_l) = left.acquire(FRAMES, "left.npy", SyncMode::Flag);
    let (id_r, path_r) = right.acquire(FRAMES, "right.npy", SyncMode::Flag);
    let mut sim = left.sim_config(FRAMES + SYNC_AT + 4, 100.0);
    sim.first_frame_id = FIRST_ID;
    sim.sync_at = Some(SYNC_AT);
    left.simulate(sim);
    let (st_l, st_r) = (left.wait(id_l, Duration::from_secs(60)), right.wait(id_r, Duration::from_secs(60)));
    assert_eq!((st_l.state.as_str(), st_r.state.as_str()), ("done", "done"), "{st_l:?} {st_r:?}");
    let expected = expected_frames(k2::IS);
    let (rows, width) = (k2::IS.rows(), k2::IS.cols());
    for (path, half, first_col) in [(&path_l, 0usize, 0u64), (&path_r, 1, 1024)] {
        let a = Acquired::read(path);
        assert_eq!(a.shape, [FRAMES, rows as u64, 1024], "{}", path.display());
        assert_eq!(a.sidecar.complete_frames, FRAMES, "only the part's blocks make a frame complete");
        for (i, m) in a.sidecar.frame_list.iter().enumerate() {
            let id = FIRST_ID + SYNC_AT as u32 + i as u32;
            assert_eq!(m.frame_id, id, "frame {i} of {}", path.display());
            let v = (id % detector::pattern::PATTERN_PERIOD) as usize;
            let want = columns(&expected[v], width, half * 1024..(half + 1) * 1024);
            assert!(
                a.frame(i) == want.as_slice(),
                "frame {i} of {} differs from its columns of the sent frame",
                path.display()
            );
        }
        let p = a.sidecar.placement.expect("the sidecar records the placement");
        assert_eq!((p.full_shape, p.detector_streams), ([rows as u64, width as u64], 8));
        assert_eq!(p.streams, (half as u32 * 4..half as u32 * 4 + 4).collect::<Vec<_>>());
        assert_eq!(p.rects, [[0, 0, 0, first_col, rows as u64, 1024]]);
    }
    assert_eq!((left.status().mode, right.status().mode), ("is sectors 0-3".into(), "is sectors 4-7".into()));
    // Each bound only its own four ports: no datagram of the other half reached it.
    for p in [&left, &right] {
        let c = p.counters();
        assert_eq!(c["assembler.invalid.geometry"], 0, "no datagram of another sector was taken");
    }
    assert!(left.shutdown());
    assert!(right.shutdown());
}

/// JUNGFRAU: two pipelines take one module each of a two-module detector (modules are stacked, so each part
/// is 512 rows of the 1024); each part is its module's rows of the frames sent, complete.
#[test]
fn two_pipelines_take_a_jungfrau_module_each() {
    let _g = ringdaq_tests::serial();
    let jf2 = detector::jungfrau::FORMATS[1];
    let port_base = free_udp_port_base(8);
    let top = Pipeline::start_on_ports(port_base, "detector = \"jungfrau\"\nmodules = 2\nsectors = \"0\"\n");
    let bottom = Pipeline::start_on_ports(port_base, "detector = \"jungfrau\"\nmodules = 2\nsectors = [1]\n");
    // A JUNGFRAU has no sync flag: both parts, armed before it sends, start at its first frame.
    let (id_t, path_t) = top.acquire(FRAMES, "top.npy", SyncMode::Flag);
    let (id_b, path_b) = bottom.acquire(FRAMES, "bottom.npy", SyncMode::Flag);
    let sim = detector::sim::SimConfig { mode: jf2, first_frame_id: 1, ..top.sim_config(FRAMES, 200.0) };
    top.simulate(sim);
    let expected = expected_frames(jf2);
    for (p, id, path, module) in [(&top, id_t, &path_t, 0usize), (&bottom, id_b, &path_b, 1)] {
        let st = p.wait(id, Duration::from_secs(60));
        assert_eq!(st.state, "done", "{st:?}\n{}", p.log());
        let a = Acquired::read(path);
        assert_eq!((a.shape.clone(), a.sidecar.complete_frames), (vec![FRAMES, 512, 1024], FRAMES));
        for (i, m) in a.sidecar.frame_list.iter().enumerate() {
            let v = (m.frame_id % detector::pattern::PATTERN_PERIOD) as usize;
            let rows = &expected[v][module * 512 * 1024..(module + 1) * 512 * 1024];
            assert!(a.frame(i) == rows, "frame {i} of module {module} differs from its rows of the frame sent");
        }
        let pl = a.sidecar.placement.expect("placement");
        assert_eq!(pl.rects, [[0, 0, 512 * module as u64, 0, 512, 1024]]);
    }
    assert!(top.shutdown());
    assert!(bottom.shutdown());
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// The same two halves, written as `.h5` (one uncompressed, one bitshuffle-LZ4), stitched: h5py reads the
/// stitched dataset as the whole frames sent, from another working directory (the parts are named relative to
/// the stitched file), and each part as its placement's rectangles of them.
#[test]
fn two_h5_halves_stitch_into_the_frames_sent() {
    let _g = ringdaq_tests::serial();
    let port_base = free_udp_port_base(8);
    let left = Pipeline::start_on_ports(port_base, "sectors = \"0-3\"\n");
    let right = Pipeline::start_on_ports(port_base, "sectors = \"4-7\"\n");
    let (id_l, path_l) = left.acquire_compressed(FRAMES, "left.h5", SyncMode::Flag, Compression::None);
    let (id_r, path_r) = right.acquire_compressed(FRAMES, "right.h5", SyncMode::Flag, Compression::Bslz4);
    let mut sim = left.sim_config(FRAMES + SYNC_AT + 4, 100.0);
    sim.first_frame_id = FIRST_ID;
    sim.sync_at = Some(SYNC_AT);
    left.simulate(sim);
    for (p, id) in [(&left, id_l), (&right, id_r)] {
        let st = p.wait(id, Duration::from_secs(60));
        assert_eq!(st.state, "done", "{st:?}\n{}", p.log());
    }
    let out_dir = ringdaq_tests::TempDir::new("stitched").expect("temp dir");
    let whole = out_dir.path().join("whole.h5");
    let run = Command::new(bin_path("ringdaq"))
        .args(["stitch", "--out", s(&whole), s(&path_l), s(&path_r)])
        .output()
        .expect("ringdaq stitch");
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    assert!(String::from_utf8_lossy(&run.stdout).contains(&format!("{FRAMES} frames of 1860×2048 from 2 parts")));
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/stitch_check.py");
    let first = (FIRST_ID + SYNC_AT as u32).to_string();
    let check = Command::new("python3")
        .arg(&script)
        .args(["stitched", s(&whole), &first, &FRAMES.to_string(), s(&path_l), s(&path_r)])
        .current_dir("/")
        .output()
        .expect("python3");
    assert!(
        check.status.success(),
        "stitch_check.py failed (h5py and hdf5plugin are installed by .ci/run):\n{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    // Stitching one half alone is refused: the other sectors are in no part.
    let half = Command::new(bin_path("ringdaq"))
        .args(["stitch", "--out", s(&out_dir.path().join("half.h5")), s(&path_l)])
        .output()
        .expect("ringdaq stitch");
    let err = String::from_utf8_lossy(&half.stderr);
    assert!(!half.status.success() && err.contains("sectors 4,5,6,7 are in no part"), "{err}");
    assert!(left.shutdown());
    assert!(right.shutdown());
}

/// `--sectors` that the detector does not have are refused before anything is created, with the reason.
#[test]
fn sectors_the_detector_lacks_are_refused() {
    let dir = ringdaq_tests::TempDir::new("sectors").expect("temp dir");
    for (args, why) in [
        (vec!["--sectors", "4-8"], "sector 8 does not exist: is has sectors 0-7"),
        (vec!["--sectors", "3-1"], "runs backwards"),
        (vec!["--sectors", "x"], "is not a list of sectors"),
        (vec!["--detector", "jungfrau", "--modules", "2", "--sectors", "2"], "jungfrau-2 has sectors 0-1"),
    ] {
        let out = std::process::Command::new(bin_path("ringdaq"))
            .arg("--runtime-dir")
            .arg(dir.path().join("rt"))
            .args(["run", "--port-base", &free_udp_port_base(8).to_string()])
            .args(&args)
            .output()
            .expect("ringdaq run");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(why), "{args:?}: {err}");
    }
}
