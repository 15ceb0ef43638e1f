"""Which revisions exist, which registered model versions depend on them, and pruning one.

A model version records the revision of every month its training set read (the version tag
``streamflow.revisions``, JSON ``{as_of: revision}``, written by ``train_model``). That tag is what
makes a version reproducible, so ``prune`` refuses a revision a version depends on unless forced,
and never drops the revision a month serves. Pruning drops the revision's tables and stamps
``pruned_at`` in one transaction; the ``snapshot_revisions`` row stays, so reading the revision
afterwards says it was pruned (``revisions.read_at``).
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from datetime import date, datetime

import psycopg
from psycopg import sql

from streamflow import db
from streamflow.data import revisions
from streamflow.data.ingest import _LOCK_KEY as _INGEST_LOCK_KEY  # a prune never meets an ingest
from streamflow.data.revisions import SCHEMA, SNAPSHOT_TABLES, Revision, table_name
from streamflow.errors import PruneRefused, UsageError
from streamflow.settings import Settings

Key = tuple[date, int]


@dataclass(frozen=True)
class RevisionInfo:
    """One revision of one month, as ``streamflow data revisions`` lists it."""

    as_of: date
    revision: int
    ingested_at: datetime
    rows: int  # users of the snapshot
    state: str  # current | earlier | pruned
    pruned_at: datetime | None
    versions: tuple[int, ...]  # registered model versions trained on it


@dataclass(frozen=True)
class PruneResult:
    as_of: date
    revision: int
    status: str  # pruned | already_pruned
    pruned_at: datetime
    tables: tuple[str, ...]  # dropped now (empty when already pruned)
    versions: tuple[int, ...]  # versions that depended on it (pruned with --force)


def parse_tag(value: str | None) -> dict[date, int]:
    """A version's ``streamflow.revisions`` tag as {as_of: revision}; {} when absent or unreadable."""
    try:
        return {date.fromisoformat(d): int(r) for d, r in json.loads(value or "{}").items()}
    except (ValueError, TypeError, AttributeError):
        return {}


def tag_value(read: dict[date, int]) -> str:
    """The ``streamflow.revisions`` tag for a training set's revisions."""
    return json.dumps({d.isoformat(): int(r) for d, r in sorted(read.items())}, separators=(",", ":"))


def dependants(settings: Settings) -> dict[Key, tuple[int, ...]]:
    """(as_of, revision) -> the registered versions trained on it: one registry search, tags only."""
    import mlflow

    from streamflow.training.tracking import REVISIONS_TAG, use_mlflow

    use_mlflow(settings)
    found: dict[Key, list[int]] = defaultdict(list)
    for mv in mlflow.MlflowClient().search_model_versions(f"name='{settings.model_name}'"):
        for key in parse_tag(mv.tags.get(REVISIONS_TAG)).items():
            found[key].append(int(mv.version))
    return {key: tuple(sorted(v)) for key, v in found.items()}


def _key(r: Revision) -> Key:
    return r.as_of, r.revision


def list_revisions(settings: Settings, as_of: date | None = None) -> list[RevisionInfo]:
    """Every revision (of one month, or of all), oldest first, with the versions depending on each."""
    with db.connect(db.target(settings), settings) as conn:
        rows = revisions.revisions(conn, as_of)
    needed = dependants(settings) if rows else {}
    return [
        RevisionInfo(r.as_of, r.revision, r.created_at, r.rows, r.state, r.pruned_at, needed.get(_key(r), ()))
        for r in rows
    ]


def _revision(conn: psycopg.Connection, as_of: date, revision: int, lock: bool = False) -> Revision:
    row = conn.execute(
        f"SELECT {revisions._COLUMNS} FROM snapshot_revisions WHERE as_of = %s AND revision = %s"
        + (" FOR UPDATE" if lock else ""),
        (as_of, revision),
    ).fetchone()
    if row is None:
        have = [r.revision for r in revisions.revisions(conn, as_of)]
        raise UsageError(
            f"--revision: revision {revision} of {as_of.isoformat()} does not exist",
            f"revisions of {as_of.isoformat()}: {', '.join(map(str, have)) or 'none'}",
        )
    return Revision(*row)


def _refuse_current(rev: Revision) -> None:
    if rev.current:
        raise PruneRefused(
            f"revision {rev.revision} of {rev.as_of.isoformat()} is the current revision (the one served);"
            " it is never pruned",
            "ingest a corrected month first: the revision it replaces can then be pruned",
        )


def _versions(versions: tuple[int, ...]) -> str:
    return ", ".join(f"v{v}" for v in versions)


def prune(settings: Settings, as_of: date, revision: int, force: bool = False) -> PruneResult:
    """Drop the tables of an earlier revision and mark it pruned (one transaction).

    Refused (``PruneRefused``) for the current revision, and for a revision registered versions
    depend on unless ``force``. An already pruned revision is reported as such, nothing changes."""
    target = db.target(settings)
    with db.connect(target, settings) as conn:  # cheap answers first, before the registry is asked
        rev = _revision(conn, as_of, revision)
    if rev.pruned_at is not None:
        return PruneResult(as_of, revision, "already_pruned", rev.pruned_at, (), ())
    _refuse_current(rev)
    needed = dependants(settings).get((as_of, revision), ())
    if needed and not force:
        raise PruneRefused(
            f"revision {revision} of {as_of.isoformat()} is needed by registered"
            f" version{'s' if len(needed) > 1 else ''} {_versions(needed)} of {settings.model_name}",
            "pass --force to prune it anyway (those versions can then no longer be retrained or reproduced)",
        )
    with db.connect(target, settings) as conn, conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_INGEST_LOCK_KEY,))
        rev = _revision(conn, as_of, revision, lock=True)  # again: it may have changed meanwhile
        if rev.pruned_at is not None:
            return PruneResult(as_of, revision, "already_pruned", rev.pruned_at, (), ())
        _refuse_current(rev)
        tables = tuple(table_name(parent, as_of, revision) for parent in SNAPSHOT_TABLES.values())
        for name in tables:
            conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(SCHEMA, name)))
        pruned_at = conn.execute(
            "UPDATE snapshot_revisions SET pruned_at = now() WHERE as_of = %s AND revision = %s"
            " RETURNING pruned_at",
            (as_of, revision),
        ).fetchone()[0]
    return PruneResult(as_of, revision, "pruned", pruned_at, tuple(f"{SCHEMA}.{t}" for t in tables), needed)
