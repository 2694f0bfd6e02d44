"""A run's images done / total, reported in one place (`Progress`) that its listeners hear.

Two listen to a campaign's run: Prefect's progress artifact (flows/artifacts.py), the share of the
images made in the UI; and, where a person watches, the CLI's live bar: images done / total,
images/s and time left in the terminal that started the run. Both hear the same points from the
same reports: each shard after every batch when shards run in this process, and the campaign
flow's `PoolProgress` while it waits on the GPU pool. A process nobody listens in (a worker, CI,
output piped to a file) keeps Prefect's log lines only, and the reports cost nothing.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import threading
from collections.abc import Iterator
from typing import Protocol

from rich.console import Console
from rich.default_styles import DEFAULT_STYLES
from rich.progress import BarColumn, MofNCompleteColumn, ProgressColumn, Task, TextColumn, TimeRemainingColumn
from rich.progress import Progress as RichProgress
from rich.text import Text
from rich.theme import Theme

log = logging.getLogger(__name__)
# The styles the bar draws with: Prefect's console has a theme of its own that lacks them.
BAR_THEME = Theme({name: style for name, style in DEFAULT_STYLES.items() if name.startswith(("bar.", "progress."))},
                  inherit=False)


class Listener(Protocol):
    def update(self, done: int, total: int) -> None:
        """The run has made `done` of its `total` images (done only grows within a run)."""


class Progress:
    """The one place a run reports its progress: images done of the total, told to every listener.

    A campaign makes one per run, with the Prefect artifact and the listeners of the block it runs
    in (`listening`: the CLI's bar) as listeners, and hands it to what reports: each shard in its
    process after every batch, or the pool's count while it waits on the GPU workers. A GPU worker
    makes its own, listened to by nobody, for its heartbeat's count of the shard's images.
    """

    def __init__(self, *listeners: Listener) -> None:
        self._listeners = list(listeners)
        self._lock = threading.Lock()
        self._done = self._total = 0

    @classmethod
    def for_run(cls, *listeners: Listener) -> Progress:
        """A run's reporter: `listeners` and those of the `listening` blocks the run started in."""
        return cls(*listeners, *_watching.get())

    @property
    def done(self) -> int:
        """Images made so far (what a GPU worker's heartbeat reports for its shard)."""
        return self._done

    def begin(self, total: int) -> None:
        """The generation phase starts: `total` images to make, none made yet."""
        with self._lock:
            self._done, self._total = 0, total
            self._tell()

    def reach(self, done: int) -> None:
        """At least `done` are made (after a batch of a shard in this process, or counted from what the pool has
        written); never moves back, nor past the total."""
        with self._lock:
            self._done = min(max(self._done, done), self._total)
            self._tell()

    def _tell(self) -> None:
        if self._total > 0:
            for listener in list(self._listeners):
                try:
                    listener.update(self._done, self._total)
                except Exception as exc:  # a progress bar is a report: it never stops the run
                    self._listeners.remove(listener)
                    log.warning("progress listener stopped: %s: %s", type(exc).__name__, exc)


# The listeners of the `listening` blocks the current code runs in: a value per context (thread, task),
# never shared by two runs, so the CLI's bar hears only the run it started.
_watching: contextvars.ContextVar[tuple[Listener, ...]] = contextvars.ContextVar("progress_listeners", default=())


@contextlib.contextmanager
def listening(listener: Listener) -> Iterator[Listener]:
    """`listener` hears the progress of every run started inside the block (`Progress.for_run`)."""
    token = _watching.set((*_watching.get(), listener))
    try:
        yield listener
    finally:
        _watching.reset(token)


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
        self.progress = RichProgress(TextColumn("[progress.description]{task.description}"), BarColumn(),
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
