"""``/metrics`` after a known workload, read with prometheus-client's own parser: a real
``emr-hub serve --workers 2`` on PostgreSQL (samples merged across its processes), a real
``emr-hub worker`` on Redis, and the app in process on SQLite."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample
from pydantic import ValidationError
from sqlalchemy import func, select, text

from emr_hub.config import Settings, get_settings
from emr_hub.hub import Hub
from emr_hub.main import create_app
from emr_hub.metrics import database, directory
from emr_hub.metrics.database import register_database_gauge
from emr_hub.metrics.exposition import registry
from emr_hub.security.audit.log import EVENT
from emr_hub.tasks import RELAY_TASK, celery_app, configure_celery
from storage.tables import OutboxMessage
from tests.conftest import free_port, fresh_postgres_database, make_settings, port_open
from tests.fhir.conftest import token_for
from tests.processes import EMR_HUB, ROOT, ApiServer, ManagedProcess, cli_env, wait_for

SCRAPE_TOKEN = "scrape-" + "x" * 24
READ_ROUTE = "/fhir/{resource_type}/{resource_id}"
PATIENT = "metrics-lan"
CCCD_PATIENT = {
    "resourceType": "Patient",
    "id": PATIENT,
    "identifier": [{"system": "http://fhir.hl7.org.vn/core/sid/cccd", "value": "001090012345"}],
    "birthDate": "1990-03-15",
}
FHIR = {"Content-Type": "application/fhir+json", "Accept": "application/fhir+json"}


# ------------------------------------------------------------------ reading a scrape
def parse(text: str) -> list[Sample]:
    return [s for family in text_string_to_metric_families(text) for s in family.samples]


def value(samples: list[Sample], name: str, **labels: str) -> float:
    """The sum of the samples called ``name`` whose labels include ``labels`` (summed over
    the label sets that differ in others, such as ``pid``); 0 when there is none."""
    return sum(
        s.value
        for s in samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


def pids(samples: list[Sample], name: str) -> set[int]:
    return {int(s.labels["pid"]) for s in samples if s.name == name}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# ------------------------------------------------------- serve --workers 2 on PostgreSQL
class Served(ApiServer):
    """``emr-hub serve --workers N`` as a process of its own."""

    def __init__(self, env: dict[str, str], port: int, log: Path, workers: int) -> None:
        self.base = f"http://127.0.0.1:{port}"
        command = [EMR_HUB, "serve", "--port", str(port), "--workers", str(workers)]
        ManagedProcess.__init__(self, command, env, log)

    def scrape(self) -> list[Sample]:
        response = httpx.get(f"{self.base}/metrics", headers=bearer(SCRAPE_TOKEN), timeout=30)
        assert response.status_code == 200, response.text
        assert response.headers["content-type"].startswith("text/plain")
        return parse(response.text)


@dataclass
class Stack:
    server: Served
    hub: Hub
    hospital: str
    operator: str
    breaker: str
    data_dir: Path


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("metrics-serve")
    with fresh_postgres_database() as url:
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        hub = Hub.from_settings(make_settings(tmp, url, base_url=base), migrate=True)
        hospital = token_for(hub, client_id="metrics-hospital")
        operator = token_for(hub, client_id="metrics-operator", role="operator")
        breaker = token_for(hub, client_id="metrics-emergency", break_glass=True)
        env = cli_env(tmp, url, EMR_HUB_BASE_URL=base, EMR_HUB_METRICS_TOKEN=SCRAPE_TOKEN)
        server = Served(env, port, tmp / "serve.log", workers=2)
        try:
            server.wait_ready(60)
            # both workers have started once each has reported its pool
            wait_for(
                lambda: len(pids(server.scrape(), "emr_hub_db_pool_size")) == 2,
                60,
                "both API processes to report their pool",
                server.log,
            )
            yield Stack(server, hub, hospital, operator, breaker, tmp / "data")
        finally:
            server.stop()
            hub.close()


def test_requests_are_counted_exactly_across_processes(stack: Stack) -> None:
    base = stack.server.base
    created = httpx.put(
        f"{base}/fhir/Patient/{PATIENT}",
        json=CCCD_PATIENT,
        headers={**FHIR, **bearer(stack.hospital)},
        timeout=30,
    )
    assert created.status_code in (200, 201), created.text
    reads, missing, unmatched = 40, 7, 3
    # a new connection per request: the kernel hands them to either process
    for _ in range(reads):
        response = httpx.get(
            f"{base}/fhir/Patient/{PATIENT}", headers=bearer(stack.hospital), timeout=30
        )
        assert response.status_code == 200
    for n in range(missing):
        response = httpx.get(
            f"{base}/fhir/Patient/none-{n}", headers=bearer(stack.hospital), timeout=30
        )
        assert response.status_code == 404
    for n in range(unmatched):
        assert httpx.get(f"{base}/nowhere/{n}", timeout=30).status_code == 404
    operator_read = httpx.get(
        f"{base}/fhir/Patient/{PATIENT}", headers=bearer(stack.operator), timeout=30
    )
    assert operator_read.status_code == 200

    samples = stack.server.scrape()
    requests = "emr_hub_http_requests_total"
    hospital = "Organization/metrics-hospital"
    by = {"route": READ_ROUTE, "method": "GET"}
    assert value(samples, requests, **by, status="200", organization=hospital) == reads
    assert value(samples, requests, **by, status="404", organization=hospital) == missing
    assert value(samples, requests, **by, organization="Organization/metrics-operator") == 1
    assert value(samples, requests, route=READ_ROUTE) == reads + missing + 2  # + PUT, operator
    assert value(samples, requests, route="unmatched", status="404", organization="none") == 3
    put = {"route": READ_ROUTE, "method": "PUT", "organization": hospital}
    assert value(samples, requests, **put) == 1
    assert not [s for s in samples if PATIENT in str(s.labels) or "none-" in str(s.labels)]

    latency = "emr_hub_http_request_duration_seconds"
    count = value(samples, f"{latency}_count", **by)
    assert count == reads + missing + 1
    buckets = sorted(
        (float(s.labels["le"]), s.value)
        for s in samples
        if s.name == f"{latency}_bucket" and s.labels["route"] == READ_ROUTE
        and s.labels["method"] == "GET"
    )  # fmt: skip
    assert buckets[-1] == (float("inf"), count)
    assert [v for _, v in buckets] == sorted(v for _, v in buckets)
    assert buckets[0][0] == 0.001 and buckets[-2][0] == 10.0
    assert 0 < value(samples, f"{latency}_sum", **by) < count * 10

    # this scrape itself is counted in the next one (scrape token: no Organization)
    again = stack.server.scrape()
    scrapes = value(again, requests, route="/metrics", status="200", organization="none")
    assert scrapes == value(samples, requests, route="/metrics", status="200") + 1


def test_each_process_reports_its_pool(stack: Stack) -> None:
    samples = stack.server.scrape()
    sizes = {int(s.labels["pid"]): s.value for s in samples if s.name == "emr_hub_db_pool_size"}
    threads = Settings.model_fields["worker_threads"].default
    assert len(sizes) == 2 and set(sizes.values()) == {threads + 2}
    in_use = {
        int(s.labels["pid"]): s.value for s in samples if s.name == "emr_hub_db_pool_checked_out"
    }
    assert set(in_use) <= set(sizes)
    assert all(0 <= n <= threads + 2 for n in in_use.values())

    def at_rest() -> bool:
        """Nothing checked out (a scrape reads the files before it queries): a connection
        counted out and never back in would keep it above 0."""
        return value(stack.server.scrape(), "emr_hub_db_pool_checked_out") == 0

    wait_for(at_rest, 30, "every connection back in its pool", stack.server.log)


def test_outbox_gauges_match_the_rows(stack: Stack) -> None:
    now = datetime.now(UTC)
    later = now + timedelta(hours=1)  # not due: the API's relay threads leave them alone

    def message(age: float, **columns: Any) -> OutboxMessage:
        moment = now - timedelta(seconds=age)
        return OutboxMessage(
            id=str(uuid.uuid4()),
            topic="metrics.test",
            payload={},
            created_at=moment,
            available_at=columns.pop("available_at", later),
            **columns,
        )

    rows = [
        message(300),  # the oldest owed
        message(200),
        message(100, attempts=2),  # failed twice, to be retried
        message(50, attempts=1),
        *(message(10_000, attempts=12, failed_at=now) for _ in range(4)),
        *(message(20_000, attempts=1, delivered_at=now, available_at=now) for _ in range(5)),
    ]
    with stack.hub.db.transaction() as session:
        session.add_all(rows)
    try:
        samples = stack.server.scrape()
        assert value(samples, "emr_hub_outbox_backlog") == 4
        assert value(samples, "emr_hub_outbox_retrying") == 2
        assert value(samples, "emr_hub_outbox_failed") == 4
        assert 300 <= value(samples, "emr_hub_outbox_oldest_age_seconds") < 300 + 120
        assert value(samples, "emr_hub_metrics_database_up") == 1
    finally:
        with stack.hub.db.transaction() as session:
            for row in rows:
                session.delete(session.get(OutboxMessage, row.id))
    empty = stack.server.scrape()
    assert value(empty, "emr_hub_outbox_backlog") == 0
    assert value(empty, "emr_hub_outbox_oldest_age_seconds") == 0


def test_who_may_scrape(stack: Stack) -> None:
    url = f"{stack.server.base}/metrics"
    with stack.hub.db.snapshot() as session:
        audited_before = session.scalar(select(func.count()).select_from(EVENT))

    anonymous = httpx.get(url, timeout=30)
    assert anonymous.status_code == 401
    assert anonymous.json()["resourceType"] == "OperationOutcome"
    assert anonymous.headers["www-authenticate"].startswith("Bearer")
    assert httpx.get(url, headers=bearer(SCRAPE_TOKEN + "x"), timeout=30).status_code == 401
    hospital = httpx.get(url, headers=bearer(stack.hospital), timeout=30)
    assert hospital.status_code == 403
    assert hospital.json()["issue"][0]["code"] == "forbidden"
    assert httpx.get(url, headers=bearer(stack.operator), timeout=30).status_code == 200
    assert httpx.get(url, headers=bearer(SCRAPE_TOKEN), timeout=30).status_code == 200

    with stack.hub.db.snapshot() as session:
        audited_after = session.scalar(select(func.count()).select_from(EVENT))
    assert audited_after == audited_before, "/metrics is not audited"


def test_break_glass_and_export_jobs(stack: Stack) -> None:
    base = stack.server.base
    before = stack.server.scrape()
    assert value(before, "emr_hub_break_glass_openings") == 0
    opened = httpx.get(
        f"{base}/fhir/Patient/{PATIENT}",
        headers={
            **bearer(stack.breaker),
            "X-Purpose-Of-Use": "ETREAT",
            "X-Break-Glass-Reason": "Cap cuu: benh nhan bat tinh",
        },
        timeout=30,
    )
    assert opened.status_code == 200, opened.text

    kickoff = httpx.get(
        f"{base}/fhir/$export",
        headers={**bearer(stack.hospital), "Prefer": "respond-async", **FHIR},
        timeout=30,
    )
    assert kickoff.status_code == 202, kickoff.text

    def completed() -> bool:
        return value(stack.server.scrape(), "emr_hub_export_jobs", status="completed") == 1

    wait_for(completed, 60, "the export to complete", stack.server.log)
    samples = stack.server.scrape()
    emergency = "Organization/metrics-emergency"
    openings = [s for s in samples if s.name == "emr_hub_break_glass_openings"]
    assert [(s.labels, s.value) for s in openings] == [({"organization": emergency}, 1)]
    assert value(samples, "emr_hub_break_glass_open", organization=emergency) == 1
    assert value(samples, "emr_hub_break_glass_total", organization=emergency) == 1
    jobs = {s.labels["status"]: s.value for s in samples if s.name == "emr_hub_export_jobs"}
    assert jobs == {
        "accepted": 0,
        "in-progress": 0,
        "completed": 1,
        "failed": 0,
        "cancelled": 0,
        "expired": 0,
    }


def test_a_killed_process_leaves_its_counts_and_not_its_pool(stack: Stack) -> None:
    """Last: it kills one API process (uvicorn starts another)."""
    before = stack.server.scrape()
    reads = value(before, "emr_hub_http_requests_total", route=READ_ROUTE)
    assert reads > 0
    old = pids(before, "emr_hub_db_pool_size")
    victim = min(old)
    os.kill(victim, signal.SIGKILL)

    def replaced() -> bool:
        now = pids(stack.server.scrape(), "emr_hub_db_pool_size")
        return victim not in now and len(now) == 2

    wait_for(replaced, 60, "the killed process to be replaced", stack.server.log)
    after = stack.server.scrape()
    assert value(after, "emr_hub_http_requests_total", route=READ_ROUTE) == reads
    assert victim not in pids(after, "emr_hub_db_pool_checked_out")
    folder = next((stack.data_dir / "metrics").glob("serve-*/"))
    assert not list(folder.glob(f"gauge_live*_{victim}.db"))


# ------------------------------------------------------------------- a Celery worker
def test_worker_counts_its_tasks_across_pool_processes(
    tmp_path: Path, postgres_url: str, redis_url: str
) -> None:
    """Each task runs in a pool process of its own (--max-tasks-per-child 1): the worker's
    /metrics still counts every one, and shows no pool of a process that has ended."""
    hub = Hub.from_settings(make_settings(tmp_path, postgres_url), migrate=True)
    hub.close()
    port = free_port()
    env = cli_env(
        tmp_path,
        postgres_url,
        EMR_HUB_BROKER_URL=redis_url,
        EMR_HUB_METRICS_TOKEN=SCRAPE_TOKEN,
        EMR_HUB_WORKER_METRICS_PORT=str(port),
        PYTHONUNBUFFERED="1",
    )
    args = ["--concurrency", "2", "--max-tasks-per-child", "1", "--without-mingle"]
    worker = ManagedProcess([EMR_HUB, "worker", *args], env, tmp_path / "worker.log")
    url = f"http://127.0.0.1:{port}/metrics"
    configure_celery(make_settings(tmp_path, postgres_url, broker_url=redis_url))
    try:
        wait_for(lambda: port_open("127.0.0.1", port), 60, "the worker's metrics", worker.log)
        assert httpx.get(url, timeout=10).status_code == 401
        assert httpx.get(url, headers=bearer("wrong-token-x" * 2), timeout=10).status_code == 401
        tasks = 6
        for _ in range(tasks):
            celery_app.send_task(RELAY_TASK)

        def scrape() -> list[Sample]:
            response = httpx.get(url, headers=bearer(SCRAPE_TOKEN), timeout=10)
            assert response.status_code == 200, response.text
            return parse(response.text)

        def all_ran() -> bool:
            return value(scrape(), "emr_hub_tasks_total", task=RELAY_TASK) >= tasks

        wait_for(all_ran, 90, f"{tasks} relay tasks", worker.log)
        samples = scrape()
        assert value(samples, "emr_hub_tasks_total", task=RELAY_TASK, outcome="success") == tasks
        assert value(samples, "emr_hub_task_duration_seconds_count", task=RELAY_TASK) == tasks
        assert not [s for s in samples if s.name.startswith("emr_hub_http")]

        def only_live_pools() -> bool:
            return all(_alive(pid) for pid in pids(scrape(), "emr_hub_db_pool_size"))

        wait_for(only_live_pools, 30, "ended pool processes to leave the pool gauges")
        folders = list((tmp_path / "data" / "metrics").glob("worker-*/"))
        assert [f.name for f in folders] == [f"worker-{worker.process.pid}"]
    finally:
        configure_celery(get_settings())
        worker.stop()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


# ------------------------------------------------------------------ in process, SQLite
def test_in_process_on_sqlite(tmp_path: Path) -> None:
    """The embedded shape: one process, no metric files, the same endpoint and counts."""
    assert directory.folder() is None
    settings = make_settings(
        tmp_path, f"sqlite:///{tmp_path / 'hub.db'}", metrics_token=SCRAPE_TOKEN
    )
    hub = Hub.from_settings(settings, migrate=True)
    try:
        hospital = token_for(hub, client_id="inproc-hospital")
        operator = token_for(hub, client_id="inproc-operator", role="operator")
        with TestClient(create_app(hub)) as client:
            first = parse(client.get("/metrics", headers=bearer(operator)).text)
            reads = 5
            for n in range(reads):
                response = client.get(f"/fhir/Patient/nobody-{n}", headers=bearer(hospital))
                assert response.status_code == 404
            assert client.get("/metrics").status_code == 401
            assert client.get("/metrics", headers=bearer(hospital)).status_code == 403
            samples = parse(client.get("/metrics", headers=bearer(SCRAPE_TOKEN)).text)
    finally:
        hub.close()
    requests = "emr_hub_http_requests_total"
    org = "Organization/inproc-hospital"
    counted = {"route": READ_ROUTE, "status": "404", "organization": org}
    assert value(samples, requests, **counted) - value(first, requests, **counted) == reads
    assert value(samples, requests, route="/metrics", status="401", organization="none") >= 1
    assert value(samples, requests, route="/metrics", organization=org, status="403") >= 1
    operator_scrapes = {"route": "/metrics", "organization": "Organization/inproc-operator"}
    assert value(samples, requests, **operator_scrapes) >= 1
    pool = [s for s in samples if s.name == "emr_hub_db_pool_size"]
    assert pool and all("pid" not in s.labels for s in pool)  # one process: no pid label
    assert value(samples, "emr_hub_db_pool_size") >= 5  # SQLite's QueuePool
    assert value(samples, "emr_hub_outbox_backlog") == 0
    assert value(samples, "emr_hub_export_jobs", status="accepted") == 0
    assert value(samples, "emr_hub_metrics_database_up") == 1
    assert value(samples, "process_cpu_seconds_total") > 0  # this process's own collectors


def test_a_feature_registers_a_gauge_and_a_failing_one_is_left_out(tmp_path: Path) -> None:
    hub = Hub.from_settings(make_settings(tmp_path, f"sqlite:///{tmp_path / 'h.db'}"), migrate=True)
    register_database_gauge(
        "emr_hub_test_things",
        "Things by kind",
        lambda session: [(("a",), session.scalar(text("SELECT 2"))), (("b",), 0.0)],
        labels=("kind",),
    )
    register_database_gauge(
        "emr_hub_test_broken", "A gauge whose table is gone", lambda s: s.execute(text("x"))
    )
    try:
        samples = parse(generate_latest(registry(hub)).decode())
    finally:
        database._GAUGES.pop("emr_hub_test_things")
        database._GAUGES.pop("emr_hub_test_broken")
        hub.close()
    assert value(samples, "emr_hub_test_things", kind="a") == 2
    assert value(samples, "emr_hub_test_things", kind="b") == 0
    assert not [s for s in samples if s.name == "emr_hub_test_broken"]
    assert value(samples, "emr_hub_metrics_database_up") == 0
    assert value(samples, "emr_hub_outbox_backlog") == 0  # the others still answered
    with pytest.raises(ValueError, match="emr_hub_"):
        register_database_gauge("things", "no prefix", lambda s: [])


# ------------------------------------------------------------ the multiprocess folder
def test_a_command_gets_its_own_folder_and_removes_abandoned_ones(tmp_path: Path) -> None:
    """A folder whose owner still runs stays; one whose owner has ended is removed; the
    process's own is new and empty, and PROMETHEUS_MULTIPROC_DIR names it."""
    root = tmp_path / "metrics"
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD, str(root)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        ended = root / "worker-999999"
        ended.mkdir()
        (ended / "counter_999999.db").write_bytes(b"")
        (root / "worker-999999.lock").touch()
        script = (
            "import sys; from pathlib import Path; from emr_hub.config import Settings; "
            "from emr_hub.metrics.directory import prepare; "
            "print(prepare(Settings(metrics_dir=Path(sys.argv[1])), 'serve')); "
            "import os; print(os.environ['PROMETHEUS_MULTIPROC_DIR']); "
            "import prometheus_client.values as v; print(v.ValueClass._multiprocess)"
        )
        env = {k: v for k, v in os.environ.items() if k != directory.ENVIRONMENT}
        result = subprocess.run(
            [sys.executable, "-c", script, str(root)],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )
        made, named, files = result.stdout.split()
        assert made == named and Path(made).parent == root.resolve()
        assert Path(made).name.startswith("serve-") and files == "True"
        assert not ended.exists() and not (root / "worker-999999.lock").exists()
        assert (root / "worker-1").is_dir(), "the running holder's folder stays"
        assert Path(made).is_dir()
        directory.remove_abandoned(root)
        assert not Path(made).exists(), "its process has ended"
        assert (root / "worker-1").is_dir()
    finally:
        holder.communicate("")
    assert holder.returncode == 0


_HOLD = """
import fcntl, sys
from pathlib import Path
root = Path(sys.argv[1]); root.mkdir(parents=True)
(root / "worker-1").mkdir()
lock = open(root / "worker-1.lock", "w"); fcntl.flock(lock, fcntl.LOCK_EX)
print("held", flush=True); sys.stdin.read()
"""


def test_metrics_token_is_checked() -> None:
    with pytest.raises(ValidationError):
        Settings(metrics_token="short")
    with pytest.raises(ValidationError):
        Settings(metrics_token="has a space in it, long enough")
    assert Settings(metrics_token="").metrics_token is None
    assert Settings(metrics_token=SCRAPE_TOKEN).metrics_token is not None


def test_layering() -> None:
    """The metrics package names no feature (features register their gauges), and importing
    the folder's module leaves prometheus-client unimported (it must come first)."""
    from tests.test_layering import offenders

    assert offenders(ROOT / "emr_hub" / "metrics", ("emr_hub.export", "emr_hub.referrals")) == []
    check = (
        "import sys, emr_hub.metrics.directory; "
        "assert 'prometheus_client' not in sys.modules, sorted(sys.modules)"
    )
    subprocess.run([sys.executable, "-c", check], cwd=ROOT, check=True, timeout=60)
