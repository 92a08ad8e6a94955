//! Writer: frames from the frame ring to a `.npy` or `.h5` file (uncompressed or bitshuffle-LZ4) on a local disk,
//! beside plain `O_DIRECT` writes of the same bytes to the same file system.
//!
//! The writer is the real one (`writer::Writer`, `O_DIRECT`, journal, sidecar, fsync, rename) on a real pipeline
//! region; this process plays the assembler, publishing already-decoded frames as fast as the writer frees
//! slots, so that the figure is the writer's and the disk's, not the ingest path's.

use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use assembler::acquisition::{self, Assignment};
use detector::k2;
use detector::pattern::Pattern;
use shm_protocol::pipeline::{
    self, AcquisitionState, Compression, FRAME_COMPLETE, FRAME_PIXELS_OFFSET, FRAME_RING, FrameHeader,
    MAX_BLOCKS_PER_FRAME, PipelineSizes, SyncMode,
};

/// Seconds the writer took for `frames` IS frames into a `.npy` file in `dir`: from the first frame published to
/// the acquisition DONE (file synced, sidecar written, renamed).
pub fn writer_seconds(dir: &Path, frames: u64) -> anyhow::Result<f64> {
    Ok(writer_run(dir, frames, "writer.npy", Compression::None, &Pattern::Counting)?.secs)
}

/// One run of the writer.
#[derive(Debug, Clone, Copy)]
pub struct WriterRun {
    /// From the first frame published to the acquisition DONE.
    pub secs: f64,
    /// Bytes of compressed chunks written (0 without compression).
    pub compressed_bytes: u64,
    /// CPU seconds spent compressing, all compression threads.
    pub compress_cpu_s: f64,
    /// CPU seconds of this whole process over the run (the writer's threads and the publishing loop).
    pub process_cpu_s: f64,
}

