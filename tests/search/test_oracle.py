"""Pin the semantics of the search oracle on a small hand-made data set.

These examples document what the SQL search has to reproduce.  Every non-obvious rule cites the
section of http://hl7.org/fhir/R4/search.html it comes from ("search.html#<anchor>"), or says
DECISION where the oracle chose between readings the specification leaves open.

Dates without an offset are local time, +07:00 (Asia/Ho_Chi_Minh).
"""

from __future__ import annotations

import pytest

from tests.search.oracle import Oracle, fold, parse_date, parse_number

BASE = "http://127.0.0.1:8000/fhir"
CCCD = "http://fhir.hl7.org.vn/core/sid/cccd"
LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
UCUM = "http://unitsofmeasure.org"
XN = "http://fhir.hl7.org.vn/core/CodeSystem/xet-nghiem"
TAGS = "http://fhir.hl7.org.vn/core/CodeSystem/tag"
PROFILE = "http://fhir.hl7.org.vn/core/StructureDefinition/vn-core-patient"


def patient(pid: str, family: str, given: list[str], updated: str, **more) -> dict:
    name = {"family": family, "given": given, "text": " ".join([family, *given])}
    return {
        "resourceType": "Patient",
        "id": pid,
        "meta": {"lastUpdated": updated, **more.pop("meta", {})},
        "name": [name],
        **more,
    }


def observation(oid: str, code: dict, subject: dict | None, **more) -> dict:
    resource = {"resourceType": "Observation", "id": oid, "status": "final", "code": code}
    if subject is not None:
        resource["subject"] = subject
    return resource | more


def loinc(code: str, display: str | None = None, text: str | None = None) -> dict:
    coding = {"system": LOINC, "code": code} | ({"display": display} if display else {})
    return {"coding": [coding]} | ({"text": text} if text else {})


def kg(value) -> dict:
    return {"value": value, "unit": "kg", "system": UCUM, "code": "kg"}


