"""Access grants keep the instants their resources state, whatever the offset they are given in."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select

from emr_hub import security
from emr_hub.errors import FhirError
from emr_hub.fhir import interactions
from emr_hub.fhir.search.values import LOCAL_ZONE
from emr_hub.hub import Hub
from emr_hub.security.access import store_for
from emr_hub.security.principal import Principal
from emr_hub.security.scopes import ScopeSet
from storage.db import as_utc
from storage.tables import AccessGrant
from tests.security.builders import privacy_consent

SCOPES = ScopeSet.parse("system/*.cruds")
OPERATOR = Principal("operator", None, SCOPES, "t", kind="operator")
HOSPITAL_A = Principal("a", "Organization/a", SCOPES, "t")
HOSPITAL_B = Principal("b", "Organization/b", SCOPES, "t")


def write(hub: Hub, principal: Principal, resource: dict[str, Any]) -> str:
    with hub.db.transaction() as session:
        store = store_for(session, hub.settings, principal)
        result = interactions.update(
            store, principal, resource["resourceType"], resource["id"], resource
        )
        store.flush()
    assert result.stored is not None
    return result.stored.id


def test_a_consent_period_in_vietnam_time_ends_when_it_says(hub: Hub) -> None:
    """A permit that ended 3 hours ago, written in +07:00, no longer opens the record: the
    grant's end is stored as that instant (SQLite keeps a datetime's wall time and drops its
    offset, so the end has to be stored in UTC to be compared with the request's instant)."""
    security.install(hub.settings)
    now = datetime.now(UTC).replace(microsecond=0)
    ended = now - timedelta(hours=3)
    for organization in ("a", "b"):
        write(hub, OPERATOR, {"resourceType": "Organization", "id": organization})
    write(hub, HOSPITAL_A, {"resourceType": "Patient", "id": "p", "birthDate": "1985-04-12"})
    local = ended.astimezone(LOCAL_ZONE).isoformat(timespec="seconds")
    provision = {
        "type": "permit",
        "period": {"end": local},
        "actor": [{"role": {"text": "recipient"}, "reference": {"reference": "Organization/b"}}],
    }
    consent = privacy_consent(
        "p",
        provision,
        id="c",
        sourceAttachment={"contentType": "application/pdf", "title": "signed form"},
    )
    write(hub, HOSPITAL_A, consent)
    with hub.db.snapshot() as session:
        ends = session.execute(select(AccessGrant.__table__.c.ends)).scalar_one()
        assert as_utc(ends) == ended
        store = store_for(session, hub.settings, HOSPITAL_B, moment=now)
        with pytest.raises(FhirError) as refused:
            store.read("Patient", "p")
        assert refused.value.status == 404
