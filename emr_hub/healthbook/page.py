"""The citizen's health-book page, ``/health-book``: server-rendered HTML (Jinja2), in
Vietnamese, for a phone's browser.

Routes (all under ``/health-book``):

* ``GET /health-book``: her book when signed in (summary sections, referral letters,
  re-exams, the compact card's QR code, who accessed her record, sharing settings, the signed
  card's download); else the sign-in page.
* ``GET /health-book/sign-in`` → the identity provider (OpenID Connect, :mod:`.signin`);
  ``GET /health-book/callback`` ← its answer: a session (:mod:`.session`) and back to the book.
* ``POST /health-book/dev-sign-in``: the **development sign-in** (choose a demo citizen), only
  while no issuer is configured (``EMR_HUB_CITIZEN_OIDC_ISSUER`` unset); 404 otherwise.
* ``POST /health-book/logout``; ``POST /health-book/sharing`` (allow or refuse a hospital);
  ``POST /health-book/sharing/withdraw``: each a form with its CSRF token.
* ``GET /health-book/card.smart-health-card``: her signed health card, the file form.

Every view of her data reads through the FHIR store with her principal and leaves an audit
record (:func:`_audited`), as the FHIR API's requests do; a record that cannot be written
means no answer.
"""

from __future__ import annotations

import base64
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlencode

import orjson
from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader

from emr_hub.deps import HubDep
from emr_hub.errors import FhirError, not_found
from emr_hub.fhir.routes import in_snapshot, in_transaction
from emr_hub.healthbook import consent_settings, signin
from emr_hub.healthbook import session as sessions
from emr_hub.healthbook.credentials import issue_health_card
from emr_hub.healthbook.page_view import BookView, accesses_of, citizen_principal, read_book
from emr_hub.healthbook.qr import qr_images
from emr_hub.hub import Hub
from emr_hub.security.audit.middleware import record
from emr_hub.security.audit.trail import AuditTrail
from emr_hub.security.citizens import UnknownCitizen, citizen_person
from emr_hub.security.principal import Principal

log = logging.getLogger("emr_hub")
router = APIRouter(prefix=sessions.PATH, include_in_schema=False)
HERE = Path(__file__).parent
STATIC_DIR = HERE / "static"
TEMPLATES = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=True)
T = TypeVar("T")

CARD_TYPE = "application/smart-health-card"
CARD_FILE = "so-suc-khoe.smart-health-card"
SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}


@dataclass(frozen=True)
class DemoCitizen:
    name: str
    cccd: str


# ------------------------------------------------------------------ the page
@router.get("")
async def health_book(request: Request, hub: HubDep) -> Response:
    active = await run_in_threadpool(sessions.current_session, hub, request)
    if active is None:
        return await _signin_page(request, hub)
    principal = citizen_principal(active.person, active.row_id)
    wanted = request.query_params.get("patient")

    def read(audited: Principal) -> tuple[BookView | None, str | None]:
        book = in_snapshot(
            hub, audited, lambda store: read_book(store, audited, _base(hub), wanted)
        )
        if book is None:
            return None, None
        book.accesses = accesses_of(hub, audited, book.patient_id)
        png, _ = qr_images(issue_health_card(hub, book.bundle, compact=True))
        return book, base64.b64encode(png).decode()

    try:
        book, qr_png = await _audited(request, hub, principal, read)
    except FhirError as error:
        return _error(error.status, str(error))
    return _html(
        "book.html",
        book=book,
        qr_png=qr_png,
        csrf=sessions.csrf_token(hub, active.secret),
        development=active.method == sessions.DEVELOPMENT,
    )


async def _signin_page(request: Request, hub: Hub) -> Response:
    binding, made = sessions.form_binding(hub, request)
    oidc = signin.configured(hub.settings)
    citizens = [] if oidc else await run_in_threadpool(_demo_citizens, hub)
    response = _html(
        "signin.html", oidc=oidc, citizens=citizens, csrf=sessions.csrf_token(hub, binding)
    )
    if made:
        sessions.set_form_cookie(response, hub, binding)
    return response


