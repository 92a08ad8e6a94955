//! The README's workflows run as a script runs them: each command right after the one before, no pauses.
//! `detach`, `attach`, `restart` and `stop` answer once their change is done, so the command that follows finds
//! the pipeline as it expects; `acquire` refuses up front what cannot succeed; an acquisition that gets no frame
//! leaves no file.
//!
//! The tests of this file share the machine's two cores with real pipelines, so they run one at a time.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use detector::k2;
use detector::sim::Simulator;
use ringdaq_tests::pipeline::{Pipeline, verify_large_acquisition};
use ringdaq_tests::{ChildGuard, TempDir, wait_for};
use shm_protocol::messages::SyncMode;

/// Starts the command line `detach` printed, its log to `log`.
fn run_by_hand(command: &str, log: &Path) -> ChildGuard {
    let mut words = command.split_whitespace();
    let program = words.next().expect("program");
    ChildGuard::spawn(
        Command::new(program)
            .args(words)
            .stdout(Stdio::null())
            .stderr(Stdio::from(std::fs::File::create(log).expect("log"))),
    )
    .expect("hand-run stage")
}

fn alive(pid: u32) -> bool {
    supervisor::daemon::process_alive(pid)
}

/// The script, 20 times: `cmd=$(ringdaq detach assembler | tail -1); $cmd &`, an acquisition at once,
/// `ringdaq attach assembler`. The supervised assembler has exited when `detach` returns, the hand-run one is
/// the only one, and every acquisition is pixel-exact.
#[test]
fn detach_run_by_hand_acquire_attach_20_times_without_pauses() {
    let _g = ringdaq_tests::serial();
    const FRAMES: u64 = 3;
    let p = Pipeline::start("");
    for round in 0..20 {
        let supervised = p.stage_pid("assembler");
        let (ok, command, err) = p.cli(&["detach", "assembler"]);
        assert!(ok, "round {round}: {err}");
        assert!(err.contains("its process has exited"), "{err}");
        assert!(
            !alive(supervised),
            "round {round}: the supervised assembler {supervised} exited before detach returned"
        );
        let log = p.dir.path().join(format!("hand-run-{round}.log"));
        let mut hand = run_by_hand(command.trim(), &log);
        let name = format!("round-{round}.npy");
        let (id, path) = p.acquire(FRAMES, &name, SyncMode::Immediate);
        p.simulate(p.sim_config(FRAMES + 3, 50.0));
        let st = p.wait(id, Duration::from_secs(30));
        assert_eq!(st.state, "done", "round {round}: {st:?}\n{}", std::fs::read_to_string(&log).unwrap_or_default());
        verify_large_acquisition(&path, k2::IS, FRAMES, 0);
        assert_eq!(p.stage_pid("assembler"), hand.id(), "round {round}: the hand-run one holds the stage");
        std::fs::remove_file(&path).expect("remove");
        std::fs::remove_file(writer::sidecar_path(&path)).expect("remove sidecar");

        let (ok, _, err) = p.cli(&["attach", "assembler"]);
        assert!(ok, "round {round}: {err}");
        // Done when attach returns: the hand-run process has exited and the supervisor's is running.
        assert!(!alive(hand.id()), "round {round}: the hand-run assembler exited before attach returned");
        let exited = hand.wait_timeout(Duration::from_secs(5)).expect("wait").expect("exited");
        assert!(exited.success(), "round {round}: {exited}");
        let s = p.status().stages.into_iter().find(|s| s.name == "assembler").expect("assembler");
        assert!(s.state == "running" && s.pid != 0 && s.pid != hand.id(), "round {round}: {s:?}");
        let log = std::fs::read_to_string(&log).unwrap_or_default();
        assert!(log.contains("told this stage to stop: `ringdaq attach`"), "it says who stopped it and why:\n{log}");
    }
    assert!(p.shutdown());
}

/// A second process run by hand for a stage that one holds is refused, with a message that says so; the first
/// keeps the stage. `restart` returns once the new process is ready.
#[test]
fn a_second_hand_run_process_for_a_stage_is_refused() {
    let _g = ringdaq_tests::serial();
    let p = Pipeline::start("");
    let (ok, command, err) = p.cli(&["detach", "writer"]);
    assert!(ok, "{err}");
    let mut first = run_by_hand(command.trim(), &p.dir.path().join("first.log"));
    let held = wait_for(Duration::from_secs(10), || (p.stage_pid("writer") == first.id()).then_some(()));
    assert!(held.is_some(), "{:?}", p.status());
    let second = Command::new(command.split_whitespace().next().expect("program"))
        .args(command.split_whitespace().skip(1))
        .output()
        .expect("second writer");
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(!second.status.success(), "{err}");
    assert!(err.contains(&format!("a hand-run writer (pid {}) is attached already", first.id())), "{err}");
    assert_eq!(p.stage_pid("writer"), first.id(), "the first one keeps the stage");
    assert!(p.log().contains("refused a stage hello"), "the supervisor logs the refusal");
    // It still writes.
    let (id, path) = p.acquire(3, "by-the-first.npy", SyncMode::Immediate);
    p.simulate(p.sim_config(6, 50.0));
    assert_eq!(p.wait(id, Duration::from_secs(30)).state, "done");
    verify_large_acquisition(&path, k2::IS, 3, 0);
    let (ok, _, err) = p.cli(&["attach", "writer"]);
    assert!(ok, "{err}");
    assert!(first.wait_timeout(Duration::from_secs(5)).expect("wait").is_some_and(|s| s.success()));

    // `restart` is done when it returns: the old process has exited and a new one is running.
    let old = p.stage_pid("writer");
    let (ok, _, err) = p.cli(&["restart", "writer"]);
    assert!(ok, "{err}");
    assert!(!alive(old));
    let s = p.status().stages.into_iter().find(|s| s.name == "writer").expect("writer");
    assert!(s.state == "running" && s.pid != old, "{s:?}");
    assert!(p.shutdown());
}

