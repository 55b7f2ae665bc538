"""Partitioning benchmark: the resource and index tables as hash partitions of a patient key.

Takes a database ``bench/search.py`` loaded (``--database-url`` names it; it is only read,
never written) and compares two copies of it under the hub's own, unchanged read SQL:

1. ``<name>_flat``: ``CREATE DATABASE ... TEMPLATE <name>``, the hub's layout as it is.
   ``<name>_part``: a template copy of the first, whose resource table, history, patient
   compartment rows and search index tables are rebuilt as PostgreSQL declarative hash
   partitions (``--partitions``, default 16) of a new column ``compartment_key``:

   - a Patient's own id for the Patient;
   - for any other resource, the first (smallest) patient id of its ``patient_compartment``
     rows: the patient it is about;
   - its own id when it is about no patient (Organization, Practitioner ...);
   - an index, history or compartment row takes the key of the resource it belongs to.

   So one patient's record (its resources, their versions, their index rows) sits in one
   partition. Column names and indexes are the hub's, with the key appended to every unique
   index and primary key: PostgreSQL requires the partition key in each unique constraint of
   a partitioned table, so ``(resource_type, id)`` is unique per key, no longer across the
   table. The hub's reads and searches run unchanged; its writes do not (an insert has no
   key and is refused: ``compartment_key`` is NOT NULL without a default). Both copies are
   vacuumed and analysed the same way, and their row counts compared table by table.
2. Draws the query mix of ``bench/search.py`` (its kinds, parameters drawn from a sample of
   the loaded patients as it draws them) plus two reads by id (``read-patient``,
   ``read-observation``) and ``/healthz``, once, then runs the same queries against each copy,
   each with its own ``emr-hub serve``, in the order flat, part, part, flat (so a drift of
   the machine weighs on both alike). Before its first timed run each copy answers every
   query once, untimed: the ids (and versions) each answer holds, in order, are compared
   between the copies.
3. Prints p50/p95 per kind for both layouts (the two runs of a layout pooled) beside
   ``/healthz``, the sizes, and whether the answers were the same. The copies this run made
   are dropped at the end unless ``--keep``; copies that already existed are reused (a
   ``_part`` copy that is not partitioned yet is converted) and left in place.

Usage (see bench/README.md and docs/scaling.md)::

    .venv/bin/python bench/partitioning.py \\
        --database-url postgresql://postgres@127.0.0.1:5432/emr_hub_bench_1m
"""

from __future__ import annotations

import argparse
import contextlib
import random
import re
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson

if __package__ in (None, ""):  # run as a script: make ``bench`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.generate import Generator, PatientCopy
from bench.ingest import (
    DEFAULT_DATA,
    _admin_connect,
    _code_version,
    _loadavg,
    _with_database,
    database_kind,
    log,
)
from bench.search import (
    BASELINE,
    KINDS,
    Api,
    Query,
    Sample,
    _connect,
    explain_query,
    machine,
    machine_line,
    make_query,
    percentile,
    print_explain,
    read_state,
    run_mix,
    sample_patients,
    start_server,
    summarise,
)

KEY = "compartment_key"
# the partitioned tables, and the columns naming the resource each row belongs to
TABLES: dict[str, tuple[str, str]] = {
    "resource": ("resource_type", "id"),
    "resource_history": ("resource_type", "id"),
    "patient_compartment": ("resource_type", "resource_id"),
    "search_token": ("resource_type", "resource_id"),
    "search_string": ("resource_type", "resource_id"),
    "search_reference": ("resource_type", "resource_id"),
    "search_date": ("resource_type", "resource_id"),
    "search_quantity": ("resource_type", "resource_id"),
    "search_uri": ("resource_type", "resource_id"),
    "search_composite": ("resource_type", "resource_id"),
}
READ_PATIENT, READ_OBSERVATION = "read-patient", "read-observation"
READS = (READ_PATIENT, READ_OBSERVATION)
LAYOUTS = ("flat", "part")
ORDER = ("flat", "part", "part", "flat")
MAX_SHOWN = 5


