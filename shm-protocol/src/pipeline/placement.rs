//! Where a pipeline's frames lie in the whole detector's frame, as plain numbers in the region, so that the
//! writer (which knows no detector) records it in every file and a part's files can be stitched into whole
//! frames.
//!
//! A pipeline that takes all of a detector's streams writes whole frames: one rectangle, the frame. A pipeline
//! that takes some (`ringdaq run --sectors 0-3`) writes frames of their pixels only; each rectangle says which
//! pixels of the part's frame are which pixels of the whole frame. Written once by the region's creator.

use std::mem::size_of;

/// Most rectangles a placement holds (one per stream at worst: a K2 has 8 sectors, a JUNGFRAU up to 8 modules).
pub const MAX_PLACED: usize = 32;

/// Rows `row .. row + rows` and columns `col .. col + cols` of a part's frame are rows `full_row ..` and columns
/// `full_col ..` of the whole detector's frame.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct PlacedRect {
    /// First row in the part's frame.
    pub row: u32,
    /// First column in the part's frame.
    pub col: u32,
    /// First row in the whole frame.
    pub full_row: u32,
    /// First column in the whole frame.
    pub full_col: u32,
    /// Rows.
    pub rows: u32,
    /// Columns.
    pub cols: u32,
    /// Reserved, zero.
    pub _reserved: [u32; 2],
}

/// A pipeline's part of the detector. All zero (as in a region made without one): the frames are whole.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Placement {
    /// Rows of the whole detector's frame.
    pub full_rows: u32,
    /// Columns of the whole detector's frame.
    pub full_cols: u32,
    /// Streams (ports) of the whole detector.
    pub detector_streams: u32,
    /// Valid entries of `rects`.
    pub count: u32,
    /// Bit `s` set: the pipeline takes the detector's stream `s` (on `port_base + s`).
    pub stream_mask: u64,
    /// Reserved, zero.
    pub _reserved: u64,
    /// The rectangles.
    pub rects: [PlacedRect; MAX_PLACED],
}

const _: () = {
    assert!(size_of::<PlacedRect>() == 32);
    assert!(size_of::<Placement>() == 32 + 32 * MAX_PLACED);
};

impl Default for Placement {
    fn default() -> Self {
        bytemuck::Zeroable::zeroed()
    }
}

/// Why a placement cannot be recorded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlacementError {
    /// More rectangles than the record holds.
    #[error("{0} rectangles; a placement holds at most {MAX_PLACED}")]
    TooMany(usize),
    /// A dimension does not fit 32 bits.
    #[error("a dimension of the placement exceeds 32 bits")]
    TooLarge,
}

/// One rectangle as plain numbers: `[row, col, full_row, full_col, rows, cols]`.
pub type RectNumbers = [u64; 6];

impl Placement {
    /// A placement of `rects` (`[row, col, full_row, full_col, rows, cols]` each) in a whole frame of
    /// `full_rows × full_cols`, the detector having `detector_streams` streams of which the pipeline takes those
    /// in `stream_mask`.
    pub fn new(
        full_rows: u64,
        full_cols: u64,
        detector_streams: u64,
        stream_mask: u64,
        rects: &[RectNumbers],
    ) -> Result<Self, PlacementError> {
        if rects.len() > MAX_PLACED {
            return Err(PlacementError::TooMany(rects.len()));
        }
        let n = |v: u64| u32::try_from(v).map_err(|_| PlacementError::TooLarge);
        let mut p = Self {
            full_rows: n(full_rows)?,
            full_cols: n(full_cols)?,
            detector_streams: n(detector_streams)?,
            count: rects.len() as u32,
            stream_mask,
            ..Self::default()
        };
        for (out, r) in p.rects.iter_mut().zip(rects) {
            *out = PlacedRect {
                row: n(r[0])?,
                col: n(r[1])?,
                full_row: n(r[2])?,
                full_col: n(r[3])?,
                rows: n(r[4])?,
                cols: n(r[5])?,
                _reserved: [0; 2],
            };
        }
        Ok(p)
    }

    /// Whether anything was recorded (a region made without a placement has none: its frames are whole).
    pub fn is_recorded(&self) -> bool {
        self.count > 0
    }

    /// The recorded placement, or, if none was, that of whole frames of `rows × cols`.
    pub fn or_whole(&self, rows: u64, cols: u64) -> Self {
        if self.is_recorded() {
            return *self;
        }
        let whole = [[0, 0, 0, 0, rows, cols]];
        Self::new(rows, cols, 0, 0, &whole).unwrap_or_default()
    }

    /// The valid rectangles.
    pub fn rects(&self) -> &[PlacedRect] {
        &self.rects[..(self.count as usize).min(MAX_PLACED)]
    }

    /// The valid rectangles as plain numbers, `[row, col, full_row, full_col, rows, cols]` each.
    pub fn rect_numbers(&self) -> Vec<RectNumbers> {
        self.rects().iter().map(|r| [r.row, r.col, r.full_row, r.full_col, r.rows, r.cols].map(u64::from)).collect()
    }

    /// The detector's streams the pipeline takes, ascending.
    pub fn streams(&self) -> Vec<u32> {
        (0..64).filter(|s| self.stream_mask & (1 << s) != 0).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_placement_round_trips_and_defaults_to_whole_frames() {
        let p = Placement::new(1860, 2048, 8, 0xF0, &[[0, 0, 0, 1024, 1860, 1024]]).unwrap();
        assert_eq!(p.rect_numbers(), [[0, 0, 0, 1024, 1860, 1024]]);
        assert_eq!(p.streams(), [4, 5, 6, 7]);
        assert_eq!(p.or_whole(1, 1), p);
        let w = Placement::default().or_whole(1860, 2048);
        assert_eq!((w.full_rows, w.full_cols, w.rect_numbers()), (1860, 2048, vec![[0, 0, 0, 0, 1860, 2048]]));
        assert_eq!(Placement::new(1, 1, 1, 1, &[[0; 6]; 33]), Err(PlacementError::TooMany(33)));
        assert_eq!(Placement::new(1 << 32, 1, 1, 1, &[]), Err(PlacementError::TooLarge));
    }
}
