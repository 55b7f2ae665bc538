"""``reindex`` and ``emr-hub reindex``: the index rebuilt from the stored bodies is exactly what
the write path indexes, batch by batch (keyset, no OFFSET), on SQLite and PostgreSQL."""

from __future__ import annotations

import re
import threading
import time
from collections import Counter
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest
from sqlalchemy import delete, event, insert, select

from emr_hub.fhir.search.indexer import INDEX_TABLES, STRING, TOKEN, index_rows
from emr_hub.fhir.search.reindex import count_resources, reindex
from emr_hub.fhir.store import RESOURCE, FhirStore
from emr_hub.hub import Hub
from tests.conftest import make_settings
from tests.test_cli_and_serve import FIXTURES, cli_env, run

SYNTHEA = FIXTURES / "02-1484a42d-0eaf-4654-9cbf-6b050a5cd73b.json"
Row = tuple[Any, ...]


# --------------------------------------------------------------------------- helpers
def synthea_resources() -> list[dict[str, Any]]:
    """The Synthea transaction's resources, their ``urn:uuid:`` references made ``Type/id``."""
    bundle = orjson.loads(SYNTHEA.read_bytes())
    text = orjson.dumps([entry["resource"] for entry in bundle["entry"]]).decode()
    for entry in bundle["entry"]:
        resource = entry["resource"]
        text = text.replace(
            f'"{entry["fullUrl"]}"', f'"{resource["resourceType"]}/{resource["id"]}"'
        )
    return list(orjson.loads(text))


def populate(hub: Hub) -> None:
    """Synthea resources plus hand-made ones: an updated Patient, a deleted one, an
    Observation pointing at the hub by absolute URL (indexed as local only with the base URL)."""
    base = hub.settings.fhir_base_url
    with hub.db.transaction() as session:
        store = FhirStore(session, base_url=base)
        for resource in synthea_resources():
            store.create(resource, resource_id=resource["id"])
        store.create(
            {
                "resourceType": "Patient",
                "name": [{"family": "Nguyễn", "given": ["Văn", "An"]}],
                "gender": "male",
                "birthDate": "1970-01-01",
            },
            resource_id="p-updated",
        )
        store.create(
            {"resourceType": "Patient", "name": [{"family": "Trần"}], "gender": "female"},
            resource_id="p-deleted",
        )
        store.create(
            {
                "resourceType": "Observation",
                "status": "final",
                "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
                "subject": {"reference": f"{base}/Patient/p-updated"},
                "effectiveDateTime": "2024-05-06T07:08:09+07:00",
                "valueQuantity": {
                    "value": 72.5,
                    "unit": "beats/min",
                    "system": "http://unitsofmeasure.org",
                    "code": "/min",
                },
            },
            resource_id="obs-absolute",
        )
        store.flush()
    with hub.db.transaction() as session:
        store = FhirStore(session, base_url=base)
        store.update(
            "Patient",
            "p-updated",
            {
                "resourceType": "Patient",
                "name": [{"family": "Nguyễn", "given": ["Văn", "Bình"]}],
                "gender": "male",
                "birthDate": "1971-02-03",
                "identifier": [{"system": "urn:test", "value": "42"}],
            },
        )
        store.delete("Patient", "p-deleted")
        store.flush()


def _norm(value: Any) -> Any:
    """Values as both databases give them back comparable (SQLite: naive UTC datetimes,
    numerics as floats at the ten decimal places SQLite gives back)."""
    if isinstance(value, datetime):
        return value.astimezone(UTC).replace(tzinfo=None) if value.tzinfo else value
    if isinstance(value, Decimal | float):
        return float(f"{float(value):.10f}")
    return value


def _columns(table: Any) -> list[str]:
    return [c.name for c in table.columns if c.name != "seq"]


