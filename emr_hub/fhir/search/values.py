"""Search index values: the rows written for an extracted element, the same rules applied to
query values, and the matching rules of the R4 search page (http://hl7.org/fhir/R4/search.html).

Pure functions, no I/O; they run on the ingest path for every indexed element.

An element is ``(FHIR type name, JSON value)`` as :mod:`emr_hub.fhir.search.extract` returns it.
:func:`rows_for` turns one into the rows of its parameter type:

=========  ===========================  ==========================================================
type       rows                         built by
=========  ===========================  ==========================================================
token      :class:`TokenRow`            :func:`token_rows`; queries :func:`parse_token_query`
string     :class:`StringRow`           :func:`string_rows`; queries :func:`parse_string_query`
reference  :class:`ReferenceRow`        :func:`reference_rows`; :func:`parse_reference_query`
date       :class:`DateRange`           :func:`date_ranges`; :func:`parse_date_query`
number     :class:`QuantityRow`         :func:`number_rows`; :func:`parse_number_query`
quantity   :class:`QuantityRow`         :func:`quantity_rows`; :func:`parse_quantity_query`
uri        ``str``                      :func:`uri_rows`
=========  ===========================  ==========================================================

Values that cannot be read (validation refused them already) give no rows; malformed query
values raise :class:`ValueError` with a message fit for an OperationOutcome.

Date ranges are half-open: ``low`` inclusive, ``high`` exclusive, in UTC. The inequalities
each prefix stands for are spelled out on :func:`date_matches` and :func:`number_matches`, so
that the SQL query builder can state the same conditions on the ``low`` / ``high`` columns.

Where the specification leaves a choice, the choice is the one the differential oracle
(``tests/search/oracle.py``) makes, so that SQL results can be compared with it: dates without
an offset are local (:data:`LOCAL_ZONE`), an instant covers its last digit like any dateTime,
values stored in resources are exact numbers (only the search value has an implicit range),
``1e2`` has one significant digit, Money's currency is a code in ISO 4217, tokens and ``:exact``
compare code points as written.
"""

from __future__ import annotations

import calendar
import re
import unicodedata
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Context, Decimal, InvalidOperation
from functools import lru_cache
from typing import Any, Final, NamedTuple

from storage.json_codec import DecimalText

Element = tuple[str, Any]

PREFIXES: Final = ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap")
_PREFIX_SET: Final = frozenset(PREFIXES)

# --------------------------------------------------------------------------------- rows


@dataclass(frozen=True, slots=True)
class TokenRow:
    """One token: ``system|code``, and the text the ``:text`` modifier searches.

    ``code`` is stored as written (tokens compare case-sensitively). A row whose code is
    :data:`TEXT_ONLY` carries only ``display``: a CodeableConcept's ``text`` (or a text-only
    concept) that the ``:text`` modifier must find but no code search may match. Write such
    rows to the ``:text`` string rows only (:func:`token_text_rows` does that for all rows).
    """

    system: str | None
    code: str
    display: str | None = None


TEXT_ONLY: Final = ""
"""The ``code`` of a :class:`TokenRow` that only carries text for ``:text``."""


@dataclass(frozen=True, slots=True)
class StringRow:
    """One string value: ``normalized`` (see :func:`normalize`) for the default starts-with
    match and ``:contains``, ``exact`` (as written) for ``:exact``."""

    normalized: str
    exact: str


@dataclass(frozen=True, slots=True)
class ReferenceRow:
    """One reference. A local literal reference fills ``target_type`` / ``target_id``
    (``version`` from ``/_history/v``); any other absolute URL, canonical or uri fills ``url``
    (``version`` from ``|version`` or ``/_history/v``); ``Reference.identifier`` fills the
    ``identifier_*`` fields used by ``:identifier``."""

    target_type: str | None = None
    target_id: str | None = None
    url: str | None = None
    identifier_system: str | None = None
    identifier_value: str | None = None
    version: str | None = None


@dataclass(frozen=True, slots=True)
class DateRange:
    """The time a date value covers, in UTC: ``low`` inclusive, ``high`` exclusive, low < high.
    An open end is :data:`DATE_MIN` / :data:`DATE_MAX`."""

    low: datetime
    high: datetime


@dataclass(frozen=True, slots=True)
class QuantityRow:
    """A number or quantity: the stated ``value`` and the closed interval ``[low, high]`` the
    search compares. A stated value is exact, a point (``low == high == value``): R4 has the
    search value carry the implicit precision ("``100`` ... is actually searching for values in
    the range [99.5 ... 100.5)", "``lt100``: values that are less than exactly 100"). A Range
    is explicitly ``[low.value, high.value]``, an open side :data:`NUMBER_MIN` /
    :data:`NUMBER_MAX`; so is a Quantity with a ``comparator`` (``<5`` is ``[-Infinity, 5]``).
    """

    value: Decimal
    low: Decimal
    high: Decimal
    system: str | None = None
    code: str | None = None
    unit: str | None = None


# ----------------------------------------------------------------------------- helpers


def _text(value: Any) -> str | None:
    """A non-blank string, else None."""
    if isinstance(value, str) and value and not value.isspace():
        return value
    return None


