"""`migrate recover`: settle migrations left unsettled (in doubt, or their process killed).

The agent's journal decides, as two-phase commit wants: if it holds ``committed``, the
destination copy is the container and the source copy is retired (finish the commit);
otherwise the agent deletes what it made and the source copy resumes. If the agent's
journal cannot be read (destination unreachable, or another agent still serves the
migration), nothing is changed and the migration stays in doubt (exit 4).
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from migrate.checkpoint import criu
from migrate.checkpoint import staging as staging_mod
from migrate.core.errors import Busy, ContainerNotFound, InDoubt, MigrateError
from migrate.core.journal import DEFAULT_DIR, Pending, unsettled
from migrate.core.lock import ContainerLock
from migrate.engines.base import Engine
from migrate.transport import Channel
from migrate.wire.client import AgentClient
from migrate.wire.connection import Connection
from migrate.wire.methods import Abort, Bye, Status
from migrate.wire.session import open_session

log = logging.getLogger(__name__)

CALL_TIMEOUT_S = 60.0
# How long recover waits for a CRIU dump that a killed `migrate run` left running.
DUMP_WAIT_S = 120.0


@dataclass(frozen=True)
class Settled:
    migration_id: str
    container: str
    # committed (the destination copy stays) | rolled_back (the source resumes) |
    # postcopy_failed (nothing changed: the operator decides)
    outcome: str
    agent_last: str  # the agent journal's last record
    actions: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "migration_id": self.migration_id,
            "container": self.container,
            "outcome": self.outcome,
            "agent_last": self.agent_last,
            "actions": list(self.actions),
        }


def pending_for(
    container: str | None, destination: str, engine: Engine, state_dir: Path = DEFAULT_DIR
) -> list[Pending]:
    """The unsettled migrations of ``container`` (name or id), or all those to
    ``destination`` when no container is named."""
    pend = unsettled(state_dir)
    if container is None:
        return [p for p in pend if p.destination == destination]
    ids = {container}
    try:
        ids.add(engine.state(container).id)
    except ContainerNotFound:
        pass  # removed already (e.g. killed after the commit): match the journal's records
    return [
        p
        for p in pend
        if p.name == container
        or p.container_id in ids
        or (len(container) >= 12 and p.container_id.startswith(container))
    ]


def recover(
    pending: list[Pending],
    engine: Engine,
    connect: Callable[[], Channel],
    *,
    state_dir: Path = DEFAULT_DIR,
    lock_dir: Path | None = None,
) -> list[Settled]:
    """Settle each pending migration; raise InDoubt (after settling what it could) if any
    could not be settled."""
    done: list[Settled] = []
    doubts: list[str] = []
    for p in pending:
        try:
            done.append(_settle(p, engine, connect, state_dir, lock_dir))
        except InDoubt as e:
            doubts.append(e.message)
    if doubts:
        raise InDoubt(
            "; ".join(doubts),
            hint="the source copy stays paused (never two running copies); fix the cause and "
            "run `migrate recover` again",
            details={"settled": [s.to_json() for s in done]},
        )
    return done


# long: one decision table over both journals, each outcome beside its condition
def _settle(
    p: Pending,
    engine: Engine,
    connect: Callable[[], Channel],
    state_dir: Path,
    lock_dir: Path | None,
) -> Settled:
    label = p.name or p.container_id[:12]
    lock = ContainerLock(p.container_id, label, lock_dir)
    lock.acquire()  # Busy (exit 3) if that migration's process still runs
    try:
        for staging in _stagings(state_dir, p.migration_id):
            _wait_for_orphaned_dump(staging, label)
        try:
            agent = AgentClient(Connection(connect(), timeout=CALL_TIMEOUT_S))
        except MigrateError as e:
            raise InDoubt(f"{label}: cannot reach the destination's agent: {e.message}") from None
        actions: list[str] = []
        try:
            open_session(agent)
            st = agent.call(Status(migration_id=p.migration_id)).result
            last = st.last
            if st.live:
                raise InDoubt(
                    f"{label}: an agent on the destination still serves migration "
                    f"{p.migration_id} (it rolls back when it notices the lost connection)"
                )
            # Post-copy started (the destination copy resumed) but did not finish: neither
            # copy is complete by itself, no side may be retired or resumed automatically.
            started = any(r.event == "postcopy" for r in p.journal.records())
            if last == "postcopy_failed" or (started and last == "committed"):
                outcome = "postcopy_failed"
                actions.append(
                    "nothing changed: post-copy did not finish; the source copy "
                    "holds the state at the pause (paused), the destination copy "
                    "was stopped or lost memory: decide which to keep "
                    "(docs/architecture.md, post-copy)"
                )
            elif last in ("committed", "postcopy_done"):
                outcome = "committed"
            else:
                res = agent.call(Abort(migration_id=p.migration_id)).result
                if res.known:
                    actions.append("destination copy removed")
                outcome = "rolled_back"
            try:
                agent.call(Bye())
            except MigrateError:
                pass
        except Busy as e:
            raise InDoubt(f"{label}: {e.message}") from None
        except InDoubt:
            raise
        except MigrateError as e:
            raise InDoubt(
                f"{label}: the destination's journal could not be used: {e.message}"
            ) from None
        finally:
            agent.conn.close()
        # The destination is settled; now the source copy (an engine error here leaves the
        # journal unsettled, and recover can simply run again).
        try:
            if outcome == "committed":
                actions += _retire_source(p, engine)
            elif outcome == "postcopy_failed":
                pass
            else:
                actions += _resume_source(p, engine)
        except MigrateError as e:
            raise InDoubt(
                f"{label}: the destination is settled ({outcome}) but the source copy could not "
                f"be {'retired' if outcome == 'committed' else 'resumed'}: {e.message}"
            ) from None
        for staging in _stagings(state_dir, p.migration_id):
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
                actions.append(f"source staging removed ({staging})")
        p.journal.append("recovered", outcome=outcome, agent_last=last, actions=actions)
        return Settled(p.migration_id, label, outcome, last, tuple(actions))
    finally:
        lock.release()


def _stagings(state_dir: Path, migration_id: str) -> tuple[Path, Path]:
    """Where a run may have staged its checkpoint: on disk, or in memory (staging.py)."""
    return (
        state_dir / "staging" / migration_id,
        staging_mod.MEMORY_ROOT / "staging" / migration_id,
    )


def _wait_for_orphaned_dump(staging: Path, label: str) -> None:
    """A `migrate run` killed during the CRIU dump leaves runc and CRIU dumping into its
    staging directory. When they end they put the freezer back as they found it (frozen):
    resuming the container before that would see it frozen again behind Docker's back (Docker
    says running, its tasks stay stopped). So wait for them; still running after
    DUMP_WAIT_S: in doubt, nothing touched."""
    pids = criu.wait_until_unused(staging, DUMP_WAIT_S)
    if pids:
        raise InDoubt(
            f"{label}: a checkpoint of this migration is still being written into "
            f"{staging} (pids {', '.join(map(str, pids))})",
            hint="wait for those processes to end (a large container takes long to "
            "dump) and run `migrate recover` again",
        )


def _retire_source(p: Pending, engine: Engine) -> list[str]:
    if not engine.exists(p.container_id):
        return []
    st = engine.state(p.container_id)
    if st.running or st.paused:
        engine.kill(p.container_id)  # paused tasks die as they thaw: they never run again
    if p.keep_source:
        return ["source copy stopped"]
    engine.remove(p.container_id, force=True)
    return ["source copy removed"]


def _resume_source(p: Pending, engine: Engine) -> list[str]:
    if not engine.exists(p.container_id):
        return []
    st = engine.state(p.container_id)
    if st.paused:
        engine.unpause(p.container_id)
        return ["source copy resumed"]
    return []
