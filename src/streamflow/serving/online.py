"""Online feature reads for the API.

With the PostgreSQL online store (the default) the API reads Feast's online tables directly: one
query for all views of the feature service, over a pool of async connections, with Feast's own
entity-key serialisation and value decoding. That is what ``get_online_features`` does, minus
~ms of SDK overhead per call. What it read is kept in an :class:`OnlineCache`, dropped whenever the
online tables change (see online_cache.py). Any other online store (Redis) goes through the Feast
SDK, uncached.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import psycopg
from feast.errors import FeatureServiceNotFoundException, FeatureViewNotFoundException
from feast.infra.key_encoding_utils import serialize_entity_key
from feast.protos.feast.types.EntityKey_pb2 import EntityKey as EntityKeyProto
from feast.protos.feast.types.Value_pb2 import Value as ValueProto
from prometheus_client import Counter
from psycopg import sql
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from streamflow import db
from streamflow.features import config as feature_store_mod
from streamflow.features.definitions import FEATURE_SERVICES, FEATURE_VIEWS, FeatureSpec
from streamflow.serving.online_cache import OnlineCache, listen
from streamflow.serving.outages import Dependency, describe_pg, describe_uri, one_line
from streamflow.settings import Settings

NOT_APPLIED = "feature store not applied: run `streamflow features apply`"
# Errors of a query on an online table that is not there: a setup step missing, not an outage.
_NOT_APPLIED_ERRORS = (psycopg.errors.UndefinedTable, psycopg.errors.InvalidSchemaName)
_TIMEOUTS = (TimeoutError, PoolTimeout, psycopg.errors.QueryCanceled)


class OnlineStoreUnavailable(RuntimeError):
    """The online store did not answer within its budget, or failed; the message says which store."""

    code = "online_store_unavailable"


class FeatureStoreNotApplied(OnlineStoreUnavailable):
    """The online store answers, but its tables (or Feast objects) are not there."""

    code = "feature_store_not_applied"

    def __init__(self) -> None:
        super().__init__(NOT_APPLIED)


class _PoolWarnings(logging.Filter):
    """The reader reports the online store's state itself (one line when it goes down, one when it
    is back); psycopg_pool's own warnings would add one per reconnection attempt."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR


_POOL_WARNINGS = _PoolWarnings()


@dataclass
class UserFeatures:
    user_id: str
    values: dict[str, object] = field(default_factory=dict)
    event_ts: dict[str, datetime] = field(default_factory=dict)  # per feature
    # P(churn) of these exact values by model run id: a cached entry is scored once per model.
    probabilities: dict[str, float] = field(default_factory=dict)

    def missing(self, spec: FeatureSpec) -> list[str]:
        return [n for n in spec.names if n not in self.values]

    @property
    def as_of(self) -> datetime | None:
        return min(self.event_ts.values()) if self.event_ts else None


def _decode(value: bytes) -> object:
    """A Feast ValueProto's Python value for the scalar types of our views (an unset value is None).

    What feast_value_type_to_python_type returns for them, at a fraction of its cost per value.
    """
    proto = ValueProto.FromString(value)
    kind = proto.WhichOneof("val")
    return None if kind is None or kind == "null_val" else getattr(proto, kind)


def _views(spec: FeatureSpec) -> dict[str, list[str]]:
    service = FEATURE_SERVICES[spec.service]
    return {p.name: [f.name for f in p.features] for p in service.feature_view_projections}


