"""JSON Patch (RFC 6902) with bounded work and errors that never show stored content.

The operations run one at a time on a copy of the resource, so a failure names the operation
(its index, ``op`` and ``path``) and nothing of the document: the library's own messages quote
the document, and a failing ``test`` would print the value it compared, which a caller without
read access must not see (:func:`apply_patch` is also where a patch's reading is bounded).

Bounds: at most :data:`MAX_OPERATIONS` operations, and the copies and additions together may
grow the resource by at most :data:`MAX_GROWTH_BYTES` beyond what the patch itself carries.
A patch repeating ``copy`` of a subtree into itself doubles the resource each time: twenty
such operations in a 2 KB body would otherwise ask for gigabytes.
"""

from __future__ import annotations

import copy
from typing import Any

import jsonpatch
from jsonpointer import JsonPointer, JsonPointerException

from emr_hub.errors import FhirError, Issue, bad_request
from storage import json_codec

MAX_OPERATIONS = 1000
MAX_GROWTH_BYTES = 4 * 1024 * 1024
OPS = frozenset({"add", "remove", "replace", "move", "copy", "test"})


def apply_patch(
    resource: dict[str, Any], operations: Any, resource_type: str, resource_id: str
) -> dict[str, Any]:
    """``resource`` with ``operations`` applied; 400 for a malformed patch, 422 for one that
    cannot be applied, changes ``resourceType`` or ``id``, or grows the resource too much."""
    if not isinstance(operations, list):
        raise bad_request("A JSON Patch body is an array of operations", code="structure")
    if len(operations) > MAX_OPERATIONS:
        raise FhirError(
            422,
            [Issue("too-costly", f"A JSON Patch has at most {MAX_OPERATIONS} operations")],
        )
    document: Any = copy.deepcopy(resource)
    budget = MAX_GROWTH_BYTES
    for index, operation in enumerate(operations):
        op, path = _shape(operation, index)
        if op == "copy":
            budget -= _size_at(document, operation.get("from"), index, op, path)
        elif op in ("add", "replace"):
            budget -= len(json_codec.dumps(operation.get("value")))
        if budget < 0:
            raise FhirError(
                422,
                [
                    Issue(
                        "too-costly",
                        f"JSON Patch operation {index} ({op} {path}) would grow the resource by "
                        f"more than {MAX_GROWTH_BYTES // (1024 * 1024)} MiB",
                    )
                ],
            )
        try:
            document = jsonpatch.JsonPatch([operation]).apply(document, in_place=True)
        except jsonpatch.JsonPatchTestFailed:
            raise _failed(index, op, path, "the test did not hold") from None
        except (
            jsonpatch.JsonPatchException,
            JsonPointerException,
            TypeError,
            KeyError,
            ValueError,
            IndexError,
        ):
            raise _failed(index, op, path, "its path or value does not fit the resource") from None
    if (
        not isinstance(document, dict)
        or document.get("resourceType") != resource_type
        or document.get("id") != resource_id
    ):
        raise FhirError(422, [Issue("processing", "JSON Patch may not change resourceType or id")])
    return document


def _shape(operation: Any, index: int) -> tuple[str, str]:
    where = f"JSON Patch operation {index}"
    if not isinstance(operation, dict):
        raise bad_request(f"{where} is not an object", code="structure")
    op, path = operation.get("op"), operation.get("path")
    if op not in OPS:
        raise bad_request(f"{where}: op must be one of {', '.join(sorted(OPS))}")
    if not isinstance(path, str):
        raise bad_request(f"{where}: path must be a JSON Pointer string")
    return op, path[:200]


def _size_at(document: Any, pointer: Any, index: int, op: str, path: str) -> int:
    if not isinstance(pointer, str):
        raise bad_request(f"JSON Patch operation {index}: from must be a JSON Pointer string")
    try:
        value = JsonPointer(pointer).resolve(document)
    except JsonPointerException:
        raise _failed(index, op, path, "its from path is not in the resource") from None
    return len(json_codec.dumps(value))


def _failed(index: int, op: str, path: str, why: str) -> FhirError:
    return FhirError(
        422, [Issue("processing", f"JSON Patch operation {index} ({op} {path}) failed: {why}")]
    )
