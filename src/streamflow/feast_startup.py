"""Feast without its import-time type instrumentation.

Feast decorates its classes with typeguard's ``@typechecked``, which re-reads and recompiles each
decorated module's source with ``ast`` when Feast is imported: ~4 of the ~6 s that ``import feast``
takes, paid by every ``streamflow`` command and every API start. StreamFlow builds its Feast objects
from its own tested definitions, so the checks guard nothing here. Replacing the decorator with the
identity before Feast is first imported keeps Feast's behaviour for valid arguments and drops the cost.
Only Feast uses typeguard among the locked dependencies.
"""

from __future__ import annotations

from typing import Any


def _identity(target: Any = None, **_: Any) -> Any:
    # Both forms Feast uses: ``@typechecked`` and ``@typechecked(...)``.
    return target if target is not None else (lambda t: t)


def skip_feast_typechecks() -> None:
    import typeguard

    typeguard.typechecked = _identity
