"""The frozen part of a migration: where the checkpoint images are staged, the pause (the
downtime starts), the CRIU checkpoint, everything that must be consistent with the memory
image sent while the container stays frozen, then the restore on the destination (the
downtime ends; journalled `restored`)."""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from migrate.checkpoint import criu
from migrate.checkpoint import staging as staging_mod
from migrate.core.errors import CheckpointFailed, PrecheckFailed
from migrate.engines.base import ContainerSpec
from migrate.fs import capture
from migrate.fs.files import read_chunks
from migrate.fs.precopy import PreCopy
from migrate.source.limits import DUMP_WAIT_S, RESTORE_TIMEOUT_S

if TYPE_CHECKING:
    from migrate.source.migration import Migration

log = logging.getLogger(__name__)


def freeze_and_move(m: Migration, spec: ContainerSpec) -> None:
    assert m.conn is not None
    _choose_staging(m, spec)
    img_dir = m.staging / "checkpoint"
    work_dir = m.staging / "work"
    # Looked up while the container still runs: neither changes with the pause, and each
    # is a Docker API call that would otherwise add to the downtime.
    upper = Path(m.engine.state(spec.id).upper_dir)
    log_path = m.engine.log_file(spec.id)
    m.fault("source:before_pause")
    with m.timer.phase("freeze", "pausing the container"):
        m.journal.append("pausing")
        m.t_pause = time.monotonic()
        m.engine.pause(spec.id)
        m.paused = True
    m.fault("source:after_pause")
    with m.timer.phase("checkpoint", "CRIU checkpoint"):
        if m.strategy == "lazy":
            # The memory stays here, served on demand once the destination runs.
            m.page_server = m.engine.start_lazy_checkpoint(spec.id, img_dir, work_dir)
        else:
            img_dir, work_dir = _checkpoint(m, spec, img_dir, work_dir)
    m.interrupts.check()
    _send_rootfs(m, upper)
    # Still frozen: volume content is consistent with the memory image.
    _send_volumes(m)
    if m.opts.bind_mounts == "copy":
        _send_binds(m)
    if log_path is not None and log_path.is_file():
        with m.timer.phase("logs", "log history"):
            res = m.conn.call(
                "put_log",
                stream=read_chunks(log_path),
                migration_id=m.id,
                timeout=RESTORE_TIMEOUT_S,
            )
            m.count("logs", res["_stream"])
    _send_checkpoint(m, img_dir)
    _restore(m)


def _choose_staging(m: Migration, spec: ContainerSpec) -> None:
    """Memory or disk for the checkpoint images, decided while the container still runs
    (staging.py). ``--staging memory`` that does not fit is refused before the pause."""
    # A post-copy dump writes only the small non-memory images.
    m.memory_need = 0 if m.strategy == "lazy" else m.engine.memory_usage(spec.id)
    root = m.opts.memory_root / "staging"
    choice = staging_mod.choose(m.opts.staging, m.memory_need, root)
    log.info("source staging: %s (%s)", choice.label, choice.reason)
    if m.opts.staging == "memory" and not choice.memory:
        raise PrecheckFailed(
            f"cannot stage the checkpoint in memory on the source: {choice.reason}",
            hint="use --staging auto (falls back to disk) or free memory on the source",
        )
    if choice.memory:
        staging_mod.ensure_root(root)
        m.staging = root / m.id
    m.staged_in["source"] = choice.label


def _checkpoint(
    m: Migration, spec: ContainerSpec, img_dir: Path, work_dir: Path
) -> tuple[Path, Path]:
    """The cold dump; staged in memory, a dump that runs out of room there is done again
    on disk (the container is still paused and untouched: --leave-running)."""
    try:
        m.engine.checkpoint(spec.id, img_dir, work_dir)
        return img_dir, work_dir
    except CheckpointFailed as e:
        in_memory = m.staged_in.get("source") == "memory"
        said = f"{e.message} {e.details.get('criu_log', '')}"
        if not in_memory or m.opts.staging == "memory" or "No space left" not in said:
            raise
        log.warning("the checkpoint did not fit in %s; dumping again on disk", m.staging)
    dumping = criu.wait_until_unused(m.staging, DUMP_WAIT_S)
    if dumping:
        raise CheckpointFailed(
            f"the CRIU dump into {m.staging} still runs (pids {', '.join(map(str, dumping))})"
        )
    shutil.rmtree(m.staging, ignore_errors=True)
    m.staging = m.opts.state_dir / "staging" / m.id
    m.staged_in["source"] = "disk"
    img_dir, work_dir = m.staging / "checkpoint", m.staging / "work"
    m.engine.checkpoint(spec.id, img_dir, work_dir)
    return img_dir, work_dir


