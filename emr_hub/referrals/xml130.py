"""Insurance XML tables 13 (referral letter) and 14 (re-exam slip) ⇄ FHIR R4: a pure mapping.

No database and no HTTP: the import service matches the patient and the two Organizations,
calls the functions here and stores the result (``to_transaction``); the export service reads
the resources and calls the reverse functions. Field lists and code tables are data, in
``xml130_tables``.

Reading
-------
``parse_envelope`` reads the GIAMDINHHS envelope (tables base64 in NOIDUNGFILE),
``parse_table13`` / ``parse_table14`` one table each (QĐ 4750 and QĐ 3176 names both accepted),
``read_tables`` every table 13/14 of an envelope. XML is parsed by ``defusedxml`` with DTDs
forbidden, so entity bombs and external entities never expand. Every refusal is a
``FhirError`` with one ``Issue`` per problem, its ``expression`` naming the place:
``XML13/NGAY_VAO``, ``GIAMDINHHS/THONGTINHOSO/DANHSACHHOSO/HOSO[1]/FILEHOSO[2]/NOIDUNGFILE``
(positions are 1-based, as in XPath, and always given). All field problems of a table are
reported together. Statuses: 400 when the bytes cannot be read (not XML, DTD or entities,
bad base64, wrong root element), 422 when a well-formed table breaks a rule (missing required
field, malformed date, unknown code or LOAIHOSO), 413 when an envelope is over 20 MB or a table
over 5 MB. Elements a table does not define are ignored (vendors add their own); an element
given twice, or under both its old and new name with different values, is an error. Dates are
local time in Viet Nam: +07:00 (no daylight saving since 1975; a fixed offset, not the tz
database, whose pre-1975 Saigon offsets would be wrong for northern facilities).

Writing
-------
``render_table13`` / ``render_table14`` write every field under its QĐ 3176 name, empty
elements for empty fields, in the QĐ 4750 order; TEN_DICH_VU and TEN_THUOC, dropped by QĐ 3176,
are read and kept in FHIR but not written. Date-times are written ``yyyymmddHHMM``; the fields
the standard defines as days (GT_THE_DEN, NGAY_CT, and NGAY_HEN_KL when it has no time) as
``yyyymmdd``. ``render_envelope`` writes the envelope with an empty CHUKYDONVI: signing is a
later step, and the signature of an imported envelope is not checked here.

Identifier systems
------------------
Letter and slip numbers are numbered by the facility that issues them, so each system is
scoped by its facility code (the number alone is not unique across the network); the
Identifier's ``assigner`` names the facility too. Hub-defined, not in VN Core:

=====================  ==============================================  ====================
XML field              system                                          on
=====================  ==============================================  ====================
SO_CHUYENTUYEN         ``urn:emr-hub:referral-letter:<MA_CSKCB>``      ServiceRequest
GIAY_CHUYEN_TUYEN      ``urn:emr-hub:referral-letter-code:<MA_CSKCB>`` ServiceRequest
SO_HOSO                ``urn:emr-hub:referral-file:<MA_CSKCB>``        ServiceRequest
SO_GIAYHEN_KL          ``urn:emr-hub:reexam-slip:<MA_CSKCB>``          Appointment
=====================  ==============================================  ====================

MA_CSKCB falls back to MA_CSKCB_DI when a table 13 leaves it empty. The other systems are the
hub's (``emr_hub.fhir.identifiers``): MA_LK under ``.../sid/ma-lk`` (a logical reference to the
sending facility's Encounter), facility codes under ``.../sid/ma-cskcb``, cards under
``.../sid/bhyt``, licences under ``.../sid/cchn``, the CCCD under ``.../sid/cccd``.

Ids are stable, so that importing the same letter again yields the same resources:
``uuid5(NAMESPACE, "XML13|<MA_CSKCB>|<SO_CHUYENTUYEN>|<what>")`` with ``<what>`` the resource
type (``Condition|<code>`` for Conditions), and ``"XML14|<MA_CSKCB>|<SO_GIAYHEN_KL>|..."`` for
slips. A new Patient's id comes from the letter too, never from the card or CCCD (an id derived
from a personal number would leak it: the number space is small enough to search).

Extensions and code systems (hub-defined, under the VN Core canonical base
``http://fhir.hl7.org.vn/core/``; not published there, change them here only):

=====================================================  ===========================================
``StructureDefinition/referral-reason``                valueCoding, MA_LYDO_CT
``StructureDefinition/discharge-type``                 valueCoding, MA_LOAI_RV
``StructureDefinition/referral-transport``             valueString, PHUONGTIEN_VC
``StructureDefinition/referral-escort``                complex: ``name`` HOTEN_NGUOI_HT, ``title``
                                                       CHUCDANH_NGUOI_HT (valueString)
``StructureDefinition/episode-dates``                  complex: ``admitted`` NGAY_VAO,
                                                       ``inpatientAdmitted`` NGAY_VAO_NOI_TRU,
                                                       ``discharged`` NGAY_RA (valueDateTime)
``StructureDefinition/attending-practitioner``         valueIdentifier (cchn), one per MA_BAC_SI
``StructureDefinition/facility-head``                  valueString, MA_TTDV
``StructureDefinition/traditional-medicine-diagnosis`` valueString, MA_BENH_YHCT
``StructureDefinition/insurance-beneficiary-category`` valueCoding, MA_DOITUONG_KCB
``StructureDefinition/xml130-reserved``                valueString, DU_PHONG
``StructureDefinition/xml130-section``                 valueCode on a note: the field it holds
``StructureDefinition/appointment-participant-org``    valueReference(Organization), see below
``StructureDefinition/patient-ethnicity``              valueCoding, MA_DANTOC
``StructureDefinition/patient-occupation``             valueCoding, MA_NGHE_NGHIEP
``CodeSystem/xml130-ma-lydo-ct``, ``-ma-loai-rv``,     the code lists of those fields
``-ma-quoctich``, ``-ma-dantoc``, ``-ma-nghe-nghiep``,
``-ma-doituong-kcb``
=====================================================  ===========================================

Core extensions used: ``patient-nationality`` (MA_QUOCTICH), ``patient-birthTime`` (the time of
NGAY_SINH, when not 00:00).

Table 13 → FHIR
---------------
=================  ==========================================================================
MA_LK              ServiceRequest.encounter and Condition.encounter: a logical reference
                   (``identifier`` ma-lk, assigned by MA_CSKCB)
SO_HOSO            ServiceRequest.identifier (referral-file system)
SO_CHUYENTUYEN     ServiceRequest.identifier (referral-letter system, use official); the ids
GIAY_CHUYEN_TUYEN  ServiceRequest.identifier (referral-letter-code system)
MA_CSKCB           the scope of those systems and their ``assigner``
MA_CSKCB_DI        ServiceRequest.requester = ``sender_org`` with this code as its identifier;
                   Task.requester = ``sender_org``
MA_CSKCB_DEN       ServiceRequest.performer = ``receiver_org`` with this code as identifier;
                   Task.owner = ``receiver_org``
HO_TEN             Patient.name (text; first word family, the rest given)
NGAY_SINH          Patient.birthDate (date only; ``1945`` or ``1945-03`` when month or day is
                   00), the time in the patient-birthTime extension
GIOI_TINH          Patient.gender: 1 male, 2 female, 3 unknown
MA_QUOCTICH        Patient extension patient-nationality (code)
MA_DANTOC          Patient extension patient-ethnicity
MA_NGHE_NGHIEP     Patient extension patient-occupation
DIA_CHI            Patient.address.text
MA_THE_BHYT        Patient.identifier (bhyt), one per card; a 12-digit card that is a valid
                   CCCD (Decree 188/2025) is also a Patient.identifier (cccd)
GT_THE_DEN         the matching card identifier's period.end
NGAY_VAO, ..._RA   ServiceRequest extension episode-dates
NGAY_RA            also ServiceRequest.authoredOn, Task.authoredOn, Condition.recordedDate
                   (else the envelope date given as ``authored``). The validity
                   (``occurrencePeriod``) is not mapped: the referral rules compute it from
                   ``authoredOn`` when the letter is stored (:mod:`emr_hub.referrals.rules`)
DAU_HIEU_LS,       ServiceRequest.note, one per field, each tagged with xml130-section
CHAN_DOAN_RV,
QT_BENHLY,
TOMTAT_KQ,
TINH_TRANG_CT
(PP_DIEUTRI),
HUONG_DIEU_TRI,
TEN_DICH_VU,
TEN_THUOC
MA_BENH_CHINH      a Condition (ICD-10, confirmed, encounter-diagnosis) and the first
                   ServiceRequest.reasonCode; reasonReference points at the Conditions
MA_BENH_KT         one Condition and reasonCode per code, after the main one
MA_BENH_YHCT       ServiceRequest extension traditional-medicine-diagnosis
MA_LOAI_RV         ServiceRequest extension discharge-type
MA_LYDO_CT         ServiceRequest extension referral-reason
PHUONGTIEN_VC      ServiceRequest extension referral-transport
HOTEN_NGUOI_HT,    ServiceRequest extension referral-escort
CHUCDANH_NGUOI_HT
MA_BAC_SI          ServiceRequest extension attending-practitioner, one per licence number
MA_TTDV            ServiceRequest extension facility-head
DU_PHONG           ServiceRequest extension xml130-reserved
=================  ==========================================================================

ServiceRequest: status active, intent order, category SNOMED 3457005 "Patient referral",
subject the patient. Task: status requested, intent order, code ``fulfill``, focus the
ServiceRequest, for the patient, requester and owner the two Organizations, authoredOn.

Table 14 → FHIR (Appointment)
-----------------------------
=================  ==========================================================================
MA_LK              Appointment.supportingInformation: logical reference to the Encounter
SO_GIAYHEN_KL      Appointment.identifier (reexam-slip system); the id
MA_CSKCB           scope of that system; the hospital participant (below)
NGAY_HEN_KL        Appointment.start (00:00 when only the day is given); end = the next midnight
                   (the slip names a day, not a slot; R4 needs an end with a start)
CHAN_DOAN_RV       Appointment.comment
MA_BENH_CHINH, KT  Appointment.reasonCode (main first)
MA_DOITUONG_KCB    extension insurance-beneficiary-category
NGAY_CT            Appointment.created
NGAY_VAO, ..._RA,  as in table 13 (episode-dates, attending-practitioner, facility-head,
MA_BAC_SI, MA_TTDV, traditional-medicine-diagnosis, xml130-reserved)
MA_BENH_YHCT,
DU_PHONG
patient fields     Patient, as in table 13
=================  ==========================================================================

Appointment: status booked, appointmentType FOLLOWUP (v2-0276), basedOn the referral when
there is one. Participants: the patient (actor), and the hospital. R4 does not allow an
Organization as ``Appointment.participant.actor`` (Patient, Practitioner, PractitionerRole,
RelatedPerson, Device, HealthcareService, Location only), so the hospital participant has type
PPRF (primary performer), the Organization in the extension appointment-participant-org, and as
actor the hospital's Location or HealthcareService when the caller has one
(``facility_actor``). No resource is invented for it: one the hub made up would be overwritten
on every import, or duplicate the hospital's own.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import re
import unicodedata
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from datetime import date, datetime, time, timedelta, timezone
from typing import Any

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import ParseError, fromstring

from emr_hub.errors import FhirError, Issue
from emr_hub.fhir.identifiers import (
    CCCD,
    EPISODE_LINK,
    FACILITY_CODE,
    INSURANCE,
    INSURANCE_2021,
    PRACTISING_LICENCE,
    cccd_problem,
    identifier_problem,
)
from emr_hub.referrals import rules
from emr_hub.referrals.xml130_tables import (
    DISCHARGE_TYPE,
    FILE_KINDS,
    GENDER_CODES,
    MAX_ENVELOPE_BYTES,
    MAX_TABLE_BYTES,
    REFERRAL_REASON,
    TABLE13_FIELDS,
    TABLE13_ROOT,
    TABLE14_FIELDS,
    TABLE14_ROOT,
    FieldSpec,
)

VN_TZ = timezone(timedelta(hours=7))

ICD10 = "http://hl7.org/fhir/sid/icd-10"
SNOMED = "http://snomed.info/sct"
VN_CORE = "http://fhir.hl7.org.vn/core/"
EXT = VN_CORE + "StructureDefinition/"
CS = VN_CORE + "CodeSystem/"

REFERRAL_LETTER_SYSTEM = "urn:emr-hub:referral-letter:"  # + MA_CSKCB; SO_CHUYENTUYEN
REFERRAL_CODE_SYSTEM = "urn:emr-hub:referral-letter-code:"  # + MA_CSKCB; GIAY_CHUYEN_TUYEN
REFERRAL_FILE_SYSTEM = "urn:emr-hub:referral-file:"  # + MA_CSKCB; SO_HOSO
REEXAM_SLIP_SYSTEM = "urn:emr-hub:reexam-slip:"  # + MA_CSKCB; SO_GIAYHEN_KL

EXT_REFERRAL_REASON = rules.REFERRAL_REASON_EXTENSION  # the rules read the patient's request
EXT_DISCHARGE_TYPE = rules.DISCHARGE_TYPE_EXTENSION  # from these two extensions
EXT_TRANSPORT = EXT + "referral-transport"
EXT_ESCORT = EXT + "referral-escort"
EXT_EPISODE = EXT + "episode-dates"
EXT_PRACTITIONER = EXT + "attending-practitioner"
EXT_HEAD = EXT + "facility-head"
EXT_YHCT = EXT + "traditional-medicine-diagnosis"
EXT_BENEFICIARY = EXT + "insurance-beneficiary-category"
EXT_RESERVED = EXT + "xml130-reserved"
EXT_SECTION = EXT + "xml130-section"
EXT_PARTICIPANT_ORG = EXT + "appointment-participant-org"
EXT_ETHNICITY = EXT + "patient-ethnicity"
EXT_OCCUPATION = EXT + "patient-occupation"
EXT_NATIONALITY = "http://hl7.org/fhir/StructureDefinition/patient-nationality"
EXT_BIRTH_TIME = "http://hl7.org/fhir/StructureDefinition/patient-birthTime"

CS_REFERRAL_REASON = rules.MA_LYDO_CT_SYSTEM
CS_DISCHARGE_TYPE = rules.MA_LOAI_RV_SYSTEM
CS_NATIONALITY = CS + "xml130-ma-quoctich"
CS_ETHNICITY = CS + "xml130-ma-dantoc"
CS_OCCUPATION = CS + "xml130-ma-nghe-nghiep"
CS_BENEFICIARY = CS + "xml130-ma-doituong-kcb"

REFERRAL_CATEGORY = {
    "coding": [{"system": SNOMED, "code": "3457005", "display": "Patient referral"}]
}
TASK_FULFILL = {
    "coding": [
        {
            "system": "http://hl7.org/fhir/CodeSystem/task-code",
            "code": "fulfill",
            "display": "Fulfill the focal request",
        }
    ]
}
FOLLOW_UP = {
    "coding": [
        {
            "system": "http://terminology.hl7.org/CodeSystem/v2-0276",
            "code": "FOLLOWUP",
            "display": "A follow up visit from a previous appointment",
        }
    ]
}
PRIMARY_PERFORMER = {
    "coding": [
        {
            "system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
            "code": "PPRF",
            "display": "primary performer",
        }
    ]
}
CONDITION_ACTIVE = {
    "coding": [
        {"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}
    ]
}
CONDITION_CONFIRMED = {
    "coding": [
        {
            "system": "http://terminology.hl7.org/CodeSystem/condition-ver-status",
            "code": "confirmed",
        }
    ]
}
ENCOUNTER_DIAGNOSIS = {
    "coding": [
        {
            "system": "http://terminology.hl7.org/CodeSystem/condition-category",
            "code": "encounter-diagnosis",
            "display": "Encounter Diagnosis",
        }
    ]
}

# The ServiceRequest notes, in this order, each tagged with the field it holds.
NOTE_FIELDS = (
    "CHAN_DOAN_RV",
    "DAU_HIEU_LS",
    "QT_BENHLY",
    "TOMTAT_KQ",
    "TINH_TRANG_CT",
    "HUONG_DIEU_TRI",
    "TEN_DICH_VU",
    "TEN_THUOC",
)

ID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:emr-hub:xml130")

ENVELOPE = "GIAMDINHHS"
RECORDS = f"{ENVELOPE}/THONGTINHOSO/DANHSACHHOSO"

_ICD10_SHAPE = re.compile(r"[A-Z][0-9]{2}(?:\.[0-9A-Z]{1,4})?")
_STAMP_SHAPE = re.compile(r"\d{8}(?:\d{4})?")
_CCCD_SHAPE = re.compile(r"\d{12}")
_NOT_XML_CHAR = re.compile("[^\t\n\u0020-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


# ====================================================================== data
@dataclass(frozen=True)
class YearMonth:
    """A birth date known only to the year, or the year and month (NGAY_SINH ``194500000000``)."""

    year: int
    month: int | None = None


@dataclass(frozen=True, kw_only=True)
class Table13:
    """Table 13, the referral letter (giấy chuyển tuyến): one attribute per field.

    ``ma_noi_di``/``ma_noi_den`` are QĐ 3176 MA_CSKCB_DI/MA_CSKCB_DEN; ``tinh_trang_ct`` is QĐ
    3176 TINH_TRANG_CT, QĐ 4750 PP_DIEUTRI. Lists are the ``;``-separated fields.
    """

    ma_lk: str
    so_hoso: str
    so_chuyentuyen: str
    giay_chuyen_tuyen: str
    ma_cskcb: str | None = None
    ma_noi_di: str | None = None
    ma_noi_den: str | None = None
    ho_ten: str
    ngay_sinh: datetime | YearMonth | None = None
    gioi_tinh: str | None = None
    ma_quoctich: str | None = None
    ma_dantoc: str | None = None
    ma_nghe_nghiep: str | None = None
    dia_chi: str | None = None
    ma_the_bhyt: tuple[str, ...] = ()
    gt_the_den: tuple[date, ...] = ()
    ngay_vao: datetime | None = None
    ngay_vao_noi_tru: datetime | None = None
    ngay_ra: datetime | None = None
    dau_hieu_ls: str
    chan_doan_rv: str | None = None
    qt_benhly: str
    tomtat_kq: str | None = None
    tinh_trang_ct: str | None = None
    ma_benh_chinh: str | None = None
    ma_benh_kt: tuple[str, ...] = ()
    ma_benh_yhct: str | None = None
    ten_dich_vu: str | None = None
    ten_thuoc: str | None = None
    ma_loai_rv: str | None = None
    ma_lydo_ct: str
    huong_dieu_tri: str
    phuongtien_vc: str
    hoten_nguoi_ht: str | None = None
    chucdanh_nguoi_ht: str | None = None
    ma_bac_si: tuple[str, ...]
    ma_ttdv: str
    du_phong: str | None = None

    @property
    def issuer(self) -> str | None:
        """The facility that numbered the letter: MA_CSKCB, else MA_CSKCB_DI."""
        return self.ma_cskcb or self.ma_noi_di


@dataclass(frozen=True, kw_only=True)
class Table14:
    """Table 14, the re-exam slip (giấy hẹn khám lại): one attribute per field."""

    ma_lk: str
    so_giayhen_kl: str
    ma_cskcb: str
    ho_ten: str
    ngay_sinh: datetime | YearMonth | None = None
    gioi_tinh: str | None = None
    dia_chi: str | None = None
    ma_the_bhyt: tuple[str, ...] = ()
    gt_the_den: tuple[date, ...] = ()
    ngay_vao: datetime | None = None
    ngay_vao_noi_tru: datetime | None = None
    ngay_ra: datetime | None = None
    ngay_hen_kl: date | datetime
    chan_doan_rv: str | None = None
    ma_benh_chinh: str | None = None
    ma_benh_kt: tuple[str, ...] = ()
    ma_benh_yhct: str | None = None
    ma_doituong_kcb: str | None = None
    ma_bac_si: tuple[str, ...]
    ma_ttdv: str
    ngay_ct: date
    du_phong: str | None = None


@dataclass(frozen=True)
class FileEntry:
    """One FILEHOSO: LOAIHOSO and decoded NOIDUNGFILE, at HOSO[record]/FILEHOSO[position]."""

    kind: str
    content: bytes
    record: int = 1
    position: int = 1

    @property
    def where(self) -> str:
        return f"{RECORDS}/HOSO[{self.record}]/FILEHOSO[{self.position}]"


@dataclass(frozen=True)
class Envelope:
    """The GIAMDINHHS envelope: MACSKCB, NGAYLAP and the files (CHUKYDONVI is not checked)."""

    facility_code: str
    created: date | datetime
    files: tuple[FileEntry, ...]

    def of_kind(self, kind: str) -> list[FileEntry]:
        return [entry for entry in self.files if entry.kind == kind]


@dataclass(frozen=True)
class Table13Resources:
    """What one referral letter becomes; iterating gives every resource, Patient first."""

    service_request: dict[str, Any]
    task: dict[str, Any]
    conditions: tuple[dict[str, Any], ...] = ()
    patient: dict[str, Any] | None = None

    def __iter__(self) -> Iterator[dict[str, Any]]:
        if self.patient is not None:
            yield self.patient
        yield from self.conditions
        yield self.service_request
        yield self.task


@dataclass(frozen=True)
class Table14Resources:
    """What one re-exam slip becomes; iterating gives every resource, Patient first."""

    appointment: dict[str, Any]
    patient: dict[str, Any] | None = None

    def __iter__(self) -> Iterator[dict[str, Any]]:
        if self.patient is not None:
            yield self.patient
        yield self.appointment


# ============================================================== XML reading
def _local(tag: Any) -> str:
    return tag.rsplit("}", 1)[-1] if isinstance(tag, str) else ""


def _parse_xml(xml: bytes | str, where: str) -> Any:
    try:
        return fromstring(xml, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except DefusedXmlException as exc:
        message = f"XML with a DTD, entity declarations or external references is refused ({exc})"
        raise FhirError(400, [Issue("security", message, (where,))]) from None
    except ParseError as exc:
        raise FhirError(400, [Issue("structure", f"Malformed XML: {exc}", (where,))]) from None
    except (ValueError, LookupError) as exc:  # e.g. an encoding the parser does not know
        raise FhirError(400, [Issue("structure", f"Unreadable XML: {exc}", (where,))]) from None


def _children(element: Any, name: str) -> list[Any]:
    return [child for child in element if _local(child.tag) == name]


def _clean(text: str | None) -> str | None:
    """Text of an element as the tables hold it: NFC, without surrounding blanks, None if empty."""
    if text is None:
        return None
    text = unicodedata.normalize("NFC", text).strip()
    return text or None


def _size_error(what: str, size: int, limit: int, where: str) -> FhirError:
    return FhirError(
        413,
        [Issue("too-long", f"{what} is {size} bytes; the limit is {limit} bytes", (where,))],
    )


# ----------------------------------------------------------------- values
def _stamp(text: str) -> date | datetime:
    if not _STAMP_SHAPE.fullmatch(text):
        raise ValueError(f"{text!r} is not a date yyyymmdd or yyyymmddHHMM")
    try:
        day = date(int(text[:4]), int(text[4:6]), int(text[6:8]))
        if len(text) == 8:
            return day
        return datetime.combine(day, time(int(text[8:10]), int(text[10:12])), VN_TZ)
    except ValueError:
        raise ValueError(f"{text!r} is not a valid date yyyymmdd or yyyymmddHHMM") from None


def _at_midnight(day: date) -> datetime:
    return datetime.combine(day, time(), VN_TZ)


def _birth(text: str) -> datetime | YearMonth:
    if re.fullmatch(r"\d{4}", text):
        return YearMonth(int(text))
    if _STAMP_SHAPE.fullmatch(text) and text[6:8] == "00" and set(text[8:]) <= {"0"}:
        month = int(text[4:6])
        if month == 0:
            return YearMonth(int(text[:4]))
        if month <= 12:
            return YearMonth(int(text[:4]), month)
    value = _stamp(text)
    return value if isinstance(value, datetime) else _at_midnight(value)


def _icd(code: str) -> str:
    if not _ICD10_SHAPE.fullmatch(code):
        raise ValueError(f"{code!r} is not an ICD-10 code (a letter, 2 digits, optional .x)")
    return code


def _split(text: str) -> list[str]:
    return [part.strip() for part in text.split(";") if part.strip()]


def _read(spec: FieldSpec, text: str) -> Any:
    """The typed value of one field; ValueError says what is wrong with the text."""
    kind = spec.kind
    if kind == "text":
        return text
    if kind == "code":
        if re.search(r"\s", text):
            raise ValueError(f"{text!r} is not a code (no blanks)")
        if spec.codes is not None and text not in spec.codes:
            raise ValueError(f"{text!r} is not one of {', '.join(sorted(spec.codes))}")
        return text
    if kind == "facility":
        problem = identifier_problem(FACILITY_CODE, text)
        if problem:
            raise ValueError(f"{text!r}: {problem}")
        return text
    if kind == "icd":
        return _icd(text)
    if kind == "birth":
        return _birth(text)
    if kind == "datetime":
        value = _stamp(text)
        return value if isinstance(value, datetime) else _at_midnight(value)
    if kind == "date":
        value = _stamp(text)
        return value.date() if isinstance(value, datetime) else value
    if kind == "date_or_datetime":
        return _stamp(text)
    parts = _split(text)
    if kind == "icd_list":
        return tuple(_icd(part) for part in parts)
    if kind == "card_list":
        for part in parts:
            problem = identifier_problem(INSURANCE, part)
            if problem:
                raise ValueError(f"{part!r}: {problem}")
        return tuple(parts)
    if kind == "date_list":
        return tuple(_read(replace(spec, kind="date"), part) for part in parts)
    if kind == "text_list":
        return tuple(parts)
    raise AssertionError(f"unknown field kind {kind!r}")


def _empty(spec: FieldSpec) -> Any:
    return () if spec.kind.endswith("_list") else None


# ----------------------------------------------------------------- tables
def _parse_table(
    xml: bytes | str, table: str, root_name: str, specs: tuple[FieldSpec, ...]
) -> dict[str, Any]:
    if len(xml) > MAX_TABLE_BYTES:
        raise _size_error(f"Table {table}", len(xml), MAX_TABLE_BYTES, table)
    root = _parse_xml(xml, table)
    if _local(root.tag) != root_name:
        message = f"Table {table} has the root element {root_name}, not {_local(root.tag)}"
        raise FhirError(400, [Issue("structure", message, (table,))])
    by_name = {name: spec for spec in specs for name in spec.names}
    seen: dict[str, tuple[str, str | None]] = {}
    issues: list[Issue] = []
    for child in root:
        name = _local(child.tag)
        spec = by_name.get(name)
        if spec is None:
            continue
        where = f"{table}/{name}"
        if len(child):
            issues.append(Issue("structure", f"{name} holds elements; expected text", (where,)))
            continue
        text = _clean(child.text)
        if spec.attr in seen:
            first, first_text = seen[spec.attr]
            if first == name:
                issues.append(Issue("structure", f"{name} appears more than once", (where,)))
            elif first_text != text:
                message = f"{name} and {first} are one field under two names, with different values"
                issues.append(Issue("invalid", message, (where,)))
            continue
        seen[spec.attr] = (name, text)

    values: dict[str, Any] = {}
    for spec in specs:
        name, text = seen.get(spec.attr, (spec.name, None))
        where = f"{table}/{name}"
        value = _empty(spec)
        if text is not None:
            try:
                value = _read(spec, text)
            except ValueError as exc:
                issues.append(Issue("value", f"{name}: {exc}", (where,)))
                continue
        if spec.required and value in (None, ()):
            issues.append(Issue("required", f"{spec.name} is required in {table}", (where,)))
        values[spec.attr] = value
    issues.extend(_rule_issues(table, values))
    if issues:
        raise FhirError(422, issues)
    return values


def _rule_issues(table: str, values: dict[str, Any]) -> list[Issue]:
    """Rules across fields, checked only where the fields involved are readable."""
    issues: list[Issue] = []
    issuer_readable = {"ma_cskcb", "ma_noi_di"} <= values.keys()
    if table == "XML13" and issuer_readable and not (values["ma_cskcb"] or values["ma_noi_di"]):
        message = "MA_CSKCB (or MA_CSKCB_DI) is needed: the letter number is the facility's"
        issues.append(Issue("required", message, (f"{table}/MA_CSKCB",)))
    if values.get("ma_benh_kt") and "ma_benh_chinh" in values and not values["ma_benh_chinh"]:
        message = "MA_BENH_KT lists secondary diagnoses but the main one, MA_BENH_CHINH, is empty"
        issues.append(Issue("required", message, (f"{table}/MA_BENH_CHINH",)))
    cards, ends = values.get("ma_the_bhyt"), values.get("gt_the_den")
    if cards is not None and ends is not None and len(ends) > len(cards):
        message = f"GT_THE_DEN has {len(ends)} dates for {len(cards)} cards in MA_THE_BHYT"
        issues.append(Issue("value", message, (f"{table}/GT_THE_DEN",)))
    return issues


def parse_table13(xml: bytes | str) -> Table13:
    """Read a table 13 (``CHI_TIEU_GIAYCHUYENTUYEN``); QĐ 4750 and QĐ 3176 names accepted."""
    return Table13(**_parse_table(xml, "XML13", TABLE13_ROOT, TABLE13_FIELDS))


def parse_table14(xml: bytes | str) -> Table14:
    """Read a table 14 (``CHI_TIEU_GIAYHEN_KHAMLAI``)."""
    return Table14(**_parse_table(xml, "XML14", TABLE14_ROOT, TABLE14_FIELDS))


# --------------------------------------------------------------- envelope
def _decode(text: str, where: str) -> bytes:
    compact = "".join(text.split())
    decoded_size = len(compact) // 4 * 3
    if decoded_size > MAX_TABLE_BYTES:
        raise _size_error("The decoded file", decoded_size, MAX_TABLE_BYTES, where)
    return base64.b64decode(compact, validate=True)


def parse_envelope(xml: bytes | str) -> Envelope:
    """Read a GIAMDINHHS envelope and decode its files (their tables are not read here)."""
    if len(xml) > MAX_ENVELOPE_BYTES:
        raise _size_error("The envelope", len(xml), MAX_ENVELOPE_BYTES, ENVELOPE)
    root = _parse_xml(xml, ENVELOPE)
    if _local(root.tag) != ENVELOPE:
        message = f"The envelope's root element is {ENVELOPE}, not {_local(root.tag)}"
        raise FhirError(400, [Issue("structure", message, (ENVELOPE,))])
    unreadable: list[Issue] = []  # 400: bytes that cannot be read
    invalid: list[Issue] = []  # 422: readable, against the rules

    def text_of(parent: Any, path: list[str], name: str) -> str | None:
        where = "/".join([*path, name])
        found = _children(parent, name) if parent is not None else []
        if len(found) > 1:
            invalid.append(Issue("structure", f"{name} appears more than once", (where,)))
        text = _clean(found[0].text) if found else None
        if text is None:
            invalid.append(Issue("required", f"{name} is required", (where,)))
        return text

    unit = next(iter(_children(root, "THONGTINDONVI")), None)
    facility = text_of(unit, [ENVELOPE, "THONGTINDONVI"], "MACSKCB")
    if facility and identifier_problem(FACILITY_CODE, facility):
        problem = identifier_problem(FACILITY_CODE, facility)
        where = f"{ENVELOPE}/THONGTINDONVI/MACSKCB"
        invalid.append(Issue("value", f"MACSKCB {facility!r}: {problem}", (where,)))
    info = next(iter(_children(root, "THONGTINHOSO")), None)
    info_path = [ENVELOPE, "THONGTINHOSO"]
    created: date | datetime | None = None
    created_text = text_of(info, info_path, "NGAYLAP")
    if created_text:
        try:
            created = _stamp(created_text)
        except ValueError as exc:
            where = f"{ENVELOPE}/THONGTINHOSO/NGAYLAP"
            invalid.append(Issue("value", f"NGAYLAP: {exc}", (where,)))
    listing = next(iter(_children(info, "DANHSACHHOSO")), None) if info is not None else None
    if listing is None:
        raise FhirError(400, [Issue("structure", "The envelope has no DANHSACHHOSO", (RECORDS,))])
    records = _children(listing, "HOSO")
    if not records:
        invalid.append(Issue("required", "DANHSACHHOSO holds no HOSO", (f"{RECORDS}/HOSO",)))
    count_text = next((_clean(e.text) for e in _children(info, "SOLUONGHOSO")), None)
    if count_text is not None and count_text != str(len(records)):
        message = f"SOLUONGHOSO says {count_text} but DANHSACHHOSO holds {len(records)} HOSO"
        invalid.append(Issue("value", message, (f"{ENVELOPE}/THONGTINHOSO/SOLUONGHOSO",)))

    files: list[FileEntry] = []
    for record_no, record in enumerate(records, start=1):
        entries = _children(record, "FILEHOSO")
        if not entries:
            where = f"{RECORDS}/HOSO[{record_no}]/FILEHOSO"
            invalid.append(Issue("required", "HOSO holds no FILEHOSO", (where,)))
        for position, entry in enumerate(entries, start=1):
            path = [f"{RECORDS}/HOSO[{record_no}]/FILEHOSO[{position}]"]
            kind = text_of(entry, path, "LOAIHOSO")
            if kind is not None:
                kind = kind.upper()
                if kind not in FILE_KINDS:
                    message = f"Unknown LOAIHOSO {kind!r}: QĐ 130 defines XML1 to XML15"
                    invalid.append(Issue("code-invalid", message, (f"{path[0]}/LOAIHOSO",)))
            content_text = text_of(entry, path, "NOIDUNGFILE")
            if content_text is None:
                continue
            try:
                content = _decode(content_text, f"{path[0]}/NOIDUNGFILE")
            except (binascii.Error, ValueError):
                message = "NOIDUNGFILE is not valid base64"
                unreadable.append(Issue("invalid", message, (f"{path[0]}/NOIDUNGFILE",)))
                continue
            if kind is not None:
                files.append(FileEntry(kind, content, record_no, position))
    if unreadable or invalid:
        raise FhirError(400 if unreadable else 422, unreadable + invalid)
    assert facility is not None and created is not None
    return Envelope(facility, created, tuple(files))


def read_tables(envelope: Envelope) -> list[tuple[FileEntry, Table13 | Table14]]:
    """Read every table 13 and 14 of an envelope, reporting the problems of all of them.

    Each issue keeps its field expression (``XML13/NGAY_VAO``) and adds, as a second one, the
    file it is in (``.../HOSO[2]/FILEHOSO[1]/NOIDUNGFILE``). Other tables are left out.
    """
    parsers = {"XML13": parse_table13, "XML14": parse_table14}
    tables: list[tuple[FileEntry, Table13 | Table14]] = []
    issues: list[Issue] = []
    status = 422
    for entry in envelope.files:
        parser = parsers.get(entry.kind)
        if parser is None:
            continue
        try:
            tables.append((entry, parser(entry.content)))
        except FhirError as exc:
            if exc.status == 413:
                raise
            status = min(status, exc.status)
            where = f"{entry.where}/NOIDUNGFILE"
            issues.extend(replace(i, expression=(*i.expression, where)) for i in exc.issues)
    if issues:
        raise FhirError(status, issues)
    return tables


# ============================================================== XML writing
def _xml_text(value: str) -> str:
    value = unicodedata.normalize("NFC", value.replace("\r\n", "\n").replace("\r", "\n"))
    value = _NOT_XML_CHAR.sub("", value)
    return value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _day_text(value: date) -> str:
    return f"{value.year:04d}{value.month:02d}{value.day:02d}"


def _write(spec: FieldSpec, value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, tuple):
        return ";".join(_write(replace(spec, kind=spec.kind[: -len("_list")]), v) for v in value)
    if isinstance(value, YearMonth):
        return f"{value.year:04d}{value.month or 0:02d}000000"
    if isinstance(value, datetime):
        if spec.kind == "date":
            return _day_text(value.astimezone(VN_TZ))
        local = value.astimezone(VN_TZ)
        return f"{_day_text(local)}{local.hour:02d}{local.minute:02d}"
    if isinstance(value, date):
        return _day_text(value) + ("0000" if spec.kind in ("datetime", "birth") else "")
    return str(value)


def _render(root: str, specs: tuple[FieldSpec, ...], table: Any) -> bytes:
    lines = ['<?xml version="1.0" encoding="utf-8"?>', f"<{root}>"]
    for spec in specs:
        if not spec.written:
            continue
        text = _xml_text(_write(spec, getattr(table, spec.attr)))
        lines.append(f"  <{spec.name}>{text}</{spec.name}>" if text else f"  <{spec.name}/>")
    lines.append(f"</{root}>")
    return ("\n".join(lines) + "\n").encode("utf-8")


def render_table13(table: Table13) -> bytes:
    """Table 13 as XML (UTF-8), QĐ 3176 names, every field in order, empty ones as ``<X/>``."""
    return _render(TABLE13_ROOT, TABLE13_FIELDS, table)


def render_table14(table: Table14) -> bytes:
    """Table 14 as XML (UTF-8), QĐ 3176 names, every field in order, empty ones as ``<X/>``."""
    return _render(TABLE14_ROOT, TABLE14_FIELDS, table)


def render_envelope(
    facility_code: str,
    files: Iterable[FileEntry | tuple[str, bytes]],
    *,
    created: date | datetime | None = None,
) -> bytes:
    """The GIAMDINHHS envelope: files grouped into HOSO by ``FileEntry.record``, base64 content.

    ``created`` (NGAYLAP) defaults to today in Viet Nam. CHUKYDONVI is left empty for the
    signing step.
    """
    entries = [f if isinstance(f, FileEntry) else FileEntry(f[0], f[1]) for f in files]
    records: dict[int, list[FileEntry]] = {}
    for entry in entries:
        records.setdefault(entry.record, []).append(entry)
    when = created if created is not None else datetime.now(VN_TZ).date()
    stamp = _write(FieldSpec("NGAYLAP", "created", "date_or_datetime"), when)
    lines = [
        '<?xml version="1.0" encoding="utf-8"?>',
        f"<{ENVELOPE}>",
        "  <THONGTINDONVI>",
        f"    <MACSKCB>{_xml_text(facility_code)}</MACSKCB>",
        "  </THONGTINDONVI>",
        "  <THONGTINHOSO>",
        f"    <NGAYLAP>{stamp}</NGAYLAP>",
        f"    <SOLUONGHOSO>{len(records)}</SOLUONGHOSO>",
        "    <DANHSACHHOSO>",
    ]
    for record in sorted(records):
        lines.append("      <HOSO>")
        for entry in sorted(records[record], key=lambda e: e.position):
            content = base64.b64encode(entry.content).decode("ascii")
            lines += [
                "        <FILEHOSO>",
                f"          <LOAIHOSO>{_xml_text(entry.kind)}</LOAIHOSO>",
                f"          <NOIDUNGFILE>{content}</NOIDUNGFILE>",
                "        </FILEHOSO>",
            ]
        lines.append("      </HOSO>")
    lines += ["    </DANHSACHHOSO>", "  </THONGTINHOSO>", "  <CHUKYDONVI/>", f"</{ENVELOPE}>"]
    return ("\n".join(lines) + "\n").encode("utf-8")


# ============================================================ tables → FHIR
def stable_id(*parts: str) -> str:
    """The id of a resource made from a table: uuid5 over the parts joined by ``|``."""
    return str(uuid.uuid5(ID_NAMESPACE, "|".join(parts)))


def _fhir_datetime(value: date | datetime) -> str:
    if isinstance(value, datetime):
        return value.astimezone(VN_TZ).isoformat(timespec="seconds")
    return value.isoformat()


def _compact(resource: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in resource.items() if value not in (None, [], {})}


def _facility_identifier(code: str) -> dict[str, Any]:
    return {"system": FACILITY_CODE, "value": code}


def _org_reference(reference: str, code: str | None) -> dict[str, Any]:
    out: dict[str, Any] = {"reference": reference}
    if code:
        out["identifier"] = _facility_identifier(code)
    return out


def _episode_reference(ma_lk: str, facility: str) -> dict[str, Any]:
    """A logical reference to the sending facility's Encounter, by its MA_LK."""
    return {
        "type": "Encounter",
        "identifier": {
            "system": EPISODE_LINK,
            "value": ma_lk,
            "assigner": {"identifier": _facility_identifier(facility)},
        },
    }


