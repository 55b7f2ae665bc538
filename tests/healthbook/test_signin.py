"""The citizen's sign-in to the health-book page and its session, on SQLite and PostgreSQL:
through a real OpenID Connect provider run locally (oidc-provider-mock, over HTTP), with PKCE,
state and nonce; the development sign-in, off once an issuer is configured; the cookie's flags;
CSRF refusals; logout revoking the session on the server; the page's reads audited; the
sharing settings honoured by the access policy; another citizen's data never shown."""

from __future__ import annotations

import base64
import json
import re
import time
import zlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from fastapi import Response
from fastapi.testclient import TestClient
from oidc_provider_mock import User, run_server_in_thread
from sqlalchemy import func, select

from emr_hub.config import Settings
from emr_hub.demo import PATIENTS, load_demo
from emr_hub.fhir.persons import person_of_cccd
from emr_hub.healthbook.session import (
    DEVELOPMENT,
    FORM_COOKIE,
    SESSION_COOKIE,
    open_session,
    set_session_cookie,
)
from emr_hub.hub import Hub
from emr_hub.main import create_app
from emr_hub.security.audit.log import EVENT
from storage.tables import CitizenSession
from tests.conftest import make_settings
from tests.healthbook.test_summary import citizen, hospital

LAN, TOAN = PATIENTS[0], PATIENTS[1]
LAN_NAME, TOAN_NAME = "Nguyễn Thị Lan", "Ngô Văn Toàn"
LAN_ONLY = ("Hẹp van hai lá", LAN.cccd, LAN.id)
"""What Lan's page shows and Toàn's must not: her diagnosis, her CCCD, her record's id."""
COMMUNE = "bac-ninh-commune"
COMMUNE_NAME = "Trạm Y tế phường Đồng Nguyên"
REASON = "Cấp cứu: bệnh nhân bất tỉnh"
CLIENT_ID = "emr-hub"
CSRF = re.compile(r'name="csrf_token" value="([0-9a-f]{64})"')
USERS = [
    User(sub="lan", claims={"cccd": LAN.cccd, "name": LAN_NAME}),
    User(sub="toan", claims={"cccd": TOAN.cccd}),
    User(sub="stranger", claims={"cccd": "001099000001"}),
    User(sub="no-cccd", claims={"name": "Không có CCCD"}),
]


@pytest.fixture
def issuer() -> Iterator[str]:
    """A real OpenID Connect provider on a free port (nonce required, the users above)."""
    with run_server_in_thread(require_nonce=True, user_claims=USERS) as server:
        yield f"http://localhost:{server.server_port}"


def oidc_settings(tmp_path: Path, database_url: str, issuer: str, **extra: str) -> Settings:
    return make_settings(
        tmp_path,
        database_url,
        citizen_oidc_issuer=issuer,
        citizen_oidc_client_id=CLIENT_ID,
        citizen_oidc_client_secret="the-hubs-secret-at-the-provider",
        **extra,
    )


@pytest.fixture
def oidc_hub(tmp_path: Path, database_url: str, issuer: str) -> Iterator[Hub]:
    instance = Hub.from_settings(oidc_settings(tmp_path, database_url, issuer), migrate=True)
    load_demo(instance)
    yield instance
    instance.close()


@pytest.fixture
def client(oidc_hub: Hub) -> Iterator[TestClient]:
    with TestClient(create_app(oidc_hub)) as test_client:
        yield test_client


@pytest.fixture
def dev_client(demo_hub: Hub) -> Iterator[TestClient]:
    """The health-book conftest's ``client`` (the demo network's app), under another name:
    this module's ``client`` signs in through the OpenID provider."""
    with TestClient(create_app(demo_hub)) as test_client:
        yield test_client


def authorize(client: TestClient, sub: str) -> str:
    """Start a sign-in, and sign in as ``sub`` at the provider: the callback's query."""
    start = client.get("/health-book/sign-in", follow_redirects=False)
    assert start.status_code == 303, start.text
    answer = httpx.post(start.headers["location"], data={"sub": sub}, follow_redirects=False)
    assert answer.status_code == 302, answer.text
    return urlsplit(answer.headers["location"]).query


