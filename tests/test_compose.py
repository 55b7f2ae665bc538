"""docker-compose.yml and the Dockerfile stay true to the code: settings, CLI, bucket, volumes.

Pure file checks (no Docker needed): the compose file is read with PyYAML, ``${VAR:-default}``
is resolved to its default, and every name is checked against what the code declares.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import click
import pytest
import yaml

from emr_hub.cli import main as cli
from emr_hub.config import Settings
from storage.async_db import CONNECTIONS as ASYNC_READS

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
PYPROJECT = ROOT / "pyproject.toml"

PREFIX = "EMR_HUB_"
ALL_INTERFACES = "0.0.0.0"  # noqa: S104 - inside a container the API must listen on all of them
HUB_SERVICES = ("api", "worker", "beat")
ONE_SHOT = ("createbuckets",)
SERVICES = (*HUB_SERVICES, "postgres", "redis", "minio", *ONE_SHOT)
OFFICIAL_IMAGES = {"postgres": "postgres", "redis": "redis", "minio": "minio/minio"}
CONTRACT_SETTINGS = (
    "DATA_DIR",
    "DATABASE_URL",
    "BROKER_URL",
    "OBJECT_STORE",
    "S3_ENDPOINT",
    "S3_ACCESS_KEY",
    "S3_SECRET_KEY",
    "BASE_URL",
)
_VARIABLE = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::?-(?P<default>[^}]*))?\}")
_BUCKET_MADE = re.compile(r"\bmc\s+mb\s+(?:--?[\w-]+\s+)*(?P<alias>[\w-]+)/(?P<bucket>[a-z0-9.-]+)")


# ------------------------------------------------------------------ helpers
@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text("utf-8"))
    assert isinstance(data, dict)
    return data


def service(compose: dict[str, Any], name: str) -> dict[str, Any]:
    return compose["services"][name]


def interpolate(value: str) -> str:
    """What compose makes of ``value`` when no variable is set: defaults, ``$$`` as ``$``."""
    resolved = _VARIABLE.sub(lambda m: m["default"] or "", value)
    return resolved.replace("$$", "$")


def environment(svc: dict[str, Any]) -> dict[str, str]:
    """A service's environment as a mapping (compose accepts a mapping or a list)."""
    env = svc.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): interpolate(str(v)) for k, v in env.items() if v is not None}


def command(svc: dict[str, Any]) -> list[str]:
    value = svc.get("command") or []
    return shlex.split(value) if isinstance(value, str) else [str(part) for part in value]


def setting_names() -> set[str]:
    return {PREFIX + name.upper() for name in Settings.model_fields}


def assert_cli_accepts(args: list[str]) -> None:
    """``emr-hub ARGS`` names a real command whose options parse (nothing is run)."""
    assert args, "no command given"
    name, *rest = args
    assert name in cli.commands, f"{name!r} is not an emr-hub command: {sorted(cli.commands)}"
    sub = cli.commands[name]
    assert not isinstance(sub, click.Group), f"{name!r} is a group; give its subcommand"
    try:
        sub.make_context(name, list(rest))
    except click.UsageError as exc:  # pragma: no cover - the message is the point
        pytest.fail(f"emr-hub {' '.join(args)}: {exc.format_message()}")


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined and comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for line in DOCKERFILE.read_text("utf-8").splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        text = pending + stripped
        pending = ""
        keyword, _, arguments = text.partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
    return instructions


def dockerfile(keyword: str) -> list[str]:
    return [arguments for kw, arguments in dockerfile_instructions() if kw == keyword]


def exec_form(arguments: str) -> list[str]:
    value = json.loads(arguments)
    assert isinstance(value, list) and all(isinstance(p, str) for p in value), arguments
    return value


# ----------------------------------------------------------------- services
def test_services_exist(compose: dict[str, Any]) -> None:
    assert "version" not in compose, "the compose specification has no version key"
    assert set(SERVICES) <= set(compose["services"])


@pytest.mark.parametrize(("name", "repository"), sorted(OFFICIAL_IMAGES.items()))
def test_official_images(compose: dict[str, Any], name: str, repository: str) -> None:
    image = service(compose, name)["image"]
    assert image.split("@")[0].split(":")[0] == repository


