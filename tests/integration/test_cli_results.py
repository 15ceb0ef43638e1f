"""What the ``streamflow`` commands print when they succeed: ``--json`` for scripts (one JSON object,
stable keys, nothing else on stdout), rich text for people, no third-party noise on stderr, and a
log level that controls StreamFlow's logging and uvicorn's.

Real CLI processes over one generated stack (500 users, three months; two ingested).
"""

from __future__ import annotations

import json
import signal
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import httpx
import pytest

from streamflow.settings import Settings
from tests.cli_support import STREAMFLOW, Result, cli_env, run, wait_until

JAN, FEB, MAR = date(2024, 1, 31), date(2024, 2, 29), date(2024, 3, 31)
NOISE = ("DeprecationWarning", "error ignored terminating", "Downloading artifacts", "Traceback")


@dataclass(frozen=True)
class Stack:
    settings: Settings
    env: dict[str, str]
    cwd: Path
    months: dict[date, Path]
    baseline: int  # version trained at JAN, in production

    def run(self, *args: str, **env: str) -> Result:
        return run(self.env | env, *args, cwd=self.cwd)


@pytest.fixture(scope="module")
def stack(settings_factory: Callable[[str], Settings], tmp_path_factory: pytest.TempPathFactory) -> Stack:
    from streamflow.data.generate import generate_months
    from streamflow.data.ingest import ingest_month
    from streamflow.features.apply import apply
    from streamflow.features.materialize import materialize
    from streamflow.registry import promote
    from streamflow.training.train import train_model

    settings = settings_factory("embedded")
    folders = generate_months(tmp_path_factory.mktemp("months"), users=500, months=3, seed=11, start=JAN)
    months = {as_of: folder for folder, as_of in folders}
    for as_of in (JAN, FEB):
        ingest_month(months[as_of], as_of, settings)
    apply(settings)
    materialize(settings, JAN)
    baseline = train_model(JAN, "baseline", feature_service="churn_v1", settings=settings).version
    promote(settings, version=baseline, force=True, by="test")
    return Stack(settings, cli_env(settings), tmp_path_factory.mktemp("cwd"), months, baseline)


def one_json_object(r: Result) -> dict:
    assert r.code == 0, r
    assert r.stdout.endswith("\n") and r.stdout.count("\n") == 1, r  # one line: `| jq` friendly
    out = json.loads(r.stdout)
    assert isinstance(out, dict), r
    return out


def test_json_results_have_stable_keys(stack: Stack) -> None:
    s = stack
    out = one_json_object(s.run("db", "status", "--json"))
    assert set(out) == {"kind", "running", "version", "target", "detail"} and out["running"] is True

    out = one_json_object(s.run("ingest", str(s.months[FEB]), "--as-of", FEB.isoformat(), "--json"))
    assert set(out) == {
        "month_dir",
        "as_of",
        "revision",
        "status",
        "rows",
        "total_rows",
        "seconds",
        "warnings",
    }
    assert (out["revision"], out["status"], out["warnings"]) == (1, "unchanged", [])  # the stack has it
    assert out["as_of"] == FEB.isoformat() and out["total_rows"] == sum(out["rows"].values())

    out = one_json_object(s.run("features", "apply", "--json"))
    assert set(out) == {"entities", "feature_views", "feature_services", "deleted", "feast_repo", "seconds"}
    assert out["feature_services"] == ["churn_v1", "churn_v2"] and out["deleted"] == []

    out = one_json_object(s.run("features", "materialize", "--as-of", JAN.isoformat(), "--json"))
    assert set(out) == {
        "as_of",
        "snapshot_as_of",
        "revision",
        "reason",
        "skipped",
        "rows",
        "users",
        "window_start",
        "window_end",
        "seconds",
    }
    assert (out["snapshot_as_of"], out["skipped"], out["rows"]) == (JAN.isoformat(), True, 0)

    out = one_json_object(s.run("train", "--as-of", JAN.isoformat(), "--model", "logreg", "--json"))
    assert set(out) == {
        "version",
        "run_id",
        "model_type",
        "feature_service",
        "as_of",
        "label_horizon",
        "threshold",
        "metrics",
        "fingerprint",
        "revisions",
    }
    assert (out["model_type"], out["feature_service"]) == ("logreg", "churn_v1")
    assert out["metrics"]["roc_auc"] > 0
    candidate = out["version"]

    r = s.run("promote", "--version", str(candidate), "--json")
    assert r.code in (0, 4), r  # 4: the gate kept production, the JSON says why
    out = json.loads(r.stdout)
    assert set(out) == {
        "version",
        "promoted",
        "previous_version",
        "candidate_auc",
        "production_auc",
        "reason",
        "online_as_of",
        "materialized",
    }
    assert out["version"] == candidate and (r.code == 0) == out["promoted"]

    out = one_json_object(s.run("models", "--json"))
    assert set(out) == {"model", "production_version", "versions"}
    assert [v["version"] for v in out["versions"]] == [s.baseline, candidate]
    assert set(out["versions"][0]) == {
        "version",
        "model_type",
        "feature_service",
        "as_of",
        "roc_auc",
        "threshold",
        "aliases",
        "created",
    }

    out = one_json_object(s.run("score", "--as-of", FEB.isoformat(), "--json"))
    assert set(out) == {
        "as_of",
        "revision",
        "model_name",
        "model_version",
        "feature_service",
        "threshold",
        "rows",
        "predicted_churners",
        "mean_probability",
        "replaced",
        "seconds",
    }
    assert out["rows"] == 500

    out = one_json_object(
        s.run("drift", "--reference", JAN.isoformat(), "--current", FEB.isoformat(), "--json")
    )
    assert set(out) == {
        "reference",
        "current",
        "current_revision",
        "feature_service",
        "drift_share",
        "drifted_features",
        "features",
        "target",
        "prediction",
        "html_path",
        "json_path",
        "mlflow_run_id",
    }
    assert len(out["features"]) == 14 and Path(out["html_path"]).exists()

    quiet = {"STREAMFLOW_TARGET_DRIFT_ALPHA": "0", "STREAMFLOW_RETRAIN_AUC_DROP": "1"}
    args = ("monitor", "--reference", JAN.isoformat(), "--current", FEB.isoformat(), "--threshold", "1")
    out = one_json_object(s.run(*args, "--json", **quiet))
    assert set(out) == {
        "reference",
        "current",
        "retrained",
        "promoted",
        "fired",
        "triggers",
        "drift_share",
        "drift_run_id",
        "production_version",
        "candidate_version",
        "candidate_auc",
        "production_auc",
        "holdout_users",
        "online_as_of",
        "reason",
    }
    assert out["retrained"] is False and [t["name"] for t in out["triggers"]] == [
        "feature_drift",
        "target_drift",
        "holdout_auc",
    ]

    # The monthly pipeline on a month not yet ingested (a temporary Prefect server: no `up` here).
    out = one_json_object(s.run("pipeline", str(s.months[MAR]), "--as-of", MAR.isoformat(), "--json"))
    assert {"month_dir", "as_of", "ingested", "materialized", "candidate", "promoted", "reason"} <= set(out)
    assert out["materialized"]["snapshot_as_of"] == MAR.isoformat() and out["model_type"] == "logreg"


