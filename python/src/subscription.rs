//! `Subscription` and `Frame`: a subscription to the frame ring, and frames read in place.
//!
//! Locking: the consumer sits behind a read-write lock. Waiting for a frame (up to 100 ms at a time, the GIL
//! released) holds it for reading only; taking the frame that came holds it for writing for a few
//! microseconds. Releasing frames and reading counters need only reading, so another thread (a LiberTEM
//! dispatcher releasing what its workers are done with) never waits behind `next()`.

use std::collections::BTreeSet;
use std::ffi::{c_int, c_void};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use pyo3::exceptions::{PyBufferError, PyStopIteration};
use pyo3::ffi;
use pyo3::prelude::*;
use shm_protocol::consumer::{self, ConsumerError as Error, Delivery, FrameInfo};

use crate::{PipelineGone, to_py};

/// Which frames a lossless subscriber has released: the gate stands at `upto` (every sequence below it is
/// released); `pending` holds the sequences released above it, out of order, until the gap below them closes.
#[derive(Debug)]
struct Released {
    upto: u64,
    pending: BTreeSet<u64>,
}

/// The subscription and its mapping, shared by the Python `Subscription` and every `Frame` taken from it: the
/// mapping lives until the last of them is gone, so an array over a frame never outlives its memory.
pub(crate) struct Shared {
    sub: RwLock<consumer::Subscription>,
    released: Mutex<Released>,
    lossless: bool,
    rows: usize,
    cols: usize,
}

impl Shared {
    fn read(&self) -> RwLockReadGuard<'_, consumer::Subscription> {
        self.sub.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, consumer::Subscription> {
        self.sub.write().unwrap_or_else(|p| p.into_inner())
    }

    fn released(&self) -> MutexGuard<'_, Released> {
        self.released.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Marks `seqs` released; the gate advances over the contiguous released prefix, whatever the order the
    /// frames were released in. A no-op for a lossy subscription.
    fn release(&self, seqs: impl IntoIterator<Item = u64>) {
        if !self.lossless {
            return;
        }
        let mut r = self.released();
        let before = r.upto;
        for s in seqs {
            if s >= r.upto {
                r.pending.insert(s);
            }
        }
        loop {
            let next = r.upto;
            if !r.pending.remove(&next) {
                break;
            }
            r.upto += 1;
        }
        if r.upto > before {
            // Sent with the release state locked, so that two threads' releases reach the supervisor in order.
            self.read().release(r.upto);
        }
    }
}

/// A subscription to a running pipeline's frames.
///
/// `Subscription(runtime_dir=None, lossless=False)`; without `runtime_dir`, the CLI's default
/// (`default_runtime_dir()`). A lossy subscription never slows the pipeline and counts the frames it missed
/// (`missed`); a lossless one receives every frame and holds the pipeline until it releases them. Iterating
/// yields frames until the pipeline shuts down (releasing each frame when the next is taken); `next(timeout)`
/// waits at most `timeout` seconds. Use it as a context manager to unsubscribe at the end.
///
/// Every method takes the object shared (it is `frozen`): one thread may wait in `next()` while others release
/// frames or read `missed`.
#[pyclass(module = "ringdaq._ringdaq", frozen)]
pub(crate) struct Subscription {
    shared: Arc<Shared>,
    /// The frame handed out last by iteration, released when the next is taken.
    current: Mutex<Option<Py<Frame>>>,
    closed: AtomicBool,
}

impl Subscription {
    /// Releases the frame iteration handed out last.
    fn release_current(&self) {
        let prev = self.current.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(prev) = prev {
            prev.get().release();
        }
    }

    fn take(&self, py: Python<'_>, timeout: Option<Duration>) -> PyResult<Frame> {
        if self.closed.load(Ordering::Acquire) {
            return Err(PipelineGone::new_err("the subscription is closed"));
        }
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            // Wait in slices with the GIL released, so other threads run and Ctrl-C is seen; only a read lock
            // is held while waiting.
            let slice = match deadline {
                Some(d) => d.saturating_duration_since(Instant::now()).min(Duration::from_millis(100)),
                None => Duration::from_millis(100),
            };
            let shared = self.shared.clone();
            let got = py.detach(move || {
                shared.read().wait_frame(Some(slice))?;
                shared.write().next_info(Some(Duration::ZERO))
            });
            match got {
                Ok(info) => return Ok(Frame::new(self.shared.clone(), info)),
                Err(Error::Timeout) if deadline.is_none_or(|d| Instant::now() < d) => py.check_signals()?,
                Err(e) => return Err(to_py(e)),
            }
        }
    }
}