def _scoped_identifier(prefix: str, facility: str, value: str, **extra: str) -> dict[str, Any]:
    return {
        **extra,
        "system": prefix + facility,
        "value": value,
        "assigner": {"identifier": _facility_identifier(facility)},
    }


def _coding_extension(
    url: str, system: str, code: str | None, display: str | None = None
) -> dict[str, Any] | None:
    if code is None:
        return None
    coding = {"system": system, "code": code}
    if display:
        coding["display"] = display
    return {"url": url, "valueCoding": coding}


def _string_extension(url: str, value: str | None) -> dict[str, Any] | None:
    return None if value is None else {"url": url, "valueString": value}


def _complex_extension(url: str, parts: list[tuple[str, str, Any]]) -> dict[str, Any] | None:
    inner = [{"url": name, key: value} for name, key, value in parts if value is not None]
    return {"url": url, "extension": inner} if inner else None


def _episode_extension(table: Table13 | Table14) -> dict[str, Any] | None:
    dates = [("admitted", table.ngay_vao), ("inpatientAdmitted", table.ngay_vao_noi_tru)]
    dates.append(("discharged", table.ngay_ra))
    return _complex_extension(
        EXT_EPISODE,
        [(name, "valueDateTime", value and _fhir_datetime(value)) for name, value in dates],
    )


