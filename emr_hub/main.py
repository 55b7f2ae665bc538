"""The ASGI application: routers, error rendering, health and readiness."""

from __future__ import annotations

import gc
import logging
import sqlite3
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import anyio.to_thread
import psycopg
import psycopg.errors
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from sqlalchemy.exc import IntegrityError, OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from emr_hub import __version__
from emr_hub.config import Settings, get_settings
from emr_hub.errors import FhirError, Issue, operation_outcome
from emr_hub.export import install as install_export
from emr_hub.export.routes import router as export_router
from emr_hub.fhir.direct_reads import install as install_direct_reads
from emr_hub.fhir.http import FHIR_JSON, dump
from emr_hub.fhir.routes import router as fhir_router
from emr_hub.fhir.unstorable import NulGuard
from emr_hub.healthbook import install as install_healthbook
from emr_hub.hub import Hub
from emr_hub.imaging import install as install_imaging
from emr_hub.logs import AccessLog
from emr_hub.metrics.app import install as install_metrics
from emr_hub.metrics.app import start_process_metrics
from emr_hub.referrals.enforcement import install as install_referral_rules
from emr_hub.referrals.routes import router as referral_router
from emr_hub.security import install as install_security
from emr_hub.security.audit.middleware import AuditMiddleware
from emr_hub.security.audit.routes import router as audit_router
from emr_hub.security.audit.writer import LoopAuditWriter
from emr_hub.security.routes import router as auth_router
from emr_hub.subscriptions import install as install_subscriptions
from emr_hub.subscriptions.routes import router as subscription_router
from emr_hub.tasks import configure_celery, in_process, start_relay_thread
from storage.async_db import AsyncConnections
from storage.objects import ObjectStoreUnavailable

log = logging.getLogger("emr_hub")

CLIENT_CLOSED = 499
_HTTP_CODES = {404: "not-found", 405: "not-supported", 406: "not-supported", 415: "not-supported"}


def create_app(hub: Hub | None = None, settings: Settings | None = None) -> FastAPI:
    """Build the app; with no ``hub`` given, the lifespan builds one from the settings.

    The schema is migrated by ``emr-hub serve`` before its workers start (or ``emr-hub
    migrate``), not here, so several API processes never race on a migration.
    """

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        owned = hub is None
        app.state.hub = hub or Hub.from_settings(settings)
        # The thread pool runs the blocking work; it never holds more requests than the
        # database pool has connections for (see Hub.from_settings).
        limiter = anyio.to_thread.current_default_thread_limiter()
        limiter.total_tokens = app.state.hub.settings.worker_threads
        # Hundreds of thousands of long-lived objects (the FHIR models, the search
        # registry ...) exist by now; a full collection walks them all (~200 ms here),
        # stalling every request in flight. Frozen, the collector leaves them alone.
        gc.collect()
        gc.freeze()
        stop_relay = start_background_work(app.state.hub)
        stop_metrics = start_process_metrics(app.state.hub)
        # The event loop's own connections: the direct reads' and the audit group writer's.
        app.state.async_db = AsyncConnections.for_database(app.state.hub.db)
        app.state.audit_writer = LoopAuditWriter.on(app.state.async_db)
        try:
            yield
        finally:
            if app.state.audit_writer is not None:
                await app.state.audit_writer.close()
            app.state.audit_writer = None
            if app.state.async_db is not None:
                await app.state.async_db.close()
            app.state.async_db = None
            stop_relay()
            stop_metrics()
            if owned:
                app.state.hub.close()

    configured = hub.settings if hub else settings or get_settings()
    install_security(configured)  # first: the access grants precede the Subscription matching
    install_referral_rules()
    install_subscriptions(configured)
    install_export()
    app = FastAPI(
        title="emr_hub", version=__version__, lifespan=lifespan, docs_url="/docs", redoc_url=None
    )
    if hub is not None:
        app.state.hub = hub
    app.include_router(auth_router)
    install_operations_routes(app)
    app.include_router(referral_router)  # before the FHIR router: see referrals.routes
    app.include_router(subscription_router)
    app.include_router(audit_router)  # before the FHIR router: AuditEvent is not in the store
    app.include_router(export_router)  # before the FHIR router: $export and _export paths
    install_healthbook(app)  # before the FHIR router: Patient/{id}/$summary ...
    install_imaging(app)  # DICOMweb at /dicomweb
    app.include_router(fhir_router)
    install_direct_reads(app)  # after every route: it takes only the FHIR read's paths
    install_error_handlers(app)
    app.add_middleware(AccessLog)
    app.add_middleware(NulGuard)  # inside the audit: its refusals are audited
    app.add_middleware(AuditMiddleware)
    install_metrics(app)  # last: its middleware is the outermost, timing all the others
    return app


def start_background_work(hub: Hub) -> Callable[[], None]:
    """Point Celery at this hub; with no broker, a thread of this process relays the outbox."""
    configure_celery(hub.settings, hub=hub)
    if in_process():
        return start_relay_thread(hub)
    return lambda: None


