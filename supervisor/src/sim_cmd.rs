//! `ringdaq sim`: the detector simulator on the command line.

use std::sync::atomic::AtomicBool;

use clap::Args;
use detector::Format;
use detector::sim::{SimConfig, Simulator};

/// Options of `ringdaq sim`.
#[derive(Debug, Clone, Args)]
pub struct SimArgs {
    /// Address to send to (stream s goes to port PORT_BASE + s).
    #[arg(long, default_value = "127.0.0.1")]
    pub target: std::net::IpAddr,
    /// UDP port of sector 0.
    #[arg(long, default_value_t = 2001)]
    pub port_base: u16,
    /// Frames to send (0: until interrupted).
    #[arg(long, default_value_t = 100)]
    pub frames: u64,
    /// Frames per second (default: as fast as possible).
    #[arg(long)]
    pub fps: Option<f64>,
    /// Detector mode (format) by its full name: "is", "summit", "jungfrau-2", ...
    #[arg(long, default_value = "is")]
    pub mode: Format,
    /// Detector family: "jungfrau" (with --modules); overrides --mode.
    #[arg(long)]
    pub detector: Option<String>,
    /// Modules of the detector (default 1); module m sends to PORT_BASE + m.
    #[arg(long)]
    pub modules: Option<usize>,
    /// frame_id of the first frame.
    #[arg(long, default_value_t = 0)]
    pub first_frame_id: u32,
    /// Set the shutter/sync flag from this frame index on.
    #[arg(long)]
    pub sync_at: Option<u64>,
    /// Probability of dropping each datagram.
    #[arg(long, default_value_t = 0.0)]
    pub drop: f64,
    /// Probability of sending a datagram twice.
    #[arg(long, default_value_t = 0.0)]
    pub duplicate: f64,
    /// Shuffle datagrams within windows of this many.
    #[arg(long, default_value_t = 0)]
    pub reorder: usize,
    /// Probability of replacing a datagram by an invalid one.
    #[arg(long, default_value_t = 0.0)]
    pub corrupt: f64,
    /// Frame index at which frame_id resets to FIRST_FRAME_ID.
    #[arg(long)]
    pub reset_at: Option<u64>,
    /// Seed of the fault injector.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Pixel values: "counting" (hash of frame id mod 8, row, col: random pixels) or "stem" / "stem:SEED"
    /// (a 4D-STEM scan: dark offset, read noise, electron hits in a moving disk).
    #[arg(long, default_value = "counting")]
    pub pattern: detector::pattern::Pattern,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Send the datagrams of a recording (`ringdaq record`) instead of simulated frames.
    #[arg(long)]
    pub replay: Option<std::path::PathBuf>,
    /// With --replay: how much faster than recorded (0: as fast as possible).
    #[arg(long, default_value_t = 1.0, requires = "replay")]
    pub speed: f64,
}

impl SimArgs {
    /// The detector format: `--detector` and `--modules` (as in `ringdaq run`), else `--mode`.
    pub fn format(&self) -> anyhow::Result<Format> {
        let mut c = crate::config::Config {
            mode: self.mode,
            detector: self.detector.clone(),
            modules: self.modules,
            ..crate::config::Config::default()
        };
        c.resolve_detector()?;
        Ok(c.mode)
    }

    /// The simulator configuration these options describe (the format as [`SimArgs::format`] picks it).
    pub fn config(&self) -> SimConfig {
        SimConfig {
            target: self.target,
            port_base: self.port_base,
            frames: self.frames,
            fps: self.fps,
            mode: self.format().unwrap_or(self.mode),
            first_frame_id: self.first_frame_id,
            sync_at: self.sync_at,
            drop: self.drop,
            duplicate: self.duplicate,
            reorder: self.reorder,
            corrupt: self.corrupt,
            reset_at: self.reset_at,
            seed: self.seed,
            pattern: self.pattern,
        }
    }
}

/// Runs the simulator until it has sent its frames or SIGINT/SIGTERM arrives, then prints its report.
pub fn run(args: &SimArgs) -> anyhow::Result<()> {
    let stop: &'static AtomicBool = Box::leak(Box::new(AtomicBool::new(false)));
    crate::signals::stop_on_signals(stop)?;
    if let Some(path) = &args.replay {
        let t = std::time::Instant::now();
        let n = crate::record_cmd::replay(path, args.target, args.port_base, args.speed, stop)?;
        println!("replayed {n} datagrams from {} in {:.3} s", path.display(), t.elapsed().as_secs_f64());
        return Ok(());
    }
    args.format()?;
    let sim = Simulator::new(args.config())?;
    let r = sim.run(stop)?;
    if args.json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        let gbps = r.bytes as f64 / r.seconds.max(1e-9) / 1e9;
        println!(
            "sent {} frames ({} datagrams, {:.3} GB) in {:.3} s: {:.1} frames/s, {:.3} GB/s; \
             dropped {}, duplicated {}, corrupted {}",
            r.frames,
            r.datagrams,
            r.bytes as f64 / 1e9,
            r.seconds,
            r.fps(),
            gbps,
            r.dropped,
            r.duplicated,
            r.corrupted
        );
    }
    Ok(())
}
