"""The per-process cache of values read from the database (the signing keys' rings)."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

from emr_hub.security.refreshed import Refreshed


def test_a_value_is_kept_for_its_interval_and_forgetting_reloads_it() -> None:
    loads: list[int] = []

    def load() -> int:
        loads.append(len(loads))
        return len(loads)

    value: Refreshed[int] = Refreshed()
    assert value.get(3600, load) == 1
    assert value.get(3600, load) == 1  # within the interval: kept
    assert value.get(0, load) == 2  # older than asked: read again
    value.forget()
    assert value.get(3600, load) == 3
    assert loads == [0, 1, 2]


def test_threads_asking_at_once_wait_for_one_load() -> None:
    started, release = threading.Event(), threading.Event()
    loads: list[str] = []

    def load() -> str:
        loads.append("load")
        started.set()
        release.wait(30)  # held until every other thread is waiting on the first load
        return "key"

    value: Refreshed[str] = Refreshed()
    with ThreadPoolExecutor(8) as pool:
        first = pool.submit(value.get, 3600, load)
        assert started.wait(30)
        others = [pool.submit(value.get, 3600, load) for _ in range(7)]
        release.set()
        results = [first.result(30), *(other.result(30) for other in others)]
    assert results == ["key"] * 8
    assert loads == ["load"]
