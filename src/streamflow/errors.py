"""The product's own errors, and the one way every command reports them.

A :class:`StreamflowError` is a problem the user can fix: the command line names something that does
not exist, a step was skipped (no data yet, the feature store not applied), a port is taken. Every
``streamflow`` command prints it as ONE line on stderr, ``error: <message>: <hint>``, and exits with
its ``exit_code`` (2 unless said otherwise); never a traceback.

Errors raised by modules that predate this class (``ContractError``, ``NoSnapshotError``,
``NoProductionModel``, ``DatabaseUnavailable``, ``ArtifactStoreError``, Feast's "not found" errors)
are adapted by :func:`as_user_error` from their class names, so reporting one never imports its
(heavy) module.

Exit codes: 0 done; 1 an unexpected failure (a bug: one line, the traceback with ``--log-level
debug``); 2 a StreamFlow error; 3 the database is not reachable (or stopped, for ``db status``);
4 ``promote`` kept the current production version; 5 ``reproduce`` did not reproduce the version (a
check failed or could not run); 130 interrupted.
"""

from __future__ import annotations

EXIT_OK, EXIT_BUG, EXIT_USER, EXIT_DATABASE, EXIT_KEPT, EXIT_INTERRUPTED = 0, 1, 2, 3, 4, 130
EXIT_NOT_REPRODUCED = 5


class StreamflowError(Exception):
    """A problem the user can fix, said in one line: what is wrong, then (``hint``) what to do."""

    exit_code = EXIT_USER

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message}: {self.hint}" if self.hint else self.message


class UsageError(StreamflowError):
    """An argument is malformed or names something that does not exist."""


class NotReady(StreamflowError):
    """A step this command needs has not happened yet (no data, feature store not applied...)."""


class ProcessConflict(StreamflowError):
    """A port or pid file points at a process this state folder did not start."""


class PruneRefused(StreamflowError):
    """``data prune`` will not drop this revision: it is the one served, or versions depend on it."""


class DatabaseError(StreamflowError):
    exit_code = EXIT_DATABASE


def _one_line(text: str) -> str:
    return " ".join(part.strip() for part in str(text).splitlines() if part.strip())


def _named(exc: BaseException, *names: str, package: str = "streamflow") -> bool:
    return any(cls.__name__ in names and cls.__module__.split(".")[0] == package for cls in type(exc).__mro__)


def as_user_error(exc: BaseException) -> StreamflowError | None:
    """``exc`` as a StreamflowError when it is one of the product's (or a known dependency's) own
    "you can fix this" errors; None for anything else (a bug)."""
    if isinstance(exc, StreamflowError):
        return exc
    if _named(exc, "ContractError"):  # the violations are the message: one per line, kept
        return StreamflowError(f"{exc}\nnothing was written")
    if _named(exc, "NoSnapshotError", "NoProductionModel", "PromotionError", "UnknownInput"):
        message = _one_line(exc)
        if _named(exc, "NoProductionModel"):
            return NotReady(message, "promote a version first (streamflow promote), or pass --version")
        return NotReady(message)
    if _named(exc, "ArtifactStoreError"):  # the bucket named by STREAMFLOW_ARTIFACTS_URI
        return NotReady(_one_line(exc), "check STREAMFLOW_ARTIFACTS_URI and the store's credentials")
    if _named(exc, "RevisionNotFound"):  # a pin (--revision, a version's revisions) that cannot be read
        return UsageError(_one_line(exc), "`streamflow data revisions` lists them")
    if _named(exc, "DatabaseUnavailable"):
        return DatabaseError(_one_line(exc), "is the server up? `streamflow db status` says")
    if _named(exc, "ValidationError", package="pydantic_core") and getattr(exc, "title", "") == "Settings":
        problems = "; ".join(
            f"STREAMFLOW_{'_'.join(map(str, e['loc'])).upper()}={e.get('input')!r}: {e['msg']}"
            for e in exc.errors()  # type: ignore[attr-defined]
        )
        return UsageError("invalid settings", problems)
    # Feast's own "not found" errors: the feature store was not applied (or not since a change).
    if _named(
        exc,
        "FeatureServiceNotFoundException",
        "FeatureViewNotFoundException",
        "EntityNotFoundException",
        package="feast",
    ):
        return NotReady(f"feature store not applied ({_one_line(exc)})", "run `streamflow features apply`")
    if _named(exc, "UndefinedTable", package="psycopg"):
        return NotReady(
            "the database has no StreamFlow data yet",
            "ingest a month first: streamflow ingest DIR --as-of YYYY-MM-DD",
        )
    return None
