"""Resources the security tests post more than once: privacy Consents and referral letters."""

from __future__ import annotations

from typing import Any

from emr_hub.security.consent import PRIVACY, SCOPE_SYSTEM

PARTICIPATION = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
REFERRAL = {"coding": [{"system": "http://snomed.info/sct", "code": "3457005"}]}
SIGNED_FORM = {"contentType": "application/pdf", "title": "Phiếu đồng ý"}


def privacy_consent(patient: str, provision: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """An active privacy Consent of ``Patient/<patient>``, with a signed paper form attached
    (as a hospital records one; ``extra`` replaces or adds elements)."""
    return {
        "resourceType": "Consent",
        "status": "active",
        "scope": {"coding": [{"system": SCOPE_SYSTEM, "code": PRIVACY}]},
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        "patient": {"reference": f"Patient/{patient}"},
        "provision": provision,
        "sourceAttachment": SIGNED_FORM,
        **extra,
    }


def actors(*references: str) -> list[dict[str, Any]]:
    """Recipients (IRCP) of a provision: ``Organization/<id>`` for a bare id."""
    return [
        {
            "role": {"coding": [{"system": PARTICIPATION, "code": "IRCP"}]},
            "reference": {"reference": ref if "/" in ref else f"Organization/{ref}"},
        }
        for ref in references
    ]


def referral_letter(patient: str, requester: str, performer: str) -> dict[str, Any]:
    """An active referral ServiceRequest from hospital ``requester`` to ``performer``."""
    return {
        "resourceType": "ServiceRequest",
        "status": "active",
        "intent": "order",
        "category": [REFERRAL],
        "subject": {"reference": f"Patient/{patient}"},
        "requester": {"reference": f"Organization/{requester}"},
        "performer": [{"reference": f"Organization/{performer}"}],
        "authoredOn": "2026-12-01T09:00:00+07:00",
    }
