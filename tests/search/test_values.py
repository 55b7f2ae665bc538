"""Index rows and query values of ``emr_hub.fhir.search.values``: table tests per datatype and
prefix, and properties of the date and number ranges (http://hl7.org/fhir/R4/search.html)."""

from __future__ import annotations

import calendar
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from emr_hub.fhir.search.values import (
    CURRENCY_SYSTEM,
    DATE_MAX,
    DATE_MIN,
    LOCAL_ZONE,
    NUMBER_MAX,
    NUMBER_MIN,
    PREFIXES,
    TEXT_ONLY,
    DateRange,
    QuantityRow,
    ReferenceRow,
    StringRow,
    TokenQuery,
    TokenRow,
    approximate_range,
    date_matches,
    date_ranges,
    implicit_range,
    normalize,
    number_matches,
    number_rows,
    parse_date_query,
    parse_number_query,
    parse_quantity_query,
    parse_reference_query,
    parse_string_query,
    parse_token_query,
    quantity_matches,
    quantity_rows,
    reference_rows,
    rows_for,
    string_matches,
    string_rows,
    token_matches,
    token_rows,
    token_text_rows,
    unescape,
    uri_rows,
)

LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
CCCD = "http://fhir.hl7.org.vn/core/sid/cccd"
BASE = "https://hub.example.vn/fhir"


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


def span(text: str) -> DateRange:
    """The range of a query value without prefix."""
    return parse_date_query(text)[1]


def value(text: str, kind: str = "dateTime") -> DateRange:
    (found,) = date_ranges((kind, text))
    return found


# ------------------------------------------------------------------------------ tokens


@pytest.mark.parametrize(
    ("element", "rows"),
    [
        (
            ("Coding", {"system": LOINC, "code": "8867-4", "display": "Heart rate"}),
            [TokenRow(LOINC, "8867-4", "Heart rate")],
        ),
        (("Coding", {"code": "abc"}), [TokenRow(None, "abc")]),
        (("Coding", {"system": LOINC}), []),  # no code, no display: nothing to find
        (("Coding", {"display": "Only text"}), [TokenRow(None, TEXT_ONLY, "Only text")]),
        (
            (
                "CodeableConcept",
                {
                    "coding": [
                        {
                            "system": "http://snomed.info/sct",
                            "code": "38362002",
                            "display": "Dengue",
                        },
                        {"system": "http://hl7.org/fhir/sid/icd-10", "code": "A90"},
                    ],
                    "text": "Sốt xuất huyết",
                },
            ),
            [
                TokenRow("http://snomed.info/sct", "38362002", "Dengue"),
                TokenRow("http://hl7.org/fhir/sid/icd-10", "A90", None),
                TokenRow(None, TEXT_ONLY, "Sốt xuất huyết"),
            ],
        ),
        # the text says what a display already says: no second :text row
        (
            ("CodeableConcept", {"coding": [{"code": "x", "display": "Sốt"}], "text": "SOT"}),
            [TokenRow(None, "x", "Sốt")],
        ),
        (("CodeableConcept", {"text": "Đau đầu"}), [TokenRow(None, TEXT_ONLY, "Đau đầu")]),
        (("CodeableConcept", {}), []),
        (
            (
                "Identifier",
                {"system": CCCD, "value": "079190012345", "type": {"text": "Căn cước"}},
            ),
            [TokenRow(CCCD, "079190012345", "Căn cước")],
        ),
        (("Identifier", {"system": CCCD}), []),
        (("Identifier", {"value": "A-1"}), [TokenRow(None, "A-1")]),
        # ContactPoint: the value, no system ("the URI portion is not used")
        (
            ("ContactPoint", {"system": "phone", "value": "0912 345 678"}),
            [TokenRow(None, "0912 345 678")],
        ),
        (("ContactPoint", {"system": "email", "use": "work"}), []),
        (("code", "final"), [TokenRow(None, "final")]),
        (("code", "Final"), [TokenRow(None, "Final")]),  # case kept: tokens are case-sensitive
        (("id", "abc-1"), [TokenRow(None, "abc-1")]),
        (("uri", "urn:oid:1.2.3"), [TokenRow(None, "urn:oid:1.2.3")]),
        (("string", "male"), [TokenRow(None, "male")]),
        (("boolean", True), [TokenRow(None, "true")]),
        (("boolean", False), [TokenRow(None, "false")]),
        (("positiveInt", 2), [TokenRow(None, "2")]),
        (("code", ""), []),
        (("code", "   "), []),
        (("code", None), []),
        (("Quantity", {"value": 1}), []),
    ],
)
def test_token_rows(element, rows):
    assert token_rows(element) == rows


def test_token_rows_drop_duplicates():
    coding = {"system": LOINC, "code": "1"}
    assert token_rows(("CodeableConcept", {"coding": [coding, coding]})) == [TokenRow(LOINC, "1")]


def test_token_text_rows_are_string_rows_of_the_displays():
    rows = token_rows(
        ("CodeableConcept", {"coding": [{"code": "x", "display": "Dengue"}], "text": "Sốt Dengue"})
    )
    assert token_text_rows(rows) == [
        StringRow("dengue", "Dengue"),
        StringRow("sot dengue", "Sốt Dengue"),
    ]


@pytest.mark.parametrize(
    ("text", "query"),
    [
        ("male", TokenQuery(None, "male", system_given=False)),
        (f"{LOINC}|8867-4", TokenQuery(LOINC, "8867-4", system_given=True)),
        ("|8867-4", TokenQuery(None, "8867-4", system_given=True)),
        (f"{LOINC}|", TokenQuery(LOINC, None, system_given=True)),
        (r"a\|b", TokenQuery(None, "a|b", system_given=False)),
        (r"http://x\|y|c\,d", TokenQuery("http://x|y", "c,d", system_given=True)),
        (r"sys|a\\", TokenQuery("sys", "a\\", system_given=True)),
    ],
)
def test_parse_token_query(text, query):
    assert parse_token_query(text) == query


