"""The Patient compartment, from the R4 CompartmentDefinition vendored in ``definitions/``:
for each resource type, the reference parameters that put a resource into a patient's
compartment."""

from __future__ import annotations

import json
from collections.abc import Mapping
from functools import cache
from importlib import resources

from emr_hub.fhir.search.params import AnyOf, Condition, Filter
from emr_hub.fhir.search.registry import get_param


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
