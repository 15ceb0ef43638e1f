"""``streamflow ingest`` and ``streamflow data ...``: monthly exports and their revisions."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from streamflow import preflight
from streamflow.cli.options import (
    AsOf,
    Json,
    check_folder,
    parse_date,
)
from streamflow.cli.output import console, emit_json, err, rounded
from streamflow.cli.root import app, data_app
from streamflow.errors import UsageError
from streamflow.settings import get_settings


@app.command()
def ingest(
    month_dir: Annotated[Path, typer.Argument(help="Folder with the six CSV files of one month.")],
    as_of: AsOf,
    allow_incomplete: Annotated[
        bool,
        typer.Option("--allow-incomplete", help="Accept users of users.csv that lack a row in another file."),
    ] = False,
    force: Annotated[
        bool,
        typer.Option(
            "--force", help="Accept files identical to a month already ingested under another date."
        ),
    ] = False,
    as_json: Json = False,
) -> None:
    """Validate a monthly export and load it as the snapshot at AS_OF (all or nothing).

    The same files again change nothing; different files for a loaded AS_OF become its next revision."""
    day = parse_date(as_of)
    check_folder(month_dir)
    from streamflow.data.ingest import ingest_month

    result = ingest_month(
        month_dir,
        day,
        get_settings(),
        show_progress=not as_json,
        allow_incomplete=allow_incomplete,
        force=force,
    )
    rows = sum(result.row_counts.values())
    if as_json:
        emit_json(
            {
                "month_dir": str(result.month_dir),
                "as_of": result.as_of,
                "revision": result.revision,
                "status": result.status,
                "rows": dict(result.row_counts),
                "total_rows": rows,
                "seconds": rounded(result.seconds, 3),
                "warnings": list(result.warnings),
            }
        )
        return
    for warning in result.warnings:
        err.print(f"[yellow]warning:[/] {escape(warning)}", soft_wrap=True)
    if result.status == "unchanged":
        console.print(
            f"{escape(str(result.month_dir))} is already revision {result.revision} of {result.as_of}:"
            " nothing to do"
        )
        return
    console.print(
        f"ingested {escape(str(result.month_dir))} as of {result.as_of} (revision {result.revision}): "
        + ", ".join(f"{k} {v:,}" for k, v in result.row_counts.items())
        + f" ({rows / max(result.seconds, 1e-9):,.0f} rows/s)"
    )


@data_app.command("generate")
def data_generate(
    out: Annotated[Path, typer.Argument(help="Folder to write month_000, month_001, ... into.")],
    users: Annotated[int, typer.Option(min=1, help="Subscribers in the first month.")] = 7043,
    months: Annotated[int, typer.Option(min=1, help="How many months.")] = 2,
    seed: Annotated[
        int | None, typer.Option(help="Random seed, same seed same bytes (default STREAMFLOW_SEED).")
    ] = None,
    start: Annotated[str, typer.Option(help="as_of of the first month (a month end).")] = "2024-01-31",
) -> None:
    """Write realistic synthetic months that satisfy the export contract."""
    first = parse_date(start, "--start")
    seed = get_settings().seed if seed is None else seed
    from streamflow.data.generate import generate_months

    try:
        written = generate_months(out, users=users, months=months, seed=seed, start=first, progress=True)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    for folder, as_of in written:
        console.print(f"{escape(str(folder))}  as_of {as_of}")


@data_app.command("revisions")
def data_revisions(
    as_of: Annotated[str | None, typer.Option("--as-of", help="Only this month (YYYY-MM-DD).")] = None,
    as_json: Json = False,
) -> None:
    """List every revision of every month (or of AS_OF): ingested when, rows, state, and the
    registered model versions trained on it (their streamflow.revisions tag)."""
    day = parse_date(as_of) if as_of is not None else None
    settings = get_settings()
    with preflight.checks(settings) as check:
        if day is not None:
            check.snapshot(day)
        else:
            check.data()
    from streamflow.data.pruning import list_revisions

    rows = list_revisions(settings, day)
    if as_json:
        emit_json(
            {
                "model": settings.model_name,
                "revisions": [
                    {
                        "as_of": r.as_of,
                        "revision": r.revision,
                        "ingested_at": r.ingested_at,
                        "rows": r.rows,
                        "state": r.state,
                        "pruned_at": r.pruned_at,
                        "versions": list(r.versions),
                    }
                    for r in rows
                ],
            }
        )
        return
    from rich.table import Table

    table = Table("as_of", "revision", "ingested at", "rows", "state", f"{settings.model_name} versions")
    for r in rows:
        state = f"pruned {r.pruned_at:%Y-%m-%d %H:%M}" if r.pruned_at else r.state
        table.add_row(
            r.as_of.isoformat(),
            str(r.revision),
            f"{r.ingested_at:%Y-%m-%d %H:%M:%S %Z}",
            f"{r.rows:,}",
            state,
            ", ".join(f"v{v}" for v in r.versions),
        )
    console.print(table)


@data_app.command("prune")
def data_prune(
    as_of: AsOf,
    revision: Annotated[int, typer.Option("--revision", min=1, help="The earlier revision to prune.")],
    force: Annotated[
        bool, typer.Option("--force", help="Prune even if registered model versions were trained on it.")
    ] = False,
    as_json: Json = False,
) -> None:
    """Drop an earlier revision's tables (the record of it stays, marked pruned), in one transaction.

    Never the current (served) revision; not one a registered version depends on, unless --force."""
    day = parse_date(as_of)
    settings = get_settings()
    with preflight.checks(settings) as check:
        check.data()
    from streamflow.data.pruning import prune

    r = prune(settings, day, revision, force=force)
    if as_json:
        emit_json(
            {
                "as_of": r.as_of,
                "revision": r.revision,
                "status": r.status,
                "pruned_at": r.pruned_at,
                "tables": list(r.tables),
                "versions": list(r.versions),
            }
        )
        return
    if r.status == "already_pruned":
        when = f"{r.pruned_at:%Y-%m-%d %H:%M:%S %Z}"
        console.print(f"revision {r.revision} of {r.as_of} was already pruned (at {when}): nothing to do")
        return
    forced = (
        f"; versions {', '.join(f'v{v}' for v in r.versions)} trained on it can no longer be reproduced"
        if r.versions
        else ""
    )
    console.print(f"pruned revision {r.revision} of {r.as_of}: dropped {len(r.tables)} tables{forced}")