@pytest.mark.parametrize("text", ["", "|"])
def test_parse_token_query_refuses(text):
    with pytest.raises(ValueError):
        parse_token_query(text)


@pytest.mark.parametrize(
    ("query", "row", "expected"),
    [
        ("8867-4", TokenRow(LOINC, "8867-4"), True),
        ("8867-4", TokenRow(None, "8867-4"), True),
        (f"{LOINC}|8867-4", TokenRow(LOINC, "8867-4"), True),
        (f"{LOINC}|8867-4", TokenRow("http://other", "8867-4"), False),
        (f"{LOINC}|8867-4", TokenRow(None, "8867-4"), False),
        ("|8867-4", TokenRow(None, "8867-4"), True),
        ("|8867-4", TokenRow(LOINC, "8867-4"), False),
        (f"{LOINC}|", TokenRow(LOINC, "anything"), True),
        (f"{LOINC}|", TokenRow(None, "anything"), False),
        ("final", TokenRow(None, "Final"), False),  # case-sensitive
    ],
)
def test_token_matches(query, row, expected):
    assert token_matches(parse_token_query(query), row) is expected


def test_text_only_rows_match_no_code():
    row = TokenRow(None, TEXT_ONLY, "Sốt")
    assert not token_matches(TokenQuery(None, None, system_given=True), row)
    assert not token_matches(parse_token_query("|x"), row)


# ----------------------------------------------------------------------------- strings


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Nguyễn Thị Đào", "nguyen thi dao"),
        ("TRẦN THỊ ĐÀO", "tran thi dao"),
        ("Đặng  Văn\tLâm ", "dang van lam"),
        ("Phường Bến Nghé, Quận 1", "phuong ben nghe, quan 1"),
        ("Ngô Thừa Ân", "ngo thua an"),
        # decomposed input (combining tone marks, as some keyboards type) folds the same
        ("Nguye\u0302\u0303n", "nguyen"),
        ("  Eve  ", "eve"),
        ("José Müller", "jose muller"),
        ("", ""),
    ],
)
def test_normalize(text, expected):
    assert normalize(text) == expected


def test_normalize_is_what_the_brief_asked_for():
    assert normalize("Nguyễn Thị Đào") == "nguyen thi dao"


NAME = {
    "use": "official",
    "family": "Nguyễn",
    "given": ["Thị", "Đào"],
    "prefix": ["Bà"],
    "text": "Nguyễn Thị Đào",
    "period": {"start": "2000"},
}


def test_human_name_parts_are_separate_values():
    assert string_rows(("HumanName", NAME)) == [
        StringRow("nguyen", "Nguyễn"),
        StringRow("thi", "Thị"),
        StringRow("dao", "Đào"),
        StringRow("ba", "Bà"),
        StringRow("nguyen thi dao", "Nguyễn Thị Đào"),
    ]


def test_address_parts():
    address = {
        "use": "home",
        "line": ["12/3 Lê Lợi", "Tầng 2"],
        "city": "Thành phố Hồ Chí Minh",
        "district": "Quận 1",
        "state": "",
        "postalCode": "700000",
        "country": "VN",
    }
    assert [r.normalized for r in string_rows(("Address", address))] == [
        "12/3 le loi",
        "tang 2",
        "thanh pho ho chi minh",
        "quan 1",
        "700000",
        "vn",
    ]


def test_word_starts_add_later_words():
    rows = string_rows(("HumanName", {"given": ["Thị Đào"]}), word_starts=True)
    assert rows == [StringRow("thi dao", "Thị Đào"), StringRow("dao", "Thị Đào")]
    assert string_rows(("string", "Bệnh viện Bạch Mai"), word_starts=True)[-1] == StringRow(
        "mai", "Bệnh viện Bạch Mai"
    )


@pytest.mark.parametrize(
    ("element", "rows"),
    [
        (("string", "Bệnh viện Chợ Rẫy"), [StringRow("benh vien cho ray", "Bệnh viện Chợ Rẫy")]),
        (("markdown", "**Đ**"), [StringRow("**d**", "**Đ**")]),
        (("string", ""), []),
        (("string", None), []),
        (("HumanName", "not a name"), []),
        (("Period", {"start": "2020"}), []),
    ],
)
def test_string_rows(element, rows):
    assert string_rows(element) == rows


@pytest.mark.parametrize(
    ("modifier", "query", "stored", "expected"),
    [
        (None, "Thi", "Thị", True),  # a given part on its own
        (None, "nguyen thi", "Nguyễn Thị Đào", True),  # starts with
        (None, "NGUYỄN", "Nguyễn", True),
        (None, "Dao", "Nguyễn Thị Đào", False),  # not a start of the whole value
        (None, "eve", "Evelyn", True),
        (None, "eve", "Severine", False),
        ("contains", "eve", "Severine", True),
        ("contains", "dao", "Nguyễn Thị Đào", True),
        ("exact", "Eve", "Eve", True),
        ("exact", "Eve", "eve", False),
        ("exact", "Đào", "Đào", True),
        ("exact", "Dao", "Đào", False),
    ],
)
def test_string_matches(modifier, query, stored, expected):
    row = StringRow(normalize(stored), stored)
    parsed = parse_string_query(query, exact=modifier == "exact")
    assert string_matches(modifier, parsed, row) is expected


def test_parse_string_query():
    assert parse_string_query(r"a\,b") == StringRow("a,b", "a,b")
    with pytest.raises(ValueError):
        parse_string_query("")
    with pytest.raises(ValueError):
        parse_string_query("   ")
    assert parse_string_query("   ", exact=True) == StringRow("", "   ")


def test_unescape():
    assert unescape(r"a\,b\$c\|d\\e") == "a,b$c|d\\e"
    assert unescape("plain") == "plain"


