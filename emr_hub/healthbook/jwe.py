"""The files of a SMART Health Link, encrypted as the SMART Health Links spec asks: JWE compact
serialization, ``alg: dir`` (the link's own 32-byte key is the content key), ``enc: A256GCM``,
``cty`` the file's content type, and ``zip: DEF`` (raw DEFLATE before encryption; a summary
Bundle shrinks several times). Every call draws a fresh 96-bit nonce, so the same key never
encrypts two files with the same IV.
"""

from __future__ import annotations

import base64
import secrets

from joserfc import jwe
from joserfc.jwk import OctKey

KEY_BYTES = 32
ENCRYPTION = "A256GCM"


def new_link_key() -> bytes:
    """32 random bytes: the key of one link."""
    return secrets.token_bytes(KEY_BYTES)


def key_text(key: bytes) -> str:
    """The key as the link's payload carries it: 43 characters of unpadded base64url."""
    return base64.urlsafe_b64encode(key).rstrip(b"=").decode("ascii")


def encrypt_file(key: bytes, content_type: str, plaintext: bytes) -> str:
    """The compact JWE of ``plaintext`` under ``key``."""
    if len(key) != KEY_BYTES:
        raise ValueError("a SMART Health Link key is 32 bytes")
    header = {"alg": "dir", "enc": ENCRYPTION, "cty": content_type, "zip": "DEF"}
    return jwe.encrypt_compact(header, plaintext, OctKey.import_key(key))
