"""Load and soak: a region's mix of requests at a fixed arrival rate, with notifications
flowing through a real Celery worker on Redis; latency per kind, errors, and whether the
server's memory, its database connections and the outbox lag stay flat.

Runs on a database ``bench/search.py`` has loaded (``--reuse-db NAME``). It starts
``emr-hub serve`` (``--workers``) and ``emr-hub worker --beat`` with ``EMR_HUB_BROKER_URL``
(``--broker``, a Redis database), a notification receiver in this process, and a Subscription
of the ``bench`` hospital to its new Encounters. Then, open loop (each request is sent at its
scheduled time whether or not the earlier ones have been answered, and its latency counts
from that time, so a stalled server cannot hide its stall), ``--rate`` requests per second for
``--seconds``, drawn with these weights:

==============================  ======  =====================================================
kind                            weight  request
==============================  ======  =====================================================
``visit``                       10      ``POST /fhir`` a visit's transaction Bundle: an
                                        Encounter, 8 vital-sign Observations and a Condition
                                        of a loaded patient
``read-patient``                30      ``GET Patient/{id}``
``patient-by-cccd``             15      ``GET Patient?identifier=<cccd system>|<cccd>``
``obs-patient-code-date``       15      ``GET Observation?patient=&code=&date=ge&date=lt``
``encounter-by-patient-sorted`` 10      ``GET Encounter?patient=&_sort=-date&_count=20``
``everything``                  10      ``GET Patient/{id}/$everything?_count=200``
``referral-history``            10      ``GET Patient/{id}/$referral-history``
==============================  ======  =====================================================

Every ``--sample-seconds`` it samples the resident memory of the server's and the worker's
processes, the database's connections (``pg_stat_activity``) and the outbox (messages owed,
age of the oldest). After the run it waits (at most ``--drain-seconds``) for every Encounter
posted to have been notified, and prints the notification lag (the visit's answer to the
receiver's arrival) and any notification missing or received twice.

The region's peak is tens of requests per second (``../shared/docs/domain.md``); the default
rate, 200/s, is the peak with headroom. The script asserts nothing about timing; it exits 1 if
a request failed or a notification was lost or duplicated.

Usage (see bench/README.md)::

    .venv/bin/python bench/load.py --database-url postgresql://postgres@127.0.0.1:5432/test \\
        --reuse-db emr_hub_bench_read --rate 200 --seconds 600
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import httpx
import orjson

if __package__ in (None, ""):  # run as a script: make ``bench`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.access import loaded_database
from bench.generate import Generator
from bench.ingest import DEFAULT_DATA, _code_version, _loadavg, database_kind, log
from bench.search import (
    Running,
    _connect,
    machine,
    machine_line,
    make_query,
    percentile,
    read_state,
    sample_patients,
    start_server,
)

WEIGHTS = {
    "visit": 10,
    "read-patient": 30,
    "patient-by-cccd": 15,
    "obs-patient-code-date": 15,
    "encounter-by-patient-sorted": 10,
    "everything": 10,
    "referral-history": 10,
}
SUBSCRIPTION_REASON = "bench/load.py: the visits' Encounters"
PERCENTILES = ("p50_ms", "p95_ms", "p99_ms")
VITALS = (
    ("8867-4", "Heart rate", 72, "/min"),
    ("9279-1", "Respiratory rate", 16, "/min"),
    ("8310-5", "Body temperature", 36.8, "Cel"),
    ("8480-6", "Systolic blood pressure", 120, "mm[Hg]"),
    ("8462-4", "Diastolic blood pressure", 80, "mm[Hg]"),
    ("29463-7", "Body weight", 62, "kg"),
    ("8302-2", "Body height", 162, "cm"),
    ("2708-6", "Oxygen saturation", 98, "%"),
)


# ------------------------------------------------------------------------- receiver
class Receiver:
    """The bench hospital's endpoint: records each notification's focus, key and arrival."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.arrivals: dict[str, float] = {}  # focus -> first arrival (monotonic)
        self.repeats = 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            keys: ClassVar[set[str]] = set()

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                # <type>/<id>/_history/<version>: the visit posted version 1 of its Encounter
                focus = "/".join(self.headers.get("X-Emr-Hub-Focus", "").split("/")[:2])
                key = self.headers.get("Idempotency-Key", "")
                with receiver.lock:
                    if key in self.keys:
                        receiver.repeats += 1
                    else:
                        self.keys.add(key)
                        receiver.arrivals.setdefault(focus, time.monotonic())
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_PUT = do_POST

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/notify"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()


