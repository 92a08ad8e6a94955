//! `ringdaq record --format gatan` and `ringdaq sim --replay` of a Gatan recording: the command-line side of
//! [`detector::k2::gatan`], which holds the format.

use std::io::Write;
use std::net::IpAddr;
use std::ops::ControlFlow;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use detector::k2::gatan::collect::{Collector, DEFAULT_WINDOW, Pushed};
use detector::k2::gatan::read::Reader;
use detector::k2::gatan::write::{Options, Summary, Writer};
use detector::k2::gatan::{self, Paths};

use crate::block_tap::{self, Sink, TapEnd, TapInfo, Tapped};
use crate::record_cmd::RecordArgs;

/// With frames in flight and no datagram for this long, the stream stopped: they are written with what they
/// have. 500 ms is 200 frames of a K2 IS at 400 frames/s, and the assembler's frame timeout in the tests.
const IDLE: Duration = Duration::from_millis(500);

/// Whether `path` names a Gatan recording (its `.gtg` or a `.bin`) rather than an `.rdq` one.
pub fn is_gatan(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("gtg") || e.eq_ignore_ascii_case("bin"))
}

/// What the recorder dropped, besides the blocks that never came.
#[derive(Debug, Default)]
struct Dropped {
    invalid: u64,
    late: u64,
    duplicate: u64,
    missed_slots: u64,
}

/// The Gatan writer behind the tap.
struct GatanSink<'a, W: Write> {
    paths: Option<Paths>,
    scan: Option<(u32, u32)>,
    limit: u64,
    out: &'a mut W,
    collector: Option<Collector>,
    writer: Option<Writer>,
    dropped: Dropped,
    last_datagram: Instant,
    last_report: Instant,
}

impl<W: Write> GatanSink<'_, W> {
    fn writer(&mut self) -> anyhow::Result<(&mut Collector, &mut Writer)> {
        match (self.collector.as_mut(), self.writer.as_mut()) {
            (Some(c), Some(w)) => Ok((c, w)),
            _ => bail!("the recording is not open"),
        }
    }

    fn done(&self) -> bool {
        self.writer.as_ref().is_some_and(|w| w.summary().frames >= self.limit)
    }

    /// Writes the frames that are due (`idle`: every frame in flight).
    fn drain(&mut self, idle: bool) -> anyhow::Result<ControlFlow<()>> {
        let limit = self.limit;
        let (c, w) = self.writer()?;
        loop {
            if w.summary().frames >= limit {
                return Ok(ControlFlow::Break(()));
            }
            let Some(mut f) = (if idle { c.give_up() } else { c.pop() }) else { break };
            w.write_frame(&mut f, limit)?;
            c.recycle(f);
        }
        Ok(ControlFlow::Continue(()))
    }

    /// A progress line, once a second.
    fn report(&mut self) -> anyhow::Result<()> {
        if self.last_report.elapsed() >= Duration::from_secs(1) {
            self.last_report = Instant::now();
            let s = self.writer.as_ref().map(Writer::summary).unwrap_or_default();
            writeln!(self.out, "{} frames, {} placeholder blocks", s.frames, s.placeholder_blocks)?;
        }
        Ok(())
    }
}

impl<W: Write> Sink for GatanSink<'_, W> {
    fn start(&mut self, info: &TapInfo) -> anyhow::Result<()> {
        let format = detector::registry::by_id(info.mode)
            .with_context(|| format!("the pipeline runs detector format id {}, unknown here", info.mode))?;
        let Some(g) = gatan::geometry_of(format) else {
            bail!("{}", gatan::GatanError::NotK2(format.to_string()));
        };
        if !info.part_sectors.is_empty() {
            bail!(
                "a Gatan recording holds every sector, and this pipeline takes only sectors {:?} (ringdaq run \
                 --sectors); record it as .rdq instead",
                info.part_sectors
            );
        }
        let paths = self.paths.take().context("started twice")?;
        let opts = Options {
            scan: self.scan,
            fill: info.fill_value,
            info: vec![
                ("Detector".into(), format.description().into()),
                ("Recorder".into(), format!("ringdaq {}", env!("CARGO_PKG_VERSION"))),
            ],
        };
        // The frames' memory first: the recording has begun, for whoever watches for the files, once it is ready.
        self.collector = Some(Collector::new(g, DEFAULT_WINDOW));
        let w = Writer::create(paths, g, opts)?;
        writeln!(
            self.out,
            "recording to {} (+ {} sector files; detector mode {}; from block-ring slot {})",
            w.paths().gtg.display(),
            w.paths().bins.len(),
            format,
            info.first_slot
        )?;
        self.out.flush()?;
        self.writer = Some(w);
        self.last_datagram = Instant::now();
        Ok(())
    }

    fn datagram(&mut self, d: Tapped<'_>) -> anyhow::Result<ControlFlow<()>> {
        if self.done() {
            return Ok(ControlFlow::Break(()));
        }
        let (c, _) = self.writer()?;
        match c.push(usize::from(d.sector), d.bytes) {
            Pushed::Accepted => {}
            Pushed::Duplicate => self.dropped.duplicate += 1,
            Pushed::Late => self.dropped.late += 1,
            Pushed::Invalid(_) | Pushed::NoSuchSector(_) => self.dropped.invalid += 1,
        }
        self.drain(false)
    }

    fn idle(&mut self) -> anyhow::Result<ControlFlow<()>> {
        if self.done() {
            return Ok(ControlFlow::Break(()));
        }
        let idle = self.last_datagram.elapsed() >= IDLE && self.collector.as_ref().is_some_and(|c| c.in_flight() > 0);
        let flow = self.drain(idle)?;
        if flow.is_continue() {
            self.report()?;
        }
        Ok(flow)
    }

    fn slot_done(&mut self) -> anyhow::Result<ControlFlow<()>> {
        // Per slot, not per datagram: the clock is read once for up to 64 datagrams.
        self.last_datagram = Instant::now();
        self.report()?;
        Ok(ControlFlow::Continue(()))
    }

    fn missed(&mut self, n: u64) {
        self.dropped.missed_slots += n;
    }
}

