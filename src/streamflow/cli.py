"""The ``streamflow`` command: a thin Typer layer over the package's functions.

Heavy imports (Feast, MLflow, Prefect, scikit-learn) happen inside the commands that need them,
so ``streamflow --help`` and ``streamflow db status`` answer at once.
"""

from __future__ import annotations

import os
from datetime import date
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from streamflow.settings import Settings, get_settings

app = typer.Typer(
    help="StreamFlow: churn predictions from monthly exports to a live API.", no_args_is_help=True
)
db_app = typer.Typer(help="The PostgreSQL server StreamFlow uses.", no_args_is_help=True)
data_app = typer.Typer(help="Monthly export data.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(data_app, name="data")

console = Console()
err = Console(stderr=True)

AsOf = Annotated[str, typer.Option("--as-of", help="Snapshot date YYYY-MM-DD.")]


def fail(message: str, code: int = 1) -> typer.Exit:
    err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)  # one line, never wrapped
    return typer.Exit(code)


def monitoring_errors() -> tuple[type[Exception], ...]:
    """What score/drift/monitor report as a one-line error (exit 2): a missing production model, a
    snapshot that does not exist, an unknown feature service."""
    from streamflow.features.store import NoSnapshotError
    from streamflow.monitoring.scoring import NoProductionModel

    return NoProductionModel, NoSnapshotError, UnknownInput


class UnknownInput(ValueError):
    """A version or feature service named on the command line that does not exist."""


def check_feature_service(service: str | None, option: str = "--feature-service") -> None:
    from streamflow.features.definitions import feature_spec

    if service is not None:
        try:
            feature_spec(service)
        except ValueError as exc:
            raise UnknownInput(f"{option}: {exc}") from None


def parse_date(value: str, option: str = "--as-of") -> date:
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise fail(f"{option}: '{value}' is not a date YYYY-MM-DD", 2) from None


@db_app.command("status")
def db_status() -> None:
    """Say which server is configured and whether it answers."""
    from streamflow import db

    settings = get_settings()
    if not settings.database_url and not db.embedded_running(settings):
        console.print(f"embedded PostgreSQL at {settings.pg_dir}: [yellow]stopped[/]")
        raise typer.Exit(3)
    try:
        t = db.target(settings)
        with db.connect(t, settings) as conn:
            version = conn.execute("SHOW server_version").fetchone()[0]
    except db.DatabaseUnavailable as exc:
        raise fail(str(exc), 3) from None
    kind = "external" if settings.database_url else "embedded"
    console.print(f"{kind} PostgreSQL {version}: [green]running[/] ({t.describe()})")


@db_app.command("start")
def db_start() -> None:
    """Start the embedded server (no-op with an external STREAMFLOW_DATABASE_URL) and migrate the schema."""
    from streamflow.data.ingest import prepare

    t = prepare(get_settings())
    console.print(f"PostgreSQL ready: {t.describe()}")


@db_app.command("stop")
def db_stop() -> None:
    """Stop the embedded server."""
    from streamflow import db

    settings = get_settings()
    if settings.database_url:
        raise fail("STREAMFLOW_DATABASE_URL points at an external server; StreamFlow does not stop it", 2)
    console.print("stopped" if db.stop_embedded(settings) else "embedded PostgreSQL was not running")


@app.command()
def ingest(
    month_dir: Annotated[Path, typer.Argument(help="Folder with the six CSV files of one month.")],
    as_of: AsOf,
) -> None:
    """Validate a monthly export and load it as the snapshot at AS_OF (all or nothing)."""
    from streamflow.data.ingest import ingest_month
    from streamflow.data.validate import ContractError
    from streamflow.db import DatabaseUnavailable

    try:
        result = ingest_month(month_dir, as_of, get_settings(), show_progress=True)
    except ContractError as exc:
        raise fail(f"{exc}\nnothing was written") from None
    except DatabaseUnavailable as exc:
        raise fail(str(exc), 3) from None
    rows = sum(result.row_counts.values())
    console.print(
        f"ingested {result.month_dir} as of {result.as_of}: "
        + ", ".join(f"{k} {v:,}" for k, v in result.row_counts.items())
        + f" ({rows / result.seconds:,.0f} rows/s)"
    )


