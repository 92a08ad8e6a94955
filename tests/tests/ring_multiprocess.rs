//! The ring across real processes: a memfd passed over the control socket, a consumer SIGKILLed mid-stream.

use std::process::Command;
use std::time::Duration;

use ringdaq_tests::{ChildGuard, TempDir, XorShift, wait_for};
use shm_protocol::layout::{Geometry, RegionSpec, RingKind, RingSpec};
use shm_protocol::{ControlListener, Region};

const PEER: &str = env!("CARGO_BIN_EXE_ringdaq-ring-peer");

#[test]
fn consumer_killed_repeatedly_resumes_without_gap_or_duplicate_effect() {
    const ITEMS: u64 = 1_000_000;
    let seed = XorShift::seed_from_env();
    eprintln!("seed {seed} (set RINGDAQ_TEST_SEED to replay)");
    let mut rng = XorShift::new(seed);
    let dir = TempDir::new("ring-mp").unwrap();
    let sock = dir.path().join("control.sock");
    let out = dir.path().join("effects.bin");
    let mut producer =
        ChildGuard::spawn(Command::new(PEER).args(["produce", "--items", &ITEMS.to_string(), "--socket"]).arg(&sock))
            .unwrap();
    assert!(wait_for(Duration::from_secs(10), || sock.exists().then_some(())).is_some(), "producer never listened");
    let consume =
        || ChildGuard::spawn(Command::new(PEER).arg("consume").arg("--socket").arg(&sock).arg("--out").arg(&out));

    let mut kills = 0;
    let mut consumer = consume().unwrap();
    while kills < 6 {
        std::thread::sleep(Duration::from_millis(rng.range(30, 150)));
        if !consumer.running() {
            break; // finished before we could kill it again
        }
        consumer.kill();
        kills += 1;
        consumer = consume().unwrap();
    }
    let st = consumer.wait_timeout(Duration::from_secs(120)).unwrap().expect("consumer did not finish");
    assert!(st.success(), "consumer failed: {st}");
    let st = producer.wait_timeout(Duration::from_secs(30)).unwrap().expect("producer did not finish");
    assert!(st.success(), "producer failed: {st}");
    assert!(kills >= 3, "only {kills} kills landed mid-stream; the stream finished too fast to test restarts");

    let bytes = std::fs::read(&out).unwrap();
    assert_eq!(bytes.len() as u64, ITEMS * 8, "effects file has a gap at its end");
    for (seq, w) in bytes.chunks_exact(8).enumerate() {
        let v = u64::from_le_bytes(w.try_into().unwrap());
        assert_eq!(v, seq as u64 ^ 0xA5A5_A5A5, "item {seq}: missing or wrong effect");
    }
}

#[test]
fn memfd_passed_over_the_control_socket_maps_the_same_memory() {
    let dir = TempDir::new("ring-fd").unwrap();
    let sock = dir.path().join("control.sock");
    let region = Region::create(&RegionSpec {
        geometry: Geometry { frame_rows: 3, ..Default::default() },
        rings: vec![RingSpec { kind: RingKind::Bytes, slot_count: 2, slot_bytes: 64, max_consumers: 1 }],
        app_bytes: 0,
    })
    .unwrap();
    let ring = region.ring(0).unwrap();
    let word = 0x0123_4567_89AB_CDEFu64;
    // SAFETY: slot 0 is ours alone until the child attaches; 8 bytes are within the 4 KiB slot.
    unsafe { ring.slot_ptr(0).cast::<u64>().write_volatile(word) };
    let listener = ControlListener::bind(&sock).unwrap();
    let mut child = ChildGuard::spawn(Command::new(PEER).arg("echo").arg("--socket").arg(&sock)).unwrap();
    let conn = listener.accept().unwrap();
    assert_eq!(conn.peer().pid as u32, child.id(), "peer credentials name the child");
    conn.send_with_fds(&0u32, &[region.fd()]).unwrap();
    let st = child.wait_timeout(Duration::from_secs(10)).unwrap().expect("echo child hung");
    assert!(st.success());
    // The child wrote the complement of what it read into slot 1 through its own mapping.
    // SAFETY: the child has exited; slot 1 is in the mapping.
    let back = unsafe { ring.slot_ptr(1).cast::<u64>().read_volatile() };
    assert_eq!(back, !word);
}
