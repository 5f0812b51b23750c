"""SIGHUP (a dropped SSH link) and SIGTERM (kill, a batch system's time limit) handled as Ctrl-C is.

Each raises errors.Interrupted in the main thread, a KeyboardInterrupt, so the same clean-up
runs (staged outputs removed, workers stopped) and the command exits 129 or 143. While a run
puts its outputs in place (a few renames), `deferred()` holds the signals back so the
directory never holds half the set; they are delivered when it is done.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from contextlib import contextmanager

from tui_stack.errors import Interrupted

HANDLED = (signal.SIGHUP, signal.SIGTERM)


def _raise(signum, frame):
    # Only the first signal interrupts: a second during the clean-up would cut it short.
    for s in HANDLED:
        signal.signal(s, signal.SIG_IGN)
    raise Interrupted(signum)


@contextmanager
def handled(late_message=None):
    """SIGHUP and SIGTERM raise Interrupted inside the block (main thread only).

    With `late_message` (signum -> text), a signal after the block, as the command ends and
    the interpreter shuts down, is no longer a death by signal: the text goes to stderr and
    the process exits 128 + the signal's number, as inside the block."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {s: signal.signal(s, _raise) for s in HANDLED}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h if late_message is None else _exit_with(late_message))


def _exit_with(message):
    def late(signum, frame):
        for s in HANDLED:
            signal.signal(s, signal.SIG_IGN)
        exit_now(128 + signum, message(signum))

    return late


def exit_now(code: int, line: str | None = None) -> None:
    """Leave with `code` once the work is done and its files are closed, without the
    interpreter's shut-down (which resets the signal handlers first): the summary still in a
    buffer is flushed, then `line` goes to stderr."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # a dead terminal, or a signal that came inside that very write
            pass
    if line is not None:
        try:
            os.write(2, (line + "\n").encode("utf-8", "backslashreplace"))
        except OSError:  # the terminal went with the link
            pass
    os._exit(code)


@contextmanager
def deferred():
    """SIGINT, SIGHUP and SIGTERM held back inside the block, delivered at its end.

    Python handlers run in the main thread whichever thread the kernel hands the signal to, so
    masking the main thread (pthread_sigmask) is not enough while worker threads live: the
    handlers are swapped for one that only records the signal, then raised again."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []

    def record(signum, frame):
        pending.append(signum)

    old = {s: signal.signal(s, record) for s in (signal.SIGINT, *HANDLED)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        if pending:
            signal.raise_signal(pending[0])


def detach_stdio() -> None:
    """After a hang-up the terminal is gone: writes to it fail (EIO), and Python would fail
    flushing at exit (rc 120). Point stdout and stderr at /dev/null."""
    try:
        null = os.open(os.devnull, os.O_WRONLY)
    except OSError:
        return
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
        try:
            os.dup2(null, stream.fileno())
        except (OSError, ValueError, AttributeError):
            pass
    os.close(null)


def exit_soon(code: int, grace: float = 5.0) -> None:
    """A last resort after a signal: if the process has not ended `grace` seconds from now (a
    UI stuck on a terminal that is gone), remove the scratch folders and exit with `code`."""
    def watchdog():
        import time

        time.sleep(grace)
        from tui_stack import rundir

        rundir.close_scratch()
        os._exit(code)

    threading.Thread(target=watchdog, name="tui-stack-exit", daemon=True).start()