# ------------------------------------------------------------------------ databases
def server_url(url: str) -> str:
    """An administrative URL on the same server (database ``postgres``), so that no session
    is open on the source while it is copied."""
    return _with_database(url, "postgres")


def database_name(url: str) -> str:
    return urlsplit(url).path.lstrip("/")


def exists(admin: str, name: str) -> bool:
    with _admin_connect(admin) as conn:
        found = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
        return found.fetchone() is not None


def copy_database(admin: str, source: str, target: str, wait_seconds: float) -> None:
    """``CREATE DATABASE target TEMPLATE source``, retried while other sessions use the source
    (PostgreSQL refuses to copy a database someone is connected to)."""
    import psycopg
    from psycopg import sql

    statement = sql.SQL("CREATE DATABASE {} TEMPLATE {} STRATEGY FILE_COPY").format(
        sql.Identifier(target), sql.Identifier(source)
    )
    deadline = time.monotonic() + wait_seconds
    while True:
        try:
            with _admin_connect(admin) as conn:
                conn.execute(statement)
            log(f"copied {source} to {target}")
            return
        except psycopg.errors.ObjectInUse:
            if time.monotonic() > deadline:
                raise SystemExit(
                    f"{source} stayed in use for {wait_seconds:.0f} s: cannot copy it"
                ) from None
            log(f"{source} is in use by another session; retrying in 10 s ...")
            time.sleep(10)


def drop_database(admin: str, name: str) -> None:
    from psycopg import sql

    with _admin_connect(admin) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )
    log(f"dropped database {name}")


def is_partitioned(url: str) -> bool:
    with _connect(url) as conn:
        row = conn.execute(
            "SELECT relkind FROM pg_class WHERE oid = 'public.resource'::regclass"
        ).fetchone()
    return row is not None and row[0] == "p"


def set_jit(admin: str, name: str, on: bool) -> None:
    """JIT compilation on or off for every new session of ``name``. PostgreSQL compiles a
    statement whose estimated cost passes ``jit_above_cost``; the partitioned plans of the
    hub's searches pass it (each correlated probe costs 16 index scans), and compiling costs
    more than running them."""
    from psycopg import sql

    with _admin_connect(admin) as conn:
        if on:
            conn.execute(sql.SQL("ALTER DATABASE {} RESET jit").format(sql.Identifier(name)))
        else:
            conn.execute(sql.SQL("ALTER DATABASE {} SET jit = off").format(sql.Identifier(name)))


def row_counts(url: str) -> dict[str, int]:
    with _connect(url) as conn:
        return {
            table: int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])  # noqa: S608 - our constants
            for table in TABLES
        }


def sizes(url: str) -> dict[str, int]:
    """The database's size and each table's with its indexes (partitions summed), bytes."""
    with _connect(url) as conn:
        figures = {
            "database": int(
                conn.execute("SELECT pg_database_size(current_database())").fetchone()[0]
            )
        }
        for table in TABLES:
            figures[table] = int(
                conn.execute(
                    "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class c "
                    "WHERE c.oid = %s::regclass OR c.oid IN "
                    "(SELECT relid FROM pg_partition_tree(%s::regclass))",
                    (table, table),
                ).fetchone()[0]
            )
    return figures


def vacuum(url: str) -> None:
    """VACUUM (ANALYZE) the compared tables: the visibility map that index-only scans rely on
    and the statistics, in the same state on both copies (autovacuum never analyses a
    partitioned parent)."""
    with _connect(url) as conn:
        for table in TABLES:
            conn.execute(f"VACUUM (ANALYZE) {table}")


# ------------------------------------------------------------------- partitioning
_CONSTRAINT = re.compile(r"^(?P<kind>PRIMARY KEY|UNIQUE) \((?P<columns>[^)]*)\)(?P<rest>.*)$")
_INDEX_COLUMNS = re.compile(r"(?P<head>USING \w+ \()(?P<columns>[^)]*)\)")
_STATISTICS = re.compile(r"^CREATE STATISTICS (?P<name>\S+) (?P<body>.*) FROM (?P<table>\S+)$")


