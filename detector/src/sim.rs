//! A detector simulator that sends real-format datagrams, as the camera does, with optional fault injection.
//!
//! Stream `s` sends to `target:port_base + s`. Within a frame, datagrams go in the format's
//! [`send_order`](crate::format::DetectorFormat::send_order) (for a K2: the eight sectors interleaved block by block, each
//! sector's blocks in the camera's order). Pixel values follow [`crate::pattern`] ([`SimConfig::pattern`]). For a
//! periodic pattern (the counting one) payloads are encoded once per period and sent zero-copy with `sendmmsg`, so
//! one core can keep up with the camera's 400 frames/s. A pattern without a period (4D-STEM) is made and encoded
//! frame by frame on a second thread, two frames ahead of the sender, so sending takes one core and making the
//! frames another. The simulator knows the detector only through
//! [`DetectorFormat`](crate::format::DetectorFormat).

use std::collections::{BTreeMap, VecDeque};
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::format::{BlockMeta, Format};
use crate::pattern::Pattern;

/// What to send and which faults to inject.
#[derive(Debug, Clone, PartialEq)]
pub struct SimConfig {
    /// Destination address (stream `s` goes to port `port_base + s`).
    pub target: std::net::IpAddr,
    /// Port of stream 0.
    pub port_base: u16,
    /// Frames to send; 0 sends until stopped.
    pub frames: u64,
    /// Frames per second; `None` sends as fast as possible.
    pub fps: Option<f64>,
    /// Detector format (the configuration's `mode`).
    pub mode: Format,
    /// frame_id of the first frame.
    pub first_frame_id: u32,
    /// Frame index (0-based, in send order) from which the shutter/sync flag is set.
    pub sync_at: Option<u64>,
    /// Probability of dropping a datagram.
    pub drop: f64,
    /// Probability of sending a datagram twice.
    pub duplicate: f64,
    /// Shuffle the send order within windows of this many datagrams (0 or 1: no reordering).
    pub reorder: usize,
    /// Probability of replacing a datagram by an invalid one (for a K2: bad sync word, truncated, bad position;
    /// the format's [`sim_faults`](crate::format::DetectorFormat::sim_faults)).
    pub corrupt: f64,
    /// Frame index at which frame_id resets to `first_frame_id` (a new acquisition on the camera).
    pub reset_at: Option<u64>,
    /// Seed of the fault injector.
    pub seed: u64,
    /// Pixel values.
    pub pattern: Pattern,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            target: std::net::Ipv4Addr::LOCALHOST.into(),
            port_base: 2001,
            frames: 100,
            fps: None,
            mode: Format::default(),
            first_frame_id: 0,
            sync_at: None,
            drop: 0.0,
            duplicate: 0.0,
            reorder: 0,
            corrupt: 0.0,
            reset_at: None,
            seed: 1,
            pattern: Pattern::Counting,
        }
    }
}

/// What the simulator did; the ground truth a receiver's counters are checked against.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SimReport {
    /// Frames sent.
    pub frames: u64,
    /// Datagrams handed to the kernel (valid, duplicates and corrupt ones).
    pub datagrams: u64,
    /// Bytes handed to the kernel.
    pub bytes: u64,
    /// Valid datagrams not sent.
    pub dropped: u64,
    /// Extra copies sent.
    pub duplicated: u64,
    /// Invalid datagrams sent in place of valid ones.
    pub corrupted: u64,
    /// Seconds from the first send to the last.
    pub seconds: f64,
    /// Per frame index that lost blocks (dropped or corrupted): its frame_id and how many blocks it lost.
    pub lossy_frames: BTreeMap<u64, (u32, u32)>,
}

impl SimReport {
    /// Frames per second achieved.
    pub fn fps(&self) -> f64 {
        if self.seconds > 0.0 { self.frames as f64 / self.seconds } else { 0.0 }
    }
}

/// Why the simulator stopped early.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// Socket set-up or sending failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A configuration value out of range.
    #[error("invalid simulator setting: {0}")]
    Config(String),
}

