//! `ringdaq run`: the pipeline in the foreground, optionally fed by the built-in simulator.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use detector::Format;
use detector::sim::{SimConfig, SimReport, Simulator};
use shm_protocol::messages::{Compression, SyncMode};

use crate::config::Config;
use crate::daemon::Supervisor;

/// Options of `ringdaq run`.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// TOML configuration file (see ringdaq.example.toml); flags override it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Address the detector sockets bind to.
    #[arg(long)]
    pub bind: Option<IpAddr>,
    /// UDP port of sector 0.
    #[arg(long)]
    pub port_base: Option<u16>,
    /// Detector mode (format) by its full name: "is", "summit", "jungfrau-2", ...
    #[arg(long, conflicts_with = "detector")]
    pub mode: Option<Format>,
    /// Detector family: "jungfrau" (with --modules), or a K2 mode.
    #[arg(long)]
    pub detector: Option<String>,
    /// Modules of the detector (default 1); module m listens on PORT_BASE + m.
    #[arg(long)]
    pub modules: Option<usize>,
    /// Receive, assemble and write only these sectors (streams: K2 sectors, JUNGFRAU modules), a range "0-3" or a
    /// list "0,1,2,3"; sector s stays on PORT_BASE + s, and a frame holds only their pixels.
    #[arg(long)]
    pub sectors: Option<crate::config::SectorList>,
    /// Run the built-in simulator against this pipeline.
    #[arg(long)]
    pub simulate: bool,
    /// At a terminal, show every log line of every process here too (by default only warnings and errors,
    /// and a progress bar; every line is in <runtime dir>/ringdaq.log).
    #[arg(short, long)]
    pub verbose: bool,
    /// With --simulate: acquire this many frames into --out, print a summary and exit.
    #[arg(long, requires = "simulate")]
    pub frames: Option<u64>,
    /// With --simulate --frames: directory for the .npy file and its sidecar.
    #[arg(long, requires = "frames")]
    pub out: Option<PathBuf>,
    /// With --simulate: frames per second the simulator sends (the K2 IS runs at 400).
    #[arg(long, default_value_t = 400.0)]
    pub fps: f64,
    /// Serve the counters in the Prometheus text format at http://ADDR/metrics.
    #[arg(long)]
    pub metrics: Option<std::net::SocketAddr>,
    /// With --simulate: probability that the simulator drops each datagram.
    #[arg(long, default_value_t = 0.0)]
    pub sim_drop: f64,
    /// With --simulate: pixel values, "counting" or "stem" / "stem:SEED" (a 4D-STEM scan); default: the
    /// configuration's `[simulator] pattern`, else "counting".
    #[arg(long, requires = "simulate")]
    pub pattern: Option<detector::pattern::Pattern>,
    /// Seconds the stages wait for a new supervisor if this one dies (`supervisor.orphan_timeout_s`).
    #[arg(long)]
    pub orphan_timeout_s: Option<f64>,
}

impl RunArgs {
    /// The configuration: the file (or defaults), then the flags, then `--runtime-dir`.
    pub fn config(&self, runtime_dir: Option<&Path>) -> anyhow::Result<Config> {
        let mut c = match &self.config {
            Some(p) => Config::load(p)?,
            None => Config::default(),
        };
        if let Some(b) = self.bind {
            c.bind = b;
        }
        if let Some(p) = self.port_base {
            c.port_base = p;
        }
        if let Some(m) = self.mode {
            c.mode = m;
            (c.detector, c.modules) = (None, None);
        }
        if let Some(d) = &self.detector {
            (c.detector, c.modules) = (Some(d.clone()), None);
        }
        if let Some(n) = self.modules {
            c.modules = Some(n);
        }
        c.resolve_detector()?;
        if let Some(s) = &self.sectors {
            c.sectors = Some(s.clone());
        }
        if let Some(a) = self.metrics {
            c.metrics = Some(a);
        }
        if let Some(t) = self.orphan_timeout_s {
            c.supervisor.orphan_timeout_s = t;
        }
        if let Some(r) = runtime_dir {
            c.runtime_dir = Some(r.to_owned());
        } else if c.runtime_dir.is_none() {
            c.runtime_dir = Some(crate::config::resolve_runtime_dir(None));
        }
        Ok(c)
    }
}

