"""`migrate check`: is this host ready to migrate containers, and if not, what to do.

Each check yields a :class:`CheckResult` carrying the problem and the fix. ``required`` checks
decide readiness; the others report what degrades (no post-copy, no iterative pre-copy, which
containers cannot be dumped here) without refusing anything.

The engine is reached through a callable returning :class:`EngineInfo` (or raising), given by
the caller (engines/select.py opens the engine), so the checks never see Docker's JSON and
tests can pass any answer.
"""

from __future__ import annotations

import base64
import logging
import os
import platform
import re
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from migrate import __version__
from migrate.checkpoint import criu
from migrate.checkpoint import staging as staging_mod
from migrate.core.errors import EngineUnavailable, MigrateError
from migrate.core.journal import DEFAULT_DIR
from migrate.engines.base import EngineInfo

log = logging.getLogger(__name__)

EngineInfoProvider = Callable[[], EngineInfo]

# Below this much free space a migration of anything but a small container is likely to fail
# part-way (checkpoint images and the RW layer are staged on disk on both sides).
MIN_FREE_BYTES = 1 << 30
# CRIU's page pipes are ~3.3 MB; without CAP_SYS_RESOURCE, F_SETPIPE_SZ above
# fs.pipe-max-size fails and CRIU 4.2.1's lazy-pages server then splices to an fd it never
# opened ("page-pipe: splice: -1: Bad file descriptor", PLATFORM.md).
MIN_PIPE_MAX_SIZE = 4 << 20
CAP_SYS_RESOURCE = 24  # bit number in /proc/<pid>/status CapEff (linux/capability.h)

TOOL_TIMEOUT_S = 10.0
# Where `make setup` puts things and where tools hide from a minimal PATH (cron, sudo, ssh).
SBIN_DIRS = ("/usr/local/sbin", "/usr/sbin", "/sbin")

SETUP_FIX = (
    "run `make setup` (scripts/setup.sh: builds CRIU 4.2 from Debian's source package and "
    "installs it as /usr/local/sbin/criu), or set MIGRATE_CRIU to a criu >= 4.2"
)


@dataclass(frozen=True)
class CheckResult:
    name: str  # stable identifier (JSON consumers and tests rely on it)
    ok: bool
    value: str  # what was found
    problem: str = ""  # why it is not ok ("" when ok)
    fix: str = ""  # what to do about it
    required: bool = True  # False: a warning, readiness does not depend on it

    @property
    def status(self) -> str:
        """ "ok", "fail" (required and not ok) or "warn" (not required and not ok)."""
        if self.ok:
            return "ok"
        return "fail" if self.required else "warn"

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "ok": self.ok,
            "status": self.status,
            "required": self.required,
            "value": self.value,
            "problem": self.problem,
            "fix": self.fix,
        }


@dataclass(frozen=True)
class CheckReport:
    results: tuple[CheckResult, ...]
    host: str = ""

    @property
    def ready(self) -> bool:
        """Every required check passed."""
        return all(r.ok for r in self.results if r.required)

    @property
    def failures(self) -> tuple[CheckResult, ...]:
        return tuple(r for r in self.results if r.status == "fail")

    @property
    def warnings(self) -> tuple[CheckResult, ...]:
        return tuple(r for r in self.results if r.status == "warn")

    def get(self, name: str) -> CheckResult | None:
        return next((r for r in self.results if r.name == name), None)

    def to_json(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "ready": self.ready,
            "checks": [r.to_json() for r in self.results],
        }


