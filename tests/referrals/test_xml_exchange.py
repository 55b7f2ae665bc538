"""Insurance XML 13/14 import and export over the API (both databases) and the command line.

The hospitals are the demo network's Organizations (facility codes DM001, DM271, DM272), each
with its own client; the tables are the samples of ``tests/fixtures/xml130``.
"""

from __future__ import annotations

import base64
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from emr_hub.demo import HOSPITALS, organization
from emr_hub.fhir.identifiers import INSURANCE
from emr_hub.fhir.store import HISTORY, RESOURCE
from emr_hub.fhir.validation import validate_resource
from emr_hub.hub import Hub
from emr_hub.main import create_app
from emr_hub.referrals.xml130 import (
    FileEntry,
    Table13,
    Table14,
    parse_envelope,
    parse_table13,
    parse_table14,
    read_tables,
    render_envelope,
    stable_id,
)
from tests.conftest import make_settings
from tests.fhir.conftest import Api, outcome_issue, token_for
from tests.processes import EMR_HUB, cli_env

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "xml130"
XML = {"Content-Type": "application/xml"}
LETTER_KEY = ("XML13", "DM272", "871/2024/GCT")
SR_ID = stable_id(*LETTER_KEY, "ServiceRequest")
TASK_ID = stable_id(*LETTER_KEY, "Task")
CARD = "GD4272712345678"


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def with_fields(xml: bytes, **values: str | None) -> bytes:
    """The table with elements' text replaced, or an element removed (None)."""
    text = xml.decode("utf-8")
    for name, value in values.items():
        pattern = re.compile(rf"\s*<{name}>.*?</{name}>|\s*<{name}/>", re.S)
        assert pattern.search(text), name
        new = "" if value is None else f"\n  <{name}>{value}</{name}>"
        text = pattern.sub(lambda _, new=new: new, text, count=1)
    return text.encode("utf-8")


def envelope(*tables: tuple[str, bytes], facility: str = "DM272") -> bytes:
    files = [FileEntry(kind, content, 1, n) for n, (kind, content) in enumerate(tables, 1)]
    return render_envelope(facility, files)


LETTER = fixture("xml13_dm272_to_dm271.xml")
SLIP = fixture("xml14_dm001.xml")
# Bắc Ninh general refers the same patient on to Bạch Mai (one level up) on 11 November; the
# Bạch Mai stay of the re-exam slip begins on 12 November, while this letter is valid.
ONWARD = with_fields(
    LETTER,
    MA_LK="DM271.2411060042",
    SO_HOSO="2024/CT-01204",
    SO_CHUYENTUYEN="1204/2024/GCT",
    GIAY_CHUYEN_TUYEN="DM271-20241111-1204",
    MA_CSKCB="DM271",
    MA_CSKCB_DI="DM271",
    MA_CSKCB_DEN="DM001",
    NGAY_VAO="202411060900",
    NGAY_VAO_NOI_TRU="202411060930",
    NGAY_RA="202411111000",
)
ONWARD_SR = stable_id("XML13", "DM271", "1204/2024/GCT", "ServiceRequest")
APPOINTMENT_ID = stable_id("XML14", "DM001", "HKL-2024-015873", "Appointment")


@pytest.fixture
def api(hub: Hub) -> Iterator[Api]:
    """The operator's client (it reads what the hospitals imported, whoever they are)."""
    with TestClient(create_app(hub)) as client:
        yield Api(client, token_for(hub, client_id="test-operator", role="operator"))


@pytest.fixture
def tokens(hub: Hub, api: Api) -> dict[str, str]:
    """The demo hospitals as Organizations, and a client for each (``Organization/<id>``)."""
    for hospital in sorted(HOSPITALS, key=lambda h: h.part_of is not None):
        resource = organization(hospital)
        response = api.put(f"/Organization/{resource['id']}", resource)
        assert response.status_code == 201, response.text
    return {h.client_id: token_for(hub, client_id=h.client_id) for h in HOSPITALS}


def import_xml(api: Api, xml: bytes, token: str) -> Any:
    """POST the envelope as ``application/xml`` with ``token`` (none when empty)."""
    return api.post("/$import-xml130", raw=xml, headers=XML, token=token)


