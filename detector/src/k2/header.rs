//! The 40-byte block header (big-endian), its parse with validation, and its encode.
//!
//! | offset | field |
//! |---|---|
//! | 0 | u32 sync word `0xFFFF0055` |
//! | 4 | 4 bytes padding |
//! | 8 | u8 version |
//! | 9 | u8 flags (bit 0: shutter active / sync) |
//! | 10 | 6 bytes padding |
//! | 16 | u32 block_count (running, comparable across sectors) |
//! | 20 | u16 sector width, 22: u16 sector height |
//! | 24 | u32 frame_id |
//! | 28 | u16 pixel_x_start, 30: pixel_y_start, 32: pixel_x_end, 34: pixel_y_end (ends inclusive) |
//! | 36 | u32 block_size (= the datagram's size) |

use super::geometry::{Geometry, HEADER_BYTES};

/// The sync word every block starts with.
pub const SYNC_WORD: u32 = 0xFFFF_0055;

/// Flag bit: the shutter is active (the sync flag of a synchronised acquisition).
pub const FLAG_SYNC: u8 = 0x01;

/// A parsed block header: every field of the wire format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BlockHeader {
    /// Format version byte.
    pub version: u8,
    /// Flags; see [`FLAG_SYNC`].
    pub flags: u8,
    /// Running block counter.
    pub block_count: u32,
    /// Sector width in pixels.
    pub sector_width: u16,
    /// Sector height in pixels.
    pub sector_height: u16,
    /// Frame id.
    pub frame_id: u32,
    /// First column of the block within the sector.
    pub x_start: u16,
    /// First row of the block within the sector.
    pub y_start: u16,
    /// Last column (inclusive).
    pub x_end: u16,
    /// Last row (inclusive).
    pub y_end: u16,
    /// Size of the datagram in bytes.
    pub block_size: u32,
}

/// Why a datagram is not a valid block. Each variant is a counter of its own downstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// Shorter than a header.
    #[error("datagram of {len} bytes is shorter than a {HEADER_BYTES}-byte header")]
    Truncated {
        /// Datagram length.
        len: usize,
    },
    /// The first word is not [`SYNC_WORD`].
    #[error("sync word {found:#010x}, expected {SYNC_WORD:#010x}")]
    SyncWord {
        /// Word found.
        found: u32,
    },
    /// `block_size` is not the mode's.
    #[error("block size {found}, this mode's is {expected}")]
    BlockSize {
        /// Size in the header.
        found: u32,
        /// Size of the mode.
        expected: u32,
    },
    /// The datagram's length is not its `block_size`.
    #[error("datagram is {len} bytes but its header says {block_size}")]
    Length {
        /// Datagram length.
        len: usize,
        /// Size in the header.
        block_size: u32,
    },
    /// Sector width/height are not the mode's.
    #[error("sector {width}×{height} does not match the mode")]
    Geometry {
        /// Width in the header.
        width: u16,
        /// Height in the header.
        height: u16,
    },
    /// The pixel range is not one block at a block position inside the sector.
    #[error("block position x {x_start}..={x_end}, y {y_start}..={y_end} is not a block of this sector")]
    Position {
        /// x start.
        x_start: u16,
        /// x end.
        x_end: u16,
        /// y start.
        y_start: u16,
        /// y end.
        y_end: u16,
    },
}

impl HeaderError {
    /// A short stable name, for counters.
    pub const fn reason(&self) -> &'static str {
        match self {
            HeaderError::Truncated { .. } => "truncated",
            HeaderError::SyncWord { .. } => "sync_word",
            HeaderError::BlockSize { .. } => "block_size",
            HeaderError::Length { .. } => "length",
            HeaderError::Geometry { .. } => "geometry",
            HeaderError::Position { .. } => "position",
        }
    }

    /// Index of [`HeaderError::reason`] in [`REASONS`].
    pub const fn index(&self) -> usize {
        match self {
            HeaderError::Truncated { .. } => 0,
            HeaderError::SyncWord { .. } => 1,
            HeaderError::BlockSize { .. } => 2,
            HeaderError::Length { .. } => 3,
            HeaderError::Geometry { .. } => 4,
            HeaderError::Position { .. } => 5,
        }
    }
}

/// The names of the K2 invalid reasons, in the order of [`HeaderError::index`]. They are public counter names
/// (`assembler.invalid.<reason>`): never reorder or rename them.
pub const REASONS: &[&str] = &["truncated", "sync_word", "block_size", "length", "geometry", "position"];

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