# -------------------------------------------------------------------------- references


@pytest.mark.parametrize(
    ("element", "base", "rows"),
    [
        (("Reference", {"reference": "Patient/1"}), None, [ReferenceRow("Patient", "1")]),
        (
            ("Reference", {"reference": "Observation/a.b-1/_history/7"}),
            None,
            [ReferenceRow("Observation", "a.b-1", version="7")],
        ),
        (("Reference", {"reference": f"{BASE}/Patient/1"}), BASE, [ReferenceRow("Patient", "1")]),
        (
            ("Reference", {"reference": f"{BASE}/Patient/1/_history/2"}),
            BASE + "/",
            [ReferenceRow("Patient", "1", version="2")],
        ),
        # without a base, or on another server: an absolute URL, kept whole
        (
            ("Reference", {"reference": f"{BASE}/Patient/1"}),
            None,
            [ReferenceRow(url=f"{BASE}/Patient/1")],
        ),
        (
            ("Reference", {"reference": "http://other.vn/fhir/Patient/9/_history/3"}),
            BASE,
            [ReferenceRow(url="http://other.vn/fhir/Patient/9", version="3")],
        ),
        (
            ("Reference", {"reference": "urn:uuid:2b8c1b2e-3f51-4f0e-9c3c-6f0b3f1e2d4a"}),
            BASE,
            [ReferenceRow(url="urn:uuid:2b8c1b2e-3f51-4f0e-9c3c-6f0b3f1e2d4a")],
        ),
        (("Reference", {"reference": "#med1"}), None, []),  # contained: skipped
        (("Reference", {"display": "Bác sĩ An"}), None, []),
        (
            ("Reference", {"identifier": {"system": CCCD, "value": "0791"}, "type": "Patient"}),
            None,
            [ReferenceRow("Patient", identifier_system=CCCD, identifier_value="0791")],
        ),
        (
            ("Reference", {"reference": "Patient/1", "identifier": {"value": "0791"}}),
            None,
            [ReferenceRow("Patient", "1", identifier_value="0791")],
        ),
        (
            ("Reference", {"reference": "#c", "identifier": {"system": CCCD, "value": "1"}}),
            None,
            [ReferenceRow(identifier_system=CCCD, identifier_value="1")],
        ),
        (
            ("canonical", "http://hl7.org/fhir/ValueSet/example|3.0"),
            BASE,
            [ReferenceRow(url="http://hl7.org/fhir/ValueSet/example", version="3.0")],
        ),
        (
            ("canonical", "http://hl7.org/fhir/StructureDefinition/vitalsigns"),
            None,
            [ReferenceRow(url="http://hl7.org/fhir/StructureDefinition/vitalsigns")],
        ),
        (("uri", "urn:oid:1.2.3"), None, [ReferenceRow(url="urn:oid:1.2.3")]),
        (("canonical", ""), None, []),
        (("string", "Patient/1"), None, []),
    ],
)
def test_reference_rows(element, base, rows):
    assert reference_rows(element, base) == rows


@pytest.mark.parametrize(
    ("text", "row"),
    [
        ("123", ReferenceRow(target_id="123")),
        ("Patient/123", ReferenceRow("Patient", "123")),
        ("Patient/123/_history/4", ReferenceRow("Patient", "123", version="4")),
        (f"{BASE}/Patient/123", ReferenceRow("Patient", "123")),
        ("http://other.vn/fhir/Patient/1", ReferenceRow(url="http://other.vn/fhir/Patient/1")),
        (
            "http://acme.com/some-profile|1.0",
            ReferenceRow(url="http://acme.com/some-profile", version="1.0"),
        ),
        (r"http://acme.com/p\|2", ReferenceRow(url="http://acme.com/p", version="2")),
    ],
)
def test_parse_reference_query(text, row):
    assert parse_reference_query(text, BASE) == row


@pytest.mark.parametrize("text", ["", "Patient/", "patient/1", "Patient/1/2", "a b"])
def test_parse_reference_query_refuses(text):
    with pytest.raises(ValueError):
        parse_reference_query(text, BASE)


# --------------------------------------------------------------------------------- uris


@pytest.mark.parametrize(
    ("element", "rows"),
    [
        (("uri", "http://acme.org/fhir/ValueSet/123"), ["http://acme.org/fhir/ValueSet/123"]),
        (("url", "HTTP://Acme.org/X"), ["HTTP://Acme.org/X"]),  # as written
        (("canonical", "http://x/y|1"), ["http://x/y|1"]),
        (("uri", ""), []),
        (("Coding", {"code": "x"}), []),
    ],
)
def test_uri_rows(element, rows):
    assert uri_rows(element) == rows


# -------------------------------------------------------------------------------- dates


def test_local_zone_is_vietnam():
    assert LOCAL_ZONE.utcoffset(None) == timedelta(hours=7)


