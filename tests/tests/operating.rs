//! Operating a running pipeline: detach a stage and run it by hand, restart one, read status and metrics.
//!
//! The tests of this file share the machine's two cores with real pipelines, so they run one at a time.

use std::process::{Command, Stdio};
use std::time::Duration;

use detector::k2;
use ringdaq_tests::pipeline::{Pipeline, verify_large_acquisition};
use ringdaq_tests::{ChildGuard, wait_for};
use shm_protocol::messages::SyncMode;

fn stage_state(p: &Pipeline, name: &str) -> String {
    p.status().stages.into_iter().find(|s| s.name == name).map(|s| s.state.to_string()).unwrap_or_default()
}

#[test]
fn a_detached_assembler_runs_by_hand_and_is_attached_back() {
    let _g = ringdaq_tests::serial();
    const FRAMES: u64 = 50;
    let p = Pipeline::start("");
    let supervised = p.stage_pid("assembler");
    let (ok, command, err) = p.cli(&["detach", "assembler"]);
    assert!(ok, "{err}");
    assert!(command.contains("ringdaq-assembler") && command.contains("--control"), "{command}");
    let stopped = wait_for(Duration::from_secs(10), || (stage_state(&p, "assembler") == "detached").then_some(()));
    assert!(stopped.is_some(), "the supervised assembler stopped: {:?}", p.status());
    assert_eq!(p.stage_pid("assembler"), 0);
    // Nothing restarts it meanwhile.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(stage_state(&p, "assembler"), "detached");

    // The user runs the printed command (here with more logging), and it attaches to the running pipeline.
    let mut words = command.split_whitespace();
    let program = words.next().expect("program");
    let log = p.dir.path().join("hand-run.log");
    let mut hand = ChildGuard::spawn(
        Command::new(program)
            .args(words)
            .env("RUST_LOG", "debug")
            .stdout(Stdio::null())
            .stderr(Stdio::from(std::fs::File::create(&log).expect("log"))),
    )
    .expect("hand-run assembler");
    let attached =
        wait_for(Duration::from_secs(10), || (stage_state(&p, "assembler") == "detached (run by hand)").then_some(()));
    assert!(attached.is_some(), "{:?}", p.status());
    assert_eq!(p.stage_pid("assembler"), hand.id());
    assert_ne!(hand.id(), supervised);

    let (id, path) = p.acquire(FRAMES, "by-hand.npy", SyncMode::Immediate);
    p.simulate(p.sim_config(FRAMES + 10, 100.0));
    let st = p.wait(id, Duration::from_secs(60));
    assert_eq!(st.state, "done", "{st:?}");
    verify_large_acquisition(&path, k2::IS, FRAMES, 0);
    assert!(std::fs::read_to_string(&log).unwrap_or_default().contains("DEBUG"), "the hand-run one logged at debug");

    // Attach: the hand-run process is told to stop (and exits cleanly), the supervisor starts its own.
    let (ok, _, err) = p.cli(&["attach", "assembler"]);
    assert!(ok, "{err}");
    let exited = hand.wait_timeout(Duration::from_secs(10)).expect("wait").expect("the hand-run assembler exits");
    assert!(exited.success(), "{exited}");
    let back = wait_for(Duration::from_secs(10), || (stage_state(&p, "assembler") == "running").then_some(()));
    assert!(back.is_some(), "{:?}", p.status());
    let (id, path) = p.acquire(20, "after-attach.npy", SyncMode::Immediate);
    p.simulate(p.sim_config(30, 100.0));
    assert_eq!(p.wait(id, Duration::from_secs(60)).state, "done");
    verify_large_acquisition(&path, k2::IS, 20, 0);

    // Restart: a new writer at once, counted, not against the budget.
    let writer = p.stage_pid("writer");
    let (ok, _, err) = p.cli(&["restart", "writer"]);
    assert!(ok, "{err}");
    let restarted = wait_for(Duration::from_secs(10), || {
        let now = p.stage_pid("writer");
        (now != 0 && now != writer && stage_state(&p, "writer") == "running").then_some(())
    });
    assert!(restarted.is_some(), "{:?}", p.status());
    let s = p.status().stages.into_iter().find(|s| s.name == "writer").expect("writer");
    assert_eq!(s.restarts, 1);
    assert!(s.last_exit.as_deref().is_some_and(|e| e.contains("restarted on request")), "{:?}", s.last_exit);
    // Errors are clear.
    let (ok, _, err) = p.cli(&["attach", "writer"]);
    assert!(!ok && err.contains("not detached"), "{err}");
    assert!(p.shutdown());
}