def run_checks(
    engine_info_provider: EngineInfoProvider,
    *,
    criu_binary: str | None = None,
    staging_dir: Path | None = None,
    min_free_bytes: int = MIN_FREE_BYTES,
) -> CheckReport:
    """Check this host. ``engine_info_provider``: this host's engine (its info, or raising);
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
    caps_eff = _cap_eff()
    results.append(check_pipe_max_size(_read_int(Path("/proc/sys/fs/pipe-max-size")), caps_eff))
    results.append(check_cap_sys_resource(caps_eff))
    results.append(check_cpuinfo(binary))
    results += check_engine(info, engine_error)
    results.append(check_runc(_find_tool("runc"), info))
    results.append(check_iptables(_find_tool("iptables-restore")))
    results.append(check_runc_criu_conf(_read_text(RUNC_CRIU_CONF)))
    results.append(
        check_disk(
            "disk_data_root",
            Path(info.data_root) if info and info.data_root else None,
            min_free_bytes,
            what="the Docker data root",
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
        f"images up to ~{_gib(int(fits / staging_mod.GROWTH))} staged in memory ({root})",
        required=False,
    )


def check_destination(conn: Any) -> CheckReport:
    """The destination's readiness, asked of its agent over ``conn`` (a protocol Connection):
    its handshake (CRIU, Docker, disk) and whether a checkpoint taken here restores on its CPU.
    """
    from migrate.wire.messages import MIN_PROTOCOL_VERSION, PROTOCOL_VERSION

    hello = conn.call(
        "hello",
        protocol=PROTOCOL_VERSION,
        min_protocol=MIN_PROTOCOL_VERSION,
        software=__version__,
        faults=[],
    )
    local = criu.capabilities(criu.find_criu(), probe_features=False)
    cpu: dict[str, Any] | None = None
    if local.path is not None:
        try:
            image = criu.cpuinfo_image(local.path)
        except MigrateError:
            cpu = None  # this host's own check reports its CRIU problem
        else:
            cpu = conn.call("cpuinfo_check", image_b64=base64.b64encode(image).decode())
    from migrate.wire.bulk import attach_bulk

    rows = destination_results(hello, cpu, local.version)
    # The streams' fast path: does the OpenSSH bulk connection come up (`--bulk auto`)?
    methods = frozenset(m for m in hello.get("methods") or [] if isinstance(m, str))
    bulk = bulk_result(attach_bulk(conn, "auto", methods).note, conn.bulk is not None)
    if bulk is not None:
        rows.append(bulk)
    return CheckReport(tuple(rows), host=str(hello.get("hostname") or ""))


def bulk_result(note: str, up: bool) -> CheckResult | None:
    """The `bulk` row: whether streams will go through OpenSSH (a warning when they fall back
    to paramiko: slower, still correct); None for transports without SSH."""
    if up:
        return CheckResult("bulk", True, "streams through OpenSSH (ssh)", required=False)
    if not note:
        return None  # local://
    return CheckResult(
        "bulk",
        False,
        "streams over paramiko (slower)",
        problem=note,
        fix="install the OpenSSH client (`ssh`) and make the same key log in "
        "non-interactively (BatchMode); `migrate run` falls back to paramiko meanwhile",
        required=False,
    )


def destination_results(
    hello: Mapping[str, Any],
    cpu: Mapping[str, Any] | None,
    local_criu: tuple[int, int, int] | None,
) -> list[CheckResult]:
    """Rows for the destination from its agent's answers (pure, for unit tests)."""
    rows = [
        CheckResult(
            "agent",
            True,
            f"migrate {hello.get('software')}, "
            f"protocol {hello.get('protocol')}, kernel {hello.get('kernel')}",
        )
    ]
    version = hello.get("criu_version")
    theirs = tuple(version) if isinstance(version, list) and len(version) == 3 else None
    need = "{}.{}".format(*criu.MIN_CRIU[:2])
    fix = "run `make setup` on the destination (it builds CRIU >= " + need + ")"
    if theirs is None:
        rows.append(CheckResult("criu", False, "not found", problem="no usable criu", fix=fix))
    elif theirs < criu.MIN_CRIU:
        rows.append(
            CheckResult(
                "criu",
                False,
                criu.format_version(theirs),
                problem=f"CRIU >= {need} is needed",
                fix=fix,
            )
        )
    elif local_criu is not None and theirs < local_criu:
        rows.append(
            CheckResult(
                "criu",
                False,
                criu.format_version(theirs),
                problem=f"older than this host's {criu.format_version(local_criu)}: it may not "
                "read this host's checkpoint images",
                fix="install the same CRIU on both hosts (`make setup`)",
            )
        )
    else:
        rows.append(CheckResult("criu", True, criu.format_version(theirs)))
    rows.append(
        CheckResult(
            "criu_check",
            bool(hello.get("criu_ok")),
            "passed" if hello.get("criu_ok") else "failed",
            problem="" if hello.get("criu_ok") else "`criu check` fails on the destination",
            fix=""
            if hello.get("criu_ok")
            else "run `migrate check` on the destination for details",
        )
    )
    engine = hello.get("engine")
    if isinstance(engine, Mapping):
        info = EngineInfo(
            engine=str(engine.get("engine") or "docker"),
            version=str(engine.get("version") or ""),
            api_version="",
            # The hello's key predates the neutral name: Docker's experimental mode.
            checkpoint_enabled=bool(engine.get("experimental")),
            storage_driver=str(engine.get("storage_driver") or ""),
            rootfs_supported=_rootfs_supported(engine),
            data_root="",
            runtime="",
            runc_version="",
            cgroup_version="",
            kernel="",
            os="",
            mem_total=int(engine.get("mem_total") or 0),
            host_name="",
            live_restore=lr if isinstance(lr := engine.get("live_restore"), bool) else None,
        )
        rows.append(CheckResult("docker", True, f"{info.engine} {info.version}"))
        rows += [r for r in check_engine(info, None) if r.name != "docker"]
    else:
        found = hello.get("engine_error")
        err: Mapping[str, Any] = found if isinstance(found, Mapping) else {}
        rows.append(
            CheckResult(
                "docker",
                False,
                "unreachable",
                problem=str(err.get("message") or "no answer"),
                fix=str(err.get("hint") or "start dockerd --experimental on the destination"),
            )
        )
    free = hello.get("free_disk")
    if isinstance(free, int):
        value = f"{_gib(free)} free (Docker's data root)"
        rows.append(
            CheckResult(
                "disk_data_root",
                free >= MIN_FREE_BYTES,
                value,
                required=False,
                problem=""
                if free >= MIN_FREE_BYTES
                else f"less than {_gib(MIN_FREE_BYTES)} free: "
                "image layers, the container's files and checkpoint images land there",
                fix="" if free >= MIN_FREE_BYTES else "free space on the destination",
            )
        )
    if cpu is not None:
        ok = bool(cpu.get("ok"))
        rows.append(
            CheckResult(
                "cpu",
                ok,
                "compatible" if ok else "incompatible",
                problem=""
                if ok
                else "a checkpoint taken here would not restore there (CPU "
                "features missing): " + str(cpu.get("output") or ""),
                fix="" if ok else "migrate between hosts with the same CPU features",
            )
        )
    return rows


