"""Search values of a resource, by extractors compiled once from the R4 FHIRPath expressions.

Indexing runs on every write, so the search parameters' FHIRPath is not interpreted per
resource: each expression is parsed once and compiled to a chain of closures over the JSON,
with the FHIR type of every step read from the fhir.resources R4B models (so
``Observation.value`` knows to look at ``valueQuantity``, ``valueString`` ... and that
``Observation.code`` is a CodeableConcept).

The compiled subset is the one the R4 definitions use: path steps, choice elements, ``(x as T)``
and ``x.as(T)``, ``ofType(T)``, ``where(resolve() is T)``, ``where(field = 'literal')`` (and
other small ``where`` criteria), ``extension('url')``, ``first()``, ``exists()``, ``empty()``,
``not()``, ``[n]``, ``=``, ``!=``, ``and``, ``or`` and ``|``. Collections are flattened at every
step, as in FHIRPath, and ``as`` / ``ofType`` follow FHIRPath's type hierarchy (a canonical
is a uri, an Age a Quantity). Two readings differ from a strict FHIRPath engine, as in other
FHIR servers: ``as`` filters a collection of any size (the R4 definitions apply it to
``Observation.component.value``, which FHIRPath would call an error), and ``resolve() is T``
is decided from the reference alone: the type it names (``T/id``, or an absolute URL ending in
``T/id``, either with ``/_history/v``), else its ``type`` element (``#contained``,
``urn:uuid:`` and conditional references name none). A union (``|``) drops repeated values.

Expressions outside that subset fall back to the fhirpathpy interpreter (a dev dependency;
without it such parameters index nothing), logged once at debug level; see
:func:`fallback_params`.

An :data:`Element` is ``(FHIR type name, JSON value as in the resource)``: ``("CodeableConcept",
{...})``, ``("dateTime", "2020-01-02")``, ``("Reference", {...})``. Values are the resource's
own objects, not copies: do not mutate them.
"""

from __future__ import annotations

import logging
import re
import typing
from collections.abc import Callable, Iterable
from decimal import Decimal
from functools import cache
from typing import Any

from fhir.resources.R4B import get_fhir_model_class

from emr_hub.fhir.search.registry import SearchParam, params_for

log = logging.getLogger(__name__)

Element = tuple[str, Any]
Extractor = Callable[[dict[str, Any]], list[Element]]
_Step = Callable[[list[Element]], list[Element]]


class CompileError(ValueError):
    """The expression uses FHIRPath the compiler does not handle."""


# --------------------------------------------------------------------------- type metadata

_PRIMITIVE_NAMES = {"EncodedBytes": "base64Binary", "UuidVersion": "uuid"}

# FHIRPath's type hierarchy below the FHIR types ``as`` / ``ofType`` / ``is`` may name.
_SUBTYPES = {
    "Quantity": frozenset(
        {"Quantity", "Age", "Count", "Distance", "Duration", "SimpleQuantity", "MoneyQuantity"}
    ),
    "string": frozenset({"string", "code", "id", "markdown"}),
    "uri": frozenset({"uri", "url", "canonical", "oid", "uuid"}),
    "integer": frozenset({"integer", "positiveInt", "unsignedInt"}),
}
# FHIRPath System types, as some definitions spell them (``value.as(DateTime)``).
_SYSTEM_TYPES = {
    "Boolean": "boolean",
    "String": "string",
    "Integer": "integer",
    "Decimal": "decimal",
    "Date": "date",
    "DateTime": "dateTime",
    "Time": "time",
}

RESOURCE = "Resource"  # a contained or inline resource: its type is its resourceType


def _type_name(annotation: Any) -> str | None:
    """The FHIR type of a model field's annotation (list-ness ignored)."""
    while True:
        origin = typing.get_origin(annotation)
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if origin is list:
            annotation = args[0]
        elif origin is typing.Annotated:
            meta = type(annotation.__metadata__[0]).__name__
            return _PRIMITIVE_NAMES.get(meta, meta[:1].lower() + meta[1:])
        elif origin is not None and len(args) == 1:
            annotation = args[0]
        else:
            break
    if annotation is bool:
        return "boolean"
    if annotation is str:
        return "string"
    name = getattr(annotation, "__name__", "")
    if name == "ResourceType":
        return RESOURCE
    if name.endswith("Type") and len(name) > 4:
        return name[:-4]
    return None


