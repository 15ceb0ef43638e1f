"""The ``streamflow`` command: a thin Typer layer over the package's functions.

Every command checks its arguments first, then its cheap preconditions (plain SQL, see
``preflight.py``), and only then imports what it needs (Feast, MLflow, Prefect: seconds each). So
``streamflow --help``, a mistyped date or a command run before its step answer at once.

Errors: one shared handler (:class:`StreamflowGroup`) turns every error into one line on stderr and
an exit code (``errors.py`` lists them); the traceback only with ``--log-level debug``.

Output: people get rich text; ``--json`` prints one JSON object on stdout instead (keys in the
README), for scripts. Defaults come from Settings (``STREAMFLOW_*``), read when a command runs.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import asdict, is_dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperGroup

from streamflow import catalog, errors, logs, preflight
from streamflow.errors import UsageError
from streamflow.settings import LogLevel, Settings, get_settings

try:  # Typer >= 0.20 ships its own copy of Click
    from typer._click.exceptions import ClickException
except ImportError:  # pragma: no cover - older Typer on the real Click
    from click.exceptions import ClickException  # type: ignore[no-redef]

console = Console(soft_wrap=True, highlight=False)  # results: stdout, never wrapped (pasteable, greppable)
err = Console(stderr=True, soft_wrap=True, highlight=False)

SERVERS = ("serve", "mlflow-ui", "worker")  # long-running: logging defaults to info


def report(exc: BaseException) -> int:
    """Print ``exc`` as one line (a contract violation lists one violation per line) and return the
    exit code."""
    user = errors.as_user_error(exc)
    debug = logging.getLogger("streamflow").isEnabledFor(logging.DEBUG)
    if debug:
        err.print(escape("".join(traceback.format_exception(exc))))
    if user is None:
        hint = "" if debug else " (`streamflow --log-level debug ...` shows the traceback)"
        err.print(
            f"[bold red]error:[/] unexpected {type(exc).__name__}: {escape(errors._one_line(exc))}{hint}"
        )
        return errors.EXIT_BUG
    err.print(f"[bold red]error:[/] {escape(str(user))}")
    return user.exit_code


class StreamflowGroup(TyperGroup):
    """Typer's group with one error handler for every command: StreamFlow's own errors and Click's
    usage errors become one line and an exit code, never a traceback."""

    def main(  # type: ignore[override]
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
            code = code if isinstance(code, int) else errors.EXIT_OK
        except ClickException as exc:
            if type(exc).__name__ == "NoArgsIsHelpError":
                exc.show()
            else:
                ctx = getattr(exc, "ctx", None)
                where = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
                err.print(f"[bold red]error:[/] {escape(exc.format_message())}{where}")
            code = exc.exit_code
        except (typer.Abort, KeyboardInterrupt):
            err.print("interrupted")
            code = errors.EXIT_INTERRUPTED
        except Exception as exc:
            code = report(exc)
        if standalone_mode:
            sys.exit(code)
        return code


def _typer(help: str, **kwargs: Any) -> typer.Typer:
    return typer.Typer(help=help, no_args_is_help=True, cls=StreamflowGroup, **kwargs)


app = _typer("StreamFlow: churn predictions from monthly exports to a live API.")
db_app = _typer("The PostgreSQL server StreamFlow uses.")
data_app = _typer("Monthly export data.")
features_app = _typer("The Feast feature store.")
app.add_typer(db_app, name="db")
app.add_typer(data_app, name="data")
app.add_typer(features_app, name="features")

AsOf = Annotated[str, typer.Option("--as-of", help="Snapshot date YYYY-MM-DD.")]
Json = Annotated[bool, typer.Option("--json", help="Print the result as one JSON object on stdout.")]
RevisionOpt = Annotated[
    int | None,
    typer.Option(
        "--revision",
        min=1,
        help="Read the --as-of month at this revision (default: the one it serves;"
        " `streamflow data revisions` lists them).",
    ),
]


# --------------------------------------------------------------------------- shared pieces


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


def parse_date(value: str, option: str = "--as-of") -> date:
    # Exactly YYYY-MM-DD: date.fromisoformat alone also takes 20240229 and 2024-W09-4.
    try:
        if len(value) == 10 and value[4] == value[7] == "-":
            return date.fromisoformat(value)
    except ValueError:
        pass
    raise UsageError(f"{option}: '{value}' is not a date YYYY-MM-DD")


def check_model(model: str, option: str = "--model") -> str:
    if model not in catalog.MODEL_TYPES:
        raise UsageError(f"{option}: unknown model type {model!r}; known: {', '.join(catalog.MODEL_TYPES)}")
    return model


def check_feature_service(service: str, option: str = "--feature-service") -> str:
    if service not in catalog.FEATURE_SERVICES:
        raise UsageError(
            f"{option}: unknown feature service {service!r}; known: {', '.join(catalog.FEATURE_SERVICES)}"
        )
    return service


def check_folder(folder: Path, what: str = "MONTH_DIR") -> Path:
    if not folder.is_dir():
        raise UsageError(
            f"{what}: {folder} is not a folder" if folder.exists() else f"{what}: {folder} does not exist"
        )
    return folder


def plain(value: Any) -> Any:
    """``value`` as JSON-ready data: dates ISO, paths strings, NaN/inf null."""
    if is_dataclass(value) and not isinstance(value, type):
        value = asdict(value)
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [plain(v) for v in value]
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item") and not isinstance(value, str | bytes):  # numpy scalars
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def emit_json(payload: Mapping[str, Any]) -> None:
    sys.stdout.write(json.dumps(plain(payload), allow_nan=False) + "\n")
    sys.stdout.flush()


def _round(value: float | None, digits: int = 6) -> float | None:
    return None if value is None or not math.isfinite(value) else round(float(value), digits)


# --------------------------------------------------------------------------- database


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


# --------------------------------------------------------------------------- data


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
                "seconds": _round(result.seconds, 3),
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


# --------------------------------------------------------------------------- features


@features_app.command("apply")
def features_apply(as_json: Json = False) -> None:
    """Register the entity, feature views and feature services (idempotent), and write the Feast repo
    under the state folder (feature_store.yaml + definitions.py) for Feast's own CLI."""
    from streamflow.features.apply import apply

    settings = get_settings()
    r = apply(settings)
    out = {
        "entities": r.entities,
        "feature_views": r.feature_views,
        "feature_services": r.feature_services,
        "deleted": r.deleted,
        "feast_repo": settings.feast_dir,
        "seconds": _round(r.seconds, 3),
    }
    if as_json:
        emit_json(out)
        return
    deleted = f"; deleted {', '.join(r.deleted)}" if r.deleted else ""
    console.print(
        f"feature store applied: {len(r.entities)} entity, {len(r.feature_views)} feature views,"
        f" {len(r.feature_services)} feature services{deleted}"
        f" (Feast repo: {escape(str(settings.feast_dir))})"
    )