def _list(value: Any) -> list[Any]:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def _unique(rows: list[Any]) -> list[Any]:
    return list(dict.fromkeys(rows)) if len(rows) > 1 else rows


_ESCAPED = re.compile(r"\\(.)", re.DOTALL)
_UNESCAPED_PIPE = re.compile(r"(?<!\\)((?:\\\\)*)\|")


def unescape(text: str) -> str:
    """Undo the search escapes ``\\,`` ``\\$`` ``\\|`` ``\\\\`` of one query value."""
    return _ESCAPED.sub(r"\1", text) if "\\" in text else text


def _split_pipes(text: str) -> list[str]:
    """Split a query value on its unescaped ``|`` and unescape the parts."""
    if "|" not in text:
        return [unescape(text)]
    parts: list[str] = []
    start = 0
    for match in _UNESCAPED_PIPE.finditer(text):
        end = match.end(1)
        parts.append(text[start:end])
        start = match.end()
    parts.append(text[start:])
    return [unescape(p) for p in parts]


def _split_prefix(text: str, kind: str) -> tuple[str, str]:
    head = text[:2]
    if head in _PREFIX_SET:
        if len(text) == 2:
            raise ValueError(f"The {kind} value is missing after the prefix {head!r}")
        return head, text[2:]
    if not text:
        raise ValueError(f"Empty {kind} value")
    return "eq", text


# ------------------------------------------------------------------------------ tokens

_STRINGISH: Final = frozenset(
    {"code", "string", "id", "uri", "url", "canonical", "oid", "uuid", "markdown"}
)
_NUMERIC: Final = frozenset({"integer", "positiveInt", "unsignedInt", "integer64", "decimal"})


def _coding_rows(coding: Any, out: list[TokenRow]) -> None:
    if not isinstance(coding, dict):
        return
    code = _text(coding.get("code"))
    display = _text(coding.get("display"))
    if code is not None:
        out.append(TokenRow(_text(coding.get("system")), code, display))
    elif display is not None:
        out.append(TokenRow(None, TEXT_ONLY, display))


def _concept_rows(concept: Any, out: list[TokenRow]) -> None:
    if not isinstance(concept, dict):
        return
    start = len(out)
    for coding in _list(concept.get("coding")):
        _coding_rows(coding, out)
    text = _text(concept.get("text"))
    if text is not None:
        folded = normalize(text)
        if all(row.display is None or normalize(row.display) != folded for row in out[start:]):
            out.append(TokenRow(None, TEXT_ONLY, text))


def _identifier_rows(identifier: Any, out: list[TokenRow]) -> None:
    if not isinstance(identifier, dict):
        return
    value = _text(identifier.get("value"))
    if value is None:
        return
    kind = identifier.get("type")
    display = _text(kind.get("text")) if isinstance(kind, dict) else None
    out.append(TokenRow(_text(identifier.get("system")), value, display))


def _contact_rows(contact: Any, out: list[TokenRow]) -> None:
    """ContactPoint: the value as written, no system (R4: "the URI portion is not used")."""
    if isinstance(contact, dict):
        value = _text(contact.get("value"))
        if value is not None:
            out.append(TokenRow(None, value))


def token_rows(element: Element) -> list[TokenRow]:
    """Token rows of an element, following the R4 token table:

    * Coding: ``system|code``, ``display`` for ``:text``;
    * CodeableConcept: each coding; ``text`` for ``:text`` (a :data:`TEXT_ONLY` row unless a
      coding's display already says the same);
    * Identifier: ``system|value``, ``type.text`` for ``:text`` (``:of-type`` is not indexed);
    * ContactPoint: ``value`` with no system;
    * code, string, id, uri, url, canonical, oid, uuid: the value, no system;
    * boolean: ``true`` / ``false``; integer and decimal: the number as written.

    Codes are kept as written: the spec compares tokens case-sensitively. (It asks for a
    case-insensitive match on ``string`` elements; that is the query builder's choice, the
    row keeps the original.) Empty values give nothing.
    """
    kind, value = element
    if value is None:
        return []
    out: list[TokenRow] = []
    if kind == "CodeableConcept":
        _concept_rows(value, out)
    elif kind == "Coding":
        _coding_rows(value, out)
    elif kind == "Identifier":
        _identifier_rows(value, out)
    elif kind == "ContactPoint":
        _contact_rows(value, out)
    elif kind == "boolean":
        if isinstance(value, bool):
            out.append(TokenRow(None, "true" if value else "false"))
        elif value in ("true", "false"):
            out.append(TokenRow(None, value))
    elif kind in _STRINGISH:
        text = _text(value)
        if text is not None:
            out.append(TokenRow(None, text))
    elif kind in _NUMERIC and _decimal(value) is not None:
        out.append(TokenRow(None, str(value)))
    return _unique(out)


def token_text_rows(rows: list[TokenRow]) -> list[StringRow]:
    """The string rows the ``:text`` modifier searches: each distinct display/text."""
    return _unique([StringRow(normalize(r.display), r.display) for r in rows if r.display])


@dataclass(frozen=True, slots=True)
class TokenQuery:
    """A parsed token value: ``code`` (any system), ``system|code``, ``|code`` (no system:
    ``system_given`` and ``system`` None) or ``system|`` (any code: ``code`` None)."""

    system: str | None
    code: str | None
    system_given: bool


