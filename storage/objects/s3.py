"""S3 object store on the ``minio`` client (AWS S3, MinIO, SeaweedFS, ...).

How a streamed ``put`` ends up with its SHA-256 in the object's metadata
------------------------------------------------------------------------
S3 takes user metadata (``x-amz-meta-*``) when an upload *starts*, but the SHA-256 of a
stream is only known when it *ends*, and hashing the data first would mean reading it twice
or holding it in memory. So :meth:`S3ObjectStore.put`:

Bytes already in memory that fit in one part are hashed first and sent in one PUT with the
metadata; the staging below is for streams.

1. uploads the stream through a hashing reader to a private staging key
   ``PREFIX/.uploads/<uuid>`` -- a single PUT when it fits in one part, otherwise a
   multipart upload with 8 MiB parts (``length=-1`` when the size is unknown), one part
   at a time: minio's parallel part uploads feed an unbounded queue, which would buffer
   the whole stream whenever the source outruns the network. About three parts (~24 MiB)
   are in memory at the peak, whatever the object size;
2. server-side copies the staged object onto the real key with ``metadata_directive=REPLACE``
   and ``x-amz-meta-sha256`` set (``copy_object`` switches to a multipart copy above 5 GiB);
3. deletes the staging object (also when anything failed).

The real key therefore only ever holds complete objects that carry their hash: a reader
never sees a half-written object, nor one without ``sha256``, and a failed or
length-mismatched put leaves the previous object untouched. The cost is one server-side
copy. Staging objects of a process that died between steps 1 and 3 are left under
``.uploads/``; a bucket lifecycle rule expiring that prefix after a day cleans them up.
User keys can never be under it (segments starting with ``.`` are refused).

Objects written by other tools (no ``sha256`` metadata) are hashed by streaming them when
``stat`` is called.
"""

from __future__ import annotations

import functools
import hashlib
import io
import logging
import os
import re
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any, TypeVar
from urllib.parse import urlsplit

import certifi
import urllib3
from minio import Minio
from minio.commonconfig import REPLACE, CopySource
from minio.error import S3Error

from storage.objects.base import (
    CHUNK_SIZE,
    DEFAULT_CONTENT_TYPE,
    HashingReader,
    ObjectNotFound,
    ObjectReader,
    ObjectStoreUnavailable,
    PutData,
    StoredObject,
    is_sha256_hex,
    validate_content_type,
    validate_expiry,
    validate_key,
    validate_length,
    validate_range,
)

log = logging.getLogger(__name__)

PART_SIZE = 8 * 1024 * 1024
DEFAULT_ENDPOINT = "https://s3.amazonaws.com"
SHA256_HEADER = "x-amz-meta-sha256"
STAGING_FOLDER = ".uploads"

F = TypeVar("F", bound=Callable[..., Any])
_NOT_FOUND_CODES = frozenset({"NoSuchKey", "NoSuchObject", "ResourceNotFound"})
_BUCKET_NAME = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")


def _reachable(method: F) -> F:
    """``method`` with the S3 server's failures on its side, and the network's, raised as
    :class:`ObjectStoreUnavailable` (the client has retried by then)."""

    @functools.wraps(method)
    def translated(*args: Any, **kwargs: Any) -> Any:
        try:
            return method(*args, **kwargs)
        except urllib3.exceptions.HTTPError as exc:  # refused, reset, too many 5xx answers
            reason = type(exc).__name__
            raise ObjectStoreUnavailable(f"the S3 server is unavailable: {reason}") from exc
        except S3Error as exc:
            if exc.response is not None and exc.response.status >= 500:
                raise ObjectStoreUnavailable(f"the S3 server failed: {exc.code}") from exc
            raise

    return translated  # type: ignore[return-value]


