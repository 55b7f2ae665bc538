"""The person behind a Patient resource: the key that makes one citizen's records, posted by
several hospitals under several Patient resources, one person's.

The CCCD (số định danh cá nhân) is the patient's key across hospitals (domain.md: the law makes
it the health ID), so a Patient carrying one belongs to the person of that CCCD; a Patient
without one is a person of its own. The key is a name-based UUID (RFC 9562 version 5) of the
CCCD or of the Patient's id: the same on every process and database, so no table has to be
kept in step, and it never shows the CCCD itself where keys travel (tokens, audit rows).

Access (care relationships, consents, break-the-glass) and the citizen's own view are keyed by
person, not by Patient resource.
"""

from __future__ import annotations

import uuid
from typing import Any

from emr_hub.fhir.identifiers import CCCD

PERSON_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:emr-hub:person")


def person_of_cccd(cccd: str) -> str:
    """The person key of a national ID number."""
    return str(uuid.uuid5(PERSON_NAMESPACE, f"cccd|{cccd}"))


def person_of_patient_id(patient_id: str) -> str:
    """The person key of a Patient without a CCCD (or not stored: a dangling reference)."""
    return str(uuid.uuid5(PERSON_NAMESPACE, f"patient|{patient_id}"))


def patient_cccd(patient: dict[str, Any]) -> str | None:
    """The first CCCD among the Patient's identifiers, if any."""
    identifiers = patient.get("identifier")
    for identifier in identifiers if isinstance(identifiers, list) else ():
        if isinstance(identifier, dict) and identifier.get("system") == CCCD:
            value = identifier.get("value")
            if isinstance(value, str) and value:
                return value
    return None


def person_of(patient: dict[str, Any]) -> str:
    """The person key of a Patient resource (which carries its id)."""
    cccd = patient_cccd(patient)
    return person_of_cccd(cccd) if cccd else person_of_patient_id(str(patient["id"]))
