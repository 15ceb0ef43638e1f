"""Promotion and the online store agree: a version takes @production only once the online store holds
the snapshot of its as_of or a later one (materialized on the way when it is older, refused with the
reason when that is impossible), whichever path promotes it: `promote`, `monitor` (and `pipeline`,
which materializes its month before it trains)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import pytest

from streamflow.settings import Settings
from tests.cli_support import Result, assert_one_line_error, cli_env, run

JAN, FEB = date(2024, 1, 31), date(2024, 2, 29)


@dataclass(frozen=True)
class Stack:
    settings: Settings
    env: dict[str, str]
    cwd: Path
    baseline: int  # trained at JAN, never promoted by the fixture

    def run(self, *args: str) -> Result:
        return run(self.env, *args, cwd=self.cwd)

    def online(self) -> date | None:
        from streamflow.features.materialize import last_materialization

        last = last_materialization(self.settings)
        return None if last is None else last.snapshot_as_of


@pytest.fixture(scope="module")
def stack(settings_factory: Callable[[str], Settings], tmp_path_factory: pytest.TempPathFactory) -> Stack:
    from streamflow.data.generate import generate_months
    from streamflow.data.ingest import ingest_month
    from streamflow.features.apply import apply
    from streamflow.features.materialize import materialize
    from streamflow.training.train import train_model

    settings = settings_factory("embedded")
    for folder, as_of in generate_months(
        tmp_path_factory.mktemp("months"), users=500, months=2, seed=5, start=JAN
    ):
        ingest_month(folder, as_of, settings)
    apply(settings)
    materialize(settings, JAN)  # the online store serves January
    baseline = train_model(JAN, "baseline", feature_service="churn_v1", settings=settings).version
    return Stack(settings, cli_env(settings), tmp_path_factory.mktemp("cwd"), baseline)


def test_monitor_materializes_the_month_it_promotes(stack: Stack) -> None:
    assert stack.online() == JAN
    # No production yet and a threshold of 0: the candidate is trained on February and promoted.
    r = stack.run(
        "monitor", "--reference", JAN.isoformat(), "--current", FEB.isoformat(), "--threshold", "0", "--json"
    )
    assert r.code == 0, r
    out = json.loads(r.stdout)
    assert out["promoted"] is True and out["online_as_of"] == FEB.isoformat(), out
    assert stack.online() == FEB
    assert "error ignored terminating" not in r.stderr, r  # psycopg's aborted-pipeline noise (logs.py)


def test_promote_materializes_an_older_online_store_first(stack: Stack) -> None:
    from streamflow.features.materialize import materialize
    from streamflow.training.train import train_model

    materialize(stack.settings, JAN)  # back to January (a rollback of the online store)
    february = train_model(FEB, "logreg", feature_service="churn_v1", settings=stack.settings).version

    r = stack.run("promote", "--version", str(february), "--force", "--json")
    assert r.code == 0, r
    out = json.loads(r.stdout)
    assert (out["promoted"], out["materialized"], out["online_as_of"]) == (True, True, FEB.isoformat()), out
    assert stack.online() == FEB

    # An older model with newer features is fine: nothing to materialize.
    r = stack.run("promote", "--version", str(stack.baseline), "--force", "--json")
    assert r.code == 0, r
    out = json.loads(r.stdout)
    assert (out["promoted"], out["materialized"], out["online_as_of"]) == (True, False, FEB.isoformat()), out


def test_promotion_is_refused_when_the_online_store_cannot_be_brought_up_to_date(stack: Stack) -> None:
    """An online store that cannot be written (here a Redis nobody runs): refused, alias unchanged."""
    from streamflow.registry import production_version
    from streamflow.training.train import train_model

    february = train_model(FEB, "logreg", feature_service="churn_v1", settings=stack.settings).version
    before = production_version(stack.settings)
    redis = {"STREAMFLOW_ONLINE_STORE": "redis", "STREAMFLOW_REDIS_URL": "redis://127.0.0.1:9/0"}
    r = run(stack.env | redis, "promote", "--version", str(february), "--force", cwd=stack.cwd)
    assert_one_line_error(
        r, "not promoted: the online store holds no snapshot, the version was trained at 2024-02-29,"
    )
    assert "run `streamflow features materialize --as-of 2024-02-29`, then promote again" in r.stderr
    assert production_version(stack.settings) == before
