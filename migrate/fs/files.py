"""Small file helpers shared by the product: read a file as chunks, replace a file atomically."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Final

CHUNK_SIZE: Final = 1 << 20
# What a write fails with when the file system (or the user's quota) is full.
SPACE_ERRNOS: Final = frozenset({errno.ENOSPC, errno.EDQUOT})


def read_chunks(path: Path, size: int = CHUNK_SIZE, *, limit: int | None = None) -> Iterator[bytes]:
    """The file's bytes as chunks of at most ``size`` bytes, never the whole file in memory;
    with ``limit``, at most that many bytes (fewer if the file is shorter)."""
    left = limit
    with open(path, "rb") as f:
        while left is None or left > 0:
            chunk = f.read(size if left is None else min(size, left))
            if not chunk:
                return
            if left is not None:
                left -= len(chunk)
            yield chunk


@contextmanager
def atomic_file(path: Path, *, durable: bool = True) -> Iterator[BinaryIO]:
    """A binary file that replaces ``path`` only once the block completes: readers see the
    old content or the whole new one, never a part; on any error the temporary is removed.

    ``durable``: the data reaches the disk before the rename, so a crash cannot leave an
    empty file under the name (the rename itself may still be lost)."""
    # Same directory (a rename is atomic only within a file system); the pid keeps two
    # processes that write the same file from sharing a temporary.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        with open(tmp, "wb") as f:
            yield f
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write(path: Path, data: bytes | str, *, durable: bool = True) -> None:
    """Replace ``path`` with ``data`` (str as UTF-8) atomically; see :func:`atomic_file`."""
    with atomic_file(path, durable=durable) as f:
        f.write(data.encode() if isinstance(data, str) else data)
