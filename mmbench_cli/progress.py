"""The one progress display: a rich bar on stderr for long work (training, encoder pre-training, evaluation).

    with progress_bar("pretrain", total=steps, stats="loss {loss:.4f}  lr {lr:.2e}") as bar:
        bar.update(completed=step, loss=loss, lr=lr)

``stats`` is a format string over named fields (each starts as NaN). With ``enabled=False`` (``--quiet``,
non-zero ranks, tests) nothing is drawn and every call is a no-op, so callers never branch on it.
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress, TaskID

_FIELD = re.compile(r"\{(\w+)")


class ProgressBar:
    """A handle on one bar: move it, rename it, refresh its stats fields."""

    def __init__(self, bar: Progress | None = None, task: TaskID | None = None) -> None:
        self._bar = bar
        self._task = task

    def update(self, completed: float | None = None, advance: float = 0, description: str | None = None,
               **fields: float) -> None:
        """Set the position (``completed``) or move it by ``advance``; change the label; set stats fields."""
        if self._bar is None or self._task is None:
            return
        self._bar.update(self._task, completed=completed, advance=advance or None, description=description, **fields)


@contextlib.contextmanager
def progress_bar(label: str, total: int, *, completed: int = 0, stats: str = "", enabled: bool = True,
                 console: Console | None = None, eta: bool = True, transient: bool = False) -> Iterator[ProgressBar]:
    """A progress bar for ``total`` units of work, labelled ``label``, with optional ``stats`` fields.

    Draws on ``console`` (default: a stderr console); ``eta`` shows the time remaining (else time elapsed);
    a ``transient`` bar disappears when the work is done.
    """
    if not enabled:
        yield ProgressBar()
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    names = _FIELD.findall(stats)
    columns: list[Any] = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn()]
    if stats:
        columns.append(TextColumn(_FIELD.sub(r"{task.fields[\1]", stats)))
    columns.append(TimeRemainingColumn() if eta else TimeElapsedColumn())
    with Progress(*columns, console=console or Console(stderr=True), transient=transient) as bar:
        task = bar.add_task(label, total=max(total, 1), completed=completed, **{name: math.nan for name in names})
        yield ProgressBar(bar, task)
