"""The demo network loaded by ``emr-hub demo`` (and ``make run``): idempotent.

Four facilities with fixed client ids (client id = Organization id, scope ``system/*.cruds``):
Bạch Mai (CHUYEN_SAU), Bắc Ninh provincial general hospital (CO_BAN), the Từ Sơn health centre
and a commune health station below it (BAN_DAU). Each has a demo facility code, its level of
care and its old tuyến, and an Endpoint where it receives notifications. The partnership
Bắc Ninh general – Bạch Mai is an OrganizationAffiliation. Four patients, and one finished
referral chain for the first (:mod:`emr_hub.demo_chain`), with one DICOM study: the chest CT
Bắc Ninh general took during her stay, sent along with its letter to Bạch Mai and served at
``/dicomweb`` (:mod:`emr_hub.demo_imaging`: pydicom's ``CT_small.dcm`` re-identified as hers,
stored through STOW's code path into the configured object store). Each hospital subscribes its
Endpoint to the referral Tasks it owns and to those it requested (written after the chain, so
loading the demo owes no notification; ``scripts/notification_receiver.py`` listens there).

Every demo resource carries :data:`DEMO_TAG`, and the facility codes are invented (``DM...``),
so nobody mistakes them for real facilities or people.

Idempotent: every resource has a fixed id and fixed content (no "now" anywhere), and the store
makes no new version for unchanged content, so a second run writes nothing and registers no
client (secrets are printed when a client is created, never again). A demo resource someone
changed or deleted since is left as it is and named in the output; ``emr-hub demo --reset``
writes the demo's version over it. The same holds for the demo study: a second run stores
nothing; a changed ImagingStudy is kept unless ``--reset``, and a deleted one (its instance
went with it) is named and stored again by ``--reset``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from emr_hub.demo_chain import BAC_NINH_CT, Cast, referral_chain
from emr_hub.demo_imaging import load_study
from emr_hub.demo_writing import KEPT, WRITTEN, Authored, Writers, write_versions
from emr_hub.fhir.identifiers import CCCD, FACILITY_CODE, INSURANCE
from emr_hub.hub import Hub
from emr_hub.referrals.enforcement import install as install_referral_rules
from emr_hub.security import install as install_security
from emr_hub.security.clients import ensure_client
from emr_hub.security.scopes import ScopeSet
from storage.tables import ApiClient

LEVEL_SYSTEM = "http://fhir.hl7.org.vn/core/CodeSystem/vn-facility-care-level-cs"
TUYEN_SYSTEM = "http://fhir.hl7.org.vn/core/CodeSystem/vn-facility-tuyen-cs"
DEMO_TAG = {
    "system": "http://emr-hub.example/tags",
    "code": "demo",
    "display": "Demo data, not a real facility",
}
DEMO_SCOPE = "system/*.cruds"

NOTIFICATION_BASE = "http://127.0.0.1:8090/notifications"
"""Where the demo hospitals listen for notifications: ``<base>/<client id>`` (nothing listens
there until someone starts a receiver; the hub's Subscriptions point at these addresses)."""

REST_HOOK = {
    "system": "http://terminology.hl7.org/CodeSystem/endpoint-connection-type",
    "code": "hl7-fhir-rest",
    "display": "HL7 FHIR",
}
ANY_PAYLOAD = {
    "coding": [
        {
            "system": "http://terminology.hl7.org/CodeSystem/endpoint-payload-type",
            "code": "any",
            "display": "Any",
        }
    ],
    "text": "Thông báo chuyển tuyến, kết quả trả về, lịch hẹn (FHIR JSON)",
}
PARTNER_ROLE = {
    "coding": [{"system": "http://hl7.org/fhir/organization-role", "code": "member"}],
    "text": "Bệnh viện vệ tinh của Bệnh viện Bạch Mai (satellite hospital network)",
}


@dataclass(frozen=True)
class DemoHospital:
    client_id: str
    name: str
    facility_code: str
    level: str
    tuyen: str
    part_of: str | None = None
    district: str | None = None
    province: str = "Bắc Ninh"


HOSPITALS = (
    DemoHospital(
        "bach-mai",
        "Bệnh viện Bạch Mai",
        "DM001",
        "CHUYEN_SAU",
        "TRUNG_UONG",
        district="Đống Đa",
        province="Hà Nội",
    ),
    DemoHospital(
        "bac-ninh-general",
        "Bệnh viện Đa khoa tỉnh Bắc Ninh",
        "DM271",
        "CO_BAN",
        "TINH",
        district="Thành phố Bắc Ninh",
    ),
    DemoHospital(
        "bac-ninh-district",
        "Trung tâm Y tế thị xã Từ Sơn (Bắc Ninh)",
        "DM272",
        "BAN_DAU",
        "HUYEN",
        "bac-ninh-general",
        district="Thị xã Từ Sơn",
    ),
    DemoHospital(
        "bac-ninh-commune",
        "Trạm Y tế phường Đồng Nguyên (Từ Sơn, Bắc Ninh)",
        "DM273",
        "BAN_DAU",
        "XA",
        "bac-ninh-district",
        district="Thị xã Từ Sơn",
    ),
)
BY_ID = {hospital.client_id: hospital for hospital in HOSPITALS}

PARTNERSHIP_ID = "bac-ninh-general-bach-mai"
PARTNERSHIP = ("bach-mai", "bac-ninh-general")
"""(organization, participatingOrganization): Bắc Ninh general is in Bạch Mai's satellite
network (the Bắc Ninh – Bạch Mai pilot pair of directive 133/CĐ-TTg)."""


@dataclass(frozen=True)
class DemoPatient:
    id: str
    family: str
    given: tuple[str, ...]
    gender: str
    birth_date: str
    cccd: str
    insurance_card: str
    managing_organization: str
    address: str


PATIENTS = (
    DemoPatient(
        "demo-nguyen-thi-lan",
        "Nguyễn",
        ("Thị", "Lan"),
        "female",
        "1985-04-12",
        "027185000123",
        "GD4272712345678",
        "bac-ninh-district",
        "Khu phố Đa Hội, phường Châu Khê, thị xã Từ Sơn, tỉnh Bắc Ninh",
    ),
    DemoPatient(
        "demo-ngo-van-toan",
        "Ngô",
        ("Văn", "Toàn"),
        "male",
        "1958-09-03",
        "027058004417",
        "HT3272720456789",
        "bac-ninh-general",
        "Phường Vệ An, thành phố Bắc Ninh, tỉnh Bắc Ninh",
    ),
    DemoPatient(
        "demo-do-minh-chau",
        "Đỗ",
        ("Minh", "Châu"),
        "female",
        "2021-06-21",
        "027321001286",
        "TE1272720987654",
        "bac-ninh-commune",
        "Phường Đồng Nguyên, thị xã Từ Sơn, tỉnh Bắc Ninh",
    ),
    DemoPatient(
        "demo-pham-quoc-bao",
        "Phạm",
        ("Quốc", "Bảo"),
        "male",
        "2001-02-14",
        "001201007731",
        "SV4010123456789",
        "bach-mai",
        "Phường Phương Mai, quận Đống Đa, Hà Nội",
    ),
)
DEMO_PATIENT_ID = PATIENTS[0].id
CARD_VALID_TO = "2026-12-31"


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
        "address": [_address(hospital)],
        "endpoint": [{"reference": f"Endpoint/{endpoint_id(hospital.client_id)}"}],
    }
    if hospital.part_of:
        resource["partOf"] = {"reference": f"Organization/{hospital.part_of}"}
    return resource


