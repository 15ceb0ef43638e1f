"""Promotion, rollback and the gate, on MLflow registry aliases.

``models:/streamflow_churn@production`` is the serving contract. A candidate takes the alias only
when it beats the current production version on the SAME hold-out users (the stable hash split,
at the candidate's as_of) by ``promotion_margin`` ROC-AUC, unless forced. Every decision is written
to the candidate's version tags. A PostgreSQL advisory lock serialises promotions, so concurrent
callers each see the result of the previous one and exactly one version holds the alias.

Promotion and the online store agree: a version takes the alias only once the online store holds
the snapshot at its as_of or a later one (it is materialized first when it holds an older one), so
the API never serves a model features older than the month it was trained on.
"""

from __future__ import annotations

import getpass
from dataclasses import dataclass
from datetime import UTC, date, datetime

from streamflow import db
from streamflow.errors import NotReady
from streamflow.settings import Settings, get_settings
from streamflow.training.tracking import use_mlflow

_LOCK_KEY = 0x5F_50_52_4F  # one promotion at a time, across processes


class PromotionError(NotReady):
    """The request cannot be carried out (no such version, nothing to roll back to...)."""


@dataclass(frozen=True)
class Decision:
    version: int
    promoted: bool
    previous_version: int | None
    candidate_auc: float
    production_auc: float | None
    reason: str
    online_as_of: date | None = None  # the snapshot the online store serves after the decision
    materialized: bool = False  # the online store was brought to the version's as_of for it


def _client(settings: Settings):
    import mlflow

    use_mlflow(settings)
    return mlflow.MlflowClient()


def production_version(settings: Settings | None = None) -> int | None:
    import mlflow

    settings = settings or get_settings()
    client = _client(settings)
    try:
        return int(client.get_model_version_by_alias(settings.model_name, settings.production_alias).version)
    except mlflow.exceptions.MlflowException:
        return None


def _versions(client, settings: Settings) -> list:
    return sorted(
        client.search_model_versions(f"name='{settings.model_name}'"), key=lambda mv: int(mv.version)
    )


def best_version(settings: Settings) -> int:
    """The version with the highest hold-out ROC-AUC among those trained at the latest as_of."""
    versions = _versions(_client(settings), settings)
    if not versions:
        raise PromotionError(f"no versions of {settings.model_name} are registered; train one first")
    latest = max(mv.tags.get("as_of", "") for mv in versions)
    pool = [mv for mv in versions if mv.tags.get("as_of", "") == latest]
    return int(max(pool, key=lambda mv: float(mv.tags.get("holdout_roc_auc", "nan"))).version)


def holdout_auc(client, settings: Settings, version: int, as_of: date) -> float:
    """ROC-AUC of a version on the hold-out users of ``as_of``; computed once, then kept as a version tag
    (a version's predictions on a fixed snapshot never change)."""
    from streamflow.training.train import scores_on_holdout

    mv = client.get_model_version(settings.model_name, str(version))
    key = f"holdout_roc_auc.{as_of.isoformat()}"
    if mv.tags.get("as_of") == as_of.isoformat() and "holdout_roc_auc" in mv.tags:
        return float(mv.tags["holdout_roc_auc"])
    if key not in mv.tags:
        client.set_model_version_tag(
            settings.model_name,
            str(version),
            key,
            repr(scores_on_holdout(version, as_of, settings)["roc_auc"]),
        )
        return float(client.get_model_version(settings.model_name, str(version)).tags[key])
    return float(mv.tags[key])


def ensure_online(settings: Settings, as_of: date) -> tuple[date, bool]:
    """Make the online store hold the snapshot at ``as_of`` or a later one; returns (the snapshot it
    serves, whether it was materialized now). Raises PromotionError when that is impossible."""
    from streamflow.features.materialize import last_materialization, materialize

    last = last_materialization(settings)
    if last is not None and last.snapshot_as_of >= as_of:
        return last.snapshot_as_of, False
    held = "no snapshot" if last is None else f"the snapshot at {last.snapshot_as_of}"
    try:
        result = materialize(settings, as_of)
    except Exception as exc:
        detail = " ".join(str(exc).split())[:300]
        raise PromotionError(
            f"not promoted: the online store holds {held}, the version was trained at {as_of},"
            f" and materializing {as_of} failed ({type(exc).__name__}: {detail})",
            f"run `streamflow features materialize --as-of {as_of}`, then promote again",
        ) from exc
    if result.snapshot_as_of < as_of:  # no snapshot at as_of any more: serving would be stale
        raise PromotionError(
            f"not promoted: the online store can serve the snapshot at {result.snapshot_as_of} at most,"
            f" older than the version's as_of {as_of}",
            f"ingest the month at {as_of} again",
        )
    return result.snapshot_as_of, True


