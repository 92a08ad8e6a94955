//! PSI's JUNGFRAU end to end, through real processes: two modules on two ports, sim → pipeline → `.npy`
//! pixel-exact; lost packets counted as missing blocks and filled; stages killed during an acquisition with no
//! frame lost; a flood of JUNGFRAU-shaped garbage counted under its reasons.
//!
//! The tests of this file share the machine's two cores with real pipelines, so they run one at a time.

use std::collections::BTreeMap;
use std::net::UdpSocket;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use detector::Format;
use detector::jungfrau::header::{HEADER_BYTES, SlsHeader};
use detector::jungfrau::{self, DATAGRAM_BYTES, PACKETS_PER_MODULE};
use detector::sim::SimConfig;
use ringdaq_tests::pipeline::{Acquired, Pipeline, SMALL_RINGS, expected_frames, verify_large_acquisition};
use ringdaq_tests::{XorShift, wait_for};
use rustix::process::{Pid, Signal};
use shm_protocol::consumer::{ConsumerError, Delivery, Subscription};
use shm_protocol::messages::SyncMode;

/// Two modules: 1024 × 1024 frames, 256 packets a frame, ports `port_base` and `port_base + 1`.
const JF2: Format = jungfrau::FORMATS[1];
/// The configuration keys that pick it.
const TWO_MODULES: &str = "detector = \"jungfrau\"\nmodules = 2\n";
/// A JUNGFRAU numbers its frames from 1.
const FIRST_FRAME: u32 = 1;

fn jf_sim(p: &Pipeline, frames: u64, fps: f64) -> SimConfig {
    SimConfig { mode: JF2, first_frame_id: FIRST_FRAME, ..p.sim_config(frames, fps) }
}

/// A two-module pipeline with top-level keys `top` and tables `tables` beside the small rings.
fn start(top: &str, tables: &str) -> Pipeline {
    let p = Pipeline::start_with_rings(&format!("{TWO_MODULES}{top}{SMALL_RINGS}{tables}"));
    let s = p.status();
    assert_eq!(s.mode, "jungfrau-2", "the configuration picked the format");
    p
}

#[test]
fn two_modules_end_to_end_pixel_exact() {
    let _g = ringdaq_tests::serial();
    const FRAMES: u64 = 300;
    let p = start("", "");
    // A lossless consumer sees the stacked frames, the same pixels as the file.
    let mut sub = Subscription::connect(&p.runtime_dir(), Delivery::Lossless).expect("subscribe");
    assert_eq!(sub.shape(), (1024, 1024));
    let (id, path) = p.acquire(FRAMES, "jf.npy", SyncMode::Immediate);
    let expected = expected_frames(JF2);
    let seen = std::thread::scope(|s| {
        let sim = s.spawn(|| p.simulate(jf_sim(&p, FRAMES + 10, 300.0)));
        let mut seen = 0u64;
        loop {
            match sub.next_frame(Some(Duration::from_secs(3))) {
                Ok(f) => {
                    let want = &expected[(f.frame_id() % detector::pattern::PATTERN_PERIOD) as usize];
                    assert!(f.pixels() == &want[..], "frame_id {}: the consumer's pixels", f.frame_id());
                    seen += 1;
                }
                Err(ConsumerError::Timeout) => break,
                Err(e) => panic!("consumer: {e}"),
            }
        }
        assert_eq!(sim.join().expect("simulator").frames, FRAMES + 10);
        seen
    });
    assert_eq!((seen, sub.missed()), (FRAMES + 10, 0), "the consumer got every frame");
    let st = p.wait(id, Duration::from_secs(60));
    assert_eq!(st.state, "done", "{st:?}");
    let sc = verify_large_acquisition(&path, JF2, FRAMES, FIRST_FRAME);
    assert_eq!((sc.frames, sc.complete_frames), (FRAMES, FRAMES));
    drop(sub);
    let c = p.counters();
    assert_eq!(c["assembler.blocks"] % JF2.blocks_per_frame() as u64, 0, "{c:?}");
    assert!(c.keys().any(|k| k == "assembler.invalid.detector_type"), "the format's reasons are counters");
    assert!(p.shutdown());
}

