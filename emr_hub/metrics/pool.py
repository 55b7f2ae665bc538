"""The database pool of each process: its size and the connections checked out of it.

Both are per-process gauges (a ``pid`` label in multiprocess mode, gone once the process
ends). A thread of the process reads them from the pool every :data:`SAMPLE_SECONDS`: a
listener on every checkout and checkin would cost each request microseconds for a value a
scrape reads every few seconds. The engine's current pool is read each time, so a disposed
engine (a forked Celery process disposes its parent's) is followed to its new pool.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from functools import cache

from prometheus_client import Gauge
from sqlalchemy import Engine

log = logging.getLogger(__name__)
SAMPLE_SECONDS = 1.0

_lock = threading.Lock()
_engines: weakref.WeakSet[Engine] = weakref.WeakSet()
_sampler_pid: int | None = None
"""The process whose sampling thread runs (a forked child starts its own)."""


@cache
def _gauges() -> tuple[Gauge, Gauge]:
    """Made on first use, so a process holding no database (a Celery worker's main process)
    shows no pool."""
    return (
        Gauge(
            "emr_hub_db_pool_size",
            "Connections this process's database pool holds at most",
            multiprocess_mode="liveall",
        ),
        Gauge(
            "emr_hub_db_pool_checked_out",
            "Connections of this process's database pool in use now",
            multiprocess_mode="liveall",
        ),
    )


def watch_pool(engine: Engine) -> None:
    """Report ``engine``'s pool from now on (a process with several engines reports their
    sum)."""
    global _sampler_pid
    with _lock:
        _engines.add(engine)
        if _sampler_pid != os.getpid():
            _sampler_pid = os.getpid()
            threading.Thread(
                target=_sample_forever, name="emr-hub-pool-metrics", daemon=True
            ).start()
    sample()


def sample() -> None:
    size = checked_out = 0
    for engine in list(_engines):
        pool = engine.pool
        size += _call(pool, "size")
        checked_out += _call(pool, "checkedout")
    size_gauge, checked_out_gauge = _gauges()
    size_gauge.set(size)
    checked_out_gauge.set(checked_out)


def _sample_forever() -> None:
    while True:
        time.sleep(SAMPLE_SECONDS)
        try:
            sample()
        except Exception:
            log.exception("could not read the database pool for its metrics")


def _call(pool: object, name: str) -> int:
    """``pool.size()`` or ``pool.checkedout()``; 0 for a pool without them (SQLAlchemy's
    NullPool and StaticPool keep no count)."""
    method = getattr(pool, name, None)
    return int(method()) if callable(method) else 0
