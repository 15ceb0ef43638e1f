"""The Feast feature store built from Settings: apply the definitions, materialize a snapshot into the
online store, read online features.

The store's configuration is generated from :class:`~streamflow.settings.Settings`, never written by
hand: the offline store, the online store (PostgreSQL by default, Redis when
``STREAMFLOW_ONLINE_STORE=redis``) and the registry all live on StreamFlow's PostgreSQL server. A
``feature_store.yaml`` is also written into ``settings.feast_dir`` for the ``feast`` CLI and UI; it
holds ``${STREAMFLOW_FEAST_*_PASSWORD}`` placeholders, never a password.

Materializing into the PostgreSQL online store bypasses Feast's row-at-a-time writer: the rows Feast
would write are computed with Feast's own functions and loaded in bulk (see "bulk PostgreSQL writes").
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta
from datetime import time as dtime
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote, urlparse

import numpy as np
import pandas as pd
import psycopg
import pyarrow as pa
import pyarrow.csv as pacsv
import yaml
from feast import FeatureStore, FeatureView, RepoConfig
from feast.errors import ZeroColumnQueryResult
from feast.feature_view import DUMMY_ENTITY_NAME
from feast.infra.key_encoding_utils import serialize_entity_key
from feast.infra.offline_stores.contrib.postgres_offline_store.postgres import (
    PostgreSQLOfflineStore,
    PostgreSQLOfflineStoreConfig,
    PostgreSQLRetrievalJob,
)
from feast.infra.offline_stores.offline_store import RetrievalJob
from feast.infra.online_stores.helpers import compute_table_id, extract_text_and_num
from feast.infra.online_stores.postgres_online_store.postgres import PostgreSQLOnlineStoreConfig
from feast.infra.utils.postgres.connection_utils import _get_conn
from feast.protos.feast.serving.ServingService_pb2 import FieldStatus
from feast.protos.feast.types.EntityKey_pb2 import EntityKey as EntityKeyProto
from feast.type_map import pg_type_code_to_arrow, python_values_to_proto_values
from feast.utils import _get_column_names
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from sqlalchemy.engine import make_url

from streamflow import db
from streamflow.features.definitions import DEFAULT_FEATURE_SERVICE, FEATURE_SERVICES, FEATURE_VIEWS, user
from streamflow.migrations import migrate
from streamflow.settings import Settings

log = logging.getLogger(__name__)

PROJECT = "streamflow"
# Feast's own tables (SQL registry, online store) live in this schema of the StreamFlow database, so
# they never collide with StreamFlow's tables and `DROP SCHEMA feast CASCADE` resets Feast alone.
FEAST_SCHEMA = "feast"
# Other processes (the API, a Prefect worker) see an apply or a materialization within this many seconds.
REGISTRY_CACHE_TTL_S = 10
_LOCK_KEY = 0x5F_4D_41_54  # serialises materializations
# Every write to a PostgreSQL online table sends NOTIFY ONLINE_CHANNEL at commit (schema/004): the API
# drops its in-memory copy of online features on it.
ONLINE_CHANNEL = "streamflow_online"
ONLINE_TRIGGER = "streamflow_online_changed"
_LOOPBACK = {"localhost", "127.0.0.1", "::1"}
_PG_PASSWORD_ENV = "STREAMFLOW_FEAST_PG_PASSWORD"
_REDIS_PASSWORD_ENV = "STREAMFLOW_FEAST_REDIS_PASSWORD"


class NoSnapshotError(LookupError):
    """No snapshot exists at (or before) the requested date."""

    def __init__(self, message: str, available: Sequence[date]) -> None:
        shown = ", ".join(d.isoformat() for d in available) or "none: ingest a month first"
        super().__init__(f"{message}; snapshots available: {shown}")
        self.available = list(available)


@dataclass(frozen=True)
class ApplyResult:
    entities: list[str]
    feature_views: list[str]
    feature_services: list[str]
    deleted: list[str]
    seconds: float


@dataclass(frozen=True)
class MaterializationPlan:
    as_of: date  # what was asked for
    snapshot_as_of: date  # the latest snapshot at or before as_of: what the online store will serve
    window_start: datetime  # event-time window read from the offline store (UTC, both ends inclusive)
    window_end: datetime
    # force | first | rollback | reingested (full window) | incremental | current (nothing to do)
    reason: str
    ingestion_id: int  # newest ingestion_log id visible when planned

    @property
    def skipped(self) -> bool:
        return self.reason == "current"


@dataclass(frozen=True)
class MaterializeResult:
    plan: MaterializationPlan
    rows: int  # entity rows written, summed over feature views (0 when skipped)
    users: int  # distinct users written
    seconds: float

    @property
    def as_of(self) -> date:
        return self.plan.as_of

    @property
    def snapshot_as_of(self) -> date:
        return self.plan.snapshot_as_of

    @property
    def skipped(self) -> bool:
        return self.plan.skipped


@dataclass(frozen=True)
class Materialization:
    """One row of the ``materializations`` log: what an online store holds since ``finished_at``."""

    project: str
    online_store: str
    as_of: date
    snapshot_as_of: date
    window_start: datetime
    window_end: datetime
    rows: int
    users: int
    ingestion_id: int
    started_at: datetime
    finished_at: datetime


# --------------------------------------------------------------------------- offline store


class ExactPostgreSQLRetrievalJob(PostgreSQLRetrievalJob):
    """Feast's PostgreSQL retrieval, except that numeric (Decimal) values become floats with float().

    Feast builds a decimal128 Arrow array and casts it to double, which is not exact: a stored 45.05
    came back as 45.050000000000004, in training sets and (through materialization) online alike.
    float(Decimal) is correctly rounded, so a stored 45.05 is served and trained on as 45.05.

    It also runs the query without nested-loop joins. Feast's point-in-time query filters each feature
    table on the entity timestamps' min and max, values the planner cannot know: it guesses 50 rows,
    then nested-loops the deduplicated rows against themselves, quadratic in the users (5,000
    generated users: 40 s instead of 0.15 s; 100,000 would take hours). These retrievals always
    read every user of a snapshot, for which hash joins are the right plan.
    """

    def _to_arrow_internal(self, timeout: int | None = None) -> pa.Table:
        with self._query_generator() as query, _get_conn(self.config.offline_store) as conn:
            conn.read_only = True
            with conn.cursor() as cur:
                cur.execute("SET LOCAL enable_nestloop = off")  # this transaction only
                cur.execute(query)
                if not cur.description:
                    raise ZeroColumnQueryResult(query)
                schema = pa.schema([(c.name, pg_type_code_to_arrow(c.type_code)) for c in cur.description])
                rows = cur.fetchall()
        columns = list(zip(*rows, strict=True)) if rows else [() for _ in schema]
        return pa.Table.from_arrays([_arrow_column(c) for c in columns], schema=schema)


def _arrow_column(values: Sequence[Any]) -> pa.Array:
    if any(isinstance(v, Decimal) for v in values):
        return pa.array([None if v is None else float(v) for v in values], type=pa.float64())
    return pa.array(values)


def _exact(job: RetrievalJob) -> RetrievalJob:
    assert isinstance(job, PostgreSQLRetrievalJob)
    return ExactPostgreSQLRetrievalJob(
        query=job._query_generator,
        config=job.config,
        full_feature_names=job.full_feature_names,
        on_demand_feature_views=job.on_demand_feature_views,
        metadata=job.metadata,
    )


class StreamflowPostgreSQLOfflineStoreConfig(PostgreSQLOfflineStoreConfig):
    type: Literal["streamflow.features.store.StreamflowPostgreSQLOfflineStore"] = (  # type: ignore[assignment]
        "streamflow.features.store.StreamflowPostgreSQLOfflineStore"
    )


class StreamflowPostgreSQLOfflineStore(PostgreSQLOfflineStore):
    """Feast's PostgreSQL offline store with exact numeric values (see ExactPostgreSQLRetrievalJob)."""

    @staticmethod
    def get_historical_features(*args: Any, **kwargs: Any) -> RetrievalJob:
        return _exact(PostgreSQLOfflineStore.get_historical_features(*args, **kwargs))

    @staticmethod
    def pull_latest_from_table_or_query(*args: Any, **kwargs: Any) -> RetrievalJob:
        return _exact(PostgreSQLOfflineStore.pull_latest_from_table_or_query(*args, **kwargs))

    @staticmethod
    def pull_all_from_table_or_query(*args: Any, **kwargs: Any) -> RetrievalJob:
        return _exact(PostgreSQLOfflineStore.pull_all_from_table_or_query(*args, **kwargs))


