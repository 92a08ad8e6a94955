//! The supervisor may crash too: its stages outlive it, a new `ringdaq run` in the same runtime directory adopts
//! the running pipeline, and nothing is lost (issue 20). Real processes: `ringdaq run` SIGKILLed alone (its
//! stages are in its process group but not killed), `ringdaq acquire --wait` as a client that must see it through.
//!
//! The tests of this file share the machine's two cores with real pipelines, so they run one at a time.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use detector::k2;
use ringdaq_tests::pipeline::{Pipeline, verify_large_acquisition};
use ringdaq_tests::{ChildGuard, bin_path, wait_for};
use shm_protocol::messages::{Reply, Request};

const STAGES: [&str; 3] = ["receiver", "assembler", "writer"];

/// Processes whose command line mentions `needle` (the stages carry their control socket's path).
fn processes_mentioning(needle: &str) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| String::from_utf8_lossy(&c).contains(needle))
        })
        .collect()
}

/// `ringdaq acquire --frames N --out <dir>/<name> --wait` against `p`, its stderr in `<dir>/<name>.log`; returns
/// once the acquisition is armed.
fn acquire_wait(p: &Pipeline, frames: u64, name: &str) -> (ChildGuard, PathBuf, PathBuf) {
    let path = p.dir.path().join(name);
    let log = p.dir.path().join(format!("{name}.log"));
    let child = ChildGuard::spawn(
        Command::new(bin_path("ringdaq"))
            .arg("--runtime-dir")
            .arg(p.runtime_dir())
            .args(["acquire", "--frames", &frames.to_string(), "--out"])
            .arg(&path)
            .arg("--wait")
            .stdout(Stdio::null())
            .stderr(Stdio::from(std::fs::File::create(&log).expect("log"))),
    )
    .expect("spawn acquire");
    let armed = wait_for(Duration::from_secs(10), || {
        std::fs::read_to_string(&log).ok().filter(|l| l.contains("armed")).map(|_| ())
    });
    assert!(armed.is_some(), "acquire did not arm:\n{}", std::fs::read_to_string(&log).unwrap_or_default());
    (child, path, log)
}

/// Frames of acquisition `id` assigned so far, as the (current) supervisor says; 0 while none answers.
fn assigned(p: &Pipeline, id: u64) -> u64 {
    match p.call(Request::Acquisition { id }) {
        Ok(Reply::Acquisition(a)) => a.assigned,
        _ => 0,
    }
}

/// Nothing of the acquisition's writing is left beside its file (no temporary file, no journal).
fn assert_no_leftovers(path: &Path) {
    let left: Vec<PathBuf> = writer::temp_files(path).expect("temp files").into_iter().filter(|t| t.exists()).collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

/// Shuts the pipeline down and checks nothing of it is left: no process, no file in the runtime directory.
fn shutdown_clean(p: Pipeline) {
    let rt = p.runtime_dir();
    assert!(p.shutdown(), "the last supervisor exits 0");
    let gone =
        wait_for(Duration::from_secs(10), || processes_mentioning(&rt.display().to_string()).is_empty().then_some(()));
    assert!(gone.is_some(), "processes left: {:?}", processes_mentioning(&rt.display().to_string()));
    let files: Vec<String> = std::fs::read_dir(&rt)
        .map(|d| d.filter_map(|e| Some(e.ok()?.file_name().to_string_lossy().into_owned())).collect())
        .unwrap_or_default();
    assert!(files.is_empty(), "files left in the runtime directory: {files:?}");
}

/// The scenario, `kills` times: an acquisition of `frames` frames at `fps` while `ringdaq run` is
/// SIGKILLed and started again; `acquire --wait` exits 0, the file is pixel-exact, the stages are the same
/// processes throughout (adopted, never restarted), nothing is left behind.
fn supervisor_kills_lose_nothing(kills: u64, frames: u64, fps: f64) {
    let _g = ringdaq_tests::serial();
    let mut p = Pipeline::start("");
    let pids: Vec<u32> = STAGES.iter().map(|n| p.stage_pid(n)).collect();
    assert!(pids.iter().all(|&pid| pid != 0));
    let (mut acq, path, log) = acquire_wait(&p, frames, "o.npy");
    std::thread::scope(|s| {
        let cfg = p.sim_config(frames, fps);
        let sim = s.spawn(move || {
            detector::sim::Simulator::new(cfg).expect("simulator").run(&AtomicBool::new(false)).expect("simulator run")
        });
        for k in 1..=kills {
            let at = k * frames / (kills + 2);
            let reached = wait_for(Duration::from_secs(60), || (assigned(&p, 1) >= at).then_some(()));
            assert!(reached.is_some(), "acquisition did not reach {at} frames:\n{}", p.log());
            p.relaunch();
            let now: Vec<u32> = STAGES.iter().map(|n| p.stage_pid(n)).collect();
            assert_eq!(now, pids, "kill {k}: the stages were adopted, not restarted:\n{}", p.log());
        }
        sim.join().expect("simulator");
    });
    let st = acq.wait_timeout(Duration::from_secs(60)).expect("wait").expect("acquire --wait ends");
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(st.success(), "acquire --wait exits 0:\n{text}\n{}", p.log());
    verify_large_acquisition(&path, k2::IS, frames, 0);
    assert_no_leftovers(&path);
    shutdown_clean(p);
}

#[test]
fn one_supervisor_kill_loses_nothing() {
    supervisor_kills_lose_nothing(1, 160, 40.0);
}
