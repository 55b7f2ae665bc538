"""The citizen's summary as a SMART Health Card: a JWS (compact serialization, ES256) whose
payload is a W3C-style verifiable credential holding a minimized FHIR ``collection`` Bundle.

The JWS header is ``{"zip": "DEF", "alg": "ES256", "kid": <RFC 7638 thumbprint>}``; the
payload is the minified JSON, raw-DEFLATE compressed (no zlib header), with ``iss`` the hub's
public base URL (so ``iss + "/.well-known/jwks.json"`` finds the key), ``nbf`` the issue time
in seconds and ``vc``. The key is the health-card key (:mod:`.card_keys`), not the token key.

Minimizing the summary (what the SMART Health Cards spec asks of a card):

* the Composition is left out: its sections are narrative and pointers, and a verifier reads
  the card by resource type; the other entries keep the summary's order;
* ``fullUrl`` becomes ``resource:N`` and every reference to a resource in the card becomes
  that ``resource:N``; a reference to one not in the card keeps only its ``display`` (and goes
  when it has none), so nothing in the card points outside it;
* each resource loses ``id``, ``meta`` (but ``meta.security``) and its narrative ``text``;
  every ``Coding.display`` goes; a ``CodeableConcept.text`` goes when the concept has a coded
  coding (hospitals often send local diagnoses as text only, and those keep it).

The **compact card** is the one for a QR code: the Patient (name, birth date, sex), the
allergies, the active problems and the immunizations, taken from the summary's sections in
that order, newest first within each, and cut at the tail so the JWS fits one QR code
(:data:`MAX_QR_JWS`); :attr:`Card.left_out` tells how many entries had no room.
"""

from __future__ import annotations

import zlib
from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from joserfc import jws
from joserfc.jws import JWSRegistry
from joserfc.registry import HeaderParameter

from emr_hub.healthbook.card_keys import card_signing_key
from emr_hub.security.keys import ALGORITHM
from storage import json_codec

if TYPE_CHECKING:
    from emr_hub.hub import Hub

Resource = dict[str, Any]

HEALTH_CARD = "https://smarthealth.cards#health-card"
IMMUNIZATION_CARD = "https://smarthealth.cards#immunization"
LABORATORY_CARD = "https://smarthealth.cards#laboratory"
FHIR_VERSION = "4.0.1"
MAX_QR_JWS = 1195
"""The longest JWS the spec allows in a single QR code (version 22 at error correction L)."""

LOINC = "http://loinc.org"
ALLERGIES_SECTION = "48765-2"
PROBLEMS_SECTION = "11450-4"
IMMUNIZATIONS_SECTION = "11369-6"
COMPACT_SECTIONS = (ALLERGIES_SECTION, PROBLEMS_SECTION, IMMUNIZATIONS_SECTION)
"""The sections of the compact card, in the order they get room in the QR code."""
COMPACT_PATIENT = ("name", "birthDate", "gender")
"""What the compact card says of the patient: enough to match the card to the person."""
IDENTITY_CLAIMS = frozenset(
    {"name", "birthDate", "gender", "identifier", "telecom", "address", "communication"}
)
"""The Patient elements ``includeIdentityClaim`` may ask for."""
OBSERVATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"

_REGISTRY = JWSRegistry(
    header_registry={"zip": HeaderParameter("Compression of the payload", "str")},
    algorithms=[ALGORITHM],
)


@dataclass(frozen=True)
class Card:
    """A signed card and what it was made of."""

    jws: str
    sources: tuple[str, ...]
    """``Type/id`` of the hub's resource behind each ``resource:N``, in order."""
    types: tuple[str, ...]
    """``vc.type``."""
    left_out: int = 0
    """Entries of the compact sections that did not fit in one QR code."""


def issue_health_card(
    hub: Hub,
    bundle: dict[str, Any],
    *,
    compact: bool = False,
    now: datetime | None = None,
    identity_claims: Collection[str] | None = None,
) -> str:
    """The SMART Health Card (JWS) of the summary document ``bundle``
    (:func:`~emr_hub.healthbook.summary.patient_summary`): the whole summary, or with
    ``compact`` the QR-sized card. ``identity_claims`` (Patient element names) limits what
    the card says of the patient."""
    if compact:
        return issue_compact_card(hub, bundle, now=now, identity_claims=identity_claims).jws
    return issue_full_card(hub, bundle, now=now, identity_claims=identity_claims).jws


def issue_full_card(
    hub: Hub,
    bundle: dict[str, Any],
    *,
    now: datetime | None = None,
    identity_claims: Collection[str] | None = None,
) -> Card:
    """The card of the whole summary (for the file form: too large for a QR code)."""
    entries = [e for e in _entries(bundle) if e["resource"].get("resourceType") != "Composition"]
    return _card(hub, entries, identity_claims, now or datetime.now(UTC))


def issue_compact_card(
    hub: Hub,
    bundle: dict[str, Any],
    *,
    now: datetime | None = None,
    identity_claims: Collection[str] | None = None,
) -> Card:
    """The compact card, with as many of its entries as fit in one QR code."""
    patient, chosen = _compact_entries(bundle)
    claims = COMPACT_PATIENT if identity_claims is None else identity_claims
    moment = now or datetime.now(UTC)

    def signed(count: int) -> Card:
        return _card(hub, [patient, *chosen[:count]], claims, moment, len(chosen) - count)

    best = signed(len(chosen))
    if len(best.jws) <= MAX_QR_JWS:
        return best
    # The longest prefix that fits: the JWS grows with the count, so search for it.
    low, high = 0, len(chosen)
    best = signed(0)
    while high - low > 1:
        middle = (low + high) // 2
        attempt = signed(middle)
        if len(attempt.jws) <= MAX_QR_JWS:
            low, best = middle, attempt
        else:
            high = middle
    return best


