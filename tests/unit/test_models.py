"""Model pipelines, selection and the hold-out split, on a generated month and the real month_000."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import f1_score

from streamflow.data.generate import generate_months
from streamflow.features.definitions import feature_spec
from streamflow.serving.fast_model import to_onnx
from streamflow.settings import Settings
from streamflow.training.models import (
    FOREST_MAX_LEAF_NODES,
    MISSING_CATEGORY,
    MODEL_TYPES,
    PARAM_GRIDS,
    FittedModel,
    cv_sample,
    evaluate,
    fit_model,
    holdout_mask,
    to_model_input,
)
from streamflow.training.train import fit_and_convert
from tests.unit.conftest import SEED, fit, read_month

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


def test_holdout_same_users_in_every_month(month0: pd.DataFrame, months: list) -> None:
    month1 = read_month(months[1]).sample(frac=1.0, random_state=3)  # different order too
    held0 = set(month0["user_id"][holdout_mask(month0["user_id"])])
    held1 = set(month1["user_id"][holdout_mask(month1["user_id"])])
    both = set(month0["user_id"]) & set(month1["user_id"])  # generated months: churners leave, others join
    assert len(both) > 0.6 * len(month0)
    assert held0 & both == held1 & both


def test_holdout_fraction_bounds() -> None:
    ids = [f"u{i}" for i in range(1000)]
    assert not holdout_mask(ids, 0.0).any()
    assert holdout_mask(ids, 1.0).all()
    assert 0.05 < holdout_mask(ids, 0.1).mean() < 0.15
    # Growing the fraction only adds users.
    assert not (holdout_mask(ids, 0.1) & ~holdout_mask(ids, 0.25)).any()
    with pytest.raises(ValueError, match="fraction"):
        holdout_mask(ids, 1.5)
    # The default is the setting (0.25), the one value train_model and monitoring share.
    assert np.array_equal(holdout_mask(ids), holdout_mask(ids, Settings().holdout_fraction))
    assert Settings().holdout_fraction == 0.25


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
    assert no_internet.sum() > 500  # 1,526 in the real month
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
    assert clf.max_leaf_nodes == FOREST_MAX_LEAF_NODES
    assert clf.max_samples is None  # 5,282 training rows: a full-size bootstrap sample per tree
    assert metrics["roc_auc"] > 0.75


def test_candidate_v2_reaches_target(
    logreg_v2: FittedModel,
    holdout_frame: pd.DataFrame,
    source: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    metrics = evaluate(logreg_v2, holdout_frame, holdout_frame["churn_label"])
    _report(capsys, f"logreg churn_v2 ({source})", logreg_v2, metrics)
    assert logreg_v2.params["clf__C"] in PARAM_GRIDS["logreg"]["clf__C"]
    assert len(logreg_v2.cv_results) == len(PARAM_GRIDS["logreg"]["clf__C"])
    assert logreg_v2.cv_score == max(r["mean"] for r in logreg_v2.cv_results)
    assert all(len(r["fold_roc_auc"]) == 5 for r in logreg_v2.cv_results)
    assert metrics["roc_auc"] >= {"real": 0.84, "generated": 0.80}[source]
    assert metrics["f1"] > 0.55


def test_gbm_v2_reaches_target(
    gbm_v2: FittedModel, holdout_frame: pd.DataFrame, source: str, capsys: pytest.CaptureFixture[str]
) -> None:
    metrics = evaluate(gbm_v2, holdout_frame, holdout_frame["churn_label"])
    _report(capsys, f"gbm churn_v2 ({source})", gbm_v2, metrics)
    # 0.8396 on the real month (the classic GradientBoosting it replaced: 0.84).
    assert metrics["roc_auc"] >= {"real": 0.83, "generated": 0.80}[source]


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
    # Probabilities the caller already has give the same metrics.
    assert evaluate(bare, holdout_frame, y, proba=logreg_v2.predict_proba(holdout_frame)) == metrics


def test_threshold_is_the_best_cross_validated_f1(logreg_v2: FittedModel, train_frame: pd.DataFrame) -> None:
    """TunedThresholdClassifierCV's pick: no other cut scores a clearly better mean fold F1 (checked on
    the training users' own out-of-fold probabilities, as the search saw them)."""
    from sklearn.base import clone
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    spec = feature_spec("churn_v2")
    X, y = to_model_input(train_frame, spec), train_frame["churn_label"].to_numpy()
    folds = StratifiedKFold(5, shuffle=True, random_state=SEED)
    pipeline = clone(logreg_v2.pipeline)
    oof = cross_val_predict(pipeline, X, y, cv=folds, method="predict_proba")[:, 1]
    cuts = np.linspace(0.05, 0.95, 91)
    best_f1 = max(f1_score(y, oof >= cut) for cut in cuts)
    assert f1_score(y, oof >= logreg_v2.threshold) >= best_f1 - 0.01
    assert logreg_v2.oof_f1 == pytest.approx(best_f1, abs=0.02)
    assert 0.1 < logreg_v2.threshold < 0.6  # churners are a quarter: F1 wants a cut below 0.5


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_same_seed_same_model(
    model_type: str, train_frame: pd.DataFrame, holdout_frame: pd.DataFrame
) -> None:
    """Same data and seed: the same threshold, scores and predictions, whatever runs in parallel."""
    kwargs = {"param_grid": {}, "cv_folds": 2, "cv_sample_rows": 2_000}
    first = fit(model_type, "churn_v2", train_frame, **kwargs)
    again = fit(model_type, "churn_v2", train_frame, n_jobs=2, **kwargs)
    assert first.threshold == again.threshold and first.cv_score == again.cv_score
    assert np.array_equal(first.predict_proba(holdout_frame), again.predict_proba(holdout_frame))
    if model_type == "baseline":  # the forest's bootstrap samples and feature draws follow the seed
        other = fit(model_type, "churn_v2", train_frame, seed=SEED + 1, **kwargs)
        assert not np.array_equal(other.predict_proba(holdout_frame), first.predict_proba(holdout_frame))


