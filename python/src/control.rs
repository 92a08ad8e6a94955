//! `Control`: the supervisor's control socket from Python (the requests `ringdaq acquire`, `stop`, `status`
//! and `shutdown` send), and the CLI's runtime directory defaults.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use pyo3::prelude::*;
use pyo3::types::PyDict;
use shm_protocol::control::{Connection, Received};
use shm_protocol::messages::{AcquisitionStatus, CONTINUOUS, Compression, Reply, Request, StatusReport, SyncMode};
use shm_protocol::pipeline::client::{self, ClientError};

use crate::ControlError;

/// The runtime directory the `ringdaq` command uses without `--runtime-dir`: `$RINGDAQ_RUNTIME_DIR`, else
/// `$XDG_RUNTIME_DIR/ringdaq`, else `/tmp/ringdaq-<uid>`.
#[pyfunction]
pub(crate) fn default_runtime_dir() -> PathBuf {
    client::resolve_runtime_dir(None)
}

/// A client error as one line: what failed and why.
fn message(e: ClientError) -> String {
    match std::error::Error::source(&e) {
        Some(cause) => format!("{e}: {cause}"),
        None => e.to_string(),
    }
}

/// A connection to the supervisor in `runtime_dir`, past the hello.
pub(crate) fn connect(runtime_dir: &Path) -> Result<Connection, String> {
    client::connect(runtime_dir).map_err(message)
}

/// Sends a request and returns the reply; an `Error` reply becomes an error.
pub(crate) fn call(conn: &mut Connection, req: &Request) -> Result<Received<Reply>, String> {
    client::call(conn, req).map_err(message)
}

/// How long a request that answers once its change is done (`stop`) may take: longer than the supervisor's
/// own 30 s bound, so that its error, which says what is not done, arrives.
const CHANGE_TIMEOUT: Duration = Duration::from_secs(60);

fn acquisition_dict<'py>(py: Python<'py>, s: &AcquisitionStatus) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("id", s.id)?;
    d.set_item("path", (!s.path.is_empty()).then_some(&s.path))?;
    d.set_item("live_only", s.path.is_empty())?;
    d.set_item("state", s.state.as_str())?;
    d.set_item("over", s.state.is_over())?;
    d.set_item("frames", (!s.continuous).then_some(s.frames))?;
    d.set_item("continuous", s.continuous)?;
    d.set_item("assigned", s.assigned)?;
    d.set_item("written", s.written)?;
    d.set_item("complete", s.complete)?;
    d.set_item("error", &s.error)?;
    d.set_item("ended", s.ended.map(|e| e.as_str()))?;
    d.set_item("reason", &s.reason)?;
    Ok(d)
}

fn status_dict<'py>(py: Python<'py>, s: &StatusReport) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("pid", s.pid)?;
    d.set_item("uptime_s", s.uptime_s)?;
    d.set_item("mode", &s.mode)?;
    let stages = s
        .stages
        .iter()
        .map(|st| {
            let x = PyDict::new(py);
            x.set_item("name", &st.name)?;
            x.set_item("state", st.state.as_str())?;
            x.set_item("pid", st.pid)?;
            x.set_item("restarts", st.restarts)?;
            x.set_item("last_exit", &st.last_exit)?;
            Ok(x)
        })
        .collect::<PyResult<Vec<_>>>()?;
    d.set_item("stages", stages)?;
    let counters = PyDict::new(py);
    for (k, v) in &s.counters {
        counters.set_item(k, v)?;
    }
    d.set_item("counters", counters)?;
    let rates = PyDict::new(py);
    for (k, v) in &s.rates {
        rates.set_item(k, v)?;
    }
    d.set_item("rates", rates)?;
    d.set_item("frame_ring_slots", s.frame_ring_slots)?;
    d.set_item("frame_ring_used", s.frame_ring_used)?;
    d.set_item("block_ring_slots", s.block_ring_slots)?;
    d.set_item("block_ring_used", s.block_ring_used)?;
    let acqs = s.acquisitions.iter().map(|a| acquisition_dict(py, a)).collect::<PyResult<Vec<_>>>()?;
    d.set_item("acquisitions", acqs)?;
    Ok(d)
}

/// The control socket of the pipeline in `runtime_dir` (None: the CLI's default): arm, stop and query
/// acquisitions, read the pipeline's status. Each call is one short connection, as the CLI makes; errors
/// raise `ControlError` with the supervisor's message.
#[pyclass(module = "ringdaq._ringdaq", frozen)]
pub(crate) struct Control {
    runtime_dir: PathBuf,
}

impl Control {
    fn request(&self, py: Python<'_>, req: Request, timeout: Option<Duration>) -> PyResult<Reply> {
        let dir = self.runtime_dir.clone();
        py.detach(move || {
            let mut conn = connect(&dir)?;
            if let Some(t) = timeout {
                conn.set_recv_timeout(Some(t)).map_err(|e| e.to_string())?;
            }
            call(&mut conn, &req).map(|r| r.msg)
        })
        .map_err(ControlError::new_err)
    }

