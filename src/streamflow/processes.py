"""Child processes StreamFlow starts, and stops without ever signalling a stranger.

Every server StreamFlow starts (Prefect server and worker, the demo's API and MLflow UI) runs in a
session of its own, so that it and every process it forks (MLflow's server forks uvicorn, which
forks its workers) form one process group that is stopped as a whole.

A pid file written here is a :class:`ProcessRecord`: the pid, the process's start time and its
command line. Before signalling, :func:`verify` checks the pid and start time against the live
process; a pid that was reused, or a file that names someone else's process, is left alone.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx
import psutil


@dataclass(frozen=True)
class ProcessRecord:
    pid: int
    started: float  # psutil's create_time(): seconds since the epoch, fixed for a process's life
    argv: tuple[str, ...]

    def describe(self) -> str:
        return f"pid {self.pid} ({' '.join(self.argv)[:120]})"


def record(pid: int) -> ProcessRecord:
    p = psutil.Process(pid)
    return ProcessRecord(pid, p.create_time(), tuple(p.cmdline()))


def write_record(path: Path, rec: ProcessRecord) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(rec)))
    tmp.replace(path)


def read_record(path: Path) -> ProcessRecord | str | None:
    """The record in ``path``; a string when the file exists but is no record of ours (e.g. a bare
    pid), None when there is no file."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    try:
        data = json.loads(text)
        return ProcessRecord(int(data["pid"]), float(data["started"]), tuple(data["argv"]))
    except (ValueError, KeyError, TypeError):
        return text.strip()[:80]


def describe_pid(pid: int) -> str:
    try:
        return f"pid {pid} ({' '.join(psutil.Process(pid).cmdline())[:120]})"
    except psutil.Error:
        return f"pid {pid}"


def verify(rec: ProcessRecord) -> psutil.Process | None:
    """The live process ``rec`` describes, or None if it is gone or the pid now belongs to another."""
    try:
        p = psutil.Process(rec.pid)
        # (pid, start time) names one process for the life of the machine; the command line is kept
        # for messages only (a process may retitle itself).
        if abs(p.create_time() - rec.started) > 0.05:
            return None
        if p.status() == psutil.STATUS_ZOMBIE:
            return None
        return p
    except psutil.Error:
        return None


def spawn(
    argv: Sequence[str], log: Path, env: Mapping[str, str] | None = None, cwd: Path | None = None
) -> subprocess.Popen:
    """Start ``argv`` in a session (and process group) of its own, output appended to ``log``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:  # the child keeps its own descriptor
        return subprocess.Popen(
            list(argv),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            start_new_session=True,
        )


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A leader that exited but was not reaped yet still counts; children of ours are reaped here.
    members = [p for p in psutil.process_iter(["pid"]) if _pgid(p.pid) == pgid]
    return any(_status(p) != psutil.STATUS_ZOMBIE for p in members)


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except OSError:
        return None


def _status(p: psutil.Process) -> str:
    try:
        return p.status()
    except psutil.Error:
        return psutil.STATUS_ZOMBIE


def stop_group(
    pgid: int, timeout_s: float = 20, sig: int = signal.SIGTERM, reap: Callable[[], object] | None = None
) -> bool:
    """Signal the process group ``pgid`` and wait until every member is gone; SIGKILL after
    ``timeout_s``. ``reap`` (e.g. ``Popen.poll``) is called while waiting, for a leader that is our
    child. Returns True when the group stopped on ``sig``, False when it had to be killed."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return True
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if reap is not None:
            reap()
        if not group_alive(pgid):
            return True
        time.sleep(0.1)
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        return True
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and group_alive(pgid):
        if reap is not None:
            reap()
        time.sleep(0.1)
    return False


def stop_verified(rec: ProcessRecord, timeout_s: float = 20) -> bool:
    """Stop the process group led by ``rec`` if ``rec`` is still that live process: True when it was
    stopped, False when there was nothing of ours to stop."""
    p = verify(rec)
    if p is None:
        return False
    if _pgid(rec.pid) == rec.pid:  # a group leader: started by spawn(), the whole group goes
        stop_group(rec.pid, timeout_s)
    else:
        p.terminate()
        try:
            p.wait(timeout_s)
        except psutil.TimeoutExpired:
            p.kill()
    return True


def wait_http(
    url: str,
    timeout_s: float,
    process: subprocess.Popen | None = None,
    log: Path | None = None,
    ok: Callable[[httpx.Response], bool] = lambda r: r.status_code == 200,
) -> None:
    """Poll ``url`` until it answers ``ok``; fail early if ``process`` exits meanwhile."""
    deadline = time.monotonic() + timeout_s
    where = f"; see {log}" if log else ""
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            tail = f":\n{log.read_text()[-2000:]}" if log and log.exists() else ""
            raise RuntimeError(f"{url} exited during start-up (code {process.returncode}){where}{tail}")
        try:
            if ok(httpx.get(url, timeout=2)):
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise TimeoutError(f"{url} did not answer within {timeout_s:.0f} s{where}")


def supervise(argv: Sequence[str], env: Mapping[str, str] | None = None, timeout_s: float = 20) -> int:
    """Run ``argv`` in the foreground as a process group of its own and return its exit code.

    SIGINT or SIGTERM to this process stops the whole group (not only its leader): ``mlflow server``
    forks uvicorn and, signalled alone, waits for it forever.
    """
    child = subprocess.Popen(list(argv), env=dict(env) if env is not None else None, start_new_session=True)
    stopping: list[int] = []

    def forward(signum: int, _frame: object) -> None:
        stopping.append(signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        while child.poll() is None and not stopping:
            with suppress(subprocess.TimeoutExpired):
                child.wait(timeout=0.2)
        stop_group(child.pid, timeout_s, reap=child.poll)
        child.wait()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    return 128 + stopping[0] if stopping else child.returncode


@contextmanager
def deferred_signals(signals: Sequence[int] = (signal.SIGINT, signal.SIGTERM)) -> Iterator[None]:
    """Hold SIGINT/SIGTERM back while the block runs (e.g. spawn a server and record it), then act on
    one that arrived as KeyboardInterrupt: a Ctrl-C can then never fall between the two."""
    caught: list[int] = []
    try:
        previous = {s: signal.signal(s, lambda signum, _frame: caught.append(signum)) for s in signals}
    except ValueError:  # not the main thread: signals are delivered to the main thread anyway
        yield
        return
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if caught:
        raise KeyboardInterrupt
