"""CRIU on this host: where it is, which version, whether it works, what it supports.

Also the CPU-compatibility images (``criu cpuinfo dump/check``) that tell whether a checkpoint
taken here can be restored on another host, and the log-tail helper that every CRIU error
attaches to its message.

The self-check goes through ``criu swrk`` with pycriu, the same RPC path runc uses for dumps
and restores, so a pass here means the path we depend on works; the plain ``criu check``
command is the fallback and the source of human-readable text.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import socket
import struct
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from migrate.core.errors import CriuUnavailable

log = logging.getLogger(__name__)

# 4.2 is the first CRIU that works on the kernels we target (PLATFORM.md):
# 3.17 fails `criu check` on kernels >= 6.13 ("Unexpected rt vDSO area bounds": [vvar] was
# split into [vvar] and [vvar_vclock]); 4.1 passes the check but cannot dump any process with
# an inet socket on kernels >= 6.16 (they refuse SO_PASSCRED/SO_PASSSEC on non-unix sockets).
MIN_CRIU: tuple[int, int, int] = (4, 2, 0)

ENV_CRIU = "MIGRATE_CRIU"
# Searched after PATH: cron, sudo and ssh sessions often run with a PATH lacking the sbin dirs.
# /usr/local/sbin first: that is where `make setup` installs the CRIU it builds.
SEARCH_DIRS: tuple[str, ...] = ("/usr/local/sbin", "/usr/sbin")

VERSION_TIMEOUT_S = 10.0
# `criu check` takes ~60 ms here; the margin covers loaded hosts, not expected runs.
CHECK_TIMEOUT_S = 30.0
FEATURE_TIMEOUT_S = 15.0
CPUINFO_TIMEOUT_S = 30.0

CPUINFO_IMAGE = "cpuinfo.img"

# Our name -> the name `criu check --feature` knows it by.
FEATURES: Mapping[str, str] = MappingProxyType(
    {
        # Post-copy (lazy pages) needs non-cooperative userfaultfd.
        "lazy_pages": "uffd-noncoop",
        # Soft-dirty tracking: without it there is no memory pre-dump, so no iterative
        # pre-copy; the freeze has to move all memory at once.
        "mem_dirty_track": "mem_dirty_track",
        # Lets CRIU lock the network with nftables instead of iptables-restore.
        "network_lock_nftables": "network_lock_nftables",
    }
)

# Bytes of a CRIU log read by log_tail: dump logs at high verbosity reach hundreds of MB, and
# the lines that explain a failure are near the end.
_LOG_TAIL_BYTES = 1 << 20
# Logged by every CRIU run in a sandbox without CAP_SYS_RESOURCE, and harmless (PLATFORM.md):
# keeping it out of the picked error lines leaves room for the one that matters.
_HARMLESS = ("RLIMIT_NOFILE",)

_VERSION_RE = re.compile(r"^\s*Version:\s*(\d+)\.(\d+)(?:\.(\d+))?", re.MULTILINE)


# --- finding and versioning ------------------------------------------------------------------


def find_criu() -> str | None:
    """Path of the criu binary to use, or None.

    ``$MIGRATE_CRIU`` wins when set (a path or a command name); if it names nothing runnable
    the answer is None rather than some other criu, so a wrong override is noticed.
    Otherwise PATH in order (a test can put a fake criu first), then the sbin directories.
    """
    override = os.environ.get(ENV_CRIU, "").strip()
    if override:
        found = shutil.which(override)
        if found is None:
            log.warning("%s=%s is not an executable; treating CRIU as absent", ENV_CRIU, override)
        return found
    found = shutil.which("criu")
    if found:
        return found
    for d in SEARCH_DIRS:
        cand = os.path.join(d, "criu")
        if os.path.isfile(cand) and os.access(cand, os.X_OK):
            return cand
    return None


def parse_version(text: str) -> tuple[int, int, int] | None:
    """The version in ``criu --version`` output ("Version: 4.2.1", "Version: 3.17", ...).

    CRIU omits the sublevel when it is 0; a "GitID:" line may follow and is ignored.
    """
    m = _VERSION_RE.search(text)
    if m is None:
        return None
    return (int(m.group(1)), int(m.group(2)), int(m.group(3) or 0))


def format_version(version: Sequence[int] | None) -> str:
    return ".".join(str(x) for x in version) if version else "unknown"


def criu_version(binary: str) -> tuple[int, int, int] | None:
    """Version of the criu at ``binary``, or None when it does not run or says nothing usable."""
    res = _run([binary, "--version"], VERSION_TIMEOUT_S)
    if res is None:
        return None
    v = parse_version(res.output)
    if v is None:
        log.debug("%s --version said %r", binary, res.output[-200:])
    return v


# --- capabilities ----------------------------------------------------------------------------


@dataclass(frozen=True)
class CriuCapabilities:
    path: str | None  # None: no criu found
    version: tuple[int, int, int] | None
    check_ok: bool
    check_output: str  # tail of what the self-check said (the reason, when it failed)
    check_method: str = ""  # "pycriu" (criu swrk RPC) | "criu check" | "" (not run)
    # Our feature names (see FEATURES) -> supported; read-only.
    features: Mapping[str, bool] = field(default_factory=lambda: MappingProxyType({}), hash=False)

    @property
    def found(self) -> bool:
        return self.path is not None

    @property
    def version_ok(self) -> bool:
        return self.version is not None and self.version >= MIN_CRIU

    @property
    def usable(self) -> bool:
        """Found, new enough and passing its self-check."""
        return self.found and self.version_ok and self.check_ok

    @property
    def lazy_pages(self) -> bool:
        return bool(self.features.get("lazy_pages", False))

    @property
    def mem_dirty_track(self) -> bool:
        return bool(self.features.get("mem_dirty_track", False))

    def to_wire(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "version": list(self.version) if self.version else None,
            "check_ok": self.check_ok,
            "check_output": self.check_output,
            "check_method": self.check_method,
            "features": dict(self.features),
        }


def capabilities(binary: str | None, *, probe_features: bool = True) -> CriuCapabilities:
    """What the criu at ``binary`` is and can do (``binary`` as returned by find_criu).

    Never raises for a broken or missing criu: that is what the answer reports.
    ``probe_features=False`` skips the per-feature runs (~40 ms each) for callers that only
    need the version and the self-check verdict.
    """
    if binary is None:
        return CriuCapabilities(
            path=None, version=None, check_ok=False, check_output="criu not found"
        )
    version = criu_version(binary)
    ok, output, method = self_check(binary)
    feats: dict[str, bool] = {}
    if probe_features:
        feats = {ours: feature_supported(binary, theirs) for ours, theirs in FEATURES.items()}
    return CriuCapabilities(
        path=binary,
        version=version,
        check_ok=ok,
        check_output=output,
        check_method=method,
        features=MappingProxyType(feats),
    )


def self_check(binary: str, timeout: float = CHECK_TIMEOUT_S) -> tuple[bool, str, str]:
    """Run CRIU's self-check: (passed, output tail, method).

    Through pycriu when it is installed; the plain command otherwise. When the RPC check
    fails, the plain command's output is appended because it explains itself better.
    """
    try:
        ok, text = _pycriu_check(binary, timeout)
    except ImportError:
        log.debug("pycriu not installed; running `criu check`")
    else:
        if ok:
            return True, text, "pycriu"
        cli = _run([binary, "check"], timeout)
        if cli is not None and cli.output.strip():
            text = f"{text}\n`criu check`: {text_tail(cli.output, 20)}".strip()
        return False, text, "pycriu"
    cli = _run([binary, "check"], timeout)
    if cli is None:
        return False, f"{binary} check did not run (see the debug log)", "criu check"
    return cli.returncode == 0, text_tail(cli.output, 20), "criu check"


def pycriu_available() -> bool:
    try:
        import pycriu  # noqa: F401
    except ImportError:
        return False
    return True


def _pycriu_check(binary: str, timeout: float) -> tuple[bool, str]:
    """CHECK over ``criu swrk`` with pycriu.

    We start swrk ourselves and hand pycriu the socket (``use_fd``) instead of
    ``use_binary``: pycriu's own fork has no timeout, leaves a zombie when the request fails,
    and if the exec fails the forked child goes on running *our* program. Raises ImportError
    when pycriu is not installed.
    """
    import pycriu

    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    # pycriu dups the fd and blocks on it without a timeout; SO_RCVTIMEO/SO_SNDTIMEO live on
    # the socket itself, so they bound its calls as well.
    tv = struct.pack("ll", int(timeout), int((timeout % 1) * 1_000_000))
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, tv)
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, tv)
    # A file, not a pipe: nothing has to drain it while we wait on the socket.
    with tempfile.TemporaryFile() as out, ours:
        try:
            with theirs:
                proc = subprocess.Popen(
                    [binary, "swrk", str(theirs.fileno())],
                    pass_fds=(theirs.fileno(),),
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
        except OSError as e:
            return False, f"cannot run {binary} swrk: {e}"
        try:
            c = pycriu.criu()
            c.use_fd(ours.fileno())
            c.opts.log_to_stderr = True  # CRIU's reasons then land in `out`
            try:
                c.check()
                ok, why = True, ""
            except pycriu.CRIUException as e:
                ok, why = False, str(e)
        finally:
            ours.close()  # swrk serves until its socket closes
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
                ok, why = False, f"criu swrk did not finish within {timeout:g} s"
        out.seek(0)
        said = text_tail(out.read(_LOG_TAIL_BYTES).decode(errors="replace"), 20)
    if ok:
        return True, said or "Looks good."
    return False, "\n".join(x for x in (why, said) if x)


def feature_supported(binary: str, feature: str, timeout: float = FEATURE_TIMEOUT_S) -> bool:
    """``criu check --feature FEATURE`` (CRIU's own feature name, e.g. "uffd-noncoop")."""
    res = _run([binary, "check", "--feature", feature], timeout)
    ok = res is not None and res.returncode == 0
    if not ok and res is not None:
        log.debug("criu feature %s unsupported: %s", feature, res.output.strip()[-300:])
    return ok


# --- CPU compatibility -----------------------------------------------------------------------


@dataclass(frozen=True)
class CpuinfoCheck:
    ok: bool
    output: str  # CRIU's explanation (tail) when not ok


def cpuinfo_dump(image_dir: Path, binary: str | None = None) -> Path:
    """Write this host's CPU description (``cpuinfo.img``) into ``image_dir``; return its path.

    Raises CriuUnavailable when CRIU is missing or cannot do it.
    """
    crit = _require(binary)
    image_dir.mkdir(parents=True, exist_ok=True)
    res = _run([crit, "cpuinfo", "dump", "-D", str(image_dir)], CPUINFO_TIMEOUT_S)
    img = image_dir / CPUINFO_IMAGE
    if res is None or res.returncode != 0 or not img.is_file():
        said = text_tail(res.output, 20) if res is not None else "did not run or timed out"
        raise CriuUnavailable(
            f"`criu cpuinfo dump` failed: {said}",
            hint="run `migrate check` and apply its fixes",
            details={"criu_log": said},
        )
    return img


def cpuinfo_check(image_dir: Path, binary: str | None = None) -> CpuinfoCheck:
    """Can a checkpoint whose ``cpuinfo.img`` is in ``image_dir`` be restored on this host?

    Uses CRIU's default CPU capability set, the same one a restore checks against, so the
    answer matches what ``docker start --checkpoint`` will do. Raises CriuUnavailable when
    CRIU is missing or does not run at all.
    """
    crit = _require(binary)
    if not (image_dir / CPUINFO_IMAGE).is_file():
        return CpuinfoCheck(False, f"no {CPUINFO_IMAGE} in {image_dir}")
    res = _run([crit, "cpuinfo", "check", "-D", str(image_dir)], CPUINFO_TIMEOUT_S)
    if res is None:
        raise CriuUnavailable(
            "`criu cpuinfo check` did not run or timed out",
            hint="run `migrate check` and apply its fixes",
        )
    if res.returncode == 0:
        return CpuinfoCheck(True, "")
    return CpuinfoCheck(False, text_tail(res.output, 20) or f"exit status {res.returncode}")


def cpuinfo_image(binary: str | None = None) -> bytes:
    """This host's ``cpuinfo.img`` as bytes: what a handshake sends to the other side."""
    with tempfile.TemporaryDirectory(prefix="migrate-cpuinfo-") as d:
        return cpuinfo_dump(Path(d), binary).read_bytes()


def cpuinfo_compatible(image: bytes, binary: str | None = None) -> CpuinfoCheck:
    """cpuinfo_check for an image received as bytes (from cpuinfo_image on another host)."""
    with tempfile.TemporaryDirectory(prefix="migrate-cpuinfo-") as d:
        (Path(d) / CPUINFO_IMAGE).write_bytes(image)
        return cpuinfo_check(Path(d), binary)


def _require(binary: str | None) -> str:
    crit = binary or find_criu()
    if crit is None:
        raise CriuUnavailable(
            "criu not found",
            hint="run `make setup` (it builds CRIU >= 4.2), or set MIGRATE_CRIU to its path",
        )
    return crit


# --- logs ------------------------------------------------------------------------------------


ENV_KEEP_LOGS = "MIGRATE_KEEP_CRIU_LOGS"


def keep_logs(src: Path, tag: str) -> Path | None:
    """With $MIGRATE_KEEP_CRIU_LOGS set to a directory: copy the CRIU logs (``*.log``) of
    ``src`` to DIR/TAG before their directory is deleted, with ``btime.json`` giving each
    log's birth time (CRIU stamps its lines with seconds since its own start: this places
    them on the wall clock; benchmarks/lazy_floor.py reads both). A debugging aid for where
    the downtime goes; off by default, and never an error."""
    root = os.environ.get(ENV_KEEP_LOGS, "").strip()
    if not root:
        return None
    out = Path(root) / tag
    births: dict[str, float] = {}
    try:
        out.mkdir(parents=True, exist_ok=True)
        for f in sorted(src.glob("*.log")):
            births[f.name] = _btime(f)
            shutil.copyfile(f, out / f.name)
        (out / "btime.json").write_text(json.dumps(births, indent=1))
    except OSError as e:
        log.warning("could not keep the CRIU logs of %s in %s: %s", src, out, e)
        return None
    return out


def _btime(path: Path) -> float:
    """A file's birth time (statx, through stat(1)); 0.0 where the file system keeps none."""
    p = subprocess.run(
        ["stat", "-c", "%.9W", str(path)], capture_output=True, text=True, check=False, timeout=10
    )
    try:
        return float(p.stdout.strip() or 0)
    except ValueError:
        return 0.0


def log_tail(path: Path | str, lines: int = 40) -> str:
    """The part of a CRIU log worth showing: its error lines, then its last lines.

    CRIU usually reports the cause in an "Error" line followed by many lines of cleanup, so
    the last lines alone often miss it. "" when the log cannot be read.
    """
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - _LOG_TAIL_BYTES))
            data = f.read()
    except OSError as e:
        log.debug("cannot read CRIU log %s: %s", path, e)
        return ""
    text = data.decode(errors="replace")
    if size > _LOG_TAIL_BYTES:
        text = text.split("\n", 1)[-1]  # drop the partial first line
    return text_tail(text, lines)


