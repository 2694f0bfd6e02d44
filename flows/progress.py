"""A run's images done / total in this process, for whoever listens: the CLI's live bar in a terminal.

Prefect's progress artifact (flows/artifacts.py) shows the share of batches in the UI; this shows
images done / total, images/s and time left in the terminal that started the run. Both are fed
from the same two places: `generate_shard` after each batch when shards run in this process, and
the campaign flow's `PoolProgress` while it waits on the GPU pool. A process nobody listens in (a
worker, CI, output piped to a file) keeps Prefect's log lines only, and the calls cost nothing.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator
from typing import Protocol

from rich.console import Console
from rich.default_styles import DEFAULT_STYLES
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, Task, TextColumn, TimeRemainingColumn
from rich.text import Text
from rich.theme import Theme

log = logging.getLogger(__name__)
# The styles the bar draws with: Prefect's console has a theme of its own that lacks them.
BAR_THEME = Theme({name: style for name, style in DEFAULT_STYLES.items() if name.startswith(("bar.", "progress."))},
                  inherit=False)


class Listener(Protocol):
    def update(self, done: int, total: int) -> None:
        """The run has made `done` of its `total` images (done only grows within a run)."""


_lock = threading.Lock()
_listeners: list[Listener] = []
_count = {"done": 0, "total": 0}


def begin(total: int) -> None:
    """The generation phase starts: `total` images to make, none made yet."""
    with _lock:
        _count.update(done=0, total=total)
        _tell()


def reach(done: int) -> None:
    """At least `done` are made (after a batch of a shard in this process, or counted from what the pool has
    written); never moves back, nor past the total."""
    with _lock:
        _count["done"] = min(max(_count["done"], done), _count["total"])
        _tell()


def done() -> int:
    """Images made so far in this process's run (what a GPU worker's heartbeat reports for its shard)."""
    return _count["done"]


def _tell() -> None:
    if _count["total"] > 0:
        for listener in list(_listeners):
            try:
                listener.update(_count["done"], _count["total"])
            except Exception as exc:  # a progress bar is a report: it never stops the run
                _listeners.remove(listener)
                log.warning("progress bar stopped: %s: %s", type(exc).__name__, exc)


@contextlib.contextmanager
def listening(listener: Listener) -> Iterator[Listener]:
    """`listener` hears every update of this process while the block runs."""
    with _lock:
        _listeners.append(listener)
    try:
        yield listener
    finally:
        with _lock:
            if listener in _listeners:  # unless it failed and was dropped
                _listeners.remove(listener)


def wants_bar(console: Console) -> bool:
    """A live bar only where a person watches: an interactive terminal. Piped output, CI and a worker's
    log get Prefect's plain log lines alone (a bar there is a stream of control codes)."""
    return console.is_terminal and not console.is_dumb_terminal


class _Rate(ProgressColumn):
    def render(self, task: Task) -> Text:
        return Text(f"{task.speed:.2f} images/s" if task.speed else "- images/s", style="progress.data.speed")


class TerminalBar:
    """A rich progress bar of a run's images: done / total, images/s, time left. It appears at the
    first update of a run and stops (leaving its last state on screen) when the run's images are all made."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.progress = Progress(TextColumn("[progress.description]{task.description}"), BarColumn(),
                                 MofNCompleteColumn(), _Rate(), TimeRemainingColumn(), console=console,
                                 speed_estimate_period=120.0)
        self.task = None
        self._live = False

    def update(self, done: int, total: int) -> None:
        if self.task is None or done < self.progress.tasks[-1].completed:  # a new run in this process
            self.task = self.progress.add_task("images", total=total)
        if not self._live and done < total:
            self.console.push_theme(BAR_THEME)
            self._live = True
            self.progress.start()
        self.progress.update(self.task, completed=done, total=total)
        if done >= total:
            self.close()

    def close(self) -> None:
        if self._live:
            self._live = False
            try:
                self.progress.stop()
            finally:
                self.console.pop_theme()


@contextlib.contextmanager
def terminal_progress(console: Console | None = None) -> Iterator[TerminalBar | None]:
    """What the CLI wraps a run in: a live bar when `console` (default: stdout) is a terminal, else nothing.

    The bar draws on the console Prefect's log lines go to when that is the terminal too, so each log
    line prints above the bar instead of tearing through it.
    """
    console = console or Console()
    if not wants_bar(console):
        yield None
        return
    bar = TerminalBar(_log_console() or console)
    try:
        with listening(bar):
            yield bar
    finally:
        bar.close()


def _log_console() -> Console | None:
    """The rich console of Prefect's console log handler, where it writes to a terminal."""
    loggers = [logging.getLogger(), *(lg for lg in logging.Logger.manager.loggerDict.values()
                                      if isinstance(lg, logging.Logger))]
    for handler in (h for lg in loggers for h in lg.handlers):
        console = getattr(handler, "console", None)
        if isinstance(console, Console) and wants_bar(console):
            return console
    return None
