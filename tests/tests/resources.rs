//! Resources that run out: a configuration whose rings cannot fit in memory is refused at start-up, and a full
//! disk fails the acquisition (with the frames written so far kept readable) but not the pipeline.
//!
//! The tests of this file share the machine's two cores with real pipelines, so they run one at a time.

use std::path::{Path, PathBuf};
use std::time::Duration;

use detector::k2;
use ringdaq_tests::pipeline::{Pipeline, verify_large_acquisition};
use ringdaq_tests::{ChildGuard, TempDir, ringdaq_run};
use shm_protocol::messages::{Reply, Request, SyncMode};

#[test]
fn rings_larger_than_memory_are_refused_at_start_up() {
    let _g = ringdaq_tests::serial();
    let dir = TempDir::new("toolarge").expect("temp dir");
    let cfg = dir.path().join("ringdaq.toml");
    // 100,000 frame slots of 7.6 MB: 760 GB.
    std::fs::write(&cfg, "[rings]\nframe_slots = 100000\n").expect("config");
    let mut child =
        ChildGuard::spawn(&mut ringdaq_run(&dir.path().join("rt"), &cfg, &dir.path().join("log"))).expect("spawn");
    let st = child.wait_timeout(Duration::from_secs(20)).expect("wait").expect("it exits at once");
    let log = std::fs::read_to_string(dir.path().join("log")).unwrap_or_default();
    assert!(!st.success(), "{log}");
    assert!(log.contains("the rings need") && log.contains("MB are available"), "a clear message: {log}");
}

#[test]
fn a_full_disk_fails_the_acquisition_not_the_pipeline() {
    let _g = ringdaq_tests::serial();
    // Declared before the pipeline, so dropped after it: the stages are gone before the unmount, and the mount
    // is gone before its directory is removed (a busy mount point cannot be).
    let small = TempDir::new("smallfs").expect("temp dir");
    let mnt = small.path().join("small");
    let Some(_fs) = ringdaq_tests::SmallFs::mount_or_skip(&mnt, "64m") else { return };
    let p = Pipeline::start("");
    let acquire_into = |frames: u64, path: &Path| match p.call(Request::Acquire {
        frames,
        path: path.display().to_string(),
        sync: SyncMode::Immediate,
        compression: Default::default(),
    }) {
        Ok(Reply::Armed { id }) => id,
        other => panic!("acquire: {other:?}"),
    };

    // 1. Too large from the start: 20 frames (152 MB) on 64 MB. Refused when armed, with the numbers; nothing
    // is created.
    let big = mnt.join("big.npy");
    let refused = p.call(Request::Acquire {
        frames: 20,
        path: big.display().to_string(),
        sync: SyncMode::Immediate,
        compression: Default::default(),
    });
    let err = refused.expect_err("refused when armed").to_string();
    assert!(err.contains("not enough space: needs 152 MB for 20 frames, ") && err.contains(" free on "), "{err}");
    assert!(std::fs::read_dir(&mnt).expect("dir").next().is_none(), "nothing left behind on the small disk");
    // The disk fills up between arming and the first frame (another process takes it): the writer refuses the
    // acquisition before any frame, and removes what it created.
    let early = mnt.join("early.npy");
    let id = acquire_into(6, &early);
    ringdaq_tests::fill(&mnt);
    p.simulate(p.sim_config(16, 100.0));
    let st = p.wait(id, Duration::from_secs(30));
    assert_eq!(st.state, "failed", "{st:?}");
    let err = st.error.unwrap_or_default();
    assert!(err.contains("not enough space for 6 frames"), "{err}");
    std::fs::remove_file(mnt.join("filler")).expect("remove the filler");
    assert!(std::fs::read_dir(&mnt).expect("dir").next().is_none(), "nothing left behind on the small disk");

    // 2. The disk fills up during the acquisition (another process takes what is left): the frames had their
    // space reserved and are all written; the sidecar cannot be, so the acquisition fails, and its frames stay
    // readable in the .partial file.
    let six = mnt.join("six.npy");
    let id = acquire_into(6, &six);
    std::thread::scope(|s| {
        let sim = s.spawn(|| p.simulate(p.sim_config(16, 20.0)));
        // Once the writer has reserved the file's and the journal's space (it creates the files first).
        let partial = PathBuf::from(format!("{}.partial", six.display()));
        let journal = PathBuf::from(format!("{}.frames.partial", six.display()));
        let allocated = |p: &Path| std::os::unix::fs::MetadataExt::blocks(&std::fs::metadata(p).ok()?).checked_mul(512);
        let reserved = ringdaq_tests::wait_for(Duration::from_secs(10), || {
            let data = allocated(&partial)?;
            let jour = allocated(&journal)?;
            (data >= 6 * 1860 * 2048 * 2 && jour >= 6 * 64).then_some(())
        });
        assert!(reserved.is_some(), "the writer reserved the space");
        ringdaq_tests::fill(&mnt);
        sim.join().expect("simulator");
    });
    let st = p.wait(id, Duration::from_secs(30));
    assert_eq!(st.state, "failed", "{st:?}");
    let err = st.error.unwrap_or_default();
    assert!(err.contains("No space left on device"), "{err}");
    assert!(err.contains("the first 6 frames are kept in") && err.contains("six.npy.partial"), "{err}");
    let kept = PathBuf::from(format!("{}.partial", six.display()));
    let tmp = p.dir.path().join("kept.npy");
    std::fs::copy(&kept, &tmp).expect("copy out");
    // The kept file is a valid .npy of the 6 frames, exact; verify_large_acquisition also wants a sidecar.
    let bytes = std::fs::read(&tmp).expect("read");
    let npy = npyz::NpyFile::new(&bytes[..]).expect("a valid .npy");
    assert_eq!(npy.shape(), &[6, 1860, 2048]);
    let px: Vec<u16> = npy.into_vec().expect("pixels");
    let expected = ringdaq_tests::pipeline::expected_frames(k2::IS);
    let n = 1860 * 2048;
    let c = p.counters();
    assert_eq!(c["writer.failed"], 2, "{c:?}");
    // Frame ids of the acquisition start where the stream of this simulator run starts (0).
    for (i, f) in px.chunks(n).enumerate() {
        assert!(f == &expected[i % expected.len()][..], "kept frame {i} is exact");
    }

    // 3. The pipeline goes on: the next acquisition, on a disk with room, completes.
    let (id, path) = p.acquire(10, "after.npy", SyncMode::Immediate);
    p.simulate(p.sim_config(20, 100.0));
    let st = p.wait(id, Duration::from_secs(30));
    assert_eq!(st.state, "done", "{st:?}");
    verify_large_acquisition(&path, k2::IS, 10, 0);
    assert!(p.shutdown());
}
