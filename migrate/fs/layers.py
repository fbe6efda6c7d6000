"""Directory trees as tar streams: capture a container's read-write layer, apply it elsewhere.

``capture`` walks a directory (an overlay2 upper dir, a CRIU image dir, a volume) and streams a
POSIX pax tar of it; ``apply`` / ``extract`` read such a stream sequentially and rebuild the tree.

Both directions are our own small tar codec rather than :mod:`tarfile`:

- names, link targets and xattr values are kept as bytes end to end (non-UTF-8 names, binary
  ``security.capability`` values), with nanosecond mtimes in pax records;
- the reader is meant for hostile input: every header size is capped before anything is read
  into memory, pax records are parsed in one linear pass, and no member can make us write
  outside the target. The target is walked with ``openat``-style calls and ``O_NOFOLLOW`` on
  every component, so a symlink in the archive (``/bin/sh -> busybox`` is normal in a layer) is
  created but never followed.

Sparse files are captured with ``SEEK_DATA``/``SEEK_HOLE`` and written in GNU sparse format
1.0 (pax), which GNU tar and Python's tarfile also read; holes are neither read, sent nor
written.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import stat
import struct
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import BinaryIO, Final, Protocol, TypeVar

from migrate.core.errors import BundleInvalid, DiskFull, TransferFailed

log = logging.getLogger(__name__)

BLOCK: Final = 512
DEFAULT_CHUNK_SIZE: Final = 1 << 20
READ_SIZE: Final = 1 << 20
# Above this many data segments a sparse file is sent dense: the map would dwarf its benefit
# and every reader has to hold it in memory.
MAX_SPARSE_SEGMENTS: Final = 1 << 16

# overlayfs records these about the *host's* lower filesystems (file handles, index state). On
# another host they are at best ignored and at worst decoded against an unrelated filesystem
# that happens to share a UUID (cloned VM images), so they are not carried by default.
OVERLAY_HOST_XATTRS: Final = frozenset(
    f"{ns}.overlay.{key}"
    for ns in ("trusted", "user")
    for key in ("origin", "impure", "nlink", "upper", "uuid")
)

_ZERO_BLOCK: Final = bytes(BLOCK)
# name mode uid gid size mtime chksum type linkname magic version uname gname major minor
# prefix; "s" fields are NUL-padded (and cut) to their width.
_USTAR: Final = struct.Struct("100s8s8s8s12s12s8sc100s6s2s32s32s8s8s167s")
_DIR_FLAGS: Final = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NEW_FILE_FLAGS: Final = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_SPACE_ERRNOS: Final = frozenset({errno.ENOSPC, errno.EDQUOT})
# What a name of a tree in use may do between two of our calls: vanish, or be replaced by
# something of another type.
_LIVE_ERRNOS: Final = frozenset({errno.ENOENT, errno.ENOTDIR, errno.ELOOP, errno.ENXIO})
_NAME_MAX: Final = 255
_SYMLINK_MAX: Final = 4095
_MAX_META_HEADERS: Final = 16  # pax/longname headers in a row before a real member
_MAX_NS: Final = 1 << 63

# Tar type flags (normalised: "\0" and "7" are read as regular files).
REG: Final = b"0"
LNK: Final = b"1"
SYM: Final = b"2"
CHR: Final = b"3"
BLK: Final = b"4"
DIR: Final = b"5"
FIFO: Final = b"6"
_PAX: Final = b"x"
_PAX_GLOBAL: Final = b"g"
_GNU_LONGNAME: Final = b"L"
_GNU_LONGLINK: Final = b"K"

_XATTR_PREFIX: Final = b"SCHILY.xattr."
# Our own pax keyword (vendor prefix, ignored by other readers): in a rootfs delta, a regular
# file whose data the destination already has from the pre-copy; the value is its size.
_KEEP_KEY: Final = b"MIGRATE.keep"


class Readable(Protocol):
    """What apply needs from its input: sequential reads (a pipe, a socket stream, a
    decompressor, a protocol stream reader); short reads are fine, b"" means the end."""

    def read(self, n: int = ..., /) -> bytes: ...


# --- policies and statistics ------------------------------------------------------------


@dataclass(frozen=True)
class ExtractPolicy:
    """What an archive may contain and how much of it; anything else raises BundleInvalid.

    Byte caps count data actually stored (holes of sparse files are free); callers that know
    the declared size (manifest) should tighten them with ``dataclasses.replace``.
    """

    name: str
    allow_whiteouts: bool = False  # char device 0:0, the overlay whiteout
    allow_devices: bool = False  # any other char/block device
    allow_fifos: bool = True
    xattr_prefixes: tuple[str, ...] | None = None  # None: every namespace; others are skipped
    restore_owner: bool = True
    overwrite: bool = False  # replace existing non-directories (never directories)
    # A frozen delta over a pre-copy (migrate/fs/precopy.py): "keep" members name files already
    # here, anything in the way of a member is replaced (directories too), directories get
    # exactly the member's xattrs, and every name the archive does not mention is removed.
    delta: bool = False
    max_members: int = 1_000_000
    max_member_bytes: int = 1 << 40
    max_total_bytes: int = 1 << 40
    max_apparent_bytes: int = 1 << 44  # logical size of one (sparse) file; ext4's limit
    max_header_bytes: int = 1 << 20  # one pax / long-name header
    max_path_bytes: int = 4096
    max_depth: int = 256
    max_sparse_segments: int = MAX_SPARSE_SEGMENTS


# A container's RW layer: whiteouts yes, real devices no (a layer has no business shipping
# /dev nodes; the runtime creates them).
ROOTFS_POLICY: Final = ExtractPolicy(name="rootfs", allow_whiteouts=True, max_members=2_000_000)
# CRIU image directories: plain files and directories, nothing else, no xattrs.
CHECKPOINT_POLICY: Final = ExtractPolicy(
    name="checkpoint", allow_fifos=False, xattr_prefixes=(), max_members=100_000
)
VOLUME_POLICY: Final = ExtractPolicy(name="volume")
ROOTFS_DELTA_POLICY: Final = replace(ROOTFS_POLICY, name="rootfs delta", overwrite=True, delta=True)
VOLUME_DELTA_POLICY: Final = replace(VOLUME_POLICY, name="volume delta", overwrite=True, delta=True)


@dataclass(frozen=True)
class CaptureStats:
    members: int = 0
    files: int = 0  # regular files with their own data (hard links excluded)
    bytes: int = 0  # file data put in the stream (holes excluded)
    stream_bytes: int = 0  # tar bytes produced so far
    hardlinks: int = 0
    whiteouts: int = 0
    sparse_files: int = 0
    skipped: int = 0  # sockets and other types tar cannot carry
    kept: int = 0  # regular files sent as "keep" (the destination has them from a pre-copy)
    kept_bytes: int = 0  # their size
    vanished: int = 0  # names gone or replaced while a live tree was read (pre-copy)


@dataclass(frozen=True)
class ApplyStats:
    members: int = 0
    files: int = 0
    bytes: int = 0
    stream_bytes: int = 0
    hardlinks: int = 0
    whiteouts: int = 0
    sparse_files: int = 0
    kept: int = 0  # delta: files left as the pre-copy wrote them
    removed: int = 0  # delta: names removed (gone on the source since the pre-copy)


_S = TypeVar("_S", CaptureStats, ApplyStats)


class _Tally:
    """Mutable counters behind the frozen stats (updated per member, snapshotted on demand)."""

    def __init__(self) -> None:
        self.members = self.files = self.bytes = self.stream_bytes = 0
        self.hardlinks = self.whiteouts = self.sparse_files = self.skipped = 0
        self.kept = self.kept_bytes = self.vanished = self.removed = 0

    def snapshot(self, cls: type[_S]) -> _S:
        return cls(**{f.name: getattr(self, f.name) for f in fields(cls)})


# --- tar encoding -----------------------------------------------------------------------


def _pax_record(key: bytes, value: bytes) -> bytes:
    body = b" " + key + b"=" + value + b"\n"
    # The length prefix counts its own digits.
    n = len(body) + 1
    while len(str(n)) + len(body) != n:
        n = len(str(n)) + len(body)
    return str(n).encode() + body


def _is_utf8(b: bytes) -> bool:
    try:
        b.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _format_ns(ns: int) -> bytes:
    sign = "-" if ns < 0 else ""
    sec, frac = divmod(abs(ns), 1_000_000_000)
    if not frac:
        return f"{sign}{sec}".encode()
    return f"{sign}{sec}.{frac:09d}".rstrip("0").encode()


def _ustar(
    name: bytes,
    typeflag: bytes,
    *,
    mode: int = 0o644,
    uid: int = 0,
    gid: int = 0,
    size: int = 0,
    mtime: int = 0,
    linkname: bytes = b"",
    devmajor: int = 0,
    devminor: int = 0,
) -> bytes:
    # One C-level pack: this runs for every member of a layer with 10^5 files.
    h = _USTAR.pack(
        name,
        b"%07o" % mode,
        b"%07o" % uid,
        b"%07o" % gid,
        b"%011o" % size,
        b"%011o" % mtime,
        b" " * 8,
        typeflag,
        linkname,
        b"ustar\x00",
        b"00",
        b"",
        b"",
        b"%07o" % devmajor,
        b"%07o" % devminor,
        b"",
    )
    return h[:148] + b"%06o\0 " % sum(h) + h[156:]


def _padding(size: int) -> int:
    return -size % BLOCK


@dataclass(frozen=True)
class _Meta:
    mode: int
    uid: int
    gid: int
    mtime_ns: int

    @classmethod
    def of(cls, st: os.stat_result) -> _Meta:
        return cls(stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, st.st_mtime_ns)


def _encode_header(
    name: bytes,
    typeflag: bytes,
    meta: _Meta,
    *,
    size: int = 0,
    linkname: bytes = b"",
    devmajor: int = 0,
    devminor: int = 0,
    xattrs: tuple[tuple[bytes, bytes], ...] = (),
    sparse_keys: tuple[tuple[bytes, bytes], ...] = (),
    keep: int | None = None,
) -> bytes:
    records: list[bytes] = []
    binary = False
    if len(name) > 100 or not name.isascii():
        records.append(_pax_record(b"path", name))
        binary |= not _is_utf8(name)
    if len(linkname) > 100 or not linkname.isascii():
        records.append(_pax_record(b"linkpath", linkname))
        binary |= not _is_utf8(linkname)
    # After "path": readers that apply records in order (tarfile) then let the real name win.
    for key, value in sparse_keys:
        records.append(_pax_record(key, value))
        binary |= not _is_utf8(value)
    numbers = {b"uid": meta.uid, b"gid": meta.gid, b"size": size}
    for field_name, number in numbers.items():
        if number >= 8 ** (11 if field_name == b"size" else 7):
            # Too wide for the octal field: the pax record carries it, the field says 0.
            records.append(_pax_record(field_name, b"%d" % number))
            numbers[field_name] = 0
    secs = meta.mtime_ns // 1_000_000_000
    if meta.mtime_ns % 1_000_000_000 or not 0 <= secs < 8**11:
        records.append(_pax_record(b"mtime", _format_ns(meta.mtime_ns)))
        secs = min(max(secs, 0), 8**11 - 1)
    for key, value in xattrs:
        records.append(_pax_record(_XATTR_PREFIX + key, value))
    if keep is not None:
        records.append(_pax_record(_KEEP_KEY, b"%d" % keep))
    header = _ustar(
        name,
        typeflag,
        mode=meta.mode,
        uid=numbers[b"uid"],
        gid=numbers[b"gid"],
        size=numbers[b"size"],
        mtime=secs,
        linkname=linkname,
        devmajor=devmajor,
        devminor=devminor,
    )
    if not records:
        return header
    if binary:
        # POSIX: path/linkpath values are UTF-8 unless this says they are raw bytes.
        records.insert(0, _pax_record(b"hdrcharset", b"BINARY"))
    body = b"".join(records)
    return (
        _ustar(b"././@PaxHeader", _PAX, size=len(body)) + body + bytes(_padding(len(body))) + header
    )


# --- capture ----------------------------------------------------------------------------


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
        self._tally = _Tally()
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
            if e.errno in _SPACE_ERRNOS:
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
        yield _ZERO_BLOCK * 2

    def _entry(
        self,
        rel: bytes,
        path: bytes,
        st: os.stat_result,
        first_name: dict[tuple[int, int], bytes],
    ) -> Iterator[bytes]:
        mode = st.st_mode
        meta = _Meta.of(st)
        whiteout = stat.S_ISCHR(mode) and st.st_rdev == 0
        if stat.S_ISDIR(mode):
            self._tally.members += 1
            yield _encode_header(
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
                yield _encode_header(rel, LNK, meta, linkname=first_name[key])
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
        meta = _Meta.of(st)
        whiteout = stat.S_ISCHR(mode) and st.st_rdev == 0
        if stat.S_ISREG(mode):
            if self._keep is not None and self._keep(rel, st):
                self._tally.members += 1
                self._tally.kept += 1
                self._tally.kept_bytes += st.st_size
                yield _encode_header(rel, REG, meta, keep=st.st_size)
                return
            yield from self._regular(rel, path, st)
            return
        if stat.S_ISLNK(mode):
            header = _encode_header(
                rel,
                SYM,
                meta,
                linkname=os.readlink(path),
                xattrs=_read_xattrs(path, self._drop, rel),
            )
        elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
            self._tally.whiteouts += whiteout
            header = _encode_header(
                rel,
                CHR if stat.S_ISCHR(mode) else BLK,
                meta,
                devmajor=os.major(st.st_rdev),
                devminor=os.minor(st.st_rdev),
                xattrs=_read_xattrs(path, self._drop, rel),
            )
        else:
            header = _encode_header(rel, FIFO, meta, xattrs=_read_xattrs(path, self._drop, rel))
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
            meta = _Meta.of(fst)
            self._tally.members += 1
            self._tally.files += 1
            self._whole = True
            if segments is None:
                yield _encode_header(rel, REG, meta, size=size, xattrs=xattrs)
                yield from self._data(fd, rel, 0, size)
                self._tally.bytes += size
                yield bytes(_padding(size))
                self._recorded(rel, fst)
                return
            sparse_map = b"%d\n" % len(segments) + b"".join(b"%d\n%d\n" % seg for seg in segments)
            sparse_map += bytes(_padding(len(sparse_map)))
            stored = sum(length for _, length in segments)
            head, _, base = rel.rpartition(b"/")
            # The name a reader that does not know the format extracts the raw data under.
            stand_in = (head + b"/" if head else b"") + b"GNUSparseFile.0/" + base
            yield _encode_header(
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
            yield bytes(_padding(stored))
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


def capture(
    root: Path,
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    drop_xattrs: frozenset[str] = OVERLAY_HOST_XATTRS,
    live: bool = False,
    record: RecordFn | None = None,
    keep: KeepFn | None = None,
) -> Capture:
    """Stream a pax tar of ``root`` (any directory) as chunks; see :class:`Capture`."""
    return Capture(
        root, chunk_size=chunk_size, drop_xattrs=drop_xattrs, live=live, record=record, keep=keep
    )


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


# --- parsing (hostile input) ------------------------------------------------------------


@dataclass(frozen=True)
class _Header:
    """The fields of one 512-byte header block, undecoded."""

    name: bytes
    type: bytes
    mode: int
    uid: int
    gid: int
    size: int
    mtime: int
    linkname: bytes
    devmajor: int
    devminor: int


@dataclass(frozen=True)
class _Member:
    name: bytes
    type: bytes
    mode: int
    uid: int
    gid: int
    size: int  # data bytes that follow the header (after any sparse map)
    mtime_ns: int
    linkname: bytes
    devmajor: int
    devminor: int
    xattrs: tuple[tuple[bytes, bytes], ...]
    sparse: tuple[tuple[int, int], ...] | None  # data segments (offset, length)
    apparent_size: int  # logical file size (== size unless sparse)
    keep: int | None = None  # delta: the file is already at the target, of this size

    @property
    def display(self) -> str:
        return os.fsdecode(self.name)


class _Input:
    """Sequential, buffered reads from a non-seekable stream; counts the bytes consumed."""

    def __init__(self, stream: Readable, policy: ExtractPolicy) -> None:
        self._stream = stream
        self._policy = policy
        self._buf = b""
        self._pos = 0
        self.consumed = 0

    def take(self, n: int) -> memoryview:
        """Between 1 and n bytes (n > 0), as a view that stays valid."""
        if self._pos >= len(self._buf):
            data = self._stream.read(READ_SIZE)
            if not data:
                raise BundleInvalid(
                    f"{self._policy.name} archive is truncated at byte {self.consumed}",
                    details={"offset": self.consumed},
                )
            self._buf = bytes(data)
            self._pos = 0
        end = min(len(self._buf), self._pos + n)
        view = memoryview(self._buf)[self._pos : end]
        self.consumed += end - self._pos
        self._pos = end
        return view

    def exact(self, n: int) -> bytes:
        if len(self._buf) - self._pos >= n:
            out = self._buf[self._pos : self._pos + n]
            self._pos += n
            self.consumed += n
            return out
        parts: list[memoryview] = []
        while n:
            view = self.take(n)
            parts.append(view)
            n -= len(view)
        return b"".join(parts)

    def at_eof(self) -> bool:
        if self._pos < len(self._buf):
            return False
        data = self._stream.read(READ_SIZE)
        if not data:
            return True
        self._buf = bytes(data)
        self._pos = 0
        return False

    def skip(self, n: int) -> None:
        while n:
            n -= len(self.take(n))


def _number(field: bytes, what: str) -> int:
    if field and field[0] & 0x80:
        # GNU base-256; 0xff marks a negative number, which no field of ours may hold.
        if field[0] == 0xFF:
            raise ValueError(f"negative {what}")
        return int.from_bytes(bytes([field[0] & 0x7F]) + field[1:], "big")
    text = field.split(b"\0", 1)[0].strip(b" ")
    if not text:
        return 0
    if text.translate(None, b"01234567"):
        raise ValueError(f"bad octal {what} {text!r}")
    return int(text, 8)


def _decimal(value: bytes, what: str) -> int:
    if not value.isdigit() or len(value) > 20:
        raise ValueError(f"bad {what} {value!r}")
    return int(value)


def _parse_ns(value: bytes) -> int:
    neg = value.startswith(b"-")
    whole, _, frac = value[neg:].partition(b".")
    if not whole.isdigit() or len(whole) > 12 or (frac and not frac.isdigit()):
        raise ValueError(f"bad mtime {value!r}")
    ns = int(whole) * 1_000_000_000 + int(frac[:9].ljust(9, b"0") or b"0")
    return -ns if neg else ns


def _parse_pax(data: bytes) -> dict[bytes, bytes]:
    """One linear pass over "LEN KEY=VALUE\\n" records."""
    out: dict[bytes, bytes] = {}
    pos, end = 0, len(data)
    while pos < end:
        space = data.find(b" ", pos, min(end, pos + 21))
        if space <= pos:
            if not data[pos:].strip(b"\0"):
                break  # NUL padding some writers leave
            raise ValueError("malformed pax record length")
        length_text = data[pos:space]
        if not length_text.isdigit():
            raise ValueError("malformed pax record length")
        length = int(length_text)
        stop = pos + length
        if stop > end or length < len(length_text) + 4 or data[stop - 1] != 0x0A:
            raise ValueError("malformed pax record")
        key, eq, value = data[space + 1 : stop - 1].partition(b"=")
        if not eq or not key:
            raise ValueError("malformed pax record")
        out[key] = value
        pos = stop
    return out


class _Parser:
    """Yields members of a tar stream; their data is read through ``data``."""

    def __init__(self, inp: _Input, policy: ExtractPolicy) -> None:
        self._inp = inp
        self._policy = policy
        self._unread = 0  # data of the current member not consumed yet
        self._pad = 0

    def _invalid(self, reason: str, name: bytes | None = None) -> BundleInvalid:
        where = f" member {os.fsdecode(name)!r}:" if name is not None else ""
        details: dict[str, object] = {"reason": reason, "offset": self._inp.consumed}
        if name is not None:
            details["member"] = os.fsdecode(name)
        return BundleInvalid(f"{self._policy.name} archive:{where} {reason}", details=details)

    def data(self, n: int) -> Iterator[memoryview]:
        """The next n bytes of the current member's data."""
        if n > self._unread:
            raise RuntimeError("read past the member's data")
        self._unread -= n
        while n:
            view = self._inp.take(n)
            n -= len(view)
            yield view

    def next(self) -> _Member | None:
        self._inp.skip(self._unread + self._pad)
        self._unread = self._pad = 0
        pax: dict[bytes, bytes] = {}
        long_name: bytes | None = None
        long_link: bytes | None = None
        for _ in range(_MAX_META_HEADERS + 1):
            block = self._inp.exact(BLOCK)
            if block == _ZERO_BLOCK:
                if pax or long_name is not None or long_link is not None:
                    raise self._invalid("extended header not followed by a member")
                # The marker is two zero blocks; tolerate a writer that stopped after one.
                if not self._inp.at_eof() and self._inp.exact(BLOCK) != _ZERO_BLOCK:
                    raise self._invalid("data after a zero block")
                return None
            try:
                header = self._header(block)
            except ValueError as e:
                raise self._invalid(str(e), long_name) from None
            typeflag, size = header.type, header.size
            if typeflag not in (_PAX, _PAX_GLOBAL, _GNU_LONGNAME, _GNU_LONGLINK):
                return self._member(header, pax, long_name, long_link)
            if size > self._policy.max_header_bytes:
                raise self._invalid(f"extended header of {size} bytes is over the cap")
            payload = self._inp.exact(size)
            self._inp.skip(_padding(size))
            if typeflag in (_GNU_LONGNAME, _GNU_LONGLINK):
                value = payload.split(b"\0", 1)[0]
                if typeflag == _GNU_LONGNAME:
                    long_name = value
                else:
                    long_link = value
                continue
            try:
                records = _parse_pax(payload)
            except ValueError as e:
                raise self._invalid(str(e), long_name) from None
            if typeflag == _PAX_GLOBAL:
                # Only git archive's commit comment is seen in practice; anything else would
                # silently change how later members are read.
                if set(records) - {b"comment"}:
                    raise self._invalid("global pax headers are not supported")
                continue
            pax.update(records)
        raise self._invalid("too many extended headers in a row")

    @staticmethod
    def _header(block: bytes) -> _Header:
        stored = _number(block[148:156], "checksum")
        unsigned = sum(block[:148]) + 8 * 0x20 + sum(block[156:])
        if stored != unsigned:
            # Some old writers summed signed chars.
            high = sum(1 for b in block[:148] + block[156:] if b >= 128)
            if stored != unsigned - 256 * high:
                raise ValueError("header checksum mismatch (not a tar stream, or corrupted)")
        name = block[0:100].split(b"\0", 1)[0]
        if block[257:263] == b"ustar\x00":
            prefix = block[345:500].split(b"\0", 1)[0]
            if prefix:
                name = prefix + b"/" + name
        typeflag = block[156:157]
        is_dev = typeflag in (CHR, BLK)
        return _Header(
            name=name,
            type=typeflag,
            mode=_number(block[100:108], "mode"),
            uid=_number(block[108:116], "uid"),
            gid=_number(block[116:124], "gid"),
            size=_number(block[124:136], "size"),
            mtime=_number(block[136:148], "mtime"),
            linkname=block[157:257].split(b"\0", 1)[0],
            devmajor=_number(block[329:337], "devmajor") if is_dev else 0,
            devminor=_number(block[337:345], "devminor") if is_dev else 0,
        )

    def _member(
        self,
        h: _Header,
        pax: dict[bytes, bytes],
        long_name: bytes | None,
        long_link: bytes | None,
    ) -> _Member:
        name = pax.get(b"path") or long_name or h.name
        linkname = pax.get(b"linkpath") or long_link or h.linkname
        typeflag = h.type
        try:
            size = _decimal(pax[b"size"], "size") if pax.get(b"size") else h.size
            uid = _decimal(pax[b"uid"], "uid") if pax.get(b"uid") else h.uid
            gid = _decimal(pax[b"gid"], "gid") if pax.get(b"gid") else h.gid
            mtime_ns = _parse_ns(pax[b"mtime"]) if pax.get(b"mtime") else h.mtime * 10**9
        except ValueError as e:
            raise self._invalid(str(e), name) from None
        if typeflag in (b"\0", b"7"):
            # "\0" with a trailing slash is how pre-POSIX tars wrote directories.
            typeflag = DIR if typeflag == b"\0" and name.endswith(b"/") else REG
        if typeflag not in (REG, LNK, SYM, CHR, BLK, DIR, FIFO):
            raise self._invalid(f"unsupported member type {typeflag!r}", name)
        if typeflag != REG and size:
            # Readers disagree on whether such data is skipped or read as the next header;
            # an archive relying on either is smuggling something.
            raise self._invalid(f"non-regular member carries {size} data bytes", name)
        if uid > 0xFFFF_FFFE or gid > 0xFFFF_FFFE:
            raise self._invalid("uid/gid out of range", name)
        if not -_MAX_NS < mtime_ns < _MAX_NS:
            raise self._invalid("mtime out of range", name)
        xattrs = tuple(
            (key[len(_XATTR_PREFIX) :], value)
            for key, value in pax.items()
            if key.startswith(_XATTR_PREFIX)
        )
        if any(not key or b"\0" in key for key, _ in xattrs):
            raise self._invalid("malformed xattr name", name)
        sparse = None
        apparent = size
        keep = None
        if _KEEP_KEY in pax:
            try:
                keep = _decimal(pax[_KEEP_KEY], "keep size")
            except ValueError as e:
                raise self._invalid(str(e), name) from None
            if typeflag != REG or size:
                raise self._invalid("a keep member must be an empty regular file", name)
        self._unread, self._pad = size, _padding(size)
        if typeflag == REG and any(key.startswith(b"GNU.sparse.") for key in pax):
            if pax.get(b"GNU.sparse.major") != b"1" or pax.get(b"GNU.sparse.minor") != b"0":
                raise self._invalid("only GNU sparse format 1.0 is supported", name)
            real_name = pax.get(b"GNU.sparse.name")
            if not real_name:
                raise self._invalid("sparse member without GNU.sparse.name", name)
            name = real_name
            try:
                apparent = _decimal(pax.get(b"GNU.sparse.realsize", b""), "sparse size")
            except ValueError as e:
                raise self._invalid(str(e), name) from None
            sparse, map_bytes = self._sparse_map(name, size, apparent)
            size -= map_bytes
        return _Member(
            name=name,
            type=typeflag,
            mode=h.mode & 0o7777,
            uid=uid,
            gid=gid,
            size=size,
            mtime_ns=mtime_ns,
            linkname=linkname,
            devmajor=h.devmajor,
            devminor=h.devminor,
            xattrs=xattrs,
            sparse=sparse,
            apparent_size=apparent,
            keep=keep,
        )

    def _sparse_map(
        self, name: bytes, size: int, apparent: int
    ) -> tuple[tuple[tuple[int, int], ...], int]:
        """Read the map at the start of the member's data; returns it and its length."""
        numbers: list[int] = []
        wanted = 1
        text = b""
        used = 0
        while len(numbers) < wanted:
            if used + BLOCK > size:
                raise self._invalid("sparse map runs past the member's data", name)
            text += b"".join(self.data(BLOCK))
            used += BLOCK
            *lines, text = text.split(b"\n")
            for line in lines:
                if not line.isdigit() or len(line) > 20:
                    raise self._invalid("malformed sparse map", name)
                numbers.append(int(line))
                if len(numbers) == 1:
                    if numbers[0] > self._policy.max_sparse_segments:
                        raise self._invalid("sparse map has too many segments", name)
                    wanted = 1 + 2 * numbers[0]
                if len(numbers) == wanted:
                    break
            if len(numbers) < wanted and len(text) > 20:
                raise self._invalid("malformed sparse map", name)
        segments = tuple(zip(numbers[1::2], numbers[2::2], strict=False))
        pos = 0
        for offset, length in segments:
            if offset < pos or offset + length > apparent:
                raise self._invalid("sparse map segments overlap or exceed the file", name)
            pos = offset + length
        if sum(length for _, length in segments) != size - used:
            raise self._invalid("sparse map does not match the member's data size", name)
        return segments, used