def summary(response: Any) -> list[tuple[str, str, str]]:
    """(status, location, outcome text) of each entry of an import's answer."""
    assert response.status_code == 200, response.text
    bundle = response.json()
    assert bundle["resourceType"] == "Bundle" and bundle["type"] == "batch-response"
    return [
        (
            e["response"]["status"],
            e["response"]["location"],
            e["response"]["outcome"]["issue"][0]["diagnostics"].split(":")[0],
        )
        for e in bundle["entry"]
    ]


def rows(hub: Hub) -> tuple[int, int]:
    """Rows of the resource and resource_history tables."""
    with hub.db.snapshot() as session:
        return (
            session.execute(select(func.count()).select_from(RESOURCE)).scalar_one(),
            session.execute(select(func.count()).select_from(HISTORY)).scalar_one(),
        )


def without_meta(resource: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in resource.items() if k != "meta"}


def search(api: Api, path: str, **params: str) -> list[dict[str, Any]]:
    response = api.get(path, params=params)
    assert response.status_code == 200, response.text
    return [e["resource"] for e in response.json().get("entry", [])]


def table_of(xml: bytes) -> Table13 | Table14:
    [(_, table)] = read_tables(parse_envelope(xml))
    return table


# ======================================================================= import
def test_a_letter_becomes_a_requested_referral(api: Api, tokens: dict[str, str]) -> None:
    response = import_xml(api, fixture("envelope_dm272.xml"), tokens["bac-ninh-district"])
    assert response.headers["content-type"].startswith("application/fhir+json")
    validate_resource(response.json())
    answer = summary(response)
    kinds = [location.split("/")[0] for _, location, _ in answer]
    assert kinds == ["Patient", "Condition", "Condition", "Condition", "ServiceRequest", "Task"]
    assert {(status, outcome) for status, _, outcome in answer} == {("201 Created", "created")}
    assert answer[4][1] == f"ServiceRequest/{SR_ID}/_history/1"

    sr = api.get(f"/ServiceRequest/{SR_ID}").json()
    assert sr["requester"]["reference"] == "Organization/bac-ninh-district"
    assert sr["performer"][0]["reference"] == "Organization/bac-ninh-general"
    # the validity comes from the hub's rules: one year, E11.9 being on the Annex III list
    assert sr["occurrencePeriod"] == {
        "start": "2024-11-05T14:30:00+07:00",
        "end": "2025-11-05T23:59:59+07:00",
    }
    [task] = search(api, "/Task", focus=f"ServiceRequest/{SR_ID}")
    assert (task["id"], task["status"]) == (TASK_ID, "requested")
    assert task["owner"]["reference"] == "Organization/bac-ninh-general"
    [letter] = search(
        api, "/ServiceRequest", identifier="urn:emr-hub:referral-letter:DM272|871/2024/GCT"
    )
    assert letter["id"] == SR_ID
    [patient] = search(api, "/Patient", identifier=f"{INSURANCE}|{CARD}")
    assert sr["subject"]["reference"] == f"Patient/{patient['id']}"
    conditions = search(api, "/Condition", subject=f"Patient/{patient['id']}")
    assert sorted(c["code"]["coding"][0]["code"] for c in conditions) == ["E11.9", "I10", "J18.9"]
    referrals = search(api, "/ServiceRequest", performer="Organization/bac-ninh-general")
    assert [r["id"] for r in referrals] == [SR_ID]


