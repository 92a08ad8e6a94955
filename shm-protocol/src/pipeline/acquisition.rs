//! The acquisition record: one acquisition's state machine and bookkeeping, shared by the supervisor (arms it),
//! the assembler (assigns frames to it) and the writer (writes and finishes its file).

use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use super::{MAX_ERROR, MAX_PATH};

/// Where an acquisition is. It moves forward only, by compare-and-swap where two processes may race:
/// `Empty → Armed → Running → Assigned → Done`, and to `Failed` from any state but `Done` (final).
///
/// Stored in the region as its `u32` discriminant; serialised (status, sidecar) as the lowercase names
/// `"empty"`, `"armed"`, `"running"`, `"writing"` (every frame assigned, the file being finished), `"done"`,
/// `"failed"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[repr(u32)]
pub enum AcquisitionState {
    /// Record unused.
    Empty = 0,
    /// Armed by the supervisor; no frame assigned yet.
    Armed = 1,
    /// The assembler assigns frames to it.
    Running = 2,
    /// Every frame it will have was assigned ([`AcquisitionRecord::assigned`] is final); the writer finishes.
    #[serde(rename = "writing")]
    Assigned = 3,
    /// The writer finished the file.
    Done = 4,
    /// The acquisition failed; [`AcquisitionRecord::error`] says why.
    Failed = 5,
}

impl AcquisitionState {
    /// Every state, in order.
    pub const ALL: [Self; 6] = [Self::Empty, Self::Armed, Self::Running, Self::Assigned, Self::Done, Self::Failed];

    /// The state stored as `raw` in a record, if it names one.
    pub const fn from_raw(raw: u32) -> Option<Self> {
        match raw {
            0 => Some(Self::Empty),
            1 => Some(Self::Armed),
            2 => Some(Self::Running),
            3 => Some(Self::Assigned),
            4 => Some(Self::Done),
            5 => Some(Self::Failed),
            _ => None,
        }
    }

    /// The stable name (as serialised).
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Empty => "empty",
            Self::Armed => "armed",
            Self::Running => "running",
            Self::Assigned => "writing",
            Self::Done => "done",
            Self::Failed => "failed",
        }
    }

    /// Whether the acquisition has ended (its record may be reused).
    pub const fn is_over(self) -> bool {
        matches!(self, Self::Empty | Self::Done | Self::Failed)
    }

    /// Whether frames may still be assigned to it (a stop request ends it at the next frame).
    pub const fn takes_frames(self) -> bool {
        matches!(self, Self::Armed | Self::Running)
    }
}

impl std::fmt::Display for AcquisitionState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Compares with a state's stable name (`state == "done"`), as scripts and tests read `status --json`.
impl PartialEq<&str> for AcquisitionState {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// How an acquisition ended (or is ending: the reason is recorded first, by whoever ends it, and the file is
/// finished after). Stored in the region as its `u32` discriminant, 0 while it has not ended; serialised (status,
/// sidecar) as the snake-case names below. The first reason recorded wins ([`AcquisitionRecord::claim_end`]),
/// except that a fixed-count acquisition the writer finishes with all its frames ends [`EndReason::Complete`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[repr(u32)]
pub enum EndReason {
    /// Every requested frame was acquired.
    Complete = 1,
    /// `ringdaq stop`: the user ended it; the file holds the frames so far.
    Stopped = 2,
    /// No frame came for `stream_idle_timeout_s` (the detector stopped sending, or its frames were lost whole).
    StreamIdle = 3,
    /// The pipeline was shut down (`ringdaq shutdown`, a signal) before it had its frames.
    Shutdown = 4,
    /// The pipeline stopped because a stage died more often than its restart budget allows.
    PipelineFailed = 5,
    /// The disk had no room for the acquisition.
    DiskFull = 6,
    /// Writing the file failed.
    WriteError = 7,
}

impl EndReason {
    /// Every reason, in order.
    pub const ALL: [Self; 7] = [
        Self::Complete,
        Self::Stopped,
        Self::StreamIdle,
        Self::Shutdown,
        Self::PipelineFailed,
        Self::DiskFull,
        Self::WriteError,
    ];

