"""The registered model as MLflow serves it: the same answer as the API, from the same features.

``mlflow.pyfunc.load_model("models:/streamflow_churn@production").predict(frame)`` takes the features
as Feast's ``get_online_features`` returns them (Float64 -> double, Int64 -> long, String -> string,
Bool -> True/False/None, declared ``Any``: see :func:`signature`), converts them itself
(:func:`to_model_input`) and returns a frame of ``probability`` (P(churn=1)) and ``prediction`` (1
when the probability is at or above the version's tuned threshold, else 0): the API's two fields.
The signature states both sides.

The model folder is the scikit-learn flavor's (``model.skops``: ``mlflow.sklearn.load_model`` still
gives the pipeline) plus :data:`CONFIG_FILE` (the threshold, the feature columns); only its
``python_function`` flavor is this module's. Loading needs streamflow importable (the feature
conversion is shared with training and the API), but not Feast: the columns come from the file.
This module is the flavor that ``mlflow.models.Model.log`` takes (:func:`save_model`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from streamflow.features.spec import FeatureSpec
from streamflow.training.models import to_model_input

if TYPE_CHECKING:
    from mlflow.models import Model, ModelSignature
    from sklearn.pipeline import Pipeline

CONFIG_FILE = "churn_model.json"
SKOPS_FILE = "model.skops"  # the sklearn flavor's file name for the skops format
PROBABILITY, PREDICTION = "probability", "prediction"  # output columns, named as in the API


def signature(spec: FeatureSpec) -> ModelSignature:
    """Feast's online types in, the API's probability and 0/1 prediction out.

    Booleans are declared ``Any``, not ``boolean``: a Feast Bool is True, False or None (no internet,
    hence no streaming plan), and on its JSON path (``mlflow models predict``, ``mlflow models serve``)
    MLflow casts a ``boolean`` column with ``astype(bool)``, which turns None into False and would
    answer such a user as if the value were known. :func:`to_model_input` still refuses anything but
    True/False/None.
    """
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema
    from mlflow.types.schema import AnyType

    def column(name: str) -> ColSpec:
        if name in spec.boolean:
            return ColSpec(AnyType(), name)
        if name in spec.categorical:
            return ColSpec("string", name)
        return ColSpec("long" if name in spec.integer else "double", name)

    return ModelSignature(
        inputs=Schema([column(name) for name in spec.names]),
        outputs=Schema([ColSpec("double", PROBABILITY), ColSpec("long", PREDICTION)]),
    )


def as_online_types(frame: pd.DataFrame, spec: FeatureSpec) -> pd.DataFrame:
    """The spec's columns of ``frame`` (e.g. a training set's nullable Int64 / boolean) in the types
    Feast's online store returns: int64, float64, object True/False/None, object str/None. Integer
    columns must be complete (the API refuses a row with a missing feature too)."""
    out: dict[str, Any] = {}
    for name in spec.names:
        column = frame[name]
        if name in spec.integer:
            out[name] = column.astype("int64")
        elif name in spec.numeric:
            out[name] = column.astype("float64")
        else:
            out[name] = column.astype(object).where(column.notna(), None)
    return pd.DataFrame(out, index=frame.index, columns=list(spec.names))


class ChurnModel:
    """What ``mlflow.pyfunc.load_model`` wraps: the pipeline, its feature columns and its threshold."""

    def __init__(self, pipeline: Pipeline, spec: FeatureSpec, threshold: float) -> None:
        self.pipeline = pipeline
        self.spec = spec
        self.threshold = threshold

    def predict(self, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        proba = self.pipeline.predict_proba(to_model_input(model_input, self.spec))[:, 1]
        return pd.DataFrame(
            {
                PROBABILITY: proba.astype(np.float64),
                PREDICTION: (proba >= self.threshold).astype(np.int64),
            },
            index=model_input.index,
        )


def _config(spec: FeatureSpec, threshold: float, trusted_types: list[str]) -> dict[str, Any]:
    return {
        "feature_service": spec.service,
        "features": list(spec.names),
        "numeric": list(spec.numeric),
        "integer": list(spec.integer),
        "boolean": list(spec.boolean),
        "categorical": list(spec.categorical),
        "threshold": threshold,
        "skops_trusted_types": trusted_types,
    }


def save_model(
    path: str,
    mlflow_model: Model | None = None,
    *,
    pipeline: Pipeline,
    spec: FeatureSpec,
    threshold: float,
    skops_file: bytes,
    pip_requirements: list[str],
    input_example: pd.DataFrame | None = None,
) -> None:
    """Write the model folder at ``path``: the sklearn flavor with ``skops_file`` (the pipeline's bytes, from
    ``artifacts.skops_bytes``) as its file, :data:`CONFIG_FILE`, and this module as the pyfunc flavor."""
    import mlflow
    import skops.io
    from mlflow.models import Model

    mlflow_model = mlflow_model or Model()
    trusted = skops.io.get_untrusted_types(data=skops_file)
    # MLflow dumps the pipeline itself (with object ids and times in it); the file is then replaced by
    # the reproducible bytes of the same pipeline, which MLflow's own load check has just accepted.
    mlflow.sklearn.save_model(
        pipeline,
        path,
        mlflow_model=mlflow_model,
        serialization_format="skops",
        skops_trusted_types=trusted,
        signature=signature(spec),
        input_example=input_example,
        pip_requirements=pip_requirements,
    )
    folder = Path(path)
    (folder / SKOPS_FILE).write_bytes(skops_file)
    config = _config(spec, threshold, trusted)
    (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    env = mlflow_model.flavors[mlflow.pyfunc.FLAVOR_NAME][mlflow.pyfunc.ENV]
    mlflow.pyfunc.add_to_model(
        mlflow_model,
        loader_module=__name__,
        conda_env=env.get("conda"),
        python_env=env.get("virtualenv"),
    )
    mlflow_model.model_size_bytes = sum(
        p.stat().st_size for p in folder.rglob("*") if p.is_file() and p.name != "MLmodel"
    )
    mlflow_model.save(str(folder / "MLmodel"))


def _load_pyfunc(path: str) -> ChurnModel:
    """MLflow's loader hook: ``path`` is the model folder."""
    import skops.io

    folder = Path(path)
    config = json.loads((folder / CONFIG_FILE).read_text())
    spec = FeatureSpec(
        service=config["feature_service"],
        refs=(),
        names=tuple(config["features"]),
        numeric=tuple(config["numeric"]),
        boolean=tuple(config["boolean"]),
        categorical=tuple(config["categorical"]),
        integer=tuple(config["integer"]),
    )
    pipeline = skops.io.load(folder / SKOPS_FILE, trusted=config["skops_trusted_types"])
    return ChurnModel(pipeline, spec, float(config["threshold"]))
