"""Reproduce a registered model version: the same data, the same model, and what changed around it.

``streamflow reproduce VERSION`` reads what ``train_model`` recorded (the run's params and metrics, the
version's tags) and checks, in order:

1. ``revisions``: every recorded revision is still readable (not pruned), and the training set rebuilt
   at the recorded as_of with those revisions pinned has the recorded fingerprint;
2. ``retrain``: the model fitted again with the recorded model type, seed and feature service (nothing
   registered) has exactly the recorded hold-out metrics, the recorded artifact sha256 tags, and the
   registered model's hold-out probabilities (max |diff| = 0 on the same rows);
3. ``environment``: the recorded git commit, lock sha256, Python version, platform and package
   versions against the current ones. A difference alone fails nothing; it is named as the likely
   cause when a check above fails, and shown as a note otherwise.

A check that cannot run (the data is gone) is "not run", with the reason. The reproduction is logged
as an MLflow run of the same experiment (tag ``streamflow.reproduces`` = ``<model>/<version>``, one tag
per verdict), and the version gets ``reproduced_by_run`` and ``reproduced`` (true/false).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from typing import Any

import numpy as np

from streamflow import db
from streamflow.data import revisions
from streamflow.data.pruning import parse_tag
from streamflow.errors import UsageError
from streamflow.settings import Settings
from streamflow.training.lineage import environment, git_commit, package_versions
from streamflow.training.tracking import REVISIONS_TAG, use_mlflow

PASS, FAIL, NOT_RUN, DIFFERS = "pass", "FAIL", "not run", "differs"
REPRODUCES_TAG = "streamflow.reproduces"  # run tag: "<model>/<version>" the run reproduces
VERDICT_TAG = "streamflow.reproduce.{}"  # run tags: each check's status and detail
REPRODUCED_BY_TAG = "reproduced_by_run"  # version tags: the latest reproduction's run and outcome
REPRODUCED_TAG = "reproduced"


@dataclass(frozen=True)
class Verdict:
    check: str  # revisions | fingerprint | metrics | artifacts | predictions | environment
    status: str  # pass | FAIL | not run | differs (environment only: a note, not a failure)
    detail: str


@dataclass
class Reproduction:
    model_name: str
    version: int
    as_of: date
    verdicts: list[Verdict] = field(default_factory=list)
    differences: list[str] = field(default_factory=list)  # environment: "name: recorded -> current"
    run_id: str = ""

    @property
    def reproduced(self) -> bool:
        return all(v.status in (PASS, DIFFERS) for v in self.verdicts)

    @property
    def likely_cause(self) -> str | None:
        """The environment's differences, when a check failed and something did differ."""
        if self.reproduced or not self.differences:
            return None
        return "; ".join(self.differences)


def _record(settings: Settings, version: int) -> tuple[Any, Any]:
    """(the model version, its training run)."""
    import mlflow

    use_mlflow(settings)
    client = mlflow.MlflowClient()
    try:
        mv = client.get_model_version(settings.model_name, str(version))
    except mlflow.exceptions.MlflowException:
        raise UsageError(
            f"{settings.model_name} has no version {version}", "`streamflow models` lists them"
        ) from None
    return mv, client.get_run(mv.run_id)


def _readable(settings: Settings, pins: dict[date, int]) -> list[str]:
    """Why each pin cannot be read ("revision N of YYYY-MM-DD was pruned; ..."); [] when all can."""
    problems = []
    with db.connect(db.target(settings), settings) as conn:
        for as_of, revision in sorted(pins.items()):
            try:
                revisions.read_at(conn, [], {as_of: revision})
            except revisions.RevisionNotFound as exc:
                problems.append(str(exc))
    return problems


def environment_differences(run_tags: dict[str, str], version_tags: dict[str, str]) -> list[str]:
    """What differs between the recorded environment and this one, as "name: recorded -> current"."""
    current = {"git_commit": git_commit(), **environment()}
    recorded = {"git_commit": run_tags.get("git_commit", "unknown")}
    recorded |= {k: version_tags.get(k, run_tags.get(k, "unknown")) for k in environment()}
    now = package_versions()
    for name, value in now.items():
        recorded[f"version.{name}"] = run_tags.get(f"version.{name}", "unknown")
        current[f"version.{name}"] = value
    return [f"{k}: {recorded[k]} -> {current[k]}" for k in recorded if recorded[k] != current[k]]


