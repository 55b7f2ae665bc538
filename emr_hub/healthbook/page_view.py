"""What the health-book page shows, read for the signed-in citizen.

Everything comes through the FHIR store with her principal (a citizen principal for her
person key, as :func:`emr_hub.security.tokens.verify_access_token` builds one), in one
snapshot (:func:`emr_hub.fhir.routes.in_snapshot`), so the access policy applies and the
request's audit trail records what was disclosed: the summary
(:func:`~emr_hub.healthbook.summary.patient_summary`), her ImagingStudies, her privacy
Consents and the hospitals of the directory. The access log is the ``$access-log``
operation's own reading.

The sections are shown from the summary's Composition: each section's title and its narrative
table (written by :mod:`.narrative`), parsed back into rows, so the page renders text through
its escaping templates and never a resource's markup.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from defusedxml import ElementTree
from sqlalchemy import select

from emr_hub.fhir.search.indexer import COMPARTMENT
from emr_hub.fhir.search.params import parse_search
from emr_hub.fhir.search.service import run_search
from emr_hub.fhir.store import RESOURCE
from emr_hub.healthbook import narrative
from emr_hub.healthbook.summary import patient_summary
from emr_hub.imaging.study import DICOM_UID
from emr_hub.security.audit.access_log import read_access_log
from emr_hub.security.consent import is_privacy_consent
from emr_hub.security.principal import Principal
from emr_hub.security.scopes import ScopeSet
from emr_hub.security.tokens import CITIZEN_CLIENT_ID, CITIZEN_SCOPE

if TYPE_CHECKING:
    from emr_hub.fhir.store import FhirStore
    from emr_hub.hub import Hub

VIETNAM = timezone(timedelta(hours=7), "ICT")
"""Vietnam's time (UTC+7, no daylight saving): the times the page shows."""
XHTML = "{" + narrative.XHTML + "}"
ACCESS_LOG_ROWS = 100
DIRECTORY_ROWS = 500
CONSENT_ROWS = 500
IMAGING_ROWS = 100

DATA_KINDS = {
    "Patient": "Thông tin hành chính",
    "Encounter": "Lần khám",
    "EpisodeOfCare": "Đợt điều trị",
    "Condition": "Chẩn đoán, bệnh",
    "Observation": "Xét nghiệm, chỉ số",
    "DiagnosticReport": "Kết quả cận lâm sàng",
    "ImagingStudy": "Chẩn đoán hình ảnh",
    "AllergyIntolerance": "Dị ứng",
    "Immunization": "Tiêm chủng",
    "Procedure": "Thủ thuật, phẫu thuật",
    "MedicationRequest": "Đơn thuốc",
    "MedicationStatement": "Thuốc đang dùng",
    "MedicationDispense": "Cấp phát thuốc",
    "DocumentReference": "Tài liệu (giấy ra viện ...)",
    "ServiceRequest": "Giấy chuyển tuyến, chỉ định",
    "Task": "Tiến trình chuyển tuyến",
    "Appointment": "Lịch hẹn",
    "Consent": "Đồng ý chia sẻ",
    "Coverage": "Thẻ bảo hiểm y tế",
    "Claim": "Hồ sơ thanh toán BHYT",
}
ACTIONS = {
    "read": "Xem",
    "vread": "Xem phiên bản cũ",
    "history-instance": "Xem lịch sử",
    "history-type": "Xem lịch sử",
    "search-type": "Tìm kiếm",
    "search-system": "Tìm kiếm",
    "operation": "Thao tác",
    "create": "Ghi mới",
    "update": "Cập nhật",
    "patch": "Cập nhật",
    "delete": "Xóa",
    "transaction": "Gửi hồ sơ",
    "batch": "Gửi hồ sơ",
    "110127": "Mở hồ sơ khẩn cấp",
}
OPERATIONS = {
    "$shl-manifest": "Mở liên kết chia sẻ",
    "$summary": "Xem tóm tắt hồ sơ",
    "$everything": "Xem toàn bộ hồ sơ",
    "$health-cards-issue": "Cấp thẻ sức khỏe",
    "$referral-history": "Xem lịch sử chuyển tuyến",
    "$export": "Xuất dữ liệu",
}
MODALITIES = {
    "CT": "Chụp cắt lớp vi tính",
    "MR": "Cộng hưởng từ",
    "CR": "X-quang",
    "DX": "X-quang",
    "RF": "X-quang tăng sáng",
    "MG": "Chụp X-quang tuyến vú",
    "US": "Siêu âm",
    "XA": "Chụp mạch",
    "NM": "Y học hạt nhân",
    "PT": "Chụp PET",
    "ES": "Nội soi",
    "ECG": "Điện tim",
    "OT": "Khác",
}
"""DICOM modality codes (DCM) as the page names them in Vietnamese, the code kept beside."""
PURPOSES = {"TREAT": "Điều trị", "ETREAT": "Cấp cứu"}
OUTCOMES = {"0": "Thành công", "4": "Bị từ chối", "8": "Lỗi hệ thống"}


