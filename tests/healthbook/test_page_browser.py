"""The health-book page in headless Chromium (the system's ``chromium`` and ``chromedriver``,
driven by selenium), against a real ``emr-hub serve`` process and a real OpenID Connect
provider run locally: Nguyễn Thị Lan signs in, sees her sections and who accessed her record,
allows and then withdraws sharing with a hospital (which the hospital's reads follow), and
logs out; Ngô Văn Toàn signing in next sees none of her data. A screenshot of her page is
saved as the test's artifact (under the test's tmp dir, or ``EMR_HUB_TEST_ARTIFACTS``)."""

from __future__ import annotations

import base64
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from oidc_provider_mock import run_server_in_thread
from selenium import webdriver
from selenium.webdriver.chrome.webdriver import WebDriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select
from sqlalchemy import select

from emr_hub.config import Settings
from emr_hub.demo import load_demo
from emr_hub.hub import Hub
from storage.tables import CitizenSession
from tests.conftest import free_port, make_settings, service_missing
from tests.fhir.conftest import token_for
from tests.healthbook.test_signin import (
    CLIENT_ID,
    COMMUNE,
    COMMUNE_NAME,
    LAN,
    LAN_NAME,
    LAN_ONLY,
    TOAN_NAME,
    USERS,
)
from tests.processes import ApiServer, cli_env, wait_for

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
PHONE = (412, 915)
SECONDS = 20
SECRET = "the-hubs-secret-at-the-provider"


@pytest.fixture
def browser() -> Iterator[WebDriver]:
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        service_missing(f"headless Chromium needs {CHROMIUM} and {CHROMEDRIVER} (apt chromium)")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage"):
        options.add_argument(argument)
    # A phone's screen (Chrome's own emulation: the page's viewport meta tag applies).
    metrics = {"width": PHONE[0], "height": PHONE[1], "pixelRatio": 2}
    options.add_experimental_option("mobileEmulation", {"deviceMetrics": metrics})
    service = webdriver.ChromeService(executable_path=str(CHROMEDRIVER))
    driver = webdriver.Chrome(options=options, service=service)
    driver.set_page_load_timeout(SECONDS)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def issuer() -> Iterator[str]:
    with run_server_in_thread(require_nonce=True, user_claims=USERS) as server:
        yield f"http://localhost:{server.server_port}"


@pytest.fixture
def served(tmp_path: Path, issuer: str) -> Iterator[tuple[str, Hub]]:
    """``emr-hub serve`` on a free port over a demo database, with the provider configured;
    and a Hub of this process on the same database (for tokens and checks)."""
    port = free_port()
    database_url = f"sqlite:///{tmp_path / 'hub.db'}"
    base = f"http://127.0.0.1:{port}"
    settings: Settings = make_settings(tmp_path, database_url, base_url=base)
    hub = Hub.from_settings(settings, migrate=True)
    load_demo(hub)
    env = cli_env(
        tmp_path,
        database_url,
        EMR_HUB_BASE_URL=base,
        EMR_HUB_CITIZEN_OIDC_ISSUER=issuer,
        EMR_HUB_CITIZEN_OIDC_CLIENT_ID=CLIENT_ID,
        EMR_HUB_CITIZEN_OIDC_CLIENT_SECRET=SECRET,
    )
    server = ApiServer(env, port, tmp_path / "serve.log")
    try:
        server.wait_ready()
        yield base, hub
    finally:
        server.stop()
        hub.close()


