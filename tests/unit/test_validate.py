"""Streaming validation without a database: open_month, MonthReader, FileReader and their rules.

Months come from the generator (always) and from the real exports too when they are present.
"""

from __future__ import annotations

import builtins
import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from datetime import date, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from streamflow.data import csv_dialect, id_hashes, user_ids, validate
from streamflow.data.contracts import CONTRACTS, LABELS, SUBSCRIPTIONS, USERS
from streamflow.data.generate import generate_months
from streamflow.data.validate import (
    MAX_FAILING_VALUES,
    ContractError,
    FileReader,
    MonthReader,
    open_month,
    validate_month,
)
from tests.conftest import MONTHS, SOURCES

JAN = "2024-01-31"
SMALL_BLOCK = 2048  # a few dozen rows: every file spans many blocks


# --- months --------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A generated month (400 users, as of 2024-01-31), never modified: copy it to change it."""
    out = tmp_path_factory.mktemp("generated")
    (folder, as_of), _ = generate_months(out, users=400, months=2, seed=7)
    assert as_of == date(2024, 1, 31)
    return folder


@pytest.fixture(params=SOURCES)
def source(request: pytest.FixtureRequest, generated: Path) -> Path:
    """The generated month, and the real month_000 when ../shared has it."""
    return generated if request.param == "generated" else MONTHS[JAN]


@pytest.fixture
def month(tmp_path: Path, generated: Path) -> Path:
    """A private copy of the generated month, to break."""
    target = tmp_path / "month"
    shutil.copytree(generated, target)
    return target


def lines_of(path: Path) -> list[str]:
    return path.read_text().split("\n")


def set_field(month: Path, file: str, line: int, column: str, value: str) -> str:
    """Set one value (line 1 = header); returns the user id of that line."""
    lines = lines_of(month / file)
    names = lines[0].split(",")
    fields = lines[line - 1].split(",")
    fields[names.index(column)] = value
    lines[line - 1] = ",".join(fields)
    (month / file).write_text("\n".join(lines))
    return fields[0]


def uid_at(month: Path, file: str, line: int) -> str:
    return lines_of(month / file)[line - 1].split(",", 1)[0]


def data_lines(path: Path) -> int:
    return len([x for x in lines_of(path)[1:] if x])


def read_all(month: MonthReader) -> dict[str, bytes]:
    return {f.contract.table: b"".join(f.chunks()) for f in month.files}


def error_of(month_dir: Path, as_of: str = JAN, **kwargs) -> ContractError:
    with pytest.raises(ContractError) as caught:
        validate_month(month_dir, as_of, **kwargs)
    return caught.value


def body(path: Path) -> bytes:
    """A file without its header line (what chunks() yields for an LF, unquoted file)."""
    return path.read_bytes().split(b"\n", 1)[1]


# --- open_month: the cheap checks ---------------------------------------------------------------


def test_open_month_gives_every_file_with_its_hash_and_no_rows_yet(source: Path) -> None:
    month = open_month(source, JAN)
    assert isinstance(month, MonthReader)
    assert [f.contract for f in month.files] == list(CONTRACTS)
    assert month.as_of == date(2024, 1, 31) and month.month_dir == source and month.warnings == []
    for f in month.files:
        assert isinstance(f, FileReader)
        assert f.path == source / f.contract.filename
        assert f.sha256 == hashlib.sha256(f.path.read_bytes()).hexdigest()
        assert f.size == f.path.stat().st_size
        assert f.rows == 0
    assert not month.failed
    read_all(month)
    month.finish()
    assert [f.rows for f in month.files] == [data_lines(f.path) for f in month.files]


def test_open_month_reads_no_data(month: Path) -> None:
    """A bad value is found while reading, not by open_month."""
    set_field(month, "labels.csv", 5, "churn_label", "Maybe")
    reader = open_month(month, JAN)
    assert not reader.failed
    with pytest.raises(ContractError, match=r"churn_label'?: must be True or False"):
        reader.finish()


@pytest.mark.parametrize(
    "bad", ["20240131", "2024-1-31", "2024-02-30", "yesterday", "2024/01/31", " 2024-01-31"]
)
def test_as_of_must_be_iso(month: Path, bad: str) -> None:
    err = error_of(month, bad)
    assert [str(v) for v in err.violations] == [f"--as-of: '{bad}' is not a date YYYY-MM-DD"]