    fn status_of(&self, py: Python<'_>, id: u64) -> PyResult<AcquisitionStatus> {
        match self.request(py, Request::Acquisition { id }, None)? {
            Reply::Acquisition(s) => Ok(s),
            other => Err(ControlError::new_err(format!("unexpected reply {other:?}"))),
        }
    }
}

#[pymethods]
impl Control {
    #[new]
    #[pyo3(signature = (runtime_dir = None))]
    fn new(runtime_dir: Option<PathBuf>) -> Self {
        Self { runtime_dir: client::resolve_runtime_dir(runtime_dir.as_deref()) }
    }

    /// The runtime directory.
    #[getter]
    fn runtime_dir(&self) -> PathBuf {
        self.runtime_dir.clone()
    }

    /// Arms an acquisition of `frames` frames (None: until `stop()`) into `path` (a `.npy` or `.h5` file, the
    /// extension chooses; relative to the current directory), or, without `path`, a live-only acquisition: its frames get acquisition ids and
    /// indices for consumers (and are gated by lossless ones), and nothing is written. `sync`: "immediate"
    /// (frame 0 is the first frame after arming) or "flag" (the first frame with the detector's sync flag).
    /// `compression`: "none" or "bslz4" (bitshuffle + LZ4, `.h5` only). Returns the acquisition's id.
    #[pyo3(signature = (frames = None, path = None, sync = "immediate", compression = "none"))]
    fn acquire(
        &self,
        py: Python<'_>,
        frames: Option<u64>,
        path: Option<PathBuf>,
        sync: &str,
        compression: &str,
    ) -> PyResult<u64> {
        let compression = match compression {
            "none" => Compression::None,
            "bslz4" => Compression::Bslz4,
            other => {
                return Err(pyo3::exceptions::PyValueError::new_err(format!(
                    "compression must be \"none\" or \"bslz4\", not {other:?}"
                )));
            }
        };
        let sync = match sync {
            "immediate" => SyncMode::Immediate,
            "flag" => SyncMode::Flag,
            other => {
                return Err(pyo3::exceptions::PyValueError::new_err(format!(
                    "sync must be \"immediate\" or \"flag\", not {other:?}"
                )));
            }
        };
        let path = match path {
            None => String::new(),
            Some(p) if p.is_absolute() => p.display().to_string(),
            Some(p) => std::env::current_dir()
                .map_err(|e| ControlError::new_err(format!("the current directory: {e}")))?
                .join(p)
                .display()
                .to_string(),
        };
        match self.request(
            py,
            Request::Acquire { frames: frames.unwrap_or(CONTINUOUS), path, sync, compression },
            None,
        )? {
            Reply::Armed { id } => Ok(id),
            other => Err(ControlError::new_err(format!("unexpected reply to acquire: {other:?}"))),
        }
    }

    /// Ends the running acquisition; returns once it is over (its file, if any, final).
    fn stop(&self, py: Python<'_>) -> PyResult<()> {
        self.request(py, Request::Stop, Some(CHANGE_TIMEOUT)).map(|_| ())
    }

    /// The state of acquisition `id`, as a dict: id, path (None: live-only), live_only, state, over, frames
    /// (None: continuous), continuous, assigned, written, complete, error, ended, reason.
    fn acquisition<'py>(&self, py: Python<'py>, id: u64) -> PyResult<Bound<'py, PyDict>> {
        let s = self.status_of(py, id)?;
        acquisition_dict(py, &s)
    }

    /// Waits at most `timeout` seconds (None: without limit) until acquisition `id` is over; its final state (as
    /// `acquisition`). Raises `TimeoutError` if it is not over by then.
    #[pyo3(signature = (id, timeout = None))]
    fn wait<'py>(&self, py: Python<'py>, id: u64, timeout: Option<f64>) -> PyResult<Bound<'py, PyDict>> {
        let deadline = timeout.map(|t| Instant::now() + Duration::from_secs_f64(t.max(0.0)));
        loop {
            let s = self.status_of(py, id)?;
            if s.state.is_over() {
                return acquisition_dict(py, &s);
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(pyo3::exceptions::PyTimeoutError::new_err(format!(
                    "acquisition {id} is still {} ({} of {} frames assigned)",
                    s.state.as_str(),
                    s.assigned,
                    if s.continuous { "unlimited".to_string() } else { s.frames.to_string() }
                )));
            }
            py.detach(|| std::thread::sleep(Duration::from_millis(20)));
            py.check_signals()?;
        }
    }

    /// The pipeline's state as a dict: pid, uptime_s, mode, stages, counters, rates, ring use, acquisitions.
    fn status<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        match self.request(py, Request::Status, None)? {
            Reply::Status(s) => status_dict(py, &s),
            other => Err(ControlError::new_err(format!("unexpected reply to status: {other:?}"))),
        }
    }

    /// Stops the pipeline cleanly.
    fn shutdown(&self, py: Python<'_>) -> PyResult<()> {
        self.request(py, Request::Shutdown, None).map(|_| ())
    }

    fn __repr__(&self) -> String {
        format!("<ringdaq.Control {}>", self.runtime_dir.display())
    }
}
