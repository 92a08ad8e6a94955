//! The geometry of a K2 mode: sectors, blocks and the payload's pixel encoding.
//!
//! [`Geometry`] is what the decoder's `unsafe` fast paths trust, so its fields are private and it is made only by
//! [`Geometry::new`], which refuses inconsistent values.

/// Number of sectors (UDP streams, one per port) of a K2 camera.
pub const SECTORS: usize = 8;

/// Size of a block header in bytes.
pub const HEADER_BYTES: usize = 40;

/// Most blocks across one band of a frame (all sectors): the whole-frame decoder keeps one band's blocks on the
/// stack (16 blocks across × 8 sectors in IS mode).
pub const MAX_BAND: usize = 256;

/// How pixels are encoded in a block's payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PixelEncoding {
    /// Two 12-bit pixels in three bytes `(f, m, l)`: `a = f | (m & 0x0F) << 8`, `b = (m >> 4) | l << 4`.
    Packed12,
    /// One big-endian u16 per pixel.
    U16Be,
}

impl PixelEncoding {
    /// Payload bytes of `pixels` pixels (`pixels` even for [`PixelEncoding::Packed12`]).
    pub const fn bytes(self, pixels: usize) -> usize {
        match self {
            PixelEncoding::Packed12 => pixels * 3 / 2,
            PixelEncoding::U16Be => pixels * 2,
        }
    }

    /// Largest pixel value (all bits of the encoding set).
    pub const fn pixel_mask(self) -> u16 {
        match self {
            PixelEncoding::Packed12 => 0x0FFF,
            PixelEncoding::U16Be => 0xFFFF,
        }
    }

    /// Significant bits of a pixel.
    pub const fn bits(self) -> u32 {
        match self {
            PixelEncoding::Packed12 => 12,
            PixelEncoding::U16Be => 16,
        }
    }
}

/// Why a set of geometry values is inconsistent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum GeometryError {
    /// A dimension is zero.
    #[error("a sector, block or sector count is zero")]
    Zero,
    /// The block does not tile the sector.
    #[error("blocks of {block_width}×{block_height} do not tile a {sector_width}×{sector_height} sector")]
    Tiling {
        /// Sector width.
        sector_width: usize,
        /// Sector height.
        sector_height: usize,
        /// Block width.
        block_width: usize,
        /// Block height.
        block_height: usize,
    },
    /// The datagram size is not a header plus the encoded pixels of one block.
    #[error("block of {block_bytes} bytes, expected {HEADER_BYTES} + {payload} for its pixels")]
    BlockBytes {
        /// Datagram size given.
        block_bytes: usize,
        /// Payload bytes the block's pixels take.
        payload: usize,
    },
    /// A size does not fit its header field (u16 sector dimensions, u32 block size) or the decoder's band.
    #[error("a dimension exceeds what the header or the decoder can hold")]
    TooLarge,
    /// A packed 12-bit row must hold whole pixel pairs.
    #[error("packed 12-bit blocks need an even block width")]
    OddWidth,
}

/// Everything that follows from a K2 mode. All sizes in pixels unless named `_bytes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    sectors: usize,
    block_bytes: usize,
    sector_width: usize,
    sector_height: usize,
    block_width: usize,
    block_height: usize,
    encoding: PixelEncoding,
}

impl Geometry {
    /// A checked geometry: blocks tile the sector, the datagram is a header plus exactly the block's encoded
    /// pixels, sector dimensions fit the header's u16 fields and one band fits the decoder's [`MAX_BAND`].
    pub const fn new(
        sectors: usize,
        block_bytes: usize,
        sector_width: usize,
        sector_height: usize,
        block_width: usize,
        block_height: usize,
        encoding: PixelEncoding,
    ) -> Result<Self, GeometryError> {
        if sectors == 0 || sector_width == 0 || sector_height == 0 || block_width == 0 || block_height == 0 {
            return Err(GeometryError::Zero);
        }
        if !sector_width.is_multiple_of(block_width) || !sector_height.is_multiple_of(block_height) {
            return Err(GeometryError::Tiling { sector_width, sector_height, block_width, block_height });
        }
        if matches!(encoding, PixelEncoding::Packed12) && !block_width.is_multiple_of(2) {
            return Err(GeometryError::OddWidth);
        }
        if sector_width > u16::MAX as usize || sector_height > u16::MAX as usize || block_bytes > u32::MAX as usize {
            return Err(GeometryError::TooLarge);
        }
        if (sector_width / block_width) * sectors > MAX_BAND {
            return Err(GeometryError::TooLarge);
        }
        let payload = encoding.bytes(block_width * block_height);
        if block_bytes != HEADER_BYTES + payload {
            return Err(GeometryError::BlockBytes { block_bytes, payload });
        }
        Ok(Self { sectors, block_bytes, sector_width, sector_height, block_width, block_height, encoding })
    }

    /// Sectors (UDP streams).
    pub const fn sectors(&self) -> usize {
        self.sectors
    }

    /// Datagram size (header + payload) = the header's `block_size`.
    pub const fn block_bytes(&self) -> usize {
        self.block_bytes
    }

    /// Sector width.
    pub const fn sector_width(&self) -> usize {
        self.sector_width
    }

    /// Sector height.
    pub const fn sector_height(&self) -> usize {
        self.sector_height
    }

    /// Block width.
    pub const fn block_width(&self) -> usize {
        self.block_width
    }

    /// Block height.
    pub const fn block_height(&self) -> usize {
        self.block_height
    }

