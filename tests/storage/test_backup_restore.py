"""Backup and restore as docs/operations.md tells an operator to do them, checked end to end.

A hub is filled the way a real one is: migrated, the demo network, three Synthea Bundles posted
over the FHIR API, reads, an update, a delete, and a notification still owed to a receiver that
was down. It is backed up with the guide's command (``pg_dump -Fc`` for PostgreSQL, ``VACUUM
INTO`` while the hub has it open for SQLite), restored into a fresh database, and a hub pointed
at the copy must hold every row of every table as it was, keep an intact audit chain of the
same length, accept the tokens it signed before the backup (same key-encryption key), relay
the owed notification again under the same idempotency key, and take new writes.

The commands run here are the ones the guide prints; the first test checks that the guide still
says them. The last two copy a folder object store with the guide's rsync command.
"""

from __future__ import annotations

import base64
import gzip
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr
from sqlalchemy import MetaData, select, text
from sqlalchemy.engine import make_url

from emr_hub.config import Settings
from emr_hub.demo import load_demo
from emr_hub.errors import FhirError
from emr_hub.hub import Hub
from emr_hub.main import create_app
from emr_hub.outbox import relay_pending, utcnow
from emr_hub.referrals.enforcement import install as install_referral_rules
from emr_hub.security import install as install_security
from emr_hub.security.audit.log import Verification, verify
from emr_hub.security.clients import get_client
from emr_hub.security.keys import public_jwks, signing_key
from emr_hub.security.scopes import ScopeSet
from emr_hub.security.sealing import KEK_FILE_NAME, SealingError
from emr_hub.security.tokens import issue_access_token, verify_access_token
from emr_hub.subscriptions import install as install_subscriptions
from storage.objects import FileObjectStore
from storage.tables import OutboxMessage, ResourceHistoryRow, ResourceRow
from tests.conftest import POSTGRES_ADMIN_URL, fresh_postgres_database, service_missing
from tests.fhir.conftest import Api
from tests.processes import EMR_HUB, ROOT, wait_for
from tests.receiver import Receiver

GUIDE = ROOT / "docs" / "operations.md"
FIXTURES = ROOT / "tests" / "fixtures"
BUNDLES = (
    "00-hospital-information.json",
    "00-practitioner-information.json",
    "02-1484a42d-0eaf-4654-9cbf-6b050a5cd73b.json",
)
CLIENT = "bach-mai"
LAB = "Organization/backup-test-lab"
"""The owner of the Task the test's Subscription watches (no demo Subscription matches it)."""

# What the guide tells the operator to run; the test runs exactly these.
PG_DUMP = ("pg_dump", "-Fc")
PG_RESTORE = ("pg_restore", "--no-owner", "--single-transaction", "--exit-on-error")
SQLITE_COPY = (
    'import sqlite3, sys; sqlite3.connect(sys.argv[1]).execute("VACUUM INTO ?", (sys.argv[2],))'
)
RSYNC = ("rsync", "-a", "--exclude=.*.tmp")
AUDIT_HEAD = "SELECT last_seq, last_hash FROM audit_chain_head"
AUDIT_RECORD = "SELECT hash FROM audit_event WHERE seq = "
RETIRE_KEYS = (
    "UPDATE signing_key SET active = false, sealed_private = NULL, private_jwk = NULL WHERE active"
)

FOLDER_OBJECTS = {
    "exports/job-1/output-Patient-00001.ndjson": (
        gzip.compress(b'{"resourceType":"Patient"}\n'),
        "application/fhir+ndjson",
        "gzip",
    ),
    "imaging/1.2.840/1.2.841/1.2.842.dcm": (b"DICM" * 64, "application/dicom", None),
}
"""Objects as the hub stores them: an export file (gzip'ed, served as such) and an image."""


@dataclass
class Before:
    """What the original hub held or did before the backup."""

    rows: dict[str, list[tuple[Any, ...]]]
    audit: Verification
    head: tuple[int, str]
    """The audit chain's head, saved outside the database just before the backup."""
    token: str
    kid: str
    jwks: dict[str, Any]
    owed_message: str
    reads: dict[str, dict[str, Any]]


# ------------------------------------------------------------------------------- the tests
def test_the_guide_gives_the_commands_this_test_runs() -> None:
    guide = GUIDE.read_text("utf-8")
    commands = (" ".join(PG_DUMP), " ".join(PG_RESTORE), SQLITE_COPY, AUDIT_HEAD, AUDIT_RECORD)
    commands += (RETIRE_KEYS,)
    for command in (*commands, "rsync -a --exclude='.*.tmp'"):
        assert command in guide, f"docs/operations.md no longer says {command!r}"


