"""Search benchmark: generated patients loaded over HTTP, then a fixed query mix timed.

1. Starts a real ``emr-hub serve`` on a PostgreSQL database (``--fresh-db``: a new one,
   dropped afterwards; ``--keep-db NAME``: created when missing and kept; ``--reuse-db NAME``:
   must exist) and loads copies of the Synthea patient Bundles made by ``bench/generate.py``
   as transaction Bundles until the database holds ``--target`` generated resources. A kept
   database remembers what was loaded (table ``bench_search_meta``), so a later run with the
   same seed only adds what is missing: run at 100,000, then grow it to 1,000,000.
2. Runs the query mix: the same number of requests of each kind, shuffled, from ``--clients``
   threads, with parameters drawn (seeded) from a sample of the loaded patients; prints
   p50/p95/p99 latency per kind and overall, requests/s, the database size and the load rate.
3. ``--explain``: runs one request of the slowest kind (or ``--explain-kind``) in this process
   against the same database, captures every SQL statement it sends and prints
   ``EXPLAIN (ANALYZE, BUFFERS)`` of the slowest ones.

Usage (see bench/README.md)::

    .venv/bin/python bench/search.py --database-url postgresql://postgres@127.0.0.1:5432/test \
        --keep-db emr_hub_bench_search --target 100000
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import platform
import random
import re
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson

if __package__ in (None, ""):  # run as a script: make ``bench`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.generate import CCCD, LOINC, Generator, PatientCopy
from bench.ingest import (
    BENCH_ORGANIZATION,
    DEFAULT_DATA,
    Server,
    _admin_connect,
    _code_version,
    _diagnostics,
    _libpq_url,
    _loadavg,
    _with_database,
    database_kind,
    emr_hub_executable,
    ensure_bench_client,
    fhir_client,
    free_port,
    fresh_database,
    log,
    run_cli,
    server_env,
)

KINDS = (
    "patient-by-cccd",
    "obs-patient-code-date",
    "encounter-by-patient-sorted",
    "chained-obs-by-cccd",
    "revinclude-encounters",
    "everything",
)
# not in the default mix: GET /healthz (no auth, no database), the floor of HTTP + framework
BASELINE = "healthz"
MAX_SHOWN = 10


# ---------------------------------------------------------------------------- state
@dataclass
class LoadState:
    """What a benchmark database holds: copies [0, copies) of ``seed`` minus ``failed``."""

    seed: int
    copies: int = 0
    resources: int = 0
    failed: list[int] = field(default_factory=list)

    def as_json(self) -> bytes:
        return orjson.dumps(
            {
                "seed": self.seed,
                "copies": self.copies,
                "resources": self.resources,
                "failed": self.failed,
            }
        )


def _connect(url: str) -> Any:
    import psycopg

    return psycopg.connect(_libpq_url(url), autocommit=True, connect_timeout=10)


def read_state(url: str) -> LoadState | None:
    with _connect(url) as conn:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS bench_search_meta (key text PRIMARY KEY, value jsonb)"
        )
        row = conn.execute("SELECT value FROM bench_search_meta WHERE key = 'load'").fetchone()
    if row is None:
        return None
    value = row[0] if isinstance(row[0], dict) else orjson.loads(row[0])
    return LoadState(value["seed"], value["copies"], value["resources"], value.get("failed", []))


def write_state(url: str, state: LoadState) -> None:
    with _connect(url) as conn:
        conn.execute(
            "INSERT INTO bench_search_meta (key, value) VALUES ('load', %s::jsonb) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (state.as_json().decode(),),
        )


def database_figures(url: str) -> dict[str, Any]:
    with _connect(url) as conn:
        size = conn.execute("SELECT pg_database_size(current_database())").fetchone()[0]
        count = conn.execute("SELECT count(*) FROM resource").fetchone()[0]
        tables = conn.execute(
            "SELECT c.relname, pg_total_relation_size(c.oid), pg_relation_size(c.oid) "
            "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.relkind = 'r' AND n.nspname = 'public' ORDER BY 2 DESC LIMIT 8"
        ).fetchall()
    return {
        "database_bytes": size,
        "resource_rows": count,
        "tables": [{"name": t, "total_bytes": s, "heap_bytes": h} for t, s, h in tables],
    }


@contextlib.contextmanager
def kept_database(server_url: str, name: str, *, must_exist: bool) -> Iterator[str]:
    from psycopg import sql

    with _admin_connect(server_url) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if not exists:
            if must_exist:
                raise SystemExit(f"--reuse-db {name}: there is no such database (use --keep-db)")
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
            log(f"created database {name} (kept afterwards)")
        else:
            log(f"using the existing database {name}")
    yield _with_database(server_url, name)


# --------------------------------------------------------------------------- client
class Api:
    """An httpx client of one API client (default ``bench``) shared by threads, whose token
    is renewed when it expires."""

    def __init__(
        self,
        base: str,
        executable: str,
        env: dict[str, str],
        connections: int,
        client_id: str = "bench",
    ):
        self.executable, self.env, self.client_id = executable, env, client_id
        self._lock = threading.Lock()
        self.client = fhir_client(base, self._token(), connections)

    def _token(self) -> str:
        output = run_cli(self.executable, ["token", self.client_id], self.env)
        return output.splitlines()[-1].strip()

    def request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        sent = self.client.headers["Authorization"]
        response = self.client.request(method, url, **kwargs)
        if response.status_code == 401:
            with self._lock:
                if self.client.headers["Authorization"] == sent:
                    self.client.headers["Authorization"] = f"Bearer {self._token()}"
            response = self.client.request(method, url, **kwargs)
        return response

    def close(self) -> None:
        self.client.close()


# ----------------------------------------------------------------------------- load
@dataclass
class Posted:
    copy: PatientCopy
    patient_id: str | None
    stored: int
    seconds: float
    failures: list[str]


def post_copy(api: Api, copy: PatientCopy, body: bytes) -> Posted:
    started = time.perf_counter()
    try:
        response = api.request("POST", "/fhir", content=body)
    except httpx.HTTPError as exc:
        return Posted(copy, None, 0, time.perf_counter() - started, [f"{type(exc).__name__}"])
    seconds = time.perf_counter() - started
    name = f"copy {copy.index} ({copy.template})"
    if response.status_code != 200:
        failure = f"{name}: HTTP {response.status_code}: {_diagnostics(response)}"
        return Posted(copy, None, 0, seconds, [failure])
    entries = orjson.loads(response.content).get("entry") or []
    failures = []
    stored = 0
    for index, entry in enumerate(entries):
        status = str((entry.get("response") or {}).get("status", ""))
        if status.startswith("2"):
            stored += 1
        else:
            failures.append(f"{name}: entry[{index}] status {status!r}")
    if len(entries) != copy.resources:
        failures.append(f"{name}: {len(entries)} response entries for {copy.resources} sent")
    patient_id = None
    if copy.patient_entry < len(entries):
        location = (entries[copy.patient_entry].get("response") or {}).get("location", "")
        parts = location.split("/")
        if len(parts) >= 2 and parts[0] == "Patient":
            patient_id = parts[1]
    if patient_id is None:
        failures.append(f"{name}: no Patient location in the response")
    return Posted(copy, patient_id, stored, seconds, failures)


def find_patient(api: Api, cccd: str) -> list[str]:
    response = api.request(
        "GET", "/fhir/Patient", params=[("identifier", f"{CCCD}|{cccd}"), ("_elements", "id")]
    )
    response.raise_for_status()
    return [
        e["resource"]["id"]
        for e in orjson.loads(response.content).get("entry") or []
        if (e.get("search") or {}).get("mode", "match") == "match"
    ]


@dataclass
class LoadResult:
    copies: int = 0
    resources: int = 0
    seconds: float = 0.0
    failures: list[str] = field(default_factory=list)
    patient_ids: dict[int, str] = field(default_factory=dict)


def load(
    api: Api,
    generator: Generator,
    state: LoadState,
    target: int,
    clients: int,
    url: str,
) -> LoadResult:
    """Post copies from ``state.copies`` on until ``state.resources`` reaches ``target``."""
    result = LoadResult()
    # a run stopped midway may have stored a few copies past the recorded prefix
    window = range(state.copies, state.copies + 2 * clients)
    present = {i for i in window if find_patient(api, generator.describe(i).cccd)}
    if present:
        log(f"copies {sorted(present)} are already stored (an interrupted run): not posted again")
    if state.resources >= target:
        return result
    log(
        f"loading from copy {state.copies} ({state.resources} resources) up to {target} "
        f"resources with {clients} clients ..."
    )
    done: dict[int, Posted | None] = {}
    in_flight: set[Future[Posted]] = set()
    started = last_report = time.perf_counter()

    def settle(finished: set[Future[Posted]]) -> None:
        nonlocal last_report
        for future in finished:
            posted = future.result()
            done[posted.copy.index] = posted
            result.seconds = time.perf_counter() - started
            if posted.failures:
                result.failures.extend(posted.failures)
                state.failed.append(posted.copy.index)
            else:
                result.copies += 1
                result.resources += posted.stored
                state.resources += posted.stored
                if posted.patient_id:
                    result.patient_ids[posted.copy.index] = posted.patient_id
        while state.copies in done or state.copies in present:
            done.pop(state.copies, None)
            state.copies += 1
        now = time.perf_counter()
        if now - last_report > 30:
            last_report = now
            write_state(url, state)
            log(
                f"  {state.resources} resources ({result.resources} in {now - started:.0f} s, "
                f"{result.resources / (now - started):.0f}/s), {len(result.failures)} failures"
            )

    planned = state.resources
    index = state.copies
    try:
        with ThreadPoolExecutor(max_workers=clients) as pool:
            while planned < target:
                if index in present:
                    index += 1
                    continue
                copy, body = generator.render(index)
                planned += copy.resources
                index += 1
                in_flight.add(pool.submit(post_copy, api, copy, body))
                if len(in_flight) >= 2 * clients:
                    finished, in_flight = wait(in_flight, return_when=FIRST_COMPLETED)
                    settle(finished)
            finished, _ = wait(in_flight)
            settle(finished)
    finally:
        write_state(url, state)
    result.seconds = time.perf_counter() - started
    return result


def open_state(url: str, seed: int) -> LoadState:
    """What the benchmark database holds; refuses a database this script did not load."""
    state = read_state(url)
    if state is None:
        with _connect(url) as conn:
            # the Organization of the benchmark's own client is written before any load
            existing = conn.execute(
                "SELECT count(*) FROM resource WHERE NOT (resource_type = %s AND id = %s)",
                BENCH_ORGANIZATION.split("/"),
            ).fetchone()[0]
        if existing:
            raise SystemExit(
                f"the database holds {existing} resources not loaded by this script; "
                "use an empty or a benchmark database"
            )
        state = LoadState(seed)
    if state.seed != seed:
        raise SystemExit(f"the database was loaded with --seed {state.seed}, not {seed}")
    return state


def sample_patients(
    api: Api,
    generator: Generator,
    state: LoadState,
    rng: random.Random,
    size: int,
    known: dict[int, str],
    clients: int,
) -> list[tuple[PatientCopy, str]]:
    """Up to ``size`` loaded patients drawn with ``rng`` (those with Observations), with their
    ids: the patients the queries of a run are about."""
    failed = set(state.failed)
    candidates = [i for i in range(state.copies) if i not in failed]
    chosen = sorted(rng.sample(candidates, min(size, len(candidates))))
    copies = {i: generator.describe(i) for i in chosen}
    ids = lookup_patients(api, copies, known, clients)
    patients = [(copies[i], ids[i]) for i in chosen if i in ids and copies[i].observations]
    if not patients:
        raise SystemExit("no loaded patients to query")
    return patients


def lookup_patients(
    api: Api, copies: dict[int, PatientCopy], known: dict[int, str], clients: int
) -> dict[int, str]:
    """Patient ids of ``copies``: those in ``known`` (loaded by this run), the others found
    by their CCCD (loaded by an earlier run). A copy not found exactly once is left out."""
    ids = {i: known[i] for i in copies if i in known}
    missing = [i for i in copies if i not in ids]
    if missing:
        log(f"looking up {len(missing)} patients loaded by an earlier run ...")
        with ThreadPoolExecutor(max_workers=clients) as pool:
            found = list(pool.map(lambda i: find_patient(api, copies[i].cccd), missing))
        for i, matches in zip(missing, found, strict=True):
            if len(matches) == 1:
                ids[i] = matches[0]
    return ids


@dataclass
class Running:
    """A started ``emr-hub serve``, its environment and the ``bench`` client's :class:`Api`."""

    base: str
    env: dict[str, str]
    executable: str
    server: Server
    api: Api


