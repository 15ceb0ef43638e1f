"""Batch scoring: every user of a snapshot, scored by a registered model, stored in ``predictions``.

Features come from the same point-in-time retrieval as training sets (Feast's offline store at
``as_of``, through the model's own feature service), without labels: a month is scored before its
labels exist. The model runs through its ONNX conversion, the graph the API serves, so a batch score
equals what ``/predict`` answers for the same features. Writing is idempotent: re-scoring a snapshot
with a version replaces that (as_of, version) batch in one transaction.
"""

from __future__ import annotations

import logging
import tempfile
import time
import warnings
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path

import numpy as np
import pandas as pd
from feast import FeatureStore

from streamflow import db
from streamflow.features.definitions import DEFAULT_FEATURE_SERVICE, FeatureSpec, feature_spec
from streamflow.features.store import NoSnapshotError, feature_store, snapshot_dates
from streamflow.serving.fast_model import OnnxPredictor
from streamflow.settings import Settings
from streamflow.training.dataset import ENTITY_TS, LABEL, _ensure_statistics, normalise

log = logging.getLogger(__name__)

_LOCK_KEY = 0x5F_53_43_4F  # one scoring write at a time: two re-scorings of a key must not interleave


class NoProductionModel(LookupError):
    """No version holds the production alias."""


@dataclass(frozen=True)
class BatchModel:
    name: str
    version: int
    feature_service: str
    spec: FeatureSpec
    threshold: float
    predictor: OnnxPredictor


@dataclass(frozen=True)
class ScoreResult:
    as_of: date
    model_name: str
    model_version: int
    feature_service: str
    threshold: float
    rows: int
    predicted_churners: int
    mean_probability: float
    replaced: int  # rows of an earlier scoring of the same (as_of, version), now replaced
    scored_at: datetime
    seconds: float


def snapshot_features(
    settings: Settings,
    as_of: date,
    service: str = DEFAULT_FEATURE_SERVICE,
    store: FeatureStore | None = None,
) -> pd.DataFrame:
    """Every user of the snapshot at ``as_of`` with the service's features at ``as_of``.

    Columns: user_id, event_timestamp, the features (dtypes as in a training set); sorted by user_id.
    """
    feature_spec(service)  # raises on an unknown service
    snapshots = snapshot_dates(settings)
    if as_of not in snapshots:
        raise NoSnapshotError(f"no snapshot at as_of {as_of.isoformat()}", snapshots)
    store = store or feature_store(settings)
    _ensure_statistics(settings)
    # normalise() wants a label column: a constant placeholder, dropped below (no labels are read).
    entity_sql = (
        f"SELECT s.user_id, s.as_of_ts AS {ENTITY_TS}, 0 AS {LABEL} FROM user_snapshots s"
        f" WHERE s.as_of = DATE '{as_of.isoformat()}'"  # ISO from a date object: nothing to inject
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="pandas only supports SQLAlchemy", category=UserWarning)
        job = store.get_historical_features(entity_df=entity_sql, features=store.get_feature_service(service))
        frame = normalise(job.to_df(), service)
    return frame.drop(columns=[LABEL])


def load_model(settings: Settings, version: int | None = None) -> BatchModel:
    """A registered version (default: the production one) with its ONNX predictor and threshold."""
    import mlflow

    from streamflow.training.tracking import use_mlflow
    from streamflow.training.train import ONNX_ARTIFACT

    use_mlflow(settings)
    client = mlflow.MlflowClient()
    if version is None:
        try:
            mv = client.get_model_version_by_alias(settings.model_name, settings.production_alias)
        except mlflow.exceptions.MlflowException as exc:
            raise NoProductionModel(
                f"no version of {settings.model_name} holds @{settings.production_alias}"
            ) from exc
    else:
        mv = client.get_model_version(settings.model_name, str(version))
    service = mv.tags.get("feature_service", DEFAULT_FEATURE_SERVICE)
    spec = feature_spec(service)
    with tempfile.TemporaryDirectory() as tmp:
        path = mlflow.artifacts.download_artifacts(
            run_id=mv.run_id, artifact_path=ONNX_ARTIFACT, dst_path=tmp
        )
        predictor = OnnxPredictor(Path(path).read_bytes(), spec)
    return BatchModel(
        settings.model_name, int(mv.version), service, spec, float(mv.tags["threshold"]), predictor
    )


def score_snapshot(
    settings: Settings, as_of: date, version: int | None = None, store: FeatureStore | None = None
) -> ScoreResult:
    """Score every user of the snapshot at ``as_of`` with a version (default: production) and store it."""
    from streamflow.data.ingest import prepare

    t0 = time.perf_counter()
    model = load_model(settings, version)
    frame = snapshot_features(settings, as_of, model.feature_service, store)
    proba = model.predictor.predict_proba(frame[list(model.spec.names)]).astype(np.float64)
    predicted = (proba >= model.threshold).astype(np.int16)
    scored_at = datetime.now(UTC)
    rows = zip(frame["user_id"].tolist(), proba.tolist(), predicted.tolist(), strict=True)

    t = prepare(settings)  # the predictions table is a migration
    with db.connect(t, settings) as conn, conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
        replaced = conn.execute(
            "DELETE FROM predictions WHERE as_of = %s AND model_version = %s", (as_of, model.version)
        ).rowcount
        with conn.cursor().copy(
            "COPY predictions (user_id, as_of, model_version, probability, prediction, threshold, scored_at)"
            " FROM STDIN"
        ) as copy:
            for user_id, p, y in rows:
                copy.write_row((user_id, as_of, model.version, p, y, model.threshold, scored_at))
    result = ScoreResult(
        as_of=as_of,
        model_name=model.name,
        model_version=model.version,
        feature_service=model.feature_service,
        threshold=model.threshold,
        rows=len(frame),
        predicted_churners=int(predicted.sum()),
        mean_probability=float(proba.mean()) if len(proba) else float("nan"),
        replaced=replaced,
        scored_at=scored_at,
        seconds=time.perf_counter() - t0,
    )
    log.info(
        "scored %d users of %s with %s v%d (%s): %d predicted churners%s",
        result.rows,
        as_of,
        model.name,
        model.version,
        model.feature_service,
        result.predicted_churners,
        f", replacing {replaced} rows" if replaced else "",
    )
    return result


def load_scores(settings: Settings, as_of: date, version: int) -> pd.DataFrame:
    """Stored scores of one (as_of, version): user_id, probability, prediction; sorted by user_id."""
    with db.connect(db.target(settings), settings) as conn:
        rows = conn.execute(
            "SELECT user_id, probability, prediction FROM predictions"
            " WHERE as_of = %s AND model_version = %s",
            (as_of, version),
        ).fetchall()
    frame = pd.DataFrame(rows, columns=["user_id", "probability", "prediction"]).astype(
        {"probability": "float64", "prediction": "int64"}
    )
    # Sorted as training sets are (Python's order, not the database collation's).
    return frame.sort_values("user_id", kind="mergesort").reset_index(drop=True)


def snapshot_users(settings: Settings, as_of: date) -> int:
    with db.connect(db.target(settings), settings) as conn:
        return int(
            conn.execute("SELECT count(*) FROM user_snapshots WHERE as_of = %s", (as_of,)).fetchone()[0]
        )


def ensure_scored(settings: Settings, as_of: date, version: int) -> pd.DataFrame:
    """The scores of (as_of, version), scoring the snapshot first unless every user already has one."""
    scores = load_scores(settings, as_of, version)
    if len(scores) != snapshot_users(settings, as_of):
        score_snapshot(settings, as_of, version)
        scores = load_scores(settings, as_of, version)
    return scores
