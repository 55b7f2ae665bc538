"""What the access policy and the audit cost: the same reads and searches with them on and off.

Runs on a database ``bench/search.py`` has loaded (``--reuse-db NAME``). A second hospital,
``bench-reader`` (``Organization/bench-reader``), has no care relationship with the loaded
patients; for each patient of the query sample it records the patient's privacy Consent
(permit, with the signed form attached), so it may read exactly those patients. Every request
is made by that hospital, so the policy is decided from the grants table, not by ownership.

The same server is then started in turn in each mode, in the order A B C C B A (so a drift of
the machine over the run weighs on every mode alike):

- ``on``: policy and audit, as deployed;
- ``no-audit``: ``EMR_HUB_BENCHMARK_WITHOUT=audit`` (the policy alone);
- ``off``: ``EMR_HUB_BENCHMARK_WITHOUT=policy,audit``.

In each mode: the query mix of ``bench/search.py`` plus ``read-patient`` (``GET
Patient/{id}``) from ``--clients`` threads (latency per kind), then ``wrk`` for read throughput
(``GET Patient/{id}`` over the sample, ``--connections``, ``--seconds``) and ``/healthz`` in the
same way, the floor of the machine at that moment. Before timing, each mode checks that it is
what it says: with the policy on, a patient outside the sample is 404 to the reader; the audit
table grows by one row per request when the audit is on, and not at all when it is off.

Usage (see bench/README.md)::

    .venv/bin/python bench/access.py --database-url postgresql://postgres@127.0.0.1:5432/test \\
        --reuse-db emr_hub_bench_search
"""

from __future__ import annotations

import argparse
import contextlib
import random
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import orjson

if __package__ in (None, ""):  # run as a script: make ``bench`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.generate import Generator, PatientCopy
from bench.ingest import (
    DEFAULT_DATA,
    _code_version,
    _diagnostics,
    _loadavg,
    database_kind,
    ensure_client,
    log,
    run_cli,
)
from bench.search import (
    KINDS,
    Api,
    Query,
    Running,
    _connect,
    kept_database,
    machine,
    machine_line,
    make_query,
    read_state,
    run_mix,
    sample_patients,
    start_server,
    summarise,
)

READER = "bench-reader"
READER_ORGANIZATION = f"Organization/{READER}"
READ = "read-patient"
MODES = {"on": "", "no-audit": "audit", "off": "policy,audit"}
CONSENT_SCOPE = "http://terminology.hl7.org/CodeSystem/consentscope"

WRK_SCRIPT = """
local paths = {}
init = function(args)
  for line in io.lines(args[1]) do paths[#paths + 1] = line end
end
request = function()
  return wrk.format("GET", paths[math.random(#paths)])
end
done = function(summary, latency, requests)
  io.write(string.format(
    'WRK {"requests": %d, "seconds": %.3f, "non_2xx": %d, "socket_errors": %d, '
    .. '"p50_ms": %.3f, "p95_ms": %.3f, "p99_ms": %.3f}\\n',
    summary.requests, summary.duration / 1e6, summary.errors.status,
    summary.errors.connect + summary.errors.read + summary.errors.write
      + summary.errors.timeout,
    latency:percentile(50) / 1000, latency:percentile(95) / 1000,
    latency:percentile(99) / 1000))
end
"""


def consent(patient_id: str) -> dict[str, Any]:
    """The reader's privacy Consent for one patient, as a hospital records it for her."""
    return {
        "resourceType": "Consent",
        "id": f"{READER}-{patient_id}"[:64],
        "status": "active",
        "scope": {"coding": [{"system": CONSENT_SCOPE, "code": "patient-privacy"}]},
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        "patient": {"reference": f"Patient/{patient_id}"},
        "dateTime": "2026-12-07T08:00:00+07:00",
        "sourceAttachment": {"contentType": "application/pdf", "title": "signed consent form"},
        "provision": {
            "type": "permit",
            "actor": [
                {
                    "role": {
                        "coding": [
                            {
                                "system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
                                "code": "IRCP",
                            }
                        ]
                    },
                    "reference": {"reference": READER_ORGANIZATION},
                }
            ],
        },
    }


