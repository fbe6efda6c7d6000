"""This host's engine and tools for `migrate check`: the Docker daemon (reachable,
experimental, overlay2, live-restore), runc, iptables-restore, free disk, memory staging."""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
from pathlib import Path

from migrate.checkpoint import staging as staging_mod
from migrate.core.errors import MigrateError
from migrate.engines.base import EngineInfo
from migrate.source.check_result import CheckResult, gib

log = logging.getLogger(__name__)

# Below this much free space a migration of anything but a small container is likely to fail
# part-way (checkpoint images and the RW layer are staged on disk on both sides).
MIN_FREE_BYTES = 1 << 30

TOOL_TIMEOUT_S = 10.0
# Where `make setup` puts things and where tools hide from a minimal PATH (cron, sudo, ssh).
SBIN_DIRS = ("/usr/local/sbin", "/usr/sbin", "/sbin")


def check_engine(info: EngineInfo | None, error: MigrateError | None) -> list[CheckResult]:
    """Reachable, experimental (checkpoints need it), storage driver overlay2."""
    if info is None:
        problem = error.message if error else "the Docker daemon did not answer"
        why = "unknown: the Docker daemon is not reachable"
        return [
            CheckResult(
                "docker",
                False,
                "unreachable",
                problem=problem,
                fix=(error.hint if error and error.hint else "")
                or "start dockerd (with --experimental), or point DOCKER_HOST at its socket",
            ),
            CheckResult("docker_experimental", False, "unknown", problem=why),
            CheckResult("storage_driver", False, "unknown", problem=why),
        ]
    rows = [
        CheckResult(
            "docker",
            True,
            f"{info.engine} {info.version} (API {info.api_version}, cgroup v{info.cgroup_version})"
            if info.cgroup_version
            else f"{info.engine} {info.version} (API {info.api_version})",
        )
    ]
    if info.checkpoint_enabled:
        rows.append(CheckResult("docker_experimental", True, "on"))
    else:
        rows.append(
            CheckResult(
                "docker_experimental",
                False,
                "off",
                problem="checkpoint/restore needs the daemon's experimental features",
                fix='add "experimental": true to /etc/docker/daemon.json and restart dockerd '
                "(or start it with --experimental)",
            )
        )
    if info.rootfs_supported:
        rows.append(CheckResult("storage_driver", True, info.storage_driver))
    else:
        rows.append(
            CheckResult(
                "storage_driver",
                False,
                info.storage_driver or "unknown",
                problem=f"storage driver {info.storage_driver!r} is not supported (overlay2 only "
                "for now: the container's read-write layer is taken from overlay2's upperdir)",
                fix='set "storage-driver": "overlay2" in /etc/docker/daemon.json and restart '
                "dockerd (images and containers of the old driver are not carried over)",
            )
        )
    if info.live_restore is not None:
        rows.append(check_live_restore(info.live_restore))
    return rows


def check_live_restore(on: bool) -> CheckResult:
    """Informational: without live-restore a restart of dockerd stops every container, so a
    container migrated here loses its memory to the next daemon restart (docs/fault-matrix.md,
    the dockerd row after `committed`). Migrations themselves do not need it."""
    if on:
        return CheckResult("live_restore", True, "on", required=False)
    return CheckResult(
        "live_restore",
        False,
        "off",
        problem="live-restore off: a dockerd restart stops every container here, migrated "
        "ones included",
        fix='add "live-restore": true to /etc/docker/daemon.json and reload dockerd '
        "(systemctl reload docker: no restart needed)",
        required=False,
    )


def check_runc(runc: str | None, info: EngineInfo | None) -> CheckResult:
    """runc takes the checkpoints (the engine calls it directly) and restores via Docker."""
    docker_side = f"; docker uses {info.runc_version}" if info and info.runc_version else ""
    if runc is None:
        return CheckResult(
            "runc",
            False,
            "not found" + docker_side,
            problem="runc not found: checkpoints are taken by running runc directly",
            fix="apt-get install runc (or put the runc Docker uses on PATH)",
        )
    version = _runc_version(runc)
    value = f"{version or 'unknown version'} ({runc}){docker_side}"
    if info is not None and info.runtime and info.runtime != "runc":
        return CheckResult(
            "runc",
            False,
            value,
            problem=f"Docker's default runtime is {info.runtime!r}: only runc is supported",
            fix='set "default-runtime": "runc" in /etc/docker/daemon.json and restart dockerd',
        )
    if version is None:
        return CheckResult(
            "runc",
            False,
            value,
            problem=f"`{runc} --version` failed",
            fix="reinstall runc (apt-get install --reinstall runc)",
        )
    return CheckResult("runc", True, value)


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


def _runc_version(runc: str) -> str | None:
    try:
        p = subprocess.run(
            [runc, "--version"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=TOOL_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        log.debug("%s --version: %s", runc, e)
        return None
    m = re.search(r"runc version (\S+)", p.stdout)
    return m.group(1) if p.returncode == 0 and m else None
