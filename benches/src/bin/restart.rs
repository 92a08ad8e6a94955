//! Crash recovery, measured: how long from SIGKILL of a stage until its replacement works again (p50 / p99 per
//! stage), how long from SIGKILL of the supervisor until a new `ringdaq run` has adopted the running pipeline,
//! and the highest frame rate at which a receiver killed mid-stream loses no datagram.
//!
//! `cargo build --release && cargo run --release -p ringdaq-benches --bin restart -- [--kills 100]
//! [--supervisor-kills 50] [--only-supervisor] [--rates 100,200,300,400] [--frames 800] [--receiver-kills 4]`
//!
//! "Adopted" is a client's view: the new supervisor answers `status` with every stage running, and they are the
//! processes that ran before (they rejoined it and handed back the region and sockets). The time counts from the
//! kill, and includes starting the new `ringdaq run` (as systemd's `Restart=` would, without its `RestartSec`).
//!
//! "Working again" is the supervisor's view: the new process has attached the region, rebuilt its state from
//! it (the receiver its half-filled slot, the assembler its frames in flight, the writer its open file) and
//! reported ready. Each stage is killed at most once a second, so every restart takes the immediate path (a stage
//! that keeps dying within a second of its start is backed off).

use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use detector::k2;
use detector::sim::{SimConfig, Simulator};
use ringdaq_benches::pipeline::Pipeline;

#[derive(Parser)]
struct Args {
    /// Kills per stage for the latency figures.
    #[arg(long, default_value_t = 100)]
    kills: usize,
    /// Frame rates (IS mode) to try receiver kills at.
    #[arg(long, value_delimiter = ',', default_value = "100,200,300,400")]
    rates: Vec<f64>,
    /// Frames sent per rate.
    #[arg(long, default_value_t = 800)]
    frames: u64,
    /// Receiver kills per rate, spread over the stream.
    #[arg(long, default_value_t = 4)]
    receiver_kills: u32,
    /// Supervisor kills (each followed by a new `ringdaq run` that adopts the pipeline).
    #[arg(long, default_value_t = 50)]
    supervisor_kills: usize,
    /// Measure only the supervisor kills.
    #[arg(long)]
    only_supervisor: bool,
}

const STAGES: [&str; 3] = ["receiver", "assembler", "writer"];

fn kill(pid: u32) -> anyhow::Result<()> {
    let pid = rustix::process::Pid::from_raw(pid as i32).context("pid")?;
    rustix::process::kill_process(pid, rustix::process::Signal::KILL)?;
    Ok(())
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let mut p = Pipeline::start("restart", "[supervisor]\nmax_restarts = 1000000\n")?;
    supervisor_kills(&mut p, a.supervisor_kills)?;
    if a.only_supervisor {
        return Ok(());
    }
    println!("restart latency, SIGKILL -> replacement ready ({} kills per stage, idle pipeline)", a.kills);
    let mut lat: [Vec<Duration>; 3] = Default::default();
    for round in 0..a.kills {
        let round_start = Instant::now();
        for (i, stage) in STAGES.iter().enumerate() {
            let (old, _) = p.pid(stage)?;
            let t = Instant::now();
            kill(old)?;
            loop {
                let (pid, running) = p.pid(stage)?;
                if running && pid != old && pid != 0 {
                    break;
                }
                anyhow::ensure!(t.elapsed() < Duration::from_secs(10), "{stage} not back after 10 s (round {round})");
            }
            lat[i].push(t.elapsed());
        }
        // Each stage at most once a second: every restart takes the immediate path.
        std::thread::sleep(Duration::from_millis(1050).saturating_sub(round_start.elapsed()));
    }
    println!("| stage | p50 | p99 | max |");
    println!("|---|---|---|---|");
    for (i, stage) in STAGES.iter().enumerate() {
        let v = &mut lat[i];
        v.sort();
        println!(
            "| {stage} | {:.1} ms | {:.1} ms | {:.1} ms |",
            percentile(v, 0.5).as_secs_f64() * 1e3,
            percentile(v, 0.99).as_secs_f64() * 1e3,
            v[v.len() - 1].as_secs_f64() * 1e3
        );
    }

    println!();
    println!(
        "receiver killed {} times while the simulator streams {} IS frames (no acquisition armed)",
        a.receiver_kills, a.frames
    );
    println!("| frames/s asked | sent at | datagrams sent | received | kernel drops | incomplete frames | lossless |");
    println!("|---|---|---|---|---|---|---|");
    let mut best = None;
    for &fps in &a.rates {
        let r = receiver_kills_at(&mut p, fps, &a)?;
        println!(
            "| {fps} | {:.0} | {} | {} | {} | {} | {} |",
            r.sent_fps,
            r.sent,
            r.received,
            r.kernel_drops,
            r.incomplete,
            if r.lossless() { "yes" } else { "no" }
        );
        if r.lossless() {
            best = Some(r.sent_fps.round());
        }
    }
    match best {
        Some(f) => println!("highest rate with no datagram lost across receiver kills: {f} frames/s"),
        None => println!("every rate lost datagrams across receiver kills"),
    }
    Ok(())
}

