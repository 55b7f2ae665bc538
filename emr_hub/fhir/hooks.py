"""Checks that features built on the FHIR core run before a write is stored.

The core knows nothing of referrals or imaging; those packages register a hook for the
resource types they govern, and every create, update and patch (single requests, bundle
entries, imports) calls it after validation and before storing. A hook refuses with a
:class:`~emr_hub.errors.FhirError` or returns the resource to store (possibly completed).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from emr_hub.fhir.store import FhirStore, Stored
    from emr_hub.security.principal import Principal

WriteHook = Callable[["FhirStore", "Principal", "Stored | None", dict[str, Any]], dict[str, Any]]
_HOOKS: dict[str, list[WriteHook]] = {}


def register(resource_type: str, hook: WriteHook) -> None:
    """Add ``hook`` for writes of ``resource_type`` (once: registering it again is a no-op)."""
    hooks = _HOOKS.setdefault(resource_type, [])
    if hook not in hooks:
        hooks.append(hook)


def has_hooks(resource_type: str) -> bool:
    return bool(_HOOKS.get(resource_type))


def before_write(
    store: FhirStore, principal: Principal, current: Stored | None, resource: dict[str, Any]
) -> dict[str, Any]:
    """Run the hooks of the resource's type; ``current`` is the live version an update replaces."""
    for hook in _HOOKS.get(resource["resourceType"], ()):
        resource = hook(store, principal, current, resource)
    return resource
