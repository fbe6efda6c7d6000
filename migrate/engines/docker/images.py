"""Image layers the destination lacks: filter a `docker save` stream down to those.

`docker load` skips every layer whose chain it already has without opening its tar
(PLATFORM.md), so layers the destination holds are replaced by empty members. Which member is
which layer is only known from its content digest (the diff id), so each candidate member is
spooled to a temporary file while it is hashed: memory stays bounded whatever the layer size.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
import tempfile
from collections.abc import Iterable, Iterator
from typing import IO

CHUNK = 1 << 20


class _ChunkReader(io.RawIOBase):
    """A file-like view of an iterator of byte chunks (for tarfile's stream mode)."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._it = iter(chunks)
        self._buf = b""

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        while not self._buf:
            try:
                self._buf = next(self._it)
            except StopIteration:
                return 0
        n = min(len(b), len(self._buf))
        b[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n


def _is_layer_candidate(member: tarfile.TarInfo) -> bool:
    return (
        member.isfile()
        and member.size > 0
        and (member.name.endswith("/layer.tar") or member.name.startswith("blobs/sha256/"))
    )


def filter_save_stream(
    chunks: Iterable[bytes], skip_diff_ids: set[str], stats: dict[str, int] | None = None
) -> Iterator[bytes]:
    """Yield the `docker save` tar with layers in ``skip_diff_ids`` emptied."""
    st = stats if stats is not None else {}
    st.setdefault("layers_sent", 0)
    st.setdefault("layers_skipped", 0)
    if not skip_diff_ids:
        yield from chunks
        return
    src = tarfile.open(fileobj=io.BufferedReader(_ChunkReader(chunks), CHUNK), mode="r|")
    for member in src:
        fobj = src.extractfile(member) if member.isfile() else None
        if fobj is None or not _is_layer_candidate(member):
            yield from _member(member, fobj)
            continue
        h = hashlib.sha256()
        with tempfile.TemporaryFile() as spool:
            while True:
                b = fobj.read(CHUNK)
                if not b:
                    break
                h.update(b)
                spool.write(b)
            if "sha256:" + h.hexdigest() in skip_diff_ids:
                st["layers_skipped"] += 1
                empty = tarfile.TarInfo(member.name)
                empty.mode, empty.mtime, empty.size = member.mode, member.mtime, 0
                yield from _member(empty, None)
            else:
                st["layers_sent"] += 1
                spool.seek(0)
                yield from _member(member, spool)
    yield b"\0" * (2 * tarfile.BLOCKSIZE)


def _member(member: tarfile.TarInfo, fobj: IO[bytes] | None) -> Iterator[bytes]:
    """One tar member, header then data in chunks: never the whole member in memory."""
    yield member.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
    if fobj is None or member.size == 0:
        return
    left = member.size
    while left:
        b = fobj.read(min(CHUNK, left))
        if not b:
            raise OSError(f"image member {member.name} is shorter than its header says")
        left -= len(b)
        yield b
    pad = (-member.size) % tarfile.BLOCKSIZE
    if pad:
        yield b"\0" * pad
