"""Post-copy (``--strategy lazy``): the processes that move memory after the container resumed.

Source: ``runc checkpoint --lazy-pages`` writes the small non-memory images, signals that on a
status pipe, then its CRIU stays as a page server on the source's loopback, holding the frozen
tasks' memory, until the destination has every page (it then kills the source tasks) or the
link breaks (the tasks stay frozen: Docker still sees the source paused).

Destination: a ``criu lazy-pages`` daemon serves the restored tasks' page faults and pushes the
remaining pages in the background, fetching them from that page server. Its TCP link goes to
a :class:`PageRelay` in the agent, and from there to the loopback port that sshd forwards to
the source (transport/tunnel.py). The relay exists for one reason: if the link to the source
breaks first, it kills the destination container *before* it closes the daemon's socket.
The daemon exits on that close, and once a userfaultfd is closed the kernel serves the
missing pages as zero-filled ones: without the relay the container could run on with holes
in its memory.
"""

from __future__ import annotations

import logging
import os
import re
import select
import signal
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from migrate.checkpoint.criu import log_tail
from migrate.core.errors import CheckpointFailed, PostcopyFailed

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
# How long the dump of the non-memory images may take before the page server is ready.
READY_TIMEOUT_S = 120.0
# After the upstream side of the relay ended, how long the daemon may take to close its own
# side (a normal end: it closes first) before the link counts as broken.
RELAY_GRACE_S = 2.0
_CHUNK = 1 << 18


