"""Referral rules: direction matrix, skip reasons, disease lists, working days, validity."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from itertools import product
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from emr_hub.errors import FhirError
from emr_hub.referrals import rules, xml130
from emr_hub.referrals.rules import (
    DISCHARGE_TYPE_EXTENSION,
    MA_LOAI_RV_SYSTEM,
    MA_LYDO_CT_SYSTEM,
    REFERRAL_REASON_EXTENSION,
    Facility,
    Level,
    SkipReason,
    WorkingCalendar,
    add_working_days,
    check_direction,
    check_validity,
    diagnoses_from_service_request,
    is_valid_on,
    skip_reason_from_service_request,
    validity,
)

VN = rules.LOCAL_ZONE
ICD10 = "http://hl7.org/fhir/sid/icd-10"
ON_ANNEX_I = "C71.9"  # malignant neoplasm of brain, Annex I row 19
NOT_ON_ANNEX_I = "J18.9"  # pneumonia
CALENDAR = rules.load_calendar()


def vn(*args: int) -> datetime:
    return datetime(*args, tzinfo=VN)  # type: ignore[misc]


def error_of(call: Any, *args: Any, **kwargs: Any) -> FhirError:
    with pytest.raises(FhirError) as caught:
        call(*args, **kwargs)
    return caught.value


# ------------------------------------------------------------------------------ direction

LEVELS = list(Level)
REASONS: list[SkipReason | None] = [None, *SkipReason]
DIAGNOSES = {"no diagnosis": [], "not on list": [NOT_ON_ANNEX_I], "on list": [ON_ANNEX_I]}
SKIPS_A_LEVEL = {(Level.BAN_DAU, Level.CHUYEN_SAU)}


def facilities(
    sender_level: Level, receiver_level: Level, partner: bool
) -> tuple[Facility, Facility]:
    sender = Facility("Organization/sender", sender_level)
    receiver = Facility(
        "Organization/receiver",
        receiver_level,
        partners=frozenset({"Organization/sender"}) if partner else frozenset(),
    )
    return sender, receiver


@pytest.mark.parametrize(
    ("sender_level", "receiver_level", "reason", "diagnoses", "partner"),
    list(product(LEVELS, LEVELS, REASONS, DIAGNOSES, [False, True])),
)
def test_direction_matrix(
    sender_level: Level,
    receiver_level: Level,
    reason: SkipReason | None,
    diagnoses: str,
    partner: bool,
) -> None:
    sender, receiver = facilities(sender_level, receiver_level, partner)
    accepted_reason = reason in (SkipReason.EMERGENCY, SkipReason.PATIENT_REQUEST)
    allowed = (
        (sender_level, receiver_level) not in SKIPS_A_LEVEL
        or partner
        or accepted_reason
        or diagnoses == "on list"
    )
    if allowed:
        check_direction(sender, receiver, reason, DIAGNOSES[diagnoses])
        return
    error = error_of(check_direction, sender, receiver, reason, DIAGNOSES[diagnoses])
    assert error.status == 422
    (issue,) = error.issues
    assert issue.code == "business-rule"
    if reason is SkipReason.DISEASE_LIST:
        assert issue.expression == ("ServiceRequest.reasonCode",)
        assert "Annex I" in issue.diagnostics
    else:
        assert issue.expression == ("ServiceRequest.performer",)
        assert "skipping CO_BAN" in issue.diagnostics
        assert "'stat'" in issue.diagnostics and "MA_LYDO_CT 3" in issue.diagnostics


def test_partner_named_by_either_side() -> None:
    sender = Facility("Organization/a", Level.BAN_DAU, partners=frozenset({"Organization/b"}))
    receiver = Facility("Organization/b", Level.CHUYEN_SAU)
    check_direction(sender, receiver, None, [])
    check_direction(
        Facility("Organization/a", Level.BAN_DAU),
        Facility("Organization/b", Level.CHUYEN_SAU, partners=frozenset({"Organization/a"})),
        None,
        [],
    )


@pytest.mark.parametrize(
    ("sender_level", "receiver_level", "partner"), list(product(LEVELS, LEVELS, [False, True]))
)
def test_receiver_that_does_not_accept_referrals_is_refused(
    sender_level: Level, receiver_level: Level, partner: bool
) -> None:
    sender, receiver = facilities(sender_level, receiver_level, partner)
    closed = Facility(receiver.reference, receiver.level, False, receiver.partners)
    error = error_of(check_direction, sender, closed, SkipReason.EMERGENCY, [ON_ANNEX_I])
    assert error.status == 422
    assert error.issues[0].expression == ("ServiceRequest.performer",)
    assert "does not accept referrals" in str(error)


def test_a_facility_cannot_refer_to_itself() -> None:
    bach_mai = Facility("Organization/bach-mai", Level.CHUYEN_SAU)
    error = error_of(check_direction, bach_mai, bach_mai, None, [])
    assert error.status == 422 and "itself" in str(error)


@pytest.mark.parametrize(
    ("code", "age", "listed"),
    [
        ("C25.3", None, True),  # row 14: 3-character code covers its subdivisions
        ("c25", None, True),
        ("A17.0†", None, True),  # dagger of dual classification ignored
        ("A17", None, False),  # row 1 lists only A17.0
        ("C79.3", None, True),
        ("C79.1", None, False),
        ("C38.1", None, True),
        ("C38.4", None, False),  # row 16 excludes C38.4
        ("C38.4", 10, True),  # ... but row 22 (any cancer, under 18) includes it
        ("C83.5", 40, False),  # row 23 excludes C83.5
        ("C83.1", 40, True),  # row 23 range C81-C86
        ("C96.9", 40, True),  # row 23 range C90-C96
        ("C50.9", 17, True),  # row 22, C00-C97 under 18
        ("C50.9", 18, False),
        ("C50.9", None, False),  # age unknown: age-limited rows do not apply
        ("E70.0", 5, True),
        ("E70.0", 30, False),
        ("Q21.0", 3, True),  # row 58 range Q20-Q28 under 18
        ("D61.9", None, False),
        ("D61.0", None, True),
        ("Z94.0", None, True),
        ("J18.9", None, False),
        ("", None, False),
    ],
)
def test_annex_i_matching(code: str, age: int | None, listed: bool) -> None:
    found = rules.direct_to_specialised_list().match([code], age)
    assert (found == code) is listed


def test_age_limited_disease_passes_direction_only_with_the_age() -> None:
    sender, receiver = facilities(Level.BAN_DAU, Level.CHUYEN_SAU, False)
    check_direction(sender, receiver, None, ["C50.9"], patient_age=12)
    with pytest.raises(FhirError):
        check_direction(sender, receiver, None, ["C50.9"], patient_age=40)


def test_direction_uses_the_given_list() -> None:
    sender, receiver = facilities(Level.BAN_DAU, Level.CHUYEN_SAU, False)
    custom = rules.DiseaseList("test", "test", (rules.DiseaseEntry("x", prefixes=("J18",)),))
    check_direction(sender, receiver, None, ["J18.9"], disease_list=custom)
    with pytest.raises(FhirError):
        check_direction(sender, receiver, None, [ON_ANNEX_I], disease_list=custom)


# ------------------------------------------------------------------------------ FHIR coding


def reason_extension(system: str, code: str) -> dict[str, Any]:
    """MA_LYDO_CT in the referral-reason extension, MA_LOAI_RV in discharge-type (as XML 13)."""
    url = DISCHARGE_TYPE_EXTENSION if system == MA_LOAI_RV_SYSTEM else REFERRAL_REASON_EXTENSION
    return {"url": url, "valueCoding": {"system": system, "code": code}}


def test_the_xml13_import_codes_the_patients_request_as_the_rules_read_it() -> None:
    for url, system, code in (
        (xml130.EXT_REFERRAL_REASON, xml130.CS_REFERRAL_REASON, "3"),
        (xml130.EXT_DISCHARGE_TYPE, xml130.CS_DISCHARGE_TYPE, "5"),
    ):
        letter = {"extension": [{"url": url, "valueCoding": {"system": system, "code": code}}]}
        assert skip_reason_from_service_request(letter) is SkipReason.PATIENT_REQUEST


@pytest.mark.parametrize(
    ("service_request", "reason"),
    [
        ({}, None),
        ({"priority": "routine"}, None),
        ({"priority": "urgent"}, None),
        ({"priority": "asap"}, None),
        ({"priority": "stat"}, SkipReason.EMERGENCY),
        ({"extension": [reason_extension(MA_LYDO_CT_SYSTEM, "3")]}, SkipReason.PATIENT_REQUEST),
        ({"extension": [reason_extension(MA_LOAI_RV_SYSTEM, "5")]}, SkipReason.PATIENT_REQUEST),
        ({"extension": [reason_extension(MA_LYDO_CT_SYSTEM, "1")]}, None),
        ({"extension": [reason_extension(MA_LYDO_CT_SYSTEM, "2")]}, None),
        ({"extension": [reason_extension(MA_LOAI_RV_SYSTEM, "2")]}, None),
        ({"extension": [reason_extension(MA_LOAI_RV_SYSTEM, "3")]}, None),  # code 3 of RV
        (
            {
                "extension": [
                    reason_extension(MA_LYDO_CT_SYSTEM, "1"),
                    reason_extension(MA_LOAI_RV_SYSTEM, "5"),
                ]
            },
            SkipReason.PATIENT_REQUEST,
        ),
        (
            {
                "extension": [
                    {
                        "url": REFERRAL_REASON_EXTENSION,
                        "valueCodeableConcept": {
                            "coding": [{"system": MA_LYDO_CT_SYSTEM, "code": "3"}]
                        },
                    }
                ]
            },
            SkipReason.PATIENT_REQUEST,
        ),
        (
            {"priority": "stat", "extension": [reason_extension(MA_LYDO_CT_SYSTEM, "3")]},
            SkipReason.PATIENT_REQUEST,
        ),
        (
            {
                "extension": [
                    {
                        "url": "http://example.org/other",
                        "valueCoding": {"system": MA_LYDO_CT_SYSTEM, "code": "3"},
                    }
                ]
            },
            None,
        ),
    ],
)
def test_skip_reason_from_service_request(
    service_request: dict[str, Any], reason: SkipReason | None
) -> None:
    assert skip_reason_from_service_request(service_request) == reason


def test_diagnoses_from_service_request() -> None:
    sr = {
        "reasonCode": [
            {
                "coding": [
                    {"system": ICD10, "code": " C71.9 "},
                    {"system": "http://snomed.info/sct"},
                ]
            },
            {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/icd10", "code": "I10"}]},
            {"coding": [{"system": ICD10, "code": "C71.9"}]},
            {"coding": [{"system": "http://example.org/local", "code": "E11"}]},
            {"text": "no coding"},
        ]
    }
    assert diagnoses_from_service_request(sr) == ["C71.9", "I10"]
    assert diagnoses_from_service_request({}) == []


def test_service_request_to_direction_check() -> None:
    sender, receiver = facilities(Level.BAN_DAU, Level.CHUYEN_SAU, False)
    letters = {
        "emergency": {"priority": "stat"},
        "request": {"extension": [reason_extension(MA_LYDO_CT_SYSTEM, "3")]},
        "disease": {"reasonCode": [{"coding": [{"system": ICD10, "code": "G35"}]}]},
    }
    for sr in letters.values():
        check_direction(
            sender,
            receiver,
            skip_reason_from_service_request(sr),
            diagnoses_from_service_request(sr),
        )
    plain: dict[str, Any] = {"priority": "urgent"}
    with pytest.raises(FhirError):
        check_direction(
            sender,
            receiver,
            skip_reason_from_service_request(plain),
            diagnoses_from_service_request(plain),
        )


def test_level_codes() -> None:
    assert Level.BAN_DAU < Level.CO_BAN < Level.CHUYEN_SAU
    assert Level.from_code("CO_BAN") is Level.CO_BAN
    with pytest.raises(ValueError, match="Unknown level"):
        Level.from_code("TINH")
    organization = {
        "type": [
            {"coding": [{"system": "http://example.org/tuyen", "code": "TINH"}]},
            {"coding": [{"system": rules.LEVEL_SYSTEM, "code": "CHUYEN_SAU"}]},
        ]
    }
    assert rules.level_of_organization(organization) is Level.CHUYEN_SAU
    assert rules.level_of_organization({}) is None


# ------------------------------------------------------------------------------ data files


def test_packaged_data_files_say_where_they_come_from() -> None:
    folder = Path(rules.__file__).parent / "data"
    holidays = json.loads((folder / "holidays.json").read_text("utf-8"))
    lists = json.loads((folder / "referral_lists.json").read_text("utf-8"))
    assert holidays["configurable"] is True and lists["configurable"] is True
    assert lists["source"] and "DEMO" in lists["status"]
    for key in ("direct_to_specialised", "one_year_validity"):
        assert lists[key]["source"] and lists[key]["complete"] is False
    assert set(holidays["years"]) == {"2024", "2025", "2026", "2027"}
    for year in holidays["years"].values():
        assert year["source"] and year["status"]
    assert "provisional" in holidays["years"]["2027"]["status"]
    assert holidays["years"]["2027"]["notes"]


@pytest.mark.parametrize("year", [2024, 2025, 2026, 2027])
def test_every_year_has_the_fixed_date_holidays(year: int) -> None:
    for month, day in [(1, 1), (4, 30), (5, 1), (9, 2)]:
        assert date(year, month, day) in CALENDAR.holidays


@pytest.mark.parametrize(
    ("day", "working"),
    [
        (date(2025, 1, 24), True),  # Friday before Tết Ất Tỵ
        *((date(2025, 1, d), False) for d in range(25, 32)),  # 25/1-31/1: Tết
        (date(2025, 2, 1), False),
        (date(2025, 2, 2), False),
        (date(2025, 2, 3), True),
        (date(2025, 4, 7), False),  # Giỗ Tổ Hùng Vương, 10/3 lunar
        (date(2025, 4, 26), False),  # make-up Saturday: not counted by default
        (date(2025, 4, 29), True),
        (date(2025, 4, 30), False),
        (date(2025, 5, 1), False),
        (date(2025, 5, 2), False),  # swapped
        (date(2025, 5, 5), True),
        (date(2025, 9, 1), False),
        (date(2025, 9, 2), False),
        (date(2026, 1, 2), False),  # swapped Friday after New Year
        (date(2026, 2, 16), False),  # Tết Bính Ngọ
        (date(2026, 2, 23), True),
        (date(2026, 4, 27), False),  # compensatory Monday, Giỗ Tổ on a Sunday
        (date(2027, 5, 3), False),  # compensatory Monday, 1/5 on a Saturday
        (date(2028, 5, 1), False),  # uncovered year: fixed-date holidays only
        (date(2028, 5, 2), True),
    ],
)
def test_calendar_days(day: date, working: bool) -> None:
    assert CALENDAR.is_working_day(day) is working


def test_makeup_saturday_counts_only_when_asked() -> None:
    counting = rules.load_calendar(count_makeup_workdays=True)
    assert counting.is_working_day(date(2025, 4, 26))
    assert counting.is_working_day(date(2026, 1, 10))
    assert not counting.is_working_day(date(2025, 4, 19))  # an ordinary Saturday


def test_saturday_can_be_a_working_day() -> None:
    saturdays = rules.load_calendar(saturday_is_working=True)
    assert saturdays.is_working_day(date(2025, 1, 4))
    assert not saturdays.is_working_day(date(2025, 1, 5))
    assert not saturdays.is_working_day(date(2027, 5, 1))  # a holiday on a Saturday


def test_override_files(tmp_path: Path) -> None:
    holidays = tmp_path / "holidays.json"
    holidays.write_text(
        json.dumps({"years": {"2030": {"days_off": [{"date": "2030-03-08", "name": "x"}]}}}),
        "utf-8",
    )
    lists = tmp_path / "lists.json"
    lists.write_text(
        json.dumps(
            {
                "direct_to_specialised": {"entries": [{"codes": ["J18"]}]},
                "one_year_validity": {"entries": [{"codes": ["K00-K14"]}]},
            }
        ),
        "utf-8",
    )
    try:
        calendar = rules.load_calendar(holidays)
        assert not calendar.is_working_day(date(2030, 3, 8))
        assert calendar.is_working_day(date(2030, 1, 1))  # 2030 is covered, and lists no 1/1
        assert not calendar.is_working_day(date(2031, 1, 1))  # uncovered: fixed-date fallback
        assert rules.load_calendar(holidays) is calendar  # cached
        assert rules.direct_to_specialised_list(lists).match(["J18.9"]) == "J18.9"
        assert rules.direct_to_specialised_list(lists).match([ON_ANNEX_I]) is None
        assert rules.one_year_list(lists).match(["K12.1"]) == "K12.1"
        assert rules.one_year_list(lists).match(["K15"]) is None
    finally:
        rules.clear_caches()
    assert rules.load_calendar() is not CALENDAR  # reloaded after clear_caches
    assert rules.load_calendar().holidays == CALENDAR.holidays


@pytest.mark.parametrize(
    "content",
    [
        {"direct_to_specialised": {"entries": [{"codes": ["C00-D48x"]}]}},
        {"direct_to_specialised": {"entries": [{"codes": ["banana"]}]}},
        {"direct_to_specialised": {"entries": [{"codes": []}]}},
        {"direct_to_specialised": {"entries": [{"codes": ["C97-C00"]}]}},
        {"direct_to_specialised": {"entries": [{"codes": ["C00"], "under_age": -1}]}},
        {"direct_to_specialised": {"entries": []}},  # one_year_validity missing
    ],
)
def test_malformed_lists_are_refused(tmp_path: Path, content: dict[str, Any]) -> None:
    path = tmp_path / "lists.json"
    path.write_text(json.dumps(content), "utf-8")
    with pytest.raises(ValueError):
        rules.load_disease_lists(path)


def test_malformed_holidays_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "holidays.json"
    path.write_text(json.dumps({"years": {"2030": {"days_off": [{"date": "2031-01-01"}]}}}))
    with pytest.raises(ValueError, match="2031"):
        rules.load_calendar(path)
    with pytest.raises(ValueError):
        WorkingCalendar(weekend=frozenset(range(7)))


# ------------------------------------------------------------------------------ working days


@pytest.mark.parametrize(
    ("start", "days", "expected"),
    [
        (date(2025, 1, 20), 10, date(2025, 2, 10)),  # across Tết Ất Tỵ (25/1-2/2/2025)
        (date(2025, 1, 24), 1, date(2025, 2, 3)),
        (date(2025, 1, 27), 1, date(2025, 2, 3)),  # start inside the holiday
        (date(2025, 4, 24), 10, date(2025, 5, 13)),  # Sat 26/4 make-up not counted; 30/4-4/5
        (date(2025, 4, 29), 1, date(2025, 5, 5)),
        (date(2025, 4, 3), 3, date(2025, 4, 9)),  # Giỗ Tổ 7/4/2025
        (date(2025, 12, 24), 10, date(2026, 1, 9)),  # year boundary, 1-2/1/2026 off
        (date(2025, 12, 31), 1, date(2026, 1, 5)),
        (date(2024, 12, 31), 1, date(2025, 1, 2)),
        (date(2025, 1, 3), 10, date(2025, 1, 17)),  # ordinary fortnight
        (date(2025, 1, 4), 1, date(2025, 1, 6)),  # start on a Saturday
        (date(2025, 1, 3), 0, date(2025, 1, 3)),
        (date(2025, 1, 4), 0, date(2025, 1, 4)),  # 0 days: the start, even a Saturday
        (date(2028, 4, 28), 1, date(2028, 5, 2)),  # uncovered year, 1/5/2028 a Monday
    ],
)
def test_add_working_days(start: date, days: int, expected: date) -> None:
    assert add_working_days(start, days) == expected


def test_add_working_days_with_other_calendars() -> None:
    counting = rules.load_calendar(count_makeup_workdays=True)
    assert add_working_days(date(2025, 4, 24), 10, counting) == date(2025, 5, 12)
    saturdays = rules.load_calendar(saturday_is_working=True)
    assert add_working_days(date(2025, 1, 3), 1, saturdays) == date(2025, 1, 4)
    assert add_working_days(date(2025, 1, 20), 10, saturdays) == date(2025, 2, 6)
    with pytest.raises(ValueError):
        add_working_days(date(2025, 1, 3), -1)


@settings(max_examples=300, deadline=None)
@given(
    st.dates(min_value=date(2023, 12, 1), max_value=date(2028, 6, 30)),
    st.integers(min_value=1, max_value=40),
)
def test_add_working_days_lands_on_a_working_day_and_grows(start: date, days: int) -> None:
    result = add_working_days(start, days)
    assert result.weekday() < 5
    assert result not in CALENDAR.holidays
    assert CALENDAR.is_working_day(result)
    assert start < result < add_working_days(start, days + 1)
    counted = sum(
        CALENDAR.is_working_day(start + timedelta(days=offset))
        for offset in range(1, (result - start).days + 1)
    )
    assert counted == days


# ------------------------------------------------------------------------------ validity


@pytest.mark.parametrize(
    ("signed", "end"),
    [
        (vn(2025, 1, 20, 9, 30), vn(2025, 2, 10, 23, 59, 59)),
        (vn(2025, 1, 20, 23, 59), vn(2025, 2, 10, 23, 59, 59)),  # signing day never counts
        (datetime(2025, 1, 20, 20, 0, tzinfo=UTC), vn(2025, 2, 11, 23, 59, 59)),  # 21/1 in VN
        (datetime(2025, 1, 20, 9, 30), vn(2025, 2, 10, 23, 59, 59)),  # naive: Vietnam time
        (vn(2025, 4, 24, 8, 0), vn(2025, 5, 13, 23, 59, 59)),
        (vn(2025, 12, 24, 8, 0), vn(2026, 1, 9, 23, 59, 59)),
    ],
)
def test_validity_ten_working_days(signed: datetime, end: datetime) -> None:
    start, last = validity(signed, [NOT_ON_ANNEX_I])
    assert start == signed.astimezone(VN) if signed.tzinfo else start == signed.replace(tzinfo=VN)
    assert last == end
    assert last.utcoffset() == timedelta(hours=7)


@pytest.mark.parametrize(
    ("signed", "diagnoses", "end"),
    [
        (vn(2025, 3, 10, 9, 0), ["E11.9"], vn(2026, 3, 10, 23, 59, 59)),  # diabetes
        (vn(2025, 3, 10, 9, 0), ["J18.9", "I10"], vn(2026, 3, 10, 23, 59, 59)),  # any diagnosis
        (vn(2025, 6, 2, 9, 0), ["N18.4"], vn(2026, 6, 2, 23, 59, 59)),
        (vn(2025, 4, 27, 9, 0), ["C50.9"], vn(2026, 4, 28, 23, 59, 59)),  # 27/4/2026 holiday
        (vn(2025, 2, 1, 9, 0), ["J44.1"], vn(2026, 2, 2, 23, 59, 59)),  # 1/2/2026 a Sunday
        (vn(2024, 2, 29, 9, 0), ["B20"], vn(2025, 2, 28, 23, 59, 59)),  # leap day
        (vn(2025, 3, 10, 9, 0), ["J18.9"], vn(2025, 3, 24, 23, 59, 59)),  # not chronic
    ],
)
def test_validity_one_year_for_chronic_diseases(
    signed: datetime, diagnoses: list[str], end: datetime
) -> None:
    assert validity(signed, diagnoses) == (signed, end)


SIGNED = vn(2025, 1, 20, 9, 30)


def test_check_validity_computes_an_absent_period() -> None:
    computed = {"start": "2025-01-20T09:30:00+07:00", "end": "2025-02-10T23:59:59+07:00"}
    assert check_validity(None, SIGNED, [NOT_ON_ANNEX_I]) == computed
    assert check_validity({}, SIGNED, [NOT_ON_ANNEX_I]) == computed
    assert check_validity({"start": "2025-01-21"}, SIGNED, []) == {
        "start": "2025-01-21",
        "end": "2025-02-10T23:59:59+07:00",
    }
    assert check_validity({"end": "2025-02-01"}, SIGNED, []) == {
        "start": "2025-01-20T09:30:00+07:00",
        "end": "2025-02-01",
    }


@pytest.mark.parametrize(
    "period",
    [
        {"start": "2025-01-20T09:30:00+07:00", "end": "2025-02-10T23:59:59+07:00"},
        {"start": "2025-01-20", "end": "2025-02-10"},  # dates cover their whole day
        {"start": "2025-01-20T02:30:00Z", "end": "2025-02-10T16:59:59Z"},
        {"start": "2025-01-20T09:30:00.400+07:00", "end": "2025-01-25"},
        {"start": "2025-01-20T09:30+07:00", "end": "2025-02-10T12:00:00+07:00"},
        {"start": "2025-01-22", "end": "2025-01-22"},
        {"start": "2025-01-22", "end": "2025-01-29", "id": "p1"},  # other keys kept
    ],
)
def test_check_validity_keeps_a_valid_period_as_written(period: dict[str, str]) -> None:
    assert check_validity(period, SIGNED, [NOT_ON_ANNEX_I]) == period


@pytest.mark.parametrize(
    ("period", "message"),
    [
        ({"start": "2025-01-19", "end": "2025-02-01"}, "before the letter was signed"),
        ({"start": "2025-01-20T09:29:59+07:00"}, "before the letter was signed"),
        ({"start": "2025-01-20T02:29:00Z"}, "before the letter was signed"),
        ({"end": "2025-02-11"}, "10 working days"),
        ({"end": "2025-02-11T00:00:00+07:00"}, "after the letter expires"),
        ({"start": "2025-01-20", "end": "2026-01-20"}, "after the letter expires"),
        ({"start": "2025-01-25", "end": "2025-01-24"}, "ends before it starts"),
        ({"start": "20/01/2025"}, "not a FHIR dateTime"),
        ({"end": 20250210}, "not a FHIR dateTime"),
    ],
)
def test_check_validity_refusals(period: dict[str, Any], message: str) -> None:
    error = error_of(check_validity, period, SIGNED, [NOT_ON_ANNEX_I])
    assert error.status == 422
    assert all(issue.expression == ("ServiceRequest.occurrencePeriod",) for issue in error.issues)
    assert message in str(error)


def test_check_validity_one_year_for_chronic_codes() -> None:
    period = {"start": "2025-01-20", "end": "2026-01-20"}
    assert check_validity(period, SIGNED, ["E11.9"]) == period
    error = error_of(check_validity, {"end": "2026-01-21"}, SIGNED, ["E11.9"])
    assert "1 year" in str(error)


def test_check_validity_reports_every_problem() -> None:
    error = error_of(check_validity, {"start": "2025-01-01", "end": "2025-03-01"}, SIGNED, [])
    assert len(error.issues) == 2


# ------------------------------------------------------------------------------ is_valid_on

PERIOD = {"start": "2025-01-20T09:30:00+07:00", "end": "2025-02-10T23:59:59+07:00"}


@pytest.mark.parametrize(
    ("moment", "valid"),
    [
        (vn(2025, 1, 20, 9, 29), False),
        (vn(2025, 1, 20, 9, 30), True),
        (vn(2025, 2, 1, 12, 0), True),
        (vn(2025, 2, 10, 23, 59, 59, 900_000), True),  # the last second is whole
        (vn(2025, 2, 11, 0, 0), False),
        (datetime(2025, 2, 10, 16, 59, tzinfo=UTC), True),
        (datetime(2025, 2, 10, 23, 0), True),  # naive: Vietnam time
    ],
)
def test_is_valid_on_within_the_period(moment: datetime, valid: bool) -> None:
    assert is_valid_on(PERIOD, moment) is valid


@pytest.mark.parametrize(
    ("moment", "episode_start", "episode_end", "valid"),
    [
        # admitted 5/2, discharged 20/2: the letter expired on 10/2 during the stay
        (vn(2025, 2, 15), vn(2025, 2, 5), vn(2025, 2, 20, 10), True),
        (vn(2025, 2, 20, 10), vn(2025, 2, 5), vn(2025, 2, 20, 10), True),
        (vn(2025, 2, 20, 10, 1), vn(2025, 2, 5), vn(2025, 2, 20, 10), False),
        (vn(2025, 2, 15), None, vn(2025, 2, 20, 10), True),  # start unknown
        (vn(2025, 2, 15), vn(2025, 2, 5), None, False),  # no episode
        # the episode ended before the letter expired: nothing to extend
        (vn(2025, 2, 15), vn(2025, 2, 1), vn(2025, 2, 8), False),
        # the episode began after the letter expired
        (vn(2025, 2, 15), vn(2025, 2, 11), vn(2025, 2, 20), False),
        # the episode began before the letter was signed
        (vn(2025, 2, 15), vn(2025, 1, 10), vn(2025, 2, 20), False),
        # within the period the episode does not matter
        (vn(2025, 2, 1), vn(2025, 2, 11), vn(2025, 2, 20), True),
    ],
)
def test_is_valid_on_to_the_end_of_a_treatment_episode(
    moment: datetime, episode_start: datetime | None, episode_end: datetime | None, valid: bool
) -> None:
    assert is_valid_on(PERIOD, moment, episode_end, episode_start=episode_start) is valid


def test_is_valid_on_open_and_unreadable_periods() -> None:
    assert is_valid_on({"start": "2025-01-20"}, vn(2030, 1, 1))
    assert is_valid_on({"end": "2025-01-20"}, vn(2000, 1, 1))
    with pytest.raises(ValueError):
        is_valid_on({"end": "soon"}, vn(2025, 1, 1))


def test_validity_and_is_valid_on_agree() -> None:
    period = check_validity(None, SIGNED, [NOT_ON_ANNEX_I])
    _, end = validity(SIGNED, [NOT_ON_ANNEX_I])
    assert is_valid_on(period, end)
    assert not is_valid_on(period, end + timedelta(seconds=1))
