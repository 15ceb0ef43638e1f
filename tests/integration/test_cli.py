"""The ``streamflow`` command as a new user meets it: real CLI processes on a fresh database.

Every command run in the wrong order (before any ingest, before ``features apply``, with dates that
have no data, with names that do not exist) answers with ONE line on stderr that says what to do,
exit code 2, and never a traceback. Pure argument errors answer before any heavy import.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Callable
from datetime import date
from pathlib import Path

import pytest

from streamflow.settings import Settings
from tests.cli_support import assert_one_line_error, cli_env, run

JAN, FEB = date(2024, 1, 31), date(2024, 2, 29)
# What the argument checks must answer without: importing any of these takes seconds.
HEAVY = ("feast", "mlflow", "sklearn", "prefect", "evidently", "onnxruntime")


@pytest.fixture(scope="module")
def months(tmp_path_factory: pytest.TempPathFactory) -> dict[date, Path]:
    from streamflow.data.generate import generate_months

    out = tmp_path_factory.mktemp("months")
    return dict(
        (as_of, folder) for folder, as_of in generate_months(out, users=500, months=2, seed=7, start=JAN)
    )


@pytest.fixture
def fresh(settings_factory: Callable[[str], Settings], tmp_path: Path) -> tuple[dict[str, str], Path]:
    """The environment of a shell pointed at a fresh, empty database, and a working folder."""
    return cli_env(settings_factory("embedded")), tmp_path


def _without_heavy_imports(env: dict[str, str], root: Path) -> dict[str, str]:
    """``env`` in which importing any of HEAVY fails: an answer that needs one cannot be given."""
    for name in HEAVY:
        (root / name).mkdir(parents=True)
        (root / name / "__init__.py").write_text(f"raise ImportError('{name} imported before the checks')\n")
    return env | {"PYTHONPATH": os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")]))}


def test_argument_errors_answer_at_once(fresh: tuple[dict[str, str], Path]) -> None:
    # At once: before any heavy import (each costs seconds), shown by making them fail.
    env, cwd = fresh
    env = _without_heavy_imports(env, cwd / "blocked")
    cases = {
        "train --as-of 2024-13-01": "--as-of: '2024-13-01' is not a date YYYY-MM-DD",
        "train --as-of 2024-01-31 --model xgb": "--model: unknown model type 'xgb'; known: baseline, gbm, logreg",
        "train --as-of 2024-01-31 --feature-service churn_v9": "unknown feature service 'churn_v9'",
        "pipeline missing-folder --as-of 2024-01-31": "MONTH_DIR: missing-folder does not exist",
        "pipeline . --as-of 2024-01-31 --model xgb": "--model: unknown model type 'xgb'",
        "ingest missing-folder --as-of 2024-01-31": "MONTH_DIR: missing-folder does not exist",
        "ingest . --as-of 31/01/2024": "--as-of: '31/01/2024' is not a date",
        "ingest . --as-of 20240229": "--as-of: '20240229' is not a date YYYY-MM-DD",
        "features materialize --as-of 2024-02-30": "--as-of: '2024-02-30' is not a date",
        "score --as-of tomorrow": "--as-of: 'tomorrow' is not a date",
        "drift --reference 2024-01-31 --current 2024-02-31": "--current: '2024-02-31' is not a date",
        "drift --reference 2024-01-31 --current 2024-02-29 --feature-service nope": "unknown feature service",
        "monitor --reference 2024-01-31 --current 2024-02-29 --model xgb": "unknown model type 'xgb'",
        "monitor --reference 2024-01-31 --current 2024-02-29 --threshold 2": "Invalid value for '--threshold'",
        "demo --start 2024-02-30": "--start: '2024-02-30' is not a date",
        "demo --seeds missing-folder": "--seeds: missing-folder does not exist",
        "promote": "name a --version or ask for --best",
        "train --as-of 2024-01-31 --revision 0": "Invalid value for '--revision'",
        "data revisions --as-of 2024-02-30": "--as-of: '2024-02-30' is not a date",
        "data prune --as-of 2024-01-31": "Missing option '--revision'",
        "train": "Missing option '--as-of'",
        "trian --as-of 2024-01-31": "No such command 'trian'",
        "--log-level loud models": "Invalid value for '--log-level'",
    }
    for args, message in cases.items():
        r = run(env, *args.split(), cwd=cwd)
        assert_one_line_error(r, message)
    r = run(env | {"STREAMFLOW_CANDIDATE_MODEL_TYPE": "xgb"}, "models", cwd=cwd)
    assert_one_line_error(r, "invalid settings: STREAMFLOW_CANDIDATE_MODEL_TYPE='xgb'")


def test_every_command_in_the_wrong_order(
    fresh: tuple[dict[str, str], Path], months: dict[date, Path]
) -> None:
    env, cwd = fresh
    ingest_first = "no data yet: ingest a month first: streamflow ingest DIR --as-of YYYY-MM-DD"
    not_applied = "feature store not applied: run `streamflow features apply`"
    steps: list[tuple[str, str]] = [
        # Nothing ingested yet.
        (f"train --as-of {JAN}", ingest_first),
        (f"features materialize --as-of {JAN}", ingest_first),
        (f"score --as-of {JAN}", ingest_first),
        (f"drift --reference {JAN} --current {FEB}", ingest_first),
        (f"monitor --reference {JAN} --current {FEB}", ingest_first),
        ("promote --best", "no versions of streamflow_churn are registered; train one first"),
        ("promote --version 3", "streamflow_churn has no version 3"),
        ("rollback", "no version holds @production; nothing to roll back"),
        ("data revisions", ingest_first),
        (f"data prune --as-of {JAN} --revision 1", ingest_first),
    ]
    for args, message in steps:
        assert_one_line_error(run(env, *args.split(), cwd=cwd), message)
    r = run(env, "models", cwd=cwd)
    assert r.code == 0 and r.stdout.startswith("no versions of streamflow_churn yet"), r

    for as_of, folder in months.items():
        r = run(env, "ingest", str(folder), "--as-of", as_of.isoformat(), cwd=cwd)
        assert r.code == 0, r
    for args, message in (
        (f"data prune --as-of {JAN} --revision 1", "revision 1 of 2024-01-31 is the current revision"),
        (f"data prune --as-of {JAN} --revision 3", "--revision: revision 3 of 2024-01-31 does not exist"),
        (f"train --as-of {JAN} --revision 2", "--revision: revision 2 of 2024-01-31 does not exist"),
        ("data revisions --as-of 2023-12-31", "no snapshot at as_of 2023-12-31"),
    ):
        assert_one_line_error(run(env, *args.split(), cwd=cwd), message)
    # Ingested, but the feature store was never applied.
    for args in (
        f"train --as-of {JAN}",
        f"features materialize --as-of {JAN}",
        f"score --as-of {JAN}",
        f"drift --reference {JAN} --current {FEB}",
        f"monitor --reference {JAN} --current {FEB}",
    ):
        assert_one_line_error(run(env, *args.split(), cwd=cwd), not_applied)

    assert run(env, "features", "apply", cwd=cwd).code == 0
    available = "snapshots available: 2024-01-31, 2024-02-29"
    for args, message in (
        ("train --as-of 2023-12-31", f"no snapshot at as_of 2023-12-31: {available}"),
        ("train --as-of 2024-03-31", "no snapshot at as_of 2024-03-31"),
        (f"train --as-of {FEB} --label-horizon 1", "no labels at 2024-03-31"),
        ("features materialize --as-of 2023-12-31", f"no snapshot at or before 2023-12-31: {available}"),
        (f"drift --reference 2023-12-31 --current {FEB}", "no snapshot at as_of 2023-12-31"),
        (f"monitor --reference {JAN} --current 2024-04-30", "no snapshot at as_of 2024-04-30"),
        (
            f"score --as-of {JAN}",
            "no version of streamflow_churn holds @production: promote a version first (streamflow promote),"
            " or pass --version",
        ),
        (f"score --as-of {JAN} --version 5", "--version: streamflow_churn has no version 5"),
        ("promote --version 9", "streamflow_churn has no version 9"),
    ):
        assert_one_line_error(run(env, *args.split(), cwd=cwd), message)


def test_database_down_is_one_line(settings_factory: Callable[[str], Settings], tmp_path: Path) -> None:
    """An external server that does not answer: exit 3, one line, for a status query and a command."""
    settings = settings_factory("embedded")
    env = cli_env(settings, STREAMFLOW_DATABASE_URL="postgresql://postgres@127.0.0.1:9/none")
    env["STREAMFLOW_DB_CONNECT_TIMEOUT_S"] = "1"
    r = run(env, "db", "status", cwd=tmp_path)
    assert_one_line_error(r, "cannot connect to PostgreSQL at postgres@127.0.0.1:9", code=3)
    r = run(env, "train", "--as-of", JAN.isoformat(), cwd=tmp_path)
    assert_one_line_error(r, "cannot connect to PostgreSQL", code=3)


def test_version_and_python_m(fresh: tuple[dict[str, str], Path]) -> None:
    from streamflow import __version__

    env, cwd = fresh
    for module in (False, True):
        r = run(env, "--version", cwd=cwd, module=module)
        assert (r.code, r.stdout, r.stderr) == (0, f"streamflow {__version__}\n", ""), r
    pyproject = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())
    assert __version__ == pyproject["project"]["version"]
    r = run(env, "--help", cwd=cwd, module=True)
    assert r.code == 0 and "Usage: streamflow" in r.stdout, r
