//! The file's tree, NeXus (NXmx) style, built with libhdf5:
//!
//! ```text
//! /entry                          NX_class=NXentry; ringdaq_version, acquisition_id, frames_requested, ended, reason
//!   definition                    "NXmx"
//!   /data                         NX_class=NXdata, signal="data"
//!     data                        uint16 (frames, rows, cols), one frame per chunk
//!     frames_written              uint64 (1,): frames 0..this are in `data` (kept current while written)
//!     frame_id, complete, missing_blocks, first_block_ns, last_block_ns, published_ns   one value per frame
//!   /instrument                   NX_class=NXinstrument
//!     /detector                   NX_class=NXdetector; detector_mode, fill_value, sectors, blocks_per_frame;
//!                                 full_frame_shape, placement, part_sectors, detector_sectors (`crate::placement`)
//!   /counters                     NX_class=NXcollection; one uint64 attribute per pipeline counter
//! ```
//!
//! Nothing records a time of its own (libhdf5's object times are off), so the same steps give the same bytes.
//! The per-frame datasets, the counters and how the acquisition ended are written when the file is finished,
//! from what the sidecar holds ([`Description`]).

use std::path::Path;

use hdf5::types::VarLenUnicode;
use hdf5::{Dataset, File, Group, H5Type, Location};

use super::raw;
use crate::format::{FrameShape, Plan, ReadBack};
use crate::sidecar::Sidecar;

/// What the file says of its acquisition beyond the frames (given at finish; see `FormatFile::describe`).
#[derive(Debug, Clone)]
pub(super) struct Description {
    /// The sidecar's content (per-frame metadata, counters, how it ended).
    pub sidecar: Sidecar,
    /// The detector mode (the region's geometry).
    pub detector_mode: u32,
}

/// Where libhdf5 put what the writer writes itself in a file without compression.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Places {
    /// File offset of frame 0's chunk; frame `i`'s is at `data + i × frame bytes` (page aligned).
    pub data: u64,
    /// File offset of `frames_written`'s one `u64`.
    pub written: u64,
}

/// libhdf5's error as an I/O error; a full disk stays one (libhdf5's file driver reports the errno in words),
/// so that it ends the acquisition as `disk_full`.
fn io(e: hdf5::Error) -> std::io::Error {
    let msg = e.to_string();
    let full = msg.contains("errno = 28,") || msg.contains("No space left on device");
    std::io::Error::new(if full { std::io::ErrorKind::StorageFull } else { std::io::ErrorKind::Other }, msg)
}

fn text_attr(loc: &Location, name: &str, value: &str) -> hdf5::Result<()> {
    let v: VarLenUnicode = value.parse().map_err(|e| hdf5::Error::Internal(format!("{name}: {e:?}")))?;
    loc.new_attr::<VarLenUnicode>().shape(()).create(name)?.write_scalar(&v)
}

fn num_attr<T: H5Type>(loc: &Location, name: &str, value: T) -> hdf5::Result<()> {
    loc.new_attr::<T>().shape(()).create(name)?.write_scalar(&value)
}

/// The groups and their classes; returns `/entry/data`.
fn groups(file: &File) -> hdf5::Result<Group> {
    let entry = raw::create_group(file, "entry")?;
    text_attr(&entry, "NX_class", "NXentry")?;
    let def: VarLenUnicode = "NXmx".parse().map_err(|e| hdf5::Error::Internal(format!("{e:?}")))?;
    entry.new_dataset::<VarLenUnicode>().shape(()).obj_track_times(false).create("definition")?.write_scalar(&def)?;
    let data = raw::create_group(&entry, "data")?;
    text_attr(&data, "NX_class", "NXdata")?;
    text_attr(&data, "signal", "data")?;
    let instrument = raw::create_group(&entry, "instrument")?;
    text_attr(&instrument, "NX_class", "NXinstrument")?;
    let detector = raw::create_group(&instrument, "detector")?;
    text_attr(&detector, "NX_class", "NXdetector")?;
    let counters = raw::create_group(&entry, "counters")?;
    text_attr(&counters, "NX_class", "NXcollection")?;
    Ok(data)
}

