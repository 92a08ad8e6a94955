"""Live virtual bright-field (BF) and annular dark-field (ADF) images of a 4D-STEM scan.

Each frame of an acquisition is one probe position of a raster scan: frame index i is scan position
(i // width, i % width). For each frame, the virtual BF signal is the sum of the pixels inside a disk around the
unscattered beam, the virtual ADF signal the sum inside an annulus outside it. The images fill in while the scan
runs; frames are read from the pipeline's shared memory without a copy.

    python virtual_detector.py --runtime-dir /run/ringdaq --scan 64x64 [--acquisition ID] \\
        [--center ROW COL] [--bf-radius 60] [--adf 120 400] [--lossless] [--out images.npz]

Lossy (the default) never slows the acquisition; positions whose frame was missed stay NaN. With --lossless
every position is filled, and a consumer slower than the detector slows the pipeline down.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

import ringdaq


class VirtualDetectors:
    """BF and ADF images of a `height` × `width` scan, from frames of shape `frame_shape`."""

    def __init__(self, scan: tuple[int, int], frame_shape: tuple[int, int], center=None, bf_radius=60.0,
                 adf_radii=(120.0, 400.0)):
        self.height, self.width = scan
        rows, cols = frame_shape
        cy, cx = center if center is not None else (rows / 2, cols / 2)
        # Only the square around the outer ADF radius matters: crop to it, and mask within the crop.
        r = int(np.ceil(max(bf_radius, adf_radii[1])))
        self.r0, self.r1 = max(0, int(cy) - r), min(rows, int(cy) + r + 1)
        self.c0, self.c1 = max(0, int(cx) - r), min(cols, int(cx) + r + 1)
        yy, xx = np.mgrid[self.r0:self.r1, self.c0:self.c1]
        d = np.hypot(yy - cy, xx - cx)
        self.bf_mask = d <= bf_radius
        self.adf_mask = (d >= adf_radii[0]) & (d <= adf_radii[1])
        self.bf = np.full(scan, np.nan)
        self.adf = np.full(scan, np.nan)
        self.filled = 0

    def signals(self, pixels: np.ndarray) -> tuple[float, float]:
        """The (bf, adf) signals of one frame."""
        crop = pixels[self.r0:self.r1, self.c0:self.c1]
        bf = float(np.sum(crop, where=self.bf_mask, dtype=np.uint64))
        adf = float(np.sum(crop, where=self.adf_mask, dtype=np.uint64))
        return bf, adf

    def store(self, index: int, bf: float, adf: float) -> None:
        y, x = divmod(index, self.width)
        if y < self.height:
            self.filled += int(np.isnan(self.bf[y, x]))
            self.bf[y, x], self.adf[y, x] = bf, adf

    @property
    def done(self) -> bool:
        return self.filled == self.height * self.width


def acquire_images(sub: ringdaq.Subscription, det: VirtualDetectors, acquisition: int | None = None,
                   timeout: float = 10.0, progress=None) -> VirtualDetectors:
    """Reads frames until every scan position is filled (or no frame came for `timeout` s). With
    `acquisition` None, the first acquisition whose frame arrives is the scan."""
    while not det.done:
        try:
            frame = sub.next(timeout=timeout)
        except (ringdaq.Timeout, ringdaq.PipelineGone):
            break
        if frame.index is None or frame.acquisition_id == 0:
            continue
        if acquisition is None:
            acquisition = frame.acquisition_id
        if frame.acquisition_id != acquisition:
            continue
        bf, adf = det.signals(frame.array)
        # A lossy reader keeps what it computed only if the frame was not overwritten meanwhile.
        if frame.valid():
            det.store(frame.index, bf, adf)
        frame.release()
        if progress is not None:
            progress(det)
    return det


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runtime-dir", required=True)
    ap.add_argument("--scan", default="64x64", help="HEIGHTxWIDTH of the scan")
    ap.add_argument("--acquisition", type=int, help="acquisition id (default: the next one)")
    ap.add_argument("--center", type=float, nargs=2, metavar=("ROW", "COL"))
    ap.add_argument("--bf-radius", type=float, default=60.0)
    ap.add_argument("--adf", type=float, nargs=2, default=(120.0, 400.0), metavar=("INNER", "OUTER"))
    ap.add_argument("--lossless", action="store_true")
    ap.add_argument("--out", default="virtual_images.npz")
    a = ap.parse_args(argv)
    h, w = (int(v) for v in a.scan.lower().split("x"))
    t0 = time.monotonic()
    last = [0.0]

    def progress(det: VirtualDetectors) -> None:
        now = time.monotonic()
        if now - last[0] >= 1.0:
            last[0] = now
            print(f"{now - t0:6.1f} s  {det.filled}/{h * w} positions", file=sys.stderr)

    with ringdaq.Subscription(a.runtime_dir, lossless=a.lossless) as sub:
        det = VirtualDetectors((h, w), sub.shape, a.center, a.bf_radius, tuple(a.adf))
        acquire_images(sub, det, a.acquisition, progress=progress)
        missed = sub.missed
    np.savez(a.out, bf=det.bf, adf=det.adf)
    print(f"{det.filled}/{h * w} positions in {time.monotonic() - t0:.1f} s ({missed} frames missed); "
          f"images in {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
