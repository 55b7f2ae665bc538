"""The hub's signing keys: sealed at rest with a key-encryption key kept out of the database,
rotated without cutting off tokens, picked up by every process within the refresh interval."""

from __future__ import annotations

import base64
import json
import os
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from joserfc import jwt
from joserfc.jwk import ECKey
from pydantic import SecretStr
from sqlalchemy import select, text

from emr_hub.errors import FhirError
from emr_hub.healthbook.card_keys import card_public_jwks
from emr_hub.hub import Hub
from emr_hub.main import create_app
from emr_hub.security.clients import ensure_client
from emr_hub.security.keys import (
    RETIRED,
    SIGNING,
    VERIFYING,
    list_keys,
    public_jwks,
    retention_seconds,
    rotate_signing_key,
    signing_key,
    verification_key,
)
from emr_hub.security.scopes import ScopeSet
from emr_hub.security.sealing import KEK_FILE_NAME, SealingError, key_encryption_key
from emr_hub.security.tokens import issue_access_token, verify_access_token
from storage.db import Database
from storage.tables import ApiClient, SigningKey
from tests.processes import wait_for
from tests.security.conftest import ORGANIZATION

SCOPES = ScopeSet.parse("system/Patient.rs")


def new_kek() -> str:
    return base64.b64encode(os.urandom(32)).decode()


def process(hub: Hub, **changes: Any) -> Hub:
    """Another API process on the same database: its own engine, so its own keys in memory."""
    settings = hub.settings.model_copy(update=changes)
    return Hub(settings=settings, db=Database(settings.effective_database_url))


def client_of(hub: Hub) -> ApiClient:
    """A secret client; ensure_client needs no stored Organization, so nothing here signs a
    token (or makes a key) before the test means to."""
    with hub.db.transaction() as session:
        ensure_client(session, "his", ORGANIZATION, SCOPES)
        client = session.get(ApiClient, "his")
    assert client is not None
    return client


def token_of(hub: Hub) -> str:
    return issue_access_token(hub, client_of(hub), SCOPES)[0]


def kid_of(token: str) -> str:
    header = token.split(".")[0]
    return str(json.loads(base64.urlsafe_b64decode(header + "=" * (-len(header) % 4)))["kid"])


def raw_rows(hub: Hub) -> str:
    """Every signing_key row as the database holds it, as text."""
    with hub.db.engine.connect() as conn:
        return repr([tuple(row) for row in conn.execute(text("SELECT * FROM signing_key"))])


# --- sealing ---------------------------------------------------------------------------------


def test_no_private_key_material_in_clear(hub: Hub) -> None:
    key = signing_key(hub)
    private = key.as_dict(private=True)["d"]
    stored = raw_rows(hub)
    assert private not in stored
    assert key.as_dict(private=False)["x"] in stored  # the public half is there
    with hub.db.snapshot() as session:
        [row] = session.scalars(select(SigningKey)).all()
        assert row.private_jwk is None
        assert row.sealed_private and row.sealed_private.startswith("v1.")
        assert row.public_jwk is not None and "d" not in row.public_jwk


def test_generated_kek_file_is_private(hub: Hub) -> None:
    signing_key(hub)
    path = hub.settings.data_dir / KEK_FILE_NAME
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(base64.b64decode(path.read_text().strip(), validate=True)) == 32
    assert path.read_text().strip() not in raw_rows(hub)


def test_kek_from_setting_or_file(hub: Hub, tmp_path: Path) -> None:
    kek = new_kek()
    path = tmp_path / "kek"
    path.write_text(kek + "\n")
    by_value = process(hub, key_encryption_key=SecretStr(kek))
    by_file = process(hub, key_encryption_key_file=path)
    try:
        token = token_of(by_value)  # makes and seals the key with this KEK
        assert signing_key(by_file).kid == kid_of(token)
        assert not (hub.settings.data_dir / KEK_FILE_NAME).exists()
    finally:
        by_value.close()
        by_file.close()


