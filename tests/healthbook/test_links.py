"""SMART Health Links through the app, on SQLite and PostgreSQL: the citizen makes a link, a
clinic without an account opens it with the passcode, and the files decrypt with the link's key
using jwcrypto (an independent JOSE library: the hub encrypts and signs with joserfc); wrong
passcodes, expiry, revocation, who may make a link, the access log, what the database keeps;
and passcode guesses made all at once against ``emr-hub serve --workers 2`` on PostgreSQL."""

from __future__ import annotations

import base64
import json
import threading
import zlib
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from jwcrypto import jwe, jwk, jws
from sqlalchemy import select, update

from emr_hub.demo import PATIENTS, load_demo
from emr_hub.fhir.persons import person_of_cccd
from emr_hub.healthbook.summary import content_digest
from emr_hub.hub import Hub
from emr_hub.security.audit.log import verify
from emr_hub.security.scopes import ScopeSet
from emr_hub.security.tokens import CITIZEN_SCOPE, issue_citizen_token
from storage.tables import HealthLink
from tests.conftest import free_port, make_settings
from tests.fhir.conftest import token_for
from tests.processes import EMR_HUB, ApiServer, ManagedProcess, cli_env

LAN = PATIENTS[0]
TOAN = PATIENTS[1]
PASSCODE = "482913"
RECIPIENT = "BS. Trần Minh — Phòng khám Đa khoa An Khang"
SHC = "application/smart-health-card"
FHIR_JSON = "application/fhir+json"


def citizen_headers(hub: Hub, cccd: str) -> dict[str, str]:
    token, _ = issue_citizen_token(hub, person_of_cccd(cccd), ScopeSet.parse(CITIZEN_SCOPE))
    return {"Authorization": f"Bearer {token}"}


def make_link(
    client: TestClient | httpx.Client, headers: dict[str, str], **overrides: Any
) -> dict[str, Any]:
    body = {
        "patient": f"Patient/{LAN.id}",
        "passcode": PASSCODE,
        "expiresIn": 7 * 86400,
        "label": "Sổ sức khỏe cho bác sĩ",
    } | overrides
    response = client.post("/health-links", json=body, headers=headers)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


def payload_of(shlink: str) -> dict[str, Any]:
    assert shlink.startswith("shlink:/")
    encoded = shlink.removeprefix("shlink:/")
    assert "=" not in encoded  # base64url without padding
    decoded: dict[str, Any] = json.loads(
        base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
    )
    return decoded


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def manifest_path(hub: Hub, payload: dict[str, Any]) -> str:
    url = str(payload["url"])
    assert url.startswith(hub.settings.base_url + "/shl/m/")
    return url.removeprefix(hub.settings.base_url)


def open_link(
    client: TestClient | httpx.Client, path: str, passcode: str = PASSCODE, **extra: Any
) -> httpx.Response:
    body = {"recipient": RECIPIENT, "passcode": passcode} | extra
    return client.post(path, json=body)


def decrypt(token: str, key: str, content_type: str) -> Any:
    """The plaintext of a JWE file, decrypted by jwcrypto, after checking its header."""
    message = jwe.JWE()
    message.deserialize(token, key=jwk.JWK(kty="oct", k=key))
    header = message.jose_header
    assert header["alg"] == "dir" and header["enc"] == "A256GCM"
    assert header["cty"] == content_type
    return json.loads(message.payload)


def verified_card(client: TestClient, card: str) -> dict[str, Any]:
    """The payload of a health card, its signature checked by jwcrypto against the JWKS the
    app publishes."""
    keys = jwk.JWKSet.from_json(client.get("/.well-known/jwks.json").text)
    signed = jws.JWS()
    signed.deserialize(card)
    header = signed.jose_header
    assert header["zip"] == "DEF" and header["alg"] == "ES256"
    key = keys.get_key(header["kid"])
    assert key is not None, "the card's key is not in the JWKS"
    signed.verify(key)
    verified: dict[str, Any] = json.loads(zlib.decompress(signed.objects["payload"], -15))
    return verified


