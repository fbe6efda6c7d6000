"""`migrate inspect`: what a bundle (or a directory of CRIU images) holds, read with pycriu.

Process tree with command lines (read from the dumped memory: the argv area that mm-PID.img
points at), memory pages per process, open files, sockets and mounts, plus the bundle's
manifest metadata and sizes per part.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from migrate.core.errors import BundleInvalid
from migrate.fs import bundle

PAGE = 4096
_PE_PRESENT = 1 << 2  # CRIU pagemap flag: the pages are in pages-N.img, in pagemap order


@dataclass(frozen=True)
class Process:
    pid: int
    ppid: int
    comm: str
    cmdline: str
    threads: int
    pages: int


@dataclass(frozen=True)
class Inspection:
    meta: dict[str, Any]
    sizes: dict[str, int]
    processes: list[Process] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    sockets: list[str] = field(default_factory=list)
    mounts: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _load(d: Path, name: str) -> list[dict[str, Any]]:
    import pycriu

    try:
        with open(d / name, "rb") as f:
            return list(pycriu.images.load(f)["entries"])
    except FileNotFoundError:
        return []
    except Exception as e:  # noqa: BLE001 - pycriu raises assorted errors on bad images
        raise BundleInvalid(f"CRIU image {name} cannot be decoded: {e}") from None


def _memory(d: Path, pid: int, start: int, end: int) -> tuple[int, bytes]:
    """Pages dumped for ``pid`` and the bytes of [start, end) if they were dumped."""
    entries = _load(d, f"pagemap-{pid}.img")
    if not entries:
        return 0, b""
    pages_file = d / f"pages-{entries[0]['pages_id']}.img"
    total = 0
    found = b""
    offset = 0  # in pages-N.img
    for e in entries[1:]:
        n = int(e["nr_pages"])
        if not int(e["flags"]) & _PE_PRESENT:
            continue
        lo, hi = int(e["vaddr"]), int(e["vaddr"]) + n * PAGE
        if not found and lo <= start < end <= hi:
            with open(pages_file, "rb") as f:
                f.seek(offset + start - lo)
                found = f.read(end - start)
        offset += n * PAGE
        total += n
    return total, found


def inspect_images(d: Path) -> tuple[list[Process], list[str], list[str], list[str]]:
    procs = []
    for e in _load(d, "pstree.img"):
        pid = int(e["pid"])
        core = _load(d, f"core-{pid}.img")
        comm = str(core[0].get("tc", {}).get("comm", "")) if core else ""
        mm = _load(d, f"mm-{pid}.img")
        start = int(mm[0]["mm_arg_start"]) if mm else 0
        end = int(mm[0]["mm_arg_end"]) if mm else 0
        pages, argv = _memory(d, pid, start, min(end, start + 64 * 1024))
        cmdline = " ".join(a.decode(errors="replace") for a in argv.rstrip(b"\0").split(b"\0"))
        procs.append(Process(pid, int(e["ppid"]), comm, cmdline, len(e.get("threads", [])), pages))
    files = sorted({str(f["reg"]["name"]) for f in _load(d, "files.img") if "reg" in f})
    sockets = []
    for f in _load(d, "files.img"):
        for kind in ("isk", "usk", "nlsk", "psk"):
            if kind in f:
                s = f[kind]
                if kind == "isk":
                    addr = ",".join(map(str, s.get("src_addr", [])))
                    sockets.append(
                        f"inet {s.get('proto')} {addr}:{s.get('src_port')} {s.get('state')}"
                    )
                elif kind == "usk":
                    sockets.append(f"unix {s.get('name', '')!s} {s.get('state')}")
                else:
                    sockets.append(kind)
    mounts = []
    for name in sorted(p.name for p in d.glob("mountpoints-*.img")):
        mounts += [f"{m['mountpoint']} {m['fstype']} {m.get('source', '')}" for m in _load(d, name)]
    return procs, files, sockets, mounts


@contextmanager
def _images(path: Path) -> Iterator[tuple[Path, dict[str, Any], dict[str, int]]]:
    if path.is_dir():
        size = sum(p.stat().st_size for p in path.iterdir() if p.is_file())
        yield path, {}, {"checkpoint": size}
        return
    tmp = Path(tempfile.mkdtemp(prefix="migrate-inspect-"))
    try:
        manifest = bundle.extract(path, tmp / "b")
        sizes: dict[str, int] = {}
        for m in manifest.members:
            part = m.name.split("/", 1)[0] if "/" in m.name else m.name
            sizes[part] = sizes.get(part, 0) + m.size
        sizes["bundle"] = path.stat().st_size
        meta = {k: v for k, v in manifest.meta.items() if k != "spec"}
        yield tmp / "b" / "checkpoint", meta, sizes
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def inspect(path: Path) -> Inspection:
    """Inspect a bundle file (verified first) or a directory of CRIU images."""
    with _images(path) as (d, meta, sizes):
        procs, files, sockets, mounts = inspect_images(d)
    return Inspection(meta, sizes, procs, files, sockets, mounts)
