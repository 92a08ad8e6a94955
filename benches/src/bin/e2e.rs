//! End to end: `ringdaq run --simulate` into files on the local disk, beside the two limits of the same machine
//! measured in the same run: a bare `recvmmsg` loop receiving the simulator's traffic at the same rate, and plain
//! `O_DIRECT` writes of the same bytes to the same file system.
//!
//! `cargo build --release && cargo run --release -p ringdaq-benches --bin e2e -- [--frames 1000] [--fps 400] [--out DIR]`

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Parser;
use detector::k2;

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
    let g = k2::IS_GEOMETRY;
    let dir = a.out.join(format!("ringdaq-e2e-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let res = run(&a, &dir, &g);
    let _ = std::fs::remove_dir_all(&dir);
    res
}

fn run(a: &Args, dir: &Path, g: &detector::k2::geometry::Geometry) -> anyhow::Result<()> {
    let frame_bytes = g.frame_bytes() as f64;
    let wire_per_frame = (g.block_bytes() * g.blocks_per_frame()) as f64;

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

    // 2. A bare recvmmsg loop on the same machine, the simulator sending at the same rate.
    let bare = ringdaq_benches::ingest::BareSockets::bind(supervisor::config::Config::default().recv_buffer_bytes)?;
    let t = bare.trial(k2::IS, a.fps, a.frames)?;
    let (rx_fps, rx_loss) = (t.sent_fps * t.received as f64 / t.sent.max(1) as f64, t.sent - t.received);

    // 3. O_DIRECT writes of the same bytes to the same file system.
    let secs = ringdaq_benches::write::odirect_seconds(dir, a.frames, g.frame_bytes())?;
    let odirect_gbs = a.frames as f64 * frame_bytes / secs / 1e9;

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
