//! Hostile input, through real processes: floods of bad datagrams mixed with a valid stream, malformed and
//! oversized control messages, impostor stages, other users. The pipeline keeps running, counts what it
//! refuses, and the valid frames come out exact.
//!
//! The tests of this file share the machine's two cores with real pipelines, so they run one at a time.

use std::collections::BTreeMap;
use std::net::UdpSocket;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use detector::k2;
use detector::k2::geometry::HEADER_BYTES;
use ringdaq_tests::XorShift;
use ringdaq_tests::pipeline::{Pipeline, verify_large_acquisition};
use shm_protocol::control::{Connection, ControlError};
use shm_protocol::messages::{PROTOCOL_VERSION, Reply, Request, Role, SyncMode};
use shm_protocol::pipeline::Stage;

/// The kinds of bad datagram the flood sends, with the assembler counter each must land in.
const KINDS: [(&str, &str); 6] = [
    ("garbage", "assembler.invalid.sync_word"),
    ("truncated", "assembler.invalid.truncated"),
    ("oversized", "assembler.invalid.oversized"),
    ("wrong mode", "assembler.invalid.block_size"),
    ("position out of range", "assembler.invalid.position"),
    ("frame id far outside the window", "assembler.invalid.out_of_window"),
];

/// One datagram of kind `k`. Random frame ids far from the stream's (never twice the same, so they never add
/// up to a reset), random bytes where the kind allows.
fn bad_datagram(k: usize, rng: &mut XorShift) -> Vec<u8> {
    let g = k2::IS_GEOMETRY;
    let header = |frame_id: u32, x: usize, y: usize| {
        let mut h = [0u8; HEADER_BYTES];
        detector::k2::header::BlockHeader::for_block(&g, frame_id, 0, x, y, 0).encode(&mut h);
        h
    };
    match k {
        0 => {
            let mut d: Vec<u8> = (0..g.block_bytes()).map(|_| rng.next_u64() as u8).collect();
            d[0] = 0; // never the sync word by chance
            d
        }
        1 => header(5, 0, 0)[..20].to_vec(),
        2 => vec![0x5A; g.block_bytes() + 200],
        3 => {
            let mut d = vec![0u8; g.block_bytes()];
            let mut h = [0u8; HEADER_BYTES];
            detector::k2::header::BlockHeader::for_block(&k2::SUMMIT_GEOMETRY, 5, 0, 0, 0, 0).encode(&mut h);
            d[..HEADER_BYTES].copy_from_slice(&h);
            d
        }
        4 => {
            let mut d = vec![0u8; g.block_bytes()];
            d[..HEADER_BYTES].copy_from_slice(&header(5, 4000, 0));
            d
        }
        _ => {
            let mut d = vec![0u8; g.block_bytes()];
            let far = 1_000_000 + (rng.next_u64() % 1_000_000_000) as u32;
            d[..HEADER_BYTES].copy_from_slice(&header(far, 0, 0));
            d
        }
    }
}

