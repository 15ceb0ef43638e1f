"""One meaning for a registered version: MLflow's loader and CLI answer like the API on the rows Feast's
online store returns, and the version's sha256 tags are the hashes of the files logged."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest

from streamflow.features.config import feature_store
from streamflow.features.definitions import feature_spec
from streamflow.features.materialize import last_materialization, materialize
from streamflow.serving.model_holder import LoadedModel, ModelHolder
from streamflow.training import pyfunc
from streamflow.training.artifacts import sha256
from streamflow.training.tracking import tracking_uri, use_mlflow
from streamflow.training.train import SHA256_TAGS
from tests.integration.conftest import JAN, TrainedStack

ROWS = 300
ALIAS = "pyfunc_check"  # not @production: the registry tests own that alias


@pytest.fixture(scope="module")
def online_rows(trained: TrainedStack) -> pd.DataFrame:
    """churn_v2's features of ROWS users, as ``get_online_features(...).to_df()`` returns them."""
    settings = trained.settings
    if last_materialization(settings) is None:
        materialize(settings, JAN)
    users = [row["user_id"] for row in trained.months.rows("2024-01-31", "users")[:ROWS]]
    store = feature_store(settings)
    response = store.get_online_features(
        features=store.get_feature_service("churn_v2"), entity_rows=[{"user_id": u} for u in users]
    )
    return response.to_df()


@pytest.fixture(scope="module", params=["baseline", "candidate"])
def served(request: pytest.FixtureRequest, trained: TrainedStack) -> Iterator[tuple[int, LoadedModel]]:
    """A version as the API holds it (ONNX fast path + tagged threshold), loaded through an alias of
    its own."""
    version = getattr(trained, request.param).version
    settings = trained.settings.model_copy(update={"production_alias": ALIAS})
    use_mlflow(settings)
    mlflow.MlflowClient().set_registered_model_alias(settings.model_name, ALIAS, str(version))
    holder = ModelHolder(settings)
    assert holder.refresh(), holder.last_error
    assert holder.current is not None
    yield version, holder.current


def _api_answers(model: LoadedModel, rows: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """What /predict answers for each row: predict_one on the row's values, then the threshold."""
    names = list(model.spec.names)
    proba = np.array([model.predictor.predict_one(r) for r in rows[names].to_dict("records")])
    return proba, (proba >= model.threshold).astype(np.int64)


def test_feast_rows_are_in_the_signature_types(online_rows: pd.DataFrame) -> None:
    spec = feature_spec("churn_v2")
    dtypes = online_rows.dtypes
    assert all(dtypes[n] == np.int64 for n in spec.integer)
    assert all(dtypes[n] == np.float64 for n in set(spec.numeric) - set(spec.integer))
    assert online_rows["paperless_billing"].dtype == bool
    assert online_rows["plan_stream_tv"].isna().any()  # no internet: None, not False


def test_pyfunc_load_model_answers_like_the_api(
    trained: TrainedStack, served: tuple[int, LoadedModel], online_rows: pd.DataFrame
) -> None:
    _, model = served
    name = trained.settings.model_name
    use_mlflow(trained.settings)
    loaded = mlflow.pyfunc.load_model(f"models:/{name}@{ALIAS}")
    assert loaded.metadata.get_output_schema().input_names() == [pyfunc.PROBABILITY, pyfunc.PREDICTION]
    rows = online_rows[list(model.spec.names)]
    out = loaded.predict(rows)  # the frame exactly as Feast returned it: float64, int64, bool, str
    proba, decision = _api_answers(model, rows)
    np.testing.assert_allclose(out[pyfunc.PROBABILITY].to_numpy(), proba, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(out[pyfunc.PREDICTION].to_numpy(), decision)
    assert 0 < decision.sum() < len(decision)  # both answers occur: the check means something


def test_mlflow_models_predict_cli_answers_like_the_api(
    trained: TrainedStack, served: tuple[int, LoadedModel], online_rows: pd.DataFrame, tmp_path: Path
) -> None:
    version, model = served
    rows = online_rows[list(model.spec.names)]
    # Python's JSON keeps every float exactly (pandas' to_json rounds to 10 digits).
    split = rows.astype(object).where(rows.notna(), None).to_dict("split")
    body = {"dataframe_split": {"columns": split["columns"], "data": split["data"]}}
    (tmp_path / "input.json").write_text(json.dumps(body, default=lambda v: v.item()))
    command = [
        str(Path(sys.executable).with_name("mlflow")),
        *("models", "predict", "-m", f"models:/{trained.settings.model_name}/{version}"),
        *("-i", str(tmp_path / "input.json"), "-t", "json", "-o", str(tmp_path / "output.json")),
        *("--env-manager", "local"),
    ]
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri(trained.settings)}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    predictions = json.loads((tmp_path / "output.json").read_text())["predictions"]
    out = pd.DataFrame(predictions)
    proba, decision = _api_answers(model, rows)
    np.testing.assert_allclose(out[pyfunc.PROBABILITY].to_numpy(), proba, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(out[pyfunc.PREDICTION].to_numpy(), decision)


def test_version_tags_hold_the_sha256_of_the_logged_files(trained: TrainedStack, tmp_path: Path) -> None:
    settings = trained.settings
    use_mlflow(settings)
    client = mlflow.MlflowClient()
    tags = {}
    for result in (trained.baseline, trained.candidate, trained.candidate_again):
        mv = client.get_model_version(settings.model_name, str(result.version))
        folder = tmp_path / str(result.version)
        model_dir = mlflow.artifacts.download_artifacts(
            f"models:/{settings.model_name}/{result.version}", dst_path=str(folder / "model")
        )
        files = {pyfunc.SKOPS_FILE: Path(model_dir) / pyfunc.SKOPS_FILE}
        for artifact in SHA256_TAGS:
            if artifact != pyfunc.SKOPS_FILE:
                files[artifact] = Path(
                    mlflow.artifacts.download_artifacts(
                        run_id=mv.run_id, artifact_path=artifact, dst_path=str(folder / "run")
                    )
                )
        tags[result.version] = {tag: mv.tags[tag] for tag in SHA256_TAGS.values()}
        assert tags[result.version] == {
            tag: sha256(files[artifact].read_bytes()) for artifact, tag in SHA256_TAGS.items()
        }
    # The same training repeated logged the same bytes.
    assert tags[trained.candidate.version] == tags[trained.candidate_again.version]
    assert tags[trained.baseline.version] != tags[trained.candidate.version]
