//! Honest endings: an acquisition that ends before it has its frames says so and why, in `status`, in its
//! sidecar and in `acquire --wait`'s exit code, and its frames stay a valid file; continuous acquisitions run until
//! `stop`, through a writer kill.
//!
//! The tests of this file share the machine's two cores with real pipelines, so they run one at a time.

use std::path::Path;
use std::process::{Command, Output};
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use detector::k2;
use detector::sim::Simulator;
use ringdaq_tests::pipeline::{Acquired, Pipeline, verify_large_acquisition};
use ringdaq_tests::{bin_path, wait_for};
use rustix::process::{Pid, Signal};
use shm_protocol::messages::{CONTINUOUS, EndReason, Reply, Request, SyncMode};

/// `ringdaq --runtime-dir <rt> acquire ARGS --out PATH`, run to its end.
fn acquire_cli(p: &Pipeline, args: &[&str], out: &Path) -> Output {
    Command::new(bin_path("ringdaq"))
        .arg("--runtime-dir")
        .arg(p.runtime_dir())
        .arg("acquire")
        .args(args)
        .arg("--out")
        .arg(out)
        .output()
        .expect("ringdaq acquire")
}

/// Waits until acquisition `id` is armed (a client in another process armed it).
fn wait_armed(p: &Pipeline, id: u64) {
    let armed = wait_for(Duration::from_secs(10), || {
        matches!(p.call(Request::Acquisition { id }), Ok(Reply::Acquisition(_))).then_some(())
    });
    assert!(armed.is_some(), "acquisition {id} was not armed:\n{}", p.log());
}

/// numpy reads `path` as `frames` frames (the file a user gets is a valid .npy of what was kept).
fn numpy_reads(path: &Path, frames: u64) {
    let out = Command::new("python3")
        .args(["-c", "import sys, numpy; a = numpy.load(sys.argv[1], mmap_mode='r'); print(a.shape[0], a.dtype)"])
        .arg(path)
        .output()
        .expect("python3 (with numpy) runs");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "numpy.load failed: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(said.trim(), format!("{frames} uint16"), "numpy's view of {}", path.display());
}

fn kill(pid: u32) {
    if let Some(pid) = Pid::from_raw(pid as i32) {
        let _ = rustix::process::kill_process(pid, Signal::KILL);
    }
}

/// The case: the receiver is killed past its restart budget during a 400-frame acquisition. The pipeline
/// stops (as it should), and `acquire --wait` exits non-zero saying the acquisition ended short because the
/// pipeline stopped, which stage and how it died; the frames so far are a finished, valid file whose sidecar
/// says the same.
#[test]
fn an_acquisition_cut_short_by_the_restart_budget_says_so_and_keeps_its_frames() {
    cut_short_by_budget("receiver");
}

/// The same with the writer out of its budget: no writer is left to finish the file, so the supervisor does,
/// from the region, as a restarted writer would.
#[test]
fn an_acquisition_whose_writer_is_out_of_its_budget_is_still_finished() {
    cut_short_by_budget("writer");
}

