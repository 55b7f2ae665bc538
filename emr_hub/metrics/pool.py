"""The database pool of each process: its size and the connections checked out of it.

Both are per-process gauges (a ``pid`` label in multiprocess mode, gone once the process
ends). The checked-out connections are kept as the set of their pool records, added on
checkout and removed on checkin (SQLAlchemy announces a checkin before the connection is back
in the pool, so reading the pool's own count then would be one too high). The listeners are
the engine's, which SQLAlchemy carries over to the new pool when the engine is disposed (a
forked Celery process disposes its parent's).
"""

from __future__ import annotations

import threading
import weakref
from functools import cache

from prometheus_client import Gauge
from sqlalchemy import Engine, event

_lock = threading.Lock()
_sizes: weakref.WeakKeyDictionary[Engine, int] = weakref.WeakKeyDictionary()
_in_use: set[int] = set()
"""``id()`` of the pool records checked out now, of every watched engine."""


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
    """Report ``engine``'s pool (once per engine; a process with several engines reports
    their sum)."""
    with _lock:
        if engine in _sizes:
            return
        size = getattr(engine.pool, "size", None)
        _sizes[engine] = size() if callable(size) else 0
        _gauges()[0].set(sum(_sizes.values()))
    event.listen(engine, "checkout", _checked_out)
    event.listen(engine, "checkin", _checked_in)


def _checked_out(_connection: object, record: object, _proxy: object) -> None:
    with _lock:
        _in_use.add(id(record))
        _gauges()[1].set(len(_in_use))


def _checked_in(_connection: object, record: object) -> None:
    with _lock:
        _in_use.discard(id(record))
        _gauges()[1].set(len(_in_use))
