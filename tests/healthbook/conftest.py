"""The demo network the health-book tests read (Nguyễn Thị Lan's referrals, visits and
re-exam; Ngô Văn Toàn as the other citizen), loaded under the hub's rules, and the app on it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from emr_hub.demo import load_demo
from emr_hub.hub import Hub
from emr_hub.main import create_app
from emr_hub.referrals.enforcement import install as install_referral_rules
from emr_hub.security import install as install_security


def load_demo_network(hub: Hub) -> Hub:
    """Load the demo as ``emr-hub demo`` does: the access grants, then the referral rules."""
    install_security(hub.settings)
    install_referral_rules()
    load_demo(hub)
    return hub


@pytest.fixture
def demo_hub(hub: Hub) -> Hub:
    return load_demo_network(hub)


@pytest.fixture
def client(demo_hub: Hub) -> Iterator[TestClient]:
    with TestClient(create_app(demo_hub)) as test_client:
        yield test_client