RESOURCES = [
    patient(
        "p1",
        "Nguyễn",
        ["Văn", "An"],
        "2024-01-10T09:00:00+07:00",
        meta={
            "tag": [{"system": TAGS, "code": "import"}],
            "profile": [PROFILE],
            "security": [
                {"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "code": "R"}
            ],
        },
        identifier=[{"system": CCCD, "value": "001085012345"}],
        gender="male",
        birthDate="1985-04-12",
        active=True,
        address=[{"line": ["12 Hàng Bài"], "city": "Hà Nội", "country": "VN"}],
    ),
    patient(
        "p2",
        "Trần",
        ["Thị", "Đào"],
        "2024-01-10T02:30:00Z",  # 09:30 local
        meta={"profile": [PROFILE + "-extended"]},
        identifier=[
            {"system": CCCD, "value": "079190054321", "type": {"text": "Căn cước công dân"}}
        ],
        gender="female",
        birthDate="1990",
        active=False,
        address=[{"city": "Thành phố Hồ Chí Minh", "district": "Quận 1"}],
    ),
    patient(  # no gender, no birthDate, not "active"
        "p3",
        "Lê",
        ["Minh", "Khoa"],
        "2023-12-31T23:30:00+07:00",
        identifier=[{"system": "http://benhvien.example.vn/mrn", "value": "BN-0003"}],
    ),
    patient(
        "p4",
        "Phạm",
        ["Thu", "Hà"],
        "2023-12-31T17:30:00Z",  # 2024-01-01 00:30 local
        identifier=[{"value": "HC123"}],  # no system
        gender="female",
        birthDate="2001-07-20",
    ),
    {"resourceType": "Group", "id": "g1", "type": "person", "actual": True},
    {
        "resourceType": "Encounter",
        "id": "e1",
        "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IMP"},
        "subject": {"reference": "Patient/p1"},
        "period": {"start": "2020-03-01T08:00:00+07:00", "end": "2020-03-05T17:00:00+07:00"},
    },
    {
        "resourceType": "Encounter",
        "id": "e2",
        "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
        "subject": {"reference": "Patient/p2"},
        # 2020-01-01 03:00 to 09:00 local time, though still 2019-12-31 in UTC at the start
        "period": {"start": "2019-12-31T20:00:00Z", "end": "2020-01-01T02:00:00Z"},
    },
    {
        "resourceType": "Encounter",
        "id": "e3",
        "status": "planned",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
        "subject": {"reference": "Patient/p3"},
    },
    observation(
        "o1",
        loinc("29463-7", "Body weight", "Cân nặng"),
        {"reference": "Patient/p1"},
        encounter={"reference": "Encounter/e1"},
        effectiveDateTime="2020",  # a year
        valueQuantity=kg(65),
    ),
    observation(
        "o2",
        loinc("8310-5", "Body temperature"),
        {"reference": f"{BASE}/Patient/p2"},  # absolute, on this server
        encounter={"reference": "Encounter/e2"},
        effectiveDateTime="2020-03",  # a month
        valueQuantity={"value": 37.5, "unit": "°C", "system": UCUM, "code": "Cel"},
    ),
    observation(
        "o3",
        loinc("29463-7"),
        {"reference": "Patient/p1"},
        effectiveDateTime="2020-03-04",  # a day
        valueQuantity=kg(100),
    ),
    observation(
        "o4",
        {
            "coding": [{"system": XN, "code": "XN01", "display": "Đường huyết"}],
            "text": "Xét nghiệm đường huyết",
        },
        {"reference": "Patient/p2"},
        effectiveDateTime="2020-03-04T10:00:00+07:00",  # a second
        valueQuantity={"value": 100.4, "unit": "mg/dL", "system": UCUM, "code": "mg/dL"},
    ),
    observation(
        "o5",
        {"coding": [{"code": "abc"}]},  # a code without a system
        {"reference": "Patient/p3"},
        effectiveDateTime="2020-03-03T20:30:00Z",  # 2020-03-04 03:30 local
    ),
    observation(
        "o6",
        loinc("8310-5"),
        {"identifier": {"system": CCCD, "value": "079190054321"}},  # identifier only
        effectivePeriod={"start": "2020-03-01", "end": "2020-03-15"},
    ),
    observation(
        "o7",
        {"coding": [{"system": XN, "code": "x,y"}]},  # a comma in a code
        {"reference": "http://other.example/fhir/Patient/p3"},  # another server
        effectivePeriod={"start": "2021-06-01"},  # open end
    ),
    observation(
        "o8",
        loinc("8867-4", "Heart rate"),
        {"reference": "Group/g1"},
        effectiveDateTime="2020-03-04T09:59:59+07:00",
        valueQuantity={"value": 72, "unit": "/min", "system": UCUM, "code": "/min"},
    ),
    observation(
        "o9",
        {
            "coding": [
                {"system": LOINC, "code": "29463-7"},
                {"system": SNOMED, "code": "27113001", "display": "Body weight (observable)"},
            ]
        },
        {"reference": "Patient/p4"},
        valueQuantity=kg(80),  # no effective[x]
    ),
    {
        "resourceType": "RiskAssessment",
        "id": "r1",
        "status": "final",
        "prediction": [{"probabilityDecimal": 0.8}],
    },
    {
        "resourceType": "RiskAssessment",
        "id": "r2",
        "status": "final",
        "prediction": [{"probabilityDecimal": 0.85}],
    },
]


@pytest.fixture(scope="module")
def oracle() -> Oracle:
    return Oracle(RESOURCES, base_url=BASE)


def ids(oracle: Oracle, resource_type: str, query: str) -> list[str]:
    """Run ``query`` ("a=1&b=2", values not URL-encoded) and return the matching ids."""
    params = [tuple(pair.split("=", 1)) for pair in query.split("&")] if query else []
    return oracle.search(resource_type, params)


def case(resource_type: str, query: str, expected: str):
    return pytest.param(resource_type, query, expected.split(), id=f"{resource_type}?{query}")


def check(cases):
    return pytest.mark.parametrize(("resource_type", "query", "expected"), cases)


# ---- token: search.html#token -------------------------------------------------------------

