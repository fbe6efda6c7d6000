"""Layer capture/apply round trips and safe extraction of hostile tar streams."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import random
import shutil
import stat
import struct
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from migrate.core.errors import BundleInvalid, MigrateError
from migrate.fs.capture import OVERLAY_HOST_XATTRS, capture, capture_to
from migrate.fs.extract import (
    CHECKPOINT_POLICY,
    ROOTFS_POLICY,
    VOLUME_POLICY,
    ExtractPolicy,
    apply,
    extract,
)

pytestmark = pytest.mark.unit

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (mknod, chown, trusted.*)")

MiB = 1 << 20


# --- helpers ------------------------------------------------------------------------------


class OneWay(io.RawIOBase):
    """A non-seekable stream that returns short reads of random sizes."""

    def __init__(self, data: bytes, seed: int = 0, max_read: int = 1 << 16) -> None:
        self._data = memoryview(data)
        self._pos = 0
        self._rng = random.Random(seed)
        self._max = max_read

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def read(self, n: int = -1) -> bytes:
        if n < 0:
            n = len(self._data)
        n = min(n, self._rng.randint(1, self._max))
        out = bytes(self._data[self._pos : self._pos + n])
        self._pos += len(out)
        return out


def tar_of(root: Path, **kw: object) -> bytes:
    return b"".join(capture(root, **kw))  # type: ignore[arg-type]


def snapshot(root: Path, drop: frozenset[str] = OVERLAY_HOST_XATTRS) -> dict[bytes, tuple]:
    """Everything apply promises to restore, per relative path (root included)."""
    base = os.fsencode(root)
    out: dict[bytes, tuple] = {}
    first: dict[int, bytes] = {}

    def visit(rel: bytes) -> None:
        path = base + b"/" + rel if rel else base
        s = os.lstat(path)
        names = sorted(n for n in os.listxattr(path, follow_symlinks=False) if n not in drop)
        xattrs = tuple((n, os.getxattr(path, n, follow_symlinks=False)) for n in names)
        kind = stat.S_IFMT(s.st_mode)
        entry: tuple = (kind, stat.S_IMODE(s.st_mode), s.st_uid, s.st_gid, s.st_mtime_ns, xattrs)
        if stat.S_ISREG(s.st_mode):
            with open(path, "rb") as f:
                digest = hashlib.sha256(f.read()).hexdigest()
            entry += (s.st_size, digest, first.setdefault(s.st_ino, rel), s.st_nlink)
        elif stat.S_ISLNK(s.st_mode):
            entry += (os.readlink(path),)
        elif stat.S_ISCHR(s.st_mode) or stat.S_ISBLK(s.st_mode):
            entry += (s.st_rdev,)
        out[rel] = entry
        if stat.S_ISDIR(s.st_mode):
            for name in sorted(os.listdir(path)):
                visit(rel + b"/" + name if rel else name)

    visit(b"")
    return out


def set_mtime(path: Path | bytes, ns: int) -> None:
    os.utime(path, ns=(ns, ns), follow_symlinks=False)


@pytest.fixture
def area(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """(target, sentinel): an empty target and a directory beside it that must stay intact."""
    target = tmp_path / "target"
    target.mkdir()
    sentinel = tmp_path / "sentinel"
    sentinel.mkdir()
    (sentinel / "file").write_bytes(b"precious")
    yield target, sentinel
    assert sorted(os.listdir(sentinel)) == ["file"], "something was written outside the target"
    assert (sentinel / "file").read_bytes() == b"precious"
    assert os.lstat(sentinel / "file").st_nlink == 1


# --- round trips ----------------------------------------------------------------------------


def build_everything(src: Path) -> None:
    """A layer with every kind of entry apply must restore."""
    t0 = 1_600_000_000_123_456_789
    (src / "etc").mkdir()
    (src / "etc" / "passwd").write_bytes(b"root:x:0:0::/root:/bin/sh\n")
    os.chown(src / "etc" / "passwd", 1234, 5678)
    (src / "bin").mkdir()
    busybox = src / "bin" / "busybox"
    busybox.write_bytes(os.urandom(70_000))
    os.chmod(busybox, 0o4755)  # setuid: legitimate in a rootfs
    os.symlink("busybox", src / "bin" / "ls")
    os.symlink("/bin/busybox", src / "bin" / "sh")  # absolute: must not be followed
    os.symlink("/nonexistent/target", src / "dangling")
    os.lchown(src / "bin" / "sh", 7, 8)
    # Hard links, across directories, three names for one inode.
    (src / "bin" / "ping").write_bytes(b"ping binary")
    os.link(src / "bin" / "ping", src / "bin" / "ping6")
    os.link(src / "bin" / "ping", src / "etc" / "ping-copy")
    cap = struct.pack("<IIIII", 0x02000001, 1 << 13, 0, 0, 0)  # cap_net_raw, effective
    os.chown(src / "bin" / "ping", 1000, 1000)
    os.setxattr(src / "bin" / "ping", "security.capability", cap)
    # Overlay: an opaque dir and a whiteout.
    (src / "opaque").mkdir()
    (src / "opaque" / "new").write_bytes(b"n")
    os.setxattr(src / "opaque", "trusted.overlay.opaque", b"y")
    os.mknod(src / "deleted", stat.S_IFCHR | 0o000, os.makedev(0, 0))
    os.mknod(src / "opaque" / "gone", stat.S_IFCHR | 0o000, os.makedev(0, 0))
    # A host-local overlay xattr that must not travel.
    (src / "copied-up").write_bytes(b"c")
    os.setxattr(src / "copied-up", "trusted.overlay.origin", b"\x00\xfb\x01host-handle")
    os.setxattr(src / "copied-up", "user.binary", b"\xff\x00\xfe value")
    os.setxattr(src / "copied-up", "user.empty", b"")
    os.mkfifo(src / "fifo", 0o620)
    (src / "empty").mkdir()
    ro = src / "readonly"
    ro.mkdir()
    (ro / "inside").write_bytes(b"i")
    os.chmod(ro, 0o555)
    os.chown(src / "empty", 100000, 100000)  # userns-remapped ids
    (src / "bigid").write_bytes(b"b")
    os.chown(src / "bigid", 3_000_000, 4_000_000)  # too wide for the octal fields
    # Sparse: a 100 MB hole between two blocks, and a file that ends in a hole.
    with open(src / "sparse", "wb") as f:
        f.write(b"head" * 1024)
        f.seek(100 * MiB)
        f.write(b"tail" * 1024)
    with open(src / "trailing-hole", "wb") as f:
        f.write(b"x")
        f.truncate(5 * MiB)
    with open(src / "all-hole", "wb") as f:
        f.truncate(3 * MiB)
    # Odd names.
    odd = src / "odd"
    odd.mkdir()
    for name in (b"with space", b"new\nline", b"\xff\xfenot-utf8", b"caf\xc3\xa9", b"x" * 200):
        with open(os.path.join(os.fsencode(odd), name), "wb") as f:
            f.write(name)
    deep = src
    for i in range(12):
        deep = deep / f"level-{i:02d}-padding"
    deep.mkdir(parents=True)
    (deep / "leaf").write_bytes(b"deep")
    # Times last, deepest first, so creating entries does not bump them.
    walk = sorted(os.walk(os.fsencode(src)), reverse=True)
    for i, (dirpath, dirnames, filenames) in enumerate(walk):
        for name in filenames + dirnames:
            set_mtime(os.path.join(dirpath, name), t0 + i * 1_000_003 + len(name))
    set_mtime(src / "etc" / "passwd", -86_400_500_000_000)  # before 1970, with a fraction
    set_mtime(src, t0)


@needs_root
def test_round_trip_every_kind(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    dst.mkdir()
    build_everything(src)
    before = snapshot(src)

    cap = capture(src)
    data = b"".join(cap)
    stats = cap.stats
    assert stats.stream_bytes == len(data)
    assert stats.whiteouts == 2
    assert stats.hardlinks == 2
    assert stats.sparse_files == 3
    # Holes are neither read nor sent.
    assert len(data) < 2 * MiB

    result = apply(OneWay(data), dst, policy=ROOTFS_POLICY)
    assert snapshot(dst) == before
    assert result.members == stats.members
    assert result.files == stats.files
    assert result.bytes == stats.bytes
    assert result.stream_bytes == len(data)

    sparse = os.stat(dst / "sparse")
    assert sparse.st_size == 100 * MiB + 4096
    assert sparse.st_blocks * 512 < MiB
    assert os.stat(dst / "all-hole").st_blocks == 0
    with open(dst / "sparse", "rb") as f:
        f.seek(100 * MiB)
        assert f.read() == b"tail" * 1024
    assert os.getxattr(dst / "opaque", "trusted.overlay.opaque") == b"y"
    assert os.stat(dst / "bin" / "ping").st_nlink == 3
    assert os.getxattr(dst / "bin" / "ping", "security.capability") == os.getxattr(
        src / "bin" / "ping", "security.capability"
    )
    assert os.stat(dst / "bin" / "busybox").st_mode & stat.S_ISUID
    assert "trusted.overlay.origin" not in os.listxattr(dst / "copied-up")
    assert os.stat(dst / "etc" / "passwd").st_mtime_ns == -86_400_500_000_000


@needs_root
def test_capture_is_reproducible_and_chunked(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    build_everything(src)
    chunks = list(capture(src, chunk_size=64 * 1024))
    # Small pieces are coalesced; no chunk is much bigger than asked for.
    assert all(len(c) < 2 * 64 * 1024 for c in chunks)
    assert sum(len(c) < 4096 for c in chunks) <= 3
    out = io.BytesIO()
    stats = capture_to(src, out)
    assert out.getvalue() == b"".join(chunks)
    assert stats.stream_bytes == len(out.getvalue())


@needs_root
def test_host_local_xattrs_kept_when_asked(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    dst.mkdir()
    (src / "f").write_bytes(b"x")
    os.setxattr(src / "f", "trusted.overlay.origin", b"handle")
    apply(io.BytesIO(tar_of(src, drop_xattrs=frozenset())), dst, policy=ROOTFS_POLICY)
    assert os.getxattr(dst / "f", "trusted.overlay.origin") == b"handle"


@needs_root
def test_output_readable_by_tarfile_and_gnu_tar(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    build_everything(src)
    data = tar_of(src)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r|") as tf:
        by_name = {}
        for m in tf:
            by_name[m.name] = m
            if m.name == "sparse":
                f = tf.extractfile(m)
                assert f is not None
                assert (
                    hashlib.sha256(f.read()).digest()
                    == hashlib.sha256((src / "sparse").read_bytes()).digest()
                )
    assert by_name["sparse"].size == 100 * MiB + 4096
    assert by_name["opaque"].pax_headers["SCHILY.xattr.trusted.overlay.opaque"] == "y"
    assert by_name["deleted"].ischr() and by_name["deleted"].devmajor == 0
    assert by_name["bin/ping6"].islnk() and by_name["bin/ping6"].linkname == "bin/ping"
    assert by_name["odd/" + os.fsdecode(b"\xff\xfenot-utf8")].isfile()
    assert by_name["etc/passwd"].uid == 1234
    if shutil.which("tar"):
        out = tmp_path / "gnu"
        out.mkdir()
        subprocess.run(
            ["tar", "--xattrs", "--xattrs-include=*", "-xf", "-", "-C", str(out)],
            input=data,
            check=True,
        )
        assert (out / "sparse").read_bytes() == (src / "sparse").read_bytes()
        assert os.getxattr(out / "opaque", "trusted.overlay.opaque") == b"y"


def test_round_trip_unprivileged_kinds(tmp_path: Path) -> None:
    """Files, dirs, links and sparse data: what works without root too."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    dst.mkdir()
    (src / "a").mkdir()
    (src / "a" / "f").write_bytes(b"hello" * 1000)
    os.link(src / "a" / "f", src / "hard")
    os.symlink("../etc/shadow", src / "a" / "up")
    with open(src / "s", "wb") as f:
        f.truncate(50 * MiB)
        f.write(b"start")
    before = snapshot(src)
    policy = dataclasses.replace(VOLUME_POLICY, restore_owner=os.geteuid() == 0)
    apply(io.BytesIO(tar_of(src)), dst, policy=policy)
    assert snapshot(dst) == before
    assert os.stat(dst / "s").st_blocks * 512 < MiB