class PostgresOnlineReader:
    def __init__(
        self, settings: Settings, hits: Counter | None = None, misses: Counter | None = None
    ) -> None:
        config = feature_store_mod.repo_config(settings)
        self._key_version = config.entity_key_serialization_version
        self._schema = feature_store_mod.FEAST_SCHEMA
        self._project = config.project
        self._timeout = settings.online_timeout_s
        target = db.target(settings)
        self._conninfo = target.conninfo()
        self.status = Dependency(f"online store ({describe_pg(target)})")
        self._tables = [f"{self._project}_{fv.name}" for fv in FEATURE_VIEWS]
        self._purge: asyncio.Task | None = None
        self.cache = OnlineCache(settings.online_cache_max_users, settings.online_timeout_s + 1.0)
        self._listener: asyncio.Task | None = None
        self._hits, self._misses = hits, misses
        self._pool = AsyncConnectionPool(
            self._conninfo,
            name="streamflow-online",
            min_size=1,
            max_size=8,
            open=False,
            timeout=settings.online_timeout_s,
            # Give up reconnecting in the background after one budget (the pool's default, 5 min of
            # exponential backoff, left it waiting ~16 s after a 20 s outage): requests then open
            # connections on demand, the first one at once.
            reconnect_timeout=settings.online_timeout_s,
            kwargs={
                "autocommit": True,
                "connect_timeout": max(1, int(settings.online_timeout_s)),
                "options": f"-c statement_timeout={int(settings.online_timeout_s * 1000)}",
                "prepare_threshold": 0,
            },
        )
        self._queries: dict[tuple[str, bool], bytes] = {}

    async def open(self) -> None:
        logging.getLogger("psycopg.pool").addFilter(_POOL_WARNINGS)
        await self._pool.open(wait=False)
        if self.cache.max_entries > 0:
            self._listener = asyncio.create_task(
                listen(
                    self.cache,
                    self._conninfo,
                    self._tables,
                    self._timeout,
                    on_answer=self.status.answered,
                    on_failure=self._failed,
                )
            )
        else:
            self.cache.reason = "disabled (STREAMFLOW_ONLINE_CACHE_MAX_USERS=0)"

    async def close(self) -> None:
        for task in (self._listener, self._purge):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self._pool.close()

    def _failed(self, reason: str, started: float | None = None) -> None:
        """The store failed: on the change to down, drop the pooled connections that no longer work,
        so that none of them fails a request once the server is back."""
        if self.status.failed(reason, started) and (self._purge is None or self._purge.done()):
            self._purge = asyncio.get_running_loop().create_task(self._check_pool())

    async def _check_pool(self) -> None:
        with contextlib.suppress(Exception):
            async with asyncio.timeout(self._timeout):
                await self._pool.check()

    def _error(self, exc: BaseException, started: float) -> OnlineStoreUnavailable:
        """What a read or ping begun at ``started`` that failed tells the client, in one line; the
        store's state is updated."""
        if isinstance(exc, _NOT_APPLIED_ERRORS):
            self.status.answered()  # the server answered: it is a setup step that is missing
            return FeatureStoreNotApplied()
        if isinstance(exc, _TIMEOUTS):
            reason = f"no answer within {self._timeout:g} s"
            message = f"{self.status.name} did not answer within {self._timeout:g} s"
        else:
            reason = one_line(exc)
            message = f"{self.status.name} failed: {reason}"
        self._failed(reason, started)
        return OnlineStoreUnavailable(message)

    async def _rows(self, query: bytes | str, params: dict | None = None) -> list[tuple]:
        """One query on a pooled connection, within the online budget (the caller's timeout)."""
        for attempt in (1, 2):
            conn = None
            try:
                async with self._pool.connection() as conn:
                    cur = await conn.execute(query, params)
                    return await cur.fetchall()
            except psycopg.OperationalError:
                # A connection the server dropped while it sat in the pool (a restart): once more.
                if attempt == 2 or conn is None or not conn.broken:
                    raise
        raise AssertionError("unreachable")

    def _query(self, spec: FeatureSpec, single: bool) -> bytes:
        """The read for one feature service, rendered to bytes once: one user (``=``) or many (``ANY``)."""
        key = (spec.service, single)
        if key not in self._queries:
            match = sql.SQL("entity_key = %(keys)s") if single else sql.SQL("entity_key = ANY(%(keys)s)")
            parts = [
                sql.SQL(
                    "SELECT entity_key, feature_name, value, event_ts FROM {}"
                    " WHERE {} AND feature_name IN ({})"
                ).format(
                    sql.Identifier(self._schema, f"{self._project}_{view}"),
                    match,
                    sql.SQL(", ").join(map(sql.Literal, names)),
                )
                for view, names in _views(spec).items()
            ]
            self._queries[key] = sql.SQL(" UNION ALL ").join(parts).as_bytes(None)
        return self._queries[key]

    def _key(self, user_id: str) -> bytes:
        proto = EntityKeyProto(join_keys=["user_id"], entity_values=[ValueProto(string_val=user_id)])
        return serialize_entity_key(proto, entity_key_serialization_version=self._key_version)

    async def read(self, user_ids: Sequence[str], spec: FeatureSpec) -> list[UserFeatures]:
        """Each user's features (empty for an unknown user), from the cache or one query for the rest."""
        found: dict[str, UserFeatures] = {}
        for u in user_ids:
            hit = self.cache.get((spec.service, u))
            if hit is not None:
                found[u] = hit
        if self._hits is not None:
            self._hits.inc(len(found))
        missed = [u for u in user_ids if u not in found]
        if missed:
            if self._misses is not None:
                self._misses.inc(len(missed))
            generation = self.cache.generation  # what changes after this point is not stored
            for f in await self._fetch(missed, spec):
                self.cache.put((spec.service, f.user_id), f, generation)
                found[f.user_id] = f
        return [found[u] for u in user_ids]

    async def _fetch(self, user_ids: Sequence[str], spec: FeatureSpec) -> list[UserFeatures]:
        keys = {self._key(u): u for u in user_ids}
        single = len(keys) == 1
        params = {"keys": next(iter(keys)) if single else list(keys)}
        started = time.monotonic()
        try:
            async with asyncio.timeout(self._timeout):
                rows = await self._rows(self._query(spec, single), params)
        except Exception as exc:  # pool timeout, server gone, statement timeout, tables missing...
            raise self._error(exc, started) from None
        self.status.answered()
        out = {u: UserFeatures(u) for u in user_ids}
        stamps: dict[datetime, datetime] = {}  # one object per distinct time: cached entries stay small
        for key, name, value, ts in rows:
            found = out[keys[bytes(key)]]
            found.values[name] = _decode(value)
            found.event_ts[name] = stamps.setdefault(ts, ts if ts.tzinfo else ts.replace(tzinfo=UTC))
        return [out[u] for u in user_ids]

    async def ping(self) -> None:
        """The store answers and holds every online table (else FeatureStoreNotApplied)."""
        query = "SELECT t FROM unnest(%(tables)s::text[]) AS t WHERE to_regclass(t) IS NULL"
        tables = [sql.Identifier(self._schema, t).as_string(None) for t in self._tables]
        started = time.monotonic()
        try:
            async with asyncio.timeout(self._timeout):
                missing = await self._rows(query, {"tables": tables})
        except Exception as exc:
            raise self._error(exc, started) from None
        self.status.answered()
        if missing:
            raise FeatureStoreNotApplied()


