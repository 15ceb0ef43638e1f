"""Validate a month folder against the export contract before anything touches the database.

Every problem is collected (pandera's lazy mode) and reported as file, column, rule, a count and a
few examples with their CSV line number, user id and value. Nothing here writes anything.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import pandas as pd
import pandera.pandas as pa
import pyarrow as pa_arrow
import pyarrow.compute as pc
from pyarrow import csv as pa_csv

from streamflow.data.contracts import CONTRACTS, ID_PATTERN, SUBSCRIPTIONS, USERS, Col, FileContract, Kind

MAX_EXAMPLES = 5
_PATTERNS = {
    Kind.ID: (ID_PATTERN, "user id: 1-64 letters, digits, '-', '_' or '.'"),
    Kind.INT: (r"^[+-]?\d+$", "an integer"),
    Kind.DECIMAL: (r"^[+-]?\d+(\.\d{1,2})?$", "a decimal with at most 2 places"),
    Kind.FLOAT: (r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$", "a number"),
    Kind.DATE: (r"^\d{4}-\d{2}-\d{2}$", "a date YYYY-MM-DD"),
}
_HEADER_LINE = 1  # CSV line numbers count the header as line 1


@dataclass(frozen=True)
class Violation:
    file: str
    rule: str
    column: str | None = None
    count: int = 1
    examples: tuple[str, ...] = ()

    def __str__(self) -> str:
        where = f"{self.file}: column '{self.column}'" if self.column else self.file
        text = f"{where}: {self.rule}"
        if self.examples:
            rows = "row" if self.count == 1 else "rows"
            text += f" ({self.count} {rows}; e.g. " + "; ".join(self.examples) + ")"
        return text


class ContractError(ValueError):
    """A month folder breaks the export contract. Carries every violation found."""

    def __init__(self, month_dir: Path | str, violations: list[Violation]) -> None:
        self.month_dir = str(month_dir)
        self.violations = violations
        lines = "\n".join(f"  - {v}" for v in violations)
        super().__init__(f"{self.month_dir}: {len(violations)} contract violation(s):\n{lines}")


@dataclass
class ValidFile:
    contract: FileContract
    data: bytes  # exactly what was validated; this is what gets loaded
    header: tuple[str, ...]
    rows: int
    sha256: str


@dataclass
class ValidMonth:
    month_dir: Path
    as_of: date
    files: dict[str, ValidFile] = field(default_factory=dict)


def parse_as_of(value: str | date) -> date:
    if isinstance(value, date):
        return value
    try:
        return date.fromisoformat(value)
    except (TypeError, ValueError):
        raise ContractError("as_of", [Violation("--as-of", f"'{value}' is not a date YYYY-MM-DD")]) from None


def _arrow(series: pd.Series) -> pa_arrow.Array:
    return pa_arrow.array(series)


def _mask(series: pd.Series, result: pa_arrow.Array) -> pd.Series:
    """A pandera check result: True where the value passes (nulls are pandera's nullable check's job)."""
    return pd.Series(pc.fill_null(result, True).to_numpy(zero_copy_only=False), index=series.index)


def _matches(pattern: str):
    return lambda s: _mask(s, pc.match_substring_regex(_arrow(s), pattern))


def _one_of(values: tuple[str, ...]):
    return lambda s: _mask(s, pc.is_in(_arrow(s), value_set=pa_arrow.array(values)))


def _real_date(s: pd.Series) -> pd.Series:
    arr = _arrow(s)
    shaped = pc.match_substring_regex(arr, _PATTERNS[Kind.DATE][0])
    candidates = pc.if_else(shaped, arr, "2000-01-01")
    parsed = pc.strptime(candidates, format="%Y-%m-%d", unit="s", error_is_null=True)
    # strptime rolls 2022-02-30 over to 2022-03-02: a real date is one that prints back unchanged.
    real = pc.equal(pc.strftime(parsed, format="%Y-%m-%d"), candidates)
    return _mask(s, pc.or_(pc.invert(shaped), real))


def _within(kind: Kind, lo: float, hi: float):
    def check(s: pd.Series) -> pd.Series:
        # Values that are not numbers fail the format check, not this one.
        arr = _arrow(s)
        shaped = pc.match_substring_regex(arr, _PATTERNS[kind][0])
        numbers = pc.cast(pc.if_else(shaped, arr, "0"), pa_arrow.float64())
        inside = pc.and_(pc.greater_equal(numbers, lo), pc.less_equal(numbers, hi))
        return _mask(s, pc.or_(pc.invert(shaped), inside))

    return check


def _checks(col: Col) -> list[pa.Check]:
    """Vectorised (pyarrow compute) checks: a million-row month validates in seconds."""
    checks: list[pa.Check] = []
    if col.kind in _PATTERNS:
        pattern, what = _PATTERNS[col.kind]
        checks.append(pa.Check(_matches(pattern), error=f"must be {what}"))
    if col.kind is Kind.BOOL:
        checks.append(pa.Check(_one_of(("True", "False")), error="must be True or False"))
    if col.kind is Kind.CATEGORY:
        checks.append(pa.Check(_one_of(col.categories), error=f"must be one of {', '.join(col.categories)}"))
    if col.kind is Kind.DATE:
        checks.append(pa.Check(_real_date, error="must be a real calendar date"))
    if col.min is not None or col.max is not None:
        lo = col.min if col.min is not None else float("-inf")
        hi = col.max if col.max is not None else float("inf")
        checks.append(pa.Check(_within(col.kind, lo, hi), error=f"must be between {lo:g} and {hi:g}"))
    return checks


def _schema(contract: FileContract) -> pa.DataFrameSchema:
    return pa.DataFrameSchema(
        {
            c.name: pa.Column(checks=_checks(c), nullable=c.nullable, unique=c.kind is Kind.ID)
            for c in contract.columns
        },
        strict=True,
        name=contract.filename,
    )


def _read(path: Path, contract: FileContract, problems: list[Violation]) -> tuple[bytes, pd.DataFrame] | None:
    name = contract.filename
    if not path.is_file():
        problems.append(Violation(name, "file is missing"))
        return None
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        problems.append(
            Violation(name, f"line {line}: byte 0x{data[exc.start]:02x} is not UTF-8 (files must be UTF-8)")
        )
        return None
    if not text.strip():
        problems.append(Violation(name, "file is empty (expected a header row and data rows)"))
        return None
    bad_rows: list[str] = []

    def invalid_row(row: pa_csv.InvalidRow) -> str:
        # row.number counts the header as row 1, like our line numbers.
        bad_rows.append(f"line {row.number}: {row.actual_columns} fields, header has {row.expected_columns}")
        return "skip"

    try:
        table = pa_csv.read_csv(
            io.BytesIO(data),
            parse_options=pa_csv.ParseOptions(invalid_row_handler=invalid_row),
            convert_options=pa_csv.ConvertOptions(
                column_types=_all_strings(data), strings_can_be_null=True, null_values=[""]
            ),
            read_options=pa_csv.ReadOptions(use_threads=False),  # keeps invalid-row numbers exact
        )
    except pa_arrow.ArrowInvalid as exc:
        problems.append(Violation(name, f"malformed CSV: {exc}"))
        return None
    if bad_rows:
        shown = "; ".join(bad_rows[:MAX_EXAMPLES])
        problems.append(
            Violation(name, f"malformed CSV: {len(bad_rows)} row(s) with a wrong number of fields: {shown}")
        )
        return None
    frame = table.to_pandas(types_mapper=lambda _: pd.StringDtype("pyarrow"))
    if frame.empty:
        problems.append(Violation(name, "has a header but no data rows"))
        return None
    return data, frame


def _all_strings(data: bytes) -> dict[str, pa_arrow.DataType]:
    """Read every column as text: types are the contract's to check, not the CSV reader's to guess."""
    header = data.split(b"\n", 1)[0].decode("utf-8-sig").strip().split(",")
    return {name.strip('"'): pa_arrow.string() for name in header}


def _example(frame: pd.DataFrame, index: object, value: object) -> str:
    line = int(index) + _HEADER_LINE + 1  # type: ignore[call-overload]
    uid = frame.at[index, "user_id"] if "user_id" in frame.columns else None
    shown = "blank" if value is None or (isinstance(value, float) and pd.isna(value)) else repr(str(value))
    who = f" (user_id {uid})" if isinstance(uid, str) else ""
    return f"line {line}{who}: {shown}"


def _schema_violations(err: pa.errors.SchemaErrors, frame: pd.DataFrame, name: str) -> list[Violation]:
    cases = err.failure_cases
    out: list[Violation] = []
    is_frame = cases["schema_context"] == "DataFrameSchema"
    frame_level = cases[is_frame]
    for check, group in frame_level.groupby("check", sort=False):
        missing = ", ".join(sorted(group["failure_case"].astype(str)))
        rule = {
            "column_in_schema": f"unexpected column(s): {missing}",
            "column_in_dataframe": f"missing required column(s): {missing}",
        }.get(str(check), f"{check}: {missing}")
        out.append(Violation(name, rule))
    column_level = cases[~is_frame]
    for (column, check), group in column_level.groupby(["column", "check"], sort=False):
        rule = {"not_nullable": "must not be blank", "field_uniqueness": "must be unique"}.get(
            str(check), str(check)
        )
        rows = group.dropna(subset=["index"]).drop_duplicates(subset=["index"]).sort_values("index")
        examples = tuple(
            _example(frame, r.index, r.failure_case) for r in rows.head(MAX_EXAMPLES).itertuples()
        )
        out.append(Violation(name, rule, str(column), count=max(len(rows), 1), examples=examples))
    return out


def _id_violations(frame: pd.DataFrame, name: str, known: pa_arrow.Array, rule: str) -> list[Violation]:
    ids = _arrow(frame["user_id"])
    unknown = frame.index[pc.invert(pc.is_in(ids, value_set=known)).to_numpy(zero_copy_only=False)]
    if not len(unknown):
        return []
    examples = tuple(_example(frame, i, frame.at[i, "user_id"]) for i in unknown[:MAX_EXAMPLES])
    return [Violation(name, rule, "user_id", count=len(unknown), examples=examples)]


def _plan_violations(subs: pd.DataFrame) -> list[Violation]:
    """Streaming plans are blank for users without internet, and only for them."""
    out = []
    no_internet = subs["net_service"] == "No"
    for column in ("plan_stream_tv", "plan_stream_movies"):
        bad = subs.index[subs[column].isna() != no_internet]
        if len(bad):
            examples = tuple(_example(subs, i, subs.at[i, column]) for i in bad[:MAX_EXAMPLES])
            rule = "must be blank exactly when net_service is No"
            out.append(Violation(SUBSCRIPTIONS.filename, rule, column, len(bad), examples))
    return out


def validate_month(month_dir: Path | str, as_of: str | date) -> ValidMonth:
    """Check all six files; return their validated bytes or raise one ContractError listing everything."""
    month_dir = Path(month_dir)
    as_of_date = parse_as_of(as_of)
    if not month_dir.is_dir():
        raise ContractError(month_dir, [Violation(str(month_dir), "folder does not exist")])
    problems: list[Violation] = []
    month = ValidMonth(month_dir, as_of_date)
    frames: dict[str, pd.DataFrame] = {}
    for contract in CONTRACTS:
        read = _read(month_dir / contract.filename, contract, problems)
        if read is None:
            continue
        data, frame = read
        try:
            _schema(contract).validate(frame, lazy=True)
        except pa.errors.SchemaErrors as err:
            problems.extend(_schema_violations(err, frame, contract.filename))
            continue
        frames[contract.table] = frame
        month.files[contract.table] = ValidFile(
            contract, data, tuple(frame.columns), len(frame), hashlib.sha256(data).hexdigest()
        )
    subs = frames.get(SUBSCRIPTIONS.table)
    if subs is not None:
        problems.extend(_plan_violations(subs))
    users = frames.get(USERS.table)
    if users is not None:
        late = users.index[pd.to_datetime(users["signup_date"]).dt.date > as_of_date]
        if len(late):
            examples = tuple(_example(users, i, users.at[i, "signup_date"]) for i in late[:MAX_EXAMPLES])
            problems.append(
                Violation(
                    USERS.filename,
                    f"must not be after as_of {as_of_date}",
                    "signup_date",
                    len(late),
                    examples,
                )
            )
        known = _arrow(users["user_id"])
        for table, frame in frames.items():
            if table != USERS.table:
                problems.extend(
                    _id_violations(frame, f"{table}.csv", known, f"user_id not found in {USERS.filename}")
                )
    if problems:
        raise ContractError(month_dir, problems)
    return month