/// Byte offset of each block's payload in a frame's encoded buffer, and the total at the end.
fn payload_offsets(f: Format) -> Vec<usize> {
    let mut offsets = vec![0usize];
    for b in 0..f.blocks_per_frame() {
        offsets.push(offsets[b] + f.payload_bytes(b));
    }
    offsets
}

/// Encodes frame `pixels` into `buf`, the payload of block `b` at `offsets[b]..offsets[b + 1]`.
fn encode_frame(f: Format, pixels: &[u16], offsets: &[usize], buf: &mut [u8]) -> Result<(), SimError> {
    for (b, w) in offsets.windows(2).enumerate() {
        f.encode_payload(b, pixels, &mut buf[w[0]..w[1]]).map_err(|e| SimError::Config(format!("encoding: {e}")))?;
    }
    Ok(())
}

/// Encoded payloads of one period of a periodic pattern: a frame's buffer per frame id modulo the period.
struct Payloads {
    offsets: Vec<usize>,
    frames: Vec<Vec<u8>>,
}

impl Payloads {
    fn new(f: Format, pattern: &Pattern, period: u32) -> Result<Self, SimError> {
        let offsets = payload_offsets(f);
        let total = offsets.last().copied().unwrap_or(0);
        let maker = pattern.frames(&*f);
        let mut pixels = vec![0u16; f.frame_pixels()];
        let mut frames = Vec::with_capacity(period as usize);
        for v in 0..period {
            maker.fill(v, &mut pixels);
            let mut buf = vec![0u8; total];
            encode_frame(f, &pixels, &offsets, &mut buf)?;
            frames.push(buf);
        }
        Ok(Self { offsets, frames })
    }

    fn get(&self, frame_id: u32, block: usize) -> &[u8] {
        let buf = &self.frames[frame_id as usize % self.frames.len()];
        &buf[self.offsets[block]..self.offsets[block + 1]]
    }
}

/// Frames made and encoded as they are sent (patterns without a period): the frames in flight, oldest first, each
/// as its blocks' payloads back to back.
struct LiveFrames {
    /// Byte offset of each block's payload in a frame's buffer, and the total at the end.
    offsets: Vec<usize>,
    /// (frame index, payloads) of the frames datagrams may still refer to.
    frames: VecDeque<(u64, Vec<u8>)>,
}

impl LiveFrames {
    fn get(&self, index: u64, block: usize) -> &[u8] {
        match self.frames.iter().find(|(i, _)| *i == index) {
            Some((_, buf)) => &buf[self.offsets[block]..self.offsets[block + 1]],
            None => &[],
        }
    }
}

/// A made frame (its index and payloads), or why it could not be made.
type Made = Result<(u64, Vec<u8>), SimError>;

/// The sender's side of frames made as they are sent.
struct Live<'a> {
    frames: &'a mut LiveFrames,
    /// Made frames, from maker `m` for frame indices `m` modulo their number.
    made: Vec<Receiver<Made>>,
    /// Buffers back to maker `m`.
    give_back: Vec<std::sync::mpsc::Sender<Vec<u8>>>,
}

/// The frame ids the simulator sends, by frame index: from `first_frame_id`, back to it at `reset_at`.
fn frame_ids(cfg: &SimConfig) -> impl Iterator<Item = (u64, u32)> + use<> {
    let (first, reset_at) = (cfg.first_frame_id, cfg.reset_at);
    let mut id = first;
    (0u64..).map(move |index| {
        if reset_at == Some(index) {
            id = first;
        }
        let this = id;
        id = id.wrapping_add(1);
        (index, this)
    })
}

/// Makes and encodes the frames whose index is `nth` modulo `of`, in send order, until the sender hangs up.
fn make_frames(
    cfg: &SimConfig,
    (nth, of): (u64, u64),
    offsets: &[usize],
    tx: SyncSender<Made>,
    recycled: Receiver<Vec<u8>>,
) {
    let f = cfg.mode;
    let maker = cfg.pattern.frames(&*f);
    let mut pixels = vec![0u16; f.frame_pixels()];
    let total = offsets.last().copied().unwrap_or(0);
    for (index, frame_id) in frame_ids(cfg).filter(|(i, _)| i % of == nth) {
        if cfg.frames != 0 && index >= cfg.frames {
            return;
        }
        let mut buf = recycled.try_recv().unwrap_or_else(|_| vec![0u8; total]);
        maker.fill(frame_id, &mut pixels);
        let result = encode_frame(f, &pixels, offsets, &mut buf).map(|()| (index, buf));
        let failed = result.is_err();
        if tx.send(result).is_err() || failed {
            return;
        }
    }
}

