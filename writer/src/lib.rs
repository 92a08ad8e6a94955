//! The write stage: frames of the armed acquisition from the frame ring → a `.npy` file and its JSON sidecar.
//!
//! Frame index `i` is written at byte `4096 + i × frame_bytes` of a file preallocated for the whole acquisition,
//! named `<path>.partial` until it is final. Writes go straight from the frame-ring slot to the file (`O_DIRECT`
//! where the file system supports it, since slots and file offsets are page aligned). Writing frame `i` twice
//! writes the same bytes at the same place, so a restarted writer may repeat a frame harmlessly. When every frame
//! of the acquisition is written, the writer fixes the header if fewer frames came than requested, writes the
//! sidecar, syncs both, and renames them into place. A write error fails the acquisition, not the pipeline.

pub mod npy;

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde::Serialize;
use shm_protocol::pipeline::{
    self, AcquisitionRecord, FRAME_PIXELS_OFFSET, FRAME_RING, FrameHeader, NO_INDEX, PipelineArea, Stage,
    WRITER_CURSOR, acq_state,
};
use shm_protocol::{Consumer, ReadSlot, Region, RingError};

/// Why the writer stopped (acquisition failures do not stop it; they are recorded in the region).
#[derive(Debug, thiserror::Error)]
pub enum WriterError {
    /// The region is not a pipeline region.
    #[error(transparent)]
    Pipeline(#[from] pipeline::PipelineError),
    /// A ring operation failed.
    #[error(transparent)]
    Ring(#[from] RingError),
    /// The region lacks a ring.
    #[error(transparent)]
    Region(#[from] shm_protocol::RegionError),
}

/// Per-frame entry of the sidecar.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct FrameMeta {
    /// Index in the acquisition (the first axis of the array).
    pub index: u64,
    /// The detector's frame id.
    pub frame_id: u32,
    /// Whether every block arrived.
    pub complete: bool,
    /// Blocks missing (their pixels hold the fill value).
    pub missing_blocks: u32,
    /// Receive time of the first block, ns since the Unix epoch.
    pub first_block_ns: u64,
    /// Receive time of the last block.
    pub last_block_ns: u64,
    /// When the assembler published the frame.
    pub published_ns: u64,
}

/// The JSON sidecar written next to each `.npy` (same path, extension `.json`).
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct Sidecar {
    /// Format version of this sidecar.
    pub version: u32,
    /// Acquisition id.
    pub acquisition_id: u64,
    /// The `.npy` file.
    pub path: String,
    /// Frames requested.
    pub frames_requested: u64,
    /// Frames in the file.
    pub frames: u64,
    /// Complete frames.
    pub complete_frames: u64,
    /// Incomplete frames.
    pub incomplete_frames: u64,
    /// Array shape.
    pub shape: [u64; 3],
    /// Array dtype.
    pub dtype: String,
    /// Value of the pixels of missing blocks.
    pub fill_value: u32,
    /// Pipeline counters when the file was finished.
    pub counters: std::collections::BTreeMap<String, u64>,
    /// One entry per frame, by index.
    pub frame_list: Vec<FrameMeta>,
}

/// The sidecar's path for an output path: the same path with the extension `json`.
pub fn sidecar_path(path: &Path) -> PathBuf {
    path.with_extension("json")
}

fn partial(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".partial");
    PathBuf::from(s)
}

fn journal_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".frames.partial");
    PathBuf::from(s)
}

/// Size of one record of the frame journal.
const JOURNAL_RECORD: usize = 64;

/// Encodes a frame's sidecar entry as journal record `index` (little-endian; first byte 1 marks it written).
/// Records sit at `64 × index` of `<path>.frames.partial`, so writing one twice is harmless, and a restarted
/// writer finds what its predecessor wrote.
fn encode_record(m: &FrameMeta) -> [u8; JOURNAL_RECORD] {
    let mut r = [0u8; JOURNAL_RECORD];
    r[0] = 1;
    r[1] = u8::from(m.complete);
    r[4..8].copy_from_slice(&m.frame_id.to_le_bytes());
    r[8..16].copy_from_slice(&m.index.to_le_bytes());
    r[16..20].copy_from_slice(&m.missing_blocks.to_le_bytes());
    r[24..32].copy_from_slice(&m.first_block_ns.to_le_bytes());
    r[32..40].copy_from_slice(&m.last_block_ns.to_le_bytes());
    r[40..48].copy_from_slice(&m.published_ns.to_le_bytes());
    r
}