@features_app.command("materialize")
def features_materialize(as_of: AsOf, revision: RevisionOpt = None, as_json: Json = False) -> None:
    """Load the latest snapshot at or before AS_OF into the online store (at REVISION if given)."""
    day = parse_date(as_of)
    settings = get_settings()
    with preflight.checks(settings) as check:
        pins = check.revision(check.snapshot(day, at_or_before=True), revision)
        check.applied()
    from streamflow.features.materialize import materialize

    r = materialize(settings, day, pins=pins)
    if as_json:
        emit_json(materialize_summary(r))
        return
    if r.skipped:
        console.print(
            f"online store already serves the snapshot at {r.snapshot_as_of} (asked {day}): nothing to write"
        )
    else:
        at = f" revision {revision}" if revision is not None else ""
        console.print(
            f"materialized the snapshot at {r.snapshot_as_of}{at} (asked {day}, {r.plan.reason} load):"
            f" {r.rows:,} rows for {r.users:,} users in {r.seconds:.1f} s"
        )


def materialize_summary(r: Any) -> dict[str, Any]:
    return {
        "as_of": r.as_of,
        "snapshot_as_of": r.snapshot_as_of,
        "revision": r.plan.pins.get(r.snapshot_as_of),  # null: the revision the month serves
        "reason": r.plan.reason,
        "skipped": r.skipped,
        "rows": r.rows,
        "users": r.users,
        "window_start": r.plan.window_start,
        "window_end": r.plan.window_end,
        "seconds": _round(r.seconds, 3),
    }


