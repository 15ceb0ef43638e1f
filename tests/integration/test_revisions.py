"""Reading earlier revisions of a corrected month: training sets, batch-scoring features, the online
store; and the CLI over them (``--revision``, ``data revisions``, ``data prune``)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from datetime import date
from decimal import Decimal
from pathlib import Path

import pandas as pd
import pytest

from streamflow.data.ingest import ingest_month
from streamflow.data.revisions import RevisionNotFound
from streamflow.features.apply import apply
from streamflow.features.materialize import materialize
from streamflow.features.online_read import online_features
from streamflow.monitoring.scoring import snapshot_features
from streamflow.settings import Settings
from streamflow.training.dataset import training_set
from tests.cli_support import Result, assert_one_line_error, cli_env, run
from tests.conftest import GENERATED_USERS, Months

JAN = date(2024, 1, 31)


def corrected(month: Path, tmp_path: Path) -> tuple[Path, str, float]:
    """The month with its first user's monthly fee raised by 1.10: (folder, user, new fee)."""
    folder = tmp_path / "corrected"
    shutil.copytree(month, folder)
    header, first, *rest = (folder / "subscriptions.csv").read_text().splitlines()
    fields = first.split(",")
    fee = header.split(",").index("monthly_fee")
    fields[fee] = str(Decimal(fields[fee]) + Decimal("1.10"))
    (folder / "subscriptions.csv").write_text("\n".join([header, ",".join(fields), *rest]) + "\n")
    return folder, fields[0], float(fields[fee])


@pytest.fixture
def two_revisions(
    settings_factory: Callable[[str], Settings], generated_months: Months, tmp_path: Path
) -> tuple[Settings, pd.DataFrame, str, float]:
    """January ingested, its training set built, then January corrected (revision 2)."""
    settings = settings_factory("embedded")
    ingest_month(generated_months.jan, JAN, settings)
    ingest_month(generated_months.feb, "2024-02-29", settings)
    apply(settings)
    first = training_set(settings, JAN)
    assert first.revisions == {JAN: 1}
    folder, user, fee = corrected(generated_months.jan, tmp_path)
    assert ingest_month(folder, JAN, settings).revision == 2
    return settings, first, user, fee


def test_a_pinned_revision_gives_the_training_set_it_gave_before(two_revisions) -> None:
    settings, first, user, fee = two_revisions
    latest = training_set(settings, JAN)
    assert latest.revisions == {JAN: 2}
    assert latest.fingerprint != first.fingerprint
    assert latest.frame.set_index("user_id").loc[user, "monthly_fee"] == fee

    again = training_set(settings, JAN, pins={JAN: 1})
    assert again.revisions == {JAN: 1}
    assert again.fingerprint == first.fingerprint
    pd.testing.assert_frame_equal(again.frame, first.frame)


def test_scoring_features_follow_the_pin(two_revisions) -> None:
    settings, first, user, fee = two_revisions
    names = ["user_id", "monthly_fee", "watch_hours_30d"]
    pinned = snapshot_features(settings, JAN, pins={JAN: 1})[names].reset_index(drop=True)
    pd.testing.assert_frame_equal(pinned, first.frame[names].reset_index(drop=True))
    latest = snapshot_features(settings, JAN).set_index("user_id")
    assert latest.loc[user, "monthly_fee"] == fee


def test_a_pin_that_does_not_exist_names_the_readable_revisions(two_revisions) -> None:
    settings, *_ = two_revisions
    with pytest.raises(
        RevisionNotFound, match=r"revision 7 of 2024-01-31 does not exist; readable revisions: 1, 2"
    ):
        training_set(settings, JAN, pins={JAN: 7})


def test_materialize_loads_the_pinned_revision_then_back_to_the_served_one(two_revisions) -> None:
    settings, first, user, fee = two_revisions
    old = float(first.frame.set_index("user_id").loc[user, "monthly_fee"])
    assert old != fee

    def served() -> float:
        [row] = online_features(settings, [user])
        return row["features"]["monthly_fee"]

    pinned = materialize(settings, JAN, pins={JAN: 1})
    assert (pinned.plan.reason, pinned.plan.pins) == ("first", {JAN: 1})
    assert served() == old
    assert materialize(settings, JAN, pins={JAN: 1}).skipped  # the same pins again: nothing to do
    back = materialize(settings, JAN)
    assert (back.plan.reason, back.plan.pins) == ("revision", {})
    assert served() == fee


def _json(r: Result) -> dict:
    assert r.code == 0 and r.stdout.count("\n") == 1, r
    return json.loads(r.stdout)