@dataclass
class TableShape:
    """What is rebuilt on the partitioned table: its indexes, constraints, statistics."""

    constraints: list[tuple[str, str]] = field(default_factory=list)  # (name, definition)
    indexes: list[str] = field(default_factory=list)  # CREATE INDEX statements
    statistics: list[str] = field(default_factory=list)  # CREATE STATISTICS statements
    sequences: list[tuple[str, str]] = field(default_factory=list)  # (column, sequence)


def with_key(definition: str, *, constraint: bool) -> str:
    """A unique constraint or index definition with the partition key appended to its
    columns (PostgreSQL refuses a unique index on a partitioned table without it)."""
    if constraint:
        found = _CONSTRAINT.match(definition)
        if not found:
            raise ValueError(f"unexpected constraint {definition!r}")
        return f"{found['kind']} ({found['columns']}, {KEY}){found['rest']}"
    found = _INDEX_COLUMNS.search(definition)
    if not found:
        raise ValueError(f"unexpected index {definition!r}")
    return (
        definition[: found.start()]
        + f"{found['head']}{found['columns']}, {KEY})"
        + definition[found.end() :]
    )


def table_shape(conn: Any, table: str) -> TableShape:
    shape = TableShape()
    rows = conn.execute(
        "SELECT pg_get_indexdef(x.indexrelid), x.indisunique, c.conname, "
        "pg_get_constraintdef(c.oid) "
        "FROM pg_index x LEFT JOIN pg_constraint c ON c.conindid = x.indexrelid "
        "AND c.conrelid = x.indrelid WHERE x.indrelid = %s::regclass "
        "ORDER BY x.indexrelid",
        (table,),
    ).fetchall()
    for index_def, unique, constraint_name, constraint_def in rows:
        if constraint_name is not None:
            shape.constraints.append((constraint_name, with_key(constraint_def, constraint=True)))
        elif unique:
            shape.indexes.append(with_key(index_def, constraint=False))
        else:
            shape.indexes.append(index_def)
    shape.statistics = [
        row[0]
        for row in conn.execute(
            "SELECT pg_get_statisticsobjdef(oid) FROM pg_statistic_ext "
            "WHERE stxrelid = %s::regclass",
            (table,),
        )
    ]
    shape.sequences = [
        (column, sequence)
        for column, sequence in conn.execute(
            "SELECT attname, pg_get_serial_sequence(%s, attname) FROM pg_attribute "
            "WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped",
            (table, table),
        )
        if sequence
    ]
    return shape


def per_partition(statistics: str, partition: str) -> str:
    """A ``CREATE STATISTICS`` of the parent, for one partition: the planner reads each
    partition's own statistics when it plans that partition's scan."""
    found = _STATISTICS.match(statistics)
    if not found:
        raise ValueError(f"unexpected statistics {statistics!r}")
    return (
        f"CREATE STATISTICS {found['name']}_{partition.rsplit('_', 1)[-1]} "
        f"{found['body']} FROM {partition}"
    )


def build_keys(conn: Any) -> int:
    """The key of every resource, in a temporary table ``part_key``."""
    conn.execute(
        f"""
        CREATE TEMPORARY TABLE part_key AS
        SELECT r.resource_type, r.id,
               (CASE WHEN r.resource_type = 'Patient' THEN r.id
                     ELSE coalesce(c.patient_id, r.id) END)::varchar(64) AS {KEY}
        FROM resource r
        LEFT JOIN (SELECT resource_type, resource_id, min(patient_id) AS patient_id
                   FROM patient_compartment GROUP BY resource_type, resource_id) c
          ON c.resource_type = r.resource_type AND c.resource_id = r.id
        """  # noqa: S608 - constants only
    )
    conn.execute("CREATE UNIQUE INDEX ON part_key (resource_type, id)")
    conn.execute("ANALYZE part_key")
    return int(conn.execute("SELECT count(*) FROM part_key").fetchone()[0])