def sign_in(client: TestClient, sub: str) -> httpx.Response:
    response = client.get(f"/health-book/callback?{authorize(client, sub)}", follow_redirects=False)
    assert response.status_code == 303, response.text
    assert response.headers["location"] == "/health-book"
    return response


def book(client: TestClient, query: str = "") -> str:
    response = client.get(f"/health-book{query}")
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    return response.text


def signed_in_as(page: str) -> str | None:
    """The name of the citizen whose book the page shows (None on the sign-in page)."""
    match = re.search(r'<strong id="patient-name">([^<]*)</strong>', page)
    return match.group(1) if match else None


def csrf_of(page: str) -> str:
    match = CSRF.search(page)
    assert match, "the page's forms carry a CSRF token"
    return match.group(1)


def cookie_attributes(response: httpx.Response | Response, name: str) -> dict[str, str]:
    headers = response.headers
    values = (
        headers.get_list("set-cookie")
        if isinstance(headers, httpx.Headers)
        else [value for key, value in headers.items() if key == "set-cookie"]
    )
    for header in values:
        cookie_name, _, rest = header.partition("=")
        if cookie_name == name:
            value, *attributes = rest.split(";")
            pairs = (a.strip().partition("=") for a in attributes)
            return {"value": value, **{k.lower(): v for k, _, v in pairs}}
    raise AssertionError(f"no Set-Cookie {name}")


def sets_cookie(response: httpx.Response, name: str) -> bool:
    return any(h.startswith(f"{name}=") for h in response.headers.get_list("set-cookie"))


def audit_events_by(hub: Hub, person: str) -> int:
    with hub.db.snapshot() as session:
        return int(session.scalar(select(func.count()).where(EVENT.c.person == person)) or 0)


# ------------------------------------------------------------------ OpenID Connect
def test_sign_in_through_the_provider_opens_her_book(oidc_hub: Hub, client: TestClient) -> None:
    start = client.get("/health-book/sign-in", follow_redirects=False)
    assert start.status_code == 303
    request = parse_qs(urlsplit(start.headers["location"]).query)
    assert request["response_type"] == ["code"] and request["client_id"] == [CLIENT_ID]
    assert request["scope"] == ["openid"]
    assert request["redirect_uri"] == ["http://127.0.0.1:8000/health-book/callback"]
    assert request["code_challenge_method"] == ["S256"]
    assert len(request["code_challenge"][0]) == 43  # base64url of a SHA-256
    assert request["state"][0] and request["nonce"][0]

    signed_in = sign_in(client, "lan")
    cookie = cookie_attributes(signed_in, SESSION_COOKIE)
    assert "httponly" in cookie and cookie["samesite"].lower() == "lax"
    assert cookie["path"] == "/health-book"
    assert "secure" not in cookie  # the hub's address is a loopback one
    assert LAN.cccd not in cookie["value"]

    page = book(client)
    assert LAN_NAME in page
    for heading in ("Giấy chuyển tuyến", "Lịch tái khám", "Vấn đề sức khỏe hiện tại"):
        assert heading in page
    assert "Hẹp van hai lá do thấp" in page and "Đã hoàn tất" in page  # a letter's status
    assert 'src="data:image/png;base64,' in page  # the compact card's QR code
    assert "development-banner" not in page
    with oidc_hub.db.snapshot() as session:
        rows = [(r.person, r.method) for r in session.scalars(select(CitizenSession))]
    assert rows == [(person_of_cccd(LAN.cccd), "oidc")]


def test_the_callback_finishes_only_the_sign_in_this_browser_started(
    oidc_hub: Hub, client: TestClient
) -> None:
    query = authorize(client, "lan")
    with TestClient(create_app(oidc_hub)) as other_browser:
        refused = other_browser.get(f"/health-book/callback?{query}", follow_redirects=False)
    assert refused.status_code == 400 and not sets_cookie(refused, SESSION_COOKIE)

    forged = re.sub(r"state=[^&]+", "state=forged", query)
    refused = client.get(f"/health-book/callback?{forged}", follow_redirects=False)
    assert refused.status_code == 400 and "state" in refused.text

    # The refusal ended the sign-in under way: the genuine answer no longer opens a session.
    replayed = client.get(f"/health-book/callback?{query}", follow_redirects=False)
    assert replayed.status_code == 400
    assert LAN_NAME not in client.get("/health-book").text
    with oidc_hub.db.snapshot() as session:
        assert session.scalars(select(CitizenSession)).all() == []


