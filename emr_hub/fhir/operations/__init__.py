"""FHIR operations, one module each, and the registry the CapabilityStatement lists them from.

Operations of the feature packages (referrals, subscriptions...) are served by their own
routers; they :func:`declare` themselves when installed, so ``/metadata`` states them without
the FHIR core importing those packages.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, order=True)
class Operation:
    """One operation as the CapabilityStatement states it (``resource_type`` None: system)."""

    resource_type: str | None
    name: str
    definition: str
    documentation: str

    def as_fhir(self) -> dict[str, str]:
        return {
            "name": self.name,
            "definition": self.definition,
            "documentation": self.documentation,
        }


_DECLARED: dict[tuple[str | None, str], Operation] = {}


def declare(resource_type: str | None, name: str, definition: str, documentation: str) -> None:
    """State an operation (again: replaces the earlier statement of the same name)."""
    _DECLARED[(resource_type, name)] = Operation(resource_type, name, definition, documentation)


def declared() -> tuple[Operation, ...]:
    return tuple(sorted(_DECLARED.values(), key=lambda o: (o.resource_type or "", o.name)))


declare(
    "Patient",
    "everything",
    "http://hl7.org/fhir/OperationDefinition/Patient-everything",
    "The patient, its compartment and what it points at (_since, _type, _count).",
)
