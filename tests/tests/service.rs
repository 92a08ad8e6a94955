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
