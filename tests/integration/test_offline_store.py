"""The offline store's retrieval job on a real PostgreSQL: exact values, Feast's types, streamed batches."""

from __future__ import annotations

import contextlib
from datetime import datetime
from decimal import Decimal

import pyarrow as pa
import pytest

from streamflow import db
from streamflow.features.config import repo_config
from streamflow.features.offline_store import ExactPostgreSQLRetrievalJob, _fetch_batches
from streamflow.settings import Settings

ROWS = """
CREATE TABLE exact_values (
    id int, fee numeric(12, 2), paid numeric(14, 2), wide numeric, hours double precision,
    ratio real, small smallint, big bigint, flag boolean, label text, code varchar(8), pad char(3),
    day date, at timestamp, at_tz timestamptz
);
INSERT INTO exact_values VALUES
 (1, 29.85, 593.30, 0.1000000000000000055511151231257827, 24.483650766787413, 0.1, 32767,
  9223372036854775807, true, '', 'a', 'z', DATE '2024-01-31', TIMESTAMP '2024-01-31 01:02:03.5',
  TIMESTAMPTZ '2024-01-31 01:02:03.123456+02'),
 (2, 45.05, 1889.50, -123456789.123456789, -0.0, -3.4e38, -32768, -9223372036854775808, false,
  'a,b "quoted"', 'x y', 'ab', DATE '1999-12-31', TIMESTAMP '2000-01-01 00:00:00',
  TIMESTAMPTZ '2024-06-30 23:59:59.999999-07'),
 (3, NULL, 0.01, 'NaN', 'NaN', 'Infinity', NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
 (4, 0.00, 99999999.99, 1e-30, 5e-324, '-Infinity', 0, 0, true, E'line\\nbreak\\r, and \\\\ slash',
  '', '   ', DATE '2024-02-29', TIMESTAMP '2024-02-29 23:59:59.000001',
  TIMESTAMPTZ '2024-02-29 00:00:00+00'),
 (5, 12.10, 2.20, 1.7976931348623157e308, 1.7976931348623157e308, 1.17549435e-38, 1, 1, false,
  ' spaced ', 'é€😀', 'é', DATE '2024-03-31', TIMESTAMP '1970-01-01 00:00:00',
  TIMESTAMPTZ '1970-01-01 00:00:00+00');
"""


@pytest.fixture
def job_settings(fresh_settings: Settings) -> Settings:
    with db.connect(db.target(fresh_settings), fresh_settings, autocommit=True) as conn:
        conn.execute(ROWS)
    return fresh_settings


def _job(settings: Settings, query: str) -> ExactPostgreSQLRetrievalJob:
    return ExactPostgreSQLRetrievalJob(query=query, config=repo_config(settings), full_feature_names=False)


def _reference(settings: Settings, query: str, schema: pa.Schema) -> pa.Table:
    """The same query fetched as Python values (psycopg), numerics through float(Decimal)."""
    with db.connect(db.target(settings), settings) as conn:
        conn.execute("SET TimeZone = 'Asia/Kolkata'")  # the row path must not depend on it either
        return pa.Table.from_batches(list(_fetch_batches(conn, query, schema)), schema=schema)


def test_copy_reads_equal_exact_row_reads(job_settings: Settings) -> None:
    query = "SELECT * FROM exact_values ORDER BY id"
    table = _job(job_settings, query).to_arrow()
    assert table.num_rows == 5 and table.column("fee").num_chunks == 1
    # Feast's own types for each column, numerics as float64 and every time naive UTC.
    assert [str(t) for t in table.schema.types] == [
        "int32", "double", "double", "double", "double", "float", "int32", "int64", "bool", "string",
        "string", "string", "timestamp[us]", "timestamp[us]", "timestamp[us]",
    ]  # fmt: skip
    reference = _reference(job_settings, query, table.schema)
    for name in table.column_names:  # NaN != NaN: compare bit for bit through the buffers
        got, want = table.column(name).to_pylist(), reference.column(name).to_pylist()
        assert [repr(v) for v in got] == [repr(v) for v in want], name

    fee, paid, wide = (table.column(c).to_pylist() for c in ("fee", "paid", "wide"))
    assert fee[:3] == [29.85, 45.05, None] and paid[0] == 593.3 and type(paid[0]) is float
    assert wide[1] == float(Decimal("-123456789.123456789"))
    assert table.column("label").to_pylist()[:4] == ["", 'a,b "quoted"', None, "line\nbreak\r, and \\ slash"]
    assert table.column("code").to_pylist()[3:] == ["", "é€😀"]
    assert table.column("pad").to_pylist()[3] == "   "
    assert table.column("at_tz").to_pylist()[:2] == [
        datetime(2024, 1, 30, 23, 2, 3, 123456),
        datetime(2024, 7, 1, 6, 59, 59, 999999),
    ]
    assert table.column("day").to_pylist()[0] == datetime(2024, 1, 31)


def test_batches_stream_the_same_rows(job_settings: Settings) -> None:
    query = "SELECT g AS n, g * 0.01 AS cents FROM generate_series(1, 10001) g"
    job = _job(job_settings, query)
    batches = list(job.to_arrow_batches(batch_rows=1000))
    assert [b.num_rows for b in batches] == [1000] * 10 + [1]
    assert pa.Table.from_batches(batches).equals(job.to_arrow())
    assert pa.Table.from_batches(batches).column("cents").to_pylist()[:3] == [0.01, 0.02, 0.03]


@pytest.mark.timeout(60)
def test_a_reader_may_stop_early(job_settings: Settings) -> None:
    job = _job(job_settings, "SELECT g FROM generate_series(1, 2000000) g")
    with contextlib.closing(job.to_arrow_batches(batch_rows=10_000)) as batches:
        for n, batch in enumerate(batches):
            assert batch.num_rows == 10_000
            if n == 2:
                break  # closing drops the connection, which ends the COPY: no hang
    assert _job(job_settings, "SELECT 1 AS one").to_arrow().to_pylist() == [{"one": 1}]


def test_edge_shapes(job_settings: Settings) -> None:
    # A one-column NULL is an empty CSV line; repeated names; no rows; the planning settings apply.
    nulls = _job(job_settings, "SELECT NULL::text AS a UNION ALL SELECT 'x' UNION ALL SELECT NULL")
    assert nulls.to_arrow().column("a").to_pylist() == [None, "x", None]
    assert _job(job_settings, "SELECT 1 AS a, 2.5::numeric AS a").to_arrow().to_pylist() == [{"a": 2.5}]
    empty = _job(job_settings, "SELECT * FROM exact_values WHERE false").to_arrow()
    assert empty.num_rows == 0 and empty.schema.field("fee").type == pa.float64()
    assert list(_job(job_settings, "SELECT 1 AS x WHERE false").to_arrow_batches()) == []
    setting = _job(job_settings, "SELECT current_setting('enable_nestloop') AS s;").to_arrow()
    assert setting.column("s").to_pylist() == ["off"]


def test_types_csv_cannot_carry_fall_back_to_rows(job_settings: Settings) -> None:
    table = _job(job_settings, "SELECT '\\x00ff'::bytea AS b, 1.25::numeric AS n").to_arrow()
    assert table.to_pylist() == [{"b": b"\x00\xff", "n": 1.25}]
