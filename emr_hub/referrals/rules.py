"""Referral rules: who may refer a patient to whom, and how long a referral letter is valid.

Pure functions over FHIR JSON and two small value objects: no database, no HTTP. The service
layer builds a :class:`Facility` for each side (level from the Organization, partners from its
OrganizationAffiliations), reads the reason and the diagnoses off the ServiceRequest with
:func:`skip_reason_from_service_request` and :func:`diagnoses_from_service_request`, and calls
:func:`check_direction` and :func:`check_validity` before it stores the letter. A refusal is a
:class:`~emr_hub.errors.FhirError` 422 whose issue names the element at fault.

Sources: Law on Medical Examination and Treatment 2023 (three levels of care); Circular
01/2025/TT-BYT (skipping a level, Annex I, 10 working days, Annex III one year, the treatment
episode rule) *(secondary)*; Labour Code 2019 Art. 112 (holidays); Civil Code 2015 Art. 147-148
(counting a time limit). The disease lists and the holidays are data (``data/*.json``); an
operator can pass another file to :func:`load_disease_lists` and :func:`load_calendar`.

Direction
---------
====================================================  =========================================
sender → receiver                                     rule
====================================================  =========================================
the receiver is the sender                            refused
the receiver does not accept referrals                refused
a partner (either side names the other)               ordinary, whatever the levels
same level, one level up, any level down              ordinary
two levels up (BAN_DAU → CHUYEN_SAU)                  needs a reason below, else refused
====================================================  =========================================

How a reason for skipping a level is coded in FHIR
--------------------------------------------------
==================  ==========================================================  ===============
reason              ServiceRequest                                              table 13
==================  ==========================================================  ===============
emergency           ``priority`` = ``stat``                                     (none)
patient's request   extension :data:`REFERRAL_REASON_EXTENSION` with            MA_LYDO_CT 3 or
                    ``valueCoding`` :data:`MA_LYDO_CT_SYSTEM` ``3``, or         MA_LOAI_RV 5
                    extension :data:`DISCHARGE_TYPE_EXTENSION` with
                    :data:`MA_LOAI_RV_SYSTEM` ``5`` (either; as the XML 13
                    import writes them; a ``valueCodeableConcept`` is read too)
disease on Annex I  ``reasonCode.coding`` in an ICD-10 system                   MA_BENH_CHINH,
                    (:data:`ICD10_SYSTEMS`) with a code on the list             MA_BENH_KT
==================  ==========================================================  ===============

Why only ``stat`` is an emergency: R4 request-priority defines ``stat`` as "actioned
immediately - highest possible priority. E.g. an emergency"; ``urgent`` ("promptly - higher
priority than routine") and ``asap`` ("as soon as possible - higher priority than urgent") say
how fast, not that it is an emergency, and accepting them would let any hurried letter skip a
level. When both a patient's request and ``stat`` are coded, the request wins (it is explicit
and changes the insurance benefit). The disease-list reason needs no flag of its own:
:func:`check_direction` reads the diagnoses itself (:attr:`SkipReason.DISEASE_LIST` only makes
it point at ``reasonCode`` when none is on the list). Annex I conditions other than an age
limit (severity, stage) are text in the data and the sending doctor's responsibility.

Validity
--------
* **10 working days**: the signing day does not count (Civil Code Art. 147: a period in days
  starts the day after the event); the letter is valid from the signing instant to the end
  (23:59:59 Asia/Ho_Chi_Minh) of the 10th working day after the signing day. Working days are
  Monday-Friday minus the holidays of ``data/holidays.json``; Saturday can be made a working day
  (facilities that work Saturdays), and the Government's make-up Saturdays count only when asked
  for (by default a letter is never shortened by one).
* **1 year** when a diagnosis is on Annex III: to the end of the same date one year later
  (29 February → 28 February), moved to the end of the next working day when that date is not
  one (Civil Code Art. 148(4)-(5)).
* A letter that **expires during a treatment episode** stays valid to the episode's end
  (:func:`is_valid_on`): the episode must have been running when the letter expired.

Times without an offset are Vietnam time (UTC+07:00 all year, as :mod:`emr_hub.fhir.search.
values`); FHIR dates are read at their precision (``2025-02-14`` as an end covers the whole day).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from enum import IntEnum, StrEnum
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Final

from emr_hub.errors import FhirError, Issue, unprocessable
from emr_hub.fhir.search.values import LOCAL_ZONE, DateRange, date_ranges

# ------------------------------------------------------------------------------ coding systems

LEVEL_SYSTEM: Final = "http://fhir.hl7.org.vn/core/CodeSystem/vn-facility-care-level-cs"
REFERRAL_REASON_EXTENSION: Final = "http://fhir.hl7.org.vn/core/StructureDefinition/referral-reason"
DISCHARGE_TYPE_EXTENSION: Final = "http://fhir.hl7.org.vn/core/StructureDefinition/discharge-type"
MA_LYDO_CT_SYSTEM: Final = "http://fhir.hl7.org.vn/core/CodeSystem/xml130-ma-lydo-ct"
MA_LOAI_RV_SYSTEM: Final = "http://fhir.hl7.org.vn/core/CodeSystem/xml130-ma-loai-rv"
PATIENT_REQUEST_CODES: Final = frozenset(
    {
        (REFERRAL_REASON_EXTENSION, MA_LYDO_CT_SYSTEM, "3"),
        (DISCHARGE_TYPE_EXTENSION, MA_LOAI_RV_SYSTEM, "5"),
    }
)
"""(extension, system, code) of the patient's own request, as table 13 carries it."""
EMERGENCY_PRIORITIES: Final = frozenset({"stat"})
ICD10_SYSTEMS: Final = frozenset(
    {
        "http://hl7.org/fhir/sid/icd-10",  # FHIR's identifier for WHO ICD-10
        "http://terminology.hl7.org/CodeSystem/icd10",  # used by the Ministry's vn-core-ig
    }
)

