//! External consumers of a running pipeline, through the Rust API ([`shm_protocol::consumer`]) and `ringdaq
//! tail`: lossless ones get every frame exactly as written, lossy ones slow nothing, a dead one releases the
//! pipeline, and none can write to the region.
//!
//! The tests of this file share the machine's two cores with real pipelines, so they run one at a time.

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::process::{Command, Stdio};
use std::time::Duration;

use ringdaq_tests::pipeline::{Acquired, Pipeline};
use ringdaq_tests::{ChildGuard, bin_path, wait_for};
use shm_protocol::consumer::{ConsumerError, Delivery, Subscription};
use shm_protocol::messages::SyncMode;

fn digest(px: &[u16]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    px.hash(&mut h);
    h.finish()
}

/// What a test consumer keeps of a frame: frame-ring seq, acquisition, index, pixel digest.
type Seen = (u64, u64, Option<u64>, u64);

/// Takes frames until none comes for `quiet`; returns (frame-ring seq, acquisition, index, digest) of each, and
/// how many were overwritten while being read (a lossy reader discards those).
fn drain_counting(sub: &mut Subscription, quiet: Duration, mut per_frame: impl FnMut()) -> (Vec<Seen>, u64) {
    let mut got = Vec::new();
    let mut overwritten = 0;
    loop {
        match sub.next_frame(Some(quiet)) {
            Ok(f) => {
                let d = digest(f.pixels());
                // A lossy reader keeps only what was not overwritten while it read.
                if f.is_valid() {
                    got.push((f.seq(), f.acquisition_id(), f.index(), d));
                } else {
                    overwritten += 1;
                }
                drop(f);
                per_frame();
            }
            Err(ConsumerError::Timeout) => return (got, overwritten),
            Err(e) => panic!("consumer: {e}"),
        }
    }
}

fn drain(sub: &mut Subscription, quiet: Duration, per_frame: impl FnMut()) -> Vec<Seen> {
    let (got, overwritten) = drain_counting(sub, quiet, per_frame);
    assert_eq!(overwritten, 0, "a lossless frame is never overwritten under its reader");
    got
}

#[test]
fn a_lossless_consumer_gets_every_frame_exactly_as_written() {
    let _g = ringdaq_tests::serial();
    const FRAMES: u64 = 40;
    let p = Pipeline::start("");
    let mut sub = Subscription::connect(&p.runtime_dir(), Delivery::Lossless).expect("subscribe");
    assert_eq!(sub.shape(), (1860, 2048));
    let (id, path) = p.acquire(FRAMES, "lossless.npy", SyncMode::Immediate);
    let got = std::thread::scope(|s| {
        let sim = s.spawn(|| p.simulate(p.sim_config(FRAMES + 10, 100.0)));
        // Slower than the stream (15 ms a frame at 100 frames/s): the ring fills and the pipeline waits for it.
        let got = drain(&mut sub, Duration::from_secs(3), || std::thread::sleep(Duration::from_millis(15)));
        sim.join().expect("simulator");
        got
    });
    assert_eq!(sub.missed(), 0, "a lossless consumer misses nothing");
    let seqs: Vec<u64> = got.iter().map(|g| g.0).collect();
    assert_eq!(seqs, (0..seqs.len() as u64).collect::<Vec<_>>(), "every frame, in order");
    let st = p.wait(id, Duration::from_secs(30));
    assert_eq!(st.state, "done");
    let a = Acquired::read(&path);
    let mine: BTreeMap<u64, u64> =
        got.iter().filter(|g| g.1 == id).map(|g| (g.2.expect("an acquisition frame has an index"), g.3)).collect();
    assert_eq!(mine.len() as u64, FRAMES, "the consumer saw every frame of the acquisition");
    for (i, d) in mine {
        assert_eq!(digest(a.frame(i as usize)), d, "frame {i}: the consumer's pixels are the file's");
    }
    drop(sub);
    assert!(p.shutdown());
}

