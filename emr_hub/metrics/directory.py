"""Where the processes of ``emr-hub serve`` and ``emr-hub worker`` write their samples.

prometheus-client's multiprocess mode keeps each process's samples in memory-mapped files in
the folder named by ``PROMETHEUS_MULTIPROC_DIR``; the process answering a scrape merges them.
The library reads the variable when it is first imported, so :func:`prepare` runs at the
start of ``serve`` and ``worker``, before uvicorn spawns its workers or Celery forks its pool.

* Set by the operator: the folder is used as it is (the operator empties it between runs, as
  the library asks).
* Otherwise each command gets a folder of its own, ``<root>/<command>-<pid>``, under
  ``EMR_HUB_METRICS_DIR`` (default ``DATA_DIR/metrics``), made empty at start. The command
  holds a lock on ``<root>/<command>-<pid>.lock`` while it (or any process it forked) lives;
  a command starting next to it removes the folders whose lock nobody holds, so the folders
  of processes that ended, however they ended, do not pile up. A ``serve`` and a ``worker``
  sharing a data directory therefore never wipe each other's files.

A process leaving cleanly marks itself dead (:func:`mark_dead`): its per-process gauges
disappear from the next scrape. One killed outright is noticed at scrape time
(:func:`forget_dead_processes`).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import sys
from pathlib import Path
from typing import IO

from emr_hub.config import Settings

ENVIRONMENT = "PROMETHEUS_MULTIPROC_DIR"
MANAGED = "EMR_HUB_METRICS_MANAGED"
"""Set beside ``PROMETHEUS_MULTIPROC_DIR`` when the hub made the folder: only then are its
processes known to be this machine's, whose liveness a scrape may check."""
_LIVE_GAUGES = "gauge_live"

_held: list[IO[str]] = []
"""The open lock file of this process's folder (kept open: closing it would release it)."""


def prepare(settings: Settings, command: str) -> Path:
    """Give this process (and the processes it starts) a folder for their metric files and
    return it; see the module's docstring."""
    given = os.environ.get(ENVIRONMENT)
    if given:
        path = Path(given)
        path.mkdir(parents=True, exist_ok=True)
        _use_files()
        return path
    root = (settings.metrics_dir or settings.data_dir / "metrics").resolve()
    root.mkdir(parents=True, exist_ok=True)
    name = f"{command}-{os.getpid()}"
    _held.append(_lock(root / f"{name}.lock"))
    remove_abandoned(root)
    path = root / name
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir()
    os.environ[ENVIRONMENT] = str(path)
    os.environ[MANAGED] = "1"
    _use_files()
    return path


def _lock(path: Path) -> IO[str]:
    """Hold the lock file at ``path``; the lock is the one on the file the path names now (a
    neighbour removing it as abandoned between our open and our lock makes us take a new one)."""
    while True:
        lock = path.open("a")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            raise RuntimeError(
                f"{path} is held by another process: two machines share the metrics folder "
                f"{path.parent}; give each its own EMR_HUB_METRICS_DIR"
            ) from None
        with contextlib.suppress(FileNotFoundError):
            if os.stat(path).st_ino == os.fstat(lock.fileno()).st_ino:
                return lock
        lock.close()


def remove_abandoned(root: Path) -> None:
    """Remove the folders under ``root`` (and their lock files) whose lock no living process
    holds."""
    names = {p.name for p in root.iterdir() if p.is_dir()}
    names |= {p.stem for p in root.glob("*.lock")}
    for name in names:
        lock_path = root / f"{name}.lock"
        try:
            lock = lock_path.open("a")
        except OSError:
            continue
        with lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # in use
            shutil.rmtree(root / name, ignore_errors=True)
            lock_path.unlink(missing_ok=True)


def _use_files() -> None:
    """If prometheus-client was imported before the variable was set, have the metrics made
    from now on write files too (those made earlier stay in this process's memory)."""
    values = sys.modules.get("prometheus_client.values")
    if values is not None and not getattr(values.ValueClass, "_multiprocess", False):
        values.ValueClass = values.get_value_class()


def folder() -> Path | None:
    """The folder this process writes its samples to; None in single-process mode."""
    given = os.environ.get(ENVIRONMENT)
    return Path(given) if given else None


def mark_dead(pid: int | None = None) -> None:
    """Drop the per-process gauges of ``pid`` (default: this process), which is ending."""
    path = folder()
    if path is None:
        return
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(os.getpid() if pid is None else pid, str(path))


def forget_dead_processes(path: Path) -> None:
    """Drop the per-process gauges of processes that no longer exist (killed without leaving
    cleanly). Only in a folder the hub made: its processes are this machine's."""
    if os.environ.get(MANAGED) != "1":
        return
    seen: set[int] = set()
    for file in path.glob(f"{_LIVE_GAUGES}*_*.db"):
        with contextlib.suppress(ValueError):
            seen.add(int(file.stem.rsplit("_", 1)[1]))
    for pid in seen:
        if not _alive(pid):
            mark_dead(pid)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
