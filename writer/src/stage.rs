//! The stage loop: frames of the armed acquisition from the frame ring → the acquisition's [`Output`].
//!
//! The loop knows acquisitions (records in the region) and frames, not file formats. A write error fails the
//! acquisition, not the pipeline.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::Duration;

use shm_protocol::pipeline::{
    self, AcquisitionRecord, AcquisitionState, CONTINUOUS, EndReason, FRAME_PIXELS_OFFSET, FRAME_RING, FrameHeader,
    NO_INDEX, PipelineArea, Stage, WRITER_CURSOR,
};
use shm_protocol::{Consumer, ReadSlot, Region, RingError};

use crate::format::{FormatError, FrameShape, Plan};
use crate::output::Output;
use crate::sidecar::{FrameMeta, Sidecar};
use crate::{WriterConfig, WriterError};

/// The one place that reads a frame-ring slot: the frame's header (written before the frame was published,
/// at the start of the slot) and its `frame_bytes` of pixels. `None` if the slot is not stable (the writer's
/// cursor gates the ring, so it always is) or smaller than a frame (the region was checked at attach).
fn read_slot<'s>(slot: &'s ReadSlot<'_>, frame_bytes: usize) -> Option<(FrameHeader, &'s [u8])> {
    let bytes = slot.bytes()?;
    let h: FrameHeader = bytemuck::pod_read_unaligned(bytes.get(..size_of::<FrameHeader>())?);
    Some((h, bytes.get(FRAME_PIXELS_OFFSET..FRAME_PIXELS_OFFSET + frame_bytes)?))
}

/// A continuous acquisition's file grows by this many bytes of frames at a time (at least one frame): at
/// 2.7 GB/s (a K2 IS) a `fallocate` every 0.4 s, and at most 1 GiB reserved beyond the last frame.
pub const GROW_BYTES: u64 = 1 << 30;

/// An acquisition whose output is open.
struct OpenAcquisition {
    id: u64,
    out: Output,
    /// It runs until stopped: its file grows in steps of `grow_frames`.
    continuous: bool,
    /// The output's compression statistics last added to the writer's counters.
    counted: (u64, u64),
}

/// Whether every frame of `rec` has passed the writer's cursor `committed`: all are assigned (the count is final)
/// and the cursor is past the last (an acquisition's frames are consecutive in the frame ring; a count of writes
/// would be fooled by a frame rewritten after a restart).
fn all_passed(rec: &AcquisitionRecord, committed: u64) -> bool {
    let (first, n) = (rec.first_seq.load(Ordering::Acquire), rec.assigned.load(Ordering::Acquire));
    rec.state() == AcquisitionState::Assigned && (n == 0 || committed >= first.saturating_add(n))
}

/// Why a format error ends an acquisition: a full disk, or another write error.
fn end_reason_of(e: &FormatError) -> EndReason {
    match e {
        FormatError::NoSpace { .. } => EndReason::DiskFull,
        // std classifies ENOSPC as StorageFull.
        FormatError::Io { source, .. } if source.kind() == std::io::ErrorKind::StorageFull => EndReason::DiskFull,
        _ => EndReason::WriteError,
    }
}

/// The write loop over one region.
pub struct Writer<'r> {
    /// The frame ring's writer cursor. Apart from the rest, so that a slot being read (which borrows it) and the
    /// files being written can be used at once.
    frames: Consumer<'r>,
    files: Files<'r>,
}

/// What the writer writes to: the acquisitions' records and the open output.
struct Files<'r> {
    area: &'r PipelineArea,
    cfg: WriterConfig,
    shape: FrameShape,
    /// The detector mode (the region's geometry), for formats that record it.
    mode: u32,
    frame_bytes: usize,
    /// Where the frames lie in the whole detector's frame (recorded in every sidecar, and from it in the
    /// formats' metadata).
    placement: shm_protocol::pipeline::Placement,
    open: Option<OpenAcquisition>,
    /// The live-only acquisition (no output path) whose frames are passing: counted, not written.
    live: Option<u64>,
}

