//! Every performance figure of ringdaq beside its baseline, measured in one run on this machine, as a table.
//!
//! `cargo build --release && target/release/perf [--quick]
//! [--only ingest,jungfrau,writer,decode,handoff,idle,steady,bslz4,h5] [--out DIR]`
//!
//! What each figure is, and what bounds it, is in BENCHMARKS.md. Progress goes to stderr (`RUST_LOG=info`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::Context;
use clap::Parser;
use detector::k2;
use ringdaq_benches::pipeline::Pipeline;
use ringdaq_benches::{bslz4, decode, h5, idle, ingest, latency, percentile, steady, write};

#[derive(Parser)]
struct Args {
    /// Shorter runs everywhere (a smoke test of the harness; the figures are noisier).
    #[arg(long)]
    quick: bool,
    /// Only these measurements.
    #[arg(long, value_delimiter = ',', default_value = "decode,writer,idle,handoff,steady,ingest,jungfrau,bslz4,h5")]
    only: Vec<String>,
    /// A directory on the disk the writer is measured on (files are removed afterwards).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Frames per ingest trial (at 400 frames/s, 2000 frames are 5 s).
    #[arg(long)]
    ingest_frames: Option<u64>,
    /// Seconds of the steady-state run (after a 5 s warm-up).
    #[arg(long)]
    soak_s: Option<f64>,
    /// Configuration of the pipeline under test (TOML, as for `ringdaq run --config`); default: the defaults.
    #[arg(long)]
    config: Option<PathBuf>,
}

/// The measurements, in the order they run.
const MEASUREMENTS: [&str; 9] = ["decode", "writer", "idle", "handoff", "steady", "ingest", "jungfrau", "bslz4", "h5"];

/// Configuration of the pipeline under test: the defaults, with more restarts allowed than a benchmark needs.
const CONFIG: &str = "[supervisor]\nmax_restarts = 1000\n";

/// One line of the report.
struct Row {
    figure: String,
    value: String,
    baseline: String,
    ratio: String,
    aim: String,
    met: Option<bool>,
}

impl Row {
    fn new(figure: &str, value: String, baseline: String, ratio: String, aim: &str, met: Option<bool>) -> Self {
        Self { figure: figure.into(), value, baseline, ratio, aim: aim.into(), met }
    }
}

