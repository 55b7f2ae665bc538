"""Shared fixtures: real servers when reachable, a clear skip (or failure under CI) when not."""

from __future__ import annotations

import os
import socket

import pytest

REQUIRE_SERVICES = os.environ.get("EMR_HUB_REQUIRE_SERVICES", "").lower() in {"1", "true", "yes"}


def service_missing(reason: str) -> None:
    """Skip the test with `reason`, or fail it when EMR_HUB_REQUIRE_SERVICES is set."""
    if REQUIRE_SERVICES:
        pytest.fail(f"required service unavailable: {reason}", pytrace=False)
    pytest.skip(reason)


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
