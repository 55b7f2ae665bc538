"""The allow-list of hosts the hub may send notifications to (server-side request forgery guard).

A Subscription names a URL the hub will call from inside the hospital network; without a list
anyone allowed to write a Subscription could make the hub probe internal services. Entries
(``EMR_HUB_ENDPOINT_ALLOWED_HOSTS``) are host names or IP literals compared exactly (case-
insensitive), ``*.example.vn`` for every subdomain of a domain, or ``*`` for any host. The
check runs when a Subscription is written (a clear 422) and again before each delivery (the
list may have changed since).
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit


@dataclass(frozen=True)
class AllowList:
    exact: frozenset[str]
    suffixes: tuple[str, ...]
    any_host: bool

    @classmethod
    def parse(cls, text: str) -> AllowList:
        entries = [e.strip().lower().strip("[]") for e in text.split(",") if e.strip()]
        return cls(
            exact=frozenset(e for e in entries if not e.startswith("*")),
            suffixes=tuple(e[1:] for e in entries if e.startswith("*.")),
            any_host=("*" in entries),
        )

    def allows_host(self, host: str) -> bool:
        host = host.lower().rstrip(".")
        return self.any_host or host in self.exact or host.endswith(self.suffixes)


_allowed = AllowList.parse("127.0.0.1,localhost,::1")


def configure(text: str) -> None:
    global _allowed
    _allowed = AllowList.parse(text)


def endpoint_problem(url: str, allowed: AllowList | None = None) -> str | None:
    """Why the hub will not send to ``url``, or None when it may."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError:
        return "The endpoint is not a valid URL"
    if parts.scheme.lower() not in ("http", "https"):
        return "The endpoint must be an http:// or https:// URL"
    if not host:
        return "The endpoint URL has no host"
    if parts.username is not None or parts.password is not None:
        return "The endpoint URL must not carry credentials (use channel.header)"
    if not (allowed or _allowed).allows_host(host):
        return (
            f"The hub does not send notifications to host {host!r}: it is not in "
            "EMR_HUB_ENDPOINT_ALLOWED_HOSTS"
        )
    return None