def test_wrong_kek_is_refused_clearly(hub: Hub) -> None:
    right, wrong = new_kek(), new_kek()
    first = process(hub, key_encryption_key=SecretStr(right))
    second = process(hub, key_encryption_key=SecretStr(wrong))
    try:
        token = token_of(first)
        with pytest.raises(SealingError) as caught:
            signing_key(second)
        message = str(caught.value)
        assert "sealed with the key-encryption key of id" in message
        assert "EMR_HUB_KEY_ENCRYPTION_KEY" in message
        assert right not in message and wrong not in message
        # Verification needs public keys only: the wrong KEK does not stop it.
        assert verify_access_token(second, token).client_id == "his"
    finally:
        first.close()
        second.close()


def test_token_endpoint_with_wrong_kek_is_503(hub: Hub) -> None:
    first = process(hub, key_encryption_key=SecretStr(new_kek()))
    second = process(hub, key_encryption_key=SecretStr(new_kek()))
    try:
        signing_key(first)
        with hub.db.transaction() as session:
            secret = ensure_client(session, "his-2", ORGANIZATION, SCOPES)
        assert secret is not None
        with TestClient(create_app(second)) as app:
            form = {"grant_type": "client_credentials", "client_id": "his-2"}
            response = app.post("/auth/token", data={**form, "client_secret": secret})
        assert response.status_code == 503
        assert response.json() == {
            "error": "server_error",
            "error_description": "The hub cannot use its signing keys now; retry later",
        }
    finally:
        first.close()
        second.close()


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("not base64!", "is not base64"),
        (base64.b64encode(b"short").decode(), "decodes to 5 bytes, not 32"),
    ],
)
def test_malformed_kek_is_a_clear_error(hub: Hub, value: str, says: str) -> None:
    settings = hub.settings.model_copy(update={"key_encryption_key": SecretStr(value)})
    with pytest.raises(SealingError, match=says):
        key_encryption_key(settings)


def test_kek_setting_and_file_conflict_or_missing(hub: Hub, tmp_path: Path) -> None:
    both = hub.settings.model_copy(
        update={"key_encryption_key": SecretStr(new_kek()), "key_encryption_key_file": tmp_path}
    )
    with pytest.raises(SealingError, match="set only one"):
        key_encryption_key(both)
    missing = hub.settings.model_copy(update={"key_encryption_key_file": tmp_path / "nope"})
    with pytest.raises(SealingError, match="Cannot read EMR_HUB_KEY_ENCRYPTION_KEY_FILE"):
        key_encryption_key(missing)


def test_clear_rows_are_sealed_on_first_use(hub: Hub) -> None:
    """A key stored in clear before sealing existed (revision 0006) keeps its kid and its
    tokens; the first signing seals it."""
    legacy = ECKey.generate_key("P-256")
    kid = legacy.thumbprint()
    with hub.db.transaction() as session:
        session.add(
            SigningKey(
                kid=kid,
                algorithm="ES256",
                private_jwk=dict(legacy.as_dict(private=True, kid=kid)),
                created_at=datetime.now(UTC),
            )
        )
    assert verification_key(hub, kid) is not None  # before sealing, from the clear row
    assert signing_key(hub).kid == kid
    stored = raw_rows(hub)
    assert legacy.as_dict(private=True)["d"] not in stored
    with hub.db.snapshot() as session:
        row = session.get(SigningKey, kid)
        assert row is not None and row.private_jwk is None and row.sealed_private


# --- rotation --------------------------------------------------------------------------------


