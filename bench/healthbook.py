"""The health book under load: ``$summary`` and ``$health-cards-issue`` latency at the size
of a database ``bench/search.py`` has loaded (1,000,000 resources is the aim's size).

Runs ``emr-hub serve`` on that database and asks, from ``--clients`` threads, for the summary
of patients drawn from the loaded ones, each request made **by the citizen herself** (a
citizen token for her CCCD, so the access policy and the audit are on as deployed), then
issues her health card the same way. Every answer is checked, not only timed: a ``document``
Bundle whose Composition has the eleven sections and whose first entry after it is her
Patient; a card answer holding a verifiable credential. ``/healthz`` is measured in the same
run as the floor. Prints p50/p95/p99 per kind, requests/s, errors.

Then the **wallet push lag** at a steady write load. The server runs with
``EMR_HUB_WALLET_URL`` pointing at ``scripts/wallet_receiver.py`` (a real intake, its own
process on a free port, trusting the server's base URL) and ``EMR_HUB_WALLET_DEBOUNCE_SECONDS``
(``--wallet-debounce``, default 10); with ``--broker`` (default ``redis://127.0.0.1:6379/8``;
``--broker ''`` for the API's embedded relay) server and an ``emr-hub worker --beat`` share
that Redis broker, so pushes go through the worker as deployed. At ``--push-rate`` writes/s
(default 1) for ``--push-seconds`` (default 60; 0 skips this part), the ``bench`` hospital,
which owns the loaded patients, posts a heart-rate Observation for the next sampled patient
(each write another patient while the sample lasts), carrying a fresh ``urn:uuid`` identifier.
A write's lag runs from its answer to the ``received_at`` of the first push for her CCCD whose
cards carry that identifier (so the debounce, the summary, the signing and the delivery are
all in it). After the writes it waits at most ``--push-drain-seconds`` (default 180) for the
stragglers, then prints lag p50/p95/p99/max, the writes, the pushes received, the receiver's
repeats and refusals, pushes that arrived after a write without it (``stale``), pushes for a
written CCCD before her first write (``earlier``: owed before this run) or after the one
carrying her last write (``after``), pushes for CCCDs not written (``other``), writes never
pushed (``missing``) and the pushes the database still owes when the worker is stopped (it
waits for the worker to record its answers first). It exits 1 when a write failed, a push was
refused or a write was never pushed.

Usage (see bench/README.md)::

    .venv/bin/python bench/healthbook.py --database-url postgresql://postgres@127.0.0.1:5432/test \\
        --reuse-db emr_hub_bench_1m
"""

from __future__ import annotations

import argparse
import contextlib
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
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
    free_port,
    log,
)
from bench.load import start_worker, worker_log
from bench.search import (
    Query,
    Sample,
    kept_database,
    machine,
    machine_line,
    read_state,
    run_mix,
    sample_patients,
    start_server,
    summarise,
)
from bench.wallet_lag import PUSH, Wallet, measure_push_lag

SUMMARY = "summary"
CARD = "health-card"
HEALTHZ = "healthz"
SECTIONS = 11
CARD_PARAMETERS = {
    "resourceType": "Parameters",
    "parameter": [{"name": "credentialType", "valueUri": "https://smarthealth.cards#health-card"}],
}


class CitizenApi:
    """Requests made as each sampled citizen: her own token, made once, from the server's
    settings (the same database and key-encryption key, so the server accepts it)."""

    def __init__(self, running: Any, patients: list[tuple[PatientCopy, str]], clients: int):
        from emr_hub.config import Settings
        from emr_hub.fhir.persons import person_of_cccd
        from emr_hub.hub import Hub
        from emr_hub.security.scopes import ScopeSet
        from emr_hub.security.tokens import CITIZEN_SCOPE, issue_citizen_token

        settings = Settings(
            database_url=running.env["EMR_HUB_DATABASE_URL"],
            data_dir=running.env["EMR_HUB_DATA_DIR"],
            base_url=running.base,
            key_encryption_key=running.env["EMR_HUB_KEY_ENCRYPTION_KEY"],
        )
        hub = Hub.from_settings(settings)
        try:
            scopes = ScopeSet.parse(CITIZEN_SCOPE)
            self.tokens = {
                patient_id: issue_citizen_token(hub, person_of_cccd(copy.cccd), scopes)[0]
                for copy, patient_id in patients
            }
        finally:
            hub.close()
        limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
        self.client = httpx.Client(base_url=running.base, limits=limits, timeout=60)

    def close(self) -> None:
        self.client.close()


def check_summary(body: dict[str, Any], patient_id: str) -> str | None:
    entries = body.get("entry") or []
    if body.get("type") != "document" or len(entries) < 2:
        return "not a document Bundle"
    composition = entries[0]["resource"]
    if composition.get("resourceType") != "Composition":
        return "the first entry is not the Composition"
    if len(composition.get("section") or []) != SECTIONS:
        return f"{len(composition.get('section') or [])} sections, expected {SECTIONS}"
    patient = entries[1]["resource"]
    if (patient.get("resourceType"), patient.get("id")) != ("Patient", patient_id):
        return "the second entry is not her Patient"
    return None