def text_tail(text: str, lines: int = 40) -> str:
    """log_tail for text already in memory; gaps between picked lines are marked "[...]"."""
    rows = text.rstrip("\n").splitlines()
    if len(rows) <= lines:
        return "\n".join(rows)
    # Error lines get at most half the budget (the latest ones); the final lines get the rest.
    min_last = max(1, lines - lines // 2)
    errors = [
        i
        for i, r in enumerate(rows[: len(rows) - min_last])
        if "Error" in r and not any(h in r for h in _HARMLESS)
    ]
    errors = errors[len(errors) - min(len(errors), lines - min_last) :]
    tail_from = len(rows) - (lines - len(errors))
    picked = sorted(set(errors) | set(range(tail_from, len(rows))))
    out: list[str] = []
    prev = -1
    for i in picked:
        if i != prev + 1:
            out.append("[...]")
        out.append(rows[i])
        prev = i
    return "\n".join(out)


# --- subprocesses ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Result:
    returncode: int
    output: str  # stdout and stderr interleaved: CRIU says "Looks good" on one, errors on other


def _run(argv: list[str], timeout: float) -> _Result | None:
    """Run a CRIU command; None when it cannot start or overruns ``timeout``."""
    try:
        p = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        log.warning("%s did not finish within %g s", " ".join(argv), timeout)
        return None
    except OSError as e:
        log.debug("cannot run %s: %s", argv[0], e)
        return None
    return _Result(p.returncode, p.stdout.decode(errors="replace"))


CAP_SYS_RESOURCE = 24


def has_cap_sys_resource(status: Path = Path("/proc/self/status")) -> bool:
    """Whether this process (and so the CRIU it starts as root) holds CAP_SYS_RESOURCE,
    without which CRIU cannot read the rlimits of another user's processes."""
    try:
        for line in status.read_text().splitlines():
            if line.startswith("CapEff:"):
                return bool(int(line.split()[1], 16) >> CAP_SYS_RESOURCE & 1)
    except (OSError, ValueError, IndexError):
        pass
    return False


def processes_using(path: Path) -> list[int]:
    """Pids of the processes still working on ``path``: those whose command line names it
    (runc's ``checkpoint --image-path``) or whose working directory or open files lie under
    it (CRIU, runc's child, holds the image directory open). A source killed in the middle
    of a dump leaves both running: they finish the dump and put the freezer back as they
    found it, so nobody may resume the container or delete the directory until they end."""
    root = os.fsencode(str(path))
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            args = (proc / "cmdline").read_bytes()
            if re.search(re.escape(root) + rb"(?:/|\x00|$)", args):
                found.append(int(proc.name))
                continue
            links = [proc / "cwd", *(proc / "fd").iterdir()]
        except OSError:  # gone, or not ours to look at
            continue
        for link in links:
            try:
                target = os.fsencode(os.readlink(link))
            except OSError:
                continue
            if target == root or target.startswith(root + b"/"):
                found.append(int(proc.name))
                break
    return found


def wait_until_unused(path: Path, timeout: float) -> list[int]:
    """Wait until no process works on ``path`` (see :func:`processes_using`); the pids still
    at it after ``timeout`` seconds ([] when none)."""
    deadline = time.monotonic() + timeout
    pids = processes_using(path)
    if pids:
        log.warning("waiting for processes still working on %s (pids %s)", path, pids)
    while pids and time.monotonic() < deadline:
        time.sleep(0.2)
        pids = processes_using(path)
    return pids
