"""A corpus of broken exports: each must fail with a message naming the problem, and write nothing."""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from streamflow.data.ingest import ingest_month
from streamflow.data.validate import ContractError
from streamflow.settings import Settings
from tests.conftest import MONTHS
from tests.integration.test_ingest import table_digest

Mutation = Callable[[Path], None]


def edit(file: str, line: int, transform: Callable[[str], str]) -> Mutation:
    """Rewrite one line (1 = header) of one file."""

    def apply(month: Path) -> None:
        path = month / file
        lines = path.read_text().split("\n")
        lines[line - 1] = transform(lines[line - 1])
        path.write_text("\n".join(lines))

    return apply


def set_field(file: str, line: int, column: int, value: str) -> Mutation:
    def transform(text: str) -> str:
        fields = text.split(",")
        fields[column] = value
        return ",".join(fields)

    return edit(file, line, transform)


def write(file: str, content: bytes) -> Mutation:
    return lambda month: (month / file).write_bytes(content)


def append_line(file: str, text: str) -> Mutation:
    return lambda month: (month / file).write_text((month / file).read_text() + text + "\n")


# (id, mutation, as_of, expected message pattern)
CASES: list[tuple[str, Mutation, str, str]] = [
    (
        "missing-file",
        lambda m: (m / "payments_agg_90d.csv").unlink(),
        "2024-01-31",
        r"payments_agg_90d\.csv: file is missing",
    ),
    (
        "missing-column",
        edit("subscriptions.csv", 1, lambda t: t.replace(",monthly_fee", ",fee")),
        "2024-01-31",
        r"subscriptions\.csv: missing required column\(s\): monthly_fee",
    ),
    (
        "extra-column",
        lambda m: _add_column(m / "payments_agg_90d.csv"),
        "2024-01-31",
        r"payments_agg_90d\.csv: unexpected column\(s\): coupon",
    ),
    (
        "wrong-type",
        set_field("subscriptions.csv", 2, 1, "one"),
        "2024-01-31",
        r"subscriptions\.csv: column 'months_active': must be an integer \(1 row; e\.g\. line 2 \(user_id 7590-VHVEG\): 'one'\)",
    ),
    (
        "bad-date",
        set_field("users.csv", 3, 1, "2022-02-30"),
        "2024-01-31",
        r"users\.csv: column 'signup_date': must be a real calendar date .*line 3 \(user_id 5575-GNVDE\): '2022-02-30'",
    ),
    (
        "negative-fee",
        set_field("subscriptions.csv", 4, 6, "-5.00"),
        "2024-01-31",
        r"column 'monthly_fee': must be between 0 and 100000 .*line 4 .*'-5\.00'",
    ),
    (
        "unknown-category",
        set_field("subscriptions.csv", 2, 4, "Weekly"),
        "2024-01-31",
        r"column 'contract_type': must be one of Month-to-month, One year, Two year .*'Weekly'",
    ),
    (
        "duplicate-ids",
        edit("usage_agg_30d.csv", 3, lambda t: "7590-VHVEG," + t.split(",", 1)[1]),
        "2024-01-31",
        r"usage_agg_30d\.csv: column 'user_id': must be unique \(2 rows; e\.g\. line 2 .*line 3",
    ),
    (
        "id-missing-from-users",
        append_line("labels.csv", "0000-GHOST,True"),
        "2024-01-31",
        r"labels\.csv: column 'user_id': user_id not found in users\.csv \(1 row; e\.g\. line 7045 \(user_id 0000-GHOST\)",
    ),
    ("empty-file", write("support_agg_90d.csv", b""), "2024-01-31", r"support_agg_90d\.csv: file is empty"),
    (
        "header-only",
        write("labels.csv", b"user_id,churn_label\n"),
        "2024-01-31",
        r"labels\.csv: has a header but no data rows",
    ),
    (
        "truncated-row",
        edit("subscriptions.csv", 5, lambda t: t[:15]),
        "2024-01-31",
        r"subscriptions\.csv: malformed CSV: 1 row\(s\) with a wrong number of fields: line 5: 3 fields, header has 9",
    ),
    (
        "non-utf8",
        lambda m: _corrupt_line(m / "users.csv", 4),
        "2024-01-31",
        r"users\.csv: line 4: byte 0xff is not UTF-8",
    ),
    (
        "bad-boolean",
        set_field("subscriptions.csv", 2, 5, "Yes"),
        "2024-01-31",
        r"column 'paperless_billing': must be True or False .*'Yes'",
    ),
    (
        "blank-label",
        set_field("labels.csv", 6, 1, ""),
        "2024-01-31",
        r"labels\.csv: column 'churn_label': must not be blank \(1 row; e\.g\. line 6",
    ),
    (
        "too-many-fields",
        edit("payments_agg_90d.csv", 7, lambda t: t + ",9"),
        "2024-01-31",
        r"payments_agg_90d\.csv: malformed CSV: 1 row\(s\) with a wrong number of fields: line 7: 3 fields, header has 2",
    ),
    (
        "three-decimals",
        set_field("subscriptions.csv", 2, 6, "29.855"),
        "2024-01-31",
        r"column 'monthly_fee': must be a decimal with at most 2 places",
    ),
    (
        "signup-after-as-of",
        set_field("users.csv", 2, 1, "2024-03-01"),
        "2024-01-31",
        r"users\.csv: column 'signup_date': must not be after as_of 2024-01-31 .*7590-VHVEG",
    ),
    (
        "plan-blank-with-internet",
        set_field("subscriptions.csv", 2, 2, ""),
        "2024-01-31",
        r"column 'plan_stream_tv': must be blank exactly when net_service is No .*line 2 \(user_id 7590-VHVEG\)",
    ),
    (
        "watch-hours-out-of-range",
        set_field("usage_agg_30d.csv", 2, 1, "1e6"),
        "2024-01-31",
        r"column 'watch_hours_30d': must be between 0 and 720",
    ),
    ("bad-as-of", lambda m: None, "2024-13-01", r"--as-of: '2024-13-01' is not a date YYYY-MM-DD"),
]


