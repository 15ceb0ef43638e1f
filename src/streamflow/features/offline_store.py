"""Feast's PostgreSQL offline store, read exactly and as a stream of Arrow record batches.

Every offline read of StreamFlow goes through :class:`ExactPostgreSQLRetrievalJob`: training sets and
batch scoring (``get_historical_features``), materialization (``pull_latest_from_table_or_query``),
Feast's own writers too. Feast's job fetches all rows as Python tuples and casts numeric columns
through decimal128, which is not exact (a stored 593.3 comes back as 593.3000000000001). This one has
PostgreSQL send the result as CSV (``COPY (query) TO STDOUT``) and pyarrow's CSV reader parse it
straight into typed columns, with no Python object per value:

- numeric text is parsed as float64, correctly rounded: a stored 593.3 is the float 593.3, which is
  what ``float(Decimal("593.3"))`` gives; doubles are printed by PostgreSQL in their shortest exact
  form and read back bit for bit;
- every non-null value is quoted (``FORCE_QUOTE *``), so an empty string stays "" and only an
  unquoted empty field, PostgreSQL's NULL, is null;
- column types are Feast's (``pg_type_code_to_arrow`` of the query's column types); timestamps with
  a time zone are read in UTC and returned naive, as Feast's job returns them. A column of a type the
  CSV reader cannot parse exactly (bytea, arrays, json, ...) makes the job fall back to fetching rows.

The job also plans without nested loops: Feast's point-in-time query filters each feature table on
the entity timestamps' min and max, values the planner cannot know; it guessed 50 rows and
nested-looped the deduplicated rows against themselves, quadratic in the users (5,000 users: 40 s
instead of 0.15 s). These reads always cover every user of a snapshot, where hash joins are right.

This module and ``online_writer.py`` are the two that reach into Feast's internals (``_get_conn``,
``_query_generator``, ``FeatureStore._get_provider``, ``feast.utils._get_column_names``).
"""

from __future__ import annotations

import contextlib
import inspect
import io
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Literal

import psycopg
import pyarrow as pa
import pyarrow.csv as pacsv
from feast import FeatureStore, FeatureView
from feast.errors import ZeroColumnQueryResult
from feast.infra.offline_stores.contrib.postgres_offline_store.postgres import (
    PostgreSQLOfflineStore,
    PostgreSQLOfflineStoreConfig,
    PostgreSQLRetrievalJob,
)
from feast.infra.offline_stores.offline_store import RetrievalJob
from feast.infra.utils.postgres.connection_utils import _get_conn
from feast.type_map import pg_type_code_to_arrow
from feast.utils import _get_column_names

# CSV bytes per block read by pyarrow (~40,000 training-set rows); batches are re-cut to whole rows.
_BLOCK_BYTES = 8 << 20
DEFAULT_BATCH_ROWS = 100_000
_UTC_TIMESTAMP = pa.timestamp("us", tz="UTC")
# PostgreSQL type OIDs whose CSV text pyarrow parses exactly into Feast's Arrow type.
_COPY_TYPES = {
    16: pa.bool_(),  # boolean: t / f
    20: pa.int64(),
    21: pa.int32(),  # smallint: Feast's INT32
    23: pa.int32(),
    700: pa.float32(),  # real: PostgreSQL prints the shortest string that reads back exactly
    701: pa.float64(),
    1700: pa.float64(),  # numeric: decimal text, correctly rounded to the nearest double
    19: pa.string(),
    25: pa.string(),
    1042: pa.string(),
    1043: pa.string(),
    1082: pa.timestamp("us"),  # date: midnight, as Feast's job returns it
    1114: pa.timestamp("us"),
    1184: _UTC_TIMESTAMP,  # timestamptz: printed in UTC (TimeZone below), returned naive
}
# The session settings that make COPY's text what the reader above expects.
_READ_SETTINGS = (
    "SET LOCAL enable_nestloop = off",
    "SET LOCAL TimeZone = 'UTC'",
    "SET LOCAL DateStyle = 'ISO, YMD'",
    "SET LOCAL extra_float_digits = 1",  # shortest exact float text (PostgreSQL >= 12)
    "SET LOCAL client_encoding = 'UTF8'",
)


