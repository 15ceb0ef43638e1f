"""Model pipelines, hyperparameter selection and evaluation.

Every model is one scikit-learn ``Pipeline`` (preprocessing + classifier) over the columns of a
:class:`~streamflow.features.definitions.FeatureSpec`, fed by :func:`to_model_input` at training
AND serving time. Missing values are imputed inside the pipeline: never NaN into a forest (skl2onnx
did not finish converting a NaN-trained forest, DESIGN.md), and ONNX conversion stays exact.

Selection is honest: hyperparameters (``GridSearchCV``, ROC-AUC) and the decision threshold
(``TunedThresholdClassifierCV``, F1) are chosen by stratified K-fold cross-validation on the
training users only; hold-out users (:func:`holdout_mask`) are scored once by :func:`evaluate`,
never tuned on.

Cost is bounded as the data grows: cross-validation runs on a stratified sample of at most
``cv_sample_rows`` training rows (all of them below that), and every model has a size that does not
grow with the rows (the forest's trees have at most 500 leaves and see at most 20,000 bootstrap rows
each; the boosted trees are a fixed number of small trees; the logistic regression is a vector). The
final model is fitted once on every training row.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from pandas.api.types import is_bool_dtype, is_numeric_dtype
from rich.progress import Progress, ProgressColumn, SpinnerColumn, Task, TextColumn, TimeElapsedColumn
from rich.text import Text
from sklearn.base import clone
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
)
from sklearn.model_selection import (
    GridSearchCV,
    StratifiedKFold,
    TunedThresholdClassifierCV,
    train_test_split,
)
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, PowerTransformer

from streamflow.catalog import MODEL_TYPES
from streamflow.features.spec import MISSING_CATEGORY

if TYPE_CHECKING:  # Feast is slow to import; the model code only needs the spec's column groups.
    from streamflow.features.definitions import FeatureSpec

# Boolean columns hold True/False/None (None = no internet, hence no streaming plan).
_BOOL_TO_FLOAT: dict[Any, float] = {True: 1.0, False: 0.0}
# Boolean NaN becomes -1 inside the pipeline: "no internet" stays distinct from False.
_BOOL_MISSING = -1.0

# Small grids (keys are Pipeline parameter names), searched on the bounded CV sample.
PARAM_GRIDS: dict[str, dict[str, list[Any]]] = {
    "baseline": {},  # the course model, deliberately untuned
    "gbm": {"clf__learning_rate": [0.05, 0.1], "clf__max_leaf_nodes": [7, 15]},
    "logreg": {"clf__C": [0.01, 0.1, 1.0, 10.0]},
}
CV_FOLDS = 5
CV_SAMPLE_ROWS = 20_000  # Settings.cv_sample_rows' default; fit_model's when the caller gives none

# The course forest, bounded: at most this many leaves per tree (so at most 300 x 999 nodes, whatever
# the rows) and this many bootstrap rows per tree (its fit cost stops growing with the rows). On the
# real months (5,282 training rows) every tree still sees a full-size bootstrap sample.
FOREST_MAX_LEAF_NODES = 500
FOREST_MAX_SAMPLES = 20_000

# The forest spreads one fit over the cores itself (joblib threads over its trees): its CV folds run
# one after the other. The others' folds run in parallel processes, where scikit-learn's joblib caps
# OpenMP at one thread each (histogram boosting's OpenMP threads on small folds, on a busy machine,
# were 5-10x slower than one thread per fold here); their final fit uses every core (OpenMP).
_MULTITHREADED = {"baseline"}


def to_model_input(frame: pd.DataFrame, spec: FeatureSpec) -> pd.DataFrame:
    """Feature columns as Feast returns them -> the frame every pipeline takes, in ``spec.names`` order.

    Numeric and boolean -> float32 (True 1.0, False 0.0, None NaN); categorical -> str (object), None
    -> :data:`MISSING_CATEGORY`. float32 because the ONNX graph takes float32 (ORT's Imputer has no
    double kernel): training on the same rounded values keeps scikit-learn and ONNX identical.
    Idempotent, so passing an already converted frame is harmless.
    """
    missing = [name for name in spec.names if name not in frame.columns]
    if missing:
        raise KeyError(f"frame lacks feature columns of {spec.service!r}: {missing}")
    out: dict[str, Any] = {}
    for name in spec.numeric:
        out[name] = pd.to_numeric(frame[name]).to_numpy(dtype=np.float32, na_value=np.nan)
    for name in spec.boolean:
        out[name] = _boolean_to_float(frame[name], name)
    for name in spec.categorical:
        column = frame[name].astype(object)
        out[name] = column.where(column.notna(), MISSING_CATEGORY).astype(str).to_numpy(dtype=object)
    return pd.DataFrame(out, index=frame.index, columns=list(spec.names))


def _boolean_to_float(column: pd.Series, name: str) -> np.ndarray:
    if is_numeric_dtype(column) and not is_bool_dtype(column):
        values = column.to_numpy(dtype=np.float32, na_value=np.nan)  # already 1.0/0.0/NaN (idempotence)
    else:  # bool, nullable boolean, or object holding True/False/None
        values = column.map(_BOOL_TO_FLOAT).to_numpy(dtype=np.float32, na_value=np.nan)
        values[np.isnan(values) & column.notna().to_numpy()] = -1.0  # flag non-booleans for the check below
    bad = ~(np.isnan(values) | (values == 0.0) | (values == 1.0))
    if bad.any():  # e.g. the strings "True"/"False": refuse rather than silently make them NaN
        raise ValueError(f"boolean feature {name!r} has non-boolean values: {column[bad].unique()[:5]!r}")
    return values


def build_pipeline(model_type: str, spec: FeatureSpec, seed: int = 0) -> Pipeline:
    """An unfitted pipeline with the default hyperparameters of ``model_type``."""
    numeric: Pipeline | SimpleImputer
    if model_type == "baseline":
        # The course forest with bounded trees: on the real months ROC-AUC 0.830 -> 0.833 aligned and
        # 0.618 -> 0.631 at label horizon 1 (docs/benchmarks.md), nodes 576,560 -> <= 299,700.
        clf: Any = RandomForestClassifier(
            n_estimators=300,
            random_state=seed,
            class_weight="balanced",
            max_features="sqrt",
            max_leaf_nodes=FOREST_MAX_LEAF_NODES,
        )
        numeric = SimpleImputer(strategy="median")
    elif model_type == "gbm":
        # Histogram boosting: its cost grows linearly with the rows and its size not at all. skl2onnx
        # 1.20 needs a one-line fix to convert it (serving/fast_model.py). No early stopping: the
        # same number of trees at every size, and no internal validation split to depend on.
        clf = HistGradientBoostingClassifier(
            learning_rate=0.05,
            max_iter=200,
            max_leaf_nodes=7,
            min_samples_leaf=20,
            early_stopping=False,
            random_state=seed,
        )
        numeric = SimpleImputer(strategy="median")
    elif model_type == "logreg":
        clf = LogisticRegression(C=1.0, max_iter=5000, random_state=seed)
        # Yeo-Johnson (+ standardising) tames the skewed tenure / totals; beat a plain StandardScaler
        # by ~0.004 CV ROC-AUC here, and converts to ONNX.
        numeric = Pipeline([("impute", SimpleImputer(strategy="median")), ("scale", PowerTransformer())])
    else:
        raise ValueError(f"unknown model type {model_type!r}; known: {list(MODEL_TYPES)}")
    preprocess = ColumnTransformer(
        [
            ("numeric", numeric, list(spec.numeric)),
            ("boolean", SimpleImputer(strategy="constant", fill_value=_BOOL_MISSING), list(spec.boolean)),
            ("categorical", OneHotEncoder(handle_unknown="ignore"), list(spec.categorical)),
        ],
        remainder="drop",
        sparse_threshold=0.0,  # dense: every classifier and the ONNX converter take it
    )
    return Pipeline([("preprocess", preprocess), ("clf", clf)])


def _for_rows(pipeline: Pipeline, rows: int, n_jobs: int | None) -> Pipeline:
    """``pipeline`` set up to be fitted on ``rows`` rows: the forest's bootstrap size (at most
    :data:`FOREST_MAX_SAMPLES`, scikit-learn's default below it) and its threads."""
    if isinstance(pipeline.named_steps["clf"], RandomForestClassifier):
        pipeline.set_params(
            clf__max_samples=FOREST_MAX_SAMPLES if rows > FOREST_MAX_SAMPLES else None, clf__n_jobs=n_jobs
        )
    return pipeline