TOKEN = [
    # [code]: any system
    case("Observation", "code=29463-7", "o1 o3 o9"),
    # [system]|[code]
    case("Observation", f"code={LOINC}|29463-7", "o1 o3 o9"),
    case("Observation", f"code={SNOMED}|27113001", "o9"),
    # |[code]: "the Coding/Identifier has no system property"
    case("Observation", "code=|abc", "o5"),
    case("Observation", "code=abc", "o5"),
    case("Observation", f"code={LOINC}|abc", ""),
    # [system]|: any code in the system
    case("Observation", f"code={LOINC}|", "o1 o2 o3 o6 o8 o9"),
    # DECISION: codes are case-sensitive
    case("Observation", "code=ABC", ""),
    # comma = OR (search.html#combining); "\," escapes a comma (search.html#escaping)
    case("Observation", "code=29463-7,8310-5", "o1 o2 o3 o6 o9"),
    case("Observation", "code=x\\,y", "o7"),
    case("Observation", "code=x,y", ""),
    # repeated parameter = AND
    case("Observation", f"code=29463-7&code={SNOMED}|", "o9"),
    # Identifier: system|value
    case("Patient", f"identifier={CCCD}|001085012345", "p1"),
    case("Patient", f"identifier={CCCD}|", "p1 p2"),
    case("Patient", "identifier=079190054321", "p2"),
    case("Patient", "identifier=|HC123", "p4"),
    case("Patient", f"identifier=|{CCCD}", ""),
    # code and boolean elements: the value alone; booleans are "true" / "false"
    case("Patient", "gender=female", "p2 p4"),
    case("Patient", "active=true", "p1"),
    case("Patient", "active=false", "p2"),
    # DECISION: a primitive code has no system, so "|code" matches it and "system|code" not
    case("Patient", "gender=|male", "p1"),
    case("Patient", "gender=http://hl7.org/fhir/administrative-gender|male", ""),
    case("Encounter", "class=AMB", "e2 e3"),
    # :not "includes resources that have no value for the parameter"
    case("Patient", "gender:not=male", "p2 p3 p4"),
    case("Patient", "active:not=true", "p2 p3 p4"),
    case("Observation", "code:not=29463-7", "o2 o4 o5 o6 o7 o8"),
    # :not with a list: "the negation applies to the set" - no value may match any of them
    case("Observation", "code:not=29463-7,8310-5", "o4 o5 o7 o8"),
    # :text: a string search (starts-with, case- and accent-insensitive) on
    # CodeableConcept.text, Coding.display or Identifier.type.text
    case("Observation", "code:text=can nang", "o1"),
    case("Observation", "code:text=body", "o1 o2 o9"),
    case("Observation", "code:text=duong huyet", "o4"),  # Coding.display "Đường huyết"
    case("Observation", "code:text=XÉT", "o4"),  # CodeableConcept.text
    case("Observation", "code:text=huyet", ""),  # starts-with, not contains
    case("Patient", "identifier:text=can cuoc", "p2"),
    # :missing (search.html#modifiers)
    case("Patient", "gender:missing=true", "p3"),
    case("Patient", "gender:missing=false", "p1 p2 p4"),
    # _id is exact and case-sensitive (search.html#all)
    case("Patient", "_id=p1", "p1"),
    case("Patient", "_id=P1", ""),
    case("Patient", "_id=p1,p3", "p1 p3"),
    # _tag and _security are tokens on meta
    case("Patient", f"_tag={TAGS}|import", "p1"),
    case("Patient", "_security=R", "p1"),
    case("Patient", "_tag:missing=true", "p2 p3 p4"),
]


@check(TOKEN)
def test_token(oracle, resource_type, query, expected):
    assert ids(oracle, resource_type, query) == expected


# ---- string: search.html#string -----------------------------------------------------------

STRING = [
    # default: starts-with on each part, ignoring case and accents (đ folds to d)
    case("Patient", "name=nguyen", "p1"),
    case("Patient", "name=NGUYỄN", "p1"),
    case("Patient", "name=ng", "p1"),
    case("Patient", "family=tran", "p2"),
    case("Patient", "given=dao", "p2"),
    case("Patient", "given=Đào", "p2"),
    case("Patient", "given=DAO", "p2"),
    case("Patient", "name=an", "p1"),  # the given name "An"
    case("Patient", "name=ha", "p4"),
    case("Patient", "name=nguyen van", "p1"),  # HumanName.text is a part too
    case("Patient", "name=van an", ""),  # ...but only its start
    case("Patient", "given=an,khoa", "p1 p3"),
    case("Patient", "family=le&given=minh", "p3"),
    # :contains: anywhere, ignoring case and accents
    case("Patient", "name:contains=ao", "p2"),
    case("Patient", "name:contains=INH", "p3"),
    # :exact: the whole part, with case and accents
    case("Patient", "family:exact=Nguyễn", "p1"),
    case("Patient", "family:exact=nguyễn", ""),
    case("Patient", "family:exact=Nguyen", ""),
    case("Patient", "family:exact=Nguy", ""),
    # Address: each of line, city, district, state, postalCode, country, text on its own
    case("Patient", "address-city=ha noi", "p1"),
    case("Patient", "address=thanh pho", "p2"),
    case("Patient", "address=quan", "p2"),
    case("Patient", "address=12 hang bai", "p1"),
    case("Patient", "address=hang bai", ""),  # the line starts with "12"
    case("Patient", "address=ho chi", ""),
    case("Patient", "address:contains=ho chi", "p2"),
    case("Patient", "address-country=VN", "p1"),
    case("Patient", "address-city:missing=true", "p3 p4"),
]


