"""The citizen's health book: her summary (``Patient/$summary``, an International Patient
Summary), and what is built on it.

* :mod:`.sections` says which records go into which section; :mod:`.narrative` writes the
  sections' Vietnamese narratives; :mod:`.summary` assembles the ``document`` Bundle;
* :mod:`.routes` is the HTTP side;
* :mod:`.links` shares the health book through SMART Health Links (files encrypted by
  :mod:`.jwe`), over :mod:`.link_routes`.

Everything is read through the FHIR store with the caller's principal, so the access policy
and the audit trail apply as to any other read.
"""

from __future__ import annotations

from fastapi import FastAPI

from emr_hub.fhir import operations

IPS_SUMMARY = "http://hl7.org/fhir/uv/ips/OperationDefinition/summary"


def install(app: FastAPI) -> None:
    """Declare the operations and add the routes (before the FHIR router, whose
    ``/Patient/{id}/{type}`` route would otherwise take them)."""
    install_wallet_push(app)
    from emr_hub.healthbook.link_routes import router as link_router
    from emr_hub.healthbook.routes import router

    operations.declare(
        "Patient",
        "summary",
        IPS_SUMMARY,
        "The patient's health book as an International Patient Summary document Bundle "
        "(by id, or ?identifier=<system>|<value>), from every hospital's records the caller "
        "may see; sections in Vietnamese, with the health book's referral letters, re-exams "
        "and recent visits.",
    )
    app.include_router(router)
    app.include_router(link_router)
    from fastapi.staticfiles import StaticFiles

    from emr_hub.healthbook.page import STATIC_DIR
    from emr_hub.healthbook.page import router as page_router

    app.include_router(page_router)
    app.mount("/health-book/static", StaticFiles(directory=STATIC_DIR), name="health-book-static")


def install_wallet_push(app: FastAPI) -> None:
    """The push to the identity wallet: the change hook that owes pushes (after the access
    grants), its outbox handler, ``$wallet-log``, and its gauges in /metrics."""
    from emr_hub.fhir import hooks
    from emr_hub.healthbook import metrics, push_delivery  # noqa: F401 - registers the handler
    from emr_hub.healthbook.push import owe_pushes
    from emr_hub.healthbook.push_routes import router

    hooks.on_changes(owe_pushes, stage=150)
    operations.declare(
        "Patient",
        "wallet-log",
        "urn:emr-hub:operation:wallet-log",
        "The pushes of the patient's health book to the identity wallet, newest first: when "
        "each was owed, sent and answered, its status, digest and attempts (the citizen "
        "herself and the operator).",
    )
    metrics.install()
    app.include_router(router)
