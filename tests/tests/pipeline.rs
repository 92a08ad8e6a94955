//! The pipeline end to end, through real processes on loopback: `ringdaq run`, its three stage processes, the
//! simulator, real files read back with npyz and numpy.
//!
//! The tests of this file share the machine's two cores, so they run one at a time.

use std::collections::BTreeMap;
use std::net::UdpSocket;
use std::process::Command;
use std::time::Duration;

use detector::k2;
use detector::k2::geometry::HEADER_BYTES;
use ringdaq_tests::pipeline::{Acquired, Pipeline, expected_frames};
use shm_protocol::messages::SyncMode;

/// Every frame of `a` whose sidecar says complete equals the simulator's frame for its frame_id.
fn assert_complete_frames_exact(a: &Acquired, expected: &[Vec<u16>]) {
    for m in &a.sidecar.frame_list {
        if m.complete {
            let want = &expected[(m.frame_id % detector::pattern::PATTERN_PERIOD) as usize];
            assert!(
                a.frame(m.index as usize) == &want[..],
                "frame {} (frame_id {}) differs from the formula",
                m.index,
                m.frame_id
            );
        }
    }
}

#[test]
fn every_pixel_of_every_frame_end_to_end_and_numpy_reads_it() {
    let _g = ringdaq_tests::serial();
    let p = Pipeline::start("");
    let (id, path) = p.acquire(200, "run.npy", SyncMode::Immediate);
    let sim = p.simulate(p.sim_config(210, 100.0));
    let st = p.wait(id, Duration::from_secs(60));
    assert_eq!(st.state, "done", "{st:?}");
    assert_eq!(sim.datagrams, 210 * 256);

    let a = Acquired::read(&path);
    assert_eq!(a.shape, vec![200, 1860, 2048]);
    assert_eq!(a.sidecar.frames, 200);
    assert_eq!(a.sidecar.complete_frames, 200, "every frame complete at 100 frames/s on loopback");
    let expected = expected_frames(k2::IS);
    for (i, m) in a.sidecar.frame_list.iter().enumerate() {
        assert_eq!(m.index, i as u64);
        assert_eq!(m.frame_id, i as u32, "frame 0 is the simulator's first frame, sent after arming");
        assert!(m.first_block_ns > 0 && m.last_block_ns >= m.first_block_ns && m.published_ns >= m.last_block_ns);
    }
    assert_complete_frames_exact(&a, &expected);

    // numpy, independently: shape, dtype, and the pixels of one frame per pattern variant, recomputed with the
    // documented formula in numpy.
    let script = r#"
import sys, numpy as np
a = np.load(sys.argv[1], mmap_mode="r")
assert a.shape == (200, 1860, 2048), a.shape
assert a.dtype == np.dtype("<u2"), a.dtype
r = np.arange(1860, dtype=np.uint64)[:, None]
c = np.arange(2048, dtype=np.uint64)[None, :]
def splitmix(z):
    with np.errstate(over="ignore"):
        z = z + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))
for i in [0, 1, 2, 3, 4, 5, 6, 7, 137, 199]:
    key = (np.uint64(i % 8) << np.uint64(32)) | (r << np.uint64(16)) | c
    want = (splitmix(key) & np.uint64(0xFFF)).astype(np.uint16)
    assert np.array_equal(a[i], want), f"frame {i} differs"
print("numpy ok")
"#;
    let out = Command::new("python3").arg("-c").arg(script).arg(&path).output().expect("python3");
    assert!(
        out.status.success(),
        "numpy check failed (numpy is installed by .ci/run):\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(p.shutdown(), "clean shutdown");
}

#[test]
fn faults_mark_exactly_the_frames_that_lost_blocks() {
    let _g = ringdaq_tests::serial();
    let p = Pipeline::start("");
    let (id, path) = p.acquire(150, "faults.npy", SyncMode::Immediate);
    let mut cfg = p.sim_config(160, 150.0);
    cfg.drop = 0.002;
    cfg.duplicate = 0.01;
    cfg.reorder = 16;
    cfg.seed = 7;
    let sim = p.simulate(cfg);
    let st = p.wait(id, Duration::from_secs(60));
    assert_eq!(st.state, "done");
    assert!(sim.dropped > 0 && sim.duplicated > 0, "{sim:?}");

    let a = Acquired::read(&path);
    let lost: BTreeMap<u32, u32> = sim.lossy_frames.values().map(|&(fid, n)| (fid, n)).collect();
    for m in &a.sidecar.frame_list {
        match lost.get(&m.frame_id) {
            Some(&n) => {
                assert!(!m.complete, "frame_id {} lost {n} blocks but is marked complete", m.frame_id);
                assert_eq!(m.missing_blocks, n, "frame_id {}", m.frame_id);
            }
            None => assert!(m.complete, "frame_id {} lost nothing but is marked incomplete", m.frame_id),
        }
    }
    assert!(a.sidecar.incomplete_frames > 0);
    assert_complete_frames_exact(&a, &expected_frames(k2::IS));
    // Incomplete frames: the blocks that came are exact, the missing ones hold the fill value (0).
    let g = k2::IS_GEOMETRY;
    let expected = expected_frames(k2::IS);
    for m in a.sidecar.frame_list.iter().filter(|m| !m.complete) {
        let f = a.frame(m.index as usize);
        let want = &expected[(m.frame_id % 8) as usize];
        let wrong = f.iter().zip(want.iter()).filter(|(x, y)| x != y && **x != 0).count();
        assert_eq!(wrong, 0, "frame {}: pixels that are neither right nor fill", m.index);
        let filled = f.iter().zip(want.iter()).filter(|(x, y)| x != y).count();
        assert!(filled <= m.missing_blocks as usize * g.block_width() * g.block_height());
    }
    let c = p.counters();
    assert_eq!(c["assembler.duplicates"], sim.duplicated, "every duplicate counted");
    assert_eq!(c["assembler.late"], 0);
    assert!(p.shutdown());
}

