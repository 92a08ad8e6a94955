//! The pipeline's use of a region: which ring is which, what a block slot and a frame slot hold, and the records
//! in the application area (parameters, stage records, counters, acquisitions).
//!
//! Ring [`BLOCK_RING`] carries batches of raw datagrams from the receiver to the assembler; ring [`FRAME_RING`]
//! carries decoded frames from the assembler to the writer (cursor [`WRITER_CURSOR`]) and to external consumers.
//! Everything a stage would otherwise keep only in its own memory lives here, so that a restarted stage and
//! `ringdaq status` see it.
//!
//! This module tree is the layer above the transport (`layout`, `region`, `ring`, `wait`, `control`): the
//! transport moves bytes and cursors and knows none of what follows; the pipeline's records, its control
//! messages ([`messages`]), a stage's session with the supervisor ([`session`]) and the consumer API
//! ([`consumer`]) are built on it.

use std::mem::{offset_of, size_of};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use crate::layout::{CACHE_LINE, Geometry, PAGE_SIZE, RegionSpec, RingKind, RingSpec, align_up};
use crate::region::Region;

mod acquisition;
pub mod client;
pub mod consumer;
mod counters;
pub mod messages;
mod placement;
pub mod session;
mod supervision;

pub use acquisition::{AcquisitionRecord, AcquisitionState, CONTINUOUS, Compression, EndReason, SyncMode};
pub use placement::{MAX_PLACED, PlacedRect, Placement, PlacementError, RectNumbers};

/// Index of the block ring (receiver → assembler).
pub const BLOCK_RING: usize = 0;
/// Index of the frame ring (assembler → writer, consumers).
pub const FRAME_RING: usize = 1;
/// The assembler's cursor on the block ring.
pub const ASSEMBLER_CURSOR: usize = 0;
/// The writer's cursor on the frame ring.
pub const WRITER_CURSOR: usize = 0;

/// The frame ring's consumer lines that subscribers hold: every line but the writer's that is not free.
pub fn subscriber_lines<'a>(ring: &'a crate::ring::Ring<'_>) -> impl Iterator<Item = usize> + 'a {
    (0..ring.max_consumers()).filter(move |&i| {
        i != WRITER_CURSOR && ring.consumer_state(i).is_ok_and(|(_, mode, _)| mode != crate::layout::ConsumerMode::Free)
    })
}
/// First frame-ring cursor available to external consumers.
pub const FIRST_CONSUMER_CURSOR: usize = 1;

/// Offset of the pixels in a frame slot (the [`FrameHeader`] occupies the first page).
pub const FRAME_PIXELS_OFFSET: usize = PAGE_SIZE;

/// Most blocks a frame can have (bits in [`FrameHeader::bitmap`]).
pub const MAX_BLOCKS_PER_FRAME: usize = 1024;

/// How many acquisition records the region keeps (acquisition `id` lives in record `id % ACQUISITION_SLOTS`).
pub const ACQUISITION_SLOTS: usize = 4;

/// Longest output path an acquisition record holds, in bytes.
pub const MAX_PATH: usize = 1024;

/// Longest error message an acquisition record holds, in bytes.
pub const MAX_ERROR: usize = 512;

/// Most invalid-datagram reasons the region counts: the detector format's, then the pipeline's own
/// ([`PIPELINE_INVALID_REASONS`]). A K2 has 6 + 2; 16 leaves room for another family.
pub const MAX_INVALID_REASONS: usize = 16;

/// Longest name of an invalid reason, bytes (names are recorded in the region, [`PipelineArea::invalid_names`]).
pub const MAX_REASON_NAME: usize = 32;

/// The pipeline's own reasons a datagram is invalid, counted after the detector format's: larger than its
/// buffer in the block ring, and a frame id far outside the assembler's window.
pub const PIPELINE_INVALID_REASONS: [&str; 2] = ["oversized", "out_of_window"];

/// Index in [`AssemblerCounters::invalid`] of [`PIPELINE_INVALID_REASONS`]`[k]`, for a detector format with
/// `format_reasons` reasons of its own.
pub const fn pipeline_reason_index(format_reasons: usize, k: usize) -> usize {
    format_reasons + k
}

