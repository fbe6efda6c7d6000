"""Portable checkpoint bundles: one streamed, zstd-compressed tar with a checksummed manifest.

Layout of the (decompressed) tar, in this order (docs/bundle.md):

``manifest.sha256``
    ``"<sha256 of manifest.json> <size of manifest.json>\\n"`` -- the manifest's own checksum.
``manifest.json``
    schema version, free-form metadata (container, image, versions, host, time) and the list
    of every other member with its size and sha256.
members
    regular files only, in manifest order (``checkpoint/...``, ``rootfs-diff.tar``, ...).

The tar is plain ustar in migrate's own codec (:mod:`migrate.fs.tar`) rather than
:mod:`tarfile`, because the reader must refuse anything unexpected (links, devices, pax headers
that make it allocate what a hostile header claims) and the writer must never hold a member in
memory. The members' *contents* (the rootfs diff, the image layers) are checked by their own
extractors (:mod:`migrate.fs.extract`); this module guarantees they are exactly the bytes that
were exported.

Reading happens in two passes: :func:`verify` reads the whole bundle and checks everything
while writing nothing; :func:`extract` runs it, then writes into a fresh directory, hashing
again while writing (the file could change between the passes) and removing the directory on
any mismatch.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import zstandard

from migrate.core.errors import BundleInvalid
from migrate.fs import tar
from migrate.fs.files import atomic_file, read_chunks

SCHEMA_VERSION = 1
CHECKSUM_NAME = "manifest.sha256"
MANIFEST_NAME = "manifest.json"
# A manifest lists a few thousand members at most; anything bigger is hostile.
MAX_MANIFEST_BYTES = 8 * 1024 * 1024
# The members a container bundle holds besides the manifest (written by source/portable.py,
# read by agent/importer.py: both ends of the format, so it is defined here).
IMAGE_MEMBER = "image/docker-save.tar"
ROOTFS_MEMBER = "rootfs-diff.tar"
LOG_MEMBER = "container.log"
VOLUME_PREFIX = "volumes/"
CHECKPOINT_PREFIX = "checkpoint/"
_CHUNK = 1024 * 1024
_BLOCK = tar.BLOCK
_NAME_MAX = 100  # ustar name field; we never use the prefix field


@dataclass(frozen=True)
class Member:
    """One file of the bundle as the manifest declares it."""

    name: str
    size: int
    sha256: str


@dataclass(frozen=True)
class Manifest:
    """The verified manifest: schema version, metadata and members in bundle order."""

    version: int
    meta: Mapping[str, Any]
    members: tuple[Member, ...]

    def to_json(self) -> bytes:
        body = {
            "version": self.version,
            "meta": dict(self.meta),
            "members": [{"name": m.name, "size": m.size, "sha256": m.sha256} for m in self.members],
        }
        return json.dumps(body, indent=2, sort_keys=True).encode() + b"\n"

    @property
    def total_size(self) -> int:
        return sum(m.size for m in self.members)


def check_name(name: str) -> None:
    """Refuse a member name that could escape the target or collide with the manifest."""
    parts = name.split("/")
    if (
        not name
        or len(name.encode()) > _NAME_MAX
        or name.startswith("/")
        or any(p in ("", ".", "..") for p in parts)
        or "\0" in name
        or "\\" in name
        or name in (CHECKSUM_NAME, MANIFEST_NAME)
    ):
        raise BundleInvalid(
            f"bundle member {name!r}: unsafe or reserved name",
            hint="the bundle was not written by `migrate export`; do not import it",
            details={"member": name},
        )


# --- writing -------------------------------------------------------------------------------


def _hash_file(path: Path) -> tuple[int, str]:
    h = hashlib.sha256()
    size = 0
    for chunk in read_chunks(path, _CHUNK):
        h.update(chunk)
        size += len(chunk)
    return size, h.hexdigest()


def _header(name: str, size: int) -> bytes:
    # Mode 0644, owner 0:0, mtime 0 and empty device fields: the bytes every bundle has had.
    return tar.ustar(name.encode(), tar.REG, size=size, devmajor=None, devminor=None)


def _pad(size: int) -> bytes:
    return b"\0" * (-size % _BLOCK)


def write(out: IO[bytes], files: Sequence[tuple[str, Path]], meta: Mapping[str, Any]) -> Manifest:
    """Write a bundle of ``files`` (bundle name, path on disk) to ``out``.

    Each file is read twice in chunks (hash for the manifest, then copy), never whole. A file
    that changes between the two reads is refused rather than written with a wrong checksum.
    """
    members = []
    seen: set[str] = set()
    for name, path in files:
        check_name(name)
        if name in seen:
            raise BundleInvalid(f"bundle member {name!r} given twice", details={"member": name})
        seen.add(name)
        size, digest = _hash_file(path)
        members.append(Member(name, size, digest))
    manifest = Manifest(SCHEMA_VERSION, dict(meta), tuple(members))
    body = manifest.to_json()
    check = f"{hashlib.sha256(body).hexdigest()} {len(body)}\n".encode()
    cctx = zstandard.ZstdCompressor(level=3, write_checksum=True)
    with cctx.stream_writer(out, closefd=False) as z:
        for name, data in ((CHECKSUM_NAME, check), (MANIFEST_NAME, body)):
            z.write(_header(name, len(data)))
            z.write(data)
            z.write(_pad(len(data)))
        for member, (_, path) in zip(members, files, strict=True):
            z.write(_header(member.name, member.size))
            h = hashlib.sha256()
            done = 0
            for chunk in read_chunks(path, _CHUNK, limit=member.size):
                h.update(chunk)
                z.write(chunk)
                done += len(chunk)
            if done != member.size or h.hexdigest() != member.sha256:
                raise BundleInvalid(
                    f"bundle member {member.name!r} changed while it was being written",
                    details={"member": member.name},
                )
            z.write(_pad(member.size))
        z.write(b"\0" * (2 * _BLOCK))
    return manifest


def write_file(path: Path, files: Sequence[tuple[str, Path]], meta: Mapping[str, Any]) -> Manifest:
    """Write a bundle to ``path`` atomically (a temporary name, renamed when complete)."""
    with atomic_file(path) as f:
        return write(f, files, meta)


# --- reading -------------------------------------------------------------------------------


def _invalid(reason: str, member: str | None = None) -> BundleInvalid:
    where = f"bundle member {member!r}: " if member else "bundle: "
    return BundleInvalid(
        where + reason,
        hint="the bundle is damaged or was not written by `migrate export`; nothing was created",
        details={"member": member} if member else {},
    )


class _Stream:
    """Decompressed bytes of the bundle, read exactly; short reads mean truncation."""

    def __init__(self, raw: IO[bytes]) -> None:
        self._z = zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True)

    def exact(self, n: int, member: str | None) -> bytes:
        parts = []
        left = n
        try:
            while left:
                chunk = self._z.read(min(left, _CHUNK))
                if not chunk:
                    raise _invalid("truncated (the bundle ends early)", member)
                parts.append(chunk)
                left -= len(chunk)
        except zstandard.ZstdError as e:
            raise _invalid(f"corrupt compressed data ({e})", member) from e
        return b"".join(parts)

    def chunks(self, size: int, member: str) -> Iterator[bytes]:
        left = size
        while left:
            data = self.exact(min(left, _CHUNK), member)
            left -= len(data)
            yield data
        self.exact(-size % _BLOCK, member)

    def at_end(self) -> bool:
        """Only zero padding may follow the end marker (tar writers pad to a record size)."""
        try:
            while chunk := self._z.read(_CHUNK):
                if chunk.count(0) != len(chunk):
                    return False
            return True
        except zstandard.ZstdError:
            return False


def _octal(field: bytes, what: str, member: str | None) -> int:
    try:
        return tar.strict_octal(field)
    except ValueError:
        raise _invalid(f"bad {what} in tar header", member) from None


def _next_header(s: _Stream, expect: str | None = None) -> tuple[str, int] | None:
    """Parse one header; None at the end-of-archive marker. Only plain files are accepted.

    ``expect`` is the member due next, named if the bundle ends here.
    """
    hdr = s.exact(_BLOCK, expect)
    if hdr == b"\0" * _BLOCK:
        if s.exact(_BLOCK, expect) != b"\0" * _BLOCK:
            raise _invalid("damaged end-of-archive marker")
        return None
    raw_name = hdr[tar.NAME].split(b"\0", 1)[0]
    try:
        name = raw_name.decode()
    except UnicodeDecodeError:
        raise _invalid(f"member name {raw_name!r} is not UTF-8") from None
    check = _octal(hdr[tar.CHKSUM], "checksum", name)
    if check != tar.checksum(hdr):
        raise _invalid("tar header checksum mismatch", name)
    kind = hdr[tar.TYPE]
    if kind not in (tar.REG, b"\0"):
        what = {
            tar.LNK: "a hard link",
            tar.SYM: "a symlink",
            tar.CHR: "a character device",
            tar.BLK: "a block device",
            tar.DIR: "a directory",
            tar.FIFO: "a fifo",
            tar.PAX: "a pax header",
            tar.PAX_GLOBAL: "a pax header",
            tar.GNU_LONGNAME: "a GNU long name",
        }
        raise _invalid(f"is {what.get(kind, f'of type {kind!r}')}; only plain files allowed", name)
    if hdr[tar.PREFIX].strip(b"\0"):
        raise _invalid("uses the ustar prefix field (not written by migrate)", name)
    return name, _octal(hdr[tar.SIZE], "size", name)


def _read_manifest(s: _Stream) -> Manifest:
    first = _next_header(s)
    if first is None or first[0] != CHECKSUM_NAME:
        raise _invalid(f"does not start with {CHECKSUM_NAME}")
    if first[1] > 200:
        raise _invalid("far larger than declared", CHECKSUM_NAME)
    check = b"".join(s.chunks(first[1], CHECKSUM_NAME)).decode(errors="replace").split()
    if len(check) != 2 or len(check[0]) != 64 or not check[1].isdigit():
        raise _invalid("malformed", CHECKSUM_NAME)
    want_sum, want_size = check[0], int(check[1])
    second = _next_header(s)
    if second is None or second[0] != MANIFEST_NAME:
        raise _invalid(f"{MANIFEST_NAME} missing after {CHECKSUM_NAME}")
    if second[1] != want_size or second[1] > MAX_MANIFEST_BYTES:
        raise _invalid(
            f"size {second[1]} differs from the declared {want_size} (limit {MAX_MANIFEST_BYTES})",
            MANIFEST_NAME,
        )
    body = b"".join(s.chunks(second[1], MANIFEST_NAME))
    if hashlib.sha256(body).hexdigest() != want_sum:
        raise _invalid(
            f"checksum does not match {CHECKSUM_NAME} (the manifest or its checksum was modified)",
            MANIFEST_NAME,
        )
    return _parse_manifest(body)


def _parse_manifest(body: bytes) -> Manifest:
    try:
        data = json.loads(body)
        version = data["version"]
        if version != SCHEMA_VERSION:
            raise _invalid(
                f"unknown manifest version {version!r} (this migrate reads {SCHEMA_VERSION})",
                MANIFEST_NAME,
            )
        members = tuple(
            Member(str(m["name"]), int(m["size"]), str(m["sha256"])) for m in data["members"]
        )
        meta = data["meta"]
        if not isinstance(meta, dict):
            raise TypeError("meta is not an object")
    except BundleInvalid:
        raise
    except (ValueError, KeyError, TypeError) as e:
        raise _invalid(f"malformed ({e})", MANIFEST_NAME) from e
    names: set[str] = set()
    for m in members:
        check_name(m.name)
        if m.name in names or m.size < 0 or len(m.sha256) != 64:
            raise _invalid("listed twice or with a bad size/checksum", m.name)
        names.add(m.name)
    return Manifest(version, meta, members)


def _first_missing(manifest: Manifest, seen: set[str]) -> str | None:
    return next((m.name for m in manifest.members if m.name not in seen), None)


def _walk(raw: IO[bytes], sink: _Sink | None) -> Manifest:
    s = _Stream(raw)
    manifest = _read_manifest(s)
    declared = {m.name: m for m in manifest.members}
    seen: set[str] = set()
    while (entry := _next_header(s, _first_missing(manifest, seen))) is not None:
        name, size = entry
        member = declared.get(name)
        if member is None:
            raise _invalid("is not listed in the manifest (extra member)", name)
        if name in seen:
            raise _invalid("appears twice", name)
        seen.add(name)
        if size != member.size:
            raise _invalid(f"is {size} bytes but the manifest declares {member.size}", name)
        h = hashlib.sha256()
        out = sink.open(name) if sink else None
        for chunk in s.chunks(size, name):
            h.update(chunk)
            if out is not None:
                out.write(chunk)
        if out is not None:
            out.close()
        if h.hexdigest() != member.sha256:
            raise _invalid("checksum mismatch (content differs from the manifest)", name)
    missing = _first_missing(manifest, seen)
    if missing is not None:
        raise _invalid("missing from the bundle", missing)
    if not s.at_end():
        raise _invalid("data after the end-of-archive marker")
    return manifest


def verify(path: Path) -> Manifest:
    """Read the whole bundle and check everything; write nothing. Returns the manifest."""
    with open(path, "rb") as f:
        return _walk(f, None)


def read_manifest(path: Path) -> Manifest:
    """Only the manifest (checked against its own checksum), for a quick look."""
    with open(path, "rb") as f:
        return _read_manifest(_Stream(f))


class _Sink:
    """Creates member files under a fresh target directory, never following a link."""

    def __init__(self, target: Path) -> None:
        self._target = target

    def open(self, name: str) -> IO[bytes]:
        check_name(name)
        d = self._target
        for part in name.split("/")[:-1]:
            d = d / part
            try:
                d.mkdir(mode=0o700)
            except FileExistsError:
                pass
            if not stat.S_ISDIR(os.lstat(d).st_mode):
                raise _invalid("a parent is not a directory", name)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        return os.fdopen(os.open(self._target / name, flags, 0o600), "wb")


def extract(path: Path, target: Path) -> Manifest:
    """Verify the bundle, then write its members under ``target`` (which must not exist).

    Nothing is created if the first pass finds a problem; if the second pass disagrees (the
    file changed in between) the target is removed again.
    """
    verify(path)
    target.mkdir(mode=0o700)
    try:
        with open(path, "rb") as f:
            return _walk(f, _Sink(target))
    except BaseException:
        shutil.rmtree(target, ignore_errors=True)
        raise