def ensure_reader(running: Running) -> None:
    """The reader's Organization (imported by the operator) and its client."""
    with tempfile.TemporaryDirectory(prefix="emr_hub_bench_") as folder:
        organization = Path(folder) / "reader.json"
        organization.write_bytes(
            orjson.dumps({"resourceType": "Organization", "id": READER, "name": "benchmark reader"})
        )
        run_cli(running.executable, ["import", str(organization)], running.env)
    ensure_client(running.executable, running.env, READER, READER_ORGANIZATION)


def record_consents(api: Api, patients: list[tuple[PatientCopy, str]], clients: int) -> None:
    """PUT each patient's Consent for the reader (idempotent: same id, same content)."""

    def put(patient_id: str) -> None:
        body = consent(patient_id)
        response = api.request("PUT", f"/fhir/Consent/{body['id']}", content=orjson.dumps(body))
        if response.status_code not in (200, 201):
            raise SystemExit(
                f"Consent for {patient_id}: HTTP {response.status_code}: {_diagnostics(response)}"
            )

    with ThreadPoolExecutor(max_workers=clients) as pool:
        list(pool.map(put, [patient_id for _, patient_id in patients]))


def audit_rows(url: str) -> int:
    with _connect(url) as conn:
        return int(conn.execute("SELECT count(*) FROM audit_event").fetchone()[0])


def outsider(url: str) -> str:
    """A loaded Patient the reader holds no grant for (no Consent of this or an earlier run)."""
    with _connect(url) as conn:
        row = conn.execute(
            "SELECT r.id FROM resource r WHERE r.resource_type = 'Patient' AND NOT r.deleted "
            "AND NOT EXISTS (SELECT 1 FROM access_grant g "
            "WHERE g.patient_id = r.id AND g.organization = %s) LIMIT 1",
            (READER_ORGANIZATION,),
        ).fetchone()
    if row is None:
        raise SystemExit("the reader has a Consent of every Patient: use a smaller --sample")
    return str(row[0])


def check_mode(mode: str, api: Api, url: str, outside: str, inside: str) -> None:
    """The mode does what it says: the policy refuses a stranger's patient, the audit grows."""
    before = audit_rows(url)
    stranger = api.request("GET", f"/fhir/Patient/{outside}").status_code
    own = api.request("GET", f"/fhir/Patient/{inside}").status_code
    grown = audit_rows(url) - before
    policy_on = "policy" not in MODES[mode]
    audit_on = "audit" not in MODES[mode]
    if own != 200:
        raise SystemExit(f"{mode}: a consented patient answers HTTP {own}")
    if stranger != (404 if policy_on else 200):
        raise SystemExit(f"{mode}: a patient without consent answers HTTP {stranger}")
    if grown != (2 if audit_on else 0):
        raise SystemExit(f"{mode}: {grown} audit records for 2 requests")


def run_wrk(base: str, token: str, paths: list[str], seconds: int, connections: int) -> dict:
    """``wrk`` over ``paths`` (picked at random per request); its figures."""
    with tempfile.TemporaryDirectory(prefix="emr_hub_wrk_") as folder:
        script, listing = Path(folder) / "paths.lua", Path(folder) / "paths.txt"
        script.write_text(WRK_SCRIPT)
        listing.write_text("\n".join(paths) + "\n")
        done = subprocess.run(
            [
                "wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s",
                "-H", f"Authorization: Bearer {token}", "-H", "Accept: application/fhir+json",
                "-s", str(script), base, "--", str(listing),
            ],
            capture_output=True, text=True, timeout=seconds + 60, check=True,
        )  # fmt: skip
    line = next(x for x in done.stdout.splitlines() if x.startswith("WRK "))
    figures = orjson.loads(line[4:])
    figures["requests_per_s"] = figures["requests"] / figures["seconds"]
    return figures


