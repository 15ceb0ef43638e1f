"""What a command needs before it starts its heavy work, checked in milliseconds with plain SQL.

The CLI calls these before importing Feast, MLflow or Prefect (seconds each), so a command run in
the wrong order answers at once with the step to take: no data yet -> ingest; no feature store ->
``features apply``; no snapshot at that date -> the dates there are. Each failure is a
:class:`~streamflow.errors.NotReady`.

Feast's SQL registry is read directly (its ``feature_services`` table in the ``feast`` schema): a
missing table means "never applied". Any other surprise there leaves the check to Feast itself.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import date

import psycopg
from psycopg import sql

from streamflow import catalog, db
from streamflow.errors import NotReady, UsageError
from streamflow.settings import Settings

INGEST_HINT = "ingest a month first: streamflow ingest DIR --as-of YYYY-MM-DD"
APPLY_HINT = "run `streamflow features apply`"


def _dates(values: Iterable[date]) -> str:
    return ", ".join(d.isoformat() for d in values) or "none"


class Checks:
    """Preconditions on one connection to the StreamFlow database."""

    def __init__(self, conn: psycopg.Connection) -> None:
        self.conn = conn
        self._snapshots: list[date] | None = None

    def _exists(self, table: str) -> bool:
        return self.conn.execute("SELECT to_regclass(%s) IS NOT NULL", (table,)).fetchone()[0]

    def snapshots(self) -> list[date]:
        """Every as_of with a snapshot (user_snapshots is the entity table of every query)."""
        if self._snapshots is None:
            self._snapshots = (
                [r[0] for r in self.conn.execute("SELECT DISTINCT as_of FROM user_snapshots ORDER BY as_of")]
                if self._exists("public.user_snapshots")
                else []
            )
        return self._snapshots

    def labels(self) -> list[date]:
        if not self._exists("public.labels"):
            return []
        return [r[0] for r in self.conn.execute("SELECT DISTINCT as_of FROM labels ORDER BY as_of")]

    def data(self) -> list[date]:
        """At least one month was ingested; returns the snapshot dates."""
        found = self.snapshots()
        if not found:
            raise NotReady("no data yet", INGEST_HINT)
        return found

    def snapshot(self, as_of: date, *, at_or_before: bool = False) -> date:
        """The snapshot at ``as_of`` (or the latest at or before it)."""
        found = self.data()
        if at_or_before:
            earlier = [d for d in found if d <= as_of]
            if earlier:
                return earlier[-1]
            raise NotReady(
                f"no snapshot at or before {as_of.isoformat()}", f"snapshots available: {_dates(found)}"
            )
        if as_of not in found:
            raise NotReady(
                f"no snapshot at as_of {as_of.isoformat()}", f"snapshots available: {_dates(found)}"
            )
        return as_of

    def labelled(self, as_of: date) -> None:
        """A training set can be built at ``as_of``: its snapshot and labels of the same month."""
        self.snapshot(as_of)
        found = self.labels()
        if as_of not in found:
            raise NotReady(f"no labels at {as_of.isoformat()}", f"labels available: {_dates(found)}")

    def revision(self, as_of: date, revision: int | None) -> dict[date, int]:
        """The pins of ``--revision`` for the month ``as_of`` ({} without one): the revision exists
        and was not pruned."""
        from streamflow.data import revisions

        if revision is None:
            return {}
        try:
            revisions.read_at(self.conn, [as_of], {as_of: revision})
        except revisions.RevisionNotFound as exc:
            raise UsageError(f"--revision: {exc}", "`streamflow data revisions` lists them") from None
        return {as_of: revision}

    def applied(self, *services: str) -> None:
        """The feature store was applied, with these feature services."""
        table = f"{catalog.FEAST_SCHEMA}.feature_services"
        if not self._exists(table):
            raise NotReady("feature store not applied", APPLY_HINT)
        try:
            with self.conn.transaction():
                rows = self.conn.execute(
                    sql.SQL("SELECT feature_service_name FROM {} WHERE project_id = %s").format(
                        sql.Identifier(catalog.FEAST_SCHEMA, "feature_services")
                    ),
                    (catalog.FEAST_PROJECT,),
                ).fetchall()
        except psycopg.errors.UndefinedColumn:  # a registry layout this check does not know: Feast decides
            return
        registered = {r[0] for r in rows}
        if not registered:
            raise NotReady("feature store not applied", APPLY_HINT)
        missing = [s for s in services if s not in registered]
        if missing:
            raise NotReady(f"feature service {', '.join(missing)} is not applied", APPLY_HINT)


@contextmanager
def checks(settings: Settings) -> Iterator[Checks]:
    """Checks on the configured database (the embedded server is started if it is down)."""
    with db.connect(db.target(settings), settings, autocommit=True) as conn:
        yield Checks(conn)
