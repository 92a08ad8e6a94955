//! `ringdaq record` and `ringdaq sim --replay`: capture the raw datagrams a running pipeline receives, with their
//! sector and kernel receive time, and send them again later (to reproduce a problem, or test a change on real
//! traffic).
//!
//! The datagrams come from a read-only tap on the block ring ([`crate::block_tap`]), which never slows the
//! pipeline. Two formats: ringdaq's own (`.rdq`, below: every datagram with its sector and receive time) and
//! Gatan's raw K2 layout (`--format gatan`, [`crate::gatan_cmd`]: whole frames, readable by LiberTEM).
//!
//! File format (little-endian): the 8 bytes `RDQREC01`, the detector mode id (u32) and 4 reserved bytes; then
//! per datagram a 16-byte record head `recv_ns: u64, sector: u16, flags: u16, len: u32` and `len` bytes.

use std::io::{BufReader, BufWriter, Read, Write};
use std::net::{IpAddr, UdpSocket};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;

use crate::block_tap::{self, Sink, TapInfo, Tapped};

/// The first 8 bytes of a recording.
pub const MAGIC: &[u8; 8] = b"RDQREC01";

/// Formats `ringdaq record` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RecordFormat {
    /// ringdaq's own: every datagram with its sector and receive time (one `.rdq` file).
    Rdq,
    /// Gatan's raw K2 layout: `NAME.gtg` and `NAME1.bin` … `NAME8.bin`, whole frames (LiberTEM reads it).
    Gatan,
}

/// A scan size, `WxH`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scan {
    /// Positions across.
    pub width: u32,
    /// Positions down.
    pub height: u32,
}

impl std::str::FromStr for Scan {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (w, h) = s.split_once(['x', 'X']).ok_or_else(|| format!("{s:?}: a scan is WxH, e.g. 256x256"))?;
        let parse = |v: &str| v.trim().parse::<u32>().ok().filter(|&n| n > 0 && n <= i32::MAX as u32);
        match (parse(w), parse(h)) {
            (Some(width), Some(height)) => Ok(Self { width, height }),
            _ => Err(format!("{s:?}: a scan is WxH with positive sizes, e.g. 256x256")),
        }
    }
}

/// Options of `ringdaq record`.
#[derive(Debug, Clone, Args)]
pub struct RecordArgs {
    /// The file to write (`--format gatan`: DIR/NAME, for NAME.gtg and NAME1.bin … NAME8.bin).
    #[arg(long)]
    pub out: PathBuf,
    /// The format.
    #[arg(long, value_enum, default_value_t = RecordFormat::Rdq)]
    pub format: RecordFormat,
    /// Stop after this many datagrams (`--format rdq`).
    #[arg(long)]
    pub datagrams: Option<u64>,
    /// Stop after this many frames (`--format gatan`).
    #[arg(long)]
    pub frames: Option<u64>,
    /// The scan, WxH (`--format gatan`): written into the .gtg, so readers see a scan of that shape; records
    /// W·H + 1 frames unless --frames says otherwise.
    #[arg(long)]
    pub scan: Option<Scan>,
    /// Stop after this many seconds.
    #[arg(long)]
    pub seconds: Option<f64>,
}

/// Records until `stop`, `--datagrams`/`--frames` or `--seconds`; prints what it recorded to `out`.
pub fn record(runtime_dir: &Path, a: &RecordArgs, stop: &AtomicBool, out: &mut impl Write) -> anyhow::Result<()> {
    match a.format {
        RecordFormat::Gatan => {
            if a.datagrams.is_some() {
                bail!("--datagrams is for --format rdq; a Gatan recording counts --frames");
            }
            return crate::gatan_cmd::record(runtime_dir, a, stop, out);
        }
        RecordFormat::Rdq => {
            if a.frames.is_some() || a.scan.is_some() {
                bail!("--frames and --scan are for --format gatan; an .rdq recording counts --datagrams");
            }
        }
    }
    let mut sink = RdqSink { w: None, a, out, datagrams: 0, missed: 0, last_report: Instant::now() };
    block_tap::run(runtime_dir, stop, a.seconds, &mut sink)?;
    let RdqSink { w, out, datagrams, missed, .. } = sink;
    if let Some(mut w) = w {
        w.flush()?;
    }
    writeln!(out, "recorded {datagrams} datagrams ({missed} block slots missed) to {}", a.out.display())?;
    Ok(())
}

/// The `.rdq` writer behind the tap.
struct RdqSink<'a, W: Write> {
    /// The file, created once the tap is attached (its existence tells scripts the recording has begun).
    w: Option<BufWriter<std::fs::File>>,
    a: &'a RecordArgs,
    out: &'a mut W,
    datagrams: u64,
    missed: u64,
    last_report: Instant,
}

impl<W: Write> RdqSink<'_, W> {
    fn done(&self) -> bool {
        self.a.datagrams.is_some_and(|n| self.datagrams >= n)
    }

    fn report(&mut self) -> anyhow::Result<()> {
        if self.last_report.elapsed() >= Duration::from_secs(1) {
            self.last_report = Instant::now();
            writeln!(self.out, "{} datagrams, {} block slots missed", self.datagrams, self.missed)?;
        }
        Ok(())
    }
}

