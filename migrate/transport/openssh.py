"""The source's bulk connection: stream frames through the system's OpenSSH client.

paramiko does every 32 KiB packet's work in Python under the GIL, which caps a stream at
0.34-0.77x of OpenSSH's own rate on two CPUs (benchmarks/results/stream.md). So the streams
(checkpoint, read-write layer, volumes, logs) go through an ``ssh`` child process instead:
we write frames to its stdin (a pipe write releases the GIL; OpenSSH encrypts in C) and the
agent reads them from sshd's pipe (migrate/transport/bulk_sink.py). Requests, answers and
errors stay on the paramiko control channel. Whether a session uses it, and attaching it to the
session's Connection, is migrate/wire/bulk.py's job.

Security: the child trusts exactly the host key paramiko verified for the control connection
(written to a private known_hosts file, StrictHostKeyChecking=yes, no other known_hosts, no
user ssh_config), authenticates as the same user with the same identity, and the agent only
accepts the sink that presents the random token it gave us over the control channel.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import select
import shlex
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from migrate.core.errors import BulkUnavailable, ConnectionLost, Timeout
from migrate.transport import BulkTarget
from migrate.transport.bulk_sink import ACK, set_pipe_size, token_line
from migrate.transport.tail import StderrTail

log = logging.getLogger(__name__)

# How long the bulk connection may take to come up (handshake + auth + starting the sink);
# measured 0.2-0.6 s on the lab. Past this `auto` falls back to paramiko.
READY_TIMEOUT_S = 10.0
CONNECT_TIMEOUT_S = 10
# A cut link is noticed within ~16 s, like the control connection's 15 s dead-peer timeout.
SERVER_ALIVE_INTERVAL_S = 2
SERVER_ALIVE_COUNT_MAX = 8
# Fastest first (AES-NI); all of them are OpenSSH defaults.
CIPHERS = (
    "aes128-gcm@openssh.com",
    "aes256-gcm@openssh.com",
    "chacha20-poly1305@openssh.com",
    "aes128-ctr",
    "aes256-ctr",
)
# The name the pinned key is filed under, whatever the host and port are.
HOST_KEY_ALIAS = "migrate-bulk-peer"
CLOSE_TIMEOUT_S = 5.0
WRITE_CHUNK = 1 << 20


def host_key_algorithms(key_type: str) -> str:
    """The signature algorithms that make the server prove the pinned key (RSA keys sign
    with SHA-2 today; ssh-rsa last for old servers)."""
    if key_type == "ssh-rsa":
        return "rsa-sha2-512,rsa-sha2-256,ssh-rsa"
    return key_type


def known_hosts_text(target: BulkTarget) -> str:
    return f"{HOST_KEY_ALIAS} {target.host_key_type} {target.host_key_b64}\n"


def sink_command(agent_command: str, socket_path: str) -> str:
    return f"{agent_command} --sink {shlex.quote(socket_path)}"


def ssh_argv(ssh: str, target: BulkTarget, known_hosts: Path, socket_path: str) -> list[str]:
    """The OpenSSH command line of the bulk connection (pure; tests/unit/test_openssh.py)."""
    opts = {
        "BatchMode": "yes",  # never prompt: fail, and auto falls back
        "StrictHostKeyChecking": "yes",
        "UserKnownHostsFile": str(known_hosts),
        "GlobalKnownHostsFile": "/dev/null",
        "HostKeyAlias": HOST_KEY_ALIAS,
        "HostKeyAlgorithms": host_key_algorithms(target.host_key_type),
        "UpdateHostKeys": "no",
        "CheckHostIP": "no",
        "Ciphers": ",".join(CIPHERS),
        "Compression": "no",  # frames are zstd-compressed already
        "ServerAliveInterval": str(SERVER_ALIVE_INTERVAL_S),
        "ServerAliveCountMax": str(SERVER_ALIVE_COUNT_MAX),
        "ConnectTimeout": str(CONNECT_TIMEOUT_S),
        "ConnectionAttempts": "1",
        "ControlMaster": "no",
        "ControlPath": "none",
        "ForwardAgent": "no",
        "ForwardX11": "no",
        "ClearAllForwardings": "yes",
        "PermitLocalCommand": "no",
        "RequestTTY": "no",
        "EscapeChar": "none",  # binary data on stdin
        "LogLevel": "ERROR",
    }
    argv = [ssh, "-F", "/dev/null"]  # the user's ssh_config must not redirect or relax it
    for k, v in opts.items():
        argv += ["-o", f"{k}={v}"]
    if target.identity is not None:
        argv += ["-o", "IdentitiesOnly=yes", "-i", str(target.identity)]
    argv += [
        "-p",
        str(target.port),
        "-l",
        target.user,
        "--",
        target.host,
        sink_command(target.agent_command, socket_path),
    ]
    return argv


KH_SUFFIX = ".known_hosts"


def _sweep_known_hosts() -> None:
    """Remove the known_hosts copies of sources that died between writing one and their
    connection coming up (a fraction of a second): their pid is in the name."""
    for f in Path(tempfile.gettempdir()).glob(f"migrate-bulk-*{KH_SUFFIX}"):
        pid = f.name.removeprefix("migrate-bulk-").split("-", 1)[0]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            f.unlink(missing_ok=True)
        except OSError:
            pass  # alive (another user's): not ours to judge


class BulkLink:
    """The running ``ssh`` child; frames are written to its stdin."""

    def __init__(self, proc: subprocess.Popen[bytes], known_hosts: Path, peer: str) -> None:
        self.proc = proc
        self._known_hosts = known_hosts
        self._peer = peer
        self._tail = StderrTail()
        self.timeout: float | None = 60.0
        self._closed = False
        assert proc.stdin is not None and proc.stderr is not None
        self._wfd = proc.stdin.fileno()
        set_pipe_size(self._wfd)
        self._stderr_thread = threading.Thread(
            target=self._drain_stderr, name="bulk-ssh-stderr", daemon=True
        )
        self._stderr_thread.start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    @classmethod
    def start(
        cls,
        target: BulkTarget,
        socket_path: str,
        token: str,
        *,
        ready_timeout: float = READY_TIMEOUT_S,
        ssh: str | None = None,
    ) -> BulkLink:
        """Start ``ssh``, hand the sink its token, wait for the agent's ACK; raises
        BulkUnavailable (with OpenSSH's own words) when it does not come up."""
        ssh = ssh or shutil.which("ssh")
        if ssh is None:
            raise BulkUnavailable("no `ssh` (OpenSSH client) on PATH")
        _sweep_known_hosts()
        fd, name = tempfile.mkstemp(prefix=f"migrate-bulk-{os.getpid()}-", suffix=KH_SUFFIX)
        known = Path(name)
        try:
            with os.fdopen(fd, "w") as f:  # mkstemp: 0600
                f.write(known_hosts_text(target))
            proc = subprocess.Popen(
                ssh_argv(ssh, target, known, socket_path),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                # Our terminal's Ctrl-C is for us: the rollback decides when this ends.
                start_new_session=True,
            )
        except BaseException:
            known.unlink(missing_ok=True)
            raise
        link = cls(proc, known, f"ssh://{target.user}@{target.host}:{target.port} (bulk)")
        try:
            link.sendall(token_line(token))
            link._wait_ack(ready_timeout)
        except BaseException as e:
            link.kill()
            if isinstance(e, (ConnectionLost, Timeout)):
                why = link.stderr_tail() or e.message
                raise BulkUnavailable(
                    f"the OpenSSH bulk connection did not come up: {why}",
                    details={"stderr_tail": link.stderr_tail()},
                ) from None
            raise
        # Authenticated: OpenSSH checked the key and keeps it in memory (a rekey compares
        # with it and does not read the file again: checked with RekeyLimit=8M and the file
        # gone). So it goes now, and a source killed later leaves no copy behind.
        known.unlink(missing_ok=True)
        log.debug("bulk connection up (ssh pid %d)", proc.pid)
        return link

    def _wait_ack(self, timeout: float) -> None:
        assert self.proc.stdout is not None
        rfd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        got = b""
        while len(got) < len(ACK):
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([rfd], [], [], left)[0]:
                raise Timeout(f"no answer from the sink within {timeout:g} s")
            chunk = os.read(rfd, len(ACK) - len(got))
            if not chunk:
                self.proc.wait(2)  # let its stderr arrive for the message
                self._stderr_thread.join(1)
                raise ConnectionLost(f"ssh exited ({self.proc.returncode})")
            got += chunk
        if got != ACK:
            raise ConnectionLost(f"unexpected answer from the sink: {got!r}")
        self.proc.stdout.close()

    # --- the send side of a Channel -------------------------------------------------------

    def alive(self) -> bool:
        return not self._closed and self.proc.poll() is None

    def sendall(self, data: bytes) -> None:
        if self._closed:
            raise ConnectionLost(f"the bulk connection to {self._peer} is closed")
        view = memoryview(data)
        os.set_blocking(self._wfd, False)
        while view:
            if not select.select([], [self._wfd], [], self.timeout)[1]:
                raise Timeout(
                    f"{self._peer} accepted no data for {self.timeout:g} s",
                    hint="the agent may be stuck; the link may be down",
                )
            try:
                n = os.write(self._wfd, view[:WRITE_CHUNK])
            except BlockingIOError:
                continue
            except OSError as e:
                self.proc.poll()
                self._stderr_thread.join(1 if e.errno == errno.EPIPE else 0)
                raise ConnectionLost(
                    f"the bulk connection to {self._peer} broke: {e.strerror or e}"
                    + (
                        f" (ssh exited with {self.proc.returncode})"
                        if self.proc.returncode is not None
                        else ""
                    ),
                    details={"stderr_tail": self.stderr_tail()},
                ) from None
            view = view[n:]

    def settimeout(self, seconds: float | None) -> None:
        self.timeout = seconds

    def stderr_tail(self) -> str:
        return self._tail.text()

    @property
    def peer(self) -> str:
        return self._peer

    # --- ending ---------------------------------------------------------------------------

    def close(self, timeout: float = CLOSE_TIMEOUT_S) -> None:
        """EOF on its stdin, then give ssh ``timeout`` s to exit (the agent's exit ends the
        remote side), then kill it. Always removes the known_hosts file."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(OSError):
            assert self.proc.stdin is not None
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            log.debug("ssh (bulk, pid %d) still running after EOF: killing it", self.proc.pid)
        self._finish()

    def kill(self) -> None:
        """End it now (after an error mid-stream: it cannot carry another stream)."""
        self._closed = True
        with contextlib.suppress(OSError):
            assert self.proc.stdin is not None
            self.proc.stdin.close()
        self._finish()

    def _finish(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()  # by its pid: we started it
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(5)
        self._stderr_thread.join(1)
        for f in (self.proc.stdout, self.proc.stderr):
            if f is not None:
                with contextlib.suppress(OSError):
                    f.close()
        self._known_hosts.unlink(missing_ok=True)

    def _drain_stderr(self) -> None:
        assert self.proc.stderr is not None
        fd = self.proc.stderr.fileno()
        while True:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                break
            if not chunk:
                break
            self._tail.feed(chunk)
