"""Directory trees as tar streams: capture a container's read-write layer, a volume, or a CRIU
image directory, to be rebuilt elsewhere by :mod:`migrate.fs.extract`.

:func:`capture` walks a directory (an overlay2 upper dir, a CRIU image dir, a volume) and
streams a POSIX pax tar of it (:mod:`migrate.fs.tar`), never following a symlink. Sparse files
are captured with ``SEEK_DATA``/``SEEK_HOLE`` and written in GNU sparse format 1.0 (pax), which
GNU tar and Python's tarfile also read; holes are neither read, sent nor written.

For a pre-copy (:mod:`migrate.fs.precopy`) the same walk reads a live tree (``live=True``) or
sends a frozen tree as a delta over it (``keep``).
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import BinaryIO, Final

from migrate.core.errors import DiskFull, TransferFailed
from migrate.fs.files import SPACE_ERRNOS
from migrate.fs.stats import CaptureStats, Tally
from migrate.fs.tar import (
    BLK,
    BLOCK,
    CHR,
    DIR,
    FIFO,
    LNK,
    MAX_SPARSE_SEGMENTS,
    REG,
    SYM,
    ZERO_BLOCK,
    Meta,
    encode_header,
    padding,
)

log = logging.getLogger(__name__)

DEFAULT_CHUNK_SIZE: Final = 1 << 20

# overlayfs records these about the *host's* lower filesystems (file handles, index state). On
# another host they are at best ignored and at worst decoded against an unrelated filesystem
# that happens to share a UUID (cloned VM images), so they are not carried by default.
OVERLAY_HOST_XATTRS: Final = frozenset(
    f"{ns}.overlay.{key}"
    for ns in ("trusted", "user")
    for key in ("origin", "impure", "nlink", "upper", "uuid")
)

# What a name of a tree in use may do between two of our calls: vanish, or be replaced by
# something of another type.
_LIVE_ERRNOS: Final = frozenset({errno.ENOENT, errno.ENOTDIR, errno.ELOOP, errno.ENXIO})


def _walk(root: bytes, *, live: bool = False) -> Iterator[tuple[bytes, bytes, os.stat_result]]:
    """Pre-order walk (parents before children, names in byte order so output is
    reproducible), never following symlinks; yields (relative name, path, lstat).

    ``live``: the tree is in use (a pre-copy of a running container): names that vanish or
    stop being directories between listing and reading are skipped instead of failing."""
    yield b"", root, os.lstat(root)
    stack: list[tuple[bytes, bytes, Iterator[bytes]]] = [
        (b"", root, iter(sorted(os.listdir(root))))
    ]
    while stack:
        rel_dir, dir_path, names = stack[-1]
        name = next(names, None)
        if name is None:
            stack.pop()
            continue
        rel = rel_dir + b"/" + name if rel_dir else name
        path = dir_path + b"/" + name
        try:
            st = os.lstat(path)
            children = sorted(os.listdir(path)) if stat.S_ISDIR(st.st_mode) else None
        except OSError as e:
            if live and e.errno in _LIVE_ERRNOS:
                continue
            raise
        yield rel, path, st
        if children is not None:
            stack.append((rel, path, iter(children)))


def _read_xattrs(
    target: int | bytes, drop: frozenset[str], rel: bytes
) -> tuple[tuple[bytes, bytes], ...]:
    try:
        if isinstance(target, int):
            names = os.listxattr(target)
        else:
            names = os.listxattr(target, follow_symlinks=False)
    except OSError as e:
        if e.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            return ()
        raise
    out: list[tuple[bytes, bytes]] = []
    for name in sorted(names):
        if name in drop:
            continue
        key = os.fsencode(name)
        if b"=" in key:
            # A pax keyword ends at the first "="; such a name cannot be carried.
            log.warning("skipping xattr %r of %r: name contains '='", name, rel)
            continue
        try:
            if isinstance(target, int):
                value = os.getxattr(target, name)
            else:
                value = os.getxattr(target, name, follow_symlinks=False)
        except OSError as e:
            if e.errno == errno.ENODATA:
                continue
            raise
        out.append((key, value))
    return tuple(out)


def _data_segments(fd: int, size: int) -> list[tuple[int, int]] | None:
    """The file's data extents, or None when it should be sent dense."""
    segments: list[tuple[int, int]] = []
    pos = 0
    try:
        while pos < size:
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError as e:
                if e.errno == errno.ENXIO:  # only a hole from pos to EOF
                    break
                raise
            end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
            segments.append((start, end - start))
            pos = end
    except OSError as e:
        if e.errno in (errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
            return None
        raise
    if segments == [(0, size)] or len(segments) > MAX_SPARSE_SEGMENTS:
        return None
    if not segments or segments[-1][0] + segments[-1][1] < size:
        # GNU tar records a trailing hole with an empty segment at EOF; old readers need it.
        segments.append((size, 0))
    return segments


def _open_for_read(path: bytes, extra: int = 0) -> int:
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | extra
    try:
        # Reading a layer should not dirty its inodes (atime) on the source.
        return os.open(path, flags | os.O_NOATIME)
    except PermissionError:
        return os.open(path, flags)


# Called for each regular file a live capture sent whole and unchanged while it was read: its
# relative name and the fstat taken before its data was read.
RecordFn = Callable[[bytes, os.stat_result], None]
# Asked for each regular file of a frozen capture (relative name, lstat): True sends a "keep"
# header instead of the data (the destination has it from the pre-copy).
KeepFn = Callable[[bytes, os.stat_result], bool]


class Capture(Iterator[bytes]):
    """A tar stream of a directory, as an iterator of chunks of about ``chunk_size`` bytes.

    ``stats`` reflects what has been produced so far. Closing the iterator early releases the
    open file (generator semantics).

    Pre-copy (migrate/fs/precopy.py): ``live=True`` reads a tree that is still being changed
    (names that vanish are skipped, a file that shrinks is padded with zeros) and calls
    ``record`` for every regular file whose data was read whole; ``keep`` makes a capture of
    the frozen tree a delta that only names the files the destination already has.
    """

    def __init__(
        self,
        root: Path,
        *,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        drop_xattrs: frozenset[str] = OVERLAY_HOST_XATTRS,
        live: bool = False,
        record: RecordFn | None = None,
        keep: KeepFn | None = None,
    ) -> None:
        if chunk_size < BLOCK:
            raise ValueError(f"chunk_size must be at least {BLOCK}")
        self._root = os.fsencode(root)
        self._chunk_size = chunk_size
        self._drop = drop_xattrs
        self._live = live
        self._record = record
        self._keep = keep
        self._tally = Tally()
        self._whole = True  # the current file's data was read whole (not truncated under us)
        self._gen = self._chunks()

    @property
    def stats(self) -> CaptureStats:
        return self._tally.snapshot(CaptureStats)

    def __iter__(self) -> Capture:
        return self

    def __next__(self) -> bytes:
        return next(self._gen)

    def close(self) -> None:
        self._gen.close()

    def _chunks(self) -> Generator[bytes, None, None]:
        # Headers and small files are coalesced (one join per chunk); big reads pass through
        # without a copy.
        pending: list[bytes] = []
        pending_len = 0
        size = self._chunk_size
        try:
            for piece in self._pieces():
                if len(piece) >= size:
                    if pending:
                        self._tally.stream_bytes += pending_len
                        yield b"".join(pending)
                        pending, pending_len = [], 0
                    self._tally.stream_bytes += len(piece)
                    yield piece
                    continue
                pending.append(piece)
                pending_len += len(piece)
                if pending_len >= size:
                    self._tally.stream_bytes += pending_len
                    yield b"".join(pending)
                    pending, pending_len = [], 0
        except OSError as e:
            if e.errno in SPACE_ERRNOS:
                raise DiskFull(f"capture of {os.fsdecode(self._root)}: {e}") from e
            raise TransferFailed(
                f"capture of {os.fsdecode(self._root)} failed: {e}",
                details={"path": os.fsdecode(e.filename) if e.filename else ""},
            ) from e
        if pending:
            self._tally.stream_bytes += pending_len
            yield b"".join(pending)

    def _pieces(self) -> Iterator[bytes]:
        st = os.lstat(self._root)
        if not stat.S_ISDIR(st.st_mode):
            raise TransferFailed(f"{os.fsdecode(self._root)} is not a directory")
        # Hard links: first name seen per inode, among inodes with more than one link.
        first_name: dict[tuple[int, int], bytes] = {}
        for rel, path, st in _walk(self._root, live=self._live):
            if not self._live:
                yield from self._entry(rel, path, st, first_name)
                continue
            # A name of a live tree that vanishes before anything of it was produced is
            # skipped (the frozen delta sends whatever is there then).
            produced = False
            try:
                for piece in self._entry(rel, path, st, first_name):
                    produced = True
                    yield piece
            except OSError as e:
                if produced or e.errno not in _LIVE_ERRNOS:
                    raise
                self._tally.vanished += 1
        yield ZERO_BLOCK * 2

    def _entry(
        self,
        rel: bytes,
        path: bytes,
        st: os.stat_result,
        first_name: dict[tuple[int, int], bytes],
    ) -> Iterator[bytes]:
        mode = st.st_mode
        meta = Meta.of(st)
        whiteout = stat.S_ISCHR(mode) and st.st_rdev == 0
        if stat.S_ISDIR(mode):
            self._tally.members += 1
            yield encode_header(
                rel + b"/" if rel else b"./",
                DIR,
                meta,
                xattrs=_read_xattrs(path, self._drop, rel),
            )
            return
        if stat.S_ISSOCK(mode) or not (
            stat.S_ISREG(mode)
            or stat.S_ISLNK(mode)
            or stat.S_ISCHR(mode)
            or stat.S_ISBLK(mode)
            or stat.S_ISFIFO(mode)
        ):
            # Sockets are recreated by whoever binds them (CRIU for a restored process).
            self._tally.skipped += 1
            log.warning("skipping %r: file type %o cannot be archived", rel, stat.S_IFMT(mode))
            return
        # Whiteouts are independent inodes to us: overlayfs may share one whiteout inode
        # through hard links (some reaching into its work dir), which means nothing.
        if st.st_nlink > 1 and not whiteout:
            key = (st.st_dev, st.st_ino)
            if key in first_name:
                self._tally.members += 1
                self._tally.hardlinks += 1
                yield encode_header(rel, LNK, meta, linkname=first_name[key])
                return
            # Registered once this name was produced: a name skipped in a live tree must not
            # become a link target.
            yield from self._linkable(rel, path, st)
            first_name[key] = rel
            return
        yield from self._linkable(rel, path, st)

    def _linkable(self, rel: bytes, path: bytes, st: os.stat_result) -> Iterator[bytes]:
        """A non-directory that may have hard links: regular file, symlink, device, FIFO."""
        mode = st.st_mode
        meta = Meta.of(st)
        whiteout = stat.S_ISCHR(mode) and st.st_rdev == 0
        if stat.S_ISREG(mode):
            if self._keep is not None and self._keep(rel, st):
                self._tally.members += 1
                self._tally.kept += 1
                self._tally.kept_bytes += st.st_size
                yield encode_header(rel, REG, meta, keep=st.st_size)
                return
            yield from self._regular(rel, path, st)
            return
        if stat.S_ISLNK(mode):
            header = encode_header(
                rel,
                SYM,
                meta,
                linkname=os.readlink(path),
                xattrs=_read_xattrs(path, self._drop, rel),
            )
        elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
            self._tally.whiteouts += whiteout
            header = encode_header(
                rel,
                CHR if stat.S_ISCHR(mode) else BLK,
                meta,
                devmajor=os.major(st.st_rdev),
                devminor=os.minor(st.st_rdev),
                xattrs=_read_xattrs(path, self._drop, rel),
            )
        else:
            header = encode_header(rel, FIFO, meta, xattrs=_read_xattrs(path, self._drop, rel))
        self._tally.members += 1
        yield header

    def _regular(self, rel: bytes, path: bytes, st: os.stat_result) -> Iterator[bytes]:
        # O_NONBLOCK: in a live tree the name may have become a FIFO since the lstat.
        fd = _open_for_read(path, os.O_NONBLOCK if self._live else 0)
        try:
            fst = os.fstat(fd)
            if (fst.st_dev, fst.st_ino) != (st.st_dev, st.st_ino):
                if self._live:
                    raise FileNotFoundError(errno.ENOENT, "replaced", path)
                raise TransferFailed(f"{os.fsdecode(rel)!r} changed during capture")
            size = fst.st_size
            # Only a file using fewer blocks than its size can have holes: skip the lseeks
            # for the common dense file.
            segments = _data_segments(fd, size) if fst.st_blocks * 512 < size else None
            xattrs = _read_xattrs(fd, self._drop, rel)
            meta = Meta.of(fst)
            self._tally.members += 1
            self._tally.files += 1
            self._whole = True
            if segments is None:
                yield encode_header(rel, REG, meta, size=size, xattrs=xattrs)
                yield from self._data(fd, rel, 0, size)
                self._tally.bytes += size
                yield bytes(padding(size))
                self._recorded(rel, fst)
                return
            sparse_map = b"%d\n" % len(segments) + b"".join(b"%d\n%d\n" % seg for seg in segments)
            sparse_map += bytes(padding(len(sparse_map)))
            stored = sum(length for _, length in segments)
            head, _, base = rel.rpartition(b"/")
            # The name a reader that does not know the format extracts the raw data under.
            stand_in = (head + b"/" if head else b"") + b"GNUSparseFile.0/" + base
            yield encode_header(
                stand_in,
                REG,
                meta,
                size=len(sparse_map) + stored,
                xattrs=xattrs,
                sparse_keys=(
                    (b"GNU.sparse.major", b"1"),
                    (b"GNU.sparse.minor", b"0"),
                    (b"GNU.sparse.name", rel),
                    (b"GNU.sparse.realsize", b"%d" % size),
                ),
            )
            yield sparse_map
            for offset, length in segments:
                yield from self._data(fd, rel, offset, length)
            self._tally.bytes += stored
            self._tally.sparse_files += 1
            yield bytes(padding(stored))
            self._recorded(rel, fst)
        finally:
            os.close(fd)

    def _recorded(self, rel: bytes, fst: os.stat_result) -> None:
        if self._record is not None and self._whole:
            self._record(rel, fst)

    def _data(self, fd: int, rel: bytes, offset: int, length: int) -> Iterator[bytes]:
        end = offset + length
        while offset < end:
            chunk = os.pread(fd, min(self._chunk_size, end - offset), offset)
            if not chunk:
                if self._live:
                    # Truncated while we read it (pre-copy): the header promised `length`
                    # bytes, so zeros stand in; the file is not recorded and goes again
                    # in the frozen delta.
                    self._whole = False
                    while offset < end:
                        n = min(self._chunk_size, end - offset)
                        offset += n
                        yield bytes(n)
                    return
                # The header already promised `length` bytes; a short file would corrupt
                # every member after it.
                raise TransferFailed(f"{os.fsdecode(rel)!r} shrank during capture")
            offset += len(chunk)
            yield chunk


# ``capture(root, ...)`` streams a pax tar of ``root`` (any directory) as chunks: the verb
# callers write, with the class's own signature rather than a copy of it.
capture = Capture


def capture_to(
    root: Path,
    fileobj: BinaryIO,
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    drop_xattrs: frozenset[str] = OVERLAY_HOST_XATTRS,
) -> CaptureStats:
    """Write a pax tar of ``root`` to a binary file object; returns the final stats."""
    cap = Capture(root, chunk_size=chunk_size, drop_xattrs=drop_xattrs)
    fileobj.writelines(cap)
    return cap.stats
