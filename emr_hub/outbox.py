"""The transactional outbox: messages owed by a write, stored with it, relayed by Celery.

A write that owes a message to another system (a subscription notification, a push to the
citizen's identity wallet) calls :func:`add_message` with the session of its own
transaction, so the message is committed, or rolled back, together with the write. After
the commit the ``relay_outbox`` job is kicked (once per transaction); it delivers due
messages one at a time through the handler registered for their topic.

Delivery is at least once: a message is marked delivered in the same transaction that
holds its row lock while the handler runs, so a crash anywhere before that commit leaves
the row as it was and a later relay sends it again *with the same message id*. Handlers
pass that id to the receiver as an idempotency key (``Idempotency-Key`` for
``http.post``); a receiver that ignores a key it has already processed therefore sees
each message exactly once.

Failures are retried with exponential backoff (:func:`backoff`) up to ``max_attempts``, or
as the topic's own :class:`RetryPolicy` says (a topic whose receiver may be down for hours);
a message whose topic is unknown or whose payload can never be sent (see
:data:`PERMANENT_ERRORS`) is marked failed at once.

Order: messages given the same ``sequence`` key (a Subscription's notifications about one
resource) are sent in the order of their place in it (the resource's version). A message waits
while an earlier one of its sequence is still owed, retries and backoff included, so a receiver
never gets version 2 before version 1; once the earlier one is delivered, or has failed for
good, the next goes. Messages of different sequences do not wait for each other.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import httpx
from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session, aliased
from sqlmodel import col

from emr_hub.hub import Hub
from emr_hub.tasks import (
    RELAY_INTERVAL,
    RELAY_TASK,
    celery_app,
    enqueue_after_commit,
    in_process,
    worker_hub,
)
from storage import json_codec
from storage.db import as_utc
from storage.tables import OutboxMessage

log = logging.getLogger(__name__)

Handler = Callable[[Hub, str, dict[str, Any]], None]

MAX_ATTEMPTS = 12
BACKOFF_BASE = 2.0
BACKOFF_CAP = 600.0
LAST_ERROR_CHARS = 500
RELAY_BATCH = 100
MIN_COUNTDOWN = 1.0
HTTP_TIMEOUT = httpx.Timeout(10.0, connect=5.0)

_KICKED = "emr_hub.outbox_kicked"
_HANDLERS: dict[str, Handler] = {}


@dataclass(frozen=True)
class RetryPolicy:
    """How a topic's failing messages are retried: backoff doubling from 2 s up to
    ``backoff_cap`` seconds, given up once the message is ``max_age`` old (a failed attempt
    after that fails it)."""

    backoff_cap: float
    max_age: timedelta

    def delay(self, attempts: int) -> float:
        return backoff(attempts, cap=self.backoff_cap)


_POLICIES: dict[str, RetryPolicy] = {}
_delivery_session: ContextVar[Session | None] = ContextVar("outbox_delivery", default=None)


class PermanentDeliveryError(Exception):
    """Raised by a handler when retrying cannot help (the message itself is unsendable)."""


class DeliveryError(Exception):
    """A delivery attempt failed in a way that may succeed later (it is retried)."""


PERMANENT_ERRORS: tuple[type[BaseException], ...] = (
    PermanentDeliveryError,
    ValueError,
    TypeError,
    LookupError,
)
"""Errors that mean the payload is malformed; the message is failed without retry."""


def utcnow() -> datetime:
    return datetime.now(UTC)


# --------------------------------------------------------------------------- writing


def add_message(
    session: Session,
    topic: str,
    payload: dict[str, Any],
    *,
    key: str | None = None,
    subject: str | None = None,
    sequence: tuple[str, int] | None = None,
    not_before: datetime | None = None,
) -> str:
    """Store a message in the caller's transaction and kick the relay after its commit.

    ``key`` becomes the message id, hence the idempotency key the receiver sees; pass one
    derived from the write (e.g. ``f"wallet:{patient_id}:{version}"``, at most 36
    characters) to make re-enqueueing the same fact a primary-key conflict rather than a
    second message. ``subject`` names what the message belongs to (``Subscription/<id>``),
    for :func:`messages_about`. ``sequence`` is ``(key, place)``: the message is sent after
    every message with the same key and a lower place (see the module's docstring).
    ``not_before`` holds the message back until then (a debounce window). Returns the
    message id.
    """
    if key is not None and not 0 < len(key) <= 36:
        raise ValueError("an outbox message key is 1 to 36 characters long")
    now = utcnow()
    message_id = key or str(uuid.uuid4())
    session.add(
        OutboxMessage(
            id=message_id,
            topic=topic,
            payload=payload,
            created_at=now,
            available_at=max(now, not_before) if not_before else now,
            attempts=0,
            subject=subject,
            sequence_key=sequence[0] if sequence else None,
            sequence=sequence[1] if sequence else None,
        )
    )
    if not session.info.get(_KICKED):
        session.info[_KICKED] = True
        enqueue_after_commit(session, relay_outbox)
    return message_id


def pending_count(session: Session) -> int:
    """Messages neither delivered nor failed (due now or waiting for a retry)."""
    statement = (
        select(func.count())
        .select_from(OutboxMessage)
        .where(col(OutboxMessage.delivered_at).is_(None), col(OutboxMessage.failed_at).is_(None))
    )
    return int(session.scalar(statement) or 0)


def messages_about(session: Session, subject: str, *, limit: int) -> list[OutboxMessage]:
    """The newest ``limit`` messages of ``subject``, newest first (a delivery log)."""
    statement = (
        select(OutboxMessage)
        .where(col(OutboxMessage.subject) == subject)
        .order_by(col(OutboxMessage.created_at).desc(), col(OutboxMessage.id).desc())
        .limit(limit)
    )
    return list(session.scalars(statement))


def next_attempt_at(session: Session) -> datetime | None:
    """When the soonest pending message becomes due (may be in the past)."""
    statement = select(func.min(col(OutboxMessage.available_at))).where(
        col(OutboxMessage.delivered_at).is_(None),
        col(OutboxMessage.failed_at).is_(None),
    )
    soonest = session.scalar(statement)
    return as_utc(soonest) if soonest is not None else None


# --------------------------------------------------------------------------- handlers


def handler(topic: str, *, retry: RetryPolicy | None = None) -> Callable[[Handler], Handler]:
    """Register the function delivering messages of ``topic`` (``retry``: the topic's own
    retry policy instead of the relay's ``max_attempts``).

    A handler is called as ``handler(hub, message_id, payload)`` while the relay holds the
    message's row lock inside a transaction; it returns on success and raises otherwise.
    It must send ``message_id`` (or a key derived from what it sends) as the idempotency
    key. On SQLite that transaction holds the database write lock, so a handler must not
    write through a session of its own: it writes through :func:`delivery_session`.
    """

    def register(function: Handler) -> Handler:
        if topic in _HANDLERS and _HANDLERS[topic] is not function:
            raise ValueError(f"a handler for outbox topic {topic!r} is already registered")
        _HANDLERS[topic] = function
        if retry is not None:
            _POLICIES[topic] = retry
        return function

    return register


def delivery_session() -> Session:
    """The session of the relay transaction delivering the current message, for a handler
    that records what it did: its writes commit with the message's outcome (a failed attempt
    included) and roll back with it when the process dies first."""
    session = _delivery_session.get()
    if session is None:
        raise RuntimeError("delivery_session() is only available inside an outbox handler")
    return session


@contextmanager
def _delivering(session: Session) -> Iterator[None]:
    token = _delivery_session.set(session)
    try:
        yield
    finally:
        _delivery_session.reset(token)


_clients: dict[int, httpx.Client] = {}
_clients_lock = threading.Lock()


def _http_client() -> httpx.Client:
    """One pooled client per process (pool processes fork, sockets must not be shared)."""
    pid = os.getpid()
    with _clients_lock:
        client = _clients.get(pid)
        if client is None:
            client = httpx.Client(timeout=HTTP_TIMEOUT, follow_redirects=False)
            _clients.clear()
            _clients[pid] = client
        return client


RESERVED_HEADERS = frozenset(
    {"idempotency-key", "content-type", "content-length", "host", "transfer-encoding", "connection"}
)
"""Headers the hub sets itself; a caller's headers of these names are ignored."""


def send_http(
    message_id: str,
    method: str,
    url: str,
    body: bytes | None,
    *,
    content_type: str | None = None,
    headers: dict[str, str] | None = None,
) -> None:
    """Send one request for an outbox message; any 2xx is delivered, anything else retried.

    The message id is sent as ``Idempotency-Key``. Redirects are not followed. Timeouts: 5 s
    to connect, 10 s for each read, write or pool wait; the response body is not read.
    """
    if not isinstance(url, str) or urlsplit(url).scheme.lower() not in {"http", "https"}:
        raise ValueError("the outbox only sends to http:// or https:// URLs")
    sent = {k: v for k, v in (headers or {}).items() if k.lower() not in RESERVED_HEADERS}
    if content_type:
        sent["Content-Type"] = content_type
    sent["Idempotency-Key"] = message_id
    with _http_client().stream(method, url, content=body, headers=sent) as response:
        status = response.status_code
    if not 200 <= status < 300:
        # Status only: a response body may echo personal data into last_error.
        raise DeliveryError(f"receiver answered HTTP {status}")


@handler("http.post")
def http_post(_hub: Hub, message_id: str, payload: dict[str, Any]) -> None:
    """POST ``payload["body"]`` as JSON to ``payload["url"]`` (see :func:`send_http`).

    Payload keys: ``url`` (http or https only), ``body`` (any JSON value), optional
    ``headers`` and ``content_type`` (default ``application/json``; a ``Content-Type`` in
    ``headers`` is used when ``content_type`` is not given).
    """
    headers = {str(k): str(v) for k, v in dict(payload.get("headers") or {}).items()}
    given_type = next((v for k, v in headers.items() if k.lower() == "content-type"), None)
    send_http(
        message_id,
        "POST",
        payload["url"],
        json_codec.dumps(payload.get("body")),
        content_type=str(payload.get("content_type") or given_type or "application/json"),
        headers=headers,
    )


# --------------------------------------------------------------------------- relaying


@dataclass
class RelayReport:
    """What one :func:`relay_pending` run did."""

    delivered: int = 0
    retried: int = 0
    failed: int = 0
    next_attempt_at: datetime | None = None
    """Soonest ``available_at`` of the messages still pending after the run."""

    @property
    def processed(self) -> int:
        return self.delivered + self.retried + self.failed

    def as_dict(self) -> dict[str, Any]:
        return {
            "delivered": self.delivered,
            "retried": self.retried,
            "failed": self.failed,
            "next_attempt_at": self.next_attempt_at.isoformat() if self.next_attempt_at else None,
        }


def backoff(attempts: int, *, cap: float = BACKOFF_CAP) -> float:
    """Seconds to wait after the ``attempts``-th failure: 2, 4, 8 ... capped at ``cap``
    (10 min by default).

    Up to 10 % jitter is added so messages failed by one outage do not all return at the
    same instant.
    """
    delay = min(BACKOFF_BASE * 2 ** min(max(attempts - 1, 0), 30), cap)
    return delay + random.uniform(0, delay / 10)  # noqa: S311 - jitter, not a secret


def describe_error(exc: BaseException) -> str:
    """Exception class and message, truncated; never the payload."""
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return text[:LAST_ERROR_CHARS]


def relay_pending(
    hub: Hub,
    *,
    limit: int = 100,
    now: datetime | None = None,
    max_attempts: int = MAX_ATTEMPTS,
) -> RelayReport:
    """Deliver up to ``limit`` due messages, each in a transaction of its own.

    ``now`` fixes the clock (tests, replays); by default the current time is read before
    each message. Messages another relay holds are skipped (``FOR UPDATE SKIP LOCKED`` on
    PostgreSQL; SQLite serialises writers at ``BEGIN IMMEDIATE``), so relays may run
    concurrently.
    """
    report = RelayReport()
    for _ in range(limit):
        outcome = _relay_one(hub, now or utcnow(), max_attempts)
        if outcome is None:
            break
        setattr(report, outcome, getattr(report, outcome) + 1)
    with hub.db.transaction() as session:
        report.next_attempt_at = next_attempt_at(session)
    if report.processed:
        log.info(
            "outbox relay: %d delivered, %d retried, %d failed",
            report.delivered,
            report.retried,
            report.failed,
        )
    return report


def _relay_one(hub: Hub, now: datetime, max_attempts: int) -> str | None:
    """Claim, deliver and settle one due message; return the outcome or None if none due.

    A message whose sequence has an earlier message still owed is not due (whatever its
    ``available_at``); on PostgreSQL an earlier message another relay holds locked is still
    owed until that relay commits, so two relays never send one sequence out of order.
    """
    earlier = aliased(OutboxMessage)
    owed_before = (
        select(earlier.id)
        .where(
            earlier.sequence_key == OutboxMessage.sequence_key,
            col(earlier.sequence) < OutboxMessage.sequence,
            col(earlier.delivered_at).is_(None),
            col(earlier.failed_at).is_(None),
        )
        .exists()
    )
    statement = (
        select(OutboxMessage)
        .where(
            col(OutboxMessage.delivered_at).is_(None),
            col(OutboxMessage.failed_at).is_(None),
            col(OutboxMessage.available_at) <= now,
            or_(col(OutboxMessage.sequence_key).is_(None), ~owed_before),
        )
        .order_by(col(OutboxMessage.available_at), col(OutboxMessage.created_at))
        .limit(1)
    )
    if hub.db.dialect == "postgresql":
        statement = statement.with_for_update(skip_locked=True)
    with hub.db.transaction() as session:
        message = session.scalars(statement).first()
        if message is None:
            return None
        deliver = _HANDLERS.get(message.topic)
        try:
            if deliver is None:
                raise PermanentDeliveryError(f"no handler for outbox topic {message.topic!r}")
            with _delivering(session):
                deliver(hub, message.id, dict(message.payload))
        except Exception as exc:  # noqa: BLE001 - any failure is recorded on the message
            message.attempts += 1
            message.last_error = describe_error(exc)
            policy = _POLICIES.get(message.topic)
            if policy is not None:
                gives_up = now - as_utc(message.created_at) >= policy.max_age
            else:
                gives_up = message.attempts >= max_attempts
            if isinstance(exc, PERMANENT_ERRORS) or gives_up:
                message.failed_at = now
                log.warning(
                    "outbox message %s (%s) failed after %d attempt(s): %s",
                    message.id,
                    message.topic,
                    message.attempts,
                    message.last_error,
                )
                return "failed"
            delay = policy.delay(message.attempts) if policy else backoff(message.attempts)
            message.available_at = now + timedelta(seconds=delay)
            return "retried"
        message.delivered_at = now
        return "delivered"


@celery_app.task(name=RELAY_TASK)
def relay_outbox() -> dict[str, Any]:
    """Relay due outbox messages with this process's Hub.

    Kicked after each transaction that added messages, and every ``RELAY_INTERVAL`` s by
    beat: the safety net for kicks lost between commit and publish, and the scheduler of
    retries whose backoff is longer than that interval.

    With a broker, a run that did some work re-schedules itself when more is due before
    the next beat tick: at once if it stopped at its batch limit, else with a countdown to
    the soonest pending retry (at least :data:`MIN_COUNTDOWN`). A run that found nothing
    to do never re-schedules, so concurrent chains (one per kick during an outage) collapse
    as soon as one of them has claimed the due messages; beat alone carries long backoffs.
    In process, it loops over full batches and leaves retries to
    :func:`emr_hub.tasks.start_relay_thread`.
    """
    hub = worker_hub()
    report = relay_pending(hub, limit=RELAY_BATCH)
    if in_process():
        while report.processed >= RELAY_BATCH:
            report = relay_pending(hub, limit=RELAY_BATCH)
        return report.as_dict()
    if report.processed >= RELAY_BATCH:
        relay_outbox.apply_async()
    elif report.processed and report.next_attempt_at is not None:
        wait = (report.next_attempt_at - utcnow()).total_seconds()
        if wait < RELAY_INTERVAL:
            relay_outbox.apply_async(countdown=max(wait, MIN_COUNTDOWN))
    return report.as_dict()