@pytest.mark.parametrize(
    ("kind", "text", "low", "high"),
    [
        # dates without a zone are local (+07:00)
        ("date", "2020", utc(2019, 12, 31, 17), utc(2020, 12, 31, 17)),
        ("date", "2020-03", utc(2020, 2, 29, 17), utc(2020, 3, 31, 17)),
        ("date", "2020-02", utc(2020, 1, 31, 17), utc(2020, 2, 29, 17)),  # leap year
        ("date", "2021-02", utc(2021, 1, 31, 17), utc(2021, 2, 28, 17)),
        ("date", "2020-03-04", utc(2020, 3, 3, 17), utc(2020, 3, 4, 17)),
        ("dateTime", "2020-03-04", utc(2020, 3, 3, 17), utc(2020, 3, 4, 17)),
        # a time with an offset: that second
        ("dateTime", "2020-03-04T10:00:00+07:00", utc(2020, 3, 4, 3), utc(2020, 3, 4, 3, 0, 1)),
        ("dateTime", "2020-03-04T03:00:00Z", utc(2020, 3, 4, 3), utc(2020, 3, 4, 3, 0, 1)),
        (
            "dateTime",
            "2020-03-03T22:30:00-05:00",  # the next day in UTC
            utc(2020, 3, 4, 3, 30),
            utc(2020, 3, 4, 3, 30, 1),
        ),
        ("dateTime", "2020-03-04T10:00:00", utc(2020, 3, 4, 3), utc(2020, 3, 4, 3, 0, 1)),
        ("dateTime", "2020-03-04T10:00+07:00", utc(2020, 3, 4, 3), utc(2020, 3, 4, 3, 1)),
        # fractions: the precision written
        (
            "dateTime",
            "2020-03-04T10:00:05.123+07:00",
            utc(2020, 3, 4, 3, 0, 5, 123000),
            utc(2020, 3, 4, 3, 0, 5, 124000),
        ),
        (
            "instant",
            "2020-03-04T10:00:05.1Z",
            utc(2020, 3, 4, 10, 0, 5, 100000),
            utc(2020, 3, 4, 10, 0, 5, 200000),
        ),
        (
            "instant",
            "2020-03-04T10:00:05.123456789Z",  # beyond microseconds: one microsecond
            utc(2020, 3, 4, 10, 0, 5, 123456),
            utc(2020, 3, 4, 10, 0, 5, 123457),
        ),
        ("instant", "2024-01-10T09:00:00+07:00", utc(2024, 1, 10, 2), utc(2024, 1, 10, 2, 0, 1)),
        # a leap second runs into the next minute
        ("dateTime", "2016-12-31T23:59:60Z", utc(2017, 1, 1), utc(2017, 1, 1, 0, 0, 1)),
        # the ends of the calendar are clamped
        ("date", "0001", DATE_MIN, utc(1, 12, 31, 17)),
        ("date", "9999", utc(9998, 12, 31, 17), utc(9999, 12, 31, 17)),
        ("dateTime", "9999-12-31T23:00:00-05:00", DATE_MAX - timedelta(microseconds=1), DATE_MAX),
    ],
)
def test_date_ranges(kind, text, low, high):
    assert date_ranges((kind, text)) == [DateRange(low, high)]


@pytest.mark.parametrize(
    ("period", "low", "high"),
    [
        ({"start": "2020-03-01", "end": "2020-03-15"}, utc(2020, 2, 29, 17), utc(2020, 3, 15, 17)),
        ({"start": "2021-06-01"}, utc(2021, 5, 31, 17), DATE_MAX),  # open end
        ({"end": "2013-01-21"}, DATE_MIN, utc(2013, 1, 21, 17)),  # open start
        # the end at its own precision
        ({"start": "2020-03-05", "end": "2020-03"}, utc(2020, 3, 4, 17), utc(2020, 3, 31, 17)),
        (
            {"start": "2020-01-01T03:00:00+07:00", "end": "2020-01-01T09:00:00+07:00"},
            utc(2019, 12, 31, 20),
            utc(2020, 1, 1, 2, 0, 1),
        ),
    ],
)
def test_period_ranges(period, low, high):
    assert date_ranges(("Period", period)) == [DateRange(low, high)]


def test_timing_covers_its_outer_limits():
    timing = {
        "event": ["2020-03-04T08:00:00+07:00", "2020-03-02"],
        "repeat": {"boundsPeriod": {"start": "2020-03-01", "end": "2020-03-10"}, "frequency": 2},
    }
    assert date_ranges(("Timing", timing)) == [
        DateRange(utc(2020, 2, 29, 17), utc(2020, 3, 10, 17))
    ]
    assert date_ranges(("Timing", {"event": ["2020-03-02"]})) == [value("2020-03-02")]
    assert date_ranges(("Timing", {"repeat": {"boundsDuration": {"value": 5}}})) == []
    assert date_ranges(("Timing", {"code": {"text": "BID"}})) == []


@pytest.mark.parametrize(
    "element",
    [
        ("dateTime", "yesterday"),
        ("date", "2020-13"),
        ("date", "2020-02-30"),
        ("dateTime", "2020-03-04T24:00:00Z"),
        ("dateTime", "2020-03-04T10:00:00+15:00"),
        ("Period", {}),
        ("Period", {"start": "garbage"}),
        ("Age", {"value": 30, "unit": "a"}),
        ("Duration", {"value": 5, "code": "d"}),
        ("dateTime", ""),
        ("dateTime", None),
        ("dateTime", 2020),
    ],
)
def test_unreadable_dates_give_nothing(element):
    assert date_ranges(element) == []


@pytest.mark.parametrize(
    ("text", "prefix", "low", "high"),
    [
        ("2020", "eq", utc(2019, 12, 31, 17), utc(2020, 12, 31, 17)),
        ("ge2020", "ge", utc(2019, 12, 31, 17), utc(2020, 12, 31, 17)),
        ("eq2020-03", "eq", utc(2020, 2, 29, 17), utc(2020, 3, 31, 17)),
        ("lt2020-03-04T10:00:00+07:00", "lt", utc(2020, 3, 4, 3), utc(2020, 3, 4, 3, 0, 1)),
        ("gt2020-03-04T10:00", "gt", utc(2020, 3, 4, 3), utc(2020, 3, 4, 3, 1)),  # a minute
        ("sa2020-03-04T03:00:00Z", "sa", utc(2020, 3, 4, 3), utc(2020, 3, 4, 3, 0, 1)),
        (
            "eb2020-03-04T10:00:00.5+07:00",
            "eb",
            utc(2020, 3, 4, 3, 0, 0, 500000),
            utc(2020, 3, 4, 3, 0, 0, 600000),
        ),
        # an unescaped "+" in a query string arrives as a space
        ("le2020-03-04T10:00:00 07:00", "le", utc(2020, 3, 4, 3), utc(2020, 3, 4, 3, 0, 1)),
        ("ne2020-03-04T10:00:00-05:00", "ne", utc(2020, 3, 4, 15), utc(2020, 3, 4, 15, 0, 1)),
        ("ap2013-03-14", "ap", utc(2013, 3, 13, 17), utc(2013, 3, 14, 17)),
    ],
)
def test_parse_date_query(text, prefix, low, high):
    assert parse_date_query(text) == (prefix, DateRange(low, high))


