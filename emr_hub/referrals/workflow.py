"""The referral Task state machine: which status changes are allowed, by whom, with what.

A referral is a ServiceRequest (the letter) and a Task whose ``focus`` is that letter,
``requester`` the sending hospital and ``owner`` the receiving one. The receiving hospital
moves the Task along; the sending one may withdraw it. Status changes arrive as a PUT or a
PATCH of the Task: the service layer applies the patch, then calls :func:`check_transition`
with the stored and the resulting Task before it stores anything, so a refusal leaves the
stored Task unchanged. Pure: no database, no HTTP.

=======================================  ==================  ===========================
from                                     to                  who (the hospital of ...)
=======================================  ==================  ===========================
requested                                accepted, rejected  ``owner``
requested                                cancelled           ``requester``
accepted                                 in-progress         ``owner``
accepted                                 cancelled           ``requester``
in-progress                              completed, failed   ``owner``
rejected, cancelled, completed, failed   (final)             nobody
=======================================  ==================  ===========================

Refusals:

* **409** (``business-rule``, ``Task.status``): a change the table has no row for (requested →
  completed, rejected → accepted, anything out of a final status, a status outside the
  referral workflow such as ``on-hold``), or a stored Task whose status the workflow does not
  manage.
* **403** (``forbidden``, ``Task.owner`` / ``Task.requester``): the caller is not the hospital the
  row names. 403 rather than 422: the request is well formed, the caller lacks the right. Failing
  the referral (in-progress → failed) is the owner's, like completing it.
* **422** (``business-rule``), all problems in one OperationOutcome: ``rejected`` without a
  ``statusReason`` (text or a coding); ``completed`` without an ``output`` whose
  ``valueReference`` points to one of :data:`SUMMARY_TYPES` (the returned discharge or consult
  summary: a DocumentReference, a Composition or a DiagnosticReport; an Encounter is where the
  care happened, not a summary, and may be an extra output); a change to an element that is
  fixed for the Task's life (:data:`IMMUTABLE`: ``focus``, ``for``, ``requester``, ``owner``,
  ``intent``), with that element as the expression. Sending to another hospital is a cancel
  and a new Task, never an edit of ``owner``. References are compared by target (relative or
  absolute, with or without ``_history``, ignoring ``display``).

Updates that keep the status (decided here):

* in a live status (requested, accepted, in-progress) they are allowed, so that
  ``businessStatus`` (free text and codes, never checked), notes and interim outputs can be
  updated and an identical retry of a transition succeeds; only the owner's or the requester's
  hospital may make them (403 otherwise) and the immutable elements still may not change (422);
* in a final status only an exact repeat (equal apart from ``meta`` and ``text``) is accepted,
  so that a retried request is harmless; any other change is a 409.

A new Task goes through :func:`check_creation`: it starts ``requested``, names an owner, and is
created by the requester's hospital.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from enum import StrEnum
from typing import Any, Final

from emr_hub.errors import FhirError, Issue


class Role(StrEnum):
    """Which hospital of the Task may make a change: the Task element naming it."""

    OWNER = "owner"
    REQUESTER = "requester"


INITIAL_STATUS: Final = "requested"

TRANSITIONS: Final[Mapping[str, frozenset[str]]] = {
    "requested": frozenset({"accepted", "rejected", "cancelled"}),
    "accepted": frozenset({"in-progress", "cancelled"}),
    "in-progress": frozenset({"completed", "failed"}),
    "rejected": frozenset(),
    "cancelled": frozenset(),
    "completed": frozenset(),
    "failed": frozenset(),
}
"""Status → the statuses it may move to. A status with none is final."""

FINAL: Final = frozenset(status for status, targets in TRANSITIONS.items() if not targets)

ACTOR: Final[Mapping[str, Role]] = {
    "accepted": Role.OWNER,
    "rejected": Role.OWNER,
    "in-progress": Role.OWNER,
    "completed": Role.OWNER,
    "failed": Role.OWNER,
    "cancelled": Role.REQUESTER,
}
"""Target status → whose hospital may move the Task there (whatever the status before)."""

IMMUTABLE: Final = ("focus", "for", "requester", "owner", "intent")
"""Task elements fixed from creation: a change is refused with the element as expression."""

SUMMARY_TYPES: Final = frozenset({"DocumentReference", "Composition", "DiagnosticReport"})
"""Resource types a completed Task's ``output.valueReference`` may point to."""