def _address(hospital: DemoHospital) -> dict[str, str]:
    address = {"state": hospital.province, "country": "VN"}
    if hospital.district:
        address["district"] = hospital.district
    return address


def endpoint_id(client_id: str) -> str:
    return f"{client_id}-notifications"


def notification_address(client_id: str) -> str:
    return f"{NOTIFICATION_BASE}/{client_id}"


def endpoint(hospital: DemoHospital) -> dict[str, Any]:
    """The hospital's notification Endpoint (referral letters, returned results, appointments)."""
    return {
        "resourceType": "Endpoint",
        "id": endpoint_id(hospital.client_id),
        "meta": {"tag": [DEMO_TAG]},
        "status": "active",
        "connectionType": REST_HOOK,
        "name": f"Thông báo cho {hospital.name}",
        "managingOrganization": {"reference": f"Organization/{hospital.client_id}"},
        "payloadType": [ANY_PAYLOAD],
        "payloadMimeType": ["application/fhir+json"],
        "address": notification_address(hospital.client_id),
    }


def notification_endpoints() -> list[tuple[str, str]]:
    """(Organization id, notification address) of every demo hospital."""
    return [(h.client_id, notification_address(h.client_id)) for h in HOSPITALS]


def subscriptions() -> list[Authored]:
    """Each hospital hears at its Endpoint of the Tasks it owns (a referral addressed to it) and
    of the Tasks it requested (its referral accepted, rejected, completed), as the full Task;
    each Subscription is the hospital's own (only it reads or changes it)."""
    return [
        (
            BY_ID[organization_id],
            {
                "resourceType": "Subscription",
                "id": f"{organization_id}-{role}-tasks",
                "meta": {"tag": [DEMO_TAG]},
                "status": "active",
                "reason": f"Referral Tasks where Organization/{organization_id} is the {role}",
                "criteria": f"Task?{role}=Organization/{organization_id}",
                "channel": {
                    "type": "rest-hook",
                    "endpoint": address,
                    "payload": "application/fhir+json",
                },
            },
        )
        for organization_id, address in notification_endpoints()
        for role in ("owner", "requester")
    ]