/// `ringdaq record --format gatan`: records whole frames until `--frames` (for a scan, W·H + 1 by default),
/// `--seconds` or `stop`. Fails (after finishing the files) if a block was missing or fewer frames than asked came
/// before `--seconds` ran out.
pub fn record(runtime_dir: &Path, a: &RecordArgs, stop: &AtomicBool, out: &mut impl Write) -> anyhow::Result<()> {
    let paths = Paths::for_output(&a.out)?;
    let scan = a.scan.map(|s| (s.width, s.height));
    let limit = a.frames.or_else(|| a.scan.map(|s| u64::from(s.width) * u64::from(s.height) + 1));
    let mut sink = GatanSink {
        paths: Some(paths),
        scan,
        limit: limit.unwrap_or(u64::MAX),
        out,
        collector: None,
        writer: None,
        dropped: Dropped::default(),
        last_datagram: Instant::now(),
        last_report: Instant::now(),
    };
    let end = block_tap::run(runtime_dir, stop, a.seconds, &mut sink)?;
    let GatanSink { out, collector, writer, dropped, .. } = sink;
    let Some(w) = writer else { bail!("the recording did not start") };
    let gtg = w.paths().gtg.clone();
    let s: Summary = w.finish()?;
    let (skipped, unwritten) = collector.map_or((0, 0), |c| (c.skipped_leading(), c.in_flight()));
    writeln!(
        out,
        "recorded {} frames to {}: {} placeholder blocks in {} frames ({} of them whole frames); \
         leading partial frames skipped: {}; frames in flight at the end, not written: {}; dropped {} invalid, \
         {} late, {} duplicate datagrams; {} block slots missed",
        s.frames,
        gtg.display(),
        s.placeholder_blocks,
        s.incomplete_frames,
        s.placeholder_frames,
        skipped,
        unwritten,
        dropped.invalid,
        dropped.late,
        dropped.duplicate,
        dropped.missed_slots,
    )?;
    out.flush()?;
    if s.placeholder_blocks > 0 {
        bail!(
            "the recording is incomplete: {} blocks did not arrive (placeholders at the fill value in {} frames)",
            s.placeholder_blocks,
            s.incomplete_frames
        );
    }
    if let Some(n) = limit
        && s.frames < n
        && end == TapEnd::Time
    {
        bail!("the recording is short: {} of {n} frames in {} s", s.frames, a.seconds.unwrap_or_default());
    }
    Ok(())
}

/// What a Gatan replay sent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Replayed {
    /// Datagrams sent.
    pub datagrams: u64,
    /// Frames (rounds of every sector's blocks of a frame).
    pub frames: u64,
    /// Placeholder blocks not sent (they never arrived when recorded).
    pub placeholders: u64,
}

/// Sends a Gatan recording (`path`: its `.gtg` or any `.bin`) as the camera does: sector `s` to
/// `target:port_base + s`, the sectors interleaved block by block, at `fps` frames per second or as fast as
/// possible.
pub fn replay(
    path: &Path,
    target: IpAddr,
    port_base: u16,
    fps: Option<f64>,
    stop: &AtomicBool,
) -> anyhow::Result<Replayed> {
    if let Some(f) = fps
        && !(f > 0.0 && f.is_finite())
    {
        bail!("--fps {f} must be positive");
    }
    let mut r = Reader::open(Paths::discover(path)?)?;
    let per_frame = r.geometry().blocks_per_frame() as u64;
    let sock = crate::record_cmd::replay_socket(target)?;
    let _ = rustix::net::sockopt::set_socket_send_buffer_size(&sock, 8 << 20);
    let period = fps.map(|f| Duration::from_secs_f64(1.0 / f));
    let started = Instant::now();
    let mut out = Replayed::default();
    let mut read = 0u64;
    while let Some(b) = r.next_block()? {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        read += 1;
        if b.placeholder {
            out.placeholders += 1;
        } else {
            let port = port_base
                .checked_add(b.sector as u16)
                .with_context(|| format!("sector {} past the last port", b.sector))?;
            // A full socket buffer on the other side is its problem, as with a camera: keep going.
            let _ = sock.send_to(b.bytes, (target, port));
            out.datagrams += 1;
        }
        // Pace per round of the sectors (one block of each), as the simulator does.
        if let Some(p) = period
            && read.is_multiple_of(8)
        {
            let due = p.mul_f64(read as f64 / per_frame as f64);
            let now = started.elapsed();
            if due > now {
                std::thread::sleep(due - now);
            }
        }
    }
    out.frames = read / per_frame;
    Ok(out)
}