/// Every invalid reason, in the order of [`AssemblerCounters::invalid`]: the format's, then the pipeline's.
pub fn invalid_reason_names<'a>(format_reasons: &[&'a str]) -> Vec<&'a str> {
    format_reasons.iter().copied().chain(PIPELINE_INVALID_REASONS).collect()
}

/// Per-datagram record in a block slot: written by the receiver right after `recvmmsg` returns.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct DatagramRecord {
    /// Bytes received (the datagram's length, or the buffer size if it was truncated).
    pub len: u32,
    /// Sector, i.e. index of the socket it came from.
    pub sector: u16,
    /// [`DATAGRAM_TRUNCATED`] if the datagram was larger than its buffer.
    pub flags: u16,
    /// Receive time, ns since the Unix epoch (CLOCK_REALTIME).
    pub recv_ns: u64,
}

/// [`DatagramRecord::flags`]: the datagram did not fit its buffer.
pub const DATAGRAM_TRUNCATED: u16 = 1;

/// Header of a block slot; `count` records follow it, then the datagrams at [`PipelineParams::datagram_offset`].
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct BlockSlotHeader {
    /// Number of datagrams in the slot. The receiver keeps it current while it fills the slot.
    pub count: u32,
    /// Reserved, zero.
    pub _reserved: u32,
    /// Block-ring sequence the slot was filled as: a receiver resuming an interrupted slot trusts `count` only if
    /// this matches (else the count is a previous lap's).
    pub seq: u64,
    /// Reserved, zero.
    pub _reserved2: [u64; 6],
}

/// Frame status: every block arrived.
pub const FRAME_COMPLETE: u32 = 1;
/// Frame status: some blocks are missing; their pixels hold [`PipelineParams::fill_value`].
pub const FRAME_INCOMPLETE: u32 = 2;

/// [`FrameHeader::index`] of a frame that belongs to no acquisition.
pub const NO_INDEX: u64 = u64::MAX;

/// [`FrameHeader::flags`]: the frame carried the detector's sync (shutter) flag.
pub const FRAME_SYNC: u32 = 1;

/// Header of a frame slot (first page); the pixels follow at [`FRAME_PIXELS_OFFSET`], `rows × cols` u16.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct FrameHeader {
    /// Frame-ring sequence of this frame.
    pub seq: u64,
    /// Acquisition this frame belongs to, 0 if none.
    pub acquisition_id: u64,
    /// Index of the frame in its acquisition, [`NO_INDEX`] if none.
    pub index: u64,
    /// The detector's frame id.
    pub frame_id: u32,
    /// [`FRAME_COMPLETE`] or [`FRAME_INCOMPLETE`].
    pub status: u32,
    /// Blocks a frame has.
    pub blocks_expected: u32,
    /// Blocks that arrived.
    pub blocks_received: u32,
    /// [`FRAME_SYNC`] if set.
    pub flags: u32,
    /// Reserved, zero.
    pub _reserved: u32,
    /// Receive time of the frame's first block (ns since the epoch).
    pub first_block_ns: u64,
    /// Receive time of its last block.
    pub last_block_ns: u64,
    /// When the assembler published it.
    pub published_ns: u64,
    /// Bit `i` set: block `i` (in the detector's block index order) arrived.
    pub bitmap: [u64; MAX_BLOCKS_PER_FRAME / 64],
}

impl FrameHeader {
    /// Whether block `i` arrived.
    pub fn has_block(&self, i: usize) -> bool {
        i < MAX_BLOCKS_PER_FRAME && self.bitmap[i / 64] >> (i % 64) & 1 == 1
    }

    /// Whether every block arrived.
    pub fn is_complete(&self) -> bool {
        self.status == FRAME_COMPLETE
    }
}

/// Sizes of the block and frame slots, recorded in the region.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct PipelineParams {
    /// Datagrams a block slot holds.
    pub datagrams_per_slot: u32,
    /// Bytes reserved per datagram (a multiple of 64; larger datagrams are truncated and flagged).
    pub datagram_stride: u32,
    /// Offset of the first datagram in a block slot (page aligned).
    pub datagram_offset: u32,
    /// Value of the pixels of missing blocks.
    pub fill_value: u32,
    /// Reserved, zero.
    pub _reserved: [u32; 12],
}

