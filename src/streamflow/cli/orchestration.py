"""``streamflow up``, ``down``, ``worker`` and ``pipeline``: Prefect."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from streamflow import logs
from streamflow.cli.options import (
    AsOf,
    Json,
    check_feature_service,
    check_folder,
    check_model,
    parse_date,
)
from streamflow.cli.output import console, emit_json
from streamflow.cli.root import app
from streamflow.settings import get_settings


@app.command()
def up() -> None:
    """Start a long-lived local Prefect server and a worker serving the deployments."""
    from streamflow.orchestration import start_server, start_worker

    settings = get_settings()
    server = start_server(settings)
    start_worker(settings)
    already = "" if server.started else " (the server was already running)"
    console.print(
        f"Prefect UI: {server.url}{already}  (monthly_pipeline scheduled monthly; `streamflow down` stops it)"
    )


@app.command()
def down() -> None:
    """Stop the Prefect server and worker started by `streamflow up` (nothing else is ever signalled)."""
    from streamflow.orchestration import stop

    r = stop(get_settings())
    console.print("stopped " + ", ".join(r.stopped) if r.stopped else "nothing was running")
    for note in r.notes:
        console.print(escape(note))


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
    model: Annotated[
        str | None, typer.Option(help="Candidate model type (default STREAMFLOW_CANDIDATE_MODEL_TYPE).")
    ] = None,
    feature_service: Annotated[
        str | None,
        typer.Option(help="Candidate's FeatureService (default STREAMFLOW_CANDIDATE_FEATURE_SERVICE)."),
    ] = None,
    as_json: Json = False,
) -> None:
    """Run the monthly pipeline flow now: ingest, materialize, train a candidate, gate, promote.

    On this state folder's Prefect server when it runs (`streamflow up`), else on a temporary one."""
    day = parse_date(as_of)
    check_folder(month_dir)
    settings = get_settings()
    model = check_model(model or settings.candidate_model_type)
    service = check_feature_service(feature_service or settings.candidate_feature_service)
    from streamflow.orchestration import server_identity, use_server

    if server_identity(settings)[0] == "ours":
        use_server(settings)
    else:  # Prefect runs the flow on a temporary server of its own: without telemetry, and with
        # time to start on a busy machine (Prefect's 20 s default was seen to run out under load).
        os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
        os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    from streamflow.flows import monthly_pipeline

    logs.quiet_prefect_console()

    r = monthly_pipeline(str(month_dir), day.isoformat(), model, service)
    if as_json:
        emit_json(r)
        return
    console.print(f"ingested {escape(str(month_dir))} as of {day}: {sum(r['ingested'].values()):,} rows")
    m = r["materialized"]
    console.print(f"online store serves the snapshot at {m['snapshot_as_of']} ({m['rows']:,} rows written)")
    verb = "[green]promoted[/]" if r["promoted"] else "[yellow]kept production[/]"
    console.print(f"candidate v{r['candidate']} ({model} on {service}): {verb}: {escape(r['reason'])}")
