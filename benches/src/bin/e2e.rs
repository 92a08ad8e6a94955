//! End to end: `ringdaq run --simulate` into files on the local disk, beside the two limits of the same machine
//! measured in the same run: a bare `recvmmsg` loop receiving the simulator's traffic, and plain `O_DIRECT`
//! writes of the same bytes to the same file system.
//!
//! `cargo build --release && cargo run --release -p ringdaq-benches --bin e2e -- [--frames 1000] [--fps 400] [--out DIR]`

use std::io::Write;
use std::net::UdpSocket;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use detector::Mode;
use detector::sim::{SimConfig, Simulator};

#[derive(Parser)]
struct Args {
    /// Frames per measurement.
    #[arg(long, default_value_t = 1000)]
    frames: u64,
    /// Frame rate the pipeline's simulator sends at (the K2 IS runs at 400).
    #[arg(long, default_value_t = 400.0)]
    fps: f64,
    /// Directory on the disk to measure (files are removed afterwards).
    #[arg(long, default_value = "/tmp")]
    out: PathBuf,
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let g = Mode::Is.geometry();
    let dir = a.out.join(format!("ringdaq-e2e-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let res = run(&a, &dir, &g);
    let _ = std::fs::remove_dir_all(&dir);
    res
}

fn run(a: &Args, dir: &Path, g: &detector::Geometry) -> anyhow::Result<()> {
    let frame_bytes = g.frame_bytes() as f64;
    let wire_per_frame = (g.block_bytes * g.blocks_per_frame()) as f64;

    // 1. The pipeline, as a user runs it.
    let exe_dir = std::env::current_exe()?.parent().context("exe dir")?.to_path_buf();
    let port = 30_000 + (std::process::id() % 20_000) as u16;
    let out = std::process::Command::new(exe_dir.join("ringdaq"))
        .arg("--runtime-dir")
        .arg(dir.join("rt"))
        .args(["run", "--simulate", "--frames", &a.frames.to_string(), "--fps", &a.fps.to_string()])
        .args(["--port-base", &port.to_string(), "--out"])
        .arg(dir)
        .output()
        .context("running ringdaq (build it first: cargo build --release)")?;
    anyhow::ensure!(out.status.success(), "ringdaq failed:\n{}", String::from_utf8_lossy(&out.stderr));
    let summary = String::from_utf8_lossy(&out.stdout).to_string();
    let side = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "json"))
        .context("no sidecar")?;
    let sc: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&side)?)?;
    let list = sc["frame_list"].as_array().context("frame_list")?;
    let first = list.iter().filter_map(|f| f["first_block_ns"].as_u64()).filter(|&t| t > 0).min().unwrap_or(0);
    let last = list.iter().filter_map(|f| f["last_block_ns"].as_u64()).max().unwrap_or(0);
    let pipe_fps = list.len() as f64 / ((last - first) as f64 / 1e9).max(1e-9);
    let complete = sc["complete_frames"].as_u64().unwrap_or(0);
    for e in std::fs::read_dir(dir)? {
        let p = e?.path();
        if p.is_file() {
            std::fs::remove_file(p)?;
        }
    }

    // 2. A bare recvmmsg loop on the same machine, the simulator sending as fast as it can.
    let (rx_fps, rx_loss) = bare_recvmmsg(a.frames, g)?;

    // 3. O_DIRECT writes of the same bytes to the same file system.
    let odirect_gbs = odirect(dir, a.frames, g.frame_bytes())?;

    println!("{summary}");
    println!("{:<44} {:>12} {:>12} {:>10}", "measurement", "frames/s", "GB/s", "ratio");
    println!(
        "{:<44} {:>12.1} {:>12.2} {:>10}",
        format!("pipeline e2e ({complete}/{} complete)", list.len()),
        pipe_fps,
        pipe_fps * frame_bytes / 1e9,
        ""
    );
    println!(
        "{:<44} {:>12.1} {:>12.2} {:>9.2}x",
        format!("bare recvmmsg loop (wire; {rx_loss} datagrams lost)"),
        rx_fps,
        rx_fps * wire_per_frame / 1e9,
        pipe_fps / rx_fps
    );
    println!(
        "{:<44} {:>12.1} {:>12.2} {:>9.2}x",
        "O_DIRECT writes of the same bytes",
        odirect_gbs * 1e9 / frame_bytes,
        odirect_gbs,
        pipe_fps * frame_bytes / 1e9 / odirect_gbs
    );
    println!("(ratios: the pipeline's frames/s over the bare receive rate, and its decoded GB/s over O_DIRECT's)");
    Ok(())
}

