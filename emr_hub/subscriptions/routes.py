"""``GET /fhir/Subscription/{id}/$delivery-log``: what the hub sent for a Subscription.

One ``delivery`` part per notification, newest first (``_count``, default 100, at most 1000):
the idempotency key the receiver saw, the resource version it was about, when it was queued,
its state (``pending`` with the next attempt, ``delivered`` or ``failed``), the attempts made
and the last error (an HTTP status or a connection error; never a response body). Needs read
access to Subscriptions, and the Subscription must be one the caller may read (its own).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

from emr_hub.deps import HubDep
from emr_hub.fhir.http import fhir_response, wants_pretty
from emr_hub.fhir.routes import in_snapshot
from emr_hub.fhir.search.params import parse_count
from emr_hub.fhir.store import FhirStore, Stored, format_instant
from emr_hub.hub import Hub
from emr_hub.outbox import messages_about
from emr_hub.security.principal import Principal, PrincipalDep
from storage.db import as_utc
from storage.tables import OutboxMessage

router = APIRouter(prefix="/fhir")


@router.get("/Subscription/{subscription_id}/$delivery-log")
async def delivery_log(
    subscription_id: str, request: Request, hub: HubDep, principal: PrincipalDep
) -> Response:
    pretty = wants_pretty(request)
    count = parse_count(request.query_params.get("_count"), default=100)
    body = await run_in_threadpool(_delivery_log, hub, principal, subscription_id, count)
    return fhir_response(body, pretty=pretty)


def _delivery_log(hub: Hub, principal: Principal, subscription_id: str, count: int) -> Any:
    principal.require("Subscription", "r")

    def read_log(store: FhirStore) -> tuple[Stored, list[dict[str, Any]]]:
        subscription = store.read("Subscription", subscription_id)  # 404 unless it is yours
        messages = messages_about(store.session, f"Subscription/{subscription_id}", limit=count)
        return subscription, [{"name": "delivery", "part": _parts(m)} for m in messages]

    subscription, deliveries = in_snapshot(hub, principal, read_log)
    return {
        "resourceType": "Parameters",
        "parameter": [
            {"name": "subscription", "valueReference": {"reference": subscription.reference}},
            {"name": "status", "valueCode": (subscription.content or {}).get("status")},
            *deliveries,
        ],
    }


def _parts(message: OutboxMessage) -> list[dict[str, Any]]:
    payload = message.payload
    parts: list[dict[str, Any]] = [
        {"name": "key", "valueString": message.id},
        {
            "name": "focus",
            "valueReference": {"reference": f"{payload['focus']}/_history/{payload['version']}"},
        },
        {"name": "queued", "valueInstant": format_instant(as_utc(message.created_at))},
        {"name": "state", "valueCode": _state(message)},
        {"name": "attempts", "valueInteger": message.attempts},
    ]
    if message.delivered_at is not None:
        parts.append(_instant("delivered", message.delivered_at))
    elif message.failed_at is not None:
        parts.append(_instant("failed", message.failed_at))
    else:
        parts.append(_instant("nextAttempt", message.available_at))
    if message.last_error:
        parts.append({"name": "lastError", "valueString": message.last_error})
    return parts


def _state(message: OutboxMessage) -> str:
    if message.delivered_at is not None:
        return "delivered"
    return "failed" if message.failed_at is not None else "pending"


def _instant(name: str, moment: datetime) -> dict[str, Any]:
    return {"name": name, "valueInstant": format_instant(as_utc(moment))}