WORKING_DAYS_VALID: Final = 10
END_OF_DAY: Final = time(23, 59, 59)

# ------------------------------------------------------------------------------ facilities


class Level(IntEnum):
    """Level of care (Law on Medical Examination and Treatment 2023), ordered low to high."""

    BAN_DAU = 1
    CO_BAN = 2
    CHUYEN_SAU = 3

    @classmethod
    def from_code(cls, code: str) -> Level:
        try:
            return cls[code]
        except KeyError:
            raise ValueError(f"Unknown level of care {code!r}") from None


def level_of_organization(organization: Mapping[str, Any]) -> Level | None:
    """The level coded in ``Organization.type`` (:data:`LEVEL_SYSTEM`), or None."""
    for concept in organization.get("type") or []:
        for coding in (concept or {}).get("coding") or []:
            if coding.get("system") == LEVEL_SYSTEM and coding.get("code") in Level.__members__:
                return Level[coding["code"]]
    return None


@dataclass(frozen=True)
class Facility:
    """One side of a referral: ``reference`` is ``Organization/<id>``; ``partners`` the
    references of the Organizations it is affiliated with (satellite network)."""

    reference: str
    level: Level
    accepts_referrals: bool = True
    partners: frozenset[str] = frozenset()

    def is_partner_of(self, other: Facility) -> bool:
        """Either side naming the other is enough: an OrganizationAffiliation is stored once."""
        return other.reference in self.partners or self.reference in other.partners


class SkipReason(StrEnum):
    """Why a referral may skip a level upward."""

    EMERGENCY = "emergency"
    DISEASE_LIST = "disease-list"
    PATIENT_REQUEST = "patient-request"


# ------------------------------------------------------------------------------ disease lists


def normalize_icd10(code: str) -> str:
    """``" e11.9† "`` → ``"E119"``: upper case without dots, spaces and the dagger/asterisk
    marks of dual classification."""
    return "".join(ch for ch in code.upper() if ch not in ". †*\t")


@dataclass(frozen=True)
class DiseaseEntry:
    """One row of a list: ICD-10 prefixes and 3-character ranges, exclusions, an age limit."""

    name: str
    prefixes: tuple[str, ...] = ()
    ranges: tuple[tuple[str, str], ...] = ()
    exclude: tuple[str, ...] = ()
    under_age: int | None = None
    conditions: str = ""

    def matches(self, code: str, age: int | None = None) -> bool:
        norm = normalize_icd10(code)
        if not norm:
            return False
        if self.under_age is not None and (age is None or age >= self.under_age):
            return False
        if any(norm.startswith(prefix) for prefix in self.exclude):
            return False
        return any(norm.startswith(prefix) for prefix in self.prefixes) or any(
            len(norm) >= len(low) and low <= norm[: len(low)] <= high for low, high in self.ranges
        )