@pytest.mark.parametrize(
    "text",
    [
        "",
        "ge",
        "eq",
        "yesterday",
        "2020-13",
        "2020-00",
        "2020-02-30",
        "2021-02-29",
        "2020-3-4",
        "20",
        "0000",
        "2020-03-04T10",  # an hour needs its minutes
        "2020-03-04T25:00",
        "2020-03-04T10:61",
        "2020-03-04T10:00:61Z",
        "2020-03-04T10:00:00+7:00",
        "2020-03-04T10:00:00+15:00",
        "2020-03-04Z",
        "xx2020",
        "GE2020",
        "ge 2020",
        "2020-03-04T10:00:00.Z",
    ],
)
def test_parse_date_query_refuses(text):
    with pytest.raises(ValueError) as refused:
        parse_date_query(text)
    assert str(refused.value)  # a message for the OperationOutcome


def test_date_error_messages_say_what_is_wrong():
    with pytest.raises(ValueError, match="Month 13"):
        parse_date_query("2020-13")
    with pytest.raises(ValueError, match="Day 30 is out of range for 2020-02"):
        parse_date_query("2020-02-30")
    with pytest.raises(ValueError, match="Not a FHIR date"):
        parse_date_query("yesterday")
    with pytest.raises(ValueError, match="missing after the prefix 'ge'"):
        parse_date_query("ge")


# Values, as in the R4 examples and the oracle's data set:
STORED = {
    "year": value("2020"),
    "month": value("2020-03"),
    "day": value("2020-03-04"),
    "ten": value("2020-03-04T10:00:00+07:00"),
    "night": value("2020-03-03T20:30:00Z"),  # 03:30 on 2020-03-04 local time
    "early": value("2020-03-04T09:59:59+07:00"),
    "march": value("2020-03-01", "date"),
    "period": date_ranges(("Period", {"start": "2020-03-01", "end": "2020-03-15"}))[0],
    "onwards": date_ranges(("Period", {"start": "2021-06-01"}))[0],
    "until": date_ranges(("Period", {"end": "2013-01-21"}))[0],
    "instant": value("2020-03-04T03:00:00.250Z", "instant"),
}


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("2020", "year month day ten night early march period instant"),
        ("eq2020-03", "month day ten night early march period instant"),
        ("ne2020-03", "year onwards until"),
        ("eq2020-03-04", "day ten night early instant"),
        ("eq2020-03-03", ""),  # "night" is 2020-03-03 in UTC but 2020-03-04 here
        ("eq2020-03-04T10:00:00+07:00", "ten instant"),
        ("eq2020-03-04T03:00:00Z", "ten instant"),
        ("eq2020-03-04T10:00:00", "ten instant"),  # no offset: local time
        ("eq2020-03-04T10:00+07:00", "ten instant"),  # a minute
        ("eq2020-03-04T03:00:00.25Z", "instant"),
        ("eq2020-03-03T15:30:00-05:00", "night"),
        ("ge2020", "year month day ten night early march period onwards instant"),
        ("gt2020", "onwards"),
        ("lt2020", "until"),
        ("le2020", "year month day ten night early march period until instant"),
        # "2013-01-14 matches lt2013-01-14T10:00, because it includes the part before 10am"
        ("lt2020-03-04T10:00:00+07:00", "year month day night early march period until"),
        (
            "le2020-03-04T10:00:00+07:00",
            "year month day ten night early march period until instant",
        ),
        ("gt2020-03-04T10:00:00+07:00", "year month day period onwards"),
        ("ge2020-03-04T10:00:00+07:00", "year month day ten period onwards instant"),
        ("sa2020-03", "onwards"),
        ("sa2019", "year month day ten night early march period onwards instant"),
        ("sa2020-03-04T09:59:59+07:00", "ten onwards instant"),
        ("eb2021", "year month day ten night early march period until instant"),
        ("eb2020-03-04T10:00:00+07:00", "night early march until"),
        ("eb2020-03-04", "march until"),
        # periods: "ge2013-03-14 includes 'from 21-Jan 2013 onwards'" (it may include times after)
        ("ge2021-06-15", "onwards"),
        ("le2013-03-14", "until"),
        ("sa2013-03-14", "year month day ten night early march period onwards instant"),
        ("eb2013-03-14", "until"),
        # literal table: the period overlaps 2020-03-14 but neither passes its end nor lies
        # inside it, so it is not ge; the year and the month go on past it
        ("ge2020-03-15", "year month onwards"),
        ("ge2020-03-14", "year month period onwards"),
        ("le2020-03-01", "year march until"),
    ],
)
def test_date_prefixes(query, expected):
    prefix, searched = parse_date_query(query)
    found = [name for name, stored in STORED.items() if date_matches(prefix, searched, stored)]
    assert sorted(found) == sorted(expected.split())


NOW = utc(2026, 1, 1)


def test_ap_widens_by_a_tenth_of_the_gap_to_now():
    # R4: ap2013-03-14 includes 14-Mar 2013 and (near) 21-Jan 2013, not 15-Jun 2015
    _, query = parse_date_query("ap2013-03-14")
    assert date_matches("ap", query, value("2013-03-14"), now=NOW)
    assert date_matches("ap", query, value("2013-01-21"), now=NOW)
    assert not date_matches("ap", query, value("2015-06-15"), now=NOW)
    wide = approximate_range(query, NOW)
    gap = NOW - query.high
    assert wide.high == query.high + gap / 10
    # about now, barely wider than the day itself
    today = span("2025-12-31T23:00:00Z")
    assert approximate_range(today, NOW).high - today.high < timedelta(minutes=7)
    assert not date_matches("ap", today, value("2025-12-31T20:00:00Z"), now=NOW)


