"""Validate a month folder against the export contract, block by block, while it is being loaded.

``open_month`` does the cheap checks (the as_of, the folder, each file's kind, header and sha256)
and returns a ``MonthReader``. Each of its ``FileReader``\\ s streams its file in blocks: a block is
checked (pyarrow compute, every rule of ``contracts.py``) and, while no violation is known, handed to
the ingestion as CSV bytes for ``COPY ... (FORMAT csv)`` (``csv_dialect.write_block``). Violations are
collected, not raised; ``MonthReader.finish`` adds the rules across files and raises one
``ContractError`` listing everything: file, column, rule, a count and a few examples with their line
number, user id and value. Nothing here writes anything.

Cost is bounded on any input: a file stops being read after ``MAX_FAILING_VALUES`` failing values or
after its first malformed block (rows with a wrong number of fields, bytes that are not UTF-8, a line
longer than ``csv_dialect.MAX_LINE_BYTES``), and says where it stopped. Memory is a few blocks per file
plus each file's user ids (about 14 bytes per row) and their 64-bit hashes while it is read.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import stat
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path

from streamflow.data import csv_dialect
from streamflow.data.contracts import CONTRACTS, FileContract
from streamflow.data.month_reader import MAX_FAILING_VALUES, FileReader, MonthReader
from streamflow.data.violations import MAX_EXAMPLES, ContractError, Violation, shown_names

__all__ = [
    "MAX_EXAMPLES",
    "MAX_FAILING_VALUES",
    "ContractError",
    "FileReader",
    "MonthReader",
    "ValidMonth",
    "Violation",
    "open_month",
    "parse_as_of",
    "validate_month",
]

_HASH_CHUNK = 1 << 20
_AS_OF = re.compile(r"\d{4}-\d{2}-\d{2}")


# --- open_month: the cheap checks -------------------------------------------------------------------


def open_month(
    month_dir: Path | str,
    as_of: str | date,
    *,
    allow_incomplete: bool = False,
    today: date | None = None,
    block_size: int = csv_dialect.BLOCK_BYTES,
) -> MonthReader:
    """Check what can be checked without reading the data, and return a reader of the month.

    Checks: ``as_of`` is a date written YYYY-MM-DD and not after ``today`` (default: today, local or
    UTC, whichever is later); the folder is a folder; each of the six files is a regular, readable
    file; its header (parsed by the CSV parser) names each contract column once and nothing else;
    the sha256 of its bytes. Files in the folder that are not part of the export are listed in
    ``MonthReader.warnings``.

    Raises ContractError when any of these fails. The error then also lists the data violations of
    every file whose header was fine (they are read, never loaded), so one run reports everything.
    ``allow_incomplete``: users of users.csv without a row in another file are a warning, not an error.
    ``block_size``: bytes parsed at a time (tests use small blocks to exercise block boundaries).
    """
    month_dir = Path(month_dir)
    problems: list[Violation] = []
    as_of_date = _check_as_of(as_of, today, problems)
    month = MonthReader(month_dir, as_of_date, allow_incomplete=allow_incomplete)
    names = _check_folder(month_dir, problems)
    if names is not None:
        expected = {c.filename for c in CONTRACTS}
        unexpected = sorted(n for n in names if n not in expected)
        if unexpected:
            month.warnings.append(
                f"{month_dir}: {len(unexpected)} unexpected file(s), not loaded: " + ", ".join(unexpected)
            )
        files = []
        for contract in CONTRACTS:
            reader = _open_file(month, contract, month_dir / contract.filename, block_size, problems)
            if reader is not None:
                files.append(reader)
        month.files = tuple(files)
    month._problems = problems
    if problems:
        month.finish()  # reads the files it can, raises with everything
    return month


def parse_as_of(value: str | date, today: date | None = None) -> date:
    """``value`` as a snapshot date (YYYY-MM-DD, not after today), or a ContractError saying why."""
    problems: list[Violation] = []
    parsed = _check_as_of(value, today, problems)
    if parsed is None or problems:
        raise ContractError("--as-of", problems)
    return parsed


def _check_as_of(value: str | date, today: date | None, problems: list[Violation]) -> date | None:
    if isinstance(value, datetime):
        parsed: date | None = value.date()
    elif isinstance(value, date):
        parsed = value
    else:
        parsed = None
        if isinstance(value, str) and _AS_OF.fullmatch(value):
            try:
                parsed = date.fromisoformat(value)
            except ValueError:
                parsed = None
        if parsed is None:
            problems.append(Violation("--as-of", f"'{value}' is not a date YYYY-MM-DD"))
            return None
    today = today or max(date.today(), datetime.now(UTC).date())
    if parsed > today:
        problems.append(Violation("--as-of", f"{parsed} is in the future (today is {today})"))
    return parsed


def _check_folder(month_dir: Path, problems: list[Violation]) -> list[str] | None:
    """The folder's entries, or None (with the problem recorded) when it is not a readable folder."""
    where = str(month_dir)
    problem = _kind_problem(month_dir, want_dir=True)
    if problem is None:
        try:
            return os.listdir(month_dir)
        except OSError as exc:
            problem = f"folder cannot be listed: {exc.strerror or exc}"
    problems.append(Violation(where, problem))
    return None