# --------------------------------------------------------------------------- requests
def visit_bundle(patient_id: str, rng: random.Random) -> bytes:
    """A visit's transaction: an Encounter, its vital signs and a diagnosis."""
    now = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    encounter = f"urn:uuid:{uuid.uuid4()}"
    subject = {"reference": f"Patient/{patient_id}"}

    def entry(url: str, resource: dict[str, Any]) -> dict[str, Any]:
        request = {"method": "POST", "url": resource["resourceType"]}
        return {"fullUrl": url, "resource": resource, "request": request}

    entries = [
        entry(
            encounter,
            {
                "resourceType": "Encounter",
                "status": "finished",
                "class": {
                    "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                    "code": "AMB",
                },
                "subject": subject,
                "period": {"start": now, "end": now},
            },
        ),
    ]
    for code, display, value, unit in VITALS:
        entries.append(
            entry(
                f"urn:uuid:{uuid.uuid4()}",
                {
                    "resourceType": "Observation",
                    "status": "final",
                    "category": [
                        {
                            "coding": [
                                {
                                    "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                    "code": "vital-signs",
                                }
                            ]
                        }
                    ],
                    "code": {
                        "coding": [{"system": "http://loinc.org", "code": code, "display": display}]
                    },
                    "subject": subject,
                    "encounter": {"reference": encounter},
                    "effectiveDateTime": now,
                    "valueQuantity": {
                        "value": round(value * rng.uniform(0.9, 1.1), 1),
                        "unit": unit,
                        "system": "http://unitsofmeasure.org",
                        "code": unit,
                    },
                },
            )
        )
    entries.append(
        entry(
            f"urn:uuid:{uuid.uuid4()}",
            {
                "resourceType": "Condition",
                "clinicalStatus": {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                            "code": "active",
                        }
                    ]
                },
                "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10", "code": "J06.9"}]},
                "subject": subject,
                "encounter": {"reference": encounter},
            },
        )
    )
    return orjson.dumps({"resourceType": "Bundle", "type": "transaction", "entry": entries})


@dataclass
class Outcome:
    kind: str
    latency: float
    status: int
    problem: str | None = None


@dataclass
class Run:
    outcomes: list[Outcome] = field(default_factory=list)
    posted: dict[str, float] = field(default_factory=dict)  # Encounter -> answer (monotonic)
    late_starts: int = 0  # requests the generator itself sent more than 10 ms late


async def one(
    client: httpx.AsyncClient,
    kind: str,
    patient: tuple[Any, str],
    rng: random.Random,
    due: float,
    run: Run,
) -> None:
    copy, patient_id = patient
    problem = None
    status = 0
    try:
        if kind == "visit":
            response = await client.post("/fhir", content=visit_bundle(patient_id, rng))
            status = response.status_code
            if status == 200:
                now = time.monotonic()
                for item in response.json().get("entry", []):
                    location = (item.get("response") or {}).get("location", "")
                    if location.startswith("Encounter/"):
                        run.posted["/".join(location.split("/")[:2])] = now
        elif kind == "read-patient":
            status = (await client.get(f"/fhir/Patient/{patient_id}")).status_code
        elif kind == "referral-history":
            path = f"/fhir/Patient/{patient_id}/$referral-history"
            status = (await client.get(path)).status_code
        else:
            query = make_query(kind, copy, patient_id, rng)
            status = (await client.get(query.path, params=query.params)).status_code
    except httpx.HTTPError as exc:
        problem = type(exc).__name__
    if status != 200 and problem is None:
        problem = f"HTTP {status}"
    run.outcomes.append(Outcome(kind, time.monotonic() - due, status, problem))


