"""Materialization: plan which window of the offline store the online store must take, write it, log it.

With the PostgreSQL online store the rows are written by StreamFlow's bulk writer (``online_writer``):
each view's complete new table is built and swapped in, in one transaction with the materializations
log. Any other online store (Redis) is written by Feast's own ``materialize``.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from datetime import time as dtime

import psycopg
import pyarrow as pa
import pyarrow.compute as pc
from feast import FeatureStore, FeatureView
from psycopg import sql
from rich.progress import Progress, ProgressColumn, SpinnerColumn, Task, TextColumn, TimeElapsedColumn
from rich.text import Text

from streamflow import db
from streamflow.errors import UsageError
from streamflow.features.config import PROJECT, feature_store, online_store_id
from streamflow.features.definitions import FEATURE_VIEWS
from streamflow.features.historical import pinned_view
from streamflow.features.offline_store import pull_latest
from streamflow.features.online_rows import CopyChunk, OnlineRows
from streamflow.features.online_writer import build, bulk_supported, online_schema, online_tables, swap
from streamflow.features.read_ahead import ReadAhead
from streamflow.features.snapshots import NoSnapshotError, snapshot_dates, snapshot_tables
from streamflow.migrations import migrate
from streamflow.settings import Settings

log = logging.getLogger(__name__)

_LOCK_KEY = 0x5F_4D_41_54  # serialises materializations
BATCH_ROWS = 65_536  # entity rows per batch read from the offline store and written online
READ_AHEAD_BATCHES = 2  # encoded batches held ahead of the writer (~50 MB each for 8 features)


@dataclass(frozen=True)
class MaterializationPlan:
    as_of: date  # what was asked for
    snapshot_as_of: date  # the latest snapshot at or before as_of: what the online store will serve
    window_start: datetime  # event-time window read from the offline store (UTC, both ends inclusive)
    window_end: datetime
    # force | first | rollback | reingested (full window) | incremental | current (nothing to do)
    reason: str
    ingestion_id: int  # newest ingestion_log id visible when planned
    pins: dict[date, int] = field(default_factory=dict)  # months read at another revision than served

    @property
    def skipped(self) -> bool:
        return self.reason == "current"


@dataclass(frozen=True)
class MaterializeResult:
    plan: MaterializationPlan
    rows: int  # entity rows written, summed over feature views (0 when skipped)
    users: int  # distinct users written
    seconds: float
    online_rows: int = 0  # (entity, feature) rows written to PostgreSQL online tables (0 for Redis)

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
    pins: dict[date, int] = field(default_factory=dict)  # the months it loaded at a pinned revision


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
        # pins through to_jsonb: a database not yet migrated to 007 (an API reading it) has no column
        f"SELECT {_COLUMNS}, to_jsonb(m) -> 'pins' FROM materializations m"
        " WHERE project = %s AND online_store = %s"
        " ORDER BY id DESC LIMIT 1",
        (project, online_store),
    ).fetchone()
    if row is None:
        return None
    *columns, pins = row
    return Materialization(*columns, {date.fromisoformat(d): int(r) for d, r in (pins or {}).items()})


def last_materialization(
    settings: Settings, store: FeatureStore | None = None, target: db.PgTarget | None = None
) -> Materialization | None:
    """What the online store of these Settings holds (None if it was never materialized).

    ``target``: connect there as is; without it the embedded server is started if it is down.
    """
    with db.connect(target or db.target(settings), settings) as conn:
        return _last(conn, store.project if store else PROJECT, online_store_id(settings))


def _plan(
    conn: psycopg.Connection,
    settings: Settings,
    as_of: date,
    project: str,
    force: bool,
    pins: Mapping[date, int] | None = None,
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
    pins = dict(pins or {})
    if force:
        reason, window = "force", full
    elif last is None:
        reason, window = "first", full
    elif last.pins != pins:  # to a pinned revision, or back from one
        reason, window = "revision", full
    elif last.snapshot_as_of > snapshot:
        reason, window = "rollback", full
    elif changed:
        reason, window = "reingested", full
    elif last.snapshot_as_of == snapshot:
        reason, window = "current", (end, end)
    else:  # users whose latest row predates the loaded snapshot are already right online
        reason, window = "incremental", (_midnight_utc(last.snapshot_as_of) + timedelta(microseconds=1), end)
    return MaterializationPlan(as_of, snapshot, window[0], window[1], reason, ingestion_id, pins)


def plan_materialization(
    settings: Settings,
    as_of: date,
    store: FeatureStore | None = None,
    force: bool = False,
    pins: Mapping[date, int] | None = None,
) -> MaterializationPlan:
    """What :func:`materialize` would do now (a dry run: nothing is written)."""
    with db.connect(db.target(settings), settings) as conn:
        return _plan(conn, settings, as_of, store.project if store else PROJECT, force, pins)


def _written(conn: psycopg.Connection, start: datetime, end: datetime) -> tuple[int, int]:
    """(entity rows summed over views, distinct users) that Feast writes for this window."""
    per_table = sql.SQL(" UNION ALL ").join(
        sql.SQL("SELECT DISTINCT user_id, {} AS t FROM {} WHERE as_of_ts BETWEEN %(s)s AND %(e)s").format(
            sql.Literal(table), sql.Identifier(table)
        )
        for table in snapshot_tables()
    )
    row = conn.execute(
        sql.SQL("SELECT count(*), count(DISTINCT user_id) FROM ({}) w").format(per_table),
        {"s": start, "e": end},
    ).fetchone()
    return int(row[0]), int(row[1])


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
        f"INSERT INTO materializations ({_COLUMNS}, pins) VALUES ({', '.join(['%s'] * 10)}, now(), %s)",
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
            json.dumps({d.isoformat(): r for d, r in sorted(plan.pins.items())}),
        ),
    )


# --------------------------------------------------------------------------- progress


class _Rows(ProgressColumn):
    """Rows done and their rate."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        rate = f"  {speed:>10,.0f} rows/s" if speed else ""
        return Text(f"{int(task.completed):>11,} rows{rate}")


