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
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from streamflow.data import csv_dialect
from streamflow.data.contracts import CONTRACTS, ID_PATTERN, USERS, Col, FileContract, Kind

MAX_EXAMPLES = 5
MAX_FAILING_VALUES = 1000
"""A file stops being read once this many of its values broke a rule (counts are then lower bounds)."""
_SHOWN = 40  # characters of a value shown in a message
_HASH_CHUNK = 1 << 20
_PATTERNS = {
    Kind.ID: (ID_PATTERN, "a user id: 1-64 letters, digits, '-', '_' or '.'"),
    Kind.INT: (r"^[+-]?\d+$", "an integer"),
    Kind.DECIMAL: (r"^[+-]?\d+(\.\d{1,2})?$", "a decimal with at most 2 places"),
    Kind.FLOAT: (r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$", "a number"),
    Kind.DATE: (r"^\d{4}-\d{2}-\d{2}$", "a date YYYY-MM-DD"),
}
_BOOLS = pa.array(["True", "False"])
_AS_OF = re.compile(r"\d{4}-\d{2}-\d{2}")
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
        header_problems.append(f"duplicate column(s): {_names(twice)}")
    missing = [n for n in contract.names if n not in found]
    if missing:
        header_problems.append(f"missing required column(s): {_names(missing)}")
    unknown = list(dict.fromkeys(n for n in found if n not in contract.names))
    if unknown:
        header_problems.append(f"unexpected column(s): {_names(unknown)}")
    if header_problems:
        problems.extend(Violation(name, p) for p in header_problems)
        return None
    positions = tuple(found.index(n) for n in contract.names)
    return FileReader(month, contract, path, digest.hexdigest(), size, positions, len(found), block_size)


def _names(names: Iterable[str], most: int = 10) -> str:
    names = list(names)
    shown = ", ".join(n if _PLAIN_NAME.fullmatch(n) else repr(_uid(n)) for n in names[:most])
    return shown if len(names) <= most else f"{shown}, … ({len(names):,} in all)"


# --- reading -----------------------------------------------------------------------------------------


class MonthReader:
    """One month being validated (and, by the ingestion, loaded) file by file.

    ``files`` are in ``contracts.CONTRACTS`` order. They share no state until ``finish``, so they may
    be read in any order, one after the other or from different threads. ``failed`` turns True as
    soon as any violation is known: from then on no file yields data, and the ingestion can stop
    sending. ``finish`` reads whatever was not read yet, applies the rules across files and raises
    one ContractError with every violation of every file.
    """

    def __init__(self, month_dir: Path, as_of: date | None, *, allow_incomplete: bool = False) -> None:
        self.month_dir = month_dir
        self.as_of = as_of  # type: ignore[assignment]  # None only inside a failing open_month
        self.warnings: list[str] = []
        self.files: tuple[FileReader, ...] = ()
        self.allow_incomplete = allow_incomplete
        self._problems: list[Violation] = []
        self._cross: list[Violation] = []
        self._finished = False

    @property
    def failed(self) -> bool:
        return bool(self._problems) or any(f.failed for f in self.files)

    def file(self, table: str) -> FileReader:
        return next(f for f in self.files if f.contract.table == table)

    def violations(self) -> list[Violation]:
        """Every violation known so far, month-level first, then file by file in contract order."""
        general = [v for v in self._problems if v.file not in _FILENAMES]
        out = list(general)
        for contract in CONTRACTS:
            name = contract.filename
            out += [v for v in self._problems if v.file == name]
            reader = next((f for f in self.files if f.contract is contract), None)
            if reader is not None:
                out += reader.violations()
            out += [v for v in self._cross if v.file == name]
        return out

    def finish(self) -> None:
        """Read what is left (nothing more is yielded), check across files, raise if anything failed."""
        if not self._finished:
            for f in self.files:
                f._drain()
            self._cross_file_rules()
            self._finished = True
        violations = self.violations()
        if violations:
            raise ContractError(self.month_dir, violations)

    def close(self) -> None:
        """Close every file still open (a reader abandoned halfway, e.g. on a database error)."""
        for f in self.files:
            f._close()

    def __enter__(self) -> MonthReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _cross_file_rules(self) -> None:
        users = next((f for f in self.files if f.contract is USERS), None)
        if users is None or not users._ids_usable():
            return
        user_ids = users._id_array()
        for f in self.files:
            if f is users or not f._ids_usable():
                continue
            ids = f._id_array()
            if ids.equals(user_ids):  # same users in the same order: the common case, a memcmp
                continue
            known = pc.is_in(ids, value_set=user_ids).to_numpy(zero_copy_only=False)
            if not known.all():
                unknown = np.flatnonzero(~known)
                lines = f._id_lines()[unknown[:MAX_EXAMPLES]]
                shown = ids.take(pa.array(unknown[:MAX_EXAMPLES])).to_pylist()
                examples = tuple(_example(int(n), u, u) for n, u in zip(lines, shown, strict=True))
                rule = f"user_id not found in {USERS.filename}"
                self._cross.append(Violation(f.contract.filename, rule, "user_id", len(unknown), examples))
            present = pc.is_in(user_ids, value_set=ids).to_numpy(zero_copy_only=False)
            if not present.all():
                absent = np.flatnonzero(~present)
                lines = users._id_lines()[absent[:MAX_EXAMPLES]]
                shown = user_ids.take(pa.array(absent[:MAX_EXAMPLES])).to_pylist()
                examples = tuple(
                    f"{USERS.filename} line {int(n)} (user_id {_uid(u)})"
                    for n, u in zip(lines, shown, strict=True)
                )
                if self.allow_incomplete:
                    self.warnings.append(
                        f"{f.contract.filename}: {len(absent):,} user(s) of {USERS.filename} have no row"
                        f" (allowed by allow_incomplete; e.g. " + "; ".join(examples) + ")"
                    )
                else:
                    rule = (
                        f"every user in {USERS.filename} must have a row here"
                        " (allow_incomplete / --allow-incomplete loads the month without them)"
                    )
                    self._cross.append(
                        Violation(f.contract.filename, rule, "user_id", len(absent), examples, unit="user")
                    )


_FILENAMES = frozenset(c.filename for c in CONTRACTS)


class _Tally:
    """One rule broken in one file: how often, and the first few examples."""

    __slots__ = ("column", "count", "examples", "order", "rule", "unit")

    def __init__(self, rule: str, column: str | None, order: tuple[int, int], unit: str = "row") -> None:
        self.rule, self.column, self.order, self.unit = rule, column, order, unit
        self.count = 0
        self.examples: list[str] = []


class FileReader:
    """One file of a month, validated block by block as ``chunks()`` is iterated (once)."""

    def __init__(
        self,
        month: MonthReader,
        contract: FileContract,
        path: Path,
        sha256: str,
        size: int,
        positions: tuple[int, ...],
        n_columns: int,
        block_size: int,
    ) -> None:
        self.contract = contract
        self.path = path
        self.sha256 = sha256
        self.size = size  # bytes, as hashed
        self.rows = 0  # data rows, final once chunks() is exhausted
        self.bytes_read = 0  # of the file, so far (for progress)
        self._month = month
        self._positions = positions  # the file's column index of each contract column
        self._n_columns = n_columns
        self._block_size = block_size
        # A line longer than a block cannot be parsed: with test-sized blocks that is the limit.
        self._max_line = min(csv_dialect.MAX_LINE_BYTES, block_size)
        self._render = True
        self._iterator: Iterator[bytes] | None = None
        self._closed = False
        self._tallies: dict[tuple[str | None, str], _Tally] = {}
        self._malformed: list[tuple[int, int]] = []  # (line, fields) of rows with a wrong field count
        self._malformed_count = 0
        self._stopped: str | None = None
        self._complete = False  # read to the end, nothing skipped
        self._failing = 0
        self._next_line = 2  # physical line of the next row (the header is line 1)
        self._next_row = 2  # pyarrow's row number of the next row (rows, not lines)
        self._queued: list[tuple[int, int, int]] = []  # invalid rows not placed yet: (row, fields, breaks)
        self._abort_row: int | None = None  # the invalid row past MAX_FAILING_VALUES that aborted the parse
        self._block_malformed = False
        self._pending_empty: list[int] = []  # empty lines not yet known to be at the end (first few)
        self._pending_empty_count = 0
        self._dup_violation: Violation | None = None
        self._ids: list[pa.Array] = []
        self._lines: list[tuple[int, np.ndarray | None, int]] = []  # per ids chunk: (first, lines, n)
        self._hashes = _HashSet()
        self._id_count = 0
        self._ids_gap = False  # some data row's user id was not kept (an over-long or non-UTF-8 row)
        self._follows_users: bool | None = None  # ids so far equal users.csv's first ones (so unique)
        self._duplicates = False
        self._aligned_with: FileReader | None = None  # ids known equal to users.csv's, dropped

    # -- public ------------------------------------------------------------------------------------

    @property
    def failed(self) -> bool:
        return bool(self._tallies or self._malformed_count or self._stopped or self._duplicates)

    def chunks(self) -> Iterator[bytes]:
        """Validated blocks as CSV bytes without header, columns in ``contract.names`` order.

        One pass: a second call returns the same iterator. Stops yielding (but keeps validating, within
        the bounds above) as soon as the month has a violation.
        """
        if self._iterator is None:
            self._iterator = self._read()
        return self._iterator

    def violations(self) -> list[Violation]:
        name = self.contract.filename
        out: list[Violation] = []
        if self._malformed_count:
            shown = "; ".join(
                f"line {line}: {fields} fields, header has {self._n_columns}"
                for line, fields in self._malformed[:MAX_EXAMPLES]
            )
            out.append(
                Violation(
                    name,
                    f"malformed CSV: {self._malformed_count:,} row(s) with a wrong number of fields: {shown}",
                )
            )
        for tally in sorted(self._tallies.values(), key=lambda t: t.order):
            examples = tuple(tally.examples)
            out.append(Violation(name, tally.rule, tally.column, tally.count, examples, tally.unit))
        if self._duplicates:
            out.append(self._dup_violation or Violation(name, "must be unique", "user_id"))
        if self._stopped:
            out.append(Violation(name, self._stopped))
        return out

    # -- reading -----------------------------------------------------------------------------------

    def _drain(self) -> None:
        if self._iterator is None:
            self._render = False
        for _ in self.chunks():
            pass
        if not self._complete and not self._stopped:  # closed before it even started
            self._stopped = f"reading stopped at line {self._next_line - 1} (closed)"

    def _close(self) -> None:
        if self._iterator is not None and not self._complete and not self._stopped:
            self._closed = True
            self._iterator.close()  # type: ignore[attr-defined]

    def _read(self) -> Iterator[bytes]:
        try:
            with open(self.path, "rb") as raw:
                source = _Hashing(raw, self)
                try:
                    reader = csv_dialect.data_reader(
                        source, self._n_columns, self._block_size, self._on_invalid_row
                    )
                    while not self._stopped:
                        try:
                            batch = reader.read_next_batch()
                        except StopIteration:
                            self._end_of_data(source)
                            break
                        block = self._check(batch)
                        if block is not None:
                            yield block
                        enough = self._failing >= MAX_FAILING_VALUES or self._block_malformed
                        if enough and not self._stopped:
                            self._stop_early(reader)
                except pa.ArrowException as exc:
                    self._arrow_error(exc)
        except OSError as exc:
            self._stopped = f"could not be read past line {self._next_line - 1}: {exc.strerror or exc}"
        except GeneratorExit:
            self._closed = True
            raise
        finally:
            if self._closed and not self._complete:
                self._stopped = self._stopped or f"reading stopped at line {self._next_line - 1} (closed)"
            self._file_done()

    def _stop_early(self, reader) -> None:
        why = (
            "after the first malformed block"
            if self._block_malformed
            else f"after {self._failing:,} failing values"
        )
        at = self._next_line - 1
        saved = (self._malformed_count, list(self._queued), self._abort_row, self._failing)
        try:
            reader.read_next_batch()  # is anything left?
        except StopIteration:
            self._place_queued()
            return  # no: the whole file was checked
        except pa.ArrowException:
            pass
        # Rows past the stop do not count.
        self._malformed_count, self._queued, self._abort_row, self._failing = saved
        self._stopped = f"stopped reading at line {at:,} {why}; the rest of the file was not checked"

    def _arrow_error(self, exc: pa.ArrowException) -> None:
        message = str(exc).removeprefix("CSV parse error: ").strip()
        self._place_queued()
        at = self._next_line
        if self._abort_row is not None:
            at = self._next_line + (self._abort_row - self._next_row)
            self._stopped = (
                f"stopped reading at line {at:,} after {self._malformed_count:,} rows with a wrong number"
                " of fields; the rest of the file was not checked"
            )
        elif "straddl" in message:
            self._tally(None, f"line longer than {self._max_line:,} bytes", [f"line {at}"], 1, (-1, 0))
            self._stopped = f"stopped reading at line {at:,}; the rest of the file was not checked"
        else:
            self._stopped = (
                f"malformed CSV at line {at:,}: {message[:200]}; the rest of the file was not checked"
            )

    def _on_invalid_row(self, row) -> str:
        """pyarrow's callback for a row with a wrong number of fields (called ahead of its batch)."""
        number = row.number if row.number is not None else self._next_row
        if self._malformed_count >= MAX_FAILING_VALUES:
            self._abort_row = number
            return "error"  # garbage: stop parsing now
        self._queued.append((number, row.actual_columns, csv_dialect.text_line_breaks(row.text or "")))
        self._malformed_count += 1
        self._failing += 1
        return "skip"

    def _place_queued(self) -> None:
        """Invalid rows reported after the last batch: they follow it."""
        for number, fields, breaks in self._queued:
            line = self._next_line + (number - self._next_row)
            self._note_malformed(line, fields)
            self._next_line = line + 1 + breaks
            self._next_row = number + 1
        self._queued = []

    def _note_malformed(self, line: int, fields: int) -> None:
        if len(self._malformed) < MAX_EXAMPLES:
            self._malformed.append((line, fields))

    def _end_of_data(self, source: _Hashing) -> None:
        self._place_queued()
        self._pending_empty, self._pending_empty_count = [], 0  # empty lines at the end are allowed
        if not self.failed and self.rows == 0:
            self._tally(None, "has a header but no data rows", [], 0, (-1, 1))
        if source.sha256.hexdigest() != self.sha256 or source.size != self.size:
            self._ids_gap = True
            self._tally(
                None,
                "file changed while it was being read (its bytes no longer have the sha256 computed first)",
                [],
                0,
                (-1, 2),
            )
        self._complete = not self._stopped

    # -- one block ---------------------------------------------------------------------------------

    def _check(self, batch: pa.RecordBatch) -> bytes | None:
        """Check one batch; its CSV bytes when it is clean and the month has not failed, else None."""
        self._block_malformed = False
        n = batch.num_rows
        row0, line0 = self._next_row, self._next_line
        placed = []
        while self._queued and self._queued[0][0] < row0 + n + len(placed):
            placed.append(self._queued.pop(0))
        span = n + len(placed)
        raw = [batch.column(i) for i in range(batch.num_columns)]

        # Rows that are not data: empty lines (all fields null) and over-long lines.
        contract_raw = [raw[p] for p in self._positions]
        skip = None
        empty_np = None
        if raw[self._positions[0]].null_count:
            empty = pc.is_null(raw[0])
            for c in raw[1:]:
                empty = pc.and_(empty, pc.is_null(c))
            if pc.any(empty).as_py():
                empty_np = empty.to_numpy(zero_copy_only=False)
        lengths = csv_dialect.row_bytes(raw)
        too_long_np = None
        if n and pc.max(lengths).as_py() > self._max_line:
            too_long_np = pc.greater(lengths, self._max_line).to_numpy(zero_copy_only=False)
        if empty_np is not None or too_long_np is not None:
            skip = np.zeros(n, dtype=bool)
            if empty_np is not None:
                skip |= empty_np
            if too_long_np is not None:
                skip |= too_long_np
            if not skip.any():
                skip = None
        keep = None if skip is None else np.flatnonzero(~skip)
        cols = contract_raw if keep is None else [c.take(pa.array(keep)) for c in contract_raw]

        # UTF-8, then every rule of every column.
        strings: list[pa.Array | None] = []
        bad_utf8: tuple[int, int] | None = None  # (kept row index, byte)
        for column in cols:
            try:
                strings.append(pc.cast(column, pa.string()))
            except pa.ArrowInvalid:
                strings.append(None)
                where = _first_bad_utf8(column)
                if bad_utf8 is None or where[0] < bad_utf8[0]:
                    bad_utf8 = where
        failures: list[tuple[int, int, str, pa.Array]] = []  # (column index, rule index, rule, bad mask)
        for i, (col, values) in enumerate(zip(self.contract.columns, strings, strict=True)):
            if values is not None:
                failures += [(i, *rule) for rule in _column_rules(col, values, self._month.as_of)]
        failures += self._cross_column_rules(strings)

        irregular = bool(placed or failures or bad_utf8 or skip is not None)
        if n and self._pending_empty_count:  # empty lines that turned out not to be at the end
            self._empty_lines(np.zeros(n, dtype=bool), np.zeros(n, dtype=np.int64))
        if not irregular:
            self._next_row += span
            self._next_line += span
            self.rows += n
            uid = strings[0]
            assert uid is not None
            self._remember_ids(uid, line0, None)
            return self._render_block(strings)

        # Physical lines of this block's rows, counting line breaks inside values.
        is_invalid = np.zeros(span, dtype=bool)
        for number, _, _ in placed:
            is_invalid[number - row0] = True
        breaks = np.zeros(span, dtype=np.int64)
        if n:
            valid_breaks = sum(csv_dialect.line_breaks(c) for c in raw)
            breaks[~is_invalid] = valid_breaks
        for number, _, b in placed:
            breaks[number - row0] = b
        cum = np.concatenate([[0], np.cumsum(breaks)[:-1]]) if span else breaks
        span_lines = line0 + np.arange(span) + cum
        batch_lines = span_lines[~is_invalid]
        self._next_row += span
        self._next_line = int(line0 + span + breaks.sum())

        for (_, fields, _), line in zip(placed, span_lines[is_invalid], strict=True):
            self._note_malformed(int(line), fields)
            self._block_malformed = True
        if skip is not None:
            assert skip is not None
            if too_long_np is not None and too_long_np.any():
                where = np.flatnonzero(too_long_np)
                sizes = lengths.take(pa.array(where[:MAX_EXAMPLES])).to_pylist()
                examples = [
                    f"line {int(batch_lines[w])}: {s:,} bytes"
                    for w, s in zip(where[:MAX_EXAMPLES], sizes, strict=True)
                ]
                rule = f"line longer than {self._max_line:,} bytes"
                self._tally(None, rule, examples, len(where), (-1, 0))
                self._block_malformed = True
                self._ids_gap = True
            if empty_np is not None:
                self._empty_lines(empty_np, batch_lines)
        kept_lines = batch_lines if keep is None else batch_lines[keep]
        if bad_utf8 is not None:
            row, byte = bad_utf8
            self._tally(
                None,
                f"line {int(kept_lines[row])}: byte 0x{byte:02x} is not UTF-8 (files must be UTF-8)",
                [],
                1,
                (-1, 3),
            )
            self._block_malformed = True
        uid = strings[0]
        if uid is None:
            self._ids_gap = True
        for i, j, rule, mask in failures:
            self._tally_mask(i, j, rule, mask, strings, cols, kept_lines)
        self.rows += len(kept_lines)
        if uid is not None:
            self._remember_ids(uid, int(kept_lines[0]) if len(kept_lines) else line0, kept_lines)
        return self._render_block(strings)  # e.g. a clean block followed by the file's trailing empty lines

    def _render_block(self, strings: list[pa.Array | None]) -> bytes | None:
        """The block as CSV for COPY, unless something failed (here or in another file) or nobody reads."""
        if self.failed or self._month.failed or not self._render or not len(strings[0] or []):
            return None
        return csv_dialect.write_block(pa.Table.from_arrays(strings, names=list(self.contract.names)))

    def _empty_lines(self, empty: np.ndarray, lines: np.ndarray) -> None:
        """Empty lines before a data row break the contract; after the last one they are ignored."""
        rule = "empty line in the middle of the file (only trailing empty lines are allowed)"
        data = np.flatnonzero(~empty)
        trailing = empty
        if len(data):
            position = np.arange(len(empty))
            mid = lines[empty & (position < data[-1])]
            count = self._pending_empty_count + len(mid)
            if count:
                shown = [*self._pending_empty, *(int(x) for x in mid[:MAX_EXAMPLES])]
                examples = [f"line {n}" for n in shown]
                self._tally(None, rule, examples, count, (-1, 4), unit="line")
            self._pending_empty, self._pending_empty_count = [], 0
            trailing = empty & (position > data[-1])
        self._pending_empty_count += int(trailing.sum())
        room = MAX_EXAMPLES - len(self._pending_empty)
        self._pending_empty += [int(x) for x in lines[trailing][:room]]

    def _cross_column_rules(self, strings: list[pa.Array | None]) -> list[tuple[int, int, str, pa.Array]]:
        out = []
        names = self.contract.names
        for i, col in enumerate(self.contract.columns):
            if col.blank_when is None:
                continue
            other, value = col.blank_when
            mine, theirs = strings[i], strings[names.index(other)]
            if mine is None or theirs is None:
                continue
            other_col = self.contract.columns[names.index(other)]
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

    def _tally_mask(
        self,
        i: int,
        j: int,
        rule: str,
        mask: pa.Array,
        strings: list[pa.Array | None],
        cols: list[pa.Array],
        lines: np.ndarray,
    ) -> None:
        count = pc.sum(mask).as_py() or 0
        col = self.contract.columns[i]
        tally = self._tallies.get((col.name, rule))
        room = MAX_EXAMPLES - (len(tally.examples) if tally else 0)
        examples = []
        if room > 0:
            where = pc.indices_nonzero(mask).slice(0, room)
            values = (strings[i] if strings[i] is not None else cols[i]).take(where).to_pylist()
            uids = strings[0].take(where).to_pylist() if strings[0] is not None else [None] * len(where)
            for w, value, uid in zip(where.to_pylist(), values, uids, strict=True):
                examples.append(_example(int(lines[w]), uid, value))
        self._tally(col.name, rule, examples, count, (i, j))

    def _tally(
        self,
        column: str | None,
        rule: str,
        examples: list[str],
        count: int,
        order: tuple[int, int],
        unit: str = "row",
    ) -> None:
        tally = self._tallies.get((column, rule))
        if tally is None:
            tally = self._tallies[(column, rule)] = _Tally(rule, column, order, unit)
        tally.count += count
        tally.examples += examples[: MAX_EXAMPLES - len(tally.examples)]
        self._failing += count

    # -- user ids ------------------------------------------------------------------------------------

    def _remember_ids(self, uid: pa.Array, first_line: int, lines: np.ndarray | None) -> None:
        """Keep the block's user ids (for the checks across files) and check they are unique so far.

        A block with a user id seen before is never yielded: COPY never receives a duplicate key.
        """
        offset = self._id_count
        self._ids.append(uid)
        self._lines.append((first_line, lines, len(uid)))
        self._id_count += len(uid)
        if self._duplicates or not len(uid):
            return
        if self._follows_users is None:  # decided on the first block: is users.csv read and clean?
            users = next((f for f in self._month.files if f.contract is USERS), None)
            self._follows_users = users is not None and users is not self and users._ids_usable()
        if self._follows_users:
            # The usual export lists every file's users in users.csv's order: comparing with those
            # (unique) ids is a memcmp, and makes hashing this file unnecessary.
            ref = self._month.file(USERS.table)._id_array()
            if offset + len(uid) <= len(ref) and uid.equals(ref.slice(offset, len(uid))):
                return
            self._follows_users = False
            if offset:
                self._hashes.add(_hash64(pa.concat_arrays(self._ids[:-1])))  # unique: no hit
        present = uid if not uid.null_count else pc.drop_null(uid)
        if self._hashes.add(_hash64(present)) and _has_duplicates(self._ids):
            self._duplicates = True  # the exact report is made from all ids at the end

    def _file_done(self) -> None:
        self._hashes = _HashSet()
        if self._duplicates and self._dup_violation is None and self._ids:
            self._dup_violation = self._duplicate_violation()
        if not self._ids_usable():
            self._ids, self._lines = [], []
            return
        month = self._month
        users = next((f for f in month.files if f.contract is USERS), None)
        if users is None or not users._ids_usable():
            return
        # Files listing users.csv's users in its order (the usual export) drop their own copy.
        others = [f for f in month.files if f is not users] if self is users else [self]
        for f in others:
            if not f._ids or not f._ids_usable() or f._aligned_with is not None:
                continue
            if f._id_array().equals(users._id_array()):
                f._aligned_with = users
                f._ids, f._lines = [], []

    def _ids_usable(self) -> bool:
        """Read to the end with every row's user id kept, present, well-formed and unique.

        Only then do the checks across files say something new (a file with a bad signup_date can
        still lack labels; one with a blank user id would only repeat that problem).
        """
        if not self._complete or self._duplicates or self._malformed_count or self._ids_gap or not self.rows:
            return False
        return not any(t.column == "user_id" for t in self._tallies.values())

    def _id_array(self) -> pa.Array:
        if self._aligned_with is not None:
            return self._aligned_with._id_array()
        if len(self._ids) > 1:
            self._ids = [pa.concat_arrays(self._ids)]
            self._lines = [(0, self._id_lines(), len(self._ids[0]))]
        return self._ids[0] if self._ids else pa.array([], pa.string())

    def _id_lines(self) -> np.ndarray:
        if self._aligned_with is not None:
            return self._aligned_with._id_lines()
        parts = [
            lines if lines is not None else first + np.arange(n, dtype=np.int64)
            for first, lines, n in self._lines
        ]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)

    def _duplicate_violation(self) -> Violation:
        ids = pa.concat_arrays(self._ids)
        counts = pc.value_counts(pc.drop_null(ids))
        repeated = counts.field("values").filter(pc.greater(counts.field("counts"), 1))
        mask = pc.fill_null(pc.is_in(ids, value_set=repeated), False)
        where = pc.indices_nonzero(mask)
        lines = self._id_lines()
        shown = where.slice(0, MAX_EXAMPLES).to_pylist()
        values = ids.take(pa.array(shown, pa.int64())).to_pylist()
        examples = tuple(_example(int(lines[w]), v, v) for w, v in zip(shown, values, strict=True))
        return Violation(self.contract.filename, "must be unique", "user_id", len(where), examples)


