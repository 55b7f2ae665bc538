"""The REST interactions over the real app, on SQLite and PostgreSQL."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from emr_hub.hub import Hub
from tests.fhir.conftest import Api, outcome_issue, token_for

CCCD = "http://fhir.hl7.org.vn/core/sid/cccd"


def patient(**extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "name": [{"family": "Trần", "given": ["Văn", "Minh"]}],
        **extra,
    }


def create(api: Api, resource: dict[str, Any]) -> dict[str, Any]:
    response = api.post(f"/{resource['resourceType']}", resource)
    assert response.status_code == 201, response.text
    return response.json()


def test_create_read_vread_with_version_headers(api: Api) -> None:
    response = api.post("/Patient", patient(gender="male"))
    assert response.status_code == 201
    created = response.json()
    assert created["meta"]["versionId"] == "1"
    assert response.headers["etag"] == 'W/"1"'
    assert response.headers["location"].endswith(f"/fhir/Patient/{created['id']}/_history/1")
    assert response.headers["last-modified"].endswith("GMT")

    read = api.get(f"/Patient/{created['id']}")
    assert read.status_code == 200
    assert read.headers["content-type"].startswith("application/fhir+json")
    assert read.json() == created
    assert api.get(f"/Patient/{created['id']}/_history/1").json() == created


def test_server_assigns_id_and_ignores_client_meta_version(api: Api) -> None:
    created = create(
        api, patient(id="client-chosen", meta={"versionId": "99", "tag": [{"code": "x"}]})
    )
    assert created["id"] != "client-chosen"
    assert created["meta"]["versionId"] == "1"
    assert created["meta"]["tag"] == [{"code": "x"}]


def test_update_with_if_match_and_stale_version(api: Api) -> None:
    created = create(api, patient())
    path = f"/Patient/{created['id']}"
    changed = {**created, "gender": "female"}
    ok = api.put(path, changed, headers={"If-Match": 'W/"1"'})
    assert ok.status_code == 200
    assert ok.json()["meta"]["versionId"] == "2"

    stale = api.put(path, {**created, "gender": "other"}, headers={"If-Match": 'W/"1"'})
    assert stale.status_code == 412
    assert "stale" in outcome_issue(stale)["diagnostics"]
    assert api.get(path).json()["gender"] == "female"


def test_update_with_unchanged_content_makes_no_new_version(api: Api) -> None:
    created = create(api, patient())
    again = api.put(f"/Patient/{created['id']}", created)
    assert again.status_code == 200
    assert again.json()["meta"]["versionId"] == "1"
    history = api.get(f"/Patient/{created['id']}/_history").json()
    assert len(history["entry"]) == 1


def test_create_on_update_with_client_id(api: Api) -> None:
    response = api.put("/Patient/bn-0001", patient(id="bn-0001"))
    assert response.status_code == 201
    assert response.json()["id"] == "bn-0001"
    assert api.get("/Patient/bn-0001").status_code == 200


def test_update_refuses_id_mismatch_and_missing_id(api: Api) -> None:
    mismatch = api.put("/Patient/a1", patient(id="b2"))
    assert mismatch.status_code == 400
    assert outcome_issue(mismatch)["expression"] == ["Patient.id"]
    missing = api.put("/Patient/a1", patient())
    assert missing.status_code == 400
    assert api.get("/Patient/a1").status_code == 404


def test_json_patch(api: Api) -> None:
    created = create(api, patient())
    path = f"/Patient/{created['id']}"
    response = api.patch(path, [{"op": "add", "path": "/birthDate", "value": "1990-02-03"}])
    assert response.status_code == 200
    assert response.json()["birthDate"] == "1990-02-03"
    assert response.json()["meta"]["versionId"] == "2"

    invalid = api.patch(path, [{"op": "replace", "path": "/birthDate", "value": "03/02/1990"}])
    assert invalid.status_code == 400
    assert outcome_issue(invalid)["expression"] == ["Patient.birthDate"]
    bad_pointer = api.patch(path, [{"op": "remove", "path": "/nothing/here"}])
    assert bad_pointer.status_code == 422
    change_id = api.patch(path, [{"op": "replace", "path": "/id", "value": "other"}])
    assert change_id.status_code == 422
    stale = api.patch(path, [{"op": "remove", "path": "/birthDate"}], headers={"If-Match": 'W/"1"'})
    assert stale.status_code == 412
    assert api.get(path).json()["birthDate"] == "1990-02-03"


def test_delete_then_read_is_gone_and_history_keeps_versions(api: Api) -> None:
    created = create(api, patient())
    path = f"/Patient/{created['id']}"
    deleted = api.delete(path)
    assert deleted.status_code == 204
    assert deleted.headers["etag"] == 'W/"2"'
    gone = api.get(path)
    assert gone.status_code == 410
    assert outcome_issue(gone)["code"] == "deleted"
    assert api.get(f"{path}/_history/1").status_code == 200
    assert api.delete(path).status_code == 204  # idempotent
    history = api.get(f"{path}/_history").json()
    assert [e["request"]["method"] for e in history["entry"]] == ["DELETE", "POST"]
    assert "resource" not in history["entry"][0]
    revived = api.put(path, created)
    assert revived.status_code == 201
    assert revived.json()["meta"]["versionId"] == "3"


def test_read_unknown(api: Api) -> None:
    assert api.get("/Patient/nope").status_code == 404
    assert api.get("/Patient/nope/_history/1").status_code == 404
    assert api.get("/Patient/nope/_history").status_code == 404  # as read does
    unknown_type = api.get("/Unicorn/1")
    assert unknown_type.status_code == 404
    assert "Unicorn" in outcome_issue(unknown_type)["diagnostics"]


def test_conditional_create(api: Api) -> None:
    body = patient(identifier=[{"system": CCCD, "value": "027185000123"}], birthDate="1985-04-12")
    header = {"If-None-Exist": f"identifier={CCCD}|027185000123"}
    first = api.post("/Patient", body, headers=header)
    second = api.post("/Patient", body, headers=header)
    assert first.status_code == 201
    assert second.status_code == 200
    assert second.json()["id"] == first.json()["id"]
    by_name = api.post("/Patient", body, headers={"If-None-Exist": "name=tran"})  # folds "Trần"
    assert by_name.status_code == 200 and by_name.json()["id"] == first.json()["id"]
    unknown = api.post("/Patient", body, headers={"If-None-Exist": "nickname=x"})
    assert unknown.status_code == 400
    assert outcome_issue(unknown)["expression"] == ["If-None-Exist"]


def test_conditional_update(api: Api) -> None:
    ident = "identifier=urn:hospital:bn|MRN-7"
    body = patient(identifier=[{"system": "urn:hospital:bn", "value": "MRN-7"}])
    created = api.put(f"/Patient?{ident}", body)
    assert created.status_code == 201
    updated = api.put(f"/Patient?{ident}", {**body, "gender": "male"})
    assert updated.status_code == 200
    assert updated.json()["id"] == created.json()["id"]
    assert updated.json()["meta"]["versionId"] == "2"
    create(api, body)  # a second match
    ambiguous = api.put(f"/Patient?{ident}", body)
    assert ambiguous.status_code == 412


def test_identifier_search(api: Api) -> None:
    mine = create(api, patient(identifier=[{"system": "urn:x", "value": "1"}]))
    create(api, patient(identifier=[{"system": "urn:x", "value": "2"}]))
    found = api.get("/Patient", params={"identifier": "urn:x|1"}).json()
    assert found["type"] == "searchset"
    assert [e["resource"]["id"] for e in found["entry"]] == [mine["id"]]
    assert api.get("/Patient", params={"identifier": "1"}).json()["total"] == 1
    assert api.get("/Patient", params={"identifier": "urn:x|"}).json()["total"] == 2
    assert api.get("/Patient", params={"nickname": "x"}).status_code == 400


@pytest.mark.parametrize(
    ("prefer", "status_has_body"),
    [("return=minimal", False), ("return=representation", True), ("return=OperationOutcome", True)],
)
def test_prefer_return(api: Api, prefer: str, status_has_body: bool) -> None:
    response = api.post("/Patient", patient(), headers={"Prefer": prefer})
    assert response.status_code == 201
    assert response.headers["etag"] == 'W/"1"'
    assert bool(response.content) is status_has_body
    if prefer == "return=OperationOutcome":
        assert response.json()["resourceType"] == "OperationOutcome"
        assert response.json()["issue"][0]["severity"] == "information"
    elif status_has_body:
        assert response.json()["resourceType"] == "Patient"


def test_summary_and_elements(api: Api) -> None:
    created = create(
        api,
        patient(
            text={
                "status": "generated",
                "div": '<div xmlns="http://www.w3.org/1999/xhtml">x</div>',
            },
            photo=[{"contentType": "image/png", "data": "AAAA"}],
            gender="female",
        ),
    )
    path = f"/Patient/{created['id']}"
    summary = api.get(path, params={"_summary": "true"}).json()
    assert "photo" not in summary and "text" not in summary
    assert summary["gender"] == "female"
    assert summary["meta"]["tag"][-1]["code"] == "SUBSETTED"
    text = api.get(path, params={"_summary": "text"}).json()
    assert set(text) == {"resourceType", "id", "meta", "text"}
    data = api.get(path, params={"_summary": "data"}).json()
    assert "text" not in data and "photo" in data
    elements = api.get(path, params={"_elements": "gender"}).json()
    assert set(elements) == {"resourceType", "id", "meta", "gender"}
    assert api.get(path, params={"_summary": "bogus"}).status_code == 400


def test_format_and_pretty(api: Api) -> None:
    created = create(api, patient())
    path = f"/Patient/{created['id']}"
    assert api.get(path, params={"_format": "json"}).status_code == 200
    pretty = api.get(path, params={"_format": "application/fhir+json", "_pretty": "true"})
    assert b"\n  " in pretty.content
    xml = api.get(path, params={"_format": "xml"})
    assert xml.status_code == 406
    assert outcome_issue(xml)["code"] == "not-supported"
    assert api.get(path, headers={"Accept": "application/fhir+xml"}).status_code == 406
    posted_xml = api.post(
        "/Patient", raw=b"<Patient/>", headers={"Content-Type": "application/fhir+xml"}
    )
    assert posted_xml.status_code == 415


def test_history_paging_type_and_system(api: Api) -> None:
    ids = [create(api, patient())["id"] for _ in range(5)]
    first = api.get("/Patient/_history", params={"_count": "2"}).json()
    seen = [e["resource"]["id"] for e in first["entry"]]
    link = next(link["url"] for link in first["link"] if link["relation"] == "next")
    create(api, patient())  # a write between pages must not shift the next page
    while link:
        page = api.client.get(link, headers=api.headers()).json()
        seen += [e["resource"]["id"] for e in page["entry"]]
        link = next((x["url"] for x in page["link"] if x["relation"] == "next"), None)
    assert seen == list(reversed(ids))
    system = api.get("/_history", params={"_count": "100"}).json()
    assert {e["resource"]["id"] for e in system["entry"]} >= set(ids)
    since = api.get("/Patient/_history", params={"_since": "2999-01-01T00:00:00Z"}).json()
    assert "entry" not in since or since["entry"] == []
    assert api.get("/Patient/_history", params={"_since": "yesterday"}).status_code == 400
    assert api.get("/Patient/_history", params={"_count": "-1"}).status_code == 400


def test_metadata_is_open_and_lists_real_capabilities(api: Api) -> None:
    response = api.client.get("/fhir/metadata")
    assert response.status_code == 200
    statement = response.json()
    assert statement["resourceType"] == "CapabilityStatement"
    assert statement["fhirVersion"] == "4.0.1"
    types = {r["type"] for r in statement["rest"][0]["resource"]}
    assert {"Patient", "Observation", "ServiceRequest", "Task"} <= types
    patient_caps = next(r for r in statement["rest"][0]["resource"] if r["type"] == "Patient")
    assert {"read", "vread", "update", "patch", "delete", "create"} <= {
        i["code"] for i in patient_caps["interaction"]
    }


# ---------------------------------------------------------------- error paths
def test_malformed_json(api: Api) -> None:
    response = api.post("/Patient", raw=b'{"resourceType": "Patient",')
    assert response.status_code == 400
    assert "Malformed JSON" in outcome_issue(response)["diagnostics"]
    assert api.post("/Patient", raw=b"").status_code == 400


def test_wrong_resource_type(api: Api) -> None:
    response = api.post(
        "/Patient", {"resourceType": "Observation", "status": "final", "code": {"text": "x"}}
    )
    assert response.status_code == 400
    assert outcome_issue(response)["expression"] == ["resourceType"]
    unknown = api.post("/Patient", {"resourceType": "Unicorn"})
    assert unknown.status_code == 400
    not_object = api.post("/Patient", [1, 2])
    assert not_object.status_code == 400


def test_unknown_element(api: Api) -> None:
    response = api.post("/Patient", patient(nickname="Minh"))
    assert response.status_code == 400
    issue = outcome_issue(response)
    assert issue["code"] == "structure"
    assert issue["expression"] == ["Patient.nickname"]


def test_nested_structure_errors_name_their_path(api: Api) -> None:
    response = api.post("/Patient", patient(name=[{"given": "Minh"}], birthDate="1990-13-01"))
    assert response.status_code == 400
    expressions = {e for issue in response.json()["issue"] for e in issue["expression"]}
    assert {"Patient.name[0].given", "Patient.birthDate"} <= expressions
    nulls = api.post("/Patient", patient(name=[{"given": [None]}]))
    assert nulls.status_code == 400
    assert outcome_issue(nulls)["expression"] == ["Patient.name[0].given[0]"]


@pytest.mark.parametrize(
    ("value", "birth_date", "reason"),
    [
        ("12345", None, "12 digits"),
        ("02718500012X", None, "12 digits"),
        ("999185000123", None, "province"),
        ("027185000123", "1986-01-01", "birthDate"),
    ],
)
def test_bad_cccd(api: Api, value: str, birth_date: str | None, reason: str) -> None:
    body = patient(identifier=[{"system": CCCD, "value": value}])
    if birth_date:
        body["birthDate"] = birth_date
    response = api.post("/Patient", body)
    assert response.status_code == 422
    issue = outcome_issue(response)
    assert reason in issue["diagnostics"]
    assert issue["expression"] == ["Patient.identifier[0].value"]
    assert value not in response.text  # the personal ID is not echoed back


def test_good_cccd_accepted(api: Api) -> None:
    body = patient(identifier=[{"system": CCCD, "value": "001303012345"}], birthDate="2003-05-05")
    assert api.post("/Patient", body).status_code == 201


def test_unresolvable_reference_outside_bundle(api: Api) -> None:
    observation = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"text": "HbA1c"},
        "subject": {"reference": "urn:uuid:4b1c0a5e-0000-0000-0000-000000000000"},
    }
    response = api.post("/Observation", observation)
    assert response.status_code == 400
    assert outcome_issue(response)["expression"] == ["Observation.subject.reference"]


def test_request_too_large(hub: Any, api: Api) -> None:
    hub.settings.max_request_bytes = 2048
    response = api.post(
        "/Patient", patient(text={"status": "generated", "div": "<div>" + "x" * 4096 + "</div>"})
    )
    assert response.status_code == 413


# ---------------------------------------------------------------------- auth
def test_missing_token(api: Api) -> None:
    response = api.client.get("/fhir/Patient/x")
    assert response.status_code == 401
    assert outcome_issue(response)["code"] == "login"
    assert response.headers["www-authenticate"].startswith("Bearer")
    garbage = api.get("/Patient/x", token="not-a-jwt")
    assert garbage.status_code == 401


def test_wrong_scope(hub: Any, api: Api) -> None:
    reader = token_for(hub, "system/Patient.rs")
    created = create(api, patient())
    assert api.get(f"/Patient/{created['id']}", token=reader).status_code == 200
    write = api.post("/Patient", patient(), token=reader)
    assert write.status_code == 403
    assert outcome_issue(write)["code"] == "forbidden"
    other_type = api.get("/Observation/x", token=reader)
    assert other_type.status_code == 403
    assert api.delete(f"/Patient/{created['id']}", token=reader).status_code == 403
    assert api.get("/_history", token=reader).status_code == 403
    assert api.get(f"/Patient/{created['id']}").status_code == 200


def test_conditional_delete(api: Api) -> None:
    target = create(api, patient(identifier=[{"system": "urn:del", "value": "1"}]))
    create(api, patient(identifier=[{"system": "urn:del", "value": "2"}]))
    create(api, patient(identifier=[{"system": "urn:del", "value": "2"}]))
    assert api.delete("/Patient", params={"identifier": "urn:del|1"}).status_code == 204
    assert api.get(f"/Patient/{target['id']}").status_code == 410
    assert api.delete("/Patient", params={"identifier": "urn:del|2"}).status_code == 412
    assert api.delete("/Patient", params={"identifier": "urn:del|none"}).status_code == 204
    assert api.get("/Patient", params={"identifier": "urn:del|2"}).json()["total"] == 2


def test_search_total_only_when_complete(api: Api) -> None:
    for _ in range(3):
        create(api, patient(identifier=[{"system": "urn:page", "value": "same"}]))
    page = api.get("/Patient", params={"identifier": "urn:page|same", "_count": "2"}).json()
    assert len(page["entry"]) == 2 and "total" not in page
    assert api.get("/Patient", params={"identifier": "urn:page|same"}).json()["total"] == 3
    accurate = {"identifier": "urn:page|same", "_count": "2", "_total": "accurate"}
    assert api.get("/Patient", params=accurate).json()["total"] == 3
    no_total = {"identifier": "urn:page|same", "_total": "none"}
    assert "total" not in api.get("/Patient", params=no_total).json()


@pytest.mark.parametrize("resource_type", ["Resource", "DomainResource", "SubscriptionTopic"])
def test_abstract_and_non_r4_types_are_refused(api: Api, resource_type: str) -> None:
    assert api.post(f"/{resource_type}", {"resourceType": resource_type}).status_code == 404


def test_concurrent_writers_lose_no_update(api: Api) -> None:
    """Eight writers at once: with If-Match exactly one wins; without, every write is a version."""
    from concurrent.futures import ThreadPoolExecutor

    created = create(api, patient())
    path = f"/Patient/{created['id']}"

    def guarded(n: int) -> int:
        body = {**created, "birthDate": f"19{n:02d}-01-01"}
        return int(api.put(path, body, headers={"If-Match": 'W/"1"'}).status_code)

    with ThreadPoolExecutor(8) as pool:
        statuses = sorted(pool.map(guarded, range(8)))
    assert statuses == [200] + [412] * 7

    def blind(n: int) -> int:
        return int(api.put(path, {**created, "birthDate": f"20{n:02d}-01-01"}).status_code)

    with ThreadPoolExecutor(8) as pool:
        assert set(pool.map(blind, range(8))) == {200}
    history = api.get(f"{path}/_history", params={"_count": "100"}).json()["entry"]
    assert [e["resource"]["meta"]["versionId"] for e in history] == [
        str(v) for v in range(10, 0, -1)
    ]


@pytest.mark.parametrize("sort", [None, "-_lastUpdated", "family"])
def test_search_paging_survives_writes_between_pages(api: Api, sort: str | None) -> None:
    """Keyset paging: entries present throughout appear exactly once, whatever is written."""
    ident = {"system": "urn:paging", "value": "v"}
    before = {
        create(api, patient(identifier=[ident], name=[{"family": f"F{i}"}]))["id"] for i in range(7)
    }
    params = {"identifier": "urn:paging|v", "_count": "2"}
    if sort:
        params["_sort"] = sort
    bundle = api.get("/Patient", params=params).json()
    seen = [e["resource"]["id"] for e in bundle["entry"]]
    writes = 0
    while nxt := next((x["url"] for x in bundle["link"] if x["relation"] == "next"), None):
        create(api, patient(identifier=[ident], name=[{"family": "F0"}]))  # a write between pages
        writes += 1
        bundle = api.client.get(nxt, headers=api.headers()).json()
        seen += [e["resource"]["id"] for e in bundle.get("entry", [])]
    assert writes >= 3
    assert len(seen) == len(set(seen))  # nothing repeated
    assert before <= set(seen)  # nothing that was there all along skipped


def test_a_tampered_cursor_is_a_400_at_every_place_of_it(api: Api) -> None:
    """The next link's cursor is the client's to send back, so anything can come: each of its
    values replaced by the wrong kind, a text no decimal reads, an exponent past what a
    decimal holds, or an unreadable date is a 400 naming ``_cursor``, never a 500 (null is a
    value a cursor may hold, so it is not among them)."""
    for year in (1990, 1991, 1992):
        ident = [{"system": "urn:cursor", "value": "v"}]
        create(api, patient(identifier=ident, birthDate=f"{year}-01-01"))
    params = {"identifier": "urn:cursor|v", "_count": "1", "_sort": "birthdate"}
    first = api.get("/Patient", params=params).json()
    nxt = next(x["url"] for x in first["link"] if x["relation"] == "next")
    cursor = parse_qs(urlsplit(nxt).query)["_cursor"][0]
    values = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    assert len(values) == 3 and "dt" in values[0]  # the birth date, the type, the id
    hostile = [
        {"dec": "abc"},
        {"dec": "NaN"},
        {"dec": "0E1000000000000000000"},
        {"dt": "never"},
        {"dt": 5},
        "text",
        [1],
    ]
    for place in range(len(values)):
        for value in hostile:
            if isinstance(value, str) and isinstance(values[place], str):
                continue  # a text where a text goes is a cursor that pages on from elsewhere
            forged = [*values[:place], value, *values[place + 1 :]]
            text = base64.urlsafe_b64encode(json.dumps(forged).encode()).decode().rstrip("=")
            response = api.get("/Patient", params={**params, "_cursor": text})
            assert response.status_code == 400, (place, value, response.text)
            assert outcome_issue(response)["expression"] == ["_cursor"]


def test_ids_dot_and_dot_dot_are_refused_everywhere_an_id_is_named(api: Api) -> None:
    """R4's id grammar allows them, but every URL library reads them as path segments."""
    for raw in ("%2E", "%2E%2E"):
        response = api.put(f"/Patient/{raw}", {**patient(), "id": raw.replace("%2E", ".")})
        assert response.status_code == 400, raw
        assert "'.' or '..'" in outcome_issue(response)["diagnostics"]
    entry = {
        "resource": {**patient(), "id": ".."},
        "request": {"method": "PUT", "url": "Patient/.."},
    }
    batch = api.post("", {"resourceType": "Bundle", "type": "batch", "entry": [entry]})
    assert batch.json()["entry"][0]["response"]["status"].startswith("400")
    assert api.get("/Patient", params={"_summary": "count"}).json()["total"] == 0


