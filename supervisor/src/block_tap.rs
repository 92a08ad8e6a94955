//! A read-only tap on a running pipeline's block ring: every datagram the receiver stores, with its sector and
//! kernel receive time, handed to a [`Sink`]. What `ringdaq record` writes, in either format, comes from here.
//!
//! The tap reads the block ring through a read-only mapping, as a lossy reader: it never slows the pipeline, and
//! a slot the receiver overwrote before it was copied is counted as missed, never handed on half.

use std::ops::ControlFlow;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use shm_protocol::messages::{Reply, Request};
use shm_protocol::pipeline::{self, BLOCK_RING, BlockSlotHeader, DatagramRecord};
use shm_protocol::{Access, Region, RingError};

/// What the tap found when it attached.
#[derive(Debug, Clone)]
pub struct TapInfo {
    /// The region's detector format id.
    pub mode: u32,
    /// The detector's sectors (streams) this pipeline takes, in socket order, when it takes only some of them
    /// (`ringdaq run --sectors`); empty for the whole detector.
    pub part_sectors: Vec<u32>,
    /// The pipeline's fill value for missing pixels.
    pub fill_value: u16,
    /// The block-ring slot the tap starts at.
    pub first_slot: u64,
}

/// One datagram as the receiver stored it.
#[derive(Debug, Clone, Copy)]
pub struct Tapped<'a> {
    /// Kernel receive time, ns since the Unix epoch.
    pub recv_ns: u64,
    /// The detector's sector (stream) it came on: its port is `port_base + sector`.
    pub sector: u16,
    /// The receiver's flags (truncated).
    pub flags: u16,
    /// The datagram (as stored: cut at the ring's datagram stride).
    pub bytes: &'a [u8],
}

/// Where tapped datagrams go.
pub trait Sink {
    /// Called once, attached, before the first datagram.
    fn start(&mut self, info: &TapInfo) -> anyhow::Result<()>;
    /// One datagram; `Break` ends the tap.
    fn datagram(&mut self, d: Tapped<'_>) -> anyhow::Result<ControlFlow<()>>;
    /// A block slot's datagrams were all handed on: once a slot (up to 64 datagrams), the place for work that
    /// need not be done per datagram (the clock, progress lines); `Break` ends the tap.
    fn slot_done(&mut self) -> anyhow::Result<ControlFlow<()>> {
        Ok(ControlFlow::Continue(()))
    }
    /// No datagram came for a short wait (2 ms); `Break` ends the tap.
    fn idle(&mut self) -> anyhow::Result<ControlFlow<()>> {
        Ok(ControlFlow::Continue(()))
    }
    /// `n` block slots were overwritten before they could be copied.
    fn missed(&mut self, _n: u64) {}
}

/// How a tap ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TapEnd {
    /// The sink said so.
    Sink,
    /// `stop` was set (SIGINT/SIGTERM).
    Stopped,
    /// `seconds` passed.
    Time,
}

/// Taps the pipeline at `runtime_dir` into `sink` until the sink ends it, `stop` is set or `seconds` pass.
pub fn run(
    runtime_dir: &Path,
    stop: &AtomicBool,
    seconds: Option<f64>,
    sink: &mut impl Sink,
) -> anyhow::Result<TapEnd> {
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
    // A pipeline that takes some of the detector's sectors has them as its sockets 0, 1, …: the tap names the
    // detector's sector (the port offset), so that a recording replays to the same ports.
    let sectors = area.placement.streams();
    // The streams are ascending and below the detector's count: as many as it has is all of them.
    let whole = sectors.len() == area.placement.detector_streams as usize;
    let detector_sector = |socket: u16| sectors.get(usize::from(socket)).map_or(socket, |&s| s as u16);
    let ring = region.ring(BLOCK_RING)?;
    let mut reader = ring.reader(ring.published(), false);
    sink.start(&TapInfo {
        mode: region.header().geometry.mode,
        part_sectors: if whole || sectors.is_empty() { Vec::new() } else { sectors.clone() },
        fill_value: params.fill_value as u16,
        first_slot: reader.next_seq(),
    })?;
    let started = Instant::now();
    let mut copy = vec![0u8; ring.slot_size()];
    loop {
        if stop.load(Ordering::Relaxed) {
            return Ok(TapEnd::Stopped);
        }
        if seconds.is_some_and(|s| started.elapsed().as_secs_f64() >= s) {
            return Ok(TapEnd::Time);
        }
        // The receiver does not wake readers it does not know of: wait in short steps.
        let slot = match reader.next(Some(Duration::from_millis(2))) {
            Ok(s) => s,
            Err(RingError::Timeout) => {
                if sink.idle()?.is_break() {
                    return Ok(TapEnd::Sink);
                }
                continue;
            }
            Err(RingError::Overrun { missed: m }) => {
                sink.missed(m);
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        // Copy, then check the slot was not rewritten meanwhile (seqlock): never hand on a torn slot.
        if !slot.copy_to(0, &mut copy)? {
            sink.missed(1);
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
            let d = Tapped {
                recv_ns: rec.recv_ns,
                sector: detector_sector(rec.sector),
                flags: rec.flags,
                bytes: &copy[off..off + len],
            };
            if sink.datagram(d)?.is_break() {
                return Ok(TapEnd::Sink);
            }
        }
        if sink.slot_done()?.is_break() {
            return Ok(TapEnd::Sink);
        }
    }
}