#[test]
fn lost_packets_are_missing_blocks_of_four_filled_rows() {
    let _g = ringdaq_tests::serial();
    const FRAMES: u64 = 120;
    let p = start("", "");
    let (id, path) = p.acquire(FRAMES, "jf-drops.npy", SyncMode::Immediate);
    let mut cfg = jf_sim(&p, FRAMES + 10, 200.0);
    (cfg.drop, cfg.seed) = (0.002, 11);
    let report = p.simulate(cfg);
    let st = p.wait(id, Duration::from_secs(60));
    assert_eq!(st.state, "done", "{st:?}");
    assert!(report.dropped > 0, "{report:?}");
    let a = Acquired::read(&path);
    assert_eq!(a.shape, [FRAMES, 1024, 1024]);
    let lost: BTreeMap<u32, u32> = report.lossy_frames.values().map(|&(fid, n)| (fid, n)).collect();
    let expected = expected_frames(JF2);
    let fill = 0u16;
    for m in &a.sidecar.frame_list {
        let want = &expected[(m.frame_id % detector::pattern::PATTERN_PERIOD) as usize];
        let got = a.frame(m.index as usize);
        let n = lost.get(&m.frame_id).copied().unwrap_or(0);
        assert_eq!((m.complete, m.missing_blocks), (n == 0, n), "frame_id {}", m.frame_id);
        // Packet by packet (4 rows of 1024): exact where it came, fill where it was lost.
        let mut missing = 0;
        for (b, (g, w)) in got.chunks_exact(4 * 1024).zip(want.chunks_exact(4 * 1024)).enumerate() {
            if g != w {
                assert!(g.iter().all(|&v| v == fill), "frame {} packet {b}: neither right nor fill", m.index);
                missing += 1;
            }
        }
        assert!(missing <= n, "frame {}: {missing} packets filled, {n} lost", m.index);
    }
    assert!(a.sidecar.incomplete_frames > 0);
    assert!(p.shutdown());
}

/// Chaos, short: stages SIGKILLed every 0.2–0.6 s while two modules stream at 80 frames/s; the file is the one
/// a run without kills makes.
#[test]
fn chaos_kills_during_a_jungfrau_acquisition_lose_no_frame() {
    let _g = ringdaq_tests::serial();
    const FRAMES: u64 = 800;
    const STAGES: [&str; 3] = ["receiver", "assembler", "writer"];
    let seed = XorShift::seed_from_env();
    eprintln!("chaos seed {seed} (RINGDAQ_TEST_SEED={seed} replays the schedule)");
    let mut rng = XorShift::new(seed);
    let p = start("recv_buffer_bytes = 268435456\n", "[supervisor]\nmax_restarts = 1000\n");
    let (id, path) = p.acquire(FRAMES, "jf-chaos.npy", SyncMode::Immediate);
    let sending = AtomicBool::new(true);
    let mut kills = [0u32; 3];
    std::thread::scope(|s| {
        let sim = s.spawn(|| {
            let r = p.simulate(jf_sim(&p, FRAMES + 10, 80.0));
            sending.store(false, Ordering::Relaxed);
            r
        });
        std::thread::sleep(Duration::from_millis(300));
        let mut k = 0;
        while sending.load(Ordering::Relaxed) {
            let st = k % 3;
            k += 1;
            if let Some(pid) = wait_for(Duration::from_secs(5), || Some(p.stage_pid(STAGES[st])).filter(|&p| p != 0)) {
                let pid = Pid::from_raw(pid as i32).expect("pid");
                rustix::process::kill_process(pid, Signal::KILL).expect("kill");
                kills[st] += 1;
            }
            std::thread::sleep(Duration::from_millis(rng.range(200, 600)));
        }
        assert_eq!(sim.join().expect("simulator").frames, FRAMES + 10);
    });
    eprintln!("kills: receiver {}, assembler {}, writer {}", kills[0], kills[1], kills[2]);
    assert!(kills.iter().all(|&k| k > 0), "every stage killed: {kills:?}");
    let st = p.wait(id, Duration::from_secs(120));
    assert_eq!(st.state, "done", "{st:?}\n{}", p.log());
    assert_eq!(p.counters()["receiver.kernel_drops"], 0, "no datagram dropped by the kernel");
    verify_large_acquisition(&path, JF2, FRAMES, FIRST_FRAME);
    assert!(p.shutdown());
}

/// The kinds of JUNGFRAU-shaped garbage, with the counter each must land in.
const KINDS: [(&str, &str); 6] = [
    ("shorter than a header", "assembler.invalid.truncated"),
    ("a cut payload", "assembler.invalid.length"),
    ("header version 1", "assembler.invalid.version"),
    ("an EIGER packet", "assembler.invalid.detector_type"),
    ("packet number 128 or more", "assembler.invalid.packet_number"),
    ("another module's packet", "assembler.invalid.module"),
];

/// One bad datagram of kind `k` for the module on `stream`: a valid packet of a frame id near the stream's, then
/// broken the one way.
fn bad_datagram(k: usize, stream: usize, rng: &mut XorShift) -> Vec<u8> {
    let mut d: Vec<u8> = (0..DATAGRAM_BYTES).map(|_| rng.next_u64() as u8).collect();
    let mut h = SlsHeader {
        frame_number: 5,
        packet_number: rng.range(0, PACKETS_PER_MODULE as u64) as u32,
        row: stream as u16,
        det_type: jungfrau::header::DET_TYPE_JUNGFRAU,
        version: jungfrau::header::VERSION,
        ..SlsHeader::default()
    };
    match k {
        0 => return d[..rng.range(1, HEADER_BYTES as u64) as usize].to_vec(),
        1 => d.truncate(rng.range(HEADER_BYTES as u64, DATAGRAM_BYTES as u64) as usize),
        2 => h.version = 1,
        3 => h.det_type = 1,
        4 => h.packet_number = rng.range(PACKETS_PER_MODULE as u64, u64::from(u32::MAX)) as u32,
        _ => h.row = (stream as u16 + 1) % 2,
    }
    let mut head = [0u8; HEADER_BYTES];
    h.write(&mut head);
    d[..HEADER_BYTES].copy_from_slice(&head);
    d
}

