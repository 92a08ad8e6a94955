//! The assembly stage: raw datagrams from the block ring → validated, decoded frames in the frame ring.
//!
//! The detector is known only through its format ([`detector::DetectorFormat`], named by the region header's
//! mode id in the [`detector::registry`]). Every datagram is classified
//! ([`detector::DetectorFormat::classify`]); invalid ones are counted by reason (the format's reasons, then the
//! pipeline's `oversized` and `out_of_window`) and dropped. Valid blocks are not copied: a frame in flight records
//! where its blocks lie in the block ring, and the block ring is committed only past blocks of published frames.
//! When a frame is complete (or given up on) it is decoded in one pass from its datagrams in the block ring
//! straight into a frame-ring slot ([`detector::DetectorFormat::decode_frame`]) and published.
//!
//! Frames are published in frame-id order. A frame missing blocks is published as incomplete, its missing
//! pixels set to the region's fill value, when a frame [`AssemblerConfig::window`] ids newer starts to arrive,
//! after [`AssemblerConfig::timeout`] without a block, or when the block ring is nearly full. Duplicates are
//! ignored; blocks of published frames are counted late. A frame_id that jumps outside the window is followed
//! only once [`AssemblerConfig::reset_threshold`] datagrams agree on it (a camera reset); fewer are counted
//! out-of-window and dropped.

pub mod acquisition;
pub mod window;

use std::sync::atomic::Ordering;
use std::time::Duration;

use detector::{PixelType, Streams, View};
use shm_protocol::pipeline::{
    self, ASSEMBLER_CURSOR, BLOCK_RING, BlockSlotHeader, DATAGRAM_TRUNCATED, DatagramRecord, FRAME_COMPLETE,
    FRAME_INCOMPLETE, FRAME_PIXELS_OFFSET, FRAME_RING, FRAME_SYNC, FrameHeader, MAX_BLOCKS_PER_FRAME,
    MAX_INVALID_REASONS, NO_INDEX, PipelineArea, PipelineParams, Stage,
};
use shm_protocol::{Consumer, Producer, ReadSlot, Region, Ring, RingError};

use window::{BlockRef, InFlight, Window};

/// Tuning of the assembler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AssemblerConfig {
    /// Frames in flight; a block of frame `base + window` forces the oldest out.
    pub window: usize,
    /// A frame that got no block for this long is published as it is.
    pub timeout: Duration,
    /// Datagrams that must agree on a frame id outside the window before it is taken as a reset.
    pub reset_threshold: u32,
    /// A running acquisition that gets no frame for this long (while a receiver runs) ends, short, with the
    /// reason `stream_idle`; `None`: never.
    pub stream_idle: Option<Duration>,
}

impl Default for AssemblerConfig {
    fn default() -> Self {
        Self {
            window: 4,
            timeout: Duration::from_millis(100),
            reset_threshold: 32,
            stream_idle: Some(DEFAULT_STREAM_IDLE),
        }
    }
}

/// Default of [`AssemblerConfig::stream_idle`]: 5 s, far beyond a frame period (2.5 ms for a K2 IS at 400 Hz)
/// and a stage restart (a few ms), short enough that a detector that stopped ends the acquisition promptly.
pub const DEFAULT_STREAM_IDLE: Duration = Duration::from_secs(5);

