//! `RegionReader`: the region mapped read-only, frames read by sequence. For processes that are handed frame
//! references by a process that holds the subscription (LiberTEM's workers, handed `(seq, index)` by the main
//! process whose lossless subscription gates those frames): no consumer line, no gate, no connection kept.

use std::path::PathBuf;

use pyo3::buffer::PyUntypedBuffer;
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use shm_protocol::messages::{Reply, Request};
use shm_protocol::pipeline::{FRAME_PIXELS_OFFSET, FRAME_RING, FrameHeader, NO_INDEX};
use shm_protocol::{Access, Region};

use crate::{ControlError, FrameOverwritten};

/// What a copy writes into: the element type of the destination buffer.
#[derive(Debug, Clone, Copy)]
enum Dest {
    U16,
    U32,
    I32,
    U64,
    I64,
    F32,
    F64,
}

impl Dest {
    fn of(buf: &PyUntypedBuffer) -> PyResult<Self> {
        Ok(if buf.as_typed::<u16>().is_ok() {
            Self::U16
        } else if buf.as_typed::<f32>().is_ok() {
            Self::F32
        } else if buf.as_typed::<f64>().is_ok() {
            Self::F64
        } else if buf.as_typed::<u32>().is_ok() {
            Self::U32
        } else if buf.as_typed::<i32>().is_ok() {
            Self::I32
        } else if buf.as_typed::<u64>().is_ok() {
            Self::U64
        } else if buf.as_typed::<i64>().is_ok() {
            Self::I64
        } else {
            return Err(PyTypeError::new_err(format!(
                "cannot copy uint16 frames into a buffer of format {:?} (uint16, uint32, int32, uint64, int64, \
                 float32 or float64)",
                buf.format()
            )));
        })
    }
}

/// Converts `n` pixels at `src` into `dst`.
///
/// # Safety
/// `src` points at `n` readable u16, `dst` at `n` writable `T`, and the two do not overlap.
unsafe fn convert<T: From<u16>>(src: *const u16, dst: *mut T, n: usize) {
    // SAFETY: the caller's promise.
    let (s, d) = unsafe { (std::slice::from_raw_parts(src, n), std::slice::from_raw_parts_mut(dst, n)) };
    for (d, &s) in d.iter_mut().zip(s) {
        *d = T::from(s);
    }
}

/// The pipeline's region in `runtime_dir` (None: the CLI's default), mapped read-only once: frames read by
/// frame-ring sequence, copied (or converted) into numpy arrays. It takes no consumer line and holds nothing: a
/// frame stays readable only while something gates it (a lossless `Subscription` that has not released it);
/// every read checks that the slot still holds the sequence asked for, before and after the copy, and raises
/// `FrameOverwritten` if not.
#[pyclass(module = "ringdaq._ringdaq", frozen)]
pub(crate) struct RegionReader {
    region: Region,
    rows: usize,
    cols: usize,
    supervisor_pid: u32,
}

impl RegionReader {
    fn header(&self, seq: u64) -> PyResult<FrameHeader> {
        let ring = self.region.ring(FRAME_RING).map_err(|e| ControlError::new_err(e.to_string()))?;
        // SAFETY: a frame slot starts with its page-aligned FrameHeader (plain old data, any bit pattern valid),
        // inside the mapping `self` keeps; read volatile because the assembler may rewrite an ungated slot (the
        // stamp is checked around every use).
        let h = unsafe { std::ptr::read_volatile(ring.slot_ptr(seq).cast::<FrameHeader>()) };
        Ok(h)
    }

    fn check(&self, seq: u64, index: Option<u64>) -> PyResult<()> {
        let ring = self.region.ring(FRAME_RING).map_err(|e| ControlError::new_err(e.to_string()))?;
        if !ring.holds(seq) {
            return Err(FrameOverwritten::new_err(format!(
                "frame-ring sequence {seq} is not in the region (published: {}, {} slots): overwritten, or not \
                 published yet; frames stay only while a lossless subscription holds them",
                ring.published(),
                ring.slot_count()
            )));
        }
        if let Some(want) = index {
            let h = self.header(seq)?;
            if h.index != want {
                let got = if h.index == NO_INDEX { "no index".to_string() } else { format!("index {}", h.index) };
                return Err(FrameOverwritten::new_err(format!(
                    "frame-ring sequence {seq} holds {got} of acquisition {}, not index {want}",
                    h.acquisition_id
                )));
            }
        }
        Ok(())
    }

