"""JSON that keeps its numbers as written: FHIR decimals are exact (R4 datatypes, decimal).

``1.50`` is not ``1.5`` to FHIR: a decimal's precision is significant and must be kept,
trailing zeros and exponent included. Python floats forget the text, so every JSON number
with a fraction or an exponent is read as a :class:`DecimalText`: a ``float`` (everything
that computes with it, validation, search indexing, FHIRPath, works as before) that carries
its literal, which :func:`dumps` writes back byte for byte (an ``orjson.Fragment``).

- :func:`loads`: stored or trusted JSON (the database's columns, export files, imports).
  msgspec calls a hook with the text of each float; integers stay ``int``.
- :func:`loads_unique`: a request body. The standard library's parser, with hooks that keep
  the literals and refuse a key named twice in one object (:class:`DuplicateKey`); integer
  literals past orjson's 64-bit range become :class:`DecimalText` too (orjson read them as
  floats before, so validation treats them as it did).
- :func:`dumps`: orjson, with every :class:`DecimalText` written as its literal. A Python
  ``int`` past 64 bits (one :func:`loads` read back from such a literal) is written as its
  digits too.

This module is the one place JSON that may hold FHIR content is read and written:
``orjson.dumps`` would refuse a :class:`DecimalText` (``TypeError``), and ``orjson.loads``
would silently drop the literals.
"""

from __future__ import annotations

import json
from typing import Any, Self

import msgspec
import orjson

_INT64_MIN = -(2**63)
_UINT64_MAX = 2**64 - 1


class DecimalText(float):
    """A JSON number as a float that remembers its literal (``text``), e.g. ``1.50``."""

    __slots__ = ("text",)
    text: str

    def __new__(cls, text: str) -> Self:
        number = super().__new__(cls, text)
        number.text = text
        return number

    def __reduce__(self) -> tuple[type[DecimalText], tuple[str]]:  # copy, deepcopy, pickle
        return DecimalText, (self.text,)


class DuplicateKey(ValueError):
    """An object names the key ``args[0]`` twice."""


def _unique_members(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    members = dict(pairs)
    if len(members) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise DuplicateKey(key)
            seen.add(key)
    return members


def _integer(text: str) -> int | DecimalText:
    number = int(text)
    return number if _INT64_MIN <= number <= _UINT64_MAX else DecimalText(text)


def _finite(text: str) -> DecimalText:
    number = DecimalText(text)
    if number in _INFINITIES:  # orjson refuses these too: no JSON writer can read them back
        raise ValueError(f"The number {text[:40]} is too large")
    return number


_INFINITIES = (float("inf"), float("-inf"))
_DECODER = msgspec.json.Decoder(float_hook=_finite)
_UNIQUE = json.JSONDecoder(
    object_pairs_hook=_unique_members, parse_float=DecimalText, parse_int=_integer
)


def loads(data: bytes | str) -> Any:
    """Parse stored JSON, decimals kept. Raises ``ValueError`` (``msgspec.DecodeError``) on
    malformed JSON or a number past the range of a double, as orjson does."""
    return _DECODER.decode(data)


def loads_unique(data: bytes) -> Any:
    """Parse a request body already known to be well-formed JSON (orjson accepted it),
    decimals kept. Raises :class:`DuplicateKey`, or ``RecursionError`` when deeper than
    Python's recursion limit."""
    return _UNIQUE.decode(data.decode())


def _literal(value: Any) -> orjson.Fragment:
    if isinstance(value, DecimalText):
        return orjson.Fragment(value.text)
    raise TypeError(f"Type is not JSON serializable: {type(value).__name__}")


def dumps(value: Any, option: int = 0) -> bytes:
    """``value`` as JSON (orjson's ``option`` flags), every decimal as written."""
    try:
        return orjson.dumps(value, default=_literal, option=option)
    except orjson.JSONEncodeError as error:
        if "64-bit" not in str(error):
            raise
    return orjson.dumps(_big_integers_as_text(value), default=_literal, option=option)


def _big_integers_as_text(value: Any) -> Any:
    """``value`` with each int orjson cannot write as a fragment of its digits (rare: only
    JSON numbers past 64 bits read back by :func:`loads` are such ints)."""
    if isinstance(value, dict):
        return {key: _big_integers_as_text(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_big_integers_as_text(item) for item in value]
    if isinstance(value, int) and not _INT64_MIN <= value <= _UINT64_MAX:
        return orjson.Fragment(str(value))
    return value