@pytest.mark.parametrize("good", [JAN, date(2024, 1, 31), datetime(2024, 1, 31, 12)])
def test_as_of_as_text_or_date(month: Path, good: str | date) -> None:
    assert validate_month(month, good).as_of == date(2024, 1, 31)


def test_as_of_in_the_future_is_refused(month: Path) -> None:
    err = error_of(month, JAN, today=date(2024, 1, 30))
    assert str(err.violations[0]) == "--as-of: 2024-01-31 is in the future (today is 2024-01-30)"
    validate_month(month, JAN, today=date(2024, 1, 31))  # today itself is fine


def test_the_folder_is_checked(tmp_path: Path) -> None:
    assert "folder does not exist" in str(error_of(tmp_path / "nope"))
    (tmp_path / "file").write_text("x")
    assert "is not a folder" in str(error_of(tmp_path / "file"))
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    assert "is a symlink loop" in str(error_of(tmp_path / "loop"))
    (tmp_path / "dangling").symlink_to(tmp_path / "gone")
    assert "is a dangling symlink" in str(error_of(tmp_path / "dangling"))


def _as_directory(p: Path) -> None:
    p.unlink()
    p.mkdir()


def _as_loop(p: Path) -> None:
    p.unlink()
    p.symlink_to(p.name)  # users.csv -> users.csv


def _as_dangling(p: Path) -> None:
    p.unlink()
    p.symlink_to("gone.csv")


def _as_fifo(p: Path) -> None:
    p.unlink()
    os.mkfifo(p)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (Path.unlink, "users.csv: file is missing"),
        (_as_directory, "users.csv: is a folder, not a file"),
        (_as_loop, "users.csv: is a symlink loop"),
        (_as_dangling, "users.csv: is a dangling symlink (to gone.csv, which does not exist)"),
        (_as_fifo, "users.csv: is not a regular file (a FIFO, socket or device)"),
    ],
    ids=["missing", "directory", "symlink-loop", "dangling-symlink", "fifo"],
)
def test_each_file_is_reported_as_what_it_is(
    month: Path, change: Callable[[Path], None], message: str
) -> None:
    change(month / "users.csv")
    err = error_of(month)
    assert message in [str(v) for v in err.violations], str(err)