def start_server(
    args: argparse.Namespace,
    url: str,
    stack: contextlib.ExitStack,
    connections: int,
    settings: dict[str, str] | None = None,
) -> Running:
    """``emr-hub serve`` on ``url`` with ``args.workers`` processes (stopped with ``stack``),
    the ``bench`` client registered; ``settings`` are extra ``EMR_HUB_*`` variables."""
    temp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="emr_hub_bench_")))
    port = args.port or free_port()
    base = f"http://127.0.0.1:{port}"
    env = server_env(temp / "data", url, base) | (settings or {})
    executable = emr_hub_executable()
    log(f"starting emr-hub serve on {base} with {args.workers} worker(s) ...")
    server = Server(executable, port, args.workers, env, temp / "server.log")
    stack.callback(server.stop)
    try:
        server.wait_ready(args.startup_timeout)
        ensure_bench_client(executable, env)
        api = Api(base, executable, env, connections)
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        log(f"server log:\n{server.log_tail()}")
        raise SystemExit(f"could not start the benchmark: {exc}") from exc
    stack.callback(api.close)
    return Running(base, env, executable, server, api)


def machine_line(f: dict[str, Any]) -> str:
    """The first line of a report: the machine, its load average around the run, the code."""
    m, load = f["machine"], f["loadavg_1min"]
    return (
        f"machine: nproc {m['nproc']}, Python {m['python']}; load average (1 min) "
        f"{load['before']} before, {load['after']} after; code {f['code']}"
    )