# --- CRIU ------------------------------------------------------------------------------------


def check_criu(caps: criu.CriuCapabilities) -> list[CheckResult]:
    """The `criu` row (present, new enough) and the `criu_check` row (self-check passes)."""
    need = "{}.{}".format(*criu.MIN_CRIU[:2])
    if caps.path is None:
        return [
            CheckResult(
                "criu",
                False,
                "not found",
                problem=f"criu not found (looked at ${criu.ENV_CRIU}, PATH, "
                + ", ".join(criu.SEARCH_DIRS)
                + f"); CRIU >= {need} is needed",
                fix=SETUP_FIX,
            ),
            CheckResult("criu_check", False, "not run", problem="criu not found", fix=SETUP_FIX),
        ]
    have = criu.format_version(caps.version)
    if caps.version is None:
        row = CheckResult(
            "criu",
            False,
            f"unknown version ({caps.path})",
            problem=f"`{caps.path} --version` did not say which version it is",
            fix=SETUP_FIX,
        )
    elif not caps.version_ok:
        row = CheckResult(
            "criu",
            False,
            f"{have} ({caps.path})",
            problem=f"criu {have} is too old: {need} or newer is needed (3.17 fails on kernels "
            ">= 6.13, 4.1 cannot dump inet sockets on kernels >= 6.16)",
            fix=SETUP_FIX,
        )
    else:
        row = CheckResult("criu", True, f"{have} ({caps.path})")
    how = "criu swrk via pycriu" if caps.check_method == "pycriu" else "`criu check`"
    if caps.check_ok:
        chk = CheckResult("criu_check", True, f"passed ({how})")
    else:
        chk = CheckResult(
            "criu_check",
            False,
            f"failed ({how})",
            problem=caps.check_output or "criu check failed",
            fix=f"run `{caps.path} check` for details; " + SETUP_FIX,
        )
    return [row, chk]


def check_pycriu(available: bool) -> CheckResult:
    if available:
        return CheckResult("pycriu", True, "installed", required=False)
    return CheckResult(
        "pycriu",
        False,
        "not installed",
        problem="pycriu is missing: the self-check falls back to `criu check`, and CRIU "
        "images cannot be read (inspect, diagnostics)",
        fix="run `make setup` (installs pycriu from CRIU's source tree into the venv)",
        required=False,
    )