#[test]
fn a_flood_of_bad_datagrams_is_counted_by_kind_and_valid_frames_stay_exact() {
    let _g = ringdaq_tests::serial();
    const FRAMES: u64 = 100;
    // The default block ring (64 slots of 64 datagrams): what a flood costs depends on how long the ring holds.
    let p = Pipeline::start_with_rings("[rings]\nframe_slots = 8\n[assembler]\ntimeout_ms = 500\n");
    let (id, path) = p.acquire(FRAMES, "flood.npy", SyncMode::Immediate);
    let sending = AtomicBool::new(true);
    let mut sent = [0u64; KINDS.len()];
    let started = Instant::now();
    let sim = std::thread::scope(|s| {
        let sim = s.spawn(|| {
            let r = p.simulate(p.sim_config(FRAMES + 10, 100.0));
            sending.store(false, Ordering::Relaxed);
            r
        });
        // As fast as this thread can send, round-robin over kinds and sectors, while the valid stream runs. (The
        // datagrams are made beforehand, 64 of each kind, so that sending is all the loop does.)
        let tx = UdpSocket::bind("127.0.0.1:0").expect("socket");
        let mut rng = XorShift::new(7);
        let pool: Vec<Vec<Vec<u8>>> =
            (0..KINDS.len()).map(|k| (0..64).map(|_| bad_datagram(k, &mut rng)).collect()).collect();
        let mut pool = pool;
        let mut i = 0usize;
        while sending.load(Ordering::Relaxed) {
            let k = i % KINDS.len();
            let port = p.port_base + (i / KINDS.len() % 8) as u16;
            let d = &mut pool[k][i / KINDS.len() % 64];
            if k == KINDS.len() - 1 {
                // A fresh far frame id every time (big-endian at offset 24), so that none is ever a duplicate.
                let far = 1_000_000u32.wrapping_add((i as u32).wrapping_mul(2_654_435_761) % 1_000_000_000);
                d[24..28].copy_from_slice(&far.to_be_bytes());
            }
            if tx.send_to(d, ("127.0.0.1", port)).is_ok() {
                sent[k] += 1;
            }
            i += 1;
        }
        sim.join().expect("simulator")
    });
    let secs = started.elapsed().as_secs_f64();
    let st = p.wait(id, Duration::from_secs(60));
    assert_eq!(st.state, "done", "{st:?}");
    // Out-of-window candidates expire after 4 frame timeouts; then every datagram the kernel delivered has been
    // counted: placed in a frame, or counted invalid.
    let far = KINDS.len() - 1;
    let delivered = sent[far] + sim.datagrams;
    let accounted = |c: &BTreeMap<String, u64>| {
        c[KINDS[far].1]
            + c["assembler.blocks"]
            + c["assembler.duplicates"]
            + c["assembler.late"]
            + c["receiver.kernel_drops"]
    };
    let c =
        ringdaq_tests::wait_for(Duration::from_secs(20), || Some(p.counters()).filter(|c| accounted(c) >= delivered))
            .unwrap_or_else(|| p.counters());
    let total: u64 = sent.iter().sum();
    eprintln!(
        "flood: {total} bad datagrams in {secs:.1} s ({:.0}/s) beside {} valid ones; kernel drops {}; \
         {} of {FRAMES} frames complete",
        total as f64 / secs,
        sim.datagrams,
        c["receiver.kernel_drops"],
        st.complete
    );
    let counted: BTreeMap<&str, u64> = KINDS.iter().map(|(kind, counter)| (*kind, c[*counter])).collect();
    eprintln!("sent {sent:?}, counted {counted:?}");
    let drops = c["receiver.kernel_drops"];
    for (k, (kind, counter)) in KINDS.iter().enumerate().take(far) {
        // Every bad datagram the kernel delivered is counted under its kind, and none under another. (The kernel
        // may drop some of a flood this fast; those it counts in kernel_drops.)
        assert!(c[*counter] <= sent[k] && c[*counter] + drops >= sent[k], "{kind}: sent {}, {c:?}", sent[k]);
        assert!(c[*counter] > 0, "{kind} counted");
    }
    // Far frame ids are held as reset candidates, at most four; so are the stream's first datagrams until
    // enough agree. A candidate pushed out is counted out of the window, so under this flood a few valid
    // datagrams of the first frame can be too (the cost is then an incomplete first frame). Every datagram is
    // accounted for: placed in a frame, or counted out of the window.
    let placed = c["assembler.blocks"] + c["assembler.duplicates"] + c["assembler.late"];
    assert!(c[KINDS[far].1] > 0);
    assert!(
        c[KINDS[far].1] + placed + drops >= sent[far] + sim.datagrams
            && c[KINDS[far].1] + placed <= sent[far] + sim.datagrams,
        "far ids: sent {}, valid {}, {c:?}",
        sent[far],
        sim.datagrams
    );
    let all_invalid: u64 = shm_protocol::pipeline::invalid_reason_names(k2::IS.invalid_reasons())
        .iter()
        .map(|r| c[&format!("assembler.invalid.{r}")])
        .sum();
    assert_eq!(all_invalid, KINDS.iter().map(|(_, counter)| c[*counter]).sum::<u64>(), "no other reason: {c:?}");
    assert_eq!(c["assembler.resets"], 0, "no flood datagram was taken for a camera reset");
    assert!(st.complete + 2 >= FRAMES || drops > 0, "at most the first frames pay for the flood: {st:?}");
    // Whatever the kernel dropped, the frames marked complete are exact (checked frame by frame).
    let a = ringdaq_tests::pipeline::Acquired::read(&path);
    let expected = ringdaq_tests::pipeline::expected_frames(k2::IS);
    for m in a.sidecar.frame_list.iter().filter(|m| m.complete) {
        let want = &expected[(m.frame_id % detector::pattern::PATTERN_PERIOD) as usize];
        assert!(a.frame(m.index as usize) == &want[..], "frame {} differs", m.index);
    }
    assert!(p.shutdown());
}

