"""The security commands as an operator runs them, as real processes on the database the
tests then look into."""

from __future__ import annotations

import base64
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from emr_hub.hub import Hub
from emr_hub.security.clients import client_scopes, get_client, register_client
from emr_hub.security.keys import signing_key
from emr_hub.security.scopes import ScopeSet
from emr_hub.security.tokens import issue_access_token, verify_access_token
from tests.conftest import free_port, make_settings
from tests.processes import EMR_HUB, cli_env


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


def add_client(operator: Operator, client_id: str) -> None:
    with operator.hub.db.transaction() as session:
        register_client(session, client_id, "Organization/vien-k", ScopeSet.parse("system/*.rs"))


def token_of(operator: Operator, client_id: str) -> str:
    with operator.hub.db.transaction() as session:
        client = get_client(session, client_id)
    assert client is not None
    return issue_access_token(operator.hub, client, client_scopes(client))[0]


def test_keys_rotate_and_list(operator: Operator) -> None:
    assert "no signing key yet" in operator.ok("keys", "list")
    add_client(operator, "his-t")
    old_token = token_of(operator, "his-t")
    rotated = operator.ok("keys", "rotate")
    assert rotated.startswith("new signing key ")
    assert "older keys verify until" in rotated
    listed = operator.ok("keys", "list").splitlines()
    assert len(listed) == 2
    assert " verifying until " in listed[0] and " signing " in listed[1]
    assert verify_access_token(operator.hub, old_token).client_id == "his-t"


def test_wrong_kek_is_a_clear_cli_error(operator: Operator) -> None:
    add_client(operator, "his-w")
    signing_key(operator.hub)  # made and sealed with the generated KEK file the CLI shares
    kek = base64.b64encode(os.urandom(32)).decode()
    wrong = {**operator.env, "EMR_HUB_KEY_ENCRYPTION_KEY": kek}
    for args in (("token", "his-w"), ("keys", "rotate"), ("serve", "--port", str(free_port()))):
        done = operator.run(*args, env=wrong)
        assert done.returncode == 1, done.stdout
        assert "was sealed with the key-encryption key of id" in done.stderr
        assert "Traceback" not in done.stderr and kek not in done.stderr
    malformed = {**operator.env, "EMR_HUB_KEY_ENCRYPTION_KEY": "short"}
    done = operator.run("token", "his-w", env=malformed)
    assert done.returncode == 1 and "base64 of 32 random bytes" in done.stderr
