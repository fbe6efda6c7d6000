"""The source's precheck, shared by `migrate run`, `migrate export` and `migrate drill`.

Before anything is touched: the container exists and runs, no `docker exec` session is
attached to it, CRIU can read every one of its processes here, and (for the commands that
dump through CRIU themselves) CRIU is new enough; on a destination, a checkpoint taken here
restores on its CPU. Each command adds its own checks through the hooks of
:func:`check_source` (the run its lock, mounts, volumes and networks; the drill its bind-mount
rule), so the order of the refusals stays the one each command always had.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Callable
from dataclasses import dataclass

from migrate.checkpoint import criu
from migrate.core.errors import ContainerNotRunning, CriuUnavailable, Incompatible, Unsupported
from migrate.engines.base import ContainerSpec, ContainerState, Engine
from migrate.wire.client import AgentClient
from migrate.wire.methods import CpuinfoCheck


@dataclass(frozen=True)
class SourceContainer:
    """The container the precheck found running and supported here."""

    state: ContainerState
    spec: ContainerSpec


@dataclass(frozen=True)
class SourceCriu:
    """This host's CRIU, new enough to dump (``version`` known and >= criu.MIN_CRIU)."""

    caps: criu.CriuCapabilities
    version: tuple[int, int, int]


def _nothing(_: object) -> None:
    pass


def check_source(
    engine: Engine,
    container: str,
    *,
    only_running: str,
    on_state: Callable[[ContainerState], None] = _nothing,
    on_spec: Callable[[ContainerSpec], None] = _nothing,
) -> SourceContainer:
    """Refuse a container that is not running or that CRIU cannot dump here. ``only_running``
    ends the refusal "only running containers ..." (migrate, are drilled, are exported);
    ``on_state`` runs before the running check (the run takes its lock there), ``on_spec``
    before the process checks (each command's own mount and network rules)."""
    st = engine.state(container)
    on_state(st)
    if not st.running or st.paused:
        raise ContainerNotRunning(
            f"container {st.name} is {st.status}: only running containers {only_running}",
            hint=f"start it (`{engine.name} start {st.name}`) or unpause it first",
        )
    spec = engine.spec(container)
    on_spec(spec)
    execs = engine.exec_sessions(spec.id)
    if execs:
        raise Unsupported(
            f"`{engine.name} exec` sessions are running in {spec.name}: {'; '.join(execs)}",
            hint="CRIU cannot dump processes outside the container's process tree: "
            "end those exec sessions and retry",
        )
    check_process_owners(engine, spec)
    return SourceContainer(st, spec)


def check_process_owners(engine: Engine, spec: ContainerSpec) -> None:
    """Refuse, before anything is frozen, a container CRIU cannot dump here: CRIU reads every
    task's rlimits with prlimit(), which for a process of another user needs CAP_SYS_RESOURCE
    (PLATFORM.md; PostgreSQL, nginx workers as www-data). Real hosts' root has it."""
    if criu.has_cap_sys_resource():
        return
    me_u, me_g = os.getuid(), os.getgid()
    others = [
        p
        for p in engine.processes(spec.id)
        if any(u != me_u for u in p.uids) or any(g != me_g for g in p.gids)
    ]
    if not others:
        return
    shown = "; ".join(
        f"pid {p.pid} uid {p.uids[0] if p.uids else '?'} ({p.command[:60]})" for p in others[:5]
    )
    raise Unsupported(
        f"{spec.name} runs processes as another user ({shown}{', ...' if len(others) > 5 else ''})"
        " and this host lacks CAP_SYS_RESOURCE: CRIU cannot read their rlimits (prlimit) "
        "and could not checkpoint the container",
        hint="run migrate as root with full capabilities (a normal host, not a restricted "
        "sandbox); `migrate check` shows cap_sys_resource. Containers whose processes all "
        "run as root migrate here",
        details={"pids": [p.pid for p in others]},
    )


def refuse_shared_network(engine: Engine, spec: ContainerSpec, *, hint: str) -> None:
    """A container in another's network namespace (the host's, a container's) cannot be
    checkpointed on its own."""
    if engine.shares_network_namespace(spec):
        raise Unsupported(f"{spec.name} uses network mode {spec.network_mode!r}", hint=hint)


def require_criu(*, say_found: bool = True) -> SourceCriu:
    """This host's CRIU, refused when missing or older than criu.MIN_CRIU. ``say_found``: name
    the version found in the refusal (the drill's refusal never did)."""
    caps = criu.capabilities(criu.find_criu())
    if caps.version is None or caps.version < criu.MIN_CRIU:
        found = f" (found {'.'.join(map(str, caps.version))})" if caps.version else ""
        raise CriuUnavailable(
            "CRIU >= 4.2 is needed on the source" + (found if say_found else ""),
            hint="run `make setup` (it builds CRIU 4.2 from Debian's source package)",
        )
    return SourceCriu(caps, caps.version)


def check_cpu(agent: AgentClient, *, hint: str) -> None:
    """A checkpoint restores only on a CPU with the features its programs may use: ask the
    destination's CRIU about this host's CPU before anything is frozen."""
    image = base64.b64encode(criu.cpuinfo_image()).decode()
    res = agent.call(CpuinfoCheck(image_b64=image)).result
    if not res.ok:
        raise Incompatible(
            "the destination's CPU lacks features this host's CPU has: a checkpoint taken "
            "here would not restore there",
            hint=hint,
            details={"criu_log": res.output},
        )
