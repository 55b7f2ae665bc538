"""Transactional outbox: stored with the write, relayed after commit, received exactly once.

The in-process tests run on SQLite and PostgreSQL with no broker (jobs run in the
committing thread after commit). The worker tests start real ``celery worker``
subprocesses on Redis + PostgreSQL, including one killed with SIGKILL mid-delivery.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from emr_hub.config import get_settings
from emr_hub.hub import Hub
from emr_hub.outbox import (
    BACKOFF_CAP,
    add_message,
    backoff,
    pending_count,
    relay_pending,
    utcnow,
)
from emr_hub.tasks import celery_app, configure_celery, start_relay_thread
from storage.tables import OutboxMessage
from tests.conftest import free_port, make_settings
from tests.processes import Worker, all_delivered, wait_for
from tests.receiver import Receiver

ROOT = Path(__file__).resolve().parents[1]
LATER = timedelta(minutes=15)  # past any backoff (10 min cap + jitter)


# --------------------------------------------------------------------------- receiver


@pytest.fixture
def inprocess_hub(hub: Hub) -> Iterator[Hub]:
    """The migrated hub (SQLite and PostgreSQL), with jobs run in this process by it."""
    assert not hub.settings.broker_url
    configure_celery(hub.settings, hub=hub)
    yield hub
    configure_celery(get_settings())


@pytest.fixture
def relay_runs(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the runs of the relay job (each kick runs ``relay_pending`` once here)."""
    import emr_hub.outbox as outbox

    runs: list[int] = []
    real = outbox.relay_pending

    def counting(hub: Hub, **kwargs: Any) -> Any:
        runs.append(1)
        return real(hub, **kwargs)

    monkeypatch.setattr(outbox, "relay_pending", counting)
    return runs


def rows(hub: Hub) -> dict[str, OutboxMessage]:
    with hub.db.transaction() as session:
        return {row.id: row for row in session.scalars(select(OutboxMessage))}


def post(receiver: Receiver, n: int = 0, **extra: Any) -> dict[str, Any]:
    return {"url": receiver.url(f"/hook/{n}"), "body": {"n": n}, **extra}


# --------------------------------------------------------------------------- in process


def test_committed_messages_are_delivered_once_with_their_idempotency_keys(
    inprocess_hub: Hub, receiver: Receiver, relay_runs: list[int]
) -> None:
    headers = {"X-Trace": "t-1", "Idempotency-Key": "forged", "Content-Type": "text/plain"}
    with inprocess_hub.db.transaction() as session:
        message_id = add_message(
            session,
            "http.post",
            post(receiver, 7, headers=headers, content_type="application/fhir+json"),
        )
        keyed = add_message(session, "http.post", post(receiver, 8), key="wallet:p1:3")
        others = [add_message(session, "http.post", post(receiver, n)) for n in range(2)]
        assert receiver.requests == []  # nothing leaves before the commit

    assert len(relay_runs) == 1  # one kick per transaction, not per message
    assert keyed == "wallet:p1:3"
    assert Counter(receiver.accepted_keys()) == Counter([message_id, keyed, *others])
    request = next(r for r in receiver.requests if r.key == message_id)
    assert request.path == "/hook/7"
    assert request.body == {"n": 7}
    assert request.headers["content-type"] == "application/fhir+json"
    assert request.headers["x-trace"] == "t-1"
    for row in rows(inprocess_hub).values():
        assert row.delivered_at is not None
        assert (row.attempts, row.failed_at, row.last_error) == (0, None, None)

    assert relay_pending(inprocess_hub, now=utcnow() + LATER).processed == 0
    assert len(receiver.requests) == 4
    with pytest.raises(ValueError), inprocess_hub.db.transaction() as session:
        add_message(session, "http.post", post(receiver), key="k" * 37)


def test_rolled_back_message_is_neither_stored_nor_delivered(
    inprocess_hub: Hub, receiver: Receiver, relay_runs: list[int]
) -> None:
    with pytest.raises(RuntimeError), inprocess_hub.db.transaction() as session:
        add_message(session, "http.post", post(receiver))
        raise RuntimeError("the write failed")

    assert rows(inprocess_hub) == {}
    assert relay_runs == []
    assert receiver.requests == []