def test_hub_services_share_one_image_built_here(compose: dict[str, Any]) -> None:
    api = service(compose, "api")
    assert api.get("build") in (".", {"context": "."})
    for name in HUB_SERVICES:
        assert service(compose, name)["image"] == api["image"]


def test_depends_on_names_real_services(compose: dict[str, Any]) -> None:
    for name, svc in compose["services"].items():
        for dependency in svc.get("depends_on") or ():
            assert dependency in compose["services"], f"{name} depends on unknown {dependency}"


def test_api_waits_for_its_backends_and_the_bucket(compose: dict[str, Any]) -> None:
    depends = service(compose, "api")["depends_on"]
    for backend in ("postgres", "redis", "minio"):
        assert depends[backend]["condition"] == "service_healthy"
    assert depends["createbuckets"]["condition"] == "service_completed_successfully"


@pytest.mark.parametrize("name", ["worker", "beat"])
def test_worker_and_beat_start_after_the_api_migrated(compose: dict[str, Any], name: str) -> None:
    assert service(compose, name)["depends_on"]["api"]["condition"] == "service_healthy"


# ----------------------------------------------------------------- settings
def test_every_hub_variable_is_a_setting() -> None:
    """Any EMR_HUB_* name in the file, comments included, is a field of Settings."""
    used = set(re.findall(r"\b" + PREFIX + r"[A-Z0-9_]+\b", COMPOSE.read_text("utf-8")))
    assert used, "no EMR_HUB_* variable in docker-compose.yml"
    unknown = used - setting_names()
    assert not unknown, f"not settings of emr_hub.config.Settings: {sorted(unknown)}"


@pytest.mark.parametrize("name", HUB_SERVICES)
def test_contract_settings_are_set(compose: dict[str, Any], name: str) -> None:
    env = environment(service(compose, name))
    for setting in CONTRACT_SETTINGS:
        assert PREFIX + setting in setting_names()
        assert env.get(PREFIX + setting), f"{name} does not set {PREFIX}{setting}"