def test_the_provider_refusing_or_no_usable_cccd_opens_nothing(client: TestClient) -> None:
    start = client.get("/health-book/sign-in", follow_redirects=False)
    denied = httpx.post(start.headers["location"], data={"action": "deny"}, follow_redirects=False)
    query = urlsplit(denied.headers["location"]).query
    assert "error=access_denied" in query
    refused = client.get(f"/health-book/callback?{query}", follow_redirects=False)
    assert refused.status_code == 400 and "từ chối" in refused.text

    refused = client.get(f"/health-book/callback?{authorize(client, 'no-cccd')}")
    assert refused.status_code == 400 and "CCCD" in refused.text

    refused = client.get(f"/health-book/callback?{authorize(client, 'stranger')}")
    assert refused.status_code == 400 and "chưa có hồ sơ" in refused.text
    assert "001099000001" not in refused.text
    assert SESSION_COOKIE not in client.cookies


def test_the_development_sign_in_is_off_with_a_real_issuer(client: TestClient) -> None:
    page = client.get("/health-book").text
    assert 'id="sign-in"' in page and "development-sign-in" not in page
    assert LAN_NAME not in page  # no demo citizen is offered
    refused = client.post("/health-book/dev-sign-in", data={"cccd": LAN.cccd})
    assert refused.status_code == 404
    assert SESSION_COOKIE not in client.cookies


# ------------------------------------------------------------------ development sign-in
def dev_sign_in(client: TestClient, cccd: str) -> httpx.Response:
    token = csrf_of(client.get("/health-book").text)
    response = client.post(
        "/health-book/dev-sign-in",
        data={"csrf_token": token, "cccd": cccd},
        follow_redirects=False,
    )
    assert response.status_code == 303, response.text
    return response


def test_the_development_sign_in_offers_the_demo_citizens(dev_client: TestClient) -> None:
    page = dev_client.get("/health-book").text
    assert "development-sign-in" in page and 'id="sign-in"' not in page
    assert LAN_NAME in page and TOAN_NAME in page
    assert dev_client.get("/health-book/sign-in").status_code == 404
    dev_sign_in(dev_client, LAN.cccd)
    page = book(dev_client)
    assert signed_in_as(page) == LAN_NAME and "development-banner" in page

    stranger = dev_client.post(
        "/health-book/dev-sign-in",
        data={"csrf_token": csrf_of(page), "cccd": "001099000001"},
    )
    assert stranger.status_code in (400, 403)


def test_the_cookie_is_secure_outside_loopback(tmp_path: Path, database_url: str) -> None:
    settings = make_settings(tmp_path, database_url, base_url="https://hub.example.vn")
    public = Hub.from_settings(settings, migrate=True)
    load_demo(public)
    try:
        with TestClient(create_app(public), base_url="https://testserver") as client:
            form_cookie = cookie_attributes(client.get("/health-book"), FORM_COOKIE)
            assert "secure" in form_cookie
            signed_in = dev_sign_in(client, LAN.cccd)
            session_cookie = cookie_attributes(signed_in, SESSION_COOKIE)
            assert "secure" in session_cookie and "httponly" in session_cookie
            assert session_cookie["samesite"].lower() == "lax"
    finally:
        public.close()


