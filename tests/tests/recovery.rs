//! Crash recovery, through real processes: stages SIGKILLed at random moments, stopped with SIGSTOP (a hang),
//! failing at every start, killed in the instant after a receive; the supervisor itself killed.
//!
//! The tests of this file share the machine's two cores with real pipelines, so they run one at a time.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use detector::k2;
use ringdaq_tests::pipeline::{Pipeline, verify_large_acquisition};
use ringdaq_tests::{ChildGuard, TempDir, XorShift, bin_path, ringdaq_run, wait_for};
use rustix::process::{Pid, Signal};
use shm_protocol::messages::SyncMode;

const STAGES: [&str; 3] = ["receiver", "assembler", "writer"];

fn signal(pid: u32, sig: Signal) {
    let pid = Pid::from_raw(pid as i32).expect("pid");
    rustix::process::kill_process(pid, sig).expect("signal");
}

/// The chaos test: 2000 frames at 80 frames/s while a randomly chosen stage is SIGKILLed every 0.2 to
/// 0.8 s (at least 20 kills, every stage at least once). The file and its sidecar must be those of a run
/// without kills, which the simulator's formula gives: every frame complete, in order, pixel-exact.
#[test]
fn chaos_random_kills_of_every_stage_lose_no_frame() {
    let _g = ringdaq_tests::serial();
    const FRAMES: u64 = 2000;
    let seed = XorShift::seed_from_env();
    eprintln!("chaos seed {seed} (RINGDAQ_TEST_SEED={seed} replays the schedule)");
    let mut rng = XorShift::new(seed);
    // Receive buffers of 256 MiB a socket (about 3 s of this stream): the kills must not be what loses data, nor
    // a moment of slow disk on a busy test machine while the writer restarts.
    let p = Pipeline::start_with_rings(&format!(
        "recv_buffer_bytes = 268435456\n{}[supervisor]\nmax_restarts = 1000\n",
        ringdaq_tests::pipeline::SMALL_RINGS
    ));
    let (id, path) = p.acquire(FRAMES, "chaos.npy", SyncMode::Immediate);
    let sending = AtomicBool::new(true);
    let mut kills = [0u32; 3];
    std::thread::scope(|s| {
        let sim = s.spawn(|| {
            let r = p.simulate(p.sim_config(FRAMES + 10, 80.0));
            sending.store(false, Ordering::Relaxed);
            r
        });
        // Kill for as long as the stream runs; cycle through the stages in a random order so each is hit.
        let mut order = [0usize, 1, 2];
        let mut k = 0;
        std::thread::sleep(Duration::from_millis(300));
        while sending.load(Ordering::Relaxed) {
            if k % 3 == 0 {
                for i in (1..3).rev() {
                    order.swap(i, rng.range(0, i as u64 + 1) as usize);
                }
            }
            let st = order[k % 3];
            k += 1;
            if let Some(pid) = wait_for(Duration::from_secs(5), || Some(p.stage_pid(STAGES[st])).filter(|&p| p != 0)) {
                signal(pid, Signal::KILL);
                kills[st] += 1;
            }
            std::thread::sleep(Duration::from_millis(rng.range(200, 800)));
        }
        let report = sim.join().expect("simulator");
        assert_eq!(report.frames, FRAMES + 10, "the simulator sent every frame");
    });
    let total: u32 = kills.iter().sum();
    eprintln!("kills: receiver {}, assembler {}, writer {}", kills[0], kills[1], kills[2]);
    assert!(total >= 20, "only {total} kills happened");
    assert!(kills.iter().all(|&k| k > 0), "every stage killed: {kills:?}");
    let st = p.wait(id, Duration::from_secs(120));
    assert_eq!(st.state, "done", "{st:?}\n{}", p.log());
    let status = p.status();
    for (i, name) in STAGES.iter().enumerate() {
        let s = status.stages.iter().find(|s| s.name == *name).expect("stage");
        assert_eq!(s.restarts, kills[i], "{name} restarts");
        assert!(s.last_exit.as_deref().is_some_and(|e| e.contains("SIGKILL")), "{name}: {:?}", s.last_exit);
    }
    let counters = p.counters();
    assert_eq!(counters["receiver.kernel_drops"], 0, "no datagram dropped by the kernel");
    verify_large_acquisition(&path, k2::IS, FRAMES, 0);
    assert!(!path.with_extension("npy.frames.partial").exists(), "the journal is removed");
    assert!(p.shutdown());
}

/// A stage stopped with SIGSTOP while its input waits is a hang: the supervisor kills and replaces it, and the
/// acquisition completes with every frame. Each stage in turn.
#[test]
fn a_stopped_stage_is_detected_as_hung_and_replaced() {
    let _g = ringdaq_tests::serial();
    const FRAMES: u64 = 400;
    let p = Pipeline::start("[supervisor]\nhang_timeout_ms = 500\n");
    let (id, path) = p.acquire(FRAMES, "hang.npy", SyncMode::Immediate);
    std::thread::scope(|s| {
        let sim = s.spawn(|| p.simulate(p.sim_config(FRAMES + 10, 60.0)));
        for name in STAGES {
            std::thread::sleep(Duration::from_millis(1200));
            let pid = p.stage_pid(name);
            assert_ne!(pid, 0, "{name} runs");
            let t = Instant::now();
            signal(pid, Signal::STOP);
            let replaced = wait_for(Duration::from_secs(10), || {
                let now = p.stage_pid(name);
                (now != 0 && now != pid).then_some(())
            });
            assert!(replaced.is_some(), "stopped {name} was not replaced\n{}", p.log());
            eprintln!("{name}: stopped, replaced after {:?}", t.elapsed());
            assert!(!supervisor::daemon::process_alive(pid), "the stopped {name} ({pid}) was killed and reaped");
        }
        sim.join().expect("simulator");
    });
    let st = p.wait(id, Duration::from_secs(60));
    assert_eq!(st.state, "done", "{st:?}");
    let status = p.status();
    for name in STAGES {
        let s = status.stages.iter().find(|s| s.name == name).expect("stage");
        assert_eq!(s.restarts, 1, "{name}");
        assert!(s.last_exit.as_deref().is_some_and(|e| e.contains("hung")), "{name}: {:?}", s.last_exit);
    }
    verify_large_acquisition(&path, k2::IS, FRAMES, 0);
    assert!(p.shutdown());
}

