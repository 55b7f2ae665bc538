"""Local-folder object store: one file per object under a root folder.

Layout: key ``a/b/c`` is the file ``ROOT/a/b/c``; its SHA-256 and content type live in the
hidden sidecar ``ROOT/a/b/.c.meta.json``. Keys cannot have segments starting with ``.``
(:func:`~storage.objects.base.validate_key`), so sidecars and the hidden temporary files
used while writing can never collide with an object.

Durability: the data is written to a temporary file in the target folder, fsynced, and
moved into place with ``os.replace`` (atomic); then the sidecar is written the same way and
the folder is fsynced. A ``put`` that returned survives a crash.

Crash consistency: the data and its sidecar are two files, so a crash between the two
renames can leave a sidecar describing other content. The sidecar therefore records the
identity (inode, size, mtime) of the data file it describes; when that does not match,
:meth:`FileObjectStore.stat` recomputes the SHA-256 from the data (content type falls
back to ``application/octet-stream``). A put that crashed can also leave a hidden
``.NAME.*.tmp`` file behind; it is never visible through the API.

Keys map to paths, so this backend cannot hold both ``a`` and ``a/b`` (S3 can); such a
``put`` raises :class:`~storage.objects.base.ObjectStoreError`. Folders created for keys
are never removed, even when they become empty: doing so would
race with a concurrent ``put`` into the same folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat as stat_module
import tempfile
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path
from typing import IO, Any

from storage.objects.base import (
    CHUNK_SIZE,
    DEFAULT_CONTENT_TYPE,
    HashingReader,
    ObjectNotFound,
    ObjectReader,
    ObjectStoreError,
    PutData,
    StoredObject,
    is_sha256_hex,
    validate_content_type,
    validate_expiry,
    validate_key,
    validate_length,
    validate_range,
)

_MISSING_ERRORS = (FileNotFoundError, NotADirectoryError, IsADirectoryError)


class FileObjectStore:
    """Objects stored as plain files under ``root`` (see the module docstring)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        # Resolved once, so a later chdir cannot move the store.
        self.root = Path(root).absolute()

    def __repr__(self) -> str:
        return f"FileObjectStore({str(self.root)!r})"

    # -- ObjectStore -------------------------------------------------------------------

    def put(
        self,
        key: str,
        data: PutData,
        *,
        content_type: str = DEFAULT_CONTENT_TYPE,
        length: int | None = None,
        content_encoding: str | None = None,
    ) -> StoredObject:
        path = self._path(key)
        validate_content_type(content_type)
        if content_encoding is not None:
            validate_content_type(content_encoding)
        reader = HashingReader(data, validate_length(length))
        try:
            _makedirs_durably(path.parent)
            fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        except (FileExistsError, NotADirectoryError):
            raise _conflict(key) from None
        try:
            with os.fdopen(fd, "wb") as out:
                while chunk := reader.read(CHUNK_SIZE):
                    out.write(chunk)
                sha256_hex = reader.finish()
                out.flush()
                os.fsync(out.fileno())
                identity = _identity(os.fstat(out.fileno()))
            os.replace(tmp_name, path)
        except BaseException as exc:
            with suppress(OSError):
                os.unlink(tmp_name)
            if isinstance(exc, IsADirectoryError):
                raise _conflict(key) from None
            raise
        stored = StoredObject(key, reader.size, sha256_hex, content_type, content_encoding)
        _write_sidecar(_sidecar(path), stored, identity)
        _fsync_dir(path.parent)
        return stored

    def get(self, key: str, offset: int = 0, length: int | None = None) -> Iterator[bytes]:
        validate_range(offset, length)
        handle, _ = self._open(key)
        if offset:
            handle.seek(offset)
        return ObjectReader(_read_chunks(handle, length), handle.close)

    def stat(self, key: str) -> StoredObject:
        handle, st = self._open(key)
        with handle:
            meta = _read_sidecar(_sidecar(self._path(key)))
            if meta is not None and meta.get("file") == _identity(st):
                encoding = meta.get("content_encoding")
                return StoredObject(
                    key,
                    st.st_size,
                    meta["sha256"],
                    meta["content_type"],
                    encoding if isinstance(encoding, str) else None,
                )
            # Sidecar missing or describing other content (crash between the two renames).
            digest = hashlib.sha256()
            for chunk in _read_chunks(handle):
                digest.update(chunk)
            return StoredObject(key, st.st_size, digest.hexdigest(), DEFAULT_CONTENT_TYPE)

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def delete(self, key: str) -> None:
        path = self._path(key)
        for victim in (path, _sidecar(path)):
            with suppress(*_MISSING_ERRORS):
                victim.unlink()
        with suppress(OSError):
            _fsync_dir(path.parent)

    def presigned_get_url(self, key: str, expires_seconds: int = 900) -> str | None:
        """Always ``None``: a local folder cannot be served by URL; stream via :meth:`get`."""
        validate_key(key)
        validate_expiry(expires_seconds)
        return None

    def ensure_ready(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)

    def ping(self) -> bool:
        return self.root.is_dir() and os.access(self.root, os.W_OK | os.X_OK)

    # -- helpers -----------------------------------------------------------------------

    def _path(self, key: str) -> Path:
        return self.root.joinpath(*validate_key(key).split("/"))

    def _open(self, key: str) -> tuple[IO[bytes], os.stat_result]:
        path = self._path(key)
        try:
            handle = path.open("rb")
        except _MISSING_ERRORS:
            raise ObjectNotFound(key) from None
        st = os.fstat(handle.fileno())
        if not stat_module.S_ISREG(st.st_mode):
            handle.close()
            raise ObjectNotFound(key)
        return handle, st