@dataclass(frozen=True)
class DiseaseList:
    name: str
    source: str
    entries: tuple[DiseaseEntry, ...]

    def match(self, codes: Iterable[str], age: int | None = None) -> str | None:
        """The first code on the list (as given), or None."""
        for code in codes:
            if any(entry.matches(code, age) for entry in self.entries):
                return code
        return None


@dataclass(frozen=True)
class DiseaseLists:
    direct_to_specialised: DiseaseList
    one_year_validity: DiseaseList


def _parse_entry(raw: Mapping[str, Any], where: str) -> DiseaseEntry:
    prefixes: list[str] = []
    ranges: list[tuple[str, str]] = []
    for text in raw.get("codes") or []:
        if "-" in text:
            low, high = (normalize_icd10(part) for part in text.split("-", 1))
            if len(low) != 3 or len(high) != 3 or low > high or low[0] > high[0]:
                raise ValueError(f"{where}: bad ICD-10 range {text!r} (expected e.g. 'C00-C97')")
            ranges.append((low, high))
        else:
            prefixes.append(_checked_code(text, where))
    if not prefixes and not ranges:
        raise ValueError(f"{where}: an entry needs at least one code")
    under_age = raw.get("under_age")
    if under_age is not None and (not isinstance(under_age, int) or under_age <= 0):
        raise ValueError(f"{where}: under_age must be a positive whole number")
    return DiseaseEntry(
        name=str(raw.get("name", "")),
        prefixes=tuple(prefixes),
        ranges=tuple(ranges),
        exclude=tuple(_checked_code(text, where) for text in raw.get("exclude") or []),
        under_age=under_age,
        conditions=str(raw.get("conditions", "")),
    )


def _checked_code(text: str, where: str) -> str:
    norm = normalize_icd10(text)
    if not (3 <= len(norm) <= 7 and norm[0].isalpha() and norm[1:3].isdigit()):
        raise ValueError(f"{where}: {text!r} is not an ICD-10 code or prefix")
    return norm


def _parse_list(raw: Mapping[str, Any], key: str) -> DiseaseList:
    section = raw.get(key)
    if not isinstance(section, Mapping) or not isinstance(section.get("entries"), list):
        raise ValueError(f"referral lists: {key}.entries is missing")
    entries = tuple(
        _parse_entry(entry, f"{key}.entries[{index}]")
        for index, entry in enumerate(section["entries"])
    )
    return DiseaseList(key, str(section.get("source", raw.get("source", ""))), entries)


def _read_json(path: str | Path | None, packaged: str) -> dict[str, Any]:
    if path is None:
        text = resources.files("emr_hub.referrals").joinpath(f"data/{packaged}").read_text("utf-8")
    else:
        text = Path(path).read_text("utf-8")
    data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError(f"{path or packaged}: expected a JSON object")
    return data


@lru_cache(maxsize=8)
def load_disease_lists(path: str | Path | None = None) -> DiseaseLists:
    """Annex I and Annex III lists from ``path`` (same shape as the packaged
    ``data/referral_lists.json``), or the packaged demo lists. Cached per path: call
    :func:`clear_caches` after changing a file."""
    raw = _read_json(path, "referral_lists.json")
    return DiseaseLists(
        _parse_list(raw, "direct_to_specialised"), _parse_list(raw, "one_year_validity")
    )


def direct_to_specialised_list(path: str | Path | None = None) -> DiseaseList:
    """Annex I: diseases that may go straight to a specialised-level facility."""
    return load_disease_lists(path).direct_to_specialised


def one_year_list(path: str | Path | None = None) -> DiseaseList:
    """Annex III: diseases whose referral letter is valid one year."""
    return load_disease_lists(path).one_year_validity


# ------------------------------------------------------------------------------ direction


