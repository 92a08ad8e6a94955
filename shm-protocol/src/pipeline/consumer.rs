//! Frames for processes outside the pipeline: connect to a running pipeline, subscribe, and read its frames in
//! place, without copying them.
//!
//! A [`Subscription`] connects to the supervisor's control socket in a runtime directory and receives a
//! **read-only** memfd of the region: a consumer can read frames but can write nothing, not even a cursor. A
//! lossy subscription never slows the pipeline; frames overwritten before it reads them are counted as missed.
//! A lossless subscription holds a gate in the frame ring that the supervisor advances from the consumer's
//! release messages (sent when a [`Frame`] is dropped); the pipeline waits for it, so every frame is delivered.
//! When the consumer's connection closes (it exits or dies), the supervisor drops the gate at once.
//!
//! A subscription survives its supervisor: the frames already in the ring stay readable, and the subscription
//! takes its consumer line back from the supervisor that adopts the pipeline (`Request::Resubscribe`), which
//! holds the line (and, lossless, the gate) for it meanwhile, for a bounded time; a lossless one resumes at the
//! first frame it has not released. The caller sees nothing of it but a wait a little longer than usual.
//!
//! ```no_run
//! use std::time::Duration;
//! use shm_protocol::consumer::{Delivery, Subscription};
//!
//! // The pipeline started with `ringdaq --runtime-dir /run/ringdaq run ...`.
//! let mut sub = Subscription::connect("/run/ringdaq".as_ref(), Delivery::Lossy)?;
//! loop {
//!     let frame = match sub.next_frame(Some(Duration::from_secs(1))) {
//!         Ok(f) => f,
//!         Err(shm_protocol::consumer::ConsumerError::Timeout) => continue,
//!         Err(e) => return Err(e.into()),
//!     };
//!     let sum: u64 = frame.pixels().iter().map(|&p| u64::from(p)).sum();
//!     // A lossy reader checks after use that the frame was not overwritten meanwhile.
//!     if frame.is_valid() {
//!         println!("frame {} (acquisition {}, index {:?}): sum {sum}", frame.frame_id(), frame.acquisition_id(),
//!                  frame.index());
//!     }
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::control::{Connection, ControlError};
use crate::pipeline::messages::{PROTOCOL_VERSION, Reply, Request, Role};
use bytemuck::Zeroable;

use crate::pipeline::{FRAME_COMPLETE, FRAME_PIXELS_OFFSET, FRAME_RING, FrameHeader, NO_INDEX};
use crate::region::{Access, Region, RegionError};
use crate::ring::RingError;

/// How frames are delivered to a subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Never slows the pipeline; frames overwritten before they are read are missed (and counted).
    Lossy,
    /// Every frame is delivered: the pipeline waits while this consumer has not released a frame it would
    /// overwrite.
    Lossless,
}

/// Why a consumer operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ConsumerError {
    /// The control socket could not be reached or used.
    #[error("control socket {path}: {source}")]
    Control {
        /// The socket's path.
        path: String,
        /// What failed.
        #[source]
        source: ControlError,
    },
    /// The supervisor refused the subscription (a version mismatch, no free consumer line, ...).
    #[error("the pipeline refused the subscription: {0}")]
    Refused(String),
    /// The supervisor answered something this library does not expect.
    #[error("unexpected reply from the pipeline: {0}")]
    Protocol(String),
    /// The region could not be mapped.
    #[error(transparent)]
    Region(#[from] RegionError),
    /// Reading the frame ring failed.
    #[error("frame ring: {0}")]
    Ring(RingError),
    /// No frame arrived within the timeout.
    #[error("no frame within the timeout")]
    Timeout,
    /// The pipeline shut down (its control connection closed).
    #[error("the pipeline is gone")]
    Closed,
}

/// How long a subscription whose supervisor died waits for a successor before it reports
/// [`ConsumerError::Closed`]: as long as the stages wait for one (`orphan_timeout_s`, 30 s by default), and more.
const RESUME_WAIT: Duration = Duration::from_secs(40);

