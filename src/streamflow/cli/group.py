"""The one error handler of every command: an error becomes one line on stderr and an exit code."""

from __future__ import annotations

import logging
import sys
import traceback
from collections.abc import Sequence
from typing import Any

import typer
from rich.markup import escape
from typer.core import TyperGroup

from streamflow import errors
from streamflow.cli.output import err

try:  # Typer >= 0.20 ships its own copy of Click
    from typer._click.exceptions import ClickException
except ImportError:  # pragma: no cover - older Typer on the real Click
    from click.exceptions import ClickException  # type: ignore[no-redef]


def report(exc: BaseException) -> int:
    """Print ``exc`` as one line (a contract violation lists one violation per line) and return the
    exit code."""
    user = errors.as_user_error(exc)
    debug = logging.getLogger("streamflow").isEnabledFor(logging.DEBUG)
    if debug:
        err.print(escape("".join(traceback.format_exception(exc))))
    if user is None:
        hint = "" if debug else " (`streamflow --log-level debug ...` shows the traceback)"
        err.print(
            f"[bold red]error:[/] unexpected {type(exc).__name__}: {escape(errors._one_line(exc))}{hint}"
        )
        return errors.EXIT_BUG
    err.print(f"[bold red]error:[/] {escape(str(user))}")
    return user.exit_code


class StreamflowGroup(TyperGroup):
    """Typer's group with one error handler for every command: StreamFlow's own errors and Click's
    usage errors become one line and an exit code, never a traceback."""

    def main(  # type: ignore[override]
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
            code = code if isinstance(code, int) else errors.EXIT_OK
        except ClickException as exc:
            if type(exc).__name__ == "NoArgsIsHelpError":
                exc.show()
            else:
                ctx = getattr(exc, "ctx", None)
                where = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
                err.print(f"[bold red]error:[/] {escape(exc.format_message())}{where}")
            code = exc.exit_code
        except (typer.Abort, KeyboardInterrupt):
            err.print("interrupted")
            code = errors.EXIT_INTERRUPTED
        except Exception as exc:
            code = report(exc)
        if standalone_mode:
            sys.exit(code)
        return code


def new_typer(help: str, **kwargs: Any) -> typer.Typer:
    return typer.Typer(help=help, no_args_is_help=True, cls=StreamflowGroup, **kwargs)
