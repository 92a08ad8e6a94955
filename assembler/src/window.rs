//! Frames in flight: which blocks of which frame have arrived, and where they lie in the block ring.

use std::collections::VecDeque;
use std::time::Instant;

/// Where a block's datagram lies: block-ring sequence, datagram index in that slot, and its length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockRef {
    /// Block-ring sequence of the slot.
    pub seq: u64,
    /// Index of the datagram in the slot.
    pub index: u32,
    /// Length of the datagram (at most the slot's datagram stride).
    pub len: u32,
}

/// A frame being assembled.
#[derive(Debug)]
pub struct InFlight {
    /// The detector's frame id.
    pub frame_id: u32,
    /// Per block index: where its datagram is, if it arrived.
    pub refs: Vec<Option<BlockRef>>,
    /// Blocks arrived.
    pub received: u32,
    /// Receive time of the first and last block (ns since the epoch).
    pub first_ns: u64,
    /// See `first_ns`.
    pub last_ns: u64,
    /// Any block carried the sync flag.
    pub sync: bool,
    /// Lowest block-ring sequence referenced (`u64::MAX` if none): the block ring may not be committed past it.
    pub min_seq: u64,
    /// Block-ring sequence of the first block to arrive (`u64::MAX` if none).
    pub first_seq: u64,
    /// When this entry was created or last got a block (wall clock, for an idle stream).
    pub touched: Instant,
    /// Receive time of the datagram that created this entry or last added to it (data clock, for timeouts that
    /// a stalled pipeline does not trigger).
    pub data_ns: u64,
}

impl InFlight {
    fn new(blocks: usize) -> Self {
        Self {
            frame_id: 0,
            refs: vec![None; blocks],
            received: 0,
            first_ns: 0,
            last_ns: 0,
            sync: false,
            min_seq: u64::MAX,
            first_seq: u64::MAX,
            touched: Instant::now(),
            data_ns: 0,
        }
    }

    fn reset(&mut self, frame_id: u32, data_ns: u64) {
        self.frame_id = frame_id;
        self.refs.iter_mut().for_each(|r| *r = None);
        self.received = 0;
        self.first_ns = 0;
        self.last_ns = 0;
        self.sync = false;
        self.min_seq = u64::MAX;
        self.first_seq = u64::MAX;
        self.touched = Instant::now();
        self.data_ns = data_ns;
    }

    /// Whether every block arrived.
    pub fn is_complete(&self) -> bool {
        self.received as usize == self.refs.len()
    }

    /// Records a block; `false` if it is a duplicate (the first copy stays).
    pub fn add(&mut self, block: usize, r: BlockRef, recv_ns: u64, sync: bool) -> bool {
        if self.refs[block].is_some() {
            return false;
        }
        self.refs[block] = Some(r);
        if self.received == 0 {
            self.first_ns = recv_ns;
            self.first_seq = r.seq;
        }
        self.received += 1;
        self.first_ns = self.first_ns.min(recv_ns);
        self.last_ns = self.last_ns.max(recv_ns);
        self.sync |= sync;
        self.min_seq = self.min_seq.min(r.seq);
        self.touched = Instant::now();
        self.data_ns = self.data_ns.max(recv_ns);
        true
    }
}

/// Consecutive frame ids `base, base + 1, ...` in flight, oldest first. Entries are recycled, so that steady
/// state allocates nothing.
#[derive(Debug)]
pub struct Window {
    /// Frame id of `frames[0]`.
    pub base: u32,
    frames: VecDeque<InFlight>,
    spare: Vec<InFlight>,
    blocks: usize,
}

impl Window {
    /// An empty window starting at `base`, for frames of `blocks` blocks, with room for `depth` frames in
    /// flight made now: a window at work never allocates (once deeper than `depth`, it grows as needed).
    pub fn new(base: u32, blocks: usize, depth: usize) -> Self {
        let mut w = Self { base, frames: VecDeque::new(), spare: Vec::new(), blocks };
        w.provision(depth);
        w
    }

    /// Makes room for `depth` frames in flight now, so that the window allocates nothing until it is deeper.
    pub fn provision(&mut self, depth: usize) {
        self.frames.reserve(depth + 1);
        self.spare.reserve(depth + 1);
        while self.frames.len() + self.spare.len() < depth {
            self.spare.push(InFlight::new(self.blocks));
        }
    }

    /// Offset of `frame_id` from the base, as a signed distance (frame ids wrap at 2^32).
    pub fn offset(&self, frame_id: u32) -> i64 {
        i64::from(frame_id.wrapping_sub(self.base) as i32)
    }

