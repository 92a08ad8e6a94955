"""`RingdaqAcquisition` (LiberTEM-live's `AcquisitionMixin` + LiberTEM's `DataSet`), its `TaskCommHandler`
and its live `Partition`.

The protocol between the main process and a worker, over the worker's request queue, per partition:
`BEGIN_TASK` (where the region is), then `FRAMES` messages of `(sequence, index)` references in index
order, then `END_PARTITION`. The worker copies each frame from the region into its tile and signals
`ringdaq.release` with the sequences it is done with; the main process's dispatcher thread releases them on
the lossless subscription.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Optional

import numpy as np
from libertem.common import Shape, Slice
from libertem.common.executor import JobCancelledError, TaskCommHandler, WorkerContext
from libertem.corrections.corrset import CorrectionSet
from libertem.io.dataset.base import BasePartition, DataSet, DataSetMeta, DataTile, Partition, TilingScheme
from libertem_live.detectors.base.acquisition import AcquisitionMixin
from libertem_live.hooks import Hooks, ReadyForDataEnv
from sparseconverter import CUDA, NUMPY, ArrayBackend

import ringdaq

from .connection import RingdaqConnection, RingdaqController, RingdaqPendingAcquisition

if TYPE_CHECKING:
    from libertem.common.executor import TaskProtocol, WorkerQueue

logger = logging.getLogger(__name__)

#: The topic workers signal released frames on.
RELEASE_TOPIC = "ringdaq.release"

#: The largest tile, bytes (see `RingdaqAcquisition.get_max_io_size`).
MAX_IO_BYTES = 128 * 2**20

#: How often (s) the main process, waiting for a frame, checks that the acquisition still runs and that every
#: worker lives.
CHECK_EVERY = 0.25


def _cancel(why: str) -> JobCancelledError:
    # LiberTEM turns this into `UDFRunCancelled` without the text: log it.
    logger.error("ringdaq: cancelling the run: %s", why)
    return JobCancelledError(why)


class _Feeder:
    """The main process's side of one acquisition: its lossless subscription, and the frames handed out."""

    def __init__(self, sub: ringdaq.Subscription, control: ringdaq.Control, acquisition_id: int, nframes: int,
                 chunk: int):
        self.sub = sub
        self.control = control
        self.acquisition_id = acquisition_id
        self.nframes = nframes
        self.chunk = chunk
        self.next_index = 0
        self.incomplete: list[int] = []
        self.closed = False

    def release(self, topic: str, msg: dict) -> None:
        # Runs on LiberTEM's dispatcher thread, while the main thread may wait in `sub.next()`.
        if not self.closed:
            self.sub.release(msg["seqs"])

    def _check(self, alive) -> None:
        if alive is not None and not alive():
            raise _cancel("a LiberTEM worker process died mid-acquisition")
        st = self.control.acquisition(self.acquisition_id)
        if st["over"] and st["assigned"] <= self.next_index:
            raise _cancel(
                f"ringdaq acquisition {self.acquisition_id} ended ({st['ended'] or st['state']}"
                f"{': ' + st['reason'] if st['reason'] else ''}{': ' + st['error'] if st['error'] else ''}) "
                f"after {st['assigned']} of {self.nframes} frames"
            )

    def refs(self, start: int, end: int, alive=None):
        """Yields lists of `(sequence, index)` for frames `start`..`end` - 1 of the acquisition, in order, as
        they come (a list is sent as soon as no further frame is waiting, so that frames never wait in this
        process for more to come: the frame ring holds few)."""
        if start != self.next_index:
            raise RuntimeError(f"partitions out of order: frame {self.next_index} is next, not {start}")
        batch: list[tuple[int, int]] = []
        last_check = time.monotonic()
        while self.next_index < end:
            try:
                f = self.sub.next(timeout=0 if batch else CHECK_EVERY)
            except ringdaq.Timeout:
                if batch:
                    yield batch
                    batch = []
                if time.monotonic() - last_check >= CHECK_EVERY:
                    self._check(alive)
                    last_check = time.monotonic()
                continue
            except ringdaq.PipelineGone:
                raise _cancel("the ringdaq pipeline shut down mid-acquisition")
            if f.acquisition_id != self.acquisition_id or f.index is None or f.index < self.next_index:
                f.release()  # not ours: let it pass
                continue
            if f.index != self.next_index:
                f.release()
                raise _cancel(
                    f"frame {self.next_index} of acquisition {self.acquisition_id} never came (frame {f.index} did)"
                )
            if not f.complete:
                self.incomplete.append(f.index)
            batch.append((f.keep(), f.index))
            self.next_index += 1
            if len(batch) >= self.chunk:
                yield batch
                batch = []
            if time.monotonic() - last_check >= CHECK_EVERY:
                if alive is not None and not alive():
                    raise _cancel("a LiberTEM worker process died mid-acquisition")
                last_check = time.monotonic()
        if batch:
            yield batch

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.sub.close()


