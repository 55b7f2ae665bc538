"""rest-hook Subscriptions over the API, on SQLite and PostgreSQL, with a real HTTP receiver.

Jobs run in process here (no broker): the API's relay thread delivers after each commit. The
worker on Redis is exercised by the referral scenario (tests/referrals/test_scenario.py).
Whether a write owes a notification is decided in its transaction, so "nothing sent" is
asserted on the outbox rows right after the response, never by waiting.
"""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select

from emr_hub.hub import Hub
from storage.tables import OutboxMessage, SubscriptionRoute
from tests.fhir.conftest import Api, outcome_issue, token_for
from tests.processes import wait_for
from tests.receiver import Receiver

OWNER = "Organization/hosp-b"


def subscription(endpoint: str, **channel: Any) -> dict[str, Any]:
    return {
        "resourceType": "Subscription",
        "status": "requested",
        "reason": "Referrals addressed to hospital B",
        "criteria": f"Task?owner={OWNER}",
        "channel": {"type": "rest-hook", "endpoint": endpoint, **channel},
    }


def task(owner: str = OWNER, status: str = "requested") -> dict[str, Any]:
    return {
        "resourceType": "Task",
        "status": status,
        "intent": "order",
        "owner": {"reference": owner},
    }


def subscribe(api: Api, endpoint: str, **channel: Any) -> str:
    response = api.post("/Subscription", subscription(endpoint, **channel))
    assert response.status_code == 201, response.text
    assert response.json()["status"] == "active"
    return str(response.json()["id"])


def messages(hub: Hub) -> list[OutboxMessage]:
    with hub.db.transaction() as session:
        return list(session.scalars(select(OutboxMessage).order_by(OutboxMessage.created_at)))


def parts(parameter: dict[str, Any]) -> dict[str, Any]:
    """A Parameters part list as {name: value}."""
    return {
        part["name"]: next(v for k, v in part.items() if k.startswith("value"))
        for part in parameter["part"]
    }


def delivered(hub: Hub, count: int) -> bool:
    found = messages(hub)
    return len(found) == count and all(m.delivered_at is not None for m in found)


def test_a_matching_write_is_notified_once_with_an_empty_post(
    api: Api, hub: Hub, receiver: Receiver
) -> None:
    subscription_id = subscribe(api, receiver.url("/hook"), header=["Authorization: Bearer s3"])

    created = api.post("/Task", task()).json()
    api.post("/Task", task(owner="Organization/hosp-c"))  # another hospital's Task

    wait_for(lambda: delivered(hub, 1), 15, "one delivery")
    (request,) = receiver.requests
    assert (request.method, request.path, request.body) == ("POST", "/hook", None)
    assert request.headers["authorization"] == "Bearer s3"
    assert request.headers["x-emr-hub-subscription"] == f"Subscription/{subscription_id}"
    assert request.headers["x-emr-hub-focus"] == f"Task/{created['id']}/_history/1"
    assert request.key == messages(hub)[0].id


def test_with_a_payload_the_matching_version_is_put_under_the_endpoint_base(
    api: Api, hub: Hub, receiver: Receiver
) -> None:
    subscribe(api, receiver.url("/fhir/"), payload="application/fhir+json")
    first = api.post("/Task", task()).json()
    wait_for(lambda: delivered(hub, 1), 15, "first delivery")
    accepted = api.put(f"/Task/{first['id']}", {**first, "status": "accepted"}).json()
    wait_for(lambda: delivered(hub, 2), 15, "second delivery")

    puts = receiver.requests
    assert [(r.method, r.path) for r in puts] == [("PUT", f"/fhir/Task/{first['id']}")] * 2
    assert [r.body["meta"]["versionId"] for r in puts] == ["1", "2"]
    assert puts[1].body == accepted
    assert puts[0].headers["content-type"] == "application/fhir+json"
    assert len({r.key for r in puts}) == 2


def test_an_update_that_changes_nothing_and_a_deletion_notify_nothing(
    api: Api, hub: Hub, receiver: Receiver
) -> None:
    subscribe(api, receiver.url())
    created = api.post("/Task", task()).json()
    assert len(messages(hub)) == 1

    assert api.put(f"/Task/{created['id']}", created).status_code == 200
    assert api.delete(f"/Task/{created['id']}").status_code == 204

    assert len(messages(hub)) == 1
    wait_for(lambda: delivered(hub, 1), 15, "the one delivery")


def test_a_transaction_notifies_each_match_and_a_rolled_back_one_nothing(
    api: Api, hub: Hub, receiver: Receiver
) -> None:
    subscribe(api, receiver.url())
    entries = [{"resource": task(), "request": {"method": "POST", "url": "Task"}}] * 3
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": entries}
    assert api.post("", bundle).status_code == 200
    assert len(messages(hub)) == 3

    broken = {**bundle, "entry": [*entries, {"resource": {"resourceType": "Task"}, "request": {}}]}
    assert api.post("", broken).status_code == 400
    assert len(messages(hub)) == 3
    wait_for(lambda: delivered(hub, 3), 15, "three deliveries")
    assert len({r.key for r in receiver.requests}) == 3


