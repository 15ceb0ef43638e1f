"""Point-in-time training sets: who existed at ``as_of``, what Feast knew about them at ``as_of``, and
whether they churned (the labels of ``as_of``, or of the snapshot ``label_horizon`` months later).

Features come from Feast's ``get_historical_features`` on a FeatureService, so a value dated after an
entity row's timestamp can never leak into that row. Rows are sorted by user_id and the frame has a
fingerprint, so two builds of the same data are byte-for-byte the same training set.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

import pandas as pd
import pyarrow as pa
from feast import FeatureStore
from feast.infra.offline_stores.offline_store import RetrievalJob
from feast.types import Bool, Int64, String

from streamflow import db
from streamflow.data import revisions
from streamflow.data.contracts import LABEL_COLUMN
from streamflow.features.config import feature_store
from streamflow.features.definitions import (
    DEFAULT_FEATURE_SERVICE,
    FEATURE_SERVICES,
    FEATURE_VIEWS,
    feature_spec,
)
from streamflow.features.historical import historical_job, relation
from streamflow.features.offline_store import record_batches
from streamflow.features.snapshots import NoSnapshotError, snapshot_dates
from streamflow.months import add_months, months_between
from streamflow.progress import row_progress
from streamflow.settings import Settings

log = logging.getLogger(__name__)

LABEL = LABEL_COLUMN  # the training frame keeps the export's name
ENTITY_TS = "event_timestamp"


@dataclass(frozen=True)
class TrainingSet:
    """``frame`` columns: user_id, event_timestamp (datetime64[ns, UTC]), the service's features in
    service order (Int64 / float64 / nullable boolean / object str, nulls kept), churn_label (int64 0/1)."""

    frame: pd.DataFrame = field(repr=False)
    as_of: date
    label_as_of: date
    service: str
    features: tuple[str, ...]
    fingerprint: str
    seconds: float
    # The revision each snapshot month was read at: the feature window's months and the labels' month.
    revisions: dict[date, int] = field(default_factory=dict)

    @property
    def rows(self) -> int:
        return len(self.frame)

    @property
    def positives(self) -> int:
        return int(self.frame[LABEL].sum())

    def metadata(self) -> dict[str, Any]:
        """JSON-ready description, e.g. for MLflow params/tags."""
        return {
            "as_of": self.as_of.isoformat(),
            "label_as_of": self.label_as_of.isoformat(),
            "label_horizon_months": months_between(self.as_of, self.label_as_of),
            "service": self.service,
            "rows": self.rows,
            "positives": self.positives,
            "features": list(self.features),
            "fingerprint": self.fingerprint,
            "revisions": {d.isoformat(): r for d, r in sorted(self.revisions.items())},
        }


def label_dates(settings: Settings) -> list[date]:
    """Every as_of with labels, oldest first."""
    with db.connect(db.target(settings), settings) as conn:
        return [r[0] for r in conn.execute("SELECT DISTINCT as_of FROM labels ORDER BY as_of")]


def available_as_of(settings: Settings) -> list[date]:
    """The as_of dates a training set can be built at (label_horizon 0): a snapshot and its labels."""
    return sorted(set(snapshot_dates(settings)) & set(label_dates(settings)))


def _entity_sql(as_of: date, label_as_of: date, pins: Mapping[date, int]) -> str:
    # Literal dates (ISO from date objects: nothing to inject), as Feast runs the SQL text itself.
    return (
        f"SELECT s.user_id, s.as_of_ts AS {ENTITY_TS}, l.{LABEL_COLUMN}::int AS {LABEL}"
        f" FROM {relation('user_snapshots', pins)} s JOIN {relation('labels', pins)} l"
        f" ON l.user_id = s.user_id AND l.as_of = DATE '{label_as_of.isoformat()}'"
        f" WHERE s.as_of = DATE '{as_of.isoformat()}'"
    )


def feature_window(as_of: date) -> tuple[date, date]:
    """The snapshot months a point-in-time read at ``as_of`` can take values from (both ends included)."""
    ttl = max((fv.ttl for fv in FEATURE_VIEWS if fv.ttl), default=timedelta(0))
    return as_of - ttl, as_of


def read_revisions(
    settings: Settings, as_of: date, label_as_of: date, pins: Mapping[date, int] | None = None
) -> tuple[dict[date, int], dict[date, int]]:
    """(the revision each month of the read is taken at, the pins that differ from what months serve)."""
    start, end = feature_window(as_of)
    with db.connect(db.target(settings), settings) as conn:
        months = [d for d in snapshot_dates(settings) if start <= d <= end] + [label_as_of]
        read = revisions.read_at(conn, months, pins)
        return read, revisions.pinned_only(conn, read)


def _dtypes(service: str) -> dict[str, str]:
    service_obj = FEATURE_SERVICES[service]
    out = {}
    for projection in service_obj.feature_view_projections:
        for f in projection.features:
            if f.dtype == Int64:
                out[f.name] = "Int64"
            elif f.dtype == Bool:
                out[f.name] = "boolean"
            elif f.dtype == String:
                out[f.name] = "object"
            else:
                out[f.name] = "float64"
    return out


def normalise(frame: pd.DataFrame, service: str) -> pd.DataFrame:
    """Feast's frame in canonical form: UTC timestamps, explicit dtypes, fixed column and row order."""
    names = list(feature_spec(service).names)
    df = frame[["user_id", ENTITY_TS, *names, LABEL]].copy()
    ts = pd.to_datetime(df[ENTITY_TS])
    # Feast's PostgreSQL offline store returns naive timestamps that are in fact UTC.
    ts = ts.dt.tz_localize("UTC") if ts.dt.tz is None else ts.dt.tz_convert("UTC")
    df[ENTITY_TS] = ts.astype("datetime64[ns, UTC]")
    for name, dtype in _dtypes(service).items():
        if dtype == "object":
            df[name] = df[name].astype(object).where(df[name].notna(), None)
        else:
            df[name] = df[name].astype(dtype)
    df[LABEL] = df[LABEL].astype("int64")
    df["user_id"] = df["user_id"].astype(object)
    return df.sort_values(["user_id", ENTITY_TS], kind="mergesort").reset_index(drop=True)


