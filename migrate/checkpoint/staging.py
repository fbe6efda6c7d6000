"""Where checkpoint images are staged: in memory (tmpfs) when they fit, else on disk.

A cold migration writes the container's whole memory as CRIU images on the source and
receives it again on the destination, inside the freeze. On disk those writes compete with
everything else the disk does (the write-back of a pre-copied read-write layer, other
containers), and the time the dump takes moves with it; on tmpfs it does not
(benchmarks/results/staging.md). The images are deleted as soon as the restore has them, so
memory is only borrowed, but tmpfs pages cannot be reclaimed while they are there: staging
in memory is chosen only when the images fit with a margin, both in the tmpfs and in the
host's available memory, and disk stays the fallback.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from migrate.core.mountinfo import parse_mountinfo_entries

# /dev/shm is a tmpfs on every distribution we know, sized at half the RAM by default.
# MIGRATE_MEMORY_STAGING points elsewhere (a tmpfs of its own, say).
MEMORY_ROOT = Path(os.environ.get("MIGRATE_MEMORY_STAGING") or "/dev/shm/migrate")
MODES = ("auto", "memory", "disk")
# Room left for the container's own growth between the estimate and the dump.
GROWTH = 1.25
# What the host keeps available beyond the staged images (page cache of the running
# containers, the daemons, the restored copy's first allocations).
HOST_RESERVE = 512 << 20
TMPFS_RESERVE = 64 << 20


@dataclass(frozen=True)
class Choice:
    memory: bool
    reason: str

    @property
    def label(self) -> str:
        return "memory" if self.memory else "disk"


def nearest_existing(path: Path) -> Path | None:
    """``path`` or its nearest ancestor that exists (what a directory to be made lands on)."""
    for p in (path, *path.parents):
        if p.exists():
            return p
    return None


def _fstype(path: Path) -> str:
    """The file system type of the mount holding the existing ``path`` ("" if unknown):
    statvfs has no type, /proc/self/mountinfo has."""
    target = os.path.realpath(path)
    best, fstype = "", ""
    try:
        entries = parse_mountinfo_entries(Path("/proc/self/mountinfo").read_text())
    except OSError:
        return ""
    for point, _root, kind in entries:
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, fstype = point, kind
    return fstype


def mem_available() -> int:
    """MemAvailable of /proc/meminfo in bytes (0 when unknown: then nothing is staged in
    memory)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def tmpfs_free(root: Path) -> int:
    """Free bytes of the tmpfs holding ``root``, 0 if it is not a tmpfs."""
    probe = nearest_existing(root)
    if probe is None or _fstype(probe) != "tmpfs":
        return 0
    try:
        return shutil.disk_usage(probe).free
    except OSError:
        return 0


def decide(mode: str, need: int, *, tmpfs_free: int, available: int, copies: int = 1) -> Choice:
    """Pure decision. ``need``: bytes the images will take (the container's memory);
    ``copies``: how many times that memory is held at once while the images are staged (1 on
    the source, whose container is frozen; 2 on the destination, where the restored copy
    fills while the images are still there)."""
    if mode not in MODES:
        raise ValueError(f"staging mode {mode!r}")
    if mode == "disk":
        return Choice(False, "--staging disk")
    want = int(need * GROWTH) + TMPFS_RESERVE
    if tmpfs_free < want:
        why = (
            "no tmpfs for staging"
            if tmpfs_free == 0
            else f"tmpfs has {tmpfs_free >> 20} MiB free, the images need ~{want >> 20} MiB"
        )
        return Choice(False, why)
    host_want = int(need * GROWTH) * copies + HOST_RESERVE
    if available < host_want:
        return Choice(
            False,
            f"{available >> 20} MiB of memory available, staging in memory "
            f"needs {host_want >> 20} MiB",
        )
    return Choice(True, f"~{need >> 20} MiB fit in memory")


def choose(mode: str, need: int, root: Path = MEMORY_ROOT, *, copies: int = 1) -> Choice:
    return decide(mode, need, tmpfs_free=tmpfs_free(root), available=mem_available(), copies=copies)


def ensure_root(root: Path) -> None:
    """The memory staging root: root-only, as the disk staging area."""
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(root, 0o700)
