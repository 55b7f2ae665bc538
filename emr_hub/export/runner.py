"""Running one export: the scan of every requested type, files written as they fill, a
checkpoint after each, and the end.

A worker claims the job (a lease), then for each type runs the passes of
:mod:`emr_hub.export.scan` in keyset batches sized to about :data:`BATCH_BYTES`. When a file
would pass the size limit, every open file is put in the object store and one transaction
records them, the position to resume from and the audit record naming the patients whose data
they hold. A worker killed at any moment loses at most the files not yet checkpointed: the
next worker claims the job once the lease has run out and starts again from the checkpoint,
writing the same object keys (so an orphan of the first attempt is replaced, not doubled).
"""

from __future__ import annotations

import logging
import time
import uuid
from datetime import datetime, timedelta
from typing import Any

import orjson
from sqlalchemy import text

from emr_hub.export import jobs
from emr_hub.export.files import DELETED, ERROR, OUTPUT, PartFile, object_key
from emr_hub.export.request import ExportRequest
from emr_hub.export.scan import CURRENT, PASSES, TypeScan, id_list_value, patients_of
from emr_hub.export.scan import DELETED as DELETED_PASS
from emr_hub.fhir import output
from emr_hub.hub import Hub
from emr_hub.security.access import store_for
from emr_hub.security.audit import log as audit_log
from emr_hub.security.audit.events import EventFacts, PatientEntity, rest_event
from emr_hub.security.principal import Principal
from emr_hub.security.scopes import ScopeSet
from storage import json_codec
from storage.db import as_utc
from storage.tables import ExportJob

log = logging.getLogger(__name__)

BATCH_BYTES = 8 * 1024 * 1024
"""About how much stored JSON one batch brings (the batch's row limit follows the sizes seen)."""
FIRST_BATCH, MAX_BATCH = 200, 5000
MAX_ATTEMPTS = 3
WRITER_SETTLE_SECONDS = 1.0
"""How long after ``transactionTime`` a write's transaction may start and still carry an
earlier ``lastUpdated`` (its store was made before): the scan waits for those to end."""


def principal_of(job: ExportJob) -> Principal:
    """The principal the export reads as: the client that started it, as it was then."""
    return Principal(
        client_id=job.client_id,
        organization=job.organization,
        scopes=ScopeSet.parse(job.scopes),
        token_id=f"export:{job.id}",
        kind=job.principal_kind,
    )


def run_export(hub: Hub, job_id: str) -> bool:
    """Claim the export and run it to its end; False when another worker holds it or it has
    ended. A failure releases the job for another attempt, and fails it after the last."""
    owner = str(uuid.uuid4())
    job = jobs.claim(hub.db, job_id, owner, hub.settings.export_lease_seconds)
    if job is None:
        return False
    exporter = Exporter(hub, job, owner)
    try:
        exporter.run()
    except jobs.LeaseLost:
        exporter.discard()
        log.info("export %s stopped: cancelled, or resumed by another worker", job_id)
    except Exception:
        exporter.discard()
        log.exception("export %s failed (attempt %d of %d)", job_id, job.attempts, MAX_ATTEMPTS)
        if job.attempts >= MAX_ATTEMPTS:
            reason = f"The export failed {MAX_ATTEMPTS} times; the hub's log has the cause"
            jobs.fail(hub.db, job_id, owner, reason, _retention(hub))
        else:
            jobs.release(hub.db, job_id, owner)
    return True


def _retention(hub: Hub) -> timedelta:
    return timedelta(hours=hub.settings.export_retention_hours)