def measure_mode(
    args: argparse.Namespace,
    url: str,
    mode: str,
    patients: list[tuple[PatientCopy, str]],
    outside: str,
    rng: random.Random,
) -> dict[str, Any]:
    settings = {"EMR_HUB_BENCHMARK_WITHOUT": MODES[mode]} if MODES[mode] else {}
    with contextlib.ExitStack() as stack:
        running = start_server(args, url, stack, args.clients, settings)
        api = Api(running.base, running.executable, running.env, args.clients, READER)
        stack.callback(api.close)
        check_mode(mode, api, url, outside, patients[0][1])

        def draw(kind: str, count: int) -> list[Query]:
            picked = [rng.choice(patients) for _ in range(count)]
            if kind == READ:
                return [Query(READ, f"/fhir/Patient/{pid}", [], None) for _, pid in picked]
            return [make_query(kind, copy, pid, rng) for copy, pid in picked]

        log(f"{mode}: warm-up and query mix ...")
        run_mix(api, [q for k in args.kinds for q in draw(k, args.warmup)], args.clients)
        timed = [q for k in args.kinds for q in draw(k, args.requests)]
        rng.shuffle(timed)
        samples, seconds = run_mix(api, timed, args.clients)
        kinds = {k: summarise([s for s in samples if s.kind == k]) for k in args.kinds}
        problems = [f"{s.kind}: {s.problem}" for s in samples if s.problem]
        token = api.client.headers["Authorization"].split(" ", 1)[1]
        log(f"{mode}: wrk reads and /healthz, {args.seconds} s each ...")
        reads = run_wrk(
            running.base,
            token,
            [f"/fhir/Patient/{pid}" for _, pid in patients],
            args.seconds,
            args.connections,
        )
        healthz = run_wrk(running.base, token, ["/healthz"], args.seconds, args.connections)
    return {
        "mix_requests_per_s": len(timed) / seconds,
        "kinds": kinds,
        "problems": problems[:10],
        "problem_count": len(problems),
        "wrk_read": reads,
        "wrk_healthz": healthz,
    }


