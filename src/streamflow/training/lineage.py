"""What a run records about the code that produced it."""

from __future__ import annotations

import hashlib
import platform
import subprocess
import sys
import sysconfig
from importlib import metadata
from pathlib import Path

PACKAGES = ("streamflow", "scikit-learn", "numpy", "pandas", "feast", "mlflow", "skl2onnx", "onnxruntime")


def git_commit() -> str:
    """The commit of the checkout this package runs from, with '-dirty' for local changes."""
    src = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=src, capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=src,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{commit}-dirty" if dirty else commit


def package_versions() -> dict[str, str]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


# `make install` and the image copy the lock they installed here (Makefile, Dockerfile).
LOCK_COPY = "streamflow.lock"


def environment() -> dict[str, str]:
    """What this environment was installed from: the lock's sha256 ("unlocked" for an install that did
    not come from one), the Python version and the platform."""
    lock = Path(sys.prefix) / LOCK_COPY
    return {
        "lock_sha256": hashlib.sha256(lock.read_bytes()).hexdigest() if lock.is_file() else "unlocked",
        "python_version": platform.python_version(),
        "platform": sysconfig.get_platform(),
    }
