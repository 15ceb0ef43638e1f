"""Feature-store throughput: training-set reads and materialization, side by side with Feast's writer.

Run: .venv/bin/python bench/bench_features.py [--users 100000] [--repeat 3] [--feast-baseline]
     [--no-real] [--no-legacy-read]
Not a test. Each data set (the real month_000 + month_001 when ../shared/data/seeds or
STREAMFLOW_SEEDS_DIR has them, then two generated months of --users users) is ingested into a
throwaway database on a throwaway embedded server, dropped afterwards. In one run, per data set:

- training set: ``training_set`` at the first as_of (Feast's point-in-time join plus labels), first
  build (it also ANALYZEs fresh tables) and median; "legacy read" is the same build with the offline
  job's previous reader (fetchall of Python tuples, Decimals converted one by one), for comparison.
- materialize, first: January into the empty online tables of a fresh Feast project;
  update: February after it (plan "incremental": the new month plus the rows of users absent from it
  carried over). Medians over --repeat fresh projects.
- with --feast-baseline: Feast's own ``store.materialize`` of the same update (once: it is slow), and
  a check that its tables end up with exactly the rows StreamFlow's writer left.
- peak RSS: this process's high-water mark during each measurement (reset before it; PostgreSQL's own
  memory is not included).

Entity rows are (user, feature view) pairs; online rows are (user, feature) pairs, the rows the
PostgreSQL online tables hold.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any
from unittest import mock

import pyarrow as pa
from feast import FeatureStore
from feast.infra.utils.postgres.connection_utils import _get_conn
from feast.type_map import pg_type_code_to_arrow
from psycopg import sql

from streamflow import db
from streamflow.data.generate import generate_months
from streamflow.data.ingest import ingest_month
from streamflow.features.apply import apply
from streamflow.features.config import FEAST_SCHEMA, feature_store
from streamflow.features.definitions import FEATURE_VIEWS
from streamflow.features.materialize import MaterializeResult, materialize
from streamflow.features.offline_store import ExactPostgreSQLRetrievalJob
from streamflow.settings import Settings
from streamflow.training.dataset import training_set

SEEDS = Path(
    os.environ.get("STREAMFLOW_SEEDS_DIR", Path(__file__).resolve().parents[2] / "shared/data/seeds")
)
REAL = [(SEEDS / "month_000", date(2024, 1, 31)), (SEEDS / "month_001", date(2024, 2, 29))]


def _peak_kib() -> int:
    return int(re.search(r"VmHWM:\s+(\d+)", Path("/proc/self/status").read_text()).group(1))


@contextlib.contextmanager
def peak_rss() -> Iterator[list[float]]:
    """Yields a list that receives the peak RSS in MiB reached inside the block."""
    out: list[float] = []
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    yield out
    out.append(_peak_kib() / 1024)


def _legacy_to_arrow(self: ExactPostgreSQLRetrievalJob, timeout: int | None = None) -> pa.Table:
    """The offline job's reader before COPY streaming (kept here for the comparison only)."""
    with self._query_generator() as query, _get_conn(self.config.offline_store) as conn:
        conn.read_only = True
        with conn.cursor() as cur:
            cur.execute("SET LOCAL enable_nestloop = off")
            cur.execute(query)
            schema = pa.schema([(c.name, pg_type_code_to_arrow(c.type_code)) for c in cur.description])
            rows = cur.fetchall()
    columns = list(zip(*rows, strict=True)) if rows else [() for _ in schema]

    def column(values: Any) -> pa.Array:
        if any(isinstance(v, Decimal) for v in values):
            return pa.array([None if v is None else float(v) for v in values], type=pa.float64())
        return pa.array(values)

    return pa.Table.from_arrays([column(c) for c in columns], schema=schema)


@dataclass
class Figures:
    label: str
    users: int
    ingest_s: float
    train_first_s: float
    train_s: float
    train_rss: float
    legacy_s: float | None
    legacy_rss: float | None
    first_s: float
    update_s: float
    entity_rows: int  # of the update
    online_rows: int  # of the update
    mat_rss: float
    feast_s: float | None
    identical: bool | None


def _median(values: list[float]) -> float:
    return statistics.median(values)


@contextlib.contextmanager
def _project(settings: Settings) -> Iterator[FeatureStore]:
    store = feature_store(settings, project=f"bench_{uuid.uuid4().hex[:8]}")
    apply(settings, store)
    try:
        yield store
    finally:
        store.registry.delete_project(store.project)
        with db.connect(db.target(settings), settings, autocommit=True) as conn:
            for fv in FEATURE_VIEWS:
                table = sql.Identifier(FEAST_SCHEMA, f"{store.project}_{fv.name}")
                conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(table))


def _fingerprint(settings: Settings, store: FeatureStore) -> list[tuple[int, int]]:
    with db.connect(db.target(settings), settings) as conn:
        return [
            tuple(
                conn.execute(
                    sql.SQL("SELECT count(*), sum(hashtextextended(t::text, 0)) FROM {} t").format(
                        sql.Identifier(FEAST_SCHEMA, f"{store.project}_{fv.name}")
                    )
                ).fetchone()
            )
            for fv in FEATURE_VIEWS
        ]


