"""Ingest benchmark: Synthea transaction Bundles posted to a real ``emr-hub serve``.

Prints figures measured in one run over the same resources; it never asserts a timing.

- ingest: resources/s of ``POST /fhir`` transaction Bundles over HTTP (the patient bundles
  phase, and overall with the ``00-*`` reference bundles sent first, one at a time);
- parse: ``orjson.loads`` of the very bytes posted, resources/s, one core;
- validation: ``emr_hub.fhir.validation.validate_resource`` of every patient-bundle resource
  (references resolved as the server resolves them), resources/s, one core, after a warm-up;
- the ratios ingest/validation and ingest/parse, which travel between machines better than
  the absolute figures.

Usage (see bench/README.md)::

    .venv/bin/python bench/ingest.py            # embedded SQLite in a temp dir
    .venv/bin/python bench/ingest.py --fresh-db \
        --database-url postgresql://postgres@127.0.0.1:5432/test
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import os
import platform
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import orjson

REPO = Path(__file__).resolve().parent.parent
DEFAULT_DATA = REPO.parent / "shared" / "data" / "synthea-r4"
FHIR_JSON = "application/fhir+json"
MAX_FAILURES_SHOWN = 20
BENCH_ORGANIZATION = "Organization/bench"


# ---------------------------------------------------------------------------- data
@dataclass
class Payload:
    """One Bundle as posted: its bytes and how many resources it carries."""

    name: str
    body: bytes
    resources: int


@dataclass
class Dataset:
    reference: list[Payload]  # the 00-* bundles, posted first, in name order
    patients: list[Payload]  # every round of the patient bundles
    validation_set: list[dict[str, Any]]  # first-round patient resources, references resolved

    @property
    def patient_resources(self) -> int:
        return sum(p.resources for p in self.patients)

    @property
    def reference_resources(self) -> int:
        return sum(p.resources for p in self.reference)


def _replace_strings(node: Any, mapping: dict[str, str]) -> None:
    """Replace, in place, every string value equal to a key of ``mapping``."""
    if isinstance(node, dict):
        for key, value in node.items():
            if isinstance(value, str):
                new = mapping.get(value)
                if new is not None:
                    node[key] = new
            elif isinstance(value, dict | list):
                _replace_strings(value, mapping)
    elif isinstance(node, list):
        for index, value in enumerate(node):
            if isinstance(value, str):
                new = mapping.get(value)
                if new is not None:
                    node[index] = new
            elif isinstance(value, dict | list):
                _replace_strings(value, mapping)


def renew_bundle(bundle: dict[str, Any], round_no: int) -> None:
    """Make a parsed Bundle create new resources: fresh urn:uuid fullUrls (and every
    reference to them) and Patient identifiers suffixed with the round."""
    entries = bundle.get("entry") or []
    mapping = {
        entry["fullUrl"]: f"urn:uuid:{uuid.uuid4()}"
        for entry in entries
        if isinstance(entry.get("fullUrl"), str) and entry["fullUrl"].startswith("urn:uuid:")
    }
    for entry in entries:
        if entry.get("fullUrl") in mapping:
            entry["fullUrl"] = mapping[entry["fullUrl"]]
        resource = entry.get("resource")
        if not isinstance(resource, dict):
            continue
        if resource.get("resourceType") == "Patient":
            for identifier in resource.get("identifier") or ():
                if isinstance(identifier, dict) and isinstance(identifier.get("value"), str):
                    identifier["value"] = f"{identifier['value']}-r{round_no}"
        _replace_strings(resource, mapping)


def resolved_resources(bundle: dict[str, Any]) -> list[dict[str, Any]]:
    """The entry resources with urn:uuid references rewritten to ``Type/id``, as the
    transaction processor does before it validates them."""
    entries = bundle.get("entry") or []
    mapping: dict[str, str] = {}
    for entry in entries:
        full_url, resource = entry.get("fullUrl"), entry.get("resource")
        if (
            isinstance(full_url, str)
            and full_url.startswith("urn:uuid:")
            and isinstance(resource, dict)
            and isinstance(resource.get("resourceType"), str)
        ):
            mapping[full_url] = f"{resource['resourceType']}/{full_url[len('urn:uuid:') :]}"
    out = []
    for entry in entries:
        resource = entry.get("resource")
        if isinstance(resource, dict):
            _replace_strings(resource, mapping)
            out.append(resource)
    return out


def load_dataset(directory: Path, repeat: int) -> Dataset:
    files = sorted(directory.glob("*.json"))
    reference: list[Payload] = []
    patients: list[Payload] = []
    validation_set: list[dict[str, Any]] = []
    later_rounds: list[Payload] = []
    for path in files:
        raw = path.read_bytes()
        bundle = orjson.loads(raw)
        if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
            continue
        count = len(bundle.get("entry") or [])
        if path.name.startswith("00-"):
            reference.append(Payload(path.name, raw, count))
            continue
        patients.append(Payload(path.name, raw, count))
        validation_set.extend(resolved_resources(bundle))  # mutates this parsed copy only
        for round_no in range(2, repeat + 1):
            copy = orjson.loads(raw)
            renew_bundle(copy, round_no)
            later_rounds.append(Payload(f"{path.name}#r{round_no}", orjson.dumps(copy), count))
    return Dataset(reference, patients + later_rounds, validation_set)


# ------------------------------------------------------------------ bare figures
@dataclass(frozen=True)
class Timing:
    """Wall seconds, and this process's CPU seconds (which other load on the machine does
    not inflate as much)."""

    wall: float
    cpu: float


def _timed(work: Any) -> Timing:
    wall, cpu = time.perf_counter(), time.process_time()
    work()
    return Timing(time.perf_counter() - wall, time.process_time() - cpu)


def measure_parse(payloads: list[Payload], passes: int = 3) -> Timing:
    """Best of ``passes`` passes of orjson.loads over all payloads."""

    def one_pass() -> None:
        for payload in payloads:
            orjson.loads(payload.body)

    timings = [_timed(one_pass) for _ in range(passes)]
    return Timing(min(t.wall for t in timings), min(t.cpu for t in timings))


def measure_validation(resources: list[dict[str, Any]]) -> tuple[Timing, list[str]]:
    """One warm-up pass, then one timed pass; and the problems found."""
    from emr_hub.errors import FhirError
    from emr_hub.fhir.validation import validate_resource

    problems: list[str] = []

    def one_pass() -> None:
        problems.clear()
        for resource in resources:
            try:
                validate_resource(resource)
            except FhirError as error:
                problems.append(f"{resource.get('resourceType')}/{resource.get('id')}: {error}")

    one_pass()
    return _timed(one_pass), problems


# ------------------------------------------------------------------------ database
def database_kind(url: str | None) -> str:
    if not url:
        return "sqlite"
    scheme = url.split(":", 1)[0].split("+", 1)[0].lower()
    return "postgresql" if scheme in ("postgres", "postgresql") else scheme


def _libpq_url(url: str) -> str:
    scheme, rest = url.split("://", 1)
    return "postgresql://" + rest if scheme.startswith("postgres") else url


def _with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, parts.fragment))


def _admin_connect(url: str) -> Any:
    import psycopg

    try:
        return psycopg.connect(_libpq_url(url), autocommit=True, connect_timeout=10)
    except psycopg.OperationalError:  # the named database may not exist: use the default one
        return psycopg.connect(
            _libpq_url(_with_database(url, "postgres")), autocommit=True, connect_timeout=10
        )


@contextlib.contextmanager
def fresh_database(server_url: str) -> Iterator[str]:
    """Create ``emr_hub_bench_<random>`` on the server of ``server_url``, drop it at the end."""
    from psycopg import sql

    name = f"emr_hub_bench_{secrets.token_hex(4)}"
    with _admin_connect(server_url) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    log(f"created database {name}")
    try:
        yield _with_database(server_url, name)
    finally:
        with _admin_connect(server_url) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
        log(f"dropped database {name}")


# -------------------------------------------------------------------------- server
def ensure_client(executable: str, env: dict[str, str], client_id: str, organization: str) -> None:
    """Register an API client of ``organization`` (``Organization/<id>``); a reused database
    already has it."""
    try:
        run_cli(executable, ["client", "add", client_id, "--organization", organization], env)
    except RuntimeError as exc:
        if "exists" not in str(exc):
            raise


def ensure_bench_client(executable: str, env: dict[str, str]) -> None:
    """Register the benchmark's API client ``bench``, after its Organization (a client's
    Organization must be stored in the hub)."""
    with tempfile.TemporaryDirectory(prefix="emr_hub_bench_") as folder:
        organization = Path(folder) / "bench-organization.json"
        organization.write_bytes(
            orjson.dumps(
                {
                    "resourceType": "Organization",
                    "id": BENCH_ORGANIZATION.partition("/")[2],
                    "name": "emr_hub benchmark client",
                }
            )
        )
        run_cli(executable, ["import", str(organization)], env)
    ensure_client(executable, env, "bench", BENCH_ORGANIZATION)


def emr_hub_executable() -> str:
    for candidate in (Path(sys.prefix) / "bin" / "emr-hub", REPO / ".venv" / "bin" / "emr-hub"):
        if candidate.exists():
            return str(candidate)
    found = shutil.which("emr-hub")
    if not found:
        raise SystemExit("emr-hub is not installed: run `make test` or pip install -e . first")
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def server_env(data_dir: Path, database_url: str | None, base_url: str) -> dict[str, str]:
    """The caller's environment without its EMR_HUB_* settings, plus the benchmark's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EMR_HUB_")}
    env["EMR_HUB_DATA_DIR"] = str(data_dir)
    env["EMR_HUB_BASE_URL"] = base_url
    # A kept benchmark database outlives the temporary data dir, so its signing keys must be
    # sealed with a key-encryption key every run knows: a fixed one, for benchmark data only.
    env["EMR_HUB_KEY_ENCRYPTION_KEY"] = base64.b64encode(
        hashlib.sha256(b"emr_hub benchmark key-encryption key").digest()
    ).decode("ascii")
    if database_url:
        env["EMR_HUB_DATABASE_URL"] = database_url
    return env


