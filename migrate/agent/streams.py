"""The streams that fill the new container: its read-write layer, volumes and bind-mount
copies (whole, pre-copied while the source runs, or the frozen delta over a pre-copy), its
log history and the checkpoint images."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal

from migrate.agent.handlers import Handler, streamed
from migrate.agent.state import MigrationState, Part
from migrate.checkpoint import lazy_pages
from migrate.checkpoint import staging as staging_mod
from migrate.core.errors import DiskFull, MigrateError, ProtocolError, VolumeConflict
from migrate.fs import extract, precopy
from migrate.wire.messages import METHODS
from migrate.wire.methods import (
    BindRequest,
    MigrationRequest,
    PutCheckpoint,
    PutLog,
    VolumeRequest,
)
from migrate.wire.results import CheckpointResult, DeltaResult, LogResult, TreeResult
from migrate.wire.stream import StreamReader

log = logging.getLogger(__name__)

# A json-file log history larger than this is refused rather than filling the disk.
MAX_LOG_BYTES = 1 << 30
# Below this much lazy memory Docker's own restore path is as fast as the daemon's start.
LAZY_RESTORE_MIN_BYTES = lazy_pages.MIN_LAZY_BYTES
# Checkpoint images staged in memory (staging.py); journalled like --staging-dir.
MEMORY_STAGING_ROOT = staging_mod.MEMORY_ROOT / "agent"

# The tree streams: method -> (tree, phase). A tree is the read-write layer ("rootfs"), a
# volume or a --bind-mounts copy path ("bind"); the phase is the whole content ("put"), a
# pre-copy read while the source runs ("precopy") or the frozen delta over it ("delta").
TREE_METHODS: dict[str, tuple[str, str]] = {
    f"{verb}_{tree}{suffix}": (tree, phase)
    for tree in ("rootfs", "volume", "bind")
    for verb, suffix, phase in (
        ("put", "", "put"),
        ("precopy", "", "precopy"),
        ("put", "_delta", "delta"),
    )
}
_POLICIES = {
    ("rootfs", False): extract.ROOTFS_POLICY,
    ("rootfs", True): extract.ROOTFS_DELTA_POLICY,
    ("volume", False): extract.VOLUME_POLICY,
    ("volume", True): extract.VOLUME_DELTA_POLICY,
    ("bind", False): extract.VOLUME_POLICY,
    ("bind", True): extract.VOLUME_DELTA_POLICY,
}
_LABELS = {"volume": "volume", "bind": "bind mount"}


@dataclass
class Streams(Part):
    """The stream handlers that fill a prepared container."""

    def tree_handlers(self) -> list[Handler]:
        """The nine put_*/precopy_* methods, each this one implementation for its entry."""
        return [
            streamed(METHODS[name].model, partial(self._tree, tree, phase))
            for name, (tree, phase) in TREE_METHODS.items()
        ]

    def _tree(
        self, tree: str, phase: str, req: MigrationRequest[Any], stream: StreamReader
    ) -> TreeResult:
        """A stream into one tree. A pre-copy goes into an empty tree and is flushed while the
        source still runs; a delta needs that pre-copy (unchanged files only named, checked to
        be here; names it does not mention removed). A rollback removes or empties the tree
        as it does for the whole content."""
        m = self.s.mig(req.migration_id)
        key = _tree_key(req)
        if phase == "precopy":
            target = self._precopy_target(m, tree, key)
        elif phase == "delta":
            if not self._precopied(m, tree, key):
                of = "" if tree == "rootfs" else f" of {key!r}"
                raise ProtocolError(f"put_{tree}_delta without a pre-copy{of}")
            target = self._target(m, tree, key, empty=False)
        else:
            if tree == "rootfs" and m.precopied:
                raise ProtocolError("the read-write layer was pre-copied: only a delta may follow")
            target = self._target(m, tree, key, empty=True)
        delta = phase == "delta"
        stats = extract.apply(stream, target, policy=_POLICIES[tree, delta])
        if phase == "precopy":
            # Written back now, while the source still runs, not during the pause.
            precopy.flush(target)
        if delta:
            return DeltaResult(
                files=stats.members, bytes=stats.bytes, kept=stats.kept, removed=stats.removed
            )
        return TreeResult(files=stats.members, bytes=stats.bytes)

    def _precopied(self, m: MigrationState, tree: str, key: str) -> bool:
        if tree == "rootfs":
            return m.precopied
        return key in (m.volumes_precopied if tree == "volume" else m.binds_precopied)

    def _precopy_target(self, m: MigrationState, tree: str, key: str) -> Path:
        """The tree a pre-copy fills (empty, and pre-copied once), marked pre-copied."""
        if tree == "rootfs":
            # Into the new container's upper dir, which a rollback removes with the container.
            upper = self._upper(m)
            if m.precopied or any(upper.iterdir()):
                raise ProtocolError("the new container's read-write layer is not empty")
            m.precopied = True
            return upper
        if self._precopied(m, tree, key):
            raise ProtocolError(f"{_LABELS[tree]} {key!r} was already pre-copied")
        target = self._target(m, tree, key, empty=True)
        (m.volumes_precopied if tree == "volume" else m.binds_precopied).append(key)
        return target

    def _target(self, m: MigrationState, tree: str, key: str, *, empty: bool) -> Path:
        if tree == "rootfs":
            return self._upper(m)
        if tree == "volume":
            return self._volume_dir(m, key, empty=empty)
        return self._bind_dir(m, key, empty=empty)

    def _upper(self, m: MigrationState) -> Path:
        upper = Path(self.engine.state(m.container_id).upper_dir)
        if not upper.is_dir():
            raise MigrateError(f"the new container's read-write layer {upper} does not exist")
        return upper

    def _volume_dir(self, m: MigrationState, volume: str, *, empty: bool) -> Path:
        if volume not in (*m.volumes_made, *m.volumes_reused):
            raise ProtocolError(f"volume {volume!r} was not prepared for this migration")
        v = self.engine.volume(volume)
        target = Path(v.mountpoint) if v is not None else None
        if target is None or not target.is_dir():
            raise MigrateError(f"volume {volume} has no directory on this host")
        if empty and any(target.iterdir()):
            raise VolumeConflict(f"volume {volume} got content since the precheck: not merged")
        return target

    def _bind_dir(self, m: MigrationState, path: str, *, empty: bool) -> Path:
        target = Path(path)
        if path not in m.binds_reused and not any(
            target == Path(t) or Path(t) in target.parents for t in m.binds_made
        ):
            raise ProtocolError(f"bind mount {path!r} was not prepared for this migration")
        if empty and any(target.iterdir()):
            raise VolumeConflict(f"{path} got content since the precheck: not merged")
        return target

    def h_put_log(self, req: PutLog, stream: StreamReader) -> LogResult:
        """The source's log history, where the new container's log driver appends to it (so
        `docker logs` shows what was logged before the move, then after)."""
        m = self.s.mig(req.migration_id)
        target = self.engine.log_file(m.container_id)
        size = 0
        if target is None or (target.exists() and target.stat().st_size > 0):
            while stream.read(1 << 20):  # no such file to extend: drain, keep nothing
                pass
            return LogResult(bytes=0)
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(target, "wb") as f:
            while chunk := stream.read(1 << 20):
                size += len(chunk)
                if size > MAX_LOG_BYTES:
                    raise ProtocolError(f"log history larger than {MAX_LOG_BYTES} bytes")
                f.write(chunk)
        return LogResult(bytes=size)

    def h_put_checkpoint(self, req: PutCheckpoint, stream: StreamReader) -> CheckpointResult:
        m = self.s.mig(req.migration_id)
        memory_bytes = req.memory_bytes
        # The complete images go to a staging directory; h_restore decides what Docker gets.
        # In memory when the source asks and they fit twice (staging.py: the restored copy
        # fills while the images are still there), unless the operator chose a directory.
        where: Literal["memory", "disk"] = "disk"
        if memory_bytes is not None and self.s.staging_root is None:
            root = MEMORY_STAGING_ROOT
            choice = staging_mod.choose("auto", max(memory_bytes, 0), root, copies=2)
            if choice.memory and memory_bytes >= LAZY_RESTORE_MIN_BYTES:
                # Without the split Docker needs all of the images in its own directory:
                # from memory that is a copy where the disk staging area has a rename.
                if why := lazy_pages.blocker(self.engine):
                    choice = staging_mod.Choice(False, f"no local lazy restore: {why}")
            log.info("agent staging: %s (%s)", choice.label, choice.reason)
            if choice.memory:
                staging_mod.ensure_root(root)
                m.staging = root / f"migrate-{m.id}"
                where = "memory"
            elif req.require_memory:
                raise DiskFull(
                    f"cannot stage the checkpoint in memory on the destination: {choice.reason}",
                    hint="use --staging auto (falls back to disk) or free memory on the "
                    "destination",
                )
        target = self.s.staging(m)
        if self.s.staging_root is not None or where == "memory":
            assert m.journal is not None
            m.journal.append("staging", path=str(target))  # before it exists: a rollback finds it
            m.staging = target
        target.mkdir(parents=True, exist_ok=False)
        if self.s.faults.on("agent:exit_mid_stream"):
            stream.read(1 << 16)
            self.s.faults.exit("agent:exit_mid_stream")
        stats = extract.extract(stream, target, policy=extract.CHECKPOINT_POLICY)
        if self.s.faults.on("agent:restore_fail"):
            # Corrupt a real image so that CRIU itself fails, with a real log to report.
            for img in sorted(target.glob("core-*.img")):
                img.write_bytes(b"\x00" * 16)
        return CheckpointResult(files=stats.members, bytes=stats.bytes, staging=where)


def _tree_key(req: MigrationRequest[Any]) -> str:
    """Which volume or bind directory a tree stream fills ("" for the read-write layer)."""
    if isinstance(req, VolumeRequest):
        return req.volume
    if isinstance(req, BindRequest):
        return req.path
    return ""
