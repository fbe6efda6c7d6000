"""Drain a host: move every running container (or those with given labels) to target hosts.

Placement: containers go biggest first (memory in use), each to the target with the most
memory still available that passes the precheck; the ledger of available memory is taken
from each target's agent at the start and debited as containers are placed, so N migrations
in flight do not all pick the same host. A container refused by every target (a precheck:
bind mount, exec session, name taken...) or whose migration failed and rolled back stays
running here and is reported with the reason; nothing is retried behind the operator's back.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from migrate.core.errors import InDoubt, MigrateError, PrecheckFailed, UsageError
from migrate.core.report import Report
from migrate.engines.base import Engine
from migrate.source.migration import Migration, RunOptions
from migrate.transport import Channel
from migrate.wire.client import AgentClient
from migrate.wire.connection import Connection
from migrate.wire.methods import Bye
from migrate.wire.session import open_session

log = logging.getLogger(__name__)

HELLO_TIMEOUT_S = 60.0

# What a caller supplies: how to reach one target's agent, and a fresh engine per migration
# (Docker clients are not shared between threads).
ChannelFactory = Callable[[str], Callable[[], Channel]]
EngineFactory = Callable[[], Engine]


@dataclass(frozen=True)
class Outcome:
    container: str
    status: str  # migrated | refused | rolled_back | in_doubt | failed
    target: str = ""  # where it went (or was last tried)
    memory: int = 0  # bytes in use when planned
    report: Report | None = None
    error: dict[str, Any] | None = None  # MigrateError.to_wire()
    tried: tuple[str, ...] = ()

    @property
    def moved(self) -> bool:
        return self.status == "migrated"

    def to_json(self) -> dict[str, Any]:
        return {
            "container": self.container,
            "status": self.status,
            "target": self.target,
            "memory": self.memory,
            "tried": list(self.tried),
            "downtime_s": None if self.report is None else self.report.to_json()["downtime_s"],
            "report": None if self.report is None else self.report.to_json(),
            "error": self.error,
        }


@dataclass(frozen=True)
class EvacuationResult:
    outcomes: tuple[Outcome, ...]
    targets: Mapping[str, dict[str, Any]]  # url -> what its agent said (or its error)
    total_s: float

    @property
    def status(self) -> str:
        if any(o.status == "in_doubt" for o in self.outcomes):
            return "in_doubt"
        return "drained" if all(o.moved for o in self.outcomes) else "partial"

    def to_json(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "moved": sum(o.moved for o in self.outcomes),
            "left": sum(not o.moved for o in self.outcomes),
            "total_s": round(self.total_s, 3),
            "targets": dict(self.targets),
            "containers": [o.to_json() for o in self.outcomes],
        }


@dataclass
class Ledger:
    """Memory each target can still take; debited when a container is placed there."""

    available: dict[str, int]
    lock: threading.Lock = field(default_factory=threading.Lock)

    def order(self, exclude: Sequence[str] = ()) -> list[str]:
        """Targets by available memory, most first (ties: the order given on the command line)."""
        with self.lock:
            names = [t for t in self.available if t not in exclude]
            rank = {t: i for i, t in enumerate(self.available)}
            return sorted(names, key=lambda t: (-self.available[t], rank[t]))

    def debit(self, target: str, amount: int) -> None:
        with self.lock:
            self.available[target] -= amount

    def credit(self, target: str, amount: int) -> None:
        with self.lock:
            self.available[target] += amount


def parse_targets(text: str) -> list[str]:
    """``--to ssh://a,ssh://b`` (or bare HOST, taken as ssh://root@HOST) -> distinct URLs."""
    out: list[str] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        url = part if "://" in part else f"ssh://root@{part}"
        if url not in out:
            out.append(url)
    if not out:
        raise UsageError("no target host given", hint="--to ssh://root@HOST[,ssh://root@HOST2]")
    return out


def parse_labels(items: Sequence[str]) -> dict[str, str]:
    labels: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(
                f"bad label filter {item!r}: expected KEY=VALUE", hint="use --label KEY=VALUE"
            )
        labels[key] = value
    return labels


