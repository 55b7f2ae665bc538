"""Where features built on the FHIR core join its writes.

The core knows nothing of referrals, subscriptions or imaging; those packages register hooks:

* **write hooks**, per resource type: every create, update and patch (single requests, bundle
  entries, imports) calls them after validation and before storing. A hook refuses with a
  :class:`~emr_hub.errors.FhirError` or returns the resource to store (possibly completed).
* **delete hooks**, per resource type: every delete calls them with the live version first;
  they refuse with a :class:`~emr_hub.errors.FhirError`.
* **editors**, per resource type: the Organizations, besides its author, that may change a
  stored resource (the access policy asks them before letting a hospital change what another
  wrote: the referral workflow's two hospitals on a referral Task).
* **reindex hooks**: called by ``emr-hub reindex`` with each batch of live resources it rebuilt.
* **change hooks**: called once per transaction that changed something, with every version it
  wrote (creates, updates that changed content, deletions), after the work and before the
  commit, in the same transaction, in the order of their ``stage`` (lower first: the access
  grants a write makes are in place before Subscriptions are matched against it). What they
  write commits or rolls back with the changes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from emr_hub.fhir.store import FhirStore, Stored
    from emr_hub.security.principal import Principal

WriteHook = Callable[["FhirStore", "Principal", "Stored | None", dict[str, Any]], dict[str, Any]]
DeleteHook = Callable[["FhirStore", "Principal", "Stored"], None]
Editors = Callable[[dict[str, Any]], "frozenset[str]"]
ChangeHook = Callable[["FhirStore", "list[Stored]"], None]
_HOOKS: dict[str, list[WriteHook]] = {}
_DELETE_HOOKS: dict[str, list[DeleteHook]] = {}
_EDITORS: dict[str, list[Editors]] = {}
_CHANGE_HOOKS: list[tuple[int, ChangeHook]] = []
_REINDEX_HOOKS: list[ChangeHook] = []


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


def register_delete(resource_type: str, hook: DeleteHook) -> None:
    """Add ``hook`` for deletions of ``resource_type`` (once)."""
    hooks = _DELETE_HOOKS.setdefault(resource_type, [])
    if hook not in hooks:
        hooks.append(hook)


def before_delete(store: FhirStore, principal: Principal, current: Stored) -> None:
    for hook in _DELETE_HOOKS.get(current.resource_type, ()):
        hook(store, principal, current)


def register_editors(resource_type: str, editors: Editors) -> None:
    """Add a source of the Organizations that may change a ``resource_type`` (once)."""
    sources = _EDITORS.setdefault(resource_type, [])
    if editors not in sources:
        sources.append(editors)


def editors(resource_type: str, content: dict[str, Any]) -> frozenset[str]:
    """The Organizations besides its author that may change this stored resource."""
    found: frozenset[str] = frozenset()
    for source in _EDITORS.get(resource_type, ()):
        found |= source(content)
    return found


def on_changes(hook: ChangeHook, *, stage: int = 100) -> None:
    """Add a change hook (once: registering it again is a no-op); lower stages run first."""
    if all(existing is not hook for _, existing in _CHANGE_HOOKS):
        _CHANGE_HOOKS.append((stage, hook))
        _CHANGE_HOOKS.sort(key=lambda item: item[0])


def on_reindex(hook: ChangeHook) -> None:
    """Add a hook that ``emr-hub reindex`` runs on each batch of live resources it rebuilds
    (what a feature derives from resources, rebuilt with the index: the access grants)."""
    if hook not in _REINDEX_HOOKS:
        _REINDEX_HOOKS.append(hook)


def after_reindex(store: FhirStore, batch: list[Stored]) -> None:
    for hook in _REINDEX_HOOKS:
        hook(store, batch)


def has_change_hooks() -> bool:
    return bool(_CHANGE_HOOKS)


def after_changes(store: FhirStore, changes: list[Stored]) -> None:
    for _, hook in _CHANGE_HOOKS:
        hook(store, changes)
