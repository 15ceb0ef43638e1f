"""Training cost per model type as the users grow: selection, fit, ONNX conversion and verification.

Run: .venv/bin/python bench/bench_train.py [--users 7043 100000 1000000] [--models baseline gbm logreg]
     [--data-dir /tmp/streamflow-bench-train] [--no-real] [--progress]

Not a test, and no database: each month is read from its CSV export and joined in memory (Arrow), the
way Feast's training set would hand it over (same columns, types and order), then
``streamflow.training.train.fit_and_convert`` runs on it: the hold-out split (hash of user_id), the
grid search and F1-threshold cross-validation on the bounded stratified sample, the final fit on every
training row, hold-out metrics, ONNX conversion and verification on every hold-out row. Generated
months (seed 42) are written once under --data-dir and reused. The real months of ../shared are run
too when present: trained and evaluated at 2024-01-31 on January's labels (aligned) and, for the
baseline, on February's (label horizon 1).

Each (data, model) pair runs in its own process, so that its peak RSS (ru_maxrss) is its own. The
single-row latency is ``OnnxPredictor.predict_one`` (the API's path) on hold-out rows given as Feast's
online store returns them (plain Python values, None for missing), median of 2,000 calls after 200
warm-up calls.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.unit.conftest.read_month: the same join the model tests use

SEEDS = Path(os.environ.get("STREAMFLOW_SEEDS_DIR", ROOT.parent / "shared/data/seeds"))
SERVICE = {"baseline": "churn_v1", "gbm": "churn_v2", "logreg": "churn_v2"}  # the course model; ours


def _plain(value: object) -> object:
    if hasattr(value, "item"):
        value = value.item()
    return None if isinstance(value, float) and value != value else value


def run_one(folder: str, labels: str | None, model_type: str, progress: bool) -> dict:
    """One training in this process; a JSON-ready row of figures."""
    from tests.unit.conftest import read_month

    from streamflow.features.definitions import feature_spec
    from streamflow.serving.fast_model import OnnxPredictor
    from streamflow.settings import Settings
    from streamflow.training.train import fit_and_convert

    t0 = time.perf_counter()
    frame = read_month(folder, labels)
    read_s = time.perf_counter() - t0
    spec = feature_spec(SERVICE[model_type])
    settings = Settings()
    trained = fit_and_convert(frame, spec, model_type, settings.seed, settings, show_progress=progress)

    predictor = OnnxPredictor(trained.onnx_bytes, spec)
    held = frame[trained.holdout].head(2_000)[list(spec.names)].astype(object)
    rows = [{k: _plain(v) for k, v in r.items()} for r in held.to_dict("records")]
    for row in rows[:200]:
        predictor.predict_one(row)
    times = []
    for row in rows:
        start = time.perf_counter()
        predictor.predict_one(row)
        times.append(time.perf_counter() - start)
    clf = trained.fitted.pipeline.named_steps["clf"]
    if hasattr(clf, "estimators_"):
        nodes = sum(t.tree_.node_count for t in clf.estimators_)
    elif hasattr(clf, "_predictors"):
        nodes = sum(len(p.nodes) for trees in clf._predictors for p in trees)
    else:
        nodes = 0
    seconds = trained.seconds
    return {
        "users": len(frame),
        "model": model_type,
        "service": spec.service,
        "read_s": read_s,
        **{f"{k}_s": v for k, v in seconds.items()},
        "cv_s": seconds["cv_search"] + seconds["cv_threshold"],
        "train_s": sum(seconds.values()),
        "cv_rows": trained.fitted.cv_rows,
        "params": trained.fitted.params,
        "onnx_bytes": len(trained.onnx_bytes),
        "nodes": nodes,
        "onnx_diff": trained.onnx_max_abs_diff,
        "predict_one_us": statistics.median(times) * 1e6,
        "roc_auc": trained.metrics["roc_auc"],
        "threshold": trained.fitted.threshold,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def _child(folder: Path, labels: Path | None, model_type: str, progress: bool) -> dict:
    cmd = [sys.executable, __file__, "--one", str(folder), "--model-one", model_type]
    if labels is not None:
        cmd += ["--labels-one", str(labels)]
    if progress:
        cmd.append("--progress")
    out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _generated(data_dir: Path, users: int) -> Path:
    from streamflow.data.generate import generate_months

    folder = data_dir / f"users_{users}"
    if not (folder / "month_000" / "labels.csv").exists():
        print(f"generating {users:,} users ...", file=sys.stderr, flush=True)
        generate_months(folder, users, 1, seed=42)
    return folder / "month_000"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, nargs="*", default=[7_043, 100_000, 1_000_000])
    parser.add_argument("--models", nargs="+", default=list(SERVICE), choices=list(SERVICE))
    parser.add_argument("--data-dir", type=Path, default=Path("/tmp/streamflow-bench-train"))
    parser.add_argument("--no-real", action="store_true")
    parser.add_argument("--progress", action="store_true", help="rich progress of each training's stages")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--model-one", help=argparse.SUPPRESS)
    parser.add_argument("--labels-one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one, args.labels_one, args.model_one, args.progress)))
        return

    runs: list[tuple[str, Path, Path | None, str]] = []
    if not args.no_real and SEEDS.is_dir():
        for model_type in args.models:
            runs.append(("real, aligned", SEEDS / "month_000", None, model_type))
        if "baseline" in args.models:
            runs.append(("real, horizon 1", SEEDS / "month_000", SEEDS / "month_001", "baseline"))
    for users in args.users:
        folder = _generated(args.data_dir, users)
        runs += [("generated", folder, None, model_type) for model_type in args.models]

    header = (
        "| data | users | model | CV s (search + threshold) | fit s | convert s | verify s | total s "
        "| ONNX bytes | nodes | predict_one µs | hold-out ROC-AUC | peak RSS MB |"
    )
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for label, folder, labels, model_type in runs:
        r = _child(folder, labels, model_type, args.progress)
        print(
            f"| {label} | {r['users']:,} | {model_type} ({r['service']}) "
            f"| {r['cv_s']:.1f} ({r['cv_search_s']:.1f} + {r['cv_threshold_s']:.1f}, {r['cv_rows']:,} rows) "
            f"| {r['fit_s']:.1f} | {r['convert_s']:.1f} | {r['verify_s']:.1f} | {r['train_s']:.1f} "
            f"| {r['onnx_bytes']:,} | {r['nodes']:,} | {r['predict_one_us']:.0f} | {r['roc_auc']:.4f} "
            f"| {r['peak_rss_mb']:,.0f} |",
            flush=True,
        )
        print(
            f"    params {r['params']}, threshold {r['threshold']:.3f}, "
            f"ONNX max |diff| {r['onnx_diff']:.1e}, evaluate {r['evaluate_s']:.1f} s, "
            f"split {r['split_s']:.1f} s, CSV read+join {r['read_s']:.1f} s",
            file=sys.stderr,
            flush=True,
        )


if __name__ == "__main__":
    main()