@check(STRING)
def test_string(oracle, resource_type, query, expected):
    assert ids(oracle, resource_type, query) == expected


# ---- reference: search.html#reference ----------------------------------------------------

REFERENCE = [
    # [type]/[id]: relative or absolute on this server's base both match
    case("Observation", "subject=Patient/p1", "o1 o3"),
    case("Observation", "subject=Patient/p2", "o2 o4"),
    case("Observation", f"subject={BASE}/Patient/p2", "o2 o4"),
    # [id]: any type the parameter allows
    case("Observation", "subject=p2", "o2 o4"),
    case("Observation", "subject=g1", "o8"),
    # :[type] modifier
    case("Observation", "subject:Patient=p2", "o2 o4"),
    case("Observation", "subject:Group=g1", "o8"),
    case("Observation", "subject:Patient=g1", ""),
    # another server's URL only matches itself
    case("Observation", "subject=p3", "o5"),
    case("Observation", "subject=http://other.example/fhir/Patient/p3", "o7"),
    # "patient" is Observation.subject.where(resolve() is Patient)
    case("Observation", "patient=p2", "o2 o4"),
    case("Observation", "patient=g1", ""),
    case("Observation", "patient=http://other.example/fhir/Patient/p3", "o7"),
    # :identifier searches Reference.identifier as a token
    case("Observation", f"subject:identifier={CCCD}|079190054321", "o6"),
    case("Observation", "subject:identifier=079190054321", "o6"),
    # :missing - DECISION: a Reference with only an identifier is a value of "subject", but not
    # of "patient" (it does not name a Patient)
    case("Observation", "subject:missing=true", ""),
    case("Observation", "patient:missing=true", "o6 o8"),
    case("Observation", "encounter:missing=false", "o1 o2"),
    case("Encounter", "subject=Patient/p3", "e3"),
]


@check(REFERENCE)
def test_reference(oracle, resource_type, query, expected):
    assert ids(oracle, resource_type, query) == expected


# ---- date: search.html#date and the prefix table, search.html#prefix ----------------------
#
# Every value and every search value is a range [low, high) at its precision: "2020" is the whole
# year, "2020-03" the month, "...T10:00:00+07:00" one second.  The observations are:
#   o1 2020              o2 2020-03           o3 2020-03-04        o4 2020-03-04T10:00:00+07
#   o5 2020-03-04T03:30:00+07 (written 2020-03-03T20:30:00Z)       o8 2020-03-04T09:59:59+07
#   o6 Period 2020-03-01 .. 2020-03-15        o7 Period 2021-06-01 .. (open)    o9 none
# With S the search range and T the value's range:
#   eq: S contains T            ne: not eq
#   gt: T.high > S.high         lt: T.low < S.low      ("the range above/below S intersects T")
#   ge: gt or eq                le: lt or eq
#   sa: T.low >= S.high         eb: T.high <= S.low    (no overlap, T above/below S)