def machine() -> dict[str, Any]:
    return {
        "nproc": len(os.sched_getaffinity(0))
        if hasattr(os, "sched_getaffinity")
        else os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


# ---------------------------------------------------------------------------- query
@dataclass(frozen=True)
class Query:
    kind: str
    path: str
    params: list[tuple[str, str]]
    expect_matches: int | None  # exact number of search matches expected, when known
    at_least: int = 0


def make_query(kind: str, copy: PatientCopy, patient_id: str, rng: random.Random) -> Query:
    cccd = f"{CCCD}|{copy.cccd}"
    if kind == "patient-by-cccd":
        return Query(kind, "/fhir/Patient", [("identifier", cccd)], 1)
    if kind == "obs-patient-code-date":
        code, year = rng.choice(copy.observations)
        params = [
            ("patient", patient_id),
            ("code", f"{LOINC}|{code}"),
            ("date", f"ge{year}"),
            ("date", f"lt{year + 1}"),
        ]
        return Query(kind, "/fhir/Observation", params, None, at_least=1)
    if kind == "encounter-by-patient-sorted":
        params = [("patient", patient_id), ("_sort", "-date"), ("_count", "20")]
        return Query(kind, "/fhir/Encounter", params, min(20, copy.encounters))
    if kind == "chained-obs-by-cccd":
        params = [("subject:Patient.identifier", cccd), ("_count", "20")]
        return Query(kind, "/fhir/Observation", params, None, at_least=1)
    if kind == "revinclude-encounters":
        params = [("_id", patient_id), ("_revinclude", "Encounter:subject")]
        return Query(kind, "/fhir/Patient", params, 1)
    if kind == "everything":
        return Query(kind, f"/fhir/Patient/{patient_id}/$everything", [("_count", "200")], None)
    if kind == BASELINE:
        return Query(kind, "/healthz", [], None)
    raise ValueError(kind)


@dataclass
class Sample:
    kind: str
    seconds: float
    status: int
    problem: str | None
    query: Query | None = None
    entries: int = 0  # entries in the answer (matches and included)


def run_query(api: Api, query: Query) -> Sample:
    started = time.perf_counter()
    try:
        response = api.request("GET", query.path, params=query.params)
        body = response.content
    except httpx.HTTPError as exc:
        return Sample(query.kind, time.perf_counter() - started, 0, type(exc).__name__, query)
    seconds = time.perf_counter() - started
    if response.status_code != 200:
        return Sample(
            query.kind,
            seconds,
            response.status_code,
            f"HTTP {response.status_code}: {_diagnostics(response)[:200]}",
            query,
        )
    entries = orjson.loads(body).get("entry") or []
    matches = sum(1 for e in entries if (e.get("search") or {}).get("mode", "match") == "match")
    problem = None
    if query.expect_matches is not None and matches != query.expect_matches:
        problem = f"{matches} matches, expected {query.expect_matches}"
    elif matches < query.at_least:
        problem = f"{matches} matches, expected at least {query.at_least}"
    if problem:
        problem += f" for {query.path}?{httpx.QueryParams(query.params)}"
    return Sample(query.kind, seconds, 200, problem, query, len(entries))


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of a sorted list."""
    rank = max(1, math.ceil(q * len(sorted_values)))
    return sorted_values[rank - 1]


def summarise(samples: list[Sample]) -> dict[str, Any]:
    values = sorted(s.seconds * 1000 for s in samples)
    if not values:
        return {"requests": 0}
    return {
        "requests": len(values),
        "p50_ms": percentile(values, 0.50),
        "p95_ms": percentile(values, 0.95),
        "p99_ms": percentile(values, 0.99),
        "max_ms": values[-1],
        "mean_ms": sum(values) / len(values),
        "errors": sum(1 for s in samples if s.status != 200),
        "unexpected": sum(1 for s in samples if s.status == 200 and s.problem),
        "mean_entries": sum(s.entries for s in samples) / len(samples),
        "slowest": [
            {
                "ms": s.seconds * 1000,
                "entries": s.entries,
                "url": f"{s.query.path}?{httpx.QueryParams(s.query.params)}" if s.query else None,
            }
            for s in sorted(samples, key=lambda s: -s.seconds)[:3]
        ],
    }


def run_mix(
    api: Api,
    queries: list[Query],
    clients: int,
    runner: Callable[[Api, Any], Sample] = run_query,
) -> tuple[list[Sample], float]:
    """``queries`` from ``clients`` threads, each timed and checked by ``runner``."""
    with ThreadPoolExecutor(max_workers=clients) as pool:
        started = time.perf_counter()
        samples = list(pool.map(lambda q: runner(api, q), queries))
        return samples, time.perf_counter() - started


def probe(api: Api, query: Query) -> int:
    try:
        return api.request("GET", query.path, params=query.params).status_code
    except httpx.HTTPError:
        return 0


# -------------------------------------------------------------------------- explain
@contextlib.contextmanager
def in_process_app(database_url: str, base: str) -> Iterator[tuple[Any, Any]]:
    """``(hub, client)``: the hub's own app in this process on ``database_url``, behind a
    Starlette TestClient, so that its SQL can be watched (:func:`captured_sql`)."""
    with warnings.catch_warnings():  # some Starlette versions warn about httpx on import
        warnings.simplefilter("ignore")
        from fastapi.testclient import TestClient

    from emr_hub.config import Settings
    from emr_hub.hub import Hub
    from emr_hub.main import create_app

    with tempfile.TemporaryDirectory(prefix="emr_hub_explain_") as temp:
        settings = Settings(data_dir=Path(temp), database_url=database_url, base_url=base)
        hub = Hub.from_settings(settings)
        try:
            yield hub, TestClient(create_app(hub=hub), base_url="http://127.0.0.1")
        finally:
            hub.close()


@contextlib.contextmanager
def captured_sql(engine: Any) -> Iterator[list[dict[str, Any]]]:
    """Every statement ``engine`` runs meanwhile: its SQL, parameters and driver time (ms)."""
    from sqlalchemy import event

    captured: list[dict[str, Any]] = []

    def before(conn: Any, cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        conn.info["bench_started"] = time.perf_counter()

    def after(conn: Any, cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        seconds = time.perf_counter() - conn.info.pop("bench_started", time.perf_counter())
        captured.append({"sql": statement, "params": parameters, "ms": seconds * 1000})

    event.listen(engine, "before_cursor_execute", before)
    event.listen(engine, "after_cursor_execute", after)
    try:
        yield captured
    finally:
        event.remove(engine, "before_cursor_execute", before)
        event.remove(engine, "after_cursor_execute", after)


def is_data_statement(statement: dict[str, Any]) -> bool:
    """A statement on the resources or the search index (not a token or session check)."""
    return "search_" in statement["sql"] or "resource" in statement["sql"]


def explain_query(database_url: str, base: str, token: str, query: Query) -> dict[str, Any]:
    """Run ``query`` through the hub's app in this process, capturing its SQL, then EXPLAIN
    ANALYZE the statements that took longest."""
    with in_process_app(database_url, base) as (hub, client):
        headers = {"Authorization": f"Bearer {token}", "Accept": "application/fhir+json"}
        client.get(query.path, params=query.params, headers=headers)  # warm
        with captured_sql(hub.db.engine) as captured:
            started = time.perf_counter()
            response = client.get(query.path, params=query.params, headers=headers)
            request_ms = (time.perf_counter() - started) * 1000
        statements = [c for c in captured if is_data_statement(c)]
        slowest = sorted(statements, key=lambda c: -c["ms"])[:3]
        with hub.db.engine.connect() as conn:
            for statement in slowest:
                rows = conn.exec_driver_sql(
                    "EXPLAIN (ANALYZE, BUFFERS) " + statement["sql"], statement["params"]
                ).all()
                statement["plan"] = shorten_plan("\n".join(r[0] for r in rows))
                statement["sql"] = shorten_sql(statement["sql"])
                statement["params"] = shorten_params(statement["params"])
                conn.rollback()
    return {
        "kind": query.kind,
        "url": query.path + (f"?{httpx.QueryParams(query.params)}" if query.params else ""),
        "status": response.status_code,
        "request_ms": request_ms,
        "statements": len(statements),
        "sql_ms": sum(c["ms"] for c in statements),
        "slowest": slowest,
    }


_LONG_IN = re.compile(r"(%\(\w+\)s(?:::\w+)?, ){4,}(%\(\w+\)s(?:::\w+)?)")
_LONG_ARRAY = re.compile(r"'\{([^}]{120,})\}'")
_VARYING = re.compile(r"'[^']*'|\d+(\.\d+)?")
MAX_LINE = 400


def _collapse(
    parts: list[str], same: Callable[[str], str], note: Callable[[int], str]
) -> list[str]:
    """Runs of 3 or more items that look alike (``same``) kept as the first and a note."""
    out: list[str] = []
    i = 0
    while i < len(parts):
        j = i + 1
        while j < len(parts) and same(parts[j]) == same(parts[i]):
            j += 1
        out.append(parts[i])
        if j - i >= 3:
            out.append(note(j - i - 1, parts[i]))
            i = j
        else:
            i += 1
    return out


def shorten_sql(text: str) -> str:
    """Long IN lists and OR chains of bound parameters shown once with a count."""
    text = _LONG_IN.sub(
        lambda m: f"{m.group(0).split(', ')[0]}, ... {m.group(0).count(', ')} more", text
    )
    parts = text.split(" OR ")
    if len(parts) > 3:
        shape = re.compile(r"_\d+\)s")
        parts = _collapse(parts, lambda p: shape.sub("_N)s", p), lambda n, _: f"... {n} more")
    return " OR ".join(parts)


def shorten_plan(text: str) -> str:
    """Long arrays as a count, long lines cut, runs of alike sibling plan nodes kept once."""
    text = _LONG_ARRAY.sub(lambda m: f"'{{... {m.group(1).count(',') + 1} values}}'", text)
    lines = [
        line if len(line) <= MAX_LINE else f"{line[:MAX_LINE]} ... ({len(line)} characters)"
        for line in text.split("\n")
    ]
    # a unit is a plan node ("->" line and its more indented detail lines) or a lone line
    units: list[list[str]] = []
    for line in lines:
        arrow = line.find("->")
        last = units[-1] if units else None
        if (
            arrow < 0
            and last is not None
            and "->" in last[0]
            and len(line) - len(line.lstrip()) > last[0].find("->")
        ):
            last.append(line)
        else:
            units.append([line])
    collapsed = _collapse(
        ["\n".join(u) for u in units],
        lambda u: _VARYING.sub("#", u),
        lambda n, first: " " * max(0, first.find("->")) + f"... {n} more nodes like this one",
    )
    return "\n".join(collapsed)


def shorten_params(params: Any) -> Any:
    if isinstance(params, dict) and len(params) > 8:
        head = dict(list(params.items())[:8])
        head["..."] = f"{len(params) - 8} more"
        return head
    return params


def print_explain(found: dict[str, Any]) -> None:
    print(
        f"\nexplain {found['kind']}: {found['url']} -> HTTP {found['status']} in "
        f"{found['request_ms']:.1f} ms in process; {found['statements']} SQL statements, "
        f"{found['sql_ms']:.1f} ms in the database driver"
    )
    for number, statement in enumerate(found["slowest"], 1):
        print(f"\n--- statement {number}: {statement['ms']:.1f} ms\n{statement['sql']}")
        print(f"--- parameters: {statement['params']}")
        print(f"--- EXPLAIN (ANALYZE, BUFFERS):\n{statement.get('plan')}")


# ----------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--database-url",
        required=True,
        help="a PostgreSQL URL; its server gets the benchmark database",
    )
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--fresh-db", action="store_true", help="a new database, dropped after")
    where.add_argument("--keep-db", metavar="NAME", help="use NAME (created if missing), keep it")
    where.add_argument("--reuse-db", metavar="NAME", help="use NAME, which must exist; keep it")
    parser.add_argument("--target", type=int, default=100_000, help="generated resources")
    parser.add_argument("--seed", type=int, default=1, help="data and query seed")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="Synthea bundle folder")
    parser.add_argument("--workers", type=int, default=2, help="API processes (default 2)")
    parser.add_argument("--load-clients", type=int, default=4, help="HTTP clients while loading")
    parser.add_argument("--clients", type=int, default=4, help="HTTP clients for the queries")
    parser.add_argument("--requests", type=int, default=200, help="timed requests per kind")
    parser.add_argument("--warmup", type=int, default=20, help="untimed requests per kind")
    parser.add_argument("--sample", type=int, default=1000, help="patients queries draw from")
    parser.add_argument(
        "--kinds",
        default=",".join(KINDS),
        help=f"comma-separated subset of {','.join(KINDS)}; add {BASELINE} for a baseline",
    )
    parser.add_argument("--no-analyze", action="store_true", help="no ANALYZE after loading")
    parser.add_argument("--load-only", action="store_true", help="load, then stop")
    parser.add_argument("--explain", action="store_true", help="EXPLAIN the slowest kind")
    parser.add_argument("--explain-kind", choices=KINDS, help="EXPLAIN this kind instead")
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
    for name in ("workers", "load_clients", "clients", "requests", "sample"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    return args


def open_database(args: argparse.Namespace, stack: contextlib.ExitStack) -> str:
    """The benchmark database the options name (--fresh-db, --keep-db or --reuse-db), open for
    the life of ``stack``; its URL."""
    if args.fresh_db:
        return str(stack.enter_context(fresh_database(args.database_url)))
    name = args.keep_db or args.reuse_db
    return str(
        stack.enter_context(kept_database(args.database_url, name, must_exist=bool(args.reuse_db)))
    )


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
    return 1 if figures["load"]["failures"] else 0


def run(
    args: argparse.Namespace, generator: Generator, url: str, stack: contextlib.ExitStack
) -> dict[str, Any]:
    load_before = _loadavg()
    running = start_server(args, url, stack, max(args.load_clients, args.clients))
    base, server, api = running.base, running.server, running.api
    state = open_state(url, args.seed)
    before = LoadState(state.seed, state.copies, state.resources, list(state.failed))
    loaded = load(api, generator, state, args.target, args.load_clients, url)
    if loaded.failures:
        log(f"server log (tail):\n{server.log_tail()}")
        for failure in loaded.failures[:MAX_SHOWN]:
            log(f"FAILED {failure}")
    if loaded.copies and not args.no_analyze:
        log("ANALYZE ...")
        with _connect(url) as conn:
            conn.execute("ANALYZE")
    database = database_figures(url)
    figures: dict[str, Any] = {
        "target": args.target,
        "seed": args.seed,
        "workers": args.workers,
        "clients": args.clients,
        "load_clients": args.load_clients,
        "code": _code_version(),
        "machine": machine(),
        "database": url.rsplit("/", 1)[-1],
        "resources": state.resources,
        "patients": state.copies - len(state.failed),
        **database,
        "load": {
            "resources_before": before.resources,
            "copies": loaded.copies,
            "resources": loaded.resources,
            "seconds": loaded.seconds,
            "resources_per_s": loaded.resources / loaded.seconds if loaded.seconds else None,
            "failures": len(loaded.failures),
        },
    }
    if args.load_only:
        figures["loadavg_1min"] = {"before": load_before, "after": _loadavg()}
        return figures

    rng = random.Random(args.seed * 7 + 3)
    patients = sample_patients(
        api, generator, state, rng, args.sample, loaded.patient_ids, args.clients
    )

    def draw(kind: str, count: int) -> list[Query]:
        return [make_query(kind, *rng.choice(patients), rng) for _ in range(count)]

    kinds = list(args.kinds)
    unavailable: dict[str, int] = {}
    for kind in kinds:
        status = probe(api, draw(kind, 1)[0])
        if status != 200:
            unavailable[kind] = status
            log(f"{kind} answers HTTP {status}: not measured")
    measured = [k for k in kinds if k not in unavailable]
    warmup = [q for kind in measured for q in draw(kind, args.warmup)]
    log(f"warm-up: {len(warmup)} requests ...")
    run_mix(api, warmup, args.clients)
    timed = [q for kind in measured for q in draw(kind, args.requests)]
    rng.shuffle(timed)
    log(f"query mix: {len(timed)} requests, {len(measured)} kinds, {args.clients} clients ...")
    samples, seconds = run_mix(api, timed, args.clients)
    for kind, status in list(unavailable.items()):  # maybe it has been deployed since: retry
        if probe(api, draw(kind, 1)[0]) == 200:
            log(f"{kind} answers now: measuring it after the mix")
            run_mix(api, draw(kind, args.warmup), args.clients)
            extra, _ = run_mix(api, draw(kind, args.requests), args.clients)
            samples.extend(extra)
            measured.append(kind)
            del unavailable[kind]
        else:
            unavailable[kind] = status
    per_kind = {k: summarise([s for s in samples if s.kind == k]) for k in measured}
    problems = [f"{s.kind}: {s.problem}" for s in samples if s.problem]
    figures["search"] = {
        "sample_patients": len(patients),
        "requests": len(timed),
        "seconds": seconds,
        "requests_per_s": len(timed) / seconds if seconds else None,
        "overall": summarise([s for s in samples if s.kind != BASELINE]),
        "kinds": per_kind,
        "unavailable": unavailable,
        "problems": problems[:50],
        "problem_count": len(problems),
    }
    figures["loadavg_1min"] = {"before": load_before, "after": _loadavg()}

    if args.explain or args.explain_kind:
        timed_kinds = [k for k in per_kind if k != BASELINE and per_kind[k]["requests"]]
        kind = args.explain_kind or max(timed_kinds, key=lambda k: per_kind[k]["p50_ms"])
        log(f"explain: one {kind} request in process ...")
        token = api.client.headers["Authorization"].split(" ", 1)[1]
        figures["explain"] = explain_query(url, base, token, draw(kind, 1)[0])
    return figures


def print_figures(f: dict[str, Any]) -> None:
    m = f["machine"]
    load = f.get("loadavg_1min") or {}
    print(
        f"machine: nproc {m['nproc']}, Python {m['python']}, {m['platform']}; "
        f"load average (1 min) {load.get('before')} before, {load.get('after')} after"
    )
    print(f"code: {f['code']}; database {f['database']}, seed {f['seed']}")
    lo = f["load"]
    if lo["copies"]:
        print(
            f"load (http, {f['workers']} workers, {f['load_clients']} clients): "
            f"{lo['resources_per_s']:.0f} resources/s ({lo['resources']} resources, "
            f"{lo['copies']} patients in {lo['seconds']:.1f} s; {lo['resources_before']} "
            f"were there before); failures {lo['failures']}"
        )
    else:
        print(f"load: nothing to do ({lo['resources_before']} resources were there)")
    print(
        f"database: {f['resources']} generated resources ({f['patients']} patients), "
        f"{f['resource_rows']} resource rows, "
        f"pg_database_size {f['database_bytes'] / 2**20:.0f} MiB"
        f" ({f['database_bytes'] / max(f['resource_rows'], 1) / 1024:.1f} KiB per resource)"
    )
    print(
        "  largest tables (total with indexes / heap, MiB): "
        + ", ".join(
            f"{t['name']} {t['total_bytes'] / 2**20:.0f}/{t['heap_bytes'] / 2**20:.0f}"
            for t in f["tables"]
        )
    )
    s = f.get("search")
    if not s:
        return
    parts = [
        f"{kind} {v['p50_ms']:.1f}/{v['p95_ms']:.1f}/{v['p99_ms']:.1f} ms"
        for kind, v in s["kinds"].items()
        if v["requests"]
    ]
    o = s["overall"]
    parts.append(f"overall {o['p50_ms']:.1f}/{o['p95_ms']:.1f}/{o['p99_ms']:.1f} ms")
    print(f"search p50/p95/p99 at {f['resources']} resources: " + ", ".join(parts))
    print(
        f"search throughput: {s['requests_per_s']:.1f} requests/s ({s['requests']} requests in "
        f"{s['seconds']:.1f} s, {f['clients']} clients, {f['workers']} workers, "
        f"{s['sample_patients']} sample patients)"
    )
    for kind, status in s["unavailable"].items():
        print(f"not measured: {kind} answers HTTP {status}")
    errors = {k: v["errors"] for k, v in s["kinds"].items() if v["errors"]}
    unexpected = {k: v["unexpected"] for k, v in s["kinds"].items() if v["unexpected"]}
    print(f"errors: {errors or 0}; unexpected results: {unexpected or 0}")
    for problem in s["problems"][:MAX_SHOWN]:
        print(f"  {problem}")
    if "explain" in f:
        print_explain(f["explain"])


if __name__ == "__main__":
    sys.exit(main())
