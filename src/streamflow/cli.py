"""The ``streamflow`` command: a thin Typer layer over the package's functions.

Heavy imports (Feast, MLflow, Prefect, scikit-learn) happen inside the commands that need them,
so ``streamflow --help`` and ``streamflow db status`` answer at once.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from streamflow.settings import get_settings

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
    err.print(f"[bold red]error:[/] {message}", highlight=False)
    return typer.Exit(code)


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