impl BlockHeader {
    /// Reads every field without validating anything but the length.
    pub fn read(datagram: &[u8]) -> Result<Self, HeaderError> {
        if datagram.len() < HEADER_BYTES {
            return Err(HeaderError::Truncated { len: datagram.len() });
        }
        let b = datagram;
        Ok(Self {
            version: b[8],
            flags: b[9],
            block_count: be32(b, 16),
            sector_width: be16(b, 20),
            sector_height: be16(b, 22),
            frame_id: be32(b, 24),
            x_start: be16(b, 28),
            y_start: be16(b, 30),
            x_end: be16(b, 32),
            y_end: be16(b, 34),
            block_size: be32(b, 36),
        })
    }

    /// Parses and validates a whole datagram against a mode's geometry: sync word, block size, datagram length,
    /// sector geometry, and a position that is exactly one block inside the sector.
    pub fn parse(datagram: &[u8], g: &Geometry) -> Result<Self, HeaderError> {
        let h = Self::read(datagram)?;
        let sync = be32(datagram, 0);
        if sync != SYNC_WORD {
            return Err(HeaderError::SyncWord { found: sync });
        }
        if h.block_size as usize != g.block_bytes() {
            return Err(HeaderError::BlockSize { found: h.block_size, expected: g.block_bytes() as u32 });
        }
        if datagram.len() != g.block_bytes() {
            return Err(HeaderError::Length { len: datagram.len(), block_size: h.block_size });
        }
        if usize::from(h.sector_width) != g.sector_width() || usize::from(h.sector_height) != g.sector_height() {
            return Err(HeaderError::Geometry { width: h.sector_width, height: h.sector_height });
        }
        let (xs, ys, xe, ye) =
            (usize::from(h.x_start), usize::from(h.y_start), usize::from(h.x_end), usize::from(h.y_end));
        let ok = xs % g.block_width() == 0
            && ys % g.block_height() == 0
            && xe == xs + g.block_width() - 1
            && ye == ys + g.block_height() - 1
            && xe < g.sector_width()
            && ye < g.sector_height();
        if !ok {
            return Err(HeaderError::Position {
                x_start: h.x_start,
                x_end: h.x_end,
                y_start: h.y_start,
                y_end: h.y_end,
            });
        }
        Ok(h)
    }

    /// Whether the sync (shutter) flag is set.
    pub const fn sync(&self) -> bool {
        self.flags & FLAG_SYNC != 0
    }

    /// Writes the header into the first [`HEADER_BYTES`] of `out` (padding zeroed).
    pub fn encode(&self, out: &mut [u8; HEADER_BYTES]) {
        out.fill(0);
        out[0..4].copy_from_slice(&SYNC_WORD.to_be_bytes());
        out[8] = self.version;
        out[9] = self.flags;
        out[16..20].copy_from_slice(&self.block_count.to_be_bytes());
        out[20..22].copy_from_slice(&self.sector_width.to_be_bytes());
        out[22..24].copy_from_slice(&self.sector_height.to_be_bytes());
        out[24..28].copy_from_slice(&self.frame_id.to_be_bytes());
        out[28..30].copy_from_slice(&self.x_start.to_be_bytes());
        out[30..32].copy_from_slice(&self.y_start.to_be_bytes());
        out[32..34].copy_from_slice(&self.x_end.to_be_bytes());
        out[34..36].copy_from_slice(&self.y_end.to_be_bytes());
        out[36..40].copy_from_slice(&self.block_size.to_be_bytes());
    }