def test_cli_lists_trains_on_and_prunes_revisions(two_revisions, tmp_path: Path) -> None:
    settings, first, user, fee = two_revisions
    env = cli_env(settings)

    def streamflow(*args: str) -> Result:
        return run(env, *args, cwd=tmp_path)

    jan = JAN.isoformat()
    listed = _json(streamflow("data", "revisions", "--as-of", jan, "--json"))["revisions"]
    assert [(r["as_of"], r["revision"], r["state"], r["versions"]) for r in listed] == [
        (jan, 1, "earlier", []),
        (jan, 2, "current", []),
    ]
    assert [r["rows"] for r in listed] == [GENERATED_USERS, GENERATED_USERS]
    assert all(r["ingested_at"] and r["pruned_at"] is None for r in listed)
    text = streamflow("data", "revisions")
    assert text.code == 0 and "earlier" in text.stdout and "current" in text.stdout, text
    assert "2024-02-29" in text.stdout  # every month without --as-of

    # Training on revision 1: the training set the month gave before it was corrected (the old fee).
    trained = _json(streamflow("train", "--as-of", jan, "--revision", "1", "--json"))
    version = trained["version"]
    assert trained["revisions"] == {jan: 1}
    assert trained["fingerprint"] == first.fingerprint
    assert first.frame.set_index("user_id").loc[user, "monthly_fee"] != fee
    import mlflow

    from streamflow.training.tracking import REVISIONS_TAG, use_mlflow

    use_mlflow(settings)
    tag = mlflow.MlflowClient().get_model_version(settings.model_name, str(version)).tags[REVISIONS_TAG]
    assert json.loads(tag) == {jan: 1}
    listed = _json(streamflow("data", "revisions", "--as-of", jan, "--json"))["revisions"]
    assert [r["versions"] for r in listed] == [[version], []]

    scored = _json(
        streamflow("score", "--as-of", jan, "--version", str(version), "--revision", "1", "--json")
    )
    assert (scored["revision"], scored["rows"]) == (1, GENERATED_USERS)

    drifted = _json(
        streamflow("drift", "--reference", "2024-02-29", "--current", jan, "--revision", "1", "--json")
    )
    assert (drifted["current"], drifted["current_revision"]) == (jan, 1)

    for args in (
        ("train", "--as-of", jan),
        ("score", "--as-of", jan),
        ("features", "materialize", "--as-of", jan),
    ):
        assert_one_line_error(
            streamflow(*args, "--revision", "7"), "--revision: revision 7 of 2024-01-31 does not exist"
        )
    assert_one_line_error(
        streamflow("drift", "--reference", "2024-02-29", "--current", jan, "--revision", "7"),
        "revision 7 of 2024-01-31 does not exist; readable revisions: 1, 2",
    )

    # Pruning: never the served revision; not revision 1 while v<version> depends on it, unless forced.
    assert_one_line_error(
        streamflow("data", "prune", "--as-of", jan, "--revision", "2"),
        "revision 2 of 2024-01-31 is the current revision",
    )
    refused = streamflow("data", "prune", "--as-of", jan, "--revision", "1")
    assert_one_line_error(refused, f"revision 1 of 2024-01-31 is needed by registered version v{version}")
    assert "--force" in refused.stderr
    assert training_set(settings, JAN, pins={JAN: 1}).fingerprint == first.fingerprint  # nothing dropped
    pruned = _json(streamflow("data", "prune", "--as-of", jan, "--revision", "1", "--force", "--json"))
    assert (pruned["status"], pruned["versions"], len(pruned["tables"])) == ("pruned", [version], 6)
    again = streamflow("data", "prune", "--as-of", jan, "--revision", "1")
    assert again.code == 0 and "already pruned" in again.stdout, again

    # Reading revision 1 now fails, naming it: the CLI's --revision and a training set's pins alike.
    assert_one_line_error(
        streamflow("train", "--as-of", jan, "--revision", "1"),
        "--revision: revision 1 of 2024-01-31 was pruned; readable revisions: 2",
    )
    with pytest.raises(RevisionNotFound, match=r"revision 1 of 2024-01-31 was pruned"):
        training_set(settings, JAN, pins={JAN: 1})
    listed = _json(streamflow("data", "revisions", "--as-of", jan, "--json"))["revisions"]
    assert [(r["state"], r["pruned_at"] is not None) for r in listed] == [
        ("pruned", True),
        ("current", False),
    ]
    assert training_set(settings, JAN).revisions == {JAN: 2}  # the served revision is untouched
