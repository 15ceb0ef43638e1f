"""Feast's online-row encodings computed in bulk equal Feast's own, value by value."""

from __future__ import annotations

import random

import numpy as np
import pyarrow as pa
import pytest
from feast import ValueType
from feast.infra.key_encoding_utils import serialize_entity_key
from feast.infra.online_stores.helpers import extract_text_and_num
from feast.protos.feast.types.EntityKey_pb2 import EntityKey as EntityKeyProto
from feast.type_map import python_values_to_proto_values

from streamflow.features.offline_store import _rebatch
from streamflow.features.online_rows import EntityKeys, _distinct, column_values


def _feast_key(value: object, value_type: ValueType) -> bytes:
    [proto] = python_values_to_proto_values(np.array([value], dtype=object), value_type)
    key = EntityKeyProto(join_keys=["user_id"], entity_values=[proto])
    return serialize_entity_key(key, entity_key_serialization_version=3)


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
        got = keys.serialized(arr).to_pylist()
        assert got == [_feast_key(v, ValueType.STRING) for v in arr.to_pylist()]


def test_other_entity_keys_use_feast_per_distinct_value() -> None:
    keys = EntityKeys("user_id", ValueType.INT64, 3)
    assert keys._prefix is None
    values = [3, 1, 3, 2**40]
    assert keys.serialized(pa.array(values)).to_pylist() == [_feast_key(v, ValueType.INT64) for v in values]


_EDGES = {
    ValueType.INT64: [
        pa.array([0, 1, -1, 127, 128, 300, 16383, 16384, 2**31 - 1, -(2**31)], pa.int32()),
        pa.array([0, 2**63 - 1, -(2**63), 2**56, 2**49 - 1, 2**35], pa.int64()),
        pa.array([0, -(2**63), 2**53 + 1, None, -5], pa.int64()),  # with nulls Feast reads floats
    ],
    ValueType.DOUBLE: [
        pa.array([0.0, -0.0, 1.5, 593.3, 29.85, 1 / 3, 1e-05, 1e16, 1e300, float("inf"), -float("inf")]),
        pa.array([float("nan"), None, 2.5]),
    ],
    ValueType.BOOL: [pa.array([True, False, None, True]), pa.array([False, True])],
    ValueType.STRING: [
        pa.array(["", "a", "é€😀\u0301", "x" * 200, None, "Month-to-month"]),
        pa.array(["b" * 130, "c"], pa.large_string()),
    ],
}


@pytest.mark.parametrize("value_num", [False, True])
@pytest.mark.parametrize(("value_type", "column"), [(t, c) for t, cs in _EDGES.items() for c in cs])
def test_bulk_values_equal_feasts_encoders(value_type: ValueType, column: pa.Array, value_num: bool) -> None:
    got = column_values(column, value_type, value_num)
    # Feast's writer: the column as NumPy values, each through python_values_to_proto_values
    protos = python_values_to_proto_values(column.to_numpy(zero_copy_only=False), value_type)
    text_num = [extract_text_and_num(p, value_num) for p in protos]
    assert got.proto.to_pylist() == [p.SerializeToString() for p in protos]
    assert got.text.to_pylist() == [t for t, _ in text_num]
    if value_num:
        assert [x if v else None for x, v in zip(got.num, got.num_valid, strict=True)] == [
            x for _, x in text_num
        ]


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
