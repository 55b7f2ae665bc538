"""The ``emr-hub`` command line: serve, worker, beat, migrate, demo, client, token, keys,
import, reindex, xml130, audit, dicom-scp, dicom-ae."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from emr_hub.config import get_settings
from emr_hub.hub import Hub
from emr_hub.logs import configure_logging

if TYPE_CHECKING:
    from emr_hub.security.principal import Principal
    from emr_hub.security.scopes import ScopeSet


def _hub(*, migrate: bool = True) -> Hub:
    return Hub.from_settings(get_settings(), migrate=migrate)


def progress_bar() -> Any:
    """The progress bar of long CLI jobs (import, reindex); it vanishes when not on a terminal."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        transient=not sys.stderr.isatty(),
    )


@click.group()
def main() -> None:
    """emr_hub: FHIR R4 interchange hub for a network of hospitals."""
    from emr_hub.healthbook.push_delivery import install as install_wallet_push
    from emr_hub.referrals.enforcement import install as install_referral_rules
    from emr_hub.security import install as install_security
    from emr_hub.subscriptions import install as install_subscriptions

    configure_logging()
    install_security(get_settings())
    install_referral_rules()
    install_subscriptions(get_settings())
    install_wallet_push()


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.option(
    "--workers", default=1, show_default=True, type=int, help="Processes (PostgreSQL shape)."
)
def serve(host: str, port: int, workers: int) -> None:
    """Migrate the database, then serve the API."""
    import uvicorn

    from emr_hub.metrics.directory import prepare

    prepare(get_settings(), "serve")  # before the workers start: they write their samples there
    _check_signing_keys(_hub())
    uvicorn.run(
        "emr_hub.main:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level="info",
        log_config=None,  # keep the JSON logging set up by the CLI
        access_log=False,  # uvicorn's access log prints query strings (identifiers)
        proxy_headers=True,
    )


def _check_signing_keys(hub: Hub) -> None:
    """Refuse to start when the signing keys cannot be opened (a wrong or missing
    key-encryption key), with what to fix rather than a failure on the first request. Makes
    the first key, and seals keys stored in clear, as a side effect; closes ``hub``."""
    from emr_hub.security.keys import signing_key
    from emr_hub.security.sealing import SealingError

    try:
        signing_key(hub)
    except SealingError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        hub.close()


@main.command()
def migrate() -> None:
    """Create or upgrade the database schema."""
    hub = _hub()
    click.echo(f"database at the newest revision ({hub.db.dialect})")
    hub.close()


@main.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.pass_context
def worker(ctx: click.Context) -> None:
    """Run a Celery worker (extra arguments go to Celery)."""
    from emr_hub.tasks import run_worker

    run_worker(list(ctx.args))


@main.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.pass_context
def beat(ctx: click.Context) -> None:
    """Run Celery beat: the periodic outbox relay (extra arguments go to Celery)."""
    from emr_hub.tasks import run_beat

    run_beat(list(ctx.args))


@main.command()
@click.option(
    "--reset",
    is_flag=True,
    help="Write the demo's version over demo resources changed or deleted since.",
)
def demo(reset: bool) -> None:
    """Load the demo hospitals, their clients and patients (idempotent; keeps your edits)."""
    from emr_hub.demo import HOSPITALS, load_demo

    hub = _hub()
    try:
        loaded = load_demo(hub, reset=reset)
    finally:
        hub.close()
    for hospital in HOSPITALS:
        secret = loaded.secrets.get(hospital.client_id)
        if secret:
            click.echo(
                f"client {hospital.client_id} (Organization/{hospital.client_id}) secret: {secret}"
            )
        else:
            click.echo(
                f"client {hospital.client_id} (Organization/{hospital.client_id}) "
                "already registered"
            )
    if loaded.written:
        click.echo(f"demo resources written: {len(loaded.written)}")
    else:
        click.echo("demo resources: all already as the demo wrote them, nothing written")
    if loaded.kept:
        click.echo(
            f"kept as you left them ({len(loaded.kept)} that differ from this demo's version: "
            f"changed or deleted since, or written by an older demo): {', '.join(loaded.kept)}; "
            "`emr-hub demo --reset` writes this demo's version over them"
        )
    click.echo("get a token with: emr-hub token bach-mai")


