"""The health-book page's images, on SQLite and PostgreSQL: studies a hospital sends by STOW
(pydicom's shipped test files, her CCCD as PatientID, new UIDs) appear on her page, newest
first, with modality, facility and counts; another citizen's page shows none of them."""

from __future__ import annotations

import html
import io
import re
from dataclasses import dataclass

import pydicom
from fastapi.testclient import TestClient
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from emr_hub.demo import BY_ID, PATIENTS
from emr_hub.demo_imaging import STUDY_UID
from emr_hub.hub import Hub
from tests.fhir.conftest import token_for
from tests.healthbook.test_signin import book, dev_sign_in

LAN, TOAN = PATIENTS[0], PATIENTS[1]
SENDER = LAN.managing_organization
"""The hospital that images Lan: the health centre that registered her (it sees her record)."""
BOUNDARY = "page-images"
IMAGES = re.compile(r'<section class="card" id="hinh-anh">(.*?)</section>', re.S)
ROW = re.compile(r'<tr data-study="([^"]*)">(.*?)</tr>', re.S)
CELL = re.compile(r'<td data-label="([^"]*)"[^>]*>(.*?)</td>', re.S)
TAG = re.compile(r"<[^>]+>")


@dataclass(frozen=True)
class Study:
    uid: str
    modality: str
    """How the page names the modality."""
    date: str
    instances: int


def stow(client: TestClient, token: str, file: str, study: Study, cccd: str) -> None:
    """Send ``study.instances`` copies of a shipped test file, in one series, as one study."""
    series = generate_uid()
    parts = b""
    for number in range(1, study.instances + 1):
        dataset = pydicom.dcmread(get_testdata_file(file))
        sop = generate_uid()
        dataset.StudyInstanceUID, dataset.SeriesInstanceUID = study.uid, series
        dataset.SOPInstanceUID = dataset.file_meta.MediaStorageSOPInstanceUID = sop
        dataset.PatientID, dataset.InstanceNumber = cccd, number
        dataset.StudyDate, dataset.StudyTime = study.date, "091500"
        out = io.BytesIO()
        dataset.save_as(out, enforce_file_format=True)
        parts += f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        parts += out.getvalue() + b"\r\n"
    answer = client.post(
        "/dicomweb/studies",
        content=parts + f"--{BOUNDARY}--\r\n".encode(),
        headers={
            "Authorization": f"Bearer {token}",
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={BOUNDARY}',
            "Accept": "application/dicom+json",
        },
    )
    assert answer.status_code == 200, answer.text


def images_section(page: str) -> str:
    match = IMAGES.search(page)
    assert match, "the page has its images section"
    return match.group(1)


def image_rows(page: str) -> list[tuple[str, dict[str, str]]]:
    """(study UID, {column: text}) of each row of the images table, in the page's order."""
    return [
        (
            uid,
            {label: html.unescape(TAG.sub("", text)).strip() for label, text in CELL.findall(row)},
        )
        for uid, row in ROW.findall(images_section(page))
    ]


def test_her_studies_are_on_her_page_and_on_no_one_elses(demo_hub: Hub, client: TestClient) -> None:
    dev_sign_in(client, LAN.cccd)
    [(uid, cells)] = image_rows(book(client))  # the demo's: Bắc Ninh general's CT of her stay
    assert (uid, cells["Cơ sở"], cells["Ngày chụp"]) == (
        STUDY_UID,
        BY_ID["bac-ninh-general"].name,
        "09:30 22/10/2026",
    )

    token = token_for(demo_hub, "system/*.cruds", SENDER)
    older = Study(generate_uid(), "Cộng hưởng từ (MR)", "20250310", 1)
    newer = Study(generate_uid(), "Chụp cắt lớp vi tính (CT)", "20261102", 2)
    stow(client, token, "MR_small.dcm", older, LAN.cccd)
    stow(client, token, "CT_small.dcm", newer, LAN.cccd)

    page = book(client)
    rows = image_rows(page)
    assert [uid for uid, _ in rows] == [newer.uid, STUDY_UID, older.uid]  # newest first
    del rows[1]
    for (uid, cells), study in zip(rows, (newer, older), strict=True):
        assert cells["Loại"] == study.modality
        assert cells["Loạt ảnh"] == "1"
        assert cells["Số ảnh"] == str(study.instances)
        assert cells["Cơ sở"] == BY_ID[SENDER].name
        assert cells["Mã phim (Study UID)"] == uid
    assert rows[0][1]["Ngày chụp"] == "09:15 02/11/2026"
    assert "/dicomweb" not in images_section(page)  # no link her session could not open

    client.cookies.clear()
    dev_sign_in(client, TOAN.cccd)
    page = book(client)
    assert "Không có thông tin." in images_section(page)
    assert newer.uid not in page and older.uid not in page and STUDY_UID not in page
