"""The fast prediction path: the fitted scikit-learn pipeline converted to ONNX, run by onnxruntime.

scikit-learn pays a per-call (and, for forests, per-tree) overhead that costs tens of milliseconds for
ONE row of a 300-tree forest; the same graph in onnxruntime runs it in well under a millisecond
(DESIGN.md). The ONNX graph takes one input per feature column, named after the feature, so a row
of feature values (as Feast returns it) maps straight onto the inputs. :func:`verify` proves the
two paths agree before a converted model is trusted.

skl2onnx 1.20 cannot convert scikit-learn 1.9's HistGradientBoostingClassifier as shipped: its tree
walker gives leaves a Python ``False`` for ``nodes_missing_value_tracks_true``, which onnx refuses in
an integer attribute ("Expected an int, got a boolean"; the uint32 child ids themselves are fine).
:func:`_convert_hist_gradient_boosting` runs skl2onnx's own converter and casts that one list to
ints; nothing else changes, and :func:`verify` checks the result like any other conversion.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import onnxruntime as ort
import pandas as pd
from skl2onnx import convert_sklearn, update_registered_converter
from skl2onnx.common.data_types import FloatTensorType, StringTensorType
from skl2onnx.operator_converters.random_forest import convert_sklearn_random_forest_classifier
from skl2onnx.shape_calculators.ensemble_shapes import calculate_linear_classifier_output_shapes
from sklearn.ensemble import HistGradientBoostingClassifier

from streamflow.training.models import MISSING_CATEGORY, to_model_input

if TYPE_CHECKING:
    from sklearn.pipeline import Pipeline

    from streamflow.features.definitions import FeatureSpec

# Default domain 18 and ai.onnx.ml 3 (TreeEnsembleClassifier v3): well inside what skl2onnx 1.20
# emits and what onnxruntime >= 1.16 runs.
TARGET_OPSET = {"": 18, "ai.onnx.ml": 3}
PROBABILITIES = "probabilities"  # the classifier's [n, 2] output once zipmap is off
# skl2onnx names the graph with a random uuid4 unless told: a fixed name keeps the bytes reproducible.
GRAPH_NAME = "streamflow_churn"


def _convert_hist_gradient_boosting(scope: Any, operator: Any, container: Any) -> None:
    """skl2onnx's converter for HistGradientBoostingClassifier, with its missing-value flags as ints."""
    add_node = container.add_node

    def add_node_with_int_flags(op_type: str, *args: Any, **attrs: Any) -> Any:
        flags = attrs.get("nodes_missing_value_tracks_true")
        if flags is not None:
            attrs["nodes_missing_value_tracks_true"] = [int(flag) for flag in flags]
        return add_node(op_type, *args, **attrs)

    container.add_node = add_node_with_int_flags
    try:
        convert_sklearn_random_forest_classifier(scope, operator, container)
    finally:
        del container.add_node  # the instance attribute: the class's method shows through again


update_registered_converter(
    HistGradientBoostingClassifier,
    "SklearnHistGradientBoostingClassifier",
    calculate_linear_classifier_output_shapes,
    _convert_hist_gradient_boosting,
    options={
        "zipmap": [True, False, "columns"],
        "raw_scores": [True, False],
        "output_class_labels": [False, True],
        "nocl": [True, False],
    },  # the options skl2onnx registers for it
)


class FastPathMismatchError(AssertionError):
    """The ONNX fast path does not reproduce the scikit-learn pipeline's probabilities."""

    def __init__(self, message: str, max_abs_diff: float) -> None:
        super().__init__(message)
        self.max_abs_diff = max_abs_diff


def to_onnx(pipeline: Pipeline, spec: FeatureSpec) -> bytes:
    """Serialized ONNX model of a pipeline fitted on ``to_model_input`` frames of ``spec``.

    One [None, 1] input per feature: float32 for numeric and boolean columns (as ``to_model_input``
    casts them), string for categorical ones. zipmap is disabled, so the output is a plain
    [n, 2] float tensor instead of a list of dicts (slow to build and to read). The same pipeline
    gives the same bytes (fixed graph name; skl2onnx's node names are counters, no timestamps; the
    opsets sorted by :func:`canonical`).
    """
    initial_types: list[tuple[str, Any]] = []
    for name in spec.names:
        kind = StringTensorType if name in spec.categorical else FloatTensorType
        initial_types.append((name, kind([None, 1])))
    classifier = pipeline.steps[-1][1]
    model = convert_sklearn(
        pipeline,
        initial_types=initial_types,
        options={id(classifier): {"zipmap": False}},
        target_opset=TARGET_OPSET,
        name=GRAPH_NAME,
    )
    return canonical(model).SerializeToString()


def canonical(model: Any) -> Any:
    """``model`` (an onnx ModelProto) with its opset imports sorted by domain, in place.

    skl2onnx lists the opsets in the order its converters first met them, which varies between
    processes (seen: ``ai.onnx.ml`` before ``""`` in about one training in ten), so the same model
    would otherwise hash differently."""
    opsets = sorted(model.opset_import, key=lambda o: (o.domain, o.version))
    del model.opset_import[:]
    model.opset_import.extend(opsets)
    return model