def test_cv_runs_on_a_bounded_stratified_sample(train_frame: pd.DataFrame) -> None:
    y = train_frame["churn_label"].to_numpy()
    sample = cv_sample(y, 1_000, seed=3)
    assert len(sample) == 1_000 and np.all(np.diff(sample) > 0)
    assert abs(y[sample].mean() - y.mean()) < 0.002  # stratified: the churn rate is kept
    assert np.array_equal(sample, cv_sample(y, 1_000, seed=3))
    assert not np.array_equal(sample, cv_sample(y, 1_000, seed=4))
    assert np.array_equal(cv_sample(y, len(y), seed=3), np.arange(len(y)))  # below the cap: every row
    fitted = fit("logreg", "churn_v1", train_frame, cv_sample_rows=1_000, cv_folds=3)
    assert fitted.cv_rows == 1_000 and fitted.cv_folds == 3
    assert set(fitted.seconds) == {"cv_search", "cv_threshold", "fit"}
    # The final model is still fitted on every training row (its scaler saw them all).
    scaler = fitted.pipeline.named_steps["preprocess"].named_transformers_["numeric"]
    assert scaler.named_steps["impute"].n_features_in_ == len(feature_spec("churn_v1").numeric)
    assert fitted.pipeline.named_steps["clf"].n_features_in_ > 0


