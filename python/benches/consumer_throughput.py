"""Frames/s a Python consumer takes zero-copy from a running pipeline, summing each frame (so every pixel is
really read), against the same loop over frames already in an in-memory numpy array, in the same run.

    RINGDAQ_BIN_DIR=target/release python3 python/benches/consumer_throughput.py [--frames 1000] [--fps 400]

Two figures: wall-clock frames/s (bounded by what the pipeline delivers on this machine), and the loop's own
time per frame (time spent summing, waits excluded) against the in-memory loop's: the cost of reading from the
shared mapping rather than from private memory.
"""

import argparse
import os
import time
from pathlib import Path

import numpy as np

import ringdaq
from ringdaq.launch import Pipeline

REPO = Path(__file__).resolve().parents[2]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=1000)
    ap.add_argument("--fps", type=float, default=400)
    a = ap.parse_args()
    if not os.environ.get("RINGDAQ_BIN_DIR"):
        os.environ["RINGDAQ_BIN_DIR"] = str(REPO / "target" / "release")
    with Pipeline() as p:
        with ringdaq.Subscription(p.rt, lossless=True) as sub:
            sim = p.simulate(a.frames, a.fps)
            total, n, busy = 0, 0, 0.0
            keep = []
            t_first = None
            incomplete = 0
            t_last = None
            while n < a.frames:
                try:
                    f = sub.next(timeout=2)
                except ringdaq.Timeout:
                    break  # frames the pipeline could not take while we held it back never come
                t = time.perf_counter()
                if t_first is None:
                    t_first = t
                arr = f.array
                total += int(arr.sum(dtype=np.uint64))
                if len(keep) < 16:
                    keep.append(arr.copy())
                incomplete += int(not f.complete)
                f.release()
                t_last = time.perf_counter()
                busy += t_last - t
                n += 1
            sim.wait()
            missed = sub.missed
            # Quiet: frames held in the ring (not released) while nothing else runs, summed in place again and
            # again, against private copies of the same frames: the cost of the mapping alone.
            sim = p.simulate(8, 50)
            held = [sub.next(timeout=10) for _ in range(8)]
            sim.wait()
            views = [f.array for f in held]
            copies = [v.copy() for v in views]
            quiet = {}
            for name, arrays in (("shared", views), ("private", copies)):
                t = time.perf_counter()
                for _ in range(20):
                    for v in arrays:
                        int(v.sum(dtype=np.uint64))
                quiet[name] = (time.perf_counter() - t) / (20 * len(arrays))
            del views
            for f in held:
                f.release()
    wall_fps = (n - 1) / (t_last - t_first)
    shm_per_frame = busy / n
    # The same loop over an in-memory array of the same frames (cycled), summing each.
    frames = np.stack(keep)
    t = time.perf_counter()
    mem_total = 0
    for i in range(n):
        mem_total += int(frames[i % len(frames)].sum(dtype=np.uint64))
    mem_per_frame = (time.perf_counter() - t) / n
    print(f"frames: {n} of {a.frames} sent ({incomplete} incomplete, {missed} missed), {frames.shape[1]} x {frames.shape[2]} uint16, "
          f"simulator asked for {a.fps:.0f}/s")
    print("| loop | frames/s | ms per frame (own time) | vs in-memory |")
    print("|---|---|---|---|")
    print(f"| zero-copy from the pipeline (lossless) | {wall_fps:.0f} wall, {1 / shm_per_frame:.0f} own | "
          f"{shm_per_frame * 1e3:.2f} | {mem_per_frame / shm_per_frame:.2f}x |")
    print(f"| in-memory numpy array | {1 / mem_per_frame:.0f} | {mem_per_frame * 1e3:.2f} | 1.00x |")
    print()
    print("quiet machine, the same 8 frames summed 20 times each:")
    print(f"| frames held in the pipeline's ring | {1 / quiet['shared']:.0f} | {quiet['shared'] * 1e3:.2f} | "
          f"{quiet['private'] / quiet['shared']:.2f}x |")
    print(f"| private copies | {1 / quiet['private']:.0f} | {quiet['private'] * 1e3:.2f} | 1.00x |")


if __name__ == "__main__":
    main()
