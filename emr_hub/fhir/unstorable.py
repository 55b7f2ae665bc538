"""Text a database cannot store: the NUL character (U+0000).

PostgreSQL refuses U+0000 in ``text``, ``varchar`` and ``jsonb`` alike, while SQLite stores it,
so a resource holding one would be accepted on one database and fail with a 500 on the other.
The hub refuses it everywhere instead, naming where it is: in a resource (400 from validation,
so in a batch only that entry fails), in a URL's path or query (400 before any route runs).
The audit record of such a request keeps the text with U+FFFD in place of each NUL.

The fast check serialises with orjson (:func:`storage.json_codec.dumps`), which writes U+0000
as the escape ``\\u0000``: a few microseconds for a resource, and the walk that finds the path
runs only when it hits.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl

import orjson
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from emr_hub.errors import Issue, operation_outcome
from storage import json_codec

NUL = "\x00"
REPLACEMENT = "\ufffd"
NUL_ESCAPE = b"\\u0000"
"""How orjson writes U+0000 (the six characters ``\\u0000`` of a string also read so)."""


def may_hold_nul(value: Any) -> bool:
    """Whether ``value`` (parsed JSON) may hold a NUL: False is certain, True is checked by
    :func:`nul_path` (a string holding the six characters ``\\u0000`` also hits)."""
    try:
        return NUL_ESCAPE in json_codec.dumps(value)
    except TypeError:  # what orjson cannot write: walk instead
        return True


def nul_path(value: Any, path: str) -> str | None:
    """The FHIRPath-like location of the first NUL in ``value`` (keys included), or None."""
    if isinstance(value, str):
        return path if NUL in value else None
    if isinstance(value, dict):
        for key, item in value.items():
            if NUL in key:
                return f"{path}.{key.replace(NUL, REPLACEMENT)}"
            found = nul_path(item, f"{path}.{key}")
            if found:
                return found
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found = nul_path(item, f"{path}[{index}]")
            if found:
                return found
    return None


def without_nul(value: Any) -> Any:
    """``value`` with every NUL of its strings and keys replaced by U+FFFD."""
    if isinstance(value, str):
        return value.replace(NUL, REPLACEMENT)
    if isinstance(value, dict):
        return {without_nul(key): without_nul(item) for key, item in value.items()}
    if isinstance(value, list):
        return [without_nul(item) for item in value]
    return value


def url_problem(path: str, query_string: bytes) -> tuple[str, str] | None:
    """(where, message) when the request's path or a query parameter holds a NUL."""
    if NUL in path:
        return "URL path", "The URL's path holds a NUL character (U+0000)"
    if b"%00" not in query_string and b"\x00" not in query_string:
        return None
    for name, value in parse_qsl(query_string.decode("latin-1"), keep_blank_values=True):
        if NUL in name or NUL in value:
            where = name.replace(NUL, REPLACEMENT)
            return where, f"The search parameter {where!r} holds a NUL character (U+0000)"
    return None


class NulGuard:
    """ASGI middleware: a request whose URL holds a NUL gets a 400 OperationOutcome naming
    where, before any route (and so any SQL) runs. Placed inside the audit middleware, so the
    refusal is audited like any other."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            problem = url_problem(scope.get("path", ""), scope.get("query_string", b""))
            if problem is not None:
                where, message = problem
                body = orjson.dumps(operation_outcome([Issue("invalid", message, (where,))]))
                response = Response(body, status_code=400, media_type="application/fhir+json")
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)