class ExactPostgreSQLRetrievalJob(PostgreSQLRetrievalJob):
    """Feast's PostgreSQL retrieval, exact and streamed (see the module's docstring)."""

    def _to_arrow_internal(self, timeout: int | None = None) -> pa.Table:
        with self._stream(_BLOCK_BYTES) as (schema, batches):
            table = pa.Table.from_batches(list(batches), schema=schema)
        # One chunk per column: Feast's own online writer converts only a table's first batch.
        return table.combine_chunks()

    def to_arrow_batches(self, batch_rows: int = DEFAULT_BATCH_ROWS) -> Iterator[pa.RecordBatch]:
        """The result as record batches of ``batch_rows`` rows (the last one shorter), read while the
        caller consumes them: memory stays bounded by a few batches whatever the result's size. A
        caller that stops early should close the iterator (``contextlib.closing``): that ends the COPY
        and the connection at once rather than whenever the generator is collected."""
        if self.on_demand_feature_views:
            raise NotImplementedError("on-demand feature views need the whole table: use to_arrow()")
        if batch_rows < 1:
            raise ValueError(f"batch_rows must be >= 1, got {batch_rows}")
        with self._stream(min(_BLOCK_BYTES, max(1 << 16, batch_rows * 64))) as (_, batches):
            yield from _rebatch(batches, batch_rows)

    @contextlib.contextmanager
    def _stream(self, block_bytes: int) -> Iterator[tuple[pa.Schema, Iterator[pa.RecordBatch]]]:
        with self._query_generator() as query, _get_conn(self.config.offline_store) as conn:
            conn.read_only = True
            for setting in _READ_SETTINGS:  # this transaction only
                conn.execute(setting)
            query = query.strip().rstrip(";")
            cur = conn.execute(f"SELECT * FROM ({query}) AS streamflow_q LIMIT 0")  # types, no rows
            if not cur.description:
                raise ZeroColumnQueryResult(query)
            names = [c.name for c in cur.description]
            codes = [c.type_code for c in cur.description]
            schema = pa.schema([(n, pg_type_code_to_arrow(c)) for n, c in zip(names, codes, strict=True)])
            if all(_copyable(code, field.type) for code, field in zip(codes, schema, strict=True)):
                batches = _copy_batches(conn, query, codes, schema, block_bytes)
            else:
                batches = _fetch_batches(conn, query, schema)
            try:
                yield schema, batches
            finally:
                if inspect.getgeneratorstate(batches) != inspect.GEN_CLOSED:
                    # A reader that stopped early. Closing the connection stops the server at once;
                    # psycopg's own way (cancel, then drain the COPY) could wait for good on a race.
                    conn.close()
                    with contextlib.suppress(psycopg.Error):
                        batches.close()


def _copyable(code: int, feast_type: pa.DataType) -> bool:
    read = _COPY_TYPES.get(code)
    return read is not None and (
        read == feast_type or (read == _UTC_TIMESTAMP and feast_type == pa.timestamp("us"))
    )


class _CopyReader(io.RawIOBase):
    """A readable file over the data rows of a running ``COPY ... TO STDOUT``."""

    def __init__(self, rows: Iterable[Any]) -> None:
        self._rows = iter(rows)
        self._pending = memoryview(b"")

    def readable(self) -> bool:
        return True

    def at_end(self) -> bool:
        """No data left (reads ahead one row if need be)."""
        if not self._pending:
            row = next(self._rows, None)
            if row is None:
                return True
            self._pending = memoryview(row)
        return False

    def readinto(self, buffer: Any) -> int:
        out = memoryview(buffer).cast("B")
        n = 0
        while n < len(out):
            if not self._pending:
                row = next(self._rows, None)
                if row is None:
                    break
                self._pending = memoryview(row)
            k = min(len(out) - n, len(self._pending))
            out[n : n + k] = self._pending[:k]
            self._pending = self._pending[k:]
            n += k
        return n


def _copy_batches(
    conn: psycopg.Connection, query: str, codes: list[int], schema: pa.Schema, block_bytes: int
) -> Iterator[pa.RecordBatch]:
    keys = [f"c{i}" for i in range(len(codes))]  # the query's own names may repeat
    # use_threads=False: blocks are read on the caller's thread, the only one that uses the connection.
    read_options = pacsv.ReadOptions(column_names=keys, block_size=block_bytes, use_threads=False)
    # A one-column row holding NULL is an empty line: keep it.
    parse_options = pacsv.ParseOptions(newlines_in_values=True, ignore_empty_lines=False)
    convert_options = pacsv.ConvertOptions(
        column_types={k: _COPY_TYPES[c] for k, c in zip(keys, codes, strict=True)},
        null_values=[""],
        true_values=["t"],
        false_values=["f"],
        strings_can_be_null=True,
        quoted_strings_can_be_null=False,
    )
    with conn.cursor().copy(f"COPY ({query}) TO STDOUT WITH (FORMAT csv, FORCE_QUOTE *)") as copy:
        source = _CopyReader(copy)
        if source.at_end():  # no rows: pyarrow refuses an empty file
            return
        reader = pacsv.open_csv(
            source,
            read_options=read_options,
            parse_options=parse_options,
            convert_options=convert_options,
        )
        for batch in reader:  # a generator closed early leaves the block: psycopg cancels the COPY
            columns = [
                c if c.type == f.type else c.cast(f.type) for c, f in zip(batch.columns, schema, strict=True)
            ]
            yield pa.RecordBatch.from_arrays(columns, schema=schema)


def _fetch_batches(conn: psycopg.Connection, query: str, schema: pa.Schema) -> Iterator[pa.RecordBatch]:
    """Rows as Python values, for column types the CSV reader cannot take; numerics via float()."""
    with conn.cursor(name="streamflow_rows") as cur:  # server-side: fetched in slices
        cur.execute(query)
        while rows := cur.fetchmany(DEFAULT_BATCH_ROWS):
            columns = list(zip(*rows, strict=True))
            yield pa.RecordBatch.from_arrays(
                [_arrow_column(c, f.type) for c, f in zip(columns, schema, strict=True)], schema=schema
            )


