//! The simulator's 4D-STEM pattern end to end: frames made as they are sent (no period), through the real
//! pipeline, every pixel of every frame checked against the pattern's formula, on a K2 IS and on a two-module
//! JUNGFRAU; and `ringdaq run --simulate --pattern`, whose flag overrides the configuration's
//! `[simulator] pattern`.

use std::time::Duration;

use detector::k2;
use detector::pattern::Pattern;
use detector::sim::SimConfig;
use ringdaq_tests::pipeline::{ExpectedFrames, Pipeline, SMALL_RINGS, verify_large_acquisition_of};
use ringdaq_tests::{ChildGuard, TempDir, ringdaq_run};
use shm_protocol::messages::SyncMode;

const STEM: Pattern = Pattern::Stem { seed: 3 };

#[test]
fn stem_frames_arrive_pixel_exact_across_the_scan_wrap() {
    let _g = ringdaq_tests::serial();
    let p = Pipeline::start("");
    let (id, path) = p.acquire(40, "stem.npy", SyncMode::Immediate);
    // Frame ids 4080..4120 cross the end of the 64 × 64 scan (4096), where the disk jumps back to the corner.
    let sim = p.simulate(SimConfig { pattern: STEM, first_frame_id: 4080, ..p.sim_config(44, 100.0) });
    assert_eq!(sim.frames, 44);
    let st = p.wait(id, Duration::from_secs(60));
    assert_eq!(st.state, "done", "{st:?}");
    verify_large_acquisition_of(&path, k2::IS, STEM, 40, 4080);
    // Not the counting pattern by accident: its frames differ.
    let counting = ExpectedFrames::new(k2::IS, Pattern::Counting);
    let stem = ExpectedFrames::new(k2::IS, STEM);
    assert_ne!(counting.frame(4080), stem.frame(4080));
}

#[test]
fn stem_frames_on_a_jungfrau_are_gain_0_and_pixel_exact() {
    let _g = ringdaq_tests::serial();
    let jf2 = detector::jungfrau::FORMATS[1];
    let p = Pipeline::start_with_rings(&format!("detector = \"jungfrau\"\nmodules = 2\n{SMALL_RINGS}"));
    let (id, path) = p.acquire(30, "jf-stem.npy", SyncMode::Immediate);
    let sim = p.simulate(SimConfig { mode: jf2, pattern: STEM, first_frame_id: 1, ..p.sim_config(34, 200.0) });
    assert_eq!(sim.frames, 34);
    let st = p.wait(id, Duration::from_secs(60));
    assert_eq!(st.state, "done", "{st:?}");
    verify_large_acquisition_of(&path, jf2, STEM, 30, 1);
    // Gain bits (the top two) 00 everywhere, values within 14 bits.
    let frame = ExpectedFrames::new(jf2, STEM).frame(5).into_owned();
    assert!(frame.iter().all(|&v| v <= 0x3FFF));
}

#[test]
fn run_simulate_takes_the_pattern_flag_over_the_configuration() {
    let _g = ringdaq_tests::serial();
    let dir = TempDir::new("stem-run").expect("temp dir");
    let cfg = dir.path().join("ringdaq.toml");
    std::fs::write(&cfg, "[simulator]\npattern = \"counting\"\n").expect("config");
    let out = dir.path().join("out");
    std::fs::create_dir_all(&out).expect("out dir");
    let mut child = ChildGuard::spawn(
        ringdaq_run(&dir.path().join("rt"), &cfg, &dir.path().join("log"))
            .args(["--simulate", "--pattern", "stem:3", "--frames", "30", "--fps", "100", "--out"])
            .arg(&out),
    )
    .expect("spawn");
    let st = child.wait_timeout(Duration::from_secs(120)).expect("wait").expect("ringdaq run exits after its frames");
    let log = std::fs::read_to_string(dir.path().join("log")).unwrap_or_default();
    assert!(st.success(), "{log}");
    let npy: Vec<_> = std::fs::read_dir(&out)
        .expect("out dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "npy"))
        .collect();
    assert_eq!(npy.len(), 1, "{npy:?}");
    verify_large_acquisition_of(&npy[0], k2::IS, STEM, 30, 0);
}
