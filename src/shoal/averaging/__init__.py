"""Averaging: group all-reduce of flat tensors over the transport's bulk streams.

`bulk_router.py` shares one Transport's bulk handler among consumers by tag prefix;
`allreduce.py` is the reduce-scatter + all-gather (`stream_format.py` its tags and
header, `shards.py` who owns which slice, `buffer_pool.py` the transient buffers it
reuses from round to round); groups come from `rounds/moshpit.py`.
"""

from shoal.averaging.allreduce import AllReduce, AllReduceFailed, AllReduceResult, all_reduce
from shoal.averaging.bulk_router import BulkReceiver, BulkRouter
from shoal.averaging.shards import shard_bounds
from shoal.averaging.stream_format import shard_align

__all__ = [
    "AllReduce",
    "AllReduceFailed",
    "AllReduceResult",
    "BulkReceiver",
    "BulkRouter",
    "all_reduce",
    "shard_align",
    "shard_bounds",
]