/// Pause between attempts to reach a successor (a new supervisor answers within milliseconds of starting).
const RESUME_PAUSE: Duration = Duration::from_millis(20);

/// How often a subscription that reads frames looks at its connection (a lossy one sends nothing that would
/// tell it the supervisor is gone), and how long one wait for a frame lasts between looks.
const LINK_CHECK: Duration = Duration::from_millis(100);

/// The subscription's tie to the supervisor, replaced when a successor takes the pipeline over.
#[derive(Debug)]
struct Link {
    conn: Connection,
    /// One past the last sequence released (lossless): what a successor is told.
    released: u64,
    /// Since when the supervisor has been gone, if it is.
    lost_since: Option<Instant>,
    /// When to try a successor next.
    next_try: Instant,
    /// When the connection was last looked at.
    checked: Instant,
    /// `unsubscribe` was called: never resume.
    ended: bool,
}

/// A subscription to a running pipeline's frames.
#[derive(Debug)]
pub struct Subscription {
    link: Mutex<Link>,
    /// The control socket, for a successor.
    path: PathBuf,
    region: Region,
    delivery: Delivery,
    cursor: u32,
    /// Next frame-ring sequence to read.
    next: u64,
    /// Frames missed so far (lossy).
    missed: u64,
    rows: usize,
    cols: usize,
}

impl Subscription {
    /// Connects to the pipeline whose runtime directory is `runtime_dir` (where its `control.sock` is) and
    /// subscribes. The first frame delivered is the next one the pipeline publishes.
    pub fn connect(runtime_dir: &Path, delivery: Delivery) -> Result<Self, ConsumerError> {
        let path = super::client::control_socket(runtime_dir);
        let request = Request::Subscribe { lossless: delivery == Delivery::Lossless };
        let (conn, cursor, next, fd) = subscribe(&path, &request, Duration::from_secs(10))?;
        let fd = fd.ok_or_else(|| ConsumerError::Protocol("no region memfd".into()))?;
        let region = Region::attach(fd, Access::ReadOnly)?;
        region.ring(FRAME_RING)?;
        let g = region.header().geometry;
        let now = Instant::now();
        Ok(Self {
            link: Mutex::new(Link {
                conn,
                released: next,
                lost_since: None,
                next_try: now,
                checked: now,
                ended: false,
            }),
            path,
            delivery,
            cursor,
            next,
            missed: 0,
            rows: g.frame_rows as usize,
            cols: g.frame_cols as usize,
            region,
        })
    }

    /// How frames are delivered.
    pub fn delivery(&self) -> Delivery {
        self.delivery
    }

    /// The frame-ring consumer line this subscription holds.
    pub fn cursor(&self) -> u32 {
        self.cursor
    }

    /// Rows and columns of a frame.
    pub fn shape(&self) -> (usize, usize) {
        (self.rows, self.cols)
    }

    /// Frames missed so far: overwritten before this (lossy) subscription read them.
    pub fn missed(&self) -> u64 {
        self.missed
    }

    /// The region, mapped read-only (for tools that look at more than frames).
    pub fn region(&self) -> &Region {
        &self.region
    }

    /// The frame-ring sequence the next [`Subscription::next_info`] looks at (at subscription: the first one
    /// this subscription gets, which a lossless subscriber releases first).
    pub fn next_seq(&self) -> u64 {
        self.next
    }

    /// Waits at most `timeout` until a frame is there for [`Subscription::next_info`] to take, without taking
    /// it. Needs only `&self`: bindings wait here without holding the lock that `next_info` needs, so that other
    /// threads release frames and read counters meanwhile. [`ConsumerError::Timeout`] if none came,
    /// [`ConsumerError::Closed`] if the pipeline shut down.
    pub fn wait_frame(&self, timeout: Option<Duration>) -> Result<(), ConsumerError> {
        let ring = self.region.ring(FRAME_RING)?;
        let mut reader = ring.reader(self.next, self.delivery == Delivery::Lossless);
        let start = Instant::now();
        loop {
            // In slices, as `next_info` waits: a supervisor that died is noticed and its successor rejoined.
            self.look_after_link()?;
            let left = timeout.map(|t| t.saturating_sub(start.elapsed()));
            let slice = left.map_or(LINK_CHECK, |l| l.min(LINK_CHECK));
            match reader.next(Some(slice)) {
                // Something to take (an overrun is reported, and skipped, by `next_info`).
                Ok(_) | Err(RingError::Overrun { .. }) => return Ok(()),
                Err(RingError::Timeout) if left.is_none_or(|l| l > slice) => continue,
                Err(RingError::Timeout) => {
                    // A shut-down pipeline publishes nothing more: tell it apart from a quiet one.
                    self.look_after_link()?;
                    return Err(ConsumerError::Timeout);
                }
                Err(e) => return Err(ConsumerError::Ring(e)),
            }
        }
    }