/// SIGKILLs the supervisor `n` times, each followed by a new `ringdaq run`; prints kill → adopted, p50 / p99.
fn supervisor_kills(p: &mut Pipeline, n: usize) -> anyhow::Result<()> {
    if n == 0 {
        return Ok(());
    }
    println!("supervisor killed -> new ringdaq run has adopted the running stages ({n} kills, idle pipeline)");
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        v.push(p.replace_supervisor()?);
        // The machine is shared: let the new supervisor settle before the next kill.
        std::thread::sleep(Duration::from_millis(200));
    }
    v.sort();
    println!("| figure | p50 | p99 | max |");
    println!("|---|---|---|---|");
    println!(
        "| supervisor kill -> pipeline adopted | {:.1} ms | {:.1} ms | {:.1} ms |",
        percentile(&v, 0.5).as_secs_f64() * 1e3,
        percentile(&v, 0.99).as_secs_f64() * 1e3,
        v[v.len() - 1].as_secs_f64() * 1e3
    );
    println!();
    Ok(())
}

struct KillRun {
    sent_fps: f64,
    sent: u64,
    received: u64,
    kernel_drops: u64,
    incomplete: u64,
}

impl KillRun {
    fn lossless(&self) -> bool {
        self.received == self.sent && self.kernel_drops == 0 && self.incomplete == 0
    }
}

/// Streams `a.frames` at `fps` while killing the receiver `a.receiver_kills` times; counts what got through.
fn receiver_kills_at(p: &mut Pipeline, fps: f64, a: &Args) -> anyhow::Result<KillRun> {
    let before = p.status()?;
    let cfg =
        SimConfig { port_base: p.port_base, frames: a.frames, fps: Some(fps), mode: k2::IS, ..Default::default() };
    let duration = Duration::from_secs_f64(a.frames as f64 / fps);
    let report = std::thread::scope(|s| -> anyhow::Result<_> {
        let sim = s.spawn(move || Simulator::new(cfg)?.run(&AtomicBool::new(false)));
        let step = duration / (a.receiver_kills + 1);
        for _ in 0..a.receiver_kills {
            std::thread::sleep(step);
            let (pid, _) = p.pid("receiver")?;
            if pid != 0 {
                kill(pid)?;
            }
        }
        Ok(sim.join().map_err(|_| anyhow::anyhow!("simulator panicked"))??)
    })?;
    // Let the pipeline drain (the last frames are published at the assembler's timeout).
    let after = p.drain(Duration::from_millis(500), Duration::from_secs(30))?;
    let d = |name: &str| Pipeline::counter(&after, name) - Pipeline::counter(&before, name);
    Ok(KillRun {
        sent_fps: report.fps(),
        sent: report.datagrams,
        received: d("receiver.datagrams"),
        kernel_drops: d("receiver.kernel_drops"),
        incomplete: d("assembler.frames_incomplete"),
    })
}
