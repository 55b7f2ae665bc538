"""Benchmark: DICOMweb STOW-RS into the object store beside a bare put of the same bytes, QIDO
latency over a large index, and the server's memory.

    .venv/bin/python bench/imaging.py [--instances 1000] [--large-mib 256] [--studies 100000]
        [--database-url URL] [--object-store s3://bucket]   # S3: EMR_HUB_S3_* in the environment

It starts ``emr-hub serve`` (one process), registers the ``bench`` client and a Patient, and
writes to a temporary file one STOW body of ``--instances`` CT instances of about 1 MiB each
(new UIDs, one study) and one body holding a single multi-frame instance of ``--large-mib``.
Each body is sent in one request, chunked, while the server's resident set is sampled; then
the same instance bytes are written to the same object store by its client alone (minio's
``put_object`` for S3, a file write and fsync for the folder), one object at a time as STOW
writes them. Then ``--studies`` studies are added to the index (rows written directly, with
their ImagingStudy rows owned by the bench hospital, so the access policy's condition is the
one a hospital meets) and QIDO-RS is timed with a mix of queries. Prints MB/s, instances/s,
the ratio to the bare put, QIDO p50/p95, and the server's peak RSS and its growth.
Aims (issue 9): 1,000 instances (~1 GB) at >= 100 instances/s and >= 80 % of the bare put's
MB/s, server RSS growth <= 64 MB, QIDO p95 < 50 ms over 100,000 studies.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import random
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

if __package__ in (None, ""):  # run as a script: make ``bench`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.ingest import BENCH_ORGANIZATION, _code_version, _loadavg, log
from bench.search import machine, machine_line, start_server

BOUNDARY = "bench-boundary"
SIDE = 724  # 724 x 724 x 2 bytes: about 1 MiB of pixel data per instance
PATIENT_SYSTEM = "urn:emr-hub:bench:patient-id"


def resident(pid: int) -> int:
    with open(f"/proc/{pid}/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def sampled(pid: int, work: Callable[[], Any]) -> tuple[Any, float, int, int]:
    """``work()``'s result, its seconds, the server's peak RSS and its growth during it."""
    baseline = peak = resident(pid)
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.wait(0.02):
            peak = max(peak, resident(pid))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.perf_counter()
    try:
        result = work()
    finally:
        seconds = time.perf_counter() - started
        done.set()
        sampler.join()
    return result, seconds, peak, peak - baseline


def instances(count: int, study: str) -> Iterator[bytes]:
    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.uid import generate_uid

    template = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    template.Rows = template.Columns = SIDE
    template.PixelData = bytes(random.Random(9).randbytes(SIDE * SIDE * 2))
    template.PatientID, template.StudyInstanceUID = "BENCH-1", study
    template.SeriesInstanceUID = generate_uid()
    for number in range(1, count + 1):
        sop = generate_uid()
        template.SOPInstanceUID = template.file_meta.MediaStorageSOPInstanceUID = sop
        template.InstanceNumber = number
        out = io.BytesIO()
        template.save_as(out, enforce_file_format=True)
        yield out.getvalue()


def large_instance(mib: int, study: str) -> Iterator[bytes]:
    """One multi-frame instance's bytes, in pieces (never whole in memory)."""
    import struct

    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.uid import generate_uid

    dataset = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    del dataset.PixelData
    frame = 512 * 512 * 2
    frames = mib * 1024 * 1024 // frame
    dataset.Rows = dataset.Columns = 512
    dataset.NumberOfFrames, dataset.PatientID, dataset.StudyInstanceUID = frames, "BENCH-1", study
    dataset.SOPInstanceUID = dataset.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    head = io.BytesIO()
    dataset.save_as(head, enforce_file_format=True)
    yield head.getvalue() + b"\xe0\x7f\x10\x00OW\x00\x00" + struct.pack("<I", frame * frames)
    block = bytes(frame)
    for _ in range(frames):
        yield block


def write_body(path: Path, parts: Iterator[bytes]) -> list[tuple[int, int]]:
    """The multipart body of ``parts`` (one instance each) in a file; (offset, length) of each."""
    spans = []
    with path.open("wb") as out:
        for data in parts:
            out.write(f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode())
            spans.append((out.tell(), len(data)))
            out.write(data)
            out.write(b"\r\n")
        out.write(f"--{BOUNDARY}--\r\n".encode())
    return spans


