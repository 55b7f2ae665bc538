"""Values read from the database and kept for a while by each process: the signing keys of
tokens (:mod:`.keys`) and of health cards (:mod:`emr_hub.healthbook.card_keys`).

Each is kept per :class:`~storage.db.Database` (a process may hold several hubs, as the tests
do) and read again once older than the refresh interval, by one thread at a time while the
others go on with the value they have.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar
from weakref import WeakKeyDictionary

from storage.db import Database

T = TypeVar("T")


class Refreshed(Generic[T]):
    """One value, loaded on first use and again when it is older than asked."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._value: T | None = None
        self._loaded = float("-inf")

    def get(self, seconds: float, load: Callable[[], T]) -> T:
        value = self._value
        if value is not None and time.monotonic() - self._loaded < seconds:
            return value
        with self._lock:  # the others wait for this load rather than all loading at once
            if self._value is None or time.monotonic() - self._loaded >= seconds:
                self._value = load()
                self._loaded = time.monotonic()
            return self._value

    def forget(self) -> None:
        """Load again at the next use (after a change this process made itself)."""
        self._loaded = float("-inf")


class PerDatabase(Generic[T]):
    """A ``make()`` of its own for each database, made on first use."""

    def __init__(self, make: Callable[[], T]) -> None:
        self._make = make
        self._lock = threading.Lock()
        self._values: WeakKeyDictionary[Database, T] = WeakKeyDictionary()

    def of(self, db: Database) -> T:
        with self._lock:
            value = self._values.get(db)
            if value is None:
                value = self._values[db] = self._make()
            return value