# --------------------------------------------------------------------------- configuration


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
            "type": f"{__name__}.{StreamflowPostgreSQLOfflineStore.__name__}",
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
    """Write ``feature_store.yaml`` (without credentials) for ``feast -c <feast_dir> ...`` users."""
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


# --------------------------------------------------------------------------- apply


def apply(settings: Settings, store: FeatureStore | None = None) -> ApplyResult:
    """Register the entity, views and services of definitions.py; objects of the project that are no
    longer defined there are deleted. Idempotent."""
    t0 = time.perf_counter()
    store = store or feature_store(settings)
    services = list(FEATURE_SERVICES.values())
    defined = {
        "entity": {user.name},
        "view": {v.name for v in FEATURE_VIEWS},
        "service": {s.name for s in services},
    }
    registry, project = store.registry, store.project
    stale = [
        *(s for s in registry.list_feature_services(project) if s.name not in defined["service"]),
        *(v for v in registry.list_feature_views(project) if v.name not in defined["view"]),
        # Feast registers a "__dummy" entity of its own for entity-less views: never ours to delete.
        *(
            e
            for e in registry.list_entities(project)
            if e.name not in defined["entity"] | {DUMMY_ENTITY_NAME}
        ),
    ]
    with contextlib.redirect_stdout(io.StringIO()):
        store.apply([user, *FEATURE_VIEWS, *services], objects_to_delete=stale, partial=not stale)
    if _bulk_supported(store.config):
        with db.connect(db.target(settings), settings, autocommit=True) as conn:
            migrate(conn)
            with conn.transaction():
                _online_tables(conn, store, FEATURE_VIEWS)
                # Views deleted above dropped their tables without a trigger firing: say it here.
                conn.execute("SELECT pg_notify(%s, 'apply')", (ONLINE_CHANNEL,))
    return ApplyResult(
        entities=[user.name],
        feature_views=[v.name for v in FEATURE_VIEWS],
        feature_services=[s.name for s in services],
        deleted=[o.name for o in stale],
        seconds=time.perf_counter() - t0,
    )