def test_importing_again_writes_nothing_and_keeps_an_accepted_task(
    api: Api, tokens: dict[str, str]
) -> None:
    district, general = tokens["bac-ninh-district"], tokens["bac-ninh-general"]
    first = summary(import_xml(api, fixture("envelope_dm272.xml"), district))
    locations = [location for _, location, _ in first]
    patient = locations[0].split("/_history")[0]

    again = summary(import_xml(api, fixture("envelope_dm272.xml"), district))
    assert again[0] == (
        "200 OK",
        f"{patient}/_history/1",
        "the existing patient the table was matched to by insurance card or CCCD; not changed",
    )
    assert [(s, o) for s, _, o in again[1:]] == [("200 OK", "unchanged")] * 5
    assert [location for _, location, _ in again] == locations  # every one still version 1

    task = api.get(f"/Task/{TASK_ID}").json()
    accepted = api.put(
        f"/Task/{TASK_ID}", {**without_meta(task), "status": "accepted"}, token=general
    )
    assert accepted.status_code == 200, accepted.text
    third = summary(import_xml(api, fixture("envelope_dm272.xml"), district))
    assert third[-1] == ("200 OK", f"Task/{TASK_ID}/_history/2", "kept as it is")
    assert [o for _, _, o in third[1:-1]] == ["unchanged"] * 4
    after = api.get(f"/Task/{TASK_ID}").json()
    assert (after["status"], after["meta"]["versionId"]) == ("accepted", "2")


def test_import_export_import_gives_the_same_fhir(api: Api, tokens: dict[str, str]) -> None:
    district = tokens["bac-ninh-district"]
    first = summary(import_xml(api, fixture("envelope_dm272.xml"), district))
    stored = {loc: api.get("/" + loc.split("/_history")[0]).json() for _, loc, _ in first}

    exported = api.get(f"/ServiceRequest/{SR_ID}/$xml130")
    assert exported.status_code == 200, exported.text
    assert exported.headers["content-type"].startswith("application/xml")
    assert table_of(exported.content) == parse_table13(LETTER)
    assert exported.content == api.get(f"/ServiceRequest/{SR_ID}/$xml130").content

    second = summary(import_xml(api, exported.content, district))
    assert [o for _, _, o in second[1:]] == ["unchanged"] * 5
    for location in stored:
        now = api.get("/" + location.split("/_history")[0]).json()
        assert without_meta(now) == without_meta(stored[location])
        assert now["meta"]["versionId"] == "1"


def test_a_slip_is_based_on_the_referral_of_its_episode(api: Api, tokens: dict[str, str]) -> None:
    bach_mai, general = tokens["bach-mai"], tokens["bac-ninh-general"]
    # before any letter to Bạch Mai: the slip is based on nothing
    alone = summary(import_xml(api, envelope(("XML14", SLIP), facility="DM001"), bach_mai))
    assert [(s, loc.split("/")[0]) for s, loc, _ in alone] == [
        ("201 Created", "Patient"),
        ("201 Created", "Appointment"),
    ]
    assert "basedOn" not in api.get(f"/Appointment/{APPOINTMENT_ID}").json()

    letter = summary(import_xml(api, envelope(("XML13", ONWARD), facility="DM271"), general))
    # Bắc Ninh general may not see Bạch Mai's record of her: it registers its own
    assert (letter[0][0], letter[0][1].split("/")[0], letter[0][2]) == (
        "201 Created",
        "Patient",
        "created",
    )
    assert letter[-2][1] == f"ServiceRequest/{ONWARD_SR}/_history/1"

    slip = summary(import_xml(api, fixture("envelope_dm001.xml"), bach_mai))
    assert slip[1] == ("200 OK", f"Appointment/{APPOINTMENT_ID}/_history/2", "updated")
    appointment = api.get(f"/Appointment/{APPOINTMENT_ID}").json()
    assert appointment["basedOn"] == [{"reference": f"ServiceRequest/{ONWARD_SR}"}]
    assert appointment["status"] == "booked"
    [based] = search(api, "/Appointment", **{"based-on": f"ServiceRequest/{ONWARD_SR}"})
    assert based["id"] == APPOINTMENT_ID

    exported = api.get(f"/Appointment/{APPOINTMENT_ID}/$xml130")
    assert exported.status_code == 200, exported.text
    assert exported.headers["content-type"].startswith("application/xml")
    assert table_of(exported.content) == parse_table14(SLIP)
    assert b"<MACSKCB>DM001</MACSKCB>" in exported.content