def run_cli(executable: str, args: list[str], env: dict[str, str]) -> str:
    done = subprocess.run(
        [executable, *args], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"emr-hub {' '.join(args)} failed: {done.stderr.strip()[-2000:]}")
    return done.stdout.strip()


class Server:
    """``emr-hub serve`` in its own process group, so stopping it stops its workers too."""

    def __init__(self, executable: str, port: int, workers: int, env: dict[str, str], log: Path):
        self.base = f"http://127.0.0.1:{port}"
        self.log_path = log
        self._log = log.open("wb")
        command = [executable, "serve", "--host", "127.0.0.1", "--port", str(port)]
        self.process = subprocess.Popen(
            [*command, "--workers", str(workers)],
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_ready(self, deadline_seconds: float) -> None:
        deadline = time.monotonic() + deadline_seconds
        with httpx.Client(base_url=self.base, timeout=2.0) as client:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(f"the server exited with {self.process.returncode}")
                try:
                    if client.get("/healthz").status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                time.sleep(0.2)
        raise RuntimeError(f"the server did not answer /healthz within {deadline_seconds:.0f} s")

    def cpu_seconds(self) -> float | None:
        """User+system CPU of every live process of the server's group (Linux /proc)."""
        tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        total = 0
        try:
            entries = os.listdir("/proc")
        except OSError:
            return None
        for entry in entries:
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat", "rb") as handle:
                    stat = handle.read()
            except OSError:
                continue
            fields = stat[stat.rfind(b")") + 2 :].split()
            if int(fields[2]) == self.process.pid:  # pgrp
                total += int(fields[11]) + int(fields[12])  # utime + stime
        return total / tick

    def log_tail(self, lines: int = 30) -> str:
        self._log.flush()
        try:
            text = self.log_path.read_text("utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        # workers may outlive the parent for a moment: make sure the group is gone
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self._log.close()


# --------------------------------------------------------------------------- ingest
@dataclass
class Outcome:
    name: str
    resources: int
    stored: int = 0
    seconds: float = 0.0
    failures: list[str] = field(default_factory=list)


def _diagnostics(response: httpx.Response) -> str:
    try:
        body = orjson.loads(response.content)
        issues = body.get("issue") or []
        text = "; ".join(
            f"{i.get('diagnostics')} @ {','.join(i.get('expression') or [])}" for i in issues[:3]
        )
        return text or response.text[:300]
    except (orjson.JSONDecodeError, AttributeError):
        return response.text[:300]


def post_bundle(client: httpx.Client, payload: Payload) -> Outcome:
    outcome = Outcome(payload.name, payload.resources)
    started = time.perf_counter()
    try:
        response = client.post("/fhir", content=payload.body)
    except httpx.HTTPError as exc:
        outcome.seconds = time.perf_counter() - started
        outcome.failures.append(f"{payload.name}: {type(exc).__name__}: {exc}")
        return outcome
    outcome.seconds = time.perf_counter() - started
    if response.status_code != 200:
        outcome.failures.append(
            f"{payload.name}: HTTP {response.status_code}: {_diagnostics(response)}"
        )
        return outcome
    entries = orjson.loads(response.content).get("entry") or []
    for index, entry in enumerate(entries):
        status = str((entry.get("response") or {}).get("status", ""))
        if status.startswith("2"):
            outcome.stored += 1
        else:
            outcome.failures.append(f"{payload.name}: entry[{index}] status {status!r}")
    if len(entries) != payload.resources:
        outcome.failures.append(
            f"{payload.name}: {len(entries)} response entries for {payload.resources} sent"
        )
    return outcome


def fhir_client(base: str, token: str, connections: int) -> httpx.Client:
    return httpx.Client(
        base_url=base,
        headers={
            "Content-Type": FHIR_JSON,
            "Accept": FHIR_JSON,
            "Authorization": f"Bearer {token}",
        },
        timeout=httpx.Timeout(900.0, connect=10.0),
        limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections),
    )


# ---------------------------------------------------------------------------- main
def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _code_version() -> str | None:
    """The repository's commit, with ``+dirty`` when tracked files differ from it."""
    try:
        head = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+dirty" if dirty else "")


def _loadavg() -> float | None:
    """The 1-minute load average: other work on the machine skews every figure."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def rate(count: int, seconds: float) -> float:
    return count / seconds if seconds > 0 else 0.0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--database-url",
        default=None,
        help="SQLAlchemy/libpq URL; default: embedded SQLite in a temp data dir",
    )
    parser.add_argument(
        "--fresh-db",
        action="store_true",
        help="with a PostgreSQL URL: create emr_hub_bench_<random> on that server, drop it after",
    )
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="Synthea bundle folder")
    parser.add_argument("--workers", type=int, default=2, help="API processes (default 2)")
    parser.add_argument("--concurrency", type=int, default=4, help="parallel HTTP clients")
    parser.add_argument("--repeat", type=int, default=1, help="rounds of the patient bundles")
    parser.add_argument("--port", type=int, default=0, help="server port (default: a free one)")
    parser.add_argument("--startup-timeout", type=float, default=60.0, help="seconds")
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    args = parser.parse_args(argv)
    for name in ("workers", "concurrency", "repeat"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    data_dir: Path = args.data
    if not data_dir.is_dir() or not any(data_dir.glob("*.json")):
        print(
            f"the shared data is not there: no Synthea bundles in {data_dir} "
            "(expected ../shared/data/synthea-r4 next to the repository); nothing measured"
        )
        return 0
    kind = database_kind(args.database_url)
    if args.fresh_db and kind != "postgresql":
        log("--fresh-db only applies to PostgreSQL; ignored")

    load_before = _loadavg()
    log(f"preparing {data_dir} ({args.repeat} round(s)) ...")
    dataset = load_dataset(data_dir, args.repeat)
    if not dataset.patients:
        print(f"no patient bundles in {data_dir}; nothing measured")
        return 0

    log("measuring bare parse and validation ...")
    parse_timing = measure_parse(dataset.patients)
    validation_timing, validation_problems = measure_validation(dataset.validation_set)

    with contextlib.ExitStack() as stack:
        database_url = args.database_url
        if args.fresh_db and kind == "postgresql":
            import psycopg

            try:
                database_url = stack.enter_context(fresh_database(args.database_url))
            except psycopg.Error as exc:
                raise SystemExit(f"cannot create a database on {args.database_url}: {exc}") from exc
        http = run_ingest(args, dataset, database_url, stack)

    figures = report_figures(args, kind, dataset, parse_timing, validation_timing, http)
    figures["machine"]["loadavg_1min"] = {"before": load_before, "after": _loadavg()}
    figures["validation_problems"] = len(validation_problems)
    figures["code"] = _code_version()
    if args.json:
        print(orjson.dumps(figures, option=orjson.OPT_INDENT_2).decode())
    else:
        print_figures(figures)
    for problem in validation_problems[:MAX_FAILURES_SHOWN]:
        log(f"validation problem: {problem}")
    for failure in http["failures"][:MAX_FAILURES_SHOWN]:
        log(f"FAILED {failure}")
    if len(http["failures"]) > MAX_FAILURES_SHOWN:
        log(f"... and {len(http['failures']) - MAX_FAILURES_SHOWN} more failures")
    return 1 if http["failures"] else 0


def run_ingest(
    args: argparse.Namespace,
    dataset: Dataset,
    database_url: str | None,
    stack: contextlib.ExitStack,
) -> dict[str, Any]:
    temp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="emr_hub_bench_")))
    port = args.port or free_port()
    base = f"http://127.0.0.1:{port}"
    env = server_env(temp / "data", database_url, base)
    executable = emr_hub_executable()
    log(f"starting emr-hub serve on {base} with {args.workers} worker(s) ...")
    server = Server(executable, port, args.workers, env, temp / "server.log")
    try:
        try:
            server.wait_ready(args.startup_timeout)
            ensure_bench_client(executable, env)
            token = run_cli(executable, ["token", "bench"], env).splitlines()[-1].strip()
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            log(f"server log:\n{server.log_tail()}")
            raise SystemExit(f"could not start the benchmark: {exc}") from exc

        with fhir_client(base, token, args.concurrency) as client:
            log(f"posting {len(dataset.reference)} reference bundle(s) one at a time ...")
            started = time.perf_counter()
            reference = [post_bundle(client, payload) for payload in dataset.reference]
            reference_seconds = time.perf_counter() - started

            # largest first, so the last bundles do not leave clients idle at the end
            order = sorted(dataset.patients, key=lambda p: p.resources, reverse=True)
            log(f"posting {len(order)} patient bundle(s) with {args.concurrency} client(s) ...")
            cpu_before = server.cpu_seconds()
            started = time.perf_counter()
            with ThreadPoolExecutor(max_workers=args.concurrency) as pool:
                patients = list(pool.map(lambda p: post_bundle(client, p), order))
            patient_seconds = time.perf_counter() - started
            cpu_after = server.cpu_seconds()
        if any(o.failures for o in reference + patients):
            log(f"server log (tail):\n{server.log_tail()}")
    finally:
        server.stop()
    server_cpu = (
        cpu_after - cpu_before if cpu_before is not None and cpu_after is not None else None
    )
    return {
        "reference_seconds": reference_seconds,
        "reference_stored": sum(o.stored for o in reference),
        "patient_seconds": patient_seconds,
        "patient_stored": sum(o.stored for o in patients),
        "bundle_seconds": [o.seconds for o in patients],
        "failed_bundles": sum(1 for o in reference + patients if o.failures),
        "failures": [f for o in reference + patients for f in o.failures],
        "server_cpu_seconds": server_cpu,
    }


def report_figures(
    args: argparse.Namespace,
    kind: str,
    dataset: Dataset,
    parse_timing: Timing,
    validation_timing: Timing,
    http: dict[str, Any],
) -> dict[str, Any]:
    patient_resources = dataset.patient_resources
    all_resources = patient_resources + dataset.reference_resources
    ingest = rate(http["patient_stored"], http["patient_seconds"])
    overall = rate(
        http["patient_stored"] + http["reference_stored"],
        http["patient_seconds"] + http["reference_seconds"],
    )
    parse = rate(patient_resources, parse_timing.wall)
    validation = rate(len(dataset.validation_set), validation_timing.wall)
    validation_cpu_ms = 1000 * validation_timing.cpu / max(len(dataset.validation_set), 1)
    cpu = http["server_cpu_seconds"]
    server_cpu_ms = 1000 * cpu / http["patient_stored"] if cpu and http["patient_stored"] else None
    latencies = sorted(http["bundle_seconds"])
    return {
        "database": kind,
        "workers": args.workers,
        "clients": args.concurrency,
        "repeat": args.repeat,
        "machine": {
            "nproc": len(os.sched_getaffinity(0))
            if hasattr(os, "sched_getaffinity")
            else os.cpu_count(),
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "data": str(args.data),
        "patient_bundles": len(dataset.patients),
        "patient_resources": patient_resources,
        "patient_bytes": sum(len(p.body) for p in dataset.patients),
        "reference_resources": dataset.reference_resources,
        "stored_resources": http["patient_stored"] + http["reference_stored"],
        "failed_bundles": http["failed_bundles"],
        "failures": len(http["failures"]),
        "ingest_seconds": http["patient_seconds"],
        "ingest_resources_per_s": ingest,
        "overall_seconds": http["patient_seconds"] + http["reference_seconds"],
        "overall_resources": all_resources,
        "overall_resources_per_s": overall,
        "bundle_latency_s": {
            "median": statistics.median(latencies) if latencies else None,
            "max": latencies[-1] if latencies else None,
        },
        "server_cpu_seconds": cpu,
        "server_cores_busy": cpu / http["patient_seconds"]
        if cpu and http["patient_seconds"]
        else None,
        "server_cpu_ms_per_resource": server_cpu_ms,
        "parse_resources_per_s": parse,
        "parse_cpu_resources_per_s": rate(patient_resources, parse_timing.cpu),
        "validation_resources": len(dataset.validation_set),
        "validation_resources_per_s": validation,
        "validation_cpu_ms_per_resource": validation_cpu_ms,
        # CPU against CPU: how many times one resource's validation the server spends on it
        "ratio_server_cpu_validation_cpu": server_cpu_ms / validation_cpu_ms
        if server_cpu_ms and validation_cpu_ms
        else None,
        "ratio_ingest_validation": ingest / validation if validation else None,
        "ratio_ingest_parse": ingest / parse if parse else None,
    }


def print_figures(f: dict[str, Any]) -> None:
    m = f["machine"]
    load = m.get("loadavg_1min") or {}
    shape = f"{f['database']}, {f['workers']} workers, {f['clients']} clients"
    print(
        f"machine: nproc {m['nproc']} (cpu_count {m['cpu_count']}), Python {m['python']}, "
        f"{m['platform']}; load average (1 min) {load.get('before')} before, "
        f"{load.get('after')} after"
    )
    print(f"code: {f.get('code')}")
    print(
        f"data: {f['data']}: {f['patient_bundles']} patient bundles ({f['repeat']} round(s)), "
        f"{f['patient_resources']} resources, {f['patient_bytes'] / 1e6:.1f} MB; "
        f"reference bundles {f['reference_resources']} resources"
    )
    print(
        f"ingest (http, {shape}): {f['ingest_resources_per_s']:.0f} resources/s "
        f"({f['patient_resources']} resources in {f['ingest_seconds']:.2f} s)"
    )
    print(
        f"ingest overall (http, {shape}, with 00-* bundles): "
        f"{f['overall_resources_per_s']:.0f} resources/s "
        f"({f['overall_resources']} resources in {f['overall_seconds']:.2f} s)"
    )
    latency = f["bundle_latency_s"]
    if latency["median"] is not None:
        print(f"bundle latency: median {latency['median']:.2f} s, max {latency['max']:.2f} s")
    if f["server_cpu_seconds"] is not None:
        print(
            f"server cpu (patient phase): {f['server_cpu_seconds']:.1f} s, "
            f"{f['server_cores_busy']:.2f} cores busy, "
            f"{f['server_cpu_ms_per_resource']:.2f} ms/resource"
        )
    print(
        f"parse (orjson.loads, 1 core): {f['parse_resources_per_s']:.0f} resources/s "
        f"(by cpu time {f['parse_cpu_resources_per_s']:.0f}/s)"
    )
    print(
        f"validation (validate_resource, 1 core, warm): "
        f"{f['validation_resources_per_s']:.0f} resources/s "
        f"({f['validation_resources']} resources, {f['validation_problems']} invalid; "
        f"cpu {f['validation_cpu_ms_per_resource']:.3f} ms/resource)"
    )
    if f["ratio_ingest_validation"] is not None:
        print(f"ratio ingest/validation: {f['ratio_ingest_validation']:.2f}")
    if f["ratio_ingest_parse"] is not None:
        print(f"ratio ingest/parse: {f['ratio_ingest_parse']:.4f}")
    if f["ratio_server_cpu_validation_cpu"] is not None:
        print(
            "ratio server cpu/validation cpu per resource: "
            f"{f['ratio_server_cpu_validation_cpu']:.2f}"
        )
    print(
        f"failures: {f['failures']} ({f['failed_bundles']} bundles); "
        f"stored {f['stored_resources']} of {f['overall_resources']} resources"
    )


if __name__ == "__main__":
    sys.exit(main())
