"""The tar codec writes the bytes the layer and bundle writers wrote before it was shared.

The digests were taken from the two writers as they were before the codec was unified
(``layers._encode_header`` and ``bundle._header``): any change to them changes the format on
the wire and in bundle files.
"""

from __future__ import annotations

import hashlib
import tarfile
from collections.abc import Callable
from io import BytesIO

import pytest

from migrate.fs import bundle, tar

pytestmark = pytest.mark.unit

M = tar.Meta
SPARSE_KEYS = (
    (b"GNU.sparse.major", b"1"),
    (b"GNU.sparse.minor", b"0"),
    (b"GNU.sparse.name", b"s"),
    (b"GNU.sparse.realsize", b"1048576"),
)
XATTRS = ((b"user.a", b"\x00\xff"), (b"security.capability", b"v" * 20))

CASES: dict[str, tuple[Callable[[], bytes], str]] = {
    "plain": (
        lambda: tar.encode_header(
            b"etc/hosts", tar.REG, M(0o644, 0, 0, 1_700_000_000_000_000_000), size=123
        ),
        "93862310d800043ad567117b6a528875ccef79b492458c714f017b4c8c06af00",
    ),
    "dir": (
        lambda: tar.encode_header(b"./", tar.DIR, M(0o755, 1000, 1000, 5 * 10**9)),
        "57bb02f032c116cd25af516da00471b0efb1932ec46f1426c85689ff3ecb7c1b",
    ),
    "long_name": (
        lambda: tar.encode_header(
            b"d/" * 60 + b"f", tar.REG, M(0o600, 1, 2, 10**9 + 5), size=1 << 34
        ),
        "475625e7ed6d92af92f87c6d7a58fb4f2bcf368cbefd95118e2edbd2b2672441",
    ),
    "binary_name": (
        lambda: tar.encode_header(b"caf\xe9", tar.REG, M(0o4755, 0, 0, -1_500_000_000)),
        "773a8b738b9567ce1b4b67dc17abe37a29497bedae9fcb0d9d6a99ec66c94ebf",
    ),
    "symlink_long": (
        lambda: tar.encode_header(b"bin/sh", tar.SYM, M(0o777, 0, 0, 0), linkname=b"x" * 150),
        "e3bfd25bd8ed243966e31d58e9166e972d98add2d8e32f0c704c287a11189209",
    ),
    "big_ids": (
        lambda: tar.encode_header(b"u", tar.REG, M(0o644, 1 << 31, 1 << 22, 8**11 * 10**9)),
        "3cd61a5ebc8494fefeb7645388d4d53d02c3524148489d0a6ba28583c3a4de92",
    ),
    "xattrs_keep": (
        lambda: tar.encode_header(b"k", tar.REG, M(0o644, 0, 0, 0), xattrs=XATTRS, keep=4096),
        "2fcf0296003ea0c1c25478b736b661e9a97ad3fb847fdeaff566879c584cdd99",
    ),
    "device": (
        lambda: tar.encode_header(b"dev/null", tar.CHR, M(0o666, 0, 0, 0), devmajor=1, devminor=3),
        "cf3350ba8c2fff669dd6f0a48adbfd0f3011c9a7ea4dff6901decadfc67cfe5c",
    ),
    "whiteout": (
        lambda: tar.encode_header(b"gone", tar.CHR, M(0, 0, 0, 0)),
        "543842e4e7c1e491019b8f18ca748e4a7f2d69f831597d1509effe6d319a5298",
    ),
    "sparse": (
        lambda: tar.encode_header(
            b"GNUSparseFile.0/s", tar.REG, M(0o644, 0, 0, 0), size=1536, sparse_keys=SPARSE_KEYS
        ),
        "34e3a615e4f6b90b6246e7f71ac29191ef09ca2e09990e67baf9e59aaa6408e5",
    ),
    "hardlink": (
        lambda: tar.encode_header(b"b", tar.LNK, M(0o644, 0, 0, 0), linkname=b"a"),
        "e28dca54db9ab509e54ef764e48cf7904d8ac73f8076c910faa70675762de282",
    ),
    "bundle_checksum": (
        lambda: bundle._header("manifest.sha256", 72),
        "1f78857423766dfffb416d266f5295ba7bed9867e209838a9de148c5a87eaf53",
    ),
    "bundle_member": (
        lambda: bundle._header("checkpoint/pages-1.img", 3 * 1024 * 1024 + 7),
        "f512d5617c8d9f4be4427156f59ece22dd507a64c69921e09455e76f42692aaf",
    ),
    "bundle_empty": (
        lambda: bundle._header("x" * 100, 0),
        "e37804346e02136ff180b7ac65d423925038ae5b8c8239700c6ed2b4aea2e453",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bytes_unchanged(case: str) -> None:
    encode, digest = CASES[case]
    assert hashlib.sha256(encode()).hexdigest() == digest


def _old_bundle_header(name: str, size: int) -> bytes:
    """The bundle writer's header as it was written by hand before the codec was shared."""
    raw = name.encode()
    hdr = bytearray(512)
    hdr[0 : len(raw)] = raw
    hdr[100:108] = b"0000644\0"
    hdr[108:116] = b"0000000\0"
    hdr[116:124] = b"0000000\0"
    hdr[124:136] = b"%011o\0" % size
    hdr[136:148] = b"00000000000\0"
    hdr[148:156] = b" " * 8
    hdr[156:157] = b"0"
    hdr[257:265] = b"ustar\x0000"
    hdr[148:156] = b"%06o\0 " % sum(hdr)
    return bytes(hdr)


@pytest.mark.parametrize("size", [0, 1, 511, 512, 1 << 20, 8**11 - 1])
def test_bundle_header_matches_old_formula(size: int) -> None:
    for name in ("a", "checkpoint/core-1.img", "n" * 100):
        assert bundle._header(name, size) == _old_bundle_header(name, size)


def test_decode_round_trip() -> None:
    block = tar.ustar(
        b"dir/file", tar.CHR, mode=0o640, uid=7, gid=8, size=0, mtime=99, devmajor=4, devminor=5
    )
    h = tar.decode_header(block)
    assert (h.name, h.type, h.mode, h.uid, h.gid, h.mtime) == (
        b"dir/file",
        tar.CHR,
        0o640,
        7,
        8,
        99,
    )
    assert (h.devmajor, h.devminor) == (4, 5)
    assert tar.strict_octal(block[tar.SIZE]) == 0
    assert tar.number(block[tar.CHKSUM], "checksum") == tar.checksum(block)


def test_decode_refuses_bad_checksum() -> None:
    block = bytearray(tar.ustar(b"f", tar.REG, size=3))
    block[0] = ord("g")
    with pytest.raises(ValueError, match="checksum"):
        tar.decode_header(bytes(block))


def test_headers_read_by_tarfile() -> None:
    """Another reader agrees on what the codec wrote (pax path, nanosecond mtime, size)."""
    name = b"d/" * 60 + b"f"
    data = tar.encode_header(name, tar.REG, M(0o600, 1, 2, 10**9 + 5), size=3)
    data += b"abc" + bytes(tar.padding(3)) + tar.ZERO_BLOCK * 2
    with tarfile.open(fileobj=BytesIO(data), mode="r:") as t:
        (info,) = t.getmembers()
    assert info.name == name.decode() and info.size == 3 and (info.uid, info.gid) == (1, 2)
    assert info.pax_headers["mtime"] == "1.000000005"


@pytest.mark.parametrize(
    ("field", "ok"),
    [(b"0000644\0", 0o644), (b"  17 \0", 0o17), (b"", None), (b"\x80\0\0\x01", None), (b"9", None)],
)
def test_strict_octal(field: bytes, ok: int | None) -> None:
    if ok is None:
        with pytest.raises(ValueError):
            tar.strict_octal(field)
    else:
        assert tar.strict_octal(field) == ok