@dataclass(frozen=True)
class SectionView:
    code: str
    title: str
    headers: list[str]
    rows: list[list[str]]


@dataclass(frozen=True)
class ImagingView:
    """One of her imaging studies. ``facility`` is the hospital that sent it (the study's
    writer: the ImagingStudy the hub makes names no referrer or performer)."""

    started: str
    modalities: str
    description: str
    facility: str
    series: int
    instances: int
    study_uid: str


@dataclass(frozen=True)
class AccessView:
    when: str
    facility: str
    practitioner: str
    action: str
    data: str
    purpose: str
    outcome: str
    break_glass: bool
    reason: str


@dataclass(frozen=True)
class ConsentView:
    consent_id: str
    permit: bool
    hospitals: list[str]
    since: str
    until: str


@dataclass(frozen=True)
class Hospital:
    reference: str
    name: str


@dataclass
class BookView:
    """The page's content for one of the citizen's Patient resources."""

    patient_id: str
    patient_ids: list[str]
    name: str
    birth_date: str
    sections: list[SectionView]
    consents: list[ConsentView]
    hospitals: list[Hospital]
    bundle: dict[str, Any] = field(repr=False)
    images: list[ImagingView] = field(default_factory=list)
    accesses: list[AccessView] = field(default_factory=list)


def citizen_principal(person: str, session_id: str) -> Principal:
    """The principal of the signed-in citizen: what her access token would carry."""
    return Principal.citizen(
        person,
        CITIZEN_CLIENT_ID,
        ScopeSet.parse(CITIZEN_SCOPE),
        f"health-book-session:{session_id[:16]}",
    )


def her_patients(store: FhirStore, person: str) -> list[str]:
    """The ids of the live Patient resources of ``person`` (one per hospital that registered
    her), by the person key every Patient row of the compartment carries."""
    rows = store.session.execute(
        select(COMPARTMENT.c.resource_id)
        .join(
            RESOURCE,
            (RESOURCE.c.resource_type == COMPARTMENT.c.resource_type)
            & (RESOURCE.c.id == COMPARTMENT.c.resource_id),
        )
        .where(
            COMPARTMENT.c.resource_type == "Patient",
            COMPARTMENT.c.patient_id == COMPARTMENT.c.resource_id,
            COMPARTMENT.c.person == person,
            RESOURCE.c.deleted.is_(False),
        )
        .order_by(COMPARTMENT.c.resource_id)
    )
    return [patient_id for (patient_id,) in rows]


def read_book(
    store: FhirStore, principal: Principal, base_url: str, wanted: str | None
) -> BookView | None:
    """The page's content (None when the hub holds no Patient of hers): ``wanted`` picks one
    of her Patient resources, else the first."""
    assert principal.person is not None
    patient_ids = her_patients(store, principal.person)
    if not patient_ids:
        return None
    patient_id = wanted if wanted in patient_ids else patient_ids[0]
    bundle = patient_summary(store, principal, patient_id, base_url)
    patient = _patient_of(bundle)
    hospitals = _hospitals(store, principal, base_url)
    names = {h.reference: h.name for h in hospitals}
    return BookView(
        patient_id=patient_id,
        patient_ids=patient_ids,
        name=_name(patient),
        birth_date=narrative.day(patient.get("birthDate")),
        sections=sections_of(bundle),
        consents=_consents(store, principal, base_url, names),
        hospitals=hospitals,
        bundle=bundle,
        images=_images(store, principal, patient_id, base_url, names),
    )


