"""The agent's end of the link: the protocol on its own stdin/stdout."""

from __future__ import annotations

import os
import select
import sys

from migrate.core.errors import ConnectionLost, Timeout


class StdioChannel:
    """Channel over two file descriptors (the agent's stdin and a private dup of stdout).

    The agent speaks the protocol on fd 1, so anything else that writes to stdout would corrupt
    the stream: ``claim_stdio`` moves the real stdout to a private descriptor and points fd 1
    (and ``sys.stdout``) at stderr.
    """

    def __init__(self, rfd: int, wfd: int) -> None:
        self.rfd = rfd
        self.wfd = wfd
        self.timeout: float | None = None

    @classmethod
    def claim_stdio(cls) -> StdioChannel:
        sys.stdout.flush()
        wfd = os.dup(1)
        os.dup2(2, 1)
        sys.stdout = sys.stderr
        return cls(0, wfd)

    def recv(self, n: int) -> bytes:
        if self.timeout is not None:
            ready, _, _ = select.select([self.rfd], [], [], self.timeout)
            if not ready:
                raise Timeout(f"no data from the source for {self.timeout:.0f} s")
        try:
            return os.read(self.rfd, n)
        except OSError as e:
            raise ConnectionLost(f"reading from the source: {e}") from None

    def sendall(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                n = os.write(self.wfd, view)
            except (BrokenPipeError, OSError) as e:
                raise ConnectionLost(f"writing to the source: {e}") from None
            view = view[n:]

    def settimeout(self, seconds: float | None) -> None:
        self.timeout = seconds

    def close(self) -> None:
        for fd in (self.wfd,):
            try:
                os.close(fd)
            except OSError:
                pass

    def stderr_tail(self) -> str:
        return ""

    @property
    def peer(self) -> str:
        return "source"

    # The agent's end opens nothing towards the source.
    def tunnels(self) -> None:
        return None

    def bulk(self) -> None:
        return None
