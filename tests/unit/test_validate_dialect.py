"""The CSV dialect: which forms of a file are the same month, which are refused, and physical lines.

Every accepted form must yield exactly the bytes of the plain (LF, unquoted) file; every refused
form names file, line and rule. Months come from the generator, and from the real exports too.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable
from datetime import date
from pathlib import Path

import pyarrow as pa
import pytest

from streamflow.data import csv_dialect
from streamflow.data.contracts import CONTRACTS
from streamflow.data.generate import generate_months
from streamflow.data.validate import ContractError, open_month
from tests.conftest import MONTHS, SOURCES

JAN = "2024-01-31"


@pytest.fixture(scope="session")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    (folder, as_of), *_ = generate_months(tmp_path_factory.mktemp("dialect"), users=300, months=1, seed=3)
    assert as_of == date(2024, 1, 31)
    return folder


@pytest.fixture(params=SOURCES)
def plain(request: pytest.FixtureRequest, generated: Path) -> Path:
    """The generated month, and the real month_000 when ../shared has it."""
    return generated if request.param == "generated" else MONTHS[JAN]


def rewrite_all(transform: Callable[[bytes], bytes]) -> Callable[[Path], None]:
    def apply(month: Path) -> None:
        for contract in CONTRACTS:
            path = month / contract.filename
            path.write_bytes(transform(path.read_bytes()))

    return apply


def quote_every_value(data: bytes) -> bytes:
    return b"\n".join(
        b",".join(b'"' + v + b'"' for v in line.split(b",")) if line else line for line in data.split(b"\n")
    )


def mixed_endings(data: bytes) -> bytes:
    lines = data.split(b"\n")
    return (
        b"".join(line + (b"\r\n" if i % 3 == 0 else b"\n") for i, line in enumerate(lines[:-1])) + lines[-1]
    )


VALID_FORMS: dict[str, Callable[[bytes], bytes]] = {
    "crlf": lambda b: b.replace(b"\n", b"\r\n"),
    "cr-only": lambda b: b.replace(b"\n", b"\r"),
    "mixed-lf-crlf": mixed_endings,
    "bom": lambda b: csv_dialect.BOM + b,
    "quoted-values-and-header": quote_every_value,
    "doubled-quotes-around-nothing": lambda b: b.replace(b",,", b',"",'),
    "trailing-empty-lines": lambda b: b + b"\n\n\r\n\n",
    "no-final-line-break": lambda b: b.rstrip(b"\n"),
    "crlf-quoted-bom-trailing": lambda b: (
        csv_dialect.BOM + quote_every_value(b).replace(b"\n", b"\r\n") + b"\r\n"
    ),
}


@pytest.mark.parametrize("block_size", [csv_dialect.BLOCK_BYTES, 1500])
@pytest.mark.parametrize("form", list(VALID_FORMS))
def test_valid_forms_yield_the_plain_bytes(tmp_path: Path, plain: Path, form: str, block_size: int) -> None:
    month = tmp_path / "m"
    shutil.copytree(plain, month)
    rewrite_all(VALID_FORMS[form])(month)
    reader = open_month(month, JAN, block_size=block_size)
    out = {f.contract.filename: b"".join(f.chunks()) for f in reader.files}
    reader.finish()
    for contract in CONTRACTS:
        expected = (plain / contract.filename).read_bytes().split(b"\n", 1)[1]
        assert out[contract.filename] == expected, contract.filename
    assert [f.rows for f in reader.files] == [expected.count(b"\n") for _ in CONTRACTS]


def _month(tmp_path: Path, plain: Path) -> Path:
    month = tmp_path / "m"
    shutil.copytree(plain, month)
    return month


def _error(month: Path, **kwargs) -> ContractError:
    reader = None
    with pytest.raises(ContractError) as caught:
        reader = open_month(month, JAN, **kwargs)
        reader.finish()
    assert reader is None or reader.failed
    return caught.value


def _lines(path: Path, ending: bytes = b"\n") -> list[bytes]:
    return path.read_bytes().split(ending)


@pytest.mark.parametrize("ending", [b"\n", b"\r\n", b"\r"])
def test_an_empty_line_mid_file_is_refused_at_its_physical_line(
    tmp_path: Path, plain: Path, ending: bytes
) -> None:
    month = _month(tmp_path, plain)
    path = month / "labels.csv"
    lines = path.read_bytes().split(b"\n")
    lines.insert(40, b"")  # line 41 is empty
    lines.insert(90, b"")  # line 91 too
    path.write_bytes(ending.join(lines))
    texts = [str(v) for v in _error(month, block_size=700).violations]
    assert texts == [
        "labels.csv: empty line in the middle of the file (only trailing empty lines are allowed)"
        " (2 lines; e.g. line 41; line 91)"
    ]


def test_a_line_of_commas_counts_as_empty(tmp_path: Path, plain: Path) -> None:
    month = _month(tmp_path, plain)
    path = month / "payments_agg_90d.csv"
    lines = _lines(path)
    lines.insert(5, b",")
    path.write_bytes(b"\n".join(lines))
    (v,) = _error(month).violations
    assert (v.rule.startswith("empty line in the middle"), v.examples) == (True, ("line 6",))


def test_line_numbers_after_a_quoted_line_break_are_physical(tmp_path: Path, plain: Path) -> None:
    """A value spanning two lines (an open quote closed on the next line) shifts every later row."""
    month = _month(tmp_path, plain)
    path = month / "subscriptions.csv"
    lines = _lines(path)
    fields = lines[3].split(b",")
    fields[4] = b'"Month-to-\r\nmonth"'  # line 4 now ends on line 5
    lines[3] = b",".join(fields)
    later = lines[20].split(b",")
    later[1] = b"x"  # was line 21, is now line 22
    lines[20] = b",".join(later)
    path.write_bytes(b"\n".join(lines))
    got = {
        (v.column, v.rule, v.examples[0].split(" (")[0]) for v in _error(month, block_size=1500).violations
    }
    assert got == {
        ("contract_type", "must not contain a line break (a quote left open?)", "line 4"),
        ("months_active", "must be an integer", "line 22"),
    }


def test_rows_with_a_wrong_number_of_fields_at_their_physical_lines(tmp_path: Path, plain: Path) -> None:
    month = _month(tmp_path, plain)
    path = month / "payments_agg_90d.csv"
    lines = _lines(path)
    lines[1] = lines[1].replace(b",", b',"\n', 1)  # line 2: a quoted value spanning lines 2-3
    lines[1] += b'"'
    lines[9] += b",1"  # was line 10, now line 11
    lines[12] = lines[12].split(b",")[0]  # was line 13, now line 14
    path.write_bytes(b"\n".join(lines))
    texts = [str(v) for v in _error(month).violations]
    assert texts[0] == (
        "payments_agg_90d.csv: malformed CSV: 2 row(s) with a wrong number of fields: "
        "line 11: 3 fields, header has 2; line 14: 1 fields, header has 2"
    )


def test_an_unclosed_quote(tmp_path: Path, plain: Path) -> None:
    month = _month(tmp_path, plain)
    path = month / "labels.csv"
    lines = _lines(path)
    lines[6] = b'"' + lines[6]
    path.write_bytes(b"\n".join(lines))
    texts = [str(v) for v in _error(month).violations]
    assert texts == [
        "labels.csv: malformed CSV: 1 row(s) with a wrong number of fields: line 7: 1 fields, header has 2"
    ]


def test_bytes_that_are_not_utf8(tmp_path: Path, plain: Path) -> None:
    month = _month(tmp_path, plain)
    path = month / "users.csv"
    lines = _lines(path)
    lines[3] = lines[3].replace(b"ale", b"\xffle", 1)
    path.write_bytes(b"\r\n".join(lines))
    assert "users.csv: line 4: byte 0xff is not UTF-8 (files must be UTF-8)" in [
        str(v) for v in _error(month).violations
    ]


def test_a_bom_anywhere_but_the_start_is_part_of_a_value(tmp_path: Path, plain: Path) -> None:
    month = _month(tmp_path, plain)
    path = month / "labels.csv"
    lines = _lines(path)
    lines[2] = csv_dialect.BOM + lines[2]
    path.write_bytes(b"\n".join(lines))
    (v,) = _error(month).violations
    assert (v.column, v.examples[0][:8]) == ("user_id", "line 3 (")
    assert re.search(r"must be a user id", v.rule)


# --- csv_dialect on its own ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "names"),
    [
        (b"user_id,churn_label", ("user_id", "churn_label")),
        (b'"user_id","churn_label"', ("user_id", "churn_label")),
        (csv_dialect.BOM + b"user_id,churn_label", ("user_id", "churn_label")),
        (b'user_id,"a,b"', ("user_id", "a,b")),
        (b'user_id,"a""b"', ("user_id", 'a"b')),
        (b"a,a,", ("a", "a", "")),
    ],
)
def test_parse_header(line: bytes, names: tuple[str, ...]) -> None:
    assert csv_dialect.parse_header(line) == csv_dialect.Header(names=names)


@pytest.mark.parametrize(
    ("prefix", "at_eof", "expected"),
    [
        (b"a,b\r\n1,2", False, (b"a,b", None)),
        (b"a,b\r1,2", False, (b"a,b", None)),
        (b"a,b", True, (b"a,b", None)),
        (b"a" * 70_000, False, (None, "line 1 (the header) is longer than 65,536 bytes")),
    ],
)
def test_first_line(prefix: bytes, at_eof: bool, expected: tuple) -> None:
    assert csv_dialect.first_line(prefix, at_eof) == expected


def test_text_line_breaks_counts_crlf_once() -> None:
    assert csv_dialect.text_line_breaks("a\r\nb\rc\nd\n\r") == 5
    assert csv_dialect.line_breaks(pa.array([b"a\r\nb\rc", None, b"x"])).tolist() == [2, 0, 0]


def test_write_block_refuses_what_it_would_have_to_quote() -> None:
    table = pa.table({"a": ["x", None], "b": ["1", "2"]})
    assert csv_dialect.write_block(table) == b"x,1\n,2\n"
    with pytest.raises(pa.ArrowInvalid):
        csv_dialect.write_block(pa.table({"a": ["x,y"]}))
