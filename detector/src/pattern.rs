//! The simulator's pixel formula, so that any receiver can check every pixel it gets.
//!
//! ```text
//! pixel(frame_id, row, col) = splitmix64(((frame_id mod 8) << 32) | (row << 16) | col) & pixel_mask
//! ```
//!
//! `row` and `col` are frame coordinates (`col = 256·sector + column within the sector` in K2 IS mode),
//! `pixel_mask` is the format's ([`DetectorFormat::pixel_mask`]: `0x0FFF` for IS and `0xFFFF` for Summit), and
//! `splitmix64` is the finaliser of Steele, Lea and Flood's SplitMix64 (below). Values repeat every
//! [`PATTERN_PERIOD`] frame ids so that the simulator can encode the payloads once and send at the camera's rate;
//! within a period every block of every frame differs.

use crate::format::DetectorFormat;

/// Pixel values repeat with this period in `frame_id`.
pub const PATTERN_PERIOD: u32 = 8;

/// SplitMix64's output function.
pub const fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The value the simulator sends for pixel `(row, col)` of the frame with id `frame_id`, for a detector whose
/// pixels have mask `pixel_mask`.
pub const fn pixel_masked(pixel_mask: u16, frame_id: u32, row: usize, col: usize) -> u16 {
    let key = ((frame_id % PATTERN_PERIOD) as u64) << 32 | (row as u64) << 16 | col as u64;
    (splitmix64(key) as u16) & pixel_mask
}

/// The value the simulator sends for pixel `(row, col)` of the frame with id `frame_id`.
pub fn pixel(f: &dyn DetectorFormat, frame_id: u32, row: usize, col: usize) -> u16 {
    pixel_masked(f.pixel_mask(), frame_id, row, col)
}

/// The whole expected frame for `frame_id`, row-major.
pub fn expected_frame(f: &dyn DetectorFormat, frame_id: u32) -> Vec<u16> {
    let (cols, mask) = (f.cols(), f.pixel_mask());
    let mut out = vec![0u16; f.frame_pixels()];
    for (r, row) in out.chunks_exact_mut(cols).enumerate() {
        for (c, p) in row.iter_mut().enumerate() {
            *p = pixel_masked(mask, frame_id, r, c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::k2::IS;

    #[test]
    fn known_values() {
        assert_eq!(splitmix64(0), 0xE220_A839_7B1D_CDAF);
        assert_eq!(pixel(&*IS, 0, 0, 0), 0xDAF);
        assert_eq!(pixel(&*IS, 8, 0, 0), pixel(&*IS, 0, 0, 0));
        assert_ne!(pixel(&*IS, 1, 0, 0), pixel(&*IS, 0, 0, 0));
        assert!(expected_frame(&*IS, 3).iter().all(|&p| p <= 0x0FFF));
    }
}
