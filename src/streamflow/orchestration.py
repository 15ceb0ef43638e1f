"""A long-running local Prefect server and worker (``streamflow up`` / ``down``).

Without a server, every Prefect flow run starts a temporary one (~20 s here) and its runs vanish
with it. ``up`` starts one server under the state folder plus a worker that serves StreamFlow's
deployments (the monthly pipeline on a monthly schedule), so runs are visible in the UI.

The server's database: PostgreSQL (``<db>_prefect``) on an external server; SQLite under the state
folder with the embedded server, whose build lacks the ``pg_trgm`` extension Prefect requires.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from streamflow import db
from streamflow.settings import Settings

SERVER, WORKER = "prefect-server", "prefect-worker"


def prefect_dir(settings: Settings) -> Path:
    return settings.state_dir.resolve() / "prefect"


def api_url(settings: Settings) -> str:
    return f"http://127.0.0.1:{settings.prefect_port}/api"


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


def _running(settings: Settings, name: str) -> int | None:
    path = _pid_file(settings, name)
    if not path.exists():
        return None
    pid = int(path.read_text())
    try:
        os.kill(pid, 0)
    except OSError:
        path.unlink(missing_ok=True)
        return None
    return pid


def server_healthy(settings: Settings) -> bool:
    try:
        return httpx.get(f"{api_url(settings)}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _spawn(settings: Settings, name: str, command: list[str]) -> int:
    prefect_dir(settings).mkdir(parents=True, exist_ok=True)
    log = open(prefect_dir(settings) / f"{name}.log", "ab")  # noqa: SIM115 - handed to the child
    process = subprocess.Popen(
        command,
        env={**os.environ, **prefect_env(settings)},
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,  # survives the terminal that ran `streamflow up`
    )
    _pid_file(settings, name).write_text(str(process.pid))
    return process.pid


def start_server(settings: Settings, timeout_s: float = 120) -> str:
    """Start the Prefect server unless it already answers; return the UI URL."""
    if not server_healthy(settings):
        if _running(settings, SERVER) is None:
            _spawn(settings, SERVER, [str(Path(sys.executable).with_name("prefect")), "server", "start"])
        deadline = time.monotonic() + timeout_s
        while not server_healthy(settings):
            if _running(settings, SERVER) is None:
                log = (prefect_dir(settings) / f"{SERVER}.log").read_text()[-3000:]
                raise RuntimeError(f"the Prefect server exited during start-up:\n{log}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"the Prefect server did not answer within {timeout_s:.0f} s")
            time.sleep(0.5)
    return f"http://127.0.0.1:{settings.prefect_port}"


def start_worker(settings: Settings) -> int:
    pid = _running(settings, WORKER)
    if pid is None:
        pid = _spawn(settings, WORKER, [str(Path(sys.executable).with_name("streamflow")), "worker"])
    return pid


def stop(settings: Settings) -> list[str]:
    stopped = []
    for name in (WORKER, SERVER):
        pid = _running(settings, name)
        if pid is None:
            continue
        os.killpg(pid, signal.SIGTERM)
        for _ in range(100):
            if _running(settings, name) is None:
                break
            time.sleep(0.1)
        else:
            os.killpg(pid, signal.SIGKILL)
        _pid_file(settings, name).unlink(missing_ok=True)
        stopped.append(name)
    return stopped


def use_server(settings: Settings) -> None:
    """Point this process's Prefect client at the local server (call before importing flows)."""
    os.environ.update(prefect_env(settings))


MONTHLY_CRON = "0 6 1 * *"  # 06:00 UTC on the 1st: the previous month's export has landed


def serve_deployments() -> None:
    """The worker: serve StreamFlow's flows as deployments until stopped (blocks)."""
    from prefect import serve

    from streamflow.flows import (
        ingest_month_flow,
        materialize_flow,
        monthly_pipeline,
        promote_flow,
        train_flow,
    )

    serve(
        monthly_pipeline.to_deployment(name="monthly", cron=MONTHLY_CRON),
        ingest_month_flow.to_deployment(name="on-demand"),
        materialize_flow.to_deployment(name="on-demand"),
        train_flow.to_deployment(name="on-demand"),
        promote_flow.to_deployment(name="on-demand"),
    )