class RingdaqCommHandler(TaskCommHandler):
    """Feeds each task's worker the references of its partition's frames, as they come."""

    def __init__(self, feeder: _Feeder, runtime_dir: str, supervisor_pid: int, alive=None):
        self._feeder = feeder
        self._runtime_dir = runtime_dir
        self._supervisor_pid = supervisor_pid
        self._alive = alive
        self.subscribe(RELEASE_TOPIC, feeder.release)

    def handle_task(self, task: "TaskProtocol", queue: "WorkerQueue"):
        p = task.get_partition()
        start = p.slice.origin[0]
        end = start + p.slice.shape[0]
        queue.put({"type": "BEGIN_TASK", "runtime_dir": self._runtime_dir, "supervisor_pid": self._supervisor_pid})
        try:
            for batch in self._feeder.refs(start, end, self._alive):
                queue.put({"type": "FRAMES", "refs": batch})
        finally:
            # The worker reads up to here whatever happened (it then finds fewer frames than its partition has).
            queue.put({"type": "END_PARTITION"})

    def start(self):
        pass

    def done(self):
        pass


# One mapping of the region per worker process (and per pipeline: a restarted supervisor has a new region).
_READERS: dict[tuple[str, int], ringdaq.RegionReader] = {}


def _reader(runtime_dir: str, supervisor_pid: int) -> ringdaq.RegionReader:
    key = (runtime_dir, supervisor_pid)
    r = _READERS.get(key)
    if r is None:
        r = ringdaq.RegionReader(runtime_dir)
        if r.supervisor_pid != supervisor_pid:
            raise RuntimeError(
                f"the ringdaq pipeline in {runtime_dir} was restarted (supervisor pid {r.supervisor_pid}, not "
                f"{supervisor_pid}) during the acquisition"
            )
        _READERS.clear()
        _READERS[key] = r
    return r


# The worker's tile buffer, kept from one partition to the next: a fresh one (8 K2 IS frames as float32 are
# 120 MB) would be faulted in page by page for every partition.
_BUFFER: list = []


def _tile_buffer(shape: tuple, dtype: np.dtype) -> np.ndarray:
    if _BUFFER and _BUFFER[0].dtype == dtype and _BUFFER[0].shape[1:] == shape[1:] and _BUFFER[0].shape[0] >= shape[0]:
        return _BUFFER[0][:shape[0]]
    _BUFFER.clear()
    _BUFFER.append(np.empty(shape, dtype=dtype))
    return _BUFFER[0]


