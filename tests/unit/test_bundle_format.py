"""Bundle format: round trip, tampering and hostile bundles refused before anything is created."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from pathlib import Path

import pytest
import zstandard

from migrate.core.errors import BundleInvalid
from migrate.fs import bundle


def _files(tmp: Path) -> list[tuple[str, Path]]:
    src = tmp / "src"
    (src / "checkpoint").mkdir(parents=True)
    (src / "checkpoint" / "pages-1.img").write_bytes(os.urandom(3 * 1024 * 1024 + 7))
    (src / "checkpoint" / "inventory.img").write_bytes(b"inv")
    (src / "rootfs-diff.tar").write_bytes(b"x" * 1025)
    (src / "container.log").write_bytes(b"")
    return [
        ("checkpoint/pages-1.img", src / "checkpoint" / "pages-1.img"),
        ("checkpoint/inventory.img", src / "checkpoint" / "inventory.img"),
        ("rootfs-diff.tar", src / "rootfs-diff.tar"),
        ("container.log", src / "container.log"),
    ]


@pytest.fixture
def good(tmp_path: Path) -> Path:
    out = tmp_path / "b.tar.zst"
    bundle.write_file(out, _files(tmp_path), {"container": "c1"})
    return out


def _raw(path: Path) -> bytes:
    return zstandard.ZstdDecompressor().stream_reader(path.read_bytes()).read()


def _put(path: Path, raw: bytes) -> None:
    path.write_bytes(zstandard.ZstdCompressor().compress(raw))


def _offsets(raw: bytes) -> dict[str, tuple[int, int]]:
    with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as t:
        return {m.name: (m.offset_data, m.size) for m in t.getmembers()}


def _refused(path: Path, tmp: Path, member: str | None) -> BundleInvalid:
    target = tmp / "target"
    before = sorted(p.name for p in tmp.iterdir())
    with pytest.raises(BundleInvalid) as e:
        bundle.extract(path, target)
    assert not target.exists()
    assert sorted(p.name for p in tmp.iterdir()) == before
    if member is not None:
        assert member in e.value.message
    return e.value


def test_round_trip(tmp_path: Path, good: Path) -> None:
    manifest = bundle.extract(good, tmp_path / "out")
    assert manifest.meta == {"container": "c1"}
    assert manifest.version == bundle.SCHEMA_VERSION
    for name, src in _files(tmp_path / "again"):
        assert (tmp_path / "out" / name).read_bytes() == (tmp_path / "src" / name).read_bytes()
        assert src.exists()
    assert bundle.read_manifest(good) == manifest


@pytest.mark.parametrize(
    "member",
    [
        "manifest.sha256",
        "manifest.json",
        "checkpoint/pages-1.img",
        "checkpoint/inventory.img",
        "rootfs-diff.tar",
    ],
)
def test_flipped_byte_refused_naming_member(tmp_path: Path, good: Path, member: str) -> None:
    raw = bytearray(_raw(good))
    off, size = _offsets(bytes(raw))[member]
    pos = off + size // 2
    raw[pos] = (raw[pos] + 1) % 256 if member != "manifest.sha256" else ord("0")
    if raw == bytearray(_raw(good)):
        raw[pos] = ord("1")
    _put(good, bytes(raw))
    _refused(good, tmp_path, member)


def test_flipped_compressed_byte_refused(tmp_path: Path, good: Path) -> None:
    data = bytearray(good.read_bytes())
    data[len(data) // 2] ^= 0x40
    good.write_bytes(bytes(data))
    _refused(good, tmp_path, None)


@pytest.mark.parametrize("keep", [0.1, 0.5, 0.99])
def test_truncated_refused(tmp_path: Path, good: Path, keep: float) -> None:
    data = good.read_bytes()
    good.write_bytes(data[: int(len(data) * keep)])
    _refused(good, tmp_path, None)


def test_truncated_tar_refused(tmp_path: Path, good: Path) -> None:
    raw = _raw(good)
    off, _ = _offsets(raw)["rootfs-diff.tar"]
    _put(good, raw[: off - 512])  # the whole member and the end marker are gone
    _refused(good, tmp_path, "rootfs-diff.tar")


def _craft(
    tmp: Path,
    members: list[tarfile.TarInfo | tuple[str, bytes]],
    declared: list[dict[str, object]] | None = None,
    version: int = 1,
) -> Path:
    """A bundle with a valid manifest (listing ``declared``) followed by arbitrary members."""
    if declared is None:
        declared = [
            {"name": m[0], "size": len(m[1]), "sha256": hashlib.sha256(m[1]).hexdigest()}
            for m in members
            if isinstance(m, tuple)
        ]
    body = json.dumps({"version": version, "meta": {}, "members": declared}).encode()
    check = f"{hashlib.sha256(body).hexdigest()} {len(body)}\n".encode()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:", format=tarfile.USTAR_FORMAT) as t:
        for name, data in ((bundle.CHECKSUM_NAME, check), (bundle.MANIFEST_NAME, body)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
        for m in members:
            if isinstance(m, tuple):
                info = tarfile.TarInfo(m[0])
                info.size = len(m[1])
                t.addfile(info, io.BytesIO(m[1]))
            else:
                t.addfile(m)
    out = tmp / "crafted.tar.zst"
    _put(out, buf.getvalue())
    return out


def test_crafted_good_bundle_accepted(tmp_path: Path) -> None:
    path = _craft(tmp_path, [("a/b", b"hello")])
    bundle.extract(path, tmp_path / "t")
    assert (tmp_path / "t" / "a" / "b").read_bytes() == b"hello"


def test_unknown_version_refused(tmp_path: Path) -> None:
    path = _craft(tmp_path, [("a", b"x")], version=2)
    e = _refused(path, tmp_path, "manifest.json")
    assert "version" in e.message


def test_missing_member_refused(tmp_path: Path) -> None:
    extra = {"name": "gone", "size": 1, "sha256": "0" * 64}
    declared = [{"name": "a", "size": 1, "sha256": hashlib.sha256(b"x").hexdigest()}, extra]
    _refused(_craft(tmp_path, [("a", b"x")], declared), tmp_path, "gone")


def test_extra_member_refused(tmp_path: Path) -> None:
    declared = [{"name": "a", "size": 1, "sha256": hashlib.sha256(b"x").hexdigest()}]
    _refused(_craft(tmp_path, [("a", b"x"), ("b", b"y")], declared), tmp_path, "'b'")


@pytest.mark.parametrize("name", ["../evil", "/etc/evil", "a/../../evil", "./a", "a//b"])
def test_hostile_paths_refused(tmp_path: Path, name: str) -> None:
    _refused(_craft(tmp_path, [(name, b"x")]), tmp_path, name)
    assert not (tmp_path.parent / "evil").exists()


@pytest.mark.parametrize(
    ("kind", "linkname"),
    [
        (tarfile.SYMTYPE, "/etc/passwd"),
        (tarfile.LNKTYPE, "../../etc/passwd"),
        (tarfile.CHRTYPE, ""),
        (tarfile.BLKTYPE, ""),
        (tarfile.FIFOTYPE, ""),
        (tarfile.DIRTYPE, ""),
    ],
)
def test_links_and_devices_refused(tmp_path: Path, kind: bytes, linkname: str) -> None:
    info = tarfile.TarInfo("a")
    info.type = kind
    info.linkname = linkname
    declared = [{"name": "a", "size": 0, "sha256": hashlib.sha256(b"").hexdigest()}]
    _refused(_craft(tmp_path, [info], declared), tmp_path, "'a")


def test_member_larger_than_declared_refused(tmp_path: Path) -> None:
    big = b"y" * (5 * 1024 * 1024)
    declared = [{"name": "a", "size": 10, "sha256": hashlib.sha256(big[:10]).hexdigest()}]
    e = _refused(_craft(tmp_path, [("a", big)], declared), tmp_path, "'a'")
    assert "declares 10" in e.message


def test_manifest_larger_than_declared_refused(tmp_path: Path) -> None:
    raw = bytearray(_raw(_craft(tmp_path, [("a", b"x")])))
    off, size = _offsets(bytes(raw))[bundle.CHECKSUM_NAME]
    digest, _ = raw[off : off + size].decode().split()
    raw[off : off + size] = f"{digest} {size:0{size - 66}d}\n".encode()[:size]
    path = tmp_path / "crafted.tar.zst"
    _put(path, bytes(raw))
    _refused(path, tmp_path, "manifest.json")


def test_writer_refuses_unsafe_names(tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_bytes(b"x")
    for name in ["../x", "/x", "manifest.json", "a" * 101]:
        with pytest.raises(BundleInvalid):
            bundle.write(io.BytesIO(), [(name, f)], {})