class _Hashing:
    """The file object pyarrow reads: hashes and counts the bytes as they go by."""

    def __init__(self, raw, reader: FileReader) -> None:
        self._raw = raw
        self._reader = reader
        self.sha256 = hashlib.sha256()
        self.size = 0

    def read(self, n: int = -1) -> bytes:
        data = self._raw.read(n)
        self.sha256.update(data)
        self.size += len(data)
        self._reader.bytes_read = self.size
        return data

    @property
    def closed(self) -> bool:
        return self._raw.closed

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        """The file is closed by its owner."""


# --- rules --------------------------------------------------------------------------------------------


_LINE_BREAK_RULE = "must not contain a line break (a quote left open?)"


def _column_rules(col: Col, values: pa.Array, as_of: date | None) -> list[tuple[int, str, pa.Array]]:
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


def _first_bad_utf8(column: pa.Array) -> tuple[int, int]:
    """(row, first bad byte) of the first value that is not UTF-8."""
    for i, value in enumerate(column.to_pylist()):
        if value is None:
            continue
        try:
            value.decode("utf-8")
        except UnicodeDecodeError as exc:
            return i, value[exc.start]
    return 0, 0


def _example(line: int, uid: object, value: object) -> str:
    who = f" (user_id {_uid(uid)})" if isinstance(uid, str) else ""
    return f"line {line}{who}: {_shown(value)}"


