//! Steady state: heap allocations per datagram and per frame once warm (each stage counts its allocations and
//! publishes the total in its record: `<stage>.allocations`), and the growth of each process's anonymous memory
//! over a long run.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use detector::k2;
use detector::sim::{SimConfig, Simulator};
use shm_protocol::messages::{AcquisitionState, Reply, Request, StatusReport, SyncMode};

use crate::pipeline::Pipeline;
use crate::procfs;

/// What a long run showed.
#[derive(Debug, Clone, Default)]
pub struct Steady {
    /// Seconds measured (after the warm-up).
    pub seconds: f64,
    /// Datagrams received and frames published while measuring.
    pub datagrams: u64,
    /// Frames published.
    pub frames: u64,
    /// Allocations of the receiver, assembler and writer while measuring (live mode: nothing written).
    pub allocations: [u64; 3],
    /// Frames written and the writer's allocations between the 20th and the last-20th frame of an acquisition.
    pub writer_frames: u64,
    /// The writer's allocations meanwhile.
    pub writer_allocations: u64,
    /// Per process: name, RssAnon KiB after the warm-up and at the end.
    pub rss: Vec<(String, u64, u64)>,
}

const STAGES: [&str; 3] = ["receiver", "assembler", "writer"];

fn allocations(s: &StatusReport) -> [u64; 3] {
    STAGES.map(|st| Pipeline::counter(s, &format!("{st}.allocations")))
}

/// Streams IS frames at `fps` for `warm_s` + `soak_s` seconds (no acquisition), then acquires `acquire` frames
/// into `dir` while streaming on.
pub fn measure(
    p: &mut Pipeline,
    fps: f64,
    warm_s: f64,
    soak_s: f64,
    acquire: u64,
    dir: &Path,
) -> anyhow::Result<Steady> {
    let pids = p.pids()?;
    let rss = |pids: &[(String, u32)]| -> anyhow::Result<Vec<u64>> {
        pids.iter().map(|(_, pid)| Ok(procfs::rss_anon_kib(*pid)?)).collect()
    };
    let mut out = Steady::default();
    let stop = AtomicBool::new(false);
    // Long enough for the soak and the acquisition; stopped when both are done.
    let frames = (fps * (warm_s + soak_s + 60.0)) as u64 + acquire;
    let cfg = SimConfig { port_base: p.port_base, frames, fps: Some(fps), mode: k2::IS, ..Default::default() };
    let sim = Simulator::new(cfg)?;
    std::thread::scope(|s| -> anyhow::Result<()> {
        let sender = s.spawn(|| sim.run(&stop));
        let res = (|| -> anyhow::Result<()> {
            std::thread::sleep(Duration::from_secs_f64(warm_s));
            let s1 = p.status()?;
            let r1 = rss(&pids)?;
            let t = Instant::now();
            std::thread::sleep(Duration::from_secs_f64(soak_s));
            let s2 = p.status()?;
            let r2 = rss(&pids)?;
            out.seconds = t.elapsed().as_secs_f64();
            let d = |n: &str| Pipeline::counter(&s2, n) - Pipeline::counter(&s1, n);
            out.datagrams = d("receiver.datagrams");
            out.frames = d("assembler.frames_complete") + d("assembler.frames_incomplete");
            let (a1, a2) = (allocations(&s1), allocations(&s2));
            out.allocations = [0, 1, 2].map(|i| a2[i] - a1[i]);
            out.rss = pids.iter().zip(r1.iter().zip(&r2)).map(|((n, _), (a, b))| (n.clone(), *a, *b)).collect();

            // The writer's frame path: allocations between two points well inside an acquisition.
            let path = dir.join(format!("steady-{}.npy", std::process::id()));
            let id = match p.call(Request::Acquire {
                frames: acquire,
                path: path.to_string_lossy().into_owned(),
                sync: SyncMode::Immediate,
                compression: Default::default(),
            })? {
                Reply::Armed { id } => id,
                other => anyhow::bail!("acquire: {other:?}"),
            };
            let progress = |p: &mut Pipeline| -> anyhow::Result<(u64, AcquisitionState, u64)> {
                let a = match p.call(Request::Acquisition { id })? {
                    Reply::Acquisition(a) => a,
                    other => anyhow::bail!("acquisition: {other:?}"),
                };
                let w = allocations(&p.status()?)[2];
                Ok((a.written, a.state, w))
            };
            let t = Instant::now();
            let mut marks = Vec::new();
            loop {
                let (written, state, w) = progress(p)?;
                if (marks.is_empty() && written >= 20) || (marks.len() == 1 && written + 20 >= acquire) {
                    marks.push((written, w));
                }
                if state.is_over() || t.elapsed() > Duration::from_secs(120) {
                    anyhow::ensure!(state == AcquisitionState::Done, "the acquisition ended {state}");
                    break;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            if let [(w1, a1), (w2, a2)] = marks[..] {
                out.writer_frames = w2 - w1;
                out.writer_allocations = a2 - a1;
            }
            let _ = std::fs::remove_file(&path);
            let _ = std::fs::remove_file(writer::sidecar_path(&path));
            Ok(())
        })();
        stop.store(true, Ordering::Relaxed);
        sender.join().map_err(|_| anyhow::anyhow!("simulator panicked"))??;
        res
    })?;
    Ok(out)
}