    /// The header of block `(x_start, y_start)` of a sector in mode geometry `g`.
    pub fn for_block(g: &Geometry, frame_id: u32, block_count: u32, x_start: usize, y_start: usize, flags: u8) -> Self {
        Self {
            version: 1,
            flags,
            block_count,
            sector_width: g.sector_width() as u16,
            sector_height: g.sector_height() as u16,
            frame_id,
            x_start: x_start as u16,
            y_start: y_start as u16,
            x_end: (x_start + g.block_width() - 1) as u16,
            y_end: (y_start + g.block_height() - 1) as u16,
            block_size: g.block_bytes() as u32,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::k2::{IS_GEOMETRY, SUMMIT_GEOMETRY};
    use proptest::prelude::*;

    fn datagram(g: &Geometry, h: &BlockHeader) -> Vec<u8> {
        let mut d = vec![0u8; g.block_bytes()];
        let mut hb = [0u8; HEADER_BYTES];
        h.encode(&mut hb);
        d[..HEADER_BYTES].copy_from_slice(&hb);
        d
    }

    #[test]
    fn every_field_at_its_offset() {
        let g = IS_GEOMETRY;
        let h = BlockHeader::for_block(&g, 0x0102_0304, 0x0A0B_0C0D, 240, 930, FLAG_SYNC);
        let d = datagram(&g, &h);
        assert_eq!(&d[0..4], &[0xFF, 0xFF, 0x00, 0x55]);
        assert_eq!(&d[4..8], &[0; 4]);
        assert_eq!((d[8], d[9]), (1, 1));
        assert_eq!(&d[16..20], &[0x0A, 0x0B, 0x0C, 0x0D]);
        assert_eq!(&d[20..24], &[0x01, 0x00, 0x07, 0x44]); // 256, 1860
        assert_eq!(&d[24..28], &[1, 2, 3, 4]);
        assert_eq!(&d[28..36], &[0, 240, 0x03, 0xA2, 0, 255, 0x07, 0x43]); // 240, 930, 255, 1859
        assert_eq!(&d[36..40], &[0, 0, 0x57, 0x58]);
        assert_eq!(BlockHeader::parse(&d, &g), Ok(h));
        assert!(h.sync());
    }

    #[test]
    fn rejects_each_kind_of_bad_header() {
        let g = IS_GEOMETRY;
        let good = BlockHeader::for_block(&g, 5, 0, 16, 0, 0);
        let d = datagram(&g, &good);
        assert_eq!(BlockHeader::parse(&d[..10], &g), Err(HeaderError::Truncated { len: 10 }));
        let mut bad = d.clone();
        bad[3] = 0x56;
        assert!(matches!(BlockHeader::parse(&bad, &g), Err(HeaderError::SyncWord { found: 0xFFFF_0056 })));
        assert!(matches!(BlockHeader::parse(&d[..100], &g), Err(HeaderError::Length { len: 100, .. })));
        let mut h = good;
        h.block_size = 0xC028;
        assert!(matches!(BlockHeader::parse(&datagram(&g, &h), &g), Err(HeaderError::BlockSize { .. })));
        assert!(matches!(BlockHeader::parse(&d[..d.len() - 1], &g), Err(HeaderError::Length { .. })));
        let mut h = good;
        h.sector_width = 512;
        assert!(matches!(BlockHeader::parse(&datagram(&g, &h), &g), Err(HeaderError::Geometry { .. })));
        for (xs, xe, ys, ye) in
            [(8, 23, 0, 929), (256, 271, 0, 929), (0, 15, 930, 1858), (0, 16, 0, 929), (0, 15, 1860, 2789)]
        {
            let mut h = good;
            (h.x_start, h.x_end, h.y_start, h.y_end) = (xs, xe, ys, ye);
            assert!(matches!(BlockHeader::parse(&datagram(&g, &h), &g), Err(HeaderError::Position { .. })), "{h:?}");
        }
        // A Summit block is not an IS block.
        let s = SUMMIT_GEOMETRY;
        let sh = BlockHeader::for_block(&s, 5, 0, 0, 0, 0);
        assert!(BlockHeader::parse(&datagram(&s, &sh), &g).is_err());
        assert!(BlockHeader::parse(&datagram(&s, &sh), &s).is_ok());
    }

    proptest! {
        #[test]
        fn encode_read_round_trip(version: u8, flags: u8, bc: u32, w: u16, hgt: u16, fid: u32, xs: u16, ys: u16, xe: u16, ye: u16, bs: u32) {
            let h = BlockHeader { version, flags, block_count: bc, sector_width: w, sector_height: hgt, frame_id: fid, x_start: xs, y_start: ys, x_end: xe, y_end: ye, block_size: bs };
            let mut b = [0u8; HEADER_BYTES];
            h.encode(&mut b);
            prop_assert_eq!(BlockHeader::read(&b), Ok(h));
        }

        #[test]
        fn parse_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
            let _ = BlockHeader::parse(&bytes, &IS_GEOMETRY);
            let _ = BlockHeader::parse(&bytes, &SUMMIT_GEOMETRY);
        }
    }
}