def parse_token_query(text: str) -> TokenQuery:
    """``[code]``, ``[system]|[code]``, ``|[code]`` or ``[system]|``, with the search escapes.
    The first unescaped ``|`` separates system and code."""
    parts = _split_pipes(text)
    if len(parts) == 1:
        if not parts[0]:
            raise ValueError("Empty token value")
        return TokenQuery(None, parts[0], system_given=False)
    system, code = parts[0] or None, "|".join(parts[1:]) or None
    if system is None and code is None:
        raise ValueError("A token value needs a system, a code or both around '|'")
    return TokenQuery(system, code, system_given=True)


def token_matches(query: TokenQuery, row: TokenRow) -> bool:
    """Whether a token row matches (the default, no modifier). Text-only rows never do."""
    if row.code == TEXT_ONLY:
        return False
    if query.code is not None and row.code != query.code:
        return False
    return not query.system_given or row.system == query.system


# ----------------------------------------------------------------------------- strings


def normalize(text: str) -> str:
    """The form string search compares: lower case, ``đ`` read as ``d``, combining marks
    (accents, Vietnamese tone marks) removed after NFD, whitespace collapsed and trimmed.
    ``normalize("Nguyễn Thị Đào") == "nguyen thi dao"``.

    R4: string search "is insensitive to casing and included combining characters". The page
    also says punctuation "should" be ignored; it is kept, as the oracle keeps it, so that a
    query with the punctuation of the value finds it. The result may contain ``%``, ``_`` and
    ``\\``: escape them for LIKE.
    """
    if text.isascii():
        return " ".join(text.lower().split())
    decomposed = unicodedata.normalize("NFD", text.lower().replace("đ", "d"))
    return " ".join("".join(ch for ch in decomposed if not unicodedata.combining(ch)).split())


_NAME_PARTS: Final = ("family", "given", "prefix", "suffix", "text")
_ADDRESS_PARTS: Final = ("line", "city", "district", "state", "postalCode", "country", "text")


def _string_values(value: Any, out: list[StringRow], word_starts: bool) -> None:
    """Rows of one name or address part, or of a string primitive."""
    text = _text(value)
    if text is None:
        return
    folded = normalize(text)
    out.append(StringRow(folded, text))
    if word_starts and " " in folded:
        words = folded.split(" ")
        out.extend(StringRow(" ".join(words[i:]), text) for i in range(1, len(words)))


def string_rows(element: Element, *, word_starts: bool = False) -> list[StringRow]:
    """String rows of an element: string-like primitives (string, markdown, code, id, uri ...);
    each part of a HumanName (family, every given, prefix, suffix, text) and of an Address
    (every line, city, district, state, postalCode, country, text) as its own value, so that
    ``given=Thi`` finds given ``Thị`` of "Nguyễn Thị Đào". ``exact`` is the value as written.

    The default search is "equals or starts with" the whole value, after :func:`normalize`.
    ``word_starts`` (off by default, as in the oracle) adds a row for each later word of a
    several-word value, the part-wise matching R4 suggests for family names ("Quinones"
    finding "Carreno Quinones"): given "Thị Đào" is then also found by ``Dao``. Those rows
    keep the whole part as ``exact``, so ``:exact`` and ``:contains`` find nothing more.
    """
    kind, value = element
    if value is None:
        return []
    out: list[StringRow] = []
    if kind in ("HumanName", "Address"):
        if not isinstance(value, dict):
            return []
        for part in _NAME_PARTS if kind == "HumanName" else _ADDRESS_PARTS:
            for item in _list(value.get(part)):
                _string_values(item, out, word_starts)
    elif kind in _STRINGISH:
        _string_values(value, out, word_starts)
    return _unique(out)


def parse_string_query(text: str, *, exact: bool = False) -> StringRow:
    """A string query value, unescaped, in both forms. Unless for ``:exact``, a value with
    nothing left after :func:`normalize` (only spaces) is refused: it would match every
    value."""
    raw = unescape(text)
    if not raw:
        raise ValueError("Empty string value")
    row = StringRow(normalize(raw), raw)
    if not exact and not row.normalized:
        raise ValueError(f"The string value {text!r} has nothing to match but spaces")
    return row


def string_matches(modifier: str | None, query: StringRow, row: StringRow) -> bool:
    """Default: starts with (normalized); ``contains``: substring (normalized); ``exact``."""
    if modifier == "exact":
        return row.exact == query.exact
    if modifier == "contains":
        return query.normalized in row.normalized
    return row.normalized.startswith(query.normalized)


# -------------------------------------------------------------------------- references

_TYPE = r"[A-Z][A-Za-z]{1,63}"
_ID = r"[A-Za-z0-9\-.]{1,64}"
_RELATIVE = re.compile(rf"({_TYPE})/({_ID})(?:/_history/({_ID}))?")
_HISTORY_TAIL = re.compile(rf"(.*/{_TYPE}/{_ID})/_history/({_ID})")
_ID_ONLY = re.compile(_ID)
_ABSOLUTE = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*:")


