"""Object storage for binaries, documents and images: a local folder or an S3 bucket.

Pick the backend with a URL via :func:`open_object_store`; both implement
:class:`ObjectStore` and stream in both directions.
"""

from __future__ import annotations

from urllib.parse import parse_qs, unquote, urlsplit

from storage.objects.base import (
    CHUNK_SIZE,
    MAX_KEY_LENGTH,
    MAX_PRESIGN_SECONDS,
    ObjectNotFound,
    ObjectReader,
    ObjectStore,
    ObjectStoreError,
    ObjectStoreUnavailable,
    StoredObject,
    validate_key,
)
from storage.objects.file import FileObjectStore
from storage.objects.s3 import S3ObjectStore

__all__ = [
    "CHUNK_SIZE",
    "MAX_KEY_LENGTH",
    "MAX_PRESIGN_SECONDS",
    "FileObjectStore",
    "ObjectNotFound",
    "ObjectReader",
    "ObjectStore",
    "ObjectStoreError",
    "ObjectStoreUnavailable",
    "S3ObjectStore",
    "StoredObject",
    "open_object_store",
    "validate_key",
]


def open_object_store(
    url: str,
    *,
    endpoint: str | None = None,
    access_key: str | None = None,
    secret_key: str | None = None,
) -> ObjectStore:
    """Build the store a URL names (no I/O; call ``ensure_ready()`` before first use).

    - ``file:///abs/path`` or ``file://relative/path``: a local folder. The path is taken
      verbatim (no percent-decoding), as settings build it from a filesystem path.
    - ``s3://bucket`` or ``s3://bucket/prefix``, optionally ``?region=eu-west-1``: an S3
      bucket at ``endpoint`` (``http://host:port`` or ``https://host``; default AWS) with
      the given credentials. Credentials inside the URL are refused.

    The S3 arguments are ignored for ``file://`` URLs. Anything else raises ``ValueError``.
    """
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    if sep and scheme == "file":
        if not rest or rest == "/":
            raise ValueError(
                "file:// object store URL needs a folder path, e.g. file:///var/objects"
            )
        return FileObjectStore(rest)
    if sep and scheme == "s3":
        return _open_s3(url, endpoint=endpoint, access_key=access_key, secret_key=secret_key)
    shown = f"{scheme!r}" if sep else "none"
    raise ValueError(
        f"unsupported object store URL (scheme {shown}): expected file:///path or s3://bucket"
    )


def _open_s3(
    url: str, *, endpoint: str | None, access_key: str | None, secret_key: str | None
) -> S3ObjectStore:
    parts = urlsplit(url)
    if "@" in parts.netloc:  # do not echo the URL: it holds credentials
        raise ValueError("s3:// URL must not carry credentials; pass access_key/secret_key")
    if not parts.netloc:
        raise ValueError(f"s3:// URL needs a bucket name, e.g. s3://emr-hub: {url!r}")
    if parts.fragment:
        raise ValueError(f"s3:// URL must not have a fragment: {url!r}")
    query = parse_qs(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query))
    unknown = set(query) - {"region"}
    if unknown:
        raise ValueError(f"unknown s3:// URL parameter(s) {sorted(unknown)}; only 'region'")
    region = query.get("region", [""])[-1] or None
    return S3ObjectStore(
        parts.netloc,
        prefix=unquote(parts.path).strip("/"),
        endpoint=endpoint,
        access_key=access_key,
        secret_key=secret_key,
        region=region,
    )
