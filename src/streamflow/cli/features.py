"""``streamflow features ...``: the Feast feature store."""

from __future__ import annotations

from typing import Any

from rich.markup import escape

from streamflow import preflight
from streamflow.cli.options import (
    AsOf,
    Json,
    RevisionOpt,
    parse_date,
)
from streamflow.cli.output import console, emit_json, rounded
from streamflow.cli.root import features_app
from streamflow.settings import get_settings


@features_app.command("apply")
def features_apply(as_json: Json = False) -> None:
    """Register the entity, feature views and feature services (idempotent), and write the Feast repo
    under the state folder (feature_store.yaml + definitions.py) for Feast's own CLI."""
    from streamflow.features.apply import apply

    settings = get_settings()
    r = apply(settings)
    out = {
        "entities": r.entities,
        "feature_views": r.feature_views,
        "feature_services": r.feature_services,
        "deleted": r.deleted,
        "feast_repo": settings.feast_dir,
        "seconds": rounded(r.seconds, 3),
    }
    if as_json:
        emit_json(out)
        return
    deleted = f"; deleted {', '.join(r.deleted)}" if r.deleted else ""
    console.print(
        f"feature store applied: {len(r.entities)} entity, {len(r.feature_views)} feature views,"
        f" {len(r.feature_services)} feature services{deleted}"
        f" (Feast repo: {escape(str(settings.feast_dir))})"
    )


@features_app.command("materialize")
def features_materialize(as_of: AsOf, revision: RevisionOpt = None, as_json: Json = False) -> None:
    """Load the latest snapshot at or before AS_OF into the online store (at REVISION if given)."""
    day = parse_date(as_of)
    settings = get_settings()
    with preflight.checks(settings) as check:
        pins = check.revision(check.snapshot(day, at_or_before=True), revision)
        check.applied()
    from streamflow.features.materialize import materialize

    r = materialize(settings, day, pins=pins)
    if as_json:
        emit_json(materialize_summary(r))
        return
    if r.skipped:
        console.print(
            f"online store already serves the snapshot at {r.snapshot_as_of} (asked {day}): nothing to write"
        )
    else:
        at = f" revision {revision}" if revision is not None else ""
        console.print(
            f"materialized the snapshot at {r.snapshot_as_of}{at} (asked {day}, {r.plan.reason} load):"
            f" {r.rows:,} rows for {r.users:,} users in {r.seconds:.1f} s"
        )


def materialize_summary(r: Any) -> dict[str, Any]:
    return {
        "as_of": r.as_of,
        "snapshot_as_of": r.snapshot_as_of,
        "revision": r.plan.pins.get(r.snapshot_as_of),  # null: the revision the month serves
        "reason": r.plan.reason,
        "skipped": r.skipped,
        "rows": r.rows,
        "users": r.users,
        "window_start": r.plan.window_start,
        "window_end": r.plan.window_end,
        "seconds": rounded(r.seconds, 3),
    }
