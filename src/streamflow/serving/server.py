"""The HTTP server around the app: uvicorn with uvloop and httptools, its limits and its logging.

``streamflow serve`` is :func:`serve`. The protocol is uvicorn's httptools one with a deadline for
receiving each request and caps on its size (protocol.py); the limits come from Settings
(``STREAMFLOW_API_REQUEST_TIMEOUT_S``, ``STREAMFLOW_API_MAX_BODY_BYTES``,
``STREAMFLOW_API_MAX_HEADER_BYTES``), read by each worker process like the rest of the app's settings.
"""

from __future__ import annotations

import copy
import os
import shutil
from pathlib import Path
from typing import Any

from streamflow.settings import Settings, get_settings

APP = "streamflow.serving.app:create_app"
PROTOCOL = "streamflow.serving.protocol:LimitedHttpToolsProtocol"
KEEP_ALIVE_S = 5  # uvicorn's default: an idle connection (also one that never sent a byte) is closed
_METRICS_VARIABLES = ("PROMETHEUS_MULTIPROC_DIR", "PROMETHEUS_MULTIPROCESS_DIR", "prometheus_multiproc_dir")


def log_config(level: str) -> dict[str, Any]:
    """uvicorn's logging, with StreamFlow's loggers on the same handler and level."""
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config["loggers"]["streamflow"] = {"handlers": ["default"], "level": level.upper(), "propagate": False}
    return config


def _metrics_dir(settings: Settings, workers: int) -> Path | None:
    """With several workers, /metrics answers for all of them: prometheus_client's multiprocess mode
    keeps every worker's metrics in files of one folder (set before any worker imports it)."""
    # A folder inherited from a parent process (Feast's import sets one in every process) would mix
    # its metrics with ours.
    for name in _METRICS_VARIABLES:
        os.environ.pop(name, None)
    if workers == 1:
        return None
    folder = settings.state_dir.resolve() / "metrics" / f"serve-{os.getpid()}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(folder)
    return folder


def serve(
    host: str | None = None, port: int | None = None, workers: int = 1, log_level: str = "info"
) -> None:
    """Serve the API until interrupted (defaults from Settings: STREAMFLOW_API_HOST, _API_PORT)."""
    settings = get_settings()
    metrics_dir = _metrics_dir(settings, workers)

    import uvicorn

    try:
        uvicorn.run(
            APP,
            factory=True,
            host=host or settings.api_host,
            port=port or settings.api_port,
            workers=workers,
            loop="uvloop",
            http=PROTOCOL,
            # "auto" would serve without the app's start-up (no model, no reader) if it failed; and
            # the protocol counts its refusals through the lifespan's state.
            lifespan="on",
            timeout_keep_alive=KEEP_ALIVE_S,
            access_log=False,
            log_level=log_level.lower(),
            log_config=log_config(log_level),
        )
    finally:
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)
