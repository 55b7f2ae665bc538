"""A small random hospital network for the access policy's property tests.

:func:`plans` draws a :class:`Plan`: two to four hospitals with a level of care, two to five
persons with one or two Patient resources each (a person with a CCCD may have a Patient at two
hospitals; one without is a Patient of her own), and a sequence of writes, each by a hospital,
the operator or a citizen. :class:`World` carries a plan out against a real hub, through the
FHIR interactions and a store per principal, one transaction per write, as the API does, and
keeps what it wrote.

The model (:meth:`World.facts`, :meth:`World.grants`) restates, from what was written and
without reading the database, what the access policy reads: the owner, the persons and the
restriction of each resource, and the grants (care from visits, appointments and referrals,
the person's Consents). The tests feed it to the pure policy and compare with what the SQL
returns.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from typing import Any

from hypothesis import strategies as st
from sqlalchemy import delete

from emr_hub.fhir import interactions
from emr_hub.fhir.identifiers import CCCD
from emr_hub.fhir.persons import person_of_cccd, person_of_patient_id
from emr_hub.fhir.search.values import LOCAL_ZONE
from emr_hub.hub import Hub
from emr_hub.security.access import store_for
from emr_hub.security.policy import (
    CARE,
    EVERY_HOSPITAL,
    Facts,
    Grant,
    Reader,
    load_policy,
)
from emr_hub.security.principal import Principal
from emr_hub.security.scopes import ScopeSet
from storage.tables import ResourceRow

POLICY = load_policy()
REFERRAL_DAYS = 90
LEVEL = "http://fhir.hl7.org.vn/core/CodeSystem/vn-facility-care-level-cs"
LEVELS = ("BAN_DAU", "CO_BAN", "CHUYEN_SAU")
MRN = "urn:emr-hub:test:mrn"
LOINC = "http://loinc.org"
CODES = ("8867-4", "2339-0")
CONFIDENTIALITY = "http://terminology.hl7.org/CodeSystem/v3-Confidentiality"
ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
LABELS: dict[str, tuple[str, str]] = {
    "R": (CONFIDENTIALITY, "R"),
    "V": (CONFIDENTIALITY, "V"),
    "HIV": (ACT_CODE, "HIV"),
    "N": (CONFIDENTIALITY, "N"),  # normal: a label that does not restrict
}
CONSENT_SCOPE = "http://terminology.hl7.org/CodeSystem/consentscope"
PURPOSE_SYSTEM = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
REFERRAL = {"coding": [{"system": "http://snomed.info/sct", "code": "3457005"}]}
ENDED_TASK = frozenset({"completed", "failed", "rejected", "cancelled", "entered-in-error"})
OPERATOR = -1
"""The author index of the operator (hospitals are 0 ... n-1)."""
SCOPES = ScopeSet.parse("system/*.cruds")
CITIZEN_SCOPES = ScopeSet.parse("patient/*.cruds")
OPERATOR_PRINCIPAL = Principal("test-operator", None, SCOPES, "t", kind="operator")
TABLES = (
    "patient_compartment",
    "access_grant",
    "resource_history",
    "resource",
    "search_token",
    "search_string",
    "search_reference",
    "search_date",
    "search_quantity",
    "search_uri",
    "search_composite",
    "outbox_message",
    "subscription_route",
)


# ------------------------------------------------------------------------------ plans
@dataclass(frozen=True)
class PersonPlan:
    cccd: str | None
    authors: tuple[int, ...]
    """One per Patient resource of the person: the hospital index (or OPERATOR) writing it."""


@dataclass(frozen=True)
class ObservationWrite:
    author: int
    patient: int
    other: int | None
    """A second Patient, as the Observation's performer (about two patients at once)."""
    label: str | None
    code: int


@dataclass(frozen=True)
class EncounterWrite:
    author: int
    patient: int
    provider: int
    """``serviceProvider``: what makes the operator's visits a hospital's care."""


@dataclass(frozen=True)
class AppointmentWrite:
    author: int
    patient: int
    when: str | None  # long-ago | recent | future; None: no dates (proposed)
    cancelled: bool  # entered in error: grants nothing


@dataclass(frozen=True)
class TaskPlan:
    outcome: str  # the status it is left in
    ended: str | None
    """``executionPeriod.end`` of a Task that ended: recent (10 days ago), long-ago (200 days:
    its referral's grants have expired), just-expired (90 days and 3 hours ago, in Vietnam
    time); None: none (the Task's last update is its end)."""