def probe_targets(
    targets: Sequence[str], channels: ChannelFactory
) -> tuple[dict[str, int], dict[str, dict[str, Any]]]:
    """Ask every target's agent for its capabilities: (memory available per reachable target,
    what each target said). An unreachable target is reported, not fatal, unless all are."""
    available: dict[str, int] = {}
    said: dict[str, dict[str, Any]] = {}
    for t in targets:
        try:
            agent = AgentClient(Connection(channels(t)(), timeout=HELLO_TIMEOUT_S))
            try:
                hello = open_session(agent)
                agent.call(Bye())
            finally:
                agent.conn.close()
        except MigrateError as e:
            said[t] = {"reachable": False, "error": e.to_wire()}
            continue
        mem = hello.mem_available or 0
        available[t] = mem
        said[t] = {"reachable": True, "host": hello.hostname, "mem_available": mem}
    return available, said


# long: the evacuation loop (plan, lock, migrate one by one, ledger) reads best in one place
def evacuate(
    targets: Sequence[str],
    channels: ChannelFactory,
    engines: EngineFactory,
    *,
    labels: Mapping[str, str] | None = None,
    parallel: int = 1,
    keep_source: bool = False,
    bulk: str = "auto",
    on_done: Callable[[Outcome], None] | None = None,
) -> EvacuationResult:
    """Move the running containers (with ``labels``) off this host; see the module doc."""
    if parallel < 1:
        raise UsageError(f"--parallel {parallel}: must be at least 1", hint="e.g. --parallel 2")
    t0 = time.monotonic()
    engine = engines()
    names = engine.running_containers(labels)
    available, said = probe_targets(targets, channels)
    if not available:
        first = next(iter(said.values()), {}).get("error") or {}
        raise PrecheckFailed(
            "no target host is reachable: "
            + "; ".join(
                f"{t}: {(s.get('error') or {}).get('message', '?')}" for t, s in said.items()
            ),
            hint=str(first.get("hint") or "check the --to hosts and the SSH options"),
        )
    sizes = {n: engine.memory_usage(n) for n in names}
    ledger = Ledger(dict(available))
    order = sorted(names, key=lambda n: -sizes[n])

    def move(name: str) -> Outcome:
        tried: list[str] = []
        last: MigrateError | None = None
        while True:
            candidates = ledger.order(exclude=tried)
            if not candidates:
                break
            target = candidates[0]
            tried.append(target)
            ledger.debit(target, sizes[name])
            opts = RunOptions(
                container=name, destination=target, keep_source=keep_source, bulk=bulk
            )
            try:
                rep = Migration(opts, engines(), channels(target)).run()
            except InDoubt as e:
                return Outcome(
                    name, "in_doubt", target, sizes[name], error=e.to_wire(), tried=tuple(tried)
                )
            except PrecheckFailed as e:
                # Refused before anything was touched: the next target may accept it.
                ledger.credit(target, sizes[name])
                last = e
                continue
            except MigrateError as e:
                ledger.credit(target, sizes[name])
                return Outcome(
                    name, "rolled_back", target, sizes[name], error=e.to_wire(), tried=tuple(tried)
                )
            except Exception as e:  # noqa: BLE001 - one container's bug must not stop the drain
                log.exception("evacuate: %s", name)
                return Outcome(
                    name,
                    "failed",
                    target,
                    sizes[name],
                    error={"code": "internal", "message": repr(e), "hint": ""},
                    tried=tuple(tried),
                )
            return Outcome(name, "migrated", target, sizes[name], report=rep, tried=tuple(tried))
        return Outcome(
            name,
            "refused",
            tried[-1] if tried else "",
            sizes[name],
            error=last.to_wire() if last else None,
            tried=tuple(tried),
        )

    def run_one(name: str) -> Outcome:
        out = move(name)
        if on_done is not None:
            on_done(out)
        return out

    with ThreadPoolExecutor(max_workers=parallel, thread_name_prefix="evacuate") as pool:
        outcomes = list(pool.map(run_one, order))
    return EvacuationResult(tuple(outcomes), said, time.monotonic() - t0)