def _uid(uid: object) -> str:
    text = str(uid)
    return text if len(text) <= _SHOWN else text[:_SHOWN] + "…"


def _shown(value: object) -> str:
    if value is None:
        return "blank"
    text = value.decode("utf-8", "backslashreplace") if isinstance(value, bytes) else str(value)
    if len(text) <= _SHOWN:
        return repr(text)
    return f"{text[:_SHOWN]!r}… ({len(text):,} characters)"


# --- uniqueness -------------------------------------------------------------------------------------

_MIX = np.array(
    [
        0x9E3779B97F4A7C15,
        0xC2B2AE3D27D4EB4F,
        0x165667B19E3779F9,
        0xD6E8FEB86659FD93,
        0xFF51AFD7ED558CCD,
        0xC4CEB9FE1A85EC53,
        0x27D4EB2F165667C5,
        0x94D049BB133111EB,
    ],
    dtype=np.uint64,
)


def _hash64(values: pa.Array) -> np.ndarray:
    """A 64-bit hash of each (non-null) string, vectorised: its length and first 64 bytes, mixed.

    Equal strings hash equal; a shared hash is only a suspicion, confirmed on the strings themselves.
    """
    n = len(values)
    if not n:
        return np.zeros(0, dtype=np.uint64)
    _, offsets_buf, data_buf = values.buffers()
    offsets = np.frombuffer(offsets_buf, dtype=np.int32, count=n + 1, offset=values.offset * 4)
    offsets = offsets.astype(np.int64)
    data = np.frombuffer(data_buf, dtype=np.uint8) if data_buf is not None else np.zeros(1, np.uint8)
    lengths = np.diff(offsets)
    longest = int(lengths.max())
    width = max(8, -(-min(longest, 64) // 8) * 8)
    if int(lengths.min()) == longest <= 64:  # fixed-width ids (the usual case): one reshape
        matrix = np.zeros((n, width), dtype=np.uint8)
        matrix[:, :longest] = data[offsets[0] : offsets[0] + n * longest].reshape(n, longest)
    else:
        spots = np.arange(width)
        index = np.minimum(offsets[:-1, None] + spots, max(len(data) - 1, 0))
        matrix = data[index] if len(data) else np.zeros((n, width), dtype=np.uint8)
        matrix[spots >= lengths[:, None]] = 0
    words = matrix.view(np.uint64)
    with np.errstate(over="ignore"):
        h = lengths.astype(np.uint64) * _MIX[0]
        for j in range(words.shape[1]):
            h ^= words[:, j]
            h *= _MIX[(j + 1) % len(_MIX)]
            h ^= h >> np.uint64(29)
        h ^= h >> np.uint64(32)
        h *= _MIX[4]
        h ^= h >> np.uint64(33)
    return h


class _HashSet:
    """Sorted runs of 64-bit hashes, merged as they grow (a tiny LSM tree)."""

    def __init__(self) -> None:
        self._runs: list[np.ndarray] = []

    def add(self, hashes: np.ndarray) -> bool:
        """Add; True if some hash repeats within ``hashes`` or was added before."""
        run = np.sort(hashes)
        hit = bool(len(run) > 1 and (run[1:] == run[:-1]).any())
        for old in self._runs:
            if hit:
                break
            at = np.minimum(np.searchsorted(old, run), len(old) - 1)
            hit = bool((old[at] == run).any())
        self._runs.append(run)
        while len(self._runs) > 1 and len(self._runs[-2]) <= 2 * len(self._runs[-1]):
            b, a = self._runs.pop(), self._runs.pop()
            self._runs.append(np.sort(np.concatenate([a, b]), kind="stable"))
        return hit


def _has_duplicates(chunks: list[pa.Array]) -> bool:
    """The exact check behind a hash hit."""
    ids = pc.drop_null(pa.concat_arrays(chunks))
    return len(pc.unique(ids)) < len(ids)


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