HospitalOf = Callable[[Mapping[str, Any]], str | None]
"""Reference (Task.owner / Task.requester) → ``Organization/<id>`` of its hospital, or None."""

_LITERAL = re.compile(r"(?:^|/)([A-Z][A-Za-z]+)/([A-Za-z0-9\-.]{1,64})(?:/_history/[^/]+)?$")


def _target(reference: str) -> tuple[str, str] | None:
    """``(type, id)`` of a literal reference, relative or absolute, ignoring ``_history``."""
    found = _LITERAL.search(reference.strip())
    return (found[1], found[2]) if found else None


def organization_of(reference: Mapping[str, Any]) -> str | None:
    """The default :data:`HospitalOf`: ``Organization/<id>`` when the reference points to an
    Organization; None for anything else (a PractitionerRole needs a lookup the service layer
    can supply as ``hospital_of``)."""
    text = reference.get("reference") if isinstance(reference, Mapping) else None
    target = _target(text) if isinstance(text, str) else None
    if target is None or target[0] != "Organization":
        return None
    return f"Organization/{target[1]}"


def _same_org(left: str | None, right: str) -> bool:
    if left is None:
        return False
    a, b = _target(left), _target(right)
    return a == b if a is not None and b is not None else left == right


def _comparable(value: Any) -> Any:
    """An element as compared for immutability: a Reference by its target, without display."""
    if isinstance(value, Mapping):
        out = {key: item for key, item in value.items() if key != "display"}
        text = out.get("reference")
        if isinstance(text, str) and (target := _target(text)) is not None:
            out["reference"] = "/".join(target)
        return out
    return value


def _status(task: Mapping[str, Any]) -> str | None:
    status = task.get("status")
    return status if isinstance(status, str) else None


def check_creation(
    task: Mapping[str, Any], caller_org: str, *, hospital_of: HospitalOf | None = None
) -> None:
    """Refuse a new referral Task that does not start ``requested`` or names no owner (422),
    or that the caller creates for another requester (403)."""
    hospital_of = hospital_of or organization_of
    issues: list[Issue] = []
    if _status(task) != INITIAL_STATUS:
        issues.append(
            Issue(
                "business-rule",
                f"A referral Task starts as '{INITIAL_STATUS}', not {task.get('status')!r}",
                ("Task.status",),
            )
        )
    if not isinstance(task.get("owner"), Mapping):
        issues.append(
            Issue(
                "required",
                "A referral Task needs an owner: the receiving hospital",
                ("Task.owner",),
            )
        )
    if issues:
        raise FhirError(422, issues)
    requester = task.get("requester")
    hospital = hospital_of(requester) if isinstance(requester, Mapping) else None
    if not _same_org(hospital, caller_org):
        raise FhirError(
            403,
            [
                Issue(
                    "forbidden",
                    f"A referral Task is created by the requesting hospital "
                    f"({hospital or 'none named'}), not by {caller_org}",
                    ("Task.requester",),
                )
            ],
        )


