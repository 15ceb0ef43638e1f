"""``streamflow reproduce VERSION``: a version reproduces while its revisions are readable, and stops
reproducing, naming the revision, once one of them is pruned."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from streamflow.data.generate import generate_months
from streamflow.data.ingest import ingest_month
from streamflow.errors import EXIT_NOT_REPRODUCED
from streamflow.features.apply import apply
from streamflow.settings import Settings
from streamflow.training.reproduce import REPRODUCED_BY_TAG, REPRODUCED_TAG, REPRODUCES_TAG
from tests.cli_support import Result, run
from tests.cli_support import cli_env as make_env
from tests.integration.test_revisions import corrected

USERS = 300  # small: the test trains twice and retrains twice


def _json(r: Result) -> dict:
    assert r.stdout.count("\n") == 1, r
    return json.loads(r.stdout)


def test_reproduce_passes_then_names_the_pruned_revision(
    settings_factory: Callable[[str], Settings], tmp_path: Path
) -> None:
    [(month, as_of)] = generate_months(tmp_path / "generated", users=USERS, months=1, seed=5)
    jan = as_of.isoformat()
    settings = settings_factory("embedded")
    ingest_month(month, as_of, settings)
    apply(settings)
    env = make_env(settings)

    def streamflow(*args: str) -> Result:
        return run(env, *args, cwd=tmp_path)

    train = ("train", "--as-of", jan, "--model", "logreg", "--seed", "3", "--json")
    v1 = _json(streamflow(*train))
    folder, _, _ = corrected(month, tmp_path)
    assert ingest_month(folder, as_of, settings).revision == 2
    v2 = _json(streamflow(*train))
    assert (v1["revisions"], v2["revisions"]) == ({jan: 1}, {jan: 2})
    assert v1["fingerprint"] != v2["fingerprint"]

    ok = streamflow("reproduce", str(v1["version"]), "--json")
    assert ok.code == 0, ok.stdout  # the verdicts, whole (a Result's repr is cut short)
    report = _json(ok)
    assert report["reproduced"] is True and report["likely_cause"] is None
    statuses = {c["check"]: c["status"] for c in report["checks"]}
    assert statuses == {
        "revisions": "pass",
        "fingerprint": "pass",
        "metrics": "pass",
        "artifacts": "pass",
        "predictions": "pass",
        "environment": "pass",
    }, report
    predictions = next(c for c in report["checks"] if c["check"] == "predictions")
    assert predictions["detail"].startswith("max |diff| 0.0 on ")

    import mlflow

    from streamflow.training.tracking import use_mlflow

    use_mlflow(settings)
    client = mlflow.MlflowClient()
    logged = client.get_run(report["run_id"])
    assert logged.data.tags[REPRODUCES_TAG] == f"{settings.model_name}/{v1['version']}"
    assert logged.data.tags["streamflow.reproduce.predictions"] == "pass"
    tags = client.get_model_version(settings.model_name, str(v1["version"])).tags
    assert (tags[REPRODUCED_BY_TAG], tags[REPRODUCED_TAG]) == (report["run_id"], "true")
    versions = client.search_model_versions(f"name='{settings.model_name}'")
    assert len(versions) == 2  # reproducing registered nothing

    pruned = streamflow("data", "prune", "--as-of", jan, "--revision", "1", "--force")
    assert pruned.code == 0, pruned

    failed = streamflow("reproduce", str(v1["version"]))
    assert failed.code == EXIT_NOT_REPRODUCED, failed
    assert f"revision 1 of {jan} was pruned" in failed.stdout, failed
    assert "not run" in failed.stdout and "NOT reproduced" in failed.stdout, failed
    tags = client.get_model_version(settings.model_name, str(v1["version"])).tags
    assert tags[REPRODUCED_TAG] == "false" and tags[REPRODUCED_BY_TAG] != report["run_id"]

    assert streamflow("reproduce", str(v2["version"])).code == 0  # v2 read revision 2, still there
