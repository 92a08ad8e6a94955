//! Writing a recording: whole frames to the eight sector files, then the `.gtg` tag file.

use std::fs::File;
use std::io::{BufWriter, Write};

use super::collect::Frame;
use super::dm4::{self, Tag, Value};
use super::{GatanError, Paths, fill_payload, io, lead_in, placeholder, set_sync_flag};
use crate::k2::geometry::{Geometry, HEADER_BYTES};

/// A gap of at most this many frame ids between two frames is filled with placeholder frames (a scan's positions
/// stay right); a longer jump is the camera starting over, not a loss.
pub const MAX_GAP: u32 = 64;

/// What the recorder was asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// The scan, `(width, height)`: written into the `.gtg` as `SI Dimensions`.
    pub scan: Option<(u32, u32)>,
    /// The pixel value of placeholder blocks (the pipeline's fill value, so that a reader sees what the
    /// pipeline's own files hold for a missing block).
    pub fill: u16,
    /// Free-form tags added under the `.gtg`'s `ringdaq` group (detector, version, ...).
    pub info: Vec<(String, String)>,
}

/// What a recording holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    /// Frames written (placeholder frames included).
    pub frames: u64,
    /// Placeholder blocks written (blocks that did not arrive).
    pub placeholder_blocks: u64,
    /// Frames with at least one placeholder block.
    pub incomplete_frames: u64,
    /// Frames written wholly as placeholders (frame ids missing between two recorded frames).
    pub placeholder_frames: u64,
}

/// An open recording.
#[derive(Debug)]
pub struct Writer {
    g: Geometry,
    paths: Paths,
    files: Vec<BufWriter<File>>,
    opts: Options,
    fill: Vec<u8>,
    /// The last frame written: its id and the `block_count` of its sectors' first blocks.
    last: Option<(u32, u32)>,
    summary: Summary,
}

impl Writer {
    /// Creates the eight sector files (never over an existing file) and the `.gtg`.
    pub fn create(paths: Paths, g: Geometry, opts: Options) -> Result<Self, GatanError> {
        let mut files = Vec::with_capacity(paths.bins.len());
        for p in &paths.bins {
            let f = File::options().write(true).create_new(true).open(p).map_err(io("creating", p))?;
            // A frame's sector, 715 kB (IS) or 3.9 MB (Summit), is written in one piece, past a buffer this
            // size; the buffer gathers the small writes of placeholder frames.
            files.push(BufWriter::with_capacity(256 << 10, f));
        }
        let fill = fill_payload(&g, opts.fill);
        let w = Self { g, paths, files, opts, fill, last: None, summary: Summary::default() };
        w.write_tags()?;
        Ok(w)
    }

    /// The files.
    pub fn paths(&self) -> &Paths {
        &self.paths
    }

    /// What was written so far.
    pub fn summary(&self) -> Summary {
        self.summary
    }

    /// Writes `frame` whole, placeholders for the blocks that did not arrive, after placeholder frames for a
    /// short gap in frame ids since the last frame (at most `limit` frames in all are written; returns how many).
    pub fn write_frame(&mut self, frame: &mut Frame, limit: u64) -> Result<u64, GatanError> {
        let per = self.g.blocks_per_sector() as u32;
        let before = self.summary.frames;
        let base = match (frame.base_count(), self.last) {
            (Some(b), _) => b,
            // A frame holds at least one block, so this is only for completeness: continue the count.
            (None, Some((id, b))) => b.wrapping_add(per.wrapping_mul(frame.id().wrapping_sub(id))),
            (None, None) => 0,
        };
        if let Some((id, last_base)) = self.last {
            let gap = frame.id().wrapping_sub(id).wrapping_sub(1);
            if (1..=MAX_GAP).contains(&gap) {
                for j in 1..=gap {
                    if self.summary.frames >= limit {
                        return Ok(self.summary.frames - before);
                    }
                    let count = last_base.wrapping_add(per.wrapping_mul(j));
                    self.write_placeholder_frame(id.wrapping_add(j), count)?;
                    self.summary.placeholder_frames += 1;
                }
            }
        }
        if self.summary.frames >= limit {
            return Ok(self.summary.frames - before);
        }
        self.write_collected(frame, base)?;
        Ok(self.summary.frames - before)
    }

