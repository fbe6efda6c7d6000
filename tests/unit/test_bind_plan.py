"""What the destination agent does with a bind-mounted path (pure planning, tmp dirs)."""

from __future__ import annotations

from pathlib import Path

import pytest

from migrate.agent.server import bind_plan
from migrate.core.errors import ProtocolError, Unsupported, VolumeConflict


def test_same_path_needs_the_path(tmp_path: Path) -> None:
    assert bind_plan(str(tmp_path), "same-path") is None
    with pytest.raises(Unsupported, match="does not exist"):
        bind_plan(str(tmp_path / "missing"), "same-path")


def test_copy_creates_the_missing_top_directory(tmp_path: Path) -> None:
    assert bind_plan(str(tmp_path / "a" / "b" / "c"), "copy") == (tmp_path / "a", False)
    assert bind_plan(str(tmp_path / "a"), "copy") == (tmp_path / "a", False)


def test_copy_fills_an_empty_directory(tmp_path: Path) -> None:
    assert bind_plan(str(tmp_path), "copy") == (tmp_path, True)


def test_copy_never_merges_or_overwrites(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    with pytest.raises(VolumeConflict, match="not empty"):
        bind_plan(str(tmp_path), "copy")
    with pytest.raises(VolumeConflict, match="not a directory"):
        bind_plan(str(tmp_path / "f"), "copy")
    (tmp_path / "l").symlink_to(tmp_path)
    with pytest.raises(VolumeConflict):
        bind_plan(str(tmp_path / "l"), "copy")


@pytest.mark.parametrize("p", ["rel/path", "/a/../etc", "/", "/a//b", "/a/b/"])
def test_odd_paths_are_refused(p: str) -> None:
    with pytest.raises(ProtocolError):
        bind_plan(p, "copy")


@pytest.mark.parametrize("p", ["/proc/x", "/sys", "/dev/shm/x", "/run/docker"])
def test_copy_stays_out_of_system_trees(p: str) -> None:
    with pytest.raises(Unsupported):
        bind_plan(p, "copy")
