"""SMART App Launch v2 scopes, as far as a backend-services hub needs them.

Accepted, space separated::

    system/Patient.rs      v2: a subset of ``cruds`` in that order
    system/*.cruds         any resource type
    system/*.read          v1 spelling, the same as ``.rs``
    system/*.write         v1 spelling, the same as ``.cud``
    system/*.*             v1 spelling, the same as ``.cruds``
    user/Observation.r     ``user/`` grants what ``system/`` does, for now
    patient/*.rs           a citizen's token: the same letters, within her own record (the
                           patient context is the token's person, not a launch)

API clients are registered with ``system/`` (or ``user/``) scopes only; ``patient/`` scopes are
for citizens' tokens. Refused with :class:`ValueError`: granular scopes with a ``?`` query,
unknown resource types, letters out of order and anything else (``openid``, ``launch`` ...).
Parsing is pure: no I/O, so it is cheap enough for every request.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from emr_hub.fhir.validation import is_resource_type

INTERACTIONS = "cruds"
"""The v2 permission letters in their canonical order: create, read, update, delete, search."""

CONTEXTS = ("system", "user", "patient")

_V1_PERMISSIONS = {"read": "rs", "write": "cud", "*": "cruds"}
_PERMISSIONS = re.compile(r"c?r?u?d?s?")
# Checked before the (cached) model lookup so arbitrary text never reaches that cache.
_TYPE_NAME = re.compile(r"[A-Z][A-Za-z]{0,63}")
_ABSTRACT_TYPES = frozenset({"Resource", "DomainResource"})


@dataclass(frozen=True, order=True)
class Scope:
    """One scope in canonical v2 form: ``context/resource_type.permissions``."""

    context: str
    resource_type: str
    permissions: str

    def __str__(self) -> str:
        return f"{self.context}/{self.resource_type}.{self.permissions}"

    def covers(self, resource_type: str, interaction: str) -> bool:
        """True when this scope grants ``interaction`` on ``resource_type``.

        ``resource_type == "*"`` asks for every type, which only a wildcard scope grants.
        """
        return interaction in self.permissions and self.resource_type in ("*", resource_type)

    @classmethod
    def parse(cls, text: str) -> Scope:
        """Parse one scope token; :class:`ValueError` says what is wrong with it."""
        if "?" in text:
            raise ValueError(
                f"Scope {text!r}: granular scopes with a query ('?') are not supported"
            )
        context, slash, rest = text.partition("/")
        if not slash:
            raise ValueError(
                f"Scope {text!r} is not supported: expected system/<Type|*>.<cruds>, "
                "e.g. system/Patient.rs"
            )
        if context not in CONTEXTS:
            raise ValueError(f"Scope {text!r} must start with system/, user/ or patient/")
        resource_type, dot, permissions = rest.partition(".")
        if not dot:
            raise ValueError(
                f"Scope {text!r} lacks permissions: expected <Type|*>.<cruds>, "
                "e.g. system/Patient.rs"
            )
        if resource_type != "*" and not _is_concrete_type(resource_type):
            raise ValueError(
                f"Scope {text!r}: {resource_type!r} is not a FHIR resource type (or '*')"
            )
        permissions = _V1_PERMISSIONS.get(permissions, permissions)
        if not permissions or not _PERMISSIONS.fullmatch(permissions):
            raise ValueError(
                f"Scope {text!r}: permissions must be a non-empty subset of c, r, u, d, s in "
                "that order (or the v1 read, write, *)"
            )
        return cls(context, resource_type, permissions)


@dataclass(frozen=True)
class ScopeSet:
    """A set of scopes, kept canonical: one entry per (context, type), sorted.

    Equal sets of permissions written differently (``system/*.read`` and ``system/*.rs``,
    ``system/Patient.r system/Patient.s`` and ``system/Patient.rs``) compare equal and
    print the same.
    """

    scopes: tuple[Scope, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "scopes", _canonical(self.scopes))

    @classmethod
    def parse(cls, text: str) -> ScopeSet:
        """Parse space separated scopes. The empty string is the empty set."""
        return cls(tuple(Scope.parse(token) for token in text.split()))

    def allows(self, resource_type: str, interaction: str) -> bool:
        """True when some scope grants ``interaction`` (one of c r u d s) on ``resource_type``."""
        if len(interaction) != 1 or interaction not in INTERACTIONS:
            raise ValueError(f"Unknown interaction {interaction!r}: expected one of c r u d s")
        return any(scope.covers(resource_type, interaction) for scope in self.scopes)

    def issubset(self, other: ScopeSet) -> bool:
        """True when every permission this set grants is granted by ``other`` as well.

        The context is ignored, since ``user/`` and ``system/`` grant the same here.
        """
        return all(
            other.allows(scope.resource_type, letter)
            for scope in self.scopes
            for letter in scope.permissions
        )

    @property
    def contexts(self) -> frozenset[str]:
        """The contexts (``system``, ``user``, ``patient``) its scopes are written in."""
        return frozenset(scope.context for scope in self.scopes)

    def __bool__(self) -> bool:
        return bool(self.scopes)

    def __str__(self) -> str:
        return " ".join(str(scope) for scope in self.scopes)


def _is_concrete_type(name: str) -> bool:
    return (
        name not in _ABSTRACT_TYPES
        and _TYPE_NAME.fullmatch(name) is not None
        and is_resource_type(name)
    )


def _canonical(scopes: Iterable[Scope]) -> tuple[Scope, ...]:
    merged: dict[tuple[str, str], set[str]] = {}
    for scope in scopes:
        merged.setdefault((scope.context, scope.resource_type), set()).update(scope.permissions)
    return tuple(
        Scope(context, resource_type, "".join(c for c in INTERACTIONS if c in letters))
        for (context, resource_type), letters in sorted(merged.items())
        if letters
    )
