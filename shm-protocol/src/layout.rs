//! The region's layout: every struct that lives in shared memory.
//!
//! These structs are read by processes built separately (and by Python), so each is `#[repr(C)]`, holds no
//! pointers (only offsets and indices), and has its size and field offsets asserted at compile time below.
//! Changing any of them means bumping [`LAYOUT_VERSION`].

use std::mem::{offset_of, size_of};
use std::sync::atomic::{AtomicU32, AtomicU64};

/// The eight bytes at offset 0 of every ringdaq region.
pub const MAGIC: [u8; 8] = *b"RINGDAQ\0";

/// Version of the layout described in this module. A process refuses to attach to a region of another version.
pub const LAYOUT_VERSION: u32 = 6;

/// Size of a cache line; every independently written word lives on a line of its own.
pub const CACHE_LINE: usize = 64;

/// Page size the layout is computed with (offsets of slot arrays are multiples of it).
pub const PAGE_SIZE: usize = 4096;

/// How many rings a region's header can describe.
pub const MAX_RINGS: usize = 4;

/// How many consumer cursors a ring can have at most (one sleep flag each in [`SleepLine`]).
pub const MAX_CONSUMERS: usize = 56;

/// Detector geometry as recorded in the region, so that any process attaching knows the frame shape without
/// asking anyone. Plain numbers: the meaning of `mode` belongs to the detector crate.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Geometry {
    /// Detector mode identifier (0 = none/generic; the detector crate assigns the others).
    pub mode: u32,
    /// Rows of a decoded frame.
    pub frame_rows: u32,
    /// Columns of a decoded frame.
    pub frame_cols: u32,
    /// Bytes per decoded pixel (2 for u16).
    pub bytes_per_pixel: u32,
    /// Datagrams (blocks) that make up one frame.
    pub blocks_per_frame: u32,
    /// Largest datagram a block-ring slot entry can hold.
    pub max_datagram: u32,
    /// Number of sectors (UDP sockets).
    pub sectors: u32,
    /// Reserved, zero.
    pub _reserved: u32,
}

/// What a ring carries; recorded so that a tool reading the region from outside can label it.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RingKind {
    /// Slots of opaque bytes (tests, demos).
    Bytes = 0,
    /// Batches of raw datagrams (receiver → assembler).
    Block = 1,
    /// Decoded frames (assembler → writer and consumers).
    Frame = 2,
}

impl RingKind {
    /// The kind for a raw value read from a region, if it is a known one.
    pub fn from_raw(raw: u32) -> Option<Self> {
        match raw {
            0 => Some(Self::Bytes),
            1 => Some(Self::Block),
            2 => Some(Self::Frame),
            _ => None,
        }
    }
}

/// Where one ring lives in the region. All offsets are from the start of the region.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct RingDesc {
    /// A [`RingKind`] as `u32`.
    pub kind: u32,
    /// Number of slots; slot of sequence `s` is `s % slot_count`.
    pub slot_count: u32,
    /// Bytes per slot, a multiple of [`PAGE_SIZE`].
    pub slot_size: u64,
    /// Offset of the ring's [`RingControl`].
    pub control_offset: u64,
    /// Offset of the `[ConsumerLine; max_consumers]` array.
    pub consumers_offset: u64,
    /// Offset of the `[SlotStamp; slot_count]` array.
    pub stamps_offset: u64,
    /// Offset of the first slot; page aligned.
    pub slots_offset: u64,
    /// Number of consumer cursors.
    pub max_consumers: u32,
    /// Reserved, zero.
    pub _reserved: u32,
}

/// The region's first page: names the layout of everything below it.
///
/// Written once by the creator before the region is shared, and never changed after; readers copy it out.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct RegionHeader {
    /// [`MAGIC`].
    pub magic: [u8; 8],
    /// [`LAYOUT_VERSION`] of the creator.
    pub layout_version: u32,
    /// `size_of::<RegionHeader>()` of the creator.
    pub header_size: u32,
    /// Total size of the region in bytes.
    pub region_size: u64,
    /// Page size the layout was computed with.
    pub page_size: u32,
    /// Number of valid entries in `rings`.
    pub ring_count: u32,
    /// Detector geometry.
    pub geometry: Geometry,
    /// Offset of the application area (stage records, acquisition record); 0 if none.
    pub app_offset: u64,
    /// Size of the application area in bytes.
    pub app_size: u64,
    /// The rings.
    pub rings: [RingDesc; MAX_RINGS],
}

