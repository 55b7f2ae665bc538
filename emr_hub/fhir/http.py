"""HTTP details of the FHIR API: media types, JSON bodies, Prefer, If-Match, responses."""

from __future__ import annotations

import re
from collections.abc import Callable
from email.utils import format_datetime
from typing import Any

import orjson
from fastapi import Request
from fastapi.responses import Response

from emr_hub.errors import FhirError, Issue, bad_request
from emr_hub.fhir.output import present
from emr_hub.fhir.store import Stored
from storage import json_codec

FHIR_JSON = "application/fhir+json"
JSON_TYPES = ("application/fhir+json", "application/json", "text/json", "json")
XML_TYPES = ("application/fhir+xml", "application/xml", "text/xml", "xml")
_ETAG = re.compile(r'(?:W/)?"?(\d{1,18})"?')


def wants_pretty(request: Request) -> bool:
    """Check ``_format`` / ``Accept`` (JSON only) and return whether ``_pretty`` was asked."""
    fmt = request.query_params.get("_format")
    if fmt is not None:
        fmt = fmt.split(";")[0].strip().lower()
        if fmt not in JSON_TYPES:
            raise FhirError(
                406,
                [
                    Issue(
                        "not-supported",
                        f"_format={fmt} is not served: this hub speaks FHIR JSON only",
                        ("_format",),
                    )
                ],
            )
    else:
        accept = request.headers.get("accept", "")
        if accept and _only_xml(accept):
            raise FhirError(
                406,
                [
                    Issue(
                        "not-supported",
                        "Only application/fhir+json is served (Accept asked for XML)",
                    )
                ],
            )
    return request.query_params.get("_pretty", "").lower() == "true"


def _only_xml(accept: str) -> bool:
    kinds = [part.split(";")[0].strip().lower() for part in accept.split(",")]
    return bool(kinds) and all(kind in XML_TYPES for kind in kinds)


def parse_json_body(raw: bytes, content_type: str | None) -> Any:
    media = (content_type or "").split(";")[0].strip().lower()
    if media in XML_TYPES:
        raise FhirError(
            415, [Issue("not-supported", "XML bodies are not accepted: send application/fhir+json")]
        )
    if media and media not in JSON_TYPES and media != "application/json-patch+json":
        raise FhirError(
            415,
            [
                Issue(
                    "not-supported",
                    f"Unsupported Content-Type {media!r}; send application/fhir+json",
                )
            ],
        )
    if not raw.strip():
        raise bad_request(
            "The request body is empty; a FHIR JSON resource was expected", code="required"
        )
    try:
        orjson.loads(raw)  # the gate: what orjson refuses is refused, with its line and column
    except orjson.JSONDecodeError as exc:
        raise bad_request(
            f"Malformed JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}", code="structure"
        ) from None
    return _parse_exact(raw)


def _parse_exact(raw: bytes) -> Any:
    """The body, each decimal keeping its literal (:mod:`storage.json_codec`), and refused
    when an object names one key twice: parsers disagree on which value wins (orjson keeps
    the last, others the first), so a body that reads one way to the hub could read another
    way to the system it came from. orjson can do neither, so the standard library's parser
    reads the body once more (about 5 ms a megabyte) with hooks that can."""
    try:
        return json_codec.loads_unique(raw)
    except json_codec.DuplicateKey as duplicate:
        raise bad_request(
            f"The JSON names the key {duplicate.args[0]!r} twice in one object", code="structure"
        ) from None
    except RecursionError:  # deeper than orjson allows already, so never reached in practice
        raise bad_request("The JSON is nested too deeply", code="structure") from None


async def read_limited(request: Request, limit: int, too_large: Callable[[], Exception]) -> bytes:
    """The body's bytes, counted while they stream: ``too_large()`` is raised as soon as more
    than ``limit`` have arrived (a chunked body declares no length, and is never held whole)."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise too_large()
    return bytes(body)


def public_url(request: Request, base_url: str, **query: str) -> str:
    """The request's URL on the hub's public base (``EMR_HUB_BASE_URL``), for the links of an
    answer: never from the Host header, which the caller chooses. ``query`` replaces those
    query parameters."""
    url = request.url.replace_query_params(**query) if query else request.url
    return f"{base_url.rstrip('/')}{url.path}" + (f"?{url.query}" if url.query else "")


def parse_if_match(header: str | None, expression: str = "If-Match") -> int | None:
    if header is None:
        return None
    match = _ETAG.fullmatch(header.strip())
    if not match:
        raise bad_request(f'Malformed If-Match {header!r}; expected W/"<versionId>"', expression)
    return int(match.group(1))


def prefer_return(request: Request, default: str = "representation") -> str:
    for part in request.headers.get("prefer", "").split(";"):
        key, _, value = part.strip().partition("=")
        if key.strip().lower() == "return":
            value = value.strip().strip('"')
            if value in ("minimal", "representation", "OperationOutcome"):
                return value
    return default


def dump(body: Any, pretty: bool = False) -> bytes:
    return json_codec.dumps(body, option=orjson.OPT_INDENT_2 if pretty else 0)


def fhir_response(
    body: Any | None, status: int = 200, headers: dict[str, str] | None = None, pretty: bool = False
) -> Response:
    """The response of a FHIR body, after the output filters (:mod:`emr_hub.fhir.output`)."""
    content = b"" if body is None else dump(present(body), pretty)
    return Response(
        content,
        status_code=status,
        media_type=FHIR_JSON if body is not None else None,
        headers=headers,
    )


def version_headers(stored: Stored, base_url: str) -> dict[str, str]:
    return {
        "ETag": stored.etag,
        "Last-Modified": format_datetime(stored.last_updated, usegmt=True),
        "Location": f"{base_url}/{stored.resource_type}/{stored.id}/_history/{stored.version_id}",
    }
