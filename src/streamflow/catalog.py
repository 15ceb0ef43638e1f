"""Names the CLI checks before any heavy import: importing Feast costs ~5 s here and scikit-learn ~2 s,
while a mistyped ``--model`` must be rejected at once.

These are copies of the package's own lists (``training.models.MODEL_TYPES``, the FeatureServices
of ``features.definitions``, ``features.config.PROJECT``); ``tests/unit/test_catalog.py`` fails the
moment they disagree. Nothing here imports anything.
"""

from __future__ import annotations

MODEL_TYPES: tuple[str, ...] = ("baseline", "gbm", "logreg")
FEATURE_SERVICES: tuple[str, ...] = ("churn_v1", "churn_v2")
FEAST_PROJECT = "streamflow"
FEAST_SCHEMA = "feast"  # where Feast's SQL registry keeps its tables, in the StreamFlow database