fn decode_record(r: &[u8]) -> Option<FrameMeta> {
    let u32at = |i: usize| u32::from_le_bytes([r[i], r[i + 1], r[i + 2], r[i + 3]]);
    let u64at = |i: usize| u64::from_le_bytes(r[i..i + 8].try_into().unwrap_or_default());
    (r.len() == JOURNAL_RECORD && r[0] == 1).then(|| FrameMeta {
        index: u64at(8),
        frame_id: u32at(4),
        complete: r[1] == 1,
        missing_blocks: u32at(16),
        first_block_ns: u64at(24),
        last_block_ns: u64at(32),
        published_ns: u64at(40),
    })
}

/// A page-aligned buffer, for writes through an `O_DIRECT` descriptor.
struct Aligned {
    ptr: *mut u8,
    layout: std::alloc::Layout,
}

impl Aligned {
    fn new(bytes: &[u8]) -> Option<Self> {
        let layout = std::alloc::Layout::from_size_align(bytes.len().max(1), 4096).ok()?;
        // SAFETY: layout has non-zero size.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        if ptr.is_null() {
            return None;
        }
        // SAFETY: ptr holds layout.size() >= bytes.len() bytes.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), ptr, bytes.len()) };
        Some(Self { ptr, layout })
    }

    fn as_slice(&self) -> &[u8] {
        // SAFETY: allocated and initialised with layout.size() bytes in `new`.
        unsafe { std::slice::from_raw_parts(self.ptr, self.layout.size()) }
    }
}

impl Drop for Aligned {
    fn drop(&mut self) {
        // SAFETY: allocated with this layout in `new`.
        unsafe { std::alloc::dealloc(self.ptr, self.layout) };
    }
}

/// An acquisition whose file is open.
struct OpenAcquisition {
    id: u64,
    path: PathBuf,
    file: File,
    direct: bool,
    requested: u64,
    /// `<path>.frames.partial`: one record per frame written, read back to make the sidecar.
    journal: File,
}

/// Tuning of the writer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriterConfig {
    /// Try `O_DIRECT` (falls back to buffered writes where the file system refuses it).
    pub direct_io: bool,
}

impl Default for WriterConfig {
    fn default() -> Self {
        Self { direct_io: true }
    }
}

/// The write loop over one region.
pub struct Writer<'r> {
    area: &'r PipelineArea,
    frames: Consumer<'r>,
    cfg: WriterConfig,
    rows: u64,
    cols: u64,
    frame_bytes: usize,
    open: Option<OpenAcquisition>,
}

impl<'r> Writer<'r> {
    /// Attaches to the frame ring's writer cursor.
    pub fn new(region: &'r Region, cfg: WriterConfig) -> Result<Self, WriterError> {
        let area = pipeline::pipeline_area(region)?;
        let g = region.header().geometry;
        let frames = region.ring(FRAME_RING)?.consumer(WRITER_CURSOR)?;
        let frame_bytes = g.frame_rows as usize * g.frame_cols as usize * 2;
        Ok(Self { area, frames, cfg, rows: g.frame_rows.into(), cols: g.frame_cols.into(), frame_bytes, open: None })
    }

    /// Runs until `should_stop` returns true, then writes what is left and exits.
    pub fn run(&mut self, mut should_stop: impl FnMut() -> bool) -> Result<(), WriterError> {
        // Who runs the stage, for `ringdaq inspect` (the supervisor clears it when this process dies).
        self.area.stage(Stage::Writer).pid.store(std::process::id(), Ordering::Release);
        let r = loop {
            if should_stop() {
                break self.drain();
            }
            // Frames wake the writer at once; the timeout only paces commands and housekeeping when idle.
            match self.frames.next(Some(Duration::from_millis(250))) {
                Ok(slot) => self.handle(slot),
                // Beating while idle keeps the allocation totals in the stage record current.
                Err(RingError::Timeout) => self.area.stage(Stage::Writer).beat(),
                Err(e) => break Err(e.into()),
            }
            self.housekeeping();
        };
        self.area.stage(Stage::Writer).pid.store(0, Ordering::Release);
        r
    }

    /// Writes every frame already published and finishes what can be finished.
    pub fn drain(&mut self) -> Result<(), WriterError> {
        while let Some(slot) = self.frames.try_next()? {
            self.handle(slot);
        }
        self.housekeeping();
        Ok(())
    }