def _conflict(key: str) -> ObjectStoreError:
    return ObjectStoreError(
        f"cannot store {key!r} in a folder store: it would need a folder where an object is, "
        "or an object where a folder of other keys is (e.g. both 'a' and 'a/b')"
    )


def _read_chunks(handle: IO[bytes], length: int | None = None) -> Iterator[bytes]:
    left = length
    while left is None or left > 0:
        chunk = handle.read(CHUNK_SIZE if left is None else min(CHUNK_SIZE, left))
        if not chunk:
            return
        if left is not None:
            left -= len(chunk)
        yield chunk


def _sidecar(path: Path) -> Path:
    return path.with_name(f".{path.name}.meta.json")


def _identity(st: os.stat_result) -> list[int]:
    """What ties a sidecar to one version of the data file (JSON-friendly)."""
    return [st.st_ino, st.st_size, st.st_mtime_ns]


def _write_sidecar(path: Path, stored: StoredObject, identity: list[int]) -> None:
    payload = json.dumps(
        {
            "sha256": stored.sha256_hex,
            "content_type": stored.content_type,
            "content_encoding": stored.content_encoding,
            "file": identity,
        }
    ).encode()
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f"{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(payload)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        with suppress(OSError):
            os.unlink(tmp_name)
        raise


def _read_sidecar(path: Path) -> dict[str, Any] | None:
    """The sidecar's content if present and well-formed, else ``None``."""
    try:
        meta = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    if (
        isinstance(meta, dict)
        and is_sha256_hex(meta.get("sha256"))
        and isinstance(meta.get("content_type"), str)
        and meta["content_type"]
    ):
        return meta
    return None


def _makedirs_durably(folder: Path) -> None:
    """Create ``folder`` (and missing parents), fsyncing each parent that gained an entry.

    Raises ``FileExistsError`` when a file stands where a folder is needed.
    """
    missing: list[Path] = []
    current = folder
    while not current.is_dir() and current.parent != current:
        missing.append(current)
        current = current.parent
    for new in reversed(missing):
        try:
            new.mkdir()
        except FileExistsError:
            if not new.is_dir():
                raise
            continue  # a concurrent put created it (and fsyncs its parent)
        _fsync_dir(new.parent)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