fn cut_short_by_budget(stage: &str) {
    let _g = ringdaq_tests::serial();
    const FRAMES: u64 = 400;
    let p = Pipeline::start("[supervisor]\nmax_restarts = 2\n");
    let path = p.dir.path().join("cut.npy");
    let stop_sim = AtomicBool::new(false);
    let out = std::thread::scope(|s| {
        let client = s.spawn(|| acquire_cli(&p, &["--frames", &FRAMES.to_string(), "--wait"], &path));
        wait_armed(&p, 1);
        let sim = Simulator::new(p.sim_config(FRAMES, 100.0)).expect("simulator");
        let stop_sim = &stop_sim;
        s.spawn(move || sim.run(stop_sim));
        p.wait_assigned(1, 50, Duration::from_secs(20));
        // Three deaths of a budget of two restarts: the third stops the pipeline.
        for k in 0..3 {
            let pid = wait_for(Duration::from_secs(10), || Some(p.stage_pid(stage)).filter(|&p| p != 0));
            let Some(pid) = pid else { panic!("no {stage} runs before kill {k}:\n{}", p.log()) };
            kill(pid);
            if k < 2 {
                let replaced = wait_for(Duration::from_secs(10), || {
                    Some(p.stage_pid(stage)).filter(|&now| now != 0 && now != pid)
                });
                assert!(replaced.is_some(), "the {stage} was not restarted after kill {k}:\n{}", p.log());
            }
        }
        let out = client.join().expect("client thread");
        stop_sim.store(true, std::sync::atomic::Ordering::Relaxed);
        out
    });
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("acquire --wait said: {}", stderr.rsplit('\r').next().unwrap_or_default());
    assert_eq!(out.status.code(), Some(1), "acquire --wait exits 1\nstderr: {stderr}\n{}", p.log());
    let why = format!("the pipeline stopped: the {stage} failed 3 times");
    assert!(
        stderr.contains("acquisition 1 ended short (pipeline_failed)")
            && stderr.contains(&why)
            && stderr.contains("SIGKILL"),
        "{stderr}"
    );
    let a = Acquired::read(&path);
    let n = a.sidecar.frames;
    assert!((50..FRAMES).contains(&n), "{n} frames kept");
    assert_eq!(a.shape, vec![n, a.sidecar.shape[1], a.sidecar.shape[2]]);
    assert_eq!(a.sidecar.ended, Some(EndReason::PipelineFailed));
    let reason = a.sidecar.reason.as_deref().unwrap_or_default();
    assert!(reason.contains(&why), "{reason}");
    assert!(stderr.contains(&format!("with {n} of {FRAMES}")), "{stderr}");
    numpy_reads(&path, n);
    // The sidecar's JSON names the ending as status does.
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(writer::sidecar_path(&path)).expect("sidecar")).expect("json");
    assert_eq!(json["ended"], "pipeline_failed");
}

/// The detector stops sending before the acquisition has its frames: after `stream_idle_timeout_s` it ends with
/// the frames that came, `stream_idle`, and `acquire --wait` exits non-zero saying so. The pipeline goes on: the
/// next acquisition completes.
#[test]
fn an_acquisition_whose_stream_goes_idle_ends_short() {
    let _g = ringdaq_tests::serial();
    const SENT: u64 = 60;
    let p = Pipeline::start("stream_idle_timeout_s = 1\n");
    let path = p.dir.path().join("idle.npy");
    let out = std::thread::scope(|s| {
        let client = s.spawn(|| acquire_cli(&p, &["--frames", "256", "--wait"], &path));
        wait_armed(&p, 1);
        let report = p.simulate(p.sim_config(SENT, 100.0));
        assert_eq!(report.frames, SENT);
        client.join().expect("client thread")
    });
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "acquire --wait exits 1\nstderr: {stderr}\n{}", p.log());
    assert!(stderr.contains("ended short (stream_idle) with 60 of 256"), "{stderr}");
    assert!(stderr.contains("the stream went idle"), "{stderr}");
    let Ok(Reply::Acquisition(st)) = p.call(Request::Acquisition { id: 1 }) else { panic!("status") };
    assert_eq!((st.state.as_str(), st.ended, st.assigned), ("done", Some(EndReason::StreamIdle), SENT), "{st:?}");
    assert!(st.reason.as_deref().is_some_and(|r| r.contains("no frame for")), "{st:?}");
    let side = verify_large_acquisition(&path, k2::IS, SENT, 0);
    assert_eq!((side.ended, side.frames_requested), (Some(EndReason::StreamIdle), 256));
    numpy_reads(&path, SENT);
    // Not the pipeline's end: the next acquisition gets its frames.
    let (id, next) = p.acquire(20, "next.npy", SyncMode::Immediate);
    let mut cfg = p.sim_config(30, 100.0);
    cfg.first_frame_id = SENT as u32; // the detector goes on where it stopped
    p.simulate(cfg);
    let st = p.wait(id, Duration::from_secs(30));
    assert_eq!((st.state.as_str(), st.ended, st.reason), ("done", Some(EndReason::Complete), None));
    assert_eq!(Acquired::read(&next).sidecar.ended, Some(EndReason::Complete));
    assert!(p.shutdown());
}

