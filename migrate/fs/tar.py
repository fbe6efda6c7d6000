"""The tar format as migrate writes and reads it: header blocks, pax records, numbers.

One codec for both tar dialects of the product: the layer streams (:mod:`migrate.fs.capture`,
read back by :mod:`migrate.fs.tar_reader`) are POSIX pax with our own keywords, and bundles
(:mod:`migrate.fs.bundle`) are plain ustar; both use :func:`ustar` for their header blocks and
the field layout below to read them.

This is our own code rather than :mod:`tarfile`: names, link targets and xattr values are
kept as bytes end to end (non-UTF-8 names, binary ``security.capability`` values), mtimes
carry nanoseconds, and every decoder here works on bounded input handed to it by a reader
that has already capped sizes (hostile archives).
"""

from __future__ import annotations

import itertools
import os
import stat
import struct
from dataclasses import dataclass
from typing import Final

BLOCK: Final = 512
ZERO_BLOCK: Final = bytes(BLOCK)
# Above this many data segments a sparse file is sent dense: the map would dwarf its benefit
# and every reader has to hold it in memory.
MAX_SPARSE_SEGMENTS: Final = 1 << 16

# name mode uid gid size mtime chksum type linkname magic version uname gname major minor
# prefix; "s" fields are NUL-padded (and cut) to their width, the type is one byte.
_WIDTHS: Final = (100, 8, 8, 8, 12, 12, 8, 1, 100, 6, 2, 32, 32, 8, 8, 155)
# 12 NUL bytes pad the block (``x``: no value to pass).
_USTAR: Final = struct.Struct("".join("c" if w == 1 else f"{w}s" for w in _WIDTHS) + "12x")
# The same fields, for reading a block: block[SIZE] is the size field.
_FIELDS: Final = tuple(
    slice(start, start + width)
    for start, width in zip(itertools.accumulate(_WIDTHS, initial=0), _WIDTHS, strict=False)
)
NAME, MODE, UID, GID, SIZE, MTIME, CHKSUM, TYPE, LINKNAME, MAGIC = _FIELDS[:10]
DEVMAJOR, DEVMINOR, PREFIX = _FIELDS[13:]
USTAR_MAGIC: Final = b"ustar\x00"

# Tar type flags (normalised: "\0" and "7" are read as regular files).
REG: Final = b"0"
LNK: Final = b"1"
SYM: Final = b"2"
CHR: Final = b"3"
BLK: Final = b"4"
DIR: Final = b"5"
FIFO: Final = b"6"
PAX: Final = b"x"
PAX_GLOBAL: Final = b"g"
GNU_LONGNAME: Final = b"L"
GNU_LONGLINK: Final = b"K"

XATTR_PREFIX: Final = b"SCHILY.xattr."
# Our own pax keyword (vendor prefix, ignored by other readers): in a rootfs delta, a regular
# file whose data the destination already has from the pre-copy; the value is its size.
KEEP_KEY: Final = b"MIGRATE.keep"


# --- encoding ---------------------------------------------------------------------------


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


def format_ns(ns: int) -> bytes:
    sign = "-" if ns < 0 else ""
    sec, frac = divmod(abs(ns), 1_000_000_000)
    if not frac:
        return f"{sign}{sec}".encode()
    return f"{sign}{sec}.{frac:09d}".rstrip("0").encode()


def ustar(
    name: bytes,
    typeflag: bytes,
    *,
    mode: int = 0o644,
    uid: int = 0,
    gid: int = 0,
    size: int = 0,
    mtime: int = 0,
    linkname: bytes = b"",
    devmajor: int | None = 0,
    devminor: int | None = 0,
) -> bytes:
    """One header block. ``devmajor``/``devminor`` None leave those fields empty (NULs), as
    bundles have always been written: their bytes must not change."""
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
        b"" if devmajor is None else b"%07o" % devmajor,
        b"" if devminor is None else b"%07o" % devminor,
        b"",
    )
    return h[:148] + b"%06o\0 " % sum(h) + h[156:]


def padding(size: int) -> int:
    return -size % BLOCK


@dataclass(frozen=True)
class Meta:
    mode: int
    uid: int
    gid: int
    mtime_ns: int

    @classmethod
    def of(cls, st: os.stat_result) -> Meta:
        return cls(stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, st.st_mtime_ns)


def encode_header(
    name: bytes,
    typeflag: bytes,
    meta: Meta,
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
        records.append(_pax_record(b"mtime", format_ns(meta.mtime_ns)))
        secs = min(max(secs, 0), 8**11 - 1)
    for key, value in xattrs:
        records.append(_pax_record(XATTR_PREFIX + key, value))
    if keep is not None:
        records.append(_pax_record(KEEP_KEY, b"%d" % keep))
    header = ustar(
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
    return ustar(b"././@PaxHeader", PAX, size=len(body)) + body + bytes(padding(len(body))) + header


# --- decoding ---------------------------------------------------------------------------


def checksum(block: bytes) -> int:
    """The unsigned header checksum: every byte, with the checksum field counted as spaces."""
    return sum(block[:148]) + 8 * 0x20 + sum(block[156:])


def strict_octal(field: bytes) -> int:
    """A number field exactly as :func:`ustar` writes it: octal digits, space/NUL padded.
    (No base-256, no empty field: for readers that accept only what migrate writes.)"""
    text = field.rstrip(b"\0 ").lstrip(b" ")
    if not text or any(c not in b"01234567" for c in text):
        raise ValueError(f"bad octal field {field!r}")
    return int(text, 8)


def number(field: bytes, what: str) -> int:
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


def decimal(value: bytes, what: str) -> int:
    if not value.isdigit() or len(value) > 20:
        raise ValueError(f"bad {what} {value!r}")
    return int(value)


def parse_ns(value: bytes) -> int:
    neg = value.startswith(b"-")
    whole, _, frac = value[neg:].partition(b".")
    if not whole.isdigit() or len(whole) > 12 or (frac and not frac.isdigit()):
        raise ValueError(f"bad mtime {value!r}")
    ns = int(whole) * 1_000_000_000 + int(frac[:9].ljust(9, b"0") or b"0")
    return -ns if neg else ns


def parse_pax(data: bytes) -> dict[bytes, bytes]:
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


@dataclass(frozen=True)
class Header:
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


def decode_header(block: bytes) -> Header:
    """The fields of one header block, as any tar writer may have set them (GNU base-256
    numbers, signed checksums, ustar prefix); raises ValueError."""
    stored = number(block[CHKSUM], "checksum")
    unsigned = checksum(block)
    if stored != unsigned:
        # Some old writers summed signed chars.
        high = sum(1 for b in block[:148] + block[156:] if b >= 128)
        if stored != unsigned - 256 * high:
            raise ValueError("header checksum mismatch (not a tar stream, or corrupted)")
    name = block[NAME].split(b"\0", 1)[0]
    if block[MAGIC] == USTAR_MAGIC:
        prefix = block[PREFIX].split(b"\0", 1)[0]
        if prefix:
            name = prefix + b"/" + name
    typeflag = block[TYPE]
    is_dev = typeflag in (CHR, BLK)
    return Header(
        name=name,
        type=typeflag,
        mode=number(block[MODE], "mode"),
        uid=number(block[UID], "uid"),
        gid=number(block[GID], "gid"),
        size=number(block[SIZE], "size"),
        mtime=number(block[MTIME], "mtime"),
        linkname=block[LINKNAME].split(b"\0", 1)[0],
        devmajor=number(block[DEVMAJOR], "devmajor") if is_dev else 0,
        devminor=number(block[DEVMINOR], "devminor") if is_dev else 0,
    )
