"""The citizen's sign-in: the hub as an OpenID Connect relying party of her identity provider
(VNeID in production), configured by ``EMR_HUB_CITIZEN_OIDC_ISSUER``, ``_CLIENT_ID``,
``_CLIENT_SECRET`` and ``_CCCD_CLAIM``.

The authorization code flow (OpenID Connect Core 1.0 §3.1) with PKCE (RFC 7636, S256), a
``state`` bound to the browser and a ``nonce`` bound to the ID token. The endpoints come from
the issuer's discovery document (OpenID Connect Discovery 1.0), whose ``issuer`` must be the
configured one. The ID token is verified here (signature against the issuer's JWKS, ``iss``,
``aud``, ``azp``, ``exp``, ``iat``, ``nonce``); the CCCD is read from its claim named by the
setting, else from the userinfo endpoint. authlib builds the requests; joserfc (the hub's JOSE
library) checks the token.

What comes out is the CCCD, which :mod:`emr_hub.security.citizens` turns into the person key;
it is never logged, and an error message never repeats it.
"""

from __future__ import annotations

import secrets
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx
from authlib.integrations.httpx_client import OAuth2Client
from authlib.oauth2 import OAuth2Error
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet
from joserfc.jwt import JWTClaimsRegistry

from emr_hub.fhir.identifiers import cccd_problem

if TYPE_CHECKING:
    from emr_hub.config import Settings

SCOPE = "openid"
DISCOVERY_PATH = "/.well-known/openid-configuration"
DISCOVERY_SECONDS = 3600
TIMEOUT_SECONDS = 10
LEEWAY_SECONDS = 60
ID_TOKEN_ALGORITHMS = ["RS256", "PS256", "ES256", "ES384", "EdDSA"]
"""Asymmetric algorithms only: a relying party never takes ``none`` or a shared-key MAC."""


class SignInFailed(Exception):
    """The sign-in cannot finish; the message is for the citizen (Vietnamese) and names no
    personal data."""


@dataclass(frozen=True)
class Provider:
    """What the issuer's discovery document says the flow needs."""

    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str
    userinfo_endpoint: str | None


@dataclass(frozen=True)
class Pending:
    """A sign-in under way, kept in the browser's signed cookie until the callback."""

    state: str
    nonce: str
    verifier: str

    def as_dict(self) -> dict[str, str]:
        return {"state": self.state, "nonce": self.nonce, "verifier": self.verifier}

    @classmethod
    def of(cls, value: dict[str, str] | None) -> Pending | None:
        if value is None or set(value) != {"state", "nonce", "verifier"}:
            return None
        return cls(value["state"], value["nonce"], value["verifier"])


def configured(settings: Settings) -> bool:
    """A real identity provider is configured (the development sign-in is then off)."""
    return bool(settings.citizen_oidc_issuer)


def start(settings: Settings, redirect_uri: str) -> tuple[str, Pending]:
    """The provider's authorization URL to send the browser to, and what the callback needs."""
    provider = discover(settings)
    pending = Pending(
        state=secrets.token_urlsafe(24),
        nonce=secrets.token_urlsafe(24),
        verifier=secrets.token_urlsafe(48),  # 64 characters, within RFC 7636's 43..128
    )
    with _client(settings, redirect_uri) as client:
        url, _ = client.create_authorization_url(
            provider.authorization_endpoint,
            state=pending.state,
            nonce=pending.nonce,
            code_verifier=pending.verifier,
        )
    return url, pending


def finish(
    settings: Settings, pending: Pending | None, params: dict[str, str], redirect_uri: str
) -> str:
    """The CCCD of the citizen the provider's callback (``params``) signs in."""
    if pending is None:
        raise SignInFailed(
            "Phiên đăng nhập đã hết hạn hoặc không phải của trình duyệt này; hãy đăng nhập lại."
        )
    if params.get("error"):  # nothing opens on it, so it needs no state to be believed
        raise SignInFailed("Nhà cung cấp định danh đã từ chối đăng nhập.")
    if not secrets.compare_digest(params.get("state", ""), pending.state):
        raise SignInFailed("Yêu cầu đăng nhập không khớp (state); hãy đăng nhập lại.")
    code = params.get("code")
    if not code:
        raise SignInFailed("Nhà cung cấp định danh không trả về mã đăng nhập.")
    provider = discover(settings)
    try:
        with _client(settings, redirect_uri) as client:
            token = client.fetch_token(
                provider.token_endpoint,
                grant_type="authorization_code",
                code=code,
                code_verifier=pending.verifier,
            )
    except (OAuth2Error, httpx.HTTPError, ValueError):
        raise SignInFailed("Không đổi được mã đăng nhập tại nhà cung cấp định danh.") from None
    id_token = token.get("id_token")
    if not isinstance(id_token, str):
        raise SignInFailed("Nhà cung cấp định danh không trả về ID token.")
    claims = verify_id_token(settings, provider, id_token, pending.nonce)
    claim = settings.citizen_oidc_cccd_claim
    cccd = claims.get(claim)
    if cccd is None and provider.userinfo_endpoint:
        cccd = _userinfo(provider, str(token.get("access_token") or ""), claims).get(claim)
    if not isinstance(cccd, str) or cccd_problem(cccd) is not None:
        raise SignInFailed("Danh tính đăng nhập không kèm số định danh cá nhân (CCCD) hợp lệ.")
    return cccd