def write_large_body(path: Path, pieces: Iterator[bytes]) -> list[tuple[int, int]]:
    """The body of one instance given in pieces."""
    with path.open("wb") as out:
        out.write(f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode())
        start = out.tell()
        for piece in pieces:
            out.write(piece)
        length = out.tell() - start
        out.write(f"\r\n--{BOUNDARY}--\r\n".encode())
    return [(start, length)]


def file_chunks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as source:
        while chunk := source.read(1024 * 1024):
            yield chunk


def stow(client: Any, path: Path) -> dict[str, Any]:
    headers = {
        "Content-Type": f'multipart/related; type="application/dicom"; boundary={BOUNDARY}',
        "Accept": "application/dicom+json",
    }
    answer = client.post("/dicomweb/studies", content=file_chunks(path), headers=headers)
    if answer.status_code != 200:
        raise SystemExit(f"STOW answered {answer.status_code}: {answer.text[:500]}")
    stored: dict[str, Any] = answer.json()
    return stored


def bare_put(path: Path, spans: list[tuple[int, int]], store_url: str) -> float:
    """Seconds to write the same instances with the object store's own client."""
    started = time.perf_counter()
    with path.open("rb") as source:
        if store_url.startswith("s3://"):
            from minio import Minio

            endpoint = os.environ["EMR_HUB_S3_ENDPOINT"]
            client = Minio(
                endpoint.split("://", 1)[1],
                access_key=os.environ.get("EMR_HUB_S3_ACCESS_KEY"),
                secret_key=os.environ.get("EMR_HUB_S3_SECRET_KEY"),
                secure=endpoint.startswith("https"),
            )
            bucket = store_url.removeprefix("s3://").split("/")[0]
            for offset, length in spans:
                source.seek(offset)
                name = f"bench-bare/{uuid.uuid4().hex}"
                client.put_object(bucket, name, _Slice(source, length), length)
                client.remove_object(bucket, name)  # not timed apart: a delete is cheap
        else:
            folder = Path(store_url.removeprefix("file://")) / "bench-bare"
            folder.mkdir(parents=True, exist_ok=True)
            for offset, length in spans:
                source.seek(offset)
                target = folder / uuid.uuid4().hex
                with target.open("wb") as out:
                    remaining = length
                    while remaining:
                        chunk = source.read(min(remaining, 1024 * 1024))
                        out.write(chunk)
                        remaining -= len(chunk)
                    out.flush()
                    os.fsync(out.fileno())
                target.unlink()
    return time.perf_counter() - started


class _Slice(io.RawIOBase):
    """``length`` bytes of an open file from its position, read in place."""

    def __init__(self, source: Any, length: int) -> None:
        self._source, self._left = source, length

    def read(self, size: int = -1) -> bytes:
        size = self._left if size < 0 else min(size, self._left)
        data: bytes = self._source.read(size)
        self._left -= len(data)
        return data


