""":class:`FeatureSpec` without Feast: a registered model rebuilds its own from the columns it stores
(``mlflow.pyfunc.load_model`` then needs neither Feast nor the current feature definitions)."""

from __future__ import annotations

from dataclasses import dataclass

# A categorical value the producer left empty. Not a real category, so an unseen one: the one-hot
# encoder ignores it (all zeros). Same sentinel in the ONNX fast path, which cannot take None, and
# in the drift report, where a null is a category of its own.
MISSING_CATEGORY = "__missing__"


@dataclass(frozen=True)
class FeatureSpec:
    """A feature service seen from the model: names in order, grouped by how the model encodes them."""

    service: str
    refs: tuple[str, ...]  # "view:feature", what Feast retrieval takes
    names: tuple[str, ...]
    numeric: tuple[str, ...]
    boolean: tuple[str, ...]
    categorical: tuple[str, ...]
    integer: tuple[str, ...] = ()  # the numeric ones Feast serves as Int64 (the others are Float64)
