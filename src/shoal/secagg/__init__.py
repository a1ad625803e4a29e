"""Secure aggregation: pairwise-masked sums with dropout recovery (sans-IO cores).

``client.py`` and ``collector.py`` are the two roles; ``prg.py`` key agreement and
masks, ``shamir.py`` secret sharing, ``fixed_point.py`` the ring encoding,
``local_run.py`` an in-process driver. Among real peers: ``group_driver.py``
(``secure_average``, the round group's collector and members over the transport;
``network_session.py``, ``network_collector.py``, ``network_member.py``,
``network_messages.py``), ``transport_host.py`` (a bare Transport as its host).
"""

from shoal.secagg.client import SecAggClient, SecAggError
from shoal.secagg.collector import SecAggCollector
from shoal.secagg.local_run import run_local

__all__ = ["SecAggClient", "SecAggCollector", "SecAggError", "run_local"]
