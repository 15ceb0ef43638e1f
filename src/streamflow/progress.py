"""One progress display for every long stage: a bar, the rows done and their rate (rich, on stderr)."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, Progress, ProgressColumn, Task, TextColumn, TimeElapsedColumn
from rich.text import Text


class RowsColumn(ProgressColumn):
    """``1,234,567 rows, 456,789 rows/s``: the ``rows`` field when the bar counts bytes, else completed."""

    def render(self, task: Task) -> Text:
        rows = task.fields.get("rows", task.completed)
        rate = rows / task.elapsed if task.elapsed else 0.0
        return Text(f"{rows:,.0f} rows, {rate:,.0f} rows/s", style="progress.data.speed")


def row_progress(enabled: bool) -> Progress:
    """A Progress to use as a context manager. Drawn only on a terminal: a log or a pipe gets no bar
    (and no stray blank line)."""
    console = Console(stderr=True)
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        RowsColumn(),
        TimeElapsedColumn(),
        console=console,
        disable=not (enabled and console.is_terminal),
        transient=True,
    )