@main.group()
def client() -> None:
    """Manage API clients (hospital systems)."""


@client.command("add")
@click.argument("client_id")
@click.option("--organization", required=True, help="Organization/ID of the client's hospital.")
@click.option(
    "--scope", "scope", default="system/*.cruds", show_default=True, help="SMART v2 scopes."
)
@click.option(
    "--jwks-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="The client's public JWK Set (JSON); it then authenticates with signed assertions.",
)
@click.option(
    "--jwks-url", default=None, help="Where the client publishes its public JWK Set (http(s))."
)
@click.option("--operator", is_flag=True, help="Operator role: sees and changes everything.")
@click.option("--break-glass", is_flag=True, help="May break the glass in an emergency.")
@click.option(
    "--replace",
    is_flag=True,
    help="Re-register an existing client: new keys or secret, scopes and organization; "
    "its tokens stop working.",
)
def client_add(
    client_id: str,
    organization: str,
    scope: str,
    jwks_file: Path | None,
    jwks_url: str | None,
    operator: bool,
    break_glass: bool,
    replace: bool,
) -> None:
    """Register a client; prints its new secret once (none for a client with keys)."""
    from emr_hub.security.clients import ClientExists, Registration, get_client, register_client
    from emr_hub.security.principal import HOSPITAL, OPERATOR_ROLE

    if jwks_file is not None and jwks_url is not None:
        raise click.UsageError("give --jwks-file or --jwks-url, not both")
    try:
        registration = Registration(
            organization=organization,
            scopes=_scopes_option(scope),
            jwks=_read_jwks_file(jwks_file) if jwks_file is not None else None,
            jwks_url=jwks_url,
            role=OPERATOR_ROLE if operator else HOSPITAL,
            break_glass=break_glass,
        )
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    hub = _hub()
    try:
        with hub.db.transaction() as session:
            secret = register_client(session, client_id, registration, replace=replace)
            registered = get_client(session, client_id)
            active = registered is not None and registered.active
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    except ClientExists as exc:
        raise click.ClickException(
            f"client {client_id} exists; re-register it with --replace"
        ) from exc
    finally:
        hub.close()
    if secret is not None:
        click.echo(secret)
    else:
        how = f"its JWKS URL {jwks_url}" if jwks_url else _kids(registration.jwks)
        verb = "re-registered" if replace else "registered"
        click.echo(f"client {client_id} {verb} with {how}; it has no secret")
    if replace:
        click.echo(f"tokens issued to {client_id} before now no longer work", err=True)
    if not active:
        click.echo(
            f"client {client_id} is disabled: enable it with emr-hub client enable {client_id}",
            err=True,
        )


@client.command("disable")
@click.argument("client_id")
def client_disable(client_id: str) -> None:
    """Disable a client: it gets no tokens, and those it has stop working at once."""
    _set_client_active(client_id, False)
    click.echo(f"client {client_id} disabled; its tokens no longer work")


@client.command("enable")
@click.argument("client_id")
def client_enable(client_id: str) -> None:
    """Enable a disabled client again (its old tokens stay invalid)."""
    _set_client_active(client_id, True)
    click.echo(f"client {client_id} enabled")


def _set_client_active(client_id: str, active: bool) -> None:
    from emr_hub.security.clients import set_client_active

    hub = _hub()
    try:
        with hub.db.transaction() as session:
            found = set_client_active(session, client_id, active)
    finally:
        hub.close()
    if not found:
        raise click.ClickException(f"no client {client_id!r}")


def _read_jwks_file(path: Path) -> dict[str, Any]:
    import orjson

    from emr_hub.security.client_keys import parse_jwks

    try:
        data = orjson.loads(path.read_bytes())
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"{path} is not JSON: {exc}") from None
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror or exc}") from None
    return parse_jwks(data)


def _kids(jwks: dict[str, Any] | None) -> str:
    kids = [str(jwk["kid"]) for jwk in (jwks or {}).get("keys", ())]
    return f"{len(kids)} public key{'s' if len(kids) != 1 else ''} ({', '.join(kids)})"


def _scopes_option(scope: str) -> ScopeSet:
    from emr_hub.security.scopes import ScopeSet

    return ScopeSet.parse(scope)