/// Creates the skeleton of a file without compression at `path` and returns where its frames and
/// `frames_written` are. `/entry/data/data` is chunked one frame a chunk, allocated at creation (early) and
/// never filled, of fixed shape: libhdf5 then uses its implicit chunk index, which places every chunk of the
/// dataset one after the other from one page-aligned block; this is checked, not assumed.
pub(super) fn create_uncompressed(path: &Path, plan: &Plan) -> std::io::Result<Places> {
    let file = raw::create_file(path).map_err(io)?;
    let data = groups(&file).map_err(io)?;
    let FrameShape { rows, cols } = plan.shape;
    let ds = data
        .new_dataset::<u16>()
        .shape([plan.frames as usize, rows as usize, cols as usize])
        .chunk([1, rows as usize, cols as usize])
        .alloc_time(Some(hdf5::dataset::AllocTime::Early))
        .fill_time(hdf5::dataset::FillTime::Never)
        .obj_track_times(false)
        .create("data")
        .map_err(io)?;
    let written = data
        .new_dataset::<u64>()
        .shape([1])
        .alloc_time(Some(hdf5::dataset::AllocTime::Early))
        .obj_track_times(false)
        .create("frames_written")
        .map_err(io)?;
    written.write_raw(&[0u64]).map_err(io)?;
    let places = Places {
        data: chunk_addr(&ds, 0)?,
        written: written.offset().ok_or_else(|| bad("frames_written has no offset"))?,
    };
    // The implicit index: chunk i at data + i × frame bytes, for the last chunk as for the first.
    if plan.frames > 1 {
        let last = plan.frames - 1;
        let want = places.data + last * plan.shape.frame_bytes();
        let got = chunk_addr(&ds, last)?;
        if got != want {
            return Err(bad(&format!("chunk {last} is at {got}, not {want}: the frames are not one block")));
        }
    }
    drop((ds, written, data));
    file.close().map_err(io)?;
    Ok(places)
}

fn bad(why: &str) -> std::io::Error {
    std::io::Error::other(format!("unexpected HDF5 layout: {why}"))
}

/// The file offset of chunk `index` of `ds` (chunks are in index order: one frame each).
fn chunk_addr(ds: &Dataset, index: u64) -> std::io::Result<u64> {
    let info = ds.chunk_info(index as usize).ok_or_else(|| bad(&format!("no chunk {index}")))?;
    if info.offset.first() != Some(&index) {
        return Err(bad(&format!("chunk {index} is at {:?}", info.offset)));
    }
    Ok(info.addr)
}

/// The per-frame datasets, counters and attributes of `d`, for `n` frames (`data` is `/entry/data`).
fn write_description(file: &File, data: &Group, n: u64, d: &Description) -> hdf5::Result<()> {
    let s = &d.sidecar;
    let n = n as usize;
    let mut frame_id = vec![0u32; n];
    let mut complete = vec![0u8; n];
    let mut missing = vec![0u32; n];
    let mut first = vec![0u64; n];
    let mut last = vec![0u64; n];
    let mut published = vec![0u64; n];
    for m in s.frame_list.iter().filter(|m| (m.index as usize) < n) {
        let i = m.index as usize;
        frame_id[i] = m.frame_id;
        complete[i] = u8::from(m.complete);
        missing[i] = m.missing_blocks;
        first[i] = m.first_block_ns;
        last[i] = m.last_block_ns;
        published[i] = m.published_ns;
    }
    fn column<T: H5Type>(g: &Group, name: &str, v: &[T]) -> hdf5::Result<()> {
        g.new_dataset::<T>().shape([v.len()]).obj_track_times(false).create(name)?.write_raw(v)
    }
    column(data, "frame_id", &frame_id)?;
    column(data, "complete", &complete)?;
    column(data, "missing_blocks", &missing)?;
    column(data, "first_block_ns", &first)?;
    column(data, "last_block_ns", &last)?;
    column(data, "published_ns", &published)?;
    let entry = file.group("entry")?;
    text_attr(&entry, "ringdaq_version", env!("CARGO_PKG_VERSION"))?;
    num_attr(&entry, "acquisition_id", s.acquisition_id)?;
    num_attr(&entry, "frames_requested", s.frames_requested)?;
    text_attr(&entry, "ended", s.ended.map(|e| e.as_str()).unwrap_or("unknown"))?;
    text_attr(&entry, "reason", s.reason.as_deref().unwrap_or(""))?;
    let detector = file.group("entry/instrument/detector")?;
    num_attr(&detector, "detector_mode", d.detector_mode)?;
    num_attr(&detector, "fill_value", s.fill_value)?;
    // Where these frames lie in the whole detector's frame (a pipeline may take some of its sectors), for
    // `ringdaq stitch`.
    if let Some(p) = &s.placement {
        crate::placement::write_hdf5(&detector, p)?;
    }
    let counters = file.group("entry/counters")?;
    for (k, v) in &s.counters {
        num_attr(&counters, k, *v)?;
    }
    Ok(())
}

