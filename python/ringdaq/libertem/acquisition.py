"""`RingdaqAcquisition` (LiberTEM-live's `AcquisitionMixin` + LiberTEM's `DataSet`), its `TaskCommHandler`
and its live `Partition`.

The protocol between the main process and a worker, over the worker's request queue, per partition:
`BEGIN_TASK` (where the region is), then `FRAMES` messages of `(sequence, index)` references in index
order (only frames in the run's region of interest), then `END_PARTITION`. The worker copies frames from the
region into its tiles (whole frames, or bands of rows a few frames deep that stay in the cache for the UDF) and
signals `ringdaq.release` with the sequences it is done with; the main process's dispatcher thread releases
them on the lossless subscription.
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

#: Rows of the band tiles UDFs that process tiles get (the base shape), and the size of a tile: 8 frames deep as
#: float32, 8 MB, which the L3 cache (32 MB here) holds for both workers. Measured for SumUDF with numpy on K2 IS
#: frames (copy + sum, per frame): 1.36 ms in tiles of 8 whole frames, 0.78 ms in 8 × 128-row bands, 0.75 ms in
#: 8 × 64 (but twice the tiles, each of which costs LiberTEM time), 0.86 ms in 4 × 128.
BAND_ROWS = 128
TILE_BYTES = 8 * 2**20

#: How often (s) the main process, waiting for a frame, checks that the acquisition still runs and that every
#: worker lives.
CHECK_EVERY = 0.25

#: How long (s) the end of a run waits for the pipeline's final account while no frame is assigned meanwhile.
FINAL_STATE_PATIENCE = 30.0


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
        #: The run's region of interest, flat (None: every frame): frames outside it are released here, never
        #: sent to a worker. Set in the main process by the partitions LiberTEM asks for their frame count.
        self.roi: np.ndarray | None = None

    def wanted(self, index: int) -> bool:
        return self.roi is None or bool(self.roi[index])

    def needs_more(self) -> bool:
        """Whether frames still to come are needed by the run (any left in its region of interest)."""
        if self.next_index >= self.nframes:
            return False
        return self.roi is None or bool(self.roi[self.next_index:].any())

    def release(self, topic: str, msg: dict) -> None:
        # Runs on LiberTEM's dispatcher thread, while the main thread may wait in `sub.next()`.
        if not self.closed:
            self.sub.release(msg["seqs"])

    @staticmethod
    def _check_workers(alive) -> None:
        if alive is not None and not alive():
            raise _cancel("a LiberTEM worker process died mid-acquisition")

    def _check(self, alive) -> None:
        self._check_workers(alive)
        st = self.control.acquisition(self.acquisition_id)
        if st["over"] and st["assigned"] <= self.next_index:
            raise _cancel(
                f"ringdaq acquisition {self.acquisition_id} ended ({st['ended'] or st['state']}"
                f"{': ' + st['reason'] if st['reason'] else ''}{': ' + st['error'] if st['error'] else ''}) "
                f"after {st['assigned']} of {self.nframes} frames"
            )

    def refs(self, start: int, end: int, alive=None):
        """Yields lists of `(sequence, index)` for frames `start`..`end` - 1 of the acquisition that are in the
        region of interest, in order, as they come (a list is sent as soon as no further frame is waiting, so that
        frames never wait in this process for more to come: the frame ring holds few). Frames before `start`
        belong to partitions LiberTEM skips (none of their frames in the region of interest): they are released
        as they come, as are frames outside the region."""
        if start < self.next_index:
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
            if self.next_index < start or not self.wanted(f.index):
                f.release()
                self.next_index += 1
                continue
            if not f.complete:
                self.incomplete.append(f.index)
            batch.append((f.keep(), f.index))
            self.next_index += 1
            if len(batch) >= self.chunk:
                yield batch
                batch = []
            if time.monotonic() - last_check >= CHECK_EVERY:
                self._check_workers(alive)
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


def _tile_buffer(count: int, dtype: np.dtype) -> np.ndarray:
    """A flat buffer of at least `count` elements of `dtype`, reused."""
    if not _BUFFER or _BUFFER[0].dtype != dtype or _BUFFER[0].size < count:
        _BUFFER.clear()
        _BUFFER.append(np.empty(count, dtype=dtype))
    return _BUFFER[0]


def _read(reader: ringdaq.RegionReader, refs: list, out: np.ndarray, rows: tuple[int, int] | None = None) -> None:
    """Copies frames `refs` ((sequence, index) pairs), or rows `rows` of them, into `out`, converting."""
    seqs, indices = [s for s, _ in refs], [i for _, i in refs]
    try:
        reader.read_many(seqs, out, indices=indices, rows=rows)
    except TypeError:
        # A dtype the reader does not convert to: through uint16.
        tmp = np.empty(out.shape, dtype=np.uint16)
        reader.read_many(seqs, tmp, indices=indices, rows=rows)
        out[...] = tmp


class RingdaqLivePartition(Partition):
    """Frames `start_idx`..`end_idx` - 1 of a live acquisition, read from the region by the worker."""

    def __init__(self, start_idx: int, end_idx: int, partition_slice: Slice, meta: DataSetMeta, on_roi=None):
        super().__init__(meta=meta, partition_slice=partition_slice, io_backend=None, decoder=None)
        self._start_idx = start_idx
        self._end_idx = end_idx
        self._corrections: CorrectionSet | None = None
        self._worker_context: WorkerContext | None = None
        # Main process only (not pickled for the workers): tells the acquisition the run's region of interest.
        self._on_roi = on_roi

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_on_roi"] = None
        return state

    def get_frame_count(self, roi=None) -> int:
        # LiberTEM asks every partition, in the main process, before it makes the run's tasks: how the
        # acquisition learns the region of interest its main process filters by.
        if self._on_roi is not None:
            self._on_roi(roi)
        return super().get_frame_count(roi)

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
        if array_backend not in (None, NUMPY, CUDA):
            raise ValueError(f"unsupported array backend {array_backend}")
        assert self._worker_context is not None, "no worker context: run with LiberTEM's pipelined executor"
        queue = self._worker_context.get_worker_queue()
        with queue.get() as (header, _):
            if header["type"] != "BEGIN_TASK":
                raise RuntimeError(f"expected BEGIN_TASK, got {header['type']}")
            reader = _reader(header["runtime_dir"], header["supervisor_pid"])
        # With a region of interest the main process sends only its frames, and tiles count in its frames: the
        # first tile starts at the number of them before this partition (`Slice.adjust_for_roi`).
        own = self.slice.adjust_for_roi(None if roi is None else np.asarray(roi, dtype=bool))
        first, total = own.origin[0], own.shape[0]
        depth = total if tiling_scheme.intent == "partition" else min(tiling_scheme.depth, total)
        sig = tuple(self.meta.shape.sig)
        bands = [tiling_scheme[k] for k in range(len(tiling_scheme))]
        if len(bands) == 1 and tuple(bands[0].shape) == sig:
            tiles = self._frame_tiles(queue, reader, depth, sig, np.dtype(dest_dtype), first)
        else:
            tiles = self._band_tiles(queue, reader, depth, bands, np.dtype(dest_dtype), first)
        got = 0
        for tile in tiles:
            got += tile.tile_slice.shape[0] if tile.scheme_idx == 0 else 0
            yield tile
        if got != total:
            raise JobCancelledError(f"partition {self._start_idx}:{self._end_idx} got {got} of {total} frames")

    @staticmethod
    def _refs(queue):
        """The partition's `(sequence, index)` references, in lists as the main process sends them."""
        while True:
            with queue.get() as (header, _):
                kind = header["type"]
                refs = header.get("refs")
            if kind == "END_PARTITION":
                return
            if kind != "FRAMES":
                raise RuntimeError(f"expected FRAMES or END_PARTITION, got {kind}")
            yield refs

    def _release(self, refs: list) -> None:
        # Copied: the frames may go.
        self._worker_context.signal(f"ringdaq-worker-{os.getpid()}", RELEASE_TOPIC, {"seqs": [s for s, _ in refs]})

    def _frame_tiles(self, queue, reader, depth: int, sig: tuple, dtype: np.dtype, first: int):
        """Tiles of whole frames, the first at `first`: each frame is copied as it comes and released at once."""
        per = int(np.prod(sig))
        buf = _tile_buffer(depth * per, dtype)[:depth * per].reshape((depth,) + sig)
        filled, tile_start = 0, first
        for refs in self._refs(queue):
            i = 0
            while i < len(refs):
                part = refs[i:i + depth - filled]
                _read(reader, part, buf[filled:filled + len(part)])
                self._release(part)
                filled += len(part)
                i += len(part)
                if filled == depth:
                    yield self._tile(buf[:filled], tile_start, (0,) * len(sig), 0)
                    tile_start += filled
                    filled = 0
        if filled:
            yield self._tile(buf[:filled], tile_start, (0,) * len(sig), 0)

    def _band_tiles(self, queue, reader, depth: int, bands: list, dtype: np.dtype, first: int):
        """Tiles of a band of rows across `depth` frames (the tiling scheme's slices in turn): a band of a few
        frames fits the cache, where a UDF then finds it, instead of going to memory and back (SumUDF on K2 IS
        frames: 0.78 ms a frame in 8 × 128-row bands, 1.36 ms in tiles of 8 whole frames, numpy alone). The
        frames of a band tile are released once all its bands are read: the dataset keeps `depth` small for
        that (`RingdaqAcquisition.adjust_tileshape`)."""
        cols = self.meta.shape.sig[1]
        largest = max(int(np.prod(tuple(b.shape))) for b in bands)
        flat = _tile_buffer(depth * largest, dtype)
        block: list = []
        tile_start = first

        def tiles_of(block: list, start: int):
            n = len(block)
            for k, band in enumerate(bands):
                (r0, c0), (h, w) = tuple(band.origin), tuple(band.shape)
                tile = flat[:n * h * w].reshape(n, h, w)
                if c0 == 0 and w == cols:
                    _read(reader, block, tile, rows=(r0, r0 + h))
                else:
                    full = np.empty((n, h, cols), dtype=np.uint16)
                    _read(reader, block, full, rows=(r0, r0 + h))
                    tile[...] = full[:, :, c0:c0 + w]
                yield self._tile(tile, start, (r0, c0), k)

        for refs in self._refs(queue):
            for ref in refs:
                block.append(ref)
                if len(block) == depth:
                    yield from tiles_of(block, tile_start)
                    self._release(block)
                    tile_start += len(block)
                    block = []
        if block:
            yield from tiles_of(block, tile_start)
            self._release(block)

    def _tile(self, data: np.ndarray, start: int, sig_origin: tuple, scheme_idx: int) -> DataTile:
        tile_slice = Slice(origin=(start,) + tuple(sig_origin), shape=Shape(data.shape, sig_dims=2))
        if self._corrections is not None:
            self._corrections.apply(data, tile_slice)
        return DataTile(data, tile_slice=tile_slice, scheme_idx=scheme_idx)

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
        # Bands of whole rows: a band is contiguous in the frame slot, one copy per frame.
        return (1, min(BAND_ROWS, self.meta.shape.sig[0]), self.meta.shape.sig[1])

    def get_max_io_size(self):
        ""
        return TILE_BYTES

    def adjust_tileshape(self, tileshape, roi):
        ""
        if tuple(tileshape[1:]) == tuple(self.meta.shape.sig):
            return tileshape  # whole frames: each is released as soon as it is copied
        # A band tile's frames stay in the frame ring until all its bands are read; with two workers (the one fed,
        # the one finishing its partition) each holding a quarter of the ring, half is left for the pipeline.
        return (min(tileshape[0], max(1, self._conn.frame_ring_slots // 4)), *tileshape[1:])

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
                acq = control.acquire(nframes, None if c.output is None else str(c.output), c.sync, c.compression)
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
        """Ends the acquisition: one that did not hand out all the frames its run needs (a cancelled run, a dead
        worker) is stopped; one whose remaining frames are all outside the run's region of interest runs to its
        end without the run; the subscription's gate is dropped; the pipeline's final account is kept in
        `status` (waited for as long as frames are still being assigned)."""
        f = self._feeder
        if f is None:
            return
        self._feeder = None
        control = self._conn.control
        try:
            if f.needs_more():
                st = control.acquisition(f.acquisition_id)
                if not st["over"]:
                    logger.warning("ringdaq acquisition %d stopped after %d of %d frames were processed",
                                   f.acquisition_id, f.next_index, f.nframes)
                    try:
                        control.stop()
                    except ringdaq.ControlError as e:
                        logger.warning("stopping ringdaq acquisition %d: %s", f.acquisition_id, e)
            elif f.next_index < f.nframes:
                logger.info("ringdaq acquisition %d: frames %d.. are outside the region of interest; the "
                            "acquisition runs to its end without the run", f.acquisition_id, f.next_index)
        finally:
            f.close()
        try:
            self.status = self._final_state(control, f.acquisition_id)
        except (TimeoutError, ringdaq.ControlError) as e:
            logger.warning("ringdaq acquisition %d: no final state: %s", f.acquisition_id, e)
        self.incomplete_frames = list(f.incomplete)
        if self.incomplete_frames:
            logger.warning("ringdaq acquisition %d: %d incomplete frames processed with the fill value "
                           "(indices %s%s)", f.acquisition_id, len(self.incomplete_frames),
                           self.incomplete_frames[:10], "..." if len(self.incomplete_frames) > 10 else "")

    @staticmethod
    def _final_state(control: ringdaq.Control, acquisition_id: int) -> dict:
        """The acquisition's final account, waited for while it still gets frames (a scan's tail outside the
        region of interest), and for `FINAL_STATE_PATIENCE` seconds without one."""
        assigned, deadline = None, time.monotonic() + FINAL_STATE_PATIENCE
        while True:
            try:
                return control.wait(acquisition_id, timeout=1.0)
            except TimeoutError:
                st = control.acquisition(acquisition_id)
                if st["assigned"] != assigned:
                    assigned, deadline = st["assigned"], time.monotonic() + FINAL_STATE_PATIENCE
                elif time.monotonic() >= deadline:
                    raise

    def get_partitions(self):
        ""
        num_frames = int(np.prod(self._nav_shape))
        num_partitions = max(1, num_frames // self._frames_per_partition)
        for part_slice, start, stop in BasePartition.make_slices(self.shape, num_partitions):
            yield RingdaqLivePartition(start_idx=start, end_idx=stop, meta=self._meta, partition_slice=part_slice,
                                       on_roi=self._note_roi)

    def _note_roi(self, roi) -> None:
        if self._feeder is not None:
            self._feeder.roi = None if roi is None else np.asarray(roi, dtype=bool).reshape(-1)

    def get_task_comm_handler(self) -> RingdaqCommHandler:
        ""
        if self._feeder is None:
            raise RuntimeError("the acquisition is not started (run it with LiveContext.run_udf)")
        return RingdaqCommHandler(self._feeder, str(self._conn.runtime_dir), self._conn.supervisor_pid,
                                  alive=self._alive)