def check_transition(
    old_task: Mapping[str, Any],
    new_task: Mapping[str, Any],
    caller_org: str,
    *,
    hospital_of: HospitalOf | None = None,
) -> None:
    """Refuse (409, 403 or 422, see the module) replacing ``old_task`` by ``new_task`` on behalf
    of the hospital ``caller_org`` (``Organization/<id>``). Returns None when allowed.

    Roles are read from ``old_task``: a caller cannot make itself the owner by editing it.
    ``hospital_of`` maps Task.owner / Task.requester to a hospital (default
    :func:`organization_of`)."""
    hospital_of = hospital_of or organization_of
    old, new = _status(old_task), _status(new_task)
    if old not in TRANSITIONS:
        raise _conflict(f"The stored Task has status {old!r}, which referrals do not manage")
    if new is None:
        raise FhirError(422, [Issue("required", "Task.status is required", ("Task.status",))])

    if new == old:
        if old in FINAL:
            if _content(old_task) != _content(new_task):
                raise _conflict(f"The Task is {old}, a final status: it can no longer change")
            return
        _check_role(old_task, caller_org, (Role.OWNER, Role.REQUESTER), new, hospital_of)
        _raise_all(_immutable_issues(old_task, new_task))
        return

    if new not in TRANSITIONS[old]:
        allowed = ", ".join(sorted(TRANSITIONS[old])) or "nothing (final status)"
        raise _conflict(f"A referral Task cannot go from {old} to {new}; from {old}: {allowed}")
    _check_role(old_task, caller_org, (ACTOR[new],), new, hospital_of)
    issues = _immutable_issues(old_task, new_task)
    if new == "rejected" and not _has_concept(new_task.get("statusReason")):
        issues.append(
            Issue(
                "required",
                "A rejected referral needs a statusReason saying why",
                ("Task.statusReason",),
            )
        )
    if new == "completed" and not _has_summary(new_task.get("output")):
        kinds = ", ".join(sorted(SUMMARY_TYPES))
        issues.append(
            Issue(
                "required",
                "A completed referral needs an output whose valueReference is the returned "
                f"discharge or consult summary ({kinds})",
                ("Task.output",),
            )
        )
    _raise_all(issues)


def _check_role(
    task: Mapping[str, Any],
    caller_org: str,
    roles: tuple[Role, ...],
    new_status: str,
    hospital_of: HospitalOf,
) -> None:
    named: list[str] = []
    for role in roles:
        reference = task.get(role.value)
        hospital = hospital_of(reference) if isinstance(reference, Mapping) else None
        if _same_org(hospital, caller_org):
            return
        named.append(f"the {role.value}'s hospital ({hospital or 'none named'})")
    action = (
        f"move the Task to {new_status}"
        if task.get("status") != new_status
        else f"update the Task while {new_status}"
    )
    raise FhirError(
        403,
        [
            Issue(
                "forbidden",
                f"Only {' or '.join(named)} may {action}; the caller is {caller_org}",
                tuple(f"Task.{role.value}" for role in roles),
            )
        ],
    )


def _immutable_issues(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[Issue]:
    return [
        Issue(
            "business-rule",
            f"Task.{name} cannot change during the referral (a different receiver is a new "
            "Task after cancelling this one)",
            (f"Task.{name}",),
        )
        for name in IMMUTABLE
        if _comparable(old.get(name)) != _comparable(new.get(name))
    ]


def _has_concept(concept: Any) -> bool:
    if not isinstance(concept, Mapping):
        return False
    if isinstance(concept.get("text"), str) and concept["text"].strip():
        return True
    return any(
        isinstance(coding, Mapping) and (coding.get("code") or coding.get("display"))
        for coding in concept.get("coding") or []
    )


def _has_summary(outputs: Any) -> bool:
    for output in outputs or []:
        reference = output.get("valueReference") if isinstance(output, Mapping) else None
        if not isinstance(reference, Mapping):
            continue
        text = reference.get("reference")
        if not isinstance(text, str) or not text.strip() or text.startswith("#"):
            continue  # a summary is a resource of its own, not an identifier or contained
        target = _target(text)
        if (target[0] if target else reference.get("type")) in SUMMARY_TYPES:
            return True
    return False


def _content(task: Mapping[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in task.items() if key not in ("meta", "text")}


def _conflict(message: str) -> FhirError:
    return FhirError(409, [Issue("business-rule", message, ("Task.status",))])


def _raise_all(issues: list[Issue]) -> None:
    if issues:
        raise FhirError(422, issues)
