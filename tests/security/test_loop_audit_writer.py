"""The event-loop audit group writer (PostgreSQL): records handed over while a batch commits
go in one later commit together, the chain stays whole, a failure reaches every waiter, and
a waiter that gives up still has its record committed."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from emr_hub.fhir.unstorable import without_nul
from emr_hub.hub import Hub
from emr_hub.security.audit import writer as writer_module
from emr_hub.security.audit.log import EVENT, verify
from emr_hub.security.audit.writer import LoopAuditWriter
from storage.async_db import AsyncConnections
from tests.conftest import make_settings
from tests.security.test_audit import audit_inserts_refused


@pytest.fixture
def hub(tmp_path: Path, postgres_url: str) -> Iterator[Hub]:
    instance = Hub.from_settings(make_settings(tmp_path, postgres_url), migrate=True)
    yield instance
    instance.close()


@asynccontextmanager
async def loop_writer(hub: Hub) -> AsyncIterator[LoopAuditWriter]:
    """A writer on event-loop connections of its own, as the app's startup makes them."""
    connections = AsyncConnections.for_database(hub.db)
    writer = LoopAuditWriter.on(connections)
    assert connections is not None and writer is not None
    try:
        yield writer
    finally:
        await writer.close()
        await connections.close()


def event(request_id: str) -> dict[str, Any]:
    """A minimal AuditEvent, as the middleware hands over (columns are read from it)."""
    return {
        "resourceType": "AuditEvent",
        "id": str(uuid.uuid4()),
        "type": {"code": "rest"},
        "subtype": [{"code": "read"}],
        "action": "R",
        "outcome": "0",
        "recorded": "2026-12-07T10:00:00Z",
        "entity": [{"what": {"identifier": {"value": request_id}}, "type": {"code": "XrequestId"}}],
    }


def recorded(hub: Hub) -> int:
    with hub.db.snapshot() as session:
        return int(session.scalar(select(func.count()).select_from(EVENT)) or 0)


def test_records_handed_over_during_a_commit_share_the_next(
    hub: Hub, monkeypatch: pytest.MonkeyPatch
) -> None:
    sizes: list[int] = []
    later: list[asyncio.Future[None]] = []
    append_on = writer_module.append_on

    async def observed(connection: Any, events: list[dict[str, Any]]) -> list[int]:
        """The real append, noting each commit's size; during the first, 30 more requests
        hand their records over."""
        sizes.append(len(events))
        if len(sizes) == 1:
            later.extend(asyncio.ensure_future(writer.write([event(f"l{n}")])) for n in range(30))
        return await append_on(connection, events)

    monkeypatch.setattr(writer_module, "append_on", observed)

    async def run() -> None:
        nonlocal writer
        async with loop_writer(hub) as writer:
            await writer.write([event("first")])  # alone: it waits for its own commit only
            await asyncio.gather(*later)

    writer: LoopAuditWriter

    asyncio.run(run())
    assert sizes == [1, 30]
    assert recorded(hub) == 31
    assert verify(hub.db).intact


def test_a_failed_commit_reaches_every_waiter_and_the_next_succeeds(hub: Hub) -> None:
    async def run() -> list[BaseException | None]:
        async with loop_writer(hub) as writer:
            with audit_inserts_refused(hub):
                outcomes = await asyncio.gather(
                    *(writer.write([event(f"f{n}")]) for n in range(5)), return_exceptions=True
                )
            await writer.write([event("after")])
            return list(outcomes)

    outcomes = asyncio.run(run())
    assert all(isinstance(outcome, Exception) for outcome in outcomes)
    assert "audit disk full" in str(outcomes[0])
    assert recorded(hub) == 1
    assert verify(hub.db).intact


def test_a_waiter_that_gives_up_still_has_its_record_committed(hub: Hub) -> None:
    async def run() -> None:
        async with loop_writer(hub) as writer:  # its close commits what was handed over
            waiting = asyncio.ensure_future(writer.write([event("gave-up")]))
            await asyncio.sleep(0)  # handed over, its commit under way
            waiting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiting

    asyncio.run(run())
    assert recorded(hub) == 1


def test_no_writer_on_sqlite(tmp_path: Path) -> None:
    instance = Hub.from_settings(make_settings(tmp_path), migrate=True)
    try:
        assert LoopAuditWriter.on(AsyncConnections.for_database(instance.db)) is None
    finally:
        instance.close()


def test_the_database_hashes_every_text_as_the_verifier_does(hub: Hub) -> None:
    """The chain's hashes of the PostgreSQL writers are made in the database (migration 0017)
    over the canonical JSON text the hub made; ``verify`` recomputes them in Python. Texts
    whose bytes differ from their characters (Vietnamese, an emoji), JSON escapes (quotes,
    backslashes, control characters) and a NUL from a hostile URL must hash the same there,
    on both writers (the event loop's and the threads' group commit), in runs of any length."""
    texts = ["Nguyễn Thị Lan", 'a "quoted" \\ path', "tab\there\nline", "🩺", "nul\x00byte"]
    events = [event(text) for text in texts]
    for number, given in enumerate(events):
        given["entity"].append(
            {
                "what": {"reference": f"Patient/p{number}"},
                "type": {"code": "1"},
                "role": {"code": "1"},
                "detail": [{"type": "cccd-person", "valueString": texts[number]}],
            }
        )

    async def run() -> None:
        async with loop_writer(hub) as writer:
            await writer.write(events[:1])
            await writer.write(events[1:3])

    asyncio.run(run())
    hub.audit_writer.submit(events[3:]).result(timeout=30)
    result = verify(hub.db)
    assert result.intact and result.checked == len(events), result
    with hub.db.snapshot() as session:
        stored = session.execute(select(EVENT.c.content).order_by(EVENT.c.seq)).scalars().all()
    assert [s["entity"][0]["what"]["identifier"]["value"] for s in stored] == [
        without_nul(text)
        for text in texts  # a NUL is stored as U+FFFD, the rest as given
    ]