def test_unknown_prefix():
    with pytest.raises(ValueError):
        date_matches("xx", span("2020"), span("2020"))
    with pytest.raises(ValueError):
        number_matches("xx", parse_number_query("1"), number_rows(("integer", 1))[0])


# ---------------------------------------------------------------------- numbers, quantities


@pytest.mark.parametrize(
    ("text", "low", "high"),
    [
        ("100", "99.5", "100.5"),
        ("100.00", "99.995", "100.005"),
        ("1.00e2", "99.5", "100.5"),  # three significant digits, like 100
        ("1e2", "50", "150"),  # one significant digit
        ("5.4", "5.35", "5.45"),
        ("5.40e-3", "0.005395", "0.005405"),  # R4: 0.0054(+/-0.000005)
        ("0", "-0.5", "0.5"),
        ("-100", "-100.5", "-99.5"),
        ("0.8", "0.75", "0.85"),
    ],
)
def test_implicit_ranges(text, low, high):
    assert implicit_range(Decimal(text)) == (Decimal(low), Decimal(high))
    parsed = parse_number_query(text)
    assert (parsed.prefix, parsed.number, parsed.low, parsed.high) == (
        "eq",
        Decimal(text),
        Decimal(low),
        Decimal(high),
    )


def point(number: str | int | float, **units: str) -> QuantityRow:
    n = Decimal(str(number))
    return QuantityRow(n, n, n, **units)


@pytest.mark.parametrize(
    ("element", "rows"),
    [
        (("integer", 2), [point(2)]),
        (("positiveInt", 3), [point(3)]),
        (("decimal", 0.85), [point("0.85")]),
        (("decimal", Decimal("100.0")), [point("100.0")]),
        (("decimal", "1e2"), [point("1E+2")]),
        (
            ("Range", {"low": {"value": 1}, "high": {"value": 5, "unit": "mg"}}),
            [QuantityRow(Decimal(1), Decimal(1), Decimal(5))],
        ),
        (
            ("Range", {"high": {"value": 0.5}}),
            [QuantityRow(Decimal("0.5"), NUMBER_MIN, Decimal("0.5"))],
        ),
        (("Range", {}), []),
        (("integer", True), []),
        (("decimal", float("nan")), []),
        (("decimal", "abc"), []),
        (("string", "5"), []),
        (("decimal", None), []),
    ],
)
def test_number_rows(element, rows):
    assert number_rows(element) == rows


@pytest.mark.parametrize(
    ("element", "rows"),
    [
        (
            ("Quantity", {"value": 5.4, "unit": "mg", "system": UCUM, "code": "mg"}),
            [point("5.4", system=UCUM, code="mg", unit="mg")],
        ),
        (
            ("Age", {"value": 65, "unit": "năm", "system": UCUM, "code": "a"}),
            [point(65, system=UCUM, code="a", unit="năm")],
        ),
        (("Duration", {"value": 3, "code": "d"}), [point(3, code="d")]),
        (("SimpleQuantity", {"value": 1}), [point(1)]),
        (
            ("Money", {"value": 150000, "currency": "VND"}),
            [point(150000, system=CURRENCY_SYSTEM, code="VND")],
        ),
        # a comparator opens the interval on its side
        (
            ("Quantity", {"value": 5, "comparator": "<", "code": "mg"}),
            [QuantityRow(Decimal(5), NUMBER_MIN, Decimal(5), code="mg")],
        ),
        (
            ("Quantity", {"value": 5, "comparator": ">="}),
            [QuantityRow(Decimal(5), Decimal(5), NUMBER_MAX)],
        ),
        (
            (
                "Range",
                {"low": {"value": 1, "system": UCUM, "code": "mg"}, "high": {"value": 2}},
            ),
            [QuantityRow(Decimal(1), Decimal(1), Decimal(2), UCUM, "mg")],
        ),
        (
            ("Range", {"high": {"value": 2, "unit": "g"}}),
            [QuantityRow(Decimal(2), NUMBER_MIN, Decimal(2), unit="g")],
        ),
        (("Quantity", {"unit": "mg"}), []),  # no value
        (("Quantity", "5 mg"), []),
        (("SampledData", {"origin": {"value": 0}}), []),
        (("decimal", 1.5), [point("1.5")]),
    ],
)
def test_quantity_rows(element, rows):
    assert quantity_rows(element) == rows


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("5.4", ("eq", "5.4", None, None)),
        (f"5.4|{UCUM}|mg", ("eq", "5.4", UCUM, "mg")),
        ("5.4||mg", ("eq", "5.4", None, "mg")),
        (f"le5.4|{UCUM}|mg", ("le", "5.4", UCUM, "mg")),
        (f"ap5.4|{UCUM}|", ("ap", "5.4", UCUM, None)),
        (f"5.40e-3|{UCUM}|g", ("eq", "0.00540", UCUM, "g")),
        (r"1|http://x\|y|m\|s", ("eq", "1", "http://x|y", "m|s")),
    ],
)
def test_parse_quantity_query(text, expected):
    parsed = parse_quantity_query(text)
    prefix, number, system, code = expected
    assert (parsed.prefix, parsed.number, parsed.system, parsed.code) == (
        prefix,
        Decimal(number),
        system,
        code,
    )
    assert (parsed.low, parsed.high) == implicit_range(Decimal(number))


@pytest.mark.parametrize(
    "text", ["", "ge", "abc", "5.4|mg", "5.4|a|b|c", "|x|y", "5,4", "1.2.3", "NaN", "inf", "5mg"]
)
def test_parse_quantity_query_refuses(text):
    with pytest.raises(ValueError):
        parse_quantity_query(text)


