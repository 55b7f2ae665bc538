"""The access condition as SQL: built once per kind of reader on the searched alias, and
unusable without the principal's values (a statement that forgets them fails, it does not
run with another principal's)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import select
from sqlalchemy.exc import StatementError

from emr_hub.fhir.search.compile import SEARCHED
from emr_hub.hub import Hub
from emr_hub.security.access import PolicyAccess, hospital_access, process_policy
from emr_hub.security.principal import Principal
from tests.security.policy_world import citizen_principal, hospital_principal

NOW = datetime(2026, 12, 1, tzinfo=UTC)


def _access(principal: Principal) -> PolicyAccess:
    return PolicyAccess(process_policy(), principal, NOW)


def test_the_condition_on_the_searched_alias_is_one_object_per_kind_of_reader() -> None:
    first = _access(hospital_principal("Organization/a")).visible(SEARCHED, "Observation")
    second = _access(hospital_principal("Organization/b")).visible(SEARCHED, "Observation")
    citizen = _access(citizen_principal("p" * 16)).visible(SEARCHED, "Observation")
    assert first is not None and first is second
    assert citizen is not None and citizen is not first
    # and the hospitals' values stay theirs: only the parameters differ
    assert _access(hospital_principal("Organization/a")).params()["policy_org"] == (
        "Organization/a"
    )


def test_a_condition_on_any_other_alias_is_built_anew() -> None:
    other = SEARCHED.element.alias("elsewhere")
    access = _access(hospital_principal("Organization/a"))
    assert access.visible(other, "Observation") is not access.visible(other, "Observation")


def test_a_statement_run_without_the_principals_values_fails(hub: Hub) -> None:
    access = hospital_access("Organization/a", NOW)
    assert access is not None
    condition = access.visible(SEARCHED, "Observation")
    assert condition is not None
    query = select(SEARCHED.c.id).where(condition)
    with hub.db.snapshot() as session:
        with pytest.raises(StatementError, match="value is required for bind parameter 'policy_"):
            session.execute(query).all()
        assert session.execute(query, access.params()).all() == []