def test_postgres_dump_restored_into_a_fresh_database(tmp_path: Path) -> None:
    for tool in ("pg_dump", "pg_restore"):
        if shutil.which(tool) is None:
            service_missing(f"{tool} is not on PATH")
    kek = base64.b64encode(os.urandom(32)).decode()
    receiver = Receiver()
    receiver.start()
    dump = tmp_path / "emr_hub.dump"
    try:
        with fresh_postgres_database() as source_url:
            original = Hub.from_settings(_settings(tmp_path / "a", source_url, kek), migrate=True)
            try:
                before = _fill(original, receiver)
                _run([*PG_DUMP, f"--file={dump}", *_libpq(source_url)])
                _delivered_after_the_backup(original, receiver, before)
            finally:
                original.close()
        # The source database is gone: the dump is all there is.
        with fresh_postgres_database() as restored_url:
            _run([*PG_RESTORE, *_libpq(restored_url), str(dump)])
            settings = _settings(tmp_path / "b", restored_url, kek)
            _check_restored(settings, before, receiver)
            _lost_key_encryption_key(settings, before)
    finally:
        receiver.stop()


def test_sqlite_copied_online_and_restored_elsewhere(tmp_path: Path) -> None:
    receiver = Receiver()
    receiver.start()
    live, copy = tmp_path / "live" / "data", tmp_path / "copy.db"
    try:
        original = Hub.from_settings(_settings(live.parent, None), migrate=True)
        try:
            before = _fill(original, receiver)
            # The hub still has the file open, its recent commits in the WAL beside it.
            assert (live / "emr_hub.db-wal").exists()
            _run([sys.executable, "-c", SQLITE_COPY, str(live / "emr_hub.db"), str(copy)])
            _delivered_after_the_backup(original, receiver, before)
        finally:
            original.close()
        # Another machine: the copy becomes its database, the KEK file is brought apart.
        restored = tmp_path / "restored" / "data"
        restored.mkdir(parents=True)
        shutil.copyfile(copy, restored / "emr_hub.db")
        shutil.copyfile(live / KEK_FILE_NAME, restored / KEK_FILE_NAME)
        shutil.rmtree(live.parent)
        settings = _settings(restored.parent, None)
        _check_restored(settings, before, receiver)
        _lost_key_encryption_key(settings, before)
    finally:
        receiver.stop()


def test_a_folder_store_copied_with_rsync_gives_back_every_object(tmp_path: Path) -> None:
    source, copy = _folder_store_copied(tmp_path)
    for key, (data, _, _) in FOLDER_OBJECTS.items():
        assert b"".join(copy.get(key)) == data
        assert copy.stat(key).sha256_hex == source.stat(key).sha256_hex


@pytest.mark.xfail(
    strict=True,
    reason="the folder store ties a sidecar to its data file's inode, which no copy keeps: "
    "a restored object reads as application/octet-stream without its Content-Encoding",
)
def test_a_folder_store_copied_with_rsync_keeps_each_objects_type(tmp_path: Path) -> None:
    _, copy = _folder_store_copied(tmp_path)
    for key, (_, content_type, encoding) in FOLDER_OBJECTS.items():
        stored = copy.stat(key)
        assert (stored.content_type, stored.content_encoding) == (content_type, encoding)


def _folder_store_copied(tmp: Path) -> tuple[FileObjectStore, FileObjectStore]:
    """A folder store with objects, copied with the guide's rsync command."""
    if shutil.which("rsync") is None:
        pytest.skip("rsync is not installed")
    source = FileObjectStore(tmp / "objects")
    source.ensure_ready()
    for key, (data, content_type, encoding) in FOLDER_OBJECTS.items():
        source.put(key, data, content_type=content_type, content_encoding=encoding)
    _run([*RSYNC, f"{source.root}/", f"{tmp / 'restored'}/"])
    return source, FileObjectStore(tmp / "restored")