impl<W: Write> Sink for RdqSink<'_, W> {
    fn start(&mut self, info: &TapInfo) -> anyhow::Result<()> {
        let a = self.a;
        let file = std::fs::File::create(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
        let mut w = BufWriter::with_capacity(1 << 20, file);
        w.write_all(MAGIC)?;
        w.write_all(&info.mode.to_le_bytes())?;
        w.write_all(&[0; 4])?;
        self.w = Some(w);
        writeln!(self.out, "recording to {} (from block-ring slot {})", self.a.out.display(), info.first_slot)?;
        self.out.flush()?;
        Ok(())
    }

    fn datagram(&mut self, d: Tapped<'_>) -> anyhow::Result<ControlFlow<()>> {
        if self.done() {
            return Ok(ControlFlow::Break(()));
        }
        let w = self.w.as_mut().context("the recording is not open")?;
        w.write_all(&d.recv_ns.to_le_bytes())?;
        w.write_all(&d.sector.to_le_bytes())?;
        w.write_all(&d.flags.to_le_bytes())?;
        w.write_all(&(d.bytes.len() as u32).to_le_bytes())?;
        w.write_all(d.bytes)?;
        self.datagrams += 1;
        Ok(if self.done() { ControlFlow::Break(()) } else { ControlFlow::Continue(()) })
    }

    fn slot_done(&mut self) -> anyhow::Result<ControlFlow<()>> {
        self.report()?;
        Ok(ControlFlow::Continue(()))
    }

    fn idle(&mut self) -> anyhow::Result<ControlFlow<()>> {
        self.report()?;
        Ok(if self.done() { ControlFlow::Break(()) } else { ControlFlow::Continue(()) })
    }

    fn missed(&mut self, n: u64) {
        self.missed += n;
    }
}

/// One recorded datagram.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Recorded {
    /// Kernel receive time, ns since the Unix epoch.
    pub recv_ns: u64,
    /// The detector's sector (stream) it came on: its port is `port_base + sector`.
    pub sector: u16,
    /// The receiver's flags (truncated).
    pub flags: u16,
    /// The datagram.
    pub bytes: Vec<u8>,
}

/// Reads a recording: its mode id and its datagrams, in order.
pub fn read_recording(path: &Path) -> anyhow::Result<(u32, impl Iterator<Item = anyhow::Result<Recorded>>)> {
    let mut r =
        BufReader::with_capacity(1 << 20, std::fs::File::open(path).with_context(|| format!("{}", path.display()))?);
    let mut head = [0u8; 16];
    r.read_exact(&mut head).context("reading the recording's header")?;
    if &head[..8] != MAGIC {
        bail!("{} is not a ringdaq recording", path.display());
    }
    let mode = u32::from_le_bytes([head[8], head[9], head[10], head[11]]);
    let it = std::iter::from_fn(move || {
        let mut h = [0u8; 16];
        match r.read_exact(&mut h) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return None,
            Err(e) => return Some(Err(e.into())),
        }
        let len = u32::from_le_bytes([h[12], h[13], h[14], h[15]]) as usize;
        if len > 1 << 20 {
            return Some(Err(anyhow::anyhow!("corrupt recording: a datagram of {len} bytes")));
        }
        let mut bytes = vec![0u8; len];
        if let Err(e) = r.read_exact(&mut bytes) {
            return Some(Err(anyhow::anyhow!("truncated recording: {e}")));
        }
        Some(Ok(Recorded {
            recv_ns: u64::from_le_bytes(h[..8].try_into().unwrap_or_default()),
            sector: u16::from_le_bytes([h[8], h[9]]),
            flags: u16::from_le_bytes([h[10], h[11]]),
            bytes,
        }))
    });
    Ok((mode, it))
}

/// A socket to send a replay to `target` from (any local address of its family, any port).
pub(crate) fn replay_socket(target: IpAddr) -> anyhow::Result<UdpSocket> {
    let bind: IpAddr =
        if target.is_ipv4() { std::net::Ipv4Addr::UNSPECIFIED.into() } else { std::net::Ipv6Addr::UNSPECIFIED.into() };
    UdpSocket::bind((bind, 0)).context("replay socket")
}

/// Sends a recording's datagrams to `target:port_base + sector`, keeping their recorded spacing divided by
/// `speed` (0: as fast as possible). Returns how many were sent.
pub fn replay(path: &Path, target: IpAddr, port_base: u16, speed: f64, stop: &AtomicBool) -> anyhow::Result<u64> {
    let (_mode, datagrams) = read_recording(path)?;
    let sock = replay_socket(target)?;
    let started = Instant::now();
    let mut first_ns = None;
    let mut sent = 0u64;
    // The receiver takes the sockets in turns, so a recording is in receive order per sector only; a window of
    // datagrams, sent oldest first, restores the order on the wire.
    const WINDOW: usize = 4096;
    let mut heap = std::collections::BinaryHeap::with_capacity(WINDOW + 1);
    let mut seq = 0u64;
    let mut datagrams = datagrams.fuse();
    loop {
        while heap.len() < WINDOW {
            match datagrams.next() {
                Some(d) => {
                    let d = d?;
                    heap.push(std::cmp::Reverse((d.recv_ns, seq, d)));
                    seq += 1;
                }
                None => break,
            }
        }
        let Some(std::cmp::Reverse((_, _, d))) = heap.pop() else { break };
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let t0 = *first_ns.get_or_insert(d.recv_ns);
        if speed > 0.0 {
            let due = Duration::from_nanos(((d.recv_ns.saturating_sub(t0)) as f64 / speed) as u64);
            let now = started.elapsed();
            if due > now {
                std::thread::sleep(due - now);
            }
        }
        let port =
            port_base.checked_add(d.sector).with_context(|| format!("sector {} past the last port", d.sector))?;
        // A full socket buffer on the other side is its problem, as with a camera: keep going.
        let _ = sock.send_to(&d.bytes, (target, port));
        sent += 1;
    }
    Ok(sent)
}