def promote(
    settings: Settings | None = None,
    version: int | None = None,
    best: bool = False,
    force: bool = False,
    by: str | None = None,
) -> Decision:
    settings = settings or get_settings()
    client = _client(settings)
    if version is None:
        if not best:
            raise PromotionError("name a --version or ask for --best")
        version = best_version(settings)
    try:
        candidate = client.get_model_version(settings.model_name, str(version))
    except Exception as exc:
        raise PromotionError(f"{settings.model_name} has no version {version}") from exc
    as_of = date.fromisoformat(candidate.tags["as_of"])
    with db.connect(db.target(settings), settings) as conn, conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
        current = production_version(settings)
        cand_auc = holdout_auc(client, settings, version, as_of)
        prod_auc = holdout_auc(client, settings, current, as_of) if current is not None else None
        if current == version:
            promoted, reason = False, f"version {version} already holds @{settings.production_alias}"
        elif current is None:
            promoted, reason = True, "no production version yet"
        elif force:
            promoted, reason = True, f"forced (candidate {cand_auc:.4f} vs production {prod_auc:.4f})"
        elif cand_auc - prod_auc >= settings.promotion_margin:
            promoted, reason = (
                True,
                (
                    f"candidate {cand_auc:.4f} beats production v{current} {prod_auc:.4f}"
                    f" by >= {settings.promotion_margin} on the hold-out users of {as_of}"
                ),
            )
        else:
            promoted, reason = (
                False,
                (
                    f"candidate {cand_auc:.4f} does not beat production v{current} {prod_auc:.4f}"
                    f" by {settings.promotion_margin} on the hold-out users of {as_of}"
                ),
            )
        now = datetime.now(UTC).isoformat(timespec="seconds")
        tags = {
            "gate_decision": "promoted" if promoted else "rejected",
            "gate_reason": reason,
            "gate_at": now,
            "gate_candidate_roc_auc": f"{cand_auc:.6f}",
            "gate_production_roc_auc": "" if prod_auc is None else f"{prod_auc:.6f}",
        }
        online_as_of, materialized = None, False
        if promoted:  # before the alias moves: the API swaps models as soon as it does
            online_as_of, materialized = ensure_online(settings, as_of)
            client.set_registered_model_alias(settings.model_name, settings.production_alias, str(version))
            tags |= {
                "promoted_at": now,
                "promoted_by": by or getpass.getuser(),
                "previous_version": "" if current is None else str(current),
                "reason": reason,
            }
        for key, value in tags.items():
            client.set_model_version_tag(settings.model_name, str(version), key, value)
    return Decision(version, promoted, current, cand_auc, prod_auc, reason, online_as_of, materialized)


def rollback(settings: Settings | None = None, by: str | None = None) -> Decision:
    """Give the alias back to the version that held it before the current one."""
    settings = settings or get_settings()
    client = _client(settings)
    with db.connect(db.target(settings), settings) as conn, conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
        current = production_version(settings)
        if current is None:
            raise PromotionError(f"no version holds @{settings.production_alias}; nothing to roll back")
        previous = client.get_model_version(settings.model_name, str(current)).tags.get("previous_version")
        if not previous:
            raise PromotionError(f"version {current} has no previous production version to roll back to")
        previous_as_of = client.get_model_version(settings.model_name, previous).tags["as_of"]
        online_as_of, materialized = ensure_online(settings, date.fromisoformat(previous_as_of))
        client.set_registered_model_alias(settings.model_name, settings.production_alias, previous)
        now = datetime.now(UTC).isoformat(timespec="seconds")
        reason = f"rollback from version {current}"
        for key, value in {
            "promoted_at": now,
            "promoted_by": by or getpass.getuser(),
            "reason": reason,
            "rolled_back_from": str(current),
        }.items():
            client.set_model_version_tag(settings.model_name, previous, key, value)
        client.set_model_version_tag(settings.model_name, str(current), "rolled_back_at", now)
    return Decision(int(previous), True, current, float("nan"), None, reason, online_as_of, materialized)


@dataclass(frozen=True)
class VersionRow:
    version: int
    model_type: str
    feature_service: str
    as_of: str
    roc_auc: float
    threshold: float
    aliases: tuple[str, ...]
    created: str


def list_versions(settings: Settings | None = None) -> list[VersionRow]:
    settings = settings or get_settings()
    client = _client(settings)
    rows = []
    for mv in _versions(client, settings):
        full = client.get_model_version(settings.model_name, mv.version)  # search omits aliases
        rows.append(
            VersionRow(
                int(mv.version),
                mv.tags.get("model_type", "?"),
                mv.tags.get("feature_service", "?"),
                mv.tags.get("as_of", "?"),
                float(mv.tags.get("holdout_roc_auc", "nan")),
                float(mv.tags.get("threshold", "nan")),
                tuple(full.aliases),
                datetime.fromtimestamp(mv.creation_timestamp / 1000, UTC).isoformat(timespec="seconds"),
            )
        )
    return rows
