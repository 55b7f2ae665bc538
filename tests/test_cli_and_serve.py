"""The CLI as an operator uses it, and `emr-hub serve` as a real process over real HTTP."""

from __future__ import annotations

import select
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest

from tests.conftest import free_port
from tests.processes import EMR_HUB, ApiServer, cli_env, wait_for

FIXTURES = Path(__file__).parent / "fixtures"


def run(
    args: list[str], env: dict[str, str], check: bool = True
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([EMR_HUB, *args], env=env, capture_output=True, text=True, timeout=120)
    if check and result.returncode != 0:
        raise AssertionError(f"emr-hub {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result


def test_demo_is_idempotent_and_clients_get_tokens(tmp_path: Path, database_url: str) -> None:
    env = cli_env(tmp_path, database_url)
    first = run(["demo"], env)
    assert first.stdout.count("secret:") == 4
    for client_id in ("bach-mai", "bac-ninh-general", "bac-ninh-district", "bac-ninh-commune"):
        assert f"client {client_id}" in first.stdout
    assert "demo resources written:" in first.stdout
    second = run(["demo"], env)
    assert "secret:" not in second.stdout
    assert second.stdout.count("already registered") == 4
    assert "nothing written" in second.stdout and "kept as you left them" not in second.stdout
    token = run(["token", "bach-mai"], env).stdout.strip()
    assert token.count(".") == 2 and "\n" not in token
    narrowed = run(["token", "bach-mai", "--scope", "system/Patient.rs"], env)
    assert narrowed.returncode == 0
    widened = run(["token", "bach-mai", "--scope", "user/*.cruds system/Nope.r"], env, check=False)
    assert widened.returncode != 0
    assert run(["token", "nobody"], env, check=False).returncode != 0


def test_client_add_prints_secret_once(tmp_path: Path) -> None:
    env = cli_env(tmp_path, f"sqlite:///{tmp_path / 'hub.db'}")
    organization = tmp_path / "vien-k.json"  # a client's Organization must be in the hub
    organization.write_bytes(
        orjson.dumps({"resourceType": "Organization", "id": "vien-k", "name": "Viện K"})
    )
    run(["import", str(organization)], env)
    added = run(
        [
            "client",
            "add",
            "vien-k",
            "--organization",
            "Organization/vien-k",
            "--scope",
            "system/Patient.rs",
        ],
        env,
    )
    secret = added.stdout.strip()
    assert len(secret) >= 32
    again = run(
        ["client", "add", "vien-k", "--organization", "Organization/vien-k"], env, check=False
    )
    assert again.returncode != 0 and "exists" in again.stderr
    bad_org = run(["client", "add", "x", "--organization", "vien-k"], env, check=False)
    assert bad_org.returncode != 0


def test_import_bundles_and_ndjson(tmp_path: Path, database_url: str) -> None:
    env = cli_env(tmp_path, database_url)
    ndjson = tmp_path / "patients.ndjson"
    lines = [
        orjson.dumps({"resourceType": "Patient", "id": "nd-1", "gender": "female"}),
        b"{not json",
        orjson.dumps({"resourceType": "Patient", "id": "nd-2", "nickname": "x"}),
        orjson.dumps({"resourceType": "Patient", "gender": "male"}),
    ]
    ndjson.write_bytes(b"\n".join(lines) + b"\n")
    result = run(
        [
            "import",
            str(FIXTURES / "00-hospital-information.json"),
            str(FIXTURES / "00-practitioner-information.json"),
            str(FIXTURES / "02-1484a42d-0eaf-4654-9cbf-6b050a5cd73b.json"),
            str(ndjson),
        ],
        env,
        check=False,
    )
    assert result.returncode == 1  # two bad NDJSON lines
    summary = result.stdout.strip().splitlines()[-1]
    bundle_entries = sum(
        len(orjson.loads((FIXTURES / name).read_bytes())["entry"])
        for name in (
            "00-hospital-information.json",
            "00-practitioner-information.json",
            "02-1484a42d-0eaf-4654-9cbf-6b050a5cd73b.json",
        )
    )
    assert summary.startswith(f"imported {bundle_entries + 2} resources from 4 files")
    assert summary.endswith("2 failed")
    assert "patients.ndjson:2" in result.stderr and "patients.ndjson:3" in result.stderr


@pytest.fixture
def server(tmp_path: Path, database_url: str) -> Iterator[tuple[str, dict[str, str]]]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = cli_env(tmp_path, database_url, EMR_HUB_BASE_URL=base)
    run(["demo"], env)
    api = ApiServer(env, port, tmp_path / "serve.log")
    try:
        api.wait_ready()
        yield base, env
    finally:
        api.stop()


def test_serve_process_over_real_http(server: tuple[str, dict[str, str]]) -> None:
    base, env = server
    assert httpx.get(f"{base}/readyz").json()["status"] == "ready"
    assert httpx.get(f"{base}/fhir/metadata").status_code == 200
    assert httpx.get(f"{base}/.well-known/jwks.json").json()["keys"]
    assert httpx.get(f"{base}/fhir/Organization/bach-mai").status_code == 401

    token = run(["token", "bach-mai"], env).stdout.strip()
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/fhir+json"}
    with httpx.Client(base_url=base, headers=headers, timeout=30) as client:
        organization = client.get("/fhir/Organization/bach-mai").json()
        assert organization["name"] == "Bệnh viện Bạch Mai"
        for name in (
            "00-hospital-information.json",
            "00-practitioner-information.json",
            "02-1484a42d-0eaf-4654-9cbf-6b050a5cd73b.json",
        ):
            response = client.post("/fhir", content=(FIXTURES / name).read_bytes())
            assert response.status_code == 200, response.text
            assert all(e["response"]["status"].startswith("20") for e in response.json()["entry"])
        patient = client.get(
            "/fhir/Patient",
            params={
                "identifier": "https://github.com/synthetichealth/synthea|1484a42d-0eaf-4654-9cbf-6b050a5cd73b"
            },
        ).json()
        assert patient["total"] == 1

        form = {
            "grant_type": "client_credentials",
            "client_id": "bach-mai",
            "client_secret": "wrong",
        }
        assert httpx.post(f"{base}/auth/token", data=form).status_code == 401


def test_logs_carry_no_identifiers(caplog: pytest.LogCaptureFixture, tmp_path: Path) -> None:
    """A search by CCCD is logged by route template; the number itself never reaches a log."""
    from fastapi.testclient import TestClient

    from emr_hub.hub import Hub
    from emr_hub.main import create_app
    from tests.conftest import make_settings
    from tests.fhir.conftest import token_for

    hub = Hub.from_settings(make_settings(tmp_path, f"sqlite:///{tmp_path / 'h.db'}"), migrate=True)
    cccd = "027185000123"
    with TestClient(create_app(hub)) as client, caplog.at_level("INFO"):
        headers = {"Authorization": f"Bearer {token_for(hub)}"}
        response = client.get(
            "/fhir/Patient",
            params={"identifier": f"http://fhir.hl7.org.vn/core/sid/cccd|{cccd}"},
            headers=headers,
        )
        assert response.status_code == 200
    records = [r for r in caplog.records if r.name == "emr_hub.access"]
    assert records and records[-1].fields["route"] == "/fhir/{resource_type}"  # type: ignore[attr-defined]
    # the httpx logger is the test client itself, not the server
    server_side = [r.getMessage() for r in caplog.records if r.name != "httpx"]
    assert server_side and not any(cccd in line for line in server_side)
    hub.close()


def demo_server(tmp_path: Path, **settings: str) -> tuple[ApiServer, int, str]:
    """The demo on SQLite and ``emr-hub serve`` started on it (the caller waits for it and
    stops it), with its port and a token of Bạch Mai's client."""
    port = free_port()
    env = cli_env(
        tmp_path,
        f"sqlite:///{tmp_path / 'hub.db'}",
        EMR_HUB_BASE_URL=f"http://127.0.0.1:{port}",
        **settings,
    )
    run(["demo"], env)
    token = run(["token", "bach-mai"], env).stdout.strip()
    return ApiServer(env, port, tmp_path / "serve.log"), port, token


def test_a_chunked_body_is_cut_at_the_limit_while_it_streams(tmp_path: Path) -> None:
    """A chunked body declares no length: the server counts it as it arrives and answers 413
    once the limit is passed, long before the sender is done (it never holds the whole)."""
    import socket

    limit = 1024 * 1024
    api, port, token = demo_server(tmp_path, EMR_HUB_MAX_REQUEST_BYTES=str(limit))
    sent, answer = 0, b""
    try:
        api.wait_ready()
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            sock.sendall(
                b"POST /fhir/Patient HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                b"Content-Type: application/fhir+json\r\nTransfer-Encoding: chunked\r\n"
                + f"Authorization: Bearer {token}\r\n\r\n".encode()
            )
            chunk = b" " * 65536
            framed = f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"
            sock.setblocking(False)
            deadline = time.monotonic() + 60  # a bound on a hung server, not a wait
            while sent < 64 * limit and not answer and time.monotonic() < deadline:
                try:
                    sock.sendall(framed)
                    sent += len(chunk)
                except (BlockingIOError, BrokenPipeError, ConnectionResetError):
                    pass
                try:
                    answer = sock.recv(4096)
                except BlockingIOError:
                    select.select([sock], [sock], [], 0.05)
    finally:
        api.stop()
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert sent < 16 * limit  # answered while the body was still coming


def test_a_client_that_disconnects_mid_body_is_not_an_error(tmp_path: Path) -> None:
    """The sender promises 100 kB, sends 100 bytes and hangs up: the server notes the request
    as closed by the client (499 in the access log), logs no error, and goes on serving."""
    import socket

    api, port, token = demo_server(tmp_path)
    log = api.log
    try:
        api.wait_ready()
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            sock.sendall(
                b"POST /fhir/Patient HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                b"Content-Type: application/fhir+json\r\nContent-Length: 100000\r\n"
                + f"Authorization: Bearer {token}\r\n\r\n".encode()
                + b'{"resourceType": "Patient", '
                + b" " * 72
            )
        wait_for(lambda: '"status":499' in log.read_text(), 30, "the access log line", log)
        assert httpx.get(f"{api.base}/healthz", timeout=5).status_code == 200
    finally:
        api.stop()
    lines = [orjson.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    assert not [line for line in lines if line["level"] in ("error", "critical")], lines
    assert any(line.get("status") == 499 for line in lines)