class OnnxPredictor:
    """P(churn=1) from an ONNX model produced by :func:`to_onnx` for the same feature spec."""

    def __init__(self, onnx_bytes: bytes, spec: FeatureSpec) -> None:
        options = ort.SessionOptions()
        # One row is microseconds of work: thread pools only add hand-off latency (and contend with
        # the web server's workers).
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self._session = ort.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])
        self.spec = spec

        inputs, expected = {i.name for i in self._session.get_inputs()}, set(spec.names)
        if inputs != expected:
            raise ValueError(
                f"ONNX inputs do not match feature service {spec.service!r}: "
                f"missing {sorted(expected - inputs)}, extra {sorted(inputs - expected)}"
            )
        outputs = [o.name for o in self._session.get_outputs()]
        if PROBABILITIES not in outputs:
            raise ValueError(f"ONNX model has no {PROBABILITIES!r} output (zipmap on?): {outputs}")
        self._outputs = [PROBABILITIES]

        self._float_names = spec.numeric + spec.boolean
        # Single-row buffers are per thread: session.run releases the GIL, and a web server calls
        # predict_one from a thread pool.
        self._local = threading.local()

    def _row_buffers(self) -> tuple[list[tuple[str, np.ndarray]], list[tuple[str, np.ndarray]], dict]:
        """This thread's [1, 1] input arrays, filled in place on every call, and the feed dict that
        references them: nothing is allocated per call but the output."""
        try:
            return self._local.buffers
        except AttributeError:
            floats = [(name, np.full((1, 1), np.nan, dtype=np.float32)) for name in self._float_names]
            strings = [
                (name, np.full((1, 1), MISSING_CATEGORY, dtype=object)) for name in self.spec.categorical
            ]
            self._local.buffers = (floats, strings, dict(floats + strings))
            return self._local.buffers

    def predict_proba(self, data: pd.DataFrame | Sequence[Mapping[str, Any]]) -> np.ndarray:
        """P(churn=1) for a batch: a Feast-shaped frame or a sequence of feature dicts."""
        frame = data if isinstance(data, pd.DataFrame) else pd.DataFrame.from_records(list(data))
        if len(frame) == 0:
            return np.empty(0, dtype=np.float32)
        X = to_model_input(frame, self.spec)
        feeds = {name: X[name].to_numpy(dtype=np.float32).reshape(-1, 1) for name in self._float_names}
        feeds.update({name: X[name].to_numpy(dtype=object).reshape(-1, 1) for name in self.spec.categorical})
        return self._session.run(self._outputs, feeds)[0][:, 1]

    def predict_one(self, features: Mapping[str, Any]) -> float:
        """P(churn=1) for one row of feature values, e.g. Feast's online response for one user.

        Same conversions as ``to_model_input``: None -> NaN (imputed in the graph) for numeric and
        boolean values, True/False -> 1.0/0.0, None -> the missing-category sentinel.
        """
        floats, strings, feeds = self._row_buffers()
        try:
            for name, cell in floats:
                value = features[name]
                # numpy rejects a non-numeric string here (ValueError): no silent "True" -> 1.0.
                cell[0, 0] = math.nan if value is None else value
            for name, cell in strings:
                value = features[name]
                cell[0, 0] = MISSING_CATEGORY if value is None else str(value)
        except KeyError:
            missing = [name for name in self.spec.names if name not in features]
            raise KeyError(f"missing features for {self.spec.service!r}: {missing}") from None
        return float(self._session.run(self._outputs, feeds)[0][0, 1])


def verify(
    pipeline: Pipeline,
    predictor: OnnxPredictor,
    sample_frame: pd.DataFrame,
    tol: float = 1e-5,
    *,
    expected: np.ndarray | None = None,
) -> float:
    """Max |P_onnx - P_sklearn| over ``sample_frame`` (Feast-shaped); raises if above ``tol`` or NaN.

    ``expected``: the pipeline's P(churn=1) on these rows when the caller already has it (training
    computes it for the hold-out metrics); it is not recomputed then.
    """
    if expected is None:
        sklearn_proba = pipeline.predict_proba(to_model_input(sample_frame, predictor.spec))[:, 1]
    else:
        sklearn_proba = np.asarray(expected, dtype=np.float64)
        if sklearn_proba.shape != (len(sample_frame),):
            raise ValueError(f"expected has shape {sklearn_proba.shape}, frame has {len(sample_frame)} rows")
    onnx_proba = predictor.predict_proba(sample_frame).astype(np.float64)
    diff = np.abs(onnx_proba - sklearn_proba)
    max_diff = float(np.max(diff)) if len(diff) else 0.0
    if not max_diff <= tol:  # also catches NaN
        worst = int(np.argmax(np.where(np.isnan(diff), np.inf, diff)))
        raise FastPathMismatchError(
            f"ONNX fast path disagrees with scikit-learn: max |diff| = {max_diff:.3g} > tol {tol:g} "
            f"over {len(diff)} rows (worst row {worst}: sklearn {sklearn_proba[worst]:.6f}, "
            f"onnx {onnx_proba[worst]:.6f})",
            max_diff,
        )
    return max_diff
