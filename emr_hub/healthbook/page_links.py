"""The page's "share with a doctor": SMART Health Links (:mod:`.links`) made and revoked from
the health book.

* ``POST /health-book/links`` (label, passcode, lifetime, CSRF token): a new link to her book,
  shown **once** on the answer page as the ``shlink:/`` text and its QR code, with the expiry;
  the hub keeps no way to show it again.
* ``POST /health-book/links/revoke`` (the link's id, CSRF token): the link stops at once.

Her active links (label, expiry, attempts left) are listed on the book.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Callable
from datetime import timedelta
from typing import Any
from urllib.parse import urlencode

import segno
from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response

from emr_hub.deps import HubDep
from emr_hub.errors import FhirError, bad_request
from emr_hub.healthbook import session as sessions
from emr_hub.healthbook.links import CreatedLink, create_link, revoke_link
from emr_hub.healthbook.page_render import audited, error_page, read_form, render, signed_in
from emr_hub.hub import Hub
from emr_hub.security.principal import Principal

router = APIRouter()
LIFETIMES = (
    ("1h", "1 giờ", timedelta(hours=1)),
    ("1d", "1 ngày", timedelta(days=1)),
    ("7d", "7 ngày", timedelta(days=7)),
    ("30d", "30 ngày", timedelta(days=30)),
)
"""The lifetimes the form offers (value, label, duration)."""
QR_ERROR_CORRECTION = "m"
QR_SCALE = 4


@router.post("/links")
async def make_link(request: Request, hub: HubDep) -> Response:
    form = await read_form(request)

    def make(principal: Principal) -> CreatedLink:
        lifetime = next((d for key, _, d in LIFETIMES if key == form.get("lifetime")), None)
        if lifetime is None:
            raise bad_request("Choose how long the link lasts", "lifetime")
        return create_link(
            hub,
            principal,
            str(form.get("patient") or ""),
            passcode=str(form.get("passcode") or ""),
            expires_in=lifetime,
            label=str(form.get("label") or "") or None,
        )

    created = await _signed_in_call(request, hub, form, make)
    if isinstance(created, Response):
        return created
    return render(
        "link.html",
        link=created,
        qr_png=_qr_png(created.shlink),
        patient=str(form.get("patient") or ""),
    )


@router.post("/links/revoke")
async def revoke(request: Request, hub: HubDep) -> Response:
    form = await read_form(request)

    def stop(principal: Principal) -> Any:
        return revoke_link(hub, principal, str(form.get("link") or ""))

    stopped = await _signed_in_call(request, hub, form, stop)
    if isinstance(stopped, Response):
        return stopped
    patient = str(form.get("patient") or "")
    query = "?" + urlencode({"patient": patient}) if patient else ""
    return RedirectResponse(f"{sessions.PATH}{query}#bac-si", status_code=303)


async def _signed_in_call(
    request: Request, hub: Hub, form: dict[str, Any], work: Callable[[Principal], Any]
) -> Any:
    """``work``'s result for the signed-in citizen whose form this is, or the error page."""
    citizen = await signed_in(hub, request)
    if citizen is None:
        return error_page(401, "Phiên đăng nhập đã hết; hãy đăng nhập lại.")
    try:
        sessions.check_csrf(hub, citizen.session.secret, form)
        return await audited(request, hub, citizen.principal, work)
    except FhirError as error:
        return error_page(error.status, str(error))


def _qr_png(text: str) -> str:
    """The link as a QR code (PNG, base64 for a ``data:`` image)."""
    out = io.BytesIO()
    segno.make(text, error=QR_ERROR_CORRECTION).save(out, kind="png", scale=QR_SCALE)
    return base64.b64encode(out.getvalue()).decode()
