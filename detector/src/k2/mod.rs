//! The Gatan K2 family: IS and Summit modes.
//!
//! Each of eight sectors sends UDP datagrams, one block of pixels each, to its own port. [`header`] parses and
//! validates the 40-byte block header, [`decode`] turns payloads into u16 pixels placed in a frame (portable and
//! AVX2), [`geometry`] holds the checked geometry of a mode. [`K2`] puts them behind
//! [`crate::format::DetectorFormat`]. [`gatan`] writes and reads Gatan's raw recording layout (eight sector
//! files and a `.gtg` tag file).

pub mod decode;
pub mod gatan;
pub mod geometry;
pub mod header;

use std::sync::Arc;

use crate::format::{BlockInfo, BlockMeta, DetectorFormat, Format, FormatError, InvalidReason, PixelType};
use crate::subset::{Rect, Streams};
use decode::{Decoder, Implementation, PlaceError};
use geometry::{Geometry, HEADER_BYTES, PixelEncoding, SECTORS};
use header::{BlockHeader, FLAG_SYNC, HeaderError, REASONS};

/// Unwraps a geometry at compile time (a bad constant fails the build, never a run).
const fn checked(g: Result<Geometry, geometry::GeometryError>) -> Geometry {
    match g {
        Ok(g) => g,
        Err(_) => panic!("inconsistent K2 geometry"),
    }
}

/// K2 IS: 12-bit pixels packed two in three bytes; 2048 × 1860 frames at 400 frames/s.
pub const IS_GEOMETRY: Geometry = checked(Geometry::new(SECTORS, 0x5758, 256, 1860, 16, 930, PixelEncoding::Packed12));
/// Summit: big-endian u16 pixels; 4096 × 3840 frames.
pub const SUMMIT_GEOMETRY: Geometry = checked(Geometry::new(SECTORS, 0xC028, 512, 3840, 32, 768, PixelEncoding::U16Be));

/// A K2 mode as a detector format.
#[derive(Debug)]
pub struct K2 {
    name: &'static str,
    id: u32,
    description: &'static str,
    g: Geometry,
}

const IS_FORMAT: K2 =
    K2 { name: "is", id: 1, description: "Gatan K2 IS: 8 sectors, 12-bit packed pixels, 2048 × 1860", g: IS_GEOMETRY };
const SUMMIT_FORMAT: K2 = K2 {
    name: "summit",
    id: 2,
    description: "Gatan K2 Summit: 8 sectors, big-endian u16 pixels, 4096 × 3840",
    g: SUMMIT_GEOMETRY,
};

/// K2 IS (config name `"is"`, region id 1).
pub const IS: Format = Format::new(&IS_FORMAT);
/// K2 Summit (config name `"summit"`, region id 2).
pub const SUMMIT: Format = Format::new(&SUMMIT_FORMAT);

impl K2 {
    /// The mode's geometry.
    pub const fn geometry(&self) -> &Geometry {
        &self.g
    }

    fn reason(e: HeaderError) -> InvalidReason {
        InvalidReason::new(e.index(), e.reason())
    }
}

/// Reason for a datagram from a stream (sector) the camera does not have: counted as `geometry`, as ever.
const NO_SUCH_SECTOR: InvalidReason = InvalidReason::new(4, REASONS[4]);

