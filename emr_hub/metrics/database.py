"""Gauges read from the database when ``/metrics`` is scraped: the state of the hub, the same
whichever process answers (outbox backlog, break-the-glass openings, export jobs ...).

A feature registers its own with :func:`register_database_gauge` (the export package its
jobs by status), so this package imports no feature. Each gauge is one cheap statement on an
index, run in a read-only snapshot of its own and bounded by the hub's statement timeout; a
gauge whose statement fails is left out of that scrape, logged by its name, and
``emr_hub_metrics_database_up`` is 0.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from prometheus_client.core import GaugeMetricFamily, Metric
from sqlalchemy.exc import SQLAlchemyError

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from storage.db import Database

log = logging.getLogger(__name__)

Samples = Iterable[tuple[Sequence[str], float]]
"""What a gauge's query returns: (label values, value) pairs, one per label set."""


@dataclass(frozen=True)
class DatabaseGauge:
    name: str
    documentation: str
    labels: tuple[str, ...]
    query: Callable[[Session], Samples]


_GAUGES: dict[str, DatabaseGauge] = {}


def register_database_gauge(
    name: str,
    documentation: str,
    query: Callable[[Session], Samples],
    *,
    labels: Sequence[str] = (),
) -> None:
    """Have every scrape report ``name``, the samples ``query(session)`` returns.

    ``query`` runs one indexed statement and returns ``[((label values...), value), ...]``
    (``[((), value)]`` for a gauge without labels). Label values must be bounded (statuses,
    kinds), never ids. Registering the same name again replaces the gauge (an app made twice in
    one process registers twice).
    """
    if not name.startswith("emr_hub_"):
        raise ValueError(f"the hub's metric names start with emr_hub_, not {name!r}")
    _GAUGES[name] = DatabaseGauge(name, documentation, tuple(labels), query)


def registered() -> list[str]:
    return sorted(_GAUGES)


class DatabaseCollector:
    """A prometheus-client collector over the registered gauges, for one scrape."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def describe(self) -> list[Metric]:
        return []  # registering it runs no query

    def collect(self) -> Iterator[Metric]:
        up = 1.0
        for gauge in list(_GAUGES.values()):
            try:
                with self.db.snapshot() as session:
                    samples = list(gauge.query(session))
            except SQLAlchemyError as error:
                up = 0.0
                log.warning(
                    "metrics: the query of %s failed (%s)", gauge.name, type(error).__name__
                )
                continue
            family = GaugeMetricFamily(gauge.name, gauge.documentation, labels=gauge.labels)
            for values, value in samples:
                family.add_metric(list(values), value)
            yield family
        yield GaugeMetricFamily(
            "emr_hub_metrics_database_up",
            "1 when every gauge read from the database answered in this scrape, else 0",
            value=up,
        )