impl<'r> Writer<'r> {
    /// Attaches to the frame ring's writer cursor.
    pub fn new(region: &'r Region, cfg: WriterConfig) -> Result<Self, WriterError> {
        let area = pipeline::pipeline_area(region)?;
        let g = region.header().geometry;
        let frames = region.ring(FRAME_RING)?.consumer(WRITER_CURSOR)?;
        let shape = FrameShape { rows: g.frame_rows.into(), cols: g.frame_cols.into() };
        let placement = area.placement.or_whole(shape.rows, shape.cols);
        let frame_bytes = shape.frame_bytes() as usize;
        let files = Files { area, cfg, shape, mode: g.mode, frame_bytes, placement, open: None, live: None };
        Ok(Self { frames, files })
    }

    /// Runs until `should_stop` returns true, then writes what is left and exits.
    pub fn run(&mut self, mut should_stop: impl FnMut() -> bool) -> Result<(), WriterError> {
        let area = self.files.area;
        // Who runs the stage, for `ringdaq inspect` (the supervisor clears it when this process dies).
        area.stage(Stage::Writer).pid.store(std::process::id(), Ordering::Release);
        let r = loop {
            if should_stop() {
                break self.drain();
            }
            // Frames wake the writer at once; the timeout only paces commands and housekeeping when idle.
            match self.frames.next(Some(self.files.idle_pace())) {
                Ok(slot) => {
                    let seq = slot.seq();
                    self.files.handle(&slot);
                    self.commit(seq);
                }
                // Beating while idle keeps the allocation totals in the stage record current.
                Err(RingError::Timeout) => area.stage(Stage::Writer).beat(),
                Err(e) => break Err(e.into()),
            }
            self.files.housekeeping(self.frames.committed());
        };
        area.stage(Stage::Writer).pid.store(0, Ordering::Release);
        r
    }

    /// Writes every frame already published and finishes what can be finished.
    pub fn drain(&mut self) -> Result<(), WriterError> {
        while let Some(slot) = self.frames.try_next()? {
            let seq = slot.seq();
            self.files.handle(&slot);
            self.commit(seq);
        }
        self.files.housekeeping(self.frames.committed());
        Ok(())
    }

    /// Commits frame `seq` (written, or not the writer's), then finishes what that completes.
    fn commit(&mut self, seq: u64) {
        self.frames.commit(seq + 1);
        self.files.area.stage(Stage::Writer).beat();
        self.files.housekeeping(self.frames.committed());
    }
}

