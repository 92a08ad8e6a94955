//! `ringdaq tail`: a frame consumer on the command line. Every second it prints the frames it got, the frames it
//! missed, and statistics of their pixels.

use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use clap::Args;
use shm_protocol::consumer::{ConsumerError, Delivery, Subscription};

/// Options of `ringdaq tail`.
#[derive(Debug, Clone, Args)]
pub struct TailArgs {
    /// Hold a gate: receive every frame (a consumer slower than the detector slows the pipeline down).
    #[arg(long)]
    pub lossless: bool,
    /// Exit after this many frames.
    #[arg(long)]
    pub frames: Option<u64>,
    /// Seconds between lines.
    #[arg(long, default_value_t = 1.0)]
    pub interval: f64,
}

/// What one reporting interval saw.
#[derive(Debug, Default)]
struct Interval {
    frames: u64,
    incomplete: u64,
    missed: u64,
    /// Sum of the frames' mean pixel values.
    means: f64,
    min: u16,
    max: u16,
    last: Option<(u64, Option<u64>, u32)>,
}

/// Subscribes to the pipeline in `runtime_dir` and prints a line per interval to `out` until `stop` is set, the
/// pipeline shuts down, or `--frames` frames came.
pub fn run(runtime_dir: &Path, a: &TailArgs, stop: &AtomicBool, out: &mut impl Write) -> anyhow::Result<()> {
    let delivery = if a.lossless { Delivery::Lossless } else { Delivery::Lossy };
    let mut sub = Subscription::connect(runtime_dir, delivery)?;
    let (rows, cols) = sub.shape();
    writeln!(
        out,
        "subscribed ({}, consumer line {}), frames of {rows} x {cols}",
        if a.lossless { "lossless" } else { "lossy" },
        sub.cursor()
    )?;
    let interval = Duration::from_secs_f64(a.interval.max(0.01));
    let started = Instant::now();
    let mut since = Instant::now();
    let mut cur = Interval { min: u16::MAX, ..Interval::default() };
    let mut total = 0u64;
    let mut missed_seen = 0;
    while !stop.load(Ordering::Relaxed) && a.frames.is_none_or(|n| total < n) {
        let wait = interval.saturating_sub(since.elapsed()).max(Duration::from_millis(1));
        match sub.next_frame(Some(wait)) {
            Ok(f) => {
                let (sum, min, max) = stats(f.pixels());
                if f.is_valid() {
                    cur.frames += 1;
                    total += 1;
                    cur.incomplete += u64::from(!f.is_complete());
                    cur.means += sum as f64 / f.pixels().len().max(1) as f64;
                    cur.min = cur.min.min(min);
                    cur.max = cur.max.max(max);
                    cur.last = Some((f.acquisition_id(), f.index(), f.frame_id()));
                }
            }
            Err(ConsumerError::Timeout) => {}
            Err(ConsumerError::Closed) => {
                writeln!(out, "the pipeline shut down")?;
                break;
            }
            Err(e) => return Err(e.into()),
        }
        cur.missed += sub.missed() - missed_seen;
        missed_seen = sub.missed();
        if since.elapsed() >= interval {
            print_line(out, started.elapsed(), since.elapsed(), &cur)?;
            since = Instant::now();
            cur = Interval { min: u16::MAX, ..Interval::default() };
        }
    }
    if cur.frames > 0 || cur.missed > 0 {
        print_line(out, started.elapsed(), since.elapsed(), &cur)?;
    }
    writeln!(out, "{total} frames, {} missed", sub.missed())?;
    Ok(())
}

fn print_line(out: &mut impl Write, at: Duration, span: Duration, c: &Interval) -> std::io::Result<()> {
    let rate = c.frames as f64 / span.as_secs_f64().max(1e-9);
    write!(
        out,
        "{:>7.1} s  {:>5} frames ({rate:>6.1}/s)  {:>5} missed  {:>4} incomplete",
        at.as_secs_f64(),
        c.frames,
        c.missed,
        c.incomplete
    )?;
    if c.frames > 0 {
        write!(out, "  mean {:>8.1}  min {:>5}  max {:>5}", c.means / c.frames as f64, c.min, c.max)?;
    }
    if let Some((acq, index, frame_id)) = c.last {
        match index {
            Some(i) => write!(out, "  last: acquisition {acq} index {i} frame_id {frame_id}")?,
            None => write!(out, "  last: frame_id {frame_id} (no acquisition)")?,
        }
    }
    writeln!(out)
}

/// Sum, minimum and maximum of a frame's pixels, in one pass (the compiler vectorises it).
fn stats(px: &[u16]) -> (u64, u16, u16) {
    let mut sum = 0u64;
    let (mut min, mut max) = (u16::MAX, 0u16);
    for chunk in px.chunks(4096) {
        let mut s = 0u32;
        for &p in chunk {
            s += u32::from(p);
            min = min.min(p);
            max = max.max(p);
        }
        sum += u64::from(s);
    }
    (sum, min, max)
}

#[cfg(test)]
mod tests {
    #[test]
    fn stats_of_a_frame() {
        let px: Vec<u16> = (0..10_000u32).map(|i| (i % 4096) as u16).collect();
        let (sum, min, max) = super::stats(&px);
        assert_eq!(sum, px.iter().map(|&p| u64::from(p)).sum::<u64>());
        assert_eq!((min, max), (0, 4095));
    }
}
