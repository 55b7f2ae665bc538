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
import base64
import contextlib
import random
import subprocess
import sys
import tempfile
import time
import uuid
import zlib
from dataclasses import dataclass
from datetime import UTC, datetime
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
from bench.load import _stop_group
from bench.search import (
    Api,
    Query,
    Running,
    Sample,
    _connect,
    kept_database,
    machine,
    machine_line,
    percentile,
    read_state,
    run_mix,
    sample_patients,
    start_server,
    summarise,
)

SUMMARY = "summary"
CARD = "health-card"
HEALTHZ = "healthz"
SECTIONS = 11
CARD_PARAMETERS = {
    "resourceType": "Parameters",
    "parameter": [{"name": "credentialType", "valueUri": "https://smarthealth.cards#health-card"}],
}
PUSH = "wallet-push"
RECEIVER = Path(__file__).resolve().parent.parent / "scripts" / "wallet_receiver.py"
MARKER_SYSTEM = "urn:ietf:rfc:3986"


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


# ----------------------------------------------------------------- wallet push lag
class Wallet:
    """``scripts/wallet_receiver.py`` as a process of its own on a free port, trusting the
    issuer ``issuer`` (the server's base URL); stopped with :meth:`stop`."""

    def __init__(self, issuer: str, folder: Path) -> None:
        port = free_port()
        self.url = f"http://127.0.0.1:{port}/intake"
        self.log_path = folder / "wallet.log"
        with self.log_path.open("wb") as output:
            self.process = subprocess.Popen(
                [sys.executable, str(RECEIVER), "--port", str(port), "--trust", issuer],
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60)

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.process.poll() is None and time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if self.client.get("/received").status_code == 200:
                    return
            time.sleep(0.1)  # polling the receiver's port with a deadline
        raise SystemExit(f"the wallet receiver did not start:\n{self.log_path.read_text()}")

    def received(self) -> dict[str, Any]:
        response = self.client.get("/received")
        response.raise_for_status()
        return dict(response.json())

    def stop(self) -> None:
        self.client.close()
        _stop_group(self.process)


def worker_log(running: Running) -> Path:
    return Path(running.env["EMR_HUB_DATA_DIR"]).parent / "worker.log"