class _RateColumn(ProgressColumn):
    """Rows per second of a finished stage (a stage reports its rows when it ends)."""

    def render(self, task: Task) -> Text:
        if not task.finished or not task.elapsed or not task.fields.get("per_row"):
            return Text("")
        return Text(f"{task.completed / task.elapsed:,.0f} rows/s", style="progress.data.speed")


class StageProgress:
    """One rich line per training stage: what it does, its rows, its rate once done, elapsed time.

    Scikit-learn reports no progress from inside a fit, so a stage shows a spinner while it runs.
    Disabled, it only records each stage's seconds (``seconds``).
    """

    def __init__(self, enabled: bool = False, label: str = "train") -> None:
        self.seconds: dict[str, float] = {}
        self._progress = Progress(
            SpinnerColumn(finished_text="[green]✓"),
            TextColumn(f"[bold]{label}[/] {{task.description}}"),
            TextColumn("{task.fields[rows]}"),
            _RateColumn(),
            TimeElapsedColumn(),
            disable=not enabled,
        )

    def __enter__(self) -> StageProgress:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    @contextmanager
    def stage(self, key: str, description: str, rows: int | None = None) -> Iterator[None]:
        """Times the block as ``seconds[key]``; ``rows`` (None: not a per-row stage) gives the rate."""
        shown = "" if rows is None else f"{rows:>10,} rows"
        task = self._progress.add_task(description, total=rows or 1, rows=shown, per_row=rows is not None)
        started = time.perf_counter()
        yield
        self.seconds[key] = time.perf_counter() - started
        self._progress.update(task, completed=rows or 1)


