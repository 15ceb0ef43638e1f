"""``streamflow demo``: from nothing to served predictions, on the embedded PostgreSQL.

Each stage runs as a Prefect flow on the local server (so it shows in the UI), is timed, and is
skipped when its result already exists: a second run reuses what the first one built.

Stopping: one Ctrl-C (or SIGTERM), at any stage, stops everything the demo started, newest first:
the API, the MLflow UI (each a process group: MLflow's server and its uvicorn workers go together),
the Prefect server and the embedded PostgreSQL. What was already running when the demo began (the
embedded server, or this state folder's Prefect server from ``streamflow up``) is left running, and
the demo says so. Further signals during the shutdown are acknowledged, not obeyed: the shutdown
always finishes, so nothing leaks.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import date
from pathlib import Path
from typing import Any

from rich.console import Console

from streamflow import db, processes
from streamflow.errors import ProcessConflict
from streamflow.settings import Settings

console = Console(soft_wrap=True, highlight=False)


@contextmanager
def stage(number: int, total: int, title: str) -> Iterator[None]:
    console.rule(f"[bold]{number}/{total} {title}")
    started = time.perf_counter()
    yield
    console.print(f"[green]done[/] in {time.perf_counter() - started:.1f} s")


def candidates(settings: Settings) -> tuple[tuple[str, str], ...]:
    """What the demo trains: the course model, and the candidate the monthly pipeline retrains."""
    return (
        (settings.model_type, settings.feature_service),
        (settings.candidate_model_type, settings.candidate_feature_service),
    )


def month_folders(seeds: Path, start: date) -> list[tuple[Path, date]]:
    from streamflow.data.generate import as_of_dates

    folders = sorted(p for p in seeds.iterdir() if p.is_dir() and p.name.startswith("month_"))
    if not folders:
        raise FileNotFoundError(f"no month_NNN folders in {seeds}")
    return list(zip(folders, as_of_dates(start, len(folders)), strict=True))


def _hashes(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("*.csv"))}


def already_ingested(settings: Settings, folder: Path, as_of: date) -> bool:
    with db.connect(db.target(settings), settings) as conn:
        if not conn.execute("SELECT to_regclass('ingestion_log') IS NOT NULL").fetchone()[0]:
            return False
        row = conn.execute(
            "SELECT file_hashes FROM ingestion_log WHERE as_of = %s AND status = 'succeeded'"
            " ORDER BY id DESC LIMIT 1",
            (as_of,),
        ).fetchone()
    return bool(row) and row[0] == _hashes(folder)


def existing_version(settings: Settings, model_type: str, service: str, as_of: date) -> int | None:
    import mlflow

    from streamflow.training.tracking import use_mlflow

    use_mlflow(settings)
    for mv in mlflow.MlflowClient().search_model_versions(f"name='{settings.model_name}'"):
        tags = mv.tags
        if (tags.get("model_type"), tags.get("feature_service"), tags.get("as_of")) == (
            model_type,
            service,
            as_of.isoformat(),
        ):
            return int(mv.version)
    return None


def export_settings(settings: Settings) -> None:
    """Make these Settings the process's and its children's: flows and servers read the environment."""
    from streamflow.settings import get_settings

    for name, value in settings.model_dump().items():
        if value is not None:
            secret = getattr(value, "get_secret_value", None)
            os.environ[f"STREAMFLOW_{name.upper()}"] = str(secret() if secret else value)
    get_settings.cache_clear()


def _require_free(host: str, port: int, setting: str, what: str) -> None:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            raise ProcessConflict(
                f"{host}:{port} is taken, the {what} cannot listen there",
                f"stop what listens there, or set {setting}",
            ) from None


class Cleanup:
    """What the demo started, stopped newest first; what it found running, named and left alone."""

    def __init__(self) -> None:
        self._steps: list[tuple[str, Callable[[], bool]]] = []
        self.left_running: list[str] = []

    def add(self, label: str, stop: Callable[[], bool]) -> None:
        """``stop`` returns False when it found nothing to stop."""
        self._steps.append((label, stop))

    def close(self) -> None:
        def acknowledge(_signum: int, _frame: object) -> None:
            console.print("still stopping: the demo exits as soon as everything it started has stopped")

        for s in (signal.SIGINT, signal.SIGTERM):
            signal.signal(s, acknowledge)
        stopped = []
        while self._steps:
            label, stop = self._steps.pop()
            try:
                if stop():
                    stopped.append(label)
            except Exception as exc:  # keep going: every other step must still run
                console.print(f"[red]could not stop {label}:[/] {type(exc).__name__}: {exc}")
        if stopped:
            console.print("stopped " + ", ".join(stopped))
        for note in self.left_running:
            console.print(f"left running: {note}")


def _group_stopper(process: Any) -> Callable[[], bool]:
    def stop() -> bool:
        processes.stop_group(process.pid, timeout_s=30, reap=process.poll)
        process.wait()
        return True

    return stop


def run_demo(
    settings: Settings,
    seeds: Path | None,
    start: date,
    users: int,
    fresh: bool,
    serve: bool,
    wait: Callable[[], None] | None = None,
) -> dict[str, Any] | None:
    """Build the stack and (``serve``) run it until interrupted; None when interrupted while serving."""
    from streamflow import orchestration

    export_settings(settings)
    if fresh:
        if settings.database_url:
            raise ValueError("--fresh only resets the embedded state; drop the external databases yourself")
        orchestration.stop(settings)
        db.stop_embedded(settings)
        shutil.rmtree(settings.state_dir, ignore_errors=True)

    def interrupt(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    # Explicit handlers: a shell without job control starts background jobs with SIGINT ignored.
    previous = {s: signal.signal(s, interrupt) for s in (signal.SIGINT, signal.SIGTERM)}
    cleanup = Cleanup()
    serving = False
    try:
        result = _build(settings, seeds, start, users, serve, cleanup)
        if serve:
            serving = True
            (wait or _wait_forever)()
        return result
    except KeyboardInterrupt:
        console.print("\nstopping...")
        if not serving:
            raise
        return None
    finally:
        cleanup.close()
        for s, handler in previous.items():
            signal.signal(s, handler)


def _wait_forever() -> None:
    while True:
        time.sleep(3600)


def _build(
    settings: Settings, seeds: Path | None, start: date, users: int, serve: bool, cleanup: Cleanup
) -> dict[str, Any]:
    from streamflow import orchestration

    total = 7 if serve else 6
    with stage(1, total, "PostgreSQL and the Prefect server"):
        from streamflow.data.ingest import prepare

        if settings.database_url:
            t = prepare(settings)
            console.print(f"PostgreSQL: {t.describe()} (external)")
        elif db.embedded_running(settings):
            t = prepare(settings)
            console.print(f"PostgreSQL: {t.describe()} (already running: it stays up when the demo stops)")
            cleanup.left_running.append(
                f"embedded PostgreSQL at {settings.pg_dir} (`streamflow db stop` stops it)"
            )
        else:
            cleanup.add("the embedded PostgreSQL", lambda: db.stop_embedded(settings))
            t = prepare(settings)
            console.print(f"PostgreSQL: {t.describe()}")
        if serve:  # before anything slow: a taken port is known at once
            _require_free(settings.api_host, settings.api_port, "STREAMFLOW_API_PORT", "API")
            _require_free(settings.mlflow_host, settings.mlflow_port, "STREAMFLOW_MLFLOW_PORT", "MLflow UI")
        started: list[bool] = []  # empty while start_server runs: an interrupted start is stopped too

        def stop_prefect() -> bool:
            if started and not started[0]:
                return False  # it was running before the demo
            return orchestration.SERVER in orchestration.stop(settings, (orchestration.SERVER,)).stopped

        # Registered before the start: stop() only ever signals the server whose pid file it wrote.
        cleanup.add("the Prefect server", stop_prefect)
        server = orchestration.start_server(settings)
        started.append(server.started)
        orchestration.use_server(settings)
        if server.started:
            console.print(f"Prefect: {server.url}")
        else:
            console.print(f"Prefect: {server.url} (already running: it stays up when the demo stops)")
            cleanup.left_running.append(
                f"this state folder's Prefect server at {server.url} (`streamflow down`)"
            )

    from streamflow import flows, logs

    logs.quiet_prefect_console()
    with stage(2, total, "Monthly exports"):
        if seeds is None:
            seeds = settings.state_dir.resolve() / "generated"
            if not (seeds / "month_001" / "labels.csv").exists():
                from streamflow.data.generate import generate_months

                generate_months(seeds, users=users, months=2, seed=settings.seed, start=start, progress=True)
        months = month_folders(seeds, start)
        for folder, as_of in months:
            console.print(f"{folder}  as_of {as_of}")

    with stage(3, total, "Validate and ingest"):
        for folder, as_of in months:
            if already_ingested(settings, folder, as_of):
                console.print(f"{folder.name} as of {as_of}: already ingested (same files)")
            else:
                counts = flows.ingest_month_flow(str(folder), as_of.isoformat())
                console.print(f"{folder.name} as of {as_of}: {sum(counts.values()):,} rows")

    first, latest = months[0][1], months[-1][1]
    with stage(4, total, "Feature store: apply and materialize"):
        m = flows.materialize_flow(latest.isoformat())
        console.print(
            f"online store serves the snapshot at {m['snapshot_as_of']} ({m['rows']:,} rows written)"
        )

    versions = {}
    with stage(5, total, f"Train at {first} (labels of the same month)"):
        for model_type, service in candidates(settings):
            version = existing_version(settings, model_type, service, first)
            if version is None:
                version = flows.train_flow(first.isoformat(), model_type, None, service)
                console.print(f"{model_type} on {service}: registered version {version}")
            else:
                console.print(f"{model_type} on {service}: version {version} exists")
            versions[model_type] = version

    with stage(6, total, "Gate and promote the best version"):
        decision = flows.promote_flow(None)
        console.print(
            f"{'promoted' if decision['promoted'] else 'kept'} v{decision['version']}: {decision['reason']}"
        )
    result = {"versions": versions, "decision": decision}
    if serve:
        with stage(7, total, "Serve the API and the MLflow UI"):
            _serve(settings, latest, server.url, cleanup)
    return result


def _serve(settings: Settings, latest: date, prefect_url: str, cleanup: Cleanup) -> None:
    from streamflow import orchestration
    from streamflow.training.tracking import mlflow_server_command

    logs = settings.state_dir.resolve() / "logs"
    env = {**os.environ, **orchestration.prefect_env(settings)}
    streamflow = str(Path(sys.executable).with_name("streamflow"))
    mlflow = mlflow_server_command(settings, settings.mlflow_host, settings.mlflow_port)
    with processes.deferred_signals():  # started and registered together, or not at all
        api = processes.spawn([streamflow, "serve"], logs / "api.log", env)
        cleanup.add("the API", _group_stopper(api))
        ui = processes.spawn(mlflow, logs / "mlflow.log", env)
        cleanup.add("the MLflow UI", _group_stopper(ui))
    api_url = f"http://{settings.api_host}:{settings.api_port}"
    mlflow_url = f"http://{settings.mlflow_host}:{settings.mlflow_port}"
    processes.wait_http(f"{api_url}/ready", 600, api, logs / "api.log")
    processes.wait_http(f"{mlflow_url}/health", 120, ui, logs / "mlflow.log")
    user = _some_user(settings, latest)
    console.print(
        f"\n[bold]StreamFlow is running[/]\n"
        f"  API          {api_url}/docs\n"
        f"  MLflow UI    {mlflow_url}\n"
        f"  Prefect UI   {prefect_url}\n\n"
        f"  curl -s -X POST {api_url}/predict -H 'content-type: application/json' "
        f'-d \'{{"user_id": "{user}"}}\'\n\nCtrl-C stops everything.'
    )


def _some_user(settings: Settings, as_of: date) -> str:
    with db.connect(db.target(settings), settings) as conn:
        row = conn.execute(
            "SELECT user_id FROM subscription_snapshots WHERE as_of = %s ORDER BY user_id LIMIT 1", (as_of,)
        ).fetchone()
    return row[0] if row else "0002-ORFBO"
