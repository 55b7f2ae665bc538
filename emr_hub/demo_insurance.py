"""What the demo's referral letters and re-exam slip carry so that they export as insurance XML
tables 13 and 14 (``$xml130``), in the shapes :mod:`emr_hub.referrals.xml130` maps.

Every number here is invented: letter and file numbers in the facilities' own styles, practising
licence numbers (CCHN) in the ``NNNNNN/<province>-CCHN`` form of the samples in
``tests/fixtures/xml130``. MA_LYDO_CT 1 ("meets the referral rules") because each leg goes one
level of care up; MA_LOAI_RV 2 ("transferred for professional reasons").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from emr_hub.fhir.identifiers import EPISODE_LINK, FACILITY_CODE, PRACTISING_LICENCE
from emr_hub.referrals.xml130 import (
    CS_DISCHARGE_TYPE,
    CS_REFERRAL_REASON,
    EXT_DISCHARGE_TYPE,
    EXT_EPISODE,
    EXT_HEAD,
    EXT_PRACTITIONER,
    EXT_REFERRAL_REASON,
    EXT_SECTION,
    EXT_TRANSPORT,
    REFERRAL_CODE_SYSTEM,
    REFERRAL_FILE_SYSTEM,
)

Resource = dict[str, Any]


@dataclass(frozen=True)
class Signatories:
    """Who signs a table: the attending doctor (MA_BAC_SI) and the facility head (MA_TTDV),
    by their practising licence numbers."""

    doctor: str
    head: str


@dataclass(frozen=True)
class LetterRecord:
    """The table 13 fields of one referral letter that its FHIR resources hold nowhere else."""

    file_number: str  # SO_HOSO
    letter_code: str  # GIAY_CHUYEN_TUYEN
    signs: str  # DAU_HIEU_LS
    course: str  # QT_BENHLY
    results: str  # TOMTAT_KQ
    state_at_transfer: str  # TINH_TRANG_CT
    plan: str  # HUONG_DIEU_TRI
    transport: str  # PHUONGTIEN_VC
    signatories: Signatories
    reason: str = "1"  # MA_LYDO_CT
    discharge_type: str = "2"  # MA_LOAI_RV


def episode_reference(resource_type_id: str, episode: str, facility_code: str) -> Resource:
    """A literal reference to the visit that is also the logical one table 13/14 need (MA_LK:
    the sending facility's own number of the visit)."""
    return {
        "reference": resource_type_id,
        "identifier": {
            "system": EPISODE_LINK,
            "value": episode,
            "assigner": {"identifier": {"system": FACILITY_CODE, "value": facility_code}},
        },
    }


def signed_by(signatories: Signatories) -> list[Resource]:
    return [
        {
            "url": EXT_PRACTITIONER,
            "valueIdentifier": {"system": PRACTISING_LICENCE, "value": signatories.doctor},
        },
        {"url": EXT_HEAD, "valueString": signatories.head},
    ]


def episode_dates(admitted: str, discharged: str) -> Resource:
    """NGAY_VAO and NGAY_RA of the visit the letter or slip closes."""
    return {
        "url": EXT_EPISODE,
        "extension": [
            {"url": "admitted", "valueDateTime": admitted},
            {"url": "discharged", "valueDateTime": discharged},
        ],
    }


def letter_identifiers(
    record: LetterRecord, facility_code: str, assigner: Resource
) -> list[Resource]:
    """SO_HOSO and GIAY_CHUYEN_TUYEN, numbered by the sending facility."""
    return [
        {"system": system + facility_code, "value": value, "assigner": assigner}
        for system, value in (
            (REFERRAL_FILE_SYSTEM, record.file_number),
            (REFERRAL_CODE_SYSTEM, record.letter_code),
        )
    ]


def letter_extensions(record: LetterRecord, admitted: str, discharged: str) -> list[Resource]:
    return [
        episode_dates(admitted, discharged),
        {
            "url": EXT_REFERRAL_REASON,
            "valueCoding": {"system": CS_REFERRAL_REASON, "code": record.reason},
        },
        {
            "url": EXT_DISCHARGE_TYPE,
            "valueCoding": {"system": CS_DISCHARGE_TYPE, "code": record.discharge_type},
        },
        {"url": EXT_TRANSPORT, "valueString": record.transport},
        *signed_by(record.signatories),
    ]


def letter_notes(record: LetterRecord, diagnosis: str) -> list[Resource]:
    """The narrative fields, one note each, tagged with the field it holds; ``diagnosis`` is
    CHAN_DOAN_RV, the diagnosis in words."""
    sections = (
        ("DAU_HIEU_LS", record.signs),
        ("CHAN_DOAN_RV", diagnosis),
        ("QT_BENHLY", record.course),
        ("TOMTAT_KQ", record.results),
        ("TINH_TRANG_CT", record.state_at_transfer),
        ("HUONG_DIEU_TRI", record.plan),
    )
    return [
        {"extension": [{"url": EXT_SECTION, "valueCode": name}], "text": text}
        for name, text in sections
    ]