def _common_extensions(table: Table13 | Table14) -> list[dict[str, Any] | None]:
    """Extensions both tables share: episode dates, doctors, head, YHCT codes, reserved."""
    return [
        _episode_extension(table),
        *(
            {"url": EXT_PRACTITIONER, "valueIdentifier": {"system": PRACTISING_LICENCE, "value": v}}
            for v in table.ma_bac_si
        ),
        _string_extension(EXT_HEAD, table.ma_ttdv),
        _string_extension(EXT_YHCT, table.ma_benh_yhct),
        _string_extension(EXT_RESERVED, table.du_phong),
    ]


def _diagnosis_codes(table: Table13 | Table14) -> list[str]:
    codes = [table.ma_benh_chinh] if table.ma_benh_chinh else []
    return list(dict.fromkeys([*codes, *table.ma_benh_kt]))


def _icd_concept(code: str) -> dict[str, Any]:
    return {"coding": [{"system": ICD10, "code": code}]}


def _birth_date(value: datetime | YearMonth) -> str:
    if isinstance(value, YearMonth):
        return f"{value.year:04d}" + (f"-{value.month:02d}" if value.month else "")
    return value.astimezone(VN_TZ).date().isoformat()


def _human_name(full: str) -> dict[str, Any]:
    """HO_TEN in Vietnamese order: the family name first, then middle and given names."""
    family, *given = full.split() or [full]
    name: dict[str, Any] = {"use": "official", "text": full, "family": family}
    if given:
        name["given"] = given
    return name