def check_criu_features(caps: criu.CriuCapabilities) -> list[CheckResult]:
    """Optional CRIU/kernel features: what is lost without them; never required."""
    if caps.path is None:
        return [
            CheckResult(n, False, "unknown", problem="criu not found", required=False)
            for n in ("lazy_pages", "mem_dirty_track")
        ]
    rows = []
    if caps.lazy_pages:
        rows.append(CheckResult("lazy_pages", True, "available (uffd-noncoop)", required=False))
    else:
        rows.append(
            CheckResult(
                "lazy_pages",
                False,
                "unavailable",
                problem="no post-copy migration (--strategy lazy): `criu check --feature "
                "uffd-noncoop` fails (the kernel lacks non-cooperative userfaultfd)",
                fix="a kernel with CONFIG_USERFAULTFD=y; cold migration works without it",
                required=False,
            )
        )
    if caps.mem_dirty_track:
        rows.append(CheckResult("mem_dirty_track", True, "available", required=False))
    else:
        rows.append(
            CheckResult(
                "mem_dirty_track",
                False,
                "unavailable",
                problem="no iterative pre-copy: the kernel does not track dirty memory "
                "(soft-dirty), so all memory is copied while the container is frozen",
                fix="a kernel with CONFIG_MEM_SOFT_DIRTY=y; nothing to do otherwise (cold and "
                "lazy migration work without it)",
                required=False,
            )
        )
    return rows


def check_cpuinfo(binary: str | None) -> CheckResult:
    """`criu cpuinfo dump` + `check` work here: the base of the host-to-host CPU check."""
    if binary is None:
        return CheckResult("cpuinfo", False, "not run", problem="criu not found", required=False)
    try:
        with tempfile.TemporaryDirectory(prefix="migrate-check-") as d:
            criu.cpuinfo_dump(Path(d), binary)
            res = criu.cpuinfo_check(Path(d), binary)
    except MigrateError as e:
        return CheckResult(
            "cpuinfo",
            False,
            "failed",
            problem=e.message,
            fix="CPU compatibility with the destination cannot be verified before restore",
            required=False,
        )
    if not res.ok:
        return CheckResult("cpuinfo", False, "failed", problem=res.output, required=False)
    return CheckResult("cpuinfo", True, "dump/check work (compare hosts with --to)", required=False)


def check_pipe_max_size(value: int | None, cap_eff: int | None) -> CheckResult:
    shown = "unknown" if value is None else str(value)
    if value is not None and value >= MIN_PIPE_MAX_SIZE:
        return CheckResult("pipe_max_size", True, shown, required=False)
    if cap_eff is not None and cap_eff >> CAP_SYS_RESOURCE & 1:
        # CAP_SYS_RESOURCE lifts the limit for CRIU.
        return CheckResult("pipe_max_size", True, f"{shown} (CAP_SYS_RESOURCE)", required=False)
    return CheckResult(
        "pipe_max_size",
        False,
        shown,
        problem=f"lazy pages (post-copy) need fs.pipe-max-size >= {MIN_PIPE_MAX_SIZE} without "
        'CAP_SYS_RESOURCE: CRIU\'s page server fails with "splice: Bad file descriptor"',
        fix=f"echo {MIN_PIPE_MAX_SIZE} > /proc/sys/fs/pipe-max-size "
        "(persist it with fs.pipe-max-size in /etc/sysctl.d/)",
        required=False,
    )


def check_cap_sys_resource(cap_eff: int | None) -> CheckResult:
    if cap_eff is None:
        return CheckResult(
            "cap_sys_resource", False, "unknown", problem="cannot read CapEff", required=False
        )
    if cap_eff >> CAP_SYS_RESOURCE & 1:
        return CheckResult("cap_sys_resource", True, "present", required=False)
    return CheckResult(
        "cap_sys_resource",
        False,
        "missing",
        problem="without CAP_SYS_RESOURCE CRIU cannot read the rlimits of processes running as "
        'another user ("Can\'t get rlimit: Operation not permitted"): containers with non-root '
        "processes (PostgreSQL, nginx workers as www-data) cannot be checkpointed here",
        fix="run migrate as root with full capabilities (not in a restricted sandbox); until "
        "then only containers whose processes all run as root can migrate",
        required=False,
    )