def _literal(text: str, base_url: str | None) -> ReferenceRow | None:
    """A literal reference string as row fields; None for a contained ``#id``."""
    if text.startswith("#"):
        return None
    match = _RELATIVE.fullmatch(text)
    if match:
        return ReferenceRow(match[1], match[2], version=match[3])
    if base_url and _ABSOLUTE.match(text):
        base = base_url.rstrip("/") + "/"
        if text.startswith(base):
            match = _RELATIVE.fullmatch(text[len(base) :])
            if match:
                return ReferenceRow(match[1], match[2], version=match[3])
    return _url(text)


def _url(text: str) -> ReferenceRow:
    """An absolute URL, canonical or anything unparsed, kept whole in ``url`` except for a
    ``|version`` (canonical) or ``/_history/v`` (literal) suffix."""
    url, bar, version = text.partition("|")
    if bar:
        return ReferenceRow(url=url, version=version or None)
    match = _HISTORY_TAIL.fullmatch(text)
    if match:
        return ReferenceRow(url=match[1], version=match[2])
    return ReferenceRow(url=text)


def reference_rows(element: Element, base_url: str | None = None) -> list[ReferenceRow]:
    """Reference rows: for a Reference, the literal ``reference`` (``Type/id``,
    ``Type/id/_history/v``, an absolute URL under ``base_url`` read as local ``Type/id``,
    another absolute URL or urn in ``url``; a contained ``#id`` is skipped) together with its
    ``identifier`` (and ``type`` when only the identifier is given); for canonical / uri / url
    elements the URL in ``url`` and its ``|version`` in ``version``."""
    kind, value = element
    if value is None:
        return []
    if kind == "Reference":
        if not isinstance(value, dict):
            return []
        reference = _text(value.get("reference"))
        row = _literal(reference, base_url) if reference else None
        identifier = value.get("identifier")
        if isinstance(identifier, dict) and _text(identifier.get("value")):
            fields = {
                "identifier_system": _text(identifier.get("system")),
                "identifier_value": identifier["value"],
            }
            if row is None:
                row = ReferenceRow(target_type=_text(value.get("type")), **fields)
            else:
                row = ReferenceRow(
                    row.target_type, row.target_id, row.url, version=row.version, **fields
                )
        return [row] if row is not None else []
    if kind in ("canonical", "uri", "url", "oid", "uuid"):
        text = _text(value)
        return [_url(text)] if text else []
    return []


def parse_reference_query(text: str, base_url: str | None = None) -> ReferenceRow:
    """A reference query value as the row fields it must match (None: any): ``[id]``,
    ``[type]/[id]`` (optionally ``/_history/v``), a URL under ``base_url`` (read as local),
    any other absolute URL (``|version`` split off for canonicals). The ``:identifier``
    modifier takes a token value instead: :func:`parse_token_query`."""
    raw = unescape(text)
    if not raw:
        raise ValueError("Empty reference value")
    if _ID_ONLY.fullmatch(raw):
        return ReferenceRow(target_id=raw)
    if _ABSOLUTE.match(raw):
        row = _literal(raw, base_url)
        assert row is not None  # only "#..." gives None
        return row
    match = _RELATIVE.fullmatch(raw)
    if match is None:
        raise ValueError(f"Not a reference: {text!r} (expected an id, Type/id or an absolute URL)")
    return ReferenceRow(match[1], match[2], version=match[3])


# --------------------------------------------------------------------------------- uris


def uri_rows(element: Element) -> list[str]:
    """The value of a uri-like element (uri, url, canonical, oid, uuid, string, code, id),
    as written: uri search matches the whole URI, case-sensitively."""
    kind, value = element
    if kind in _STRINGISH:
        text = _text(value)
        return [text] if text else []
    return []


# -------------------------------------------------------------------------------- dates

LOCAL_ZONE: Final = timezone(timedelta(hours=7), "Asia/Ho_Chi_Minh")
"""The hub's time zone, for dates and times written without one (R4: "Where both search
parameters and resource element date times do not have time zones, the servers local time
zone should be assumed"). Vietnam keeps +07:00 all year; a fixed offset rather than the tz
database keeps the index independent of tzdata, and reads old birth dates the way they are
used today (the tz database gives Asia/Ho_Chi_Minh +08:00 for most of 1955-1975)."""

DATE_MIN: Final = datetime(1, 1, 1, tzinfo=UTC)
"""The low end of a range open at its start (a Period without ``start``)."""
DATE_MAX: Final = datetime.max.replace(tzinfo=UTC)
"""The high end of a range open at its end (a Period without ``end``)."""

_US: Final = timedelta(microseconds=1)
_DAY_US: Final = 86_400_000_000
_MAX_US: Final = (DATE_MAX - DATE_MIN) // _US
_LOCAL_US: Final = (LOCAL_ZONE.utcoffset(None) or timedelta()) // _US

_DATE = re.compile(
    r"(?P<y>\d{4})(?:-(?P<m>\d{2})(?:-(?P<d>\d{2})"
    r"(?:T(?P<H>\d{2}):(?P<M>\d{2})(?::(?P<S>\d{2})(?:\.(?P<f>\d+))?)?"
    r"(?P<tz>Z|[+-]\d{2}:\d{2})?)?)?)?"
)
_DATE_FORMS = "YYYY, YYYY-MM, YYYY-MM-DD or YYYY-MM-DDThh:mm[:ss[.fff]][Z|+hh:mm|-hh:mm]"