class RingdaqLivePartition(Partition):
    """Frames `start_idx`..`end_idx` - 1 of a live acquisition, read from the region by the worker."""

    def __init__(self, start_idx: int, end_idx: int, partition_slice: Slice, meta: DataSetMeta):
        super().__init__(meta=meta, partition_slice=partition_slice, io_backend=None, decoder=None)
        self._start_idx = start_idx
        self._end_idx = end_idx
        self._corrections: CorrectionSet | None = None
        self._worker_context: WorkerContext | None = None

    def shape_for_roi(self, roi):
        return self.slice.adjust_for_roi(roi).shape

    @property
    def shape(self):
        return self.slice.shape

    @property
    def dtype(self):
        return self.meta.raw_dtype

    def set_corrections(self, corrections):
        self._corrections = corrections

    def set_worker_context(self, worker_context: WorkerContext):
        self._worker_context = worker_context

    def get_tiles(self, tiling_scheme: TilingScheme, dest_dtype="float32", roi=None,
                  array_backend: Optional[ArrayBackend] = None):
        if roi is not None:
            raise NotImplementedError("live ringdaq acquisitions do not support a region of interest")
        if array_backend not in (None, NUMPY, CUDA):
            raise ValueError(f"unsupported array backend {array_backend}")
        assert len(tiling_scheme) == 1, "full frames only"
        assert self._worker_context is not None, "no worker context: run with LiberTEM's pipelined executor"
        queue = self._worker_context.get_worker_queue()
        with queue.get() as (header, _):
            if header["type"] != "BEGIN_TASK":
                raise RuntimeError(f"expected BEGIN_TASK, got {header['type']}")
            reader = _reader(header["runtime_dir"], header["supervisor_pid"])
        total = self._end_idx - self._start_idx
        sig = tuple(tiling_scheme[0].shape)
        depth = total if tiling_scheme.intent == "partition" else min(tiling_scheme.depth, total)
        buf = _tile_buffer((depth,) + sig, np.dtype(dest_dtype))
        direct = True
        ident = f"ringdaq-worker-{os.getpid()}"
        filled, tile_start, got = 0, self._start_idx, 0
        while True:
            with queue.get() as (header, _):
                kind = header["type"]
                refs = header.get("refs")
            if kind == "END_PARTITION":
                break
            if kind != "FRAMES":
                raise RuntimeError(f"expected FRAMES or END_PARTITION, got {kind}")
            i = 0
            while i < len(refs):
                part = refs[i:i + depth - filled]
                seqs = [s for s, _ in part]
                dst = buf[filled:filled + len(part)]
                try:
                    if direct:
                        reader.read_many(seqs, dst, indices=[x for _, x in part])
                    else:
                        raise TypeError
                except TypeError:
                    # A dtype the reader does not convert to: through uint16.
                    direct = False
                    tmp = np.empty((len(part),) + sig, dtype=np.uint16)
                    reader.read_many(seqs, tmp, indices=[x for _, x in part])
                    dst[...] = tmp
                # Copied: the frames may go.
                self._worker_context.signal(ident, RELEASE_TOPIC, {"seqs": seqs})
                filled += len(part)
                got += len(part)
                i += len(part)
                if filled == depth:
                    yield self._tile(buf, filled, tile_start, sig)
                    tile_start += filled
                    filled = 0
        if filled:
            yield self._tile(buf, filled, tile_start, sig)
        if got != total:
            raise JobCancelledError(f"partition {self._start_idx}:{self._end_idx} got {got} of {total} frames")

    def _tile(self, buf: np.ndarray, n: int, start: int, sig: tuple) -> DataTile:
        data = buf[:n]
        tile_slice = Slice(origin=(start, 0, 0), shape=Shape((n,) + sig, sig_dims=2))
        if self._corrections is not None:
            self._corrections.apply(data, tile_slice)
        return DataTile(data, tile_slice=tile_slice, scheme_idx=0)

    def __repr__(self):
        return f"<RingdaqLivePartition {self._start_idx}:{self._end_idx}>"