/// `status --json` during and after an acquisition reports what the simulator sent: datagrams, the ones it
/// dropped (missing blocks) and the ones it corrupted (invalid, by reason); the metrics endpoint serves valid
/// Prometheus text with the same counters.
#[test]
fn status_json_and_metrics_count_what_the_simulator_sent() {
    let _g = ringdaq_tests::serial();
    const FRAMES: u64 = 60;
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("port").local_addr().expect("addr").port();
    let p = Pipeline::start_with_rings(&format!(
        "metrics = \"127.0.0.1:{port}\"\n{}",
        ringdaq_tests::pipeline::SMALL_RINGS
    ));
    let (id, _path) = p.acquire(FRAMES, "counted.npy", SyncMode::Immediate);
    let mut cfg = p.sim_config(FRAMES + 10, 100.0);
    cfg.drop = 0.002;
    cfg.corrupt = 0.002;
    cfg.seed = 11;
    let (sim, during) = std::thread::scope(|s| {
        let h = s.spawn(|| p.simulate(cfg));
        // While it runs: the rates are live.
        let during = wait_for(Duration::from_secs(5), || {
            let (ok, out, _) = p.cli(&["status", "--json"]);
            let v: serde_json::Value = serde_json::from_str(&out).ok()?;
            let r = v["rates"].as_array()?.iter().find(|r| r[0] == "frames_per_s")?[1].as_f64()?;
            (ok && r > 10.0).then_some(v)
        });
        (h.join().expect("simulator"), during)
    });
    let during = during.expect("a live frame rate during the stream");
    assert_eq!(during["stages"].as_array().map(Vec::len), Some(3));
    let st = p.wait(id, Duration::from_secs(60));
    assert_eq!(st.state, "done");
    // A corrupted frame id is held as a reset candidate until it expires (4 frame timeouts); then it is counted.
    let invalid = |c: &std::collections::BTreeMap<String, u64>| {
        c.iter().filter(|(k, _)| k.starts_with("assembler.invalid.")).map(|(_, v)| v).sum::<u64>()
    };
    // The last frames are published (incomplete) once their timeout passes: wait until every datagram sent is
    // accounted for, as the assertions below count them.
    ringdaq_tests::wait_for(Duration::from_secs(10), || {
        let c = p.counters();
        (invalid(&c) >= sim.corrupted && c["assembler.missing_blocks"] >= sim.dropped + sim.corrupted).then_some(())
    });
    let (ok, out, err) = p.cli(&["status", "--json"]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("status --json is JSON");
    let counters: std::collections::BTreeMap<String, u64> = v["counters"]
        .as_array()
        .expect("counters")
        .iter()
        .map(|c| (c[0].as_str().expect("name").to_string(), c[1].as_u64().expect("value")))
        .collect();
    let invalid: u64 = counters.iter().filter(|(k, _)| k.starts_with("assembler.invalid.")).map(|(_, v)| v).sum();
    assert!(sim.dropped > 0 && sim.corrupted > 0, "{sim:?}");
    assert_eq!(counters["receiver.datagrams"], sim.datagrams, "every datagram sent arrived");
    assert_eq!(invalid, sim.corrupted, "each corrupted datagram counted invalid");
    assert_eq!(counters["assembler.blocks"], sim.datagrams - sim.corrupted, "the rest placed in frames");
    assert_eq!(counters["assembler.missing_blocks"], sim.dropped + sim.corrupted, "dropped or corrupted: missing");
    assert_eq!(counters["receiver.kernel_drops"], 0);
    // Each stage counts its heap allocations (starting up allocates; `benches` shows none per datagram/frame).
    for st in ["receiver", "assembler", "writer"] {
        assert!(counters[&format!("{st}.allocations")] > 0, "{st} reports its allocations: {counters:?}");
    }
    let acq = &v["acquisitions"][0];
    assert_eq!(acq["state"], "done");
    assert_eq!(acq["frames"], FRAMES);

    // The metrics endpoint: valid exposition format, the same counters.
    let body = http_get(port, "/metrics");
    let mut seen = std::collections::BTreeMap::new();
    for line in body.lines() {
        if line.starts_with('#') {
            assert!(line.starts_with("# HELP ") || line.starts_with("# TYPE "), "comment line: {line}");
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("sample line: {line}"));
        assert!(value.parse::<f64>().is_ok(), "value of {line}");
        let name = series.split('{').next().expect("name");
        assert!(
            !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "metric name {name}"
        );
        if let Some(labels) = series.strip_prefix(name) {
            assert!(labels.is_empty() || (labels.starts_with('{') && labels.ends_with('}')), "labels of {line}");
        }
        seen.insert(series.to_string(), value.to_string());
    }
    for (name, value) in &counters {
        let m = format!("ringdaq_{}_total", name.replace('.', "_"));
        assert_eq!(seen.get(&m), Some(&value.to_string()), "{m}");
    }
    assert_eq!(seen.get("ringdaq_stage_up{stage=\"assembler\"}").map(String::as_str), Some("1"));
    assert!(http_get(port, "/other").starts_with("only /metrics"));
    assert!(p.shutdown());
}

/// A plain HTTP/1.1 GET; returns the body (asserting the status for /metrics).
fn http_get(port: u16, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect to the metrics endpoint");
    write!(s, "GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").expect("request");
    let mut resp = String::new();
    s.read_to_string(&mut resp).expect("response");
    let (head, body) = resp.split_once("\r\n\r\n").expect("head and body");
    if path == "/metrics" {
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(head.contains("text/plain; version=0.0.4"), "{head}");
    }
    body.to_string()
}

/// A stream recorded from one pipeline (`ringdaq record`) and replayed into a fresh one (`ringdaq sim --replay`)
/// gives the same frames: those the simulator made.
#[test]
fn a_recorded_stream_replayed_into_a_fresh_pipeline_gives_the_same_frames() {
    let _g = ringdaq_tests::serial();
    const FRAMES: u64 = 30;
    let g = k2::IS_GEOMETRY;
    let datagrams = FRAMES * g.blocks_per_frame() as u64;
    let keep = ringdaq_tests::TempDir::new("recording").expect("temp dir");
    let rec = keep.path().join("stream.rdq");
    let first = Pipeline::start("");
    // Once it records, send exactly FRAMES frames.
    let mut recorder = first.start_recording(datagrams, &rec);
    std::thread::sleep(Duration::from_millis(200));
    let sent = first.simulate(first.sim_config(FRAMES, 50.0));
    assert_eq!(sent.datagrams, datagrams);
    let st = recorder.wait_timeout(Duration::from_secs(30)).expect("wait").expect("the recorder stops at --datagrams");
    assert!(st.success(), "{st}");
    let (_, recorded) = supervisor::record_cmd::read_recording(&rec).expect("a recording");
    let recorded: Vec<_> = recorded.collect::<anyhow::Result<_>>().expect("readable");
    assert_eq!(recorded.len() as u64, datagrams, "every datagram recorded");
    for sector in 0..8 {
        let times: Vec<u64> = recorded.iter().filter(|d| d.sector == sector).map(|d| d.recv_ns).collect();
        assert!(times.windows(2).all(|w| w[0] <= w[1]), "sector {sector} in receive order");
    }
    assert!(first.shutdown());

    let second = Pipeline::start("");
    let (id, path) = second.acquire(FRAMES, "replayed.npy", SyncMode::Immediate);
    assert!(second.replay(&rec).contains(&format!("replayed {datagrams} datagrams")));
    let st = second.wait(id, Duration::from_secs(60));
    assert_eq!(st.state, "done", "{st:?}");
    verify_large_acquisition(&path, k2::IS, FRAMES, 0);
    assert!(second.shutdown());
}

/// `ringdaq inspect` prints the region from outside; with the supervisor stopped (SIGSTOP: wedged), it still
/// does, through /proc.
#[test]
fn inspect_reads_the_region_even_with_the_supervisor_wedged() {
    let _g = ringdaq_tests::serial();
    let p = Pipeline::start("");
    let (id, _path) = p.acquire(10, "inspected.npy", SyncMode::Immediate);
    p.simulate(p.sim_config(20, 100.0));
    assert_eq!(p.wait(id, Duration::from_secs(30)).state, "done");
    let (ok, out, err) = p.cli(&["inspect"]);
    assert!(ok, "{err}");
    assert!(
        out.contains("from the supervisor")
            && out.contains(&format!("layout version {}", shm_protocol::layout::LAYOUT_VERSION)),
        "{out}"
    );
    assert!(
        out.contains("ring 0 (block)") && out.contains("ring 1 (frame)") && out.contains("consumer 0: Gating"),
        "{out}"
    );
    assert!(out.contains("stage assembler") && out.contains("acquisition 1: done, 10 of 10 frames"), "{out}");
    let sup = rustix::process::Pid::from_raw(p.supervisor_pid() as i32).expect("pid");
    rustix::process::kill_process(sup, rustix::process::Signal::STOP).expect("stop");
    let (ok, out, err) = p.cli(&["inspect"]);
    rustix::process::kill_process(sup, rustix::process::Signal::CONT).expect("cont");
    assert!(ok, "{err}");
    assert!(out.contains("through /proc/") && out.contains("acquisition 1: done"), "{out}");
    assert!(p.shutdown());
}

/// With `RINGDAQ_LOG_FORMAT=json`, every log line of every process is a JSON object that carries its stage and
/// the acquisition id; `ringdaq top --once` renders the live view as text.
#[test]
fn json_logs_carry_stage_and_acquisition_and_top_renders() {
    let _g = ringdaq_tests::serial();
    let p = Pipeline::start_with_env("", &[("RINGDAQ_LOG_FORMAT", "json")]);
    let (id, _path) = p.acquire(20, "logged.npy", SyncMode::Immediate);
    std::thread::scope(|s| {
        let sim = s.spawn(|| p.simulate(p.sim_config(200, 100.0)));
        std::thread::sleep(Duration::from_millis(500));
        let (ok, out, err) = p.cli(&["top", "--once", "--width", "110", "--height", "30"]);
        assert!(ok, "{err}");
        for want in ["stages", "receiver", "assembler", "writer", "frames/s", "block ring", "acquisitions"] {
            assert!(out.contains(want), "top shows {want}:\n{out}");
        }
        sim.join().expect("simulator");
    });
    assert_eq!(p.wait(id, Duration::from_secs(30)).state, "done");
    let log = p.log();
    let mut stages = std::collections::BTreeSet::new();
    let mut with_acquisition = 0;
    for line in log.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        let span = &v["span"];
        let stage = span["stage"].as_str().unwrap_or_else(|| panic!("no stage: {line}"));
        assert!(span["acquisition"].is_u64(), "no acquisition id: {line}");
        stages.insert(stage.to_string());
        if span["acquisition"] == id {
            with_acquisition += 1;
        }
        let msg = v["fields"]["message"].as_str().unwrap_or_default();
        if msg == "acquisition started" || msg == "file opened" || msg == "acquisition armed" {
            assert_eq!(span["acquisition"], id, "{line}");
        }
    }
    let all: std::collections::BTreeSet<String> =
        ["supervisor", "receiver", "assembler", "writer"].iter().map(|s| s.to_string()).collect();
    assert_eq!(stages, all, "every process logs");
    assert!(with_acquisition >= 3, "lines during the acquisition carry its id:\n{log}");
    assert!(p.shutdown());
}