def _arrow_column(values: tuple[Any, ...], arrow_type: pa.DataType) -> pa.Array:
    if any(isinstance(v, Decimal) for v in values):
        return pa.array([None if v is None else float(v) for v in values], type=pa.float64())
    if any(isinstance(v, datetime) and v.tzinfo is not None for v in values):  # naive UTC, as Feast's job
        values = tuple(_naive_utc(v) for v in values)
    array = pa.array(values)  # as Feast's job: inferred, then cast to Feast's type
    return array if array.type == arrow_type else array.cast(arrow_type)


def _naive_utc(v: Any) -> Any:
    return v.astimezone(UTC).replace(tzinfo=None) if isinstance(v, datetime) and v.tzinfo else v


def _rebatch(batches: Iterable[pa.RecordBatch], rows: int) -> Iterator[pa.RecordBatch]:
    """The same rows, cut into batches of exactly ``rows`` (the last one shorter, none empty)."""
    pending: list[pa.RecordBatch] = []
    count = 0
    for batch in batches:
        pending.append(batch)
        count += batch.num_rows
        if count >= rows:
            table = pa.Table.from_batches(pending).combine_chunks()
            full = count // rows * rows
            yield from table.slice(0, full).to_batches(max_chunksize=rows)
            pending = table.slice(full).to_batches() if full < count else []
            count -= full
    if count:
        yield from pa.Table.from_batches(pending).combine_chunks().to_batches(max_chunksize=rows)


def _exact(job: RetrievalJob) -> ExactPostgreSQLRetrievalJob:
    assert isinstance(job, PostgreSQLRetrievalJob)
    return ExactPostgreSQLRetrievalJob(
        query=job._query_generator,
        config=job.config,
        full_feature_names=job.full_feature_names,
        on_demand_feature_views=job.on_demand_feature_views,
        metadata=job.metadata,
    )


class StreamflowPostgreSQLOfflineStoreConfig(PostgreSQLOfflineStoreConfig):
    type: Literal["streamflow.features.offline_store.StreamflowPostgreSQLOfflineStore"] = (  # type: ignore[assignment]
        "streamflow.features.offline_store.StreamflowPostgreSQLOfflineStore"
    )


class StreamflowPostgreSQLOfflineStore(PostgreSQLOfflineStore):
    """Feast's PostgreSQL offline store whose jobs read exactly and stream (ExactPostgreSQLRetrievalJob)."""

    @staticmethod
    def get_historical_features(*args: Any, **kwargs: Any) -> RetrievalJob:
        return _exact(PostgreSQLOfflineStore.get_historical_features(*args, **kwargs))

    @staticmethod
    def pull_latest_from_table_or_query(*args: Any, **kwargs: Any) -> RetrievalJob:
        return _exact(PostgreSQLOfflineStore.pull_latest_from_table_or_query(*args, **kwargs))

    @staticmethod
    def pull_all_from_table_or_query(*args: Any, **kwargs: Any) -> RetrievalJob:
        return _exact(PostgreSQLOfflineStore.pull_all_from_table_or_query(*args, **kwargs))


def record_batches(job: RetrievalJob, batch_rows: int = DEFAULT_BATCH_ROWS) -> Iterator[pa.RecordBatch]:
    """``job``'s rows in record batches of ``batch_rows``: streamed for StreamFlow's jobs, sliced from
    the whole table for any other."""
    if isinstance(job, ExactPostgreSQLRetrievalJob):
        yield from job.to_arrow_batches(batch_rows)
    else:
        yield from job.to_arrow().to_batches(max_chunksize=batch_rows)


def pull_latest(
    store: FeatureStore,
    fv: FeatureView,
    start: datetime,
    end: datetime,
    batch_rows: int = DEFAULT_BATCH_ROWS,
) -> Iterator[pa.RecordBatch]:
    """Per entity, its latest row with an event time in [start, end] (both ends inclusive), as Feast's
    materialization reads it from the offline store, in record batches."""
    entities = [store.registry.get_entity(e, store.project) for e in fv.entities]
    join_keys, features, ts_col, created_col = _get_column_names(fv, entities)
    job = store._get_provider().offline_store.pull_latest_from_table_or_query(  # type: ignore[attr-defined]
        config=store.config,
        data_source=fv.batch_source,
        join_key_columns=join_keys,
        feature_name_columns=features,
        timestamp_field=ts_col,
        created_timestamp_column=created_col,
        start_date=start,
        end_date=end,
    )
    mapping = fv.batch_source.field_mapping
    for batch in record_batches(job, batch_rows):
        if mapping:  # as Feast's source-read node: columns renamed after the read
            batch = batch.rename_columns([mapping.get(c, c) for c in batch.schema.names])
        yield batch
