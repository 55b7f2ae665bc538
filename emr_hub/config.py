"""Settings, read from the environment with the prefix ``EMR_HUB_``.

The embedded default needs none of them: a SQLite file and an object folder under
``DATA_DIR``, Celery tasks run in process after commit, signing keys made on first start.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="EMR_HUB_", extra="ignore")

    data_dir: Path = Field(default=Path("./data"), description="Root of the embedded state.")
    database_url: str | None = Field(
        default=None, description="SQLAlchemy URL; default sqlite file under DATA_DIR."
    )
    broker_url: str | None = Field(
        default=None, description="Celery broker (redis:// or amqp://); unset = run in process."
    )
    object_store: str | None = Field(
        default=None, description="file://PATH or s3://bucket; default DATA_DIR/objects."
    )
    s3_endpoint: str | None = None
    s3_access_key: str | None = None
    s3_secret_key: str | None = None
    wallet_url: str | None = Field(
        default=None,
        description=(
            "The identity wallet's intake URL (docs/wallet-intake.md): every change to a "
            "patient's summary is pushed there as a signed health card. Unset: no pushes."
        ),
    )
    wallet_debounce_seconds: float = Field(
        default=10,
        ge=0,
        le=3600,
        description=(
            "How long a patient's push waits after the first change not yet pushed; the "
            "changes made meanwhile go in the same push."
        ),
    )
    base_url: str = Field(default="http://127.0.0.1:8000", description="Public base URL.")
    require_services: bool = False
    token_ttl_seconds: int = Field(default=3600, ge=60, le=86400)
    client_secret_auth: bool = Field(
        default=True,
        description=(
            "Clients may authenticate to /auth/token with a client secret (HTTP Basic or form). "
            "Turn it off in production: clients then sign JWT assertions (private_key_jwt)."
        ),
    )
    token_failures_per_client: int = Field(
        default=10,
        ge=1,
        le=100000,
        description="Failed token requests one client id may make in the window before 429.",
    )
    token_failures_per_address: int = Field(
        default=30,
        ge=1,
        le=100000,
        description="Failed token requests one remote address may make in the window before 429.",
    )
    token_failure_window_seconds: int = Field(
        default=300, ge=1, le=86400, description="The window the failure limits count over."
    )
    signing_key_refresh_seconds: int = Field(
        default=60,
        ge=1,
        le=3600,
        description="How often each process re-reads the signing keys (picks up a rotation).",
    )
    client_jwks_cache_seconds: int = Field(
        default=300,
        ge=0,
        le=86400,
        description="How long a client's JWK Set fetched from its JWKS URL is kept per process.",
    )
    key_encryption_key: SecretStr | None = Field(
        default=None,
        description="Base64 of 32 bytes: the AES-256-GCM key that seals the token signing keys.",
    )
    key_encryption_key_file: Path | None = Field(
        default=None,
        description=(
            "A file holding the key-encryption key (base64 of 32 bytes). With neither set, "
            "DATA_DIR/key-encryption-key is used, and made on first start."
        ),
    )
    max_request_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)
    dicom_max_request_bytes: int = Field(
        default=16 * 1024**3,
        ge=1024,
        description=(
            "The largest STOW-RS body (DICOMweb uploads stream to the object store, so "
            "EMR_HUB_MAX_REQUEST_BYTES does not bound them); counted as it streams, chunked too."
        ),
    )
    dicom_header_bytes: int = Field(
        default=4 * 1024 * 1024,
        ge=4096,
        le=256 * 1024 * 1024,
        description="How much of each instance's start STOW keeps to read its DICOM header.",
    )
    dicom_presign_seconds: int = Field(
        default=900,
        ge=1,
        le=3600,
        description="Lifetime of the presigned object-store links WADO-RS gives viewers.",
    )
    statement_timeout_seconds: float = Field(
        default=30,
        ge=0.001,
        le=3600,
        description=(
            "The longest one database statement of a request may run (PostgreSQL's "
            "statement_timeout; on SQLite a work limit checked while the statement runs); "
            "beyond it the request is answered 400 too-costly."
        ),
    )
    worker_threads: int = Field(
        default=16,
        ge=1,
        le=256,
        description=(
            "Requests one API process works on at once (its thread pool); its database pool "
            "holds as many connections plus a few for its background threads."
        ),
    )
    endpoint_allowed_hosts: str = Field(
        default="127.0.0.1,localhost,::1",
        description=(
            "Hosts the hub may send notifications to (Subscription endpoints): comma-separated "
            "names or IP literals, '*.example.vn' for a domain's subdomains, '*' for any host."
        ),
    )

    access_policy: Path | None = Field(
        default=None,
        description=(
            "A JSON file overriding the access policy's defaults "
            "(emr_hub/security/data/access_policy.json)."
        ),
    )
    referral_access_days: int = Field(
        default=90,
        ge=0,
        le=3650,
        description="Days a referral keeps both hospitals' access after its Task ends.",
    )
    break_glass_hours: float = Field(
        default=4, gt=0, le=72, description="Hours a break-the-glass request opens a record for."
    )
    export_links: str = Field(
        default="auto",
        pattern="^(auto|presigned|hub)$",
        description=(
            "How $export files are downloaded: 'presigned' object-store links (no token; "
            "needs an S3 store), 'hub' links served by the API (the export's token needed), "
            "'auto' presigned when the object store can sign, else hub."
        ),
    )
    export_link_seconds: int = Field(
        default=3600, ge=60, le=3600, description="Lifetime of a presigned $export file link."
    )
    export_file_max_bytes: int = Field(
        default=256 * 1024 * 1024,
        ge=1024,
        description="Uncompressed NDJSON bytes of one $export file; a type spills into more.",
    )
    export_retention_hours: float = Field(
        default=24, gt=0, le=720, description="Hours a finished export's files are kept."
    )
    export_lease_seconds: float = Field(
        default=120,
        ge=1,
        le=3600,
        description=(
            "How long a worker's claim on a running export lasts without a checkpoint; after "
            "it the sweep hands the export to another worker, which resumes it."
        ),
    )
    export_poll_seconds: int = Field(
        default=2,
        ge=1,
        le=300,
        description="The Retry-After of an $export status poll; polls at under half are 429.",
    )
    metrics_token: SecretStr | None = Field(
        default=None,
        description=(
            "A static bearer token that may read /metrics (Prometheus sends it from a "
            "credentials file), besides operator access tokens; at least 16 characters."
        ),
    )
    metrics_dir: Path | None = Field(
        default=None,
        description=(
            "Where emr-hub serve and worker keep their processes' metric files (one folder "
            "each, emptied at start); default DATA_DIR/metrics. One per machine."
        ),
    )
    worker_metrics_port: int | None = Field(
        default=None,
        ge=1,
        le=65535,
        description="A port on which emr-hub worker serves its /metrics (the scrape token's).",
    )
    health_link_attempts: int = Field(
        default=10,
        ge=1,
        le=1000,
        description="Wrong passcodes a SMART Health Link takes in its lifetime before it stops.",
    )
    health_link_max_days: int = Field(
        default=90, ge=1, le=3650, description="The longest a SMART Health Link may last."
    )
    citizen_oidc_issuer: str | None = Field(
        default=None,
        description=(
            "The OpenID Connect issuer citizens sign in to the health-book page with (VNeID in "
            "production); its discovery document is read from ISSUER/.well-known/"
            "openid-configuration. Unset: only the development sign-in (demo citizens)."
        ),
    )
    citizen_oidc_client_id: str = Field(
        default="emr-hub", description="The hub's client id at the citizen OIDC issuer."
    )
    citizen_oidc_client_secret: SecretStr | None = Field(
        default=None,
        description="The hub's client secret at the issuer (client_secret_basic); none: public.",
    )
    citizen_oidc_cccd_claim: str = Field(
        default="cccd",
        min_length=1,
        description="The ID token (or userinfo) claim that holds the citizen's CCCD.",
    )
    citizen_session_hours: float = Field(
        default=8, gt=0, le=720, description="How long a health-book sign-in lasts."
    )
    benchmark_without: str = Field(
        default="",
        description=(
            "For benchmarks only: 'policy', 'audit' or 'policy,audit' turns them off, so a "
            "benchmark can measure what they cost. Never set it on a hub holding real data."
        ),
    )

    @field_validator("benchmark_without")
    @classmethod
    def _known_switches(cls, value: str) -> str:
        unknown = {p.strip() for p in value.split(",") if p.strip()} - {"policy", "audit"}
        if unknown:
            raise ValueError(f"benchmark_without takes policy and audit, not {sorted(unknown)}")
        return value

    @field_validator("metrics_token")
    @classmethod
    def _long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        """Unset when empty; else at least 16 characters, none of them a space."""
        text = value.get_secret_value() if value is not None else ""
        if not text:
            return None
        if len(text) < 16 or any(c.isspace() for c in text):
            raise ValueError("the metrics token is at least 16 characters, without spaces")
        return value

    @property
    def policy_enforced(self) -> bool:
        return "policy" not in _switched_off(self.benchmark_without)

    @property
    def audit_enabled(self) -> bool:
        return "audit" not in _switched_off(self.benchmark_without)

    @property
    def effective_database_url(self) -> str:
        if self.database_url:
            return normalise_database_url(self.database_url)
        return f"sqlite:///{(self.data_dir / 'emr_hub.db').resolve()}"

    @property
    def effective_object_store(self) -> str:
        return self.object_store or f"file://{(self.data_dir / 'objects').resolve()}"

    @property
    def fhir_base_url(self) -> str:
        return self.base_url.rstrip("/") + "/fhir"


@lru_cache(maxsize=8)
def _switched_off(benchmark_without: str) -> frozenset[str]:
    """The parts of ``EMR_HUB_BENCHMARK_WITHOUT`` (asked on every request: parsed once)."""
    return frozenset(part.strip() for part in benchmark_without.split(",") if part.strip())


def normalise_database_url(url: str) -> str:
    """Let operators write ``postgresql://`` and still get the psycopg 3 driver."""
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://") :]
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://") :]
    return url


@lru_cache
def get_settings() -> Settings:
    return Settings()
