"""The Python package against a real pipeline: frames read live through it are exactly the pixels the writer
wrote; arrays are read-only views of the shared memory; lossy consumers report what they missed; errors are
Python exceptions."""

import importlib.util
import time
from pathlib import Path

import numpy as np
import pytest

import ringdaq
from ringdaq.launch import SMALL_RINGS, Pipeline


def test_frames_read_live_are_the_pixels_written(pipeline):
    frames = 20
    with ringdaq.Subscription(pipeline.rt, lossless=True) as sub:
        assert sub.lossless and sub.shape == (1860, 2048)
        acq, path = pipeline.acquire(frames, "live.npy")
        sim = pipeline.simulate(frames + 10, 100)
        got = {}
        while len(got) < frames:
            f = sub.next(timeout=20)
            if f.acquisition_id == acq:
                a = f.array
                assert a.shape == (1860, 2048) and a.dtype == np.uint16
                got[f.index] = a.copy()
            f.release()
        sim.wait(timeout=60)
    pipeline.wait_file(path)
    written = np.load(path, mmap_mode="r")
    assert written.shape == (frames, 1860, 2048)
    assert sorted(got) == list(range(frames))
    for i, pixels in got.items():
        assert np.array_equal(pixels, written[i]), f"frame {i} differs from the file"


def test_jungfrau_frames_are_the_stacked_modules():
    frames = 10
    # Top-level keys before the tables of SMALL_RINGS.
    with Pipeline(config='detector = "jungfrau"\nmodules = 2\n' + SMALL_RINGS) as p:
        with ringdaq.Subscription(p.rt, lossless=True) as sub:
            assert sub.shape == (1024, 1024)
            acq, path = p.acquire(frames, "jf.npy")
            sim = p.simulate(frames + 10, 100, "--detector", "jungfrau", "--modules", "2", "--first-frame-id", "1")
            got = {}
            while len(got) < frames:
                f = sub.next(timeout=20)
                if f.acquisition_id == acq:
                    got[f.index] = f.array.copy()
                f.release()
            sim.wait(timeout=60)
        p.wait_file(path)
        written = np.load(path, mmap_mode="r")
        assert written.shape == (frames, 1024, 1024) and written.dtype == np.uint16
        for i, pixels in got.items():
            assert np.array_equal(pixels, written[i]), f"frame {i} differs from the file"


def test_arrays_are_read_only_views_of_shared_memory(pipeline):
    with ringdaq.Subscription(pipeline.rt) as sub:
        sim = pipeline.simulate(5, 50)
        f = sub.next(timeout=20)
        a, b = f.array, np.asarray(f)
        assert not a.flags.writeable
        with pytest.raises(ValueError):
            a[0, 0] = 1
        # Two views of the same frame share memory: neither is a copy.
        assert a.__array_interface__["data"][0] == b.__array_interface__["data"][0]
        assert np.shares_memory(a, b)
        assert f.valid() and f.complete and f.index is None and f.acquisition_id == 0
        del a, b, f
        sim.wait(timeout=60)


def test_a_sleeping_lossy_consumer_counts_its_misses(pipeline):
    seen = 0
    with ringdaq.Subscription(pipeline.rt) as sub:
        sim = pipeline.simulate(60, 100)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                f = sub.next(timeout=2)
            except ringdaq.Timeout:
                break
            seen += int(f.valid())
            time.sleep(0.05)
        sim.wait(timeout=60)
        assert sub.missed > 0
        assert seen + sub.missed >= 60 - 1
    status = pipeline.cli("status").stdout
    assert "assembler.frames_complete        60" in status, status


def test_iteration_ends_when_the_pipeline_shuts_down(pipeline):
    sub = ringdaq.Subscription(pipeline.rt)
    sim = pipeline.simulate(3, 50)
    sim.wait(timeout=60)
    pipeline.close()
    n = sum(1 for _ in sub)  # takes what is there, then stops
    assert n <= 3
    with pytest.raises(ringdaq.PipelineGone):
        sub.next(timeout=0.1)


def test_errors_are_python_exceptions(pipeline, tmp_path):
    with pytest.raises(ringdaq.Refused):
        ringdaq.Subscription(tmp_path / "nowhere")
    with ringdaq.Subscription(pipeline.rt) as sub:
        with pytest.raises(ringdaq.Timeout):
            sub.next(timeout=0.05)
        assert issubclass(ringdaq.Timeout, ringdaq.ConsumerError)
    with pytest.raises(ringdaq.PipelineGone):
        sub.next(timeout=0.05)


def test_the_virtual_detector_example_images_a_scan(pipeline):
    spec = importlib.util.spec_from_file_location(
        "virtual_detector", Path(__file__).resolve().parents[1] / "examples" / "virtual_detector.py")
    vd = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(vd)
    scan = (4, 6)
    n = scan[0] * scan[1]
    with ringdaq.Subscription(pipeline.rt, lossless=True) as sub:
        det = vd.VirtualDetectors(scan, sub.shape, bf_radius=60, adf_radii=(120, 400))
        acq, path = pipeline.acquire(n, "scan.npy")
        sim = pipeline.simulate(n + 10, 100)
        vd.acquire_images(sub, det, acquisition=acq, timeout=20)
        sim.wait(timeout=60)
    assert det.done
    pipeline.wait_file(path)
    written = np.load(path, mmap_mode="r")
    for i in range(n):
        bf, adf = det.signals(written[i])
        y, x = divmod(i, scan[1])
        assert det.bf[y, x] == bf and det.adf[y, x] == adf, f"position {i}"
    assert np.all(det.adf > 0) and np.all(det.bf > 0)