def _micros(text: str) -> tuple[int, int]:
    """[low, high) of a date/dateTime/instant in microseconds since 0001-01-01T00:00Z,
    unclamped."""
    match = _DATE.fullmatch(text)
    if match is None:
        raise ValueError(f"Not a FHIR date or dateTime: {text!r} (expected {_DATE_FORMS})")
    year = int(match["y"])
    if year == 0:
        raise ValueError(f"Year 0000 does not exist: {text!r}")
    if match["m"] is None:
        first = date(year, 1, 1).toordinal()
        return _zoned(first, first + 365 + calendar.isleap(year), 0, 0, None)
    month = int(match["m"])
    if not 1 <= month <= 12:
        raise ValueError(f"Month {month:02d} is out of range in {text!r}")
    days = calendar.monthrange(year, month)[1]
    if match["d"] is None:
        first = date(year, month, 1).toordinal()
        return _zoned(first, first + days, 0, 0, None)
    day = int(match["d"])
    if not 1 <= day <= days:
        raise ValueError(f"Day {day:02d} is out of range for {year:04d}-{month:02d} in {text!r}")
    ordinal = date(year, month, day).toordinal()
    if match["H"] is None:
        return _zoned(ordinal, ordinal + 1, 0, 0, None)
    hour, minute = int(match["H"]), int(match["M"])
    if hour > 23 or minute > 59:
        raise ValueError(f"Time {hour:02d}:{minute:02d} is out of range in {text!r}")
    clock = (hour * 3600 + minute * 60) * 1_000_000
    width = 60_000_000
    if match["S"] is not None:
        second = int(match["S"])
        if second > 60:  # 60: a leap second
            raise ValueError(f"Second {second:02d} is out of range in {text!r}")
        clock += second * 1_000_000
        width = 1_000_000
        fraction = match["f"]
        if fraction:
            clock += int(fraction[:6].ljust(6, "0"))
            width = 10 ** max(6 - len(fraction), 0)
    return _zoned(ordinal, ordinal, clock, clock + width, match["tz"])


def _zoned(first_day: int, end_day: int, start: int, end: int, zone: str | None) -> tuple[int, int]:
    if zone is None:
        offset = _LOCAL_US
    elif zone == "Z":
        offset = 0
    else:
        hours, minutes = int(zone[1:3]), int(zone[4:6])
        if hours > 14 or minutes > 59:
            raise ValueError(f"Time zone offset {zone} is out of range")
        offset = (hours * 60 + minutes) * 60_000_000 * (-1 if zone[0] == "-" else 1)
    return (
        (first_day - 1) * _DAY_US + start - offset,
        (end_day - 1) * _DAY_US + end - offset,
    )


def _range(low: int, high: int) -> DateRange:
    """Clamp into [DATE_MIN, DATE_MAX], keeping low < high."""
    low = min(max(low, 0), _MAX_US - 1)
    high = min(max(high, low + 1), _MAX_US)
    return DateRange(DATE_MIN + low * _US, DATE_MIN + high * _US)


@lru_cache(maxsize=16384)
def _value_range(text: str) -> DateRange | None:
    try:
        return _range(*_micros(text))
    except ValueError:
        return None


def _period_range(period: Any) -> DateRange | None:
    if not isinstance(period, dict):
        return None
    start, end = _text(period.get("start")), _text(period.get("end"))
    if start is None and end is None:
        return None
    low = high = None
    if start is not None:
        low = _value_range(start)
        if low is None:
            return None
    if end is not None:
        high = _value_range(end)
        if high is None:
            return None
    top = DATE_MAX if high is None else high.high
    if low is not None and top < low.high:  # end before start: keep at least the start
        top = low.high
    return DateRange(DATE_MIN if low is None else low.low, top)


def date_ranges(element: Element) -> list[DateRange]:
    """The range a date element covers, in UTC, ``high`` exclusive (a list of at most one).

    * date / dateTime / instant: the year, month, day, minute, second or fraction written
      (``2020`` is 2020-01-01T00:00 to 2021-01-01T00:00 local time; ``…T10:00:05.123+07:00``
      is one millisecond); without a time zone, in :data:`LOCAL_ZONE`. An instant covers its
      last digit like a dateTime, as in the oracle (R4 calls an instant "an interval with an
      effective width of 0"; the two readings differ only within that last digit);
    * Period: from the start's low to the end's high (the end at its own precision); a
      missing start is :data:`DATE_MIN`, a missing end :data:`DATE_MAX`;
    * Timing: from the earliest to the latest of its ``event`` values and
      ``repeat.boundsPeriod`` (R4: "the specified scheduling details are ignored and only the
      outer limits matter").

    Age and Duration are quantities, not dates. Unreadable values give [].
    """
    kind, value = element
    if value is None:
        return []
    found: DateRange | None = None
    if kind in ("date", "dateTime", "instant"):
        text = _text(value)
        found = _value_range(text) if text else None
    elif kind == "Period":
        found = _period_range(value)
    elif kind == "Timing" and isinstance(value, dict):
        found = _timing_range(value)
    return [found] if found else []


