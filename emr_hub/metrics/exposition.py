"""``GET /metrics``: the Prometheus text exposition of this API's processes and of the
database gauges, for the operator.

Who may read it: an access token of an operator client, or the static scrape token
``EMR_HUB_METRICS_TOKEN`` (what Prometheus sends, from ``authorization: credentials_file``).
No token is a 401, a hospital's or a citizen's token a 403, as OperationOutcomes like the rest
of the hub. It is not audited: it discloses no one's data (the audit middleware records FHIR
and token requests only).
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.core import Metric
from prometheus_client.multiprocess import MultiProcessCollector

from emr_hub.config import Settings
from emr_hub.errors import forbidden
from emr_hub.hub import Hub
from emr_hub.metrics import directory
from emr_hub.metrics.database import DatabaseCollector
from emr_hub.security.principal import bearer_token

PATH = "/metrics"
router = APIRouter()


@router.get(PATH, include_in_schema=False)
def metrics(request: Request) -> Response:
    hub: Hub = request.app.state.hub
    authorize(request, hub)
    return Response(generate_latest(registry(hub)), media_type=CONTENT_TYPE_LATEST)


def authorize(request: Request, hub: Hub) -> None:
    """Let the scrape token or an operator's access token through; 401 or 403 otherwise."""
    token = bearer_token(request.headers.get("authorization"))
    if is_scrape_token(hub.settings, token):
        return
    principal = hub.token_cache.verify(token)
    request.state.principal = principal  # the organization label of this request's metrics
    if not principal.is_operator:
        raise forbidden(
            "/metrics is the operator's: use an operator client's token or the scrape token "
            "(EMR_HUB_METRICS_TOKEN)"
        )


def is_scrape_token(settings: Settings, token: str) -> bool:
    """``token`` is the configured scrape token (compared in constant time)."""
    if settings.metrics_token is None:
        return False
    expected = settings.metrics_token.get_secret_value().encode()
    return hmac.compare_digest(token.encode(), expected)


def registry(hub: Hub) -> CollectorRegistry:
    """What one scrape reports: the samples of every process of this ``serve`` (or of this
    one process, without multiprocess mode) and the database gauges."""
    scrape = CollectorRegistry(auto_describe=False)
    processes(scrape)
    scrape.register(DatabaseCollector(hub.db))
    return scrape


def processes(scrape: CollectorRegistry) -> None:
    """Add this command's process samples to ``scrape``: merged from the folder its processes
    write to, or this process's own registry when there is no folder."""
    path = directory.folder()
    if path is None:
        scrape.register(_ThisProcess())
        return
    directory.forget_dead_processes(path)
    MultiProcessCollector(scrape, path=str(path))


class _ThisProcess:
    """The default registry of this process (its metrics, and the process and GC collectors)."""

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterable[Metric]:
        return REGISTRY.collect()
