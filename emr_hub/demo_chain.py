"""The demo's finished referral chain, and the version writer that keeps the demo idempotent.

The story of the demo patient (Vietnam time, 2026):

* **19 Oct**, Từ Sơn health centre (BAN_DAU): palpitations; the ECG shows paroxysmal atrial
  fibrillation (I48.0). Letter 1873/2026/GCT refers her to Bắc Ninh general hospital (CO_BAN,
  one level up), with a Task the hospital accepts the same afternoon.
* **20-30 Oct**, Bắc Ninh general: admitted; echocardiography finds rheumatic mitral stenosis
  (I05.0). The discharge summary goes back on the Task, which completes. Its own letter
  4512/2026/GCT, ``basedOn`` the first, refers her on to Bạch Mai (CHUYEN_SAU: one level up,
  and its partner).
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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy.orm import Session

from emr_hub.fhir import interactions
from emr_hub.fhir.identifiers import EPISODE_LINK
from emr_hub.fhir.store import Author, FhirStore, Stored
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
from emr_hub.security.principal import OPERATOR, Principal
from emr_hub.security.scopes import ScopeSet

Resource = dict[str, Any]

# ------------------------------------------------------------------------------------ ids
TU_SON_VISIT = "demo-lan-tu-son-visit"
ATRIAL_FIBRILLATION = "demo-lan-atrial-fibrillation"
FIRST_REFERRAL = "demo-lan-referral-tu-son-to-bac-ninh"
BAC_NINH_STAY = "demo-lan-bac-ninh-stay"
MITRAL_STENOSIS = "demo-lan-mitral-stenosis"
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


class Facility(Protocol):
    """A hospital of the chain (the demo's ``DemoHospital``)."""

    @property
    def client_id(self) -> str: ...

    @property
    def facility_code(self) -> str: ...

    @property
    def name(self) -> str: ...


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
    based_on: str | None = None


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


# -------------------------------------------------------------------------- writing
Authored = tuple[Facility | None, Resource]
"""A version and the hospital that writes it (None: the operator, for the directory)."""


class Writers:
    """One store and principal per hospital on one session, so each version is written as
    the hospital whose it is (through the rules a hospital's own request meets)."""

    def __init__(self, session: Session, base_url: str) -> None:
        self.session = session
        self.base_url = base_url
        self._stores: dict[str | None, tuple[FhirStore, Principal]] = {}

    def _as(self, author: Facility | None) -> tuple[FhirStore, Principal]:
        key = author.client_id if author is not None else None
        if key not in self._stores:
            if key is None:
                principal = OPERATOR
            else:
                organization = f"Organization/{key}"
                principal = Principal(key, organization, ScopeSet.parse("system/*.cruds"), "demo")
            author_row = Author(
                principal.client_id, principal.organization, operator=principal.is_operator
            )
            store = FhirStore(self.session, base_url=self.base_url, author=author_row)
            self._stores[key] = (store, principal)
        return self._stores[key]

    def current(self, resource_type: str, resource_id: str) -> Stored | None:
        return self._as(None)[0].current(resource_type, resource_id)

    def write(self, author: Facility | None, version: Resource) -> None:
        store, principal = self._as(author)
        interactions.update(store, principal, version["resourceType"], version["id"], version)
        store.flush()


WRITTEN, UNCHANGED, KEPT = "written", "unchanged", "kept"


def write_versions(writers: Writers, versions: Sequence[Authored], *, reset: bool = False) -> str:
    """Write the versions of one resource that are not stored yet, each as its author; returns
    :data:`WRITTEN`, :data:`UNCHANGED` or :data:`KEPT`.

    The stored content is looked up among ``versions`` and only the later ones are written, so
    a re-run writes nothing. A resource someone changed or deleted since (its content matching
    none of the demo's versions) is theirs now: it is kept as it is, unless ``reset``, which
    writes the last version over it as the operator: one new version bringing it back to the
    demo's state (a repair, which the workflow would not allow a hospital: a Task moved to a
    final status)."""
    first = versions[0][1]
    stored = writers.current(first["resourceType"], first["id"])
    contents = [version for _, version in versions]
    if stored is None:
        for author, version in versions:
            writers.write(author, version)
        return WRITTEN
    content = None if stored.deleted or stored.content is None else _without_meta(stored.content)
    matched = [i for i, version in enumerate(contents) if _without_meta(version) == content]
    if not matched:
        if not reset:
            return KEPT
        writers.write(None, contents[-1])
        return WRITTEN
    missing = versions[matched[0] + 1 :]
    for author, version in missing:
        writers.write(author, version)
    return WRITTEN if missing else UNCHANGED


def _without_meta(resource: Mapping[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in resource.items() if key != "meta"}


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
        by(first.sender, _referral_versions(cast, first)),
        by(stay.facility, [_encounter(cast, stay)]),
        by(
            stay.facility,
            [_condition(cast, MITRAL_STENOSIS, MS, stay, "2026-10-22T11:00:00+07:00")],
        ),
        by(bac_ninh_summary.author, [_summary(cast, bac_ninh_summary)]),
        task(first),
        by(second.sender, _referral_versions(cast, second)),
        by(admission.facility, [_encounter(cast, admission)]),
        by(bach_mai_summary.author, [_summary(cast, bach_mai_summary)]),
        task(second),
        by(cast.central, [_appointment(cast)]),
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
        based_on=FIRST_REFERRAL,
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


def _referral_versions(cast: Cast, leg: Leg) -> list[Resource]:
    """The letter as signed (active), then fulfilled (completed).

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
            }
        ],
        "status": "active",
        "intent": "order",
        "category": [REFERRAL_CATEGORY],
        "priority": "routine",
        "subject": _ref("Patient", cast.patient_id),
        "encounter": _ref("Encounter", leg.source_encounter),
        "occurrencePeriod": validity,
        "authoredOn": leg.signed,
        "requester": _org(leg.sender),
        "performer": [_org(leg.receiver)],
        "reasonCode": [_icd(reason) for reason in leg.reasons],
        "reasonReference": [_ref("Condition", leg.source_condition)],
        "supportingInfo": [
            _ref("Encounter", leg.source_encounter),
            _ref("Condition", leg.source_condition),
        ],
        "note": [{"text": leg.note}],
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


def _appointment(cast: Cast) -> Resource:
    """The re-exam slip: the hospital takes part as R4 allows (see :mod:`emr_hub.referrals.
    xml130`): type primary performer, the Organization in the participant-org extension."""
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
            "status": "booked",
            "appointmentType": FOLLOW_UP,
            "reasonCode": [_icd(MS)],
            "description": "Tái khám sau nong van hai lá",
            "start": "2026-12-14T08:00:00+07:00",
            "end": "2026-12-14T11:00:00+07:00",
            "created": "2026-11-13",
            "comment": "Mang theo giấy ra viện và kết quả INR gần nhất.",
            "basedOn": [_ref("ServiceRequest", SECOND_REFERRAL)],
            "supportingInformation": [_ref("Encounter", BACH_MAI_STAY)],
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
