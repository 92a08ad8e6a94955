"""LiberTEM on ringdaq: UDFs run live through `ringdaq.libertem` (LiberTEM-live's contract) with the
pipelined executor and two workers, equal to numpy over the frames the simulator sent, whether they process
tiles (bands of rows), frames or partitions, and with a region of interest; scan sync on the detector's flag,
files written alongside (`.npy`, compressed `.h5`) and read back offline by LiberTEM; incomplete frames
reported; aborted runs (cancelled, or a worker killed) stop the acquisition and free the gate, and the next one
runs.

One LiveContext serves the module (starting LiberTEM's workers takes seconds)."""

import os
import signal

import numpy as np
import pytest

libertem = pytest.importorskip("libertem")
pytest.importorskip("libertem_live")

from libertem.executor.pipelined import PipelinedExecutor  # noqa: E402
from libertem.io.dataset.base import Negotiator  # noqa: E402
from libertem.udf.base import UDF  # noqa: E402
from libertem.udf.masks import ApplyMasksUDF  # noqa: E402
from libertem.udf.sum import SumUDF  # noqa: E402
from libertem_live.api import Hooks, LiveContext  # noqa: E402

import ringdaq  # noqa: E402
from ringdaq.launch import Pipeline  # noqa: E402
from ringdaq.libertem import RingdaqConnection  # noqa: E402
from sim_pattern import frames as sim_frames  # noqa: E402

SCAN = (16, 16)
N = SCAN[0] * SCAN[1]
SMALL = (8, 8)

# Rings deep enough (48 + 48 frames, about 650 MB of shared memory) that a lossless consumer on a busy 2-core
# machine does not back the pipeline up into the kernel's socket buffers, and a rate that leaves the workers
# room: the tests check what LiberTEM computes, not how fast.
RINGS = """[rings]
block_slots = 192
datagrams_per_slot = 64
frame_slots = 48
[assembler]
timeout_ms = 500
"""
FPS = 40


@pytest.fixture
def pipeline():
    p = Pipeline(config=RINGS)
    try:
        yield p
    finally:
        p.close()


def make_context() -> LiveContext:
    return LiveContext(executor=PipelinedExecutor(spec=PipelinedExecutor.make_spec(cpus=[0, 1], cudas=[])))


@pytest.fixture(scope="module")
def ctx():
    c = make_context()
    try:
        # Warm the workers up (imports, compilation on a UDF's first run take seconds), as before a scan: a
        # lossless consumer that stalls that long would back the pipeline up into the kernel's socket buffers.
        ds = c.load("memory", data=np.zeros((2, 2, 1860, 2048), np.uint16), num_partitions=2)
        mask = ring_mask((1860, 2048))
        c.run_udf(ds, [SumUDF(), ApplyMasksUDF(mask_factories=[lambda: mask], mask_dtype=np.float64)])
        yield c
    finally:
        c.close()


class StartSim(Hooks):
    """Starts the simulator once the acquisition is armed (LiberTEM-live's trigger hook)."""

    def __init__(self, pipeline, frames, fps, *args):
        self.pipeline, self.frames, self.fps, self.args = pipeline, frames, fps, args
        self.proc = None

    def on_ready_for_data(self, env):
        self.proc = self.pipeline.simulate(self.frames, self.fps, *self.args)

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
        if self.proc is not None:
            self.proc.wait(timeout=60)


def ring_mask(shape, ri=200, ro=600):
    y, x = np.ogrid[:shape[0], :shape[1]]
    r2 = (y - shape[0] / 2) ** 2 + (x - shape[1] / 2) ** 2
    return ((r2 >= ri ** 2) & (r2 < ro ** 2)).astype(np.float64)


def test_two_pipelined_workers(ctx):
    assert len(ctx.executor.get_available_workers()) == 2


