"""Structured logs without personal data.

Requests are logged by route template (``/fhir/{resource_type}/{resource_id}``), never by
URL: query strings carry identifiers such as CCCDs and names. Log lines are JSON objects.
"""

from __future__ import annotations

import logging
import time
import traceback
from typing import Any

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

access_log = logging.getLogger("emr_hub.access")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update(getattr(record, "fields", {}))
        if record.exc_info and record.exc_info[1] is not None:
            entry["error"] = error_without_message(record.exc_info[1])
        return orjson.dumps(entry).decode()


def error_without_message(error: BaseException) -> str:
    """An exception's types and stack, without its messages: a message may hold what the
    request carried (a name, a CCCD, a SQL statement's values), which never goes to a log."""
    parts: list[str] = []
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        frames = "".join(traceback.format_tb(current.__traceback__))
        kind = type(current)
        parts.append(f"{frames}{kind.__module__}.{kind.__qualname__} (message not logged)")
        current = current.__cause__ or current.__context__
    return "\n--- caused by ---\n".join(parts)


def configure_logging(level: str = "INFO") -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # httpx logs every outbound URL at INFO; deliveries to hospital endpoints stay out of logs
    logging.getLogger("httpx").setLevel(logging.WARNING)


class AccessLog:
    """One log line per request: method, route template, status, time, request id.

    A plain ASGI middleware (Starlette's ``BaseHTTPMiddleware`` runs every request in a task
    of its own and streams the answer through a queue, which costs more than the line).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_logged(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_logged)
        except Exception:
            status = 500  # the error itself is logged, and answered, by the audit middleware
            raise
        finally:
            route = scope.get("route")
            trail = scope.get("state", {}).get("audit_trail")
            access_log.info(
                "request",
                extra={
                    "fields": {
                        "method": scope["method"],
                        "route": getattr(route, "path", "unmatched"),
                        "status": status,
                        "ms": round((time.perf_counter() - started) * 1000, 1),
                        "request_id": getattr(trail, "request_id", None),
                    }
                },
            )
