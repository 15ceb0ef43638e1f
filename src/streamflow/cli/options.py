"""Options shared by several commands and the checks of their values (before any heavy import)."""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Annotated

import typer

from streamflow import catalog
from streamflow.errors import UsageError

AsOf = Annotated[str, typer.Option("--as-of", help="Snapshot date YYYY-MM-DD.")]
Json = Annotated[bool, typer.Option("--json", help="Print the result as one JSON object on stdout.")]
RevisionOpt = Annotated[
    int | None,
    typer.Option(
        "--revision",
        min=1,
        help="Read the --as-of month at this revision (default: the one it serves;"
        " `streamflow data revisions` lists them).",
    ),
]


def parse_date(value: str, option: str = "--as-of") -> date:
    # Exactly YYYY-MM-DD: date.fromisoformat alone also takes 20240229 and 2024-W09-4.
    try:
        if len(value) == 10 and value[4] == value[7] == "-":
            return date.fromisoformat(value)
    except ValueError:
        pass
    raise UsageError(f"{option}: '{value}' is not a date YYYY-MM-DD")


def check_model(model: str, option: str = "--model") -> str:
    if model not in catalog.MODEL_TYPES:
        raise UsageError(f"{option}: unknown model type {model!r}; known: {', '.join(catalog.MODEL_TYPES)}")
    return model


def check_feature_service(service: str, option: str = "--feature-service") -> str:
    if service not in catalog.FEATURE_SERVICES:
        raise UsageError(
            f"{option}: unknown feature service {service!r}; known: {', '.join(catalog.FEATURE_SERVICES)}"
        )
    return service


def check_folder(folder: Path, what: str = "MONTH_DIR") -> Path:
    if not folder.is_dir():
        raise UsageError(
            f"{what}: {folder} is not a folder" if folder.exists() else f"{what}: {folder} does not exist"
        )
    return folder