@main.command()
@click.argument("client_id", required=False)
@click.option(
    "--citizen",
    "cccd",
    default=None,
    metavar="CCCD",
    help="A citizen's token, for the person with this national ID (instead of CLIENT_ID).",
)
@click.option("--scope", default=None, help="Narrower scopes than the client's registration.")
def token(client_id: str | None, cccd: str | None, scope: str | None) -> None:
    """Print a bare access token for a registered client, or for a citizen."""
    from emr_hub.security.sealing import SealingError

    if (client_id is None) == (cccd is None):
        raise click.UsageError("give CLIENT_ID or --citizen CCCD (one of them)")
    hub = _hub()
    try:
        if client_id is not None:
            access_token = _client_token(hub, client_id, scope)
        else:
            access_token = _citizen_token(hub, str(cccd), scope)
    except SealingError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        hub.close()
    click.echo(access_token)


def _client_token(hub: Hub, client_id: str, scope: str | None) -> str:
    from emr_hub.security.clients import client_scopes, get_client
    from emr_hub.security.tokens import issue_access_token

    with hub.db.transaction() as session:
        registered = get_client(session, client_id)
    if registered is None or not registered.active:
        raise click.ClickException(
            f"no active client {client_id!r}; add it with: emr-hub client add"
        )
    allowed = client_scopes(registered)
    try:
        wanted = _scopes_option(scope) if scope else allowed
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    if "patient" in wanted.contexts or not wanted.issubset(allowed):
        raise click.ClickException(f"scope {scope!r} is wider than the client's {allowed}")
    return issue_access_token(hub, registered, wanted)[0]


