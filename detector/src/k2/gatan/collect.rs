//! Datagrams → whole frames, in the order they arrived, for the Gatan recorder.
//!
//! A frame is taken out of the [`Collector`] when all its blocks arrived, or when it has to be given up: a
//! frame `window` frames newer started to arrive (4 by default, the assembler's `window`, so that the recorder
//! and the pipeline's own files agree on which blocks arrived), or the caller decides the stream went idle.
//! Frames leave in the order their first block arrived (for a camera, frame order), a complete frame waiting for
//! older ones. The first frame taken is kept only if complete: the recording may have started in its middle,
//! and a block that was sent before the recording began is not a lost block.

use std::collections::VecDeque;

use crate::k2::geometry::Geometry;
use crate::k2::header::{BlockHeader, HeaderError};

/// The assembler's default window: frames in flight before the oldest is given up.
pub const DEFAULT_WINDOW: usize = 4;

/// Frames remembered after they left, to recognise their late blocks.
const RECENT: usize = 64;

/// One frame's blocks, as they arrived (raw datagrams, header included), by block index
/// ([`Geometry::block_index`]: sector-major, each sector's blocks in the camera's order).
#[derive(Debug)]
pub struct Frame {
    id: u32,
    block_bytes: usize,
    data: Vec<u8>,
    present: Vec<bool>,
    arrived: usize,
    base_count: Option<u32>,
}

impl Frame {
    fn new(g: &Geometry) -> Self {
        Self {
            id: 0,
            block_bytes: g.block_bytes(),
            // Not zero: `vec![0; n]` maps pages lazily, and faulting 5.7 MB (IS) in at the stream's first frames
            // would stall the recorder; every byte is written before it is read (a block that arrived, or a
            // placeholder).
            data: vec![0xA5; g.blocks_per_frame() * g.block_bytes()],
            present: vec![false; g.blocks_per_frame()],
            arrived: 0,
            base_count: None,
        }
    }

    fn reset(&mut self, id: u32) {
        self.id = id;
        self.present.fill(false);
        self.arrived = 0;
        self.base_count = None;
    }

    /// The frame id.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// Block `i` (by block index) as it arrived, if it did.
    pub fn block(&self, i: usize) -> Option<&[u8]> {
        let b = self.block_bytes;
        self.present.get(i).copied().unwrap_or(false).then(|| &self.data[i * b..(i + 1) * b])
    }

    /// Block `i`'s bytes in the frame's buffer, whether it arrived or not (the writer fills in placeholders and
    /// flags in place, then writes each sector in one piece).
    pub(super) fn slot_mut(&mut self, i: usize) -> &mut [u8] {
        let b = self.block_bytes;
        &mut self.data[i * b..(i + 1) * b]
    }

    /// The bytes of blocks `range` (by block index), contiguous: a sector's blocks, in the camera's order.
    pub(super) fn blocks_bytes(&self, range: std::ops::Range<usize>) -> &[u8] {
        let b = self.block_bytes;
        &self.data[range.start * b..range.end * b]
    }

    /// Blocks that arrived.
    pub fn arrived(&self) -> usize {
        self.arrived
    }

    /// Blocks that did not arrive.
    pub fn missing(&self) -> usize {
        self.present.len() - self.arrived
    }

    /// The `block_count` of each sector's first block of this frame, from a block that arrived (the camera's
    /// counter runs through a sector's blocks and is comparable across sectors).
    pub fn base_count(&self) -> Option<u32> {
        self.base_count
    }
}

/// What became of a datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    /// Taken into its frame.
    Accepted,
    /// Its block had already arrived: dropped.
    Duplicate,
    /// Its frame already left (written or given up): dropped.
    Late,
    /// Not a valid block of this geometry: dropped.
    Invalid(HeaderError),
    /// From a sector (stream) the camera does not have: dropped.
    NoSuchSector(usize),
}

/// Frames being collected, oldest first.
#[derive(Debug)]
pub struct Collector {
    g: Geometry,
    window: usize,
    open: VecDeque<Frame>,
    pool: Vec<Frame>,
    /// Frames that left: (frame id, `block_count` of their sectors' first blocks).
    recent: VecDeque<(u32, Option<u32>)>,
    taken_any: bool,
    skipped_leading: u64,
}