/// Which stage a record or message is about.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Stage {
    /// Sockets → block ring.
    Receiver = 0,
    /// Block ring → frame ring.
    Assembler = 1,
    /// Frame ring → files.
    Writer = 2,
}

impl Stage {
    /// All stages, in pipeline order.
    pub const ALL: [Stage; 3] = [Stage::Receiver, Stage::Assembler, Stage::Writer];

    /// The stage's name, as used in commands and logs.
    pub const fn name(self) -> &'static str {
        match self {
            Stage::Receiver => "receiver",
            Stage::Assembler => "assembler",
            Stage::Writer => "writer",
        }
    }
}

/// A stage's record: who runs it and whether it makes progress.
#[repr(C, align(64))]
pub struct StageRecord {
    /// Pid of the process running the stage, 0 if none.
    pub pid: AtomicU32,
    /// Times the supervisor started it.
    pub starts: AtomicU32,
    /// Bumped by the stage as it works and while it waits for room downstream; the stages also beat while idle
    /// (the receiver at least every 100 ms). The supervisor kills a stage whose input waits while this stands
    /// still; the assembler takes a receiver whose beat stands still as not receiving.
    pub heartbeat: AtomicU64,
    /// Heap allocations of the process so far, as of its last [`beat`](Self::beat) (0 where the process does
    /// not count: see [`crate::alloc_count`]).
    pub allocations: AtomicU64,
    /// Bytes of those allocations.
    pub allocated_bytes: AtomicU64,
    _pad: [u8; 32],
}

impl StageRecord {
    /// Records progress: bumps the heartbeat and publishes the process's allocation totals.
    #[inline]
    pub fn beat(&self) {
        self.heartbeat.fetch_add(1, Ordering::Relaxed);
        self.allocations.store(crate::alloc_count::allocations(), Ordering::Relaxed);
        self.allocated_bytes.store(crate::alloc_count::allocated_bytes(), Ordering::Relaxed);
    }
}

counters::counter_set! {
    /// Receiver counters.
    ReceiverCounters, "receiver" {
        /// Datagrams received.
        datagrams,
        /// Bytes received.
        bytes,
        /// Datagrams the kernel dropped because a socket buffer was full (SO_RXQ_OVFL).
        kernel_drops,
        /// Datagrams larger than their buffer.
        truncated,
        /// `recvmmsg` calls that returned data.
        batches,
        /// Block slots published.
        slots,
    }
}

counters::counter_set! {
    /// Assembler counters. (Invalid datagrams are counted by reason in `invalid`, named by the detector format.)
    AssemblerCounters, "assembler" {
        /// Valid blocks placed in a frame.
        blocks,
        /// Blocks that arrived twice.
        duplicates,
        /// Blocks of frames already published.
        late,
        /// Frames published complete.
        frames_complete,
        /// Frames published incomplete.
        frames_incomplete,
        /// Blocks missing from incomplete frames.
        missing_blocks,
        /// frame_id resets followed.
        resets,
    }
    extra {
        /// Reserved.
        pub _reserved: AtomicU64,
        /// Invalid datagrams by reason, indexed as [`invalid_reason_names`] of the region's detector format (names
        /// in [`PipelineArea::invalid_names`]); unused entries stay zero.
        pub invalid: [AtomicU64; MAX_INVALID_REASONS],
    }
}

counters::counter_set! {
    /// Writer counters.
    WriterCounters, "writer" {
        /// Frames written to files.
        frames,
        /// Pixel bytes written.
        bytes,
        /// Failed writes.
        errors,
        /// Acquisitions finished.
        done,
        /// Acquisitions failed.
        failed,
        /// CPU time spent compressing frames, ns, all compression threads (`--compression bslz4`).
        compress_cpu_ns,
        /// Bytes of compressed chunks written.
        compressed_bytes,
    }
}