def check_direction(
    sender: Facility,
    receiver: Facility,
    reason: SkipReason | None,
    diagnoses: list[str],
    *,
    patient_age: int | None = None,
    disease_list: DiseaseList | None = None,
) -> None:
    """Refuse (422) a referral the network rules do not allow; see the module's table.

    ``patient_age`` (whole years) lets the age-limited Annex I rows apply; unknown, they do
    not. ``disease_list`` defaults to the configured Annex I list."""
    performer = "ServiceRequest.performer"
    if receiver.reference == sender.reference:
        raise unprocessable(f"{sender.reference} cannot refer a patient to itself", performer)
    if not receiver.accepts_referrals:
        raise unprocessable(f"{receiver.reference} does not accept referrals", performer)
    if sender.is_partner_of(receiver) or receiver.level - sender.level <= 1:
        return
    if reason in (SkipReason.EMERGENCY, SkipReason.PATIENT_REQUEST):
        return
    listed = disease_list if disease_list is not None else direct_to_specialised_list()
    if listed.match(diagnoses, patient_age) is not None:
        return
    skipping = (
        f"{sender.reference} ({sender.level.name}) may not refer straight to "
        f"{receiver.reference} ({receiver.level.name}), skipping "
        f"{Level(sender.level + 1).name},"
    )
    if reason is SkipReason.DISEASE_LIST:
        shown = ", ".join(diagnoses) if diagnoses else "none given"
        raise unprocessable(
            f"{skipping} for a disease on the direct-to-specialised list (Circular 01/2025 "
            f"Annex I): none of the ICD-10 diagnoses is on it ({shown})",
            "ServiceRequest.reasonCode",
        )
    raise unprocessable(
        f"{skipping} without a reason: mark an emergency with priority 'stat', the patient's own "
        f"request (extension {REFERRAL_REASON_EXTENSION} MA_LYDO_CT 3, or "
        f"{DISCHARGE_TYPE_EXTENSION} MA_LOAI_RV 5), or "
        "give an ICD-10 reasonCode on the direct-to-specialised list (Circular 01/2025 Annex I)",
        performer,
    )


def _codings(element: Mapping[str, Any]) -> Iterable[Mapping[str, Any]]:
    coding = element.get("valueCoding")
    if isinstance(coding, Mapping):
        yield coding
    concept = element.get("valueCodeableConcept")
    if isinstance(concept, Mapping):
        yield from (c for c in concept.get("coding") or [] if isinstance(c, Mapping))


def skip_reason_from_service_request(sr: Mapping[str, Any]) -> SkipReason | None:
    """The explicitly coded reason: the patient's request (extension) before an emergency
    (``priority`` ``stat``); None otherwise. Diseases are read by :func:`check_direction`."""
    for extension in sr.get("extension") or []:
        if not isinstance(extension, Mapping):
            continue
        url = extension.get("url")
        for coding in _codings(extension):
            if (url, coding.get("system"), str(coding.get("code"))) in PATIENT_REQUEST_CODES:
                return SkipReason.PATIENT_REQUEST
    if sr.get("priority") in EMERGENCY_PRIORITIES:
        return SkipReason.EMERGENCY
    return None


def diagnoses_from_service_request(sr: Mapping[str, Any]) -> list[str]:
    """ICD-10 codes of ``reasonCode`` (systems :data:`ICD10_SYSTEMS`), in order, once each.
    ``reasonReference`` (a Condition) needs a lookup and is the service layer's to add."""
    found: list[str] = []
    for concept in sr.get("reasonCode") or []:
        for coding in (concept or {}).get("coding") or []:
            code = coding.get("code")
            code = code.strip() if isinstance(code, str) else ""
            if coding.get("system") in ICD10_SYSTEMS and code and code not in found:
                found.append(code)
    return found


# ------------------------------------------------------------------------------ working days

_FIXED_HOLIDAYS: Final = ((1, 1), (4, 30), (5, 1), (9, 2))
"""The statutory days with a fixed Gregorian date, used for years the data does not cover."""