def _patient(patient_id: str, table: Table13 | Table14) -> dict[str, Any]:
    birth_date = _birth_date(table.ngay_sinh) if table.ngay_sinh is not None else None
    identifiers: list[dict[str, Any]] = []
    for index, card in enumerate(table.ma_the_bhyt):
        identifier: dict[str, Any] = {"system": INSURANCE, "value": card}
        if index < len(table.gt_the_den):
            identifier["period"] = {"end": table.gt_the_den[index].isoformat()}
        identifiers.append(identifier)
    for card in dict.fromkeys(table.ma_the_bhyt):
        if _CCCD_SHAPE.fullmatch(card) and cccd_problem(card, birth_date) is None:
            identifiers.append({"system": CCCD, "value": card})
    extensions: list[dict[str, Any] | None] = []
    if isinstance(table, Table13):
        if table.ma_quoctich:
            concept = {"coding": [{"system": CS_NATIONALITY, "code": table.ma_quoctich}]}
            extensions.append(
                {
                    "url": EXT_NATIONALITY,
                    "extension": [{"url": "code", "valueCodeableConcept": concept}],
                }
            )
        extensions.append(_coding_extension(EXT_ETHNICITY, CS_ETHNICITY, table.ma_dantoc))
        extensions.append(_coding_extension(EXT_OCCUPATION, CS_OCCUPATION, table.ma_nghe_nghiep))
    patient: dict[str, Any] = {
        "resourceType": "Patient",
        "id": patient_id,
        "extension": [e for e in extensions if e],
        "identifier": identifiers,
        "name": [_human_name(table.ho_ten)],
        "gender": GENDER_CODES.get(table.gioi_tinh or ""),
        "birthDate": birth_date,
        "address": [{"text": table.dia_chi}] if table.dia_chi else None,
    }
    born = table.ngay_sinh
    if isinstance(born, datetime) and (born.hour, born.minute) != (0, 0):
        patient["_birthDate"] = {
            "extension": [{"url": EXT_BIRTH_TIME, "valueDateTime": _fhir_datetime(born)}]
        }
    return _compact(patient)


