"""Security test support: stored Organizations and Patients, clients' key pairs, the real
app."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from fastapi.testclient import TestClient
from joserfc.jwk import ECKey, RSAKey

from emr_hub.fhir import interactions
from emr_hub.fhir.routes import in_transaction
from emr_hub.hub import Hub
from emr_hub.main import create_app
from emr_hub.security.principal import OPERATOR

ORGANIZATION_ID = "bv-bach-mai"
ORGANIZATION = f"Organization/{ORGANIZATION_ID}"
CCCD_SYSTEM = "http://fhir.hl7.org.vn/core/sid/cccd"


def store_organization(hub: Hub, organization_id: str = ORGANIZATION_ID) -> str:
    body = {"resourceType": "Organization", "id": organization_id, "name": "Bệnh viện thử"}
    in_transaction(
        hub,
        lambda store: interactions.update(store, OPERATOR, "Organization", organization_id, body),
    )
    return f"Organization/{organization_id}"


def store_patient(hub: Hub, patient_id: str, cccd: str, birth_date: str) -> None:
    body = {
        "resourceType": "Patient",
        "id": patient_id,
        "identifier": [{"system": CCCD_SYSTEM, "value": cccd}],
        "birthDate": birth_date,
    }
    in_transaction(
        hub, lambda store: interactions.update(store, OPERATOR, "Patient", patient_id, body)
    )


def delete_resource(hub: Hub, resource_type: str, resource_id: str) -> None:
    in_transaction(
        hub, lambda store: interactions.delete(store, OPERATOR, resource_type, resource_id)
    )


def with_settings(hub: Hub, **changes: Any) -> Hub:
    """Another process of the same hub (same database), with some settings changed."""
    return Hub(settings=hub.settings.model_copy(update=changes), db=hub.db)


@pytest.fixture
def organization(hub: Hub) -> str:
    return store_organization(hub)


@pytest.fixture
def app(hub: Hub) -> Iterator[TestClient]:
    with TestClient(create_app(hub)) as client:
        yield client


# --- clients' keys and assertions ---------------------------------------------------------


@dataclass
class ClientKey:
    """A client's key pair and the algorithm it signs assertions with."""

    algorithm: str
    kid: str = field(default_factory=lambda: f"key-{uuid.uuid4().hex[:8]}")
    private: ECKey | RSAKey = field(init=False)

    def __post_init__(self) -> None:
        if self.algorithm == "RS384":
            self.private = RSAKey.generate_key(2048)
        else:
            self.private = ECKey.generate_key("P-384" if self.algorithm == "ES384" else "P-256")

    def public_jwk(self) -> dict[str, Any]:
        return {**self.private.as_dict(private=False), "kid": self.kid}


def jwks_of(*keys: ClientKey) -> dict[str, Any]:
    return {"keys": [key.public_jwk() for key in keys]}
