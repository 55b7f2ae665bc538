"""Index rows of a resource: every search parameter of its type, extracted by the compiled
extractors and turned into rows of the index table of the parameter's type.

``_id`` and ``_lastUpdated`` are not indexed: the ``resource`` table answers them.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from sqlalchemy import Table

from emr_hub.fhir.search.composite import composite_rows
from emr_hub.fhir.search.extract import extract_all
from emr_hub.fhir.search.registry import params_for
from emr_hub.fhir.search.values import (
    TEXT_ONLY,
    DateRange,
    QuantityRow,
    ReferenceRow,
    StringRow,
    TokenRow,
    rows_for,
    token_text_rows,
)
from storage.tables import (
    PatientCompartmentRow,
    SearchCompositeRow,
    SearchDateRow,
    SearchQuantityRow,
    SearchReferenceRow,
    SearchStringRow,
    SearchTokenRow,
    SearchUriRow,
)

TOKEN: Table = SearchTokenRow.__table__  # type: ignore[assignment]
STRING: Table = SearchStringRow.__table__  # type: ignore[assignment]
REFERENCE: Table = SearchReferenceRow.__table__  # type: ignore[assignment]
DATE: Table = SearchDateRow.__table__  # type: ignore[assignment]
QUANTITY: Table = SearchQuantityRow.__table__  # type: ignore[assignment]
URI: Table = SearchUriRow.__table__  # type: ignore[assignment]
COMPOSITE: Table = SearchCompositeRow.__table__  # type: ignore[assignment]
INDEX_TABLES: tuple[Table, ...] = (TOKEN, STRING, REFERENCE, DATE, QUANTITY, URI, COMPOSITE)
COMPARTMENT: Table = PatientCompartmentRow.__table__  # type: ignore[assignment]
ROW_TABLES: tuple[Table, ...] = (*INDEX_TABLES, COMPARTMENT)
"""Every table holding rows derived from a resource's body: replaced on each write."""
TABLE_OF_TYPE = {
    "token": TOKEN,
    "string": STRING,
    "reference": REFERENCE,
    "date": DATE,
    "number": QUANTITY,
    "quantity": QUANTITY,
    "uri": URI,
}
NOT_INDEXED = frozenset({"_id", "_lastUpdated"})


def index_rows(
    resource: dict[str, Any], base_url: str | None = None
) -> dict[Table, list[dict[str, Any]]]:
    """The rows to insert for ``resource`` (which carries its final ``id``), by table."""
    resource_type, resource_id = resource["resourceType"], resource["id"]
    params = params_for(resource_type)
    out: dict[Table, list[dict[str, Any]]] = defaultdict(list)
    for code, elements in extract_all(resource).items():
        if code in NOT_INDEXED:
            continue
        param = params[code]
        table = TABLE_OF_TYPE.get(param.type)
        if table is None:
            continue
        owner = {"resource_type": resource_type, "resource_id": resource_id, "param": code}
        rows: list[Any] = []
        for element in elements:
            rows.extend(rows_for(param.type, element, base_url))
        seen: set[Any] = set()
        for row in rows:
            if row in seen or (isinstance(row, TokenRow) and row.code == TEXT_ONLY):
                continue  # text-only codings serve :text alone, from the string table
            seen.add(row)
            out[table].append(owner | _columns(row))
        if param.type == "token":
            texts = token_text_rows([r for r in rows if isinstance(r, TokenRow)])
            text_owner = owner | {"param": f"{code}:text"}
            for text in dict.fromkeys(texts):
                out[STRING].append(text_owner | _columns(text))
    owner = {"resource_type": resource_type, "resource_id": resource_id}
    out[COMPOSITE].extend(owner | row for row in composite_rows(resource))
    return out


def _columns(row: Any) -> dict[str, Any]:
    if isinstance(row, TokenRow):
        return {"system": row.system, "code": row.code}
    if isinstance(row, StringRow):
        return {"normalized": row.normalized, "exact": row.exact}
    if isinstance(row, ReferenceRow):
        return {
            "target_type": row.target_type,
            "target_id": row.target_id,
            "url": row.url,
            "identifier_system": row.identifier_system,
            "identifier_value": row.identifier_value,
        }
    if isinstance(row, DateRange):
        return {"low": row.low, "high": row.high}
    if isinstance(row, QuantityRow):
        return {
            "value": row.value,
            "low": row.low,
            "high": row.high,
            "system": row.system,
            "code": row.code,
            "unit": row.unit,
        }
    return {"value": row}  # uri
