"""Servers StreamFlow starts and stops: `up`/`down` with the real Prefect server and worker, `down`
never signalling a process it did not start, `mlflow-ui` on its configured port and stopped as a
whole process group, and a Prefect port taken by someone else reported, not reused."""

from __future__ import annotations

import json
import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from streamflow.settings import Settings
from tests.cli_support import (
    STREAMFLOW,
    alive,
    assert_one_line_error,
    cli_env,
    listening,
    not_prefect_server,
    run,
    tree,
    wait_until,
)

DEPLOYMENTS = {
    "monthly_pipeline/monthly",
    *(
        f"{flow}/on-demand"
        for flow in (
            "ingest_month",
            "materialize",
            "train",
            "promote",
            "score_snapshot",
            "drift_report",
            "monitor_and_retrain",
        )
    ),
}


@pytest.fixture
def stranger() -> Iterator[psutil.Process]:
    """A process StreamFlow has nothing to do with, leading a process group of its own (so that the
    old `os.killpg(pid)` in `down` would have killed it)."""
    process = subprocess.Popen(["sleep", "600"], start_new_session=True)
    yield psutil.Process(process.pid)
    process.kill()
    process.wait()


def test_down_never_signals_a_stranger(tmp_path: Path, stranger: psutil.Process) -> None:
    env = cli_env(Settings(_env_file=None, state_dir=tmp_path / "state"))
    pids = tmp_path / "state" / "prefect"
    pids.mkdir(parents=True)
    forged = {"pid": stranger.pid, "started": stranger.create_time() - 3600, "argv": ["prefect", "server"]}
    for content in (str(stranger.pid), json.dumps(forged)):  # a bare pid; a record of another process
        (pids / "prefect-server.pid").write_text(content)
        (pids / "prefect-worker.pid").write_text(content)
        r = run(env, "down", cwd=tmp_path)
        assert r.code == 0, r
        assert r.stdout.startswith("nothing was running") and "nothing was signalled" in r.stdout, r
        assert stranger.is_running() and stranger.status() != psutil.STATUS_ZOMBIE
        assert not (pids / "prefect-server.pid").exists() and not (pids / "prefect-worker.pid").exists()


@pytest.fixture
def not_prefect() -> Iterator[int]:
    with not_prefect_server() as port:
        yield port


def test_up_refuses_a_port_taken_by_something_else(tmp_path: Path, not_prefect: int) -> None:
    env = cli_env(
        Settings(_env_file=None, state_dir=tmp_path / "state"), STREAMFLOW_PREFECT_PORT=str(not_prefect)
    )
    r = run(env, "up", cwd=tmp_path, timeout=60)
    assert_one_line_error(r, f"127.0.0.1:{not_prefect} is taken by something other than this state folder's")
    assert "STREAMFLOW_PREFECT_PORT" in r.stderr
    assert not (tmp_path / "state" / "prefect" / "prefect-server.pid").exists()


def _deployments(port: str) -> set[str]:
    try:
        flows = httpx.post(f"http://127.0.0.1:{port}/api/flows/filter", json={}, timeout=5).json()
        names = {f["id"]: f["name"] for f in flows}
        found = httpx.post(f"http://127.0.0.1:{port}/api/deployments/filter", json={}, timeout=5).json()
    except httpx.HTTPError:
        return set()
    return {f"{names.get(d['flow_id'], '?')}/{d['name']}" for d in found}


def test_up_serves_every_flow_and_down_stops_exactly_that(tmp_path: Path) -> None:
    state = tmp_path / "state"
    env = cli_env(Settings(_env_file=None, state_dir=state))
    port = env["STREAMFLOW_PREFECT_PORT"]
    r = run(env, "up", cwd=tmp_path, timeout=300)
    try:
        assert r.code == 0 and f"Prefect UI: http://127.0.0.1:{port}" in r.stdout, r
        records = {
            name: json.loads((state / "prefect" / f"{name}.pid").read_text())
            for name in ("prefect-server", "prefect-worker")
        }
        started = set().union(*(tree(rec["pid"]) for rec in records.values()))
        assert wait_until(lambda: _deployments(port) >= DEPLOYMENTS, 180, "the worker's deployments")

        # Another state folder pointed at the same port meets a Prefect server that is not its own.
        other = cli_env(Settings(_env_file=None, state_dir=tmp_path / "other"), STREAMFLOW_PREFECT_PORT=port)
        r = run(other, "up", cwd=tmp_path, timeout=60)
        assert_one_line_error(r, f"(a Prefect server with home {state.resolve() / 'prefect'})")

        r = run(env, "up", cwd=tmp_path, timeout=60)  # again: reused, nothing new started
        assert r.code == 0 and "(the server was already running)" in r.stdout, r
        assert {n: json.loads((state / "prefect" / f"{n}.pid").read_text()) for n in records} == records
    finally:
        r = run(env, "down", cwd=tmp_path, timeout=120)
    assert r.code == 0 and r.stdout.splitlines()[0] == "stopped prefect-worker, prefect-server", r
    assert wait_until(lambda: not alive(started), 30, "the server's and worker's processes to exit")
    assert not listening(int(port))


@pytest.fixture
def fresh(settings_factory: Callable[[str], Settings]) -> Settings:
    return settings_factory("embedded")


def test_mlflow_ui_uses_its_setting_and_stops_as_a_group(fresh: Settings, tmp_path: Path) -> None:
    env = cli_env(fresh)
    port = env["STREAMFLOW_MLFLOW_PORT"]  # a free port, given only through the setting
    process = subprocess.Popen(
        [STREAMFLOW, "mlflow-ui"], env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:

        def healthy() -> bool:
            assert process.poll() is None, process.stderr.read() if process.stderr else ""
            try:
                return httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(healthy, 180, f"the MLflow UI on STREAMFLOW_MLFLOW_PORT={port}")
        members = tree(process.pid)
        assert len(members) >= 3, members  # streamflow, MLflow's server, its uvicorn (and workers)

        process.send_signal(signal.SIGTERM)  # as a supervisor or `kill` would: to the command's pid only
        assert process.wait(timeout=60) == 128 + signal.SIGTERM
        assert wait_until(lambda: not alive(members), 30, "every MLflow process to exit")
        assert not listening(int(port))
    finally:
        if process.poll() is None:
            process.kill()
