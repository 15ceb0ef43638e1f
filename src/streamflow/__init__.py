"""StreamFlow: subscriber churn prediction from monthly exports to served predictions."""

from importlib import metadata

from streamflow.feast_startup import skip_feast_typechecks

try:
    __version__ = metadata.version("streamflow")  # one source: pyproject.toml
except metadata.PackageNotFoundError:  # pragma: no cover - run from a source tree that is not installed
    __version__ = "0.0.0+unknown"

skip_feast_typechecks()  # before anything imports Feast (see feast_startup.py)
