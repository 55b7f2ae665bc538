"""The network directory's own invariant: a facility code names one Organization.

The facility code (mã cơ sở KCB) is how an insurance XML table names its sender and receiver,
and the XML import acts as the hospital whose code a table carries. A second Organization with
the same code would make the code ambiguous, or let a hospital pass for another: so an
Organization may not take a code another live Organization holds (422, naming the identifier).
Who may write the directory at all is the access policy's (:mod:`emr_hub.security.policy`).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from emr_hub.errors import unprocessable
from emr_hub.fhir import hooks
from emr_hub.fhir.identifiers import FACILITY_CODE
from emr_hub.fhir.search.indexer import TOKEN
from emr_hub.fhir.store import RESOURCE, FhirStore, Stored
from emr_hub.security.principal import Principal


def check_facility_codes(
    store: FhirStore, principal: Principal, current: Stored | None, resource: dict[str, Any]
) -> dict[str, Any]:
    for index, identifier in enumerate(resource.get("identifier") or []):
        if not isinstance(identifier, dict) or identifier.get("system") != FACILITY_CODE:
            continue
        code = identifier.get("value")
        query = select(TOKEN.c.resource_id).where(
            TOKEN.c.resource_type == "Organization",
            TOKEN.c.param == "identifier",
            TOKEN.c.system == FACILITY_CODE,
            TOKEN.c.code == code,
            RESOURCE.c.resource_type == "Organization",
            RESOURCE.c.id == TOKEN.c.resource_id,
            RESOURCE.c.deleted.is_(False),
        )
        if resource.get("id"):
            query = query.where(TOKEN.c.resource_id != resource["id"])
        store.flush()
        holders = store.session.scalars(query.limit(1)).all()
        if holders:
            raise unprocessable(
                f"Facility code {code} belongs to Organization/{holders[0]}: a code names one "
                "facility",
                f"Organization.identifier[{index}].value",
            )
    return resource


def install() -> None:
    hooks.register("Organization", check_facility_codes)