def test_holdout_never_used_in_tuning(month0: pd.DataFrame) -> None:
    """Scrambling the hold-out users' labels and features changes their metrics, nothing that was chosen."""
    spec = feature_spec("churn_v1")
    settings = Settings(cv_folds=3)
    first = fit_and_convert(month0, spec, "logreg", SEED, settings)
    scrambled = month0.copy()
    held = first.holdout
    rng = np.random.default_rng(0)
    scrambled.loc[held, "churn_label"] = rng.integers(0, 2, held.sum())
    scrambled.loc[held, "monthly_fee"] = rng.uniform(18, 119, held.sum()).round(2)
    second = fit_and_convert(scrambled, spec, "logreg", SEED, settings)
    assert np.array_equal(second.holdout, held)
    assert (second.fitted.params, second.fitted.threshold, second.fitted.cv_score) == (
        first.fitted.params,
        first.fitted.threshold,
        first.fitted.cv_score,
    )
    training_rows = month0[~held]
    assert np.array_equal(
        second.fitted.predict_proba(training_rows), first.fitted.predict_proba(training_rows)
    )
    assert second.metrics["roc_auc"] < first.metrics["roc_auc"] - 0.1  # the hold-out itself did change
    assert first.onnx_max_abs_diff <= 1e-5 and set(first.seconds) >= {"cv_search", "fit", "convert", "verify"}


@pytest.fixture(scope="module")
def growing(tmp_path_factory: pytest.TempPathFactory) -> dict[int, pd.DataFrame]:
    out = tmp_path_factory.mktemp("growing")
    frames = {}
    for users in (20_000, 80_000):
        [(folder, _)] = generate_months(out / str(users), users, 1, seed=5)
        frames[users] = read_month(folder)
    return frames


def _size(fitted: FittedModel) -> int:
    clf = fitted.pipeline.named_steps["clf"]
    if hasattr(clf, "estimators_"):  # forest
        return sum(tree.tree_.node_count for tree in clf.estimators_)
    if hasattr(clf, "_predictors"):  # histogram boosting
        return sum(len(p.nodes) for trees in clf._predictors for p in trees)
    return clf.coef_.size


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_model_size_is_bounded_as_rows_grow(model_type: str, growing: dict[int, pd.DataFrame]) -> None:
    """4x the rows: the same bounded size (the full-depth course forest grew with the rows)."""
    spec = feature_spec("churn_v1")
    sizes, onnx_bytes = {}, {}
    for users, frame in growing.items():
        fitted = fit(model_type, "churn_v1", frame, param_grid={}, cv_folds=2, cv_sample_rows=2_000)
        sizes[users], onnx_bytes[users] = _size(fitted), len(to_onnx(fitted.pipeline, spec))
        if model_type == "baseline":
            clf = fitted.pipeline.named_steps["clf"]
            assert clf.max_samples == (20_000 if len(frame) > 20_000 else None)  # capped at 80k users only
            assert all(tree.get_n_leaves() <= FOREST_MAX_LEAF_NODES for tree in clf.estimators_)
    limit_nodes = {"baseline": 300 * (2 * FOREST_MAX_LEAF_NODES - 1), "gbm": 200 * 13, "logreg": 100}
    limit_bytes = {"baseline": 12_500_000, "gbm": 120_000, "logreg": 10_000}
    assert max(sizes.values()) <= limit_nodes[model_type], sizes
    assert max(onnx_bytes.values()) <= limit_bytes[model_type], onnx_bytes
    assert sizes[80_000] <= 1.1 * sizes[20_000], sizes


# Hold-out ROC-AUC bands of the course forest, seed 42 as train_model uses, with aligned labels and
# with the next month's. Real: 0.8326 and 0.6310, the seed's comparison (full-depth trees: 0.8297
# and 0.6181). Generated: 0.8120 and 0.8146 (its churn is drawn from the features every month, so the
# next month's labels are as predictable).
COURSE_BANDS = {"real": ((0.815, 0.845), (0.60, 0.645)), "generated": ((0.80, 0.83), (0.80, 0.83))}


def test_baseline_stays_in_the_course_band(months: list[Path], source: str) -> None:
    jan, feb = months
    spec = feature_spec("churn_v1")
    settings = Settings()
    aligned = fit_and_convert(read_month(jan), spec, "baseline", 42, settings).metrics["roc_auc"]
    horizon1 = fit_and_convert(read_month(jan, feb), spec, "baseline", 42, settings).metrics["roc_auc"]
    (low, high), (low1, high1) = COURSE_BANDS[source]
    assert low <= aligned <= high, aligned
    assert low1 <= horizon1 <= high1, horizon1


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