def test_outage_is_retried_with_backoff_then_delivered_exactly_once(
    inprocess_hub: Hub, receiver: Receiver
) -> None:
    receiver.status = 503
    before = utcnow()
    with inprocess_hub.db.transaction() as session:
        message_id = add_message(session, "http.post", post(receiver))

    row = rows(inprocess_hub)[message_id]
    assert [r.status for r in receiver.requests] == [503]
    assert row.attempts == 1
    assert row.delivered_at is None and row.failed_at is None
    assert row.last_error == "DeliveryError: receiver answered HTTP 503"
    available_at = row.available_at.replace(tzinfo=before.tzinfo)
    assert available_at >= before + timedelta(seconds=2)

    nothing_due = relay_pending(inprocess_hub)
    assert nothing_due.processed == 0
    assert nothing_due.next_attempt_at == available_at

    receiver.status = 200
    report = relay_pending(inprocess_hub, now=utcnow() + LATER)
    assert (report.delivered, report.retried, report.failed) == (1, 0, 0)
    assert relay_pending(inprocess_hub, now=utcnow() + 2 * LATER).processed == 0

    assert receiver.accepted_keys() == [message_id]
    assert [r.key for r in receiver.requests] == [message_id, message_id]
    row = rows(inprocess_hub)[message_id]
    assert row.delivered_at is not None and row.attempts == 1
    with inprocess_hub.db.transaction() as session:
        assert pending_count(session) == 0


def test_gives_up_after_max_attempts(inprocess_hub: Hub, receiver: Receiver) -> None:
    receiver.status = 500
    with inprocess_hub.db.transaction() as session:
        message_id = add_message(session, "http.post", post(receiver))  # attempt 1
    clock = utcnow()
    for _ in range(2):
        clock += LATER
        relay_pending(inprocess_hub, now=clock, max_attempts=3)

    row = rows(inprocess_hub)[message_id]
    assert row.attempts == 3
    assert row.failed_at is not None
    assert relay_pending(inprocess_hub, now=clock + LATER, max_attempts=3).processed == 0
    assert len(receiver.requests) == 3
    assert receiver.accepted_keys() == []


UNDELIVERABLE = [
    ("no.such.topic", {"anything": 1}, "PermanentDeliveryError: no handler for outbox topic"),
    ("http.post", {"url": "file:///etc/passwd", "body": {}}, "ValueError: the outbox only sends"),
    ("http.post", {"url": "gopher://127.0.0.1/", "body": {}}, "ValueError: the outbox only sends"),
    ("http.post", {"body": {}}, "KeyError: 'url'"),
]


def test_undeliverable_messages_fail_without_retry(inprocess_hub: Hub, receiver: Receiver) -> None:
    with inprocess_hub.db.transaction() as session:
        ids = [add_message(session, topic, payload) for topic, payload, _ in UNDELIVERABLE]

    found = rows(inprocess_hub)
    for message_id, (_, _, error) in zip(ids, UNDELIVERABLE, strict=True):
        row = found[message_id]
        assert row.failed_at is not None and row.delivered_at is None
        assert row.attempts == 1
        assert row.last_error is not None and row.last_error.startswith(error)
    assert relay_pending(inprocess_hub, now=utcnow() + LATER).processed == 0
    assert receiver.requests == []


