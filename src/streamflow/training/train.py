"""Train one model at a fixed as_of and seed, and record everything about it in MLflow.

The run holds params, hold-out metrics, plots, the feature schema, the training data's fingerprint
(also logged as an MLflow dataset input), the git commit and package versions. The fitted pipeline
is registered as a new version of ``streamflow_churn`` together with its ONNX conversion, which is
checked against the pipeline (on every hold-out row) before anything is logged. The registered
model's pyfunc flavor answers like the API (training/pyfunc.py).

The model files are reproducible: the same inputs and seed give the same bytes (training/artifacts.py
for the skops file, a fixed graph name for ONNX), and the version carries each file's sha256
(:data:`SHA256_TAGS`), so equal tags mean the same model.

:func:`fit_and_convert` is the part without a database or MLflow: hold-out split, selection and fit,
hold-out metrics, ONNX conversion and verification, with each stage's seconds. ``build_model`` runs it
on a point-in-time training set and makes the model files, ``register_model`` logs and registers that;
``train_model`` is the two, ``reproduce`` (training/reproduce.py) only the first.
``bench/bench_train.py`` runs :func:`fit_and_convert` on CSV exports joined in memory.
What it logs stays bounded at any size: plots from at most ``PLOT_ROWS`` hold-out rows, a 500-row
verification sample, a 5-row signature/input example.
"""

from __future__ import annotations

import io
import json
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from streamflow.data.pruning import tag_value
from streamflow.features.definitions import DEFAULT_FEATURE_SERVICE, feature_spec
from streamflow.serving.fast_model import OnnxPredictor, to_onnx, verify
from streamflow.settings import Settings, get_settings
from streamflow.training import pyfunc
from streamflow.training.artifacts import sha256, skops_bytes
from streamflow.training.dataset import LABEL, TrainingSet, training_set
from streamflow.training.lineage import environment, git_commit, package_versions
from streamflow.training.models import (
    FittedModel,
    StageProgress,
    cv_sample,
    evaluate,
    fit_model,
    holdout_mask,
)

if TYPE_CHECKING:
    from streamflow.features.definitions import FeatureSpec
from streamflow.training.plots import evaluation_plots, importance_plot
from streamflow.training.tracking import REVISIONS_TAG, use_mlflow

ONNX_ARTIFACT = "onnx/model.onnx"
SAMPLE_ARTIFACT = "onnx/verification_sample.parquet"  # hold-out rows the API re-checks the fast path on
SAMPLE_ROWS = 500
PLOT_ROWS = 50_000  # hold-out rows the ROC / PR / confusion plots are drawn from (stratified sample)
SCHEMA_ARTIFACT = "feature_schema.json"
MODEL_NAME = "model"  # the logged model's name in the run

# Version tags: the sha256 (hex) of each file the version's predictions come from, by its path (the
# skops file inside the logged model, the others in the run's artifacts).
SHA256_TAGS: dict[str, str] = {
    pyfunc.SKOPS_FILE: "model_sha256",
    ONNX_ARTIFACT: "onnx_sha256",
    SAMPLE_ARTIFACT: "verification_sample_sha256",
}


@dataclass(frozen=True)
class TrainResult:
    run_id: str
    version: int
    model_type: str
    feature_service: str
    metrics: dict[str, float]
    threshold: float
    fingerprint: str
    revisions: dict[date, int] = field(default_factory=dict)  # as_of -> revision the training set read


def _requirements() -> list[str]:
    versions = package_versions()
    return [f"{name}=={versions[name]}" for name in ("scikit-learn", "numpy", "pandas")] + [
        f"skops=={_version('skops')}",
    ]


def _version(name: str) -> str:
    from importlib import metadata

    return metadata.version(name)


@dataclass
class Trained:
    """What :func:`fit_and_convert` produced from one frame."""

    fitted: FittedModel
    holdout: np.ndarray  # bool per row of the frame
    metrics: dict[str, float]  # on the hold-out rows
    holdout_proba: np.ndarray  # scikit-learn's P(churn=1) on the hold-out rows
    onnx_bytes: bytes
    onnx_max_abs_diff: float
    seconds: dict[str, float] = field(default_factory=dict)  # split, cv_search, cv_threshold, fit, ...


def fit_and_convert(
    frame: pd.DataFrame,
    spec: FeatureSpec,
    model_type: str,
    seed: int,
    settings: Settings,
    *,
    show_progress: bool = False,
) -> Trained:
    """Hold-out split -> selection and fit on the training users -> hold-out metrics -> ONNX, verified
    on every hold-out row. ``frame``: user_id, the spec's features (as Feast returns them), churn_label."""
    with StageProgress(show_progress) as stages:
        with stages.stage("split", "hold-out split (hash of user_id)", len(frame)):
            holdout = holdout_mask(frame["user_id"], settings.holdout_fraction)
            features = frame[list(spec.names)]
            y = frame[LABEL].to_numpy(dtype=int)
        fitted = fit_model(
            model_type,
            features[~holdout],
            y[~holdout],
            spec,
            seed,
            cv_folds=settings.cv_folds,
            cv_sample_rows=settings.cv_sample_rows,
            progress=stages,
        )
        held_out = features[holdout]
        with stages.stage("evaluate", f"{model_type}: hold-out metrics", len(held_out)):
            proba = fitted.predict_proba(held_out)
            metrics = evaluate(fitted, held_out, y[holdout], proba=proba)
        with stages.stage("convert", f"{model_type}: ONNX conversion"):
            onnx_bytes = to_onnx(fitted.pipeline, spec)
        with stages.stage("verify", f"{model_type}: ONNX = scikit-learn on the hold-out", len(held_out)):
            diff = verify(fitted.pipeline, OnnxPredictor(onnx_bytes, spec), held_out, expected=proba)
    return Trained(fitted, holdout, metrics, proba, onnx_bytes, diff, dict(stages.seconds))