# --- extraction -------------------------------------------------------------------------


class _UnsafeParent(Exception):
    """A path component that should be a directory is a symlink or something else."""

    def __init__(self, part: bytes) -> None:
        super().__init__(part)
        self.part = part


def _open_dir(part: bytes, dir_fd: int) -> int:
    try:
        return os.open(part, _DIR_FLAGS, dir_fd=dir_fd)
    except OSError as e:
        # O_NOFOLLOW|O_DIRECTORY on a symlink fails with ELOOP or ENOTDIR: never followed.
        if e.errno in (errno.ENOTDIR, errno.ELOOP):
            raise _UnsafeParent(part) from None
        raise


class _Dirs:
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
                child = _open_dir(part, fd)
            except FileNotFoundError:
                if not create:
                    raise
                # Archives may omit parent entries; tar creates them, and so do we.
                os.mkdir(part, 0o755, dir_fd=fd)
                child = _open_dir(part, fd)
                os.chmod(child, 0o755)  # independent of the umask
            self._stack.append((part, child))
            fd = child
        return fd

    def close(self) -> None:
        while self._stack:
            os.close(self._stack.pop()[1])


def _write_all(fd: int, data: memoryview) -> None:
    while data:
        data = data[os.write(fd, data) :]


def _pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    while data:
        n = os.pwrite(fd, data, offset)
        data = data[n:]
        offset += n


