"""What commands print: rich text for people, one JSON object with ``--json`` for scripts."""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Mapping
from dataclasses import asdict, is_dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any

from rich.console import Console

console = Console(soft_wrap=True, highlight=False)  # results: stdout, never wrapped (pasteable, greppable)
err = Console(stderr=True, soft_wrap=True, highlight=False)


def plain(value: Any) -> Any:
    """``value`` as JSON-ready data: dates ISO, paths strings, NaN/inf null."""
    if is_dataclass(value) and not isinstance(value, type):
        value = asdict(value)
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [plain(v) for v in value]
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item") and not isinstance(value, str | bytes):  # numpy scalars
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def emit_json(payload: Mapping[str, Any]) -> None:
    sys.stdout.write(json.dumps(plain(payload), allow_nan=False) + "\n")
    sys.stdout.flush()


def rounded(value: float | None, digits: int = 6) -> float | None:
    return None if value is None or not math.isfinite(value) else round(float(value), digits)
