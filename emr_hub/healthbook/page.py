"""The citizen's health-book page, ``/health-book``: server-rendered HTML (Jinja2), in
Vietnamese, for a phone's browser.

Routes (all under ``/health-book``):

* ``GET /health-book``: her book when signed in (summary sections, referral letters,
  re-exams, her imaging studies, the compact card's QR code, who accessed her record,
  sharing settings, her links for a doctor, the signed card's download); else the sign-in
  page.
* ``GET /health-book/sign-in`` → the identity provider (OpenID Connect, :mod:`.signin`);
  ``GET /health-book/callback`` ← its answer: a session (:mod:`.session`) and back to the book.
* ``POST /health-book/dev-sign-in``: the **development sign-in** (choose a demo citizen), only
  while no issuer is configured (``EMR_HUB_CITIZEN_OIDC_ISSUER`` unset); 404 otherwise.
* ``POST /health-book/logout``; ``POST /health-book/sharing`` (allow or refuse a hospital);
  ``POST /health-book/sharing/withdraw``: each a form with its CSRF token.
* ``GET /health-book/card.smart-health-card``: her signed health card, the file form.
* The SMART Health Links for a doctor: :mod:`.page_links`.

Every view of her data reads through the FHIR store with her principal and leaves an audit
record (:func:`~.page_render.audited`), as the FHIR API's requests do.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import orjson
from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import RedirectResponse, Response

from emr_hub.deps import HubDep
from emr_hub.errors import FhirError, not_found
from emr_hub.fhir.routes import in_snapshot, in_transaction
from emr_hub.healthbook import consent_settings, page_links, signin
from emr_hub.healthbook import session as sessions
from emr_hub.healthbook.credentials import issue_compact_card, issue_health_card
from emr_hub.healthbook.links import list_links
from emr_hub.healthbook.page_render import (
    SECURITY_HEADERS,
    audited,
    error_page,
    read_form,
    render,
    signed_in,
)
from emr_hub.healthbook.page_view import accesses_of, her_patients, read_book
from emr_hub.healthbook.qr import qr_images
from emr_hub.healthbook.summary import patient_summary
from emr_hub.hub import Hub
from emr_hub.security.citizens import UnknownCitizen, citizen_person
from emr_hub.security.principal import Principal

router = APIRouter(prefix=sessions.PATH, include_in_schema=False)
router.include_router(page_links.router)
CARD_TYPE = "application/smart-health-card"
CARD_FILE = "so-suc-khoe.smart-health-card"


@dataclass(frozen=True)
class DemoCitizen:
    name: str
    cccd: str


# ------------------------------------------------------------------ the page
@router.get("")
async def health_book(request: Request, hub: HubDep) -> Response:
    citizen = await signed_in(hub, request)
    if citizen is None:
        return await _signin_page(request, hub)
    wanted = request.query_params.get("patient")

    def read(principal: Principal) -> dict[str, Any]:
        book = in_snapshot(
            hub, principal, lambda store: read_book(store, principal, _base(hub), wanted)
        )
        if book is None:
            return {"book": None}
        book.accesses = accesses_of(hub, principal, book.patient_id)
        compact = issue_compact_card(hub, book.bundle)
        png, _ = qr_images(compact.jws)
        links = [link for link in list_links(hub, principal) if link.active()]
        return {
            "book": book,
            "qr_png": base64.b64encode(png).decode(),
            "qr_left_out": compact.left_out,
            "links": links,
        }

    try:
        shown = await audited(request, hub, citizen.principal, read)
    except FhirError as error:
        return error_page(error.status, str(error))
    return render(
        "book.html",
        **shown,
        lifetimes=page_links.LIFETIMES,
        csrf=sessions.csrf_token(hub, citizen.session.secret),
        development=citizen.session.method == sessions.DEVELOPMENT,
    )


async def _signin_page(request: Request, hub: Hub) -> Response:
    binding, made = sessions.form_binding(hub, request)
    oidc = signin.configured(hub.settings)
    citizens = [] if oidc else await run_in_threadpool(_demo_citizens, hub)
    response = render(
        "signin.html", oidc=oidc, citizens=citizens, csrf=sessions.csrf_token(hub, binding)
    )
    if made:
        sessions.set_form_cookie(response, hub, binding)
    return response


# ------------------------------------------------------------------ signing in and out
@router.get("/sign-in")
async def sign_in(hub: HubDep) -> Response:
    if not signin.configured(hub.settings):
        return error_page(404, "Chưa cấu hình nhà cung cấp định danh; dùng đăng nhập phát triển.")
    try:
        url, pending = await run_in_threadpool(signin.start, hub.settings, _redirect_uri(hub))
    except signin.SignInFailed as failure:
        return error_page(502, str(failure))
    response = RedirectResponse(url, status_code=303)
    sessions.set_signin_cookie(response, hub, pending.as_dict())
    return response


@router.get("/callback")
async def callback(request: Request, hub: HubDep) -> Response:
    if not signin.configured(hub.settings):
        return error_page(404, "Chưa cấu hình nhà cung cấp định danh.")
    pending = signin.Pending.of(sessions.signin_cookie(hub, request))
    params = dict(request.query_params)
    try:
        cccd = await run_in_threadpool(
            signin.finish, hub.settings, pending, params, _redirect_uri(hub)
        )
        response = await run_in_threadpool(_open_session, hub, cccd, sessions.OIDC)
    except signin.SignInFailed as failure:
        response = error_page(400, str(failure))
    sessions.clear_signin_cookie(response, hub)  # a callback is answered once
    return response


@router.post("/dev-sign-in")
async def development_sign_in(request: Request, hub: HubDep) -> Response:
    if signin.configured(hub.settings):
        return error_page(404, "Đăng nhập phát triển đã tắt: hub dùng nhà cung cấp định danh thật.")
    form = await read_form(request)
    try:
        sessions.check_csrf(hub, sessions.form_cookie_binding(hub, request), form)
    except FhirError as error:
        return error_page(error.status, str(error))
    cccd = str(form.get("cccd") or "")
    if cccd not in {c.cccd for c in await run_in_threadpool(_demo_citizens, hub)}:
        return error_page(400, "Đăng nhập phát triển chỉ dành cho công dân của dữ liệu mẫu.")
    try:
        return await run_in_threadpool(_open_session, hub, cccd, sessions.DEVELOPMENT)
    except signin.SignInFailed as failure:
        return error_page(403, str(failure))


@router.post("/logout")
async def logout(request: Request, hub: HubDep) -> Response:
    citizen = await signed_in(hub, request)
    form = await read_form(request)
    if citizen is not None:
        try:
            sessions.check_csrf(hub, citizen.session.secret, form)
        except FhirError as error:
            return error_page(error.status, str(error))
        await run_in_threadpool(sessions.revoke, hub, citizen.session)
    response = RedirectResponse(sessions.PATH, status_code=303)
    sessions.clear_session_cookie(response, hub)
    return response


def _open_session(hub: Hub, cccd: str, method: str) -> Response:
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
    form = await read_form(request)

    def write(store: Any, principal: Principal) -> Any:
        return consent_settings.set_sharing(
            store,
            principal,
            str(form.get("patient") or ""),
            str(form.get("organization") or ""),
            str(form.get("kind") or ""),
        )

    return await _consent_write(request, hub, form, write)


@router.post("/sharing/withdraw")
async def withdraw_sharing(request: Request, hub: HubDep) -> Response:
    form = await read_form(request)

    def write(store: Any, principal: Principal) -> Any:
        return consent_settings.withdraw(store, principal, str(form.get("consent") or ""))

    return await _consent_write(request, hub, form, write)


async def _consent_write(
    request: Request, hub: Hub, form: dict[str, Any], work: Callable[[Any, Principal], Any]
) -> Response:
    citizen = await signed_in(hub, request)
    if citizen is None:
        return error_page(401, "Phiên đăng nhập đã hết; hãy đăng nhập lại.")
    try:
        sessions.check_csrf(hub, citizen.session.secret, form)
        await audited(
            request,
            hub,
            citizen.principal,
            lambda principal: in_transaction(hub, principal, lambda store: work(store, principal)),
        )
    except FhirError as error:
        return error_page(error.status, str(error))
    return RedirectResponse(_book_url(form, "chia-se"), status_code=303)


def _book_url(form: dict[str, Any], anchor: str) -> str:
    """Back to the book (of the record the form was about) at ``anchor``."""
    patient = str(form.get("patient") or "")
    query = "?" + urlencode({"patient": patient}) if patient else ""
    return f"{sessions.PATH}{query}#{anchor}"


# ------------------------------------------------------------------ the signed card
@router.get("/card.smart-health-card")
async def card_file(request: Request, hub: HubDep) -> Response:
    citizen = await signed_in(hub, request)
    if citizen is None:
        return error_page(401, "Hãy đăng nhập để tải thẻ sức khỏe.")
    patient_id = request.query_params.get("patient", "")

    def card(principal: Principal) -> str:
        def summary(store: Any) -> dict[str, Any]:
            assert principal.person is not None
            hers = her_patients(store, principal.person)
            chosen = patient_id or (hers[0] if hers else "")
            if chosen not in hers:
                raise not_found("No such record of yours")
            return patient_summary(store, principal, chosen, _base(hub))

        return issue_health_card(hub, in_snapshot(hub, principal, summary))

    try:
        jws = await audited(request, hub, citizen.principal, card)
    except FhirError as error:
        return error_page(error.status, str(error))
    return Response(
        orjson.dumps({"verifiableCredential": [jws]}),
        media_type=CARD_TYPE,
        headers={
            **SECURITY_HEADERS,
            "Content-Disposition": f'attachment; filename="{CARD_FILE}"',
        },
    )


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


def _redirect_uri(hub: Hub) -> str:
    return hub.settings.base_url.rstrip("/") + sessions.PATH + "/callback"


def _base(hub: Hub) -> str:
    return hub.settings.fhir_base_url
