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
use shm_protocol::messages::Request;

const STAGES: [&str; 3] = ["receiver", "assembler", "writer"];

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
    p.acquisition(id).map_or(0, |a| a.assigned)
}

/// Nothing of the acquisition's writing is left beside its file (no temporary file, no journal).
fn assert_no_leftovers(path: &Path) {
    let left: Vec<PathBuf> = writer::temp_files(path).expect("temp files").into_iter().filter(|t| t.exists()).collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

/// Shuts the pipeline down and checks nothing of it is left: no process, no file in the runtime directory.
fn shutdown_clean(mut p: Pipeline) {
    let rt = p.runtime_dir();
    let _ = p.call(Request::Shutdown);
    assert!(p.wait_exit(Duration::from_secs(30)), "the last supervisor exits 0:\n{}", p.log());
    let gone = wait_for(Duration::from_secs(10), || {
        ringdaq_tests::processes_mentioning(&rt.display().to_string()).is_empty().then_some(())
    });
    assert!(gone.is_some(), "processes left: {:?}", ringdaq_tests::processes_mentioning(&rt.display().to_string()));
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

#[test]
fn three_supervisor_kills_lose_nothing() {
    supervisor_kills_lose_nothing(3, 200, 40.0);
}

#[test]
fn ten_supervisor_kills_lose_nothing() {
    supervisor_kills_lose_nothing(10, 360, 60.0);
}

/// The supervisor and the receiver SIGKILLed at once: the new supervisor takes the region and the detector's
/// sockets back from the assembler and the writer (every stage holds them), restarts the receiver on the same
/// sockets (what arrived meanwhile waited in them), and the acquisition completes pixel-exact.
#[test]
fn supervisor_and_receiver_killed_together_lose_nothing() {
    let _g = ringdaq_tests::serial();
    const FRAMES: u64 = 160;
    let mut p = Pipeline::start("");
    let pids: Vec<u32> = STAGES.iter().map(|n| p.stage_pid(n)).collect();
    let (mut acq, path, log) = acquire_wait(&p, FRAMES, "o.npy");
    std::thread::scope(|s| {
        let cfg = p.sim_config(FRAMES, 40.0);
        let sim = s.spawn(move || {
            detector::sim::Simulator::new(cfg).expect("simulator").run(&AtomicBool::new(false)).expect("simulator run")
        });
        let reached = wait_for(Duration::from_secs(60), || (assigned(&p, 1) >= FRAMES / 3).then_some(()));
        assert!(reached.is_some(), "acquisition did not start:\n{}", p.log());
        p.kill_supervisor();
        let receiver = rustix::process::Pid::from_raw(pids[0] as i32).expect("pid");
        rustix::process::kill_process(receiver, rustix::process::Signal::KILL).expect("kill the receiver");
        p.relaunch();
        let now: Vec<u32> = STAGES.iter().map(|n| p.stage_pid(n)).collect();
        assert_ne!(now[0], pids[0], "a new receiver");
        assert_eq!(now[1..], pids[1..], "the assembler and the writer were adopted");
        sim.join().expect("simulator");
    });
    let st = acq.wait_timeout(Duration::from_secs(60)).expect("wait").expect("acquire --wait ends");
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(st.success(), "acquire --wait exits 0:\n{text}\n{}", p.log());
    verify_large_acquisition(&path, k2::IS, FRAMES, 0);
    assert!(p.log().contains("surviving stage rejoined"), "{}", p.log());
    assert_no_leftovers(&path);
    shutdown_clean(p);
}

/// A supervisor that dies and has no successor within `orphan_timeout_s`: the stages finish what the rings hold,
/// end the acquisition `orphaned` (its file finished and valid with the frames that came), and exit; a later
/// `ringdaq run` starts afresh.
#[test]
fn orphaned_stages_finish_the_file_and_exit_after_the_orphan_timeout() {
    let _g = ringdaq_tests::serial();
    const SENT: u64 = 40;
    let mut p = Pipeline::start("[supervisor]\norphan_timeout_s = 1.0\n");
    let pids: Vec<u32> = STAGES.iter().map(|n| p.stage_pid(n)).collect();
    let (id, path) = p.acquire(1000, "o.npy", shm_protocol::messages::SyncMode::Immediate);
    p.simulate(p.sim_config(SENT, 100.0));
    p.wait_assigned(id, SENT, Duration::from_secs(30));
    p.kill_supervisor();
    let gone = wait_for(Duration::from_secs(30), || {
        pids.iter().all(|&pid| !supervisor::daemon::process_alive(pid)).then_some(())
    });
    assert!(gone.is_some(), "orphaned stages did not exit:\n{}", p.log());
    let sidecar = verify_large_acquisition(&path, k2::IS, SENT, 0);
    assert_eq!(sidecar.ended, Some(shm_protocol::pipeline::EndReason::Orphaned), "{sidecar:?}");
    assert!(sidecar.reason.as_deref().is_some_and(|r| r.contains("no successor")), "{sidecar:?}");
    assert_no_leftovers(&path);
    assert!(p.log().contains("no supervisor took the pipeline over"), "{}", p.log());
    // Nothing left to adopt: a new run starts afresh, with new stages, and acquires.
    p.relaunch();
    let now: Vec<u32> = STAGES.iter().map(|n| p.stage_pid(n)).collect();
    assert!(now.iter().zip(&pids).all(|(a, b)| a != b), "new stages: {now:?} {pids:?}");
    let (id, path) = p.acquire(10, "after.npy", shm_protocol::messages::SyncMode::Immediate);
    p.simulate(p.sim_config(20, 100.0));
    assert_eq!(p.wait(id, Duration::from_secs(30)).state, "done");
    verify_large_acquisition(&path, k2::IS, 10, 0);
    shutdown_clean(p);
}

/// Two supervisors never drive one pipeline: a second `ringdaq run` in the runtime directory of a live one is
/// refused, naming the one that runs; the first is untouched. After the first dies, a `ringdaq run` with another
/// configuration is refused too (saying what differs), and one with the same configuration adopts the pipeline.
#[test]
fn a_second_supervisor_is_refused() {
    let _g = ringdaq_tests::serial();
    let mut p = Pipeline::start("");
    let first = p.supervisor_pid();
    let (st, log) = p.run_second(Duration::from_secs(20));
    let st = st.expect("the second ringdaq run exits by itself");
    assert!(!st.success(), "refused:\n{log}");
    assert!(
        log.contains(&format!("another ringdaq supervisor (pid {first}) runs this pipeline")),
        "the message names the running one:\n{log}"
    );
    assert!(p.status().stages.iter().all(|s| s.state == "running"), "the first runs on");
    assert_eq!(p.status().pid, first);

    p.kill_supervisor();
    let cfg = p.dir.path().join("ringdaq.toml");
    let original = std::fs::read_to_string(&cfg).expect("config");
    std::fs::write(&cfg, format!("{original}[writer]\ndirect_io = false\n")).expect("config");
    let (st, log) = p.run_second(Duration::from_secs(20));
    assert!(!st.expect("exits by itself").success(), "refused:\n{log}");
    assert!(log.contains("has another configuration (differs in: writer)"), "says what differs:\n{log}");
    std::fs::write(&cfg, original).expect("config");
    p.relaunch();
    assert!(p.log().contains("pipeline adopted"), "{}", p.log());
    shutdown_clean(p);
}

/// A lossless subscription across a supervisor restart: it gets every frame of the acquisition, in order and
/// pixel-exact, its gate held for it while no supervisor advanced it.
#[test]
fn a_lossless_subscription_survives_a_supervisor_restart() {
    use shm_protocol::consumer::{ConsumerError, Delivery, Subscription};
    let _g = ringdaq_tests::serial();
    const FRAMES: u64 = 160;
    let mut p = Pipeline::start("");
    let mut sub = Subscription::connect(&p.runtime_dir(), Delivery::Lossless).expect("subscribe");
    let (id, path) = p.acquire(FRAMES, "o.npy", shm_protocol::messages::SyncMode::Immediate);
    let expected = ringdaq_tests::pipeline::expected_frames(k2::IS);
    let got = std::thread::scope(|s| {
        let reader = s.spawn(move || {
            let mut indexes = Vec::new();
            while indexes.len() < FRAMES as usize {
                let f = match sub.next_frame(Some(Duration::from_secs(30))) {
                    Ok(f) => f,
                    Err(ConsumerError::Timeout) => break,
                    Err(e) => panic!("subscription: {e}"),
                };
                if f.acquisition_id() != id {
                    continue;
                }
                let i = f.index().expect("index");
                let v = (f.frame_id() % detector::pattern::PATTERN_PERIOD) as usize;
                assert!(f.pixels() == &expected[v][..], "frame {i} differs");
                indexes.push(i);
            }
            indexes
        });
        let cfg = p.sim_config(FRAMES, 40.0);
        let sim = s.spawn(move || {
            detector::sim::Simulator::new(cfg).expect("simulator").run(&AtomicBool::new(false)).expect("simulator run")
        });
        let reached = wait_for(Duration::from_secs(60), || (assigned(&p, id) >= FRAMES / 3).then_some(()));
        assert!(reached.is_some(), "acquisition did not start:\n{}", p.log());
        p.relaunch();
        sim.join().expect("simulator");
        reader.join().expect("reader")
    });
    assert_eq!(got, (0..FRAMES).collect::<Vec<_>>(), "every frame, in order");
    assert_eq!(p.wait(id, Duration::from_secs(30)).state, "done");
    verify_large_acquisition(&path, k2::IS, FRAMES, 0);
    assert!(p.log().contains("subscriber came back"), "{}", p.log());
    shutdown_clean(p);
}

/// The descriptors `ringdaq run` hands to systemd's fd store (`FDSTORE=1`, `FDNAME=`), read from an emulated
/// `$NOTIFY_SOCKET` until `count` of them came.
fn stored_fds(sock: &std::os::unix::net::UnixDatagram, count: usize) -> Vec<(String, std::os::fd::OwnedFd)> {
    use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};
    use std::mem::MaybeUninit;
    let mut out = Vec::new();
    sock.set_read_timeout(Some(Duration::from_secs(20))).expect("timeout");
    while out.len() < count {
        let mut buf = [0u8; 4096];
        let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(8))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let got =
            rustix::net::recvmsg(sock, &mut [std::io::IoSliceMut::new(&mut buf)], &mut control, RecvFlags::empty())
                .expect("a notification");
        let text = String::from_utf8_lossy(&buf[..got.bytes]).into_owned();
        let name = text.lines().find_map(|l| l.strip_prefix("FDNAME=")).map(str::to_owned);
        let fds: Vec<std::os::fd::OwnedFd> = control
            .drain()
            .flat_map(|m| match m {
                RecvAncillaryMessage::ScmRights(fds) => fds.collect::<Vec<_>>(),
                _ => Vec::new(),
            })
            .collect();
        if text.lines().any(|l| l == "FDSTORE=1") {
            let name = name.expect("every stored descriptor is named");
            for fd in fds {
                out.push((name.clone(), fd));
            }
        }
    }
    out
}

