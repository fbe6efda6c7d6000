"""Restoring a cold checkpoint without pushing its memory through Docker.

Docker 20.10's restore tars the whole checkpoint into containerd's content store and containerd
untars it again into a temporary directory before runc sees it: about 16 ms per MB of memory
here (4 s for 256 MB, 28 s for 1 GB; benchmarks/results/downtime-breakdown.md). Only the memory
is big, so we hand Docker a copy of the checkpoint *without* the memory of lazy-capable areas
(anonymous private mappings: the heap, stacks, ...) and let a local ``criu lazy-pages`` daemon
feed those pages from the complete images on this host's disk through userfaultfd while, and
just after, the container starts. The daemon exits once every page is in; until then the agent
does not report ``restored``, so the source copy (paused, intact) is still the rollback point.

CRIU already flags those pagemap entries ``PE_LAZY`` in a plain dump; the split copy keeps the
entries but drops their ``PE_PRESENT`` flag and their bytes from ``pages-N.img``, which is the
shape CRIU itself writes for a lazy dump.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from migrate.checkpoint import criu
from migrate.checkpoint.criu import log_tail
from migrate.core.errors import DiskFull, RestoreFailed

log = logging.getLogger(__name__)


class LazyRestoreHost(Protocol):
    """What a split restore needs of the container engine (engines/base.py's Engine is one;
    this package sits below the engines and names only this)."""

    def lazy_restore_blocker(self) -> str:
        """Why the engine cannot restore lazily here ("" when it can)."""
        ...


# pagemap entry flags (criu/include/pagemap.h)
PE_PARENT = 1 << 0
PE_LAZY = 1 << 1
PE_PRESENT = 1 << 2
PAGE_SIZE = 4096
_COPY_CHUNK = 1 << 20

SOCKET_WAIT_S = 10.0
DAEMON_LOG = "lazy-pages.log"
# Below this much lazy memory Docker's own restore path is as fast as the daemon's start.
MIN_LAZY_BYTES = 16 << 20
ENV_SWITCH = "MIGRATE_LAZY_RESTORE"  # "0": always restore the plain way
WORK_ROOT = Path("/run/migrate")  # the daemons' work directories (their sockets)
FILL_TIMEOUT_S = 600.0  # the longest the daemon may take to feed every page


@dataclass(frozen=True)
class SplitStats:
    kept_bytes: int  # memory that goes through Docker's restore
    lazy_bytes: int  # memory the lazy-pages daemon serves


def split(full: Path, out: Path) -> SplitStats:
    """Copy the CRIU images in ``full`` to the new directory ``out`` without the bytes of the
    pages flagged lazy; ``full`` is left untouched for the lazy-pages daemon.

    Raises ValueError when the images are not what we understand (parent images from a
    pre-dump, a pagemap without its pages file): the caller then restores the plain way."""
    from pycriu.images import dump, load  # pycriu is installed by `make setup`

    out.mkdir(parents=True, exist_ok=False)
    kept = lazy = 0
    for f in sorted(full.iterdir()):
        if not f.is_file() or f.name.startswith(("pagemap-", "pages-")):
            continue
        shutil.copy2(f, out / f.name)
    for pm in sorted(full.glob("pagemap-*.img")):
        with open(pm, "rb") as fh:
            img = load(fh)
        entries = img["entries"]
        if not entries or "pages_id" not in entries[0]:
            raise ValueError(f"{pm.name}: no pagemap head")
        pages_name = f"pages-{entries[0]['pages_id']}.img"
        with open(full / pages_name, "rb") as src, open(out / pages_name, "wb") as dst:
            for e in entries[1:]:
                flags = int(e.get("flags", 0))
                if flags & PE_PARENT:
                    raise ValueError(f"{pm.name}: pages in a parent image (pre-dump)")
                if not flags & PE_PRESENT:
                    continue
                n = int(e["nr_pages"]) * PAGE_SIZE
                if flags & PE_LAZY:
                    src.seek(n, os.SEEK_CUR)
                    e["flags"] = flags & ~PE_PRESENT
                    lazy += n
                    continue
                left = n
                while left:
                    buf = src.read(min(left, _COPY_CHUNK))
                    if not buf:
                        raise ValueError(f"{pages_name} is shorter than {pm.name} says")
                    dst.write(buf)
                    left -= len(buf)
                kept += n
        with open(out / pm.name, "wb") as fh:
            dump(img, fh)
    for f in full.glob("pages-*.img"):  # pages files no pagemap names (none expected)
        if not (out / f.name).exists():
            shutil.copy2(f, out / f.name)
    return SplitStats(kept_bytes=kept, lazy_bytes=lazy)


_PR_SET_PDEATHSIG = 1


def _die_with(parent: int) -> Callable[[], None]:
    """preexec_fn: the daemon is SIGKILLed when the agent that started it dies. A killed agent
    means a migration rolled back (its `restored` was never journalled), so the daemon would
    only serve pages to a removed container, forever: seen in the fault matrix, the daemon
    outlived a SIGKILLed agent (its own session) with its images deleted under it."""

    def child() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:  # the agent died before the prctl took effect
            os._exit(1)

    return child


def blocker(engine: LazyRestoreHost) -> str:
    """Why a split restore cannot be done on this host ("" when it can)."""
    if os.environ.get(ENV_SWITCH, "1") == "0":
        return f"{ENV_SWITCH}=0"
    if criu.find_criu() is None or not criu.pycriu_available():
        return "pycriu or criu missing"
    return engine.lazy_restore_blocker() or ""


def split_for_restore(
    engine: LazyRestoreHost, full: Path, target: Path
) -> tuple[SplitStats | None, str]:
    """Write Docker's copy of the images in ``full`` to ``target`` without the lazy memory,
    when that is possible and worth it; else nothing is written and the reason is returned
    (the caller restores the plain way). A full disk is an error, not a reason."""
    reason = blocker(engine)
    if reason:
        return None, reason
    try:
        stats = split(full, target)
    except OSError as e:
        shutil.rmtree(target, ignore_errors=True)
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DiskFull(
                f"no space for the checkpoint images in {target.parent}: {e}",
                hint="free space on the Docker data root",
            ) from None
        return None, f"images not split: {e}"
    except (ValueError, KeyError, ImportError) as e:
        shutil.rmtree(target, ignore_errors=True)
        return None, f"images not split: {e}"
    if stats.lazy_bytes < MIN_LAZY_BYTES:
        shutil.rmtree(target, ignore_errors=True)
        return None, f"only {stats.lazy_bytes} bytes of lazy memory"
    return stats, ""


class LazyPagesDaemon:
    """``criu lazy-pages`` serving pages from local images, started and reaped by us.

    The restoring CRIU finds it through ``lazy-pages.socket`` in the shared work directory
    (runc's CRIU configuration names that directory: see engines/docker/runc_conf.py)."""

    def __init__(
        self,
        criu_bin: str,
        images: Path,
        work: Path,
        *,
        page_server: tuple[str, int] | None = None,
        verbosity: int = 2,
    ) -> None:
        """``page_server``: fetch the pages from that address (post-copy, postcopy.py) instead
        of the images' own pages files."""
        self.images = images
        self.work = work
        self.log_path = work / DAEMON_LOG
        work.mkdir(parents=True, exist_ok=True)
        argv = [
            criu_bin,
            "lazy-pages",
            "-D",
            str(images),
            "-W",
            str(work),
            "-o",
            DAEMON_LOG,
            f"-v{verbosity}",
        ]
        if page_server is not None:
            argv += ["--page-server", "--address", page_server[0], "--port", str(page_server[1])]
        log.debug("lazy-pages daemon: %s", argv)
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
            preexec_fn=_die_with(os.getpid()),
        )
        self.t_start = time.monotonic()
        self._wait_socket()

    def _wait_socket(self) -> None:
        sock = self.work / "lazy-pages.socket"
        deadline = time.monotonic() + SOCKET_WAIT_S
        while not sock.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise self._failure("the lazy-pages daemon did not start")
            time.sleep(0.002)

    def wait(self, timeout: float) -> float:
        """Wait until every page is in (the daemon exits 0); seconds it took since start."""
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise self._failure(
                f"the lazy-pages daemon did not finish in {timeout:.0f} s"
            ) from None
        if rc != 0:
            raise self._failure(f"the lazy-pages daemon failed (exit {rc})")
        return time.monotonic() - self.t_start

    def kill(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)  # our own session: only the daemon
            except ProcessLookupError:
                pass
            self.proc.wait()
        if self.proc.stderr is not None:
            self.proc.stderr.close()

    def _failure(self, what: str) -> RestoreFailed:
        err = b""
        if self.proc.stderr is not None and self.proc.poll() is not None:
            try:
                err = self.proc.stderr.read() or b""
            except (OSError, ValueError):
                pass
        tail = log_tail(self.log_path)
        return RestoreFailed(
            f"{what}: {err.decode(errors='replace').strip()[-300:]}\n"
            f"lazy-pages log ({self.log_path}), last lines:\n{tail}",
            hint="the source copy is intact and resumes; see the lazy-pages log",
            details={"criu_log": tail, "log_path": str(self.log_path)},
        )