def _corrupt_line(path: Path, line: int) -> None:
    lines = path.read_bytes().split(b"\n")
    lines[line - 1] = lines[line - 1].replace(b"ale", b"\xffle", 1)
    path.write_bytes(b"\n".join(lines))


def _add_column(path: Path) -> None:
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0] + ",coupon", *(line + ",0" for line in lines[1:])]) + "\n")


@pytest.fixture
def month_copy(tmp_path: Path) -> Path:
    target = tmp_path / "month_000"
    shutil.copytree(MONTHS["2024-01-31"], target)
    return target


@pytest.mark.parametrize(("mutate", "as_of", "message"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_rejected_and_writes_nothing(
    ingested: Settings, month_copy: Path, mutate: Mutation, as_of: str, message: str
) -> None:
    before = table_digest(ingested)
    mutate(month_copy)
    with pytest.raises(ContractError) as caught:
        ingest_month(month_copy, as_of, ingested)
    assert caught.value.violations, "a contract error lists its violations"
    assert re.search(message, str(caught.value)), str(caught.value)
    assert table_digest(ingested) == before


def test_every_problem_is_reported_at_once(ingested: Settings, month_copy: Path) -> None:
    (month_copy / "payments_agg_90d.csv").unlink()
    set_field("subscriptions.csv", 2, 1, "one")(month_copy)
    set_field("labels.csv", 6, 1, "")(month_copy)
    with pytest.raises(ContractError) as caught:
        ingest_month(month_copy, "2024-01-31", ingested)
    assert len(caught.value.violations) == 3


def test_missing_folder(ingested: Settings, tmp_path: Path) -> None:
    with pytest.raises(ContractError, match="folder does not exist"):
        ingest_month(tmp_path / "nope", "2024-01-31", ingested)