def partnership() -> dict[str, Any]:
    central, satellite = PARTNERSHIP
    return {
        "resourceType": "OrganizationAffiliation",
        "id": PARTNERSHIP_ID,
        "meta": {"tag": [DEMO_TAG]},
        "active": True,
        "period": {"start": "2025-02-01", "end": "2030-12-31"},
        "organization": {"reference": f"Organization/{central}"},
        "participatingOrganization": {"reference": f"Organization/{satellite}"},
        "code": [PARTNER_ROLE],
    }


def patient(person: DemoPatient) -> dict[str, Any]:
    given = " ".join(person.given)
    return {
        "resourceType": "Patient",
        "id": person.id,
        "meta": {"tag": [DEMO_TAG]},
        "identifier": [
            {"system": CCCD, "value": person.cccd},
            {
                "system": INSURANCE,
                "value": person.insurance_card,
                "period": {"end": CARD_VALID_TO},
            },
        ],
        "name": [
            {
                "family": person.family,
                "given": list(person.given),
                "text": f"{person.family} {given}",
            }
        ],
        "gender": person.gender,
        "birthDate": person.birth_date,
        "address": [{"text": person.address, "country": "VN"}],
        "managingOrganization": {"reference": f"Organization/{person.managing_organization}"},
    }


def network() -> list[Authored]:
    """The hospitals, their Endpoints and the partnership (the operator's directory), and the
    patients (each registered by its managing hospital), in writing order (the partnership
    before any referral: the referral rules read it)."""
    return [
        *((None, organization(h)) for h in HOSPITALS),
        *((None, endpoint(h)) for h in HOSPITALS),
        (None, partnership()),
        *((BY_ID[p.managing_organization], patient(p)) for p in PATIENTS),
    ]


def cast() -> Cast:
    """Who plays which part in the referral chain."""
    return Cast(
        patient_id=DEMO_PATIENT_ID,
        district=BY_ID["bac-ninh-district"],
        provincial=BY_ID["bac-ninh-general"],
        central=BY_ID["bach-mai"],
        tag=DEMO_TAG,
    )


@dataclass
class DemoLoad:
    """What one ``emr-hub demo`` did."""

    secrets: dict[str, str] = field(default_factory=dict)
    """The secrets of the clients created now (printed once)."""
    written: list[str] = field(default_factory=list)
    """``Type/id`` of the demo resources written now."""
    kept: list[str] = field(default_factory=list)
    """``Type/id`` of the demo resources someone changed or deleted, left as they are."""


def load_demo(hub: Hub, *, reset: bool = False) -> DemoLoad:
    """Write the demo resources and clients. Resources changed since an earlier load are kept
    as they are unless ``reset`` (:func:`emr_hub.demo_chain.write_versions`).

    Written under the hub's rules whoever calls it (the command line installs them too): the
    referral checks, and the access grants, through which Bắc Ninh general sees the patient
    it files the demo study for."""
    install_security(hub.settings)
    install_referral_rules()
    result = DemoLoad()
    base_url = hub.settings.fhir_base_url

    def note(outcome: str, name: str) -> None:
        if outcome == WRITTEN:
            result.written.append(name)
        elif outcome == KEPT:
            result.kept.append(name)

    def write(writers: Writers, versions: list[Authored]) -> None:
        first = versions[0][1]
        name = f"{first['resourceType']}/{first['id']}"
        note(write_versions(writers, versions, reset=reset), name)

    with hub.db.transaction() as session:
        writers = Writers(session, base_url)
        for authored in network():
            write(writers, [authored])
        for versions in referral_chain(cast()):
            write(writers, versions)
        for hospital in HOSPITALS:
            secret = ensure_client(
                session,
                hospital.client_id,
                f"Organization/{hospital.client_id}",
                ScopeSet.parse(DEMO_SCOPE),
            )
            if secret:
                result.secrets[hospital.client_id] = secret
            client = session.get(ApiClient, hospital.client_id)
            if client is not None and not client.break_glass:
                client.break_glass = True  # the demo shows an emergency opening
    # Once the chain is committed: the hospital's stay is what lets it file images for her.
    sender = cast().provincial
    note(load_study(hub, sender, PATIENTS[0], DEMO_TAG, reset=reset), f"ImagingStudy/{BAC_NINH_CT}")
    # A Subscription matches the other writes of its own transaction: subscribe afterwards.
    with hub.db.transaction() as session:
        writers = Writers(session, base_url)
        for authored in subscriptions():
            write(writers, [authored])
    return result
