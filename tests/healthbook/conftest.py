"""The demo network the health-book tests read (Nguyễn Thị Lan's referrals, visits and
re-exam; Ngô Văn Toàn as the other citizen), loaded under the hub's rules, and the app on it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from emr_hub.demo import load_demo
from emr_hub.hub import Hub
from emr_hub.main import create_app


@pytest.fixture
def demo_hub(hub: Hub) -> Hub:
    load_demo(hub)  # under the hub's rules, which it installs
    return hub


@pytest.fixture
def client(demo_hub: Hub) -> Iterator[TestClient]:
    with TestClient(create_app(demo_hub)) as test_client:
        yield test_client