# --------------------------------------------------------------------------- materialize


def _tables() -> list[str]:
    return [fv.batch_source.get_table_query_string() for fv in FEATURE_VIEWS]


def snapshot_dates(settings: Settings) -> list[date]:
    """Every as_of with feature snapshot rows, oldest first."""
    union = sql.SQL(" UNION ").join(
        sql.SQL("SELECT DISTINCT as_of FROM {}").format(sql.Identifier(table)) for table in _tables()
    )
    with db.connect(db.target(settings), settings) as conn:
        return [r[0] for r in conn.execute(sql.SQL("SELECT as_of FROM ({}) s ORDER BY as_of").format(union))]


def _midnight_utc(d: date) -> datetime:
    return datetime.combine(d, dtime.min, tzinfo=UTC)  # the schema's as_of_ts for as_of d


_COLUMNS = (
    "project, online_store, as_of, snapshot_as_of, window_start, window_end, rows, users, ingestion_id,"
    " started_at, finished_at"
)


def _last(conn: psycopg.Connection, project: str, online_store: str) -> Materialization | None:
    if not conn.execute("SELECT to_regclass('materializations') IS NOT NULL").fetchone()[0]:
        return None
    row = conn.execute(
        f"SELECT {_COLUMNS} FROM materializations WHERE project = %s AND online_store = %s"
        " ORDER BY id DESC LIMIT 1",
        (project, online_store),
    ).fetchone()
    return Materialization(*row) if row else None


def last_materialization(
    settings: Settings, store: FeatureStore | None = None, target: db.PgTarget | None = None
) -> Materialization | None:
    """What the online store of these Settings holds (None if it was never materialized).

    ``target``: connect there as is; without it the embedded server is started if it is down.
    """
    with db.connect(target or db.target(settings), settings) as conn:
        return _last(conn, store.project if store else PROJECT, online_store_id(settings))