    /// The next frame, waiting for it at most `timeout` (`None`: without limit). Frames come in order; for a
    /// lossy subscription, [`Frame::missed_before`] says how many were skipped just before this one.
    ///
    /// A lossless subscription releases the frame (lets the pipeline reuse its slot) when the [`Frame`] is
    /// dropped.
    pub fn next_frame(&mut self, timeout: Option<Duration>) -> Result<Frame<'_>, ConsumerError> {
        let info = self.next_info(timeout)?;
        Ok(Frame { sub: self, info })
    }

    /// The next frame's description, without a borrow of the subscription: for bindings (Python) whose frame
    /// objects live on their own. The caller reads the pixels with [`Subscription::pixels`] and must
    /// [`Subscription::release`] the frame (lossless) when done with it.
    pub fn next_info(&mut self, timeout: Option<Duration>) -> Result<FrameInfo, ConsumerError> {
        let ring = self.region.ring(FRAME_RING)?;
        let mut reader = ring.reader(self.next, self.delivery == Delivery::Lossless);
        let mut missed_before = 0;
        let start = Instant::now();
        loop {
            // The wait is cut in slices so that a supervisor that died is noticed (and a successor rejoined, which
            // a lossless subscription's gate waits for) while no frame comes.
            self.look_after_link()?;
            let left = timeout.map(|t| t.saturating_sub(start.elapsed()));
            let slice = left.map_or(LINK_CHECK, |l| l.min(LINK_CHECK));
            let slot = match reader.next(Some(slice)) {
                Ok(s) => s,
                Err(RingError::Overrun { missed }) => {
                    missed_before += missed;
                    continue;
                }
                Err(RingError::Timeout) if left.is_none_or(|l| l > slice) => continue,
                Err(RingError::Timeout) => {
                    self.next = reader.next_seq();
                    self.missed += missed_before;
                    // A shut-down pipeline publishes nothing more: tell it apart from a quiet one.
                    self.look_after_link()?;
                    return Err(ConsumerError::Timeout);
                }
                Err(e) => return Err(ConsumerError::Ring(e)),
            };
            // The header was written before the frame was published. It is copied and checked against the
            // slot's stamp (a lossy reader may be lapped meanwhile: that frame is missed too); the pixels are
            // re-checked by the reader with `holds`.
            let mut header = FrameHeader::zeroed();
            let seq = slot.seq();
            if !slot.copy_to(0, bytemuck::bytes_of_mut(&mut header)).map_err(ConsumerError::Ring)? {
                missed_before += 1;
                continue;
            }
            self.next = reader.next_seq();
            self.missed += missed_before;
            return Ok(FrameInfo { seq, header, missed_before });
        }
    }

    /// The pixels of frame-ring sequence `seq`'s slot, row-major (`rows × cols`). What they hold is frame `seq`
    /// while [`Subscription::holds`] says so (always, for a lossless subscription until it releases `seq`).
    pub fn pixels(&self, seq: u64) -> &[u16] {
        let Ok(ring) = self.region.ring(FRAME_RING) else { return &[] };
        let n = self.rows * self.cols;
        // SAFETY: the slot lies in the mapping, which lives as long as `self`; a frame slot holds a header page
        // and then rows × cols u16 (the supervisor sized it from the same geometry). Pixels start page aligned,
        // so aligned for u16. Another process may rewrite them (the reader checks `holds`), but never unmaps them.
        unsafe { std::slice::from_raw_parts(ring.slot_ptr(seq).add(FRAME_PIXELS_OFFSET).cast::<u16>(), n) }
    }

    /// Whether the slot of `seq` still holds frame `seq` (a lossy reader checks this after using the pixels).
    pub fn holds(&self, seq: u64) -> bool {
        self.region.ring(FRAME_RING).is_ok_and(|r| r.holds(seq))
    }

    /// Ends the subscription: the supervisor drops its gate (lossless) and its consumer line at once. The mapping
    /// stays until the `Subscription` is dropped, so frames being read stay readable (but, lossless, are no
    /// longer held). Further waits report [`ConsumerError::Closed`].
    pub fn unsubscribe(&self) {
        let mut link = self.link();
        link.ended = true;
        link.conn.shutdown();
    }

    /// Releases every frame below `upto` to the pipeline (lossless; a no-op for a lossy subscription).
    pub fn release(&self, upto: u64) {
        if self.delivery == Delivery::Lossless {
            let mut link = self.link();
            link.released = link.released.max(upto);
            // A failed send means the supervisor is gone: the next wait looks for a successor, and tells it.
            if link.lost_since.is_none() && link.conn.send(&Request::Release { upto }).is_err() {
                link.lost_since = Some(Instant::now());
            }
        }
    }

    fn link(&self) -> MutexGuard<'_, Link> {
        self.link.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Notices a supervisor that is gone (every [`LINK_CHECK`]) and takes the subscription over to its successor
    /// (every [`RESUME_PAUSE`] while it is gone). [`ConsumerError::Closed`] once the pipeline is gone for good:
    /// unsubscribed, its control socket removed (a clean shutdown), or no successor within [`RESUME_WAIT`].
    fn look_after_link(&self) -> Result<(), ConsumerError> {
        let mut link = self.link();
        if link.ended {
            return Err(ConsumerError::Closed);
        }
        let now = Instant::now();
        if link.lost_since.is_none() {
            if now.duration_since(link.checked) < LINK_CHECK {
                return Ok(());
            }
            link.checked = now;
            // The supervisor sends nothing after `Subscribed`: a connection that reads as readable is at its end.
            if !link.conn.poll_readable(Duration::ZERO).unwrap_or(true) {
                return Ok(());
            }
            link.lost_since = Some(now);
        }
        let since = link.lost_since.unwrap_or(now);
        if !self.path.exists() || now.duration_since(since) > RESUME_WAIT {
            return Err(ConsumerError::Closed);
        }
        if now < link.next_try {
            return Ok(());
        }
        link.next_try = now + RESUME_PAUSE;
        let request = Request::Resubscribe {
            cursor: self.cursor,
            lossless: self.delivery == Delivery::Lossless,
            released: link.released,
        };
        match subscribe(&self.path, &request, Duration::from_secs(1)) {
            Ok((conn, ..)) => {
                tracing::info!(cursor = self.cursor, "subscription taken over by a new supervisor");
                link.conn = conn;
                link.lost_since = None;
                link.checked = now;
                Ok(())
            }
            // The successor freed the line (it waited too long) or is another pipeline: this subscription is over.
            Err(ConsumerError::Refused(why)) => {
                link.ended = true;
                Err(ConsumerError::Refused(why))
            }
            Err(_) => Ok(()),
        }
    }
}