def test_a_slip_follows_the_episode_encounter_when_the_hub_has_it(
    api: Api, tokens: dict[str, str]
) -> None:
    """The Encounter of the slip's MA_LK at its hospital names the referral it followed, even
    when no letter was valid on admission (the slip gives no admission date here)."""
    bach_mai, general = tokens["bach-mai"], tokens["bac-ninh-general"]
    summary(import_xml(api, envelope(("XML13", ONWARD), facility="DM271"), general))
    patient = api.get(f"/ServiceRequest/{ONWARD_SR}").json()["subject"]
    stay = {
        "resourceType": "Encounter",
        "identifier": [
            {"system": "http://fhir.hl7.org.vn/core/sid/ma-lk", "value": "BM.2411120045"}
        ],
        "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IMP"},
        "subject": patient,
        "basedOn": [{"reference": f"ServiceRequest/{ONWARD_SR}"}],
        "serviceProvider": {"reference": "Organization/bach-mai"},
    }
    assert api.post("/Encounter", stay, token=bach_mai).status_code == 201
    undated = with_fields(SLIP, NGAY_VAO=None, NGAY_VAO_NOI_TRU=None)
    summary(import_xml(api, envelope(("XML14", undated), facility="DM001"), bach_mai))
    appointment = api.get(f"/Appointment/{APPOINTMENT_ID}").json()
    assert appointment["basedOn"] == [{"reference": f"ServiceRequest/{ONWARD_SR}"}]


def test_a_fulfilled_slip_is_not_booked_again(api: Api, tokens: dict[str, str]) -> None:
    bach_mai = tokens["bach-mai"]
    summary(import_xml(api, fixture("envelope_dm001.xml"), bach_mai))
    appointment = api.get(f"/Appointment/{APPOINTMENT_ID}").json()
    visit = {
        "resourceType": "Encounter",
        "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
        "subject": appointment["participant"][0]["actor"],
        "appointment": [{"reference": f"Appointment/{APPOINTMENT_ID}"}],
    }
    assert api.post("/Encounter", visit, token=bach_mai).status_code == 201
    again = summary(import_xml(api, fixture("envelope_dm001.xml"), bach_mai))
    assert again[-1] == ("200 OK", f"Appointment/{APPOINTMENT_ID}/_history/2", "kept as it is")
    assert api.get(f"/Appointment/{APPOINTMENT_ID}").json()["status"] == "fulfilled"


# ======================================================================= refusals
def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


BOMB = (
    b'<?xml version="1.0"?><!DOCTYPE GIAMDINHHS [<!ENTITY a "aaaaaaaaaa">'
    b'<!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;"><!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;">]>'
    b"<GIAMDINHHS>&c;</GIAMDINHHS>"
)
TABLE_WITH_DTD = b'<?xml version="1.0"?><!DOCTYPE X [<!ENTITY e SYSTEM "file:///etc/passwd">]>' + (
    LETTER.split(b"?>", 1)[1].replace(b"<DAU_HIEU_LS>", b"<DAU_HIEU_LS>&e;")
)
FILE = "GIAMDINHHS/THONGTINHOSO/DANHSACHHOSO/HOSO[1]/FILEHOSO[{}]/NOIDUNGFILE"
# a good letter, then one to a facility the hub does not know: neither is stored
UNKNOWN_RECEIVER = envelope(
    ("XML13", LETTER),
    ("XML13", with_fields(ONWARD, MA_CSKCB_DI="DM272", MA_CSKCB="DM272", MA_CSKCB_DEN="DM999")),
)
BAD_BASE64 = fixture("envelope_dm272.xml").replace(b"PD94bWwg", b"PD94b!!g", 1)
REFUSED = [
    # (what, body, status, expression of the first issue)
    ("bad base64", BAD_BASE64, 400, FILE.format(1)),
    (
        "missing field",
        envelope(("XML13", with_fields(LETTER, DAU_HIEU_LS=None))),
        422,
        "XML13/DAU_HIEU_LS",
    ),
    (
        "wrong date",
        envelope(("XML13", with_fields(LETTER, NGAY_VAO="20241341"))),
        422,
        "XML13/NGAY_VAO",
    ),
    ("entity bomb", BOMB, 400, "GIAMDINHHS"),
    ("external entity in a table", envelope(("XML13", TABLE_WITH_DTD)), 400, "XML13"),
    ("not XML", b"MA_LK;SO_HOSO\n1;2\n", 400, "GIAMDINHHS"),
    ("no table 13 or 14", envelope(("XML1", fixture("xml1_dm272.xml"))), 422, None),
    ("unknown receiver", UNKNOWN_RECEIVER, 422, "XML13/MA_CSKCB_DEN"),
    # a good letter, then one skipping a level (BAN_DAU → CHUYEN_SAU) without a reason
    (
        "skipped level",
        envelope(
            ("XML13", LETTER), ("XML13", with_fields(ONWARD, MA_CSKCB_DI="DM272", MA_CSKCB="DM272"))
        ),
        422,
        "ServiceRequest.performer",
    ),
]


