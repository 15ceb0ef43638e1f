"""Model pipelines, hyperparameter selection and evaluation.

Every model is one scikit-learn ``Pipeline`` (preprocessing + classifier) over the columns of a
:class:`~streamflow.features.definitions.FeatureSpec`, fed by :func:`to_model_input` at training
AND serving time. Missing values are imputed inside the pipeline: never NaN into a forest (skl2onnx
did not finish converting a NaN-trained forest, DESIGN.md), and ONNX conversion stays exact.

Selection is honest: hyperparameters (ROC-AUC) and the decision threshold (F1) are chosen by
stratified K-fold cross-validation on the training users only; hold-out users (:func:`holdout_mask`)
are scored once by :func:`evaluate`, never tuned on.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import product
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from joblib import Parallel, delayed
from pandas.api.types import is_bool_dtype, is_numeric_dtype
from sklearn.base import clone
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import GradientBoostingClassifier, RandomForestClassifier
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    f1_score,
    precision_recall_curve,
    precision_score,
    recall_score,
    roc_auc_score,
)
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, PowerTransformer

if TYPE_CHECKING:  # Feast is slow to import; the model code only needs the spec's column groups.
    from streamflow.features.definitions import FeatureSpec

MODEL_TYPES: tuple[str, ...] = ("baseline", "gbm", "logreg")

# A categorical value the producer left empty. Not a real category, so an unseen one: the one-hot
# encoder ignores it (all zeros). Same sentinel in the ONNX fast path, which cannot take None.
MISSING_CATEGORY = "__missing__"

# Boolean columns hold True/False/None (None = no internet, hence no streaming plan).
_BOOL_TO_FLOAT: dict[Any, float] = {True: 1.0, False: 0.0}
# Boolean NaN becomes -1 inside the pipeline: "no internet" stays distinct from False.
_BOOL_MISSING = -1.0

# Small grids (keys are Pipeline parameter names): each finishes in well under a minute on 2 cores.
PARAM_GRIDS: dict[str, dict[str, list[Any]]] = {
    "baseline": {},  # the course model, deliberately untuned
    "gbm": {"clf__learning_rate": [0.05, 0.1], "clf__max_depth": [2, 3]},
    "logreg": {"clf__C": [0.01, 0.1, 1.0, 10.0]},
}
CV_FOLDS = 5


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
        clf: Any = RandomForestClassifier(
            n_estimators=300, random_state=seed, class_weight="balanced", max_features="sqrt"
        )
        numeric = SimpleImputer(strategy="median")
    elif model_type == "gbm":
        # HistGradientBoosting would be faster, but skl2onnx 1.20 fails to convert it with scikit-learn
        # 1.9 (uint32 node ids); the classic GradientBoosting converts and matches within 3e-7.
        clf = GradientBoostingClassifier(
            n_estimators=150,
            learning_rate=0.05,
            max_depth=2,
            subsample=0.8,
            min_samples_leaf=20,
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


@dataclass
class FittedModel:
    """A fitted pipeline plus what was chosen on the training users' cross-validation."""

    pipeline: Pipeline
    threshold: float  # predict churn when P(churn) >= threshold; max out-of-fold F1
    params: dict[str, Any]  # the chosen grid point ({} for the untuned baseline)
    cv_score: float  # mean fold ROC-AUC, training users only
    cv_score_std: float = math.nan
    oof_f1: float = math.nan  # out-of-fold F1 at ``threshold``
    model_type: str = ""
    # None for a model rebuilt from a registry: its frames must then already be model input.
    spec: FeatureSpec | None = None
    cv_results: list[dict[str, Any]] = field(default_factory=list)  # every grid point's fold scores

    def predict_proba(self, frame: pd.DataFrame) -> np.ndarray:
        """P(churn=1) per row of a Feast-shaped frame (or of a ``to_model_input`` frame)."""
        X = frame if self.spec is None else to_model_input(frame, self.spec)
        return self.pipeline.predict_proba(X)[:, 1]

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        return self.predict_proba(frame) >= self.threshold


def _fit_fold(
    pipeline: Pipeline, X: pd.DataFrame, y: np.ndarray, train: np.ndarray, test: np.ndarray
) -> np.ndarray:
    model = clone(pipeline).fit(X.iloc[train], y[train])
    return model.predict_proba(X.iloc[test])[:, 1]


def _as_labels(y: Iterable[Any]) -> np.ndarray:
    labels = np.asarray(y)
    try:
        ints = labels.astype(np.int64)
    except (TypeError, ValueError):  # None / pd.NA
        ints = None
    if ints is None or not np.array_equal(ints, labels) or not np.isin(ints, [0, 1]).all():
        raise ValueError("labels must be 0/1 or booleans, without missing values")
    return ints  # classes_ == [0, 1]: column 1 is P(churn) in scikit-learn and ONNX