def _timing_range(timing: dict[str, Any]) -> DateRange | None:
    ranges: list[DateRange] = []
    for event in _list(timing.get("event")):
        text = _text(event)
        found = _value_range(text) if text else None
        if found is None:
            return None
        ranges.append(found)
    repeat = timing.get("repeat")
    if isinstance(repeat, dict) and repeat.get("boundsPeriod") is not None:
        found = _period_range(repeat["boundsPeriod"])
        if found is None:
            return None
        ranges.append(found)
    if not ranges:
        return None
    return DateRange(min(r.low for r in ranges), max(r.high for r in ranges))


_SPACED_OFFSET = re.compile(r"(T\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?) (\d{2}:\d{2})$")


def parse_date_query(text: str) -> tuple[str, DateRange]:
    """``[prefix]value``: the prefix (``eq`` when absent) and the range the value covers at
    its precision, by the rules of :func:`date_ranges` (no zone: :data:`LOCAL_ZONE`).

    ``2020-03-04T10:00+07:00`` is a minute. A space where the ``+`` of an offset should be
    (an unescaped ``+`` in a query string decodes to a space) is read as ``+``.
    """
    prefix, rest = _split_prefix(text, "date")
    rest = _SPACED_OFFSET.sub(r"\1+\2", rest)
    return prefix, _range(*_micros(rest))


def approximate_range(query: DateRange, now: datetime | None = None) -> DateRange:
    """The query range widened for ``ap``: each end moves out by 10% of its distance from
    now (R4: "the recommended value for the approximation is ... for a date, 10% of the gap
    between now and the date"). A query about today is barely widened, one ten years
    back by a year on each side."""
    now = now or datetime.now(UTC)
    try:
        low = query.low - abs(now - query.low) / 10
    except OverflowError:
        low = DATE_MIN
    try:
        high = query.high + abs(now - query.high) / 10
    except OverflowError:
        high = DATE_MAX
    return DateRange(max(low, DATE_MIN), min(high, DATE_MAX))


def date_matches(
    prefix: str, query: DateRange, value: DateRange, *, now: datetime | None = None
) -> bool:
    """Whether a value range matches a date query with this prefix, by the R4 prefix table.

    Value ``[v.low, v.high)`` and query ``[q.low, q.high)`` are both half-open and non-empty;
    "the range above the query" is ``[q.high, ∞)``, "below" is ``(-∞, q.low)``.

    ====  ===============================================  ===================================
    eq    the query range fully contains the value range   ``q.low <= v.low AND v.high <= q.high``
    ne    ... does not fully contain it                    ``v.low < q.low OR v.high > q.high``
    gt    the range above the query overlaps the value     ``v.high > q.high``
    lt    the range below the query overlaps the value     ``v.low < q.low``
    ge    gt, or eq                                        ``v.high > q.high OR v.low >= q.low``
    le    lt, or eq                                        ``v.low < q.low OR v.high <= q.high``
    sa    no overlap, the value lies above the query       ``v.low >= q.high``
    eb    no overlap, the value lies below the query       ``v.high <= q.low``
    ap    the value overlaps the widened query ``a``       ``v.low < a.high AND v.high > a.low``
    ====  ===============================================  ===================================

    (``ge`` is ``v.high > q.high OR (q.low <= v.low AND v.high <= q.high)``, which reduces to
    the form shown; ``le`` likewise.) ``a`` is :func:`approximate_range` of the query at
    ``now`` (default: the current time).
    """
    if prefix == "eq":
        return query.low <= value.low and value.high <= query.high
    if prefix == "ne":
        return value.low < query.low or value.high > query.high
    if prefix == "gt":
        return value.high > query.high
    if prefix == "lt":
        return value.low < query.low
    if prefix == "ge":
        return value.high > query.high or value.low >= query.low
    if prefix == "le":
        return value.low < query.low or value.high <= query.high
    if prefix == "sa":
        return value.low >= query.high
    if prefix == "eb":
        return value.high <= query.low
    if prefix == "ap":
        wide = approximate_range(query, now)
        return value.low < wide.high and value.high > wide.low
    raise ValueError(f"Unknown prefix {prefix!r}")


# ---------------------------------------------------------------------- numbers, quantities

NUMBER_MIN: Final = Decimal("-Infinity")
"""The low end of a Range without ``low``, or of a ``<`` / ``<=`` quantity (PostgreSQL
numeric and SQLite both store infinities)."""
NUMBER_MAX: Final = Decimal("Infinity")
"""The high end of a Range without ``high``, or of a ``>`` / ``>=`` quantity."""

CURRENCY_SYSTEM: Final = "urn:iso:std:iso:4217"
"""The system of a Money row, whose ``code`` is the currency."""

_QUANTITY_TYPES: Final = frozenset(
    {"Quantity", "Age", "Count", "Distance", "Duration", "SimpleQuantity", "MoneyQuantity"}
)
_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
_MAX_EXPONENT: Final = 1000
_MAX_DIGITS: Final = 200
_EXACT = Context(prec=2 * _MAX_DIGITS + 2 * _MAX_EXPONENT, Emax=10**6, Emin=-(10**6))