def test_refused_envelopes_name_the_place_and_store_nothing(
    hub: Hub, api: Api, tokens: dict[str, str]
) -> None:
    district = tokens["bac-ninh-district"]
    before = rows(hub)
    for what, body, status, expression in REFUSED:
        response = import_xml(api, body, district)
        assert response.status_code == status, (what, response.text)
        issue = outcome_issue(response)
        if expression is not None:
            assert issue["expression"][0].startswith(expression), (what, issue)
        assert rows(hub) == before, what
    unknown = import_xml(api, UNKNOWN_RECEIVER, district)
    assert outcome_issue(unknown)["expression"] == ["XML13/MA_CSKCB_DEN", FILE.format(2)]
    assert "DM999" in outcome_issue(unknown)["diagnostics"]

    as_json = api.post("/$import-xml130", raw=fixture("envelope_dm272.xml"), token=district)
    assert as_json.status_code == 415
    assert import_xml(api, b"  ", district).status_code == 400
    assert rows(hub) == before


@pytest.mark.parametrize(
    "reason", [{"MA_LYDO_CT": "3"}, {"MA_LOAI_RV": "5"}], ids=["MA_LYDO_CT 3", "MA_LOAI_RV 5"]
)
def test_a_letter_skipping_a_level_at_the_patients_request_is_accepted(
    api: Api, tokens: dict[str, str], reason: dict[str, str]
) -> None:
    skipping = with_fields(ONWARD, MA_CSKCB_DI="DM272", MA_CSKCB="DM272", **reason)
    response = import_xml(api, envelope(("XML13", skipping)), tokens["bac-ninh-district"])
    assert response.status_code == 200, response.text
    letter = stable_id("XML13", "DM272", "1204/2024/GCT", "ServiceRequest")
    assert api.get(f"/ServiceRequest/{letter}").json()["performer"][0]["reference"] == (
        "Organization/bach-mai"
    )


def test_only_the_sending_hospital_imports_with_a_token_and_the_scopes(
    hub: Hub, api: Api, tokens: dict[str, str]
) -> None:
    before = rows(hub)
    xml = fixture("envelope_dm272.xml")
    wrong = import_xml(api, xml, tokens["bac-ninh-general"])
    assert wrong.status_code == 403
    issue = outcome_issue(wrong)
    assert issue["expression"][0] == "XML13/MA_CSKCB_DI"
    assert "Nguyễn" not in wrong.text and CARD not in wrong.text

    slip = import_xml(api, fixture("envelope_dm001.xml"), tokens["bac-ninh-district"])
    assert slip.status_code == 403
    assert outcome_issue(slip)["expression"][0] == "XML14/MA_CSKCB"

    anonymous = import_xml(api, xml, "")
    assert anonymous.status_code == 401
    assert anonymous.headers["www-authenticate"].startswith("Bearer")

    read_only = token_for(hub, "system/*.rs", client_id="bac-ninh-district")
    narrow = import_xml(api, xml, read_only)
    assert narrow.status_code == 403
    assert "insufficient_scope" in narrow.headers["www-authenticate"]
    assert rows(hub) == before


