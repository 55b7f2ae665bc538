"""storage.json_codec: decimals read and written as their literal, and stored so on both
databases (PostgreSQL's jsonb would turn ``1E+2`` into ``100``: the column is json)."""

from __future__ import annotations

import copy
import pickle

import orjson
import pytest
from sqlalchemy import Text, cast, select

from emr_hub.fhir.store import FhirStore
from emr_hub.hub import Hub
from storage import json_codec
from storage.json_codec import DecimalText
from storage.tables import ResourceHistoryRow, ResourceRow

TEXT = (
    b'{"a":[1.50,0.0,-0.000,100,1E+2,2.5e-3,0.1000000000000000055,'
    b"123456789012345678901234567890,-9223372036854775809,18446744073709551615],"
    b'"b":{"c":true,"d":null,"e":"1.50"}}'
)


@pytest.mark.parametrize("parse", [json_codec.loads, json_codec.loads_unique])
def test_a_parse_then_a_dump_gives_the_same_text(parse: object) -> None:
    assert callable(parse)
    parsed = parse(TEXT)
    assert json_codec.dumps(parsed) == TEXT
    assert parsed["a"][0] == 1.5 and isinstance(parsed["a"][0], float)  # computes as a float
    assert type(parsed["a"][3]) is int and parsed["b"]["e"] == "1.50"
    pretty = json_codec.dumps(parsed, orjson.OPT_INDENT_2)
    assert b"\n    1E+2,\n" in pretty and orjson.loads(pretty) == orjson.loads(TEXT)


def test_a_decimal_survives_copies_and_pickles() -> None:
    value = {"v": [DecimalText("2.50")]}
    for again in (copy.copy(value), copy.deepcopy(value), pickle.loads(pickle.dumps(value))):  # noqa: S301
        assert json_codec.dumps(again) == b'{"v":[2.50]}'


def test_request_bodies_refuse_a_key_named_twice() -> None:
    with pytest.raises(json_codec.DuplicateKey) as raised:
        json_codec.loads_unique(b'{"a":{"b":1,"b":2}}')
    assert raised.value.args == ("b",)


def test_stored_json_past_a_double_is_refused_as_orjson_refuses_it() -> None:
    for text in (b"[1e400]", b'{"a":-1e999}', b"[1.5", b"[NaN]"):
        with pytest.raises(ValueError):
            json_codec.loads(text)
        with pytest.raises(orjson.JSONDecodeError):
            orjson.loads(text)


def test_the_database_keeps_the_literals(hub: Hub) -> None:
    resource = json_codec.loads_unique(
        b'{"resourceType":"Observation","status":"final","code":{"text":"x"},'
        b'"valueQuantity":{"value":1E+2},'
        b'"component":[{"code":{"text":"y"},"valueQuantity":{"value":-0.000}}]}'
    )
    with hub.db.transaction() as session:
        store = FhirStore(session)
        stored = store.create(resource)
        store.flush()
    with hub.db.snapshot() as session:
        for table in (ResourceRow.__table__, ResourceHistoryRow.__table__):
            text = session.execute(
                select(cast(table.c.content, Text)).where(table.c.id == stored.id)
            ).scalar_one()
            assert '"value":1E+2' in text and '"value":-0.000' in text
        read = FhirStore(session).read("Observation", stored.id)
    assert read.content is not None
    assert json_codec.dumps(read.content["valueQuantity"]) == b'{"value":1E+2}'