def combine(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The runs of one mode: p95s and rates averaged."""

    def mean(values: list[float]) -> float:
        return sum(values) / len(values)

    kinds = runs[0]["kinds"]
    return {
        "runs": len(runs),
        "kinds": {
            k: {
                f: mean([r["kinds"][k][f] for r in runs])
                for f in ("p50_ms", "p95_ms", "p99_ms", "mean_entries")
            }
            for k in kinds
        },
        "mix_requests_per_s": mean([r["mix_requests_per_s"] for r in runs]),
        "read_requests_per_s": mean([r["wrk_read"]["requests_per_s"] for r in runs]),
        "read_p95_ms": mean([r["wrk_read"]["p95_ms"] for r in runs]),
        "read_p99_ms": mean([r["wrk_read"]["p99_ms"] for r in runs]),
        "read_failures": sum(
            r["wrk_read"]["non_2xx"] + r["wrk_read"]["socket_errors"] for r in runs
        ),
        "healthz_requests_per_s": mean([r["wrk_healthz"]["requests_per_s"] for r in runs]),
        "problem_count": sum(r["problem_count"] for r in runs),
        "problems": [p for r in runs for p in r["problems"]][:10],
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", required=True, help="the PostgreSQL server's URL")
    parser.add_argument(
        "--reuse-db", required=True, metavar="NAME", help="a database bench/search.py loaded"
    )
    parser.add_argument("--seed", type=int, default=1, help="the seed it was loaded with")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="Synthea bundle folder")
    parser.add_argument("--workers", type=int, default=2, help="API processes (default 2)")
    parser.add_argument("--clients", type=int, default=4, help="threads of the query mix")
    parser.add_argument("--requests", type=int, default=200, help="timed requests per kind")
    parser.add_argument("--warmup", type=int, default=20, help="untimed requests per kind")
    parser.add_argument("--sample", type=int, default=1000, help="patients the reader may see")
    parser.add_argument("--seconds", type=int, default=15, help="each wrk run")
    parser.add_argument("--connections", type=int, default=16, help="wrk connections")
    parser.add_argument(
        "--kinds",
        default=",".join((READ, *KINDS)),
        help=f"comma-separated subset of {READ},{','.join(KINDS)}",
    )
    parser.add_argument("--port", type=int, default=0, help="server port (default: a free one)")
    parser.add_argument("--startup-timeout", type=float, default=120.0, help="seconds")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    args.kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    for kind in args.kinds:
        if kind not in (READ, *KINDS):
            parser.error(f"unknown kind {kind!r}")
    if database_kind(args.database_url) != "postgresql":
        parser.error("--database-url must be a PostgreSQL URL")
    if shutil.which("wrk") is None:
        parser.error("wrk is not installed (apt-get install -y wrk)")
    return args


@contextlib.contextmanager
def loaded_database(args: argparse.Namespace) -> Iterator[str]:
    with kept_database(args.database_url, args.reuse_db, must_exist=True) as url:
        state = read_state(url)
        if state is None or not state.copies:
            raise SystemExit(f"{args.reuse_db} was not loaded by bench/search.py")
        yield url


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.data.is_dir():
        print(f"the shared data is not there: no Synthea bundles in {args.data}; nothing measured")
        return 0
    generator = Generator(args.data, args.seed)
    load_before = _loadavg()
    with loaded_database(args) as url:
        state = read_state(url)
        assert state is not None
        rng = random.Random(args.seed * 11 + 5)
        with contextlib.ExitStack() as stack:
            running = start_server(args, url, stack, args.clients)
            ensure_reader(running)
            patients = sample_patients(
                running.api, generator, state, rng, args.sample, {}, args.clients
            )
            log(f"recording {len(patients)} Consents for {READER} ...")
            reader = Api(running.base, running.executable, running.env, args.clients, READER)
            stack.callback(reader.close)
            record_consents(reader, patients, args.clients)
        outside = outsider(url)
        order = [*MODES, *reversed(MODES)]
        runs: dict[str, list[dict[str, Any]]] = {mode: [] for mode in MODES}
        for mode in order:
            runs[mode].append(measure_mode(args, url, mode, patients, outside, rng))
    figures = {
        "code": _code_version(),
        "machine": machine(),
        "database": args.reuse_db,
        "resources": state.resources,
        "patients": state.copies - len(state.failed),
        "sample_patients": len(patients),
        "workers": args.workers,
        "clients": args.clients,
        "connections": args.connections,
        "order": order,
        "modes": {mode: combine(r) for mode, r in runs.items()},
        "loadavg_1min": {"before": load_before, "after": _loadavg()},
    }
    if args.json:
        print(orjson.dumps(figures, option=orjson.OPT_INDENT_2).decode())
    else:
        print_figures(figures)
    return 0


def print_figures(f: dict[str, Any]) -> None:
    modes = f["modes"]
    print(machine_line(f))
    print(
        f"database {f['database']}: {f['resources']} generated resources, {f['patients']} "
        f"patients; the reader consented by {f['sample_patients']}; order {' '.join(f['order'])}"
    )
    print(f"{'':36}" + "".join(f"{mode:>12}" for mode in modes) + f"{'on/off':>10}")

    def row(label: str, values: list[float], ratio: bool = True) -> None:
        tail = f"{values[0] / values[-1]:>10.2f}" if ratio and values[-1] else ""
        print(f"{label:36}" + "".join(f"{v:>12.1f}" for v in values) + tail)

    row("wrk GET Patient/{id} req/s", [v["read_requests_per_s"] for v in modes.values()])
    row("wrk GET Patient/{id} p95 ms", [v["read_p95_ms"] for v in modes.values()])
    row("wrk GET Patient/{id} p99 ms", [v["read_p99_ms"] for v in modes.values()])
    row("wrk /healthz req/s", [v["healthz_requests_per_s"] for v in modes.values()])
    row("query mix req/s", [v["mix_requests_per_s"] for v in modes.values()])
    for kind in next(iter(modes.values()))["kinds"]:
        row(f"{kind} p95 ms", [v["kinds"][kind]["p95_ms"] for v in modes.values()])
    for mode, v in modes.items():
        if v["problem_count"] or v["read_failures"]:
            print(
                f"{mode}: {v['problem_count']} unexpected answers, {v['read_failures']} "
                f"failed wrk reads: {v['problems'][:3]}"
            )


if __name__ == "__main__":
    sys.exit(main())
