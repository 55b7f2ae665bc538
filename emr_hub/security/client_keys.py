"""Clients' public keys: the JWK Sets hospitals register, or publish at a JWKS URL, to sign
their client assertions with.

A registered set is checked when the client is registered. Accepted: public keys only (a
private member refuses the whole set), each with a ``kid``, of type EC on P-256 or P-384, or
RSA of at least 2048 bits. The URL is the operator's choice, but only http and https are
allowed.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any
from urllib.parse import urlsplit

from joserfc.errors import JoseError
from joserfc.jwk import ECKey, RSAKey

ALGORITHMS = ("ES384", "RS384", "ES256")
"""What assertions may be signed with: SMART's ES384 and RS384, and ES256."""
MAX_KEYS = 20
MAX_KID_LENGTH = 128
MIN_RSA_BITS = 2048
MAX_URL_LENGTH = 2048
_CURVES = {"P-256": "ES256", "P-384": "ES384"}
_PRIVATE_MEMBERS = ("d", "p", "q", "dp", "dq", "qi", "oth", "k")


class JwksUnavailable(Exception):
    """The client's JWKS URL did not give a usable JWK Set; the message says why."""


def parse_jwks(data: Any) -> dict[str, Any]:
    """The JWK Set ``data`` reduced to the public members, or :class:`ValueError` saying
    what is wrong with it."""
    if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
        raise ValueError('A JWK Set is a JSON object with a "keys" array')
    keys = data["keys"]
    if not keys:
        raise ValueError("The JWK Set has no keys")
    if len(keys) > MAX_KEYS:
        raise ValueError(f"The JWK Set has {len(keys)} keys; at most {MAX_KEYS} are accepted")
    checked: list[dict[str, Any]] = []
    for position, jwk in enumerate(keys):
        public = _public_jwk(jwk, position)
        if any(public["kid"] == other["kid"] for other in checked):
            raise ValueError(f"Two keys of the JWK Set have kid {public['kid']!r}")
        checked.append(public)
    return {"keys": checked}


def check_jwks_url(url: str) -> str:
    """``url`` when it can be a JWKS URL (http or https, a host, no credentials)."""
    if len(url) > MAX_URL_LENGTH:
        raise ValueError(f"The JWKS URL is longer than {MAX_URL_LENGTH} characters")
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError:
        raise ValueError("The JWKS URL is not a URL") from None
    if parts.scheme not in ("http", "https") or not host:
        raise ValueError("The JWKS URL must be an http:// or https:// URL with a host")
    if parts.username is not None or parts.password is not None:
        raise ValueError("The JWKS URL must not carry credentials")
    return url


def key_algorithms(jwk: dict[str, Any]) -> tuple[str, ...]:
    """The assertion algorithms this key can verify."""
    if jwk["kty"] == "EC":
        return (_CURVES[jwk["crv"]],)
    return ("RS384",)


def _public_jwk(jwk: Any, position: int) -> dict[str, Any]:
    where = f"key {position + 1} of the JWK Set"
    if not isinstance(jwk, dict):
        raise ValueError(f"{where} is not a JSON object")
    kid = jwk.get("kid")
    if not isinstance(kid, str) or not kid.strip() or len(kid) > MAX_KID_LENGTH:
        raise ValueError(f"{where} needs a kid (1 to {MAX_KID_LENGTH} characters)")
    where = f"key {kid!r} of the JWK Set"
    private = [name for name in _PRIVATE_MEMBERS if name in jwk]
    if private:
        raise ValueError(
            f"{where} holds private key material ({', '.join(private)}): register the public "
            "keys only, and keep the private key with the client"
        )
    use = jwk.get("use")
    if use is not None and use != "sig":
        raise ValueError(f"{where} has use {use!r}; a key that signs assertions has use sig")
    kty = jwk.get("kty")
    if kty == "EC":
        public = _ec_members(jwk, where)
    elif kty == "RSA":
        public = _rsa_members(jwk, where)
    else:
        raise ValueError(f"{where} has kty {kty!r}; accepted are EC (P-256, P-384) and RSA")
    alg = jwk.get("alg")
    if alg is not None:
        if alg not in key_algorithms(public):
            raise ValueError(
                f"{where} has alg {alg!r}, which it cannot be used with; accepted: "
                f"{', '.join(key_algorithms(public))}"
            )
        public["alg"] = alg
    public["kid"] = kid
    if use is not None:
        public["use"] = use
    return public


def _ec_members(jwk: dict[str, Any], where: str) -> dict[str, Any]:
    curve = jwk.get("crv")
    if curve not in _CURVES:
        raise ValueError(f"{where} is on curve {curve!r}; accepted are P-256 and P-384")
    public = {"kty": "EC", "crv": curve, "x": jwk.get("x"), "y": jwk.get("y")}
    try:
        ECKey.import_key(public)
    except (JoseError, ValueError, TypeError, KeyError):
        raise ValueError(f"{where} is not a valid {curve} public key") from None
    return public


def _rsa_members(jwk: dict[str, Any], where: str) -> dict[str, Any]:
    public = {"kty": "RSA", "n": jwk.get("n"), "e": jwk.get("e")}
    modulus = public["n"]
    try:
        if not isinstance(modulus, str):
            raise TypeError("n")
        bits = int.from_bytes(base64.urlsafe_b64decode(modulus + "=" * (-len(modulus) % 4)))
        bits = bits.bit_length()
    except (binascii.Error, ValueError, TypeError):
        raise ValueError(f"{where} is not a valid RSA public key") from None
    if bits < MIN_RSA_BITS:
        raise ValueError(f"{where} is a {bits}-bit RSA key; at least {MIN_RSA_BITS} are needed")
    try:
        RSAKey.import_key(public)
    except (JoseError, ValueError, TypeError, KeyError):
        raise ValueError(f"{where} is not a valid RSA public key") from None
    return public
