"""SMART Health Links: the citizen shares her health book with a clinic that has no account.

**Making a link** (:func:`create_link`, the citizen only, for a Patient of her own person): a
``shlink:/`` URI whose payload holds the manifest URL (``EMR_HUB_BASE_URL/shl/m/<secret>``,
the secret 32 random bytes), the link's key (32 random bytes), ``exp``, ``flag: "P"`` (a
passcode is always required), the label and ``v: 1``. It is shown once: the hub keeps no way
to rebuild it. What the database keeps (``health_link``) opens nothing by itself: the SHA-256
of the secret, a scrypt hash of the passcode, and the key sealed with the key-encryption key
(:mod:`emr_hub.security.sealing`), needed because the files are encrypted when asked for.

**Opening it** (:func:`resolve_manifest`): the clinic POSTs ``recipient``, ``passcode`` and
optionally ``embeddedLengthMax``. The content is built **at that moment**: the current
summary (:func:`~emr_hub.healthbook.summary.patient_summary`, read with a citizen principal of
the link's person through :func:`~emr_hub.fhir.routes.in_snapshot`) and her health card of
it, each encrypted as a JWE with the link's key (:mod:`.jwe`), embedded in the manifest or,
past ``embeddedLengthMax``, behind a ``location`` URL that works once, for
:data:`LOCATION_LIFETIME`. So a link always shows the health book as it is, revoking it stops
everything at once, and no second copy of her record sits in the hub.

**Passcode guesses**: ``attempts_left`` (``EMR_HUB_HEALTH_LINK_ATTEMPTS``, default 10) is the
lifetime budget of passcode *checks*. Each request takes one with a conditional UPDATE
(``attempts_left > 0``) before the passcode is compared, and a right passcode gives it back;
the database serialises the UPDATEs, so however many guesses arrive at once no more than the
budget are ever compared (the price: while the last attempts are being checked, a right
passcode arriving at that instant is refused too). A wrong passcode answers 401 with
``remainingAttempts``; a link expired, revoked or out of attempts answers 404, as the spec asks
of a link no longer active.

**Audit**: every request to a known link leaves an AuditEvent naming her Patient (so her
``$access-log`` shows it) with the recipient as the requesting agent, the outcome, and on
success the kinds of data disclosed; a successful answer's record commits with its location
files, before the answer leaves. Fetching a ``location`` file is not recorded again: it hands
out ciphertext whose disclosure the manifest request already recorded.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from sqlalchemy import delete, insert, select, update

from emr_hub.errors import FhirError, Issue, bad_request, forbidden, not_found
from emr_hub.fhir.routes import in_snapshot
from emr_hub.fhir.store import format_instant
from emr_hub.healthbook.credentials import FHIR_VERSION, issue_health_card
from emr_hub.healthbook.jwe import encrypt_file, key_text, new_link_key
from emr_hub.healthbook.summary import patient_summary
from emr_hub.hub import Hub
from emr_hub.security.audit.events import (
    ENTITY_TYPE,
    OBJECT_ROLE,
    PARTICIPATION,
    RECIPIENT_SYSTEM,
    EventFacts,
    PatientEntity,
    outcome_of,
    rest_event,
)
from emr_hub.security.audit.log import append
from emr_hub.security.audit.trail import AuditTrail
from emr_hub.security.principal import Principal
from emr_hub.security.scopes import ScopeSet
from emr_hub.security.sealing import key_encryption_key, seal, unseal
from storage import json_codec
from storage.db import as_utc
from storage.tables import HealthLink, HealthLinkFile

LINK = HealthLink.__table__
FILE = HealthLinkFile.__table__

MANIFEST_PATH = "/shl/m"
FILE_PATH = "/shl/f"
SMART_HEALTH_CARD = "application/smart-health-card"
FHIR_JSON = "application/fhir+json"
MANIFEST_OPERATION = "$shl-manifest"
LINK_SYSTEM = "urn:emr-hub:health-link"
LOCATION_LIFETIME = timedelta(minutes=10)
"""How long a ``location`` URL works (the spec allows an hour at most); it works once."""
MAX_MANIFEST_URL = 128
"""The spec's limit on the manifest URL's length."""
SECRET_BYTES = 32
PASSCODE_MIN, PASSCODE_MAX = 6, 64
LABEL_MAX = 80
RECIPIENT_MAX = 200
_SECRET = re.compile(r"[A-Za-z0-9_-]{43}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_SCRYPT = {"n": 2**14, "r": 8, "p": 1}
_LINK_SCOPES = ScopeSet.parse("patient/*.rs")


@dataclass(frozen=True)
class CreatedLink:
    """A new link: ``shlink`` is the ``shlink:/`` URI (shown to the citizen once), ``id`` the
    handle she lists and revokes it by."""

    id: str
    shlink: str
    url: str
    expires_at: datetime
    label: str | None


@dataclass(frozen=True)
class LinkInfo:
    """What the citizen sees of one of her links (never its key or URL)."""

    id: str
    patient_id: str
    label: str | None
    created_at: datetime
    expires_at: datetime
    revoked_at: datetime | None
    attempts_left: int

    def active(self, now: datetime | None = None) -> bool:
        moment = now or datetime.now(UTC)
        return self.revoked_at is None and self.attempts_left > 0 and self.expires_at > moment

    def as_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": self.id,
            "patient": f"Patient/{self.patient_id}",
            "created": format_instant(self.created_at),
            "expires": format_instant(self.expires_at),
            "remainingAttempts": self.attempts_left,
            "active": self.active(),
        }
        if self.label is not None:
            body["label"] = self.label
        if self.revoked_at is not None:
            body["revoked"] = format_instant(self.revoked_at)
        return body


@dataclass(frozen=True)
class ManifestRequest:
    """A manifest request's body and who sent it (for the audit record)."""

    recipient: str
    passcode: str
    embedded_length_max: int | None
    request_id: str
    address: str | None