def start_worker(running: Running, stack: contextlib.ExitStack) -> subprocess.Popen[bytes]:
    """``emr-hub worker --beat`` with the server's settings (so its broker), as load.py runs it."""
    with worker_log(running).open("wb") as output:
        worker = subprocess.Popen(
            [running.executable, "worker", "--beat", "--concurrency", "2"],
            env=running.env,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    stack.callback(_stop_group, worker)
    return worker


@dataclass
class Write:
    cccd: str
    marker: str  # the Observation's identifier, looked for in the pushed cards
    answered: float  # wall clock (the receiver's received_at is one too, same machine)
    seconds: float
    status: int


def vital_signs(patient_id: str, marker: str, beats: int) -> bytes:
    """A heart-rate Observation of now, identified by ``marker``."""
    now = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    category = "http://terminology.hl7.org/CodeSystem/observation-category"
    observation = {
        "resourceType": "Observation",
        "identifier": [{"system": MARKER_SYSTEM, "value": marker}],
        "status": "final",
        "category": [{"coding": [{"system": category, "code": "vital-signs"}]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
        "subject": {"reference": f"Patient/{patient_id}"},
        "effectiveDateTime": now,
        "valueQuantity": {
            "value": beats,
            "unit": "/min",
            "system": "http://unitsofmeasure.org",
            "code": "/min",
        },
    }
    return orjson.dumps(observation)


def post_writes(
    api: Api, patients: list[tuple[PatientCopy, str]], rate: float, seconds: float
) -> list[Write]:
    """One write every ``1 / rate`` s for ``seconds``, each for the next sampled patient."""
    count = max(1, round(rate * seconds))
    if count > len(patients):
        log(f"{count} writes over {len(patients)} patients: some are written twice")
    writes = []
    started = time.monotonic()
    for index in range(count):
        wait = started + index / rate - time.monotonic()
        if wait > 0:
            time.sleep(wait)  # the fixed arrival rate, not a synchronisation
        copy, patient_id = patients[index % len(patients)]
        marker = f"urn:uuid:{uuid.uuid4()}"
        body = vital_signs(patient_id, marker, 60 + index % 40)
        sent = time.perf_counter()
        try:
            response = api.request("POST", "/fhir/Observation", content=body)
            status, problem = response.status_code, _diagnostics(response)[:200]
        except httpx.HTTPError as exc:
            status, problem = 0, type(exc).__name__
        if status != 201 and not any(w.status != 201 for w in writes):
            log(f"a write failed, the first: HTTP {status}: {problem}")
        writes.append(Write(copy.cccd, marker, time.time(), time.perf_counter() - sent, status))
    return writes


def card_payloads(push: dict[str, Any]) -> bytes:
    """The pushed cards' payloads (raw DEFLATE, as the receiver checked them), joined."""
    payloads = []
    for jws in push.get("credentials") or []:
        part = str(jws).split(".")[1]
        payloads.append(
            zlib.decompress(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)), -15)
        )
    return b"\n".join(payloads)


@dataclass
class Matched:
    lags: list[float]  # seconds, one per write a push carried
    missing: int  # writes (answered 201) no push has carried yet
    stale: int  # pushes after a write, for her CCCD, that did not carry it
    earlier: int  # pushes for a written CCCD before her first write (owed before this run)
    after: int  # pushes for a written CCCD after the one carrying her last write
    other: int  # pushes for CCCDs this run did not write


def match_pushes(
    writes: list[Write], accepted: list[dict[str, Any]], payloads: dict[str, bytes]
) -> Matched:
    """Each stored write to the first push for her CCCD whose cards carry its identifier."""
    by_cccd: dict[str, list[dict[str, Any]]] = {}
    for push in accepted:
        by_cccd.setdefault(push["cccd"], []).append(push)
    for pushes in by_cccd.values():
        pushes.sort(key=lambda p: p["received_at"])
    lags, missing, stale = [], 0, set()
    accounted: set[str] = set()
    for write in writes:
        if write.status != 201:
            continue
        later = [p for p in by_cccd.get(write.cccd, []) if p["received_at"] >= write.answered]
        carrier = next((p for p in later if write.marker.encode() in payloads[p["key"]]), None)
        if carrier is None:
            missing += 1
            continue
        lags.append(carrier["received_at"] - write.answered)
        accounted.add(carrier["key"])
        stale.update(p["key"] for p in later if p["received_at"] < carrier["received_at"])
    first_write: dict[str, float] = {}
    for write in writes:
        first_write.setdefault(write.cccd, write.answered)
    earlier = after = other = 0
    for cccd, pushes in by_cccd.items():
        for push in pushes:
            if cccd not in first_write:
                other += 1
            elif push["key"] not in accounted | stale:
                if push["received_at"] < first_write[cccd]:
                    earlier += 1
                else:
                    after += 1
    return Matched(lags, missing, len(stale - accounted), earlier, after, other)


def owed_pushes(url: str) -> int:
    """Pushes the database still owes (or has sent without recording the answer yet)."""
    with _connect(url) as conn:
        return int(
            conn.execute("SELECT count(*) FROM wallet_push WHERE outcome IS NULL").fetchone()[0]
        )


def measure_push_lag(
    url: str,
    running: Running,
    wallet: Wallet,
    patients: list[tuple[PatientCopy, str]],
    args: argparse.Namespace,
) -> dict[str, Any]:
    log(f"wallet push: {args.push_rate:g} writes/s for {args.push_seconds:g} s ...")
    started = time.monotonic()
    writes = post_writes(running.api, patients, args.push_rate, args.push_seconds)
    elapsed = time.monotonic() - started
    if any(w.status >= 500 for w in writes):
        log(f"server log:\n{running.server.log_tail()}")
    log(f"waiting (at most {args.push_drain_seconds:g} s) for the pushes of {len(writes)} writes")
    payloads: dict[str, bytes] = {}
    deadline = time.monotonic() + args.push_drain_seconds
    while True:
        received = wallet.received()
        for push in received["accepted"]:
            if push["key"] not in payloads:
                payloads[push["key"]] = card_payloads(push)
        matched = match_pushes(writes, received["accepted"], payloads)
        if not matched.missing or time.monotonic() >= deadline:
            break
        time.sleep(1.0)  # polling the receiver with a deadline
    # the worker is stopped after this: first let it record the answers it got
    settle = max(deadline, time.monotonic() + 30)
    while (owed := owed_pushes(url)) and time.monotonic() < settle:
        time.sleep(1.0)  # polling the database with a deadline
    lags = sorted(matched.lags)
    answered = sorted(w.seconds * 1000 for w in writes)
    figures: dict[str, Any] = {
        "rate": args.push_rate,
        "seconds": args.push_seconds,
        "writes_per_s": len(writes) / elapsed,
        "debounce_s": args.wallet_debounce,
        "relay": f"celery worker, {args.broker}" if args.broker else "embedded relay thread",
        "writes": len(writes),
        "write_errors": sum(1 for w in writes if w.status != 201),
        "write_p50_ms": percentile(answered, 0.50),
        "write_p95_ms": percentile(answered, 0.95),
        "pushes_received": len(received["accepted"]),
        "pushed_writes": len(lags),
        "repeats": len(received["repeats"]),
        "refusals": len(received["refused"]),
        "refusal_reasons": sorted({r["reason"] for r in received["refused"]}),
        "stale": matched.stale,
        "earlier": matched.earlier,
        "after": matched.after,
        "other": matched.other,
        "missing": matched.missing,
        "owed_at_end": owed,
    }
    if lags:
        figures |= {
            "lag_p50_s": percentile(lags, 0.50),
            "lag_p95_s": percentile(lags, 0.95),
            "lag_p99_s": percentile(lags, 0.99),
            "lag_max_s": lags[-1],
        }
    return figures


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
