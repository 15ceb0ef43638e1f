"""``streamflow demo``: from nothing to served predictions, on the embedded PostgreSQL.

Each stage runs as a Prefect flow on the local server (so it shows in the UI), is timed, and is
skipped when its result already exists: a second run reuses what the first one built.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import date
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console

from streamflow import db
from streamflow.settings import Settings

console = Console()
CANDIDATES = (("baseline", "churn_v1"), ("logreg", "churn_v2"))  # the course model, and ours


@contextmanager
def stage(number: int, total: int, title: str) -> Iterator[None]:
    console.rule(f"[bold]{number}/{total} {title}")
    started = time.perf_counter()
    yield
    console.print(f"[green]done[/] in {time.perf_counter() - started:.1f} s")


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


def _spawn(command: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    log.parent.mkdir(parents=True, exist_ok=True)
    out = open(log, "ab")  # noqa: SIM115 - handed to the child
    return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)


def _wait_http(url: str, timeout_s: float, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{url} exited during start-up; see {log}:\n{log.read_text()[-2000:]}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {timeout_s:.0f} s; see {log}")


def export_settings(settings: Settings) -> None:
    """Make these Settings the process's and its children's: flows and servers read the environment."""
    from streamflow.settings import get_settings

    for name, value in settings.model_dump().items():
        if value is not None:
            secret = getattr(value, "get_secret_value", None)
            os.environ[f"STREAMFLOW_{name.upper()}"] = str(secret() if secret else value)
    get_settings.cache_clear()


def run_demo(
    settings: Settings,
    seeds: Path | None,
    start: date,
    users: int,
    fresh: bool,
    serve: bool,
    wait: Callable[[], None] | None = None,
) -> dict[str, Any]:
    from streamflow import orchestration

    export_settings(settings)
    total = 7 if serve else 6
    if fresh:
        if settings.database_url:
            raise ValueError("--fresh only resets the embedded state; drop the external databases yourself")
        orchestration.stop(settings)
        db.stop_embedded(settings)
        shutil.rmtree(settings.state_dir, ignore_errors=True)

    with stage(1, total, "PostgreSQL and the Prefect server"):
        from streamflow.data.ingest import prepare

        t = prepare(settings)
        console.print(f"PostgreSQL: {t.describe()}")
        prefect_url = orchestration.start_server(settings)
        orchestration.use_server(settings)
        console.print(f"Prefect: {prefect_url}")

    from streamflow import flows

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
        rows = flows.materialize_flow(latest.isoformat())
        console.print(f"online store serves the snapshot at {latest} ({rows:,} rows written)")

    versions = {}
    with stage(5, total, f"Train at {first} (labels of the same month)"):
        for model_type, service in CANDIDATES:
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

    if not serve:
        return {"versions": versions, "decision": decision}

    with stage(7, total, "Serve the API and the MLflow UI"):
        logs = settings.state_dir.resolve() / "logs"
        bin_dir = Path(sys.executable).parent
        env = {**os.environ, **orchestration.prefect_env(settings)}
        api = _spawn([str(bin_dir / "streamflow"), "serve"], logs / "api.log", env)
        ui = _spawn(
            [str(bin_dir / "streamflow"), "mlflow-ui", "--port", str(settings.mlflow_port)],
            logs / "mlflow.log",
            env,
        )
        children = [api, ui]
        try:
            api_url = f"http://{settings.api_host}:{settings.api_port}"
            _wait_http(f"{api_url}/ready", 600, api, logs / "api.log")
            _wait_http(f"http://127.0.0.1:{settings.mlflow_port}/health", 120, ui, logs / "mlflow.log")
            user = _some_user(settings, latest)
            console.print(
                f"\n[bold]StreamFlow is running[/]\n"
                f"  API          {api_url}/docs\n"
                f"  MLflow UI    http://127.0.0.1:{settings.mlflow_port}\n"
                f"  Prefect UI   {prefect_url}\n\n"
                f"  curl -s -X POST {api_url}/predict -H 'content-type: application/json' "
                f'-d \'{{"user_id": "{user}"}}\'\n\nCtrl-C stops everything.',
                soft_wrap=True,  # keep the curl line pasteable
            )
            (wait or _wait_for_interrupt)()
        finally:
            for child in children:
                child.send_signal(signal.SIGINT)
            for child in children:
                try:
                    child.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    child.kill()
            orchestration.stop(settings)
    return {"versions": versions, "decision": decision}


def _some_user(settings: Settings, as_of: date) -> str:
    with db.connect(db.target(settings), settings) as conn:
        row = conn.execute(
            "SELECT user_id FROM subscription_snapshots WHERE as_of = %s ORDER BY user_id LIMIT 1", (as_of,)
        ).fetchone()
    return row[0] if row else "7590-VHVEG"


def _wait_for_interrupt() -> None:
    def interrupt(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    # Explicit handlers: a shell without job control starts background jobs with SIGINT ignored.
    signal.signal(signal.SIGINT, interrupt)
    signal.signal(signal.SIGTERM, interrupt)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        console.print("\nstopping...")
