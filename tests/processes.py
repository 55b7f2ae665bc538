"""The hub's own processes started by tests (a Celery worker), and waiting on a condition."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import select

from emr_hub.config import Settings
from emr_hub.hub import Hub
from emr_hub.tasks import celery_app
from storage.tables import OutboxMessage

ROOT = Path(__file__).resolve().parents[1]


def all_delivered(hub: Hub, count: int) -> Callable[[], bool]:
    """A condition: the outbox holds ``count`` messages and every one is delivered."""

    def check() -> bool:
        with hub.db.transaction() as session:
            found = list(session.scalars(select(OutboxMessage)))
        return len(found) == count and all(m.delivered_at is not None for m in found)

    return check


def wait_for(
    condition: Callable[[], bool], seconds: float, what: str, log: Path | None = None
) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            tail = log.read_text(errors="replace")[-3000:] if log and log.exists() else ""
            pytest.fail(f"timed out after {seconds} s waiting for {what}\n{tail}")
        time.sleep(0.05)


class ManagedProcess:
    """A process of the hub in a session of its own (so a signal reaches its children), logging
    to a file that a failed wait shows."""

    def __init__(self, command: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        with log.open("ab") as output:
            self.process = subprocess.Popen(
                command,
                cwd=ROOT,
                env=env,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def kill(self) -> None:
        """SIGKILL the process and its children, as the OOM killer or a host crash."""
        self._signal_group(signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        if self.process.poll() is None:
            self._signal_group(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(10)
        self._signal_group(signal.SIGKILL)  # children left behind, if any
        self.process.wait(10)

    def _signal_group(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signum)


class Worker(ManagedProcess):
    """A ``celery worker`` subprocess in a session of its own (so a kill takes its pool)."""

    def __init__(
        self, settings: Settings, log: Path, *extra: str, env: dict[str, str] | None = None
    ) -> None:
        self.name = f"outbox-test-{uuid.uuid4().hex[:8]}@localhost"
        env = {
            **os.environ,
            "EMR_HUB_DATABASE_URL": str(settings.database_url),
            "EMR_HUB_BROKER_URL": str(settings.broker_url),
            "EMR_HUB_DATA_DIR": str(settings.data_dir),
            "PYTHONUNBUFFERED": "1",
            **(env or {}),
        }
        command = [
            sys.executable, "-m", "celery", "-A", "emr_hub.tasks", "worker",
            "-l", "info", "-c", "2", "--pool", "prefork", "-n", self.name,
            "--without-mingle", "--without-gossip", *extra,
        ]  # fmt: skip
        super().__init__(command, env, log)

    def wait_ready(self, seconds: float = 30) -> None:
        def answers() -> bool:
            if self.process.poll() is not None:
                pytest.fail(f"worker exited with {self.process.returncode}\n{self.log.read_text()}")
            replies = celery_app.control.ping(destination=[self.name], timeout=0.3)
            return any(self.name in reply for reply in replies)

        wait_for(answers, seconds, f"worker {self.name} to answer ping", self.log)


EMR_HUB = str(Path(sys.executable).parent / "emr-hub")


def cli_env(tmp_path: Path, database_url: str, **extra: str) -> dict[str, str]:
    """The environment of an ``emr-hub`` process whose state lives under ``tmp_path``: this
    process's environment without its EMR_HUB_ settings, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EMR_HUB_")}
    env.update(
        EMR_HUB_DATA_DIR=str(tmp_path / "data"),
        EMR_HUB_DATABASE_URL=database_url,
        EMR_HUB_OBJECT_STORE=f"file://{tmp_path / 'objects'}",
        **extra,
    )
    return env


class ApiServer(ManagedProcess):
    """``emr-hub serve`` as a process of its own (migrates, then serves over real HTTP)."""

    def __init__(self, env: dict[str, str], port: int, log: Path) -> None:
        self.base = f"http://127.0.0.1:{port}"
        super().__init__([EMR_HUB, "serve", "--port", str(port)], env, log)

    def wait_ready(self, seconds: float = 30) -> None:
        import httpx

        def answers() -> bool:
            if self.process.poll() is not None:
                pytest.fail(f"serve exited with {self.process.returncode}\n{self.log.read_text()}")
            try:
                return httpx.get(f"{self.base}/healthz", timeout=1).status_code == 200
            except httpx.TransportError:
                return False

        wait_for(answers, seconds, "emr-hub serve to answer /healthz", self.log)