#[test]
fn back_to_back_acquisitions_start_within_a_few_frames() {
    let _g = ringdaq_tests::serial();
    let p = Pipeline::start("");
    let stop = std::sync::atomic::AtomicBool::new(false);
    let cfg = p.sim_config(0, 100.0); // until stopped
    let sim = detector::sim::Simulator::new(cfg).unwrap();
    std::thread::scope(|s| {
        let h = s.spawn(|| sim.run(&stop));
        std::thread::sleep(Duration::from_millis(200));
        let (id1, path1) = p.acquire(40, "first.npy", SyncMode::Immediate);
        // Arm the next one the moment the first has all its frames (while its file is still being finished).
        p.wait_assigned(id1, 40, Duration::from_secs(30));
        let armed_ns = shm_protocol::pipeline::now_ns();
        let (id2, path2) = p.acquire(40, "second.npy", SyncMode::Immediate);
        let s1 = p.wait(id1, Duration::from_secs(30));
        let s2 = p.wait(id2, Duration::from_secs(30));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        h.join().unwrap().unwrap();
        assert_eq!((s1.state.as_str(), s2.state.as_str()), ("done", "done"));
        let a1 = Acquired::read(&path1);
        let a2 = Acquired::read(&path2);
        let last1 = a1.sidecar.frame_list.last().unwrap().frame_id;
        let first2 = &a2.sidecar.frame_list[0];
        assert!(first2.frame_id > last1, "second acquisition starts after the first");
        // Frame 0 is the first frame whose first block arrives after arming: within a frame period (10 ms) of
        // arming, plus scheduling; "a few frames" is 4 periods.
        let delay_ms = first2.first_block_ns.saturating_sub(armed_ns) as f64 / 1e6;
        assert!(delay_ms < 40.0, "second acquisition's frame 0 arrived {delay_ms:.1} ms after arming");
        for a in [&a1, &a2] {
            assert_eq!(a.sidecar.frames, 40);
            assert_eq!(a.sidecar.complete_frames, 40);
            let ids: Vec<u32> = a.sidecar.frame_list.iter().map(|m| m.frame_id).collect();
            assert!(ids.windows(2).all(|w| w[1] == w[0] + 1), "consecutive frames");
            assert_complete_frames_exact(a, &expected_frames(k2::IS));
        }
    });
    assert!(p.shutdown());
}