def stored_rows(hub: Hub) -> Counter[Row]:
    """Every index row, as (table, *columns but seq), a multiset."""
    found: Counter[Row] = Counter()
    with hub.db.snapshot() as session:
        for table in INDEX_TABLES:
            columns = [table.c[name] for name in _columns(table)]
            for row in session.execute(select(*columns)):
                found[(table.name, *(_norm(v) for v in row))] += 1
    return found


def live_resources(hub: Hub, types: list[str] | None = None) -> list[dict[str, Any]]:
    query = select(RESOURCE.c.content).where(RESOURCE.c.deleted.is_(False))
    if types is not None:
        query = query.where(RESOURCE.c.resource_type.in_(types))
    with hub.db.snapshot() as session:
        return [row[0] for row in session.execute(query)]


def expected_rows(hub: Hub, types: list[str] | None = None) -> Counter[Row]:
    """What ``index_rows`` makes of every live resource's stored body, a multiset."""
    found: Counter[Row] = Counter()
    for content in live_resources(hub, types):
        for table, rows in index_rows(content, hub.settings.fhir_base_url).items():
            names = _columns(table)
            for row in rows:
                found[(table.name, *(_norm(row.get(name)) for name in names))] += 1
    return found


def wipe_index(hub: Hub) -> None:
    with hub.db.transaction() as session:
        for table in INDEX_TABLES:
            session.execute(delete(table))
    assert stored_rows(hub) == Counter()


def owners(rows: Counter[Row]) -> set[tuple[str, str]]:
    return {(row[1], row[2]) for row in rows}  # (resource_type, resource_id)


