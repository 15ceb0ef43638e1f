"""Logging for StreamFlow's processes: one level (``--log-level`` / ``STREAMFLOW_LOG_LEVEL``) for
StreamFlow's own loggers and uvicorn's, and no third-party noise.

Unset, the level is ``warning`` for one-shot commands (their result is what they print) and
``info`` for the servers (``serve``, ``mlflow-ui``, ``worker``). Prefect's flow and task run logs
follow it (they carry StreamFlow's pipeline messages); other libraries log at ``warning`` or above
whatever the level (their ``info`` repeats what StreamFlow prints).

Third-party DeprecationWarnings are not shown: Python hides them by default, but importing Feast
turns them on for the whole process (``feast/feature_view.py`` calls
``warnings.simplefilter("once", DeprecationWarning)``), after which Evidently, litestar and
SQLAlchemy (under MLflow) each print theirs. ``python -W ...`` or ``PYTHONWARNINGS`` still win.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Any

LEVELS = ("debug", "info", "warning", "error", "critical")
THIRD_PARTY = ("mlflow", "feast", "alembic", "evidently", "httpx", "urllib3", "git", "psycopg")
UVICORN = ("uvicorn", "uvicorn.error")
_PACKAGE_DIR = str(Path(__file__).resolve().parent)
_HANDLER_NAME = "streamflow-stderr"


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time (a test runner swaps it per command)."""

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass


def effective_level(level: str | None, server: bool = False) -> str:
    return (level or ("info" if server else "warning")).lower()


class _AbortedPipelineFilter(logging.Filter):
    """psycopg's "error ignored terminating <psycopg.Pipeline [INERROR]>" warning.

    psycopg logs it when a statement failed inside a pipeline (``executemany``) and leaving the
    pipeline then fails too; the statement's own error is raised to the caller regardless. MLflow
    3's ``log_model`` triggers it on every training: it logs the run's metrics again for the new
    LoggedModel (``Model.log`` -> ``log_model_metrics_for_step``), hits the metrics primary key,
    catches the IntegrityError and inserts only the new rows. Nothing is lost; the line is noise.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("error ignored terminating")


def _showwarning_without_third_party_deprecations(original: Any) -> Any:
    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, DeprecationWarning | PendingDeprecationWarning) and not str(
            filename
        ).startswith(_PACKAGE_DIR):
            return
        original(message, category, filename, lineno, file, line)

    show.__streamflow__ = True  # type: ignore[attr-defined]
    return show


def quiet_warnings() -> None:
    """Hide third-party DeprecationWarnings for the rest of the process (see the module docstring)."""
    if sys.warnoptions or os.environ.get("PYTHONWARNINGS"):
        return  # the user asked for warnings explicitly
    if not getattr(warnings.showwarning, "__streamflow__", False):
        warnings.showwarning = _showwarning_without_third_party_deprecations(warnings.showwarning)
    # MLflow's artifact downloads draw a progress bar per file on stderr (batch scoring, drift).
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def configure(level: str | None, server: bool = False) -> str:
    """Set up this process's logging; returns the effective level name (lower case)."""
    name = effective_level(level, server)
    numeric = getattr(logging, name.upper())
    own = logging.getLogger("streamflow")
    own.setLevel(numeric)
    if not any(h.get_name() == _HANDLER_NAME for h in own.handlers):
        handler = _StderrHandler()
        handler.set_name(_HANDLER_NAME)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        own.addHandler(handler)
        own.propagate = False  # Prefect puts a console handler on the root logger: no line twice
    for logger in UVICORN:
        logging.getLogger(logger).setLevel(numeric)
    for logger in THIRD_PARTY:
        logging.getLogger(logger).setLevel(max(numeric, logging.WARNING))
    psycopg_logger = logging.getLogger("psycopg")
    if not any(isinstance(f, _AbortedPipelineFilter) for f in psycopg_logger.filters):
        psycopg_logger.addFilter(_AbortedPipelineFilter())
    # Prefect configures its loggers when it is imported, from this variable. Its flow and task run
    # loggers carry StreamFlow's own pipeline messages, so they follow the level itself.
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", name.upper())
    # MLflow also sets its logger's level at import ("Creating initial MLflow database tables...").
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", logging.getLevelName(max(numeric, logging.WARNING)))
    quiet_warnings()
    return name


class _RunFailureFilter(logging.Filter):
    """Prefect's console lines for a failed task or flow run (the exception and its traceback)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if logging.getLogger("streamflow").isEnabledFor(logging.DEBUG):
            return True
        run_log = record.name.startswith(("prefect.flow_runs", "prefect.task_runs"))
        return not (run_log and record.levelno >= logging.ERROR)


def quiet_prefect_console() -> None:
    """Keep a failed run's traceback off this process's console (call after importing Prefect).

    Prefect prints a failed task or flow run with its traceback; the command then reports the same
    error in its one line. The run's full log still goes to the Prefect server (its UI shows it),
    and ``--log-level debug`` puts it back on the console."""
    from prefect.logging.handlers import PrefectConsoleHandler

    loggers = [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]
    for logger in loggers:
        for handler in getattr(logger, "handlers", ()):
            if isinstance(handler, PrefectConsoleHandler) and not any(
                isinstance(f, _RunFailureFilter) for f in handler.filters
            ):
                handler.addFilter(_RunFailureFilter())