def _progress(show: bool) -> Progress:
    return Progress(
        SpinnerColumn(),
        TextColumn("{task.description:<22} {task.fields[phase]:<14}"),
        _Rows(),
        TimeElapsedColumn(),
        disable=not show,
        transient=True,
    )


class _Users:
    """Distinct join-key values seen in the batches it watches (exact; one Arrow array per view)."""

    def __init__(self) -> None:
        self._unique: pa.Array | None = None

    def watch(self, batches: Iterable[pa.RecordBatch], key: str) -> Iterator[pa.RecordBatch]:
        seen: list[pa.Array] = []
        for batch in batches:
            seen.append(batch.column(key))
            yield batch
        if seen:
            if self._unique is not None:
                seen.append(self._unique)
            self._unique = pc.unique(pa.chunked_array(seen))

    @property
    def count(self) -> int:
        return 0 if self._unique is None else len(self._unique)


# --------------------------------------------------------------------------- writes


def _materialize_postgres(
    conn: psycopg.Connection, store: FeatureStore, plan: MaterializationPlan, progress: Progress
) -> tuple[list[FeatureView], int, int, int]:
    """Write the plan's window into Feast's PostgreSQL online tables, inside the caller's transaction.
    Returns (views written, entity rows summed over views, distinct users, online rows)."""
    views = [store.registry.get_feature_view(fv.name, store.project) for fv in FEATURE_VIEWS]
    targets = online_tables(conn, store, views)
    schema = online_schema(store.config)
    version = store.config.entity_key_serialization_version
    users = _Users()
    encoders = [OnlineRows(fv, targets[fv.name], version) for fv in views]

    def encoded(fv: FeatureView, encoder: OnlineRows) -> Iterator[CopyChunk]:
        source = pinned_view(copy.copy(fv), plan.pins)  # pinned months read from their revision tables
        with contextlib.closing(
            pull_latest(store, source, plan.window_start, plan.window_end, BATCH_ROWS)
        ) as batches:
            for batch in users.watch(batches, encoder.join_key):
                yield encoder.encode(batch)

    replacements = []
    rows = online = 0
    # The next view is read and encoded while PostgreSQL indexes the one before.
    sources = [lambda fv=fv, e=e: encoded(fv, e) for fv, e in zip(views, encoders, strict=True)]
    with ReadAhead(sources, READ_AHEAD_BATCHES) as ahead:
        for k, (fv, encoder) in enumerate(zip(views, encoders, strict=True)):
            task = progress.add_task(fv.name, total=None, phase="reading")
            replacement, written = build(
                conn,
                schema,
                encoder,
                ahead.items(k),
                advance=lambda n, task=task: progress.advance(task, n),
                status=lambda s, task=task: progress.update(task, phase=s),
            )
            progress.update(
                task, phase="built" if replacement else "no rows", total=written, completed=written
            )
            rows += written
            if replacement is not None:
                replacements.append(replacement)
                online += replacement.rows
                log.info(
                    "%s: %d online rows written, %d carried over; seconds %s",
                    fv.name,
                    replacement.rows,
                    replacement.carried,
                    replacement.seconds,
                )
    task = progress.add_task("swap", total=None, phase=f"{len(replacements)} tables")
    attempts = swap(conn, replacements)
    progress.update(task, phase=f"{len(replacements)} tables, {attempts} attempt(s)")
    if attempts > 1:
        log.info("swap of %d online tables took %d attempts (lock timeouts)", len(replacements), attempts)
    return views, rows, users.count, online


