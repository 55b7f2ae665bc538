"""Behaviour of both object-store backends, the S3 one against a real SeaweedFS server."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from storage.objects import (
    CHUNK_SIZE,
    FileObjectStore,
    ObjectNotFound,
    ObjectReader,
    ObjectStore,
    ObjectStoreError,
    S3ObjectStore,
    StoredObject,
    open_object_store,
)
from tests.conftest import free_port
from tests.storage.conftest import S3Server

MiB = 1024 * 1024


class Source:
    """Deterministic, non-repeating test data produced chunk by chunk, hashed as it goes."""

    def __init__(self, size: int, chunk: int = MiB - 7) -> None:
        self.size = size
        self.chunk = chunk
        self.sha256 = hashlib.sha256()
        self._block = os.urandom(chunk)

    def __iter__(self) -> Iterator[bytes]:
        produced = 0
        index = 0
        while produced < self.size:
            n = min(self.chunk, self.size - produced)
            piece = (index.to_bytes(8, "big") + self._block[8:])[:n]
            self.sha256.update(piece)
            produced += n
            index += 1
            yield piece


def read_all(store: ObjectStore, key: str) -> bytes:
    return b"".join(store.get(key))


def digest_of(chunks: Iterator[bytes]) -> tuple[int, str, int]:
    """(size, sha256, largest chunk) of a streamed object, holding one chunk at a time."""
    digest = hashlib.sha256()
    size = largest = 0
    for chunk in chunks:
        digest.update(chunk)
        size += len(chunk)
        largest = max(largest, len(chunk))
    return size, digest.hexdigest(), largest


# -- both backends ------------------------------------------------------------------------


def test_stores_satisfy_the_protocol(any_store: ObjectStore) -> None:
    assert isinstance(any_store, ObjectStore)
    assert any_store.ping() is True
    any_store.ensure_ready()  # idempotent


def test_round_trip_bytes(any_store: ObjectStore) -> None:
    data = b"hello, object store \x00\xff"
    stored = any_store.put("docs/a.txt", data, content_type="text/plain")
    assert stored == StoredObject(
        "docs/a.txt", len(data), hashlib.sha256(data).hexdigest(), "text/plain"
    )
    assert read_all(any_store, "docs/a.txt") == data
    assert any_store.stat("docs/a.txt") == stored
    assert any_store.exists("docs/a.txt")


def test_put_from_file_object_and_empty_object(any_store: ObjectStore) -> None:
    stored = any_store.put("f/bin", io.BytesIO(b"x" * 3000), length=3000)
    assert stored.size == 3000
    assert read_all(any_store, "f/bin") == b"x" * 3000

    empty = any_store.put("f/empty", iter(()))
    assert empty.size == 0
    assert empty.sha256_hex == hashlib.sha256(b"").hexdigest()
    assert read_all(any_store, "f/empty") == b""
    assert any_store.stat("f/empty").content_type == "application/octet-stream"


def test_streamed_put_of_a_generator(any_store: ObjectStore) -> None:
    source = Source(20 * MiB + 123)
    stored = any_store.put("big/stream.bin", iter(source), content_type="application/dicom")
    assert stored.size == source.size
    assert stored.sha256_hex == source.sha256.hexdigest()

    reader = any_store.get("big/stream.bin")
    assert isinstance(reader, ObjectReader)
    size, sha, largest = digest_of(reader)
    assert (size, sha) == (source.size, source.sha256.hexdigest())
    assert largest <= CHUNK_SIZE

    assert any_store.stat("big/stream.bin") == stored


def test_ranges_of_an_object(any_store: ObjectStore) -> None:
    source = Source(3 * MiB + 17)
    whole = b"".join(source)
    any_store.put("r/obj", whole)
    size = len(whole)
    for offset, length in [
        (0, 10),
        (5, None),
        (MiB - 3, 7),  # across a chunk boundary
        (2 * MiB + 1, MiB + 16),  # to the very end
        (size - 1, 100),  # past the end: what there is
        (size, None),
        (size + 50, 10),
    ]:
        got = b"".join(any_store.get("r/obj", offset, length))
        end = size if length is None else offset + length
        assert got == whole[offset:end], (offset, length)
    assert b"".join(any_store.get("r/obj", 7, 0)) == b""
    with pytest.raises(ObjectNotFound):
        any_store.get("r/missing", 5, 5)
    with pytest.raises(ObjectNotFound):
        any_store.get("r/missing", 0, 0)
    for bad in [(-1, None), (0, -1), (True, None)]:
        with pytest.raises(ValueError):
            any_store.get("r/obj", *bad)


def test_missing_objects(any_store: ObjectStore) -> None:
    with pytest.raises(ObjectNotFound) as caught:
        any_store.get("nope/missing")
    assert caught.value.key == "nope/missing"
    with pytest.raises(ObjectNotFound):
        any_store.stat("nope/missing")
    assert not any_store.exists("nope/missing")


def test_delete_is_idempotent(any_store: ObjectStore) -> None:
    any_store.put("d/x", b"1")
    any_store.delete("d/x")
    assert not any_store.exists("d/x")
    with pytest.raises(ObjectNotFound):
        any_store.get("d/x")
    any_store.delete("d/x")
    any_store.delete("never/existed")


def test_overwrite_replaces_content_and_metadata(any_store: ObjectStore) -> None:
    any_store.put("o/k", b"first version", content_type="text/plain")
    second = any_store.put("o/k", b"second", content_type="application/json")
    assert read_all(any_store, "o/k") == b"second"
    assert any_store.stat("o/k") == second
    assert second.sha256_hex == hashlib.sha256(b"second").hexdigest()


def test_content_encoding_is_kept_and_a_new_put_forgets_it(any_store: ObjectStore) -> None:
    packed = gzip.compress(b'{"resourceType":"Patient"}\n')
    stored = any_store.put(
        "x/p.ndjson", packed, content_type="application/fhir+ndjson", content_encoding="gzip"
    )
    assert stored.content_encoding == "gzip"
    assert any_store.stat("x/p.ndjson") == stored
    assert read_all(any_store, "x/p.ndjson") == packed  # stored as given, not decoded
    assert any_store.put("x/p.ndjson", b"plain").content_encoding is None
    assert any_store.stat("x/p.ndjson").content_encoding is None
    with pytest.raises(ValueError):
        any_store.put("x/q", b"", content_encoding="gzip\r\nX-Evil: 1")


@pytest.mark.parametrize("length", [5, 7])
def test_length_mismatch_is_refused_and_keeps_the_old_object(
    any_store: ObjectStore, length: int
) -> None:
    any_store.put("l/k", b"old")
    with pytest.raises(ValueError, match="length"):
        any_store.put("l/k", iter([b"abc", b"def"]), length=length)
    assert read_all(any_store, "l/k") == b"old"


@pytest.mark.parametrize(
    "key",
    [
        "",
        "/abs",
        "../x",
        "a/../b",
        "a/./b",
        "a\\b",
        "a//b",
        "a/",
        ".hidden",
        "a/.b.meta.json",
        "nul\x00byte",
        "k" * 1025,
    ],
)
def test_invalid_keys_are_rejected(any_store: ObjectStore, key: str) -> None:
    with pytest.raises(ValueError):
        any_store.put(key, b"x")
    for operation in (any_store.get, any_store.stat, any_store.exists, any_store.delete):
        with pytest.raises(ValueError):
            operation(key)
    with pytest.raises(ValueError):
        any_store.presigned_get_url(key)


def test_bad_arguments(any_store: ObjectStore) -> None:
    with pytest.raises(TypeError):
        any_store.put("t/str", "text is not bytes")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        any_store.put("t/ct", b"x", content_type="text/plain\r\nX-Evil: 1")
    with pytest.raises(ValueError):
        any_store.put("t/len", b"x", length=-1)
    for seconds in (0, 3601):
        with pytest.raises(ValueError):
            any_store.presigned_get_url("t/x", expires_seconds=seconds)


def test_early_close_releases_the_reader(any_store: ObjectStore) -> None:
    any_store.put("c/k", iter(Source(3 * MiB)))
    with any_store.get("c/k") as reader:  # type: ignore[attr-defined]
        assert len(next(reader)) == CHUNK_SIZE
    assert list(reader) == []
    reader.close()  # idempotent
    assert any_store.stat("c/k").size == 3 * MiB  # the store is still usable


# -- file backend -------------------------------------------------------------------------


def test_file_presigned_url_is_none(file_store: FileObjectStore) -> None:
    file_store.put("p/k", b"x")
    assert file_store.presigned_get_url("p/k") is None


def test_file_layout_leaves_no_temporary_files(file_store: FileObjectStore) -> None:
    file_store.put("a/b/c.bin", b"data", content_type="image/png")
    names = sorted(p.name for p in (file_store.root / "a" / "b").iterdir())
    assert names == [".c.bin.meta.json", "c.bin"]
    assert (file_store.root / "a" / "b" / "c.bin").read_bytes() == b"data"


def test_file_stat_recovers_from_a_stale_or_missing_sidecar(file_store: FileObjectStore) -> None:
    """A crash between the data rename and the sidecar rename must not yield a wrong hash."""
    file_store.put("s/k", b"old content", content_type="text/plain")
    sidecar = file_store.root / "s" / ".k.meta.json"
    stale = sidecar.read_bytes()
    file_store.put("s/k", b"new content!", content_type="text/plain")
    sidecar.write_bytes(stale)  # as if the second put crashed before writing its sidecar
    stat = file_store.stat("s/k")
    assert stat.sha256_hex == hashlib.sha256(b"new content!").hexdigest()
    assert stat.size == len(b"new content!")
    sidecar.unlink()
    assert file_store.stat("s/k").sha256_hex == hashlib.sha256(b"new content!").hexdigest()


def test_file_key_cannot_be_both_object_and_folder(file_store: FileObjectStore) -> None:
    file_store.put("x", b"1")
    with pytest.raises(ObjectStoreError):
        file_store.put("x/y", b"2")
    with pytest.raises(ObjectNotFound):
        file_store.get("x/y")
    file_store.put("f/g", b"3")
    with pytest.raises(ObjectStoreError):
        file_store.put("f", b"4")
    with pytest.raises(ObjectNotFound):
        file_store.stat("f")
    assert not file_store.exists("f")
    file_store.delete("f")  # a folder is not an object: nothing to delete
    assert read_all(file_store, "f/g") == b"3"


def test_file_ping_false_when_folder_missing(tmp_path: Path) -> None:
    store = FileObjectStore(tmp_path / "later")
    assert store.ping() is False
    store.ensure_ready()
    assert store.ping() is True


# -- S3 backend ---------------------------------------------------------------------------


@pytest.mark.s3
def test_s3_presigned_url_downloads_the_object(s3_store: S3ObjectStore) -> None:
    s3_store.put("share/report.pdf", b"%PDF-1.7 fake", content_type="application/pdf")
    url = s3_store.presigned_get_url("share/report.pdf", expires_seconds=3600)
    assert url is not None and "X-Amz-Signature=" in url
    response = httpx.get(url, timeout=10)
    assert response.status_code == 200
    assert response.content == b"%PDF-1.7 fake"
    assert response.headers["content-type"] == "application/pdf"
    with pytest.raises(ValueError):
        s3_store.presigned_get_url("share/report.pdf", expires_seconds=3601)


@pytest.mark.s3
def test_s3_presigned_url_sends_the_content_encoding(s3_store: S3ObjectStore) -> None:
    lines = b'{"resourceType":"Patient","id":"a"}\n'
    s3_store.put("e/p.ndjson", gzip.compress(lines), content_encoding="gzip")
    url = s3_store.presigned_get_url("e/p.ndjson", expires_seconds=60)
    assert url is not None
    response = httpx.get(url, timeout=10)
    assert response.headers["content-encoding"] == "gzip"
    assert response.content == lines  # the client decoded it


@pytest.mark.s3
def test_s3_streamed_upload_memory_stays_flat(s3_store: S3ObjectStore) -> None:
    source = Source(64 * MiB, chunk=MiB)
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        stored = s3_store.put("mem/big.bin", iter(source))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert stored.size == 64 * MiB
    assert stored.sha256_hex == source.sha256.hexdigest()
    assert peak < 32 * MiB, f"peak traced memory {peak / MiB:.1f} MiB"


@pytest.mark.s3
def test_s3_prefix_and_no_staging_litter(s3_server: S3Server, s3_store: S3ObjectStore) -> None:
    prefixed = open_object_store(
        f"s3://{s3_store.bucket}/tenant-1/objects",
        endpoint=s3_server.endpoint,
        access_key=s3_server.access_key,
        secret_key=s3_server.secret_key,
    )
    prefixed.put("k", b"in prefix")
    with pytest.raises(ValueError):
        prefixed.put("k2", iter([b"short"]), length=10)
    names = sorted(
        str(o.object_name) for o in s3_server.client().list_objects(s3_store.bucket, recursive=True)
    )
    assert names == ["tenant-1/objects/k"]
    assert read_all(prefixed, "k") == b"in prefix"
    assert not s3_store.exists("k")


@pytest.mark.s3
def test_s3_bytes_in_one_part_go_straight_to_their_key_with_the_hash(
    s3_server: S3Server, s3_store: S3ObjectStore
) -> None:
    data = os.urandom(3 * MiB)
    stored = s3_store.put("one/put", data, content_type="application/dicom")
    assert stored.sha256_hex == hashlib.sha256(data).hexdigest()
    info = s3_server.client().stat_object(s3_store.bucket, "one/put")
    assert info.metadata["x-amz-meta-sha256"] == stored.sha256_hex
    assert s3_store.stat("one/put") == stored
    names = [str(o.object_name) for o in s3_server.client().list_objects(s3_store.bucket, "", True)]
    assert not [name for name in names if ".uploads" in name]
    with pytest.raises(ValueError):
        s3_store.put("one/put", b"short", length=10)
    assert read_all(s3_store, "one/put") == data  # the refused put left it as it was


@pytest.mark.s3
def test_s3_stat_hashes_objects_written_by_other_tools(
    s3_server: S3Server, s3_store: S3ObjectStore
) -> None:
    s3_server.client().put_object(
        s3_store.bucket, "foreign", io.BytesIO(b"no sha here"), length=11, content_type="text/csv"
    )
    stat = s3_store.stat("foreign")
    assert stat.sha256_hex == hashlib.sha256(b"no sha here").hexdigest()
    assert stat.content_type == "text/csv"


def test_s3_ping_false_when_unreachable() -> None:
    store = S3ObjectStore(
        "some-bucket", endpoint=f"http://127.0.0.1:{free_port()}", access_key="a", secret_key="b"
    )
    assert store.ping() is False


# -- open_object_store --------------------------------------------------------------------


def test_open_file_urls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    absolute = open_object_store(f"file://{tmp_path / 'abs'}")
    assert isinstance(absolute, FileObjectStore)
    assert absolute.root == tmp_path / "abs"
    monkeypatch.chdir(tmp_path)
    relative = open_object_store("file://rel/objects")
    assert isinstance(relative, FileObjectStore)
    assert relative.root == tmp_path / "rel" / "objects"


def test_open_s3_urls() -> None:
    store = open_object_store(
        "s3://emr-hub/some/prefix?region=eu-west-1",
        endpoint="https://s3.example.org",
        access_key="k",
        secret_key="s",
    )
    assert isinstance(store, S3ObjectStore)
    assert (store.bucket, store.prefix, store.region) == ("emr-hub", "some/prefix/", "eu-west-1")
    assert store.endpoint == "https://s3.example.org"


@pytest.mark.parametrize(
    ("url", "endpoint"),
    [
        ("ftp://host/x", None),
        ("/just/a/path", None),
        ("file://", None),
        ("s3://", "http://127.0.0.1:9000"),
        ("s3://Bad_Bucket", "http://127.0.0.1:9000"),
        ("s3://key:hunter2pw@bucket", "http://127.0.0.1:9000"),
        ("s3://bucket?colour=red", "http://127.0.0.1:9000"),
        ("s3://bucket/../x", "http://127.0.0.1:9000"),
        ("s3://bucket", "127.0.0.1:9000"),
        ("s3://bucket", "http://127.0.0.1:9000/path"),
    ],
)
def test_open_rejects_bad_urls(url: str, endpoint: str | None) -> None:
    with pytest.raises(ValueError) as caught:
        open_object_store(url, endpoint=endpoint)
    assert "hunter2pw" not in str(caught.value)
