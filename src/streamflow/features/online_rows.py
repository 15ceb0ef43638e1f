"""The rows Feast's PostgreSQL online store holds for a feature view, computed from Arrow batches.

Feast's ``online_write_batch`` stores one row per (entity, feature): the serialized entity key, the
feature name, the ValueProto's bytes, its ``value_text`` (and ``value_num`` when the table has that
column), a NULL ``vector_value``, the event time and the created time. :class:`OnlineRows` computes
exactly those values with Feast's own encoders (``python_values_to_proto_values``,
``extract_text_and_num``, ``serialize_entity_key``), each applied once per distinct value instead of
once per row, and returns them as Arrow columns of text ready for ``COPY ... (FORMAT csv)``: bytea as
``\\x`` hex, times as ISO 8601 in UTC.

Entity keys of a single string join key are built without a Python call per entity: Feast's
serialization is a fixed prefix, the value's UTF-8 length and its bytes; the prefix is taken from
``serialize_entity_key`` itself and checked against it on sample values (any other key falls back to
``serialize_entity_key`` per entity).
"""

from __future__ import annotations

import struct
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

_HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)


@dataclass(frozen=True)
class OnlineTable:
    """One of Feast's PostgreSQL online tables, as the writer needs to know it."""

    name: str  # Feast's table name, in the online store's schema
    value_num: bool  # Feast adds value_num for enable_openai_compatible_store; it writes it if present
    created: bool  # the source has a created-timestamp column

    @property
    def columns(self) -> list[str]:
        """Feast's columns, in the order Feast writes them."""
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


def _hex_bytes(data: np.ndarray) -> np.ndarray:
    """Lower-case hex digits of a uint8 array (two per byte)."""
    out = np.empty(data.size * 2, dtype=np.uint8)
    out[0::2] = _HEX[data >> 4]
    out[1::2] = _HEX[data & 0x0F]
    return out


def _strings(lengths: np.ndarray, data: np.ndarray) -> pa.Array:
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return pa.LargeStringArray.from_buffers(len(lengths), pa.py_buffer(offsets), pa.py_buffer(data))


def _utf8_hex(values: pa.Array) -> tuple[np.ndarray, pa.Array]:
    """(UTF-8 byte length of each string, hex of its bytes), vectorised over the Arrow buffers."""
    values = values.cast(pa.large_string())
    if values.null_count:
        raise ValueError("an entity key value is null")
    offsets = np.frombuffer(values.buffers()[1], dtype=np.int64)[
        values.offset : values.offset + len(values) + 1
    ]
    buffer = values.buffers()[2]
    data = np.frombuffer(buffer, dtype=np.uint8) if buffer is not None else np.empty(0, dtype=np.uint8)
    lengths = np.diff(offsets)
    return lengths, _strings(lengths * 2, _hex_bytes(data[offsets[0] : offsets[-1]]))


class EntityKeys:
    """Feast's serialized entity keys of one join key, as bytea hex literals."""

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

    def hex(self, values: pa.Array) -> pa.Array:
        if self._prefix is None:  # Feast's function, once per distinct value
            codes, distinct = _distinct(values.to_numpy(zero_copy_only=False))
            keys = pa.array(["\\x" + k.hex() for k in self._feast(list(distinct))], type=pa.large_string())
            return keys.take(pa.array(codes))
        lengths, body = _utf8_hex(values)
        length_hex = _strings(np.full(len(lengths), 8), _hex_bytes(lengths.astype("<u4").view(np.uint8)))
        prefix = pa.scalar("\\x" + self._prefix.hex(), pa.large_string())
        return pc.binary_join_element_wise(prefix, length_hex, body, pa.scalar("", pa.large_string()))


def _iso_utc(column: pa.Array) -> pa.Array:
    """Times as ISO 8601 text in UTC, as Feast stores them: ``pd.to_datetime`` of the column, naive
    values being UTC. Formatted once per distinct time (a snapshot has one)."""
    ts = pd.DatetimeIndex(pd.to_datetime(column.to_numpy(zero_copy_only=False)))
    ts = ts.tz_localize("UTC") if ts.tz is None else ts.tz_convert("UTC")
    encoded = pc.dictionary_encode(pa.array(ts, type=pa.timestamp("us", tz="UTC")))
    text = pa.array(
        [None if t is None else t.isoformat() for t in encoded.dictionary.to_pylist()], pa.string()
    )
    return text.take(encoded.indices)


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

    def encode(self, batch: pa.RecordBatch) -> pa.Table:
        """One row per (entity, feature) of ``batch``, entity by entity, in ``self.table.columns``."""
        n, k = batch.num_rows, len(self.features)
        keys = self.keys.hex(batch.column(self.join_key))
        event_ts = _iso_utc(batch.column(self.timestamp_field))
        created = (
            _iso_utc(batch.column(self.created_field)) if self.table.created else pa.nulls(n, pa.string())
        )
        parts = []
        for name, value_type in self.features:
            codes, distinct = _distinct(batch.column(name).to_numpy(zero_copy_only=False))
            protos = python_values_to_proto_values(distinct, value_type)
            text_num = [extract_text_and_num(p, self.table.value_num) for p in protos]
            take = pa.array(codes)
            columns = {
                "entity_key": keys,
                "feature_name": pa.repeat(pa.scalar(name, pa.string()), n),
                "value": pa.array(["\\x" + p.SerializeToString().hex() for p in protos], pa.string()).take(
                    take
                ),
                "value_text": pa.array([t for t, _ in text_num], pa.string()).take(take),
            }
            if self.table.value_num:  # repr: the shortest string that float8 input reads back exactly
                nums = [None if x is None else repr(x) for _, x in text_num]
                columns["value_num"] = pa.array(nums, pa.string()).take(take)
            columns |= {"vector_value": pa.nulls(n, pa.string()), "event_ts": event_ts, "created_ts": created}
            parts.append(pa.table(columns))
        rows = pa.concat_tables(parts).combine_chunks()
        # Entity by entity (a user's rows side by side in the heap, as Feast's writer leaves them).
        order = np.arange(n * k, dtype=np.int64).reshape(k, n).T.ravel()
        return rows.take(pa.array(order))