/// The application area of a pipeline region.
#[repr(C, align(64))]
pub struct PipelineArea {
    /// Slot sizes.
    pub params: PipelineParams,
    /// Stage records, indexed by [`Stage`].
    pub stages: [StageRecord; 3],
    /// Receiver counters.
    pub receiver: ReceiverCounters,
    /// Assembler counters.
    pub assembler: AssemblerCounters,
    /// Writer counters.
    pub writer: WriterCounters,
    /// Id of the acquisition frames are assigned to now (0: none).
    pub active_acquisition: AtomicU64,
    /// Frame id the assembler will publish next (informational; a restarted assembler resumes from the last
    /// published frame's header).
    pub next_frame_id: AtomicU64,
    _pad: [u8; 48],
    /// Names of the [`AssemblerCounters::invalid`] reasons (UTF-8, zero-padded; an empty name ends the list),
    /// written once by the region's creator from [`PipelineSizes::invalid_reasons`].
    pub invalid_names: [[u8; MAX_REASON_NAME]; MAX_INVALID_REASONS],
    /// Acquisition records.
    pub acquisitions: [AcquisitionRecord; ACQUISITION_SLOTS],
    /// The receiver's current `recvmmsg` call.
    pub receive_journal: ReceiveJournal,
    /// Where this pipeline's frames lie in the whole detector's frame, written once by the region's creator
    /// from [`PipelineSizes::placement`].
    pub placement: Placement,
}

/// Most datagrams one receive call takes (the receiver's turn on one socket).
pub const RECEIVE_BATCH: usize = 16;

/// The receiver's record of the `recvmmsg` call it is making, so that datagrams the kernel hands over in the
/// instant the receiver dies are not lost.
///
/// The message headers and control buffers the kernel fills live here rather than in the receiver's memory:
/// the kernel stores each datagram's length in its header as it copies the datagram into the block slot, so a
/// successor finds, for a call its predecessor did not live to record, which datagrams arrived. Before a call
/// the receiver sets every length to `u32::MAX`, fills `seq`, `base` and `sector`, and sets `armed`; after it,
/// it writes the datagram records, stores the slot's new count, and clears `armed`. A successor adopts the
/// datagrams of an armed call only if the slot's count still equals `base` (else they were recorded already).
///
/// The arrays are kernel structures (`struct mmsghdr`, 64 bytes on 64-bit Linux; `cmsghdr` + timestamp) whose
/// pointers are meaningful only to the receiver that wrote them. They are the one exception to "no pointers in
/// the region": nobody but the receiver reads them, and it reads only lengths, flags and control bytes.
#[repr(C, align(64))]
pub struct ReceiveJournal {
    /// Messages handed to the kernel in the call in progress; 0 when none is.
    pub armed: AtomicU32,
    /// The socket (sector) being read.
    pub sector: AtomicU32,
    /// Block-ring sequence of the slot the datagrams land in.
    pub seq: AtomicU64,
    /// Datagrams the slot held before the call: message `i` lands at datagram index `base + i`.
    pub base: AtomicU32,
    _pad: [u8; 44],
    /// The `struct mmsghdr` array of the call.
    pub msgs: std::cell::UnsafeCell<[[u64; 8]; RECEIVE_BATCH]>,
    /// One control buffer per message (the kernel's receive timestamp).
    pub control: std::cell::UnsafeCell<[[u64; 8]; RECEIVE_BATCH]>,
}

// SAFETY: the atomics are atomics; the two cells are written only by the receiver (and by the kernel on its
// behalf, during its own system call) and read by nobody else, so sharing a reference across threads or
// processes creates no data race.
unsafe impl Sync for ReceiveJournal {}

