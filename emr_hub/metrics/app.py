"""What the API application adds for its metrics: the route, the middleware, the gauges."""

from __future__ import annotations

from collections.abc import Callable

from fastapi import FastAPI

from emr_hub.hub import Hub
from emr_hub.metrics import (
    directory,
    gauges,
    worker,  # noqa: F401 - its Celery signals: jobs run here without a broker
)
from emr_hub.metrics.exposition import router
from emr_hub.metrics.http import RequestMetrics
from emr_hub.metrics.pool import watch_pool


def install(app: FastAPI) -> None:
    """Add ``/metrics`` and the request metrics to ``app``; call it after every other
    middleware, so the request metrics are the outermost and time all of them."""
    gauges.install()
    app.include_router(router)
    app.add_middleware(RequestMetrics)


def start_process_metrics(hub: Hub) -> Callable[[], None]:
    """Report this API process's database pool; the returned function, called as the process
    leaves, drops its per-process gauges."""
    watch_pool(hub.db.engine)
    return directory.mark_dead