@pytest.mark.parametrize("text", ["", "gt", "abc", "1/2", "e5", "0x10", "1e99999", "Infinity"])
def test_parse_number_query_refuses(text):
    with pytest.raises(ValueError):
        parse_number_query(text)


# The oracle's observations: 65 kg, 37.5 Cel, 100 kg, 100.4 mg/dL, 72 /min, 80 kg
WEIGHTS = {
    "o1": point(65, system=UCUM, code="kg", unit="kg"),
    "o2": point("37.5", system=UCUM, code="Cel", unit="°C"),
    "o3": point(100, system=UCUM, code="kg", unit="kg"),
    "o4": point("100.4", system=UCUM, code="mg/dL", unit="mg/dL"),
    "o8": point(72, system=UCUM, code="/min", unit="/min"),
    "o9": point(80, system=UCUM, code="kg", unit="kg"),
}


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("100", "o3 o4"),  # [99.5, 100.5)
        ("100.0", "o3"),  # [99.95, 100.05)
        ("1e2", "o1 o3 o4 o8 o9"),  # [50, 150)
        ("ne100", "o1 o2 o8 o9"),
        ("gt100", "o4"),  # "greater than exactly 100"
        ("ge100", "o3 o4"),
        ("lt72", "o1 o2"),
        ("le72", "o1 o2 o8"),
        ("sa100", "o4"),
        ("eb65", "o2"),
        ("ap100", "o3 o4"),  # [90, 110)
        ("ap70", "o1 o8"),  # [63, 77)
        ("100||kg", "o3"),
        (f"100|{UCUM}|mg/dL", "o4"),
        (f"gt70|{UCUM}|kg", "o3 o9"),
        ("37.5||°C", "o2"),  # the stated unit
        ("37.5||Cel", "o2"),  # the code
        (f"37.5|{UCUM}|°C", ""),  # with a system, the code only
        (f"gt0|{UCUM}|", "o1 o2 o3 o4 o8 o9"),
        ("gt0|http://other|", ""),
    ],
)
def test_quantity_prefixes(query, expected):
    parsed = parse_quantity_query(query)
    found = [name for name, row in WEIGHTS.items() if quantity_matches(parsed.prefix, parsed, row)]
    assert found == expected.split()


# rows: the integer dose 2, the decimal 0.8, the Range [1, 5], [-inf, 5] and [5, +inf]
NUMBERS = {
    "dose": number_rows(("positiveInt", 2))[0],
    "prob": number_rows(("decimal", 0.8))[0],
    "range": number_rows(("Range", {"low": {"value": 1}, "high": {"value": 5}}))[0],
    "below": quantity_rows(("Quantity", {"value": 5, "comparator": "<"}))[0],
    "above": quantity_rows(("Quantity", {"value": 5, "comparator": ">="}))[0],
}


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("2", "dose"),
        ("2.0", "dose"),  # integers: "the significance issues cancel out"
        ("2.5", ""),  # "if there are non-zero digits after a decimal point, there cannot be any"
        ("0.8", "prob"),
        ("8e-1", "prob"),
        ("1", "prob"),  # [0.5, 1.5)
        ("3", ""),  # [2.5, 3.5)
        ("1e1", ""),  # [5, 15) does not contain the range [1, 5]
        ("gt2", "range below above"),
        ("ge2", "dose range below above"),
        ("lt2", "prob range below"),
        ("le2", "dose prob range below"),
        ("sa1", "dose above"),
        ("eb5", "dose prob"),
        ("ne2", "prob range below above"),
        ("ap3", "range below"),
        ("gt5", "above"),
        ("ge5", "range below above"),
        ("lt1", "prob below"),
        ("le1", "prob range below"),
    ],
)
def test_number_prefixes(query, expected):
    parsed = parse_number_query(query)
    found = [name for name, row in NUMBERS.items() if number_matches(parsed.prefix, parsed, row)]
    assert sorted(found) == sorted(expected.split())


# ------------------------------------------------------------------------------ dispatch


def test_rows_for_dispatches_on_the_parameter_type():
    assert rows_for("token", ("code", "final")) == [TokenRow(None, "final")]
    assert rows_for("string", ("string", "Đào")) == [StringRow("dao", "Đào")]
    assert rows_for("reference", ("Reference", {"reference": f"{BASE}/Patient/1"}), BASE) == [
        ReferenceRow("Patient", "1")
    ]
    assert rows_for("date", ("date", "2020")) == [value("2020")]
    assert rows_for("number", ("integer", 1)) == [point(1)]
    assert rows_for("quantity", ("Quantity", {"value": 1})) == [point(1)]
    assert rows_for("uri", ("uri", "urn:x")) == ["urn:x"]
    assert rows_for("composite", ("CodeableConcept", {})) == []
    assert rows_for("special", ("string", "x")) == []
    with pytest.raises(ValueError):
        rows_for("nonsense", ("string", "x"))


# ---------------------------------------------------------------------------- properties

ZONES = ["", "Z", "+07:00", "-05:00", "+05:45", "+14:00", "-12:00", "-00:00"]
PRECISIONS = ("year", "month", "day", "minute", "second", "fraction")


@st.composite
def date_parts(draw, zones=ZONES, years=st.integers(1, 9999)):
    """The components of a date of any precision (all drawn; truncated by ``write``)."""
    year = draw(years)
    month = draw(st.integers(1, 12))
    day = draw(st.integers(1, calendar.monthrange(year, month)[1]))
    return {
        "year": year,
        "month": month,
        "day": day,
        "hour": draw(st.integers(0, 23)),
        "minute": draw(st.integers(0, 59)),
        "second": draw(st.integers(0, 59)),
        "fraction": draw(st.text("0123456789", min_size=1, max_size=9)),
        "zone": draw(st.sampled_from(zones)),
    }