    /// Writes one frame if it belongs to an acquisition, then commits it.
    pub fn handle(&mut self, slot: ReadSlot<'r>) {
        let bytes = slot.bytes();
        // The slot starts with the FrameHeader, written before the frame was published.
        let h: FrameHeader = bytemuck::pod_read_unaligned(&bytes[..size_of::<FrameHeader>()]);
        if h.acquisition_id != 0 && h.index != NO_INDEX {
            let pixels = &bytes[FRAME_PIXELS_OFFSET..FRAME_PIXELS_OFFSET + self.frame_bytes];
            self.write_frame(&h, pixels);
        }
        self.frames.commit(slot.seq() + 1);
        self.area.stage(Stage::Writer).beat();
        self.housekeeping();
    }

    fn write_frame(&mut self, h: &FrameHeader, pixels: &[u8]) {
        let rec = self.area.acquisition(h.acquisition_id);
        if rec.id.load(Ordering::Acquire) != h.acquisition_id {
            return; // the record was reused: an acquisition long gone
        }
        if rec.state.load(Ordering::Acquire) == acq_state::FAILED {
            return;
        }
        if self.open.as_ref().is_none_or(|o| o.id != h.acquisition_id) {
            self.finish_open();
            if let Err(e) = self.open_acquisition(rec) {
                self.fail(rec, &e);
                return;
            }
        }
        let Some(open) = self.open.as_mut() else {
            return;
        };
        if h.index >= open.requested {
            return;
        }
        let offset = (npy::HEADER_LEN + h.index as usize * self.frame_bytes) as u64;
        let res = write_at(&mut open.file, &mut open.direct, &open.path, pixels, offset);
        let meta = FrameMeta {
            index: h.index,
            frame_id: h.frame_id,
            complete: h.is_complete(),
            missing_blocks: h.blocks_expected.saturating_sub(h.blocks_received),
            first_block_ns: h.first_block_ns,
            last_block_ns: h.last_block_ns,
            published_ns: h.published_ns,
        };
        let res = res.and_then(|()| open.journal.write_all_at(&encode_record(&meta), h.index * JOURNAL_RECORD as u64));
        match res {
            Ok(()) => {
                // The highest index written, + 1: idempotent, so a frame rewritten after a restart counts once.
                rec.written.fetch_max(h.index + 1, Ordering::Release);
                self.area.writer.frames.fetch_add(1, Ordering::Relaxed);
                self.area.writer.bytes.fetch_add(pixels.len() as u64, Ordering::Relaxed);
            }
            Err(e) => {
                self.area.writer.errors.fetch_add(1, Ordering::Relaxed);
                let msg = format!("writing frame {} to {}: {e}", h.index, partial(&open.path).display());
                self.fail(rec, &msg);
            }
        }
    }

