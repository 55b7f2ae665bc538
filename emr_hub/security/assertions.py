"""Client authentication with a signed JWT (RFC 7523 §2.2, as profiled by SMART App Launch
v2 Backend Services): the client signs a short-lived assertion with its private key, and the
hub verifies it with the client's registered public key.

What an assertion must be:

* header: ``alg`` ES384, RS384 or ES256 (nothing else, so neither ``none`` nor an HMAC
  keyed with a public key); ``typ`` ``JWT``; the ``kid`` of a key the client registered; a
  ``jku`` only if it is the JWKS URL registered for the client;
* claims: ``iss`` and ``sub`` the client id; ``aud`` the token URL; ``exp`` at most five
  minutes ahead; a ``jti`` never seen before (:mod:`emr_hub.security.replay`); ``nbf`` and
  ``iat``, when present, not in the future.

Every refusal is ``invalid_client`` with a description of what to fix; none repeats the
assertion or a value taken from it.
"""

from __future__ import annotations

import base64
import binascii
import re
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import orjson
from joserfc import jws
from joserfc.errors import JoseError

from emr_hub.security.client_keys import (
    ALGORITHMS,
    JwksCache,
    JwksUnavailable,
    find_in_set,
    import_key,
    key_algorithms,
)
from emr_hub.security.clients import CLIENT_ID, has_public_keys, load_client
from emr_hub.security.keys import CLOCK_LEEWAY_SECONDS
from emr_hub.security.oauth import invalid_client, token_url
from emr_hub.security.replay import first_use
from storage.tables import ApiClient

if TYPE_CHECKING:
    from emr_hub.hub import Hub

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
MAX_ASSERTION_LENGTH = 8192
MAX_LIFETIME_SECONDS = 300
MAX_JTI_LENGTH = 255
_JTI = re.compile(rf"[^\x00-\x1f\x7f]{{1,{MAX_JTI_LENGTH}}}")

_jwks_cache = JwksCache()


def claimed_client_id(assertion: str) -> str | None:
    """The ``iss`` of an assertion, before any verification, if it has the shape of a client
    id (for throttling and the audit of failed requests); None otherwise."""
    try:
        _, claims = _unverified(assertion)
    except ValueError:
        return None
    issuer = claims.get("iss")
    return issuer if isinstance(issuer, str) and CLIENT_ID.fullmatch(issuer) else None


def authenticate(hub: Hub, assertion: str) -> ApiClient:
    """The client that signed ``assertion``, which is then spent; else ``invalid_client``.

    Blocking (database, perhaps an HTTP fetch of the client's keys): call it off the event
    loop.
    """
    try:
        header, claims = _unverified(assertion)
    except ValueError:
        raise invalid_client(
            "client_assertion must be a signed JWT in compact form (header.payload.signature)"
        ) from None
    algorithm = _check_header(header)
    client_id = _issuer(claims)

    client = load_client(hub.db, client_id)
    if client is None or not client.active or not has_public_keys(client):
        raise invalid_client(
            "Client authentication failed: the assertion's iss is not an active client "
            "registered with public keys (emr-hub client add --jwks-file or --jwks-url)"
        )
    jku = header.get("jku")
    if jku is not None and (client.jwks_url is None or jku != client.jwks_url):
        raise invalid_client(
            "The assertion's jku header is not the JWKS URL registered for this client: "
            "leave jku out, or give the registered URL"
        )

    jwk = _client_key(hub, client, header["kid"])
    if algorithm not in key_algorithms(jwk):
        raise invalid_client(
            f"The key with the assertion's kid verifies {', '.join(key_algorithms(jwk))}, "
            f"not {algorithm}: sign with that algorithm or register a key for {algorithm}"
        )
    try:
        jws.deserialize_compact(assertion, import_key(jwk), algorithms=[algorithm])
    except (JoseError, ValueError, TypeError):
        raise invalid_client(
            "The assertion's signature does not verify with the client's registered key of "
            "that kid: sign with the private key of the registered public key"
        ) from None

    expires = _check_claims(hub, claims, time.time())
    keep_until = datetime.fromtimestamp(expires + CLOCK_LEEWAY_SECONDS, UTC)
    if not first_use(hub, client.client_id, claims["jti"], keep_until):
        raise invalid_client(
            "This assertion was used before (its jti has been seen): sign a new assertion, "
            "with a new jti, for every token request"
        )
    return client


