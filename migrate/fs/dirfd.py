"""Directories of an extraction target held as fds, never reached through a symlink.

Every component is opened relative to its parent's fd with ``O_NOFOLLOW|O_DIRECTORY``: a
symlink or a non-directory anywhere on the way fails instead of being followed, whatever the
archive (or another process) put there.
"""

from __future__ import annotations

import errno
import os
from typing import Final

DIR_FLAGS: Final = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class UnsafeParent(Exception):
    """A path component that should be a directory is a symlink or something else."""

    def __init__(self, part: bytes) -> None:
        super().__init__(part)
        self.part = part


def open_dir(part: bytes, dir_fd: int) -> int:
    try:
        return os.open(part, DIR_FLAGS, dir_fd=dir_fd)
    except OSError as e:
        # O_NOFOLLOW|O_DIRECTORY on a symlink fails with ELOOP or ENOTDIR: never followed.
        if e.errno in (errno.ENOTDIR, errno.ELOOP):
            raise UnsafeParent(part) from None
        raise


class Dirs:
    """Open directory fds along the path of the last member, reused by the next one.

    Members arrive mostly in tree order, so consecutive ones share most of their parents.
    Every component is opened with O_NOFOLLOW|O_DIRECTORY: a symlink or a non-directory
    anywhere on the way fails instead of being followed.
    """

    def __init__(self, root_fd: int) -> None:
        self._root_fd = root_fd
        self._stack: list[tuple[bytes, int]] = []

    def enter(self, parts: tuple[bytes, ...], *, create: bool) -> int:
        keep = 0
        limit = min(len(parts), len(self._stack))
        while keep < limit and self._stack[keep][0] == parts[keep]:
            keep += 1
        while len(self._stack) > keep:
            os.close(self._stack.pop()[1])
        fd = self._stack[-1][1] if self._stack else self._root_fd
        for part in parts[keep:]:
            try:
                child = open_dir(part, fd)
            except FileNotFoundError:
                if not create:
                    raise
                # Archives may omit parent entries; tar creates them, and so do we.
                os.mkdir(part, 0o755, dir_fd=fd)
                child = open_dir(part, fd)
                os.chmod(child, 0o755)  # independent of the umask
            self._stack.append((part, child))
            fd = child
        return fd

    def close(self) -> None:
        while self._stack:
            os.close(self._stack.pop()[1])


def write_all(fd: int, data: memoryview) -> None:
    while data:
        data = data[os.write(fd, data) :]


def pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    while data:
        n = os.pwrite(fd, data, offset)
        data = data[n:]
        offset += n
