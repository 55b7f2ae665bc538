"""A small, honest identity-wallet intake for the demo and the tests (docs/wallet-intake.md).

    .venv/bin/python scripts/wallet_receiver.py --port 8090 [--trust http://127.0.0.1:8000]
        [--state wallet.sqlite3]

``POST /intake`` takes a push. Before storing anything it checks, against the JWKS the issuer
publishes at ``<iss>/.well-known/jwks.json`` (fetched over HTTP, cached, refetched for an
unknown ``kid``), and for issuers given with ``--trust`` only:

* the hub's bearer JWT: ES256 signature, ``typ`` ``wallet-push+jwt``, ``aud`` this intake's
  URL, ``iat``/``exp`` (60 s leeway), ``body_sha256`` equal to the body's, ``jti`` not seen;
* the ``Idempotency-Key`` header: a key already taken is answered 200 again and counted as a
  repeat, nothing else happens;
* the body: a well-formed CCCD, ``issued``, and a credential ``{"verifiableCredential":
  [jws, ...]}`` (one card per Patient of hers) whose every JWS verifies (ES256, ``zip: DEF``
  raw-DEFLATE payload, ``iss`` trusted, ``vc.type`` a health card, ``fhirVersion`` 4.0.1,
  ``nbf`` not in the future).

Refusals: 401 (the JWT), 400 (the body or its credential). The latest cards per CCCD are kept
(by ``issued``: an older push arriving late does not replace a newer card). Everything is kept
in a SQLite file (``--state``, default in memory), so a restarted receiver still knows the keys
it took; ``--answer-delay`` makes a slow wallet that answers only after storing (tests).
``GET /received`` tells what it got (``accepted``, ``repeats``, ``refused``), and
``GET /cards/<cccd>`` the cards held: for tests and the demo, so loopback only.

The signatures are checked here with ``cryptography`` directly, not with the hub's JOSE code.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import re
import sqlite3
import threading
import time
import zlib
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

import httpx
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

LEEWAY = 60
CCCD = re.compile(r"\d{12}")
HEALTH_CARD = "https://smarthealth.cards#health-card"
INTAKE = "/intake"
MAX_CARDS = 50
SCHEMA = """
CREATE TABLE IF NOT EXISTS push (key TEXT PRIMARY KEY, cccd TEXT NOT NULL,
    issued TEXT NOT NULL, received_at REAL NOT NULL, cards TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS card (cccd TEXT PRIMARY KEY, issued TEXT NOT NULL, key TEXT NOT NULL,
    cards TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS repeat (key TEXT NOT NULL, received_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS refusal (status INTEGER NOT NULL, reason TEXT NOT NULL,
    received_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS jti (jti TEXT PRIMARY KEY, expires REAL NOT NULL);
"""


class Refused(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def b64decode(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class Keys:
    """The issuers' public keys, fetched from ``<iss>/.well-known/jwks.json``."""

    def __init__(self, trusted: list[str]) -> None:
        self.trusted = {t.rstrip("/") for t in trusted}
        self.lock = threading.Lock()
        self.keys: dict[tuple[str, str], ec.EllipticCurvePublicKey] = {}

    def key(self, issuer: str, kid: str) -> ec.EllipticCurvePublicKey:
        if issuer.rstrip("/") not in self.trusted:
            raise Refused(401, "the issuer is not one this wallet trusts")
        with self.lock:
            found = self.keys.get((issuer, kid))
        if found is None:
            self._fetch(issuer)
            with self.lock:
                found = self.keys.get((issuer, kid))
        if found is None:
            raise Refused(401, "no key of the issuer has this kid")
        return found

    def _fetch(self, issuer: str) -> None:
        try:
            response = httpx.get(f"{issuer.rstrip('/')}/.well-known/jwks.json", timeout=10)
            response.raise_for_status()
            jwks = response.json()
        except (httpx.HTTPError, ValueError):
            raise Refused(503, "the issuer's JWKS could not be fetched") from None
        with self.lock:
            for jwk in jwks.get("keys", []):
                if jwk.get("kty") == "EC" and jwk.get("crv") == "P-256" and jwk.get("kid"):
                    numbers = ec.EllipticCurvePublicNumbers(
                        int.from_bytes(b64decode(jwk["x"]), "big"),
                        int.from_bytes(b64decode(jwk["y"]), "big"),
                        ec.SECP256R1(),
                    )
                    self.keys[(issuer, jwk["kid"])] = numbers.public_key()


def verify_jws(token: str, keys: Keys) -> tuple[dict, dict]:
    """Header and payload of an ES256 compact JWS signed by a trusted issuer's key."""
    parts = token.split(".")
    if len(parts) != 3:
        raise Refused(400, "not a compact JWS")
    try:
        header = json.loads(b64decode(parts[0]))
        raw = b64decode(parts[1])
        signature = b64decode(parts[2])
        payload_bytes = zlib.decompress(raw, wbits=-15) if header.get("zip") == "DEF" else raw
        payload = json.loads(payload_bytes)
    except (ValueError, zlib.error):
        raise Refused(400, "the JWS does not decode") from None
    if header.get("alg") != "ES256" or len(signature) != 64:
        raise Refused(400, "the JWS is not ES256")
    key = keys.key(str(payload.get("iss", "")), str(header.get("kid", "")))
    der = encode_dss_signature(
        int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
    )
    try:
        key.verify(der, f"{parts[0]}.{parts[1]}".encode(), ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise Refused(400, "the JWS signature does not verify") from None
    return header, payload


class Store:
    def __init__(self, path: str) -> None:
        self.lock = threading.Lock()
        self.db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self.db.executescript(SCHEMA)

    def refuse(self, status: int, reason: str) -> None:
        with self.lock:
            self.db.execute("INSERT INTO refusal VALUES (?, ?, ?)", (status, reason, time.time()))

    def take_jti(self, jti: str, expires: float) -> bool:
        with self.lock:
            self.db.execute("DELETE FROM jti WHERE expires < ?", (time.time() - LEEWAY,))
            try:
                self.db.execute("INSERT INTO jti VALUES (?, ?)", (jti, expires))
            except sqlite3.IntegrityError:
                return False
            return True

    def accept(self, key: str, cccd: str, issued: str, cards: str) -> bool:
        """Store the push under ``key``; False when the key was taken before (a repeat)."""
        with self.lock:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                if self.db.execute("SELECT 1 FROM push WHERE key = ?", (key,)).fetchone():
                    self.db.execute("INSERT INTO repeat VALUES (?, ?)", (key, time.time()))
                    self.db.execute("COMMIT")
                    return False
                self.db.execute(
                    "INSERT INTO push VALUES (?, ?, ?, ?, ?)",
                    (key, cccd, issued, time.time(), cards),
                )
                held = self.db.execute("SELECT issued FROM card WHERE cccd = ?", (cccd,)).fetchone()
                if held is None or _instant(held[0]) <= _instant(issued):
                    self.db.execute(
                        "INSERT OR REPLACE INTO card VALUES (?, ?, ?, ?)",
                        (cccd, issued, key, cards),
                    )
                self.db.execute("COMMIT")
                return True
            except BaseException:
                self.db.execute("ROLLBACK")
                raise

    def received(self) -> dict[str, Any]:
        with self.lock:
            pushes = self.db.execute(
                "SELECT key, cccd, issued, received_at, cards FROM push ORDER BY received_at"
            ).fetchall()
            repeats = self.db.execute("SELECT key FROM repeat ORDER BY received_at").fetchall()
            refused = self.db.execute("SELECT status, reason FROM refusal").fetchall()
        return {
            "accepted": [
                {"key": k, "cccd": c, "issued": i, "received_at": r, "credentials": json.loads(j)}
                for k, c, i, r, j in pushes
            ],
            "repeats": [k for (k,) in repeats],
            "refused": [{"status": s, "reason": r} for s, r in refused],
        }

    def card(self, cccd: str) -> dict[str, Any] | None:
        with self.lock:
            row = self.db.execute(
                "SELECT issued, key, cards FROM card WHERE cccd = ?", (cccd,)
            ).fetchone()
        if row is None:
            return None
        return {"issued": row[0], "key": row[1], "verifiableCredential": json.loads(row[2])}


def _instant(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


class Handler(BaseHTTPRequestHandler):
    keys: ClassVar[Keys]
    store: ClassVar[Store]
    audience: ClassVar[str | None] = None
    answer_delay: ClassVar[float] = 0.0

    def do_POST(self) -> None:
        if self.path != INTAKE:
            self._answer(404, {"error": "POST pushes to /intake"})
            return
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        try:
            key = self._authenticate(body)
            cccd, issued, cards = self._check(body)
        except Refused as refusal:
            self.store.refuse(refusal.status, refusal.reason)
            self._answer(refusal.status, {"error": refusal.reason})
            return
        taken = self.store.accept(key, cccd, issued, json.dumps(cards))
        time.sleep(self.answer_delay)
        self._answer(201 if taken else 200, {"status": "stored" if taken else "repeat"})

    def do_GET(self) -> None:
        if self.path == "/received":
            self._answer(200, self.store.received())
        elif self.path.startswith("/cards/"):
            card = self.store.card(self.path.removeprefix("/cards/"))
            self._answer(200 if card else 404, card or {"error": "no card for this CCCD"})
        else:
            self._answer(404, {"error": "not found"})

    def _authenticate(self, body: bytes) -> str:
        scheme, _, token = (self.headers.get("Authorization") or "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise Refused(401, "a bearer JWT is needed")
        header, claims = verify_jws(token.strip(), self.keys)
        if header.get("typ") != "wallet-push+jwt":
            raise Refused(401, "the JWT is not a wallet push assertion")
        expected = self.audience or f"http://{self.headers.get('Host')}{INTAKE}"
        if claims.get("aud") != expected:
            raise Refused(401, "the JWT is for another audience")
        now = time.time()
        exp, iat = claims.get("exp"), claims.get("iat")
        if not isinstance(exp, int) or not isinstance(iat, int):
            raise Refused(401, "the JWT needs iat and exp")
        if exp < now - LEEWAY or iat > now + LEEWAY:
            raise Refused(401, "the JWT has expired or is not valid yet")
        if claims.get("body_sha256") != b64encode(hashlib.sha256(body).digest()):
            raise Refused(401, "the JWT was made for another body")
        if not self.store.take_jti(str(claims.get("jti")), float(exp)):
            raise Refused(401, "the JWT was used before")
        key = self.headers.get("Idempotency-Key") or ""
        if not 0 < len(key) <= 64:
            raise Refused(400, "an Idempotency-Key header is needed")
        return key

    def _check(self, body: bytes) -> tuple[str, str, list[str]]:
        try:
            push = json.loads(body)
            cccd, issued = push["cccd"], push["issued"]
            cards = push["credential"]["verifiableCredential"]
            _instant(issued)
        except (ValueError, KeyError, TypeError):
            raise Refused(400, "the body is not a push") from None
        if not isinstance(cccd, str) or not CCCD.fullmatch(cccd):
            raise Refused(400, "not a CCCD")
        if not isinstance(cards, list) or not 1 <= len(cards) <= MAX_CARDS:
            raise Refused(400, f"a push carries 1 to {MAX_CARDS} cards")
        for card in cards:
            self._check_card(str(card))
        return cccd, issued, [str(card) for card in cards]

    def _check_card(self, jws: str) -> None:
        header, payload = verify_jws(jws, self.keys)
        vc = payload.get("vc") or {}
        if header.get("zip") != "DEF" or HEALTH_CARD not in (vc.get("type") or []):
            raise Refused(400, "the credential is not a SMART Health Card")
        subject = vc.get("credentialSubject") or {}
        if subject.get("fhirVersion") != "4.0.1" or not subject.get("fhirBundle"):
            raise Refused(400, "the credential holds no FHIR R4 Bundle")
        nbf = payload.get("nbf")
        if not isinstance(nbf, int | float) or nbf > time.time() + LEEWAY:
            raise Refused(400, "the credential is not valid yet")

    def _answer(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument(
        "--trust",
        action="append",
        help="An issuer (the hub's public base URL) to trust; repeatable. Default: the "
        "embedded hub, http://127.0.0.1:8000",
    )
    parser.add_argument("--state", default=":memory:", help="SQLite file of what was taken")
    parser.add_argument("--audience", help="The aud the hub's JWT must carry (default: the URL)")
    parser.add_argument(
        "--answer-delay",
        type=float,
        default=0.0,
        help="Seconds to wait after storing a push before answering (a slow wallet, for tests)",
    )
    args = parser.parse_args()
    Handler.keys = Keys(args.trust or ["http://127.0.0.1:8000"])
    Handler.store = Store(args.state)
    Handler.audience = args.audience
    Handler.answer_delay = args.answer_delay
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    print(
        f"wallet intake on http://127.0.0.1:{args.port}{INTAKE} ({datetime.now(UTC):%H:%M:%S})",
        flush=True,
    )
    server.serve_forever()


if __name__ == "__main__":
    main()