async def drive(
    base: str, token: str, patients: list[tuple[Any, str]], args: argparse.Namespace
) -> Run:
    """Open loop: request i is sent at start + i / rate."""
    rng = random.Random(args.seed)
    kinds, weights = list(WEIGHTS), list(WEIGHTS.values())
    run = Run()
    limits = httpx.Limits(
        max_connections=args.connections, max_keepalive_connections=args.connections
    )
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/fhir+json"}
    async with httpx.AsyncClient(
        base_url=base, headers=headers, limits=limits, timeout=30.0
    ) as client:
        tasks: set[asyncio.Task[None]] = set()
        start = time.monotonic()
        total = int(args.rate * args.seconds)
        for i in range(total):
            due = start + i / args.rate
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            elif delay < -0.01:
                run.late_starts += 1
            kind = rng.choices(kinds, weights)[0]
            task = asyncio.create_task(one(client, kind, rng.choice(patients), rng, due, run))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        await asyncio.gather(*tasks)
    return run


# --------------------------------------------------------------------------- samples
def group_rss_mib(pgid: int) -> float:
    """Resident memory of every process of a process group (Linux /proc)."""
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as handle:
                stat = handle.read()
            if int(stat[stat.rfind(b")") + 2 :].split()[2]) != pgid:
                continue
            with open(f"/proc/{entry}/status") as handle:
                for line in handle:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except (OSError, ValueError, IndexError):
            continue
    return total / 1024


def outbox_state(url: str) -> tuple[int, float]:
    """Messages owed, and the age in seconds of the oldest of them."""
    with _connect(url) as conn:
        owed, oldest = conn.execute(
            "SELECT count(*), coalesce(extract(epoch FROM now() - min(created_at)), 0) "
            "FROM outbox_message WHERE delivered_at IS NULL AND failed_at IS NULL"
        ).fetchone()
    return int(owed), float(oldest)


def connections(url: str) -> int:
    with _connect(url) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
        ).fetchone()
    return int(row[0]) - 1  # not this one


