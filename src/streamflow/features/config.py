"""Where the Feast feature store lives, built from Settings: the RepoConfig, ``feature_store.yaml`` and
the cached :class:`FeatureStore` of each configuration.

The store's configuration is generated from :class:`~streamflow.settings.Settings`, never written by
hand: the offline store, the online store (PostgreSQL by default, Redis when
``STREAMFLOW_ONLINE_STORE=redis``) and the registry all live on StreamFlow's PostgreSQL server. A
``feature_store.yaml`` is also written into ``settings.feast_dir`` for the ``feast`` CLI and UI; it
holds ``${STREAMFLOW_FEAST_*_PASSWORD}`` placeholders, never a password.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import psycopg
import yaml
from feast import FeatureStore, RepoConfig
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from sqlalchemy.engine import make_url

from streamflow import db
from streamflow.features.offline_store import StreamflowPostgreSQLOfflineStore
from streamflow.settings import Settings

PROJECT = "streamflow"
# Feast's own tables (SQL registry, online store) live in this schema of the StreamFlow database, so
# they never collide with StreamFlow's tables and `DROP SCHEMA feast CASCADE` resets Feast alone.
FEAST_SCHEMA = "feast"
# Every write to a PostgreSQL online table sends NOTIFY ONLINE_CHANNEL at commit (schema/004, and the
# online writer's swap): the API drops its in-memory copy of online features on it.
ONLINE_CHANNEL = "streamflow_online"
ONLINE_TRIGGER = "streamflow_online_changed"
# Other processes (the API, a Prefect worker) see an apply or a materialization within this many seconds.
REGISTRY_CACHE_TTL_S = 10
_OFFLINE_STORE = StreamflowPostgreSQLOfflineStore
_LOOPBACK = {"localhost", "127.0.0.1", "::1"}
_PG_PASSWORD_ENV = "STREAMFLOW_FEAST_PG_PASSWORD"
_REDIS_PASSWORD_ENV = "STREAMFLOW_FEAST_REDIS_PASSWORD"


def _sslmode(settings: Settings, t: db.PgTarget) -> str:
    """What the URL says, else no TLS for a local socket or loopback, else libpq's own default."""
    if settings.database_url:
        explicit = conninfo_to_dict(settings.database_url).get("sslmode")
        if explicit:
            return str(explicit)
    # Feast defaults to "require": a local server without TLS then hangs 30 s and fails.
    return "disable" if t.host.startswith("/") or t.host in _LOOPBACK else "prefer"


def _registry_url(t: db.PgTarget, sslmode: str) -> str:
    # No password in the URL: SQLAlchemy would percent-encode a ${ENV} placeholder (see connect_args).
    url = make_url(replace(t, password=None).sqlalchemy_url("psycopg"))
    return url.update_query_dict({"sslmode": sslmode}).render_as_string(hide_password=False)


def _redis_connection_string(redis_url: str, password: str | None) -> str:
    """Feast's Redis format (``host:port,db=0,ssl=true,password=...``) from a ``redis://`` URL."""
    u = urlparse(redis_url)
    if u.scheme not in ("redis", "rediss"):
        raise ValueError(f"redis_url must start with redis:// or rediss://, got {redis_url!r}")
    parts = [f"{u.hostname or '127.0.0.1'}:{u.port or 6379}", f"db={int(u.path.strip('/') or 0)}"]
    if u.scheme == "rediss":
        parts.append("ssl=true")
    if u.username:
        parts.append(f"username={unquote(u.username)}")
    if password:
        parts.append(f"password={password}")
    return ",".join(parts)


def online_store_id(settings: Settings) -> str:
    """Names the online store in the materializations log (no credentials)."""
    if settings.online_store == "redis":
        u = urlparse(settings.redis_url)
        return f"redis://{u.hostname or '127.0.0.1'}:{u.port or 6379}/{int(u.path.strip('/') or 0)}"
    return "postgres"