/// Frames/s of datagrams a plain recvmmsg loop takes from eight sockets while the simulator sends `frames`
/// frames as fast as it can, and how many datagrams it lost.
fn bare_recvmmsg(frames: u64, g: &detector::Geometry) -> anyhow::Result<(f64, u64)> {
    let mut socks = Vec::new();
    let mut base = 0;
    for b in (41_000..60_000).step_by(97) {
        let s: Result<Vec<UdpSocket>, _> = (0..8).map(|i| UdpSocket::bind(("127.0.0.1", b + i))).collect();
        if let Ok(s) = s {
            socks = s;
            base = b;
            break;
        }
    }
    anyhow::ensure!(!socks.is_empty(), "no free ports");
    for s in &socks {
        s.set_nonblocking(true)?;
        let _ = rustix::net::sockopt::set_socket_recv_buffer_size_force(s, 64 << 20);
    }
    let want = frames * g.blocks_per_frame() as u64;
    let got = AtomicU64::new(0);
    let done = AtomicBool::new(false);
    let sim = Simulator::new(SimConfig { port_base: base, frames, fps: None, ..SimConfig::default() })?;
    let (elapsed, sent) = std::thread::scope(|s| -> anyhow::Result<(f64, u64)> {
        let rx = s.spawn(|| {
            let mut bufs = vec![0u8; 64 * 22_464];
            let mut iov: Vec<libc::iovec> = (0..64)
                .map(|i| libc::iovec { iov_base: bufs[i * 22_464..].as_mut_ptr().cast(), iov_len: 22_464 })
                .collect();
            // SAFETY: mmsghdr is plain C data; each header points at its own iovec, filled below.
            let mut hdrs: Vec<libc::mmsghdr> = (0..64).map(|_| unsafe { std::mem::zeroed() }).collect();
            for (h, v) in hdrs.iter_mut().zip(iov.iter_mut()) {
                h.msg_hdr.msg_iov = v;
                h.msg_hdr.msg_iovlen = 1;
            }
            let mut t0 = None;
            let mut idle = Instant::now();
            while got.load(Ordering::Relaxed) < want
                && !(done.load(Ordering::Relaxed) && idle.elapsed() > Duration::from_millis(500))
            {
                let mut any = false;
                for sck in &socks {
                    // SAFETY: the headers point at live buffers of the stated sizes for the whole call.
                    let n = unsafe {
                        libc::recvmmsg(sck.as_raw_fd(), hdrs.as_mut_ptr(), 64, libc::MSG_DONTWAIT, std::ptr::null_mut())
                    };
                    if n > 0 {
                        t0.get_or_insert_with(Instant::now);
                        got.fetch_add(n as u64, Ordering::Relaxed);
                        any = true;
                    }
                }
                if any {
                    idle = Instant::now();
                } else {
                    let mut fds: Vec<_> =
                        socks.iter().map(|s| rustix::event::PollFd::new(s, rustix::event::PollFlags::IN)).collect();
                    let _ = rustix::event::poll(
                        &mut fds,
                        Some(&rustix::event::Timespec { tv_sec: 0, tv_nsec: 10_000_000 }),
                    );
                }
            }
            t0.map_or(0.0, |t| t.elapsed().as_secs_f64())
        });
        let r = sim.run(&AtomicBool::new(false))?;
        done.store(true, Ordering::Relaxed);
        let secs = rx.join().map_err(|_| anyhow::anyhow!("receiver panicked"))?;
        Ok((secs, r.datagrams))
    })?;
    let got = got.load(Ordering::Relaxed);
    let fps = got as f64 / g.blocks_per_frame() as f64 / elapsed.max(1e-9);
    Ok((fps, sent.saturating_sub(got)))
}

/// GB/s of `frames` page-aligned frame-sized O_DIRECT writes (then fsync) to a file in `dir`.
fn odirect(dir: &Path, frames: u64, frame_bytes: usize) -> anyhow::Result<f64> {
    let path = dir.join("odirect.bin");
    let mut f =
        std::fs::OpenOptions::new().write(true).create(true).truncate(true).custom_flags(libc::O_DIRECT).open(&path)?;
    let layout = std::alloc::Layout::from_size_align(frame_bytes, 4096)?;
    // SAFETY: non-zero size; freed below with the same layout.
    let buf = unsafe { std::alloc::alloc_zeroed(layout) };
    anyhow::ensure!(!buf.is_null(), "allocation failed");
    // SAFETY: buf holds frame_bytes initialised (zeroed) bytes until dealloc.
    let slice = unsafe { std::slice::from_raw_parts(buf, frame_bytes) };
    let t = Instant::now();
    let mut res = Ok(());
    for _ in 0..frames {
        if let Err(e) = f.write_all(slice) {
            res = Err(e);
            break;
        }
    }
    let r = res.and_then(|_| f.sync_all());
    let secs = t.elapsed().as_secs_f64();
    // SAFETY: allocated above with this layout.
    unsafe { std::alloc::dealloc(buf, layout) };
    r?;
    let _ = std::fs::remove_file(&path);
    Ok(frames as f64 * frame_bytes as f64 / secs / 1e9)
}
