"""Names the CLI checks before any heavy import: importing Feast costs ~5 s here and scikit-learn ~2 s,
while a mistyped ``--model`` must be rejected at once.

``MODEL_TYPES`` is the one list (``training.models`` uses it); the others are copies of the package's
own (the FeatureServices of ``features.definitions``, ``features.config.PROJECT``), and
``tests/unit/test_catalog.py`` fails the moment they disagree. Nothing here imports anything.
"""

from __future__ import annotations

MODEL_TYPES: tuple[str, ...] = ("baseline", "gbm", "logreg")
FEATURE_SERVICES: tuple[str, ...] = ("churn_v1", "churn_v2")
FEAST_PROJECT = "streamflow"
FEAST_SCHEMA = "feast"  # where Feast's SQL registry keeps its tables, in the StreamFlow database
