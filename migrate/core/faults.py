"""Fault injection, a test seam: named points where a test makes a run fail, exit or wait.

Points are ``side:STEP`` (fail there), ``side:wait:STEP`` (stop there until a mark file is
removed) or a side's own names (``agent:restore_fail``, ...). The source reads them from
MIGRATE_FAULTS; the ``agent:`` ones travel in `hello`, and an agent obeys them only when its
own environment switches them on (MIGRATE_AGENT_FAULTS=1, set by the test suite's agent
command): a source can never make a production agent misbehave. docs/testing.md lists them.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from migrate.core.errors import InjectedFault

log = logging.getLogger(__name__)

ENV_FAULTS = "MIGRATE_FAULTS"
ENV_MARK = "MIGRATE_FAULT_MARK"
# In the agent's own environment: "1" lets it obey the fault points a source sends.
ENV_AGENT_SWITCH = "MIGRATE_AGENT_FAULTS"
DEFAULT_MARK = Path("/tmp/migrate-fault-mark")
# The exit status a fault's exit uses: what a SIGKILL would report (nothing cleaned up).
EXIT_KILLED = 137
_POLL_S = 0.05


@dataclass(frozen=True)
class Faults:
    """The fault points switched on for one process; the default has none (a no-op)."""

    points: frozenset[str] = frozenset()
    # Where a ``wait`` point writes who waits; a test removes it to let the process go on.
    mark: Path = DEFAULT_MARK

    @classmethod
    def parse(cls, raw: str, mark: Path = DEFAULT_MARK) -> Faults:
        """``point[,point...]``, blanks ignored."""
        return cls(frozenset(p.strip() for p in raw.split(",") if p.strip()), mark)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Faults:
        """MIGRATE_FAULTS (and MIGRATE_FAULT_MARK) of the source's environment."""
        env = os.environ if environ is None else environ
        return cls.parse(env.get(ENV_FAULTS, ""), Path(env.get(ENV_MARK) or DEFAULT_MARK))

    def on(self, point: str) -> bool:
        return point in self.points

    def for_side(self, side: str) -> list[str]:
        """The points meant for ``side`` (``agent``: what the source sends in `hello`)."""
        return sorted(p for p in self.points if p.startswith(f"{side}:"))

    def hit(self, point: str) -> None:
        """Fail with InjectedFault at ``point`` if it is on."""
        if self.on(point):
            raise InjectedFault(f"fault injected at {point}")

    def exit(self, point: str) -> None:
        """Leave the process at ``point`` if it is on, as a SIGKILL would: no cleanup at all
        (os._exit skips finally blocks and atexit, which is the point)."""
        if self.on(point):
            log.error("fault injected: exiting at %s", point)
            os._exit(EXIT_KILLED)

    def wait(self, point: str, text: str, mark: Path | None = None) -> None:
        """If ``point`` is on: write ``text`` to the mark file and wait until it is removed
        (the test kills a process or cuts the link meanwhile)."""
        if not self.on(point):
            return
        where = mark or self.mark
        where.write_text(text)
        log.warning("fault injected: waiting at %s until %s is removed", point, where)
        while where.exists():
            time.sleep(_POLL_S)

    def reach(self, point: str, text: str) -> None:
        """The step ``side:STEP``: wait at ``side:wait:STEP`` if that is on, then fail there
        if ``point`` itself is on."""
        side, _, step = point.partition(":")
        self.wait(f"{side}:wait:{step}", text)
        self.hit(point)

    def wrap(self, chunks: Iterator[bytes], point: str, text: str) -> Iterator[bytes]:
        """Pass a stream through, reaching ``point`` after its first chunk (mid-stream)."""
        first = True
        for c in chunks:
            yield c
            if first:
                first = False
                self.reach(point, text)


NO_FAULTS = Faults()


def agent_switch_on(environ: Mapping[str, str] | None = None) -> bool:
    """Whether this agent process may obey the fault points a source sends."""
    env = os.environ if environ is None else environ
    return env.get(ENV_AGENT_SWITCH) == "1"


def from_wire(names: Sequence[object], *, allowed: bool) -> Faults:
    """The fault points a source sent in `hello`: obeyed only where ``allowed`` (the agent's
    own switch); otherwise logged and ignored, so that the wire cannot turn them on."""
    wanted = frozenset(n for n in names if isinstance(n, str))
    if not wanted:
        return NO_FAULTS
    if not allowed:
        log.warning(
            "ignoring the fault points the source sent (%s): %s=1 is not set for this agent",
            ", ".join(sorted(wanted)),
            ENV_AGENT_SWITCH,
        )
        return NO_FAULTS
    return Faults(wanted)