def _plan(
    conn: psycopg.Connection, settings: Settings, as_of: date, project: str, force: bool
) -> MaterializationPlan:
    available = snapshot_dates(settings)
    candidates = [d for d in available if d <= as_of]
    if not candidates:
        raise NoSnapshotError(f"no snapshot at or before {as_of.isoformat()}", available)
    snapshot = candidates[-1]
    end = _midnight_utc(snapshot)
    # Read before Feast reads the data: an ingestion this run may miss always gets a larger id.
    ingestion_id = conn.execute("SELECT coalesce(max(id), 0) FROM ingestion_log").fetchone()[0]
    last = _last(conn, project, online_store_id(settings))
    # A month the online store already holds was ingested again (a corrected export) since.
    changed = (
        last is not None
        and conn.execute(
            "SELECT EXISTS (SELECT 1 FROM ingestion_log"
            " WHERE status = 'succeeded' AND as_of <= %s AND id > %s)",
            (last.snapshot_as_of, last.ingestion_id),
        ).fetchone()[0]
    )
    ttl = max((fv.ttl for fv in FEATURE_VIEWS if fv.ttl), default=timedelta(0))
    full = (end - ttl, end)
    if force:
        reason, window = "force", full
    elif last is None:
        reason, window = "first", full
    elif last.snapshot_as_of > snapshot:
        reason, window = "rollback", full
    elif changed:
        reason, window = "reingested", full
    elif last.snapshot_as_of == snapshot:
        reason, window = "current", (end, end)
    else:  # users whose latest row predates the loaded snapshot are already right online
        reason, window = "incremental", (_midnight_utc(last.snapshot_as_of) + timedelta(microseconds=1), end)
    return MaterializationPlan(as_of, snapshot, window[0], window[1], reason, ingestion_id)


def plan_materialization(
    settings: Settings, as_of: date, store: FeatureStore | None = None, force: bool = False
) -> MaterializationPlan:
    """What :func:`materialize` would do now (a dry run: nothing is written)."""
    with db.connect(db.target(settings), settings) as conn:
        return _plan(conn, settings, as_of, store.project if store else PROJECT, force)


def _written(conn: psycopg.Connection, start: datetime, end: datetime) -> tuple[int, int]:
    """(entity rows summed over views, distinct users) that Feast writes for this window."""
    per_table = sql.SQL(" UNION ALL ").join(
        sql.SQL("SELECT DISTINCT user_id, {} AS t FROM {} WHERE as_of_ts BETWEEN %(s)s AND %(e)s").format(
            sql.Literal(table), sql.Identifier(table)
        )
        for table in _tables()
    )
    row = conn.execute(
        sql.SQL("SELECT count(*), count(DISTINCT user_id) FROM ({}) w").format(per_table),
        {"s": start, "e": end},
    ).fetchone()
    return int(row[0]), int(row[1])


# --------------------------------------------------------------------------- bulk PostgreSQL writes
#
# Feast's PostgreSQL online store upserts one (entity, feature) row per statement (executemany): 7,043
# users took 14-25 s, a million would take an hour. For that store materialize computes the very rows
# Feast would write (same table, columns, entity-key bytes, ValueProto bytes, event time) with Feast's
# own functions, then loads them with COPY and one INSERT ... ON CONFLICT per view, in one transaction.


def _bulk_supported(config: RepoConfig) -> bool:
    # A pgvector column or versioned tables are written differently: leave those to Feast.
    online = config.online_store
    return (
        isinstance(online, PostgreSQLOnlineStoreConfig)
        and not online.vector_enabled
        and not config.registry.enable_online_feature_view_versioning
    )