    /// The reason stored as `raw` in a record (0, or a value that names none: not ended).
    pub const fn from_raw(raw: u32) -> Option<Self> {
        match raw {
            1 => Some(Self::Complete),
            2 => Some(Self::Stopped),
            3 => Some(Self::StreamIdle),
            4 => Some(Self::Shutdown),
            5 => Some(Self::PipelineFailed),
            6 => Some(Self::DiskFull),
            7 => Some(Self::WriteError),
            _ => None,
        }
    }

    /// The stable name (as serialised).
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Complete => "complete",
            Self::Stopped => "stopped",
            Self::StreamIdle => "stream_idle",
            Self::Shutdown => "shutdown",
            Self::PipelineFailed => "pipeline_failed",
            Self::DiskFull => "disk_full",
            Self::WriteError => "write_error",
        }
    }

    /// Whether the acquisition ended as asked: all its frames, or stopped by the user (`acquire --wait` exits 0).
    pub const fn as_asked(self) -> bool {
        matches!(self, Self::Complete | Self::Stopped)
    }
}

impl std::fmt::Display for EndReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Frames requested by an acquisition that runs until `ringdaq stop` (continuous): no count ends it.
pub const CONTINUOUS: u64 = u64::MAX;

/// When frame index 0 of an acquisition is. Stored in the region as its `u32` discriminant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[repr(u32)]
pub enum SyncMode {
    /// The first frame whose first block arrives after arming.
    #[default]
    Immediate = 0,
    /// The first frame (after arming) with the detector's sync flag.
    Flag = 1,
}

impl SyncMode {
    /// The mode stored as `raw`, if it names one.
    pub const fn from_raw(raw: u32) -> Option<Self> {
        match raw {
            0 => Some(Self::Immediate),
            1 => Some(Self::Flag),
            _ => None,
        }
    }

    /// The stable name, as the command line spells it.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Immediate => "immediate",
            Self::Flag => "flag",
        }
    }
}

/// How an acquisition's frames are stored in its file. Stored in the region as its `u32` discriminant (in what
/// was padding of [`AcquisitionRecord`], so a record armed by an older build reads as `None`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
#[repr(u32)]
pub enum Compression {
    /// As they are.
    #[default]
    None = 0,
    /// Bitshuffle + LZ4 in HDF5 filter 32008's chunk format (`.h5` only).
    Bslz4 = 1,
}

impl Compression {
    /// The compression stored as `raw`, if it names one.
    pub const fn from_raw(raw: u32) -> Option<Self> {
        match raw {
            0 => Some(Self::None),
            1 => Some(Self::Bslz4),
            _ => None,
        }
    }

    /// The stable name, as the command line spells it.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Bslz4 => "bslz4",
        }
    }
}

/// One acquisition: armed by the supervisor, its frames assigned by the assembler, its file written by the
/// writer. Plain fields are written before `state` is stored (Release) and read after it is loaded (Acquire).
#[repr(C, align(64))]
pub struct AcquisitionRecord {
    /// Acquisition id (never 0 for a used record).
    pub id: AtomicU64,
    /// An [`AcquisitionState`]; read and moved through [`AcquisitionRecord::state`] and its siblings.
    state: AtomicU32,
    /// A [`SyncMode`].
    sync: AtomicU32,
    /// Frames requested ([`CONTINUOUS`]: until stopped).
    pub frames: AtomicU64,
    /// Block-ring `published` when armed: blocks in earlier slots arrived before arming.
    pub armed_block_seq: AtomicU64,
    /// Non-zero: end the acquisition at the next frame (`ringdaq stop`).
    pub stop_requested: AtomicU32,
    /// Length of `path`.
    path_len: AtomicU32,
    /// Frames assigned so far (final once the state is [`AcquisitionState::Assigned`]).
    pub assigned: AtomicU64,
    /// Frame-ring sequence of frame index 0.
    pub first_seq: AtomicU64,
    /// Frames the writer has written.
    pub written: AtomicU64,
    /// Complete frames among those assigned.
    pub complete: AtomicU64,
    /// Length of `error`.
    error_len: AtomicU32,
    /// A [`Compression`] (this was padding before: 0, none).
    compression: AtomicU32,
    /// Output path (UTF-8), `path_len` bytes. Written through `&self` (the record is shared), so in a cell.
    path: UnsafeCell<[u8; MAX_PATH]>,
    /// Why the acquisition failed (UTF-8), `error_len` bytes.
    error: UnsafeCell<[u8; MAX_ERROR]>,
    /// An [`EndReason`], 0 until one is recorded ([`AcquisitionRecord::claim_end`]).
    end_reason: AtomicU32,
    /// Length of `reason`.
    reason_len: AtomicU32,
    /// How it ended, in words (UTF-8), `reason_len` bytes: written by the one who recorded `end_reason`.
    reason: UnsafeCell<[u8; MAX_ERROR]>,
    _tail: [u8; 40],
}

