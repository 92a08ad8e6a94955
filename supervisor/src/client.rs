//! The client commands: `acquire`, `status`, `stop`, `shutdown`, talking to a running supervisor.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::bail;
use clap::{Args, ValueEnum};
use shm_protocol::control::Connection;
use shm_protocol::messages::{
    AcquisitionState, AcquisitionStatus, CONTINUOUS, Compression, EndReason, Reply, Request, StatusReport, SyncMode,
};

use shm_protocol::pipeline::client::ClientError;

use crate::config;

/// A connection to the supervisor in `runtime_dir`, past the hello.
pub fn connect(runtime_dir: &Path) -> anyhow::Result<Connection> {
    Ok(shm_protocol::pipeline::client::connect(runtime_dir)?)
}

/// Sends a request and returns the reply; an `Error` reply becomes an error.
pub fn call(conn: &mut Connection, req: Request) -> anyhow::Result<Reply> {
    Ok(shm_protocol::pipeline::client::call(conn, &req)?.msg)
}

/// `--sync` values.
#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum SyncArg {
    /// Frame 0 is the first frame whose first block arrives after arming.
    Immediate,
    /// Frame 0 is the first frame with the detector's sync flag.
    Flag,
}

/// `--compression` values.
#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum CompressionArg {
    /// Frames as they are.
    None,
    /// Bitshuffle + LZ4 (HDF5 filter 32008; h5py reads it with hdf5plugin). `.h5` only.
    Bslz4,
}

/// Options of `ringdaq acquire`.
#[derive(Debug, Clone, Args)]
pub struct AcquireArgs {
    /// Frames to acquire; without it, the acquisition runs until `ringdaq stop` (continuous: the file grows in
    /// steps).
    #[arg(long)]
    pub frames: Option<u64>,
    /// Output file, .npy or .h5 (the extension chooses the format; its sidecar is the same path with .json).
    #[arg(long, required_unless_present = "live")]
    pub out: Option<PathBuf>,
    /// A live-only acquisition: its frames go to subscribed consumers (with the acquisition's id and indices;
    /// lossless ones gate them), and nothing is written.
    #[arg(long, conflicts_with = "out")]
    pub live: bool,
    /// How frames are stored: `bslz4` (bitshuffle + LZ4) needs an .h5 output.
    #[arg(long, value_enum, default_value = "none")]
    pub compression: CompressionArg,
    /// When frame 0 is.
    #[arg(long, value_enum, default_value = "immediate")]
    pub sync: SyncArg,
    /// Wait until the file is final, showing progress; exit non-zero if the acquisition fails or ends short
    /// (stream idle, pipeline stopped or shut down), with the reason; 0 when complete or stopped by the user.
    #[arg(long)]
    pub wait: bool,
}

/// `ringdaq acquire`.
pub fn acquire(runtime_dir: &Path, a: &AcquireArgs) -> anyhow::Result<()> {
    let path = match &a.out {
        Some(out) if out.is_absolute() => out.clone(),
        Some(out) => std::env::current_dir()?.join(out),
        // Live-only: the empty path.
        None => PathBuf::new(),
    };
    let to = if a.live { "consumers only (live)".to_string() } else { path.display().to_string() };
    let sync = match a.sync {
        SyncArg::Immediate => SyncMode::Immediate,
        SyncArg::Flag => SyncMode::Flag,
    };
    let mut conn = connect(runtime_dir)?;
    let frames = a.frames.unwrap_or(CONTINUOUS);
    let compression = match a.compression {
        CompressionArg::None => Compression::None,
        CompressionArg::Bslz4 => Compression::Bslz4,
    };
    let req = Request::Acquire { frames, path: path.display().to_string(), sync, compression };
    let Reply::Armed { id } = call(&mut conn, req)? else { bail!("unexpected reply to acquire") };
    match a.frames {
        Some(n) => eprintln!("acquisition {id} armed: {n} frames to {to}"),
        None => eprintln!("acquisition {id} armed: frames to {to} until `ringdaq stop`"),
    }
    if !a.wait {
        println!("{id}");
        return Ok(());
    }
    let st = wait_for(runtime_dir, &mut conn, id, true)?;
    finish_message(&st)
}

