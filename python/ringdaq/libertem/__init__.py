"""ringdaq as a LiberTEM-live detector: run LiberTEM's UDFs live on a ringdaq pipeline's frames.

    from libertem.udf.sum import SumUDF
    from libertem_live.api import LiveContext
    from ringdaq.libertem import RingdaqConnection

    ctx = LiveContext()
    with RingdaqConnection() as conn:             # or RingdaqConnection(runtime_dir): the CLI's defaults
        aq = ctx.make_acquisition(conn=conn, nav_shape=(32, 32))
        result = ctx.run_udf(aq, SumUDF())        # arms a 1024-frame acquisition and processes it live

The connector arms the acquisition itself (`conn.get_active_controller(sync="flag", output="scan.h5",
compression="bslz4")` for scan sync on the detector's flag, and a file as well; by default frame 0 is the first
frame after arming and nothing is written). Frame index i of the acquisition is scan position i; a region of
interest (`run_udf(..., roi=mask)`) selects scan positions.

The main process holds one lossless subscription and hands each worker only `(sequence, index)` references;
workers map the region read-only once (`ringdaq.RegionReader`) and copy (converting) frames straight into
their tiles (for UDFs by tile, bands of 128 rows a few frames deep, which stay in the cache for the UDF), then tell the main process, which releases them: the gate advances as partitions finish, in any
order. Incomplete frames are processed as the assembler left them (missing blocks hold the fill value) and
counted: `aq.incomplete_frames`, with a warning in the log.
"""

from .acquisition import RingdaqAcquisition, RingdaqLivePartition
from .connection import RingdaqConnection, RingdaqController, RingdaqPendingAcquisition

__all__ = [
    "RingdaqAcquisition",
    "RingdaqConnection",
    "RingdaqController",
    "RingdaqLivePartition",
    "RingdaqPendingAcquisition",
]
