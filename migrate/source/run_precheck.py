"""The precheck of `migrate run`: the shared source precheck (precheck.py) with the run's own
rules (its lock, no unsettled earlier migration, what the container takes along, an
experimental daemon), then the agent's handshake, its precheck, the strategy and the CPU.
Nothing is touched until it passes; `--dry-run` stops after it."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from migrate.core.errors import InDoubt
from migrate.core.journal import unsettled
from migrate.core.lock import ContainerLock
from migrate.engines.base import ContainerSpec, ContainerState
from migrate.source import mounts
from migrate.source.limits import CALL_TIMEOUT_S
from migrate.source.precheck import SourceCriu, check_cpu, check_source, require_criu
from migrate.source.strategy import choose_strategy, source_postcopy_blocker
from migrate.wire.bulk import attach_bulk
from migrate.wire.client import AgentClient
from migrate.wire.connection import Connection
from migrate.wire.methods import Precheck
from migrate.wire.session import open_session

if TYPE_CHECKING:
    from migrate.source.migration import Migration

log = logging.getLogger(__name__)


def precheck(m: Migration) -> ContainerSpec:
    with m.timer.phase("precheck", "checking source and destination"):
        spec = check_source(
            m.engine,
            m.opts.container,
            only_running="migrate",
            on_state=lambda st: _lock(m, st),
            on_spec=lambda spec: _take_along(m, spec),
        ).spec
        m.engine.refuse_unready(m.engine.info(), destination=False)
        source_criu = require_criu()
        m.dest_name = m.opts.name or spec.name
        _ask_destination(m, spec, source_criu)
        return spec


def _lock(m: Migration, st: ContainerState) -> None:
    # Held until run() returns; the kernel drops it if this process dies.
    lock = ContainerLock(st.id, st.name, m.opts.lock_dir)
    lock.acquire()
    m.lock = lock
    pending = [j for j in unsettled(m.opts.state_dir) if j.container_id == st.id]
    if pending:
        raise InDoubt(
            f"an earlier migration of {st.name} ({pending[0].migration_id}) is not "
            f"settled (last step: {pending[0].last}); nothing was touched",
            hint=f"run `migrate recover {st.name} --to {pending[0].destination}` first",
            details={"migration_id": pending[0].migration_id},
        )


def _take_along(m: Migration, spec: ContainerSpec) -> None:
    mounts.check_supported(m.engine, spec, m.opts.bind_mounts)
    m.volumes = mounts.movable_volumes(m.engine, spec)
    m.binds = mounts.bind_sources(spec, m.opts.bind_mounts)
    m.networks = mounts.movable_networks(m.engine, spec)


def _ask_destination(m: Migration, spec: ContainerSpec, source_criu: SourceCriu) -> None:
    """The agent's handshake and precheck, the strategy, the CPU check."""
    m.conn = Connection(m.connect(), timeout=CALL_TIMEOUT_S, level=m.opts.compression_level)
    m.agent = agent = AgentClient(m.conn)
    # None: post-copy possible on this side (the agent is asked about its own).
    lazy_why = None if m.opts.strategy != "cold" else "not asked"
    if lazy_why is None:
        lazy_why = source_postcopy_blocker(source_criu.caps, m.conn) or None
    hello = open_session(
        agent,
        faults=m.opts.faults.for_side("agent"),
        adaptive=m.opts.compression == "adaptive",
    )
    log.debug("agent: %s", hello)
    m.agent_methods = frozenset(hello.methods)
    m.agent_memory_staging = "memory" in hello.staging
    # Before anything is frozen: its handshake must not land in the downtime.
    m.stream_channel = attach_bulk(agent, m.opts.bulk, m.agent_methods, m.opts.faults.points)
    if lazy_why is None and "postcopy_wait" not in m.agent_methods:
        lazy_why = "the destination's migrate is too old for post-copy"
    req = Precheck(
        spec=spec.to_wire(),
        name=m.dest_name,
        criu_version=list(source_criu.version),
        volumes=[v.to_wire() for v in m.volumes],
        binds=mounts.binds_wire(m.binds, m.opts.bind_mounts),
    )
    if lazy_why is None:
        # Only then: an agent that was not asked answers no `lazy` verdict at all.
        req = req.model_copy(update={"lazy": True})
    res = agent.call(req).result
    m.strategy, m.strategy_note = choose_strategy(m.opts.strategy, lazy_why, res)
    check_cpu(
        agent,
        hint="migrate between hosts with the same CPU features (`migrate check --to "
        "DEST` shows it)",
    )
