"""The push to the identity wallet in process, on SQLite and on PostgreSQL: which writes owe
a push and how they coalesce, who may read ``$wallet-log``, the audit record of a push, the
gauges; a push delivered to ``scripts/wallet_receiver.py`` run as a process.

The broker-and-worker behaviour (a wallet down, a worker killed) is in test_push_worker.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from emr_hub.config import get_settings
from emr_hub.fhir.persons import person_of_cccd
from emr_hub.healthbook.metrics import oldest_owed_age, pushes_by_status
from emr_hub.hub import Hub
from emr_hub.main import create_app
from emr_hub.outbox import relay_pending, utcnow
from emr_hub.security.scopes import ScopeSet
from emr_hub.security.tokens import issue_citizen_token
from emr_hub.tasks import configure_celery
from storage.db import as_utc
from storage.tables import AuditEventRow, OutboxMessage, WalletPush
from tests.conftest import free_port, make_settings
from tests.fhir.conftest import Api, token_for
from tests.healthbook.wallet_parts import (
    LAN_CCCD,
    OTHER_CCCD,
    ServedHub,
    WalletReceiver,
    patient_id_of,
    pushes,
    social_history,
    verify_card,
    visit_bundle,
)
from tests.processes import wait_for

WINDOW = 60.0
"""A debounce window no test waits for: the relay is run with a clock past it."""
LAN = person_of_cccd(LAN_CCCD)


def hub_with(tmp_path: Path, database_url: str, **settings: Any) -> Hub:
    return Hub.from_settings(make_settings(tmp_path, database_url, **settings), migrate=True)


@pytest.fixture
def wallet_hub(tmp_path: Path, database_url: str) -> Iterator[Hub]:
    port, wallet_port = free_port(), free_port()
    hub = hub_with(
        tmp_path,
        database_url,
        base_url=f"http://127.0.0.1:{port}",
        wallet_url=f"http://127.0.0.1:{wallet_port}/intake",
        wallet_debounce_seconds=WINDOW,
    )
    try:
        yield hub
    finally:
        configure_celery(get_settings())  # later tests' writes must not see this wallet
        hub.close()


@pytest.fixture
def client(wallet_hub: Hub) -> Iterator[TestClient]:
    with TestClient(create_app(wallet_hub)) as test_client:
        yield test_client


@contextmanager
def served_with_wallet(hub: Hub, tmp_path: Path) -> Iterator[WalletReceiver]:
    """The hub served at its base URL and ``scripts/wallet_receiver.py`` listening at its
    wallet URL, both stopped after."""
    base = hub.settings.base_url
    wallet_port = int(str(hub.settings.wallet_url).rsplit(":", 1)[1].split("/")[0])
    receiver = WalletReceiver(wallet_port, base, tmp_path / "wallet.db", tmp_path / "wallet.log")
    try:
        with ServedHub(hub, int(base.rsplit(":", 1)[1])):
            receiver.wait_ready()
            yield receiver
    finally:
        receiver.stop()


def push_rows(hub: Hub) -> list[tuple[str, int, str | None]]:
    """(person, changes, outcome) of every push."""
    with hub.db.snapshot() as session:
        rows = session.execute(select(WalletPush.person, WalletPush.changes, WalletPush.outcome))
        return [tuple(row) for row in rows]  # type: ignore[misc]


def citizen_api(hub: Hub, client: TestClient, cccd: str) -> Api:
    token, _ = issue_citizen_token(hub, person_of_cccd(cccd), ScopeSet.parse("patient/*.rs"))
    return Api(client, token)


def past_the_window() -> Any:
    return utcnow() + timedelta(seconds=WINDOW + 1)


def test_a_visit_owes_one_push_and_changes_in_the_window_join_it(
    wallet_hub: Hub, client: TestClient
) -> None:
    api = Api(client, token_for(wallet_hub))
    written = utcnow()
    answer = api.post("", visit_bundle())
    assert answer.status_code == 200, answer.text
    patient_id = patient_id_of(answer)
    assert push_rows(wallet_hub) == [(LAN, 1, None)]  # 70 entries, one push
    with wallet_hub.db.snapshot() as session:
        [message] = session.scalars(
            select(OutboxMessage).where(OutboxMessage.topic == "wallet.push")
        )
        assert message.payload == {"person": LAN}
        held_back = (message.available_at.replace(tzinfo=written.tzinfo) - written).total_seconds()
    assert WINDOW - 5 < held_back <= WINDOW + 5

    for note in ("ít ngủ", "hút thuốc"):
        assert api.post("/Observation", social_history(patient_id, note)).status_code == 201
    assert push_rows(wallet_hub) == [(LAN, 3, None)]

    with wallet_hub.db.snapshot() as session:
        assert dict((k[0], v) for k, v in pushes_by_status(session)) == {"owed": 1, "failed": 0}
        [((), age)] = oldest_owed_age(session)
    assert 0 <= age < 60


def test_a_patient_without_a_cccd_owes_nothing(wallet_hub: Hub, client: TestClient) -> None:
    bundle = visit_bundle()
    for entry in bundle["entry"]:
        resource = entry["resource"]
        if resource["resourceType"] == "Patient":
            resource["identifier"] = [
                i for i in resource["identifier"] if "cccd" not in i["system"]
            ]
    answer = Api(client, token_for(wallet_hub)).post("", bundle)
    assert answer.status_code == 200, answer.text
    assert push_rows(wallet_hub) == []


def test_no_wallet_configured_owes_nothing(tmp_path: Path, database_url: str) -> None:
    hub = hub_with(tmp_path, database_url)
    try:
        with TestClient(create_app(hub)) as client:
            answer = Api(client, token_for(hub)).post("", visit_bundle())
            assert answer.status_code == 200, answer.text
        assert push_rows(hub) == []
    finally:
        configure_celery(get_settings())
        hub.close()


def test_the_push_log_is_the_citizen_s_and_the_operator_s(
    wallet_hub: Hub, client: TestClient
) -> None:
    patient_id = patient_id_of(Api(client, token_for(wallet_hub)).post("", visit_bundle()))
    path = f"/Patient/{patient_id}/$wallet-log"

    own = citizen_api(wallet_hub, client, LAN_CCCD).get(path)
    assert own.status_code == 200, own.text
    [entry] = pushes(own.json())
    assert entry["status"] == "owed" and entry["changes"] == 1 and entry["attempts"] == 0
    assert {"owed", "nextAttempt"} <= set(entry) and "sent" not in entry

    operator = Api(client, token_for(wallet_hub, client_id="ops", role="operator")).get(path)
    assert operator.status_code == 200 and pushes(operator.json()) == [entry]

    hospital = Api(client, token_for(wallet_hub)).get(path)  # her own hospital, even
    assert hospital.status_code == 403
    assert hospital.json()["resourceType"] == "OperationOutcome"
    assert citizen_api(wallet_hub, client, OTHER_CCCD).get(path).status_code == 404
    assert Api(client, None).get(path).status_code == 401


def test_a_push_reaches_the_wallet_verified_and_audited(
    wallet_hub: Hub, client: TestClient, tmp_path: Path
) -> None:
    base = wallet_hub.settings.base_url
    with served_with_wallet(wallet_hub, tmp_path) as receiver:
        api = Api(client, token_for(wallet_hub))
        patient_id = patient_id_of(api.post("", visit_bundle()))

        def delivered() -> bool:
            relay_pending(wallet_hub, now=past_the_window())
            return push_rows(wallet_hub) == [(LAN, 1, "delivered")]

        wait_for(delivered, 60, "the push to be delivered", receiver.log)
        [push] = receiver.received()["accepted"]
        jwks = httpx.get(f"{base}/.well-known/jwks.json").json()
        [card] = push["credentials"]
        assert verify_card(card, jwks)["zip"] == "DEF"

        # A note the summary does not show owes a push that sends nothing.
        assert api.post("/Observation", social_history(patient_id, "ít ngủ")).status_code == 201
        relay_pending(wallet_hub, now=past_the_window())
        log = pushes(
            citizen_api(wallet_hub, client, LAN_CCCD)
            .get(f"/Patient/{patient_id}/$wallet-log")
            .json()
        )
        assert [p["status"] for p in log] == ["unchanged", "delivered"]
        assert log[0]["digest"] == log[1]["digest"] and "sent" not in log[0]
        assert log[1]["idempotencyKey"] == push["key"] and log[1]["answer"] == 201
        assert log[1]["attempts"] >= 1 and log[0]["attempts"] == 0  # the second sent nothing
        assert len(receiver.received()["accepted"]) == 1
    with wallet_hub.db.snapshot() as session:
        events = list(
            session.scalars(
                select(AuditEventRow.person).where(AuditEventRow.client_id == "emr-hub-wallet-push")
            )
        )
    assert events == [person_of_cccd(LAN_CCCD)]  # one answered attempt, recorded as hers


def test_an_unreachable_wallet_is_retried_for_a_week_then_the_push_fails(
    wallet_hub: Hub, client: TestClient
) -> None:
    patient_id = patient_id_of(Api(client, token_for(wallet_hub)).post("", visit_bundle()))
    with wallet_hub.db.snapshot() as session:
        [owed_at] = session.scalars(select(OutboxMessage.created_at))
    owed_at = as_utc(owed_at)
    moment, delays = past_the_window(), []
    for _ in range(12):  # nothing listens at the wallet's URL
        assert relay_pending(wallet_hub, now=moment).retried == 1
        with wallet_hub.db.snapshot() as session:
            [due] = session.scalars(select(OutboxMessage.available_at))
        delays.append((as_utc(due) - moment).total_seconds())
        moment = as_utc(due)
    assert delays[1] < delays[2] < delays[3]  # backing off ...
    assert all(900 <= delay <= 990 for delay in delays[-2:])  # ... to 15 minutes, jitter included
    log = pushes(
        citizen_api(wallet_hub, client, LAN_CCCD).get(f"/Patient/{patient_id}/$wallet-log").json()
    )
    assert log[0]["status"] == "owed" and log[0]["attempts"] == 12

    assert relay_pending(wallet_hub, now=owed_at + timedelta(days=7, seconds=1)).failed == 1
    log = pushes(
        citizen_api(wallet_hub, client, LAN_CCCD).get(f"/Patient/{patient_id}/$wallet-log").json()
    )
    assert log[0]["status"] == "failed" and "nextAttempt" not in log[0]
    with wallet_hub.db.snapshot() as session:
        assert dict((k[0], v) for k, v in pushes_by_status(session)) == {"owed": 0, "failed": 1}
        assert list(oldest_owed_age(session)) == [((), 0.0)]


def test_her_patients_at_two_hospitals_make_one_push_with_a_card_each(
    wallet_hub: Hub, client: TestClient, tmp_path: Path
) -> None:
    base = wallet_hub.settings.base_url
    with served_with_wallet(wallet_hub, tmp_path) as receiver:
        first = Api(client, token_for(wallet_hub, client_id="bach-mai"))
        second = Api(client, token_for(wallet_hub, client_id="bac-ninh-general"))
        ids = sorted(patient_id_of(api.post("", visit_bundle())) for api in (first, second))
        assert ids[0] != ids[1]  # two Patient resources, one citizen
        assert push_rows(wallet_hub) == [(LAN, 2, None)]

        def delivered() -> bool:
            relay_pending(wallet_hub, now=past_the_window())
            return push_rows(wallet_hub) == [(LAN, 2, "delivered")]

        wait_for(delivered, 60, "the push to be delivered", receiver.log)
        [push] = receiver.received()["accepted"]
        jwks = httpx.get(f"{base}/.well-known/jwks.json").json()
        assert len(push["credentials"]) == 2
        for card in push["credentials"]:
            verify_card(card, jwks)
        assert receiver.card(LAN_CCCD).json()["verifiableCredential"] == push["credentials"]
        # Either Patient's log is hers.
        lan = citizen_api(wallet_hub, client, LAN_CCCD)
        logs = [pushes(lan.get(f"/Patient/{i}/$wallet-log").json()) for i in ids]
        assert logs[0] == logs[1] and [p["status"] for p in logs[0]] == ["delivered"]