@dataclass(frozen=True)
class ReferralWrite:
    sender: int
    receiver: int  # an offset from the sender (1 ... n-1)
    patient: int
    tasks: tuple[TaskPlan, ...]
    letter: str  # the letter's final status: active | revoked | entered-in-error


@dataclass(frozen=True)
class ConsentWrite:
    author: int | None  # a hospital (it attaches the signed form); None: the citizen herself
    patient: int
    kind: str  # permit | deny
    actor: int | None  # None: every hospital
    period: str | None
    """current | past | future | past-dates | future-dates | ended-hours-ago |
    started-hours-ago (the last two 3 hours from now, in Vietnam time); None: no period."""
    purpose: str | None
    inactive: bool
    exception: tuple[str, int | None] | None  # a nested provision (kind, actor)
    withdrawn: bool  # set inactive afterwards by its author


@dataclass(frozen=True)
class OtherWrite:
    """A resource about nobody: a Binary (private: its author's only) or a Medication
    (shared: everyone's)."""

    author: int
    resource_type: str


@dataclass(frozen=True)
class RelabelWrite:
    observation: int
    label: str | None


@dataclass(frozen=True)
class RelinkWrite:
    """The Patient's author corrects its CCCD: another person's, a new one, or none."""

    patient: int
    cccd_of: int | None  # a person index; None: drop the CCCD
    fresh: bool


@dataclass(frozen=True)
class DeleteWrite:
    encounter: int


Write = (
    ObservationWrite
    | EncounterWrite
    | AppointmentWrite
    | ReferralWrite
    | ConsentWrite
    | OtherWrite
    | RelabelWrite
    | RelinkWrite
    | DeleteWrite
)


@dataclass(frozen=True)
class Plan:
    levels: tuple[str, ...]
    persons: tuple[PersonPlan, ...]
    writes: tuple[Write, ...]
    fresh_serial: int


def cccd(serial: int) -> str:
    """A well-formed CCCD of someone born in 1985 (Hà Nội, century digit 0)."""
    return f"001085{serial:06d}"


BIRTH_DATE = "1985-04-12"


@st.composite
def plans(draw: st.DrawFn, min_writes: int = 3, max_writes: int = 24) -> Plan:
    hospitals = draw(st.integers(2, 4))
    levels = tuple(draw(st.sampled_from(LEVELS)) for _ in range(hospitals))
    hospital = st.integers(0, hospitals - 1)
    author = st.integers(OPERATOR, hospitals - 1)
    count = draw(st.integers(2, 5))
    serials = draw(
        st.lists(st.integers(0, 999_998), min_size=count + 1, max_size=count + 1, unique=True)
    )
    persons = []
    for serial in serials[:count]:
        with_cccd = draw(st.booleans())
        patients = draw(st.integers(1, 2)) if with_cccd else 1
        persons.append(
            PersonPlan(
                cccd(serial) if with_cccd else None,
                tuple(draw(author) for _ in range(patients)),
            )
        )
    patient = st.integers(0, 9)
    label = st.sampled_from([None, None, "R", "V", "HIV", "N"])
    task = st.builds(
        TaskPlan,
        outcome=st.sampled_from(
            ["requested", "accepted", "in-progress", "completed", "failed", "rejected", "cancelled"]
        ),
        ended=st.sampled_from([None, "recent", "long-ago", "just-expired"]),
    )
    observation, encounter, appointment, referral, consent, other, relabel, relink, removal = (
        st.builds(
            ObservationWrite,
            author=author,
            patient=patient,
            other=st.none() | patient,
            label=label,
            code=st.integers(0, len(CODES) - 1),
        ),
        st.builds(EncounterWrite, author=author, patient=patient, provider=hospital),
        st.builds(
            AppointmentWrite,
            author=hospital,
            patient=patient,
            when=st.sampled_from([None, "long-ago", "recent", "future"]),
            cancelled=st.booleans(),
        ),
        st.builds(
            ReferralWrite,
            sender=hospital,
            receiver=st.integers(1, hospitals - 1),
            patient=patient,
            tasks=st.lists(task, max_size=2).map(tuple),
            letter=st.sampled_from(["active", "active", "revoked", "entered-in-error"]),
        ),
        st.builds(
            ConsentWrite,
            author=st.none() | hospital,
            patient=patient,
            kind=st.sampled_from(["permit", "deny"]),
            actor=st.none() | hospital,
            period=st.sampled_from(
                [
                    None,
                    "current",
                    "past",
                    "future",
                    "past-dates",
                    "future-dates",
                    "ended-hours-ago",
                    "started-hours-ago",
                ]
            ),
            purpose=st.sampled_from([None, None, "TREAT", "HRESCH", "HRESCH"]),
            inactive=st.sampled_from([False, False, False, True]),
            exception=st.none()
            | st.tuples(st.sampled_from(["permit", "deny"]), st.none() | hospital),
            withdrawn=st.sampled_from([False, False, False, True]),
        ),
        st.builds(
            OtherWrite, author=author, resource_type=st.sampled_from(["Binary", "Medication"])
        ),
        st.builds(RelabelWrite, observation=st.integers(0, 30), label=label),
        st.builds(
            RelinkWrite,
            patient=patient,
            cccd_of=st.none() | st.integers(0, count - 1),
            fresh=st.booleans(),
        ),
        st.builds(DeleteWrite, encounter=st.integers(0, 30)),
    )
    weighted = [observation] * 3 + [encounter, relabel, relink, removal] + [appointment] * 2
    weighted += [referral] * 2 + [consent] * 4 + [other]
    size = draw(st.integers(min_writes, max_writes))
    writes = tuple(draw(st.lists(st.one_of(weighted), min_size=size, max_size=size)))
    return Plan(levels, tuple(persons), writes, serials[count])


