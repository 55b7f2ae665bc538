"""Every HTTP request counted and timed, by route template (never the URL).

A plain ASGI middleware, outermost, so it times the audit record's commit too and sees the
status that was really sent (the audit middleware may replace an answer by a 503). Its cost
is a few dictionary lookups and three updates of this process's samples: the labelled
children are kept in dictionaries of their own, so prometheus-client's ``labels()`` (a lock
and a tuple of strings) runs once per label set, not once per request.
"""

from __future__ import annotations

import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from emr_hub.metrics.definitions import HTTP_LATENCY, HTTP_REQUESTS

UNMATCHED = "unmatched"
"""The route label of a request no route answered (an unknown path)."""
NO_ORGANIZATION = "none"
"""The organization label of a request without a verified token."""
CITIZEN = "citizen"
"""The organization label of a citizen's request (a person, not a client of an Organization)."""
OTHER_METHOD = "other"
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
PRINCIPAL = "principal"
"""The key of ``scope["state"]`` (``request.state.principal``) where a route that is not
audited leaves its principal."""


class RequestMetrics:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._counted: dict[tuple[str, str, int, str], Any] = {}
        self._timed: dict[tuple[str, str], Any] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the server answers for an error no one handled

        async def send_observed(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_observed)
        finally:
            self.record(scope, status, time.perf_counter() - started)

    def record(self, scope: Scope, status: int, seconds: float) -> None:
        template = getattr(scope.get("route"), "path", UNMATCHED)
        method = scope["method"]
        if method not in METHODS:
            method = OTHER_METHOD
        counted_key = (template, method, status, organization(scope))
        counted = self._counted.get(counted_key)
        if counted is None:
            counted = self._counted[counted_key] = HTTP_REQUESTS.labels(
                template, method, str(status), counted_key[3]
            )
        counted.inc()
        timed_key = (template, method)
        timed = self._timed.get(timed_key)
        if timed is None:
            timed = self._timed[timed_key] = HTTP_LATENCY.labels(template, method)
        timed.observe(seconds)


def organization(scope: Scope) -> str:
    """``Organization/<id>`` of the request's principal: the one its audit trail recorded, or
    the one a route that is not audited left in the request's state."""
    state = scope.get("state")
    if not state:
        return NO_ORGANIZATION
    trail = state.get("audit_trail")
    principal = getattr(trail, "principal", None) or state.get(PRINCIPAL)
    if principal is None:
        return NO_ORGANIZATION
    if principal.organization:
        return str(principal.organization)
    return CITIZEN if principal.is_citizen else NO_ORGANIZATION
