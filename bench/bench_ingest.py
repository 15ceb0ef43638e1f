"""Ingestion throughput against a bare COPY of the same rows, side by side in one run.

Run: .venv/bin/python bench/bench_ingest.py [--users 1000000] [--real ../shared/data/seeds/month_000]

Uses a throwaway database on the embedded server (or STREAMFLOW_DATABASE_URL's server), dropped after.
Each repeat is a real load: the same files as of a later day (``force``), so none is the no-op of an
unchanged month (an earlier day could precede a signup date). Per data set it prints medians of
--repeat runs, side by side:

- ingest: ``ingest_month`` (validate while COPYing into a fresh revision table per file, build the
  keys, ANALYZE, attach, log; one transaction);
- validate only: the same reader with nothing sent (the Python side of the ingest);
- raw COPY: the six files as they are into fresh, unconstrained tables of the snapshot tables' column
  types, one transaction (the fastest durable load PostgreSQL offers);
- keys + attach: the primary keys, ANALYZE and ATTACH of the same tables after a raw COPY;
and the ingest / raw COPY throughput ratio (the goal is >= 0.5), with the peak RSS of this process.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import tempfile
import time
import uuid
from datetime import date, timedelta
from pathlib import Path

from psycopg import sql

from streamflow import db
from streamflow.data import revisions
from streamflow.data.contracts import CONTRACTS
from streamflow.data.generate import generate_months
from streamflow.data.ingest import ingest_month, prepare
from streamflow.data.validate import open_month
from streamflow.settings import Settings

SEEDS = Path(__file__).resolve().parents[2] / "shared/data/seeds"


def raw_copy_seconds(settings: Settings, month: Path, keys: bool = False) -> float:
    """COPY the six files as they are into fresh tables of the snapshot tables' column types, one
    transaction, dropped afterwards: the baseline the ingest ratio is measured against.

    ``keys``: time only what follows the COPY in an ingest (primary key, ANALYZE, attach to a
    scratch parent) instead."""
    with db.connect(db.target(settings), settings) as conn:
        seconds = 0.0
        with conn.transaction(force_rollback=True):  # leaves nothing behind
            conn.execute("SET LOCAL maintenance_work_mem = '256MB'")  # as the ingest sets it
            for contract in CONTRACTS:
                table = sql.Identifier(f"bench_copy_{contract.table}")
                parent = sql.Identifier(revisions.SNAPSHOT_TABLES[contract.table])
                conn.execute(sql.SQL("CREATE TABLE {} (LIKE {})").format(table, parent))
                if keys:  # as an ingest's table has it: one as_of_ts, CHECKed (no scan on ATTACH)
                    conn.execute(
                        sql.SQL(
                            "ALTER TABLE {} ALTER as_of DROP NOT NULL, ALTER revision DROP NOT NULL,"
                            " ALTER as_of_ts SET DEFAULT '2000-01-01', ADD CHECK (as_of_ts = '2000-01-01')"
                        ).format(table)
                    )
                else:
                    conn.execute(
                        sql.SQL(
                            "ALTER TABLE {} ALTER as_of DROP NOT NULL, ALTER as_of_ts DROP NOT NULL,"
                            " ALTER revision DROP NOT NULL"
                        ).format(table)
                    )
                cols = sql.SQL(", ").join(map(sql.Identifier, contract.names))
                statement = sql.SQL("COPY {} ({}) FROM STDIN WITH (FORMAT csv, HEADER true)").format(
                    table, cols
                )
                started = time.perf_counter()
                with conn.cursor().copy(statement) as copy, open(month / contract.filename, "rb") as f:
                    while block := f.read(1 << 20):
                        copy.write(block)
                if not keys:
                    seconds += time.perf_counter() - started
                    continue
                scratch = sql.Identifier(f"bench_parent_{contract.table}")
                conn.execute(
                    sql.SQL("CREATE TABLE {} (LIKE {}) PARTITION BY LIST (as_of_ts)").format(scratch, table)
                )
                started = time.perf_counter()
                conn.execute(sql.SQL("ALTER TABLE {} ADD PRIMARY KEY (user_id, as_of_ts)").format(table))
                conn.execute(sql.SQL("ANALYZE {}").format(table))
                conn.execute(
                    sql.SQL("ALTER TABLE {} ATTACH PARTITION {} FOR VALUES IN ('2000-01-01')").format(
                        scratch, table
                    )
                )
                seconds += time.perf_counter() - started
    return seconds


def validate_only_seconds(month: Path, as_of: date) -> float:
    started = time.perf_counter()
    with open_month(month, as_of) as reader:
        for f in reader.files:
            for _ in f.chunks():
                pass
        reader.finish()
    return time.perf_counter() - started


def measure(label: str, month: Path, as_of: date, repeat: int) -> None:
    name = f"sf_bench_{uuid.uuid4().hex[:8]}"
    with tempfile.TemporaryDirectory() as state:
        settings = Settings(state_dir=Path(state), database_name=name)
        prepare(settings)
        rows = sum((month / c.filename).read_bytes().count(b"\n") - 1 for c in CONTRACTS)
        runs: dict[str, list[float]] = {
            "ingest": [],
            "validate only": [],
            "raw COPY": [],
            "keys + attach": [],
        }
        try:
            for k in range(repeat):
                day = as_of + timedelta(days=k)
                runs["ingest"].append(ingest_month(month, day, settings, force=True).seconds)
                runs["validate only"].append(validate_only_seconds(month, day))
                runs["raw COPY"].append(raw_copy_seconds(settings, month))
                runs["keys + attach"].append(raw_copy_seconds(settings, month, keys=True))
        finally:
            t = db.target(settings)
            with db.connect(t.with_db("postgres"), settings, autocommit=True) as conn:
                conn.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(t.dbname))
                )
    med = {k: statistics.median(v) for k, v in runs.items()}
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\n{label}: {rows:,} rows, medians of {repeat}, peak RSS {rss:,.0f} MB")
    for k, s in med.items():
        print(f"  {k:<14} {s:7.2f} s  {rows / s:>12,.0f} rows/s")
    print(f"  ingest / raw COPY throughput {med['raw COPY'] / med['ingest']:.2f} (goal >= 0.5)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--real", type=Path, default=SEEDS / "month_000")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    if args.real.is_dir():
        measure("real month_000 (7,043 users)", args.real, date(2024, 1, 31), args.repeat)
    with tempfile.TemporaryDirectory() as tmp:
        (month, as_of), *_ = generate_months(Path(tmp), users=args.users, months=1, seed=7)
        measure(f"generated ({args.users:,} users)", month, as_of, args.repeat)


if __name__ == "__main__":
    main()
