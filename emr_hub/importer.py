"""Bulk load of Bundle files and NDJSON (``emr-hub import``), through the same store and
validation as the API. A Bundle file is one transaction (all or nothing); NDJSON lines are
validated one by one, bad lines reported by number, good ones written in chunks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from emr_hub.errors import FhirError
from emr_hub.fhir import interactions
from emr_hub.fhir.bundle import process_bundle
from emr_hub.fhir.store import FhirStore
from emr_hub.hub import Hub
from emr_hub.security.principal import OPERATOR
from storage import json_codec

CHUNK = 500


@dataclass
class ImportReport:
    files: int = 0
    resources: int = 0
    failures: list[str] = field(default_factory=list)


def expand(paths: list[Path]) -> list[Path]:
    """Files as given, folders expanded to their *.json / *.ndjson, in name order."""
    out: list[Path] = []
    for path in paths:
        if path.is_dir():
            out.extend(sorted(p for p in path.iterdir() if p.suffix in (".json", ".ndjson")))
        else:
            out.append(path)
    return out


def count_items(path: Path) -> int:
    """How many resources a file holds (for the progress bar)."""
    if path.suffix == ".ndjson":
        with path.open("rb") as handle:
            return sum(1 for line in handle if line.strip())
    try:
        data = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return 1
    return (
        len(data.get("entry") or [])
        if isinstance(data, dict) and data.get("resourceType") == "Bundle"
        else 1
    )


def import_file(hub: Hub, path: Path, report: ImportReport, advance: Callable[[int], None]) -> None:
    report.files += 1
    if path.suffix == ".ndjson":
        _import_ndjson(hub, path, report, advance)
        return
    try:
        data = json_codec.loads(path.read_bytes())
    except (OSError, ValueError) as exc:
        report.failures.append(f"{path.name}: unreadable JSON ({exc})")
        advance(1)
        return
    size = count_items(path)
    try:
        with hub.db.transaction() as session:
            store = FhirStore(session, base_url=hub.settings.fhir_base_url)
            if (
                isinstance(data, dict)
                and data.get("resourceType") == "Bundle"
                and data.get("type") in ("transaction", "batch")
            ):
                process_bundle(store, OPERATOR, data, hub.settings.fhir_base_url)
            else:
                _write_one(store, data)
            store.flush()
        report.resources += size
    except FhirError as error:
        report.failures.append(f"{path.name}: {error}")
    advance(size)


def _write_one(store: FhirStore, resource: Any) -> None:
    if isinstance(resource, dict) and isinstance(resource.get("id"), str):
        interactions.update(
            store, OPERATOR, str(resource.get("resourceType")), resource["id"], resource
        )
    else:
        resource_type = resource.get("resourceType") if isinstance(resource, dict) else None
        interactions.create(store, OPERATOR, str(resource_type), resource)


def _ndjson_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    with path.open("rb") as handle:
        for number, line in enumerate(handle, start=1):
            if line.strip():
                yield number, line


def _import_ndjson(
    hub: Hub, path: Path, report: ImportReport, advance: Callable[[int], None]
) -> None:
    chunk: list[tuple[int, Any]] = []

    def write(items: list[tuple[int, Any]]) -> None:
        with hub.db.transaction() as session:
            store = FhirStore(session, base_url=hub.settings.fhir_base_url)
            for number, resource in items:
                savepoint = session.begin_nested()
                try:
                    _write_one(store, resource)
                    store.flush()
                    savepoint.commit()
                    report.resources += 1
                except FhirError as error:
                    savepoint.rollback()
                    store.discard_pending()
                    report.failures.append(f"{path.name}:{number}: {error}")
        advance(len(items))

    for number, line in _ndjson_lines(path):
        try:
            chunk.append((number, json_codec.loads(line)))
        except ValueError as exc:
            report.failures.append(f"{path.name}:{number}: malformed JSON ({exc})")
            advance(1)
        if len(chunk) >= CHUNK:
            write(chunk)
            chunk = []
    if chunk:
        write(chunk)