impl Collector {
    /// A collector for geometry `g` that gives the oldest frame up when `window` newer ones are in flight
    /// (`window` at least 1). The memory of the `window + 1` frames it can hold at once is taken and touched
    /// here, so that taking frames in allocates nothing.
    pub fn new(g: Geometry, window: usize) -> Self {
        let window = window.max(1);
        Self {
            g,
            window,
            open: VecDeque::with_capacity(window + 1),
            pool: (0..=window).map(|_| Frame::new(&g)).collect(),
            recent: VecDeque::with_capacity(RECENT),
            taken_any: false,
            skipped_leading: 0,
        }
    }

    /// Leading frames not kept because blocks of them were missing (at most one).
    pub fn skipped_leading(&self) -> u64 {
        self.skipped_leading
    }

    /// Frames in flight.
    pub fn in_flight(&self) -> usize {
        self.open.len()
    }

    /// Takes a datagram received on `sector`.
    pub fn push(&mut self, sector: usize, datagram: &[u8]) -> Pushed {
        let h = match BlockHeader::parse(datagram, &self.g) {
            Ok(h) => h,
            Err(e) => return Pushed::Invalid(e),
        };
        if sector >= self.g.sectors() {
            return Pushed::NoSuchSector(sector);
        }
        let index = self.g.block_index(sector, usize::from(h.x_start), usize::from(h.y_start));
        // A frame is its id and its place in the camera's block count: after the camera starts its frame ids
        // over, an id seen before is a new frame, not late blocks of the old one.
        let base = h.block_count.wrapping_sub((index % self.g.blocks_per_sector()) as u32);
        let pos = match self.open.iter().position(|f| f.id == h.frame_id && f.base_count == Some(base)) {
            Some(p) => p,
            None if self.recent.contains(&(h.frame_id, Some(base))) => return Pushed::Late,
            None => {
                let mut f = self.pool.pop().unwrap_or_else(|| Frame::new(&self.g));
                f.reset(h.frame_id);
                f.base_count = Some(base);
                self.open.push_back(f);
                self.open.len() - 1
            }
        };
        let f = &mut self.open[pos];
        if f.present[index] {
            return Pushed::Duplicate;
        }
        let b = f.block_bytes;
        f.data[index * b..(index + 1) * b].copy_from_slice(datagram);
        f.present[index] = true;
        f.arrived += 1;
        f.base_count = Some(base);
        Pushed::Accepted
    }

    /// The next frame to write, if one is due: the oldest, once it is complete or `window` newer frames are in
    /// flight.
    pub fn pop(&mut self) -> Option<Frame> {
        loop {
            let front = self.open.front()?;
            if front.missing() > 0 && self.open.len() <= self.window {
                return None;
            }
            if let Some(f) = self.take_front() {
                return Some(f);
            }
        }
    }

    /// Gives the oldest frame up as it is (the stream went idle: nothing more will come for it).
    pub fn give_up(&mut self) -> Option<Frame> {
        while !self.open.is_empty() {
            if let Some(f) = self.take_front() {
                return Some(f);
            }
        }
        None
    }

    /// Returns a written frame's memory for reuse.
    pub fn recycle(&mut self, f: Frame) {
        self.pool.push(f);
    }

