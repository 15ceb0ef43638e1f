"""Time the synthetic month generator (default: 1,000,000 users x 2 months) and print rows/s.

Run: .venv/bin/python bench/bench_generate.py [--users N] [--months M] [--out DIR] [--progress]
Not a test: the output goes to a temporary folder (removed afterwards) unless --out is given.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from datetime import date
from pathlib import Path

from streamflow.data.contracts import CONTRACTS
from streamflow.data.generate import generate_months


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--months", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="keep the files here (default: a temporary folder)")
    parser.add_argument("--progress", action="store_true")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench_generate_") as tmp:
        out = args.out or Path(tmp)
        began = time.perf_counter()
        folders = generate_months(out, args.users, args.months, args.seed, date(2024, 1, 31), args.progress)
        seconds = time.perf_counter() - began
        size = sum((folder / c.filename).stat().st_size for folder, _ in folders for c in CONTRACTS)

    user_months = args.users * args.months
    csv_rows = user_months * len(CONTRACTS)
    print(f"{args.users:,} users x {args.months} months in {seconds:.1f} s ({size / 1e6:,.0f} MB of CSV)")
    rates = f"{user_months / seconds:,.0f} user-months/s, {csv_rows / seconds:,.0f} CSV rows/s"
    print(f"{rates} (6 files a month)")


if __name__ == "__main__":
    main()
