"""Re-exam appointments are single use (QĐ 4750 table 14: one slip, one return visit).

An Encounter whose ``appointment`` points at an Appointment uses it: the Appointment is marked
``fulfilled`` in the same transaction; an Appointment already used by another Encounter, or
cancelled, is refused (409), and nothing is written.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from emr_hub.errors import fhir_error, unprocessable
from emr_hub.fhir.search.indexer import REFERENCE
from emr_hub.fhir.store import FhirStore, Stored
from emr_hub.security.principal import Principal

UNUSABLE = {"cancelled", "noshow", "entered-in-error"}


def use_appointments(
    store: FhirStore, principal: Principal, current: Stored | None, resource: dict[str, Any]
) -> dict[str, Any]:
    encounter_id = resource.get("id")
    for index, reference in enumerate(resource.get("appointment") or []):
        text = reference.get("reference", "") if isinstance(reference, dict) else ""
        if not text.startswith("Appointment/"):
            continue
        where = f"Encounter.appointment[{index}]"
        appointment_id = text.split("/")[1]
        appointment = store.current("Appointment", appointment_id, for_update=True)
        if appointment is None or appointment.deleted or appointment.content is None:
            raise unprocessable(f"{text} is not known to the hub", where)
        users = _encounters_using(store, appointment_id) - {encounter_id}
        if users:
            raise fhir_error(
                409,
                "conflict",
                f"{text} was already used by Encounter/{sorted(users)[0]}: it is single use",
                where,
            )
        status = appointment.content.get("status")
        if status in UNUSABLE:
            raise fhir_error(409, "conflict", f"{text} is {status} and cannot be used", where)
        if status != "fulfilled":
            store.update(
                "Appointment", appointment_id, {**appointment.content, "status": "fulfilled"}
            )
    return resource


def _encounters_using(store: FhirStore, appointment_id: str) -> set[str]:
    store.flush()
    rows = store.session.scalars(
        select(REFERENCE.c.resource_id).where(
            REFERENCE.c.resource_type == "Encounter",
            REFERENCE.c.param == "appointment",
            REFERENCE.c.target_type == "Appointment",
            REFERENCE.c.target_id == appointment_id,
        )
    )
    return set(rows)