DATE = [
    case("Observation", "date=2020", "o1 o2 o3 o4 o5 o6 o8"),
    case("Observation", "date=eq2020-03", "o2 o3 o4 o5 o6 o8"),
    case("Observation", "date=ne2020-03", "o1 o7"),  # o9 has no value at all
    case("Observation", "date=eq2020-03-04", "o3 o4 o5 o8"),
    # o5 is 2020-03-03 in UTC, but 2020-03-04 in local time
    case("Observation", "date=eq2020-03-03", ""),
    case("Observation", "date=eq2020-03-04T10:00:00+07:00", "o4"),
    case("Observation", "date=eq2020-03-04T03:00:00Z", "o4"),  # the same instant
    case("Observation", "date=eq2020-03-04T10:00:00", "o4"),  # no offset: local time
    case("Observation", "date=eq2020-03-04T10:00+07:00", "o4"),  # a minute
    case("Observation", "date=eq2020-03-03T15:30:00-05:00", "o5"),
    # "ge2020": everything from 2020 on, including the open-ended period
    case("Observation", "date=ge2020", "o1 o2 o3 o4 o5 o6 o7 o8"),
    case("Observation", "date=gt2020", "o7"),
    case("Observation", "date=lt2020", ""),
    case("Observation", "date=le2020", "o1 o2 o3 o4 o5 o6 o8"),
    # lt: "2013-01-14 matches lt2013-01-14T10:00, because it includes the part before 10am"
    case("Observation", "date=lt2020-03-04T10:00:00+07:00", "o1 o2 o3 o5 o6 o8"),
    case("Observation", "date=le2020-03-04T10:00:00+07:00", "o1 o2 o3 o4 o5 o6 o8"),
    case("Observation", "date=gt2020-03-04T10:00:00+07:00", "o1 o2 o3 o6 o7"),
    case("Observation", "date=ge2020-03-04T10:00:00+07:00", "o1 o2 o3 o4 o6 o7"),
    # sa / eb: the value lies wholly after / before the search range
    case("Observation", "date=sa2020-03", "o7"),
    case("Observation", "date=sa2019", "o1 o2 o3 o4 o5 o6 o7 o8"),
    case("Observation", "date=sa2020-03-04T09:59:59+07:00", "o4 o7"),
    case("Observation", "date=eb2021", "o1 o2 o3 o4 o5 o6 o8"),
    case("Observation", "date=eb2020-03-04T10:00:00+07:00", "o5 o8"),
    case("Observation", "date=eb2020-03-04", ""),
    # AND of two prefixes: a window
    case("Observation", "date=ge2020-03-04&date=lt2020-03-05", "o1 o2 o3 o4 o5 o6 o8"),
    case("Observation", "date=sa2020-03-03&date=eb2020-03-05", "o3 o4 o5 o8"),
    case("Observation", "date=eq2020-03-04,eq2021", "o3 o4 o5 o8"),
    case("Observation", "date:missing=true", "o9"),
    # Periods: "a missing lower boundary is less than any actual date"; e1 is
    # 2020-03-01T08:00 .. 2020-03-05T17:00, e2 2020-01-01T03:00 .. 09:00 local time
    case("Encounter", "date=2020", "e1 e2"),
    case("Encounter", "date=2019", ""),
    case("Encounter", "date=eq2020-01-01", "e2"),
    case("Encounter", "date=lt2020", ""),
    case("Encounter", "date=ge2020-01-01T03:00:00+07:00", "e1 e2"),
    # e2 starts before 03:00:01 but goes on past it (gt), so it is "ge"; it ends at 09:00
    case("Encounter", "date=ge2020-01-01T03:00:01+07:00", "e1 e2"),
    case("Encounter", "date=ge2020-01-01T09:00:01+07:00", "e1"),
    # Literal reading of the table: e1 overlaps 2020-03-05, but neither goes past its end (gt)
    # nor lies inside it (eq), so it is not "ge2020-03-05"; likewise it is not "le2020-03-01",
    # while e2 (before March) is.
    case("Encounter", "date=ge2020-03-05", ""),
    case("Encounter", "date=le2020-03-01", "e2"),
    case("Encounter", "date=ge2020-03-04", "e1"),
    case("Encounter", "date=ne2020-03", "e2"),  # e1 lies within March
    case("Encounter", "date:missing=true", "e3"),
    # _lastUpdated (meta.lastUpdated), same rules
    case("Patient", "_lastUpdated=ge2024", "p1 p2 p4"),
    case("Patient", "_lastUpdated=lt2024", "p3"),
    case("Patient", "_lastUpdated=eq2024-01-10", "p1 p2"),
    case("Patient", "_lastUpdated=gt2024-01-10T09:00:00+07:00", "p2"),
    case("Patient", "_lastUpdated=eq2024-01-10T02:30:00Z", "p2"),
    case("Patient", "birthdate=1985-04", "p1"),
    case("Patient", "birthdate=eb1990-06", "p1"),  # 1990 (the year) does not end before June
    case("Patient", "birthdate=ge1990-06", "p2 p4"),  # ...but goes on past June
    case("Patient", "birthdate=sa1990-06", "p4"),  # ...and does not start after it
    case("Patient", "birthdate=le1990", "p1 p2"),
    case("Patient", "birthdate:missing=true", "p3"),
]


@check(DATE)
def test_date(oracle, resource_type, query, expected):
    assert ids(oracle, resource_type, query) == expected


