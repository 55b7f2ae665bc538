"""The page's sharing settings, written as the citizen's own privacy Consents
(:mod:`emr_hub.security.consent`), through the FHIR interactions with her principal: the
Consent write hook checks them, the access policy derives its grants from them, and the write
is audited in its own transaction.

* **Allow** a hospital: an active ``permit`` Consent naming its Organization (no end date, every
  purpose). **Refuse** one: the same with ``deny``, which outranks a care relationship (not
  break-the-glass).
* **Withdraw** a setting: the Consent becomes ``inactive``. It is never deleted: it stays as the
  evidence of what she agreed to, and when.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from emr_hub.errors import bad_request, not_found
from emr_hub.fhir import interactions
from emr_hub.fhir.store import FhirStore
from emr_hub.security.consent import PRIVACY, SCOPE_SYSTEM, is_privacy_consent
from emr_hub.security.grants import organization_of
from emr_hub.security.policy import DENY, PERMIT
from emr_hub.security.principal import Principal

LOINC = "http://loinc.org"
PRIVACY_CONSENT_DOCUMENT = "59284-0"
PARTICIPATION = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
RECIPIENT = "IRCP"
"""The actor's role: information recipient (the hospital that may, or may not, see)."""


def set_sharing(
    store: FhirStore,
    principal: Principal,
    patient_id: str,
    organization: str,
    kind: str,
    *,
    now: datetime | None = None,
) -> interactions.Result:
    """Record her ``permit`` or ``deny`` for ``Organization/<id>``."""
    if kind not in (PERMIT, DENY):
        raise bad_request("The setting is permit or deny", "kind")
    if organization_of({"reference": organization}) is None:
        raise bad_request("Choose a hospital (Organization/<id>)", "organization")
    hospital = interactions.read(store, principal, "Organization", organization.split("/", 1)[1])
    moment = (now or datetime.now(UTC)).replace(microsecond=0)
    consent: dict[str, Any] = {
        "resourceType": "Consent",
        "status": "active",
        "scope": {"coding": [{"system": SCOPE_SYSTEM, "code": PRIVACY}]},
        "category": [{"coding": [{"system": LOINC, "code": PRIVACY_CONSENT_DOCUMENT}]}],
        "patient": {"reference": f"Patient/{patient_id}"},
        "performer": [{"reference": f"Patient/{patient_id}"}],
        "dateTime": moment.isoformat().replace("+00:00", "Z"),
        "provision": {
            "type": kind,
            "period": {"start": moment.date().isoformat()},
            "actor": [
                {
                    "role": {"coding": [{"system": PARTICIPATION, "code": RECIPIENT}]},
                    "reference": {
                        "reference": organization,
                        "display": str((hospital.content or {}).get("name") or organization),
                    },
                }
            ],
        },
    }
    return interactions.create(store, principal, "Consent", consent)


def withdraw(store: FhirStore, principal: Principal, consent_id: str) -> interactions.Result:
    """Set her privacy Consent ``consent_id`` inactive (404 when it is not hers to see)."""
    current = interactions.read(store, principal, "Consent", consent_id)
    content = dict(current.content or {})
    if not is_privacy_consent(content):
        raise not_found(f"Consent/{consent_id} is not a sharing setting")
    if content.get("status") == "inactive":
        return interactions.Result(200, current, "already withdrawn")
    content["status"] = "inactive"
    content.pop("meta", None)
    return interactions.update(store, principal, "Consent", consent_id, content)