def test_checkpoint_directory_round_trip(tmp_path: Path) -> None:
    src, dst = tmp_path / "img", tmp_path / "dst"
    src.mkdir()
    dst.mkdir()
    for i in range(20):
        (src / f"pages-{i}.img").write_bytes(os.urandom(1000 + i * 997))
    (src / "inventory.img").write_bytes(b"\x01\x02")
    stats = extract(io.BytesIO(tar_of(src)), dst)
    assert stats.files == 21
    for p in src.iterdir():
        assert (dst / p.name).read_bytes() == p.read_bytes()


def test_reads_tarfile_formats(tmp_path: Path) -> None:
    """Archives made by others: GNU long names, ustar prefix, implicit parents."""
    long_name = "d/" + "n" * 150 + "/file"
    for fmt in (tarfile.GNU_FORMAT, tarfile.USTAR_FORMAT, tarfile.PAX_FORMAT):
        target = tmp_path / f"t{fmt}"
        target.mkdir()
        name = long_name if fmt != tarfile.USTAR_FORMAT else "p" * 90 + "/" + "q" * 90
        data = make_tar(reg(name, b"payload"), reg("x/y/z", b"implicit parents"), fmt=fmt)
        apply(io.BytesIO(data), target, policy=VOLUME_POLICY)
        assert (target / name).read_bytes() == b"payload"
        assert (target / "x" / "y" / "z").read_bytes() == b"implicit parents"