const _: () = {
    assert!(size_of::<DatagramRecord>() == 16);
    assert!(offset_of!(DatagramRecord, sector) == 4);
    assert!(offset_of!(DatagramRecord, flags) == 6);
    assert!(offset_of!(DatagramRecord, recv_ns) == 8);
    assert!(size_of::<BlockSlotHeader>() == 64);
    assert!(offset_of!(BlockSlotHeader, seq) == 8);
    assert!(offset_of!(FrameHeader, acquisition_id) == 8);
    assert!(offset_of!(FrameHeader, index) == 16);
    assert!(offset_of!(FrameHeader, frame_id) == 24);
    assert!(offset_of!(FrameHeader, status) == 28);
    assert!(offset_of!(FrameHeader, blocks_expected) == 32);
    assert!(offset_of!(FrameHeader, blocks_received) == 36);
    assert!(offset_of!(FrameHeader, flags) == 40);
    assert!(offset_of!(FrameHeader, first_block_ns) == 48);
    assert!(offset_of!(FrameHeader, last_block_ns) == 56);
    assert!(offset_of!(FrameHeader, published_ns) == 64);
    assert!(offset_of!(FrameHeader, bitmap) == 72);
    assert!(size_of::<FrameHeader>() == 72 + 128);
    assert!(size_of::<FrameHeader>() <= FRAME_PIXELS_OFFSET);
    assert!(size_of::<PipelineParams>() == 64);
    assert!(size_of::<StageRecord>() == CACHE_LINE);
    assert!(offset_of!(StageRecord, heartbeat) == 8);
    assert!(offset_of!(StageRecord, allocations) == 16);
    assert!(offset_of!(StageRecord, allocated_bytes) == 24);
    assert!(size_of::<ReceiverCounters>() == CACHE_LINE);
    assert!(size_of::<AssemblerCounters>() == 3 * CACHE_LINE);
    assert!(offset_of!(AssemblerCounters, invalid) == 64);
    assert!(MAX_INVALID_REASONS * 8 == 2 * CACHE_LINE);
    assert!(size_of::<WriterCounters>() == CACHE_LINE);
    assert!(offset_of!(PipelineArea, stages) == 64);
    assert!(offset_of!(PipelineArea, receiver) == 256);
    assert!(offset_of!(PipelineArea, assembler) == 320);
    assert!(offset_of!(PipelineArea, writer) == 512);
    assert!(offset_of!(PipelineArea, active_acquisition) == 576);
    assert!(offset_of!(PipelineArea, invalid_names) == 640);
    assert!(offset_of!(PipelineArea, acquisitions) == 640 + MAX_INVALID_REASONS * MAX_REASON_NAME);
    assert!(offset_of!(PipelineArea, receive_journal) == 1152 + ACQUISITION_SLOTS * size_of::<AcquisitionRecord>());
    assert!(offset_of!(PipelineArea, placement) == 1152 + ACQUISITION_SLOTS * size_of::<AcquisitionRecord>() + 2112);
    assert!(
        size_of::<PipelineArea>()
            == (1152 + ACQUISITION_SLOTS * size_of::<AcquisitionRecord>() + 2112 + size_of::<Placement>())
                .next_multiple_of(CACHE_LINE)
    );
    assert!(offset_of!(ReceiveJournal, seq) == 8);
    assert!(offset_of!(ReceiveJournal, base) == 16);
    assert!(offset_of!(ReceiveJournal, msgs) == 64);
    assert!(offset_of!(ReceiveJournal, control) == 64 + 64 * RECEIVE_BATCH);
    assert!(size_of::<ReceiveJournal>() == 64 + 128 * RECEIVE_BATCH);
};

/// Sizes of a pipeline region: what `ringdaq run` chooses from its configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PipelineSizes {
    /// Detector geometry recorded in the header.
    pub geometry: Geometry,
    /// Block-ring slots.
    pub block_slots: u32,
    /// Datagrams per block slot.
    pub datagrams_per_slot: u32,
    /// Frame-ring slots.
    pub frame_slots: u32,
    /// Frame-ring cursors (writer + external consumers).
    pub frame_cursors: u32,
    /// Value of the pixels of missing blocks.
    pub fill_value: u16,
    /// The detector format's invalid reasons (the pipeline's [`PIPELINE_INVALID_REASONS`] follow them), recorded
    /// in the region so that every process names the counters alike.
    pub invalid_reasons: &'static [&'static str],
    /// Where the pipeline's frames lie in the whole detector's frame (default, all zero: they are whole).
    pub placement: Placement,
}

impl PipelineSizes {
    /// Bytes reserved per datagram: the largest datagram rounded up to a cache line, plus one line so that an
    /// oversized datagram shows as truncated rather than fitting by chance.
    pub fn datagram_stride(&self) -> u32 {
        align_up(u64::from(self.geometry.max_datagram) + 64, 64) as u32
    }

    /// Offset of the first datagram in a block slot.
    pub fn datagram_offset(&self) -> u32 {
        let records = size_of::<BlockSlotHeader>() + self.datagrams_per_slot as usize * size_of::<DatagramRecord>();
        align_up(records as u64, PAGE_SIZE as u64) as u32
    }

    /// Frame bytes (u16 pixels).
    pub fn frame_bytes(&self) -> u64 {
        u64::from(self.geometry.frame_rows) * u64::from(self.geometry.frame_cols) * 2
    }

