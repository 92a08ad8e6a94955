//! What the region header records of the detector: the format's frame shape and streams, as plain numbers that
//! any process attaching (stages, consumers, Python) reads without knowing the detector.

use detector::Format;

/// The region header's description of detector format `format`: decoded frames, one block per datagram, one
/// socket per stream.
pub fn region_geometry(format: Format) -> shm_protocol::layout::Geometry {
    shm_protocol::layout::Geometry {
        mode: format.id(),
        frame_rows: format.rows() as u32,
        frame_cols: format.cols() as u32,
        bytes_per_pixel: format.pixel_type().bytes() as u32,
        blocks_per_frame: format.blocks_per_frame() as u32,
        max_datagram: format.max_datagram() as u32,
        sectors: format.streams() as u32,
        _reserved: 0,
    }
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
}
