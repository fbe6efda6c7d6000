"""The source side of pre-copy: the read-write layer (and the volumes, and bind mounts with
``--bind-mounts copy``) streamed into the new container while the container still runs, so
that the freeze only sends what changed since (migrate/fs/precopy.py)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from migrate.engines.base import ContainerSpec
from migrate.fs import capture
from migrate.fs import precopy as fs_precopy
from migrate.fs.precopy import PreCopy
from migrate.source.limits import RESTORE_TIMEOUT_S
from migrate.wire.methods import (
    PrecopyBind,
    PrecopyRootfs,
    PrecopyVolume,
    PutRootfsDelta,
    Request,
)

if TYPE_CHECKING:
    from migrate.source.migration import Migration

log = logging.getLogger(__name__)


def precopy(m: Migration, spec: ContainerSpec) -> None:
    """Stream the read-write layer into the new container's upper dir while the container
    still runs; the freeze then only sends what changed (migrate/fs/precopy.py)."""
    assert m.agent is not None
    if not m.opts.precopy or not {"precopy_rootfs", "put_rootfs_delta"} <= m.agent_methods:
        return
    m.fault("source:before_precopy")
    with m.timer.phase("precopy", "pre-copying the read-write layer (still running)"):
        upper = Path(m.engine.state(spec.id).upper_dir)
        pids = lambda: [p.pid for p in m.engine.processes(spec.id)]  # noqa: E731
        volumes_pc = _rootfs(m, upper, pids)  # volumes get one pass, from the first one's start
        if {"precopy_volume", "put_volume_delta"} <= m.agent_methods:
            _volumes(m, spec, volumes_pc)
        if m.opts.bind_mounts == "copy" and {"precopy_bind", "put_bind_delta"} <= m.agent_methods:
            _binds(m, spec, volumes_pc)
        # What the container wrote is written back now, not during the pause.
        fs_precopy.flush(upper)
    m.fault("source:after_precopy")


def _rootfs(m: Migration, upper: Path, pids: Callable[[], list[int]]) -> PreCopy:
    """The layer's first pass, then deltas while another pass is worth it; the first pass's
    record (the volumes' pre-copies start from it)."""
    assert m.agent is not None
    pc = first = PreCopy.start(pids)
    t_pass = time.monotonic()
    cap = capture.capture(upper, live=True, record=pc.record)
    _send_pass(m, PrecopyRootfs(migration_id=m.id), cap, pc)
    log.info(
        "pre-copy: %d files (%d bytes) sent while running, %d names skipped",
        len(pc.files),
        pc.bytes_recorded,
        cap.stats.vanished,
    )
    while pc.passes < fs_precopy.MAX_PASSES and pc.worth_another_pass(time.monotonic() - t_pass):
        # Another pass while running, a delta over the first: what changed meanwhile
        # or was too recently changed to vouch for goes now rather than in the freeze.
        t_pass = time.monotonic()
        pc = PreCopy.start(pids, previous=pc)
        cap = capture.capture(upper, live=True, record=pc.record, keep=pc.keep_from_previous)
        _send_pass(m, PutRootfsDelta(migration_id=m.id), cap, pc)
        log.info(
            "pre-copy pass %d: %d files (%d bytes) sent again, %d kept",
            pc.passes,
            len(pc.files),
            pc.bytes_recorded,
            len(pc.kept),
        )
    return first


def _send_pass(m: Migration, req: Request[Any], cap: capture.Capture, pc: PreCopy) -> None:
    """One pass over the layer sent (``req``: PrecopyRootfs or PutRootfsDelta; only the
    stream's statistics are used, so either answer will do); from now on the agent holds
    ``pc``."""
    assert m.agent is not None
    res = m.agent.call(
        req,
        stream=cap,
        timeout=RESTORE_TIMEOUT_S,
        on_progress=lambda raw, wire: m.progress.transfer("precopy", raw, wire, None),
    )
    m.count("rootfs_precopy", res.stream)
    m.precopied = pc


def _volumes(m: Migration, spec: ContainerSpec, volumes_pc: PreCopy) -> None:
    assert m.agent is not None
    where = {mt.name: mt.destination for mt in spec.mounts if mt.type == "volume"}
    for v in m.volumes:
        vpc = volumes_pc.under(where.get(v.name, "/nonexistent"))
        res = m.agent.call(
            PrecopyVolume(migration_id=m.id, volume=v.name),
            stream=capture.capture(Path(v.mountpoint), live=True, record=vpc.record),
            timeout=RESTORE_TIMEOUT_S,
            on_progress=lambda raw, wire: m.progress.transfer("precopy", raw, wire, None),
        )
        m.count("volumes_precopy", res.stream)
        m.precopied_volumes[v.name] = vpc


def _binds(m: Migration, spec: ContainerSpec, volumes_pc: PreCopy) -> None:
    assert m.agent is not None
    where = {mt.source: mt.destination for mt in spec.mounts if mt.type == "bind"}
    for path in m.binds:
        bpc = volumes_pc.under(where.get(path, "/nonexistent"))
        res = m.agent.call(
            PrecopyBind(migration_id=m.id, path=path),
            stream=capture.capture(Path(path), live=True, record=bpc.record),
            timeout=RESTORE_TIMEOUT_S,
        )
        m.count("volumes_precopy", res.stream)
        m.precopied_binds[path] = bpc
        fs_precopy.flush(Path(path))  # may be another file system than the layer's
