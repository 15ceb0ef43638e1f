"""The CSV dialect of a monthly export: read one way, written one way.

Validation reads every file with the options below and hands the ingestion its own rendering of the
values it checked (``write_block``), so PostgreSQL's ``COPY ... (FORMAT csv)`` never parses the
original file: what was validated is what is loaded, whatever quoting or line endings it used.

Accepted (and loaded exactly, value by value):

- UTF-8, with or without a byte-order mark at the start of the file;
- line endings LF, CRLF or CR, also mixed within one file;
- a header row naming each column once, in any order, quoted or not;
- values quoted or not (``"DSL"`` is ``DSL``; a doubled ``""`` inside quotes is one ``"``);
- a blank value, quoted (``""``) or not, is NULL (allowed only in nullable columns);
- empty lines at the end of the file (ignored).

Refused, with file, line and rule:

- an empty line, or a line of commas only, anywhere before the last data row;
- a line break inside a quoted value (no contract value contains one: usually an unclosed quote);
- a row with more or fewer fields than the header;
- a byte sequence that is not UTF-8;
- a line longer than ``MAX_LINE_BYTES``.

Line numbers are the file's physical lines (the header is line 1; CRLF counts as one line break).
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyarrow import csv as pa_csv

BLOCK_BYTES = 1 << 20
"""Bytes parsed at a time. Memory per file is a small multiple of this."""
MAX_LINE_BYTES = 1 << 16
"""The longest line accepted (the longest valid row is a few hundred bytes)."""
BOM = b"\xef\xbb\xbf"
LINE_BREAK = r"\r\n|\r|\n"  # leftmost alternative first: CRLF is one break
_LINE_BREAK = re.compile(LINE_BREAK)


@dataclass(frozen=True)
class Header:
    """A file's first line, parsed by the CSV parser itself, or why it could not be."""

    names: tuple[str, ...] = ()
    problem: str | None = None


def first_line(prefix: bytes, at_eof: bool) -> tuple[bytes | None, str | None]:
    """The header line at the start of ``prefix`` (without its line break), or a problem.

    ``prefix`` holds the file's first bytes; ``at_eof`` says whether it is the whole file.
    """
    ends = [i for i in (prefix.find(b"\r"), prefix.find(b"\n")) if i >= 0]
    end = min(ends) if ends else (len(prefix) if at_eof else -1)
    if end < 0 or end > MAX_LINE_BYTES:
        return None, f"line 1 (the header) is longer than {MAX_LINE_BYTES:,} bytes"
    return prefix[:end], None


def parse_header(line: bytes) -> Header:
    """Column names of a header line: quotes, doubled quotes and a leading BOM handled like data."""
    if line.startswith(BOM):
        line = line[len(BOM) :]
    try:
        line.decode("utf-8")
    except UnicodeDecodeError as exc:
        return Header(problem=f"line 1: byte 0x{line[exc.start]:02x} is not UTF-8 (files must be UTF-8)")
    if not line.strip():
        return Header(problem="line 1 (the header) is blank")
    try:
        reader = pa_csv.open_csv(
            io.BytesIO(line + b"\n"),
            read_options=pa_csv.ReadOptions(use_threads=False),
            parse_options=parse_options(None),
            convert_options=pa_csv.ConvertOptions(include_columns=[]),
        )
    except pa.ArrowException as exc:
        return Header(problem=f"line 1 (the header) is not valid CSV: {_arrow_message(exc)}")
    return Header(names=tuple(reader.schema.names))


def parse_options(invalid_row_handler) -> pa_csv.ParseOptions:
    return pa_csv.ParseOptions(
        delimiter=",",
        quote_char='"',
        double_quote=True,
        escape_char=False,
        # Blocks are split at every line break, quoted or not: a quote left open cannot swallow the
        # rest of the file, and a block never waits for a closing quote that will not come.
        newlines_in_values=False,
        # Empty lines come back as rows of nulls, so row numbers stay line numbers and the rule
        # "empty lines only at the end" is ours to apply.
        ignore_empty_lines=False,
        invalid_row_handler=invalid_row_handler,
    )


def data_reader(source, n_columns: int, block_size: int, invalid_row_handler) -> pa_csv.CSVStreamingReader:
    """A streaming reader of the data rows (after the header), every column as raw bytes.

    Columns are named by position (``c0``, ``c1``...): the header's own names may repeat or be
    unknown, and are checked separately. Bytes, not strings: UTF-8 is checked per column so that a bad
    byte gets a line number.
    """
    names = [f"c{i}" for i in range(n_columns)]
    return pa_csv.open_csv(
        source,
        read_options=pa_csv.ReadOptions(
            use_threads=False, block_size=block_size, column_names=names, skip_rows=1
        ),
        parse_options=parse_options(invalid_row_handler),
        convert_options=pa_csv.ConvertOptions(
            column_types=dict.fromkeys(names, pa.binary()),
            null_values=[""],
            strings_can_be_null=True,
            quoted_strings_can_be_null=True,
        ),
    )


def line_breaks(values: pa.Array) -> np.ndarray:
    """Line breaks inside each value (0 for nulls), as int64."""
    counts = pc.fill_null(pc.count_substring_regex(values, LINE_BREAK), 0)
    return counts.to_numpy(zero_copy_only=False).astype(np.int64)


def text_line_breaks(text: str) -> int:
    return len(_LINE_BREAK.findall(text))


def row_bytes(columns: list[pa.Array]) -> pa.Array:
    """The length of each row as written without quotes: its values plus the commas between them."""
    total = pa.scalar(len(columns) - 1, pa.int64())
    for column in columns:
        total = pc.add(total, pc.fill_null(pc.cast(pc.binary_length(column), pa.int64()), 0))
    return total


def write_block(table: pa.Table) -> bytes:
    """Validated values as CSV for ``COPY ... (FORMAT csv)``: no header, LF, nothing quoted, NULL blank.

    Valid values never contain a comma, a quote or a line break, so none needs quoting; the writer
    refuses one that does rather than quote it.
    """
    sink = pa.BufferOutputStream()
    pa_csv.write_csv(table, sink, pa_csv.WriteOptions(include_header=False, quoting_style="none"))
    return sink.getvalue().to_pybytes()


def _arrow_message(exc: BaseException) -> str:
    return str(exc).removeprefix("CSV parse error: ").strip()