def is_primitive(type_name: str) -> bool:
    return type_name[:1].islower()


@cache
def element_types(type_name: str) -> dict[str, tuple[tuple[str, str], ...]]:
    """FHIRPath element name -> ((JSON key, FHIR type), ...) for a complex type or resource
    model; a choice element ``value`` lists all its ``valueX`` keys."""
    try:
        model = get_fhir_model_class(type_name)
    except (KeyError, ValueError, AttributeError):
        return {}
    table: dict[str, list[tuple[str, str]]] = {}
    for name, info in model.model_fields.items():
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        if not extra.get("element_property"):
            continue
        fhir_type = _type_name(info.annotation)
        if fhir_type is None:
            continue
        key = info.alias or name
        element = extra.get("one_of_many") or key
        table.setdefault(element, []).append((key, fhir_type))
    return {element: tuple(keys) for element, keys in table.items()}


def _matches_type(actual: str, wanted: str) -> bool:
    return actual == wanted or actual in _SUBTYPES.get(wanted, ())


def _fhir_type(name: str) -> str:
    """A type name of ``as`` / ``ofType`` / ``is``: the FHIR type a System type stands for."""
    return _SYSTEM_TYPES.get(name, name)


# --------------------------------------------------------------------------------- parsing

_TOKEN = re.compile(
    r"""\s*(?:
      (?P<str>'(?:[^'\\]|\\.)*')
    | (?P<num>\d+(?:\.\d+)?)
    | (?P<id>[A-Za-z_][A-Za-z0-9_]*|`[^`]+`)
    | (?P<var>[%$][A-Za-z_][A-Za-z0-9_]*)
    | (?P<op>!=|<=|>=|!~|[.()\[\]|,=<>~+\-*/&])
    )""",
    re.VERBOSE,
)
_ESCAPES = {"'": "'", '"': '"', "`": "`", "\\": "\\", "/": "/", "n": "\n", "r": "\r", "t": "\t"}


