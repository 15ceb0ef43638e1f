"""What a validation says: one ``Violation`` per broken rule, one ``ContractError`` listing them all,
and how a value or user id is shown in an example."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

MAX_EXAMPLES = 5
_SHOWN = 40  # characters of a value shown in a message
_PLAIN_NAME = re.compile(r"[A-Za-z0-9_]+")


@dataclass(frozen=True)
class Violation:
    file: str
    rule: str
    column: str | None = None
    count: int = 1
    examples: tuple[str, ...] = ()
    unit: str = "row"

    def __str__(self) -> str:
        where = f"{self.file}: column '{self.column}'" if self.column else self.file
        text = f"{where}: {self.rule}"
        if self.examples:
            units = self.unit if self.count == 1 else f"{self.unit}s"
            text += f" ({self.count:,} {units}; e.g. " + "; ".join(self.examples) + ")"
        return text


class ContractError(ValueError):
    """A month folder breaks the export contract. Carries every violation found."""

    def __init__(self, month_dir: Path | str, violations: list[Violation]) -> None:
        self.month_dir = str(month_dir)
        self.violations = violations
        lines = "\n".join(f"  - {v}" for v in violations)
        super().__init__(f"{self.month_dir}: {len(violations)} contract violation(s):\n{lines}")


def shown_names(names: Iterable[str], most: int = 10) -> str:
    names = list(names)
    shown = ", ".join(n if _PLAIN_NAME.fullmatch(n) else repr(shown_uid(n)) for n in names[:most])
    return shown if len(names) <= most else f"{shown}, … ({len(names):,} in all)"


def example(line: int, uid: object, value: object) -> str:
    who = f" (user_id {shown_uid(uid)})" if isinstance(uid, str) else ""
    return f"line {line}{who}: {shown_value(value)}"


def shown_uid(uid: object) -> str:
    text = str(uid)
    return text if len(text) <= _SHOWN else text[:_SHOWN] + "…"


def shown_value(value: object) -> str:
    if value is None:
        return "blank"
    text = value.decode("utf-8", "backslashreplace") if isinstance(value, bytes) else str(value)
    if len(text) <= _SHOWN:
        return repr(text)
    return f"{text[:_SHOWN]!r}… ({len(text):,} characters)"
