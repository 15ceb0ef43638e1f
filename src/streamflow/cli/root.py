"""The ``streamflow`` group, its command groups and its global options (--log-level, --version)."""

from __future__ import annotations

import os
from typing import Annotated

import typer

from streamflow import logs
from streamflow.cli.group import new_typer
from streamflow.cli.output import console
from streamflow.settings import LogLevel, get_settings

SERVERS = ("serve", "mlflow-ui", "worker")  # long-running: logging defaults to info


app = new_typer("StreamFlow: churn predictions from monthly exports to a live API.")
db_app = new_typer("The PostgreSQL server StreamFlow uses.")
data_app = new_typer("Monthly export data.")
features_app = new_typer("The Feast feature store.")
app.add_typer(db_app, name="db")
app.add_typer(data_app, name="data")
app.add_typer(features_app, name="features")


def _version_callback(value: bool) -> None:
    if value:
        from streamflow import __version__

        console.print(f"streamflow {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    ctx: typer.Context,
    log_level: Annotated[
        LogLevel | None,
        typer.Option(
            "--log-level",
            case_sensitive=False,
            help="StreamFlow's and uvicorn's log level (default STREAMFLOW_LOG_LEVEL; unset: warning,"
            " info for serve/mlflow-ui/worker).",
        ),
    ] = None,
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version_callback, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    if log_level is not None:
        os.environ["STREAMFLOW_LOG_LEVEL"] = log_level  # for this process's Settings and its children
        getattr(get_settings, "cache_clear", lambda: None)()
    logs.configure(get_settings().log_level, server=ctx.invoked_subcommand in SERVERS)
