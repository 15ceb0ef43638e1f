"""The rows Feast's PostgreSQL online store holds for a feature view, computed from Arrow batches.

Feast's ``online_write_batch`` stores one row per (entity, feature): the serialized entity key, the
feature name, the ValueProto's bytes, its ``value_text`` (and ``value_num`` when the table has that
column), a NULL ``vector_value``, the event time and the created time. :meth:`OnlineRows.copy_data`
computes exactly those values and returns them as the tuples of a PostgreSQL binary ``COPY``
(between :data:`COPY_HEADER` and :data:`COPY_TRAILER`), built with Arrow and numpy over whole
columns, no Python call per row.

The ValueProto of Feast's scalar types is a one-field protobuf message: a tag byte, then a varint
(int64, bool, a string's length) or 8 little-endian bytes (double); a missing value is the empty
message. Columns of the Arrow types the offline store returns for Feast's INT64, DOUBLE, BOOL and
STRING features are encoded that way (tests compare them with Feast's own encoders on edge values);
any other column falls back to Feast's encoders (``python_values_to_proto_values``,
``extract_text_and_num``), applied once per distinct value. ``value_text`` of a double is Python's
``str`` of the float, also computed once per distinct value.

Entity keys of a single string join key are Feast's fixed prefix, the value's UTF-8 length and its
bytes; the prefix is taken from ``serialize_entity_key`` itself and checked against it on sample
values (any other key falls back to ``serialize_entity_key`` per distinct entity).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from feast import FeatureView, ValueType
from feast.infra.key_encoding_utils import serialize_entity_key
from feast.infra.online_stores.helpers import extract_text_and_num
from feast.protos.feast.types.EntityKey_pb2 import EntityKey as EntityKeyProto
from feast.type_map import python_values_to_proto_values

# PostgreSQL binary COPY framing (https://www.postgresql.org/docs/current/sql-copy.html).
COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + bytes(8)  # signature, flags, header extension length
COPY_TRAILER = b"\xff\xff"
_NULL_FIELD = b"\xff\xff\xff\xff"
_PG_EPOCH_US = 946_684_800_000_000  # 2000-01-01 UTC, the origin of PostgreSQL's binary timestamps
_EMPTY = pa.scalar(b"", pa.large_binary())
# ValueProto field tags: (field number << 3) | wire type
_TAG_INT64, _TAG_DOUBLE, _TAG_BOOL, _TAG_STRING = 0x20, 0x29, 0x38, 0x12


@dataclass(frozen=True)
class OnlineTable:
    """One of Feast's PostgreSQL online tables, as the writer needs to know it."""

    name: str  # Feast's table name, in the online store's schema
    value_num: bool  # Feast adds value_num for enable_openai_compatible_store; it writes it if present
    created: bool  # the source has a created-timestamp column

    @property
    def columns(self) -> list[str]:
        """Feast's columns, in the order Feast writes them (and :meth:`OnlineRows.copy_data` sends them)."""
        return [
            "entity_key",
            "feature_name",
            "value",
            "value_text",
            *(["value_num"] if self.value_num else []),
            "vector_value",
            "event_ts",
            "created_ts",
        ]

    @property
    def column_types(self) -> dict[str, str]:
        """The PostgreSQL type of each column (``format_type``), which the binary encoding assumes."""
        types = {"entity_key": "bytea", "feature_name": "text", "value": "bytea", "value_text": "text"}
        types |= {"value_num": "double precision"} if self.value_num else {}
        ts = "timestamp with time zone"
        return types | {"vector_value": "bytea", "event_ts": ts, "created_ts": ts}


