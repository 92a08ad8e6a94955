//! HDF5 to disk through the whole pipeline: the highest frame rate of the 4D-STEM pattern that simulator →
//! receiver → assembler → writer → `.h5` on the disk takes with no frame lost, uncompressed and bitshuffle-LZ4,
//! with each process's CPU (the two cores are shared by the simulator and the three stages).

use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use detector::k2;
use detector::pattern::Pattern;
use detector::sim::{SimConfig, Simulator};
use shm_protocol::messages::{Compression, Reply, Request, SyncMode};

use crate::ingest::Trial;
use crate::pipeline::Pipeline;

/// What a disk trial measured besides the ingest figures.
#[derive(Debug, Clone, Default)]
pub struct DiskFigures {
    /// The acquisition's state at the end (`done`, `failed`, or what it was when the wait gave up).
    pub state: String,
    /// Frames written.
    pub written: u64,
    /// CPU seconds during the trial: simulator (this process), receiver, assembler, writer.
    pub cpu_s: [f64; 4],
    /// Bytes of compressed chunks written (0 without compression).
    pub compressed_bytes: u64,
    /// Seconds from the end of sending until the file was final.
    pub finish_s: f64,
}

/// A trial: an acquisition of `frames` frames into `dir` with `compression`, the simulator sending the 4D-STEM
/// pattern at `fps`. Lossless when every datagram arrived and every frame was written complete.
pub fn disk_trial(
    p: &mut Pipeline,
    dir: &Path,
    fps: f64,
    frames: u64,
    compression: Compression,
) -> anyhow::Result<(Trial, DiskFigures)> {
    let pids = [p.pid("receiver")?.0, p.pid("assembler")?.0, p.pid("writer")?.0];
    let cpu = || -> anyhow::Result<[f64; 4]> {
        let mut c = [crate::procfs::self_cpu_s(), 0.0, 0.0, 0.0];
        for (i, pid) in pids.iter().enumerate() {
            c[i + 1] = crate::procfs::process_cpu_s(*pid)?;
        }
        Ok(c)
    };
    let path = dir.join(format!("disk-{}-{fps:.0}.h5", compression.as_str()));
    let id = match p.call(Request::Acquire {
        frames,
        path: path.display().to_string(),
        sync: SyncMode::Immediate,
        compression,
    })? {
        Reply::Armed { id } => id,
        other => anyhow::bail!("acquire: {other:?}"),
    };
    let before = p.status()?;
    let cpu0 = cpu()?;
    let cfg = SimConfig {
        port_base: p.port_base,
        frames,
        fps: Some(fps),
        mode: k2::IS,
        pattern: Pattern::Stem { seed: 0 },
        ..Default::default()
    };
    let r = Simulator::new(cfg)?.run(&AtomicBool::new(false))?;
    let sent_at = Instant::now();
    // The file is final once the writer has every frame (or the acquisition ends short, idle after 5 s).
    let mut fig = DiskFigures::default();
    loop {
        if let Reply::Acquisition(st) = p.call(Request::Acquisition { id })? {
            fig.state = st.state.as_str().to_owned();
            fig.written = st.written;
            if st.state.is_over() {
                fig.finish_s = sent_at.elapsed().as_secs_f64();
                break;
            }
        }
        if sent_at.elapsed() > Duration::from_secs(120) {
            let _ = p.call(Request::Stop);
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let cpu1 = cpu()?;
    let after = p.status()?;
    let d = |name: &str| Pipeline::counter(&after, name) - Pipeline::counter(&before, name);
    fig.cpu_s = std::array::from_fn(|i| cpu1[i] - cpu0[i]);
    fig.compressed_bytes = d("writer.compressed_bytes");
    let complete = match p.call(Request::Acquisition { id })? {
        Reply::Acquisition(st) if st.state.as_str() == "done" && st.written == frames => st.complete,
        _ => 0,
    };
    let _ = std::fs::remove_file(&path);
    let _ = std::fs::remove_file(writer::sidecar_path(&path));
    let trial = Trial {
        asked: fps,
        sent_fps: r.fps(),
        sent: r.datagrams,
        received: d("receiver.datagrams"),
        complete: Some(complete),
        frames,
        receive_cpu_s: fig.cpu_s[1],
        assembler_cpu_s: Some(fig.cpu_s[2]),
    };
    Ok((trial, fig))
}