@data_app.command("generate")
def data_generate(
    out: Annotated[Path, typer.Argument(help="Folder to write month_000, month_001, ... into.")],
    users: Annotated[int, typer.Option(min=1, help="Subscribers in the first month.")] = 7043,
    months: Annotated[int, typer.Option(min=1, help="How many months.")] = 2,
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same bytes).")] = 42,
    start: Annotated[str, typer.Option(help="as_of of the first month (a month end).")] = "2024-01-31",
) -> None:
    """Write realistic synthetic months that satisfy the export contract."""
    from streamflow.data.generate import generate_months

    try:
        written = generate_months(
            out, users=users, months=months, seed=seed, start=parse_date(start, "--start"), progress=True
        )
    except ValueError as exc:
        raise fail(str(exc), 2) from None
    for folder, as_of in written:
        console.print(f"{folder}  as_of {as_of}")


features_app = typer.Typer(help="The Feast feature store.", no_args_is_help=True)
app.add_typer(features_app, name="features")


@features_app.command("apply")
def features_apply() -> None:
    """Register the entity, feature views and feature services (idempotent)."""
    from streamflow.features.store import apply

    apply(get_settings())
    console.print("feature store applied")


@features_app.command("materialize")
def features_materialize(as_of: AsOf) -> None:
    """Load the latest snapshot at or before AS_OF into the online store."""
    from streamflow.features.store import materialize

    result = materialize(get_settings(), parse_date(as_of))
    console.print(f"materialized as of {as_of}: {result}")


@app.command()
def train(
    as_of: AsOf,
    model: Annotated[
        str, typer.Option(help="baseline (course random forest) or a candidate type.")
    ] = "baseline",
    seed: Annotated[int | None, typer.Option(help="Random seed (default from settings).")] = None,
    feature_service: Annotated[str | None, typer.Option(help="Feast FeatureService to train on.")] = None,
    label_horizon: Annotated[int, typer.Option(min=0, help="Predict churn K months after AS_OF.")] = 0,
) -> None:
    """Train at AS_OF, log the run to MLflow and register a new model version."""
    from streamflow.features.definitions import DEFAULT_FEATURE_SERVICE
    from streamflow.training.train import train_model

    result = train_model(
        parse_date(as_of),
        model,
        seed,
        feature_service or DEFAULT_FEATURE_SERVICE,
        label_horizon,
        get_settings(),
    )
    metrics = ", ".join(f"{k} {v:.4f}" for k, v in result.metrics.items())
    console.print(
        f"registered version {result.version} ({result.model_type} on {result.feature_service}), "
        f"threshold {result.threshold:.3f}: {metrics}"
    )


@app.command()
def promote(
    version: Annotated[int | None, typer.Option(help="Version to promote.")] = None,
    best: Annotated[
        bool, typer.Option("--best", help="Promote the best version of the latest as_of.")
    ] = False,
    force: Annotated[bool, typer.Option("--force", help="Skip the gate.")] = False,
) -> None:
    """Give the production alias to a version if it passes the gate."""
    from streamflow.registry import PromotionError
    from streamflow.registry import promote as do_promote

    try:
        decision = do_promote(get_settings(), version=version, best=best, force=force)
    except PromotionError as exc:
        raise fail(str(exc), 2) from None
    verb = "[green]promoted[/]" if decision.promoted else "[yellow]kept production[/]"
    console.print(f"{verb} version {decision.version}: {decision.reason}")
    if not decision.promoted:
        raise typer.Exit(4)


@app.command()
def rollback() -> None:
    """Give the production alias back to the previous production version."""
    from streamflow.registry import PromotionError
    from streamflow.registry import rollback as do_rollback

    try:
        decision = do_rollback(get_settings())
    except PromotionError as exc:
        raise fail(str(exc), 2) from None
    console.print(f"production is version {decision.version} again ({decision.reason})")


@app.command()
def models() -> None:
    """List the registered versions, their hold-out metrics and which one is in production."""
    from rich.table import Table

    from streamflow.registry import list_versions

    table = Table("version", "model", "features", "as_of", "roc_auc", "threshold", "aliases", "created")
    for row in list_versions(get_settings()):
        table.add_row(
            str(row.version),
            row.model_type,
            row.feature_service,
            row.as_of,
            f"{row.roc_auc:.4f}",
            f"{row.threshold:.3f}",
            ", ".join(row.aliases),
            row.created,
        )
    console.print(table)


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Bind address (default STREAMFLOW_API_HOST).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default STREAMFLOW_API_PORT).")] = None,
    workers: Annotated[int, typer.Option(min=1, help="Worker processes.")] = 1,
) -> None:
    """Serve the prediction API (uvicorn with uvloop and httptools)."""
    import shutil

    settings = get_settings()
    # Before prometheus_client is imported here or in a worker: a metrics folder inherited from a
    # parent process (Feast's import sets one in every process) would mix its metrics with ours.
    for name in ("PROMETHEUS_MULTIPROC_DIR", "PROMETHEUS_MULTIPROCESS_DIR", "prometheus_multiproc_dir"):
        os.environ.pop(name, None)
    metrics_dir = None
    if workers > 1:  # /metrics must answer for every worker, not for the one a scrape happens to reach
        metrics_dir = settings.state_dir.resolve() / "metrics" / f"serve-{os.getpid()}"
        shutil.rmtree(metrics_dir, ignore_errors=True)
        metrics_dir.mkdir(parents=True)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)

    import uvicorn

    try:
        uvicorn.run(
            "streamflow.serving.app:create_app",
            factory=True,
            host=host or settings.api_host,
            port=port or settings.api_port,
            workers=workers,
            loop="uvloop",
            http="httptools",
            access_log=False,
            log_level="info",
        )
    finally:
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)


