"""One migration per container at a time: an advisory lock file per container id.

``flock`` on ``<lock dir>/<container id>.lock``, held for the whole run and released by the
kernel when the process dies (a SIGKILLed run never leaves a stale lock). The holder writes
its pid into the file so a refused second run can name it. Different containers have
different files, so their migrations run concurrently.
"""

from __future__ import annotations

import fcntl
import os
import re
from pathlib import Path
from types import TracebackType

from migrate.core.errors import Busy

DEFAULT_LOCK_DIR = Path(os.environ.get("MIGRATE_LOCK_DIR", "/run/migrate/locks"))
_ID_RE = re.compile(r"[0-9a-f]{12,128}")


class PidLock:
    """An flock on ``path`` naming its holder's pid; ``busy`` words the refusal."""

    def __init__(self, path: Path, busy: str, hint: str) -> None:
        self.path = path
        self.busy = busy
        self.hint = hint
        self._fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_pid(fd)
                os.close(fd)
                who = f"pid {holder}" if holder else "another process"
                raise Busy(
                    f"{self.busy} by {who}",
                    hint=self.hint,
                    details={"holder_pid": holder, "lock": str(self.path)},
                ) from None
            # The previous holder may have unlinked the file between our open and our lock:
            # then we hold a lock on an orphan inode, and must retry on the current file.
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is None:
            return
        # Unlink while still holding the lock, so no one can lock this inode afterwards and
        # believe it current (see the retry in acquire).
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> PidLock:
        self.acquire()
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()


class ContainerLock(PidLock):
    """One migration per container: ``with ContainerLock(container_id, name):``."""

    def __init__(self, container_id: str, name: str = "", lock_dir: Path | None = None) -> None:
        # Only an engine's hex id names the file: never a user-supplied string in a path.
        if not _ID_RE.fullmatch(container_id):
            raise ValueError(f"not a container id: {container_id!r}")
        self.container_id = container_id
        self.name = name or container_id[:12]
        super().__init__(
            (lock_dir or DEFAULT_LOCK_DIR) / f"{container_id}.lock",
            busy=f"container {self.name} is already being migrated (or recovered)",
            hint="wait for that migration to finish; if its process is gone, "
            "`migrate recover` settles what it left",
        )


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        return int(text) if text.isdigit() else None
    except OSError:
        return None
