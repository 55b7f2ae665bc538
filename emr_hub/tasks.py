"""Background work: the Celery app, the per-process Hub of tasks, and after-commit sending.

Two modes, chosen by ``EMR_HUB_BROKER_URL``:

* **Broker** (``redis://`` or ``amqp://``): jobs are published to the broker after the
  database transaction that owes them has committed, and run by ``emr-hub worker``;
  ``emr-hub beat`` (or ``emr-hub worker --beat`` on a single node) sends ``relay_outbox``
  every :data:`RELAY_INTERVAL` seconds as a safety net.
* **In process** (no broker, the embedded default): nothing needs a broker. The app is
  eager on the in-memory transport, and a job owed by a transaction runs synchronously in
  the committing thread once the commit has succeeded. Periodic relaying (retries whose
  backoff expires later) is done by :func:`start_relay_thread`, which the API starts in
  this mode instead of beat.

Workers acknowledge a job only after it has run (``task_acks_late``) and a job whose worker
process died is requeued (``task_reject_on_worker_lost``): jobs must be idempotent, which
the outbox relay is by construction (it works from database rows, not from the job).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from celery import Celery, Task
from celery.signals import after_setup_logger, worker_process_init, worker_process_shutdown

from emr_hub.config import Settings, get_settings
from emr_hub.hub import Hub
from storage.db import after_commit

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

log = logging.getLogger(__name__)

RELAY_INTERVAL = 10.0
"""Seconds between two safety-net runs of ``relay_outbox`` (beat, or the relay thread)."""

IN_PROCESS_BROKER = "memory://"
RELAY_TASK = "emr_hub.relay_outbox"

celery_app = Celery(
    "emr_hub",
    include=[
        "emr_hub.outbox",
        "emr_hub.subscriptions.delivery",
        "emr_hub.export.tasks",
        "emr_hub.healthbook.push_delivery",
        "emr_hub.imaging.removal",
        "emr_hub.metrics.worker",
    ],
)
SWEEP_INTERVAL = 30.0
"""Seconds between two runs of the periodic housekeeping of the feature packages."""
_HOUSEKEEPING: list[Callable[[Hub], None]] = []


def register_housekeeping(job: Callable[[Hub], None]) -> None:
    """Have ``job(hub)`` run periodically in in-process mode (the relay thread runs it; with a
    broker, the feature's own beat entry in :func:`configure_celery` does)."""
    if job not in _HOUSEKEEPING:
        _HOUSEKEEPING.append(job)


class _State:
    """What this process was configured with, and the Hub its tasks use."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.settings: Settings | None = None
        self.hub: Hub | None = None
        self.owns_hub = False
        # Set while the API's relay thread runs: a kick then wakes it instead of relaying
        # inside the request that committed.
        self.relay_wake: threading.Event | None = None


_state = _State()


def configure_celery(settings: Settings, *, hub: Hub | None = None) -> None:
    """(Re)configure :data:`celery_app` and the task Hub of this process from ``settings``.

    Called once at import with :func:`get_settings`. A process that already holds a Hub
    (the API, a test) passes it as ``hub`` so in-process jobs use the same database
    engine instead of opening a second one; otherwise :func:`worker_hub` builds one from
    ``settings`` on first use.
    """
    broker = settings.broker_url or IN_PROCESS_BROKER
    if celery_app.conf.broker_url not in (None, broker):
        _drop_broker_connections()
    celery_app.conf.update(
        broker_url=broker,
        task_always_eager=not settings.broker_url,
        task_eager_propagates=False,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_backend=None,
        task_ignore_result=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_cancel_long_running_tasks_on_connection_loss=True,
        broker_connection_retry_on_startup=True,
        enable_utc=True,
        timezone="UTC",
        beat_schedule={
            "relay-outbox": {
                "task": RELAY_TASK,
                "schedule": RELAY_INTERVAL,
                # A tick nobody consumed in time is worthless: the next one does the same.
                "options": {"expires": RELAY_INTERVAL},
            },
            # Resumes exports whose worker died, removes expired export files.
            "export-sweep": {
                "task": "emr_hub.export.sweep",
                "schedule": SWEEP_INTERVAL,
                "options": {"expires": SWEEP_INTERVAL},
            },
        },
    )
    with _state.lock:
        previous, owned = _state.hub, _state.owns_hub
        _state.settings = settings
        _state.hub = hub
        _state.owns_hub = False
    if owned and previous is not None and previous is not hub:
        previous.close()


def _drop_broker_connections() -> None:
    """Stop using the pools of the previous broker (only when the URL changes).

    Celery caches its connection and producer pools for the first broker it talks to;
    this is what ``Celery._after_fork`` resets too. The pools themselves are kombu's
    process-wide ones, keyed by URL, and are left open for whoever else uses that URL.
    """
    celery_app._pool = None
    amqp = celery_app.__dict__.get("amqp")
    if amqp is not None:
        amqp._producer_pool = None


def in_process() -> bool:
    """True when no broker is configured: jobs run in the committing process."""
    return bool(celery_app.conf.task_always_eager)


def process_settings() -> Settings:
    """The settings this process was configured with (:func:`configure_celery`): what a
    change hook, which is given no Hub, reads its feature's settings from."""
    with _state.lock:
        return _state.settings or get_settings()


def worker_hub() -> Hub:
    """The Hub tasks of this process use, built lazily (without migrating) on first call."""
    with _state.lock:
        if _state.hub is None:
            _state.hub = Hub.from_settings(_state.settings or get_settings())
            _state.owns_hub = True
        return _state.hub


def enqueue_after_commit(session: Session, task: Task, *args: Any, **kwargs: Any) -> None:
    """Send ``task(*args, **kwargs)`` once ``session``'s transaction has committed.

    Nothing is sent if the transaction rolls back. With a broker the job is published;
    a publishing failure is logged, not raised, because the commit has already happened
    and the job must be recoverable from the database (the outbox safety net). Without a
    broker the job runs here after the commit: the outbox relay is handed to the relay
    thread when one runs (the API), so no request waits on a receiver; anything else, and the
    relay in processes without the thread (CLI, tests), runs synchronously.
    """

    def send() -> None:
        try:
            wake = _state.relay_wake
            if in_process() and task.name == RELAY_TASK and wake is not None:
                wake.set()
            elif in_process():
                task.apply(args=args, kwargs=kwargs)
            else:
                task.apply_async(args=args, kwargs=kwargs)
        except Exception:
            log.exception("could not start %s after commit; the periodic relay will", task.name)

    after_commit(session, send)


@after_setup_logger.connect
def _quiet_http_client_logs(**_: Any) -> None:
    """httpx logs every request URL at INFO; receiver URLs may name a patient or citizen."""
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(logging.WARNING)


@worker_process_init.connect
def _forget_parent_hub(**_: Any) -> None:
    """A forked pool process must not share the parent's database connections."""
    with _state.lock:
        hub, owned = _state.hub, _state.owns_hub
        if owned:
            _state.hub, _state.owns_hub = None, False
    if owned and hub is not None:
        hub.db.engine.dispose(close=False)


@worker_process_shutdown.connect
def _close_hub(**_: Any) -> None:
    with _state.lock:
        hub, owned = _state.hub, _state.owns_hub
        _state.hub, _state.owns_hub = None, False
    if owned and hub is not None:
        hub.close()


def start_relay_thread(hub: Hub, *, interval: float = RELAY_INTERVAL) -> Callable[[], None]:
    """In-process mode's beat and worker: relay due outbox messages when a commit wakes the
    thread, and every ``interval`` seconds in any case (retries whose backoff has passed).

    Returns a function that stops the thread (and waits for a running relay to finish).
    """
    from emr_hub.outbox import relay_pending

    stopping = False
    wake = threading.Event()
    swept = 0.0

    def loop() -> None:
        nonlocal swept
        while True:
            wake.wait(interval)
            wake.clear()
            if stopping:
                return
            try:
                relay_pending(hub)
            except Exception:
                log.exception("outbox relay failed")
            if time.monotonic() - swept >= min(interval, SWEEP_INTERVAL):
                swept = time.monotonic()
                for job in list(_HOUSEKEEPING):
                    try:
                        job(hub)
                    except Exception:
                        log.exception("periodic housekeeping failed")

    thread = threading.Thread(target=loop, name="emr-hub-outbox-relay", daemon=True)
    thread.start()
    _state.relay_wake = wake

    def stop_thread() -> None:
        nonlocal stopping
        if _state.relay_wake is wake:
            _state.relay_wake = None
        stopping = True
        wake.set()
        thread.join()

    return stop_thread


def _require_broker(command: str) -> None:
    if in_process():
        raise SystemExit(
            f"emr-hub {command}: EMR_HUB_BROKER_URL is not set; without a broker, jobs run "
            "inside the API process and no worker is needed."
        )


def run_worker(argv: list[str]) -> None:
    """``emr-hub worker [celery worker options]``: log level info and 2 processes by default.

    Options given in ``argv`` win over the defaults (``--beat``, ``-c 8``, ``-Q ...``...);
    with ``--beat`` the schedule file defaults to ``DATA_DIR/celerybeat-schedule``.
    """
    _require_broker("worker")
    defaults = ["--loglevel", "INFO", "--concurrency", "2"]
    embedded_beat = any(arg in ("-B", "--beat") for arg in argv)
    if embedded_beat and not any(arg.startswith(("-s", "--schedule")) for arg in argv):
        defaults += ["--schedule", _schedule_file()]
    celery_app.worker_main(["worker", *defaults, *argv])


def run_beat(argv: list[str]) -> None:
    """``emr-hub beat [celery beat options]``: the schedule file lives under DATA_DIR."""
    _require_broker("beat")
    celery_app.start(["beat", "--loglevel", "INFO", "--schedule", _schedule_file(), *argv])


def _schedule_file() -> str:
    settings = _state.settings or get_settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    return str(settings.data_dir / "celerybeat-schedule")


configure_celery(get_settings())
