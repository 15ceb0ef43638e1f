"""Settings defaults and the artifact store's URI rules (no server)."""

from __future__ import annotations

from pathlib import Path

import pytest

from streamflow.settings import Settings


def test_the_default_limits() -> None:
    s = Settings()
    assert s.api_request_timeout_s <= 15 and s.api_max_body_bytes == 1 << 20


def test_a_folder_root_stays_the_default(tmp_path: Path) -> None:
    assert Settings(state_dir=tmp_path).artifacts_root == (tmp_path / "mlartifacts").resolve().as_uri()
    assert Settings(state_dir=tmp_path, artifacts_uri=str(tmp_path / "elsewhere")).artifacts_root == (
        (tmp_path / "elsewhere").as_uri()
    )
    with pytest.raises(ValueError, match="names no bucket"):
        Settings(artifacts_uri="s3:///prefix")
    with pytest.raises(ValueError, match="must be a folder, file:// or s3://"):
        Settings(artifacts_uri="gs://bucket/prefix")
