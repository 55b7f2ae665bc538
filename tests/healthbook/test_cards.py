"""SMART Health Cards through the app, on SQLite and PostgreSQL: every card verifies with
jwcrypto (a library the hub does not sign with) against the JWKS the app serves over HTTP;
header, payload and the minimized Bundle as the spec says; the compact card and its QR code;
the file form; the operation's parameters; key rotation; who may have a card."""

from __future__ import annotations

import base64
import json
import os
import struct
import subprocess
import threading
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import segno
from fastapi.testclient import TestClient
from jwcrypto import jwk, jws
from pydantic import SecretStr
from sqlalchemy import select

from emr_hub.healthbook.card_keys import (
    NEXT,
    ROTATED,
    SIGNING,
    card_signing_key,
    list_card_keys,
    rotate_card_key,
)
from emr_hub.healthbook.credentials import issue_compact_card, issue_full_card
from emr_hub.healthbook.qr import qr_images
from emr_hub.hub import Hub
from emr_hub.main import create_app
from emr_hub.security.keys import signing_key
from storage.db import Database, as_utc
from storage.tables import HealthCardKey
from tests.conftest import make_settings
from tests.fhir.conftest import Api, token_for
from tests.healthbook.test_summary import LAN, TOAN, citizen, hospital, post_records
from tests.processes import EMR_HUB, cli_env

HEALTH_CARD = "https://smarthealth.cards#health-card"
IMMUNIZATION_CARD = "https://smarthealth.cards#immunization"
LABORATORY_CARD = "https://smarthealth.cards#laboratory"
MAX_QR_JWS = 1195
COMPACT_TYPES = {"Patient", "AllergyIntolerance", "Condition", "Immunization"}


@pytest.fixture
def lan(demo_hub: Hub, client: TestClient) -> Api:
    """Nguyễn Thị Lan with records of every kind Bạch Mai posted."""
    post_records(hospital(demo_hub, client, "bach-mai"), f"Patient/{LAN.id}")
    return citizen(demo_hub, client, LAN.cccd)


def parameters(*pairs: tuple[str, str, str]) -> dict[str, Any]:
    return {
        "resourceType": "Parameters",
        "parameter": [{"name": name, kind: value} for name, kind, value in pairs],
    }


def issue(api: Api, patient_id: str, *pairs: tuple[str, str, str]) -> Any:
    body = parameters(*(pairs or (("credentialType", "valueUri", "Patient"),)))
    return api.post(f"/Patient/{patient_id}/$health-cards-issue", body)


def issued_cards(api: Api, patient_id: str, *pairs: tuple[str, str, str]) -> list[str]:
    response = issue(api, patient_id, *pairs)
    assert response.status_code == 200, response.text
    out = response.json()
    assert out["resourceType"] == "Parameters"
    return [p["valueString"] for p in out["parameter"] if p["name"] == "verifiableCredential"]


def served_keys(client: TestClient) -> jwk.JWKSet:
    response = client.get("/.well-known/jwks.json")
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == "*"  # browser verifiers
    return jwk.JWKSet.from_json(response.text)


