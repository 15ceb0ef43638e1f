"""Batch scoring: every user of a snapshot, scored by a registered model, stored in ``predictions``.

Features come from the same point-in-time retrieval as training sets (Feast's offline store at
``as_of``, through the model's own feature service), without labels: a month is scored before its
labels exist. The model runs through its ONNX conversion, the graph the API serves, so a batch score
equals what ``/predict`` answers for the same features. Writing is idempotent: re-scoring a snapshot
with a version replaces that (as_of, version) batch in one transaction.

Scoring streams: :func:`score_batches` predicts one feature batch at a time (``score_chunk_rows``
users) and :func:`copy_scores` sends each batch to PostgreSQL as binary COPY data built with numpy
(no Python object per value), all in one COPY inside one transaction. What holds a whole month in
memory today is the offline read (:func:`snapshot_feature_batches` splits Feast's one frame); an
offline store that yields record batches plugs in there, or through ``score_snapshot(batches=...)``.
"""

from __future__ import annotations

import logging
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import psycopg
import pyarrow as pa
from feast import FeatureStore
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from streamflow import db
from streamflow.features.config import feature_store
from streamflow.features.definitions import DEFAULT_FEATURE_SERVICE, FeatureSpec, feature_spec
from streamflow.features.historical import historical_job, relation
from streamflow.features.snapshots import NoSnapshotError, snapshot_dates
from streamflow.serving.fast_model import OnnxPredictor
from streamflow.settings import Settings
from streamflow.training.dataset import ENTITY_TS, LABEL, normalise, read_revisions

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
    chunks: int = 0  # feature batches predicted and COPYed one after the other


@dataclass(frozen=True)
class ScoredChunk:
    """One batch of scores, as arrays (a row per user)."""

    user_ids: np.ndarray  # object (str)
    probability: np.ndarray  # float64
    prediction: np.ndarray  # int16, probability >= threshold


FeatureBatch = pd.DataFrame | pa.RecordBatch | pa.Table


def snapshot_features(
    settings: Settings,
    as_of: date,
    service: str = DEFAULT_FEATURE_SERVICE,
    store: FeatureStore | None = None,
    pins: Mapping[date, int] | None = None,
) -> pd.DataFrame:
    """Every user of the snapshot at ``as_of`` with the service's features at ``as_of`` (each month at
    the revision it serves, or at its revision in ``pins``).

    Columns: user_id, event_timestamp, the features (dtypes as in a training set); sorted by user_id.
    """
    feature_spec(service)  # raises on an unknown service
    snapshots = snapshot_dates(settings)
    if as_of not in snapshots:
        raise NoSnapshotError(f"no snapshot at as_of {as_of.isoformat()}", snapshots)
    store = store or feature_store(settings)
    _, pinned = read_revisions(settings, as_of, as_of, pins)
    # normalise() wants a label column: a constant placeholder, dropped below (no labels are read).
    entity_sql = (
        f"SELECT s.user_id, s.as_of_ts AS {ENTITY_TS}, 0 AS {LABEL}"
        f" FROM {relation('user_snapshots', pinned)} s"
        f" WHERE s.as_of = DATE '{as_of.isoformat()}'"  # ISO from a date object: nothing to inject
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="pandas only supports SQLAlchemy", category=UserWarning)
        job = historical_job(store, entity_sql, service, pinned)
        frame = normalise(job.to_df(), service)
    return frame.drop(columns=[LABEL])


def snapshot_feature_batches(
    settings: Settings,
    as_of: date,
    service: str = DEFAULT_FEATURE_SERVICE,
    store: FeatureStore | None = None,
    chunk_rows: int | None = None,
    pins: Mapping[date, int] | None = None,
) -> Iterator[pd.DataFrame]:
    """:func:`snapshot_features` in consecutive chunks of ``chunk_rows`` users (``score_chunk_rows``).

    Today the offline read returns one frame, split here; once the offline store yields record
    batches, this yields those instead and nothing downstream changes.
    """
    chunk_rows = chunk_rows or settings.score_chunk_rows
    frame = snapshot_features(settings, as_of, service, store, pins)
    for start in range(0, len(frame), chunk_rows):
        yield frame.iloc[start : start + chunk_rows]


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


