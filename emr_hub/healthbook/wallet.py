"""The identity wallet's intake, as the hub calls it (the contract: ``docs/wallet-intake.md``).

One ``POST`` to ``EMR_HUB_WALLET_URL`` per push::

    Authorization: Bearer <a JWT the hub signs>
    Idempotency-Key: <derived from her person key, her push number and the books' digest>
    Content-Type: application/json

    {"cccd": "...", "issued": "2026-12-07T10:00:00Z",
     "credential": {"verifiableCredential": ["<a health card JWS per Patient of hers>"]}}

The JWT is signed with the hub's access-token key (ES256, ``kid`` in the hub's JWKS):
``typ`` ``wallet-push+jwt`` (so it can never pass for an access token, whose ``typ`` is
``at+jwt`` and audience the hub), ``iss`` the hub's public base URL, ``aud`` the wallet URL,
``iat``, ``exp`` (:data:`ASSERTION_SECONDS` later), a fresh ``jti``, and ``body_sha256``, the
base64url SHA-256 of the exact body bytes, so a captured token cannot carry another body.

Any 2xx answer means the wallet holds the cards (or already held them under this key). The
answers of :data:`REFUSALS` mean the wallet will never take this body: the push fails for
good. Anything else, a timeout or a refused connection included, is retried.
"""

from __future__ import annotations

import base64
import hashlib
import os
import threading
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING

import httpx
import orjson
from joserfc import jwt

from emr_hub.security.keys import ALGORITHM, signing_key

if TYPE_CHECKING:
    from emr_hub.hub import Hub

ASSERTION_TYPE = "wallet-push+jwt"
ASSERTION_SECONDS = 300
REFUSALS = frozenset({400, 404, 410, 413, 415, 422})
"""Answers that say the body itself is unacceptable (or the wallet holds no book for the
CCCD): sending it again cannot help."""
TIMEOUT = httpx.Timeout(15.0, connect=5.0)
KEY_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:emr-hub:wallet-push")


@dataclass(frozen=True)
class Answer:
    status: int

    @property
    def accepted(self) -> bool:
        return 200 <= self.status < 300

    @property
    def refused(self) -> bool:
        return self.status in REFUSALS


def idempotency_key(person: str, generation: int, digest: str) -> str:
    """The key of the ``generation``-th delivered push of the person (her person key) with
    books ``digest``: the same for every attempt of one push, different for a later push even
    when her book comes back to an earlier one."""
    return str(uuid.uuid5(KEY_NAMESPACE, f"{person}|{generation}|{digest}"))


def push_body(cccd: str, issued: str, health_cards: list[str]) -> bytes:
    """One card per Patient of hers (each hospital that posted her), in the file form."""
    return orjson.dumps(
        {"cccd": cccd, "issued": issued, "credential": {"verifiableCredential": health_cards}}
    )


def assertion(hub: Hub, wallet_url: str, body: bytes, *, now: int | None = None) -> str:
    """The JWT the hub authenticates a push with (see the module's docstring)."""
    key = signing_key(hub)
    issued_at = int(time.time()) if now is None else now
    claims = {
        "iss": hub.settings.base_url,
        "sub": hub.settings.base_url,
        "aud": wallet_url,
        "iat": issued_at,
        "exp": issued_at + ASSERTION_SECONDS,
        "jti": str(uuid.uuid4()),
        "body_sha256": body_digest(body),
    }
    header = {"alg": ALGORITHM, "kid": key.kid, "typ": ASSERTION_TYPE}
    return jwt.encode(header, claims, key, algorithms=[ALGORITHM])


def body_digest(body: bytes) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(body).digest()).rstrip(b"=").decode()


def post_push(hub: Hub, wallet_url: str, key: str, body: bytes) -> Answer:
    """POST one push; the answer's status (its body is not read: it may echo personal data).
    Transport errors (refused, timed out) are raised as ``httpx.TransportError``."""
    headers = {
        "Authorization": f"Bearer {assertion(hub, wallet_url, body)}",
        "Idempotency-Key": key,
        "Content-Type": "application/json",
    }
    with _client().stream("POST", wallet_url, content=body, headers=headers) as response:
        return Answer(response.status_code)


_clients: dict[int, httpx.Client] = {}
_clients_lock = threading.Lock()


def _client() -> httpx.Client:
    """One pooled client per process (a forked pool process must not share sockets)."""
    pid = os.getpid()
    with _clients_lock:
        client = _clients.get(pid)
        if client is None:
            client = httpx.Client(timeout=TIMEOUT, follow_redirects=False)
            _clients.clear()
            _clients[pid] = client
        return client