def test_concurrent_relays_deliver_each_message_once(
    inprocess_hub: Hub, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    import emr_hub.outbox as outbox

    monkeypatch.setattr(outbox, "enqueue_after_commit", lambda *args, **kwargs: None)
    with inprocess_hub.db.transaction() as session:
        ids = [add_message(session, "http.post", post(receiver, n)) for n in range(12)]

    receiver.hold_after = 0  # every request waits until released ...
    reports: list[Any] = []

    def relay() -> None:
        reports.append(relay_pending(inprocess_hub))

    threads = [threading.Thread(target=relay) for _ in range(3)]
    for thread in threads:
        thread.start()
    wait_for(lambda: receiver.held >= 1, 10, "a relay to start delivering")
    receiver.release()  # ... then the receiver answers everything at once
    for thread in threads:
        thread.join(30)

    assert sum(report.delivered for report in reports) == 12
    assert Counter(receiver.accepted_keys()) == Counter(ids)
    assert all(row.delivered_at is not None for row in rows(inprocess_hub).values())


def test_relay_thread_delivers_messages_whose_kick_was_lost(
    inprocess_hub: Hub, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    import emr_hub.outbox as outbox

    monkeypatch.setattr(outbox, "enqueue_after_commit", lambda *args, **kwargs: None)
    with inprocess_hub.db.transaction() as session:
        message_id = add_message(session, "http.post", post(receiver))
    assert receiver.requests == []

    stop = start_relay_thread(inprocess_hub, interval=0.05)
    try:
        wait_for(lambda: receiver.accepted_keys() == [message_id], 10, "the periodic relay")
    finally:
        stop()


def test_with_the_relay_thread_a_commit_does_not_wait_for_the_receiver(
    inprocess_hub: Hub, receiver: Receiver
) -> None:
    """The API's shape: the after-commit kick wakes the relay thread; the request goes on."""
    receiver.hold_after = 0  # every delivery is held open until release()
    stop = start_relay_thread(inprocess_hub, interval=3600)  # only a kick can wake it in time
    try:
        with inprocess_hub.db.transaction() as session:
            message_id = add_message(session, "http.post", post(receiver))
        # the commit has returned although the receiver has not answered anything yet
        wait_for(lambda: receiver.held == 1, 10, "the relay thread to start delivering")
        with inprocess_hub.db.snapshot() as session:
            assert pending_count(session) == 1  # still being delivered, off the request path
        receiver.release()
        wait_for(lambda: receiver.accepted_keys() == [message_id], 10, "the held delivery")
        wait_for(lambda: _pending(inprocess_hub) == 0, 10, "the delivery to be recorded")
    finally:
        receiver.release()
        stop()


def _pending(hub: Hub) -> int:
    with hub.db.snapshot() as session:
        return pending_count(session)


def test_backoff_doubles_from_two_seconds_up_to_ten_minutes() -> None:
    for attempts, base in [(1, 2), (2, 4), (3, 8), (8, 256), (9, 512), (10, 600), (30, 600)]:
        delay = backoff(attempts)
        assert base <= delay <= base * 1.1
    assert max(backoff(50) for _ in range(100)) <= BACKOFF_CAP * 1.1


def test_publish_failure_after_commit_keeps_the_message_for_the_safety_net(
    tmp_path: Path,
) -> None:
    """The broker is down when the kick is sent: the commit stands and the row waits."""
    settings = make_settings(tmp_path, broker_url=f"redis://127.0.0.1:{free_port()}/0")
    local = Hub.from_settings(settings, migrate=True)
    configure_celery(settings, hub=local)
    celery_app.conf.broker_connection_timeout = 0.5
    try:
        with local.db.transaction() as session:
            add_message(session, "http.post", {"url": "http://127.0.0.1:9/", "body": {}})
        with local.db.transaction() as session:
            assert pending_count(session) == 1
    finally:
        celery_app.conf.broker_connection_timeout = 4.0
        configure_celery(get_settings())
        local.close()


# --------------------------------------------------------------------------- real worker


@pytest.mark.postgres
@pytest.mark.redis
def test_worker_relays_a_committed_batch_exactly_once(
    broker_hub: Hub, receiver: Receiver, tmp_path: Path
) -> None:
    worker = Worker(broker_hub.settings, tmp_path / "worker.log")
    try:
        worker.wait_ready()
        with broker_hub.db.transaction() as session:
            ids = [add_message(session, "http.post", post(receiver, n)) for n in range(20)]

        wait_for(all_delivered(broker_hub, 20), 20, "20 deliveries", worker.log)
    finally:
        worker.stop()

    assert Counter(receiver.accepted_keys()) == Counter(ids)
    assert sorted(r.path for r in receiver.requests) == sorted(f"/hook/{n}" for n in range(20))
    assert all(row.attempts == 0 for row in rows(broker_hub).values())


@pytest.mark.postgres
@pytest.mark.redis
def test_killed_worker_during_outage_loses_and_duplicates_nothing(
    broker_hub: Hub, receiver: Receiver, tmp_path: Path
) -> None:
    """SIGKILL mid-delivery; a new worker (with beat) finishes the job once the receiver is back.

    The receiver answers 503 to the first three deliveries, then stalls on the fourth: the
    worker is killed while that request is in flight, so the receiver has seen its key but
    the row was never updated. The restarted worker gets no kick (the killed one's job is
    unacknowledged); beat's safety-net tick finds the due rows.
    """
    receiver.status = 503
    receiver.hold_after = 3
    first = Worker(broker_hub.settings, tmp_path / "worker-1.log")
    second: Worker | None = None
    try:
        first.wait_ready()
        with broker_hub.db.transaction() as session:
            ids = [add_message(session, "http.post", post(receiver, n)) for n in range(20)]
        wait_for(lambda: receiver.held == 1, 20, "a stalled delivery", first.log)
        first.kill()

        seen = receiver.requests
        assert len(seen) == 4 and receiver.accepted_keys() == []
        before = rows(broker_hub)
        assert {k for k, r in before.items() if r.attempts} == {r.key for r in seen[:3]}
        interrupted = before[seen[3].key]
        assert (interrupted.attempts, interrupted.delivered_at) == (0, None)

        schedule = str(tmp_path / "beat-schedule")
        second = Worker(broker_hub.settings, tmp_path / "worker-2.log", "--beat", "-s", schedule)
        second.wait_ready()
        receiver.status = 200
        receiver.hold_after = None
        receiver.release()

        wait_for(all_delivered(broker_hub, 20), 40, "20 deliveries after restart", second.log)
    finally:
        first.stop()
        if second is not None:
            second.stop()

    assert Counter(receiver.accepted_keys()) == Counter(ids)
    assert {r.key for r in receiver.requests} == set(ids)
    assert Counter(r.key for r in receiver.requests)[seen[3].key] >= 2  # interrupted, resent