/// A ring's producer-side words, one cache line, written at every publish.
#[repr(C, align(64))]
pub struct ProducerLine {
    /// Number of slots published: every sequence below it is readable.
    pub published: AtomicU64,
    /// Low 32 bits of `published`, stored after it: the futex word consumers sleep on.
    pub wake_word: AtomicU32,
    /// Reserved, zero.
    pub _reserved: AtomicU32,
    /// Pid of the process that last attached as producer (informational).
    pub producer_pid: AtomicU32,
    /// Bumped each time a producer attaches (restarts are visible from outside).
    pub producer_generation: AtomicU32,
    _pad: [u8; 40],
}

/// Who sleeps, one cache line of its own: written only when a process goes to sleep or wakes, so the producer
/// and consumers read it at every hand-off without the line bouncing between their caches.
#[repr(C, align(64))]
pub struct SleepLine {
    /// Non-zero while the producer sleeps waiting for a gating consumer.
    pub producer_sleeping: AtomicU32,
    /// Reserved, zero.
    pub _reserved: AtomicU32,
    /// Non-zero while consumer `i` sleeps waiting for the producer.
    pub consumer_sleeping: [std::sync::atomic::AtomicU8; MAX_CONSUMERS],
}

/// A ring's control block; the consumer lines follow at `consumers_offset`.
#[repr(C, align(64))]
pub struct RingControl {
    /// Producer cursor and wake word.
    pub producer: ProducerLine,
    /// Sleep flags.
    pub sleep: SleepLine,
}

/// The state of one consumer cursor.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsumerMode {
    /// Unused.
    Free = 0,
    /// The producer never reuses a slot this consumer has not committed.
    Gating = 1,
    /// Never slows the producer; detects overwritten slots.
    Lossy = 2,
}

impl ConsumerMode {
    /// The mode for a raw value read from a region; unknown values read as `Free`.
    pub fn from_raw(raw: u32) -> Self {
        match raw {
            1 => Self::Gating,
            2 => Self::Lossy,
            _ => Self::Free,
        }
    }
}

/// One consumer's cursor, one cache line.
#[repr(C, align(64))]
pub struct ConsumerLine {
    /// Next sequence this consumer reads: everything below is committed.
    pub cursor: AtomicU64,
    /// Low 32 bits of `cursor`, stored after it: the futex word a blocked producer sleeps on.
    pub wake_word: AtomicU32,
    /// A [`ConsumerMode`] as `u32`.
    pub mode: AtomicU32,
    /// Reserved, zero.
    pub _reserved: AtomicU32,
    /// Pid of the process that last attached to this cursor (informational).
    pub owner_pid: AtomicU32,
    /// Bumped each time a process attaches to this cursor.
    pub generation: AtomicU32,
    _pad: [u8; 36],
}

/// Per-slot stamp that lets a lossy reader tell whether the slot still holds the sequence it is reading.
///
/// Value `2*s + 1` while the producer writes sequence `s` into the slot, `2*s + 2` once it is written, 0 if the
/// slot was never written.
#[repr(C, align(64))]
pub struct SlotStamp {
    /// The stamp value.
    pub stamp: AtomicU64,
    _pad: [u8; 56],
}

/// Stamp value meaning "sequence `seq` is being written".
pub const fn stamp_writing(seq: u64) -> u64 {
    seq.wrapping_mul(2).wrapping_add(1)
}

/// Stamp value meaning "sequence `seq` is written and published".
pub const fn stamp_written(seq: u64) -> u64 {
    seq.wrapping_mul(2).wrapping_add(2)
}