def seed_index(env: dict[str, str], studies: int) -> None:
    """``studies`` more studies in the index, each with an ImagingStudy row of the bench
    hospital (written directly: the point is QIDO over a large index, not STOW)."""
    from sqlalchemy import insert

    from emr_hub.config import Settings
    from emr_hub.hub import Hub
    from storage.tables import DicomStudy, ResourceRow

    settings = Settings(
        data_dir=Path(env["EMR_HUB_DATA_DIR"]), database_url=env.get("EMR_HUB_DATABASE_URL")
    )
    hub = Hub.from_settings(settings)
    rng = random.Random(7)
    families = ["Nguyễn", "Trần", "Lê", "Phạm", "Hoàng", "Vũ", "Đặng", "Bùi"]
    givens = ["Thị Lan", "Văn Minh", "Quốc Bảo", "Minh Châu", "Thu Hà", "Đức Anh"]
    now = datetime.now(UTC)
    try:
        for start in range(0, studies, 5000):
            study_rows, resource_rows = [], []
            for n in range(start, min(start + 5000, studies)):
                rid = f"bench-imaging-{n}"
                name = f"{rng.choice(families)}^{rng.choice(givens)}"
                study_rows.append(
                    {
                        "study_uid": f"2.25.{uuid.uuid4().int}"[:64],
                        "imaging_study_id": rid,
                        "patient_id": f"BN-{n % 20000:05d}",
                        "patient_name": name,
                        "patient_name_key": _key(name),
                        "study_date": _random_date(rng),
                        "accession_number": f"ACC-{n}",
                        "modalities": rng.choice(["CT", "MR", "CR", "CT\\MR", "US"]),
                        "series_count": 1,
                        "instance_count": rng.randint(1, 300),
                        "attributes": "{}",
                        "updated_at": now,
                    }
                )
                resource_rows.append(
                    {
                        "resource_type": "ImagingStudy",
                        "id": rid,
                        "version_id": 1,
                        "last_updated": now,
                        "deleted": False,
                        "content": {
                            "resourceType": "ImagingStudy",
                            "id": rid,
                            "status": "available",
                        },
                        "owner_org": BENCH_ORGANIZATION,
                        "restricted": False,
                    }
                )
            with hub.db.transaction() as session:
                session.execute(insert(ResourceRow), resource_rows)
                session.execute(insert(DicomStudy), study_rows)
        if hub.db.dialect == "postgresql":
            # A bulk load leaves the planner's statistics far behind (autovacuum analyzes
            # later): it would plan QIDO for a table of a few hundred rows.
            with hub.db.engine.connect() as conn:
                conn.exec_driver_sql("ANALYZE resource, dicom_study, dicom_series")
                conn.commit()
    finally:
        hub.close()


def _random_date(rng: random.Random) -> str:
    return f"20{rng.randint(15, 26)}{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}"


def _key(name: str) -> str:
    from emr_hub.imaging.index import name_key

    return name_key(name) or ""


QIDO_KINDS = ("PatientID", "AccessionNumber", "StudyDate", "PatientName", "ModalitiesInStudy")


def qido_query(kind: str, rng: random.Random) -> dict[str, str]:
    if kind == "PatientID":
        return {"PatientID": f"BN-{rng.randrange(20000):05d}"}
    if kind == "AccessionNumber":
        return {"AccessionNumber": f"ACC-{rng.randrange(100000)}"}
    if kind == "StudyDate":
        day = f"20{rng.randint(15, 26)}{rng.randint(1, 12):02d}"
        return {"StudyDate": f"{day}01-{day}07", "limit": "50"}
    if kind == "PatientName":
        return {"PatientName": "lan", "fuzzymatching": "true", "limit": "20"}
    return {"ModalitiesInStudy": "MR", "limit": "25", "offset": "100"}