    /// Creates and preallocates `<path>.partial` (and its journal) for acquisition `rec`, or, after a restart,
    /// reopens the ones the previous writer left.
    fn open_acquisition(&mut self, rec: &AcquisitionRecord) -> Result<(), String> {
        let id = rec.id.load(Ordering::Acquire);
        shm_protocol::logging::set_acquisition(id);
        let path = PathBuf::from(rec.path());
        let requested = rec.frames.load(Ordering::Acquire);
        let tmp = partial(&path);
        let jpath = journal_path(&path);
        let resume = tmp.exists() && jpath.exists() && rec.first_seq.load(Ordering::Acquire) != u64::MAX;
        let mut opts = OpenOptions::new();
        opts.read(true).write(true).create(true).truncate(!resume).mode(0o644);
        let direct_ok = self.cfg.direct_io && self.frame_bytes.is_multiple_of(4096);
        let (file, direct) = match direct_ok.then(|| opts.clone().custom_flags(libc::O_DIRECT).open(&tmp)) {
            Some(Ok(f)) => (f, true),
            _ => (opts.open(&tmp).map_err(|e| format!("creating {}: {e}", tmp.display()))?, false),
        };
        let journal = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(!resume)
            .mode(0o644)
            .open(&jpath)
            .map_err(|e| format!("creating {}: {e}", jpath.display()))?;
        let mut open = OpenAcquisition { id, path, file, direct, requested, journal };
        // Sizing and the header are repeated on a resume (the same bytes at the same place): the previous writer
        // may have died between creating the file and writing them.
        let total = npy::HEADER_LEN as u64 + requested * self.frame_bytes as u64;
        // The frames and their journal records get their space now: a disk that fills up later (another
        // process, a long run) cannot fail a frame write, and one that is too small fails here, before any frame.
        let reserve = rustix::fs::fallocate(&open.file, rustix::fs::FallocateFlags::empty(), 0, total).and_then(|()| {
            rustix::fs::fallocate(
                &open.journal,
                rustix::fs::FallocateFlags::empty(),
                0,
                requested * JOURNAL_RECORD as u64,
            )
        });
        match reserve {
            Ok(()) => {}
            Err(rustix::io::Errno::NOSPC) => {
                let _ = std::fs::remove_file(&tmp);
                let _ = std::fs::remove_file(&jpath);
                return Err(format!(
                    "not enough space for {requested} frames ({:.2} GB) at {}",
                    total as f64 / 1e9,
                    tmp.display()
                ));
            }
            Err(_) => open.file.set_len(total).map_err(|e| format!("sizing {}: {e}", tmp.display()))?,
        }
        let header = npy::header(&[requested, self.rows, self.cols]);
        write_at(&mut open.file, &mut open.direct, &open.path, &header, 0)
            .map_err(|e| format!("writing the header of {}: {e}", tmp.display()))?;
        if resume {
            tracing::info!(acquisition = id, path = %open.path.display(), "file reopened after a restart");
        } else {
            tracing::info!(acquisition = id, path = %open.path.display(), frames = requested, direct = open.direct, "file opened");
        }
        self.open = Some(open);
        Ok(())
    }

    /// The journal's records for indices `0..n`, by index (missing ones skipped).
    fn read_journal(o: &OpenAcquisition, n: u64) -> Vec<FrameMeta> {
        let mut buf = vec![0u8; n as usize * JOURNAL_RECORD];
        let got = o.journal.read_at(&mut buf, 0).unwrap_or(0);
        buf[..got - got % JOURNAL_RECORD]
            .chunks_exact(JOURNAL_RECORD)
            .filter_map(decode_record)
            .filter(|m| m.index < n)
            .collect()
    }

    fn fail(&mut self, rec: &AcquisitionRecord, msg: &str) {
        let open = self.open.take_if(|o| o.id == rec.id.load(Ordering::Relaxed));
        self.fail_open(rec, msg, open);
    }

    /// Fails acquisition `rec`; its file, if `open`, keeps the frames written so far under a header that says
    /// how many.
    fn fail_open(&mut self, rec: &AcquisitionRecord, msg: &str, open: Option<OpenAcquisition>) {
        let mut msg = msg.to_owned();
        if let Some(o) = open {
            // Keep what was written, with a header that says how much: the frames so far stay readable.
            let n = rec.written.load(Ordering::Acquire);
            let mut o = o;
            let _ = write_at(&mut o.file, &mut o.direct, &o.path, &npy::header(&[n, self.rows, self.cols]), 0);
            let _ = o.file.set_len(npy::HEADER_LEN as u64 + n * self.frame_bytes as u64);
            msg = format!("{msg}; the first {n} frames are kept in {} (a valid .npy)", partial(&o.path).display());
        }
        tracing::error!(acquisition = rec.id.load(Ordering::Relaxed), error = msg, "acquisition failed");
        // SAFETY: the writer is the only process that writes an acquisition's error.
        unsafe { rec.set_error(&msg) };
        self.area.writer.failed.fetch_add(1, Ordering::Relaxed);
    }

    /// Finishes the open acquisition if all its frames are written, and acquisitions that got no frame at all.
    fn housekeeping(&mut self) {
        if let Some(o) = &self.open {
            let rec = self.area.acquisition(o.id);
            // Done once the writer's own cursor has passed the acquisition's last frame (its frames are
            // consecutive in the frame ring): a count of writes would be fooled by a frame rewritten after a restart.
            let first = rec.first_seq.load(Ordering::Acquire);
            let n = rec.assigned.load(Ordering::Acquire);
            if rec.state.load(Ordering::Acquire) == acq_state::ASSIGNED
                && (n == 0 || self.frames.committed() >= first.saturating_add(n))
            {
                self.finish_open();
            }
        }
        for rec in &self.area.acquisitions {
            let id = rec.id.load(Ordering::Acquire);
            if id != 0
                && rec.state.load(Ordering::Acquire) == acq_state::ASSIGNED
                && rec.assigned.load(Ordering::Acquire) == 0
                && self.open.as_ref().is_none_or(|o| o.id != id)
            {
                // Stopped before its first frame: an empty but valid file.
                match self.open_acquisition(rec) {
                    Ok(()) => self.finish_open(),
                    Err(e) => self.fail(rec, &e),
                }
            }
        }
    }