class Sampler:
    def __init__(self, url: str, server_pgid: int, worker_pgid: int, every: float) -> None:
        self.samples: list[dict[str, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(url, server_pgid, worker_pgid, every), daemon=True
        )
        self._thread.start()

    def _run(self, url: str, server: int, worker: int, every: float) -> None:
        started = time.monotonic()
        while not self._stop.wait(0 if not self.samples else every):
            owed, oldest = outbox_state(url)
            self.samples.append(
                {
                    "t": round(time.monotonic() - started, 1),
                    "server_rss_mib": round(group_rss_mib(server), 1),
                    "worker_rss_mib": round(group_rss_mib(worker), 1),
                    "db_connections": connections(url),
                    "outbox_owed": owed,
                    "outbox_oldest_s": round(oldest, 2),
                }
            )

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


# ------------------------------------------------------------------------------ main
def subscribe(client: httpx.Client, endpoint: str) -> str:
    """The bench hospital's Subscription to its finished Encounters (those of earlier runs,
    whose receivers are gone, are deleted first: they would pile notifications up)."""
    found = client.get("/fhir/Subscription", params={"_count": "200"})
    for entry in found.json().get("entry", []) if found.status_code == 200 else []:
        if entry["resource"].get("reason") == SUBSCRIPTION_REASON:
            client.delete(f"/fhir/Subscription/{entry['resource']['id']}")
    response = client.post(
        "/fhir/Subscription",
        content=orjson.dumps(
            {
                "resourceType": "Subscription",
                "status": "requested",
                "reason": SUBSCRIPTION_REASON,
                "criteria": "Encounter?status=finished",
                "channel": {"type": "rest-hook", "endpoint": endpoint},
            }
        ),
        headers={"Content-Type": "application/fhir+json"},
    )
    if response.status_code != 201:
        raise SystemExit(f"the Subscription was refused: {response.status_code} {response.text}")
    return str(response.json()["id"])


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", required=True, help="the PostgreSQL server's URL")
    parser.add_argument("--reuse-db", required=True, metavar="NAME", help="loaded by search.py")
    parser.add_argument("--broker", default="redis://127.0.0.1:6379/7", help="Celery broker")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="Synthea bundle folder")
    parser.add_argument("--seed", type=int, default=1, help="the seed the data was loaded with")
    parser.add_argument("--workers", type=int, default=2, help="API processes (default 2)")
    parser.add_argument("--rate", type=float, default=200.0, help="requests per second")
    parser.add_argument("--seconds", type=float, default=600.0, help="length of the run")
    parser.add_argument("--connections", type=int, default=64, help="client connections at most")
    parser.add_argument("--sample", type=int, default=300, help="patients the requests are about")
    parser.add_argument("--sample-seconds", type=float, default=10.0, help="sampling interval")
    parser.add_argument("--drain-seconds", type=float, default=120.0, help="wait for the outbox")
    parser.add_argument("--port", type=int, default=0, help="server port (default: a free one)")
    parser.add_argument("--startup-timeout", type=float, default=120.0, help="seconds")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    if database_kind(args.database_url) != "postgresql":
        parser.error("--database-url must be a PostgreSQL URL")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.data.is_dir():
        print(f"the shared data is not there: no Synthea bundles in {args.data}; nothing measured")
        return 0
    load_before = _loadavg()
    with loaded_database(args) as url, contextlib.ExitStack() as stack:
        state = read_state(url)
        assert state is not None
        settings = {"EMR_HUB_BROKER_URL": args.broker}
        running = start_server(args, url, stack, 4, settings)
        worker = start_worker(running, stack)
        receiver = Receiver()
        stack.callback(receiver.close)
        subscription = subscribe(running.api.client, receiver.url)
        stack.callback(running.api.client.delete, f"/fhir/Subscription/{subscription}")
        patients = sample_patients(
            running.api,
            Generator(args.data, args.seed),
            state,
            random.Random(args.seed),
            args.sample,
            {},
            4,
        )
        token = running.api.client.headers["Authorization"].split(" ", 1)[1]
        log(f"{args.rate:g} requests/s for {args.seconds:g} s over {len(patients)} patients ...")
        sampler = Sampler(url, running.server.process.pid, worker.pid, args.sample_seconds)
        started = time.monotonic()
        run = asyncio.run(drive(running.base, token, patients, args))
        elapsed = time.monotonic() - started
        log(f"waiting (at most {args.drain_seconds:g} s) for {len(run.posted)} notifications ...")
        deadline = time.monotonic() + args.drain_seconds
        while time.monotonic() < deadline:
            with receiver.lock:
                if all(focus in receiver.arrivals for focus in run.posted):
                    break
            time.sleep(0.2)  # polling a receiver with a deadline, not standing in for a sync
        sampler.stop()
        figures = report(run, receiver, sampler.samples, elapsed, args, state.resources)
    figures |= {"code": _code_version(), "machine": machine(), "database": args.reuse_db}
    figures["loadavg_1min"] = {"before": load_before, "after": _loadavg()}
    if args.json:
        print(orjson.dumps(figures, option=orjson.OPT_INDENT_2).decode())
    else:
        print_figures(figures)
    failed = figures["errors"] or figures["notifications"]["missing"]
    return 1 if failed or figures["notifications"]["repeats"] else 0


