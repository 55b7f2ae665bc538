"""The real parts of the wallet push tests: the wallet receiver script as a process, the hub
served over HTTP in a thread (the receiver fetches its JWKS from ``iss``), a visit Bundle
with a CCCD, and reading the push log."""

from __future__ import annotations

import sys
import threading
from pathlib import Path
from typing import Any

import httpx
import orjson
import uvicorn
from jwcrypto import jwk, jws

from emr_hub.fhir.identifiers import CCCD
from emr_hub.hub import Hub
from emr_hub.main import create_app
from tests.processes import ManagedProcess, wait_for

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures"
PATIENT_BUNDLE = "02-1484a42d-0eaf-4654-9cbf-6b050a5cd73b.json"
LAN_CCCD = "001084012345"
"""The CCCD of the Synthea patient (a man born in 1984: century-and-sex digit 0, year 84)."""
OTHER_CCCD = "079084000123"


class WalletReceiver(ManagedProcess):
    """``scripts/wallet_receiver.py`` trusting ``issuer``, its state in ``state``."""

    def __init__(
        self, port: int, issuer: str, state: Path, log: Path, *, answer_delay: float = 0
    ) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        command = [
            sys.executable, str(ROOT / "scripts" / "wallet_receiver.py"), "--port", str(port),
            "--trust", issuer, "--state", str(state), "--answer-delay", str(answer_delay),
        ]  # fmt: skip
        super().__init__(command, {"PATH": "/usr/bin:/bin"}, log)

    @property
    def intake(self) -> str:
        return f"{self.url}/intake"

    def wait_ready(self) -> None:
        def answers() -> bool:
            try:
                return httpx.get(f"{self.url}/received", timeout=1).status_code == 200
            except httpx.TransportError:
                return False

        wait_for(answers, 15, "the wallet receiver to answer", self.log)

    def received(self) -> dict[str, Any]:
        return dict(httpx.get(f"{self.url}/received", timeout=5).json())

    def card(self, cccd: str) -> httpx.Response:
        return httpx.get(f"{self.url}/cards/{cccd}", timeout=5)


class ServedHub:
    """The app of ``hub`` served by uvicorn on ``port`` in a thread (lifespan included)."""

    def __init__(self, hub: Hub, port: int) -> None:
        config = uvicorn.Config(create_app(hub), host="127.0.0.1", port=port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.base = f"http://127.0.0.1:{port}"

    def __enter__(self) -> ServedHub:
        self.thread.start()
        wait_for(lambda: self.server.started, 30, "the hub to serve")
        return self

    def __exit__(self, *_: Any) -> None:
        self.server.should_exit = True
        self.thread.join(15)


def visit_bundle(cccd: str = LAN_CCCD) -> dict[str, Any]:
    """The Synthea visit Bundle, its Patient carrying ``cccd``."""
    bundle = orjson.loads((FIXTURES / PATIENT_BUNDLE).read_bytes())
    for entry in bundle["entry"]:
        resource = entry["resource"]
        if resource["resourceType"] == "Patient":
            resource.setdefault("identifier", []).append({"system": CCCD, "value": cccd})
    return bundle


def patient_id_of(response: httpx.Response) -> str:
    for entry in response.json()["entry"]:
        location = entry["response"]["location"]
        if location.startswith("Patient/"):
            return str(location.split("/")[1])
    raise AssertionError("no Patient in the transaction response")


def social_history(patient_id: str, note: str) -> dict[str, Any]:
    """An Observation the summary does not show (no section takes social history)."""
    return {
        "resourceType": "Observation",
        "status": "final",
        "category": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                        "code": "social-history",
                    }
                ]
            }
        ],
        "code": {"text": "Ghi chú"},
        "subject": {"reference": f"Patient/{patient_id}"},
        "valueString": note,
    }


def pushes(log: dict[str, Any]) -> list[dict[str, Any]]:
    """The ``push`` parts of a ``$wallet-log`` answer, as name → value dicts, newest first."""
    found = []
    for parameter in log["parameter"]:
        if parameter["name"] != "push":
            continue
        values = {}
        for part in parameter["part"]:
            value_key = next(k for k in part if k.startswith("value"))
            values[part["name"]] = part[value_key]
        found.append(values)
    return found


def verify_card(card: str, jwks: dict[str, Any]) -> dict[str, Any]:
    """The header of a card that verifies with jwcrypto against ``jwks`` (the hub's)."""
    token = jws.JWS()
    token.deserialize(card)
    token.verify(jwk.JWKSet.from_json(orjson.dumps(jwks).decode()))
    return dict(token.jose_header)
