"""``$export`` run by a real Celery worker on Redis into a real S3 server: presigned links,
and a worker SIGKILLed mid-export whose export another worker resumes from the checkpoint."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, text

from emr_hub.export import jobs
from emr_hub.export.tasks import sweep
from emr_hub.hub import Hub
from emr_hub.main import create_app
from storage.tables import ExportJob, ResourceRow
from tests.conftest import published_hub
from tests.export.bulk_client import BulkClient
from tests.export.conftest import S3Server
from tests.fhir.conftest import Api, token_for
from tests.processes import Worker, wait_for

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
PATIENT_BUNDLE = "02-1484a42d-0eaf-4654-9cbf-6b050a5cd73b.json"
LEASE_SECONDS = 2


@pytest.fixture
def s3_hub(tmp_path: Path, postgres_url: str, redis_url: str, s3_server: S3Server) -> Iterator[Hub]:
    bucket = f"export-{uuid.uuid4().hex[:12]}"
    with published_hub(
        tmp_path,
        postgres_url,
        redis_url,
        object_store=f"s3://{bucket}",
        s3_endpoint=s3_server.endpoint,
        s3_access_key=s3_server.access_key,
        s3_secret_key=s3_server.secret_key,
        export_poll_seconds=1,
        export_lease_seconds=LEASE_SECONDS,
        export_file_max_bytes=1024,  # about one resource a file: many checkpoints
    ) as hub:
        yield hub


def worker_env(hub: Hub) -> dict[str, str]:
    s = hub.settings
    return {
        "EMR_HUB_OBJECT_STORE": str(s.object_store),
        "EMR_HUB_S3_ENDPOINT": str(s.s3_endpoint),
        "EMR_HUB_S3_ACCESS_KEY": str(s.s3_access_key),
        "EMR_HUB_S3_SECRET_KEY": str(s.s3_secret_key),
        "EMR_HUB_EXPORT_LEASE_SECONDS": str(LEASE_SECONDS),
        "EMR_HUB_EXPORT_FILE_MAX_BYTES": "1024",
    }


def job_of(hub: Hub, status_url: str) -> ExportJob:
    with hub.db.snapshot() as session:
        job = session.get(ExportJob, status_url.rsplit("/", 1)[1])
        assert job is not None
        session.expunge(job)
        return job


def test_a_killed_worker_s_export_is_resumed_and_the_result_is_whole(
    s3_hub: Hub, tmp_path: Path
) -> None:
    with TestClient(create_app(s3_hub)) as client:
        api = Api(client, token_for(s3_hub, client_id="hospital-a"))
        bundle = orjson.loads((FIXTURES / PATIENT_BUNDLE).read_bytes())
        assert api.post("", bundle).status_code == 200
        bulk = BulkClient(client, token_for(s3_hub, client_id="exporter", role="operator"))
        status_url = bulk.start("/fhir/$export")

        first = Worker(s3_hub.settings, tmp_path / "worker-1.log", env=worker_env(s3_hub))
        try:
            first.wait_ready()
            wait_for(
                lambda: len(job_of(s3_hub, status_url).files) >= 3,
                60,
                "the first checkpoints",
                first.log,
            )
            # Hold the job's row so the worker cannot go past its next checkpoint, then kill it.
            with s3_hub.db.engine.connect() as holder:
                holder.execute(
                    text("SELECT id FROM export_job WHERE id = :id FOR UPDATE"),
                    {"id": status_url.rsplit("/", 1)[1]},
                )
                first.kill()
                holder.rollback()
        finally:
            first.stop()
        halfway = job_of(s3_hub, status_url)
        assert halfway.status == jobs.RUNNING and halfway.files, "killed mid-export"

        wait_for(
            lambda: job_of(s3_hub, status_url).lease_until.replace(tzinfo=UTC) < datetime.now(UTC),
            LEASE_SECONDS + 10,
            "the dead worker's lease to run out",
        )
        second = Worker(s3_hub.settings, tmp_path / "worker-2.log", env=worker_env(s3_hub))
        try:
            second.wait_ready()
            sweep(s3_hub)  # what beat does every 30 s: hand the stalled export on
            export = bulk.wait(status_url)
        finally:
            second.stop()
        assert job_of(s3_hub, status_url).attempts == 2

        manifest = export.manifest
        assert manifest["requiresAccessToken"] is False  # presigned S3 links
        assert all("X-Amz-Signature=" in item["url"] for item in manifest["output"])
        exported = bulk.resources(export)
        found = [f"{r['resourceType']}/{r['id']}" for r in exported]
        assert len(found) == len(set(found)), "a resumed export repeats nothing"
        with s3_hub.db.snapshot() as session:
            rows = session.execute(
                select(ResourceRow.resource_type, ResourceRow.id, ResourceRow.content).where(
                    ResourceRow.deleted.is_(False)
                )
            ).all()
        assert sorted(found) == sorted(f"{t}/{i}" for t, i, _ in rows)
        contents = {f"{t}/{i}": content for t, i, content in rows}
        assert all(r == contents[f"{r['resourceType']}/{r['id']}"] for r in exported)
        keys = [item["url"].split("?")[0] for item in manifest["output"]]
        assert len(keys) == len(set(keys))
