"""An authenticated SSH session and its exec channels (the agent's link).

The agent runs as ``ssh HOST 'migrate agent'`` would run it: its stdin/stdout carry the
protocol on one exec channel, its stderr is kept (bounded) for error messages.
"""

from __future__ import annotations

import logging
import re
import shlex
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NamedTuple, Self

import paramiko

from migrate.core.errors import AgentUnavailable, ConnectionLost, Timeout
from migrate.transport import BulkTarget, BulkTargetFactory, TunnelFactory
from migrate.transport.destination import Destination, SshOptions
from migrate.transport.tail import DEFAULT_TAIL_BYTES, StderrTail
from migrate.transport.tunnel import SshReverseTunnel

log = logging.getLogger(__name__)

DEFAULT_AGENT_COMMAND = "migrate agent"
# sendall hands paramiko at most this much per call: paramiko slices what remains after each
# packet, so one huge buffer would be copied over and over.
SEND_CHUNK = 1 << 20

# How long close() lets the agent exit after its stdin hit EOF.
CLOSE_TIMEOUT_S = 10.0
# stdout EOF and stderr EOF arrive together; let the drain thread catch up before explaining.
STDERR_SETTLE_S = 2.0


class RunResult(NamedTuple):
    rc: int  # -1 when the server reported no exit status (e.g. killed by a signal)
    stdout: str
    stderr: str


def _env_prefix(env: Mapping[str, str] | None) -> str:
    # sshd drops environment requests not in its AcceptEnv, so variables travel in the command.
    if not env:
        return ""
    parts = []
    for name, value in env.items():
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise ValueError(f"invalid environment variable name {name!r}")
        parts.append(f"{name}={shlex.quote(value)}")
    return "export " + " ".join(parts) + "; "