def verify_id_token(
    settings: Settings, provider: Provider, id_token: str, nonce: str
) -> dict[str, Any]:
    """The claims of a valid ID token of this sign-in (OpenID Connect Core §3.1.3.7)."""
    client_id = settings.citizen_oidc_client_id
    try:
        decoded = jwt.decode(id_token, _keys(provider), algorithms=ID_TOKEN_ALGORITHMS)
    except (JoseError, ValueError, TypeError, KeyError):
        # A key rotated at the provider since the JWKS was read: read it again, once.
        try:
            decoded = jwt.decode(
                id_token, _keys(provider, fresh=True), algorithms=ID_TOKEN_ALGORITHMS
            )
        except (JoseError, ValueError, TypeError, KeyError):
            raise SignInFailed("ID token không hợp lệ (chữ ký).") from None
    claims = decoded.claims
    registry = JWTClaimsRegistry(
        leeway=LEEWAY_SECONDS,
        iss={"essential": True, "value": provider.issuer},
        aud={"essential": True, "value": client_id},
        sub={"essential": True},
        exp={"essential": True},
        iat={"essential": True},
        nonce={"essential": True, "value": nonce},
    )
    try:
        registry.validate(claims)
    except JoseError:
        raise SignInFailed("ID token không hợp lệ (người phát hành, đối tượng hoặc hạn).") from None
    audience = claims.get("aud")
    if isinstance(audience, list) and len(audience) > 1 and claims.get("azp") != client_id:
        raise SignInFailed("ID token không dành cho hệ thống này (azp).")
    return claims


# ------------------------------------------------------------------ the provider's documents
_lock = threading.Lock()
_providers: dict[str, tuple[float, Provider]] = {}
_key_sets: dict[str, KeySet] = {}


def discover(settings: Settings) -> Provider:
    """The issuer's endpoints, read from its discovery document (kept for an hour)."""
    issuer = (settings.citizen_oidc_issuer or "").rstrip("/")
    if not issuer:
        raise SignInFailed("Chưa cấu hình nhà cung cấp định danh.")
    with _lock:
        cached = _providers.get(issuer)
    if cached is not None and time.monotonic() - cached[0] < DISCOVERY_SECONDS:
        return cached[1]
    try:
        answer = httpx.get(issuer + DISCOVERY_PATH, timeout=TIMEOUT_SECONDS)
        answer.raise_for_status()
        document = answer.json()
    except (httpx.HTTPError, ValueError):
        raise SignInFailed("Không liên lạc được nhà cung cấp định danh; hãy thử lại sau.") from None
    provider = _provider_of(issuer, document)
    with _lock:
        _providers[issuer] = (time.monotonic(), provider)
    return provider


def _provider_of(issuer: str, document: Any) -> Provider:
    if not isinstance(document, dict) or str(document.get("issuer", "")).rstrip("/") != issuer:
        # Discovery §4.3: the document must name the issuer it was read from.
        raise SignInFailed("Tài liệu cấu hình của nhà cung cấp định danh không khớp issuer.")
    needed = ("authorization_endpoint", "token_endpoint", "jwks_uri")
    if not all(isinstance(document.get(name), str) for name in needed):
        raise SignInFailed("Tài liệu cấu hình của nhà cung cấp định danh thiếu điểm cuối.")
    userinfo = document.get("userinfo_endpoint")
    return Provider(
        issuer=str(document["issuer"]),
        authorization_endpoint=document["authorization_endpoint"],
        token_endpoint=document["token_endpoint"],
        jwks_uri=document["jwks_uri"],
        userinfo_endpoint=userinfo if isinstance(userinfo, str) else None,
    )


def _keys(provider: Provider, *, fresh: bool = False) -> KeySet:
    with _lock:
        cached = None if fresh else _key_sets.get(provider.jwks_uri)
    if cached is not None:
        return cached
    try:
        answer = httpx.get(provider.jwks_uri, timeout=TIMEOUT_SECONDS)
        answer.raise_for_status()
        key_set = KeySet.import_key_set(answer.json())
    except (httpx.HTTPError, ValueError, JoseError, TypeError, KeyError):
        raise SignInFailed("Không đọc được khóa của nhà cung cấp định danh.") from None
    with _lock:
        _key_sets[provider.jwks_uri] = key_set
    return key_set


def _userinfo(provider: Provider, access_token: str, claims: dict[str, Any]) -> dict[str, Any]:
    """The userinfo claims, when they are the ID token's subject's (Core §5.3.2)."""
    assert provider.userinfo_endpoint is not None
    try:
        answer = httpx.get(
            provider.userinfo_endpoint,
            headers={"Authorization": f"Bearer {access_token}"},
            timeout=TIMEOUT_SECONDS,
        )
        answer.raise_for_status()
        info = answer.json()
    except (httpx.HTTPError, ValueError):
        raise SignInFailed("Không đọc được thông tin người dùng từ nhà cung cấp.") from None
    if not isinstance(info, dict) or info.get("sub") != claims.get("sub"):
        raise SignInFailed("Thông tin người dùng không khớp ID token.")
    return info


def _client(settings: Settings, redirect_uri: str) -> OAuth2Client:
    secret = settings.citizen_oidc_client_secret
    return OAuth2Client(
        client_id=settings.citizen_oidc_client_id,
        client_secret=secret.get_secret_value() if secret else None,
        token_endpoint_auth_method="client_secret_basic" if secret else "none",
        scope=SCOPE,
        redirect_uri=redirect_uri,
        code_challenge_method="S256",
        timeout=TIMEOUT_SECONDS,
    )