/// Under systemd, the fd store keeps the region and the sockets even when every process of the service dies: a
/// `ringdaq run` started with them (`LISTEN_FDS`) carries on with the same region (its records, its rings) and
/// sockets (what arrived meanwhile waited in them), and the acquisition in flight completes pixel-exact.
#[test]
fn the_systemd_fd_store_keeps_the_pipeline_through_a_crash_of_every_process() {
    let _g = ringdaq_tests::serial();
    const FRAMES: u64 = 160;
    let dir = ringdaq_tests::TempDir::new("fdstore").expect("temp dir");
    let notify = dir.path().join("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&notify).expect("notify socket");
    let env = [("NOTIFY_SOCKET", notify.to_str().expect("utf-8 path"))];
    let mut p = Pipeline::start_with_env("", &env);
    // The region and the eight sockets of the K2 IS.
    let fds = stored_fds(&sock, 9);
    let names: Vec<&str> = fds.iter().map(|(n, _)| n.as_str()).collect();
    assert!(names.contains(&"region") && names.contains(&"sector7"), "{names:?}");
    // Read on as systemd does (the socket's queue is short: 10 messages), so the supervisors never wait on it.
    let drain = sock.try_clone().expect("notify socket");
    let stop_draining = std::sync::Arc::new(AtomicBool::new(false));
    let draining = {
        let stop = stop_draining.clone();
        std::thread::spawn(move || {
            let _ = drain.set_read_timeout(Some(Duration::from_millis(100)));
            let mut buf = [0u8; 4096];
            let mut got = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if let Ok(n) = drain.recv(&mut buf) {
                    got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
                }
            }
            got
        })
    };
    let pids: Vec<u32> = STAGES.iter().map(|n| p.stage_pid(n)).collect();
    let (mut acq, path, log) = acquire_wait(&p, FRAMES, "o.npy");
    std::thread::scope(|s| {
        let cfg = p.sim_config(FRAMES, 40.0);
        let sim = s.spawn(move || {
            detector::sim::Simulator::new(cfg).expect("simulator").run(&AtomicBool::new(false)).expect("simulator run")
        });
        let reached = wait_for(Duration::from_secs(60), || (assigned(&p, 1) >= FRAMES / 3).then_some(()));
        assert!(reached.is_some(), "acquisition did not start:\n{}", p.log());
        p.kill_everything();
        p.relaunch_with_stored_fds(&fds, &env);
        let now: Vec<u32> = STAGES.iter().map(|n| p.stage_pid(n)).collect();
        assert!(now.iter().zip(&pids).all(|(a, b)| a != b), "new stages: {now:?} {pids:?}");
        sim.join().expect("simulator");
    });
    let st = acq.wait_timeout(Duration::from_secs(60)).expect("wait").expect("acquire --wait ends");
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(st.success(), "acquire --wait exits 0:\n{text}\n{}", p.log());
    verify_large_acquisition(&path, k2::IS, FRAMES, 0);
    assert!(p.log().contains("the region and sockets come from systemd's fd store"), "{}", p.log());
    assert_no_leftovers(&path);
    drop(fds);
    shutdown_clean(p);
    stop_draining.store(true, std::sync::atomic::Ordering::Relaxed);
    let told = draining.join().expect("drain").join("\n");
    // A clean stop takes the descriptors out of the store: a restart after it starts afresh.
    assert!(told.contains("FDSTOREREMOVE=1\nFDNAME=region"), "{told}");
}
