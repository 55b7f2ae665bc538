"""CPU per resource of the JSON work around a write and a read, in this process.

What exact decimals (docs/adr/0010-exact-decimals.md) could make dearer, measured with
``time.process_time()`` (the machine is shared: wall-clock rates mean little), the best of
``--passes`` passes over every Synthea transaction Bundle:

- ingest: the request body parsed as the API parses it (``parse_json_body``), each entry's
  resource validated (``validate_resource``, its ``urn:uuid:`` references resolved as the
  transaction does) and written as the database column's serializer writes it;
- read: a stored resource read back by the column's deserializer and written as a response
  (``emr_hub.fhir.http.dump``).

Each phase is printed apart, with a digest of every validation outcome (accepted, or the
issues of the refusal) over the resources as resolved and as posted (unresolved
``urn:uuid:`` references are refused): the same digest before and after a change means the
same accept/refuse. Run it on two checkouts with the same interpreter to compare::

    .venv/bin/python bench/decimals.py
    PYTHONPATH=/path/to/other/checkout .venv/bin/python bench/decimals.py

With ``--postgres URL`` it also stores the same resources (COPY) in a throw-away table
with a ``json`` column and one with ``jsonb`` (what migration 0016 changed) and reads them
back as text, printing the wall time per resource of each (the server's work included).

It reads ``../shared/data/synthea-r4`` beside the repository (or ``--data``) and says so
when that folder is missing.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
DEFAULT_DATA = REPO.parent / "shared" / "data" / "synthea-r4"


def best_cpu(work: Callable[[], None], passes: int) -> float:
    """The least process CPU seconds of ``passes`` runs of ``work`` (after one warm-up)."""
    work()
    best = float("inf")
    for _ in range(passes):
        start = time.process_time()
        work()
        best = min(best, time.process_time() - start)
    return best


def outcome_digest(resources: list[dict[str, Any]]) -> tuple[str, int]:
    """(SHA-256 over every validation outcome, how many were refused)."""
    from emr_hub.errors import FhirError
    from emr_hub.fhir.validation import validate_resource

    digest = hashlib.sha256()
    refused = 0
    for resource in resources:
        try:
            validate_resource(resource)
            digest.update(b"ok\n")
        except FhirError as error:
            refused += 1
            for issue in error.issues:
                line = f"{error.status} {issue.code} {issue.diagnostics} {issue.expression}\n"
                digest.update(line.encode())
    return digest.hexdigest(), refused


def column_kinds(url: str, texts: list[str], rounds: int = 3) -> None:
    """Wall time per document of a COPY into, and a SELECT of, ``json`` and ``jsonb``."""
    import psycopg

    with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://")) as conn:
        conn.autocommit = True
        for kind in ("jsonb", "json") * rounds:
            conn.execute("DROP TABLE IF EXISTS bench_decimals_column")
            create = "CREATE TABLE bench_decimals_column (n integer PRIMARY KEY, content jsonb)"
            conn.execute(create if kind == "jsonb" else create.replace("jsonb", "json"))
            start = time.perf_counter()
            copy_in = "COPY bench_decimals_column FROM STDIN"
            with conn.cursor() as cursor, cursor.copy(copy_in) as copy:
                for number, text in enumerate(texts):
                    copy.write_row((number, text))
            written = time.perf_counter() - start
            start = time.perf_counter()
            conn.execute("SELECT content::text FROM bench_decimals_column").fetchall()
            read = time.perf_counter() - start
            size = conn.execute("SELECT pg_total_relation_size('bench_decimals_column')").fetchone()
            assert size is not None
            print(
                f"  {kind:<5} write {written / len(texts) * 1e6:5.1f} us, "
                f"read {read / len(texts) * 1e6:5.1f} us, table {size[0] / 1e6:.1f} MB"
            )
        conn.execute("DROP TABLE bench_decimals_column")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--passes", type=int, default=5)
    parser.add_argument("--postgres", metavar="URL", help="also compare json and jsonb columns")
    args = parser.parse_args()
    files = sorted(args.data.glob("*.json")) if args.data.is_dir() else []
    if not files:
        print(f"no Synthea data at {args.data}: nothing measured")
        return 1

    import emr_hub
    from bench.ingest import resolved_resources
    from emr_hub.fhir.http import FHIR_JSON, dump, parse_json_body
    from emr_hub.fhir.validation import validate_resource
    from storage.db import make_engine

    dialect = make_engine("sqlite://").dialect
    serialize: Callable[[Any], str] = dialect._json_serializer  # type: ignore[attr-defined]
    deserialize: Callable[[str], Any] = dialect._json_deserializer  # type: ignore[attr-defined]

    bodies = [path.read_bytes() for path in files]
    resolved = [r for body in bodies for r in resolved_resources(parse_json_body(body, FHIR_JSON))]
    posted = [e["resource"] for body in bodies for e in parse_json_body(body, FHIR_JSON)["entry"]]
    stored_texts = [serialize(resource) for resource in resolved]
    count = len(resolved)

    def parse() -> None:
        for body in bodies:
            parse_json_body(body, FHIR_JSON)

    def validate() -> None:
        for resource in resolved:
            validate_resource(resource)

    def write() -> None:
        for resource in resolved:
            serialize(resource)

    def read_loads() -> None:
        for text in stored_texts:
            deserialize(text)

    loaded = [deserialize(text) for text in stored_texts]

    def read_dump() -> None:
        for resource in loaded:
            dump(resource)

    # as the server does after startup (ADR 0008): the data held here is not walked by every
    # collection, which would otherwise dominate the figures
    gc.collect()
    gc.freeze()
    figures = {
        name: best_cpu(work, args.passes) / count * 1e6
        for name, work in (
            ("ingest: parse", parse),
            ("ingest: validate", validate),
            ("ingest: serialize", write),
            ("read: deserialize", read_loads),
            ("read: dump", read_dump),
        )
    }
    print(f"code: {Path(emr_hub.__file__).resolve().parent.parent}")
    print(f"data: {len(files)} Bundles, {count} resources, {sum(map(len, bodies)) / 1e6:.1f} MB")
    print(f"best of {args.passes} passes, process CPU per resource:")
    for name, micros in figures.items():
        print(f"  {name:<20} {micros:8.2f} us")
    ingest = sum(v for k, v in figures.items() if k.startswith("ingest"))
    read = sum(v for k, v in figures.items() if k.startswith("read"))
    print(f"  {'ingest total':<20} {ingest:8.2f} us")
    print(f"  {'read total':<20} {read:8.2f} us")
    for name, resources in (("resolved", resolved), ("as posted", posted)):
        digest, refused = outcome_digest(resources)
        print(f"validation of {len(resources)} {name}: {refused} refused, digest {digest[:16]}")
    if args.postgres:
        print("PostgreSQL column, wall time per resource:")
        column_kinds(args.postgres, stored_texts)
    return 0


if __name__ == "__main__":
    sys.exit(main())