def test_links_are_built_on_the_base_url_not_the_host_header(api: Api, hub: Hub) -> None:
    api.post("/Patient", patient())
    api.post("/Patient", patient())
    forged = {"Host": "evil.example", "X-Forwarded-Host": "evil.example"}
    for path, params in (("/Patient", {"_count": "1"}), ("/_history", {"_count": "1"})):
        bundle = api.get(path, params=params, headers=forged).json()
        urls = [link["url"] for link in bundle["link"]]
        base = f"{hub.settings.fhir_base_url}/"
        assert len(urls) == 2 and all(u.startswith(base) for u in urls), urls
        assert all("evil" not in e["fullUrl"] for e in bundle["entry"])


def test_a_search_lists_at_most_200_values_per_parameter_and_40_parameters(api: Api) -> None:
    """Bounded work: each value is a term of the SQL (SQLite's parser stops at a depth of
    1,000, which 1,000 names used to reach: a 503 inviting a retry that could never work)."""
    names = [f"n{i}" for i in range(201)]
    too_many = api.get("/Patient", params={"name": ",".join(names)})
    assert too_many.status_code == 400
    issue = outcome_issue(too_many)
    assert (issue["code"], issue["expression"]) == ("too-costly", ["name"])
    assert api.get("/Patient", params={"name": ",".join(names[:200])}).status_code == 200
    parameters = [("gender", "male")] * 41
    assert api.get("/Patient", params=parameters).status_code == 400
    assert api.get("/Patient", params=parameters[:40]).status_code == 200


