"""Where features built on the FHIR core join its writes.

The core knows nothing of referrals, subscriptions or imaging; those packages register hooks:

* **write hooks**, per resource type: every create, update and patch (single requests, bundle
  entries, imports) calls them after validation and before storing. A hook refuses with a
  :class:`~emr_hub.errors.FhirError` or returns the resource to store (possibly completed).
* **change hooks**: called once per transaction that changed something, with every version it
  wrote (creates, updates that changed content, deletions), after the work and before the
  commit, in the same transaction. What they write commits or rolls back with the changes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from emr_hub.fhir.store import FhirStore, Stored
    from emr_hub.security.principal import Principal

WriteHook = Callable[["FhirStore", "Principal", "Stored | None", dict[str, Any]], dict[str, Any]]
ChangeHook = Callable[["FhirStore", "list[Stored]"], None]
_HOOKS: dict[str, list[WriteHook]] = {}
_CHANGE_HOOKS: list[ChangeHook] = []


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


def on_changes(hook: ChangeHook) -> None:
    """Add a change hook (once: registering it again is a no-op)."""
    if hook not in _CHANGE_HOOKS:
        _CHANGE_HOOKS.append(hook)


def has_change_hooks() -> bool:
    return bool(_CHANGE_HOOKS)


def after_changes(store: FhirStore, changes: list[Stored]) -> None:
    for hook in _CHANGE_HOOKS:
        hook(store, changes)