def rebuild(conn: Any, table: str, owner: tuple[str, str], partitions: int) -> None:
    """``table`` rebuilt as hash partitions of its resource's key, rows, indexes and
    statistics included, under its own name (the caller holds the transaction)."""
    shape = table_shape(conn, table)
    type_column, id_column = owner
    new = f"{table}__partitioned"
    conn.execute(
        f"CREATE TABLE {new} (LIKE {table} INCLUDING DEFAULTS INCLUDING STORAGE, "
        f"{KEY} varchar(64) NOT NULL) PARTITION BY HASH ({KEY})"
    )
    names = [f"{table}_p{i}" for i in range(partitions)]
    for remainder, name in enumerate(names):
        conn.execute(
            f"CREATE TABLE {name} PARTITION OF {new} "
            f"FOR VALUES WITH (MODULUS {partitions}, REMAINDER {remainder})"
        )
    # the old table is read in its physical order (a patient's rows together, as loaded),
    # so each partition keeps that order
    conn.execute(
        f"INSERT INTO {new} SELECT t.*, coalesce(k.{KEY}, t.{id_column}) FROM {table} t "  # noqa: S608
        f"LEFT JOIN part_key k ON k.resource_type = t.{type_column} AND k.id = t.{id_column}"
    )
    for _column, sequence in shape.sequences:
        conn.execute(f"ALTER SEQUENCE {sequence} OWNED BY NONE")
    conn.execute(f"DROP TABLE {table}")
    conn.execute(f"ALTER TABLE {new} RENAME TO {table}")
    for column, sequence in shape.sequences:
        conn.execute(f"ALTER SEQUENCE {sequence} OWNED BY {table}.{column}")
    for name, definition in shape.constraints:
        conn.execute(f"ALTER TABLE {table} ADD CONSTRAINT {name} {definition}")
    for statement in shape.indexes:
        conn.execute(statement)
    for statement in shape.statistics:
        conn.execute(statement)
        for name in names:
            conn.execute(per_partition(statement, name))


def partition_database(url: str, partitions: int) -> float:
    """Rebuild the tables of ``url`` as partitions, in one transaction; the seconds taken."""
    started = time.perf_counter()
    with _connect(url) as conn:
        conn.execute("SET maintenance_work_mem = '512MB'")
        conn.execute("SET work_mem = '256MB'")
        with conn.transaction():
            keys = build_keys(conn)
            log(f"  {keys} resource keys computed")
            for table, owner in TABLES.items():
                log(f"  {table} ...")
                rebuild(conn, table, owner, partitions)
    return time.perf_counter() - started


# -------------------------------------------------------------------------- queries
def observation_ids(url: str, patient_ids: list[str]) -> dict[str, list[str]]:
    """A few Observation ids per patient (for reads by id)."""
    with _connect(url) as conn:
        rows = conn.execute(
            "SELECT patient_id, (array_agg(resource_id ORDER BY resource_id))[1:5] "
            "FROM patient_compartment WHERE resource_type = 'Observation' "
            "AND patient_id = ANY(%s) GROUP BY patient_id",
            (patient_ids,),
        ).fetchall()
    return {patient: list(ids) for patient, ids in rows}


def draw_queries(
    kinds: list[str],
    count: int,
    patients: list[tuple[PatientCopy, str]],
    observations: dict[str, list[str]],
    rng: random.Random,
) -> list[Query]:
    queries = []
    for kind in kinds:
        for _ in range(count):
            copy, patient_id = rng.choice(patients)
            if kind == READ_PATIENT:
                queries.append(Query(kind, f"/fhir/Patient/{patient_id}", [], None))
            elif kind == READ_OBSERVATION:
                observation = rng.choice(observations[patient_id])
                queries.append(Query(kind, f"/fhir/Observation/{observation}", [], None))
            else:
                queries.append(make_query(kind, copy, patient_id, rng))
    return queries


Answer = tuple[str, ...]


