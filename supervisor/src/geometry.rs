//! What the region header records of the detector: the format's frame shape and streams, as plain numbers that
//! any process attaching (stages, consumers, Python) reads without knowing the detector.

use detector::{Format, View};
use shm_protocol::pipeline::{Placement, PlacementError};

/// The region header's description of detector format `format`: decoded frames, one block per datagram, one
/// socket per stream.
pub fn region_geometry(format: Format) -> shm_protocol::layout::Geometry {
    view_geometry(&View::whole(format))
}

/// The region header's description of a pipeline that takes the part `view` of its detector: the detector's
/// mode (the whole format's id), and the part's frames, blocks and streams (one socket each).
pub fn view_geometry(view: &View) -> shm_protocol::layout::Geometry {
    shm_protocol::layout::Geometry {
        mode: view.full().id(),
        frame_rows: view.rows() as u32,
        frame_cols: view.cols() as u32,
        bytes_per_pixel: view.pixel_type().bytes() as u32,
        blocks_per_frame: view.blocks_per_frame() as u32,
        max_datagram: view.max_datagram() as u32,
        sectors: view.streams() as u32,
        _reserved: 0,
    }
}

/// Where the part `view`'s frames lie in the detector's frame, as the region records it.
pub fn region_placement(view: &View) -> Result<Placement, PlacementError> {
    let p = view.placement();
    let rects: Vec<[u64; 6]> =
        p.rects.iter().map(|r| [r.row, r.col, r.full_row, r.full_col, r.rows, r.cols].map(|v| v as u64)).collect();
    Placement::new(p.full_rows as u64, p.full_cols as u64, view.full().streams() as u64, p.streams.mask(), &rects)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn k2_is_as_recorded_before_the_format_trait() {
        let g = region_geometry(detector::k2::IS);
        assert_eq!((g.mode, g.frame_rows, g.frame_cols, g.bytes_per_pixel), (1, 1860, 2048, 2));
        assert_eq!((g.blocks_per_frame, g.max_datagram, g.sectors), (256, 0x5758, 8));
        let s = region_geometry(detector::k2::SUMMIT);
        assert_eq!(
            (s.mode, s.frame_rows, s.frame_cols, s.blocks_per_frame, s.max_datagram),
            (2, 3840, 4096, 640, 0xC028)
        );
    }

    #[test]
    fn a_part_records_its_mode_its_frames_and_where_they_lie() {
        let is = detector::k2::IS;
        let v = View::new(is, detector::Streams::new(is.get(), &[4, 5, 6, 7]).unwrap()).unwrap();
        let g = view_geometry(&v);
        assert_eq!((g.mode, g.frame_rows, g.frame_cols, g.blocks_per_frame, g.sectors), (1, 1860, 1024, 128, 4));
        let p = region_placement(&v).unwrap();
        assert_eq!((p.full_rows, p.full_cols, p.detector_streams, p.stream_mask), (1860, 2048, 8, 0xF0));
        assert_eq!(p.rect_numbers(), [[0, 0, 0, 1024, 1860, 1024]]);
    }
}