def test_a_symlink_to_a_file_is_a_file(month: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "labels_elsewhere.csv"
    shutil.move(month / "labels.csv", elsewhere)
    (month / "labels.csv").symlink_to(elsewhere)
    assert validate_month(month, JAN).files["labels"].rows == 400


def test_an_unreadable_file_is_reported_as_unreadable(month: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_open = builtins.open

    def guarded(path, *args, **kwargs):
        if str(path).endswith("support_agg_90d.csv"):
            raise PermissionError(13, "Permission denied")
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(validate, "open", guarded, raising=False)
    assert "support_agg_90d.csv: cannot be read: Permission denied" in str(error_of(month))


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_an_unreadable_file_on_disk(month: Path) -> None:
    (month / "support_agg_90d.csv").chmod(0)
    assert "support_agg_90d.csv: cannot be read: Permission denied" in str(error_of(month))


def test_unexpected_files_are_warnings(month: Path) -> None:
    (month / "notes.txt").write_text("hello")
    (month / "users.csv.bak").write_text("x")
    (month / "old").mkdir()
    valid = validate_month(month, JAN)
    assert valid.warnings == [f"{month}: 3 unexpected file(s), not loaded: notes.txt, old, users.csv.bak"]


def test_headers_are_parsed_by_the_csv_parser(month: Path) -> None:
    path = month / "labels.csv"
    text = path.read_text().replace("user_id,churn_label\n", '\ufeff"user_id","churn_label"\r\n', 1)
    path.write_text(text)
    assert validate_month(month, JAN).files["labels"].rows == 400


@pytest.mark.parametrize(
    ("header", "message"),
    [
        (
            "user_id,failed_payments_90d,failed_payments_90d",
            "payments_agg_90d.csv: duplicate column(s): failed_payments_90d",
        ),
        ("user_id,failed", "payments_agg_90d.csv: missing required column(s): failed_payments_90d"),
        ("user_id,failed_payments_90d,coupon", "payments_agg_90d.csv: unexpected column(s): coupon"),
        (
            'user_id,"failed_payments,90d"',
            "payments_agg_90d.csv: unexpected column(s): 'failed_payments,90d'",
        ),
        (
            "user_id, failed_payments_90d",
            "payments_agg_90d.csv: unexpected column(s): ' failed_payments_90d'",
        ),
        ("", "payments_agg_90d.csv: line 1 (the header) is blank"),
        ('"user_id,failed_payments_90d', "payments_agg_90d.csv: line 1 (the header) is not valid CSV"),
    ],
    ids=["duplicate", "missing", "unknown", "quoted-comma", "space", "blank", "open-quote"],
)
def test_header_problems(month: Path, header: str, message: str) -> None:
    path = month / "payments_agg_90d.csv"
    rows = path.read_text().split("\n", 1)[1]
    if "duplicate" in message:  # the awk reproduction: the column and its values, twice
        rows = "\n".join(f"{r},{r.split(',')[1]}" if r else r for r in rows.split("\n"))
    path.write_text(header + "\n" + rows)
    err = error_of(month)
    assert any(str(v).startswith(message) for v in err.violations), str(err)


def test_a_header_longer_than_a_line_may_be(month: Path) -> None:
    (month / "labels.csv").write_text("user_id," + "x" * 70_000 + "\n1,2\n")
    assert "labels.csv: line 1 (the header) is longer than 65,536 bytes" in str(error_of(month))


def test_a_header_that_is_not_utf8(month: Path) -> None:
    (month / "labels.csv").write_bytes(b"\xff\xfeu\x00s\x00\n")
    assert "labels.csv: line 1: byte 0xff is not UTF-8 (files must be UTF-8)" in str(error_of(month))


def test_a_garbage_header_is_summarised(month: Path) -> None:
    (month / "labels.csv").write_text(",".join(f"c{i}" for i in range(500)) + "\n")
    message = str(error_of(month))
    assert "unexpected column(s): c0, c1, c2, c3, c4, c5, c6, c7, c8, c9, … (500 in all)" in message
    assert len(message) < 2000


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "labels.csv: file is empty (expected a header row and data rows)"),
        (b"\n \n\r\n", "labels.csv: file is empty (expected a header row and data rows)"),
        (b"user_id,churn_label\n", "labels.csv: has a header but no data rows"),
        (b"user_id,churn_label\r\n\r\n\r\n", "labels.csv: has a header but no data rows"),
    ],
    ids=["empty", "whitespace", "header-only", "header-and-empty-lines"],
)
def test_files_without_data(month: Path, content: bytes, message: str) -> None:
    (month / "labels.csv").write_bytes(content)
    assert message in [str(v) for v in error_of(month).violations]


def test_open_month_error_lists_every_file_s_problems(month: Path) -> None:
    """A missing file is found by open_month; the data of the other files is read anyway."""
    (month / "payments_agg_90d.csv").unlink()
    set_field(month, "subscriptions.csv", 2, "months_active", "one")
    set_field(month, "labels.csv", 6, "churn_label", "")
    with pytest.raises(ContractError) as caught:
        open_month(month, JAN)
    assert [v.file for v in caught.value.violations] == [
        "subscriptions.csv",
        "payments_agg_90d.csv",
        "labels.csv",
    ]


def test_the_heading_names_the_month_folder(month: Path) -> None:
    (month / "labels.csv").unlink()
    err = error_of(month, "2024/01/31")
    assert err.month_dir == str(month)
    assert str(err).startswith(f"{month}: 2 contract violation(s):\n  - --as-of: ")


# --- chunks(): what the ingestion loads ----------------------------------------------------------


@pytest.mark.parametrize("block_size", [csv_dialect.BLOCK_BYTES, SMALL_BLOCK, 700])
def test_chunks_are_the_values_exactly(source: Path, block_size: int) -> None:
    """LF, unquoted files in contract column order come back byte for byte (minus the header)."""
    month = open_month(source, JAN, block_size=block_size)
    out = read_all(month)
    month.finish()
    for contract in CONTRACTS:
        assert out[contract.table] == body(source / contract.filename), contract.filename


