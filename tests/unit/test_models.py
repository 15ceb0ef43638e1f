"""Model pipelines, selection and the hold-out split, on the real month_000 export."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import f1_score

from streamflow.features.definitions import feature_spec
from streamflow.training.models import (
    MISSING_CATEGORY,
    PARAM_GRIDS,
    FittedModel,
    best_f1_threshold,
    evaluate,
    fit_model,
    holdout_mask,
    to_model_input,
)
from tests.unit.conftest import SEED, fit, load_month

METRICS = {"roc_auc", "pr_auc", "f1", "precision", "recall", "accuracy"}


def _report(
    capsys: pytest.CaptureFixture[str], name: str, fitted: FittedModel, metrics: dict[str, float]
) -> None:
    with capsys.disabled():
        shown = {k: round(metrics[k], 4) for k in (*sorted(METRICS), "threshold")}
        print(
            f"\n[{name}] params={fitted.params} cv_roc_auc={fitted.cv_score:.4f}±{fitted.cv_score_std:.4f} "
            f"oof_f1={fitted.oof_f1:.3f} hold-out={shown}"
        )


# --- hold-out split ---------------------------------------------------------------------------------


def test_holdout_is_a_quarter_and_deterministic(month0: pd.DataFrame) -> None:
    ids = month0["user_id"]
    mask = holdout_mask(ids)
    assert mask.dtype == bool and mask.shape == (len(ids),)
    assert 0.23 < mask.mean() < 0.27
    assert np.array_equal(mask, holdout_mask(ids))
    assert np.array_equal(mask, holdout_mask(list(ids)))  # any iterable of ids
    # Row order does not matter: each user keeps its assignment.
    shuffled = ids.sample(frac=1.0, random_state=7)
    assert np.array_equal(holdout_mask(shuffled), mask[shuffled.index.to_numpy()])
    # The labels are not skewed by the split.
    churn = month0["churn_label"]
    assert abs(churn[mask].mean() - churn[~mask].mean()) < 0.03


def test_holdout_independent_of_python_hash_seed(month0: pd.DataFrame) -> None:
    ids = month0["user_id"].tolist()
    expected = hashlib.sha256(holdout_mask(ids).tobytes()).hexdigest()
    code = (
        "import hashlib, sys; from streamflow.training.models import holdout_mask; "
        "ids = sys.stdin.read().split(); print(hashlib.sha256(holdout_mask(ids).tobytes()).hexdigest())"
    )
    hash_seed = "1" if os.environ.get("PYTHONHASHSEED") == "0" else "0"  # surely not this process's seed
    out = subprocess.run(
        [sys.executable, "-c", code],
        input="\n".join(ids),
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONHASHSEED": hash_seed},
    )
    assert out.stdout.strip() == expected


def test_holdout_same_users_in_every_month(month0: pd.DataFrame) -> None:
    month1 = load_month("month_001").sample(frac=1.0, random_state=3)  # different order too
    held0 = set(month0["user_id"][holdout_mask(month0["user_id"])])
    held1 = set(month1["user_id"][holdout_mask(month1["user_id"])])
    assert held0 == held1


def test_holdout_fraction_bounds() -> None:
    ids = [f"u{i}" for i in range(1000)]
    assert not holdout_mask(ids, 0.0).any()
    assert holdout_mask(ids, 1.0).all()
    assert 0.05 < holdout_mask(ids, 0.1).mean() < 0.15
    # Growing the fraction only adds users.
    assert not (holdout_mask(ids, 0.1) & ~holdout_mask(ids, 0.25)).any()
    with pytest.raises(ValueError, match="fraction"):
        holdout_mask(ids, 1.5)


# --- model input ------------------------------------------------------------------------------------


def test_to_model_input_types_and_missing_values(month0: pd.DataFrame) -> None:
    spec = feature_spec("churn_v2")
    X = to_model_input(month0, spec)
    assert list(X.columns) == list(spec.names)
    assert X.index.equals(month0.index)
    for name in (*spec.numeric, *spec.boolean):
        assert X[name].dtype == np.float32, name
    for name in spec.categorical:
        assert X[name].dtype == object and X[name].map(type).eq(str).all(), name
    assert not X[list(spec.numeric)].isna().any().any()

    no_internet = (month0["net_service"] == "No").to_numpy()
    assert no_internet.sum() == 1526
    for name in ("plan_stream_tv", "plan_stream_movies"):
        assert month0[name][no_internet].isna().all()  # None in the source...
        assert X[name][no_internet].isna().all()  # ...NaN for the model, never True
        assert set(X[name][~no_internet].unique()) == {0.0, 1.0}
        expected = month0[name][~no_internet].astype(bool).to_numpy(dtype=np.float32)
        assert np.array_equal(X[name][~no_internet].to_numpy(), expected)

    # Idempotent: training code may hand over an already converted frame.
    pd.testing.assert_frame_equal(to_model_input(X, spec), X)


def test_to_model_input_edge_cases() -> None:
    spec = feature_spec("churn_v1")
    row = {name: 1 for name in spec.numeric} | {name: None for name in spec.boolean} | {"net_service": None}
    frame = pd.DataFrame([row, row])
    frame["months_active"] = pd.array([3, None], dtype="Int64")  # nullable ints (e.g. from Arrow)
    frame["paperless_billing"] = pd.array([True, None], dtype="boolean")
    X = to_model_input(frame, spec)
    assert X["months_active"].tolist()[0] == 3.0 and np.isnan(X["months_active"].iloc[1])
    assert X["paperless_billing"].iloc[0] == 1.0 and np.isnan(X["paperless_billing"].iloc[1])
    assert (X["net_service"] == MISSING_CATEGORY).all()

    with pytest.raises(KeyError, match="skips_7d"):
        to_model_input(frame.drop(columns="skips_7d"), spec)
    frame["plan_stream_tv"] = ["True", "False"]  # strings are not booleans: refuse, don't guess
    with pytest.raises(ValueError, match="plan_stream_tv"):
        to_model_input(frame, spec)


def test_classifier_never_sees_nan_and_no_internet_stays_distinct(
    baseline_v1: FittedModel, holdout_frame: pd.DataFrame
) -> None:
    spec = baseline_v1.spec
    assert spec is not None
    X = to_model_input(holdout_frame, spec)
    encoded = baseline_v1.pipeline[:-1].transform(X)
    assert not np.isnan(encoded).any()
    # The boolean block follows the numeric one: no-internet users are -1, not False (0).
    tv = len(spec.numeric) + spec.boolean.index("plan_stream_tv")
    no_internet = (holdout_frame["net_service"] == "No").to_numpy()
    assert (encoded[no_internet, tv] == -1.0).all()
    assert set(np.unique(encoded[~no_internet, tv])) == {0.0, 1.0}


# --- fitting and evaluation -------------------------------------------------------------------------


def test_baseline_v1_beats_course_bar(
    baseline_v1: FittedModel, holdout_frame: pd.DataFrame, capsys: pytest.CaptureFixture[str]
) -> None:
    metrics = evaluate(baseline_v1, holdout_frame, holdout_frame["churn_label"])
    _report(capsys, "baseline churn_v1", baseline_v1, metrics)
    assert baseline_v1.params == {} and baseline_v1.model_type == "baseline"
    clf = baseline_v1.pipeline.named_steps["clf"]
    settings = (clf.n_estimators, clf.class_weight, clf.max_features, clf.random_state, clf.n_jobs)
    assert settings == (300, "balanced", "sqrt", SEED, None)
    assert metrics["roc_auc"] > 0.75


def test_candidate_v2_reaches_target(
    logreg_v2: FittedModel, holdout_frame: pd.DataFrame, capsys: pytest.CaptureFixture[str]
) -> None:
    metrics = evaluate(logreg_v2, holdout_frame, holdout_frame["churn_label"])
    _report(capsys, "logreg churn_v2", logreg_v2, metrics)
    assert logreg_v2.params["clf__C"] in PARAM_GRIDS["logreg"]["clf__C"]
    assert len(logreg_v2.cv_results) == len(PARAM_GRIDS["logreg"]["clf__C"])
    assert logreg_v2.cv_score == max(r["mean"] for r in logreg_v2.cv_results)
    assert metrics["roc_auc"] >= 0.84
    assert metrics["f1"] > 0.58


def test_gbm_v2_reaches_target(
    gbm_v2: FittedModel, holdout_frame: pd.DataFrame, capsys: pytest.CaptureFixture[str]
) -> None:
    metrics = evaluate(gbm_v2, holdout_frame, holdout_frame["churn_label"])
    _report(capsys, "gbm churn_v2", gbm_v2, metrics)
    assert metrics["roc_auc"] >= 0.84


def test_evaluate_reports_all_metrics_at_threshold(
    logreg_v2: FittedModel, holdout_frame: pd.DataFrame
) -> None:
    y = holdout_frame["churn_label"]
    metrics = evaluate(logreg_v2, holdout_frame, y)
    assert metrics.keys() >= METRICS | {"threshold"}
    assert all(0.0 <= metrics[k] <= 1.0 for k in METRICS)
    predicted = logreg_v2.predict_proba(holdout_frame) >= logreg_v2.threshold
    assert metrics["f1"] == pytest.approx(f1_score(y, predicted))
    # A model rebuilt from a registry has no spec: it takes model input directly, same numbers.
    spec = feature_spec("churn_v2")
    bare = FittedModel(pipeline=logreg_v2.pipeline, threshold=logreg_v2.threshold, params={}, cv_score=np.nan)
    assert evaluate(bare, to_model_input(holdout_frame, spec), y) == metrics


def test_threshold_maximises_f1() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 500)
    proba = np.clip(0.3 * y + rng.normal(0.35, 0.2, 500), 0, 1)
    threshold, best = best_f1_threshold(y, proba)
    predicted = proba[None, :] >= np.unique(proba)[:, None]  # every possible cut, one per row
    tp = (predicted & (y == 1)).sum(axis=1)
    brute = (2 * tp / (predicted.sum(axis=1) + (y == 1).sum())).max()
    assert best == pytest.approx(brute)
    assert f1_score(y, proba >= threshold) == pytest.approx(brute)
    assert not np.isin(threshold, proba)  # between two scores, not on one


def test_same_seed_same_predictions(
    gbm_v2: FittedModel, train_frame: pd.DataFrame, holdout_frame: pd.DataFrame
) -> None:
    # gbm subsamples rows, so the seed matters (the baseline's forest seed is checked above).
    # Two folds only: the final refit depends on the seed and the (fixed) parameters, not on the CV.
    again = fit("gbm", "churn_v2", train_frame, param_grid={}, cv_folds=2)
    assert np.array_equal(again.predict_proba(holdout_frame), gbm_v2.predict_proba(holdout_frame))
    other = fit("gbm", "churn_v2", train_frame, seed=1, param_grid={}, cv_folds=2)
    assert not np.array_equal(other.predict_proba(holdout_frame), gbm_v2.predict_proba(holdout_frame))


def test_fit_model_rejects_bad_input(train_frame: pd.DataFrame) -> None:
    spec = feature_spec("churn_v1")
    with pytest.raises(ValueError, match="unknown model type"):
        fit_model("svm", train_frame, train_frame["churn_label"], spec)
    labels = train_frame["churn_label"].astype(object)
    labels.iloc[0] = None
    with pytest.raises(ValueError, match="labels"):
        fit_model("logreg", train_frame, labels, spec)
    with pytest.raises(ValueError, match="labels"):
        fit_model("logreg", train_frame, train_frame["churn_label"][:-1], spec)
