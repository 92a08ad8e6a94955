//! Ring hand-off between two processes, beside a Unix stream socket and a pipe carrying the same items.
//!
//! `cargo run --release -p ringdaq-benches --bin handoff [-- --items N --samples N]`
//!
//! Throughput: the parent sends N 8-byte items as fast as it can; the child takes each one (the ring: one slot
//! per item, committed one by one). Latency: the parent sends one timestamped item every `--interval-us` (200 µs)
//! to a child that is asleep waiting for it (futex for the ring, a blocking read for the others); the child records how long
//! after the timestamp it had the item. Prints a table with the ratios against the Unix socket. The parent runs
//! on CPU 0, the child on CPU 1.

use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use serde_like::*;
use shm_protocol::layout::{ConsumerMode, Geometry, RegionSpec, RingKind, RingSpec};
use shm_protocol::{Access, Connection, ControlListener, Region, StartAt};

#[derive(Parser)]
struct Args {
    /// Items for the throughput runs.
    #[arg(long, default_value_t = 2_000_000)]
    items: u64,
    /// Samples for the latency runs.
    #[arg(long, default_value_t = 5_000)]
    samples: u64,
    /// Leave CPU placement to the scheduler (by default the parent runs on CPU 0 and the child on CPU 1).
    #[arg(long)]
    no_pin: bool,
    /// Microseconds between latency samples: how long the consumer sleeps before each (a frame period is
    /// 2500 at 400 frames/s; on a virtual machine, a long sleep can cost a slow wake-up of its CPU).
    #[arg(long, default_value_t = 200)]
    interval_us: u64,
    /// (internal) run as the child, connecting to this control socket.
    #[arg(long, hide = true)]
    child: Option<std::path::PathBuf>,
}

/// Messages between parent and child, as plain u64 vectors (postcard-encoded by the control channel).
mod serde_like {
    /// Transport ids.
    pub const RING: u64 = 0;
    pub const UNIX: u64 = 1;
    pub const PIPE: u64 = 2;
    /// Modes.
    pub const THROUGHPUT: u64 = 0;
    pub const LATENCY: u64 = 1;
    pub const NAMES: [&str; 3] = ["ring (shared memory)", "Unix stream socket", "pipe"];
}

fn now_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

