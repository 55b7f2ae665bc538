"""What the hub accepts as a Subscription, checked on every write (a write hook).

* ``channel.type`` is ``rest-hook`` (the only channel the hub delivers).
* ``channel.endpoint`` is an http(s) URL on a host of the allow-list (:mod:`.hosts`).
* ``channel.payload`` is absent (an empty notification) or ``application/fhir+json``
  (``application/json`` is accepted as the same); MIME parameters are ignored.
* ``channel.header`` items are ``Name: value`` with a valid header name, none that the hub
  sets itself (``Content-Type``, ``Idempotency-Key``...).
* ``criteria`` is a search the caller could run: a known type, known parameters, and the
  caller's scopes allow reading and searching that type (a Subscription must not reveal more
  than the subscriber's own searches would).
* ``status``: a Subscription posted ``requested`` (or ``active``) is stored ``active``, as the
  R4 workflow has the server activate it; ``off`` and ``error`` are kept as given.

The channel headers are secrets of the subscriber (its endpoint's credentials): they are used,
never shown. Every answer carries them as ``Name: [hidden]`` (:func:`hide_headers`); a
Subscription written back with a header still reading ``[hidden]`` keeps the value stored
under that name, so a client can read, change and put back a Subscription without knowing the
secret.
"""

from __future__ import annotations

import re
from typing import Any

from emr_hub.errors import unprocessable
from emr_hub.fhir.store import FhirStore, Stored
from emr_hub.outbox import RESERVED_HEADERS
from emr_hub.security.principal import Principal
from emr_hub.subscriptions.criteria import parse_criteria
from emr_hub.subscriptions.hosts import endpoint_problem

FHIR_JSON = "application/fhir+json"
PAYLOADS = frozenset({FHIR_JSON, "application/json"})
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def check_subscription(
    store: FhirStore, principal: Principal, current: Stored | None, resource: dict[str, Any]
) -> dict[str, Any]:
    criteria = parse_criteria(str(resource.get("criteria", "")))
    principal.require(criteria.resource_type, "r")
    principal.require(criteria.resource_type, "s")
    channel = resource.get("channel") or {}
    if channel.get("type") != "rest-hook":
        raise unprocessable(
            f"The hub delivers rest-hook Subscriptions only, not {channel.get('type')!r}",
            "Subscription.channel.type",
            code="not-supported",
        )
    endpoint = channel.get("endpoint")
    problem = "A rest-hook needs an endpoint" if not endpoint else endpoint_problem(endpoint)
    if problem:
        raise unprocessable(problem, "Subscription.channel.endpoint")
    if payload_type(resource) not in (None, FHIR_JSON):
        raise unprocessable(
            f"The hub sends no payload or {FHIR_JSON}, not {channel.get('payload')!r}",
            "Subscription.channel.payload",
            code="not-supported",
        )
    headers = _restore_hidden(channel.get("header") or [], current)
    for index, header in enumerate(headers):
        _check_header(header, f"Subscription.channel.header[{index}]")
    if headers:
        resource = {**resource, "channel": {**channel, "header": headers}}
    if resource.get("status") == "requested":
        resource = {**resource, "status": "active"}
    return resource


HIDDEN = "[hidden]"


def hide_headers(subscription: dict[str, Any]) -> dict[str, Any]:
    """The Subscription as it may be shown: each channel header's value hidden."""
    channel = subscription.get("channel")
    headers = channel.get("header") if isinstance(channel, dict) else None
    if not headers:
        return subscription
    hidden = [f"{str(h).split(':', 1)[0].strip()}: {HIDDEN}" for h in headers]
    return {**subscription, "channel": {**channel, "header": hidden}}


def _restore_hidden(headers: list[Any], current: Stored | None) -> list[Any]:
    """Headers written back as ``Name: [hidden]`` take the value stored under that name."""
    stored = headers_of(current.content) if current is not None and current.content else {}
    restored = []
    for index, header in enumerate(headers):
        name, _, value = str(header).partition(":")
        if value.strip() == HIDDEN:
            if name.strip() not in stored:
                raise unprocessable(
                    f"Header {name.strip()} reads {HIDDEN}, but no value is stored under that "
                    "name: send the value",
                    f"Subscription.channel.header[{index}]",
                )
            header = f"{name.strip()}: {stored[name.strip()]}"
        restored.append(header)
    return restored


def payload_type(subscription: dict[str, Any]) -> str | None:
    """The MIME type notifications carry (``application/json`` read as FHIR JSON), or None."""
    payload = (subscription.get("channel") or {}).get("payload")
    if not payload:
        return None
    base = str(payload).split(";", 1)[0].strip().lower()
    return FHIR_JSON if base in PAYLOADS else base


def headers_of(subscription: dict[str, Any]) -> dict[str, str]:
    """``channel.header`` as a mapping (checked when the Subscription was written)."""
    pairs = (str(h).split(":", 1) for h in (subscription.get("channel") or {}).get("header") or [])
    return {name.strip(): value.strip() for name, value in pairs}


def _check_header(header: Any, where: str) -> None:
    name, colon, value = str(header).partition(":")
    if not colon or not _HEADER_NAME.fullmatch(name.strip()):
        raise unprocessable("A channel header is written 'Name: value'", where)
    if name.strip().lower() in RESERVED_HEADERS:
        raise unprocessable(f"The hub sets the {name.strip()} header itself", where)
    if _CONTROL.search(value):
        raise unprocessable("A channel header value cannot hold control characters", where)