# --------------------------------------------------------------------------- training and registry


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


def decision_summary(d: Any) -> dict[str, Any]:
    return {
        "version": d.version,
        "promoted": d.promoted,
        "previous_version": d.previous_version,
        "candidate_auc": _round(d.candidate_auc),
        "production_auc": _round(d.production_auc),
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
                        "roc_auc": _round(r.roc_auc),
                        "threshold": _round(r.threshold),
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


# --------------------------------------------------------------------------- servers


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


# --------------------------------------------------------------------------- monitoring


@app.command()
def score(
    as_of: AsOf,
    version: Annotated[
        int | None, typer.Option(help="Model version to score with (default: production).")
    ] = None,
    revision: RevisionOpt = None,
    as_json: Json = False,
) -> None:
    """Score every user of the snapshot at AS_OF with the production model (or VERSION) into `predictions`.

    With REVISION the month's features are read at that revision; its scores replace (AS_OF, VERSION)'s."""
    day = parse_date(as_of)
    settings = get_settings()
    with preflight.checks(settings) as check:
        check.snapshot(day)
        pins = check.revision(day, revision)
        check.applied()
    from streamflow.monitoring.scoring import score_snapshot

    if version is not None:
        _check_version(settings, version)
    r = score_snapshot(settings, day, version, pins=pins)
    if as_json:
        emit_json(
            {
                "as_of": r.as_of,
                "revision": revision,  # null: the revision the month serves
                "model_name": r.model_name,
                "model_version": r.model_version,
                "feature_service": r.feature_service,
                "threshold": r.threshold,
                "rows": r.rows,
                "predicted_churners": r.predicted_churners,
                "mean_probability": _round(r.mean_probability),
                "replaced": r.replaced,
                "seconds": _round(r.seconds, 3),
            }
        )
        return
    at = f" (revision {revision})" if revision is not None else ""
    console.print(
        f"scored {r.rows:,} users as of {r.as_of}{at} with {r.model_name} v{r.model_version}: "
        f"{r.predicted_churners:,} predicted churners, mean probability {r.mean_probability:.3f}"
    )


def _check_version(settings: Settings, version: int) -> None:
    import mlflow

    from streamflow.training.tracking import use_mlflow

    use_mlflow(settings)
    try:
        mlflow.MlflowClient().get_model_version(settings.model_name, str(version))
    except mlflow.exceptions.MlflowException:
        raise UsageError(f"--version: {settings.model_name} has no version {version}") from None


@app.command()
def drift(
    reference: Annotated[str, typer.Option(help="Reference snapshot YYYY-MM-DD.")],
    current: Annotated[str, typer.Option(help="Current snapshot YYYY-MM-DD.")],
    feature_service: Annotated[
        str | None,
        typer.Option(help="FeatureService whose features are compared (default STREAMFLOW_FEATURE_SERVICE)."),
    ] = None,
    revision: Annotated[
        int | None,
        typer.Option(
            "--revision",
            min=1,
            help="Read the --current month at this revision (default: the one it serves).",
        ),
    ] = None,
    as_json: Json = False,
) -> None:
    """Evidently drift report between two snapshots (HTML + JSON, logged to MLflow)."""
    ref, cur = parse_date(reference, "--reference"), parse_date(current, "--current")
    settings = get_settings()
    service = check_feature_service(feature_service or settings.feature_service)
    with preflight.checks(settings) as check:
        check.snapshot(ref)
        check.snapshot(cur)
        pins = check.revision(cur, revision)
        check.applied(service)
    from streamflow.monitoring.drift import drift_report

    r = drift_report(settings, ref, cur, service, pins=pins)
    if as_json:
        emit_json(drift_summary(r, revision))
        return
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
    console.print(f"report: {escape(str(r.html_path))}")


def drift_summary(r: Any, revision: int | None = None) -> dict[str, Any]:
    return {
        "reference": r.reference,
        "current": r.current,
        "current_revision": revision,  # null: the revision the month serves
        "feature_service": r.feature_service,
        "drift_share": _round(r.drift_share),
        "drifted_features": list(r.drifted_features),
        "features": {
            name: {
                "kind": f.kind,
                "method": f.method,
                "score": _round(f.score),
                "threshold": f.threshold,
                "drifted": f.drifted,
                "p_value": _round(f.p_value),
            }
            for name, f in r.features.items()
        },
        "target": None
        if r.target is None
        else {
            "reference_rate": _round(r.target.reference_rate),
            "current_rate": _round(r.target.current_rate),
            "difference": _round(r.target.difference),
            "p_value": r.target.p_value,
            "alpha": r.target.alpha,
            "drifted": r.target.drifted,
        },
        "prediction": None
        if r.prediction is None
        else {
            "model_version": r.prediction.model_version,
            "method": r.prediction.method,
            "score": _round(r.prediction.score),
            "drifted": r.prediction.drifted,
            "reference_mean": _round(r.prediction.reference_mean),
            "current_mean": _round(r.prediction.current_mean),
        },
        "html_path": r.html_path,
        "json_path": r.json_path,
        "mlflow_run_id": r.mlflow_run_id,
    }


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
    model: Annotated[
        str | None, typer.Option(help="Candidate model type (default STREAMFLOW_CANDIDATE_MODEL_TYPE).")
    ] = None,
    feature_service: Annotated[
        str | None,
        typer.Option(help="Candidate's FeatureService (default STREAMFLOW_CANDIDATE_FEATURE_SERVICE)."),
    ] = None,
    as_json: Json = False,
) -> None:
    """Drift check, then (when a retraining trigger fires) a candidate on CURRENT through the gate.

    Triggers: feature-drift share >= threshold; target drift p < STREAMFLOW_TARGET_DRIFT_ALPHA;
    production's hold-out ROC-AUC on CURRENT's labels more than STREAMFLOW_RETRAIN_AUC_DROP below
    its training one. A promoted candidate gets the online store materialized to CURRENT."""
    ref, cur = parse_date(reference, "--reference"), parse_date(current, "--current")
    settings = get_settings()
    model = check_model(model or settings.candidate_model_type)
    service = check_feature_service(feature_service or settings.candidate_feature_service)
    with preflight.checks(settings) as check:
        check.snapshot(ref)
        check.snapshot(cur)
        check.applied(service)
    from streamflow.monitoring import retrain

    d = retrain.monitor_and_retrain(settings, ref, cur, threshold, model, service)
    if as_json:
        emit_json(
            {
                "reference": d.reference,
                "current": d.current,
                "retrained": d.retrained,
                "promoted": d.promoted,
                "fired": list(d.fired),
                "triggers": [
                    {
                        "name": t.name,
                        "fired": t.fired,
                        "value": _round(t.value),
                        "limit": t.limit,
                        "detail": t.detail,
                    }
                    for t in d.triggers
                ],
                "drift_share": _round(d.drift_share),
                "drift_run_id": d.drift_run_id,
                "production_version": d.production_version,
                "candidate_version": d.candidate_version,
                "candidate_auc": _round(d.candidate_auc),
                "production_auc": _round(d.production_auc),
                "holdout_users": d.holdout_users,
                "online_as_of": d.online_as_of,
                "reason": d.reason,
            }
        )
        return
    if not d.retrained:
        console.print(escape(d.reason))  # "no retraining: " and every trigger's figures
        return
    console.print(f"retraining triggered by {', '.join(d.fired)}:")
    for t in d.triggers:
        console.print(f"  {'fired' if t.fired else 'not fired'}: {escape(t.detail)}")
    outcome = "promoted" if d.promoted else f"not promoted, production stays v{d.production_version}"
    against = "" if d.production_auc is None else f" vs production {d.production_auc:.4f}"
    console.print(
        f"candidate v{d.candidate_version} {outcome}: hold-out ROC-AUC {d.candidate_auc:.4f}{against}"
        f" on {d.holdout_users:,} users of {d.current}"
    )
    if d.promoted and d.online_as_of is not None:
        console.print(f"online store serves the snapshot at {d.online_as_of}")


# --------------------------------------------------------------------------- orchestration


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


if __name__ == "__main__":
    app()