# ------------------------------------------------------------------------- the world
@dataclass
class Tracked:
    """A resource as this test wrote it (the model's only source)."""

    resource_type: str
    id: str
    owner: str | None
    author: Principal
    content: dict[str, Any] | None  # None once deleted
    last_updated: datetime
    versions: int = 1

    @property
    def key(self) -> tuple[str, str]:
        return (self.resource_type, self.id)

    @property
    def live(self) -> bool:
        return self.content is not None


def hospital_principal(organization: str) -> Principal:
    return Principal(f"client-{organization.split('/')[1]}", organization, SCOPES, "t")


def citizen_principal(person: str) -> Principal:
    return Principal(
        f"citizen-{person[:8]}", None, CITIZEN_SCOPES, "t", kind="citizen", person=person
    )


def reader_of(principal: Principal) -> Reader:
    return Reader(principal.kind, principal.organization, principal.person, principal.purpose)


def reference(resource_type: str, resource_id: str) -> dict[str, str]:
    return {"reference": f"{resource_type}/{resource_id}"}


def fhir_instant(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def fhir_local(moment: datetime) -> str:
    """A dateTime in Vietnam time, as a hospital's system writes it (+07:00)."""
    return moment.astimezone(LOCAL_ZONE).isoformat(timespec="seconds")


class World:
    """A plan carried out against ``hub``: every write through the FHIR interactions with the
    store of its principal, one transaction each; what was written is kept in
    :attr:`resources`."""

    def __init__(self, hub: Hub, plan: Plan) -> None:
        self.hub = hub
        self.plan = plan
        self.now = datetime.now(UTC).replace(microsecond=0)
        self.hospitals = [f"Organization/h{i}" for i in range(len(plan.levels))]
        self.resources: dict[tuple[str, str], Tracked] = {}
        self.patients: list[str] = []
        self.observations: list[str] = []
        self.encounters: list[str] = []
        self.skipped: list[Write] = []

    # ------------------------------------------------------------------ writing
    def principal(self, author: int) -> Principal:
        return (
            OPERATOR_PRINCIPAL if author == OPERATOR else hospital_principal(self.hospitals[author])
        )

    def write(
        self,
        principal: Principal,
        resource: dict[str, Any],
        *,
        resource_id: str | None = None,
    ) -> Tracked:
        """Create (or, with ``resource_id``, update) ``resource`` as ``principal``."""
        resource_type = resource["resourceType"]
        with self.hub.db.transaction() as session:
            store = store_for(session, self.hub.settings, principal)
            if resource_id is None:
                result = interactions.create(store, principal, resource_type, resource)
            else:
                body = {**resource, "id": resource_id}
                result = interactions.update(store, principal, resource_type, resource_id, body)
            store.flush()
        assert result.status in (200, 201), (result, resource)
        stored = result.stored
        assert stored is not None and stored.content is not None
        key = (resource_type, stored.id)
        known = self.resources.get(key)
        if known is None:
            known = Tracked(
                resource_type,
                stored.id,
                principal.organization,
                principal,
                stored.content,
                stored.last_updated,
            )
            self.resources[key] = known
        else:
            known.content, known.last_updated = stored.content, stored.last_updated
            known.versions = stored.version_id
        return known

    def update(
        self, tracked: Tracked, content: dict[str, Any], by: Principal | None = None
    ) -> None:
        self.write(by or tracked.author, content, resource_id=tracked.id)

    def build(self) -> World:
        for index, level in enumerate(self.plan.levels):
            organization = {
                "resourceType": "Organization",
                "id": f"h{index}",
                "name": f"Hospital {index}",
                "type": [{"coding": [{"system": LEVEL, "code": level}]}],
            }
            self.write(OPERATOR_PRINCIPAL, organization, resource_id=f"h{index}")
        for number, person in enumerate(self.plan.persons):
            for copy, author in enumerate(person.authors):
                patient_id = f"pt{number}-{copy}"
                identifiers = [{"system": MRN, "value": patient_id}]
                if person.cccd:
                    identifiers.append({"system": CCCD, "value": person.cccd})
                patient = {
                    "resourceType": "Patient",
                    "identifier": identifiers,
                    "birthDate": BIRTH_DATE,
                    "name": [{"family": f"Person {number}"}],
                }
                self.write(self.principal(author), patient, resource_id=patient_id)
                self.patients.append(patient_id)
        for item in self.plan.writes:
            self.apply(item)
        return self

    def apply(self, item: Write) -> None:
        handler = {
            ObservationWrite: self._observation,
            EncounterWrite: self._encounter,
            AppointmentWrite: self._appointment,
            ReferralWrite: self._referral,
            ConsentWrite: self._consent,
            OtherWrite: self._other,
            RelabelWrite: self._relabel,
            RelinkWrite: self._relink,
            DeleteWrite: self._delete,
        }[type(item)]
        handler(item)  # type: ignore[operator]

    def patient(self, index: int) -> str:
        return self.patients[index % len(self.patients)]

    @staticmethod
    def security(label: str | None) -> dict[str, Any]:
        if label is None:
            return {}
        system, code = LABELS[label]
        return {"meta": {"security": [{"system": system, "code": code}]}}

    def _observation(self, item: ObservationWrite) -> None:
        observation: dict[str, Any] = {
            "resourceType": "Observation",
            **self.security(item.label),
            "status": "final",
            "code": {"coding": [{"system": LOINC, "code": CODES[item.code]}]},
            "subject": reference("Patient", self.patient(item.patient)),
            "valueQuantity": {"value": 72, "unit": "/min"},
        }
        if item.other is not None:
            observation["performer"] = [reference("Patient", self.patient(item.other))]
        self.observations.append(self.write(self.principal(item.author), observation).id)

    def _encounter(self, item: EncounterWrite) -> None:
        encounter = {
            "resourceType": "Encounter",
            "status": "finished",
            "class": {"system": ACT_CODE, "code": "AMB"},
            "subject": reference("Patient", self.patient(item.patient)),
            "serviceProvider": {"reference": self.hospitals[item.provider]},
        }
        self.encounters.append(self.write(self.principal(item.author), encounter).id)

    def _appointment(self, item: AppointmentWrite) -> None:
        appointment: dict[str, Any] = {
            "resourceType": "Appointment",
            "status": "entered-in-error" if item.cancelled else "booked",
            "participant": [
                {
                    "actor": reference("Patient", self.patient(item.patient)),
                    "status": "accepted",
                }
            ],
        }
        offset = {"long-ago": -200, "recent": -10, "future": 10}.get(item.when or "")
        if offset is None:
            if not item.cancelled:
                appointment["status"] = "proposed"
        else:
            start = self.now + timedelta(days=offset)
            appointment["start"] = fhir_instant(start)
            appointment["end"] = fhir_instant(start + timedelta(hours=1))
        self.write(self.principal(item.author), appointment)

    def _referral(self, item: ReferralWrite) -> None:
        sender = self.principal(item.sender)
        receiver_index = (item.sender + item.receiver) % len(self.hospitals)
        receiver = self.principal(receiver_index)
        patient = self.patient(item.patient)
        letter: dict[str, Any] = {
            "resourceType": "ServiceRequest",
            "status": "active",
            "intent": "order",
            "category": [REFERRAL],
            "subject": reference("Patient", patient),
            "requester": {"reference": sender.organization},
            "performer": [{"reference": receiver.organization}],
            "authoredOn": fhir_instant(self.now),
            "reasonCode": [
                {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10", "code": "J18.9"}]}
            ],
        }
        skip = LEVELS.index(self.plan.levels[receiver_index]) - LEVELS.index(
            self.plan.levels[item.sender]
        )
        if skip > 1:
            letter["priority"] = "stat"  # an emergency may skip a level
        tracked = self.write(sender, letter)
        for number, plan in enumerate(item.tasks):
            self._task(tracked.id, patient, sender, receiver, plan, number)
        if item.letter != "active":
            assert tracked.content is not None
            self.update(tracked, {**tracked.content, "status": item.letter})

    def _task(
        self,
        letter: str,
        patient: str,
        sender: Principal,
        receiver: Principal,
        plan: TaskPlan,
        number: int,
    ) -> None:
        task: dict[str, Any] = {
            "resourceType": "Task",
            "status": "requested",
            "intent": "order",
            "focus": reference("ServiceRequest", letter),
            "for": reference("Patient", patient),
            "requester": {"reference": sender.organization},
            "owner": {"reference": receiver.organization},
        }
        tracked = self.write(sender, task)
        steps = {
            "requested": [],
            "accepted": [("accepted", receiver)],
            "in-progress": [("accepted", receiver), ("in-progress", receiver)],
            "completed": [
                ("accepted", receiver),
                ("in-progress", receiver),
                ("completed", receiver),
            ],
            "failed": [("accepted", receiver), ("in-progress", receiver), ("failed", receiver)],
            "rejected": [("rejected", receiver)],
            "cancelled": [("cancelled", sender)],
        }[plan.outcome]
        for status, by in steps:
            body = {**task, "status": status}
            if status == "completed":
                body["output"] = [
                    {
                        "type": {"text": "discharge summary"},
                        "valueReference": reference("DocumentReference", f"summary-{number}"),
                    }
                ]
            if status == "rejected":
                body["statusReason"] = {"text": "no bed"}
            if status in ENDED_TASK and plan.ended is not None:
                body["executionPeriod"] = {"end": self.task_end(plan.ended)}
            self.update(tracked, body, by)

    def task_end(self, kind: str) -> str:
        if kind == "just-expired":
            return fhir_local(self.now - timedelta(days=REFERRAL_DAYS, hours=3))
        return fhir_instant(self.now - timedelta(days={"recent": 10, "long-ago": 200}[kind]))

    def _consent(self, item: ConsentWrite) -> None:
        patient = self.patient(item.patient)
        if item.author is None:
            author = citizen_principal(self.person_of(patient))
        else:
            author = self.principal(item.author)
        provision: dict[str, Any] = {"type": item.kind}
        if item.actor is not None:
            provision["actor"] = [self.actor(item.actor)]
        period = self.period(item.period)
        if period:
            provision["period"] = period
        if item.purpose:
            provision["purpose"] = [{"system": PURPOSE_SYSTEM, "code": item.purpose}]
        if item.exception is not None:
            kind, actor = item.exception
            nested: dict[str, Any] = {"type": kind}
            if actor is not None:
                nested["actor"] = [self.actor(actor)]
            provision["provision"] = [nested]
        consent: dict[str, Any] = {
            "resourceType": "Consent",
            "status": "inactive" if item.inactive else "active",
            "scope": {"coding": [{"system": CONSENT_SCOPE, "code": "patient-privacy"}]},
            "category": [{"coding": [{"system": LOINC, "code": "59284-0"}]}],
            "patient": reference("Patient", patient),
            "dateTime": fhir_instant(self.now),
            "provision": provision,
        }
        if not author.is_citizen:
            consent["sourceAttachment"] = {"contentType": "application/pdf", "title": "form"}
        tracked = self.write(author, consent)
        if item.withdrawn and not item.inactive:
            self.update(tracked, {**consent, "status": "inactive"})

    def actor(self, hospital: int) -> dict[str, Any]:
        return {
            "role": {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
                        "code": "IRCP",
                    }
                ]
            },
            "reference": {"reference": self.hospitals[hospital]},
        }

    def period(self, kind: str | None) -> dict[str, str]:
        day = timedelta(days=1)
        if kind == "current":
            return {
                "start": fhir_instant(self.now - 5 * day),
                "end": fhir_instant(self.now + 5 * day),
            }
        if kind == "past":
            return {"start": fhir_instant(self.now - 60 * day), "end": fhir_instant(self.now - day)}
        if kind == "future":
            return {"start": fhir_instant(self.now + day)}
        if kind == "past-dates":
            return {
                "start": (self.now - 60 * day).date().isoformat(),
                "end": (self.now - 2 * day).date().isoformat(),
            }
        if kind == "ended-hours-ago":
            return {
                "start": fhir_local(self.now - 5 * day),
                "end": fhir_local(self.now - timedelta(hours=3)),
            }
        if kind == "started-hours-ago":
            return {"start": fhir_local(self.now - timedelta(hours=3))}
        if kind == "future-dates":
            return {
                "start": (self.now + 2 * day).date().isoformat(),
                "end": (self.now + 60 * day).date().isoformat(),
            }
        return {}

    def _other(self, item: OtherWrite) -> None:
        if item.resource_type == "Binary":
            resource = {"resourceType": "Binary", "contentType": "text/plain", "data": "aGk="}
        else:
            resource = {"resourceType": "Medication", "code": {"text": "paracetamol"}}
        self.write(self.principal(item.author), resource)

    def _relabel(self, item: RelabelWrite) -> None:
        live = [o for o in self.observations if self.resources[("Observation", o)].live]
        if not live:
            self.skipped.append(item)
            return
        tracked = self.resources[("Observation", live[item.observation % len(live)])]
        assert tracked.content is not None
        content = {k: v for k, v in tracked.content.items() if k != "meta"}
        self.update(tracked, {**content, **self.security(item.label)})

    def _relink(self, item: RelinkWrite) -> None:
        tracked = self.resources[("Patient", self.patient(item.patient))]
        assert tracked.content is not None
        identifiers = [i for i in tracked.content["identifier"] if i["system"] != CCCD]
        if item.fresh:
            identifiers.append({"system": CCCD, "value": cccd(self.plan.fresh_serial)})
        elif item.cccd_of is not None and self.plan.persons[item.cccd_of].cccd:
            identifiers.append({"system": CCCD, "value": self.plan.persons[item.cccd_of].cccd})
        content = {k: v for k, v in tracked.content.items() if k != "meta"}
        self.update(tracked, {**content, "identifier": identifiers})

    def _delete(self, item: DeleteWrite) -> None:
        live = [e for e in self.encounters if self.resources[("Encounter", e)].live]
        if not live:
            self.skipped.append(item)
            return
        tracked = self.resources[("Encounter", live[item.encounter % len(live)])]
        with self.hub.db.transaction() as session:
            store = store_for(session, self.hub.settings, tracked.author)
            result = interactions.delete(store, tracked.author, "Encounter", tracked.id)
            store.flush()
        assert result.status == 204 and result.stored is not None
        tracked.content, tracked.last_updated = None, result.stored.last_updated
        tracked.versions = result.stored.version_id

    # ------------------------------------------------------------------ the model
    def live(self, resource_type: str | None = None) -> Iterator[Tracked]:
        for tracked in self.resources.values():
            if tracked.live and resource_type in (None, tracked.resource_type):
                yield tracked

    def cccd_of(self, patient_id: str) -> str | None:
        tracked = self.resources.get(("Patient", patient_id))
        if tracked is None or tracked.content is None:
            return None
        found = [i["value"] for i in tracked.content.get("identifier", []) if i["system"] == CCCD]
        return found[0] if found else None

    def person_of(self, patient_id: str) -> str:
        number = self.cccd_of(patient_id)
        return person_of_cccd(number) if number else person_of_patient_id(patient_id)

    def persons(self) -> list[str]:
        return sorted({self.person_of(p) for p in self.patients})

    @staticmethod
    def patients_of(tracked: Tracked) -> frozenset[str]:
        """The Patients a resource is about, as written (its Patient compartment links)."""
        content = tracked.content
        if content is None:
            return frozenset()
        kind = tracked.resource_type
        references: list[Any] = []
        if kind == "Patient":
            return frozenset({tracked.id})
        if kind == "Observation":
            references = [content.get("subject"), *(content.get("performer") or [])]
        elif kind in ("Encounter", "ServiceRequest"):
            references = [content.get("subject")]
        elif kind == "Appointment":
            references = [p.get("actor") for p in content.get("participant") or []]
        elif kind == "Consent":
            references = [content.get("patient")]
        elif kind == "Task":
            references = [content.get("for")]
        texts = [r.get("reference", "") for r in references if isinstance(r, dict)]
        return frozenset(t.split("/", 1)[1] for t in texts if t.startswith("Patient/"))

    def facts(self, tracked: Tracked) -> Facts:
        labels = (tracked.content or {}).get("meta", {}).get("security", [])
        restricted = POLICY.is_restricted((label["system"], label["code"]) for label in labels)
        persons = frozenset(self.person_of(p) for p in self.patients_of(tracked))
        return Facts(tracked.resource_type, tracked.owner, persons, restricted)

    def grants(self) -> list[tuple[tuple[str, str], Grant]]:
        """Every grant the live resources stand for, with its source."""
        found: list[tuple[tuple[str, str], Grant]] = []
        for tracked in self.live():
            for organization, patient, kind, starts, ends, purpose in self._grants_of(tracked):
                grant = Grant(organization, self.person_of(patient), kind, starts, ends, purpose)
                found.append((tracked.key, grant))
        return found

    def _grants_of(
        self, tracked: Tracked
    ) -> Iterator[tuple[str, str, str, datetime | None, datetime | None, str | None]]:
        content = tracked.content or {}
        kind = tracked.resource_type
        days = timedelta(days=REFERRAL_DAYS)
        if kind == "Encounter":
            organization = tracked.owner or content["serviceProvider"]["reference"]
            yield (
                organization,
                content["subject"]["reference"].split("/")[1],
                CARE,
                None,
                None,
                None,
            )
        elif kind == "Appointment" and content["status"] != "entered-in-error":
            end = content.get("end")
            ends = parse_instant(end) + days if end else None
            for patient in self.patients_of(tracked):
                assert tracked.owner is not None
                yield tracked.owner, patient, CARE, None, ends, None
        elif kind == "ServiceRequest" and content["status"] != "entered-in-error":
            tasks = [
                t
                for t in self.live("Task")
                if t.content and t.content["focus"]["reference"] == f"ServiceRequest/{tracked.id}"
            ]
            ended: datetime | None
            if tasks:
                if any(t.content and t.content["status"] not in ENDED_TASK for t in tasks):
                    ended = None
                else:
                    ended = max(self._task_end(t) for t in tasks)
            elif content["status"] == "active":
                ended = None
            else:
                ended = tracked.last_updated
            patient = content["subject"]["reference"].split("/")[1]
            hospitals = [content["requester"]["reference"], content["performer"][0]["reference"]]
            for hospital in hospitals:
                yield hospital, patient, CARE, None, ended + days if ended else None, None
        elif kind == "Consent" and content["status"] == "active":
            patient = content["patient"]["reference"].split("/")[1]
            base = content["provision"]
            for item in [base, *(base.get("provision") or [])]:
                period = item.get("period") or base.get("period") or {}
                starts = parse_instant(period["start"]) if "start" in period else None
                ends = parse_instant(period["end"], end=True) if "end" in period else None
                actors = [a["reference"]["reference"] for a in item.get("actor") or []]
                purposes = [p["code"] for p in item.get("purpose") or []] or [None]
                for organization in actors or [EVERY_HOSPITAL]:
                    for purpose in purposes:
                        yield organization, patient, item["type"], starts, ends, purpose

    @staticmethod
    def _task_end(task: Tracked) -> datetime:
        end = ((task.content or {}).get("executionPeriod") or {}).get("end")
        return parse_instant(end) if end else task.last_updated

    def principals(self) -> list[Principal]:
        """Each hospital (purpose TREAT), a citizen of each person, the operator."""
        return [
            *(hospital_principal(h) for h in self.hospitals),
            *(citizen_principal(person) for person in self.persons()),
            OPERATOR_PRINCIPAL,
        ]


def parse_instant(text: str, *, end: bool = False) -> datetime:
    """A FHIR dateTime as this test writes them (UTC instants, or dates in Vietnam time; a date
    as a period's end covers its whole day)."""
    if len(text) == 10:
        day = datetime.fromisoformat(text).date() + timedelta(days=1 if end else 0)
        return datetime.combine(day, time(0), tzinfo=LOCAL_ZONE)
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def clear(hub: Hub) -> None:
    """Empty what the previous example wrote (one migrated database serves every example)."""
    tables = ResourceRow.metadata.tables
    with hub.db.transaction() as session:
        for name in TABLES:
            session.execute(delete(tables[name]))
