//! The simulator's pixel formula, so that any receiver can check every pixel it gets.
//!
//! ```text
//! pixel(frame_id, row, col) = splitmix64(((frame_id mod 8) << 32) | (row << 16) | col) & pixel_mask
//! ```
//!
//! `row` and `col` are frame coordinates (`col = 256·sector + column within the sector` in IS mode),
//! `pixel_mask` is `0x0FFF` for IS and `0xFFFF` for Summit, and `splitmix64` is the finaliser of Steele, Lea and
//! Flood's SplitMix64 (below). Values repeat every [`PATTERN_PERIOD`] frame ids so that the simulator can encode
//! the payloads once and send at the camera's rate; within a period every block of every frame differs.

use crate::mode::Geometry;

/// Pixel values repeat with this period in `frame_id`.
pub const PATTERN_PERIOD: u32 = 8;

/// SplitMix64's output function.
pub const fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The value the simulator sends for pixel `(row, col)` of the frame with id `frame_id`.
pub const fn pixel(g: &Geometry, frame_id: u32, row: usize, col: usize) -> u16 {
    let key = ((frame_id % PATTERN_PERIOD) as u64) << 32 | (row as u64) << 16 | col as u64;
    (splitmix64(key) as u16) & g.pixel_mask
}

/// The whole expected frame for `frame_id`, row-major.
pub fn expected_frame(g: &Geometry, frame_id: u32) -> Vec<u16> {
    let cols = g.frame_cols();
    let mut f = vec![0u16; g.frame_pixels()];
    for (r, row) in f.chunks_exact_mut(cols).enumerate() {
        for (c, p) in row.iter_mut().enumerate() {
            *p = pixel(g, frame_id, r, c);
        }
    }
    f
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mode::Mode;

    #[test]
    fn known_values() {
        let g = Mode::Is.geometry();
        assert_eq!(splitmix64(0), 0xE220_A839_7B1D_CDAF);
        assert_eq!(pixel(&g, 0, 0, 0), 0xDAF);
        assert_eq!(pixel(&g, 8, 0, 0), pixel(&g, 0, 0, 0));
        assert_ne!(pixel(&g, 1, 0, 0), pixel(&g, 0, 0, 0));
        assert!(expected_frame(&g, 3).iter().all(|&p| p <= 0x0FFF));
    }
}