def qido_latencies(client: Any, count: int) -> dict[str, list[float]]:
    """Milliseconds per query, by kind (the kinds in turn, ``count`` queries in all)."""
    rng = random.Random(3)
    timings: dict[str, list[float]] = {kind: [] for kind in QIDO_KINDS}
    for n in range(count):
        kind = QIDO_KINDS[n % len(QIDO_KINDS)]
        started = time.perf_counter()
        answer = client.get("/dicomweb/studies", params=qido_query(kind, rng))
        timings[kind].append((time.perf_counter() - started) * 1000)
        if answer.status_code != 200:
            raise SystemExit(f"QIDO answered {answer.status_code}: {answer.text[:300]}")
    return timings


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[max(int(len(ordered) * 0.95) - 1, 0)]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--instances", type=int, default=1000)
    parser.add_argument("--large-mib", type=int, default=256)
    parser.add_argument("--studies", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--database-url", default=None)
    parser.add_argument("--object-store", default=None, help="s3://bucket (default: a folder)")
    parser.add_argument("--port", type=int, default=None)
    parser.add_argument("--startup-timeout", type=float, default=120)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    args.workers = 1
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    load_before = _loadavg()
    figures: dict[str, Any] = {"code": _code_version(), "machine": machine()}
    with contextlib.ExitStack() as stack:
        temp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="emr_hub_imaging_")))
        store_url = args.object_store or f"file://{temp / 'objects'}"
        settings = {"EMR_HUB_OBJECT_STORE": store_url}
        for name in ("EMR_HUB_S3_ENDPOINT", "EMR_HUB_S3_ACCESS_KEY", "EMR_HUB_S3_SECRET_KEY"):
            if name in os.environ:  # the server gets no other EMR_HUB_* of this shell
                settings[name] = os.environ[name]
        url = args.database_url or f"sqlite:///{temp / 'hub.db'}"
        running = start_server(args, url, stack, 1, settings)
        pid = running.server.process.pid
        api = running.api.client
        api.timeout = 600
        patient = {
            "resourceType": "Patient",
            "identifier": [{"system": PATIENT_SYSTEM, "value": "BENCH-1"}],
        }
        if api.post("/fhir/Patient", content=orjson.dumps(patient)).status_code != 201:
            raise SystemExit("could not create the bench Patient")
        from pydicom.uid import generate_uid

        log(f"writing {args.instances} instances and one of {args.large_mib} MiB ...")
        small = temp / "study.body"
        spans = write_body(small, instances(args.instances, generate_uid()))
        large = temp / "large.body"
        large_spans = write_large_body(large, large_instance(args.large_mib, generate_uid()))
        for name, body, body_spans in (("study", small, spans), ("large", large, large_spans)):
            log(f"STOW {name} ...")
            try:
                answer, seconds, peak, growth = sampled(pid, lambda body=body: stow(api, body))
            except SystemExit:
                log(f"server log:\n{running.server.log_tail()}")
                raise
            stored = len(answer.get("00081199", {}).get("Value", []))
            if stored != len(body_spans):
                raise SystemExit(f"STOW stored {stored} of {len(body_spans)} instances")
            size = sum(length for _, length in body_spans)
            bare = bare_put(body, body_spans, store_url)
            figures[name] = {
                "instances": len(body_spans),
                "mb": size / 1e6,
                "stow_seconds": seconds,
                "stow_mb_per_s": size / 1e6 / seconds,
                "stow_instances_per_s": len(body_spans) / seconds,
                "bare_seconds": bare,
                "bare_mb_per_s": size / 1e6 / bare,
                "ratio": bare / seconds,
                "server_peak_rss_mib": peak / 2**20,
                "server_rss_growth_mib": growth / 2**20,
            }
            body.unlink()
        log(f"adding {args.studies} studies to the index ...")
        seed_index(running.env, args.studies)
        qido_latencies(api, 20)  # warm-up
        by_kind = qido_latencies(api, args.queries)
        timings = [t for values in by_kind.values() for t in values]
        figures["qido"] = {
            "studies": args.studies + 2,
            "queries": len(timings),
            "p50_ms": statistics.median(timings),
            "p95_ms": p95(timings),
            "p95_ms_by_kind": {kind: p95(values) for kind, values in by_kind.items()},
        }
        figures["object_store"] = "s3" if store_url.startswith("s3://") else "folder"
        figures["database"] = "postgresql" if url.startswith("postgres") else "sqlite"
    figures["loadavg_1min"] = {"before": load_before, "after": _loadavg()}
    if args.json:
        print(orjson.dumps(figures, option=orjson.OPT_INDENT_2).decode())
        return 0
    print(machine_line(figures))
    print(f"object store: {figures['object_store']}, database: {figures['database']}")
    for name in ("study", "large"):
        f = figures[name]
        print(
            f"{name}: {f['instances']} instances, {f['mb']:.0f} MB: STOW {f['stow_mb_per_s']:.1f} "
            f"MB/s, {f['stow_instances_per_s']:.1f} instances/s; bare put "
            f"{f['bare_mb_per_s']:.1f} MB/s; ratio {f['ratio']:.0%}; server peak RSS "
            f"{f['server_peak_rss_mib']:.0f} MiB (+{f['server_rss_growth_mib']:.0f} MiB)"
        )
    q = figures["qido"]
    kinds = ", ".join(f"{k} {v:.1f}" for k, v in q["p95_ms_by_kind"].items())
    print(
        f"QIDO over {q['studies']} studies: p50 {q['p50_ms']:.1f} ms, p95 {q['p95_ms']:.1f} ms "
        f"(p95 by matching key, ms: {kinds})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
