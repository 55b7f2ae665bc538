"""Clients' public keys: the JWK Sets hospitals register, or publish at a JWKS URL, to sign
their client assertions with.

A registered set is checked once, when the client is registered; a fetched one each time it
is fetched. Accepted: public keys only (a private member refuses the whole set), each with a
``kid``, of type EC on P-256 or P-384, or RSA of at least 2048 bits.

Sets fetched from a URL are kept per process for ``EMR_HUB_CLIENT_JWKS_CACHE_SECONDS``; a
``kid`` missing from the copy in memory fetches the set again once (the client may have
rotated its keys). Fetches have short timeouts and a size cap and follow no redirect. The URL
is the operator's choice, but only http and https are allowed.
"""

from __future__ import annotations

import base64
import binascii
import threading
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, RSAKey

ALGORITHMS = ("ES384", "RS384", "ES256")
"""What assertions may be signed with: SMART's ES384 and RS384, and ES256."""
MAX_KEYS = 20
MAX_KID_LENGTH = 128
MIN_RSA_BITS = 2048
MAX_JWKS_BYTES = 64 * 1024
MAX_URL_LENGTH = 2048
FETCH_TIMEOUT = httpx.Timeout(3.0, connect=2.0)
FETCH_DEADLINE_SECONDS = 5.0
_CURVES = {"P-256": "ES256", "P-384": "ES384"}
_PRIVATE_MEMBERS = ("d", "p", "q", "dp", "dq", "qi", "oth", "k")

PublicKey = ECKey | RSAKey


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


def import_key(jwk: dict[str, Any]) -> PublicKey:
    """A joserfc key of a JWK that :func:`parse_jwks` accepted."""
    if jwk["kty"] == "EC":
        return ECKey.import_key(jwk)
    return RSAKey.import_key(jwk)


def key_algorithms(jwk: dict[str, Any]) -> tuple[str, ...]:
    """The assertion algorithms this key can verify."""
    if jwk["kty"] == "EC":
        return (_CURVES[jwk["crv"]],)
    return ("RS384",)


def find_in_set(jwks: dict[str, Any], kid: str) -> dict[str, Any] | None:
    return next((jwk for jwk in jwks.get("keys", ()) if jwk.get("kid") == kid), None)


@dataclass(frozen=True)
class _Fetched:
    jwks: dict[str, Any]
    at: float


class JwksCache:
    """JWK Sets fetched from URLs, per process (one lock per URL, so a slow server holds up
    only the clients that use it)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[str, _Fetched] = {}
        self._url_locks: dict[str, threading.Lock] = {}

    def key(self, url: str, kid: str, max_age: float) -> dict[str, Any] | None:
        """The JWK with ``kid`` published at ``url``; raises :class:`JwksUnavailable`."""
        entry = self._entries.get(url)
        if entry is not None and time.monotonic() - entry.at < max_age:
            jwk = find_in_set(entry.jwks, kid)
            if jwk is not None:
                return jwk
        # Stale, never fetched, or without this kid: fetch again, once.
        with self._url_lock(url):
            latest = self._entries.get(url)
            if (
                latest is not None
                and latest is not entry
                and time.monotonic() - latest.at < max_age
            ):
                jwk = find_in_set(latest.jwks, kid)
                if jwk is not None:  # another thread fetched it meanwhile
                    return jwk
            fetched = _Fetched(fetch_jwks(url), time.monotonic())
            self._entries[url] = fetched
        return find_in_set(fetched.jwks, kid)

    def _url_lock(self, url: str) -> threading.Lock:
        with self._lock:
            return self._url_locks.setdefault(url, threading.Lock())


def fetch_jwks(url: str) -> dict[str, Any]:
    """GET the JWK Set at ``url`` and check it; :class:`JwksUnavailable` says what failed."""
    try:
        check_jwks_url(url)
    except ValueError as exc:
        raise JwksUnavailable(str(exc)) from None
    deadline = time.monotonic() + FETCH_DEADLINE_SECONDS
    body = bytearray()
    try:
        with (
            httpx.Client(timeout=FETCH_TIMEOUT, follow_redirects=False, trust_env=False) as http,
            http.stream(
                "GET", url, headers={"Accept": "application/jwk-set+json, application/json"}
            ) as response,
        ):
            if response.status_code != 200:
                raise JwksUnavailable(f"its JWKS URL answered HTTP {response.status_code}")
            for chunk in response.iter_bytes():
                body += chunk
                if len(body) > MAX_JWKS_BYTES:
                    raise JwksUnavailable(
                        f"its JWKS URL sent more than {MAX_JWKS_BYTES // 1024} KiB"
                    )
                if time.monotonic() > deadline:
                    raise JwksUnavailable("its JWKS URL was too slow to answer")
    except httpx.TimeoutException:
        raise JwksUnavailable("its JWKS URL did not answer in time") from None
    except httpx.HTTPError as exc:
        raise JwksUnavailable(f"its JWKS URL could not be reached ({type(exc).__name__})") from None
    try:
        return parse_jwks(orjson.loads(bytes(body)))
    except orjson.JSONDecodeError:
        raise JwksUnavailable("its JWKS URL did not answer with JSON") from None
    except ValueError as exc:
        raise JwksUnavailable(f"its JWKS URL did not give a usable JWK Set: {exc}") from None


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
