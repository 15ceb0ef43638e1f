"""Synthetic monthly exports that follow the export contract and behave like the real data.

The generator simulates one subscriber base over consecutive months: profiles persist, usage and
billing aggregates drift from month to month, churners (label True in month k) leave before month
k+1 and as many new subscribers join, so the base keeps its size. Churn is drawn from a logistic
model of the features (short tenure, month-to-month contracts, fiber, failed payments, support
tickets, falling watch time...), so models trained on the output find a real signal.

Distributions and literal formats are modelled on the real exports (see shared/data/README.md)
but nothing here reads them: the product must work on machines that do not have them.
Everything is drawn from one seeded numpy Generator in a fixed order, so the same arguments
produce byte-identical files.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from streamflow.data.contracts import (
    CONTRACT_TYPES,
    GENDERS,
    LABEL_COLUMN,
    LABELS,
    NET_SERVICES,
    PAYMENTS,
    SUBSCRIPTIONS,
    SUPPORT,
    USAGE,
    USERS,
    FileContract,
)
from streamflow.months import add_months, is_month_end, month_end

__all__ = ["as_of_dates", "generate_months"]

# Category codes index into the contract's category tuples.
M2M, ONE_YEAR, TWO_YEAR = range(3)
DSL, FIBER, NO_NET = range(3)
assert CONTRACT_TYPES == ("Month-to-month", "One year", "Two year")
assert NET_SERVICES == ("DSL", "Fiber optic", "No")

_ID_LETTERS = 26**5
_ID_SPACE = 10_000 * _ID_LETTERS  # "1234-ABCDE": 4 digits, a dash, 5 capital letters
_MIN_FEE, _MAX_FEE = 18.25, 118.75  # the real fee range
_TARGET_CHURN = 0.255  # the real months churn 26.5 % and 24.2 %
_STEPS_PER_MONTH = 1 + 6  # simulate, then write each file


@dataclass(frozen=True)
class _Drift:
    """Month-level multipliers: the whole base watches, skips and rebuffers a little differently."""

    watch: float
    skips: float
    rebuffers: float
    churn_rate: float


def as_of_dates(start: date, months: int) -> list[date]:
    """The snapshot dates: ``start`` (a month end) and the next ``months - 1`` month ends."""
    if not is_month_end(start):
        raise ValueError(
            f"start must be the last day of a month (e.g. 2024-01-31), got {start.isoformat()}; "
            f"the month end of that month is {month_end(start.year, start.month).isoformat()}"
        )
    if months < 1:
        raise ValueError(f"months must be at least 1, got {months}")
    return [add_months(start, k) for k in range(months)]


def generate_months(
    out_dir: Path | str,
    users: int,
    months: int,
    seed: int,
    start: date | str = date(2024, 1, 31),
    progress: bool = False,
) -> list[tuple[Path, date]]:
    """Write ``out_dir/month_000`` ... ``month_{months-1}``, six contract CSV files each.

    ``users`` is the size of the base in every month. Month k's snapshot date is the k-th month end
    after ``start`` (a month end, as a date or YYYY-MM-DD). Returns (folder, as_of) per month, in order.
    """
    if users < 1:
        raise ValueError(f"users must be at least 1, got {users}")
    dates = as_of_dates(date.fromisoformat(start) if isinstance(start, str) else start, months)
    out_dir = Path(out_dir)
    rng = np.random.default_rng(seed)
    used_ids = np.empty(0, dtype=np.int64)
    result: list[tuple[Path, date]] = []
    with Progress(
        TextColumn("[bold]generate[/] {task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        disable=not progress,
    ) as bar:
        task = bar.add_task(f"{users:,} users x {months} months", total=months * _STEPS_PER_MONTH)
        pop = pd.DataFrame()
        for k, as_of in enumerate(dates):
            if k == 0:
                pop, used_ids = _new_users(rng, users, as_of, used_ids, initial=True)
            else:
                pop, used_ids = _next_month(rng, pop, as_of, used_ids)
            _observe(rng, pop, _drift(rng, k))
            bar.advance(task)
            folder = out_dir / f"month_{k:03d}"
            folder.mkdir(parents=True, exist_ok=True)
            for contract, table in _tables(pop):
                _write(table, folder / contract.filename, contract)
                bar.advance(task)
            result.append((folder, as_of))
    return result


# --- population ---------------------------------------------------------------------------------


def _new_users(
    rng: np.random.Generator, n: int, as_of: date, used_ids: np.ndarray, *, initial: bool
) -> tuple[pd.DataFrame, np.ndarray]:
    """Draw ``n`` subscribers. The initial base has real-like tenures; later ones just joined."""
    ids, used_ids = _draw_ids(rng, n, used_ids)
    senior = rng.random(n) < (0.162 if initial else 0.2)  # seniors churn more, so join more too
    family = rng.random(n) < 0.483
    dependents = rng.random(n) < np.where(family, 0.51, 0.10)
    # Newcomers replace churners, who are mostly month-to-month fiber users: signing them up in that
    # mix keeps the base's composition roughly stable over many months.
    contract_p = [0.55, 0.21, 0.24] if initial else [0.85, 0.10, 0.05]
    contract = _choice(rng, np.broadcast_to(contract_p, (n, 3)))
    # Seniors take fiber far more often (73 % vs 38 % in the real data); long contracts skew to no internet.
    net_p = np.array(
        [
            [[0.33, 0.50, 0.17], [0.40, 0.32, 0.28], [0.38, 0.22, 0.40]],
            [[0.22, 0.75, 0.03], [0.25, 0.65, 0.10], [0.25, 0.55, 0.20]],
        ]
    )
    if not initial:
        net_p[:, M2M] = [[0.25, 0.70, 0.05], [0.15, 0.84, 0.01]]
    net = _choice(rng, net_p[senior.astype(np.intp), contract])
    tv = rng.random(n) < np.where(net == FIBER, 0.565, 0.395)
    movies = rng.random(n) < np.where(tv, 0.717, 0.282)
    paperless = rng.random(n) < np.array([0.64, 0.52, 0.44])[contract] + 0.2 * senior

    if initial:
        tenure = np.select(
            [contract == M2M, contract == ONE_YEAR],
            [
                # A spike of one-month subscribers, then a long exponential tail (median ~12).
                np.where(rng.random(n) < 0.15, 1, 1 + np.floor(rng.exponential(19.0, n))),
                np.rint(rng.normal(42.0, 19.0, n)),
            ],
            np.rint(rng.normal(60.0, 15.0, n)),  # the clip below piles two-year users up at 72
        )
        months_active = np.clip(tenure, 0, 72).astype(np.int64)
    else:
        months_active = np.zeros(n, dtype=np.int64)
    signup = _signup_dates(rng, as_of, months_active)

    # Fees: a base per internet service plus ~13 per streaming plan, on a 0.05 grid like the real ones.
    fee_mean = np.array([47.8, 77.0, 21.1])[net] + np.where(net == NO_NET, 0.0, 13.3 * tv + 13.3 * movies)
    fee_sd = np.array([11.5, 6.4, 2.1])[net]
    fee = np.clip(rng.normal(fee_mean, fee_sd), _MIN_FEE, _MAX_FEE)
    fee_cents = (np.rint(fee * 20) * 5).astype(np.int64)
    # Past fees were not exactly today's fee: total_paid scatters around months * fee.
    paid_ratio = np.clip(rng.normal(1.0, 0.05, n), 0.7, 1.5)
    paid_cents = np.rint(months_active * fee_cents * paid_ratio).astype(np.int64)

    watch_base = (
        np.array([27.3, 32.0, 23.0])[net] + np.where(net == NO_NET, 0.0, 3.0 * tv + 1.0 * movies)
    ) + rng.normal(0.0, 4.2, n)
    # The month before the first snapshot, so month 0 already has falling-usage churners.
    watch_prev = (
        np.clip(watch_base * 1.015 + rng.normal(0.0, 2.0, n), 0.5, 700.0) if initial else np.full(n, np.nan)
    )
    devices_p = np.where(family[:, None], [0.25, 0.35, 0.40], [0.40, 0.33, 0.27])

    pop = pd.DataFrame(
        {
            "id": ids,
            "signup": signup,
            "male": rng.random(n) < 0.505,
            "senior": senior,
            "family": family,
            "dependents": dependents,
            "months_active": months_active,
            "tv": tv,
            "movies": movies,
            "contract": contract,
            "paperless": paperless,
            "fee_cents": fee_cents,
            "paid_cents": paid_cents,
            "net": net,
            "watch_base": watch_base,
            "watch": watch_prev,  # becomes "previous month" when _observe draws this month's value
            "session_base": 29.14 * np.exp(rng.normal(0.0, 0.2, n)),
            "devices": 1 + _choice(rng, devices_p),
            "skip_rate": rng.gamma(40.0, 5.05 / 40.0, n),
            # DSL lines rebuffer more than fiber.
            "rebuffer_rate": rng.gamma(30.0, 2.3 / 30.0, n) * np.array([1.2, 0.85, 1.0])[net],
            "fail_p": rng.beta(2.0, 24.0, n) * (1.0 + 0.3 * paperless),
            "ticket_rate": rng.gamma(2.0, 0.3 / 2.0, n),
            "failed": np.full(n, -1, dtype=np.int64),  # -1: not drawn yet
            "tickets": np.full(n, -1, dtype=np.int64),
            "resolution_tenths": np.full(n, -1, dtype=np.int64),  # hours x 10: exact one-place decimals
            "churn": np.zeros(n, dtype=bool),
        }
    )
    return pop, used_ids


def _next_month(
    rng: np.random.Generator, pop: pd.DataFrame, as_of: date, used_ids: np.ndarray
) -> tuple[pd.DataFrame, np.ndarray]:
    """Churners leave, stayers age a month and pay a fee, newcomers replace the churners one for one."""
    stay = pop.loc[~pop["churn"].to_numpy()].reset_index(drop=True)
    stay["months_active"] += 1
    stay["paid_cents"] += stay["fee_cents"]
    joined, used_ids = _new_users(rng, len(pop) - len(stay), as_of, used_ids, initial=False)
    return pd.concat([stay, joined], ignore_index=True), used_ids


def _drift(rng: np.random.Generator, k: int) -> _Drift:
    """Month k's levels relative to month 0: watch time slowly falls and rebuffers rise.

    Log-levels follow a mean-reverting walk (about -2 % watch time and +10 % rebuffers in month 1,
    like the real months), so each month shifts visibly but the drift stays bounded (about -7 % and
    +40 %) however many months are generated.
    """
    level = np.zeros(3)
    for step in rng.normal([-0.02, 0.0, 0.10], [0.01, 0.02, 0.03], size=(k, 3)):
        level = 0.7 * level + step
    churn_rate = float(np.clip(_TARGET_CHURN + rng.normal(0.0, 0.015), 0.21, 0.30))
    return _Drift(float(np.exp(level[0])), float(np.exp(level[1])), float(np.exp(level[2])), churn_rate)


def _observe(rng: np.random.Generator, pop: pd.DataFrame, drift: _Drift) -> None:
    """Draw this month's usage, payment and support aggregates, then the churn label, in place."""
    n = len(pop)
    net = pop["net"].to_numpy()
    prev = pop["watch"].to_numpy()
    watch = np.clip(pop["watch_base"].to_numpy() * drift.watch + rng.normal(0.0, 2.0, n), 0.5, 700.0)
    pop["watch"] = watch
    pop["session"] = pop["session_base"].to_numpy() * np.exp(rng.normal(0.0, 0.05, n))
    # Device counts mostly persist; some users add or drop a screen.
    redraw = rng.random(n) < 0.15
    pop.loc[redraw, "devices"] = rng.integers(1, 4, int(redraw.sum()))
    pop["skips"] = rng.poisson(pop["skip_rate"].to_numpy() * drift.skips)
    pop["rebuffers"] = rng.poisson(pop["rebuffer_rate"].to_numpy() * drift.rebuffers)
    # 90-day windows overlap by two months, so most users keep last month's counts.
    fresh = (pop["failed"].to_numpy() < 0) | (rng.random(n) < 0.3)
    failed = rng.binomial(2, np.minimum(pop["fail_p"].to_numpy(), 1.0))
    pop["failed"] = np.where(fresh, failed, pop["failed"].to_numpy())
    # Rebuffering users call support more.
    ticket_rate = pop["ticket_rate"].to_numpy() * (0.7 + 0.13 * pop["rebuffers"].to_numpy())
    tickets = np.minimum(rng.poisson(ticket_rate), 4)
    pop["tickets"] = np.where(fresh, tickets, pop["tickets"].to_numpy())
    resolution = np.rint(np.clip(rng.normal(100.0, 39.0, n), 10.0, 250.0)).astype(np.int64)
    pop["resolution_tenths"] = np.where(fresh, resolution, pop["resolution_tenths"].to_numpy())

    contract = pop["contract"].to_numpy()
    tickets = pop["tickets"].to_numpy()
    # Newcomers have no previous month: no drop.
    drop = np.where(np.isnan(prev), 0.0, np.maximum(prev - watch, 0.0))
    logit = (
        -0.55 * np.log1p(pop["months_active"].to_numpy())
        + np.array([0.0, -1.1, -2.2])[contract]
        + np.array([0.0, 0.8, -0.7])[net]
        + 0.35 * pop["paperless"].to_numpy()
        + 0.3 * pop["senior"].to_numpy()
        - 0.15 * pop["family"].to_numpy()
        - 0.2 * pop["dependents"].to_numpy()
        + 0.7 * pop["failed"].to_numpy()
        + 0.45 * tickets
        + 0.006 * (pop["resolution_tenths"].to_numpy() - 100.0) * (tickets > 0)
        + 0.35 * drop
        + 0.08 * pop["rebuffers"].to_numpy()
        + 0.01 * (pop["fee_cents"].to_numpy() / 100.0 - 65.0)
    )
    p = _sigmoid(logit + _intercept(logit, drift.churn_rate))
    pop["churn"] = rng.random(n) < p