def files_by_type(manifest: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {entry["contentType"]: entry for entry in manifest["files"]}


def access_entries(client: TestClient, headers: dict[str, str]) -> list[dict[str, Any]]:
    """The parts of each access-log entry that names the recipient as who accessed."""
    response = client.get(f"/fhir/Patient/{LAN.id}/$access-log?_count=500", headers=headers)
    assert response.status_code == 200, response.text
    entries = []
    for parameter in response.json()["parameter"]:
        if parameter["name"] != "access":
            continue
        parts = {part["name"]: part for part in parameter["part"]}
        if parts.get("recipient", {}).get("valueString") == RECIPIENT:
            entries.append(parts)
    return entries


# ---------------------------------------------------------------------- the link
def test_the_link_payload_follows_the_spec(demo_hub: Hub, client: TestClient) -> None:
    before = datetime.now(UTC)
    created = make_link(client, citizen_headers(demo_hub, LAN.cccd), expiresIn=3600)
    payload = payload_of(created["shlink"])
    assert set(payload) == {"url", "key", "exp", "flag", "label", "v"}
    assert payload["flag"] == "P" and payload["v"] == 1
    assert payload["label"] == "Sổ sức khỏe cho bác sĩ"
    assert len(payload["key"]) == 43 and len(b64url_decode(payload["key"])) == 32
    secret = manifest_path(demo_hub, payload).removeprefix("/shl/m/")
    assert len(secret) == 43 and len(b64url_decode(secret)) == 32  # 256 bits
    assert len(payload["url"]) <= 128
    assert payload["url"] == created["url"]
    expected = (before + timedelta(seconds=3600)).timestamp()
    assert expected - 5 <= payload["exp"] <= expected + 5
    other = payload_of(make_link(client, citizen_headers(demo_hub, LAN.cccd))["shlink"])
    assert other["key"] != payload["key"] and other["url"] != payload["url"]


def test_the_manifest_holds_her_card_and_summary_encrypted_with_the_link_key(
    demo_hub: Hub, client: TestClient
) -> None:
    headers = citizen_headers(demo_hub, LAN.cccd)
    payload = payload_of(make_link(client, headers)["shlink"])
    response = open_link(client, manifest_path(demo_hub, payload))
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.headers["cache-control"] == "no-store"
    files = files_by_type(response.json())
    assert set(files) == {SHC, FHIR_JSON}

    summary = decrypt(files[FHIR_JSON]["embedded"], payload["key"], FHIR_JSON)
    assert summary["resourceType"] == "Bundle" and summary["type"] == "document"
    patients = [
        e["resource"] for e in summary["entry"] if e["resource"]["resourceType"] == "Patient"
    ]
    assert [p["id"] for p in patients] == [LAN.id]
    own = client.get(f"/fhir/Patient/{LAN.id}/$summary", headers=headers)
    assert content_digest(summary) == content_digest(own.json())  # her current summary

    shc = decrypt(files[SHC]["embedded"], payload["key"], SHC)
    (card,) = shc["verifiableCredential"]
    claims = verified_card(client, card)
    assert claims["iss"] == demo_hub.settings.base_url
    fhir_bundle = claims["vc"]["credentialSubject"]["fhirBundle"]
    (card_patient,) = [
        e["resource"] for e in fhir_bundle["entry"] if e["resource"]["resourceType"] == "Patient"
    ]
    assert card_patient["name"] == patients[0]["name"]
    assert card_patient["birthDate"] == patients[0]["birthDate"]

    with pytest.raises(jwe.InvalidJWEData):  # another key opens nothing
        decrypt(files[FHIR_JSON]["embedded"], jwk.JWK.generate(kty="oct", size=256).k, FHIR_JSON)


def test_past_embedded_length_max_the_files_come_by_a_one_time_location(
    demo_hub: Hub, client: TestClient
) -> None:
    payload = payload_of(make_link(client, citizen_headers(demo_hub, LAN.cccd))["shlink"])
    response = open_link(client, manifest_path(demo_hub, payload), embeddedLengthMax=0)
    assert response.status_code == 200, response.text
    files = files_by_type(response.json())
    for content_type, entry in files.items():
        assert "embedded" not in entry
        location = entry["location"]
        assert location.startswith(demo_hub.settings.base_url + "/shl/f/")
        fetched = client.get(location.removeprefix(demo_hub.settings.base_url))
        assert fetched.status_code == 200
        assert fetched.headers["content-type"] == "application/jose"
        content = decrypt(fetched.text, payload["key"], content_type)
        assert ("verifiableCredential" in content) == (content_type == SHC)
        again = client.get(location.removeprefix(demo_hub.settings.base_url))
        assert again.status_code == 404  # used once

    small = open_link(client, manifest_path(demo_hub, payload), embeddedLengthMax=10**7)
    assert all("embedded" in entry for entry in small.json()["files"])


def test_the_link_shows_her_record_as_it_is_when_opened(demo_hub: Hub, client: TestClient) -> None:
    payload = payload_of(make_link(client, citizen_headers(demo_hub, LAN.cccd))["shlink"])
    path = manifest_path(demo_hub, payload)

    def allergies() -> list[str]:
        files = files_by_type(open_link(client, path).json())
        summary = decrypt(files[FHIR_JSON]["embedded"], payload["key"], FHIR_JSON)
        return [
            e["resource"]["code"]["text"]
            for e in summary["entry"]
            if e["resource"]["resourceType"] == "AllergyIntolerance"
        ]

    before = allergies()
    allergy = {
        "resourceType": "AllergyIntolerance",
        "patient": {"reference": f"Patient/{LAN.id}"},
        "code": {"text": "Penicillin"},
        "criticality": "high",
    }
    hospital = {"Authorization": f"Bearer {token_for(demo_hub, client_id='bach-mai')}"}
    posted = client.post("/fhir/AllergyIntolerance", json=allergy, headers=hospital)
    assert posted.status_code == 201, posted.text
    assert allergies() == [*before, "Penicillin"]


# ------------------------------------------------------------------- passcodes
def test_a_wrong_passcode_answers_401_with_the_attempts_left(
    demo_hub: Hub, client: TestClient
) -> None:
    headers = citizen_headers(demo_hub, LAN.cccd)
    created = make_link(client, headers)
    path = manifest_path(demo_hub, payload_of(created["shlink"]))
    limit = demo_hub.settings.health_link_attempts
    first = open_link(client, path, passcode="000000")
    assert first.status_code == 401 and first.json() == {"remainingAttempts": limit - 1}
    assert open_link(client, path, passcode="").json() == {"remainingAttempts": limit - 2}
    assert open_link(client, path).status_code == 200  # a right passcode costs nothing
    (listed,) = client.get("/health-links", headers=headers).json()["links"]
    assert listed["id"] == created["id"] and listed["remainingAttempts"] == limit - 2
    answers = [open_link(client, path, passcode=f"{n:06d}") for n in range(limit - 2)]
    assert [a.json()["remainingAttempts"] for a in answers] == list(range(limit - 3, -1, -1))
    exhausted = open_link(client, path)  # even the right passcode: the link has stopped
    assert exhausted.status_code == 404
    assert exhausted.json()["resourceType"] == "OperationOutcome"


def test_an_expired_link_is_refused(demo_hub: Hub, client: TestClient) -> None:
    created = make_link(client, citizen_headers(demo_hub, LAN.cccd), expiresIn=3600)
    path = manifest_path(demo_hub, payload_of(created["shlink"]))
    issued = open_link(client, path, embeddedLengthMax=0)
    location = issued.json()["files"][0]["location"].removeprefix(demo_hub.settings.base_url)
    with demo_hub.db.transaction() as session:  # an hour passes
        session.execute(
            update(HealthLink)
            .where(HealthLink.id == created["id"])
            .values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )
    assert open_link(client, path).status_code == 404
    assert open_link(client, path, passcode="000000").status_code == 404  # no guessing either
    assert client.get(location).status_code == 404


def test_a_revoked_link_is_refused(demo_hub: Hub, client: TestClient) -> None:
    headers = citizen_headers(demo_hub, LAN.cccd)
    created = make_link(client, headers)
    kept = make_link(client, headers, label="Giữ lại")
    path = manifest_path(demo_hub, payload_of(created["shlink"]))
    issued = open_link(client, path, embeddedLengthMax=0)
    location = issued.json()["files"][1]["location"].removeprefix(demo_hub.settings.base_url)

    revoked = client.delete(f"/health-links/{created['id']}", headers=headers)
    assert revoked.status_code == 200, revoked.text
    assert revoked.json()["active"] is False and "revoked" in revoked.json()
    assert open_link(client, path).status_code == 404
    assert client.get(location).status_code == 404
    listed = {
        link["id"]: link for link in client.get("/health-links", headers=headers).json()["links"]
    }
    assert listed[created["id"]]["active"] is False and listed[kept["id"]]["active"] is True
    kept_path = manifest_path(demo_hub, payload_of(kept["shlink"]))
    assert open_link(client, kept_path).status_code == 200  # her other link still works

    toan = citizen_headers(demo_hub, TOAN.cccd)
    assert client.delete(f"/health-links/{kept['id']}", headers=toan).status_code == 404
    assert open_link(client, kept_path).status_code == 200


# ------------------------------------------------------------------------- who
def test_only_the_citizen_herself_makes_a_link_to_her_record(
    demo_hub: Hub, client: TestClient
) -> None:
    body = {"patient": f"Patient/{LAN.id}", "passcode": PASSCODE, "expiresIn": 3600}
    toan = citizen_headers(demo_hub, TOAN.cccd)
    assert client.post("/health-links", json=body, headers=toan).status_code == 404
    assert client.get("/health-links", headers=toan).json() == {"links": []}
    hospital = {"Authorization": f"Bearer {token_for(demo_hub, client_id='bach-mai')}"}
    refused = client.post("/health-links", json=body, headers=hospital)
    assert refused.status_code == 403
    assert refused.json()["resourceType"] == "OperationOutcome"
    assert client.post("/health-links", json=body).status_code == 401
    assert client.get("/health-links").status_code == 401
    with demo_hub.db.snapshot() as session:
        assert session.scalars(select(HealthLink)).all() == []


def test_bad_input_is_refused_and_nothing_is_written(demo_hub: Hub, client: TestClient) -> None:
    headers = citizen_headers(demo_hub, LAN.cccd)
    good = {"patient": f"Patient/{LAN.id}", "passcode": PASSCODE, "expiresIn": 3600}
    too_long = (demo_hub.settings.health_link_max_days + 1) * 86400
    for change in (
        {"passcode": "123"},
        {"passcode": None},
        {"expiresIn": 0},
        {"expiresIn": "3600"},
        {"expiresIn": too_long},
        {"label": "x" * 81},
        {"patient": 7},
    ):
        response = client.post("/health-links", json=good | change, headers=headers)
        assert response.status_code == 400, (change, response.text)
        assert response.json()["resourceType"] == "OperationOutcome"
    with demo_hub.db.snapshot() as session:
        assert session.scalars(select(HealthLink)).all() == []

    path = manifest_path(demo_hub, payload_of(make_link(client, headers)["shlink"]))
    bad_bodies: list[Any] = [
        {"passcode": PASSCODE},
        {"recipient": " ", "passcode": PASSCODE},
        {"recipient": RECIPIENT, "passcode": 482913},
        {"recipient": RECIPIENT, "passcode": PASSCODE, "embeddedLengthMax": -1},
        [],
    ]
    for body in bad_bodies:
        response = client.post(path, json=body)
        assert response.status_code == 400, (body, response.text)
    assert (
        client.post(path, content=b"{", headers={"Content-Type": "application/json"}).status_code
        == 400
    )
    (listed,) = client.get("/health-links", headers=headers).json()["links"]
    assert listed["remainingAttempts"] == demo_hub.settings.health_link_attempts  # none taken
    assert open_link(client, "/shl/m/" + "A" * 43).status_code == 404
    assert open_link(client, "/shl/m/short").status_code == 404
    assert client.get("/shl/f/" + "A" * 43).status_code == 404


def test_the_database_keeps_nothing_that_opens_the_link(demo_hub: Hub, client: TestClient) -> None:
    created = make_link(client, citizen_headers(demo_hub, LAN.cccd))
    payload = payload_of(created["shlink"])
    secret = manifest_path(demo_hub, payload).removeprefix("/shl/m/")
    with demo_hub.db.snapshot() as session:
        (row,) = session.scalars(select(HealthLink)).all()
        columns = row.model_dump()
    stored = " ".join(str(value) for value in columns.values())
    for clear in (payload["key"], secret, PASSCODE, b64url_decode(payload["key"]).hex()):
        assert clear not in stored
    assert columns["sealed_key"].startswith("v1.")


# ------------------------------------------------------------------------ audit
def test_every_manifest_request_is_in_her_access_log(demo_hub: Hub, client: TestClient) -> None:
    headers = citizen_headers(demo_hub, LAN.cccd)
    created = make_link(client, headers)
    path = manifest_path(demo_hub, payload_of(created["shlink"]))
    assert open_link(client, path).status_code == 200
    assert open_link(client, path, passcode="999999").status_code == 401
    assert open_link(client, path, embeddedLengthMax=0).status_code == 200
    client.delete(f"/health-links/{created['id']}", headers=headers)
    assert open_link(client, path).status_code == 404
    entries = access_entries(client, headers)  # newest first
    assert [e["outcome"]["valueCode"] for e in entries] == ["4", "0", "4", "0"]
    for entry in entries:
        assert entry["what"]["valueCoding"]["code"] == "operation"
        assert entry["operation"]["valueString"] == "$shl-manifest"
        assert "practitioner" not in entry  # a name she was given, not a practitioner's id
        assert entry["breakGlass"]["valueBoolean"] is False
    disclosed = set(entries[1]["data"]["valueString"].split(","))
    assert "Patient" in disclosed and "Condition" in disclosed
    assert "data" not in entries[0] and "data" not in entries[2]  # refused: nothing disclosed
    toan = citizen_headers(demo_hub, TOAN.cccd)
    toan_log = client.get(f"/fhir/Patient/{TOAN.id}/$access-log", headers=toan).json()
    assert RECIPIENT not in json.dumps(toan_log, ensure_ascii=False)
    assert verify(demo_hub.db).intact  # the records are links of the hash chain


# -------------------------------------------------------------- parallel guesses
class TwoWorkerServer(ApiServer):
    """``emr-hub serve --workers 2``: guesses land in two processes at once."""

    def __init__(self, env: dict[str, str], port: int, log: Path) -> None:
        self.base = f"http://127.0.0.1:{port}"
        command = [EMR_HUB, "serve", "--port", str(port), "--workers", "2"]
        ManagedProcess.__init__(self, command, env, log)


def test_parallel_guesses_never_check_more_passcodes_than_the_limit(
    tmp_path: Path, postgres_url: str
) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    hub = Hub.from_settings(make_settings(tmp_path, postgres_url, base_url=base), migrate=True)
    load_demo(hub)
    server = TwoWorkerServer(
        cli_env(tmp_path, postgres_url, EMR_HUB_BASE_URL=base), port, tmp_path / "serve.log"
    )
    guesses = 40
    limit = hub.settings.health_link_attempts
    try:
        server.wait_ready(120)  # two processes start on a busy machine
        with httpx.Client(base_url=base, timeout=60) as http:
            headers = citizen_headers(hub, LAN.cccd)
            payload = payload_of(make_link(http, headers)["shlink"])
            path = manifest_path(hub, payload)
            start = threading.Barrier(guesses)
            answers: list[httpx.Response] = []
            lock = threading.Lock()

            def guess(n: int) -> None:
                with httpx.Client(base_url=base, timeout=60) as own:
                    start.wait()
                    answer = open_link(own, path, passcode=f"{100000 + n}")
                with lock:
                    answers.append(answer)

            threads = [threading.Thread(target=guess, args=(n,)) for n in range(guesses)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            checked = [a for a in answers if a.status_code == 401]
            refused = [a for a in answers if a.status_code == 404]
            assert len(checked) == limit and len(refused) == guesses - limit
            # each check took its own attempt: the counts left are limit-1 ... 0, once each
            remaining = sorted(a.json()["remainingAttempts"] for a in checked)
            assert remaining == list(range(limit))
            assert open_link(http, path).status_code == 404  # the right passcode too, now
            with hub.db.snapshot() as session:
                left = session.scalars(select(HealthLink.attempts_left)).all()
            assert left == [0]
            log = http.get(f"/fhir/Patient/{LAN.id}/$access-log?_count=500", headers=headers)
            assert log.text.count(RECIPIENT) == guesses + 1
    finally:
        server.stop()
        hub.close()
