//! The pipeline's counters for monitoring systems: `GET /metrics` in the Prometheus text exposition format
//! (version 0.0.4), served over plain HTTP by `ringdaq run --metrics ADDR`.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use shm_protocol::messages::{StageLabel, StatusReport};

use crate::daemon::Supervisor;

/// Serves `listener` until the pipeline shuts down; each request is answered from a fresh status report.
pub fn serve(sup: &Arc<Supervisor>, listener: TcpListener) {
    if let Err(e) = listener.set_nonblocking(true) {
        tracing::error!(error = %e, "metrics listener");
        return;
    }
    while !sup.shutting_down() {
        match listener.accept() {
            Ok((stream, _)) => {
                if let Err(e) = answer(sup, stream) {
                    tracing::debug!(error = %e, "metrics request");
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => {
                tracing::warn!(error = %e, "metrics accept");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

fn answer(sup: &Supervisor, mut stream: TcpStream) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.set_write_timeout(Some(Duration::from_secs(2)))?;
    // The request head, at most 8 KiB; the body (if any) is ignored.
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 8192 {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&head);
    let mut words = line.split_whitespace();
    let (status, body) = match (words.next(), words.next()) {
        (Some("GET"), Some("/metrics")) => ("200 OK", render(&sup.status())),
        (Some("GET"), Some(_)) => ("404 Not Found", "only /metrics is served here\n".to_string()),
        _ => ("405 Method Not Allowed", "GET /metrics\n".to_string()),
    };
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    )?;
    stream.flush()
}

/// A status report in the Prometheus text format: every counter as `ringdaq_<name>_total` (dots become
/// underscores), stage, ring and acquisition gauges with labels.
pub fn render(s: &StatusReport) -> String {
    use std::fmt::Write as _;
    let mut o = String::new();
    for (name, v) in &s.counters {
        let m = format!("ringdaq_{}_total", name.replace('.', "_"));
        let _ = writeln!(o, "# HELP {m} ringdaq counter {name}.\n# TYPE {m} counter\n{m} {v}");
    }
    let gauge = |o: &mut String, m: &str, help: &str| {
        let _ = writeln!(o, "# HELP {m} {help}\n# TYPE {m} gauge");
    };
    gauge(&mut o, "ringdaq_stage_up", "1 while the stage runs and is ready.");
    for st in &s.stages {
        let _ = writeln!(o, "ringdaq_stage_up{{stage=\"{}\"}} {}", st.name, u8::from(st.state == StageLabel::Running));
    }
    gauge(&mut o, "ringdaq_stage_restarts", "Restarts of the stage since the pipeline started.");
    for st in &s.stages {
        let _ = writeln!(o, "ringdaq_stage_restarts{{stage=\"{}\"}} {}", st.name, st.restarts);
    }
    gauge(&mut o, "ringdaq_stage_uptime_seconds", "Seconds since the stage's process started.");
    for st in &s.stages {
        let _ = writeln!(o, "ringdaq_stage_uptime_seconds{{stage=\"{}\"}} {}", st.name, st.uptime_s);
    }
    gauge(&mut o, "ringdaq_ring_used_slots", "Ring slots filled and not yet consumed.");
    let _ = writeln!(o, "ringdaq_ring_used_slots{{ring=\"block\"}} {}", s.block_ring_used);
    let _ = writeln!(o, "ringdaq_ring_used_slots{{ring=\"frame\"}} {}", s.frame_ring_used);
    gauge(&mut o, "ringdaq_ring_slots", "Slots in the ring.");
    let _ = writeln!(o, "ringdaq_ring_slots{{ring=\"block\"}} {}", s.block_ring_slots);
    let _ = writeln!(o, "ringdaq_ring_slots{{ring=\"frame\"}} {}", s.frame_ring_slots);
    for (name, v) in &s.rates {
        let m = format!("ringdaq_{name}");
        gauge(&mut o, &m, "Rate over the last second.");
        let _ = writeln!(o, "{m} {v}");
    }
    gauge(&mut o, "ringdaq_acquisition_frames", "Frames of recent acquisitions, by state of the frames.");
    for a in &s.acquisitions {
        for (what, v) in
            [("requested", a.frames), ("assigned", a.assigned), ("written", a.written), ("complete", a.complete)]
        {
            let _ = writeln!(o, "ringdaq_acquisition_frames{{id=\"{}\",frames=\"{what}\"}} {v}", a.id);
        }
    }
    gauge(&mut o, "ringdaq_uptime_seconds", "Seconds since the pipeline started.");
    let _ = writeln!(o, "ringdaq_uptime_seconds {}", s.uptime_s);
    o
}