/// `ringdaq stop` then `ringdaq acquire` at once, 20 times, while frames stream: every `acquire` is accepted,
/// and every stopped file is final and valid when `stop` returns.
#[test]
fn stop_then_acquire_back_to_back_20_times() {
    let _g = ringdaq_tests::serial();
    let p = Pipeline::start("");
    let sim_stop = AtomicBool::new(false);
    /// Ends the stream however the loop ends (a failed round must not leave it sending for 100 s).
    struct EndStream<'a>(&'a AtomicBool);
    impl Drop for EndStream<'_> {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Relaxed);
        }
    }
    std::thread::scope(|s| {
        let _end = EndStream(&sim_stop);
        // A steady stream for the whole loop (30 frames/s, at most 100 s of it).
        let sim = s.spawn(|| {
            Simulator::new(p.sim_config(3000, 30.0)).expect("simulator").run(&sim_stop).expect("simulator run")
        });
        for round in 0..20 {
            let out = p.dir.path().join(format!("stopped-{round}.npy"));
            let (ok, id, err) = p.cli(&["acquire", "--frames", "1000", "--out", &out.display().to_string()]);
            assert!(ok, "round {round}: acquire right after stop: {err}");
            let id: u64 = id.trim().parse().expect("the id");
            p.wait_assigned(id, 2, Duration::from_secs(10));
            let (ok, _, err) = p.cli(&["stop"]);
            assert!(ok, "round {round}: {err}");
            // Final when stop returns: the file is in place, valid, and says how many frames came.
            let st = p.wait(id, Duration::from_millis(1));
            assert_eq!(st.state, "done", "round {round}: {st:?}");
            let side: writer::Sidecar = serde_json::from_str(
                &std::fs::read_to_string(writer::sidecar_path(&out)).expect("sidecar when stop returns"),
            )
            .expect("sidecar json");
            assert!(side.frames >= 2 && side.frames == st.assigned, "round {round}: {side:?}");
            let first = side.frame_list.first().map(|m| m.frame_id).expect("frames");
            verify_large_acquisition(&out, k2::IS, side.frames, first);
            for f in [out.clone(), writer::sidecar_path(&out)] {
                std::fs::remove_file(f).expect("remove");
            }
        }
        sim_stop.store(true, Ordering::Relaxed);
        sim.join().expect("simulator");
    });
    assert!(p.shutdown());
}

/// `acquire` refuses at arm time what cannot succeed, with the numbers; an acquisition still armed (no frame
/// yet) at shutdown leaves no file behind.
#[test]
fn acquire_refuses_what_cannot_fit_and_an_armed_acquisition_leaves_nothing_at_shutdown() {
    let _g = ringdaq_tests::serial();
    let out = TempDir::new("scripted-out").expect("temp dir");
    let p = Pipeline::start("");
    let huge = out.path().join("huge.npy");
    let (ok, _, err) = p.cli(&["acquire", "--frames", "100000000", "--out", &huge.display().to_string()]);
    assert!(!ok, "armed: {err}");
    assert!(
        err.contains("not enough space: needs 762 TB for 100000000 frames, ")
            && err.contains(&format!("free on {}", out.path().display())),
        "{err}"
    );
    let exists = out.path().join("exists.npy");
    std::fs::write(&exists, b"keep me").expect("write");
    let (ok, _, err) = p.cli(&["acquire", "--frames", "5", "--out", &exists.display().to_string()]);
    assert!(!ok && err.contains("exists; refusing to overwrite it"), "{err}");
    let (ok, _, err) = p.cli(&["acquire", "--frames", "5", "--out", "/nonexistent-dir/run.npy"]);
    assert!(!ok && err.contains("does not exist"), "{err}");
    std::fs::remove_file(&exists).expect("remove");

    // One stopped before its first frame ends with 0 frames and leaves no file.
    let early = out.path().join("stopped-early.npy");
    let (ok, _, err) = p.cli(&["acquire", "--frames", "1000", "--out", &early.display().to_string()]);
    assert!(ok, "{err}");
    let (ok, _, err) = p.cli(&["stop"]);
    assert!(ok, "{err}");
    let st = p.status().acquisitions.into_iter().find(|a| a.path == early.display().to_string()).expect("it");
    assert_eq!((st.state.as_str(), st.assigned), ("done", 0), "{st:?}");
    // One armed, no frame yet, when the pipeline shuts down: the same.
    let armed = out.path().join("armed.npy");
    let (ok, _, err) = p.cli(&["acquire", "--frames", "1000", "--out", &armed.display().to_string()]);
    assert!(ok, "{err}");
    assert!(p.shutdown());
    let left: Vec<_> = std::fs::read_dir(out.path()).expect("dir").flatten().map(|e| e.path()).collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}