def _intercept(logit: np.ndarray, rate: float) -> float:
    """The intercept that makes the mean churn probability ``rate``.

    Calibrating each month keeps the churn rate steady although the base gets younger as churners
    are replaced by newcomers. Newton steps (the mean is increasing in the intercept), capped so a
    flat start cannot overshoot; converges in a handful of steps.
    """
    b = float(np.log(rate / (1.0 - rate)) - logit.mean())
    for _ in range(20):
        p = _sigmoid(logit + b)
        gap = float(p.mean()) - rate
        if abs(gap) < 1e-9:
            break
        b -= float(np.clip(gap / max(float((p * (1.0 - p)).mean()), 1e-12), -2.0, 2.0))
    return b


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _choice(rng: np.random.Generator, p: np.ndarray) -> np.ndarray:
    """One category index per row of the probability matrix ``p`` (rows sum to 1)."""
    u = rng.random(len(p))
    return (u[:, None] >= np.cumsum(p, axis=1)[:, :-1]).sum(axis=1)


def _draw_ids(rng: np.random.Generator, n: int, used: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``n`` id codes never used before (churners' ids are not reused); returns them and the new used set."""
    out = np.empty(0, dtype=np.int64)
    while len(out) < n:
        cand = rng.integers(0, _ID_SPACE, n - len(out), dtype=np.int64)
        # One stable sort of (used, cand) finds every repeat: an equal earlier value means the
        # code is taken. (np.unique/np.isin are several times slower at a million rows.)
        both = np.concatenate([used, cand])
        order = np.argsort(both, kind="stable")
        ranked = both[order]
        repeat = np.zeros(len(both), dtype=bool)
        repeat[1:] = ranked[1:] == ranked[:-1]
        taken = np.zeros(len(both), dtype=bool)
        taken[order] = repeat
        cand = cand[~taken[len(used) :]]  # keeps the draw order
        used = ranked[~repeat]  # still sorted, now including cand
        out = np.concatenate([out, cand])
    return out, used


def _signup_dates(rng: np.random.Generator, as_of: date, months_active: np.ndarray) -> np.ndarray:
    """A day within the calendar month ``months_active`` months before as_of's month (never after as_of)."""
    month = np.datetime64(as_of, "M") - months_active.astype("timedelta64[M]")
    first = month.astype("datetime64[D]")
    days = ((month + 1).astype("datetime64[D]") - first).astype(np.int64)
    return first + np.floor(rng.random(len(month)) * days).astype("timedelta64[D]")


# --- output -------------------------------------------------------------------------------------
# Files are written with Arrow's C++ CSV writer (pandas to_csv takes ~5 s per million-row file).
# Every value is first turned into its exact CSV literal, so the bytes match the real exports'
# formats: True/False, blank streaming plans, two-place money, one-place resolution hours.


def _bools(values: np.ndarray, blank: np.ndarray | None = None) -> pa.Array:
    return pc.if_else(pa.array(values, mask=blank), "True", "False")


def _categories(names: tuple[str, ...], codes: np.ndarray) -> pa.Array:
    return pc.take(pa.array(names), pa.array(codes))


def _fixed_point(units: np.ndarray, places: int) -> pa.Array:
    """Non-negative integers in 1/10**places as decimals with exactly ``places`` places (1234 -> 12.34)."""
    whole, frac = np.divmod(units, 10**places)
    frac_text = pc.utf8_lpad(pc.cast(pa.array(frac), pa.string()), places, "0")
    return pc.binary_join_element_wise(pc.cast(pa.array(whole), pa.string()), frac_text, ".")


def _id_array(codes: np.ndarray) -> pa.Array:
    """Id codes as "1234-ABCDE" strings, built as one byte buffer (no per-row Python)."""
    chars = np.empty((len(codes), 10), dtype=np.uint8)
    digits, letters = np.divmod(codes, _ID_LETTERS)
    for i in range(4):
        digits, d = np.divmod(digits, 10)
        chars[:, 3 - i] = ord("0") + d
    chars[:, 4] = ord("-")
    for i in range(5):
        letters, c = np.divmod(letters, 26)
        chars[:, 9 - i] = ord("A") + c
    offsets = np.arange(0, 10 * len(codes) + 1, 10, dtype=np.int32)
    return pa.StringArray.from_buffers(len(codes), pa.py_buffer(offsets), pa.py_buffer(chars))


def _tables(pop: pd.DataFrame) -> list[tuple[FileContract, pa.Table]]:
    """The six files of one month, columns in contract order."""
    uid = _id_array(pop["id"].to_numpy())
    net = pop["net"].to_numpy()
    no_net = net == NO_NET
    days = pop["signup"].to_numpy().astype("datetime64[D]").astype(np.int32)
    tables: list[tuple[FileContract, dict[str, pa.Array]]] = [
        (
            USERS,
            {
                "signup_date": pa.array(days, type=pa.date32()),  # written as YYYY-MM-DD
                "user_gender": _categories(GENDERS, pop["male"].to_numpy().astype(np.int8)),
                "user_is_senior": _bools(pop["senior"].to_numpy()),
                "has_family": _bools(pop["family"].to_numpy()),
                "has_dependents": _bools(pop["dependents"].to_numpy()),
            },
        ),
        (
            SUBSCRIPTIONS,
            {
                "months_active": pa.array(pop["months_active"].to_numpy()),
                # Blank, not False, without internet: no streaming plan at all.
                "plan_stream_tv": _bools(pop["tv"].to_numpy(), blank=no_net),
                "plan_stream_movies": _bools(pop["movies"].to_numpy(), blank=no_net),
                "contract_type": _categories(CONTRACT_TYPES, pop["contract"].to_numpy()),
                "paperless_billing": _bools(pop["paperless"].to_numpy()),
                "monthly_fee": _fixed_point(pop["fee_cents"].to_numpy(), 2),
                "total_paid": _fixed_point(pop["paid_cents"].to_numpy(), 2),
                "net_service": _categories(NET_SERVICES, net),
            },
        ),
        (
            USAGE,
            {
                # Shortest round-trip text, as Python's repr (values never reach exponent range).
                "watch_hours_30d": pa.array(pop["watch"].to_numpy()),
                "avg_session_mins_7d": pa.array(pop["session"].to_numpy()),
                "unique_devices_30d": pa.array(pop["devices"].to_numpy()),
                "skips_7d": pa.array(pop["skips"].to_numpy()),
                "rebuffer_events_7d": pa.array(pop["rebuffers"].to_numpy()),
            },
        ),
        (PAYMENTS, {"failed_payments_90d": pa.array(pop["failed"].to_numpy())}),
        (
            SUPPORT,
            {
                "support_tickets_90d": pa.array(pop["tickets"].to_numpy()),
                "ticket_avg_resolution_hrs_90d": _fixed_point(pop["resolution_tenths"].to_numpy(), 1),
            },
        ),
        (LABELS, {LABEL_COLUMN: _bools(pop["churn"].to_numpy())}),
    ]
    return [(contract, pa.table({"user_id": uid, **columns})) for contract, columns in tables]


def _write(table: pa.Table, path: Path, contract: FileContract) -> None:
    if tuple(table.column_names) != contract.names:  # a mismatch is a bug here, not bad data
        raise AssertionError(f"{contract.filename}: columns {tuple(table.column_names)} != {contract.names}")
    with path.open("wb") as fh:
        # Arrow quotes header names; the real exports do not, so the header is written by hand.
        fh.write((",".join(contract.names) + "\n").encode())
        # No value contains a comma, quote or newline, so nothing needs quoting; nulls are blank.
        pcsv.write_csv(table, fh, pcsv.WriteOptions(include_header=False, quoting_style="none"))
