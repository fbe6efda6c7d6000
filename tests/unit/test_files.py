"""fs/files.py: chunked reads and atomic replacement of a file."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from migrate.fs.files import atomic_file, atomic_write, read_chunks

pytestmark = pytest.mark.unit


def test_read_chunks_sizes(tmp_path: Path) -> None:
    f = tmp_path / "f"
    data = os.urandom(10_000)
    f.write_bytes(data)
    chunks = list(read_chunks(f, 4096))
    assert [len(c) for c in chunks] == [4096, 4096, 1808]
    assert b"".join(chunks) == data


def test_read_chunks_limit(tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_bytes(b"x" * 100)
    assert [len(c) for c in read_chunks(f, 30, limit=70)] == [30, 30, 10]
    assert list(read_chunks(f, 30, limit=0)) == []
    assert b"".join(read_chunks(f, 30, limit=500)) == b"x" * 100  # shorter than the limit


def test_read_chunks_empty_and_lazy(tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_bytes(b"")
    assert list(read_chunks(f)) == []
    gen = read_chunks(tmp_path / "missing")  # opened on the first read, as a generator
    with pytest.raises(FileNotFoundError):
        next(gen)


@pytest.mark.parametrize("durable", [True, False])
def test_atomic_write_replaces(tmp_path: Path, durable: bool) -> None:
    f = tmp_path / "conf"
    f.write_text("old")
    atomic_write(f, "new ü", durable=durable)
    assert f.read_text(encoding="utf-8") == "new ü"
    atomic_write(f, b"\x00bytes")
    assert f.read_bytes() == b"\x00bytes"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["conf"]


def test_atomic_file_failure_keeps_old_content(tmp_path: Path) -> None:
    f = tmp_path / "conf"
    f.write_text("old")
    with pytest.raises(RuntimeError), atomic_file(f) as out:
        out.write(b"half")
        raise RuntimeError("writer failed")
    assert f.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["conf"]


def test_atomic_file_creates(tmp_path: Path) -> None:
    f = tmp_path / "new"
    with atomic_file(f) as out:
        out.write(b"a")
        out.write(b"b")
        assert not f.exists()  # nothing under the name until the block completes
    assert f.read_bytes() == b"ab"
