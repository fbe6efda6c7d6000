"""Reading CRIU's logs when a checkpoint or restore through runc fails: the lines worth
showing, a hint for the failures we know, and a holder that keeps containerd's restore.log
readable after containerd deletes it."""

from __future__ import annotations

import os
import threading
from pathlib import Path


class LogHolder(threading.Thread):
    """Opens a file as soon as it exists and keeps it open, so it outlives its deletion."""

    def __init__(self, path: Path) -> None:
        super().__init__(daemon=True)
        self.path = path
        self._stop_evt = threading.Event()
        self._fd: int | None = None

    def run(self) -> None:
        while not self._stop_evt.is_set() and self._fd is None:
            try:
                self._fd = os.open(self.path, os.O_RDONLY)
            except OSError:
                self._stop_evt.wait(0.005)

    def tail(self) -> str:
        self._stop_evt.set()
        self.join(timeout=1)
        if self._fd is None:
            return ""
        with os.fdopen(os.dup(self._fd), "rb") as f:
            f.seek(0)
            data = f.read()[-(256 << 10) :]
        text = data.decode(errors="replace")
        return _log_tail_text(text)

    def stop(self) -> None:
        self._stop_evt.set()
        self.join(timeout=1)
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _log_tail_text(text: str, lines: int = 8) -> str:
    rows = text.splitlines()
    # Every CRIU run here logs the RLIMIT_NOFILE line; it is harmless (PLATFORM.md).
    errors = [r for r in rows if "Error" in r and "RLIMIT_NOFILE" not in r]
    tail = rows[-lines:]
    picked = [r for r in errors[-10:] if r not in tail] + tail
    return "\n".join(picked)


def criu_hint(tail: str) -> str:
    if "Can't get rlimit" in tail or "prlimit" in tail:
        return (
            "a process in the container runs as a non-root user and this host lacks "
            "CAP_SYS_RESOURCE, which CRIU needs to read its rlimits (see docs/platform.md)"
        )
    if "in the freezer cgroup" in tail or "Unexpected process" in tail:
        return "a `docker exec` session is running in the container: end it and retry"
    if "iptables" in tail:
        return "install iptables (CRIU locks the network with iptables-restore)"
    if "No space left on device" in tail or "Disk quota exceeded" in tail:
        return (
            "the file system of the staging directory (the log path above) is full: free "
            "space there, about as much as the container's memory, and retry"
        )
    return "see the CRIU log lines above"