def accesses_of(hub: Hub, principal: Principal, patient_id: str) -> list[AccessView]:
    """Who accessed her record, newest first (the ``$access-log`` reading)."""
    log = read_access_log(hub, principal, patient_id, ACCESS_LOG_ROWS, None)
    return [_access(part["part"]) for part in log["parameter"] if part.get("name") == "access"]


# ------------------------------------------------------------------ sections
def sections_of(bundle: dict[str, Any]) -> list[SectionView]:
    composition = bundle["entry"][0]["resource"]
    out = []
    for section in composition.get("section") or []:
        code = ((section.get("code") or {}).get("coding") or [{}])[0].get("code", "")
        headers, rows = _table((section.get("text") or {}).get("div") or "")
        out.append(SectionView(str(code), str(section.get("title") or ""), headers, rows))
    return out


def _table(div: str) -> tuple[list[str], list[list[str]]]:
    """The header cells and rows of a narrative table written by :func:`narrative.table`."""
    if not div:
        return [], []
    root = ElementTree.fromstring(div)
    headers = ["".join(th.itertext()) for th in root.iter(f"{XHTML}th")]
    rows = [
        ["".join(td.itertext()) for td in tr.iter(f"{XHTML}td")] for tr in root.iter(f"{XHTML}tr")
    ]
    return headers, [row for row in rows if row]


def _patient_of(bundle: dict[str, Any]) -> dict[str, Any]:
    for entry in bundle["entry"]:
        if entry["resource"].get("resourceType") == "Patient":
            return entry["resource"]
    raise LookupError("a summary holds its Patient")


def _name(patient: dict[str, Any]) -> str:
    for human in patient.get("name") or []:
        if human.get("text"):
            return str(human["text"])
        return " ".join([str(human.get("family") or ""), *(human.get("given") or [])]).strip()
    return ""


# ------------------------------------------------------------------ images
def _images(
    store: FhirStore, principal: Principal, patient_id: str, base_url: str, names: dict[str, str]
) -> list[ImagingView]:
    """The ImagingStudies of her record ``patient_id``, newest first."""
    request = parse_search(
        "ImagingStudy",
        [
            ("patient", f"Patient/{patient_id}"),
            ("_sort", "-started"),
            ("_count", str(IMAGING_ROWS)),
        ],
        max_count=IMAGING_ROWS,
    )
    return [
        _imaging(stored.content or {}, names.get(stored.owner or "", stored.owner or ""))
        for stored in run_search(store, principal, request, base_url).matches
    ]


def _imaging(study: dict[str, Any], facility: str) -> ImagingView:
    series = [s for s in study.get("series") or [] if isinstance(s, dict)]
    modalities = [str(m.get("code") or "") for m in study.get("modality") or []] or [
        str((s.get("modality") or {}).get("code") or "") for s in series
    ]
    descriptions = [str(s["description"]) for s in series if s.get("description")]
    instances = study.get("numberOfInstances")
    if instances is None:
        instances = sum(int(s.get("numberOfInstances") or 0) for s in series)
    return ImagingView(
        started=_moment_text(study.get("started")),
        modalities=", ".join(
            f"{MODALITIES[m]} ({m})" if m in MODALITIES else m
            for m in dict.fromkeys(m for m in modalities if m)
        ),
        description=str(study.get("description") or "; ".join(dict.fromkeys(descriptions))),
        facility=facility,
        series=int(study.get("numberOfSeries") or len(series)),
        instances=int(instances),
        study_uid=_study_uid(study),
    )


