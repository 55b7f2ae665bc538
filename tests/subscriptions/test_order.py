"""Notifications about one resource reach a receiver in version order, whatever failed between.

A Subscription's notifications of one resource form a sequence: version 2 waits while version 1
is still owed (in backoff after the receiver was down, or held by a worker that was killed), so
a receiver that applies what it gets never ends on a stale version.
"""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from sqlalchemy import select, text
from sqlalchemy.orm import Session

from emr_hub import outbox
from emr_hub.hub import Hub
from emr_hub.outbox import add_message, relay_pending, utcnow
from emr_hub.subscriptions.matching import notify
from storage.db import Database
from storage.migrate import alembic_config
from storage.tables import OutboxMessage
from tests.conftest import make_settings
from tests.fhir.conftest import Api
from tests.processes import Worker, all_delivered, wait_for
from tests.receiver import Receiver
from tests.subscriptions.test_subscriptions import delivered, messages, subscription, task

FHIR_PAYLOAD = "application/fhir+json"


def versions(requests: list[Any], accepted_only: bool = True) -> list[str]:
    """The focus versions the receiver got, in arrival order."""
    return [
        r.headers["x-emr-hub-focus"].rsplit("/", 1)[1]
        for r in requests
        if not accepted_only or 200 <= r.status < 300
    ]


def test_a_later_version_waits_for_an_earlier_one_the_receiver_refused(
    api: Api, hub: Hub, receiver: Receiver
) -> None:
    receiver.status = 503
    response = api.post("/Subscription", subscription(receiver.url("/fhir"), payload=FHIR_PAYLOAD))
    assert response.status_code == 201
    created = api.post("/Task", task()).json()
    wait_for(lambda: len(receiver.requests) == 1, 15, "the refused first attempt")

    receiver.status = 200  # back up, while version 1 waits out its backoff
    accepted = api.put(f"/Task/{created['id']}", {**created, "status": "accepted"}).json()
    assert accepted["meta"]["versionId"] == "2"
    wait_for(lambda: delivered(hub, 2), 30, "both versions")

    assert versions(receiver.requests, accepted_only=False) == ["1", "1", "2"]
    assert receiver.requests[-1].body == accepted


def test_sequences_of_different_resources_do_not_wait_for_each_other(hub: Hub) -> None:
    """A message is held only by an earlier one of its own sequence, never by another's."""
    sent: list[str] = []
    topic = "test.order"

    def record(_hub: Hub, _message_id: str, payload: dict[str, Any]) -> None:
        if payload["fail"]:
            raise outbox.DeliveryError("receiver down")
        sent.append(payload["name"])

    outbox._HANDLERS[topic] = record
    try:
        with hub.db.transaction() as session:
            add_message(session, topic, {"name": "a1", "fail": True}, sequence=("a", 1))
            add_message(session, topic, {"name": "a2", "fail": False}, sequence=("a", 2))
            add_message(session, topic, {"name": "b1", "fail": False}, sequence=("b", 1))
            add_message(session, topic, {"name": "free", "fail": False})
        now = utcnow()
        report = relay_pending(hub, now=now)
        assert (report.delivered, report.retried) == (2, 1)
        assert sorted(sent) == ["b1", "free"]  # a2 waits behind a1, in backoff
        assert relay_pending(hub, now=now).processed == 0

        with hub.db.transaction() as session:  # a1 fails for good: the sequence goes on
            first = next(m for m in messages_of(session, topic) if m.payload["name"] == "a1")
            first.failed_at = now
        relay_pending(hub, now=now)
        assert sent[-1] == "a2"
    finally:
        del outbox._HANDLERS[topic]


def messages_of(session: Session, topic: str) -> list[OutboxMessage]:
    return list(session.scalars(select(OutboxMessage).where(OutboxMessage.topic == topic)))


@pytest.mark.postgres
@pytest.mark.redis
def test_versions_stay_in_order_across_a_receiver_outage_and_a_killed_worker(
    broker_hub: Hub, broker_api: Api, receiver: Receiver, tmp_path: Path
) -> None:
    receiver.status = 503
    endpoint = receiver.url("/fhir")
    assert broker_api.post("/Subscription", subscription(endpoint, payload=FHIR_PAYLOAD)).is_success
    first = Worker(broker_hub.settings, tmp_path / "worker-1.log")
    second: Worker | None = None
    try:
        first.wait_ready()
        created = broker_api.post("/Task", task()).json()
        wait_for(lambda: len(receiver.requests) >= 1, 30, "version 1 refused", first.log)
        current = created
        for status in ("accepted", "in-progress"):
            current = broker_api.put(f"/Task/{created['id']}", {**current, "status": status}).json()
        assert current["meta"]["versionId"] == "3"
        # versions 2 and 3 are owed behind version 1: nothing of them went out
        assert set(versions(receiver.requests, accepted_only=False)) == {"1"}

        receiver.hold_after = len(receiver.requests)  # the next attempt hangs, then the kill
        wait_for(lambda: receiver.held == 1, 30, "a retry of version 1 in flight", first.log)
        first.kill()
        schedule = str(tmp_path / "beat-schedule")
        second = Worker(broker_hub.settings, tmp_path / "worker-2.log", "--beat", "-s", schedule)
        receiver.status = 200
        receiver.hold_after = None
        receiver.release()
        second.wait_ready()
        wait_for(all_delivered(broker_hub, 3), 60, "every version", second.log)
    finally:
        first.stop()
        if second is not None:
            second.stop()

    accepted = [r for r in receiver.requests if 200 <= r.status < 300]
    assert versions(accepted) == ["1", "2", "3"]
    assert Counter(receiver.accepted_keys()) == Counter({m.id: 1 for m in messages(broker_hub)})
    assert accepted[-1].body["status"] == "in-progress"


def test_notifications_owed_before_the_upgrade_join_their_sequence(
    tmp_path: Path, empty_database_url: str
) -> None:
    """Revision 0008 gives the notifications still owed their sequence from the payload;
    delivered ones stay history."""
    db = Database(empty_database_url)
    now = datetime.now(UTC)
    try:
        with db.engine.begin() as conn:
            config = alembic_config(empty_database_url)
            config.attributes["connection"] = conn
            command.upgrade(config, "0007")
        with db.engine.begin() as conn:  # what the code of revision 0007 wrote
            for message_id, version, delivered_at in (("m1", 1, now), ("m2", 2, None)):
                conn.execute(
                    text(
                        "INSERT INTO outbox_message (id, topic, payload, created_at, "
                        "available_at, attempts, delivered_at, subject) VALUES (:id, "
                        "'subscription.notify', :payload, :now, :now, 0, :done, 'Subscription/s')"
                    ),
                    {
                        "id": message_id,
                        "payload": json.dumps(
                            {"subscription": "s", "focus": "Task/t", "version": version}
                        ),
                        "now": now,
                        "done": delivered_at,
                    },
                )
    finally:
        db.dispose()

    hub = Hub.from_settings(make_settings(tmp_path, empty_database_url), migrate=True)
    try:
        with hub.db.transaction() as session:
            notify(session, "s", "Task/t", 3)
        found = {m.id: (m.sequence_key, m.sequence) for m in messages(hub)}
        third = next(key for key in found if key not in ("m1", "m2"))
        assert found == {
            "m1": (None, None),
            "m2": ("Subscription/s|Task/t", 2),
            third: ("Subscription/s|Task/t", 3),
        }
    finally:
        hub.close()
