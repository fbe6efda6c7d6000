"""What /proc tells about the daemons and containers on this host: who listens on a socket,
who holds a lock, where a container's read-write layer and dockerd's exec root are, and who a
container's processes run as. Every answer is a best effort: a process may exit meanwhile."""

from __future__ import annotations

import os
import re
from pathlib import Path

from migrate.engines.base import ProcessInfo

DEFAULT_EXEC_ROOT = Path("/var/run/docker")


def socket_owner(path: str) -> int | None:
    """PID of the process listening on a unix socket path (dockerd for its API socket)."""
    try:
        inode = None
        for line in Path("/proc/net/unix").read_text().splitlines()[1:]:
            parts = line.split()
            if len(parts) >= 8 and parts[7] == path and parts[5] == "01":
                inode = parts[6]
                break
        if inode is None:
            return None
        target = f"socket:[{inode}]"
        for pid_dir in Path("/proc").iterdir():
            if not pid_dir.name.isdigit():
                continue
            try:
                for fd in (pid_dir / "fd").iterdir():
                    if os.readlink(fd) == target:
                        return int(pid_dir.name)
            except OSError:
                continue
    except OSError:
        pass
    return None


def flock_holders(path: Path) -> list[int]:
    """Pids holding an flock on ``path`` (from /proc/locks, by inode)."""
    try:
        ino = os.stat(path).st_ino
        text = Path("/proc/locks").read_text()
    except OSError:
        return []
    pids = []
    for line in text.splitlines():
        f = line.split()
        if "->" in f:  # a waiter, not a holder
            continue
        if len(f) >= 6 and f[1] == "FLOCK" and f[5].endswith(f":{ino}") and f[4].isdigit():
            pids.append(int(f[4]))
    return sorted(set(pids))


def root_upperdir(pid: int) -> str:
    """The upperdir= of the root mount of process ``pid`` ("" when it has none)."""
    try:
        for line in Path(f"/proc/{pid}/mountinfo").read_text().splitlines():
            parts = line.split()
            if len(parts) > 4 and parts[4] == "/":
                m = re.search(r"upperdir=([^,]+)", line)
                if m:
                    return m.group(1)
    except OSError:
        pass
    return ""


def exec_root(sock: str) -> Path:
    """dockerd's --exec-root: from the command line of the process that serves ``sock``."""
    pid = socket_owner(sock) if sock else None
    if pid:
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            for i, a in enumerate(argv):
                if a == b"--exec-root" and i + 1 < len(argv):
                    return Path(argv[i + 1].decode())
                if a.startswith(b"--exec-root="):
                    return Path(a.split(b"=", 1)[1].decode())
        except OSError:
            pass
    return DEFAULT_EXEC_ROOT


def process_info(pid: int) -> ProcessInfo | None:
    """The host uids, gids and command line of process ``pid`` (None: it is gone)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
    except OSError:
        return None
    ids: dict[str, tuple[int, ...]] = {}
    for line in status.splitlines():
        key, _, rest = line.partition(":")
        if key in ("Uid", "Gid"):
            ids[key] = tuple(int(x) for x in rest.split())
    return ProcessInfo(
        pid, ids.get("Uid", ()), ids.get("Gid", ()), cmd.decode(errors="replace").strip()
    )


def environ(pid: int) -> dict[str, str]:
    """The environment process ``pid`` started with ({} when unreadable)."""
    env: dict[str, str] = {}
    try:
        for item in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
            k, _, v = item.decode(errors="replace").partition("=")
            env[k] = v
    except OSError:
        pass
    return env