    /// Pixel encoding of the payload.
    pub const fn encoding(&self) -> PixelEncoding {
        self.encoding
    }

    /// Largest pixel value (all bits of the encoding set).
    pub const fn pixel_mask(&self) -> u16 {
        self.encoding.pixel_mask()
    }

    /// Payload bytes of one block.
    pub const fn payload_bytes(&self) -> usize {
        self.block_bytes - HEADER_BYTES
    }

    /// Payload bytes of one block row.
    pub const fn row_bytes(&self) -> usize {
        self.encoding.bytes(self.block_width)
    }

    /// Blocks across one sector.
    pub const fn blocks_across(&self) -> usize {
        self.sector_width / self.block_width
    }

    /// Blocks down one sector.
    pub const fn blocks_down(&self) -> usize {
        self.sector_height / self.block_height
    }

    /// Blocks per sector per frame.
    pub const fn blocks_per_sector(&self) -> usize {
        self.blocks_across() * self.blocks_down()
    }

    /// Blocks per frame.
    pub const fn blocks_per_frame(&self) -> usize {
        self.blocks_per_sector() * self.sectors
    }

    /// Rows of a decoded frame.
    pub const fn frame_rows(&self) -> usize {
        self.sector_height
    }

    /// Columns of a decoded frame (sectors side by side).
    pub const fn frame_cols(&self) -> usize {
        self.sector_width * self.sectors
    }

    /// Pixels of a decoded frame.
    pub const fn frame_pixels(&self) -> usize {
        self.frame_rows() * self.frame_cols()
    }

    /// Bytes of a decoded frame (u16 pixels).
    pub const fn frame_bytes(&self) -> usize {
        self.frame_pixels() * 2
    }

    /// Index of a block within its frame, `0 .. blocks_per_frame`, from its sector and position: sector-major,
    /// then in the order the camera sends a sector's blocks (x descending within each band of rows).
    pub const fn block_index(&self, sector: usize, x_start: usize, y_start: usize) -> usize {
        let across = self.blocks_across();
        let bx = across - 1 - x_start / self.block_width;
        let by = y_start / self.block_height;
        sector * self.blocks_per_sector() + by * across + bx
    }

    /// Position `(x_start, y_start)` within its sector of the `i`-th block the camera sends for a sector.
    pub const fn block_position(&self, i: usize) -> (usize, usize) {
        let across = self.blocks_across();
        let x = (across - 1 - i % across) * self.block_width;
        let y = (i / across) * self.block_height;
        (x, y)
    }

    /// Sector and position `(sector, x_start, y_start)` of the block with [`Geometry::block_index`] `block`.
    pub const fn block_location(&self, block: usize) -> (usize, usize, usize) {
        let per = self.blocks_per_sector();
        let (x, y) = self.block_position(block % per);
        (block / per, x, y)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::k2::{IS_GEOMETRY, SUMMIT_GEOMETRY};

    #[test]
    fn geometry_matches_the_camera() {
        let g = IS_GEOMETRY;
        assert_eq!((g.payload_bytes(), g.blocks_per_sector(), g.blocks_per_frame()), (22320, 32, 256));
        assert_eq!((g.frame_rows(), g.frame_cols()), (1860, 2048));
        assert_eq!(g.payload_bytes(), g.block_width() * g.block_height() * 3 / 2);
        let s = SUMMIT_GEOMETRY;
        assert_eq!((s.payload_bytes(), s.blocks_per_sector(), s.frame_rows(), s.frame_cols()), (49152, 80, 3840, 4096));
        assert_eq!(s.payload_bytes(), s.block_width() * s.block_height() * 2);
    }

    #[test]
    fn block_order_round_trips() {
        for g in [IS_GEOMETRY, SUMMIT_GEOMETRY] {
            assert_eq!(g.block_position(0), (g.sector_width() - g.block_width(), 0));
            for i in 0..g.blocks_per_sector() {
                let (x, y) = g.block_position(i);
                assert_eq!(g.block_index(3, x, y), 3 * g.blocks_per_sector() + i);
                assert_eq!(g.block_location(3 * g.blocks_per_sector() + i), (3, x, y));
            }
        }
    }

    #[test]
    fn inconsistent_geometry_is_refused() {
        use PixelEncoding::*;
        assert_eq!(Geometry::new(8, 0x5758, 256, 1860, 16, 930, Packed12), Ok(IS_GEOMETRY));
        assert_eq!(Geometry::new(0, 0x5758, 256, 1860, 16, 930, Packed12), Err(GeometryError::Zero));
        assert!(matches!(Geometry::new(8, 0x5758, 256, 1860, 24, 930, Packed12), Err(GeometryError::Tiling { .. })));
        assert!(matches!(
            Geometry::new(8, 0x5757, 256, 1860, 16, 930, Packed12),
            Err(GeometryError::BlockBytes { .. })
        ));
        assert!(matches!(Geometry::new(8, 0x5758, 256, 1860, 16, 930, U16Be), Err(GeometryError::BlockBytes { .. })));
        assert_eq!(Geometry::new(8, 40 + 3 * 930 / 2, 255, 1860, 1, 930, Packed12), Err(GeometryError::OddWidth));
        assert_eq!(Geometry::new(8, 40 + 2 * 2 * 2, 70_000, 2, 2, 2, U16Be), Err(GeometryError::TooLarge));
        assert_eq!(Geometry::new(64, 40 + 2 * 2 * 3, 16, 2, 2, 2, Packed12), Err(GeometryError::TooLarge));
    }
}