#[pymethods]
impl Subscription {
    #[new]
    #[pyo3(signature = (runtime_dir = None, lossless = false))]
    fn new(py: Python<'_>, runtime_dir: Option<PathBuf>, lossless: bool) -> PyResult<Self> {
        let runtime_dir = runtime_dir.unwrap_or_else(crate::control::default_runtime_dir);
        let delivery = if lossless { Delivery::Lossless } else { Delivery::Lossy };
        let sub = py.detach(|| consumer::Subscription::connect(&runtime_dir, delivery)).map_err(to_py)?;
        let (rows, cols) = sub.shape();
        let first = sub.next_seq();
        Ok(Self {
            shared: Arc::new(Shared {
                sub: RwLock::new(sub),
                released: Mutex::new(Released { upto: first, pending: BTreeSet::new() }),
                lossless,
                rows,
                cols,
            }),
            current: Mutex::new(None),
            closed: AtomicBool::new(false),
        })
    }

    /// The next frame, waiting at most `timeout` seconds (None: until one comes). Raises `Timeout`, or
    /// `PipelineGone` when the pipeline shut down.
    #[pyo3(signature = (timeout = None))]
    fn next(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<Frame> {
        let timeout = timeout.map(|t| Duration::from_secs_f64(t.max(0.0)));
        self.take(py, timeout)
    }

    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__(&self, py: Python<'_>) -> PyResult<Py<Frame>> {
        self.release_current();
        match self.take(py, None) {
            Ok(f) => {
                let f = Py::new(py, f)?;
                *self.current.lock().unwrap_or_else(|p| p.into_inner()) = Some(f.clone_ref(py));
                Ok(f)
            }
            Err(e) if e.is_instance_of::<PipelineGone>(py) => Err(PyStopIteration::new_err(())),
            Err(e) => Err(e),
        }
    }

    fn __enter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __exit__(
        &self,
        py: Python<'_>,
        _t: Option<Bound<'_, PyAny>>,
        _v: Option<Bound<'_, PyAny>>,
        _tb: Option<Bound<'_, PyAny>>,
    ) {
        self.close(py);
    }

    /// Ends the subscription: a lossless gate is dropped at once. Arrays already taken stay readable.
    fn close(&self, py: Python<'_>) {
        self.release_current();
        let shared = self.shared.clone();
        py.detach(move || shared.read().unsubscribe());
        self.closed.store(true, Ordering::Release);
    }

    /// Releases frames by sequence (an int or an iterable of ints), from any thread: for frames handed over
    /// with `Frame.keep()`. The gate advances over the contiguous prefix of released frames, in whatever order
    /// they were released. A no-op for a lossy subscription.
    fn release(&self, py: Python<'_>, seqs: &Bound<'_, PyAny>) -> PyResult<()> {
        let list: Vec<u64> = match seqs.extract::<u64>() {
            Ok(s) => vec![s],
            Err(_) => seqs.try_iter()?.map(|s| s?.extract::<u64>()).collect::<PyResult<_>>()?,
        };
        let shared = self.shared.clone();
        py.detach(move || shared.release(list));
        Ok(())
    }

    /// Sequences below this are released (lossless: where the gate stands).
    #[getter]
    fn released_upto(&self) -> u64 {
        self.shared.released().upto
    }

    /// Whether every frame is delivered (the subscription holds a gate).
    #[getter]
    fn lossless(&self) -> bool {
        self.shared.lossless
    }

    /// Frames missed so far (overwritten before this lossy subscription read them).
    #[getter]
    fn missed(&self) -> u64 {
        self.shared.read().missed()
    }

    /// (rows, cols) of a frame.
    #[getter]
    fn shape(&self) -> (usize, usize) {
        (self.shared.rows, self.shared.cols)
    }

    fn __repr__(&self) -> String {
        format!(
            "<ringdaq.Subscription {} frames {}x{}{}>",
            if self.shared.lossless { "lossless" } else { "lossy" },
            self.shared.rows,
            self.shared.cols,
            if self.closed.load(Ordering::Acquire) { " closed" } else { "" }
        )
    }
}

/// One frame in the pipeline's shared memory. `numpy.asarray(frame)` (or `frame.array`) is a read-only
/// `uint16` array of shape (rows, cols) over that memory, without a copy. For a lossless subscription it holds
/// this frame until the frame is released (`release()`, the next iteration step, or when the frame is garbage
/// collected); copy what must outlive that. For a lossy one the pipeline may overwrite it at any time: check
/// `valid()` after computing from it.
#[pyclass(module = "ringdaq._ringdaq", frozen)]
pub(crate) struct Frame {
    shared: Arc<Shared>,
    info: FrameInfo,
    /// Address of the first pixel in this process's mapping.
    pixels: usize,
    shape: [isize; 2],
    strides: [isize; 2],
    /// Released, or handed over (`keep`): dropping it releases nothing more.
    released: AtomicBool,
}

impl Frame {
    fn new(shared: Arc<Shared>, info: FrameInfo) -> Self {
        let pixels = shared.read().pixels(info.seq).as_ptr() as usize;
        let (rows, cols) = (shared.rows as isize, shared.cols as isize);
        Self { shared, info, pixels, shape: [rows, cols], strides: [cols * 2, 2], released: AtomicBool::new(false) }
    }
}

impl Drop for Frame {
    fn drop(&mut self) {
        self.release();
    }
}

#[pymethods]
impl Frame {
    /// The pixels as a read-only numpy array (rows, cols) of uint16 over the shared memory.
    #[getter]
    fn array<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        slf.py().import("numpy")?.call_method1("asarray", (slf,))
    }

