"""`migrate check`: is this host ready to migrate containers, and if not, what to do.

Each check yields a :class:`CheckResult` carrying the problem and the fix. ``required`` checks
decide readiness; the others report what degrades (no post-copy, no iterative pre-copy, which
containers cannot be dumped here) without refusing anything.

The engine is reached through a callable returning :class:`EngineInfo` (or raising), given by
the caller (engines/select.py opens the engine), so the checks never see Docker's JSON and
tests can pass any answer. The checks themselves live by topic: criu_checks.py (CRIU and what
it needs of the host), host_checks.py (the engine and the tools), dest_checks.py (a
destination, through its agent); check_result.py holds the result types.
"""

from __future__ import annotations

import logging
import platform
import socket
from collections.abc import Callable
from pathlib import Path

from migrate.checkpoint import criu
from migrate.checkpoint import staging as staging_mod
from migrate.core.checks import CheckResult
from migrate.core.errors import EngineUnavailable, MigrateError
from migrate.core.journal import DEFAULT_DIR
from migrate.engines.base import EngineInfo, EngineReadiness
from migrate.source.check_result import CheckReport
from migrate.source.criu_checks import (
    MOUNTS,
    RUNC_CRIU_CONF,
    cap_eff,
    check_cap_sys_resource,
    check_cpuinfo,
    check_criu,
    check_criu_features,
    check_criu_kdat_cache,
    check_pipe_max_size,
    check_pycriu,
    check_runc_criu_conf,
    mount_fstype,
    pipe_max_size,
)
from migrate.source.host_checks import (
    MIN_FREE_BYTES,
    check_disk,
    check_iptables,
    check_kernel,
    check_memory_staging,
    find_tool,
)

log = logging.getLogger(__name__)

EngineInfoProvider = Callable[[], EngineInfo]


def run_checks(
    engine_info_provider: EngineInfoProvider,
    readiness: EngineReadiness,
    *,
    criu_binary: str | None = None,
    staging_dir: Path | None = None,
    min_free_bytes: int = MIN_FREE_BYTES,
) -> CheckReport:
    """Check this host. ``engine_info_provider``: this host's engine (its info, or raising);
    ``readiness``: how that engine judges it (engines/select.py);
    ``criu_binary`` to :func:`migrate.checkpoint.criu.find_criu`; ``staging_dir`` to the state
    directory's staging area (where checkpoints are written before they travel)."""
    binary = criu_binary or criu.find_criu()
    caps = criu.capabilities(binary)
    info, engine_error = _engine_info(engine_info_provider)
    staging = staging_dir or DEFAULT_DIR / "staging"

    results: list[CheckResult] = []
    results += check_criu(caps)
    results.append(check_pycriu(criu.pycriu_available()))
    results += check_criu_features(caps)
    caps_eff = cap_eff()
    results.append(check_pipe_max_size(pipe_max_size(), caps_eff))
    results.append(check_cap_sys_resource(caps_eff))
    results.append(check_cpuinfo(binary))
    results += readiness.rows(info, engine_error)
    results.append(readiness.runtime_row(find_tool("runc"), info))
    results.append(check_iptables(find_tool("iptables-restore")))
    results.append(check_runc_criu_conf(_read_text(RUNC_CRIU_CONF)))
    results.append(
        check_disk(
            "disk_data_root",
            Path(info.data_root) if info and info.data_root else None,
            min_free_bytes,
            what="the engine's data root",
        )
    )
    results.append(
        check_disk("disk_staging", staging, min_free_bytes, what="the staging directory")
    )
    results.append(
        check_memory_staging(
            staging_mod.tmpfs_free(staging_mod.MEMORY_ROOT), staging_mod.mem_available()
        )
    )
    results.append(check_kernel(platform.release()))
    results.append(check_criu_kdat_cache(mount_fstype(Path("/run"), _read_text(MOUNTS))))
    return CheckReport(tuple(results), host=socket.gethostname())


def _engine_info(
    provider: EngineInfoProvider,
) -> tuple[EngineInfo | None, MigrateError | None]:
    try:
        return provider(), None
    except MigrateError as e:
        return None, e
    except Exception as e:  # a check reports what went wrong, it does not crash
        log.debug("engine info failed", exc_info=True)
        return None, EngineUnavailable(f"cannot query the Docker daemon: {e}")


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None
