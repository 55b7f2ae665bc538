"""Client secret hashing with scrypt.

Stored form: ``scrypt$n$r$p$salt_b64$hash_b64``. The parameters travel with the hash, so they
can be raised later without invalidating existing secrets. They are kept moderate because the
token endpoint hashes once per request (n=2**14, r=8 needs 16 MiB and tens of milliseconds).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from functools import cache

SCHEME = "scrypt"
N = 2**14
R = 8
P = 1
SALT_BYTES = 16
HASH_BYTES = 32
# Upper bounds accepted from a stored hash, so a corrupt row cannot make us burn memory.
_MAX_N = 2**20
_MAX_R = 32
_MAX_P = 16
_MAX_MEM = 256 * 1024 * 1024


def hash_secret(secret: str, *, n: int = N, r: int = R, p: int = P) -> str:
    """Hash ``secret`` with a fresh random salt."""
    salt = os.urandom(SALT_BYTES)
    digest = _scrypt(secret, salt, n, r, p, HASH_BYTES)
    return "$".join((SCHEME, str(n), str(r), str(p), _b64(salt), _b64(digest)))


def verify_secret(secret: str, encoded: str) -> bool:
    """True when ``secret`` matches ``encoded``; False for any mismatch or malformed hash."""
    try:
        scheme, n_text, r_text, p_text, salt_text, digest_text = encoded.split("$")
        n, r, p = int(n_text), int(r_text), int(p_text)
        salt, expected = _unb64(salt_text), _unb64(digest_text)
    except ValueError:
        return False
    if (
        scheme != SCHEME
        or not (2 <= n <= _MAX_N and n & (n - 1) == 0)
        or not (1 <= r <= _MAX_R and 1 <= p <= _MAX_P)
        or not salt
        or not 16 <= len(expected) <= 64
    ):
        return False
    actual = _scrypt(secret, salt, n, r, p, len(expected))
    return hmac.compare_digest(actual, expected)


@cache
def dummy_hash() -> str:
    """A hash of a random secret, verified against when a client id is unknown.

    Doing the same scrypt work for unknown and known ids keeps response time from telling
    which client ids exist.
    """
    return hash_secret(base64.urlsafe_b64encode(os.urandom(24)).decode())


def _scrypt(secret: str, salt: bytes, n: int, r: int, p: int, length: int) -> bytes:
    return hashlib.scrypt(
        secret.encode("utf-8", "surrogatepass"),
        salt=salt,
        n=n,
        r=r,
        p=p,
        maxmem=_MAX_MEM,
        dklen=length,
    )


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (ValueError, TypeError) as exc:
        raise ValueError("not base64") from exc