/// Most header bytes a format may have for the simulator (a K2 header is 40).
const MAX_HEADER: usize = 64;

/// One datagram to send: a header and a payload slice, `len` bytes in all (shorter for a truncation fault).
#[derive(Clone, Copy)]
struct Outgoing {
    stream: usize,
    header: [u8; MAX_HEADER],
    index: u64,
    frame_id: u32,
    block: usize,
    len: usize,
}

/// A small deterministic generator (xorshift64*) for fault decisions.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && ((self.next() >> 11) as f64 / (1u64 << 53) as f64) < p
    }
}

/// The simulator: set up once, then [`Simulator::run`].
pub struct Simulator {
    cfg: SimConfig,
    f: Format,
    /// Payloads encoded up front (periodic patterns); `None` when frames are made as they are sent.
    payloads: Option<Payloads>,
    socket: UdpSocket,
    targets: Vec<libc::sockaddr_storage>,
    target_len: libc::socklen_t,
}

impl std::fmt::Debug for Simulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Simulator").field("cfg", &self.cfg).finish_non_exhaustive()
    }
}

/// Datagrams per `sendmmsg` call.
const BATCH: usize = 64;

impl Simulator {
    /// Validates the configuration, encodes the payloads and opens the sending socket.
    pub fn new(cfg: SimConfig) -> Result<Self, SimError> {
        for (name, p) in [("drop", cfg.drop), ("duplicate", cfg.duplicate), ("corrupt", cfg.corrupt)] {
            if !(0.0..=1.0).contains(&p) {
                return Err(SimError::Config(format!("--{name} {p} is not a probability in 0..=1")));
            }
        }
        if let Some(f) = cfg.fps
            && !(f > 0.0 && f.is_finite())
        {
            return Err(SimError::Config(format!("--fps {f} must be positive")));
        }
        let f = cfg.mode;
        let streams = f.streams();
        if usize::from(cfg.port_base) + streams > 65536 {
            return Err(SimError::Config(format!("--port-base {} leaves no room for {streams} ports", cfg.port_base)));
        }
        if f.header_bytes() > MAX_HEADER {
            return Err(SimError::Config(format!("{f}: headers of {} bytes", f.header_bytes())));
        }
        // Frame ids run from any start and wrap around the period, so every variant is encoded up front.
        let payloads = cfg.pattern.period().map(|p| Payloads::new(f, &cfg.pattern, p)).transpose()?;
        let bind: SocketAddr = match cfg.target {
            std::net::IpAddr::V4(_) => (std::net::Ipv4Addr::UNSPECIFIED, 0).into(),
            std::net::IpAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
        };
        let socket =
            UdpSocket::bind(bind).map_err(|source| SimError::Io { what: "binding the sending socket", source })?;
        let _ = rustix::net::sockopt::set_socket_send_buffer_size(&socket, 8 << 20);
        let mut targets = Vec::with_capacity(streams);
        let mut target_len = 0;
        for s in 0..streams {
            let (st, len) = sockaddr(SocketAddr::new(cfg.target, cfg.port_base + s as u16));
            targets.push(st);
            target_len = len;
        }
        Ok(Self { cfg, f, payloads, socket, targets, target_len })
    }