def materialize(
    settings: Settings,
    as_of: date,
    store: FeatureStore | None = None,
    force: bool = False,
    show_progress: bool = False,
    pins: Mapping[date, int] | None = None,
) -> MaterializeResult:
    """Make the online store serve, for every user, the latest feature values at or before ``as_of``.

    The first run (and ``force``, a rollback to an earlier snapshot, or a loaded month ingested again)
    loads the window [snapshot - ttl, snapshot]: for each user the latest row in it, exactly what a
    point-in-time join at the snapshot returns. Later runs load only snapshots newer than the last
    one loaded; asking again for the snapshot already loaded writes nothing.

    The PostgreSQL online store gets new tables swapped in, in one transaction with the
    materializations log (readers see the previous snapshot or the new one, never a mix or an empty
    table); Redis is written by Feast. ``show_progress``: a live display of rows and rates per view.

    ``pins`` (as_of -> revision): months loaded at that revision instead of the one they serve
    (PostgreSQL online store only); the next materialization without the same pins reloads in full.
    """
    t0 = time.perf_counter()
    started = datetime.now(UTC)
    store = store or feature_store(settings)
    if pins and not bulk_supported(store.config):
        raise UsageError(
            f"--revision: the {settings.online_store} online store is written by Feast, which reads the"
            " revisions served only",
            "materialize a pinned revision into the PostgreSQL online store",
        )
    online = 0
    with (
        db.connect(db.target(settings), settings, autocommit=True) as conn,
        _progress(show_progress) as progress,
    ):
        migrate(conn)  # the materializations log is a migration (a no-op once applied)
        # Session lock: one materialization at a time per database, released even if we crash.
        conn.execute("SELECT pg_advisory_lock(%s)", (_LOCK_KEY,))
        plan = _plan(conn, settings, as_of, store.project, force, pins)
        if plan.skipped:
            return MaterializeResult(plan, 0, 0, time.perf_counter() - t0)
        if bulk_supported(store.config):
            with conn.transaction():
                views, rows, users, online = _materialize_postgres(conn, store, plan, progress)
                _log(conn, settings, store.project, plan, rows, users, started)
            for fv in views:  # as Feast's materialize: record the interval in the registry
                store.registry.apply_materialization(fv, store.project, plan.window_start, plan.window_end)
        else:
            rows, users = _written(conn, plan.window_start, plan.window_end)
            task = progress.add_task(f"Feast -> {settings.online_store}", total=rows, phase="writing")
            # Feast prints a progress bar per view to stdout; the result below says it in one line.
            with contextlib.redirect_stdout(io.StringIO()):
                store.materialize(start_date=plan.window_start, end_date=plan.window_end)
            progress.update(task, completed=rows, phase="done")
            _log(conn, settings, store.project, plan, rows, users, started)
    result = MaterializeResult(plan, rows, users, time.perf_counter() - t0, online)
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