def check_card(body: dict[str, Any]) -> str | None:
    values = [
        p.get("valueString")
        for p in body.get("parameter") or []
        if p.get("name") == "verifiableCredential"
    ]
    if not values or not all(isinstance(v, str) and v.count(".") == 2 for v in values):
        return "no verifiableCredential JWS in the answer"
    return None


def run_one(citizens: CitizenApi, query: Query) -> Sample:
    patient_id = query.params[0][1] if query.params else ""
    headers = {"Authorization": f"Bearer {citizens.tokens.get(patient_id, '')}"}
    started = time.perf_counter()
    try:
        if query.kind == HEALTHZ:
            response = citizens.client.get(query.path)
        elif query.kind == CARD:
            headers["Content-Type"] = "application/fhir+json"
            response = citizens.client.post(
                query.path, content=orjson.dumps(CARD_PARAMETERS), headers=headers
            )
        else:
            response = citizens.client.get(query.path, headers=headers)
        body = response.content
    except httpx.HTTPError as exc:
        return Sample(query.kind, time.perf_counter() - started, 0, type(exc).__name__, query)
    seconds = time.perf_counter() - started
    if response.status_code != 200:
        problem = f"HTTP {response.status_code}: {_diagnostics(response)[:200]}"
        return Sample(query.kind, seconds, response.status_code, problem, query)
    if query.kind == HEALTHZ:
        return Sample(query.kind, seconds, 200, None, query)
    parsed = orjson.loads(body)
    problem = check_summary(parsed, patient_id) if query.kind == SUMMARY else check_card(parsed)
    entries = len(parsed.get("entry") or [])
    return Sample(query.kind, seconds, 200, problem, query, entries)


def queries_for(kind: str, patients: list[tuple[PatientCopy, str]], count: int) -> list[Query]:
    out = []
    for index in range(count):
        _, patient_id = patients[index % len(patients)]
        if kind == HEALTHZ:
            out.append(Query(kind, "/healthz", [], None))
        elif kind == CARD:
            path = f"/fhir/Patient/{patient_id}/$health-cards-issue"
            out.append(Query(kind, path, [("patient", patient_id)], None))
        else:
            path = f"/fhir/Patient/{patient_id}/$summary"
            out.append(Query(kind, path, [("patient", patient_id)], None))
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", required=True, help="the PostgreSQL server's URL")
    parser.add_argument(
        "--reuse-db", required=True, metavar="NAME", help="a database bench/search.py loaded"
    )
    parser.add_argument("--seed", type=int, default=1, help="the seed it was loaded with")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="Synthea bundle folder")
    parser.add_argument("--workers", type=int, default=2, help="API processes (default 2)")
    parser.add_argument("--clients", type=int, default=4, help="threads asking at once")
    parser.add_argument("--requests", type=int, default=200, help="timed requests per kind")
    parser.add_argument("--warmup", type=int, default=20, help="untimed requests per kind")
    parser.add_argument("--sample", type=int, default=200, help="patients asked about")
    parser.add_argument("--port", type=int, default=0, help="server port (default: a free one)")
    parser.add_argument("--startup-timeout", type=float, default=120.0, help="seconds")
    parser.add_argument("--push-rate", type=float, default=1.0, help="wallet push: writes/s")
    parser.add_argument(
        "--push-seconds", type=float, default=60.0, help="wallet push: seconds of writes (0: none)"
    )
    parser.add_argument(
        "--push-drain-seconds", type=float, default=180.0, help="wallet push: wait for stragglers"
    )
    parser.add_argument(
        "--wallet-debounce", type=float, default=10.0, help="EMR_HUB_WALLET_DEBOUNCE_SECONDS"
    )
    parser.add_argument(
        "--broker",
        default="redis://127.0.0.1:6379/8",
        help="Celery broker of the server and the worker ('': the API's embedded relay)",
    )
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    if args.push_seconds > 0 and args.push_rate <= 0:
        parser.error("--push-rate must be positive")
    if database_kind(args.database_url) != "postgresql":
        parser.error("--database-url must be a PostgreSQL URL")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.data.is_dir():
        print(f"the shared data is not there: no Synthea bundles in {args.data}; nothing measured")
        return 0
    generator = Generator(args.data, args.seed)
    load_before = _loadavg()
    with kept_database(args.database_url, args.reuse_db, must_exist=True) as url:
        state = read_state(url)
        if state is None or not state.copies:
            raise SystemExit(f"{args.reuse_db} was not loaded by bench/search.py")
        with contextlib.ExitStack() as stack:
            wallet, settings = None, {}
            if args.push_seconds > 0:
                args.port = args.port or free_port()  # the receiver trusts the server's URL
                folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="wallet_")))
                wallet = Wallet(f"http://127.0.0.1:{args.port}", folder)
                stack.callback(wallet.stop)
                wallet.wait_ready(args.startup_timeout)
                settings = {
                    "EMR_HUB_WALLET_URL": wallet.url,
                    "EMR_HUB_WALLET_DEBOUNCE_SECONDS": f"{args.wallet_debounce:g}",
                }
                if args.broker:
                    settings["EMR_HUB_BROKER_URL"] = args.broker
            running = start_server(args, url, stack, args.clients, settings)
            worker = start_worker(running, stack) if wallet and args.broker else None
            rng = random.Random(args.seed * 13 + 7)
            patients = sample_patients(
                running.api, generator, state, rng, args.sample, {}, args.clients
            )
            citizens = CitizenApi(running, patients, args.clients)
            stack.callback(citizens.close)
            kinds: dict[str, dict[str, Any]] = {}
            for kind in (HEALTHZ, SUMMARY, CARD):
                probe = run_one(citizens, queries_for(kind, patients, 1)[0])
                if probe.status != 200:
                    log(f"{kind} is not measured: {probe.problem}")
                    kinds[kind] = {"requests": 0, "not_measured": probe.problem}
                    continue
                run_mix(citizens, queries_for(kind, patients, args.warmup), args.clients, run_one)
                timed = queries_for(kind, patients, args.requests)
                rng.shuffle(timed)
                samples, seconds = run_mix(citizens, timed, args.clients, run_one)
                kinds[kind] = summarise(samples) | {"requests_per_s": len(samples) / seconds}
                problems = [s.problem for s in samples if s.problem]
                if problems:
                    log(f"{kind}: {len(problems)} wrong answers, the first: {problems[0]}")
            push = None
            if wallet is not None:
                if worker is not None and worker.poll() is not None:
                    tail = worker_log(running).read_text()[-4000:]
                    raise SystemExit(f"the worker exited ({worker.returncode}):\n{tail}")
                push = measure_push_lag(url, running, wallet, patients, args)
    figures = {
        "code": _code_version(),
        "machine": machine(),
        "database": args.reuse_db,
        "resources": state.resources,
        "patients": state.copies - len(state.failed),
        "sample_patients": len(patients),
        "workers": args.workers,
        "clients": args.clients,
        "kinds": kinds,
        "wallet_push": push,
        "loadavg_1min": {"before": load_before, "after": _loadavg()},
    }
    if args.json:
        print(orjson.dumps(figures, option=orjson.OPT_INDENT_2).decode())
    else:
        print_figures(figures)
    lost = push and (push["write_errors"] or push["missing"] or push["refusals"])
    return 1 if lost else 0


