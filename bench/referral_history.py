"""Referral history benchmark: ``Patient/$referral-history`` over referral chains posted by
the hospitals themselves, on top of generated background patients.

1. Starts a real ``emr-hub serve`` on PostgreSQL (``--fresh-db`` / ``--keep-db NAME`` /
   ``--reuse-db NAME``, as ``bench/search.py``) and loads Synthea-derived patients
   (``bench/generate.py``) until the database holds ``--target`` generated resources.
2. Writes a hospital network (Organizations at the three levels of care with facility codes, a
   partnership as an OrganizationAffiliation, one API client per hospital) and, for a share
   of the patients (``--share``), a chain of 1 to 3 referral letters: each a ServiceRequest
   (``basedOn`` the previous one) with its Task, moved requested → accepted → in-progress →
   completed (a DocumentReference on its output), sometimes with a re-exam Appointment
   ``basedOn`` it. Every step is a transaction Bundle posted by the hospital whose step it is,
   since the hub checks who may create and move a referral Task. The chains are recorded in
   the database (table ``bench_referral_chain``), so a kept database is measured again, or
   grown, without posting them twice.
3. Measures ``GET /fhir/Patient/{id}/$referral-history`` and
   ``GET /fhir/Patient/$referral-history?identifier=<cccd system>|<cccd>`` from ``--clients``
   threads, with ``GET /healthz`` in the same mix as the machine's floor, and checks every
   answer against what was posted: the letters in order, then per letter exactly its Task,
   Appointment, the Organizations not shown yet and the returned DocumentReference.
4. ``--explain``: the SQL one history request sends, with ``EXPLAIN (ANALYZE, BUFFERS)`` of
   the slowest statements; ``--profile N``: N requests in this process under cProfile.

Usage (see bench/README.md)::

    .venv/bin/python bench/referral_history.py \
        --database-url postgresql://postgres@127.0.0.1:5432/test --fresh-db
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import cProfile
import io
import pstats
import random
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson

if __package__ in (None, ""):  # run as a script: make ``bench`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.generate import CCCD, Generator
from bench.ingest import (
    BENCH_ORGANIZATION,
    DEFAULT_DATA,
    _code_version,
    _diagnostics,
    _loadavg,
    database_kind,
    ensure_client,
    log,
)
from bench.search import (
    Api,
    LoadState,
    Query,
    Running,
    Sample,
    _connect,
    captured_sql,
    database_figures,
    explain_query,
    in_process_app,
    is_data_statement,
    load,
    lookup_patients,
    machine,
    open_database,
    open_state,
    print_explain,
    run_mix,
    start_server,
    summarise,
)
from emr_hub.fhir.identifiers import FACILITY_CODE
from emr_hub.referrals.rules import LEVEL_SYSTEM
from emr_hub.referrals.xml130 import (
    FOLLOW_UP,
    ICD10,
    REEXAM_SLIP_SYSTEM,
    REFERRAL_CATEGORY,
    REFERRAL_LETTER_SYSTEM,
    TASK_FULFILL,
    VN_TZ,
)

KINDS = ("by-id", "by-cccd")
BASELINE = "healthz"
MAX_SHOWN = 10
HISTORY_TYPES = ("ServiceRequest", "Task", "DocumentReference", "Appointment")
DISCHARGE_SUMMARY = {
    "coding": [{"system": "http://loinc.org", "code": "18842-5", "display": "Discharge summary"}]
}
# (ICD-10 code, display): reasons drawn for the letters
REASONS = (
    ("I48.0", "Rung nhĩ kịch phát"),
    ("I05.0", "Hẹp van hai lá do thấp"),
    ("I10", "Tăng huyết áp vô căn"),
    ("E11.9", "Đái tháo đường típ 2 không biến chứng"),
    ("J18.9", "Viêm phổi, không đặc hiệu"),
    ("K35.8", "Viêm ruột thừa cấp"),
    ("N18.3", "Bệnh thận mạn giai đoạn 3"),
    ("C34.9", "U ác của phế quản hoặc phổi"),
    ("S72.0", "Gãy cổ xương đùi"),
    ("I63.9", "Nhồi máu não"),
)


# --------------------------------------------------------------------------- network
@dataclass(frozen=True)
class Hospital:
    """An Organization of the bench network; its API client has the same id."""

    id: str
    code: str  # facility code (ma-cskcb), invented
    level: str  # BAN_DAU, CO_BAN or CHUYEN_SAU
    name: str
    part_of: str | None = None

    @property
    def rank(self) -> int:
        return ("BAN_DAU", "CO_BAN", "CHUYEN_SAU").index(self.level)


def build_network() -> list[Hospital]:
    """Two central hospitals, three provincial ones, six district centres (two per
    province). The facility codes ``BQ...`` are invented."""
    central = [
        Hospital(f"bench-cs-{n}", f"BQ00{n}", "CHUYEN_SAU", f"Bệnh viện Trung ương {n} (bench)")
        for n in (1, 2)
    ]
    provincial = [
        Hospital(f"bench-cb-{n}", f"BQ10{n}", "CO_BAN", f"Bệnh viện Đa khoa tỉnh {n} (bench)")
        for n in (1, 2, 3)
    ]
    district = [
        Hospital(
            f"bench-bd-{n}",
            f"BQ20{n}",
            "BAN_DAU",
            f"Trung tâm Y tế huyện {n} (bench)",
            part_of=provincial[(n - 1) // 2].id,
        )
        for n in range(1, 7)
    ]
    return central + provincial + district


PARTNERSHIP = ("bench-cs-1", "bench-cb-1")  # (central, satellite)


def network_bundle(hospitals: list[Hospital]) -> dict[str, Any]:
    """The Organizations and the partnership, as PUTs: posting it again changes nothing."""
    entries = []
    for hospital in hospitals:
        organization: dict[str, Any] = {
            "resourceType": "Organization",
            "id": hospital.id,
            "identifier": [{"system": FACILITY_CODE, "value": hospital.code}],
            "active": True,
            "type": [{"coding": [{"system": LEVEL_SYSTEM, "code": hospital.level}]}],
            "name": hospital.name,
        }
        if hospital.part_of:
            organization["partOf"] = {"reference": f"Organization/{hospital.part_of}"}
        entries.append(_put(organization))
    central, satellite = PARTNERSHIP
    affiliation = {
        "resourceType": "OrganizationAffiliation",
        "id": "bench-partnership-1",
        "active": True,
        "organization": {"reference": f"Organization/{central}"},
        "participatingOrganization": {"reference": f"Organization/{satellite}"},
    }
    entries.append(_put(affiliation))
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


def _put(resource: dict[str, Any]) -> dict[str, Any]:
    path = f"{resource['resourceType']}/{resource['id']}"
    return {"resource": resource, "request": {"method": "PUT", "url": path}}


def next_hospitals(sender: Hospital, hospitals: list[Hospital]) -> list[Hospital]:
    """Where ``sender`` may refer without a reason to skip a level: one level up, the same
    level, any level down, or its partner."""
    partners = {PARTNERSHIP, PARTNERSHIP[::-1]}
    return [
        h
        for h in hospitals
        if h.id != sender.id and (h.rank - sender.rank <= 1 or (sender.id, h.id) in partners)
    ]


# ---------------------------------------------------------------------------- chains
@dataclass(frozen=True)
class Leg:
    """One planned referral letter."""

    sender: Hospital
    receiver: Hospital
    signed: datetime
    reason: tuple[str, str]
    appointment: bool


def plan_chain(seed: int, index: int, share: float, hospitals: list[Hospital]) -> list[Leg]:
    """The letters of generated patient ``index`` (none for most): drawn from (seed, index)
    only, so a kept database grown later plans the same chains for the same patients."""
    rng = random.Random(seed * 1_000_003 + index * 7 + 5)
    if rng.random() >= share:
        return []
    by_level = {
        level: [h for h in hospitals if h.level == level] for level in ("BAN_DAU", "CO_BAN")
    }
    sender = rng.choice(by_level["BAN_DAU"] if rng.random() < 0.75 else by_level["CO_BAN"])
    signed = datetime(2025, 1, 6, tzinfo=VN_TZ) + timedelta(
        days=rng.randrange(300), hours=rng.randrange(8, 17), minutes=rng.randrange(60)
    )
    legs = []
    for _ in range(rng.choice((1, 1, 2, 2, 3))):
        options = next_hospitals(sender, hospitals)
        upward = [h for h in options if h.rank > sender.rank]
        receiver = rng.choice(upward if upward and rng.random() < 0.7 else options)
        legs.append(Leg(sender, receiver, signed, rng.choice(REASONS), rng.random() < 0.5))
        sender = receiver
        signed += timedelta(days=rng.randrange(5, 40), hours=rng.randrange(-3, 4))
    return legs


@dataclass
class Posted:
    """One letter as stored: the ids of its resources and its two hospitals."""

    sr: str
    task: str
    document: str
    appointment: str | None
    sender: str
    receiver: str

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class StepFailed(Exception):
    """A Bundle of a chain was refused (the message never holds resource contents)."""


def _urn() -> str:
    return f"urn:uuid:{uuid.uuid4()}"


def _ref(reference: str) -> dict[str, str]:
    return {"reference": reference}


def _org(hospital: Hospital) -> dict[str, str]:
    return {"reference": f"Organization/{hospital.id}", "display": hospital.name}


def _transaction(*entries: dict[str, Any]) -> bytes:
    return orjson.dumps({"resourceType": "Bundle", "type": "transaction", "entry": list(entries)})


def _locations(api: Api, body: bytes, what: str) -> list[str]:
    """``Type/id`` of every entry of the answer to a transaction; StepFailed otherwise."""
    try:
        response = api.request("POST", "/fhir", content=body)
    except httpx.HTTPError as exc:
        raise StepFailed(f"{what} ({api.client_id}): {type(exc).__name__}") from None
    if response.status_code != 200:
        raise StepFailed(
            f"{what} ({api.client_id}): HTTP {response.status_code}: {_diagnostics(response)}"
        )
    out = []
    for entry in orjson.loads(response.content).get("entry") or []:
        answer = entry.get("response") or {}
        if not str(answer.get("status", "")).startswith("2"):
            raise StepFailed(f"{what} ({api.client_id}): entry status {answer.get('status')!r}")
        out.append("/".join(str(answer.get("location", "")).split("/")[:2]))
    return out


def post_leg(
    apis: dict[str, Api], patient_id: str, leg: Leg, number: str, previous: str | None
) -> Posted:
    """The letter and its Task by the sender, then each step of the Task by the receiver."""
    patient = _ref(f"Patient/{patient_id}")
    code, display = leg.reason
    reason = {"coding": [{"system": ICD10, "code": code, "display": display}], "text": display}
    letter: dict[str, Any] = {
        "resourceType": "ServiceRequest",
        "identifier": [
            {"system": REFERRAL_LETTER_SYSTEM + leg.sender.code, "value": number, "use": "official"}
        ],
        "status": "active",
        "intent": "order",
        "category": [REFERRAL_CATEGORY],
        "priority": "routine",
        "subject": patient,
        "authoredOn": leg.signed.isoformat(),
        "requester": _org(leg.sender),
        "performer": [_org(leg.receiver)],
        "reasonCode": [reason],
    }
    if previous:
        letter["basedOn"] = [_ref(f"ServiceRequest/{previous}")]
    sr_urn, task_urn = _urn(), _urn()
    task: dict[str, Any] = {
        "resourceType": "Task",
        "status": "requested",
        "businessStatus": {"text": "Chờ tiếp nhận"},
        "intent": "order",
        "code": TASK_FULFILL,
        "focus": _ref(sr_urn),
        "for": patient,
        "authoredOn": leg.signed.isoformat(),
        "requester": _org(leg.sender),
        "owner": _org(leg.receiver),
    }
    sender, receiver = apis[leg.sender.id], apis[leg.receiver.id]
    created = _locations(
        sender,
        _transaction(
            {
                "fullUrl": sr_urn,
                "resource": letter,
                "request": {"method": "POST", "url": "ServiceRequest"},
            },
            {"fullUrl": task_urn, "resource": task, "request": {"method": "POST", "url": "Task"}},
        ),
        "letter and Task",
    )
    sr_id, task_id = (location.split("/")[1] for location in created)
    task = {**task, "id": task_id, "focus": _ref(f"ServiceRequest/{sr_id}")}
    at = leg.signed
    steps = (("accepted", "Đã tiếp nhận"), ("in-progress", "Đang điều trị"))
    for version, (status, words) in enumerate(steps, start=1):
        at += timedelta(hours=4 * version)
        task = {**task, "status": status, "businessStatus": {"text": words}}
        task["lastModified"] = at.isoformat()
        _locations(receiver, _transaction(_task_put(task, version)), f"Task {status}")
    finished = at + timedelta(days=3)
    doc_urn = _urn()
    summary_text = f"Tóm tắt ra viện: {leg.reason[1]} ({code})."
    document = {
        "resourceType": "DocumentReference",
        "status": "current",
        "docStatus": "final",
        "type": DISCHARGE_SUMMARY,
        "subject": patient,
        "date": finished.isoformat(),
        "author": [_org(leg.receiver)],
        "custodian": _org(leg.receiver),
        "content": [
            {
                "attachment": {
                    "contentType": "text/plain; charset=utf-8",
                    "data": base64.b64encode(summary_text.encode()).decode("ascii"),
                }
            }
        ],
        "context": {"related": [_ref(f"ServiceRequest/{sr_id}")]},
    }
    task = {
        **task,
        "status": "completed",
        "businessStatus": {"text": "Đã ra viện, trả giấy ra viện"},
        "lastModified": finished.isoformat(),
        "output": [{"type": DISCHARGE_SUMMARY, "valueReference": _ref(doc_urn)}],
    }
    entries = [
        {
            "fullUrl": doc_urn,
            "resource": document,
            "request": {"method": "POST", "url": "DocumentReference"},
        },
        _task_put(task, 3),
    ]
    if leg.appointment:
        start = (finished + timedelta(days=30)).replace(hour=8, minute=0)
        slip = {
            "resourceType": "Appointment",
            "identifier": [
                {"system": REEXAM_SLIP_SYSTEM + leg.receiver.code, "value": f"{number}-TK"}
            ],
            "status": "booked",
            "appointmentType": FOLLOW_UP,
            "basedOn": [_ref(f"ServiceRequest/{sr_id}")],
            "start": start.isoformat(),
            "end": (start + timedelta(hours=2)).isoformat(),
            "participant": [{"actor": patient, "status": "accepted"}],
        }
        entries.append({"resource": slip, "request": {"method": "POST", "url": "Appointment"}})
    done = _locations(receiver, _transaction(*entries), "Task completed")
    return Posted(
        sr=sr_id,
        task=task_id,
        document=done[0].split("/")[1],
        appointment=done[2].split("/")[1] if leg.appointment else None,
        sender=leg.sender.id,
        receiver=leg.receiver.id,
    )


def _task_put(task: dict[str, Any], version: int) -> dict[str, Any]:
    """A PUT of the Task over its ``version``: a concurrent change would be a 412."""
    return {
        "resource": task,
        "request": {"method": "PUT", "url": f"Task/{task['id']}", "ifMatch": f'W/"{version}"'},
    }


# ------------------------------------------------------------------- chain records
def read_chains(url: str) -> dict[int, dict[str, Any]]:
    """The chains posted so far: copy index → {"patient": id, "letters": [Posted dicts]}."""
    with _connect(url) as conn:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS bench_referral_chain "
            "(copy integer PRIMARY KEY, value jsonb)"
        )
        rows = conn.execute("SELECT copy, value FROM bench_referral_chain").fetchall()
    return {i: v if isinstance(v, dict) else orjson.loads(v) for i, v in rows}


def write_chain(url: str, index: int, record: dict[str, Any]) -> None:
    with _connect(url) as conn:
        conn.execute(
            "INSERT INTO bench_referral_chain (copy, value) VALUES (%s, %s::jsonb) "
            "ON CONFLICT (copy) DO UPDATE SET value = excluded.value",
            (index, orjson.dumps(record).decode()),
        )


@dataclass
class ChainLoad:
    chains: int = 0
    letters: int = 0
    bundles: int = 0
    seconds: float = 0.0
    skipped: list[int] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)


def post_chains(
    bench: Api,
    apis: dict[str, Api],
    url: str,
    plans: dict[int, list[Leg]],
    patient_ids: dict[int, str],
    seed: int,
    clients: int,
) -> ChainLoad:
    """Post every planned chain (the letters of one patient one after the other, patients
    in parallel) and record each finished chain."""
    result = ChainLoad()
    started = last_report = time.perf_counter()

    def one(index: int) -> tuple[int, list[Posted] | None, str | None]:
        patient_id = patient_ids[index]
        found = bench.request(
            "GET",
            "/fhir/ServiceRequest",
            params=[
                ("subject", f"Patient/{patient_id}"),
                ("category", "http://snomed.info/sct|3457005"),
                ("_elements", "id"),
                ("_count", "1"),
            ],
        )
        if found.status_code != 200 or orjson.loads(found.content).get("entry"):
            return index, None, None  # letters not recorded: an interrupted run
        posted: list[Posted] = []
        previous = None
        try:
            for number, leg in enumerate(plans[index], start=1):
                letter = post_leg(apis, patient_id, leg, f"B{seed}-{index}-{number}", previous)
                posted.append(letter)
                previous = letter.sr
        except StepFailed as failure:
            return index, None, f"copy {index}, letter {len(posted) + 1}: {failure}"
        write_chain(url, index, {"patient": patient_id, "letters": [p.as_dict() for p in posted]})
        return index, posted, None

    with ThreadPoolExecutor(max_workers=clients) as pool:
        for index, posted, failure in pool.map(one, sorted(plans)):
            if failure:
                result.failures.append(failure)
            elif posted is None:
                result.skipped.append(index)
            else:
                result.chains += 1
                result.letters += len(posted)
                result.bundles += 4 * len(posted)
            now = time.perf_counter()
            if now - last_report > 30:
                last_report = now
                log(f"  {result.chains} chains, {result.letters} letters in {now - started:.0f} s")
    result.seconds = time.perf_counter() - started
    return result


# --------------------------------------------------------------------------- queries
@dataclass(frozen=True)
class HistoryQuery(Query):
    """A history request and the letters the answer must show, in order."""

    expected: tuple[Posted, ...] = ()


def expected_entries(letters: tuple[Posted, ...]) -> list[tuple[str, str, str]]:
    """(type, id, search mode) of the whole answer: each letter, its Task, its Appointment,
    the Organizations not shown yet (sender first) and the returned DocumentReference."""
    out: list[tuple[str, str, str]] = []
    shown: set[str] = set()
    for letter in letters:
        out += [("ServiceRequest", letter.sr, "match"), ("Task", letter.task, "include")]
        if letter.appointment:
            out.append(("Appointment", letter.appointment, "include"))
        for organization in (letter.sender, letter.receiver):
            if organization not in shown:
                shown.add(organization)
                out.append(("Organization", organization, "include"))
        out.append(("DocumentReference", letter.document, "include"))
    return out


def check_history(bundle: dict[str, Any], letters: tuple[Posted, ...]) -> str | None:
    entries = bundle.get("entry") or []
    got = [
        (
            (e.get("resource") or {}).get("resourceType"),
            (e.get("resource") or {}).get("id"),
            (e.get("search") or {}).get("mode"),
        )
        for e in entries
    ]
    referrals = [i for t, i, mode in got if mode == "match"]
    wanted = [letter.sr for letter in letters]
    if referrals != wanted:
        in_order = sorted(referrals) == sorted(wanted)
        return f"{len(referrals)} referrals, expected {len(wanted)}" + (
            " (out of order)" if in_order else ""
        )
    if bundle.get("total") != len(wanted):
        return f"total {bundle.get('total')}, expected {len(wanted)}"
    expected = expected_entries(letters)
    for position, (have, want) in enumerate(zip(got, expected, strict=False)):
        if have != want:
            return f"entry {position} is {have[0]}/{have[2]}, expected {want[0]}/{want[2]}"
    if len(got) != len(expected):
        return f"{len(got)} entries, expected {len(expected)}"
    tasks = [e["resource"] for e in entries if e["resource"].get("resourceType") == "Task"]
    if any(task.get("status") != "completed" for task in tasks):
        return "a Task is not completed"
    return None


def run_history(api: Api, query: HistoryQuery) -> Sample:
    """One timed request; the answer's content checked against what was posted."""
    started = time.perf_counter()
    try:
        response = api.request("GET", query.path, params=query.params)
        body = response.content
    except httpx.HTTPError as exc:
        return Sample(query.kind, time.perf_counter() - started, 0, type(exc).__name__, query)
    seconds = time.perf_counter() - started
    if response.status_code != 200:
        problem = f"HTTP {response.status_code}: {_diagnostics(response)[:200]}"
        return Sample(query.kind, seconds, response.status_code, problem, query)
    if query.kind == BASELINE:
        return Sample(query.kind, seconds, 200, None, query)
    bundle = orjson.loads(body)
    problem = check_history(bundle, query.expected)
    if problem:
        problem += f" for {query.path}" + ("?identifier=<cccd>" if query.params else "")
    return Sample(query.kind, seconds, 200, problem, query, len(bundle.get("entry") or []))