def best_f1_threshold(y: np.ndarray, proba: np.ndarray) -> tuple[float, float]:
    """(threshold, F1) maximising F1 of ``proba >= threshold``."""
    precision, recall, thresholds = precision_recall_curve(y, proba)
    # The curve's last point (recall 0) has no threshold.
    f1 = 2 * precision[:-1] * recall[:-1] / np.maximum(precision[:-1] + recall[:-1], 1e-12)
    best = int(np.argmax(f1))
    # Midway to the next lower score: same decisions on these rows, but not on a knife edge that a
    # float32 rounding difference (ONNX) could flip.
    lower = thresholds[best - 1] if best > 0 else 0.0
    return float((thresholds[best] + lower) / 2), float(f1[best])


def fit_model(
    model_type: str,
    X: pd.DataFrame,
    y: Iterable[Any],
    spec: FeatureSpec,
    seed: int = 0,
    *,
    param_grid: Mapping[str, Sequence[Any]] | None = None,
    cv_folds: int = CV_FOLDS,
    n_jobs: int = -1,
) -> FittedModel:
    """Choose hyperparameters (CV ROC-AUC) and the F1 threshold (out-of-fold), then refit on all of X.

    ``X`` is the Feast-shaped (or already ``to_model_input``) frame of the TRAINING users only; ``y``
    (0/1 or bool) aligns with it by position. Folds run in parallel over ``n_jobs`` processes.
    ``param_grid`` overrides :data:`PARAM_GRIDS` (pipeline parameter names). Deterministic for a seed.
    """
    X = to_model_input(X, spec).reset_index(drop=True)
    labels = _as_labels(y)
    if len(labels) != len(X):
        raise ValueError(f"{len(X)} rows but {len(labels)} labels")
    pipeline = build_pipeline(model_type, spec, seed)
    grid = dict(PARAM_GRIDS[model_type] if param_grid is None else param_grid)
    candidates = [dict(zip(grid, values, strict=True)) for values in product(*grid.values())] or [{}]

    folds = list(StratifiedKFold(cv_folds, shuffle=True, random_state=seed).split(X, labels))
    tasks = [(params, fold) for params in candidates for fold in folds]
    predictions = Parallel(n_jobs=n_jobs)(
        delayed(_fit_fold)(clone(pipeline).set_params(**params), X, labels, train, test)
        for params, (train, test) in tasks
    )

    results = []
    for i, params in enumerate(candidates):
        oof = np.empty(len(labels))
        scores = []
        for (_, test), proba in zip(folds, predictions[i * cv_folds : (i + 1) * cv_folds], strict=True):
            oof[test] = proba
            scores.append(float(roc_auc_score(labels[test], proba)))
        results.append({"params": params, "fold_roc_auc": scores, "mean": float(np.mean(scores)), "oof": oof})
    best = max(results, key=lambda r: r["mean"])  # first of equals: grid order breaks ties
    threshold, oof_f1 = best_f1_threshold(labels, best["oof"])

    final = clone(pipeline).set_params(**best["params"])
    forest = isinstance(final.named_steps["clf"], RandomForestClassifier)
    if forest:
        # Trees are seeded up front, so n_jobs changes speed only. Reset afterwards: at serving time a
        # single row would pay joblib's dispatch cost.
        final.set_params(clf__n_jobs=n_jobs)
    final.fit(X, labels)
    if forest:
        final.set_params(clf__n_jobs=None)
    return FittedModel(
        pipeline=final,
        threshold=threshold,
        params=best["params"],
        cv_score=best["mean"],
        cv_score_std=float(np.std(best["fold_roc_auc"])),
        oof_f1=oof_f1,
        model_type=model_type,
        spec=spec,
        cv_results=[{k: v for k, v in r.items() if k != "oof"} for r in results],
    )


def evaluate(fitted: FittedModel, X: pd.DataFrame, y: Iterable[Any]) -> dict[str, float]:
    """Threshold-free (roc_auc, pr_auc) and at-threshold metrics on rows the model never saw."""
    labels = _as_labels(y)
    proba = fitted.predict_proba(X)
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


def holdout_mask(user_ids: Iterable[str], fraction: float = 0.25) -> np.ndarray:
    """True for held-out users: the same users in every month, whatever the row order or process.

    blake2b of the id (not ``hash()``, salted per process) mapped to a uniform number in [0, 1).
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    cut = fraction * 2.0**64
    return np.fromiter(
        (
            int.from_bytes(hashlib.blake2b(str(uid).encode(), digest_size=8).digest(), "big") < cut
            for uid in user_ids
        ),
        dtype=bool,
    )
