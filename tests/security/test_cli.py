"""The security commands as an operator runs them: emr-hub client, token and keys, as real
processes on the database the tests then look into."""

from __future__ import annotations

import base64
import json
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from emr_hub.errors import FhirError
from emr_hub.hub import Hub
from emr_hub.main import create_app
from emr_hub.security.clients import Registration, client_scopes, get_client, register_client
from emr_hub.security.keys import signing_key
from emr_hub.security.scopes import ScopeSet
from emr_hub.security.tokens import issue_access_token, verify_access_token
from tests.conftest import free_port, make_settings
from tests.processes import EMR_HUB, cli_env
from tests.security.conftest import (
    ClientKey,
    assertion_claims,
    assertion_form,
    jwks_of,
    store_organization,
    store_patient,
)

CCCD = "001090012345"


@dataclass
class Operator:
    """The environment of ``emr-hub`` processes, and a hub in this process on their database."""

    env: dict[str, str]
    hub: Hub
    tmp_path: Path

    def run(
        self, *args: str, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [EMR_HUB, *args],
            env=env or self.env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    def ok(self, *args: str) -> str:
        done = self.run(*args)
        assert done.returncode == 0, f"emr-hub {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
        return done.stdout

    def fails(self, *args: str, says: str) -> subprocess.CompletedProcess[str]:
        done = self.run(*args)
        assert done.returncode != 0, done.stdout
        assert says in done.stderr, done.stderr
        return done


@pytest.fixture
def operator(tmp_path: Path) -> Iterator[Operator]:
    """On SQLite only: the commands' database work is the library's, tested on both."""
    database_url = f"sqlite:///{tmp_path / 'hub.db'}"
    hub = Hub.from_settings(make_settings(tmp_path, database_url), migrate=True)
    try:
        yield Operator(cli_env(tmp_path, database_url), hub, tmp_path)
    finally:
        hub.close()


@pytest.fixture
def hospital(operator: Operator) -> Operator:
    """The operator, with Organization/vien-k stored (written through the API, which makes
    the signing key)."""
    store_organization(operator.hub, "vien-k")
    return operator


def client_row(operator: Operator, client_id: str) -> tuple[object, ...] | None:
    with operator.hub.db.snapshot() as session:
        client = get_client(session, client_id)
        if client is None:
            return None
        return (client.role, client.break_glass, client.secret_hash is None, client.generation)


def test_client_add_refuses_an_unknown_organization(operator: Operator) -> None:
    done = operator.fails(
        "client", "add", "ghost", "--organization", "Organization/nowhere", says="nowhere"
    )
    assert "is not stored in the hub" in done.stderr
    assert client_row(operator, "ghost") is None


def test_client_add_with_a_jwks_file(hospital: Operator) -> None:
    key = ClientKey("ES384")
    path = hospital.tmp_path / "jwks.json"
    path.write_text(json.dumps(jwks_of(key)))
    out = hospital.ok(
        "client", "add", "his-k", "--organization", "Organization/vien-k",
        "--scope", "system/Patient.rs", "--jwks-file", str(path), "--operator", "--break-glass",
    )  # fmt: skip
    assert out.strip() == f"client his-k registered with 1 public key ({key.kid}); it has no secret"
    assert client_row(hospital, "his-k") == ("operator", True, True, 1)
    with TestClient(create_app(hospital.hub)) as app:
        form = assertion_form(key.sign(assertion_claims(hospital.hub, "his-k")))
        response = app.post("/auth/token", data=form)
    assert response.status_code == 200, response.text
    principal = verify_access_token(hospital.hub, response.json()["access_token"])
    assert (principal.kind, principal.break_glass_allowed) == ("operator", True)


def test_client_add_refuses_bad_jwks_files(operator: Operator) -> None:
    key = ClientKey("ES256")
    private = operator.tmp_path / "private.json"
    private.write_text(json.dumps({"keys": [{**key.private.as_dict(private=True), "kid": "k"}]}))
    operator.fails(
        "client", "add", "his-p", "--organization", "Organization/vien-k",
        "--jwks-file", str(private), says="private key material",
    )  # fmt: skip
    garbage = operator.tmp_path / "garbage.json"
    garbage.write_text("{not json")
    operator.fails(
        "client", "add", "his-p", "--organization", "Organization/vien-k",
        "--jwks-file", str(garbage), says="is not JSON",
    )  # fmt: skip
    operator.fails(
        "client", "add", "his-p", "--organization", "Organization/vien-k",
        "--jwks-url", "file:///etc/passwd", says="http:// or https://",
    )  # fmt: skip
    assert client_row(operator, "his-p") is None


def test_replace_disable_enable(hospital: Operator) -> None:
    add = ("client", "add", "his-r", "--organization", "Organization/vien-k")
    first_secret = hospital.ok(*add).strip()
    token = hospital.ok("token", "his-r").strip()
    assert verify_access_token(hospital.hub, token).client_id == "his-r"

    hospital.fails(*add, says="exists; re-register it with --replace")
    replaced = hospital.run(*add, "--replace")
    assert replaced.returncode == 0 and "no longer work" in replaced.stderr
    new_secret = replaced.stdout.strip()
    assert len(new_secret) >= 32 and new_secret != first_secret
    with pytest.raises(FhirError, match="re-registered"):
        verify_access_token(hospital.hub, token)

    token = token_of(hospital, "his-r")
    assert "disabled" in hospital.ok("client", "disable", "his-r")
    with pytest.raises(FhirError, match="disabled"):
        verify_access_token(hospital.hub, token)
    assert "enabled" in hospital.ok("client", "enable", "his-r")
    with pytest.raises(FhirError, match="re-registered or disabled"):
        verify_access_token(hospital.hub, token)
    assert verify_access_token(hospital.hub, token_of(hospital, "his-r"))
    hospital.fails("client", "disable", "nobody", says="no client 'nobody'")


def token_of(operator: Operator, client_id: str) -> str:
    """A token issued in this process (the token command itself is tested on its own)."""
    with operator.hub.db.transaction() as session:
        client = get_client(session, client_id)
    assert client is not None
    return issue_access_token(operator.hub, client, client_scopes(client))[0]


def add_client(operator: Operator, client_id: str) -> None:
    with operator.hub.db.transaction() as session:
        register_client(
            session, client_id, Registration("Organization/vien-k", ScopeSet.parse("system/*.rs"))
        )


def test_citizen_token(operator: Operator) -> None:
    store_patient(operator.hub, "lan", CCCD, "1990-03-15")
    token = operator.ok("token", "--citizen", CCCD).strip()
    assert token.count(".") == 2 and CCCD not in token
    part = token.split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    assert CCCD not in json.dumps(claims)
    principal = verify_access_token(operator.hub, token)
    assert principal.kind == "citizen" and principal.person == claims["person"]
    assert str(principal.scopes) == "patient/*.rs patient/Consent.cu"

    narrowed = operator.ok("token", "--citizen", CCCD, "--scope", "patient/Observation.rs")
    assert str(verify_access_token(operator.hub, narrowed.strip()).scopes) == (
        "patient/Observation.rs"
    )
    operator.fails("token", "--citizen", CCCD, "--scope", "system/*.rs", says="patient/ scopes")


@pytest.mark.parametrize(
    ("cccd", "says"), [("001090099999", "No live Patient"), ("12345", "exactly 12 digits")]
)
def test_citizen_token_refused(operator: Operator, cccd: str, says: str) -> None:
    done = operator.fails("token", "--citizen", cccd, says=says)
    assert done.returncode == 1 and not done.stdout
    assert cccd not in done.stderr


def test_token_needs_a_client_or_a_citizen(operator: Operator) -> None:
    assert operator.run("token").returncode == 2
    assert operator.run("token", "x", "--citizen", CCCD).returncode == 2


def test_keys_rotate_and_list(operator: Operator) -> None:
    assert "no signing key yet" in operator.ok("keys", "list")
    store_organization(operator.hub, "vien-k")
    add_client(operator, "his-t")
    old_token = token_of(operator, "his-t")
    rotated = operator.ok("keys", "rotate")
    assert rotated.startswith("new signing key ")
    assert "older keys verify until" in rotated
    listed = operator.ok("keys", "list").splitlines()
    assert len(listed) == 2
    assert " verifying until " in listed[0] and " signing " in listed[1]
    assert verify_access_token(operator.hub, old_token).client_id == "his-t"


def test_wrong_kek_is_a_clear_cli_error(hospital: Operator) -> None:
    add_client(hospital, "his-w")
    signing_key(hospital.hub)  # made and sealed with the generated KEK file the CLI shares
    kek = base64.b64encode(os.urandom(32)).decode()
    wrong = {**hospital.env, "EMR_HUB_KEY_ENCRYPTION_KEY": kek}
    for args in (("token", "his-w"), ("keys", "rotate"), ("serve", "--port", str(free_port()))):
        done = hospital.run(*args, env=wrong)
        assert done.returncode == 1, done.stdout
        assert "was sealed with the key-encryption key of id" in done.stderr
        assert "Traceback" not in done.stderr and kek not in done.stderr
    malformed = {**hospital.env, "EMR_HUB_KEY_ENCRYPTION_KEY": "short"}
    done = hospital.run("token", "his-w", env=malformed)
    assert done.returncode == 1 and "base64 of 32 random bytes" in done.stderr
