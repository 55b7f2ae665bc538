"""HTTP endpoints of the authorization server: token endpoint, JWKS and SMART discovery.

The token endpoint answers in the OAuth 2.0 JSON error shape (RFC 6749 §5.2), not with an
OperationOutcome: OAuth client libraries expect it there.
"""

from __future__ import annotations

import base64
import binascii
import logging
from typing import Any
from urllib.parse import parse_qsl, unquote_plus

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from emr_hub.deps import HubDep
from emr_hub.security.keys import public_jwks
from emr_hub.security.sealing import SealingError
from emr_hub.security.tokens import OAuthError, client_credentials_grant

router = APIRouter()
log = logging.getLogger(__name__)

TOKEN_PATH = "/auth/token"  # noqa: S105 - a URL path, not a secret
JWKS_PATH = "/.well-known/jwks.json"
# A token request is a few hundred bytes; refuse anything much larger before parsing it.
MAX_TOKEN_REQUEST_BYTES = 16 * 1024
_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


@router.post(TOKEN_PATH, tags=["auth"], summary="OAuth 2.0 client credentials token endpoint")
async def token_endpoint(request: Request, hub: HubDep) -> JSONResponse:
    try:
        client_id, client_secret, scope = await _read_token_request(request)
        body = await run_in_threadpool(
            client_credentials_grant, hub, client_id, client_secret, scope
        )
    except OAuthError as error:
        headers = dict(_NO_STORE)
        if error.status == 401:
            headers["WWW-Authenticate"] = 'Basic realm="emr_hub"'
        return JSONResponse(error.body(), status_code=error.status, headers=headers)
    except SealingError as error:
        return _keys_unavailable(error)
    return JSONResponse(body, headers=_NO_STORE)


@router.get(JWKS_PATH, tags=["auth"], summary="Public keys that sign access tokens")
def jwks(hub: HubDep) -> JSONResponse:
    try:
        keys = public_jwks(hub)
    except SealingError as error:
        return _keys_unavailable(error)
    return JSONResponse(keys, headers={"Cache-Control": "public, max-age=300"})


@router.get("/fhir/.well-known/smart-configuration", tags=["auth"], summary="SMART discovery")
def smart_configuration(hub: HubDep) -> dict[str, Any]:
    base = hub.settings.base_url.rstrip("/")
    return {
        "token_endpoint": base + TOKEN_PATH,
        "jwks_uri": base + JWKS_PATH,
        "grant_types_supported": ["client_credentials"],
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
        "scopes_supported": [
            "system/*.cruds",
            "system/*.rs",
            "system/Patient.rs",
            "system/Observation.cruds",
        ],
        "capabilities": ["client-confidential-symmetric", "permission-v2"],
    }


def _keys_unavailable(error: SealingError) -> JSONResponse:
    """The signing keys cannot be opened (the key-encryption key): the operator's problem,
    told in the log; the client gets a 503 without the details."""
    log.error("the token signing keys cannot be opened: %s", error)
    body = {
        "error": "server_error",
        "error_description": "The hub cannot use its signing keys now; retry later",
    }
    return JSONResponse(body, status_code=503, headers=_NO_STORE)


async def _read_token_request(request: Request) -> tuple[str, str, str | None]:
    """(client_id, client_secret, scope) of a token request, or :class:`OAuthError`."""
    content_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if content_type != "application/x-www-form-urlencoded":
        raise OAuthError("invalid_request", "The body must be application/x-www-form-urlencoded")
    form = _parse_form(await _read_body(request))
    grant_type = form.get("grant_type")
    if not grant_type:
        raise OAuthError("invalid_request", "grant_type is missing")
    if grant_type != "client_credentials":
        raise OAuthError("unsupported_grant_type", "Only client_credentials is supported")

    basic = _basic_credentials(request.headers.get("authorization"))
    posted_id, posted_secret = form.get("client_id"), form.get("client_secret")
    if basic is not None:
        if posted_secret is not None:
            raise OAuthError("invalid_request", "Use one client authentication method, not two")
        if posted_id is not None and posted_id != basic[0]:
            raise OAuthError("invalid_request", "client_id differs from the Basic credentials")
        client_id, client_secret = basic
    elif posted_id and posted_secret:
        client_id, client_secret = posted_id, posted_secret
    else:
        raise OAuthError(
            "invalid_client",
            "Client authentication is missing: use HTTP Basic or client_id and client_secret",
            status=401,
        )
    return client_id, client_secret, form.get("scope")


async def _read_body(request: Request) -> bytes:
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_TOKEN_REQUEST_BYTES:
            raise OAuthError("invalid_request", "The token request is too large")
    return bytes(body)


def _parse_form(body: bytes) -> dict[str, str]:
    try:
        pairs = parse_qsl(
            body.decode("utf-8"), keep_blank_values=True, strict_parsing=False, max_num_fields=16
        )
    except (UnicodeDecodeError, ValueError):
        raise OAuthError("invalid_request", "The form body could not be parsed") from None
    form: dict[str, str] = {}
    for name, value in pairs:
        if name in form:  # RFC 6749 §3.2: parameters must not repeat
            raise OAuthError("invalid_request", f"Parameter {name} is repeated")
        form[name] = value
    return form


def _basic_credentials(authorization: str | None) -> tuple[str, str] | None:
    """The (client_id, secret) of an HTTP Basic header; None when there is no Basic header.

    Both halves are form-urlencoded before base64 (RFC 6749 §2.3.1), so they are decoded.
    """
    if not authorization:
        return None
    scheme, _, value = authorization.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise OAuthError("invalid_client", "Malformed Basic credentials", status=401) from None
    user, colon, password = decoded.partition(":")
    if not colon or not user:
        raise OAuthError("invalid_client", "Malformed Basic credentials", status=401)
    return unquote_plus(user), unquote_plus(password)