def test_limits_of_the_database_are_told_apart_from_outages(database_url: str) -> None:
    """What the same statement meets every time is a 400; a lost connection stays a 503."""
    import sqlite3

    import psycopg

    from emr_hub.main import beyond_database_limits

    if database_url.startswith("sqlite"):
        with sqlite3.connect(":memory:") as conn:
            try:
                conn.execute("SELECT 1 WHERE " + " OR ".join(["1 = 0"] * 1100))
            except sqlite3.OperationalError as error:
                assert beyond_database_limits(error)
            else:
                pytest.skip("this SQLite takes 1,100 terms")
            try:
                conn.execute("SELECT * FROM no_such_table")
            except sqlite3.OperationalError as error:
                assert not beyond_database_limits(error)
        return
    libpq = database_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(libpq) as conn:
        try:
            conn.execute("SELECT concat(" + ", ".join(["1"] * 101) + ")")
        except psycopg.OperationalError as error:
            assert beyond_database_limits(error)
    try:
        psycopg.connect("postgresql://postgres@127.0.0.1:1/none", connect_timeout=2)
    except psycopg.OperationalError as error:
        assert not beyond_database_limits(error)


def test_a_statement_is_stopped_at_the_time_limit(tmp_path: Path, database_url: str) -> None:
    """Every statement of the hub's engine is bounded (PostgreSQL's statement_timeout, SQLite's
    progress handler); a migration's are not. The stop is a 400, told apart from an outage."""
    from sqlalchemy import text
    from sqlalchemy.exc import OperationalError

    from emr_hub.main import took_too_long
    from storage.db import UNBOUNDED, Database

    endless = (
        "SELECT pg_sleep(30)"
        if database_url.startswith("postgresql")
        else "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) "
        "SELECT count(*) FROM c"
    )
    db = Database(database_url, statement_timeout=0.2)
    try:
        started = time.monotonic()
        with pytest.raises(OperationalError) as stopped, db.snapshot() as session:
            session.execute(text(endless))
        assert time.monotonic() - started < 10
        assert took_too_long(stopped.value.orig)
        short = (
            "SELECT pg_sleep(0.4)"
            if database_url.startswith("postgresql")
            else (
                "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 3000000) "
                "SELECT count(*) FROM c"
            )
        )
        with db.engine.execution_options(**{UNBOUNDED: True}).begin() as connection:
            if database_url.startswith("postgresql"):
                connection.execute(text("SET LOCAL statement_timeout = 0"))
            connection.execute(text(short))  # longer than 0.2 s, and not stopped
    finally:
        db.dispose()


