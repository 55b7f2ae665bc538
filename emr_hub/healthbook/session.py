"""The health-book page's session: a signed cookie naming a server-side sign-in, and the CSRF
tokens of its forms.

* The session cookie (:data:`SESSION_COOKIE`) carries a random secret, signed (itsdangerous,
  with a key derived from the key-encryption key, so every API process of the hub accepts it).
  The database keeps only the secret's SHA-256 (:class:`storage.tables.CitizenSession`) with
  the person key and the expiry: logout revokes the row, and the cookie opens nothing after.
  It is ``HttpOnly``, ``SameSite=Lax``, ``Path=/health-book`` and ``Secure`` unless the hub's
  public address (``EMR_HUB_BASE_URL``) is a loopback one.
* Every form carries a CSRF token, an HMAC of what the browser's cookie holds: the session's
  secret once signed in, before that a random value of its own cookie
  (:data:`FORM_COOKIE`). A form without the right token is refused (403), whatever its origin.
* A sign-in under way keeps its OpenID Connect state, nonce and PKCE verifier in a signed
  cookie of ten minutes (:data:`SIGNIN_COOKIE`), so the callback can only finish the sign-in
  this browser started.

The session names the person by her key; no CCCD is kept in a cookie or a row.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from fastapi import Request, Response
from itsdangerous import BadSignature, URLSafeTimedSerializer
from sqlalchemy import delete
from sqlmodel import col

from emr_hub.errors import forbidden
from emr_hub.security.sealing import key_encryption_key
from storage.db import as_utc
from storage.tables import CitizenSession

if TYPE_CHECKING:
    from emr_hub.config import Settings
    from emr_hub.hub import Hub

PATH = "/health-book"
SESSION_COOKIE = "emr_hub_health_book"
FORM_COOKIE = "emr_hub_health_book_form"
SIGNIN_COOKIE = "emr_hub_health_book_signin"
SIGNIN_SECONDS = 600
FORM_SECONDS = 86400
CSRF_FIELD = "csrf_token"
SECRET_BYTES = 32
_KEY_LABEL = b"emr-hub health-book cookies"
_CSRF_LABEL = "csrf|"
_KEYS: dict[tuple[str, str, str], bytes] = {}
OIDC = "oidc"
DEVELOPMENT = "development"


@dataclass(frozen=True)
class ActiveSession:
    """A signed-in citizen: the cookie's secret (what the CSRF token is bound to) and her
    person key."""

    secret: str
    person: str
    method: str
    expires_at: datetime

    @property
    def row_id(self) -> str:
        return _row_id(self.secret)


# ------------------------------------------------------------------ the session itself
def open_session(hub: Hub, person: str, method: str, *, now: datetime | None = None) -> str:
    """Record a new sign-in of ``person``; returns the secret for her cookie. Expired rows
    go at the same time."""
    moment = now or datetime.now(UTC)
    secret = secrets.token_urlsafe(SECRET_BYTES)
    lifetime = timedelta(hours=hub.settings.citizen_session_hours)
    with hub.db.transaction() as session:
        session.execute(delete(CitizenSession).where(col(CitizenSession.expires_at) < moment))
        session.add(
            CitizenSession(
                id=_row_id(secret),
                person=person,
                method=method,
                created_at=moment,
                expires_at=moment + lifetime,
            )
        )
    return secret


def current_session(hub: Hub, request: Request) -> ActiveSession | None:
    """The live session the request's cookie names, or None (no cookie, a bad signature, an
    unknown, revoked or expired session)."""
    secret = _load(hub.settings, request.cookies.get(SESSION_COOKIE), "session", None)
    if not isinstance(secret, str):
        return None
    with hub.db.single_read() as session:
        row = session.get(CitizenSession, _row_id(secret))
        if row is None or row.revoked_at is not None:
            return None
        expires = as_utc(row.expires_at)
        if expires <= datetime.now(UTC):
            return None
        return ActiveSession(secret, row.person, row.method, expires)


def revoke(hub: Hub, active: ActiveSession) -> None:
    """Log out: the row is revoked, so the cookie (wherever a copy of it is) opens nothing."""
    with hub.db.transaction() as session:
        row = session.get(CitizenSession, active.row_id)
        if row is not None and row.revoked_at is None:
            row.revoked_at = datetime.now(UTC)


def set_session_cookie(response: Response, hub: Hub, secret: str) -> None:
    seconds = int(hub.settings.citizen_session_hours * 3600)
    _set(response, hub.settings, SESSION_COOKIE, _dump(hub.settings, secret, "session"), seconds)


def clear_session_cookie(response: Response, hub: Hub) -> None:
    _clear(response, hub.settings, SESSION_COOKIE)


# ------------------------------------------------------------------ a sign-in under way
def set_signin_cookie(response: Response, hub: Hub, pending: dict[str, str]) -> None:
    value = _dump(hub.settings, pending, "signin")
    _set(response, hub.settings, SIGNIN_COOKIE, value, SIGNIN_SECONDS)


def signin_cookie(hub: Hub, request: Request) -> dict[str, str] | None:
    """What :func:`set_signin_cookie` kept, if it is this browser's, signed and fresh."""
    value = _load(hub.settings, request.cookies.get(SIGNIN_COOKIE), "signin", SIGNIN_SECONDS)
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        return None
    return value


