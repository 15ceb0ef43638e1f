"""Ingestion throughput against a bare COPY of the same rows, side by side in one run.

Run: .venv/bin/python bench/bench_ingest.py [--users 1000000] [--real ../shared/data/seeds/month_000]
Uses a throwaway database on the embedded server (or STREAMFLOW_DATABASE_URL's server), dropped after.
Prints rows/s of `ingest_month` (validate + stage + upsert + snapshot + log, one transaction) and of
a raw `COPY` of the same six files into empty tables, and their ratio. Medians of --repeat runs.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from psycopg import sql

from streamflow import db
from streamflow.data.contracts import CONTRACTS, LABELS
from streamflow.data.generate import generate_months
from streamflow.data.ingest import ingest_month, prepare
from streamflow.settings import Settings

SEEDS = Path(__file__).resolve().parents[2] / "shared/data/seeds"


def raw_copy_seconds(settings: Settings, month: Path) -> float:
    """COPY the six files, as they are, into empty unconstrained tables of the same column types."""
    t = db.target(settings)
    with db.connect(t, settings) as conn:
        started = time.perf_counter()
        for contract in CONTRACTS:
            table = sql.Identifier(f"bare_{contract.table}")
            like = "labels" if contract is LABELS else contract.table
            conn.execute(sql.SQL("CREATE TEMP TABLE {} (LIKE {})").format(table, sql.Identifier(like)))
            drop = [c for c in ("as_of", "as_of_ts") if contract is LABELS or c == "as_of"]
            for column in drop:
                conn.execute(sql.SQL("ALTER TABLE {} DROP COLUMN {}").format(table, sql.Identifier(column)))
            data = (month / contract.filename).read_bytes()
            header = data.split(b"\n", 1)[0].decode().strip().split(",")
            cols = sql.SQL(", ").join(map(sql.Identifier, header))
            with conn.cursor().copy(
                sql.SQL("COPY {} ({}) FROM STDIN WITH (FORMAT csv, HEADER true)").format(table, cols)
            ) as copy:
                copy.write(data)
        conn.commit()
        return time.perf_counter() - started


def measure(label: str, month: Path, as_of: str, repeat: int) -> None:
    name = f"sf_bench_{uuid.uuid4().hex[:8]}"
    with tempfile.TemporaryDirectory() as state:
        settings = Settings(state_dir=Path(state), database_name=name)
        prepare(settings)
        rows = sum((month / c.filename).read_bytes().count(b"\n") - 1 for c in CONTRACTS)
        ingest_s, copy_s = [], []
        try:
            for _ in range(repeat):
                ingest_s.append(ingest_month(month, as_of, settings).seconds)
                copy_s.append(raw_copy_seconds(settings, month))
        finally:
            t = db.target(settings)
            with db.connect(t.with_db("postgres"), settings, autocommit=True) as conn:
                conn.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(t.dbname))
                )
    i, c = statistics.median(ingest_s), statistics.median(copy_s)
    print(
        f"{label:<28} rows {rows:>9,}  ingest {rows / i:>10,.0f} rows/s ({i:6.2f} s)  "
        f"raw COPY {rows / c:>10,.0f} rows/s ({c:6.2f} s)  ingest/COPY throughput {c / i:.2f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--real", type=Path, default=SEEDS / "month_000")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    if args.real.is_dir():
        measure("real month_000 (7,043 users)", args.real, "2024-01-31", args.repeat)
    with tempfile.TemporaryDirectory() as tmp:
        (month, as_of), *_ = generate_months(Path(tmp), users=args.users, months=1, seed=7)
        measure(f"generated ({args.users:,} users)", month, as_of.isoformat(), args.repeat)


if __name__ == "__main__":
    main()