#[test]
fn a_sleeping_lossy_consumer_misses_frames_and_slows_nothing() {
    let _g = ringdaq_tests::serial();
    const FRAMES: u64 = 100;
    let p = Pipeline::start("");
    let mut sub = Subscription::connect(&p.runtime_dir(), Delivery::Lossy).expect("subscribe");
    let (id, _path) = p.acquire(FRAMES, "lossy.npy", SyncMode::Immediate);
    let got = std::thread::scope(|s| {
        let sim = s.spawn(|| p.simulate(p.sim_config(FRAMES + 10, 100.0)));
        // 20 ms per frame at 100 frames/s: it keeps up with one in two or three.
        let got = drain_counting(&mut sub, Duration::from_secs(3), || std::thread::sleep(Duration::from_millis(20)));
        sim.join().expect("simulator");
        got
    });
    let (got, overwritten) = got;
    let st = p.wait(id, Duration::from_secs(30));
    assert_eq!(st.state, "done");
    assert_eq!(st.complete, FRAMES, "every frame of the acquisition complete: the consumer held nothing back");
    assert_eq!(p.counters()["receiver.kernel_drops"], 0);
    let published = p.counters()["assembler.frames_complete"] + p.counters()["assembler.frames_incomplete"];
    assert!(sub.missed() > 0, "it fell behind and was told");
    assert!((got.len() as u64) < published, "it did not see every frame");
    assert_eq!(
        got.len() as u64 + overwritten + sub.missed(),
        published,
        "seen + overwritten while read + missed = every frame published"
    );
    assert!(got.windows(2).all(|w| w[0].0 < w[1].0), "in order");
    drop(sub);
    assert!(p.shutdown());
}

#[test]
fn killing_a_stopped_lossless_consumer_releases_the_pipeline() {
    let _g = ringdaq_tests::serial();
    const FRAMES: u64 = 60;
    let p = Pipeline::start("");
    let mut tail = ChildGuard::spawn(
        Command::new(bin_path("ringdaq"))
            .arg("--runtime-dir")
            .arg(p.runtime_dir())
            .args(["tail", "--lossless"])
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    )
    .expect("ringdaq tail");
    let subscribed = wait_for(Duration::from_secs(10), || p.log().contains("lossless=true").then_some(()));
    assert!(subscribed.is_some(), "tail subscribed\n{}", p.log());
    // Stopped, it holds its gate: the pipeline must wait for it ...
    tail.signal(rustix::process::Signal::STOP);
    let (id, _path) = p.acquire(FRAMES, "gated.npy", SyncMode::Immediate);
    std::thread::scope(|s| {
        let sim = s.spawn(|| p.simulate(p.sim_config(FRAMES + 10, 100.0)));
        let gated = wait_for(Duration::from_secs(5), || (p.status().frame_ring_used >= 8).then_some(()));
        assert!(gated.is_some(), "the frame ring filled up behind the stopped lossless consumer: {:?}", p.status());
        // ... until it dies: its gate goes with its connection.
        tail.kill();
        sim.join().expect("simulator");
    });
    let st = p.wait(id, Duration::from_secs(30));
    assert_eq!(st.state, "done", "{st:?}");
    assert_eq!(st.assigned, FRAMES);
    assert!(p.log().contains("consumer gone"));
    assert!(p.shutdown());
}

#[test]
fn a_consumer_cannot_write_to_the_region() {
    use rustix::mm::{MapFlags, MprotectFlags, ProtFlags};
    let _g = ringdaq_tests::serial();
    let p = Pipeline::start("");
    let sub = Subscription::connect(&p.runtime_dir(), Delivery::Lossy).expect("subscribe");
    let region = sub.region();
    // Its mapping cannot be made writable ...
    // SAFETY: the range is the subscription's own mapping; the call fails (asserted) and changes nothing.
    let r =
        unsafe { rustix::mm::mprotect(region.base().cast(), region.len(), MprotectFlags::READ | MprotectFlags::WRITE) };
    assert_eq!(r, Err(rustix::io::Errno::ACCESS), "mprotect(PROT_WRITE) of the consumer's mapping");
    // ... nor can its fd be mapped writable, or written.
    // SAFETY: a fresh mapping request; it fails (asserted), so nothing is mapped.
    let m = unsafe {
        rustix::mm::mmap(
            std::ptr::null_mut(),
            4096,
            ProtFlags::READ | ProtFlags::WRITE,
            MapFlags::SHARED,
            region.fd(),
            0,
        )
    };
    assert_eq!(m.err(), Some(rustix::io::Errno::ACCESS), "mmap(PROT_WRITE, MAP_SHARED) of the consumer's fd");
    assert_eq!(rustix::io::pwrite(region.fd(), b"x", 0).err(), Some(rustix::io::Errno::BADF), "write(2) to its fd");
    drop(sub);
    assert!(p.shutdown());
}
