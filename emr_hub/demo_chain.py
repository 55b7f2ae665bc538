"""The demo's finished referral chain.

The story of the demo patient (Vietnam time, 2026):

* **19 Oct**, Từ Sơn health centre (BAN_DAU): palpitations; the ECG shows paroxysmal atrial
  fibrillation (I48.0). Letter 1873/2026/GCT refers her to Bắc Ninh general hospital (CO_BAN,
  one level up), with a Task the hospital accepts the same afternoon.
* **20-30 Oct**, Bắc Ninh general: admitted; echocardiography finds rheumatic mitral stenosis
  (I05.0); a chest CT on 22 Oct (:data:`BAC_NINH_CT`, stored by :mod:`emr_hub.demo_imaging`).
  The discharge summary goes back on the Task, which completes. Its own letter 4512/2026/GCT,
  ``basedOn`` the first and with the CT in its ``supportingInfo``, refers her on to Bạch Mai
  (CHUYEN_SAU: one level up, and its partner).
* **3-13 Nov**, Bạch Mai: admitted, balloon mitral valvuloplasty; the discharge summary goes
  back on the second Task, which completes, and the re-exam slip HKL-2026-031127 books her for
  14 Dec 2026 (an Appointment ``basedOn`` the second letter).

Each resource is a list of versions, written in order: the Tasks go requested → accepted →
in-progress → completed and the letters active → completed, so their ``_history`` reads like
the real flow. Every version is written by the hospital whose step it is (the sender writes
its letter and creates the Task, the receiver moves the Task on and writes its stay and its
summary), through the same rules as a hospital's own request: the referral rules, the Task
workflow, and the provenance and ownership the access policy reads.

This module does not import :mod:`emr_hub.demo` (which imports it): the hospitals and the tag
come in a :class:`Cast`.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from emr_hub.demo_insurance import (
    LetterRecord,
    Signatories,
    episode_dates,
    episode_reference,
    letter_extensions,
    letter_identifiers,
    letter_notes,
    signed_by,
)
from emr_hub.demo_writing import Authored, Facility, Resource
from emr_hub.fhir.identifiers import EPISODE_LINK
from emr_hub.referrals import rules
from emr_hub.referrals.xml130 import (
    CONDITION_ACTIVE,
    CONDITION_CONFIRMED,
    ENCOUNTER_DIAGNOSIS,
    EXT_PARTICIPANT_ORG,
    FOLLOW_UP,
    ICD10,
    PRIMARY_PERFORMER,
    REEXAM_SLIP_SYSTEM,
    REFERRAL_CATEGORY,
    REFERRAL_LETTER_SYSTEM,
    TASK_FULFILL,
)

# ------------------------------------------------------------------------------------ ids
TU_SON_VISIT = "demo-lan-tu-son-visit"
ATRIAL_FIBRILLATION = "demo-lan-atrial-fibrillation"
FIRST_REFERRAL = "demo-lan-referral-tu-son-to-bac-ninh"
BAC_NINH_STAY = "demo-lan-bac-ninh-stay"
MITRAL_STENOSIS = "demo-lan-mitral-stenosis"
BAC_NINH_CT = "demo-lan-bac-ninh-ct"
"""The ImagingStudy of the CT Bắc Ninh general took during her stay (the demo's DICOM study)."""
BAC_NINH_SUMMARY = "demo-lan-bac-ninh-discharge"
SECOND_REFERRAL = "demo-lan-referral-bac-ninh-to-bach-mai"
BACH_MAI_STAY = "demo-lan-bach-mai-stay"
BACH_MAI_SUMMARY = "demo-lan-bach-mai-discharge"
REEXAM = "demo-lan-bach-mai-reexam"
TASK_SUFFIX = "-task"

AF = ("I48.0", "Rung nhĩ kịch phát")
MS = ("I05.0", "Hẹp van hai lá do thấp")

DISCHARGE_SUMMARY = {
    "coding": [{"system": "http://loinc.org", "code": "18842-5", "display": "Discharge summary"}],
    "text": "Giấy ra viện, tóm tắt hồ sơ bệnh án",
}
CARE_EPISODE = {"text": "Đợt điều trị tại nơi nhận"}


@dataclass(frozen=True)
class Cast:
    patient_id: str
    district: Facility
    provincial: Facility
    central: Facility
    tag: Mapping[str, str]


@dataclass(frozen=True)
class Step:
    """One version of a referral Task: its status, when, and the receiver's words for it."""

    status: str
    at: str
    business_status: str


@dataclass(frozen=True)
class Leg:
    """One referral letter and its Task, from ``sender`` to ``receiver``."""

    referral: str
    sender: Facility
    receiver: Facility
    letter: str
    signed: str
    reasons: tuple[tuple[str, str], ...]
    source_encounter: str
    source_condition: str
    steps: tuple[Step, ...]
    summary: str
    care_encounter: str
    note: str
    record: LetterRecord
    based_on: str | None = None
    images: tuple[str, ...] = ()
    """Ids of the ImagingStudies the letter sends along (in its ``supportingInfo``)."""


@dataclass(frozen=True)
class Visit:
    """An Encounter of the chain: ``inpatient`` stays are IMP, the rest AMB."""

    id: str
    facility: Facility
    episode: str
    start: str
    end: str
    condition: str
    inpatient: bool = False
    based_on: str | None = None


@dataclass(frozen=True)
class Summary:
    """A discharge summary returned to the referring hospital on the Task's output."""

    id: str
    author: Facility
    encounter: Visit
    referral: str
    title: str
    text: str


def referral_chain(cast: Cast) -> list[list[Authored]]:
    """Every resource of the chain as its list of versions, each with the hospital writing
    it, in writing order."""
    first, second = _legs(cast)
    visit, stay, admission = _visits(cast)
    bac_ninh_summary, bach_mai_summary = _summaries(cast, stay, admission)

    def by(author: Facility, versions: list[Resource]) -> list[Authored]:
        return [(author, version) for version in versions]

    def task(leg: Leg) -> list[Authored]:
        created, *steps = _task_versions(cast, leg)
        return [(leg.sender, created), *by(leg.receiver, steps)]

    return [
        by(visit.facility, [_encounter(cast, visit)]),
        by(
            visit.facility,
            [_condition(cast, ATRIAL_FIBRILLATION, AF, visit, "2026-10-19T09:30:00+07:00")],
        ),
        by(first.sender, _referral_versions(cast, first, visit)),
        by(stay.facility, [_encounter(cast, stay)]),
        by(
            stay.facility,
            [_condition(cast, MITRAL_STENOSIS, MS, stay, "2026-10-22T11:00:00+07:00")],
        ),
        by(bac_ninh_summary.author, [_summary(cast, bac_ninh_summary)]),
        task(first),
        by(second.sender, _referral_versions(cast, second, stay)),
        by(admission.facility, [_encounter(cast, admission)]),
        by(bach_mai_summary.author, [_summary(cast, bach_mai_summary)]),
        task(second),
        by(cast.central, [_appointment(cast, admission)]),
    ]


def _legs(cast: Cast) -> tuple[Leg, Leg]:
    first = Leg(
        referral=FIRST_REFERRAL,
        sender=cast.district,
        receiver=cast.provincial,
        letter="1873/2026/GCT",
        signed="2026-10-19T10:30:00+07:00",
        reasons=(AF,),
        source_encounter=TU_SON_VISIT,
        source_condition=ATRIAL_FIBRILLATION,
        steps=(
            Step("requested", "2026-10-19T10:35:00+07:00", "Chờ tiếp nhận"),
            Step("accepted", "2026-10-19T14:05:00+07:00", "Đã tiếp nhận, hẹn vào viện"),
            Step("in-progress", "2026-10-20T08:00:00+07:00", "Đang điều trị nội trú"),
            Step("completed", "2026-10-30T09:45:00+07:00", "Đã ra viện, trả giấy ra viện"),
        ),
        summary=BAC_NINH_SUMMARY,
        care_encounter=BAC_NINH_STAY,
        note="Hồi hộp, đánh trống ngực 2 tuần; điện tim: rung nhĩ, tần số thất 130 lần/phút. "
        "Chuyển tuyến để điều trị và làm siêu âm tim.",
        record=LetterRecord(
            file_number="2026/CT-01873",
            letter_code=f"{cast.district.facility_code}-20261019-1873",
            signs="Hồi hộp, đánh trống ngực; mạch không đều 130 lần/phút; HA 125/80 mmHg.",
            course="Hồi hộp từng cơn 2 tuần nay, tăng dần; chưa điều trị gì.",
            results="Điện tim: rung nhĩ, tần số thất 130 lần/phút.",
            state_at_transfer="Tỉnh, tiếp xúc tốt; mạch 110 lần/phút; HA 120/80 mmHg.",
            plan="Kiểm soát tần số thất, cân nhắc chống đông; siêu âm tim.",
            transport="Tự túc",
            signatories=Signatories(doctor="004518/BN-CCHN", head="001276/BN-CCHN"),
        ),
    )
    second = Leg(
        referral=SECOND_REFERRAL,
        sender=cast.provincial,
        receiver=cast.central,
        letter="4512/2026/GCT",
        signed="2026-10-30T10:00:00+07:00",
        reasons=(MS, AF),
        source_encounter=BAC_NINH_STAY,
        source_condition=MITRAL_STENOSIS,
        steps=(
            Step("requested", "2026-10-30T10:05:00+07:00", "Chờ tiếp nhận"),
            Step("accepted", "2026-10-30T15:20:00+07:00", "Đã tiếp nhận, hẹn vào Viện Tim mạch"),
            Step("in-progress", "2026-11-03T08:00:00+07:00", "Đang điều trị nội trú"),
            Step("completed", "2026-11-13T10:00:00+07:00", "Đã ra viện, trả giấy ra viện"),
        ),
        summary=BACH_MAI_SUMMARY,
        care_encounter=BACH_MAI_STAY,
        note="Hẹp van hai lá khít (diện tích lỗ van 1,0 cm²) trên siêu âm tim, rung nhĩ đã "
        "kiểm soát tần số. Chuyển tuyến để đánh giá can thiệp van.",
        record=LetterRecord(
            file_number="2026/HS-08215",
            letter_code=f"{cast.provincial.facility_code}-20261030-4512",
            signs="Khó thở khi gắng sức; rung tâm trương ở mỏm tim; mạch 88 lần/phút.",
            course="Vào viện ngày 20/10/2026 vì rung nhĩ; siêu âm tim phát hiện hẹp van hai lá "
            "khít.",
            results="Siêu âm tim: hẹp van hai lá khít, diện tích lỗ van 1,0 cm²; INR 2,3.",
            state_at_transfer="Tỉnh; mạch 84 lần/phút, không đều; HA 115/75 mmHg.",
            plan="Đánh giá và can thiệp van hai lá; tiếp tục chống đông.",
            transport="Xe cứu thương của Bệnh viện Đa khoa tỉnh Bắc Ninh",
            signatories=Signatories(doctor="007731/BN-CCHN", head="000452/BN-CCHN"),
        ),
        based_on=FIRST_REFERRAL,
        images=(BAC_NINH_CT,),
    )
    return first, second


def _visits(cast: Cast) -> tuple[Visit, Visit, Visit]:
    """The Từ Sơn visit, the Bắc Ninh stay and the Bạch Mai stay."""
    return (
        Visit(
            TU_SON_VISIT,
            cast.district,
            f"{cast.district.facility_code}.2610190042",
            "2026-10-19T08:10:00+07:00",
            "2026-10-19T10:40:00+07:00",
            ATRIAL_FIBRILLATION,
        ),
        Visit(
            BAC_NINH_STAY,
            cast.provincial,
            f"{cast.provincial.facility_code}.2610200318",
            "2026-10-20T08:00:00+07:00",
            "2026-10-30T09:30:00+07:00",
            MITRAL_STENOSIS,
            inpatient=True,
            based_on=FIRST_REFERRAL,
        ),
        Visit(
            BACH_MAI_STAY,
            cast.central,
            f"{cast.central.facility_code}.2611030577",
            "2026-11-03T08:00:00+07:00",
            "2026-11-13T09:30:00+07:00",
            MITRAL_STENOSIS,
            inpatient=True,
            based_on=SECOND_REFERRAL,
        ),
    )


def _summaries(cast: Cast, stay: Visit, admission: Visit) -> tuple[Summary, Summary]:
    return (
        Summary(
            BAC_NINH_SUMMARY,
            cast.provincial,
            stay,
            FIRST_REFERRAL,
            "Giấy ra viện - Bệnh viện Đa khoa tỉnh Bắc Ninh (dữ liệu demo)",
            "Chẩn đoán: rung nhĩ kịch phát (I48.0); hẹp van hai lá do thấp (I05.0).\n"
            "Điều trị: kiểm soát tần số thất, chống đông.\n"
            "Siêu âm tim: hẹp van hai lá khít, diện tích lỗ van 1,0 cm².\n"
            "Hướng xử trí: chuyển Bệnh viện Bạch Mai đánh giá can thiệp van.",
        ),
        Summary(
            BACH_MAI_SUMMARY,
            cast.central,
            admission,
            SECOND_REFERRAL,
            "Giấy ra viện - Bệnh viện Bạch Mai (dữ liệu demo)",
            "Chẩn đoán: hẹp van hai lá do thấp (I05.0); rung nhĩ (I48.0).\n"
            "Đã nong van hai lá bằng bóng qua da ngày 05/11/2026; diện tích lỗ van sau nong "
            "1,8 cm².\n"
            "Ra viện ổn định; tiếp tục chống đông; tái khám ngày 14/12/2026 tại Viện Tim mạch.",
        ),
    )


# ------------------------------------------------------------------------ resources
def _resource(cast: Cast, resource_type: str, resource_id: str, body: Resource) -> Resource:
    return {
        "resourceType": resource_type,
        "id": resource_id,
        "meta": {"tag": [dict(cast.tag)]},
        **body,
    }


def _ref(resource_type: str, resource_id: str) -> dict[str, str]:
    return {"reference": f"{resource_type}/{resource_id}"}


def _org(facility: Facility) -> dict[str, str]:
    return {"reference": f"Organization/{facility.client_id}", "display": facility.name}


def _icd(diagnosis: tuple[str, str]) -> Resource:
    code, display = diagnosis
    return {"coding": [{"system": ICD10, "code": code, "display": display}], "text": display}


def _encounter(cast: Cast, visit: Visit) -> Resource:
    code, display = ("IMP", "inpatient encounter") if visit.inpatient else ("AMB", "ambulatory")
    body: Resource = {
        "identifier": [{"system": EPISODE_LINK, "value": visit.episode}],
        "status": "finished",
        "class": {
            "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
            "code": code,
            "display": display,
        },
        "subject": _ref("Patient", cast.patient_id),
        "period": {"start": visit.start, "end": visit.end},
        "diagnosis": [{"condition": _ref("Condition", visit.condition), "rank": 1}],
        "serviceProvider": _org(visit.facility),
    }
    if visit.based_on:
        body["basedOn"] = [_ref("ServiceRequest", visit.based_on)]
    return _resource(cast, "Encounter", visit.id, body)


def _condition(
    cast: Cast, condition_id: str, diagnosis: tuple[str, str], visit: Visit, recorded: str
) -> Resource:
    return _resource(
        cast,
        "Condition",
        condition_id,
        {
            "clinicalStatus": CONDITION_ACTIVE,
            "verificationStatus": CONDITION_CONFIRMED,
            "category": [ENCOUNTER_DIAGNOSIS],
            "code": _icd(diagnosis),
            "subject": _ref("Patient", cast.patient_id),
            "encounter": _ref("Encounter", visit.id),
            "recordedDate": recorded,
        },
    )


def _referral_versions(cast: Cast, leg: Leg, source: Visit) -> list[Resource]:
    """The letter as signed (active), then fulfilled (completed), with what table 13 needs
    (:mod:`emr_hub.demo_insurance`); ``source`` is the visit it closes.

    ``occurrencePeriod`` is the validity the hub would compute from ``authoredOn``, written out
    so that the stored letter equals what this module writes (a re-run then finds it)."""
    signed = datetime.fromisoformat(leg.signed)
    validity = rules.check_validity(None, signed, [code for code, _ in leg.reasons])
    body: Resource = {
        "identifier": [
            {
                "use": "official",
                "system": REFERRAL_LETTER_SYSTEM + leg.sender.facility_code,
                "value": leg.letter,
                "assigner": _org(leg.sender),
            },
            *letter_identifiers(leg.record, leg.sender.facility_code, _org(leg.sender)),
        ],
        "extension": letter_extensions(leg.record, source.start, source.end),
        "status": "active",
        "intent": "order",
        "category": [REFERRAL_CATEGORY],
        "priority": "routine",
        "subject": _ref("Patient", cast.patient_id),
        "encounter": episode_reference(
            f"Encounter/{source.id}", source.episode, source.facility.facility_code
        ),
        "occurrencePeriod": validity,
        "authoredOn": leg.signed,
        "requester": _org(leg.sender),
        "performer": [_org(leg.receiver)],
        "reasonCode": [_icd(reason) for reason in leg.reasons],
        "reasonReference": [_ref("Condition", leg.source_condition)],
        "supportingInfo": [
            _ref("Encounter", leg.source_encounter),
            _ref("Condition", leg.source_condition),
            *(_ref("ImagingStudy", study) for study in leg.images),
        ],
        "note": [
            {"text": leg.note},
            *letter_notes(leg.record, "; ".join(f"{text} ({code})" for code, text in leg.reasons)),
        ],
    }
    if leg.based_on:
        body["basedOn"] = [_ref("ServiceRequest", leg.based_on)]
    letter = _resource(cast, "ServiceRequest", leg.referral, body)
    return [letter, {**letter, "status": "completed"}]


def _task_versions(cast: Cast, leg: Leg) -> list[Resource]:
    """One version per step; the receiving hospital's stay is the execution period and its
    discharge summary (with the stay itself) the output of the completed Task."""
    started = next(step.at for step in leg.steps if step.status == "in-progress")
    base = _resource(
        cast,
        "Task",
        leg.referral + TASK_SUFFIX,
        {
            "status": leg.steps[0].status,
            "intent": "order",
            "code": TASK_FULFILL,
            "focus": _ref("ServiceRequest", leg.referral),
            "for": _ref("Patient", cast.patient_id),
            "encounter": _ref("Encounter", leg.source_encounter),
            "authoredOn": leg.steps[0].at,
            "requester": _org(leg.sender),
            "owner": _org(leg.receiver),
        },
    )
    versions = []
    for step in leg.steps:
        version = {
            **base,
            "status": step.status,
            "businessStatus": {"text": step.business_status},
            "lastModified": step.at,
        }
        if step.status in ("in-progress", "completed"):
            version["executionPeriod"] = {"start": started}
        if step.status == "completed":
            version["executionPeriod"] = {"start": started, "end": step.at}
            version["output"] = [
                {
                    "type": DISCHARGE_SUMMARY,
                    "valueReference": _ref("DocumentReference", leg.summary),
                },
                {"type": CARE_EPISODE, "valueReference": _ref("Encounter", leg.care_encounter)},
            ]
        versions.append(version)
    return versions


def _summary(cast: Cast, summary: Summary) -> Resource:
    visit = summary.encounter
    text = summary.text.encode("utf-8")
    return _resource(
        cast,
        "DocumentReference",
        summary.id,
        {
            "status": "current",
            "docStatus": "final",
            "type": DISCHARGE_SUMMARY,
            "subject": _ref("Patient", cast.patient_id),
            "date": visit.end,
            "author": [_org(summary.author)],
            "custodian": _org(summary.author),
            "description": summary.title,
            "content": [
                {
                    "attachment": {
                        "contentType": "text/plain; charset=utf-8",
                        "language": "vi",
                        "data": base64.b64encode(text).decode("ascii"),
                        "title": summary.title,
                        "creation": visit.end,
                    }
                }
            ],
            "context": {
                "encounter": [_ref("Encounter", visit.id)],
                "period": {"start": visit.start, "end": visit.end},
                "related": [_ref("ServiceRequest", summary.referral)],
            },
        },
    )


def _appointment(cast: Cast, stay: Visit) -> Resource:
    """The re-exam slip after ``stay``: the hospital takes part as R4 allows (see
    :mod:`emr_hub.referrals.xml130`): type primary performer, the Organization in the
    participant-org extension; with the signatories and the stay table 14 needs."""
    hospital = cast.central
    return _resource(
        cast,
        "Appointment",
        REEXAM,
        {
            "identifier": [
                {
                    "use": "official",
                    "system": REEXAM_SLIP_SYSTEM + hospital.facility_code,
                    "value": "HKL-2026-031127",
                    "assigner": _org(hospital),
                }
            ],
            "extension": [
                episode_dates(stay.start, stay.end),
                *signed_by(Signatories(doctor="012877/HNO-CCHN", head="000123/BYT-CCHN")),
            ],
            "status": "booked",
            "appointmentType": FOLLOW_UP,
            "reasonCode": [_icd(MS)],
            "description": "Tái khám sau nong van hai lá",
            "start": "2026-12-14T08:00:00+07:00",
            "end": "2026-12-14T11:00:00+07:00",
            "created": "2026-11-13",
            "comment": "Hẹp van hai lá do thấp (I05.0) đã nong van bằng bóng; rung nhĩ (I48.0)",
            "patientInstruction": "Mang theo giấy ra viện và kết quả INR gần nhất.",
            "basedOn": [_ref("ServiceRequest", SECOND_REFERRAL)],
            "supportingInformation": [
                episode_reference(f"Encounter/{stay.id}", stay.episode, hospital.facility_code)
            ],
            "participant": [
                {
                    "actor": _ref("Patient", cast.patient_id),
                    "required": "required",
                    "status": "accepted",
                },
                {
                    "extension": [{"url": EXT_PARTICIPANT_ORG, "valueReference": _org(hospital)}],
                    "type": [PRIMARY_PERFORMER],
                    "required": "required",
                    "status": "accepted",
                },
            ],
        },
    )