def test_a_batch_notifies_its_successful_entries_only(
    api: Api, hub: Hub, receiver: Receiver
) -> None:
    subscribe(api, receiver.url())
    ok = {"resource": task(), "request": {"method": "POST", "url": "Task"}}
    stale = {
        "resource": {**task(), "id": "t-stale"},
        "request": {"method": "PUT", "url": "Task/t-stale", "ifMatch": 'W/"7"'},
    }
    bundle = {"resourceType": "Bundle", "type": "batch", "entry": [ok, stale]}
    response = api.post("", bundle)
    assert [e["response"]["status"][:3] for e in response.json()["entry"]] == ["201", "412"]
    (message,) = messages(hub)
    assert message.payload["focus"] != "Task/t-stale"


def test_switched_off_then_deleted_subscriptions_stop_matching(
    api: Api, hub: Hub, receiver: Receiver
) -> None:
    subscription_id = subscribe(api, receiver.url())
    current = api.get(f"/Subscription/{subscription_id}").json()
    assert api.put(f"/Subscription/{subscription_id}", {**current, "status": "off"}).is_success
    api.post("/Task", task())
    assert messages(hub) == []

    back_on = {**current, "status": "requested"}
    assert api.put(f"/Subscription/{subscription_id}", back_on).json()["status"] == "active"
    api.post("/Task", task())
    assert len(messages(hub)) == 1
    assert api.delete(f"/Subscription/{subscription_id}").status_code == 204
    api.post("/Task", task())
    assert len(messages(hub)) == 1
    with hub.db.transaction() as session:
        assert list(session.scalars(select(SubscriptionRoute))) == []


def test_an_expired_subscription_matches_nothing(api: Api, hub: Hub, receiver: Receiver) -> None:
    body = {**subscription(receiver.url()), "end": "2020-01-01T00:00:00Z"}
    assert api.post("/Subscription", body).status_code == 201
    api.post("/Task", task())
    assert messages(hub) == []


def test_the_delivery_log_shows_deliveries_and_failures(
    api: Api, hub: Hub, receiver: Receiver
) -> None:
    subscription_id = subscribe(api, receiver.url())
    first = api.post("/Task", task()).json()
    wait_for(lambda: delivered(hub, 1), 15, "first delivery")
    receiver.status = 503
    api.post("/Task", task())
    wait_for(lambda: any(m.attempts for m in messages(hub)), 15, "a failed attempt")

    log = api.get(f"/Subscription/{subscription_id}/$delivery-log").json()
    assert log["resourceType"] == "Parameters"
    deliveries = [parts(p) for p in log["parameter"] if p["name"] == "delivery"]
    assert [d["state"] for d in deliveries] == ["pending", "delivered"]
    assert deliveries[0]["lastError"] == "DeliveryError: receiver answered HTTP 503"
    assert deliveries[0]["attempts"] == 1 and "nextAttempt" in deliveries[0]
    assert deliveries[1]["focus"] == {"reference": f"Task/{first['id']}/_history/1"}
    assert deliveries[1]["key"] == receiver.accepted_keys()[0]

    assert api.get(f"/Subscription/{subscription_id}/$delivery-log", token="").status_code == 401
    assert api.get("/Subscription/unknown/$delivery-log").status_code == 404


@pytest.mark.parametrize(
    ("change", "status", "where"),
    [
        ({"channel": {"type": "websocket"}}, 422, "Subscription.channel.type"),
        ({"endpoint": "http://169.254.169.254/latest"}, 422, "Subscription.channel.endpoint"),
        ({"endpoint": "file:///etc/passwd"}, 422, "Subscription.channel.endpoint"),
        ({"endpoint": None}, 422, "Subscription.channel.endpoint"),
        ({"payload": "application/fhir+xml"}, 422, "Subscription.channel.payload"),
        ({"header": ["Idempotency-Key: mine"]}, 422, "Subscription.channel.header[0]"),
        ({"header": ["ok: 1", "no colon here"]}, 422, "Subscription.channel.header[1]"),
        ({"criteria": "Task?no-such-param=1"}, 422, "Subscription.criteria"),
        ({"criteria": "Nonsense?x=1"}, 422, "Subscription.criteria"),
        ({"criteria": "Task?_sort=-_lastUpdated"}, 422, "Subscription.criteria"),
    ],
)
def test_a_subscription_the_hub_cannot_honour_is_refused_and_not_stored(
    api: Api, hub: Hub, receiver: Receiver, change: dict[str, Any], status: int, where: str
) -> None:
    body = subscription(receiver.url())
    if "channel" in change:
        body["channel"] = {**change["channel"], "endpoint": receiver.url()}
    elif "criteria" in change:
        body["criteria"] = change["criteria"]
    else:
        body["channel"] = {k: v for k, v in {**body["channel"], **change}.items() if v is not None}

    response = api.post("/Subscription", body)

    assert response.status_code == status, response.text
    assert outcome_issue(response)["expression"] == [where]
    assert api.get("/Subscription").json().get("total") == 0


def test_a_client_cannot_subscribe_to_what_it_cannot_search(
    api: Api, hub: Hub, receiver: Receiver
) -> None:
    narrow = token_for(hub, "system/Subscription.cruds system/Patient.rs", "narrow-client")
    response = api.post("/Subscription", subscription(receiver.url()), token=narrow)
    assert response.status_code == 403
    assert "Task" in outcome_issue(response)["diagnostics"]
