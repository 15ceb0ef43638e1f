"""Snapshot revisions: where each ingested month's rows live, and which revision a month serves.

Each file of an ingested month goes into a fresh table ``revisions.<parent>_<yyyy_mm_dd>_r<N>``
(schema/005). It is loaded without indexes, keyed once, then attached as the month's partition of
the parent table that Feast and StreamFlow read (``user_snapshots``, ..., ``labels``). A corrected
month gets revision N+1: the previous revision is detached, not deleted, so it stays readable.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from datetime import time as dtime

import psycopg
from psycopg import sql

from streamflow.data.contracts import LABELS, PAYMENTS, SUBSCRIPTIONS, SUPPORT, USAGE, USERS

SCHEMA = "revisions"
# The partitioned table each export file feeds.
SNAPSHOT_TABLES = {
    USERS.table: "user_snapshots",
    SUBSCRIPTIONS.table: "subscription_snapshots",
    USAGE.table: "usage_snapshots",
    PAYMENTS.table: "payments_snapshots",
    SUPPORT.table: "support_snapshots",
    LABELS.table: "labels",
}


@dataclass(frozen=True)
class Revision:
    """One row of ``snapshot_revisions``."""

    as_of: date
    revision: int
    ingestion_id: int
    file_hashes: dict[str, str]
    row_counts: dict[str, int]
    created_at: datetime
    superseded_at: datetime | None
    pruned_at: datetime | None

    @property
    def current(self) -> bool:
        return self.superseded_at is None

    @property
    def state(self) -> str:
        return "pruned" if self.pruned_at else "current" if self.current else "earlier"

    @property
    def rows(self) -> int:
        """Rows of the month's users file (one per user of the snapshot)."""
        return int(self.row_counts.get(USERS.table, 0))


def as_of_ts(as_of: date) -> datetime:
    """The event time of a snapshot: its date at 00:00 UTC."""
    return datetime.combine(as_of, dtime.min, tzinfo=UTC)


def table_name(parent: str, as_of: date, revision: int) -> str:
    return f"{parent}_{as_of:%Y_%m_%d}_r{revision}"


_COLUMNS = "as_of, revision, ingestion_id, file_hashes, row_counts, created_at, superseded_at, pruned_at"


def revisions(conn: psycopg.Connection, as_of: date | None = None) -> list[Revision]:
    """Every revision (of one month, or of all), oldest month and revision first."""
    where = sql.SQL("WHERE as_of = %s" if as_of else "")
    query = sql.SQL("SELECT {} FROM snapshot_revisions {} ORDER BY as_of, revision").format(
        sql.SQL(_COLUMNS), where
    )
    return [Revision(*row) for row in conn.execute(query, (as_of,) if as_of else ())]


def current_revision(conn: psycopg.Connection, as_of: date) -> Revision | None:
    row = conn.execute(
        f"SELECT {_COLUMNS} FROM snapshot_revisions WHERE as_of = %s AND superseded_at IS NULL", (as_of,)
    ).fetchone()
    return Revision(*row) if row else None


def next_revision(conn: psycopg.Connection, as_of: date) -> int:
    row = conn.execute("SELECT coalesce(max(revision), 0) FROM snapshot_revisions WHERE as_of = %s", (as_of,))
    return int(row.fetchone()[0]) + 1


def same_content(conn: psycopg.Connection, file_hashes: dict[str, str]) -> list[date]:
    """Months other revisions of which hold exactly these files (a month exported twice under two dates)."""
    rows = conn.execute(
        "SELECT DISTINCT as_of FROM snapshot_revisions WHERE file_hashes = %s::jsonb ORDER BY as_of",
        (psycopg.types.json.Jsonb(file_hashes),),
    )
    return [r[0] for r in rows]


def create_table(conn: psycopg.Connection, parent: str, as_of: date, revision: int) -> sql.Composed:
    """An empty, unindexed revision table shaped like ``parent``; the month columns fill themselves.

    The CHECK constraint matches the partition bound, so ATTACH needs no validation scan.
    """
    name = table_name(parent, as_of, revision)
    table = sql.Identifier(SCHEMA, name)
    ts = as_of_ts(as_of)
    conn.execute(sql.SQL("CREATE TABLE {} (LIKE {})").format(table, sql.Identifier(parent)))
    conn.execute(
        sql.SQL(
            "ALTER TABLE {t} ALTER COLUMN as_of SET DEFAULT {d}, ALTER COLUMN as_of_ts SET DEFAULT {ts},"
            " ALTER COLUMN revision SET DEFAULT {r},"
            " ADD CONSTRAINT {c} CHECK (as_of = {d} AND as_of_ts = {ts})"
        ).format(
            t=table,
            d=sql.Literal(as_of),
            ts=sql.Literal(ts),
            r=sql.Literal(revision),
            c=sql.Identifier(f"{name}_month"),
        )
    )
    return table


def attach(conn: psycopg.Connection, parent: str, as_of: date, revision: int, previous: int | None) -> None:
    """Key a loaded revision table and make it the month's partition, detaching ``previous``."""
    table = sql.Identifier(SCHEMA, table_name(parent, as_of, revision))
    conn.execute(sql.SQL("ALTER TABLE {} ADD PRIMARY KEY (user_id, as_of_ts)").format(table))
    # Statistics now: the first point-in-time query after an ingest would otherwise plan blind.
    conn.execute(sql.SQL("ANALYZE {}").format(table))
    if previous is not None:
        old = sql.Identifier(SCHEMA, table_name(parent, as_of, previous))
        conn.execute(sql.SQL("ALTER TABLE {} DETACH PARTITION {}").format(sql.Identifier(parent), old))
    conn.execute(
        sql.SQL("ALTER TABLE {} ATTACH PARTITION {} FOR VALUES IN ({})").format(
            sql.Identifier(parent), table, sql.Literal(as_of_ts(as_of))
        )
    )


class RevisionNotFound(LookupError):
    """A pinned revision that was never ingested, or whose rows were pruned."""


def read_at(
    conn: psycopg.Connection, months: Iterable[date], pins: Mapping[date, int] | None = None
) -> dict[date, int]:
    """The revision each of ``months`` is read at: its pin, else the revision it serves."""
    pins = dict(pins or {})
    wanted = sorted(set(months) | set(pins))
    rows = conn.execute(
        "SELECT as_of, revision, superseded_at IS NULL, pruned_at IS NOT NULL FROM snapshot_revisions"
        " WHERE as_of = ANY(%s)",
        (wanted,),
    ).fetchall()
    current = {d: r for d, r, serving, _ in rows if serving}
    known = {(d, r): pruned for d, r, _, pruned in rows}
    for d, r in pins.items():
        if (d, r) not in known or known[(d, r)]:
            have = sorted(rev for (month, rev), pruned in known.items() if month == d and not pruned)
            state = "was pruned" if known.get((d, r)) else "does not exist"
            raise RevisionNotFound(
                f"revision {r} of {d.isoformat()} {state}; readable revisions: "
                + (", ".join(map(str, have)) or "none")
            )
    return {d: pins.get(d, current[d]) for d in wanted if d in pins or d in current}


def pinned_only(conn: psycopg.Connection, revisions: Mapping[date, int]) -> dict[date, int]:
    """The months of ``revisions`` read at another revision than the one they serve."""
    current = dict(
        conn.execute(
            "SELECT as_of, revision FROM snapshot_revisions WHERE superseded_at IS NULL AND as_of = ANY(%s)",
            (list(revisions),),
        ).fetchall()
    )
    return {d: r for d, r in revisions.items() if current.get(d) != r}