    /// Copies rows `rows` (all of them: None) of frames `seqs` into `out` (C-contiguous, writable,
    /// `len(seqs) × rows × cols` elements).
    fn copy(
        &self,
        py: Python<'_>,
        seqs: &[u64],
        indices: Option<&[u64]>,
        rows: Option<(usize, usize)>,
        out: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        let (r0, r1) = rows.unwrap_or((0, self.rows));
        if r0 >= r1 || r1 > self.rows {
            return Err(PyValueError::new_err(format!(
                "rows {r0}..{r1} are not a non-empty range within the frame's {} rows",
                self.rows
            )));
        }
        let buf = PyUntypedBuffer::get(out)?;
        if buf.readonly() {
            return Err(PyValueError::new_err("the destination array is read-only"));
        }
        if !buf.is_c_contiguous() {
            return Err(PyValueError::new_err("the destination array must be C-contiguous"));
        }
        let per = (r1 - r0) * self.cols;
        if buf.item_count() != seqs.len() * per {
            return Err(PyValueError::new_err(format!(
                "the destination holds {} elements; {} frames of {}×{} need {}",
                buf.item_count(),
                seqs.len(),
                r1 - r0,
                self.cols,
                seqs.len() * per
            )));
        }
        let dest = Dest::of(&buf)?;
        for (k, &seq) in seqs.iter().enumerate() {
            self.check(seq, indices.map(|i| i[k]))?;
        }
        let ring = self.region.ring(FRAME_RING).map_err(|e| ControlError::new_err(e.to_string()))?;
        let (dst, item) = (buf.buf_ptr() as usize, buf.item_size());
        let skip = r0 * self.cols * std::mem::size_of::<u16>();
        let srcs: Vec<usize> = seqs.iter().map(|&s| ring.slot_ptr(s) as usize + FRAME_PIXELS_OFFSET + skip).collect();
        // The copy runs without the GIL (a K2 IS frame is 7.6 MB: about a millisecond); `buf` keeps the
        // destination alive and `self` the mapping.
        py.detach(|| {
            for (k, &src) in srcs.iter().enumerate() {
                let (s, d) = (src as *const u16, dst + k * per * item);
                // SAFETY: `s` is row r0 of a frame slot's pixels (rows × cols u16, page aligned, inside the
                // mapping) and r0 + per / cols = r1 <= rows, checked above, so `per` u16 from `s` are in the slot;
                // `d` lies in the destination buffer, checked above to hold len(seqs) × per elements of the
                // type `dest` names; the region is mapped read-only, so they cannot overlap.
                unsafe {
                    match dest {
                        Dest::U16 => std::ptr::copy_nonoverlapping(s, d as *mut u16, per),
                        Dest::U32 => convert(s, d as *mut u32, per),
                        Dest::I32 => convert(s, d as *mut i32, per),
                        Dest::U64 => convert(s, d as *mut u64, per),
                        Dest::I64 => convert(s, d as *mut i64, per),
                        Dest::F32 => convert(s, d as *mut f32, per),
                        Dest::F64 => convert(s, d as *mut f64, per),
                    }
                }
            }
        });
        // Overwritten during the copy? Then the copy is not that frame.
        for (k, &seq) in seqs.iter().enumerate() {
            self.check(seq, indices.map(|i| i[k]))?;
        }
        Ok(())
    }
}