class SshSession:
    """An authenticated SSH connection; opens exec channels."""

    def __init__(self, client: paramiko.SSHClient, dest: Destination, opts: SshOptions) -> None:
        self.client = client
        self.dest = dest
        self.opts = opts

    @property
    def transport(self) -> paramiko.Transport:
        t = self.client.get_transport()
        if t is None:
            raise ConnectionLost(f"the SSH session to {self.dest} is closed")
        return t

    @property
    def peer(self) -> str:
        return str(self.dest)

    def is_active(self) -> bool:
        t = self.client.get_transport()
        return t is not None and t.is_active()

    def exec(
        self, command: str, *, tail_bytes: int = DEFAULT_TAIL_BYTES, close_session: bool = False
    ) -> SshChannel:
        """Run a shell command on an exec channel; the channel carries its stdin/stdout.

        With ``close_session`` the channel owns this session: closing the channel, or failing
        to start the command, closes the session too.
        """
        if not command.strip():
            raise ValueError("empty remote command")
        try:
            chan = self._start(command)
        except BaseException:
            if close_session:
                self.close()
            raise
        log.debug("started on %s: %s", self.dest, command)
        return SshChannel(
            chan,
            peer=str(self.dest),
            command=command,
            session=self if close_session else None,
            tail_bytes=tail_bytes,
        )

    def _start(self, command: str) -> paramiko.Channel:
        try:
            chan = self.transport.open_session(timeout=self.opts.op_timeout)
        except (paramiko.SSHException, OSError, EOFError) as e:
            raise AgentUnavailable(
                f"cannot open an SSH channel to {self.dest}: {e}",
                hint="check MaxSessions in the destination's sshd_config and that the "
                "connection is still up",
            ) from None
        chan.settimeout(self.opts.op_timeout)
        # paramiko waits for the exec reply without a timeout: a watchdog closes the channel,
        # which wakes that wait, if the server never answers.
        started = threading.Event()

        def expire() -> None:
            if not started.is_set():
                chan.close()

        watchdog = threading.Timer(self.opts.op_timeout, expire)
        watchdog.daemon = True
        watchdog.start()
        try:
            chan.exec_command(command)
            started.set()
        except (paramiko.SSHException, OSError, EOFError) as e:
            chan.close()
            raise AgentUnavailable(
                f"{self.dest} refused to run {command!r}: {e or 'no answer'}",
                hint="the destination's sshd must allow commands for this user (no "
                "ForceCommand or restricted shell)",
            ) from None
        finally:
            watchdog.cancel()
        return chan

    def start_agent(
        self,
        command: str = DEFAULT_AGENT_COMMAND,
        env: Mapping[str, str] | None = None,
        *,
        close_session: bool = True,
    ) -> SshChannel:
        """Start the agent on an exec channel.

        By default closing the channel also closes this session: one session per agent is how
        the tool connects (``connect(dest, opts).start_agent()``).
        """
        return self.exec(_env_prefix(env) + command, close_session=close_session)

    def run(
        self,
        argv: Sequence[str],
        timeout: float | None = None,
        *,
        input: bytes = b"",
    ) -> RunResult:
        """Run a small command (argv quoted for the remote shell); output is read in full."""
        if not argv:
            raise ValueError("empty argv")
        timeout = self.opts.op_timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        command = shlex.join(argv)
        ch = self.exec(command, tail_bytes=1 << 20)
        try:
            ch.settimeout(timeout)
            if input:
                ch.sendall(input)
            ch.shutdown_write()
            out = bytearray()
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise Timeout(f"{command!r} on {self.dest} took longer than {timeout:g} s")
                ch.settimeout(remaining)
                try:
                    chunk = ch.recv(65536)
                except Timeout:
                    raise Timeout(
                        f"{command!r} on {self.dest} took longer than {timeout:g} s"
                    ) from None
                if not chunk:
                    break
                out += chunk
            rc = ch.exit_status(max(0.0, deadline - time.monotonic()))
            if rc is None:
                raise Timeout(f"{command!r} on {self.dest} did not exit within {timeout:g} s")
            return RunResult(
                rc, out.decode("utf-8", "replace"), ch.stderr_bytes().decode("utf-8", "replace")
            )
        finally:
            ch.close(timeout=0)

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SshChannel:
    """A :class:`migrate.transport.Channel` over one SSH exec channel."""

    def __init__(
        self,
        chan: paramiko.Channel,
        *,
        peer: str,
        command: str,
        session: SshSession | None = None,
        tail_bytes: int = DEFAULT_TAIL_BYTES,
    ) -> None:
        self.chan = chan
        self.command = command
        self._peer = peer
        self._session = session
        self._closed = False
        # Received but not yet returned (see recv); bounded by our window size.
        self._pending = b""
        self._pending_pos = 0
        self._grab = max(chan.in_window_size, 1 << 20)
        self._tail = StderrTail(tail_bytes)
        self._stderr_thread = threading.Thread(
            target=self._drain_stderr, name=f"ssh-stderr-{chan.get_id()}", daemon=True
        )
        self._stderr_thread.start()

    # --- Channel ------------------------------------------------------------------------

    def recv(self, n: int) -> bytes:
        if self._closed:
            raise ConnectionLost(f"the channel to {self._peer} is closed")
        if self._pending_pos < len(self._pending):
            return self._take(n)
        try:
            # Take all that paramiko has buffered: its buffer deletes what was read from the
            # front, a copy of everything left, so small reads from a full window crawl.
            data: bytes = self.chan.recv(self._grab)
        except TimeoutError:
            raise Timeout(
                f"no data from {self._peer} for {self.chan.gettimeout():g} s",
                hint="the agent may be stuck; its stderr tail is in the details",
                details={"stderr_tail": self.stderr_tail()},
            ) from None
        except (paramiko.SSHException, OSError, EOFError) as e:
            raise ConnectionLost(
                f"reading from {self._peer}: {e}", details={"stderr_tail": self.stderr_tail()}
            ) from None
        if not data:
            self._stderr_thread.join(STDERR_SETTLE_S)
            self._note_lost_transport()
            return data
        if len(data) <= n:
            return data
        self._pending = data
        self._pending_pos = 0
        return self._take(n)

    def _take(self, n: int) -> bytes:
        start = self._pending_pos
        end = min(start + n, len(self._pending))
        self._pending_pos = end
        out = self._pending[start:end]
        if end == len(self._pending):
            self._pending = b""
            self._pending_pos = 0
        return out

    def sendall(self, data: bytes) -> None:
        if self._closed:
            raise ConnectionLost(f"the channel to {self._peer} is closed")
        view = memoryview(data)
        try:
            while view:
                # paramiko sends at most one packet per call and re-slices what is left:
                # bounded chunks keep that slicing cheap.
                sent = self.chan.send(view[:SEND_CHUNK])
                if sent == 0:
                    raise OSError("the channel was closed by the other end")
                view = view[sent:]
        except TimeoutError:
            raise Timeout(
                f"{self._peer} accepted no data for {self.chan.gettimeout():g} s",
                hint="the agent may be stuck; its stderr tail is in the details",
                details={"stderr_tail": self.stderr_tail()},
            ) from None
        except (paramiko.SSHException, OSError, EOFError) as e:
            self._stderr_thread.join(STDERR_SETTLE_S)
            self._note_lost_transport()
            raise ConnectionLost(
                f"writing to {self._peer}: {e}",
                hint="see the agent's stderr tail in the details",
                details={"stderr_tail": self.stderr_tail()},
            ) from None

    def settimeout(self, seconds: float | None) -> None:
        self.chan.settimeout(seconds)

    def close(self, timeout: float = CLOSE_TIMEOUT_S) -> None:
        """Send EOF, give the command ``timeout`` seconds to exit, close (and the session)."""
        if self._closed:
            return
        self._closed = True
        try:
            if not self.chan.closed:
                self.chan.shutdown_write()
            rc = self.exit_status(timeout)
            if rc is None and timeout > 0:
                log.warning(
                    "%s: %r still running %g s after EOF", self._peer, self.command, timeout
                )
            else:
                log.debug("%s: %r exited with %s", self._peer, self.command, rc)
        except (paramiko.SSHException, OSError, EOFError) as e:
            log.debug("closing the channel to %s: %s", self._peer, e)
        finally:
            self.chan.close()
            self._stderr_thread.join(STDERR_SETTLE_S)
            if self._session is not None:
                self._session.close()

    def stderr_tail(self) -> str:
        return self._tail.text()

    def bulk_target(self) -> BulkTarget:
        """Where a second, OpenSSH connection must go to reach this agent's host: same host,
        port, user and identity, and the host key this connection verified (pinned)."""
        t = self.chan.get_transport()
        if self._session is None or t is None or not t.is_active():
            raise ConnectionLost(f"the SSH connection to {self._peer} is closed")
        key = t.get_remote_server_key()
        dest, opts = self._session.dest, self._session.opts
        return BulkTarget(
            host=dest.host,
            port=dest.port,
            user=dest.user,
            identity=None if opts.identity is None else Path(opts.identity).expanduser(),
            host_key_type=key.get_name(),
            host_key_b64=key.get_base64(),
            agent_command=self.command,
        )

    def reverse_tunnel(self, local_port: int) -> SshReverseTunnel:
        """A loopback port on the destination whose connections reach our ``local_port``
        through this channel's SSH connection (transport/tunnel.py)."""
        t = self.chan.get_transport()
        if t is None or not t.is_active():
            raise ConnectionLost(f"the SSH connection to {self._peer} is closed")
        return SshReverseTunnel(t, local_port)

    @property
    def peer(self) -> str:
        return self._peer

    def tunnels(self) -> TunnelFactory:
        return self.reverse_tunnel

    def bulk(self) -> BulkTargetFactory:
        return self.bulk_target

    # --- extras -------------------------------------------------------------------------

    def exit_status(self, timeout: float) -> int | None:
        """The command's exit code (-1: none reported), or None if it has not exited in time."""
        # Never recv_exit_status(): it waits forever.
        if not self.chan.status_event.wait(timeout):
            return None
        return int(self.chan.exit_status)

    def shutdown_write(self) -> None:
        """Send EOF on the command's stdin."""
        try:
            self.chan.shutdown_write()
        except (paramiko.SSHException, OSError, EOFError) as e:
            raise ConnectionLost(f"closing the input of {self._peer}: {e}") from None

    def stderr_bytes(self) -> bytes:
        self._stderr_thread.join(STDERR_SETTLE_S if self.chan.eof_received else 0)
        return self._tail.data()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- internals ----------------------------------------------------------------------

    def _note_lost_transport(self) -> None:
        t = self.chan.get_transport()
        if t is not None and not t.is_active():
            reason = t.get_exception() or "the connection dropped"
            self._tail.feed(
                f"\n[migrate: SSH connection to {self._peer} lost: {reason}]\n".encode()
            )

    def _drain_stderr(self) -> None:
        # Always drained: the SSH window is shared by stdout and stderr, so unread stderr would
        # eventually stall the agent's stdout too.
        while True:
            try:
                chunk = self.chan.recv_stderr(65536)
            except TimeoutError:
                # recv_stderr uses the channel timeout set for recv(); just wait again, but
                # never spin if someone set a tiny timeout.
                if self.chan.closed:
                    break
                if (self.chan.gettimeout() or 1.0) < 0.05:
                    time.sleep(0.05)
                continue
            except (paramiko.SSHException, OSError, EOFError) as e:
                log.debug("stderr drain for %s stopped: %s", self._peer, e)
                break
            if not chunk:
                break
            self._tail.feed(chunk)
            log.debug("%s stderr: %s", self._peer, chunk.decode("utf-8", "replace").rstrip())