impl Files<'_> {
    /// How long the writer waits for a frame before it looks at its acquisitions again. While one is in progress,
    /// 10 ms: the assembler records an acquisition's end (its last frame assigned, or a stop) just after
    /// publishing a frame, often after the writer has taken that frame and gone back to waiting, and at the idle
    /// pace of 250 ms a live-only acquisition was seen done 267 ms after its last frame.
    fn idle_pace(&self) -> Duration {
        if self.live.is_some() || self.open.is_some() { Duration::from_millis(10) } else { Duration::from_millis(250) }
    }

    /// Writes one frame if it belongs to an acquisition.
    fn handle(&mut self, slot: &ReadSlot<'_>) {
        match read_slot(slot, self.frame_bytes) {
            Some((h, pixels)) if h.acquisition_id != 0 && h.index != NO_INDEX => self.write_frame(&h, pixels),
            Some(_) => {}
            None => tracing::error!(seq = slot.seq(), "frame slot unreadable; skipped"),
        }
    }

    fn write_frame(&mut self, h: &FrameHeader, pixels: &[u8]) {
        let rec = self.area.acquisition(h.acquisition_id);
        if rec.id.load(Ordering::Acquire) != h.acquisition_id {
            return; // the record was reused: an acquisition long gone
        }
        if rec.state() == AcquisitionState::Failed {
            return;
        }
        if rec.is_live_only() {
            self.pass_live(rec, h);
            return;
        }
        if self.open.as_ref().is_none_or(|o| o.id != h.acquisition_id) {
            self.finish_open();
            if let Err(e) = self.open_acquisition(rec) {
                self.fail(rec, end_reason_of(&e), &e.to_string());
                return;
            }
        }
        let grow_to = self.grow_cover(h.index + 1);
        let Some(open) = self.open.as_mut() else {
            return;
        };
        if h.index >= open.out.requested() {
            if !open.continuous {
                return;
            }
            // The next step of a continuous acquisition's file.
            if let Err(e) = open.out.grow(grow_to) {
                self.area.writer.errors.fetch_add(1, Ordering::Relaxed);
                self.fail(rec, end_reason_of(&e), &e.to_string());
                return;
            }
            tracing::debug!(acquisition = h.acquisition_id, frames = grow_to, "file grown");
        }
        let meta = FrameMeta {
            index: h.index,
            frame_id: h.frame_id,
            complete: h.is_complete(),
            missing_blocks: h.blocks_expected.saturating_sub(h.blocks_received),
            first_block_ns: h.first_block_ns,
            last_block_ns: h.last_block_ns,
            published_ns: h.published_ns,
        };
        let written = open.out.write(&meta, pixels);
        // Compression CPU time and output, counted as they come (a restarted writer counts its own).
        let (cpu, bytes) = open.out.compression_stats();
        let w = &self.area.writer;
        w.compress_cpu_ns.fetch_add(cpu.saturating_sub(open.counted.0), Ordering::Relaxed);
        w.compressed_bytes.fetch_add(bytes.saturating_sub(open.counted.1), Ordering::Relaxed);
        open.counted = (cpu, bytes);
        match written {
            Ok(()) => {
                // The highest index written, + 1: idempotent, so a frame rewritten after a restart counts once.
                rec.written.fetch_max(h.index + 1, Ordering::Release);
                self.area.writer.frames.fetch_add(1, Ordering::Relaxed);
                self.area.writer.bytes.fetch_add(pixels.len() as u64, Ordering::Relaxed);
            }
            Err(e) => {
                self.area.writer.errors.fetch_add(1, Ordering::Relaxed);
                self.fail(rec, end_reason_of(&e), &e.to_string());
            }
        }
    }

    /// A frame of a live-only acquisition: counted as passed (`written`), nothing written.
    fn pass_live(&mut self, rec: &AcquisitionRecord, h: &FrameHeader) {
        if self.live != Some(h.acquisition_id) {
            self.finish_open();
            self.finish_live();
            self.live = Some(h.acquisition_id);
            shm_protocol::logging::set_acquisition(h.acquisition_id);
            tracing::info!(acquisition = h.acquisition_id, "live-only acquisition: frames pass, nothing is written");
        }
        let requested = rec.frames.load(Ordering::Acquire);
        if requested == CONTINUOUS || h.index < requested {
            rec.written.fetch_max(h.index + 1, Ordering::Release);
        }
    }

    /// Ends the live-only acquisition whose frames were passing: complete if every frame came, else as recorded
    /// by whoever ended it.
    fn finish_live(&mut self) {
        if let Some(id) = self.live.take() {
            self.end_live(id);
        }
    }

    /// Ends live-only acquisition `id` (see [`Files::finish_live`]).
    fn end_live(&self, id: u64) {
        let rec = self.area.acquisition(id);
        if rec.id.load(Ordering::Acquire) != id || rec.state().is_over() {
            return;
        }
        let requested = rec.frames.load(Ordering::Acquire);
        let n = rec.assigned.load(Ordering::Acquire);
        if requested != CONTINUOUS && n >= requested {
            rec.settle_complete();
        } else {
            rec.claim_end(EndReason::Stopped, &format!("ended after {n} frames"));
        }
        rec.set_state(AcquisitionState::Done);
        self.area.writer.done.fetch_add(1, Ordering::Relaxed);
        tracing::info!(acquisition = id, frames = n, "live-only acquisition done");
    }

    /// Frames a continuous acquisition's file has room for once it holds `frames`: whole steps of
    /// [`GROW_BYTES`].
    fn grow_cover(&self, frames: u64) -> u64 {
        let step = (GROW_BYTES / self.frame_bytes.max(1) as u64).max(1);
        frames.max(1).div_ceil(step).saturating_mul(step)
    }

    /// Creates and preallocates the output of acquisition `rec`, or, after a restart, reopens the files the
    /// previous writer left.
    fn open_acquisition(&mut self, rec: &AcquisitionRecord) -> Result<(), FormatError> {
        let id = rec.id.load(Ordering::Acquire);
        shm_protocol::logging::set_acquisition(id);
        let path = PathBuf::from(rec.path());
        let requested = rec.frames.load(Ordering::Acquire);
        let continuous = requested == CONTINUOUS;
        let resume = Output::can_resume(&path) && rec.first_seq.load(Ordering::Acquire) != u64::MAX;
        // A continuous acquisition's file starts with one step, or, reopened after a restart, the steps that hold
        // the frames written so far (the next frame grows it again).
        let planned = if continuous { self.grow_cover(rec.written.load(Ordering::Acquire)) } else { requested };
        let plan =
            Plan { shape: self.shape, frames: planned, direct_io: self.cfg.direct_io, compression: rec.compression() };
        let out = Output::open(&path, &plan, resume)?;
        if resume {
            tracing::info!(acquisition = id, path = %path.display(), "file reopened after a restart");
        } else {
            // The sidecar's counters are the acquisition's own: differences from here.
            if let Err(e) = crate::baseline::save(&path, &self.area.counters()) {
                tracing::warn!(error = %e, "recording the counters at the start; the sidecar will show totals");
            }
            tracing::info!(acquisition = id, path = %path.display(), frames = requested, direct = out.is_direct(), "file opened");
        }
        self.open = Some(OpenAcquisition { id, out, continuous, counted: (0, 0) });
        Ok(())
    }

    fn fail(&mut self, rec: &AcquisitionRecord, reason: EndReason, msg: &str) {
        let open = self.open.take_if(|o| o.id == rec.id.load(Ordering::Relaxed));
        self.fail_open(rec, reason, msg, open);
    }

    /// Fails acquisition `rec` (for `reason`, unless another was recorded first); its file, if `open`, keeps the
    /// frames written so far under a header that says how many.
    fn fail_open(&mut self, rec: &AcquisitionRecord, reason: EndReason, msg: &str, open: Option<OpenAcquisition>) {
        let mut msg = msg.to_owned();
        if let Some(mut o) = open {
            // Keep what was written, with a header that says how much: the frames so far stay readable.
            let n = rec.written.load(Ordering::Acquire);
            msg = format!("{msg}; {}", o.out.keep(n));
            crate::baseline::remove(o.out.path());
        }
        tracing::error!(acquisition = rec.id.load(Ordering::Relaxed), error = msg, "acquisition failed");
        if !rec.claim_end(reason, &msg) {
            // Every frame came (complete), but the file failed: an ending that says "complete" would mislead.
            rec.overrule_complete(reason);
        }
        // SAFETY: the writer is the only process that writes an acquisition's error.
        unsafe { rec.fail(&msg) };
        self.area.writer.failed.fetch_add(1, Ordering::Relaxed);
    }

    /// Finishes the open acquisition if all its frames are written (`committed`: the writer's cursor), and
    /// acquisitions that got no frame at all.
    fn housekeeping(&mut self, committed: u64) {
        if let Some(id) = self.live {
            let rec = self.area.acquisition(id);
            if rec.id.load(Ordering::Acquire) != id || all_passed(rec, committed) {
                self.finish_live();
            }
        }
        if let Some(o) = &self.open
            && all_passed(self.area.acquisition(o.id), committed)
        {
            self.finish_open();
        }
        for rec in &self.area.acquisitions {
            let id = rec.id.load(Ordering::Acquire);
            // A live-only acquisition whose last frame passed before a restart of this stage: the new process
            // sees no frame of it, and ends it here.
            if id != 0
                && self.live != Some(id)
                && rec.is_live_only()
                && rec.assigned.load(Ordering::Acquire) > 0
                && all_passed(rec, committed)
            {
                self.end_live(id);
            }
            if id != 0
                && rec.state() == AcquisitionState::Assigned
                && rec.assigned.load(Ordering::Acquire) == 0
                && self.open.as_ref().is_none_or(|o| o.id != id)
            {
                self.finish_empty(rec);
            }
        }
    }

    /// An acquisition that ended before its first frame (stopped, or the pipeline shut down): there is nothing to
    /// keep, so it leaves no file at all, neither data nor sidecar (its record says it got 0 frames), and
    /// temporary files a killed writer may have left for it are removed.
    fn finish_empty(&mut self, rec: &AcquisitionRecord) {
        let path = PathBuf::from(rec.path());
        for tmp in crate::temp_files(&path).unwrap_or_default() {
            let _ = std::fs::remove_file(tmp);
        }
        // Whoever ended it recorded why first (a user's stop, the shutdown, an idle stream); this only covers a
        // foreign stage, as `ending` does.
        rec.claim_end(EndReason::Stopped, "ended after 0 frames");
        rec.set_state(AcquisitionState::Done);
        self.area.writer.done.fetch_add(1, Ordering::Relaxed);
        tracing::info!(acquisition = rec.id.load(Ordering::Relaxed), path = %path.display(), "acquisition ended before its first frame: no file written");
    }

    /// Fixes the file, writes the sidecar, syncs and renames; marks the acquisition DONE (or FAILED).
    fn finish_open(&mut self) {
        let Some(mut o) = self.open.take() else {
            return;
        };
        let rec = self.area.acquisition(o.id);
        match self.finalize(&mut o, rec) {
            Ok(()) => {
                rec.set_state(AcquisitionState::Done);
                self.area.writer.done.fetch_add(1, Ordering::Relaxed);
                tracing::info!(acquisition = o.id, path = %o.out.path().display(), "acquisition done");
            }
            Err(e) => self.fail_open(rec, end_reason_of(&e), &e.to_string(), Some(o)),
        }
    }

    /// How acquisition `rec`, finished with `n` frames, ended, and in words (recorded in the region first, by
    /// whoever ended it; a fixed-count acquisition with all its frames is complete whatever came meanwhile).
    fn ending(&self, o: &OpenAcquisition, rec: &AcquisitionRecord, n: u64) -> (EndReason, Option<String>) {
        if !o.continuous && n >= o.out.requested() {
            rec.settle_complete();
            return (EndReason::Complete, None);
        }
        // Every path that ends an acquisition early records why first; this only covers a foreign stage.
        let ended = format!("ended after {n} frames");
        rec.claim_end(EndReason::Stopped, &ended);
        let reason = rec.end_reason().unwrap_or(EndReason::Stopped);
        let text = Some(rec.reason()).filter(|t| !t.is_empty()).unwrap_or(ended);
        (reason, (reason != EndReason::Complete).then_some(text))
    }

    fn finalize(&self, o: &mut OpenAcquisition, rec: &AcquisitionRecord) -> Result<(), FormatError> {
        let planned = o.out.requested();
        let n = rec.assigned.load(Ordering::Acquire).min(planned);
        let (ended, reason) = self.ending(o, rec, n);
        let (id, shape, continuous) = (o.id, self.shape, o.continuous);
        let requested = if continuous { n } else { planned };
        let o_path = o.out.path().to_owned();
        let path = o_path.display().to_string();
        o.out.finish(n, self.mode, |frame_list| {
            let complete = frame_list.iter().filter(|m| m.complete).count() as u64;
            Sidecar {
                version: 1,
                acquisition_id: id,
                path,
                frames_requested: requested,
                continuous,
                ended: Some(ended),
                reason,
                frames: n,
                complete_frames: complete,
                incomplete_frames: n - complete.min(n),
                shape: [n, shape.rows, shape.cols],
                dtype: "uint16".into(),
                fill_value: self.area.params.fill_value,
                placement: Some((&self.placement).into()),
                counters: crate::baseline::since_start(&o_path, self.area.counters()),
                frame_list,
            }
        })?;
        crate::baseline::remove(&o_path);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_disk_is_told_from_other_write_errors() {
        let path = PathBuf::from("/d/run.npy.partial");
        let no_space = FormatError::NoSpace { frames: 3, bytes: 3 << 20, path: path.clone() };
        assert_eq!(end_reason_of(&no_space), EndReason::DiskFull);
        let enospc = FormatError::io("writing frame 7", std::io::Error::from_raw_os_error(libc::ENOSPC));
        assert_eq!(end_reason_of(&enospc), EndReason::DiskFull);
        // libhdf5's full disk, in words (see format::hdf5).
        let hdf5 = FormatError::io("finishing", std::io::Error::new(std::io::ErrorKind::StorageFull, "errno = 28"));
        assert_eq!(end_reason_of(&hdf5), EndReason::DiskFull);
        let eio = FormatError::io("writing frame 7", std::io::Error::from_raw_os_error(libc::EIO));
        assert_eq!(end_reason_of(&eio), EndReason::WriteError);
        assert_eq!(end_reason_of(&FormatError::Invalid { path, why: "x".into() }), EndReason::WriteError);
    }
}
