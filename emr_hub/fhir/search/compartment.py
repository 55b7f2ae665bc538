"""The Patient compartment, from the R4 CompartmentDefinition vendored in ``definitions/``:
for each resource type, the reference parameters that put a resource into a patient's
compartment; and the ``patient_compartment`` rows that record, for every resource, the
patients (and their persons) it is about, which the access policy reads."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from functools import cache
from importlib import resources
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from emr_hub.fhir.persons import person_of, person_of_patient_id
from emr_hub.fhir.search.params import AnyOf, Condition, Filter
from emr_hub.fhir.search.registry import get_param
from storage.tables import PatientCompartmentRow


@cache
def patient_compartment() -> Mapping[str, tuple[str, ...]]:
    text = (
        resources.files("emr_hub.fhir.definitions")
        .joinpath("compartment-patient.json")
        .read_text("utf-8")
    )
    members = json.loads(text)["resources"]
    return {rtype: tuple(params) for rtype, params in members.items()}


def in_patient_compartment(resource_type: str, patient_id: str) -> Condition | None:
    """The condition "this resource is in Patient/<id>'s compartment", or None when the type
    has no compartment membership (it cannot be searched in a patient compartment)."""
    if resource_type == "Patient":
        identity = get_param("Patient", "_id")
        assert identity is not None
        options: list[Condition] = [Filter(identity, None, (patient_id,))]
        link = get_param("Patient", "link")
        if link is not None:
            options.append(Filter(link, None, (f"Patient/{patient_id}",)))
        return AnyOf(tuple(options))
    codes = patient_compartment().get(resource_type)
    if not codes:
        return None
    filters = []
    for code in codes:
        param = get_param(resource_type, code)
        if param is not None and param.type == "reference":
            filters.append(Filter(param, None, (f"Patient/{patient_id}",)))
    if not filters:
        return None
    return filters[0] if len(filters) == 1 else AnyOf(tuple(filters))


def compartment_rows(
    resource: dict[str, Any], references: Iterable[dict[str, Any]]
) -> list[dict[str, Any]]:
    """The ``patient_compartment`` rows of ``resource``: one per Patient its compartment
    parameters point at (``references`` are its ``search_reference`` rows), and for a Patient
    one for itself. ``person`` is filled for a Patient's own row and left None for the others,
    whose persons are those of the Patients they point at (:func:`resolve_persons`)."""
    resource_type, resource_id = resource["resourceType"], resource["id"]
    owner = {"resource_type": resource_type, "resource_id": resource_id}
    rows: dict[str, dict[str, Any]] = {}
    if resource_type == "Patient":
        rows[resource_id] = owner | {"patient_id": resource_id, "person": person_of(resource)}
    params = patient_compartment().get(resource_type, ())
    for ref in references:
        target = ref.get("target_id")
        if ref.get("target_type") == "Patient" and ref.get("param") in params and target:
            rows.setdefault(target, owner | {"patient_id": target, "person": None})
    return list(rows.values())


def resolve_persons(session: Session, rows: list[dict[str, Any]], known: Mapping[str, str]) -> None:
    """Fill in the ``person`` of compartment rows that point at another Patient: the person
    of a Patient written with them (``known``: patient id → person), else of the stored
    Patient (its own row), else of a Patient nobody stored (the id's own person key). One
    query for the whole batch."""
    missing = sorted(
        {r["patient_id"] for r in rows if r["person"] is None and r["patient_id"] not in known}
    )
    stored: dict[str, str] = {}
    table = PatientCompartmentRow.__table__
    for start in range(0, len(missing), 500):
        ids = missing[start : start + 500]
        stored.update(
            session.execute(
                select(table.c.resource_id, table.c.person).where(
                    table.c.resource_type == "Patient",
                    table.c.resource_id.in_(ids),
                    table.c.patient_id == table.c.resource_id,
                )
            ).all()
        )
    for row in rows:
        if row["person"] is None:
            patient = row["patient_id"]
            row["person"] = (
                known.get(patient) or stored.get(patient) or person_of_patient_id(patient)
            )


def propagate_person(session: Session, patient_id: str, person: str) -> None:
    """After Patient/<patient_id> was written with ``person``: the compartment rows of every
    resource pointing at it take that person (they may have been written before the Patient,
    or under its earlier CCCD)."""
    table = PatientCompartmentRow.__table__
    session.execute(
        update(table)
        .where(table.c.patient_id == patient_id, table.c.person != person)
        .values(person=person)
    )
