"""A long-running local Prefect server and worker (``streamflow up`` / ``down``).

Without a server, every Prefect flow run starts a temporary one (~20 s here) and its runs vanish
with it. ``up`` starts one server under the state folder plus a worker that serves StreamFlow's
deployments (the monthly pipeline on a monthly schedule, every other flow on demand), so runs are
visible in the UI.

The server's database: PostgreSQL (``<db>_prefect``) on an external server; SQLite under the state
folder with the embedded server, whose build lacks the ``pg_trgm`` extension Prefect requires.

Which server is ours: the one whose ``/api/admin/settings`` names this state folder's Prefect home.
Anything else answering on the port (another state folder's server, another program) is reported,
never reused or signalled. Pid files are :class:`~streamflow.processes.ProcessRecord` s: ``down``
signals a process only if it is the very one ``up`` started (same pid AND start time).
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import httpx
import psutil

from streamflow import db, processes
from streamflow.errors import ProcessConflict
from streamflow.settings import Settings

SERVER, WORKER = "prefect-server", "prefect-worker"


def prefect_dir(settings: Settings) -> Path:
    return settings.state_dir.resolve() / "prefect"


def api_url(settings: Settings) -> str:
    return f"http://127.0.0.1:{settings.prefect_port}/api"


def ui_url(settings: Settings) -> str:
    return f"http://127.0.0.1:{settings.prefect_port}"


def prefect_env(settings: Settings) -> dict[str, str]:
    """Environment for Prefect clients and the server: our home folder, our server, no telemetry."""
    env = {
        "PREFECT_HOME": str(prefect_dir(settings)),
        "PREFECT_API_URL": api_url(settings),
        "PREFECT_SERVER_API_HOST": "127.0.0.1",
        "PREFECT_SERVER_API_PORT": str(settings.prefect_port),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_API_URL": api_url(settings),
    }
    if settings.database_url:
        env["PREFECT_API_DATABASE_CONNECTION_URL"] = db.companion_target(settings, "prefect").sqlalchemy_url(
            "asyncpg"
        )
    return env


def _pid_file(settings: Settings, name: str) -> Path:
    return prefect_dir(settings) / f"{name}.pid"


def running(settings: Settings, name: str) -> processes.ProcessRecord | None:
    """The live process ``name`` that this state folder started, if any."""
    rec = processes.read_record(_pid_file(settings, name))
    if isinstance(rec, processes.ProcessRecord) and processes.verify(rec) is not None:
        return rec
    return None


Identity = Literal["ours", "foreign", "down"]


def server_identity(settings: Settings) -> tuple[Identity, str]:
    """Who answers on the Prefect port: this state folder's server, something else, or nobody."""
    try:
        health = httpx.get(f"{api_url(settings)}/health", timeout=2)
    except httpx.HTTPError:
        return "down", ""
    try:
        home = httpx.get(f"{api_url(settings)}/admin/settings", timeout=5).json()["home"]
    except (httpx.HTTPError, ValueError, KeyError, TypeError):
        return "foreign", f"it answers /api/health with HTTP {health.status_code} but is no Prefect server"
    if Path(home).resolve() == prefect_dir(settings):
        return "ours", ""
    return "foreign", f"a Prefect server with home {home}"


