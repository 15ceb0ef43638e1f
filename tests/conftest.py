"""Shared fixtures: throwaway databases on the embedded server and, when
``STREAMFLOW_TEST_DATABASE_URL`` is set, on that external server too.

Every test database is created here with a unique name and dropped afterwards; shared databases
are never touched.
"""

from __future__ import annotations

import csv
import functools
import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from psycopg import sql

from streamflow import db
from streamflow.settings import Settings

# The real exports live in ../shared beside the checkout (never copied into the repository).
SEEDS = Path(
    os.environ.get("STREAMFLOW_SEEDS_DIR", Path(__file__).resolve().parents[2] / "shared/data/seeds")
)
MONTHS = {"2024-01-31": SEEDS / "month_000", "2024-02-29": SEEDS / "month_001"}
EXTERNAL_URL = os.environ.get("STREAMFLOW_TEST_DATABASE_URL")
BACKENDS = ["embedded", *(["external"] if EXTERNAL_URL else [])]


GENERATED_USERS = 2_000
SOURCES = ["generated", *(["real"] if SEEDS.is_dir() else [])]


@functools.cache
def read_csv(path: Path) -> tuple[dict[str, str], ...]:
    """A month file's rows as exported (strings), read once per session."""
    with path.open(newline="") as f:
        return tuple(csv.DictReader(f))


@dataclass(frozen=True)
class Months:
    """Two consecutive monthly exports, 2024-01-31 and 2024-02-29, as folders of the six CSV files."""

    source: str  # "generated" (always) or "real" (../shared/data/seeds, when present)
    folders: dict[str, Path]  # as_of (YYYY-MM-DD) -> folder

    @property
    def jan(self) -> Path:
        return self.folders["2024-01-31"]

    @property
    def feb(self) -> Path:
        return self.folders["2024-02-29"]

    def rows(self, as_of: str, name: str) -> tuple[dict[str, str], ...]:
        return read_csv(self.folders[as_of] / f"{name}.csv")

    def users(self, as_of: str) -> int:
        return len(self.rows(as_of, "users"))

    def positives(self, as_of: str) -> int:
        return sum(r["churn_label"] == "True" for r in self.rows(as_of, "labels"))

    @property
    def user(self) -> str:
        """The first January user with internet still there in February, watching differently then."""
        online = {r["user_id"] for r in self.rows("2024-01-31", "subscriptions") if r["net_service"] != "No"}
        feb = {r["user_id"]: r["watch_hours_30d"] for r in self.rows("2024-02-29", "usage_agg_30d")}
        return next(
            r["user_id"]
            for r in self.rows("2024-01-31", "usage_agg_30d")
            if r["user_id"] in online and feb.get(r["user_id"], r["watch_hours_30d"]) != r["watch_hours_30d"]
        )

    @property
    def no_internet_user(self) -> str:
        """The first January user without internet (blank plan_stream_* in the export)."""
        return next(
            r["user_id"] for r in self.rows("2024-01-31", "subscriptions") if r["net_service"] == "No"
        )


@pytest.fixture(scope="session")
def generated_months(tmp_path_factory: pytest.TempPathFactory) -> Months:
    from streamflow.data.generate import generate_months

    written = generate_months(tmp_path_factory.mktemp("generated"), users=GENERATED_USERS, months=2, seed=11)
    return Months("generated", {as_of.isoformat(): folder for folder, as_of in written})


@pytest.fixture(scope="session", params=SOURCES)
def months(request: pytest.FixtureRequest, generated_months: Months) -> Months:
    """Each source of months: the generated ones on every clone, the real exports in addition."""
    return generated_months if request.param == "generated" else Months("real", MONTHS)


@pytest.fixture(scope="session")
def embedded_pg_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    pg_dir = tmp_path_factory.mktemp("embedded") / "pg"
    settings = Settings(embedded_pg_dir=pg_dir)
    db.start_embedded(settings)
    yield pg_dir
    db.stop_embedded(settings)


def _drop(settings: Settings) -> None:
    t = db.target(settings)
    with db.connect(t.with_db("postgres"), settings, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(t.dbname)))


@pytest.fixture(scope="session")
def settings_factory(
    embedded_pg_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[[str], Settings]]:
    """Settings for a fresh, empty database on the given backend ("embedded" or "external")."""
    made: list[Settings] = []

    def make(backend: str) -> Settings:
        name = f"sf_test_{uuid.uuid4().hex[:10]}"
        state = tmp_path_factory.mktemp(name)
        if backend == "external":
            assert EXTERNAL_URL
            url = db.PgTarget.from_url(EXTERNAL_URL).with_db(name)
            settings = Settings(state_dir=state, database_url=_url(url))
        else:
            settings = Settings(state_dir=state, embedded_pg_dir=embedded_pg_dir, database_name=name)
        made.append(settings)
        return settings

    yield make
    for settings in made:
        _drop(settings)


def _url(t: db.PgTarget) -> str:
    auth = t.user + (f":{t.password}" if t.password else "")
    return f"postgresql://{auth}@{t.host}:{t.port}/{t.dbname}"


@pytest.fixture(params=BACKENDS)
def fresh_settings(request: pytest.FixtureRequest, settings_factory: Callable[[str], Settings]) -> Settings:
    """An empty database per test, on each backend."""
    return settings_factory(request.param)


@pytest.fixture(scope="session")
def stack_settings(settings_factory: Callable[[str], Settings], months: Months) -> Settings:
    """One embedded database with both months of each source, shared by the feature-store/training/serving
    tests (read ``months`` beside it for what was ingested)."""
    from streamflow.data.ingest import ingest_month

    settings = settings_factory("embedded")
    for as_of, folder in months.folders.items():
        ingest_month(folder, as_of, settings)
    return settings