#[test]
fn garbage_is_counted_by_reason_and_valid_frames_stay_exact() {
    let _g = ringdaq_tests::serial();
    let p = Pipeline::start("");
    let (id, path) = p.acquire(60, "garbage.npy", SyncMode::Immediate);
    // Garbage of known kinds, straight to the sockets, while valid frames flow.
    let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
    let g = k2::IS_GEOMETRY;
    let mut valid_header = [0u8; HEADER_BYTES];
    detector::k2::header::BlockHeader::for_block(&g, 5, 0, 0, 0, 0).encode(&mut valid_header);
    let short = vec![0xAAu8; 20];
    let oversized = vec![0u8; 30_000];
    // An IS-sized datagram whose header describes a Summit block (wrong mode).
    let mut summit = vec![0u8; g.block_bytes()];
    let mut h = [0u8; HEADER_BYTES];
    detector::k2::header::BlockHeader::for_block(&k2::SUMMIT_GEOMETRY, 5, 0, 0, 0, 0).encode(&mut h);
    summit[..HEADER_BYTES].copy_from_slice(&h);
    let mut far = vec![0u8; g.block_bytes()];
    detector::k2::header::BlockHeader::for_block(&g, 3_000_000, 0, 0, 0, 0).encode(&mut valid_header);
    far[..HEADER_BYTES].copy_from_slice(&valid_header);
    let mut cfg = p.sim_config(70, 100.0);
    cfg.corrupt = 0.005;
    cfg.seed = 3;
    let sim = std::thread::scope(|s| {
        let h = s.spawn(|| p.simulate(cfg));
        for i in 0..10u16 {
            let port = p.port_base + i % 8;
            tx.send_to(&short, ("127.0.0.1", port)).unwrap();
            tx.send_to(&oversized, ("127.0.0.1", port)).unwrap();
            tx.send_to(&summit, ("127.0.0.1", port)).unwrap();
            std::thread::sleep(Duration::from_millis(20));
        }
        // A few valid-looking blocks of a frame id far outside the window (fewer than a reset needs).
        for i in 0..5u16 {
            tx.send_to(&far, ("127.0.0.1", p.port_base + i)).unwrap();
        }
        h.join().unwrap()
    });
    let st = p.wait(id, Duration::from_secs(60));
    assert_eq!(st.state, "done");
    // The out-of-window candidate is counted once it expires (4 × the 500 ms frame timeout).
    let c = ringdaq_tests::wait_for(Duration::from_secs(10), || {
        Some(p.counters()).filter(|c| c["assembler.invalid.out_of_window"] >= 5)
    })
    .unwrap_or_else(|| p.counters());
    assert_eq!(c["assembler.invalid.truncated"], 10, "{c:?}");
    assert_eq!(c["assembler.invalid.block_size"], 10, "Summit headers: {c:?}");
    // 30,000-byte datagrams do not fit the receive buffers (block size + 64 bytes): the kernel truncates them and
    // the receiver flags them.
    assert_eq!(c["assembler.invalid.oversized"], 10, "{c:?}");
    assert_eq!(c["receiver.truncated"], 10, "{c:?}");
    let corrupt_seen =
        c["assembler.invalid.sync_word"] + c["assembler.invalid.length"] + c["assembler.invalid.position"];
    assert_eq!(corrupt_seen, sim.corrupted, "each corrupted datagram counted under its reason: {c:?}");
    assert_eq!(c["assembler.invalid.out_of_window"], 5, "{c:?}");
    let a = Acquired::read(&path);
    assert_complete_frames_exact(&a, &expected_frames(k2::IS));
    let lost: BTreeMap<u32, u32> = sim.lossy_frames.values().map(|&(fid, n)| (fid, n)).collect();
    for m in &a.sidecar.frame_list {
        assert_eq!(m.complete, !lost.contains_key(&m.frame_id), "frame_id {}", m.frame_id);
    }
    assert!(p.shutdown());
}

#[test]
fn sync_flag_and_frame_id_reset() {
    let _g = ringdaq_tests::serial();
    let p = Pipeline::start("");
    let (id, path) = p.acquire(40, "flag.npy", SyncMode::Flag);
    let mut cfg = p.sim_config(60, 150.0);
    cfg.first_frame_id = 1000;
    cfg.sync_at = Some(10);
    cfg.reset_at = Some(30); // frame ids 1000..1030, then 1000 again
    p.simulate(cfg);
    let st = p.wait(id, Duration::from_secs(60));
    assert_eq!(st.state, "done");
    let a = Acquired::read(&path);
    let ids: Vec<u32> = a.sidecar.frame_list.iter().map(|m| m.frame_id).collect();
    let want: Vec<u32> = (1010..1030).chain(1000..1020).collect();
    assert_eq!(ids, want, "frame 0 is the first with the sync flag; the reset is followed");
    assert_eq!(a.sidecar.complete_frames, 40);
    assert_complete_frames_exact(&a, &expected_frames(k2::IS));
    assert_eq!(p.counters()["assembler.resets"], 1);
    assert!(p.shutdown());
}

#[test]
fn stop_finishes_a_short_file_and_bad_requests_are_refused() {
    let _g = ringdaq_tests::serial();
    let p = Pipeline::start("");
    // Refused with a reason, pipeline unaffected.
    let rel = p.call(shm_protocol::messages::Request::Acquire {
        frames: 5,
        path: "relative.npy".into(),
        sync: SyncMode::Immediate,
        compression: Default::default(),
    });
    assert!(rel.unwrap_err().to_string().contains("absolute"));
    let (id, path) = p.acquire(1000, "stopped.npy", SyncMode::Immediate);
    let again = p.call(shm_protocol::messages::Request::Acquire {
        frames: 5,
        path: p.dir.path().join("x.npy").display().to_string(),
        sync: SyncMode::Immediate,
        compression: Default::default(),
    });
    assert!(again.unwrap_err().to_string().contains("still running"));
    p.simulate(p.sim_config(30, 100.0));
    // Stop once the 30 frames sent are in (the last one is published when its timeout passes).
    p.wait_assigned(id, 30, Duration::from_secs(10));
    assert!(matches!(p.call(shm_protocol::messages::Request::Stop), Ok(shm_protocol::messages::Reply::Ok)));
    let st = p.wait(id, Duration::from_secs(30));
    assert_eq!(st.state, "done");
    let a = Acquired::read(&path);
    assert_eq!(a.shape[0], 30, "the header says how many frames came");
    assert_eq!(a.sidecar.frames, 30);
    assert_eq!(a.sidecar.frames_requested, 1000);
    assert_eq!(std::fs::metadata(&path).unwrap().len(), 4096 + 30 * 1860 * 2048 * 2);
    assert_complete_frames_exact(&a, &expected_frames(k2::IS));
    assert!(p.shutdown());
}