def artifact_files(trained: Trained, frame: pd.DataFrame, spec: FeatureSpec) -> dict[str, bytes]:
    """The bytes of every file in :data:`SHA256_TAGS` for a model :func:`fit_and_convert` made from
    ``frame``; the same for the same frame, model type and seed."""
    sample = io.BytesIO()
    frame[list(spec.names)][trained.holdout].head(SAMPLE_ROWS).to_parquet(sample, index=False)
    return {
        pyfunc.SKOPS_FILE: skops_bytes(trained.fitted.pipeline),
        ONNX_ARTIFACT: trained.onnx_bytes,
        SAMPLE_ARTIFACT: sample.getvalue(),
    }


@dataclass
class Built:
    """What :func:`build_model` made: the training set and the model, not yet logged or registered."""

    data: TrainingSet
    spec: FeatureSpec
    model_type: str
    seed: int
    label_horizon: int
    trained: Trained
    files: dict[str, bytes]  # artifact_files(): the bytes each SHA256_TAGS entry hashes


def build_model(
    as_of: date,
    model_type: str = "baseline",
    seed: int | None = None,
    feature_service: str = DEFAULT_FEATURE_SERVICE,
    label_horizon: int = 0,
    settings: Settings | None = None,
    *,
    show_progress: bool = False,
    pins: Mapping[date, int] | None = None,
) -> Built:
    """The training set at ``as_of`` (each month at the revision it serves, or at its revision in
    ``pins``) and the model fitted on it, with its files; nothing is written anywhere."""
    settings = settings or get_settings()
    seed = settings.seed if seed is None else seed
    spec = feature_spec(feature_service)
    data = training_set(
        settings, as_of, feature_service, label_horizon, pins=pins, show_progress=show_progress
    )
    trained = fit_and_convert(data.frame, spec, model_type, seed, settings, show_progress=show_progress)
    files = artifact_files(trained, data.frame, spec)
    return Built(data, spec, model_type, seed, label_horizon, trained, files)


def train_model(
    as_of: date,
    model_type: str = "baseline",
    seed: int | None = None,
    feature_service: str = DEFAULT_FEATURE_SERVICE,
    label_horizon: int = 0,
    settings: Settings | None = None,
    *,
    show_progress: bool = False,
    pins: Mapping[date, int] | None = None,
) -> TrainResult:
    """Train on the training set at ``as_of`` (each month at the revision it serves, or at its
    revision in ``pins``) and register the model; the version records the revisions read."""
    settings = settings or get_settings()
    built = build_model(
        as_of,
        model_type,
        seed,
        feature_service,
        label_horizon,
        settings,
        show_progress=show_progress,
        pins=pins,
    )
    return register_model(built, settings)