impl RunArgs {
    /// The split log for a terminal (none with `--verbose`): the runtime directory is made here, before the
    /// supervisor, so that the log file can live in it from the first line.
    pub fn log_split(&self, runtime_dir: Option<&Path>) -> Option<shm_protocol::logging::Split> {
        if self.verbose {
            return None;
        }
        let dir = self.config(runtime_dir).ok()?.runtime_dir();
        crate::daemon::prepare_runtime_dir(&dir).ok()?;
        Some(shm_protocol::logging::Split { file: dir.join("ringdaq.log"), terminal: tracing::Level::WARN })
    }
}

/// Runs the pipeline until shutdown (or, with `--simulate --frames`, until the acquisition is done).
pub fn run(args: &RunArgs, runtime_dir: Option<&Path>) -> anyhow::Result<()> {
    let cfg = args.config(runtime_dir)?;
    if let Some(out) = &args.out {
        std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    }
    let metrics = match cfg.metrics {
        Some(addr) => {
            Some(std::net::TcpListener::bind(addr).with_context(|| format!("binding the metrics endpoint {addr}"))?)
        }
        None => None,
    };
    let (sup, listener) = Supervisor::new(cfg)?;
    let stop: &'static AtomicBool = Box::leak(Box::new(AtomicBool::new(false)));
    crate::signals::stop_on_signals(stop)?;
    let outcome = std::thread::scope(|s| -> anyhow::Result<()> {
        let runner = {
            let sup = sup.clone();
            let span = tracing::Span::current();
            s.spawn(move || span.in_scope(|| sup.run(listener, stop)))
        };
        if let Some(m) = metrics {
            if let Ok(a) = m.local_addr() {
                tracing::info!(address = %a, "metrics at http://{a}/metrics");
            }
            let sup = sup.clone();
            let span = tracing::Span::current();
            s.spawn(move || span.in_scope(|| crate::metrics::serve(&sup, m)));
        }
        {
            let sup = sup.clone();
            let span = tracing::Span::current();
            s.spawn(move || span.in_scope(|| tell_systemd_when_ready(&sup)));
        }
        // At a terminal (the log split: routine lines go to the file), a progress bar per acquisition.
        if crate::stages::LOG_SPLIT.get().is_some() {
            let sup = sup.clone();
            s.spawn(move || crate::progress::show(&sup));
        }
        let result = if args.simulate { simulate(&sup, args, stop) } else { Ok(()) };
        if result.is_err() || args.frames.is_some() {
            sup.request_shutdown();
        }
        runner.join().map_err(|_| anyhow::anyhow!("supervisor thread panicked"))??;
        result
    });
    sup.remove_runtime_files();
    if let Some(why) = sup.failure() {
        bail!("{why}");
    }
    outcome
}

/// Under systemd (`Type=notify`: `$NOTIFY_SOCKET` is set), says READY=1 once every stage runs, so that units
/// ordered after ringdaq start when it receives, and STOPPING=1 when it shuts down. Elsewhere it does nothing.
fn tell_systemd_when_ready(sup: &Supervisor) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    // Stages start in milliseconds; the wait ends early if the pipeline stops first.
    while !sup.shutting_down() {
        if sup.wait_ready(Duration::from_millis(200)) {
            let status = format!("receiving on {}:{}", sup.config().bind, sup.config().port_base);
            let r = sd_notify::notify(&[sd_notify::NotifyState::Ready, sd_notify::NotifyState::Status(&status)]);
            if let Err(e) = r {
                tracing::warn!(error = %e, "telling systemd that ringdaq is ready");
            }
            break;
        }
    }
    while !sup.shutting_down() {
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
}

fn sim_target(cfg: &Config) -> IpAddr {
    match cfg.multicast_group {
        Some(g) => g.into(),
        None if cfg.bind.is_unspecified() => std::net::Ipv4Addr::LOCALHOST.into(),
        None => cfg.bind,
    }
}