class FeastOnlineReader:
    """Any online store Feast supports (Redis...), through the SDK."""

    def __init__(self, settings: Settings) -> None:
        self._store = feature_store_mod.feature_store(settings)
        self._timeout = settings.online_timeout_s
        self.status = Dependency(f"online store ({describe_uri(settings.redis_url)})")
        self.cache = OnlineCache(0, 0)
        self.cache.reason = "not used with this online store"

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def read(self, user_ids: Sequence[str], spec: FeatureSpec) -> list[UserFeatures]:
        def fetch() -> dict[str, list]:
            return self._store.get_online_features(
                features=list(spec.refs), entity_rows=[{"user_id": u} for u in user_ids]
            ).to_dict(include_event_timestamps=True)

        try:
            async with asyncio.timeout(self._timeout):
                table = await asyncio.to_thread(fetch)
        except (FeatureViewNotFoundException, FeatureServiceNotFoundException):
            raise FeatureStoreNotApplied() from None
        except TimeoutError:
            self.status.failed(f"no answer within {self._timeout:g} s")
            raise OnlineStoreUnavailable(
                f"{self.status.name} did not answer within {self._timeout:g} s"
            ) from None
        except Exception as exc:
            self.status.failed(one_line(exc))
            raise OnlineStoreUnavailable(f"{self.status.name} failed: {one_line(exc)}") from None
        self.status.answered()
        out = []
        for i, u in enumerate(user_ids):
            found = UserFeatures(u)
            for name in spec.names:
                seconds = table[f"{name}__ts"][i]
                if seconds:  # 0 marks a value the store does not hold (NOT_FOUND)
                    found.values[name] = table[name][i]
                    found.event_ts[name] = datetime.fromtimestamp(seconds, UTC)
            out.append(found)
        return out

    async def ping(self) -> None:
        return None


def online_reader(
    settings: Settings, hits: Counter | None = None, misses: Counter | None = None
) -> PostgresOnlineReader | FeastOnlineReader:
    if settings.online_store == "postgres":
        return PostgresOnlineReader(settings, hits, misses)
    return FeastOnlineReader(settings)