@pytest.mark.skipif(shutil.which("tar") is None, reason="needs GNU tar")
def test_reads_gnu_tar_sparse(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    dst.mkdir()
    with open(src / "sparse", "wb") as f:
        f.write(b"a" * 10000)
        f.seek(20 * MiB)
        f.write(b"b" * 10000)
        f.truncate(30 * MiB)
    data = subprocess.run(
        ["tar", "--sparse", "--format=posix", "-cf", "-", "-C", str(src), "sparse"],
        check=True,
        capture_output=True,
    ).stdout
    policy = dataclasses.replace(VOLUME_POLICY, restore_owner=os.geteuid() == 0)
    apply(io.BytesIO(data), dst, policy=policy)
    assert (dst / "sparse").read_bytes() == (src / "sparse").read_bytes()
    assert os.stat(dst / "sparse").st_blocks * 512 < MiB


def test_overwrite_replaces_a_symlink_without_following_it(
    area: tuple[Path, Path],
) -> None:
    target, sentinel = area
    data = make_tar(sym("f", str(sentinel / "file")), reg("f", b"new"))
    apply(io.BytesIO(data), target, policy=dataclasses.replace(VOLUME_POLICY, overwrite=True))
    assert not (target / "f").is_symlink()
    assert (target / "f").read_bytes() == b"new"


# --- random trees (hypothesis) --------------------------------------------------------------

_names = st.binary(min_size=1, max_size=10).filter(
    lambda b: b"/" not in b and b"\0" not in b and b not in (b".", b"..")
)
_mtimes = st.integers(min_value=0, max_value=4_000_000_000 * 10**9)
_leaf = st.one_of(
    st.tuples(
        st.just("file"),
        st.binary(max_size=3000),
        st.sampled_from([0o644, 0o600, 0o755, 0o4755, 0o2711, 0o444, 0o000]),
        _mtimes,
    ),
    st.tuples(
        st.just("symlink"),
        st.binary(min_size=1, max_size=40).filter(lambda b: b"\0" not in b),
        _mtimes,
    ),
)
_tree = st.recursive(
    _leaf,
    lambda children: st.tuples(
        st.just("dir"),
        st.dictionaries(_names, children, max_size=4),
        st.sampled_from([0o755, 0o700, 0o555, 0o1777]),
        _mtimes,
    ),
    max_leaves=15,
)


def _build(path: bytes, node: tuple) -> None:
    kind = node[0]
    if kind == "file":
        with open(path, "wb") as f:
            f.write(node[1])
        os.chmod(path, node[2])
        set_mtime(path, node[3])
    elif kind == "symlink":
        os.symlink(node[1], path)
        set_mtime(path, node[2])
    else:
        os.mkdir(path)
        for name, child in node[1].items():
            _build(path + b"/" + name, child)
        os.chmod(path, node[2])
        set_mtime(path, node[3])


@needs_root
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tree=st.dictionaries(_names, _tree, max_size=6), seed=st.integers(0, 1000))
def test_round_trip_random_trees(tree: dict[bytes, tuple], seed: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = os.path.join(tmp, "src"), os.path.join(tmp, "dst")
        os.mkdir(dst)
        _build(os.fsencode(src), ("dir", tree, 0o755, 10**18))
        before = snapshot(Path(src))
        apply(OneWay(tar_of(Path(src)), seed, 4096), Path(dst), policy=ROOTFS_POLICY)
        assert snapshot(Path(dst)) == before


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_corrupted_archives_fail_cleanly(data: st.DataObject) -> None:
    """Flipped bytes or garbage: either a clean extraction or a MigrateError, never a write
    outside the target and never another exception."""
    base = make_tar(
        dirm("d"),
        reg("d/f", b"data" * 100),
        sym("d/s", "/etc"),
        lnk("d/h", "d/f"),
        reg("top", b"x" * 700),
    )
    blob = bytearray(base)
    for _ in range(data.draw(st.integers(1, 8))):
        pos = data.draw(st.integers(0, len(blob) - 1))
        blob[pos] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        blob = blob[: data.draw(st.integers(0, len(blob)))]
    with tempfile.TemporaryDirectory() as tmp:
        target = Path(tmp) / "t"
        target.mkdir()
        outside = Path(tmp) / "outside"
        outside.mkdir()
        policy = dataclasses.replace(VOLUME_POLICY, restore_owner=os.geteuid() == 0)
        try:
            apply(io.BytesIO(bytes(blob)), target, policy=policy)
        except MigrateError:
            pass
        assert os.listdir(outside) == []
        assert sorted(os.listdir(tmp)) == ["outside", "t"]


# --- hostile archives -----------------------------------------------------------------------


def make_tar(
    *members: tuple[tarfile.TarInfo, bytes | None], fmt: int = tarfile.PAX_FORMAT
) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tf:
        for info, payload in members:
            tf.addfile(info, io.BytesIO(payload) if payload is not None else None)
    return buf.getvalue()


def reg(name: str, payload: bytes = b"evil", **attrs: object) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    info.mode = 0o644
    for key, value in attrs.items():
        setattr(info, key, value)
    return info, payload


def _special(name: str, type_: bytes, **attrs: object) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = type_
    for key, value in attrs.items():
        setattr(info, key, value)
    return info, None


def sym(name: str, target: str) -> tuple[tarfile.TarInfo, None]:
    return _special(name, tarfile.SYMTYPE, linkname=target)


def lnk(name: str, target: str) -> tuple[tarfile.TarInfo, None]:
    return _special(name, tarfile.LNKTYPE, linkname=target)


def dirm(name: str) -> tuple[tarfile.TarInfo, None]:
    return _special(name, tarfile.DIRTYPE, mode=0o755)


def dev(
    name: str, major: int, minor: int, type_: bytes = tarfile.CHRTYPE
) -> tuple[tarfile.TarInfo, None]:
    return _special(name, type_, devmajor=major, devminor=minor)


def raw_member(name: bytes, type_: bytes, size: int, payload: bytes = b"") -> bytes:
    """A header built by hand, for what tarfile refuses to write."""
    info = tarfile.TarInfo(os.fsdecode(name))
    info.type = type_
    info.size = size
    block = info.tobuf(tarfile.USTAR_FORMAT)
    body = payload + bytes(-len(payload) % 512)
    return block + body


END = bytes(1024)


def hostile_cases(sentinel: Path) -> dict[str, tuple[bytes, ExtractPolicy, str | None]]:
    """name -> (archive, policy, member the refusal must name)."""
    s = str(sentinel)
    small = dataclasses.replace(ROOTFS_POLICY, max_member_bytes=1000, max_total_bytes=2500)
    few = dataclasses.replace(ROOTFS_POLICY, max_members=3)
    path_override = tarfile.TarInfo("benign")
    path_override.pax_headers = {"path": "../sentinel/evil"}
    path_override.size = 4
    return {
        "dotdot": (make_tar(reg("../sentinel/evil")), ROOTFS_POLICY, "../sentinel/evil"),
        "dotdot-inside": (
            make_tar(reg("a/../../sentinel/evil")),
            ROOTFS_POLICY,
            "a/../../sentinel/evil",
        ),
        "absolute": (make_tar(reg(s + "/evil")), ROOTFS_POLICY, s + "/evil"),
        "pax-path-override": (
            make_tar((path_override, b"evil")),
            ROOTFS_POLICY,
            "../sentinel/evil",
        ),
        "gnu-longname-dotdot": (
            make_tar(reg("a" * 120 + "/../../sentinel/evil"), fmt=tarfile.GNU_FORMAT),
            ROOTFS_POLICY,
            "a" * 120 + "/../../sentinel/evil",
        ),
        "write-through-symlink": (make_tar(sym("a", s), reg("a/evil")), ROOTFS_POLICY, "a/evil"),
        "mkdir-through-symlink": (make_tar(sym("a", s), dirm("a/sub")), ROOTFS_POLICY, "a/sub/"),
        "deep-through-symlink": (
            make_tar(dirm("x"), sym("x/a", s), reg("x/a/b/evil")),
            ROOTFS_POLICY,
            "x/a/b/evil",
        ),
        "symlink-then-dir-same-name": (make_tar(sym("a", s), dirm("a")), ROOTFS_POLICY, "a/"),
        "symlink-then-file-same-name": (
            make_tar(sym("a", s + "/file"), reg("a")),
            ROOTFS_POLICY,
            "a",
        ),
        "hardlink-absolute": (make_tar(lnk("passwd", "/etc/passwd")), ROOTFS_POLICY, "passwd"),
        "hardlink-dotdot": (make_tar(lnk("h", "../sentinel/file")), ROOTFS_POLICY, "h"),
        "hardlink-via-symlink": (
            make_tar(sym("a", s), lnk("h", "a/file")),
            ROOTFS_POLICY,
            "h",
        ),
        "hardlink-not-yet-extracted": (
            make_tar(lnk("h", "later"), reg("later")),
            ROOTFS_POLICY,
            "h",
        ),
        "hardlink-to-directory": (make_tar(dirm("d"), lnk("h", "d")), ROOTFS_POLICY, "h"),
        "device-1-3": (make_tar(dev("null", 1, 3)), ROOTFS_POLICY, "null"),
        "block-device": (make_tar(dev("sda", 8, 0, tarfile.BLKTYPE)), ROOTFS_POLICY, "sda"),
        "whiteout-in-checkpoint": (make_tar(dev("wh", 0, 0)), CHECKPOINT_POLICY, "wh"),
        "whiteout-in-volume": (make_tar(dev("wh", 0, 0)), VOLUME_POLICY, "wh"),
        "fifo-in-checkpoint": (make_tar(_special("p", tarfile.FIFOTYPE)), CHECKPOINT_POLICY, "p"),
        "oversize-member": (make_tar(reg("big", b"x" * 1001)), small, "big"),
        "over-total": (
            make_tar(reg("a", b"x" * 900), reg("b", b"x" * 900), reg("c", b"x" * 900)),
            small,
            "c",
        ),
        "too-many-members": (make_tar(*(reg(f"f{i}", b"") for i in range(4))), few, "f3"),
        "file-over-directory": (make_tar(dirm("d"), reg("d")), ROOTFS_POLICY, "d"),
        "symlink-over-directory": (make_tar(dirm("d"), sym("d", s)), ROOTFS_POLICY, "d"),
        "hardlink-over-directory": (
            make_tar(reg("f"), dirm("d"), lnk("d", "f")),
            ROOTFS_POLICY,
            "d",
        ),
        "duplicate-file": (make_tar(reg("f", b"one"), reg("f", b"two")), ROOTFS_POLICY, "f"),
        "root-as-file": (make_tar(reg("./")), ROOTFS_POLICY, "./"),
        "too-deep": (
            make_tar(reg("/".join(["d"] * 300))),
            ROOTFS_POLICY,
            "/".join(["d"] * 300),
        ),
        "symlink-with-data": (
            raw_member(b"s", tarfile.SYMTYPE, 512, b"\0" * 512) + END,
            ROOTFS_POLICY,
            "s",
        ),
        "unknown-type": (raw_member(b"v", b"V", 0) + END, ROOTFS_POLICY, "v"),
    }


_CASES = sorted(hostile_cases(Path("/x")))


@needs_root
@pytest.mark.parametrize("case", _CASES)
def test_hostile_archive_refused(case: str, area: tuple[Path, Path]) -> None:
    target, sentinel = area
    archive, policy, member = hostile_cases(sentinel)[case]
    passwd_links = os.stat("/etc/passwd").st_nlink
    with pytest.raises(BundleInvalid) as info:
        apply(io.BytesIO(archive), target, policy=policy)
    if member is not None:
        assert info.value.details["member"] == member
        assert repr(member) in info.value.message
    assert os.stat("/etc/passwd").st_nlink == passwd_links


def _header_bomb() -> bytes:
    info = tarfile.TarInfo("././@PaxHeader")
    info.type = tarfile.XHDTYPE
    info.size = 4 << 30  # never read: refused from the header
    return info.tobuf(tarfile.GNU_FORMAT)


def _corrupt_checksum() -> bytes:
    data = bytearray(make_tar(reg("f")))
    data[0] ^= 0x01
    return bytes(data)


def _lying_sparse_map() -> bytes:
    sparse_map = b"1\n0\n100\n".ljust(512, b"\0")
    info = tarfile.TarInfo("GNUSparseFile.0/f")
    info.size = 512 + 100
    info.pax_headers = {
        "GNU.sparse.major": "1",
        "GNU.sparse.minor": "0",
        "GNU.sparse.name": "f",
        "GNU.sparse.realsize": "50",  # smaller than the data it maps
    }
    return make_tar((info, sparse_map + b"x" * 100))


@pytest.mark.parametrize(
    "archive",
    [
        pytest.param(make_tar(reg("f", b"x" * 5000))[:3000], id="truncated-data"),
        pytest.param(make_tar(reg("f"))[:512], id="truncated-before-end"),
        pytest.param(b"", id="empty-stream"),
        pytest.param(b"not a tar" * 100, id="garbage"),
        pytest.param(_corrupt_checksum(), id="bad-checksum"),
        pytest.param(_header_bomb(), id="pax-header-bomb"),
        pytest.param(_lying_sparse_map(), id="lying-sparse-map"),
        pytest.param(
            raw_member(b"././@PaxHeader", b"x", 12, b"99 path=a\n\0\0") + END, id="bad-pax-record"
        ),
        pytest.param(
            raw_member(b"././@PaxHeader", b"g", 14, b"14 path=/etc\n") + make_tar(reg("f")),
            id="global-pax-header",
        ),
    ],
)
def test_malformed_stream_refused(archive: bytes, area: tuple[Path, Path]) -> None:
    target, _ = area
    policy = dataclasses.replace(VOLUME_POLICY, restore_owner=os.geteuid() == 0)
    with pytest.raises(BundleInvalid):
        apply(io.BytesIO(archive), target, policy=policy)


def test_refusal_happens_before_any_data_is_read(area: tuple[Path, Path]) -> None:
    """An oversize member is refused from its header: the stream is not drained into memory
    or onto disk first."""
    target, _ = area
    info = tarfile.TarInfo("huge")
    info.size = 10 << 30
    header = info.tobuf(tarfile.PAX_FORMAT)
    stream = OneWay(header, max_read=1 << 20)
    policy = dataclasses.replace(VOLUME_POLICY, max_member_bytes=1 << 30)
    with pytest.raises(BundleInvalid, match="huge"):
        apply(stream, target, policy=policy)
    assert os.listdir(target) == []


@needs_root
def test_checkpoint_policy_skips_xattrs(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    dst.mkdir()
    (src / "core-1.img").write_bytes(b"core")
    os.setxattr(src / "core-1.img", "user.label", b"x")
    extract(io.BytesIO(tar_of(src)), dst)
    assert os.listxattr(dst / "core-1.img") == []


def test_capture_of_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"")
    with pytest.raises(MigrateError):
        b"".join(capture(tmp_path / "f"))


def test_capture_skips_sockets(tmp_path: Path) -> None:
    import socket

    src = tmp_path / "src"
    src.mkdir()
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.bind(str(src / "sock"))
        (src / "f").write_bytes(b"x")
        cap = capture(src)
        data = b"".join(cap)
    finally:
        sock.close()
    assert cap.stats.skipped == 1
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        names = tf.getnames()
    assert names == [".", "f"]