# ------------------------------------------------------------------ CSRF and logout
def test_every_form_needs_its_csrf_token(demo_hub: Hub, dev_client: TestClient) -> None:
    refused = dev_client.post("/health-book/dev-sign-in", data={"cccd": LAN.cccd})
    assert refused.status_code == 403 and SESSION_COOKIE not in dev_client.cookies
    token = csrf_of(dev_client.get("/health-book").text)
    with TestClient(create_app(demo_hub)) as other_browser:  # a token from another browser
        other_browser.get("/health-book")
        refused = other_browser.post(
            "/health-book/dev-sign-in", data={"csrf_token": token, "cccd": LAN.cccd}
        )
        assert refused.status_code == 403

    dev_sign_in(dev_client, LAN.cccd)
    page = book(dev_client)
    good = csrf_of(page)
    sharing = {"patient": LAN.id, "organization": f"Organization/{COMMUNE}", "kind": "permit"}
    for bad in ({}, {"csrf_token": "0" * 64}, {"csrf_token": token}):
        assert dev_client.post("/health-book/sharing", data=sharing | bad).status_code == 403
        assert dev_client.post("/health-book/logout", data=bad).status_code == 403
        withdraw = {"consent": "anything", **bad}
        assert dev_client.post("/health-book/sharing/withdraw", data=withdraw).status_code == 403
    lan = citizen(demo_hub, dev_client, LAN.cccd)
    assert lan.get("/Consent").json().get("total") == 0  # nothing was written
    assert signed_in_as(book(dev_client)) == LAN_NAME  # and she is still signed in
    assert good == csrf_of(book(dev_client))


def copied_session(hub: Hub, value: str) -> TestClient:
    """Another browser holding a copy of a session cookie."""
    other = TestClient(create_app(hub))
    other.cookies.set(SESSION_COOKIE, value, path="/health-book")
    return other


def test_logout_revokes_the_session_on_the_server(demo_hub: Hub, dev_client: TestClient) -> None:
    dev_sign_in(dev_client, LAN.cccd)
    kept = dev_client.cookies[SESSION_COOKIE]
    with copied_session(demo_hub, kept) as copy:
        assert signed_in_as(book(copy)) == LAN_NAME  # the copy works while the session lasts
    page = book(dev_client)
    out = dev_client.post(
        "/health-book/logout", data={"csrf_token": csrf_of(page)}, follow_redirects=False
    )
    assert out.status_code == 303
    assert cookie_attributes(out, SESSION_COOKIE)["max-age"] == "0"
    assert signed_in_as(dev_client.get("/health-book").text) is None
    with demo_hub.db.snapshot() as session:
        revoked = [row.revoked_at for row in session.scalars(select(CitizenSession))]
    assert len(revoked) == 1 and revoked[0] is not None

    with copied_session(demo_hub, kept) as copy:  # and opens nothing once she logged out
        assert signed_in_as(copy.get("/health-book").text) is None
        assert copy.get("/health-book/card.smart-health-card").status_code == 401


def test_a_tampered_cookie_opens_nothing(demo_hub: Hub, dev_client: TestClient) -> None:
    dev_sign_in(dev_client, LAN.cccd)
    value = dev_client.cookies[SESSION_COOKIE]
    payload, _, signature = value.rpartition(".")
    # The first character: all its bits count (the last one's lowest bits are padding).
    flipped = ("B" if signature[0] != "B" else "C") + signature[1:]
    for tampered in (f"{payload}.{flipped}", value.replace(value[:4], "AAAA", 1)):
        with copied_session(demo_hub, tampered) as copy:
            assert signed_in_as(copy.get("/health-book").text) is None


def test_an_expired_session_opens_nothing(demo_hub: Hub, dev_client: TestClient) -> None:
    person = person_of_cccd(LAN.cccd)
    for hours_ago, opens in ((1, True), (9, False)):  # sessions last 8 hours
        secret = open_session(
            demo_hub, person, DEVELOPMENT, now=datetime.now(UTC) - timedelta(hours=hours_ago)
        )
        carrier = Response()
        set_session_cookie(carrier, demo_hub, secret)
        value = cookie_attributes(carrier, SESSION_COOKIE)["value"]
        with copied_session(demo_hub, value) as browser:
            assert (signed_in_as(browser.get("/health-book").text) == LAN_NAME) is opens


