//! `ringdaq._ringdaq`: the Python face of [`shm_protocol::consumer`] and of the supervisor's control socket.
//!
//! - [`subscription`]: `Subscription` and `Frame`. Frames are exposed through the buffer protocol (read-only,
//!   2-D, `uint16`), so `numpy.asarray(frame)` is a view of the shared memory, not a copy.
//! - [`reader`]: `RegionReader`, a read-only mapping of the region that reads frames by sequence, for processes
//!   that hold no subscription of their own (LiberTEM's workers).
//! - [`control`]: `Control`, arming, stopping and querying acquisitions; the CLI's runtime directory defaults.
//!
//! The Python package (`ringdaq/__init__.py`) re-exports these names.

use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;
use shm_protocol::consumer::ConsumerError as Error;

mod control;
mod reader;
mod subscription;

create_exception!(ringdaq, ConsumerError, PyException, "A consumer operation failed.");
create_exception!(ringdaq, Refused, ConsumerError, "The pipeline refused the subscription, or is not there.");
create_exception!(ringdaq, Timeout, ConsumerError, "No frame arrived within the timeout.");
create_exception!(ringdaq, PipelineGone, ConsumerError, "The pipeline shut down, or the subscription was closed.");
create_exception!(
    ringdaq,
    FrameOverwritten,
    ConsumerError,
    "The frame asked for is no longer in the region (overwritten, or never published)."
);
create_exception!(ringdaq, ControlError, PyException, "The supervisor refused a command, or could not be reached.");

fn to_py(e: Error) -> PyErr {
    match e {
        Error::Timeout => Timeout::new_err("no frame within the timeout"),
        Error::Closed => PipelineGone::new_err("the pipeline is gone (or the subscription was closed)"),
        e @ (Error::Refused(_) | Error::Control { .. }) => Refused::new_err(e.to_string()),
        e => ConsumerError::new_err(e.to_string()),
    }
}

#[pymodule]
fn _ringdaq(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<subscription::Subscription>()?;
    m.add_class::<subscription::Frame>()?;
    m.add_class::<reader::RegionReader>()?;
    m.add_class::<control::Control>()?;
    m.add_function(wrap_pyfunction!(control::default_runtime_dir, m)?)?;
    let py = m.py();
    m.add("ConsumerError", py.get_type::<ConsumerError>())?;
    m.add("Refused", py.get_type::<Refused>())?;
    m.add("Timeout", py.get_type::<Timeout>())?;
    m.add("PipelineGone", py.get_type::<PipelineGone>())?;
    m.add("FrameOverwritten", py.get_type::<FrameOverwritten>())?;
    m.add("ControlError", py.get_type::<ControlError>())?;
    Ok(())
}