def _distinct(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(codes, distinct values in order of first appearance) with values[i] == distinct[codes[i]].

    Exact, so that converting each distinct value once gives Feast's bytes for every row: floats are
    compared by bit pattern (-0.0 stays apart from 0.0), and a missing value stays None (pandas would
    fold None into NaN, which Feast's type checks treat differently).
    """
    if values.dtype.kind == "f":
        codes, uniques = pd.factorize(values.view(f"i{values.itemsize}"))
        return codes, uniques.view(values.dtype)
    codes, uniques = pd.factorize(values)
    missing = codes < 0
    if missing.any():
        if any(v is not None for v in values[missing]):
            raise TypeError(f"unsupported missing values in a {values.dtype} column: only None is handled")
        uniques = np.append(np.asarray(uniques, dtype=object), None)
        codes = np.where(missing, len(uniques) - 1, codes)
    return codes, uniques


def _utc_timestamps(column: pa.ChunkedArray) -> pa.Array:
    # As Feast: pd.to_datetime of the column. Feast then hands psycopg naive UTC datetimes, which the
    # server reads in its session time zone: the same instants when that is UTC (the embedded server's
    # default); an explicit UTC instant is right whatever the server's TimeZone.
    ts = pd.DatetimeIndex(pd.to_datetime(column.to_numpy(zero_copy_only=False)))
    ts = ts.tz_localize("UTC") if ts.tz is None else ts.tz_convert("UTC")
    return pa.array(ts, type=pa.timestamp("us", tz="UTC"))


def _hex(blobs: Iterable[bytes]) -> list[str]:
    return ["\\x" + b.hex() for b in blobs]  # bytea input format, read as is from CSV


@dataclass(frozen=True)
class _OnlineTable:
    name: str  # Feast's table name, in FEAST_SCHEMA
    value_num: bool  # Feast adds value_num for enable_openai_compatible_store; it writes it if present
    created: bool  # the source has a created-timestamp column


def _online_tables(
    conn: psycopg.Connection, store: FeatureStore, views: Sequence[FeatureView]
) -> dict[str, _OnlineTable]:
    """Feast's online table of each view; tables missing (no apply since a reset) are created by Feast."""
    config = store.config
    schema = config.online_store.db_schema or config.online_store.user
    names = {fv.name: compute_table_id(config.project, fv) for fv in views}

    def columns() -> dict[str, set[str]]:
        found: dict[str, set[str]] = {n: set() for n in names.values()}
        for table, column in conn.execute(
            "SELECT table_name, column_name FROM information_schema.columns"
            " WHERE table_schema = %s AND table_name = ANY(%s)",
            (schema, list(names.values())),
        ):
            found[table].add(column)
        return found

    cols = columns()
    missing = [fv for fv in views if not cols[names[fv.name]]]
    if missing:
        log.info("creating Feast online tables for %s", ", ".join(fv.name for fv in missing))
        entities = [store.registry.get_entity(e, config.project) for fv in missing for e in fv.entities]
        online_store = store._get_provider().online_store  # type: ignore[attr-defined]
        online_store.update(config, [], missing, [], entities, partial=True)
        cols = columns()
    _notify_changes(conn, schema, list(names.values()))
    return {
        fv.name: _OnlineTable(
            names[fv.name],
            "value_num" in cols[names[fv.name]],
            bool(fv.batch_source.created_timestamp_column),
        )
        for fv in views
    }


def _notify_changes(conn: psycopg.Connection, schema: str, tables: Sequence[str]) -> None:
    """Attach the change-notification trigger (schema/004) to online tables that lack it."""
    watched = {
        row[0]
        for row in conn.execute(
            "SELECT c.relname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid"
            " JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s AND t.tgname = %s",
            (schema, ONLINE_TRIGGER),
        )
    }
    for table in sorted(set(tables) - watched):
        conn.execute(
            sql.SQL(
                "CREATE TRIGGER {} AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON {}"
                " FOR EACH STATEMENT EXECUTE FUNCTION streamflow_online_changed()"
            ).format(sql.Identifier(ONLINE_TRIGGER), sql.Identifier(schema, table))
        )


def _pull_latest(store: FeatureStore, fv: FeatureView, start: datetime, end: datetime) -> pa.Table:
    """Per entity, its latest row in [start, end] (both ends inclusive), from Feast's offline store."""
    entities = [store.registry.get_entity(e, store.project) for e in fv.entities]
    join_keys, features, ts_col, created_col = _get_column_names(fv, entities)
    job = store._get_provider().offline_store.pull_latest_from_table_or_query(  # type: ignore[attr-defined]
        config=store.config,
        data_source=fv.batch_source,
        join_key_columns=join_keys,
        feature_name_columns=features,
        timestamp_field=ts_col,
        created_timestamp_column=created_col,
        start_date=start,
        end_date=end,
    )
    table = job.to_arrow()
    mapping = fv.batch_source.field_mapping
    if mapping:  # as Feast's source-read node: columns renamed after the read
        table = table.rename_columns([mapping.get(c, c) for c in table.column_names])
    return table.combine_chunks()


def _stage_view(
    fv: FeatureView, table: pa.Table, keys: dict[str, str], version: int, target: _OnlineTable
) -> tuple[pa.Table, list[str]]:
    """One staging row per entity: entity key, event (and created) time, then per feature the ValueProto
    bytes and value_text (and value_num) that Feast's online_write_batch would write. Returns the table
    and the feature names in column order. ``keys`` caches hex entity keys by join-key value."""
    join_keys = {e.name: e.dtype.to_value_type() for e in fv.entity_columns}
    if len(join_keys) != 1:
        raise NotImplementedError(f"{fv.name}: bulk materialization handles one join key")
    [(join_key, key_type)] = join_keys.items()
    ids = table.column(join_key).to_numpy(zero_copy_only=False)
    new = [i for i in dict.fromkeys(ids.tolist()) if i not in keys]
    if new:
        for i, proto in zip(
            new, python_values_to_proto_values(np.array(new, dtype=object), key_type), strict=True
        ):
            entity_key = EntityKeyProto(join_keys=[join_key], entity_values=[proto])
            keys[i] = "\\x" + serialize_entity_key(entity_key, entity_key_serialization_version=version).hex()
    columns: dict[str, pa.Array] = {
        "entity_key": pa.array([keys[i] for i in ids.tolist()], type=pa.string()),
        "event_ts": _utc_timestamps(table.column(fv.batch_source.timestamp_field)),
    }
    if target.created:
        columns["created_ts"] = _utc_timestamps(table.column(fv.batch_source.created_timestamp_column))
    names = []
    for n, field in enumerate(fv.features):
        codes, distinct = _distinct(table.column(field.name).to_numpy(zero_copy_only=False))
        protos = python_values_to_proto_values(distinct, field.dtype.to_value_type())
        text_num = [extract_text_and_num(p, target.value_num) for p in protos]
        columns[f"v{n}"] = pa.array(
            np.array(_hex(p.SerializeToString() for p in protos), dtype=object)[codes]
        )
        columns[f"t{n}"] = pa.array(np.array([t for t, _ in text_num], dtype=object)[codes], type=pa.string())
        if target.value_num:  # repr: the shortest string that float8 input reads back exactly
            nums = np.array([None if x is None else repr(x) for _, x in text_num], dtype=object)
            columns[f"n{n}"] = pa.array(nums[codes], type=pa.string())
        names.append(field.name)
    return pa.table(columns), names


def _copy_csv(conn: psycopg.Connection, table_name: str, data: pa.Table, chunk_rows: int = 100_000) -> None:
    # all_valid: every value quoted, so an empty string stays "" and only a missing value reads as NULL.
    options = pacsv.WriteOptions(include_header=False, quoting_style="all_valid")
    with conn.cursor().copy(
        sql.SQL("COPY {} FROM STDIN WITH (FORMAT csv)").format(sql.Identifier(table_name))
    ) as copy:
        for batch in data.to_batches(max_chunksize=chunk_rows):  # bounded memory for a million users
            buf = io.BytesIO()
            pacsv.write_csv(batch, buf, options)
            copy.write(buf.getbuffer())


def _upsert_view(
    conn: psycopg.Connection, schema: str, target: _OnlineTable, staged: pa.Table, names: list[str]
) -> None:
    stage = "sf_online_stage"
    col_types = {"entity_key": "bytea", "event_ts": "timestamptz", "created_ts": "timestamptz"}
    col_types.update(
        {
            c: "bytea" if c[0] == "v" else "text" if c[0] == "t" else "float8"
            for c in staged.column_names
            if c not in col_types
        }
    )
    conn.execute(
        sql.SQL("CREATE TEMP TABLE {} ({}) ON COMMIT DROP").format(
            sql.Identifier(stage),
            sql.SQL(", ").join(
                sql.SQL("{} " + col_types[c]).format(sql.Identifier(c)) for c in staged.column_names
            ),
        )
    )
    _copy_csv(conn, stage, staged)
    # Feast's columns, in its order; vector_value is NULL without pgvector, created_ts without a column.
    columns = [
        "entity_key",
        "feature_name",
        "value",
        "value_text",
        *(["value_num"] if target.value_num else []),
    ]
    columns += ["vector_value", "event_ts", "created_ts"]
    per_feature = [
        sql.SQL("({}, s.{}, s.{}{})").format(
            sql.Literal(name),
            sql.Identifier(f"v{n}"),
            sql.Identifier(f"t{n}"),
            sql.SQL(", s.{}").format(sql.Identifier(f"n{n}")) if target.value_num else sql.SQL(""),
        )
        for n, name in enumerate(names)
    ]
    values = sql.SQL(", ").join(
        [
            sql.SQL("s.entity_key"),
            sql.SQL("f.feature_name"),
            sql.SQL("f.value"),
            sql.SQL("f.value_text"),
            *([sql.SQL("f.value_num")] if target.value_num else []),
            sql.SQL("NULL::bytea"),
            sql.SQL("s.event_ts"),
            sql.SQL("s.created_ts" if target.created else "NULL::timestamptz"),
        ]
    )
    updated = [c for c in columns if c not in ("entity_key", "feature_name")]
    conn.execute(
        sql.SQL(
            "INSERT INTO {table} AS o ({columns}) SELECT {values} FROM {stage} s"
            " CROSS JOIN LATERAL (VALUES {per_feature}) AS f(feature_name, value, value_text{num})"
            " ON CONFLICT (entity_key, feature_name) DO UPDATE SET {set}"
            # Same end state as Feast's unconditional update, without rewriting unchanged rows.
            " WHERE ({old}) IS DISTINCT FROM ({new})"
        ).format(
            table=sql.Identifier(schema, target.name),
            columns=sql.SQL(", ").join(map(sql.Identifier, columns)),
            values=values,
            stage=sql.Identifier(stage),
            per_feature=sql.SQL(", ").join(per_feature),
            num=sql.SQL(", value_num" if target.value_num else ""),
            set=sql.SQL(", ").join(sql.SQL("{0} = EXCLUDED.{0}").format(sql.Identifier(c)) for c in updated),
            old=sql.SQL(", ").join(sql.SQL("o.{}").format(sql.Identifier(c)) for c in updated),
            new=sql.SQL(", ").join(sql.SQL("EXCLUDED.{}").format(sql.Identifier(c)) for c in updated),
        )
    )
    conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(stage)))


