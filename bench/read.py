"""Read throughput: ``GET [type]/[id]``, vread and instance history under ``wrk``, policy and
audit on, beside ``/healthz`` measured in the same run.

Runs on a database ``bench/search.py`` has loaded (``--reuse-db NAME``); every request is made
by the ``bench`` client, the hospital that posted the data (so the policy admits it as the
author). For each of ``--connections`` (default 16 and 64) it runs ``wrk`` for ``--seconds`` on:

- ``read``: ``GET Patient/{id}`` over ``--sample`` patients;
- ``read-obs``: ``GET Observation/{id}`` over as many Observations;
- ``vread``: ``GET Patient/{id}/_history/1``;
- ``history``: ``GET Patient/{id}/_history``;
- ``search-cccd``: ``GET Patient?identifier={CCCD system}|{number}`` over the same patients;
- ``search-obs``: ``GET Observation?patient=&code=&date=ge{year}&date=lt{year+1}``, each for
  an Observation of the sample (its patient, LOINC code and year, so it finds at least one);
- ``healthz``: ``GET /healthz``, the floor of HTTP and the framework at that moment.

Besides wrk's requests/s and latency percentiles it prints, per run, the PostgreSQL sessions
opened during it (``pg_stat_database.sessions``: a pool that churns opens many), the server's
CPU per request (all its processes, from ``/proc``) and the audit rows written (one per
request, or the audit is not on).

Usage (see bench/README.md)::

    .venv/bin/python bench/search.py --database-url postgresql://postgres@127.0.0.1:5432/test \\
        --keep-db emr_hub_bench_read --target 30000 --load-only
    .venv/bin/python bench/read.py --database-url postgresql://postgres@127.0.0.1:5432/test \\
        --reuse-db emr_hub_bench_read
"""

from __future__ import annotations

import argparse
import contextlib
import random
import shutil
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import orjson

if __package__ in (None, ""):  # run as a script: make ``bench`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.access import audit_rows, loaded_database, run_wrk
from bench.generate import CCCD, LOINC
from bench.ingest import _code_version, _loadavg, database_kind, log
from bench.search import _connect, machine, machine_line, start_server

KINDS = ("read", "read-obs", "vread", "history", "search-cccd", "search-obs", "healthz")


def sample_ids(url: str, resource_type: str, count: int, rng: random.Random) -> list[str]:
    """``count`` ids of live ``resource_type`` resources, drawn at random."""
    with _connect(url) as conn:
        rows = conn.execute(
            "SELECT id FROM resource WHERE resource_type = %s AND NOT deleted ORDER BY id",
            (resource_type,),
        ).fetchall()
    ids = [row[0] for row in rows]
    if not ids:
        raise SystemExit(f"no {resource_type} in the database")
    return rng.sample(ids, min(count, len(ids)))


def sessions_opened(url: str) -> int:
    """How many sessions PostgreSQL has opened to this database since its statistics reset."""
    with _connect(url) as conn:
        row = conn.execute(
            "SELECT sessions FROM pg_stat_database WHERE datname = current_database()"
        ).fetchone()
    return int(row[0])


def contents(url: str, resource_type: str, ids: list[str]) -> list[dict[str, Any]]:
    """The stored JSON of those resources."""
    with _connect(url) as conn:
        rows = conn.execute(
            "SELECT content::text FROM resource WHERE resource_type = %s AND id = ANY(%s)",
            (resource_type, ids),
        ).fetchall()
    return [orjson.loads(row[0]) for row in rows]


def search_paths(kind: str, url: str, patients: list[str], observations: list[str]) -> list[str]:
    """The search URLs of ``kind``, made from what the sampled resources hold."""
    if kind == "search-cccd":
        numbers = [
            identifier["value"]
            for patient in contents(url, "Patient", patients)
            for identifier in patient.get("identifier", [])
            if identifier.get("system") == CCCD
        ]
        return ["/fhir/Patient?" + urlencode({"identifier": f"{CCCD}|{n}"}) for n in numbers]
    paths = []
    for observation in contents(url, "Observation", observations):
        codes = [c["code"] for c in observation["code"].get("coding", []) if c["system"] == LOINC]
        moment = observation.get("effectiveDateTime") or observation.get("issued")
        subject = observation.get("subject", {}).get("reference", "")
        if not codes or not moment or not subject.startswith("Patient/"):
            continue
        year = int(moment[:4])
        query = [
            ("patient", subject.removeprefix("Patient/")),
            ("code", f"{LOINC}|{codes[0]}"),
            ("date", f"ge{year}"),
            ("date", f"lt{year + 1}"),
        ]
        paths.append("/fhir/Observation?" + urlencode(query))
    return paths