    /// Removes the oldest frame; `None` if it was the leading frame and incomplete (it is dropped).
    fn take_front(&mut self) -> Option<Frame> {
        let f = self.open.pop_front()?;
        if self.recent.len() == RECENT {
            self.recent.pop_front();
        }
        self.recent.push_back((f.id, f.base_count));
        let leading = !self.taken_any;
        self.taken_any = true;
        if leading && f.missing() > 0 {
            self.skipped_leading += 1;
            self.pool.push(f);
            return None;
        }
        Some(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::k2::IS_GEOMETRY;
    use crate::k2::header::FLAG_SYNC;

    fn block(g: &Geometry, frame_id: u32, seq: u64, index: usize) -> (usize, Vec<u8>) {
        let per = g.blocks_per_sector();
        let (s, x, y) = g.block_location(index);
        let count = (seq as u32) * per as u32 + (index % per) as u32;
        let mut d = vec![(index % 251) as u8; g.block_bytes()];
        let mut h = [0u8; 40];
        BlockHeader::for_block(g, frame_id, count, x, y, FLAG_SYNC).encode(&mut h);
        d[..40].copy_from_slice(&h);
        (s, d)
    }

    fn send(c: &mut Collector, g: &Geometry, frame_id: u32, seq: u64, skip: &[usize]) -> Vec<Frame> {
        let mut out = Vec::new();
        for i in 0..g.blocks_per_frame() {
            if skip.contains(&i) {
                continue;
            }
            let (s, d) = block(g, frame_id, seq, i);
            assert_eq!(c.push(s, &d), Pushed::Accepted);
            while let Some(f) = c.pop() {
                out.push(f);
            }
        }
        out
    }

    #[test]
    fn complete_frames_leave_at_once_and_gaps_after_the_window() {
        let g = IS_GEOMETRY;
        let mut c = Collector::new(g, 2);
        let f = send(&mut c, &g, 10, 0, &[]);
        assert_eq!(f.iter().map(Frame::id).collect::<Vec<_>>(), [10]);
        assert_eq!(f[0].base_count(), Some(0));
        assert_eq!(f[0].block(37).map(|b| b[40]), Some(37));
        // Frame 11 loses two blocks: it waits until frame 13 starts.
        assert!(send(&mut c, &g, 11, 1, &[5, 200]).is_empty());
        assert!(send(&mut c, &g, 12, 2, &[]).is_empty(), "a complete frame waits for older ones");
        let (s, d) = block(&g, 13, 3, 0);
        assert_eq!(c.push(s, &d), Pushed::Accepted);
        let f11 = c.pop().expect("frame 11 given up");
        assert_eq!((f11.id(), f11.missing(), f11.base_count()), (11, 2, Some(32)));
        assert!(f11.block(5).is_none() && f11.block(6).is_some());
        assert_eq!(c.pop().map(|f| f.id()), Some(12));
        assert!(c.pop().is_none());
        // A late block of frame 11 and a duplicate of frame 13's.
        let (s, late) = block(&g, 11, 1, 5);
        assert_eq!(c.push(s, &late), Pushed::Late);
        assert_eq!(c.push(s, &d), Pushed::Duplicate);
        assert_eq!(c.push(9, &d), Pushed::NoSuchSector(9));
        assert!(matches!(c.push(0, &d[..100]), Pushed::Invalid(_)));
        // Idle: frame 13 is given up with what it has.
        let f13 = c.give_up().expect("frame 13");
        assert_eq!((f13.id(), f13.arrived()), (13, 1));
        assert_eq!(c.skipped_leading(), 0);
    }

    #[test]
    fn frame_ids_started_over_are_new_frames() {
        let g = IS_GEOMETRY;
        let mut c = Collector::new(g, 2);
        let mut ids = Vec::new();
        for (id, seq) in [(10, 0), (11, 1), (10, 2), (11, 3)] {
            ids.extend(send(&mut c, &g, id, seq, &[]).iter().map(|f| (f.id(), f.base_count())));
        }
        assert_eq!(ids, [(10, Some(0)), (11, Some(32)), (10, Some(64)), (11, Some(96))]);
        // A block of the first frame 10 comes late.
        let (s, d) = block(&g, 10, 0, 3);
        assert_eq!(c.push(s, &d), Pushed::Late);
    }

    #[test]
    fn an_incomplete_first_frame_is_skipped() {
        let g = IS_GEOMETRY;
        let mut c = Collector::new(g, 1);
        assert!(send(&mut c, &g, 0, 0, &[0, 1, 2]).is_empty());
        let f = send(&mut c, &g, 1, 1, &[]);
        assert_eq!(f.iter().map(Frame::id).collect::<Vec<_>>(), [1]);
        assert_eq!(c.skipped_leading(), 1);
    }
}
