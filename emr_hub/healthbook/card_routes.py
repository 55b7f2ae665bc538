"""HTTP routes of the health cards.

* ``POST /fhir/Patient/{id}/$health-cards-issue``: the SMART Health Cards operation. In, a
  Parameters resource: ``credentialType`` (1..*, a FHIR resource type such as
  ``Immunization``, or a card type URI such as ``https://smarthealth.cards#immunization``;
  several mean a card holding all of them), ``includeIdentityClaim`` (``Patient.name``...:
  what the cards say of the patient), ``_since`` (only cards holding a resource changed since
  then). ``credentialValueSet`` is refused: the hub does not filter by value set. Out, a
  Parameters resource: a ``verifiableCredential`` (valueString, the JWS) for each matching
  card (the whole health book first, then the compact card) and a ``resourceLink`` for every
  resource in them (its ``resource:N`` in the card, its URL on the hub).
* ``GET /fhir/Patient/{id}/$health-card``: the file form (``.smart-health-card``,
  ``application/smart-health-card``) of the whole health book, or ``?card=compact``.
* ``GET /fhir/Patient/{id}/$health-card-qr``: the compact card's ``shc:/`` QR code,
  ``?format=png`` (the default) or ``svg``.

All read the summary (:func:`~emr_hub.healthbook.summary.patient_summary`) through the
caller's access policy, so who may see the patient's summary may have her cards, no one else.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from emr_hub.deps import HubDep
from emr_hub.errors import FhirError, Issue, bad_request, fhir_error, unprocessable
from emr_hub.fhir.http import fhir_response
from emr_hub.fhir.routes import in_snapshot, read_body
from emr_hub.healthbook.credentials import (
    IDENTITY_CLAIMS,
    Card,
    issue_compact_card,
    issue_full_card,
)
from emr_hub.healthbook.qr import CardTooLarge, qr_images
from emr_hub.healthbook.summary import patient_summary
from emr_hub.hub import Hub
from emr_hub.security.principal import Principal, PrincipalDep
from emr_hub.security.sealing import SealingError

router = APIRouter(prefix="/fhir")
log = logging.getLogger(__name__)

HEALTH_CARD_MEDIA = "application/smart-health-card"
CARD_FILE_NAME = "so-suc-khoe.smart-health-card"
IMAGE_MEDIA = {"png": "image/png", "svg": "image/svg+xml"}
_PRIVATE = {"Cache-Control": "no-store"}
CardMaker = Callable[..., Card]
""":func:`issue_full_card` or :func:`issue_compact_card`."""


@dataclass(frozen=True)
class IssueRequest:
    credential_types: tuple[str, ...]
    identity_claims: tuple[str, ...] | None
    since: datetime | None


@dataclass(frozen=True)
class _Issued:
    card: Card
    tags: frozenset[str]
    """The resource types and ``vc.type`` values ``credentialType`` can match."""
    changed: datetime | None
    """When the newest resource in the card last changed."""


@router.post("/Patient/{patient_id}/$health-cards-issue")
async def health_cards_issue(
    patient_id: str, request: Request, hub: HubDep, principal: PrincipalDep
) -> Response:
    wanted = parse_issue_request(await read_body(request, hub))
    makers = (issue_full_card, issue_compact_card)
    cards = await run_in_threadpool(
        _issue, hub, principal, patient_id, makers, wanted.identity_claims
    )
    chosen = [issued for issued in cards if _matches(issued, wanted)]
    return fhir_response(_parameters(chosen, hub.settings.fhir_base_url), headers=_PRIVATE)


@router.get("/Patient/{patient_id}/$health-card")
def health_card_file(
    patient_id: str, hub: HubDep, principal: PrincipalDep, card: str = "full"
) -> Response:
    if card not in ("full", "compact"):
        raise bad_request("card is full or compact", "card")
    maker = issue_compact_card if card == "compact" else issue_full_card
    (issued,) = _issue(hub, principal, patient_id, (maker,))
    body = orjson.dumps({"verifiableCredential": [issued.card.jws]})
    disposition = f'attachment; filename="{CARD_FILE_NAME}"'
    headers = {**_PRIVATE, "Content-Disposition": disposition}
    return Response(body, media_type=HEALTH_CARD_MEDIA, headers=headers)


@router.get("/Patient/{patient_id}/$health-card-qr")
def health_card_qr(
    patient_id: str, hub: HubDep, principal: PrincipalDep, format: str = "png"
) -> Response:
    if format not in IMAGE_MEDIA:
        raise bad_request("format is png or svg", "format")
    (issued,) = _issue(hub, principal, patient_id, (issue_compact_card,))
    try:
        png, svg = qr_images(issued.card.jws)
    except CardTooLarge as error:  # her name and birth date alone past a QR code's room
        raise unprocessable(str(error), code="too-costly") from None
    content = png if format == "png" else svg.encode()
    return Response(content, media_type=IMAGE_MEDIA[format], headers=_PRIVATE)


def parse_issue_request(body: Any) -> IssueRequest:
    """The ``$health-cards-issue`` Parameters, or a 400 saying what is wrong."""
    if not isinstance(body, dict) or body.get("resourceType") != "Parameters":
        raise bad_request("$health-cards-issue takes a Parameters resource", "Parameters")
    types: list[str] = []
    claims: list[str] = []
    since: datetime | None = None
    for parameter in body.get("parameter") or []:
        name = parameter.get("name") if isinstance(parameter, dict) else None
        if name == "credentialType":
            types.append(_value(parameter, "valueUri", name))
        elif name == "includeIdentityClaim":
            claims.append(_identity_claim(_value(parameter, "valueString", name)))
        elif name == "_since":
            since = _instant(_value(parameter, "valueDateTime", name))
        elif name == "credentialValueSet":
            raise fhir_error(
                400, "not-supported", "The hub does not filter cards by value set", name
            )
        else:
            raise bad_request(f"Unknown parameter {name!r}", "Parameters.parameter")
    if not types:
        raise bad_request("Give at least one credentialType", "credentialType", code="required")
    return IssueRequest(tuple(types), tuple(claims) if claims else None, since)


def _value(parameter: dict[str, Any], kind: str, name: str) -> str:
    value = parameter.get(kind)
    if not isinstance(value, str) or not value.strip():
        raise bad_request(f"{name} needs a {kind}", name)
    return value.strip()


def _identity_claim(value: str) -> str:
    element = value.removeprefix("Patient.")
    if element not in IDENTITY_CLAIMS:
        allowed = ", ".join(f"Patient.{e}" for e in sorted(IDENTITY_CLAIMS))
        raise bad_request(f"includeIdentityClaim is one of {allowed}", "includeIdentityClaim")
    return element


def _instant(value: str) -> datetime:
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise bad_request(
            "_since is a FHIR dateTime (YYYY-MM-DD or a full time)", "_since"
        ) from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _matches(issued: _Issued, wanted: IssueRequest) -> bool:
    """The card holds every type asked for and, with ``_since``, something changed since."""
    if not set(wanted.credential_types) <= issued.tags:
        return False
    if wanted.since is None:
        return True
    return issued.changed is not None and issued.changed >= wanted.since


def _issue(
    hub: Hub,
    principal: Principal,
    patient_id: str,
    makers: Sequence[CardMaker],
    claims: Collection[str] | None = None,
) -> list[_Issued]:
    """The card each of ``makers`` makes of the patient's summary as ``principal`` sees it."""
    base = hub.settings.fhir_base_url
    summary = in_snapshot(
        hub, principal, lambda store: patient_summary(store, principal, patient_id, base)
    )
    changed = _last_updated(summary)
    # The summary is read; signing happens outside the snapshot (it may make the first key).
    try:
        cards = [maker(hub, summary, identity_claims=claims) for maker in makers]
    except SealingError as error:
        log.error("the health-card key cannot be opened: %s", error)  # says what to fix
        raise FhirError(503, [_keys_unavailable()]) from error
    return [_described(card, changed) for card in cards]