def _decimal(value: Any) -> Decimal | None:
    """A JSON number (int, float, Decimal) or its text as a finite Decimal of sane size; a
    decimal read with its literal (:class:`~storage.json_codec.DecimalText`) from that literal,
    digits past a float's precision included."""
    if isinstance(value, bool):
        return None
    try:
        if isinstance(value, int):
            number = Decimal(value)
        elif isinstance(value, DecimalText):
            number = Decimal(value.text)
        elif isinstance(value, float):
            number = Decimal(repr(value))  # the shortest text that reads back as this float
        elif isinstance(value, Decimal):
            number = value
        elif isinstance(value, str) and _NUMBER.fullmatch(value):
            number = Decimal(value)
        else:
            return None
    except InvalidOperation:  # an exponent past what Decimal holds at all (0E1000000000000000000)
        return None
    if not number.is_finite():
        return None
    _sign, digits, exponent = number.as_tuple()
    assert isinstance(exponent, int)
    if len(digits) > _MAX_DIGITS or abs(exponent) > _MAX_EXPONENT:
        return None
    return number


def implicit_range(number: Decimal) -> tuple[Decimal, Decimal]:
    """``[low, high)`` a decimal's precision implies: half a unit of its last digit either
    side. ``100`` is [99.5, 100.5), ``100.00`` [99.995, 100.005), ``1.00e2`` [99.5, 100.5)
    and ``1e2`` [50, 150): R4 counts "the digits specified ..., excluding leading zeros", so
    ``1e2`` has one significant digit (its table's "[95 ... 105)" contradicts that rule)."""
    exponent = number.as_tuple().exponent
    assert isinstance(exponent, int)
    half = Decimal((0, (5,), exponent - 1))
    return _EXACT.subtract(number, half), _EXACT.add(number, half)


def _quantity_row(value: Any, kind: str) -> QuantityRow | None:
    if not isinstance(value, dict):
        return None
    number = _decimal(value.get("value"))
    if number is None:
        return None
    low = high = number
    comparator = value.get("comparator")
    if comparator in ("<", "<="):
        low = NUMBER_MIN
    elif comparator in (">", ">="):
        high = NUMBER_MAX
    if kind == "Money":
        return QuantityRow(number, low, high, CURRENCY_SYSTEM, _text(value.get("currency")))
    return QuantityRow(
        number,
        low,
        high,
        _text(value.get("system")),
        _text(value.get("code")),
        _text(value.get("unit")),
    )


def _range_row(value: Any, with_units: bool) -> QuantityRow | None:
    if not isinstance(value, dict):
        return None
    low = _quantity_row(value.get("low"), "Quantity")
    high = _quantity_row(value.get("high"), "Quantity")
    if low is None and high is None:
        return None
    units = low or high
    assert units is not None
    return QuantityRow(
        units.value,
        NUMBER_MIN if low is None else low.value,
        NUMBER_MAX if high is None else high.value,
        units.system if with_units else None,
        units.code if with_units else None,
        units.unit if with_units else None,
    )


def quantity_rows(element: Element) -> list[QuantityRow]:
    """Rows of a quantity element: Quantity, Age, Duration, Count, Distance, SimpleQuantity,
    MoneyQuantity (the value as a point; system, code, unit; a ``comparator`` opens the
    interval on its side), Money (``code`` is the currency, system :data:`CURRENCY_SYSTEM`)
    and Range (``[low.value, high.value]`` with the units of ``low``, or of ``high`` when
    there is no low; ``value`` is the first bound given). Numbers go to :func:`number_rows`.
    """
    kind, value = element
    if value is None:
        return []
    if kind in _QUANTITY_TYPES or kind == "Money":
        row = _quantity_row(value, kind)
    elif kind == "Range":
        row = _range_row(value, with_units=True)
    else:
        return number_rows(element)
    return [row] if row else []


def number_rows(element: Element) -> list[QuantityRow]:
    """Rows of a number element: integer, positiveInt, unsignedInt, decimal as a point;
    Range ``[low.value, high.value]`` without units; quantities by :func:`quantity_rows`."""
    kind, value = element
    if value is None:
        return []
    if kind in _NUMERIC:
        number = _decimal(value)
        return [QuantityRow(number, number, number)] if number is not None else []
    if kind == "Range":
        row = _range_row(value, with_units=False)
        return [row] if row else []
    if kind in _QUANTITY_TYPES or kind == "Money":
        return quantity_rows(element)
    return []


class NumberQuery(NamedTuple):
    """A parsed number query: prefix, the number, and its implicit range ``[low, high)``."""

    prefix: str
    number: Decimal
    low: Decimal
    high: Decimal


class QuantityQuery(NamedTuple):
    """A parsed quantity query: as :class:`NumberQuery`, plus ``system`` and ``code`` (None
    when not given; with ``number||code`` the code may match the row's code or unit)."""

    prefix: str
    number: Decimal
    low: Decimal
    high: Decimal
    system: str | None
    code: str | None