def test_date_ranges_follow_precision():
    hour = 3600 * 10**6
    year = parse_date("2020")
    assert year[1] - year[0] == 366 * 24 * hour
    month = parse_date("2020-02")
    assert month[1] - month[0] == 29 * 24 * hour
    assert parse_date("2020-03-04T10:00:00+07:00") == parse_date("2020-03-04T03:00:00Z")
    assert parse_date("2020-03-04T10:00:00") == parse_date("2020-03-04T03:00:00Z")
    low, high = parse_date("2020-03-04T10:00:00.25Z")
    assert high - low == 10**4  # two decimals: a hundredth of a second
    with pytest.raises(ValueError):
        parse_date("2020-02-30")


# ---- number and quantity: search.html#number, search.html#quantity ------------------------
#
# Values: o1 65 kg, o2 37.5 Cel ("°C"), o3 100 kg, o4 100.4 mg/dL, o8 72 /min, o9 80 kg.

QUANTITY = [
    # eq uses the implicit range of the search value: "100" is [99.5, 100.5)
    case("Observation", "value-quantity=100", "o3 o4"),
    case("Observation", "value-quantity=100.0", "o3"),  # [99.95, 100.05)
    case("Observation", "value-quantity=ne100", "o1 o2 o8 o9"),
    # gt lt ge le sa eb ignore the precision: exactly 100
    case("Observation", "value-quantity=gt100", "o4"),
    case("Observation", "value-quantity=ge100", "o3 o4"),
    case("Observation", "value-quantity=lt72", "o1 o2"),
    case("Observation", "value-quantity=le72", "o1 o2 o8"),
    case("Observation", "value-quantity=sa100", "o4"),
    case("Observation", "value-quantity=eb65", "o2"),
    # number|system|code, and number||code (code or the stated unit)
    case("Observation", "value-quantity=100||kg", "o3"),
    case("Observation", f"value-quantity=100|{UCUM}|mg/dL", "o4"),
    case("Observation", f"value-quantity=gt70|{UCUM}|kg", "o3 o9"),
    case("Observation", "value-quantity=37.5||°C", "o2"),  # Quantity.unit
    case("Observation", "value-quantity=37.5||Cel", "o2"),  # Quantity.code
    case("Observation", f"value-quantity=37.5|{UCUM}|°C", ""),  # with a system: the code only
    case("Observation", "value-quantity=65||kg,72||/min", "o1 o8"),
    case("Observation", "value-quantity:missing=true", "o5 o6 o7"),
    # number: RiskAssessment.prediction.probability: r1 0.8, r2 0.85
    case("RiskAssessment", "probability=0.8", "r1"),  # [0.75, 0.85)
    case("RiskAssessment", "probability=0.85", "r2"),  # [0.845, 0.855)
    case("RiskAssessment", "probability=8e-1", "r1"),
    case("RiskAssessment", "probability=1", "r1 r2"),  # [0.5, 1.5)
    case("RiskAssessment", "probability=gt0.8", "r2"),
    case("RiskAssessment", "probability=ge0.8", "r1 r2"),
    case("RiskAssessment", "probability=lt0.85", "r1"),
]


@check(QUANTITY)
def test_number_and_quantity(oracle, resource_type, query, expected):
    assert ids(oracle, resource_type, query) == expected


def test_implicit_number_ranges():
    from decimal import Decimal

    assert parse_number("100") == (Decimal(100), Decimal("0.5"))
    assert parse_number("100.00") == (Decimal(100), Decimal("0.005"))
    # DECISION: 1e2 has one significant digit: [50, 150) (the R4 table's [95, 105) contradicts
    # its own "number of digits specified" rule; R5 corrected it)
    assert parse_number("1e2")[1] == Decimal(50)
    with pytest.raises(ValueError):
        parse_number("abc")


# ---- uri: search.html#uri ----------------------------------------------------------------

URI = [
    case("Patient", f"_profile={PROFILE}", "p1"),
    case("Patient", "_profile=http://fhir.hl7.org.vn/core/StructureDefinition", ""),
    # :below is a prefix on whole path segments: "vn-core-patient-extended" is not below
    # ".../vn-core-patient"
    case("Patient", "_profile:below=http://fhir.hl7.org.vn/core/StructureDefinition", "p1 p2"),
    case("Patient", "_profile:below=http://fhir.hl7.org.vn/core/StructureDefinition/", "p1 p2"),
    case("Patient", f"_profile:below={PROFILE}", "p1"),
    case("Patient", "_profile:below=http://fhir.hl7.org.vn/core/Struct", ""),
    # :above: the value is the search URI or one of its ancestors
    case("Patient", f"_profile:above={PROFILE}/v2", "p1"),
    case("Patient", "_profile:missing=true", "p3 p4"),
]