def test_export_refusals(hub: Hub, api: Api, tokens: dict[str, str]) -> None:
    assert api.get("/ServiceRequest/nope/$xml130").status_code == 404
    assert api.get("/Appointment/nope/$xml130").status_code == 404
    plain = {
        "resourceType": "ServiceRequest",
        "status": "active",
        "intent": "order",
        "subject": {"reference": "Patient/p1"},
    }
    sr = api.post("/ServiceRequest", plain).json()["id"]
    not_referral = api.get(f"/ServiceRequest/{sr}/$xml130")
    assert not_referral.status_code == 422
    assert outcome_issue(not_referral)["expression"] == ["ServiceRequest.category"]
    summary(import_xml(api, fixture("envelope_dm272.xml"), tokens["bac-ninh-district"]))
    tasks_only = token_for(hub, "system/Task.rs", client_id="reader")
    assert api.get(f"/ServiceRequest/{SR_ID}/$xml130", token=tasks_only).status_code == 403
    assert api.get(f"/ServiceRequest/{SR_ID}/$xml130", token="").status_code == 401


def test_a_body_over_the_limit_is_413(tmp_path: Path) -> None:
    """EMR_HUB_MAX_REQUEST_BYTES applies to the envelope as to a FHIR body (SQLite only)."""
    settings = make_settings(tmp_path, f"sqlite:///{tmp_path / 'small.db'}", max_request_bytes=1024)
    small = Hub.from_settings(settings, migrate=True)
    try:
        with TestClient(create_app(small)) as client:
            api = Api(client, token_for(small))
            before = rows(small)
            response = import_xml(api, fixture("envelope_dm272.xml"), api.token or "")
            assert response.status_code == 413
            assert outcome_issue(response)["code"] == "too-costly"
            assert rows(small) == before
    finally:
        small.close()


def test_capability_statement_states_the_operations(api: Api) -> None:
    statement = api.get("/metadata").json()
    system = {op["name"] for op in statement["rest"][0].get("operation", [])}
    assert "import-xml130" in system
    for resource in statement["rest"][0]["resource"]:
        if resource["type"] in ("ServiceRequest", "Appointment"):
            assert "xml130" in {op["name"] for op in resource.get("operation", [])}


# ================================================================== command line
def run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([EMR_HUB, *args], env=env, capture_output=True, timeout=120)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_cli_imports_as_a_hospital_and_exports(tmp_path: Path, database_url: str) -> None:
    """The command line calls the same service; each command starts a process (seconds of
    CPU), so this runs on SQLite only and with as few commands as the behaviour needs."""
    env = cli_env(tmp_path, database_url)
    demo = run(["demo"], env)  # the demo network, whose patient holds the letter's card
    assert demo.returncode == 0, demo.stderr
    letter, slip = FIXTURES / "envelope_dm272.xml", FIXTURES / "envelope_dm001.xml"
    # the district centre sent the letter; the slip is Bạch Mai's, so that file is refused
    imported = run(["xml130", "import", str(letter), str(slip), "--as", "bac-ninh-district"], env)
    assert imported.returncode == 1
    out, err = imported.stdout.decode(), imported.stderr.decode()
    assert f"201 created   ServiceRequest/{SR_ID}/_history/1" in out
    assert f"201 created   Task/{TASK_ID}/_history/1" in out
    assert "200 matched   Patient/demo-nguyen-thi-lan/_history/" in out
    assert "Appointment" not in out
    assert f"{slip}: refused (403)" in err and "XML14/MA_CSKCB" in err

    target = tmp_path / "letter.xml"
    exported = run(["xml130", "export", f"ServiceRequest/{SR_ID}", "-o", str(target)], env)
    assert exported.returncode == 0, exported.stderr
    table = table_of(target.read_bytes())
    assert isinstance(table, Table13)
    sent = parse_table13(LETTER)
    assert (table.so_chuyentuyen, table.ma_noi_di, table.ma_noi_den, table.dau_hieu_ls) == (
        sent.so_chuyentuyen,
        sent.ma_noi_di,
        sent.ma_noi_den,
        sent.dau_hieu_ls,
    )
    to_stdout = run(["xml130", "export", f"ServiceRequest/{SR_ID}"], env)
    assert (to_stdout.returncode, to_stdout.stdout) == (0, target.read_bytes())
    again = run(["xml130", "import", str(target)], env)  # as the operator: nothing to write
    assert again.returncode == 0, again.stderr
    assert "created" not in again.stdout.decode() and "updated" not in again.stdout.decode()
    assert run(["xml130", "export", "Patient/demo-nguyen-thi-lan"], env).returncode == 2
