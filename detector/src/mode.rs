//! The detector's modes and the geometry each implies.

use serde::{Deserialize, Serialize};

/// Number of sectors (UDP streams, one per port) of a K2 camera.
pub const SECTORS: usize = 8;

/// Size of a block header in bytes.
pub const HEADER_BYTES: usize = 40;

/// The camera's readout mode; it fixes block size, geometry and pixel encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// K2 IS: 12-bit pixels packed two in three bytes; 2048 × 1860 frames at 400 frames/s.
    #[default]
    Is,
    /// Summit: big-endian u16 pixels; 4096 × 3840 frames.
    Summit,
}

/// How pixels are encoded in a block's payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PixelEncoding {
    /// Two 12-bit pixels in three bytes `(f, m, l)`: `a = f | (m & 0x0F) << 8`, `b = (m >> 4) | l << 4`.
    Packed12,
    /// One big-endian u16 per pixel.
    U16Be,
}

/// Everything that follows from a mode. All sizes in pixels unless named `_bytes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    /// The mode.
    pub mode: Mode,
    /// Datagram size (header + payload) = the header's `block_size`.
    pub block_bytes: usize,
    /// Sector width.
    pub sector_width: usize,
    /// Sector height.
    pub sector_height: usize,
    /// Block width.
    pub block_width: usize,
    /// Block height.
    pub block_height: usize,
    /// Pixel encoding of the payload.
    pub encoding: PixelEncoding,
    /// Largest pixel value (all bits of the encoding set).
    pub pixel_mask: u16,
}

impl Mode {
    /// The geometry of this mode.
    pub const fn geometry(self) -> Geometry {
        match self {
            Mode::Is => Geometry {
                mode: self,
                block_bytes: 0x5758,
                sector_width: 256,
                sector_height: 1860,
                block_width: 16,
                block_height: 930,
                encoding: PixelEncoding::Packed12,
                pixel_mask: 0x0FFF,
            },
            Mode::Summit => Geometry {
                mode: self,
                block_bytes: 0xC028,
                sector_width: 512,
                sector_height: 3840,
                block_width: 32,
                block_height: 768,
                encoding: PixelEncoding::U16Be,
                pixel_mask: 0xFFFF,
            },
        }
    }

    /// Numeric id recorded in the shared region's header.
    pub const fn id(self) -> u32 {
        match self {
            Mode::Is => 1,
            Mode::Summit => 2,
        }
    }

    /// The mode for an id from [`Mode::id`].
    pub const fn from_id(id: u32) -> Option<Self> {
        match id {
            1 => Some(Mode::Is),
            2 => Some(Mode::Summit),
            _ => None,
        }
    }
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "is" => Ok(Mode::Is),
            "summit" => Ok(Mode::Summit),
            other => Err(format!("unknown mode {other:?} (expected \"is\" or \"summit\")")),
        }
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Mode::Is => "is",
            Mode::Summit => "summit",
        })
    }
}

impl Geometry {
    /// Payload bytes of one block.
    pub const fn payload_bytes(&self) -> usize {
        self.block_bytes - HEADER_BYTES
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
        self.blocks_per_sector() * SECTORS
    }

    /// Rows of a decoded frame.
    pub const fn frame_rows(&self) -> usize {
        self.sector_height
    }

    /// Columns of a decoded frame (sectors side by side).
    pub const fn frame_cols(&self) -> usize {
        self.sector_width * SECTORS
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn geometry_matches_the_camera() {
        let g = Mode::Is.geometry();
        assert_eq!((g.payload_bytes(), g.blocks_per_sector(), g.blocks_per_frame()), (22320, 32, 256));
        assert_eq!((g.frame_rows(), g.frame_cols()), (1860, 2048));
        assert_eq!(g.payload_bytes(), g.block_width * g.block_height * 3 / 2);
        let s = Mode::Summit.geometry();
        assert_eq!((s.payload_bytes(), s.blocks_per_sector(), s.frame_rows(), s.frame_cols()), (49152, 80, 3840, 4096));
        assert_eq!(s.payload_bytes(), s.block_width * s.block_height * 2);
    }

    #[test]
    fn block_order_round_trips() {
        for m in [Mode::Is, Mode::Summit] {
            let g = m.geometry();
            assert_eq!(g.block_position(0), (g.sector_width - g.block_width, 0));
            for i in 0..g.blocks_per_sector() {
                let (x, y) = g.block_position(i);
                assert_eq!(g.block_index(3, x, y), 3 * g.blocks_per_sector() + i);
            }
        }
    }
}
