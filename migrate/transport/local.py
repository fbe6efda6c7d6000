"""The agent as a local subprocess on pipes: same host, tests, and the borg-style twin of SSH.

The source talks to the agent exactly as over SSH (the agent's stdin/stdout carry the protocol,
its stderr is diagnostics), so the whole protocol can be exercised without a network.
"""

from __future__ import annotations

import fcntl
import logging
import os
import select
import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence
from typing import Self

from migrate.core.errors import AgentUnavailable, ConnectionLost, Timeout
from migrate.transport import TunnelFactory
from migrate.transport.tail import DEFAULT_TAIL_BYTES, StderrTail
from migrate.transport.tunnel import DirectTunnel

log = logging.getLogger(__name__)

# Linux pipes hold 64 KiB by default; a larger pipe means fewer wake-ups per MiB streamed.
PIPE_SIZE = 1 << 20
# How long close() lets the agent finish after its stdin hit EOF before terminating it.
CLOSE_TIMEOUT_S = 10.0
# After SIGTERM, how long before SIGKILL; after SIGKILL, how long to reap.
TERMINATE_GRACE_S = 3.0
# stdout EOF and stderr EOF come together when the agent exits; wait this long for the drain
# thread to catch up so stderr_tail() explains the EOF the caller just saw.
STDERR_SETTLE_S = 2.0


def default_agent_argv() -> list[str]:
    return [sys.executable, "-m", "migrate", "agent"]


