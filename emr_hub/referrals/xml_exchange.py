"""Insurance XML tables 13 and 14 in and out of the hub: the service over the pure mapping.

:mod:`emr_hub.referrals.xml130` reads and writes the tables and maps them to FHIR without a
database. This module adds what needs the hub: finding the two hospitals and the patient,
writing the resources, and reading them back for an export. No HTTP here: the routes
(``POST /fhir/$import-xml130``, ``GET /fhir/{ServiceRequest|Appointment}/{id}/$xml130``) and
the ``emr-hub xml130`` commands both call it.

Import
------
:func:`read_envelope` parses the bytes (no database: run it before opening the transaction);
:func:`import_tables` writes every table of the envelope inside the caller's transaction, so
the envelope is stored whole or not at all. For each table:

* the hospitals are found by facility code (``Organization?identifier=<ma-cskcb>|CODE``), with
  the caller's principal: a code the hub does not know is a 422 naming the field
  (``XML13/MA_CSKCB_DEN``) and the file (``.../HOSO[1]/FILEHOSO[2]/NOIDUNGFILE``);
* the caller must be the hospital the table comes from: MA_CSKCB_DI (else MA_CSKCB) for a
  letter, MA_CSKCB for a re-exam slip; otherwise 403 naming that field. The referral rules
  would refuse the letter's Task anyway (it is created by the requesting hospital); checking
  here names the XML field the sender wrote, and covers the slip, which has no such rule. The
  operator (the command line, or a client with the operator role) may import for anyone;
* the patient is matched by insurance card or CCCD
  (:func:`~emr_hub.referrals.xml130.patient_match_identifiers`) among the Patients the caller
  may see (the access policy applies: a hospital does not learn that another keeps her
  record); of several, the caller's own is the one; several and none its own is a 422; none
  creates the patient the mapping makes (its id derived from the letter, not the card);
* every resource goes through :func:`emr_hub.fhir.interactions.update` at its stable id, so
  validation, scopes and the referral write hooks apply as to a FHIR ``PUT``.

Idempotency. The ids are stable and an update with unchanged content makes no new version, so
the same envelope imported again writes nothing. The referral's workflow belongs to the
hospitals once the letter is in the hub, so the existing resources are read first: an existing
Task is never rewritten (the import does not reset an accepted referral to ``requested``), nor
is a ServiceRequest or an Appointment whose status has moved on from the one the import sets
(``active``, ``booked``): a completed letter or a fulfilled slip stays as it is.

The letter's validity (``occurrencePeriod``) is computed by the referral rules from
``authoredOn`` with the operator's holiday calendar and Annex III list
(:mod:`emr_hub.referrals.rules`) when the ServiceRequest is written.

A re-exam slip is ``basedOn`` the referral of the same episode when the hub has one: the
referral the episode's Encounter (``identifier`` MA_LK at the slip's hospital) is ``basedOn``,
else the patient's referral letter to the slip's hospital that was valid when the episode began
(NGAY_VAO, else NGAY_VAO_NOI_TRU), the latest signed when several were. The hospital
participant gets no actor (see ``table14_to_fhir``): the hub does not guess which of a hospital's
Locations the slip means.

Export
------
:func:`export_referral` and :func:`export_reexam` read the resources with the caller's
principal and write an envelope holding one table. NGAYLAP is the letter's ``authoredOn`` (the
slip's ``created``), not the time of the export: the same resources always give the same
bytes, and a letter without NGAY_RA keeps its date through an export and an import.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import date, datetime, time, timedelta
from typing import Any

from emr_hub.errors import FhirError, Issue, unprocessable
from emr_hub.fhir import interactions
from emr_hub.fhir.identifiers import EPISODE_LINK, FACILITY_CODE
from emr_hub.fhir.search.params import parse_search
from emr_hub.fhir.search.service import run_search
from emr_hub.fhir.store import FhirStore, Stored, format_instant
from emr_hub.referrals.enforcement import is_referral
from emr_hub.referrals.xml130 import (
    EXT_PARTICIPANT_ORG,
    VN_TZ,
    Envelope,
    FileEntry,
    Table13,
    Table14,
    fhir_to_table13,
    fhir_to_table14,
    parse_envelope,
    patient_match_identifiers,
    read_tables,
    render_envelope,
    render_table13,
    render_table14,
    table13_to_fhir,
    table14_to_fhir,
)
from emr_hub.security.principal import Principal

REFERRAL_CATEGORY = "http://snomed.info/sct|3457005"
KEPT_STATUSES = {"ServiceRequest": "active", "Appointment": "booked"}
"""Resources the import writes only while they still have the status it gives them."""
LIVE_REFERRAL = frozenset({"active", "completed", "on-hold"})
"""Statuses of a letter a slip may be based on (not draft, revoked or entered-in-error)."""

STATUS_TEXT = {200: "200 OK", 201: "201 Created"}


# ====================================================================== results
@dataclass(frozen=True)
class Written:
    """One resource of an import and what happened to it.

    ``outcome``: ``created``, ``updated``, ``unchanged`` (same content, no new version),
    ``kept`` (existing, left alone: a Task, or a letter or slip whose status moved on) or
    ``matched`` (the existing patient the table was matched to, not written). ``source`` is the
    file of the envelope the resource comes from.
    """

    stored: Stored
    outcome: str
    source: str

    @property
    def status(self) -> int:
        return 201 if self.outcome == "created" else 200

    @property
    def location(self) -> str:
        stored = self.stored
        return f"{stored.resource_type}/{stored.id}/_history/{stored.version_id}"


@dataclass(frozen=True)
class ReadEnvelope:
    """An envelope parsed and its tables 13 and 14 read, ready to import."""

    envelope: Envelope
    tables: tuple[tuple[FileEntry, Table13 | Table14], ...]


OUTCOME_TEXT = {
    "created": "created",
    "updated": "updated: a new version",
    "unchanged": "unchanged: the same content, no new version",
    "kept": "kept as it is: the import does not change a referral's Task, nor a letter or "
    "slip whose status has moved on",
    "matched": "the existing patient the table was matched to by insurance card or CCCD; "
    "not changed",
}


def import_bundle(written: Iterable[Written], base_url: str) -> dict[str, Any]:
    """The answer to an import: a ``batch-response`` Bundle, one entry per resource, in the
    order written, each with its status, location, ETag and what happened (``outcome``)."""
    entries = []
    for item in written:
        stored = item.stored
        outcome = {
            "resourceType": "OperationOutcome",
            "issue": [
                {
                    "severity": "information",
                    "code": "informational",
                    "diagnostics": OUTCOME_TEXT[item.outcome],
                    "expression": [item.source],
                }
            ],
        }
        entries.append(
            {
                "fullUrl": f"{base_url}/{stored.resource_type}/{stored.id}",
                "response": {
                    "status": STATUS_TEXT[item.status],
                    "location": item.location,
                    "etag": stored.etag,
                    "lastModified": format_instant(stored.last_updated),
                    "outcome": outcome,
                },
            }
        )
    return {"resourceType": "Bundle", "type": "batch-response", "entry": entries}


# ======================================================================= import
def read_envelope(xml: bytes) -> ReadEnvelope:
    """Parse the envelope and read its tables 13 and 14 (400, 413 or 422 as the mapping says).

    An envelope holding neither table is a 422: importing it would silently do nothing.
    """
    envelope = parse_envelope(xml)
    tables = tuple(read_tables(envelope))
    if not tables:
        message = "The envelope holds no table 13 (referral letter) or 14 (re-exam slip)"
        where = "GIAMDINHHS/THONGTINHOSO/DANHSACHHOSO/HOSO/FILEHOSO/LOAIHOSO"
        raise FhirError(422, [Issue("required", message, (where,))])
    return ReadEnvelope(envelope, tables)


def import_tables(store: FhirStore, principal: Principal, read: ReadEnvelope) -> list[Written]:
    """Write every table of the envelope in the caller's transaction; raise on the first
    refusal (the caller's transaction then rolls back everything)."""
    importer = _Importer(store, principal, read.envelope)
    written: list[Written] = []
    for entry, table in read.tables:
        source = f"{entry.where}/NOIDUNGFILE"
        try:
            if isinstance(table, Table13):
                written += importer.letter(table, source)
            else:
                written += importer.slip(table, source)
        except FhirError as error:
            raise _located(error, source) from None
    return written


def _located(error: FhirError, source: str) -> FhirError:
    """The error with the file it concerns added to each issue's expression."""
    issues = [
        issue
        if source in issue.expression
        else replace(issue, expression=(*issue.expression, source))
        for issue in error.issues
    ]
    return FhirError(error.status, issues, error.headers)


class _Importer:
    """Imports the tables of one envelope; remembers the hospitals already looked up."""

    def __init__(self, store: FhirStore, principal: Principal, envelope: Envelope) -> None:
        self.store = store
        self.principal = principal
        self.envelope = envelope
        self._organizations: dict[str, str | None] = {}

    # ----------------------------------------------------------------- tables
    def letter(self, table: Table13, source: str) -> list[Written]:
        sender_field = "MA_CSKCB_DI" if table.ma_noi_di else "MA_CSKCB"
        sender_code = table.ma_noi_di or table.ma_cskcb
        issues: list[Issue] = []
        sender = self._organization("XML13", sender_field, sender_code, issues)
        receiver = self._organization("XML13", "MA_CSKCB_DEN", table.ma_noi_den, issues)
        if issues:
            raise FhirError(422, issues)
        assert sender is not None and receiver is not None
        self._check_caller(sender, f"XML13/{sender_field}")
        patient_ref, matched, _ = self._patient(table, "XML13")
        resources = table13_to_fhir(
            table,
            sender_org=sender,
            receiver_org=receiver,
            patient_ref=patient_ref,
            authored=self.envelope.created,
        )
        written = [Written(matched, "matched", source)] if matched else []
        for resource in (
            *([resources.patient] if resources.patient else []),
            *resources.conditions,
            resources.service_request,
            resources.task,
        ):
            written.append(self._write(resource, source))
        return written

    def slip(self, table: Table14, source: str) -> list[Written]:
        issues: list[Issue] = []
        facility = self._organization("XML14", "MA_CSKCB", table.ma_cskcb, issues)
        if issues:
            raise FhirError(422, issues)
        assert facility is not None
        self._check_caller(facility, "XML14/MA_CSKCB")
        patient_ref, matched, records = self._patient(table, "XML14")
        referral = self._referral_of_episode(table, facility, records)
        resources = table14_to_fhir(
            table, facility_org=facility, patient_ref=patient_ref, referral_ref=referral
        )
        written = [Written(matched, "matched", source)] if matched else []
        for resource in resources:
            written.append(self._write(resource, source))
        return written

    # ---------------------------------------------------------------- lookups
    def _search(self, resource_type: str, query: list[tuple[str, str]]) -> list[Stored]:
        request = parse_search(resource_type, query)
        return run_search(self.store, self.principal, request, self.store.base_url).matches

    def _organization(
        self, table: str, field_name: str, code: str | None, issues: list[Issue]
    ) -> str | None:
        """``Organization/<id>`` of the facility code, or None with the problem in ``issues``."""
        where = (f"{table}/{field_name}",)
        if not code:
            message = f"{field_name} is needed: the hub finds the hospital by its facility code"
            issues.append(Issue("required", message, where))
            return None
        if code not in self._organizations:
            matches = self._search(
                "Organization", [("identifier", f"{FACILITY_CODE}|{code}"), ("_count", "2")]
            )
            if len(matches) > 1:
                message = f"Several Organizations of the hub have the facility code {code}"
                raise FhirError(422, [Issue("business-rule", message, where)])
            self._organizations[code] = f"Organization/{matches[0].id}" if matches else None
        found = self._organizations[code]
        if found is None:
            message = f"{field_name} {code} is not the facility code of an Organization of the hub"
            issues.append(Issue("business-rule", message, where))
        return found

    def _check_caller(self, hospital: str, expression: str) -> None:
        if self.principal.is_operator or self.principal.organization == hospital:
            return
        field_name = expression.split("/", 1)[1]
        message = (
            f"The table comes from {hospital} ({field_name}); only that hospital may import it, "
            f"not {self.principal.organization}"
        )
        raise FhirError(403, [Issue("forbidden", message, (expression,))])

    def _patient(
        self, table: Table13 | Table14, name: str
    ) -> tuple[str | None, Stored | None, list[str]]:
        """(reference, stored) of the patient matched by card or CCCD, (None, None) when none,
        and the references of every record of hers the caller sees.

        Several hospitals may each keep a Patient for her: of those the caller may see, its
        own is the one the table is about; several and none its own is a 422."""
        pairs = patient_match_identifiers(table)
        if not pairs:
            return None, None, []
        wanted = ",".join(f"{system}|{value}" for system, value in pairs)
        matches = self._search("Patient", [("identifier", wanted), ("_count", "20")])
        records = [f"Patient/{match.id}" for match in matches]
        if len(matches) > 1:
            own = [m for m in matches if m.owner and m.owner == self.principal.organization]
            if len(own) != 1:
                message = (
                    "Several patients of the hub have the insurance card or CCCD of "
                    "MA_THE_BHYT; the table cannot tell which one it is about"
                )
                raise FhirError(422, [Issue("business-rule", message, (f"{name}/MA_THE_BHYT",))])
            matches = own
        if not matches:
            return None, None, []
        return f"Patient/{matches[0].id}", matches[0], records

    def _referral_of_episode(self, table: Table14, facility: str, records: list[str]) -> str | None:
        """The referral the slip's episode followed (see the module), or None. ``records``
        are the patient's Patient resources the caller sees (a letter from another hospital
        names that hospital's record of her)."""
        if not records:
            return None  # a patient new to the hub has no referral in it
        if self.principal.allows("Encounter", "s") and self.principal.allows("ServiceRequest", "r"):
            episode = f"{EPISODE_LINK}|{table.ma_lk}"
            for encounter in self._search("Encounter", [("identifier", episode)]):
                content = encounter.content or {}
                provider = (content.get("serviceProvider") or {}).get("reference")
                subject = (content.get("subject") or {}).get("reference")
                if provider != facility or subject not in records:
                    continue
                for based_on in content.get("basedOn") or []:
                    reference = based_on.get("reference") or ""
                    if reference.startswith("ServiceRequest/") and self._is_referral(reference):
                        return reference
        admitted = table.ngay_vao or table.ngay_vao_noi_tru
        if admitted is None or not self.principal.allows("ServiceRequest", "s"):
            return None
        letters = self._search(
            "ServiceRequest",
            [
                ("subject", ",".join(records)),
                ("performer", facility),
                ("category", REFERRAL_CATEGORY),
                ("_sort", "-authored"),
                ("_count", "100"),
            ],
        )
        for letter in letters:
            content = letter.content or {}
            if content.get("status") in LIVE_REFERRAL and _covers(
                content.get("occurrencePeriod"), admitted
            ):
                return f"ServiceRequest/{letter.id}"
        return None

    def _is_referral(self, reference: str) -> bool:
        found = self.store.current("ServiceRequest", reference.split("/", 1)[1])
        content = found.content if found is not None and not found.deleted else None
        return content is not None and is_referral(content)

    # ------------------------------------------------------------------ write
    def _write(self, resource: dict[str, Any], source: str) -> Written:
        kind, rid = resource["resourceType"], resource["id"]
        current = self.store.current(kind, rid)
        if current is not None and not current.deleted and current.content is not None:
            stored_status = current.content.get("status")
            moved_on = kind in KEPT_STATUSES and stored_status != KEPT_STATUSES[kind]
            if kind == "Task" or moved_on:
                same = _without_meta(current.content) == _without_meta(resource)
                return Written(current, "unchanged" if same else "kept", source)
        result = interactions.update(self.store, self.principal, kind, rid, resource)
        assert result.stored is not None
        if result.status == 201:
            outcome = "created"
        else:
            outcome = "unchanged" if result.message else "updated"
        return Written(result.stored, outcome, source)


def _without_meta(resource: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in resource.items() if k != "meta"}


def _bounds(text: Any, *, end: bool) -> datetime | None:
    """A FHIR date or dateTime as the instant it starts (or, ``end``, the instant after it)."""
    if not isinstance(text, str):
        return None
    try:
        if len(text) <= 10:
            parts = [int(p) for p in text.split("-")]
            day = date(
                parts[0], parts[1] if len(parts) > 1 else 1, parts[2] if len(parts) > 2 else 1
            )
            if not end:
                return datetime.combine(day, time(), VN_TZ)
            if len(parts) == 3:
                return datetime.combine(day + timedelta(days=1), time(), VN_TZ)
            if len(parts) == 2:
                following = date(day.year + day.month // 12, day.month % 12 + 1, 1)
                return datetime.combine(following, time(), VN_TZ)
            return datetime.combine(date(day.year + 1, 1, 1), time(), VN_TZ)
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=VN_TZ)


def _covers(period: Any, moment: datetime) -> bool:
    """Whether ``moment`` falls within the Period (an open end counts as unbounded)."""
    if not isinstance(period, dict):
        return False
    start = _bounds(period.get("start"), end=False)
    finish = _bounds(period.get("end"), end=True)
    if start is not None and moment < start:
        return False
    return finish is None or moment <= finish


# ======================================================================= export
def export_referral(store: FhirStore, principal: Principal, service_request_id: str) -> bytes:
    """The envelope holding the table 13 of a referral ServiceRequest (422 when it is not a
    referral, or lacks a field table 13 requires; 404/410 for an unknown or deleted id)."""
    letter = interactions.read(store, principal, "ServiceRequest", service_request_id)
    content = letter.content or {}
    if not is_referral(content):
        raise unprocessable(
            f"ServiceRequest/{service_request_id} is not a referral (category SNOMED 3457005)",
            "ServiceRequest.category",
        )
    task = None
    if principal.allows("Task", "s"):
        request = parse_search(
            "Task",
            [
                ("focus", f"ServiceRequest/{service_request_id}"),
                ("_sort", "-_lastUpdated"),
                ("_count", "1"),
            ],
        )
        tasks = run_search(store, principal, request, store.base_url).matches
        task = tasks[0].content if tasks else None
    patient = _read_reference(store, principal, content.get("subject"), "Patient")
    condition_ids = [
        ref.split("/", 1)[1]
        for ref in (r.get("reference") or "" for r in content.get("reasonReference") or [])
        if ref.startswith("Condition/")
    ]
    conditions: list[dict[str, Any]] = []
    if condition_ids and principal.allows("Condition", "r"):
        found = store.load_many(("Condition", cid) for cid in condition_ids)
        conditions = [c.content for c in found if c.content is not None]
    performers = content.get("performer") or [None]
    table = fhir_to_table13(
        content,
        task,
        patient,
        conditions,
        sender_code=_facility_code(store, principal, content.get("requester")),
        receiver_code=_facility_code(store, principal, performers[0]),
    )
    issuer = table.issuer
    assert issuer is not None  # fhir_to_table13 refuses a letter without one
    return render_envelope(
        issuer,
        [FileEntry("XML13", render_table13(table))],
        created=_local_moment(content.get("authoredOn")),
    )


def export_reexam(store: FhirStore, principal: Principal, appointment_id: str) -> bytes:
    """The envelope holding the table 14 of an Appointment (422 when it lacks a field table 14
    requires; 404/410 for an unknown or deleted id)."""
    content = interactions.read(store, principal, "Appointment", appointment_id).content or {}
    patient = None
    hospital_code = None
    for participant in content.get("participant") or []:
        actor = participant.get("actor")
        if patient is None and (actor or {}).get("reference", "").startswith("Patient/"):
            patient = _read_reference(store, principal, actor, "Patient")
        for extension in participant.get("extension") or []:
            if extension.get("url") == EXT_PARTICIPANT_ORG and hospital_code is None:
                hospital_code = _facility_code(store, principal, extension.get("valueReference"))
    table = fhir_to_table14(content, patient, facility_code=hospital_code)
    return render_envelope(
        table.ma_cskcb,
        [FileEntry("XML14", render_table14(table))],
        created=_local_day(content.get("created")),
    )


def _read_reference(
    store: FhirStore, principal: Principal, reference: Any, resource_type: str
) -> dict[str, Any] | None:
    """The live resource a reference names, or None (the table then lacks its fields, which
    is the 422 to report); the caller needs the read scope on the type (403)."""
    text = reference.get("reference") if isinstance(reference, dict) else None
    if not isinstance(text, str) or not text.startswith(f"{resource_type}/"):
        return None
    principal.require(resource_type, "r")
    found = store.current(resource_type, text.split("/", 1)[1])
    return found.content if found is not None and not found.deleted else None


def _facility_code(store: FhirStore, principal: Principal, reference: Any) -> str | None:
    """The facility code of the Organization a reference names (its identifier, else the
    Organization's own), or None."""
    if not isinstance(reference, dict):
        return None
    identifier = reference.get("identifier")
    if isinstance(identifier, dict) and identifier.get("system") == FACILITY_CODE:
        return identifier.get("value")
    text = reference.get("reference")
    if not isinstance(text, str) or not text.startswith("Organization/"):
        return None
    if not principal.allows("Organization", "r"):
        return None
    found = store.current("Organization", text.split("/", 1)[1])
    if found is None or found.deleted or found.content is None:
        return None
    for each in found.content.get("identifier") or []:
        if each.get("system") == FACILITY_CODE and each.get("value"):
            return str(each["value"])
    return None


def _local_moment(text: Any) -> datetime | date | None:
    """A FHIR dateTime as a Viet Nam date-time (a date stays a date); None when unreadable."""
    if not isinstance(text, str):
        return None
    if len(text) == 10:
        return _local_day(text)
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return (moment if moment.tzinfo else moment.replace(tzinfo=VN_TZ)).astimezone(VN_TZ)


def _local_day(text: Any) -> date | None:
    if not isinstance(text, str):
        return None
    try:
        return date.fromisoformat(text[:10])
    except ValueError:
        return None
