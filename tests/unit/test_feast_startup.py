"""Feast is imported without typeguard's instrumentation once StreamFlow is (feast_startup.py)."""

from __future__ import annotations

import subprocess
import sys


def _instrumented_after(first: str) -> bool:
    code = (
        f"import {first}\n"
        "import feast.feature_view as fv\n"
        "print('check_argument_types_internal' in fv.FeatureView.__init__.__code__.co_names)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    return out.stdout.strip() == "True"


def test_feast_is_not_instrumented_when_streamflow_comes_first() -> None:
    assert _instrumented_after("streamflow") is False
    assert _instrumented_after("sys") is True  # the check itself can tell (Feast alone is instrumented)