// SAFETY: every field but `path`, `error` and `reason` is an atomic or padding. `path` is written only by `arm`,
// whose caller guarantees no other process or thread uses the record (it is over: EMPTY, DONE or FAILED), and
// read only after `state` (Release in `arm`) says it is armed; `error` is written only by `fail`, whose caller is
// the record's one failer, before `error_len` is stored (Release), and read only up to `error_len` (Acquire);
// `reason` is written only by the one process whose compare-and-swap of `end_reason` from 0 succeeded
// (`claim_end`), before `reason_len` is stored (Release), and read only up to `reason_len` (Acquire). Reads
// are volatile copies, so a torn read of a racing, misbehaving writer yields wrong bytes, not undefined
// behaviour in the reader's own code.
unsafe impl Sync for AcquisitionRecord {}

/// Copies the first `len` bytes of a byte array in the region, volatile (another process may write it).
fn read_text<const N: usize>(cell: &UnsafeCell<[u8; N]>, len: &AtomicU32) -> String {
    let n = (len.load(Ordering::Acquire) as usize).min(N);
    // SAFETY: the cell lies in the mapping, which outlives `&self`; a volatile copy of plain bytes is valid
    // whatever another process writes meanwhile (see the `Sync` impl for who writes it when).
    let bytes = unsafe { std::ptr::read_volatile(cell.get()) };
    String::from_utf8_lossy(&bytes[..n]).into_owned()
}

impl AcquisitionRecord {
    /// The state. A value that names no state (a region written by a foreign build) reads as `Empty`: unused.
    pub fn state(&self) -> AcquisitionState {
        AcquisitionState::from_raw(self.state.load(Ordering::Acquire)).unwrap_or(AcquisitionState::Empty)
    }

    /// Moves the state from `from` to `to` if it is `from` (compare-and-swap); whether it did.
    pub fn transition(&self, from: AcquisitionState, to: AcquisitionState) -> bool {
        self.state.compare_exchange(from as u32, to as u32, Ordering::AcqRel, Ordering::Relaxed).is_ok()
    }

    /// Sets the state unconditionally: for the record's one owner of that step (the writer finishing its file).
    pub fn set_state(&self, to: AcquisitionState) {
        self.state.store(to as u32, Ordering::Release);
    }

    /// The sync mode it was armed with.
    pub fn sync(&self) -> SyncMode {
        SyncMode::from_raw(self.sync.load(Ordering::Relaxed)).unwrap_or_default()
    }

    /// How the frames are stored (a value that names none reads as none).
    pub fn compression(&self) -> Compression {
        Compression::from_raw(self.compression.load(Ordering::Relaxed)).unwrap_or_default()
    }

    /// The output path.
    pub fn path(&self) -> String {
        read_text(&self.path, &self.path_len)
    }

    /// The error message, if the acquisition failed (else empty).
    pub fn error(&self) -> String {
        read_text(&self.error, &self.error_len)
    }

    /// How it ended, once that is recorded.
    pub fn end_reason(&self) -> Option<EndReason> {
        EndReason::from_raw(self.end_reason.load(Ordering::Acquire))
    }

    /// How it ended, in words (empty until recorded, and for some reasons, e.g. [`EndReason::Complete`]).
    pub fn reason(&self) -> String {
        read_text(&self.reason, &self.reason_len)
    }

