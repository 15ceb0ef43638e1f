"""Feast's online-row encodings computed in bulk equal Feast's own, value by value."""

from __future__ import annotations

import random

import numpy as np
import pyarrow as pa
import pytest
from feast import ValueType
from feast.infra.key_encoding_utils import serialize_entity_key
from feast.protos.feast.types.EntityKey_pb2 import EntityKey as EntityKeyProto
from feast.type_map import python_values_to_proto_values

from streamflow.features.offline_store import _rebatch
from streamflow.features.online_rows import EntityKeys, _distinct


def _feast_key(value: object, value_type: ValueType) -> str:
    [proto] = python_values_to_proto_values(np.array([value], dtype=object), value_type)
    key = EntityKeyProto(join_keys=["user_id"], entity_values=[proto])
    return "\\x" + serialize_entity_key(key, entity_key_serialization_version=3).hex()


def test_vectorised_string_entity_keys_equal_feast() -> None:
    rng = random.Random(7)
    alphabet = "abcXYZ0189-_ é€😀\u0301"
    values = [
        "7590-VHVEG",
        "",
        "a",
        *("".join(rng.choices(alphabet, k=rng.randrange(0, 40))) for _ in range(2000)),
    ]
    keys = EntityKeys("user_id", ValueType.STRING, 3)
    assert keys._prefix is not None  # the fast path is taken
    array = pa.array(values, pa.string())
    for arr in (array, array.slice(5, 500), pa.array(values, pa.large_string())):
        got = keys.hex(arr).to_pylist()
        assert got == [_feast_key(v, ValueType.STRING) for v in arr.to_pylist()]


def test_other_entity_keys_use_feast_per_distinct_value() -> None:
    keys = EntityKeys("user_id", ValueType.INT64, 3)
    assert keys._prefix is None
    values = [3, 1, 3, 2**40]
    assert keys.hex(pa.array(values)).to_pylist() == [_feast_key(v, ValueType.INT64) for v in values]


def test_distinct_keeps_float_bits_and_none() -> None:
    codes, distinct = _distinct(np.array([0.0, -0.0, 1.5, 0.0]))
    assert codes.tolist() == [0, 1, 2, 0] and np.signbit(distinct[1])
    codes, distinct = _distinct(np.array([True, None, False, None], dtype=object))
    assert [distinct[c] for c in codes] == [True, None, False, None]


@pytest.mark.parametrize("rows", [1, 3, 7, 100])
def test_rebatch_cuts_exact_batches(rows: int) -> None:
    schema = pa.schema([("x", pa.int64())])
    sizes = [4, 0, 9, 1, 6]
    batches = [
        pa.record_batch({"x": list(range(i * 10, i * 10 + n))}, schema=schema) for i, n in enumerate(sizes)
    ]
    out = list(_rebatch(batches, rows))
    assert all(b.num_rows == rows for b in out[:-1]) and 0 < out[-1].num_rows <= rows
    assert [v for b in out for v in b.column(0).to_pylist()] == [
        v for b in batches for v in b.column(0).to_pylist()
    ]
    assert list(_rebatch([], rows)) == []