class _Extractor:
    def __init__(self, target: Path, policy: ExtractPolicy, parser: _Parser) -> None:
        self._policy = policy
        self._parser = parser
        self._root_fd = os.open(target, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self._dirs = _Dirs(self._root_fd)
        # Directory mode and mtime are set last, deepest first: creating entries would bump
        # the mtime, and a read-only mode could block them.
        self._deferred: dict[tuple[bytes, ...], tuple[int, int]] = {}
        # Non-directories made by this archive: the only valid hard link targets.
        self._made: set[bytes] = set()
        self._xattr_prefixes = (
            None
            if policy.xattr_prefixes is None
            else tuple(p.encode() for p in policy.xattr_prefixes)
        )
        # Delta: every path the archive names (and their parents); the rest is removed.
        self._seen: set[tuple[bytes, ...]] | None = set() if policy.delta else None
        self.tally = _Tally()

    def close(self) -> None:
        self._dirs.close()
        os.close(self._root_fd)

    # validation

    def _invalid(self, m: _Member, reason: str) -> BundleInvalid:
        return BundleInvalid(
            f"{self._policy.name} archive: member {m.display!r}: {reason}",
            details={"member": m.display, "reason": reason},
        )

    def _parts(self, m: _Member, name: bytes, what: str) -> tuple[bytes, ...]:
        if b"\0" in name:
            raise self._invalid(m, f"{what} contains a NUL byte")
        if name.startswith(b"/"):
            raise self._invalid(m, f"{what} is absolute")
        if len(name) > self._policy.max_path_bytes:
            raise self._invalid(m, f"{what} is longer than {self._policy.max_path_bytes} bytes")
        parts = tuple(p for p in name.split(b"/") if p and p != b".")
        if b".." in parts:
            raise self._invalid(m, f"{what} has a '..' component")
        if len(parts) > self._policy.max_depth:
            raise self._invalid(m, f"{what} is deeper than {self._policy.max_depth} levels")
        if any(len(p) > _NAME_MAX for p in parts):
            raise self._invalid(m, f"{what} has a component longer than {_NAME_MAX} bytes")
        return parts

    def _check(self, m: _Member) -> None:
        p = self._policy
        if self.tally.members >= p.max_members:
            raise self._invalid(m, f"more than {p.max_members} members")
        if m.type == REG:
            if m.size > p.max_member_bytes:
                raise self._invalid(m, f"{m.size} bytes is over the {p.max_member_bytes} cap")
            if self.tally.bytes + m.size > p.max_total_bytes:
                raise self._invalid(m, f"archive holds more than {p.max_total_bytes} bytes")
            if m.apparent_size > p.max_apparent_bytes:
                raise self._invalid(m, f"apparent size {m.apparent_size} is over the cap")
        elif m.type in (CHR, BLK):
            whiteout = m.type == CHR and m.devmajor == 0 and m.devminor == 0
            allowed = p.allow_devices or (whiteout and p.allow_whiteouts)
            if not allowed:
                kind = "whiteout" if whiteout else f"device {m.devmajor}:{m.devminor}"
                raise self._invalid(m, f"{kind} not allowed in a {p.name} archive")
        elif m.type == FIFO and not p.allow_fifos:
            raise self._invalid(m, f"FIFO not allowed in a {p.name} archive")
        if m.keep is not None and not p.delta:
            raise self._invalid(m, f"keep member in a {p.name} archive (only in a delta)")

    # extraction

    def add(self, m: _Member) -> None:
        self._check(m)
        parts = self._parts(m, m.name, "name")
        if self._seen is not None:
            for i in range(1, len(parts) + 1):
                self._seen.add(parts[:i])
        try:
            self._add(m, parts)
        except _UnsafeParent as e:
            raise self._invalid(
                m, f"path component {os.fsdecode(e.part)!r} is a symlink or not a directory"
            ) from None
        except OSError as e:
            if e.errno in _SPACE_ERRNOS:
                raise DiskFull(f"extracting {m.display!r}: {e}") from e
            raise TransferFailed(
                f"{self._policy.name} archive: cannot extract {m.display!r}: {e}",
                details={"member": m.display},
            ) from e
        self.tally.members += 1

    def _add(self, m: _Member, parts: tuple[bytes, ...]) -> None:
        if not parts:
            if m.type != DIR:
                raise self._invalid(m, "the archive root must be a directory")
            self._owner_and_xattrs_fd(self._root_fd, m)
            self._deferred[parts] = (m.mode, m.mtime_ns)
            return
        pfd = self._dirs.enter(parts[:-1], create=True)
        leaf = parts[-1]
        if m.type == DIR:
            self._mkdir(m, pfd, leaf)
            fd = os.open(leaf, _DIR_FLAGS, dir_fd=pfd)
            try:
                self._owner_and_xattrs_fd(fd, m)
            finally:
                os.close(fd)
            self._deferred[parts] = (m.mode, m.mtime_ns)
            return
        if m.keep is not None:
            self._kept(m, pfd, leaf)
        elif m.type == REG:
            self._regular(m, pfd, leaf)
        elif m.type == LNK:
            self._hardlink(m, pfd, leaf)
        elif m.type == SYM:
            self._symlink(m, pfd, leaf)
        else:
            self._special(m, pfd, leaf)
        self._made.add(b"/".join(parts))

    def _create(
        self, m: _Member, pfd: int, leaf: bytes, make: Callable[[], int | None]
    ) -> int | None:
        try:
            return make()
        except FileExistsError:
            st = os.stat(leaf, dir_fd=pfd, follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode):
                if not self._policy.delta:
                    raise self._invalid(m, "would replace a directory") from None
                # A directory of the pre-copy that became something else: rmtree works on
                # fds and never follows a symlink inside.
                shutil.rmtree(leaf, dir_fd=pfd)
                return make()
            if not self._policy.overwrite:
                raise self._invalid(m, "already exists (duplicate member)") from None
            os.unlink(leaf, dir_fd=pfd)
            return make()

    def _mkdir(self, m: _Member, pfd: int, leaf: bytes) -> None:
        try:
            os.mkdir(leaf, 0o700, dir_fd=pfd)
        except FileExistsError:
            st = os.stat(leaf, dir_fd=pfd, follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode):
                return  # a repeated directory entry, or one made implicitly: merge
            if not self._policy.overwrite:
                raise self._invalid(m, "already exists as a non-directory") from None
            os.unlink(leaf, dir_fd=pfd)
            os.mkdir(leaf, 0o700, dir_fd=pfd)

    def _regular(self, m: _Member, pfd: int, leaf: bytes) -> None:
        # O_EXCL: never open something that already exists, so never write through a link.
        fd = self._create(m, pfd, leaf, lambda: os.open(leaf, _NEW_FILE_FLAGS, 0o600, dir_fd=pfd))
        assert fd is not None
        try:
            if m.sparse is None:
                for view in self._parser.data(m.size):
                    _write_all(fd, view)
            else:
                for offset, length in m.sparse:
                    for view in self._parser.data(length):
                        _pwrite_all(fd, view, offset)
                        offset += len(view)
                os.ftruncate(fd, m.apparent_size)
                self.tally.sparse_files += 1
            # After the data: writing clears setuid bits and security.capability.
            self._owner_and_xattrs_fd(fd, m)
            os.chmod(fd, m.mode)
            os.utime(fd, ns=(m.mtime_ns, m.mtime_ns))
        finally:
            os.close(fd)
        self.tally.files += 1
        self.tally.bytes += m.size

    def _kept(self, m: _Member, pfd: int, leaf: bytes) -> None:
        """A file the pre-copy put here and that did not change since: its data, owner, mode,
        mtime and xattrs are already right (any change to them would have changed its ctime
        on the source). Only checked: it must still be the regular file of that size."""
        try:
            st = os.stat(leaf, dir_fd=pfd, follow_symlinks=False)
        except FileNotFoundError:
            st = None
        if st is None or not stat.S_ISREG(st.st_mode) or st.st_size != m.keep:
            raise TransferFailed(
                f"{self._policy.name}: {m.display!r} should be here from the pre-copy "
                f"({m.keep} bytes) but is not",
                details={"member": m.display},
            )
        self.tally.kept += 1

    def _hardlink(self, m: _Member, pfd: int, leaf: bytes) -> None:
        target = self._parts(m, m.linkname, "hard link target")
        if not target or b"/".join(target) not in self._made:
            raise self._invalid(
                m, f"hard link to {os.fsdecode(m.linkname)!r}, not an earlier member"
            )
        # The target's parents are walked like any other path (no symlinks), separately
        # from the cached stack that holds the link's own parent.
        src_fd = os.dup(self._root_fd)
        try:
            for part in target[:-1]:
                child = _open_dir(part, src_fd)
                os.close(src_fd)
                src_fd = child
            self._create(
                m,
                pfd,
                leaf,
                lambda: os.link(
                    target[-1], leaf, src_dir_fd=src_fd, dst_dir_fd=pfd, follow_symlinks=False
                ),
            )
        finally:
            os.close(src_fd)
        self.tally.hardlinks += 1

    def _symlink(self, m: _Member, pfd: int, leaf: bytes) -> None:
        target = m.linkname
        if not target or b"\0" in target or len(target) > _SYMLINK_MAX:
            raise self._invalid(m, "invalid symlink target")
        # Any target is fine, absolute or dangling: nothing below ever follows it.
        self._create(m, pfd, leaf, lambda: os.symlink(target, leaf, dir_fd=pfd))
        if self._policy.restore_owner:
            os.chown(leaf, m.uid, m.gid, dir_fd=pfd, follow_symlinks=False)
        # setxattr has no *at form; /proc/self/fd/N resolves to the parent we hold, and the
        # last component is not followed.
        proc_path = b"/proc/self/fd/%d/%s" % (pfd, leaf)
        for key, value in self._xattrs(m):
            os.setxattr(proc_path, key, value, follow_symlinks=False)
        os.utime(leaf, ns=(m.mtime_ns, m.mtime_ns), dir_fd=pfd, follow_symlinks=False)

    def _special(self, m: _Member, pfd: int, leaf: bytes) -> None:
        if m.type == FIFO:
            fmt = stat.S_IFIFO
            self._create(m, pfd, leaf, lambda: os.mkfifo(leaf, 0o600, dir_fd=pfd))
        else:
            fmt = stat.S_IFCHR if m.type == CHR else stat.S_IFBLK
            dev = os.makedev(m.devmajor, m.devminor)
            self._create(m, pfd, leaf, lambda: os.mknod(leaf, 0o600 | fmt, dev, dir_fd=pfd))
            self.tally.whiteouts += m.type == CHR and dev == 0
        # There is no fchmod for a FIFO or device we must not open for I/O; an O_PATH fd
        # pins the inode, and /proc/self/fd/N reaches exactly that inode.
        fd = os.open(leaf, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=pfd)
        try:
            if stat.S_IFMT(os.fstat(fd).st_mode) != fmt:
                raise self._invalid(m, "changed while being extracted")
            proc_path = b"/proc/self/fd/%d" % fd
            if self._policy.restore_owner:
                os.chown(proc_path, m.uid, m.gid)
            for key, value in self._xattrs(m):
                os.setxattr(proc_path, key, value)
            os.chmod(proc_path, m.mode)
            os.utime(proc_path, ns=(m.mtime_ns, m.mtime_ns))
        finally:
            os.close(fd)

    def _xattrs(self, m: _Member) -> list[tuple[bytes, bytes]]:
        if self._xattr_prefixes is None:
            return list(m.xattrs)
        kept = [(k, v) for k, v in m.xattrs if k.startswith(self._xattr_prefixes)]
        if len(kept) != len(m.xattrs):
            log.debug("%s: skipped xattrs not allowed by policy %s", m.display, self._policy.name)
        return kept

    def _owner_and_xattrs_fd(self, fd: int, m: _Member) -> None:
        # chown first: it drops security.capability, which must then be set again.
        if self._policy.restore_owner:
            os.chown(fd, m.uid, m.gid)
        wanted = self._xattrs(m)
        if self._policy.delta:
            # A directory merged with its pre-copied self: drop xattrs it lost since (the
            # LSM's own security.* labels are the file system's, not the archive's).
            keys = {k for k, _ in wanted}
            for name in os.listxattr(fd):
                key = os.fsencode(name)
                if key not in keys and not key.startswith(b"security."):
                    os.removexattr(fd, name)
        for key, value in wanted:
            os.setxattr(fd, key, value)

    def prune(self) -> None:
        """Delta: remove every name under the target the archive did not mention (deleted or
        renamed on the source since the pre-copy). Before ``finish``: removals change the
        directories' mtimes, which finish sets last."""
        if self._seen is None:
            return
        seen = self._seen

        def walk(dfd: int, prefix: tuple[bytes, ...]) -> None:
            for name in os.listdir(dfd):
                key = os.fsencode(name)
                parts = (*prefix, key)
                st = os.stat(key, dir_fd=dfd, follow_symlinks=False)
                if parts not in seen:
                    if stat.S_ISDIR(st.st_mode):
                        shutil.rmtree(key, dir_fd=dfd)
                    else:
                        os.unlink(key, dir_fd=dfd)
                    self.tally.removed += 1
                elif stat.S_ISDIR(st.st_mode):
                    child = _open_dir(key, dfd)
                    try:
                        walk(child, parts)
                    finally:
                        os.close(child)

        try:
            walk(self._root_fd, ())
        except OSError as e:
            raise TransferFailed(f"{self._policy.name}: removing deleted names: {e}") from e

    def finish(self) -> None:
        try:
            for parts, (mode, mtime_ns) in reversed(self._deferred.items()):
                if not parts:
                    os.chmod(self._root_fd, mode)
                    os.utime(self._root_fd, ns=(mtime_ns, mtime_ns))
                    continue
                pfd = self._dirs.enter(parts[:-1], create=False)
                fd = os.open(parts[-1], _DIR_FLAGS, dir_fd=pfd)
                try:
                    os.chmod(fd, mode)
                    os.utime(fd, ns=(mtime_ns, mtime_ns))
                finally:
                    os.close(fd)
        except OSError as e:
            raise TransferFailed(
                f"{self._policy.name} archive: cannot set directory metadata: {e}"
            ) from e


def apply(stream: Readable, target: Path, *, policy: ExtractPolicy) -> ApplyStats:
    """Extract a tar stream (read sequentially, never seeked) into the existing directory
    ``target``, restoring owners, modes, mtimes, xattrs, links, FIFOs, devices allowed by
    ``policy`` and sparse files.

    Anything the policy refuses raises BundleInvalid naming the member; nothing is ever
    written outside ``target``. On any error the target is left partly filled: the caller
    owns it and removes it (rollback).
    """
    if not os.path.isdir("/proc/self/fd"):
        raise TransferFailed("extraction needs /proc mounted (to set metadata without paths)")
    inp = _Input(stream, policy)
    parser = _Parser(inp, policy)
    extractor = _Extractor(target, policy, parser)
    try:
        while (member := parser.next()) is not None:
            extractor.add(member)
        extractor.prune()
        extractor.finish()
    finally:
        extractor.close()
    extractor.tally.stream_bytes = inp.consumed
    stats = extractor.tally.snapshot(ApplyStats)
    log.debug("extracted %s archive into %s: %s", policy.name, target, stats)
    return stats


def extract(
    stream: Readable, target: Path, *, policy: ExtractPolicy = CHECKPOINT_POLICY
) -> ApplyStats:
    """``apply`` for archives other than a rootfs diff (checkpoint images by default)."""
    return apply(stream, target, policy=policy)
