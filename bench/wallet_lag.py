"""The wallet push lag of ``bench/healthbook.py``: writes at a steady rate, each matched with
the push that carried it to a real wallet intake (``scripts/wallet_receiver.py``), through a
real Celery worker (or the embedded relay). See ``bench/healthbook.py`` for the options."""

from __future__ import annotations

import argparse
import base64
import contextlib
import subprocess
import sys
import time
import uuid
import zlib
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson

if __package__ in (None, ""):  # run as a script: make ``bench`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.generate import PatientCopy
from bench.ingest import _diagnostics, free_port, log
from bench.load import _stop_group
from bench.search import Api, Running, _connect, percentile

PUSH = "wallet-push"
RECEIVER = Path(__file__).resolve().parent.parent / "scripts" / "wallet_receiver.py"
MARKER_SYSTEM = "urn:ietf:rfc:3986"


class Wallet:
    """``scripts/wallet_receiver.py`` as a process of its own on a free port, trusting the
    issuer ``issuer`` (the server's base URL); stopped with :meth:`stop`."""

    def __init__(self, issuer: str, folder: Path) -> None:
        port = free_port()
        self.url = f"http://127.0.0.1:{port}/intake"
        self.log_path = folder / "wallet.log"
        with self.log_path.open("wb") as output:
            self.process = subprocess.Popen(
                [sys.executable, str(RECEIVER), "--port", str(port), "--trust", issuer],
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60)

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.process.poll() is None and time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if self.client.get("/received").status_code == 200:
                    return
            time.sleep(0.1)  # polling the receiver's port with a deadline
        raise SystemExit(f"the wallet receiver did not start:\n{self.log_path.read_text()}")

    def received(self) -> dict[str, Any]:
        response = self.client.get("/received")
        response.raise_for_status()
        return dict(response.json())

    def stop(self) -> None:
        self.client.close()
        _stop_group(self.process)


@dataclass
class Write:
    cccd: str
    marker: str  # the Observation's identifier, looked for in the pushed cards
    answered: float  # wall clock (the receiver's received_at is one too, same machine)
    seconds: float
    status: int


def vital_signs(patient_id: str, marker: str, beats: int) -> bytes:
    """A heart-rate Observation of now, identified by ``marker``."""
    now = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    category = "http://terminology.hl7.org/CodeSystem/observation-category"
    observation = {
        "resourceType": "Observation",
        "identifier": [{"system": MARKER_SYSTEM, "value": marker}],
        "status": "final",
        "category": [{"coding": [{"system": category, "code": "vital-signs"}]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
        "subject": {"reference": f"Patient/{patient_id}"},
        "effectiveDateTime": now,
        "valueQuantity": {
            "value": beats,
            "unit": "/min",
            "system": "http://unitsofmeasure.org",
            "code": "/min",
        },
    }
    return orjson.dumps(observation)


def post_writes(
    api: Api, patients: list[tuple[PatientCopy, str]], rate: float, seconds: float
) -> list[Write]:
    """One write every ``1 / rate`` s for ``seconds``, each for the next sampled patient."""
    count = max(1, round(rate * seconds))
    if count > len(patients):
        log(f"{count} writes over {len(patients)} patients: some are written twice")
    writes = []
    started = time.monotonic()
    for index in range(count):
        wait = started + index / rate - time.monotonic()
        if wait > 0:
            time.sleep(wait)  # the fixed arrival rate, not a synchronisation
        copy, patient_id = patients[index % len(patients)]
        marker = f"urn:uuid:{uuid.uuid4()}"
        body = vital_signs(patient_id, marker, 60 + index % 40)
        sent = time.perf_counter()
        try:
            response = api.request("POST", "/fhir/Observation", content=body)
            status, problem = response.status_code, _diagnostics(response)[:200]
        except httpx.HTTPError as exc:
            status, problem = 0, type(exc).__name__
        if status != 201 and not any(w.status != 201 for w in writes):
            log(f"a write failed, the first: HTTP {status}: {problem}")
        writes.append(Write(copy.cccd, marker, time.time(), time.perf_counter() - sent, status))
    return writes


def card_payloads(push: dict[str, Any]) -> bytes:
    """The pushed cards' payloads (raw DEFLATE, as the receiver checked them), joined."""
    payloads = []
    for jws in push.get("credentials") or []:
        part = str(jws).split(".")[1]
        payloads.append(
            zlib.decompress(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)), -15)
        )
    return b"\n".join(payloads)


@dataclass
class Matched:
    lags: list[float]  # seconds, one per write a push carried
    missing: int  # writes (answered 201) no push has carried yet
    stale: int  # pushes after a write, for her CCCD, that did not carry it
    earlier: int  # pushes for a written CCCD before her first write (owed before this run)
    after: int  # pushes for a written CCCD after the one carrying her last write
    other: int  # pushes for CCCDs this run did not write


