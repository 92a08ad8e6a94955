"""Read a running ringdaq pipeline's frames as zero-copy, read-only numpy arrays.

    import numpy as np
    import ringdaq

    with ringdaq.Subscription("/run/ringdaq", lossless=False) as sub:
        for frame in sub:                      # until the pipeline shuts down
            img = frame.array                  # (rows, cols) uint16, read-only, no copy
            total = int(img.sum(dtype=np.uint64))
            if frame.valid():                  # lossy: was it overwritten while we read it?
                print(frame.acquisition_id, frame.index, frame.frame_id, frame.complete, total)

A lossy subscription never slows the pipeline and counts what it missed (`sub.missed`). A lossless one
(`lossless=True`) receives every frame and holds the pipeline until it releases each: iteration releases a
frame when it takes the next; `frame.release()` does it earlier. An array is a view of the shared memory:
copy it (`frame.array.copy()`) to keep it past its frame's release.
"""

from ._ringdaq import (  # noqa: F401
    ConsumerError,
    Frame,
    PipelineGone,
    Refused,
    Subscription,
    Timeout,
)

__all__ = ["ConsumerError", "Frame", "PipelineGone", "Refused", "Subscription", "Timeout"]
