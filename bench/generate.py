"""Multiply the Synthea patient Bundles into any number of distinct patients.

Copy ``i`` of the data set is one of the patient transaction Bundles of
``../shared/data/synthea-r4`` (the ``00-*`` Organization/Practitioner Bundles are not used: every
patient Bundle carries the Organizations and Practitioners it references) with:

- new ``urn:uuid:`` fullUrls, resource ids and every reference to them, wherever the old uuid
  appears in a string (``reference``, narrative, ...);
- new Patient identifier values (the Synthea ones keep their systems, with values unique per
  copy) plus a valid CCCD under ``http://fhir.hl7.org.vn/core/sid/cccd``, consistent with the
  copy's birthDate (century and year digits) and gender (sex digit);
- Vietnamese names for the Patient (``family`` + ``given`` [middle, given] + ``text``), the
  mother's maiden name extension, and the Practitioners;
- every date, dateTime and instant shifted by a whole number of days drawn per copy, keeping
  each value's precision, time of day and offset (only the date part changes). Shifted dates
  stay between 1900-01-01 and ``LATEST``.

Everything is drawn from ``random.Random`` seeded with (``--seed``, copy index), so copy ``i``
is the same whatever range is generated: a data set of 100,000 resources is the first part of
the one of 1,000,000 with the same seed.

Speed: each template Bundle is parsed and walked once; the values that change are replaced by
markers and the Bundle is serialised once into constant byte chunks. A copy is then a table
of new values (one per distinct uuid, day, name ...) and one ``b"".join``.

Usage (see bench/README.md)::

    .venv/bin/python bench/generate.py --target 1000000 --seed 1            # time it only
    .venv/bin/python bench/generate.py --target 100000 --out /tmp/bundles    # write files
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import random
import re
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import orjson

REPO = Path(__file__).resolve().parent.parent
DEFAULT_DATA = REPO.parent / "shared" / "data" / "synthea-r4"
CCCD = "http://fhir.hl7.org.vn/core/sid/cccd"
LOINC = "http://loinc.org"
SYNTHEA_ID_SYSTEMS = (
    "https://github.com/synthetichealth/synthea",
    "http://hospital.smarthealthit.org",
)
PROVINCES_FILE = REPO / "emr_hub" / "data" / "cccd_provinces.json"

# Dates are shifted into [EARLIEST, LATEST] (LATEST is fixed, not today, so runs repeat).
EARLIEST = date(1900, 1, 1)
LATEST = date(2025, 12, 31)
MAX_BACK_DAYS = 25 * 365  # how far back a copy may move, at most

# fmt: off
FAMILY = [
    "Nguyễn", "Trần", "Lê", "Phạm", "Hoàng", "Huỳnh", "Phan", "Vũ", "Võ", "Đặng", "Bùi", "Đỗ",
    "Hồ", "Ngô", "Dương", "Lý", "Đinh", "Trương", "Lâm", "Mai", "Trịnh", "Đoàn", "Cao", "Lương",
]
MIDDLE = {
    "male": ["Văn", "Đức", "Minh", "Quang", "Hữu", "Công", "Thành", "Xuân", "Gia", "Quốc"],
    "female": ["Thị", "Ngọc", "Thu", "Thanh", "Kim", "Minh", "Mai", "Bích", "Thùy", "Diệu"],
}
GIVEN = {
    "male": [
        "An", "Bình", "Cường", "Dũng", "Hải", "Hiếu", "Hùng", "Khang", "Khoa", "Long", "Minh",
        "Nam", "Phong", "Phúc", "Quân", "Sơn", "Tài", "Thắng", "Thịnh", "Trung", "Tuấn", "Việt",
        "Vinh", "Hoàng", "Đạt", "Huy", "Kiên", "Lộc", "Nhân", "Tâm",
    ],
    "female": [
        "Anh", "Chi", "Dung", "Giang", "Hà", "Hạnh", "Hoa", "Hương", "Lan", "Linh", "Loan", "Mai",
        "My", "Nga", "Ngân", "Nhung", "Phương", "Quỳnh", "Thảo", "Trang", "Tuyết", "Uyên", "Vân",
        "Yến", "Hằng", "Hiền", "Huyền", "Ly", "Nhi", "Thủy",
    ],
}
# fmt: on

# A FHIR date, dateTime or instant: year, month, day, then the rest kept as it is.
_DATE = re.compile(
    r"(\d{4})(?:-(\d{2})(?:-(\d{2})(T\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[+-]\d{2}:\d{2}))?)?)?"
)
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_MARKER = re.compile(rb"@@s(\d+)@@")
# Keys whose string values are never dates even when they look like one (codes, postcodes).
_NOT_DATE_KEYS = frozenset(
    {"postalCode", "code", "value", "version", "id", "display", "text", "div", "system", "url"}
)
# A bare year (``"1990"``) is shifted only under these keys: elsewhere it is likely a number.
_DATE_KEYS = frozenset(
    {"start", "end", "issued", "created", "recorded", "authoredOn", "started", "date", "birthDate"}
)


def _date_key(key: str) -> bool:
    return key in _DATE_KEYS or key.endswith(("Date", "DateTime", "Instant", "Period"))


def _shift_month(year: int, month: int, days: int) -> date:
    return date.fromordinal(date(year, month, 1).toordinal() + days)


@dataclass
class Template:
    """One patient Bundle, serialised once into constant chunks around marked slots."""

    name: str
    resources: int
    chunks: list[bytes]  # len(refs) + 1 constant pieces
    refs: list[int]  # per marker occurrence: its position in the copy's value table
    uuid_slots: list[int] = field(default_factory=list)  # table positions of new uuids
    day_slots: list[tuple[int, int]] = field(default_factory=list)  # (position, ordinal)
    month_slots: list[tuple[int, int, int]] = field(default_factory=list)  # (pos, year, month)
    year_slots: list[tuple[int, int]] = field(default_factory=list)  # (position, year)
    named_slots: list[tuple[int, str]] = field(default_factory=list)  # (position, field name)
    table_size: int = 0
    patient_entry: int = 0
    gender: str = "unknown"
    birth_ordinal: int = 0
    shift_low: int = 0
    shift_high: int = 0
    practitioners: list[int] = field(default_factory=list)  # entry indexes
    fallback_identifiers: dict[str, str] = field(default_factory=dict)  # field -> old value
    observations: list[tuple[str, int]] = field(default_factory=list)  # (LOINC, day ordinal)
    encounters: int = 0
    counts: dict[str, int] = field(default_factory=dict)  # resources per type


@dataclass(frozen=True)
class PatientCopy:
    """What the loader and the query mix need to know about one generated patient."""

    index: int
    template: str
    resources: int
    patient_entry: int
    shift_days: int
    gender: str
    birth_date: str
    cccd: str
    synthea_id: str
    name: str
    observations: tuple[tuple[str, int], ...]  # (LOINC code, year), distinct
    encounters: int


class _Builder:
    """Walks a parsed template Bundle once and puts markers where values change per copy."""

    def __init__(self) -> None:
        self.keys: dict[tuple[Any, ...], int] = {}

    def slot(self, key: tuple[Any, ...]) -> str:
        position = self.keys.get(key)
        if position is None:
            position = self.keys[key] = len(self.keys)
        return f"@@s{position}@@"

    def walk(self, node: Any, uuids: dict[str, int], key: str = "") -> Any:
        if isinstance(node, dict):
            return {k: self.walk(v, uuids, k) for k, v in node.items()}
        if isinstance(node, list):
            return [self.walk(v, uuids, key) for v in node]
        if isinstance(node, str):
            return self.string(node, uuids, key)
        return node

    def string(self, text: str, uuids: dict[str, int], key: str) -> str:
        if "@@s" in text:  # already a marker (names, identifiers)
            return text
        if "-" in text and _UUID.search(text):

            def swap(match: re.Match[str]) -> str:
                number = uuids.get(match.group(0).lower())
                return match.group(0) if number is None else self.slot(("uuid", number))

            text = _UUID.sub(swap, text)
        if key in _NOT_DATE_KEYS or not text[:1].isdigit():
            return text
        match = _DATE.fullmatch(text)
        if match is None:
            return text
        year, month, day, rest = match.groups()
        if day is not None:
            ordinal = date(int(year), int(month), int(day)).toordinal()
            return self.slot(("day", ordinal)) + (rest or "")
        if month is not None:
            return self.slot(("month", int(year), int(month)))
        if _date_key(key):
            return self.slot(("year", int(year)))
        return text


def build_template(name: str, bundle: dict[str, Any]) -> Template:
    entries = bundle.get("entry") or []
    uuids: dict[str, int] = {}
    for entry in entries:
        full_url = entry.get("fullUrl")
        if isinstance(full_url, str) and full_url.startswith("urn:uuid:"):
            uuids.setdefault(full_url[len("urn:uuid:") :].lower(), len(uuids))
    builder = _Builder()
    template = Template(name=name, resources=len(entries), chunks=[], refs=[])
    counts: dict[str, int] = {}
    patient_seen = False
    for position, entry in enumerate(entries):
        resource = entry.get("resource") or {}
        kind = resource.get("resourceType")
        counts[kind] = counts.get(kind, 0) + 1
        if kind == "Patient" and not patient_seen:
            patient_seen = True
            template.patient_entry = position
            _mark_patient(builder, template, resource)
        elif kind == "Practitioner":
            template.practitioners.append(position)
            for number, human in enumerate(resource.get("name") or ()):
                human["family"] = builder.slot(("named", f"pf{position}.{number}"))
                human["given"] = [builder.slot(("named", f"pg{position}.{number}"))]
                human.pop("text", None)
        elif kind == "Observation":
            when = resource.get("effectiveDateTime") or (
                (resource.get("effectivePeriod") or {}).get("start")
            )
            parsed = _DATE.fullmatch(when) if isinstance(when, str) else None
            if parsed and parsed.group(3):
                ordinal = date(*(int(parsed.group(i)) for i in (1, 2, 3))).toordinal()
                for coding in (resource.get("code") or {}).get("coding") or ():
                    if coding.get("system") == LOINC and isinstance(coding.get("code"), str):
                        template.observations.append((coding["code"], ordinal))
        elif kind == "Encounter":
            template.encounters += 1
    if not patient_seen:
        raise ValueError(f"{name}: no Patient entry")
    template.counts = counts
    marked = builder.walk(bundle, uuids)
    raw = orjson.dumps(marked)
    pieces = _MARKER.split(raw)
    template.chunks = pieces[0::2]
    template.refs = [int(p) for p in pieces[1::2]]
    ordinals = [key[1] for key in builder.keys if key[0] == "day"]
    for key, position in builder.keys.items():
        if key[0] == "uuid":
            template.uuid_slots.append(position)
        elif key[0] == "day":
            template.day_slots.append((position, key[1]))
        elif key[0] == "month":
            template.month_slots.append((position, key[1], key[2]))
            ordinals.append(date(key[1], key[2], 1).toordinal())
        elif key[0] == "year":
            template.year_slots.append((position, key[1]))
            ordinals.append(date(key[1], 1, 1).toordinal())
        else:
            template.named_slots.append((position, key[1]))
    template.table_size = len(builder.keys)
    # shift so that every date stays within [EARLIEST, LATEST]; the CCCD needs year >= 1900
    template.shift_low = max(-MAX_BACK_DAYS, EARLIEST.toordinal() - min(ordinals))
    template.shift_high = max(template.shift_low, LATEST.toordinal() - max(ordinals))
    return template


def _mark_patient(builder: _Builder, template: Template, patient: dict[str, Any]) -> None:
    template.gender = patient.get("gender") or "unknown"
    born = _DATE.fullmatch(patient.get("birthDate") or "")
    if not born or not born.group(3):
        raise ValueError(f"{template.name}: the Patient has no full birthDate")
    template.birth_ordinal = date(*(int(born.group(i)) for i in (1, 2, 3))).toordinal()
    identifiers = []
    for number, identifier in enumerate(patient.get("identifier") or ()):
        system = identifier.get("system")
        if system in SYNTHEA_ID_SYSTEMS:
            field_name = "pid"
        elif system == "http://hl7.org/fhir/sid/us-ssn":
            field_name = "ssn"
        elif system == "urn:oid:2.16.840.1.113883.4.3.25":
            field_name = "dl"
        elif system == "http://standardhealthrecord.org/fhir/StructureDefinition/passportNumber":
            field_name = "ppn"
        elif system == CCCD:
            continue  # replaced by the copy's own CCCD below
        else:
            field_name = f"id{number}"
            template.fallback_identifiers[field_name] = str(identifier.get("value"))
        identifiers.append({**identifier, "value": builder.slot(("named", field_name))})
    identifiers.append(
        {"use": "official", "system": CCCD, "value": builder.slot(("named", "cccd"))}
    )
    patient["identifier"] = identifiers
    names = []
    for number, human in enumerate(patient.get("name") or [{"use": "official"}]):
        suffix = "" if number == 0 else "2"  # a second name (maiden) gets another family name
        human = {k: v for k, v in human.items() if k not in ("prefix", "suffix", "given")}
        human["family"] = builder.slot(("named", "family" + suffix))
        human["given"] = [builder.slot(("named", "middle")), builder.slot(("named", "given"))]
        human["text"] = builder.slot(("named", "text" + suffix))
        names.append(human)
    patient["name"] = names
    for extension in patient.get("extension") or ():
        if extension.get("url", "").endswith("patient-mothersMaidenName"):
            extension["valueString"] = builder.slot(("named", "mother"))


_UUID4_CLEAR = ~((0xF000 << 64) | (0xC000 << 48))
_UUID4_SET = (0x4000 << 64) | (0x8000 << 48)


def _uuid(rng: random.Random) -> str:
    """A random version-4 UUID from ``rng`` (what ``uuid.UUID(int=..., version=4)`` gives,
    at a third of the cost: it is the generator's hottest line)."""
    h = f"{rng.getrandbits(128) & _UUID4_CLEAR | _UUID4_SET:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


class Generator:
    """Copies of the template Bundles; copy ``i`` depends only on (seed, i)."""

    def __init__(self, data_dir: Path = DEFAULT_DATA, seed: int = 1) -> None:
        self.seed = seed
        self.templates: list[Template] = []
        for path in sorted(data_dir.glob("*.json")):
            if path.name.startswith("00-"):
                continue
            bundle = orjson.loads(path.read_bytes())
            if isinstance(bundle, dict) and bundle.get("resourceType") == "Bundle":
                self.templates.append(build_template(path.name, bundle))
        if not self.templates:
            raise FileNotFoundError(f"no patient Bundles in {data_dir}")
        self.provinces: list[str] = sorted(json.loads(PROVINCES_FILE.read_text("utf-8"))["codes"])

    # ------------------------------------------------------------------ drawing
    def _draw(self, index: int) -> tuple[Template, random.Random, dict[str, str], int]:
        rng = random.Random(self.seed * 1_000_000_007 + index)
        template = self.templates[rng.randrange(len(self.templates))]
        shift = rng.randint(template.shift_low, template.shift_high)
        born = date.fromordinal(template.birth_ordinal + shift)
        sex = "female" if template.gender == "female" else "male"
        family, middle, given = rng.choice(FAMILY), rng.choice(MIDDLE[sex]), rng.choice(GIVEN[sex])
        century_digit = 2 * ((born.year - 1900) // 100) + (1 if sex == "female" else 0)
        serial = (index * 7919 + self.seed) % 1_000_000  # a bijection of index mod 10^6
        cccd = f"{rng.choice(self.provinces)}{century_digit}{born.year % 100:02d}{serial:06d}"
        n = index % 1_000_000
        fields = {
            "pid": _uuid(rng),
            "ssn": f"999-{n // 10000:02d}-{n % 10000:04d}",
            "dl": f"S9{index:08d}",
            "ppn": f"X{index:08d}X",
            "cccd": cccd,
            "family": family,
            "family2": rng.choice(FAMILY),
            "middle": middle,
            "given": given,
            "mother": f"{rng.choice(FAMILY)} {rng.choice(MIDDLE['female'])} "
            f"{rng.choice(GIVEN['female'])}",
        }
        fields["text"] = f"{family} {middle} {given}"
        fields["text2"] = f"{fields['family2']} {middle} {given}"
        for field_name, old in template.fallback_identifiers.items():
            fields[field_name] = f"{old}-{index}"
        return template, rng, fields, shift

    def describe(self, index: int) -> PatientCopy:
        """The copy's facts without rendering it (cheap: for a database loaded earlier)."""
        template, _, fields, shift = self._draw(index)
        return self._describe(index, template, fields, shift)

    @staticmethod
    def _describe(
        index: int, template: Template, fields: dict[str, str], shift: int
    ) -> PatientCopy:
        years = {
            (code, date.fromordinal(ordinal + shift).year)
            for code, ordinal in template.observations
        }
        return PatientCopy(
            index=index,
            template=template.name,
            resources=template.resources,
            patient_entry=template.patient_entry,
            shift_days=shift,
            gender=template.gender,
            birth_date=date.fromordinal(template.birth_ordinal + shift).isoformat(),
            cccd=fields["cccd"],
            synthea_id=fields["pid"],
            name=fields["text"],
            observations=tuple(sorted(years)),
            encounters=template.encounters,
        )

    # ---------------------------------------------------------------- rendering
    def render(self, index: int) -> tuple[PatientCopy, bytes]:
        template, rng, fields, shift = self._draw(index)
        table: list[bytes] = [b""] * template.table_size
        for position in template.uuid_slots:
            table[position] = _uuid(rng).encode()
        fromordinal = date.fromordinal
        for position, ordinal in template.day_slots:
            table[position] = fromordinal(ordinal + shift).isoformat().encode()
        for position, year, month in template.month_slots:
            table[position] = _shift_month(year, month, shift).isoformat()[:7].encode()
        for position, year in template.year_slots:
            table[position] = str(_shift_month(year, 1, shift).year).encode()
        for position, name in template.named_slots:
            if name[0] == "p" and name[1] in "fg":  # a Practitioner's family / given name
                sex = "female" if rng.random() < 0.5 else "male"
                value = (
                    rng.choice(FAMILY)
                    if name[1] == "f"
                    else f"{rng.choice(MIDDLE[sex])} {rng.choice(GIVEN[sex])}"
                )
            else:
                value = fields[name]
            table[position] = value.encode()
        parts: list[bytes] = [b""] * (2 * len(template.refs) + 1)
        parts[0::2] = template.chunks
        parts[1::2] = [table[i] for i in template.refs]
        body = b"".join(parts)
        return self._describe(index, template, fields, shift), body

    def generate(
        self, *, start: int = 0, target_resources: int | None = None, patients: int | None = None
    ) -> Iterator[tuple[PatientCopy, bytes]]:
        """Copies ``start, start+1, ...`` until ``patients`` copies or ``target_resources``
        resources (counted from ``start``; the last copy may go past it) have been made."""
        made = resources = 0
        index = start
        while True:
            if patients is not None and made >= patients:
                return
            if target_resources is not None and resources >= target_resources:
                return
            if patients is None and target_resources is None:
                raise ValueError("give patients or target_resources")
            copy, body = self.render(index)
            yield copy, body
            made += 1
            resources += copy.resources
            index += 1


# ---------------------------------------------------------------------------- checks
def check_copies(generator: Generator, indexes: list[int]) -> list[str]:
    """Validate rendered copies with the hub's own validator, references resolved as the
    transaction processor resolves them; also check the CCCD and that no old uuid is left."""
    from emr_hub.errors import FhirError
    from emr_hub.fhir.identifiers import cccd_problem
    from emr_hub.fhir.validation import validate_resource

    problems: list[str] = []
    old_uuids = set()
    for template_path in generator.templates:
        old_uuids.add(template_path.name.split("-", 1)[1].removesuffix(".json"))
    for index in indexes:
        copy, body = generator.render(index)
        text = body.decode()
        bundle = orjson.loads(body)
        for old in old_uuids:
            if old in text:
                problems.append(f"copy {index}: the Synthea id {old} is still there")
        problem = cccd_problem(copy.cccd, copy.birth_date)
        if problem:
            problems.append(f"copy {index}: CCCD {copy.cccd}: {problem}")
        mapping = {}
        for entry in bundle["entry"]:
            resource = entry["resource"]
            mapping[entry["fullUrl"]] = f"{resource['resourceType']}/{entry['fullUrl'][9:]}"
            if resource.get("id") != entry["fullUrl"][9:]:
                problems.append(f"copy {index}: id {resource.get('id')} != fullUrl")
        resolved = orjson.loads(
            re.sub(r"urn:uuid:[0-9a-f-]{36}", lambda m, known=mapping: known.get(m[0], m[0]), text)
        )
        for entry in resolved["entry"]:
            try:
                validate_resource(entry["resource"])
            except FhirError as error:
                problems.append(f"copy {index}: {entry['resource']['resourceType']}: {error}")
    return problems


# ------------------------------------------------------------------------------ main
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="Synthea bundle folder")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--target", type=int, default=None, help="resources to generate")
    parser.add_argument("--patients", type=int, default=None, help="patients to generate")
    parser.add_argument("--start", type=int, default=0, help="first copy index")
    parser.add_argument("--out", type=Path, default=None, help="write one .json file per copy")
    parser.add_argument("--check", type=int, default=0, help="validate the first N copies")
    parser.add_argument("--profile", action="store_true", help="cProfile the generation")
    args = parser.parse_args(argv)
    if args.target is None and args.patients is None:
        args.target = 100_000
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.data.is_dir() or not any(args.data.glob("*.json")):
        print(f"the shared data is not there: no Synthea bundles in {args.data}; nothing made")
        return 0
    started = time.perf_counter()
    generator = Generator(args.data, args.seed)
    setup = time.perf_counter() - started
    if args.check:
        problems = check_copies(generator, list(range(args.start, args.start + args.check)))
        for problem in problems[:20]:
            print(f"problem: {problem}", file=sys.stderr)
        print(f"checked {args.check} copies: {len(problems)} problems")
        if problems:
            return 1
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
    profiler = cProfile.Profile() if args.profile else None
    copies = resources = size = 0
    started = time.perf_counter()
    if profiler:
        profiler.enable()
    for copy, body in generator.generate(
        start=args.start, target_resources=args.target, patients=args.patients
    ):
        copies += 1
        resources += copy.resources
        size += len(body)
        if args.out:
            (args.out / f"{copy.index:07d}-{copy.template}").write_bytes(body)
    if profiler:
        profiler.disable()
    seconds = time.perf_counter() - started
    print(
        f"generated {copies} patients, {resources} resources, {size / 1e6:.0f} MB in "
        f"{seconds:.1f} s ({resources / seconds:.0f} resources/s; templates {setup:.2f} s)"
        + (f" into {args.out}" if args.out else "")
    )
    if profiler:
        pstats.Stats(profiler).sort_stats("cumulative").print_stats(15)
    return 0


if __name__ == "__main__":
    sys.exit(main())
