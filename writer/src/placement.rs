//! Where a file's frames lie in the whole detector's frame, as every output records it: in the JSON sidecar
//! (`placement`) and, in an HDF5 file, as attributes of `/entry/instrument/detector` ([`write_hdf5`],
//! [`read_hdf5`]), from which `ringdaq stitch` puts the parts of several pipelines back together.
//!
//! A pipeline that takes the whole detector records one rectangle, the frame. One that takes some of its streams
//! (`ringdaq run --sectors 0-3`) records the rectangles of its part: rows `row .. row + rows` and columns
//! `col .. col + cols` of a frame in the file are rows `full_row ..` and columns `full_col ..` of the whole frame.

use serde::{Deserialize, Serialize};

/// HDF5 attribute: `[rows, cols]` of the whole detector's frame (u64).
pub const ATTR_FULL_SHAPE: &str = "full_frame_shape";
/// HDF5 attribute: the rectangles, `n × 6` u64, each `[row, col, full_row, full_col, rows, cols]`.
pub const ATTR_PLACEMENT: &str = "placement";
/// HDF5 attribute: the detector's streams (sectors, modules) the file holds (u32, ascending).
pub const ATTR_SECTORS: &str = "part_sectors";
/// HDF5 attribute: how many streams the whole detector has (u64).
pub const ATTR_DETECTOR_SECTORS: &str = "detector_sectors";
/// The group that holds them (NeXus `NXdetector`).
pub const DETECTOR_GROUP: &str = "/entry/instrument/detector";

/// Where a file's frames lie in the whole detector's frame: all of it, or, for a pipeline that takes some of the
/// detector's streams (`ringdaq run --sectors`), the rectangles of its part.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PartPlacement {
    /// Rows and columns of the whole detector's frame.
    pub full_shape: [u64; 2],
    /// Streams (sectors, modules) of the whole detector (0: not recorded).
    pub detector_streams: u64,
    /// The streams this file's pipeline took (empty: not recorded, the whole detector).
    pub streams: Vec<u32>,
    /// Rectangles `[row, col, full_row, full_col, rows, cols]`: rows `row .. row + rows` and columns
    /// `col .. col + cols` of a frame in this file are rows `full_row ..` and columns `full_col ..` of the whole
    /// frame.
    pub rects: Vec<[u64; 6]>,
}

impl From<&shm_protocol::pipeline::Placement> for PartPlacement {
    fn from(p: &shm_protocol::pipeline::Placement) -> Self {
        Self {
            full_shape: [p.full_rows.into(), p.full_cols.into()],
            detector_streams: p.detector_streams.into(),
            streams: p.streams(),
            rects: p.rect_numbers(),
        }
    }
}

/// Writes `p` as attributes of `group` (the file's `/entry/instrument/detector`).
pub fn write_hdf5(group: &hdf5::Group, p: &PartPlacement) -> hdf5::Result<()> {
    group.new_attr::<u64>().shape([2]).create(ATTR_FULL_SHAPE)?.write_raw(&p.full_shape[..])?;
    let flat: Vec<u64> = p.rects.iter().flatten().copied().collect();
    group.new_attr::<u64>().shape([p.rects.len(), 6]).create(ATTR_PLACEMENT)?.write_raw(&flat[..])?;
    group.new_attr::<u32>().shape([p.streams.len()]).create(ATTR_SECTORS)?.write_raw(&p.streams[..])?;
    group.new_attr::<u64>().shape(()).create(ATTR_DETECTOR_SECTORS)?.write_scalar(&p.detector_streams)?;
    Ok(())
}

/// Reads the placement written by [`write_hdf5`] from `group`; `None` if it has none (a file written before
/// placements were recorded, or not by ringdaq).
pub fn read_hdf5(group: &hdf5::Group) -> hdf5::Result<Option<PartPlacement>> {
    let names = group.attr_names()?;
    if !names.iter().any(|n| n == ATTR_PLACEMENT) || !names.iter().any(|n| n == ATTR_FULL_SHAPE) {
        return Ok(None);
    }
    let shape = group.attr(ATTR_FULL_SHAPE)?.read_raw::<u64>()?;
    let rects_attr = group.attr(ATTR_PLACEMENT)?;
    if shape.len() != 2 || rects_attr.shape().get(1) != Some(&6) {
        return Err(
            format!("{ATTR_FULL_SHAPE} {shape:?} or {ATTR_PLACEMENT} {:?} malformed", rects_attr.shape()).into()
        );
    }
    let flat = rects_attr.read_raw::<u64>()?;
    let rects = flat.chunks_exact(6).map(|r| [r[0], r[1], r[2], r[3], r[4], r[5]]).collect();
    let streams = match names.iter().any(|n| n == ATTR_SECTORS) {
        true => group.attr(ATTR_SECTORS)?.read_raw::<u32>()?,
        false => Vec::new(),
    };
    let detector_streams = match names.iter().any(|n| n == ATTR_DETECTOR_SECTORS) {
        true => group.attr(ATTR_DETECTOR_SECTORS)?.read_scalar::<u64>()?,
        false => 0,
    };
    Ok(Some(PartPlacement { full_shape: [shape[0], shape[1]], detector_streams, streams, rects }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_placement_round_trips_through_hdf5_attributes() {
        let dir = crate::conformance::TempDir::new("placement").unwrap();
        let path = dir.path().join("p.h5");
        let p = PartPlacement {
            full_shape: [1860, 2048],
            detector_streams: 8,
            streams: vec![0, 2, 3],
            rects: vec![[0, 0, 0, 0, 1860, 256], [0, 256, 0, 512, 1860, 512]],
        };
        {
            let f = hdf5::File::create(&path).unwrap();
            let g =
                f.create_group("entry").unwrap().create_group("instrument").unwrap().create_group("detector").unwrap();
            assert_eq!(read_hdf5(&g).unwrap(), None);
            write_hdf5(&g, &p).unwrap();
        }
        let f = hdf5::File::open(&path).unwrap();
        assert_eq!(read_hdf5(&f.group(DETECTOR_GROUP).unwrap()).unwrap(), Some(p));
    }
}
