"""What the API depends on, and one log line when each goes down and one when it is back.

A dependency (the online store, the model registry) is named with where it lives, so that a 503
and a log line say what is down: ``online store (PostgreSQL at 127.0.0.1:5432/streamflow)``.
Everything that talks to it reports each failure and each answer; only a change is logged, one
line, no traceback, however many requests and polls fail in between.
"""

from __future__ import annotations

import logging
import threading
import time

from sqlalchemy.engine import make_url

from streamflow import db

log = logging.getLogger(__name__)


def one_line(exc: BaseException) -> str:
    """The root cause of ``exc`` in one line: its type and the first line of its message."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    lines = [x.strip() for x in str(exc).splitlines() if x.strip()]
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


def describe_pg(t: db.PgTarget) -> str:
    where = f"socket {t.host}" if t.host.startswith("/") else f"{t.host}:{t.port}"
    return f"PostgreSQL at {where}/{t.dbname}"


def describe_uri(uri: str) -> str:
    """Where a database or server URI points, without credentials: ``PostgreSQL at host:port/db``."""
    try:
        url = make_url(uri)
    except Exception:  # not an SQLAlchemy URL: http(s)://, file:, databricks...
        scheme, _, rest = uri.partition("://")
        host = rest.rsplit("@", 1)[-1].split("/", 1)[0]
        return f"{scheme} at {host}" if rest else uri
    backend = {"postgresql": "PostgreSQL", "sqlite": "SQLite", "mysql": "MySQL"}.get(
        url.get_backend_name(), url.get_backend_name()
    )
    host = url.host or url.query.get("host") or ""
    if isinstance(host, tuple):
        host = host[0]
    where = f"socket {host}" if host.startswith("/") else f"{host}:{url.port}" if url.port else host
    return f"{backend} at {where}/{url.database}" if where else f"{backend} {url.database}"


class Dependency:
    """Up until a failure is reported; down until an answer is. Thread-safe (polls run in threads).

    A failure of an operation that began before the dependency last came back is not counted: it
    says nothing about the state since (a request that waited through the recovery would otherwise
    log a second outage right after the first one ended).
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.down_since: float | None = None
        self.back_at = -float("inf")  # monotonic time of the last return
        self.reason = ""
        self._lock = threading.Lock()

    @property
    def up(self) -> bool:
        return self.down_since is None

    def failed(self, reason: str, started: float | None = None) -> bool:
        """Record a failure of an operation begun at ``started`` (monotonic; None: just now); True
        if the dependency just went down (and that was logged)."""
        if self.down_since is not None or (started is not None and started < self.back_at):
            return False
        with self._lock:
            if self.down_since is not None or (started is not None and started < self.back_at):
                return False
            self.down_since, self.reason = time.monotonic(), reason
        log.warning("%s is down: %s", self.name, reason)
        return True

    def answered(self) -> bool:
        """Record an answer; True if it was down (and its return was logged)."""
        if self.down_since is None:  # the usual case: one attribute read
            return False
        with self._lock:
            if self.down_since is None:
                return False
            self.back_at = time.monotonic()
            seconds, self.down_since = self.back_at - self.down_since, None
        log.warning("%s is back (down %.1f s)", self.name, seconds)
        return True
