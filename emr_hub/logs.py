"""Structured logs without personal data.

Requests are logged by route template (``/fhir/{resource_type}/{resource_id}``), never by
URL: query strings carry identifiers such as CCCDs and names. Log lines are JSON objects.
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from fastapi import FastAPI, Request
from starlette.responses import Response

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


def install_access_log(app: FastAPI) -> None:
    @app.middleware("http")
    async def log_request(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        started = time.perf_counter()

        def log(status: int) -> None:
            route = request.scope.get("route")
            trail = request.scope.get("state", {}).get("audit_trail")
            access_log.info(
                "request",
                extra={
                    "fields": {
                        "method": request.method,
                        "route": getattr(route, "path", "unmatched"),
                        "status": status,
                        "ms": round((time.perf_counter() - started) * 1000, 1),
                        "request_id": getattr(trail, "request_id", None),
                    }
                },
            )

        try:
            response = await call_next(request)
        except Exception:
            log(500)  # the error itself is logged, and answered, by the audit middleware
            raise
        log(response.status_code)
        return response