@dataclass
class FittedModel:
    """A fitted pipeline plus what was chosen on the training users' cross-validation."""

    pipeline: Pipeline
    threshold: float  # predict churn when P(churn) >= threshold; best cross-validated F1
    params: dict[str, Any]  # the chosen grid point ({} for the untuned baseline)
    cv_score: float  # mean fold ROC-AUC, training users only
    cv_score_std: float = math.nan
    oof_f1: float = math.nan  # mean fold F1 at ``threshold`` (TunedThresholdClassifierCV.best_score_)
    model_type: str = ""
    # None for a model rebuilt from a registry: its frames must then already be model input.
    spec: FeatureSpec | None = None
    cv_results: list[dict[str, Any]] = field(default_factory=list)  # every grid point's fold scores
    cv_rows: int = 0  # rows of the stratified sample cross-validation ran on
    cv_folds: int = 0
    seconds: dict[str, float] = field(default_factory=dict)  # cv_search, cv_threshold, fit

    def predict_proba(self, frame: pd.DataFrame) -> np.ndarray:
        """P(churn=1) per row of a Feast-shaped frame (or of a ``to_model_input`` frame)."""
        X = frame if self.spec is None else to_model_input(frame, self.spec)
        return self.pipeline.predict_proba(X)[:, 1]

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        return self.predict_proba(frame) >= self.threshold


def _as_labels(y: Iterable[Any]) -> np.ndarray:
    labels = np.asarray(y)
    try:
        ints = labels.astype(np.int64)
    except (TypeError, ValueError):  # None / pd.NA
        ints = None
    if ints is None or not np.array_equal(ints, labels) or not np.isin(ints, [0, 1]).all():
        raise ValueError("labels must be 0/1 or booleans, without missing values")
    return ints  # classes_ == [0, 1]: column 1 is P(churn) in scikit-learn and ONNX


def cv_sample(labels: np.ndarray, max_rows: int | None, seed: int) -> np.ndarray:
    """Sorted positions of at most ``max_rows`` rows, stratified on the label and drawn with the seed;
    every position when there are no more rows than that."""
    n = len(labels)
    if max_rows is None or n <= max_rows:
        return np.arange(n)
    picked, _ = train_test_split(np.arange(n), train_size=max_rows, stratify=labels, random_state=seed)
    return np.sort(picked)