/// Sends `bytes` as one packet on a fresh connection (after a valid client hello if `hello`), and returns the
/// reply and whether the supervisor then closed the connection.
fn poke(p: &Pipeline, hello: bool, bytes: &[u8]) -> (Reply, bool) {
    let mut c = Connection::connect(&p.runtime_dir().join("control.sock")).expect("connect");
    c.set_recv_timeout(Some(Duration::from_secs(10))).expect("timeout");
    if hello {
        let r = c.call::<_, Reply>(&Request::Hello { protocol: PROTOCOL_VERSION, role: Role::Client }).expect("hello");
        assert!(matches!(r.msg, Reply::Welcome { .. }));
    }
    c.send_raw(bytes, &[]).expect("send");
    let reply = c.recv::<Reply>().expect("a reply").msg;
    let closed = matches!(c.recv::<Reply>(), Err(ControlError::Closed));
    (reply, closed)
}

fn error_of(r: &Reply) -> &str {
    match r {
        Reply::Error { message } => message,
        other => panic!("expected an error reply, got {other:?}"),
    }
}

#[test]
fn the_control_socket_refuses_bad_messages_impostors_and_strangers_while_acquiring() {
    let _g = ringdaq_tests::serial();
    const FRAMES: u64 = 60;
    let p = Pipeline::start("");
    let rt = p.runtime_dir();
    let sock = rt.join("control.sock");
    assert_eq!(std::fs::metadata(&rt).expect("rt").permissions().mode() & 0o777, 0o700, "runtime dir 0700");
    assert_eq!(std::fs::metadata(&sock).expect("sock").permissions().mode() & 0o777, 0o600, "socket 0600");
    let (id, path) = p.acquire(FRAMES, "attacked.npy", SyncMode::Immediate);
    std::thread::scope(|s| {
        let sim = s.spawn(|| p.simulate(p.sim_config(FRAMES + 10, 50.0)));
        let hello = postcard::to_stdvec(&Request::Hello { protocol: PROTOCOL_VERSION, role: Role::Client }).unwrap();

        let (r, closed) = poke(&p, false, &[0xFF; 100]);
        assert!(error_of(&r).contains("bad first message") && closed, "garbage first: {r:?}");
        let (r, closed) = poke(&p, false, &vec![0u8; 70 * 1024]);
        assert!(error_of(&r).contains("exceeds the limit") && closed, "oversized: {r:?}");
        let (r, closed) = poke(&p, false, &hello[..hello.len() - 1]);
        assert!(error_of(&r).contains("bad first message") && closed, "truncated hello: {r:?}");
        let old = postcard::to_stdvec(&Request::Hello { protocol: 999, role: Role::Client }).unwrap();
        let (r, closed) = poke(&p, false, &old);
        let msg = error_of(&r);
        assert!(msg.contains("999") && msg.contains(&format!("version {PROTOCOL_VERSION}")) && closed, "{msg}");
        // After a valid hello: an unknown request, garbage, an oversized packet.
        for bytes in [vec![200u8, 1, 2, 3], vec![0xFF; 40], vec![7u8; 65 * 1024 + 1]] {
            let (r, closed) = poke(&p, true, &bytes);
            assert!(error_of(&r).contains("malformed request") && closed, "{r:?}");
        }
        // A process that says it is the receiver but was not started as one gets nothing.
        let impostor =
            postcard::to_stdvec(&Request::Hello { protocol: PROTOCOL_VERSION, role: Role::Stage(Stage::Receiver) })
                .unwrap();
        let mut c = Connection::connect(&sock).expect("connect");
        c.set_recv_timeout(Some(Duration::from_secs(10))).expect("timeout");
        c.send_raw(&impostor, &[]).expect("send");
        let r = c.recv::<Reply>().expect("reply");
        assert!(r.fds.is_empty(), "no region or sockets for an impostor");
        assert!(error_of(&r.msg).contains("the receiver is process"), "{:?}", r.msg);
        sim.join().expect("simulator");
    });
    other_users_are_refused(&p);
    let st = p.wait(id, Duration::from_secs(60));
    assert_eq!(st.state, "done", "{st:?}");
    assert_eq!(st.complete, FRAMES, "the acquisition was not disturbed");
    verify_large_acquisition(&path, k2::IS, FRAMES, 0);
    let s = p.status();
    assert!(s.stages.iter().all(|s| s.state == "running" && s.restarts == 0), "{s:?}");
    assert!(p.shutdown());
}

