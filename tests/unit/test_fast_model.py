"""The ONNX fast path reproduces the scikit-learn pipelines, batch and single row (latency: bench/bench_train.py)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import onnx
import pandas as pd
import pytest

from streamflow.features.definitions import feature_spec
from streamflow.serving.fast_model import FastPathMismatchError, OnnxPredictor, to_onnx, verify
from streamflow.training.models import FittedModel, to_model_input

MODELS = ["baseline_v1", "logreg_v2", "gbm_v2"]


@pytest.fixture(scope="module")
def converted(
    request: pytest.FixtureRequest, source: str
) -> dict[str, tuple[FittedModel, bytes, OnnxPredictor]]:
    """Each fitted model with its ONNX bytes and predictor (converted once per data source)."""
    out = {}
    for name in MODELS:
        fitted: FittedModel = request.getfixturevalue(name)
        assert fitted.spec is not None
        onnx_bytes = to_onnx(fitted.pipeline, fitted.spec)
        out[name] = (fitted, onnx_bytes, OnnxPredictor(onnx_bytes, fitted.spec))
    return out


def _plain(value: object) -> object:
    if hasattr(value, "item"):  # numpy scalar -> Python scalar
        value = value.item()
    return None if isinstance(value, float) and np.isnan(value) else value


def feast_rows(frame: pd.DataFrame, names: tuple[str, ...]) -> list[dict]:
    """Rows as Feast's online store returns them: plain Python values, None where missing."""
    records = frame[list(names)].astype(object).to_dict("records")
    return [{name: _plain(value) for name, value in record.items()} for record in records]


@pytest.mark.parametrize("name", MODELS)
def test_onnx_equals_sklearn_on_holdout(
    name: str, converted: dict, holdout_frame: pd.DataFrame, capsys: pytest.CaptureFixture[str]
) -> None:
    fitted, _, predictor = converted[name]
    no_internet = holdout_frame["plan_stream_tv"].isna().to_numpy()
    assert no_internet.sum() > 200  # the None plan_stream users are part of the comparison

    expected = fitted.pipeline.predict_proba(to_model_input(holdout_frame, fitted.spec))[:, 1]
    got = predictor.predict_proba(holdout_frame)
    diff = np.abs(got - expected)
    assert diff.max() <= 1e-6, (name, diff.max())
    assert diff[no_internet].max() <= 1e-6
    assert verify(fitted.pipeline, predictor, holdout_frame, tol=1e-6) == pytest.approx(diff.max())
    with capsys.disabled():
        print(f"\n[{name}] ONNX vs scikit-learn on {len(diff)} hold-out rows: max |diff| = {diff.max():.2e}")


@pytest.mark.parametrize("name", MODELS)
def test_predict_one_from_feast_dict(name: str, converted: dict, holdout_frame: pd.DataFrame) -> None:
    fitted, _, predictor = converted[name]
    rows = feast_rows(holdout_frame.head(200), fitted.spec.names)
    no_internet = next(r for r in rows if r["plan_stream_tv"] is None)
    assert no_internet["plan_stream_movies"] is None and isinstance(rows[0]["paperless_billing"], bool)

    single = np.array([predictor.predict_one(row) for row in rows])
    assert all(isinstance(p, float) for p in single)
    # Same graph, same inputs; a batched matrix product may round differently in the last float32 bit.
    np.testing.assert_allclose(single, predictor.predict_proba(rows), rtol=0, atol=1e-6)
    expected = fitted.predict_proba(holdout_frame.head(200))
    assert np.abs(single - expected).max() <= 1e-6


def test_predict_proba_accepts_frames_and_records(converted: dict, holdout_frame: pd.DataFrame) -> None:
    fitted, _, predictor = converted["logreg_v2"]
    head = holdout_frame.head(50)
    np.testing.assert_array_equal(
        predictor.predict_proba(head), predictor.predict_proba(feast_rows(head, fitted.spec.names))
    )
    assert predictor.predict_proba([]).shape == (0,)


def test_predict_one_rejects_incomplete_or_wrongly_typed_rows(
    converted: dict, holdout_frame: pd.DataFrame
) -> None:
    fitted, _, predictor = converted["gbm_v2"]
    row = feast_rows(holdout_frame.head(1), fitted.spec.names)[0]
    with pytest.raises(KeyError, match="contract_type"):
        predictor.predict_one({k: v for k, v in row.items() if k != "contract_type"})
    with pytest.raises(ValueError):
        predictor.predict_one(row | {"paperless_billing": "True"})
    # An unknown category is ignored by the one-hot encoder, as in scikit-learn.
    odd = row | {"contract_type": "Ten year"}
    assert predictor.predict_one(odd) == pytest.approx(fitted.predict_proba(pd.DataFrame([odd]))[0], abs=1e-6)


def test_predict_one_is_thread_safe(converted: dict, holdout_frame: pd.DataFrame) -> None:
    fitted, _, predictor = converted["gbm_v2"]
    rows = feast_rows(holdout_frame, fitted.spec.names)
    expected = [predictor.predict_one(r) for r in rows]
    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(predictor.predict_one, rows)) == expected


def test_predictor_rejects_another_feature_service(converted: dict) -> None:
    _, onnx_bytes, _ = converted["baseline_v1"]
    with pytest.raises(ValueError, match=r"missing .*contract_type"):
        OnnxPredictor(onnx_bytes, feature_spec("churn_v2"))


def test_verify_raises_on_tampered_model(converted: dict, holdout_frame: pd.DataFrame) -> None:
    fitted, onnx_bytes, _ = converted["gbm_v2"]
    model = onnx.load_from_string(onnx_bytes)
    trees = next(node for node in model.graph.node if node.op_type == "TreeEnsembleClassifier")
    weights = next(attr for attr in trees.attribute if attr.name == "class_weights")
    weights.floats[:] = [w * 1.05 for w in weights.floats]  # a subtly different model
    tampered = OnnxPredictor(model.SerializeToString(), fitted.spec)
    with pytest.raises(FastPathMismatchError, match=r"max \|diff\| = .* > tol") as err:
        verify(fitted.pipeline, tampered, holdout_frame)
    assert err.value.max_abs_diff > 1e-3
    # A pipeline checked against another model's predictor fails the same way.
    _, _, other_predictor = converted["logreg_v2"]
    with pytest.raises(FastPathMismatchError):
        verify(fitted.pipeline, other_predictor, holdout_frame)