def _study_uid(study: dict[str, Any]) -> str:
    """The Study Instance UID, from the ``urn:dicom:uid`` identifier (``urn:oid:`` dropped)."""
    for identifier in study.get("identifier") or []:
        if identifier.get("system") == DICOM_UID:
            return str(identifier.get("value") or "").removeprefix("urn:oid:")
    return ""


def _moment_text(value: Any) -> str:
    """A FHIR date or dateTime as she reads it: a day, or a time and day in Vietnam's time."""
    text = str(value or "")
    return _instant_text(text) if "T" in text else narrative.day(text)


# ------------------------------------------------------------------ sharing
def _hospitals(store: FhirStore, principal: Principal, base_url: str) -> list[Hospital]:
    request = parse_search(
        "Organization", [("_count", str(DIRECTORY_ROWS))], max_count=DIRECTORY_ROWS
    )
    found = run_search(store, principal, request, base_url).matches
    hospitals = [
        Hospital(f"Organization/{s.id}", str((s.content or {}).get("name") or s.id))
        for s in found
        if (s.content or {}).get("active", True) is not False
    ]
    return sorted(hospitals, key=lambda h: h.name)


def _consents(
    store: FhirStore, principal: Principal, base_url: str, names: dict[str, str]
) -> list[ConsentView]:
    """Her active privacy Consents (whichever of her Patient resources they name)."""
    request = parse_search(
        "Consent",
        [("status", "active"), ("_count", str(CONSENT_ROWS)), ("_sort", "-_lastUpdated")],
        max_count=CONSENT_ROWS,
    )
    out = []
    for stored in run_search(store, principal, request, base_url).matches:
        content = stored.content or {}
        provision = content.get("provision")
        if not is_privacy_consent(content) or not isinstance(provision, dict):
            continue
        actors = [
            str((actor.get("reference") or {}).get("reference") or "")
            for actor in provision.get("actor") or []
            if isinstance(actor, dict)
        ]
        period = provision.get("period") or {}
        out.append(
            ConsentView(
                consent_id=stored.id,
                permit=provision.get("type") == "permit",
                hospitals=[names.get(a, a) for a in actors] or ["Mọi cơ sở y tế"],
                since=narrative.day(period.get("start")),
                until=narrative.day(period.get("end")),
            )
        )
    return out


# ------------------------------------------------------------------ access log
def _access(parts: list[dict[str, Any]]) -> AccessView:
    values: dict[str, Any] = {}
    for part in parts:
        value = next((v for k, v in part.items() if k.startswith("value")), None)
        values.setdefault(part["name"], value)
    subtype = values.get("what") or {}
    code = str(subtype.get("code") or "")
    action = ACTIONS.get(code, str(subtype.get("display") or code))
    operation = str(values.get("operation") or "")
    if operation:
        action = OPERATIONS.get(operation, f"{action} {operation}")
    organization = values.get("organization") or {}
    practitioner = values.get("practitioner") or {}
    kinds = [k for k in str(values.get("data") or "").split(",") if k]
    return AccessView(
        when=_instant_text(str(values.get("when") or "")),
        facility=str(
            organization.get("display")
            or organization.get("reference")
            or values.get("recipient")  # a SMART Health Link's opener, named by itself
            or "—"
        ),
        practitioner=str(practitioner.get("value") or ""),
        action=action,
        data=", ".join(dict.fromkeys(DATA_KINDS.get(k, k) for k in kinds)),
        purpose=PURPOSES.get(str(values.get("purpose")), str(values.get("purpose") or "")),
        outcome=OUTCOMES.get(str(values.get("outcome")), str(values.get("outcome") or "")),
        break_glass=bool(values.get("breakGlass")),
        reason=str(values.get("reason") or ""),
    )


def local_time(moment: datetime) -> str:
    """A moment as Vietnam reads it: ``HH:MM dd/mm/yyyy``, in its time."""
    return moment.astimezone(VIETNAM).strftime("%H:%M %d/%m/%Y")


def _instant_text(instant: str) -> str:
    try:
        return local_time(datetime.fromisoformat(instant.replace("Z", "+00:00")))
    except ValueError:
        return instant
