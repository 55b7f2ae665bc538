"""The push to the identity wallet with the real parts: PostgreSQL, a Celery worker on Redis,
the hub served over HTTP and ``scripts/wallet_receiver.py`` as a process that verifies every
credential against the hub's JWKS.

A visit Bundle gives one push whose credential verifies; a receiver down for a while gets
every owed push once it is back; a worker SIGKILLed after the wallet took a push but before
the hub recorded it loses nothing and duplicates nothing; an unchanged summary sends nothing.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from emr_hub.config import get_settings
from emr_hub.fhir.persons import person_of_cccd
from emr_hub.hub import Hub
from emr_hub.security.scopes import ScopeSet
from emr_hub.security.tokens import issue_citizen_token
from emr_hub.tasks import configure_celery
from storage.tables import OutboxMessage, WalletPush
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
from tests.processes import Worker, wait_for

DEBOUNCE = 1.0
DEADLINE = 60


@pytest.fixture
def parts(tmp_path: Path, postgres_url: str, redis_url: str) -> Iterator[dict[str, Any]]:
    with running_parts(tmp_path, postgres_url, redis_url, DEBOUNCE) as running:
        yield running


@contextmanager
def running_parts(
    tmp_path: Path, postgres_url: str, redis_url: str, debounce: float
) -> Iterator[dict[str, Any]]:
    """A migrated PostgreSQL hub on Redis served over HTTP, and the wallet receiver."""
    hub_port, wallet_port = free_port(), free_port()
    base = f"http://127.0.0.1:{hub_port}"
    wallet = f"http://127.0.0.1:{wallet_port}/intake"
    settings = make_settings(
        tmp_path,
        postgres_url,
        broker_url=redis_url,
        base_url=base,
        wallet_url=wallet,
        wallet_debounce_seconds=debounce,
    )
    hub = Hub.from_settings(settings, migrate=True)
    configure_celery(settings, hub=hub)
    env = {
        "EMR_HUB_BASE_URL": base,
        "EMR_HUB_WALLET_URL": wallet,
        "EMR_HUB_WALLET_DEBOUNCE_SECONDS": str(debounce),
    }
    state = tmp_path / "wallet.sqlite3"
    running: dict[str, Any] = {
        "hub": hub,
        "env": env,
        "receiver": WalletReceiver(wallet_port, base, state, tmp_path / "wallet.log"),
        "state": state,
        "wallet_port": wallet_port,
        "tmp": tmp_path,
    }
    try:
        with ServedHub(hub, hub_port) as served:
            running["served"] = served
            running["receiver"].wait_ready()
            yield running
    finally:
        running["receiver"].stop()  # the one the test left running (it may replace it)
        configure_celery(get_settings())
        hub.close()


def start_worker(parts: dict[str, Any], name: str) -> Worker:
    hub: Hub = parts["hub"]
    schedule = parts["tmp"] / f"beat-{name}"
    worker = Worker(
        hub.settings, parts["tmp"] / f"{name}.log", "--beat", "-s", str(schedule), env=parts["env"]
    )
    worker.wait_ready()
    return worker


def api_of(parts: dict[str, Any]) -> Api:
    return Api(httpx.Client(base_url=parts["served"].base, timeout=60), token_for(parts["hub"]))


def wallet_log(parts: dict[str, Any], patient_id: str) -> list[dict[str, Any]]:
    hub: Hub = parts["hub"]
    token, _ = issue_citizen_token(hub, person_of_cccd(LAN_CCCD), ScopeSet.parse("patient/*.rs"))
    answer = httpx.get(
        f"{parts['served'].base}/fhir/Patient/{patient_id}/$wallet-log",
        headers={"Authorization": f"Bearer {token}"},
    )
    assert answer.status_code == 200, answer.text
    return pushes(answer.json())


def accepted(receiver: WalletReceiver, count: int) -> Any:
    return lambda: len(receiver.received()["accepted"]) >= count


def settled(hub: Hub, count: int) -> Any:
    """Every push row has an outcome, and there are ``count`` of them."""

    def check() -> bool:
        with hub.db.snapshot() as session:
            outcomes = list(session.scalars(select(WalletPush.outcome)))
        return len(outcomes) == count and None not in outcomes

    return check


def test_a_visit_gives_one_push_whose_card_verifies_and_an_unchanged_summary_none(
    parts: dict[str, Any],
) -> None:
    hub, receiver = parts["hub"], parts["receiver"]
    worker = start_worker(parts, "worker")
    try:
        api = api_of(parts)
        written = time.monotonic()
        answer = api.post("", visit_bundle())
        assert answer.status_code == 200, answer.text
        assert len(answer.json()["entry"]) > 50  # a whole visit, in one transaction
        patient_id = patient_id_of(answer)
        wait_for(accepted(receiver, 1), DEADLINE, "the visit's push at the wallet", worker.log)
        lag = time.monotonic() - written
        wait_for(settled(hub, 1), DEADLINE, "the push to be recorded", worker.log)

        received = receiver.received()
        assert len(received["accepted"]) == 1 and not received["refused"]
        push = received["accepted"][0]
        assert push["cccd"] == LAN_CCCD
        jwks = httpx.get(f"{parts['served'].base}/.well-known/jwks.json").json()
        [card] = push["credentials"]  # she has one Patient
        header = verify_card(card, jwks)
        assert header["zip"] == "DEF" and header["alg"] == "ES256"
        assert receiver.card(LAN_CCCD).json()["key"] == push["key"]

        [logged] = wallet_log(parts, patient_id)
        assert logged["status"] == "delivered" and logged["answer"] == 201
        assert logged["idempotencyKey"] == push["key"] and logged["changes"] == 1
        assert logged["attempts"] == 1
        assert lag < DEBOUNCE + 15, f"push lag {lag:.1f} s"

        # A note the summary does not show: a push is owed, and finds nothing to send.
        before = api.get(f"/Patient/{patient_id}/$summary").json()
        assert api.post("/Observation", social_history(patient_id, "ít ngủ")).status_code == 201
        after = api.get(f"/Patient/{patient_id}/$summary").json()
        assert before["entry"][1:] == after["entry"][1:]  # the premise: the summary is the same
        wait_for(settled(hub, 2), DEADLINE, "the second push to settle", worker.log)
        statuses = [p["status"] for p in wallet_log(parts, patient_id)]
        assert statuses == ["unchanged", "delivered"]
        assert len(receiver.received()["accepted"]) == 1
    finally:
        worker.stop()


def test_a_wallet_down_for_a_while_gets_every_owed_push_once_back(parts: dict[str, Any]) -> None:
    hub, receiver = parts["hub"], parts["receiver"]
    worker = start_worker(parts, "worker")
    try:
        api = api_of(parts)
        receiver.stop()
        patient_id = patient_id_of(api.post("", visit_bundle()))
        other = api.post("", visit_bundle(OTHER_CCCD))
        assert other.status_code == 200
        owed = 2

        def failing_twice() -> bool:
            with hub.db.snapshot() as session:
                attempts = list(
                    session.scalars(
                        select(OutboxMessage.attempts).where(OutboxMessage.topic == "wallet.push")
                    )
                )
            return len(attempts) == owed and min(attempts) >= 2

        wait_for(failing_twice, DEADLINE, "the pushes to fail while the wallet is down", worker.log)
        [logged] = wallet_log(parts, patient_id)
        assert logged["status"] == "owed" and logged["attempts"] >= 2
        assert "could not be reached" in logged["lastError"]

        back = WalletReceiver(
            parts["wallet_port"], parts["served"].base, parts["state"], parts["tmp"] / "w2.log"
        )
        parts["receiver"] = back
        back.wait_ready()
        wait_for(settled(hub, owed), 120, "the owed pushes once the wallet is back", worker.log)
        received = back.received()
        keys = [p["key"] for p in received["accepted"]]
        assert len(keys) == owed == len(set(keys))
        assert sorted(p["cccd"] for p in received["accepted"]) == [LAN_CCCD, OTHER_CCCD]
        assert wallet_log(parts, patient_id)[0]["status"] == "delivered"
    finally:
        worker.stop()


def test_a_worker_killed_mid_push_loses_and_duplicates_nothing(parts: dict[str, Any]) -> None:
    hub = parts["hub"]
    parts["receiver"].stop()
    slow = WalletReceiver(
        parts["wallet_port"],
        parts["served"].base,
        parts["state"],
        parts["tmp"] / "slow.log",
        answer_delay=8,
    )
    parts["receiver"] = slow
    slow.wait_ready()
    first = start_worker(parts, "first")
    try:
        api = api_of(parts)
        patient_id = patient_id_of(api.post("", visit_bundle()))
        # The wallet has stored the push and not answered yet: the hub has recorded nothing.
        wait_for(accepted(slow, 1), DEADLINE, "the wallet to take the push", first.log)
        first.kill()
    finally:
        first.stop()
    with hub.db.snapshot() as session:
        [(outcome, sent_at)] = session.execute(select(WalletPush.outcome, WalletPush.sent_at))
    assert outcome is None and sent_at is None  # rolled back with the worker
    second = start_worker(parts, "second")
    try:
        wait_for(settled(hub, 1), 120, "the push to be sent again and recorded", second.log)
        received = slow.received()
        assert len(received["accepted"]) == 1  # stored once
        assert received["repeats"] == [received["accepted"][0]["key"]]  # the resend, dropped
        [logged] = wallet_log(parts, patient_id)
        assert logged["status"] == "delivered" and logged["answer"] == 200  # "a repeat"
        assert logged["attempts"] == 1  # the killed attempt left no trace: it rolled back
        assert logged["idempotencyKey"] == received["accepted"][0]["key"]
    finally:
        second.stop()


def test_the_push_lag_at_a_steady_write_load_with_the_default_window(
    tmp_path: Path, postgres_url: str, redis_url: str
) -> None:
    """One visit a second for different patients, the default 10 s window: the time from each
    write's answer to the wallet having the card (the receiver's clock, the same machine's)."""
    window, visits = 10.0, 12
    with running_parts(tmp_path, postgres_url, redis_url, window) as running:
        receiver = running["receiver"]
        worker = start_worker(running, "worker")
        try:
            api = api_of(running)
            written: dict[str, float] = {}
            for number in range(visits):
                cccd = f"0010840{number:05d}"
                started = time.monotonic()
                assert api.post("", visit_bundle(cccd)).status_code == 200
                written[cccd] = time.time()
                time.sleep(max(0.0, 1.0 - (time.monotonic() - started)))  # the load's pace
            wait_for(accepted(receiver, visits), 120, "every visit's push", worker.log)
        finally:
            worker.stop()
        lags = sorted(
            p["received_at"] - written[p["cccd"]] for p in receiver.received()["accepted"]
        )
    p50, p95 = statistics.median(lags), lags[int(0.95 * (len(lags) - 1))]
    print(
        f"wallet push lag, {visits} visits at 1/s, window {window:g} s: "
        f"p50 {p50:.1f} s, p95 {p95:.1f} s"
    )
    assert window <= lags[0] and p95 < window + 20
