"""Sealing the token signing keys at rest with a key-encryption key (KEK) kept out of the
database, so a copy of the database (a backup, a dump, a replica) does not let anyone mint
access tokens.

The KEK is 32 bytes, given as base64 in ``EMR_HUB_KEY_ENCRYPTION_KEY`` or in the file named by
``EMR_HUB_KEY_ENCRYPTION_KEY_FILE``. With neither, ``DATA_DIR/key-encryption-key`` is used,
and made (mode 0600) the first time it is needed: right for the embedded shape, where
``DATA_DIR`` holds all the state; with several machines every API process must be given the
same KEK.

A sealed key is ``v1.<kek id>.<nonce>.<ciphertext>`` (base64url parts): AES-256-GCM over the
private JWK, with the row's ``kid`` as associated data, so a sealed value copied into another
row does not open. The KEK id, a short keyed hash of the KEK, lets a process with the wrong
KEK say so instead of reporting a corrupt key.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import hmac
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from emr_hub.config import Settings

log = logging.getLogger(__name__)

KEK_BYTES = 32
KEK_FILE_NAME = "key-encryption-key"
VERSION = "v1"
_NONCE_BYTES = 12
_KEY_ID_LABEL = b"emr-hub key-encryption-key id"
# A KEK file is one line of base64; anything much larger is not one.
_MAX_KEK_FILE_BYTES = 1024
_HOW_TO_MAKE = "the base64 of 32 random bytes (make one with: openssl rand -base64 32)"


class SealingError(Exception):
    """The KEK is missing, malformed or not the one the keys were sealed with. The message
    says what to fix and never holds key material."""


@dataclass(frozen=True)
class KeyEncryptionKey:
    secret: bytes = field(repr=False)
    source: str
    """Where it came from, for messages: the setting's name or the file's path."""

    @property
    def key_id(self) -> str:
        digest = hmac.new(self.secret, _KEY_ID_LABEL, hashlib.sha256).digest()
        return _b64(digest[:6])


def key_encryption_key(settings: Settings) -> KeyEncryptionKey:
    """The KEK of these settings; raises :class:`SealingError` with what to fix."""
    given = settings.key_encryption_key.get_secret_value() if settings.key_encryption_key else ""
    path = settings.key_encryption_key_file
    if given.strip() and path is not None:
        raise SealingError(
            "Both EMR_HUB_KEY_ENCRYPTION_KEY and EMR_HUB_KEY_ENCRYPTION_KEY_FILE are set: "
            "set only one"
        )
    if given.strip():
        return KeyEncryptionKey(
            _decode(given, "EMR_HUB_KEY_ENCRYPTION_KEY"), "EMR_HUB_KEY_ENCRYPTION_KEY"
        )
    if path is not None:
        source = f"EMR_HUB_KEY_ENCRYPTION_KEY_FILE ({path})"
        return KeyEncryptionKey(_decode(_read_kek_file(path, source), source), source)
    generated = settings.data_dir / KEK_FILE_NAME
    source = f"the key-encryption key file {generated}"
    if not generated.exists():
        _create_kek_file(generated)
        if not settings.effective_database_url.startswith("sqlite"):
            log.warning(
                "made a key-encryption key file under DATA_DIR; every API process needs the "
                "same one: set EMR_HUB_KEY_ENCRYPTION_KEY or EMR_HUB_KEY_ENCRYPTION_KEY_FILE",
                extra={"fields": {"path": str(generated)}},
            )
    return KeyEncryptionKey(_decode(_read_kek_file(generated, source), source), source)


def seal(kek: KeyEncryptionKey, kid: str, jwk: dict[str, Any]) -> str:
    """The sealed form of the private ``jwk`` of key ``kid``."""
    nonce = os.urandom(_NONCE_BYTES)
    ciphertext = AESGCM(kek.secret).encrypt(nonce, orjson.dumps(jwk), _associated_data(kid))
    return ".".join((VERSION, kek.key_id, _b64(nonce), _b64(ciphertext)))


def unseal(kek: KeyEncryptionKey, kid: str, sealed: str) -> dict[str, Any]:
    """The private JWK sealed in ``sealed`` for key ``kid``; :class:`SealingError` when the
    KEK is not the one it was sealed with or the value is damaged."""
    parts = sealed.split(".")
    if len(parts) != 4 or parts[0] != VERSION:
        raise SealingError(f"The sealed private key of signing key {kid} is not in a known form")
    _, key_id, nonce_text, ciphertext_text = parts
    if not hmac.compare_digest(key_id, kek.key_id):
        raise SealingError(
            f"Signing key {kid} was sealed with the key-encryption key of id {key_id}, but "
            f"{kek.source} has id {kek.key_id}: give this process the key-encryption key the "
            "keys were sealed with (the same EMR_HUB_KEY_ENCRYPTION_KEY or _FILE on every "
            "process)"
        )
    try:
        plaintext = AESGCM(kek.secret).decrypt(
            _unb64(nonce_text), _unb64(ciphertext_text), _associated_data(kid)
        )
        jwk = orjson.loads(plaintext)
    except (InvalidTag, ValueError, orjson.JSONDecodeError):
        raise SealingError(
            f"The sealed private key of signing key {kid} does not open with {kek.source} "
            "although the key ids agree: the row is damaged"
        ) from None
    if not isinstance(jwk, dict):
        raise SealingError(f"The sealed private key of signing key {kid} is not a JWK")
    return jwk


def _associated_data(kid: str) -> bytes:
    return b"emr-hub signing_key " + kid.encode("utf-8")


def _decode(text: str, source: str) -> bytes:
    try:
        secret = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise SealingError(f"{source} is not base64: it must be {_HOW_TO_MAKE}") from None
    if len(secret) != KEK_BYTES:
        raise SealingError(
            f"{source} decodes to {len(secret)} bytes, not {KEK_BYTES}: it must be {_HOW_TO_MAKE}"
        )
    return secret


def _read_kek_file(path: Path, source: str) -> str:
    try:
        with path.open("rb") as handle:
            raw = handle.read(_MAX_KEK_FILE_BYTES + 1)
    except OSError as exc:
        raise SealingError(f"Cannot read {source}: {exc.strerror or exc}") from None
    if len(raw) > _MAX_KEK_FILE_BYTES:
        raise SealingError(f"{source} is too large: it must hold {_HOW_TO_MAKE}")
    try:
        return raw.decode("ascii")
    except UnicodeDecodeError:
        raise SealingError(f"{source} is not base64 text: it must hold {_HOW_TO_MAKE}") from None


def _create_kek_file(path: Path) -> None:
    """Write a new KEK to ``path`` unless a file is there already (another process won).

    The KEK is written in full to a private temporary file, which is then linked into place:
    the link fails if the name exists, so no process ever reads a half-written KEK.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(base64.b64encode(os.urandom(KEK_BYTES)) + b"\n")
            handle.flush()
            os.fsync(handle.fileno())
        with contextlib.suppress(FileExistsError):
            os.link(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as exc:
        raise ValueError("not base64url") from exc
