"""This host's engine and tools for `migrate check`: the Docker daemon (reachable,
experimental, overlay2, live-restore), runc, iptables-restore, free disk, memory staging."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from migrate.checkpoint import staging as staging_mod
from migrate.core.checks import CheckResult
from migrate.source.check_result import gib

log = logging.getLogger(__name__)

# Below this much free space a migration of anything but a small container is likely to fail
# part-way (checkpoint images and the RW layer are staged on disk on both sides).
MIN_FREE_BYTES = 1 << 30

TOOL_TIMEOUT_S = 10.0
# Where `make setup` puts things and where tools hide from a minimal PATH (cron, sudo, ssh).
SBIN_DIRS = ("/usr/local/sbin", "/usr/sbin", "/sbin")


def check_iptables(path: str | None) -> CheckResult:
    if path:
        return CheckResult("iptables_restore", True, path)
    return CheckResult(
        "iptables_restore",
        False,
        "not found",
        problem="CRIU locks the container's network with iptables-restore during checkpoint "
        "and restore",
        fix="apt-get install iptables",
    )


def check_disk(name: str, path: Path | None, min_free: int, *, what: str) -> CheckResult:
    """Free space where ``path`` is (or would be created), warning below ``min_free``."""
    if path is None:
        return CheckResult(name, False, "unknown", problem=f"{what} is unknown", required=False)
    probe = staging_mod.nearest_existing(path)
    if probe is None:
        return CheckResult(
            name, False, "unknown", problem=f"cannot find {path} on this host", required=False
        )
    try:
        free = shutil.disk_usage(probe).free
    except OSError as e:
        return CheckResult(
            name, False, "unknown", problem=f"cannot measure {path}: {e}", required=False
        )
    value = f"{gib(free)} free ({path})"
    if free >= min_free:
        return CheckResult(name, True, value, required=False)
    return CheckResult(
        name,
        False,
        value,
        problem=f"less than {gib(min_free)} free on {what}: checkpoint images and the "
        "container's files are staged there",
        fix=f"free space on the filesystem holding {probe}",
        required=False,
    )


def check_kernel(release: str) -> CheckResult:
    # Informational: the kernel-specific limits are what the CRIU checks above test.
    return CheckResult("kernel", True, release or "unknown", required=False)


def check_memory_staging(tmpfs_free: int, available: int) -> CheckResult:
    """Whether checkpoint images can wait in memory here (staging.py): informational, disk is
    the fallback."""
    root = staging_mod.MEMORY_ROOT
    if tmpfs_free == 0:
        return CheckResult(
            "staging_memory",
            False,
            f"no tmpfs at {root}",
            problem="checkpoint images are staged on disk (slower, and the dump's time moves "
            "with the disk's load)",
            fix=f"mount a tmpfs at {root.parent} (or set MIGRATE_MEMORY_STAGING to one)",
            required=False,
        )
    fits = min(tmpfs_free, max(available - staging_mod.HOST_RESERVE, 0))
    return CheckResult(
        "staging_memory",
        True,
        f"images up to ~{gib(int(fits / staging_mod.GROWTH))} staged in memory ({root})",
        required=False,
    )


def find_tool(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for d in SBIN_DIRS:
        cand = os.path.join(d, name)
        if os.path.isfile(cand) and os.access(cand, os.X_OK):
            return cand
    return None