def score_batches(model: BatchModel, batches: Iterable[FeatureBatch]) -> Iterator[ScoredChunk]:
    """Each batch of feature rows (user_id + the model's features, as Feast returns them; a pandas
    frame or an Arrow batch/table) scored by the model's ONNX predictor, in order."""
    names = list(model.spec.names)
    for batch in batches:
        frame = batch.to_pandas() if isinstance(batch, pa.RecordBatch | pa.Table) else batch
        if len(frame) == 0:
            continue
        proba = model.predictor.predict_proba(frame[names]).astype(np.float64)
        yield ScoredChunk(
            user_ids=frame["user_id"].to_numpy(dtype=object),
            probability=proba,
            prediction=(proba >= model.threshold).astype(np.int16),
        )


_PG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
COPY_SIGNATURE = b"PGCOPY\n\xff\r\n\x00" + b"\x00" * 8  # signature, flags, header extension length
COPY_TRAILER = b"\xff\xff"
_COPY_PREDICTIONS = (
    "COPY predictions (user_id, as_of, model_version, probability, prediction, threshold, scored_at)"
    " FROM STDIN (FORMAT BINARY)"
)
# Everything after user_id: (length, value) per column, big-endian as PostgreSQL's binary format wants.
_TAIL = np.dtype(
    [
        ("as_of_len", ">i4"),
        ("as_of", ">i4"),  # days since 2000-01-01
        ("version_len", ">i4"),
        ("version", ">i4"),
        ("probability_len", ">i4"),
        ("probability", ">f8"),
        ("prediction_len", ">i4"),
        ("prediction", ">i2"),
        ("threshold_len", ">i4"),
        ("threshold", ">f8"),
        ("scored_at_len", ">i4"),
        ("scored_at", ">i8"),  # microseconds since 2000-01-01 UTC
    ]
)
_HEAD = np.dtype([("fields", ">i2"), ("user_id_len", ">i4")])


