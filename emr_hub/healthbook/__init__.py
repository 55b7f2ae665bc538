"""The citizen's health book: her summary (``Patient/$summary``, an International Patient
Summary), and what is built on it.

* :mod:`.sections` says which records go into which section; :mod:`.narrative` writes the
  sections' Vietnamese narratives; :mod:`.summary` assembles the ``document`` Bundle;
* :mod:`.routes` is the HTTP side;
* :mod:`.links` shares the health book through SMART Health Links (files encrypted by
  :mod:`.jwe`), over :mod:`.link_routes`.

Health cards: :mod:`.card_keys` (their signing key), :mod:`.credentials` (the signed card),
:mod:`.qr` (its QR code), :mod:`.card_routes` (``$health-cards-issue`` and the downloads).

The citizen's page, ``/health-book``: :mod:`.page` (its routes; :mod:`.page_links` for links
to a doctor), :mod:`.page_view` (what it shows), :mod:`.page_render` (templates, audit),
:mod:`.consent_settings` (sharing as her Consents), :mod:`.signin` (OpenID Connect) and
:mod:`.session` (cookie, server-side sessions, CSRF).

Everything is read through the FHIR store with the caller's principal, so the access policy
and the audit trail apply as to any other read.
"""

from __future__ import annotations

from fastapi import FastAPI

from emr_hub.fhir import operations

IPS_SUMMARY = "http://hl7.org/fhir/uv/ips/OperationDefinition/summary"
HEALTH_CARDS_ISSUE = (
    "http://hl7.org/fhir/uv/smart-health-cards-and-links/OperationDefinition/"
    "patient-i-health-cards-issue"
)


def install(app: FastAPI) -> None:
    """Declare the operations and add the routes (before the FHIR router, whose
    ``/Patient/{id}/{type}`` route would otherwise take them)."""
    install_wallet_push(app)
    from fastapi.staticfiles import StaticFiles

    from emr_hub.healthbook.card_keys import card_public_jwks
    from emr_hub.healthbook.card_routes import router as card_router
    from emr_hub.healthbook.link_routes import router as link_router
    from emr_hub.healthbook.page import router as page_router
    from emr_hub.healthbook.page_render import STATIC_DIR
    from emr_hub.healthbook.routes import router
    from emr_hub.security.keys import publish_in_jwks

    operations.declare(
        "Patient",
        "summary",
        IPS_SUMMARY,
        "The patient's health book as an International Patient Summary document Bundle "
        "(by id, or ?identifier=<system>|<value>), from every hospital's records the caller "
        "may see; sections in Vietnamese, with the health book's referral letters, re-exams "
        "and recent visits.",
    )
    operations.declare(
        "Patient",
        "health-cards-issue",
        HEALTH_CARDS_ISSUE,
        "SMART Health Cards of the patient's health book (POST Parameters: credentialType, "
        "includeIdentityClaim, _since): the whole book, and a compact card (patient, "
        "allergies, active problems, immunizations) that fits one QR code.",
    )
    operations.declare(
        "Patient",
        "health-card",
        "urn:emr-hub:operation:health-card",
        "The health card as a .smart-health-card file (?card=full, the default, or compact).",
    )
    operations.declare(
        "Patient",
        "health-card-qr",
        "urn:emr-hub:operation:health-card-qr",
        "The compact health card's shc:/ QR code (?format=png, the default, or svg).",
    )
    publish_in_jwks("health-cards", card_public_jwks)
    app.include_router(card_router)
    app.include_router(router)
    app.include_router(link_router)
    app.include_router(page_router)
    app.mount("/health-book/static", StaticFiles(directory=STATIC_DIR), name="health-book-static")


def install_wallet_push(app: FastAPI) -> None:
    """The push to the identity wallet: the change hook that owes pushes (after the access
    grants), its outbox handler, ``$wallet-log``, and its gauges in /metrics."""
    from emr_hub.healthbook import metrics, push_delivery
    from emr_hub.healthbook.push_routes import router

    push_delivery.install()
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
