"""``streamflow train`` and ``reproduce``: model versions from snapshots."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape

from streamflow import catalog, errors, preflight
from streamflow.cli.options import (
    AsOf,
    Json,
    RevisionOpt,
    check_feature_service,
    check_model,
    parse_date,
)
from streamflow.cli.output import console, emit_json
from streamflow.cli.root import app
from streamflow.settings import get_settings


@app.command()
def train(
    as_of: AsOf,
    model: Annotated[
        str | None,
        typer.Option(help=f"{' | '.join(catalog.MODEL_TYPES)} (default STREAMFLOW_MODEL_TYPE, baseline)."),
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed (default STREAMFLOW_SEED).")] = None,
    feature_service: Annotated[
        str | None,
        typer.Option(
            help=f"{' | '.join(catalog.FEATURE_SERVICES)} (default STREAMFLOW_FEATURE_SERVICE, churn_v1)."
        ),
    ] = None,
    label_horizon: Annotated[int, typer.Option(min=0, help="Predict churn K months after AS_OF.")] = 0,
    revision: RevisionOpt = None,
    as_json: Json = False,
) -> None:
    """Train at AS_OF, log the run to MLflow and register a new model version.

    The version records the revision of every month it read (tag streamflow.revisions)."""
    day = parse_date(as_of)
    settings = get_settings()
    model = check_model(model or settings.model_type)
    service = check_feature_service(feature_service or settings.feature_service)
    with preflight.checks(settings) as check:
        if label_horizon == 0:
            check.labelled(day)
        else:
            check.snapshot(day)  # the later month's labels are checked by the training set itself
        pins = check.revision(day, revision)
        check.applied(service)
    from streamflow.training.train import train_model

    r = train_model(day, model, seed, service, label_horizon, settings, pins=pins)
    if as_json:
        emit_json(
            {
                "version": r.version,
                "run_id": r.run_id,
                "model_type": r.model_type,
                "feature_service": r.feature_service,
                "as_of": day,
                "label_horizon": label_horizon,
                "threshold": r.threshold,
                "metrics": r.metrics,
                "fingerprint": r.fingerprint,
                "revisions": {d.isoformat(): n for d, n in sorted(r.revisions.items())},
            }
        )
        return
    metrics = ", ".join(f"{k} {v:.4f}" for k, v in r.metrics.items())
    console.print(
        f"registered version {r.version} ({r.model_type} on {r.feature_service}),"
        f" threshold {r.threshold:.3f}: {metrics}"
    )
    if pins:
        read = ", ".join(f"{d} r{n}" for d, n in sorted(r.revisions.items()))
        console.print(f"trained on revisions {read}")


@app.command()
def reproduce(
    version: Annotated[int, typer.Argument(min=1, help="The registered version to reproduce.")],
    as_json: Json = False,
) -> None:
    """Check that VERSION can be reproduced: its revisions are readable and give the recorded training
    set, a retrain gives the same metrics, files and predictions; the environment is compared.

    Logged as an MLflow run (tag streamflow.reproduces); exit 5 when a check fails or cannot run."""
    settings = get_settings()
    with preflight.checks(settings) as check:
        check.data()
    from streamflow.training.reproduce import reproduce as do_reproduce

    r = do_reproduce(settings, version)
    if as_json:
        emit_json(
            {
                "model": r.model_name,
                "version": r.version,
                "as_of": r.as_of,
                "reproduced": r.reproduced,
                "checks": [{"check": v.check, "status": v.status, "detail": v.detail} for v in r.verdicts],
                "environment_differences": r.differences,
                "likely_cause": r.likely_cause,
                "run_id": r.run_id,
            }
        )
    else:
        colour = {"pass": "green", "FAIL": "red", "not run": "yellow", "differs": "yellow"}
        for v in r.verdicts:
            console.print(f"[{colour[v.status]}]{v.status:>7}[/]  {v.check:<12} {escape(v.detail)}")
        if r.likely_cause:
            console.print(f"likely cause: {escape(r.likely_cause)}")
        elif r.differences:
            console.print(f"note: the environment differs ({escape('; '.join(r.differences))})")
        verdict = "reproduced" if r.reproduced else "[red]NOT reproduced[/]"
        console.print(f"{r.model_name} v{r.version}: {verdict} (MLflow run {r.run_id})")
    if not r.reproduced:
        raise typer.Exit(errors.EXIT_NOT_REPRODUCED)
