"""The principal of one HTTP request: the verified token, plus what the request itself says.

* ``X-Acting-Practitioner: <system>|<value>``: the practitioner a hospital system acts for
  (e.g. ``http://fhir.hl7.org.vn/core/sid/cchn|<licence>``). Recorded in the audit trail; it
  never widens access. Refused (400) when malformed; citizens cannot send it.
* ``X-Purpose-Of-Use``: ``TREAT`` (the default) or ``ETREAT``, emergency treatment, which
  breaks the glass (:mod:`emr_hub.security.breakglass`) and then needs
  ``X-Break-Glass-Reason: <text>`` (403 without one, 403 for a client not registered as
  allowed to break the glass).

The request's audit trail (made by the audit middleware) is attached to the principal, so the
store and the services can record what the request touched.
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import replace
from typing import TYPE_CHECKING

from fastapi import Request
from starlette.concurrency import run_in_threadpool

from emr_hub.errors import bad_request, forbidden
from emr_hub.security.principal import (
    EMERGENCY_TREATMENT,
    TREATMENT,
    Principal,
    bearer_token,
)

if TYPE_CHECKING:
    from emr_hub.hub import Hub

PRACTITIONER_HEADER = "x-acting-practitioner"
PURPOSE_HEADER = "x-purpose-of-use"
REASON_HEADER = "x-break-glass-reason"
PURPOSES = (TREATMENT, EMERGENCY_TREATMENT)
MAX_REASON = 500
_PRACTITIONER = re.compile(r"[!-{}~][ -{}~]{0,254}\|[!-{}~][ -{}~]{0,127}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


async def principal_for_request(request: Request, hub: Hub) -> Principal:
    """The request's principal. A token this process has verified before is taken from its
    cache without leaving the event loop; only a new one goes to a thread to be verified
    (signature, claims and the client's row)."""
    token = bearer_token(request.headers.get("authorization"))
    cache = hub.token_cache
    principal = cache.cached(token)
    if principal is None:
        principal = await run_in_threadpool(cache.verify, token)
    trail = getattr(request.state, "audit_trail", None)
    principal = replace(principal, trail=trail)
    if trail is not None:
        trail.principal = principal  # a header refused below is audited as this client's
    principal = replace(
        principal,
        practitioner=_practitioner(request, principal),
        **_purpose(request, principal),
    )
    if trail is not None:
        trail.principal = principal
    if principal.breaking_glass:
        from emr_hub.security.breakglass import open_record

        await run_in_threadpool(open_record, hub, request, principal)
    return principal


def header_text(request: Request, name: str) -> str | None:
    """A header's value as text, stripped: HTTP carries bytes, which Starlette decodes as
    Latin-1; a reason written in Vietnamese arrives as UTF-8, so it is decoded again."""
    value = request.headers.get(name)
    if value is None:
        return None
    with contextlib.suppress(UnicodeError):  # not UTF-8: keep the Latin-1 reading
        value = value.encode("latin-1").decode("utf-8")
    return value.strip()


def _practitioner(request: Request, principal: Principal) -> str | None:
    value = header_text(request, PRACTITIONER_HEADER)
    if value is None:
        return None
    if principal.is_citizen:
        raise bad_request(
            "A citizen acts for herself: X-Acting-Practitioner is for hospital systems",
            "X-Acting-Practitioner",
        )
    if not _PRACTITIONER.fullmatch(value):
        raise bad_request(
            "X-Acting-Practitioner is <system>|<value>, e.g. "
            "http://fhir.hl7.org.vn/core/sid/cchn|000123/BYT-CCHN",
            "X-Acting-Practitioner",
        )
    return value


def _purpose(request: Request, principal: Principal) -> dict[str, str | None]:
    purpose = (header_text(request, PURPOSE_HEADER) or TREATMENT).upper()
    reason = header_text(request, REASON_HEADER) or ""
    if purpose not in PURPOSES:
        raise bad_request(
            f"X-Purpose-Of-Use takes {' or '.join(PURPOSES)}, not {purpose[:40]!r}",
            "X-Purpose-Of-Use",
        )
    if purpose == TREATMENT:
        if reason:
            raise bad_request(
                "X-Break-Glass-Reason goes with X-Purpose-Of-Use: ETREAT", "X-Break-Glass-Reason"
            )
        return {"purpose": TREATMENT, "break_glass_reason": None}
    if not principal.break_glass_allowed or principal.is_citizen:
        raise forbidden(
            f"Client {principal.client_id} is not registered to break the glass "
            "(emr-hub client add ... --break-glass)"
        )
    if not reason:
        raise forbidden(
            "Breaking the glass needs a stated reason: send X-Break-Glass-Reason: <text>"
        )
    if len(reason) > MAX_REASON or _CONTROL.search(reason):
        raise bad_request(
            f"X-Break-Glass-Reason is at most {MAX_REASON} characters of text",
            "X-Break-Glass-Reason",
        )
    return {"purpose": EMERGENCY_TREATMENT, "break_glass_reason": reason}