# --------------------------------------------------------------------------- profile
def profile_history(url: str, base: str, token: str, queries: list[HistoryQuery]) -> dict[str, Any]:
    """The by-id requests through the hub's app in this process, their SQL counted and timed;
    then the same histories under cProfile, called as the route calls them (the app runs in
    other threads, where cProfile does not see): the snapshot session, the history, the
    Bundle and its JSON."""
    from emr_hub.fhir.http import dump
    from emr_hub.fhir.store import FhirStore
    from emr_hub.referrals.history import history_bundle, referral_history
    from emr_hub.security.principal import Principal
    from emr_hub.security.scopes import ScopeSet

    headers = {"Authorization": f"Bearer {token}", "Accept": "application/fhir+json"}
    patient_ids = [query.path.split("/")[3] for query in queries]
    with in_process_app(url, base) as (hub, client):
        client.get(queries[0].path, params=queries[0].params, headers=headers)  # warm
        with captured_sql(hub.db.engine) as captured:
            started = time.perf_counter()
            for query in queries:
                client.get(query.path, params=query.params, headers=headers)
            seconds = time.perf_counter() - started
        data = [c for c in captured if is_data_statement(c)]
        principal = Principal("bench", BENCH_ORGANIZATION, ScopeSet.parse("system/*.cruds"), "")
        fhir_base = hub.settings.fhir_base_url
        profiler = cProfile.Profile()
        profiler.enable()
        for patient_id in patient_ids:
            with hub.db.snapshot() as session:
                store = FhirStore(session, base_url=fhir_base)
                entries = referral_history(store, principal, patient_id, fhir_base)
            dump(history_bundle(entries, fhir_base, fhir_base))
        profiler.disable()
    stream = io.StringIO()
    stats = pstats.Stats(profiler, stream=stream)
    stats.sort_stats("cumulative").print_stats(r"emr_hub|storage|sqlalchemy/orm/session", 25)
    stats.sort_stats("tottime").print_stats(12)
    count = len(queries)
    return {
        "requests": count,
        "request_ms": 1000 * seconds / count,
        "statements_per_request": len(captured) / count,
        "data_statements_per_request": len(data) / count,
        "sql_ms_per_request": sum(c["ms"] for c in captured) / count,
        "stats": stream.getvalue(),
    }