/// The writer writing `frames` IS frames of `pattern` (the frame ring's slots hold different frames) into
/// `dir/name` with `compression`.
pub fn writer_run(
    dir: &Path,
    frames: u64,
    name: &str,
    compression: Compression,
    pattern: &Pattern,
) -> anyhow::Result<WriterRun> {
    let rings = supervisor::config::Config::default().rings;
    let sizes = PipelineSizes {
        geometry: supervisor::geometry::region_geometry(k2::IS),
        block_slots: 2,
        datagrams_per_slot: rings.datagrams_per_slot,
        frame_slots: rings.frame_slots,
        frame_cursors: rings.frame_cursors,
        fill_value: rings.fill_value,
        invalid_reasons: k2::IS.invalid_reasons(),
        placement: Default::default(),
    };
    let region = sizes.create_region()?;
    let area = pipeline::pipeline_area(&region)?;
    let g = k2::IS_GEOMETRY;
    let ring = region.ring(FRAME_RING)?;
    let mut producer = ring.producer()?;
    // Every slot holds a real frame's pixels once; the header is what changes from frame to frame.
    for seq in 0..u64::from(sizes.frame_slots) {
        let pixels = pattern.frame(&*k2::IS, 7 + seq as u32 * 997);
        let p = ring.slot_ptr(seq);
        // SAFETY: nothing reads the ring yet (no frame is published); the slot holds FRAME_PIXELS_OFFSET +
        // frame_bytes bytes (the spec above), and `pixels` is frame_pixels u16.
        unsafe {
            std::ptr::copy_nonoverlapping(pixels.as_ptr().cast::<u8>(), p.add(FRAME_PIXELS_OFFSET), g.frame_bytes())
        };
    }
    let path = dir.join(name);
    let id = 1;
    let rec = area.acquisition(id);
    // SAFETY: this process is the only "supervisor" of this region, and the record has never been used.
    unsafe { rec.arm(id, frames, SyncMode::Immediate, compression, &path.to_string_lossy(), 0) };
    area.active_acquisition.store(id, Ordering::Release);

    let stop = AtomicBool::new(false);
    let cpu0 = crate::procfs::self_cpu_s();
    let secs = std::thread::scope(|s| -> anyhow::Result<f64> {
        let w = s.spawn(|| -> anyhow::Result<()> {
            let mut w = writer::Writer::new(&region, writer::WriterConfig::default())?;
            w.run(|| stop.load(Ordering::Relaxed))?;
            Ok(())
        });
        let t = Instant::now();
        let res = (|| -> anyhow::Result<f64> {
            for index in 0..frames {
                let mut slot = producer.claim(Some(Duration::from_secs(30))).context("the writer stalled")?;
                let seq = slot.seq();
                let header = FrameHeader {
                    seq,
                    acquisition_id: id,
                    index,
                    frame_id: index as u32,
                    status: FRAME_COMPLETE,
                    blocks_expected: g.blocks_per_frame() as u32,
                    blocks_received: g.blocks_per_frame() as u32,
                    flags: 0,
                    _reserved: 0,
                    first_block_ns: pipeline::now_ns(),
                    last_block_ns: pipeline::now_ns(),
                    published_ns: pipeline::now_ns(),
                    bitmap: [u64::MAX; MAX_BLOCKS_PER_FRAME / 64],
                };
                // SAFETY: the claimed slot is ours until published and begins with a FrameHeader-sized area.
                unsafe { slot.as_mut_ptr().cast::<FrameHeader>().write(header) };
                slot.publish();
                acquisition::record(area, Assignment { id, index }, seq, index as u32, true);
            }
            loop {
                match rec.state() {
                    AcquisitionState::Done => return Ok(t.elapsed().as_secs_f64()),
                    AcquisitionState::Failed => anyhow::bail!("the writer failed: {}", rec.error()),
                    _ if t.elapsed() > Duration::from_secs(300) => anyhow::bail!("the writer did not finish"),
                    _ => std::thread::sleep(Duration::from_micros(200)),
                }
            }
        })();
        stop.store(true, Ordering::Relaxed);
        w.join().map_err(|_| anyhow::anyhow!("writer thread panicked"))??;
        res
    })?;
    let cpu1 = crate::procfs::self_cpu_s();
    let _ = std::fs::remove_file(&path);
    let _ = std::fs::remove_file(writer::sidecar_path(&path));
    let w = &area.writer;
    Ok(WriterRun {
        secs,
        compressed_bytes: w.compressed_bytes.load(Ordering::Relaxed),
        compress_cpu_s: w.compress_cpu_ns.load(Ordering::Relaxed) as f64 / 1e9,
        process_cpu_s: cpu1 - cpu0,
    })
}

/// Seconds for `frames` page-aligned, frame-sized `O_DIRECT` writes to a new file in `dir`, then `fsync`.
pub fn odirect_seconds(dir: &Path, frames: u64, frame_bytes: usize) -> anyhow::Result<f64> {
    let path = dir.join("odirect.bin");
    let layout = std::alloc::Layout::from_size_align(frame_bytes, 4096)?;
    // SAFETY: non-zero size; freed below with the same layout.
    let buf = unsafe { std::alloc::alloc_zeroed(layout) };
    anyhow::ensure!(!buf.is_null(), "allocation failed");
    // SAFETY: buf holds frame_bytes initialised (zeroed) bytes until dealloc below.
    let slice = unsafe { std::slice::from_raw_parts(buf, frame_bytes) };
    let res = (|| -> anyhow::Result<f64> {
        let t = Instant::now();
        let f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .custom_flags(libc::O_DIRECT)
            .open(&path)
            .with_context(|| format!("O_DIRECT on {}", path.display()))?;
        for i in 0..frames {
            std::os::unix::fs::FileExt::write_all_at(&f, slice, i * frame_bytes as u64)?;
        }
        f.sync_all()?;
        Ok(t.elapsed().as_secs_f64())
    })();
    // SAFETY: allocated above with this layout.
    unsafe { std::alloc::dealloc(buf, layout) };
    let _ = std::fs::remove_file(&path);
    res
}
