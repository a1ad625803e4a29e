"""Secure aggregation: pairwise-masked sums with dropout recovery (sans-IO cores).

``client.py`` and ``collector.py`` are the two roles; ``prg.py`` key agreement and
masks, ``shamir.py`` secret sharing, ``fixed_point.py`` the ring encoding,
``local_run.py`` an in-process driver.
"""

from shoal.secagg.client import SecAggClient, SecAggError
from shoal.secagg.collector import SecAggCollector
from shoal.secagg.local_run import run_local

__all__ = ["SecAggClient", "SecAggCollector", "SecAggError", "run_local"]