/// Finishes a file without compression: `frames_written` and the data's first dimension become `n`, and the
/// description is added. libhdf5 has the file open only for this.
pub(super) fn finish_uncompressed(path: &Path, n: u64, planned: u64, d: Option<&Description>) -> std::io::Result<()> {
    let file = raw::open_file(path, true).map_err(io)?;
    let data = file.group("entry/data").map_err(io)?;
    let ds = data.dataset("data").map_err(io)?;
    if n != planned {
        let shape = ds.shape();
        ds.resize([n as usize, shape[1], shape[2]]).map_err(io)?;
    }
    data.dataset("frames_written").and_then(|w| w.write_raw(&[n])).map_err(io)?;
    if let Some(d) = d {
        write_description(&file, &data, n, d).map_err(io)?;
    }
    drop((ds, data));
    file.close().map_err(io)
}

/// Writes a whole compressed file at `path` (truncating): the tree, `/entry/data/data` of `n` frames whose
/// chunk `i` is `chunk(i)` as stored (filter 32008 with `cd`; `None`: never written, it reads as zeros), and the
/// description.
pub(super) fn write_compressed(
    path: &Path,
    shape: FrameShape,
    n: u64,
    filter: (u32, &[u32]),
    mut chunk: impl FnMut(u64) -> std::io::Result<Option<Vec<u8>>>,
    d: Option<&Description>,
) -> std::io::Result<()> {
    let file = raw::create_file(path).map_err(io)?;
    let data = groups(&file).map_err(io)?;
    let ds = raw::create_filtered_u16(
        &data,
        "data",
        &[n, shape.rows, shape.cols],
        &[1, shape.rows, shape.cols],
        filter.0,
        filter.1,
    )
    .map_err(io)?;
    for i in 0..n {
        if let Some(bytes) = chunk(i)? {
            raw::write_chunk(&ds, &[i, 0, 0], &bytes).map_err(io)?;
        }
    }
    let written = data.new_dataset::<u64>().shape([1]).obj_track_times(false).create("frames_written").map_err(io)?;
    written.write_raw(&[n]).map_err(io)?;
    if let Some(d) = d {
        write_description(&file, &data, n, d).map_err(io)?;
    }
    drop((ds, written, data));
    file.close().map_err(io)
}

/// Reads `/entry/data/data` of the file at `path` (decoding bslz4 chunks with [`bslz4::decompress`]).
pub(super) fn read(path: &Path) -> Result<ReadBack, Box<dyn std::error::Error>> {
    let file = raw::open_file(path, false)?;
    let ds = file.dataset("entry/data/data")?;
    let shape: [u64; 3] = match ds.shape()[..] {
        [f, r, c] => [f as u64, r as u64, c as u64],
        ref other => return Err(format!("shape {other:?}").into()),
    };
    if ds.dtype()?.size() != 2 {
        return Err("not uint16 pixels".into());
    }
    let compressed =
        ds.dcpl()?.get_filters()?.iter().any(
            |f| matches!(f, hdf5::filters::Filter::User(id, _) if u32::try_from(*id).ok() == Some(bslz4::FILTER_ID)),
        );
    if !compressed {
        return Ok(ReadBack { shape, pixels: ds.read_raw::<u16>()? });
    }
    let frame_px = (shape[1] * shape[2]) as usize;
    let mut pixels = vec![0u16; shape[0] as usize * frame_px];
    let mut bytes = vec![0u8; frame_px * 2];
    for (i, out) in pixels.chunks_exact_mut(frame_px.max(1)).enumerate() {
        if let Some(chunk) = raw::read_chunk(&ds, &[i as u64, 0, 0])? {
            bslz4::decompress(&chunk, 2, &mut bytes)?;
            for (p, b) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *p = u16::from_le_bytes([b[0], b[1]]);
            }
        }
    }
    Ok(ReadBack { shape, pixels })
}
