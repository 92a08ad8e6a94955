"""Frames/s LiberTEM's SumUDF takes live from a running pipeline through `ringdaq.libertem` (pipelined
executor, 2 workers), beside the package's plain lossless subscription doing the same sum in one process, in
the same run, on the same simulated K2 IS stream; and whether either lost a frame.

    RINGDAQ_BIN_DIR=target/release python3 python/benches/libertem_throughput.py [--frames 2000] [--fps 400]

Each figure: frames of a live-only acquisition / seconds from the simulator's start to the last frame summed
(to `run_udf` returning, for LiberTEM). No loss: the acquisition ended complete with every frame complete, the
kernel dropped no datagram, and the sum equals numpy's over the frames sent.
"""

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "python" / "tests"))

import ringdaq  # noqa: E402
from ringdaq.launch import Pipeline  # noqa: E402
from sim_pattern import frames as sim_frames  # noqa: E402

# Deep rings: 64 frames (490 MB) and 256 block slots, so that scheduling hiccups of a shared 2-core machine
# are absorbed rather than dropped.
RINGS = """[rings]
block_slots = 256
datagrams_per_slot = 64
frame_slots = 64
[assembler]
timeout_ms = 500
"""


def expected_sum(n: int) -> np.ndarray:
    v = sim_frames(0, 8)
    return np.sum([f.astype(np.float64) for f in v], axis=0) * (n // 8)


def account(p: Pipeline, ctl: ringdaq.Control, acq: int, drops0: int) -> tuple[bool, str]:
    st = ctl.wait(acq, timeout=60)
    drops = ctl.status()["counters"].get("receiver.kernel_drops", 0) - drops0
    ok = st["ended"] == "complete" and st["complete"] == st["frames"] and drops == 0
    return ok, f"{st['ended']}, {st['complete']}/{st['frames']} complete, kernel drops {drops}"


def plain(p: Pipeline, n: int, fps: float, expect: np.ndarray) -> tuple[float, str]:
    ctl = ringdaq.Control(p.rt)
    drops0 = ctl.status()["counters"].get("receiver.kernel_drops", 0)
    acc = np.zeros((1860, 2048), np.float64)
    with ringdaq.Subscription(p.rt, lossless=True) as sub:
        acq = ctl.acquire(n)
        t0 = time.perf_counter()
        sim = p.simulate(n, fps)
        got = 0
        while got < n:
            f = sub.next(timeout=10)
            if f.acquisition_id == acq:
                acc += f.array
                got += 1
            f.release()
        t = time.perf_counter() - t0
        sim.wait(timeout=60)
    ok, text = account(p, ctl, acq, drops0)
    ok = ok and np.array_equal(acc, expect)
    return n / t, f"{'no loss' if ok else 'LOSS'} ({text}; sum {'equal' if np.array_equal(acc, expect) else 'DIFFERS'})"


def libertem(p: Pipeline, ctx, n: int, fps: float, expect: np.ndarray, per_partition: int) -> tuple[float, str]:
    from libertem.udf.sum import SumUDF
    from libertem_live.api import Hooks

    from ringdaq.libertem import RingdaqConnection

    ctl = ringdaq.Control(p.rt)
    drops0 = ctl.status()["counters"].get("receiver.kernel_drops", 0)

    class Go(Hooks):
        def on_ready_for_data(self, env):
            self.t0 = time.perf_counter()
            self.sim = p.simulate(n, fps)

    hooks = Go()
    with RingdaqConnection(p.rt) as conn:
        aq = ctx.make_acquisition(conn=conn, nav_shape=(n // 40, 40), frames_per_partition=per_partition,
                                  hooks=hooks)
        res = ctx.run_udf(aq, SumUDF())
        t = time.perf_counter() - hooks.t0
    hooks.sim.wait(timeout=60)
    ok, text = account(p, ctl, aq.acquisition_id, drops0)
    same = np.array_equal(res["intensity"].data, expect)
    return n / t, f"{'no loss' if ok and same else 'LOSS'} ({text}; sum {'equal' if same else 'DIFFERS'})"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=2000, help="a multiple of 40")
    ap.add_argument("--fps", type=float, default=400)
    ap.add_argument("--per-partition", type=int, default=128)
    a = ap.parse_args()
    if not os.environ.get("RINGDAQ_BIN_DIR"):
        os.environ["RINGDAQ_BIN_DIR"] = str(REPO / "target" / "release")
    from libertem.executor.pipelined import PipelinedExecutor
    from libertem_live.api import LiveContext

    expect = expected_sum(a.frames)
    ctx = LiveContext(executor=PipelinedExecutor(spec=PipelinedExecutor.make_spec(cpus=[0, 1], cudas=[])))
    try:
        with Pipeline(config=RINGS) as p:
            print(f"{a.frames} K2 IS frames (1860x2048 uint16) asked at {a.fps:.0f} frames/s, live-only")
            r, text = plain(p, a.frames, a.fps, expect)
            print(f"plain lossless Subscription, sum in one process: {r:7.1f} frames/s  {text}")
            r, text = libertem(p, ctx, a.frames, a.fps, expect, a.per_partition)
            print(f"LiberTEM SumUDF, pipelined executor, 2 workers: {r:7.1f} frames/s  {text}")
    finally:
        ctx.close()


if __name__ == "__main__":
    main()