    /// Fixes the header, writes the sidecar, syncs and renames; marks the acquisition DONE (or FAILED).
    fn finish_open(&mut self) {
        let Some(mut o) = self.open.take() else {
            return;
        };
        let rec = self.area.acquisition(o.id);
        match self.finalize(&mut o, rec) {
            Ok(()) => {
                rec.state.store(acq_state::DONE, Ordering::Release);
                self.area.writer.done.fetch_add(1, Ordering::Relaxed);
                tracing::info!(acquisition = o.id, path = %o.path.display(), "acquisition done");
            }
            Err(e) => self.fail_open(rec, &e, Some(o)),
        }
    }

    fn finalize(&self, o: &mut OpenAcquisition, rec: &AcquisitionRecord) -> Result<(), String> {
        let n = rec.assigned.load(Ordering::Acquire).min(o.requested);
        let tmp = partial(&o.path);
        if n < o.requested {
            let header = npy::header(&[n, self.rows, self.cols]);
            write_at(&mut o.file, &mut o.direct, &o.path, &header, 0).map_err(|e| format!("fixing the header: {e}"))?;
            o.file
                .set_len(npy::HEADER_LEN as u64 + n * self.frame_bytes as u64)
                .map_err(|e| format!("truncating {}: {e}", tmp.display()))?;
        }
        o.file.sync_all().map_err(|e| format!("syncing {}: {e}", tmp.display()))?;
        let frame_list = Self::read_journal(o, n);
        let complete = frame_list.iter().filter(|m| m.complete).count() as u64;
        let sidecar = Sidecar {
            version: 1,
            acquisition_id: o.id,
            path: o.path.display().to_string(),
            frames_requested: o.requested,
            frames: n,
            complete_frames: complete,
            incomplete_frames: n - complete.min(n),
            shape: [n, self.rows, self.cols],
            dtype: "uint16".into(),
            fill_value: self.area.params.fill_value,
            counters: self.area.counters(),
            frame_list,
        };
        let json = serde_json::to_vec_pretty(&sidecar).map_err(|e| format!("encoding the sidecar: {e}"))?;
        let side = sidecar_path(&o.path);
        let side_tmp = partial(&side);
        std::fs::write(&side_tmp, &json).map_err(|e| format!("writing {}: {e}", side_tmp.display()))?;
        File::open(&side_tmp).and_then(|f| f.sync_all()).map_err(|e| format!("syncing {}: {e}", side_tmp.display()))?;
        std::fs::rename(&side_tmp, &side).map_err(|e| format!("renaming {}: {e}", side.display()))?;
        std::fs::rename(&tmp, &o.path).map_err(|e| format!("renaming {}: {e}", o.path.display()))?;
        let _ = std::fs::remove_file(journal_path(&o.path));
        if let Some(dir) = o.path.parent() {
            let _ =
                File::open(if dir.as_os_str().is_empty() { Path::new(".") } else { dir }).and_then(|d| d.sync_all());
        }
        Ok(())
    }
}

/// Writes `bytes` at `offset`; an `O_DIRECT` write the file system refuses is retried buffered.
fn write_at(file: &mut File, direct: &mut bool, path: &Path, bytes: &[u8], offset: u64) -> std::io::Result<()> {
    if *direct {
        let aligned_ok = (bytes.as_ptr() as usize).is_multiple_of(4096) && bytes.len().is_multiple_of(4096);
        let res = if aligned_ok {
            file.write_all_at(bytes, offset)
        } else {
            match Aligned::new(bytes) {
                Some(a) if bytes.len().is_multiple_of(4096) => file.write_all_at(a.as_slice(), offset),
                _ => Err(std::io::Error::from_raw_os_error(libc::EINVAL)),
            }
        };
        match res {
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                // Reopen without O_DIRECT and carry on buffered.
                *file = OpenOptions::new().read(true).write(true).open(partial(path))?;
                *direct = false;
            }
            other => return other,
        }
    }
    file.write_all_at(bytes, offset)
}