class WrongPasscode(Exception):
    """The passcode was wrong: 401, with the attempts left before the link stops."""

    def __init__(self, remaining: int) -> None:
        super().__init__(f"wrong passcode, {remaining} attempts left")
        self.remaining = remaining


# ---------------------------------------------------------------- the citizen's side
def create_link(
    hub: Hub,
    principal: Principal,
    patient_id: str,
    *,
    passcode: str,
    expires_in: timedelta,
    label: str | None,
) -> CreatedLink:
    """A new link to ``Patient/{patient_id}``'s health book, for the citizen herself (403 for
    anyone else, 404 for a Patient not of her person)."""
    person = _own_person(principal)
    _check_passcode_rule(passcode)
    label = _checked_label(label)
    longest = timedelta(days=hub.settings.health_link_max_days)
    if not timedelta(minutes=1) <= expires_in <= longest:
        raise bad_request(
            f"A link lasts from a minute to {hub.settings.health_link_max_days} days", "expiresIn"
        )
    in_snapshot(hub, principal, lambda store: store.read("Patient", patient_id))  # hers, or 404
    secret = secrets.token_urlsafe(SECRET_BYTES)
    url = f"{_base(hub)}{MANIFEST_PATH}/{secret}"
    if len(url) > MAX_MANIFEST_URL:
        raise FhirError(
            500,
            [
                Issue(
                    "exception",
                    f"EMR_HUB_BASE_URL is too long for a SMART Health Link: its manifest URL "
                    f"would be {len(url)} characters, the spec allows {MAX_MANIFEST_URL}",
                )
            ],
        )
    key = new_link_key()
    link_id = str(uuid.uuid4())
    now = datetime.now(UTC)
    expires_at = now + expires_in
    with hub.db.transaction() as session:
        session.execute(
            insert(LINK).values(
                id=link_id,
                token_digest=_digest(secret),
                patient_id=patient_id,
                person=person,
                label=label,
                passcode_hash=_hash_passcode(passcode),
                sealed_key=seal(
                    key_encryption_key(hub.settings),
                    _sealing_id(link_id),
                    {"kty": "oct", "k": key_text(key)},
                ),
                attempts_left=hub.settings.health_link_attempts,
                created_at=now,
                expires_at=expires_at,
            )
        )
    payload: dict[str, Any] = {
        "url": url,
        "key": key_text(key),
        "exp": int(expires_at.timestamp()),
        "flag": "P",
        "v": 1,
    }
    if label is not None:
        payload["label"] = label
    encoded = base64.urlsafe_b64encode(orjson.dumps(payload)).rstrip(b"=").decode("ascii")
    return CreatedLink(link_id, f"shlink:/{encoded}", url, expires_at, label)