# ----------------------------------------------------------------------------- tests
def test_reindex_rebuilds_what_the_writes_indexed(hub: Hub) -> None:
    populate(hub)
    written = stored_rows(hub)
    expected = expected_rows(hub)
    assert written == expected  # the write path and index_rows agree: the baseline
    assert ("Observation", "obs-absolute") in owners(expected)
    assert ("Patient", "p-deleted") not in owners(expected)

    wipe_index(hub)
    live = count_resources(hub)
    assert live == len(live_resources(hub)) == 70 + 2  # the deleted Patient not counted
    statements: list[tuple[str, Any]] = []

    def record(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        statements.append((statement, parameters))

    event.listen(hub.db.engine, "before_cursor_execute", record)
    advanced: list[int] = []
    try:
        done = reindex(hub, batch=7, progress=advanced.append)
    finally:
        event.remove(hub.db.engine, "before_cursor_execute", record)

    assert done == live == sum(advanced)
    assert len(advanced) == -(-(live + 1) // 7)  # the tombstone is walked too, not counted
    assert stored_rows(hub) == expected == written
    walks = [(s, p) for s, p in statements if s.lstrip().startswith("SELECT") and "LIMIT" in s]
    assert len(walks) == len(advanced) + 1  # the last one finds nothing left
    for statement, parameters in walks:  # keyset: SQLite's dialect always says OFFSET, with 0
        assert "OFFSET" not in statement or (statement.endswith("OFFSET ?") and parameters[-1] == 0)
        assert "FOR UPDATE" in statement or hub.db.dialect == "sqlite"


def test_reindex_drops_stale_rows_and_rows_of_deleted_resources(hub: Hub) -> None:
    populate(hub)
    expected = expected_rows(hub)
    junk = {"param": "gender", "system": None, "code": "junk"}
    with hub.db.transaction() as session:
        session.execute(
            insert(TOKEN),
            [
                {"resource_type": "Patient", "resource_id": "p-updated", **junk},
                {"resource_type": "Patient", "resource_id": "p-deleted", **junk},
            ],
        )
        session.execute(
            insert(STRING),
            [
                {
                    "resource_type": "Patient",
                    "resource_id": "p-deleted",
                    "param": "family",
                    "normalized": "tran",
                    "exact": "Trần",
                }
            ],
        )
    assert stored_rows(hub) != expected
    assert reindex(hub, batch=1000) == count_resources(hub)
    after = stored_rows(hub)
    assert after == expected
    assert ("Patient", "p-deleted") not in owners(after)


def test_reindex_only_the_given_types(hub: Hub) -> None:
    populate(hub)
    wipe_index(hub)
    types = ["Patient", "Encounter"]
    done = reindex(hub, resource_types=types, batch=2)
    assert done == count_resources(hub, types) == 1 + 3 + 1
    after = stored_rows(hub)
    assert after == expected_rows(hub, types)
    assert {row[1] for row in after} == set(types)
    assert {"name", "birthdate", "gender", "identifier"} <= {
        row[3] for row in after if row[1:3] == ("Patient", "p-updated")
    }
    # the rest of the index rebuilt later: everything as written
    reindex(hub, resource_types=["Observation", "Patient"])
    reindex(hub)
    assert stored_rows(hub) == expected_rows(hub)
    with pytest.raises(ValueError, match="Nope"):
        reindex(hub, resource_types=["Nope"])
    with pytest.raises(ValueError, match="batch"):
        reindex(hub, batch=0)


def test_reindex_waits_for_a_concurrent_writer(hub: Hub) -> None:
    """A batch does not index a body a writer is replacing: it waits for the writer's commit
    (PostgreSQL: the row lock; SQLite: the write lock) and indexes the new body."""
    populate(hub)
    wipe_index(hub)
    finished = threading.Event()
    failures: list[BaseException] = []

    def run_reindex() -> None:
        try:
            reindex(hub, resource_types=["Patient"])
        except BaseException as error:  # noqa: BLE001 - reported by the test thread
            failures.append(error)
        finally:
            finished.set()

    worker = threading.Thread(target=run_reindex)
    with hub.db.transaction() as session:
        store = FhirStore(session, base_url=hub.settings.fhir_base_url)
        store.update(
            "Patient",
            "p-updated",
            {"resourceType": "Patient", "name": [{"family": "Lê"}], "gender": "other"},
        )
        store.flush()
        worker.start()
        time.sleep(0.5)
        assert not finished.is_set()  # blocked behind the uncommitted write
    worker.join(timeout=60)
    assert finished.is_set() and not failures, failures
    patient = {row for row in stored_rows(hub) if row[1:3] == ("Patient", "p-updated")}
    assert patient == {
        row for row in expected_rows(hub, ["Patient"]) if row[1:3] == ("Patient", "p-updated")
    }
    assert ("search_token", "Patient", "p-updated", "gender", None, "other") in patient
    assert not any("Bình" in str(row) for row in patient)


def test_cli_reindex(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'hub.db'}"
    hub = Hub.from_settings(make_settings(tmp_path, url), migrate=True)
    try:
        populate(hub)
        expected = expected_rows(hub, ["Patient", "Observation"])
        wanted = count_resources(hub, ["Patient", "Observation"])
        wipe_index(hub)
    finally:
        hub.close()
    env = cli_env(tmp_path, url)
    result = run(["reindex", "--type", "Patient", "--type", "Observation", "--batch", "3"], env)
    summary = result.stdout.strip().splitlines()[-1]
    match = re.fullmatch(r"reindexed (\d+) resources in \d+\.\d s \(\d+/s\)", summary)
    assert match, result.stdout
    assert int(match.group(1)) == wanted == 1 + 1 + 48 + 1
    hub = Hub.from_settings(make_settings(tmp_path, url))
    try:
        assert stored_rows(hub) == expected
    finally:
        hub.close()

    everything = run(["reindex"], env)
    assert everything.stdout.strip().splitlines()[-1].startswith("reindexed 72 resources in ")
    unknown = run(["reindex", "--type", "Nope"], env, check=False)
    assert unknown.returncode != 0 and "Nope" in unknown.stderr
    assert run(["reindex", "--batch", "0"], env, check=False).returncode != 0
