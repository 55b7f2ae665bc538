"""HTTP routes of SMART Health Links (:mod:`.links`).

The citizen's side, with her access token (``patient/`` scopes):

* ``POST /health-links`` ``{"patient", "passcode", "expiresIn" (seconds), "label"?}`` → 201
  ``{"id", "shlink", "url", "expires", "label"?}``; the ``shlink`` is shown this once;
* ``GET /health-links`` → ``{"links": [...]}``, hers, newest first;
* ``DELETE /health-links/{id}`` → 200 with the revoked link.

The recipient's side, without an account (the link's secret and passcode are the credential):

* ``POST /shl/m/{secret}`` ``{"recipient", "passcode", "embeddedLengthMax"?}`` → the manifest;
  401 ``{"remainingAttempts": n}`` for a wrong passcode, 404 for a link no longer active;
* ``GET /shl/f/{secret}`` → a manifest's ``location`` file (``application/jose``), once.
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from emr_hub.deps import HubDep
from emr_hub.errors import bad_request
from emr_hub.fhir.routes import read_body
from emr_hub.fhir.store import format_instant
from emr_hub.healthbook import links
from emr_hub.security.audit.middleware import REQUEST_ID
from emr_hub.security.principal import PrincipalDep

router = APIRouter()
NO_STORE = {"Cache-Control": "no-store"}
MAX_EXPIRES_IN = 10 * 365 * 86400


@router.post("/health-links")
async def create_health_link(request: Request, hub: HubDep, principal: PrincipalDep) -> Response:
    body = await read_body(request, hub)
    if not isinstance(body, dict):
        raise bad_request("Send a JSON object: patient, passcode, expiresIn, label")
    patient = body.get("patient")
    if not isinstance(patient, str) or not patient.removeprefix("Patient/"):
        raise bad_request("patient is Patient/<id>", "patient")
    expires_in = body.get("expiresIn")
    if (
        isinstance(expires_in, bool)
        or not isinstance(expires_in, int)
        or not 0 < expires_in <= MAX_EXPIRES_IN
    ):
        raise bad_request("expiresIn is the link's lifetime in seconds", "expiresIn")
    passcode, label = body.get("passcode"), body.get("label")
    if not isinstance(passcode, str):
        raise bad_request("passcode is required", "passcode")
    if label is not None and not isinstance(label, str):
        raise bad_request("label is a string", "label")
    created = await run_in_threadpool(
        lambda: links.create_link(
            hub,
            principal,
            patient.removeprefix("Patient/"),
            passcode=passcode,
            expires_in=timedelta(seconds=expires_in),
            label=label,
        )
    )
    answer: dict[str, Any] = {
        "id": created.id,
        "shlink": created.shlink,
        "url": created.url,
        "expires": format_instant(created.expires_at),
    }
    if created.label is not None:
        answer["label"] = created.label
    return _json(answer, 201)


@router.get("/health-links")
async def list_health_links(hub: HubDep, principal: PrincipalDep) -> Response:
    found = await run_in_threadpool(links.list_links, hub, principal)
    return _json({"links": [link.as_json() for link in found]})


@router.delete("/health-links/{link_id}")
async def revoke_health_link(link_id: str, hub: HubDep, principal: PrincipalDep) -> Response:
    revoked = await run_in_threadpool(links.revoke_link, hub, principal, link_id)
    return _json(revoked.as_json())


@router.post(links.MANIFEST_PATH + "/{secret}")
async def manifest(secret: str, request: Request, hub: HubDep) -> Response:
    request_id = request.headers.get("x-request-id", "").strip()
    if not REQUEST_ID.fullmatch(request_id):
        request_id = str(uuid.uuid4())
    headers = NO_STORE | {"X-Request-Id": request_id}
    body = await read_body(request, hub)
    address = request.client.host if request.client else None
    asked = links.parse_manifest_request(body, request_id, address)
    try:
        answer = await run_in_threadpool(links.resolve_manifest, hub, secret, asked)
    except links.WrongPasscode as wrong:
        return _json({"remainingAttempts": wrong.remaining}, 401, headers)
    return _json(answer, 200, headers)


@router.get(links.FILE_PATH + "/{secret}")
async def location_file(secret: str, hub: HubDep) -> Response:
    jwe = await run_in_threadpool(links.fetch_file, hub, secret)
    return Response(jwe, media_type="application/jose", headers=NO_STORE)


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(
        orjson.dumps(body),
        status_code=status,
        media_type="application/json",
        headers=NO_STORE | (headers or {}),
    )
