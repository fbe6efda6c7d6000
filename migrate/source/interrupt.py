"""Ctrl-C (SIGINT) and SIGTERM during `migrate run`: recorded, never lost, honoured where safe.

A KeyboardInterrupt alone is not a reliable request: Python raises it wherever the main thread
happens to be, and some places discard it (a ``__del__``, a library's bare ``except:``, a
finalizer). The latch records the signal before anything is raised, so the state machine can
ask again at every transition, and it decides *whether* to raise at all:

- armed (moving forward, before the point of no return): raise :class:`Interrupted` at once,
  which ends the blocking wait the migration is in (a dump, a stream, an RPC) and rolls back;
- disarmed (rolling back, cleaning up, or past the point of no return): only record. A rollback
  must not be cut in half, and a committed migration must complete: the caller reports the
  interrupt once it has (:func:`exit_status`).
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

from migrate.core.errors import MigrateError

log = logging.getLogger(__name__)

HANDLED = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """Raised by the handler: a KeyboardInterrupt, so that code that already treats Ctrl-C
    specially (subprocess waits a moment for its child, then kills it) still does."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal_name(signum))
        self.signum = signum


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


class InterruptLatch:
    """The first interrupt received, how many came, and whether one may be raised now."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.count = 0
        self.armed = False
        # Set once the point of no return is passed: from then on an interrupt is reported,
        # never acted upon.
        self.committed = False

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def on_signal(self, signum: int) -> bool:
        """Record a signal; True when the caller should raise now."""
        if self.signum is None:
            self.signum = signum
        self.count += 1
        return self.armed and not self.committed

    def handler(self, signum: int, frame: FrameType | None) -> None:
        if self.on_signal(signum):
            raise Interrupted(signum)

    def arm(self) -> None:
        self.armed = True

    def disarm(self) -> None:
        self.armed = False

    def check(self) -> None:
        """Raise a recorded interrupt that was not honoured yet (its KeyboardInterrupt was
        discarded somewhere, or it came while disarmed); nothing after the point of no return."""
        if self.signum is not None and not self.committed:
            raise Interrupted(self.signum)

    def pass_point_of_no_return(self) -> None:
        """Called just before the step that cannot be undone. Race-free against the handler
        (which runs in this thread between two bytecodes): an interrupt that lands before
        ``committed`` is set raises from the handler; one that lands after is seen below."""
        self.committed = True
        if self.signum is not None:
            self.committed = False
            raise Interrupted(self.signum)

    def error(self) -> MigrateError:
        """The cause a rollback reports for an interrupt."""
        if self.signum is None:
            return MigrateError("interrupted")
        return MigrateError(f"interrupted ({signal_name(self.signum)})")


def exit_status(latch: InterruptLatch) -> int | None:
    """After a migration that completed: the status that says an interrupt came too late to
    stop it (128 + the signal, the shell's convention for "ended by a signal", so a calling
    script stops too), or None when none came."""
    if latch.signum is None:
        return None
    return 128 + latch.signum


@contextlib.contextmanager
def handling(latch: InterruptLatch) -> Iterator[InterruptLatch]:
    """Route SIGINT and SIGTERM to ``latch`` while the block runs, then restore the handlers.

    Also when they were ignored as we started: a non-interactive shell starts its background
    jobs (``migrate run ... &`` in a script, a test runner started that way) with SIGINT
    ignored, and Python then leaves Ctrl-C ignored, so a migration went on to the end after
    a SIGINT and exited 0 as if none had come. Rolling back is always safe before the point
    of no return, and after it the interrupt is only reported. Outside the main thread nothing
    is installed (Python delivers signals to the main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield latch
        return
    previous: dict[signal.Signals, Callable[[int, FrameType | None], Any] | int | None] = {}
    for signum in HANDLED:
        old = signal.getsignal(signum)
        if old == signal.SIG_IGN:
            log.info("%s was ignored as migrate started: handled during the migration", signum.name)
        previous[signum] = old
        signal.signal(signum, latch.handler)
    try:
        yield latch
    finally:
        for signum, old in previous.items():
            signal.signal(signum, signal.SIG_DFL if old is None else old)
