"""runc called directly on a container Docker runs: checkpoints (Docker's own checkpoint API
scales at ~15 ms per MB here, runc direct dumps 256 MB in 0.3 s; PLATFORM.md) and the freezer
when Docker's and runc's view of a pause disagree.

Docker keeps seeing the container as paused throughout, so unpausing it through Docker is
still a clean rollback.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
from pathlib import Path

from migrate.checkpoint.criu import log_tail
from migrate.checkpoint.postcopy import LOOPBACK, PageServer, free_port
from migrate.core.errors import CheckpointFailed, EngineError
from migrate.engines.base import ContainerState
from migrate.engines.docker import runc_conf
from migrate.engines.docker.criu_log import criu_hint

log = logging.getLogger(__name__)

RUNC_TIMEOUT = 600


def runc_binary() -> str:
    """The runc that Docker uses (Debian's package puts it in /usr/sbin)."""
    return shutil.which("runc") or "/usr/sbin/runc"


def runc_root(pid: int) -> Path | None:
    """runc's state root for a running container: from its shim's options.json."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        ppid = int(re.search(r"^PPid:\s*(\d+)", status, re.MULTILINE).group(1))  # type: ignore[union-attr]
        bundle = Path(os.readlink(f"/proc/{ppid}/cwd"))
        opts = json.loads((bundle / "options.json").read_text())
        ns = bundle.parent.name  # .../io.containerd.runtime.v2.task/<namespace>/<id>
        root = Path(opts.get("root") or "")
        if root and (root / ns).is_dir():
            return root / ns
    except (OSError, ValueError, AttributeError) as e:
        log.debug("runc root not found via shim of pid %s: %s", pid, e)
    return None


def _target(st: ContainerState) -> tuple[str, Path]:
    """The runc binary and runc's state root for the container."""
    runc = runc_binary()
    root = runc_root(st.pid) if st.pid else None
    if root is None or not (root / st.id).is_dir():
        raise CheckpointFailed(
            f"cannot find runc's state for container {st.name}",
            hint="is the container running under runc (Docker's default runtime)?",
        )
    return runc, root


def checkpoint(st: ContainerState, image_dir: Path, work_dir: Path) -> None:
    """Dump the (paused) container's tasks with CRIU, leaving them paused."""
    argv = _checkpoint_argv(st, image_dir, work_dir, "--leave-running")
    log.debug("checkpoint: %s", argv)
    try:
        with runc_conf.criu_config_lock(exclusive=False):
            p = subprocess.run(
                argv,
                capture_output=True,
                text=True,
                timeout=RUNC_TIMEOUT,
                check=False,
                env=runc_conf.dump_env(work_dir),
            )
    except subprocess.TimeoutExpired:
        raise CheckpointFailed(
            f"CRIU dump of {st.name} did not finish in {RUNC_TIMEOUT} s",
            details={"criu_log": log_tail(work_dir / "dump.log")},
        ) from None
    if p.returncode != 0:
        tail = log_tail(work_dir / "dump.log")
        raise CheckpointFailed(
            f"CRIU could not checkpoint {st.name}: {p.stderr.strip()[-500:]}\n"
            f"CRIU log ({work_dir / 'dump.log'}), last lines:\n{tail}",
            hint=criu_hint(tail),
            details={"criu_log": tail, "log_path": str(work_dir / "dump.log")},
        )


def start_lazy_checkpoint(st: ContainerState, image_dir: Path, work_dir: Path) -> PageServer:
    """Post-copy dump of the (paused) container: CRIU writes the non-memory images to
    ``image_dir`` and then serves the memory from a page server on this host's loopback
    until the destination has all of it (postcopy.py). Returns once the images are
    written. No --leave-running: once every page has moved CRIU kills the source tasks;
    if the link breaks first they stay frozen (Docker still sees them paused)."""
    port = free_port()
    argv = _checkpoint_argv(
        st, image_dir, work_dir, "--lazy-pages", "--page-server", f"{LOOPBACK}:{port}"
    )
    log.debug("lazy checkpoint: %s", argv)
    # CRIU reads runc.conf as it starts: hold the lock (shared) until the images are
    # written, not while the page server runs.
    with runc_conf.criu_config_lock(exclusive=False):
        server = PageServer(argv, work_dir, port, env=runc_conf.dump_env(work_dir))
        server.wait_ready()
    return server


def _checkpoint_argv(st: ContainerState, image_dir: Path, work_dir: Path, *opts: str) -> list[str]:
    """``runc checkpoint`` of ``st`` with ``opts``, into ``image_dir`` (both directories made)."""
    runc, root = _target(st)
    image_dir.mkdir(parents=True, exist_ok=True)
    work_dir.mkdir(parents=True, exist_ok=True)
    return [
        runc,
        "--root",
        str(root),
        "checkpoint",
        *opts,
        "--image-path",
        str(image_dir),
        "--work-path",
        str(work_dir),
        "--file-locks",
        st.id,
    ]


def _runc(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """A quick runc command on the state under ``root``."""
    return subprocess.run(
        [runc_binary(), "--root", str(root), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def pause(st: ContainerState) -> None:
    """Freeze the container through runc (Docker believes it paused already)."""
    root = runc_root(st.pid) if st.pid else None
    if root is None:
        raise EngineError(
            f"docker says {st.name} is paused, runc disagrees, and runc's "
            "state cannot be found to reconcile them"
        )
    p = _runc(root, "pause", st.id)
    if p.returncode != 0:
        raise EngineError(f"runc pause {st.name}: {p.stderr.strip()[-300:]}")


def is_frozen(st: ContainerState) -> bool:
    """Whether runc sees the (Docker-paused) container as paused too."""
    root = runc_root(st.pid)
    if root is None:
        raise EngineError(f"runc's state for {st.name} cannot be found to freeze it")
    p = _runc(root, "state", st.id)
    return p.returncode == 0 and json.loads(p.stdout or "{}").get("status") == "paused"