def test_a_request_stopped_at_the_time_limit_is_a_400(tmp_path: Path, database_url: str) -> None:
    """A search within the parameter limits (10 parameters of 200 values) that would scan
    every name 2,000 times over (half a minute on PostgreSQL), on a hub that gives a
    statement 50 ms, far more than its other statements need: stopped there, and answered 400
    too-costly saying what to do, not a 503 that invites the same request again."""
    from fastapi.testclient import TestClient

    from emr_hub.hub import Hub
    from emr_hub.main import create_app
    from tests.conftest import make_settings

    bundle = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [
            {
                "resource": {"resourceType": "Patient", "name": [{"family": f"Họ{i:05}"}]},
                "request": {"method": "POST", "url": "Patient"},
            }
            for i in range(2000)
        ],
    }
    loader = Hub.from_settings(make_settings(tmp_path, database_url), migrate=True)
    try:
        token = token_for(loader)
        with TestClient(create_app(loader)) as client:
            assert Api(client, token).post("", bundle).status_code == 200
    finally:
        loader.close()
    values = ",".join([*(f"x{i:03}" for i in range(199)), "ọ0"])
    costly = [("name:contains", values)] * 10 + [("_sort", "-family")]
    hub = Hub.from_settings(make_settings(tmp_path, database_url, statement_timeout_seconds=0.05))
    try:
        with TestClient(create_app(hub)) as client:
            api = Api(client, token)
            assert api.get("/Patient", params={"name": "Họ00001"}).status_code == 200
            started = time.monotonic()
            answer = client.get("/fhir/Patient", params=costly, headers=api.headers())
            took = time.monotonic() - started
    finally:
        hub.close()
    assert answer.status_code == 400, answer.text
    issue = outcome_issue(answer)
    assert issue["code"] == "too-costly" and "0.05 s" in issue["diagnostics"]
    assert took < 10  # stopped, not run to the end
