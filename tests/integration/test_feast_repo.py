"""Feast's own CLI agrees with StreamFlow: in the state folder's Feast repo, after StreamFlow applied
and materialized, ``feast plan`` reports no changes and ``feast apply`` leaves everything as it was."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from datetime import date
from pathlib import Path

import pytest
from psycopg import sql

from streamflow import db
from streamflow.settings import Settings
from tests.cli_support import cli_env

JAN = date(2024, 1, 31)
FEAST = str(Path(sys.executable).with_name("feast"))


def feast(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    """`feast ARGS` run by a user from inside the repo folder."""
    return subprocess.run(
        [FEAST, *args],
        cwd=settings.feast_dir,
        env=cli_env(settings),
        capture_output=True,
        text=True,
        timeout=300,
    )


def state(settings: Settings) -> dict[str, object]:
    """The registry's objects and the online store's rows, as StreamFlow sees them."""
    from streamflow.features.config import feature_store, reset_feature_stores

    reset_feature_stores()  # a fresh registry read, not this process's cache
    store = feature_store(settings)
    registry = {
        "entities": sorted(e.name for e in store.list_entities()),
        "views": sorted(v.name for v in store.list_feature_views()),
        "services": sorted(s.name for s in store.list_feature_services()),
    }
    with db.connect(db.target(settings), settings) as conn:
        tables = [
            r[0]
            for r in conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'feast' AND tablename LIKE 'streamflow_%'"
            )
        ]
        rows = {
            t: conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier("feast", t))).fetchone()[
                0
            ]
            for t in sorted(tables)
        }
        triggers = conn.execute(
            "SELECT count(*) FROM pg_trigger WHERE tgname = 'streamflow_online_changed'"
        ).fetchone()[0]
    return registry | {"online_rows": rows, "triggers": triggers}


@pytest.fixture(scope="module")
def applied(
    settings_factory: Callable[[str], Settings], tmp_path_factory: pytest.TempPathFactory
) -> Settings:
    from streamflow.data.generate import generate_months
    from streamflow.data.ingest import ingest_month
    from streamflow.features.apply import apply
    from streamflow.features.materialize import materialize

    settings = settings_factory("embedded")
    [(folder, as_of)] = generate_months(
        tmp_path_factory.mktemp("months"), users=500, months=1, seed=3, start=JAN
    )
    ingest_month(folder, as_of, settings)
    apply(settings)
    materialize(settings, JAN)  # a materialized view differs from its definition in the registry only
    return settings


def test_the_state_folder_is_a_feast_repo(applied: Settings) -> None:
    files = sorted(p.name for p in applied.feast_dir.iterdir())
    assert files == ["definitions.py", "feature_store.yaml"]  # feast imports every .py: nothing else


def test_feast_plan_reports_no_changes(applied: Settings) -> None:
    r = feast(applied, "plan")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "No changes to registry" in r.stdout and "No changes to infrastructure" in r.stdout, r.stdout
    for verb in ("Deleted", "Created", "Updated"):
        assert verb not in r.stdout, r.stdout


def test_feast_apply_is_harmless(applied: Settings) -> None:
    before = state(applied)
    assert (
        before["views"]
        and before["services"] == ["churn_v1", "churn_v2"]
        and all(before["online_rows"].values())
    )

    r = feast(applied, "apply")
    assert r.returncode == 0, r.stderr[-3000:]

    assert state(applied) == before
    r = feast(applied, "plan")
    assert r.returncode == 0 and "No changes to registry" in r.stdout, r.stdout + r.stderr[-2000:]