/// As another user (root can switch): the 0700 runtime directory keeps `ringdaq status` out; with the
/// directory and socket opened up, the supervisor's peer-credential check refuses it with a reason.
fn other_users_are_refused(p: &Pipeline) {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped the other-user check: it needs root to switch users");
        return;
    }
    const NOBODY: u32 = 65534;
    let root = p.dir.path();
    let rt = p.runtime_dir();
    let sock = rt.join("control.sock");
    let mode = |path: &std::path::Path, m: u32| std::fs::set_permissions(path, std::fs::Permissions::from_mode(m));
    // The stranger needs a binary it may run, under a directory it may traverse.
    mode(root, 0o711).expect("chmod");
    let bin = root.join("bin");
    std::fs::create_dir(&bin).expect("bin dir");
    mode(&bin, 0o755).expect("chmod");
    std::fs::copy(ringdaq_tests::bin_path("ringdaq"), bin.join("ringdaq")).expect("copy");
    mode(&bin.join("ringdaq"), 0o755).expect("chmod");
    let status_as_nobody = || {
        use std::os::unix::process::CommandExt;
        let out = Command::new(bin.join("ringdaq"))
            .arg("--runtime-dir")
            .arg(&rt)
            .arg("status")
            .uid(NOBODY)
            .gid(NOBODY)
            .env_remove("RINGDAQ_RUNTIME_DIR")
            .output()
            .expect("run as nobody");
        (out.status.success(), String::from_utf8_lossy(&out.stderr).to_string())
    };
    let (ok, err) = status_as_nobody();
    assert!(!ok && err.contains("Permission denied"), "the 0700 directory keeps others out: {err}");
    mode(&rt, 0o711).expect("chmod");
    mode(&sock, 0o666).expect("chmod");
    let (ok, err) = status_as_nobody();
    mode(&sock, 0o600).expect("chmod");
    mode(&rt, 0o700).expect("chmod");
    mode(root, 0o700).expect("chmod");
    assert!(!ok && err.contains(&format!("peer uid {NOBODY}")) && err.contains("refused"), "{err}");
}