# --------------------------------------------------------------------------- the original
def _fill(hub: Hub, receiver: Receiver) -> Before:
    """Give the hub the state a real one has; return what a restore must bring back."""
    # As `emr-hub demo` does: access grants, then the referral rules the letters must pass.
    install_security(hub.settings)
    install_referral_rules()
    install_subscriptions(hub.settings)
    load_demo(hub)
    token = _token(hub)
    receiver.status = 503  # the hospital's endpoint is down: its notification stays owed
    reads: dict[str, dict[str, Any]] = {}
    with TestClient(create_app(hub)) as client:
        api = Api(client, token)
        written: list[str] = []
        for name in BUNDLES:
            answer = api.post("", orjson.loads((FIXTURES / name).read_bytes()))
            assert answer.status_code == 200, answer.text
            written += [entry["response"]["location"] for entry in answer.json()["entry"]]
        patient = next(loc for loc in written if loc.startswith("Patient/")).split("/_history")[0]
        observation = next(loc for loc in written if loc.startswith("Observation/"))
        # Reads and a search leave audit records; an update and a delete leave history.
        assert api.get("/Patient/demo-nguyen-thi-lan").status_code == 200
        assert api.get("/Patient", params={"_id": patient.split("/")[1]}).status_code == 200
        body = api.get(f"/{patient}").json()
        body["gender"] = "other"
        assert api.put(f"/{patient}", body).status_code == 200
        deleted = observation.split("/_history")[0]
        assert api.delete(f"/{deleted}").status_code in (200, 204)
        subscription = {
            "resourceType": "Subscription",
            "status": "requested",
            "reason": "Tasks for the lab",
            "criteria": f"Task?owner={LAB}",
            "channel": {"type": "rest-hook", "endpoint": receiver.url("/hook")},
        }
        assert api.post("/Subscription", subscription).status_code == 201
        task = {"resourceType": "Task", "status": "requested", "intent": "order"}
        assert api.post("/Task", {**task, "owner": {"reference": LAB}}).status_code == 201
        wait_for(lambda: _attempts(hub) > 0, 15, "the notification's first attempt")
        for path in ("/Patient/demo-nguyen-thi-lan", f"/{patient}", "/Organization/bach-mai"):
            answer = api.get(path)
            assert answer.status_code == 200, answer.text
            reads[path] = answer.json()
    # The app (and its relay thread) has stopped: the database holds still for the backup.
    with hub.db.snapshot() as session:
        owed = session.execute(select(OutboxMessage.id, OutboxMessage.delivered_at)).one()
    assert owed.delivered_at is None
    audit = verify(hub.db)
    assert audit.intact and audit.checked > 10
    with hub.db.snapshot() as session:
        last_seq, last_hash = session.execute(text(AUDIT_HEAD)).one()
    return Before(
        rows=_all_rows(hub),
        audit=audit,
        head=(int(last_seq), str(last_hash)),
        token=token,
        kid=str(signing_key(hub).kid),
        jwks=public_jwks(hub),
        owed_message=owed.id,
        reads=reads,
    )


def _delivered_after_the_backup(hub: Hub, receiver: Receiver, before: Before) -> None:
    """The receiver comes back and the original delivers what it owed, after the backup."""
    receiver.status = 200
    relay_pending(hub, now=utcnow() + timedelta(hours=1))
    assert receiver.accepted_keys() == [before.owed_message]


# --------------------------------------------------------------------------- the restored
def _check_restored(settings: Settings, before: Before, receiver: Receiver) -> None:
    # The operator's drill: migrate (a no-op at the same version), then verify the chain.
    env = _cli_env(settings)
    _run([EMR_HUB, "migrate"], env=env)
    checked = _run([EMR_HUB, "audit", "verify"], env=env)
    assert f"audit chain intact: {before.audit.checked} records" in checked
    hub = Hub.from_settings(settings)
    try:
        rows = _all_rows(hub)
        assert rows.keys() == before.rows.keys()
        for table, content in before.rows.items():
            assert rows[table] == content, f"table {table} differs after the restore"
        assert len(rows["resource"]) > 100 and len(rows["resource_history"]) > len(rows["resource"])
        audit = verify(hub.db)
        assert audit.intact
        assert (audit.checked, audit.last_hash) == (before.audit.checked, before.audit.last_hash)
        seq, saved_hash = before.head
        with hub.db.snapshot() as session:
            assert session.execute(text(AUDIT_RECORD + str(seq))).scalar_one() == saved_hash
        # The same key-encryption key opens the restored signing key: same signer, same JWKS,
        # and a token signed before the backup is accepted.
        assert signing_key(hub).kid == before.kid
        assert public_jwks(hub) == before.jwks
        assert verify_access_token(hub, before.token).client_id == CLIENT
        # The notification owed at the backup is owed again, with the same idempotency key:
        # a receiver that remembers keys takes it once.
        relay_pending(hub, now=utcnow() + timedelta(hours=1))
        assert receiver.accepted_keys() == [before.owed_message, before.owed_message]
        with TestClient(create_app(hub)) as client:
            assert client.get("/readyz").status_code == 200
            api = Api(client, before.token)
            for path, body in before.reads.items():
                answer = api.get(path)
                assert answer.status_code == 200, answer.text
                assert answer.json() == body
            # Sequences came back with the rows: a new write takes the next keys.
            last_seq = max(row[0] for row in before.rows["resource_history"])
            created = api.post("/Patient", {"resourceType": "Patient", "gender": "female"})
            assert created.status_code == 201, created.text
        with hub.db.snapshot() as session:
            newest = session.scalars(
                select(ResourceHistoryRow).order_by(ResourceHistoryRow.seq.desc()).limit(1)
            ).one()
            assert newest.seq is not None and newest.seq > last_seq
            assert session.get(ResourceRow, ("Patient", newest.id)) is not None
        after = verify(hub.db)
        assert after.intact and after.checked > before.audit.checked
    finally:
        hub.close()


