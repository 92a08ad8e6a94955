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
    /// Frames requested.
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
    _pad: [u8; 4],
    /// Output path (UTF-8), `path_len` bytes. Written through `&self` (the record is shared), so in a cell.
    path: UnsafeCell<[u8; MAX_PATH]>,
    /// Why the acquisition failed (UTF-8), `error_len` bytes.
    error: UnsafeCell<[u8; MAX_ERROR]>,
    _tail: [u8; 48],
}

// SAFETY: every field but `path` and `error` is an atomic or padding. `path` is written only by `arm`, whose
// caller guarantees no other process or thread uses the record (it is over: EMPTY, DONE or FAILED), and read
// only after `state` (Release in `arm`) says it is armed; `error` is written only by `fail`, whose caller is the
// record's one failer, before `error_len` is stored (Release), and read only up to `error_len` (Acquire). Reads
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

    /// The output path.
    pub fn path(&self) -> String {
        read_text(&self.path, &self.path_len)
    }

    /// The error message, if the acquisition failed (else empty).
    pub fn error(&self) -> String {
        read_text(&self.error, &self.error_len)
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
    pub unsafe fn arm(&self, id: u64, frames: u64, sync: SyncMode, path: &str, armed_block_seq: u64) {
        let b = path.as_bytes();
        let n = b.len().min(MAX_PATH);
        self.set_state(AcquisitionState::Empty);
        // SAFETY: no stage reads `path` of a record that is EMPTY; the caller guarantees exclusivity.
        unsafe { std::ptr::copy_nonoverlapping(b.as_ptr(), self.path.get().cast::<u8>(), n) };
        self.path_len.store(n as u32, Ordering::Relaxed);
        self.frames.store(frames, Ordering::Relaxed);
        self.sync.store(sync as u32, Ordering::Relaxed);
        self.armed_block_seq.store(armed_block_seq, Ordering::Relaxed);
        self.stop_requested.store(0, Ordering::Relaxed);
        self.assigned.store(0, Ordering::Relaxed);
        self.first_seq.store(u64::MAX, Ordering::Relaxed);
        self.written.store(0, Ordering::Relaxed);
        self.complete.store(0, Ordering::Relaxed);
        self.error_len.store(0, Ordering::Relaxed);
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
    assert!(size_of::<AcquisitionRecord>() == 80 + MAX_PATH + MAX_ERROR + 48);
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
    }

    #[test]
    fn arm_fail_and_transitions() {
        // SAFETY: all-zero bytes are a valid record (atomics and byte arrays), an EMPTY one.
        let rec: Box<AcquisitionRecord> = unsafe { Box::new(std::mem::zeroed()) };
        assert_eq!(rec.state(), AcquisitionState::Empty);
        // SAFETY: the record is ours alone.
        unsafe { rec.arm(7, 100, SyncMode::Flag, "/data/run.npy", 3) };
        assert_eq!(
            (rec.state(), rec.sync(), rec.path()),
            (AcquisitionState::Armed, SyncMode::Flag, "/data/run.npy".into())
        );
        assert!(rec.transition(AcquisitionState::Armed, AcquisitionState::Running));
        assert!(!rec.transition(AcquisitionState::Armed, AcquisitionState::Running));
        // SAFETY: the record is ours alone.
        unsafe { rec.fail(&"x".repeat(MAX_ERROR + 10)) };
        assert_eq!(rec.state(), AcquisitionState::Failed);
        assert_eq!(rec.error().len(), MAX_ERROR);
    }
}