def _materialize_postgres(
    conn: psycopg.Connection, store: FeatureStore, plan: MaterializationPlan
) -> tuple[list[FeatureView], int, int]:
    """Write the plan's window into Feast's PostgreSQL online tables, inside the caller's transaction.
    Returns (views written, entity rows summed over views, distinct users)."""
    views = [store.registry.get_feature_view(fv.name, store.project) for fv in FEATURE_VIEWS]
    targets = _online_tables(conn, store, views)
    schema = store.config.online_store.db_schema or store.config.online_store.user
    keys: dict[str, str] = {}
    rows = 0
    for fv in views:
        table = _pull_latest(store, fv, plan.window_start, plan.window_end)
        if table.num_rows == 0:
            continue
        staged, names = _stage_view(
            fv, table, keys, store.config.entity_key_serialization_version, targets[fv.name]
        )
        _upsert_view(conn, schema, targets[fv.name], staged, names)
        rows += table.num_rows
    return views, rows, len(keys)


def _log(
    conn: psycopg.Connection,
    settings: Settings,
    project: str,
    plan: MaterializationPlan,
    rows: int,
    users: int,
    started: datetime,
) -> None:
    conn.execute(
        f"INSERT INTO materializations ({_COLUMNS}) VALUES ({', '.join(['%s'] * 10)}, now())",
        (
            project,
            online_store_id(settings),
            plan.as_of,
            plan.snapshot_as_of,
            plan.window_start,
            plan.window_end,
            rows,
            users,
            plan.ingestion_id,
            started,
        ),
    )