def answer_of(response: httpx.Response) -> Answer:
    """What an answer holds: every entry's mode, type, id and version, in order, and whether
    it has a next page; a resource's type, id and version; or its HTTP status."""
    if response.status_code != 200:
        return (f"HTTP {response.status_code}",)
    body = orjson.loads(response.content)

    def name(resource: dict[str, Any]) -> str:
        version = (resource.get("meta") or {}).get("versionId")
        return f"{resource.get('resourceType')}/{resource.get('id')}/_history/{version}"

    if body.get("resourceType") != "Bundle":
        return (name(body),)
    entries = tuple(
        f"{(e.get('search') or {}).get('mode', 'match')}:{name(e.get('resource') or {})}"
        for e in body.get("entry") or ()
    )
    more = any(link.get("relation") == "next" for link in body.get("link") or ())
    return (*entries, f"next:{more}")


def collect_answers(api: Api, queries: list[Query], clients: int) -> list[Answer]:
    answers: list[Answer] = [()] * len(queries)

    def run(api: Api, item: tuple[int, Query]) -> Sample:
        index, query = item
        try:
            response = api.request("GET", query.path, params=query.params)
        except httpx.HTTPError as exc:
            answers[index] = (f"HTTP error {type(exc).__name__}",)
            return Sample(query.kind, 0.0, 0, type(exc).__name__, query)
        answers[index] = answer_of(response)
        return Sample(query.kind, 0.0, response.status_code, None, query)

    run_mix(api, list(enumerate(queries)), clients, runner=run)
    return answers


def compare(queries: list[Query], flat: list[Answer], part: list[Answer]) -> dict[str, Any]:
    identical = reordered = 0
    different: list[str] = []
    failed = sum(1 for a in (*flat, *part) if a and a[0].startswith("HTTP "))
    for query, a, b in zip(queries, flat, part, strict=True):
        if a == b:
            identical += 1
        elif sorted(a) == sorted(b):
            reordered += 1
        else:
            different.append(
                f"{query.kind} {query.path}?{httpx.QueryParams(query.params)}: "
                f"{len(a) - 1} entries flat, {len(b) - 1} partitioned"
            )
    return {
        "queries": len(queries),
        "identical": identical,
        "same_set_other_order": reordered,
        "different": len(different),
        "different_examples": different[:MAX_SHOWN],
        "errors": failed,
        "entries": sum(max(len(a) - 1, 1) for a in flat),
    }


# ---------------------------------------------------------------- the key in the SQL
MEMBERS = (
    "SELECT r.resource_type, r.id, r.version_id FROM patient_compartment pc "
    "JOIN resource r ON r.resource_type = pc.resource_type AND r.id = pc.resource_id{join} "
    "WHERE pc.patient_id = %(patient)s{where} AND r.deleted IS false"
)
KEYED = {"join": f" AND r.{KEY} = pc.{KEY}", "where": f" AND pc.{KEY} = %(patient)s"}


def time_members(url: str, statement: str, patients: list[str]) -> tuple[list[float], list[Any]]:
    """``statement`` for each patient, once to warm and once timed (ms, rows sorted)."""
    timings, answers = [], []
    with _connect(url) as conn:
        for patient in patients:
            conn.execute(statement, {"patient": patient}).fetchall()
        for patient in patients:
            started = time.perf_counter()
            rows = conn.execute(statement, {"patient": patient}).fetchall()
            timings.append((time.perf_counter() - started) * 1000)
            answers.append(sorted(rows))
    return timings, answers


def keyed_members(layouts: dict[str, Layout], patients: list[str]) -> dict[str, Any]:
    """What the key buys once the SQL names it: the members of a patient's compartment (the
    first statement of ``$everything``, written here by hand, not the hub's SQL) on the plain
    copy, on the partitioned one as it is, and on the partitioned one with the key in the join
    and the condition, which the planner prunes to one partition."""
    plain = MEMBERS.format(join="", where="")
    runs = {
        "plain": time_members(layouts["flat"].url, plain, patients),
        "partitioned": time_members(layouts["part"].url, plain, patients),
        "partitioned, keyed": time_members(layouts["part"].url, MEMBERS.format(**KEYED), patients),
    }
    reference = runs["plain"][1]
    figures: dict[str, Any] = {"patients": len(patients), "statement": MEMBERS.format(**KEYED)}
    for name, (timings, answers) in runs.items():
        ordered = sorted(timings)
        figures[name] = {
            "p50_ms": percentile(ordered, 0.50),
            "p95_ms": percentile(ordered, 0.95),
            "same_rows": sum(1 for a, b in zip(reference, answers, strict=True) if a == b),
            "rows": sum(len(a) for a in answers),
        }
    return figures


