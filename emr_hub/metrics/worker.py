"""The Celery side: every task counted and timed, each pool process's database pool, and the
worker's own ``/metrics`` endpoint.

The task signals fire wherever a task runs: in a worker's pool processes, and in the API
itself when there is no broker (jobs then run in process). A worker's processes write to the
folder :func:`~emr_hub.metrics.directory.prepare` gives the worker when it starts (Celery's
``worker_init``, in the main process, before the pool is forked), and a pool process leaving
marks itself dead.

With ``EMR_HUB_WORKER_METRICS_PORT`` set, the worker's main process answers
``GET /metrics`` on that port (all interfaces) with the merged samples of its processes, to
the scrape token only (a worker verifies no access tokens). Database gauges are the API's to
report, not the workers'.
"""

from __future__ import annotations

import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from celery.signals import task_postrun, task_prerun, worker_init, worker_process_shutdown
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from emr_hub.config import Settings, get_settings
from emr_hub.errors import Issue, operation_outcome
from emr_hub.fhir.http import FHIR_JSON, dump
from emr_hub.metrics import directory
from emr_hub.metrics.definitions import TASK_DURATION, TASKS
from emr_hub.metrics.exposition import PATH, is_scrape_token, processes
from emr_hub.metrics.pool import watch_pool

log = logging.getLogger(__name__)

_started: dict[str, float] = {}
"""``perf_counter()`` at the start of each task running in this process, by task id."""


@task_prerun.connect
def _task_started(task_id: str, task: Any, **_: Any) -> None:
    from emr_hub.tasks import in_process, worker_hub

    _started[task_id] = time.perf_counter()
    if not in_process():  # in process, the API's or the command's Hub is watched already
        watch_pool(worker_hub().db.engine)


@task_postrun.connect
def _task_ended(task_id: str, task: Any, state: str | None = None, **_: Any) -> None:
    started = _started.pop(task_id, None)
    TASKS.labels(task.name, (state or "unknown").lower()).inc()
    if started is not None:
        TASK_DURATION.labels(task.name).observe(time.perf_counter() - started)


@worker_process_shutdown.connect
def _pool_process_ended(**_: Any) -> None:
    directory.mark_dead()


@worker_init.connect
def _worker_starting(**_: Any) -> None:
    settings = get_settings()
    directory.prepare(settings, "worker")
    if settings.worker_metrics_port is not None:
        serve_metrics(settings)


def serve_metrics(settings: Settings) -> ThreadingHTTPServer:
    """Answer ``GET /metrics`` on ``EMR_HUB_WORKER_METRICS_PORT`` from a daemon thread."""
    if settings.metrics_token is None:
        raise SystemExit(
            "EMR_HUB_WORKER_METRICS_PORT needs EMR_HUB_METRICS_TOKEN: a worker's metrics are "
            "read with the scrape token"
        )

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.split("?", 1)[0] != PATH:
                self._answer(404, FHIR_JSON, _outcome("not-found", f"Only {PATH} is here"))
                return
            scheme, _, token = (self.headers.get("Authorization") or "").partition(" ")
            if scheme.lower() != "bearer" or not is_scrape_token(settings, token.strip()):
                self._answer(
                    401,
                    FHIR_JSON,
                    _outcome("login", "Send the scrape token: Authorization: Bearer <token>"),
                    {"WWW-Authenticate": 'Bearer realm="emr_hub"'},
                )
                return
            scrape = CollectorRegistry(auto_describe=False)
            processes(scrape)
            self._answer(200, CONTENT_TYPE_LATEST, generate_latest(scrape))

        def _answer(
            self, status: int, media_type: str, body: bytes, headers: dict[str, str] | None = None
        ) -> None:
            self.send_response(status)
            self.send_header("Content-Type", media_type)
            self.send_header("Content-Length", str(len(body)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            """No line per scrape (the base class writes one to stderr)."""

    server = ThreadingHTTPServer(("0.0.0.0", settings.worker_metrics_port), Handler)  # noqa: S104 - a container's port
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="emr-hub-metrics", daemon=True).start()
    log.info("worker metrics on port %d", settings.worker_metrics_port)
    return server


def _outcome(code: str, message: str) -> bytes:
    return dump(operation_outcome([Issue(code, message)]))
