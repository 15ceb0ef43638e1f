"""``streamflow db ...``: the PostgreSQL server StreamFlow uses."""

from __future__ import annotations

from typing import Any

import typer
from rich.markup import escape

from streamflow import errors
from streamflow.cli.options import (
    Json,
)
from streamflow.cli.output import console, emit_json, err
from streamflow.cli.root import db_app
from streamflow.errors import UsageError
from streamflow.settings import get_settings


@db_app.command("status")
def db_status(as_json: Json = False) -> None:
    """Say which server is configured and whether it answers (exit 3 when it does not)."""
    from streamflow import db

    settings = get_settings()
    kind = "external" if settings.database_url else "embedded"
    out: dict[str, Any] = {"kind": kind, "running": False, "version": None, "target": None, "detail": None}
    if not settings.database_url and not db.embedded_running(settings):
        out |= {"target": str(settings.pg_dir), "detail": "stopped"}
    else:
        try:
            t = db.target(settings)
            with db.connect(t, settings) as conn:
                version = conn.execute("SHOW server_version").fetchone()[0]
            out |= {"running": True, "version": version, "target": t.describe()}
        except db.DatabaseUnavailable as exc:
            out |= {"detail": errors._one_line(exc)}
    if as_json:
        emit_json(out)
    elif out["running"]:
        console.print(f"{kind} PostgreSQL {out['version']}: [green]running[/] ({escape(out['target'])})")
    elif kind == "embedded":
        console.print(f"embedded PostgreSQL at {escape(out['target'])}: [yellow]stopped[/]")
    else:
        err.print(f"[bold red]error:[/] {escape(out['detail'])}")
    if not out["running"]:
        raise typer.Exit(errors.EXIT_DATABASE)


@db_app.command("start")
def db_start() -> None:
    """Start the embedded server (no-op with an external STREAMFLOW_DATABASE_URL) and migrate the schema."""
    from streamflow.data.ingest import prepare

    t = prepare(get_settings())
    console.print(f"PostgreSQL ready: {escape(t.describe())}")


@db_app.command("stop")
def db_stop() -> None:
    """Stop the embedded server."""
    from streamflow import db

    settings = get_settings()
    if settings.database_url:
        raise UsageError("STREAMFLOW_DATABASE_URL points at an external server; StreamFlow does not stop it")
    console.print("stopped" if db.stop_embedded(settings) else "embedded PostgreSQL was not running")