def print_figures(f: dict[str, Any]) -> None:
    print(machine_line(f))
    print(
        f"database {f['database']}: {f['resources']} generated resources, {f['patients']} "
        f"patients; {f['sample_patients']} asked about, each by herself; {f['clients']} clients"
    )
    print(f"{'kind':14}{'req/s':>9}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}{'errors':>8}"
          f"{'wrong':>7}{'entries':>9}")  # fmt: skip
    for kind, k in f["kinds"].items():
        if not k.get("requests"):
            print(f"{kind:14} not measured: {k.get('not_measured')}")
            continue
        print(
            f"{kind:14}{k['requests_per_s']:>9.1f}{k['p50_ms']:>9.1f}{k['p95_ms']:>9.1f}"
            f"{k['p99_ms']:>9.1f}{k['errors']:>8}{k['unexpected']:>7}{k['mean_entries']:>9.0f}"
        )
    p = f["wallet_push"]
    if not p:
        return
    if "lag_p50_s" in p:
        print(
            f"{PUSH:14}{p['writes_per_s']:>9.1f}{p['lag_p50_s'] * 1000:>9.0f}"
            f"{p['lag_p95_s'] * 1000:>9.0f}{p['lag_p99_s'] * 1000:>9.0f}"
            f"{p['write_errors'] + p['refusals']:>8}{p['missing'] + p['stale']:>7}"
        )
    else:
        print(f"{PUSH:14} no write was pushed")
    print(
        f"{PUSH}: write answered -> received by the wallet, {p['debounce_s']:g} s debounce, "
        f"{p['relay']}: {p['writes']} writes at {p['rate']:g}/s for {p['seconds']:g} s "
        f"(answered p50 {p['write_p50_ms']:.0f} ms, p95 {p['write_p95_ms']:.0f} ms, "
        f"{p['write_errors']} failed); lag max {p.get('lag_max_s', 0):.1f} s; "
        f"{p['pushes_received']} pushes received, {p['pushed_writes']} carrying a write, "
        f"{p['repeats']} repeats, {p['refusals']} refusals, {p['stale']} stale, "
        f"{p['earlier']} before her write, {p['after']} after it, {p['other']} for other "
        f"CCCDs; {p['missing']} writes missing, {p['owed_at_end']} pushes owed at the end"
    )
    for reason in p["refusal_reasons"]:
        print(f"  refused: {reason}")


if __name__ == "__main__":
    sys.exit(main())