    /// Writes a collected frame: flags and placeholders are set in its buffer, then each sector goes out in one
    /// write (no copy on the way: the recorder must keep up with 2.3 GB/s from an IS camera).
    fn write_collected(&mut self, frame: &mut Frame, base: u32) -> Result<(), GatanError> {
        let per = self.g.blocks_per_sector();
        let frame_id = frame.id();
        self.lead_in_if_first(frame_id, base)?;
        let mut missing = 0u64;
        for i in 0..self.g.blocks_per_frame() {
            let arrived = frame.block(i).is_some();
            let b = frame.slot_mut(i);
            if arrived {
                if let Some(h) = b.first_chunk_mut::<HEADER_BYTES>() {
                    set_sync_flag(h, true);
                }
            } else {
                missing += 1;
                b[..HEADER_BYTES].copy_from_slice(&placeholder(&self.g, frame_id, base, i % per, true));
                b[HEADER_BYTES..].copy_from_slice(&self.fill);
            }
        }
        for (s, f) in self.files.iter_mut().enumerate() {
            f.write_all(frame.blocks_bytes(s * per..(s + 1) * per)).map_err(io("writing", &self.paths.bins[s]))?;
        }
        self.count(frame_id, base, missing);
        Ok(())
    }

    /// Before a scan's first frame: the lead-in block (see the module's documentation).
    fn lead_in_if_first(&mut self, frame_id: u32, base: u32) -> Result<(), GatanError> {
        if self.summary.frames == 0 && self.opts.scan.is_some() {
            let p = &self.paths.bins[0];
            self.files[0].write_all(&lead_in(&self.g, frame_id, base)).map_err(io("writing", p))?;
            self.files[0].write_all(&self.fill).map_err(io("writing", p))?;
        }
        Ok(())
    }

    /// Counts a frame written with `missing` placeholder blocks.
    fn count(&mut self, frame_id: u32, base: u32, missing: u64) {
        self.summary.frames += 1;
        self.summary.placeholder_blocks += missing;
        self.summary.incomplete_frames += u64::from(missing > 0);
        self.last = Some((frame_id, base));
    }

    /// Writes a frame none of whose blocks arrived (a short gap in frame ids).
    fn write_placeholder_frame(&mut self, frame_id: u32, base: u32) -> Result<(), GatanError> {
        let per = self.g.blocks_per_sector();
        self.lead_in_if_first(frame_id, base)?;
        for (s, f) in self.files.iter_mut().enumerate() {
            let path = &self.paths.bins[s];
            for k in 0..per {
                f.write_all(&placeholder(&self.g, frame_id, base, k, true)).map_err(io("writing", path))?;
                f.write_all(&self.fill).map_err(io("writing", path))?;
            }
        }
        self.count(frame_id, base, self.g.blocks_per_frame() as u64);
        Ok(())
    }

    /// The `.gtg`'s tags: the scan (if any) and what ringdaq recorded.
    fn tags(&self) -> Vec<Tag> {
        let s = self.summary;
        let mut ours = vec![
            Tag::new("Frames", Value::U32(s.frames.min(u64::from(u32::MAX)) as u32)),
            Tag::new("Placeholder blocks", Value::U32(s.placeholder_blocks.min(u64::from(u32::MAX)) as u32)),
            Tag::new("Placeholder mark", Value::Text(String::from_utf8_lossy(&super::PLACEHOLDER_MARK).into())),
            Tag::new("Fill value", Value::U32(u32::from(self.opts.fill & self.g.pixel_mask()))),
            Tag::new("Block size", Value::U32(self.g.block_bytes() as u32)),
        ];
        for (k, v) in &self.opts.info {
            ours.push(Tag::new(k, Value::Text(v.clone())));
        }
        let mut root = Vec::new();
        if let Some((w, h)) = self.opts.scan {
            root.push(Tag::group(
                "SI Dimensions",
                vec![Tag::new("Size X", Value::I32(w as i32)), Tag::new("Size Y", Value::I32(h as i32))],
            ));
        }
        root.push(Tag::group("ringdaq", ours));
        root
    }

