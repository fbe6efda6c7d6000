"""Pre-copy of a read-write layer: what the frozen delta may leave out.

While the container still runs, its upper dir is streamed whole (``capture.Capture`` with
``live=True``) into the new container's upper dir on the destination, and every regular file
sent whole is recorded with the fstat taken *before* its data was read. After the pause the
frozen tree is captured again as a delta: a regular file is sent as a "keep" header (no data)
only when this module can prove its content is what the pre-copy read:

- (inode, size, mtime_ns, ctime_ns) of the frozen lstat equal the recorded ones. User space
  cannot set ctime: any write, truncate, chmod, chown, xattr change, link, unlink or rename
  of the inode moves it, so equal keys mean no such change *started* after the recorded fstat.
- its ctime is older than the start of the pre-copy by more than ``RACY_MARGIN_NS``. A change
  that starts after the recorded fstat but lands in the same timestamp tick (coarse clock)
  would leave ctime unchanged; its ctime is then at least the start of the pre-copy minus a
  tick, so such files are never kept ("racy", like git's racy index entries).
- it was neither open for writing nor mapped shared and writable by a process of the
  container when the pre-copy started. ctime is set when a write *begins*: a long write()
  (dirty-page throttling can stretch one over seconds) that began before the pre-copy and
  was still copying data while we read would leave ctime as it was; and stores through a
  shared mapping that is already dirty move no timestamp at all. Either needs the file open
  or mapped for writing at the start of the pre-copy, and a write that begins later moves
  ctime after our fstat.

Anything else is sent again; names the delta does not mention are removed on the destination
(``extract.ROOTFS_DELTA_POLICY``), so the result is the tree a full copy of the frozen layer
would give. Not covered: processes outside the container writing into its upper dir on the
host (they are not frozen either, so no copy of a changing tree is exact).
"""

from __future__ import annotations

import ctypes
import logging
import os
import stat
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

# Pre-copy passes at most (the second is a live delta over the first).
MAX_PASSES = 2
# Racy bytes read by a pass that make another pass worth its walk.
MIN_RACY_BYTES = 1 << 20
# How long the end of a pre-copy waits for the file system to write back dirty pages: an
# optimisation, which a disk kept busy by other writers must not turn into a long wait.
FLUSH_TIMEOUT_S = 10.0
# Covers the lag of the kernel's coarse clock behind the wall clock (a tick, <= 10 ms) many
# times over, and small steps of the wall clock.
RACY_MARGIN_NS = 2_000_000_000
_O_ACCMODE = 0o3

Key = tuple[int, int, int, int]  # inode, size, mtime_ns, ctime_ns


def file_key(st: os.stat_result) -> Key:
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


@dataclass
class PreCopy:
    """What one pre-copy pass sent, and the test that decides what the next delta (another
    pass while running, or the frozen one) leaves out.

    A second pass (``previous`` set) is a live delta over the first: files the first pass
    may keep are only named (``keep_from_previous``), the rest is read and recorded again.
    It catches what changed during the first pass and files that were too recently changed
    for the first pass to vouch for (racy), so the freeze does not send them."""

    started_ns: int  # wall clock (the clock file timestamps come from) before anything was read
    busy: frozenset[bytes] = frozenset()  # paths open or mapped for writing at that moment
    files: dict[bytes, Key] = field(default_factory=dict)  # read whole by this pass
    previous: PreCopy | None = None
    kept: set[bytes] = field(default_factory=set)  # left as the previous pass sent them
    racy_bytes: int = 0  # bytes read whose ctime was already within the racy margin

    @classmethod
    def start(
        cls, list_pids: Callable[[], Iterable[int]], previous: PreCopy | None = None
    ) -> PreCopy:
        """``list_pids``: the container's processes, asked *after* the clock is read, so a
        process that began a write before that instant is in the list (or has exited, its
        write done) and a write in progress during the scan is either seen by it or began
        after this instant."""
        started = time.time_ns()
        return cls(
            started_ns=started, busy=frozenset(written_paths(list_pids())), previous=previous
        )

    def record(self, rel: bytes, st: os.stat_result) -> None:
        """capture.RecordFn: ``rel`` was sent whole; ``st`` is its fstat from before the read."""
        if stat.S_ISREG(st.st_mode):
            self.files[rel] = file_key(st)
            if st.st_ctime_ns >= self.started_ns - RACY_MARGIN_NS:
                self.racy_bytes += st.st_size

    def keep_from_previous(self, rel: bytes, st: os.stat_result) -> bool:
        """capture.KeepFn for a second pass (live lstat: only an optimisation, the frozen
        delta decides again with the previous pass's record)."""
        if self.previous is not None and self.previous.unchanged(rel, st):
            self.kept.add(rel)
            return True
        return False

    def unchanged(self, rel: bytes, st: os.stat_result) -> bool:
        """capture.KeepFn, asked with the frozen lstat: may ``rel`` be left out of the delta?"""
        key = self.files.get(rel)
        if key is None:
            # Not read by this pass: the destination holds what the previous pass sent, if
            # this pass only named it.
            prev = self.previous
            return prev is not None and rel in self.kept and prev.unchanged(rel, st)
        return (
            key == file_key(st)
            and st.st_ctime_ns < self.started_ns - RACY_MARGIN_NS
            and rel not in self.busy
        )

    def worth_another_pass(self, seconds: float) -> bool:
        """A pass that took longer than the racy margin (files changed meanwhile are likely)
        or read recently changed files (racy: the freeze would send them again)."""
        return seconds * 1e9 > RACY_MARGIN_NS or self.racy_bytes >= MIN_RACY_BYTES

    def under(self, mount_point: str) -> PreCopy:
        """A pre-copy of the tree mounted at ``mount_point`` in the container (a volume):
        the same start, the busy paths below that mount point, relative to it."""
        inside = os.fsencode(mount_point.strip("/"))
        prefix = inside + b"/" if inside else b""
        busy = frozenset(p[len(prefix) :] for p in self.busy if p.startswith(prefix))
        return PreCopy(started_ns=self.started_ns, busy=busy)

    @property
    def bytes_recorded(self) -> int:
        return sum(k[1] for k in self.files.values())

    @property
    def passes(self) -> int:
        return 1 + (self.previous.passes if self.previous is not None else 0)


