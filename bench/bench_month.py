"""A whole month, stage by stage, at several subscriber counts: does the month finish in minutes?

Run: .venv/bin/python bench/bench_month.py [--users 100000 1000000] [--no-real] [--feast-max-users 100000]

For each data set (the real months when $STREAMFLOW_SEEDS_DIR, by default ../shared/data/seeds, exists,
then generated months of each --users size) two months go through what a user runs, each stage as
its own `streamflow` process:

    generate -> ingest -> materialize -> train (the pipeline's candidate) -> promote (gate) -> score

January first (empty online store, no production model), then February (an update; the gate compares
February's candidate with January's production model). Per stage it prints seconds, rows/s, the
peak RSS of the process and its children (sampled) and the database size after it. Side by side in
the same run:

- ingest / COPY: a bare COPY of the same six files into fresh, unconstrained tables of the same
  column types in one transaction (the fastest durable load PostgreSQL offers), right after each
  ingest; the ratio is of throughputs (>= 0.5 is the goal).
- materialize / Feast: Feast's own `FeatureStore.materialize` of February's update window on the same
  database, after the month (skipped above --feast-max-users: ~4.5 min at 100k, ~50 min at 1M).

Everything is written to a throwaway state folder and database, removed at the end (--keep keeps them).
Not a test: nothing is asserted; the goals are printed as met or missed.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import itertools
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import psutil
from psycopg import sql

from bench_ingest import raw_copy_seconds
from streamflow import db
from streamflow.data.contracts import CONTRACTS
from streamflow.settings import Settings

SEEDS = Path(
    os.environ.get("STREAMFLOW_SEEDS_DIR", Path(__file__).resolve().parents[2] / "shared/data/seeds")
)
MONTHS = (date(2024, 1, 31), date(2024, 2, 29))
CLI = [sys.executable, "-m", "streamflow.cli"]


@dataclass
class Stage:
    data: str
    month: str
    name: str
    seconds: float
    rows: int
    peak_rss_mb: float
    db_mb: float

    @property
    def rate(self) -> float:
        return self.rows / self.seconds if self.seconds else 0.0


def _peak_rss_mb(proc: subprocess.Popen, every: float = 0.05) -> float:
    """The largest RSS of ``proc`` and its children together, sampled until it exits.

    Sampled rather than taken from wait4: a child's ru_maxrss starts at the forking parent's high-water
    mark, so a big parent (this process, after Feast's writer ran) would show in every stage.
    """
    peak = 0
    with contextlib.suppress(psutil.NoSuchProcess):
        top = psutil.Process(proc.pid)
        while proc.poll() is None:
            rss = 0
            for p in [top, *top.children(recursive=True)]:
                with contextlib.suppress(psutil.NoSuchProcess):
                    rss += p.memory_info().rss
            peak = max(peak, rss)
            time.sleep(every)
    return peak / 2**20


def run(argv: Sequence[str], env: dict[str, str], ok: tuple[int, ...] = (0,)) -> tuple[float, float, str]:
    """(seconds, peak RSS in MB, stdout) of one command; raises with its stderr on an exit code not in ``ok``.

    The RSS counts the process and its children (training's worker processes); the PostgreSQL
    server's memory is not in it.
    """
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        started = time.perf_counter()
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=err, text=True)
        rss = _peak_rss_mb(proc)
        proc.wait()
        seconds = time.perf_counter() - started
        out.seek(0)
        err.seek(0)
        if proc.returncode not in ok:
            raise RuntimeError(f"{' '.join(argv[3:])} failed ({proc.returncode}):\n{err.read()[-3000:]}")
        return seconds, rss, out.read()


def file_rows(path: Path) -> int:
    with open(path, "rb") as f:
        return sum(block.count(b"\n") for block in iter(lambda: f.read(1 << 20), b"")) - 1


def db_mb(settings: Settings) -> float:
    with db.connect(db.target(settings), settings) as conn:
        return conn.execute("SELECT pg_database_size(current_database())").fetchone()[0] / 2**20


def feast_writer_seconds(settings: Settings, as_of: date) -> float:
    """Feast's own materialize of the window StreamFlow's last run wrote, on the same online tables."""
    from streamflow.features.config import feature_store
    from streamflow.features.materialize import last_materialization

    store = feature_store(settings)
    last = last_materialization(settings, store)
    assert last is not None
    started = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):  # Feast draws a progress bar per view
        store.materialize(start_date=last.window_start, end_date=last.window_end)
    return time.perf_counter() - started


class Month:
    def __init__(self, label: str, settings: Settings, env: dict[str, str], model: str, service: str) -> None:
        self.label, self.settings, self.env = label, settings, env
        self.model, self.service = model, service
        self.stages: list[Stage] = []
        self.baselines: dict[str, float] = {}

    def stage(
        self, month: str, name: str, argv: Sequence[str], rows: int, ok: tuple[int, ...] = (0,)
    ) -> None:
        seconds, rss, _ = run([*CLI, *argv], self.env, ok)
        stage = Stage(self.label, month, name, seconds, rows, rss, db_mb(self.settings))
        self.stages.append(stage)
        print(
            f"  {stage.month:<10} {name:<12} {seconds:8.1f} s {stage.rate:>12,.0f} rows/s"
            f" {rss:>8,.0f} MB RSS {stage.db_mb:>9,.0f} MB in PostgreSQL",
            flush=True,
        )


def measure(
    label: str, folders: list[tuple[Path, date]], settings: Settings, env: dict[str, str], args
) -> Month:
    m = Month(label, settings, env, args.model, args.feature_service)
    print(f"\n{label}", flush=True)
    for k, (folder, as_of) in enumerate(folders):
        day = as_of.isoformat()
        rows = sum(file_rows(folder / c.filename) for c in CONTRACTS)
        users = file_rows(folder / "users.csv")
        m.stage(day, "ingest", ["ingest", str(folder), "--as-of", day], rows)
        m.baselines[f"copy {day}"] = raw_copy_seconds(settings, folder)
        print(f"  {day:<10} {'(raw COPY)':<12} {m.baselines[f'copy {day}']:8.1f} s", flush=True)
        if k == 0:
            m.stage(day, "apply", ["features", "apply"], 0)
        m.stage(day, "materialize", ["features", "materialize", "--as-of", day], users)
        m.stage(
            day, "train", ["train", "--as-of", day, "--model", m.model, "--feature-service", m.service], users
        )
        m.stage(day, "promote", ["promote", "--best"], 0, ok=(0, 4))
        m.stage(day, "score", ["score", "--as-of", day], users)
    users = file_rows(folders[-1][0] / "users.csv")
    if users <= args.feast_max_users:
        m.baselines["feast"] = feast_writer_seconds(settings, folders[-1][1])
        print(f"  {'':<10} {'(Feast writer)':<12} {m.baselines['feast']:8.1f} s", flush=True)
    return m


def _stage(m: Month, month: str, name: str) -> Stage:
    return next(s for s in m.stages if s.month == month and s.name == name)


def report(results: list[Month], users: dict[str, int]) -> None:
    print("\n| data | month | stage | seconds | rows/s | peak RSS MB | PostgreSQL MB |")
    print("|---|---|---|---|---|---|---|")
    for m in results:
        for s in m.stages:
            cells = (m.label, s.month, s.name, f"{s.seconds:.1f}", f"{s.rate:,.0f}")
            print(f"| {' | '.join(cells)} | {s.peak_rss_mb:,.0f} | {s.db_mb:,.0f} |")
    print("\n| data | month total s | ingest/COPY | materialize update/first | Feast writer / materialize |")
    print("|---|---|---|---|---|")
    goals: list[tuple[str, bool]] = []
    for m in results:
        total = sum(s.seconds for s in m.stages)
        ratios = [m.baselines[f"copy {s.month}"] / s.seconds for s in m.stages if s.name == "ingest"]
        jan, feb = (d.isoformat() for d in MONTHS)
        update = _stage(m, feb, "materialize").seconds / _stage(m, jan, "materialize").seconds
        feast = m.baselines.get("feast")
        speed = f"{feast / _stage(m, feb, 'materialize').seconds:.1f}x" if feast else "not run"
        shown = ", ".join(f"{r:.2f}" for r in ratios)
        print(f"| {m.label} | {total / 2:.1f} | {shown} | {update:.2f} | {speed} |")
        goals.append((f"{m.label}: ingest >= 0.5x raw COPY", min(ratios) >= 0.5))
        goals.append((f"{m.label}: materialize update no slower than the first load", update <= 1.0))
        if feast:
            goals.append(
                (
                    f"{m.label}: materialize >= 10x Feast's writer",
                    feast / _stage(m, feb, "materialize").seconds >= 10,
                )
            )
        if m.label.startswith("real"):
            goals.append((f"{m.label}: a month in <= 60 s", total / 2 <= 60))
        if users[m.label] >= 1_000_000:
            goals.append((f"{m.label}: a month in <= 10 minutes", total / 2 <= 600))
    generated = sorted((m for m in results if not m.label.startswith("real")), key=lambda m: users[m.label])
    for small, big in itertools.pairwise(generated):
        scale = users[big.label] / users[small.label]
        growth = sum(s.seconds for s in big.stages) / sum(s.seconds for s in small.stages)
        print(f"\n{small.label} -> {big.label}: {scale:.0f}x the users, {growth:.1f}x the time")
        for s in big.stages:
            before = _stage(small, s.month, s.name).seconds
            print(f"  {s.month} {s.name:<12} {s.seconds / before if before else float('nan'):5.1f}x")
        goals.append((f"{small.label} -> {big.label}: growth no worse than linear", growth <= scale))
    print()
    for goal, met in goals:
        print(f"{'met   ' if met else 'MISSED'} {goal}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, nargs="*", default=[100_000, 1_000_000])
    parser.add_argument("--no-real", action="store_true", help="skip the real months")
    parser.add_argument("--feast-max-users", type=int, default=100_000)
    parser.add_argument("--model", default=None, help="candidate model type (default: the pipeline's)")
    parser.add_argument(
        "--feature-service", default=None, help="candidate feature service (default: the pipeline's)"
    )
    parser.add_argument("--keep", type=Path, default=None, help="keep the state folder here")
    args = parser.parse_args()
    defaults = Settings()
    args.model = args.model or defaults.candidate_model_type
    args.feature_service = args.feature_service or defaults.candidate_feature_service

    root = args.keep or Path(tempfile.mkdtemp(prefix="bench_month_"))
    pg_dir = root / "pg"
    results: list[Month] = []
    users: dict[str, int] = {}
    data_sets: list[tuple[str, int, list[tuple[Path, date]] | None]] = []
    if not args.no_real and SEEDS.is_dir():
        data_sets.append(
            ("real months", 7043, [(SEEDS / "month_000", MONTHS[0]), (SEEDS / "month_001", MONTHS[1])])
        )
    data_sets += [(f"{n:,} users", n, None) for n in args.users]
    try:
        for label, n, folders in data_sets:
            name = f"sf_bench_{uuid.uuid4().hex[:8]}"
            state = root / name
            env = {
                **os.environ,
                "STREAMFLOW_STATE_DIR": str(state),
                "STREAMFLOW_EMBEDDED_PG_DIR": str(pg_dir),
            }
            if url := os.environ.get("STREAMFLOW_DATABASE_URL"):
                env["STREAMFLOW_DATABASE_URL"] = str(db.PgTarget.from_url(url).with_db(name).conninfo())
            else:
                env["STREAMFLOW_DATABASE_NAME"] = name
            settings = Settings(
                state_dir=state,
                embedded_pg_dir=pg_dir,
                database_name=name,
                database_url=env.get("STREAMFLOW_DATABASE_URL"),
            )
            if folders is None:
                out = root / f"data_{n}"
                seconds, rss, _ = run(
                    [*CLI, "data", "generate", str(out), "--users", str(n), "--months", "2", "--seed", "7"],
                    env,
                )
                print(f"\n{label}: generated 2 months in {seconds:.1f} s ({rss:,.0f} MB RSS)", flush=True)
                folders = [(out / "month_000", MONTHS[0]), (out / "month_001", MONTHS[1])]
            users[label] = n
            try:
                results.append(measure(label, folders, settings, env, args))
            finally:
                if args.keep is None:
                    t = db.target(settings)
                    with db.connect(t.with_db("postgres"), settings, autocommit=True) as conn:
                        conn.execute(
                            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                                sql.Identifier(t.dbname)
                            )
                        )
                        conn.execute(
                            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                                sql.Identifier(f"{t.dbname}_mlflow")
                            )
                        )
                    if folders[0][0].parent.parent == root:
                        shutil.rmtree(folders[0][0].parent, ignore_errors=True)
            report(results, users)
    finally:
        if args.keep is None:
            db.stop_embedded(Settings(embedded_pg_dir=pg_dir))
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