def minimize(entries: list[dict[str, Any]], identity_claims: Collection[str] | None) -> Resource:
    """The ``collection`` Bundle of ``entries`` (Bundle entries with ``fullUrl`` and
    ``resource``) as a card holds it."""
    short: dict[str, str] = {}
    for index, entry in enumerate(entries):
        resource = entry["resource"]
        name = f"resource:{index}"
        short[f"{resource.get('resourceType')}/{resource.get('id')}"] = name
        if entry.get("fullUrl"):
            short[str(entry["fullUrl"])] = name
    out = []
    for index, entry in enumerate(entries):
        resource = entry["resource"]
        if resource.get("resourceType") == "Patient" and identity_claims is not None:
            allowed = IDENTITY_CLAIMS & set(identity_claims)
            resource = {k: v for k, v in resource.items() if k == "resourceType" or k in allowed}
        out.append({"fullUrl": f"resource:{index}", "resource": _minimal_resource(resource, short)})
    return {"resourceType": "Bundle", "type": "collection", "entry": out}


def card_types(fhir_bundle: Resource) -> list[str]:
    """``vc.type``: a health card, plus the kinds of content the spec names that it holds."""
    resources = [entry["resource"] for entry in fhir_bundle.get("entry", [])]
    types = [HEALTH_CARD]
    if any(r.get("resourceType") == "Immunization" for r in resources):
        types.append(IMMUNIZATION_CARD)
    if any(_is_laboratory(r) for r in resources):
        types.append(LABORATORY_CARD)
    return types


def _card(
    hub: Hub,
    entries: list[dict[str, Any]],
    identity_claims: Collection[str] | None,
    moment: datetime,
    left_out: int = 0,
) -> Card:
    fhir_bundle = minimize(entries, identity_claims)
    types = card_types(fhir_bundle)
    key = card_signing_key(hub)
    payload = {
        "iss": hub.settings.base_url.rstrip("/"),
        "nbf": int(moment.timestamp()),
        "vc": {
            "type": types,
            "credentialSubject": {"fhirVersion": FHIR_VERSION, "fhirBundle": fhir_bundle},
        },
    }
    header = {"zip": "DEF", "alg": ALGORITHM, "kid": key.kid}
    signed = jws.serialize_compact(
        header, _deflate(json_codec.dumps(payload)), key, registry=_REGISTRY
    )
    sources = tuple(f"{e['resource']['resourceType']}/{e['resource'].get('id')}" for e in entries)
    return Card(signed, sources, tuple(types), left_out)


def _deflate(data: bytes) -> bytes:
    compressor = zlib.compressobj(level=9, wbits=-15)
    return compressor.compress(data) + compressor.flush()


def _entries(bundle: dict[str, Any]) -> list[dict[str, Any]]:
    return [e for e in bundle.get("entry") or [] if isinstance(e.get("resource"), dict)]


def _compact_entries(bundle: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The Patient entry and the entries of the compact sections, in the order they get room."""
    entries = _entries(bundle)
    by_url = {str(e.get("fullUrl")): e for e in entries}
    patient = next(e for e in entries if e["resource"].get("resourceType") == "Patient")
    composition = next(
        (e["resource"] for e in entries if e["resource"].get("resourceType") == "Composition"), {}
    )
    sections = {_section_code(s): s for s in composition.get("section") or []}
    chosen: list[dict[str, Any]] = []
    for code in COMPACT_SECTIONS:
        for pointer in (sections.get(code) or {}).get("entry") or []:
            entry = by_url.get(str(pointer.get("reference")))
            if entry is not None and entry not in chosen:
                chosen.append(entry)
    return patient, chosen


def _section_code(section: dict[str, Any]) -> str:
    for coding in (section.get("code") or {}).get("coding") or []:
        if coding.get("system") == LOINC:
            return str(coding.get("code"))
    return ""


def _minimal_resource(resource: Resource, short: dict[str, str]) -> Resource:
    out = {k: v for k, v in resource.items() if k not in ("id", "meta", "text")}
    security = (resource.get("meta") or {}).get("security")
    if security:
        out["meta"] = {"security": security}
    return _minimal(out, short)  # type: ignore[no-any-return]


def _minimal(value: Any, short: dict[str, str]) -> Any:
    """``value`` with references shortened and displays dropped; empty objects and lists
    left by a dropped reference go too (returned as None)."""
    if isinstance(value, list):
        items = [m for m in (_minimal(v, short) for v in value) if m is not None]
        return items or None
    if not isinstance(value, dict):
        return value
    out: dict[str, Any] = {}
    for name, child in value.items():
        if name == "reference" and isinstance(child, str):
            if child in short or child.startswith("#"):  # "#x": a contained resource
                out[name] = short.get(child, child)
            continue
        if name == "coding" and isinstance(child, list):
            child = [
                {k: v for k, v in c.items() if k != "display"} if isinstance(c, dict) else c
                for c in child
            ]
        kept = _minimal(child, short)
        if kept is not None:
            out[name] = kept
    if "text" in out and any(isinstance(c, dict) and c.get("code") for c in out.get("coding", [])):
        del out["text"]
    if "reference" in value and "reference" not in out and set(out) <= {"display", "type"}:
        # A reference to a resource outside the card: its display alone, or nothing.
        return {"display": out["display"]} if "display" in out else None
    return out or None


def _is_laboratory(resource: Resource) -> bool:
    if resource.get("resourceType") != "Observation":
        return False
    return any(
        coding.get("system") == OBSERVATION_CATEGORY and coding.get("code") == "laboratory"
        for category in resource.get("category") or []
        for coding in (category or {}).get("coding") or []
    )
