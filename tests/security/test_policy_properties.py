"""Property tests: the SQL form of the access policy never shows what the pure policy refuses,
and shows everything it allows.

A random small network (:mod:`tests.security.policy_world`) is written through the FHIR
interactions, each write by its hospital (or the operator, or the citizen for her Consents);
then, for every principal (each hospital with purpose TREAT, a citizen of each person, the
operator), reads, searches (plain, paged with ``_total=accurate``, chains of one and two links,
``_has``, ``_include``/``_revinclude``, a system search) and no-op updates are compared with
:func:`~emr_hub.security.policy.may_read` and :func:`~emr_hub.security.policy.change_refusal`,
fed with facts and grants the model computes from what was written (themselves checked against
the tables the SQL reads).

One migrated database per test function (SQLite and PostgreSQL, through the ``hub`` fixture),
emptied before each example. ``POLICY_EXAMPLES`` sets the number of worlds per database;
hypothesis is steered (:func:`hypothesis.target`) towards worlds where a grant's period or
purpose, a restricting label or a second person decides what a hospital sees.

The pure policy's own properties close the file: :func:`person_open` against the precedence
its module states, :func:`may_read` by category, :func:`change_refusal` for ownership.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
from hypothesis import HealthCheck, example, given, settings, target
from hypothesis import strategies as st
from sqlalchemy import select

from emr_hub import security
from emr_hub.errors import FhirError
from emr_hub.fhir import interactions
from emr_hub.fhir.identifiers import CCCD
from emr_hub.fhir.search.searchset import search_bundle, system_search_bundle
from emr_hub.fhir.store import FhirStore
from emr_hub.hub import Hub
from emr_hub.referrals import enforcement
from emr_hub.security.access import store_for
from emr_hub.security.policy import (
    BREAK_GLASS,
    CARE,
    DENY,
    DIRECTORY,
    EVERY_HOSPITAL,
    HUB_ONLY,
    PERMIT,
    Facts,
    Grant,
    Reader,
    change_refusal,
    described_by,
    may_read,
    person_open,
)
from emr_hub.security.principal import Principal
from storage.db import as_utc
from storage.tables import AccessGrant, PatientCompartmentRow, ResourceRow
from tests.security.policy_world import (
    CODES,
    LOINC,
    MRN,
    POLICY,
    ConsentWrite,
    PersonPlan,
    Plan,
    Tracked,
    World,
    clear,
    hospital_principal,
    plans,
    reader_of,
)

EXAMPLES = int(os.environ.get("POLICY_EXAMPLES", "16"))
BASE = "http://hub.test/fhir"
Key = tuple[str, str]
GRANT = AccessGrant.__table__
COMPARTMENT = PatientCompartmentRow.__table__
RESOURCE = ResourceRow.__table__


PERMIT_ENDED_HOURS_AGO = Plan(
    levels=("BAN_DAU", "BAN_DAU"),
    persons=(PersonPlan(None, (0,)),),
    writes=(
        ConsentWrite(
            author=None,
            patient=0,
            kind="permit",
            actor=1,
            period="ended-hours-ago",
            purpose=None,
            inactive=False,
            exception=None,
            withdrawn=False,
        ),
    ),
    fresh_serial=1,
)
"""The citizen let Organization/h1 see her record until 3 hours ago (a period in Vietnam
time): it no longer may (on SQLite the grant's end was stored as its wall time, read as UTC,
and the record stayed open 7 hours longer)."""


@pytest.fixture
def policy_hub(hub: Hub) -> Hub:
    security.install(hub.settings)
    enforcement.install()
    return hub


def test_sql_shows_exactly_what_the_policy_allows(policy_hub: Hub) -> None:
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(plan=plans(), count=st.integers(1, 4), pick=st.integers(0, 9))
    @example(plan=PERMIT_ENDED_HOURS_AGO, count=1, pick=0)
    def check(plan: Plan, count: int, pick: int) -> None:
        clear(policy_hub)
        world = World(policy_hub, plan).build()
        checking = Check(world, count, pick)
        target(float(checking.decisive()), label="decisions that hang on a fine point")
        checking.run()

    check()


# ------------------------------------------------------------------------------ checking
@dataclass
class Page:
    matches: list[Key]
    included: list[Key]
    total: int | None


class Check:
    """The properties, for one world."""

    def __init__(self, world: World, count: int, pick: int) -> None:
        self.world = world
        self.hub = world.hub
        self.count = count
        """The ``_count`` of the paged searches."""
        self.pick = pick
        """Which identifier the chains look for, which code ``_has`` does."""
        self.now = datetime.now(UTC)
        self.grants = [grant for _, grant in world.grants()]
        self.facts = {t.key: world.facts(t) for t in world.resources.values()}

    def run(self) -> None:
        for principal in self.world.principals():
            with self.hub.db.snapshot() as session:
                store = store_for(session, self.hub.settings, principal, moment=self.now)
                Reading(self, principal, store).run()
        self.model_matches_the_tables()
        for organization in self.world.hospitals:
            self.changes_only_its_own(organization)

    def decisive(self) -> int:
        """How many of the hospitals' decisions would change if the policy ignored a grant's
        period or purpose, a resource's restriction, or all but one of its persons: hypothesis
        steers towards worlds where these fine points decide (and so are tested)."""
        variants = [
            [replace(g, ends=None) for g in self.grants],
            [replace(g, starts=None) for g in self.grants],
            [replace(g, purpose=None) for g in self.grants],
        ]
        changed = 0
        for organization in self.world.hospitals:
            reader = Reader("hospital", organization)
            for facts in self.facts.values():
                if facts.owner == organization or not facts.persons:
                    continue
                decision = may_read(POLICY, reader, facts, self.grants, self.now)
                others = [may_read(POLICY, reader, facts, v, self.now) for v in variants]
                unrestricted = replace(facts, restricted=False)
                others.append(may_read(POLICY, reader, unrestricted, self.grants, self.now))
                for person in facts.persons if len(facts.persons) > 1 else ():
                    alone = replace(facts, persons=frozenset({person}))
                    others.append(may_read(POLICY, reader, alone, self.grants, self.now))
                changed += sum(other != decision for other in others)
        return changed

    def model_matches_the_tables(self) -> None:
        """What the policy's SQL reads (grants, compartment persons, owners, restriction) is
        what the model computed from the writes: a disagreement here is a derivation bug."""
        with self.hub.db.snapshot() as session:
            rows = session.execute(
                select(
                    GRANT.c.source_type,
                    GRANT.c.source_id,
                    GRANT.c.organization,
                    GRANT.c.person,
                    GRANT.c.kind,
                    GRANT.c.starts,
                    GRANT.c.ends,
                    GRANT.c.purpose,
                )
            ).all()
            members = session.execute(
                select(COMPARTMENT.c.resource_type, COMPARTMENT.c.resource_id, COMPARTMENT.c.person)
            ).all()
            resources = session.execute(
                select(
                    RESOURCE.c.resource_type,
                    RESOURCE.c.id,
                    RESOURCE.c.owner_org,
                    RESOURCE.c.restricted,
                    RESOURCE.c.deleted,
                )
            ).all()
        stored_grants = {
            (s, i, o, p, k, _utc(starts), _utc(ends), purpose)
            for s, i, o, p, k, starts, ends, purpose in rows
        }
        model_grants = {
            (*source, g.organization, g.person, g.kind, _utc(g.starts), _utc(g.ends), g.purpose)
            for source, g in self.world.grants()
        }
        assert stored_grants == model_grants, (
            f"access_grant rows differ from the model: only stored "
            f"{sorted(stored_grants - model_grants, key=str)}, only in the model "
            f"{sorted(model_grants - stored_grants, key=str)}"
        )
        persons: dict[Key, set[str]] = {}
        for resource_type, resource_id, person in members:
            persons.setdefault((resource_type, resource_id), set()).add(person)
        for resource_type, resource_id, owner, restricted, deleted in resources:
            key = (resource_type, resource_id)
            facts = self.facts[key]
            stored = Facts(resource_type, owner, frozenset(persons.get(key, ())), bool(restricted))
            assert stored == facts, f"{key}: stored facts {stored}, model {facts}"
            assert deleted is not self.world.resources[key].live

    def changes_only_its_own(self, organization: str) -> None:
        """A hospital's no-op update of each live resource is refused (403) exactly when
        :func:`change_refusal` refuses it: a hospital changes what it created, what its
        directory entries describe, and a referral Task it is a party to."""
        principal = hospital_principal(organization)
        reader = reader_of(principal)
        outcomes: list[tuple[Key, int, str | None]] = []
        with self.hub.db.transaction() as session:
            store = store_for(session, self.hub.settings, principal)
            for tracked in list(self.world.live()):
                assert tracked.content is not None
                refusal = change_refusal(
                    POLICY,
                    reader,
                    tracked.resource_type,
                    existing=True,
                    owner=tracked.owner,
                    current=tracked.content,
                    new=tracked.content,
                    editors=_editors(tracked),
                )
                try:
                    result = interactions.update(
                        store, principal, tracked.resource_type, tracked.id, tracked.content
                    )
                    status = result.status
                except FhirError as error:
                    status = error.status
                outcomes.append((tracked.key, status, refusal))
            store.flush()
        wrong = [(k, s, r) for k, s, r in outcomes if s != (403 if r else 200)]
        assert not wrong, f"{organization}: (resource, status, the pure refusal) {wrong}"


def _editors(tracked: Tracked) -> frozenset[str]:
    content = tracked.content or {}
    if tracked.resource_type != "Task" or "focus" not in content:
        return frozenset()
    return frozenset({content["requester"]["reference"], content["owner"]["reference"]})


def _utc(moment: datetime | None) -> datetime | None:
    return None if moment is None else as_utc(moment)


class Reading:
    """Every read path, for one principal, against the pure policy."""

    def __init__(self, check: Check, principal: Principal, store: FhirStore) -> None:
        self.check = check
        self.world = check.world
        self.principal = principal
        self.reader = reader_of(principal)
        self.store = store
        self.allowed = {
            key: may_read(POLICY, self.reader, facts, check.grants, check.now)
            for key, facts in check.facts.items()
        }
        self.who = principal.organization or f"{principal.kind} {principal.person or ''}".strip()

    def visible(self, resource_type: str) -> set[Key]:
        return {t.key for t in self.world.live(resource_type) if self.allowed[t.key]}

    def readable(self, reference: Any, resource_type: str) -> str | None:
        """The id of a live resource the principal may read, referred to by ``reference``."""
        text = reference.get("reference", "") if isinstance(reference, dict) else ""
        kind, _, target = text.partition("/")
        tracked = self.world.resources.get((kind, target))
        if kind != resource_type or tracked is None or not tracked.live:
            return None
        return target if self.allowed[tracked.key] else None

    def run(self) -> None:
        self.reads()
        self.histories()
        count = self.check.count
        paged = ("Observation", "Patient", "Encounter", "Appointment", "Consent")
        others = ("ServiceRequest", "Task", "Organization", "Binary", "Medication")
        for resource_type in (*paged, *others):
            query = [("_total", "accurate"), ("_count", str(count))]
            self.expect(resource_type, query, self.visible(resource_type))
        self.chains()
        self.reverse_chains()
        self.includes()
        types = ("Observation", "Patient", "Encounter", "Consent", "Binary", "Medication")
        expected = set().union(*(self.visible(t) for t in types))
        query = [("_type", ",".join(types)), ("_total", "accurate"), ("_count", str(count + 2))]
        self.expect("", query, expected, system=types)

    # ---------------------------------------------------------------- reads
    def reads(self) -> None:
        wrong = []
        for tracked in self.world.resources.values():
            allowed = self.allowed[tracked.key]
            expected = (200 if tracked.live else 410) if allowed else 404
            try:
                self.store.read(tracked.resource_type, tracked.id)
                status = 200
            except FhirError as error:
                status = error.status
            if status != expected:
                wrong.append((tracked.key, status, expected))
        assert not wrong, f"{self.who}: reads (resource, status, expected) {wrong}"

    def histories(self) -> None:
        """The system history (the policy's condition for any type) and a type's history
        hold every version of what the principal may read (deleted ones included), and
        nothing else."""
        for resource_type in (None, "Observation"):
            page, cursor = self.store.history(resource_type, count=100_000)
            assert cursor is None
            found = Counter((s.resource_type, s.id) for s in page)
            expected = Counter(
                {
                    t.key: t.versions
                    for t in self.world.resources.values()
                    if self.allowed[t.key] and resource_type in (None, t.resource_type)
                }
            )
            what = f"{self.who}: history of {resource_type or 'the system'}"
            leaked = set(found) - set(expected)
            assert not leaked, f"{what} shows what the policy refuses: {self.explain(leaked)}"
            assert found == expected, f"{what}: versions {found}, expected {expected}"

    # ------------------------------------------------------------- searches
    def search(
        self, resource_type: str, query: list[tuple[str, str]], system: Iterable[str] = ()
    ) -> list[Page]:
        """Every page of a search, following the bundle's ``next`` links."""
        pages: list[Page] = []
        for _ in range(200):
            if system:
                bundle = system_search_bundle(
                    self.store, self.principal, list(system), query, BASE, BASE
                )
            else:
                bundle = search_bundle(self.store, self.principal, resource_type, query, BASE, BASE)
            entries = bundle.get("entry", [])
            pages.append(
                Page(
                    [_key(e) for e in entries if e["search"]["mode"] == "match"],
                    [_key(e) for e in entries if e["search"]["mode"] == "include"],
                    bundle.get("total"),
                )
            )
            links = [link["url"] for link in bundle["link"] if link["relation"] == "next"]
            if not links:
                return pages
            query = parse_qsl(urlsplit(links[0]).query, keep_blank_values=True)
        raise AssertionError(f"{resource_type}?{query}: more than 200 pages")

    def expect(
        self,
        resource_type: str,
        query: list[tuple[str, str]],
        expected: set[Key],
        *,
        system: Iterable[str] = (),
        included: Callable[[list[Key]], set[Key]] | None = None,
    ) -> None:
        """The search returns exactly ``expected``, without repeats, in pages of at most
        ``_count`` (none empty but a lone first page) each with the exact ``_total``; and
        each page includes exactly ``included(page)``."""
        what = f"{self.who}: {resource_type or 'system'}?{query}"
        pages = self.search(resource_type, query, system)
        found = [key for page in pages for key in page.matches]
        leaked = set(found) - expected
        assert not leaked, f"{what} returned what the policy refuses: {self.explain(leaked)}"
        missing = expected - set(found)
        assert not missing, f"{what} misses what the policy allows: {self.explain(missing)}"
        assert len(found) == len(set(found)), f"{what}: repeated matches {found}"
        size = dict(query).get("_count")
        for page in pages:
            if size is not None:
                assert len(page.matches) <= int(size), f"{what}: page of {len(page.matches)}"
            assert page.matches or len(pages) == 1, f"{what}: an empty page"
            if dict(query).get("_total") == "accurate":
                assert page.total == len(expected), (
                    f"{what}: _total {page.total}, the policy allows {len(expected)}"
                )
            want = included(page.matches) if included is not None else set()
            got = set(page.included)
            assert not got - want, (
                f"{what} included what the policy refuses: {self.explain(got - want)}"
            )
            assert not want - got, f"{what} did not include {self.explain(want - got)}"

    def chains(self) -> None:
        """``subject:Patient.identifier`` (one link) and ``focus:ServiceRequest.subject:
        Patient.identifier`` (two): a match only through Patients (and letters) the principal
        may read."""
        numbers = sorted({n for p in self.world.patients if (n := self.world.cccd_of(p))})
        pick = self.check.pick
        values = [(MRN, self.world.patients[pick % len(self.world.patients)])]
        if numbers:
            values.append((CCCD, numbers[pick % len(numbers)]))
        for system, value in values:
            identified = {
                pid
                for pid in self.world.patients
                if {"system": system, "value": value}
                in self.content(("Patient", pid)).get("identifier", [])
            }
            expected = {
                key
                for key in self.visible("Observation")
                if self.readable(self.content(key).get("subject"), "Patient") in identified
            }
            query = [("subject:Patient.identifier", f"{system}|{value}"), ("_total", "accurate")]
            self.expect("Observation", query, expected)
            tasks = set()
            for key in self.visible("Task"):
                letter = self.readable(self.content(key).get("focus"), "ServiceRequest")
                if letter is None:
                    continue
                subject = self.content(("ServiceRequest", letter)).get("subject")
                if self.readable(subject, "Patient") in identified:
                    tasks.add(key)
            chain = "focus:ServiceRequest.subject:Patient.identifier"
            self.expect("Task", [(chain, f"{system}|{value}")], tasks)

    def reverse_chains(self) -> None:
        """``Patient?_has:Observation:<subject|performer>:code=``: a Patient matches only
        through an Observation the principal may read."""
        for code in [CODES[self.check.pick % len(CODES)]]:
            for param in ("subject", "performer"):
                pointing = set()
                for key in self.visible("Observation"):
                    content = self.content(key)
                    if content["code"]["coding"][0]["code"] != code:
                        continue
                    targets = content.get(param)
                    for item in targets if isinstance(targets, list) else [targets]:
                        pointing.add(self.readable(item, "Patient"))
                expected = {("Patient", p) for p in pointing if p}
                name = f"_has:Observation:{param}:code"
                self.expect("Patient", [(name, f"{LOINC}|{code}")], expected)

    def includes(self) -> None:
        count = str(self.check.count)

        def subjects(page: list[Key]) -> set[Key]:
            found = (self.readable(self.content(k).get("subject"), "Patient") for k in page)
            return {("Patient", p) for p in found if p}

        self.expect(
            "Observation",
            [("_include", "Observation:subject"), ("_count", count)],
            self.visible("Observation"),
            included=subjects,
        )

        def observations(page: list[Key]) -> set[Key]:
            ids = {i for _, i in page}
            return {
                key
                for key in self.visible("Observation")
                if self.content(key)["subject"]["reference"].split("/")[1] in ids
            }

        self.expect(
            "Patient",
            [("_revinclude", "Observation:subject"), ("_count", count), ("_total", "accurate")],
            self.visible("Patient"),
            included=observations,
        )

        def letters(page: list[Key]) -> set[Key]:
            ids = {i for _, i in page}
            tasks = {
                key
                for key in self.visible("Task")
                if self.content(key)["focus"]["reference"].split("/")[1] in ids
            }
            return subjects(page) | tasks

        query = [
            ("_include", "ServiceRequest:subject"),
            ("_revinclude", "Task:focus"),
            ("_count", count),
        ]
        self.expect("ServiceRequest", query, self.visible("ServiceRequest"), included=letters)

    # ------------------------------------------------------------- reporting
    def content(self, key: Key) -> dict[str, Any]:
        content = self.world.resources[key].content
        assert content is not None
        return content

    def explain(self, keys: Iterable[Key]) -> str:
        """What the pure policy was fed about each resource, to read a failure."""
        lines = []
        for key in sorted(keys):
            facts = self.check.facts.get(key)
            persons = facts.persons if facts else frozenset()
            grants = [g for g in self.check.grants if g.person in persons]
            lines.append(f"\n  {key}: {facts}; grants about its persons: {grants}")
        return "".join(lines) + f"\n  reader {self.reader}, now {self.check.now.isoformat()}"


def _key(entry: dict[str, Any]) -> Key:
    return (entry["resource"]["resourceType"], entry["resource"]["id"])


# ---------------------------------------------------------------------- the pure policy
NOW = datetime(2026, 12, 6, 9, 0, tzinfo=UTC)
A, B = "Organization/a", "Organization/b"
MOMENTS = st.sampled_from(
    [None, NOW - timedelta(days=2), NOW - timedelta(seconds=1), NOW, NOW + timedelta(seconds=1)]
)


@st.composite
def grants(draw: st.DrawFn) -> Grant:
    kind = draw(st.sampled_from([CARE, PERMIT, DENY, BREAK_GLASS]))
    hospitals = [A, B, EVERY_HOSPITAL] if kind in (PERMIT, DENY) else [A, B]
    return Grant(
        draw(st.sampled_from(hospitals)),
        draw(st.sampled_from(["p", "q"])),
        kind,
        starts=draw(MOMENTS),
        ends=draw(MOMENTS),
        purpose=draw(st.sampled_from([None, "TREAT", "HRESCH"])),
    )


def open_by_precedence(
    organization: str, person: str, restricted: bool, granted: list[Grant], purpose: str
) -> bool:
    """The module docstring's list, read top to bottom: the first kind of grant that applies
    decides; a care relationship counts only for data that is not restricted."""
    applying = [
        g
        for g in granted
        if g.person == person
        and (g.starts is None or g.starts <= NOW)
        and (g.ends is None or g.ends > NOW)
        and g.purpose in (None, purpose)
    ]
    precedence = [
        (BREAK_GLASS, organization, True),
        (DENY, organization, False),
        (PERMIT, organization, True),
        (DENY, EVERY_HOSPITAL, False),
        (PERMIT, EVERY_HOSPITAL, True),
        (CARE, organization, not restricted),
    ]
    for kind, hospital, verdict in precedence:
        if any(g.kind == kind and g.organization == hospital for g in applying):
            return verdict
    return False


@settings(max_examples=400, deadline=None)
@given(
    granted=st.lists(grants(), max_size=6),
    restricted=st.booleans(),
    purpose=st.sampled_from(["TREAT", "HRESCH"]),
)
def test_person_open_is_the_documented_precedence(
    granted: list[Grant], restricted: bool, purpose: str
) -> None:
    for organization in (A, B):
        for person in ("p", "q"):
            expected = open_by_precedence(organization, person, restricted, granted, purpose)
            actual = person_open(
                organization,
                person,
                restricted=restricted,
                grants=granted,
                now=NOW,
                purpose=purpose,
            )
            assert actual is expected, (organization, person)


@settings(max_examples=300, deadline=None)
@given(
    granted=st.lists(grants(), max_size=6),
    persons=st.frozensets(st.sampled_from(["p", "q"])),
    owner=st.sampled_from([A, B, None]),
    restricted=st.booleans(),
    resource_type=st.sampled_from(["Observation", "Subscription", "Organization", "AuditEvent"]),
)
def test_a_hospital_reads_its_own_or_what_every_person_opens(
    granted: list[Grant],
    persons: frozenset[str],
    owner: str | None,
    restricted: bool,
    resource_type: str,
) -> None:
    facts = Facts(resource_type, owner, persons, restricted)
    category = POLICY.category(resource_type)
    expected = category == DIRECTORY or (
        category != HUB_ONLY
        and (
            owner == A
            or (
                category == "patient"
                and bool(persons)
                and all(open_by_precedence(A, p, restricted, granted, "TREAT") for p in persons)
            )
        )
    )
    assert may_read(POLICY, Reader("hospital", A), facts, granted, NOW) is expected
    citizen = Reader("citizen", person="p")
    assert may_read(POLICY, citizen, facts, granted, NOW) is (
        category == DIRECTORY or (category == "patient" and persons == {"p"})
    )


WRITABLE = ["Observation", "Encounter", "Task", "Patient", "Subscription", "Medication"]


@settings(max_examples=300, deadline=None)
@given(
    resource_type=st.sampled_from([*WRITABLE, "Organization", "Location", "Consent"]),
    writer=st.sampled_from([A, B]),
    owner=st.sampled_from([A, B, None]),
    editors=st.frozensets(st.sampled_from([A, B])),
    existing=st.booleans(),
    deleting=st.booleans(),
    describes=st.sampled_from([None, A, B]),
)
def test_a_hospital_changes_only_what_it_created(
    resource_type: str,
    writer: str,
    owner: str | None,
    editors: frozenset[str],
    existing: bool,
    deleting: bool,
    describes: str | None,
) -> None:
    current: dict[str, Any] | None = {"resourceType": resource_type}
    if resource_type == "Organization" and describes:
        current = {"resourceType": "Organization", "id": describes.split("/")[1]}
    elif resource_type == "Location" and describes:
        current = {"resourceType": "Location", "managingOrganization": {"reference": describes}}
    if not existing:
        current, owner = None, None
    new = None if deleting else {"resourceType": resource_type}
    refusal = change_refusal(
        POLICY,
        Reader("hospital", writer),
        resource_type,
        existing=existing,
        owner=owner,
        current=current,
        new=new,
        editors=editors,
    )
    described = described_by(current) if current is not None else None
    if resource_type == "Consent" and deleting:
        allowed = False  # withdrawn, never deleted
    elif not existing:
        allowed = True  # a create, for any patient
    else:
        allowed = (
            owner == writer
            or writer in editors
            or (POLICY.category(resource_type) == DIRECTORY and writer in (described or ()))
        )
    assert (refusal is None) is allowed, refusal
    assert (
        change_refusal(
            POLICY,
            Reader("operator"),
            resource_type,
            existing=existing,
            owner=owner,
            current=current,
            new=new,
            editors=editors,
        )
        is None
    )  # the operator changes everything but the hub's own records
