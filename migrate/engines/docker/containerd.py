"""containerd's side of a Docker restore: where its task directory is, and the temporary
copies of the checkpoint images it unpacks for CRIU and never deletes."""

from __future__ import annotations

from pathlib import Path

from migrate.engines.docker.procscan import environ, socket_owner

_COMPARE_MAX = 1 << 20  # image files compared to recognise containerd's copy of ours


def restore_copies(exec_root: Path, images: Path) -> list[Path]:
    """containerd's ``ctrd-checkpoint*`` temporary directories holding a copy of ``images``.

    They live in containerd's temporary directory ($XDG_RUNTIME_DIR, else $TMPDIR, else /tmp,
    seen through its own root in case it has a private /tmp). A directory counts as ours only
    when every small image file in it is byte-identical to ours: other restores, of other
    containers, may be running at the same time."""
    sock = exec_root / "containerd" / "containerd.sock"
    pid = socket_owner(str(sock)) if sock.exists() else None
    if pid is None:
        pid = socket_owner("/run/containerd/containerd.sock")
    roots: list[Path] = []
    if pid is not None:
        env = environ(pid)
        tmp = env.get("XDG_RUNTIME_DIR") or env.get("TMPDIR") or "/tmp"
        roots.append(Path(f"/proc/{pid}/root") / tmp.lstrip("/"))
    roots.append(Path("/tmp"))
    try:
        ours = {f.name: f for f in images.iterdir() if f.is_file()}
    except OSError:
        return []
    small = {n: f for n, f in ours.items() if f.stat().st_size <= _COMPARE_MAX}
    if not small:
        return []
    found: list[Path] = []
    seen: set[tuple[int, int]] = set()
    for root in roots:
        try:
            candidates = sorted(root.glob("ctrd-checkpoint*"))
        except OSError:
            continue
        for d in candidates:
            try:
                st = d.stat()
                if (st.st_dev, st.st_ino) in seen or not d.is_dir():
                    continue
                seen.add((st.st_dev, st.st_ino))
                if all((d / n).read_bytes() == f.read_bytes() for n, f in small.items()):
                    found.append(d)
            except OSError:
                continue
    return found


def task_work(exec_root: Path, cid: str) -> Path:
    """The work directory of the container's task in Docker's containerd (namespace moby):
    where CRIU writes restore.log for a plain restore."""
    return (
        exec_root
        / "containerd"
        / "daemon"
        / "io.containerd.runtime.v2.task"
        / "moby"
        / cid
        / "work"
    )