def materialize(
    settings: Settings, as_of: date, store: FeatureStore | None = None, force: bool = False
) -> MaterializeResult:
    """Make the online store serve, for every user, the latest feature values at or before ``as_of``.

    The first run (and ``force``, a rollback to an earlier snapshot, or a loaded month ingested again)
    loads the window [snapshot - ttl, snapshot]: for each user the latest row in it, exactly what a
    point-in-time join at the snapshot returns. Later runs load only snapshots newer than the last
    one loaded; asking again for the snapshot already loaded writes nothing.

    The PostgreSQL online store is written in bulk, in one transaction with the materializations log
    (readers see the previous snapshot or the new one, never a mix); Redis is written by Feast.
    """
    t0 = time.perf_counter()
    started = datetime.now(UTC)
    store = store or feature_store(settings)
    with db.connect(db.target(settings), settings, autocommit=True) as conn:
        migrate(conn)  # the materializations log is a migration (a no-op once applied)
        # Session lock: one materialization at a time per database, released even if we crash.
        conn.execute("SELECT pg_advisory_lock(%s)", (_LOCK_KEY,))
        plan = _plan(conn, settings, as_of, store.project, force)
        if plan.skipped:
            return MaterializeResult(plan, 0, 0, time.perf_counter() - t0)
        if _bulk_supported(store.config):
            with conn.transaction():
                views, rows, users = _materialize_postgres(conn, store, plan)
                _log(conn, settings, store.project, plan, rows, users, started)
            for fv in views:  # as Feast's materialize: record the interval in the registry
                store.registry.apply_materialization(fv, store.project, plan.window_start, plan.window_end)
        else:
            rows, users = _written(conn, plan.window_start, plan.window_end)
            # Feast prints a progress bar per view to stdout; the result below says it in one line.
            with contextlib.redirect_stdout(io.StringIO()):
                store.materialize(start_date=plan.window_start, end_date=plan.window_end)
            _log(conn, settings, store.project, plan, rows, users, started)
    result = MaterializeResult(plan, rows, users, time.perf_counter() - t0)
    log.info(
        "materialized snapshot %s (asked %s, %s): %d rows, %d users in %.1f s",
        plan.snapshot_as_of,
        as_of,
        plan.reason,
        rows,
        users,
        result.seconds,
    )
    return result


