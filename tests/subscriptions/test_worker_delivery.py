"""Notifications survive a killed worker: a real Celery worker on Redis + PostgreSQL is killed
with SIGKILL while a notification is in flight; a new worker (with beat) delivers the rest,
and every notification reaches the receiver under one idempotency key."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy import select

from emr_hub.hub import Hub
from storage.tables import OutboxMessage
from tests.fhir.conftest import Api
from tests.processes import Worker, all_delivered, wait_for
from tests.receiver import Receiver
from tests.subscriptions.test_subscriptions import subscription, task

TASKS = 6


@pytest.mark.postgres
@pytest.mark.redis
def test_a_worker_killed_mid_notification_loses_and_duplicates_nothing(
    broker_hub: Hub, broker_api: Api, receiver: Receiver, tmp_path: Path
) -> None:
    receiver.status = 503  # nothing is accepted until the receiver is "back"
    receiver.hold_after = 2
    response = broker_api.post("/Subscription", subscription(receiver.url("/his")))
    assert response.status_code == 201
    first = Worker(broker_hub.settings, tmp_path / "worker-1.log")
    second: Worker | None = None
    try:
        first.wait_ready()
        # one transaction, so one relay job: the notifications go out one after the other
        entry = {"resource": task(), "request": {"method": "POST", "url": "Task"}}
        bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [entry] * TASKS}
        assert broker_api.post("", bundle).status_code == 200
        wait_for(lambda: receiver.held == 1, 30, "a stalled notification", first.log)
        first.kill()
        interrupted = receiver.requests[2].key

        schedule = str(tmp_path / "beat-schedule")
        second = Worker(broker_hub.settings, tmp_path / "worker-2.log", "--beat", "-s", schedule)
        second.wait_ready()
        receiver.status = 200
        receiver.hold_after = None
        receiver.release()
        wait_for(all_delivered(broker_hub, TASKS), 60, "every notification", second.log)
    finally:
        first.stop()
        if second is not None:
            second.stop()

    with broker_hub.db.transaction() as session:
        owed = {m.id for m in session.scalars(select(OutboxMessage))}
    assert Counter(receiver.accepted_keys()) == Counter(owed)  # each accepted exactly once
    assert {r.key for r in receiver.requests} == owed
    assert Counter(r.key for r in receiver.requests)[interrupted] >= 2  # resent after the kill
    assert len({r.headers["x-emr-hub-focus"] for r in receiver.requests}) == TASKS
