"""Reproducible model files, and the pyfunc flavor that answers like the API (no tracking server)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import skops.io
import yaml
from mlflow.utils.proto_json_utils import dataframe_from_parsed_json

from streamflow.data.generate import generate_months
from streamflow.features.definitions import feature_spec
from streamflow.serving.fast_model import OnnxPredictor, canonical, to_onnx
from streamflow.settings import Settings
from streamflow.training import pyfunc
from streamflow.training.artifacts import canonical_skops, sha256, skops_bytes
from streamflow.training.models import to_model_input
from streamflow.training.train import SHA256_TAGS, Trained, artifact_files, fit_and_convert
from tests.unit.conftest import read_month

SETTINGS = Settings(cv_folds=3)
MODELS = [("baseline", "churn_v1"), ("gbm", "churn_v2"), ("logreg", "churn_v2")]
# MLmodel fields that name one save, not the model.
PER_SAVE = {"model_uuid", "utc_time_created"}


@pytest.fixture(scope="module")
def small_month(tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    [(folder, _)] = generate_months(tmp_path_factory.mktemp("small"), 800, 1, seed=5)
    return read_month(folder)


def _save(folder: Path, trained: Trained, files: dict[str, bytes], frame: pd.DataFrame) -> None:
    spec = trained.fitted.spec
    assert spec is not None
    pyfunc.save_model(
        str(folder),
        pipeline=trained.fitted.pipeline,
        spec=spec,
        threshold=trained.fitted.threshold,
        skops_file=files[pyfunc.SKOPS_FILE],
        pip_requirements=["scikit-learn"],
        input_example=pyfunc.as_online_types(frame.head(5), spec),
    )


def _item(value: np.generic) -> object:
    return value.item()  # numpy scalar -> Python (json.dumps keeps floats exactly)


def _folder(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.mark.parametrize(("model_type", "service"), MODELS)
def test_training_twice_gives_the_same_bytes(
    model_type: str, service: str, small_month: pd.DataFrame, tmp_path: Path
) -> None:
    spec = feature_spec(service)
    runs = []
    for attempt in ("first", "second"):
        trained = fit_and_convert(small_month, spec, model_type, 7, SETTINGS)
        files = artifact_files(trained, small_month, spec)
        _save(tmp_path / attempt, trained, files, small_month)
        runs.append((files, _folder(tmp_path / attempt)))
    (files, folder), (files_again, folder_again) = runs
    assert set(files) == set(SHA256_TAGS)
    for name in files:
        assert files[name] == files_again[name], name
    # The logged model folder too, its skops file being the tagged bytes; MLmodel up to its save id/time.
    assert folder[pyfunc.SKOPS_FILE] == files[pyfunc.SKOPS_FILE]
    meta, meta_again = (yaml.safe_load(f.pop("MLmodel")) for f in (folder, folder_again))
    assert {k: v for k, v in meta.items() if k not in PER_SAVE} == {
        k: v for k, v in meta_again.items() if k not in PER_SAVE
    }
    assert folder == folder_again
    # Still a skops file that loads as the same pipeline.
    data = files[pyfunc.SKOPS_FILE]
    loaded = skops.io.loads(data, trusted=skops.io.get_untrusted_types(data=data))
    frame = to_model_input(small_month, spec)
    np.testing.assert_array_equal(loaded.predict_proba(frame), trained.fitted.pipeline.predict_proba(frame))


_OTHER_PROCESS = """
import json, sys
import pandas as pd
from streamflow.features.definitions import feature_spec
from streamflow.settings import Settings
from streamflow.training.artifacts import sha256
from streamflow.training.train import artifact_files, fit_and_convert
frame, spec = pd.read_pickle(sys.argv[1]), feature_spec("churn_v2")
trained = fit_and_convert(frame, spec, "logreg", 7, Settings(cv_folds=3))
print(json.dumps({k: sha256(v) for k, v in artifact_files(trained, frame, spec).items()}))
"""


def test_another_process_and_hash_seed_give_the_same_bytes(small_month: pd.DataFrame, tmp_path: Path) -> None:
    # id()s, string interning and set order differ between processes; the bytes must not.
    small_month.to_pickle(tmp_path / "frame.pkl")
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    done = subprocess.run(
        [sys.executable, "-c", _OTHER_PROCESS, str(tmp_path / "frame.pkl")],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    spec = feature_spec("churn_v2")
    trained = fit_and_convert(small_month, spec, "logreg", 7, SETTINGS)
    here = {k: sha256(v) for k, v in artifact_files(trained, small_month, spec).items()}
    assert json.loads(done.stdout.strip().splitlines()[-1]) == here


def test_onnx_bytes_do_not_depend_on_the_order_skl2onnx_met_the_opsets(small_month: pd.DataFrame) -> None:
    # Seen in one training in ten: skl2onnx listed ai.onnx.ml before the default domain, so the same
    # pipeline hashed differently and `streamflow reproduce` failed its artifact check.
    import onnx

    spec = feature_spec("churn_v1")
    trained = fit_and_convert(small_month, spec, "logreg", 7, SETTINGS)
    model = onnx.load_from_string(to_onnx(trained.fitted.pipeline, spec))
    assert len(model.opset_import) == 2
    flipped = onnx.ModelProto()
    flipped.CopyFrom(model)
    opsets = list(reversed(flipped.opset_import))
    del flipped.opset_import[:]
    flipped.opset_import.extend(opsets)
    assert flipped.SerializeToString() != model.SerializeToString()
    assert canonical(flipped).SerializeToString() == model.SerializeToString()


def test_canonical_skops_keeps_shared_objects_and_bytes() -> None:
    shared = np.arange(5.0)

    def make() -> dict:
        array = shared.copy()  # a new object each time: a new id() in skops' own output
        return {"a": array, "b": array, "raw": b"\x00payload", "names": ["x", "y"]}

    first, second = skops_bytes(make()), skops_bytes(make())
    assert first == second and skops.io.dumps(make()) != skops.io.dumps(make())
    assert canonical_skops(first) == first  # already canonical
    loaded = skops.io.loads(first, trusted=skops.io.get_untrusted_types(data=first))
    assert loaded["a"] is loaded["b"]  # one object met twice stays one object
    np.testing.assert_array_equal(loaded["a"], shared)
    assert loaded["raw"] == b"\x00payload" and loaded["names"] == ["x", "y"]


def test_pyfunc_takes_feast_types_and_answers_like_the_fast_path(
    small_month: pd.DataFrame, tmp_path: Path
) -> None:
    spec = feature_spec("churn_v1")
    trained = fit_and_convert(small_month, spec, "logreg", 7, SETTINGS)
    _save(tmp_path / "model", trained, artifact_files(trained, small_month, spec), small_month)
    model = mlflow.pyfunc.load_model(str(tmp_path / "model"))
    inputs = {c.name: c.to_dict()["type"] for c in model.metadata.get_input_schema().inputs}
    assert inputs["months_active"] == "long" and inputs["monthly_fee"] == "double"
    assert inputs["plan_stream_tv"] == "any" and inputs["net_service"] == "string"
    assert model.metadata.get_output_schema().input_names() == [pyfunc.PROBABILITY, pyfunc.PREDICTION]

    # As get_online_features gives them: int64, float64, bool (object with None), str.
    rows = small_month[list(spec.names)]
    assert rows["plan_stream_tv"].isna().any() and rows["months_active"].dtype == np.int64
    out = model.predict(rows)
    assert list(out.columns) == [pyfunc.PROBABILITY, pyfunc.PREDICTION]
    assert out[pyfunc.PREDICTION].dtype == np.int64
    fast = OnnxPredictor(trained.onnx_bytes, spec)
    proba = fast.predict_proba(rows).astype(np.float64)
    np.testing.assert_allclose(out[pyfunc.PROBABILITY], proba, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(out[pyfunc.PREDICTION], (proba >= trained.fitted.threshold).astype(int))
    # MLflow's JSON path (mlflow models predict / serve) parses with the signature: None stays None.
    split = rows.astype(object).where(rows.notna(), None).to_dict("split")
    body = json.loads(json.dumps({"columns": split["columns"], "data": split["data"]}, default=_item))
    parsed = dataframe_from_parsed_json(body, "split", model.metadata.get_input_schema())
    pd.testing.assert_frame_equal(model.predict(parsed), out)
    # The decision is the version's threshold, not scikit-learn's 0.5.
    assert trained.fitted.threshold != 0.5
    assert (out[pyfunc.PREDICTION] == (out[pyfunc.PROBABILITY] >= trained.fitted.threshold)).all()