def fingerprint(frame: pd.DataFrame) -> str:
    """sha256 over column names, dtypes and a CSV rendering (floats at full precision, ISO times)."""
    h = hashlib.sha256()
    h.update(json.dumps([[c, str(t)] for c, t in frame.dtypes.items()]).encode())
    h.update(b"\n")
    body = frame.to_csv(index=False, lineterminator="\n", na_rep="", date_format="%Y-%m-%dT%H:%M:%S.%f%z")
    h.update(body.encode())
    return h.hexdigest()


def _frame(job: RetrievalJob, show_progress: bool, description: str) -> pd.DataFrame:
    """``job.to_df()``, read in record batches under a progress display of rows and rate."""
    batches = []
    with row_progress(show_progress) as progress:
        task = progress.add_task(description, total=None)
        for batch in record_batches(job):
            batches.append(batch)
            progress.advance(task, batch.num_rows)
    if not batches:
        return job.to_df()
    return pa.Table.from_batches(batches).to_pandas().reset_index(drop=True)


def training_set(
    settings: Settings,
    as_of: date,
    service: str = DEFAULT_FEATURE_SERVICE,
    label_horizon: int = 0,
    store: FeatureStore | None = None,
    pins: Mapping[date, int] | None = None,
    show_progress: bool = False,
) -> TrainingSet:
    """Users of the snapshot at ``as_of`` with their features at ``as_of`` and the labels of the snapshot
    ``label_horizon`` months later (users absent from that snapshot are left out).

    Each month is read at the revision it serves, or at its revision in ``pins`` (as_of -> revision).
    ``show_progress``: rows read and their rate, on a terminal.
    """
    t0 = time.perf_counter()
    if label_horizon < 0:
        raise ValueError(f"label_horizon must be >= 0, got {label_horizon}")
    spec = feature_spec(service)  # raises on an unknown service
    snapshots = snapshot_dates(settings)
    if as_of not in snapshots:
        raise NoSnapshotError(f"no snapshot at as_of {as_of.isoformat()}", snapshots)
    label_as_of = add_months(as_of, label_horizon)
    labelled = label_dates(settings)
    if label_as_of not in labelled:
        raise NoSnapshotError(
            f"no labels at {label_as_of.isoformat()} (as_of {as_of.isoformat()} + {label_horizon} months)",
            labelled,
        )
    store = store or feature_store(settings)
    read, pinned = read_revisions(settings, as_of, label_as_of, pins)
    with warnings.catch_warnings():
        # Feast reads the entity query's schema with pandas on a raw psycopg connection.
        warnings.filterwarnings("ignore", message="pandas only supports SQLAlchemy", category=UserWarning)
        job = historical_job(store, _entity_sql(as_of, label_as_of, pinned), service, pinned)
        frame = normalise(_frame(job, show_progress, f"training set {as_of.isoformat()}"), service)
    return TrainingSet(
        frame=frame,
        as_of=as_of,
        label_as_of=label_as_of,
        service=service,
        features=spec.names,
        fingerprint=fingerprint(frame),
        seconds=time.perf_counter() - t0,
        revisions=read,
    )
