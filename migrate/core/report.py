"""What a migration did: phase timings, bytes, downtime. Built by migration.py, shown by the CLI."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol


class Progress(Protocol):
    """Where the migration reports what it is doing (the CLI draws it; tests may record it)."""

    def phase(self, name: str, description: str) -> None: ...

    def phase_done(self, name: str, seconds: float) -> None: ...

    def transfer(self, stream: str, raw: int, wire: int, total: int | None) -> None: ...


class NullProgress:
    def phase(self, name: str, description: str) -> None:
        pass

    def phase_done(self, name: str, seconds: float) -> None:
        pass

    def transfer(self, stream: str, raw: int, wire: int, total: int | None) -> None:
        pass


@dataclass
class Timer:
    """Accumulates seconds per phase, in the order phases first ran."""

    progress: Progress = field(default_factory=NullProgress)
    phases: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def phase(self, name: str, description: str = "") -> Iterator[None]:
        self.progress.phase(name, description or name)
        t0 = time.monotonic()
        try:
            yield
        finally:
            dt = time.monotonic() - t0
            self.phases[name] = self.phases.get(name, 0.0) + dt
            self.progress.phase_done(name, dt)


@dataclass(frozen=True)
class Bytes:
    raw: int = 0  # what was moved, uncompressed
    wire: int = 0  # what crossed the link (frames, compressed)
    image: int = 0  # raw bytes of image layers sent
    rootfs: int = 0  # raw bytes of the read-write layer
    checkpoint: int = 0  # raw bytes of CRIU images
    volumes: int = 0  # raw bytes of volume content
    logs: int = 0  # raw bytes of the log history
    # Pre-copy (migrate/fs/precopy.py): raw bytes of the read-write layer sent while the
    # container ran, and the size of the files the freeze did not send again (unchanged).
    # ``rootfs`` is then what was sent during the freeze.
    rootfs_precopy: int = 0
    rootfs_kept: int = 0
    volumes_precopy: int = 0  # the same for volumes (``volumes``: sent during the freeze)
    volumes_kept: int = 0
    # Raw bytes sent almost uncompressed by adaptive compression (wire/stream.py, FAST_LEVEL):
    # where the CPUs, not the link, were the limit.
    fast: int = 0

    def to_json(self) -> dict[str, int]:
        return {
            "raw": self.raw,
            "wire": self.wire,
            "fast": self.fast,
            "image": self.image,
            "rootfs": self.rootfs,
            "rootfs_precopy": self.rootfs_precopy,
            "rootfs_kept": self.rootfs_kept,
            "volumes_precopy": self.volumes_precopy,
            "volumes_kept": self.volumes_kept,
            "volumes": self.volumes,
            "logs": self.logs,
            "checkpoint": self.checkpoint,
        }


@dataclass(frozen=True)
class Report:
    status: str  # migrated | rolled_back | in_doubt | dry_run
    container: str
    source: str
    destination: str
    dest_name: str
    dest_container_id: str
    strategy: str
    downtime_s: float | None
    total_s: float
    phases: dict[str, float]
    bytes: Bytes
    source_action: str = ""  # removed | stopped | resumed | kept paused
    error: dict[str, Any] | None = None
    strategy_note: str = ""  # --strategy auto: why it chose cold
    # --strategy lazy: the post-copy phase after the downtime (running to the last page):
    # postcopy_s, pages_total, pages_on_demand (faults), pages_background, bytes.
    postcopy: dict[str, Any] | None = None
    # Where the checkpoint images were staged: {"source": "memory"|"disk", "destination": ...}
    # (staging.py); empty when the run ended before the checkpoint.
    staging: dict[str, str] = field(default_factory=dict)
    migration_id: str = ""  # names the journals (`migrate recover`) and staging directories
    # What carried the streams: openssh (the bulk connection) | paramiko | local; and why
    # not openssh under --bulk auto.
    stream_channel: str = ""
    stream_channel_note: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "container": self.container,
            "source": self.source,
            "destination": self.destination,
            "dest_name": self.dest_name,
            "dest_container_id": self.dest_container_id,
            "strategy": self.strategy,
            "downtime_s": None if self.downtime_s is None else round(self.downtime_s, 4),
            "total_s": round(self.total_s, 4),
            "phases": {k: round(v, 4) for k, v in self.phases.items()},
            "bytes": self.bytes.to_json(),
            "source_action": self.source_action,
            "error": self.error,
            "strategy_note": self.strategy_note,
            "stream_channel": self.stream_channel,
            "stream_channel_note": self.stream_channel_note,
            "postcopy": None
            if self.postcopy is None
            else {k: round(v, 4) if isinstance(v, float) else v for k, v in self.postcopy.items()},
            "staging": dict(self.staging),
            "migration_id": self.migration_id,
        }


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"