// Compile-time layout checks: a change here is a layout change.
const _: () = {
    assert!(size_of::<Geometry>() == 32);
    assert!(size_of::<RingDesc>() == 56);
    assert!(offset_of!(RingDesc, slot_count) == 4);
    assert!(offset_of!(RingDesc, slot_size) == 8);
    assert!(offset_of!(RingDesc, control_offset) == 16);
    assert!(offset_of!(RingDesc, consumers_offset) == 24);
    assert!(offset_of!(RingDesc, stamps_offset) == 32);
    assert!(offset_of!(RingDesc, slots_offset) == 40);
    assert!(offset_of!(RingDesc, max_consumers) == 48);
    assert!(offset_of!(RegionHeader, magic) == 0);
    assert!(offset_of!(RegionHeader, layout_version) == 8);
    assert!(offset_of!(RegionHeader, header_size) == 12);
    assert!(offset_of!(RegionHeader, region_size) == 16);
    assert!(offset_of!(RegionHeader, page_size) == 24);
    assert!(offset_of!(RegionHeader, ring_count) == 28);
    assert!(offset_of!(RegionHeader, geometry) == 32);
    assert!(offset_of!(RegionHeader, app_offset) == 64);
    assert!(offset_of!(RegionHeader, app_size) == 72);
    assert!(offset_of!(RegionHeader, rings) == 80);
    assert!(size_of::<RegionHeader>() == 80 + 56 * MAX_RINGS);
    assert!(size_of::<RegionHeader>() <= PAGE_SIZE);
    assert!(size_of::<ProducerLine>() == CACHE_LINE);
    assert!(offset_of!(ProducerLine, published) == 0);
    assert!(offset_of!(ProducerLine, wake_word) == 8);
    assert!(offset_of!(ProducerLine, producer_pid) == 16);
    assert!(offset_of!(ProducerLine, producer_generation) == 20);
    assert!(size_of::<SleepLine>() == CACHE_LINE);
    assert!(offset_of!(SleepLine, consumer_sleeping) == 8);
    assert!(size_of::<RingControl>() == 2 * CACHE_LINE);
    assert!(offset_of!(RingControl, sleep) == CACHE_LINE);
    assert!(size_of::<ConsumerLine>() == CACHE_LINE);
    assert!(offset_of!(ConsumerLine, cursor) == 0);
    assert!(offset_of!(ConsumerLine, wake_word) == 8);
    assert!(offset_of!(ConsumerLine, mode) == 12);
    assert!(offset_of!(ConsumerLine, owner_pid) == 20);
    assert!(offset_of!(ConsumerLine, generation) == 24);
    assert!(size_of::<SlotStamp>() == CACHE_LINE);
};

/// What one ring needs: the creator's request, turned into a [`RingDesc`] by [`compute_layout`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingSpec {
    /// What the ring carries.
    pub kind: RingKind,
    /// Number of slots (at least 2).
    pub slot_count: u32,
    /// Bytes needed per slot; rounded up to a page.
    pub slot_bytes: u64,
    /// Number of consumer cursors (1 ..= [`MAX_CONSUMERS`]).
    pub max_consumers: u32,
}

/// Everything a region is created from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegionSpec {
    /// Detector geometry recorded in the header.
    pub geometry: Geometry,
    /// The rings, at most [`MAX_RINGS`].
    pub rings: Vec<RingSpec>,
    /// Bytes of application area (stage records and the like), rounded up to a page; may be 0.
    pub app_bytes: u64,
}

/// Rounds `value` up to a multiple of `align` (a power of two).
pub const fn align_up(value: u64, align: u64) -> u64 {
    (value + align - 1) & !(align - 1)
}

/// Why a [`RegionSpec`] cannot be laid out.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpecError {
    /// More rings than the header can name.
    #[error("{0} rings requested; a region holds at most {MAX_RINGS}")]
    TooManyRings(usize),
    /// A ring with fewer than two slots cannot be used in order.
    #[error("ring {ring}: {slots} slots; a ring needs at least 2")]
    TooFewSlots {
        /// Ring index.
        ring: usize,
        /// Requested slots.
        slots: u32,
    },
    /// Consumer count out of range.
    #[error("ring {ring}: {consumers} consumers; allowed 1..={MAX_CONSUMERS}")]
    Consumers {
        /// Ring index.
        ring: usize,
        /// Requested consumers.
        consumers: u32,
    },
    /// A zero-sized slot.
    #[error("ring {ring}: slots of 0 bytes")]
    EmptySlot {
        /// Ring index.
        ring: usize,
    },
    /// The total does not fit in 64 bits (or in the address space).
    #[error("region size overflows")]
    Overflow,
}

