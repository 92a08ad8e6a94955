//! Running as a systemd service: with `$NOTIFY_SOCKET` set (as systemd does for `Type=notify`), `ringdaq run`
//! says READY=1 once every stage runs and STOPPING=1 when it shuts down.

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use ringdaq_tests::TempDir;
use ringdaq_tests::pipeline::Pipeline;

/// The notification messages received within `timeout`, until one contains `want`.
fn receive_until(sock: &UnixDatagram, want: &str, timeout: Duration) -> Vec<String> {
    let deadline = Instant::now() + timeout;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        let _ = sock
            .set_read_timeout(Some(deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1))));
        match sock.recv(&mut buf) {
            Ok(n) => {
                let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                let done = msg.lines().any(|l| l == want);
                got.push(msg);
                if done {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    got
}

#[test]
fn tells_systemd_when_ready_and_when_stopping() {
    let _g = ringdaq_tests::serial();
    let dir = TempDir::new("notify").expect("temp dir");
    let path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&path).expect("notify socket");
    let p = Pipeline::start_with_env("", &[("NOTIFY_SOCKET", path.to_str().expect("utf-8 path"))]);
    let ready = receive_until(&sock, "READY=1", Duration::from_secs(20));
    assert!(ready.iter().any(|m| m.lines().any(|l| l == "READY=1")), "no READY=1: {ready:?}\n{}", p.log());
    // Ready means running: every stage is up when systemd is told so.
    let st = p.status();
    assert!(st.stages.iter().all(|s| s.state == "running"), "{st:?}");
    assert!(p.shutdown());
    let stopping = receive_until(&sock, "STOPPING=1", Duration::from_secs(10));
    assert!(stopping.iter().any(|m| m.lines().any(|l| l == "STOPPING=1")), "no STOPPING=1: {stopping:?}");
}

/// Split logs (what `ringdaq run` does at a terminal): every line of every process in the file, only warnings
/// and errors on stderr; after ten acquisitions each line still carries one `acquisition` field.
#[test]
fn split_logs_keep_one_acquisition_field_per_line() {
    use shm_protocol::messages::SyncMode;
    let _g = ringdaq_tests::serial();
    let dir = TempDir::new("logs").expect("temp dir");
    let file = dir.path().join("full.log");
    let p = Pipeline::start_with_env("", &[(shm_protocol::logging::FILE_ENV, file.to_str().expect("utf-8 path"))]);
    for k in 1..=10u64 {
        let (id, _path) = p.acquire(2, &format!("a{k}.npy"), SyncMode::Immediate);
        p.simulate(p.sim_config(4, 100.0));
        let st = p.wait(id, Duration::from_secs(30));
        assert_eq!(st.state, "done", "{st:?}");
    }
    let full = std::fs::read_to_string(&file).expect("the full log");
    for stage in ["supervisor", "receiver", "assembler", "writer"] {
        assert!(full.contains(&format!("stage=\"{stage}\"")), "{stage} logs to the file:\n{full}");
    }
    assert!(full.contains("acquisition=10"), "the tenth acquisition is logged:\n{full}");
    for line in full.lines() {
        // The process span `ringdaq{stage=.. pid=.. acquisition=..}` (events may add fields of their own after it).
        let Some(span) = line.split_once("ringdaq{").and_then(|(_, rest)| rest.split_once("}:")).map(|(s, _)| s) else {
            continue;
        };
        assert_eq!(span.matches("acquisition=").count(), 1, "{line}");
    }
    let terminal = p.log();
    assert!(!terminal.contains(" INFO "), "only warnings and errors on stderr:\n{terminal}");
    assert!(p.shutdown());
}