def _send_rootfs(m: Migration, upper: Path) -> None:
    assert m.conn is not None
    with m.timer.phase("rootfs", "read-write layer"):
        pc = m.precopied
        # After a pre-copy: a delta (unchanged files named, not sent; the agent removes
        # what the frozen tree no longer has).
        cap = capture.capture(upper) if pc is None else capture.capture(upper, keep=pc.unchanged)
        res = m.conn.call(
            "put_rootfs" if pc is None else "put_rootfs_delta",
            stream=cap,
            migration_id=m.id,
            timeout=RESTORE_TIMEOUT_S,
            on_progress=lambda raw, wire: m.progress.transfer("rootfs", raw, wire, None),
        )
        m.count("rootfs", res["_stream"])
        m.bytes["rootfs_kept"] += cap.stats.kept_bytes


def _send_volumes(m: Migration) -> None:
    for v in m.volumes:
        with m.timer.phase("volumes", f"volume {v.name}"):
            vpc = m.precopied_volumes.get(v.name)
            _send_tree(m, Path(v.mountpoint), vpc, "put_volume", volume=v.name)


def _send_binds(m: Migration) -> None:
    for path in m.binds:
        with m.timer.phase("binds", f"bind mount {path}"):
            bpc = m.precopied_binds.get(path)
            # No progress for bind mounts: they never had a row of their own.
            _send_tree(m, Path(path), bpc, "put_bind", path=path, progress=False)


def _send_tree(
    m: Migration,
    root: Path,
    pc: PreCopy | None,
    method: str,
    *,
    progress: bool = True,
    **key: str,
) -> None:
    """A volume's or bind mount's frozen content: all of it, or after a pre-copy a delta
    (``method``_delta); counted with the volumes."""
    assert m.conn is not None
    cap = capture.capture(root) if pc is None else capture.capture(root, keep=pc.unchanged)
    res = m.conn.call(
        method if pc is None else f"{method}_delta",
        stream=cap,
        migration_id=m.id,
        timeout=RESTORE_TIMEOUT_S,
        on_progress=(lambda raw, wire: m.progress.transfer("volumes", raw, wire, None))
        if progress
        else None,
        **key,
    )
    m.count("volumes", res["_stream"])
    m.bytes["volumes_kept"] += cap.stats.kept_bytes


def _dest_staging_args(m: Migration) -> dict[str, Any]:
    """Ask the agent to stage in memory when it can and the images may fit there."""
    if m.opts.staging == "disk" or not m.agent_memory_staging:
        return {}
    return {"memory_bytes": m.memory_need, "require_memory": m.opts.staging == "memory"}


def _send_checkpoint(m: Migration, img_dir: Path) -> None:
    assert m.conn is not None
    with m.timer.phase("transfer", "checkpoint images"):
        total = _dir_size(img_dir)
        res = m.conn.call(
            "put_checkpoint",
            stream=m.faulty(capture.capture(img_dir), "source:mid_stream"),
            migration_id=m.id,
            timeout=RESTORE_TIMEOUT_S,
            **_dest_staging_args(m),
            on_progress=lambda raw, wire: m.progress.transfer("checkpoint", raw, wire, total),
        )
        m.count("checkpoint", res["_stream"])
        m.staged_in["destination"] = str(res.get("staging") or "disk")


def _restore(m: Migration) -> None:
    assert m.conn is not None and m.t_pause is not None
    tunnel = None
    if m.page_server is not None:
        open_tunnel = m.conn.ch.tunnels()
        assert open_tunnel is not None  # lazy needs it: strategy.source_postcopy_blocker
        tunnel = open_tunnel(m.page_server.port)
        m.tunnel = tunnel
    m.fault("source:before_restore")
    m.interrupts.check()
    with m.timer.phase("restore", "restoring on the destination"):
        t_call = time.monotonic()
        extra: dict[str, Any] = {} if tunnel is None else {"page_server_port": tunnel.remote_port}
        res = m.conn.call("restore", migration_id=m.id, timeout=RESTORE_TIMEOUT_S, **extra)
        m.downtime = time.monotonic() - m.t_pause
        running_s = res.get("running_s")
        if isinstance(running_s, (int, float)) and 0 <= running_s:
            # With a local lazy restore the container runs before the agent answers
            # (it waits for the last page first): downtime ends when it runs.
            m.downtime = min(m.downtime, t_call - m.t_pause + float(running_s))
    fill = res.get("memory_fill_s")
    if isinstance(fill, (int, float)):
        m.timer.phases["restore_memory_fill"] = round(float(fill), 4)
    steps = res.get("restore_steps")
    if isinstance(steps, dict):  # parts of `restore` as the agent saw them (post-copy)
        for k, v in steps.items():
            if isinstance(k, str) and isinstance(v, (int, float)):
                m.timer.phases[f"restore.{k}"] = round(float(v), 4)
    m.journal.append(
        "restored", downtime_s=m.downtime, restore_mode=str(res.get("restore_mode", ""))
    )


def _dir_size(path: Path) -> int:
    total = 0
    for p in path.rglob("*"):
        try:
            if p.is_file() and not p.is_symlink():
                total += p.stat().st_size
        except OSError:
            pass
    return total