def clear_signin_cookie(response: Response, hub: Hub) -> None:
    _clear(response, hub.settings, SIGNIN_COOKIE)


# ------------------------------------------------------------------ CSRF
def form_binding(hub: Hub, request: Request) -> tuple[str, bool]:
    """What the CSRF token of a page without a session is bound to: the browser's form
    cookie's random value (made now when it has none: the second value says so)."""
    value = _load(hub.settings, request.cookies.get(FORM_COOKIE), "form", FORM_SECONDS)
    if isinstance(value, str):
        return value, False
    return secrets.token_urlsafe(SECRET_BYTES), True


def set_form_cookie(response: Response, hub: Hub, binding: str) -> None:
    _set(response, hub.settings, FORM_COOKIE, _dump(hub.settings, binding, "form"), FORM_SECONDS)


def csrf_token(hub: Hub, binding: str) -> str:
    key = _cookie_key(hub.settings)
    return hmac.new(key, (_CSRF_LABEL + binding).encode(), hashlib.sha256).hexdigest()


def check_csrf(hub: Hub, binding: str | None, form: dict[str, Any]) -> None:
    """403 unless the form's token is the one of ``binding`` (the cookie the browser sent)."""
    given = form.get(CSRF_FIELD)
    if (
        binding is None
        or not isinstance(given, str)
        or not hmac.compare_digest(given, csrf_token(hub, binding))
    ):
        raise forbidden(
            "The form's security token is missing or does not match this browser's session: "
            "reload the health-book page and send the form again"
        )


def form_cookie_binding(hub: Hub, request: Request) -> str | None:
    """The form cookie's value, when the browser sent a valid one (for checking a form)."""
    value = _load(hub.settings, request.cookies.get(FORM_COOKIE), "form", FORM_SECONDS)
    return value if isinstance(value, str) else None


# ------------------------------------------------------------------ cookies
def secure_cookies(settings: Settings) -> bool:
    """``Secure`` everywhere but on a loopback address (the embedded default, over http)."""
    host = urlsplit(settings.base_url).hostname or ""
    if host == "localhost":
        return False
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:
        return True


def _set(response: Response, settings: Settings, name: str, value: str, seconds: int) -> None:
    response.set_cookie(
        name,
        value,
        max_age=seconds,
        path=PATH,
        secure=secure_cookies(settings),
        httponly=True,
        samesite="lax",
    )


def _clear(response: Response, settings: Settings, name: str) -> None:
    response.delete_cookie(
        name, path=PATH, secure=secure_cookies(settings), httponly=True, samesite="lax"
    )


def _dump(settings: Settings, value: Any, purpose: str) -> str:
    return _serializer(_cookie_key(settings), purpose).dumps(value)


def _load(settings: Settings, text: str | None, purpose: str, max_age: int | None) -> Any:
    if not text or len(text) > 4096:
        return None
    try:
        return _serializer(_cookie_key(settings), purpose).loads(text, max_age=max_age)
    except BadSignature:  # also an expired signature
        return None


def _serializer(key: bytes, purpose: str) -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(key, salt=f"emr-hub health-book {purpose}")


def _cookie_key(settings: Settings) -> bytes:
    """The key that signs the cookies and the CSRF tokens: derived from the key-encryption
    key (kept per KEK, which is read once)."""
    given = settings.key_encryption_key
    cache_key = (
        given.get_secret_value() if given else "",
        str(settings.key_encryption_key_file or ""),
        str(settings.data_dir.resolve()),
    )
    key = _KEYS.get(cache_key)
    if key is None:
        kek = key_encryption_key(settings)
        key = _KEYS[cache_key] = hmac.new(kek.secret, _KEY_LABEL, hashlib.sha256).digest()
    return key


def _row_id(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()