# ------------------------------------------------------------------ signing in and out
@router.get("/sign-in")
async def sign_in(hub: HubDep) -> Response:
    if not signin.configured(hub.settings):
        return _error(404, "Chưa cấu hình nhà cung cấp định danh; dùng đăng nhập phát triển.")
    try:
        url, pending = await run_in_threadpool(signin.start, hub.settings, _redirect_uri(hub))
    except signin.SignInFailed as failure:
        return _error(502, str(failure))
    response = RedirectResponse(url, status_code=303)
    sessions.set_signin_cookie(response, hub, pending.as_dict())
    return response


@router.get("/callback")
async def callback(request: Request, hub: HubDep) -> Response:
    if not signin.configured(hub.settings):
        return _error(404, "Chưa cấu hình nhà cung cấp định danh.")
    pending = signin.Pending.of(sessions.signin_cookie(hub, request))
    params = dict(request.query_params)
    try:
        cccd = await run_in_threadpool(
            signin.finish, hub.settings, pending, params, _redirect_uri(hub)
        )
        response = await run_in_threadpool(_signed_in, hub, cccd, sessions.OIDC)
    except signin.SignInFailed as failure:
        response = _error(400, str(failure))
    sessions.clear_signin_cookie(response, hub)
    return response


@router.post("/dev-sign-in")
async def development_sign_in(request: Request, hub: HubDep) -> Response:
    if signin.configured(hub.settings):
        return _error(404, "Đăng nhập phát triển đã tắt: hub dùng nhà cung cấp định danh thật.")
    form = await _form(request)
    try:
        sessions.check_csrf(hub, sessions.form_cookie_binding(hub, request), form)
    except FhirError as error:
        return _error(error.status, str(error))
    cccd = str(form.get("cccd") or "")
    if cccd not in {c.cccd for c in await run_in_threadpool(_demo_citizens, hub)}:
        return _error(400, "Đăng nhập phát triển chỉ dành cho công dân của dữ liệu mẫu.")
    try:
        return await run_in_threadpool(_signed_in, hub, cccd, sessions.DEVELOPMENT)
    except signin.SignInFailed as failure:
        return _error(403, str(failure))


@router.post("/logout")
async def logout(request: Request, hub: HubDep) -> Response:
    active = await run_in_threadpool(sessions.current_session, hub, request)
    form = await _form(request)
    if active is not None:
        try:
            sessions.check_csrf(hub, active.secret, form)
        except FhirError as error:
            return _error(error.status, str(error))
        await run_in_threadpool(sessions.revoke, hub, active)
    response = RedirectResponse(sessions.PATH, status_code=303)
    sessions.clear_session_cookie(response, hub)
    return response


def _signed_in(hub: Hub, cccd: str, method: str) -> Response:
    """Open her session (the CCCD is only looked up, never kept) and send her to her book."""
    try:
        with hub.db.snapshot() as session:
            person = citizen_person(session, cccd)
    except UnknownCitizen:
        raise signin.SignInFailed(
            "Hệ thống chưa có hồ sơ sức khỏe nào của bạn (không có bệnh nhân mang số định "
            "danh này)."
        ) from None
    secret = sessions.open_session(hub, person, method)
    response = RedirectResponse(sessions.PATH, status_code=303)
    sessions.set_session_cookie(response, hub, secret)
    return response


# ------------------------------------------------------------------ sharing settings
@router.post("/sharing")
async def sharing(request: Request, hub: HubDep) -> Response:
    form = await _form(request)

    def write(store: Any, principal: Principal) -> Any:
        return consent_settings.set_sharing(
            store,
            principal,
            str(form.get("patient") or ""),
            str(form.get("organization") or ""),
            str(form.get("kind") or ""),
        )

    return await _signed_in_write(request, hub, form, write)


@router.post("/sharing/withdraw")
async def withdraw_sharing(request: Request, hub: HubDep) -> Response:
    form = await _form(request)

    def write(store: Any, principal: Principal) -> Any:
        return consent_settings.withdraw(store, principal, str(form.get("consent") or ""))

    return await _signed_in_write(request, hub, form, write)


