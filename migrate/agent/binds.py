"""Bind mounts on the destination: what `--bind-mounts same-path|copy` may do with a path."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from migrate.core.errors import ProtocolError, Unsupported, VolumeConflict

# Host trees a copied bind mount must never be written into.
_BIND_FORBIDDEN = ("/proc", "/sys", "/dev", "/run", "/boot")


def bind_plan(p: str, mode: str) -> tuple[Path, bool] | None:
    """What the destination does for a bind-mounted ``path``: None (same-path: use it as it
    is) or (the topmost directory to create, or the path itself, and whether it exists
    already, empty). Refuses what would be wrong: a missing path for same-path, a path with
    content (never merged or overwritten) or in a system tree for copy."""
    path = Path(p)
    if not p.startswith("/") or ".." in path.parts or p != os.path.normpath(p) or p == "/":
        raise ProtocolError(f"bind mount path {p!r} is not a normal absolute path")
    if mode == "same-path":
        if not path.exists():
            raise Unsupported(
                f"the bind-mounted path {p} does not exist on the destination",
                hint="--bind-mounts same-path needs the same data at that path there (shared "
                "storage, or copied beforehand); or use --bind-mounts copy",
            )
        return None
    if any(p == f or p.startswith(f + "/") for f in _BIND_FORBIDDEN):
        raise Unsupported(
            f"--bind-mounts copy does not write into {p} (a system tree)",
            hint="use --bind-mounts same-path for host paths like that",
        )
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        raise VolumeConflict(
            f"{p} exists on the destination and is not a directory",
            hint=f"remove {p} there, or use --bind-mounts same-path",
        )
    if path.is_dir():
        if any(path.iterdir()):
            raise VolumeConflict(
                f"{p} exists on the destination and is not empty: --bind-mounts copy does "
                "not overwrite or merge",
                hint=f"empty or remove {p} there, or use --bind-mounts same-path if it "
                "holds the same data",
            )
        return path, True
    top = path
    while not top.parent.exists():
        top = top.parent
    if top.parent.is_symlink() or not top.parent.is_dir():
        raise VolumeConflict(f"{top.parent} on the destination is not a directory")
    return top, False


def parse_binds(data: list[Any] | None) -> list[tuple[str, str]]:
    out = []
    for b in data or []:
        if not (
            isinstance(b, dict)
            and isinstance(b.get("path"), str)
            and b.get("mode") in ("same-path", "copy")
        ):
            raise ProtocolError("binds: each must be {path, mode: same-path|copy}")
        out.append((b["path"], b["mode"]))
    return out


def empty_dir(d: Path) -> None:
    if not d.is_dir() or d.is_symlink():
        return
    for child in d.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)