def _keys_unavailable() -> Issue:
    return Issue("transient", "The hub cannot use its signing keys now; retry later")


def _last_updated(summary: dict[str, Any]) -> dict[str, datetime]:
    """``Type/id`` → ``meta.lastUpdated`` of the resources of the summary."""
    out = {}
    for entry in summary.get("entry") or []:
        resource = entry.get("resource") or {}
        stamp = (resource.get("meta") or {}).get("lastUpdated")
        if isinstance(stamp, str) and resource.get("id"):
            out[f"{resource['resourceType']}/{resource['id']}"] = datetime.fromisoformat(stamp)
    return out


def _described(card: Card, changed: dict[str, datetime]) -> _Issued:
    types = {source.split("/", 1)[0] for source in card.sources}
    stamps = [changed[s] for s in card.sources if s in changed]
    return _Issued(card, frozenset(types | set(card.types)), max(stamps, default=None))


def _parameters(cards: list[_Issued], fhir_base: str) -> dict[str, Any]:
    parameters: list[dict[str, Any]] = [
        {"name": "verifiableCredential", "valueString": issued.card.jws} for issued in cards
    ]
    for index, issued in enumerate(cards):
        for position, source in enumerate(issued.card.sources):
            parameters.append(
                {
                    "name": "resourceLink",
                    "part": [
                        {"name": "vcIndex", "valueInteger": index},
                        {"name": "bundledResource", "valueUri": f"resource:{position}"},
                        {"name": "hostedResource", "valueUri": f"{fhir_base}/{source}"},
                    ],
                }
            )
    return {"resourceType": "Parameters", "parameter": parameters}