# ------------------------------------------------------------------ the book's content
def test_her_views_are_audited_and_hospitals_reads_shown(oidc_hub: Hub, client: TestClient) -> None:
    lan_person = person_of_cccd(LAN.cccd)
    sign_in(client, "lan")
    before = audit_events_by(oidc_hub, lan_person)
    page = book(client)
    assert audit_events_by(oidc_hub, lan_person) == before + 1
    assert COMMUNE_NAME not in page.split('id="ai-da-xem"')[1].split("</section>")[0]

    commune = hospital(oidc_hub, client, COMMUNE)
    assert commune.get(f"/Patient/{LAN.id}").status_code == 404
    emergency = {"X-Purpose-Of-Use": "ETREAT", "X-Break-Glass-Reason": REASON.encode()}
    commune.token = _break_glass_token(oidc_hub)
    assert commune.get(f"/Patient/{LAN.id}", headers=emergency).status_code == 200
    log = book(client).split('id="ai-da-xem"')[1].split("</section>")[0]
    assert COMMUNE_NAME in log
    assert "Bị từ chối" in log  # the refused read
    assert "Truy cập khẩn cấp" in log and REASON in log
    assert "Thông tin hành chính" in log  # the kind of data


def _break_glass_token(hub: Hub) -> str:
    from tests.fhir.conftest import token_for

    return token_for(hub, client_id=COMMUNE, break_glass=True)


def test_sharing_settings_are_consents_the_policy_honours(
    oidc_hub: Hub, client: TestClient
) -> None:
    commune = hospital(oidc_hub, client, COMMUNE)
    assert commune.get(f"/Patient/{LAN.id}").status_code == 404
    sign_in(client, "lan")
    token = csrf_of(book(client))
    granted = client.post(
        "/health-book/sharing",
        data={
            "csrf_token": token,
            "patient": LAN.id,
            "organization": f"Organization/{COMMUNE}",
            "kind": "permit",
        },
        follow_redirects=False,
    )
    assert granted.status_code == 303, granted.text
    assert commune.get(f"/Patient/{LAN.id}").status_code == 200

    lan = citizen(oidc_hub, client, LAN.cccd)
    consents = lan.get("/Consent").json()["entry"]
    assert len(consents) == 1
    consent = consents[0]["resource"]
    assert consent["status"] == "active" and consent["patient"]["reference"] == f"Patient/{LAN.id}"
    assert consent["provision"]["type"] == "permit"
    assert consent["provision"]["actor"][0]["reference"]["reference"] == f"Organization/{COMMUNE}"
    page = book(client)
    assert f'data-consent="{consent["id"]}"' in page

    withdrawn = client.post(
        "/health-book/sharing/withdraw",
        data={"csrf_token": token, "patient": LAN.id, "consent": consent["id"]},
        follow_redirects=False,
    )
    assert withdrawn.status_code == 303
    assert commune.get(f"/Patient/{LAN.id}").status_code == 404
    assert lan.get(f"/Consent/{consent['id']}").json()["status"] == "inactive"
    assert f'data-consent="{consent["id"]}"' not in book(client)

    bad = client.post(
        "/health-book/sharing",
        data={
            "csrf_token": token,
            "patient": LAN.id,
            "organization": "Patient/x",
            "kind": "permit",
        },
    )
    assert bad.status_code == 400


def test_another_citizens_data_never_appears(oidc_hub: Hub, client: TestClient) -> None:
    sign_in(client, "lan")
    lan_token = csrf_of(book(client))
    client.post(
        "/health-book/sharing",
        data={
            "csrf_token": lan_token,
            "patient": LAN.id,
            "organization": f"Organization/{COMMUNE}",
            "kind": "deny",
        },
    )
    lan_consent = citizen(oidc_hub, client, LAN.cccd).get("/Consent").json()["entry"][0]
    client.post("/health-book/logout", data={"csrf_token": lan_token})

    sign_in(client, "toan")
    for query in ("", f"?patient={LAN.id}"):
        page = book(client, query)
        assert TOAN_NAME in page
        assert LAN_NAME not in page
        for text in LAN_ONLY:
            assert text not in page
    card = client.get(f"/health-book/card.smart-health-card?patient={LAN.id}")
    assert card.status_code == 404
    toan_token = csrf_of(book(client))
    refused = client.post(
        "/health-book/sharing/withdraw",
        data={"csrf_token": toan_token, "consent": lan_consent["resource"]["id"]},
    )
    assert refused.status_code == 404
    lan_view = citizen(oidc_hub, client, LAN.cccd).get(f"/Consent/{lan_consent['resource']['id']}")
    assert lan_view.json()["status"] == "active"
    refused = client.post(
        "/health-book/sharing",
        data={
            "csrf_token": toan_token,
            "patient": LAN.id,
            "organization": f"Organization/{COMMUNE}",
            "kind": "permit",
        },
    )
    assert refused.status_code in (403, 404, 422)