    /// Sends the configured frames (or until `stop` is set) and reports what was sent.
    pub fn run(&self, stop: &AtomicBool) -> Result<SimReport, SimError> {
        if self.payloads.is_some() {
            return self.send(stop, None);
        }
        let offsets = payload_offsets(self.f);
        // Making and encoding a K2 IS frame takes about 4 ms of one core (0.6 ms the pattern, the rest the 12-bit
        // packing), so at 400 frames/s the frames are made by the cores the sender leaves, up to 4, each maker
        // taking every n-th frame and staying two frames ahead; a slow maker shows as a lower rate.
        let makers = std::thread::available_parallelism().map_or(1, |n| n.get().saturating_sub(1).clamp(1, 4));
        let mut made = Vec::new();
        let mut give_back = Vec::new();
        let mut live = LiveFrames { offsets, frames: VecDeque::new() };
        std::thread::scope(|s| {
            for m in 0..makers {
                let (tx, rx) = std::sync::mpsc::sync_channel(2);
                let (back, recycled) = std::sync::mpsc::channel();
                let (cfg, offsets) = (&self.cfg, live.offsets.clone());
                s.spawn(move || make_frames(cfg, (m as u64, makers as u64), &offsets, tx, recycled));
                made.push(rx);
                give_back.push(back);
            }
            // Dropping the receivers at the end (inside the scope) ends the makers.
            self.send(stop, Some(Live { frames: &mut live, made, give_back }))
        })
    }

    /// The send loop; `live` has the channels of made frames when the pattern has no period.
    fn send(&self, stop: &AtomicBool, mut live: Option<Live<'_>>) -> Result<SimReport, SimError> {
        let cfg = &self.cfg;
        let f = self.f;
        let mut rng = Rng(cfg.seed | 1);
        let mut report = SimReport::default();
        let mut pending: Vec<Outgoing> = Vec::with_capacity(cfg.reorder.max(BATCH) * 2);
        let blocks = f.blocks_per_frame();
        // Pacing checks the clock once per round of the streams (for a K2, one block of each sector).
        let round = f.streams();
        let hb = f.header_bytes();
        let faults = f.sim_faults();
        let start = Instant::now();
        let frame_period = cfg.fps.map(|f| Duration::from_secs_f64(1.0 / f));
        let mut frames = 0u64;
        for (index, frame_id) in frame_ids(cfg) {
            if (cfg.frames != 0 && index >= cfg.frames) || stop.load(Ordering::Relaxed) {
                break;
            }
            let sync = cfg.sync_at.is_some_and(|s| index >= s);
            let mut lost = 0u32;
            if let Some(l) = &mut live {
                let rx = &l.made[(index % l.made.len() as u64) as usize];
                let made = rx.recv().map_err(|_| SimError::Config("the frame maker stopped".into()))??;
                debug_assert_eq!(made.0, index);
                l.frames.frames.push_back(made);
            }
            for i in 0..blocks {
                let block = f.send_order(i);
                let meta = BlockMeta { frame_id, block, frame_seq: index, sync };
                let mut out = Outgoing {
                    stream: f.stream_of(block),
                    header: [0; MAX_HEADER],
                    index,
                    frame_id,
                    block,
                    len: hb + f.payload_bytes(block),
                };
                f.encode_header(&meta, &mut out.header[..hb]).map_err(|e| SimError::Config(e.to_string()))?;
                if rng.chance(cfg.drop) {
                    report.dropped += 1;
                    lost += 1;
                } else {
                    if rng.chance(cfg.corrupt) && !faults.is_empty() {
                        let reason = faults[(rng.next() % faults.len() as u64) as usize];
                        f.corrupt(reason, &mut out.header[..hb], &mut out.len)
                            .map_err(|e| SimError::Config(e.to_string()))?;
                        report.corrupted += 1;
                        lost += 1;
                    } else if rng.chance(cfg.duplicate) {
                        pending.push(out);
                        report.duplicated += 1;
                    }
                    pending.push(out);
                }
                // Pace per round of the streams: the deadline of the datagrams after this round.
                if (i + 1) % round == 0 && pending.len() >= cfg.reorder.max(BATCH) {
                    self.flush(&mut pending, &mut rng, &mut report, live.as_ref().map(|l| &*l.frames))?;
                    if let Some(l) = &mut live {
                        // Nothing pending refers to earlier frames any more: hand their buffers back.
                        while l.frames.frames.len() > 1 {
                            if let Some((i, buf)) = l.frames.frames.pop_front() {
                                let _ = l.give_back[(i % l.give_back.len() as u64) as usize].send(buf);
                            }
                        }
                    }
                    if let Some(p) = frame_period {
                        let due = start + p.mul_f64(index as f64 + (i + 1) as f64 / blocks as f64);
                        let now = Instant::now();
                        if due > now {
                            std::thread::sleep(due - now);
                        }
                    }
                }
            }
            if lost > 0 {
                report.lossy_frames.insert(index, (frame_id, lost));
            }
            frames = index + 1;
        }
        self.flush(&mut pending, &mut rng, &mut report, live.as_ref().map(|l| &*l.frames))?;
        report.frames = frames;
        report.seconds = start.elapsed().as_secs_f64();
        Ok(report)
    }