def _timed(fn: Callable[[], MaterializeResult], reason: str) -> MaterializeResult:
    result = fn()
    assert result.plan.reason == reason, (result.plan.reason, reason)
    return result


def measure(
    label: str, months: list[tuple[Path, date]], state: Path, repeat: int, feast: bool, legacy: bool
) -> Figures:
    settings = Settings(state_dir=state, database_name=f"sf_bench_{uuid.uuid4().hex[:8]}")
    try:
        t0 = time.perf_counter()
        for folder, as_of in months:
            ingest_month(folder, as_of, settings)
        ingest_s = time.perf_counter() - t0
        store = feature_store(settings)
        apply(settings, store)
        (_, jan), (_, feb) = months

        built = training_set(settings, jan, store=store)
        with peak_rss() as train_rss:
            train_s = _median([training_set(settings, jan, store=store).seconds for _ in range(repeat)])
        legacy_s = legacy_rss = None
        if legacy:
            with (
                mock.patch.object(ExactPostgreSQLRetrievalJob, "_to_arrow_internal", _legacy_to_arrow),
                peak_rss() as rss,
            ):
                legacy_built = training_set(settings, jan, store=store)
            assert legacy_built.fingerprint == built.fingerprint  # the same training set, bit for bit
            legacy_s, legacy_rss = legacy_built.seconds, rss[0]

        firsts, updates = [], []
        with peak_rss() as mat_rss:
            for _ in range(repeat):
                with _project(settings) as bench:
                    firsts.append(_timed(lambda s=bench: materialize(settings, jan, s), "first"))
                    updates.append(_timed(lambda s=bench: materialize(settings, feb, s), "incremental"))
                    ours = _fingerprint(settings, bench)
        feast_s = identical = None
        if feast:  # Feast's own writer, the same update: January written by ours, then February by Feast
            with _project(settings) as baseline:
                materialize(settings, jan, baseline)
                plan = updates[-1].plan
                t0 = time.perf_counter()
                with contextlib.redirect_stdout(io.StringIO()):
                    baseline.materialize(start_date=plan.window_start, end_date=plan.window_end)
                feast_s = time.perf_counter() - t0
                identical = _fingerprint(settings, baseline) == ours
        return Figures(
            label,
            updates[-1].users,
            ingest_s,
            built.seconds,
            train_s,
            train_rss[0],
            legacy_s,
            legacy_rss,
            _median([r.seconds for r in firsts]),
            _median([r.seconds for r in updates]),
            updates[-1].rows,
            updates[-1].online_rows,
            mat_rss[0],
            feast_s,
            identical,
        )
    finally:
        t = db.target(settings)
        with db.connect(t.with_db("postgres"), settings, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(t.dbname)))


def report(rows: list[Figures]) -> None:
    def opt(value: float | None, fmt: str) -> str:
        return "-" if value is None else format(value, fmt)

    print()
    print(
        "| data | users | training set (first / median) | peak RSS | legacy read: training set | peak RSS |"
        " materialize first / update | update rows/s (online) | peak RSS | Feast's writer (update) | ratio |"
        " same rows |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for f in rows:
        ratio = opt(f.feast_s / f.update_s if f.feast_s else None, ".1f")
        print(
            f"| {f.label} | {f.users:,} | {f.train_first_s:.1f} s / {f.train_s:.1f} s |"
            f" {f.train_rss:,.0f} MiB |"
            f" {opt(f.legacy_s, '.1f')} s | {opt(f.legacy_rss, ',.0f')} MiB |"
            f" {f.first_s:.1f} s / {f.update_s:.1f} s |"
            f" {f.entity_rows / f.update_s:,.0f} ({f.online_rows / f.update_s:,.0f}) | {f.mat_rss:,.0f} MiB |"
            f" {opt(f.feast_s, '.1f')} s | {ratio}x | {'-' if f.identical is None else f.identical} |"
        )
    print(
        "\ntraining set at the first as_of ('first' includes ANALYZE of fresh tables). materialize: January"
        " into empty tables, then February (incremental), medians of --repeat fresh projects. ratio = Feast's"
        " writer / update. same rows: Feast's tables hold exactly the rows StreamFlow's writer left."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=100_000, help="generated users (default 100,000)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--feast-baseline", action="store_true", help="also time Feast's own materialize")
    parser.add_argument("--no-real", action="store_true", help="skip the real months")
    parser.add_argument(
        "--no-legacy-read", action="store_true", help="skip the previous reader's training set"
    )
    args = parser.parse_args()

    results: list[Figures] = []
    with tempfile.TemporaryDirectory(prefix="bench_features_") as tmp:
        state = Path(tmp) / "state"
        legacy = not args.no_legacy_read
        try:
            if not args.no_real and SEEDS.is_dir():
                results.append(
                    measure("real month_000 + 001", REAL, state, args.repeat, args.feast_baseline, legacy)
                )
                report(results)
            data = Path(tmp) / f"gen_{args.users}"
            months = generate_months(data, users=args.users, months=2, seed=7)
            label = f"generated, {args.users:,} users"
            results.append(measure(label, months, state, args.repeat, args.feast_baseline, legacy))
            report(results)
        finally:
            db.stop_embedded(Settings(state_dir=state))


if __name__ == "__main__":
    main()