/// Pins this process to `cpu` (if the machine has it), so that producer and consumer run on different cores
/// and the numbers do not depend on where the scheduler happened to put them.
fn pin(cpu: usize) {
    if std::thread::available_parallelism().is_ok_and(|n| n.get() > cpu) {
        let mut set = rustix::thread::CpuSet::new();
        set.set(cpu);
        let _ = rustix::thread::sched_setaffinity(None, &set);
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(path) = &args.child {
        if std::env::var_os("RINGDAQ_HANDOFF_NO_PIN").is_none() {
            pin(1);
        }
        return child(path);
    }
    if args.no_pin {
        // SAFETY: set before any thread is started; the children inherit it.
        unsafe { std::env::set_var("RINGDAQ_HANDOFF_NO_PIN", "1") };
    } else {
        pin(0);
    }
    let dir = std::env::temp_dir().join(format!("ringdaq-handoff-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let sock = dir.join("control.sock");
    let listener = ControlListener::bind(&sock)?;
    let mut rows = Vec::new();
    let interval = Duration::from_micros(args.interval_us);
    for transport in [RING, UNIX, PIPE] {
        let tput = run(&listener, &sock, transport, THROUGHPUT, args.items, interval)?;
        let lat = run(&listener, &sock, transport, LATENCY, args.samples, interval)?;
        rows.push((transport, tput, lat));
    }
    let _ = std::fs::remove_dir_all(&dir);
    let unix_rate = rows.iter().find(|r| r.0 == UNIX).map_or(1.0, |r| r.1[0] as f64);
    println!(
        "two-process hand-off of 8-byte items ({} items, {} latency samples {} µs apart)",
        args.items, args.samples, args.interval_us
    );
    println!(
        "{:<22} {:>14} {:>9} {:>10} {:>10} {:>10}",
        "transport", "items/s", "vs unix", "p50 µs", "p99 µs", "p99.9 µs"
    );
    for (t, tput, lat) in &rows {
        let mut l: Vec<f64> = lat.iter().map(|&ns| ns as f64 / 1000.0).collect();
        l.sort_by(f64::total_cmp);
        println!(
            "{:<22} {:>14.0} {:>8.1}x {:>10.1} {:>10.1} {:>10.1}",
            NAMES[*t as usize],
            tput[0] as f64,
            tput[0] as f64 / unix_rate,
            ringdaq_benches::percentile(&l, 50.0),
            ringdaq_benches::percentile(&l, 99.0),
            ringdaq_benches::percentile(&l, 99.9)
        );
    }
    Ok(())
}

/// Runs one measurement with a fresh child; returns what the child reports (items/s, or latencies in ns).
fn run(
    listener: &ControlListener,
    sock: &std::path::Path,
    transport: u64,
    mode: u64,
    n: u64,
    interval: Duration,
) -> anyhow::Result<Vec<u64>> {
    let exe = std::env::current_exe()?;
    let mut child = std::process::Command::new(exe).arg("--child").arg(sock).spawn()?;
    let conn = listener.accept()?;
    let result = match transport {
        RING => {
            let region = Region::create(&RegionSpec {
                geometry: Geometry::default(),
                rings: vec![RingSpec { kind: RingKind::Bytes, slot_count: 1024, slot_bytes: 64, max_consumers: 1 }],
                app_bytes: 0,
            })?;
            let ring = region.ring(0)?;
            ring.activate_consumer(0, ConsumerMode::Gating, StartAt::Seq(0))?;
            conn.send_with_fds(&vec![transport, mode, n], &[region.fd()])?;
            let mut p = ring.producer()?;
            wait_ready(&conn)?;
            for i in 0..n {
                let mut s = p.claim(None)?;
                let v = if mode == LATENCY { now_ns() } else { i };
                s.bytes_mut()[..8].copy_from_slice(&v.to_le_bytes());
                s.publish();
                if mode == LATENCY {
                    std::thread::sleep(interval);
                }
            }
            collect(conn)?
        }
        UNIX | PIPE => {
            let (mut tx, rx): (std::fs::File, OwnedFd) = if transport == UNIX {
                let (a, b) = std::os::unix::net::UnixStream::pair()?;
                (OwnedFd::from(a).into(), OwnedFd::from(b))
            } else {
                let (r, w) = rustix::pipe::pipe()?;
                (w.into(), r)
            };
            conn.send_with_fds(&vec![transport, mode, n], &[rx.as_fd()])?;
            drop(rx);
            wait_ready(&conn)?;
            for i in 0..n {
                let v = if mode == LATENCY { now_ns() } else { i };
                tx.write_all(&v.to_le_bytes())?;
                if mode == LATENCY {
                    std::thread::sleep(interval);
                }
            }
            collect(conn)?
        }
        _ => bail!("unknown transport"),
    };
    let st = child.wait()?;
    anyhow::ensure!(st.success(), "child failed: {st}");
    Ok(result)
}

fn wait_ready(conn: &Connection) -> anyhow::Result<()> {
    let mut c = Connection::from_inherited(conn.as_fd().try_clone_to_owned()?)?;
    let _: Vec<u64> = c.recv()?.msg;
    Ok(())
}

fn collect(conn: Connection) -> anyhow::Result<Vec<u64>> {
    let mut c = conn;
    c.set_recv_timeout(Some(Duration::from_secs(120)))?;
    Ok(c.recv::<Vec<u64>>()?.msg)
}

fn child(path: &std::path::Path) -> anyhow::Result<()> {
    let mut conn = Connection::connect(path)?;
    let got = conn.recv::<Vec<u64>>()?;
    let (transport, mode, n) = (got.msg[0], got.msg[1], got.msg[2]);
    let fd = got.fds.into_iter().next().context("no fd")?;
    let mut lat = Vec::with_capacity(if mode == LATENCY { n as usize } else { 0 });
    let mut first = None;
    match transport {
        RING => {
            let region = Region::attach(fd, Access::ReadWrite)?;
            let ring = region.ring(0)?;
            let mut c = ring.consumer(0)?;
            conn.send(&vec![0u64])?;
            for i in 0..n {
                let r = c.next(None)?;
                let seq = r.seq();
                let v = u64::from_le_bytes(r.bytes().context("a gating consumer's slot is stable")?[..8].try_into()?);
                let t = now_ns();
                first.get_or_insert_with(Instant::now);
                if mode == LATENCY {
                    lat.push(t.saturating_sub(v));
                } else if v != i {
                    bail!("item {i} is {v}");
                }
                c.commit(seq + 1);
            }
        }
        _ => {
            let mut f = std::fs::File::from(fd);
            conn.send(&vec![0u64])?;
            let mut b = [0u8; 8];
            for i in 0..n {
                f.read_exact(&mut b)?;
                let t = now_ns();
                first.get_or_insert_with(Instant::now);
                let v = u64::from_le_bytes(b);
                if mode == LATENCY {
                    lat.push(t.saturating_sub(v));
                } else if v != i {
                    bail!("item {i} is {v}");
                }
            }
        }
    }
    let secs = first.map_or(0.0, |f| f.elapsed().as_secs_f64());
    if mode == THROUGHPUT {
        conn.send(&vec![((n - 1) as f64 / secs.max(1e-9)) as u64])?;
    } else {
        conn.send(&lat)?;
    }
    Ok(())
}