    /// Lets the pipeline reuse this frame's slot (lossless subscriptions only; a no-op after `keep()`). The gate
    /// moves past it once every earlier frame is released too.
    fn release(&self) {
        if !self.released.swap(true, Ordering::AcqRel) {
            self.shared.release([self.info.seq]);
        }
    }

    /// Hands the frame's release over to the caller: this object no longer releases it (not even when garbage
    /// collected); `Subscription.release(seq)` does, from any thread. Returns the sequence.
    fn keep(&self) -> u64 {
        self.released.store(true, Ordering::Release);
        self.info.seq
    }

    /// Whether the memory still holds this frame (always, for a lossless subscription until released).
    fn valid(&self) -> bool {
        self.shared.read().holds(self.info.seq)
    }

    /// The frame-ring sequence number.
    #[getter]
    fn seq(&self) -> u64 {
        self.info.seq
    }

    /// The acquisition this frame belongs to (0: none).
    #[getter]
    fn acquisition_id(&self) -> u64 {
        self.info.acquisition_id()
    }

    /// The frame's index in its acquisition, or None.
    #[getter]
    fn index(&self) -> Option<u64> {
        self.info.index()
    }

    /// The detector's frame id.
    #[getter]
    fn frame_id(&self) -> u32 {
        self.info.frame_id()
    }

    /// Whether every block of the frame arrived.
    #[getter]
    fn complete(&self) -> bool {
        self.info.is_complete()
    }

    /// Kernel receive time of the frame's first block, ns since the Unix epoch.
    #[getter]
    fn first_block_ns(&self) -> u64 {
        self.info.header.first_block_ns
    }

    /// Kernel receive time of the frame's last block, ns since the Unix epoch.
    #[getter]
    fn last_block_ns(&self) -> u64 {
        self.info.header.last_block_ns
    }

    /// When the assembler published the frame, ns since the Unix epoch.
    #[getter]
    fn published_ns(&self) -> u64 {
        self.info.header.published_ns
    }

    /// Frames skipped just before this one (a lossy subscription fell behind).
    #[getter]
    fn missed_before(&self) -> u64 {
        self.info.missed_before
    }

    /// (rows, cols).
    #[getter]
    fn shape(&self) -> (usize, usize) {
        (self.shape[0] as usize, self.shape[1] as usize)
    }

    fn __repr__(&self) -> String {
        let i = self.info;
        format!(
            "<ringdaq.Frame seq {} frame_id {} acquisition {} index {:?} {}>",
            i.seq,
            i.frame_id(),
            i.acquisition_id(),
            i.index(),
            if i.is_complete() { "complete" } else { "incomplete" }
        )
    }

    /// The buffer protocol: read-only, 2-D, native `uint16` ("H"), C-contiguous.
    ///
    /// # Safety
    /// Called by Python with a valid `view` to fill.
    unsafe fn __getbuffer__(slf: Bound<'_, Self>, view: *mut ffi::Py_buffer, flags: c_int) -> PyResult<()> {
        if view.is_null() {
            return Err(PyBufferError::new_err("view is null"));
        }
        if flags & ffi::PyBUF_WRITABLE == ffi::PyBUF_WRITABLE {
            return Err(PyBufferError::new_err("frames are read-only"));
        }
        let f = slf.get();
        // SAFETY: `view` is non-null and Python's to fill. `buf` points at rows × cols u16 in the mapping, which
        // `f.shared` keeps alive, and the view keeps `f` alive through `obj` (a new reference). `shape` and
        // `strides` point into `f`, which does not move while referenced; readers do not write them.
        unsafe {
            (*view).buf = f.pixels as *mut c_void;
            (*view).len = f.shape[0] * f.shape[1] * 2;
            (*view).readonly = 1;
            (*view).itemsize = 2;
            (*view).format = if flags & ffi::PyBUF_FORMAT == ffi::PyBUF_FORMAT {
                c"H".as_ptr() as *mut _
            } else {
                std::ptr::null_mut()
            };
            (*view).ndim = 2;
            (*view).shape = f.shape.as_ptr() as *mut isize;
            (*view).strides = f.strides.as_ptr() as *mut isize;
            (*view).suboffsets = std::ptr::null_mut();
            (*view).internal = std::ptr::null_mut();
            (*view).obj = slf.into_ptr();
        }
        Ok(())
    }
}
