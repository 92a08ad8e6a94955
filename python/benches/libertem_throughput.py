"""Frames/s LiberTEM's SumUDF takes live from a running pipeline through `ringdaq.libertem` (pipelined
executor, 2 workers), beside the package's plain lossless subscription doing the same sum in one process, in
the same run, on the same simulated K2 IS stream; and whether either lost a frame.

    RINGDAQ_BIN_DIR=target/release python3 python/benches/libertem_throughput.py [--frames 4000] [--fps 450]

The simulator is asked for more than the 400 frames/s a K2 IS sends: a consumer cannot take frames faster than
they are sent, and the figure counts from the simulator's start (about 0.1 s before its first frame), so a
stream asked at exactly 400 frames/s measures a little under 400 however fast the consumer is.

Each figure: frames of a live-only acquisition / seconds from the simulator's start to the last frame summed
(to `run_udf` returning, for LiberTEM). No loss: the acquisition ended complete with every frame complete, the
kernel dropped no datagram, and the sum equals numpy's over the frames sent. Beside it: the rate the simulator
reached (it shares the cores), and CPU per frame of the consumer (main process and workers), of the pipeline's
stages and of the simulator, from which the rate an otherwise idle 2-core machine would sustain follows:
2 cores / (total CPU per frame).
"""

import argparse
import os
import re
import subprocess
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


import psutil  # noqa: E402


def cpu(pids) -> float:
    """CPU seconds (user + system) of processes `pids` so far."""
    total = 0.0
    for pid in pids:
        try:
            t = psutil.Process(pid).cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


def stage_pids(p: Pipeline) -> list:
    return [p.proc.pid] + [c.pid for c in psutil.Process(p.proc.pid).children(recursive=True)]


class Sim:
    """`ringdaq sim` with its report kept: the rate it reached, and its CPU."""

    def __init__(self, p: Pipeline, n: int, fps: float):
        self.proc = subprocess.Popen([str(p.bin), "sim", "--port-base", str(p.port_base), "--frames", str(n),
                                      "--fps", str(fps)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     text=True)
        self.ps = psutil.Process(self.proc.pid)
        self.cpu = 0.0

    def wait(self) -> float:
        """The frames/s the simulator reached."""
        try:
            t = self.ps.cpu_times()
            self.cpu = t.user + t.system
        except psutil.NoSuchProcess:
            pass
        out, _ = self.proc.communicate(timeout=120)
        m = re.search(r"([0-9.]+) frames/s", out)
        return float(m.group(1)) if m else float("nan")


def report(name: str, n: int, rate: float, ok_text: str, sim: Sim, sim_rate: float, consumer_cpu: float,
           stages_cpu: float, main_cpu: float | None = None) -> None:
    per = {"consumer": consumer_cpu / n * 1e3, "stages": stages_cpu / n * 1e3, "simulator": sim.cpu / n * 1e3}
    cap = 2.0 / (sum(per.values()) / 1e3)
    main = "" if main_cpu is None else f" (main process {main_cpu / n * 1e3:.2f} ms)"
    print(f"{name}: {rate:6.1f} frames/s ({ok_text}); simulator reached {sim_rate:.1f} frames/s; CPU per frame: "
          f"consumer {per['consumer']:.2f} ms{main}, pipeline stages {per['stages']:.2f} ms, simulator "
          f"{per['simulator']:.2f} ms -> {cap:.0f} frames/s on two idle cores")


def expected_sum(n: int) -> np.ndarray:
    v = sim_frames(0, 8)
    return np.sum([f.astype(np.float64) for f in v], axis=0) * (n // 8)


def account(p: Pipeline, ctl: ringdaq.Control, acq: int, drops0: int) -> tuple[bool, str]:
    st = ctl.wait(acq, timeout=60)
    drops = ctl.status()["counters"].get("receiver.kernel_drops", 0) - drops0
    ok = st["ended"] == "complete" and st["complete"] == st["frames"] and drops == 0
    return ok, f"{st['ended']}, {st['complete']}/{st['frames']} complete, kernel drops {drops}"


def plain(p: Pipeline, n: int, fps: float, expect: np.ndarray) -> None:
    ctl = ringdaq.Control(p.rt)
    drops0 = ctl.status()["counters"].get("receiver.kernel_drops", 0)
    acc = np.zeros((1860, 2048), np.float32)
    stages = stage_pids(p)
    with ringdaq.Subscription(p.rt, lossless=True) as sub:
        acq = ctl.acquire(n)
        c0, s0 = time.process_time(), cpu(stages)
        t0 = time.perf_counter()
        sim = Sim(p, n, fps)
        got = 0
        while got < n:
            try:
                f = sub.next(timeout=10)
            except ringdaq.Timeout:
                break  # frames lost before the pipeline took them never come
            if f.acquisition_id == acq:
                acc += f.array
                got += 1
            f.release()
        t = time.perf_counter() - t0
        c1, s1 = time.process_time(), cpu(stages)
        sim_rate = sim.wait()
    ok, text = account(p, ctl, acq, drops0)
    same = np.array_equal(acc, expect)
    text = f"{'no loss' if ok and same else 'LOSS'}: {text}; sum {'equal' if same else 'DIFFERS'}"
    report("plain lossless Subscription, sum in one process  ", n, got / t, text, sim, sim_rate, c1 - c0, s1 - s0)


def libertem(p: Pipeline, ctx, n: int, fps: float, expect: np.ndarray, per_partition: int) -> None:
    from libertem.udf.sum import SumUDF
    from libertem_live.api import Hooks

    from ringdaq.libertem import RingdaqConnection

    ctl = ringdaq.Control(p.rt)
    drops0 = ctl.status()["counters"].get("receiver.kernel_drops", 0)
    consumers = [os.getpid()] + [w.process.pid for w in ctx.executor._pool.workers]
    stages = stage_pids(p)

    class Go(Hooks):
        def on_ready_for_data(self, env):
            self.c0, self.s0, self.m0 = cpu(consumers), cpu(stages), cpu([os.getpid()])
            self.t0 = time.perf_counter()
            self.sim = Sim(p, n, fps)

    hooks = Go()
    with RingdaqConnection(p.rt) as conn:
        aq = ctx.make_acquisition(conn=conn, nav_shape=(n // 40, 40), frames_per_partition=per_partition,
                                  hooks=hooks)
        try:
            res = ctx.run_udf(aq, SumUDF())
        except Exception as e:  # noqa: BLE001 (an acquisition that lost frames is cancelled: reported below)
            print(f"the run failed: {e!r}")
            res = None
        t = time.perf_counter() - hooks.t0
        c1, s1, m1 = cpu(consumers), cpu(stages), cpu([os.getpid()])
    sim_rate = hooks.sim.wait()
    ok, text = account(p, ctl, aq.acquisition_id, drops0)
    same = res is not None and np.array_equal(res["intensity"].data, expect)
    text = f"{'no loss' if ok and same else 'LOSS'}: {text}; sum {'equal' if same else 'DIFFERS'}"
    report("LiberTEM SumUDF, pipelined executor, 2 workers", n, n / t, text, hooks.sim, sim_rate, c1 - hooks.c0,
           s1 - hooks.s0, m1 - hooks.m0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=4000, help="a multiple of 40")
    ap.add_argument("--fps", type=float, default=450)
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
            plain(p, a.frames, a.fps, expect)
            libertem(p, ctx, a.frames, a.fps, expect, a.per_partition)
    finally:
        ctx.close()


if __name__ == "__main__":
    main()