def reproduce(settings: Settings, version: int) -> Reproduction:
    """Run the checks on ``version`` (see the module doc) and log them; never registers anything."""
    from streamflow.training.train import SHA256_TAGS, build_model

    mv, run = _record(settings, version)
    params, tags = run.data.params, dict(mv.tags)
    as_of = date.fromisoformat(params["as_of"])
    out = Reproduction(settings.model_name, version, as_of)
    verdicts = out.verdicts
    out.differences = environment_differences(dict(run.data.tags), tags)

    # 1. revisions: readable, then the same training set.
    pins = parse_tag(tags.get(REVISIONS_TAG))
    problems = _readable(settings, pins) if pins else ["the version records no revisions"]
    read = ", ".join(f"{d} r{r}" for d, r in sorted(pins.items()))
    verdicts.append(
        Verdict("revisions", FAIL if problems else PASS, "; ".join(problems) or f"readable: {read}")
    )
    built = None
    if problems:
        verdicts.append(Verdict("fingerprint", NOT_RUN, "the recorded revisions cannot be read"))
    else:
        # The recorded hold-out fraction: the split is part of what was trained on.
        rebuild_settings = settings.model_copy(update={"holdout_fraction": float(params["holdout_fraction"])})
        built = build_model(
            as_of,
            params["model_type"],
            int(params["seed"]),
            params["feature_service"],
            int(params.get("label_horizon", 0)),
            rebuild_settings,
            pins=pins,
        )
        recorded = tags.get("data_fingerprint", "")
        same = built.data.fingerprint == recorded
        detail = f"{built.data.fingerprint[:12]}" + ("" if same else f" (recorded {recorded[:12]})")
        verdicts.append(
            Verdict("fingerprint", PASS if same else FAIL, f"training set {detail}, {built.data.rows} rows")
        )

    # 2. retrain: metrics, files, predictions.
    if built is None:
        for check in ("metrics", "artifacts", "predictions"):
            verdicts.append(Verdict(check, NOT_RUN, "no training set to retrain on"))
    else:
        verdicts.extend(_compare_model(settings, version, built, run.data.metrics, tags, SHA256_TAGS))

    # 3. environment.
    verdicts.append(
        Verdict(
            "environment",
            DIFFERS if out.differences else PASS,
            "; ".join(out.differences) or "same git commit, lock, Python, platform and packages",
        )
    )
    out.run_id = _log(settings, out)
    return out


def _compare_model(
    settings: Settings,
    version: int,
    built: Any,
    recorded_metrics: dict[str, float],
    tags: dict[str, str],
    sha256_tags: dict[str, str],
) -> list[Verdict]:
    import mlflow

    from streamflow.training.artifacts import sha256
    from streamflow.training.models import FittedModel

    trained = built.trained
    out = []
    differ = {
        k: (recorded_metrics.get(k), v) for k, v in trained.metrics.items() if recorded_metrics.get(k) != v
    }
    detail = ", ".join(f"{k} {r!r} -> {v!r}" for k, (r, v) in differ.items())
    out.append(
        Verdict(
            "metrics",
            FAIL if differ else PASS,
            detail
            or f"{len(trained.metrics)} hold-out metrics equal (roc_auc {trained.metrics['roc_auc']!r})",
        )
    )
    files = {tag: sha256(built.files[artifact]) for artifact, tag in sha256_tags.items()}
    bad = [
        f"{tag} {tags.get(tag, 'missing')[:12]} -> {h[:12]}" for tag, h in files.items() if tags.get(tag) != h
    ]
    out.append(Verdict("artifacts", FAIL if bad else PASS, "; ".join(bad) or f"{len(files)} sha256 equal"))

    pipeline = mlflow.sklearn.load_model(f"models:/{settings.model_name}/{version}")
    registered = FittedModel(pipeline, float(tags.get("threshold", "0.5")), {}, float("nan"), spec=built.spec)
    held_out = built.data.frame[list(built.spec.names)][trained.holdout]
    diff = float(np.max(np.abs(registered.predict_proba(held_out) - trained.holdout_proba), initial=0.0))
    out.append(
        Verdict(
            "predictions",
            PASS if diff == 0 else FAIL,
            f"max |diff| {diff!r} on {len(held_out)} hold-out rows",
        )
    )
    return out


def _log(settings: Settings, r: Reproduction) -> str:
    """The reproduction as an MLflow run, and the version's tags pointing at it."""
    import mlflow

    use_mlflow(settings)
    client = mlflow.MlflowClient()
    with mlflow.start_run(run_name=f"reproduce-v{r.version}") as run:
        mlflow.set_tags(
            {
                REPRODUCES_TAG: f"{r.model_name}/{r.version}",
                REPRODUCED_TAG: str(r.reproduced).lower(),
                "git_commit": git_commit(),
                **environment(),
                **{VERDICT_TAG.format(v.check): v.status for v in r.verdicts},
                **{VERDICT_TAG.format(f"{v.check}.detail"): v.detail[:4000] for v in r.verdicts},
            }
        )
    client.set_model_version_tag(r.model_name, str(r.version), REPRODUCED_BY_TAG, run.info.run_id)
    client.set_model_version_tag(r.model_name, str(r.version), REPRODUCED_TAG, str(r.reproduced).lower())
    return run.info.run_id
