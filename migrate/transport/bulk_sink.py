"""The agent's end of the bulk connection: an OpenSSH session whose stdin carries streams.

The source runs ``ssh ... 'migrate agent --sink SOCKET'`` (migrate/transport/openssh.py). That
sink process proves it was started by our source (a random token the agent gave the source
over the control channel, sent first on its stdin) and hands its stdin and stdout to the
running agent over a unix socket (SCM_RIGHTS). The agent then reads stream frames straight
from sshd's pipe: no copy through the sink. The sink stays until the agent closes the socket
(or exits), so sshd keeps the session open as long as the agent uses it.

The socket lives in a fresh 0700 directory and is removed as soon as one process connected
(or nobody did within ACCEPT_TIMEOUT_S): nothing of it stays on disk.
"""

from __future__ import annotations

import hmac
import logging
import os
import re
import secrets
import select
import shutil
import socket
import struct
import sys
import tempfile
import threading
from pathlib import Path

from migrate.core.errors import ConnectionLost, Timeout

log = logging.getLogger(__name__)

TOKEN_HEX_LEN = 64  # 32 random bytes, hex
TOKEN_LINE_LEN = TOKEN_HEX_LEN + 1  # with its newline
ACK = b"MIGRATE-BULK-OK\n"
# The source waits ~10 s for the ACK; past this nobody will come.
ACCEPT_TIMEOUT_S = 30.0
# The sink must connect and hand over its descriptors promptly.
HANDOVER_TIMEOUT_S = 10.0
# A bigger pipe means fewer wake-ups per 1 MiB frame (best effort: needs the fd to be a pipe).
PIPE_SIZE = 1 << 20
RECV_BUFFER = 1 << 20
_TOKEN_RE = re.compile(rb"[0-9a-f]{64}")
_F_SETPIPE_SZ = 1031