# ------------------------------------------------------------------------------ main
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--database-url", required=True, help="a PostgreSQL URL; its server gets the database"
    )
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--fresh-db", action="store_true", help="a new database, dropped after")
    where.add_argument("--keep-db", metavar="NAME", help="use NAME (created if missing), keep it")
    where.add_argument("--reuse-db", metavar="NAME", help="use NAME, which must exist; keep it")
    parser.add_argument("--target", type=int, default=100_000, help="generated resources")
    parser.add_argument("--share", type=float, default=0.3, help="patients with referrals")
    parser.add_argument("--seed", type=int, default=1, help="data and query seed")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="Synthea bundle folder")
    parser.add_argument("--workers", type=int, default=2, help="API processes (default 2)")
    parser.add_argument("--load-clients", type=int, default=4, help="HTTP clients while loading")
    parser.add_argument("--clients", type=int, default=4, help="HTTP clients for the queries")
    parser.add_argument("--requests", type=int, default=300, help="timed requests per kind")
    parser.add_argument("--warmup", type=int, default=30, help="untimed requests per kind")
    parser.add_argument(
        "--kinds",
        default=",".join((*KINDS, BASELINE)),
        help=f"comma-separated subset of {','.join((*KINDS, BASELINE))}",
    )
    parser.add_argument("--no-analyze", action="store_true", help="no ANALYZE after loading")
    parser.add_argument("--load-only", action="store_true", help="load, then stop")
    parser.add_argument("--explain", action="store_true", help="EXPLAIN one history request")
    parser.add_argument(
        "--profile", type=int, default=0, metavar="N", help="cProfile N in-process requests"
    )
    parser.add_argument("--port", type=int, default=0, help="server port (default: a free one)")
    parser.add_argument("--startup-timeout", type=float, default=120.0, help="seconds")
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    args = parser.parse_args(argv)
    args.kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    for kind in args.kinds:
        if kind not in (*KINDS, BASELINE):
            parser.error(f"unknown kind {kind!r}")
    if database_kind(args.database_url) != "postgresql":
        parser.error("--database-url must be a PostgreSQL URL")
    if not 0 < args.share <= 1:
        parser.error("--share must be in (0, 1]")
    for name in ("workers", "load_clients", "clients", "requests"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.data.is_dir() or not any(args.data.glob("*.json")):
        print(f"the shared data is not there: no Synthea bundles in {args.data}; nothing measured")
        return 0
    generator = Generator(args.data, args.seed)
    with contextlib.ExitStack() as stack:
        figures = run(args, generator, open_database(args, stack), stack)
    if args.json:
        print(orjson.dumps(figures, option=orjson.OPT_INDENT_2).decode())
    else:
        print_figures(figures)
    history = figures.get("history") or {}
    failed = figures["load"]["failures"] or figures["referrals"]["failures"]
    wrong = history.get("errors", 0) + history.get("unexpected", 0)
    return 1 if failed or wrong else 0


def start_hospitals(
    running: Running, hospitals: list[Hospital], connections: int
) -> dict[str, Api]:
    """Register each hospital's client (client id = Organization id) and open its Api."""

    def one(hospital: Hospital) -> Api:
        organization = f"Organization/{hospital.id}"
        ensure_client(running.executable, running.env, hospital.id, organization)
        return Api(running.base, running.executable, running.env, connections, hospital.id)

    with ThreadPoolExecutor(max_workers=4) as pool:
        apis = list(pool.map(one, hospitals))
    return {api.client_id: api for api in apis}


def run(
    args: argparse.Namespace, generator: Generator, url: str, stack: contextlib.ExitStack
) -> dict[str, Any]:
    load_before = _loadavg()
    running = start_server(args, url, stack, max(args.load_clients, args.clients))
    api = running.api
    state = open_state(url, args.seed)
    before = LoadState(state.seed, state.copies, state.resources, list(state.failed))
    loaded = load(api, generator, state, args.target, args.load_clients, url)
    for failure in loaded.failures[:MAX_SHOWN]:
        log(f"FAILED {failure}")

    # ------------------------------------------------------------ network and chains
    hospitals = build_network()
    log(f"network: {len(hospitals)} hospitals and their clients ...")
    answer = api.request("POST", "/fhir", content=orjson.dumps(network_bundle(hospitals)))
    if answer.status_code != 200:
        raise SystemExit(
            f"the network was refused: HTTP {answer.status_code}: {_diagnostics(answer)}"
        )
    apis = start_hospitals(running, hospitals, args.load_clients)
    for hospital_api in apis.values():
        stack.callback(hospital_api.close)
    chains = read_chains(url)
    failed = set(state.failed)
    plans = {
        i: plan
        for i in range(state.copies)
        if i not in failed
        and i not in chains
        and (plan := plan_chain(args.seed, i, args.share, hospitals))
    }
    referrals = ChainLoad()
    if plans:
        copies = {i: generator.describe(i) for i in plans}
        ids = lookup_patients(api, copies, loaded.patient_ids, args.load_clients)
        log(
            f"referral chains: {len(plans)} patients, {sum(len(p) for p in plans.values())} "
            f"letters, {args.load_clients} clients ..."
        )
        referrals = post_chains(
            api,
            apis,
            url,
            {i: p for i, p in plans.items() if i in ids},
            ids,
            args.seed,
            args.load_clients,
        )
        for failure in referrals.failures[:MAX_SHOWN]:
            log(f"FAILED {failure}")
        if referrals.skipped:
            log(f"{len(referrals.skipped)} patients already had unrecorded letters: left out")
    if (loaded.copies or referrals.chains) and not args.no_analyze:
        log("ANALYZE ...")
        with _connect(url) as conn:
            conn.execute("ANALYZE")
    chains = read_chains(url)
    with _connect(url) as conn:
        per_type = dict(
            conn.execute(
                "SELECT resource_type, count(*) FROM resource WHERE resource_type = ANY(%s) "
                "GROUP BY resource_type",
                (list(HISTORY_TYPES),),
            ).fetchall()
        )
    figures: dict[str, Any] = {
        "target": args.target,
        "seed": args.seed,
        "share": args.share,
        "workers": args.workers,
        "clients": args.clients,
        "load_clients": args.load_clients,
        "code": _code_version(),
        "machine": machine(),
        "database": url.rsplit("/", 1)[-1],
        "resources": state.resources,
        "patients": state.copies - len(state.failed),
        **database_figures(url),
        "history_resources": per_type,
        "load": {
            "resources_before": before.resources,
            "copies": loaded.copies,
            "resources": loaded.resources,
            "seconds": loaded.seconds,
            "resources_per_s": loaded.resources / loaded.seconds if loaded.seconds else None,
            "failures": len(loaded.failures),
        },
        "referrals": {
            "chains_before": len(chains) - referrals.chains,
            "chains": referrals.chains,
            "letters": referrals.letters,
            "bundles": referrals.bundles,
            "seconds": referrals.seconds,
            "bundles_per_s": referrals.bundles / referrals.seconds if referrals.seconds else None,
            "skipped": len(referrals.skipped),
            "failures": len(referrals.failures),
            "patients_with_chains": len(chains),
            "letters_total": sum(len(c["letters"]) for c in chains.values()),
        },
    }
    if args.load_only or not chains:
        if not chains:
            log("no referral chains in the database: nothing to measure")
        figures["loadavg_1min"] = {"before": load_before, "after": _loadavg()}
        return figures

    # ----------------------------------------------------------------- measurement
    rng = random.Random(args.seed * 11 + 1)
    patients = sorted(chains.items())
    cccds = {i: generator.describe(i).cccd for i, _ in patients}

    def draw(kind: str, count: int) -> list[HistoryQuery]:
        queries = []
        for _ in range(count):
            index, record = rng.choice(patients)
            letters = tuple(Posted(**letter) for letter in record["letters"])
            if kind == "by-id":
                path, params = f"/fhir/Patient/{record['patient']}/$referral-history", []
            elif kind == "by-cccd":
                path = "/fhir/Patient/$referral-history"
                params = [("identifier", f"{CCCD}|{cccds[index]}")]
            else:
                path, params, letters = "/healthz", [], ()
            queries.append(HistoryQuery(kind, path, params, None, expected=letters))
        return queries

    warmup = [q for kind in args.kinds for q in draw(kind, args.warmup)]
    log(f"warm-up: {len(warmup)} requests ...")
    run_mix(api, warmup, args.clients, run_history)
    timed = [q for kind in args.kinds for q in draw(kind, args.requests)]
    rng.shuffle(timed)
    log(f"history mix: {len(timed)} requests, {args.clients} clients ...")
    samples, seconds = run_mix(api, timed, args.clients, run_history)
    history = [s for s in samples if s.kind != BASELINE]
    problems = [f"{s.kind}: {s.problem}" for s in samples if s.problem]
    figures["history"] = {
        "sample_patients": len(patients),
        "requests": len(timed),
        "history_requests": len(history),
        "seconds": seconds,
        "requests_per_s": len(timed) / seconds if seconds else None,
        "history_per_s": len(history) / seconds if seconds else None,
        "overall": summarise(history),
        "kinds": {k: summarise([s for s in samples if s.kind == k]) for k in args.kinds},
        "errors": sum(1 for s in samples if s.status != 200),
        "unexpected": sum(1 for s in samples if s.status == 200 and s.problem),
        "problems": problems[:50],
    }
    figures["loadavg_1min"] = {"before": load_before, "after": _loadavg()}
    token = api.client.headers["Authorization"].split(" ", 1)[1]
    if args.explain:
        log("explain: one by-id request in process ...")
        figures["explain"] = explain_query(url, running.base, token, draw("by-id", 1)[0])
    if args.profile:
        log(f"profile: {args.profile} by-id requests in process ...")
        figures["profile"] = profile_history(url, running.base, token, draw("by-id", args.profile))
    return figures


def print_figures(f: dict[str, Any]) -> None:
    m = f["machine"]
    load = f.get("loadavg_1min") or {}
    print(
        f"machine: nproc {m['nproc']}, Python {m['python']}, {m['platform']}; "
        f"load average (1 min) {load.get('before')} before, {load.get('after')} after"
    )
    print(f"code: {f['code']}; database {f['database']}, seed {f['seed']}, share {f['share']}")
    lo = f["load"]
    if lo["copies"]:
        print(
            f"background load (http, {f['workers']} workers, {f['load_clients']} clients): "
            f"{lo['resources_per_s']:.0f} resources/s ({lo['resources']} resources, "
            f"{lo['copies']} patients in {lo['seconds']:.1f} s; {lo['resources_before']} were "
            f"there before); failures {lo['failures']}"
        )
    else:
        print(f"background load: nothing to do ({lo['resources_before']} resources were there)")
    r = f["referrals"]
    if r["chains"] or r["failures"]:
        print(
            f"referral load (one client per hospital): {r['chains']} chains, {r['letters']} "
            f"letters, {r['bundles']} transaction bundles in {r['seconds']:.1f} s "
            f"({r['bundles_per_s']:.1f} bundles/s); failures {r['failures']}, skipped "
            f"{r['skipped']}"
        )
    print(
        f"database: {f['resources']} generated resources ({f['patients']} patients), "
        f"{f['resource_rows']} stored resources in all, pg_database_size "
        f"{f['database_bytes'] / 2**20:.0f} MiB; {r['patients_with_chains']} patients with "
        f"{r['letters_total']} referral letters ("
        + ", ".join(f"{t} {n}" for t, n in sorted(f["history_resources"].items()))
        + ")"
    )
    h = f.get("history")
    if not h:
        return
    parts = [
        f"{kind} {v['p50_ms']:.1f}/{v['p95_ms']:.1f}/{v['p99_ms']:.1f} ms"
        f" ({v['mean_entries']:.1f} entries)"
        for kind, v in h["kinds"].items()
        if v["requests"] and kind != BASELINE
    ]
    o = h["overall"]
    if o["requests"]:
        parts.append(f"overall {o['p50_ms']:.1f}/{o['p95_ms']:.1f}/{o['p99_ms']:.1f} ms")
    print(
        f"$referral-history p50/p95/p99 at {f['resource_rows']} stored resources: "
        + ", ".join(parts)
    )
    base = h["kinds"].get(BASELINE)
    if base and base["requests"]:
        print(
            f"baseline GET /healthz in the same mix: p50/p95/p99 {base['p50_ms']:.1f}/"
            f"{base['p95_ms']:.1f}/{base['p99_ms']:.1f} ms"
        )
    print(
        f"throughput: {h['history_per_s']:.1f} history requests/s ({h['requests_per_s']:.1f} "
        f"with /healthz; {h['requests']} requests in {h['seconds']:.1f} s, {f['clients']} "
        f"clients, {f['workers']} workers, {h['sample_patients']} patients with referrals)"
    )
    print(f"errors: {h['errors']}; wrong answers: {h['unexpected']}")
    for problem in h["problems"][:MAX_SHOWN]:
        print(f"  {problem}")
    if "explain" in f:
        print_explain(f["explain"])
    if "profile" in f:
        p = f["profile"]
        print(
            f"\nprofile: {p['requests']} by-id requests through the app in process: "
            f"{p['request_ms']:.1f} ms "
            f"each without the profiler; {p['statements_per_request']:.1f} SQL statements per "
            f"request ({p['data_statements_per_request']:.1f} on resources and the index), "
            f"{p['sql_ms_per_request']:.1f} ms in the database driver"
        )
        print(p["stats"])


if __name__ == "__main__":
    sys.exit(main())