def paths_for(kind: str, url: str, patients: list[str], observations: list[str]) -> list[str]:
    if kind.startswith("search-"):
        return search_paths(kind, url, patients, observations)
    return {
        "read": [f"/fhir/Patient/{pid}" for pid in patients],
        "read-obs": [f"/fhir/Observation/{oid}" for oid in observations],
        "vread": [f"/fhir/Patient/{pid}/_history/1" for pid in patients],
        "history": [f"/fhir/Patient/{pid}/_history" for pid in patients],
        "healthz": ["/healthz"],
    }[kind]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", required=True, help="the PostgreSQL server's URL")
    parser.add_argument(
        "--reuse-db", required=True, metavar="NAME", help="a database bench/search.py loaded"
    )
    parser.add_argument("--workers", type=int, default=2, help="API processes (default 2)")
    parser.add_argument("--sample", type=int, default=1000, help="resources read per kind")
    parser.add_argument("--seconds", type=int, default=15, help="each wrk run")
    parser.add_argument(
        "--connections", default="16,64", help="wrk connections, comma-separated (16,64)"
    )
    parser.add_argument("--kinds", default=",".join(KINDS), help=f"subset of {','.join(KINDS)}")
    parser.add_argument("--warmup", type=int, default=3, help="untimed wrk seconds per kind")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--port", type=int, default=0, help="server port (default: a free one)")
    parser.add_argument("--startup-timeout", type=float, default=120.0, help="seconds")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    args.connections = [int(c) for c in args.connections.split(",") if c.strip()]
    args.kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    for kind in args.kinds:
        if kind not in KINDS:
            parser.error(f"unknown kind {kind!r}")
    if database_kind(args.database_url) != "postgresql":
        parser.error("--database-url must be a PostgreSQL URL")
    if shutil.which("wrk") is None:
        parser.error("wrk is not installed (apt-get install -y wrk)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rng = random.Random(args.seed)
    load_before = _loadavg()
    runs: list[dict[str, Any]] = []
    with loaded_database(args) as url, contextlib.ExitStack() as stack:
        patients = sample_ids(url, "Patient", args.sample, rng)
        observations = sample_ids(url, "Observation", args.sample, rng)
        running = start_server(args, url, stack, 4)
        token = running.api.client.headers["Authorization"].split(" ", 1)[1]
        for kind in args.kinds:
            paths = paths_for(kind, url, patients, observations)
            status = running.api.request("GET", paths[0]).status_code
            if status != 200:
                raise SystemExit(f"{kind}: {paths[0]} answers HTTP {status}")
            if args.warmup:
                run_wrk(running.base, token, paths, args.warmup, max(args.connections))
            for connections in args.connections:
                log(f"{kind}: wrk -c{connections} for {args.seconds} s ...")
                sessions, audits = sessions_opened(url), audit_rows(url)
                cpu = running.server.cpu_seconds()
                figures = run_wrk(running.base, token, paths, args.seconds, connections)
                cpu_after = running.server.cpu_seconds()
                figures |= {
                    "kind": kind,
                    "connections": connections,
                    "sessions_opened": sessions_opened(url) - sessions,
                    "audit_rows": audit_rows(url) - audits,
                    "server_cpu_ms_per_request": (
                        1000 * (cpu_after - cpu) / figures["requests"]
                        if cpu is not None and cpu_after is not None and figures["requests"]
                        else None
                    ),
                }
                runs.append(figures)
    result = {
        "code": _code_version(),
        "machine": machine(),
        "database": args.reuse_db,
        "workers": args.workers,
        "runs": runs,
        "loadavg_1min": {"before": load_before, "after": _loadavg()},
    }
    if args.json:
        print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
    else:
        print_figures(result)
    return 0


def print_figures(f: dict[str, Any]) -> None:
    print(f"{machine_line(f)}; database {f['database']}; {f['workers']} workers")
    print(
        f"{'kind':10}{'conn':>6}{'req/s':>10}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}"
        f"{'non-2xx':>9}{'errors':>8}{'sessions':>10}{'audit':>9}{'cpu ms/req':>12}"
    )
    for r in f["runs"]:
        cpu = r["server_cpu_ms_per_request"]
        print(
            f"{r['kind']:10}{r['connections']:>6}{r['requests_per_s']:>10.0f}{r['p50_ms']:>9.2f}"
            f"{r['p95_ms']:>9.2f}{r['p99_ms']:>9.2f}{r['non_2xx']:>9}{r['socket_errors']:>8}"
            f"{r['sessions_opened']:>10}{r['audit_rows']:>9}"
            f"{'' if cpu is None else f'{cpu:.2f}':>12}"
        )


if __name__ == "__main__":
    raise SystemExit(main())