fn main() -> anyhow::Result<()> {
    shm_protocol::logging::init();
    let a = Args::parse();
    if let Some(bad) = a.only.iter().find(|o| !MEASUREMENTS.contains(&o.as_str())) {
        anyhow::bail!("no measurement {bad:?}; the measurements are {}", MEASUREMENTS.join(", "));
    }
    let out_dir = a.out.clone().unwrap_or_else(std::env::temp_dir);
    let dir = out_dir.join(format!("ringdaq-perf-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let t = Instant::now();
    let mut rows = Vec::new();
    let mut notes = Vec::new();
    let mut res = run(&a, &dir, &mut rows, &mut notes);
    if res.is_ok() && a.only.iter().any(|o| o == "jungfrau") {
        res = jungfrau_ingest(&a, &mut rows, &mut notes);
    }
    if res.is_ok() && a.only.iter().any(|o| o == "bslz4") {
        res = bitshuffle_lz4(&a, &mut rows, &mut notes);
    }
    if res.is_ok() && a.only.iter().any(|o| o == "h5") {
        res = hdf5_output(&a, &dir, &mut rows, &mut notes);
    }
    let _ = std::fs::remove_dir_all(&dir);
    println!("{}", machine(&out_dir));
    println!();
    println!("| figure | ringdaq | baseline (same run) | ratio | aim | met |");
    println!("|---|---|---|---|---|---|");
    for r in &rows {
        let met = match r.met {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "",
        };
        println!("| {} | {} | {} | {} | {} | {} |", r.figure, r.value, r.baseline, r.ratio, r.aim, met);
    }
    println!();
    for n in &notes {
        println!("- {n}");
    }
    println!("\n(measured in {:.0} s)", t.elapsed().as_secs_f64());
    res
}

fn run(a: &Args, dir: &Path, rows: &mut Vec<Row>, notes: &mut Vec<String>) -> anyhow::Result<()> {
    let want = |s: &str| a.only.iter().any(|o| o == s);
    let g = k2::IS_GEOMETRY;
    if want("decode") {
        tracing::info!("decode");
        let d = decode::measure(16, if a.quick { 5 } else { 21 })?;
        rows.push(Row::new(
            "decode: whole IS frames, camera order → frame layout (GB/s out)",
            format!("{:.2}", d.decode_gbs),
            format!("memcpy {:.2}", d.memcpy_gbs),
            format!("{:.2}×", d.decode_gbs / d.memcpy_gbs),
            "≥ 1.0×",
            Some(d.decode_gbs >= d.memcpy_gbs),
        ));
        if let Some(nt) = d.stream_copy_gbs {
            rows.push(Row::new(
                "decode against a copy with streaming stores (AVX2)",
                format!("{:.2}", d.decode_gbs),
                format!("streaming copy {nt:.2}"),
                format!("{:.2}×", d.decode_gbs / nt),
                "(the copy's ceiling)",
                None,
            ));
        }
        rows.push(Row::new(
            "decode, block by block (930 rows at a 4 KiB stride)",
            format!("{:.2}", d.place_gbs),
            format!("memcpy {:.2}", d.memcpy_gbs),
            format!("{:.2}×", d.place_gbs / d.memcpy_gbs),
            "(for comparison)",
            None,
        ));
    }
    if want("writer") {
        tracing::info!("writer");
        let frames = if a.quick { 120 } else { 400 };
        // The disk's speed drifts from second to second on a shared machine: alternate the two, five rounds, and
        // take the median of each and of the per-round ratios.
        let (mut w, mut o, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
        let gbs = |s: f64| frames as f64 * g.frame_bytes() as f64 / s / 1e9;
        for _ in 0..if a.quick { 2 } else { 5 } {
            let os = write::odirect_seconds(dir, frames, g.frame_bytes())?;
            let ws = write::writer_seconds(dir, frames)?;
            o.push(gbs(os));
            w.push(gbs(ws));
            ratios.push(os / ws);
        }
        let rounds: Vec<String> = w.iter().zip(&o).map(|(w, o)| format!("{w:.2}/{o:.2}")).collect();
        let (wg, og) = (ringdaq_benches::median(&mut w), ringdaq_benches::median(&mut o));
        let ratio = ringdaq_benches::median(&mut ratios);
        rows.push(Row::new(
            &format!("writer: {frames} frames ring → .npy, to done (GB/s; median of {} rounds)", w.len()),
            format!("{wg:.2} ({:.0} frames/s)", wg * 1e9 / g.frame_bytes() as f64),
            format!("O_DIRECT {og:.2}"),
            format!("{ratio:.2}×"),
            "≥ 0.9×",
            Some(ratio >= 0.9),
        ));
        notes.push(format!("writer rounds (GB/s, writer/O_DIRECT): {}", rounds.join(", ")));
    }
    let needs_pipeline = ["idle", "handoff", "steady", "ingest"].iter().any(|s| want(s));
    if !needs_pipeline {
        return Ok(());
    }
    let config = pipeline_config(a)?;
    let mut p = Pipeline::start("perf", &config)?;
    if want("idle") {
        tracing::info!("idle");
        std::thread::sleep(std::time::Duration::from_secs(2));
        let (procs, secs) = idle::measure(&mut p, if a.quick { 3.0 } else { 10.0 })?;
        let total: f64 = procs.iter().map(|r| r.cpu_s).sum();
        let pct = total / secs * 100.0;
        rows.push(Row::new(
            &format!("idle: CPU of all 4 processes over {secs:.0} s, no traffic"),
            format!("{pct:.3}% of a core"),
            "one core".into(),
            format!("{:.5}", pct / 100.0),
            "< 0.5%",
            Some(pct < 0.5),
        ));
        notes.push(format!(
            "idle, per process (CPU ms, context switches over {secs:.0} s): {}",
            procs
                .iter()
                .map(|c| format!("{} {:.1} ms, {}", c.name, c.cpu_s * 1e3, c.switches))
                .collect::<Vec<_>>()
                .join("; ")
        ));
    }
    if want("handoff") {
        tracing::info!("handoff");
        let (fps, n) = if a.quick { (200.0, 400) } else { (200.0, 3000) };
        let mut l = latency::consumer_wake_us(&mut p, fps, n)?;
        l.sort_by(f64::total_cmp);
        match isolated_handoff(a.quick, if a.quick { 1000 } else { 5000 }, 200) {
            Ok(iso) => {
                if let (Some(r), Some(u)) = (
                    iso.iter().find(|r| r.transport.starts_with("ring")),
                    iso.iter().find(|r| r.transport.starts_with("Unix")),
                ) {
                    rows.push(Row::new(
                        "hand-off, two processes alone: ring publish → blocked consumer awake, p50 / p99 / p99.9 µs",
                        format!("{:.1} / {:.1} / {:.1}", r.p50_us, r.p99_us, r.p999_us),
                        format!("Unix socket {:.1} / {:.1} / {:.1}", u.p50_us, u.p99_us, u.p999_us),
                        format!("{:.2}× (p99)", r.p99_us / u.p99_us),
                        "p99 < 50 µs",
                        Some(r.p99_us < 50.0),
                    ));
                    notes.push(format!(
                        "hand-off throughput, two processes, 8-byte items: ring {:.0}/s, Unix socket {:.0}/s ({:.1}×)",
                        r.items_per_s,
                        u.items_per_s,
                        r.items_per_s / u.items_per_s
                    ));
                }
            }
            Err(e) => notes.push(format!("the isolated hand-off benchmark failed: {e:#}")),
        }
        // The same with the consumer asleep for a whole frame period (5 ms at 200 frames/s), as in the pipeline.
        match isolated_handoff(a.quick, if a.quick { 200 } else { 1000 }, 5000) {
            Ok(iso) => {
                for r in iso {
                    notes.push(format!(
                        "isolated hand-off, samples 5 ms apart ({}): p50 {:.1} µs, p99 {:.1} µs, p99.9 {:.1} µs",
                        r.transport, r.p50_us, r.p99_us, r.p999_us
                    ));
                }
            }
            Err(e) => notes.push(format!("the isolated hand-off benchmark (5 ms) failed: {e:#}")),
        }
        rows.push(Row::new(
            &format!(
                "hand-off in the running pipeline: frame published → subscribed consumer awake, p50 / p99 / p99.9 µs \
                 ({} frames at {fps} fps, simulator on the same cores)",
                l.len()
            ),
            format!("{:.1} / {:.1} / {:.1}", percentile(&l, 50.0), percentile(&l, 99.0), percentile(&l, 99.9)),
            String::new(),
            String::new(),
            "p99 < 50 µs",
            Some(percentile(&l, 99.0) < 50.0),
        ));
    }
    if want("steady") {
        tracing::info!("steady state");
        let soak = a.soak_s.unwrap_or(if a.quick { 10.0 } else { 60.0 });
        let s = steady::measure(&mut p, 100.0, 5.0, soak, if a.quick { 100 } else { 300 }, dir)?;
        let per = |n: u64, d: u64| if d == 0 { f64::NAN } else { n as f64 / d as f64 };
        rows.push(Row::new(
            &format!("allocations per datagram, receiver ({} datagrams)", s.datagrams),
            format!("{:.4} ({} in all)", per(s.allocations[0], s.datagrams), s.allocations[0]),
            String::new(),
            String::new(),
            "0",
            Some(s.allocations[0] == 0),
        ));
        rows.push(Row::new(
            &format!("allocations per frame, assembler ({} frames)", s.frames),
            format!("{:.4} ({} in all)", per(s.allocations[1], s.frames), s.allocations[1]),
            String::new(),
            String::new(),
            "0",
            Some(s.allocations[1] == 0),
        ));
        rows.push(Row::new(
            &format!("allocations per frame, writer ({} frames written, {} passed by)", s.writer_frames, s.frames),
            format!(
                "{:.4} written, {:.4} passed ({} / {})",
                per(s.writer_allocations, s.writer_frames),
                per(s.allocations[2], s.frames),
                s.writer_allocations,
                s.allocations[2]
            ),
            String::new(),
            String::new(),
            "0",
            Some(s.writer_allocations == 0 && s.allocations[2] == 0),
        ));
        let growth: i64 = s.rss.iter().map(|(_, a, b)| *b as i64 - *a as i64).sum();
        rows.push(Row::new(
            &format!("RSS growth (anonymous memory, all processes) over {:.0} s at 100 fps", s.seconds),
            format!("{growth} KiB"),
            format!("{} KiB at the start", s.rss.iter().map(|r| r.1).sum::<u64>()),
            String::new(),
            "flat",
            Some(growth <= 0),
        ));
        notes.push(format!(
            "RssAnon per process, start → end of the soak: {}",
            s.rss.iter().map(|(n, a, b)| format!("{n} {a} → {b} KiB")).collect::<Vec<_>>().join("; ")
        ));
    }
    if want("ingest") {
        tracing::info!("ingest");
        let frames = a.ingest_frames.unwrap_or(if a.quick { 600 } else { 2000 });
        let bare = ingest::BareSockets::bind(supervisor::config::Config::default().recv_buffer_bytes)?;
        let b = ingest::search(25.0, |fps| bare.trial(k2::IS, fps, frames))?;
        drop(bare);
        let s = ingest::search(25.0, |fps| ingest::pipeline_trial(&mut p, k2::IS, fps, frames))?;
        let rate = |s: &ingest::Search| s.best.as_ref().map_or(0.0, |t| t.sent_fps);
        let bound = |s: &ingest::Search| if s.sender_bound { " (sender's limit)" } else { "" };
        let (pr, br) = (rate(&s), rate(&b));
        rows.push(Row::new(
            &format!("ingest: highest IS rate with zero loss, {frames}-frame trials (frames/s)"),
            format!("{pr:.0}{}", bound(&s)),
            format!("bare recvmmsg {br:.0}{}", bound(&b)),
            format!("{:.2}×", pr / br),
            "≥ 400 and ≥ 0.9×",
            // Reached 400 within the simulator's pacing (it reaches 399.9 when asked for 400).
            Some(pr >= 0.99 * 400.0 && pr >= 0.9 * br),
        ));
        // Both searches usually end at the simulator's limit on a small machine, so the rates compare how much CPU
        // each leaves the sender; the receive side's own CPU per frame, at the highest rate both took without
        // loss, compares the receivers directly.
        let top = |s: &ingest::Search| s.trials.iter().filter(|t| t.lossless()).map(|t| t.asked).fold(0.0, f64::max);
        let common = top(&s).min(top(&b));
        let at = |s: &ingest::Search| s.trials.iter().find(|t| t.asked == common && t.lossless()).cloned();
        if let (Some(pt), Some(bt)) = (at(&s), at(&b)) {
            rows.push(Row::new(
                &format!(
                    "receive CPU per frame at {common:.0} frames/s asked (µs; receiver process vs bare loop thread)"
                ),
                format!("{:.0}", pt.receive_us_per_frame()),
                format!("bare recvmmsg {:.0}", bt.receive_us_per_frame()),
                format!("{:.2}× (bare / receiver)", bt.receive_us_per_frame() / pt.receive_us_per_frame()),
                "(efficiency)",
                None,
            ));
        }
        trial_notes("", &s, &b, notes);
    }
    Ok(())
}

/// The configuration of the pipeline under test (`--config`, else [`CONFIG`]).
fn pipeline_config(a: &Args) -> anyhow::Result<String> {
    Ok(match &a.config {
        Some(f) => std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?,
        None => CONFIG.to_string(),
    })
}

/// Every trial of an ingest search, pipeline and bare loop, as notes (`what` names the detector, if not K2 IS).
fn trial_notes(what: &str, s: &ingest::Search, b: &ingest::Search, notes: &mut Vec<String>) {
    for (name, srch) in [("pipeline", s), ("bare recvmmsg", b)] {
        notes.push(format!(
            "ingest trials{what}, {name} (asked → reached frames/s, datagrams received/sent{}): {}",
            if name == "pipeline" { ", frames complete" } else { "" },
            srch.trials
                .iter()
                .map(|t| format!(
                    "{:.0} → {:.0}: {}/{}{}{}",
                    t.asked,
                    t.sent_fps,
                    t.received,
                    t.sent,
                    t.complete.map_or(String::new(), |c| format!(", {c}/{}", t.frames)),
                    match t.assembler_cpu_s {
                        Some(a) => format!(
                            " (CPU per frame: receiver {:.0} µs, assembler {:.0} µs)",
                            t.receive_us_per_frame(),
                            a / t.frames as f64 * 1e6
                        ),
                        None => format!(" (CPU per frame {:.0} µs)", t.receive_us_per_frame()),
                    }
                ))
                .collect::<Vec<_>>()
                .join("; ")
        ));
    }
}

/// JUNGFRAU ingest, 1 and 2 modules: the highest zero-loss rate of the pipeline (a pipeline of its own, the
/// format picked with `detector`/`modules`) beside the bare `recvmmsg` loop on the same traffic. A module runs
/// at up to 2 kHz (8240-byte packets, about 2.1 GB/s on the wire), the target the hardware sets.
fn jungfrau_ingest(a: &Args, rows: &mut Vec<Row>, notes: &mut Vec<String>) -> anyhow::Result<()> {
    const TARGET_HZ: f64 = 2000.0;
    let config = pipeline_config(a)?;
    for modules in [1usize, 2] {
        tracing::info!(modules, "jungfrau ingest");
        let mode = detector::registry::by_detector("jungfrau", modules).context("JUNGFRAU is registered")?;
        // At 2 kHz, 4000 frames are 2 s.
        let frames = a.ingest_frames.unwrap_or(if a.quick { 1000 } else { 4000 });
        let bare = ingest::BareSockets::bind(supervisor::config::Config::default().recv_buffer_bytes)?;
        let b = ingest::search_from(500.0, 250.0, 50.0, |fps| bare.trial(mode, fps, frames))?;
        drop(bare);
        // Top-level keys first: the configuration may open tables.
        let cfg = format!("detector = \"jungfrau\"\nmodules = {modules}\n{config}");
        let mut p = Pipeline::start(&format!("perf-jf{modules}"), &cfg)?;
        let s = ingest::search_from(500.0, 250.0, 50.0, |fps| ingest::pipeline_trial(&mut p, mode, fps, frames))?;
        drop(p);
        let rate = |s: &ingest::Search| s.best.as_ref().map_or(0.0, |t| t.sent_fps);
        let bound = |s: &ingest::Search| if s.sender_bound { " (sender's limit)" } else { "" };
        let (pr, br) = (rate(&s), rate(&b));
        let gbps = pr * (modules * detector::jungfrau::PACKETS_PER_MODULE * mode.max_datagram()) as f64 / 1e9;
        rows.push(Row::new(
            &format!(
                "ingest: highest JUNGFRAU rate with zero loss, {modules} module{}, {frames}-frame trials (frames/s)",
                if modules == 1 { "" } else { "s" }
            ),
            format!("{pr:.0}{} ({gbps:.2} GB/s)", bound(&s)),
            format!("bare recvmmsg {br:.0}{}", bound(&b)),
            format!("{:.2}×", pr / br),
            "≥ 0.9× (2000 the hardware's)",
            Some(pr >= 0.9 * br),
        ));
        if pr < 0.99 * TARGET_HZ {
            notes.push(format!(
                "JUNGFRAU, {modules} module(s): {pr:.0} frames/s, below a module's {TARGET_HZ:.0} Hz{}",
                if s.sender_bound && b.sender_bound {
                    " (both sides at the simulator's limit on this machine)"
                } else {
                    ""
                }
            ));
        }
        trial_notes(&format!(" JUNGFRAU {modules}"), &s, &b, notes);
    }
    Ok(())
}

/// A row of the `handoff` benchmark.
struct HandoffRow {
    transport: String,
    p50_us: f64,
    p99_us: f64,
    p999_us: f64,
    items_per_s: f64,
}

/// The `handoff` benchmark's ring and Unix-socket rows, `samples` latency samples `interval_us` apart.
fn isolated_handoff(quick: bool, samples: u64, interval_us: u64) -> anyhow::Result<Vec<HandoffRow>> {
    let exe = std::env::current_exe()?.with_file_name("handoff");
    let out = Command::new(&exe)
        .args(["--items", if quick { "100000" } else { "1000000" }])
        .args(["--samples", &samples.to_string(), "--interval-us", &interval_us.to_string()])
        .output()
        .with_context(|| format!("running {}", exe.display()))?;
    anyhow::ensure!(out.status.success(), "handoff failed: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    let mut rows = Vec::new();
    for name in ["ring (shared memory)", "Unix stream socket"] {
        let line = text.lines().find(|l| l.starts_with(name)).context("handoff row")?;
        let f: Vec<f64> =
            line[name.len()..].split_whitespace().filter_map(|w| w.trim_end_matches('x').parse().ok()).collect();
        anyhow::ensure!(f.len() == 5, "unexpected handoff row: {line}");
        rows.push(HandoffRow { transport: name.into(), p50_us: f[2], p99_us: f[3], p999_us: f[4], items_per_s: f[0] });
    }
    Ok(rows)
}

/// The machine: CPU, cores, memory, kernel, and the file system under `dir`.
fn machine(dir: &Path) -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| s.lines().next()?.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0.0, |k| k as f64 / 1048576.0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let canon = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    let fs = std::fs::read_to_string("/proc/mounts")
        .ok()
        .and_then(|m| {
            m.lines()
                .filter_map(|l| {
                    let f: Vec<&str> = l.split_whitespace().collect();
                    (f.len() > 2 && canon.starts_with(f[1]))
                        .then(|| (f[1].len(), format!("{} ({}) on {}", f[1], f[2], f[0])))
                })
                .max()
                .map(|x| x.1)
        })
        .unwrap_or_default();
    format!("machine: {cpu}, {cores} cores, {mem:.0} GiB, Linux {}; disk: {} at {fs}", kernel.trim(), dir.display())
}

/// bitshuffle-LZ4 per core beside memcpy and LZ4 alone, and its ratio on three kinds of frames.
fn bitshuffle_lz4(a: &Args, rows: &mut Vec<Row>, notes: &mut Vec<String>) -> anyhow::Result<()> {
    tracing::info!("bslz4");
    let b = bslz4::measure(if a.quick { 2 } else { 8 }, if a.quick { 1 } else { 3 })?;
    for d in &b.data {
        rows.push(Row::new(
            &format!("bslz4 compress, one core, IS frames of the {} (GB/s in)", d.name),
            format!("{:.2}", d.compress_gbs),
            format!("LZ4 alone {:.2}; memcpy {:.2}", d.lz4_compress_gbs, d.memcpy_gbs),
            format!("{:.2}× LZ4", d.compress_gbs / d.lz4_compress_gbs),
            "≥ 1.5 GB/s",
            Some(d.compress_gbs >= 1.5),
        ));
        rows.push(Row::new(
            &format!("bslz4 decompress, one core, {} (GB/s out)", d.name),
            format!("{:.2}", d.decompress_gbs),
            format!("LZ4 alone {:.2}; memcpy {:.2}", d.lz4_decompress_gbs, d.memcpy_gbs),
            format!("{:.2}× LZ4", d.decompress_gbs / d.lz4_decompress_gbs),
            "",
            None,
        ));
        rows.push(Row::new(
            &format!("bslz4 compression ratio, {} (uncompressed / compressed)", d.name),
            format!("{:.2} ({:.1} bits/pixel)", d.ratio, 16.0 / d.ratio),
            format!("LZ4 alone {:.2}", d.lz4_ratio),
            format!("{:.2}×", d.ratio / d.lz4_ratio),
            "",
            None,
        ));
    }
    notes.push(format!(
        "bit transposition alone, one 8 KiB block in cache (shuffle / unshuffle GB/s): {}",
        b.kernels.iter().map(|(k, s, u)| format!("{k} {s:.2} / {u:.2}")).collect::<Vec<_>>().join("; ")
    ));
    notes.push(format!(
        "4D-STEM pattern generation: {:.0} K2 IS frames/s on one core ({:.2} GB/s of pixels)",
        b.stem_frames_per_s,
        b.stem_frames_per_s * k2::IS.frame_bytes() as f64 / 1e9
    ));
    Ok(())
}

/// `.h5` output: the writer without compression beside plain `O_DIRECT` writes (alternating rounds), the writer
/// with bitshuffle-LZ4 on the 4D-STEM pattern, and the highest zero-loss rate of the whole pipeline to this disk
/// with each, with every process's CPU.
fn hdf5_output(a: &Args, dir: &Path, rows: &mut Vec<Row>, notes: &mut Vec<String>) -> anyhow::Result<()> {
    use shm_protocol::messages::Compression;
    tracing::info!("h5");
    let fb = k2::IS_GEOMETRY.frame_bytes();
    let frames = if a.quick { 120 } else { 300 };
    let gbs = |s: f64| frames as f64 * fb as f64 / s / 1e9;
    let (mut w, mut o, mut n, mut ratios) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let counting = detector::pattern::Pattern::Counting;
    // The three alternate, as in `writer`: the disk's speed drifts; .npy is the writer's other format, beside.
    for _ in 0..if a.quick { 2 } else { 3 } {
        let os = write::odirect_seconds(dir, frames, fb)?;
        let ws = write::writer_run(dir, frames, "writer.h5", Compression::None, &counting)?.secs;
        let ns = write::writer_seconds(dir, frames)?;
        o.push(gbs(os));
        w.push(gbs(ws));
        n.push(gbs(ns));
        ratios.push(os / ws);
    }
    let rounds: Vec<String> = w.iter().zip(&o).zip(&n).map(|((w, o), n)| format!("{w:.2}/{o:.2}/{n:.2}")).collect();
    let (wg, og, ng) =
        (ringdaq_benches::median(&mut w), ringdaq_benches::median(&mut o), ringdaq_benches::median(&mut n));
    let ratio = ringdaq_benches::median(&mut ratios);
    rows.push(Row::new(
        &format!("writer: {frames} frames ring → .h5 uncompressed, to done (GB/s; median of {} rounds)", w.len()),
        format!("{wg:.2} ({:.0} frames/s)", wg * 1e9 / fb as f64),
        format!("O_DIRECT {og:.2} (.npy {ng:.2})"),
        format!("{ratio:.2}×"),
        "≥ 0.9×",
        Some(ratio >= 0.9),
    ));
    notes.push(format!("writer rounds, .h5 uncompressed (GB/s, .h5/O_DIRECT/.npy): {}", rounds.join(", ")));

    let stem = detector::pattern::Pattern::Stem { seed: 0 };
    let r = write::writer_run(dir, frames, "writer-bslz4.h5", Compression::Bslz4, &stem)?;
    let input = frames as f64 * fb as f64;
    rows.push(Row::new(
        &format!(
            "writer: {frames} 4D-STEM frames ring → .h5 bitshuffle-LZ4, to done ({} compression threads; GB/s in)",
            std::thread::available_parallelism().map_or(1, usize::from)
        ),
        format!("{:.2} ({:.0} frames/s)", input / r.secs / 1e9, frames as f64 / r.secs),
        format!("ratio {:.2}", input / r.compressed_bytes.max(1) as f64),
        format!("{:.2} GB/s per compressing core", input / r.compress_cpu_s.max(1e-9) / 1e9),
        "",
        None,
    ));
    notes.push(format!(
        "writer .h5 bitshuffle-LZ4 run: {:.2} s to done, compression {:.2} CPU s, the whole process {:.2} CPU s, \
         {:.0} MB of chunks for {:.0} MB of frames (the finish copies the chunks from the store into the file)",
        r.secs,
        r.compress_cpu_s,
        r.process_cpu_s,
        r.compressed_bytes as f64 / 1e6,
        input / 1e6
    ));

    // The whole pipeline to this disk: the highest zero-loss rate with each compression.
    let config = pipeline_config(a)?;
    let mut p = Pipeline::start("perf-h5", &config)?;
    // 400 frames: 3 GB uncompressed; bslz4's arming checks room for twice the worst case (6 GB).
    let trial_frames = if a.quick { 200 } else { 400 };
    let mut best = Vec::new();
    for c in [Compression::None, Compression::Bslz4] {
        let mut figs = Vec::new();
        let s = ingest::search_from(100.0, 100.0, 50.0, |fps| {
            let (t, f) = h5::disk_trial(&mut p, dir, fps, trial_frames, c)?;
            tracing::info!(
                compression = c.as_str(),
                asked = fps,
                reached = t.sent_fps,
                state = f.state,
                written = f.written,
                "disk trial"
            );
            figs.push((t.clone(), f));
            Ok(t)
        })?;
        let rate = s.best.as_ref().map_or(0.0, |t| t.sent_fps);
        notes.push(format!(
            "disk trials, .h5 {} (asked → reached frames/s: frames written complete/sent, state; CPU s of simulator, \
             receiver, assembler, writer; chunks MB): {}",
            c.as_str(),
            figs.iter()
                .map(|(t, f)| format!(
                    "{:.0} → {:.0}: {}/{} {}; {:.1}, {:.1}, {:.1}, {:.1}; {:.0}",
                    t.asked,
                    t.sent_fps,
                    t.complete.unwrap_or(0),
                    t.frames,
                    f.state,
                    f.cpu_s[0],
                    f.cpu_s[1],
                    f.cpu_s[2],
                    f.cpu_s[3],
                    f.compressed_bytes as f64 / 1e6
                ))
                .collect::<Vec<_>>()
                .join("; ")
        ));
        best.push((rate, s.sender_bound));
    }
    let bound = |b: bool| if b { " (sender's limit)" } else { "" };
    rows.push(Row::new(
        &format!("whole pipeline → .h5 on this disk, 4D-STEM pattern: highest zero-loss rate, {trial_frames}-frame trials (frames/s)"),
        format!("bslz4 {:.0}{}", best[1].0, bound(best[1].1)),
        format!("uncompressed {:.0}{}", best[0].0, bound(best[0].1)),
        format!("{:.2}×", best[1].0 / best[0].0.max(1.0)),
        "400 with bslz4",
        Some(best[1].0 >= 400.0),
    ));
    Ok(())
}