def list_links(hub: Hub, principal: Principal) -> list[LinkInfo]:
    """The citizen's links, newest first (active or not)."""
    person = _own_person(principal)
    with hub.db.snapshot() as session:
        rows = session.execute(
            select(LINK).where(LINK.c.person == person).order_by(LINK.c.created_at.desc())
        ).all()
    return [_info(row) for row in rows]


def revoke_link(hub: Hub, principal: Principal, link_id: str) -> LinkInfo:
    """Stop one of the citizen's links at once (its pending location files go too); revoking
    a revoked link changes nothing. 404 for a link that is not hers."""
    person = _own_person(principal)
    with hub.db.transaction() as session:
        session.execute(
            update(LINK)
            .where(LINK.c.id == link_id, LINK.c.person == person, LINK.c.revoked_at.is_(None))
            .values(revoked_at=datetime.now(UTC))
        )
        session.execute(delete(FILE).where(FILE.c.link_id == link_id))
        row = session.execute(
            select(LINK).where(LINK.c.id == link_id, LINK.c.person == person)
        ).first()
    if row is None:
        raise not_found(f"No health link {link_id} of yours")
    return _info(row)


# ---------------------------------------------------------------- the recipient's side
def parse_manifest_request(body: Any, request_id: str, address: str | None) -> ManifestRequest:
    """The manifest request's JSON body, checked (400 for what the spec does not allow)."""
    if not isinstance(body, dict):
        raise bad_request("The manifest request is a JSON object: recipient, passcode")
    recipient = body.get("recipient")
    if not isinstance(recipient, str) or not recipient.strip():
        raise bad_request("recipient (who is opening the link) is required", "recipient")
    recipient = recipient.strip()
    if len(recipient) > RECIPIENT_MAX or _CONTROL.search(recipient):
        raise bad_request(f"recipient is at most {RECIPIENT_MAX} characters of text", "recipient")
    passcode = body.get("passcode")
    if passcode is None:
        passcode = ""
    if not isinstance(passcode, str):
        raise bad_request("passcode is a string", "passcode")
    limit = body.get("embeddedLengthMax")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise bad_request("embeddedLengthMax is a whole number of characters", "embeddedLengthMax")
    return ManifestRequest(recipient, passcode, limit, request_id, address)


def resolve_manifest(hub: Hub, secret: str, request: ManifestRequest) -> dict[str, Any]:
    """The manifest of the link whose URL ends in ``secret``; raises 404 (unknown or no longer
    active) or :class:`WrongPasscode`. Audited whatever the outcome, once the link is known."""
    link = _link_of(hub, secret)
    now = datetime.now(UTC)
    if link is None:
        raise _not_active()
    if not _usable(link, now):
        _audit_refusal(hub, link, request, 404)
        raise _not_active()
    remaining = _take_attempt(hub, link.id, now)
    if remaining is None:  # the last attempts went to guesses made at the same time
        _audit_refusal(hub, link, request, 404)
        raise _not_active()
    if not _passcode_matches(request.passcode, link.passcode_hash):
        _audit_refusal(hub, link, request, 401)
        raise WrongPasscode(remaining)
    _give_back_attempt(hub, link.id)
    return _manifest(hub, link, request, now)


def fetch_file(hub: Hub, secret: str) -> str:
    """The JWE behind a manifest's ``location`` URL, once: the row is taken as it is read, and
    only while it is fresh and its link still active."""
    if not _SECRET.fullmatch(secret):
        raise not_found("This file link is unknown, used or expired")
    now = datetime.now(UTC)
    with hub.db.transaction() as session:
        row = session.execute(
            delete(FILE)
            .where(
                FILE.c.token_digest == _digest(secret),
                FILE.c.expires_at > now,
                FILE.c.link_id.in_(
                    select(LINK.c.id).where(LINK.c.revoked_at.is_(None), LINK.c.expires_at > now)
                ),
            )
            .returning(FILE.c.jwe)
        ).first()
    if row is None:
        raise not_found("This file link is unknown, used or expired")
    return str(row[0])


