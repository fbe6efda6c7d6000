"""This host's CRIU for `migrate check`: present and new enough, its self-check, the optional
features (post-copy, dirty-memory tracking), the CPU dump, and what CRIU needs from the host
around it (pipe sizes, CAP_SYS_RESOURCE, runc.conf's file-locks, a kdat cache on tmpfs)."""

from __future__ import annotations

import tempfile
from pathlib import Path

from migrate.checkpoint import criu
from migrate.core.checks import CheckResult
from migrate.core.errors import MigrateError

# CRIU's page pipes are ~3.3 MB; without CAP_SYS_RESOURCE, F_SETPIPE_SZ above
# fs.pipe-max-size fails and CRIU 4.2.1's lazy-pages server then splices to an fd it never
# opened ("page-pipe: splice: -1: Bad file descriptor", PLATFORM.md).
MIN_PIPE_MAX_SIZE = 4 << 20
CAP_SYS_RESOURCE = 24  # bit number in /proc/<pid>/status CapEff (linux/capability.h)
PIPE_MAX_SIZE = Path("/proc/sys/fs/pipe-max-size")

SETUP_FIX = (
    "run `make setup` (scripts/setup.sh: builds CRIU 4.2 from Debian's source package and "
    "installs it as /usr/local/sbin/criu), or set MIGRATE_CRIU to a criu >= 4.2"
)


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
    # (check, whether there, its value when there, what is lost without it, the fix)
    features = (
        (
            "lazy_pages",
            caps.lazy_pages,
            "available (uffd-noncoop)",
            "no post-copy migration (--strategy lazy): `criu check --feature "
            "uffd-noncoop` fails (the kernel lacks non-cooperative userfaultfd)",
            "a kernel with CONFIG_USERFAULTFD=y; cold migration works without it",
        ),
        (
            "mem_dirty_track",
            caps.mem_dirty_track,
            "available",
            "no iterative pre-copy: the kernel does not track dirty memory "
            "(soft-dirty), so all memory is copied while the container is frozen",
            "a kernel with CONFIG_MEM_SOFT_DIRTY=y; nothing to do otherwise (cold and "
            "lazy migration work without it)",
        ),
    )
    return [
        CheckResult(name, True, value, required=False)
        if there
        else CheckResult(name, False, "unavailable", problem=lost, fix=fix, required=False)
        for name, there, value, lost, fix in features
    ]


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


def cap_eff(status: Path = Path("/proc/self/status")) -> int | None:
    """This process's effective capabilities (a bit mask), None when unreadable."""
    try:
        for line in status.read_text().splitlines():
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    except (OSError, ValueError, IndexError):
        pass
    return None


def pipe_max_size(path: Path = PIPE_MAX_SIZE) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None
