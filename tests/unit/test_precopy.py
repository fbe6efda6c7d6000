"""Pre-copy + frozen delta of a read-write layer equals a full copy of the frozen layer."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_layers import build_everything, needs_root, snapshot

from migrate.core.errors import BundleInvalid, TransferFailed
from migrate.fs import precopy
from migrate.fs.capture import capture
from migrate.fs.extract import ROOTFS_DELTA_POLICY, ROOTFS_POLICY, apply
from migrate.fs.stats import ApplyStats, CaptureStats

pytestmark = pytest.mark.unit

FAR_FUTURE_NS = time.time_ns() + 10**15  # makes every existing file old enough to be kept


def full_copy(src: Path, dst: Path) -> None:
    dst.mkdir()
    apply(_reader(b"".join(capture(src))), dst, policy=ROOTFS_POLICY)


class _reader:
    def __init__(self, data: bytes) -> None:
        self._data = memoryview(data)
        self._pos = 0

    def read(self, n: int = -1) -> bytes:
        out = bytes(self._data[self._pos : self._pos + (n if n >= 0 else len(self._data))])
        self._pos += len(out)
        return out


def pre_copy(src: Path, dst: Path, started_ns: int) -> precopy.PreCopy:
    pc = precopy.PreCopy(started_ns=started_ns)
    dst.mkdir()
    cap = capture(src, live=True, record=pc.record)
    apply(_reader(b"".join(cap)), dst, policy=ROOTFS_POLICY)
    return pc


def delta(src: Path, dst: Path, pc: precopy.PreCopy) -> tuple[CaptureStats, ApplyStats]:
    cap = capture(src, keep=pc.unchanged)
    data = b"".join(cap)
    return cap.stats, apply(_reader(data), dst, policy=ROOTFS_DELTA_POLICY)


def flip_byte(path: Path, at: int) -> None:
    """Change the byte at ``at`` in place and set the times back: same size, same mtime."""
    st = os.stat(path)
    data = bytearray(path.read_bytes())
    data[at] ^= 0xFF
    with open(path, "r+b") as f:
        f.write(data)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def mutate(src: Path) -> None:
    """Every kind of change between pre-copy and pause."""
    os.chmod(src / "readonly", 0o755)
    # Same size, same mtime (set back): only ctime and inode-level state tell.
    busybox = src / "bin" / "busybox"
    flip_byte(busybox, 100)
    os.chmod(busybox, 0o4755)
    # Deleted file, deleted directory tree, renamed file, file replaced by a directory and a
    # directory replaced by a file.
    (src / "bigid").unlink()
    for dirpath, _, filenames in os.walk(src / "level-00-padding", topdown=False):
        for n in filenames:
            os.unlink(os.path.join(dirpath, n))
        os.rmdir(dirpath)
    os.rename(src / "etc" / "passwd", src / "etc" / "passwd.renamed")
    (src / "copied-up").unlink()
    (src / "copied-up").mkdir()
    (src / "copied-up" / "inside").write_bytes(b"now a dir")
    os.rmdir(src / "empty")
    (src / "empty").write_bytes(b"now a file")
    # Hard links: a new name for an old inode; one name of a 3-link group removed.
    os.link(src / "odd" / "with space", src / "odd" / "hardlinked")
    (src / "etc" / "ping-copy").unlink()
    # Whiteout and opaque directory made after the pre-copy; an xattr dropped from a dir.
    os.mknod(src / "whiteout-late", stat.S_IFCHR | 0o000, os.makedev(0, 0))
    os.removexattr(src / "opaque", "trusted.overlay.opaque")
    (src / "opaque-late").mkdir()
    os.setxattr(src / "opaque-late", "trusted.overlay.opaque", b"y")
    os.mkfifo(src / "fifo-late")
    os.symlink("/elsewhere", src / "bin" / "ls-new")
    os.unlink(src / "bin" / "ls")
    os.symlink("busybox-changed", src / "bin" / "ls")
    # A sparse file grown, a new file, an owner change.
    with open(src / "trailing-hole", "r+b") as f:
        f.seek(6 << 20)
        f.write(b"grown")
    (src / "brand-new").write_bytes(os.urandom(5000))
    os.chown(src / "odd" / "caf\u00e9", 4321, 4321)


@needs_root
def test_delta_after_every_kind_of_change_equals_a_full_copy(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    build_everything(src)
    pc = pre_copy(src, tmp_path / "dst", FAR_FUTURE_NS)
    assert pc.files  # regular files were recorded
    mutate(src)
    frozen = snapshot(src)
    cstats, astats = delta(src, tmp_path / "dst", pc)
    full_copy(src, tmp_path / "full")
    assert snapshot(tmp_path / "dst") == frozen == snapshot(tmp_path / "full")
    # Unchanged files were not sent again; the changed ones were.
    assert cstats.kept > 0 and astats.kept == cstats.kept
    assert astats.removed >= 4  # bigid, level-00-padding, passwd, ping-copy
    sent = cstats.bytes
    assert sent < sum(k[1] for k in pc.files.values())


@needs_root
def test_nothing_is_kept_when_the_ctime_is_racy(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    build_everything(src)
    # The pre-copy "started" now: every file's ctime is within the racy margin.
    pc = pre_copy(src, tmp_path / "dst", time.time_ns())
    cstats, astats = delta(src, tmp_path / "dst", pc)
    assert cstats.kept == 0
    assert snapshot(tmp_path / "dst") == snapshot(src)


@needs_root
def test_same_size_same_mtime_rewrite_is_sent(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    f = src / "counter"
    f.write_bytes(b"A" * 4096)
    pc = pre_copy(src, tmp_path / "dst", FAR_FUTURE_NS)
    st = os.stat(f)
    f.write_bytes(b"B" * 4096)
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))  # mtime cannot tell
    assert os.stat(f).st_mtime_ns == st.st_mtime_ns
    cstats, _ = delta(src, tmp_path / "dst", pc)
    assert cstats.kept == 0
    assert (tmp_path / "dst" / "counter").read_bytes() == b"B" * 4096


@needs_root
def test_files_open_for_writing_at_the_start_are_never_kept(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "log").write_bytes(b"x" * 100)
    (src / "mapped").write_bytes(b"m" * 4096)
    (src / "idle").write_bytes(b"i" * 100)
    # A child holding one file open for writing and another mapped shared and writable;
    # its root is the host's, so the paths it shows are absolute host paths: treat src as
    # its "container root" by making them relative to "/".
    prog = (
        "import mmap, os, sys, time\n"
        f"w = open({str(src / 'log')!r}, 'ab')\n"
        f"fd = os.open({str(src / 'mapped')!r}, os.O_RDWR)\n"
        "m = mmap.mmap(fd, 4096, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)\n"
        "os.close(fd)\n"
        "print('ready', flush=True)\n"
        "time.sleep(60)\n"
    )
    child = subprocess.Popen([sys.executable, "-c", prog], stdout=subprocess.PIPE)
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == b"ready"
        busy = precopy.written_paths([child.pid])
    finally:
        child.kill()
        child.wait()
    rel = os.fsencode(src).lstrip(b"/")
    assert rel + b"/log" in busy
    assert rel + b"/mapped" in busy
    assert rel + b"/idle" not in busy
    pc = precopy.PreCopy(started_ns=FAR_FUTURE_NS, busy=frozenset(p[len(rel) + 1 :] for p in busy))
    (tmp_path / "dst").mkdir()
    apply(
        _reader(b"".join(capture(src, live=True, record=pc.record))),
        tmp_path / "dst",
        policy=ROOTFS_POLICY,
    )
    cstats, _ = delta(src, tmp_path / "dst", pc)
    assert cstats.kept == 1  # idle only


def test_live_capture_skips_vanished_names_and_pads_truncated_files(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a").write_bytes(b"a" * 10)
    (src / "b").write_bytes(b"b" * (3 << 20))
    (src / "c").write_bytes(b"c" * 10)
    pc = precopy.PreCopy(started_ns=FAR_FUTURE_NS)
    cap = capture(src, live=True, record=pc.record, chunk_size=1 << 20)
    chunks = [next(cap)]  # the root, a and the start of b
    os.unlink(src / "c")  # vanishes before it is read
    os.truncate(src / "b", 5)  # shrinks while it is read
    chunks.extend(cap)
    assert cap.stats.members == 3  # root, a, b: c is skipped
    assert set(pc.files) == {b"a"}  # b was not read whole, c not at all
    dst = tmp_path / "dst"
    dst.mkdir()
    apply(_reader(b"".join(chunks)), dst, policy=ROOTFS_POLICY)
    assert sorted(os.listdir(dst)) == ["a", "b"]
    # The frozen delta puts b right.
    delta(src, dst, pc)
    assert (dst / "b").read_bytes() == b"b" * 5


def test_a_frozen_capture_still_refuses_a_changing_file(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "b").write_bytes(b"b" * (3 << 20))
    cap = capture(src, chunk_size=1 << 20)
    next(cap)
    os.truncate(src / "b", 5)
    with pytest.raises(TransferFailed):
        list(cap)


def test_keep_members_only_in_a_delta(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"f")
    data = b"".join(capture(src, keep=lambda rel, st: True))
    (tmp_path / "dst").mkdir()
    with pytest.raises(BundleInvalid):
        apply(_reader(data), tmp_path / "dst", policy=ROOTFS_POLICY)
    # In a delta, a keep member for a file that is not there fails instead of making one.
    with pytest.raises(TransferFailed):
        apply(_reader(data), tmp_path / "dst", policy=ROOTFS_DELTA_POLICY)


def test_busy_paths_under_a_volume_are_relative_to_it() -> None:
    pc = precopy.PreCopy(
        started_ns=1, busy=frozenset({b"var/lib/db/wal", b"var/lib/dbx/f", b"etc/x"})
    )
    sub = pc.under("/var/lib/db")
    assert sub.busy == frozenset({b"wal"}) and sub.started_ns == 1
    assert pc.under("/").busy == pc.busy


def test_start_reads_the_clock_before_listing_the_processes() -> None:
    asked: list[int] = []

    def list_pids() -> list[int]:
        asked.append(time.time_ns())
        return []

    pc = precopy.PreCopy.start(list_pids)
    assert asked and pc.started_ns <= asked[0]
    assert pc.busy == frozenset()


def test_flush_returns_once_the_file_system_is_synced(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"x" * 4096)
    assert precopy.flush(tmp_path, timeout_s=60)
    assert not precopy.flush(tmp_path / "missing", timeout_s=5)  # logged, not raised


def live_pass(src: Path, dst: Path, pc: precopy.PreCopy) -> CaptureStats:
    """A second pre-copy pass: a live delta over the previous one."""
    cap = capture(src, live=True, record=pc.record, keep=pc.keep_from_previous)
    data = b"".join(cap)
    apply(_reader(data), dst, policy=ROOTFS_DELTA_POLICY)
    return cap.stats


@needs_root
def test_a_second_pass_takes_the_racy_files_out_of_the_freeze(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    build_everything(src)
    # Pass 1 "started" now: every file is too recently changed for it to vouch for.
    pc1 = pre_copy(src, dst, time.time_ns())
    assert pc1.racy_bytes > 0 and pc1.worth_another_pass(0.1)
    mutate(src)  # changes during the first pass
    # Pass 2, as if it started long after: it sends what changed and keeps nothing of pass 1
    # (pass 1 vouches for nothing), then the freeze sends nothing it read.
    pc2 = precopy.PreCopy(started_ns=FAR_FUTURE_NS, previous=pc1)
    s2 = live_pass(src, dst, pc2)
    assert s2.kept == 0 and pc2.passes == 2
    frozen = snapshot(src)
    cstats, _ = delta(src, dst, pc2)
    full_copy(src, tmp_path / "full")
    assert snapshot(dst) == frozen == snapshot(tmp_path / "full")
    assert cstats.bytes == 0 and cstats.kept == len(pc2.files)


@needs_root
def test_files_kept_by_a_second_pass_are_judged_by_the_first(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    build_everything(src)
    pc1 = pre_copy(src, dst, FAR_FUTURE_NS)
    (src / "brand-new-1").write_bytes(b"n" * 100)
    pc2 = precopy.PreCopy(started_ns=FAR_FUTURE_NS, previous=pc1)
    s2 = live_pass(src, dst, pc2)
    assert s2.kept == len(pc2.kept) > 0 and b"brand-new-1" in pc2.files
    # A file the second pass only named changes before the pause: the freeze sends it.
    busybox = src / "bin" / "busybox"
    assert b"bin/busybox" in pc2.kept
    flip_byte(busybox, 5)
    os.chmod(busybox, 0o4755)
    frozen = snapshot(src)
    cstats, _ = delta(src, dst, pc2)
    assert snapshot(dst) == frozen
    assert cstats.bytes >= busybox.stat().st_size  # the whole file again