def _lost_key_encryption_key(settings: Settings, before: Before) -> None:
    """A restore without the KEK: nothing can sign until the keys are retired (the guide's
    statement), after which the hub makes a new key and the old tokens are refused."""
    other = base64.b64encode(os.urandom(32)).decode()
    hub = Hub.from_settings(settings.model_copy(update={"key_encryption_key": SecretStr(other)}))
    try:
        with pytest.raises(SealingError):
            signing_key(hub)
        with hub.db.transaction() as session:
            session.execute(text(RETIRE_KEYS))
        assert signing_key(hub).kid != before.kid
        with pytest.raises(FhirError):
            verify_access_token(hub, before.token)
        assert verify_access_token(hub, _token(hub)).client_id == CLIENT
        assert [key["kid"] for key in public_jwks(hub)["keys"]] == [signing_key(hub).kid]
    finally:
        hub.close()


# ------------------------------------------------------------------------------- helpers
def _settings(root: Path, database_url: str | None, kek: str | None = None) -> Settings:
    """A hub's settings with its state under ``root/data``; ``kek`` given as the setting (the
    production shape), else the file the hub makes under DATA_DIR (the embedded one)."""
    extra: dict[str, Any] = {"key_encryption_key": kek} if kek else {}
    return Settings(data_dir=root / "data", database_url=database_url, **extra)


def _cli_env(settings: Settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EMR_HUB_")}
    env["EMR_HUB_DATA_DIR"] = str(settings.data_dir)
    env["EMR_HUB_DATABASE_URL"] = settings.effective_database_url
    if settings.key_encryption_key is not None:
        env["EMR_HUB_KEY_ENCRYPTION_KEY"] = settings.key_encryption_key.get_secret_value()
    return env


def _token(hub: Hub) -> str:
    with hub.db.transaction() as session:  # a snapshot's rollback would expire the row
        client = get_client(session, CLIENT)
    assert client is not None
    return issue_access_token(hub, client, ScopeSet.parse("system/*.cruds"))[0]


def _attempts(hub: Hub) -> int:
    with hub.db.snapshot() as session:
        return sum(session.scalars(select(OutboxMessage.attempts)))


def _all_rows(hub: Hub) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table (alembic's included), in primary-key order."""
    metadata = MetaData()
    metadata.reflect(bind=hub.db.engine)
    found = {}
    with hub.db.engine.connect() as conn:
        for name, table in sorted(metadata.tables.items()):
            order = list(table.primary_key.columns)
            assert order, f"table {name} has no primary key to order it by"
            found[name] = [tuple(row) for row in conn.execute(select(table).order_by(*order))]
    return found


def _libpq(url: str) -> list[str]:
    """The connection flags of pg_dump and pg_restore for a SQLAlchemy URL."""
    parts = make_url(url)
    flags = [f"--host={parts.host}", f"--port={parts.port or 5432}", f"--dbname={parts.database}"]
    return [*flags, f"--username={parts.username}"] if parts.username else flags


def _run(command: list[str], env: dict[str, str] | None = None) -> str:
    password = make_url(POSTGRES_ADMIN_URL).password
    if password and env is None:  # pg_dump and pg_restore take it from the environment
        env = {**os.environ, "PGPASSWORD": str(password)}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, f"{command[0]} failed: {done.stderr[-3000:]}"
    return done.stdout
