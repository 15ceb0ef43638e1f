"""Long-running commands: ``serve`` (the API), ``mlflow-ui`` and ``demo``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from streamflow import logs
from streamflow.cli.options import (
    check_folder,
    parse_date,
)
from streamflow.cli.root import app
from streamflow.settings import get_settings


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Bind address (default STREAMFLOW_API_HOST).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default STREAMFLOW_API_PORT).")] = None,
    workers: Annotated[int, typer.Option(min=1, help="Worker processes.")] = 1,
) -> None:
    """Serve the prediction API (uvicorn with uvloop and httptools)."""
    from streamflow.serving.server import serve as run_server

    settings = get_settings()
    run_server(host, port, workers, log_level=logs.effective_level(settings.log_level, server=True))


@app.command("mlflow-ui")
def mlflow_ui(
    host: Annotated[str | None, typer.Option(help="Bind address (default STREAMFLOW_MLFLOW_HOST).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default STREAMFLOW_MLFLOW_PORT).")] = None,
) -> None:
    """Serve the MLflow UI over StreamFlow's tracking store and artifacts (Ctrl-C or SIGTERM stops
    MLflow's server and every process it started)."""
    from streamflow.processes import supervise
    from streamflow.training.tracking import mlflow_server_command

    settings = get_settings()
    command = mlflow_server_command(settings, host or settings.mlflow_host, port or settings.mlflow_port)
    raise typer.Exit(supervise(command))


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
    """End to end: database, data, features, training, promotion, then the API, MLflow and Prefect UIs.

    Ctrl-C stops everything the demo started (and says what it left running)."""
    first = parse_date(start, "--start")
    if seeds is not None:
        check_folder(seeds, "--seeds")
    from streamflow.demo import run_demo

    run_demo(get_settings(), seeds, first, users, fresh, serve)
