"""The hub's identifier systems and the shape rules for Vietnamese identifiers (domain.md)."""

from __future__ import annotations

import json
import re
from functools import cache
from importlib import resources

CCCD = "http://fhir.hl7.org.vn/core/sid/cccd"
FACILITY_CODE = "http://fhir.hl7.org.vn/core/sid/ma-cskcb"
# The hub writes insurance numbers under the VN Core IG system and accepts the 2021 draft's.
INSURANCE = "http://fhir.hl7.org.vn/core/sid/bhyt"
INSURANCE_2021 = "http://fhir.ehealth.gov.vn/core/sid/insurance_number"
PRACTISING_LICENCE = "http://fhir.hl7.org.vn/core/sid/cchn"
EPISODE_LINK = "http://fhir.hl7.org.vn/core/sid/ma-lk"

_CCCD_SHAPE = re.compile(r"\d{12}")
_FACILITY_SHAPE = re.compile(r"[0-9A-Za-z]{5}")
_INSURANCE_SHAPE = re.compile(r"[A-Z]{2}[1-5]\d{12}|\d{10}|\d{12}")


@cache
def cccd_province_codes() -> frozenset[str]:
    text = resources.files("emr_hub.data").joinpath("cccd_provinces.json").read_text("utf-8")
    return frozenset(json.loads(text)["codes"])


def cccd_birth_year(value: str) -> int:
    """Year of birth from digits 4-6: the century digit (0/1 → 1900s, 2/3 → 2000s ...) + year."""
    century = 1900 + 100 * (int(value[3]) // 2)
    return century + int(value[4:6])


def cccd_problem(value: str, birth_date: str | None = None) -> str | None:
    """Why ``value`` is not a well-formed CCCD, or None when it is."""
    if not _CCCD_SHAPE.fullmatch(value):
        return "a CCCD is exactly 12 digits"
    if value[:3] not in cccd_province_codes():
        return f"a CCCD starts with a province code; {value[:3]!r} is not one"
    born = birth_date[:4] if birth_date else ""
    if born.isdigit() and len(born) == 4 and int(born) != cccd_birth_year(value):
        return "the CCCD's century and year digits do not match Patient.birthDate"
    return None


def identifier_problem(system: str, value: str, birth_date: str | None = None) -> str | None:
    """Shape check for the Vietnamese identifier systems; other systems are not checked."""
    if system == CCCD:
        return cccd_problem(value, birth_date)
    if system == FACILITY_CODE and not _FACILITY_SHAPE.fullmatch(value):
        return "a facility code (mã cơ sở KCB) is 5 letters or digits"
    if system in (INSURANCE, INSURANCE_2021) and not _INSURANCE_SHAPE.fullmatch(value):
        return (
            "an insurance card number is 15 characters (2-letter group, benefit level 1-5, "
            "2-digit province, 10-digit social-insurance number), the 10 digits alone, or the "
            "12-digit CCCD (Decree 188/2025; formats as in the VN Core IG NamingSystem vn-bhyt-ns)"
        )
    return None