def patient_match_identifiers(table: Table13 | Table14) -> list[tuple[str, str]]:
    """The (system, value) pairs to look the patient up by: each card, under both insurance
    systems the hub accepts, and the CCCD when a card is one."""
    pairs: list[tuple[str, str]] = []
    for card in dict.fromkeys(table.ma_the_bhyt):
        pairs += [(INSURANCE, card), (INSURANCE_2021, card)]
        if _CCCD_SHAPE.fullmatch(card) and cccd_problem(card) is None:
            pairs.append((CCCD, card))
    return pairs


def _notes(values: dict[str, str | None]) -> list[dict[str, Any]]:
    return [
        {"extension": [{"url": EXT_SECTION, "valueCode": name}], "text": values[name]}
        for name in NOTE_FIELDS
        if values.get(name)
    ]


def table13_to_fhir(
    table: Table13,
    *,
    sender_org: str,
    receiver_org: str,
    patient_ref: str | None,
    authored: date | datetime | None = None,
) -> Table13Resources:
    """The referral as FHIR: ServiceRequest, Task, Conditions, and a Patient when
    ``patient_ref`` is None (the caller found no patient by ``patient_match_identifiers``).

    ``sender_org``/``receiver_org`` are ``Organization/<id>`` of MA_CSKCB_DI and MA_CSKCB_DEN.
    ``authored`` (the envelope's NGAYLAP) dates the letter when NGAY_RA is empty.
    """
    issuer = table.issuer
    if not issuer:
        message = "MA_CSKCB (or MA_CSKCB_DI) is needed: the letter number is the facility's"
        raise FhirError(422, [Issue("required", message, ("XML13/MA_CSKCB",))])
    key = ("XML13", issuer, table.so_chuyentuyen)
    patient = None
    if patient_ref is None:
        patient = _patient(stable_id(*key, "Patient"), table)
        patient_ref = f"Patient/{patient['id']}"
    subject = {"reference": patient_ref}
    episode = _episode_reference(table.ma_lk, issuer)
    signed = table.ngay_ra or authored
    authored_on = _fhir_datetime(signed) if signed is not None else None
    codes = _diagnosis_codes(table)

    conditions = tuple(
        _compact(
            {
                "resourceType": "Condition",
                "id": stable_id(*key, "Condition", code),
                "clinicalStatus": CONDITION_ACTIVE,
                "verificationStatus": CONDITION_CONFIRMED,
                "category": [ENCOUNTER_DIAGNOSIS],
                "code": _icd_concept(code),
                "subject": subject,
                "encounter": episode,
                "recordedDate": authored_on,
            }
        )
        for code in codes
    )
    extensions = [
        _coding_extension(
            EXT_REFERRAL_REASON,
            CS_REFERRAL_REASON,
            table.ma_lydo_ct,
            REFERRAL_REASON.get(table.ma_lydo_ct),
        ),
        _coding_extension(
            EXT_DISCHARGE_TYPE,
            CS_DISCHARGE_TYPE,
            table.ma_loai_rv,
            DISCHARGE_TYPE.get(table.ma_loai_rv or ""),
        ),
        _string_extension(EXT_TRANSPORT, table.phuongtien_vc),
        _complex_extension(
            EXT_ESCORT,
            [
                ("name", "valueString", table.hoten_nguoi_ht),
                ("title", "valueString", table.chucdanh_nguoi_ht),
            ],
        ),
        *_common_extensions(table),
    ]
    service_request_id = stable_id(*key, "ServiceRequest")
    service_request = _compact(
        {
            "resourceType": "ServiceRequest",
            "id": service_request_id,
            "extension": [e for e in extensions if e],
            "identifier": [
                _scoped_identifier(
                    REFERRAL_LETTER_SYSTEM, issuer, table.so_chuyentuyen, use="official"
                ),
                _scoped_identifier(REFERRAL_CODE_SYSTEM, issuer, table.giay_chuyen_tuyen),
                _scoped_identifier(REFERRAL_FILE_SYSTEM, issuer, table.so_hoso),
            ],
            "status": "active",
            "intent": "order",
            "category": [REFERRAL_CATEGORY],
            "subject": subject,
            "encounter": episode,
            "authoredOn": authored_on,
            "requester": _org_reference(sender_org, table.ma_noi_di),
            "performer": [_org_reference(receiver_org, table.ma_noi_den)],
            "reasonCode": [_icd_concept(code) for code in codes],
            "reasonReference": [{"reference": f"Condition/{c['id']}"} for c in conditions],
            "note": _notes(
                {
                    "CHAN_DOAN_RV": table.chan_doan_rv,
                    "DAU_HIEU_LS": table.dau_hieu_ls,
                    "QT_BENHLY": table.qt_benhly,
                    "TOMTAT_KQ": table.tomtat_kq,
                    "TINH_TRANG_CT": table.tinh_trang_ct,
                    "HUONG_DIEU_TRI": table.huong_dieu_tri,
                    "TEN_DICH_VU": table.ten_dich_vu,
                    "TEN_THUOC": table.ten_thuoc,
                }
            ),
        }
    )
    task = _compact(
        {
            "resourceType": "Task",
            "id": stable_id(*key, "Task"),
            "status": "requested",
            "intent": "order",
            "code": TASK_FULFILL,
            "focus": {"reference": f"ServiceRequest/{service_request_id}"},
            "for": subject,
            "authoredOn": authored_on,
            "requester": {"reference": sender_org},
            "owner": {"reference": receiver_org},
        }
    )
    return Table13Resources(service_request, task, conditions, patient)