def test_lan_signs_in_reads_her_book_shares_and_logs_out(
    browser: WebDriver, served: tuple[str, Hub], tmp_path: Path
) -> None:
    driver = browser
    base, hub = served
    commune = {"Authorization": f"Bearer {token_for(hub, client_id=COMMUNE)}"}
    her_record = f"{base}/fhir/Patient/{LAN.id}"
    assert httpx.get(her_record, headers=commune).status_code == 404  # refused: in her log

    def shown(css: str) -> bool:
        return bool(driver.find_elements(By.CSS_SELECTOR, css))

    def sign_in_as(sub: str) -> None:
        driver.get(f"{base}/health-book")
        driver.find_element(By.ID, "sign-in").click()
        wait_for(lambda: shown(f'button[value="{sub}"]'), SECONDS, "the provider's sign-in")
        driver.find_element(By.CSS_SELECTOR, f'button[value="{sub}"]').click()
        wait_for(lambda: shown("#patient-name"), SECONDS, "her book after the callback")

    # Signing in through the provider.
    sign_in_as("lan")
    assert driver.current_url == f"{base}/health-book"
    assert driver.find_element(By.ID, "patient-name").text == LAN_NAME
    titles = [h.text for h in driver.find_elements(By.CSS_SELECTOR, "section h2")]
    for title in ("Giấy chuyển tuyến", "Lịch tái khám", "Vấn đề sức khỏe hiện tại"):
        assert title in titles
    letters = driver.find_element(By.ID, "muc-57133-1").text
    assert "Bệnh viện Bạch Mai" in letters and "Đã hoàn tất" in letters
    qr = driver.find_element(By.CSS_SELECTOR, "#the-qr img.qr")
    assert int(qr.get_property("naturalWidth") or 0) > 100  # the QR code's PNG was decoded
    log = driver.find_element(By.ID, "ai-da-xem").text
    assert COMMUNE_NAME in log and "Bị từ chối" in log
    stylesheet = driver.execute_script(
        "return getComputedStyle(document.querySelector('header.top')).backgroundColor"
    )
    assert stylesheet == "rgb(11, 110, 79)"  # the page's own CSS, served by the hub
    width = driver.execute_script("return document.documentElement.scrollWidth")
    assert driver.execute_script("return window.innerWidth") == PHONE[0]
    assert width <= PHONE[0]  # nothing wider than the phone

    # Allowing the commune station: it may read her record now.
    Select(driver.find_element(By.ID, "organization")).select_by_value(f"Organization/{COMMUNE}")
    driver.find_element(By.CSS_SELECTOR, 'input[name="kind"][value="permit"]').click()
    driver.find_element(By.ID, "save-sharing").click()
    wait_for(lambda: shown("li.consent.permit"), SECONDS, "the new sharing setting")
    assert COMMUNE_NAME in driver.find_element(By.CSS_SELECTOR, "li.consent.permit").text
    assert httpx.get(her_record, headers=commune).status_code == 200
    driver.get(f"{base}/health-book")
    assert "Xem" in driver.find_element(By.ID, "ai-da-xem").text  # its read, logged
    save_screenshot(driver, tmp_path)

    # Withdrawing it: the station is refused again.
    driver.find_element(By.CSS_SELECTOR, "li.consent.permit button.withdraw").click()
    wait_for(lambda: not shown("li.consent"), SECONDS, "the setting to be withdrawn")
    assert httpx.get(her_record, headers=commune).status_code == 404

    # Logging out ends the session on the server.
    driver.find_element(By.ID, "logout").click()
    wait_for(lambda: shown("#sign-in"), SECONDS, "the sign-in page after logout")
    driver.get(f"{base}/health-book")
    assert not shown("#patient-name")
    with hub.db.snapshot() as session:
        revoked = [row.revoked_at for row in session.scalars(select(CitizenSession))]
    assert len(revoked) == 1 and revoked[0] is not None

    # Another citizen in the same browser sees only his own book.
    sign_in_as("toan")
    assert driver.find_element(By.ID, "patient-name").text == TOAN_NAME
    driver.get(f"{base}/health-book?patient={LAN.id}")
    page = driver.page_source
    assert LAN_NAME not in page and all(text not in page for text in LAN_ONLY)


def save_screenshot(driver: WebDriver, tmp_path: Path) -> None:
    """Her whole page (beyond the phone's screen) as a PNG: the test's artifact."""
    shot = driver.execute_cdp_cmd(
        "Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True}
    )
    path = tmp_path / "health-book.png"
    path.write_bytes(base64.b64decode(shot["data"]))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    folder = os.environ.get("EMR_HUB_TEST_ARTIFACTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(folder) / path.name)