/// Why the assembler stopped.
#[derive(Debug, thiserror::Error)]
pub enum AssemblerError {
    /// The region is not a pipeline region.
    #[error(transparent)]
    Pipeline(#[from] pipeline::PipelineError),
    /// A ring operation failed.
    #[error(transparent)]
    Ring(#[from] RingError),
    /// The region lacks a ring.
    #[error(transparent)]
    Region(#[from] shm_protocol::RegionError),
    /// The region's geometry names no known detector mode, or its rings do not fit it.
    #[error("region geometry unusable: {0}")]
    Geometry(String),
}

/// Published frames remembered, to tell late blocks from a reset.
const LATE_FRAMES: i64 = 64;
/// Frame ids this far ahead of the window are a jump, not a newer frame.
const AHEAD_FRAMES: i64 = 64;
/// Candidates for a reset tracked at once.
const MAX_CANDIDATES: usize = 4;
/// How long a wait for input lasts before the assembler looks at timeouts and commands, while frames are in
/// flight.
const TICK: Duration = Duration::from_millis(10);
/// The same with nothing in flight: no timeout can fall due, so the assembler sleeps longer (an idle pipeline
/// should cost next to nothing). Commands (`ringdaq stop`, shutdown) wait at most this long.
const IDLE_TICK: Duration = Duration::from_millis(250);

/// A valid block as it arrived: which frame and block, where its datagram lies, when, and its sync flag.
#[derive(Debug, Clone, Copy)]
struct Arrival {
    frame_id: u32,
    block: usize,
    at: BlockRef,
    recv_ns: u64,
    sync: bool,
}

/// A frame id reset not yet confirmed: its blocks, kept in a window of their own.
struct Candidate {
    window: Window,
    datagrams: u32,
    /// Main-window base when the candidate appeared; it is dropped once the main window moved on by `window`.
    seen_at_base: u32,
}

/// The assembly loop over one region.
pub struct Assembler<'r> {
    /// The detector, or the part of it this pipeline takes (its streams are the region's sockets).
    format: View,
    /// Classifies the slot being read (apart: the slot's guard borrows `blocks`).
    scan: Scan<'r>,
    /// Counter index of the pipeline's `out_of_window` reason.
    out_of_window: usize,
    cfg: AssemblerConfig,
    area: &'r PipelineArea,
    params: PipelineParams,
    block_ring: Ring<'r>,
    blocks: Consumer<'r>,
    frames: Producer<'r>,
    window: Option<Window>,
    /// Frame ids outside the window that might be a reset (or the stream's start), each in a window of its own;
    /// garbage ids form small candidates of their own and never win.
    candidates: Vec<Candidate>,
    /// Nothing was published since the window's base was set (its base may still move back).
    fresh_base: bool,
    /// The frame id this process resumed at after a restart (the previous instance published what is below).
    resumed_at: Option<u32>,
    /// Block-ring sequences below this were there at start-up: blocks re-read from them may belong to frames the
    /// previous instance published. Blocks received later are news (a new stream may reuse those frame ids).
    resumed_through: u64,
    /// Scratch: datagram per block index of the frame being decoded.
    datagrams: Vec<Option<&'r [u8]>>,
    /// Blocks of recently published frames.
    history: window::History,
    /// Newest receive time seen (the data clock).
    data_now: u64,
    /// When a block slot was last read.
    last_input: std::time::Instant,
    /// The receiver's pid and heartbeat as last seen in its stage record, and when either last changed.
    receiver_seen: (u32, u64, std::time::Instant),
    /// The acquisition id last put in the log span.
    logged_acquisition: u64,
    /// The running acquisition (id, frames assigned) as last seen, and since when it has not changed while a
    /// receiver ran: how long its stream has been idle.
    idle_watch: Option<((u64, u64), std::time::Instant)>,
}

/// A receiver whose heartbeat stood still this long is not receiving (stopped, hung, or gone): silence is then
/// no gap in the stream. A live receiver beats at least every 100 ms (`receiver::IDLE_POLL`), even when idle.
const RECEIVER_SILENT: Duration = Duration::from_millis(300);

impl<'r> Assembler<'r> {
    /// Attaches as the block ring's consumer and the frame ring's producer.
    pub fn new(region: &'r Region, cfg: AssemblerConfig) -> Result<Self, AssemblerError> {
        let area = pipeline::pipeline_area(region)?;
        let geo = region.header().geometry;
        let full = detector::registry::by_id(geo.mode)
            .ok_or_else(|| AssemblerError::Geometry(format!("mode id {}", geo.mode)))?;
        // The streams the pipeline takes, as its creator recorded them (none recorded: all of them).
        let format = match area.placement.stream_mask {
            0 => View::whole(full),
            mask => Streams::from_mask(full.get(), mask)
                .and_then(|s| View::new(full, s))
                .map_err(|e| AssemblerError::Geometry(e.to_string()))?,
        };
        if geo.sectors as usize != format.streams() {
            return Err(AssemblerError::Geometry(format!("{} sockets for {format}", geo.sectors)));
        }
        if geo.frame_rows as usize != format.rows() || geo.frame_cols as usize != format.cols() {
            return Err(AssemblerError::Geometry(format!(
                "{}x{} frames for mode {format}",
                geo.frame_rows, geo.frame_cols
            )));
        }
        // The frame slot's pixels are u16 (written below through a u16 slice), and the frame header's bitmap has
        // a bit per block.
        if format.pixel_type() != PixelType::U16 || format.blocks_per_frame() > MAX_BLOCKS_PER_FRAME {
            return Err(AssemblerError::Geometry(format!("mode {format}: pixels or blocks beyond the frame ring's")));
        }
        let reasons = pipeline::invalid_reason_names(format.invalid_reasons());
        if reasons.len() > MAX_INVALID_REASONS || area.invalid_reasons() != reasons {
            return Err(AssemblerError::Geometry(format!(
                "invalid reasons {:?} recorded in the region, mode {format} counts {reasons:?}",
                area.invalid_reasons()
            )));
        }
        let n = format.invalid_reasons().len();
        let (oversized, out_of_window) = (pipeline::pipeline_reason_index(n, 0), pipeline::pipeline_reason_index(n, 1));
        let frame_ring = region.ring(FRAME_RING)?;
        if frame_ring.slot_size() < FRAME_PIXELS_OFFSET + format.frame_bytes() {
            return Err(AssemblerError::Geometry("frame slots smaller than a frame".into()));
        }
        let block_ring = region.ring(BLOCK_RING)?;
        let blocks = block_ring.consumer(ASSEMBLER_CURSOR)?;
        let frames = frame_ring.producer()?;
        let params = area.params;
        // A restarted assembler resumes after the last frame published, as its header (written before it was
        // published) says, and records its acquisition index if the previous instance died before doing so.
        let window = match frame_ring.published() {
            0 => None,
            p => {
                // SAFETY: slot p-1 is the last published frame; only this (single) producer rewrites frame slots,
                // and it has not claimed the next one yet. The header is Pod; read as a copy.
                let last: FrameHeader = unsafe { std::ptr::read_unaligned(frame_ring.slot_ptr(p - 1).cast()) };
                acquisition::reconcile(area, &last);
                tracing::info!(frame_id = last.frame_id.wrapping_add(1), "resuming after the last published frame");
                Some(Window::new(last.frame_id.wrapping_add(1), format.blocks_per_frame(), cfg.window))
            }
        };
        let arrivals = Vec::with_capacity(params.datagrams_per_slot as usize);
        Ok(Self {
            scan: Scan { format: format.clone(), area, params, oversized, arrivals },
            out_of_window,
            cfg,
            area,
            params,
            block_ring,
            blocks,
            frames,
            fresh_base: window.is_none(),
            resumed_at: window.as_ref().map(|w| w.base),
            resumed_through: block_ring.published(),
            window,
            candidates: Vec::with_capacity(MAX_CANDIDATES),
            datagrams: vec![None; format.blocks_per_frame()],
            history: window::History::new(LATE_FRAMES as usize, format.blocks_per_frame()),
            data_now: 0,
            last_input: std::time::Instant::now(),
            receiver_seen: (0, 0, std::time::Instant::now()),
            logged_acquisition: 0,
            idle_watch: None,
            format,
        })
    }

    /// Runs until `should_stop` returns true (checked every few ms), then drains what was received and exits.
    pub fn run(&mut self, mut should_stop: impl FnMut() -> bool) -> Result<(), AssemblerError> {
        tracing::info!(mode = %self.format, decoder = self.format.decoder(), "assembling");
        // Who runs the stage, for `ringdaq inspect` (the supervisor clears it when this process dies).
        self.area.stage(Stage::Assembler).pid.store(std::process::id(), Ordering::Release);
        let r = loop {
            if should_stop() {
                break self.drain();
            }
            let in_flight = self.window.as_ref().is_some_and(|w| !w.is_empty()) || !self.candidates.is_empty();
            if let Err(e) = self.poll(if in_flight { TICK } else { IDLE_TICK }) {
                break Err(e);
            }
        };
        self.area.stage(Stage::Assembler).pid.store(0, Ordering::Release);
        r
    }

    /// One turn of the loop: waits up to `timeout` for block slots, processes every slot there is, then does the
    /// time-based duties ([`Assembler::tick`]).
    pub fn poll(&mut self, timeout: Duration) -> Result<(), AssemblerError> {
        match self.blocks.next(Some(timeout)) {
            Ok(slot) => {
                self.scan.read(&slot);
                self.file_scanned()?;
                // Take whatever else is there before looking at the clock.
                self.process_available()?;
            }
            Err(RingError::Timeout) => {}
            Err(e) => return Err(e.into()),
        }
        self.tick()
    }

    /// Processes everything already received, publishes the frames in flight as they are, and commits.
    pub fn drain(&mut self) -> Result<(), AssemblerError> {
        self.process_available()?;
        while self.window.as_ref().is_some_and(|w| !w.is_empty()) {
            self.publish_front()?;
        }
        while !self.candidates.is_empty() {
            self.drop_candidate(0);
        }
        self.finish_stopped_acquisition();
        self.commit();
        Ok(())
    }

    /// Validates and files every datagram of every block slot already published.
    pub fn process_available(&mut self) -> Result<(), AssemblerError> {
        while let Some(slot) = self.blocks.try_next()? {
            self.scan.read(&slot);
            self.file_scanned()?;
        }
        Ok(())
    }

    /// Files the datagrams [`Scan::read`] classified (the slot's guard is gone: what a frame in flight keeps of
    /// the slot is its place, [`BlockRef`], read again when the frame is decoded), then publishes what that
    /// completes and commits.
    fn file_scanned(&mut self) -> Result<(), AssemblerError> {
        self.last_input = std::time::Instant::now();
        for i in 0..self.scan.arrivals.len() {
            let a = self.scan.arrivals[i];
            self.file_block(a)?;
        }
        self.area.stage(Stage::Assembler).beat();
        self.publish_ready()?;
        self.relieve_pressure()?;
        self.commit();
        Ok(())
    }

    /// Puts a valid block into its frame (or counts it as duplicate or late, or holds it as reset evidence).
    fn file_block(&mut self, a: Arrival) -> Result<(), AssemblerError> {
        let Arrival { frame_id, block, at: r, recv_ns: ns, sync } = a;
        let w = self.cfg.window as i64;
        self.data_now = self.data_now.max(ns);
        let Some(window) = self.window.as_mut() else {
            // The stream's first frames: taken like a reset, once enough datagrams agree (a stray datagram with
            // a wild frame id must not decide where the stream starts).
            return self.file_outside(a);
        };
        let mut d = window.offset(frame_id);
        if d < 0 && d > -w && self.fresh_base {
            // Nothing published yet: an earlier frame is still arriving (reordering at start-up).
            window.extend_front((-d) as usize, ns);
            d = 0;
        }
        if (w..AHEAD_FRAMES).contains(&d) {
            // A newer frame forces the oldest ones out, complete or not.
            while self.window.as_ref().is_some_and(|win| win.offset(frame_id) >= w) {
                self.log_early("window", frame_id);
                self.publish_front()?;
            }
            d = self.window.as_ref().map_or(0, |win| win.offset(frame_id));
        }
        if (0..w).contains(&d) {
            let added = self.window.as_mut().is_some_and(|win| win.entry(d as usize, ns).add(block, r, ns, sync));
            let counter = if added { &self.area.assembler.blocks } else { &self.area.assembler.duplicates };
            counter.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        if d < 0 {
            match self.history.had(frame_id, block) {
                // A block its frame was published without.
                Some(false) => {
                    self.area.assembler.late.fetch_add(1, Ordering::Relaxed);
                    return Ok(());
                }
                // A block of a frame the previous instance published, read again from the uncommitted part
                // of the block ring after a restart: this process has no history of it, and it is no reset.
                None if r.seq < self.resumed_through
                    && self
                        .resumed_at
                        .is_some_and(|b| (1..=LATE_FRAMES).contains(&i64::from(b.wrapping_sub(frame_id) as i32))) =>
                {
                    self.area.assembler.duplicates.fetch_add(1, Ordering::Relaxed);
                    return Ok(());
                }
                _ => {}
            }
        }
        self.file_outside(a)
    }

    /// A block whose frame id is far outside the window, or repeats a published block: evidence of a reset,
    /// held (not dropped) until enough agrees.
    fn file_outside(&mut self, a: Arrival) -> Result<(), AssemblerError> {
        let Arrival { frame_id, block, at: r, recv_ns: ns, sync } = a;
        let base = self.window.as_ref().map_or(frame_id, |w| w.base);
        let blocks = self.format.blocks_per_frame();
        let w = self.cfg.window as i64;
        let k = match self.candidates.iter().position(|c| (0..w).contains(&c.window.offset(frame_id))) {
            Some(k) => k,
            None => {
                if self.candidates.len() == MAX_CANDIDATES {
                    let weakest = (0..self.candidates.len()).min_by_key(|&i| self.candidates[i].datagrams).unwrap_or(0);
                    self.drop_candidate(weakest);
                }
                tracing::debug!(frame_id, block, base, "reset candidate");
                self.candidates.push(Candidate {
                    // Made lazily: a flood of stray frame ids makes candidates by the thousand; the one kept is
                    // provisioned when it becomes the window.
                    window: Window::new(frame_id, blocks, 0),
                    datagrams: 0,
                    seen_at_base: base,
                });
                self.candidates.len() - 1
            }
        };
        let c = &mut self.candidates[k];
        let dd = c.window.offset(frame_id) as usize;
        if c.window.entry(dd, ns).add(block, r, ns, sync) {
            c.datagrams += 1;
        } else {
            self.area.assembler.duplicates.fetch_add(1, Ordering::Relaxed);
        }
        if c.datagrams >= self.cfg.reset_threshold {
            // Confirmed: the camera restarted its numbering (or the stream started). Finish the old frames,
            // follow the new ids; the other candidates were noise.
            while self.window.as_ref().is_some_and(|w| !w.is_empty()) {
                self.publish_front()?;
            }
            let c = self.candidates.swap_remove(k);
            while !self.candidates.is_empty() {
                self.drop_candidate(0);
            }
            if self.window.is_some() {
                tracing::info!(from = base, to = c.window.base, "frame id reset");
                self.area.assembler.resets.fetch_add(1, Ordering::Relaxed);
            }
            // Its blocks are placed now: count them as such.
            self.area.assembler.blocks.fetch_add(u64::from(c.datagrams), Ordering::Relaxed);
            // The history is kept: blocks of frames published before the reset are still late, not news.
            let mut w = c.window;
            w.provision(self.cfg.window);
            self.window = Some(w);
            self.resumed_at = None;
            self.fresh_base = true;
        }
        Ok(())
    }

    /// Discards candidate `k`, counting each of its blocks by what the history knows of its frame: a copy of a
    /// published block is a duplicate, a block its frame was published without is late, anything else is out of
    /// the window.
    fn drop_candidate(&mut self, k: usize) {
        let c = self.candidates.swap_remove(k);
        let a = &self.area.assembler;
        for f in c.window.iter() {
            for (block, _) in f.refs.iter().enumerate().filter(|(_, r)| r.is_some()) {
                let counter = match self.history.had(f.frame_id, block) {
                    Some(true) => &a.duplicates,
                    Some(false) => &a.late,
                    None => &a.invalid[self.out_of_window],
                };
                counter.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Says, at debug level, why the front frame is published before it is complete (`newer`: the frame id
    /// that pushed it out, for the window rule).
    fn log_early(&self, why: &'static str, newer: u32) {
        if let Some(f) = self.window.as_ref().and_then(Window::front).filter(|f| !f.is_complete()) {
            tracing::debug!(why, frame_id = f.frame_id, received = f.received, newer, "publishing an incomplete frame");
        }
    }

    /// Publishes frames from the front while they are complete.
    fn publish_ready(&mut self) -> Result<(), AssemblerError> {
        while self.window.as_ref().and_then(Window::front).is_some_and(InFlight::is_complete) {
            self.publish_front()?;
        }
        Ok(())
    }

    /// Publishes the oldest frames early, or drops the oldest reset candidate, if they hold the block ring's
    /// commit back so far that the receiver would stall. Only once everything published has been read: after a
    /// downstream stall the ring is full of unread slots, and reading them is what completes the oldest frames.
    ///
    /// Candidates pin the ring too: a flood of datagrams with scattered frame ids keeps up to
    /// [`MAX_CANDIDATES`] of them alive, and before the stream has started there is no window to publish.
    fn relieve_pressure(&mut self) -> Result<(), AssemblerError> {
        // The receiver needs one free slot to go on; leave it two.
        let limit = self.block_ring.slot_count().saturating_sub(2).max(1);
        if self.blocks.next_seq() < self.block_ring.published() {
            return Ok(());
        }
        while self.blocks.next_seq().saturating_sub(self.commit_target()) >= limit {
            let held = self.window.as_ref().filter(|w| !w.is_empty()).map(Window::min_seq);
            let oldest_candidate = (0..self.candidates.len()).min_by_key(|&k| self.candidates[k].window.min_seq());
            let candidate_seq = oldest_candidate.map(|k| self.candidates[k].window.min_seq());
            match (held, oldest_candidate) {
                (Some(h), _) if candidate_seq.is_none_or(|c| h <= c) => {
                    if tracing::enabled!(tracing::Level::DEBUG) {
                        let frames: Vec<(u32, u32, u64)> = self
                            .window
                            .iter()
                            .flat_map(|w| w.iter())
                            .map(|f| (f.frame_id, f.received, f.min_seq))
                            .collect();
                        tracing::debug!(next = self.blocks.next_seq(), ?frames, "block ring full of unfinished frames");
                    }
                    self.log_early("pressure", 0);
                    self.publish_front()?;
                }
                (_, Some(k)) => {
                    tracing::debug!(
                        frame_id = self.candidates[k].window.base,
                        datagrams = self.candidates[k].datagrams,
                        "block ring full: dropping the oldest reset candidate"
                    );
                    self.drop_candidate(k);
                }
                _ => break,
            }
        }
        Ok(())
    }

    /// Time-based duties: frames that waited too long, candidates that went stale, stop requests.
    ///
    /// A frame times out when datagrams of newer frames have kept arriving for `timeout` (by their receive
    /// times) without one for it, or when nothing at all arrived for `timeout`. A pipeline that stalls (a slow
    /// disk holding the writer, and so the assembler) does not time out frames whose blocks are still queued.
    pub fn tick(&mut self) -> Result<(), AssemblerError> {
        // Frames held for their timeout keep the block ring unread-looking; ticking is progress.
        self.area.stage(Stage::Assembler).beat();
        let timeout = self.cfg.timeout;
        let timeout_ns = timeout.as_nanos() as u64;
        // No input while no receiver receives (it is restarting, or stopped) is not a gap in the stream: the
        // datagrams wait in the kernel, and frames must not be given up on meanwhile. Silence is measured only
        // while a receiver runs and beats.
        let rx = self.area.stage(Stage::Receiver);
        let seen = (rx.pid.load(Ordering::Acquire), rx.heartbeat.load(Ordering::Relaxed));
        if seen != (self.receiver_seen.0, self.receiver_seen.1) {
            self.receiver_seen = (seen.0, seen.1, std::time::Instant::now());
        }
        let receiving = seen.0 != 0 && self.receiver_seen.2.elapsed() < RECEIVER_SILENT;
        if !receiving {
            self.last_input = std::time::Instant::now();
        }
        let idle = self.last_input.elapsed() >= timeout;
        while self.window.as_ref().and_then(Window::front).is_some_and(|f| {
            self.data_now.saturating_sub(f.data_ns) >= timeout_ns || (idle && f.touched.elapsed() >= timeout)
        }) {
            self.log_early("timeout", 0);
            self.publish_front()?;
        }
        let mut k = 0;
        while k < self.candidates.len() {
            let c = &self.candidates[k];
            let moved = self.window.as_ref().map_or(0, |w| i64::from(w.base.wrapping_sub(c.seen_at_base) as i32));
            let stale = c.window.front().is_some_and(|f| f.touched.elapsed() >= timeout * 4);
            if moved >= self.cfg.window as i64 || stale {
                self.drop_candidate(k);
            } else {
                k += 1;
            }
        }
        self.finish_stopped_acquisition();
        self.check_stream_idle(receiving);
        self.commit();
        Ok(())
    }

    /// Ends the running acquisition if no frame came to it for [`AssemblerConfig::stream_idle`] while a receiver
    /// ran (a restarting receiver is no idle stream: the datagrams wait in the kernel). Frames in flight time out
    /// long before (`timeout`), so every frame that came is assigned by then.
    fn check_stream_idle(&mut self, receiving: bool) {
        let Some(limit) = self.cfg.stream_idle else { return };
        let running = self.area.active().filter(|r| r.state() == pipeline::AcquisitionState::Running);
        let Some(rec) = running else {
            self.idle_watch = None;
            return;
        };
        let key = (rec.id.load(Ordering::Acquire), rec.assigned.load(Ordering::Acquire));
        let now = std::time::Instant::now();
        match self.idle_watch {
            Some((k, since)) if k == key && receiving => {
                if now.duration_since(since) >= limit {
                    acquisition::end_idle(self.area, rec, now.duration_since(since));
                    self.idle_watch = None;
                }
            }
            _ => self.idle_watch = Some((key, now)),
        }
    }

    /// A stop request for an acquisition that gets no frames must still end it.
    fn finish_stopped_acquisition(&self) {
        acquisition::finish_stopped(self.area);
    }

    /// Decodes the oldest frame in flight into the next frame-ring slot and publishes it.
    fn publish_front(&mut self) -> Result<(), AssemblerError> {
        let Some(window) = self.window.as_mut() else {
            return Ok(());
        };
        let f = window.pop_front();
        self.fresh_base = false;
        let mut slot = loop {
            // The writer gates the frame ring; wait for it (a restarting writer resumes where it was).
            match self.frames.claim(Some(Duration::from_millis(100))) {
                Ok(s) => break s,
                Err(RingError::Timeout) => {
                    // Waiting on the writer is not a hang of ours.
                    self.area.stage(Stage::Assembler).beat();
                    continue;
                }
                Err(e) => return Err(e.into()),
            }
        };
        let seq = slot.seq();
        let assignment = acquisition::plan(self.area, f.received > 0, f.first_seq, f.sync);
        let (acquisition_id, index) = assignment.map_or((0, NO_INDEX), |a| (a.id, a.index));
        if acquisition_id != 0 && acquisition_id != self.logged_acquisition {
            self.logged_acquisition = acquisition_id;
            shm_protocol::logging::set_acquisition(acquisition_id);
        }
        let stride = self.params.datagram_stride as usize;
        let data_off = self.params.datagram_offset as usize;
        for (p, r) in self.datagrams.iter_mut().zip(&f.refs) {
            *p = r.map(|r| {
                let at = data_off + r.index as usize * stride;
                // SAFETY: block-ring slot `r.seq` is not committed (commit stops at the lowest sequence a frame in
                // flight references), so the receiver cannot rewrite it; the datagram's `len` was clamped to the
                // `stride` bytes it has inside the slot when it was read (`process_slot`).
                unsafe { std::slice::from_raw_parts(self.block_ring.slot_ptr(r.seq).add(at), r.len as usize) }
            });
        }
        let base = slot.as_mut_ptr();
        // SAFETY: the slot is ours until published; its pixels start at FRAME_PIXELS_OFFSET (page aligned, so
        // aligned for u16) and hold frame_pixels u16 (checked against slot_size in `new`).
        let pixels = unsafe {
            std::slice::from_raw_parts_mut(base.add(FRAME_PIXELS_OFFSET).cast::<u16>(), self.format.frame_pixels())
        };
        let fill = self.params.fill_value as u16;
        if let Err(e) = self.format.decode_frame(&self.datagrams, pixels, fill) {
            // Cannot happen for validated blocks; keep going with a filled frame rather than stop the pipeline.
            tracing::error!(error = %e, "decode failed");
            pixels.fill(fill);
        }
        let complete = f.is_complete();
        let mut bitmap = [0u64; pipeline::MAX_BLOCKS_PER_FRAME / 64];
        for (i, r) in f.refs.iter().enumerate() {
            if r.is_some() {
                bitmap[i / 64] |= 1 << (i % 64);
            }
        }
        let header = FrameHeader {
            seq,
            acquisition_id,
            index,
            frame_id: f.frame_id,
            status: if complete { FRAME_COMPLETE } else { FRAME_INCOMPLETE },
            blocks_expected: self.format.blocks_per_frame() as u32,
            blocks_received: f.received,
            flags: if f.sync { FRAME_SYNC } else { 0 },
            _reserved: 0,
            first_block_ns: f.first_ns,
            last_block_ns: f.last_ns,
            published_ns: pipeline::now_ns(),
            bitmap,
        };
        // SAFETY: the slot begins with a FrameHeader-sized, page-aligned header area that is ours until published.
        unsafe { base.cast::<FrameHeader>().write(header) };
        slot.publish();
        // Only now, with the frame visible, is the acquisition told (see `acquisition`).
        if let Some(a) = assignment {
            acquisition::record(self.area, a, seq, f.frame_id, complete);
        }
        let c = &self.area.assembler;
        if complete {
            c.frames_complete.fetch_add(1, Ordering::Relaxed);
        } else {
            c.frames_incomplete.fetch_add(1, Ordering::Relaxed);
            c.missing_blocks.fetch_add(u64::from(header.blocks_expected - f.received), Ordering::Relaxed);
        }
        self.history.push(&f);
        if let Some(w) = self.window.as_mut() {
            self.area.next_frame_id.store(u64::from(w.base), Ordering::Relaxed);
            w.recycle(f);
        }
        Ok(())
    }

    /// The block-ring sequence below which no frame in flight references anything.
    fn commit_target(&self) -> u64 {
        let held = self.window.as_ref().map_or(u64::MAX, Window::min_seq);
        let cand = self.candidates.iter().map(|c| c.window.min_seq()).min().unwrap_or(u64::MAX);
        self.blocks.next_seq().min(held).min(cand)
    }

    fn commit(&mut self) {
        let t = self.commit_target();
        self.blocks.commit(t);
    }
}

/// Classification of one block slot's datagrams, done while the slot's read guard lives: the valid ones become
/// arrivals, the invalid ones are counted. Apart from the [`Assembler`]'s other state because the guard borrows
/// its consumer. `arrivals` keeps its capacity (one slot's datagrams), so reading allocates nothing.
struct Scan<'r> {
    format: View,
    area: &'r PipelineArea,
    params: PipelineParams,
    /// Counter index of the pipeline's `oversized` reason (after the format's reasons).
    oversized: usize,
    arrivals: Vec<Arrival>,
}

impl Scan<'_> {
    /// Classifies every datagram of `slot`, replacing the arrivals of the previous slot.
    fn read(&mut self, slot: &ReadSlot<'_>) {
        self.arrivals.clear();
        let seq = slot.seq();
        // The assembler's cursor gates the block ring, so its slots are stable while read.
        let Some(bytes) = slot.bytes() else {
            tracing::error!(seq, "block slot not readable in place; skipped");
            return;
        };
        let per_slot = self.params.datagrams_per_slot as usize;
        let stride = self.params.datagram_stride as usize;
        let data_off = self.params.datagram_offset as usize;
        let hdr: BlockSlotHeader = read_record(bytes, 0);
        let count = (hdr.count as usize).min(per_slot);
        for i in 0..count {
            let rec: DatagramRecord =
                read_record(bytes, size_of::<BlockSlotHeader>() + i * size_of::<DatagramRecord>());
            let len = (rec.len as usize).min(stride);
            let Some(dgram) = bytes.get(data_off + i * stride..).and_then(|b| b.get(..len)) else {
                self.invalid(self.oversized);
                continue;
            };
            if rec.flags & DATAGRAM_TRUNCATED != 0 {
                self.invalid(self.oversized);
                continue;
            }
            match self.format.classify(usize::from(rec.sector), dgram) {
                Ok(b) => self.arrivals.push(Arrival {
                    frame_id: b.frame_id,
                    block: b.index,
                    at: BlockRef { seq, index: i as u32, len: len as u32 },
                    recv_ns: rec.recv_ns,
                    sync: b.sync,
                }),
                Err(reason) => self.invalid(reason.index()),
            }
        }
    }

    fn invalid(&self, reason: usize) {
        // A format's reason index is below its reason count, checked against MAX_INVALID_REASONS in `new`.
        if let Some(c) = self.area.assembler.invalid.get(reason) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Reads a record at `off` of `bytes` (unaligned), or zeroes if it would run past the end.
fn read_record<T: bytemuck::Pod>(bytes: &[u8], off: usize) -> T {
    bytes.get(off..off + size_of::<T>()).map_or_else(T::zeroed, bytemuck::pod_read_unaligned)
}