# ----------------------------------------------------------------------------- runs
@dataclass
class Layout:
    name: str
    url: str
    samples: list[Sample] = field(default_factory=list)
    answers: list[Answer] | None = None
    runs: int = 0


def measure(
    args: argparse.Namespace,
    layout: Layout,
    answer_queries: list[Query],
    warmup: list[Query],
    timed: list[Query],
    rng: random.Random,
) -> None:
    with contextlib.ExitStack() as stack:
        running = start_server(args, layout.url, stack, args.clients)
        api = running.api
        if layout.answers is None:
            log(f"{layout.name}: every query once, untimed, for its answer ...")
            layout.answers = collect_answers(api, answer_queries, args.clients)
        log(f"{layout.name}: warm-up ({len(warmup)} requests) and the timed mix ...")
        run_mix(api, warmup, args.clients)
        mix = list(timed)
        rng.shuffle(mix)
        samples, _ = run_mix(api, mix, args.clients)
        layout.samples.extend(samples)
        layout.runs += 1


def explain_both(
    args: argparse.Namespace, layouts: dict[str, Layout], query: Query
) -> dict[str, Any]:
    """The slowest statements of one query with ``EXPLAIN (ANALYZE, BUFFERS)`` on each copy
    (bench/search.py's ``--explain``)."""
    found = {}
    for name, layout in layouts.items():
        with contextlib.ExitStack() as stack:
            running = start_server(args, layout.url, stack, 1)
            token = running.api.client.headers["Authorization"].split(" ", 1)[1]
            found[name] = explain_query(layout.url, running.base, token, query)
    return found


