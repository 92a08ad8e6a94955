"""`RingdaqConnection`: LiberTEM-live's `DetectorConnection` for a running ringdaq pipeline."""

from __future__ import annotations

import time
from pathlib import Path

from libertem_live.detectors.base.connection import DetectorConnection, PendingAcquisition
from libertem_live.detectors.base.controller import AcquisitionController

import ringdaq

SYNC_MODES = ("immediate", "flag")
COMPRESSIONS = ("none", "bslz4")


class RingdaqController(AcquisitionController):
    """How the connector arms an acquisition (active mode): `sync` ("immediate": frame 0 is the first frame
    after arming; "flag": the first frame with the detector's sync flag, for scan sync), `output` (a path the
    pipeline writes as well, `.npy` or `.h5`; None: live-only, nothing written) and `compression` of an `.h5`
    ("none" or "bslz4")."""

    def __init__(self, sync: str = "immediate", output: str | Path | None = None, compression: str = "none"):
        if sync not in SYNC_MODES:
            raise ValueError(f"sync must be one of {SYNC_MODES}, not {sync!r}")
        if compression not in COMPRESSIONS:
            raise ValueError(f"compression must be one of {COMPRESSIONS}, not {compression!r}")
        self.sync = sync
        self.output = None if output is None else Path(output).absolute()
        self.compression = compression


class RingdaqPendingAcquisition(PendingAcquisition):
    """An acquisition armed by someone else (`ringdaq acquire`), found by
    `RingdaqConnection.wait_for_acquisition`; it holds the subscription taken before its first frame."""

    def __init__(self, acquisition_id: int, frames: int, subscription: ringdaq.Subscription):
        self.acquisition_id = acquisition_id
        self._frames = frames
        self.subscription = subscription

    @property
    def nimages(self) -> int:
        return self._frames


class RingdaqConnection(DetectorConnection):
    """A connection to the ringdaq pipeline in `runtime_dir` (None: the CLI's default,
    `ringdaq.default_runtime_dir()`). Use it as a context manager. Raises `ringdaq.ControlError` if no
    pipeline runs there."""

    def __init__(self, runtime_dir: str | Path | None = None):
        self.runtime_dir = Path(runtime_dir) if runtime_dir is not None else Path(ringdaq.default_runtime_dir())
        self.control = ringdaq.Control(self.runtime_dir)
        status = self.control.status()
        self.supervisor_pid: int = status["pid"]
        self.frame_ring_slots: int = status["frame_ring_slots"]
        self._closed = False

    def get_active_controller(self, sync: str = "immediate", output: str | Path | None = None,
                              compression: str = "none") -> RingdaqController:
        """How acquisitions made with this connection are armed (pass it as `controller=` to
        `ctx.make_acquisition`; see `RingdaqController`)."""
        return RingdaqController(sync=sync, output=output, compression=compression)

    def wait_for_acquisition(self, timeout: float | None = None) -> RingdaqPendingAcquisition | None:
        """Passive mode: waits at most `timeout` seconds (None: without limit) for an acquisition of a fixed
        number of frames to be armed by someone else (`ringdaq acquire`), subscribing first so that none of its
        frames is missed; None on timeout. An acquisition that already has frames when this looks is not
        taken (its first frames are gone)."""
        sub = ringdaq.Subscription(self.runtime_dir, lossless=True)
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            while deadline is None or time.monotonic() < deadline:
                # Frames that come meanwhile belong to no acquisition of ours: let them pass.
                try:
                    while True:
                        sub.next(timeout=0).release()
                except ringdaq.Timeout:
                    pass
                for a in self.control.status()["acquisitions"]:
                    if not a["over"] and a["assigned"] == 0 and not a["continuous"]:
                        pending = RingdaqPendingAcquisition(a["id"], a["frames"], sub)
                        sub = None
                        return pending
                time.sleep(0.02)
            return None
        finally:
            if sub is not None:
                sub.close()

    def get_acquisition_cls(self):
        from .acquisition import RingdaqAcquisition

        return RingdaqAcquisition

    def close(self):
        self._closed = True

    def __repr__(self) -> str:
        return f"<RingdaqConnection {self.runtime_dir}>"