def table14_to_fhir(
    table: Table14,
    *,
    facility_org: str,
    patient_ref: str | None,
    referral_ref: str | None,
    facility_actor: str | None = None,
) -> Table14Resources:
    """The re-exam slip as an Appointment, and a Patient when ``patient_ref`` is None.

    ``facility_org`` is the Organization of MA_CSKCB; ``referral_ref`` the ServiceRequest the
    visit follows, if any; ``facility_actor`` the hospital's Location or HealthcareService
    reference, when the caller has one, for the hospital participant's actor.
    """
    key = ("XML14", table.ma_cskcb, table.so_giayhen_kl)
    patient = None
    if patient_ref is None:
        patient = _patient(stable_id(*key, "Patient"), table)
        patient_ref = f"Patient/{patient['id']}"
    when = table.ngay_hen_kl
    start = when.astimezone(VN_TZ) if isinstance(when, datetime) else _at_midnight(when)
    end = _at_midnight(start.date() + timedelta(days=1))
    hospital: dict[str, Any] = {
        "extension": [
            {
                "url": EXT_PARTICIPANT_ORG,
                "valueReference": _org_reference(facility_org, table.ma_cskcb),
            }
        ],
        "type": [PRIMARY_PERFORMER],
        "required": "required",
        "status": "accepted",
    }
    if facility_actor:
        hospital["actor"] = {"reference": facility_actor}
    extensions = [
        _coding_extension(EXT_BENEFICIARY, CS_BENEFICIARY, table.ma_doituong_kcb),
        *_common_extensions(table),
    ]
    appointment = _compact(
        {
            "resourceType": "Appointment",
            "id": stable_id(*key, "Appointment"),
            "extension": [e for e in extensions if e],
            "identifier": [
                _scoped_identifier(
                    REEXAM_SLIP_SYSTEM, table.ma_cskcb, table.so_giayhen_kl, use="official"
                )
            ],
            "status": "booked",
            "appointmentType": FOLLOW_UP,
            "reasonCode": [_icd_concept(code) for code in _diagnosis_codes(table)],
            "start": _fhir_datetime(start),
            "end": _fhir_datetime(end),
            "created": table.ngay_ct.isoformat(),
            "comment": table.chan_doan_rv,
            "basedOn": [{"reference": referral_ref}] if referral_ref else None,
            "supportingInformation": [_episode_reference(table.ma_lk, table.ma_cskcb)],
            "participant": [
                {"actor": {"reference": patient_ref}, "required": "required", "status": "accepted"},
                hospital,
            ],
        }
    )
    return Table14Resources(appointment, patient)