def test_rotation_keeps_old_tokens_working(hub: Hub) -> None:
    old_token = token_of(hub)
    old_kid = kid_of(old_token)
    new_kid, retires_at = rotate_signing_key(hub)
    assert new_kid != old_kid
    expected = datetime.now(UTC) + timedelta(seconds=retention_seconds(hub))
    assert abs((retires_at - expected).total_seconds()) < 5
    assert retention_seconds(hub) == hub.settings.token_ttl_seconds + 30 + 60

    new_token = token_of(hub)
    assert kid_of(new_token) == new_kid
    other = process(hub)
    try:
        for instance in (hub, other):
            assert verify_access_token(instance, old_token).client_id == "his"
            assert verify_access_token(instance, new_token).client_id == "his"
            kids = {jwk["kid"] for jwk in public_jwks(instance)["keys"]}
            assert kids == {old_kid, new_kid}
        with TestClient(create_app(other)) as app:
            served = app.get("/.well-known/jwks.json").json()
        card_kids = {jwk["kid"] for jwk in card_public_jwks(other)}
        assert {jwk["kid"] for jwk in served["keys"]} == {old_kid, new_kid} | card_kids
        assert all("d" not in jwk for jwk in served["keys"])
    finally:
        other.close()
    states = {info.kid: info.state for info in list_keys(hub)}
    assert states == {old_kid: VERIFYING, new_kid: SIGNING}


def test_rotated_key_retires_once_its_tokens_expired(hub: Hub) -> None:
    """A rotation as long ago as the retention: the old key is neither served nor accepted,
    and loses its private key."""
    old_key = signing_key(hub)
    long_ago = datetime.now(UTC) - timedelta(seconds=retention_seconds(hub) + 1)
    new_kid, _ = rotate_signing_key(hub, now=long_ago)
    # A token the old key signs now (a stolen or stale copy): refused.
    client = client_of(hub)
    claims = {
        "iss": hub.settings.base_url,
        "aud": hub.settings.fhir_base_url,
        "sub": client.client_id,
        "iat": int(datetime.now(UTC).timestamp()),
        "exp": int(datetime.now(UTC).timestamp()) + 600,
        "jti": "j",
        "scope": str(SCOPES),
        "organization": client.organization,
        "gen": client.generation,
    }
    stale = jwt.encode({"alg": "ES256", "kid": old_key.kid, "typ": "at+jwt"}, claims, old_key)
    other = process(hub)
    try:
        for instance in (hub, other):
            assert [jwk["kid"] for jwk in public_jwks(instance)["keys"]] == [new_kid]
            with pytest.raises(FhirError) as caught:
                verify_access_token(instance, stale)
            assert caught.value.status == 401
        assert signing_key(other).kid == new_kid  # the next signer retires the old row
    finally:
        other.close()
    with hub.db.snapshot() as session:
        row = session.get(SigningKey, str(old_key.kid))
        assert row is not None and not row.active and row.sealed_private is None
    assert {info.kid: info.state for info in list_keys(hub)}[str(old_key.kid)] == RETIRED


def test_every_process_picks_up_a_rotation(hub: Hub) -> None:
    refresh = 2
    watcher = process(hub, signing_key_refresh_seconds=refresh)
    rotator = process(hub, signing_key_refresh_seconds=refresh)
    try:
        old_kid = signing_key(watcher).kid
        new_kid, _ = rotate_signing_key(rotator)
        # A token signed with the new key verifies at once everywhere.
        assert verify_access_token(watcher, token_of(rotator)).client_id == "his"
        # The watcher signs with the new key within the refresh interval.
        started = datetime.now(UTC)
        wait_for(lambda: signing_key(watcher).kid == new_kid, refresh * 5, "the new signer")
        assert (datetime.now(UTC) - started).total_seconds() <= refresh * 5
        assert old_kid != new_kid
    finally:
        watcher.close()
        rotator.close()


def test_rotation_with_the_wrong_kek_changes_nothing(hub: Hub) -> None:
    """Else the new signer would be sealed with a KEK the other processes do not have."""
    first = process(hub, key_encryption_key=SecretStr(new_kek()))
    wrong = process(hub, key_encryption_key=SecretStr(new_kek()))
    try:
        kid = signing_key(first).kid
        with pytest.raises(SealingError, match="sealed with the key-encryption key of id"):
            rotate_signing_key(wrong)
        assert [(info.kid, info.state) for info in list_keys(hub)] == [(kid, SIGNING)]
    finally:
        first.close()
        wrong.close()