    fn fresh(&mut self, frame_id: u32, data_ns: u64) -> InFlight {
        let mut f = self.spare.pop().unwrap_or_else(|| InFlight::new(self.blocks));
        f.reset(frame_id, data_ns);
        f
    }

    /// The entry at offset `d >= 0`, creating it (and the ones before it) as needed; `data_ns` is the receive
    /// time of the datagram that asks.
    pub fn entry(&mut self, d: usize, data_ns: u64) -> &mut InFlight {
        while self.frames.len() <= d {
            let id = self.base.wrapping_add(self.frames.len() as u32);
            let f = self.fresh(id, data_ns);
            self.frames.push_back(f);
        }
        &mut self.frames[d]
    }

    /// Moves the base back by `n` frames (before anything was published from this window).
    pub fn extend_front(&mut self, n: usize, data_ns: u64) {
        for _ in 0..n {
            self.base = self.base.wrapping_sub(1);
            let f = self.fresh(self.base, data_ns);
            self.frames.push_front(f);
        }
    }

    /// The oldest frame, if any is in flight.
    pub fn front(&self) -> Option<&InFlight> {
        self.frames.front()
    }

    /// Removes the oldest frame (creating an empty one if none is in flight) and advances the base.
    pub fn pop_front(&mut self) -> InFlight {
        let f = match self.frames.pop_front() {
            Some(f) => f,
            None => self.fresh(self.base, 0),
        };
        self.base = self.base.wrapping_add(1);
        f
    }

    /// Returns an entry for reuse.
    pub fn recycle(&mut self, f: InFlight) {
        self.spare.push(f);
    }

    /// Frames in flight.
    pub fn len(&self) -> usize {
        self.frames.len()
    }

    /// Whether no frame is in flight.
    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// Lowest block-ring sequence referenced by any frame in flight.
    pub fn min_seq(&self) -> u64 {
        self.frames.iter().map(|f| f.min_seq).min().unwrap_or(u64::MAX)
    }

    /// The frames in flight, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = &InFlight> {
        self.frames.iter()
    }
}

/// Which blocks recently published frames had: a block missing from its frame when it was published is late;
/// one that was already there means the camera is sending that frame id again (a reset).
#[derive(Debug)]
pub struct History {
    entries: Vec<(u32, Vec<u64>)>,
    next: usize,
    len: usize,
}

impl History {
    /// Room for `frames` frames of `blocks` blocks.
    pub fn new(frames: usize, blocks: usize) -> Self {
        Self { entries: vec![(0, vec![0; blocks.div_ceil(64)]); frames.max(1)], next: 0, len: 0 }
    }

    /// Records a published frame.
    pub fn push(&mut self, f: &InFlight) {
        let (id, bits) = &mut self.entries[self.next];
        *id = f.frame_id;
        bits.iter_mut().for_each(|w| *w = 0);
        for (i, r) in f.refs.iter().enumerate() {
            if r.is_some() {
                bits[i / 64] |= 1 << (i % 64);
            }
        }
        self.next = (self.next + 1) % self.entries.len();
        self.len = (self.len + 1).min(self.entries.len());
    }

    /// For a recently published `frame_id`: whether it had `block`. `None` if not in the history.
    pub fn had(&self, frame_id: u32, block: usize) -> Option<bool> {
        let n = self.entries.len();
        (0..self.len)
            .map(|k| &self.entries[(self.next + n - 1 - k) % n])
            .find(|(id, _)| *id == frame_id)
            .map(|(_, bits)| bits.get(block / 64).is_some_and(|w| w >> (block % 64) & 1 == 1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_tracks_offsets_and_recycles() {
        let mut w = Window::new(u32::MAX - 1, 4, 2);
        assert_eq!(w.offset(0), 2, "wraps");
        assert_eq!(w.offset(u32::MAX - 3), -2);
        assert!(w.entry(2, 10).add(1, BlockRef { seq: 5, index: 0, len: 0 }, 10, false));
        assert!(!w.entry(2, 11).add(1, BlockRef { seq: 6, index: 0, len: 0 }, 11, false), "duplicate");
        assert_eq!(w.len(), 3);
        assert_eq!(w.min_seq(), 5);
        let f = w.pop_front();
        assert_eq!((f.frame_id, f.received), (u32::MAX - 1, 0));
        let mut h = History::new(2, 4);
        assert_eq!(h.had(u32::MAX - 1, 0), None);
        h.push(&f);
        assert_eq!(h.had(u32::MAX - 1, 1), Some(false));
        w.recycle(f);
        w.extend_front(1, 0);
        assert_eq!(w.base, u32::MAX - 1);
        assert_eq!(w.front().map(|f| f.received), Some(0));
    }
}
