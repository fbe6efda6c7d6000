"""Is this Docker daemon ready for checkpoints and restores: the rows `migrate check` shows
for it (reachable, experimental, storage driver, live-restore, runc as its runtime), and the
refusals a migration starts with, each with the daemon.json change that fixes it."""

from __future__ import annotations

import logging
import re
import subprocess

from migrate.core.checks import CheckResult
from migrate.core.errors import EngineUnavailable, MigrateError, Unsupported
from migrate.engines.base import EngineInfo

log = logging.getLogger(__name__)

TOOL_TIMEOUT_S = 10.0
# The one storage driver whose read-write layer we can take (its upperdir) and fill.
ROOTFS_DRIVER = "overlay2"


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


class DockerReadiness:
    """engines/base.py's EngineReadiness for Docker daemons."""

    def rows(self, info: EngineInfo | None, error: MigrateError | None) -> list[CheckResult]:
        return check_engine(info, error)

    def remote_rows(self, info: EngineInfo | None, error: MigrateError | None) -> list[CheckResult]:
        if info is None:
            return [
                CheckResult(
                    "docker",
                    False,
                    "unreachable",
                    problem=(error.message if error else "") or "no answer",
                    fix=(error.hint if error else "")
                    or "start dockerd --experimental on the destination",
                )
            ]
        # The agent's hello carries fewer facts than our own info (no API version).
        rows = [CheckResult("docker", True, f"{info.engine} {info.version}")]
        return rows + [r for r in check_engine(info, None) if r.name != "docker"]

    def runtime_row(self, runtime: str | None, info: EngineInfo | None) -> CheckResult:
        return check_runc(runtime, info)


def refuse_unready(info: EngineInfo, *, destination: bool) -> None:
    """Refuse a migration this daemon cannot take part in: checkpoints need its experimental
    features; a destination must also store the container's files where we can write them."""
    if not info.checkpoint_enabled:
        if destination:
            raise EngineUnavailable(
                "the destination's Docker daemon is not running with experimental features",
                hint='add "experimental": true to /etc/docker/daemon.json on the destination '
                "(or start dockerd with --experimental) and restart it",
            )
        raise EngineUnavailable(
            "the source's Docker daemon is not running with experimental features",
            hint='add "experimental": true to /etc/docker/daemon.json and restart '
            "dockerd (or start it with --experimental)",
        )
    if destination and not info.rootfs_supported:
        raise Unsupported(
            f"the destination uses the {info.storage_driver!r} storage driver",
            hint="migrate supports overlay2 only",
        )


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