def write(parts: dict, precision: str) -> str:
    text = f"{parts['year']:04d}"
    if precision == "year":
        return text
    text += f"-{parts['month']:02d}"
    if precision == "month":
        return text
    text += f"-{parts['day']:02d}"
    if precision == "day":
        return text
    text += f"T{parts['hour']:02d}:{parts['minute']:02d}"
    if precision != "minute":
        text += f":{parts['second']:02d}"
        if precision == "fraction":
            text += "." + parts["fraction"]
    return text + parts["zone"]


@st.composite
def fhir_dates(draw):
    return write(draw(date_parts()), draw(st.sampled_from(PRECISIONS)))


@settings(max_examples=300, deadline=None)
@given(fhir_dates())
def test_a_date_is_a_nonempty_range_that_equals_itself(text):
    prefix, query = parse_date_query(text)
    assert prefix == "eq"
    assert DATE_MIN <= query.low < query.high <= DATE_MAX
    assert date_ranges(("dateTime", text)) == [query]
    assert date_matches("eq", query, query)
    assert date_matches("ge", query, query) and date_matches("le", query, query)
    assert not date_matches("ne", query, query)
    assert not date_matches("gt", query, query) and not date_matches("lt", query, query)
    assert not date_matches("sa", query, query) and not date_matches("eb", query, query)
    assert date_matches("ap", query, query, now=NOW)


@settings(max_examples=300, deadline=None)
@given(fhir_dates(), fhir_dates())
def test_date_prefixes_against_their_definitions(query_text, value_text):
    """Each prefix, as the R4 table defines it, checked by set reasoning on the two ranges."""
    query, stored = span(query_text), value(value_text)
    contains = query.low <= stored.low and stored.high <= query.high
    overlaps = stored.low < query.high and query.low < stored.high
    above = stored.high > query.high  # [q.high, inf) meets the value
    below = stored.low < query.low  # (-inf, q.low) meets the value
    expected = {
        "eq": contains,
        "ne": not contains,
        "gt": above,
        "lt": below,
        "ge": above or contains,
        "le": below or contains,
        "sa": not overlaps and query.high <= stored.low,
        "eb": not overlaps and stored.high <= query.low,
    }
    for prefix, wanted in expected.items():
        assert date_matches(prefix, query, stored) is wanted, prefix
    assert date_matches("ne", query, stored) is not date_matches("eq", query, stored)
    assert not (date_matches("sa", query, stored) and date_matches("eb", query, stored))
    assert date_matches("ap", query, stored, now=NOW) or not overlaps


@settings(max_examples=200, deadline=None)
@given(date_parts(zones=["", "+07:00"]))
def test_date_ranges_nest(parts):
    """A day lies within its month, a month within its year, a second within its minute...
    (local time, so that the day and the time share a zone)."""
    ranges = [span(write(parts, precision)) for precision in PRECISIONS]
    for outer, inner in pairwise(ranges):
        assert outer.low <= inner.low and inner.high <= outer.high
        assert date_matches("eq", outer, inner)


@settings(max_examples=200, deadline=None)
@given(date_parts(zones=ZONES[1:]))
def test_the_same_instant_in_any_zone(parts):
    text = write(parts, "second")
    moment = span(text)
    low = moment.low
    in_utc = (
        f"{low.year:04d}-{low.month:02d}-{low.day:02d}"
        f"T{low.hour:02d}:{low.minute:02d}:{low.second:02d}Z"
    )
    if moment.low > DATE_MIN and moment.high < DATE_MAX:
        assert span(in_utc) == moment


NUMBER_TEXTS = st.builds(
    lambda sign, whole, fraction, exponent: f"{sign}{whole}{fraction}{exponent}",
    st.sampled_from(["", "-"]),
    st.integers(0, 10**6).map(str),
    st.sampled_from(["", ".0", ".5", ".25", ".125", ".00"]),
    st.sampled_from(["", "e2", "e-3", "E1"]),
)


@settings(max_examples=300, deadline=None)
@given(NUMBER_TEXTS, NUMBER_TEXTS, st.booleans())
def test_number_prefixes_against_their_definitions(query_text, stored_text, as_range):
    query = parse_number_query(query_text)
    if as_range:
        low, high = sorted([Decimal(query_text), Decimal(stored_text)])
        (row,) = number_rows(("Range", {"low": {"value": str(low)}, "high": {"value": str(high)}}))
    else:
        (row,) = number_rows(("decimal", stored_text))
    n = query.number
    assert query.low < n < query.high
    assert number_matches("eq", query, row) is (query.low <= row.low and row.high < query.high)
    assert number_matches("ne", query, row) is not number_matches("eq", query, row)
    assert number_matches("gt", query, row) is (row.high > n)
    assert number_matches("ge", query, row) is (row.high >= n)
    assert number_matches("lt", query, row) is (row.low < n)
    assert number_matches("le", query, row) is (row.low <= n)
    assert not (number_matches("sa", query, row) and number_matches("eb", query, row))
    if number_matches("eq", query, row):
        assert number_matches("ap", query, row)


@settings(max_examples=300, deadline=None)
@given(NUMBER_TEXTS)
def test_a_number_equals_itself(text):
    query = parse_number_query(text)
    (row,) = number_rows(("decimal", text))
    assert number_matches("eq", query, row) and number_matches("ap", query, row)
    assert number_matches("ge", query, row) and number_matches("le", query, row)
    for prefix in ("ne", "gt", "lt", "sa", "eb"):
        assert not number_matches(prefix, query, row)


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_normalize_is_idempotent_and_folded(text):
    folded = normalize(text)
    assert normalize(folded) == folded
    assert folded == folded.strip()
    assert "  " not in folded
    assert "đ" not in folded


def test_prefixes_are_the_nine_of_r4():
    assert PREFIXES == ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap")
