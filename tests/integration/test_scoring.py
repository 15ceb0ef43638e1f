"""Batch scoring in chunks: binary COPY rows built with numpy, and chunked scoring equal to scoring at once."""

from __future__ import annotations

from datetime import UTC, date, datetime

import numpy as np
import pyarrow as pa
import pytest

from streamflow import db
from streamflow.data.ingest import prepare
from streamflow.monitoring.scoring import (
    ScoredChunk,
    binary_copy_rows,
    copy_scores,
    load_scores,
    score_snapshot,
    snapshot_features,
)
from streamflow.settings import Settings
from tests.integration.conftest import JAN, TrainedStack


def _chunk(ids: list[str], proba: list[float], threshold: float) -> ScoredChunk:
    p = np.asarray(proba, dtype=np.float64)
    return ScoredChunk(np.asarray(ids, dtype=object), p, (p >= threshold).astype(np.int16))


def test_binary_copy_rows_are_what_postgres_stores(fresh_settings: Settings) -> None:
    """Ids of any length and alphabet, extreme probabilities, a timestamp with microseconds: stored
    exactly as sent, across chunks of one COPY (and an empty chunk)."""
    s = fresh_settings
    scored_at = datetime(2024, 3, 1, 12, 30, 45, 123456, tzinfo=UTC)
    as_of, version, threshold = date(2024, 1, 31), 7, 0.428
    chunks = [
        _chunk(["7590-VHVEG", "x", "Zoë-ünïcode-€", ""], [0.0, 1.0, 0.4279999, 1e-300], threshold),
        _chunk([], [], threshold),
        _chunk([f"user-{i:07d}" for i in range(1000)], list(np.linspace(0, 1, 1000)), threshold),
    ]
    prepare(s)
    with db.connect(db.target(s), s) as conn, conn.transaction():
        stats = copy_scores(conn, chunks, as_of, version, threshold, scored_at)
    assert (stats.rows, stats.chunks) == (1004, 3)
    with db.connect(db.target(s), s) as conn:
        stored = conn.execute(
            "SELECT user_id, as_of, model_version, probability, prediction, threshold, scored_at"
            " FROM predictions"
        ).fetchall()
    expected = {
        (u, as_of, version, float(p), int(y), threshold, scored_at)
        for c in chunks
        for u, p, y in zip(c.user_ids, c.probability, c.prediction, strict=True)
    }
    assert set(stored) == expected and len(stored) == 1004
    assert stats.predicted_churners == sum(int(c.prediction.sum()) for c in chunks)
    with pytest.raises(ValueError, match="null"):
        binary_copy_rows(_chunk([None], [0.5], threshold), as_of, version, threshold, scored_at)  # type: ignore[list-item]


def test_scoring_in_chunks_equals_scoring_at_once(trained: TrainedStack) -> None:
    s, version = trained.settings, trained.baseline.version
    users = trained.months.users("2024-01-31")
    at_once = score_snapshot(s, JAN, version, chunk_rows=10**9)
    whole = load_scores(s, JAN, version)
    chunked = score_snapshot(s, JAN, version, chunk_rows=1_000, show_progress=True)
    in_chunks = load_scores(s, JAN, version)
    assert (at_once.chunks, chunked.chunks) == (1, -(-users // 1_000))
    assert at_once.rows == chunked.rows == len(whole) == users
    assert chunked.replaced == users  # idempotent: the same key's rows, replaced
    assert in_chunks.equals(whole)  # row for row, bit for bit
    assert chunked.predicted_churners == at_once.predicted_churners
    assert chunked.mean_probability == pytest.approx(at_once.mean_probability, rel=1e-12)

    # Arrow record batches of uneven sizes (what a streaming offline read will hand over): the same.
    frame = snapshot_features(s, JAN, "churn_v1")
    table = pa.Table.from_pandas(frame, preserve_index=False)
    half = users // 2
    batches = [table.slice(0, 1), table.slice(1, half - 1).to_batches()[0], table.slice(half)]
    streamed = score_snapshot(s, JAN, version, batches=batches)
    assert streamed.rows == users and streamed.replaced == users
    assert load_scores(s, JAN, version).equals(whole)
    with db.connect(db.target(s), s) as conn:
        count = conn.execute(
            "SELECT count(*) FROM predictions WHERE as_of = %s AND model_version = %s", (JAN, version)
        ).fetchone()[0]
    assert count == users