def worker_log(running: Running) -> Path:
    return Path(running.env["EMR_HUB_DATA_DIR"]).parent / "worker.log"


def start_worker(running: Running, stack: contextlib.ExitStack) -> subprocess.Popen[bytes]:
    """``emr-hub worker --beat`` with the server's settings (so its broker), stopped with
    ``stack``; its output goes to :func:`worker_log`."""
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


def _stop_group(process: subprocess.Popen[bytes]) -> None:
    import signal

    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)


def report(
    run: Run,
    receiver: Receiver,
    samples: list[dict[str, float]],
    elapsed: float,
    args: argparse.Namespace,
    resources: int,
) -> dict[str, Any]:
    kinds: dict[str, Any] = {}
    for kind in WEIGHTS:
        mine = sorted(o.latency * 1000 for o in run.outcomes if o.kind == kind)
        errors = [o.problem for o in run.outcomes if o.kind == kind and o.problem]
        kinds[kind] = {
            "requests": len(mine),
            "errors": len(errors),
            "first_errors": sorted(set(errors))[:3],
            **{f"p{q}_ms": _ms(mine, q / 100) for q in (50, 95, 99)},
        }
    with receiver.lock:
        lags = sorted(
            (receiver.arrivals[f] - t) * 1000
            for f, t in run.posted.items()
            if f in receiver.arrivals
        )
        missing = sum(1 for f in run.posted if f not in receiver.arrivals)
        repeats = receiver.repeats
    return {
        "rate": args.rate,
        "seconds": args.seconds,
        "resources_before": resources,
        "achieved_per_s": round(len(run.outcomes) / elapsed, 1),
        "late_starts": run.late_starts,
        "errors": sum(k["errors"] for k in kinds.values()),
        "kinds": kinds,
        "notifications": {
            "expected": len(run.posted),
            "received": len(lags),
            "missing": missing,
            "repeats": repeats,
            "lag_p50_ms": _ms(lags, 0.5),
            "lag_p99_ms": _ms(lags, 0.99),
        },
        "samples": samples,
    }


def _ms(sorted_ms: list[float], q: float) -> float | None:
    return round(percentile(sorted_ms, q), 1) if sorted_ms else None


def print_figures(f: dict[str, Any]) -> None:
    print(f"{machine_line(f)}; database {f['database']} ({f['resources_before']} resources)")
    print(
        f"asked {f['rate']:g}/s for {f['seconds']:g} s; achieved {f['achieved_per_s']}/s; "
        f"{f['errors']} errors; {f['late_starts']} requests sent late by the generator"
    )
    print(f"{'kind':30}{'requests':>10}{'errors':>8}{'p50 ms':>10}{'p95 ms':>10}{'p99 ms':>10}")
    for kind, k in f["kinds"].items():
        cells = "".join(
            f"{'-' if k[p] is None else k[p]:>10}" for p in ("p50_ms", "p95_ms", "p99_ms")
        )
        print(f"{kind:30}{k['requests']:>10}{k['errors']:>8}{cells}")
        for problem in k["first_errors"]:
            print(f"    {problem}")
    n = f["notifications"]
    print(
        f"notifications: {n['received']} of {n['expected']} received, {n['missing']} missing, "
        f"{n['repeats']} repeats; lag p50 {n['lag_p50_ms']} ms, p99 {n['lag_p99_ms']} ms"
    )
    columns = (("t s", 7), ("server MiB", 12), ("worker MiB", 12), ("db conns", 10))
    columns += (("outbox", 8), ("oldest s", 10))
    print("".join(f"{name:>{width}}" for name, width in columns))
    for s in f["samples"]:
        print(
            f"{s['t']:>7}{s['server_rss_mib']:>12}{s['worker_rss_mib']:>12}"
            f"{s['db_connections']:>10}{s['outbox_owed']:>8}{s['outbox_oldest_s']:>10}"
        )


if __name__ == "__main__":
    raise SystemExit(main())