#[pymethods]
impl RegionReader {
    #[new]
    #[pyo3(signature = (runtime_dir = None))]
    fn new(py: Python<'_>, runtime_dir: Option<PathBuf>) -> PyResult<Self> {
        let dir = runtime_dir.unwrap_or_else(crate::control::default_runtime_dir);
        let (region, supervisor_pid) = py
            .detach(|| {
                let mut conn = crate::control::connect(&dir)?;
                let pid = conn.peer().pid as u32;
                let r = crate::control::call(&mut conn, &Request::MapRegion)?;
                let fd = match r.msg {
                    Reply::Region => r.fds.into_iter().next().ok_or("no descriptor came with the region")?,
                    other => return Err(format!("unexpected reply {other:?}")),
                };
                let region = Region::attach(fd, Access::ReadOnly).map_err(|e| e.to_string())?;
                region.ring(FRAME_RING).map_err(|e| e.to_string())?;
                Ok::<_, String>((region, pid))
            })
            .map_err(ControlError::new_err)?;
        let g = region.header().geometry;
        Ok(Self { rows: g.frame_rows as usize, cols: g.frame_cols as usize, region, supervisor_pid })
    }

    /// (rows, cols) of a frame.
    #[getter]
    fn shape(&self) -> (usize, usize) {
        (self.rows, self.cols)
    }

    /// Pid of the supervisor whose region this is (a restarted pipeline has another region: map it again).
    #[getter]
    fn supervisor_pid(&self) -> u32 {
        self.supervisor_pid
    }

    /// Whether the region still holds frame-ring sequence `seq`.
    fn holds(&self, seq: u64) -> bool {
        self.region.ring(FRAME_RING).is_ok_and(|r| r.holds(seq))
    }

    /// `(acquisition_id, index or None, complete)` of the frame at `seq`; raises `FrameOverwritten` if the
    /// region no longer holds it.
    fn frame_info(&self, seq: u64) -> PyResult<(u64, Option<u64>, bool)> {
        self.check(seq, None)?;
        let h = self.header(seq)?;
        self.check(seq, None)?;
        Ok((h.acquisition_id, (h.index != NO_INDEX).then_some(h.index), h.is_complete()))
    }

    /// Copies frame `seq` into `out` (a writable, C-contiguous (rows, cols) array of uint16, uint32, int32,
    /// uint64, int64, float32 or float64), or into a new uint16 array; returns it. With `index`, also checks
    /// that the frame is that index of its acquisition. Raises `FrameOverwritten` if the slot does not hold
    /// `seq` (before or after the copy).
    #[pyo3(signature = (seq, out = None, index = None))]
    fn read<'py>(
        &self,
        py: Python<'py>,
        seq: u64,
        out: Option<Bound<'py, PyAny>>,
        index: Option<u64>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let out = match out {
            Some(o) => o,
            None => py.import("numpy")?.call_method1("empty", ((self.rows, self.cols), "uint16"))?,
        };
        let idx = index.map(|i| [i]);
        self.copy(py, &[seq], idx.as_ref().map(|i| &i[..]), None, &out)?;
        Ok(out)
    }

    /// Copies frames `seqs` into `out`, a writable C-contiguous array of `len(seqs) × rows × cols` elements
    /// (e.g. (n, rows, cols)), converting to its dtype; with `indices`, checks each frame's index too; with
    /// `rows=(start, stop)`, only those rows of each frame (`out` then holds `len(seqs) × (stop - start) ×
    /// cols`: a band of a tile that fits a cache). One call for a whole tile, the GIL released during the copy.
    #[pyo3(signature = (seqs, out, indices = None, rows = None))]
    fn read_many(
        &self,
        py: Python<'_>,
        seqs: Vec<u64>,
        out: &Bound<'_, PyAny>,
        indices: Option<Vec<u64>>,
        rows: Option<(usize, usize)>,
    ) -> PyResult<()> {
        if indices.as_ref().is_some_and(|i| i.len() != seqs.len()) {
            return Err(PyValueError::new_err("seqs and indices differ in length"));
        }
        self.copy(py, &seqs, indices.as_deref(), rows, out)
    }

    fn __repr__(&self) -> String {
        format!("<ringdaq.RegionReader frames {}x{} (supervisor pid {})>", self.rows, self.cols, self.supervisor_pid)
    }
}