def _raw_config(settings: Settings, project: str, secrets: bool) -> dict[str, Any]:
    """feature_store.yaml as a dict; with ``secrets=False`` passwords become ${ENV} placeholders."""
    t = db.target(settings)
    sslmode = _sslmode(settings, t)
    pg_password = (t.password if secrets else f"${{{_PG_PASSWORD_ENV}}}") if t.password else None
    pg = {
        "host": t.host,  # a Unix socket folder for the embedded server: libpq takes it as host
        "port": t.port,
        "database": t.dbname,
        "user": t.user,
        "password": pg_password or "",  # Feast requires the key; "" means none (trust/peer auth)
        "sslmode": sslmode,
    }
    if settings.online_store == "redis":
        redis_password = urlparse(settings.redis_url).password
        if redis_password and not secrets:
            redis_password = f"${{{_REDIS_PASSWORD_ENV}}}"
        online: dict[str, Any] = {
            "type": "redis",
            "connection_string": _redis_connection_string(settings.redis_url, redis_password),
            # Our materialize writes exactly the rows the online store must hold (deduplicated, one
            # writer at a time), so Feast's read-before-write timestamp check would only cost a round
            # trip and forbid going back to an earlier as_of.
            "skip_dedup": True,
        }
    else:
        online = {"type": "postgres", **pg, "db_schema": FEAST_SCHEMA}
    return {
        "project": project,
        "provider": "local",
        # SQL registry in the StreamFlow database itself (schema "feast"), not in a sibling database:
        # PostgreSQL transactions make it safe for concurrent writers, it is backed up and dropped with
        # the data it describes, and an external server needs no CREATEDB right.
        "registry": {
            "registry_type": "sql",
            "path": _registry_url(t, sslmode),
            "cache_ttl_seconds": REGISTRY_CACHE_TTL_S,
            # Materialization flips views to MATERIALIZING in the shared registry; keep serving meanwhile.
            "serve_features_while_materializing": True,
            "sqlalchemy_config_kwargs": {
                "echo": False,
                "pool_pre_ping": True,
                "connect_args": {
                    "connect_timeout": settings.db_connect_timeout_s,
                    "options": f"-c search_path={FEAST_SCHEMA}",
                    **({"password": pg_password} if pg_password else {}),
                },
            },
        },
        # embed_query: Feast runs our entity SQL as a CTE. Its default copies it into a fresh table that
        # has no statistics, and the planner then nested-loops 7,043 x 7,043 rows per view (~40 s here).
        "offline_store": {
            "type": f"{_OFFLINE_STORE.__module__}.{_OFFLINE_STORE.__name__}",
            **pg,
            "db_schema": "public",
            "entity_select_mode": "embed_query",
        },
        "online_store": online,
        "entity_key_serialization_version": 3,
        # The Feast CLI would otherwise compute monitoring baselines on every `feast apply`.
        "data_quality_monitoring": {"auto_baseline": False},
    }


def repo_config(settings: Settings, project: str = PROJECT) -> RepoConfig:
    """The Feast RepoConfig for these Settings (with real credentials, in memory only)."""
    raw = _raw_config(settings, project, secrets=True)
    config = RepoConfig(**raw)
    config.repo_path = settings.feast_dir
    return config


def write_feature_store_yaml(settings: Settings, project: str = PROJECT) -> Path:
    """Write ``feature_store.yaml`` (without credentials) and ``definitions.py`` (features/repo.py) for
    ``feast -c <feast_dir> ...`` users: a Feast repo whose objects are the package's."""
    from streamflow.features.repo import write_definitions

    write_definitions(settings.feast_dir)
    path = settings.feast_dir / "feature_store.yaml"
    header = (
        "# Generated by StreamFlow from its Settings: edit STREAMFLOW_* variables, not this file.\n"
        f"# Passwords come from the environment variables {_PG_PASSWORD_ENV} / {_REDIS_PASSWORD_ENV}.\n"
    )
    text = header + yaml.safe_dump(_raw_config(settings, project, secrets=False), sort_keys=False)
    if not path.exists() or path.read_text() != text:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(path)  # atomic: a concurrent `feast` never reads half a file
    return path


_STORES: dict[str, FeatureStore] = {}


def reset_feature_stores() -> None:
    """Forget the cached stores: after a server restart, Feast's PostgreSQL online store would keep
    using its one lost connection for the life of the object."""
    _STORES.clear()


def feature_store(settings: Settings, project: str = PROJECT) -> FeatureStore:
    """The FeatureStore for these Settings (one per configuration and process: registry connections
    and the registry cache are reused)."""
    key = json.dumps(_raw_config(settings, project, secrets=True), sort_keys=True, default=str)
    store = _STORES.get(key)
    if store is None:
        write_feature_store_yaml(settings, project)
        t = db.target(settings)
        with (
            db.connect(t, settings, autocommit=True) as conn,
            contextlib.suppress(psycopg.errors.UniqueViolation),
        ):
            # The SQL registry creates its tables in the first schema of its search_path. (Two processes
            # racing on IF NOT EXISTS can still collide on the catalog's unique index: harmless.)
            conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(FEAST_SCHEMA)))
        store = _STORES[key] = FeatureStore(config=repo_config(settings, project))
    return store