def _tokens(text: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    pos = 0
    text = text.rstrip()
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None or match.end() == pos:
            raise CompileError(f"cannot read {text[pos:]!r}")
        kind = match.lastgroup
        assert kind is not None
        out.append((kind, match.group(kind)))
        pos = match.end()
    return out


def _unquote(literal: str) -> str:
    body = literal[1:-1]
    return re.sub(r"\\(.)", lambda m: _ESCAPES.get(m.group(1), m.group(1)), body)


class _Parser:
    """FHIRPath precedence: ``.`` / ``[]`` > ``is`` ``as`` > ``|`` > ``=`` ``!=`` > ``and`` >
    ``or``. Nodes are tuples: ("this",), ("ident", name), ("member", base, name),
    ("fn", base, name, args), ("index", base, n), ("as" | "is", base, type),
    ("union", members), ("eq" | "ne" | "and" | "or", left, right), ("lit", type, value)."""

    def __init__(self, text: str) -> None:
        self.toks = _tokens(text)
        self.pos = 0

    def peek(self) -> tuple[str, str] | None:
        return self.toks[self.pos] if self.pos < len(self.toks) else None

    def take(self, value: str | None = None) -> tuple[str, str]:
        tok = self.peek()
        if tok is None or (value is not None and tok[1] != value):
            raise CompileError(f"expected {value or 'more'}, got {tok}")
        self.pos += 1
        return tok

    def at(self, *values: str) -> bool:
        tok = self.peek()
        return tok is not None and tok[0] in ("op", "id") and tok[1] in values

    def parse(self) -> tuple:
        node = self.expr()
        if self.peek() is not None:
            raise CompileError(f"unexpected {self.peek()}")
        return node

    def expr(self) -> tuple:
        node = self.conj()
        while self.at("or"):
            self.take()
            node = ("or", node, self.conj())
        if self.at("xor", "implies"):
            raise CompileError(f"operator {self.peek()} not compiled")
        return node

    def conj(self) -> tuple:
        node = self.equality()
        while self.at("and"):
            self.take()
            node = ("and", node, self.equality())
        return node

    def equality(self) -> tuple:
        node = self.union()
        if self.at("=", "!="):
            op = self.take()[1]
            node = ("eq" if op == "=" else "ne", node, self.union())
        if self.at("~", "!~", "<", ">", "<=", ">=", "in", "contains"):
            raise CompileError(f"operator {self.peek()} not compiled")
        return node

    def union(self) -> tuple:
        members = [self.typed()]
        while self.at("|"):
            self.take()
            members.append(self.typed())
        return members[0] if len(members) == 1 else ("union", tuple(members))

    def typed(self) -> tuple:
        node = self.postfix()
        while self.at("as", "is"):
            op = self.take()[1]
            node = (op, node, self.type_spec())
        if self.at("+", "-", "*", "/", "&", "div", "mod"):
            raise CompileError(f"operator {self.peek()} not compiled")
        return node

    def type_spec(self) -> str:
        kind, name = self.take()
        if kind != "id":
            raise CompileError(f"expected a type, got {name!r}")
        if self.at("."):
            self.take()
            if name not in ("FHIR", "System"):
                raise CompileError(f"type namespace {name} not compiled")
            name = self.take()[1]
        return _fhir_type(name.strip("`"))

    def postfix(self) -> tuple:
        node = self.term()
        while True:
            if self.at("."):
                self.take()
                kind, name = self.take()
                if kind != "id":
                    raise CompileError(f"expected a name after '.', got {name!r}")
                node = self.invocation(node, name.strip("`"))
            elif self.at("["):
                self.take()
                kind, number = self.take()
                if kind != "num" or not number.isdigit():
                    raise CompileError("only [integer] indexers are compiled")
                self.take("]")
                node = ("index", node, int(number))
            else:
                return node

    def invocation(self, base: tuple, name: str) -> tuple:
        if not self.at("("):
            return ("member", base, name)
        self.take("(")
        args: list[Any] = []
        if name in ("as", "ofType", "is"):
            args.append(self.type_spec())
        elif not self.at(")"):
            args.append(self.expr())
            while self.at(","):
                self.take()
                args.append(self.expr())
        self.take(")")
        return ("fn", base, name, tuple(args))

    def term(self) -> tuple:
        kind, value = self.take()
        if kind == "str":
            return ("lit", "string", _unquote(value))
        if kind == "num":
            return ("lit", "decimal" if "." in value else "integer", Decimal(value))
        if kind == "var":
            if value == "$this":
                return ("this",)
            raise CompileError(f"variable {value} not compiled")
        if kind == "op" and value == "(":
            node = self.expr()
            self.take(")")
            return node
        if kind == "id":
            if value in ("true", "false"):
                return ("lit", "boolean", value == "true")
            if value.startswith("`"):
                return ("member", ("this",), value.strip("`"))
            return self.invocation(("this",), value)
        raise CompileError(f"unexpected {value!r}")


def parse(expression: str) -> tuple:
    return _Parser(expression).parse()


# ------------------------------------------------------------------------------- compiling

_Types = frozenset[str]


def _identity(items: list[Element]) -> list[Element]:
    return items


def _compile(node: tuple, types: _Types) -> tuple[_Step, _Types]:
    """(step over a collection, the FHIR types its results can have) for an AST node whose
    input items have one of ``types``."""
    kind = node[0]
    if kind == "this":
        return _identity, types
    if kind == "member":
        base, base_types = _compile(node[1], types)
        # FHIRPath: a leading ``Observation`` on an Observation is the resource itself
        if node[1] == ("this",) and node[2][:1].isupper():
            return _type_filter(base, base_types, node[2])
        return _then(base, *_member(node[2], base_types))
    if kind == "fn":
        return _function(node, types)
    if kind == "index":
        base, base_types = _compile(node[1], types)
        n = node[2]
        return _then(base, lambda items: items[n : n + 1], base_types)
    if kind == "as":
        return _as(node[1], node[2], types)
    if kind == "is":
        return _is(node, types)
    if kind == "union":
        return _union([_compile(member, types) for member in node[1]])
    if kind in ("eq", "ne"):
        return _equality(node, types)
    if kind in ("and", "or"):
        return _logic(node, types)
    if kind == "lit":
        item = (node[1], _literal(node))
        return (lambda items: [item]), frozenset({node[1]})
    raise CompileError(f"{kind} not compiled")


def _literal(node: tuple) -> Any:
    value = node[2]
    if isinstance(value, Decimal):
        return int(value) if node[1] == "integer" else float(value)
    return value


def _then(first: _Step, second: _Step, types: _Types) -> tuple[_Step, _Types]:
    if first is _identity:
        return second, types
    first_path = getattr(first, "path", None)
    second_path = getattr(second, "path", None)
    if first_path and second_path:  # a.b then .c: one walk
        return _walker(first_path + second_path), types

    def step(items: list[Element]) -> list[Element]:
        return second(first(items))

    return step, types


def _as(base_node: tuple, wanted: str, types: _Types) -> tuple[_Step, _Types]:
    """``x as T`` / ``x.ofType(T)``; on a choice element only the ``T`` key is looked at."""
    if base_node[0] == "member" and not (base_node[1] == ("this",) and base_node[2][:1].isupper()):
        base, base_types = _compile(base_node[1], types)
        if RESOURCE not in _member(base_node[2], base_types)[1]:
            return _then(base, *_member(base_node[2], base_types, wanted))
    base, base_types = _compile(base_node, types)
    return _type_filter(base, base_types, wanted)


def _member(name: str, types: _Types, wanted: str | None = None) -> tuple[_Step, _Types]:
    """Navigation to child elements ``name`` of items of ``types``, lists flattened; with
    ``wanted``, only to those of that type (``value as Quantity``: ``valueQuantity``)."""
    table: dict[str, tuple[tuple[str, str], ...]] = {}
    found = False
    for type_name in types:
        if type_name == RESOURCE:
            raise CompileError(f"navigation into a contained resource ({name})")
        if is_primitive(type_name):
            raise CompileError(f"navigation into primitive {type_name} ({name})")
        keys = element_types(type_name).get(name)
        found = found or bool(keys)
        if keys and wanted is not None:
            keys = tuple(k for k in keys if _matches_type(k[1], wanted))
        if keys:
            table[type_name] = keys
    if not found:
        raise CompileError(f"no element {name!r} in {sorted(types)}")
    if not table:
        raise CompileError(f"no {wanted} in element {name!r} of {sorted(types)}")
    out_types = frozenset(t for keys in table.values() for _, t in keys)
    if len(table) == 1 and len(types) == 1:
        (keys,) = table.values()
        if len(keys) == 1 and keys[0][1] != RESOURCE:
            return _walker(keys), out_types
        return _choice_keys(keys), out_types
    return _dispatch(table), out_types


def _append(out: list[Element], fhir_type: str, value: Any) -> None:
    if fhir_type == RESOURCE:
        if isinstance(value, dict):
            out.append((value.get("resourceType") or RESOURCE, value))
    elif value is not None:
        out.append((fhir_type, value))


def _walker(path: tuple[tuple[str, str], ...]) -> _Step:
    """Navigation along single-typed, non-choice elements ``a.b.c``: one closure, no typed
    tuples for the intermediate nodes."""
    inner = tuple(key for key, _ in path[:-1])
    last_key, last_type = path[-1]

    def step(items: list[Element]) -> list[Element]:
        nodes = [node for _, node in items]
        for key in inner:
            found: list[Any] = []
            for node in nodes:
                value = node.get(key)
                if value is None:
                    continue
                if type(value) is list:
                    found.extend(value)
                else:
                    found.append(value)
            if not found:
                return []
            nodes = found
        out: list[Element] = []
        for node in nodes:
            value = node.get(last_key)
            if value is None:
                continue
            if type(value) is list:
                out.extend([(last_type, v) for v in value if v is not None])
            else:
                out.append((last_type, value))
        return out

    step.path = path  # type: ignore[attr-defined]
    return step


def _take(out: list[Element], node: Any, keys: tuple[tuple[str, str], ...]) -> None:
    """Append the values of ``node`` under each of ``keys`` (arrays flattened), typed."""
    for key, fhir_type in keys:
        value = node.get(key)
        if value is None:
            continue
        if type(value) is list:
            for v in value:
                _append(out, fhir_type, v)
        else:
            _append(out, fhir_type, value)


def _choice_keys(keys: tuple[tuple[str, str], ...]) -> _Step:
    def step(items: list[Element]) -> list[Element]:
        out: list[Element] = []
        for _, node in items:
            _take(out, node, keys)
        return out

    return step


def _dispatch(table: dict[str, tuple[tuple[str, str], ...]]) -> _Step:
    def step(items: list[Element]) -> list[Element]:
        out: list[Element] = []
        for item_type, node in items:
            _take(out, node, table.get(item_type, ()))
        return out

    return step


def _type_filter(base: _Step, types: _Types, wanted: str) -> tuple[_Step, _Types]:
    """``as`` / ``ofType``: keep the items of type ``wanted`` (or one of its subtypes)."""
    kept = frozenset(t for t in types if _matches_type(t, wanted))
    dynamic = RESOURCE in types and wanted[:1].isupper()
    if not kept and not dynamic:
        raise CompileError(f"no {wanted} among {sorted(types)}")
    if kept == types:
        return base, kept
    if dynamic:
        kept |= {wanted}

    def step(items: list[Element]) -> list[Element]:
        return [item for item in base(items) if _matches_type(item[0], wanted)]

    return step, kept


def _function(node: tuple, types: _Types) -> tuple[_Step, _Types]:
    _, base_node, name, args = node
    base, base_types = _compile(base_node, types)
    if name in ("as", "ofType"):
        return _type_filter(base, base_types, args[0])
    if name == "where":
        (criteria,) = args
        return _then(base, _where(criteria, base_types), base_types)
    if name == "first" and not args:
        return _then(base, lambda items: items[:1], base_types)
    if name in ("exists", "empty"):
        if args:
            base, base_types = _then(base, _where(args[0], base_types), base_types)
        want = name == "exists"
        return _then(base, lambda items: [("boolean", bool(items) is want)], frozenset({"boolean"}))
    if name == "not" and not args:

        def negate(items: list[Element]) -> list[Element]:
            value = _truth(items)
            return [] if value is None else [("boolean", not value)]

        return _then(base, negate, frozenset({"boolean"}))
    if name == "extension" and len(args) == 1 and args[0][0] == "lit":
        url = args[0][2]
        to_extensions, ext_types = _member("extension", base_types)
        nav, _ = _then(base, to_extensions, ext_types)

        def by_url(items: list[Element]) -> list[Element]:
            return [item for item in nav(items) if item[1].get("url") == url]

        return by_url, ext_types
    raise CompileError(f"function {name}() not compiled")


def _where(criteria: tuple, types: _Types) -> _Step:
    """Keep the items for which ``criteria`` (evaluated on each alone) is true."""
    if (
        criteria[0] == "is"
        and criteria[1] == ("fn", ("this",), "resolve", ())
        and isinstance(criteria[2], str)
    ):
        if types != {"Reference"}:
            raise CompileError(f"resolve() on {sorted(types)}")
        target = criteria[2]

        def resolves_to(items: list[Element]) -> list[Element]:
            return [item for item in items if reference_is(item[1], target)]

        return resolves_to
    test, _ = _compile(criteria, types)

    def where(items: list[Element]) -> list[Element]:
        return [item for item in items if _truth(test([item])) is True]

    return where


def _truth(items: list[Element]) -> bool | None:
    """A collection in a boolean context: empty -> None, one boolean -> it, other one -> True."""
    if not items:
        return None
    if len(items) > 1:
        return None
    value = items[0][1]
    return value if isinstance(value, bool) else True


def _equal(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, int | float | Decimal) and isinstance(b, int | float | Decimal):
        return a == b
    return type(a) is type(b) and a == b


def _equality(node: tuple, types: _Types) -> tuple[_Step, _Types]:
    left, _ = _compile(node[1], types)
    right, _ = _compile(node[2], types)
    negate = node[0] == "ne"

    def step(items: list[Element]) -> list[Element]:
        a = left(items)
        b = right(items)
        if not a or not b:
            return []
        same = len(a) == len(b) and all(_equal(x[1], y[1]) for x, y in zip(a, b, strict=True))
        return [("boolean", same is not negate)]

    return step, frozenset({"boolean"})


def _logic(node: tuple, types: _Types) -> tuple[_Step, _Types]:
    left, _ = _compile(node[1], types)
    right, _ = _compile(node[2], types)
    is_and = node[0] == "and"

    def step(items: list[Element]) -> list[Element]:
        a = _truth(left(items))
        b = _truth(right(items))
        if is_and:
            if a is False or b is False:
                return [("boolean", False)]
            if a is True and b is True:
                return [("boolean", True)]
            return []
        if a is True or b is True:
            return [("boolean", True)]
        if a is False and b is False:
            return [("boolean", False)]
        return []

    return step, frozenset({"boolean"})


def _is(node: tuple, types: _Types) -> tuple[_Step, _Types]:
    base, _ = _compile(node[1], types)
    wanted = node[2]

    def step(items: list[Element]) -> list[Element]:
        found = base(items)
        if len(found) != 1:
            return []
        return [("boolean", _matches_type(found[0][0], wanted))]

    return step, frozenset({"boolean"})


def _same(a: Any, b: Any) -> bool:
    """The same JSON (``1`` and ``1.0`` are not, ``True`` and ``1`` neither)."""
    if type(a) is not type(b):
        return False
    if type(a) is dict:
        return a.keys() == b.keys() and all(_same(v, b[k]) for k, v in a.items())
    if type(a) is list:
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def _uniq(items: Iterable[Element]) -> list[Element]:
    """FHIRPath union: the same value once (first occurrence kept)."""
    out: list[Element] = []
    for item in items:
        value = item[1]
        for seen in out:
            if _same(seen[1], value):
                break
        else:
            out.append(item)
    return out


def _union(parts: list[tuple[_Step, _Types]]) -> tuple[_Step, _Types]:
    steps = [step for step, _ in parts]
    types = frozenset(t for _, ts in parts for t in ts)

    def step(items: list[Element]) -> list[Element]:
        found: list[Element] = []
        for part in steps:
            found.extend(part(items))
        return _uniq(found) if len(found) > 1 else found

    return step, types


# ------------------------------------------------------------------------------ references

_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")
_TYPE = re.compile(r"[A-Z][A-Za-z]+")


def reference_type(reference: str) -> str | None:
    """The resource type a literal reference names: ``Patient/1``,
    ``https://h/fhir/Patient/1``, either with ``/_history/2``. None for ``#c``, ``urn:uuid:``,
    conditional and other references."""
    cut = reference.find("/_history/")
    if cut >= 0:
        if not _ID.fullmatch(reference[cut + 10 :]):
            return None
        reference = reference[:cut]
    parts = reference.rsplit("/", 2)
    if len(parts) < 2:
        return None
    type_name, id_ = parts[-2], parts[-1]
    if _TYPE.fullmatch(type_name) and _ID.fullmatch(id_):
        return type_name
    return None


def referenced_type(value: Any) -> str | None:
    """The type ``resolve()`` would find for a Reference: the one its ``reference`` names,
    else its ``type``."""
    if not isinstance(value, dict):
        return None
    reference = value.get("reference")
    if isinstance(reference, str):
        found = reference_type(reference)
        if found is not None:
            return found
    type_name = value.get("type")
    return type_name if isinstance(type_name, str) else None


def reference_is(value: Any, type_name: str) -> bool:
    """``resolve() is type_name`` for a Reference, decided without resolving it."""
    return referenced_type(value) == type_name


# ------------------------------------------------------------------------------ public API


def compile_path(expression: str, context_type: str) -> Callable[[Any], list[Element]]:
    """A compiled extractor of ``expression`` evaluated on a node of FHIR type
    ``context_type`` (a resource, or e.g. ``ObservationComponent`` for composite components).
    Raises :class:`CompileError` for FHIRPath outside the compiled subset."""
    step, _ = _compile(parse(expression), frozenset({context_type}))
    path = getattr(step, "path", None)
    if path:
        return _root_walker(path)

    def extract(node: Any) -> list[Element]:
        return step([(context_type, node)])

    return extract


def _root_walker(path: tuple[tuple[str, str], ...]) -> Callable[[Any], list[Element]]:
    """:func:`_walker` started from one node (the resource), most parameters' whole work."""
    first_key, first_type = path[0]
    if len(path) == 1:

        def extract_one(node: Any) -> list[Element]:
            value = node.get(first_key)
            if value is None:
                return []
            if type(value) is list:
                return [(first_type, v) for v in value if v is not None]
            return [(first_type, value)]

        return extract_one
    rest = _walker(path[1:])

    def extract(node: Any) -> list[Element]:
        value = node.get(first_key)
        if value is None:
            return []
        if type(value) is list:
            return rest([(first_type, v) for v in value if v is not None])
        return rest([(first_type, value)])

    return extract


_FALLBACKS: dict[tuple[str, str], str] = {}


@cache
def extractor(param: SearchParam) -> Extractor:
    """The compiled extractor of a parameter (the fhirpathpy fallback when the expression is
    outside the compiled subset; an empty one when it has no expression)."""
    if not param.expression:
        return _no_values
    try:
        return compile_path(param.expression, param.resource_type)
    except (CompileError, RecursionError) as error:
        _FALLBACKS[(param.resource_type, param.code)] = str(error)
        log.debug(
            "search param %s:%s (%s) falls back to fhirpathpy: %s",
            param.resource_type,
            param.code,
            param.expression,
            error,
        )
        return _fhirpathpy_extractor(param)


def _no_values(resource: dict[str, Any]) -> list[Element]:
    return []


def fallback_params(resource_types: Iterable[str] | None = None) -> dict[tuple[str, str], str]:
    """(resource type, code) -> why, for the parameters whose expression is not compiled.
    Builds the extractors of ``resource_types`` (default: every R4 type) to find out."""
    from emr_hub.fhir.validation import R4_RESOURCE_TYPES

    types = sorted(R4_RESOURCE_TYPES if resource_types is None else resource_types)
    for type_name in types:
        for param in params_for(type_name).values():
            extractor(param)
    wanted = set(types)
    return {key: why for key, why in sorted(_FALLBACKS.items()) if key[0] in wanted}


def _root_keys(node: tuple, root_type: str) -> frozenset[str] | None:
    """The top-level JSON keys without which a navigation expression is empty, or None when
    it cannot be told (or it may have values anyway: ``exists()``, ``and`` ...)."""
    kind = node[0]
    if kind == "member":
        base = node[1]
        if base == ("this",):
            return None  # the resource itself, or a relative path
        if base[0] == "member" and base[1] == ("this",) and base[2] == root_type:
            keys = element_types(root_type).get(node[2])
            return frozenset(key for key, _ in keys) if keys else None
        return _root_keys(base, root_type)
    if kind == "fn" and node[2] in ("where", "as", "ofType", "first", "extension"):
        return _root_keys(node[1], root_type)
    if kind in ("index", "as"):
        return _root_keys(node[1], root_type)
    if kind == "union":
        found: set[str] = set()
        for member in node[1]:
            keys = _root_keys(member, root_type)
            if keys is None:
                return None
            found |= keys
        return frozenset(found)
    return None


_Plan = tuple[tuple[str, Extractor, tuple[str, ...] | None], ...]


@cache
def _plan(resource_type: str) -> _Plan:
    plan = []
    for code, param in params_for(resource_type).items():
        if not param.expression or param.type == "composite":
            continue
        extract = extractor(param)
        keys = None
        if (resource_type, code) not in _FALLBACKS:
            found = _root_keys(parse(param.expression), resource_type)
            keys = tuple(sorted(found)) if found else None
        plan.append((code, extract, keys))
    return tuple(plan)


def extract_all(resource: dict[str, Any]) -> dict[str, list[Element]]:
    """Every search parameter of the resource's type with values, composites excluded:
    code -> elements. The write path calls this on every resource."""
    out: dict[str, list[Element]] = {}
    resource_type = resource.get("resourceType")
    if not isinstance(resource_type, str):
        return out
    for code, extract, keys in _plan(resource_type):
        if keys is not None:  # skip what cannot have values: cheaper than a call
            for key in keys:
                if key in resource:
                    break
            else:
                continue
        try:
            values = extract(resource)
        except (AttributeError, TypeError):  # JSON not shaped as the type says (unvalidated)
            log.debug("search param %s:%s skipped: malformed resource", resource_type, code)
            continue
        if values:
            out[code] = values
    return out


# ---------------------------------------------------------------------- fhirpathpy fallback

_AS_OPERATOR = re.compile(r"\(([^()|]+?)\s+as\s+([A-Za-z]+)\)")


def for_interpreter(expression: str) -> str:
    """The expression as fhirpathpy should run it for search: ``as`` made the filtering
    ``ofType`` (fhirpathpy, like the FHIRPath text, refuses ``as`` on many items)."""
    expression = _AS_OPERATOR.sub(r"(\1.ofType(\2))", expression)
    return expression.replace(".as(", ".ofType(")


def _interpreter_resolve(references: list[Any]) -> list[Any]:
    """fhirpathpy's ``resolve()``: a stub resource of the type :func:`referenced_type` says."""
    from fhirpathpy.engine.nodes import ResourceNode

    found = []
    for value in references:
        type_name = referenced_type(value)
        if type_name is not None:
            found.append(ResourceNode.create_node({"resourceType": type_name}))
    return found


def _fhirpathpy_extractor(param: SearchParam) -> Extractor:
    try:
        import fhirpathpy
        from fhirpathpy.models import models
    except ImportError:  # pragma: no cover - fhirpathpy is a dev dependency
        log.warning("fhirpathpy is not installed: search param %s indexes nothing", param.url)
        return _no_values
    model = models["r4"]
    path2type: dict[str, str] = model.get("path2Type", {})
    try:
        compiled = fhirpathpy.compile(
            for_interpreter(param.expression or ""),
            model,
            {
                "returnRawData": True,
                "userInvocationTable": {"resolve": {"fn": _interpreter_resolve, "arity": {0: []}}},
            },
        )
    except Exception as error:  # noqa: BLE001 - any parse failure: the param indexes nothing
        log.warning("search param %s cannot be parsed: %s", param.url, error)
        return _no_values
    failed: list[bool] = []

    def extract(resource: dict[str, Any]) -> list[Element]:
        try:
            found = compiled(resource, {})
        except Exception as error:  # noqa: BLE001 - one bad evaluation must not stop a write
            if not failed:
                failed.append(True)
                log.warning("search param %s failed on a resource: %s", param.url, error)
            return []
        return [e for e in (_from_interpreter(item, path2type) for item in found) if e]

    return extract


def _from_interpreter(item: Any, path2type: dict[str, str]) -> Element | None:
    data = getattr(item, "data", item)
    path = getattr(item, "path", None)
    if data is None:
        return None
    if isinstance(path, str):
        if "." not in path:
            return (path, data)
        return (path2type.get(path, "BackboneElement"), data)
    if isinstance(data, dict):  # a union's results lose their type in fhirpathpy
        return (data.get("resourceType") or "Element", data)
    if isinstance(data, bool):
        return ("boolean", data)
    if isinstance(data, int):
        return ("integer", data)
    if isinstance(data, float | Decimal):
        return ("decimal", float(data))
    if isinstance(data, str):
        return ("string", data)
    return (type(data).__name__, str(data))