# ----------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--database-url",
        required=True,
        help="the PostgreSQL URL of a database bench/search.py loaded (only read)",
    )
    parser.add_argument("--partitions", type=int, default=16, help="hash partitions (16)")
    parser.add_argument("--flat-db", metavar="NAME", help="the plain copy (<name>_flat)")
    parser.add_argument("--part-db", metavar="NAME", help="the partitioned copy (<name>_part)")
    parser.add_argument("--keep", action="store_true", help="keep the copies this run makes")
    parser.add_argument(
        "--copy-wait", type=float, default=900.0, help="seconds to wait for a busy source"
    )
    parser.add_argument("--seed", type=int, default=1, help="the seed it was loaded with")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="Synthea bundle folder")
    parser.add_argument("--workers", type=int, default=2, help="API processes (default 2)")
    parser.add_argument("--clients", type=int, default=4, help="threads of the query mix")
    parser.add_argument("--requests", type=int, default=200, help="timed requests per kind")
    parser.add_argument("--warmup", type=int, default=20, help="untimed requests per kind")
    parser.add_argument("--sample", type=int, default=1000, help="patients queries draw from")
    parser.add_argument(
        "--kinds",
        default=",".join((*KINDS, *READS, BASELINE)),
        help=f"comma-separated subset of {','.join((*KINDS, *READS, BASELINE))}",
    )
    parser.add_argument(
        "--jit",
        action="store_true",
        help="leave PostgreSQL's JIT on (its default); without it both copies run jit = off",
    )
    parser.add_argument(
        "--explain", choices=KINDS, help="EXPLAIN one query of this kind on both copies"
    )
    parser.add_argument("--port", type=int, default=0, help="server port (default: a free one)")
    parser.add_argument("--startup-timeout", type=float, default=120.0, help="seconds")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    args.kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    for kind in args.kinds:
        if kind not in (*KINDS, *READS, BASELINE):
            parser.error(f"unknown kind {kind!r}")
    if database_kind(args.database_url) != "postgresql":
        parser.error("--database-url must be a PostgreSQL URL")
    source = database_name(args.database_url)
    if not source:
        parser.error("--database-url must name the loaded database")
    args.source = source
    args.flat_db = args.flat_db or f"{source}_flat"
    args.part_db = args.part_db or f"{source}_part"
    if len({source, args.flat_db, args.part_db}) != 3:
        parser.error("the source and the two copies need three different names")
    for name in ("partitions", "clients", "requests", "sample", "workers"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    return args


@contextlib.contextmanager
def copies(args: argparse.Namespace) -> Iterator[tuple[dict[str, Any], dict[str, Layout]]]:
    """The two copies, made when missing (the part one partitioned), dropped at the end when
    this run made them (unless --keep)."""
    admin = server_url(args.database_url)
    if not exists(admin, args.source):
        raise SystemExit(f"there is no database {args.source}")
    made: list[str] = []
    facts: dict[str, Any] = {"partitions": args.partitions}
    try:
        if not exists(admin, args.flat_db):
            copy_database(admin, args.source, args.flat_db, args.copy_wait)
            made.append(args.flat_db)
        else:
            log(f"using the existing copy {args.flat_db}")
        if not exists(admin, args.part_db):
            # from the flat copy, which nobody else uses: the two are the same data
            copy_database(admin, args.flat_db, args.part_db, args.copy_wait)
            made.append(args.part_db)
        else:
            log(f"using the existing copy {args.part_db}")
        layouts = {
            "flat": Layout("flat", _with_database(args.database_url, args.flat_db)),
            "part": Layout("part", _with_database(args.database_url, args.part_db)),
        }
        if is_partitioned(layouts["flat"].url):
            raise SystemExit(f"{args.flat_db} is partitioned: it must be a plain copy")
        if not is_partitioned(layouts["part"].url):
            log(f"partitioning {args.part_db} into {args.partitions} hash partitions ...")
            facts["partition_seconds"] = partition_database(layouts["part"].url, args.partitions)
        for layout in layouts.values():
            log(f"VACUUM (ANALYZE) of {len(TABLES)} tables in {layout.name} ...")
            vacuum(layout.url)
        for name in (args.flat_db, args.part_db):
            set_jit(admin, name, args.jit)
        facts["jit"] = args.jit
        yield facts, layouts
    finally:
        if not args.keep:
            for name in made:
                drop_database(admin, name)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.data.is_dir():
        print(f"the shared data is not there: no Synthea bundles in {args.data}; nothing measured")
        return 0
    generator = Generator(args.data, args.seed)
    load_before = _loadavg()
    with copies(args) as (facts, layouts):
        flat, part = layouts["flat"], layouts["part"]
        counts = {name: row_counts(layout.url) for name, layout in layouts.items()}
        if counts["flat"] != counts["part"]:
            raise SystemExit(f"the copies differ in rows: {counts}")
        state = read_state(flat.url)
        if state is None or not state.copies:
            raise SystemExit(f"{args.source} was not loaded by bench/search.py")
        rng = random.Random(args.seed * 13 + 7)
        with contextlib.ExitStack() as stack:
            running = start_server(args, flat.url, stack, args.clients)
            patients = sample_patients(
                running.api, generator, state, rng, args.sample, {}, args.clients
            )
        observations = observation_ids(flat.url, [pid for _, pid in patients])
        patients = [(c, pid) for c, pid in patients if observations.get(pid)]
        searches = [k for k in args.kinds if k != BASELINE]
        answer_queries = draw_queries(searches, args.requests, patients, observations, rng)
        warmup = draw_queries(args.kinds, args.warmup, patients, observations, rng)
        timed = draw_queries(args.kinds, args.requests, patients, observations, rng)
        for name in ORDER:
            measure(args, layouts[name], answer_queries, warmup, timed, rng)
        assert flat.answers is not None and part.answers is not None
        figures: dict[str, Any] = {
            "code": _code_version(),
            "machine": machine(),
            "source": args.source,
            "databases": {"flat": args.flat_db, "part": args.part_db},
            **facts,
            "resources": state.resources,
            "patients": state.copies - len(state.failed),
            "sample_patients": len(patients),
            "rows": counts["flat"],
            "sizes": {name: sizes(layout.url) for name, layout in layouts.items()},
            "workers": args.workers,
            "clients": args.clients,
            "order": list(ORDER),
            "answers": compare(answer_queries, flat.answers, part.answers),
            "kinds": {
                kind: {
                    name: summarise([s for s in layout.samples if s.kind == kind])
                    for name, layout in layouts.items()
                }
                for kind in args.kinds
            },
        }
        figures["keyed"] = keyed_members(layouts, [pid for _, pid in patients])
        if args.explain:
            figures["explain"] = explain_both(
                args, layouts, draw_queries([args.explain], 1, patients, observations, rng)[0]
            )
    figures["loadavg_1min"] = {"before": load_before, "after": _loadavg()}
    if args.json:
        print(orjson.dumps(figures, option=orjson.OPT_INDENT_2).decode())
    else:
        print_figures(figures)
    differing = figures["answers"]["different"] + figures["answers"]["same_set_other_order"]
    return 1 if differing else 0


def print_figures(f: dict[str, Any]) -> None:
    print(machine_line(f))
    mib = 2**20
    flat, part = f["sizes"]["flat"], f["sizes"]["part"]
    took = f.get("partition_seconds")
    print(
        f"source {f['source']}: {f['resources']} generated resources ({f['patients']} "
        f"patients), {f['rows']['resource']} resource rows; copies {f['databases']['flat']} "
        f"(plain) and {f['databases']['part']} ({f['partitions']} hash partitions of "
        f"{KEY}{f', built in {took:.0f} s' if took else ''}); rows equal in "
        f"{len(f['rows'])} tables; jit {'on' if f['jit'] else 'off'} on both"
    )
    print(
        f"sizes (MiB, plain / partitioned): database {flat['database'] / mib:.0f} / "
        f"{part['database'] / mib:.0f}; "
        + ", ".join(f"{t} {flat[t] / mib:.0f}/{part[t] / mib:.0f}" for t in TABLES)
    )
    a = f["answers"]
    print(
        f"answers: {a['queries']} queries ({a['entries']} entries) compared: {a['identical']} "
        f"identical, {a['same_set_other_order']} the same set in another order, "
        f"{a['different']} different; {a['errors']} error answers"
    )
    for example in a["different_examples"]:
        print(f"  {example}")
    runs = f["order"].count("flat")
    print(
        f"latency, ms ({runs} runs per layout pooled, order {' '.join(f['order'])}; "
        f"{f['clients']} clients, {f['workers']} API processes, {f['sample_patients']} "
        f"sample patients):"
    )
    print(
        f"{'kind':30}{'plain p50':>11}{'plain p95':>11}{'part p50':>11}{'part p95':>11}"
        f"{'p95 part/plain':>16}{'errors':>8}"
    )
    for kind, by in f["kinds"].items():
        p, q = by["flat"], by["part"]
        if not p["requests"] or not q["requests"]:
            continue
        errors = p["errors"] + q["errors"] + p["unexpected"] + q["unexpected"]
        print(
            f"{kind:30}{p['p50_ms']:>11.1f}{p['p95_ms']:>11.1f}{q['p50_ms']:>11.1f}"
            f"{q['p95_ms']:>11.1f}{q['p95_ms'] / p['p95_ms']:>16.2f}{errors:>8}"
        )
    k = f["keyed"]
    print(
        f"a patient's compartment members, hand-written SQL (not the hub's), {k['patients']} "
        "patients, ms p50/p95 (patients with the same rows as plain): "
        + "; ".join(
            f"{name} {k[name]['p50_ms']:.2f}/{k[name]['p95_ms']:.2f} ({k[name]['same_rows']})"
            for name in ("plain", "partitioned", "partitioned, keyed")
        )
    )
    if "explain" in f:
        for name, found in f["explain"].items():
            print(f"\n===== {name}")
            print_explain(found)


if __name__ == "__main__":
    sys.exit(main())