def outcome_response(
    status: int, issues: list[Issue], headers: dict[str, str] | None = None
) -> Response:
    return Response(
        dump(operation_outcome(issues)), status_code=status, media_type=FHIR_JSON, headers=headers
    )


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(FhirError)
    async def fhir_error(_: Request, error: FhirError) -> Response:
        return outcome_response(error.status, error.issues, error.headers)

    @app.exception_handler(RequestValidationError)
    async def request_invalid(_: Request, error: RequestValidationError) -> Response:
        issues = [
            Issue("invalid", str(item.get("msg")), (".".join(str(p) for p in item.get("loc", ())),))
            for item in error.errors()[:10]
        ]
        return outcome_response(400, issues)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, error: StarletteHTTPException) -> Response:
        code = _HTTP_CODES.get(error.status_code, "processing")
        return outcome_response(
            error.status_code, [Issue(code, str(error.detail))], dict(error.headers or {})
        )

    @app.exception_handler(IntegrityError)
    async def integrity_error(_: Request, error: IntegrityError) -> Response:
        log.warning("write conflict: %s", type(error.orig).__name__)
        return outcome_response(
            409, [Issue("conflict", "A concurrent write touched the same resource; retry")]
        )

    @app.exception_handler(OperationalError)
    async def database_unavailable(request: Request, error: OperationalError) -> Response:
        if took_too_long(error.orig):
            log.warning("statement stopped at the time limit: %s", type(error.orig).__name__)
            seconds = request.app.state.hub.settings.statement_timeout_seconds
            message = (
                f"The request needed longer than the {seconds:g} s the hub gives one database "
                "statement: narrow it (a more selective search, a smaller _count)"
            )
            return outcome_response(400, [Issue("too-costly", message)])
        log.error("database error: %s", type(error.orig).__name__)
        if beyond_database_limits(error.orig):
            message = (
                "The request is beyond what the database takes in one statement (too many "
                "values, parameters or terms): narrow or split it"
            )
            return outcome_response(400, [Issue("too-costly", message)])
        return outcome_response(
            503,
            [Issue("transient", "The database is unavailable or busy; retry")],
            {"Retry-After": "5"},
        )

    @app.exception_handler(ObjectStoreUnavailable)
    async def object_store_unavailable(_: Request, error: ObjectStoreUnavailable) -> Response:
        log.error("object store unavailable: %s", error)
        return outcome_response(
            503,
            [Issue("transient", "The object store is unavailable; retry")],
            {"Retry-After": "5"},
        )

    @app.exception_handler(ClientDisconnect)
    async def client_gone(_: Request, __: ClientDisconnect) -> Response:
        # Nobody is left to answer; 499 (the status nginx logs for it) goes to the access
        # log and the audit trail, not to an error log.
        return Response(status_code=CLIENT_CLOSED)

    @app.exception_handler(Exception)
    async def unexpected(_: Request, error: Exception) -> Response:
        log.exception("unhandled error")
        return outcome_response(500, [Issue("exception", "Internal error; it has been logged")])


_SQLITE_LIMITS = (
    "expression tree is too large",
    "too many sql variables",
    "parser stack overflow",
    "too many terms in compound select",
    "string or blob too big",
    "like or glob pattern too complex",
)


def took_too_long(error: BaseException | None) -> bool:
    """A statement stopped at the hub's time limit (PostgreSQL's statement_timeout, SQLite's
    work limit): the same request would meet it again, so a 400, not a 503."""
    if isinstance(error, psycopg.errors.QueryCanceled):
        return True
    return isinstance(error, sqlite3.OperationalError) and str(error) == "interrupted"


def beyond_database_limits(error: BaseException | None) -> bool:
    """A database error that the same request meets every time (a limit of the statement's
    size), as opposed to an outage or a lock: a 400, not a 503 that invites a retry."""
    if isinstance(error, psycopg.Error):  # SQLSTATE class 54: program limit exceeded
        return (error.sqlstate or "").startswith("54")
    if isinstance(error, sqlite3.OperationalError):
        message = str(error).lower()
        return any(message.startswith(limit) for limit in _SQLITE_LIMITS)
    return False


def install_operations_routes(app: FastAPI) -> None:
    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> JSONResponse:
        return JSONResponse({"status": "ok", "version": __version__})

    @app.get("/readyz", include_in_schema=False)
    def readyz(request: Request) -> JSONResponse:
        hub: Hub = request.app.state.hub
        checks = {"database": hub.db.ping(), "objects": _objects_ready(hub)}
        ready = all(checks.values())
        return JSONResponse(
            {"status": "ready" if ready else "not ready", "checks": checks},
            status_code=200 if ready else 503,
        )


def _objects_ready(hub: Hub) -> bool:
    try:
        return hub.objects.ping()
    except Exception:  # noqa: BLE001 - readiness reports any failure as not ready
        return False