@dataclass(frozen=True)
class WorkingCalendar:
    """Which days count as working days.

    ``weekend``: ``date.weekday()`` numbers of the weekly rest days (5 Saturday, 6 Sunday).
    ``holidays``: days off (statutory, compensatory, swapped). ``makeup_workdays``: Saturdays
    worked for a swap, working days only if ``count_makeup_workdays``. ``covered_years``: years
    the data lists in full; other years get only 1/1, 30/4, 1/5 and 2/9."""

    holidays: frozenset[date] = frozenset()
    weekend: frozenset[int] = frozenset({5, 6})
    makeup_workdays: frozenset[date] = frozenset()
    count_makeup_workdays: bool = False
    covered_years: frozenset[int] = field(default_factory=frozenset)

    def __post_init__(self) -> None:
        if not self.weekend <= set(range(7)) or len(self.weekend) >= 7:
            raise ValueError("weekend must name 0 to 6 weekdays (Monday 0 ... Sunday 6)")

    def is_working_day(self, day: date) -> bool:
        if day in self.holidays:
            return False
        if day.year not in self.covered_years and (day.month, day.day) in _FIXED_HOLIDAYS:
            return False
        if self.count_makeup_workdays and day in self.makeup_workdays:
            return True
        return day.weekday() not in self.weekend


@lru_cache(maxsize=16)
def load_calendar(
    path: str | Path | None = None,
    *,
    saturday_is_working: bool = False,
    count_makeup_workdays: bool = False,
) -> WorkingCalendar:
    """The holidays of ``path`` (same shape as the packaged ``data/holidays.json``) or the
    packaged ones. Cached per arguments: call :func:`clear_caches` after changing a file."""
    raw = _read_json(path, "holidays.json")
    years = raw.get("years")
    if not isinstance(years, Mapping):
        raise ValueError("holidays: 'years' is missing")
    holidays: set[date] = set()
    makeup: set[date] = set()
    covered: set[int] = set()
    for year_text, year in years.items():
        covered.add(int(year_text))
        for key, into in (("days_off", holidays), ("makeup_workdays", makeup)):
            for index, entry in enumerate(year.get(key) or []):
                day = date.fromisoformat(entry["date"])
                if day.year != int(year_text):
                    raise ValueError(f"holidays: years.{year_text}.{key}[{index}] is in {day.year}")
                into.add(day)
    return WorkingCalendar(
        holidays=frozenset(holidays),
        weekend=frozenset({6} if saturday_is_working else {5, 6}),
        makeup_workdays=frozenset(makeup),
        count_makeup_workdays=count_makeup_workdays,
        covered_years=frozenset(covered),
    )


def clear_caches() -> None:
    """Forget loaded lists and calendars (after an operator replaced a file)."""
    load_disease_lists.cache_clear()
    load_calendar.cache_clear()


def add_working_days(start: date, days: int, calendar: WorkingCalendar | None = None) -> date:
    """The ``days``-th working day after ``start`` (``start`` itself never counts); ``days`` 0
    gives ``start`` unchanged."""
    if days < 0:
        raise ValueError("days must be 0 or more")
    calendar = calendar or load_calendar()
    current, counted = start, 0
    while counted < days:
        current += timedelta(days=1)
        if calendar.is_working_day(current):
            counted += 1
    return current


# ------------------------------------------------------------------------------ validity


