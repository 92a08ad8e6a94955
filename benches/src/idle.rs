//! Idle cost: CPU time that the whole pipeline (supervisor and three stages) spends with no traffic.

use std::time::{Duration, Instant};

use crate::pipeline::Pipeline;
use crate::procfs;

/// What one process cost while the pipeline was idle.
#[derive(Debug, Clone)]
pub struct ProcessCost {
    /// `supervisor`, `receiver`, ...
    pub name: String,
    /// CPU seconds, all threads.
    pub cpu_s: f64,
    /// Context switches, all threads (how often it woke).
    pub switches: u64,
}

/// Per process, the cost over `secs` seconds of an idle pipeline; and the seconds actually measured.
pub fn measure(p: &mut Pipeline, secs: f64) -> anyhow::Result<(Vec<ProcessCost>, f64)> {
    let pids = p.pids()?;
    let read = |pid: u32| -> anyhow::Result<(u64, u64)> { Ok((procfs::cpu_ns(pid)?, procfs::context_switches(pid)?)) };
    let before: Vec<(u64, u64)> = pids.iter().map(|(_, pid)| read(*pid)).collect::<anyhow::Result<_>>()?;
    let t = Instant::now();
    std::thread::sleep(Duration::from_secs_f64(secs));
    let after: Vec<(u64, u64)> = pids.iter().map(|(_, pid)| read(*pid)).collect::<anyhow::Result<_>>()?;
    let elapsed = t.elapsed().as_secs_f64();
    anyhow::ensure!(p.pids()? == pids, "a process was restarted during the idle measurement");
    let rows = pids
        .iter()
        .zip(before.iter().zip(&after))
        .map(|((name, _), (b, a))| ProcessCost {
            name: name.clone(),
            cpu_s: (a.0 - b.0) as f64 / 1e9,
            switches: a.1 - b.1,
        })
        .collect();
    Ok((rows, elapsed))
}
