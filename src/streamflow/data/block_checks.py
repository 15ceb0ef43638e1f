"""Checking one block of a file: every rule of every value, tallied with examples (``FileReader``'s part)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from streamflow.data import csv_dialect
from streamflow.data.column_rules import column_rules, cross_column_rules, first_bad_utf8
from streamflow.data.violations import MAX_EXAMPLES, example


class Tally:
    """One rule broken in one file: how often, and the first few examples."""

    __slots__ = ("column", "count", "examples", "order", "rule", "unit")

    def __init__(self, rule: str, column: str | None, order: tuple[int, int], unit: str = "row") -> None:
        self.rule, self.column, self.order, self.unit = rule, column, order, unit
        self.count = 0
        self.examples: list[str] = []


class BlockChecks:
    """Mixed into ``FileReader`` (whose ``__init__`` sets the state): one block's checks."""

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
                where = first_bad_utf8(column)
                if bad_utf8 is None or where[0] < bad_utf8[0]:
                    bad_utf8 = where
        failures: list[tuple[int, int, str, pa.Array]] = []  # (column index, rule index, rule, bad mask)
        for i, (col, values) in enumerate(zip(self.contract.columns, strings, strict=True)):
            if values is not None:
                failures += [(i, *rule) for rule in column_rules(col, values, self._month.as_of)]
        failures += cross_column_rules(self.contract, strings)

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
                examples.append(example(int(lines[w]), uid, value))
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
            tally = self._tallies[(column, rule)] = Tally(rule, column, order, unit)
        tally.count += count
        tally.examples += examples[: MAX_EXAMPLES - len(tally.examples)]
        self._failing += count