async def _signed_in_write(
    request: Request, hub: Hub, form: dict[str, Any], work: Callable[[Any, Principal], Any]
) -> Response:
    active = await run_in_threadpool(sessions.current_session, hub, request)
    if active is None:
        return _error(401, "Phiên đăng nhập đã hết; hãy đăng nhập lại.")
    try:
        sessions.check_csrf(hub, active.secret, form)
        principal = citizen_principal(active.person, active.row_id)
        await _audited(
            request,
            hub,
            principal,
            lambda audited: in_transaction(hub, audited, lambda store: work(store, audited)),
        )
    except FhirError as error:
        return _error(error.status, str(error))
    back = sessions.PATH
    patient = str(form.get("patient") or "")
    if patient:
        back += "?" + urlencode({"patient": patient})
    return RedirectResponse(back + "#chia-se", status_code=303)


# ------------------------------------------------------------------ the signed card
@router.get("/card.smart-health-card")
async def card_file(request: Request, hub: HubDep) -> Response:
    active = await run_in_threadpool(sessions.current_session, hub, request)
    if active is None:
        return _error(401, "Hãy đăng nhập để tải thẻ sức khỏe.")
    principal = citizen_principal(active.person, active.row_id)
    patient_id = request.query_params.get("patient", "")

    def card(audited: Principal) -> str:
        def summary(store: Any) -> dict[str, Any]:
            book = read_book(store, audited, _base(hub), patient_id or None)
            if book is None or (patient_id and book.patient_id != patient_id):
                raise not_found("No such record of yours")
            return book.bundle

        return issue_health_card(hub, in_snapshot(hub, audited, summary))

    try:
        jws = await _audited(request, hub, principal, card)
    except FhirError as error:
        return _error(error.status, str(error))
    return Response(
        orjson.dumps({"verifiableCredential": [jws]}),
        media_type=CARD_TYPE,
        headers={
            **SECURITY_HEADERS,
            "Content-Disposition": f'attachment; filename="{CARD_FILE}"',
        },
    )


# ------------------------------------------------------------------ the audit of a view
async def _audited(
    request: Request, hub: Hub, principal: Principal, work: Callable[[Principal], T]
) -> T:
    """Run ``work`` with ``principal`` carrying an audit trail of this request, then write its
    AuditEvent (what the store disclosed, the patients touched) before anything is answered:
    the FHIR API's audit middleware does the same for ``/fhir``."""
    trail = AuditTrail(
        request_id=str(uuid.uuid4()),
        address=(request.scope.get("client") or (None,))[0],
        method=request.method,
        path=request.url.path,
        started=datetime.now(UTC),
        scope=request.scope,
    )
    audited = replace(principal, trail=trail)
    trail.principal = audited
    status = 200
    try:
        return await run_in_threadpool(work, audited)
    except FhirError as error:
        status = error.status
        raise
    finally:
        await record(hub, request.scope, trail, status)


# ------------------------------------------------------------------ helpers
def _demo_citizens(hub: Hub) -> list[DemoCitizen]:
    """The demo citizens the hub holds (the development sign-in's choices)."""
    from emr_hub.demo import PATIENTS

    out = []
    with hub.db.snapshot() as session:
        for patient in PATIENTS:
            try:
                citizen_person(session, patient.cccd)
            except UnknownCitizen:
                continue
            out.append(DemoCitizen(f"{patient.family} {' '.join(patient.given)}", patient.cccd))
    return out


async def _form(request: Request) -> dict[str, Any]:
    form = await request.form()
    return {key: value for key, value in form.items() if isinstance(value, str)}


def _redirect_uri(hub: Hub) -> str:
    return hub.settings.base_url.rstrip("/") + sessions.PATH + "/callback"


def _base(hub: Hub) -> str:
    return hub.settings.fhir_base_url


def _html(template: str, status: int = 200, **context: Any) -> HTMLResponse:
    body = TEMPLATES.get_template(template).render(**context)
    return HTMLResponse(body, status_code=status, headers=SECURITY_HEADERS)


def _error(status: int, message: str) -> HTMLResponse:
    return _html("error.html", status, code=status, message=message)
