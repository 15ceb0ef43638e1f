"""The rules of one column (and between columns of one row), checked on a block of values at once."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date

import pyarrow as pa
import pyarrow.compute as pc

from streamflow.data.contracts import ID_PATTERN, Col, FileContract, Kind

_PATTERNS = {
    Kind.ID: (ID_PATTERN, "a user id: 1-64 letters, digits, '-', '_' or '.'"),
    Kind.INT: (r"^[+-]?\d+$", "an integer"),
    Kind.DECIMAL: (r"^[+-]?\d+(\.\d{1,2})?$", "a decimal with at most 2 places"),
    Kind.FLOAT: (r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$", "a number"),
    Kind.DATE: (r"^\d{4}-\d{2}-\d{2}$", "a date YYYY-MM-DD"),
}
_BOOLS = pa.array(["True", "False"])


_LINE_BREAK_RULE = "must not contain a line break (a quote left open?)"


def column_rules(col: Col, values: pa.Array, as_of: date | None) -> list[tuple[int, str, pa.Array]]:
    """(order, rule, mask of the values breaking it) for the rules one column breaks in one block.

    Each value breaks one rule at most: a value with a line break in it is reported for that only.
    """
    broken = [r for r in _kind_rules(col, values, as_of) if pc.any(r[2]).as_py()]
    if broken:
        breaks = pc.fill_null(pc.match_substring_regex(values, r"[\r\n]"), False)
        if pc.any(breaks).as_py():
            others = [(o, rule, pc.and_(mask, pc.invert(breaks))) for o, rule, mask in broken]
            broken = [(0, _LINE_BREAK_RULE, breaks)] + [r for r in others if pc.any(r[2]).as_py()]
    return broken


def _kind_rules(col: Col, values: pa.Array, as_of: date | None) -> Iterator[tuple[int, str, pa.Array]]:
    present = pc.is_valid(values)
    if not col.nullable:
        yield 1, "must not be blank", pc.is_null(values)
    if col.kind in _PATTERNS:
        pattern, what = _PATTERNS[col.kind]
        shaped = pc.fill_null(pc.match_substring_regex(values, pattern), False)
        yield 2, f"must be {what}", pc.and_(present, pc.invert(shaped))
        if col.kind is Kind.DATE:
            yield from _date_rules(col, values, shaped, as_of)
        elif col.min is not None or col.max is not None:
            lo = col.min if col.min is not None else float("-inf")
            hi = col.max if col.max is not None else float("inf")
            numbers = pc.cast(pc.if_else(shaped, values, "0"), pa.float64())
            inside = pc.and_(pc.greater_equal(numbers, lo), pc.less_equal(numbers, hi))
            yield 3, f"must be between {lo:g} and {hi:g}", pc.and_(shaped, pc.invert(inside))
    elif col.kind is Kind.BOOL:
        yield 2, "must be True or False", pc.and_(present, pc.invert(pc.is_in(values, value_set=_BOOLS)))
    elif col.kind is Kind.CATEGORY:
        allowed = pa.array(col.categories)
        yield (
            2,
            f"must be one of {', '.join(col.categories)}",
            pc.and_(present, pc.invert(pc.is_in(values, value_set=allowed))),
        )


def _date_rules(
    col: Col, values: pa.Array, shaped: pa.Array, as_of: date | None
) -> Iterator[tuple[int, str, pa.Array]]:
    """Dates are checked as dates (date32), never through pandas' nanosecond timestamps."""
    candidates = pc.if_else(shaped, values, "2000-01-01")
    try:
        days = pc.cast(candidates, pa.date32())
        real = pc.greater_equal(pc.year(days), 1)  # PostgreSQL has no year 0
    except pa.ArrowInvalid:  # some value is not a calendar date: find which, one by one
        parsed = [_iso_date(v) for v in candidates.to_pylist()]
        days = pa.array([d or date(2000, 1, 1) for d in parsed], pa.date32())
        real = pa.array([d is not None for d in parsed])
    yield 3, "must be a real calendar date", pc.and_(shaped, pc.invert(real))
    if col.not_after_as_of and as_of is not None:
        late = pc.and_(pc.and_(shaped, real), pc.greater(days, pa.scalar(as_of, pa.date32())))
        yield 4, f"must not be after as_of {as_of}", late


def _iso_date(text: str) -> date | None:
    try:
        return date.fromisoformat(text)  # the shape is checked already; year 0 and Feb 30 fail here
    except ValueError:
        return None


def first_bad_utf8(column: pa.Array) -> tuple[int, int]:
    """(row, first bad byte) of the first value that is not UTF-8."""
    for i, value in enumerate(column.to_pylist()):
        if value is None:
            continue
        try:
            value.decode("utf-8")
        except UnicodeDecodeError as exc:
            return i, value[exc.start]
    return 0, 0


def cross_column_rules(
    contract: FileContract, strings: list[pa.Array | None]
) -> list[tuple[int, int, str, pa.Array]]:
    """(column index, order, rule, mask) of the rules between two columns of the same rows (blank_when)."""
    out = []
    names = contract.names
    for i, col in enumerate(contract.columns):
        if col.blank_when is None:
            continue
        other, value = col.blank_when
        mine, theirs = strings[i], strings[names.index(other)]
        if mine is None or theirs is None:
            continue
        other_col = contract.columns[names.index(other)]
        comparable = pc.and_(
            pc.is_in(theirs, value_set=pa.array(other_col.categories or [value])),
            pc.or_(pc.is_null(mine), pc.is_in(mine, value_set=_BOOLS)),
        )
        wrong = pc.not_equal(pc.is_null(mine), pc.fill_null(pc.equal(theirs, value), False))
        rule = f"must be blank exactly when {other} is {value}"
        mask = pc.fill_null(pc.and_(comparable, wrong), False)
        if pc.any(mask).as_py():
            out.append((i, 9, rule, mask))
    return out