/// Polls acquisition `id` until it is done or failed; shows progress on stderr if `progress`.
///
/// If the supervisor goes away meanwhile, it waits for a successor (a supervisor that died is replaced by a new
/// `ringdaq run`, which adopts the pipeline and its acquisitions; see [`reconnect`]) and asks it about the same
/// acquisition. If none comes (the pipeline stopped), the final state is read from the sidecar the writer left
/// beside the file; without one, the error says what was last known.
pub fn wait_for(
    runtime_dir: &Path,
    conn: &mut Connection,
    id: u64,
    progress: bool,
) -> anyhow::Result<AcquisitionStatus> {
    let t = Instant::now();
    let mut last: Option<AcquisitionStatus> = None;
    loop {
        let st = match call(conn, Request::Acquisition { id }) {
            Ok(Reply::Acquisition(st)) => st,
            Ok(_) => bail!("unexpected reply"),
            Err(e) => {
                // The connection broke (a supervisor that died): a successor that adopts the pipeline answers.
                let broken = e.downcast_ref::<ClientError>().is_some_and(ClientError::is_broken);
                if let Some(c) = broken.then(|| reconnect(runtime_dir)).flatten() {
                    *conn = c;
                    continue;
                }
                if progress {
                    eprintln!();
                }
                return last.as_ref().and_then(from_sidecar).ok_or_else(|| {
                    let seen = last.as_ref().map_or_else(String::new, |s| {
                        format!(" (last seen {}: {} frames written to {})", s.state, s.written, s.path)
                    });
                    e.context(format!("the pipeline stopped before acquisition {id} ended{seen}"))
                });
            }
        };
        if progress {
            let rate = st.written as f64 / t.elapsed().as_secs_f64().max(1e-3);
            if st.continuous {
                eprint!("\r{:>8}: {} frames written, {:.0} frames/s   ", st.state, st.written, rate);
            } else {
                // No frame yet (armed, or waiting for the sync flag): no rate, so no time left to tell.
                let left = if st.written > 0 {
                    format!("{:.0} frames/s, {:.1} s left", rate, st.frames.saturating_sub(st.written) as f64 / rate)
                } else {
                    "waiting for the first frame".to_string()
                };
                eprint!("\r{:>8}: {}/{} frames written, {left}   ", st.state, st.written, st.frames);
            }
            let _ = std::io::stderr().flush();
        }
        if st.state.is_over() {
            if progress {
                eprintln!();
            }
            return Ok(st);
        }
        last = Some(st);
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// How long a client waits for a successor of a supervisor that died: as long as its stages wait
/// (`orphan_timeout_s`, 30 s by default), with room for the successor's start.
pub const RECONNECT_WAIT: Duration = Duration::from_secs(40);

/// A new connection to the supervisor of `runtime_dir` after the last one closed: the supervisor died and a
/// successor is taking the pipeline over (it answers within milliseconds of starting), or it stopped for good
/// (its control socket is gone once it exits cleanly: `None` at once). Tries every 50 ms, for at most
/// [`RECONNECT_WAIT`], while the socket file is there.
pub fn reconnect(runtime_dir: &Path) -> Option<Connection> {
    let sock = config::control_socket(runtime_dir);
    let t = Instant::now();
    while t.elapsed() < RECONNECT_WAIT && sock.exists() {
        if let Ok(c) = connect(runtime_dir) {
            return Some(c);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

/// The final state of acquisition `last` as its sidecar records it, if the writer finished its file.
fn from_sidecar(last: &AcquisitionStatus) -> Option<AcquisitionStatus> {
    let side = writer::sidecar_path(Path::new(&last.path));
    let s: writer::Sidecar = serde_json::from_slice(&std::fs::read(side).ok()?).ok()?;
    (s.acquisition_id == last.id).then(|| AcquisitionStatus {
        state: AcquisitionState::Done,
        assigned: s.frames,
        written: s.frames,
        complete: s.complete_frames,
        error: None,
        ended: s.ended,
        reason: s.reason,
        ..last.clone()
    })
}

/// What `acquire --wait` prints when acquisition `st` is over, and whether it exits 0: when complete or stopped
/// by the user; otherwise the error names how it ended and why.
fn finish_message(st: &AcquisitionStatus) -> anyhow::Result<()> {
    if let Some(e) = &st.error {
        bail!("acquisition {} failed: {e}", st.id);
    }
    let got = format!("{} frames ({} complete) in {}", st.assigned, st.complete, st.path);
    let reason = st.reason.as_deref().unwrap_or("no reason recorded");
    match st.ended {
        None | Some(EndReason::Complete) => println!("acquisition {} done: {got}", st.id),
        Some(e) if e.as_asked() => println!("acquisition {} {e}: {got}", st.id),
        Some(e) if st.continuous => bail!("acquisition {} ended ({e}): {reason}; kept {got}", st.id),
        Some(e) => {
            bail!("acquisition {} ended short ({e}) with {} of {}: {reason}; kept {got}", st.id, st.assigned, st.frames)
        }
    }
    Ok(())
}

/// `ringdaq status`.
pub fn status(runtime_dir: &Path, json: bool) -> anyhow::Result<()> {
    let mut conn = connect(runtime_dir)?;
    let Reply::Status(s) = call(&mut conn, Request::Status)? else { bail!("unexpected reply to status") };
    if json {
        println!("{}", serde_json::to_string_pretty(&*s)?);
    } else {
        print!("{}", render_status(&s));
    }
    Ok(())
}

/// The human-readable form of a status report.
pub fn render_status(s: &StatusReport) -> String {
    use std::fmt::Write as _;
    let mut o = String::new();
    let _ = writeln!(o, "ringdaq (pid {}, mode {}, up {} s)", s.pid, s.mode, s.uptime_s);
    for st in &s.stages {
        let _ = writeln!(
            o,
            "  {:<10} {:<10} pid {:<8} up {:>6} s  restarts {:<3} {}",
            st.name,
            st.state,
            st.pid,
            st.uptime_s,
            st.restarts,
            st.last_exit.as_deref().map(|e| format!("last: {e}")).unwrap_or_default()
        );
    }
    let rate = |n: &str| s.rates.iter().find(|(k, _)| k == n).map_or(0.0, |(_, v)| *v);
    let _ = writeln!(
        o,
        "  rates: {:.0} datagrams/s, {:.1} frames/s, {:.1} MB/s received, {:.1} MB/s written",
        rate("datagrams_per_s"),
        rate("frames_per_s"),
        rate("receive_mb_per_s"),
        rate("write_mb_per_s")
    );
    let _ = writeln!(
        o,
        "  rings: block {}/{} slots in use, frame {}/{} slots in use",
        s.block_ring_used, s.block_ring_slots, s.frame_ring_used, s.frame_ring_slots
    );
    if rate("compress_cores") > 0.0 {
        // Compression runs before the writer commits a frame: frames not yet compressed wait in the frame ring.
        let _ = writeln!(
            o,
            "  compression: {:.2} cores busy, {:.1} MB/s out of {:.1} MB/s in, backlog {} frames in the frame ring",
            rate("compress_cores"),
            rate("compressed_mb_per_s"),
            rate("write_mb_per_s"),
            s.frame_ring_used
        );
    }
    for (k, v) in &s.counters {
        if *v != 0 {
            let _ = writeln!(o, "  {k:<32} {v}");
        }
    }
    for a in &s.acquisitions {
        let _ = writeln!(
            o,
            "  acquisition {}: {} {}/{} frames written ({} complete) {}{}{}",
            a.id,
            a.state,
            a.written,
            if a.continuous { "until stopped".to_owned() } else { a.frames.to_string() },
            a.complete,
            a.path,
            a.ended
                .filter(|&e| e != EndReason::Complete)
                .map(|e| format!(" ended {e}: {}", a.reason.as_deref().unwrap_or_default()))
                .unwrap_or_default(),
            a.error.as_deref().map(|e| format!(" error: {e}")).unwrap_or_default()
        );
    }
    o
}

/// How long a command that answers once its change is done (`stop`, `restart`, `detach`, `attach`) waits for
/// the answer: longer than the supervisor's own bounds (30 s for a file to be final, 10 s for a stage to drain
/// plus 20 s for a new one to be ready), so that the supervisor's error, which says what is not done, arrives.
const CHANGE_TIMEOUT: Duration = Duration::from_secs(60);

/// Sends a request that is answered once its change is done (see [`CHANGE_TIMEOUT`]).
fn call_change(runtime_dir: &Path, req: Request) -> anyhow::Result<Reply> {
    let mut conn = connect(runtime_dir)?;
    conn.set_recv_timeout(Some(CHANGE_TIMEOUT))?;
    call(&mut conn, req)
}

/// `ringdaq stop`: returns once the acquisition's file is final.
pub fn stop(runtime_dir: &Path) -> anyhow::Result<()> {
    call_change(runtime_dir, Request::Stop)?;
    eprintln!("acquisition stopped; its file is final");
    Ok(())
}

/// `ringdaq shutdown`.
pub fn shutdown(runtime_dir: &Path) -> anyhow::Result<()> {
    call(&mut connect(runtime_dir)?, Request::Shutdown)?;
    eprintln!("pipeline shutting down");
    Ok(())
}

/// `ringdaq restart STAGE`: returns once the new process is ready.
pub fn restart(runtime_dir: &Path, stage: shm_protocol::pipeline::Stage) -> anyhow::Result<()> {
    call_change(runtime_dir, Request::Restart { stage })?;
    eprintln!("the {} was restarted: the old process has exited and the new one is ready", stage.name());
    Ok(())
}

/// `ringdaq detach STAGE`: prints the command line that runs the stage by hand.
pub fn detach(runtime_dir: &Path, stage: shm_protocol::pipeline::Stage) -> anyhow::Result<()> {
    let Reply::Detached { command } = call_change(runtime_dir, Request::Detach { stage })? else {
        bail!("unexpected reply to detach")
    };
    eprintln!(
        "the {} is detached and its process has exited; run it by hand (it attaches to the pipeline), then \
         `ringdaq attach {}`:",
        stage.name(),
        stage.name()
    );
    println!("{command}");
    Ok(())
}

/// `ringdaq attach STAGE`: returns once the supervisor's process is ready.
pub fn attach(runtime_dir: &Path, stage: shm_protocol::pipeline::Stage) -> anyhow::Result<()> {
    call_change(runtime_dir, Request::Attach { stage })?;
    eprintln!("the {} is managed by the supervisor again, and its process is ready", stage.name());
    Ok(())
}
