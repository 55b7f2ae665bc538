"""HTTP endpoints of the authorization server: token endpoint, JWKS and SMART discovery.

The token endpoint answers in the OAuth 2.0 JSON error shape (RFC 6749 §5.2), not with an
OperationOutcome: OAuth client libraries expect it there.

For the audit of logins, every token request leaves on ``request.state``:

* ``token_client_id``: the client id the request claimed (HTTP Basic, form ``client_id`` or
  the assertion's ``iss``) when it has the shape of a client id, else None; not proof of
  anything, the outcome says whether it authenticated;
* ``token_outcome``: ``"success"`` or the OAuth error code (``server_error`` when an
  unexpected error escaped).
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
from emr_hub.fhir.http import read_limited
from emr_hub.fhir.unstorable import NUL
from emr_hub.security import throttle
from emr_hub.security.assertions import ASSERTION_TYPE, claimed_client_id
from emr_hub.security.client_credentials import TokenRequest, grant_token
from emr_hub.security.client_keys import ALGORITHMS
from emr_hub.security.clients import CLIENT_ID
from emr_hub.security.keys import served_jwks
from emr_hub.security.oauth import (
    INVALID_REQUEST,
    SERVER_ERROR,
    THROTTLED,
    TOKEN_PATH,
    UNSUPPORTED_GRANT_TYPE,
    OAuthError,
    invalid_client,
    token_url,
)
from emr_hub.security.sealing import SealingError

router = APIRouter()
log = logging.getLogger(__name__)

JWKS_PATH = "/.well-known/jwks.json"
# A token request is a few hundred bytes (an assertion a few KiB); refuse anything much larger.
MAX_TOKEN_REQUEST_BYTES = 16 * 1024
SUCCESS = "success"
_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


@router.post(TOKEN_PATH, tags=["auth"], summary="OAuth 2.0 client credentials token endpoint")
async def token_endpoint(request: Request, hub: HubDep) -> JSONResponse:
    request.state.token_client_id = None
    request.state.token_outcome = SERVER_ERROR
    address = request.client.host if request.client else None
    try:
        token_request = await _read_token_request(request)
        body = await run_in_threadpool(grant_token, hub, token_request, address)
    except OAuthError as error:
        request.state.token_outcome = error.error
        if error.error != THROTTLED:
            await run_in_threadpool(
                throttle.record_failure, hub, request.state.token_client_id, address
            )
        return _error_response(error)
    except SealingError as error:
        return _keys_unavailable(error)
    request.state.token_outcome = SUCCESS
    return JSONResponse(body, headers=_NO_STORE)


@router.get(JWKS_PATH, tags=["auth"], summary="Public keys of access tokens and health cards")
def jwks(hub: HubDep) -> JSONResponse:
    try:
        keys = served_jwks(hub)
    except SealingError as error:
        return _keys_unavailable(error)
    # Any origin may read it: browser verifiers of health cards fetch it (the SMART Health
    # Cards spec asks for CORS on the issuer's JWKS); it holds public keys only.
    headers = {"Cache-Control": "public, max-age=300", "Access-Control-Allow-Origin": "*"}
    return JSONResponse(keys, headers=headers)


@router.get("/fhir/.well-known/smart-configuration", tags=["auth"], summary="SMART discovery")
def smart_configuration(hub: HubDep) -> dict[str, Any]:
    secrets = hub.settings.client_secret_auth
    return {
        "token_endpoint": token_url(hub),
        "jwks_uri": hub.settings.base_url.rstrip("/") + JWKS_PATH,
        "grant_types_supported": ["client_credentials"],
        "token_endpoint_auth_methods_supported": [
            "private_key_jwt",
            *(["client_secret_basic", "client_secret_post"] if secrets else []),
        ],
        "token_endpoint_auth_signing_alg_values_supported": list(ALGORITHMS),
        "scopes_supported": [
            "system/*.cruds",
            "system/*.rs",
            "system/Patient.rs",
            "system/Observation.cruds",
        ],
        "capabilities": [
            "client-confidential-asymmetric",
            *(["client-confidential-symmetric"] if secrets else []),
            "permission-v2",
            "health-cards",
        ],
    }


def _keys_unavailable(error: SealingError) -> JSONResponse:
    """The signing keys cannot be opened (the key-encryption key): the operator's problem,
    told in the log; the client gets a 503 without the details."""
    log.error("the token signing keys cannot be opened: %s", error)
    body = {
        "error": SERVER_ERROR,
        "error_description": "The hub cannot use its signing keys now; retry later",
    }
    return JSONResponse(body, status_code=503, headers=_NO_STORE)


def _error_response(error: OAuthError) -> JSONResponse:
    headers = dict(_NO_STORE)
    if error.status == 401:
        headers["WWW-Authenticate"] = 'Basic realm="emr_hub"'
    if error.retry_after is not None:
        headers["Retry-After"] = str(error.retry_after)
    return JSONResponse(error.body(), status_code=error.status, headers=headers)


async def _read_token_request(request: Request) -> TokenRequest:
    """The token request, or :class:`OAuthError`; the claimed client id goes on
    ``request.state.token_client_id`` as soon as it is known."""
    content_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if content_type != "application/x-www-form-urlencoded":
        raise OAuthError(INVALID_REQUEST, "The body must be application/x-www-form-urlencoded")
    form = _parse_form(
        await read_limited(
            request,
            MAX_TOKEN_REQUEST_BYTES,
            lambda: OAuthError(INVALID_REQUEST, "The token request is too large"),
        )
    )
    basic = _basic_credentials(request.headers.get("authorization"))
    posted_id = form.get("client_id")
    assertion = form.get("client_assertion")
    claimed = basic[0] if basic else posted_id
    if assertion is not None:
        claimed = claimed_client_id(assertion) or claimed
    if claimed is not None and CLIENT_ID.fullmatch(claimed):
        request.state.token_client_id = claimed

    grant_type = form.get("grant_type")
    if not grant_type:
        raise OAuthError(INVALID_REQUEST, "grant_type is missing")
    if grant_type != "client_credentials":
        raise OAuthError(UNSUPPORTED_GRANT_TYPE, "Only client_credentials is supported")
    scope = form.get("scope")
    if assertion is not None or "client_assertion_type" in form:
        return _assertion_request(form, basic, scope)
    return _secret_request(form, basic, scope)


def _assertion_request(
    form: dict[str, str], basic: tuple[str, str] | None, scope: str | None
) -> TokenRequest:
    if basic is not None or "client_secret" in form:
        raise OAuthError(INVALID_REQUEST, "Use one client authentication method, not two")
    if form.get("client_assertion_type") != ASSERTION_TYPE:
        raise OAuthError(INVALID_REQUEST, f"client_assertion_type must be {ASSERTION_TYPE}")
    assertion = form.get("client_assertion")
    if not assertion:
        raise OAuthError(INVALID_REQUEST, "client_assertion is missing")
    issuer = claimed_client_id(assertion)
    if issuer is None:
        raise invalid_client(
            "client_assertion must be a signed JWT whose iss and sub are the client id"
        )
    posted_id = form.get("client_id")
    if posted_id is not None and posted_id != issuer:
        raise invalid_client("client_id differs from the assertion's iss")
    return TokenRequest(client_id=issuer, scope=scope, assertion=assertion)


def _secret_request(
    form: dict[str, str], basic: tuple[str, str] | None, scope: str | None
) -> TokenRequest:
    posted_id, posted_secret = form.get("client_id"), form.get("client_secret")
    if basic is not None:
        if posted_secret is not None:
            raise OAuthError(INVALID_REQUEST, "Use one client authentication method, not two")
        if posted_id is not None and posted_id != basic[0]:
            raise OAuthError(INVALID_REQUEST, "client_id differs from the Basic credentials")
        return TokenRequest(client_id=basic[0], scope=scope, secret=basic[1])
    if posted_id and posted_secret:
        return TokenRequest(client_id=posted_id, scope=scope, secret=posted_secret)
    raise invalid_client(
        "Client authentication is missing: send a signed JWT as client_assertion (with "
        f"client_assertion_type {ASSERTION_TYPE}), or use HTTP Basic or client_id and "
        "client_secret"
    )


def _parse_form(body: bytes) -> dict[str, str]:
    try:
        pairs = parse_qsl(
            body.decode("utf-8"), keep_blank_values=True, strict_parsing=False, max_num_fields=16
        )
    except (UnicodeDecodeError, ValueError):
        raise OAuthError(INVALID_REQUEST, "The form body could not be parsed") from None
    form: dict[str, str] = {}
    for name, value in pairs:
        if NUL in name or NUL in value:
            raise OAuthError(INVALID_REQUEST, "The form holds a NUL character (U+0000)")
        if name in form:  # RFC 6749 §3.2: parameters must not repeat
            raise OAuthError(INVALID_REQUEST, f"Parameter {name} is repeated")
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
        raise invalid_client("Malformed Basic credentials") from None
    user, colon, password = decoded.partition(":")
    user, password = unquote_plus(user), unquote_plus(password)
    if not colon or not user or NUL in user or NUL in password:
        raise invalid_client("Malformed Basic credentials")
    return user, password