# ------------------------------------------------------------------------ internals
def _manifest(hub: Hub, link: Any, request: ManifestRequest, now: datetime) -> dict[str, Any]:
    trail = AuditTrail(
        request_id=request.request_id,
        address=request.address,
        method="POST",
        path=MANIFEST_PATH,
        started=now,
    )
    reader = Principal.citizen(
        link.person, "health-link", _LINK_SCOPES, f"health-link/{link.id}", trail=trail
    )
    base = hub.settings.fhir_base_url
    try:
        bundle = in_snapshot(
            hub, reader, lambda store: patient_summary(store, reader, link.patient_id, base)
        )
    except FhirError as error:  # the Patient was deleted since
        _audit_refusal(hub, link, request, 404)
        raise _not_active() from error
    card = issue_health_card(hub, bundle)
    key = _unsealed_key(hub, link)
    contents = [
        (SMART_HEALTH_CARD, orjson.dumps({"verifiableCredential": [card]})),
        (FHIR_JSON, json_codec.dumps(bundle)),
    ]
    files: list[dict[str, Any]] = []
    stored: list[dict[str, Any]] = []
    for content_type, plaintext in contents:
        encrypted = encrypt_file(key, content_type, plaintext)
        entry: dict[str, Any] = {
            "contentType": content_type,
            "lastUpdated": bundle["timestamp"],
            "status": "can-change",
            "fhirVersion": FHIR_VERSION,
        }
        limit = request.embedded_length_max
        if limit is None or len(encrypted) <= limit:
            entry["embedded"] = encrypted
        else:
            file_secret = secrets.token_urlsafe(SECRET_BYTES)
            entry["location"] = f"{_base(hub)}{FILE_PATH}/{file_secret}"
            stored.append(
                {
                    "token_digest": _digest(file_secret),
                    "link_id": link.id,
                    "content_type": content_type,
                    "jwe": encrypted,
                    "expires_at": now + LOCATION_LIFETIME,
                }
            )
        files.append(entry)
    patients = tuple(
        PatientEntity(patient_id, touched.person, tuple(sorted(touched.types)))
        for patient_id, touched in sorted(trail.patients.items())
    ) or (PatientEntity(link.patient_id, link.person, ("Patient",)),)
    with hub.db.transaction() as session:
        session.execute(delete(FILE).where(FILE.c.expires_at <= now))
        if stored:
            session.execute(insert(FILE), stored)
        if hub.settings.audit_enabled:
            append(session, [_event(hub, link, request, 200, patients)])
    return {"files": files}


def _audit_refusal(hub: Hub, link: Any, request: ManifestRequest, status: int) -> None:
    """A refused request to a known link: in her access log, with no data disclosed."""
    if hub.settings.audit_enabled:
        patients = (PatientEntity(link.patient_id, link.person, ()),)
        hub.audit_writer.write([_event(hub, link, request, status, patients)])


def _event(
    hub: Hub,
    link: Any,
    request: ManifestRequest,
    status: int,
    patients: tuple[PatientEntity, ...],
) -> dict[str, Any]:
    """The AuditEvent of a manifest request: no token, so no client; the recipient the
    request named is the requesting agent."""
    event = rest_event(
        EventFacts(
            recorded=datetime.now(UTC),
            interaction="operation",
            outcome=outcome_of(status),
            status=status,
            request_id=request.request_id,
            address=request.address,
            base_url=hub.settings.fhir_base_url,
            principal=None,
            operation=MANIFEST_OPERATION,
            patients=patients,
        )
    )
    event["agent"][0]["requestor"] = False
    event["agent"].append(
        {
            "type": {"coding": [{"system": PARTICIPATION, "code": "IRCP"}]},
            "who": {
                "identifier": {"system": RECIPIENT_SYSTEM, "value": request.recipient},
                "display": request.recipient,
            },
            "requestor": True,
        }
    )
    event["entity"].append(
        {
            "what": {"identifier": {"system": LINK_SYSTEM, "value": link.id}},
            "type": {"system": ENTITY_TYPE, "code": "2", "display": "System Object"},
            "role": {"system": OBJECT_ROLE, "code": "13", "display": "Security Resource"},
        }
    )
    return event


