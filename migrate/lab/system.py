"""Linux plumbing for the lab: ip(8), processes known by their pidfiles, mounts.

Every process is found through a pidfile and checked before it is signalled (its executable
and an argument naming one of our paths), so a reused PID is never hit; nothing is ever
stopped by name.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shlex
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from migrate.core.errors import LabError
from migrate.core.mountinfo import parse_mountinfo, parse_mountinfo_entries

log = logging.getLogger(__name__)

IP = Path("/usr/sbin/ip")
UMOUNT = Path("/usr/bin/umount")
MOUNT = Path("/usr/bin/mount")
UNSHARE = Path("/usr/bin/unshare")
SSH_KEYGEN = Path("/usr/bin/ssh-keygen")
NETNS_DIR = Path("/run/netns")
CMD_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 30.0
KILL_TIMEOUT_S = 10.0
POLL_S = 0.1
LOG_TAIL_CHARS = 2000


# --- files --------------------------------------------------------------------------------


def keygen(path: Path, comment: str) -> None:
    for stale in (path, path.with_suffix(".pub")):
        with contextlib.suppress(FileNotFoundError):
            stale.unlink()
    subprocess.run(
        [str(SSH_KEYGEN), "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        check=True,
        timeout=CMD_TIMEOUT_S,
        stdin=subprocess.DEVNULL,
        capture_output=True,
    )


def tail(path: Path) -> str:
    try:
        return path.read_text(errors="replace")[-LOG_TAIL_CHARS:]
    except OSError:
        return ""


# --- network ------------------------------------------------------------------------------


def ip(args: Sequence[str], netns: str | None = None) -> str:
    argv = [str(IP), *(["-n", netns] if netns else []), *args]
    r = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=CMD_TIMEOUT_S)
    if r.returncode != 0:
        raise LabError(f"`{shlex.join(argv)}` failed: {r.stderr.strip()}")
    return r.stdout


def ip_json(args: Sequence[str], netns: str | None = None) -> list[dict[str, Any]]:
    out = ip(["-j", *args], netns=netns).strip()
    data = json.loads(out) if out else []
    return [d for d in data if isinstance(d, dict)]


def link_exists(iface: str, netns: str | None = None) -> bool:
    argv = [str(IP), *(["-n", netns] if netns else []), "link", "show", "dev", iface]
    r = subprocess.run(argv, check=False, capture_output=True, timeout=CMD_TIMEOUT_S)
    return r.returncode == 0


def ensure_netns(name: str) -> None:
    path = NETNS_DIR / name
    if path.exists() and str(path) in mounts():
        return
    if path.exists():  # a file left without its nsfs mount: ip would refuse to add
        path.unlink()
    ip(["netns", "add", name])


# --- processes ----------------------------------------------------------------------------


def read_pid(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() and int(text) > 0 else None


def pid_alive(pid: int) -> bool:
    """Alive and not a zombie (a daemon we started and that died is our zombie)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    state = stat.rsplit(")", 1)[-1].split()[0]
    if state in ("Z", "X"):
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pid, os.WNOHANG)
        return False
    return True


def ppid(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def proc_is(pid: int, exe_prefix: str, needle: str) -> bool:
    """The PID from a pidfile is still the process we mean (not a reused PID): its
    executable's name starts with ``exe_prefix`` and one argument mentions ``needle``."""
    if not pid_alive(pid):
        return False
    try:
        exe = os.path.basename(os.readlink(f"/proc/{pid}/exe"))
    except OSError:
        return False
    return exe.startswith(exe_prefix) and any(needle in a for a in cmdline(pid))


def in_netns(pid: int, netns_path: Path) -> bool:
    return in_ns(pid, "net", netns_path)


def in_ns(pid: int, kind: str, ns_path: Path) -> bool:
    """``pid`` is in the namespace (``kind``: net, mnt) that ``ns_path`` is a handle of."""
    try:
        mine, theirs = os.stat(f"/proc/{pid}/ns/{kind}"), os.stat(ns_path)
    except OSError:
        return False
    return (mine.st_dev, mine.st_ino) == (theirs.st_dev, theirs.st_ino)


def send_signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def thaw(pid: int) -> None:
    """A task in a frozen cgroup (a paused container) cannot die until it is thawed."""
    try:
        lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    except OSError:
        return
    for ln in lines:
        _, ctrl, rel = ln.split(":", 2)
        if ctrl == "freezer":
            state = Path("/sys/fs/cgroup/freezer") / rel.lstrip("/") / "freezer.state"
            with contextlib.suppress(OSError):
                state.write_text("THAWED\n")
        elif ctrl == "":
            freeze = Path("/sys/fs/cgroup/unified") / rel.lstrip("/") / "cgroup.freeze"
            with contextlib.suppress(OSError):
                if freeze.exists():
                    freeze.write_text("0\n")


def wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return True
        time.sleep(POLL_S)
    return not pid_alive(pid)


def stop_pid(pid: int, what: str) -> None:
    """SIGTERM, wait, then SIGKILL: always by the PID we read and checked."""
    log.info("stopping %s (pid %d)", what, pid)
    send_signal(pid, signal.SIGTERM)
    if wait_gone(pid, STOP_TIMEOUT_S):
        return
    log.warning("%s (pid %d) ignored SIGTERM for %.0f s: killing it", what, pid, STOP_TIMEOUT_S)
    send_signal(pid, signal.SIGKILL)
    if not wait_gone(pid, KILL_TIMEOUT_S):
        raise LabError(f"{what} (pid {pid}) does not exit", hint=f"kill -9 {pid}")


# --- mounts -------------------------------------------------------------------------------


def mntns_at(path: Path) -> str | None:
    """``mnt:[INODE]`` when ``path`` is a bind mount of a mount namespace (the topmost mount
    there), else None (a plain file left by an earlier boot, another namespace kind...)."""
    try:
        text = Path("/proc/self/mountinfo").read_text()
    except OSError:
        return None
    found = None
    for point, root, fstype in parse_mountinfo_entries(text):
        if point == str(path):
            found = root if fstype == "nsfs" and root.startswith("mnt:[") else None
    return found


def mounts() -> list[str]:
    try:
        return parse_mountinfo(Path("/proc/self/mountinfo").read_text())
    except OSError:
        return []


def is_under(path: str, roots: Sequence[Path]) -> bool:
    return any(path == str(r) or path.startswith(str(r).rstrip("/") + "/") for r in roots)


def unmount_under(roots: Sequence[Path]) -> None:
    for _ in range(3):  # stacked mounts need several passes
        points = [m for m in mounts() if is_under(m, roots)]
        if not points:
            return
        for m in sorted(set(points), key=lambda s: s.count("/"), reverse=True):
            for argv in ([str(UMOUNT), m], [str(UMOUNT), "-l", m]):
                r = subprocess.run(argv, check=False, capture_output=True, timeout=CMD_TIMEOUT_S)
                if r.returncode == 0:
                    break
            log.info("unmounted leftover %s", m)