impl DetectorFormat for K2 {
    fn name(&self) -> &'static str {
        self.name
    }

    fn id(&self) -> u32 {
        self.id
    }

    fn description(&self) -> &'static str {
        self.description
    }

    fn rows(&self) -> usize {
        self.g.frame_rows()
    }

    fn cols(&self) -> usize {
        self.g.frame_cols()
    }

    fn pixel_type(&self) -> PixelType {
        PixelType::U16
    }

    fn pixel_mask(&self) -> u16 {
        self.g.pixel_mask()
    }

    fn streams(&self) -> usize {
        self.g.sectors()
    }

    fn blocks_per_frame(&self) -> usize {
        self.g.blocks_per_frame()
    }

    fn max_datagram(&self) -> usize {
        self.g.block_bytes()
    }

    fn invalid_reasons(&self) -> &'static [&'static str] {
        REASONS
    }

    fn classify(&self, stream: usize, datagram: &[u8]) -> Result<BlockInfo, InvalidReason> {
        let h = BlockHeader::parse(datagram, &self.g).map_err(Self::reason)?;
        if stream >= self.g.sectors() {
            return Err(NO_SUCH_SECTOR);
        }
        let index = self.g.block_index(stream, usize::from(h.x_start), usize::from(h.y_start));
        Ok(BlockInfo { frame_id: h.frame_id, index, sync: h.sync() })
    }

    fn decode_frame(&self, blocks: &[Option<&[u8]>], frame: &mut [u16], fill: u16) -> Result<(), FormatError> {
        Decoder::detect().decode_frame_at(&self.g, blocks, HEADER_BYTES, frame, fill).map_err(|e| match e {
            PlaceError::Blocks { found, expected } => FormatError::Blocks { found, expected },
            PlaceError::Frame { found, expected } => FormatError::Size { what: "frame", found, expected },
            PlaceError::Payload { found, expected } => {
                FormatError::Size { what: "datagram", found: found + HEADER_BYTES, expected: expected + HEADER_BYTES }
            }
            PlaceError::Sector(s) => FormatError::Block { block: s, blocks: self.g.sectors() },
            PlaceError::Position => FormatError::Block { block: 0, blocks: self.g.blocks_per_frame() },
        })
    }

    fn decoder(&self) -> &'static str {
        match Decoder::detect().implementation() {
            Implementation::Portable => "portable",
            Implementation::Avx2 => "avx2",
        }
    }

    fn header_bytes(&self) -> usize {
        HEADER_BYTES
    }

    fn payload_bytes(&self, _block: usize) -> usize {
        self.g.payload_bytes()
    }

    fn encode_header(&self, meta: &BlockMeta, out: &mut [u8]) -> Result<(), FormatError> {
        let g = &self.g;
        if meta.block >= g.blocks_per_frame() {
            return Err(FormatError::Block { block: meta.block, blocks: g.blocks_per_frame() });
        }
        let Some(out) = out.get_mut(..HEADER_BYTES).and_then(|o| <&mut [u8; HEADER_BYTES]>::try_from(o).ok()) else {
            return Err(FormatError::Size { what: "header buffer", found: out.len(), expected: HEADER_BYTES });
        };
        let per = g.blocks_per_sector();
        let (_, x, y) = g.block_location(meta.block);
        // The camera's running block counter: blocks per sector × frames before, plus the block's place in its
        // sector's order (comparable across sectors).
        let count = (meta.frame_seq as u32).wrapping_mul(per as u32).wrapping_add((meta.block % per) as u32);
        let flags = if meta.sync { FLAG_SYNC } else { 0 };
        BlockHeader::for_block(g, meta.frame_id, count, x, y, flags).encode(out);
        Ok(())
    }

    fn encode_payload(&self, block: usize, frame: &[u16], out: &mut [u8]) -> Result<(), FormatError> {
        let g = &self.g;
        if block >= g.blocks_per_frame() {
            return Err(FormatError::Block { block, blocks: g.blocks_per_frame() });
        }
        if frame.len() != g.frame_pixels() {
            return Err(FormatError::Size { what: "frame", found: frame.len(), expected: g.frame_pixels() });
        }
        if out.len() < g.payload_bytes() {
            return Err(FormatError::Size { what: "payload buffer", found: out.len(), expected: g.payload_bytes() });
        }
        let (s, x, y) = g.block_location(block);
        let (w, rb, cols) = (g.block_width(), g.row_bytes(), g.frame_cols());
        for (r, dst) in out[..g.payload_bytes()].chunks_exact_mut(rb).enumerate() {
            let at = (y + r) * cols + s * g.sector_width() + x;
            let src = &frame[at..at + w];
            match g.encoding() {
                PixelEncoding::Packed12 => decode::pack12(src, dst),
                PixelEncoding::U16Be => decode::encode_u16be(src, dst),
            }
        }
        Ok(())
    }

    fn send_order(&self, i: usize) -> usize {
        // Sectors interleaved block by block: block 0 of sectors 0..8, then block 1, ...; each sector's blocks in
        // the camera's order (x descending, then the next band of rows).
        let s = self.g.sectors();
        (i % s) * self.g.blocks_per_sector() + i / s
    }

    fn stream_of(&self, block: usize) -> usize {
        block / self.g.blocks_per_sector()
    }

    fn corrupt(&self, reason: usize, header: &mut [u8], len: &mut usize) -> Result<(), FormatError> {
        if header.len() < HEADER_BYTES {
            return Err(FormatError::Size { what: "header", found: header.len(), expected: HEADER_BYTES });
        }
        match reason {
            0 => *len = HEADER_BYTES / 4, // truncated: shorter than a header
            1 => header[3] ^= 0x5A,       // sync word
            2 => header[36..40].copy_from_slice(&1u32.to_be_bytes()), // block_size
            3 => *len = HEADER_BYTES + self.g.payload_bytes() / 2, // a payload cut short
            4 => header[20..22].copy_from_slice(&(self.g.sector_width() as u16 + 1).to_be_bytes()), // sector width
            5 => header[28..30].copy_from_slice(&7u16.to_be_bytes()), // x_start off the block grid
            r => return Err(FormatError::Reason(r)),
        }
        Ok(())
    }

    fn stream_rect(&self, stream: usize) -> Option<Rect> {
        // Sector s is columns 256 s .. 256 (s + 1) (IS) of every row.
        let g = &self.g;
        (stream < g.sectors()).then(|| Rect {
            row: 0,
            col: stream * g.sector_width(),
            rows: g.sector_height(),
            cols: g.sector_width(),
        })
    }

    fn restrict(&self, streams: &Streams) -> Option<Arc<dyn DetectorFormat>> {
        // A block header names its position within its sector, not the sector (that is the port), so a part is
        // the same mode with fewer sectors side by side, in the order of the ports it binds.
        let g = &self.g;
        let part = Geometry::new(
            streams.len(),
            g.block_bytes(),
            g.sector_width(),
            g.sector_height(),
            g.block_width(),
            g.block_height(),
            g.encoding(),
        )
        .ok()?;
        Some(Arc::new(K2 { g: part, ..*self }))
    }

    fn sim_faults(&self) -> &'static [usize] {
        // A flipped sync word, a cut payload, a position off the grid: what a faulty network or device does.
        &[1, 3, 5]
    }
}
