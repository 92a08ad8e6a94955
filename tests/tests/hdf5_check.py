"""Checks ringdaq's .h5 files with the tools users read them with: h5py and hdf5plugin (for bitshuffle-LZ4).

Run by tests/tests/hdf5.rs:
  compare NPY H5...   every H5 holds the NPY's frames, pixel for pixel, and its metadata matches its sidecar
  formula H5          every frame equals the simulator's documented formula for its frame_id, all complete
  live PARTIAL N      a file being written: frames 0..frames_written equal the formula (frame_id = index);
                      prints frames_written
"""
import json
import sys
from pathlib import Path

import h5py
import hdf5plugin  # noqa: F401  (registers filter 32008, bitshuffle)
import numpy as np

# The simulator's pixel formula in numpy, shared with the Python package's tests.
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "python" / "tests"))
import sim_pattern  # noqa: E402

ROWS, COLS = 1860, 2048


def variants():
    """The simulator's 8 frame variants (frame_id mod 8) of a K2 IS frame."""
    return [sim_pattern.frame(v, (ROWS, COLS)) for v in range(sim_pattern.PERIOD)]


def text(v):
    return v.decode() if isinstance(v, bytes) else str(v)


def check_layout(f, frames):
    assert text(f["entry"].attrs["NX_class"]) == "NXentry"
    assert text(f["entry/definition"][()]) == "NXmx"
    assert text(f["entry/data"].attrs["NX_class"]) == "NXdata"
    assert text(f["entry/data"].attrs["signal"]) == "data"
    assert text(f["entry/instrument"].attrs["NX_class"]) == "NXinstrument"
    det = f["entry/instrument/detector"]
    assert text(det.attrs["NX_class"]) == "NXdetector"
    for a in ("detector_mode", "fill_value"):
        assert a in det.attrs, a
    assert text(f["entry"].attrs["ringdaq_version"]), "version"
    assert text(f["entry"].attrs["ended"]) == "complete", f["entry"].attrs["ended"]
    counters = f["entry/counters"].attrs
    assert int(counters["writer.frames"]) >= frames, dict(counters)
    ds = f["entry/data/data"]
    assert ds.shape == (frames, ROWS, COLS), ds.shape
    assert ds.dtype == np.dtype("<u2"), ds.dtype
    assert ds.chunks == (1, ROWS, COLS), ds.chunks
    assert int(f["entry/data/frames_written"][0]) == frames
    return ds


def check_metadata(f, path):
    side = json.load(open(path.rsplit(".", 1)[0] + ".json"))
    fl = side["frame_list"]
    d = f["entry/data"]
    for key, dtype in [("frame_id", np.uint32), ("missing_blocks", np.uint32), ("first_block_ns", np.uint64),
                       ("last_block_ns", np.uint64), ("published_ns", np.uint64)]:
        got = d[key][()]
        assert got.dtype == dtype, (key, got.dtype)
        assert list(got) == [m[key] for m in fl], key
    assert [bool(x) for x in d["complete"][()]] == [m["complete"] for m in fl]
    assert int(f["entry/instrument/detector"].attrs["fill_value"]) == side["fill_value"]
    return side


def compare(npy, h5s):
    a = np.load(npy, mmap_mode="r")
    for path in h5s:
        with h5py.File(path, "r", locking=False) as f:
            ds = check_layout(f, a.shape[0])
            check_metadata(f, path)
            if path.endswith("bslz4.h5"):
                assert "32008" in ds._filters, ds._filters
            for i in range(a.shape[0]):
                assert np.array_equal(ds[i], a[i]), f"{path}: frame {i} differs from {npy}"
    print("compare ok")


def formula(path):
    want = variants()
    with h5py.File(path, "r", locking=False) as f:
        ds = f["entry/data/data"]
        n = ds.shape[0]
        check_layout(f, n)
        side = check_metadata(f, path)
        assert side["complete_frames"] == n, side["complete_frames"]
        ids = f["entry/data/frame_id"][()]
        assert list(ids) == list(range(n)), "frame ids from 0, consecutive"
        for i in range(n):
            assert np.array_equal(ds[i], want[ids[i] % 8]), f"frame {i} differs from the formula"
    print("formula ok", n)


def live(path, least):
    want = variants()
    with h5py.File(path, "r", locking=False) as f:
        n = int(f["entry/data/frames_written"][0])
        assert n >= int(least), n
        ds = f["entry/data/data"]
        for i in range(n):
            assert np.array_equal(ds[i], want[i % 8]), f"frame {i} of {n} written differs from the formula"
    print(n)


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "compare":
        compare(args[0], args[1:])
    elif cmd == "formula":
        formula(args[0])
    elif cmd == "live":
        live(args[0], args[1])
    else:
        sys.exit(f"unknown command {cmd}")