def test_human_output_is_text_not_a_repr(stack: Stack) -> None:
    r = stack.run("features", "materialize", "--as-of", FEB.isoformat())
    assert r.code == 0 and "MaterializeResult(" not in r.stdout, r
    assert r.stdout.startswith(("materialized the snapshot at 2024-02-29", "online store already serves")), r
    r = stack.run("models")
    assert r.code == 0 and "version" in r.stdout and "{" not in r.stdout, r


def test_no_third_party_noise(stack: Stack) -> None:
    """score and drift print their result and nothing else; monitor (which trains) no warnings."""
    for args in (
        ("score", "--as-of", FEB.isoformat()),
        ("drift", "--reference", JAN.isoformat(), "--current", FEB.isoformat()),
    ):
        r = stack.run(*args)
        assert r.code == 0 and r.stderr == "", r
    r = stack.run("monitor", "--reference", JAN.isoformat(), "--current", FEB.isoformat(), "--threshold", "0")
    assert r.code == 0 and "retraining triggered by feature_drift" in r.stdout, r
    assert not [n for n in NOISE if n in r.stderr], r


def test_log_level_controls_streamflow_logs(stack: Stack) -> None:
    args = ("drift", "--reference", JAN.isoformat(), "--current", FEB.isoformat())
    for option, env in ((["--log-level", "info"], {}), ([], {"STREAMFLOW_LOG_LEVEL": "INFO"})):
        r = stack.run(*option, *args, **env)
        assert (
            r.code == 0 and " INFO streamflow.monitoring.drift: drift 2024-01-31 -> 2024-02-29" in r.stderr
        ), r
    r = stack.run("--log-level", "error", *args)
    assert r.code == 0 and r.stderr == "", r


@pytest.fixture
def serve(stack: Stack) -> Iterator[Callable[..., tuple[str, str]]]:
    """Start `streamflow [OPTIONS] serve`, wait until it answers, stop it: (stdout, stderr)."""
    started: list[subprocess.Popen] = []

    def start(*options: str, **env: str) -> tuple[str, str]:
        port = stack.env["STREAMFLOW_API_PORT"]
        process = subprocess.Popen(
            [STREAMFLOW, *options, "serve"],
            env=stack.env | env,
            cwd=stack.cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        started.append(process)

        def health() -> bool:
            assert process.poll() is None, process.communicate()
            try:
                return httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(health, 180, "the API's /health")
        process.send_signal(signal.SIGINT)
        return process.communicate(timeout=60)

    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_log_level_controls_uvicorn(serve: Callable[..., tuple[str, str]]) -> None:
    _, err = serve()  # a server: info unless told
    assert "Uvicorn running on" in err and "Application startup complete" in err, err
    _, err = serve("--log-level", "warning")
    assert "Uvicorn running on" not in err and "Application startup complete" not in err, err
    _, err = serve(STREAMFLOW_LOG_LEVEL="debug")
    assert "Uvicorn running on" in err, err