class S3ObjectStore:
    """Objects in ``bucket`` under an optional ``prefix`` (see the module docstring).

    ``endpoint`` is a URL such as ``http://127.0.0.1:8333``; its scheme decides TLS.
    """

    def __init__(
        self,
        bucket: str,
        *,
        prefix: str = "",
        endpoint: str | None = None,
        access_key: str | None = None,
        secret_key: str | None = None,
        region: str | None = None,
        part_size: int = PART_SIZE,
    ) -> None:
        if not _BUCKET_NAME.fullmatch(bucket) or ".." in bucket:
            raise ValueError(f"invalid S3 bucket name: {bucket!r}")
        prefix = prefix.strip("/")
        self.bucket = bucket
        self.prefix = f"{validate_key(prefix)}/" if prefix else ""
        self.region = region
        self.part_size = part_size
        host, secure = _parse_endpoint(endpoint or DEFAULT_ENDPOINT)
        self.endpoint = f"{'https' if secure else 'http'}://{host}"

        def client(connect: float, read: float, retries: urllib3.Retry | bool) -> Minio:
            pool = urllib3.PoolManager(
                timeout=urllib3.Timeout(connect=connect, read=read),
                maxsize=10,
                cert_reqs="CERT_REQUIRED",
                ca_certs=os.environ.get("SSL_CERT_FILE") or certifi.where(),
                retries=retries,
            )
            return Minio(
                host,
                access_key=access_key,
                secret_key=secret_key,
                secure=secure,
                region=region,
                http_client=pool,
            )

        # The read timeout bounds each socket read, not a whole transfer.
        retry = urllib3.Retry(total=5, backoff_factor=0.2, status_forcelist=[500, 502, 503, 504])
        self._client = client(connect=10, read=120, retries=retry)
        # Readiness probes must answer quickly, so they get their own impatient client.
        self._probe = client(connect=2, read=3, retries=False)

    def __repr__(self) -> str:
        return (
            f"S3ObjectStore(bucket={self.bucket!r}, prefix={self.prefix!r}, "
            f"endpoint={self.endpoint!r})"
        )

    # -- ObjectStore -------------------------------------------------------------------

    @_reachable
    def put(
        self,
        key: str,
        data: PutData,
        *,
        content_type: str = DEFAULT_CONTENT_TYPE,
        length: int | None = None,
        content_encoding: str | None = None,
    ) -> StoredObject:
        name = self._name(key)
        validate_content_type(content_type)
        headers = {"Content-Type": content_type}
        if content_encoding is not None:
            headers["Content-Encoding"] = validate_content_type(content_encoding)
        validate_length(length)
        if isinstance(data, bytes | bytearray | memoryview) and len(data) <= self.part_size:
            return self._put_whole(name, key, bytes(data), headers, length)
        reader = HashingReader(data, length)
        staging = f"{self.prefix}{STAGING_FOLDER}/{uuid.uuid4().hex}"
        try:
            self._client.put_object(
                self.bucket,
                staging,
                reader,  # type: ignore[arg-type]  # only read() is used
                length=-1 if length is None else length,
                part_size=self.part_size,
                content_type=content_type,
                num_parallel_uploads=1,  # minio's parallel mode queues parts without bound
            )
            sha256_hex = reader.finish()
            self._client.copy_object(
                self.bucket,
                name,
                CopySource(self.bucket, staging),
                metadata={**headers, SHA256_HEADER: sha256_hex},
                metadata_directive=REPLACE,
            )
        finally:
            try:
                self._client.remove_object(self.bucket, staging)
            except Exception:  # noqa: BLE001 - never hide the put's own error; the object is only litter
                log.warning("could not remove staging object %s/%s", self.bucket, staging)
        return StoredObject(key, reader.size, sha256_hex, content_type, content_encoding)

    def _put_whole(
        self, name: str, key: str, data: bytes, headers: dict[str, str], length: int | None
    ) -> StoredObject:
        """One PUT of bytes already in memory: their hash is known before the upload starts,
        so it goes in the object's metadata at once, with no staging copy."""
        if length is not None and length != len(data):
            raise ValueError(f"data is {len(data)} bytes, not the declared length {length}")
        sha256_hex = hashlib.sha256(data).hexdigest()
        content_type = headers["Content-Type"]
        metadata = {k: v for k, v in headers.items() if k != "Content-Type"}
        self._client.put_object(
            self.bucket,
            name,
            io.BytesIO(data),
            length=len(data),
            content_type=content_type,
            metadata={**metadata, SHA256_HEADER: sha256_hex},  # type: ignore[dict-item]
        )
        return StoredObject(
            key, len(data), sha256_hex, content_type, headers.get("Content-Encoding")
        )

    @_reachable
    def get(self, key: str, offset: int = 0, length: int | None = None) -> Iterator[bytes]:
        name = self._name(key)
        validate_range(offset, length)
        if length == 0:  # S3 has no empty range; the object must still exist
            self._head(key)
            return ObjectReader(iter(()), lambda: None)
        try:
            response = self._client.get_object(self.bucket, name, offset=offset, length=length or 0)
        except S3Error as exc:
            if exc.code == "InvalidRange":  # an offset at or past the end: nothing there
                self._head(key)
                return ObjectReader(iter(()), lambda: None)
            raise _translate(exc, key) from None

        def release() -> None:
            response.close()
            response.release_conn()

        # The bytes as stored: urllib3 would otherwise undo a Content-Encoding of gzip.
        return ObjectReader(response.stream(CHUNK_SIZE, decode_content=False), release)

    @_reachable
    def stat(self, key: str) -> StoredObject:
        name = self._name(key)
        try:
            info = self._client.stat_object(self.bucket, name)
        except S3Error as exc:
            raise _translate(exc, key) from None
        sha256_hex = info.metadata.get(SHA256_HEADER) if info.metadata else None
        if not is_sha256_hex(sha256_hex):
            sha256_hex = self._hash_object(key, info.etag)
        encoding = info.metadata.get("Content-Encoding") if info.metadata else None
        return StoredObject(
            key,
            int(info.size or 0),
            str(sha256_hex),
            info.content_type or DEFAULT_CONTENT_TYPE,
            encoding or None,
        )

    @_reachable
    def exists(self, key: str) -> bool:
        try:
            self._head(key)
        except ObjectNotFound:
            return False
        return True

    @_reachable
    def delete(self, key: str) -> None:
        self._client.remove_object(self.bucket, self._name(key))

    def presigned_get_url(self, key: str, expires_seconds: int = 900) -> str | None:
        """A signed GET URL valid for ``expires_seconds`` (1..3600); the object need not exist."""
        name = self._name(key)
        validate_expiry(expires_seconds)
        return self._client.presigned_get_object(
            self.bucket, name, expires=timedelta(seconds=expires_seconds)
        )

    @_reachable
    def ensure_ready(self) -> None:
        if self._client.bucket_exists(self.bucket):
            return
        try:
            if self.region:
                self._client.make_bucket(self.bucket, location=self.region)
            else:
                self._client.make_bucket(self.bucket)
        except S3Error:
            # Lost a creation race with another process (servers differ in the error code).
            if not self._client.bucket_exists(self.bucket):
                raise

    def ping(self) -> bool:
        try:
            return bool(self._probe.bucket_exists(self.bucket))
        except Exception:  # noqa: BLE001 - readiness reports any failure as not ready
            return False

    # -- helpers -----------------------------------------------------------------------

    def _head(self, key: str) -> None:
        """Raise :class:`ObjectNotFound` unless ``key`` exists (one HEAD request)."""
        try:
            self._client.stat_object(self.bucket, self._name(key))
        except S3Error as exc:
            raise _translate(exc, key) from None

    def _name(self, key: str) -> str:
        return self.prefix + validate_key(key)

    def _hash_object(self, key: str, etag: str | None) -> str:
        """SHA-256 of an object that lacks the metadata, pinned to the version ``stat`` saw."""
        headers = {"If-Match": f'"{etag}"'} if etag else None
        try:
            response = self._client.get_object(
                self.bucket, self._name(key), request_headers=headers
            )
        except S3Error as exc:
            raise _translate(exc, key) from None
        digest = hashlib.sha256()
        try:
            for chunk in response.stream(CHUNK_SIZE):
                digest.update(chunk)
        finally:
            response.close()
            response.release_conn()
        return digest.hexdigest()


def _translate(exc: S3Error, key: str) -> Exception:
    return ObjectNotFound(key) if exc.code in _NOT_FOUND_CODES else exc


def _parse_endpoint(endpoint: str) -> tuple[str, bool]:
    """``http(s)://host[:port]`` -> (``host[:port]``, secure)."""
    parts = urlsplit(endpoint)
    if "@" in parts.netloc:  # do not echo it: it holds credentials
        raise ValueError("S3 endpoint must not carry credentials; pass access_key/secret_key")
    if parts.scheme not in {"http", "https"} or not parts.netloc:
        raise ValueError(
            f"S3 endpoint must look like http://host:port or https://host, not {endpoint!r}"
        )
    if parts.path not in {"", "/"} or parts.query or parts.fragment:
        raise ValueError(f"S3 endpoint must not carry a path or query: {endpoint!r}")
    return parts.netloc, parts.scheme == "https"