@app.command("mlflow-ui")
def mlflow_ui(
    host: Annotated[str, typer.Option(help="Bind address.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 5000,
) -> None:
    """Serve the MLflow UI over StreamFlow's tracking store and artifacts."""
    import os

    from streamflow.training.tracking import mlflow_server_command

    command = mlflow_server_command(get_settings(), host, port)
    os.execvp(command[0], command)


@app.command()
def demo(
    seeds: Annotated[
        Path | None,
        typer.Option(help="Folder of month_NNN exports (e.g. ../shared/data/seeds); else generated."),
    ] = None,
    start: Annotated[str, typer.Option(help="as_of of the first month (a month end).")] = "2024-01-31",
    users: Annotated[int, typer.Option(min=100, help="Subscribers per generated month.")] = 7043,
    fresh: Annotated[bool, typer.Option("--fresh", help="Delete the embedded state and start over.")] = False,
    serve: Annotated[
        bool, typer.Option(help="Serve the API and UIs at the end (--no-serve stops after promotion).")
    ] = True,
) -> None:
    """End to end: database, data, features, training, promotion, then the API, MLflow and Prefect UIs."""
    from streamflow.demo import run_demo

    try:
        run_demo(get_settings(), seeds, parse_date(start, "--start"), users, fresh, serve)
    except (FileNotFoundError, ValueError, RuntimeError, TimeoutError) as exc:
        raise fail(str(exc)) from None


@app.command()
def score(
    as_of: AsOf,
    version: Annotated[
        int | None, typer.Option(help="Model version to score with (default: production).")
    ] = None,
) -> None:
    """Score every user of the snapshot at AS_OF with the production model (or VERSION) into `predictions`."""
    from streamflow.monitoring.scoring import NoProductionModel, score_snapshot

    settings = get_settings()
    try:
        if version is not None:
            _check_version(settings, version)
        r = score_snapshot(settings, parse_date(as_of), version)
    except NoProductionModel as exc:
        raise fail(f"{exc}: promote a version first (streamflow promote), or pass --version", 2) from None
    except monitoring_errors() as exc:
        raise fail(str(exc), 2) from None
    console.print(
        f"scored {r.rows:,} users as of {r.as_of} with {r.model_name} v{r.model_version}: "
        f"{r.predicted_churners:,} predicted churners, mean probability {r.mean_probability:.3f}"
    )


def _check_version(settings: Settings, version: int) -> None:
    import mlflow

    from streamflow.training.tracking import use_mlflow

    use_mlflow(settings)
    try:
        mlflow.MlflowClient().get_model_version(settings.model_name, str(version))
    except mlflow.exceptions.MlflowException:
        raise UnknownInput(f"--version: {settings.model_name} has no version {version}") from None


@app.command()
def drift(
    reference: Annotated[str, typer.Option(help="Reference snapshot YYYY-MM-DD.")],
    current: Annotated[str, typer.Option(help="Current snapshot YYYY-MM-DD.")],
    feature_service: Annotated[
        str | None, typer.Option(help="Feast FeatureService whose features are compared (default churn_v1).")
    ] = None,
) -> None:
    """Evidently drift report between two snapshots (HTML + JSON, logged to MLflow)."""
    from streamflow.features.definitions import DEFAULT_FEATURE_SERVICE
    from streamflow.monitoring.drift import drift_report

    ref, cur = parse_date(reference, "--reference"), parse_date(current, "--current")
    try:
        check_feature_service(feature_service)
        r = drift_report(get_settings(), ref, cur, feature_service or DEFAULT_FEATURE_SERVICE)
    except monitoring_errors() as exc:
        raise fail(str(exc), 2) from None
    console.print(
        f"drift share {r.drift_share:.3f} ({len(r.drifted_features)} of {len(r.features)} features): "
        + (", ".join(r.drifted_features) or "none")
    )
    if r.target is not None:
        t = r.target
        console.print(
            "target drift (churn rate, each month's own labels):"
            f" {t.reference_rate:.4f} -> {t.current_rate:.4f} ({t.difference:+.4f}), p = {t.p_value:.2g}"
            + (f" < alpha {t.alpha}: drifted" if t.drifted else f" >= alpha {t.alpha}")
        )
    else:
        console.print("target drift: not measured (a month has no labels)")
    if r.prediction is not None:
        console.print(f"prediction drift: {r.prediction_drift:.4f}")
    console.print(f"report: {r.html_path}")


@app.command("monitor")
def monitor(
    reference: Annotated[str, typer.Option(help="Snapshot production was trained on.")],
    current: Annotated[str, typer.Option(help="The new snapshot.")],
    threshold: Annotated[
        float | None,
        typer.Option(
            min=0, max=1, help="Feature-drift share that retrains (default STREAMFLOW_DRIFT_THRESHOLD)."
        ),
    ] = None,
    model: Annotated[str | None, typer.Option(help="Candidate model type (default logreg).")] = None,
    feature_service: Annotated[
        str | None, typer.Option(help="Candidate's Feast FeatureService (default churn_v2).")
    ] = None,
) -> None:
    """Drift check, then (when a retraining trigger fires) a candidate on CURRENT through the gate.

    Triggers: feature-drift share >= threshold; target drift p < STREAMFLOW_TARGET_DRIFT_ALPHA;
    production's hold-out ROC-AUC on CURRENT's labels more than STREAMFLOW_RETRAIN_AUC_DROP below
    its training one."""
    from streamflow.monitoring import retrain

    ref, cur = parse_date(reference, "--reference"), parse_date(current, "--current")
    try:
        check_feature_service(feature_service)
        d = retrain.monitor_and_retrain(
            get_settings(),
            ref,
            cur,
            threshold,
            model or retrain.MODEL_TYPE,
            feature_service or retrain.FEATURE_SERVICE,
        )
    except monitoring_errors() as exc:
        raise fail(str(exc), 2) from None
    if not d.retrained:
        # "no retraining: " and every trigger's figures
        console.print(d.reason, highlight=False, soft_wrap=True)
        return
    console.print(f"retraining triggered by {', '.join(d.fired)}:", highlight=False)
    for t in d.triggers:
        console.print(f"  {'fired' if t.fired else 'not fired'}: {t.detail}", highlight=False, soft_wrap=True)
    outcome = "promoted" if d.promoted else f"not promoted, production stays v{d.production_version}"
    against = "" if d.production_auc is None else f" vs production {d.production_auc:.4f}"
    console.print(
        f"candidate v{d.candidate_version} {outcome}: hold-out ROC-AUC {d.candidate_auc:.4f}{against}"
        f" on {d.holdout_users:,} users of {d.current}",
        highlight=False,
    )


@app.command()
def up() -> None:
    """Start a long-lived local Prefect server and a worker serving the deployments."""
    from streamflow.orchestration import start_server, start_worker

    settings = get_settings()
    url = start_server(settings)
    start_worker(settings)
    console.print(f"Prefect UI: {url}  (monthly_pipeline scheduled monthly; `streamflow down` stops it)")


@app.command()
def down() -> None:
    """Stop the Prefect server and worker started by `streamflow up`."""
    from streamflow.orchestration import stop

    stopped = stop(get_settings())
    console.print("stopped " + ", ".join(stopped) if stopped else "nothing was running")


@app.command()
def worker() -> None:
    """Serve StreamFlow's Prefect deployments (what `streamflow up` runs in the background)."""
    from streamflow.orchestration import serve_deployments, use_server

    use_server(get_settings())
    serve_deployments()


@app.command()
def pipeline(
    month_dir: Annotated[Path, typer.Argument(help="Folder with the six CSV files of the new month.")],
    as_of: AsOf,
) -> None:
    """Run the monthly pipeline flow now: ingest, materialize, train a candidate, gate, promote."""
    from streamflow.orchestration import server_healthy, use_server

    settings = get_settings()
    if server_healthy(settings):
        use_server(settings)
    from streamflow.flows import monthly_pipeline

    console.print(monthly_pipeline(str(month_dir), parse_date(as_of).isoformat()))


if __name__ == "__main__":
    app()