def new_token() -> str:
    return secrets.token_hex(TOKEN_HEX_LEN // 2)


def token_line(token: str) -> bytes:
    """What the source writes first on the bulk connection's stdin."""
    raw = token.encode()
    if not _TOKEN_RE.fullmatch(raw):
        raise ValueError("not a bulk token")
    return raw + b"\n"


def parse_token_line(line: bytes) -> bytes | None:
    """The token from the first line of the sink's stdin, or None if it is not one."""
    if len(line) != TOKEN_LINE_LEN or not line.endswith(b"\n"):
        return None
    raw = line[:-1]
    return raw if _TOKEN_RE.fullmatch(raw) else None


def set_pipe_size(fd: int, size: int = PIPE_SIZE) -> None:
    try:
        import fcntl

        fcntl.fcntl(fd, _F_SETPIPE_SZ, size)
    except OSError:
        pass  # not a pipe, or above pipe-max-size: the default works, a little slower


class BulkEnd:
    """A :class:`migrate.transport.Channel` (receive only) over the sink's stdin."""

    def __init__(self, rfd: int, holder: socket.socket) -> None:
        self.rfd = rfd
        self._holder = holder  # closing it lets the sink exit
        self.timeout: float | None = None
        self.closed = False
        # Reads land here and are copied out at their exact size: os.read(fd, 1 MiB) would
        # allocate 1 MiB and shrink it to what arrived, which fragmented the heap into
        # ~200 MiB of RSS (measured, benchmarks/results/stream-bulk.md).
        self._buf = bytearray(RECV_BUFFER)
        set_pipe_size(rfd)

    def recv(self, n: int) -> bytes:
        if self.closed:
            raise ConnectionLost("the bulk connection is closed")
        if self.timeout is not None:
            ready, _, _ = select.select([self.rfd], [], [], self.timeout)
            if not ready:
                raise Timeout(f"no data on the bulk connection for {self.timeout:.0f} s")
        view = memoryview(self._buf)[: min(n, RECV_BUFFER)]
        try:
            k = os.readv(self.rfd, [view])
        except OSError as e:
            raise ConnectionLost(f"reading the bulk connection: {e}") from None
        return bytes(view[:k])

    def sendall(self, data: bytes) -> None:
        raise ConnectionLost("the bulk connection carries data to the agent only")

    def settimeout(self, seconds: float | None) -> None:
        self.timeout = seconds

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            os.close(self.rfd)
        except OSError:
            pass
        self._holder.close()

    def stderr_tail(self) -> str:
        return ""

    @property
    def peer(self) -> str:
        return "the source's bulk connection"

    # Receive only, on the agent's side: it opens nothing towards the source.
    def tunnels(self) -> None:
        return None

    def bulk(self) -> None:
        return None


class BulkListener:
    """One-shot: accepts the sink of this agent's source on a private unix socket."""

    def __init__(self, root: Path) -> None:
        self.token = new_token()
        self.dir = Path(tempfile.mkdtemp(prefix="bulk-", dir=root))  # mode 0700
        self.path = self.dir / "s"
        self.end: BulkEnd | None = None
        self.error = ""
        self._done = threading.Event()
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._sock.bind(str(self.path))
            self._sock.listen(1)
        except OSError:
            self._sock.close()
            shutil.rmtree(self.dir, ignore_errors=True)
            raise
        self._thread = threading.Thread(target=self._accept, name="bulk-accept", daemon=True)
        self._thread.start()

    def wait(self, timeout: float) -> BulkEnd | None:
        self._done.wait(timeout)
        return self.end

    def close(self) -> None:
        self._sock.close()
        shutil.rmtree(self.dir, ignore_errors=True)
        if self.end is not None:
            self.end.close()

    def _accept(self) -> None:
        try:
            self._sock.settimeout(ACCEPT_TIMEOUT_S)
            try:
                conn, _ = self._sock.accept()
            except OSError as e:
                self.error = f"no sink connected: {e}"
                return
            finally:
                # One chance only, and nothing left on disk from here on.
                self._sock.close()
                shutil.rmtree(self.dir, ignore_errors=True)
            self.end = self._handover(conn)
        finally:
            self._done.set()

    def _handover(self, conn: socket.socket) -> BulkEnd | None:
        fds: list[int] = []
        try:
            conn.settimeout(HANDOVER_TIMEOUT_S)
            cred = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
            _pid, uid, _gid = struct.unpack("3i", cred)
            if uid != os.getuid():
                raise PermissionError(f"sink runs as uid {uid}, the agent as {os.getuid()}")
            msg, fds, flags, _ = socket.recv_fds(conn, 256, 2)
            if flags & socket.MSG_CTRUNC or len(fds) != 2:
                raise PermissionError("the sink did not pass exactly two descriptors")
            if not hmac.compare_digest(msg, self.token.encode()):
                raise PermissionError("wrong bulk token")
            end = BulkEnd(fds[0], conn)
            os.write(fds[1], ACK)  # read by the source: the bulk connection is up
            os.close(fds[1])
            fds = []
            conn.settimeout(None)
            return end
        except OSError as e:
            self.error = f"bulk handover refused: {e}"
            log.warning("%s", self.error)
            for fd in fds:
                try:
                    os.close(fd)
                except OSError:
                    pass
            conn.close()
            return None


def _read_exact_fd(fd: int, n: int) -> bytes:
    # os.read on a pipe never returns more than asked: nothing of the stream is consumed.
    out = b""
    while len(out) < n:
        chunk = os.read(fd, n - len(out))
        if not chunk:
            break
        out += chunk
    return out


def run_sink(socket_path: str) -> int:
    """Entry point of ``migrate agent --sink PATH`` (started by the source through OpenSSH)."""
    # Our stdout goes back to the source: keep a private copy for the agent and point fd 1
    # at stderr, so nothing printed by accident enters it.
    sys.stdout.flush()
    out_fd = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    token = parse_token_line(_read_exact_fd(0, TOKEN_LINE_LEN))
    if token is None:
        print("migrate agent --sink: no valid token on stdin", file=sys.stderr)
        return 2
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.settimeout(HANDOVER_TIMEOUT_S)
        s.connect(socket_path)
        socket.send_fds(s, [token], [0, out_fd])
        os.close(out_fd)
        s.settimeout(None)
        # The agent now owns our stdin; we only keep the SSH session open until it is done.
        while s.recv(64):
            pass
    except OSError as e:
        print(
            f"migrate agent --sink: cannot reach the agent at {socket_path}: {e}", file=sys.stderr
        )
        return 1
    finally:
        s.close()
    return 0