def test_the_signed_card_downloads_as_a_file(client: TestClient) -> None:
    assert client.get("/health-book/card.smart-health-card").status_code == 401
    sign_in(client, "lan")
    card = client.get(f"/health-book/card.smart-health-card?patient={LAN.id}")
    assert card.status_code == 200
    assert card.headers["content-type"] == "application/smart-health-card"
    assert "attachment" in card.headers["content-disposition"]
    credentials = card.json()["verifiableCredential"]
    assert len(credentials) == 1
    bundle = card_payload(credentials[0])["vc"]["credentialSubject"]["fhirBundle"]
    patients = [
        e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient"
    ]
    assert [p["name"][0]["text"] for p in patients] == [LAN_NAME]
    assert client.get("/health-book/card.smart-health-card").status_code == 200  # her first


def card_payload(jws: str) -> dict[str, Any]:
    """The payload of a health card (raw DEFLATE under base64url; the signature is the card
    tests' business)."""
    part = jws.split(".")[1]
    raw = base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
    payload: dict[str, Any] = json.loads(zlib.decompress(raw, wbits=-15))
    return payload


# ------------------------------------------------------------------ share with a doctor
def test_a_link_for_a_doctor_is_made_shown_once_and_revoked(
    demo_hub: Hub, dev_client: TestClient
) -> None:
    dev_sign_in(dev_client, LAN.cccd)
    token = csrf_of(book(dev_client))
    asked = {
        "patient": LAN.id,
        "label": "Phòng khám Hà Đông",
        "passcode": "241085",
        "lifetime": "1d",
    }
    assert dev_client.post("/health-book/links", data=asked).status_code == 403  # no token
    made = dev_client.post("/health-book/links", data=asked | {"csrf_token": token})
    assert made.status_code == 200, made.text
    shlink = re.search(
        r'<textarea id="shlink" readonly rows="5">(shlink:/[^<]+)</textarea>', made.text
    )
    assert shlink and 'src="data:image/png;base64,' in made.text
    encoded = shlink.group(1).removeprefix("shlink:/")
    payload = json.loads(base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)))
    assert payload["flag"] == "P" and payload["label"] == "Phòng khám Hà Đông"
    assert 23 * 3600 < payload["exp"] - time.time() <= 24 * 3600

    manifest = urlsplit(payload["url"]).path
    clinic = {"recipient": "Phòng khám Hà Đông", "passcode": "241085"}
    opened = dev_client.post(manifest, json=clinic)
    assert opened.status_code == 200 and opened.json()["files"]
    assert dev_client.post(manifest, json=clinic | {"passcode": "000000"}).status_code == 401

    page = book(dev_client)
    log = page.split('id="ai-da-xem"')[1].split("</section>")[0]
    assert "Phòng khám Hà Đông" in log and "Mở liên kết chia sẻ" in log  # the clinic's opening
    listed = re.findall(r'data-link="([0-9a-f-]{36})"', page)
    assert len(listed) == 1 and "Phòng khám Hà Đông" in page
    assert page.count(payload["key"]) == 0 and encoded not in page  # shown once, never again
    with TestClient(create_app(demo_hub)) as toan_browser:
        dev_sign_in(toan_browser, TOAN.cccd)
        toan_token = csrf_of(book(toan_browser))
        refused = toan_browser.post(
            "/health-book/links/revoke", data={"csrf_token": toan_token, "link": listed[0]}
        )
        assert refused.status_code == 404
    assert dev_client.post(manifest, json=clinic).status_code == 200
    revoked = dev_client.post(
        "/health-book/links/revoke",
        data={"csrf_token": token, "patient": LAN.id, "link": listed[0]},
        follow_redirects=False,
    )
    assert revoked.status_code == 303
    assert dev_client.post(manifest, json=clinic).status_code == 404
    assert 'data-link="' not in book(dev_client)
    short = dev_client.post(
        "/health-book/links", data=asked | {"csrf_token": token, "passcode": "1"}
    )
    assert short.status_code == 400