/// A receiver killed in the instant after `recvmmsg` handed it datagrams, before it recorded them (fault
/// injection), three times: its successor adopts them from the region's receive journal, and every frame is
/// complete. Without the journal each kill loses up to a batch of datagrams.
#[test]
fn datagrams_taken_in_the_instant_of_a_receiver_crash_are_kept() {
    let _g = ringdaq_tests::serial();
    const FRAMES: u64 = 200;
    let p = Pipeline::start_with_env("", &[(receiver::FAULT_KILL_AFTER_CALLS, "150")]);
    let (id, path) = p.acquire(FRAMES, "instant.npy", SyncMode::Immediate);
    p.simulate(p.sim_config(FRAMES + 10, 100.0));
    let st = p.wait(id, Duration::from_secs(60));
    assert_eq!(st.state, "done", "{st:?}");
    let s = p.status().stages.into_iter().find(|s| s.name == "receiver").expect("receiver");
    assert_eq!(s.restarts, 3, "the fault kills the first three receivers\n{}", p.log());
    verify_large_acquisition(&path, k2::IS, FRAMES, 0);
    let adopted = p.log().matches("adopted the datagrams of the previous receiver's last call").count();
    assert_eq!(adopted, 3, "each successor adopted its predecessor's last call\n{}", p.log());
    assert!(p.shutdown());
}

/// A stage that dies at every start exhausts the restart budget: `ringdaq run` stops the pipeline, says which
/// stage failed and how, exits non-zero, and leaves no process behind.
#[test]
fn a_stage_that_always_dies_exhausts_the_budget() {
    let _g = ringdaq_tests::serial();
    let dir = TempDir::new("budget").expect("temp dir");
    // The real receiver and assembler, and a writer that exits with code 3 at once.
    let stages = dir.path().join("stages");
    std::fs::create_dir(&stages).expect("stage dir");
    for name in ["ringdaq-receiver", "ringdaq-assembler"] {
        std::os::unix::fs::symlink(bin_path(name), stages.join(name)).expect("symlink");
    }
    let broken = stages.join("ringdaq-writer");
    std::fs::write(&broken, "#!/bin/sh\necho 'writer: cannot start' >&2\nexit 3\n").expect("script");
    std::fs::set_permissions(&broken, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
    let cfg = dir.path().join("ringdaq.toml");
    std::fs::write(
        &cfg,
        format!("{}[supervisor]\nmax_restarts = 3\nrestart_window_s = 60\n", ringdaq_tests::pipeline::SMALL_RINGS),
    )
    .expect("config");
    let rt = dir.path().join("rt");
    let log = dir.path().join("ringdaq.log");
    let t = Instant::now();
    let mut child = ChildGuard::spawn(ringdaq_run(&rt, &cfg, &log).env("RINGDAQ_STAGE_DIR", &stages)).expect("spawn");
    let status = child.wait_timeout(Duration::from_secs(30)).expect("wait").expect("ringdaq run stops by itself");
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    eprintln!("stopped after {:?} with {status}", t.elapsed());
    assert!(!status.success(), "exit status non-zero:\n{text}");
    assert!(
        text.contains("the writer failed 4 times within 60 s (last: exited with code 3); stopping the pipeline"),
        "a message naming the stage and how it failed:\n{text}"
    );
    let left = ringdaq_tests::processes_mentioning(&rt.display().to_string());
    assert!(left.is_empty(), "processes left behind: {left:?}");
}

/// A supervisor killed with SIGKILL leaves its stages running (they wait for a successor), and `ringdaq run` in
/// the same runtime directory then adopts them (the same processes) and acquires.
#[test]
fn a_killed_supervisor_leaves_its_stages_to_a_new_run_that_adopts_them() {
    let _g = ringdaq_tests::serial();
    let mut p = Pipeline::start("");
    let pids: Vec<u32> = STAGES.iter().map(|n| p.stage_pid(n)).collect();
    assert!(pids.iter().all(|&pid| pid != 0));
    p.relaunch();
    let now: Vec<u32> = STAGES.iter().map(|n| p.stage_pid(n)).collect();
    assert_eq!(now, pids, "the new supervisor adopted the stages");
    let (id, path) = p.acquire(20, "after.npy", SyncMode::Immediate);
    p.simulate(p.sim_config(30, 100.0));
    let st = p.wait(id, Duration::from_secs(30));
    assert_eq!(st.state, "done", "{st:?}");
    verify_large_acquisition(&path, k2::IS, 20, 0);
    assert!(p.shutdown());
}