def _citizen_token(hub: Hub, cccd: str, scope: str | None) -> str:
    from emr_hub.security.citizens import UnknownCitizen, citizen_person
    from emr_hub.security.tokens import CITIZEN_SCOPE, issue_citizen_token

    try:
        scopes = _scopes_option(scope or CITIZEN_SCOPE)
        if scopes.contexts != {"patient"}:
            raise ValueError("a citizen's token takes patient/ scopes only, e.g. patient/*.rs")
        with hub.db.snapshot() as session:
            person = citizen_person(session, cccd.strip())
    except (UnknownCitizen, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    return issue_citizen_token(hub, person, scopes)[0]


@main.group()
def keys() -> None:
    """The keys that sign access tokens and health cards."""


@keys.command("rotate")
def keys_rotate() -> None:
    """Make a new signing key; the old one keeps verifying until its tokens have expired."""
    from emr_hub.security.keys import rotate_signing_key
    from emr_hub.security.sealing import SealingError

    hub = _hub()
    try:
        kid, retires_at = rotate_signing_key(hub)
        refresh = hub.settings.signing_key_refresh_seconds
    except SealingError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        hub.close()
    click.echo(f"new signing key {kid}; every API process signs with it within {refresh} s")
    click.echo(f"older keys verify until {retires_at.isoformat(timespec='seconds')}, then retire")


@keys.command("list")
def keys_list() -> None:
    """List the signing keys: which one signs, which verify until when, which are retired."""
    from emr_hub.security.keys import list_keys

    hub = _hub()
    try:
        infos = list_keys(hub)
    finally:
        hub.close()
    if not infos:
        click.echo("no signing key yet (the first token or JWKS request makes one)")
    for info in infos:
        until = f" until {info.retires_at.isoformat(timespec='seconds')}" if info.retires_at else ""
        created = info.created_at.isoformat(timespec="seconds")
        click.echo(
            f"{info.kid}  {info.state}{until if info.state != 'retired' else ''}  created {created}"
        )


@keys.command("rotate-health-card")
def keys_rotate_health_card() -> None:
    """Make a new health-card key; the older ones stay published, so their cards verify."""
    from emr_hub.healthbook.card_keys import rotate_card_key
    from emr_hub.security.sealing import SealingError

    hub = _hub()
    try:
        kid, signs_from = rotate_card_key(hub)
    except SealingError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        hub.close()
    click.echo(
        f"new health-card key {kid}, published now; it signs cards from {signs_from:%H:%M:%S}"
    )
    click.echo("older health-card keys stay in the JWKS: the cards they signed keep verifying")


@keys.command("list-health-card")
def keys_list_health_card() -> None:
    """List the health-card keys: the one that signs, and the rotated ones still published."""
    from emr_hub.healthbook.card_keys import list_card_keys

    hub = _hub()
    try:
        infos = list_card_keys(hub)
    finally:
        hub.close()
    if not infos:
        click.echo("no health-card key yet (the first card or JWKS request makes one)")
    for info in infos:
        click.echo(
            f"{info.kid}  {info.state}  created {info.created_at.isoformat(timespec='seconds')}"
        )


@main.command("import")
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
def import_command(paths: tuple[Path, ...]) -> None:
    """Bulk load Bundle files (one transaction each) and NDJSON files."""

    from emr_hub.importer import ImportReport, count_items, expand, import_file

    files = expand(list(paths))
    hub = _hub()
    report = ImportReport()
    started = time.perf_counter()
    try:
        total = sum(count_items(p) for p in files)
        with progress_bar() as progress:
            task = progress.add_task("importing", total=total)
            for path in files:
                progress.update(task, description=path.name[:32])
                import_file(hub, path, report, lambda n: progress.advance(task, n))
    finally:
        hub.close()
    elapsed = time.perf_counter() - started
    for failure in report.failures:
        click.echo(f"failed: {failure}", err=True)
    rate = report.resources / elapsed if elapsed else 0.0
    click.echo(
        f"imported {report.resources} resources from {report.files} files in {elapsed:.1f} s "
        f"({rate:.0f}/s); {len(report.failures)} failed"
    )
    if report.failures:
        sys.exit(1)


@main.command()
@click.option(
    "--type",
    "types",
    multiple=True,
    metavar="TYPE",
    help="Only resources of this type (repeatable); default every type.",
)
@click.option(
    "--batch",
    default=500,
    show_default=True,
    type=click.IntRange(min=1),
    help="Resources per transaction.",
)
def reindex(types: tuple[str, ...], batch: int) -> None:
    """Rebuild the search index of every live resource from its stored body."""

    from emr_hub.fhir.search.reindex import count_resources
    from emr_hub.fhir.search.reindex import reindex as rebuild
    from emr_hub.fhir.validation import R4_RESOURCE_TYPES

    unknown = sorted(set(types) - R4_RESOURCE_TYPES)
    if unknown:
        raise click.BadParameter(
            f"not R4 resource types: {', '.join(unknown)}", param_hint="'--type'"
        )
    wanted = list(types) or None
    hub = _hub()
    started = time.perf_counter()
    try:
        total = count_resources(hub, wanted)
        with progress_bar() as progress:
            task = progress.add_task("reindexing", total=total)
            done = rebuild(
                hub,
                resource_types=wanted,
                batch=batch,
                progress=lambda n: progress.advance(task, n),
            )
    finally:
        hub.close()
    elapsed = time.perf_counter() - started
    rate = done / elapsed if elapsed else 0.0
    click.echo(f"reindexed {done} resources in {elapsed:.1f} s ({rate:.0f}/s)")


@main.group()
def xml130() -> None:
    """Insurance XML tables 13 (referral letters) and 14 (re-exam slips)."""


@xml130.command("import")
@click.argument(
    "paths", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
@click.option(
    "--as",
    "client_id",
    default=None,
    metavar="CLIENT_ID",
    help="Import as this API client's hospital (the referral rules check it); "
    "default the operator.",
)
def xml130_import(paths: tuple[Path, ...], client_id: str | None) -> None:
    """Import GIAMDINHHS envelopes, each in one transaction; print what each one wrote."""
    from emr_hub.errors import FhirError
    from emr_hub.fhir.routes import in_transaction
    from emr_hub.referrals.xml_exchange import import_tables, read_envelope

    hub = _hub()
    failed = 0
    try:
        principal = _principal_of(hub, client_id)
        for path in paths:
            try:
                tables = read_envelope(path.read_bytes())
                written = in_transaction(
                    hub, principal, lambda store, t=tables: import_tables(store, principal, t)
                )
            except FhirError as error:
                failed += 1
                click.echo(f"{path}: refused ({error.status})", err=True)
                for issue in error.issues:
                    where = f" [{', '.join(issue.expression)}]" if issue.expression else ""
                    click.echo(f"  {issue.diagnostics}{where}", err=True)
                continue
            click.echo(f"{path}:")
            for item in written:
                click.echo(f"  {item.status} {item.outcome:<9} {item.location}")
    finally:
        hub.close()
    if failed:
        click.echo(f"{failed} of {len(paths)} files refused; nothing of them was stored", err=True)
        sys.exit(1)


@xml130.command("export")
@click.argument("reference", metavar="ServiceRequest/ID|Appointment/ID")
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    default=None,
    help="Write the envelope to this file instead of standard output.",
)
def xml130_export(reference: str, output: Path | None) -> None:
    """Write a referral letter (table 13) or a re-exam slip (table 14) as an envelope."""
    from emr_hub.errors import FhirError
    from emr_hub.fhir.routes import in_snapshot
    from emr_hub.referrals.xml_exchange import export_reexam, export_referral
    from emr_hub.security.principal import OPERATOR

    resource_type, _, resource_id = reference.partition("/")
    exporters = {"ServiceRequest": export_referral, "Appointment": export_reexam}
    exporter = exporters.get(resource_type)
    if exporter is None or not resource_id:
        raise click.BadParameter(
            "give ServiceRequest/ID or Appointment/ID", param_hint="'REFERENCE'"
        )
    hub = _hub()
    try:
        xml = in_snapshot(hub, OPERATOR, lambda store: exporter(store, OPERATOR, resource_id))
    except FhirError as error:
        raise click.ClickException(f"{reference}: {error} ({error.status})") from error
    finally:
        hub.close()
    if output is None:
        click.get_binary_stream("stdout").write(xml)
    else:
        output.write_bytes(xml)
        click.echo(f"wrote {output}", err=True)


@main.group()
def audit() -> None:
    """The audit trail."""


@audit.command("verify")
def audit_verify() -> None:
    """Check the audit trail's hash chain from its first record; report the first broken link
    (exit 1) or how many records are intact."""
    from emr_hub.security.audit.log import verify

    hub = _hub()
    try:
        with progress_bar() as progress:
            task = progress.add_task("verifying", total=None)
            result = verify(hub.db, lambda n: progress.advance(task, n))
    finally:
        hub.close()
    if not result.intact:
        click.echo(
            f"audit chain broken at record {result.broken_at}: {result.problem} "
            f"({result.checked} records before it are intact)",
            err=True,
        )
        sys.exit(1)
    click.echo(
        f"audit chain intact: {result.checked} records, last {result.last_seq} "
        f"(hash {result.last_hash[:16]}…)"
    )


def _principal_of(hub: Hub, client_id: str | None) -> Principal:
    """The operator, or the principal of a registered, active client with its full scopes."""
    from emr_hub.security.clients import client_scopes, get_client
    from emr_hub.security.principal import OPERATOR, Principal

    if client_id is None:
        return OPERATOR
    with hub.db.snapshot() as session:
        registered = get_client(session, client_id)
        if registered is None or not registered.active:
            raise click.ClickException(f"no active client {client_id!r}")
        return Principal(
            client_id,
            registered.organization,
            client_scopes(registered),
            "cli",
            kind=registered.role,
            break_glass_allowed=registered.break_glass,
        )


@main.command("dicom-scp")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=11112, show_default=True, type=int)
@click.option("--ae-title", default="EMRHUB", show_default=True)
def dicom_scp(host: str, port: int, ae_title: str) -> None:
    """Receive DICOM over C-STORE (and answer C-ECHO) from the registered AE titles."""
    from emr_hub.imaging.dimse import Receiver

    hub = _hub()
    click.echo(f"DICOM receiver {ae_title} listening on {host}:{port}")
    try:
        Receiver(hub, ae_title).serve(host, port)
    finally:
        hub.close()


@main.group("dicom-ae")
def dicom_ae() -> None:
    """The calling AE titles the C-STORE receiver accepts."""


@dicom_ae.command("add")
@click.argument("ae_title")
@click.option("--organization", required=True, help="Organization/ID whose images it sends.")
def dicom_ae_add(ae_title: str, organization: str) -> None:
    """Accept AE_TITLE as a sender for the hospital; its images are written as that hospital."""
    from emr_hub.imaging.dimse import register_title

    hub = _hub()
    try:
        register_title(hub, ae_title, organization)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        hub.close()
    click.echo(f"AE title {ae_title.strip()} sends for {organization}")