    /// The region spec for these sizes.
    pub fn region_spec(&self) -> RegionSpec {
        let block_slot =
            u64::from(self.datagram_offset()) + u64::from(self.datagrams_per_slot) * u64::from(self.datagram_stride());
        RegionSpec {
            geometry: self.geometry,
            rings: vec![
                RingSpec {
                    kind: RingKind::Block,
                    slot_count: self.block_slots,
                    slot_bytes: block_slot,
                    max_consumers: 1,
                },
                RingSpec {
                    kind: RingKind::Frame,
                    slot_count: self.frame_slots,
                    slot_bytes: FRAME_PIXELS_OFFSET as u64 + self.frame_bytes(),
                    max_consumers: self.frame_cursors,
                },
            ],
            app_bytes: size_of::<PipelineArea>() as u64,
        }
    }

    /// Creates a pipeline region: lays it out, records the parameters, and activates the stages' cursors.
    pub fn create_region(&self) -> Result<Region, crate::region::RegionError> {
        let names = invalid_reason_names(self.invalid_reasons);
        if names.len() > MAX_INVALID_REASONS || names.iter().any(|n| n.is_empty() || n.len() > MAX_REASON_NAME) {
            return Err(crate::region::RegionError::Corrupt(format!(
                "{} invalid reasons (at most {MAX_INVALID_REASONS}, names of 1..={MAX_REASON_NAME} bytes): {names:?}",
                names.len()
            )));
        }
        let mut table = [[0u8; MAX_REASON_NAME]; MAX_INVALID_REASONS];
        for (slot, n) in table.iter_mut().zip(&names) {
            slot[..n.len()].copy_from_slice(n.as_bytes());
        }
        let region = Region::create(&self.region_spec())?;
        let params = PipelineParams {
            datagrams_per_slot: self.datagrams_per_slot,
            datagram_stride: self.datagram_stride(),
            datagram_offset: self.datagram_offset(),
            fill_value: u32::from(self.fill_value),
            _reserved: [0; 12],
        };
        let (app, _) = region.app_area();
        // SAFETY: the app area is at least size_of::<PipelineArea>() bytes, page aligned, zero-filled, and no
        // other process has the region yet; `params` is the first field (offset 0, asserted above).
        unsafe { std::ptr::write(app.cast::<PipelineParams>(), params) };
        // SAFETY: as above; `invalid_names` lies inside the area at its asserted offset, and u8 arrays need no
        // alignment.
        unsafe { std::ptr::write(app.add(offset_of!(PipelineArea, invalid_names)).cast(), table) };
        // SAFETY: as above; `placement` lies inside the area at its asserted offset (a multiple of 8, and the area
        // is page aligned), and is Pod.
        unsafe { std::ptr::write(app.add(offset_of!(PipelineArea, placement)).cast(), self.placement) };
        let map_err = |e: crate::ring::RingError| crate::region::RegionError::Corrupt(e.to_string());
        use crate::layout::ConsumerMode;
        use crate::ring::StartAt;
        region
            .ring(BLOCK_RING)?
            .activate_consumer(ASSEMBLER_CURSOR, ConsumerMode::Gating, StartAt::Seq(0))
            .map_err(map_err)?;
        region
            .ring(FRAME_RING)?
            .activate_consumer(WRITER_CURSOR, ConsumerMode::Gating, StartAt::Seq(0))
            .map_err(map_err)?;
        Ok(region)
    }
}

/// Errors of [`pipeline_area`].
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// The region has no (or too small an) application area, or lacks the two rings.
    #[error("not a pipeline region: {0}")]
    NotAPipeline(String),
}

/// The pipeline area of a region, after checking that the region is a pipeline region.
pub fn pipeline_area(region: &Region) -> Result<&PipelineArea, PipelineError> {
    let (app, len) = region.app_area();
    if len < size_of::<PipelineArea>() {
        return Err(PipelineError::NotAPipeline(format!("application area of {len} bytes")));
    }
    if region.header().ring_count < 2 {
        return Err(PipelineError::NotAPipeline(format!("{} rings", region.header().ring_count)));
    }
    // SAFETY: the area lies in the mapping (validated at attach), is page aligned (so aligned for 64), large enough
    // (checked), outlives the borrow of `region`; its shared fields are atomics and `params` is written once by
    // the creator before the region is shared.
    Ok(unsafe { &*app.cast::<PipelineArea>() })
}