def _link_of(hub: Hub, secret: str) -> Any:
    if not _SECRET.fullmatch(secret):
        return None
    with hub.db.snapshot() as session:
        return session.execute(select(LINK).where(LINK.c.token_digest == _digest(secret))).first()


def _usable(link: Any, now: datetime) -> bool:
    return link.revoked_at is None and link.attempts_left > 0 and as_utc(link.expires_at) > now


def _take_attempt(hub: Hub, link_id: str, now: datetime) -> int | None:
    """Take one passcode check from the link's budget, if any is left and the link is still
    active; the attempts left after it, or None. One conditional UPDATE, committed before the
    passcode is compared: concurrent requests queue on the row, each re-reads the count."""
    with hub.db.transaction() as session:
        row = session.execute(
            update(LINK)
            .where(
                LINK.c.id == link_id,
                LINK.c.attempts_left > 0,
                LINK.c.revoked_at.is_(None),
                LINK.c.expires_at > now,
            )
            .values(attempts_left=LINK.c.attempts_left - 1)
            .returning(LINK.c.attempts_left)
        ).first()
    return None if row is None else int(row[0])


def _give_back_attempt(hub: Hub, link_id: str) -> None:
    """A right passcode costs nothing: its check goes back to the budget."""
    with hub.db.transaction() as session:
        session.execute(
            update(LINK).where(LINK.c.id == link_id).values(attempts_left=LINK.c.attempts_left + 1)
        )


def _unsealed_key(hub: Hub, link: Any) -> bytes:
    jwk = unseal(key_encryption_key(hub.settings), _sealing_id(link.id), link.sealed_key)
    text = str(jwk["k"])
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _sealing_id(link_id: str) -> str:
    """What a link's sealed key is bound to (the sealing's associated data): a sealed key
    copied into another row, or passed off as a signing key, does not open."""
    return f"health-link/{link_id}"


def _own_person(principal: Principal) -> str:
    if not principal.is_citizen or principal.person is None:
        raise forbidden("Only the citizen herself shares her health book through a link")
    principal.require("Patient", "r")
    return principal.person


def _check_passcode_rule(passcode: str) -> None:
    if (
        not isinstance(passcode, str)
        or not PASSCODE_MIN <= len(passcode) <= PASSCODE_MAX
        or _CONTROL.search(passcode)
    ):
        raise bad_request(
            f"The passcode is {PASSCODE_MIN} to {PASSCODE_MAX} characters of text", "passcode"
        )


def _checked_label(label: str | None) -> str | None:
    if label is None:
        return None
    if not isinstance(label, str) or len(label) > LABEL_MAX or _CONTROL.search(label):
        raise bad_request(f"The label is at most {LABEL_MAX} characters of text", "label")
    return label.strip() or None


def _hash_passcode(passcode: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(passcode.encode(), salt=salt, dklen=32, **_SCRYPT)
    return "scrypt$" + "$".join(base64.b64encode(part).decode() for part in (salt, digest))


def _passcode_matches(passcode: str, stored: str) -> bool:
    _, salt_text, digest_text = stored.split("$")
    salt, expected = base64.b64decode(salt_text), base64.b64decode(digest_text)
    actual = hashlib.scrypt(passcode.encode(), salt=salt, dklen=len(expected), **_SCRYPT)
    return hmac.compare_digest(actual, expected)


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("ascii")).hexdigest()


def _base(hub: Hub) -> str:
    return hub.settings.base_url.rstrip("/")


def _not_active() -> FhirError:
    return not_found("This SMART Health Link is unknown or no longer active")


def _info(row: Any) -> LinkInfo:
    return LinkInfo(
        id=row.id,
        patient_id=row.patient_id,
        label=row.label,
        created_at=as_utc(row.created_at),
        expires_at=as_utc(row.expires_at),
        revoked_at=as_utc(row.revoked_at) if row.revoked_at is not None else None,
        attempts_left=row.attempts_left,
    )