def fit_model(
    model_type: str,
    X: pd.DataFrame,
    y: Iterable[Any],
    spec: FeatureSpec,
    seed: int = 0,
    *,
    param_grid: Mapping[str, Sequence[Any]] | None = None,
    cv_folds: int = CV_FOLDS,
    cv_sample_rows: int | None = CV_SAMPLE_ROWS,
    n_jobs: int = -1,
    progress: StageProgress | None = None,
) -> FittedModel:
    """Choose hyperparameters (CV ROC-AUC) and the F1 threshold (CV), then refit on all of X.

    ``X`` is the Feast-shaped (or already ``to_model_input``) frame of the TRAINING users only; ``y``
    (0/1 or bool) aligns with it by position. Both searches run on the same folds of a stratified
    sample of at most ``cv_sample_rows`` rows (None: all). ``param_grid`` overrides
    :data:`PARAM_GRIDS` (pipeline parameter names). Deterministic for a seed.
    """
    X = to_model_input(X, spec).reset_index(drop=True)
    labels = _as_labels(y)
    if len(labels) != len(X):
        raise ValueError(f"{len(X)} rows but {len(labels)} labels")
    stages = progress or StageProgress()
    pipeline = build_pipeline(model_type, spec, seed)
    grid = {k: list(v) for k, v in (PARAM_GRIDS[model_type] if param_grid is None else param_grid).items()}

    sample = cv_sample(labels, cv_sample_rows, seed)
    X_cv, y_cv = X.iloc[sample].reset_index(drop=True), labels[sample]
    folds = list(
        StratifiedKFold(cv_folds, shuffle=True, random_state=seed).split(np.zeros(len(sample)), y_cv)
    )
    fold_rows = min(len(train) for train, _ in folds)
    inner_jobs, outer_jobs = (n_jobs, None) if model_type in _MULTITHREADED else (None, n_jobs)
    candidates = math.prod(len(v) for v in grid.values())

    with stages.stage(
        "cv_search", f"{model_type}: grid search, {candidates} x {cv_folds} folds", len(sample)
    ):
        search = GridSearchCV(
            _for_rows(clone(pipeline), fold_rows, inner_jobs),
            grid,
            scoring="roc_auc",
            cv=folds,
            refit=False,
            n_jobs=outer_jobs,
            error_score="raise",
        ).fit(X_cv, y_cv)
    table = search.cv_results_
    results = [
        {
            "params": dict(table["params"][i]),
            "fold_roc_auc": [float(table[f"split{k}_test_score"][i]) for k in range(cv_folds)],
            "mean": float(table["mean_test_score"][i]),
        }
        for i in range(len(table["params"]))
    ]
    best = results[int(np.argmax([r["mean"] for r in results]))]  # first of equals: grid order breaks ties

    with stages.stage("cv_threshold", f"{model_type}: F1 threshold, {cv_folds} folds", len(sample)):
        # Refits on the sample too (scikit-learn refits when there are several folds): a bounded cost.
        tuned = TunedThresholdClassifierCV(
            _for_rows(clone(pipeline).set_params(**best["params"]), fold_rows, inner_jobs),
            scoring="f1",
            cv=folds,
            refit=True,
            n_jobs=outer_jobs,
        ).fit(X_cv, y_cv)

    with stages.stage("fit", f"{model_type}: fit on every training row", len(X)):
        final = _for_rows(clone(pipeline).set_params(**best["params"]), len(X), inner_jobs).fit(X, labels)
    if isinstance(final.named_steps["clf"], RandomForestClassifier):
        # Trees are seeded up front, so n_jobs changes speed only. Reset: at serving time a single row
        # would pay joblib's dispatch cost.
        final.set_params(clf__n_jobs=None)
    return FittedModel(
        pipeline=final,
        threshold=float(tuned.best_threshold_),
        params=best["params"],
        cv_score=best["mean"],
        cv_score_std=float(np.std(best["fold_roc_auc"])),
        oof_f1=float(tuned.best_score_),
        model_type=model_type,
        spec=spec,
        cv_results=results,
        cv_rows=len(sample),
        cv_folds=cv_folds,
        seconds={k: stages.seconds[k] for k in ("cv_search", "cv_threshold", "fit")},
    )


def evaluate(
    fitted: FittedModel, X: pd.DataFrame, y: Iterable[Any], *, proba: np.ndarray | None = None
) -> dict[str, float]:
    """Threshold-free (roc_auc, pr_auc) and at-threshold metrics on rows the model never saw.

    ``proba``: the model's P(churn=1) on ``X`` when the caller already has it.
    """
    labels = _as_labels(y)
    proba = fitted.predict_proba(X) if proba is None else np.asarray(proba)
    if len(proba) != len(labels):
        raise ValueError(f"{len(proba)} probabilities but {len(labels)} labels")
    predicted = proba >= fitted.threshold
    return {
        "roc_auc": float(roc_auc_score(labels, proba)),
        "pr_auc": float(average_precision_score(labels, proba)),
        "f1": float(f1_score(labels, predicted, zero_division=0)),
        "precision": float(precision_score(labels, predicted, zero_division=0)),
        "recall": float(recall_score(labels, predicted, zero_division=0)),
        "accuracy": float(accuracy_score(labels, predicted)),
        "threshold": float(fitted.threshold),
        "n_rows": float(len(labels)),
        "positive_rate": float(labels.mean()),
    }


def holdout_mask(user_ids: Iterable[str], fraction: float | None = None) -> np.ndarray:
    """True for held-out users: the same users in every month, whatever the row order or process.

    blake2b of the id (not ``hash()``, salted per process) mapped to a uniform number in [0, 1).
    ``fraction`` defaults to ``Settings.holdout_fraction`` (0.25). ~1 s per million ids.
    """
    if fraction is None:
        from streamflow.settings import get_settings

        fraction = get_settings().holdout_fraction
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    cut = fraction * 2.0**64
    blake2b = hashlib.blake2b
    return np.fromiter(
        (int.from_bytes(blake2b(str(uid).encode(), digest_size=8).digest(), "big") < cut for uid in user_ids),
        dtype=bool,
    )