    /// Writes the `.gtg` through a temporary file and a rename (a reader never sees half of it).
    fn write_tags(&self) -> Result<(), GatanError> {
        let gtg = &self.paths.gtg;
        let tmp = gtg.with_extension("gtg.partial");
        let mut f = File::create(&tmp).map_err(io("creating", &tmp))?;
        f.write_all(&dm4::encode(&self.tags())).map_err(io("writing", &tmp))?;
        f.sync_all().map_err(io("syncing", &tmp))?;
        std::fs::rename(&tmp, gtg).map_err(io("renaming into", gtg))
    }

    /// Flushes and syncs the sector files and writes the final `.gtg`.
    pub fn finish(mut self) -> Result<Summary, GatanError> {
        for (f, p) in self.files.iter_mut().zip(&self.paths.bins) {
            f.flush().map_err(io("writing", p))?;
            f.get_ref().sync_all().map_err(io("syncing", p))?;
        }
        self.write_tags()?;
        if let Some(dir) = self.paths.gtg.parent()
            && let Ok(d) = File::open(if dir.as_os_str().is_empty() { std::path::Path::new(".") } else { dir })
        {
            // The renames and new names last only once the directory is synced.
            let _ = d.sync_all();
        }
        Ok(self.summary)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::BlockMeta;
    use crate::k2::gatan::collect::Collector;
    use crate::k2::gatan::read::Reader;
    use crate::k2::{IS, IS_GEOMETRY};
    use crate::pattern::expected_frame;

    /// Sends frames `ids` (sequence numbers from 0) through a collector into a writer, dropping the blocks in
    /// `drop` (frame index, block index); returns the summary.
    fn record(paths: Paths, scan: Option<(u32, u32)>, ids: &[u32], drop: &[(usize, usize)]) -> Summary {
        let g = IS_GEOMETRY;
        let mut w = Writer::create(paths, g, Options { scan, fill: 7, info: vec![] }).expect("create");
        let mut c = Collector::new(g, 2);
        let mut d = vec![0u8; g.block_bytes()];
        for (n, &id) in ids.iter().enumerate() {
            let frame = expected_frame(&*IS, id);
            for i in 0..g.blocks_per_frame() {
                let block = IS.send_order(i);
                if drop.contains(&(n, block)) {
                    continue;
                }
                let meta = BlockMeta { frame_id: id, block, frame_seq: n as u64, sync: false };
                IS.encode_datagram(&meta, &frame, &mut d).expect("encode");
                c.push(IS.stream_of(block), &d);
                while let Some(mut f) = c.pop() {
                    w.write_frame(&mut f, u64::MAX).expect("write");
                    c.recycle(f);
                }
            }
        }
        while let Some(mut f) = c.give_up() {
            w.write_frame(&mut f, u64::MAX).expect("write");
        }
        w.finish().expect("finish")
    }

    fn python(script: &str, args: &[&std::path::Path]) -> String {
        let out = std::process::Command::new("python3").arg("-c").arg(script).args(args).output().expect("python3");
        assert!(out.status.success(), "python failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// LiberTEM's `K2ISDataSet` (0.16) opens a recording, as a 4×4 scan, and its frames are the frames sent, a
    /// missing block at the fill value; ringdaq's reader gives back every block, placeholders marked.
    #[test]
    fn libertem_reads_a_recording() {
        let tmp = crate::k2::gatan::tests::TempDir::new("write");
        let dir = tmp.0.clone();
        let paths = Paths::for_output(&dir.join("rec_")).expect("paths");
        // Frame ids 5..=21 but 12 (a whole frame lost), one block of the 4th frame lost: the 4×4 scan and the
        // frame after it.
        let ids: Vec<u32> = (5..=21).filter(|&i| i != 12).collect();
        let s = record(paths.clone(), Some((4, 4)), &ids, &[(3, 77)]);
        assert_eq!(
            s,
            Summary { frames: 17, placeholder_blocks: 257, incomplete_frames: 2, placeholder_frames: 1 },
            "16 frames sent, a gap of one filled"
        );
        let mut expected = Vec::new();
        for id in 5..=20u32 {
            let mut f = expected_frame(&*IS, id);
            if id == 8 {
                // block 77: sector 2, the camera's 13th block of it
                let (sct, x, y) = IS_GEOMETRY.block_location(77);
                for r in y..y + 930 {
                    f[r * 2048 + sct * 256 + x..][..16].fill(7);
                }
            }
            if id == 12 {
                f.fill(7);
            }
            expected.extend(f.iter().flat_map(|p| p.to_le_bytes()));
        }
        let want = dir.join("expected.u16");
        std::fs::write(&want, &expected).expect("expected");
        let script = r#"
import sys, numpy as np
from libertem.api import Context
from libertem.executor.inline import InlineJobExecutor
ctx = Context(executor=InlineJobExecutor())
ds = ctx.load("k2is", path=sys.argv[1])
want = np.fromfile(sys.argv[2], dtype="<u2").reshape(16, 1860, 2048)
from libertem.udf.raw import PickUDF
res = ctx.run_udf(dataset=ds, udf=PickUDF(), roi=np.ones(ds.shape.nav, dtype=bool))
frames = res["intensity"].raw_data.reshape(16, 1860, 2048)
print("shape", tuple(ds.shape))
for i in range(16):
    print(i, "equal" if np.array_equal(frames[i], want[i]) else "differ")
"#;
        let out = python(script, &[&paths.gtg, &want]);
        assert!(out.contains("shape (4, 4, 1860, 2048)"), "{out}");
        for i in 0..16 {
            assert!(out.contains(&format!("\n{i} equal")), "frame {i}: {out}");
        }
        // Read back block by block: 17 frames × 256 blocks, interleaved, 257 placeholders (the lead-in skipped).
        let mut r = Reader::open(Paths::discover(&paths.bins[3]).expect("discover")).expect("open");
        let (mut n, mut ph) = (0usize, 0usize);
        while let Some(b) = r.next_block().expect("read") {
            assert_eq!(b.sector, n % 8);
            n += 1;
            ph += usize::from(b.placeholder);
        }
        assert_eq!((n, ph), (17 * 256, 257));
    }

    /// Summit streams take the same layout by construction (same header, same per-sector order): a recording
    /// reads back block for block in the camera's order, placeholders where blocks were lost.
    #[test]
    fn summit_round_trips_through_the_layout() {
        use crate::k2::{SUMMIT, SUMMIT_GEOMETRY};
        let tmp = crate::k2::gatan::tests::TempDir::new("summit");
        let g = SUMMIT_GEOMETRY;
        let paths = Paths::for_output(&tmp.0.join("summit_")).expect("paths");
        let mut w = Writer::create(paths.clone(), g, Options { scan: None, fill: 0, info: vec![] }).expect("create");
        let mut c = Collector::new(g, 2);
        let mut sent = Vec::new();
        for n in 0..3u32 {
            let frame = expected_frame(&*SUMMIT, n);
            let mut blocks = vec![vec![0u8; g.block_bytes()]; g.blocks_per_frame()];
            for i in 0..g.blocks_per_frame() {
                let block = SUMMIT.send_order(i);
                let meta = BlockMeta { frame_id: n, block, frame_seq: u64::from(n), sync: false };
                SUMMIT.encode_datagram(&meta, &frame, &mut blocks[block]).expect("encode");
                if (n, block) == (1, 300) {
                    continue;
                }
                c.push(SUMMIT.stream_of(block), &blocks[block]);
                while let Some(mut f) = c.pop() {
                    w.write_frame(&mut f, u64::MAX).expect("write");
                }
            }
            sent.push(blocks);
        }
        while let Some(mut f) = c.give_up() {
            w.write_frame(&mut f, u64::MAX).expect("write");
        }
        assert_eq!(w.finish().expect("finish").placeholder_blocks, 1);
        let mut r = Reader::open(Paths::discover(&paths.gtg).expect("discover")).expect("open");
        assert_eq!(*r.geometry(), g);
        let per = g.blocks_per_sector();
        let mut i = 0usize;
        while let Some(b) = r.next_block().expect("read") {
            // Round i/8 of frame n: block k of sector s.
            let (n, k, s) = (i / g.blocks_per_frame(), (i % g.blocks_per_frame()) / 8, i % 8);
            let mut want = sent[n][s * per + k].clone();
            want[9] |= crate::k2::header::FLAG_SYNC;
            assert_eq!(b.placeholder, (n, s * per + k) == (1, 300), "block {i}");
            if !b.placeholder {
                assert!(b.bytes == &want[..], "block {i}: frame {n}, sector {s}, block {k}");
            }
            i += 1;
        }
        assert_eq!(i, 3 * g.blocks_per_frame());
    }
}