#[test]
fn a_flood_of_jungfrau_shaped_garbage_is_counted_by_reason() {
    let _g = ringdaq_tests::serial();
    const FRAMES: u64 = 100;
    let p = start("", "");
    let (id, path) = p.acquire(FRAMES, "jf-flood.npy", SyncMode::Immediate);
    let sending = AtomicBool::new(true);
    let mut sent = [0u64; KINDS.len()];
    std::thread::scope(|s| {
        let sim = s.spawn(|| {
            let r = p.simulate(jf_sim(&p, FRAMES + 10, 100.0));
            sending.store(false, Ordering::Relaxed);
            r
        });
        let tx = UdpSocket::bind("127.0.0.1:0").expect("socket");
        let mut rng = XorShift::new(19);
        let pool: Vec<Vec<Vec<u8>>> =
            (0..KINDS.len()).map(|k| (0..16).map(|i| bad_datagram(k, i % 2, &mut rng)).collect()).collect();
        let mut i = 0usize;
        while sending.load(Ordering::Relaxed) {
            let (k, j) = (i % KINDS.len(), i / KINDS.len() % 16);
            if tx.send_to(&pool[k][j], ("127.0.0.1", p.port_base + (j % 2) as u16)).is_ok() {
                sent[k] += 1;
            }
            i += 1;
            // A light flood: a few thousand a second beside the stream's 25 600 packets a second.
            if i.is_multiple_of(64) {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        sim.join().expect("simulator");
    });
    let st = p.wait(id, Duration::from_secs(60));
    assert_eq!(st.state, "done", "{st:?}");
    let c = wait_for(Duration::from_secs(10), || {
        let c = p.counters();
        let drops = c["receiver.kernel_drops"];
        KINDS.iter().enumerate().all(|(k, (_, n))| c[*n] + drops >= sent[k]).then_some(c)
    })
    .unwrap_or_else(|| p.counters());
    let counted: BTreeMap<&str, u64> = KINDS.iter().map(|(kind, counter)| (*kind, c[*counter])).collect();
    eprintln!("sent {sent:?}, counted {counted:?}, kernel drops {}", c["receiver.kernel_drops"]);
    let drops = c["receiver.kernel_drops"];
    for (k, (kind, counter)) in KINDS.iter().enumerate() {
        assert!(c[*counter] <= sent[k] && c[*counter] + drops >= sent[k], "{kind}: sent {}, {c:?}", sent[k]);
        assert!(c[*counter] > 0, "{kind} counted");
    }
    assert_eq!(c["assembler.invalid.out_of_window"] + c["assembler.invalid.oversized"], 0, "{c:?}");
    assert_eq!(c["assembler.resets"], 0);
    // The valid frames are exact, and at most the first pays for the flood.
    let a = Acquired::read(&path);
    let expected = expected_frames(JF2);
    for m in a.sidecar.frame_list.iter().filter(|m| m.complete) {
        let want = &expected[(m.frame_id % detector::pattern::PATTERN_PERIOD) as usize];
        assert!(a.frame(m.index as usize) == &want[..], "frame {} differs", m.index);
    }
    assert!(st.complete + 2 >= FRAMES || drops > 0, "{st:?}");
    assert!(p.shutdown());
}

/// A JUNGFRAU stream recorded from one pipeline (`ringdaq record`) and replayed into a fresh one (`ringdaq sim
/// --replay`) gives the frames the simulator made: record and replay know no detector.
#[test]
fn recorded_jungfrau_stream_replays_into_a_fresh_pipeline() {
    use ringdaq_tests::TempDir;
    let _g = ringdaq_tests::serial();
    const FRAMES: u64 = 40;
    let datagrams = FRAMES * 2 * PACKETS_PER_MODULE as u64;
    let keep = TempDir::new("jf-recording").expect("temp dir");
    let rec = keep.path().join("jf.rdq");
    let first = start("", "");
    let mut recorder = first.start_recording(datagrams, &rec);
    // The recorder copies from the block ring's next slot once it has opened its file.
    std::thread::sleep(Duration::from_millis(200));
    let sent = first.simulate(jf_sim(&first, FRAMES, 100.0));
    assert_eq!(sent.datagrams, datagrams);
    let st = recorder.wait_timeout(Duration::from_secs(30)).expect("wait").expect("the recorder stops at --datagrams");
    assert!(st.success(), "{st}");
    assert!(first.shutdown());

    let second = start("", "");
    let (id, path) = second.acquire(FRAMES, "jf-replayed.npy", SyncMode::Immediate);
    assert!(second.replay(&rec).contains(&format!("replayed {datagrams} datagrams")));
    let st = second.wait(id, Duration::from_secs(60));
    assert_eq!(st.state, "done", "{st:?}");
    verify_large_acquisition(&path, JF2, FRAMES, FIRST_FRAME);
    assert!(second.shutdown());
}
