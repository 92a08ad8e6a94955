//! The sidecar's counters are the acquisition's own (differences over it), not the pipeline's totals.

use std::time::Duration;

use ringdaq_tests::pipeline::{Acquired, Pipeline};
use shm_protocol::messages::SyncMode;

#[test]
fn sidecar_counters_count_the_acquisition() {
    let _g = ringdaq_tests::serial();
    let p = Pipeline::start("");
    let mut sidecars = Vec::new();
    for name in ["first.npy", "second.npy"] {
        let (id, path) = p.acquire(20, name, SyncMode::Immediate);
        p.simulate(p.sim_config(30, 100.0));
        let st = p.wait(id, Duration::from_secs(30));
        assert_eq!(st.state, "done", "{st:?}");
        sidecars.push(Acquired::read(&path).sidecar);
    }
    let totals = p.counters();
    assert_eq!(totals["writer.frames"], 40, "{totals:?}");
    for sc in &sidecars {
        let c = &sc.counters;
        assert_eq!(c["writer.frames"], 20, "the acquisition's frames, not the pipeline's: {c:?}");
        assert_eq!(c["writer.done"], 0, "counted when the file is done, after the sidecar: {c:?}");
        // Frames published while its file was open: its 20, at most the rest of its stream.
        let published = c["assembler.frames_complete"] + c["assembler.frames_incomplete"];
        assert!((19..=30).contains(&published), "{published} frames published during it: {c:?}");
        assert!(c["receiver.datagrams"] <= 30 * 256, "{c:?}");
    }
    assert!(p.shutdown());
}
