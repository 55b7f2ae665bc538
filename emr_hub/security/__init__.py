"""Who may see what: OAuth 2.0 tokens and SMART v2 scopes (principals of hospitals, the
operator and citizens), the access policy, consent, break-the-glass and the audit trail.

Routers protect themselves with :data:`PrincipalDep` and call ``principal.require(type, "r")``;
the FHIR store of a request applies the access policy (:mod:`emr_hub.security.access`).

:func:`install` registers what the FHIR core must call on every write: the access grants kept
in step with the records that make them (before any other change hook, so the Subscription
matching sees them), the checks of privacy Consents and of the directory.
"""

from __future__ import annotations

from emr_hub.config import Settings
from emr_hub.security.principal import Principal, PrincipalDep
from emr_hub.security.scopes import ScopeSet

__all__ = ["Principal", "PrincipalDep", "ScopeSet", "install"]


def install(settings: Settings) -> None:
    from emr_hub.fhir import hooks
    from emr_hub.security import access, consent, directory, grants

    access.configure(settings)
    grants.install()
    consent.install()
    directory.install()
    hooks.on_changes(grants.maintain_grants, stage=10)
    hooks.on_reindex(grants.maintain_grants)