def binary_copy_rows(
    chunk: ScoredChunk, as_of: date, version: int, threshold: float, scored_at: datetime
) -> bytes:
    """The chunk's rows of ``predictions`` in PostgreSQL's binary COPY format (no signature or
    trailer), assembled with numpy: a few array operations per chunk instead of a tuple per row."""
    n = len(chunk.user_ids)
    ids = pa.array(chunk.user_ids, type=pa.string())
    if ids.null_count:
        raise ValueError("user_id must not be null")
    offsets = np.frombuffer(ids.buffers()[1], dtype=np.int32)[ids.offset : ids.offset + n + 1]
    text = np.frombuffer(ids.buffers()[2], dtype=np.uint8)[offsets[0] : offsets[-1]]
    lengths = np.diff(offsets).astype(np.int64)

    head = np.empty(n, dtype=_HEAD)
    head["fields"], head["user_id_len"] = 7, lengths
    tail = np.empty(n, dtype=_TAIL)
    tail["as_of_len"], tail["as_of"] = 4, (as_of - _PG_EPOCH.date()).days
    tail["version_len"], tail["version"] = 4, version
    tail["probability_len"], tail["probability"] = 8, chunk.probability
    tail["prediction_len"], tail["prediction"] = 2, chunk.prediction
    tail["threshold_len"], tail["threshold"] = 8, threshold
    delta = scored_at - _PG_EPOCH
    tail["scored_at_len"] = 8
    tail["scored_at"] = (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds

    row_bytes = _HEAD.itemsize + lengths + _TAIL.itemsize
    starts = np.zeros(n, dtype=np.int64)
    np.cumsum(row_bytes[:-1], out=starts[1:])
    out = np.empty(int(row_bytes.sum()), dtype=np.uint8)
    out[starts[:, None] + np.arange(_HEAD.itemsize)] = head.view(np.uint8).reshape(n, _HEAD.itemsize)
    text_at = np.repeat(starts + _HEAD.itemsize - (offsets[:-1] - offsets[0]), lengths)
    out[text_at + np.arange(len(text))] = text
    tail_at = (starts + _HEAD.itemsize + lengths)[:, None] + np.arange(_TAIL.itemsize)
    out[tail_at] = tail.view(np.uint8).reshape(n, _TAIL.itemsize)
    return out.tobytes()


@dataclass(frozen=True)
class CopyStats:
    rows: int
    predicted_churners: int
    probability_sum: float
    chunks: int


def copy_scores(
    conn: psycopg.Connection,
    chunks: Iterable[ScoredChunk],
    as_of: date,
    version: int,
    threshold: float,
    scored_at: datetime,
    on_chunk: Callable[[int], None] | None = None,
) -> CopyStats:
    """COPY every chunk into ``predictions`` (one binary COPY, in the caller's transaction)."""
    rows = churners = count = 0
    total = 0.0
    with conn.cursor().copy(_COPY_PREDICTIONS) as copy:
        copy.write(COPY_SIGNATURE)
        for chunk in chunks:
            copy.write(binary_copy_rows(chunk, as_of, version, threshold, scored_at))
            rows += len(chunk.user_ids)
            churners += int(chunk.prediction.sum())
            total += float(chunk.probability.sum())
            count += 1
            if on_chunk is not None:
                on_chunk(len(chunk.user_ids))
        copy.write(COPY_TRAILER)
    return CopyStats(rows, churners, total, count)


def _progress(enabled: bool) -> Progress:
    return Progress(
        TextColumn("[bold]score[/] {task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("users"),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        disable=not enabled,
    )


def score_snapshot(
    settings: Settings,
    as_of: date,
    version: int | None = None,
    store: FeatureStore | None = None,
    *,
    batches: Iterable[FeatureBatch] | None = None,
    chunk_rows: int | None = None,
    show_progress: bool = False,
    pins: Mapping[date, int] | None = None,
) -> ScoreResult:
    """Score every user of the snapshot at ``as_of`` with a version (default: production) and store it.

    ``batches``: the snapshot's feature rows in batches (default: :func:`snapshot_feature_batches`
    of ``chunk_rows`` users, each month at the revision it serves or at its revision in ``pins``;
    the scores replace those of (as_of, version) whichever revision they came from). Predicting and
    writing go batch by batch in one transaction; a failure anywhere leaves the previous scores of
    (as_of, version) in place.
    """
    from streamflow.data.ingest import prepare

    t0 = time.perf_counter()
    model = load_model(settings, version)
    if batches is None:
        if as_of not in snapshot_dates(settings):  # before the transaction: a clear error, no lock
            raise NoSnapshotError(f"no snapshot at as_of {as_of.isoformat()}", snapshot_dates(settings))
        batches = snapshot_feature_batches(settings, as_of, model.feature_service, store, chunk_rows, pins)
    scored_at = datetime.now(UTC)
    total = snapshot_users(settings, as_of, pins)

    t = prepare(settings)  # the predictions table is a migration
    with _progress(show_progress) as bar, db.connect(t, settings) as conn, conn.transaction():
        task = bar.add_task(f"{as_of} with v{model.version}", total=total or None, rate="")

        def advance(rows: int) -> None:
            done = bar.tasks[task].completed + rows
            elapsed = time.perf_counter() - t0
            bar.update(task, completed=done, rate=f"{done / elapsed:,.0f} users/s" if elapsed else "")

        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
        replaced = conn.execute(
            "DELETE FROM predictions WHERE as_of = %s AND model_version = %s", (as_of, model.version)
        ).rowcount
        stats = copy_scores(
            conn, score_batches(model, batches), as_of, model.version, model.threshold, scored_at, advance
        )
    result = ScoreResult(
        as_of=as_of,
        model_name=model.name,
        model_version=model.version,
        feature_service=model.feature_service,
        threshold=model.threshold,
        rows=stats.rows,
        predicted_churners=stats.predicted_churners,
        mean_probability=stats.probability_sum / stats.rows if stats.rows else float("nan"),
        replaced=replaced,
        scored_at=scored_at,
        seconds=time.perf_counter() - t0,
        chunks=stats.chunks,
    )
    log.info(
        "scored %d users of %s with %s v%d (%s) in %d chunks: %d predicted churners%s",
        result.rows,
        as_of,
        model.name,
        model.version,
        model.feature_service,
        result.chunks,
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


def snapshot_users(settings: Settings, as_of: date, pins: Mapping[date, int] | None = None) -> int:
    pinned = {d: r for d, r in (pins or {}).items() if d == as_of}
    with db.connect(db.target(settings), settings) as conn:
        query = f"SELECT count(*) FROM {relation('user_snapshots', pinned)} s WHERE as_of = %s"
        return int(conn.execute(query, (as_of,)).fetchone()[0])


def ensure_scored(settings: Settings, as_of: date, version: int) -> pd.DataFrame:
    """The scores of (as_of, version), scoring the snapshot first unless every user already has one."""
    scores = load_scores(settings, as_of, version)
    if len(scores) != snapshot_users(settings, as_of):
        score_snapshot(settings, as_of, version)
        scores = load_scores(settings, as_of, version)
    return scores