class Exporter:
    def __init__(self, hub: Hub, job: ExportJob, owner: str) -> None:
        self.hub = hub
        self.job = job
        self.owner = owner
        self.request = ExportRequest.from_json(job.parameters)
        self.principal = principal_of(job)
        self.until = as_utc(job.transaction_time)
        self.position: dict[str, Any] = dict(
            job.checkpoint or {"type": 0, "phase": CURRENT, "after": "", "part": 0}
        )
        self.files: list[dict[str, Any]] = list(job.files)
        self.exported = job.exported
        self.postgres = hub.db.dialect == "postgresql"
        self.open: dict[str, PartFile] = {}
        self.uploaded: list[str] = []
        """Keys put since the last checkpoint (removed if the job is lost meanwhile)."""
        self.patients: dict[str, tuple[str, set[str]]] = {}
        self.limit = FIRST_BATCH
        self.renewed = time.monotonic()

    # ------------------------------------------------------------------ the run
    def run(self) -> None:
        if self.postgres:
            self._wait_for_older_writers()
        types = self.request.types
        start = int(self.position["type"])
        for index in range(start, len(types)):
            resumed = index == start
            self._export_type(index, types[index], resumed)
        self._write_notes()
        with self.hub.db.transaction() as session:
            jobs.finish(
                session,
                self.job.id,
                self.owner,
                files=self.files,
                exported=self.exported,
                retention=_retention(self.hub),
            )
        log.info("export %s completed: %d resources", self.job.id, self.exported)

    def _export_type(self, index: int, resource_type: str, resumed: bool) -> None:
        first_phase = self.position["phase"] if resumed else CURRENT
        scan: TypeScan | None = None
        for phase in PASSES[PASSES.index(first_phase) :]:
            if phase == DELETED_PASS and self.request.since is None:
                continue
            after = self.position["after"] if resumed and phase == first_phase else ""
            while True:
                with self.hub.db.snapshot() as session:
                    store = store_for(session, self.hub.settings, self.principal, moment=self.until)
                    if scan is None:
                        scan = TypeScan(
                            self.request,
                            resource_type,
                            store.visible,
                            base_url=self.hub.settings.fhir_base_url,
                            postgres=self.postgres,
                        )
                    params = self._params(store.access_params())
                    rows, last = scan.batch(session, phase, after, self.limit, params)
                    if rows and self.hub.settings.audit_enabled:
                        ids = [row.resource_id for row in rows]
                        self._note_patients(
                            resource_type, patients_of(session, resource_type, ids, self.postgres)
                        )
                if last is None:
                    break
                size = 0
                for row in rows:
                    line = self._line(resource_type, row)
                    size += len(line)
                    kind = DELETED if row.deleted else OUTPUT
                    part = self.open.get(kind)
                    if part is not None and not part.fits(len(line) + 1):
                        self._checkpoint({"type": index, "phase": phase, "after": after})
                        part = None
                    if part is None:
                        part = self.open[kind] = PartFile(
                            kind, resource_type, self.hub.settings.export_file_max_bytes
                        )
                    part.write(line)
                    if kind == OUTPUT:
                        self.exported += 1
                    after = row.resource_id
                after = last
                self._resize(size, len(rows))
                self._keep_lease()
        self._checkpoint({"type": index + 1, "phase": CURRENT, "after": ""})

    def _params(self, policy: dict[str, Any]) -> dict[str, Any]:
        params = {**policy, "scan_until": self.until, "scan_since": self.request.since_instant}
        if self.request.patients is not None:
            params["scan_patients"] = id_list_value(self.request.patients, self.postgres)
        return params

    def _line(self, resource_type: str, row: Any) -> bytes:
        if row.deleted:
            return orjson.dumps(
                {
                    "resourceType": "Bundle",
                    "type": "transaction",
                    "entry": [
                        {
                            "request": {
                                "method": "DELETE",
                                "url": f"{resource_type}/{row.resource_id}",
                            }
                        }
                    ],
                }
            )
        if output.filtered(resource_type):
            return json_codec.dumps(output.present(json_codec.loads(row.text)))
        return row.text.encode()

    def _resize(self, size: int, count: int) -> None:
        average = max(1, size // max(1, count))
        self.limit = max(1, min(MAX_BATCH, BATCH_BYTES // average))

    def _keep_lease(self) -> None:
        lease = self.hub.settings.export_lease_seconds
        if time.monotonic() - self.renewed > lease / 3:
            jobs.renew(self.hub.db, self.job.id, self.owner, lease)
            self.renewed = time.monotonic()

    # ------------------------------------------------------------ checkpoints
    def _checkpoint(self, resume: dict[str, Any]) -> None:
        """Put every open file in the store, then record them, where to resume and the audit
        record in one transaction. Nothing open: nothing to record."""
        parts = [self.open[kind] for kind in sorted(self.open)]
        self.open = {}
        written = [part for part in parts if part.count]
        for part in parts:
            if not part.count:
                part.discard()
        if not written:
            return
        number = int(self.position["part"])
        records = []
        for part in written:
            key = object_key(self.job.id, part.kind, part.resource_type, number)
            number += 1
            self.uploaded.append(key)
            records.append(part.upload(self.hub.objects, key))
        position = {**resume, "part": number}
        files = [*self.files, *records]
        with self.hub.db.transaction() as session:
            jobs.checkpoint(
                session,
                self.job.id,
                self.owner,
                position=position,
                files=files,
                exported=self.exported,
                lease_seconds=self.hub.settings.export_lease_seconds,
            )
            if self.patients:
                audit_log.append(session, [self._audit_event(records)])
        self.position, self.files = position, files
        self.uploaded = []
        self.patients = {}
        self.renewed = time.monotonic()

    def _note_patients(self, resource_type: str, pairs: list[tuple[str, str | None]]) -> None:
        for patient_id, person in pairs:
            known = self.patients.get(patient_id)
            if known is None:
                self.patients[patient_id] = (person or "", {resource_type})
            else:
                known[1].add(resource_type)

    def _audit_event(self, records: list[dict[str, Any]]) -> dict[str, Any]:
        files = ", ".join(record["key"].rsplit("/", 1)[-1] for record in records)
        facts = EventFacts(
            recorded=jobs.now(),
            interaction="operation",
            outcome="0",
            status=None,
            request_id=self.job.request_id or self.job.id,
            address=None,
            base_url=self.hub.settings.fhir_base_url,
            principal=self.principal,
            operation=f"export {self.job.id}: {files}",
            patients=tuple(
                PatientEntity(patient_id, person, tuple(sorted(types)))
                for patient_id, (person, types) in sorted(self.patients.items())
            ),
        )
        return rest_event(facts)

    def _write_notes(self) -> None:
        if not self.request.notes or any(f["kind"] == ERROR for f in self.files):
            return
        part = PartFile(ERROR, "OperationOutcome", self.hub.settings.export_file_max_bytes)
        for note in self.request.notes:
            outcome = {
                "resourceType": "OperationOutcome",
                "issue": [{"severity": "warning", "code": "not-supported", "diagnostics": note}],
            }
            part.write(orjson.dumps(outcome))
        self.open = {ERROR: part}
        self._checkpoint({"type": len(self.request.types), "phase": CURRENT, "after": ""})

    def discard(self) -> None:
        """Drop open spool files and the objects put since the last checkpoint."""
        for part in self.open.values():
            part.discard()
        self.open = {}
        for key in self.uploaded:
            try:
                self.hub.objects.delete(key)
            except Exception:  # noqa: BLE001 - litter only: the sweep's expiry removes the rest
                log.warning("could not remove an export file of job %s", self.job.id)
        self.uploaded = []

    # ------------------------------------------------------------------ start
    def _wait_for_older_writers(self) -> None:
        """Wait until every PostgreSQL transaction that began before ``transactionTime`` (plus
        the settle time) has ended: a write committed after the scan passed its rows would be
        missing from this export and, its ``lastUpdated`` being earlier than
        ``transactionTime``, from the next ``_since`` export too."""
        horizon: datetime = self.until + timedelta(seconds=WRITER_SETTLE_SECONDS)
        pause = (horizon - jobs.now()).total_seconds()
        if pause > 0:
            time.sleep(pause)
        deadline = time.monotonic() + self.hub.settings.statement_timeout_seconds + 5
        query = text(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND backend_type = 'client backend' AND pid <> pg_backend_pid() "
            "AND xact_start < :horizon"
        )
        while time.monotonic() < deadline:
            with self.hub.db.single_read() as session:
                if not session.execute(query, {"horizon": horizon}).scalar_one():
                    return
            time.sleep(0.1)
        log.warning("export %s: transactions older than its start still open", self.job.id)
