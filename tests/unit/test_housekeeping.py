"""What users expect of a package: a LICENSE matching pyproject.toml, type information shipped
(py.typed), a pre-commit config running ruff as `make lint` does, and a README whose example response
answers its own curl."""

from __future__ import annotations

import json
import re
import tomllib
from importlib import resources
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_license_is_the_apache_license_pyproject_names() -> None:
    text = (ROOT / "LICENSE").read_text()
    assert PYPROJECT["project"]["license"] == "Apache-2.0"
    assert "LICENSE" in PYPROJECT["project"]["license-files"]
    assert text.split()[:4] == ["Apache", "License", "Version", "2.0,"]
    assert "TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION" in text
    assert "END OF TERMS AND CONDITIONS" in text


def test_py_typed_is_shipped() -> None:
    assert resources.files("streamflow").joinpath("py.typed").is_file()
    assert "py.typed" in PYPROJECT["tool"]["setuptools"]["package-data"]["streamflow"]


def test_pre_commit_runs_ruff_like_make_lint() -> None:
    config = yaml.safe_load((ROOT / ".pre-commit-config.yaml").read_text())
    [repo] = config["repos"]
    assert repo["repo"] == "https://github.com/astral-sh/ruff-pre-commit" and repo["rev"].startswith("v")
    hooks = {h["id"]: h for h in repo["hooks"]}
    assert set(hooks) == {"ruff-check", "ruff-format"}
    makefile = (ROOT / "Makefile").read_text()
    for hook in hooks.values():  # the folders `make lint` checks
        folders = re.search(r"ruff check (.+)", makefile).group(1).split()
        assert all(re.match(hook["files"], f"{folder}/x.py") for folder in folders), hook


def test_readme_example_response_answers_its_curl() -> None:
    from streamflow.serving.app import Prediction

    readme = (ROOT / "README.md").read_text()
    [asked] = re.findall(r"curl -s -X POST \S+/predict .* -d '(\{.*\})'", readme)
    [response] = re.findall(r"```json\n(.*?)\n```", readme, flags=re.S)
    answer = json.loads(response)
    assert answer["user_id"] == json.loads(asked)["user_id"]
    assert set(answer) == set(Prediction.model_fields)
    assert answer["prediction"] == int(answer["probability"] >= answer["threshold"])