# --- engine ----------------------------------------------------------------------------------


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


RUNC_CRIU_CONF = Path("/etc/criu/runc.conf")


def check_runc_criu_conf(text: str | None) -> CheckResult:
    """runc passes this file's options to CRIU on restore. Docker cannot ask for file locks
    there, and without `file-locks` CRIU restores a container with its flock/fcntl locks
    silently dropped (the dump side asks for them itself)."""
    lines = {ln.strip() for ln in (text or "").splitlines()}
    if "file-locks" in lines or "--file-locks" in lines:
        return CheckResult("criu_file_locks", True, str(RUNC_CRIU_CONF), required=False)
    return CheckResult(
        "criu_file_locks",
        False,
        "missing" if text is None else "no file-locks line",
        problem="restored containers lose their file locks (flock, fcntl): CRIU restores "
        f"them only when asked, and runc asks only through {RUNC_CRIU_CONF}",
        fix=f"echo file-locks >> {RUNC_CRIU_CONF} (make setup does it)",
        required=False,
    )


MOUNTS = Path("/proc/self/mounts")


def mount_fstype(path: Path, mounts: str | None) -> str | None:
    """File system type of the mount holding ``path`` (the longest mount point above it in a
    /proc/mounts text), None when unknown."""
    best, fstype = "", None
    for line in (mounts or "").splitlines():
        f = line.split()
        if len(f) < 3:
            continue
        mnt = f[1].replace("\\040", " ")
        inside = str(path) == mnt or str(path).startswith(mnt.rstrip("/") + "/")
        if inside and len(mnt) >= len(best):  # later lines mount over earlier ones
            best, fstype = mnt, f[2]
    return fstype


def check_criu_kdat_cache(run_fstype: str | None) -> CheckResult:
    """CRIU keeps what it probes about the kernel in /run/criu.kdat, and only on a tmpfs.
    Elsewhere every CRIU run probes again: 25-35 ms each, and a lazy migration starts four
    of them inside its downtime (benchmarks/results/lazy-floor.md). Informational."""
    if run_fstype == "tmpfs":
        return CheckResult("criu_kdat_cache", True, "/run is tmpfs", required=False)
    return CheckResult(
        "criu_kdat_cache",
        False,
        f"/run is {run_fstype or 'not a mount of its own'}",
        problem="CRIU cannot cache its kernel probe (/run/criu.kdat needs a tmpfs): every "
        "dump and restore probes again, ~25-35 ms each inside the downtime",
        fix="mount /run as a tmpfs (the usual setup; a boot-time choice of the host)",
        required=False,
    )


# --- host ------------------------------------------------------------------------------------


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
    value = f"{_gib(free)} free ({path})"
    if free >= min_free:
        return CheckResult(name, True, value, required=False)
    return CheckResult(
        name,
        False,
        value,
        problem=f"less than {_gib(min_free)} free on {what}: checkpoint images and the "
        "container's files are staged there",
        fix=f"free space on the filesystem holding {probe}",
        required=False,
    )


def check_kernel(release: str) -> CheckResult:
    # Informational: the kernel-specific limits are what the CRIU checks above test.
    return CheckResult("kernel", True, release or "unknown", required=False)


# --- helpers ---------------------------------------------------------------------------------


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


def _rootfs_supported(engine: Mapping[str, Any]) -> bool:
    """Whether the destination's engine can hand over a container's read-write layer. The
    hello names the storage driver only, and its shape is fixed (wire/session.py refuses
    unknown fields, so a new one would break older sources): overlay2 is the one the agent
    takes (DockerEngine.info derives the same)."""
    return engine.get("storage_driver") == "overlay2"


def _find_tool(name: str) -> str | None:
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


def _cap_eff(status: Path = Path("/proc/self/status")) -> int | None:
    try:
        for line in status.read_text().splitlines():
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    except (OSError, ValueError, IndexError):
        pass
    return None


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _gib(n: int) -> str:
    return f"{n / (1 << 30):.1f} GiB"


def summarize(results: Iterable[CheckResult]) -> str:
    """One line: how many checks failed / warned."""
    rs = list(results)
    fails = sum(r.status == "fail" for r in rs)
    warns = sum(r.status == "warn" for r in rs)
    if fails:
        return f"not ready: {fails} required check(s) failed, {warns} warning(s)"
    return f"ready ({warns} warning(s))" if warns else "ready"