class RingdaqAcquisition(AcquisitionMixin, DataSet):
    """A live acquisition from a ringdaq pipeline; make it with `LiveContext.make_acquisition(conn=conn,
    nav_shape=...)`.

    In active mode (no `pending_aq`) `start_acquisition` subscribes, arms an acquisition of prod(nav_shape)
    frames as `controller` says (`conn.get_active_controller(sync=..., output=...)`; default: immediate,
    live-only), then calls `hooks.on_ready_for_data` (the place to start the scan). In passive mode it takes
    the acquisition `conn.wait_for_acquisition()` found.

    After a run: `acquisition_id`, `status` (the pipeline's final account, as `ringdaq.Control.acquisition`),
    `incomplete_frames` (indices of frames processed with missing blocks, which hold the fill value).
    """

    def __init__(
        self,
        conn: RingdaqConnection,
        nav_shape: tuple[int, ...] | None = None,
        frames_per_partition: int | None = None,
        pending_aq: RingdaqPendingAcquisition | None = None,
        controller: RingdaqController | None = None,
        hooks: Hooks | None = None,
    ):
        if frames_per_partition is None:
            frames_per_partition = 128
        if pending_aq is not None and controller is not None:
            raise ValueError("got both an active `controller` and a pending acquisition; pass one")
        if pending_aq is None and controller is None:
            controller = conn.get_active_controller()
        super().__init__(
            conn=conn,
            nav_shape=nav_shape,
            frames_per_partition=frames_per_partition,
            controller=controller,
            pending_aq=pending_aq,
            hooks=hooks if hooks is not None else Hooks(),
        )
        self._conn: RingdaqConnection = conn
        self._meta: DataSetMeta | None = None
        self._feeder: _Feeder | None = None
        self._alive = None
        self.acquisition_id: int | None = None
        self.status: dict | None = None
        self.incomplete_frames: list[int] = []

    def initialize(self, executor) -> "RingdaqAcquisition":
        ""
        reader = ringdaq.RegionReader(self._conn.runtime_dir)
        self._sig_shape = reader.shape
        self._meta = DataSetMeta(
            shape=Shape(tuple(self._nav_shape) + tuple(self._sig_shape), sig_dims=2),
            array_backends=self.array_backends,
            raw_dtype=np.uint16,
            dtype=np.uint16,
        )
        # A worker that dies never releases its frames; the main process checks while it waits for frames.
        pool = getattr(executor, "_pool", None)
        if pool is not None and hasattr(pool, "all_alive"):
            self._alive = pool.all_alive
        return self

    @property
    def dtype(self):
        return self._meta.dtype

    @property
    def raw_dtype(self):
        return self._meta.raw_dtype

    @property
    def shape(self):
        return self._meta.shape

    @property
    def meta(self):
        return self._meta

    @property
    def array_backends(self) -> Sequence[ArrayBackend]:
        return (NUMPY, CUDA)

    def get_correction_data(self):
        ""
        return CorrectionSet()

    def check_valid(self):
        ""
        pass

    def need_decode(self, read_dtype, roi, corrections):
        ""
        return True

    def get_base_shape(self, roi):
        ""
        return (1, *self.meta.shape.sig)

    def get_max_io_size(self):
        ""
        # Tiles of several frames: a UDF then adds a tile's sum into its result once per tile rather than once
        # per frame. Measured for SumUDF on K2 IS frames (15 MB as float32): 4.6 ms a frame at depth 1, 2.6 ms
        # at 4, 2.1 ms at 8 (this limit gives 8). Frames are released as they are copied into a tile, so a
        # deeper tile holds no more of the frame ring.
        return MAX_IO_BYTES

    def start_acquisition(self):
        """Subscribes (lossless), arms the acquisition (active mode) and calls `hooks.on_ready_for_data`."""
        nframes = int(np.prod(self._nav_shape))
        control = self._conn.control
        if self._pending_aq is not None:
            if self._pending_aq.nimages != nframes:
                raise ValueError(f"nav_shape {self._nav_shape} has {nframes} positions; the acquisition "
                                 f"has {self._pending_aq.nimages} frames")
            sub = self._pending_aq.subscription
            acq = self._pending_aq.acquisition_id
        else:
            # Subscribed before arming: no frame of the acquisition can pass unseen.
            sub = ringdaq.Subscription(self._conn.runtime_dir, lossless=True)
            try:
                c = self._controller
                acq = control.acquire(nframes, None if c.output is None else str(c.output), c.sync)
            except BaseException:
                sub.close()
                raise
        chunk = max(1, min(32, self._conn.frame_ring_slots // 2))
        self._feeder = _Feeder(sub, control, acq, nframes, chunk)
        self.acquisition_id = acq
        self.status = None
        self.incomplete_frames = []
        logger.info("ringdaq acquisition %d armed: %d frames", acq, nframes)
        if self._pending_aq is None:
            try:
                self._hooks.on_ready_for_data(ReadyForDataEnv(aq=self))
            except BaseException:
                # LiveContext ends only what started: the armed acquisition and the gate must not stay behind.
                self.end_acquisition()
                raise

    def end_acquisition(self):
        """Ends the acquisition: one that did not hand out all its frames (a cancelled run, a dead worker) is
        stopped; the subscription's gate is dropped; the pipeline's final account is kept in `status`."""
        f = self._feeder
        if f is None:
            return
        self._feeder = None
        control = self._conn.control
        try:
            if f.next_index < f.nframes:
                st = control.acquisition(f.acquisition_id)
                if not st["over"]:
                    logger.warning("ringdaq acquisition %d stopped after %d of %d frames were processed",
                                   f.acquisition_id, f.next_index, f.nframes)
                    try:
                        control.stop()
                    except ringdaq.ControlError as e:
                        logger.warning("stopping ringdaq acquisition %d: %s", f.acquisition_id, e)
        finally:
            f.close()
        try:
            self.status = control.wait(f.acquisition_id, timeout=30)
        except (TimeoutError, ringdaq.ControlError) as e:
            logger.warning("ringdaq acquisition %d: no final state: %s", f.acquisition_id, e)
        self.incomplete_frames = list(f.incomplete)
        if self.incomplete_frames:
            logger.warning("ringdaq acquisition %d: %d incomplete frames processed with the fill value "
                           "(indices %s%s)", f.acquisition_id, len(self.incomplete_frames),
                           self.incomplete_frames[:10], "..." if len(self.incomplete_frames) > 10 else "")

    def get_partitions(self):
        ""
        num_frames = int(np.prod(self._nav_shape))
        num_partitions = max(1, num_frames // self._frames_per_partition)
        for part_slice, start, stop in BasePartition.make_slices(self.shape, num_partitions):
            yield RingdaqLivePartition(start_idx=start, end_idx=stop, meta=self._meta, partition_slice=part_slice)

    def get_task_comm_handler(self) -> RingdaqCommHandler:
        ""
        if self._feeder is None:
            raise RuntimeError("the acquisition is not started (run it with LiveContext.run_udf)")
        return RingdaqCommHandler(self._feeder, str(self._conn.runtime_dir), self._conn.supervisor_pid,
                                  alive=self._alive)