    /// Records how the acquisition ends, with `text` (truncated to [`MAX_ERROR`] bytes), if no reason was
    /// recorded yet: the first to end it says why. Whether this call recorded it. Crash-safe: the reason lives
    /// in the region, so the writer that finishes the file (perhaps a restarted one) reads it from there.
    pub fn claim_end(&self, reason: EndReason, text: &str) -> bool {
        if self.end_reason.compare_exchange(0, reason as u32, Ordering::AcqRel, Ordering::Acquire).is_err() {
            return false;
        }
        let b = text.as_bytes();
        let n = b.len().min(MAX_ERROR);
        // SAFETY: the compare-and-swap above succeeds once per arming, so this caller is the only writer of
        // `reason`; readers read it only up to `reason_len`, stored below with Release, and copy it volatile.
        unsafe { std::ptr::copy_nonoverlapping(b.as_ptr(), self.reason.get().cast::<u8>(), n) };
        self.reason_len.store(n as u32, Ordering::Release);
        true
    }

    /// The writer, finishing a fixed-count acquisition with every frame: it ended complete, whatever request to
    /// end it came meanwhile (the words recorded with that request stay, unused).
    pub fn settle_complete(&self) {
        self.end_reason.store(EndReason::Complete as u32, Ordering::Release);
    }

    /// Records why the acquisition failed (truncated to [`MAX_ERROR`] bytes) and sets the state to
    /// [`AcquisitionState::Failed`].
    ///
    /// # Safety
    /// The caller is the only one writing this record's error (the writer, for the acquisition it writes).
    pub unsafe fn fail(&self, msg: &str) {
        let b = msg.as_bytes();
        let n = b.len().min(MAX_ERROR);
        // SAFETY: the caller is the only writer of `error`; readers read it only up to `error_len`, stored below
        // with Release, and copy it volatile.
        unsafe { std::ptr::copy_nonoverlapping(b.as_ptr(), self.error.get().cast::<u8>(), n) };
        self.error_len.store(n as u32, Ordering::Release);
        self.set_state(AcquisitionState::Failed);
    }

    /// Fills the record for a new acquisition and arms it.
    ///
    /// # Safety
    /// Only the supervisor may call it, and only while no stage uses this record (its previous acquisition is
    /// over: [`AcquisitionState::is_over`]).
    pub unsafe fn arm(
        &self,
        id: u64,
        frames: u64,
        sync: SyncMode,
        compression: Compression,
        path: &str,
        armed_block_seq: u64,
    ) {
        let b = path.as_bytes();
        let n = b.len().min(MAX_PATH);
        self.set_state(AcquisitionState::Empty);
        // SAFETY: no stage reads `path` of a record that is EMPTY; the caller guarantees exclusivity.
        unsafe { std::ptr::copy_nonoverlapping(b.as_ptr(), self.path.get().cast::<u8>(), n) };
        self.path_len.store(n as u32, Ordering::Relaxed);
        self.frames.store(frames, Ordering::Relaxed);
        self.sync.store(sync as u32, Ordering::Relaxed);
        self.compression.store(compression as u32, Ordering::Relaxed);
        self.armed_block_seq.store(armed_block_seq, Ordering::Relaxed);
        self.stop_requested.store(0, Ordering::Relaxed);
        self.assigned.store(0, Ordering::Relaxed);
        self.first_seq.store(u64::MAX, Ordering::Relaxed);
        self.written.store(0, Ordering::Relaxed);
        self.complete.store(0, Ordering::Relaxed);
        self.error_len.store(0, Ordering::Relaxed);
        self.reason_len.store(0, Ordering::Relaxed);
        self.end_reason.store(0, Ordering::Relaxed);
        self.id.store(id, Ordering::Release);
        self.set_state(AcquisitionState::Armed);
    }
}

