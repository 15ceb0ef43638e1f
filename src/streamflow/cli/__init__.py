"""The ``streamflow`` command: a thin Typer layer over the package's functions.

Every command checks its arguments first, then its cheap preconditions (plain SQL, see
``preflight.py``), and only then imports what it needs (Feast, MLflow, Prefect: seconds each). So
``streamflow --help``, a mistyped date or a command run before its step answer at once.

Errors: one shared handler (:class:`~streamflow.cli.group.StreamflowGroup`) turns every error into
one line on stderr and an exit code (``errors.py`` lists them); the traceback only with
``--log-level debug``.

Output: people get rich text; ``--json`` prints one JSON object on stdout instead (keys in the
README), for scripts. Defaults come from Settings (``STREAMFLOW_*``), read when a command runs.

One module per command group; importing one registers its commands on ``app`` (the order of
the imports below is the order ``streamflow --help`` lists them in).
"""

# The order of these imports is the order of the commands in `streamflow --help`.
# isort: off
from streamflow.cli import data, training, registry, servers, monitoring, orchestration  # noqa: F401
from streamflow.cli import database, features  # noqa: F401

# isort: on
from streamflow.cli.root import app

__all__ = ["app"]
