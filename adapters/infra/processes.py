"""Processes this process starts, stopped with it: on SIGTERM and SIGHUP as on Ctrl-C.

Python's default SIGTERM ends the process at once, without `finally` blocks or atexit handlers,
and children started with `start_new_session=True` (servers, workers) outlive it, orphaned and
holding their ports. `signals_interrupt()` turns SIGTERM and SIGHUP into KeyboardInterrupt, so
the one shutdown path that Ctrl-C takes runs for every way systemd, docker or `kill` stop us.

`stop_processes` stops a set of children and everything they started in turn (a process worker's
flow runs): SIGINT first (a Prefect 3.9 process worker ignores SIGTERM), SIGKILL for whatever is
left after the grace period. The descendants are listed before the first signal, while they still
have a parent to be found by.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence

import psutil

# SIGINT too: a command started in the background by a non-interactive shell inherits SIGINT ignored, and
# would otherwise not stop on it at all.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)


def _interrupt(signum: int, _frame) -> None:
    # Once: a second signal while we stop must not break the stopping half-way.
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    raise KeyboardInterrupt(f"stopped by {signal.Signals(signum).name}")


@contextlib.contextmanager
def signals_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM, SIGHUP and SIGINT raise KeyboardInterrupt in the main thread, once (elsewhere:
    no change): the command unwinds as on Ctrl-C, a run hands its claims back, what it started is stopped."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, _interrupt) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def descendants(pid: int) -> list[psutil.Process]:
    """Every living process below `pid` (children, their children, ...)."""
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def stop_processes(processes: Sequence[subprocess.Popen], grace: float = 15.0) -> None:
    """SIGINT each running process, wait up to `grace` seconds for all, then SIGKILL what is left, descendants included."""
    tree = [d for p in processes if p.poll() is None for d in descendants(p.pid)]
    for proc in processes:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGINT)
    deadline = time.monotonic() + grace
    for proc in processes:
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
    _, alive = psutil.wait_procs(tree, timeout=min(grace, 5.0))
    for orphan in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            orphan.kill()
    psutil.wait_procs(alive, timeout=5)