def match_pushes(
    writes: list[Write], accepted: list[dict[str, Any]], payloads: dict[str, bytes]
) -> Matched:
    """Each stored write to the first push for her CCCD whose cards carry its identifier."""
    by_cccd: dict[str, list[dict[str, Any]]] = {}
    for push in accepted:
        by_cccd.setdefault(push["cccd"], []).append(push)
    for pushes in by_cccd.values():
        pushes.sort(key=lambda p: p["received_at"])
    lags, missing, stale = [], 0, set()
    accounted: set[str] = set()
    for write in writes:
        if write.status != 201:
            continue
        later = [p for p in by_cccd.get(write.cccd, []) if p["received_at"] >= write.answered]
        carrier = next((p for p in later if write.marker.encode() in payloads[p["key"]]), None)
        if carrier is None:
            missing += 1
            continue
        lags.append(carrier["received_at"] - write.answered)
        accounted.add(carrier["key"])
        stale.update(p["key"] for p in later if p["received_at"] < carrier["received_at"])
    first_write: dict[str, float] = {}
    for write in writes:
        first_write.setdefault(write.cccd, write.answered)
    earlier = after = other = 0
    for cccd, pushes in by_cccd.items():
        for push in pushes:
            if cccd not in first_write:
                other += 1
            elif push["key"] not in accounted | stale:
                if push["received_at"] < first_write[cccd]:
                    earlier += 1
                else:
                    after += 1
    return Matched(lags, missing, len(stale - accounted), earlier, after, other)


def owed_pushes(url: str) -> int:
    """Pushes the database still owes (or has sent without recording the answer yet)."""
    with _connect(url) as conn:
        return int(
            conn.execute("SELECT count(*) FROM wallet_push WHERE outcome IS NULL").fetchone()[0]
        )


def measure_push_lag(
    url: str,
    running: Running,
    wallet: Wallet,
    patients: list[tuple[PatientCopy, str]],
    args: argparse.Namespace,
) -> dict[str, Any]:
    log(f"wallet push: {args.push_rate:g} writes/s for {args.push_seconds:g} s ...")
    started = time.monotonic()
    writes = post_writes(running.api, patients, args.push_rate, args.push_seconds)
    elapsed = time.monotonic() - started
    if any(w.status >= 500 for w in writes):
        log(f"server log:\n{running.server.log_tail()}")
    log(f"waiting (at most {args.push_drain_seconds:g} s) for the pushes of {len(writes)} writes")
    payloads: dict[str, bytes] = {}
    deadline = time.monotonic() + args.push_drain_seconds
    while True:
        received = wallet.received()
        for push in received["accepted"]:
            if push["key"] not in payloads:
                payloads[push["key"]] = card_payloads(push)
        matched = match_pushes(writes, received["accepted"], payloads)
        if not matched.missing or time.monotonic() >= deadline:
            break
        time.sleep(1.0)  # polling the receiver with a deadline
    # the worker is stopped after this: first let it record the answers it got
    settle = max(deadline, time.monotonic() + 30)
    while (owed := owed_pushes(url)) and time.monotonic() < settle:
        time.sleep(1.0)  # polling the database with a deadline
    lags = sorted(matched.lags)
    answered = sorted(w.seconds * 1000 for w in writes)
    figures: dict[str, Any] = {
        "rate": args.push_rate,
        "seconds": args.push_seconds,
        "writes_per_s": len(writes) / elapsed,
        "debounce_s": args.wallet_debounce,
        "relay": f"celery worker, {args.broker}" if args.broker else "embedded relay thread",
        "writes": len(writes),
        "write_errors": sum(1 for w in writes if w.status != 201),
        "write_p50_ms": percentile(answered, 0.50),
        "write_p95_ms": percentile(answered, 0.95),
        "pushes_received": len(received["accepted"]),
        "pushed_writes": len(lags),
        "repeats": len(received["repeats"]),
        "refusals": len(received["refused"]),
        "refusal_reasons": sorted({r["reason"] for r in received["refused"]}),
        "stale": matched.stale,
        "earlier": matched.earlier,
        "after": matched.after,
        "other": matched.other,
        "missing": matched.missing,
        "owed_at_end": owed,
    }
    if lags:
        figures |= {
            "lag_p50_s": percentile(lags, 0.50),
            "lag_p95_s": percentile(lags, 0.95),
            "lag_p99_s": percentile(lags, 0.99),
            "lag_max_s": lags[-1],
        }
    return figures