def _distinct(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(codes, distinct values in order of first appearance) with values[i] == distinct[codes[i]].

    Exact, so that converting each distinct value once gives Feast's bytes for every row: floats are
    compared by bit pattern (-0.0 stays apart from 0.0), and a missing value stays None (pandas would
    fold None into NaN, which Feast's type checks treat differently).
    """
    if values.dtype.kind == "f":
        codes, uniques = pd.factorize(values.view(f"i{values.itemsize}"))
        return codes, uniques.view(values.dtype)
    codes, uniques = pd.factorize(values)
    missing = codes < 0
    if missing.any():
        if any(v is not None for v in values[missing]):
            raise TypeError(f"unsupported missing values in a {values.dtype} column: only None is handled")
        uniques = np.append(np.asarray(uniques, dtype=object), None)
        codes = np.where(missing, len(uniques) - 1, codes)
    return codes, uniques


# --------------------------------------------------------------------------- byte arrays


def _binary(lengths: np.ndarray, data: np.ndarray) -> pa.LargeBinaryArray:
    """The byte strings of ``lengths`` laid end to end in ``data``."""
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return pa.LargeBinaryArray.from_buffers(
        pa.large_binary(), len(lengths), [None, pa.py_buffer(offsets), pa.py_buffer(data)]
    )


def _fixed(matrix: np.ndarray) -> pa.LargeBinaryArray:
    """Each row of a 2-D uint8 array as one byte string."""
    n, width = matrix.shape
    return _binary(np.full(n, width, dtype=np.int64), np.ascontiguousarray(matrix).ravel())


def _bytes_of(values: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(byte length of each value, their bytes end to end) of a string or binary array without nulls."""
    values = values.cast(pa.large_binary())
    offsets = np.frombuffer(values.buffers()[1], dtype=np.int64)[
        values.offset : values.offset + len(values) + 1
    ]
    buffer = values.buffers()[2]
    data = np.frombuffer(buffer, dtype=np.uint8) if buffer is not None else np.empty(0, dtype=np.uint8)
    return np.diff(offsets), data[offsets[0] : offsets[-1]]


def _varints(values: np.ndarray) -> pa.LargeBinaryArray:
    """Protobuf varints of int64 values (negative ones as their 64-bit two's complement, 10 bytes)."""
    u = values.astype(np.int64).view(np.uint64)
    shifted = [u >> np.uint64(7 * i) for i in range(10)]
    groups = np.stack([(s & np.uint64(0x7F)).astype(np.uint8) for s in shifted], axis=1)
    lengths = 1 + sum((s != 0).astype(np.int64) for s in shifted[1:])
    groups[np.arange(10) < (lengths - 1)[:, None]] |= 0x80  # continuation bit on all but the last
    return _binary(lengths, groups[np.arange(10) < lengths[:, None]])


def _join(*parts: pa.Array | pa.Scalar) -> pa.Array:
    return pc.binary_join_element_wise(*parts, _EMPTY)


def _field(values: pa.Array) -> pa.Array:
    """Binary COPY fields of byte strings: a big-endian int32 length and the bytes; NULL is length -1."""
    lengths = pc.binary_length(values).to_numpy(zero_copy_only=False)
    lengths = np.where(np.isnan(lengths), -1, lengths) if lengths.dtype.kind == "f" else lengths
    prefix = _fixed(lengths.astype(">i4").view(np.uint8).reshape(-1, 4))
    return _join(prefix, pc.fill_null(values, _EMPTY))


def _float8_field(values: np.ndarray, valid: np.ndarray) -> pa.Array:
    """Binary COPY fields of double precision values (``valid`` False: NULL)."""
    body = _fixed(np.ascontiguousarray(values, dtype=">f8").view(np.uint8).reshape(-1, 8))
    return _field(pc.if_else(pa.array(valid), body, pa.scalar(None, pa.large_binary())))


def _constant_field(value: bytes | None) -> pa.Scalar:
    """The binary COPY field of one value, for every row (``_join`` broadcasts it)."""
    return pa.scalar(
        _NULL_FIELD if value is None else struct.pack(">i", len(value)) + value, pa.large_binary()
    )


# --------------------------------------------------------------------------- entity keys


class EntityKeys:
    """Feast's serialized entity keys of one join key."""

    def __init__(self, join_key: str, value_type: ValueType, version: int) -> None:
        self.join_key, self.value_type, self.version = join_key, value_type, version
        self._prefix: bytes | None = None
        if value_type == ValueType.STRING:
            samples = ["a", "bc", "é\u00e8-9", ""]
            prefix = self._feast(["a"])[0][: -len(struct.pack("<I", 1)) - 1]
            if all(
                self._feast([s])[0] == prefix + struct.pack("<I", len(s.encode())) + s.encode()
                for s in samples
            ):
                self._prefix = prefix

    def _feast(self, values: list[object]) -> list[bytes]:
        protos = python_values_to_proto_values(np.array(values, dtype=object), self.value_type)
        return [
            serialize_entity_key(
                EntityKeyProto(join_keys=[self.join_key], entity_values=[p]),
                entity_key_serialization_version=self.version,
            )
            for p in protos
        ]

    def serialized(self, values: pa.Array) -> pa.Array:
        """``serialize_entity_key`` of each value, as a large_binary array."""
        if values.null_count:
            raise ValueError("an entity key value is null")
        if self._prefix is None:  # Feast's function, once per distinct value
            codes, distinct = _distinct(values.to_numpy(zero_copy_only=False))
            return pa.array(self._feast(list(distinct)), pa.large_binary()).take(pa.array(codes))
        lengths, data = _bytes_of(values.cast(pa.large_string()))
        length_le = _fixed(lengths.astype("<u4").view(np.uint8).reshape(-1, 4))
        return _join(pa.scalar(self._prefix, pa.large_binary()), length_le, _binary(lengths, data))


# --------------------------------------------------------------------------- values


@dataclass(frozen=True)
class _Values:
    """A column's ValueProto bytes, value_text and value_num (NaN and ``valid`` False: NULL)."""

    proto: pa.Array  # large_binary, b"" for a missing value
    text: pa.Array  # large_string with nulls
    num: np.ndarray  # float64
    num_valid: np.ndarray  # bool


def _tagged(tag: int, body: pa.Array, valid: np.ndarray) -> pa.Array:
    """tag + body where valid, else the empty message."""
    proto = _join(pa.scalar(bytes([tag]), pa.large_binary()), body)
    return pc.if_else(pa.array(valid), proto, _EMPTY)


def _int64_values(column: pa.Array) -> _Values:
    valid = column.is_valid().to_numpy(zero_copy_only=False)
    if column.null_count:  # as Feast reads it: through float64 (NumPy's integers have no missing value)
        ints = np.where(valid, column.to_numpy(zero_copy_only=False), 0).astype(np.int64)
    else:
        ints = column.cast(pa.int64()).to_numpy()
    text = pc.if_else(
        pa.array(valid), pc.cast(pa.array(ints), pa.large_string()), pa.scalar(None, pa.large_string())
    )
    return _Values(_tagged(_TAG_INT64, _varints(ints), valid), text, ints.astype(np.float64), valid)


def _double_values(column: pa.Array) -> _Values:
    values = pc.fill_null(column, np.nan).to_numpy()
    valid = ~np.isnan(values)  # Feast's pd.isnull: NaN is missing too
    body = _fixed(np.ascontiguousarray(values, dtype="<f8").view(np.uint8).reshape(-1, 8))
    codes, distinct = _distinct(values)
    text = pa.array([None if np.isnan(x) else str(float(x)) for x in distinct], pa.large_string())
    return _Values(_tagged(_TAG_DOUBLE, body, valid), text.take(pa.array(codes)), values, valid)


def _bool_values(column: pa.Array) -> _Values:
    valid = column.is_valid().to_numpy(zero_copy_only=False)
    truth = pc.fill_null(column, False).to_numpy(zero_copy_only=False)
    body = _fixed(truth.astype(np.uint8).reshape(-1, 1))
    words = pa.array(np.where(truth, "True", "False"), pa.large_string())
    text = pc.if_else(pa.array(valid), words, pa.scalar(None, pa.large_string()))
    return _Values(_tagged(_TAG_BOOL, body, valid), text, truth.astype(np.float64), valid)


def _string_values(column: pa.Array) -> _Values:
    column = column.cast(pa.large_string())
    valid = column.is_valid().to_numpy(zero_copy_only=False)
    filled = pc.fill_null(column, "")
    lengths, data = _bytes_of(filled)
    body = _join(_varints(lengths), _binary(lengths, data))
    return _Values(
        _tagged(_TAG_STRING, body, valid), column, np.zeros(len(column)), np.zeros(len(column), bool)
    )


_BULK: dict[ValueType, tuple[Callable[[pa.DataType], bool], Callable[[pa.Array], _Values]]] = {
    ValueType.INT64: (
        lambda t: pa.types.is_integer(t) and t.bit_width <= 64 and t != pa.uint64(),
        _int64_values,
    ),
    ValueType.DOUBLE: (pa.types.is_float64, _double_values),
    ValueType.BOOL: (pa.types.is_boolean, _bool_values),
    ValueType.STRING: (lambda t: pa.types.is_string(t) or pa.types.is_large_string(t), _string_values),
}


def _feast_values(column: pa.Array, value_type: ValueType, value_num: bool) -> _Values:
    """Feast's own encoders, once per distinct value."""
    codes, distinct = _distinct(column.to_numpy(zero_copy_only=False))
    protos = python_values_to_proto_values(distinct, value_type)
    text_num = [extract_text_and_num(p, value_num) for p in protos]
    take = pa.array(codes)
    proto = pa.array([p.SerializeToString() for p in protos], pa.large_binary()).take(take)
    text = pa.array([t for t, _ in text_num], pa.large_string()).take(take)
    nums = np.array([np.nan if x is None else x for _, x in text_num], dtype=np.float64)[codes]
    valid = np.array([x is not None for _, x in text_num], dtype=bool)[codes]
    return _Values(proto, text, nums, valid)


def column_values(column: pa.Array, value_type: ValueType, value_num: bool = False) -> _Values:
    """Feast's encodings of one feature column: in bulk for the types above, else Feast's encoders."""
    bulk = _BULK.get(value_type)
    if bulk is not None and bulk[0](column.type):
        return bulk[1](column)
    return _feast_values(column, value_type, value_num)


def _timestamp_field(column: pa.Array) -> pa.Array:
    """Binary timestamptz fields: ``pd.to_datetime`` of the column, naive values being UTC, as Feast
    stores them."""
    ts = pd.DatetimeIndex(pd.to_datetime(column.to_numpy(zero_copy_only=False)))
    ts = ts.tz_localize("UTC") if ts.tz is None else ts.tz_convert("UTC")
    micros = pa.array(ts, type=pa.timestamp("us", tz="UTC")).cast(pa.int64())
    valid = micros.is_valid().to_numpy(zero_copy_only=False)
    body = pc.fill_null(micros, 0).to_numpy() - _PG_EPOCH_US
    data = _fixed(body.astype(">i8").view(np.uint8).reshape(-1, 8))
    return _field(pc.if_else(pa.array(valid), data, pa.scalar(None, pa.large_binary())))


@dataclass(frozen=True)
class CopyChunk:
    """The online rows of a batch of entities, as binary COPY tuples (:meth:`OnlineRows.encode`)."""

    entities: int  # entity rows of the batch
    data: memoryview  # their online rows (entities x features), entity by entity


class OnlineRows:
    """Converts batches of a view's offline rows (join key, features, event time) into Feast's online rows."""

    def __init__(self, fv: FeatureView, table: OnlineTable, version: int) -> None:
        join_keys = {e.name: e.dtype.to_value_type() for e in fv.entity_columns}
        if len(join_keys) != 1:
            raise NotImplementedError(f"{fv.name}: bulk materialization handles one join key")
        [(self.join_key, key_type)] = join_keys.items()
        self.keys = EntityKeys(self.join_key, key_type, version)
        self.table = table
        self.features = [(f.name, f.dtype.to_value_type()) for f in fv.features]
        self.timestamp_field = fv.batch_source.timestamp_field
        self.created_field = fv.batch_source.created_timestamp_column

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self.features]

    def copy_data(self, batch: pa.RecordBatch | pa.Table) -> memoryview:
        """Feast's online rows of ``batch`` (one per entity and feature, entity by entity, in
        ``self.table.columns``) as PostgreSQL binary COPY tuples, without :data:`COPY_HEADER` and
        :data:`COPY_TRAILER`: the bytes between them of ``COPY ... FROM STDIN (FORMAT binary)``.
        Text is UTF-8: the session's client_encoding must be UTF8."""
        n = batch.num_rows
        if n == 0:
            return memoryview(b"")
        column = (
            batch.column if isinstance(batch, pa.RecordBatch) else lambda c: batch.column(c).combine_chunks()
        )
        fields = len(self.table.columns)
        head = _join(
            pa.scalar(struct.pack(">h", fields), pa.large_binary()),
            _field(self.keys.serialized(column(self.join_key))),
        )
        created = (
            _timestamp_field(column(self.created_field)) if self.table.created else _constant_field(None)
        )
        tail = _join(_constant_field(None), _timestamp_field(column(self.timestamp_field)), created)
        rows = []
        for name, value_type in self.features:
            values = column_values(column(name), value_type, self.table.value_num)
            parts = [
                head,
                _constant_field(name.encode()),
                _field(values.proto),
                _field(values.text.cast(pa.large_binary())),
            ]
            if self.table.value_num:
                parts.append(_float8_field(values.num, values.num_valid))
            rows.append(_join(*parts, tail))
        # One byte string per entity holding its rows side by side, as Feast's writer leaves them.
        entities = _join(*rows)
        offsets = np.frombuffer(entities.buffers()[1], dtype=np.int64)
        start, end = offsets[entities.offset], offsets[entities.offset + n]
        return memoryview(entities.buffers()[2])[start:end]

    def encode(self, batch: pa.RecordBatch | pa.Table) -> CopyChunk:
        """:meth:`copy_data` of ``batch`` with its entity count."""
        return CopyChunk(batch.num_rows, self.copy_data(batch))