def _unverified(assertion: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The header and claims of a compact JWS, not verified; ValueError when malformed."""
    if not assertion or len(assertion) > MAX_ASSERTION_LENGTH:
        raise ValueError("no assertion")
    parts = assertion.split(".")
    if len(parts) != 3 or not all(parts):
        raise ValueError("not compact")
    header, claims = _json_part(parts[0]), _json_part(parts[1])
    return header, claims


def _json_part(part: str) -> dict[str, Any]:
    try:
        value = orjson.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    except (binascii.Error, ValueError, orjson.JSONDecodeError):
        raise ValueError("not base64url JSON") from None
    if not isinstance(value, dict):
        raise ValueError("not a JSON object")
    return value


def _check_header(header: dict[str, Any]) -> str:
    algorithm = header.get("alg")
    if algorithm not in ALGORITHMS:
        raise invalid_client(
            f"The assertion's alg must be one of {', '.join(ALGORITHMS)} (signed with the "
            "client's private key)"
        )
    typ = header.get("typ")
    if not isinstance(typ, str) or typ.upper() != "JWT":
        raise invalid_client('The assertion\'s header needs "typ": "JWT"')
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid or len(kid) > 128:
        raise invalid_client(
            "The assertion's header needs the kid of the client's registered key it is signed with"
        )
    if "crit" in header:
        raise invalid_client("The assertion's header must not have crit extensions")
    jku = header.get("jku")
    if jku is not None and not isinstance(jku, str):
        raise invalid_client("The assertion's jku header must be a URL")
    return str(algorithm)


def _issuer(claims: dict[str, Any]) -> str:
    issuer, subject = claims.get("iss"), claims.get("sub")
    if not isinstance(issuer, str) or not CLIENT_ID.fullmatch(issuer) or subject != issuer:
        raise invalid_client("The assertion's iss and sub must both be the client id")
    return issuer


def _client_key(hub: Hub, client: ApiClient, kid: str) -> dict[str, Any]:
    if client.jwks is not None:
        jwk = find_in_set(client.jwks, kid)
    elif client.jwks_url is not None:
        try:
            jwk = _jwks_cache.key(client.jwks_url, kid, hub.settings.client_jwks_cache_seconds)
        except JwksUnavailable as exc:
            raise invalid_client(
                f"The client's public keys could not be read: {exc}. The client must publish "
                "its JWK Set at the JWKS URL it is registered with"
            ) from None
    else:
        jwk = None
    if jwk is None:
        raise invalid_client(
            "No key with the assertion's kid is registered for this client: sign with a "
            "registered key, or have the operator register the new one"
        )
    return jwk


def _check_claims(hub: Hub, claims: dict[str, Any], now: float) -> int:
    """Check ``aud``, ``exp``, ``nbf``, ``iat`` and ``jti``; returns ``exp``."""
    expected = token_url(hub)
    audience = claims.get("aud")
    audiences = audience if isinstance(audience, list) else [audience]
    if expected not in audiences:
        raise invalid_client(f"The assertion's aud must be this hub's token URL, {expected}")
    expires = claims.get("exp")
    if not _is_time(expires):
        raise invalid_client("The assertion needs exp, a time in seconds since 1970")
    if expires <= now - CLOCK_LEEWAY_SECONDS:
        raise invalid_client("The assertion has expired: sign a new one for each token request")
    if expires > now + MAX_LIFETIME_SECONDS + CLOCK_LEEWAY_SECONDS:
        raise invalid_client(
            f"The assertion's exp is more than {MAX_LIFETIME_SECONDS // 60} minutes ahead: "
            "make assertions short-lived (and check the client's clock)"
        )
    for name in ("nbf", "iat"):
        value = claims.get(name)
        if value is None:
            continue
        if not _is_time(value) or value > now + CLOCK_LEEWAY_SECONDS:
            raise invalid_client(
                f"The assertion's {name} is in the future (or not a time): check the client's clock"
            )
    jti = claims.get("jti")
    if not isinstance(jti, str) or not _JTI.fullmatch(jti):
        raise invalid_client(
            f"The assertion needs a jti (1 to {MAX_JTI_LENGTH} printable characters), new for "
            "every assertion"
        )
    return int(expires)


def _is_time(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
