"""The simulator's pixels (detector/src/pattern.rs), in numpy: what `ringdaq sim` sends, to check what came
out of the pipeline against.

    pixel(frame_id, row, col) = splitmix64(((frame_id mod 8) << 32) | (row << 16) | col) & pixel_mask
"""

import numpy as np

PERIOD = 8
IS_MASK = 0x0FFF


def _splitmix64(z: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        z = z + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def frame(frame_id: int, shape=(1860, 2048), mask: int = IS_MASK) -> np.ndarray:
    """The frame the simulator sends as `frame_id` (K2 IS by default)."""
    rows = np.arange(shape[0], dtype=np.uint64)[:, None]
    cols = np.arange(shape[1], dtype=np.uint64)[None, :]
    key = (np.uint64(frame_id % PERIOD) << np.uint64(32)) | (rows << np.uint64(16)) | cols
    return (_splitmix64(key) & np.uint64(mask)).astype(np.uint16)


def frames(first_frame_id: int, n: int, shape=(1860, 2048)) -> list:
    """Frames `first_frame_id`..+n as the simulator sends them (the 8 variants, shared)."""
    variants = [frame(v, shape) for v in range(PERIOD)]
    return [variants[(first_frame_id + i) % PERIOD] for i in range(n)]
