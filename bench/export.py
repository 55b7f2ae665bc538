"""Benchmark: a system-level ``$export`` of a hub database to the object store.

    .venv/bin/python bench/export.py --database-url postgresql+psycopg://postgres@127.0.0.1/DB

It starts an operator's export as the API would (the ``export_job`` row), runs the export in a
child process exactly as a worker does (:func:`emr_hub.export.runner.run_export`), and prints
resources/s, MB/s (uncompressed NDJSON and stored gzip), the files, and the child's peak RSS;
beside it, the bare cost of reading the same rows' JSON text in one statement, so the ratio is
what the exporter adds. The files go to ``--object-store`` (default: a temporary folder,
removed afterwards) and the job is deleted at the end; the database is otherwise only read.
Aim (issue 11): 1,000,000 resources in 60 s or less, RSS at most 256 MB, on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.search import _code_version, machine, machine_line  # noqa: E402
from emr_hub.config import Settings  # noqa: E402


def _settings(args: argparse.Namespace, objects: str) -> Settings:
    return Settings(
        database_url=args.database_url,
        object_store=objects,
        data_dir=Path(tempfile.gettempdir()) / "emr-hub-bench-export",
        s3_endpoint=os.environ.get("EMR_HUB_S3_ENDPOINT"),
        s3_access_key=os.environ.get("EMR_HUB_S3_ACCESS_KEY"),
        s3_secret_key=os.environ.get("EMR_HUB_S3_SECRET_KEY"),
        statement_timeout_seconds=600,
    )


def _run_child(settings_json: str, job_id: str, queue: Any) -> None:
    from emr_hub.export.runner import run_export
    from emr_hub.hub import Hub

    hub = Hub.from_settings(Settings.model_validate_json(settings_json))
    started = time.perf_counter()
    run_export(hub, job_id)
    seconds = time.perf_counter() - started
    hub.close()
    queue.put(
        {
            "seconds": seconds,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        }
    )


def _bare_read(settings: Settings) -> dict[str, float]:
    """Every live resource's JSON text in one streamed statement, the data ignored."""
    from sqlalchemy import text

    from emr_hub.hub import Hub

    hub = Hub.from_settings(settings)
    started = time.perf_counter()
    rows = size = 0
    with hub.db.engine.connect().execution_options(stream_results=True, yield_per=5000) as conn:
        result = conn.execute(
            text("SELECT content::text FROM resource WHERE NOT deleted")
            if hub.db.dialect == "postgresql"
            else text("SELECT CAST(content AS TEXT) FROM resource WHERE NOT deleted")
        )
        for (body,) in result:
            rows += 1
            size += len(body)
    seconds = time.perf_counter() - started
    hub.close()
    return {"rows": rows, "seconds": seconds, "mb": size / 1e6}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--object-store", help="file:///path or s3://bucket (default: temp folder)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()

    from emr_hub.export import jobs
    from emr_hub.export.request import NOT_EXPORTED, ExportRequest
    from emr_hub.fhir.stored import now_instant
    from emr_hub.fhir.validation import R4_RESOURCE_TYPES
    from emr_hub.hub import Hub
    from emr_hub.security.principal import OPERATOR_ROLE, Principal
    from emr_hub.security.scopes import ScopeSet

    folder = None if args.object_store else tempfile.mkdtemp(prefix="emr-hub-export-bench-")
    objects = args.object_store or f"file://{folder}"
    settings = _settings(args, objects)
    load_before = os.getloadavg()[0]
    Hub.from_settings(settings, migrate=True).close()  # the export_job table, if not yet there
    bare = _bare_read(settings)

    hub = Hub.from_settings(settings)
    operator = Principal(
        "bench-operator", None, ScopeSet.parse("system/*.read"), "bench", kind=OPERATOR_ROLE
    )
    types = sorted(t for t in R4_RESOURCE_TYPES if t not in NOT_EXPORTED)
    job_id = jobs.start(
        hub.db,
        operator,
        ExportRequest(level="system", types=types),
        request_url="bench",
        request_id=None,
        transaction_time=now_instant(),
        retry_after=1,
    )
    queue: Any = multiprocessing.get_context("spawn").Queue()
    child = multiprocessing.get_context("spawn").Process(
        target=_run_child, args=(settings.model_dump_json(), job_id, queue)
    )
    child.start()
    result = queue.get()
    child.join()
    with hub.db.transaction() as session:
        job = jobs.load(session, job_id)
        assert job is not None and job.status == jobs.COMPLETED, job and job.status
        files = list(job.files)
        exported = job.exported
        session.delete(job)
    hub.close()
    if folder:
        shutil.rmtree(folder, ignore_errors=True)
    stored_mb = sum(f["bytes"] for f in files) / 1e6
    seconds = result["seconds"]
    figures = {
        "machine": machine(),
        "loadavg_1min": {"before": round(load_before, 2), "after": round(os.getloadavg()[0], 2)},
        "code": _code_version(),
        "resources": exported,
        "seconds": round(seconds, 1),
        "resources_per_s": round(exported / seconds),
        "json_mb_per_s": round(bare["mb"] / seconds, 1),
        "stored_gzip_mb": round(stored_mb, 1),
        "files": len(files),
        "peak_rss_mib": round(result["peak_rss_mib"]),
        "bare_read": {k: round(v, 1) for k, v in bare.items()},
    }
    if args.json:
        print(json.dumps(figures, indent=2))
        return
    print(machine_line(figures))
    print(
        f"export: {exported} resources in {seconds:.1f} s = {figures['resources_per_s']}/s, "
        f"{figures['json_mb_per_s']} MB/s of JSON; {len(files)} files, "
        f"{stored_mb:.0f} MB gzip'ed; worker peak RSS {figures['peak_rss_mib']} MiB"
    )
    print(
        f"bare read of the same JSON: {bare['rows']:.0f} rows in {bare['seconds']:.1f} s "
        f"({bare['rows'] / bare['seconds']:.0f}/s); export/bare time ratio "
        f"{seconds / bare['seconds']:.2f}"
    )


if __name__ == "__main__":
    main()