def test_live_sum_and_ring_virtual_detector_equal_numpy(ctx, pipeline):
    hooks = StartSim(pipeline, N, FPS, "--first-frame-id", "3")
    try:
        with RingdaqConnection(pipeline.rt) as conn:
            aq = ctx.make_acquisition(conn=conn, nav_shape=SCAN, frames_per_partition=32, hooks=hooks)
            assert tuple(aq.shape.nav) == SCAN and tuple(aq.shape.sig) == (1860, 2048)
            mask = ring_mask(aq.shape.sig)
            res_sum, res_ring = ctx.run_udf(
                aq, [SumUDF(), ApplyMasksUDF(mask_factories=[lambda: mask], mask_dtype=np.float64)])
    finally:
        hooks.stop()
    assert aq.incomplete_frames == [], "frames came incomplete: the machine dropped datagrams"
    sent = sim_frames(3, N)                     # frame index i = scan position i = the i-th frame sent
    expected_sum = np.sum([f.astype(np.float64) for f in sent[:8]], axis=0) * (N // 8)
    assert np.array_equal(res_sum["intensity"].data, expected_sum)
    expected_ring = np.array([np.sum(f * mask) for f in sent]).reshape(SCAN)
    assert np.allclose(res_ring["intensity"].data[..., 0], expected_ring, rtol=1e-9, atol=0)
    assert aq.status["ended"] == "complete" and aq.status["complete"] == N and aq.status["live_only"]
    assert aq.incomplete_frames == []
    assert not list(pipeline.root.glob("*.npy")), "live-only: nothing written"


def test_flag_sync_with_a_file_read_back_offline_and_incomplete_frames_reported(ctx, pipeline):
    path = pipeline.root / "scan.npy"
    scan, n = SMALL, SMALL[0] * SMALL[1]
    # The sync flag from the simulator's frame 5 on: frame 0 of the acquisition is the sixth frame sent. A few
    # datagrams dropped: some frames come incomplete.
    hooks = StartSim(pipeline, n + 5, FPS, "--sync-at", "5", "--drop", "0.001", "--seed", "7")
    try:
        with RingdaqConnection(pipeline.rt) as conn:
            aq = ctx.make_acquisition(conn=conn, nav_shape=scan, frames_per_partition=16, hooks=hooks,
                                      controller=conn.get_active_controller(sync="flag", output=path))
            live = ctx.run_udf(aq, SumUDF())["intensity"].data
    finally:
        hooks.stop()
    pipeline.wait_file(path)
    written = np.load(path, mmap_mode="r")
    assert written.shape == (n, 1860, 2048)
    # Live equals the file, incomplete frames (processed with the fill value) included.
    assert np.array_equal(live, written.sum(axis=0, dtype=np.float64))
    st = aq.status
    assert st["path"] == str(path) and st["assigned"] == n
    assert len(aq.incomplete_frames) == n - st["complete"] > 0, "the drop rate should leave incomplete frames"
    sent = sim_frames(5, n)
    for i in sorted(set(range(n)) - set(aq.incomplete_frames)):
        assert np.array_equal(written[i], sent[i]), f"frame {i}"
    # Offline: LiberTEM reads ringdaq's .npy.
    ds = ctx.load("npy", path=str(path), nav_shape=scan)
    off = ctx.run_udf(ds, SumUDF())["intensity"].data
    assert np.array_equal(off, written.sum(axis=0, dtype=np.float64))


class FrameMax(UDF):
    """By frame: each frame's largest pixel."""

    def get_result_buffers(self):
        return {"max": self.buffer(kind="nav", dtype="float64")}

    def process_frame(self, frame):
        self.results.max[:] = frame.max()


class RowSums(UDF):
    """By partition: each frame's row sums."""

    def get_result_buffers(self):
        return {"rows": self.buffer(kind="nav", extra_shape=(self.meta.dataset_shape.sig[0],), dtype="float64")}

    def process_partition(self, partition):
        self.results.rows[:] = partition.sum(axis=-1)


def test_by_frame_by_partition_and_by_band_and_an_h5_read_offline(ctx, pipeline):
    import h5py
    import hdf5plugin  # noqa: F401 (registers the bitshuffle filter)

    path = pipeline.root / "scan.h5"
    scan, n = SMALL, SMALL[0] * SMALL[1]
    sent = sim_frames(0, n)
    expected_sum = np.sum([f.astype(np.float64) for f in sent], axis=0)
    with RingdaqConnection(pipeline.rt) as conn:
        # Whole frames (a UDF by frame sets the tiling), written to a compressed HDF5 file as well.
        hooks = StartSim(pipeline, n, FPS)
        try:
            aq = ctx.make_acquisition(conn=conn, nav_shape=scan, frames_per_partition=16, hooks=hooks,
                                      controller=conn.get_active_controller(output=path, compression="bslz4"))
            peak, total = ctx.run_udf(aq, [FrameMax(), SumUDF()])
        finally:
            hooks.stop()
        assert aq.incomplete_frames == [] and aq.status["ended"] == "complete"
        assert np.array_equal(peak["max"].data, np.array([f.max() for f in sent], np.float64).reshape(scan))
        assert np.array_equal(total["intensity"].data, expected_sum)
        # Whole partitions, live-only.
        hooks = StartSim(pipeline, n, FPS)
        try:
            aq = ctx.make_acquisition(conn=conn, nav_shape=scan, frames_per_partition=16, hooks=hooks)
            rows = ctx.run_udf(aq, RowSums())["rows"].data
        finally:
            hooks.stop()
        assert aq.incomplete_frames == []
        assert np.array_equal(rows, np.array([f.sum(axis=1, dtype=np.float64) for f in sent]).reshape(scan + (-1,)))
        # UDFs by tile get bands of whole rows a few frames deep (cache-sized), not whole frames, and no deeper
        # than a quarter of the frame ring (the frames of a band tile are held until all its bands are read).
        scheme = Negotiator().get_scheme(udfs=[SumUDF()], dataset=aq, read_dtype=np.float32,
                                         approx_partition_shape=next(aq.get_partitions()).shape)
        assert len(scheme) > 1 and 1 < scheme.depth <= conn.frame_ring_slots // 4, scheme
        assert all(tuple(scheme[k].shape)[1] == 2048 for k in range(len(scheme)))
    # Offline: LiberTEM reads the HDF5 file (its workers load hdf5plugin for the bitshuffle filter).
    pipeline.wait_file(path)
    with h5py.File(path, "r") as f:
        written = f["entry/data/data"][()]
    assert written.shape == (n, 1860, 2048) and all(np.array_equal(w, s) for w, s in zip(written, sent))
    ds = ctx.load("hdf5", path=str(path), ds_path="entry/data/data", nav_shape=scan)
    off = ctx.run_udf(ds, SumUDF())["intensity"].data
    assert np.array_equal(off, expected_sum)


def test_a_region_of_interest(ctx, pipeline):
    scan, n = SMALL, SMALL[0] * SMALL[1]
    # Frames 16..47 only: with 16 frames a partition, LiberTEM skips the first and the last partition.
    roi = np.zeros(scan, bool)
    roi[2:6, ::2] = True
    roi[3, 1] = True
    sent = sim_frames(0, n)
    picked = [f for f, r in zip(sent, roi.reshape(-1)) if r]
    with RingdaqConnection(pipeline.rt) as conn:
        for udfs in ([SumUDF()], [SumUDF(), FrameMax()]):  # tiles of bands; whole frames
            hooks = StartSim(pipeline, n, FPS)
            try:
                aq = ctx.make_acquisition(conn=conn, nav_shape=scan, frames_per_partition=16, hooks=hooks)
                res = ctx.run_udf(aq, udfs, roi=roi)
            finally:
                hooks.stop()
            # The scan's last frames are outside the region: the acquisition ran to its end without the run.
            assert aq.status["ended"] == "complete" and aq.status["assigned"] == n, aq.status
            assert aq.incomplete_frames == []
            assert np.array_equal(res[0]["intensity"].data, np.sum([f.astype(np.float64) for f in picked], axis=0))
            if len(udfs) == 2:
                assert np.array_equal(res[1]["max"].raw_data, [f.max() for f in picked])


def run_next_acquisition(ctx, pipeline, conn):
    """The acquisition after an aborted one: 8×8 frames, written as well; the live sum equals the file's, and
    every frame is there."""
    path = pipeline.root / "next.npy"
    scan, n = SMALL, SMALL[0] * SMALL[1]
    hooks = StartSim(pipeline, n, FPS)
    aq = ctx.make_acquisition(conn=conn, nav_shape=scan, frames_per_partition=16, hooks=hooks,
                              controller=conn.get_active_controller(output=path))
    try:
        live = ctx.run_udf(aq, SumUDF())["intensity"].data
    finally:
        hooks.stop()
    assert aq.status["ended"] == "complete" and aq.status["assigned"] == n
    pipeline.wait_file(path)
    assert np.array_equal(live, np.load(path, mmap_mode="r").sum(axis=0, dtype=np.float64))
    return aq


def test_a_cancelled_run_stops_the_acquisition_and_the_next_one_runs(ctx, pipeline):
    ctl = ringdaq.Control(pipeline.rt)
    hooks = StartSim(pipeline, N, FPS)
    try:
        with RingdaqConnection(pipeline.rt) as conn:
            aq = ctx.make_acquisition(conn=conn, nav_shape=SCAN, frames_per_partition=16, hooks=hooks)
            it = ctx.run_udf_iter(aq, SumUDF())
            next(it)                            # the first partition's result...
            it.close()                          # ...and the user cancels
            st = ctl.acquisition(aq.acquisition_id)
            assert st["over"] and st["ended"] == "stopped" and st["assigned"] < N, st
            hooks.stop()
            aq2 = run_next_acquisition(ctx, pipeline, conn)
    finally:
        hooks.stop()
    assert aq2.acquisition_id == aq.acquisition_id + 1


def test_a_killed_worker_stops_the_acquisition_and_the_next_one_runs(ctx, pipeline):
    ctl = ringdaq.Control(pipeline.rt)
    hooks = StartSim(pipeline, N, FPS)
    doomed = make_context()
    try:
        with RingdaqConnection(pipeline.rt) as conn:
            aq = doomed.make_acquisition(conn=conn, nav_shape=SCAN, frames_per_partition=16, hooks=hooks)
            it = doomed.run_udf_iter(aq, SumUDF())
            with pytest.raises(Exception):
                for i, _ in enumerate(it):
                    if i == 0:
                        os.kill(doomed.executor._pool.workers[0].process.pid, signal.SIGKILL)
            st = ctl.acquisition(aq.acquisition_id)
            assert st["over"] and st["ended"] == "stopped" and st["assigned"] < N, st
            hooks.stop()
            run_next_acquisition(ctx, pipeline, conn)
    finally:
        hooks.stop()
        try:
            doomed.close()
        except Exception:  # noqa: BLE001 (a pool with a killed worker may complain while closing)
            pass


def test_passive_mode_takes_an_acquisition_armed_elsewhere(ctx, pipeline):
    import threading

    scan, n = SMALL, SMALL[0] * SMALL[1]
    sims = []

    def operator():
        # Someone else arms (as `ringdaq acquire --frames 64 --live` would) and starts the scan.
        ringdaq.Control(pipeline.rt).acquire(n)
        sims.append(pipeline.simulate(n, FPS))

    with RingdaqConnection(pipeline.rt) as conn:
        t = threading.Timer(0.5, operator)
        t.start()
        try:
            pending = conn.wait_for_acquisition(timeout=30)
            assert pending is not None and pending.nimages == n
            aq = ctx.make_acquisition(conn=conn, pending_aq=pending, nav_shape=scan)
            res = ctx.run_udf(aq, SumUDF())
        finally:
            t.join()
            for s in sims:
                s.wait(timeout=60)
    assert aq.status["ended"] == "complete" and aq.acquisition_id == pending.acquisition_id
    expected = np.sum([f.astype(np.float64) for f in sim_frames(0, 8)], axis=0) * (n // 8)
    assert np.array_equal(res["intensity"].data, expected)
    with RingdaqConnection(pipeline.rt) as conn:
        assert conn.wait_for_acquisition(timeout=0.3) is None