def test_settings_accept_the_api_environment(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    env = environment(service(compose, "api"))
    for key in [k for k in os.environ if k.startswith(PREFIX)]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = Settings()
    assert settings.broker_url and settings.database_url and settings.object_store
    assert settings.effective_database_url.startswith("postgresql+psycopg://")
    assert str(settings.data_dir) == env[PREFIX + "DATA_DIR"]


def test_database_url_matches_postgres(compose: dict[str, Any]) -> None:
    url = urlsplit(environment(service(compose, "api"))[PREFIX + "DATABASE_URL"])
    postgres = environment(service(compose, "postgres"))
    assert url.scheme == "postgresql"
    assert url.hostname == "postgres" and url.port == 5432
    assert url.username == postgres["POSTGRES_USER"]
    assert url.password == postgres["POSTGRES_PASSWORD"]
    assert url.path.lstrip("/") == postgres["POSTGRES_DB"]


def test_broker_is_the_redis_service(compose: dict[str, Any]) -> None:
    url = urlsplit(environment(service(compose, "api"))[PREFIX + "BROKER_URL"])
    assert url.scheme == "redis" and url.hostname == "redis"


def test_s3_settings_match_minio(compose: dict[str, Any]) -> None:
    env = environment(service(compose, "api"))
    minio = environment(service(compose, "minio"))
    assert urlsplit(env[PREFIX + "S3_ENDPOINT"]).hostname == "minio"
    assert env[PREFIX + "S3_ACCESS_KEY"] == minio["MINIO_ROOT_USER"]
    assert env[PREFIX + "S3_SECRET_KEY"] == minio["MINIO_ROOT_PASSWORD"]
    assert len(minio["MINIO_ROOT_PASSWORD"]) >= 8, "MinIO refuses root passwords under 8"


def test_every_substitution_has_a_default() -> None:
    """``docker compose up`` works with no .env file (the defaults say to change them)."""
    for match in _VARIABLE.finditer(COMPOSE.read_text("utf-8")):
        assert match["default"], f"${{{match['name']}}} has no default"


def test_bucket_created_is_the_object_store_bucket(compose: dict[str, Any]) -> None:
    from storage.objects import S3ObjectStore, open_object_store

    env = environment(service(compose, "api"))
    store = open_object_store(
        env[PREFIX + "OBJECT_STORE"],
        endpoint=env[PREFIX + "S3_ENDPOINT"],
        access_key=env[PREFIX + "S3_ACCESS_KEY"],
        secret_key=env[PREFIX + "S3_SECRET_KEY"],
    )
    assert isinstance(store, S3ObjectStore)
    job = service(compose, "createbuckets")
    assert job["image"].split(":")[0] == "minio/mc"
    script = " ".join([*command(job), *(job.get("entrypoint") or [])])
    made = {m["bucket"] for m in _BUCKET_MADE.finditer(script)}
    assert made == {store.bucket}


# ------------------------------------------------------------------ commands
@pytest.mark.parametrize("name", HUB_SERVICES)
def test_commands_are_real_cli_commands(compose: dict[str, Any], name: str) -> None:
    assert_cli_accepts(command(service(compose, name)))


def test_api_serves_on_the_published_port(compose: dict[str, Any]) -> None:
    api = service(compose, "api")
    args = command(api)
    context = cli.commands["serve"].make_context("serve", args[1:])
    assert context.params["host"] == ALL_INTERFACES
    published = {str(p).rsplit(":", 1)[-1] for p in api["ports"]}
    assert str(context.params["port"]) in published


# -------------------------------------------------------- health and volumes
@pytest.mark.parametrize("name", [s for s in SERVICES if s not in ONE_SHOT])
def test_long_running_services_have_a_healthcheck(compose: dict[str, Any], name: str) -> None:
    check = service(compose, name).get("healthcheck")
    assert check and not check.get("disable") and check.get("test"), f"{name} has no healthcheck"
    assert check["test"] != ["NONE"]


def test_api_healthcheck_is_readiness(compose: dict[str, Any]) -> None:
    test = service(compose, "api")["healthcheck"]["test"]
    assert "/readyz" in " ".join(test if isinstance(test, list) else [test])


def test_volumes_are_declared(compose: dict[str, Any]) -> None:
    declared = set(compose.get("volumes") or {})
    used: set[str] = set()
    for svc in compose["services"].values():
        for volume in svc.get("volumes") or ():
            source = volume.get("source") if isinstance(volume, dict) else volume.split(":")[0]
            if source and not source.startswith((".", "/", "~", "$")):
                used.add(source)
    assert used, "no named volumes"
    assert used <= declared, f"undeclared volumes: {sorted(used - declared)}"


def test_beat_schedule_lives_on_a_volume(compose: dict[str, Any]) -> None:
    beat = service(compose, "beat")
    data_dir = environment(beat)[PREFIX + "DATA_DIR"]
    targets = {str(v).split(":")[1] for v in beat["volumes"]}
    assert data_dir in targets


# ---------------------------------------------------------------- Dockerfile
def test_dockerfile_entrypoint_is_the_console_script() -> None:
    scripts = tomllib.loads(PYPROJECT.read_text("utf-8"))["project"]["scripts"]
    (entrypoint,) = dockerfile("ENTRYPOINT")
    (script,) = exec_form(entrypoint)
    assert script in scripts
    module, _, attribute = scripts[script].partition(":")
    assert (module, attribute) == ("emr_hub.cli", "main")


def test_dockerfile_cmd_serves_the_exposed_port() -> None:
    (cmd,) = dockerfile("CMD")
    args = exec_form(cmd)
    assert_cli_accepts(args)
    context = cli.commands["serve"].make_context("serve", args[1:])
    assert context.params["host"] == ALL_INTERFACES
    exposed = {port.split("/")[0] for line in dockerfile("EXPOSE") for port in line.split()}
    assert str(context.params["port"]) in exposed


def test_dockerfile_base_user_and_healthcheck() -> None:
    (base,) = dockerfile("FROM")
    assert base.split()[0] == "python:3.11-slim"
    users = dockerfile("USER")
    assert users and users[-1].split(":")[0] not in ("root", "0")
    (healthcheck,) = dockerfile("HEALTHCHECK")
    assert "/healthz" in healthcheck and "curl" not in healthcheck
    assert any(line.startswith("pip install .") for line in dockerfile("RUN"))


# ------------------------------------------------------------ profile "scale"
SCALE = "scale"
SCALE_PROXY = "proxy"
SCALE_REPLICAS = ("api-1", "api-2")
SCALE_WORKERS = ("worker-2",)
NGINX_CONF_IN_CONTAINER = "/etc/nginx/nginx.conf"
# what the replicas may set otherwise than the api (docs/scaling.md says why)
REPLICA_OWN_SETTINGS = {PREFIX + "BASE_URL", PREFIX + "WORKER_THREADS", "FORWARDED_ALLOW_IPS"}
POSTGRES_MAX_CONNECTIONS = 100  # PostgreSQL's default; the postgres service keeps it
WORKERS_AND_TOOLS_CONNECTIONS = 10  # Celery processes, beat, an operator's psql or pg_dump
_UPSTREAM = re.compile(r"\bupstream\s+(?P<name>[\w-]+)\s*\{(?P<body>[^}]*)\}")
_UPSTREAM_SERVER = re.compile(r"^\s*server\s+(?P<host>[\w.-]+):(?P<port>\d+)\b", re.MULTILINE)
_LOG_FORMAT = re.compile(r"\blog_format\s+\w+(?:\s+escape=\w+)?\s+(?P<format>(?:'[^']*'\s*)+);")


def published(svc: dict[str, Any]) -> set[str]:
    """The host ports a service publishes (``HOST:CONTAINER`` or ``IP:HOST:CONTAINER``)."""
    ports = set()
    for entry in svc.get("ports") or ():
        if isinstance(entry, dict):
            ports.add(str(entry.get("published")))
        else:
            parts = interpolate(str(entry)).split(":")
            ports.add(parts[-2] if len(parts) > 1 else parts[0])
    return ports


def proxy_config(compose: dict[str, Any]) -> str:
    for volume in service(compose, SCALE_PROXY)["volumes"]:
        source, target = str(volume).split(":")[:2]
        if target == NGINX_CONF_IN_CONTAINER:
            path = ROOT / source
            assert path.is_file(), f"the proxy mounts {source}, which is not in the repository"
            return path.read_text("utf-8")
    pytest.fail(f"the proxy mounts nothing at {NGINX_CONF_IN_CONTAINER}")


def test_default_stack_is_in_no_profile(compose: dict[str, Any]) -> None:
    """``docker compose up`` starts what it started before the profile existed."""
    for name in SERVICES:
        assert not service(compose, name).get("profiles"), f"{name} is in a profile"


def test_scale_profile_services(compose: dict[str, Any]) -> None:
    in_profile = {n for n, s in compose["services"].items() if SCALE in (s.get("profiles") or ())}
    assert in_profile == {SCALE_PROXY, *SCALE_REPLICAS, *SCALE_WORKERS}


def test_scale_profile_clashes_with_no_published_port(compose: dict[str, Any]) -> None:
    default = set().union(*(published(service(compose, name)) for name in SERVICES))
    assert published(service(compose, SCALE_PROXY)), "the proxy publishes no port"
    assert not published(service(compose, SCALE_PROXY)) & default
    for name in (*SCALE_REPLICAS, *SCALE_WORKERS):
        assert not published(service(compose, name)), f"{name} is reached through the proxy only"


def test_proxy_is_nginx(compose: dict[str, Any]) -> None:
    proxy = service(compose, SCALE_PROXY)
    assert proxy["image"].split("@")[0].split(":")[0] == "nginx"
    for name in SCALE_REPLICAS:
        assert proxy["depends_on"][name]["condition"] == "service_healthy"
    assert proxy["healthcheck"]["test"]


@pytest.mark.parametrize("name", SCALE_REPLICAS)
def test_scale_replicas_are_the_api(compose: dict[str, Any], name: str) -> None:
    """The same image, command, health check and settings as ``api`` (the anchors), but for
    the settings a replica behind the proxy needs of its own."""
    api, replica = service(compose, "api"), service(compose, name)
    assert replica["image"] == api["image"]
    assert command(replica) == command(api)
    assert replica["healthcheck"] == api["healthcheck"]
    assert_cli_accepts(command(replica))
    api_env, env = environment(api), environment(replica)
    assert set(env) - REPLICA_OWN_SETTINGS == set(api_env) - REPLICA_OWN_SETTINGS
    for key in set(env) - REPLICA_OWN_SETTINGS:
        assert env[key] == api_env[key], f"{name} sets {key} otherwise than api"


@pytest.mark.parametrize("name", SCALE_REPLICAS)
def test_scale_replicas_unseal_the_api_signing_keys(compose: dict[str, Any], name: str) -> None:
    """With no key-encryption key set, ``api`` makes one under DATA_DIR on its volume: the
    replicas read that one (they must unseal the same signing keys), after api made it."""
    api, replica = service(compose, "api"), service(compose, name)
    data_dir = environment(replica)[PREFIX + "DATA_DIR"]
    api_mounts = {str(v).split(":")[1]: str(v).split(":")[0] for v in api["volumes"]}
    mounts = {str(v).split(":")[1]: str(v).split(":") for v in replica["volumes"]}
    assert mounts[data_dir][0] == api_mounts[data_dir]
    assert mounts[data_dir][2:] == ["ro"]
    assert replica["depends_on"]["api"]["condition"] == "service_healthy"


def test_scale_replicas_share_the_proxy_address(compose: dict[str, Any]) -> None:
    """Tokens name the base URL as issuer and audience: the replicas must agree on one, the
    proxy's, and it must differ from api's (whose tokens name port 8000)."""
    urls = {environment(service(compose, n))[PREFIX + "BASE_URL"] for n in SCALE_REPLICAS}
    assert len(urls) == 1
    (url,) = urls
    assert url != environment(service(compose, "api"))[PREFIX + "BASE_URL"]
    parts = urlsplit(url)
    assert parts.hostname == "localhost"
    assert str(parts.port) in published(service(compose, SCALE_PROXY))


def test_scale_worker_is_the_worker(compose: dict[str, Any]) -> None:
    worker = service(compose, "worker")
    for name in SCALE_WORKERS:
        extra = dict(service(compose, name))
        assert extra.pop("profiles") == [SCALE]
        assert extra == worker


def test_proxy_config_names_the_replicas(compose: dict[str, Any]) -> None:
    config = proxy_config(compose)
    upstreams = {m["name"]: m["body"] for m in _UPSTREAM.finditer(config)}
    assert len(upstreams) == 1, f"one upstream expected: {sorted(upstreams)}"
    (body,) = upstreams.values()
    servers = {(m["host"], m["port"]) for m in _UPSTREAM_SERVER.finditer(body)}
    ports = set()
    for name in SCALE_REPLICAS:
        args = command(service(compose, name))
        ports.add(str(cli.commands["serve"].make_context("serve", args[1:]).params["port"]))
    assert {host for host, _ in servers} == set(SCALE_REPLICAS)
    assert {port for _, port in servers} == ports
    assert re.search(rf"proxy_pass\s+http://{re.escape(next(iter(upstreams)))}\s*;", config)
    listens = set(re.findall(r"^\s*listen\s+(\d+)\s*;", config, re.MULTILINE))
    containers = {str(p).rsplit(":", 1)[-1] for p in service(compose, SCALE_PROXY)["ports"]}
    assert listens == containers


def test_proxy_sets_the_client_address_it_saw(compose: dict[str, Any]) -> None:
    """The replicas trust X-Forwarded-For's first address: the proxy must replace the header,
    never append to what a client sent."""
    config = proxy_config(compose)
    assert re.search(r"proxy_set_header\s+X-Forwarded-For\s+\$remote_addr\s*;", config)
    assert "$proxy_add_x_forwarded_for" not in config


def test_proxy_logs_no_url(compose: dict[str, Any]) -> None:
    """Query strings carry identifiers (a CCCD): the access log names no URI, and error lines
    (which quote the request line) are kept to critical ones."""
    config = proxy_config(compose)
    formats = _LOG_FORMAT.findall(config)
    assert formats, "the access log needs its own format (the default one logs the URL)"
    for variable in ("$request", "$request_uri", "$uri", "$args", "$query_string", "$arg_"):
        for text in formats:
            assert not re.search(re.escape(variable) + r"(?![\w])", text), variable
    access_logs = re.findall(r"^\s*access_log\s+(\S+)(?:\s+(\w+))?\s*;", config, re.MULTILINE)
    assert access_logs and all(fmt and fmt != "combined" for _, fmt in access_logs)
    assert re.search(r"^\s*error_log\s+\S+\s+crit\s*;", config, re.MULTILINE)


def test_scale_pools_fit_postgres(compose: dict[str, Any]) -> None:
    """Every API process of the profile at its pool's size (worker threads + 2, emr_hub/hub.py)
    plus its client change listener and its event loop's connections (storage/async_db.py), with
    room for the workers and an operator, within max_connections."""
    assert "max_connections" not in " ".join(command(service(compose, "postgres")))
    default_threads = Settings.model_fields["worker_threads"].default
    total = 0
    for name in ("api", *SCALE_REPLICAS):
        svc = service(compose, name)
        args = command(svc)
        processes = cli.commands["serve"].make_context("serve", args[1:]).params["workers"]
        threads = int(environment(svc).get(PREFIX + "WORKER_THREADS", default_threads))
        total += processes * (threads + 2 + 1 + ASYNC_READS)
    assert total + WORKERS_AND_TOOLS_CONNECTIONS <= POSTGRES_MAX_CONNECTIONS, total


# -------------------------------------------------------- Prometheus and Grafana
METRICS_SERVICES = {"prometheus": "prom/prometheus", "grafana": "grafana/grafana"}
PROMETHEUS_CONFIG_IN_CONTAINER = "/etc/prometheus/prometheus.yml"
GRAFANA_PROVISIONING = "/etc/grafana/provisioning"
TOKEN_CONFIG = "metrics-token"
HUB_PROCESS_SERVICES = ("api", "worker", *SCALE_REPLICAS, *SCALE_WORKERS)
_METRIC_NAME = re.compile(r"\bemr_hub_[a-z0-9_]+\b")


def bind_mounts(compose: dict[str, Any], name: str) -> dict[str, Path]:
    """A service's mounts of repository files: container path -> file or folder here."""
    mounts = {}
    for volume in service(compose, name).get("volumes") or ():
        source, target = str(volume).split(":")[:2]
        if source.startswith("./"):
            mounts[target] = ROOT / source
    return mounts


def parsed(path: Path) -> Any:
    """A mounted file read as what its name says (YAML or JSON); other files as text."""
    text = path.read_text("utf-8")
    if path.suffix in (".yml", ".yaml"):
        return yaml.safe_load(text)
    if path.suffix == ".json":
        return json.loads(text)
    return text


def prometheus_config(compose: dict[str, Any]) -> dict[str, Any]:
    config = parsed(bind_mounts(compose, "prometheus")[PROMETHEUS_CONFIG_IN_CONTAINER])
    assert isinstance(config, dict) and config["scrape_configs"]
    return config


def grafana_file(compose: dict[str, Any], inside: str) -> Any:
    """A file of Grafana's provisioning folder, by its path under that folder."""
    return parsed(bind_mounts(compose, "grafana")[GRAFANA_PROVISIONING] / inside)


def dashboard(compose: dict[str, Any]) -> dict[str, Any]:
    provider = grafana_file(compose, "dashboards/emr-hub.yml")["providers"][0]
    folder = bind_mounts(compose, "grafana")[provider["options"]["path"]]
    (path,) = folder.glob("*.json")
    board = parsed(path)
    assert isinstance(board, dict)
    return board


def test_metrics_services(compose: dict[str, Any]) -> None:
    for name, repository in METRICS_SERVICES.items():
        svc = service(compose, name)
        assert svc["image"].split("@")[0].split(":")[0] == repository
        assert not svc.get("profiles")
        assert svc["healthcheck"]["test"]
        for entry in svc["ports"]:
            assert str(entry).startswith("127.0.0.1:"), f"{name} is published beyond this machine"


def test_every_mounted_file_is_here_and_parses(compose: dict[str, Any]) -> None:
    mounted = [path for name in compose["services"] for path in bind_mounts(compose, name).values()]
    assert mounted
    for path in mounted:
        assert path.exists(), f"compose mounts {path.relative_to(ROOT)}, which is not here"
        for file in [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file()):
            assert parsed(file), f"{file.relative_to(ROOT)} is empty"


def test_prometheus_scrapes_the_api_and_the_workers(compose: dict[str, Any]) -> None:
    from emr_hub.metrics.exposition import PATH

    prometheus = service(compose, "prometheus")
    assert f"--config.file={PROMETHEUS_CONFIG_IN_CONTAINER}" in command(prometheus)
    (token_file,) = [c["target"] for c in prometheus["configs"] if c["source"] == TOKEN_CONFIG]
    token = interpolate(compose["configs"][TOKEN_CONFIG]["content"])
    for name in HUB_PROCESS_SERVICES:
        assert environment(service(compose, name))[PREFIX + "METRICS_TOKEN"] == token
    assert Settings(metrics_token=token).metrics_token is not None  # long enough

    jobs = {job["job_name"]: job for job in prometheus_config(compose)["scrape_configs"]}
    for job in jobs.values():
        assert job["metrics_path"] == PATH
        assert job["authorization"]["credentials_file"] == token_file
    ports = {}
    for job in jobs.values():
        for discovery in job["dns_sd_configs"]:
            for name in discovery["names"]:
                assert name in compose["services"], f"Prometheus scrapes unknown {name}"
                ports[name] = str(discovery["port"])
    assert set(ports) == set(HUB_PROCESS_SERVICES)
    for name in ("api", *SCALE_REPLICAS):
        args = command(service(compose, name))
        port = cli.commands["serve"].make_context("serve", args[1:]).params["port"]
        assert ports[name] == str(port)
    for name in ("worker", *SCALE_WORKERS):
        assert ports[name] == environment(service(compose, name))[PREFIX + "WORKER_METRICS_PORT"]


@pytest.mark.parametrize("name", HUB_PROCESS_SERVICES)
def test_metric_files_are_on_a_tmpfs(compose: dict[str, Any], name: str) -> None:
    svc = service(compose, name)
    assert environment(svc)[PREFIX + "METRICS_DIR"] in svc["tmpfs"]


def test_grafana_reads_the_prometheus_service(compose: dict[str, Any]) -> None:
    (source,) = grafana_file(compose, "datasources/prometheus.yml")["datasources"]
    url = urlsplit(source["url"])
    assert url.hostname == "prometheus"
    assert str(url.port) in {
        str(p).rsplit(":", 1)[-1] for p in service(compose, "prometheus")["ports"]
    }
    board = dashboard(compose)
    for panel in board["panels"]:
        assert panel["datasource"]["uid"] == source["uid"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == source["uid"], panel["title"]


def exposed_samples(tmp_path: Path) -> set[str]:
    """The sample names the hub's /metrics can carry, from a real scrape of the app: every
    metric is declared (a labelled one without samples yet still has its HELP and TYPE)."""
    from fastapi.testclient import TestClient
    from prometheus_client.parser import text_string_to_metric_families

    from emr_hub.hub import Hub
    from emr_hub.main import create_app
    from tests.conftest import make_settings

    token = "t" * 24
    settings = make_settings(tmp_path, f"sqlite:///{tmp_path / 'hub.db'}", metrics_token=token)
    hub = Hub.from_settings(settings, migrate=True)
    try:
        with TestClient(create_app(hub)) as client:
            response = client.get("/metrics", headers={"Authorization": f"Bearer {token}"})
    finally:
        hub.close()
    assert response.status_code == 200
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum")}
    return {
        family.name + suffix
        for family in text_string_to_metric_families(response.text)
        for suffix in suffixes.get(family.type, ("",))
    }


def test_dashboard_queries_name_metrics_the_hub_exposes(
    compose: dict[str, Any], tmp_path: Path
) -> None:
    used = {
        name
        for panel in dashboard(compose)["panels"]
        for target in panel["targets"]
        for name in _METRIC_NAME.findall(target["expr"])
    }
    assert not used - exposed_samples(tmp_path), "the dashboard queries metrics nobody exposes"
    for subject in (
        "emr_hub_http_requests_total",
        "emr_hub_http_request_duration_seconds_bucket",
        "emr_hub_db_pool_checked_out",
        "emr_hub_outbox_backlog",
        "emr_hub_outbox_oldest_age_seconds",
        "emr_hub_outbox_failed",
        "emr_hub_break_glass_openings",
        "emr_hub_export_jobs",
    ):
        assert subject in used, f"the dashboard shows no {subject}"