def written_paths(pids: Iterable[int]) -> set[bytes]:
    """Paths (relative to the container's root, as its processes see them) that the given
    host processes hold open for writing or map shared and writable. A path on another mount
    (a volume) may alias one in the layer: that only makes the delta send more."""
    out: set[bytes] = set()
    for pid in pids:
        fd_dir = f"/proc/{pid}/fd"
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            continue  # exited
        for fd in fds:
            try:
                with open(f"/proc/{pid}/fdinfo/{fd}", "rb") as f:
                    info = f.read()
                flags = 0
                for line in info.splitlines():
                    if line.startswith(b"flags:"):
                        flags = int(line.split()[1], 8)
                        break
                if flags & _O_ACCMODE == os.O_RDONLY:
                    continue
                _add_path(out, os.readlink(os.fsencode(f"{fd_dir}/{fd}")))
            except (OSError, ValueError, IndexError):
                continue
        try:
            with open(f"/proc/{pid}/maps", "rb") as f:
                maps = f.read()
        except OSError:
            continue
        for line in maps.splitlines():
            fields = line.split(maxsplit=5)
            if len(fields) == 6 and b"w" in fields[1] and b"s" in fields[1]:
                _add_path(out, fields[5])
    return out


def _add_path(out: set[bytes], target: bytes) -> None:
    # Pipes, sockets, anon inodes ("pipe:[..]") are not paths; a deleted file is in no tree.
    if target.startswith(b"/") and not target.endswith(b" (deleted)"):
        out.add(target.lstrip(b"/"))


def flush(path: Path, timeout_s: float = FLUSH_TIMEOUT_S) -> bool:
    """syncfs(2) of the file system holding ``path``, waited for at most ``timeout_s``; True
    if it finished and succeeded. Called at the end of a pre-copy, while the container still runs: the
    kernel writes dirty pages back 30 s after they were dirtied, and the gigabyte a pre-copy
    just wrote on the destination (or the layer the workload wrote on the source) would
    otherwise be written back during the pause, competing with the checkpoint for the disk
    (seen: checkpoint 0.6 s -> 4.3 s, transfer 2.7 s -> 8.4 s with 1 GiB flushed meanwhile).
    A syncfs that takes longer (a container writing without pause) is left running in its
    thread: the migration goes on."""
    done = threading.Event()
    ok: list[bool] = []

    def run() -> None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as e:
            log.warning("flush of %s: %s", path, e)
            done.set()
            return
        try:
            if _LIBC.syncfs(fd) != 0:
                log.warning("syncfs of %s: %s", path, os.strerror(ctypes.get_errno()))
            else:
                ok.append(True)
        finally:
            os.close(fd)
            done.set()

    threading.Thread(target=run, name="syncfs", daemon=True).start()
    finished = done.wait(timeout_s)
    if not finished:
        log.warning("syncfs of %s still running after %.0f s: going on", path, timeout_s)
    return finished and bool(ok)


_LIBC = ctypes.CDLL(None, use_errno=True)