/// Connects to the control socket at `path`, says hello and sends `request` (a subscription); the connection,
/// the consumer line, the first sequence and the region's memfd.
fn subscribe(
    path: &Path,
    request: &Request,
    timeout: Duration,
) -> Result<(Connection, u32, u64, Option<std::os::fd::OwnedFd>), ConsumerError> {
    let ctl = |source| ConsumerError::Control { path: path.display().to_string(), source };
    let mut conn = Connection::connect(path).map_err(ctl)?;
    conn.set_recv_timeout(Some(timeout)).map_err(ctl)?;
    conn.send(&Request::Hello { protocol: PROTOCOL_VERSION, role: Role::Client }).map_err(ctl)?;
    match conn.recv::<Reply>().map_err(ctl)?.msg {
        Reply::Welcome { .. } => {}
        Reply::Error { message } => return Err(ConsumerError::Refused(message)),
        other => return Err(ConsumerError::Protocol(format!("{other:?}"))),
    }
    conn.send(request).map_err(ctl)?;
    let got = conn.recv::<Reply>().map_err(ctl)?;
    let (cursor, next) = match got.msg {
        Reply::Subscribed { cursor, next_seq, .. } => (cursor, next_seq),
        Reply::Error { message } => return Err(ConsumerError::Refused(message)),
        other => return Err(ConsumerError::Protocol(format!("{other:?}"))),
    };
    conn.set_recv_timeout(None).map_err(ctl)?;
    Ok((conn, cursor, next, got.fds.into_iter().next()))
}

