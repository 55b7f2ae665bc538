"""The audit middleware: an AuditEvent for every request to the FHIR API, DICOMweb and the
token endpoint, durable before the answer leaves (an ASGI middleware, so it sees the status first).

For each audited request it makes an :class:`~emr_hub.security.audit.trail.AuditTrail` (the
request id from ``X-Request-Id``, or a new one, echoed in the answer; the client's address),
lets the request run, and when the answer's status line is about to be sent builds the
AuditEvent (:mod:`.events`) from the trail, the route and the status and waits for the group
writer (:mod:`.writer`; the app's event-loop writer where it has one) to commit it. A
successful write has already committed its record with its data (the trail says so) and is not
recorded twice. If the record cannot be written the answer is replaced by a 503: nothing is
disclosed, or acknowledged, unaudited.

Not audited: ``/fhir/metadata`` and the discovery documents (public, no personal data),
``/healthz``, ``/readyz``, the JWKS and the API docs.
"""

from __future__ import annotations

import asyncio
import logging
import re
import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from emr_hub.errors import Issue, operation_outcome
from emr_hub.fhir.http import FHIR_JSON, dump
from emr_hub.security.audit.recording import TOKEN_PATH, event_of, failure_aware_event
from emr_hub.security.audit.trail import AuditTrail

if TYPE_CHECKING:
    from emr_hub.hub import Hub
    from emr_hub.security.audit.writer import LoopAuditWriter

log = logging.getLogger("emr_hub")
REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,200}")
UNAUDITED = "The audit trail could not be written; nothing was sent. Retry"
PUBLIC = ("/fhir/metadata", "/fhir/.well-known/")


def audited(path: str) -> bool:
    if path == TOKEN_PATH:
        return True
    if path.startswith(PUBLIC):
        return False
    return path in ("/fhir", "/dicomweb") or path.startswith(("/fhir/", "/dicomweb/"))


class AuditMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not audited(scope["path"]):
            await self.app(scope, receive, send)
            return
        trail = AuditTrail(
            request_id=_request_id(scope),
            address=(scope.get("client") or (None,))[0],
            method=scope["method"],
            path=scope["path"],
            started=datetime.now(UTC),
            scope=scope,
        )
        scope.setdefault("state", {})["audit_trail"] = trail
        hub: Hub = scope["app"].state.hub
        replaced = False
        answered = False

        async def send_audited(message: Message) -> None:
            nonlocal replaced, answered
            if replaced:
                return  # the body of an answer we replaced by a 503
            if message["type"] == "http.response.start":
                answered = True
                try:
                    await record(hub, scope, trail, message["status"])
                except Exception:  # noqa: BLE001 - no audit, no answer
                    replaced = True
                    await _answer(send, trail.request_id, 503, UNAUDITED)
                    return
                MutableHeaders(scope=message)["X-Request-Id"] = trail.request_id
            await send(message)

        try:
            await self.app(scope, receive, send_audited)
        except Exception:
            if answered:
                raise
            # An error no handler turned into an answer: answer it here, audited like any
            # other (or withheld when even that fails).
            log.exception("unhandled error", extra={"fields": {"request_id": trail.request_id}})
            try:
                await record(hub, scope, trail, 500)
            except Exception:  # noqa: BLE001 - no audit, no answer
                await _answer(send, trail.request_id, 503, UNAUDITED)
                return
            await _answer(send, trail.request_id, 500, "Internal error; it has been logged")


async def record(hub: Hub, scope: Scope, trail: AuditTrail, status: int) -> None:
    """Write the request's AuditEvent and wait until it is committed."""
    if trail.persisted or not hub.settings.audit_enabled:
        return
    if status < 400:
        event = event_of(hub, trail, status)  # pure work: no thread hop
    else:  # a refusal looks up the patients of what it aimed at
        event = await run_in_threadpool(failure_aware_event, hub, trail, status)
    on_loop: LoopAuditWriter | None = getattr(scope["app"].state, "audit_writer", None)
    if on_loop is not None:
        await on_loop.write([event])
    else:  # no event-loop connection (SQLite, or an app whose startup did not run)
        await asyncio.wrap_future(hub.audit_writer.submit([event]))


def _request_id(scope: Scope) -> str:
    for name, value in scope.get("headers") or []:
        if name == b"x-request-id":
            text = value.decode("latin-1").strip()
            if REQUEST_ID.fullmatch(text):
                return text
    return str(uuid.uuid4())


async def _answer(send: Send, request_id: str, status: int, message: str) -> None:
    code = "transient" if status == 503 else "exception"
    body = dump(operation_outcome([Issue(code, message)]))
    headers = [
        (b"content-type", FHIR_JSON.encode()),
        (b"content-length", str(len(body)).encode()),
        (b"x-request-id", request_id.encode()),
    ]
    if status == 503:
        headers.append((b"retry-after", b"1"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