def test_chunks_come_in_contract_column_order(month: Path, generated: Path) -> None:
    path = month / "subscriptions.csv"
    table = [line.split(",") for line in lines_of(path) if line]
    order = list(range(len(table[0])))[::-1]
    path.write_text("\n".join(",".join(row[i] for i in order) for row in table) + "\n")
    reader = open_month(month, JAN)
    assert read_all(reader)["subscriptions"] == body(generated / "subscriptions.csv")
    reader.finish()


def test_values_are_never_reformatted(month: Path) -> None:
    set_field(month, "subscriptions.csv", 2, "monthly_fee", "029.80")
    set_field(month, "subscriptions.csv", 3, "total_paid", "+100")
    set_field(month, "usage_agg_30d.csv", 2, "watch_hours_30d", "1.50E+01")
    reader = open_month(month, JAN)
    out = read_all(reader)
    reader.finish()
    subs = out["subscriptions"].split(b"\n")
    assert subs[0].split(b",")[6] == b"029.80"
    assert subs[1].split(b",")[7] == b"+100"
    assert out["usage_agg_30d"].split(b"\n")[0].split(b",")[1] == b"1.50E+01"


def test_blank_values_are_empty_unquoted_fields(month: Path, generated: Path) -> None:
    path = month / "subscriptions.csv"
    text = path.read_text()
    blanks = text.count(",,,")  # plan_stream_tv and plan_stream_movies blank (no internet)
    assert blanks > 10
    path.write_text(text.replace(",,,", ',"","",'))  # quoted blanks are blanks too
    reader = open_month(month, JAN)
    out = read_all(reader)
    reader.finish()
    assert out["subscriptions"] == body(generated / "subscriptions.csv")
    assert out["subscriptions"].count(b",,,") == blanks


