"""Reading a month file by file while validating it: ``MonthReader`` and its ``FileReader``\\ s."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from streamflow.data import csv_dialect
from streamflow.data.block_checks import BlockChecks, Tally
from streamflow.data.contracts import CONTRACTS, USERS, FileContract
from streamflow.data.id_hashes import HashSet
from streamflow.data.user_ids import UserIds
from streamflow.data.violations import MAX_EXAMPLES, ContractError, Violation, example, shown_uid

MAX_FAILING_VALUES = 1000
"""A file stops being read once this many of its values broke a rule (counts are then lower bounds)."""


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
                examples = tuple(example(int(n), u, u) for n, u in zip(lines, shown, strict=True))
                rule = f"user_id not found in {USERS.filename}"
                self._cross.append(Violation(f.contract.filename, rule, "user_id", len(unknown), examples))
            present = pc.is_in(user_ids, value_set=ids).to_numpy(zero_copy_only=False)
            if not present.all():
                absent = np.flatnonzero(~present)
                lines = users._id_lines()[absent[:MAX_EXAMPLES]]
                shown = user_ids.take(pa.array(absent[:MAX_EXAMPLES])).to_pylist()
                examples = tuple(
                    f"{USERS.filename} line {int(n)} (user_id {shown_uid(u)})"
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


class FileReader(BlockChecks, UserIds):
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
        self._tallies: dict[tuple[str | None, str], Tally] = {}
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
        self._hashes = HashSet()
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