def unpadded(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def verified(card: str, keys: jwk.JWKSet) -> tuple[dict[str, Any], dict[str, Any]]:
    """(header, payload) of a card that jwcrypto verifies with the served key its kid names;
    the payload inflated from raw DEFLATE as the spec says."""
    header = json.loads(unpadded(card.split(".")[0]))
    key = keys.get_key(header["kid"])
    assert key is not None, "the card's kid is not in the served JWKS"
    token = jws.JWS()
    token.deserialize(card)
    token.verify(key, alg="ES256")  # raises InvalidJWSSignature
    payload = json.loads(zlib.decompress(token.payload, wbits=-15))
    return header, payload


def fhir_bundle(payload: dict[str, Any]) -> dict[str, Any]:
    bundle: dict[str, Any] = payload["vc"]["credentialSubject"]["fhirBundle"]
    return bundle


def walk(value: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """Every (path, object) under ``value``."""
    if isinstance(value, dict):
        yield path, value
        for name, child in value.items():
            yield from walk(child, f"{path}.{name}")
    elif isinstance(value, list):
        for child in value:
            yield from walk(child, path)


def test_cards_verify_with_another_library_and_follow_the_spec(
    demo_hub: Hub, client: TestClient, lan: Api
) -> None:
    cards = issued_cards(lan, LAN.id)
    assert len(cards) == 2  # the whole book, then the compact card
    keys = served_keys(client)
    token_kid = signing_key(demo_hub).kid
    for card in cards:
        header, payload = verified(card, keys)
        assert set(header) == {"zip", "alg", "kid"}
        assert header["zip"] == "DEF" and header["alg"] == "ES256"
        card_key = keys.get_key(header["kid"])
        assert header["kid"] == card_key.thumbprint()  # RFC 7638, SHA-256
        assert header["kid"] != token_kid  # a key of its own, not the access-token key
        public = card_key.export_public(as_dict=True)
        assert public["use"] == "sig" and public["alg"] == "ES256" and public["crv"] == "P-256"
        assert "d" not in public
        assert payload["iss"] == demo_hub.settings.base_url.rstrip("/")
        assert not payload["iss"].endswith("/")
        assert abs(payload["nbf"] - datetime.now(UTC).timestamp()) < 60
        assert HEALTH_CARD in payload["vc"]["type"]
        assert IMMUNIZATION_CARD in payload["vc"]["type"]  # Lan has immunizations
        # Lab results are in the whole book, not in the compact card.
        assert (LABORATORY_CARD in payload["vc"]["type"]) == (card == cards[0])
        subject = payload["vc"]["credentialSubject"]
        assert subject["fhirVersion"] == "4.0.1"
        bundle = subject["fhirBundle"]
        assert bundle["resourceType"] == "Bundle" and bundle["type"] == "collection"
        urls = [entry["fullUrl"] for entry in bundle["entry"]]
        assert urls == [f"resource:{n}" for n in range(len(urls))]
        for entry in bundle["entry"]:
            resource = entry["resource"]
            assert "id" not in resource and "meta" not in resource and "text" not in resource
        references = 0
        for path, value in walk(bundle):
            if "reference" in value:
                assert value["reference"] in urls, (path, value)  # resolves inside the card
                references += 1
            if path.endswith(".coding"):
                assert "display" not in value, path
        assert references >= len(urls) - 1  # each entry points at least at the patient


def test_the_whole_card_holds_the_summary_and_links_back(
    demo_hub: Hub, client: TestClient, lan: Api
) -> None:
    summary = lan.get(f"/Patient/{LAN.id}/$summary").json()
    in_summary = [e["fullUrl"] for e in summary["entry"][1:]]  # after the Composition
    response = issue(lan, LAN.id)
    out = response.json()["parameter"]
    full, compact = (p["valueString"] for p in out if p["name"] == "verifiableCredential")
    links: dict[int, dict[str, str]] = {0: {}, 1: {}}
    for parameter in out:
        if parameter["name"] == "resourceLink":
            parts = {part["name"]: part for part in parameter["part"]}
            index = parts["vcIndex"]["valueInteger"]
            links[index][parts["bundledResource"]["valueUri"]] = parts["hostedResource"]["valueUri"]
    _, payload = verified(full, served_keys(client))
    entries = fhir_bundle(payload)["entry"]
    assert [links[0][e["fullUrl"]] for e in entries] == in_summary  # same resources, in order
    summary_resources = {e["fullUrl"]: e["resource"] for e in summary["entry"]}
    for entry in entries:
        source = summary_resources[links[0][entry["fullUrl"]]]
        assert entry["resource"]["resourceType"] == source["resourceType"]
    patient = entries[0]["resource"]
    assert patient["resourceType"] == "Patient"
    assert patient["name"][0]["family"] == LAN.family
    assert patient["birthDate"] == LAN.birth_date
    _, compact_payload = verified(compact, served_keys(client))
    compact_entries = fhir_bundle(compact_payload)["entry"]
    assert [links[1][e["fullUrl"]] for e in compact_entries] == list(links[1].values())


def test_the_compact_card_fits_a_qr_code_and_holds_what_it_should(
    demo_hub: Hub, client: TestClient, lan: Api
) -> None:
    summary = lan.get(f"/Patient/{LAN.id}/$summary").json()
    sections = {
        s["code"]["coding"][0]["code"]: [e["reference"] for e in s.get("entry", [])]
        for s in summary["entry"][0]["resource"]["section"]
    }
    wanted = sections["48765-2"] + sections["11450-4"] + sections["11369-6"]
    response = issue(lan, LAN.id)
    out = response.json()["parameter"]
    compact = [p["valueString"] for p in out if p["name"] == "verifiableCredential"][1]
    assert len(compact) <= MAX_QR_JWS
    _, payload = verified(compact, served_keys(client))
    entries = fhir_bundle(payload)["entry"]
    assert {e["resource"]["resourceType"] for e in entries} == COMPACT_TYPES
    patient = entries[0]["resource"]
    assert set(patient) == {"resourceType", "name", "birthDate", "gender"}  # no CCCD
    hosted = [
        {part["name"]: part for part in p["part"]}["hostedResource"]["valueUri"]
        for p in out
        if p["name"] == "resourceLink" and p["part"][0]["valueInteger"] == 1
    ]
    assert hosted[0].endswith(f"/Patient/{LAN.id}")
    assert hosted[1:] == wanted  # allergies, active problems, immunizations: all fit
    conditions = [e["resource"] for e in entries if e["resource"]["resourceType"] == "Condition"]
    assert {c["code"].get("text") for c in conditions} >= {"Đái tháo đường típ 2", "Hen phế quản"}
    assert "Gãy xương cẳng tay" not in {c["code"].get("text") for c in conditions}  # resolved


def test_a_compact_card_too_big_for_a_qr_code_is_cut_at_the_tail(
    demo_hub: Hub, client: TestClient, lan: Api
) -> None:
    """Sixty vaccinations do not fit one QR code: the card keeps the allergies and problems
    and the newest vaccinations that fit, and says how many it left out."""
    bach_mai = hospital(demo_hub, client, "bach-mai")
    vaccinations = [
        {
            "resource": {
                "resourceType": "Immunization", "status": "completed",
                "patient": {"reference": f"Patient/{LAN.id}"},
                "vaccineCode": {"coding": [{"system": "http://hl7.org/fhir/sid/cvx",
                                            "code": str(100 + n)}]},
                "occurrenceDateTime": f"{1960 + n}-03-01",
            },
            "request": {"method": "POST", "url": "Immunization"},
        }
        for n in range(60)
    ]  # fmt: skip
    posted = bach_mai.post("", {"resourceType": "Bundle", "type": "transaction",
                                "entry": vaccinations})  # fmt: skip
    assert posted.status_code == 200, posted.text
    summary = lan.get(f"/Patient/{LAN.id}/$summary").json()
    sections = {
        s["code"]["coding"][0]["code"]: [e["reference"] for e in s.get("entry", [])]
        for s in summary["entry"][0]["resource"]["section"]
    }
    wanted = sections["48765-2"] + sections["11450-4"] + sections["11369-6"]
    card = issue_compact_card(demo_hub, summary)
    assert len(card.jws) <= MAX_QR_JWS
    base = demo_hub.settings.fhir_base_url
    kept = [f"{base}/{source}" for source in card.sources[1:]]
    assert 0 < len(kept) < len(wanted)
    assert kept == wanted[: len(kept)]  # allergies, problems, then the newest vaccinations
    assert card.left_out == len(wanted) - len(kept)
    # One more entry would not have fitted: the cut is where the limit is.
    by_url = {e["fullUrl"]: e for e in summary["entry"]}
    one_more = [by_url[f"{base}/Patient/{LAN.id}"], *(by_url[u] for u in wanted[: len(kept) + 1])]
    compact_patient = ("name", "birthDate", "gender")
    longer = issue_full_card(demo_hub, {"entry": one_more}, identity_claims=compact_patient)
    assert len(longer.jws) > MAX_QR_JWS
    _, payload = verified(card.jws, served_keys(client))
    assert len(fhir_bundle(payload)["entry"]) == len(card.sources)
    png, _ = qr_images(card.jws)
    assert len(png_modules(png)) <= 17 + 4 * 22


def test_the_qr_code_carries_the_compact_card(demo_hub: Hub, client: TestClient, lan: Api) -> None:
    png = lan.get(f"/Patient/{LAN.id}/$health-card-qr")
    assert png.status_code == 200, png.text
    assert png.headers["content-type"] == "image/png"
    assert png.headers["cache-control"] == "no-store"
    served = png_modules(png.content)
    assert len(served) <= 17 + 4 * 22  # QR version 22 at most
    svg = lan.get(f"/Patient/{LAN.id}/$health-card-qr", params={"format": "svg"})
    assert svg.status_code == 200 and svg.headers["content-type"].startswith("image/svg+xml")
    assert svg.text.startswith("<svg")
    # Each request signs anew (ES256 signatures are randomised), so compare the code drawn
    # for one card with the spec's encoding of that card, done here by hand.
    file = lan.get(f"/Patient/{LAN.id}/$health-card", params={"card": "compact"}).json()
    card = file["verifiableCredential"][0]
    png_bytes, svg_text = qr_images(card)
    assert svg_text.startswith("<svg")
    numeric = "shc:/" + "".join(f"{ord(c) - 45:02d}" for c in card)
    assert decode_shc(numeric) == card
    expected = segno.make(["shc:/", numeric[5:]], error="L", micro=False, boost_error=False)
    assert expected.version <= 22 and expected.error == "L"
    assert png_modules(png_bytes) == [[bool(m) for m in row] for row in expected.matrix]
    assert len(served) == len(expected.matrix)  # the served card: the same size
    bad = lan.get(f"/Patient/{LAN.id}/$health-card-qr", params={"format": "gif"})
    assert bad.status_code == 400 and bad.json()["resourceType"] == "OperationOutcome"


def decode_shc(numeric: str) -> str:
    assert numeric.startswith("shc:/")
    digits = numeric[5:]
    return "".join(chr(int(digits[i : i + 2]) + 45) for i in range(0, len(digits), 2))


def png_modules(data: bytes, border: int = 4) -> list[list[bool]]:
    """The dark modules of a QR PNG (greyscale or palette, 1 to 8 bits a pixel, unfiltered by
    hand): what the image shows, read without the code that drew it."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    offset, chunks, header = 8, b"", b""
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset : offset + 4])
        kind = data[offset + 4 : offset + 8]
        body = data[offset + 8 : offset + 8 + length]
        if kind == b"IHDR":
            header = body
        elif kind == b"IDAT":
            chunks += body
        offset += 12 + length
    width, height, depth, colour = struct.unpack(">IIBB", header[:10])
    assert colour in (0, 3) and depth in (1, 2, 4, 8)
    raw = zlib.decompress(chunks)
    stride = (width * depth + 7) // 8
    rows: list[bytes] = []
    previous = bytes(stride)
    position = 0
    for _ in range(height):
        kind, line = raw[position], bytearray(raw[position + 1 : position + 1 + stride])
        position += 1 + stride
        for i in range(stride):
            left = line[i - 1] if i else 0
            up = previous[i]
            corner = previous[i - 1] if i else 0
            if kind == 1:
                line[i] = (line[i] + left) & 0xFF
            elif kind == 2:
                line[i] = (line[i] + up) & 0xFF
            elif kind == 3:
                line[i] = (line[i] + (left + up) // 2) & 0xFF
            elif kind == 4:
                p = left + up - corner
                pa, pb, pc = abs(p - left), abs(p - up), abs(p - corner)
                best = left if pa <= pb and pa <= pc else up if pb <= pc else corner
                line[i] = (line[i] + best) & 0xFF
        rows.append(bytes(line))
        previous = bytes(line)

    def pixel(x: int, y: int) -> int:
        bit = x * depth
        return (rows[y][bit // 8] >> (8 - depth - bit % 8)) & ((1 << depth) - 1)

    size = width
    modules_across = None
    for scale in range(1, 21):
        if size % scale == 0 and (size // scale - 2 * border - 17) % 4 == 0:
            modules_across = size // scale - 2 * border
            break
    assert modules_across is not None
    scale = size // (modules_across + 2 * border)
    dark = pixel(border * scale, border * scale)  # the finder pattern's corner is dark
    return [
        [
            pixel((border + x) * scale + scale // 2, (border + y) * scale + scale // 2) == dark
            for x in range(modules_across)
        ]
        for y in range(modules_across)
    ]


def test_a_patient_too_big_for_any_qr_code_gets_an_outcome(
    demo_hub: Hub, client: TestClient
) -> None:
    operator = Api(client, token_for(demo_hub, client_id="ops", role="operator"))
    names = [{"family": f"Họ {n:03d}", "given": ["Tên đệm rất dài", f"Tên {n:03d}"]}
             for n in range(120)]  # fmt: skip
    created = operator.post("/Patient", {"resourceType": "Patient", "name": names})
    assert created.status_code == 201, created.text
    patient_id = created.json()["id"]
    response = operator.get(f"/Patient/{patient_id}/$health-card-qr")
    assert response.status_code == 422, response.text
    assert response.json()["issue"][0]["code"] == "too-costly"
    assert operator.get(f"/Patient/{patient_id}/$health-card").status_code == 200  # a file


def test_the_file_form(demo_hub: Hub, client: TestClient, lan: Api) -> None:
    response = lan.get(f"/Patient/{LAN.id}/$health-card")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/smart-health-card"
    assert response.headers["content-disposition"].startswith("attachment;")
    assert ".smart-health-card" in response.headers["content-disposition"]
    assert LAN.family not in response.headers["content-disposition"]
    (card,) = response.json()["verifiableCredential"]
    _, payload = verified(card, served_keys(client))
    assert len(fhir_bundle(payload)["entry"]) > 20  # the whole book: too big for one QR code
    assert len(card) > MAX_QR_JWS
    assert lan.get(f"/Patient/{LAN.id}/$health-card", params={"card": "x"}).status_code == 400


def test_the_operation_parameters(demo_hub: Hub, client: TestClient, lan: Api) -> None:
    uri = "valueUri"
    assert len(issued_cards(lan, LAN.id, ("credentialType", uri, "Immunization"))) == 2
    assert len(issued_cards(lan, LAN.id, ("credentialType", uri, IMMUNIZATION_CARD))) == 2
    # Both types in one card: the whole book has procedures, the compact card has none.
    both = (("credentialType", uri, "Immunization"), ("credentialType", uri, "Procedure"))
    (card,) = issued_cards(lan, LAN.id, *both)
    _, payload = verified(card, served_keys(client))
    assert {"Immunization", "Procedure"} <= {
        e["resource"]["resourceType"] for e in fhir_bundle(payload)["entry"]
    }
    covid = "https://smarthealth.cards#covid19"
    assert issued_cards(lan, LAN.id, ("credentialType", uri, covid)) == []
    assert issue(lan, LAN.id, ("credentialType", uri, "Claim")).json()["parameter"] == []

    name_only = ("includeIdentityClaim", "valueString", "Patient.name")
    claims = (("credentialType", uri, "Patient"), name_only)
    for card in issued_cards(lan, LAN.id, *claims):
        patient = fhir_bundle(verified(card, served_keys(client))[1])["entry"][0]["resource"]
        assert set(patient) == {"resourceType", "name"}

    later = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    earlier = (datetime.now(UTC) - timedelta(days=1)).isoformat()
    patient = ("credentialType", uri, "Patient")
    assert issued_cards(lan, LAN.id, patient, ("_since", "valueDateTime", later)) == []
    assert len(issued_cards(lan, LAN.id, patient, ("_since", "valueDateTime", earlier))) == 2

    for bad in (
        parameters(),
        parameters(("credentialType", "valueString", "")),
        parameters(("credentialType", uri, "Patient"), ("credentialValueSet", uri, "http://x")),
        parameters(patient, ("includeIdentityClaim", "valueString", "Patient.deceased")),
        parameters(("credentialType", uri, "Patient"), ("_since", "valueDateTime", "soon")),
        parameters(("credentialType", uri, "Patient"), ("colour", "valueString", "blue")),
        {"resourceType": "Patient"},
    ):
        response = lan.post(f"/Patient/{LAN.id}/$health-cards-issue", bad)
        assert response.status_code == 400, bad
        assert response.json()["resourceType"] == "OperationOutcome"


def test_a_new_key_is_published_before_it_signs(
    demo_hub: Hub, client: TestClient, lan: Api
) -> None:
    """Right after a rotation every process must be able to verify what any process signs:
    the new key is served at once and signs only once all processes serve it."""
    old_kid = kid_of(issued_cards(lan, LAN.id)[1])
    new_kid, signs_from = rotate_card_key(demo_hub)
    assert new_kid != old_kid
    delay = demo_hub.settings.signing_key_refresh_seconds + 30
    assert abs((signs_from - datetime.now(UTC)).total_seconds() - delay) < 5
    assert new_kid in served_kids(client)
    assert kid_of(issued_cards(lan, LAN.id)[1]) == old_kid  # not yet
    states = {info.kid: info.state for info in list_card_keys(demo_hub)}
    assert states == {old_kid: SIGNING, new_kid: NEXT}


def test_a_card_signed_before_a_rotation_still_verifies(
    demo_hub: Hub, client: TestClient, lan: Api
) -> None:
    before = issued_cards(lan, LAN.id)[1]
    old_kid = kid_of(before)
    token_kid = signing_key(demo_hub).kid
    new_kid, signs_from = rotate_card_key(demo_hub)
    # As if the rotation were a publication delay ago: the new key signs from now on.
    ago = signs_from - datetime.now(UTC) + timedelta(seconds=1)
    with demo_hub.db.transaction() as session:
        for key in session.scalars(select(HealthCardKey)):
            key.created_at = as_utc(key.created_at) - ago
    after = issued_cards(lan, LAN.id)[1]
    assert kid_of(after) == new_kid
    keys = served_keys(client)
    verified(after, keys)
    verified(before, keys)  # the old key is still published
    assert signing_key(demo_hub).kid == token_kid  # the token key did not move
    assert {old_kid, new_kid, token_kid} <= served_kids(client)
    states = {info.kid: info.state for info in list_card_keys(demo_hub)}
    assert states == {old_kid: ROTATED, new_kid: SIGNING}
    with demo_hub.db.snapshot() as session:
        old = session.get(HealthCardKey, old_kid)
        assert old is not None and old.sealed_private is None and old.rotated_at is not None


def kid_of(card: str) -> str:
    return str(json.loads(unpadded(card.split(".")[0]))["kid"])


def served_kids(client: TestClient) -> set[str]:
    return {key["kid"] for key in client.get("/.well-known/jwks.json").json()["keys"]}


def test_the_cli_rotates_the_health_card_key(tmp_path: Path) -> None:
    """``emr-hub keys rotate-health-card`` as an operator runs it, on the hub's database."""
    database_url = f"sqlite:///{tmp_path / 'hub.db'}"
    hub = Hub.from_settings(make_settings(tmp_path, database_url), migrate=True)
    try:
        first = card_signing_key(hub).kid

        def run(*args: str) -> str:
            done = subprocess.run(
                [EMR_HUB, "keys", *args],
                env=cli_env(tmp_path, database_url),
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )
            assert done.returncode == 0, done.stderr
            return done.stdout

        rotated = run("rotate-health-card")
        kids = [info.kid for info in list_card_keys(hub)]
        assert kids[0] == first and len(kids) == 2 and kids[1] in rotated
        listed = run("list-health-card")
        assert f"{first}  signing" in listed and f"{kids[1]}  next" in listed
    finally:
        hub.close()


def test_processes_racing_for_the_first_key_agree(hub: Hub) -> None:
    """Four API processes (their own engines, their own keys in memory) need a health-card
    key at the same moment: one key is made and all sign with it."""
    processes = [
        Hub(settings=hub.settings, db=Database(hub.settings.effective_database_url))
        for _ in range(4)
    ]
    start = threading.Barrier(len(processes))

    def first_kid(process: Hub) -> str:
        start.wait(timeout=30)
        return str(card_signing_key(process).kid)

    try:
        with ThreadPoolExecutor(len(processes)) as pool:
            kids = set(pool.map(first_kid, processes))
    finally:
        for process in processes:
            process.close()
    assert len(kids) == 1
    assert [info.kid for info in list_card_keys(hub)] == list(kids)


def test_a_wrong_key_encryption_key_stops_cards_not_the_jwks(
    demo_hub: Hub, client: TestClient, lan: Api
) -> None:
    card = issued_cards(lan, LAN.id)[1]  # the key exists, sealed with the right KEK
    wrong = base64.b64encode(os.urandom(32)).decode()
    other = Hub(
        settings=demo_hub.settings.model_copy(update={"key_encryption_key": SecretStr(wrong)}),
        db=Database(demo_hub.settings.effective_database_url),
    )
    try:
        with TestClient(create_app(other)) as other_client:
            verified(card, served_keys(other_client))  # publishing needs no private key
            refused = Api(other_client, lan.token).post(
                f"/Patient/{LAN.id}/$health-cards-issue",
                parameters(("credentialType", "valueUri", "Patient")),
            )
    finally:
        other.close()
    assert refused.status_code == 503
    issue_text = refused.json()["issue"][0]
    assert issue_text["code"] == "transient" and wrong not in refused.text


def test_a_card_is_no_access_token(demo_hub: Hub, client: TestClient, lan: Api) -> None:
    card = issued_cards(lan, LAN.id)[1]
    response = Api(client, card).get(f"/Patient/{LAN.id}")
    assert response.status_code == 401


def test_only_who_may_see_her_summary_gets_her_cards(
    demo_hub: Hub, client: TestClient, lan: Api
) -> None:
    toan = citizen(demo_hub, client, TOAN.cccd)
    stranger = hospital(demo_hub, client, "hospital-without-relationship")
    nobody = Api(client, None)
    for api, status in ((toan, 404), (stranger, 404), (nobody, 401)):
        for response in (
            issue(api, LAN.id),
            api.get(f"/Patient/{LAN.id}/$health-card"),
            api.get(f"/Patient/{LAN.id}/$health-card-qr"),
        ):
            assert response.status_code == status, response.text
            assert LAN.family not in response.text
    assert len(issued_cards(hospital(demo_hub, client, "bach-mai"), LAN.id)) == 2
    assert len(issued_cards(toan, TOAN.id)) == 2  # her own


def test_a_hospital_issuing_her_card_is_in_her_access_log(
    demo_hub: Hub, client: TestClient, lan: Api
) -> None:
    def reads_by_bach_mai() -> int:
        log = lan.get(f"/Patient/{LAN.id}/$access-log").json()
        return sum(
            1
            for p in log["parameter"]
            if p["name"] == "access"
            for part in p["part"]
            if part["name"] == "organization"
            and part["valueReference"]["reference"] == "Organization/bach-mai"
        )

    before = reads_by_bach_mai()
    bach_mai = hospital(demo_hub, client, "bach-mai")
    assert bach_mai.get(f"/Patient/{LAN.id}/$health-card-qr").status_code == 200
    assert reads_by_bach_mai() > before


def test_smart_configuration_advertises_health_cards(client: TestClient) -> None:
    config = client.get("/fhir/.well-known/smart-configuration").json()
    assert "health-cards" in config["capabilities"]
