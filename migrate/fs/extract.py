"""Rebuilding a directory tree from a tar stream that may be hostile, under a policy.

:func:`apply` reads a stream (:mod:`migrate.fs.tar_reader`) sequentially and rebuilds the tree
in an existing directory. No member can make us write outside the target: the target is
walked with ``openat``-style calls and ``O_NOFOLLOW`` on every component, so a symlink in the
archive (``/bin/sh -> busybox`` is normal in a layer) is created but never followed. What an
archive may contain, and how much of it, is its :class:`ExtractPolicy`.
"""

from __future__ import annotations

import logging
import os
import shutil
import stat
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Final

from migrate.core.errors import BundleInvalid, DiskFull, TransferFailed
from migrate.fs.dirfd import DIR_FLAGS, Dirs, UnsafeParent, open_dir, pwrite_all, write_all
from migrate.fs.files import SPACE_ERRNOS
from migrate.fs.stats import ApplyStats, Tally
from migrate.fs.tar import BLK, CHR, DIR, FIFO, LNK, MAX_SPARSE_SEGMENTS, REG, SYM
from migrate.fs.tar_reader import Input, Member, Parser, Readable

log = logging.getLogger(__name__)

_NEW_FILE_FLAGS: Final = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_NAME_MAX: Final = 255
_SYMLINK_MAX: Final = 4095


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


class _Extractor:
    def __init__(self, target: Path, policy: ExtractPolicy, parser: Parser) -> None:
        self._policy = policy
        self._parser = parser
        self._root_fd = os.open(target, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self._dirs = Dirs(self._root_fd)
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
        self.tally = Tally()

    def close(self) -> None:
        self._dirs.close()
        os.close(self._root_fd)

    # validation

    def _invalid(self, m: Member, reason: str) -> BundleInvalid:
        return BundleInvalid(
            f"{self._policy.name} archive: member {m.display!r}: {reason}",
            details={"member": m.display, "reason": reason},
        )

    def _parts(self, m: Member, name: bytes, what: str) -> tuple[bytes, ...]:
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

    def _check(self, m: Member) -> None:
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

    def add(self, m: Member) -> None:
        self._check(m)
        parts = self._parts(m, m.name, "name")
        if self._seen is not None:
            for i in range(1, len(parts) + 1):
                self._seen.add(parts[:i])
        try:
            self._add(m, parts)
        except UnsafeParent as e:
            raise self._invalid(
                m, f"path component {os.fsdecode(e.part)!r} is a symlink or not a directory"
            ) from None
        except OSError as e:
            if e.errno in SPACE_ERRNOS:
                raise DiskFull(f"extracting {m.display!r}: {e}") from e
            raise TransferFailed(
                f"{self._policy.name} archive: cannot extract {m.display!r}: {e}",
                details={"member": m.display},
            ) from e
        self.tally.members += 1

    def _add(self, m: Member, parts: tuple[bytes, ...]) -> None:
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
            fd = os.open(leaf, DIR_FLAGS, dir_fd=pfd)
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
        self, m: Member, pfd: int, leaf: bytes, make: Callable[[], int | None]
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

    def _mkdir(self, m: Member, pfd: int, leaf: bytes) -> None:
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

    def _regular(self, m: Member, pfd: int, leaf: bytes) -> None:
        # O_EXCL: never open something that already exists, so never write through a link.
        fd = self._create(m, pfd, leaf, lambda: os.open(leaf, _NEW_FILE_FLAGS, 0o600, dir_fd=pfd))
        assert fd is not None
        try:
            if m.sparse is None:
                for view in self._parser.data(m.size):
                    write_all(fd, view)
            else:
                for offset, length in m.sparse:
                    for view in self._parser.data(length):
                        pwrite_all(fd, view, offset)
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

    def _kept(self, m: Member, pfd: int, leaf: bytes) -> None:
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

    def _hardlink(self, m: Member, pfd: int, leaf: bytes) -> None:
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
                child = open_dir(part, src_fd)
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

    def _symlink(self, m: Member, pfd: int, leaf: bytes) -> None:
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

    def _special(self, m: Member, pfd: int, leaf: bytes) -> None:
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

    def _xattrs(self, m: Member) -> list[tuple[bytes, bytes]]:
        if self._xattr_prefixes is None:
            return list(m.xattrs)
        kept = [(k, v) for k, v in m.xattrs if k.startswith(self._xattr_prefixes)]
        if len(kept) != len(m.xattrs):
            log.debug("%s: skipped xattrs not allowed by policy %s", m.display, self._policy.name)
        return kept

    def _owner_and_xattrs_fd(self, fd: int, m: Member) -> None:
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
                    child = open_dir(key, dfd)
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
                fd = os.open(parts[-1], DIR_FLAGS, dir_fd=pfd)
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
    inp = Input(stream, policy)
    parser = Parser(inp, policy)
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
