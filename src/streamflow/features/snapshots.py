"""Which snapshots the feature views' tables hold."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date

from psycopg import sql

from streamflow import db
from streamflow.features.definitions import FEATURE_VIEWS
from streamflow.settings import Settings


class NoSnapshotError(LookupError):
    """No snapshot exists at (or before) the requested date."""

    def __init__(self, message: str, available: Sequence[date]) -> None:
        shown = ", ".join(d.isoformat() for d in available) or "none: ingest a month first"
        super().__init__(f"{message}; snapshots available: {shown}")
        self.available = list(available)


def snapshot_tables() -> list[str]:
    """The source table of each feature view."""
    return [fv.batch_source.get_table_query_string() for fv in FEATURE_VIEWS]


def snapshot_dates(settings: Settings) -> list[date]:
    """Every as_of with feature snapshot rows, oldest first."""
    union = sql.SQL(" UNION ").join(
        sql.SQL("SELECT DISTINCT as_of FROM {}").format(sql.Identifier(table)) for table in snapshot_tables()
    )
    with db.connect(db.target(settings), settings) as conn:
        return [r[0] for r in conn.execute(sql.SQL("SELECT as_of FROM ({}) s ORDER BY as_of").format(union))]
