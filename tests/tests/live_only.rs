//! Live-only acquisitions (armed without an output path): their frames get the acquisition's id and indices for
//! consumers, nothing is written, and they end like any other, through a writer killed mid-acquisition too.
//!
//! The tests of this file share the machine's two cores with real pipelines, so they run one at a time.

use std::time::Duration;

use ringdaq_tests::pipeline::Pipeline;
use rustix::process::{Pid, Signal};
use shm_protocol::messages::{Compression, EndReason, Reply, Request, SyncMode};

fn arm_live(p: &Pipeline, frames: u64) -> u64 {
    match p.call(Request::Acquire {
        frames,
        path: String::new(),
        sync: SyncMode::Immediate,
        compression: Compression::None,
    }) {
        Ok(Reply::Armed { id }) => id,
        other => panic!("arming a live-only acquisition: {other:?}\n{}", p.log()),
    }
}

/// Files in the pipeline's directory other than its own (config, log, runtime directory).
fn outputs(p: &Pipeline) -> Vec<String> {
    let dir = p.runtime_dir().parent().expect("pipeline dir").to_path_buf();
    std::fs::read_dir(dir)
        .expect("pipeline dir")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".npy") || n.ends_with(".json") || n.ends_with(".partial"))
        .collect()
}

#[test]
fn a_live_only_acquisition_writes_nothing_and_ends_complete() {
    let _g = ringdaq_tests::serial();
    let p = Pipeline::start("");
    let id = arm_live(&p, 20);
    let sim = p.simulate(p.sim_config(30, 150.0));
    assert_eq!(sim.frames, 30);
    let st = p.wait(id, Duration::from_secs(60));
    assert_eq!(st.state, "done", "{st:?}");
    assert_eq!(st.ended, Some(EndReason::Complete), "{st:?}");
    assert_eq!((st.assigned, st.written, st.complete), (20, 20, 20), "{st:?}");
    assert!(st.path.is_empty());
    assert!(outputs(&p).is_empty(), "a live-only acquisition wrote {:?}", outputs(&p));
    // The next acquisition, with a file, is armed as usual.
    let (next, _) = p.acquire(5, "after.npy", SyncMode::Immediate);
    assert_eq!(next, id + 1);
    assert!(p.shutdown());
}

#[test]
fn a_live_only_acquisition_ends_complete_through_a_writer_kill() {
    let _g = ringdaq_tests::serial();
    let p = Pipeline::start("");
    let id = arm_live(&p, 60);
    std::thread::scope(|s| {
        let sim = s.spawn(|| p.simulate(p.sim_config(70, 60.0)));
        p.wait_assigned(id, 20, Duration::from_secs(60));
        let writer = p.stage_pid("writer");
        let pid = Pid::from_raw(writer as i32).expect("writer pid");
        rustix::process::kill_process(pid, Signal::KILL).expect("kill the writer");
        sim.join().expect("simulator");
    });
    let st = p.wait(id, Duration::from_secs(60));
    assert_eq!(st.state, "done", "{st:?}\n{}", p.log());
    assert_eq!(st.ended, Some(EndReason::Complete), "{st:?}");
    assert_eq!((st.assigned, st.written), (60, 60), "{st:?}");
    assert!(outputs(&p).is_empty());
    assert!(p.shutdown());
}
