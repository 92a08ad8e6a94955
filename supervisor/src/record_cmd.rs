//! `ringdaq record` and `ringdaq sim --replay`: capture the raw datagrams a running pipeline receives, with their
//! sector and kernel receive time, and send them again later (to reproduce a problem, or test a change on real
//! traffic).
//!
//! The recorder reads the block ring through a read-only mapping, as a lossy reader: it never slows the pipeline,
//! and a slot the receiver overwrote before it was copied is counted as missed, never written half.
//!
//! File format (little-endian): the 8 bytes `RDQREC01`, the detector mode id (u32) and 4 reserved bytes; then
//! per datagram a 16-byte record head `recv_ns: u64, sector: u16, flags: u16, len: u32` and `len` bytes.

use std::io::{BufReader, BufWriter, Read, Write};
use std::net::{IpAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use shm_protocol::messages::{Reply, Request};
use shm_protocol::pipeline::{self, BLOCK_RING, BlockSlotHeader, DatagramRecord};
use shm_protocol::{Access, Region, RingError};

/// The first 8 bytes of a recording.
pub const MAGIC: &[u8; 8] = b"RDQREC01";

/// Options of `ringdaq record`.
#[derive(Debug, Clone, Args)]
pub struct RecordArgs {
    /// The file to write.
    #[arg(long)]
    pub out: PathBuf,
    /// Stop after this many datagrams.
    #[arg(long)]
    pub datagrams: Option<u64>,
    /// Stop after this many seconds.
    #[arg(long)]
    pub seconds: Option<f64>,
}

/// Records until `stop`, `--datagrams` or `--seconds`; prints what it recorded to `out`.
pub fn record(runtime_dir: &Path, a: &RecordArgs, stop: &AtomicBool, out: &mut impl Write) -> anyhow::Result<()> {
    let mut conn = crate::client::connect(runtime_dir)?;
    let r = conn.call::<_, Reply>(&Request::MapRegion).context("asking for the region")?;
    let fd = match r.msg {
        Reply::Region => r.fds.into_iter().next().context("no region descriptor came")?,
        Reply::Error { message } => bail!("{message}"),
        other => bail!("unexpected reply {other:?}"),
    };
    let region = Region::attach(fd, Access::ReadOnly)?;
    let area = pipeline::pipeline_area(&region)?;
    let params = area.params;
    // A pipeline that takes some of the detector's sectors has them as its sockets 0, 1, ...: the recording names
    // the detector's sector (the port offset), so that it replays to the same ports.
    let sectors = area.placement.streams();
    let detector_sector = |socket: u16| sectors.get(usize::from(socket)).map_or(socket, |&s| s as u16);
    let ring = region.ring(BLOCK_RING)?;
    let file = std::fs::File::create(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let mut w = BufWriter::with_capacity(1 << 20, file);
    w.write_all(MAGIC)?;
    w.write_all(&region.header().geometry.mode.to_le_bytes())?;
    w.write_all(&[0; 4])?;
    let mut reader = ring.reader(ring.published(), false);
    writeln!(out, "recording to {} (from block-ring slot {})", a.out.display(), reader.next_seq())?;
    out.flush()?;
    let started = Instant::now();
    let (mut datagrams, mut missed) = (0u64, 0u64);
    let slot_len = ring.slot_size();
    let mut copy = vec![0u8; slot_len];
    let mut last_report = Instant::now();
    loop {
        if stop.load(Ordering::Relaxed)
            || a.datagrams.is_some_and(|n| datagrams >= n)
            || a.seconds.is_some_and(|s| started.elapsed().as_secs_f64() >= s)
        {
            break;
        }
        // The receiver does not wake readers it does not know of: wait in short steps.
        let slot = match reader.next(Some(Duration::from_millis(2))) {
            Ok(s) => s,
            Err(RingError::Timeout) => continue,
            Err(RingError::Overrun { missed: m }) => {
                missed += m;
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        // Copy, then check the slot was not rewritten meanwhile (seqlock): never write a torn slot.
        if !slot.copy_to(0, &mut copy)? {
            missed += 1;
            continue;
        }
        let hdr: BlockSlotHeader = bytemuck::pod_read_unaligned(&copy[..size_of::<BlockSlotHeader>()]);
        let count = (hdr.count as usize).min(params.datagrams_per_slot as usize);
        let stride = params.datagram_stride as usize;
        for i in 0..count {
            let at = size_of::<BlockSlotHeader>() + i * size_of::<DatagramRecord>();
            let rec: DatagramRecord = bytemuck::pod_read_unaligned(&copy[at..at + size_of::<DatagramRecord>()]);
            let len = (rec.len as usize).min(stride);
            let off = params.datagram_offset as usize + i * stride;
            w.write_all(&rec.recv_ns.to_le_bytes())?;
            w.write_all(&detector_sector(rec.sector).to_le_bytes())?;
            w.write_all(&rec.flags.to_le_bytes())?;
            w.write_all(&(len as u32).to_le_bytes())?;
            w.write_all(&copy[off..off + len])?;
            datagrams += 1;
            if a.datagrams.is_some_and(|n| datagrams >= n) {
                break;
            }
        }
        if last_report.elapsed() >= Duration::from_secs(1) {
            last_report = Instant::now();
            writeln!(out, "{datagrams} datagrams, {missed} block slots missed")?;
        }
    }
    w.flush()?;
    writeln!(out, "recorded {datagrams} datagrams ({missed} block slots missed) to {}", a.out.display())?;
    Ok(())
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

/// Sends a recording's datagrams to `target:port_base + sector`, keeping their recorded spacing divided by
/// `speed` (0: as fast as possible). Returns how many were sent.
pub fn replay(path: &Path, target: IpAddr, port_base: u16, speed: f64, stop: &AtomicBool) -> anyhow::Result<u64> {
    let (_mode, datagrams) = read_recording(path)?;
    let bind: IpAddr =
        if target.is_ipv4() { std::net::Ipv4Addr::UNSPECIFIED.into() } else { std::net::Ipv6Addr::UNSPECIFIED.into() };
    let sock = UdpSocket::bind((bind, 0)).context("replay socket")?;
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
