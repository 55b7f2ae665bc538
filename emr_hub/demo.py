"""The demo network loaded by ``emr-hub demo`` (and ``make run``): idempotent.

Three hospitals with the contract's fixed client ids, each client tied to its hospital's
Organization with scope ``system/*.cruds``. Facility codes are demo values, and every demo
resource carries the ``demo`` tag so nobody mistakes it for a real facility.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from emr_hub.fhir import interactions
from emr_hub.fhir.identifiers import CCCD, FACILITY_CODE
from emr_hub.fhir.store import FhirStore
from emr_hub.hub import Hub
from emr_hub.security.clients import ensure_client
from emr_hub.security.principal import OPERATOR
from emr_hub.security.scopes import ScopeSet

LEVEL_SYSTEM = "http://fhir.hl7.org.vn/core/CodeSystem/vn-facility-care-level-cs"
TUYEN_SYSTEM = "http://fhir.hl7.org.vn/core/CodeSystem/vn-facility-tuyen-cs"
DEMO_TAG = {
    "system": "http://emr-hub.example/tags",
    "code": "demo",
    "display": "Demo data, not a real facility",
}
DEMO_SCOPE = "system/*.cruds"


@dataclass(frozen=True)
class DemoHospital:
    client_id: str
    name: str
    facility_code: str
    level: str
    tuyen: str
    part_of: str | None = None


HOSPITALS = (
    DemoHospital("bach-mai", "Bệnh viện Bạch Mai", "DM001", "CHUYEN_SAU", "TRUNG_UONG"),
    DemoHospital("bac-ninh-general", "Bệnh viện Đa khoa tỉnh Bắc Ninh", "DM271", "CO_BAN", "TINH"),
    DemoHospital(
        "bac-ninh-district",
        "Trung tâm Y tế thị xã Từ Sơn (Bắc Ninh)",
        "DM272",
        "BAN_DAU",
        "HUYEN",
        "bac-ninh-general",
    ),
)

DEMO_PATIENT_ID = "demo-nguyen-thi-lan"


def organization(hospital: DemoHospital) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "Organization",
        "id": hospital.client_id,
        "meta": {"tag": [DEMO_TAG]},
        "identifier": [{"system": FACILITY_CODE, "value": hospital.facility_code}],
        "active": True,
        "type": [
            {"coding": [{"system": LEVEL_SYSTEM, "code": hospital.level}]},
            {"coding": [{"system": TUYEN_SYSTEM, "code": hospital.tuyen}]},
        ],
        "name": hospital.name,
        "address": [{"country": "VN"}],
    }
    if hospital.part_of:
        resource["partOf"] = {"reference": f"Organization/{hospital.part_of}"}
    return resource


def demo_patient() -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "id": DEMO_PATIENT_ID,
        "meta": {"tag": [DEMO_TAG]},
        "identifier": [{"system": CCCD, "value": "027185000123"}],
        "name": [{"family": "Nguyễn", "given": ["Thị", "Lan"], "text": "Nguyễn Thị Lan"}],
        "gender": "female",
        "birthDate": "1985-04-12",
        "managingOrganization": {"reference": "Organization/bac-ninh-district"},
    }


def load_demo(hub: Hub) -> dict[str, str]:
    """Write the demo resources and clients; returns the secrets of clients created now."""
    secrets: dict[str, str] = {}
    with hub.db.transaction() as session:
        store = FhirStore(session, base_url=hub.settings.fhir_base_url)
        for hospital in sorted(HOSPITALS, key=lambda h: h.part_of is not None):
            interactions.update(
                store, OPERATOR, "Organization", hospital.client_id, organization(hospital)
            )
        interactions.update(store, OPERATOR, "Patient", DEMO_PATIENT_ID, demo_patient())
        store.flush()
        for hospital in HOSPITALS:
            secret = ensure_client(
                session,
                hospital.client_id,
                f"Organization/{hospital.client_id}",
                ScopeSet.parse(DEMO_SCOPE),
            )
            if secret:
                secrets[hospital.client_id] = secret
    return secrets