def _local(moment: datetime) -> datetime:
    """An aware datetime in Vietnam time; a naive one is taken to be Vietnam time already."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=LOCAL_ZONE)
    return moment.astimezone(LOCAL_ZONE)


def _one_year_later(day: date) -> date:
    try:
        return day.replace(year=day.year + 1)
    except ValueError:  # 29 February
        return date(day.year + 1, 2, 28)


def validity(
    signed: datetime,
    diagnoses: list[str],
    *,
    calendar: WorkingCalendar | None = None,
    one_year: DiseaseList | None = None,
) -> tuple[datetime, datetime]:
    """``(start, end)`` of a letter signed at ``signed``: start is the signing instant, end
    23:59:59 Vietnam time of the 10th working day after the signing day, or of the same date a
    year later (rolled to a working day) when a diagnosis is on the Annex III list."""
    calendar = calendar or load_calendar()
    chronic = one_year if one_year is not None else one_year_list()
    start = _local(signed)
    if chronic.match(diagnoses) is not None:
        last = _one_year_later(start.date())
        if not calendar.is_working_day(last):
            last = add_working_days(last, 1, calendar)
    else:
        last = add_working_days(start.date(), WORKING_DAYS_VALID, calendar)
    return start, datetime.combine(last, END_OF_DAY, LOCAL_ZONE)


def fhir_datetime(moment: datetime) -> str:
    """``2025-02-10T23:59:59+07:00``: Vietnam time, whole seconds."""
    return _local(moment).replace(microsecond=0).isoformat()


def check_validity(
    period: Mapping[str, Any] | None,
    signed: datetime,
    diagnoses: list[str],
    *,
    calendar: WorkingCalendar | None = None,
    one_year: DiseaseList | None = None,
) -> dict[str, Any]:
    """The ``occurrencePeriod`` to store: the computed one when absent, missing ``start`` or
    ``end`` filled in, a given one kept as written. Refused (422, ``ServiceRequest.
    occurrencePeriod``) when unreadable, starting before the signing, ending after the allowed
    end, or ending before it starts. Each bound is read at its precision: a date-only start on
    the signing day is accepted, so is a date-only end on the last valid day."""
    allowed_start, allowed_end = validity(signed, diagnoses, calendar=calendar, one_year=one_year)
    result: dict[str, Any] = dict(period or {})
    where = "ServiceRequest.occurrencePeriod"
    issues: list[Issue] = []
    start = end = None
    if result.get("start") is None:
        result["start"] = fhir_datetime(allowed_start)
    else:
        start = _range_of(result["start"])
        if start is None:
            issues.append(_issue(f"start {result['start']!r} is not a FHIR dateTime", where))
        elif start.high <= allowed_start:
            issues.append(
                _issue(
                    f"starts ({result['start']}) before the letter was signed "
                    f"({fhir_datetime(allowed_start)})",
                    where,
                )
            )
    if result.get("end") is None:
        result["end"] = fhir_datetime(allowed_end)
    else:
        end = _range_of(result["end"])
        if end is None:
            issues.append(_issue(f"end {result['end']!r} is not a FHIR dateTime", where))
        elif end.low > allowed_end:
            rule = (
                "1 year for a disease on the Annex III list"
                if allowed_end - allowed_start > timedelta(days=60)
                else f"{WORKING_DAYS_VALID} working days after the signing day"
            )
            issues.append(
                _issue(
                    f"ends ({result['end']}) after the letter expires "
                    f"({fhir_datetime(allowed_end)}: {rule})",
                    where,
                )
            )
        elif start is not None and end.high <= start.low:
            issues.append(_issue("ends before it starts", where))
    if issues:
        raise FhirError(422, issues)
    return result


def is_valid_on(
    period: Mapping[str, Any],
    moment: datetime,
    episode_end: datetime | None = None,
    *,
    episode_start: datetime | None = None,
) -> bool:
    """Whether a letter with this ``occurrencePeriod`` is valid at ``moment``.

    Within the period: valid. After it: valid only up to ``episode_end`` (inclusive) of a
    treatment episode that was running when the letter expired, i.e. one that started while the
    letter was valid (checked when ``episode_start`` is given) and ended after the expiry. For
    an episode still open, pass its expected end, or ``moment`` itself."""
    given = [key for key in ("start", "end") if period.get(key) is not None]
    bounds = {key: found for key in given if (found := _range_of(period[key])) is not None}
    if len(bounds) != len(given):
        raise ValueError(f"Unreadable occurrencePeriod {dict(period)!r}")
    start = bounds["start"].low if "start" in bounds else None
    end = bounds["end"].high if "end" in bounds else None
    at = _local(moment)
    if start is not None and at < start:
        return False
    if end is None or at < end:
        return True
    if episode_end is None:
        return False
    if episode_start is not None:
        begun = _local(episode_start)
        if begun >= end or (start is not None and begun < start):
            return False
    finish = _local(episode_end)
    return finish >= end and at <= finish


def _range_of(value: Any) -> DateRange | None:
    """The DateRange (UTC, high exclusive) a FHIR dateTime covers at its precision, or None."""
    if not isinstance(value, str):
        return None
    found = date_ranges(("dateTime", value))
    return found[0] if found else None


def _issue(message: str, expression: str) -> Issue:
    return Issue("business-rule", f"Referral occurrencePeriod {message}", (expression,))