@check(URI)
def test_uri(oracle, resource_type, query, expected):
    assert ids(oracle, resource_type, query) == expected


# ---- chaining and reverse chaining: search.html#chaining, search.html#has -----------------

CHAINS = [
    case("Observation", "subject:Patient.name=nguyen", "o1 o3"),
    # the absolute reference on this server resolves too
    case("Observation", "subject:Patient.family=tran", "o2 o4"),
    case("Observation", f"patient.identifier={CCCD}|079190054321", "o2 o4"),
    # DECISION: without :Type every target type defining the parameter is tried
    case("Observation", "subject.name=nguyen", "o1 o3"),
    case("Observation", "subject:Patient.gender:missing=true", "o5"),
    # a reference to another server, or one with only an identifier, resolves to nothing
    case("Observation", "subject:Patient.name=le", "o5"),
    # two levels
    case("Observation", "encounter.subject:Patient.name=nguyen", "o1"),
    case("Observation", "encounter.patient.birthdate=1990", "o2"),
    # chained parameters "are applied independently to the target resource"
    case("Observation", "patient.family=nguyen&patient.given=dao", ""),
    case("Observation", "patient.family=nguyen,tran", "o1 o2 o3 o4"),
    case("Patient", "_has:Observation:patient:code=29463-7", "p1 p4"),
    case("Patient", f"_has:Observation:subject:code={LOINC}|8310-5", "p2"),
    case("Patient", "_has:Observation:patient:value-quantity=gt90", "p1 p2"),
    case("Patient", "_has:Observation:patient:code=29463-7,8310-5", "p1 p2 p4"),
    # "each _has parameter is processed independently"
    case(
        "Patient",
        "_has:Observation:patient:code=29463-7&_has:Observation:patient:code=8310-5",
        "",
    ),
    case("Patient", "_has:Encounter:subject:date=2020", "p1 p2"),
    # nested _has, and a chain inside _has
    case("Patient", "_has:Encounter:subject:_has:Observation:encounter:code=29463-7", "p1"),
    case("Patient", "_has:Observation:patient:encounter.date=eq2020-01-01", "p2"),
    case("Encounter", "_has:Observation:encounter:code:not=29463-7", "e2"),
]


@check(CHAINS)
def test_chains(oracle, resource_type, query, expected):
    assert ids(oracle, resource_type, query) == expected


# ---- _sort: search.html#sort -------------------------------------------------------------
#
# "the sort is based on the item in the set of multiple parameters that comes earliest in the
# specified sort order": ascending uses the lowest value, descending the highest.  DECISIONS:
# a date range sorts by its low end ascending, its high end descending; resources without a
# value come last either way; ties are broken by id.

SORT = [
    case("Patient", "", "p1 p2 p3 p4"),  # by id without _sort
    case("Patient", "_sort=birthdate", "p1 p2 p4 p3"),
    case("Patient", "_sort=-birthdate", "p4 p2 p1 p3"),
    # strings sort case- and accent-insensitively: le, nguyen, pham, tran
    case("Patient", "_sort=family", "p3 p1 p4 p2"),
    case("Patient", "_sort=-family", "p2 p4 p1 p3"),
    # several given names: lowest an, dao, ha, khoa; highest van, thu, thi, minh
    case("Patient", "_sort=given", "p1 p2 p4 p3"),
    case("Patient", "_sort=-given", "p1 p4 p2 p3"),
    # several keys: gender (p3 has none), then birth date descending
    case("Patient", "_sort=gender,-birthdate", "p4 p2 p1 p3"),
    case("Patient", "_sort=-_lastUpdated", "p2 p1 p4 p3"),
    case("Patient", "gender=female&_sort=-_id", "p4 p2"),
    # dates: low ends o1 2020-01-01, o2 = o6 2020-03-01 (tie: by id), o3 03-04T00:00,
    # o5 03:30, o8 09:59:59, o4 10:00, o7 2021-06-01; o9 has none
    case("Observation", "_sort=date", "o1 o2 o6 o3 o5 o8 o4 o7 o9"),
    # high ends: o7 open, o1 2021-01-01, o2 04-01, o6 03-16, o3 03-05, o4 10:00:01,
    # o8 10:00:00, o5 03:30:01
    case("Observation", "_sort=-date", "o7 o1 o2 o6 o3 o4 o8 o5 o9"),
    case("Observation", "_sort=value-quantity", "o2 o1 o8 o9 o3 o4 o5 o6 o7"),
    case("Observation", "code=29463-7&_sort=-value-quantity", "o3 o9 o1"),
    # tokens: by code in code point order; o9's lowest code is "27113001"
    case("Observation", "_sort=code,_id", "o9 o1 o3 o2 o6 o8 o4 o5 o7"),
    # references: "Type/id" (absolute ones on this base too), others as written; o6 has none
    case("Observation", "_sort=subject", "o8 o1 o3 o2 o4 o5 o9 o7 o6"),
]