# ------------------------------------------------------------------ the ID token's checks
def test_the_id_token_is_checked_for_nonce_audience_and_issuer(tmp_path: Path, issuer: str) -> None:
    """A real ID token of the provider, obtained by hand, against verify_id_token."""
    from emr_hub.healthbook import signin

    settings = oidc_settings(tmp_path, f"sqlite:///{tmp_path / 'unused.db'}", issuer)
    provider = signin.discover(settings)
    redirect_uri = "http://127.0.0.1:8000/health-book/callback"
    authorize_url = httpx.URL(
        provider.authorization_endpoint,
        params={
            "response_type": "code",
            "client_id": CLIENT_ID,
            "redirect_uri": redirect_uri,
            "scope": "openid",
            "state": "s",
            "nonce": "the-nonce",
        },
    )
    answer = httpx.post(authorize_url, data={"sub": "lan"}, follow_redirects=False)
    code = parse_qs(urlsplit(answer.headers["location"]).query)["code"][0]
    tokens = httpx.post(
        provider.token_endpoint,
        data={"grant_type": "authorization_code", "code": code, "redirect_uri": redirect_uri},
        auth=(CLIENT_ID, "the-hubs-secret-at-the-provider"),
    ).json()
    id_token = tokens["id_token"]

    claims = signin.verify_id_token(settings, provider, id_token, "the-nonce")
    assert claims["cccd"] == LAN.cccd and claims["sub"] == "lan"
    with pytest.raises(signin.SignInFailed):
        signin.verify_id_token(settings, provider, id_token, "another-nonce")
    other_client = oidc_settings(tmp_path, "sqlite://", issuer)
    other_client.citizen_oidc_client_id = "another-relying-party"
    with pytest.raises(signin.SignInFailed):
        signin.verify_id_token(other_client, provider, id_token, "the-nonce")
    elsewhere = signin.Provider(
        "https://idp.example.vn", provider.authorization_endpoint, provider.token_endpoint,
        provider.jwks_uri, None,
    )  # fmt: skip
    with pytest.raises(signin.SignInFailed):
        signin.verify_id_token(settings, elsewhere, id_token, "the-nonce")
    header, payload, signature = id_token.split(".")
    forged = f"{header}.{payload}.{signature[:-4]}AAAA"
    with pytest.raises(signin.SignInFailed):
        signin.verify_id_token(settings, provider, forged, "the-nonce")


def test_a_citizen_registered_by_two_hospitals_picks_either_record(
    demo_hub: Hub, dev_client: TestClient
) -> None:
    bach_mai = hospital(demo_hub, dev_client, "bach-mai")
    second = {
        "resourceType": "Patient",
        "identifier": [{"system": "http://fhir.hl7.org.vn/core/sid/cccd", "value": LAN.cccd}],
        "name": [{"family": "Nguyễn", "given": ["Thị", "Lan"], "text": LAN_NAME}],
        "birthDate": "1985-04-12",
    }
    created = bach_mai.post("/Patient", second)
    assert created.status_code == 201, created.text
    other_id = created.json()["id"]
    dev_sign_in(dev_client, LAN.cccd)
    page = book(dev_client)
    options = re.findall(r'<option value="([^"]+)"(?: selected)?>\1</option>', page)
    assert sorted(options) == sorted([LAN.id, other_id])
    chosen = book(dev_client, f"?patient={other_id}")
    assert f"card.smart-health-card?patient={other_id}" in chosen
    assert signed_in_as(chosen) == LAN_NAME