def test_nothing_is_yielded_once_a_violation_is_known(month: Path) -> None:
    n = data_lines(month / "users.csv")
    set_field(month, "users.csv", n // 2, "user_gender", "Unknown")
    reader = open_month(month, JAN, block_size=SMALL_BLOCK)
    users, *others = reader.files
    yielded = b"".join(users.chunks())
    assert reader.failed and users.failed
    assert 0 < yielded.count(b"\n") < n // 2  # blocks before the bad line only
    assert all(b"".join(f.chunks()) == b"" for f in others)  # the month failed: nothing more is sent
    with pytest.raises(ContractError, match="user_gender"):
        reader.finish()


def test_a_block_with_a_repeated_user_id_is_never_yielded(month: Path) -> None:
    """COPY never receives a duplicate key, even when the repeat is many blocks later."""
    first = uid_at(month, "usage_agg_30d.csv", 2)
    last = data_lines(month / "usage_agg_30d.csv") + 1
    set_field(month, "usage_agg_30d.csv", last, "user_id", first)
    reader = open_month(month, JAN, block_size=SMALL_BLOCK)
    usage = reader.file("usage_agg_30d")
    for f in reader.files[:2]:
        b"".join(f.chunks())
    yielded = b"".join(usage.chunks())
    assert yielded.count(first.encode() + b",") == 1
    with pytest.raises(ContractError) as caught:
        reader.finish()
    err = caught.value
    expected = (
        f"usage_agg_30d.csv: column 'user_id': must be unique (2 rows; e.g. line 2 (user_id {first}): "
        f"'{first}'; line {last} (user_id {first}): '{first}')"
    )
    assert expected in [str(v) for v in err.violations]


def test_rows_are_counted(source: Path) -> None:
    valid = validate_month(source, JAN, block_size=SMALL_BLOCK)
    assert {t: f.rows for t, f in valid.files.items()} == {
        c.table: data_lines(source / c.filename) for c in CONTRACTS
    }


def test_a_file_changed_while_being_read(month: Path) -> None:
    reader = open_month(month, JAN)
    path = month / "labels.csv"
    path.write_text(path.read_text().replace("True", "False"))
    with pytest.raises(ContractError, match=r"labels\.csv: file changed while it was being read"):
        reader.finish()


def test_finish_reads_what_was_not_read_and_reports_every_file(month: Path) -> None:
    set_field(month, "users.csv", 3, "has_family", "maybe")
    set_field(month, "support_agg_90d.csv", 4, "support_tickets_90d", "-1")
    set_field(month, "labels.csv", 5, "churn_label", "")
    reader = open_month(month, JAN)
    b"".join(reader.files[0].chunks())  # only users.csv is read by the caller
    with pytest.raises(ContractError) as caught:
        reader.finish()
    assert [v.file for v in caught.value.violations] == ["users.csv", "support_agg_90d.csv", "labels.csv"]
    assert [f.rows for f in reader.files] == [400] * 6
    with pytest.raises(ContractError) as again:  # finish is idempotent
        reader.finish()
    assert again.value.violations == caught.value.violations


def test_a_reader_closed_halfway(month: Path) -> None:
    with open_month(month, JAN, block_size=SMALL_BLOCK) as reader:
        next(iter(reader.files[0].chunks()))
    with pytest.raises(ContractError, match=r"users\.csv: reading stopped at line \d+ \(closed\)"):
        reader.finish()


# --- rules ---------------------------------------------------------------------------------------

RULES = [
    ("subscriptions.csv", "months_active", "one", "must be an integer"),
    ("subscriptions.csv", "months_active", "1.0", "must be an integer"),
    ("subscriptions.csv", "months_active", "1001", "must be between 0 and 1000"),
    ("subscriptions.csv", "monthly_fee", "29.855", "must be a decimal with at most 2 places"),
    ("subscriptions.csv", "monthly_fee", "-5.00", "must be between 0 and 100000"),
    ("subscriptions.csv", "monthly_fee", "1e3", "must be a decimal with at most 2 places"),
    ("usage_agg_30d.csv", "watch_hours_30d", "nan", "must be a number"),
    ("usage_agg_30d.csv", "watch_hours_30d", "inf", "must be a number"),
    ("usage_agg_30d.csv", "watch_hours_30d", "1e400", "must be between 0 and 720"),
    ("usage_agg_30d.csv", "watch_hours_30d", "720.5", "must be between 0 and 720"),
    ("subscriptions.csv", "paperless_billing", "true", "must be True or False"),
    ("subscriptions.csv", "contract_type", "Weekly", "must be one of Month-to-month, One year, Two year"),
    ("users.csv", "signup_date", "20220205", "must be a date YYYY-MM-DD"),
    ("users.csv", "signup_date", "2022-02-30", "must be a real calendar date"),
    ("users.csv", "signup_date", "2023-02-29", "must be a real calendar date"),
    ("users.csv", "signup_date", "0000-01-01", "must be a real calendar date"),
    ("users.csv", "signup_date", "2024-02-01", "must not be after as_of 2024-01-31"),
    ("users.csv", "user_id", "a b", "must be a user id"),
    ("users.csv", "user_id", "-12", "must be a user id"),
    ("users.csv", "user_id", "x" * 65, "must be a user id"),
    ("labels.csv", "churn_label", "", "must not be blank"),
    ("labels.csv", "churn_label", '""', "must not be blank"),
]


@pytest.mark.parametrize(("file", "column", "value", "rule"), RULES)
def test_each_rule(month: Path, file: str, column: str, value: str, rule: str) -> None:
    line = 7
    uid = set_field(month, file, line, column, value)
    err = error_of(month)
    assert len(err.violations) == 1, str(err)
    v = err.violations[0]
    assert (v.file, v.column, v.rule.split(":")[0], v.count) == (file, column, rule, 1)
    if len(value) > 40:  # long values are shown cut, with their length
        assert v.examples[0].startswith(
            f"line {line} (user_id {value[:40]}…): '{value[:40]}'… (65 characters)"
        )
        return
    shown = "blank" if value in ("", '""') else repr(value)
    who = f" (user_id {uid})" if column != "user_id" else f" (user_id {value})"
    assert v.examples[0].startswith(f"line {line}{who}: {shown}"), v.examples


@pytest.mark.parametrize("value", ["1500-01-01", "0001-01-01", "2024-01-31", "2000-02-29"])
def test_old_and_edge_dates_are_dates(month: Path, value: str) -> None:
    set_field(month, "users.csv", 2, "signup_date", value)
    validate_month(month, JAN)


def test_streaming_plans_are_blank_exactly_without_internet(month: Path) -> None:
    lines = lines_of(month / "subscriptions.csv")
    with_net = next(i for i, x in enumerate(lines[1:], 2) if x.endswith((",DSL", ",Fiber optic")))
    without = next(i for i, x in enumerate(lines[1:], 2) if x.endswith(",No"))
    set_field(month, "subscriptions.csv", with_net, "plan_stream_tv", "")
    set_field(month, "subscriptions.csv", without, "plan_stream_movies", "False")
    err = error_of(month)
    got = {(v.column, v.rule, v.count, v.examples[0].split(":")[0]) for v in err.violations}
    rule = "must be blank exactly when net_service is No"
    assert got == {
        (
            "plan_stream_tv",
            rule,
            1,
            f"line {with_net} (user_id {uid_at(month, 'subscriptions.csv', with_net)})",
        ),
        (
            "plan_stream_movies",
            rule,
            1,
            f"line {without} (user_id {uid_at(month, 'subscriptions.csv', without)})",
        ),
    }


def test_violations_are_counted_with_a_few_examples_across_blocks(month: Path) -> None:
    bad = [5, 60, 61, 200, 333, 390, 401]
    for line in bad:
        set_field(month, "usage_agg_30d.csv", line, "skips_7d", "x")
    err = error_of(month, block_size=SMALL_BLOCK)
    (v,) = err.violations
    assert (v.column, v.rule, v.count) == ("skips_7d", "must be an integer", 7)
    assert [int(e.split()[1]) for e in v.examples] == bad[:5]


# --- across files --------------------------------------------------------------------------------


def test_a_user_unknown_to_users_csv(month: Path) -> None:
    path = month / "labels.csv"
    path.write_text(path.read_text() + "0000-GHOST,True\n")
    (v,) = error_of(month).violations
    assert str(v) == (
        "labels.csv: column 'user_id': user_id not found in users.csv (1 row; e.g. line 402 (user_id 0000-GHOST): "
        "'0000-GHOST')"
    )


def _drop_rows(path: Path, first_line: int, count: int) -> list[str]:
    lines = lines_of(path)
    dropped = lines[first_line - 1 : first_line - 1 + count]
    path.write_text("\n".join(lines[: first_line - 1] + lines[first_line - 1 + count :]))
    return [x.split(",")[0] for x in dropped]


def test_every_user_needs_a_row_in_every_file(month: Path) -> None:
    gone = _drop_rows(month / "labels.csv", 101, 100)
    (v,) = error_of(month).violations
    assert (v.file, v.column, v.count, v.unit) == ("labels.csv", "user_id", 100, "user")
    assert v.rule.startswith("every user in users.csv must have a row here")
    assert v.examples[0] == f"users.csv line 101 (user_id {gone[0]})"
    assert "(100 users; e.g." in str(v)


def test_allow_incomplete_turns_missing_rows_into_a_warning(month: Path) -> None:
    _drop_rows(month / "labels.csv", 101, 100)
    _drop_rows(month / "payments_agg_90d.csv", 2, 1)
    valid = validate_month(month, JAN, allow_incomplete=True)
    assert valid.files["labels"].rows == 300
    assert len(valid.warnings) == 2
    assert valid.warnings[1].startswith(
        "labels.csv: 100 user(s) of users.csv have no row (allowed by allow_incomplete"
    )


def test_files_in_another_order_than_users_csv(month: Path) -> None:
    path = month / "support_agg_90d.csv"
    lines = lines_of(path)
    rows = [x for x in lines[1:] if x]
    path.write_text("\n".join([lines[0], *reversed(rows)]) + "\n")
    validate_month(month, JAN, block_size=SMALL_BLOCK)
    gone = _drop_rows(path, 50, 1)  # users.csv's line 352 (reversed order)
    (v,) = error_of(month, block_size=SMALL_BLOCK).violations
    assert v.examples == (f"users.csv line {401 - 50 + 2} (user_id {gone[0]})",)


def test_labels_exactly_one_per_user(month: Path) -> None:
    path = month / "labels.csv"
    second = lines_of(path)[2]
    path.write_text(path.read_text() + second + "\n")
    (v,) = error_of(month).violations
    assert (v.file, v.rule, v.count) == ("labels.csv", "must be unique", 2)


# --- bounded cost --------------------------------------------------------------------------------


def test_reading_stops_after_enough_failing_values(month: Path) -> None:
    path = month / "usage_agg_30d.csv"
    lines = lines_of(path)
    rows = [x for x in lines[1:] if x] * 50  # 20,000 rows, every id repeated, every count bad
    path.write_text("\n".join([lines[0], *(r.replace(",", ",x", 1) for r in rows)]) + "\n")
    err = error_of(month, block_size=SMALL_BLOCK)
    stop = err.violations[-1]
    assert stop.file == "usage_agg_30d.csv"
    assert stop.rule.startswith("stopped reading at line ")
    assert f"after {MAX_FAILING_VALUES:,}" in stop.rule or "failing values" in stop.rule
    at = int(stop.rule.split()[4].replace(",", ""))
    assert at < 2 * MAX_FAILING_VALUES  # far from the 20,001 lines


def test_reading_stops_after_the_first_malformed_block(month: Path) -> None:
    path = month / "usage_agg_30d.csv"
    lines = lines_of(path)
    lines[99] = lines[99] + ",extra"
    path.write_text("\n".join(lines + ["a,b"] * 30_000))
    err = error_of(month)
    texts = [str(v) for v in err.violations if v.file == "usage_agg_30d.csv"]
    assert texts[0].startswith(
        "usage_agg_30d.csv: malformed CSV: 1,000 row(s) with a wrong number of fields: line 100: 7 fields, header has 6;"
    )
    assert texts[-1].startswith("usage_agg_30d.csv: stopped reading at line ")


def test_a_two_megabyte_line(month: Path) -> None:
    lines = lines_of(month / "labels.csv")
    lines.insert(10, "x" * 2_000_000 + ",True")
    (month / "labels.csv").write_text("\n".join(lines))
    texts = [str(v) for v in error_of(month).violations]
    assert texts[0] == "labels.csv: line longer than 65,536 bytes (1 row; e.g. line 11: 2,000,005 bytes)"
    assert all(len(t) < 500 for t in texts)


def test_a_line_longer_than_a_block(month: Path) -> None:
    lines = lines_of(month / "labels.csv")
    lines.insert(300, "y" * 3 * SMALL_BLOCK + ",True")
    (month / "labels.csv").write_text("\n".join(lines))
    texts = [str(v) for v in error_of(month, block_size=SMALL_BLOCK).violations]
    assert texts[0] == f"labels.csv: line longer than {SMALL_BLOCK:,} bytes (1 row; e.g. line 301)"
    assert texts[1] == "labels.csv: stopped reading at line 301; the rest of the file was not checked"


def test_a_garbage_file_takes_little_memory(tmp_path: Path, generated: Path) -> None:
    """40 MB of comma-separated words: rejected after one block, in a fraction of the file's size."""
    month = tmp_path / "garbage"
    shutil.copytree(generated, month)
    words = b"lorem,ipsum dolor,sit amet,consectetur,adipiscing elit,sed do,eiusmod\n"
    header = b"user_id,watch_hours_30d,avg_session_mins_7d,unique_devices_30d,skips_7d,rebuffer_events_7d\n"
    (month / "usage_agg_30d.csv").write_bytes(header + words * (40_000_000 // len(words)))
    script = (
        "import resource, sys\n"
        "import pyarrow as pa\n"
        "from streamflow.data.validate import ContractError, validate_month\n"
        "try:\n"
        f"    validate_month({str(month)!r}, '2024-01-31')\n"
        "except ContractError as e:\n"
        "    print(e.violations[-1])\n"
        "print(pa.default_memory_pool().max_memory())\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=120
    )
    stop, peak = out.stdout.strip().split("\n")
    assert "stopped reading at line" in stop
    assert int(peak) < 16 * csv_dialect.BLOCK_BYTES, peak  # Arrow's own allocations: a few blocks


# --- hashing for uniqueness ----------------------------------------------------------------------


def test_hash64_is_a_function_of_the_string() -> None:
    values = pa.array(["a", "bb", "c" * 64, "a", "7590-VHVEG", "c" * 63 + "d", ""])
    h = id_hashes.hash64(values)
    assert h[0] == h[3] and len(set(h.tolist())) == 6
    # Beyond 64 bytes (never a valid id) only the length is mixed in: a shared hash is then
    # confirmed on the strings themselves.
    long = id_hashes.hash64(pa.array(["c" * 100, "c" * 99 + "d"]))
    assert long[0] == long[1]
    sliced = values.slice(2, 3)
    assert id_hashes.hash64(sliced).tolist() == h[2:5].tolist()
    fixed = pa.array([f"{i:04d}-ABCDE" for i in range(1000)])
    assert len(set(id_hashes.hash64(fixed).tolist())) == 1000


def test_hash_set_finds_repeats_within_and_across_adds() -> None:
    s = id_hashes.HashSet()
    rng = np.random.default_rng(0)
    values = rng.integers(0, 2**63, 10_000, dtype=np.int64).astype(np.uint64)
    for part in np.array_split(values, 20):
        assert not s.add(part)
    assert s.add(values[1234:1235])
    assert id_hashes.HashSet().add(np.array([5, 7, 5], dtype=np.uint64))


def test_a_hash_collision_is_not_a_duplicate(month: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(user_ids, "hash64", lambda values: np.zeros(len(values), dtype=np.uint64))
    reader = open_month(month, JAN, block_size=SMALL_BLOCK)
    out = read_all(reader)
    reader.finish()
    assert out["users"].count(b"\n") == 400


# --- the whole month at once ---------------------------------------------------------------------


def test_validate_month_returns_the_readers_by_table(source: Path) -> None:
    valid = validate_month(source, JAN)
    assert list(valid.files) == [c.table for c in CONTRACTS]
    assert valid.files[USERS.table].rows == valid.files[LABELS.table].rows
    assert (
        valid.files[SUBSCRIPTIONS.table].sha256
        == hashlib.sha256((source / SUBSCRIPTIONS.filename).read_bytes()).hexdigest()
    )


def test_contract_error_format_is_stable() -> None:
    v = validate.Violation(
        "labels.csv", "must be unique", "user_id", 2, ("line 2 (user_id a): 'a'", "line 3")
    )
    assert (
        str(v)
        == "labels.csv: column 'user_id': must be unique (2 rows; e.g. line 2 (user_id a): 'a'; line 3)"
    )
    err = ContractError("/m", [v, validate.Violation("users.csv", "file is missing")])
    assert str(err) == f"/m: 2 contract violation(s):\n  - {v}\n  - users.csv: file is missing"


def test_checks_across_files_run_beside_other_violations(month: Path) -> None:
    set_field(month, "users.csv", 2, "signup_date", "0000-01-01")
    _drop_rows(month / "labels.csv", 101, 100)
    assert [(v.file, v.column) for v in error_of(month).violations] == [
        ("users.csv", "signup_date"),
        ("labels.csv", "user_id"),
    ]


def test_a_file_without_rows_is_not_also_missing_every_user(month: Path) -> None:
    (month / "labels.csv").write_text("user_id,churn_label\n")
    assert [str(v) for v in error_of(month).violations] == ["labels.csv: has a header but no data rows"]


def test_a_blank_user_id_is_not_also_a_missing_user(month: Path) -> None:
    set_field(month, "labels.csv", 9, "user_id", "")
    (v,) = error_of(month).violations
    assert (v.column, v.rule, v.examples) == ("user_id", "must not be blank", ("line 9: blank",))


def test_a_reader_closed_before_reading(month: Path) -> None:
    reader = open_month(month, JAN)
    reader.files[5].chunks()  # created, never started
    reader.close()
    with pytest.raises(ContractError, match=r"labels\.csv: reading stopped at line 1 \(closed\)"):
        reader.finish()


def test_a_malformed_last_line(month: Path) -> None:
    path = month / "labels.csv"
    path.write_text(path.read_text() + "1234-LAST")
    texts = [str(v) for v in error_of(month, block_size=SMALL_BLOCK).violations]
    assert texts == [
        "labels.csv: malformed CSV: 1 row(s) with a wrong number of fields: line 402: 1 fields, header has 2"
    ]