// Layout checks (the record lives in the region, read by separately built processes and Python).
const _: () = {
    use std::mem::{offset_of, size_of};
    assert!(offset_of!(AcquisitionRecord, state) == 8);
    assert!(offset_of!(AcquisitionRecord, frames) == 16);
    assert!(offset_of!(AcquisitionRecord, armed_block_seq) == 24);
    assert!(offset_of!(AcquisitionRecord, assigned) == 40);
    assert!(offset_of!(AcquisitionRecord, path) == 80);
    assert!(offset_of!(AcquisitionRecord, error) == 80 + MAX_PATH);
    assert!(offset_of!(AcquisitionRecord, end_reason) == 80 + MAX_PATH + MAX_ERROR);
    assert!(offset_of!(AcquisitionRecord, reason) == 88 + MAX_PATH + MAX_ERROR);
    assert!(size_of::<AcquisitionRecord>() == 88 + MAX_PATH + 2 * MAX_ERROR + 40);
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_round_trip_through_the_region_encoding_and_keep_their_names() {
        for s in AcquisitionState::ALL {
            assert_eq!(AcquisitionState::from_raw(s as u32), Some(s));
            assert_eq!(serde_json::to_string(&s).ok(), Some(format!("\"{}\"", s.as_str())));
        }
        assert_eq!(AcquisitionState::from_raw(6), None);
        let names: Vec<_> = AcquisitionState::ALL.iter().map(|s| s.as_str()).collect();
        assert_eq!(names, ["empty", "armed", "running", "writing", "done", "failed"]);
        for m in [SyncMode::Immediate, SyncMode::Flag] {
            assert_eq!(SyncMode::from_raw(m as u32), Some(m));
        }
        for c in [Compression::None, Compression::Bslz4] {
            assert_eq!(Compression::from_raw(c as u32), Some(c));
            assert_eq!(serde_json::to_string(&c).ok(), Some(format!("\"{}\"", c.as_str())));
        }
    }

    #[test]
    fn arm_fail_and_transitions() {
        // SAFETY: all-zero bytes are a valid record (atomics and byte arrays), an EMPTY one.
        let rec: Box<AcquisitionRecord> = unsafe { Box::new(std::mem::zeroed()) };
        assert_eq!(rec.state(), AcquisitionState::Empty);
        // SAFETY: the record is ours alone.
        unsafe { rec.arm(7, 100, SyncMode::Flag, Compression::None, "/data/run.npy", 3) };
        assert_eq!(
            (rec.state(), rec.sync(), rec.compression(), rec.path()),
            (AcquisitionState::Armed, SyncMode::Flag, Compression::None, "/data/run.npy".into())
        );
        assert!(rec.transition(AcquisitionState::Armed, AcquisitionState::Running));
        assert!(!rec.transition(AcquisitionState::Armed, AcquisitionState::Running));
        // SAFETY: the record is ours alone.
        unsafe { rec.fail(&"x".repeat(MAX_ERROR + 10)) };
        assert_eq!(rec.state(), AcquisitionState::Failed);
        assert_eq!(rec.error().len(), MAX_ERROR);
    }

    #[test]
    fn the_first_end_reason_wins_and_arming_clears_it() {
        // SAFETY: all-zero bytes are a valid record (atomics and byte arrays), an EMPTY one.
        let rec: Box<AcquisitionRecord> = unsafe { Box::new(std::mem::zeroed()) };
        // SAFETY: the record is ours alone.
        unsafe { rec.arm(1, 10, SyncMode::Immediate, Compression::None, "/d/a.npy", 0) };
        assert_eq!(rec.end_reason(), None);
        assert!(rec.claim_end(EndReason::StreamIdle, "no frame for 5 s"));
        assert!(!rec.claim_end(EndReason::Shutdown, "shutdown"));
        assert_eq!((rec.end_reason(), rec.reason()), (Some(EndReason::StreamIdle), "no frame for 5 s".into()));
        rec.settle_complete();
        assert_eq!(rec.end_reason(), Some(EndReason::Complete));
        // SAFETY: the record is ours alone.
        unsafe { rec.arm(2, 10, SyncMode::Immediate, Compression::Bslz4, "/d/b.npy", 0) };
        assert_eq!((rec.end_reason(), rec.reason()), (None, String::new()));
        for r in EndReason::ALL {
            assert_eq!(EndReason::from_raw(r as u32), Some(r));
            assert_eq!(serde_json::to_string(&r).ok(), Some(format!("\"{}\"", r.as_str())));
        }
        assert_eq!(EndReason::from_raw(0), None);
    }
}
