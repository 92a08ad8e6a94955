"""Checks `ringdaq stitch` output with the tool users read it with: h5py.

Run by tests/tests/scale_out.rs:
  stitched WHOLE FIRST_ID N PART...   WHOLE's /entry/data/data is N whole K2 IS frames, frame i the simulator's
                                      frame FIRST_ID + i, all complete; each PART holds its placement's
                                      rectangles of those frames; NX_class attributes as NeXus has them
"""
import os
import sys

import h5py
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hdf5_check import ROWS, COLS, text, variants  # noqa: E402  (the simulator's formula, once)


def stitched(whole, first_id, n, parts):
    want = variants()
    first_id, n = int(first_id), int(n)
    ids = list(range(first_id, first_id + n))
    with h5py.File(whole, "r", locking=False) as f:
        assert text(f["entry"].attrs["NX_class"]) == "NXentry"
        assert text(f["entry/data"].attrs["NX_class"]) == "NXdata"
        assert text(f["entry/data"].attrs["signal"]) == "data"
        assert text(f["entry/instrument/detector"].attrs["NX_class"]) == "NXdetector"
        ds = f["entry/data/data"]
        assert ds.is_virtual, "a virtual dataset"
        assert ds.shape == (n, ROWS, COLS) and ds.dtype == np.dtype("<u2"), (ds.shape, ds.dtype)
        assert list(f["entry/data/frame_id"][()]) == ids, list(f["entry/data/frame_id"][()])
        assert all(f["entry/data/complete"][()]), "every frame complete in every part"
        assert list(f["entry/instrument/detector"].attrs["full_frame_shape"]) == [ROWS, COLS]
        for i in range(n):
            assert np.array_equal(ds[i], want[ids[i] % 8]), f"stitched frame {i} differs from the frame sent"
    for path in parts:
        with h5py.File(path, "r", locking=False) as f:
            det = f["entry/instrument/detector"]
            assert list(det.attrs["full_frame_shape"]) == [ROWS, COLS]
            ds = f["entry/data/data"]
            for row, col, frow, fcol, rows, cols in det.attrs["placement"]:
                for i in range(n):
                    got = ds[i, row:row + rows, col:col + cols]
                    exp = want[ids[i] % 8][frow:frow + rows, fcol:fcol + cols]
                    assert np.array_equal(got, exp), f"{path}: frame {i} differs from its part of the frame sent"
    print("stitched ok", n)


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "stitched":
        stitched(args[0], args[1], args[2], args[3:])
    else:
        sys.exit(f"unknown command {cmd}")