@check(SORT)
def test_sort(oracle, resource_type, query, expected):
    assert ids(oracle, resource_type, query) == expected


# ---- errors and edge cases ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("resource_type", "query"),
    [
        ("Patient", "nickname=An"),  # unknown parameter
        ("Patient", "_count=10"),  # result parameters are not modelled
        ("Patient", "_content=An"),  # no FHIRPath expression
        ("Patient", "name:text=An"),  # unsupported modifier (search.html#modifiers)
        ("Patient", "gender:exact=male"),
        ("Patient", "birthdate:not=2000"),
        ("Patient", "gender:missing=maybe"),
        ("Patient", "birthdate=2020-13"),  # not a date
        ("Patient", "birthdate=xx2020"),
        ("Observation", "value-quantity=abc"),
        ("Observation", "value-quantity=1|kg"),  # number[|system|code] has 1 or 3 parts
        ("Observation", "code=a|b|c"),
        ("Observation", "code=a\\b"),  # "The parameter value xx\xx is illegal"
        ("Observation", "subject:Encounter=e1"),  # not a target of subject
        ("Observation", "subject:Patient=Group/g1"),
        ("Observation", "code.name=x"),  # only references chain
        ("Observation", "subject:identifier.name=x"),
        ("Observation", "subject.nickname=x"),
        ("Observation", "subject:Group.name=x"),
        ("Patient", "_has:Observation:code:code=x"),  # not a reference
        ("Patient", "_has:Observation:encounter:code=x"),  # cannot refer to a Patient
        ("Patient", "_has:Observation:patient"),
        ("Patient", "_sort=nickname"),
        ("Patient", "_sort=name:exact"),
        ("Unicorn", "name=x"),
    ],
)
def test_invalid_searches_raise(oracle, resource_type, query):
    with pytest.raises(ValueError):
        ids(oracle, resource_type, query)


def test_invalid_search_raises_even_without_data():
    with pytest.raises(ValueError):
        Oracle([]).search("Patient", [("nickname", "x")])


def test_ap_prefix_is_not_modelled(oracle):
    with pytest.raises(NotImplementedError):
        ids(oracle, "Observation", "date=ap2020")


def test_empty_values_are_ignored(oracle):
    # search.html#errors: "Empty parameters are not an error - they are just ignored"
    assert ids(oracle, "Patient", "name=") == ["p1", "p2", "p3", "p4"]
    assert ids(oracle, "Patient", "name=,tran") == ["p2"]
    assert ids(oracle, "Patient", "_sort=&gender=female") == ["p2", "p4"]
    with pytest.raises(ValueError):  # an empty value does not excuse a bad modifier
        ids(oracle, "Patient", "name:text=")


def test_other_resource_types_are_not_searched(oracle):
    assert ids(oracle, "Practitioner", "name=nguyen") == []
    assert ids(oracle, "Group", "") == ["g1"]


def test_the_caller_data_is_left_alone():
    resources = [{"resourceType": "Patient", "id": "x", "name": [{"family": "Võ"}]}]
    Oracle(resources).search("Patient", [("name", "vo")])
    assert resources == [{"resourceType": "Patient", "id": "x", "name": [{"family": "Võ"}]}]


def test_duplicate_ids_are_refused():
    with pytest.raises(ValueError):
        Oracle([{"resourceType": "Patient", "id": "x"}, {"resourceType": "Patient", "id": "x"}])


def test_fold():
    assert fold("Nguyễn Văn An") == "nguyen van an"
    assert fold("TRẦN THỊ ĐÀO") == "tran thi dao"