/// Feeds the pipeline from the simulator; with `--frames`, acquires them and prints a summary.
fn simulate(sup: &Arc<Supervisor>, args: &RunArgs, stop: &AtomicBool) -> anyhow::Result<()> {
    if !sup.wait_ready(Duration::from_secs(20)) {
        bail!("the stages did not start within 20 s");
    }
    let cfg = sup.config();
    let sim_cfg = SimConfig {
        target: sim_target(cfg),
        port_base: cfg.port_base,
        frames: args.frames.unwrap_or(0),
        fps: Some(args.fps),
        mode: cfg.mode,
        drop: args.sim_drop,
        pattern: args.pattern.unwrap_or(cfg.simulator.pattern),
        ..SimConfig::default()
    };
    let sim = Simulator::new(sim_cfg)?;
    let sim_stop = AtomicBool::new(false);
    let Some(frames) = args.frames else {
        tracing::info!(fps = args.fps, "simulator sending until the pipeline stops");
        return std::thread::scope(|s| {
            let h = s.spawn(|| sim.run(&sim_stop));
            while !sup.shutting_down() && !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(20));
            }
            sim_stop.store(true, Ordering::Relaxed);
            h.join().map_err(|_| anyhow::anyhow!("simulator panicked"))??;
            Ok(())
        });
    };
    let dir = args.out.clone().unwrap_or_else(|| PathBuf::from("."));
    let dir = std::fs::canonicalize(&dir).with_context(|| format!("output directory {}", dir.display()))?;
    let name = format!("sim-{}.npy", shm_protocol::pipeline::now_ns() / 1_000_000);
    let path = dir.join(name);
    let id = sup.arm(frames, &path.display().to_string(), SyncMode::Immediate, Compression::None)?;
    let started = Instant::now();
    let report = std::thread::scope(|s| -> anyhow::Result<SimReport> {
        let h = s.spawn(|| sim.run(&sim_stop));
        // Wait for the file; give up (and finish it with what came) if frames stop arriving.
        let budget = Duration::from_secs_f64(frames as f64 / args.fps + 30.0);
        let mut stop_sent = false;
        loop {
            let st = sup.acquisition_status(id).context("acquisition record vanished")?;
            if st.state.is_over() {
                break;
            }
            if (started.elapsed() > budget || stop.load(Ordering::Relaxed) || sup.shutting_down()) && !stop_sent {
                tracing::warn!("frames stopped arriving; finishing the file with what came");
                sup.handle(shm_protocol::messages::Request::Stop);
                stop_sent = true;
            }
            if sup.shutting_down() && started.elapsed() > budget + Duration::from_secs(30) {
                bail!("the acquisition did not finish");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        sim_stop.store(true, Ordering::Relaxed);
        Ok(h.join().map_err(|_| anyhow::anyhow!("simulator panicked"))??)
    })?;
    if crate::stages::LOG_SPLIT.get().is_some() {
        crate::progress::wait_shown(id, Duration::from_secs(1));
    }
    let st = sup.acquisition_status(id).context("acquisition record vanished")?;
    if let Some(e) = st.error {
        bail!("acquisition failed: {e}");
    }
    print_summary(&path, &report, sup)
}

fn print_summary(path: &Path, sim: &SimReport, sup: &Supervisor) -> anyhow::Result<()> {
    let side = writer::sidecar_path(path);
    let text = std::fs::read_to_string(&side).with_context(|| format!("reading {}", side.display()))?;
    let sc: writer::Sidecar = serde_json::from_str(&text)?;
    let first = sc.frame_list.iter().map(|f| f.first_block_ns).filter(|&t| t > 0).min().unwrap_or(0);
    let last = sc.frame_list.iter().map(|f| f.last_block_ns).max().unwrap_or(0);
    let secs = (last.saturating_sub(first)) as f64 / 1e9;
    let fps = if secs > 0.0 { sc.frames as f64 / secs } else { 0.0 };
    let frame_bytes = sc.frame_bytes();
    let c = sup.status().counters.into_iter().collect::<std::collections::BTreeMap<_, _>>();
    let get = |k: &str| c.get(k).copied().unwrap_or(0);
    let invalid: Vec<String> = c
        .iter()
        .filter(|(k, v)| k.starts_with("assembler.invalid.") && **v > 0)
        .map(|(k, v)| format!("{}={v}", &k["assembler.invalid.".len()..]))
        .collect();
    println!("acquired {} frames into {}", sc.frames, path.display());
    println!(
        "  frames: {} complete, {} incomplete (sidecar {})",
        sc.complete_frames,
        sc.incomplete_frames,
        side.display()
    );
    println!(
        "  rate:   {fps:.1} frames/s, {:.2} GB/s decoded, {:.2} GB/s on the wire",
        fps * frame_bytes as f64 / 1e9,
        sim.bytes as f64 / sim.seconds.max(1e-9) / 1e9
    );
    println!(
        "  datagrams: sent {}, received {}; dropped by the simulator {}, by the kernel {}; invalid {}; late {}; duplicates {}",
        sim.datagrams,
        get("receiver.datagrams"),
        sim.dropped,
        get("receiver.kernel_drops"),
        if invalid.is_empty() { "0".to_string() } else { invalid.join(" ") },
        get("assembler.late"),
        get("assembler.duplicates"),
    );
    Ok(())
}
