"""Read a running ringdaq pipeline's frames as zero-copy, read-only numpy arrays; arm, stop and query its
acquisitions; run LiberTEM on them live (`ringdaq.libertem`).

    import numpy as np
    import ringdaq

    with ringdaq.Subscription(lossless=False) as sub:  # the CLI's runtime directory; or Subscription(path)
        for frame in sub:                      # until the pipeline shuts down
            img = frame.array                  # (rows, cols) uint16, read-only, no copy
            total = int(img.sum(dtype=np.uint64))
            if frame.valid():                  # lossy: was it overwritten while we read it?
                print(frame.acquisition_id, frame.index, frame.frame_id, frame.complete, total)

A lossy subscription never slows the pipeline and counts what it missed (`sub.missed`). A lossless one
(`lossless=True`) receives every frame and holds the pipeline until it releases each: iteration releases a
frame when it takes the next; `frame.release()` does it earlier. An array is a view of the shared memory:
copy it (`frame.array.copy()`) to keep it past its frame's release.

Frames can be released from any thread and in any order: the pipeline's gate advances over the contiguous
prefix of released frames. `frame.keep()` hands a frame's release to the caller (`sub.release(seq)`), so that
another process can read it by sequence with a `RegionReader` meanwhile.

    ctl = ringdaq.Control()                    # the supervisor's control socket
    acq = ctl.acquire(1024, "scan.npy")        # or ctl.acquire(1024): live-only, nothing written
    print(ctl.wait(acq, timeout=60))           # {'state': 'done', 'complete': 1024, ...}
"""

from ._ringdaq import (  # noqa: F401
    ConsumerError,
    Control,
    ControlError,
    Frame,
    FrameOverwritten,
    PipelineGone,
    Refused,
    RegionReader,
    Subscription,
    Timeout,
    default_runtime_dir,
)

__all__ = [
    "ConsumerError",
    "Control",
    "ControlError",
    "Frame",
    "FrameOverwritten",
    "PipelineGone",
    "Refused",
    "RegionReader",
    "Subscription",
    "Timeout",
    "default_runtime_dir",
]