/// `acquire` without `--frames` writes until `stop`: past the first 1 GiB step of its file (141 K2 IS frames),
/// through two writer kills (one in each step), and the file is exactly the frames that came, header fixed.
/// `acquire --wait` exits 0 after the user's stop.
#[test]
fn a_continuous_acquisition_grows_until_stop_through_writer_kills() {
    let _g = ringdaq_tests::serial();
    const SENT: u64 = 240;
    // No idle ending here: the acquisition must wait for `stop` however long the stream pauses.
    let p = Pipeline::start("stream_idle_timeout_s = 0\n");
    let path = p.dir.path().join("continuous.npy");
    let out = std::thread::scope(|s| {
        let client = s.spawn(|| acquire_cli(&p, &["--wait"], &path));
        wait_armed(&p, 1);
        let Ok(Reply::Acquisition(st)) = p.call(Request::Acquisition { id: 1 }) else { panic!("status") };
        assert!(st.continuous && st.frames == CONTINUOUS, "{st:?}");
        let sim = s.spawn(|| p.simulate(p.sim_config(SENT, 80.0)));
        for at in [60, 190] {
            p.wait_assigned(1, at, Duration::from_secs(30));
            let pid = p.stage_pid("writer");
            assert_ne!(pid, 0, "a writer runs");
            kill(pid);
        }
        assert_eq!(sim.join().expect("simulator").frames, SENT);
        p.wait_assigned(1, SENT, Duration::from_secs(30));
        let Ok(Reply::Acquisition(st)) = p.call(Request::Acquisition { id: 1 }) else { panic!("status") };
        assert_eq!((st.state.as_str(), st.ended), ("running", None), "{st:?}");
        let stop = Command::new(bin_path("ringdaq")).arg("--runtime-dir").arg(p.runtime_dir()).arg("stop").output();
        let stop = stop.expect("ringdaq stop");
        assert!(stop.status.success(), "{}", String::from_utf8_lossy(&stop.stderr));
        client.join().expect("client thread")
    });
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "a user's stop is no failure: {stderr}");
    assert!(stderr.contains("until `ringdaq stop`"), "{stderr}");
    assert!(stdout.contains(&format!("acquisition 1 stopped: {SENT} frames ({SENT} complete)")), "{stdout}");
    let Ok(Reply::Acquisition(st)) = p.call(Request::Acquisition { id: 1 }) else { panic!("status") };
    assert_eq!((st.state.as_str(), st.ended, st.assigned), ("done", Some(EndReason::Stopped), SENT), "{st:?}");
    let side = verify_large_acquisition(&path, k2::IS, SENT, 0);
    assert!(side.continuous && side.frames_requested == SENT, "{side:?}");
    assert_eq!(side.ended, Some(EndReason::Stopped));
    assert!(!path.with_extension("npy.frames.partial").exists(), "the journal is removed");
    let status = p.status();
    let writer = status.stages.iter().find(|s| s.name == "writer").expect("writer");
    assert_eq!(writer.restarts, 2, "{writer:?}");
    assert!(p.shutdown());
}

/// `ringdaq shutdown` during an acquisition: the supervisor finishes the file and answers the `acquire --wait`
/// that waits for it before it exits; that exits non-zero, `shutdown`.
#[test]
fn a_shutdown_ends_the_running_acquisition_and_answers_its_waiting_client() {
    let _g = ringdaq_tests::serial();
    const SENT: u64 = 20;
    let mut p = Pipeline::start("");
    let path = p.dir.path().join("shut.npy");
    let out = std::thread::scope(|s| {
        let client = s.spawn(|| acquire_cli(&p, &["--frames", "100", "--wait"], &path));
        wait_armed(&p, 1);
        p.simulate(p.sim_config(SENT, 100.0));
        p.wait_assigned(1, SENT, Duration::from_secs(10));
        assert!(matches!(p.call(Request::Shutdown), Ok(Reply::Ok)));
        client.join().expect("client thread")
    });
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "acquire --wait exits 1: {stderr}");
    assert!(stderr.contains(&format!("ended short (shutdown) with {SENT} of 100")), "{stderr}");
    assert!(!stderr.contains("talking to the supervisor"), "answered, not cut off: {stderr}");
    assert!(p.wait_exit(Duration::from_secs(30)), "the supervisor exits 0");
    let side = verify_large_acquisition(&path, k2::IS, SENT, 0);
    assert_eq!(side.ended, Some(EndReason::Shutdown));
}
