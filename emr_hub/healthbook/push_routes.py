"""``GET /fhir/Patient/{id}/$wallet-log``: the pushes of the health book of the citizen this
Patient is (her person key: the pushes carry all her Patients) to the identity wallet, newest
first (``_count``, default 100, at most 1000). A Patient without a CCCD has none.

Who may read it: the citizen herself (a Patient of her person key) and the operator. A
hospital may not, even one that treats her: when her book reached her wallet is between her
and the hub, and says nothing a hospital needs for her care. Another citizen's patient is
not found (404), as for any read.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

from emr_hub.deps import HubDep
from emr_hub.errors import forbidden
from emr_hub.fhir.http import fhir_response, wants_pretty
from emr_hub.fhir.persons import patient_cccd, person_of_cccd
from emr_hub.fhir.routes import in_snapshot
from emr_hub.fhir.search.params import parse_count
from emr_hub.fhir.store import FhirStore, Stored, format_instant
from emr_hub.healthbook.push_log import PushEntry, person_pushes
from emr_hub.hub import Hub
from emr_hub.security.principal import Principal, PrincipalDep

router = APIRouter(prefix="/fhir")


@router.get("/Patient/{patient_id}/$wallet-log")
async def wallet_log(
    patient_id: str, request: Request, hub: HubDep, principal: PrincipalDep
) -> Response:
    pretty = wants_pretty(request)
    count = parse_count(request.query_params.get("_count"), default=100)
    body = await run_in_threadpool(_wallet_log, hub, principal, patient_id, count)
    return fhir_response(body, pretty=pretty)


def _wallet_log(hub: Hub, principal: Principal, patient_id: str, count: int) -> dict[str, Any]:
    if not (principal.is_citizen or principal.is_operator):
        raise forbidden(
            "The wallet push log is read by the citizen herself and the operator, not by a hospital"
        )
    principal.require("Patient", "r")

    def read_log(store: FhirStore) -> tuple[Stored, list[PushEntry]]:
        patient = store.read("Patient", patient_id)  # 404 unless she is the caller's to see
        cccd = patient_cccd(patient.content or {})
        if cccd is None:
            return patient, []
        return patient, person_pushes(store.session, person_of_cccd(cccd), limit=count)

    patient, pushes = in_snapshot(hub, principal, read_log)
    return {
        "resourceType": "Parameters",
        "parameter": [
            {"name": "patient", "valueReference": {"reference": patient.reference}},
            *({"name": "push", "part": _parts(push)} for push in pushes),
        ],
    }


def _parts(push: PushEntry) -> list[dict[str, Any]]:
    parts: list[dict[str, Any]] = [
        {"name": "id", "valueString": push.id},
        {"name": "status", "valueCode": push.status},
        _instant("owed", push.owed_at),
        {"name": "changes", "valueInteger": push.changes},
        {"name": "attempts", "valueInteger": push.attempts},
    ]
    for name, moment in (
        ("sent", push.sent_at),
        ("answered", push.answered_at),
        ("nextAttempt", push.next_attempt_at),
    ):
        if moment is not None:
            parts.append(_instant(name, moment))
    if push.answer is not None:
        parts.append({"name": "answer", "valueInteger": push.answer})
    if push.digest:
        parts.append({"name": "digest", "valueString": push.digest})
    if push.idempotency_key:
        parts.append({"name": "idempotencyKey", "valueString": push.idempotency_key})
    if push.last_error:
        parts.append({"name": "lastError", "valueString": push.last_error})
    return parts


def _instant(name: str, moment: datetime) -> dict[str, Any]:
    return {"name": name, "valueInstant": format_instant(moment)}
