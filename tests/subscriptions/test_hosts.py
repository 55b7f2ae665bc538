"""The endpoint allow-list (server-side request forgery guard), as a pure function."""

from __future__ import annotations

import pytest

from emr_hub.subscriptions.hosts import AllowList, endpoint_problem

LOOPBACK = AllowList.parse("127.0.0.1,localhost,::1")


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8090/notify",
        "https://LOCALHOST/hook",
        "http://[::1]:9000/",
        "http://localhost./x",
    ],
)
def test_loopback_endpoints_are_allowed_by_default(url: str) -> None:
    assert endpoint_problem(url, LOOPBACK) is None


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://169.254.169.254/latest/meta-data", "not in EMR_HUB_ENDPOINT_ALLOWED_HOSTS"),
        ("http://10.0.0.5/", "not in EMR_HUB_ENDPOINT_ALLOWED_HOSTS"),
        ("http://2130706433/", "not in EMR_HUB_ENDPOINT_ALLOWED_HOSTS"),
        ("http://127.0.0.1.nip.io/", "not in EMR_HUB_ENDPOINT_ALLOWED_HOSTS"),
        ("ftp://127.0.0.1/", "http:// or https://"),
        ("file:///etc/passwd", "http:// or https://"),
        ("http:///path-only", "no host"),
        ("http://user:secret@127.0.0.1/", "credentials"),
        ("http://127.0.0.1:99999/", "not a valid URL"),
    ],
)
def test_other_endpoints_are_refused_with_a_reason(url: str, reason: str) -> None:
    problem = endpoint_problem(url, LOOPBACK)
    assert problem is not None and reason in problem


def test_wildcards_cover_subdomains_but_not_the_domain_or_lookalikes() -> None:
    allowed = AllowList.parse(" *.bvbachmai.vn , his.bacninh.vn ")
    assert endpoint_problem("https://fhir.bvbachmai.vn/notify", allowed) is None
    assert endpoint_problem("https://a.b.bvbachmai.vn/notify", allowed) is None
    assert endpoint_problem("https://HIS.bacninh.vn/notify", allowed) is None
    assert endpoint_problem("https://bvbachmai.vn/notify", allowed) is not None
    assert endpoint_problem("https://evilbvbachmai.vn/notify", allowed) is not None
    assert endpoint_problem("https://his.bacninh.vn.evil.io/", allowed) is not None
    assert endpoint_problem("http://127.0.0.1/", allowed) is not None


def test_a_star_allows_every_host_but_not_other_schemes() -> None:
    anything = AllowList.parse("*")
    assert endpoint_problem("https://example.org/x", anything) is None
    assert endpoint_problem("gopher://example.org/x", anything) is not None