def to_transaction(resources: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """A transaction Bundle that PUTs each resource at its (stable) id.

    Replaying it for an unchanged letter writes the same content again. The import service
    must not replay it over a referral that has moved on (a Task accepted, an Appointment
    fulfilled): it reads ``ServiceRequest/<id>`` first, the ids being known in advance.
    """
    entries = []
    for resource in resources:
        kind, rid = resource["resourceType"], resource["id"]
        entry: dict[str, Any] = {}
        with contextlib.suppress(ValueError):
            entry["fullUrl"] = uuid.UUID(rid).urn
        entry["resource"] = resource
        entry["request"] = {"method": "PUT", "url": f"{kind}/{rid}"}
        entries.append(entry)
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


# ============================================================ FHIR → tables
def _extensions(resource: dict[str, Any] | None, url: str) -> list[dict[str, Any]]:
    if not isinstance(resource, dict):
        return []
    return [e for e in resource.get("extension") or [] if e.get("url") == url]


def _extension_value(resource: dict[str, Any] | None, url: str, key: str) -> Any:
    found = _extensions(resource, url)
    return found[0].get(key) if found else None


def _parts(resource: dict[str, Any] | None, url: str, key: str) -> dict[str, Any]:
    """The values of a complex extension's parts, by part name."""
    found = _extensions(resource, url)
    inner = found[0].get("extension") or [] if found else []
    return {part.get("url"): part.get(key) for part in inner}


def _coding_code(resource: dict[str, Any] | None, url: str) -> str | None:
    coding = _extension_value(resource, url, "valueCoding")
    return coding.get("code") if isinstance(coding, dict) else None


def _identifier_code(reference: Any, system: str) -> str | None:
    identifier = reference.get("identifier") if isinstance(reference, dict) else None
    if isinstance(identifier, dict) and identifier.get("system") == system:
        return identifier.get("value")
    return None


def _scoped(resource: dict[str, Any], prefix: str) -> tuple[str | None, str | None]:
    """(facility, value) of the first identifier under a facility-scoped system."""
    for identifier in resource.get("identifier") or []:
        system = identifier.get("system") or ""
        if system.startswith(prefix):
            return system[len(prefix) :] or None, identifier.get("value")
    return None, None


class _Reader:
    """Collects the values of a table read back from FHIR, and the problems found."""

    def __init__(self, table: str) -> None:
        self.table = table
        self.issues: list[Issue] = []

    def when(self, value: Any, field_name: str) -> datetime | None:
        if not isinstance(value, str):
            return None
        try:
            if len(value) == 10:
                return _at_midnight(date.fromisoformat(value))
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            message = f"{value!r} is not a date-time that {field_name} can hold"
            self.issues.append(Issue("value", message, (f"{self.table}/{field_name}",)))
            return None
        parsed = parsed if parsed.tzinfo else parsed.replace(tzinfo=VN_TZ)
        return parsed.astimezone(VN_TZ).replace(second=0, microsecond=0)

    def day(self, value: Any, field_name: str) -> date | None:
        found = self.when(value, field_name)
        return found.date() if found else None

    def finish(self, cls: type[Any], specs: tuple[FieldSpec, ...], values: dict[str, Any]) -> Any:
        values = {k: _clean(v) if isinstance(v, str) else v for k, v in values.items()}
        for spec in specs:
            if spec.required and values.get(spec.attr) in (None, ()):
                message = f"{spec.name} is required in {self.table} and the resources lack it"
                self.issues.append(Issue("required", message, (f"{self.table}/{spec.name}",)))
        self.issues.extend(_rule_issues(self.table, values))
        if self.issues:
            raise FhirError(422, self.issues)
        return cls(**values)


def _episode_values(reader: _Reader, resource: dict[str, Any]) -> dict[str, Any]:
    parts = _parts(resource, EXT_EPISODE, "valueDateTime")
    return {
        "ngay_vao": reader.when(parts.get("admitted"), "NGAY_VAO"),
        "ngay_vao_noi_tru": reader.when(parts.get("inpatientAdmitted"), "NGAY_VAO_NOI_TRU"),
        "ngay_ra": reader.when(parts.get("discharged"), "NGAY_RA"),
    }


def _common_values(resource: dict[str, Any]) -> dict[str, Any]:
    doctors = [
        e["valueIdentifier"].get("value")
        for e in _extensions(resource, EXT_PRACTITIONER)
        if isinstance(e.get("valueIdentifier"), dict)
    ]
    return {
        "ma_bac_si": tuple(d for d in doctors if d),
        "ma_ttdv": _extension_value(resource, EXT_HEAD, "valueString"),
        "ma_benh_yhct": _extension_value(resource, EXT_YHCT, "valueString"),
        "du_phong": _extension_value(resource, EXT_RESERVED, "valueString"),
    }


def _icd_codes(concepts: Iterable[Any]) -> list[str]:
    codes = [
        coding.get("code")
        for concept in concepts
        if isinstance(concept, dict)
        for coding in concept.get("coding") or []
        if coding.get("system") == ICD10 and coding.get("code")
    ]
    return list(dict.fromkeys(codes))


def _diagnosis_values(codes: list[str]) -> dict[str, Any]:
    return {"ma_benh_chinh": codes[0] if codes else None, "ma_benh_kt": tuple(codes[1:])}


def _patient_values(reader: _Reader, patient: dict[str, Any] | None) -> dict[str, Any]:
    patient = patient or {}
    names = patient.get("name") or []
    name = next((n for n in names if n.get("use") == "official"), names[0] if names else {})
    full = name.get("text") or " ".join([name.get("family") or "", *(name.get("given") or [])])
    born: datetime | YearMonth | None = None
    birth_date = patient.get("birthDate")
    if isinstance(birth_date, str) and len(birth_date) in (4, 7):
        month = int(birth_date[5:7]) if len(birth_date) == 7 else None
        born = YearMonth(int(birth_date[:4]), month)
    elif isinstance(birth_date, str):
        birth_time = _extension_value(patient.get("_birthDate"), EXT_BIRTH_TIME, "valueDateTime")
        born = reader.when(birth_time or birth_date, "NGAY_SINH")
    cards: list[str] = []
    ends: list[date] = []
    for identifier in patient.get("identifier") or []:
        if identifier.get("system") not in (INSURANCE, INSURANCE_2021):
            continue
        if identifier.get("value") and identifier["value"] not in cards:
            cards.append(identifier["value"])
            end = (identifier.get("period") or {}).get("end")
            if end and len(ends) == len(cards) - 1:
                ends.append(reader.day(end, "GT_THE_DEN") or date.min)
    gender = {v: k for k, v in GENDER_CODES.items()}.get(patient.get("gender") or "")
    if patient.get("gender") == "other":
        gender = "3"
    addresses = patient.get("address") or []
    address = addresses[0].get("text") if addresses else None
    return {
        "ho_ten": full,
        "ngay_sinh": born,
        "gioi_tinh": gender,
        "dia_chi": address,
        "ma_the_bhyt": tuple(cards),
        "gt_the_den": tuple(ends),
    }


def fhir_to_table13(
    service_request: dict[str, Any],
    task: dict[str, Any] | None,
    patient: dict[str, Any] | None,
    conditions: Iterable[dict[str, Any]] = (),
    *,
    sender_code: str | None = None,
    receiver_code: str | None = None,
) -> Table13:
    """Table 13 back from the referral's resources (the inverse of ``table13_to_fhir``).

    Facility codes come from the references' identifiers, else ``sender_code`` and
    ``receiver_code``; diagnoses from ``reasonCode``, else from the Conditions. A field that
    table 13 requires and the resources lack is a 422 naming it (``XML13/DAU_HIEU_LS``).
    """
    sr = service_request
    reader = _Reader("XML13")
    issuer, number = _scoped(sr, REFERRAL_LETTER_SYSTEM)
    performers = sr.get("performer") or [None]
    ma_noi_di = _identifier_code(sr.get("requester"), FACILITY_CODE) or sender_code
    ma_noi_den = _identifier_code(performers[0], FACILITY_CODE) or receiver_code
    if task:
        ma_noi_di = ma_noi_di or _identifier_code(task.get("requester"), FACILITY_CODE)
        ma_noi_den = ma_noi_den or _identifier_code(task.get("owner"), FACILITY_CODE)
    notes = {}
    for note in sr.get("note") or []:
        section = _extension_value(note, EXT_SECTION, "valueCode")
        if section in NOTE_FIELDS and section not in notes:
            notes[section] = note.get("text")
    codes = _icd_codes(sr.get("reasonCode") or []) or _icd_codes(c.get("code") for c in conditions)
    escort = _parts(sr, EXT_ESCORT, "valueString")
    patient_part = _patient_values(reader, patient)
    patient_part.update(
        ma_quoctich=_nationality(patient),
        ma_dantoc=_coding_code(patient, EXT_ETHNICITY),
        ma_nghe_nghiep=_coding_code(patient, EXT_OCCUPATION),
    )
    values = {
        "ma_lk": _identifier_code(sr.get("encounter"), EPISODE_LINK),
        "so_hoso": _scoped(sr, REFERRAL_FILE_SYSTEM)[1],
        "so_chuyentuyen": number,
        "giay_chuyen_tuyen": _scoped(sr, REFERRAL_CODE_SYSTEM)[1],
        "ma_cskcb": issuer or ma_noi_di,
        "ma_noi_di": ma_noi_di,
        "ma_noi_den": ma_noi_den,
        **patient_part,
        **_episode_values(reader, sr),
        "dau_hieu_ls": notes.get("DAU_HIEU_LS"),
        "chan_doan_rv": notes.get("CHAN_DOAN_RV"),
        "qt_benhly": notes.get("QT_BENHLY"),
        "tomtat_kq": notes.get("TOMTAT_KQ"),
        "tinh_trang_ct": notes.get("TINH_TRANG_CT"),
        **_diagnosis_values(codes),
        "ten_dich_vu": notes.get("TEN_DICH_VU"),
        "ten_thuoc": notes.get("TEN_THUOC"),
        "ma_loai_rv": _coding_code(sr, EXT_DISCHARGE_TYPE),
        "ma_lydo_ct": _coding_code(sr, EXT_REFERRAL_REASON),
        "huong_dieu_tri": notes.get("HUONG_DIEU_TRI"),
        "phuongtien_vc": _extension_value(sr, EXT_TRANSPORT, "valueString"),
        "hoten_nguoi_ht": escort.get("name"),
        "chucdanh_nguoi_ht": escort.get("title"),
        **_common_values(sr),
    }
    return reader.finish(Table13, TABLE13_FIELDS, values)


def _nationality(patient: dict[str, Any] | None) -> str | None:
    for extension in _extensions(patient, EXT_NATIONALITY):
        for part in extension.get("extension") or []:
            concept = part.get("valueCodeableConcept") if part.get("url") == "code" else None
            for coding in (concept or {}).get("coding") or []:
                if coding.get("code"):
                    return coding["code"]
    return None


def fhir_to_table14(
    appointment: dict[str, Any],
    patient: dict[str, Any] | None,
    *,
    facility_code: str | None = None,
) -> Table14:
    """Table 14 back from the Appointment and its patient (the inverse of ``table14_to_fhir``).

    NGAY_HEN_KL is a day when the appointment starts at 00:00 in Viet Nam, else a date-time.
    """
    reader = _Reader("XML14")
    issuer, number = _scoped(appointment, REEXAM_SLIP_SYSTEM)
    hospital_code = None
    for participant in appointment.get("participant") or []:
        org = _extension_value(participant, EXT_PARTICIPANT_ORG, "valueReference")
        hospital_code = hospital_code or _identifier_code(org, FACILITY_CODE)
    episode = next(
        (
            ref
            for ref in appointment.get("supportingInformation") or []
            if _identifier_code(ref, EPISODE_LINK)
        ),
        None,
    )
    start = reader.when(appointment.get("start"), "NGAY_HEN_KL")
    appointment_day: date | datetime | None = start
    if start is not None and (start.hour, start.minute) == (0, 0):
        appointment_day = start.date()
    values = {
        "ma_lk": _identifier_code(episode, EPISODE_LINK),
        "so_giayhen_kl": number,
        "ma_cskcb": issuer or hospital_code or facility_code,
        **_patient_values(reader, patient),
        **_episode_values(reader, appointment),
        "ngay_hen_kl": appointment_day,
        "chan_doan_rv": appointment.get("comment"),
        **_diagnosis_values(_icd_codes(appointment.get("reasonCode") or [])),
        "ma_doituong_kcb": _coding_code(appointment, EXT_BENEFICIARY),
        "ngay_ct": reader.day(appointment.get("created"), "NGAY_CT"),
        **_common_values(appointment),
    }
    return reader.finish(Table14, TABLE14_FIELDS, values)