/// Computes the header (offsets of everything) for a spec. Pure: the same spec always gives the same layout.
pub fn compute_layout(spec: &RegionSpec) -> Result<RegionHeader, SpecError> {
    if spec.rings.len() > MAX_RINGS {
        return Err(SpecError::TooManyRings(spec.rings.len()));
    }
    let page = PAGE_SIZE as u64;
    let line = CACHE_LINE as u64;
    let mut rings = [RingDesc::default(); MAX_RINGS];
    // Control blocks, consumer lines and stamps of all rings share the pages after the header; slots come after.
    let mut off = page;
    for (i, r) in spec.rings.iter().enumerate() {
        if r.slot_count < 2 {
            return Err(SpecError::TooFewSlots { ring: i, slots: r.slot_count });
        }
        if r.max_consumers == 0 || r.max_consumers as usize > MAX_CONSUMERS {
            return Err(SpecError::Consumers { ring: i, consumers: r.max_consumers });
        }
        if r.slot_bytes == 0 {
            return Err(SpecError::EmptySlot { ring: i });
        }
        let d = &mut rings[i];
        d.kind = r.kind as u32;
        d.slot_count = r.slot_count;
        d.slot_size = r.slot_bytes.checked_add(page - 1).ok_or(SpecError::Overflow)? & !(page - 1);
        d.max_consumers = r.max_consumers;
        d.control_offset = off;
        off += size_of::<RingControl>() as u64;
        d.consumers_offset = off;
        off += line * u64::from(r.max_consumers);
        d.stamps_offset = off;
        off += line * u64::from(r.slot_count);
    }
    off = align_up(off, page);
    let app_offset = if spec.app_bytes > 0 { off } else { 0 };
    off = off
        .checked_add(spec.app_bytes.checked_add(page - 1).ok_or(SpecError::Overflow)? & !(page - 1))
        .ok_or(SpecError::Overflow)?;
    let app_size = if spec.app_bytes > 0 { off - app_offset } else { 0 };
    for d in rings.iter_mut().take(spec.rings.len()) {
        d.slots_offset = off;
        let bytes = d.slot_size.checked_mul(u64::from(d.slot_count)).ok_or(SpecError::Overflow)?;
        off = off.checked_add(bytes).ok_or(SpecError::Overflow)?;
    }
    if usize::try_from(off).is_err() {
        return Err(SpecError::Overflow);
    }
    Ok(RegionHeader {
        magic: MAGIC,
        layout_version: LAYOUT_VERSION,
        header_size: size_of::<RegionHeader>() as u32,
        region_size: off,
        page_size: PAGE_SIZE as u32,
        ring_count: spec.rings.len() as u32,
        geometry: spec.geometry,
        app_offset,
        app_size,
        rings,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> RegionSpec {
        RegionSpec {
            geometry: Geometry::default(),
            rings: vec![
                RingSpec { kind: RingKind::Block, slot_count: 8, slot_bytes: 10_000, max_consumers: 2 },
                RingSpec { kind: RingKind::Frame, slot_count: 4, slot_bytes: 4096, max_consumers: 8 },
            ],
            app_bytes: 100,
        }
    }

    #[test]
    fn layout_is_aligned_and_disjoint() {
        let h = compute_layout(&spec()).unwrap();
        assert_eq!(h.ring_count, 2);
        let page = PAGE_SIZE as u64;
        let mut spans = vec![(0, page)];
        spans.push((h.app_offset, h.app_offset + h.app_size));
        for d in &h.rings[..2] {
            assert_eq!(d.slots_offset % page, 0);
            assert_eq!(d.slot_size % page, 0);
            assert_eq!(d.control_offset % CACHE_LINE as u64, 0);
            spans.push((d.control_offset, d.control_offset + size_of::<RingControl>() as u64));
            spans.push((
                d.consumers_offset,
                d.consumers_offset + size_of::<ConsumerLine>() as u64 * u64::from(d.max_consumers),
            ));
            spans.push((d.stamps_offset, d.stamps_offset + size_of::<SlotStamp>() as u64 * u64::from(d.slot_count)));
            spans.push((d.slots_offset, d.slots_offset + d.slot_size * u64::from(d.slot_count)));
        }
        spans.sort();
        for w in spans.windows(2) {
            assert!(w[0].1 <= w[1].0, "overlap {w:?}");
        }
        assert_eq!(spans.last().unwrap().1, h.region_size);
        assert_eq!(h.rings[0].slot_size, 3 * page);
    }

    #[test]
    fn bad_specs_are_refused() {
        let mut s = spec();
        s.rings[0].slot_count = 1;
        assert_eq!(compute_layout(&s), Err(SpecError::TooFewSlots { ring: 0, slots: 1 }));
        let mut s = spec();
        s.rings[1].max_consumers = 0;
        assert!(matches!(compute_layout(&s), Err(SpecError::Consumers { .. })));
        let mut s = spec();
        s.rings[0].slot_bytes = u64::MAX / 2;
        assert_eq!(compute_layout(&s), Err(SpecError::Overflow));
    }
}
