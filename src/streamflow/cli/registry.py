"""``streamflow promote``, ``rollback`` and ``models``: the production alias and the versions."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.markup import escape

from streamflow import errors
from streamflow.cli.options import (
    Json,
)
from streamflow.cli.output import console, emit_json, rounded
from streamflow.cli.root import app
from streamflow.errors import UsageError
from streamflow.settings import get_settings


def decision_summary(d: Any) -> dict[str, Any]:
    return {
        "version": d.version,
        "promoted": d.promoted,
        "previous_version": d.previous_version,
        "candidate_auc": rounded(d.candidate_auc),
        "production_auc": rounded(d.production_auc),
        "reason": d.reason,
        "online_as_of": d.online_as_of,
        "materialized": d.materialized,
    }


def _print_online(d: Any) -> None:
    if d.materialized:
        console.print(f"online store materialized to {d.online_as_of} for version {d.version}")


@app.command()
def promote(
    version: Annotated[int | None, typer.Option(help="Version to promote.")] = None,
    best: Annotated[
        bool, typer.Option("--best", help="Promote the best version of the latest as_of.")
    ] = False,
    force: Annotated[bool, typer.Option("--force", help="Skip the gate.")] = False,
    as_json: Json = False,
) -> None:
    """Give the production alias to a version if it passes the gate (exit 4 when production stays).

    The online store is brought to the version's as_of first if it holds an older snapshot."""
    if version is None and not best:
        raise UsageError("name a --version or ask for --best")
    from streamflow.registry import promote as do_promote

    d = do_promote(get_settings(), version=version, best=best, force=force)
    if as_json:
        emit_json(decision_summary(d))
    else:
        verb = "[green]promoted[/]" if d.promoted else "[yellow]kept production[/]"
        console.print(f"{verb} version {d.version}: {escape(d.reason)}")
        _print_online(d)
    if not d.promoted:
        raise typer.Exit(errors.EXIT_KEPT)


@app.command()
def rollback(as_json: Json = False) -> None:
    """Give the production alias back to the previous production version."""
    from streamflow.registry import rollback as do_rollback

    d = do_rollback(get_settings())
    if as_json:
        emit_json(decision_summary(d))
        return
    console.print(f"production is version {d.version} again ({escape(d.reason)})")
    _print_online(d)


@app.command()
def models(as_json: Json = False) -> None:
    """List the registered versions, their hold-out metrics and which one is in production."""
    from streamflow.registry import list_versions

    settings = get_settings()
    rows = list_versions(settings)
    production = next((r.version for r in rows if settings.production_alias in r.aliases), None)
    if as_json:
        emit_json(
            {
                "model": settings.model_name,
                "production_version": production,
                "versions": [
                    {
                        "version": r.version,
                        "model_type": r.model_type,
                        "feature_service": r.feature_service,
                        "as_of": r.as_of,
                        "roc_auc": rounded(r.roc_auc),
                        "threshold": rounded(r.threshold),
                        "aliases": list(r.aliases),
                        "created": r.created,
                    }
                    for r in rows
                ],
            }
        )
        return
    if not rows:
        console.print(
            f"no versions of {settings.model_name} yet: train one (streamflow train --as-of YYYY-MM-DD)"
        )
        return
    from rich.table import Table

    table = Table("version", "model", "features", "as_of", "roc_auc", "threshold", "aliases", "created")
    for row in rows:
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
