"""The CLI's light copies of the package's names agree with the package (catalog.py), and Settings
reject names that do not exist."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from streamflow import catalog
from streamflow.settings import Settings


def test_catalog_matches_the_package() -> None:
    from streamflow.features import config as store
    from streamflow.features.definitions import FEATURE_SERVICES
    from streamflow.training.models import MODEL_TYPES

    assert catalog.MODEL_TYPES == MODEL_TYPES
    assert tuple(FEATURE_SERVICES) == catalog.FEATURE_SERVICES
    assert catalog.FEAST_PROJECT == store.PROJECT
    assert catalog.FEAST_SCHEMA == store.FEAST_SCHEMA


def test_settings_defaults_name_known_things() -> None:
    s = Settings(_env_file=None)
    assert s.model_type in catalog.MODEL_TYPES and s.candidate_model_type in catalog.MODEL_TYPES
    assert {s.feature_service, s.candidate_feature_service} <= set(catalog.FEATURE_SERVICES)
    assert Settings(_env_file=None, log_level="DEBUG").log_level == "debug"
    for field, value in (
        ("candidate_model_type", "xgb"),
        ("feature_service", "churn_v9"),
        ("log_level", "loud"),
    ):
        with pytest.raises(ValidationError):
            Settings(_env_file=None, **{field: value})