class LocalChannel:
    """A :class:`migrate.transport.Channel` over the pipes of an agent subprocess."""

    def __init__(self, proc: subprocess.Popen[bytes], argv: Sequence[str], tail_bytes: int) -> None:
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        self.proc = proc
        self.argv = list(argv)
        self._rfd = proc.stdout.fileno()
        self._wfd = proc.stdin.fileno()
        # Non-blocking stdin so a large sendall cannot block past the timeout in one write().
        os.set_blocking(self._wfd, False)
        self._timeout: float | None = None
        self._closed = False
        self._tail = StderrTail(tail_bytes)
        self._stderr_thread = threading.Thread(
            target=self._drain_stderr, name=f"agent-stderr-{proc.pid}", daemon=True
        )
        self._stderr_thread.start()

    @classmethod
    def start(
        cls,
        argv: Sequence[str] | None = None,
        env: Mapping[str, str] | None = None,
        *,
        tail_bytes: int = DEFAULT_TAIL_BYTES,
    ) -> LocalChannel:
        """Start the agent (default ``python -m migrate agent``); ``env`` adds to ours."""
        argv = list(argv) if argv is not None else default_agent_argv()
        if not argv:
            raise ValueError("empty agent command")
        full_env = dict(os.environ)
        if env:
            full_env.update(env)
        try:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                bufsize=0,
                env=full_env,
                close_fds=True,
                # Own process group: the operator's Ctrl-C goes to the source, which then
                # rolls back through the agent, as it would with a remote agent over SSH.
                process_group=0,
            )
        except OSError as e:
            raise AgentUnavailable(
                f"cannot start the local agent {argv[0]!r}: {e.strerror or e}",
                hint="check --agent-command (it must name an executable on this host)",
                details={"argv": argv},
            ) from None
        for pipe in (proc.stdin, proc.stdout):
            assert pipe is not None
            try:
                fcntl.fcntl(pipe.fileno(), fcntl.F_SETPIPE_SZ, PIPE_SIZE)
            except OSError:
                pass  # capped by /proc/sys/fs/pipe-max-size: the default size still works
        log.debug("started local agent pid %d: %s", proc.pid, argv)
        return cls(proc, argv, tail_bytes)

    # --- Channel ------------------------------------------------------------------------

    def recv(self, n: int) -> bytes:
        if self._closed:
            raise ConnectionLost("the local agent channel is closed")
        try:
            ready, _, _ = select.select([self._rfd], [], [], self._timeout)
        except (OSError, ValueError) as e:
            raise ConnectionLost(f"waiting for the local agent: {e}") from None
        if not ready:
            raise Timeout(
                f"no data from the local agent (pid {self.proc.pid}) for {self._timeout:g} s",
                hint="the agent may be stuck; its stderr tail is in the details",
                details={"stderr_tail": self.stderr_tail()},
            )
        try:
            data = os.read(self._rfd, n)
        except OSError as e:
            raise ConnectionLost(
                f"reading from the local agent: {e}", details={"stderr_tail": self.stderr_tail()}
            ) from None
        if not data:
            self._stderr_thread.join(STDERR_SETTLE_S)
        return data

    def sendall(self, data: bytes) -> None:
        if self._closed:
            raise ConnectionLost("the local agent channel is closed")
        view = memoryview(data)
        while view:
            try:
                n = os.write(self._wfd, view)
            except BlockingIOError:
                self._wait_writable()
                continue
            except OSError as e:  # BrokenPipeError: the agent exited or closed its stdin
                self._stderr_thread.join(STDERR_SETTLE_S)
                raise ConnectionLost(
                    f"the local agent (pid {self.proc.pid}) stopped reading: {e.strerror or e}",
                    hint="see the agent's stderr tail in the details",
                    details={"stderr_tail": self.stderr_tail()},
                ) from None
            view = view[n:]

    def settimeout(self, seconds: float | None) -> None:
        self._timeout = seconds

    def close(self) -> None:
        """Close stdin so the agent sees EOF and exits; terminate it if it does not."""
        if self._closed:
            return
        self._closed = True
        assert self.proc.stdin is not None and self.proc.stdout is not None
        try:
            self.proc.stdin.close()
        except OSError:
            pass  # already broken: the agent is gone
        rc = self.exit_status(CLOSE_TIMEOUT_S)
        if rc is None:
            log.warning(
                "local agent pid %d did not exit %g s after EOF; terminating it",
                self.proc.pid,
                CLOSE_TIMEOUT_S,
            )
            self.proc.terminate()
            rc = self.exit_status(TERMINATE_GRACE_S)
            if rc is None:
                self.proc.kill()
                rc = self.exit_status(TERMINATE_GRACE_S)
        self.proc.stdout.close()
        self._stderr_thread.join(STDERR_SETTLE_S)
        log.debug("local agent pid %d exited with %s", self.proc.pid, rc)

    def reverse_tunnel(self, local_port: int) -> DirectTunnel:
        """The agent shares this host's loopback: its daemon connects to our port directly."""
        return DirectTunnel(local_port)

    def stderr_tail(self) -> str:
        return self._tail.text()

    @property
    def peer(self) -> str:
        return "local"

    def tunnels(self) -> TunnelFactory:
        return self.reverse_tunnel

    def bulk(self) -> None:
        return None  # no SSH connection to follow: streams go on the pipes

    # --- extras -------------------------------------------------------------------------

    @property
    def pid(self) -> int:
        return self.proc.pid

    def exit_status(self, timeout: float) -> int | None:
        """The agent's exit code (negative: killed by that signal), or None if still running."""
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- internals ----------------------------------------------------------------------

    def _wait_writable(self) -> None:
        try:
            _, ready, _ = select.select([], [self._wfd], [], self._timeout)
        except (OSError, ValueError) as e:
            raise ConnectionLost(f"writing to the local agent: {e}") from None
        if not ready:
            raise Timeout(
                f"the local agent (pid {self.proc.pid}) accepted no data for {self._timeout:g} s",
                hint="the agent may be stuck; its stderr tail is in the details",
                details={"stderr_tail": self.stderr_tail()},
            )

    def _drain_stderr(self) -> None:
        # Always drained, so an agent that logs a lot never blocks on a full stderr pipe.
        assert self.proc.stderr is not None
        fd = self.proc.stderr.fileno()
        try:
            while True:
                chunk = os.read(fd, 65536)
                if not chunk:
                    break
                self._tail.feed(chunk)
                log.debug("agent stderr: %s", chunk.decode("utf-8", "replace").rstrip())
        except OSError as e:
            log.debug("agent stderr drain stopped: %s", e)
        finally:
            self.proc.stderr.close()
