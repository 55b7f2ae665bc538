"""What every route of the health-book page shares: its templates and answers (HTML with the
page's security headers, errors as an HTML page with the right status), reading a form, the
signed-in citizen, and the audit of what a request reads or writes."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from fastapi import Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse
from jinja2 import Environment, FileSystemLoader

from emr_hub.errors import FhirError
from emr_hub.healthbook import session as sessions
from emr_hub.healthbook.page_view import citizen_principal, local_time
from emr_hub.hub import Hub
from emr_hub.security.audit.middleware import record
from emr_hub.security.audit.trail import AuditTrail
from emr_hub.security.principal import Principal

HERE = Path(__file__).parent
STATIC_DIR = HERE / "static"
TEMPLATES = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=True)
TEMPLATES.filters["local_time"] = local_time
T = TypeVar("T")

SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}
"""Personal data: never cached; no script, frame or outside resource; forms post here only."""


@dataclass(frozen=True)
class SignedIn:
    """The citizen of a request's live session, and her principal."""

    session: sessions.ActiveSession
    principal: Principal


async def signed_in(hub: Hub, request: Request) -> SignedIn | None:
    active = await run_in_threadpool(sessions.current_session, hub, request)
    if active is None:
        return None
    return SignedIn(active, citizen_principal(active.person, active.row_id))


async def read_form(request: Request) -> dict[str, Any]:
    form = await request.form()
    return {key: value for key, value in form.items() if isinstance(value, str)}


def render(template: str, status: int = 200, **context: Any) -> HTMLResponse:
    body = TEMPLATES.get_template(template).render(**context)
    return HTMLResponse(body, status_code=status, headers=SECURITY_HEADERS)


def error_page(status: int, message: str) -> HTMLResponse:
    return render("error.html", status, code=status, message=message)


async def audited(
    request: Request, hub: Hub, principal: Principal, work: Callable[[Principal], T]
) -> T:
    """Run ``work`` (in a thread) with ``principal`` carrying an audit trail of this request,
    then write its AuditEvent (what the store disclosed or changed, the patients touched)
    before anything is answered, as the audit middleware does for ``/fhir``; a write's record
    is already in its own transaction. If the record cannot be written, the request fails
    and nothing it read is sent."""
    trail = AuditTrail(
        request_id=str(uuid.uuid4()),
        address=(request.scope.get("client") or (None,))[0],
        method=request.method,
        path=request.url.path,
        started=datetime.now(UTC),
        scope=request.scope,
    )
    principal = replace(principal, trail=trail)
    trail.principal = principal
    status = 200
    try:
        return await run_in_threadpool(work, principal)
    except FhirError as error:
        status = error.status
        raise
    finally:
        await record(hub, request.scope, trail, status)