def free_port() -> int:
    """A free TCP port on the loopback (CRIU's page server needs a number up front)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


class PageServer:
    """The source's lazy dump: ``argv`` is a runc checkpoint with --lazy-pages and
    --page-server on our loopback; we add --status-fd and supervise the process. ``env``:
    runc's environment (None: ours)."""

    def __init__(
        self,
        argv: Sequence[str],
        work_dir: Path,
        port: int,
        env: dict[str, str] | None = None,
    ) -> None:
        self.port = port
        self.work_dir = work_dir
        self.log_path = work_dir / "dump.log"
        r, w = os.pipe()
        self._stderr = open(work_dir / "runc-stderr.log", "wb")  # noqa: SIM115 - closed in kill
        try:
            # Its own session: killpg reaches runc and its CRIU, and nothing else.
            self.proc = subprocess.Popen(
                [*argv[:-1], "--status-fd", str(w), argv[-1]],
                pass_fds=(w,),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=self._stderr,
                start_new_session=True,
                env=env,
            )
        finally:
            os.close(w)
        self._status = r
        self.t_start = time.monotonic()

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> None:
        """Wait until CRIU has written the non-memory images and serves pages."""
        try:
            ready, _, _ = select.select([self._status], [], [], timeout)
            got = os.read(self._status, 1) if ready else b""
        finally:
            os.close(self._status)
        if ready and got:
            return
        self.kill()
        what = "did not get ready in time" if not ready else "failed"
        raise CheckpointFailed(
            f"the lazy CRIU dump {what}: {self._stderr_text()}\n"
            f"CRIU log ({self.log_path}), last lines:\n{log_tail(self.log_path)}",
            hint="the source resumes; `--strategy cold` does not need a page server",
            details={"criu_log": log_tail(self.log_path), "log_path": str(self.log_path)},
        )

    def wait(self, timeout: float) -> int | None:
        """Exit code, or None if still serving after ``timeout`` seconds."""
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def kill(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait()
        if not self._stderr.closed:
            self._stderr.close()

    def failure_text(self) -> str:
        return f"{self._stderr_text()}\nCRIU log ({self.log_path}):\n{log_tail(self.log_path)}"

    def _stderr_text(self) -> str:
        try:
            return (self.work_dir / "runc-stderr.log").read_text(errors="replace").strip()[-300:]
        except OSError:
            return ""


class PageRelay:
    """Loopback listener for the lazy-pages daemon, relayed to ``upstream_port`` (the port
    sshd forwards to the source). ``on_broken`` runs when the upstream side ends while the
    daemon still wants pages, before the daemon's socket is closed (see the module doc)."""

    def __init__(self, upstream_port: int, on_broken: Callable[[str], None]) -> None:
        self.upstream_port = upstream_port
        self._on_broken = on_broken
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.bind((LOOPBACK, 0))
        self._listener.listen(1)
        self.port = int(self._listener.getsockname()[1])
        self._down_eof = threading.Event()
        self._closed = threading.Event()
        self.broken = ""
        self.bytes_down = 0
        self._down: socket.socket | None = None
        self._up: socket.socket | None = None
        self._thread = threading.Thread(target=self._serve, daemon=True, name="page-relay")
        self._thread.start()

    def _serve(self) -> None:
        try:
            down, _ = self._listener.accept()
        except OSError:
            return  # closed before the daemon connected
        self._down = down
        try:
            up = socket.create_connection((LOOPBACK, self.upstream_port), timeout=30)
            up.settimeout(None)
            # A reset, never an EOF, if we close first (transport/tunnel.py says why).
            up.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError as e:
            self._broken(f"the forwarded page-server port does not answer: {e}")
            close_gently(down)
            return
        self._up = up
        t = threading.Thread(
            target=self._down_to_up, args=(down, up), daemon=True, name="page-relay-req"
        )
        t.start()
        reason = ""
        try:
            while True:
                data = up.recv(_CHUNK)
                if not data:
                    reason = "the source's page server closed the link"
                    break
                self.bytes_down += len(data)
                down.sendall(data)
        except OSError as e:
            reason = f"the link to the source's page server failed: {e}"
        if reason and not self._down_eof.wait(RELAY_GRACE_S) and not self._closed.is_set():
            self._broken(reason)
        abort(up)
        close_gently(down)  # only now may the daemon see its end: the container is stopped

    def _down_to_up(self, down: socket.socket, up: socket.socket) -> None:
        try:
            while data := down.recv(_CHUNK):
                up.sendall(data)
        except OSError:
            pass
        self._down_eof.set()
        try:
            up.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def _broken(self, reason: str) -> None:
        self.broken = reason
        log.error("post-copy link broken: %s", reason)
        try:
            self._on_broken(reason)
        except Exception:  # noqa: BLE001 - the daemon's socket must be closed regardless
            log.exception("stopping the destination copy after a broken post-copy link")

    def close(self) -> None:
        self._closed.set()
        close_gently(self._listener)  # wakes a pending accept()
        if self._up is not None:
            abort(self._up)  # never an orderly EOF towards the page server
        if self._down is not None:
            close_gently(self._down)
        self._thread.join(timeout=RELAY_GRACE_S + 1)


def abort(sock: socket.socket) -> None:
    """Close a socket that has SO_LINGER 0 with a reset. shutdown(SHUT_RD) first wakes a
    thread blocked in recv() on it (close() alone would not, and the socket would live on
    until that recv returns); it sends nothing itself."""
    _shutdown_and_close(sock, socket.SHUT_RD)


def close_gently(sock: socket.socket) -> None:
    """An orderly close that also wakes threads blocked on the socket (accept, recv)."""
    _shutdown_and_close(sock, socket.SHUT_RDWR)


def _shutdown_and_close(sock: socket.socket, how: int) -> None:
    # Either may find the socket closed already (by the peer, or by another thread).
    try:
        sock.shutdown(how)
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass


@dataclass(frozen=True)
class PageStats:
    """What the lazy-pages daemon's log says it moved (CRIU -v4 debug lines)."""

    faults: int  # page faults the restored tasks took on lazy memory: fetched on demand
    copied: int  # pages copied into the tasks in all
    total: int  # lazy pages the images announced

    @property
    def background(self) -> int:
        return max(self.copied - self.faults, 0)


_PF = re.compile(r": #PF at 0x")
_SUMMARY = re.compile(r"UFFD transferred pages: \((\d+)/(\d+)\)")


def page_stats(daemon_log: Path) -> PageStats | None:
    """Count on-demand faults and transferred pages in a lazy-pages daemon log (None if the
    log lacks the summary lines, e.g. a lower verbosity)."""
    faults = copied = total = 0
    seen = False
    try:
        with open(daemon_log, errors="replace") as f:
            for line in f:
                if _PF.search(line):
                    faults += 1
                elif m := _SUMMARY.search(line):
                    seen = True
                    copied += int(m.group(1))
                    total += int(m.group(2))
    except OSError:
        return None
    return PageStats(faults, copied, total) if seen else None


def interrupted(what: str, container: str, details: dict[str, object]) -> PostcopyFailed:
    """The error for a post-copy that stopped before the last page moved."""
    return PostcopyFailed(
        f"post-copy of {container} was interrupted: {what}. The destination copy had already "
        "resumed, so there is no rollback: it was stopped (its memory is incomplete), and the "
        "source copy holds the container's state at the pause, kept paused",
        hint=f"decide on the source: `docker unpause {container}` resumes it from the state "
        "at the pause (what the container did on the destination since then is lost), or "
        f"`docker rm -f {container}`; the destination's stopped copy can be removed "
        "(docs/architecture.md, post-copy)",
        details=details,
    )