    /// Shuffles `pending` (when reordering) and sends it all.
    fn flush(
        &self,
        pending: &mut Vec<Outgoing>,
        rng: &mut Rng,
        report: &mut SimReport,
        live: Option<&LiveFrames>,
    ) -> Result<(), SimError> {
        if self.cfg.reorder > 1 {
            for w in pending.chunks_mut(self.cfg.reorder) {
                for i in (1..w.len()).rev() {
                    let j = (rng.next() % (i as u64 + 1)) as usize;
                    w.swap(i, j);
                }
            }
        }
        for chunk in pending.chunks(BATCH) {
            self.send_batch(chunk, report, live)?;
        }
        pending.clear();
        Ok(())
    }

    fn send_batch(
        &self,
        batch: &[Outgoing],
        report: &mut SimReport,
        live: Option<&LiveFrames>,
    ) -> Result<(), SimError> {
        let mut iov = [[libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 }; 2]; BATCH];
        // SAFETY: mmsghdr is a plain C struct for which all-zero is a valid value.
        let mut msgs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
        for (i, o) in batch.iter().enumerate() {
            let payload = match (&self.payloads, live) {
                (Some(p), _) => p.get(o.frame_id, o.block),
                (None, Some(l)) => l.get(o.index, o.block),
                (None, None) => &[],
            };
            let hb = self.f.header_bytes();
            iov[i][0] = libc::iovec { iov_base: o.header.as_ptr() as *mut _, iov_len: o.len.min(hb) };
            iov[i][1] = libc::iovec {
                iov_base: payload.as_ptr() as *mut _,
                iov_len: o.len.saturating_sub(hb).min(payload.len()),
            };
            let h = &mut msgs[i].msg_hdr;
            h.msg_name = (&self.targets[o.stream] as *const libc::sockaddr_storage).cast_mut().cast();
            h.msg_namelen = self.target_len;
            h.msg_iov = iov[i].as_mut_ptr();
            h.msg_iovlen = 2;
        }
        let mut sent = 0;
        while sent < batch.len() {
            // SAFETY: msgs[sent..batch.len()] are initialised above and point at iovecs, headers, payloads and
            // addresses that all outlive this call; the kernel only reads them (and writes msg_len).
            let n = unsafe {
                libc::sendmmsg(self.socket.as_raw_fd(), msgs.as_mut_ptr().add(sent), (batch.len() - sent) as u32, 0)
            };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                match e.raw_os_error() {
                    Some(libc::EINTR) | Some(libc::ENOBUFS) | Some(libc::EAGAIN) => continue,
                    // A port without a listener answers with ICMP; the camera does not care either.
                    Some(libc::ECONNREFUSED) => continue,
                    _ => {
                        return Err(SimError::Io { what: "sendmmsg", source: e });
                    }
                }
            }
            for m in &msgs[sent..sent + n as usize] {
                report.bytes += u64::from(m.msg_len);
            }
            sent += n as usize;
        }
        report.datagrams += batch.len() as u64;
        Ok(())
    }
}

fn sockaddr(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is a plain C struct; all-zero is valid.
    let mut st: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(a.ip().octets()) },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and suitably aligned for sockaddr_in.
            unsafe { std::ptr::write((&mut st as *mut libc::sockaddr_storage).cast(), sin) };
            (st, std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t)
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr { s6_addr: a.ip().octets() },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: sockaddr_storage is larger than and suitably aligned for sockaddr_in6.
            unsafe { std::ptr::write((&mut st as *mut libc::sockaddr_storage).cast(), sin6) };
            (st, std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t)
        }
    }
}