impl PipelineArea {
    /// The record of a stage.
    pub fn stage(&self, s: Stage) -> &StageRecord {
        &self.stages[s as usize]
    }

    /// The record slot of acquisition `id`.
    pub fn acquisition(&self, id: u64) -> &AcquisitionRecord {
        &self.acquisitions[(id % ACQUISITION_SLOTS as u64) as usize]
    }

    /// Every counter by name (`receiver.datagrams`, `assembler.invalid.sync_word`, ...), as `ringdaq status`
    /// and the sidecar show them.
    pub fn counters(&self) -> std::collections::BTreeMap<String, u64> {
        let r = Ordering::Relaxed;
        let mut m = std::collections::BTreeMap::new();
        let mut put = |name: &str, v: u64| {
            m.insert(name.to_string(), v);
        };
        self.receiver.each(&mut put);
        self.assembler.each(&mut put);
        self.writer.each(&mut put);
        for st in [Stage::Receiver, Stage::Assembler, Stage::Writer] {
            m.insert(format!("{}.allocations", st.name()), self.stage(st).allocations.load(r));
        }
        for (name, c) in self.invalid_reasons().into_iter().zip(&self.assembler.invalid) {
            m.insert(format!("assembler.invalid.{name}"), c.load(r));
        }
        m
    }

    /// Names of the [`AssemblerCounters::invalid`] reasons, as the region's creator recorded them: the detector
    /// format's, then [`PIPELINE_INVALID_REASONS`].
    pub fn invalid_reasons(&self) -> Vec<&str> {
        self.invalid_names
            .iter()
            .map(|n| &n[..n.iter().position(|&b| b == 0).unwrap_or(MAX_REASON_NAME)])
            .take_while(|n| !n.is_empty())
            .map(|n| std::str::from_utf8(n).unwrap_or("unnamed"))
            .collect()
    }

    /// The acquisition frames are assigned to now, if any.
    pub fn active(&self) -> Option<&AcquisitionRecord> {
        match self.active_acquisition.load(Ordering::Acquire) {
            0 => None,
            id => {
                let r = self.acquisition(id);
                (r.id.load(Ordering::Acquire) == id).then_some(r)
            }
        }
    }
}

/// The current time as ns since the Unix epoch (CLOCK_REALTIME), as recorded in the region.
pub fn now_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Realtime);
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sizes(invalid_reasons: &'static [&'static str]) -> PipelineSizes {
        PipelineSizes {
            geometry: Geometry { frame_rows: 4, frame_cols: 8, max_datagram: 64, ..Default::default() },
            block_slots: 4,
            datagrams_per_slot: 2,
            frame_slots: 2,
            frame_cursors: 1,
            fill_value: 0,
            invalid_reasons,
            placement: Placement::default(),
        }
    }

    #[test]
    fn the_region_names_its_invalid_counters() {
        let region = sizes(&["bad", "worse"]).create_region().unwrap();
        let area = pipeline_area(&region).unwrap();
        assert_eq!(area.invalid_reasons(), ["bad", "worse", "oversized", "out_of_window"]);
        area.assembler.invalid[pipeline_reason_index(2, 1)].fetch_add(3, Ordering::Relaxed);
        let c = area.counters();
        assert_eq!((c["assembler.invalid.bad"], c["assembler.invalid.out_of_window"]), (0, 3));
        assert_eq!(c.keys().filter(|k| k.starts_with("assembler.invalid.")).count(), 4);
    }

    #[test]
    fn too_many_or_too_long_reason_names_are_refused() {
        const MANY: [&str; MAX_INVALID_REASONS - 1] = ["r"; MAX_INVALID_REASONS - 1];
        const FIT: [&str; MAX_INVALID_REASONS - 2] = ["r"; MAX_INVALID_REASONS - 2];
        assert!(sizes(&MANY).create_region().is_err());
        assert!(sizes(&FIT).create_region().is_ok());
        assert!(sizes(&["a_name_longer_than_thirty_two_bytes"]).create_region().is_err());
        assert!(sizes(&[""]).create_region().is_err());
    }
}
