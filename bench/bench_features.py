"""Feature-store throughput: training-set build time and materialize rows/s, real and generated data.

Run: .venv/bin/python bench/bench_features.py [--users 100000] [--big] [--repeat 3] [--feast-baseline]
Not a test. Each data set (the real month_000 + month_001, then generated months of --users users, and
of 1,000,000 users with --big) is ingested into a throwaway database on a throwaway embedded server,
dropped afterwards. Figures are medians over --repeat runs:

- training set: ``training_set`` at the first as_of (Feast's point-in-time join plus labels); the first
  build, which also ANALYZEs freshly loaded tables, is shown apart.
- materialize, first: the full window into empty online tables (inserts).
- materialize, update: forced full-window runs alternating between the two snapshots, so that every
  online row changes (upserts), as when a new month is loaded.
- with --feast-baseline: Feast's own ``store.materialize`` of one such update (once: it is slow), the
  path StreamFlow used before its bulk PostgreSQL writer.

Entity rows are (user, feature view) pairs; online rows are (user, feature) pairs, the rows the
PostgreSQL online tables hold.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from pathlib import Path

from psycopg import sql

from streamflow import db
from streamflow.data.generate import generate_months
from streamflow.data.ingest import ingest_month
from streamflow.features.definitions import FEATURE_VIEWS
from streamflow.features.store import apply, feature_store, materialize, plan_materialization
from streamflow.settings import Settings
from streamflow.training.dataset import training_set

SEEDS = Path(__file__).resolve().parents[2] / "shared/data/seeds"
REAL = [(SEEDS / "month_000", date(2024, 1, 31)), (SEEDS / "month_001", date(2024, 2, 29))]
FEATURES = sum(len(fv.features) for fv in FEATURE_VIEWS)


@dataclass
class Figures:
    label: str
    users: int
    ingest_s: float
    train_first_s: float
    train_s: float
    train_rows: int
    mat_first_s: float
    mat_update_s: float
    entity_rows: int
    feast_s: float | None


def _median(fn: Callable[[], float], repeat: int) -> float:
    return statistics.median(fn() for _ in range(repeat))


def measure(label: str, months: list[tuple[Path, date]], state: Path, repeat: int, feast: bool) -> Figures:
    settings = Settings(state_dir=state, database_name=f"sf_bench_{uuid.uuid4().hex[:8]}")
    try:
        t0 = time.perf_counter()
        for folder, as_of in months:
            ingest_month(folder, as_of, settings)
        ingest_s = time.perf_counter() - t0
        store = feature_store(settings)
        apply(settings, store)
        (_, first), (_, second) = months[0], months[1]

        built = training_set(settings, first, store=store)
        train_first_s, train_rows = built.seconds, built.rows
        train_s = _median(lambda: training_set(settings, first, store=store).seconds, repeat)

        initial = materialize(settings, first, store, force=True)
        order = iter([second, first] * repeat)
        mat_update_s = _median(lambda: materialize(settings, next(order), store, force=True).seconds, repeat)

        feast_s = None
        if feast:  # Feast's own writer, one update: the snapshot that is not loaded now
            loaded = first if repeat % 2 == 0 else second
            plan = plan_materialization(settings, second if loaded == first else first, store, force=True)
            t0 = time.perf_counter()
            with contextlib.redirect_stdout(io.StringIO()):
                store.materialize(start_date=plan.window_start, end_date=plan.window_end)
            feast_s = time.perf_counter() - t0
        return Figures(
            label,
            initial.users,
            ingest_s,
            train_first_s,
            train_s,
            train_rows,
            initial.seconds,
            mat_update_s,
            initial.rows,
            feast_s,
        )
    finally:
        t = db.target(settings)
        with db.connect(t.with_db("postgres"), settings, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(t.dbname)))


def report(rows: list[Figures]) -> None:
    print()
    print(
        f"{'data set':<26} {'users':>9} {'ingest 2 mo':>11} {'train 1st':>9} {'train':>8} "
        f"{'mat. first':>10} {'mat. update':>11} {'entity rows/s':>13} {'online rows/s':>13} {'Feast':>8} "
        f"{'speed-up':>8}"
    )
    for f in rows:
        feast = f"{f.feast_s:7.1f}s" if f.feast_s is not None else f"{'-':>8}"
        speedup = f"{f.feast_s / f.mat_update_s:7.1f}x" if f.feast_s is not None else f"{'-':>8}"
        print(
            f"{f.label:<26} {f.users:>9,} {f.ingest_s:>10.1f}s {f.train_first_s:>8.1f}s {f.train_s:>7.1f}s "
            f"{f.mat_first_s:>9.1f}s {f.mat_update_s:>10.1f}s {f.entity_rows / f.mat_update_s:>13,.0f} "
            f"{f.users * FEATURES / f.mat_update_s:>13,.0f} {feast} {speedup}"
        )
    print(
        "\ntrain: training_set at the first as_of (median; '1st' includes ANALYZE of fresh tables). "
        "mat.: materialize of the full window (first: empty online tables; update: median of forced\n"
        "runs that rewrite every row). rows/s from the update median. Feast: Feast's own materialize "
        "of one update (the path before the bulk writer); speed-up = Feast / update."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=100_000, help="generated users (default 100,000)")
    parser.add_argument("--big", action="store_true", help="also 1,000,000 generated users")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--feast-baseline", action="store_true", help="also time Feast's own materialize")
    parser.add_argument("--no-real", action="store_true", help="skip the real months")
    args = parser.parse_args()

    results: list[Figures] = []
    with tempfile.TemporaryDirectory(prefix="bench_features_") as tmp:
        state = Path(tmp) / "state"
        try:
            if not args.no_real and SEEDS.is_dir():
                results.append(measure("real (month_000+001)", REAL, state, args.repeat, args.feast_baseline))
                report(results)
            for users in [args.users, *([1_000_000] if args.big else [])]:
                data = Path(tmp) / f"gen_{users}"
                months = generate_months(data, users=users, months=2, seed=7)
                label = f"generated ({users:,} users)"
                results.append(measure(label, months, state, args.repeat, args.feast_baseline))
                report(results)
        finally:
            db.stop_embedded(Settings(state_dir=state))


if __name__ == "__main__":
    main()