def register_model(built: Built, settings: Settings) -> TrainResult:
    """Log ``built`` as an MLflow run and register it as a new version of the model, with its tags."""
    import mlflow
    from mlflow.data.code_dataset_source import CodeDatasetSource
    from mlflow.models import Model

    data, spec, trained, files = built.data, built.spec, built.trained, built.files
    as_of, feature_service, label_horizon = data.as_of, data.service, built.label_horizon
    model_type, seed = built.model_type, built.seed
    frame = data.frame
    fitted, holdout, metrics = trained.fitted, trained.holdout, trained.metrics
    features = frame[list(spec.names)]  # as Feast returns them; the pipeline's input is derived from it
    y = frame[LABEL].to_numpy(dtype=int)
    train_seconds = sum(trained.seconds[k] for k in ("cv_search", "cv_threshold", "fit"))
    onnx_bytes, onnx_diff = trained.onnx_bytes, trained.onnx_max_abs_diff
    installed = environment()  # lock, Python and platform, on the run and on the version

    use_mlflow(settings)
    client = mlflow.MlflowClient()
    with mlflow.start_run(run_name=f"{model_type}-{feature_service}-{as_of}") as run:
        mlflow.log_params(
            {
                "as_of": as_of.isoformat(),
                "label_as_of": data.label_as_of.isoformat(),
                "label_horizon": label_horizon,
                "model_type": model_type,
                "seed": seed,
                "feature_service": feature_service,
                "rows": len(frame),
                "train_rows": int((~holdout).sum()),
                "holdout_rows": int(holdout.sum()),
                "holdout_fraction": settings.holdout_fraction,
                "cv_sample_rows": fitted.cv_rows,
                "cv_folds": fitted.cv_folds,
                "threshold": fitted.threshold,
                **{f"hp_{k}": v for k, v in fitted.params.items()},
            }
        )
        mlflow.log_metrics(
            {
                **metrics,
                "train_time_seconds": train_seconds,
                "cv_roc_auc": fitted.cv_score,
                "cv_oof_f1": fitted.oof_f1,
                "onnx_max_abs_diff": onnx_diff,
                "onnx_bytes": len(onnx_bytes),
                **{f"seconds_{k}": v for k, v in trained.seconds.items()},
            }
        )
        mlflow.set_tags(
            {
                "git_commit": git_commit(),
                **installed,
                "data_fingerprint": data.fingerprint,
                **{f"version.{k}": v for k, v in package_versions().items()},
            }
        )
        dataset = mlflow.data.from_pandas(
            frame,
            source=CodeDatasetSource(
                {
                    "feast_project": "streamflow",
                    "feature_service": feature_service,
                    "as_of": as_of.isoformat(),
                    "label_as_of": data.label_as_of.isoformat(),
                }
            ),
            targets=LABEL,
            name=f"training_set_{as_of.isoformat()}",
            digest=data.fingerprint[:36],
        )
        mlflow.log_input(dataset, context="training")
        schema = {
            "feature_service": feature_service,
            "features": list(spec.names),
            "numeric": list(spec.numeric),
            "boolean": list(spec.boolean),
            "categorical": list(spec.categorical),
            "threshold": fitted.threshold,
        }
        mlflow.log_dict(schema, SCHEMA_ARTIFACT)
        plotted = cv_sample(y[holdout], PLOT_ROWS, seed)  # stratified: the curves keep their shape
        plot_y, plot_proba = y[holdout][plotted], trained.holdout_proba[plotted]
        for name, fig in evaluation_plots(plot_y, plot_proba, fitted.threshold).items():
            mlflow.log_figure(fig, f"plots/{name}")
        if (fig := importance_plot(fitted.pipeline)) is not None:
            mlflow.log_figure(fig, "plots/feature_importance.png")
        with tempfile.TemporaryDirectory() as tmp:
            for artifact in (ONNX_ARTIFACT, SAMPLE_ARTIFACT):
                path = Path(tmp) / Path(artifact).name
                path.write_bytes(files[artifact])
                mlflow.log_artifact(str(path), artifact_path=str(Path(artifact).parent))
        # Complete rows: the example is in Feast's online types, where an Int64 has no missing value.
        example = pyfunc.as_online_types(features.dropna(subset=list(spec.numeric)).head(5), spec)
        info = Model.log(
            None,  # artifact_path: deprecated, but positional
            name=MODEL_NAME,
            flavor=pyfunc,
            registered_model_name=settings.model_name,
            pipeline=fitted.pipeline,
            spec=spec,
            threshold=fitted.threshold,
            skops_file=files[pyfunc.SKOPS_FILE],
            pip_requirements=_requirements(),
            input_example=example,
        )
    version = int(info.registered_model_version)
    for key, value in {
        "as_of": as_of.isoformat(),
        "feature_service": feature_service,
        "model_type": model_type,
        "threshold": repr(fitted.threshold),
        "holdout_roc_auc": repr(metrics["roc_auc"]),
        "data_fingerprint": data.fingerprint,
        "onnx_artifact": ONNX_ARTIFACT,
        REVISIONS_TAG: tag_value(data.revisions),
        **{tag: sha256(files[artifact]) for artifact, tag in SHA256_TAGS.items()},
        **installed,
    }.items():
        client.set_model_version_tag(settings.model_name, str(version), key, value)
    client.update_model_version(
        settings.model_name,
        str(version),
        description=json.dumps({"feature_service": feature_service, "as_of": as_of.isoformat()}),
    )
    return TrainResult(
        run.info.run_id,
        version,
        model_type,
        feature_service,
        {k: float(v) for k, v in metrics.items()},
        float(fitted.threshold),
        data.fingerprint,
        dict(data.revisions),
    )


def scores_on_holdout(version: int, as_of: date, settings: Settings) -> dict[str, float]:
    """Score a registered version on the hold-out users of ``as_of`` (with its own feature service)."""
    import mlflow

    use_mlflow(settings)
    client = mlflow.MlflowClient()
    mv = client.get_model_version(settings.model_name, str(version))
    service = mv.tags.get("feature_service", DEFAULT_FEATURE_SERVICE)
    spec = feature_spec(service)
    data = training_set(settings, as_of, service)
    holdout = holdout_mask(data.frame["user_id"], settings.holdout_fraction)
    features = data.frame[list(spec.names)][holdout]
    y = data.frame[LABEL].to_numpy(dtype=int)[holdout]
    pipeline = mlflow.sklearn.load_model(f"models:/{settings.model_name}/{version}")
    fitted = FittedModel(pipeline, float(mv.tags["threshold"]), params={}, cv_score=float("nan"), spec=spec)
    return evaluate(fitted, features, y)