def _parse_number(text: str, kind: str) -> NumberQuery:
    prefix, rest = _split_prefix(text, kind)
    if not _NUMBER.fullmatch(rest):
        raise ValueError(
            f"Not a number: {rest!r} in {text!r} (expected [prefix]number, e.g. ge5.4 or 1e2)"
        )
    number = _decimal(rest)
    if number is None:
        raise ValueError(f"The number {rest!r} is too large or too precise")
    low, high = implicit_range(number)
    return NumberQuery(prefix, number, low, high)


def parse_number_query(text: str) -> NumberQuery:
    """``[prefix]number`` (decimal or exponential form): prefix (default ``eq``), the number
    and its implicit range, e.g. ``100`` -> [99.5, 100.5). Raises ValueError if malformed."""
    return _parse_number(text, "number")


def parse_quantity_query(text: str) -> QuantityQuery:
    """``[prefix]number``, ``[prefix]number|system|code``, ``[prefix]number||code`` or
    ``[prefix]number|system|`` (search escapes allowed in system and code)."""
    parts = _split_pipes(text)
    if len(parts) not in (1, 3):
        raise ValueError(
            f"Not a quantity: {text!r} (expected number, number|system|code or number||code)"
        )
    number = _parse_number(parts[0], "quantity")
    system, code = (parts[1] or None, parts[2] or None) if len(parts) == 3 else (None, None)
    return QuantityQuery(*number, system, code)


def approximate_numbers(query: NumberQuery | QuantityQuery) -> tuple[Decimal, Decimal]:
    """``[low, high)`` for ``ap``: the number ±10% (R4's recommendation), never narrower than
    its implicit range (``ap0`` is [-0.5, 0.5))."""
    tenth = _EXACT.multiply(query.number.copy_abs(), Decimal("0.1"))
    return (
        min(query.low, _EXACT.subtract(query.number, tenth)),
        max(query.high, _EXACT.add(query.number, tenth)),
    )


def number_matches(prefix: str, query: NumberQuery | QuantityQuery, row: QuantityRow) -> bool:
    """Whether a number or quantity row matches (units aside), by the R4 prefix table.

    The row is the closed interval ``[L, H]`` = ``[row.low, row.high]`` (a point for a stated
    value). ``eq``, ``ne`` and ``ap`` use the query's implicit range ``[ql, qh)``
    (``query.low``, ``query.high``); for ``gt lt ge le sa eb`` "the implicit precision of the
    number is ignored": the query is the exact number ``n`` (``query.number``).

    ====  =================================  ==============================================
    eq    ``ql <= L AND H < qh``             the query range contains the row
    ne    ``NOT (ql <= L AND H < qh)``       i.e. ``L < ql OR H >= qh``
    gt    ``H > n``                          the row reaches above n
    lt    ``L < n``                          the row reaches below n
    ge    ``H >= n``
    le    ``L <= n``
    sa    ``L > n``                          the row starts after n
    eb    ``H < n``                          the row ends before n
    ap    ``L < ah AND H >= al``             ``[al, ah)``: :func:`approximate_numbers`
    ====  =================================  ==============================================

    For a point these are the plain comparisons of the stated value: ``gt100`` is "greater
    than exactly 100", ``eq100`` is 99.5 <= v < 100.5, ``eq100.0`` finds 100 but not 100.4.
    """
    low, high = row.low, row.high
    if prefix in ("eq", "ne"):
        inside = query.low <= low and high < query.high
        return inside if prefix == "eq" else not inside
    n = query.number
    if prefix == "gt":
        return high > n
    if prefix == "lt":
        return low < n
    if prefix == "ge":
        return high >= n
    if prefix == "le":
        return low <= n
    if prefix == "sa":
        return low > n
    if prefix == "eb":
        return high < n
    if prefix == "ap":
        wide_low, wide_high = approximate_numbers(query)
        return low < wide_high and high >= wide_low
    raise ValueError(f"Unknown prefix {prefix!r}")


def quantity_matches(prefix: str, query: QuantityQuery, row: QuantityRow) -> bool:
    """:func:`number_matches`, and the units: with a system, the row's system and (if given)
    code; with only a code (``number||code``), the row's code or its unit (R4: "either the
    code or the stated human unit"); neither: any unit."""
    if query.system is not None:
        if row.system != query.system or (query.code is not None and row.code != query.code):
            return False
    elif query.code is not None and query.code not in (row.code, row.unit):
        return False
    return number_matches(prefix, query, row)


# ------------------------------------------------------------------------------ dispatch


def rows_for(param_type: str, element: Element, base_url: str | None = None) -> list[Any]:
    """The rows of ``element`` for a search parameter of ``param_type``: TokenRow,
    StringRow, ReferenceRow, DateRange, QuantityRow (number and quantity) or str (uri).
    Composite and special parameters index nothing here."""
    if param_type == "token":
        return token_rows(element)
    if param_type == "string":
        return string_rows(element)
    if param_type == "reference":
        return reference_rows(element, base_url)
    if param_type == "date":
        return date_ranges(element)
    if param_type == "number":
        return number_rows(element)
    if param_type == "quantity":
        return quantity_rows(element)
    if param_type == "uri":
        return uri_rows(element)
    if param_type in ("composite", "special"):
        return []
    raise ValueError(f"Unknown search parameter type {param_type!r}")
