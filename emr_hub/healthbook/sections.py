"""The sections of the health-book summary: which records each holds, in what order, and the
columns of its narrative.

The first eight are sections of the HL7 International Patient Summary (IPS), coded with the
LOINC section codes the IPS Composition profile gives them; problems, allergies and
medications are the ones IPS requires. The last three carry what Decision 1332/QĐ-BYT puts in
the health book and IPS has no section for: referral letters, upcoming re-exams and recent
visits, coded with the LOINC document-section codes closest to them (57133-1 Referral note,
18776-5 Plan of care note, 46240-8 History of Hospitalizations+Outpatient visits).
``docs/healthbook.md`` lists the mapping.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from emr_hub.healthbook import narrative as text

Resource = dict[str, Any]
Names = Callable[[Any], str]
"""The display of what a Reference points at (an Organization's name, a Condition's code)."""

REFERRAL_CATEGORY = ("http://snomed.info/sct", "3457005")
OBSERVATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
ACTIVE_PROBLEM = frozenset({"active", "recurrence", "relapse"})
NOT_TRUE = frozenset({"entered-in-error", "refuted"})
ACTIVE_MEDICATION = frozenset({"active", "intended", "on-hold"})
RESULT_STATUS = frozenset({"final", "amended", "corrected", "preliminary"})
UPCOMING = frozenset({"proposed", "pending", "booked"})
MOST = 50
"""At most this many entries in a section of results, vital signs, procedures or visits (the
newest); a health book shows the recent, the hub keeps everything."""
RECENT_VISITS = 10


@dataclass(frozen=True)
class Context:
    now: datetime
    names: Names


@dataclass(frozen=True)
class Section:
    key: str
    code: str
    display: str
    """The LOINC display of ``code``."""
    title: str
    """The Vietnamese title shown to the citizen."""
    types: tuple[str, ...]
    select: Callable[[dict[str, list[Resource]], Context], list[Resource]]
    headers: tuple[str, ...]
    row: Callable[[Resource, Context], list[str]]


def _of(types: dict[str, list[Resource]], *names: str) -> list[Resource]:
    return [r for name in names for r in types.get(name, [])]


def _newest(resources: list[Resource], when: Callable[[Resource], str]) -> list[Resource]:
    return sorted(resources, key=lambda r: (when(r), r.get("id", "")), reverse=True)


def _has_category(resource: Mapping[str, Any], system: str, code: str) -> bool:
    for category in resource.get("category") or []:
        for coding in (category or {}).get("coding") or []:
            if coding.get("system") == system and coding.get("code") == code:
                return True
    return False


def _true(resource: Mapping[str, Any]) -> bool:
    return text.status_of(resource, "verificationStatus") not in NOT_TRUE


# ------------------------------------------------------------------ problems, past illness
def _onset(resource: Resource) -> str:
    return str(resource.get("onsetDateTime") or resource.get("recordedDate") or "")


def _problems(types: dict[str, list[Resource]], _: Context) -> list[Resource]:
    found = [
        r
        for r in _of(types, "Condition")
        if _true(r) and (text.status_of(r, "clinicalStatus") or "active") in ACTIVE_PROBLEM
    ]
    return _newest(found, _onset)


def _past_illness(types: dict[str, list[Resource]], _: Context) -> list[Resource]:
    found = [
        r
        for r in _of(types, "Condition")
        if _true(r) and text.status_of(r, "clinicalStatus") not in ("", *ACTIVE_PROBLEM)
    ]
    return _newest(found, _onset)[:MOST]


def _condition_row(resource: Resource, _: Context) -> list[str]:
    return [
        text.concept(resource.get("code")),
        text.day(_onset(resource)),
        text.day(resource.get("abatementDateTime")),
    ]


# ------------------------------------------------------------------ allergies
def _allergies(types: dict[str, list[Resource]], _: Context) -> list[Resource]:
    found = [r for r in _of(types, "AllergyIntolerance") if _true(r)]
    return _newest(found, lambda r: str(r.get("recordedDate") or r.get("onsetDateTime") or ""))


def _allergy_row(resource: Resource, _: Context) -> list[str]:
    reactions = [
        text.concepts(reaction.get("manifestation"))
        for reaction in resource.get("reaction") or []
        if isinstance(reaction, Mapping)
    ]
    return [
        text.concept(resource.get("code")),
        ", ".join(str(c) for c in resource.get("category") or []),
        str(resource.get("criticality") or ""),
        "; ".join(r for r in reactions if r),
    ]


# ------------------------------------------------------------------ medications
def _medications(types: dict[str, list[Resource]], _: Context) -> list[Resource]:
    found = [
        r
        for r in _of(types, "MedicationStatement", "MedicationRequest")
        if r.get("status") in ACTIVE_MEDICATION
    ]
    return _newest(found, lambda r: str(r.get("authoredOn") or r.get("dateAsserted") or ""))


def _medication_row(resource: Resource, context: Context) -> list[str]:
    medicine = text.concept(resource.get("medicationCodeableConcept")) or context.names(
        resource.get("medicationReference")
    )
    dosage = "; ".join(
        str(d.get("text"))
        for d in resource.get("dosageInstruction") or resource.get("dosage") or []
        if isinstance(d, Mapping) and d.get("text")
    )
    started = resource.get("authoredOn") or resource.get("dateAsserted")
    return [medicine, dosage, text.day(started)]


# ------------------------------------------------------------------ immunizations
def _immunizations(types: dict[str, list[Resource]], _: Context) -> list[Resource]:
    found = [r for r in _of(types, "Immunization") if r.get("status") == "completed"]
    return _newest(found, lambda r: str(r.get("occurrenceDateTime") or ""))


def _immunization_row(resource: Resource, context: Context) -> list[str]:
    return [
        text.concept(resource.get("vaccineCode")),
        text.day(resource.get("occurrenceDateTime")),
        context.names(resource.get("location")) or context.names(resource.get("performer")),
    ]


# ------------------------------------------------------------------ results, vital signs
def _observed(resource: Resource) -> str:
    return str(
        resource.get("effectiveDateTime")
        or text.period_start(resource.get("effectivePeriod"))
        or resource.get("issued")
        or ""
    )


def _latest_per_code(category: str) -> Callable[[dict[str, list[Resource]], Context], list]:
    """The newest Observation of each code in ``category``: what the value is now."""

    def select(types: dict[str, list[Resource]], _: Context) -> list[Resource]:
        latest: dict[str, Resource] = {}
        for resource in _newest(_of(types, "Observation"), _observed):
            if resource.get("status") not in RESULT_STATUS:
                continue
            if not _has_category(resource, OBSERVATION_CATEGORY, category):
                continue
            latest.setdefault(_code_key(resource.get("code")), resource)
        return list(latest.values())[:MOST]

    return select


def _code_key(value: Any) -> str:
    codings = (value or {}).get("coding") or [] if isinstance(value, Mapping) else []
    for coding in codings:
        if isinstance(coding, Mapping) and coding.get("code"):
            return f"{coding.get('system')}|{coding['code']}"
    return text.concept(value)


def _observation_row(resource: Resource, _: Context) -> list[str]:
    return [
        text.concept(resource.get("code")),
        text.observation_value(resource),
        text.day(_observed(resource)),
    ]


# ------------------------------------------------------------------ procedures
def _performed(resource: Resource) -> str:
    return str(
        resource.get("performedDateTime")
        or text.period_start(resource.get("performedPeriod"))
        or ""
    )


def _procedures(types: dict[str, list[Resource]], _: Context) -> list[Resource]:
    found = [r for r in _of(types, "Procedure") if r.get("status") == "completed"]
    return _newest(found, _performed)[:MOST]


def _procedure_row(resource: Resource, _: Context) -> list[str]:
    return [text.concept(resource.get("code")), text.day(_performed(resource))]


# ------------------------------------------------------------------ referral letters
REFERRAL_STATUS = {
    "draft": "Bản nháp",
    "active": "Đang hiệu lực",
    "on-hold": "Tạm dừng",
    "revoked": "Đã thu hồi",
    "completed": "Đã hoàn tất",
    "entered-in-error": "Nhập nhầm",
    "unknown": "Không rõ",
}


def _referrals(types: dict[str, list[Resource]], _: Context) -> list[Resource]:
    system, code = REFERRAL_CATEGORY
    found = [
        r
        for r in _of(types, "ServiceRequest")
        if _has_category(r, system, code) and r.get("status") != "entered-in-error"
    ]
    return _newest(found, lambda r: str(r.get("authoredOn") or ""))


def _referral_row(resource: Resource, context: Context) -> list[str]:
    valid = resource.get("occurrencePeriod") or {}
    status = str(resource.get("status") or "")
    return [
        text.day(resource.get("authoredOn")),
        context.names(resource.get("requester")),
        ", ".join(n for n in (context.names(p) for p in resource.get("performer") or []) if n),
        text.concepts(resource.get("reasonCode")),
        REFERRAL_STATUS.get(status, status),
        text.day(valid.get("end")) if isinstance(valid, Mapping) else "",
    ]


# ------------------------------------------------------------------ re-exams
def _start(resource: Resource) -> datetime | None:
    value = resource.get("start")
    try:
        return datetime.fromisoformat(str(value)) if value else None
    except ValueError:
        return None


def _reexams(types: dict[str, list[Resource]], context: Context) -> list[Resource]:
    found = [
        r
        for r in _of(types, "Appointment")
        if r.get("status") in UPCOMING
        and (start := _start(r)) is not None
        and start.tzinfo is not None
        and start >= context.now
    ]
    return sorted(found, key=lambda r: (_start(r), r.get("id", "")))


def _reexam_row(resource: Resource, context: Context) -> list[str]:
    places = [
        context.names(p.get("actor"))
        for p in resource.get("participant") or []
        if isinstance(p, Mapping) and _points_at(p.get("actor"), ("Organization", "Location"))
    ]
    return [
        str(resource.get("start") or "")[:16].replace("T", " "),
        ", ".join(p for p in places if p),
        text.concepts(resource.get("serviceType")) or str(resource.get("description") or ""),
    ]


def _points_at(reference: Any, types: tuple[str, ...]) -> bool:
    target = reference.get("reference") if isinstance(reference, Mapping) else None
    return isinstance(target, str) and target.split("/")[0] in types


# ------------------------------------------------------------------ recent visits
def _visits(types: dict[str, list[Resource]], _: Context) -> list[Resource]:
    found = [r for r in _of(types, "Encounter") if r.get("status") != "entered-in-error"]
    return _newest(found, lambda r: text.period_start(r.get("period")))[:RECENT_VISITS]


def _visit_row(resource: Resource, context: Context) -> list[str]:
    diagnoses = [
        context.names(d.get("condition"))
        for d in resource.get("diagnosis") or []
        if isinstance(d, Mapping)
    ]
    return [
        text.period_start(resource.get("period")),
        context.names(resource.get("serviceProvider")),
        text.concepts(resource.get("reasonCode")) or text.concepts(resource.get("type")),
        ", ".join(d for d in diagnoses if d),
    ]


SECTIONS: tuple[Section, ...] = (
    Section(
        "problems",
        "11450-4",
        "Problem list - Reported",
        "Vấn đề sức khỏe hiện tại",
        ("Condition",),
        _problems,
        ("Vấn đề", "Khởi phát", "Kết thúc"),
        _condition_row,
    ),
    Section(
        "allergies",
        "48765-2",
        "Allergies and adverse reactions Document",
        "Dị ứng và phản ứng có hại",
        ("AllergyIntolerance",),
        _allergies,
        ("Tác nhân", "Loại", "Mức độ nguy hiểm", "Phản ứng"),
        _allergy_row,
    ),
    Section(
        "medications",
        "10160-0",
        "History of Medication use Narrative",
        "Thuốc đang dùng",
        ("MedicationStatement", "MedicationRequest"),
        _medications,
        ("Thuốc", "Cách dùng", "Từ ngày"),
        _medication_row,
    ),
    Section(
        "immunizations",
        "11369-6",
        "History of Immunization Narrative",
        "Tiêm chủng",
        ("Immunization",),
        _immunizations,
        ("Vắc xin", "Ngày tiêm", "Nơi tiêm"),
        _immunization_row,
    ),
    Section(
        "results",
        "30954-2",
        "Relevant diagnostic tests/laboratory data Narrative",
        "Kết quả xét nghiệm",
        ("Observation",),
        _latest_per_code("laboratory"),
        ("Xét nghiệm", "Kết quả", "Ngày"),
        _observation_row,
    ),
    Section(
        "vital-signs",
        "8716-3",
        "Vital signs",
        "Dấu hiệu sinh tồn",
        ("Observation",),
        _latest_per_code("vital-signs"),
        ("Chỉ số", "Giá trị", "Ngày"),
        _observation_row,
    ),
    Section(
        "procedures",
        "47519-4",
        "History of Procedures Document",
        "Thủ thuật, phẫu thuật",
        ("Procedure",),
        _procedures,
        ("Thủ thuật", "Ngày"),
        _procedure_row,
    ),
    Section(
        "past-illness",
        "11348-0",
        "History of Past illness Narrative",
        "Tiền sử bệnh",
        ("Condition",),
        _past_illness,
        ("Bệnh", "Khởi phát", "Khỏi"),
        _condition_row,
    ),
    Section(
        "referrals",
        "57133-1",
        "Referral note",
        "Giấy chuyển tuyến",
        ("ServiceRequest",),
        _referrals,
        ("Ngày ký", "Nơi chuyển", "Nơi nhận", "Lý do", "Trạng thái", "Hiệu lực đến"),
        _referral_row,
    ),
    Section(
        "re-exams",
        "18776-5",
        "Plan of care note",
        "Lịch tái khám",
        ("Appointment",),
        _reexams,
        ("Thời gian", "Nơi khám", "Dịch vụ"),
        _reexam_row,
    ),
    Section(
        "visits",
        "46240-8",
        "History of Hospitalizations+Outpatient visits Narrative",
        "Các lần khám gần đây",
        ("Encounter",),
        _visits,
        ("Ngày", "Cơ sở khám chữa bệnh", "Lý do", "Chẩn đoán ra viện"),
        _visit_row,
    ),
)

LOADED_TYPES = frozenset(
    {
        "Patient",
        "Condition",
        "Organization",
        "Practitioner",
        "PractitionerRole",
        "Location",
        "Medication",
    }
    | {t for section in SECTIONS for t in section.types}
)
"""The types the summary reads from the patient's compartment and what it points at."""