def server_healthy(settings: Settings) -> bool:
    """A Prefect server (ours or not) answers on the configured port: flows can report to it."""
    try:
        return httpx.get(f"{api_url(settings)}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _refuse(settings: Settings, detail: str) -> ProcessConflict:
    return ProcessConflict(
        f"127.0.0.1:{settings.prefect_port} is taken by something other than this state folder's"
        f" Prefect server ({detail})",
        "stop it, or set STREAMFLOW_PREFECT_PORT to a free port",
    )


def _spawn(settings: Settings, name: str, argv: list[str]) -> processes.ProcessRecord:
    env = {**os.environ, **prefect_env(settings)}
    with processes.deferred_signals():  # a Ctrl-C here must not leave a server without its pid file
        process = processes.spawn(argv, prefect_dir(settings) / f"{name}.log", env=env)
        rec = processes.record(process.pid)
        processes.write_record(_pid_file(settings, name), rec)
    return rec


@dataclass(frozen=True)
class ServerStart:
    url: str
    started: bool  # False: this state folder's server was already running (and is not ours to stop)


def start_server(settings: Settings, timeout_s: float = 120) -> ServerStart:
    """This state folder's Prefect server, started unless it already answers."""
    identity, detail = server_identity(settings)
    if identity == "ours":
        return ServerStart(ui_url(settings), started=False)
    if identity == "foreign":
        raise _refuse(settings, detail)
    started = False
    rec = running(settings, SERVER)
    if rec is None:
        prefect = str(Path(sys.executable).with_name("prefect"))
        rec = _spawn(settings, SERVER, [prefect, "server", "start"])
        started = True
    deadline = time.monotonic() + timeout_s
    while True:
        identity, detail = server_identity(settings)
        if identity == "ours":
            return ServerStart(ui_url(settings), started)
        if identity == "foreign":  # someone took the port while ours was starting
            if started:
                processes.stop_verified(rec)
            raise _refuse(settings, detail)
        if processes.verify(rec) is None:
            log = (prefect_dir(settings) / f"{SERVER}.log").read_text()[-3000:]
            raise RuntimeError(f"the Prefect server exited during start-up:\n{log}")
        if time.monotonic() > deadline:
            if started:
                processes.stop_verified(rec)
            raise TimeoutError(f"the Prefect server did not answer within {timeout_s:.0f} s")
        time.sleep(0.5)


def start_worker(settings: Settings) -> int:
    rec = running(settings, WORKER)
    if rec is None:
        rec = _spawn(settings, WORKER, [str(Path(sys.executable).with_name("streamflow")), "worker"])
    return rec.pid


@dataclass
class StopReport:
    stopped: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what was found and deliberately not signalled


def stop(settings: Settings, names: tuple[str, ...] = (WORKER, SERVER), timeout_s: float = 20) -> StopReport:
    """Stop the processes ``up`` started (worker first); signal nothing that is not provably ours."""
    report = StopReport()
    for name in names:
        path = _pid_file(settings, name)
        rec = processes.read_record(path)
        if rec is None:
            continue
        if isinstance(rec, str):
            report.notes.append(
                f"{name}: {path} holds {rec!r}, not a record of a process this state folder started;"
                " nothing was signalled"
            )
        elif processes.verify(rec) is None:
            if psutil.pid_exists(rec.pid):
                report.notes.append(
                    f"{name}: {processes.describe_pid(rec.pid)} is not the process `streamflow up` started"
                    " (same pid, another start time); nothing was signalled"
                )
        elif processes.stop_verified(rec, timeout_s):
            report.stopped.append(name)
        path.unlink(missing_ok=True)
    if SERVER in names and SERVER not in report.stopped and server_identity(settings)[0] == "ours":
        report.notes.append(
            f"{SERVER}: a Prefect server of this state folder answers on {ui_url(settings)} but was not"
            " started by `streamflow up`: stop it where it was started"
        )
    return report


def use_server(settings: Settings) -> None:
    """Point this process's Prefect client at the local server (call before importing flows)."""
    os.environ.update(prefect_env(settings))
    if "prefect.context" in sys.modules:  # Prefect reads its settings once, at import
        sys.modules["prefect.context"].refresh_global_settings_context()


MONTHLY_CRON = "0 6 1 * *"  # 06:00 UTC on the 1st: the previous month's export has landed


def deployments() -> list:
    """What the worker serves: the monthly pipeline on its schedule, every other flow on demand."""
    from streamflow import flows

    monthly = flows.monthly_pipeline.to_deployment(name="monthly", cron=MONTHLY_CRON)
    on_demand = [
        flows.ingest_month_flow,
        flows.materialize_flow,
        flows.train_flow,
        flows.promote_flow,
        flows.score_flow,
        flows.drift_flow,
        flows.monitor_and_retrain_flow,
    ]
    return [monthly, *(f.to_deployment(name="on-demand") for f in on_demand)]


def serve_deployments() -> None:
    """The worker: serve StreamFlow's flows as deployments until stopped (blocks)."""
    from prefect import serve

    serve(*deployments())