# --------------------------------------------------------------------------- online features


def _not_found(column: Any, row: int) -> bool:
    # PostgreSQL marks an absent row NOT_FOUND; Feast's Redis store says PRESENT with an empty value
    # and no event time. A stored null always has its snapshot's event time.
    if column.statuses[row] == FieldStatus.NOT_FOUND:
        return True
    ts = column.event_timestamps[row]
    return ts.seconds == 0 and ts.nanos == 0 and column.values[row].WhichOneof("val") is None


def online_features(
    settings_or_store: Settings | FeatureStore,
    user_ids: Iterable[str],
    service: str = DEFAULT_FEATURE_SERVICE,
) -> list[dict[str, Any]]:
    """Per user, in request order: ``{"user_id", "found", "features", "missing", "event_timestamp"}``.

    Feast answers an unknown user with nulls, not an error: ``found`` is False when no feature of the
    service was found, ``missing`` lists the features not found (a stored null, e.g. plan_stream_tv of
    a user without internet, is found), and ``event_timestamp`` is the newest event time among the
    found features (tz-aware UTC).
    """
    store = (
        settings_or_store if isinstance(settings_or_store, FeatureStore) else feature_store(settings_or_store)
    )
    ids = list(user_ids)
    if not ids:
        return []
    response = store.get_online_features(
        features=store.get_feature_service(service), entity_rows=[{"user_id": u} for u in ids]
    )
    proto = response.proto
    values = response.to_dict()
    names = [n for n in proto.metadata.feature_names.val if n != "user_id"]
    columns = {n: proto.results[i] for i, n in enumerate(proto.metadata.feature_names.val)}
    out = []
    for row, user_id in enumerate(ids):
        missing = [n for n in names if _not_found(columns[n], row)]
        seconds = [columns[n].event_timestamps[row].seconds for n in names if n not in missing]
        out.append(
            {
                "user_id": user_id,
                "found": len(missing) < len(names),
                "features": {n: values[n][row] for n in names},
                "missing": missing,
                "event_timestamp": datetime.fromtimestamp(max(seconds), UTC) if seconds else None,
            }
        )
    return out