def _kind_problem(path: Path, *, want_dir: bool) -> str | None:
    """What is wrong with ``path`` as a folder (want_dir) or a regular file, said as what it is."""
    missing = "folder does not exist" if want_dir else "file is missing"
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return missing
    except OSError as exc:
        return f"cannot be read: {exc.strerror or exc}"
    if stat.S_ISLNK(st.st_mode):
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return f"is a dangling symlink (to {os.readlink(path)}, which does not exist)"
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                return "is a symlink loop"
            return f"cannot be read: {exc.strerror or exc}"
    if want_dir:
        return None if stat.S_ISDIR(st.st_mode) else "is not a folder"
    if stat.S_ISDIR(st.st_mode):
        return "is a folder, not a file"
    if not stat.S_ISREG(st.st_mode):
        return "is not a regular file (a FIFO, socket or device)"
    return None


def _open_file(
    month: MonthReader, contract: FileContract, path: Path, block_size: int, problems: list[Violation]
) -> FileReader | None:
    name = contract.filename
    problem = _kind_problem(path, want_dir=False)
    if problem is not None:
        problems.append(Violation(name, problem))
        return None
    digest = hashlib.sha256()
    size = 0
    prefix = b""
    try:
        with open(path, "rb") as fh:
            while chunk := fh.read(_HASH_CHUNK):
                digest.update(chunk)
                size += len(chunk)
                if len(prefix) <= csv_dialect.MAX_LINE_BYTES:
                    prefix += chunk[: csv_dialect.MAX_LINE_BYTES + 1 - len(prefix)]
    except OSError as exc:
        problems.append(Violation(name, f"cannot be read: {exc.strerror or exc}"))
        return None
    if not prefix.strip() and size == len(prefix):
        problems.append(Violation(name, "file is empty (expected a header row and data rows)"))
        return None
    line, problem = csv_dialect.first_line(prefix, at_eof=size == len(prefix))
    header = csv_dialect.parse_header(line) if line is not None else csv_dialect.Header(problem=problem)
    if header.problem:
        problems.append(Violation(name, header.problem))
        return None
    found = header.names
    header_problems = []
    twice = [n for n, k in Counter(found).items() if k > 1]
    if twice:
        header_problems.append(f"duplicate column(s): {shown_names(twice)}")
    missing = [n for n in contract.names if n not in found]
    if missing:
        header_problems.append(f"missing required column(s): {shown_names(missing)}")
    unknown = list(dict.fromkeys(n for n in found if n not in contract.names))
    if unknown:
        header_problems.append(f"unexpected column(s): {shown_names(unknown)}")
    if header_problems:
        problems.extend(Violation(name, p) for p in header_problems)
        return None
    positions = tuple(found.index(n) for n in contract.names)
    return FileReader(month, contract, path, digest.hexdigest(), size, positions, len(found), block_size)


# --- the whole month at once --------------------------------------------------------------------------


@dataclass
class ValidMonth:
    month_dir: Path
    as_of: date
    files: dict[str, FileReader] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def validate_month(
    month_dir: Path | str,
    as_of: str | date,
    *,
    allow_incomplete: bool = False,
    today: date | None = None,
    block_size: int = csv_dialect.BLOCK_BYTES,
) -> ValidMonth:
    """Validate every file of a month without loading it; raise one ContractError listing everything."""
    month = open_month(
        month_dir, as_of, allow_incomplete=allow_incomplete, today=today, block_size=block_size
    )
    month.finish()
    files = {f.contract.table: f for f in month.files}
    return ValidMonth(month.month_dir, month.as_of, files, month.warnings)