/// What a frame is: its sequence and header, copied out of the region.
#[derive(Debug, Clone, Copy)]
pub struct FrameInfo {
    /// The frame-ring sequence.
    pub seq: u64,
    /// The frame's header, as the assembler wrote it.
    pub header: FrameHeader,
    /// Frames skipped just before this one (a lossy subscription fell behind).
    pub missed_before: u64,
}

impl FrameInfo {
    /// The acquisition the frame belongs to (0: none; the pipeline is live-only then).
    pub fn acquisition_id(&self) -> u64 {
        self.header.acquisition_id
    }

    /// The frame's index in its acquisition.
    pub fn index(&self) -> Option<u64> {
        (self.header.index != NO_INDEX).then_some(self.header.index)
    }

    /// The detector's frame id.
    pub fn frame_id(&self) -> u32 {
        self.header.frame_id
    }

    /// Whether every block of the frame arrived.
    pub fn is_complete(&self) -> bool {
        self.header.status == FRAME_COMPLETE
    }
}

/// A frame in the region, read in place. Its pixels are valid while it lives (lossless), or until the pipeline
/// overwrites them (lossy: check [`Frame::is_valid`] after use).
#[derive(Debug)]
pub struct Frame<'s> {
    sub: &'s Subscription,
    info: FrameInfo,
}

impl Frame<'_> {
    /// The pixels, row-major, `rows × cols`.
    pub fn pixels(&self) -> &[u16] {
        self.sub.pixels(self.info.seq)
    }

    /// Rows and columns.
    pub fn shape(&self) -> (usize, usize) {
        self.sub.shape()
    }

    /// The frame-ring sequence.
    pub fn seq(&self) -> u64 {
        self.info.seq
    }

    /// The frame's header, as the assembler wrote it.
    pub fn header(&self) -> &FrameHeader {
        &self.info.header
    }

    /// The acquisition the frame belongs to (0: none; the pipeline is live-only then).
    pub fn acquisition_id(&self) -> u64 {
        self.info.acquisition_id()
    }

    /// The frame's index in its acquisition.
    pub fn index(&self) -> Option<u64> {
        self.info.index()
    }

    /// The detector's frame id.
    pub fn frame_id(&self) -> u32 {
        self.info.frame_id()
    }

    /// Whether every block of the frame arrived.
    pub fn is_complete(&self) -> bool {
        self.info.is_complete()
    }

    /// Kernel receive time of the frame's first block, ns since the Unix epoch.
    pub fn first_block_ns(&self) -> u64 {
        self.info.header.first_block_ns
    }

    /// Kernel receive time of its last block.
    pub fn last_block_ns(&self) -> u64 {
        self.info.header.last_block_ns
    }

    /// When the assembler published it.
    pub fn published_ns(&self) -> u64 {
        self.info.header.published_ns
    }

    /// Frames skipped just before this one (a lossy subscription fell behind).
    pub fn missed_before(&self) -> u64 {
        self.info.missed_before
    }

    /// Whether the slot still holds this frame: always true for a lossless subscription; for a lossy one,
    /// false means it was overwritten, and whatever was computed from it must be discarded.
    pub fn is_valid(&self) -> bool {
        self.sub.holds(self.info.seq)
    }
}

impl Drop for Frame<'_> {
    fn drop(&mut self) {
        self.sub.release(self.info.seq + 1);
    }
}
